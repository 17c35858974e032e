//! The PostgreSQL/YugabyteDB write path of a flush. Raw rows go in by
//! binary `COPY` (no statement to parse, no per-row executor pass); the
//! other tables take one statement per kind of change, whatever the flush's
//! size, with the rows passed as one array per column and expanded by
//! `UNNEST` (a multi-row `VALUES` list binds 13-14 parameters a row, each
//! parsed and planned once per chunk). `COPY FROM STDIN` in binary and
//! `UNNEST` over arrays are both accepted by YugabyteDB's YSQL.

use super::writes::{
    late_mark_upsert, log_flush_phases, offsets_written, sink_error, FlushWriter,
    IMPRESSION_CONFLICT, LATE_MARK_DELETE, OFFSET_UPSERT, UPSERT_FINAL_SET, UPSERT_OPEN_SET,
};
use crate::sessionizer::{Change, Session};
use crate::sink::{DeadLetter, Flush, RawHeartbeat, SinkError};
use async_trait::async_trait;
use hb_common::raw::{hours_of, BUMP_RAW_HOUR_SQL};
use hb_common::store::columns::{
    count, DEAD_LETTER_COLUMNS, RAW_HEARTBEATS, RAW_WRITE_COLUMNS, SESSIONS, SESSION_ADS,
    SESSION_AD_COLUMNS, SESSION_WRITE_COLUMNS,
};
use hb_common::store::rows::ads_to_column;
use hb_common::store::{erase, pg_copy, Transaction};
use sqlx::{PgPool, Postgres, QueryBuilder};
use std::sync::{Arc, LazyLock};

/// `INSERT INTO table (columns) SELECT * FROM UNNEST($1::type[], ...)`, one
/// array per column.
fn unnest_insert(table: &str, columns: &str, types: &[&str]) -> String {
    debug_assert_eq!(count(columns), types.len());
    let arrays: Vec<String> = types
        .iter()
        .enumerate()
        .map(|(i, ty)| format!("${}::{ty}[]", i + 1))
        .collect();
    format!(
        "INSERT INTO {table} ({columns}) SELECT * FROM UNNEST({})",
        arrays.join(", ")
    )
}

static RAW_INSERT: LazyLock<String> = LazyLock::new(|| {
    let insert = unnest_insert(
        RAW_HEARTBEATS,
        RAW_WRITE_COLUMNS,
        &[
            "text", "text", "text", "text", "int8", "int8", "int4", "text", "text", "text", "text",
            "int8", "bool", "int8",
        ],
    );
    format!("{insert} ON CONFLICT DO NOTHING")
});

static SESSION_INSERT: LazyLock<String> = LazyLock::new(|| {
    unnest_insert(
        SESSIONS,
        SESSION_WRITE_COLUMNS,
        &[
            "text", "text", "int8", "int8", "int8", "int8", "int8", "int8", "int8", "text", "bool",
            "int4", "int8",
        ],
    )
});

static IMPRESSION_INSERT: LazyLock<String> = LazyLock::new(|| {
    let insert = unnest_insert(
        SESSION_ADS,
        SESSION_AD_COLUMNS,
        &["text", "text", "int8", "text"],
    );
    format!("{insert}{IMPRESSION_CONFLICT}")
});

static RAW_COPY: LazyLock<String> = LazyLock::new(|| {
    format!("COPY {RAW_HEARTBEATS} ({RAW_WRITE_COLUMNS}) FROM STDIN (FORMAT binary)")
});

/// Deletes the rows of a table keyed by session.
fn session_delete(table: &str) -> String {
    format!(
        "DELETE FROM {table} AS s \
         USING UNNEST($1::text[], $2::text[], $3::int8[]) AS d(user_id, video_id, start_ms) \
         WHERE s.user_id = d.user_id AND s.video_id = d.video_id AND s.start_ms = d.start_ms"
    )
}

/// The write path of a PostgreSQL/YugabyteDB store.
pub struct PgWriter {
    pool: PgPool,
    raw_ttl_ms: i64,
}

impl PgWriter {
    pub fn new(pool: PgPool, raw_ttl_ms: i64) -> Self {
        Self { pool, raw_ttl_ms }
    }
}

