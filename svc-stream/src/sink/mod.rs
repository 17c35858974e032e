//! Where the stream stage writes: the sessions store (sessions, offsets,
//! catalog) and the raw heartbeat mirror, each behind a small trait with the
//! real adapter and the embedded one.

pub mod scylla;
pub mod sql;

use crate::sessionizer::{Change, Event, PlaybackState, Scalars};
use async_trait::async_trait;
pub use hb_common::handoff::DeadLetter;
pub use hb_common::store::erase::PendingErasure;
use hb_proto::v1::Heartbeat;
use std::sync::Arc;

/// Why a sink write failed, split by what the caller should do.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Worth retrying: connection loss, timeout, overloaded node.
    #[error("sink temporarily unavailable: {0}")]
    Unavailable(String),
    /// Not worth retrying: schema mismatch, bad statement, bad data.
    #[error("sink rejected the write: {0}")]
    Fatal(String),
}

/// One accepted heartbeat as the raw mirror stores it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawHeartbeat {
    pub event_id: String,
    pub user_id: String,
    pub video_id: String,
    pub device_id: String,
    pub event_time_ms: i64,
    pub position_ms: i64,
    /// `PlaybackState` as its proto number.
    pub state: i32,
    pub ad_id: String,
    pub platform: String,
    pub app_version: String,
    pub country: String,
    pub bitrate_kbps: i64,
    /// Arrived past the allowed lateness: mirrored and counted, not sessionized.
    pub late: bool,
}

impl RawHeartbeat {
    /// The row of a heartbeat the pipeline accepted, with its one decode
    /// ([`Event::scalars`]: a heartbeat that fails it is a dead letter and
    /// has no row). Takes the heartbeat's
    /// strings instead of copying them: a row per heartbeat is the stage's
    /// busiest allocation.
    pub fn accepted(hb: Heartbeat, (time_ms, position_ms, state): Scalars, late: bool) -> Self {
        RawHeartbeat {
            event_id: hb.event_id,
            user_id: hb.user_id,
            video_id: hb.video_id,
            device_id: hb.device_id,
            event_time_ms: time_ms,
            position_ms,
            state: state.to_proto(),
            ad_id: hb.ad_id,
            platform: hb.platform,
            app_version: hb.app_version,
            country: hb.country,
            bitrate_kbps: i64::from(hb.bitrate_kbps),
            late,
        }
    }

    /// The event this row was written from, for a restore (`None`: a row no
    /// accepted heartbeat wrote, such as one with an unknown state). Takes
    /// the row, so a restore holds each heartbeat once.
    pub fn into_event(self) -> Option<Event> {
        Some(Event {
            state: PlaybackState::try_from(self.state).ok()?,
            event_id: self.event_id,
            user_id: self.user_id,
            video_id: self.video_id,
            device_id: self.device_id,
            time_ms: self.event_time_ms,
            position_ms: self.position_ms,
            ad_id: self.ad_id,
        })
    }
}

/// The raw mirror: every accepted heartbeat, written idempotently by `event_id`
/// with a TTL, for replay, audit and the traffic report.
#[async_trait]
pub trait RawMirror: Send + Sync {
    /// Writes `rows`; returns only once they are durable. Rewriting a row with
    /// the same `event_id` changes nothing (a non-late copy wins over a late one).
    async fn write(&self, rows: &[RawHeartbeat]) -> Result<(), SinkError>;

