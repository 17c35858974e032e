//! What the three services and the `hbmesh` binary share. Plumbing: bearer
//! tokens and their roles, config value parsing and the settings several
//! services read, telemetry, progress of long work, shutdown, the
//! metrics/health endpoint. And the
//! contracts between the services: the sessions store layer (opening,
//! migrations, error classification, columns, rows) that the stream writes
//! and the query service reads ([`store`]), the raw mirror's layout ([`raw`])
//! and the in-memory ingest -> stream hand-off of the embedded tier
//! ([`handoff`]). Test support (the simulated fleet, test databases, the test
//! broker) is in the `hb-testkit` crate, not here.
#![forbid(unsafe_code)]

pub mod auth;
pub mod duration;
pub mod handoff;
pub mod health;
pub mod metrics_http;
pub mod progress;
pub mod raw;
pub mod settings;
pub mod shutdown;
pub mod store;
pub mod telemetry;
pub mod time;

/// Exit code for a configuration error (EX_USAGE), so orchestrators can tell it
/// from a crash.
pub const EXIT_CONFIG: i32 = 64;

/// Installs rustls' aws-lc-rs crypto provider as the process default, the
/// one provider the binaries link (trino-rust-client's reqwest requires it).
/// Naming it here keeps every TLS server (tonic's, axum-server's) working if
/// a dependency ever links a second provider, where rustls would refuse to
/// choose. Every binary calls this at start; calling it again is harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// True when `addr` is a loopback address; services refuse to listen elsewhere
/// without an auth secret.
pub fn is_loopback(addr: &std::net::SocketAddr) -> bool {
    addr.ip().is_loopback()
}

/// Without an auth secret (unset or empty) every listener must be on
/// loopback: the first `(variable, address)` that is not is refused.
pub fn refuse_open_non_loopback(
    secret: Option<&str>,
    addrs: &[(&str, std::net::SocketAddr)],
) -> Result<(), String> {
    if secret.is_some_and(|s| !s.is_empty()) {
        return Ok(());
    }
    match addrs.iter().find(|(_, addr)| !is_loopback(addr)) {
        Some((name, addr)) => Err(format!(
            "refusing to listen on non-loopback {addr} ({name}) without HB_AUTH_SECRET: \
             set a secret or bind 127.0.0.1"
        )),
        None => Ok(()),
    }
}

/// Reads a service config from the environment (and its defaults) without
/// looking at the command line: every setting is an `HB_*` variable.
pub fn config_from_env<T: clap::Args + clap::FromArgMatches>() -> anyhow::Result<T> {
    SharedFlags::default().config()
}

/// One command line shared by several configs, as `hbmesh up` runs several
/// services in one process. Their derived parsers cannot be merged (each has
/// its own `metrics_addr`, and shared settings such as `--auth-secret` would
/// be defined twice), so each config is parsed from the flags it knows, and
/// a shared flag goes to every config that has it. Flags are long only
/// (`--name value`, `--name=value`, or `--name` for a switch); a flag none
/// of the configs knows is an error naming it. Environment variables and
/// defaults apply as for each service alone, flags winning.
#[derive(Clone, Debug, Default)]
pub struct SharedFlags {
    /// Each flag's name and its tokens (`--name value` is two).
    flags: Vec<(String, Vec<String>)>,
}

impl SharedFlags {
    /// Checks `args` against the flags of `commands` (each built with
    /// `T::augment_args`).
    pub fn parse(args: &[String], commands: &[clap::Command]) -> Result<SharedFlags, String> {
        let mut flags = Vec::new();
        let mut rest = args.iter();
        while let Some(token) = rest.next() {
            let (name, inline) = flag_name(token)?;
            let takes_value = commands
                .iter()
                .find_map(|command| long_arg(command, name))
                .map(|arg| arg.get_action().takes_values())
                .ok_or_else(|| format!("unknown setting --{name}"))?;
            let mut tokens = vec![token.clone()];
            if takes_value && !inline {
                let value = rest
                    .next()
                    .ok_or_else(|| format!("--{name} needs a value"))?;
                tokens.push(value.clone());
            }
            flags.push((name.to_string(), tokens));
        }
        Ok(SharedFlags { flags })
    }

