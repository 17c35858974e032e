//! The cluster-tier source: a Kafka consumer group feeding the pipeline.
//!
//! The consumer runs on its own thread (librdkafka calls block), forwarding
//! messages and rebalance events over one ordered channel. On revoke the
//! thread waits until the pipeline has flushed and dropped the partitions;
//! on assign it waits until their open sessions are restored. Offsets live in
//! the sessions store, committed with the changes they cover; Kafka's own
//! committed offsets are only a hint (written after each store commit), and
//! messages below the store's offset are skipped, so replays never double count.

use crate::pipeline::Pipeline;
use crate::sink::DeadLetter;
use hb_common::time::now_ms;
use hb_proto::v1::Heartbeat;
use prost::Message as _;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::Message;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc as std_mpsc, Arc};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Settings of the consumer.
#[derive(Clone, Debug)]
pub struct KafkaSource {
    pub brokers: String,
    pub topic: String,
    pub group: String,
    pub session_timeout: Duration,
    /// Extra librdkafka properties (tests).
    pub extra: Vec<(String, String)>,
}

/// What the consumer thread tells the pipeline, in order.
enum Input {
    Message {
        partition: i32,
        offset: i64,
        payload: Vec<u8>,
    },
    Assign(Vec<i32>, std_mpsc::SyncSender<()>),
    Revoke(Vec<i32>, std_mpsc::SyncSender<()>),
    Lag(Vec<(i32, i64)>),
}

struct RebalanceContext {
    topic: String,
    tx: mpsc::Sender<Input>,
}

impl ClientContext for RebalanceContext {}

impl RebalanceContext {
    /// Hands a rebalance to the pipeline and waits until it is handled.
    fn handshake(
        &self,
        partitions: &TopicPartitionList,
        make: fn(Vec<i32>, std_mpsc::SyncSender<()>) -> Input,
    ) {
        let ours: Vec<i32> = partitions
            .elements()
            .iter()
            .filter(|e| e.topic() == self.topic)
            .map(|e| e.partition())
            .collect();
        if ours.is_empty() {
            return;
        }
        let (done_tx, done_rx) = std_mpsc::sync_channel(1);
        if self.tx.blocking_send(make(ours, done_tx)).is_ok()
            && done_rx.recv_timeout(Duration::from_secs(120)).is_err()
        {
            tracing::error!("pipeline did not answer a rebalance in time");
        }
    }
}

impl ConsumerContext for RebalanceContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(partitions) = rebalance {
            self.handshake(partitions, Input::Revoke);
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(partitions) = rebalance {
            self.handshake(partitions, Input::Assign);
        }
    }
}