    /// One user's viewing of one video with `from_ms <= event_time_ms <= to_ms`,
    /// ordered by `(event_time_ms, event_id)`: restores open sessions on
    /// partition assignment.
    async fn replay(
        &self,
        user_id: &str,
        video_id: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<RawHeartbeat>, SinkError>;

    /// Removes every row of `user_id` under the given videos (an erased
    /// user: see [`Flush::erasures`]); returns how many were found. A mirror
    /// that is the sessions store itself removes them in the flush's
    /// transaction instead, and keeps this default.
    async fn erase_user(&self, _user_id: &str, _videos: &[String]) -> Result<u64, SinkError> {
        Ok(0)
    }

    /// Hands `visit` the heartbeats of every session in `open`, in
    /// non-decreasing event time, for restoring a partition without holding
    /// them all at once. Mirrors keyed by user and video replay the sessions
    /// one by one and sort what they read; a mirror clustered by time
    /// streams one time range for all of them.
    async fn replay_open(
        &self,
        open: &[OpenSession],
        visit: &mut (dyn FnMut(RawHeartbeat) + Send),
    ) -> Result<(), SinkError> {
        let mut rows = Vec::new();
        for session in open {
            rows.extend(
                self.replay(
                    &session.user_id,
                    &session.video_id,
                    session.start_ms,
                    session.end_ms,
                )
                .await?,
            );
        }
        rows.sort_by_key(|row| row.event_time_ms);
        rows.into_iter().for_each(visit);
        Ok(())
    }
}

/// A sessions store that also holds the raw rows, written in the same
/// transaction as the sessions: it alone can replay them by event time
/// exactly, which restores what flushes that deferred their session writes
/// left only in the raw rows (the embedded stage).
#[async_trait]
pub trait RawInStore: SessionStore + RawMirror {
    /// Hands `visit` every heartbeat with `event_time_ms >= from_ms`, in
    /// `(event_time_ms, event_id)` order, one at a time (a restore's replay
    /// can span the whole lateness window of a busy store).
    async fn replay_since(
        &self,
        from_ms: i64,
        visit: &mut (dyn FnMut(RawHeartbeat) + Send),
    ) -> Result<(), SinkError>;

    /// For each key of `partition` with a final session ending at or after
    /// `from_ms`: the key and the latest such end.
    async fn final_ends_since(
        &self,
        partition: i32,
        from_ms: i64,
    ) -> Result<Vec<(String, String, i64)>, SinkError>;
}

/// Where the raw rows are kept.
#[derive(Clone)]
pub enum RawPlacement {
    /// In the sessions store, written in each flush's transaction.
    InStore(Arc<dyn RawInStore>),
    /// A separate mirror (ScyllaDB), written before the store transaction so
    /// the offsets never run ahead of it.
    Mirror(Arc<dyn RawMirror>),
}

impl RawPlacement {
    /// Where open sessions are replayed from on restore.
    pub fn mirror(&self) -> &dyn RawMirror {
        match self {
            RawPlacement::InStore(store) => store.as_ref(),
            RawPlacement::Mirror(mirror) => mirror.as_ref(),
        }
    }

    /// For logs.
    pub fn name(&self) -> &'static str {
        match self {
            RawPlacement::InStore(_) => "store",
            RawPlacement::Mirror(_) => "mirror",
        }
    }
}

/// Where a partition resumes: its committed offset and watermark, and the
/// sessions it still had open.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PartitionSnapshot {
    /// Messages below it are committed (their raw rows, dead letters).
    pub next_offset: Option<i64>,
    /// Messages below it are in the stored sessions (at most `next_offset`;
    /// `None` with a `next_offset`: no sessions written yet).
    pub session_offset: Option<i64>,
    /// This process's take-over of the partition (see `OffsetRow::owner_epoch`).
    pub owner_epoch: i64,
    /// Newest event time of the stored sessions' messages.
    pub watermark_ms: Option<i64>,
    pub open: Vec<OpenSession>,
    /// The partition's late heartbeats not yet in their sessions.
    pub late: Vec<LateMark>,
}

/// Heartbeats of one `(user_id, video_id)` key that arrived past the allowed
/// lateness and are not yet in their sessions: the late lane's to-do item.
/// Marks of one key and partition merge into one (the union of their ranges).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LateMark {
    pub topic: String,
    pub partition: i32,
    pub user_id: String,
    pub video_id: String,
    /// Event-time range of the late heartbeats.
    pub from_ms: i64,
    pub to_ms: i64,
    pub heartbeats: u64,
    /// Processing time the oldest of them was marked.
    pub marked_ms: i64,
    /// Processing time the newest of them was marked, by this process
    /// (`i64::MIN` for marks read back from the store).
    pub latest_ms: i64,
}

