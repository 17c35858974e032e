//! The `IngestService` gRPC handlers. Both calls share one pipeline: read
//! what the device has sent (up to a batch), validate and deduplicate it,
//! publish the accepted part, and acknowledge in order once durable, with at
//! most `window` batches in flight per call.

use crate::limiter::DeviceLimiter;
use crate::metrics::{IngestMetrics, ReasonLabel};
use crate::publisher::{DeadLetter, PublishError, Publisher};
use crate::validate::{validate, Limits};
use futures::stream::{FuturesOrdered, Stream, StreamExt};
use futures::FutureExt;
use hb_common::auth::{Principal, Role};
use hb_common::time::now_ms;
use hb_proto::v1::ingest_service_server::IngestService;
use hb_proto::v1::{Heartbeat, PushAck, PushSummary, Rejection};
use prost::Message;
use std::collections::hash_map::RandomState;
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tonic_types::StatusExt as _;

/// Rejections carried by one summary.
pub const MAX_REPORTED_REJECTIONS: usize = 100;

/// Everything the handlers share.
pub struct IngestHandler {
    pub publisher: Arc<dyn Publisher>,
    pub limiter: Option<DeviceLimiter>,
    pub metrics: IngestMetrics,
    pub max_age_ms: i64,
    pub batch_size: usize,
    pub window: usize,
    /// Cancelled on SIGTERM; calls still open after `drain_grace` are cut.
    pub shutdown: CancellationToken,
    pub drain_grace: Duration,
}

/// What one finished batch contributes to the call.
struct BatchOutcome {
    last_index: u64,
    accepted: u64,
    duplicates: u64,
    rejections: Vec<Rejection>,
    received_at: Instant,
}

/// Running totals of one call.
#[derive(Default)]
struct Totals {
    accepted: u64,
    duplicates: u64,
    rejected: u64,
    rejections: Vec<Rejection>,
    acked_index: i64,
}

/// A batch read from the device, split into what to publish and what not.
struct Prepared {
    accepted: Vec<Heartbeat>,
    dead_letters: Vec<DeadLetter>,
    outcome: BatchOutcome,
}

/// How a call ends besides "the device closed its stream".
enum Stop {
    Malformed(Status),
    RateLimited(Duration),
    ShuttingDown,
}

fn role_of(principal: Option<&Principal>) -> Option<Role> {
    principal.map(|p| p.role.clone())
}

impl IngestHandler {
    /// Validates and deduplicates `items` (indices from `first_index`).
    fn prepare(
        &self,
        items: Vec<Heartbeat>,
        first_index: u64,
        role: Option<&Role>,
        seen: &mut SeenIds,
        received_at: Instant,
    ) -> Prepared {
        let limits = Limits {
            now_ms: now_ms(),
            max_age_ms: self.max_age_ms,
        };
        let mut accepted = Vec::with_capacity(items.len());
        let mut dead_letters = Vec::new();
        let mut rejections = Vec::new();
        let mut duplicates = 0;
        let count = items.len() as u64;
        for (offset, hb) in items.into_iter().enumerate() {
            let index = first_index + offset as u64;
            let encoded_len = hb.encoded_len();
            match validate(&hb, encoded_len, &limits, role) {
                Ok(()) => {
                    if seen.insert(&hb.event_id) {
                        accepted.push(hb);
                    } else {
                        duplicates += 1;
                    }
                }
                Err(reason) => {
                    self.metrics
                        .rejected
                        .get_or_create(&ReasonLabel {
                            reason: reason.code(),
                        })
                        .inc();
                    let reason = reason.to_string();
                    dead_letters.push(DeadLetter {
                        received_ms: limits.now_ms,
                        event_id: hb.event_id.clone(),
                        device_id: hb.device_id.clone(),
                        reason: reason.clone(),
                        payload: hb.encode_to_vec(),
                    });
                    rejections.push(Rejection {
                        event_id: hb.event_id,
                        index,
                        reason,
                    });
                }
            }
        }
        Prepared {
            outcome: BatchOutcome {
                last_index: first_index + count - 1,
                accepted: accepted.len() as u64,
                duplicates,
                rejections,
                received_at,
            },
            accepted,
            dead_letters,
        }
    }