/// Runs the consumer and the pipeline until `shutdown`; then leaves the group
/// after a last flush. Returns an error if a flush cannot be committed (the
/// process should exit; a restart resumes exactly from the store).
pub async fn run(
    source: KafkaSource,
    mut pipeline: Pipeline,
    flush_interval: Duration,
    flush_max: usize,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let (tx, mut rx) = mpsc::channel::<Input>(flush_max.max(1024));
    let (commit_tx, commit_rx) = std_mpsc::channel::<TopicPartitionList>();
    let stop = Arc::new(AtomicBool::new(false));
    let consumer = create_consumer(&source, tx.clone())?;
    let thread = {
        let stop = Arc::clone(&stop);
        let topic = source.topic.clone();
        std::thread::Builder::new()
            .name("hb-kafka-consumer".into())
            .spawn(move || poll_loop(consumer, topic, tx, commit_rx, stop))?
    };

    let mut ticker = tokio::time::interval(flush_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stopping = false;
    let result: anyhow::Result<()> = loop {
        tokio::select! {
            input = rx.recv() => {
                let Some(input) = input else { break Ok(()) };
                match input {
                    Input::Message { partition, offset, payload } => {
                        if !pipeline.owns(partition) {
                            continue;
                        }
                        if pipeline.next_offset(partition).is_some_and(|next| offset < next) {
                            continue; // already committed in the store
                        }
                        match Heartbeat::decode(payload.as_slice()) {
                            Ok(hb) => pipeline.ingest(partition, Some(offset), &hb, now_ms()),
                            Err(err) => pipeline.skip(partition, offset, DeadLetter {
                                received_ms: now_ms(),
                                event_id: String::new(),
                                device_id: String::new(),
                                reason: format!("undecodable kafka message at {partition}/{offset}: {err}"),
                                payload,
                            }),
                        }
                        if pipeline.pending() >= flush_max {
                            if let Err(err) = flush(&mut pipeline, &source.topic, &commit_tx).await {
                                break Err(err);
                            }
                        }
                    }
                    Input::Assign(partitions, done) => {
                        let mut failed = None;
                        for partition in partitions {
                            if let Err(err) = pipeline.assign(partition).await {
                                failed = Some(err);
                                break;
                            }
                        }
                        let _ = done.send(());
                        if let Some(err) = failed {
                            break Err(anyhow::anyhow!("restoring assigned partitions: {err}"));
                        }
                    }
                    Input::Revoke(partitions, done) => {
                        let flushed = flush(&mut pipeline, &source.topic, &commit_tx).await;
                        for partition in &partitions {
                            pipeline.revoke(*partition);
                        }
                        let _ = done.send(());
                        tracing::info!(?partitions, "partitions revoked");
                        if let Err(err) = flushed {
                            break Err(err);
                        }
                    }
                    Input::Lag(lags) => {
                        for (partition, lag) in lags {
                            pipeline.set_lag(partition, lag);
                        }
                    }
                }
            }
            _ = ticker.tick() => {
                pipeline.tick(now_ms());
                if let Err(err) = flush(&mut pipeline, &source.topic, &commit_tx).await {
                    break Err(err);
                }
            }
            () = shutdown.cancelled(), if !stopping => {
                // The consumer thread closes the consumer, which revokes our
                // partitions through the handshake above, then hangs up.
                stopping = true;
                stop.store(true, Ordering::SeqCst);
            }
        }
    };
    stop.store(true, Ordering::SeqCst);
    // Keep answering handshakes until the thread is gone.
    let drain = async {
        while let Some(input) = rx.recv().await {
            match input {
                Input::Revoke(partitions, done) => {
                    if result.is_ok() {
                        let _ = flush(&mut pipeline, &source.topic, &commit_tx).await;
                    }
                    for partition in partitions {
                        pipeline.revoke(partition);
                    }
                    let _ = done.send(());
                }
                Input::Assign(_, done) => {
                    let _ = done.send(());
                }
                _ => {}
            }
        }
    };
    drain.await;
    let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    tracing::info!("kafka stream stage stopped");
    result
}

/// Flushes the pipeline and, once committed, tells Kafka the offsets too.
async fn flush(
    pipeline: &mut Pipeline,
    topic: &str,
    commit_tx: &std_mpsc::Sender<TopicPartitionList>,
) -> anyhow::Result<()> {
    let committed = pipeline
        .flush()
        .await
        .map_err(|e| anyhow::anyhow!("flush failed: {e}"))?;
    if committed.raw > 0 || committed.changes > 0 {
        let mut tpl = TopicPartitionList::new();
        for (partition, next) in pipeline.offsets() {
            let _ = tpl.add_partition_offset(topic, partition, Offset::Offset(next));
        }
        let _ = commit_tx.send(tpl);
    }
    Ok(())
}

fn create_consumer(
    source: &KafkaSource,
    tx: mpsc::Sender<Input>,
) -> anyhow::Result<BaseConsumer<RebalanceContext>> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &source.brokers)
        .set("group.id", &source.group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set(
            "session.timeout.ms",
            source.session_timeout.as_millis().max(1).to_string(),
        )
        .set("enable.partition.eof", "false");
    for (key, value) in &source.extra {
        config.set(key, value);
    }
    let consumer: BaseConsumer<RebalanceContext> =
        config.create_with_context(RebalanceContext {
            topic: source.topic.clone(),
            tx,
        })?;
    consumer.subscribe(&[&source.topic])?;
    tracing::info!(brokers = %source.brokers, topic = %source.topic, group = %source.group, "kafka consumer subscribed");
    Ok(consumer)
}

fn poll_loop(
    consumer: BaseConsumer<RebalanceContext>,
    topic: String,
    tx: mpsc::Sender<Input>,
    commit_rx: std_mpsc::Receiver<TopicPartitionList>,
    stop: Arc<AtomicBool>,
) {
    let mut last_lag = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        while let Ok(tpl) = commit_rx.try_recv() {
            if let Err(err) = consumer.commit(&tpl, CommitMode::Async) {
                tracing::debug!(error = %err, "kafka offset commit (hint) failed");
            }
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                let input = Input::Message {
                    partition: message.partition(),
                    offset: message.offset(),
                    payload: message.payload().unwrap_or_default().to_vec(),
                };
                if tx.blocking_send(input).is_err() {
                    break;
                }
            }
            Some(Err(err)) => tracing::warn!(error = %err, "kafka consumer error"),
            None => {}
        }
        if last_lag.elapsed() >= Duration::from_secs(5) {
            last_lag = Instant::now();
            let lags = lags(&consumer, &topic);
            if !lags.is_empty() && tx.blocking_send(Input::Lag(lags)).is_err() {
                break;
            }
        }
    }
    // Closing revokes our partitions through the rebalance handshake, so the
    // pipeline flushes before the group reassigns them.
    while let Ok(tpl) = commit_rx.try_recv() {
        let _ = consumer.commit(&tpl, CommitMode::Sync);
    }
    // Dropping closes the consumer: it polls until the group has revoked our
    // partitions (served by the handshake), then leaves.
    drop(consumer);
}

fn lags(consumer: &BaseConsumer<RebalanceContext>, topic: &str) -> Vec<(i32, i64)> {
    let Ok(position) = consumer.position() else {
        return Vec::new();
    };
    position
        .elements()
        .iter()
        .filter(|e| e.topic() == topic)
        .filter_map(|e| {
            let (_, high) = consumer
                .fetch_watermarks(topic, e.partition(), Duration::from_millis(500))
                .ok()?;
            let at = match e.offset() {
                Offset::Offset(n) => n,
                _ => return Some((e.partition(), 0)),
            };
            Some((e.partition(), (high - at).max(0)))
        })
        .collect()
}
