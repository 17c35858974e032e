//! The sessions store over sqlx: PostgreSQL/YugabyteDB in the cluster tier,
//! one SQLite file in the embedded tier. Reads (restores, expiry) are the
//! same statements on both engines ([`hb_common::store::Store`]); each
//! engine has its own write path for a flush ([`postgres`], [`sqlite`]),
//! one transaction holding raw rows, dead letters, session changes and
//! offsets. The store also serves as the raw mirror when no ScyllaDB is
//! configured.

mod postgres;
mod sqlite;
mod writes;

use super::{
    Flush, LateMark, OpenSession, PartitionSnapshot, PendingErasure, RawHeartbeat, RawInStore,
    RawMirror, SessionStore, SinkError, StoredSpan,
};
use async_trait::async_trait;
use hb_common::raw::{hour_ms, BUMP_RAW_HOURS_UNTIL_SQL};
use hb_common::store::columns::{RAW_COLUMNS, RAW_HEARTBEATS};
use hb_common::store::erase;
use hb_common::store::{Param, Statement, Store};
use postgres::PgWriter;
use sqlite::SqliteWriter;
use sqlx::{PgPool, SqlitePool};
use std::collections::HashMap;
use std::sync::Arc;
use writes::{sink_error, FlushWriter};

/// The sessions store on one engine (`P`: its pool).
#[derive(Clone)]
pub struct SqlStore<P> {
    pool: P,
    store: Store,
    raw_ttl_ms: i64,
    writer: Arc<dyn FlushWriter>,
}

/// The cluster tier's store; flushes take the array-bound statements and
/// binary `COPY` of [`postgres`].
pub type PgStore = SqlStore<PgPool>;

/// The embedded tier's store; flushes take the file's own writer
/// connection ([`sqlite`]) and sqlx serves the reads.
pub type SqliteStore = SqlStore<SqlitePool>;

impl SqlStore<PgPool> {
    pub fn new(pool: PgPool, raw_ttl_ms: i64) -> PgStore {
        SqlStore {
            store: Store::Postgres(pool.clone()),
            writer: Arc::new(PgWriter::new(pool.clone(), raw_ttl_ms)),
            pool,
            raw_ttl_ms,
        }
    }
}

impl SqlStore<SqlitePool> {
    /// A store on `pool`'s file. Should the writer's connection not open,
    /// every commit fails with the reason (the reads still work).
    pub fn new(pool: SqlitePool, raw_ttl_ms: i64) -> SqliteStore {
        let writer: Arc<dyn FlushWriter> =
            match SqliteWriter::open(pool.connect_options().get_filename(), raw_ttl_ms) {
                Ok(writer) => Arc::new(writer),
                Err(error) => {
                    tracing::error!(%error, "the embedded writer cannot open the store file");
                    Arc::new(Unwritable(error.to_string()))
                }
            };
        SqlStore {
            store: Store::Sqlite(pool.clone()),
            writer,
            pool,
            raw_ttl_ms,
        }
    }
}

impl<P> SqlStore<P> {
    pub fn pool(&self) -> &P {
        &self.pool
    }

    /// `(user_id, video_id, start_ms, end_ms)` rows.
    async fn spans(&self, statement: Statement) -> Result<Vec<OpenSession>, SinkError> {
        let rows: Vec<(String, String, i64, i64)> =
            self.store.fetch_all(&statement).await.map_err(sink_error)?;
        Ok(rows
            .into_iter()
            .map(|(user_id, video_id, start_ms, end_ms)| OpenSession {
                user_id,
                video_id,
                start_ms,
                end_ms,
            })
            .collect())
    }

    async fn raw_rows(&self, statement: Statement) -> Result<Vec<RawHeartbeat>, SinkError> {
        let rows: Vec<RawRow> = self.store.fetch_all(&statement).await.map_err(sink_error)?;
        Ok(rows.into_iter().map(raw_heartbeat).collect())
    }
}

/// A writer that could not open: every commit fails with why.
struct Unwritable(String);

#[async_trait]
impl FlushWriter for Unwritable {
    async fn commit(&self, _: Arc<Flush>) -> Result<(), SinkError> {
        Err(SinkError::Fatal(format!(
            "the store cannot be written: {}",
            self.0
        )))
    }
}

/// Takes a partition over: counts its owner up and returns the new count.
const CLAIM_PARTITION: &str =
    "INSERT INTO stream_offsets (topic, partition, next_offset, owner_epoch) VALUES ($1, $2, 0, 1) \
     ON CONFLICT (topic, partition) DO UPDATE SET owner_epoch = stream_offsets.owner_epoch + 1 \
     RETURNING owner_epoch";

#[async_trait]
impl<P: Send + Sync> SessionStore for SqlStore<P> {
    async fn commit(&self, flush: Arc<Flush>) -> Result<(), SinkError> {
        self.writer.commit(flush).await
    }