    /// Admits the longest prefix of `batch` that stays within every
    /// device's rate. Returns its length and, when it is shorter than the
    /// batch, how long the device should wait before resending the rest.
    fn admit(&self, batch: &[Heartbeat]) -> (usize, Option<Duration>) {
        let Some(limiter) = &self.limiter else {
            return (batch.len(), None);
        };
        let mut wanted: HashMap<&str, u32> = HashMap::new();
        for hb in batch {
            *wanted.entry(hb.device_id.as_str()).or_default() += 1;
        }
        if wanted.len() == 1 {
            // The common case: a device sending for itself.
            let (device, count) = wanted.into_iter().next().expect("one device");
            let (granted, wait) = limiter.take_up_to(device, count, Instant::now());
            return (granted as usize, wait);
        }
        let now = Instant::now();
        // (granted, used, advice) per device.
        let mut budget: HashMap<&str, (u32, u32, Option<Duration>)> = wanted
            .into_iter()
            .map(|(device, count)| {
                let (granted, wait) = limiter.take_up_to(device, count, now);
                (device, (granted, 0, wait))
            })
            .collect();
        let mut admitted = batch.len();
        let mut advice = None;
        for (index, hb) in batch.iter().enumerate() {
            let entry = budget
                .get_mut(hb.device_id.as_str())
                .expect("counted above");
            if entry.1 == entry.0 {
                admitted = index;
                advice = entry.2;
                break;
            }
            entry.1 += 1;
        }
        for (device, (granted, used, _)) in budget {
            limiter.give_back(device, granted - used);
        }
        (admitted, advice)
    }

