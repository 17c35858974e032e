//! svc-stream's readiness on the Kafka tier: renewed while the consumer loop
//! runs and its commits land; lost while a commit hangs past the stall
//! timeout or while the store keeps refusing writes; back once they pass.
//! The real broker of the tests and a fresh PostgreSQL database.

use hb_common::health::Health;
use hb_testkit::broker;
use hb_testkit::db::TestDb;
use hb_testkit::fleet::{Fleet, FleetConfig};
use prometheus_client::registry::Registry;
use prost::Message;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use sqlx::{Connection, Executor, PgConnection};
use std::sync::Arc;
use std::time::{Duration, Instant};
use svc_stream::kafka::KafkaSource;
use svc_stream::metrics::StreamMetrics;
use svc_stream::pipeline::{Pipeline, SourceKind, StageSettings};
use svc_stream::sessionizer::SessionConfig;
use svc_stream::sink::sql::PgStore;
use svc_stream::sink::RawPlacement;
use tokio_util::sync::CancellationToken;

const STALL: Duration = Duration::from_secs(1);

async fn produce(brokers: &str, topic: &str, count: usize, seed: u64) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("acks", "all")
        .create()
        .unwrap();
    let mut fleet = Fleet::new(FleetConfig {
        devices: 10,
        users: 8,
        videos: 4,
        seed,
        start_ms: hb_common::time::now_ms() - 30 * 60_000,
        ..FleetConfig::default()
    });
    for hb in fleet.heartbeats(count) {
        producer
            .send(
                FutureRecord::to(topic)
                    .key(&hb.user_id)
                    .payload(&hb.encode_to_vec()),
                Timeout::After(Duration::from_secs(10)),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
}

async fn wait_until(what: &str, within: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < deadline, "not {what} within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Holds `stream_offsets`, which every commit writes, until dropped.
async fn hold_offsets_table(url: &str) -> PgConnection {
    let mut blocker = PgConnection::connect(url).await.unwrap();
    blocker.execute("BEGIN").await.unwrap();
    blocker
        .execute("LOCK TABLE stream_offsets IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    blocker
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_drops_while_commits_hang_or_fail_and_returns_when_they_pass() {
    let brokers = broker::test_broker().await.unwrap();
    let topic = broker::unique_topic("readiness");
    broker::create_topic(&brokers, &topic, 2).await.unwrap();
    let (db, pool) = TestDb::create().await.unwrap();
    let store = Arc::new(PgStore::new(pool.clone(), 86_400_000));
    let metrics = StreamMetrics::register(&mut Registry::default());
    let pipeline = Pipeline::new(
        SessionConfig::default(),
        SourceKind::Log {
            topic: topic.clone(),
        },
        store.clone(),
        RawPlacement::InStore(store),
        metrics,
    );
    let source = KafkaSource {
        brokers: brokers.clone(),
        topic: topic.clone(),
        group: format!("{topic}-group"),
        session_timeout: Duration::from_secs(6),
        stall_after: STALL,
        extra: vec![("heartbeat.interval.ms".into(), "300".into())],
    };
    let settings = StageSettings {
        tick: Duration::from_millis(50),
        flush_max: 500,
        session_write_interval: Duration::ZERO,
        defer_from: usize::MAX,
    };
    let health = Health::default();
    let shutdown = CancellationToken::new();
    let stage = tokio::spawn(svc_stream::kafka::run(
        source,
        pipeline,
        settings,
        health.register("consumer"),
        shutdown.clone(),
    ));
    wait_until("ready at start", Duration::from_secs(30), || {
        health.is_ready()
    })
    .await;

    // A commit that hangs: the loop goes on ticking, the commit does not land.
    let blocker = hold_offsets_table(&db.url).await;
    produce(&brokers, &topic, 50, 1).await;
    wait_until("unready while a commit hangs", STALL * 5, || {
        !health.is_ready()
    })
    .await;
    blocker.close().await.unwrap();
    wait_until("ready once it lands", STALL * 5, || health.is_ready()).await;

    // Writes that keep failing: every statement waiting for the lock gives
    // up at once (a transient error, retried until it passes).
    sqlx::query(&format!(
        "ALTER DATABASE {} SET lock_timeout = '20ms'",
        db.name
    ))
    .execute(&pool)
    .await
    .unwrap();
    db.cut_connections().await.unwrap();
    let blocker = hold_offsets_table(&db.url).await;
    produce(&brokers, &topic, 50, 2).await;
    wait_until("unready while writes fail", STALL * 5, || {
        !health.is_ready()
    })
    .await;
    blocker.close().await.unwrap();
    wait_until("ready once they pass", Duration::from_secs(10), || {
        health.is_ready()
    })
    .await;

    // Nothing was lost on the way: every message gets committed.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let committed: i64 =
            sqlx::query_scalar("SELECT COALESCE(SUM(next_offset), 0)::BIGINT FROM stream_offsets")
                .fetch_one(&pool)
                .await
                .unwrap();
        if committed == 100 {
            break;
        }
        assert!(Instant::now() < deadline, "{committed} of 100 committed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shutdown.cancel();
    stage.await.unwrap().unwrap();
}
