//! The sessions store as svc-query sees it: the embedded SQLite file or
//! PostgreSQL/YugabyteDB. Point look-ups (progress, a user's sessions) and
//! catalog writes always come here directly, never through Trino.

use crate::catalog::{Ad, Video};
use crate::config::QueryConfig;
use crate::engine::sql::{Param, Statement, PROGRESS_SQL, SESSIONS_SQL};
use crate::error::EngineError;
use crate::report::{ProgressRow, SessionRow};
use anyhow::Context as _;
use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;
use sqlx::{FromRow, PgPool, SqlitePool};

/// Rows per multi-row catalog upsert statement (4 parameters each, well
/// under SQLite's and PostgreSQL's parameter limits).
/// Rows per multi-row INSERT. Small on purpose: sqlx-sqlite looks up each
/// placeholder's name by index, and SQLite walks its list of names to
/// answer, so binding costs grow with the square of a statement's
/// placeholders (500 rows of 4 were 9% of counting a month of traffic).
const UPSERT_CHUNK: usize = 100;

/// A connection pool to the sessions store.
#[derive(Clone, Debug)]
pub enum Store {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

impl Store {
    /// Opens the store the configuration names (YugabyteDB URL, else the
    /// SQLite file in the data directory) and runs the shared migrations.
    pub async fn open(config: &QueryConfig) -> anyhow::Result<Store> {
        match &config.yugabyte_url {
            Some(url) => {
                let pool = hb_common::schema::open_postgres(url, config.store_connections)
                    .await
                    .context("connecting to the YugabyteDB/PostgreSQL sessions store")?;
                Ok(Store::Postgres(pool))
            }
            None => {
                let pool = open_sqlite(&config.data_dir, config.store_connections)
                    .await
                    .with_context(|| {
                        format!(
                            "opening the embedded store in {}",
                            config.data_dir.display()
                        )
                    })?;
                Ok(Store::Sqlite(pool))
            }
        }
    }

    /// `sqlite` or `postgres`.
    pub fn kind(&self) -> &'static str {
        match self {
            Store::Sqlite(_) => "sqlite",
            Store::Postgres(_) => "postgres",
        }
    }

    /// Runs `statement` with its parameters bound and decodes every row; on
    /// PostgreSQL the statement stays prepared on the connection (point
    /// look-ups by user, whose plan does not depend on the values).
    pub async fn fetch_all<T>(&self, statement: &Statement) -> Result<Vec<T>, sqlx::Error>
    where
        T: for<'r> FromRow<'r, SqliteRow> + for<'r> FromRow<'r, PgRow> + Send + Unpin,
    {
        self.fetch(statement, true).await
    }

    /// Like [`Store::fetch_all`], planned for its own parameters on every
    /// run. A report's best plan depends on its period (a day reads a range
    /// of the start index, a month the per-title one); a prepared statement
    /// on PostgreSQL switches to one generic plan after five runs, and a
    /// month then sorted a million rows on disk with the day's plan (2.3 s
    /// instead of 0.6 s).
    pub async fn fetch_report<T>(&self, statement: &Statement) -> Result<Vec<T>, sqlx::Error>
    where
        T: for<'r> FromRow<'r, SqliteRow> + for<'r> FromRow<'r, PgRow> + Send + Unpin,
    {
        self.fetch(statement, false).await
    }

    async fn fetch<T>(&self, statement: &Statement, prepared: bool) -> Result<Vec<T>, sqlx::Error>
    where
        T: for<'r> FromRow<'r, SqliteRow> + for<'r> FromRow<'r, PgRow> + Send + Unpin,
    {
        match self {
            // SQLite plans without looking at bound values: keep it prepared.
            Store::Sqlite(pool) => {
                let mut query = sqlx::query_as::<_, T>(&statement.sql);
                for param in &statement.params {
                    query = match param {
                        Param::Int(value) => query.bind(*value),
                        Param::Text(value) => query.bind(value.clone()),
                    };
                }
                query.fetch_all(pool).await
            }
            Store::Postgres(pool) => {
                let mut query = sqlx::query_as::<_, T>(&statement.sql).persistent(prepared);
                for param in &statement.params {
                    query = match param {
                        Param::Int(value) => query.bind(*value),
                        Param::Text(value) => query.bind(value.clone()),
                    };
                }
                query.fetch_all(pool).await
            }
        }
    }