    /// Runs one call: reads `input` until it ends, fails or is stopped,
    /// reporting each durable batch through `on_ack`. Returns the totals, or
    /// the status the call must end with.
    async fn pipeline<F>(
        self: &Arc<Self>,
        principal: Option<Principal>,
        input: Streaming<Heartbeat>,
        mut on_ack: F,
    ) -> Result<Totals, Status>
    where
        F: FnMut(&Totals, &BatchOutcome) -> bool,
    {
        let role = role_of(principal.as_ref());
        let mut input = input;
        let mut in_flight = FuturesOrdered::new();
        let mut totals = Totals {
            acked_index: -1,
            ..Totals::default()
        };
        let mut seen = SeenIds::default();
        let mut next_index = 0u64;
        let mut stop: Option<Stop> = None;
        let mut input_done = false;
        let drain = {
            let shutdown = self.shutdown.clone();
            let grace = self.drain_grace;
            async move {
                shutdown.cancelled().await;
                tokio::time::sleep(grace).await;
            }
        };
        tokio::pin!(drain);

        loop {
            if (input_done || stop.is_some()) && in_flight.is_empty() {
                break;
            }
            tokio::select! {
                biased;
                Some(done) = in_flight.next(), if !in_flight.is_empty() => {
                    let (outcome, result): (BatchOutcome, Result<(), PublishError>) = done;
                    if let Err(err) = result {
                        self.metrics.publish_failures.inc();
                        tracing::warn!(error = %err, "publish failed, failing the call");
                        return Err(Status::unavailable(format!(
                            "{err}; heartbeats after index {} were not acknowledged, resend them",
                            totals.acked_index
                        )));
                    }
                    let latency = outcome.received_at.elapsed().as_secs_f64();
                    for _ in 0..outcome.accepted {
                        self.metrics.ack_latency.observe(latency);
                    }
                    self.metrics.accepted.inc_by(outcome.accepted);
                    self.metrics.duplicates.inc_by(outcome.duplicates);
                    totals.accepted += outcome.accepted;
                    totals.duplicates += outcome.duplicates;
                    totals.rejected += outcome.rejections.len() as u64;
                    totals.acked_index = outcome.last_index as i64;
                    for rejection in &outcome.rejections {
                        if totals.rejections.len() < MAX_REPORTED_REJECTIONS {
                            totals.rejections.push(rejection.clone());
                        }
                    }
                    if !on_ack(&totals, &outcome) {
                        // The device went away; nothing more to tell it.
                        stop = Some(Stop::ShuttingDown);
                    }
                }
                () = &mut drain, if stop.is_none() && !input_done => {
                    stop = Some(Stop::ShuttingDown);
                }
                chunk = next_chunk(&mut input, self.batch_size), if stop.is_none() && !input_done && in_flight.len() < self.window => {
                    let Some(Chunk { heartbeats: mut items, error }) = chunk else {
                        input_done = true;
                        continue;
                    };
                    let received_at = Instant::now();
                    if let Some(status) = error {
                        stop = Some(Stop::Malformed(malformed(status)));
                    }
                    if items.is_empty() {
                        continue;
                    }
                    let (admitted, retry_after) = self.admit(&items);
                    if let Some(retry_after) = retry_after {
                        // The admitted prefix is still published and acked
                        // before the call ends with retry advice.
                        self.metrics.rate_limited.inc();
                        items.truncate(admitted);
                        stop.get_or_insert(Stop::RateLimited(retry_after));
                    }
                    if items.is_empty() {
                        continue;
                    }
                    let prepared = self.prepare(items, next_index, role.as_ref(), &mut seen, received_at);
                    next_index = prepared.outcome.last_index + 1;
                    let handler = Arc::clone(self);
                    in_flight.push_back(async move {
                        let Prepared { accepted, dead_letters, outcome } = prepared;
                        let publish = async {
                            if accepted.is_empty() { Ok(()) } else { handler.publisher.publish(accepted).await }
                        };
                        let dead_letter = async {
                            if dead_letters.is_empty() { return; }
                            if let Err(err) = handler.publisher.dead_letter(dead_letters).await {
                                tracing::warn!(error = %err, "dead-letter write failed");
                            }
                        };
                        let (result, ()) = futures::join!(publish, dead_letter);
                        (outcome, result)
                    });
                }
            }
        }

        match stop {
            None => Ok(totals),
            Some(Stop::Malformed(status)) => Err(status),
            Some(Stop::RateLimited(retry_after)) => {
                // The advice three ways: `google.rpc.RetryInfo` in the
                // status details (what gRPC clients and proxies read), a
                // `retry-after-ms` trailer and the message.
                let mut metadata = tonic::metadata::MetadataMap::new();
                if let Ok(value) = retry_after.as_millis().to_string().parse() {
                    metadata.insert("retry-after-ms", value);
                }
                Err(Status::with_error_details_and_metadata(
                    tonic::Code::ResourceExhausted,
                    format!(
                        "device rate limit exceeded; retry after {} ms (heartbeats up to index {} were acknowledged)",
                        retry_after.as_millis(),
                        totals.acked_index
                    ),
                    tonic_types::ErrorDetails::with_retry_info(Some(retry_after)),
                    metadata,
                ))
            }
            Some(Stop::ShuttingDown) => Err(Status::unavailable(format!(
                "server shutting down; heartbeats up to index {} were acknowledged, resend the rest",
                totals.acked_index
            ))),
        }
    }
}

/// What one read from the device yields.
struct Chunk {
    heartbeats: Vec<Heartbeat>,
    /// The stream failed (undecodable or oversize frame) after `heartbeats`.
    error: Option<Status>,
}

/// Waits for the next heartbeat, then takes whatever else the transport has
/// already decoded, up to `max`: batches grow with load without waiting, and
/// memory grows with what actually arrived (not `max` per read). `None` once
/// the device closed its side. Cancel-safe: nothing is taken before the first
/// heartbeat is ready, and nothing is awaited after it.
async fn next_chunk<S>(input: &mut S, max: usize) -> Option<Chunk>
where
    S: Stream<Item = Result<Heartbeat, Status>> + Unpin,
{
    let mut item = Some(input.next().await?);
    let mut chunk = Chunk {
        heartbeats: Vec::with_capacity(16),
        error: None,
    };
    while let Some(next) = item {
        match next {
            Ok(hb) => chunk.heartbeats.push(hb),
            Err(status) => {
                chunk.error = Some(status);
                break;
            }
        }
        if chunk.heartbeats.len() >= max {
            break;
        }
        item = input.next().now_or_never().flatten();
    }
    Some(chunk)
}

