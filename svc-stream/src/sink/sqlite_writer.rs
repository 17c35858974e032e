//! The embedded store's write path: one `rusqlite` connection with cached
//! single-row prepared statements, run on the blocking pool.
//!
//! The embedded tier's ceiling is SQLite's single writer. Through sqlx every
//! bound value is copied into an argument buffer and handed to sqlx's worker
//! thread, and multi-row `INSERT … ON CONFLICT` statements need a statement
//! sub-journal; with prepared single-row statements the same flush costs
//! ~1.45x less writer time (docs/benchmarks.md). Reads stay on sqlx. The SQL is
//! the store's own (`sql.rs`), one row at a time.

use super::sql::{
    DEAD_LETTER_COLUMNS, IMPRESSION_CONFLICT, OFFSET_UPSERT, RAW_COLUMNS, SESSION_COLUMNS,
    UPSERT_FINAL_SET, UPSERT_OPEN_SET,
};
use super::{Flush, SinkError};
use crate::sessionizer::{Change, Session};
use hb_common::raw::{hours_of, BUMP_RAW_HOUR_SQL};
use rusqlite::{params, Connection, ErrorCode, TransactionBehavior};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Writes flushes to one SQLite file.
pub struct SqliteWriter {
    connection: Arc<Mutex<Connection>>,
    raw_ttl_ms: i64,
    checkpoints: Checkpointer,
}

/// Copies committed WAL frames into the database file on its own thread and
/// connection. Left to SQLite, the commit that crosses `wal_autocheckpoint`
/// runs the checkpoint itself (writes and syncs every page changed since),
/// and the next flush waits for it; here it overlaps the next flush instead.
struct Checkpointer {
    wake: std::sync::mpsc::SyncSender<()>,
}

impl Checkpointer {
    fn start(path: &Path) -> Result<Checkpointer, SinkError> {
        let connection = Connection::open(path).map_err(map_err)?;
        let (wake, woken) = std::sync::mpsc::sync_channel::<()>(1);
        std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || {
                // Ends when the writer (the only sender) is dropped.
                while woken.recv().is_ok() {
                    // PASSIVE never waits for readers or the writer: it copies
                    // what it can, and the next wake-up copies the rest.
                    if let Err(err) = connection.execute_batch("PRAGMA wal_checkpoint(PASSIVE);") {
                        tracing::warn!(error = %err, "WAL checkpoint failed; retried after the next commit");
                    }
                }
            })
            .map_err(|err| SinkError::Fatal(format!("starting the checkpoint thread: {err}")))?;
        Ok(Checkpointer { wake })
    }

    /// Asks for a checkpoint; one already pending covers this commit too.
    fn request(&self) {
        let _ = self.wake.try_send(());
    }
}

fn map_err(err: rusqlite::Error) -> SinkError {
    match err.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked | ErrorCode::SystemIoFailure) => {
            SinkError::Unavailable(err.to_string())
        }
        _ => SinkError::Fatal(err.to_string()),
    }
}

impl SqliteWriter {
    /// Opens `path` (already migrated) for writing, with the durability the
    /// embedded ack promises: WAL with `synchronous=FULL`.
    pub fn open(path: &Path, raw_ttl_ms: i64) -> Result<SqliteWriter, SinkError> {
        let connection = Connection::open(path).map_err(map_err)?;
        connection
            .busy_timeout(Duration::from_secs(10))
            .map_err(map_err)?;
        connection
            .execute_batch(
                "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
                 PRAGMA cache_size = -262144; PRAGMA temp_store = MEMORY; \
                 PRAGMA wal_autocheckpoint = 0;",
            )
            .map_err(map_err)?;
        connection.set_prepared_statement_cache_capacity(32);
        Ok(SqliteWriter {
            connection: Arc::new(Mutex::new(connection)),
            raw_ttl_ms,
            checkpoints: Checkpointer::start(path)?,
        })
    }

    /// Commits `flush` in one transaction; returns once it is on disk.
    pub async fn commit(&self, flush: Arc<Flush>) -> Result<(), SinkError> {
        let connection = Arc::clone(&self.connection);
        let raw_ttl_ms = self.raw_ttl_ms;
        let written = tokio::task::spawn_blocking(move || {
            // A panic mid-write rolled its transaction back; the connection is fine.
            let mut connection = connection.lock().unwrap_or_else(|p| p.into_inner());
            write(&mut connection, &flush, raw_ttl_ms)
                .map_err(map_err)
                .and_then(|written| written)
        })
        .await
        .map_err(|err| SinkError::Unavailable(format!("sqlite writer task: {err}")))?;
        self.checkpoints.request();
        written
    }
}

