//! svc-stream settings: every one an env variable with a default and a flag.

use crate::sessionizer::SessionConfig;
use hb_common::duration::{format_duration, parse_duration};
use hb_common::settings::KafkaSettings;
use hb_common::store::StoreSettings;
use std::net::SocketAddr;
use std::sync::LazyLock;
use std::time::Duration;

/// Settings of svc-stream (also used by the stream stage of `hbmesh up`).
#[derive(clap::Args, Clone, Debug)]
pub struct StreamConfig {
    /// Metrics and health (`/metrics`, `/healthz`, `/readyz`) listen address.
    #[arg(
        long = "stream-metrics-addr",
        env = "HB_STREAM_METRICS_ADDR",
        default_value = "127.0.0.1:9102"
    )]
    pub metrics_addr: SocketAddr,

    /// Where accepted heartbeats come from (`HB_KAFKA_BROKERS`, `HB_KAFKA_TOPIC`).
    #[command(flatten)]
    pub kafka: KafkaSettings,

    /// Consumer group of the stream service.
    #[arg(long, env = "HB_KAFKA_GROUP", default_value = "hb-stream")]
    pub kafka_group: String,

    /// Consumer session timeout: how long a dead consumer keeps its partitions.
    #[arg(long, env = "HB_KAFKA_SESSION_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub kafka_session_timeout: Duration,

    /// Where the sessions store is (`HB_DATA_DIR`, `HB_YUGABYTE_URL`).
    #[command(flatten)]
    pub store: StoreSettings,

    /// ScyllaDB contact points (`host:port,...`); unset keeps the raw mirror in the sessions store.
    #[arg(long, env = "HB_SCYLLA_NODES")]
    pub scylla_nodes: Option<String>,

    /// ScyllaDB keyspace replication factor (created on start if missing).
    #[arg(long, env = "HB_SCYLLA_REPLICATION", default_value_t = 3)]
    pub scylla_replication: u32,

    /// Gap G (`HB_SESSION_GAP`).
    #[command(flatten)]
    pub gap: SessionGap,

    /// How far behind a partition's newest event time a heartbeat may arrive and still be merged.
    #[arg(long, env = "HB_ALLOWED_LATENESS", default_value = default_allowed_lateness(), value_parser = parse_duration)]
    pub allowed_lateness: Duration,

    /// Processing time a partition receives nothing before its watermark advances
    /// with processing time (default: the gap).
    #[arg(long, env = "HB_IDLE_TIMEOUT", value_parser = parse_duration)]
    pub idle_timeout: Option<Duration>,

    /// Time to live of raw heartbeats.
    #[arg(long, env = "HB_RAW_TTL", default_value = "30d", value_parser = parse_duration)]
    pub raw_ttl: Duration,

    /// How often session changes, raw rows and offsets are committed.
    #[arg(long, env = "HB_FLUSH_INTERVAL", default_value = "100ms", value_parser = positive_duration)]
    pub flush_interval: Duration,

    /// Heartbeats pending that force a flush before the interval; in the
    /// embedded tier, the most one group commit takes. Large, because under
    /// overload a bigger commit costs less per heartbeat (each commit rewrites
    /// the pages of the open sessions it touches). Below capacity commits
    /// stay small anyway.
    #[arg(long, env = "HB_FLUSH_MAX", default_value_t = 100_000, value_parser = positive_count)]
    pub flush_max: usize,

    /// Under load: how long an open session's row may lag the committed
    /// raw heartbeats (acknowledged ones, in the embedded tier). Once a commit holds
    /// 10,000 heartbeats or more, commits write only their raw rows until
    /// this much time has passed since sessions were last written, and so on
    /// until the stage is quiet or fewer than 10,000 heartbeats came in an
    /// interval; each session write then covers several heartbeats of
    /// every playing session instead of one, which is most of the writer's
    /// cost under load. Under light load, and at
    /// shutdown, every commit writes sessions. A restart rebuilds the deferred
    /// changes: the embedded tier from the raw rows, the Kafka consumer by
    /// reading its partitions again from the sessions' offset (their raw rows
    /// are not written twice). `0s` writes sessions with every commit.
    #[arg(long, env = "HB_SESSION_WRITE_INTERVAL", default_value = "2s", value_parser = parse_duration)]
    pub session_write_interval: Duration,

    /// Kafka consumer: how long its loop may go without a tick, or a commit
    /// may hang, before `/readyz` reports it stalled.
    #[arg(long, env = "HB_STREAM_STALL_TIMEOUT", default_value = "30s", value_parser = positive_duration)]
    pub stall_timeout: Duration,

    /// Only run the schema migrations, then exit (the Helm migration Job).
    #[arg(long, env = "HB_MIGRATE_ONLY", default_value_t = false)]
    pub migrate_only: bool,
}