/// Event ids remembered per call for deduplication: exact over at least the
/// last this-many heartbeats of a call (every call of a device sending one
/// heartbeat per 5 s, for days). Bounded so a long-lived gateway stream cannot
/// grow the server's memory without limit (two generations of this many
/// 16-byte keys per call, times every open call); a repeat older than this is
/// published again and left to the stream stage, which deduplicates by
/// `event_id` anyway (SPEC 5.1).
///
/// 7/8 of 2^17: what a hash table of 2^17 slots holds before it grows, so a
/// full generation stays in that table. One more id would move it into a
/// table twice the size, fresh from the system; under a steady load every
/// call's generation reaches that point in the same second, and the page
/// faults of all those new tables at once stall the server.
pub const DEDUP_WINDOW: usize = (1 << 17) / 8 * 7;

/// Event ids already seen in one call, kept as 128-bit keyed hashes: no copy
/// of each id, and a false "duplicate" needs a 2^-128 collision (the keys are
/// random per call, so ids cannot be crafted to collide). Two generations of
/// at most `window` each: when the current one fills, the older is dropped.
struct SeenIds {
    keys: (RandomState, RandomState),
    window: usize,
    current: HashSet<u128, BuildHasherDefault<LowBits>>,
    previous: HashSet<u128, BuildHasherDefault<LowBits>>,
}

impl Default for SeenIds {
    fn default() -> Self {
        SeenIds::with_window(DEDUP_WINDOW)
    }
}

impl SeenIds {
    fn with_window(window: usize) -> SeenIds {
        SeenIds {
            keys: Default::default(),
            window: window.max(1),
            current: HashSet::default(),
            previous: HashSet::default(),
        }
    }

    /// True the first time `event_id` is seen in the call (within the window).
    fn insert(&mut self, event_id: &str) -> bool {
        let high = u128::from(self.keys.0.hash_one(event_id));
        let low = u128::from(self.keys.1.hash_one(event_id));
        let hash = (high << 64) | low;
        if self.previous.contains(&hash) || !self.current.insert(hash) {
            return false;
        }
        if self.current.len() >= self.window {
            // The older generation's table takes the next one: a new table
            // would grow through fresh pages again, each rehashing.
            std::mem::swap(&mut self.previous, &mut self.current);
            self.current.clear();
        }
        true
    }
}

/// The set's keys are already uniformly random: index them by their low bits.
#[derive(Default)]
struct LowBits(u64);

impl Hasher for LowBits {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*byte);
        }
    }

    fn write_u128(&mut self, value: u128) {
        self.0 = value as u64;
    }
}

/// A stream that cannot be decoded ends the call with INVALID_ARGUMENT.
fn malformed(status: Status) -> Status {
    Status::invalid_argument(format!("malformed heartbeat stream: {}", status.message()))
}

/// The tonic service: a cheap handle on the shared handler.
#[derive(Clone)]
pub struct Ingest {
    pub handler: Arc<IngestHandler>,
}

/// Keeps `hb_ingest_streams_active` right however a call ends.
struct ActiveStream(IngestMetrics);

impl ActiveStream {
    fn open(metrics: &IngestMetrics) -> ActiveStream {
        metrics.streams_active.inc();
        ActiveStream(metrics.clone())
    }
}

impl Drop for ActiveStream {
    fn drop(&mut self) {
        self.0.streams_active.dec();
    }
}

