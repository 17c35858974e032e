//! The source-agnostic core of the stream stage: heartbeats in (tagged with
//! partition and offset), sessionized per partition, and flushed as one unit
//! — raw mirror first, then one store transaction with the session changes
//! and the offsets they cover. Both the Kafka consumer and the embedded
//! hand-off drive it, so the exactly-once logic exists once.

use crate::embedded::EMBEDDED_TOPIC;
use crate::metrics::StreamMetrics;
use crate::sessionizer::{
    sessionize_all, Change, Event, EventRef, Outcome, SessionConfig, SessionKey, Sessionizer, Share,
};
use crate::sink::{
    DeadLetter, Flush, LateMark, OffsetRow, OpenSession, RawHeartbeat, RawInStore, RawMirror,
    RawPlacement, SessionStore, SinkError,
};
use erasures::{erase_from_mirror, Erasures};
use hb_common::health::HealthHandle;
use hb_common::progress::{Progress, Unit};
use hb_common::time::now_ms;
use hb_proto::v1::Heartbeat;
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Instant;

mod erasures;

/// Attempts of a flush write before giving up (see [`Pipeline::retry_forever`]):
/// writes are idempotent (upserts, first-copy-wins raw rows, absolute
/// offsets), so retrying is always safe.
const WRITE_ATTEMPTS: u32 = 5;

/// Longest wait between two attempts of a failing write.
const MAX_BACKOFF: std::time::Duration = std::time::Duration::from_secs(5);

/// Runs `write` until it succeeds, fails for good, or has failed `attempts`
/// times (`None`: while the failure is transient, forever). `failing` counts
/// the attempts failed in a row, for readiness.
async fn retry<'a, F, Fut>(
    attempts: Option<u32>,
    failing: &AtomicU32,
    mut write: F,
) -> Result<(), SinkError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), SinkError>> + 'a,
{
    let mut backoff = std::time::Duration::from_millis(100);
    let mut attempt = 1;
    loop {
        match write().await {
            Ok(()) => {
                failing.store(0, Ordering::Relaxed);
                return Ok(());
            }
            Err(SinkError::Unavailable(reason)) if attempts.is_none_or(|n| attempt < n) => {
                failing.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(attempt, %reason, "flush write failed, retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                attempt += 1;
            }
            Err(err) => {
                failing.fetch_add(1, Ordering::Relaxed);
                return Err(err);
            }
        }
    }
}

/// Where a pipeline's heartbeats come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceKind {
    /// Partitions of a log topic whose messages have offsets (Kafka): the
    /// store keeps each partition's offsets with the sessions they cover,
    /// and a new owner resumes from them.
    Log { topic: String },
    /// The in-process hand-off of `hbmesh up`: one stream without offsets,
    /// each batch acknowledged once committed; the store keeps only its
    /// watermark, under [`EMBEDDED_TOPIC`].
    Handoff,
}

/// A log partition's offsets.
#[derive(Clone, Copy, Debug)]
struct Offsets {
    /// Offset of the next message to process (None before the first one
    /// of a partition with nothing stored).
    next: Option<i64>,
    /// Messages below this offset were committed before the partition was
    /// assigned (raw rows, dead letters): a source that re-delivers them
    /// (see [`Pipeline::defer_sessions_to_source`]) has them sessionized
    /// again and nothing else.
    committed_until: i64,
    /// Offset up to which the flushes prepared so far write the sessions.
    sessions: Option<i64>,
}

impl Offsets {
    /// The offset committed once the flushes prepared so far commit: a
    /// replayed message leaves it where it was.
    fn committed(&self) -> Option<i64> {
        self.next.map(|next| next.max(self.committed_until))
    }
}

/// One partition's in-memory state.
struct PartitionState {
    sessionizer: Sessionizer,
    /// `None` for the hand-off, which has no offsets.
    offsets: Option<Offsets>,
    /// This process's take-over of the partition, checked by every commit.
    owner_epoch: i64,
    /// Has something to commit (events or finalizations).
    dirty: bool,
    /// The watermark of the last write: an idle partition's watermark moves
    /// without a heartbeat, and must be written for a restart to keep it.
    written_watermark_ms: Option<i64>,
    /// Keys with late heartbeats not yet in their sessions (the late lane),
    /// stored or about to be.
    late: HashMap<(String, String), LateMark>,
    /// The watermark at which each share of the keys last had its sessions
    /// written (see [`Pipeline::prepare_share_flush`]); one entry when the
    /// sessions are always written whole.
    share_watermarks: Vec<Option<i64>>,
    /// The share the next share flush writes.
    next_share: u32,
}

impl PartitionState {
    /// The watermark a restore may start from: every key's sessions are
    /// stored as of this watermark or a later one.
    fn sessions_watermark(&self) -> Option<i64> {
        self.share_watermarks.iter().copied().min().flatten()
    }
}

/// What a flush writes of the session changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scope {
    /// None: raw rows, dead letters and the committed offsets only.
    RawOnly,
    /// The changes of the next share of the keys (see [`Pipeline::prepare_share_flush`]).
    NextShare,
    /// Every change.
    All,
}

/// Shares of the keys whose session writes a loaded embedded stage spreads
/// over its commits (see [`Pipeline::prepare_share_flush`]).
pub const SESSION_WRITE_SHARES: u32 = 8;

/// Processing time a key's late heartbeats must have stopped coming before
/// its correction runs: a device uploading a backlog in many calls is
/// corrected once, not once per flush over an ever longer span.
pub const CORRECTION_SETTLE_MS: i64 = 2_000;

/// Keys whose correction reads run at once.
const CORRECTION_READS_IN_FLIGHT: usize = 16;

/// Whether a key's late heartbeats can be corrected now (processing time
/// `now_ms`): they have settled, no heartbeat still to come can be within
/// the gap of them (it would be at or after the lateness horizon), and the
/// key has no open session here, so every session they may join is final and
/// written by the flush being taken.
fn correction_due(mark: &LateMark, sessionizer: &Sessionizer, now_ms: i64) -> bool {
    let config = sessionizer.config();
    // A mark read back from the store has seen nothing new since.
    let settled =
        mark.latest_ms == i64::MIN || now_ms.saturating_sub(mark.latest_ms) >= CORRECTION_SETTLE_MS;
    settled
        && sessionizer.watermark_ms().is_some_and(|watermark_ms| {
            mark.to_ms
                < watermark_ms
                    .saturating_sub(config.lateness_ms)
                    .saturating_sub(config.gap_ms)
        })
        && !sessionizer.holds_key(&mark.user_id, &mark.video_id)
}