    /// A trivial round trip, for readiness.
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        match self {
            Store::Sqlite(pool) => sqlx::query("SELECT 1").execute(pool).await.map(|_| ()),
            Store::Postgres(pool) => sqlx::query("SELECT 1").execute(pool).await.map(|_| ()),
        }
    }

    /// Per video, the user's latest session (by start): resume position and end.
    pub async fn progress(&self, user_id: &str) -> Result<Vec<ProgressRow>, EngineError> {
        let statement = Statement {
            sql: PROGRESS_SQL.to_string(),
            params: vec![Param::Text(user_id.to_string())],
        };
        let sessions: Vec<ProgressRow> = self.fetch_all(&statement).await?;
        let mut latest: std::collections::BTreeMap<String, ProgressRow> =
            std::collections::BTreeMap::new();
        for session in sessions {
            match latest.get(&session.video_id) {
                Some(kept) if kept.start_ms >= session.start_ms => {}
                _ => {
                    latest.insert(session.video_id.clone(), session);
                }
            }
        }
        Ok(latest.into_values().collect())
    }

    /// The user's sessions started in `[from_ms, to_ms)`, by start then video.
    pub async fn sessions(
        &self,
        user_id: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<SessionRow>, EngineError> {
        let statement = Statement {
            sql: SESSIONS_SQL.to_string(),
            params: vec![
                Param::Text(user_id.to_string()),
                Param::Int(from_ms),
                Param::Int(to_ms),
            ],
        };
        let stored: Vec<StoredSession> = self.fetch_all(&statement).await?;
        let mut rows = stored
            .into_iter()
            .map(StoredSession::into_row)
            .collect::<Result<Vec<_>, _>>()?;
        rows.sort_by(|a, b| (a.start_ms, &a.video_id).cmp(&(b.start_ms, &b.video_id)));
        Ok(rows)
    }

    /// Inserts or replaces videos by `video_id`, all in one transaction.
    pub async fn upsert_videos(&self, videos: &[Video]) -> Result<usize, EngineError> {
        let videos = last_wins(videos, |v| &v.video_id);
        let sql = |rows: usize| {
            upsert_sql(
                "videos",
                &[
                    "video_id",
                    "title",
                    "license_holder_id",
                    "rate_micros_per_hour",
                ],
                rows,
            )
        };
        macro_rules! run {
            ($pool:expr) => {{
                let mut tx = $pool.begin().await?;
                for chunk in videos.chunks(UPSERT_CHUNK) {
                    let text = sql(chunk.len());
                    let mut query = sqlx::query(&text);
                    for video in chunk {
                        query = query
                            .bind(&video.video_id)
                            .bind(&video.title)
                            .bind(&video.license_holder_id)
                            .bind(video.rate_micros_per_hour);
                    }
                    query.execute(&mut *tx).await?;
                }
                tx.commit().await?;
            }};
        }
        match self {
            Store::Sqlite(pool) => run!(pool),
            Store::Postgres(pool) => run!(pool),
        }
        Ok(videos.len())
    }

    /// Inserts or replaces ads by `ad_id`, all in one transaction.
    pub async fn upsert_ads(&self, ads: &[Ad]) -> Result<usize, EngineError> {
        let ads = last_wins(ads, |a| &a.ad_id);
        let sql = |rows: usize| upsert_sql("ads", &["ad_id", "campaign_id", "advertiser_id"], rows);
        macro_rules! run {
            ($pool:expr) => {{
                let mut tx = $pool.begin().await?;
                for chunk in ads.chunks(UPSERT_CHUNK) {
                    let text = sql(chunk.len());
                    let mut query = sqlx::query(&text);
                    for ad in chunk {
                        query = query
                            .bind(&ad.ad_id)
                            .bind(&ad.campaign_id)
                            .bind(&ad.advertiser_id);
                    }
                    query.execute(&mut *tx).await?;
                }
                tx.commit().await?;
            }};
        }
        match self {
            Store::Sqlite(pool) => run!(pool),
            Store::Postgres(pool) => run!(pool),
        }
        Ok(ads.len())
    }

    /// The event time of the oldest raw heartbeat held, if any (one end of
    /// the time index).
    pub async fn oldest_raw_ms(&self) -> Result<Option<i64>, EngineError> {
        const OLDEST: &str = "SELECT MIN(event_time_ms) FROM raw_heartbeats";
        Ok(match self {
            Store::Sqlite(pool) => sqlx::query_scalar(OLDEST).fetch_one(pool).await?,
            Store::Postgres(pool) => sqlx::query_scalar(OLDEST).fetch_one(pool).await?,
        })
    }

    /// The whole hours of `[start, end)` whose stored traffic is missing or
    /// was computed from other versions, with their current raw version,
    /// ascending (see `engine::rollup`).
    pub async fn stale_traffic_hours(
        &self,
        start: i64,
        end: i64,
    ) -> Result<Vec<(i64, i64)>, EngineError> {
        const CATALOG: &str = "SELECT version FROM catalog_version WHERE id = 1";
        const STALE: &str = "SELECT v.hour_ms, v.version FROM raw_hour_versions v \
             LEFT JOIN traffic_hours t ON t.hour_ms = v.hour_ms \
             WHERE v.hour_ms >= $1 AND v.hour_ms < $2 AND (t.hour_ms IS NULL \
             OR t.raw_version <> v.version OR t.catalog_version <> $3) \
             ORDER BY v.hour_ms";
        macro_rules! run {
            ($pool:expr) => {{
                let catalog: i64 = sqlx::query_scalar(CATALOG).fetch_one($pool).await?;
                let stale: Vec<(i64, i64)> = sqlx::query_as(STALE)
                    .bind(start)
                    .bind(end)
                    .bind(catalog)
                    .fetch_all($pool)
                    .await?;
                stale
            }};
        }
        Ok(match self {
            Store::Sqlite(pool) => run!(pool),
            Store::Postgres(pool) => run!(pool),
        })
    }

    /// Replaces the stored traffic of `hours` (start, raw version) with
    /// `rows`, labelled with the versions they were computed from.
    pub async fn save_traffic_hours(
        &self,
        hours: &[(i64, i64)],
        catalog_version: i64,
        rows: &[crate::report::TrafficRow],
    ) -> Result<(), EngineError> {
        let (Some(first), Some(last)) = (hours.first(), hours.last()) else {
            return Ok(());
        };
        macro_rules! run {
            ($pool:expr) => {{
                let mut tx = $pool.begin().await?;
                sqlx::query("DELETE FROM traffic_rollup WHERE hour_ms >= $1 AND hour_ms <= $2")
                    .bind(first.0)
                    .bind(last.0)
                    .execute(&mut *tx)
                    .await?;
                for chunk in rows.chunks(UPSERT_CHUNK) {
                    let mut text = String::from(
                        "INSERT INTO traffic_rollup (hour_ms, license_holder_id, heartbeats, devices) VALUES ",
                    );
                    for i in 0..chunk.len() {
                        let n = i * 4;
                        if i > 0 {
                            text.push_str(", ");
                        }
                        text.push_str(&format!("(${}, ${}, ${}, ${})", n + 1, n + 2, n + 3, n + 4));
                    }
                    let mut query = sqlx::query(&text);
                    for row in chunk {
                        query = query
                            .bind(row.hour_start_ms)
                            .bind(&row.license_holder_id)
                            .bind(row.heartbeats)
                            .bind(row.devices);
                    }
                    query.execute(&mut *tx).await?;
                }
                // One statement for the run's labels (at most a day's hours).
                let text = upsert_sql(
                    "traffic_hours",
                    &["hour_ms", "raw_version", "catalog_version"],
                    hours.len(),
                );
                let mut query = sqlx::query(&text);
                for (hour, version) in hours {
                    query = query.bind(hour).bind(version).bind(catalog_version);
                }
                query.execute(&mut *tx).await?;
                tx.commit().await?;
            }};
        }
        match self {
            Store::Sqlite(pool) => run!(pool),
            Store::Postgres(pool) => run!(pool),
        }
        Ok(())
    }

    /// Closes the pool, waiting for connections in use to be returned.
    pub async fn close(&self) {
        match self {
            Store::Sqlite(pool) => pool.close().await,
            Store::Postgres(pool) => pool.close().await,
        }
    }
}

