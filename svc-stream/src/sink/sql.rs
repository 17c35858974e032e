//! The sessions store over sqlx: PostgreSQL/YugabyteDB in the cluster tier,
//! one SQLite file in the embedded tier. Both run the same SQL text (integer
//! epoch milliseconds, TEXT ids, `ON CONFLICT` upserts); one flush is one
//! transaction holding raw rows, dead letters, session changes and offsets.
//! The store also serves as the raw mirror when no ScyllaDB is configured.

use super::pg_writer::PgWriter;
use super::sqlite_writer::SqliteWriter;
use super::{
    DeadLetter, Flush, OpenSession, PartitionSnapshot, RawHeartbeat, RawInStore, RawMirror,
    SessionStore, SinkError,
};
use crate::sessionizer::{Change, Session};
use async_trait::async_trait;
use hb_common::raw::{hours_of, BUMP_RAW_HOURS_UNTIL_SQL, BUMP_RAW_HOUR_SQL};
use sqlx::{PgPool, QueryBuilder, Row, SqlitePool};
use std::sync::Arc;

/// Rows per multi-row INSERT: well under both engines' bind-parameter limits.
const CHUNK: usize = 1_000;

pub(super) fn map_err(err: sqlx::Error) -> SinkError {
    if hb_common::schema::connection_lost(&err) {
        return SinkError::Unavailable(err.to_string());
    }
    match err {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::WorkerCrashed => {
            SinkError::Unavailable(err.to_string())
        }
        sqlx::Error::Database(db) => {
            // Serialization failures, deadlocks, lock time-outs, a server
            // short of resources (class 53: connections, memory, disk) and
            // busy files are transient.
            let transient = db.code().is_some_and(|c| {
                matches!(
                    c.as_ref(),
                    "40001" | "40P01" | "55P03" | "5" | "6" | "517" | "261"
                ) || c.starts_with("53")
            });
            if transient {
                SinkError::Unavailable(db.to_string())
            } else {
                SinkError::Fatal(db.to_string())
            }
        }
        other => SinkError::Fatal(other.to_string()),
    }
}

pub(super) const UPSERT_OPEN_SET: &str =
    " ON CONFLICT (user_id, video_id, start_ms) DO UPDATE SET \
     end_ms = excluded.end_ms, heartbeats = excluded.heartbeats, \
     watch_ms = excluded.watch_ms, coverage_ms = excluded.coverage_ms, \
     last_position_ms = excluded.last_position_ms, devices = excluded.devices, \
     ads = excluded.ads, updated_ms = excluded.updated_ms";

pub(super) const UPSERT_FINAL_SET: &str =
    " ON CONFLICT (user_id, video_id, start_ms) DO UPDATE SET \
     end_ms = excluded.end_ms, heartbeats = excluded.heartbeats, \
     watch_ms = excluded.watch_ms, coverage_ms = excluded.coverage_ms, \
     last_position_ms = excluded.last_position_ms, devices = excluded.devices, \
     ads = excluded.ads, is_final = excluded.is_final, \
     stream_partition = excluded.stream_partition, updated_ms = excluded.updated_ms";

/// Column lists shared by the sqlx statements and the embedded writer.
pub(super) const RAW_COLUMNS: &str = "event_id, user_id, video_id, device_id, event_time_ms, \
     position_ms, state, ad_id, platform, app_version, country, bitrate_kbps, late, expires_ms";
pub(super) const SESSION_COLUMNS: &str =
    "user_id, video_id, start_ms, end_ms, heartbeats, watch_ms, \
     coverage_ms, last_position_ms, devices, ads, is_final, stream_partition, updated_ms";
pub(super) const DEAD_LETTER_COLUMNS: &str = "received_ms, event_id, device_id, reason, payload";
pub(super) const IMPRESSION_CONFLICT: &str =
    " ON CONFLICT (user_id, video_id, start_ms, ad_id) DO NOTHING";