/// What one flush did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlushStats {
    pub raw: usize,
    pub changes: usize,
    pub finalized: usize,
}

/// The stream stage's state across partitions.
pub struct Pipeline {
    config: SessionConfig,
    source: SourceKind,
    /// Under which the store keeps the offsets (or the hand-off's watermark).
    topic: String,
    store: Arc<dyn SessionStore>,
    /// Where raw rows are written, and replayed from on restore.
    raw: RawPlacement,
    metrics: StreamMetrics,
    partitions: BTreeMap<i32, PartitionState>,
    pending_raw: Vec<RawHeartbeat>,
    pending_dead: Vec<DeadLetter>,
    /// Late marks of the heartbeats since the last flush, by partition and key.
    pending_marks: HashMap<(i32, String, String), LateMark>,
    /// Newest processing time passed in (by ingest or tick).
    clock_ms: i64,
    /// Flushes may leave session writes for later (see
    /// [`Pipeline::defer_sessions`]); restores then replay recent raw rows.
    defer_sessions: bool,
    /// The source re-delivers a partition from its sessions' offset, so a
    /// restore replays nothing itself.
    source_replays: bool,
    /// Attempts of each write (`None`: retry transient failures forever).
    write_attempts: Option<u32>,
    /// Write attempts failed in a row, across flushes.
    failing: Arc<AtomicU32>,
    /// The erasures applied so far (see [`Pipeline::poll_erasures`]).
    erasures: Erasures,
}

impl Pipeline {
    pub fn new(
        config: SessionConfig,
        source: SourceKind,
        store: Arc<dyn SessionStore>,
        raw: RawPlacement,
        metrics: StreamMetrics,
    ) -> Pipeline {
        let topic = match &source {
            SourceKind::Log { topic } => topic.clone(),
            SourceKind::Handoff => EMBEDDED_TOPIC.to_string(),
        };
        Pipeline {
            config,
            source,
            topic,
            store,
            raw,
            metrics,
            partitions: BTreeMap::new(),
            pending_raw: Vec::new(),
            pending_dead: Vec::new(),
            pending_marks: HashMap::new(),
            clock_ms: i64::MIN,
            defer_sessions: false,
            source_replays: false,
            write_attempts: Some(WRITE_ATTEMPTS),
            failing: Arc::new(AtomicU32::new(0)),
            erasures: Erasures::default(),
        }
    }

    /// Retries a flush's transient write failures until they pass instead of
    /// giving up after a few: for a source that waits (Kafka keeps the
    /// messages) rather than one whose callers wait for an answer.
    pub fn retry_forever(&mut self) {
        self.write_attempts = None;
    }

    /// The stage's metrics.
    pub fn metrics(&self) -> &StreamMetrics {
        &self.metrics
    }

    /// Write attempts that failed in a row (0 once a write succeeds): the
    /// store is unreachable or refusing while this grows.
    pub fn failing_writes(&self) -> u32 {
        self.failing.load(Ordering::Relaxed)
    }

    /// Lets [`Pipeline::prepare_raw_flush`] commit raw rows without the
    /// session changes they cause (the embedded stage under load: an open
    /// session's row is then rewritten once per few seconds, not once per
    /// commit). Exact only with one partition whose raw rows live in the
    /// sessions store, committed with the sessions: a restore rebuilds what
    /// the deferred flushes left out from the raw rows since the stored
    /// watermark minus the lateness. Returns false (and changes nothing)
    /// when the mirror is elsewhere.
    pub fn defer_sessions(&mut self) -> bool {
        self.defer_sessions = matches!(self.raw, RawPlacement::InStore(_));
        self.defer_sessions
    }

    /// Lets [`Pipeline::prepare_raw_flush`] commit raw rows and offsets
    /// without the session changes they cause, for a source that can
    /// deliver a partition again from any offset (Kafka): a restore resumes
    /// from the stored sessions' offset, and the messages between it and the
    /// committed offset are sessionized again without being written again.
    /// Exact wherever the raw mirror lives.
    pub fn defer_sessions_to_source(&mut self) {
        self.defer_sessions = true;
        self.source_replays = true;
    }