/// A read transaction on PostgreSQL whose statements all see one snapshot
/// (repeatable read; YugabyteDB's snapshot isolation), for a report read
/// in more than one statement.
pub async fn pg_snapshot(
    pool: &sqlx::PgPool,
) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}

/// Address space SQLite may memory-map per connection (virtual, not resident).
const SQLITE_MMAP_BYTES: u64 = 1 << 30;

/// Runs `statement` on its own read-only rusqlite connection on a blocking
/// thread and hands the rows to `consume` as SQLite steps them.
///
/// For reports that read many rows into Rust (concurrency reads every
/// session overlapping the period): sqlx-sqlite copies each row and passes
/// it to the async side one at a time, measured ~1.7 µs a row against
/// ~0.1 µs for SQLite's own scan, so a month over 1 M sessions spent 1.8 s
/// in the hand-over. The deadline interrupts the statement inside SQLite,
/// so a cancelled report stops working instead of finishing unseen.
pub async fn sqlite_scan<R, F>(
    pool: &SqlitePool,
    statement: &Statement,
    deadline: std::time::Duration,
    consume: F,
) -> Result<R, EngineError>
where
    R: Send + 'static,
    F: FnOnce(&mut rusqlite::Rows<'_>) -> rusqlite::Result<R> + Send + 'static,
{
    let statement = statement.clone();
    sqlite_read(pool, deadline, move |connection| {
        let mut prepared = prepare_bound(connection, &statement)?;
        let mut rows = prepared.raw_query();
        consume(&mut rows)
    })
    .await
}

/// Like [`sqlite_scan`], for work that runs more than one statement: `read`
/// gets the connection (a read transaction on it reads one snapshot).
pub async fn sqlite_read<R, F>(
    pool: &SqlitePool,
    deadline: std::time::Duration,
    read: F,
) -> Result<R, EngineError>
where
    R: Send + 'static,
    F: FnOnce(&rusqlite::Connection) -> rusqlite::Result<R> + Send + 'static,
{
    use rusqlite::OpenFlags;
    let path = pool.connect_options().get_filename().to_path_buf();
    let connection = rusqlite::Connection::open_with_flags(
        &path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(scan_error)?;
    connection
        .busy_timeout(std::time::Duration::from_secs(10))
        .and_then(|()| connection.pragma_update(None, "mmap_size", SQLITE_MMAP_BYTES))
        .and_then(|()| connection.pragma_update(None, "temp_store", "memory"))
        .map_err(scan_error)?;
    let interrupt = connection.get_interrupt_handle();
    let work = tokio::task::spawn_blocking(move || read(&connection));
    match tokio::time::timeout(deadline, work).await {
        Ok(Ok(result)) => result.map_err(scan_error),
        Ok(Err(join)) => Err(EngineError::Internal(format!("report task failed: {join}"))),
        Err(_) => {
            interrupt.interrupt();
            Err(EngineError::Deadline(deadline))
        }
    }
}

/// `statement` prepared (cached on the connection) with its values bound.
pub fn prepare_bound<'c>(
    connection: &'c rusqlite::Connection,
    statement: &Statement,
) -> rusqlite::Result<rusqlite::CachedStatement<'c>> {
    let mut prepared = connection.prepare_cached(&statement.sql)?;
    for (i, param) in statement.params.iter().enumerate() {
        // `$n` may appear twice; SQLite gives both the same index.
        let Some(index) = prepared.parameter_index(&format!("${}", i + 1))? else {
            continue;
        };
        match param {
            Param::Int(value) => prepared.raw_bind_parameter(index, value)?,
            Param::Text(value) => prepared.raw_bind_parameter(index, value)?,
        }
    }
    Ok(prepared)
}