#[async_trait]
impl FlushWriter for PgWriter {
    /// Raw rows go in by binary `COPY`, which has no `ON CONFLICT`: should
    /// one already be stored, the transaction fails and is redone with the
    /// conflict-tolerant insert.
    async fn commit(&self, flush: Arc<Flush>) -> Result<(), SinkError> {
        match commit(&self.pool, &flush, self.raw_ttl_ms, true).await {
            Err(RawConflict::Stored) => {
                tracing::debug!("a raw row was stored already; flush redone without COPY");
                commit(&self.pool, &flush, self.raw_ttl_ms, false)
                    .await
                    .map_err(RawConflict::into_sink)
            }
            other => other.map_err(RawConflict::into_sink),
        }
    }
}

/// A flush's failure, telling apart a raw row that was already stored.
enum RawConflict {
    Stored,
    Other(SinkError),
}

impl RawConflict {
    fn into_sink(self) -> SinkError {
        match self {
            RawConflict::Stored => SinkError::Fatal("raw row stored twice".into()),
            RawConflict::Other(err) => err,
        }
    }
}

impl From<SinkError> for RawConflict {
    fn from(err: SinkError) -> Self {
        RawConflict::Other(err)
    }
}

fn copy_err(err: sqlx::Error) -> RawConflict {
    match hb_common::store::classify(&err) {
        hb_common::store::Failure::Conflict => RawConflict::Stored,
        _ => RawConflict::Other(sink_error(err)),
    }
}

/// Writes raw rows: by binary `COPY` (`copy`), or by the insert that skips
/// rows already stored. A heartbeat the sessionizer merged was never seen
/// before within the lateness, so it cannot be stored already; only late
/// ones can (a device resending long after), and those take the insert.
async fn write_raw(
    tx: &mut sqlx::PgConnection,
    raw: &[RawHeartbeat],
    raw_ttl_ms: i64,
    copy: bool,
) -> Result<(), RawConflict> {
    if raw.is_empty() {
        return Ok(());
    }
    if !copy {
        let all: Vec<_> = raw.iter().collect();
        return insert_raw(tx, &all, raw_ttl_ms).await.map_err(Into::into);
    }
    let (late, merged): (Vec<_>, Vec<_>) = raw.iter().partition(|r| r.late);
    if !merged.is_empty() {
        let mut copy_in = tx.copy_in_raw(&RAW_COPY).await.map_err(copy_err)?;
        let mut encoder = pg_copy::Encoder::default();
        for r in merged {
            encoder
                .row(14)
                .text(&r.event_id)
                .text(&r.user_id)
                .text(&r.video_id)
                .text(&r.device_id)
                .int8(r.event_time_ms)
                .int8(r.position_ms)
                .int4(r.state)
                .text(&r.ad_id)
                .text(&r.platform)
                .text(&r.app_version)
                .text(&r.country)
                .int8(r.bitrate_kbps)
                .bool(r.late)
                .int8(r.event_time_ms.saturating_add(raw_ttl_ms));
            if encoder.pending().len() >= 60 * 1024 {
                copy_in.send(encoder.pending()).await.map_err(copy_err)?;
                encoder.clear();
            }
        }
        copy_in
            .send(encoder.finish().as_slice())
            .await
            .map_err(copy_err)?;
        copy_in.finish().await.map_err(copy_err)?;
    }
    if !late.is_empty() {
        insert_raw(tx, &late, raw_ttl_ms).await?;
    }
    Ok(())
}

