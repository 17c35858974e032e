//! The source-agnostic core of the stream stage: heartbeats in (tagged with
//! partition and offset), sessionized per partition, and flushed as one unit
//! — raw mirror first, then one store transaction with the session changes
//! and the offsets they cover. Both the Kafka consumer and the embedded
//! hand-off drive it, so the exactly-once logic exists once.

use crate::metrics::StreamMetrics;
use crate::sessionizer::{Change, Event, EventRef, Outcome, SessionConfig, Sessionizer};
use crate::sink::{DeadLetter, Flush, OffsetRow, RawHeartbeat, RawMirror, SessionStore, SinkError};
use hb_common::time::{now_ms, timestamp_to_ms};
use hb_proto::v1::Heartbeat;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Instant;

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

/// One partition's in-memory state.
struct PartitionState {
    sessionizer: Sessionizer,
    /// Offset of the next message to process (None in the embedded tier
    /// before the first one).
    next_offset: Option<i64>,
    /// Messages below this offset were committed before the partition was
    /// assigned (raw rows, dead letters): a source that re-delivers them
    /// (see [`Pipeline::defer_sessions_to_source`]) has them sessionized
    /// again and nothing else.
    committed_until: i64,
    /// Offset up to which the flushes prepared so far write the sessions.
    session_offset: Option<i64>,
    /// This process's take-over of the partition, checked by every commit.
    owner_epoch: i64,
    /// Has something to commit (events or finalizations).
    dirty: bool,
    /// The watermark of the last write: an idle partition's watermark moves
    /// without a heartbeat, and must be written for a restart to keep it.
    written_watermark_ms: Option<i64>,
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
    topic: String,
    store: Arc<dyn SessionStore>,
    /// Where raw rows are replayed from on restore.
    mirror: Arc<dyn RawMirror>,
    /// True when the mirror is the store itself: raw rows then go into the
    /// store transaction instead of a separate write.
    mirror_in_store: bool,
    metrics: StreamMetrics,
    partitions: BTreeMap<i32, PartitionState>,
    pending_raw: Vec<RawHeartbeat>,
    pending_dead: Vec<DeadLetter>,
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
}

fn raw_row(hb: &Heartbeat, late: bool) -> RawHeartbeat {
    RawHeartbeat {
        event_id: hb.event_id.clone(),
        user_id: hb.user_id.clone(),
        video_id: hb.video_id.clone(),
        device_id: hb.device_id.clone(),
        event_time_ms: hb
            .event_time
            .as_ref()
            .map(timestamp_to_ms)
            .unwrap_or_default(),
        position_ms: i64::try_from(hb.position_ms).unwrap_or(i64::MAX),
        state: hb.state,
        ad_id: hb.ad_id.clone(),
        platform: hb.platform.clone(),
        app_version: hb.app_version.clone(),
        country: hb.country.clone(),
        bitrate_kbps: i64::from(hb.bitrate_kbps),
        late,
    }
}

fn event_of(raw: &RawHeartbeat) -> Option<Event> {
    Some(Event {
        event_id: raw.event_id.clone(),
        user_id: raw.user_id.clone(),
        video_id: raw.video_id.clone(),
        device_id: raw.device_id.clone(),
        time_ms: raw.event_time_ms,
        position_ms: raw.position_ms,
        state: crate::sessionizer::PlaybackState::try_from(raw.state).ok()?,
        ad_id: raw.ad_id.clone(),
    })
}

impl Pipeline {
    pub fn new(
        config: SessionConfig,
        topic: &str,
        store: Arc<dyn SessionStore>,
        mirror: Arc<dyn RawMirror>,
        mirror_in_store: bool,
        metrics: StreamMetrics,
    ) -> Pipeline {
        Pipeline {
            config,
            topic: topic.to_string(),
            store,
            mirror,
            mirror_in_store,
            metrics,
            partitions: BTreeMap::new(),
            pending_raw: Vec::new(),
            pending_dead: Vec::new(),
            defer_sessions: false,
            source_replays: false,
            write_attempts: Some(WRITE_ATTEMPTS),
            failing: Arc::new(AtomicU32::new(0)),
        }
    }