    async fn load_partition(
        &self,
        topic: &str,
        partition: i32,
    ) -> Result<PartitionSnapshot, SinkError> {
        let offsets: Vec<(i64, Option<i64>, Option<i64>)> = self
            .store
            .fetch_all(&Statement::new(
                "SELECT next_offset, watermark_ms, session_offset FROM stream_offsets \
                 WHERE topic = $1 AND partition = $2",
                vec![Param::Text(topic.into()), Param::Int4(partition)],
            ))
            .await
            .map_err(sink_error)?;
        let (next_offset, watermark_ms, session_offset) = match offsets.first() {
            Some(&(next, watermark, session)) => (Some(next), watermark, session),
            None => (None, None, None),
        };
        let open = self
            .spans(Statement::new(
                "SELECT user_id, video_id, start_ms, end_ms FROM sessions \
                 WHERE stream_partition = $1 AND is_final = $2",
                vec![Param::Int4(partition), Param::Bool(false)],
            ))
            .await?;
        let late: Vec<(String, String, i64, i64, i64, i64)> = self
            .store
            .fetch_all(&Statement::new(
                "SELECT user_id, video_id, from_ms, to_ms, heartbeats, marked_ms \
                 FROM late_corrections WHERE topic = $1 AND stream_partition = $2",
                vec![Param::Text(topic.into()), Param::Int4(partition)],
            ))
            .await
            .map_err(sink_error)?;
        let late = late
            .into_iter()
            .map(
                |(user_id, video_id, from_ms, to_ms, heartbeats, marked_ms)| LateMark {
                    topic: topic.to_string(),
                    partition,
                    user_id,
                    video_id,
                    from_ms,
                    to_ms,
                    heartbeats: heartbeats.max(0) as u64,
                    marked_ms,
                    latest_ms: i64::MIN,
                },
            )
            .collect();
        let claimed: Vec<(i64,)> = self
            .store
            .fetch_all(&Statement::new(
                CLAIM_PARTITION,
                vec![Param::Text(topic.into()), Param::Int4(partition)],
            ))
            .await
            .map_err(sink_error)?;
        let Some(&(owner_epoch,)) = claimed.first() else {
            return Err(SinkError::Fatal(format!(
                "claiming partition {partition} of {topic} returned no owner"
            )));
        };
        Ok(PartitionSnapshot {
            next_offset,
            session_offset,
            owner_epoch,
            watermark_ms,
            open,
            late,
        })
    }

    async fn key_sessions(
        &self,
        user_id: &str,
        video_id: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<StoredSpan>, SinkError> {
        let rows: Vec<(i64, i64)> = self
            .store
            .fetch_all(&Statement::new(
                "SELECT start_ms, end_ms FROM sessions WHERE user_id = $1 AND video_id = $2 \
                 AND start_ms < $3 AND end_ms > $4 ORDER BY start_ms",
                vec![
                    Param::Text(user_id.into()),
                    Param::Text(video_id.into()),
                    Param::Int(to_ms),
                    Param::Int(from_ms),
                ],
            ))
            .await
            .map_err(sink_error)?;
        Ok(rows
            .into_iter()
            .map(|(start_ms, end_ms)| StoredSpan { start_ms, end_ms })
            .collect())
    }

    async fn expire_raw(&self, now_ms: i64) -> Result<u64, SinkError> {
        // Bounded by event time too, so the delete walks the time key
        // (or index) instead of scanning the whole mirror. A row kept
        // under a shorter TTL than today's waits for today's.
        let cutoff = now_ms.saturating_sub(self.raw_ttl_ms);
        let mut tx = self.store.begin().await.map_err(sink_error)?;
        let deleted = tx
            .execute(&Statement::new(
                format!(
                    "DELETE FROM {RAW_HEARTBEATS} WHERE event_time_ms < $1 AND expires_ms < $2"
                ),
                vec![Param::Int(cutoff), Param::Int(now_ms)],
            ))
            .await
            .map_err(sink_error)?;
        if deleted > 0 {
            // The removed rows' hours: svc-query's sums of them are stale.
            tx.execute(&Statement::new(
                BUMP_RAW_HOURS_UNTIL_SQL,
                vec![Param::Int(hour_ms(cutoff))],
            ))
            .await
            .map_err(sink_error)?;
        }
        tx.commit().await.map_err(sink_error)?;
        Ok(deleted)
    }

    async fn erasures_start(&self) -> Result<i64, SinkError> {
        let rows: Vec<(Option<i64>, Option<i64>)> = self
            .store
            .fetch_all(&erase::start())
            .await
            .map_err(sink_error)?;
        Ok(erase::first_to_apply(
            rows.first().copied().unwrap_or((None, None)),
        ))
    }

    async fn erasures_since(&self, after_id: i64) -> Result<Vec<PendingErasure>, SinkError> {
        let rows: Vec<(i64, String, String)> = self
            .store
            .fetch_all(&erase::since(after_id))
            .await
            .map_err(sink_error)?;
        Ok(rows.into_iter().map(erase::pending).collect())
    }
}

/// A `raw_heartbeats` row in [`RAW_COLUMNS`] order.
type RawRow = (
    String,
    String,
    String,
    String,
    i64,
    i64,
    i32,
    String,
    String,
    String,
    String,
    i64,
    bool,
);

fn raw_heartbeat(row: RawRow) -> RawHeartbeat {
    RawHeartbeat {
        event_id: row.0,
        user_id: row.1,
        video_id: row.2,
        device_id: row.3,
        event_time_ms: row.4,
        position_ms: row.5,
        state: row.6,
        ad_id: row.7,
        platform: row.8,
        app_version: row.9,
        country: row.10,
        bitrate_kbps: row.11,
        late: row.12,
    }
}

fn raw_select(condition: &str) -> String {
    format!("SELECT {RAW_COLUMNS} FROM {RAW_HEARTBEATS} WHERE {condition}")
}

#[async_trait]
impl<P: Send + Sync> RawInStore for SqlStore<P> {
    /// One range scan of the raw table, which is clustered by event time.
    async fn replay_since(
        &self,
        from_ms: i64,
        visit: &mut (dyn FnMut(RawHeartbeat) + Send),
    ) -> Result<(), SinkError> {
        let statement = Statement::new(
            raw_select("event_time_ms >= $1 ORDER BY event_time_ms, event_id"),
            vec![Param::Int(from_ms)],
        );
        self.store
            .fetch_each(&statement, |row: RawRow| {
                visit(raw_heartbeat(row));
                Ok::<_, sqlx::Error>(())
            })
            .await
            .map_err(sink_error)
    }