impl LateMark {
    /// Folds `other` (same key and partition) into this one.
    pub fn absorb(&mut self, other: &LateMark) {
        self.from_ms = self.from_ms.min(other.from_ms);
        self.to_ms = self.to_ms.max(other.to_ms);
        self.heartbeats += other.heartbeats;
        self.marked_ms = self.marked_ms.min(other.marked_ms);
        self.latest_ms = self.latest_ms.max(other.latest_ms);
    }
}

/// A stored session's time span, as the late lane reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoredSpan {
    pub start_ms: i64,
    pub end_ms: i64,
}

/// An open session as the store knows it (its events come from the raw mirror).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenSession {
    pub user_id: String,
    pub video_id: String,
    pub start_ms: i64,
    pub end_ms: i64,
}

/// The next offset of one partition, committed with the changes it covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OffsetRow {
    pub topic: String,
    pub partition: i32,
    pub next_offset: i64,
    pub watermark_ms: Option<i64>,
    /// `Some`: this flush holds the partition's session changes up to this
    /// offset, and `watermark_ms` is theirs. `None`: raw rows only; the
    /// stored sessions and watermark stay as they are.
    pub session_offset: Option<i64>,
    /// The take-over this flush belongs to (from the partition's
    /// assignment): the offsets, and so the whole flush, are written only
    /// while no other process has taken the partition over since.
    pub owner_epoch: i64,
}

/// Everything one flush commits, in one transaction.
#[derive(Clone, Debug, Default)]
pub struct Flush {
    /// Raw rows, when the store also holds the raw mirror.
    pub raw: Vec<RawHeartbeat>,
    pub dead_letters: Vec<DeadLetter>,
    /// Session changes tagged with the partition that owns them.
    pub changes: Vec<(i32, Change)>,
    pub offsets: Vec<OffsetRow>,
    /// Late heartbeats of this flush to correct later, merged into the
    /// stored marks of their key.
    pub late_marks: Vec<LateMark>,
    /// Marks whose corrections `changes` holds: deleted with them.
    pub corrected: Vec<LateMark>,
    /// Users erased since the last flush: their rows in the store are
    /// removed first (again: the erasure removed them, but flushes committed
    /// before the stage noticed it may have written some back), and each
    /// erasure is marked as carried to the raw mirror.
    pub erasures: Vec<PendingErasure>,
    pub now_ms: i64,
    /// Sessions the stage holds open once this flush is taken, which sizes
    /// a store's caches (the SQLite writer's); `None` leaves them as they are.
    pub open_sessions: Option<usize>,
}

/// The sessions store: sessions, impressions, offsets (and catalog, read by svc-query).
#[async_trait]
pub trait SessionStore: Send + Sync {
    /// Commits `flush` atomically: all of it or none of it.
    async fn commit(&self, flush: std::sync::Arc<Flush>) -> Result<(), SinkError>;

    /// What a newly assigned partition resumes from.
    async fn load_partition(
        &self,
        topic: &str,
        partition: i32,
    ) -> Result<PartitionSnapshot, SinkError>;

    /// Deletes raw rows past their TTL (stores holding the raw mirror).
    async fn expire_raw(&self, now_ms: i64) -> Result<u64, SinkError>;

    /// Spans of the stored sessions of one key that overlap
    /// `(from_ms, to_ms)`: what a late heartbeat may join (the late lane).
    async fn key_sessions(
        &self,
        user_id: &str,
        video_id: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<StoredSpan>, SinkError>;
    /// The id after which a starting process applies erasures (see
    /// [`hb_common::store::erase::first_to_apply`]). Stores without
    /// erasures: 0.
    async fn erasures_start(&self) -> Result<i64, SinkError> {
        Ok(0)
    }

    /// The erasures recorded after `after_id`, by id.
    async fn erasures_since(&self, _after_id: i64) -> Result<Vec<PendingErasure>, SinkError> {
        Ok(Vec::new())
    }
}