    /// Takes ownership of `partition`: restores its open sessions from the
    /// store and the raw mirror. Returns the offset to resume from: the
    /// stored sessions' offset (the committed one when sessions are never
    /// deferred, where the two are equal).
    pub async fn assign(&mut self, partition: i32) -> Result<Option<i64>, SinkError> {
        let restoring = Progress::start(
            format!("restoring partition {partition}"),
            None,
            Unit::Count("raw rows"),
        );
        let snapshot = self.store.load_partition(&self.topic, partition).await?;
        let since_ms = snapshot
            .watermark_ms
            .map_or(i64::MIN, |wm| wm.saturating_sub(self.config.lateness_ms));
        let replay_from = match &self.raw {
            RawPlacement::InStore(store) if self.defer_sessions && !self.source_replays => {
                Some(store.as_ref())
            }
            _ => None,
        };
        // With a replay to follow, the stored open sessions are rebuilt only
        // up to where it starts: rebuilt heartbeats past it (a share written
        // after the stored watermark) would move the watermark ahead of the
        // replay and make its older heartbeats late. The replay brings them
        // back in time order.
        let rebuilt_spans: Cow<'_, [OpenSession]> = match replay_from {
            Some(_) => snapshot
                .open
                .iter()
                .filter(|open| open.start_ms < since_ms)
                .map(|open| OpenSession {
                    end_ms: open.end_ms.min(since_ms.saturating_sub(1)),
                    ..open.clone()
                })
                .collect(),
            None => Cow::Borrowed(&snapshot.open),
        };
        let mut sessionizer = Sessionizer::new(self.config);
        let mut rebuilt = sessionizer.start_restore();
        let mut raw_rows = 0;
        self.raw
            .mirror()
            .replay_open(&rebuilt_spans, &mut |row| {
                raw_rows += 1;
                restoring.inc(1);
                if !row.late {
                    if let Some(event) = row.into_event() {
                        rebuilt.push(event.to_ref());
                    }
                }
            })
            .await?;
        rebuilt.finish(snapshot.watermark_ms);
        let replayed = match replay_from {
            Some(store) => {
                let merged =
                    Self::replay_deferred(store, partition, since_ms, &mut sessionizer).await?;
                // Stored sessions the rebuild left out entirely: their rows
                // were pushed as new, so the sessionizer learns what the store
                // holds under their keys.
                for open in snapshot.open.iter().filter(|o| o.start_ms >= since_ms) {
                    sessionizer.note_stored(&SessionKey {
                        user_id: open.user_id.clone(),
                        video_id: open.video_id.clone(),
                        start_ms: open.start_ms,
                    });
                }
                merged
            }
            None => 0,
        };
        tracing::info!(
            partition,
            next_offset = ?snapshot.next_offset,
            open_sessions = snapshot.open.len(),
            raw_rows,
            replayed,
            late_keys = snapshot.late.len(),
            "partition assigned and restored"
        );
        let late = snapshot
            .late
            .into_iter()
            .map(|mark| ((mark.user_id.clone(), mark.video_id.clone()), mark))
            .collect();
        // With no sessions written yet, every message is read again.
        let resume = match (&self.source, snapshot.session_offset, snapshot.next_offset) {
            (SourceKind::Handoff, _, _) => None,
            (SourceKind::Log { .. }, Some(sessions), _) => Some(sessions),
            (SourceKind::Log { .. }, None, Some(_)) => Some(0),
            (SourceKind::Log { .. }, None, None) => None,
        };
        let offsets = match self.source {
            SourceKind::Log { .. } => Some(Offsets {
                next: resume,
                committed_until: snapshot.next_offset.unwrap_or(0),
                sessions: resume,
            }),
            SourceKind::Handoff => None,
        };
        self.partitions.insert(
            partition,
            PartitionState {
                sessionizer,
                offsets,
                owner_epoch: snapshot.owner_epoch,
                dirty: false,
                written_watermark_ms: snapshot.watermark_ms,
                late,
                share_watermarks: vec![snapshot.watermark_ms; self.session_shares() as usize],
                next_share: 0,
            },
        );
        // Known from the start, so the lag series exists before the first report.
        self.set_lag(partition, 0);
        self.update_gauges();
        Ok(resume)
    }

    /// Last step of a restore with deferred session writes: each key's
    /// stored sessions are those of the last flush that wrote them, at the
    /// stored watermark or later (a share flush writes some keys only and
    /// stores the watermark of the share written longest ago); `since_ms` is
    /// that watermark minus the lateness, and the restore so far holds the
    /// stored open sessions' heartbeats before it. Every heartbeat from
    /// `since_ms` on is pushed again in time order, except late ones and
    /// those up to the end of their key's latest stored final session (a
    /// share written after the stored watermark may have finalized sessions
    /// reaching past `since_ms`; every later heartbeat of that key is in a
    /// later session): anything committed since the stored watermark was
    /// at or after `since_ms` (older was late). They come from the store one
    /// at a time, none held beyond the sessionizer's own state. Their changes
    /// go out with the next flushes. Returns how many were merged.
    async fn replay_deferred(
        store: &dyn RawInStore,
        partition: i32,
        since_ms: i64,
        sessionizer: &mut Sessionizer,
    ) -> Result<usize, SinkError> {
        let mut final_ends: HashMap<String, HashMap<String, i64>> = HashMap::new();
        for (user_id, video_id, end_ms) in store.final_ends_since(partition, since_ms).await? {
            final_ends
                .entry(user_id)
                .or_default()
                .insert(video_id, end_ms);
        }
        let mut merged = 0;
        store
            .replay_since(since_ms, &mut |row| {
                let in_final = final_ends
                    .get(&row.user_id)
                    .and_then(|ends| ends.get(&row.video_id))
                    .is_some_and(|&end_ms| row.event_time_ms <= end_ms);
                if row.late || in_final {
                    return;
                }
                if let Some(event) = row.into_event() {
                    merged += usize::from(sessionizer.push(event) == Outcome::Merged);
                }
            })
            .await?;
        Ok(merged)
    }

    /// Forgets `partition` (after its last flush); another owner resumes it.
    pub fn revoke(&mut self, partition: i32) {
        self.partitions.remove(&partition);
        self.update_gauges();
    }

    pub fn owns(&self, partition: i32) -> bool {
        self.partitions.contains_key(&partition)
    }

    /// Offset the partition resumes from, if known.
    pub fn next_offset(&self, partition: i32) -> Option<i64> {
        self.partitions
            .get(&partition)
            .and_then(|p| p.offsets)
            .and_then(|o| o.next)
    }

    /// Per owned partition, the offset its sessions are written up to once
    /// the flushes prepared so far commit: where a new owner resumes.
    pub fn session_offsets(&self) -> Vec<(i32, i64)> {
        self.partitions
            .iter()
            .filter_map(|(p, s)| s.offsets.and_then(|o| o.sessions).map(|o| (*p, o)))
            .collect()
    }

    /// Records the consumer lag of `partition`.
    pub fn set_lag(&self, partition: i32, lag: i64) {
        self.metrics
            .consumer_lag
            .get_or_create(&crate::metrics::PartitionLabel { partition })
            .set(lag);
    }

    /// Feeds one heartbeat read at `offset` of `partition`.
    pub fn ingest(&mut self, partition: i32, offset: Option<i64>, hb: &Heartbeat, now_ms: i64) {
        self.ingest_batch(partition, [(offset, hb.clone())], now_ms);
    }

    /// Feeds heartbeats of `partition` in the order read (each with its
    /// offset from a log; `None` from the hand-off), pushed into the sessionizer as one
    /// batch: it loads what the next heartbeats need while the current one
    /// is merged. Raw rows, dead letters and replays as for each one alone.
    /// Takes the heartbeats: their strings become the raw rows.
    pub fn ingest_batch(
        &mut self,
        partition: i32,
        heartbeats: impl IntoIterator<Item = (Option<i64>, Heartbeat)>,
        now_ms: i64,
    ) {
        self.clock_ms = self.clock_ms.max(now_ms);
        let Some(state) = self.partitions.get_mut(&partition) else {
            return;
        };
        let heartbeats = heartbeats.into_iter();
        let mut read = Vec::with_capacity(heartbeats.size_hint().0);
        for (offset, hb) in heartbeats {
            let mut replayed = false;
            if let (Some(offsets), Some(offset)) = (state.offsets.as_mut(), offset) {
                replayed = offset < offsets.committed_until;
                offsets.next = Some(offset + 1);
            }
            state.dirty = true;
            match Event::scalars(&hb) {
                Ok(scalars) => read.push((hb, replayed, scalars)),
                // Dead-lettered when first read.
                Err(_) if replayed => {}
                Err(reason) => {
                    // Ingest validated it; reaching here means a foreign producer.
                    self.metrics.undecodable.inc();
                    self.pending_dead.push(DeadLetter {
                        received_ms: now_ms,
                        event_id: hb.event_id.clone(),
                        device_id: hb.device_id.clone(),
                        reason: format!("not a valid heartbeat: {reason}"),
                        payload: prost::Message::encode_to_vec(&hb),
                    });
                }
            }
        }
        let events: Vec<EventRef<'_>> = read
            .iter()
            .map(|(hb, _, scalars)| EventRef::with_scalars(hb, *scalars))
            .collect();
        let outcomes = state.sessionizer.push_event_refs(&events);
        drop(events);
        for ((hb, replayed, scalars), outcome) in read.into_iter().zip(outcomes) {
            if replayed {
                continue; // its raw row and counts were committed when first read
            }
            match outcome {
                Outcome::Merged => {
                    self.metrics.heartbeats.inc();
                    self.pending_raw
                        .push(RawHeartbeat::accepted(hb, scalars, false));
                }
                Outcome::Duplicate => {
                    self.metrics.duplicates.inc();
                }
                Outcome::Late => {
                    self.metrics.heartbeats.inc();
                    self.metrics.late.inc();
                    let (time_ms, _, _) = scalars;
                    let mark = LateMark {
                        topic: self.topic.clone(),
                        partition,
                        user_id: hb.user_id.clone(),
                        video_id: hb.video_id.clone(),
                        from_ms: time_ms,
                        to_ms: time_ms,
                        heartbeats: 1,
                        marked_ms: now_ms,
                        latest_ms: now_ms,
                    };
                    self.pending_raw
                        .push(RawHeartbeat::accepted(hb, scalars, true));
                    state
                        .late
                        .entry((mark.user_id.clone(), mark.video_id.clone()))
                        .and_modify(|known| known.absorb(&mark))
                        .or_insert_with(|| mark.clone());
                    self.pending_marks
                        .entry((partition, mark.user_id.clone(), mark.video_id.clone()))
                        .and_modify(|pending| pending.absorb(&mark))
                        .or_insert(mark);
                }
            }
        }
    }

    /// Marks an undecodable message at `offset` as consumed.
    pub fn skip(&mut self, partition: i32, offset: i64, dead_letter: DeadLetter) {
        let Some(state) = self.partitions.get_mut(&partition) else {
            return;
        };
        state.dirty = true;
        if let Some(offsets) = state.offsets.as_mut() {
            offsets.next = Some(offset + 1);
            if offset < offsets.committed_until {
                return; // dead-lettered when first read
            }
        }
        self.metrics.undecodable.inc();
        self.pending_dead.push(dead_letter);
    }

    /// Queues dead letters to commit with the next flush (embedded tier).
    pub fn dead_letters(&mut self, letters: Vec<DeadLetter>) {
        self.pending_dead.extend(letters);
    }

    /// Heartbeats waiting for the next flush.
    pub fn pending(&self) -> usize {
        self.pending_raw.len() + self.pending_dead.len()
    }

    /// Finalizes by watermark. Call about once a second or more often, and
    /// only while the source has nothing waiting: a partition that received
    /// nothing since the last tick counts the time as quiet, and once quiet
    /// for the idle timeout its watermark advances with processing time.
    pub fn tick(&mut self, now_ms: i64) {
        self.clock_ms = self.clock_ms.max(now_ms);
        for state in self.partitions.values_mut() {
            state.sessionizer.advance(now_ms);
        }
    }

    /// Commits everything pending: raw rows to the external mirror first (so
    /// offsets never run ahead of it), then one store transaction with raw rows
    /// (when the store holds them), dead letters, session changes and offsets.
    /// Late-lane corrections that became due follow in a transaction of their
    /// own. On error the in-memory state is ahead of the store (the flush,
    /// or only its corrections, did not commit): the caller must
    /// [`Pipeline::reload`] before going on.
    pub async fn flush(&mut self) -> Result<FlushStats, SinkError> {
        match self.prepare_flush() {
            Some(prepared) => prepared.commit().await,
            None => Ok(FlushStats::default()),
        }
    }

    /// Takes everything pending as one flush without writing it, so the
    /// caller may go on feeding heartbeats while it commits (the embedded
    /// stage overlaps one commit with the next batches). Flushes must be
    /// committed in the order they were prepared, one at a time; after a
    /// failed one the caller must [`Pipeline::reload`]. `None`: nothing to write.
    pub fn prepare_flush(&mut self) -> Option<PreparedFlush> {
        self.take_flush(Scope::All)
    }

    /// Shares of the keys whose session writes [`Pipeline::prepare_share_flush`]
    /// spreads over its flushes: [`SESSION_WRITE_SHARES`] where a restore
    /// replays the raw rows itself (see [`Pipeline::defer_sessions`]), else 1.
    pub fn session_shares(&self) -> u32 {
        if self.defer_sessions && !self.source_replays {
            SESSION_WRITE_SHARES
        } else {
            1
        }
    }

    /// Like [`Pipeline::prepare_flush`], but the session changes of only the
    /// next of [`Pipeline::session_shares`] shares of the keys (all of one
    /// key's changes together), the others staying in memory: a loaded
    /// stage's session writes spread over several commits instead of
    /// stalling one. The watermark stored with them is that of the share
    /// written longest ago, from which a restore replays (see
    /// [`Pipeline::defer_sessions`]). A full flush with one share, or while an
    /// erasure is pending.
    pub fn prepare_share_flush(&mut self) -> Option<PreparedFlush> {
        if self.session_shares() == 1 || !self.erasures.pending.is_empty() {
            return self.take_flush(Scope::All);
        }
        self.take_flush(Scope::NextShare)
    }

    /// Like [`Pipeline::prepare_flush`], but only the raw rows and dead
    /// letters: session changes (and the watermark stored with them) stay in
    /// memory for a later `prepare_flush`. Only after
    /// [`Pipeline::defer_sessions`] returned true; otherwise a full flush.
    pub fn prepare_raw_flush(&mut self) -> Option<PreparedFlush> {
        // An erasure's flush writes the sessions too: the stored sessions
        // (and where a restart resumes them) then follow the erasure.
        if !self.defer_sessions || !self.erasures.pending.is_empty() {
            return self.take_flush(Scope::All);
        }
        let replay_only = self
            .partitions
            .values()
            .filter_map(|p| p.offsets)
            .all(|o| o.next.is_none_or(|next| next <= o.committed_until));
        if self.pending_raw.is_empty() && self.pending_dead.is_empty() && replay_only {
            return None;
        }
        self.metrics.deferred_flushes.inc();
        self.take_flush(Scope::RawOnly)
    }

    fn take_flush(&mut self, scope: Scope) -> Option<PreparedFlush> {
        let started = Instant::now();
        let mut changes = Vec::new();
        let mut offsets = Vec::new();
        let mut corrections = Vec::new();
        for (partition, state) in self.partitions.iter_mut() {
            // The hand-off stores its watermark in a row of its own, at offset 0.
            let committed = match state.offsets {
                Some(o) => o.committed(),
                None => Some(0),
            };
            let session_offset = match state.offsets {
                Some(o) => o.next,
                None => Some(0),
            };
            let row = |next_offset, watermark_ms, session_offset| OffsetRow {
                topic: self.topic.clone(),
                partition: *partition,
                next_offset,
                watermark_ms,
                session_offset,
                owner_epoch: state.owner_epoch,
            };
            if scope == Scope::RawOnly {
                // Raw rows only: the committed offset moves, the sessions'
                // offset and watermark stay; `dirty` stays for the sessions.
                if let (true, Some(next_offset)) = (state.dirty, committed) {
                    offsets.push(row(next_offset, None, None));
                }
                continue;
            }
            let shares = state.share_watermarks.len() as u32;
            let share = match scope {
                Scope::NextShare if shares > 1 => Share {
                    index: state.next_share,
                    of: shares,
                },
                _ => Share::ALL,
            };
            let drained = state.sessionizer.drain_share(share);
            // After the drain: the sessions a due correction reads are in
            // this flush or an earlier one (a key's correction waits for the
            // flush that writes its share).
            let (sessionizer, clock_ms) = (&state.sessionizer, self.clock_ms);
            state.late.retain(|(user_id, video_id), mark| {
                let due =
                    share.holds(user_id, video_id) && correction_due(mark, sessionizer, clock_ms);
                if due {
                    corrections.push(mark.clone());
                }
                !due
            });
            let now_watermark_ms = state.sessionizer.watermark_ms();
            if share == Share::ALL {
                state.share_watermarks.fill(now_watermark_ms);
            } else {
                state.share_watermarks[share.index as usize] = now_watermark_ms;
                state.next_share = (share.index + 1) % shares;
            }
            let watermark_ms = state.sessions_watermark();
            let watermark_moved = watermark_ms != state.written_watermark_ms;
            if drained.is_empty() && !state.dirty && !watermark_moved {
                continue;
            }
            state.written_watermark_ms = watermark_ms;
            changes.extend(drained.into_iter().map(|c| (*partition, c)));
            if let Some(next_offset) = committed {
                offsets.push(row(next_offset, watermark_ms, session_offset));
                if let Some(o) = state.offsets.as_mut() {
                    o.sessions = o.next;
                }
            }
            state.dirty = false;
        }
        let raw = std::mem::take(&mut self.pending_raw);
        let dead_letters = std::mem::take(&mut self.pending_dead);
        let late_marks: Vec<LateMark> = std::mem::take(&mut self.pending_marks)
            .into_values()
            .collect();
        let erasures = std::mem::take(&mut self.erasures.pending);
        self.update_gauges();
        if changes.is_empty()
            && raw.is_empty()
            && dead_letters.is_empty()
            && offsets.is_empty()
            && late_marks.is_empty()
            && corrections.is_empty()
            && erasures.is_empty()
        {
            return None;
        }
        let stats = FlushStats {
            raw: raw.len(),
            changes: changes.len(),
            finalized: changes
                .iter()
                .filter(|(_, c)| matches!(c, Change::Final(_)))
                .count(),
        };
        let (store_raw, mirror) = match &self.raw {
            RawPlacement::InStore(_) => (raw, None),
            RawPlacement::Mirror(mirror) => (Vec::new(), Some((Arc::clone(mirror), raw))),
        };
        let corrections = (!corrections.is_empty()).then(|| Corrections {
            marks: corrections,
            replay: self.raw.clone(),
            gap_ms: self.config.gap_ms,
        });
        Some(PreparedFlush {
            started,
            stats,
            mirror,
            store: Arc::clone(&self.store),
            flush: Arc::new(Flush {
                raw: store_raw,
                dead_letters,
                changes,
                offsets,
                late_marks,
                corrected: Vec::new(),
                erasures,
                now_ms: now_ms(),
                open_sessions: Some(self.open_sessions()),
            }),
            corrections,
            metrics: self.metrics.clone(),
            attempts: self.write_attempts,
            failing: Arc::clone(&self.failing),
        })
    }

    /// After a failed flush: throws away in-memory state and pending work and
    /// restores every owned partition from the store.
    pub async fn reload(&mut self) -> Result<(), SinkError> {
        self.pending_raw.clear();
        self.pending_dead.clear();
        self.pending_marks.clear();
        // Erasures whose flush failed are read again (none of them was
        // carried to the mirror by this process).
        self.erasures = Erasures::default();
        let owned: Vec<i32> = self.partitions.keys().copied().collect();
        self.partitions.clear();
        for partition in owned {
            self.assign(partition).await?;
        }
        Ok(())
    }

    /// Removes expired raw rows kept in the store.
    pub async fn expire_raw(&self) -> Result<u64, SinkError> {
        match &self.raw {
            RawPlacement::InStore(store) => store.expire_raw(now_ms()).await,
            RawPlacement::Mirror(_) => Ok(0),
        }
    }

    /// Open sessions across the owned partitions.
    pub fn open_sessions(&self) -> usize {
        self.partitions
            .values()
            .map(|p| p.sessionizer.open_sessions())
            .sum()
    }

    /// Heartbeats held in full across the owned partitions (see
    /// [`Sessionizer::held_events`]).
    pub fn held_events(&self) -> usize {
        self.partitions
            .values()
            .map(|p| p.sessionizer.held_events())
            .sum()
    }

    fn update_gauges(&self) {
        self.metrics.open_sessions.set(self.open_sessions() as i64);
        let late: usize = self.partitions.values().map(|p| p.late.len()).sum();
        self.metrics.corrections_pending.set(late as i64);
    }
}

