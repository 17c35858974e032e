//! Configuration of svc-query: every setting is a `--flag` and an `HB_*`
//! environment variable with its default beside it; the ones other services
//! read too come from `hb_common::settings` and `hb_common::store`.

use hb_common::duration::parse_duration;
use hb_common::settings::{AuthSettings, TlsSettings};
use hb_common::store::StoreSettings;
use std::net::SocketAddr;
use std::time::Duration;

/// Settings of the query service. Flags are named after their variables
/// (`--query-http-addr`, as ingest's `--ingest-addr`); the unprefixed names
/// (`--http-addr`) are accepted as aliases.
#[derive(clap::Args, Clone, Debug)]
pub struct QueryConfig {
    /// HTTP JSON API address; port 0 picks a free port.
    #[arg(
        long = "query-http-addr",
        alias = "http-addr",
        env = "HB_QUERY_HTTP_ADDR",
        default_value = "127.0.0.1:8080"
    )]
    pub http_addr: SocketAddr,

    /// gRPC `ReportService` address; port 0 picks a free port.
    #[arg(
        long = "query-grpc-addr",
        alias = "grpc-addr",
        env = "HB_QUERY_GRPC_ADDR",
        default_value = "127.0.0.1:50052"
    )]
    pub grpc_addr: SocketAddr,

    /// `/metrics`, `/healthz`, `/readyz` address (plain HTTP, even with TLS on).
    #[arg(
        long = "query-metrics-addr",
        alias = "metrics-addr",
        env = "HB_QUERY_METRICS_ADDR",
        default_value = "127.0.0.1:9103"
    )]
    pub metrics_addr: SocketAddr,

    /// Where the sessions store is (`HB_DATA_DIR`, `HB_YUGABYTE_URL`).
    #[command(flatten)]
    pub store: StoreSettings,

    /// Trino coordinator URL (`http://host:8080`); unset = reports run as SQL on the store.
    #[arg(long, env = "HB_TRINO_URL")]
    pub trino_url: Option<String>,

    /// Trino catalog of the YugabyteDB sessions store (postgresql connector).
    #[arg(long, env = "HB_TRINO_CATALOG_YUGABYTE", default_value = "yugabyte")]
    pub trino_catalog_yugabyte: String,

    /// Schema of the sessions and catalog tables inside the YugabyteDB catalog.
    #[arg(long, env = "HB_TRINO_SCHEMA_YUGABYTE", default_value = "public")]
    pub trino_schema_yugabyte: String,

    /// Trino catalog of the ScyllaDB raw mirror (cassandra connector).
    #[arg(long, env = "HB_TRINO_CATALOG_SCYLLA", default_value = "scylla")]
    pub trino_catalog_scylla: String,

    /// Keyspace of the raw mirror inside the ScyllaDB catalog.
    #[arg(long, env = "HB_TRINO_SCHEMA_SCYLLA", default_value = "heartbeats")]
    pub trino_schema_scylla: String,

    /// User name sent to Trino (`X-Trino-User`).
    #[arg(long, env = "HB_TRINO_USER", default_value = "hbmesh")]
    pub trino_user: String,

    /// Deadline of one report query; past it the query is cancelled on the server.
    #[arg(long, env = "HB_QUERY_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub query_timeout: Duration,

    /// Connections to the sessions store.
    #[arg(long, env = "HB_QUERY_STORE_CONNECTIONS", default_value_t = 16)]
    pub store_connections: u32,

    /// Bearer tokens (`HB_AUTH_SECRET`).
    #[command(flatten)]
    pub auth: AuthSettings,

    /// TLS of the HTTP and gRPC listeners (`HB_TLS_CERT`, `HB_TLS_KEY`).
    #[command(flatten)]
    pub tls: TlsSettings,
}

impl Default for QueryConfig {
    /// The documented defaults, without reading the environment.
    fn default() -> QueryConfig {
        QueryConfig {
            http_addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 50052)),
            metrics_addr: SocketAddr::from(([127, 0, 0, 1], 9103)),
            store: StoreSettings::default(),
            trino_url: None,
            trino_catalog_yugabyte: "yugabyte".into(),
            trino_schema_yugabyte: "public".into(),
            trino_catalog_scylla: "scylla".into(),
            trino_schema_scylla: "heartbeats".into(),
            trino_user: "hbmesh".into(),
            query_timeout: Duration::from_secs(30),
            store_connections: 16,
            auth: AuthSettings::default(),
            tls: TlsSettings::default(),
        }
    }
}

/// A configuration that cannot run (exit 64).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("{name} {value:?} is not a valid Trino name (lowercase letters, digits, underscores)")]
    BadTrinoName { name: &'static str, value: String },
    #[error("HB_TLS_CERT and HB_TLS_KEY must be set together")]
    HalfTls,
    #[error("HB_TRINO_URL {0:?} is not an http(s) URL with a host")]
    BadTrinoUrl(String),
    #[error("HB_QUERY_TIMEOUT must be greater than zero")]
    ZeroTimeout,
    #[error("HB_TRINO_USER must not be empty")]
    EmptyTrinoUser,
    #[error(
        "refusing to listen on non-loopback {addr} ({name}) without HB_AUTH_SECRET: \
         set a secret or bind 127.0.0.1"
    )]
    OpenNonLoopback {
        name: &'static str,
        addr: SocketAddr,
    },
}

