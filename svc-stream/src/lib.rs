//! svc-stream: consumes accepted heartbeats, sessionizes them exactly (SPEC 5)
//! and writes session changes, offsets and the raw mirror.
#![deny(unsafe_code)]

pub mod config;
pub mod embedded;
pub mod kafka;
pub mod metrics;
pub mod pipeline;
pub mod sessionizer;
pub mod sink;

use anyhow::Context;
use config::StreamConfig;
use hb_common::handoff::HandoffRx;
use hb_common::health::Health;
use metrics::StreamMetrics;
use pipeline::Pipeline;
use prometheus_client::registry::Registry;
use sink::scylla::{ScyllaConfig, ScyllaMirror};
use sink::sql::{PgStore, SqliteStore};
use sink::{RawInStore, RawPlacement, SessionStore};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Where heartbeats come from.
pub enum Source {
    /// The Kafka topic from the config (svc-stream's own binary).
    Kafka,
    /// The in-process hand-off of `hbmesh up`.
    Embedded(HandoffRx),
}

/// The sessions store and the raw rows' place chosen by configuration.
pub struct Sinks {
    pub store: Arc<dyn SessionStore>,
    pub raw: RawPlacement,
    pub tier: &'static str,
}

/// Opens (and migrates) the sessions store and the raw mirror: YugabyteDB
/// when `HB_YUGABYTE_URL` is set, else the SQLite file; ScyllaDB when
/// `HB_SCYLLA_NODES` is set, else the sessions store itself.
pub async fn open_sinks(config: &StreamConfig) -> anyhow::Result<Sinks> {
    let ttl_ms = config.raw_ttl.as_millis() as i64;
    let (store, in_store, tier): (Arc<dyn SessionStore>, Arc<dyn RawInStore>, _) =
        match &config.store.yugabyte_url {
            Some(url) => {
                let pool = hb_common::store::open_postgres(url, 8)
                    .await
                    .context("connecting to YugabyteDB (HB_YUGABYTE_URL)")?;
                let store = Arc::new(PgStore::new(pool, ttl_ms));
                (store.clone(), store, "yugabyte")
            }
            None => {
                let pool = hb_common::store::open_sqlite(&config.store.data_dir, 4)
                    .await
                    .with_context(|| {
                        format!(
                            "opening the embedded store in {}",
                            config.store.data_dir.display()
                        )
                    })?;
                let store = Arc::new(SqliteStore::new(pool, ttl_ms));
                (store.clone(), store, "embedded")
            }
        };
    match &config.scylla_nodes {
        Some(nodes) => {
            let scylla = ScyllaConfig {
                nodes: nodes
                    .split(',')
                    .map(|n| n.trim().to_string())
                    .filter(|n| !n.is_empty())
                    .collect(),
                replication_factor: config.scylla_replication,
                ttl_secs: config.raw_ttl.as_secs().min(u64::from(u32::MAX)) as u32,
                ..ScyllaConfig::default()
            };
            let mirror = ScyllaMirror::connect(&scylla)
                .await
                .map_err(|e| anyhow::anyhow!("connecting to ScyllaDB (HB_SCYLLA_NODES): {e}"))?;
            Ok(Sinks {
                store,
                raw: RawPlacement::Mirror(Arc::new(mirror)),
                tier,
            })
        }
        None => Ok(Sinks {
            store,
            raw: RawPlacement::InStore(in_store),
            tier,
        }),
    }
}

/// Runs the stream stage until `shutdown` (Kafka) or until the hand-off closes
/// (embedded), serving metrics on `metrics_listener`.
pub async fn run(
    config: StreamConfig,
    source: Source,
    metrics_listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut registry = Registry::default();
    let metrics = StreamMetrics::register(&mut registry);
    let health = Health::default();
    let store_health = health.register("store");
    let sinks = open_sinks(&config).await?;
    store_health.healthy();
    tracing::info!(
        metrics_addr = %metrics_listener.local_addr()?,
        tier = sinks.tier,
        raw_rows = sinks.raw.name(),
        "svc-stream starting"
    );
    let ops_shutdown = CancellationToken::new();
    let ops = tokio::spawn(hb_common::metrics_http::serve(
        metrics_listener,
        Arc::new(registry),
        health.clone(),
        ops_shutdown.clone(),
    ));
    let session_config = config.session_config();
    let result = match source {
        Source::Embedded(rx) => {
            let pipeline = Pipeline::new(
                session_config,
                pipeline::SourceKind::Handoff,
                sinks.store,
                sinks.raw,
                metrics,
            );
            let settings = pipeline::StageSettings {
                tick: config
                    .flush_interval
                    .max(std::time::Duration::from_millis(50)),
                flush_max: config.flush_max,
                session_write_interval: config.session_write_interval,
                defer_from: pipeline::defer_from(config.flush_max),
            };
            let ready = pipeline::Readiness::new(health.register("stream"), config.stall_timeout);
            embedded::run_on_own_thread(pipeline, rx, settings, ready).await
        }
        Source::Kafka => {
            let brokers = config
                .kafka
                .brokers
                .clone()
                .context("svc-stream needs HB_KAFKA_BROKERS; without Kafka the stream stage runs inside `hbmesh up` (embedded tier)")?;
            let pipeline = Pipeline::new(
                session_config,
                pipeline::SourceKind::Log {
                    topic: config.kafka.topic.clone(),
                },
                sinks.store,
                sinks.raw,
                metrics,
            );
            let source = kafka::KafkaSource {
                brokers,
                topic: config.kafka.topic.clone(),
                group: config.kafka_group.clone(),
                session_timeout: config.kafka_session_timeout,
                stall_after: config.stall_timeout,
                extra: Vec::new(),
            };
            let settings = pipeline::StageSettings {
                tick: config.flush_interval,
                flush_max: config.flush_max,
                session_write_interval: config.session_write_interval,
                defer_from: pipeline::defer_from(config.flush_max),
            };
            kafka::run(
                source,
                pipeline,
                settings,
                health.register("consumer"),
                shutdown.clone(),
            )
            .await
        }
    };
    ops_shutdown.cancel();
    let _ = ops.await;
    result
}