fn placeholders(columns: &str) -> String {
    let count = columns.split(',').count();
    (1..=count)
        .map(|i| format!("?{i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn insert(table: &str, columns: &str, tail: &str) -> String {
    format!(
        "INSERT INTO {table} ({columns}) VALUES ({}){tail}",
        placeholders(columns)
    )
}

/// The inner error: the partition was taken over (the transaction is rolled back).
fn write(
    connection: &mut Connection,
    flush: &Flush,
    raw_ttl_ms: i64,
) -> rusqlite::Result<Result<(), SinkError>> {
    let started = std::time::Instant::now();
    let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
    {
        let mut statement = tx.prepare_cached(&insert(
            "raw_heartbeats",
            RAW_COLUMNS,
            " ON CONFLICT DO NOTHING",
        ))?;
        for r in &flush.raw {
            statement.execute(params![
                r.event_id,
                r.user_id,
                r.video_id,
                r.device_id,
                r.event_time_ms,
                r.position_ms,
                r.state,
                r.ad_id,
                r.platform,
                r.app_version,
                r.country,
                r.bitrate_kbps,
                r.late,
                r.event_time_ms.saturating_add(raw_ttl_ms),
            ])?;
        }
    }
    {
        // Traffic hours svc-query has summed are stale once this commits.
        let mut bump = tx.prepare_cached(BUMP_RAW_HOUR_SQL)?;
        for hour in hours_of(flush.raw.iter().map(|r| r.event_time_ms)) {
            bump.execute(params![hour])?;
        }
    }
    let raw_done = started.elapsed();
    if !flush.dead_letters.is_empty() {
        let mut statement = tx.prepare_cached(&insert("dead_letters", DEAD_LETTER_COLUMNS, ""))?;
        for d in &flush.dead_letters {
            statement.execute(params![
                d.received_ms,
                d.event_id,
                d.device_id,
                d.reason,
                d.payload
            ])?;
        }
    }
    // Superseded sessions go first, with their impressions.
    for (_, change) in &flush.changes {
        if let Change::Delete(key) = change {
            for table in ["sessions", "session_ads"] {
                tx.prepare_cached(&format!(
                    "DELETE FROM {table} WHERE user_id = ?1 AND video_id = ?2 AND start_ms = ?3"
                ))?
                .execute(params![key.user_id, key.video_id, key.start_ms])?;
            }
        }
    }
    {
        let mut open = tx.prepare_cached(&insert("sessions", SESSION_COLUMNS, UPSERT_OPEN_SET))?;
        let mut last = tx.prepare_cached(&insert("sessions", SESSION_COLUMNS, UPSERT_FINAL_SET))?;
        let mut impression = tx.prepare_cached(&insert(
            "session_ads",
            "user_id, video_id, start_ms, ad_id",
            IMPRESSION_CONFLICT,
        ))?;
        for (partition, change) in &flush.changes {
            let (session, is_final): (&Session, bool) = match change {
                Change::Upsert(s) => (s, false),
                Change::Final(s) => (s, true),
                Change::Delete(_) => continue,
            };
            let statement = if is_final { &mut last } else { &mut open };
            statement.execute(params![
                session.user_id,
                session.video_id,
                session.start_ms,
                session.end_ms,
                session.heartbeats as i64,
                session.watch_ms,
                session.coverage_ms,
                session.last_position_ms,
                session.devices as i64,
                super::sql::ads_json(session),
                is_final,
                partition,
                flush.now_ms,
            ])?;
            for ad in &session.ads {
                impression.execute(params![
                    session.user_id,
                    session.video_id,
                    session.start_ms,
                    ad
                ])?;
            }
        }
    }
    let sessions_done = started.elapsed();
    {
        let mut statement = tx.prepare_cached(OFFSET_UPSERT)?;
        for offset in &flush.offsets {
            let rows = statement.execute(params![
                offset.topic,
                offset.partition,
                offset.next_offset,
                offset.watermark_ms,
                offset.session_offset,
                offset.owner_epoch
            ])?;
            if let Err(taken) = super::sql::offsets_written(offset, rows as u64) {
                return Ok(Err(taken));
            }
        }
    }
    let before_commit = started.elapsed();
    tx.commit()?;
    super::sql::log_flush_phases(
        flush,
        started,
        [raw_done, sessions_done, before_commit],
        "rusqlite",
    );
    Ok(Ok(()))
}