/// The late lane's work after a flush commits: keys whose late heartbeats
/// can now be brought into their sessions.
struct Corrections {
    marks: Vec<LateMark>,
    /// Where the raw rows are read back from.
    replay: RawPlacement,
    gap_ms: i64,
}

impl Corrections {
    /// The changes that make each key's sessions around its late heartbeats
    /// equal the batch definition over its raw rows: the stored sessions the
    /// late heartbeats can reach are recomputed from the raw mirror over
    /// their whole span and replaced. Idempotent: a redo computes the same.
    async fn changes(&self, store: &dyn SessionStore) -> Result<Vec<(i32, Change)>, SinkError> {
        use futures::stream::{StreamExt as _, TryStreamExt as _};
        // Keys are independent: their reads overlap (a pool of connections,
        // or a mirror's many nodes) instead of waiting on each other.
        type KeyChanges<'a> = futures::future::BoxFuture<'a, Result<Vec<(i32, Change)>, SinkError>>;
        // Boxed as `Send` here: the stage commits on a spawned task.
        let reads: Vec<KeyChanges<'_>> = self
            .marks
            .iter()
            .map(|mark| Box::pin(self.key_changes(store, mark)) as KeyChanges<'_>)
            .collect();
        let per_key: Vec<Vec<(i32, Change)>> = futures::stream::iter(reads)
            .buffered(CORRECTION_READS_IN_FLIGHT)
            .try_collect()
            .await?;
        Ok(per_key.into_iter().flatten().collect())
    }

    async fn key_changes(
        &self,
        store: &dyn SessionStore,
        mark: &LateMark,
    ) -> Result<Vec<(i32, Change)>, SinkError> {
        // A heartbeat joins a session within the gap of it.
        let reach_from = mark.from_ms.saturating_sub(self.gap_ms);
        let reach_to = mark.to_ms.saturating_add(self.gap_ms);
        let stored = store
            .key_sessions(&mark.user_id, &mark.video_id, reach_from, reach_to)
            .await?;
        // Sessions of a key are a gap apart, so the reached ones cover every
        // heartbeat a recount of the span needs.
        let from_ms = stored
            .iter()
            .map(|s| s.start_ms)
            .fold(mark.from_ms, i64::min);
        let to_ms = stored.iter().map(|s| s.end_ms).fold(mark.to_ms, i64::max);
        let rows = self
            .replay
            .mirror()
            .replay(&mark.user_id, &mark.video_id, from_ms, to_ms)
            .await?;
        let events: Vec<Event> = rows
            .into_iter()
            .filter_map(RawHeartbeat::into_event)
            .collect();
        let sessions = sessionize_all(events, self.gap_ms);
        let mut changes = Vec::with_capacity(stored.len() + sessions.len());
        for old in &stored {
            if !sessions.iter().any(|s| s.start_ms == old.start_ms) {
                changes.push((
                    mark.partition,
                    Change::Delete(SessionKey {
                        user_id: mark.user_id.clone(),
                        video_id: mark.video_id.clone(),
                        start_ms: old.start_ms,
                    }),
                ));
            }
        }
        changes.extend(
            sessions
                .into_iter()
                .map(|s| (mark.partition, Change::Final(s))),
        );
        Ok(changes)
    }
}

/// A flush taken from the pipeline and not yet written (see
/// [`Pipeline::prepare_flush`]).
pub struct PreparedFlush {
    started: Instant,
    stats: FlushStats,
    /// The separate raw mirror and its rows, when the store does not hold them.
    mirror: Option<(Arc<dyn RawMirror>, Vec<RawHeartbeat>)>,
    store: Arc<dyn SessionStore>,
    flush: Arc<Flush>,
    /// Run once the flush has committed.
    corrections: Option<Corrections>,
    metrics: StreamMetrics,
    attempts: Option<u32>,
    failing: Arc<AtomicU32>,
}

impl PreparedFlush {
    /// Writes the raw mirror first (offsets never run ahead of it), then the
    /// store transaction; each retried while the failure is transient.
    pub async fn commit(self) -> Result<FlushStats, SinkError> {
        if let Some((mirror, rows)) = &self.mirror {
            // Erased users' rows go before this flush's rows are written
            // (those came after the erasure); earlier flushes are done.
            erase_from_mirror(
                mirror.as_ref(),
                &self.flush.erasures,
                self.attempts,
                &self.failing,
            )
            .await?;
            retry(self.attempts, &self.failing, || mirror.write(rows)).await?;
        }
        let store_started = Instant::now();
        retry(self.attempts, &self.failing, || {
            self.store.commit(Arc::clone(&self.flush))
        })
        .await?;
        self.metrics
            .store_write_latency
            .observe(store_started.elapsed().as_secs_f64());
        self.metrics
            .flush_latency
            .observe(self.started.elapsed().as_secs_f64());
        self.metrics.flush_batch_size.observe(self.stats.raw as f64);
        self.metrics.finalized.inc_by(self.stats.finalized as u64);
        if let Some(corrections) = &self.corrections {
            self.correct(corrections).await?;
        }
        Ok(self.stats)
    }

