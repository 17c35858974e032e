//! The PostgreSQL/YugabyteDB write path of a flush. Raw rows go in by
//! binary `COPY` (no statement to parse, no per-row executor pass); the
//! other tables take one statement per kind of change, whatever the flush's
//! size, with the rows passed as one array per column and expanded by
//! `UNNEST` (a multi-row `VALUES` list binds 13-14 parameters a row, each
//! parsed and planned once per chunk). `COPY FROM STDIN` in binary and
//! `UNNEST` over arrays are both accepted by YugabyteDB's YSQL.

use super::sql::{ads_json, map_err, offsets_written, IMPRESSION_CONFLICT, OFFSET_UPSERT};
use super::{DeadLetter, Flush};
use crate::sessionizer::{Change, Session};
use crate::sink::SinkError;
use hb_common::raw::{hours_of, BUMP_RAW_HOUR_SQL};
use sqlx::{PgPool, Postgres, QueryBuilder};
use std::sync::Arc;

const RAW_INSERT: &str = "INSERT INTO raw_heartbeats (event_id, user_id, video_id, device_id, \
     event_time_ms, position_ms, state, ad_id, platform, app_version, country, bitrate_kbps, \
     late, expires_ms) \
     SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::int8[], \
     $6::int8[], $7::int4[], $8::text[], $9::text[], $10::text[], $11::text[], $12::int8[], \
     $13::bool[], $14::int8[]) ON CONFLICT DO NOTHING";

const SESSION_INSERT: &str = "INSERT INTO sessions (user_id, video_id, start_ms, end_ms, \
     heartbeats, watch_ms, coverage_ms, last_position_ms, devices, ads, is_final, \
     stream_partition, updated_ms) \
     SELECT * FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::int8[], $5::int8[], \
     $6::int8[], $7::int8[], $8::int8[], $9::int8[], $10::text[], $11::bool[], $12::int4[], \
     $13::int8[])";

const SESSION_DELETE: &str = "DELETE FROM sessions AS s \
     USING UNNEST($1::text[], $2::text[], $3::int8[]) AS d(user_id, video_id, start_ms) \
     WHERE s.user_id = d.user_id AND s.video_id = d.video_id AND s.start_ms = d.start_ms";

const IMPRESSION_DELETE: &str = "DELETE FROM session_ads AS s \
     USING UNNEST($1::text[], $2::text[], $3::int8[]) AS d(user_id, video_id, start_ms) \
     WHERE s.user_id = d.user_id AND s.video_id = d.video_id AND s.start_ms = d.start_ms";

const IMPRESSION_INSERT: &str = "INSERT INTO session_ads (user_id, video_id, start_ms, ad_id) \
     SELECT * FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::text[])";

/// The write path of a PostgreSQL/YugabyteDB store.
pub struct PgWriter {
    pool: PgPool,
    raw_ttl_ms: i64,
}

impl PgWriter {
    pub fn new(pool: PgPool, raw_ttl_ms: i64) -> Self {
        Self { pool, raw_ttl_ms }
    }

    /// Commits `flush` in one transaction. Raw rows go in by binary `COPY`,
    /// which has no `ON CONFLICT`: should one already be stored, the
    /// transaction fails and is redone with the conflict-tolerant insert.
    pub async fn commit(&self, flush: Arc<Flush>) -> Result<(), SinkError> {
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
    let unique = matches!(&err, sqlx::Error::Database(db) if db.code().as_deref() == Some("23505"));
    if unique {
        RawConflict::Stored
    } else {
        RawConflict::Other(map_err(err))
    }
}

const RAW_COPY: &str = "COPY raw_heartbeats (event_id, user_id, video_id, device_id, \
     event_time_ms, position_ms, state, ad_id, platform, app_version, country, bitrate_kbps, \
     late, expires_ms) FROM STDIN (FORMAT binary)";

/// Writes raw rows: by binary `COPY` (`copy`), or by the insert that skips
/// rows already stored. A heartbeat the sessionizer merged was never seen
/// before within the lateness, so it cannot be stored already; only late
/// ones can (a device resending long after), and those take the insert.
async fn write_raw(
    tx: &mut sqlx::PgConnection,
    raw: &[super::RawHeartbeat],
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
        let mut copy_in = tx.copy_in_raw(RAW_COPY).await.map_err(copy_err)?;
        let mut buf = Vec::with_capacity(64 * 1024);
        buf.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
        buf.extend_from_slice(&0i32.to_be_bytes()); // flags
        buf.extend_from_slice(&0i32.to_be_bytes()); // header extension
        for r in merged {
            encode_raw(&mut buf, r, raw_ttl_ms);
            if buf.len() >= 60 * 1024 {
                copy_in.send(buf.as_slice()).await.map_err(copy_err)?;
                buf.clear();
            }
        }
        buf.extend_from_slice(&(-1i16).to_be_bytes());
        copy_in.send(buf.as_slice()).await.map_err(copy_err)?;
        copy_in.finish().await.map_err(copy_err)?;
    }
    if !late.is_empty() {
        insert_raw(tx, &late, raw_ttl_ms).await?;
    }
    Ok(())
}