    /// Retries a flush's transient write failures until they pass instead of
    /// giving up after a few: for a source that waits (Kafka keeps the
    /// messages) rather than one whose callers wait for an answer.
    pub fn retry_forever(&mut self) {
        self.write_attempts = None;
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
        self.defer_sessions = self.mirror_in_store;
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
        let snapshot = self.store.load_partition(&self.topic, partition).await?;
        let rows = self.mirror.replay_open(&snapshot.open).await?;
        let events: Vec<Event> = rows
            .iter()
            .filter(|r| !r.late)
            .filter_map(event_of)
            .collect();
        let mut sessionizer = Sessionizer::new(self.config);
        sessionizer.restore(events, snapshot.watermark_ms, now_ms());
        let since_ms = snapshot
            .watermark_ms
            .map_or(i64::MIN, |wm| wm.saturating_sub(self.config.lateness_ms));
        let replayed = if self.defer_sessions && !self.source_replays {
            self.replay_deferred(since_ms, &mut sessionizer).await?
        } else {
            0
        };
        tracing::info!(
            partition,
            next_offset = ?snapshot.next_offset,
            open_sessions = snapshot.open.len(),
            replayed,
            "partition assigned and restored"
        );
        // With no sessions written yet, every message is read again.
        let resume = match (snapshot.session_offset, snapshot.next_offset) {
            (Some(sessions), _) => Some(sessions),
            (None, Some(_)) => Some(0),
            (None, None) => None,
        };
        self.partitions.insert(
            partition,
            PartitionState {
                sessionizer,
                next_offset: resume,
                committed_until: snapshot.next_offset.unwrap_or(0),
                session_offset: resume,
                owner_epoch: snapshot.owner_epoch,
                dirty: false,
                written_watermark_ms: snapshot.watermark_ms,
            },
        );
        // Known from the start, so the lag series exists before the first report.
        self.set_lag(partition, 0);
        self.update_gauges();
        Ok(resume)
    }

    /// Last step of a restore with deferred session writes: the store's
    /// sessions are those of the last flush that wrote them (whose watermark
    /// minus the lateness is `since_ms`); every heartbeat committed since is
    /// a raw row at or after `since_ms` (anything older was late). Those rows
    /// are pushed again, except late ones; rows the restore already holds come
    /// back as duplicates. Their changes go out with the next
    /// flush. Returns how many were merged.
    async fn replay_deferred(
        &self,
        since_ms: i64,
        sessionizer: &mut Sessionizer,
    ) -> Result<usize, SinkError> {
        let rows = self.mirror.replay_since(since_ms).await?;
        let mut events: Vec<Event> = rows
            .iter()
            .filter(|r| !r.late)
            .filter_map(event_of)
            .collect();
        events.sort_unstable_by(|a, b| {
            (a.time_ms, a.event_id.as_str()).cmp(&(b.time_ms, b.event_id.as_str()))
        });
        let now = now_ms();
        let merged = events
            .into_iter()
            .map(|event| sessionizer.push(event, now))
            .filter(|outcome| *outcome == Outcome::Merged)
            .count();
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
        self.partitions.get(&partition).and_then(|p| p.next_offset)
    }

    /// Per owned partition, the offset its sessions are written up to once
    /// the flushes prepared so far commit: where a new owner resumes.
    pub fn session_offsets(&self) -> Vec<(i32, i64)> {
        self.partitions
            .iter()
            .filter_map(|(p, s)| s.session_offset.map(|o| (*p, o)))
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
        let Some(state) = self.partitions.get_mut(&partition) else {
            return;
        };
        let replayed = offset.is_some_and(|offset| offset < state.committed_until);
        if let Some(offset) = offset {
            state.next_offset = Some(offset + 1);
        }
        state.dirty = true;
        let event = match EventRef::from_proto(hb) {
            Ok(event) => event,
            Err(reason) => {
                if replayed {
                    return; // dead-lettered when first read
                }
                // Ingest validated it; reaching here means a foreign producer.
                self.metrics.undecodable.inc();
                self.pending_dead.push(DeadLetter {
                    received_ms: now_ms,
                    event_id: hb.event_id.clone(),
                    device_id: hb.device_id.clone(),
                    reason: format!("not a valid heartbeat: {reason}"),
                    payload: prost::Message::encode_to_vec(hb),
                });
                return;
            }
        };
        let outcome = state.sessionizer.push_ref(event, now_ms);
        if replayed {
            return; // its raw row and counts were committed when first read
        }
        match outcome {
            Outcome::Merged => {
                self.metrics.heartbeats.inc();
                self.pending_raw.push(raw_row(hb, false));
            }
            Outcome::Duplicate => {
                self.metrics.duplicates.inc();
            }
            Outcome::Late => {
                self.metrics.heartbeats.inc();
                self.metrics.late.inc();
                self.pending_raw.push(raw_row(hb, true));
            }
        }
    }

