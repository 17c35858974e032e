//! Cluster tier: publishes to Kafka with acks=all and an idempotent producer.
//! Key = user_id, so one user's heartbeats stay ordered in one partition;
//! payload = the heartbeat as compact protobuf. A batch resolves only when the
//! broker has acknowledged every message in it.

use super::{DeadLetter, PublishError, Publisher};
use crate::metrics::IngestMetrics;
use async_trait::async_trait;
use futures::future::join_all;
use hb_proto::v1::Heartbeat;
use prost::Message;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use std::time::{Duration, Instant};

/// Settings of the Kafka publisher.
#[derive(Clone, Debug)]
pub struct KafkaSettings {
    pub brokers: String,
    pub topic: String,
    pub dlq_topic: String,
    /// Delivery timeout: past it a heartbeat fails with UNAVAILABLE.
    pub timeout: Duration,
    /// Extra librdkafka properties (tests shorten timeouts with these).
    pub extra: Vec<(String, String)>,
}

pub struct KafkaPublisher {
    producer: FutureProducer,
    settings: KafkaSettings,
    metrics: IngestMetrics,
}

impl KafkaPublisher {
    /// Creates the producer and checks that the brokers answer and the topics
    /// exist, so a misconfigured deployment fails at start, not on traffic.
    pub async fn connect(
        settings: KafkaSettings,
        metrics: IngestMetrics,
    ) -> Result<KafkaPublisher, PublishError> {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &settings.brokers)
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("compression.type", "lz4")
            .set("linger.ms", "5")
            .set("batch.num.messages", "10000")
            // The bounded in-flight window: librdkafka's local queue.
            .set("queue.buffering.max.messages", "500000")
            .set("queue.buffering.max.kbytes", "262144")
            .set(
                "message.timeout.ms",
                settings.timeout.as_millis().max(1).to_string(),
            );
        for (key, value) in &settings.extra {
            config.set(key, value);
        }
        let producer: FutureProducer = config
            .create()
            .map_err(|e| PublishError::Unavailable(format!("kafka producer: {e}")))?;
        let check = producer.clone();
        let topics = [settings.topic.clone(), settings.dlq_topic.clone()];
        let timeout = settings.timeout;
        tokio::task::spawn_blocking(move || {
            for topic in &topics {
                let metadata = check
                    .client()
                    .fetch_metadata(Some(topic), Timeout::After(timeout))
                    .map_err(|e| {
                        PublishError::Unavailable(format!("kafka brokers unreachable: {e}"))
                    })?;
                let missing = metadata.topics().iter().any(|t| {
                    t.name() == topic && (t.error().is_some() || t.partitions().is_empty())
                });
                if missing {
                    return Err(PublishError::Unavailable(format!(
                        "kafka topic {topic:?} does not exist"
                    )));
                }
            }
            Ok(())
        })
        .await
        .map_err(|e| PublishError::Unavailable(e.to_string()))??;
        tracing::info!(brokers = %settings.brokers, topic = %settings.topic, "kafka publisher connected");
        Ok(KafkaPublisher {
            producer,
            settings,
            metrics,
        })
    }

    fn queue_timeout(&self) -> Timeout {
        Timeout::After(self.settings.timeout)
    }
}

/// Broker-side size refusals never succeed on retry; everything else might.
fn map_error(err: &KafkaError) -> PublishError {
    match err.rdkafka_error_code() {
        Some(RDKafkaErrorCode::MessageSizeTooLarge)
        | Some(RDKafkaErrorCode::InvalidMessageSize) => PublishError::Rejected(err.to_string()),
        _ => PublishError::Unavailable(err.to_string()),
    }
}

#[async_trait]
impl Publisher for KafkaPublisher {
    async fn publish(&self, batch: Vec<Heartbeat>) -> Result<(), PublishError> {
        let started = Instant::now();
        let payloads: Vec<Vec<u8>> = batch.iter().map(Message::encode_to_vec).collect();
        // Enqueue in order (the producer keeps per-partition order), then await
        // every broker ack concurrently.
        let sends = batch.iter().zip(&payloads).map(|(hb, payload)| {
            self.producer.send(
                FutureRecord::to(&self.settings.topic)
                    .key(hb.user_id.as_bytes())
                    .payload(payload.as_slice()),
                self.queue_timeout(),
            )
        });
        let results = join_all(sends).await;
        self.metrics
            .publish_latency
            .observe(started.elapsed().as_secs_f64());
        for result in results {
            if let Err((err, _)) = result {
                return Err(map_error(&err));
            }
        }
        Ok(())
    }

    async fn dead_letter(&self, letters: Vec<DeadLetter>) -> Result<(), PublishError> {
        let sends = letters.iter().map(|letter| {
            let received = letter.received_ms.to_string();
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: "reason",
                    value: Some(letter.reason.as_str()),
                })
                .insert(Header {
                    key: "event_id",
                    value: Some(letter.event_id.as_str()),
                })
                .insert(Header {
                    key: "received_ms",
                    value: Some(received.as_str()),
                });
            self.producer.send(
                FutureRecord::to(&self.settings.dlq_topic)
                    .key(letter.device_id.as_bytes())
                    .payload(letter.payload.as_slice())
                    .headers(headers),
                self.queue_timeout(),
            )
        });
        for result in join_all(sends).await {
            if let Err((err, _)) = result {
                return Err(map_error(&err));
            }
        }
        Ok(())
    }

    async fn flush(&self) -> Result<(), PublishError> {
        let producer = self.producer.clone();
        let timeout = self.settings.timeout;
        tokio::task::spawn_blocking(move || producer.flush(Timeout::After(timeout)))
            .await
            .map_err(|e| PublishError::Unavailable(e.to_string()))?
            .map_err(|e| map_error(&e))
    }

    fn name(&self) -> &'static str {
        "kafka"
    }
}
