//! svc-ingest with the Kafka publisher, end to end: against librdkafka's mock
//! cluster (which also injects errors) and against a real broker, the one of
//! `hb_testkit::broker::test_broker` (`HB_TEST_KAFKA`, or found or started on
//! the test port), with fresh topics per test, deleted afterwards.

mod helpers;

use hb_proto::v1::{Heartbeat, PlaybackState};
use hb_testkit::broker;
use helpers::*;
use prometheus_client::registry::Registry;
use prost::Message as _;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use rdkafka::util::Timeout;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use svc_ingest::metrics::IngestMetrics;
use svc_ingest::publisher::kafka::{KafkaPublisher, KafkaSettings};
use svc_ingest::publisher::PublishError;
use tonic::Code;

const PARTITIONS: i32 = 3;

/// Where the test's topics live.
enum Cluster {
    Mock(MockCluster<'static, DefaultProducerContext>),
    Real(String),
}

/// A broker with the two topics of one test.
struct TestBroker {
    cluster: Cluster,
    topic: String,
    dlq_topic: String,
}

impl TestBroker {
    /// A fresh mock cluster with `heartbeats` and `heartbeats-dlq`.
    fn mock() -> TestBroker {
        let mock = MockCluster::new(3).expect("mock cluster");
        mock.create_topic("heartbeats", PARTITIONS, 3)
            .expect("topic");
        mock.create_topic("heartbeats-dlq", 1, 3)
            .expect("dlq topic");
        TestBroker {
            cluster: Cluster::Mock(mock),
            topic: "heartbeats".into(),
            dlq_topic: "heartbeats-dlq".into(),
        }
    }

    /// The test broker (found or started), with uniquely named topics.
    async fn real() -> TestBroker {
        let brokers = broker::test_broker().await.expect("a Kafka broker");
        let topic = broker::unique_topic("hb-test");
        let dlq_topic = broker::unique_topic("hb-test-dlq");
        broker::create_topic(&brokers, &topic, PARTITIONS)
            .await
            .expect("topic");
        broker::create_topic(&brokers, &dlq_topic, 1)
            .await
            .expect("dlq topic");
        TestBroker {
            cluster: Cluster::Real(brokers),
            topic,
            dlq_topic,
        }
    }

    fn bootstrap(&self) -> String {
        match &self.cluster {
            Cluster::Mock(mock) => mock.bootstrap_servers(),
            Cluster::Real(brokers) => brokers.clone(),
        }
    }

    fn cluster(&self) -> &MockCluster<'static, DefaultProducerContext> {
        match &self.cluster {
            Cluster::Mock(mock) => mock,
            Cluster::Real(_) => panic!("error injection needs the mock cluster"),
        }
    }

    fn settings(&self, timeout: Duration) -> KafkaSettings {
        KafkaSettings {
            brokers: self.bootstrap(),
            topic: self.topic.clone(),
            dlq_topic: self.dlq_topic.clone(),
            timeout,
            extra: vec![("retry.backoff.ms".into(), "50".into())],
        }
    }

    async fn publisher(&self, timeout: Duration) -> KafkaPublisher {
        KafkaPublisher::connect(self.settings(timeout), test_metrics())
            .await
            .expect("publisher connects")
    }

    /// Everything in `topic`, once at least `at_least` records arrived and
    /// nothing more came for a moment (or the patience ran out).
    async fn read(&self, topic: &str, at_least: usize) -> Vec<Record> {
        let bootstrap = self.bootstrap();
        let topic = topic.to_string();
        tokio::task::spawn_blocking(move || read_topic(&bootstrap, &topic, at_least))
            .await
            .expect("reader")
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        let Cluster::Real(brokers) = &self.cluster else {
            return;
        };
        let (brokers, topics) = (
            brokers.clone(),
            [self.topic.clone(), self.dlq_topic.clone()],
        );
        // Best effort, on its own runtime: Drop cannot await.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async {
                let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
                    .set("bootstrap.servers", &brokers)
                    .create()
                    .expect("admin client");
                let names: Vec<&str> = topics.iter().map(String::as_str).collect();
                let _ = admin.delete_topics(&names, &AdminOptions::new()).await;
            });
        })
        .join();
    }
}

