//! The cluster-tier source: a Kafka consumer group feeding the pipeline.
//!
//! The consumer runs on its own thread (librdkafka calls block), forwarding
//! messages and rebalance events over one ordered channel. On revoke the
//! thread waits until the pipeline has flushed and dropped the partitions;
//! on assign it waits until their open sessions are restored. Offsets live in
//! the sessions store, committed with the changes they cover; Kafka's own
//! committed offsets are only a hint (written after each store commit), and
//! messages below the store's offset are skipped, so replays never double count.

use crate::pipeline::{
    prepare_next, FlushStats, Pipeline, PreparedFlush, Readiness, SessionWrites, StageSettings,
};
use crate::sink::{DeadLetter, SinkError};
use hb_common::health::HealthHandle;
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
    /// How long the loop may go without a tick, or a commit may hang,
    /// before readiness lapses (`HB_STREAM_STALL_TIMEOUT`).
    pub stall_after: Duration,
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

/// A commit under way and the offsets it makes durable.
struct InFlight {
    task: tokio::task::JoinHandle<Result<FlushStats, SinkError>>,
    offsets: TopicPartitionList,
    started: Instant,
}

/// Runs the consumer and the pipeline until `shutdown`; then leaves the group
/// after a last flush. Returns an error if a flush cannot be committed (the
/// process should exit; a restart resumes exactly from the store).
///
/// One commit is in flight at a time and the next messages are sessionized
/// while it runs, so the store and the sessionizer work at once; under load
/// each commit takes everything that arrived during the one before (group
/// commit). A rebalance first waits for the commit in flight, then flushes.
///
/// Readiness (`ready`) is renewed on every tick and after every commit for
/// `source.stall_after` (see [`Readiness`]): it lapses when the loop stalls,
/// and drops while a commit hangs that long or
/// while the store refuses writes (retried until they pass).
///
/// Under load, commits leave session writes to `settings.session_write_interval`
/// (see [`SessionWrites`]): Kafka delivers a partition again from its
/// sessions' offset after a restart or rebalance.
pub async fn run(
    source: KafkaSource,
    mut pipeline: Pipeline,
    settings: StageSettings,
    ready: HealthHandle,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let StageSettings {
        tick: flush_interval,
        flush_max,
        session_write_interval,
        defer_from,
    } = settings;
    pipeline.retry_forever();
    pipeline.defer_sessions_to_source();
    let mut writes = SessionWrites::new(
        session_write_interval,
        defer_from,
        pipeline.session_shares(),
    );
    let ready = Readiness::new(ready, source.stall_after);
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
    let mut in_flight: Option<InFlight> = None;
    let mut flush_due = false;
    let mut stopping = false;
    let result: anyhow::Result<()> = loop {
        tokio::select! {
            input = rx.recv(), if pipeline.pending() < flush_max => {
                let Some(input) = input else { break Ok(()) };
                match input {
                    Input::Message { partition, offset, payload } => {
                        // Take whatever else the consumer already handed over.
                        let mut messages = vec![(partition, offset, payload)];
                        let mut next = None;
                        while pipeline.pending() + messages.len() < flush_max {
                            match rx.try_recv() {
                                Ok(Input::Message { partition, offset, payload }) => {
                                    messages.push((partition, offset, payload));
                                }
                                Ok(other) => {
                                    next = Some(other);
                                    break;
                                }
                                Err(_) => break,
                            }
                        }
                        absorb(&mut pipeline, messages);
                        if let Some(other) = next {
                            if let Err(err) = rebalance_or_lag(
                                other, &mut pipeline, &mut in_flight, &source.topic, &commit_tx,
                            ).await {
                                break Err(err);
                            }
                        }
                    }
                    other => {
                        if let Err(err) = rebalance_or_lag(
                            other, &mut pipeline, &mut in_flight, &source.topic, &commit_tx,
                        ).await {
                            break Err(err);
                        }
                    }
                }
            }
            outcome = async { (&mut in_flight.as_mut().expect("guarded").task).await }, if in_flight.is_some() => {
                let done = in_flight.take().expect("guarded");
                if let Err(err) = committed(outcome, done.offsets, &commit_tx) {
                    break Err(err);
                }
                ready.renew(&pipeline, None);
            }
            _ = ticker.tick() => {
                // Messages waiting for the stage: its partitions are not idle,
                // the stage is behind.
                if rx.is_empty() && pipeline.pending() < flush_max {
                    pipeline.tick(now_ms());
                }
                if let Err(err) = pipeline.poll_erasures().await {
                    tracing::warn!(error = %err, "reading erasures failed; read again on a later tick");
                }
                flush_due = true;
                ready.renew(&pipeline, in_flight.as_ref().map(|f| f.started));
            }
            () = shutdown.cancelled(), if !stopping => {
                // The consumer thread closes the consumer, which revokes our
                // partitions through the handshake above, then hangs up.
                stopping = true;
                stop.store(true, Ordering::SeqCst);
            }
        }
        if in_flight.is_none() && (flush_due || pipeline.pending() >= flush_max) {
            flush_due = false;
            let quiet = pipeline.pending() == 0 && rx.is_empty();
            let prepared = prepare_next(&mut pipeline, &mut writes, quiet, false);
            in_flight = prepared.map(|prepared| start_flush(&pipeline, prepared, &source.topic));
        }
    };
    stop.store(true, Ordering::SeqCst);
    // Keep answering handshakes until the thread is gone.
    let healthy = result.is_ok();
    let drain = async {
        if healthy {
            let _ = finish(&mut in_flight, &commit_tx).await;
        }
        while let Some(input) = rx.recv().await {
            match input {
                Input::Revoke(partitions, done) => {
                    if healthy {
                        let _ = flush_now(&mut pipeline, &mut in_flight, &source.topic, &commit_tx)
                            .await;
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

/// Feeds messages to the pipeline in order, each partition's consecutive
/// heartbeats as one batch; undecodable ones are dead-lettered.
fn absorb(pipeline: &mut Pipeline, messages: Vec<(i32, i64, Vec<u8>)>) {
    let now = now_ms();
    let mut run: Vec<(i64, Heartbeat)> = Vec::new();
    let mut run_partition = None;
    let feed =
        |pipeline: &mut Pipeline, partition: Option<i32>, run: &mut Vec<(i64, Heartbeat)>| {
            if let Some(partition) = partition.filter(|_| !run.is_empty()) {
                pipeline.ingest_batch(
                    partition,
                    run.drain(..).map(|(offset, hb)| (Some(offset), hb)),
                    now,
                );
            }
            run.clear();
        };
    for (partition, offset, payload) in messages {
        if run_partition != Some(partition) {
            feed(pipeline, run_partition, &mut run);
            run_partition = Some(partition);
        }
        if !pipeline.owns(partition) {
            continue;
        }
        let next = match run.last() {
            Some((last, _)) => Some(last + 1),
            None => pipeline.next_offset(partition),
        };
        if next.is_some_and(|next| offset < next) {
            continue; // already committed in the store
        }
        match Heartbeat::decode(payload.as_slice()) {
            Ok(hb) => run.push((offset, hb)),
            Err(err) => {
                feed(pipeline, run_partition, &mut run);
                pipeline.skip(
                    partition,
                    offset,
                    DeadLetter {
                        received_ms: now,
                        event_id: String::new(),
                        device_id: String::new(),
                        reason: format!("undecodable kafka message at {partition}/{offset}: {err}"),
                        payload,
                    },
                );
            }
        }
    }
    feed(pipeline, run_partition, &mut run);
}

/// Handles a rebalance handshake or a lag report.
async fn rebalance_or_lag(
    input: Input,
    pipeline: &mut Pipeline,
    in_flight: &mut Option<InFlight>,
    topic: &str,
    commit_tx: &std_mpsc::Sender<TopicPartitionList>,
) -> anyhow::Result<()> {
    match input {
        Input::Message { .. } => unreachable!("messages are absorbed by the caller"),
        Input::Assign(partitions, done) => {
            // A restore reads the store: let the commit in flight land first.
            let finished = finish(in_flight, commit_tx).await;
            let mut failed = finished.err();
            if failed.is_none() {
                for partition in partitions {
                    if let Err(err) = pipeline.assign(partition).await {
                        failed = Some(anyhow::anyhow!("restoring assigned partitions: {err}"));
                        break;
                    }
                }
            }
            let _ = done.send(());
            failed.map_or(Ok(()), Err)
        }
        Input::Revoke(partitions, done) => {
            let flushed = flush_now(pipeline, in_flight, topic, commit_tx).await;
            for partition in &partitions {
                pipeline.revoke(*partition);
            }
            let _ = done.send(());
            tracing::info!(?partitions, "partitions revoked");
            flushed
        }
        Input::Lag(lags) => {
            for (partition, lag) in lags {
                pipeline.set_lag(partition, lag);
            }
            Ok(())
        }
    }
}

/// Starts `prepared` in the background. Once it commits, Kafka is told the
/// sessions' offsets (where a new owner resumes), not the committed ones.
fn start_flush(pipeline: &Pipeline, prepared: PreparedFlush, topic: &str) -> InFlight {
    let mut offsets = TopicPartitionList::new();
    for (partition, next) in pipeline.session_offsets() {
        let _ = offsets.add_partition_offset(topic, partition, Offset::Offset(next));
    }
    InFlight {
        task: tokio::spawn(prepared.commit()),
        offsets,
        started: Instant::now(),
    }
}

/// After a commit: on success, tells Kafka the offsets it covered (a hint;
/// the store's offsets are the truth).
fn committed(
    outcome: Result<Result<FlushStats, SinkError>, tokio::task::JoinError>,
    offsets: TopicPartitionList,
    commit_tx: &std_mpsc::Sender<TopicPartitionList>,
) -> anyhow::Result<()> {
    let stats = outcome
        .map_err(|join| anyhow::anyhow!("flush task: {join}"))?
        .map_err(|e| anyhow::anyhow!("flush failed: {e}"))?;
    if stats.raw > 0 || stats.changes > 0 {
        let _ = commit_tx.send(offsets);
    }
    Ok(())
}

/// Waits for the commit in flight, if any.
async fn finish(
    in_flight: &mut Option<InFlight>,
    commit_tx: &std_mpsc::Sender<TopicPartitionList>,
) -> anyhow::Result<()> {
    match in_flight.take() {
        Some(done) => committed(done.task.await, done.offsets, commit_tx),
        None => Ok(()),
    }
}

/// Commits everything: the commit in flight, then what is pending.
async fn flush_now(
    pipeline: &mut Pipeline,
    in_flight: &mut Option<InFlight>,
    topic: &str,
    commit_tx: &std_mpsc::Sender<TopicPartitionList>,
) -> anyhow::Result<()> {
    finish(in_flight, commit_tx).await?;
    *in_flight = pipeline
        .prepare_flush()
        .map(|prepared| start_flush(pipeline, prepared, topic));
    finish(in_flight, commit_tx).await
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
