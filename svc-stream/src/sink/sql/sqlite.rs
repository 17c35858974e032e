//! The embedded store's write path: one `rusqlite` connection with cached
//! single-row prepared statements, run on the blocking pool.
//!
//! The embedded tier's ceiling is SQLite's single writer. Through sqlx every
//! bound value is copied into an argument buffer and handed to sqlx's worker
//! thread, and multi-row `INSERT … ON CONFLICT` statements need a statement
//! sub-journal; prepared single-row statements cost the writer less. Reads
//! stay on sqlx.

use super::writes::{
    late_mark_upsert, log_flush_phases, offsets_written, sqlite_sink_error as map_err, FlushWriter,
    IMPRESSION_CONFLICT, LATE_MARK_DELETE, OFFSET_UPSERT, UPSERT_FINAL_SET, UPSERT_OPEN_SET,
};
use crate::sessionizer::{Change, Session};
use crate::sink::{Flush, SinkError};
use async_trait::async_trait;
use hb_common::raw::{hours_of, BUMP_RAW_HOUR_SQL};
use hb_common::store::columns::{
    count, DEAD_LETTER_COLUMNS, RAW_HEARTBEATS, RAW_WRITE_COLUMNS, SESSIONS, SESSION_ADS,
    SESSION_AD_COLUMNS, SESSION_WRITE_COLUMNS,
};
use hb_common::store::rows::ads_to_column;
use hb_common::store::{erase, prepare_bound};
use rusqlite::{params, Connection, TransactionBehavior};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Page cache of the writer's connection, in KiB, for a stage holding
/// `open_sessions`: every flush rewrites the rows (and index entries) of the
/// sessions it changed, spread over the whole sessions table, so their pages
/// stay hot here instead of being read back from the file. That is about
/// 230 B of table and index pages per open session (`dbstat`); the cache
/// keeps 256 B per open session, at least 16 MiB (raw rows, offsets, the
/// rest of a flush) and at most 256 MiB, in 4 MiB steps so that a changing
/// count does not resize it at every flush. Sized to the state instead of
/// fixed, since a cache stays as full as the writes once made it.
fn writer_cache_kib(open_sessions: usize) -> u32 {
    const STEP_KIB: u64 = 4 * 1024;
    let kib = (open_sessions as u64)
        .saturating_mul(256)
        .div_euclid(1024)
        .clamp(4 * STEP_KIB, 64 * STEP_KIB);
    (kib.div_ceil(STEP_KIB) * STEP_KIB) as u32
}

/// Writes flushes to one SQLite file.
pub struct SqliteWriter {
    connection: Arc<Mutex<Cached>>,
    raw_ttl_ms: i64,
    checkpoints: Checkpointer,
}

/// The writer's connection and the page cache it has now, in KiB.
struct Cached {
    connection: Connection,
    cache_kib: u32,
}

