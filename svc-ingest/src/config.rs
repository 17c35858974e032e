//! svc-ingest settings: every one an env variable with a default and a flag.

use hb_common::duration::parse_duration;
use hb_common::settings::{AuthSettings, KafkaSettings, TlsSettings};
use std::net::SocketAddr;
use std::time::Duration;

/// Settings of svc-ingest.
#[derive(clap::Args, Clone, Debug)]
pub struct IngestConfig {
    /// gRPC listen address; port 0 picks a free port (the bound address is logged).
    #[arg(
        long = "ingest-addr",
        env = "HB_INGEST_ADDR",
        default_value = "127.0.0.1:50051"
    )]
    pub addr: SocketAddr,

    /// Metrics and health (`/metrics`, `/healthz`, `/readyz`) listen address.
    #[arg(
        long = "ingest-metrics-addr",
        env = "HB_INGEST_METRICS_ADDR",
        default_value = "127.0.0.1:9101"
    )]
    pub metrics_addr: SocketAddr,

    /// Bearer tokens (`HB_AUTH_SECRET`); without a secret ingest runs open, loopback only.
    #[command(flatten)]
    pub auth: AuthSettings,

    /// TLS of the gRPC listener (`HB_TLS_CERT`, `HB_TLS_KEY`).
    #[command(flatten)]
    pub tls: TlsSettings,

    /// Where accepted heartbeats are published (`HB_KAFKA_BROKERS`, `HB_KAFKA_TOPIC`).
    #[command(flatten)]
    pub kafka: KafkaSettings,

    /// Topic rejected input is dead-lettered to, with its reason.
    #[arg(long, env = "HB_DLQ_TOPIC", default_value = "heartbeats-dlq")]
    pub dlq_topic: String,

    /// How long Kafka may take to acknowledge a heartbeat before the call fails
    /// with UNAVAILABLE.
    #[arg(long, env = "HB_KAFKA_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub kafka_timeout: Duration,

    /// Sustained heartbeats per second allowed per device; 0 turns the limit off.
    #[arg(long, env = "HB_DEVICE_RATE", default_value_t = 10)]
    pub device_rate: u32,

    /// Burst allowed per device above the sustained rate.
    #[arg(long, env = "HB_DEVICE_BURST", default_value_t = 50)]
    pub device_burst: u32,

    /// Oldest `event_time` accepted, relative to server time.
    #[arg(long, env = "HB_MAX_EVENT_AGE", default_value = "7d", value_parser = parse_duration)]
    pub max_event_age: Duration,

    /// Concurrent calls served; beyond it calls are shed with UNAVAILABLE.
    #[arg(long, env = "HB_INGEST_CONCURRENCY", default_value_t = 10_000)]
    pub concurrency: usize,

    /// Heartbeats per publish batch within one call.
    #[arg(long, env = "HB_INGEST_BATCH", default_value_t = 512)]
    pub batch_size: usize,

    /// Publish batches in flight per call before reading more (bounded window).
    #[arg(long, env = "HB_INGEST_WINDOW", default_value_t = 8)]
    pub window: usize,
}

impl IngestConfig {
    /// Checks what clap cannot: TLS halves, and no open listener off loopback.
    pub fn validate(&self) -> Result<(), String> {
        self.tls.files().map_err(|half| half.to_string())?;
        hb_common::refuse_open_non_loopback(
            self.auth.secret(),
            &[
                ("HB_INGEST_ADDR", self.addr),
                ("HB_INGEST_METRICS_ADDR", self.metrics_addr),
            ],
        )?;
        if self.batch_size == 0 || self.window == 0 || self.concurrency == 0 {
            return Err(
                "HB_INGEST_BATCH, HB_INGEST_WINDOW and HB_INGEST_CONCURRENCY must be > 0".into(),
            );
        }
        Ok(())
    }

    /// Defaults as if no env or flag were set (tests and embedding).
    pub fn defaults() -> IngestConfig {
        use clap::{Args, Command, FromArgMatches};
        let matches = IngestConfig::augment_args(Command::new("defaults"))
            .try_get_matches_from(["defaults"])
            .expect("defaults parse");
        IngestConfig::from_arg_matches(&matches).expect("defaults parse")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hb_common::settings::Secret;

    #[test]
    fn without_a_secret_the_grpc_and_metrics_addresses_must_be_loopback() {
        let open: SocketAddr = "0.0.0.0:0".parse().unwrap();
        for metrics in [false, true] {
            let mut config = IngestConfig::defaults();
            config.auth.secret = None;
            if metrics {
                config.metrics_addr = open;
            } else {
                config.addr = open;
            }
            let error = config.validate().unwrap_err();
            assert!(
                error.contains("refusing") && error.contains("0.0.0.0"),
                "{error}"
            );
            config.auth.secret = Some(Secret::new("s3cret"));
            assert_eq!(config.validate(), Ok(()));
        }
    }
}