/// Text column `column` of a row, borrowed from SQLite's buffer.
pub fn sqlite_text<'r>(row: &'r rusqlite::Row<'_>, column: usize) -> rusqlite::Result<&'r str> {
    row.get_ref(column)?.as_str().map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(column, rusqlite::types::Type::Text, Box::new(e))
    })
}

fn scan_error(error: rusqlite::Error) -> EngineError {
    EngineError::Internal(format!("sessions store error: {error}"))
}

/// The embedded store as the shared `hb_common::schema::open_sqlite` opens it
/// (same file, WAL, `synchronous=FULL`, busy timeout, shared migrations),
/// plus memory-mapped reads: report queries read many pages per request and
/// each pooled connection has its own page cache, so without mmap every
/// connection copies the same pages again (measured ~40% less CPU for a
/// day's royalties over 1 M sessions on a cold connection).
async fn open_sqlite(
    data_dir: &std::path::Path,
    max_connections: u32,
) -> anyhow::Result<SqlitePool> {
    use sqlx::sqlite::{
        SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous,
    };
    use std::str::FromStr as _;
    std::fs::create_dir_all(data_dir)?;
    let url = format!(
        "sqlite://{}",
        data_dir.join(hb_common::schema::SQLITE_FILE).display()
    );
    let options = SqliteConnectOptions::from_str(&url)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(std::time::Duration::from_secs(10))
        .pragma("cache_size", "-65536")
        .pragma("temp_store", "memory")
        .pragma("mmap_size", SQLITE_MMAP_BYTES.to_string());
    let pool = SqlitePoolOptions::new()
        .max_connections(max_connections.max(1))
        // A file cannot hang up; the ping is a trip to the connection's thread.
        .test_before_acquire(false)
        .connect_with(options)
        .await?;
    hb_common::schema::migrate_sqlite(&pool).await?;
    Ok(pool)
}