/// Raw rows by one array-bound insert that skips rows already stored.
async fn insert_raw(
    tx: &mut sqlx::PgConnection,
    raw: &[&RawHeartbeat],
    raw_ttl_ms: i64,
) -> Result<(), SinkError> {
    let text = |f: fn(&RawHeartbeat) -> &str| raw.iter().map(|r| f(r)).collect::<Vec<_>>();
    sqlx::query(&RAW_INSERT)
        .bind(text(|r| &r.event_id))
        .bind(text(|r| &r.user_id))
        .bind(text(|r| &r.video_id))
        .bind(text(|r| &r.device_id))
        .bind(raw.iter().map(|r| r.event_time_ms).collect::<Vec<_>>())
        .bind(raw.iter().map(|r| r.position_ms).collect::<Vec<_>>())
        .bind(raw.iter().map(|r| r.state).collect::<Vec<_>>())
        .bind(text(|r| &r.ad_id))
        .bind(text(|r| &r.platform))
        .bind(text(|r| &r.app_version))
        .bind(text(|r| &r.country))
        .bind(raw.iter().map(|r| r.bitrate_kbps).collect::<Vec<_>>())
        .bind(raw.iter().map(|r| r.late).collect::<Vec<_>>())
        .bind(
            raw.iter()
                .map(|r| r.event_time_ms.saturating_add(raw_ttl_ms))
                .collect::<Vec<_>>(),
        )
        .execute(tx)
        .await
        .map_err(sink_error)?;
    Ok(())
}

/// Removes the rows of the flush's erased users in `tx` and marks each
/// erasure as carried to the raw mirror.
async fn erase_users(
    tx: sqlx::Transaction<'static, Postgres>,
    flush: &Flush,
) -> Result<sqlx::Transaction<'static, Postgres>, SinkError> {
    if flush.erasures.is_empty() {
        return Ok(tx);
    }
    let mut tx = Transaction::Postgres(tx);
    for erasure in &flush.erasures {
        erase::erase_user(&mut tx, &erasure.user_id)
            .await
            .map_err(sink_error)?;
        tx.execute(&erase::mirror_erased(erasure.id, flush.now_ms))
            .await
            .map_err(sink_error)?;
    }
    match tx {
        Transaction::Postgres(tx) => Ok(tx),
        Transaction::Sqlite(_) => unreachable!("wrapped a PostgreSQL transaction"),
    }
}

