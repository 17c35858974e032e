//! The raw heartbeat mirror on ScyllaDB (SPEC 6): every accepted heartbeat is
//! written to two tables of the `heartbeats` keyspace, each keyed for one
//! reader, with a TTL (`HB_RAW_TTL`):
//!
//! - `by_user_video`, partition `(user_id, video_id)`: replaying one user's
//!   viewing of one video ([`RawMirror::replay`]);
//! - `by_hour`, partition `(hour_ms, bucket)`: scanning an hour of traffic
//!   (svc-query through Trino names the full partition key, see
//!   [`hb_common::raw`]).
//!
//! Both clustering keys are `(event_time_ms, event_id)`, so rewriting a
//! heartbeat lands on the same row and a write is idempotent by `event_id`.
//!
//! **Late copies never overwrite merged ones.** ScyllaDB resolves concurrent
//! writes of a cell by last-write-wins on the write timestamp. A merged
//! (non-late) row is written with the default timestamp (the time of the
//! write, far above 1); a late row is written `USING TIMESTAMP 1`
//! ([`LATE_WRITE_TIMESTAMP_MICROS`]). Whatever the arrival order, every cell
//! of a merged copy has the higher timestamp and wins, so the stored row is
//! the merged one with `late = false`; a heartbeat that only ever arrived late
//! stays stored with `late = true`. The low timestamp does not shorten the
//! TTL: expiry counts from when the write reaches the replica.
//!
//! The schema ships as CQL files (`svc-stream/cql/*.cql`, embedded with
//! `include_str!`) applied in order on every start with `IF NOT EXISTS`;
//! statements are prepared once in [`ScyllaMirror::connect`].
//!
//! This file is the adapter ([`ScyllaMirror`]); beside it, by job: `config`
//! (settings and their checks), `schema` (keyspace and tables DDL),
//! `statements` (the CQL and its preparation), `rows` (bound values and row
//! mapping) and `errors` (driver errors as [`SinkError`]s). Everything that
//! can be checked without a server lives in those pure functions, tested
//! where they are; the round trip against a real cluster is the gated test
//! `tests/scylla_gated.rs` (`HB_TEST_SCYLLA=host:port`).

mod config;
mod errors;
mod rows;
mod schema;
mod statements;
#[cfg(test)]
mod testing;

use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;

use super::{RawHeartbeat, RawMirror, SinkError};
use errors::{
    execution_error_is_transient, new_session_error_is_transient, next_row_error_is_transient,
    pager_error_is_transient, sink_error,
};
use rows::{
    hour_key, hour_values, replay_order, row_from, ttl_bind_value, user_video_values, StoredRow,
};
use statements::{write_kind, Statements, Table};

pub use config::{
    parse_consistency, ScyllaConfig, DEFAULT_MAX_IN_FLIGHT, DEFAULT_REPLAY_PAGE_SIZE,
    DEFAULT_TTL_SECS, MAX_TTL_SECS,
};
pub use schema::{schema_statements, KEYSPACE_CQL, TABLES_CQL};
pub use scylla::statement::Consistency;
pub use statements::{
    DELETE_BY_HOUR, DELETE_BY_USER_VIDEO, INSERT_BY_HOUR, INSERT_BY_HOUR_LATE,
    INSERT_BY_USER_VIDEO, INSERT_BY_USER_VIDEO_LATE, LATE_WRITE_TIMESTAMP_MICROS, SELECT_REPLAY,
};

/// The raw mirror on a ScyllaDB cluster: one driver session (token- and
/// shard-aware) and the statements prepared at connect.
pub struct ScyllaMirror {
    session: Session,
    statements: Statements,
    ttl_secs: i32,
    max_in_flight: usize,
}

impl std::fmt::Debug for ScyllaMirror {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScyllaMirror")
            .field("ttl_secs", &self.ttl_secs)
            .field("max_in_flight", &self.max_in_flight)
            .finish_non_exhaustive()
    }
}

impl ScyllaMirror {
    /// Connects to the cluster, applies the schema (idempotent: `IF NOT
    /// EXISTS`, schema agreement awaited by the driver after each DDL) and
    /// prepares the statements. Configuration and schema errors are
    /// [`SinkError::Fatal`]; an unreachable cluster is [`SinkError::Unavailable`].
    pub async fn connect(config: &ScyllaConfig) -> Result<ScyllaMirror, SinkError> {
        let schema = schema_statements(config)?;
        if config.nodes.is_empty() {
            return Err(SinkError::Fatal(
                "scylla: no contact nodes configured".into(),
            ));
        }
        if config.replay_page_size <= 0 || config.max_in_flight == 0 {
            return Err(SinkError::Fatal(
                "scylla: replay_page_size and max_in_flight must be positive".into(),
            ));
        }

        let mut builder = SessionBuilder::new().known_nodes(&config.nodes);
        if let Some(dc) = &config.local_dc {
            builder = builder.prefer_datacenter(dc.clone());
        }
        let session = builder.build().await.map_err(|err| {
            let transient = new_session_error_is_transient(&err);
            sink_error("scylla connect", &err, transient)
        })?;

        if let Some(dc) = &config.local_dc {
            let cluster = session.get_cluster_state();
            let known = cluster
                .get_nodes_info()
                .iter()
                .any(|node| node.datacenter.as_deref() == Some(dc.as_str()));
            if !known {
                return Err(SinkError::Fatal(format!(
                    "scylla: local datacenter {dc:?} has no node in the cluster"
                )));
            }
        }

        for statement in &schema {
            session
                .query_unpaged(statement.as_str(), &[])
                .await
                .map_err(|err| {
                    let transient = execution_error_is_transient(&err);
                    sink_error("scylla schema", &err, transient)
                })?;
        }
        tracing::info!(keyspace = %config.keyspace, statements = schema.len(), "scylla raw mirror schema applied");

        let statements = Statements::prepare(&session, config).await?;
        Ok(ScyllaMirror {
            session,
            statements,
            ttl_secs: ttl_bind_value(config.ttl_secs),
            max_in_flight: config.max_in_flight,
        })
    }