impl StreamConfig {
    pub fn idle_timeout(&self) -> Duration {
        self.idle_timeout.unwrap_or(self.gap.session_gap)
    }

    pub fn session_config(&self) -> crate::sessionizer::SessionConfig {
        crate::sessionizer::SessionConfig {
            gap_ms: self.gap.ms(),
            lateness_ms: self.allowed_lateness.as_millis() as i64,
            idle_timeout_ms: self.idle_timeout().as_millis() as i64,
        }
    }

    /// Defaults as if no flag were set (env still applies).
    pub fn defaults() -> StreamConfig {
        use clap::{Args, Command, FromArgMatches};
        let matches = StreamConfig::augment_args(Command::new("defaults"))
            .try_get_matches_from(["defaults"])
            .expect("defaults parse");
        StreamConfig::from_arg_matches(&matches).expect("defaults parse")
    }
}

/// Gap G, read by the stream service and by `hbmesh sessionize`.
#[derive(clap::Args, Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionGap {
    /// Gap G: heartbeats this far apart start a new session.
    #[arg(long = "session-gap", visible_alias = "gap", env = "HB_SESSION_GAP", default_value = default_session_gap(), value_parser = parse_duration)]
    pub session_gap: Duration,
}

impl SessionGap {
    pub fn ms(&self) -> i64 {
        self.session_gap.as_millis() as i64
    }
}

/// The default of `HB_SESSION_GAP` as its flag shows it (`10m`): the
/// sessionizer's own (SPEC 5), so the gap is declared once.
pub fn default_session_gap() -> &'static str {
    static TEXT: LazyLock<String> =
        LazyLock::new(|| duration_text(SessionConfig::default().gap_ms));
    &TEXT
}

/// The default of `HB_ALLOWED_LATENESS`, the sessionizer's own (SPEC 5).
pub fn default_allowed_lateness() -> &'static str {
    static TEXT: LazyLock<String> =
        LazyLock::new(|| duration_text(SessionConfig::default().lateness_ms));
    &TEXT
}

fn duration_text(ms: i64) -> String {
    format_duration(Duration::from_millis(ms.max(0) as u64))
}

/// A zero flush interval would make the flush timer panic, and a zero flush
/// size would stop the stage from taking any heartbeat: both are refused.
fn positive_duration(text: &str) -> Result<Duration, String> {
    match parse_duration(text)? {
        zero if zero.is_zero() => Err("must be more than zero".into()),
        duration => Ok(duration),
    }
}

fn positive_count(text: &str) -> Result<usize, String> {
    match text.trim().replace('_', "").parse::<usize>() {
        Ok(0) => Err("must be more than zero".into()),
        Ok(count) => Ok(count),
        Err(err) => Err(format!("not a count: {err}")),
    }
}

#[cfg(test)]
mod tests {
    use super::StreamConfig;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        stream: StreamConfig,
    }

    #[test]
    fn a_zero_flush_size_or_interval_is_refused_with_a_clear_reason() {
        for (flag, value) in [("--flush-max", "0"), ("--flush-interval", "0s")] {
            let err = Cli::try_parse_from(["svc-stream", flag, value])
                .err()
                .unwrap_or_else(|| panic!("{flag} {value} was accepted"))
                .to_string();
            assert!(err.contains("must be more than zero"), "{err}");
        }
    }

    #[test]
    fn the_session_rules_default_to_the_sessionizers_own() {
        let cli = Cli::try_parse_from(["svc-stream"]).unwrap();
        assert_eq!(super::default_session_gap(), "10m");
        assert_eq!(super::default_allowed_lateness(), "2m");
        let rules = cli.stream.session_config();
        let defaults = crate::sessionizer::SessionConfig::default();
        if std::env::var_os("HB_SESSION_GAP").is_none() {
            assert_eq!(rules.gap_ms, defaults.gap_ms);
        }
        if std::env::var_os("HB_ALLOWED_LATENESS").is_none() {
            assert_eq!(rules.lateness_ms, defaults.lateness_ms);
        }
    }

    #[test]
    fn the_default_flush_settings_parse() {
        let cli = Cli::try_parse_from(["svc-stream"]).unwrap();
        assert_eq!(cli.stream.flush_max, 100_000);
        assert_eq!(cli.stream.flush_interval.as_millis(), 100);
    }
}