/// One row of `RAW_COPY` in PostgreSQL's binary copy format.
fn encode_raw(buf: &mut Vec<u8>, r: &super::RawHeartbeat, raw_ttl_ms: i64) {
    fn text(buf: &mut Vec<u8>, value: &str) {
        buf.extend_from_slice(&(value.len() as i32).to_be_bytes());
        buf.extend_from_slice(value.as_bytes());
    }
    fn int8(buf: &mut Vec<u8>, value: i64) {
        buf.extend_from_slice(&8i32.to_be_bytes());
        buf.extend_from_slice(&value.to_be_bytes());
    }
    buf.extend_from_slice(&14i16.to_be_bytes());
    text(buf, &r.event_id);
    text(buf, &r.user_id);
    text(buf, &r.video_id);
    text(buf, &r.device_id);
    int8(buf, r.event_time_ms);
    int8(buf, r.position_ms);
    buf.extend_from_slice(&4i32.to_be_bytes());
    buf.extend_from_slice(&r.state.to_be_bytes());
    text(buf, &r.ad_id);
    text(buf, &r.platform);
    text(buf, &r.app_version);
    text(buf, &r.country);
    int8(buf, r.bitrate_kbps);
    buf.extend_from_slice(&1i32.to_be_bytes());
    buf.push(u8::from(r.late));
    int8(buf, r.event_time_ms.saturating_add(raw_ttl_ms));
}

/// Raw rows by one array-bound insert that skips rows already stored.
async fn insert_raw(
    tx: &mut sqlx::PgConnection,
    raw: &[&super::RawHeartbeat],
    raw_ttl_ms: i64,
) -> Result<(), SinkError> {
    let text = |f: fn(&super::RawHeartbeat) -> &str| raw.iter().map(|r| f(r)).collect::<Vec<_>>();
    sqlx::query(RAW_INSERT)
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
        .map_err(map_err)?;
    Ok(())
}

async fn commit(
    pool: &PgPool,
    flush: &Flush,
    raw_ttl_ms: i64,
    copy_raw: bool,
) -> Result<(), RawConflict> {
    let started = std::time::Instant::now();
    let mut tx = pool.begin().await.map_err(map_err)?;

    write_raw(&mut tx, &flush.raw, raw_ttl_ms, copy_raw).await?;
    let raw_done = started.elapsed();

    for chunk in flush.dead_letters.chunks(1_000) {
        let mut q = QueryBuilder::<Postgres>::new(
            "INSERT INTO dead_letters (received_ms, event_id, device_id, reason, payload) ",
        );
        q.push_values(chunk, |mut b, d: &DeadLetter| {
            b.push_bind(d.received_ms)
                .push_bind(&d.event_id)
                .push_bind(&d.device_id)
                .push_bind(&d.reason)
                .push_bind(&d.payload);
        });
        q.build().execute(&mut *tx).await.map_err(map_err)?;
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
        for sql in [SESSION_DELETE, IMPRESSION_DELETE] {
            sqlx::query(sql)
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
                .map_err(map_err)?;
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
        (&open, false, super::sql::UPSERT_OPEN_SET),
        (&finals, true, super::sql::UPSERT_FINAL_SET),
    ] {
        if rows.is_empty() {
            continue;
        }
        let int = |f: fn(&Session) -> i64| rows.iter().map(|(_, s)| f(s)).collect::<Vec<_>>();
        sqlx::query(&format!("{SESSION_INSERT}{set}"))
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
            .bind(rows.iter().map(|(_, s)| ads_json(s)).collect::<Vec<_>>())
            .bind(vec![is_final; rows.len()])
            .bind(rows.iter().map(|(p, _)| *p).collect::<Vec<_>>())
            .bind(vec![flush.now_ms; rows.len()])
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
    }
    let sessions_done = started.elapsed();

    let impressions: Vec<(&Session, &str)> = open
        .iter()
        .chain(&finals)
        .flat_map(|(_, s)| s.ads.iter().map(move |ad| (*s, ad.as_str())))
        .collect();
    if !impressions.is_empty() {
        sqlx::query(&format!("{IMPRESSION_INSERT}{IMPRESSION_CONFLICT}"))
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
            .map_err(map_err)?;
    }

    // Traffic hours svc-query has summed are stale once this commits. Last
    // but one: every stream process bumps the current hour's row, and its
    // lock is held from here to the commit.
    for hour in hours_of(flush.raw.iter().map(|r| r.event_time_ms)) {
        sqlx::query(BUMP_RAW_HOUR_SQL)
            .bind(hour)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
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
            .map_err(map_err)?;
        offsets_written(offset, done.rows_affected())?;
    }

    let before_commit = started.elapsed();
    tx.commit().await.map_err(map_err)?;
    super::sql::log_flush_phases(
        flush,
        started,
        [raw_done, sessions_done, before_commit],
        "postgres",
    );
    Ok(())
}
