//! The sessions store as svc-query reads it (the shared layer is
//! [`hb_common::store`]): a user's progress and sessions, the traffic
//! roll-up's versions and rows, and reads through rusqlite for reports that
//! scan many rows. Point look-ups and catalog writes always come here
//! directly, never through Trino.

use crate::config::QueryConfig;
use crate::error::EngineError;
use crate::report::{ProgressRow, SessionRow, TrafficRow};
use hb_common::progress::Progress;
use hb_common::store::columns::{SESSIONS, SESSION_COLUMNS};
pub use hb_common::store::prepare_bound;
use hb_common::store::rows::{ads_from_column, StoredSession};
use hb_common::store::{classify_sqlite, Failure, Param, Statement, Store, SQLITE_MMAP_BYTES};
use sqlx::SqlitePool;

/// Rows per multi-row INSERT. Small on purpose: sqlx-sqlite looks up each
/// placeholder's name by index, and SQLite walks its list of names to
/// answer, so binding costs grow with the square of a statement's
/// placeholders.
pub const UPSERT_CHUNK: usize = 100;

/// Opens the store the configuration names and runs the shared migrations.
pub async fn open(config: &QueryConfig) -> anyhow::Result<Store> {
    Store::open_for_reports(&config.store, config.store_connections).await
}

/// Per video, the user's latest session (by start): resume position and
/// end. One primary-key range scan; the latest per video is picked here,
/// cheaper than a correlated MAX per row.
pub async fn progress(store: &Store, user_id: &str) -> Result<Vec<ProgressRow>, EngineError> {
    let statement = Statement::new(
        format!("SELECT video_id, last_position_ms, end_ms, start_ms FROM {SESSIONS} WHERE user_id = $1"),
        vec![Param::Text(user_id.to_string())],
    );
    let sessions: Vec<ProgressRow> = store.fetch_all(&statement).await?;
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
    store: &Store,
    user_id: &str,
    from_ms: i64,
    to_ms: i64,
) -> Result<Vec<SessionRow>, EngineError> {
    let statement = Statement::new(
        format!(
            "SELECT {SESSION_COLUMNS} FROM {SESSIONS} \
             WHERE user_id = $1 AND start_ms >= $2 AND start_ms < $3"
        ),
        vec![
            Param::Text(user_id.to_string()),
            Param::Int(from_ms),
            Param::Int(to_ms),
        ],
    );
    let stored: Vec<StoredSession> = store.fetch_all(&statement).await?;
    let mut rows = stored
        .into_iter()
        .map(session_row)
        .collect::<Result<Vec<_>, _>>()?;
    rows.sort_by(|a, b| (a.start_ms, &a.video_id).cmp(&(b.start_ms, &b.video_id)));
    Ok(rows)
}

fn session_row(stored: StoredSession) -> Result<SessionRow, EngineError> {
    let ads = ads_from_column(&stored.ads).map_err(|e| {
        EngineError::Internal(format!(
            "session ({}, {}, {}) has an unreadable ads list: {e}",
            stored.user_id, stored.video_id, stored.start_ms
        ))
    })?;
    Ok(SessionRow {
        user_id: stored.user_id,
        video_id: stored.video_id,
        start_ms: stored.start_ms,
        end_ms: stored.end_ms,
        heartbeats: stored.heartbeats,
        watch_ms: stored.watch_ms,
        coverage_ms: stored.coverage_ms,
        last_position_ms: stored.last_position_ms,
        ads,
        devices: stored.devices,
        is_final: stored.is_final,
    })
}

/// Inserts or replaces `rows` (each one value per column, keyed by the
/// first column) in `table`, all in one transaction; `progress` counts the
/// rows sent.
pub async fn upsert_all(
    store: &Store,
    table: &str,
    columns: &[&str],
    rows: &[Vec<Param>],
    progress: &Progress,
) -> Result<(), EngineError> {
    let mut tx = store.begin().await?;
    for chunk in rows.chunks(UPSERT_CHUNK) {
        let statement = Statement::new(upsert_sql(table, columns, chunk.len()), chunk.concat());
        tx.execute(&statement).await?;
        progress.inc(chunk.len() as u64);
    }
    tx.commit().await?;
    Ok(())
}

/// The event time of the oldest raw heartbeat held, if any (one end of
/// the time index).
pub async fn oldest_raw_ms(store: &Store) -> Result<Option<i64>, EngineError> {
    let oldest: Vec<(Option<i64>,)> = store
        .fetch_all(&Statement::new(
            "SELECT MIN(event_time_ms) FROM raw_heartbeats",
            Vec::new(),
        ))
        .await?;
    Ok(oldest.first().and_then(|(oldest,)| *oldest))
}