    /// Applies the late lane's corrections in one transaction of their own,
    /// which also deletes their marks: a crash before it leaves the marks,
    /// and the next owner redoes them.
    async fn correct(&self, corrections: &Corrections) -> Result<(), SinkError> {
        let store = &self.store;
        retry(self.attempts, &self.failing, || async move {
            let changes = corrections.changes(store.as_ref()).await?;
            let flush = Flush {
                changes,
                corrected: corrections.marks.clone(),
                now_ms: now_ms(),
                ..Flush::default()
            };
            store.commit(Arc::new(flush)).await
        })
        .await?;
        let now = now_ms();
        for mark in &corrections.marks {
            self.metrics.corrections.inc();
            self.metrics.corrected_heartbeats.inc_by(mark.heartbeats);
            self.metrics
                .correction_lag
                .observe(now.saturating_sub(mark.marked_ms).max(0) as f64 / 1000.0);
        }
        Ok(())
    }
}

/// Failed write attempts in a row that make a stage unready (the first
/// retries pass within a second when a connection was merely cut).
const FAILED_WRITES_UNREADY: u32 = 3;

/// A source's readiness, renewed on every tick and after every commit for
/// `stall`: it lapses when the stage's loop stalls, and drops while a commit
/// hangs that long or while the store keeps refusing writes.
pub struct Readiness {
    handle: HealthHandle,
    stall: std::time::Duration,
}

impl Readiness {
    pub fn new(handle: HealthHandle, stall: std::time::Duration) -> Self {
        Self { handle, stall }
    }