    /// The config `T`, from the flags it knows, its environment variables
    /// and its defaults.
    pub fn config<T: clap::Args + clap::FromArgMatches>(&self) -> anyhow::Result<T> {
        let command = T::augment_args(clap::Command::new("hbmesh").no_binary_name(true));
        let mine: Vec<&String> = self
            .flags
            .iter()
            .filter(|(name, _)| long_arg(&command, name).is_some())
            .flat_map(|(_, tokens)| tokens)
            .collect();
        let matches = command
            .try_get_matches_from(mine)
            .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
        Ok(T::from_arg_matches(&matches)?)
    }
}

/// `--name` or `--name=value`: the name, and whether the value is inline.
fn flag_name(token: &str) -> Result<(&str, bool), String> {
    let Some(flag) = token.strip_prefix("--").filter(|flag| !flag.is_empty()) else {
        return Err(format!("expected a --setting, found {token:?}"));
    };
    Ok(match flag.split_once('=') {
        Some((name, _)) => (name, true),
        None => (flag, false),
    })
}

/// The argument whose long name, or one of its aliases, is `name`.
fn long_arg<'a>(command: &'a clap::Command, name: &str) -> Option<&'a clap::Arg> {
    command.get_arguments().find(|arg| {
        arg.get_long() == Some(name)
            || arg
                .get_all_aliases()
                .is_some_and(|aliases| aliases.contains(&name))
    })
}

#[cfg(test)]
mod shared_flags_tests {
    use super::SharedFlags;
    use clap::Args;

    #[derive(clap::Args, Debug)]
    struct Ingest {
        #[arg(long = "ingest-metrics-addr", default_value = "127.0.0.1:1")]
        metrics_addr: String,
        #[arg(long)]
        auth_secret: Option<String>,
    }

    #[derive(clap::Args, Debug)]
    struct Query {
        #[arg(long = "query-metrics-addr", default_value = "127.0.0.1:2")]
        metrics_addr: String,
        #[arg(long)]
        auth_secret: Option<String>,
        #[arg(long, default_value_t = false)]
        migrate_only: bool,
    }

    fn args(line: &str) -> Vec<String> {
        line.split_whitespace().map(str::to_string).collect()
    }

    fn commands() -> Vec<clap::Command> {
        vec![
            Ingest::augment_args(clap::Command::new("ingest")),
            Query::augment_args(clap::Command::new("query")),
        ]
    }

    #[test]
    fn a_shared_flag_reaches_every_config_and_the_others_only_their_own() {
        let flags = SharedFlags::parse(
            &args("--auth-secret s3 --query-metrics-addr=0.0.0.0:9 --migrate-only"),
            &commands(),
        )
        .unwrap();
        let ingest: Ingest = flags.config().unwrap();
        let query: Query = flags.config().unwrap();
        assert_eq!(ingest.auth_secret.as_deref(), Some("s3"));
        assert_eq!(ingest.metrics_addr, "127.0.0.1:1");
        assert_eq!(query.auth_secret.as_deref(), Some("s3"));
        assert_eq!(query.metrics_addr, "0.0.0.0:9");
        assert!(query.migrate_only);
    }

    #[test]
    fn no_flags_leave_the_defaults() {
        let flags = SharedFlags::parse(&[], &commands()).unwrap();
        let query: Query = flags.config().unwrap();
        assert_eq!(query.metrics_addr, "127.0.0.1:2");
        assert!(!query.migrate_only);
    }

    #[test]
    fn unknown_flags_stray_values_and_missing_values_are_refused_by_name() {
        let refused = |line: &str| SharedFlags::parse(&args(line), &commands()).unwrap_err();
        assert_eq!(refused("--data-dir /tmp"), "unknown setting --data-dir");
        assert_eq!(refused("--auth-secret"), "--auth-secret needs a value");
        assert!(refused("stray").contains("\"stray\""));
    }

    #[test]
    fn a_bad_value_is_reported_by_the_config_that_reads_it() {
        #[derive(clap::Args, Debug)]
        struct Counted {
            #[arg(long, default_value_t = 1)]
            count: u32,
        }
        let commands = [Counted::augment_args(clap::Command::new("counted"))];
        let flags = SharedFlags::parse(&args("--count many"), &commands).unwrap();
        let err = flags.config::<Counted>().unwrap_err().to_string();
        assert!(err.contains("many"), "{err}");
    }
}
