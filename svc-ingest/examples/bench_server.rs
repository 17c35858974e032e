//! Benchmark harness for svc-ingest (results in `docs/benchmarks.md`): serves
//! the real `svc_ingest::run` with either
//! - `--publisher mock-kafka`: the Kafka publisher (acks=all, idempotent)
//!   against librdkafka's in-process mock cluster, or
//! - `--publisher counting`: a publisher that only counts (transport floor),
//!
//! so `hbmesh simulate` can be pointed at it. svc-ingest's own binary needs
//! real brokers; this is not a deployment (the mock cluster keeps everything in
//! memory and shares the process's CPU).
//!
//! ```text
//! cargo run --release -p svc-ingest --example bench_server -- --publisher mock-kafka \
//!     --ingest-addr 127.0.0.1:50051 --device-rate 0
//! ```

use clap::Parser;
use prometheus_client::registry::Registry;
use rdkafka::mocking::MockCluster;
use std::sync::Arc;
use svc_ingest::config::IngestConfig;
use svc_ingest::metrics::IngestMetrics;
use svc_ingest::publisher::counting::CountingPublisher;
use svc_ingest::publisher::kafka::{KafkaPublisher, KafkaSettings};
use svc_ingest::publisher::Publisher;
use svc_ingest::{IngestListeners, PublishTarget};

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum Which {
    /// Kafka publisher on librdkafka's mock cluster.
    MockKafka,
    /// Counts and acknowledges at once: the transport floor.
    Counting,
}

#[derive(Parser)]
#[command(about = "svc-ingest with a mock-cluster Kafka or a counting publisher, for benchmarks")]
struct Args {
    #[arg(long, value_enum, default_value = "mock-kafka")]
    publisher: Which,

    /// Brokers in the mock cluster (topics are replicated to all of them).
    #[arg(long, default_value_t = 3)]
    mock_brokers: i32,

    /// Partitions of the heartbeat topic.
    #[arg(long, default_value_t = 6)]
    partitions: i32,

    #[command(flatten)]
    config: IngestConfig,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    hb_common::telemetry::init();
    let config = args.config;
    // The cluster lives as long as `main` (it is not Send; nothing moves it).
    let mut _cluster = None;
    let publisher: Arc<dyn Publisher> = match args.publisher {
        Which::Counting => Arc::new(CountingPublisher::default()),
        Which::MockKafka => {
            let mock = MockCluster::new(args.mock_brokers)?;
            mock.create_topic(&config.kafka.topic, args.partitions, args.mock_brokers)?;
            mock.create_topic(&config.dlq_topic, 1, args.mock_brokers)?;
            let settings = KafkaSettings {
                brokers: mock.bootstrap_servers(),
                topic: config.kafka.topic.clone(),
                dlq_topic: config.dlq_topic.clone(),
                timeout: config.kafka_timeout,
                extra: Vec::new(),
            };
            _cluster = Some(mock);
            // Its produce-latency histogram is not exported here; the service's
            // own metrics (ack latency, accepted) are.
            let metrics = IngestMetrics::register(&mut Registry::default());
            Arc::new(KafkaPublisher::connect(settings, metrics).await?)
        }
    };
    let listeners = IngestListeners::bind(&config).await?;
    eprintln!(
        "bench_server: {:?} publisher, gRPC on {}, metrics on {}",
        args.publisher,
        listeners.grpc.local_addr()?,
        listeners.metrics.local_addr()?
    );
    svc_ingest::run(
        config,
        PublishTarget::Custom(publisher),
        listeners,
        hb_common::shutdown::on_signal(),
    )
    .await
}