    /// Renews (or drops) readiness; `commit_started`: when the commit in
    /// flight, if any, started.
    pub fn renew(&self, pipeline: &Pipeline, commit_started: Option<Instant>) {
        let hung = commit_started.is_some_and(|started| started.elapsed() >= self.stall);
        if hung || pipeline.failing_writes() >= FAILED_WRITES_UNREADY {
            self.handle.unhealthy();
        } else {
            self.handle.healthy_for(self.stall);
        }
    }

    /// How long a stall or a hung commit may last.
    pub fn stall(&self) -> std::time::Duration {
        self.stall
    }
}

/// A commit this large means the writer is the bottleneck (see
/// [`SessionWrites`]). Set below the commits a stage that writes sessions
/// with every commit makes at the embedded tier's target load
/// (docs/benchmarks.md), so that such a load reliably starts deferring.
pub const DEFER_FROM: usize = 10_000;

/// The commit size that starts deferring under a flush cap of `flush_max`:
/// a commit that reaches the cap is a large one however low the cap is set
/// (else a cap under [`DEFER_FROM`] would write sessions with every commit).
pub fn defer_from(flush_max: usize) -> usize {
    DEFER_FROM.min(flush_max.max(1))
}

/// How a stage batches its commits.
#[derive(Clone, Copy, Debug)]
pub struct StageSettings {
    /// Finalization and flush timer.
    pub tick: std::time::Duration,
    /// Most heartbeats one commit takes.
    pub flush_max: usize,
    /// Longest a large commit may leave session writes for later
    /// (`HB_SESSION_WRITE_INTERVAL`; zero: never).
    pub session_write_interval: std::time::Duration,
    /// Commit size that starts deferring (see [`SessionWrites`]).
    pub defer_from: usize,
}

/// When a flush also writes the session changes (stages whose pipeline
/// defers them, see [`Pipeline::defer_sessions`]). A flush this large means
/// the writer is the bottleneck: from it on sessions are written once per
/// interval (an open session's row is then rewritten once per few seconds
/// instead of once per commit), and the commits in between, holding raw rows
/// only, come quicker and smaller. With several shares of the keys (see
/// [`Pipeline::prepare_share_flush`]) one share is written every
/// `interval / shares`, so that no one commit carries a whole interval's
/// sessions. That stretch lasts until the stage has
/// been quiet for [`SETTLE`], or until fewer heartbeats than one such flush
/// came in a whole interval; small commits alone do not end it, since they
/// are what deferring makes. Outside it every flush writes its sessions.
#[derive(Clone, Debug)]
pub struct SessionWrites {
    interval: std::time::Duration,
    defer_from: usize,
    shares: u32,
    loaded: bool,
    /// When the current interval began.
    written: Instant,
    /// When a share was last written.
    share_written: Instant,
    /// Heartbeats flushed since sessions were last written.
    since_written: usize,
    /// Since when the stage has had nothing pending.
    quiet_since: Option<Instant>,
}

/// How long a loaded stage must have had nothing pending for its sessions
/// to be written: under a heavy load it catches up for moments between
/// arrivals, which would otherwise end every stretch at once.
const SETTLE: std::time::Duration = std::time::Duration::from_millis(50);

/// What the next flush writes of the sessions (see [`SessionWrites`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Due {
    /// Raw rows only.
    Nothing,
    /// The next share of the keys.
    Share,
    /// Every change.
    All,
}