    /// Marks an undecodable message at `offset` as consumed.
    pub fn skip(&mut self, partition: i32, offset: i64, dead_letter: DeadLetter) {
        let Some(state) = self.partitions.get_mut(&partition) else {
            return;
        };
        state.next_offset = Some(offset + 1);
        state.dirty = true;
        if offset < state.committed_until {
            return; // dead-lettered when first read
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
        for state in self.partitions.values_mut() {
            state.sessionizer.advance(now_ms);
        }
    }

    /// Commits everything pending: raw rows to the external mirror first (so
    /// offsets never run ahead of it), then one store transaction with raw rows
    /// (when the store holds them), dead letters, session changes and offsets.
    /// On error nothing is committed and the in-memory state is ahead of the
    /// store: the caller must [`Pipeline::reload`] before going on.
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
        self.take_flush(true)
    }

    /// Like [`Pipeline::prepare_flush`], but only the raw rows and dead
    /// letters: session changes (and the watermark stored with them) stay in
    /// memory for a later `prepare_flush`. Only after
    /// [`Pipeline::defer_sessions`] returned true; otherwise a full flush.
    pub fn prepare_raw_flush(&mut self) -> Option<PreparedFlush> {
        if !self.defer_sessions {
            return self.take_flush(true);
        }
        let replay_only = self
            .partitions
            .values()
            .all(|p| p.next_offset.is_none_or(|next| next <= p.committed_until));
        if self.pending_raw.is_empty() && self.pending_dead.is_empty() && replay_only {
            return None;
        }
        self.metrics.deferred_flushes.inc();
        self.take_flush(false)
    }