impl QueryConfig {
    /// Checks what clap cannot: names that end up in SQL, paired TLS files,
    /// the Trino URL. Run before anything is started.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (name, value) in [
            ("HB_TRINO_CATALOG_YUGABYTE", &self.trino_catalog_yugabyte),
            ("HB_TRINO_SCHEMA_YUGABYTE", &self.trino_schema_yugabyte),
            ("HB_TRINO_CATALOG_SCYLLA", &self.trino_catalog_scylla),
            ("HB_TRINO_SCHEMA_SCYLLA", &self.trino_schema_scylla),
        ] {
            if !is_trino_name(value) {
                return Err(ConfigError::BadTrinoName {
                    name,
                    value: value.clone(),
                });
            }
        }
        self.tls.files().map_err(|_| ConfigError::HalfTls)?;
        if let Some(url) = &self.trino_url {
            TrinoEndpoint::parse(url)?;
        }
        if self.query_timeout.is_zero() {
            return Err(ConfigError::ZeroTimeout);
        }
        if self.trino_user.trim().is_empty() {
            return Err(ConfigError::EmptyTrinoUser);
        }
        if self.secret().is_none() {
            for (name, addr) in [
                ("HB_QUERY_HTTP_ADDR", self.http_addr),
                ("HB_QUERY_GRPC_ADDR", self.grpc_addr),
                ("HB_QUERY_METRICS_ADDR", self.metrics_addr),
            ] {
                if !hb_common::is_loopback(&addr) {
                    return Err(ConfigError::OpenNonLoopback { name, addr });
                }
            }
        }
        Ok(())
    }

    /// The auth secret, if one is set and non-empty.
    pub fn secret(&self) -> Option<&str> {
        self.auth.secret()
    }
}

/// Catalog and schema names are spliced into SQL as quoted identifiers, so
/// they are restricted to what Trino itself lower-cases them to.
fn is_trino_name(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 64
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// Where the Trino coordinator listens, parsed from `HB_TRINO_URL`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrinoEndpoint {
    pub host: String,
    pub port: u16,
    pub secure: bool,
}

impl TrinoEndpoint {
    pub fn parse(url: &str) -> Result<TrinoEndpoint, ConfigError> {
        let bad = || ConfigError::BadTrinoUrl(url.to_string());
        let uri: http::Uri = url.parse().map_err(|_| bad())?;
        let secure = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(bad()),
        };
        let host = uri.host().filter(|h| !h.is_empty()).ok_or_else(bad)?;
        let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
        Ok(TrinoEndpoint {
            host: host.to_string(),
            port,
            secure,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use hb_common::settings::Secret;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        config: QueryConfig,
    }

    #[test]
    fn clap_defaults_match_default_impl() {
        // Flags only (no env), so the test does not depend on the environment
        // beyond variables nobody sets in CI.
        let parsed = Cli::try_parse_from(["svc-query"]).unwrap().config;
        let default = QueryConfig::default();
        if std::env::vars().any(|(k, _)| k.starts_with("HB_")) {
            eprintln!("HB_* variables set; skipping default comparison");
            return;
        }
        assert_eq!(format!("{parsed:?}"), format!("{default:?}"));
    }

    #[test]
    fn the_secret_never_prints() {
        let cli = Cli::try_parse_from(["svc-query", "--auth-secret", "hunter2"]).unwrap();
        assert!(!format!("{:?}", cli.config).contains("hunter2"));
        assert_eq!(cli.config.secret(), Some("hunter2"));
    }

    #[test]
    fn durations_parse_with_units() {
        let cli = Cli::try_parse_from(["svc-query", "--query-timeout", "250ms"]).unwrap();
        assert_eq!(cli.config.query_timeout, Duration::from_millis(250));
        assert!(Cli::try_parse_from(["svc-query", "--query-timeout", "soon"]).is_err());
    }

    #[test]
    fn names_that_reach_sql_are_checked() {
        let mut config = QueryConfig {
            trino_catalog_scylla: "scylla\"; drop".into(),
            ..QueryConfig::default()
        };
        assert!(matches!(
            config.validate(),
            Err(ConfigError::BadTrinoName { .. })
        ));
        config.trino_catalog_scylla = "scylla_2".into();
        assert_eq!(config.validate(), Ok(()));
        config.tls.cert = Some("cert.pem".into());
        assert_eq!(config.validate(), Err(ConfigError::HalfTls));
    }

    #[test]
    fn without_a_secret_every_address_must_be_loopback() {
        let open = "0.0.0.0:8080".parse().unwrap();
        for set in [
            (|c: &mut QueryConfig, a| c.http_addr = a) as fn(&mut QueryConfig, SocketAddr),
            |c, a| c.grpc_addr = a,
            |c, a| c.metrics_addr = a,
        ] {
            let mut config = QueryConfig::default();
            set(&mut config, open);
            let error = config.validate().unwrap_err();
            assert!(matches!(error, ConfigError::OpenNonLoopback { .. }));
            assert!(error.to_string().contains("refusing"), "{error}");
            config.auth.secret = Some(Secret::new("s3cret"));
            assert_eq!(config.validate(), Ok(()));
        }
    }

    #[test]
    fn trino_urls_parse() {
        assert_eq!(
            TrinoEndpoint::parse("http://trino:8080").unwrap(),
            TrinoEndpoint {
                host: "trino".into(),
                port: 8080,
                secure: false
            }
        );
        assert_eq!(TrinoEndpoint::parse("https://t.example").unwrap().port, 443);
        assert!(TrinoEndpoint::parse("trino:8080").is_err());
        assert!(TrinoEndpoint::parse("ftp://trino").is_err());
    }
}