/// A flush without its partition's sessions (`session_offset` NULL) moves
/// only `next_offset`; the watermark stays that of the stored sessions.
/// It changes nothing (no row affected) once another process took the
/// partition over (`owner_epoch`): see [`offsets_written`].
pub(super) const OFFSET_UPSERT: &str =
    "INSERT INTO stream_offsets (topic, partition, next_offset, watermark_ms, session_offset, \
     owner_epoch) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (topic, partition) DO UPDATE SET \
     next_offset = excluded.next_offset, \
     watermark_ms = CASE WHEN excluded.session_offset IS NULL \
     THEN stream_offsets.watermark_ms ELSE excluded.watermark_ms END, \
     session_offset = COALESCE(excluded.session_offset, stream_offsets.session_offset) \
     WHERE stream_offsets.owner_epoch = excluded.owner_epoch";

/// Takes a partition over: counts its owner up and returns the new count.
pub(super) const CLAIM_PARTITION: &str =
    "INSERT INTO stream_offsets (topic, partition, next_offset, owner_epoch) VALUES ($1, $2, 0, 1) \
     ON CONFLICT (topic, partition) DO UPDATE SET owner_epoch = stream_offsets.owner_epoch + 1 \
     RETURNING owner_epoch";

/// The outcome of one offsets upsert: an error when the row no longer names
/// this process's take-over, so the whole flush is rolled back.
pub(super) fn offsets_written(offset: &super::OffsetRow, rows: u64) -> Result<(), SinkError> {
    if rows == 1 {
        return Ok(());
    }
    Err(SinkError::Fatal(format!(
        "partition {} of {} was taken over by another stream process (this one took it as owner {})",
        offset.partition, offset.topic, offset.owner_epoch
    )))
}