impl SessionWrites {
    /// Sessions at most `interval` behind under load (zero: always written),
    /// a load being a flush of `defer_from` heartbeats or more, written in
    /// `shares` parts (at least one).
    pub fn new(interval: std::time::Duration, defer_from: usize, shares: u32) -> Self {
        let now = Instant::now();
        Self {
            interval,
            defer_from,
            shares: shares.max(1),
            loaded: false,
            written: now,
            share_written: now,
            since_written: 0,
            quiet_since: None,
        }
    }

    /// What the flush about to be taken, of `pending` heartbeats, writes of
    /// the sessions. `quiet`: nothing pending or waiting at all; `closing`:
    /// the stage's last flush.
    pub fn due(&mut self, pending: usize, quiet: bool, closing: bool) -> Due {
        self.due_at(pending, quiet, closing, Instant::now())
    }

    fn due_at(&mut self, pending: usize, quiet: bool, closing: bool, now: Instant) -> Due {
        let large = pending >= self.defer_from;
        self.loaded |= large;
        self.since_written += pending;
        let settled = if quiet {
            now.duration_since(*self.quiet_since.get_or_insert(now)) >= SETTLE
        } else {
            self.quiet_since = None;
            false
        };
        let whole = self.interval.is_zero() || closing || !self.loaded || settled;
        if whole || now.duration_since(self.written) >= self.interval {
            self.loaded =
                !settled && (large || (self.loaded && self.since_written >= self.defer_from));
            self.written = now;
            self.since_written = 0;
        }
        if whole {
            self.share_written = now;
            Due::All
        } else if now.duration_since(self.share_written) >= self.interval / self.shares {
            self.share_written = now;
            Due::Share
        } else {
            Due::Nothing
        }
    }
}