    /// Writes one row into one table.
    async fn insert(&self, row: &RawHeartbeat, table: Table) -> Result<(), SinkError> {
        let statement = self.statements.insert(table, write_kind(row));
        let result = match table {
            Table::ByUserVideo => {
                self.session
                    .execute_unpaged(statement, user_video_values(row, self.ttl_secs))
                    .await
            }
            Table::ByHour => {
                self.session
                    .execute_unpaged(statement, hour_values(row, self.ttl_secs))
                    .await
            }
        };
        result.map(drop).map_err(|err| {
            let transient = execution_error_is_transient(&err);
            sink_error(table.insert_context(), &err, transient)
        })
    }
}

#[async_trait]
impl RawMirror for ScyllaMirror {
    /// Every row goes to both tables as individual prepared, idempotent
    /// inserts, up to `max_in_flight` at once; returns once all are
    /// acknowledged at the configured consistency, or with the first error
    /// (the caller retries the whole call: rewriting is harmless).
    ///
    /// Why individual statements rather than UNLOGGED batches grouped by
    /// partition: each row lands in two different partitions of two tables,
    /// and one call carries heartbeats of many `(user_id, video_id)` keys, so
    /// by_user_video batches would hold about one row each; a prepared
    /// statement with its partition key bound is routed by the driver straight
    /// to a replica's owning shard (no coordinator fan-out, which multi-row
    /// batches pay), retries are per statement, and there is no batch size
    /// threshold to trip.
    async fn write(&self, rows: &[RawHeartbeat]) -> Result<(), SinkError> {
        futures::stream::iter(
            rows.iter()
                .flat_map(|row| Table::ALL.map(|table| Ok::<_, SinkError>((row, table)))),
        )
        .try_for_each_concurrent(self.max_in_flight, |(row, table)| self.insert(row, table))
        .await
    }

    /// For each video, reads the user's partition of `by_user_video`,
    /// deletes each of its rows from `by_hour` by full primary key (hour and
    /// bucket follow from the row, as when it was written), then the
    /// partition itself: a failure part-way leaves the partition to find
    /// the rest from when the call is retried. Deletes carry the time of
    /// the call, above any earlier write (late rows are written at
    /// timestamp 1).
    async fn erase_user(&self, user_id: &str, videos: &[String]) -> Result<u64, SinkError> {
        let mut erased = 0;
        for video_id in videos {
            let rows = self.replay(user_id, video_id, i64::MIN, i64::MAX).await?;
            futures::stream::iter(rows.iter().map(Ok::<_, SinkError>))
                .try_for_each_concurrent(self.max_in_flight, |row| async move {
                    self.session
                        .execute_unpaged(&self.statements.delete_by_hour, hour_key(row))
                        .await
                        .map(drop)
                        .map_err(|err| {
                            let transient = execution_error_is_transient(&err);
                            sink_error("scylla delete from by_hour", &err, transient)
                        })
                })
                .await?;
            self.session
                .execute_unpaged(
                    &self.statements.delete_by_user_video,
                    (user_id, video_id.as_str()),
                )
                .await
                .map_err(|err| {
                    let transient = execution_error_is_transient(&err);
                    sink_error("scylla delete from by_user_video", &err, transient)
                })?;
            erased += rows.len() as u64;
        }
        Ok(erased)
    }

    /// Reads by_user_video naming the full partition key, through every page.
    async fn replay(
        &self,
        user_id: &str,
        video_id: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<RawHeartbeat>, SinkError> {
        if from_ms > to_ms {
            return Ok(Vec::new());
        }
        let pager = self
            .session
            .execute_iter(
                self.statements.replay.clone(),
                (user_id, video_id, from_ms, to_ms),
            )
            .await
            .map_err(|err| {
                let transient = pager_error_is_transient(&err);
                sink_error("scylla replay", &err, transient)
            })?;
        let mut stream = pager
            .rows_stream::<StoredRow>()
            .map_err(|err| sink_error("scylla replay", &err, false))?;
        let mut rows = Vec::new();
        while let Some(next) = stream.next().await {
            let stored = next.map_err(|err| {
                let transient = next_row_error_is_transient(&err);
                sink_error("scylla replay", &err, transient)
            })?;
            rows.push(row_from(stored));
        }
        // The clustering order already is (event_time_ms, event_id); sorting
        // keeps the contract independent of the table's clustering order.
        rows.sort_by(replay_order);
        Ok(rows)
    }
}