    fn take_flush(&mut self, with_sessions: bool) -> Option<PreparedFlush> {
        let started = Instant::now();
        let mut changes = Vec::new();
        let mut offsets = Vec::new();
        for (partition, state) in self.partitions.iter_mut() {
            // A replayed message leaves the committed offset where it was.
            let committed = state.next_offset.map(|o| o.max(state.committed_until));
            if !with_sessions {
                // Raw rows only: the committed offset moves, the sessions'
                // offset and watermark stay; `dirty` stays for the sessions.
                if let (true, Some(next_offset)) = (state.dirty, committed) {
                    offsets.push(OffsetRow {
                        topic: self.topic.clone(),
                        partition: *partition,
                        next_offset,
                        watermark_ms: None,
                        session_offset: None,
                        owner_epoch: state.owner_epoch,
                    });
                }
                continue;
            }
            let drained = state.sessionizer.drain_changes();
            let watermark_ms = state.sessionizer.watermark_ms();
            let watermark_moved = watermark_ms != state.written_watermark_ms;
            if drained.is_empty() && !state.dirty && !watermark_moved {
                continue;
            }
            state.written_watermark_ms = watermark_ms;
            changes.extend(drained.into_iter().map(|c| (*partition, c)));
            if let Some(next_offset) = committed {
                offsets.push(OffsetRow {
                    topic: self.topic.clone(),
                    partition: *partition,
                    next_offset,
                    watermark_ms,
                    session_offset: state.next_offset,
                    owner_epoch: state.owner_epoch,
                });
                state.session_offset = state.next_offset;
            } else if state.dirty || watermark_moved {
                // Embedded tier: no offsets, but the watermark must survive.
                offsets.push(OffsetRow {
                    topic: self.topic.clone(),
                    partition: *partition,
                    next_offset: 0,
                    watermark_ms,
                    session_offset: Some(0),
                    owner_epoch: state.owner_epoch,
                });
            }
            state.dirty = false;
        }
        let raw = std::mem::take(&mut self.pending_raw);
        let dead_letters = std::mem::take(&mut self.pending_dead);
        self.update_gauges();
        if changes.is_empty() && raw.is_empty() && dead_letters.is_empty() && offsets.is_empty() {
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
        let (store_raw, mirror_raw) = if self.mirror_in_store {
            (raw, Vec::new())
        } else {
            (Vec::new(), raw)
        };
        Some(PreparedFlush {
            started,
            stats,
            mirror: (!self.mirror_in_store).then(|| Arc::clone(&self.mirror)),
            mirror_raw,
            store: Arc::clone(&self.store),
            flush: Arc::new(Flush {
                raw: store_raw,
                dead_letters,
                changes,
                offsets,
                now_ms: now_ms(),
            }),
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
        let owned: Vec<i32> = self.partitions.keys().copied().collect();
        self.partitions.clear();
        for partition in owned {
            self.assign(partition).await?;
        }
        Ok(())
    }

    /// Removes expired raw rows kept in the store.
    pub async fn expire_raw(&self) -> Result<u64, SinkError> {
        if !self.mirror_in_store {
            return Ok(0);
        }
        self.store.expire_raw(now_ms()).await
    }

    fn update_gauges(&self) {
        let open: usize = self
            .partitions
            .values()
            .map(|p| p.sessionizer.open_sessions())
            .sum();
        self.metrics.open_sessions.set(open as i64);
    }
}

/// A flush taken from the pipeline and not yet written (see
/// [`Pipeline::prepare_flush`]).
pub struct PreparedFlush {
    started: Instant,
    stats: FlushStats,
    /// The external raw mirror and its rows, when the store does not hold them.
    mirror: Option<Arc<dyn RawMirror>>,
    mirror_raw: Vec<RawHeartbeat>,
    store: Arc<dyn SessionStore>,
    flush: Arc<Flush>,
    metrics: StreamMetrics,
    attempts: Option<u32>,
    failing: Arc<AtomicU32>,
}

impl PreparedFlush {
    /// Writes the raw mirror first (offsets never run ahead of it), then the
    /// store transaction; each retried while the failure is transient.
    pub async fn commit(self) -> Result<FlushStats, SinkError> {
        if let Some(mirror) = &self.mirror {
            retry(self.attempts, &self.failing, || {
                mirror.write(&self.mirror_raw)
            })
            .await?;
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
        Ok(self.stats)
    }
}

/// A commit this large means the writer is the bottleneck (see
/// [`SessionWrites`]).
pub const DEFER_FROM: usize = 20_000;

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
/// the writer is the bottleneck: from it on, until the stage is quiet again,
/// sessions are written once per interval (an open session's row is then
/// rewritten once per few seconds instead of once per commit). Below it
/// every flush writes its sessions.
#[derive(Clone, Debug)]
pub struct SessionWrites {
    interval: std::time::Duration,
    defer_from: usize,
    loaded: bool,
    written: Instant,
}

impl SessionWrites {
    /// Sessions at most `interval` behind under load (zero: always written),
    /// a load being a flush of `defer_from` heartbeats or more.
    pub fn new(interval: std::time::Duration, defer_from: usize) -> Self {
        Self {
            interval,
            defer_from,
            loaded: false,
            written: Instant::now(),
        }
    }

    /// Whether the flush about to be taken, of `pending` heartbeats, writes
    /// sessions. `quiet`: nothing pending or waiting at all; `closing`: the
    /// stage's last flush.
    pub fn due(&mut self, pending: usize, quiet: bool, closing: bool) -> bool {
        // A large flush starts a loaded stretch; it lasts until a session
        // write finds the stage quiet again. Within it, flushes (even small
        // ones: they follow a quick raw-only one) leave sessions to the interval.
        if pending >= self.defer_from {
            self.loaded = true;
        }
        let due = self.interval.is_zero()
            || closing
            || !self.loaded
            || quiet
            || self.written.elapsed() >= self.interval;
        if due {
            self.written = Instant::now();
            self.loaded = pending >= self.defer_from;
        }
        due
    }
}

/// Takes the next flush: with the session changes when `writes` says so,
/// else raw rows and offsets only.
pub fn prepare_next(
    pipeline: &mut Pipeline,
    writes: &mut SessionWrites,
    quiet: bool,
    closing: bool,
) -> Option<PreparedFlush> {
    if writes.due(pipeline.pending(), quiet, closing) {
        pipeline.prepare_flush()
    } else {
        pipeline.prepare_raw_flush()
    }
}