/// Keeps the last row per key, in first-seen order: one multi-row
/// `ON CONFLICT DO UPDATE` may not touch the same row twice (PostgreSQL).
fn last_wins<T, K: Fn(&T) -> &String>(rows: &[T], key: K) -> Vec<&T> {
    let mut position = std::collections::HashMap::new();
    let mut out: Vec<&T> = Vec::with_capacity(rows.len());
    for row in rows {
        match position.get(key(row)) {
            Some(&i) => out[i] = row,
            None => {
                position.insert(key(row).clone(), out.len());
                out.push(row);
            }
        }
    }
    out
}

/// `INSERT ... VALUES (...), (...) ON CONFLICT (<first column>) DO UPDATE SET ...`,
/// accepted alike by SQLite (3.24+), PostgreSQL and YugabyteDB.
fn upsert_sql(table: &str, columns: &[&str], rows: usize) -> String {
    let mut n = 0;
    let values: Vec<String> = (0..rows)
        .map(|_| {
            let placeholders: Vec<String> = columns
                .iter()
                .map(|_| {
                    n += 1;
                    format!("${n}")
                })
                .collect();
            format!("({})", placeholders.join(", "))
        })
        .collect();
    let updates: Vec<String> = columns[1..]
        .iter()
        .map(|c| format!("{c} = excluded.{c}"))
        .collect();
    format!(
        "INSERT INTO {table} ({}) VALUES {} ON CONFLICT ({}) DO UPDATE SET {}",
        columns.join(", "),
        values.join(", "),
        columns[0],
        updates.join(", ")
    )
}

/// A `sessions` row as stored (ads as JSON text).
#[derive(sqlx::FromRow)]
struct StoredSession {
    user_id: String,
    video_id: String,
    start_ms: i64,
    end_ms: i64,
    heartbeats: i64,
    watch_ms: i64,
    coverage_ms: i64,
    last_position_ms: i64,
    devices: i64,
    ads: String,
    is_final: bool,
}

impl StoredSession {
    fn into_row(self) -> Result<SessionRow, EngineError> {
        let ads: Vec<String> = serde_json::from_str(&self.ads).map_err(|e| {
            EngineError::Internal(format!(
                "session ({}, {}, {}) has an unreadable ads list: {e}",
                self.user_id, self.video_id, self.start_ms
            ))
        })?;
        Ok(SessionRow {
            user_id: self.user_id,
            video_id: self.video_id,
            start_ms: self.start_ms,
            end_ms: self.end_ms,
            heartbeats: self.heartbeats,
            watch_ms: self.watch_ms,
            coverage_ms: self.coverage_ms,
            last_position_ms: self.last_position_ms,
            ads,
            devices: self.devices,
            is_final: self.is_final,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upserts_are_portable_multi_row_statements() {
        assert_eq!(
            upsert_sql("ads", &["ad_id", "campaign_id", "advertiser_id"], 2),
            "INSERT INTO ads (ad_id, campaign_id, advertiser_id) VALUES ($1, $2, $3), ($4, $5, $6) \
             ON CONFLICT (ad_id) DO UPDATE SET campaign_id = excluded.campaign_id, \
             advertiser_id = excluded.advertiser_id"
        );
    }

    #[test]
    fn the_last_copy_of_a_key_wins() {
        let rows = vec![
            ("a".to_string(), 1),
            ("b".to_string(), 2),
            ("a".to_string(), 3),
        ];
        let kept = last_wins(&rows, |r| &r.0);
        assert_eq!(kept, vec![&rows[2], &rows[1]]);
    }
}
