//! Settings more than one service reads, each declared once and flattened
//! into the services' configs, so a variable has one flag, one default and
//! one description (and `hbmesh up` hands one flag to every config that has
//! it).

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// A secret value (`HB_AUTH_SECRET`): printed as `<redacted>`, so that
/// `Debug` (and therefore any log line) never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret itself, for the one place that needs it (tokens).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(text: &str) -> Result<Secret, Self::Err> {
        Ok(Secret(text.to_string()))
    }
}

/// How a service tells callers apart.
#[derive(clap::Args, Clone, Debug, Default, PartialEq, Eq)]
pub struct AuthSettings {
    /// HMAC secret of bearer tokens; unset means open mode (loopback only). Never logged.
    #[arg(long = "auth-secret", env = "HB_AUTH_SECRET", hide_env_values = true)]
    pub secret: Option<Secret>,
}

impl AuthSettings {
    /// The secret, if one is set and non-empty.
    pub fn secret(&self) -> Option<&str> {
        self.secret
            .as_ref()
            .map(Secret::expose)
            .filter(|secret| !secret.is_empty())
    }
}

/// Where accepted heartbeats travel between ingest and the stream stage.
#[derive(clap::Args, Clone, Debug, PartialEq, Eq)]
pub struct KafkaSettings {
    /// Kafka bootstrap servers; unset means the embedded hand-off (`hbmesh up` only).
    #[arg(long = "kafka-brokers", env = "HB_KAFKA_BROKERS")]
    pub brokers: Option<String>,

    /// Topic of accepted heartbeats (key = user_id).
    #[arg(
        long = "kafka-topic",
        env = "HB_KAFKA_TOPIC",
        default_value = "heartbeats"
    )]
    pub topic: String,
}

impl Default for KafkaSettings {
    /// The documented defaults, without reading the environment.
    fn default() -> KafkaSettings {
        KafkaSettings {
            brokers: None,
            topic: "heartbeats".into(),
        }
    }
}

/// The certificate and key of a service's TLS listeners.
#[derive(clap::Args, Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsSettings {
    /// PEM certificate chain; with `HB_TLS_KEY` turns on TLS.
    #[arg(long = "tls-cert", env = "HB_TLS_CERT")]
    pub cert: Option<PathBuf>,

    /// PEM private key matching `HB_TLS_CERT`.
    #[arg(long = "tls-key", env = "HB_TLS_KEY")]
    pub key: Option<PathBuf>,
}

/// Only one of `HB_TLS_CERT` and `HB_TLS_KEY` is set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("HB_TLS_CERT and HB_TLS_KEY must be set together")]
pub struct HalfTls;

impl TlsSettings {
    /// The certificate and key when TLS is on; neither or both must be set.
    pub fn files(&self) -> Result<Option<(&Path, &Path)>, HalfTls> {
        match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => Ok(Some((cert, key))),
            (None, None) => Ok(None),
            _ => Err(HalfTls),
        }
    }

    pub fn enabled(&self) -> bool {
        self.cert.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_secret_never_prints_and_an_empty_one_is_none() {
        let auth = AuthSettings {
            secret: Some(Secret::new("hunter2")),
        };
        assert!(!format!("{auth:?}").contains("hunter2"));
        assert_eq!(auth.secret(), Some("hunter2"));
        let empty = AuthSettings {
            secret: Some(Secret::new("")),
        };
        assert_eq!(empty.secret(), None);
    }

    #[test]
    fn tls_needs_both_files_or_neither() {
        let mut tls = TlsSettings::default();
        assert_eq!(tls.files(), Ok(None));
        tls.cert = Some("cert.pem".into());
        assert_eq!(tls.files(), Err(HalfTls));
        tls.key = Some("key.pem".into());
        assert_eq!(
            tls.files(),
            Ok(Some((Path::new("cert.pem"), Path::new("key.pem"))))
        );
    }
}