/// The whole hours of `[start, end)` whose stored traffic is missing or
/// was computed from other versions, with their current raw version,
/// ascending (see `engine::rollup`).
pub async fn stale_traffic_hours(
    store: &Store,
    start: i64,
    end: i64,
) -> Result<Vec<(i64, i64)>, EngineError> {
    let catalog: Vec<(i64,)> = store
        .fetch_all(&Statement::new(
            "SELECT version FROM catalog_version WHERE id = 1",
            Vec::new(),
        ))
        .await?;
    let Some(&(catalog,)) = catalog.first() else {
        return Err(EngineError::Internal(
            "the store has no catalog version row".into(),
        ));
    };
    Ok(store
        .fetch_all(&Statement::new(
            "SELECT v.hour_ms, v.version FROM raw_hour_versions v \
             LEFT JOIN traffic_hours t ON t.hour_ms = v.hour_ms \
             WHERE v.hour_ms >= $1 AND v.hour_ms < $2 AND (t.hour_ms IS NULL \
             OR t.raw_version <> v.version OR t.catalog_version <> $3) \
             ORDER BY v.hour_ms",
            vec![Param::Int(start), Param::Int(end), Param::Int(catalog)],
        ))
        .await?)
}

/// Replaces the stored traffic of `hours` (start, raw version) with
/// `rows`, labelled with the versions they were computed from.
pub async fn save_traffic_hours(
    store: &Store,
    hours: &[(i64, i64)],
    catalog_version: i64,
    rows: &[TrafficRow],
) -> Result<(), EngineError> {
    let (Some(first), Some(last)) = (hours.first(), hours.last()) else {
        return Ok(());
    };
    let mut tx = store.begin().await?;
    tx.execute(&Statement::new(
        "DELETE FROM traffic_rollup WHERE hour_ms >= $1 AND hour_ms <= $2",
        vec![Param::Int(first.0), Param::Int(last.0)],
    ))
    .await?;
    for chunk in rows.chunks(UPSERT_CHUNK) {
        let values: Vec<String> = (0..chunk.len())
            .map(|i| {
                let n = i * 4;
                format!("(${}, ${}, ${}, ${})", n + 1, n + 2, n + 3, n + 4)
            })
            .collect();
        let params = chunk
            .iter()
            .flat_map(|row| {
                [
                    Param::Int(row.hour_start_ms),
                    Param::Text(row.license_holder_id.clone()),
                    Param::Int(row.heartbeats),
                    Param::Int(row.devices),
                ]
            })
            .collect();
        tx.execute(&Statement::new(
            format!(
                "INSERT INTO traffic_rollup (hour_ms, license_holder_id, heartbeats, devices) \
                 VALUES {}",
                values.join(", ")
            ),
            params,
        ))
        .await?;
    }
    // One statement for the run's labels (at most a day's hours).
    let labels = hours
        .iter()
        .flat_map(|&(hour, version)| {
            [
                Param::Int(hour),
                Param::Int(version),
                Param::Int(catalog_version),
            ]
        })
        .collect();
    tx.execute(&Statement::new(
        upsert_sql(
            "traffic_hours",
            &["hour_ms", "raw_version", "catalog_version"],
            hours.len(),
        ),
        labels,
    ))
    .await?;
    tx.commit().await?;
    Ok(())
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

/// Runs `statement` on its own read-only rusqlite connection on a blocking
/// thread and hands the rows to `consume` as SQLite steps them.
///
/// For reports that read many rows into Rust (concurrency reads every
/// session overlapping the period): sqlx-sqlite copies each row and passes
/// it to the async side one at a time, which costs many times SQLite's own
/// scan. The deadline interrupts the statement inside SQLite,
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

/// Text column `column` of a row, borrowed from SQLite's buffer.
pub fn sqlite_text<'r>(row: &'r rusqlite::Row<'_>, column: usize) -> rusqlite::Result<&'r str> {
    row.get_ref(column)?.as_str().map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(column, rusqlite::types::Type::Text, Box::new(e))
    })
}

fn scan_error(error: rusqlite::Error) -> EngineError {
    match classify_sqlite(&error) {
        Failure::Unavailable => {
            EngineError::Unavailable(format!("sessions store unavailable: {error}"))
        }
        Failure::Conflict | Failure::Fatal => {
            EngineError::Internal(format!("sessions store error: {error}"))
        }
    }
}

/// `INSERT ... VALUES (...), (...) ON CONFLICT (<first column>) DO UPDATE SET ...`,
/// accepted alike by SQLite (3.24+), PostgreSQL and YugabyteDB.
pub fn upsert_sql(table: &str, columns: &[&str], rows: usize) -> String {
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
}