fn test_metrics() -> IngestMetrics {
    IngestMetrics::register(&mut Registry::default())
}

/// One record as a consumer sees it.
#[derive(Debug)]
struct Record {
    partition: i32,
    key: Vec<u8>,
    payload: Vec<u8>,
    headers: HashMap<String, String>,
}

fn read_topic(bootstrap: &str, topic: &str, at_least: usize) -> Vec<Record> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("reader-{}", event_id()))
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", "6000")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    let metadata = consumer
        .fetch_metadata(Some(topic), Timeout::After(PATIENCE))
        .expect("metadata");
    let mut assignment = TopicPartitionList::new();
    for partition in metadata.topics()[0].partitions() {
        assignment
            .add_partition_offset(topic, partition.id(), Offset::Beginning)
            .expect("partition");
    }
    consumer.assign(&assignment).expect("assign");
    let deadline = Instant::now() + PATIENCE;
    let mut last_arrival = Instant::now();
    let mut records = Vec::new();
    while Instant::now() < deadline {
        let settled = last_arrival.elapsed() > Duration::from_millis(750);
        if records.len() >= at_least && settled {
            break;
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                last_arrival = Instant::now();
                let headers = message
                    .headers()
                    .map(|headers| {
                        headers
                            .iter()
                            .map(|h| {
                                let value =
                                    h.value.map(|v| String::from_utf8_lossy(v).into_owned());
                                (h.key.to_string(), value.unwrap_or_default())
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                records.push(Record {
                    partition: message.partition(),
                    key: message.key().unwrap_or_default().to_vec(),
                    payload: message.payload().unwrap_or_default().to_vec(),
                    headers,
                });
            }
            Some(Err(err)) => panic!("reading {topic}: {err}"),
            None => {}
        }
    }
    records
}

/// `count` heartbeats spread over a few users and devices.
fn mixed_heartbeats(count: usize) -> Vec<Heartbeat> {
    (0..count)
        .map(|i| {
            let mut hb = heartbeat(&format!("d-{}", i % 5));
            hb.user_id = format!("user-{}", i % 7);
            hb.position_ms = i as u64 * 5_000;
            hb
        })
        .collect()
}

fn decoded(records: &[Record]) -> Vec<Heartbeat> {
    records
        .iter()
        .map(|r| Heartbeat::decode(r.payload.as_slice()).expect("protobuf payload"))
        .collect()
}

// ---- scenarios, run on the mock cluster and on a real broker ----

async fn heartbeats_land_keyed_by_user_with_their_protobuf_payload(broker: &TestBroker) {
    let publisher = broker.publisher(Duration::from_secs(10)).await;
    let app = spawn_app(Arc::new(publisher)).await;
    let sent = mixed_heartbeats(60);
    let summary = app
        .push(Some(&app.gateway_token()), sent.clone())
        .await
        .expect("push succeeds");
    assert_eq!(summary.accepted, 60);

    let records = broker.read(&broker.topic, sent.len()).await;
    assert_eq!(records.len(), sent.len(), "each heartbeat exactly once");
    let by_id: HashMap<String, &Heartbeat> =
        sent.iter().map(|hb| (hb.event_id.clone(), hb)).collect();
    let mut partition_of_user: HashMap<String, i32> = HashMap::new();
    let mut position_by_user: HashMap<String, u64> = HashMap::new();
    for (record, landed) in records.iter().zip(decoded(&records)) {
        let original = by_id
            .get(&landed.event_id)
            .expect("a heartbeat that was sent");
        assert_eq!(&&landed, original, "payload is the heartbeat as sent");
        assert_eq!(record.key, landed.user_id.as_bytes(), "key = user_id");
        let partition = *partition_of_user
            .entry(landed.user_id.clone())
            .or_insert(record.partition);
        assert_eq!(
            partition, record.partition,
            "one user stays in one partition"
        );
        // Within a partition, one user's heartbeats keep their send order.
        let previous = position_by_user.insert(landed.user_id.clone(), landed.position_ms);
        assert!(
            previous.is_none_or(|p| p < landed.position_ms),
            "order kept for {}",
            landed.user_id
        );
    }
    app.stop().await.expect("clean stop");
}

async fn rejected_heartbeats_land_in_the_dead_letter_topic_with_their_reason(broker: &TestBroker) {
    let publisher = broker.publisher(Duration::from_secs(10)).await;
    let app = spawn_app(Arc::new(publisher)).await;
    let good = heartbeat("d-1");
    let mut bad = heartbeat("d-1");
    bad.state = PlaybackState::Unspecified as i32;
    let summary = app
        .push(Some(&app.gateway_token()), vec![good, bad.clone()])
        .await
        .expect("push succeeds");
    assert_eq!((summary.accepted, summary.rejected), (1, 1));

    let letters = broker.read(&broker.dlq_topic, 1).await;
    assert_eq!(letters.len(), 1);
    let letter = &letters[0];
    assert!(
        letter.headers["reason"].starts_with("state_unspecified"),
        "{letter:?}"
    );
    assert_eq!(letter.headers["event_id"], bad.event_id);
    assert_eq!(Heartbeat::decode(letter.payload.as_slice()).unwrap(), bad);
    let heartbeats = broker.read(&broker.topic, 1).await;
    assert_eq!(
        heartbeats.len(),
        1,
        "the rejected one is not in the main topic"
    );
    app.stop().await.expect("clean stop");
}

async fn shutdown_returns_only_once_everything_acknowledged_is_in_the_topic(broker: &TestBroker) {
    let publisher = broker.publisher(Duration::from_secs(10)).await;
    let mut app = spawn_app_with(Arc::new(publisher), |c| c.device_rate = 0).await;
    let mut stream = app
        .open_stream(Some(&app.gateway_token()))
        .await
        .expect("stream opens");
    let sent = mixed_heartbeats(2_000);
    stream.send(sent.clone()).await;
    // Stop while batches are still on their way to the broker.
    app.shutdown.cancel();
    stream.close();
    let (acks, end) = stream.acks_until_end().await;
    assert!(
        end.is_ok(),
        "a device that closed its side ends cleanly: {end:?}"
    );
    assert_eq!(acks.last().map(|a| a.acked_index), Some(1_999));
    app.join(PATIENCE).await.expect("run returns Ok");

    let records = broker.read(&broker.topic, sent.len()).await;
    let landed: HashSet<String> = decoded(&records)
        .into_iter()
        .map(|hb| hb.event_id)
        .collect();
    let missing = sent
        .iter()
        .filter(|hb| !landed.contains(&hb.event_id))
        .count();
    assert_eq!(missing, 0, "every acknowledged heartbeat is in the topic");
}

macro_rules! on_both_tiers {
    ($scenario:ident, $mock:ident, $real:ident) => {
        #[tokio::test]
        async fn $mock() {
            $scenario(&TestBroker::mock()).await;
        }

        #[tokio::test]
        async fn $real() {
            $scenario(&TestBroker::real().await).await;
        }
    };
}

on_both_tiers!(
    heartbeats_land_keyed_by_user_with_their_protobuf_payload,
    heartbeats_land_keyed_by_user_with_their_protobuf_payload_on_the_mock_cluster,
    heartbeats_land_keyed_by_user_with_their_protobuf_payload_on_a_real_broker
);
on_both_tiers!(
    rejected_heartbeats_land_in_the_dead_letter_topic_with_their_reason,
    rejected_heartbeats_land_in_the_dead_letter_topic_with_their_reason_on_the_mock_cluster,
    rejected_heartbeats_land_in_the_dead_letter_topic_with_their_reason_on_a_real_broker
);
on_both_tiers!(
    shutdown_returns_only_once_everything_acknowledged_is_in_the_topic,
    shutdown_returns_only_once_everything_acknowledged_is_in_the_topic_on_the_mock_cluster,
    shutdown_returns_only_once_everything_acknowledged_is_in_the_topic_on_a_real_broker
);

// ---- failure injection: mock cluster only ----

#[tokio::test]
async fn a_broker_error_mid_stream_fails_the_call_with_unavailable_and_everything_acked_is_in_the_topic(
) {
    let broker = TestBroker::mock();
    let publisher = broker.publisher(Duration::from_millis(1_500)).await;
    let app = spawn_app_with(Arc::new(publisher), |c| c.device_rate = 0).await;
    let mut stream = app
        .open_stream(Some(&app.gateway_token()))
        .await
        .expect("stream opens");
    let before = mixed_heartbeats(50);
    stream.send(before.clone()).await;
    let mut acked_index = stream.acks_until(49).await.last().unwrap().acked_index;

    // Every produce request fails (retriably) until the delivery timeout.
    broker.cluster().request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 500],
    );
    let after = mixed_heartbeats(50);
    stream.send(after.clone()).await;
    let (acks, end) = stream.acks_until_end().await;
    if let Some(last) = acks.last() {
        acked_index = last.acked_index;
    }
    let status = end.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    broker
        .cluster()
        .clear_request_errors(RDKafkaApiKey::Produce);

    let all: Vec<Heartbeat> = before.into_iter().chain(after).collect();
    let acked = &all[..=acked_index as usize];
    let records = broker.read(&broker.topic, acked.len()).await;
    let landed: HashSet<String> = decoded(&records)
        .into_iter()
        .map(|hb| hb.event_id)
        .collect();
    for hb in acked {
        assert!(
            landed.contains(&hb.event_id),
            "acked but not durable: {}",
            hb.event_id
        );
    }
    assert_eq!(
        acked_index, 49,
        "nothing sent after the failure was acknowledged"
    );
}

