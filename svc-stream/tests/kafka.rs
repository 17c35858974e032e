//! The Kafka path of the stream stage on librdkafka's mock cluster (real
//! protocol, consumer groups): heartbeats -> topic -> consumer group ->
//! PostgreSQL, including a rebalance when a second consumer joins mid-stream.
//! The store must equal the batch definition: no loss, no double count.
//! The same scenario runs on a real broker: `hb_testkit::broker::test_broker`
//! (`HB_TEST_KAFKA`, or found or started on the test port).

use hb_proto::v1::Heartbeat;
use hb_testkit::broker;
use hb_testkit::fleet::{Fleet, FleetConfig};
use prometheus_client::registry::Registry;
use prost::Message;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use sqlx::{PgPool, Row};
use std::sync::Arc;
use std::time::{Duration, Instant};
use svc_stream::kafka::KafkaSource;
use svc_stream::metrics::StreamMetrics;
use svc_stream::pipeline::{Pipeline, SourceKind};
use svc_stream::sessionizer::{sessionize_all, Event, Session, SessionConfig};
use svc_stream::sink::sql::PgStore;
use svc_stream::sink::RawPlacement;
use tokio_util::sync::CancellationToken;

const PARTITIONS: i32 = 4;

fn workload(count: usize) -> Vec<Heartbeat> {
    let mut fleet = Fleet::new(FleetConfig {
        devices: 60,
        users: 40,
        videos: 10,
        ads: 4,
        seed: 11,
        ..FleetConfig::default()
    });
    fleet.heartbeats(count).collect()
}

async fn produce(brokers: &str, topic: &str, heartbeats: &[Heartbeat]) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .create()
        .unwrap();
    let sends = heartbeats.iter().map(|hb| {
        let payload = hb.encode_to_vec();
        let producer = producer.clone();
        let topic = topic.to_string();
        let key = hb.user_id.clone();
        async move {
            producer
                .send(
                    FutureRecord::to(&topic).key(&key).payload(&payload),
                    Timeout::After(Duration::from_secs(10)),
                )
                .await
                .map_err(|(e, _)| e)
        }
    });
    for result in futures::future::join_all(sends).await {
        result.unwrap();
    }
}

fn consumer(
    brokers: &str,
    topic: &str,
    group: &str,
    pool: &PgPool,
    shutdown: &CancellationToken,
) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    let store = Arc::new(PgStore::new(pool.clone(), 86_400_000));
    let metrics = StreamMetrics::register(&mut Registry::default());
    let pipeline = Pipeline::new(
        SessionConfig::default(),
        SourceKind::Log {
            topic: topic.to_string(),
        },
        store.clone(),
        RawPlacement::InStore(store),
        metrics,
    );
    let source = KafkaSource {
        brokers: brokers.to_string(),
        topic: topic.to_string(),
        group: group.to_string(),
        session_timeout: Duration::from_secs(6),
        stall_after: Duration::from_secs(30),
        extra: vec![("heartbeat.interval.ms".into(), "300".into())],
    };
    tokio::spawn(svc_stream::kafka::run(
        source,
        pipeline,
        svc_stream::pipeline::StageSettings {
            tick: Duration::from_millis(50),
            flush_max: 500,
            session_write_interval: Duration::from_secs(2),
            defer_from: 200,
        },
        hb_common::health::Health::default().register("consumer"),
        shutdown.clone(),
    ))
}

async fn committed(pool: &PgPool, topic: &str) -> i64 {
    sqlx::query("SELECT COALESCE(SUM(next_offset), 0)::BIGINT FROM stream_offsets WHERE topic = $1")
        .bind(topic)
        .fetch_one(pool)
        .await
        .unwrap()
        .get(0)
}

async fn wait_for_offsets(pool: &PgPool, topic: &str, total: usize) {
    let deadline = Instant::now() + Duration::from_secs(90);
    while committed(pool, topic).await < total as i64 {
        assert!(
            Instant::now() < deadline,
            "stream stage did not catch up: {} of {total}",
            committed(pool, topic).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn stored_sessions(pool: &PgPool) -> Vec<Session> {
    sqlx::query(
        "SELECT user_id, video_id, start_ms, end_ms, heartbeats, watch_ms, coverage_ms, \
         last_position_ms, devices, ads FROM sessions ORDER BY user_id, video_id, start_ms",
    )
    .fetch_all(pool)
    .await
    .unwrap()
    .iter()
    .map(|r| Session {
        user_id: r.get(0),
        video_id: r.get(1),
        start_ms: r.get(2),
        end_ms: r.get(3),
        heartbeats: r.get::<i64, _>(4) as u64,
        watch_ms: r.get(5),
        coverage_ms: r.get(6),
        last_position_ms: r.get(7),
        devices: r.get::<i64, _>(8) as u64,
        ads: serde_json::from_str(&r.get::<String, _>(9)).unwrap(),
    })
    .collect()
}

/// Runs the scenario against `brokers` with `topic` already created.
async fn rebalance_scenario(brokers: &str, topic: &str) {
    hb_common::telemetry::init_for_tests();
    let (_db, pool) = hb_testkit::db::TestDb::create().await.unwrap();
    let heartbeats = workload(4_000);
    let (first, second) = heartbeats.split_at(2_000);
    let group = format!("hb-test-{}", uuid_like());
    let shutdown = CancellationToken::new();

    produce(brokers, topic, first).await;
    let a = consumer(brokers, topic, &group, &pool, &shutdown);
    wait_for_offsets(&pool, topic, first.len()).await;

    // A second consumer joins: partitions move between them mid-stream.
    let b = consumer(brokers, topic, &group, &pool, &shutdown);
    tokio::time::sleep(Duration::from_millis(500)).await;
    produce(brokers, topic, second).await;
    wait_for_offsets(&pool, topic, heartbeats.len()).await;

    shutdown.cancel();
    a.await.unwrap().unwrap();
    b.await.unwrap().unwrap();

    let events = heartbeats
        .iter()
        .map(|hb| Event::from_proto(hb).unwrap())
        .collect();
    let expected = sessionize_all(events, SessionConfig::default().gap_ms);
    assert_eq!(stored_sessions(&pool).await, expected);
}

fn uuid_like() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_group_with_a_rebalance_loses_and_doubles_nothing() {
    let mock = rdkafka::mocking::MockCluster::new(1).unwrap();
    mock.create_topic("heartbeats", PARTITIONS, 1).unwrap();
    let brokers = mock.bootstrap_servers();
    rebalance_scenario(&brokers, "heartbeats").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_scenario_on_a_real_broker() {
    let brokers = broker::test_broker().await.expect("a Kafka broker");
    let topic = broker::unique_topic("hb-test");
    broker::create_topic(&brokers, &topic, PARTITIONS)
        .await
        .expect("topic");
    rebalance_scenario(&brokers, &topic).await;
    broker::delete_topics(&brokers, &[&topic]).await;
}