/// Takes the next flush: with the session changes (all, or the next share's)
/// when `writes` says so, else raw rows and offsets only.
pub fn prepare_next(
    pipeline: &mut Pipeline,
    writes: &mut SessionWrites,
    quiet: bool,
    closing: bool,
) -> Option<PreparedFlush> {
    match writes.due(pipeline.pending(), quiet, closing) {
        Due::All => pipeline.prepare_flush(),
        Due::Share => pipeline.prepare_share_flush(),
        Due::Nothing => pipeline.prepare_raw_flush(),
    }
}

#[cfg(test)]
mod session_writes_tests {
    use super::{Due, SessionWrites, SETTLE};
    use std::time::{Duration, Instant};

    const INTERVAL: Duration = Duration::from_secs(2);
    const TICK: Duration = Duration::from_millis(10);

    /// Deferring from flushes of 1,000 heartbeats, sessions last written at
    /// `start`, in `shares` parts.
    fn shared_writes(start: Instant, shares: u32) -> SessionWrites {
        SessionWrites {
            written: start,
            share_written: start,
            ..SessionWrites::new(INTERVAL, 1_000, shares)
        }
    }

    fn writes(start: Instant) -> SessionWrites {
        shared_writes(start, 1)
    }

    /// Feeds flushes of `sizes` heartbeats, one per [`TICK`] from `from`;
    /// returns the indices of those that wrote sessions, and what they wrote.
    fn writes_of(writes: &mut SessionWrites, from: Instant, sizes: &[usize]) -> Vec<(usize, Due)> {
        (0..sizes.len())
            .map(|i| {
                (
                    i,
                    writes.due_at(sizes[i], false, false, from + TICK * i as u32),
                )
            })
            .filter(|&(_, due)| due != Due::Nothing)
            .collect()
    }

    /// The indices of [`writes_of`].
    fn written(writes: &mut SessionWrites, from: Instant, sizes: &[usize]) -> Vec<usize> {
        writes_of(writes, from, sizes)
            .into_iter()
            .map(|(i, _)| i)
            .collect()
    }

    /// Whether a flush writes sessions at all.
    fn writes_any(due: Due) -> bool {
        due != Due::Nothing
    }

    #[test]
    fn below_the_threshold_every_flush_writes_sessions() {
        let start = Instant::now();
        assert_eq!(written(&mut writes(start), start, &[999; 50]).len(), 50);
    }

    #[test]
    fn a_large_flush_defers_sessions_to_the_interval_and_the_small_flushes_after_it_keep_deferring()
    {
        let start = Instant::now();
        // One large flush, then raw-only flushes of 100 heartbeats for 5 s.
        let mut sizes = vec![1_000];
        sizes.extend([100; 500]);
        assert_eq!(
            written(&mut writes(start), start, &sizes),
            [200, 400],
            "once per 2 s, not after every small flush"
        );
    }

    #[test]
    fn the_stretch_ends_once_the_stage_stays_quiet() {
        let start = Instant::now();
        let mut writes = writes(start);
        assert!(!writes_any(writes.due_at(5_000, false, false, start)));
        assert!(
            !writes_any(writes.due_at(0, true, false, start + TICK)),
            "a moment's lull"
        );
        assert!(!writes_any(writes.due_at(
            100,
            false,
            false,
            start + TICK * 2
        )));
        assert!(!writes_any(writes.due_at(0, true, false, start + TICK * 3)));
        assert_eq!(
            writes.due_at(0, true, false, start + TICK * 3 + SETTLE),
            Due::All
        );
        assert_eq!(writes.due_at(100, false, false, start + TICK * 9), Due::All);
    }

    #[test]
    fn the_stretch_ends_after_an_interval_with_fewer_heartbeats_than_one_large_flush() {
        let start = Instant::now();
        let mut writes = writes(start);
        assert!(!writes_any(writes.due_at(5_000, false, false, start)));
        // Then 4 heartbeats per 10 ms: 800 per interval.
        let due = written(&mut writes, start + TICK, &[4; 450]);
        assert_eq!(
            due[..2],
            [199, 399],
            "the interval holding the large flush keeps deferring, the next one ends it"
        );
        assert!(
            due[2..].iter().copied().eq(400..450),
            "then every flush writes"
        );
    }

    #[test]
    fn a_zero_interval_or_the_last_flush_always_writes() {
        let mut never = SessionWrites::new(Duration::ZERO, 1_000, 4);
        assert_eq!(never.due(50_000, false, false), Due::All);
        assert_eq!(never.due(100, false, false), Due::All);
        let start = Instant::now();
        let mut closing = shared_writes(start, 4);
        assert!(!writes_any(closing.due_at(50_000, false, false, start)));
        assert_eq!(closing.due_at(100, false, true, start + TICK), Due::All);
    }

    #[test]
    fn a_flush_cap_under_the_threshold_lowers_it_to_the_cap() {
        assert_eq!(super::defer_from(100_000), super::DEFER_FROM);
        assert_eq!(super::defer_from(5_000), 5_000);
        let start = Instant::now();
        let mut capped = SessionWrites {
            written: start,
            share_written: start,
            ..SessionWrites::new(INTERVAL, super::defer_from(5_000), 1)
        };
        assert!(!writes_any(capped.due_at(5_000, false, false, start)));
    }

    #[test]
    fn with_shares_a_loaded_stage_writes_one_share_per_part_of_the_interval() {
        let start = Instant::now();
        // One large flush, then flushes of 100 heartbeats for 2.5 s.
        let mut sizes = vec![1_000];
        sizes.extend([100; 250]);
        assert_eq!(
            writes_of(&mut shared_writes(start, 4), start, &sizes),
            [50, 100, 150, 200, 250].map(|i| (i, Due::Share)),
            "a share every 500 ms"
        );
    }

    #[test]
    fn with_shares_the_end_of_the_stretch_writes_every_share() {
        let start = Instant::now();
        let mut writes = shared_writes(start, 4);
        assert!(!writes_any(writes.due_at(5_000, false, false, start)));
        assert_eq!(
            writes.due_at(100, false, false, start + INTERVAL / 4),
            Due::Share
        );
        assert!(!writes_any(writes.due_at(
            0,
            true,
            false,
            start + INTERVAL / 4 + TICK
        )));
        assert_eq!(
            writes.due_at(0, true, false, start + INTERVAL / 4 + TICK + SETTLE),
            Due::All
        );
    }
}