#[tokio::test]
async fn a_broker_failure_fails_push_with_unavailable_instead_of_a_summary() {
    let broker = TestBroker::mock();
    let publisher = broker.publisher(Duration::from_millis(1_500)).await;
    let app = spawn_app_with(Arc::new(publisher), |c| c.device_rate = 0).await;
    broker.cluster().request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 500],
    );
    let status = app
        .push(Some(&app.gateway_token()), mixed_heartbeats(20))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("hb_ingest_heartbeats_accepted_total 0\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("hb_ingest_publish_failures_total 1\n"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_broker_that_goes_down_times_out_into_unavailable() {
    let broker = TestBroker::mock();
    let publisher = broker.publisher(Duration::from_millis(1_500)).await;
    let app = spawn_app_with(Arc::new(publisher), |c| c.device_rate = 0).await;
    for id in 1..=3 {
        broker.cluster().broker_down(id).expect("broker down");
    }
    let started = Instant::now();
    let status = app
        .push(Some(&app.gateway_token()), mixed_heartbeats(5))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "fails at the delivery timeout"
    );
}

#[tokio::test]
async fn a_full_producer_queue_makes_batches_wait_rather_than_fail() {
    let broker = TestBroker::mock();
    let mut settings = broker.settings(Duration::from_secs(10));
    settings
        .extra
        .push(("queue.buffering.max.messages".into(), "8".into()));
    let publisher = KafkaPublisher::connect(settings, test_metrics())
        .await
        .expect("publisher connects");
    let app = spawn_app_with(Arc::new(publisher), |c| c.device_rate = 0).await;
    let sent = mixed_heartbeats(300);
    let summary = app
        .push(Some(&app.gateway_token()), sent.clone())
        .await
        .expect("push succeeds");
    assert_eq!(summary.accepted, 300);
    let records = broker.read(&broker.topic, sent.len()).await;
    assert_eq!(records.len(), sent.len());
}

#[tokio::test]
async fn unreachable_brokers_fail_at_start() {
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let settings = KafkaSettings {
        brokers: closed.to_string(),
        topic: "heartbeats".into(),
        dlq_topic: "heartbeats-dlq".into(),
        timeout: Duration::from_millis(1_500),
        extra: Vec::new(),
    };
    let started = Instant::now();
    let outcome = KafkaPublisher::connect(settings, test_metrics()).await;
    match outcome {
        Err(PublishError::Unavailable(message)) => {
            assert!(message.contains("unreachable"), "{message}")
        }
        Err(other) => panic!("expected unavailable, got {other:?}"),
        Ok(_) => panic!("connecting to nothing must fail"),
    }
    assert!(started.elapsed() < Duration::from_secs(10));
}
