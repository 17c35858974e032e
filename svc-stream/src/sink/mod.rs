//! Where the stream stage writes: the sessions store (sessions, offsets,
//! catalog) and the raw heartbeat mirror, each behind a small trait with the
//! real adapter and the embedded one.

pub mod scylla;
pub mod sql;

use crate::sessionizer::Change;
use async_trait::async_trait;
pub use hb_common::handoff::DeadLetter;

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

    /// The heartbeats of every session in `open`, for restoring a partition.
    /// Mirrors keyed by user and video replay them one by one; a mirror
    /// clustered by time reads one time range for all of them.
    async fn replay_open(&self, open: &[OpenSession]) -> Result<Vec<RawHeartbeat>, SinkError> {
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
        Ok(rows)
    }

    /// Every heartbeat with `event_time_ms >= from_ms`, any order: restores
    /// what flushes that deferred their session writes left only in the raw
    /// rows (the embedded stage). Only a mirror kept in the sessions store,
    /// in the same transactions as the sessions, can answer this exactly.
    async fn replay_since(&self, from_ms: i64) -> Result<Vec<RawHeartbeat>, SinkError> {
        let _ = from_ms;
        Err(SinkError::Fatal(
            "this raw mirror cannot replay by event time".into(),
        ))
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
    pub now_ms: i64,
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

    /// The `[start, end]` of the final sessions of `partition` that end at
    /// or after `since_ms`: a restore must not count their heartbeats again.
    async fn final_spans(
        &self,
        partition: i32,
        since_ms: i64,
    ) -> Result<Vec<OpenSession>, SinkError>;

    /// Deletes raw rows past their TTL (stores holding the raw mirror).
    async fn expire_raw(&self, now_ms: i64) -> Result<u64, SinkError>;
}