async fn commit(
    pool: &PgPool,
    flush: &Flush,
    raw_ttl_ms: i64,
    copy_raw: bool,
) -> Result<(), RawConflict> {
    let started = std::time::Instant::now();
    let tx = pool.begin().await.map_err(sink_error)?;
    // Erased users first: the rows below are what came after the erasure.
    let mut tx = erase_users(tx, flush).await?;

    write_raw(&mut tx, &flush.raw, raw_ttl_ms, copy_raw).await?;
    let raw_done = started.elapsed();

    for chunk in flush.dead_letters.chunks(1_000) {
        let mut q = QueryBuilder::<Postgres>::new(format!(
            "INSERT INTO dead_letters ({DEAD_LETTER_COLUMNS}) "
        ));
        q.push_values(chunk, |mut b, d: &DeadLetter| {
            b.push_bind(d.received_ms)
                .push_bind(&d.event_id)
                .push_bind(&d.device_id)
                .push_bind(&d.reason)
                .push_bind(&d.payload);
        });
        q.build().execute(&mut *tx).await.map_err(sink_error)?;
    }

    // Superseded sessions go first, with their impressions.
    let deleted: Vec<_> = flush
        .changes
        .iter()
        .filter_map(|(_, change)| match change {
            Change::Delete(key) => Some(key),
            _ => None,
        })
        .collect();
    if !deleted.is_empty() {
        for table in [SESSIONS, SESSION_ADS] {
            sqlx::query(&session_delete(table))
                .bind(
                    deleted
                        .iter()
                        .map(|k| k.user_id.as_str())
                        .collect::<Vec<_>>(),
                )
                .bind(
                    deleted
                        .iter()
                        .map(|k| k.video_id.as_str())
                        .collect::<Vec<_>>(),
                )
                .bind(deleted.iter().map(|k| k.start_ms).collect::<Vec<_>>())
                .execute(&mut *tx)
                .await
                .map_err(sink_error)?;
        }
    }

    // Open sessions leave `is_final` and `stream_partition` alone so the
    // `sessions_open` index is not rewritten on every update; finals set them.
    let mut open = Vec::new();
    let mut finals = Vec::new();
    for (partition, change) in &flush.changes {
        match change {
            Change::Upsert(s) => open.push((*partition, s)),
            Change::Final(s) => finals.push((*partition, s)),
            Change::Delete(_) => {}
        }
    }
    for (rows, is_final, set) in [
        (&open, false, UPSERT_OPEN_SET),
        (&finals, true, UPSERT_FINAL_SET),
    ] {
        if rows.is_empty() {
            continue;
        }
        let int = |f: fn(&Session) -> i64| rows.iter().map(|(_, s)| f(s)).collect::<Vec<_>>();
        sqlx::query(&format!("{}{set}", *SESSION_INSERT))
            .bind(
                rows.iter()
                    .map(|(_, s)| s.user_id.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(
                rows.iter()
                    .map(|(_, s)| s.video_id.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(int(|s| s.start_ms))
            .bind(int(|s| s.end_ms))
            .bind(int(|s| s.heartbeats as i64))
            .bind(int(|s| s.watch_ms))
            .bind(int(|s| s.coverage_ms))
            .bind(int(|s| s.last_position_ms))
            .bind(int(|s| s.devices as i64))
            .bind(
                rows.iter()
                    .map(|(_, s)| ads_to_column(&s.ads))
                    .collect::<Vec<_>>(),
            )
            .bind(vec![is_final; rows.len()])
            .bind(rows.iter().map(|(p, _)| *p).collect::<Vec<_>>())
            .bind(vec![flush.now_ms; rows.len()])
            .execute(&mut *tx)
            .await
            .map_err(sink_error)?;
    }
    let sessions_done = started.elapsed();

    let impressions: Vec<(&Session, &str)> = open
        .iter()
        .chain(&finals)
        .flat_map(|(_, s)| s.ads.iter().map(move |ad| (*s, ad.as_str())))
        .collect();
    if !impressions.is_empty() {
        sqlx::query(&IMPRESSION_INSERT)
            .bind(
                impressions
                    .iter()
                    .map(|(s, _)| s.user_id.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(
                impressions
                    .iter()
                    .map(|(s, _)| s.video_id.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(
                impressions
                    .iter()
                    .map(|(s, _)| s.start_ms)
                    .collect::<Vec<_>>(),
            )
            .bind(impressions.iter().map(|(_, ad)| *ad).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await
            .map_err(sink_error)?;
    }

    for mark in &flush.corrected {
        sqlx::query(LATE_MARK_DELETE)
            .bind(&mark.topic)
            .bind(mark.partition)
            .bind(&mark.user_id)
            .bind(&mark.video_id)
            .execute(&mut *tx)
            .await
            .map_err(sink_error)?;
    }
    if !flush.late_marks.is_empty() {
        let upsert = late_mark_upsert(false);
        for mark in &flush.late_marks {
            sqlx::query(&upsert)
                .bind(&mark.topic)
                .bind(mark.partition)
                .bind(&mark.user_id)
                .bind(&mark.video_id)
                .bind(mark.from_ms)
                .bind(mark.to_ms)
                .bind(mark.heartbeats as i64)
                .bind(mark.marked_ms)
                .execute(&mut *tx)
                .await
                .map_err(sink_error)?;
        }
    }

    // Traffic hours svc-query has summed are stale once this commits. Last
    // but one: every stream process bumps the current hour's row, and its
    // lock is held from here to the commit.
    for hour in hours_of(flush.raw.iter().map(|r| r.event_time_ms)) {
        sqlx::query(BUMP_RAW_HOUR_SQL)
            .bind(hour)
            .execute(&mut *tx)
            .await
            .map_err(sink_error)?;
    }

    for offset in &flush.offsets {
        let done = sqlx::query(OFFSET_UPSERT)
            .bind(&offset.topic)
            .bind(offset.partition)
            .bind(offset.next_offset)
            .bind(offset.watermark_ms)
            .bind(offset.session_offset)
            .bind(offset.owner_epoch)
            .execute(&mut *tx)
            .await
            .map_err(sink_error)?;
        offsets_written(offset, done.rows_affected())?;
    }

    let before_commit = started.elapsed();
    tx.commit().await.map_err(sink_error)?;
    log_flush_phases(
        flush,
        started,
        [raw_done, sessions_done, before_commit],
        "postgres",
    );
    Ok(())
}
