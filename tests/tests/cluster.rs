//! The cluster tier end to end on this machine: gRPC ingest -> Kafka (librdkafka's
//! mock cluster, real protocol) -> stream consumer group -> PostgreSQL (standing
//! in for YugabyteDB) -> query API. The same test runs against a real broker:
//! `hb_testkit::broker::test_broker` (`HB_TEST_KAFKA`, or found or started on
//! the test port), on topics of its own.

use hb_e2e_tests::{spawn_app_configured, Tier};
use hb_proto::v1::Heartbeat;
use hb_testkit::fleet::{Fleet, FleetConfig};
use sqlx::Row;
use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};
use svc_stream::sessionizer::{sessionize_all, Event, Session, SessionConfig};

fn workload(count: usize) -> Vec<Heartbeat> {
    let mut fleet = Fleet::new(FleetConfig {
        devices: 20,
        users: 12,
        videos: 6,
        ads: 3,
        seed: 21,
        start_ms: hb_common::time::now_ms() - 60 * 60_000,
        ..FleetConfig::default()
    });
    fleet.heartbeats(count).collect()
}

async fn cluster_round_trip(brokers: String, topic: &str, dlq_topic: &str) {
    let (db, pool) = hb_testkit::db::TestDb::create().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_app_configured(
        dir.path().to_path_buf(),
        Tier {
            kafka_brokers: Some(brokers),
            yugabyte_url: Some(db.url.clone()),
        },
        |ingest, stream, _| {
            ingest.kafka.topic = topic.to_string();
            ingest.dlq_topic = dlq_topic.to_string();
            stream.kafka.topic = topic.to_string();
            stream.kafka_group = format!("{topic}-group");
        },
    )
    .await;
    let heartbeats = workload(1_000);
    let distinct: HashSet<_> = heartbeats.iter().map(|hb| hb.event_id.clone()).collect();
    for chunk in heartbeats.chunks(100) {
        let summary = app.push(chunk.to_vec()).await.expect("push");
        assert_eq!(summary.rejected, 0);
    }

    // Acked means in Kafka; wait for the stream stage to commit it all.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let rows: i64 = sqlx::query("SELECT COUNT(*) FROM raw_heartbeats")
            .fetch_one(&pool)
            .await
            .unwrap()
            .get(0);
        if rows as usize == distinct.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {rows} of {} raw rows",
            distinct.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let events = heartbeats
        .iter()
        .map(|hb| Event::from_proto(hb).unwrap())
        .collect();
    let mut by_user: BTreeMap<String, Vec<Session>> = BTreeMap::new();
    for s in sessionize_all(events, SessionConfig::default().gap_ms) {
        by_user.entry(s.user_id.clone()).or_default().push(s);
    }
    for (user, mut sessions) in by_user {
        let mut stored = app.user_sessions(&user).await;
        let order = |s: &Session| (s.video_id.clone(), s.start_ms);
        stored.sort_by_key(order);
        sessions.sort_by_key(order);
        assert_eq!(stored, sessions, "sessions of {user}");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_flow_through_kafka_into_postgres_sessions() {
    let mock = rdkafka::mocking::MockCluster::new(1).unwrap();
    mock.create_topic("heartbeats", 4, 1).unwrap();
    mock.create_topic("heartbeats-dlq", 1, 1).unwrap();
    cluster_round_trip(mock.bootstrap_servers(), "heartbeats", "heartbeats-dlq").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_round_trip_on_a_real_broker() {
    use hb_testkit::broker;
    let brokers = broker::test_broker().await.expect("a Kafka broker");
    let (topic, dlq_topic) = (
        broker::unique_topic("hb-test"),
        broker::unique_topic("hb-test-dlq"),
    );
    broker::create_topic(&brokers, &topic, 4)
        .await
        .expect("topic");
    broker::create_topic(&brokers, &dlq_topic, 1)
        .await
        .expect("dlq topic");
    cluster_round_trip(brokers.clone(), &topic, &dlq_topic).await;
    broker::delete_topics(&brokers, &[&topic, &dlq_topic]).await;
}