/// Debug log of one flush's phases (raw rows, sessions, the rest, commit);
/// The array holds the elapsed times at the end of the first three.
pub(super) fn log_flush_phases(
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

pub(super) fn ads_json(session: &Session) -> String {
    serde_json::to_string(&session.ads).unwrap_or_else(|_| "[]".into())
}

/// Implements the store for one sqlx database; the SQL is shared text.
macro_rules! sql_store {
    ($name:ident, $db:ty, $pool:ty, $writer:ty) => {
        /// The sessions store on this engine.
        #[derive(Clone)]
        pub struct $name {
            pool: $pool,
            raw_ttl_ms: i64,
            /// A faster write path for this engine, when it has one.
            writer: Option<Arc<$writer>>,
        }

        impl $name {
            pub fn new(pool: $pool, raw_ttl_ms: i64) -> Self {
                let writer = Self::open_writer(&pool, raw_ttl_ms).map(Arc::new);
                Self { pool, raw_ttl_ms, writer }
            }

            pub fn pool(&self) -> &$pool {
                &self.pool
            }
        }

        #[async_trait]
        impl SessionStore for $name {
            async fn commit(&self, flush: Arc<Flush>) -> Result<(), SinkError> {
                if let Some(writer) = &self.writer {
                    return writer.commit(flush).await;
                }
                let started = std::time::Instant::now();
                let mut tx = self.pool.begin().await.map_err(map_err)?;

                for chunk in flush.raw.chunks(CHUNK) {
                    let mut q = QueryBuilder::<$db>::new(format!(
                        "INSERT INTO raw_heartbeats ({RAW_COLUMNS}) "
                    ));
                    q.push_values(chunk, |mut b, r| {
                        b.push_bind(&r.event_id)
                            .push_bind(&r.user_id)
                            .push_bind(&r.video_id)
                            .push_bind(&r.device_id)
                            .push_bind(r.event_time_ms)
                            .push_bind(r.position_ms)
                            .push_bind(r.state)
                            .push_bind(&r.ad_id)
                            .push_bind(&r.platform)
                            .push_bind(&r.app_version)
                            .push_bind(&r.country)
                            .push_bind(r.bitrate_kbps)
                            .push_bind(r.late)
                            .push_bind(r.event_time_ms.saturating_add(self.raw_ttl_ms));
                    });
                    // First copy wins: a later copy of the same event changes nothing.
                    q.push(" ON CONFLICT DO NOTHING");
                    q.build().execute(&mut *tx).await.map_err(map_err)?;
                }

                // Traffic hours svc-query has summed are stale once this commits.
                for hour in hours_of(flush.raw.iter().map(|r| r.event_time_ms)) {
                    sqlx::query(BUMP_RAW_HOUR_SQL)
                        .bind(hour)
                        .execute(&mut *tx)
                        .await
                        .map_err(map_err)?;
                }
                let raw_done = started.elapsed();
                for chunk in flush.dead_letters.chunks(CHUNK) {
                    let mut q = QueryBuilder::<$db>::new(format!(
                        "INSERT INTO dead_letters ({DEAD_LETTER_COLUMNS}) "
                    ));
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
                for (_, change) in &flush.changes {
                    if let Change::Delete(key) = change {
                        for table in ["sessions", "session_ads"] {
                            sqlx::query(&format!(
                                "DELETE FROM {table} WHERE user_id = $1 AND video_id = $2 AND start_ms = $3"
                            ))
                            .bind(&key.user_id)
                            .bind(&key.video_id)
                            .bind(key.start_ms)
                            .execute(&mut *tx)
                            .await
                            .map_err(map_err)?;
                        }
                    }
                }

                let upserts: Vec<(i32, &Session, bool)> = flush
                    .changes
                    .iter()
                    .filter_map(|(partition, change)| match change {
                        Change::Upsert(s) => Some((*partition, s, false)),
                        Change::Final(s) => Some((*partition, s, true)),
                        Change::Delete(_) => None,
                    })
                    .collect();
                // Open sessions leave `is_final` and `stream_partition` alone so
                // the `sessions_open` index is not rewritten on every update;
                // finals set them.
                let (finals, open): (Vec<_>, Vec<_>) =
                    upserts.iter().partition(|(_, _, is_final)| *is_final);
                for (rows, set) in [(open, UPSERT_OPEN_SET), (finals, UPSERT_FINAL_SET)] {
                    for chunk in rows.chunks(CHUNK) {
                        let mut q = QueryBuilder::<$db>::new(format!(
                            "INSERT INTO sessions ({SESSION_COLUMNS}) "
                        ));
                        q.push_values(chunk, |mut b, (partition, s, is_final)| {
                            b.push_bind(&s.user_id)
                                .push_bind(&s.video_id)
                                .push_bind(s.start_ms)
                                .push_bind(s.end_ms)
                                .push_bind(s.heartbeats as i64)
                                .push_bind(s.watch_ms)
                                .push_bind(s.coverage_ms)
                                .push_bind(s.last_position_ms)
                                .push_bind(s.devices as i64)
                                .push_bind(ads_json(s))
                                .push_bind(*is_final)
                                .push_bind(*partition)
                                .push_bind(flush.now_ms);
                        });
                        q.push(set);
                        q.build().execute(&mut *tx).await.map_err(map_err)?;
                    }
                }

                let sessions_done = started.elapsed();
                let impressions: Vec<(&Session, &String)> = upserts
                    .iter()
                    .flat_map(|(_, s, _)| s.ads.iter().map(move |ad| (*s, ad)))
                    .collect();
                for chunk in impressions.chunks(CHUNK) {
                    let mut q = QueryBuilder::<$db>::new(
                        "INSERT INTO session_ads (user_id, video_id, start_ms, ad_id) ",
                    );
                    q.push_values(chunk, |mut b, (s, ad)| {
                        b.push_bind(&s.user_id)
                            .push_bind(&s.video_id)
                            .push_bind(s.start_ms)
                            .push_bind(*ad);
                    });
                    q.push(IMPRESSION_CONFLICT);
                    q.build().execute(&mut *tx).await.map_err(map_err)?;
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
                log_flush_phases(&flush, started, [raw_done, sessions_done, before_commit], "sqlx");
                Ok(())
            }

            async fn load_partition(
                &self,
                topic: &str,
                partition: i32,
            ) -> Result<PartitionSnapshot, SinkError> {
                let offset = sqlx::query(
                    "SELECT next_offset, watermark_ms, session_offset FROM stream_offsets \
                     WHERE topic = $1 AND partition = $2",
                )
                .bind(topic)
                .bind(partition)
                .fetch_optional(&self.pool)
                .await
                .map_err(map_err)?;
                let (next_offset, watermark_ms, session_offset) = match offset {
                    Some(row) => (
                        Some(row.try_get::<i64, _>(0).map_err(map_err)?),
                        row.try_get::<Option<i64>, _>(1).map_err(map_err)?,
                        row.try_get::<Option<i64>, _>(2).map_err(map_err)?,
                    ),
                    None => (None, None, None),
                };
                let rows = sqlx::query(
                    "SELECT user_id, video_id, start_ms, end_ms FROM sessions \
                     WHERE stream_partition = $1 AND is_final = $2",
                )
                .bind(partition)
                .bind(false)
                .fetch_all(&self.pool)
                .await
                .map_err(map_err)?;
                let open = rows.iter().map(span_of_row).collect::<Result<Vec<_>, _>>()?;
                let owner_epoch: i64 = sqlx::query_scalar(CLAIM_PARTITION)
                    .bind(topic)
                    .bind(partition)
                    .fetch_one(&self.pool)
                    .await
                    .map_err(map_err)?;
                Ok(PartitionSnapshot {
                    next_offset,
                    session_offset,
                    owner_epoch,
                    watermark_ms,
                    open,
                })
            }

            async fn final_spans(
                &self,
                partition: i32,
                since_ms: i64,
            ) -> Result<Vec<OpenSession>, SinkError> {
                // Index `sessions_final_by_end` (a literal `is_final`, so SQLite can
                // prove the partial index applies): only the few finals this recent.
                let rows = sqlx::query(
                    "SELECT user_id, video_id, start_ms, end_ms FROM sessions \
                     WHERE stream_partition = $1 AND end_ms >= $2 AND is_final",
                )
                .bind(partition)
                .bind(since_ms)
                .fetch_all(&self.pool)
                .await
                .map_err(map_err)?;
                rows.iter().map(span_of_row).collect()
            }

            async fn expire_raw(&self, now_ms: i64) -> Result<u64, SinkError> {
                // Bounded by event time too, so the delete walks the time key
                // (or index) instead of scanning the whole mirror. A row kept
                // under a shorter TTL than today's waits for today's.
                let cutoff = now_ms.saturating_sub(self.raw_ttl_ms);
                let mut tx = self.pool.begin().await.map_err(map_err)?;
                let done = sqlx::query(
                    "DELETE FROM raw_heartbeats WHERE event_time_ms < $1 AND expires_ms < $2",
                )
                .bind(cutoff)
                .bind(now_ms)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
                if done.rows_affected() > 0 {
                    // The removed rows' hours: svc-query's sums of them are stale.
                    sqlx::query(BUMP_RAW_HOURS_UNTIL_SQL)
                        .bind(hb_common::raw::hour_ms(cutoff))
                        .execute(&mut *tx)
                        .await
                        .map_err(map_err)?;
                }
                tx.commit().await.map_err(map_err)?;
                Ok(done.rows_affected())
            }
        }

        #[async_trait]
        impl RawInStore for $name {
            async fn replay_since(&self, from_ms: i64) -> Result<Vec<RawHeartbeat>, SinkError> {
                let rows = sqlx::query(&format!("{RAW_SELECT} WHERE event_time_ms >= $1"))
                    .bind(from_ms)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(map_err)?;
                rows.iter().map(raw_of_row).collect()
            }
        }

        #[async_trait]
        impl RawMirror for $name {
            /// The raw table is clustered by event time (SQLite migration
            /// 0002, PostgreSQL 0006), so the open sessions of a partition
            /// are restored from one range scan over `[earliest start,
            /// latest end]`, keeping each session's own rows.
            async fn replay_open(
                &self,
                open: &[OpenSession],
            ) -> Result<Vec<RawHeartbeat>, SinkError> {
                let (Some(from_ms), Some(to_ms)) = (
                    open.iter().map(|s| s.start_ms).min(),
                    open.iter().map(|s| s.end_ms).max(),
                ) else {
                    return Ok(Vec::new());
                };
                let spans: std::collections::HashMap<(&str, &str), Vec<(i64, i64)>> =
                    open.iter().fold(Default::default(), |mut spans, s| {
                        spans
                            .entry((s.user_id.as_str(), s.video_id.as_str()))
                            .or_default()
                            .push((s.start_ms, s.end_ms));
                        spans
                    });
                let sql = format!(
                    "{RAW_SELECT} WHERE event_time_ms >= $1 AND event_time_ms <= $2 ORDER BY event_time_ms, event_id"
                );
                let mut rows = sqlx::query(&sql).bind(from_ms).bind(to_ms).fetch(&self.pool);
                let mut kept = Vec::new();
                while let Some(row) = futures::TryStreamExt::try_next(&mut rows)
                    .await
                    .map_err(map_err)?
                {
                    let user_id: &str = row.try_get(1).map_err(map_err)?;
                    let video_id: &str = row.try_get(2).map_err(map_err)?;
                    let time_ms: i64 = row.try_get(4).map_err(map_err)?;
                    let wanted = spans
                        .get(&(user_id, video_id))
                        .is_some_and(|s| s.iter().any(|(from, to)| (*from..=*to).contains(&time_ms)));
                    if wanted {
                        kept.push(raw_of_row(&row)?);
                    }
            }
            Ok(kept)
            }

            async fn write(&self, rows: &[RawHeartbeat]) -> Result<(), SinkError> {
                let flush = Flush {
                    raw: rows.to_vec(),
                    ..Flush::default()
                };
                self.commit(Arc::new(flush)).await
            }

            async fn replay(
                &self,
                user_id: &str,
                video_id: &str,
                from_ms: i64,
                to_ms: i64,
            ) -> Result<Vec<RawHeartbeat>, SinkError> {
                let rows = sqlx::query(&format!(
                    "{RAW_SELECT} WHERE user_id = $1 AND video_id = $2 \
                     AND event_time_ms >= $3 AND event_time_ms <= $4 ORDER BY event_time_ms, event_id"
                ))
                .bind(user_id)
                .bind(video_id)
                .bind(from_ms)
                .bind(to_ms)
                .fetch_all(&self.pool)
                .await
                .map_err(map_err)?;
                rows.iter().map(raw_of_row).collect()
            }
        }
    };
}

sql_store!(PgStore, sqlx::Postgres, PgPool, PgWriter);

impl PgStore {
    /// Every flush takes the array-bound statements of `pg_writer`.
    fn open_writer(pool: &PgPool, raw_ttl_ms: i64) -> Option<PgWriter> {
        Some(PgWriter::new(pool.clone(), raw_ttl_ms))
    }
}

impl SqliteStore {
    /// The embedded file's own writer connection (see `sqlite_writer`); sqlx
    /// keeps serving the reads. An in-memory database has no file to share,
    /// so it stays on sqlx.
    fn open_writer(pool: &SqlitePool, raw_ttl_ms: i64) -> Option<SqliteWriter> {
        let options = pool.connect_options();
        let path = options.get_filename();
        if path.as_os_str().is_empty() || path.to_string_lossy().contains(":memory:") {
            return None;
        }
        match SqliteWriter::open(path, raw_ttl_ms) {
            Ok(writer) => Some(writer),
            Err(err) => {
                tracing::warn!(error = %err, "embedded writer unavailable; writing through sqlx");
                None
            }
        }
    }
}
sql_store!(SqliteStore, sqlx::Sqlite, SqlitePool, SqliteWriter);

const RAW_SELECT: &str =
    "SELECT event_id, user_id, video_id, device_id, event_time_ms, position_ms, \
     state, ad_id, platform, app_version, country, bitrate_kbps, late FROM raw_heartbeats";

/// A `(user_id, video_id, start_ms, end_ms)` row.
fn span_of_row<R: Row>(row: &R) -> Result<OpenSession, SinkError>
where
    usize: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let read = || -> Result<OpenSession, sqlx::Error> {
        Ok(OpenSession {
            user_id: row.try_get(0)?,
            video_id: row.try_get(1)?,
            start_ms: row.try_get(2)?,
            end_ms: row.try_get(3)?,
        })
    };
    read().map_err(map_err)
}

fn raw_of_row<R: Row>(row: &R) -> Result<RawHeartbeat, SinkError>
where
    usize: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i32: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> bool: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let read = || -> Result<RawHeartbeat, sqlx::Error> {
        Ok(RawHeartbeat {
            event_id: row.try_get(0)?,
            user_id: row.try_get(1)?,
            video_id: row.try_get(2)?,
            device_id: row.try_get(3)?,
            event_time_ms: row.try_get(4)?,
            position_ms: row.try_get(5)?,
            state: row.try_get(6)?,
            ad_id: row.try_get(7)?,
            platform: row.try_get(8)?,
            app_version: row.try_get(9)?,
            country: row.try_get(10)?,
            bitrate_kbps: row.try_get(11)?,
            late: row.try_get(12)?,
        })
    };
    read().map_err(map_err)
}