type AckStream = Pin<Box<dyn futures::Stream<Item = Result<PushAck, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl IngestService for Ingest {
    async fn push(
        &self,
        request: Request<Streaming<Heartbeat>>,
    ) -> Result<Response<PushSummary>, Status> {
        let _active = ActiveStream::open(&self.handler.metrics);
        let principal = request.extensions().get::<Principal>().cloned();
        let totals = self
            .handler
            .pipeline(principal, request.into_inner(), |_, _| true)
            .await?;
        Ok(Response::new(PushSummary {
            accepted: totals.accepted,
            duplicates: totals.duplicates,
            rejected: totals.rejected,
            rejections: totals.rejections,
        }))
    }

    type StreamStream = AckStream;

    async fn stream(
        &self,
        request: Request<Streaming<Heartbeat>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let principal = request.extensions().get::<Principal>().cloned();
        let input = request.into_inner();
        let (tx, rx) = mpsc::unbounded_channel();
        let handler = Arc::clone(&self.handler);
        tokio::spawn(async move {
            let _active = ActiveStream::open(&handler.metrics);
            let acks = tx.clone();
            let result = handler
                .pipeline(principal, input, move |totals, outcome| {
                    let ack = PushAck {
                        acked_index: totals.acked_index,
                        rejections: outcome.rejections.clone(),
                        accepted: totals.accepted,
                        duplicates: totals.duplicates,
                        rejected: totals.rejected,
                    };
                    // Unbounded but small: one cumulative ack per durable
                    // batch, and the call itself is bounded by the rate limit.
                    acks.send(Ok(ack)).is_ok()
                })
                .await;
            if let Err(status) = result {
                let _ = tx.send(Err(status));
            }
        });
        Ok(Response::new(Box::pin(UnboundedReceiverStream::new(rx))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hb(id: &str) -> Heartbeat {
        Heartbeat {
            event_id: id.into(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn a_chunk_takes_what_is_ready_up_to_the_batch_size() {
        let mut input = futures::stream::iter((0..5).map(|i| Ok(hb(&i.to_string()))));
        let first = next_chunk(&mut input, 3).await.unwrap();
        assert_eq!(first.heartbeats.len(), 3);
        let second = next_chunk(&mut input, 3).await.unwrap();
        assert_eq!(second.heartbeats.len(), 2);
        assert!(
            next_chunk(&mut input, 3).await.is_none(),
            "the device is done"
        );
    }

    #[tokio::test]
    async fn a_chunk_keeps_the_heartbeats_before_a_broken_frame() {
        let items = vec![
            Ok(hb("a")),
            Ok(hb("b")),
            Err(Status::internal("garbage")),
            Ok(hb("c")),
        ];
        let mut input = futures::stream::iter(items);
        let chunk = next_chunk(&mut input, 10).await.unwrap();
        let ids: Vec<&str> = chunk
            .heartbeats
            .iter()
            .map(|h| h.event_id.as_str())
            .collect();
        assert_eq!(ids, ["a", "b"]);
        assert!(chunk.error.is_some());
    }

    #[tokio::test]
    async fn a_chunk_does_not_wait_for_more_than_is_ready() {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut input = UnboundedReceiverStream::new(rx);
        tx.send(Ok(hb("a"))).unwrap();
        let chunk = next_chunk(&mut input, 10).await.unwrap();
        assert_eq!(
            chunk.heartbeats.len(),
            1,
            "one ready, no waiting for a full batch"
        );
    }

    #[test]
    fn repeats_are_caught_over_at_least_the_window_and_memory_stays_bounded() {
        let mut seen = SeenIds::with_window(100);
        for i in 0..1_000 {
            assert!(seen.insert(&format!("e-{i}")));
        }
        for i in 900..1_000 {
            assert!(
                !seen.insert(&format!("e-{i}")),
                "e-{i} is within the window"
            );
        }
        assert!(seen.current.len() + seen.previous.len() <= 200);
        assert!(seen.insert("e-0"), "far older than the window: passed on");
        let tables = |seen: &SeenIds| {
            let mut capacities = [seen.current.capacity(), seen.previous.capacity()];
            capacities.sort_unstable();
            capacities
        };
        let grown = tables(&seen);
        for i in 1_000..2_000 {
            assert!(seen.insert(&format!("e-{i}")));
        }
        assert_eq!(
            tables(&seen),
            grown,
            "the two generations' tables are reused"
        );
    }

    #[test]
    fn a_full_generation_of_the_default_window_never_outgrows_its_first_large_table() {
        let mut seen = SeenIds::default();
        let mut largest = 0;
        for i in 0..DEDUP_WINDOW + 10 {
            seen.insert(&format!("e-{i}"));
            largest = largest.max(seen.current.capacity());
        }
        assert_eq!(largest, DEDUP_WINDOW, "no table beyond 2^17 slots");
        assert_eq!(seen.previous.capacity(), DEDUP_WINDOW);
        assert!(!seen.insert("e-5"), "the full generation still answers");
    }

    #[test]
    fn only_the_first_copy_of_an_event_id_is_new() {
        let mut seen = SeenIds::default();
        assert!(seen.insert("e-1"));
        assert!(seen.insert("e-2"));
        assert!(!seen.insert("e-1"));
        assert!(seen.insert(""));
        assert!(!seen.insert(""));
    }
}