impl Cached {
    /// Sizes the page cache for `open_sessions` (see [`writer_cache_kib`]).
    fn fit_cache(&mut self, open_sessions: usize) -> rusqlite::Result<()> {
        let cache_kib = writer_cache_kib(open_sessions);
        if cache_kib != self.cache_kib {
            self.connection
                .execute_batch(&format!("PRAGMA cache_size = -{cache_kib};"))?;
            self.cache_kib = cache_kib;
        }
        Ok(())
    }
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

impl SqliteWriter {
    /// Opens `path` (already migrated) for writing, with the durability the
    /// embedded ack promises: WAL with `synchronous=FULL`. An in-memory
    /// database is refused: it has no file to share with sqlx's reads.
    pub fn open(path: &Path, raw_ttl_ms: i64) -> Result<SqliteWriter, SinkError> {
        if path.as_os_str().is_empty() || path.to_string_lossy().contains(":memory:") {
            return Err(SinkError::Fatal(
                "an in-memory SQLite store has no file for the writer's connection".into(),
            ));
        }
        let connection = Connection::open(path).map_err(map_err)?;
        connection
            .busy_timeout(Duration::from_secs(10))
            .map_err(map_err)?;
        connection
            .execute_batch(
                "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
                 PRAGMA temp_store = MEMORY; PRAGMA wal_autocheckpoint = 0;",
            )
            .map_err(map_err)?;
        connection.set_prepared_statement_cache_capacity(32);
        let mut cached = Cached {
            connection,
            cache_kib: 0,
        };
        cached.fit_cache(0).map_err(map_err)?;
        Ok(SqliteWriter {
            connection: Arc::new(Mutex::new(cached)),
            raw_ttl_ms,
            checkpoints: Checkpointer::start(path)?,
        })
    }
}

#[async_trait]
impl FlushWriter for SqliteWriter {
    /// Returns once the transaction is on disk.
    async fn commit(&self, flush: Arc<Flush>) -> Result<(), SinkError> {
        let connection = Arc::clone(&self.connection);
        let raw_ttl_ms = self.raw_ttl_ms;
        let written = tokio::task::spawn_blocking(move || {
            // A panic mid-write rolled its transaction back; the connection is fine.
            let mut cached = connection.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(open_sessions) = flush.open_sessions {
                cached.fit_cache(open_sessions).map_err(map_err)?;
            }
            write(&mut cached.connection, &flush, raw_ttl_ms)
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
    (1..=count(columns))
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

/// A session's primary key in the sessions table, borrowed.
fn table_key(session: &Session) -> (&str, &str, i64) {
    (&session.user_id, &session.video_id, session.start_ms)
}

/// The inner error: the partition was taken over (the transaction is rolled back).
fn write(
    connection: &mut Connection,
    flush: &Flush,
    raw_ttl_ms: i64,
) -> rusqlite::Result<Result<(), SinkError>> {
    let started = std::time::Instant::now();
    let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
    // Erased users first: the rows below are what came after the erasure.
    for erasure in &flush.erasures {
        erase::erase_user_rusqlite(&tx, &erasure.user_id)?;
        prepare_bound(&tx, &erase::mirror_erased(erasure.id, flush.now_ms))?.raw_execute()?;
    }
    {
        let mut statement = tx.prepare_cached(&insert(
            RAW_HEARTBEATS,
            RAW_WRITE_COLUMNS,
            " ON CONFLICT DO NOTHING",
        ))?;
        // In event time, the table's leading key: while the stage catches
        // up, a flush holds rows from lanes that are seconds apart in event
        // time, and in the order they came each row lands on another page of
        // the table's recent end; in time order, rows that share a page are
        // written together. Sorted as (time, index) pairs, which sit side by
        // side in memory, rather than by following each row's pointer.
        let mut order: Vec<(i64, usize)> = flush
            .raw
            .iter()
            .enumerate()
            .map(|(index, r)| (r.event_time_ms, index))
            .collect();
        order.sort_unstable();
        for r in order.into_iter().map(|(_, index)| &flush.raw[index]) {
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
            for table in [SESSIONS, SESSION_ADS] {
                tx.prepare_cached(&format!(
                    "DELETE FROM {table} WHERE user_id = ?1 AND video_id = ?2 AND start_ms = ?3"
                ))?
                .execute(params![key.user_id, key.video_id, key.start_ms])?;
            }
        }
    }
    {
        let mut open =
            tx.prepare_cached(&insert(SESSIONS, SESSION_WRITE_COLUMNS, UPSERT_OPEN_SET))?;
        let mut last =
            tx.prepare_cached(&insert(SESSIONS, SESSION_WRITE_COLUMNS, UPSERT_FINAL_SET))?;
        let mut impression = tx.prepare_cached(&insert(
            SESSION_ADS,
            SESSION_AD_COLUMNS,
            IMPRESSION_CONFLICT,
        ))?;
        // In the table's key order: the changed sessions are spread over the
        // whole table in no order, and written in key order each B-tree page
        // is found once and changed in one go while its path from the root
        // is still in the CPU's cache. A stable sort: two changes of one key
        // stay in the order they were made.
        let mut written: Vec<(i32, &Session, bool)> = flush
            .changes
            .iter()
            .filter_map(|(partition, change)| match change {
                Change::Upsert(s) => Some((*partition, s, false)),
                Change::Final(s) => Some((*partition, s, true)),
                Change::Delete(_) => None,
            })
            .collect();
        written.sort_by(|(_, a, _), (_, b, _)| table_key(a).cmp(&table_key(b)));
        for (partition, session, is_final) in written {
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
                ads_to_column(&session.ads),
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
    if !flush.corrected.is_empty() {
        let mut delete = tx.prepare_cached(LATE_MARK_DELETE)?;
        for mark in &flush.corrected {
            delete.execute(params![
                mark.topic,
                mark.partition,
                mark.user_id,
                mark.video_id
            ])?;
        }
    }
    if !flush.late_marks.is_empty() {
        let mut upsert = tx.prepare_cached(&late_mark_upsert(true))?;
        for mark in &flush.late_marks {
            upsert.execute(params![
                mark.topic,
                mark.partition,
                mark.user_id,
                mark.video_id,
                mark.from_ms,
                mark.to_ms,
                mark.heartbeats as i64,
                mark.marked_ms
            ])?;
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
            if let Err(taken) = offsets_written(offset, rows as u64) {
                return Ok(Err(taken));
            }
        }
    }
    let before_commit = started.elapsed();
    tx.commit()?;
    log_flush_phases(
        flush,
        started,
        [raw_done, sessions_done, before_commit],
        "rusqlite",
    );
    Ok(Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_writer_cache_keeps_256_bytes_per_open_session_in_4_mib_steps() {
        assert_eq!(writer_cache_kib(0), 16 * 1024);
        assert_eq!(writer_cache_kib(65_536), 16 * 1024);
        assert_eq!(writer_cache_kib(65_540), 20 * 1024);
        assert_eq!(writer_cache_kib(100_000), 28 * 1024);
        assert_eq!(writer_cache_kib(1_000_000), 248 * 1024);
        assert_eq!(writer_cache_kib(1_048_576), 256 * 1024);
        assert_eq!(writer_cache_kib(usize::MAX), 256 * 1024);
    }

    #[test]
    fn the_connection_cache_follows_the_open_sessions_it_is_told() {
        let mut cached = Cached {
            connection: Connection::open_in_memory().unwrap(),
            cache_kib: 0,
        };
        let cache_size = |cached: &Cached| -> i64 {
            cached
                .connection
                .query_row("PRAGMA cache_size", [], |row| row.get(0))
                .unwrap()
        };
        cached.fit_cache(0).unwrap();
        assert_eq!(cache_size(&cached), -16 * 1024);
        cached.fit_cache(2_000_000).unwrap();
        assert_eq!(cache_size(&cached), -256 * 1024);
        cached.fit_cache(100_000).unwrap();
        assert_eq!(cache_size(&cached), -28 * 1024);
    }
}
