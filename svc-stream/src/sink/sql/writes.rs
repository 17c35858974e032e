//! What the two writers of a flush share: the statements that read the
//! same on both engines, the guard on a partition's owner, the mapping of
//! store errors to [`SinkError`].

use crate::sink::{Flush, OffsetRow, SinkError};
use async_trait::async_trait;
use hb_common::store::{classify, classify_sqlite, Failure};
use std::sync::Arc;

/// An engine's write path of a flush.
#[async_trait]
pub trait FlushWriter: Send + Sync {
    /// Commits `flush` in one transaction: all of it or none of it.
    async fn commit(&self, flush: Arc<Flush>) -> Result<(), SinkError>;
}

/// A store error as the pipeline acts on it: retry, or give up.
pub fn sink_error(error: sqlx::Error) -> SinkError {
    let message = match &error {
        sqlx::Error::Database(db) => db.to_string(),
        other => other.to_string(),
    };
    match classify(&error) {
        Failure::Unavailable => SinkError::Unavailable(message),
        Failure::Conflict | Failure::Fatal => SinkError::Fatal(message),
    }
}

/// [`sink_error`] for the embedded writer's rusqlite connection.
pub fn sqlite_sink_error(error: rusqlite::Error) -> SinkError {
    match classify_sqlite(&error) {
        Failure::Unavailable => SinkError::Unavailable(error.to_string()),
        Failure::Conflict | Failure::Fatal => SinkError::Fatal(error.to_string()),
    }
}

/// Open sessions leave `is_final` and `stream_partition` alone so the
/// `sessions_open` index is not rewritten on every update.
pub const UPSERT_OPEN_SET: &str = " ON CONFLICT (user_id, video_id, start_ms) DO UPDATE SET \
     end_ms = excluded.end_ms, heartbeats = excluded.heartbeats, \
     watch_ms = excluded.watch_ms, coverage_ms = excluded.coverage_ms, \
     last_position_ms = excluded.last_position_ms, devices = excluded.devices, \
     ads = excluded.ads, updated_ms = excluded.updated_ms";

/// Final sessions set every column.
pub const UPSERT_FINAL_SET: &str = " ON CONFLICT (user_id, video_id, start_ms) DO UPDATE SET \
     end_ms = excluded.end_ms, heartbeats = excluded.heartbeats, \
     watch_ms = excluded.watch_ms, coverage_ms = excluded.coverage_ms, \
     last_position_ms = excluded.last_position_ms, devices = excluded.devices, \
     ads = excluded.ads, is_final = excluded.is_final, \
     stream_partition = excluded.stream_partition, updated_ms = excluded.updated_ms";

/// An impression is stored once.
pub const IMPRESSION_CONFLICT: &str =
    " ON CONFLICT (user_id, video_id, start_ms, ad_id) DO NOTHING";

/// A late mark merges into the key's stored one (the union of the ranges).
/// `LEAST`/`GREATEST` are PostgreSQL's (and YugabyteDB's) spelling; SQLite
/// takes the two-argument `MIN`/`MAX` instead (see [`late_mark_upsert`]).
const LATE_MARK_UPSERT: &str =
    "INSERT INTO late_corrections (topic, stream_partition, user_id, video_id, from_ms, to_ms, \
     heartbeats, marked_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
     ON CONFLICT (topic, stream_partition, user_id, video_id) DO UPDATE SET \
     from_ms = LEAST(late_corrections.from_ms, excluded.from_ms), \
     to_ms = GREATEST(late_corrections.to_ms, excluded.to_ms), \
     heartbeats = late_corrections.heartbeats + excluded.heartbeats, \
     marked_ms = LEAST(late_corrections.marked_ms, excluded.marked_ms)";

/// [`LATE_MARK_UPSERT`] in the engine's spelling.
pub fn late_mark_upsert(sqlite: bool) -> String {
    if sqlite {
        LATE_MARK_UPSERT
            .replace("LEAST(", "MIN(")
            .replace("GREATEST(", "MAX(")
    } else {
        LATE_MARK_UPSERT.to_string()
    }
}

/// A corrected key's mark goes with the transaction that replaced its sessions.
pub const LATE_MARK_DELETE: &str = "DELETE FROM late_corrections WHERE topic = $1 \
     AND stream_partition = $2 AND user_id = $3 AND video_id = $4";

/// A flush without its partition's sessions (`session_offset` NULL) moves
/// only `next_offset`; the watermark stays that of the stored sessions.
/// It changes nothing (no row affected) once another process took the
/// partition over (`owner_epoch`): see [`offsets_written`].
pub const OFFSET_UPSERT: &str =
    "INSERT INTO stream_offsets (topic, partition, next_offset, watermark_ms, session_offset, \
     owner_epoch) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (topic, partition) DO UPDATE SET \
     next_offset = excluded.next_offset, \
     watermark_ms = CASE WHEN excluded.session_offset IS NULL \
     THEN stream_offsets.watermark_ms ELSE excluded.watermark_ms END, \
     session_offset = COALESCE(excluded.session_offset, stream_offsets.session_offset) \
     WHERE stream_offsets.owner_epoch = excluded.owner_epoch";

/// The outcome of one offsets upsert: an error when the row no longer names
/// this process's take-over, so the whole flush is rolled back.
pub fn offsets_written(offset: &OffsetRow, rows: u64) -> Result<(), SinkError> {
    if rows == 1 {
        return Ok(());
    }
    Err(SinkError::Fatal(format!(
        "partition {} of {} was taken over by another stream process (this one took it as owner {})",
        offset.partition, offset.topic, offset.owner_epoch
    )))
}

/// Debug log of one flush's phases (raw rows, sessions, the rest, commit);
/// the array holds the elapsed times at the end of the first three.
pub fn log_flush_phases(
    flush: &Flush,
    started: std::time::Instant,
    [raw_done, sessions_done, before_commit]: [std::time::Duration; 3],
    path: &'static str,
) {
    tracing::debug!(
        path,
        raw = flush.raw.len(),
        changes = flush.changes.len(),
        raw_ms = raw_done.as_millis() as u64,
        sessions_ms = (sessions_done - raw_done).as_millis() as u64,
        rest_ms = (before_commit - sessions_done).as_millis() as u64,
        commit_ms = (started.elapsed() - before_commit).as_millis() as u64,
        "store flush"
    );
}