    /// Through `sessions_final_by_end` (a partial index: the condition names
    /// `is_final` itself for SQLite to use it).
    async fn final_ends_since(
        &self,
        partition: i32,
        from_ms: i64,
    ) -> Result<Vec<(String, String, i64)>, SinkError> {
        self.store
            .fetch_all(&Statement::new(
                "SELECT user_id, video_id, MAX(end_ms) FROM sessions \
                 WHERE stream_partition = $1 AND is_final AND end_ms >= $2 \
                 GROUP BY user_id, video_id",
                vec![Param::Int4(partition), Param::Int(from_ms)],
            ))
            .await
            .map_err(sink_error)
    }
}

#[async_trait]
impl<P: Send + Sync> RawMirror for SqlStore<P> {
    /// The raw table is clustered by event time (SQLite migration 0002,
    /// PostgreSQL 0006), so the open sessions of a partition are restored
    /// from one range scan over `[earliest start, latest end]` in time
    /// order, handing on each session's own rows as they come.
    async fn replay_open(
        &self,
        open: &[OpenSession],
        visit: &mut (dyn FnMut(RawHeartbeat) + Send),
    ) -> Result<(), SinkError> {
        let (Some(from_ms), Some(to_ms)) = (
            open.iter().map(|s| s.start_ms).min(),
            open.iter().map(|s| s.end_ms).max(),
        ) else {
            return Ok(());
        };
        let mut spans: HashMap<(&str, &str), Vec<(i64, i64)>> = HashMap::new();
        for s in open {
            spans
                .entry((s.user_id.as_str(), s.video_id.as_str()))
                .or_default()
                .push((s.start_ms, s.end_ms));
        }
        let statement = Statement::new(
            raw_select(
                "event_time_ms >= $1 AND event_time_ms <= $2 ORDER BY event_time_ms, event_id",
            ),
            vec![Param::Int(from_ms), Param::Int(to_ms)],
        );
        self.store
            .fetch_each(&statement, |row: RawRow| {
                let time_ms = row.4;
                let wanted = spans
                    .get(&(row.1.as_str(), row.2.as_str()))
                    .is_some_and(|s| s.iter().any(|(from, to)| (*from..=*to).contains(&time_ms)));
                if wanted {
                    visit(raw_heartbeat(row));
                }
                Ok::<_, sqlx::Error>(())
            })
            .await
            .map_err(sink_error)?;
        Ok(())
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
        self.raw_rows(Statement::new(
            raw_select(
                "user_id = $1 AND video_id = $2 AND event_time_ms >= $3 \
                 AND event_time_ms <= $4 ORDER BY event_time_ms, event_id",
            ),
            vec![
                Param::Text(user_id.into()),
                Param::Text(video_id.into()),
                Param::Int(from_ms),
                Param::Int(to_ms),
            ],
        ))
        .await
    }
}
