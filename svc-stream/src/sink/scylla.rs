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
//! Everything that can be checked without a server (schema text, statement
//! text, bound values, row mapping, error classification) lives in pure
//! functions tested below; the round trip against a real cluster is the gated
//! test `tests/scylla_gated.rs` (`HB_TEST_SCYLLA=host:port`).

use std::cmp::Ordering;

use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::errors::{
    DbError, ExecutionError, NewSessionError, NextPageError, NextRowError, PagerExecutionError,
    PrepareError, RequestAttemptError,
};
use scylla::statement::prepared::PreparedStatement;
use scylla::{DeserializeRow, SerializeRow};

use super::{RawHeartbeat, RawMirror, SinkError};

pub use scylla::statement::Consistency;

/// Write timestamp (microseconds) of late rows: below any real write
/// timestamp, so a merged copy of the same heartbeat always wins.
pub const LATE_WRITE_TIMESTAMP_MICROS: i64 = 1;

/// Longest TTL ScyllaDB accepts (20 years).
pub const MAX_TTL_SECS: u32 = 630_720_000;

/// Default `HB_RAW_TTL`: 30 days.
pub const DEFAULT_TTL_SECS: u32 = 30 * 86_400;

/// Rows per page when replaying (the driver fetches the next page while the
/// previous one is consumed).
pub const DEFAULT_REPLAY_PAGE_SIZE: i32 = 5_000;

/// Statements in flight per `write` call.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 256;

/// Keyspace DDL template (`{keyspace}`, `{replication}`).
pub const KEYSPACE_CQL: &str = include_str!("../../cql/0001_keyspace.cql");

/// Tables DDL template (`{keyspace}`, `{ttl_secs}`).
pub const TABLES_CQL: &str = include_str!("../../cql/0002_tables.cql");

/// Insert of a merged row into `by_user_video` (`{keyspace}` template).
pub const INSERT_BY_USER_VIDEO: &str = "INSERT INTO {keyspace}.by_user_video \
     (event_id, user_id, video_id, device_id, event_time_ms, position_ms, state, ad_id, \
     platform, app_version, country, bitrate_kbps, late) \
     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) USING TTL ?";

/// Insert of a late row into `by_user_video`: loses to any merged write.
pub const INSERT_BY_USER_VIDEO_LATE: &str = "INSERT INTO {keyspace}.by_user_video \
     (event_id, user_id, video_id, device_id, event_time_ms, position_ms, state, ad_id, \
     platform, app_version, country, bitrate_kbps, late) \
     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) USING TTL ? AND TIMESTAMP 1";

/// Insert of a merged row into `by_hour` (`{keyspace}` template).
pub const INSERT_BY_HOUR: &str = "INSERT INTO {keyspace}.by_hour \
     (hour_ms, bucket, event_id, user_id, video_id, device_id, event_time_ms, position_ms, \
     state, ad_id, platform, app_version, country, bitrate_kbps, late) \
     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) USING TTL ?";

/// Insert of a late row into `by_hour`: loses to any merged write.
pub const INSERT_BY_HOUR_LATE: &str = "INSERT INTO {keyspace}.by_hour \
     (hour_ms, bucket, event_id, user_id, video_id, device_id, event_time_ms, position_ms, \
     state, ad_id, platform, app_version, country, bitrate_kbps, late) \
     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) USING TTL ? AND TIMESTAMP 1";

/// One user's viewing of one video in `[from_ms, to_ms]`: names the full
/// partition key, so it reads one partition (`{keyspace}` template).
pub const SELECT_REPLAY: &str = "SELECT event_id, user_id, video_id, device_id, event_time_ms, \
     position_ms, state, ad_id, platform, app_version, country, bitrate_kbps, late \
     FROM {keyspace}.by_user_video \
     WHERE user_id = ? AND video_id = ? AND event_time_ms >= ? AND event_time_ms <= ?";

/// Where and how the raw mirror connects. Plain data: the service maps its
/// env vars onto it (`HB_RAW_TTL` -> `ttl_secs`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScyllaConfig {
    /// Contact points, `host:port` (port 9042 by default on ScyllaDB); the
    /// driver discovers the rest of the cluster from them.
    pub nodes: Vec<String>,
    /// Keyspace holding the mirror tables; default `heartbeats`. Lowercase
    /// letters, digits and `_`, starting with a letter, at most 48 bytes.
    pub keyspace: String,
    /// Replicas per datacenter when the keyspace is created; default 3, 1 for
    /// a single dev node. An existing keyspace is never altered.
    pub replication_factor: u32,
    /// Row TTL in seconds (`HB_RAW_TTL`, default 30 days), `1..=MAX_TTL_SECS`.
    pub ttl_secs: u32,
    /// Datacenter whose nodes are preferred, and which alone gets replicas when
    /// the keyspace is created; `None` replicates `replication_factor` times
    /// in every datacenter.
    pub local_dc: Option<String>,
    /// Consistency of writes and replays; default `LOCAL_QUORUM`.
    pub consistency: Consistency,
    /// Rows per page when replaying; default [`DEFAULT_REPLAY_PAGE_SIZE`].
    pub replay_page_size: i32,
    /// Insert statements in flight per `write` call; default
    /// [`DEFAULT_MAX_IN_FLIGHT`].
    pub max_in_flight: usize,
}

impl Default for ScyllaConfig {
    fn default() -> Self {
        Self {
            nodes: vec!["127.0.0.1:9042".to_owned()],
            keyspace: "heartbeats".to_owned(),
            replication_factor: 3,
            ttl_secs: DEFAULT_TTL_SECS,
            local_dc: None,
            consistency: Consistency::LocalQuorum,
            replay_page_size: DEFAULT_REPLAY_PAGE_SIZE,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
        }
    }
}

/// Parses a consistency level as operators write it (`LOCAL_QUORUM`,
/// `quorum`, `local_one`, ...). Only levels valid for both writes and reads
/// are accepted (not `ANY`, `EACH_QUORUM`, `SERIAL`).
pub fn parse_consistency(text: &str) -> Result<Consistency, String> {
    match text.trim().to_ascii_uppercase().replace('-', "_").as_str() {
        "ONE" => Ok(Consistency::One),
        "TWO" => Ok(Consistency::Two),
        "THREE" => Ok(Consistency::Three),
        "QUORUM" => Ok(Consistency::Quorum),
        "ALL" => Ok(Consistency::All),
        "LOCAL_QUORUM" => Ok(Consistency::LocalQuorum),
        "LOCAL_ONE" => Ok(Consistency::LocalOne),
        _ => Err(format!(
            "invalid consistency {text:?}: use ONE, TWO, THREE, QUORUM, ALL, LOCAL_QUORUM or LOCAL_ONE"
        )),
    }
}

/// The schema statements for `config`, in the order they must run: the
/// keyspace, then the tables. Fails on a config that would render invalid
/// or unsafe CQL (bad keyspace name, RF 0, TTL out of range).
pub fn schema_statements(config: &ScyllaConfig) -> Result<Vec<String>, SinkError> {
    check_config(config)?;
    let replication = replication_map(config);
    let ttl_secs = config.ttl_secs.to_string();
    let statements = [KEYSPACE_CQL, TABLES_CQL]
        .into_iter()
        .flat_map(split_statements)
        .map(|statement| {
            statement
                .replace("{keyspace}", &config.keyspace)
                .replace("{replication}", &replication)
                .replace("{ttl_secs}", &ttl_secs)
        })
        .collect();
    Ok(statements)
}

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

/// The two mirror tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Table {
    ByUserVideo,
    ByHour,
}

impl Table {
    const ALL: [Table; 2] = [Table::ByUserVideo, Table::ByHour];

    fn insert_context(self) -> &'static str {
        match self {
            Table::ByUserVideo => "scylla insert into by_user_video",
            Table::ByHour => "scylla insert into by_hour",
        }
    }
}

/// Whether a row is written to win (merged) or to lose (late) against
/// another copy of the same heartbeat.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WriteKind {
    Merged,
    Late,
}

fn write_kind(row: &RawHeartbeat) -> WriteKind {
    if row.late {
        WriteKind::Late
    } else {
        WriteKind::Merged
    }
}

/// The insert CQL template for a table and kind of write.
fn insert_cql(table: Table, kind: WriteKind) -> &'static str {
    match (table, kind) {
        (Table::ByUserVideo, WriteKind::Merged) => INSERT_BY_USER_VIDEO,
        (Table::ByUserVideo, WriteKind::Late) => INSERT_BY_USER_VIDEO_LATE,
        (Table::ByHour, WriteKind::Merged) => INSERT_BY_HOUR,
        (Table::ByHour, WriteKind::Late) => INSERT_BY_HOUR_LATE,
    }
}

/// Fills the keyspace into a statement template.
fn render(template: &str, keyspace: &str) -> String {
    template.replace("{keyspace}", keyspace)
}

/// Statements prepared once per process.
struct Statements {
    /// Indexed by [`Statements::slot`].
    inserts: Vec<PreparedStatement>,
    replay: PreparedStatement,
}

impl Statements {
    const KINDS: [WriteKind; 2] = [WriteKind::Merged, WriteKind::Late];

    fn slot(table: Table, kind: WriteKind) -> usize {
        let table_index = match table {
            Table::ByUserVideo => 0,
            Table::ByHour => 1,
        };
        let kind_index = match kind {
            WriteKind::Merged => 0,
            WriteKind::Late => 1,
        };
        table_index * 2 + kind_index
    }

    async fn prepare(session: &Session, config: &ScyllaConfig) -> Result<Self, SinkError> {
        let mut inserts = Vec::with_capacity(4);
        for table in Table::ALL {
            for kind in Self::KINDS {
                debug_assert_eq!(inserts.len(), Self::slot(table, kind));
                let cql = render(insert_cql(table, kind), &config.keyspace);
                let mut statement = prepare(session, &cql).await?;
                // A plain INSERT of fixed values (no counter, no LWT, no
                // collection append): applying it twice gives the same row,
                // so the driver may retry it and speculate.
                statement.set_is_idempotent(true);
                statement.set_consistency(config.consistency);
                inserts.push(statement);
            }
        }
        let mut replay = prepare(session, &render(SELECT_REPLAY, &config.keyspace)).await?;
        replay.set_is_idempotent(true);
        replay.set_consistency(config.consistency);
        replay.set_page_size(config.replay_page_size);
        Ok(Self { inserts, replay })
    }

    fn insert(&self, table: Table, kind: WriteKind) -> &PreparedStatement {
        &self.inserts[Self::slot(table, kind)]
    }
}

async fn prepare(session: &Session, cql: &str) -> Result<PreparedStatement, SinkError> {
    session.prepare(cql).await.map_err(|err| {
        let transient = prepare_error_is_transient(&err);
        sink_error("scylla prepare", &err, transient)
    })
}

/// Bound values of [`INSERT_BY_USER_VIDEO`] / [`INSERT_BY_USER_VIDEO_LATE`],
/// matched to the bind markers by name (`[ttl]` is the name ScyllaDB gives
/// the `USING TTL ?` marker), so a reordered column list cannot swap values.
#[derive(Clone, Debug, PartialEq, Eq, SerializeRow)]
struct UserVideoValues<'a> {
    event_id: &'a str,
    user_id: &'a str,
    video_id: &'a str,
    device_id: &'a str,
    event_time_ms: i64,
    position_ms: i64,
    state: i32,
    ad_id: &'a str,
    platform: &'a str,
    app_version: &'a str,
    country: &'a str,
    bitrate_kbps: i64,
    late: bool,
    #[scylla(rename = "[ttl]")]
    ttl: i32,
}

/// Bound values of [`INSERT_BY_HOUR`] / [`INSERT_BY_HOUR_LATE`].
#[derive(Clone, Debug, PartialEq, Eq, SerializeRow)]
struct HourValues<'a> {
    hour_ms: i64,
    bucket: i32,
    event_id: &'a str,
    user_id: &'a str,
    video_id: &'a str,
    device_id: &'a str,
    event_time_ms: i64,
    position_ms: i64,
    state: i32,
    ad_id: &'a str,
    platform: &'a str,
    app_version: &'a str,
    country: &'a str,
    bitrate_kbps: i64,
    late: bool,
    #[scylla(rename = "[ttl]")]
    ttl: i32,
}

fn user_video_values(row: &RawHeartbeat, ttl: i32) -> UserVideoValues<'_> {
    UserVideoValues {
        event_id: &row.event_id,
        user_id: &row.user_id,
        video_id: &row.video_id,
        device_id: &row.device_id,
        event_time_ms: row.event_time_ms,
        position_ms: row.position_ms,
        state: row.state,
        ad_id: &row.ad_id,
        platform: &row.platform,
        app_version: &row.app_version,
        country: &row.country,
        bitrate_kbps: row.bitrate_kbps,
        late: row.late,
        ttl,
    }
}

fn hour_values(row: &RawHeartbeat, ttl: i32) -> HourValues<'_> {
    HourValues {
        hour_ms: hb_common::raw::hour_ms(row.event_time_ms),
        bucket: hb_common::raw::bucket(&row.event_id),
        event_id: &row.event_id,
        user_id: &row.user_id,
        video_id: &row.video_id,
        device_id: &row.device_id,
        event_time_ms: row.event_time_ms,
        position_ms: row.position_ms,
        state: row.state,
        ad_id: &row.ad_id,
        platform: &row.platform,
        app_version: &row.app_version,
        country: &row.country,
        bitrate_kbps: row.bitrate_kbps,
        late: row.late,
        ttl,
    }
}

/// A row of [`SELECT_REPLAY`], matched to the result columns by name.
/// Context columns read a null (a row written by another tool) as empty.
#[derive(Clone, Debug, PartialEq, Eq, DeserializeRow)]
struct StoredRow {
    event_id: String,
    user_id: String,
    video_id: String,
    #[scylla(default_when_null)]
    device_id: String,
    event_time_ms: i64,
    #[scylla(default_when_null)]
    position_ms: i64,
    #[scylla(default_when_null)]
    state: i32,
    #[scylla(default_when_null)]
    ad_id: String,
    #[scylla(default_when_null)]
    platform: String,
    #[scylla(default_when_null)]
    app_version: String,
    #[scylla(default_when_null)]
    country: String,
    #[scylla(default_when_null)]
    bitrate_kbps: i64,
    #[scylla(default_when_null)]
    late: bool,
}

fn row_from(stored: StoredRow) -> RawHeartbeat {
    RawHeartbeat {
        event_id: stored.event_id,
        user_id: stored.user_id,
        video_id: stored.video_id,
        device_id: stored.device_id,
        event_time_ms: stored.event_time_ms,
        position_ms: stored.position_ms,
        state: stored.state,
        ad_id: stored.ad_id,
        platform: stored.platform,
        app_version: stored.app_version,
        country: stored.country,
        bitrate_kbps: stored.bitrate_kbps,
        late: stored.late,
    }
}

fn replay_order(a: &RawHeartbeat, b: &RawHeartbeat) -> Ordering {
    (a.event_time_ms, &a.event_id).cmp(&(b.event_time_ms, &b.event_id))
}

/// The TTL as CQL binds it (`int`); `check_config` keeps it in range.
fn ttl_bind_value(ttl_secs: u32) -> i32 {
    i32::try_from(ttl_secs.min(MAX_TTL_SECS)).unwrap_or(i32::MAX)
}

fn check_config(config: &ScyllaConfig) -> Result<(), SinkError> {
    check_keyspace_name(&config.keyspace)?;
    if config.replication_factor == 0 {
        return Err(SinkError::Fatal(
            "scylla: replication_factor must be at least 1".into(),
        ));
    }
    if config.ttl_secs == 0 || config.ttl_secs > MAX_TTL_SECS {
        return Err(SinkError::Fatal(format!(
            "scylla: ttl_secs {} out of range 1..={MAX_TTL_SECS}",
            config.ttl_secs
        )));
    }
    if let Some(dc) = &config.local_dc {
        if dc.trim().is_empty() || dc.chars().any(char::is_control) {
            return Err(SinkError::Fatal(format!(
                "scylla: invalid local datacenter name {dc:?}"
            )));
        }
    }
    Ok(())
}

/// Keyspace names go into CQL text unquoted: only what CQL reads back
/// unchanged (lowercase identifier, at most 48 bytes) is accepted.
fn check_keyspace_name(name: &str) -> Result<(), SinkError> {
    let mut chars = name.chars();
    let valid = name.len() <= 48
        && chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if valid {
        Ok(())
    } else {
        Err(SinkError::Fatal(format!(
            "scylla: invalid keyspace name {name:?}: use lowercase letters, digits and _, \
             starting with a letter, at most 48 bytes"
        )))
    }
}

/// The replication map of the keyspace: NetworkTopologyStrategy, with the RF
/// for the local datacenter only when one is configured, else for every one.
fn replication_map(config: &ScyllaConfig) -> String {
    let rf = config.replication_factor;
    match &config.local_dc {
        Some(dc) => format!(
            "{{'class': 'NetworkTopologyStrategy', '{}': {rf}}}",
            dc.replace('\'', "''")
        ),
        None => format!("{{'class': 'NetworkTopologyStrategy', 'replication_factor': {rf}}}"),
    }
}

/// Splits a CQL file into statements: drops `--` comments, splits on `;`,
/// trims, skips empty pieces. The shipped files keep `;` and `--` out of
/// string literals, and placeholders are filled only after splitting, so
/// config values cannot change where statements end.
fn split_statements(file: &str) -> Vec<String> {
    let without_comments: String = file
        .lines()
        .map(|line| match line.find("--") {
            Some(start) => &line[..start],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n");
    without_comments
        .split(';')
        .map(str::trim)
        .filter(|statement| !statement.is_empty())
        .map(str::to_owned)
        .collect()
}

fn sink_error(context: &str, err: &dyn std::fmt::Display, transient: bool) -> SinkError {
    let message = format!("{context}: {err}");
    if transient {
        SinkError::Unavailable(message)
    } else {
        SinkError::Fatal(message)
    }
}

/// Errors a server sends. Transient: too few replicas, timeouts, overload,
/// rate limits, bootstrapping nodes, server-side failures. Permanent: the
/// statement, the schema, the credentials or the protocol are wrong.
fn db_error_is_transient(err: &DbError) -> bool {
    match err {
        DbError::SyntaxError
        | DbError::Invalid
        | DbError::AlreadyExists { .. }
        | DbError::FunctionFailure { .. }
        | DbError::AuthenticationError
        | DbError::Unauthorized
        | DbError::ConfigError
        | DbError::ProtocolError => false,
        DbError::Unavailable { .. }
        | DbError::Overloaded
        | DbError::IsBootstrapping
        | DbError::TruncateError
        | DbError::ReadTimeout { .. }
        | DbError::WriteTimeout { .. }
        | DbError::ReadFailure { .. }
        | DbError::WriteFailure { .. }
        | DbError::Unprepared { .. }
        | DbError::ServerError
        | DbError::RateLimitReached { .. }
        | DbError::Other(_) => true,
        // Unknown future codes: retrying an idempotent statement is harmless.
        _ => true,
    }
}

fn attempt_error_is_transient(err: &RequestAttemptError) -> bool {
    match err {
        RequestAttemptError::DbError(db_error, _) => db_error_is_transient(db_error),
        RequestAttemptError::UnableToAllocStreamId
        | RequestAttemptError::BrokenConnectionError(_) => true,
        // Bad values, unparsable frames, statement ids that changed under us:
        // retrying sends the same thing again.
        RequestAttemptError::SerializationError(_)
        | RequestAttemptError::CqlRequestSerialization(_)
        | RequestAttemptError::BodyExtensionsParseError(_)
        | RequestAttemptError::CqlResultParseError(_)
        | RequestAttemptError::CqlErrorParseError(_)
        | RequestAttemptError::UnexpectedResponse(_)
        | RequestAttemptError::RepreparedIdChanged { .. }
        | RequestAttemptError::RepreparedIdMissingInBatch
        | RequestAttemptError::NonfinishedPagingState => false,
        _ => true,
    }
}

fn execution_error_is_transient(err: &ExecutionError) -> bool {
    match err {
        ExecutionError::BadQuery(_) => false,
        ExecutionError::PrepareError(prepare_error) => prepare_error_is_transient(prepare_error),
        ExecutionError::LastAttemptError(attempt) => attempt_error_is_transient(attempt),
        // No node to send to (all local nodes down), no connection, client
        // timeout, schema agreement or metadata refresh failing: the cluster
        // state, not the statement. (A misnamed local_dc is caught at connect.)
        ExecutionError::EmptyPlan
        | ExecutionError::ConnectionPoolError(_)
        | ExecutionError::RequestTimeout(_)
        | ExecutionError::UseKeyspaceError(_)
        | ExecutionError::SchemaAgreementError(_)
        | ExecutionError::MetadataError(_) => true,
        _ => true,
    }
}

fn prepare_error_is_transient(err: &PrepareError) -> bool {
    match err {
        PrepareError::AllAttemptsFailed { first_attempt } => {
            attempt_error_is_transient(first_attempt)
        }
        PrepareError::ConnectionPoolError(_) | PrepareError::PreparedStatementIdsMismatch => true,
        _ => true,
    }
}

fn pager_error_is_transient(err: &PagerExecutionError) -> bool {
    match err {
        PagerExecutionError::PrepareError(prepare_error) => {
            prepare_error_is_transient(prepare_error)
        }
        PagerExecutionError::SerializationError(_) => false,
        PagerExecutionError::NextPageError(page_error) => next_page_error_is_transient(page_error),
        _ => true,
    }
}

fn next_page_error_is_transient(err: &NextPageError) -> bool {
    match err {
        NextPageError::RequestFailure(request_error) => {
            execution_error_is_transient(&request_error.clone().into_execution_error())
        }
        NextPageError::PartitionKeyError(_)
        | NextPageError::ResultMetadataParseError(_)
        | NextPageError::TypeCheckError(_) => false,
        _ => true,
    }
}

fn next_row_error_is_transient(err: &NextRowError) -> bool {
    match err {
        NextRowError::NextPageError(page_error) => next_page_error_is_transient(page_error),
        NextRowError::RowDeserializationError(_) => false,
        _ => true,
    }
}

fn new_session_error_is_transient(err: &NewSessionError) -> bool {
    match err {
        NewSessionError::EmptyKnownNodesList | NewSessionError::IllegalConfig(_) => false,
        // Unresolvable names (DNS not ready yet), nodes not answering.
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use hb_common::raw::HOUR_MS;
    use scylla::deserialize::row::{ColumnIterator, DeserializeRow};
    use scylla::deserialize::FrameSlice;
    use scylla::errors::{OperationType, WriteType};
    use scylla::frame::response::result::{ColumnSpec, ColumnType, NativeType, TableSpec};
    use scylla::serialize::row::{RowSerializationContext, SerializeRow};
    use scylla::serialize::writers::RowWriter;

    use super::*;

    fn heartbeat(event_id: &str, event_time_ms: i64, late: bool) -> RawHeartbeat {
        RawHeartbeat {
            event_id: event_id.to_owned(),
            user_id: "user-1".to_owned(),
            video_id: "video-9".to_owned(),
            device_id: "tv-3".to_owned(),
            event_time_ms,
            position_ms: 61_000,
            state: 1,
            ad_id: "ad-7".to_owned(),
            platform: "android".to_owned(),
            app_version: "5.2.0".to_owned(),
            country: "DE".to_owned(),
            bitrate_kbps: 4_500,
            late,
        }
    }

    fn config(keyspace: &str) -> ScyllaConfig {
        ScyllaConfig {
            keyspace: keyspace.to_owned(),
            ..ScyllaConfig::default()
        }
    }

    /// `name type` pairs of a CREATE TABLE statement, in declaration order.
    fn table_columns(create: &str) -> Vec<(String, String)> {
        let body_start = create.find('(').expect("column list");
        create[body_start + 1..]
            .lines()
            .map(|line| line.trim().trim_end_matches(','))
            .filter(|line| !line.is_empty() && !line.starts_with("PRIMARY KEY"))
            .take_while(|line| !line.starts_with(')'))
            .map(|line| {
                let (name, typ) = line.split_once(' ').expect("name type");
                (name.to_owned(), typ.trim().to_owned())
            })
            .collect()
    }

    fn primary_key(create: &str) -> &str {
        let start = create.find("PRIMARY KEY ").expect("primary key") + "PRIMARY KEY ".len();
        let line_end = create[start..].find('\n').expect("line end") + start;
        &create[start..line_end]
    }

    /// Column names of an INSERT, in order.
    fn insert_columns(insert: &str) -> Vec<String> {
        let start = insert.find('(').expect("column list") + 1;
        let end = insert.find(')').expect("column list end");
        insert[start..end]
            .split(',')
            .map(|name| name.trim().to_owned())
            .collect()
    }

    fn select_columns(select: &str) -> Vec<String> {
        let start = "SELECT ".len();
        let end = select.find(" FROM ").expect("from");
        select[start..end]
            .split(',')
            .map(|name| name.trim().to_owned())
            .collect()
    }

    fn native(typ: &str) -> ColumnType<'static> {
        match typ {
            "text" => ColumnType::Native(NativeType::Text),
            "bigint" => ColumnType::Native(NativeType::BigInt),
            "int" => ColumnType::Native(NativeType::Int),
            "boolean" => ColumnType::Native(NativeType::Boolean),
            other => panic!("unexpected column type {other}"),
        }
    }

    fn create_table<'a>(statements: &'a [String], table: &str) -> &'a str {
        let prefix = format!("CREATE TABLE IF NOT EXISTS hb_unit.{table} (");
        statements
            .iter()
            .find(|statement| statement.starts_with(&prefix))
            .expect("create table")
    }

    /// The bind marker specs a server would send for `insert`: the column
    /// types from the CREATE TABLE text, then `[ttl] int`.
    fn insert_specs(insert: &str, create: &str, table: &'static str) -> Vec<ColumnSpec<'static>> {
        let types: BTreeMap<String, String> = table_columns(create).into_iter().collect();
        let mut specs: Vec<ColumnSpec<'static>> = insert_columns(insert)
            .into_iter()
            .map(|name| {
                let typ = native(types.get(&name).expect("column declared in the table"));
                ColumnSpec::owned(name, typ, TableSpec::borrowed("hb_unit", table))
            })
            .collect();
        specs.push(ColumnSpec::owned(
            "[ttl]".to_owned(),
            native("int"),
            TableSpec::borrowed("hb_unit", table),
        ));
        specs
    }

    /// Serializes `values` through the driver against `specs` and returns the
    /// cells by bind marker name.
    fn serialize_by_name(
        values: &impl SerializeRow,
        specs: &[ColumnSpec<'_>],
    ) -> BTreeMap<String, Vec<u8>> {
        let mut buf = Vec::new();
        let mut writer = RowWriter::new(&mut buf);
        values
            .serialize(&RowSerializationContext::from_specs(specs), &mut writer)
            .expect("values serialize against the statement's markers");
        assert_eq!(writer.value_count(), specs.len());
        let cells = split_cells(&buf);
        specs
            .iter()
            .map(|spec| spec.name().to_owned())
            .zip(cells)
            .collect()
    }

    /// Splits `[int length][bytes]*` cells.
    fn split_cells(mut buf: &[u8]) -> Vec<Vec<u8>> {
        let mut cells = Vec::new();
        while !buf.is_empty() {
            let (len, rest) = buf.split_at(4);
            let len = usize::try_from(i32::from_be_bytes(len.try_into().unwrap()))
                .expect("no null or unset cell");
            cells.push(rest[..len].to_vec());
            buf = &rest[len..];
        }
        cells
    }

    fn expected_cells(row: &RawHeartbeat, ttl: i32) -> BTreeMap<String, Vec<u8>> {
        let text = |s: &str| s.as_bytes().to_vec();
        BTreeMap::from([
            ("event_id".into(), text(&row.event_id)),
            ("user_id".into(), text(&row.user_id)),
            ("video_id".into(), text(&row.video_id)),
            ("device_id".into(), text(&row.device_id)),
            (
                "event_time_ms".into(),
                row.event_time_ms.to_be_bytes().to_vec(),
            ),
            ("position_ms".into(), row.position_ms.to_be_bytes().to_vec()),
            ("state".into(), row.state.to_be_bytes().to_vec()),
            ("ad_id".into(), text(&row.ad_id)),
            ("platform".into(), text(&row.platform)),
            ("app_version".into(), text(&row.app_version)),
            ("country".into(), text(&row.country)),
            (
                "bitrate_kbps".into(),
                row.bitrate_kbps.to_be_bytes().to_vec(),
            ),
            ("late".into(), vec![u8::from(row.late)]),
            ("[ttl]".into(), ttl.to_be_bytes().to_vec()),
        ])
    }

    const BY_USER_VIDEO_COLUMNS: [(&str, &str); 13] = [
        ("user_id", "text"),
        ("video_id", "text"),
        ("event_time_ms", "bigint"),
        ("event_id", "text"),
        ("device_id", "text"),
        ("position_ms", "bigint"),
        ("state", "int"),
        ("ad_id", "text"),
        ("platform", "text"),
        ("app_version", "text"),
        ("country", "text"),
        ("bitrate_kbps", "bigint"),
        ("late", "boolean"),
    ];

    #[test]
    fn schema_is_the_keyspace_then_both_tables() {
        let statements = schema_statements(&config("hb_unit")).unwrap();
        assert_eq!(statements.len(), 3);
        assert_eq!(
            statements[0],
            "CREATE KEYSPACE IF NOT EXISTS hb_unit\n    WITH replication = \
             {'class': 'NetworkTopologyStrategy', 'replication_factor': 3}"
        );
        assert!(statements[1].starts_with("CREATE TABLE IF NOT EXISTS hb_unit.by_user_video ("));
        assert!(statements[2].starts_with("CREATE TABLE IF NOT EXISTS hb_unit.by_hour ("));
        for statement in &statements {
            assert!(statement.contains("IF NOT EXISTS"), "{statement}");
            assert!(!statement.contains('{') || statement.starts_with("CREATE KEYSPACE"));
            assert!(
                !statement.contains("--"),
                "comments are stripped: {statement}"
            );
            assert!(!statement.contains(';'), "{statement}");
            assert_eq!(
                statement.matches('(').count(),
                statement.matches(')').count(),
                "{statement}"
            );
        }
        for table in &statements[1..] {
            assert!(table.ends_with(&format!("default_time_to_live = {DEFAULT_TTL_SECS}")));
            assert!(table.contains("CLUSTERING ORDER BY (event_time_ms ASC, event_id ASC)"));
        }
    }

    #[test]
    fn replication_follows_the_config() {
        let dev = ScyllaConfig {
            replication_factor: 1,
            ttl_secs: 3_600,
            ..config("heartbeats")
        };
        let statements = schema_statements(&dev).unwrap();
        assert!(statements[0].ends_with("'replication_factor': 1}"));
        assert!(statements[1].ends_with("default_time_to_live = 3600"));

        let multi_dc = ScyllaConfig {
            local_dc: Some("eu-west".to_owned()),
            ..config("heartbeats")
        };
        let statements = schema_statements(&multi_dc).unwrap();
        assert!(statements[0].ends_with("{'class': 'NetworkTopologyStrategy', 'eu-west': 3}"));

        let quoted = ScyllaConfig {
            local_dc: Some("o'dc".to_owned()),
            ..config("heartbeats")
        };
        assert!(schema_statements(&quoted).unwrap()[0].contains("'o''dc': 3"));
    }

    #[test]
    fn tables_name_the_full_primary_keys_and_every_column() {
        let statements = schema_statements(&config("hb_unit")).unwrap();
        let by_user_video = create_table(&statements, "by_user_video");
        let by_hour = create_table(&statements, "by_hour");
        assert_eq!(
            primary_key(by_user_video),
            "((user_id, video_id), event_time_ms, event_id)"
        );
        assert_eq!(
            primary_key(by_hour),
            "((hour_ms, bucket), event_time_ms, event_id)"
        );

        let expected: BTreeMap<String, String> = BY_USER_VIDEO_COLUMNS
            .iter()
            .map(|(name, typ)| (name.to_string(), typ.to_string()))
            .collect();
        let user_video: BTreeMap<String, String> =
            table_columns(by_user_video).into_iter().collect();
        assert_eq!(user_video, expected);
        let mut expected_hour = expected;
        expected_hour.insert("hour_ms".into(), "bigint".into());
        expected_hour.insert("bucket".into(), "int".into());
        let hour: BTreeMap<String, String> = table_columns(by_hour).into_iter().collect();
        assert_eq!(hour, expected_hour);
    }

    #[test]
    fn inserts_write_every_column_with_a_ttl() {
        let statements = schema_statements(&config("hb_unit")).unwrap();
        for (table, name) in [
            (Table::ByUserVideo, "by_user_video"),
            (Table::ByHour, "by_hour"),
        ] {
            let create = create_table(&statements, name);
            let mut declared: Vec<String> =
                table_columns(create).into_iter().map(|(n, _)| n).collect();
            declared.sort();
            for kind in [WriteKind::Merged, WriteKind::Late] {
                let insert = render(insert_cql(table, kind), "hb_unit");
                assert!(insert.starts_with(&format!("INSERT INTO hb_unit.{name} (")));
                let mut columns = insert_columns(&insert);
                let markers = insert.matches('?').count();
                assert_eq!(markers, columns.len() + 1, "one marker per column + TTL");
                columns.sort();
                assert_eq!(columns, declared, "{insert}");
                assert!(insert.contains(") USING TTL ?"), "{insert}");
                assert!(!insert.contains("IF NOT EXISTS"), "no LWT: {insert}");
            }
        }
    }

    #[test]
    fn late_rows_get_the_low_timestamp_and_merged_rows_the_default() {
        assert_eq!(write_kind(&heartbeat("e1", 0, true)), WriteKind::Late);
        assert_eq!(write_kind(&heartbeat("e1", 0, false)), WriteKind::Merged);
        for table in Table::ALL {
            let merged = insert_cql(table, write_kind(&heartbeat("e1", 0, false)));
            let late = insert_cql(table, write_kind(&heartbeat("e1", 0, true)));
            assert!(!merged.contains("TIMESTAMP"), "{merged}");
            assert!(late.ends_with(&format!(
                "USING TTL ? AND TIMESTAMP {LATE_WRITE_TIMESTAMP_MICROS}"
            )));
            assert_eq!(
                late,
                format!("{merged} AND TIMESTAMP {LATE_WRITE_TIMESTAMP_MICROS}"),
                "the late statement differs only by its timestamp"
            );
        }
        // Each (table, kind) has its own prepared slot.
        let mut slots: Vec<usize> = Table::ALL
            .iter()
            .flat_map(|&t| Statements::KINDS.map(|k| Statements::slot(t, k)))
            .collect();
        slots.sort();
        assert_eq!(slots, vec![0, 1, 2, 3]);
    }

    #[test]
    fn bound_values_match_the_insert_columns_by_name_and_type() {
        let statements = schema_statements(&config("hb_unit")).unwrap();
        let row = heartbeat("evt-42", 1_700_000_123_456, true);
        let ttl = ttl_bind_value(DEFAULT_TTL_SECS);

        let specs = insert_specs(
            &render(INSERT_BY_USER_VIDEO, "hb_unit"),
            create_table(&statements, "by_user_video"),
            "by_user_video",
        );
        let cells = serialize_by_name(&user_video_values(&row, ttl), &specs);
        assert_eq!(cells, expected_cells(&row, ttl));

        let specs = insert_specs(
            &render(INSERT_BY_HOUR_LATE, "hb_unit"),
            create_table(&statements, "by_hour"),
            "by_hour",
        );
        let cells = serialize_by_name(&hour_values(&row, ttl), &specs);
        let mut expected = expected_cells(&row, ttl);
        expected.insert(
            "hour_ms".into(),
            hb_common::raw::hour_ms(row.event_time_ms)
                .to_be_bytes()
                .to_vec(),
        );
        expected.insert(
            "bucket".into(),
            hb_common::raw::bucket(&row.event_id).to_be_bytes().to_vec(),
        );
        assert_eq!(cells, expected);
        assert_eq!(ttl, 2_592_000);
    }

    #[test]
    fn by_hour_partition_is_exact_at_hour_boundaries() {
        let hour = 473_000 * HOUR_MS;
        let cases = [
            (hour - 1, hour - HOUR_MS),
            (hour, hour),
            (hour + 1, hour),
            (hour + HOUR_MS - 1, hour),
            (hour + HOUR_MS, hour + HOUR_MS),
            (0, 0),
            (-1, -HOUR_MS),
        ];
        for (event_time_ms, expected_hour) in cases {
            let row = heartbeat("evt-b", event_time_ms, false);
            let values = hour_values(&row, 60);
            assert_eq!(
                values.hour_ms, expected_hour,
                "event_time_ms {event_time_ms}"
            );
            assert_eq!(values.event_time_ms, event_time_ms);
            assert_eq!(values.bucket, hb_common::raw::bucket("evt-b"));
            assert!((0..hb_common::raw::BUCKETS).contains(&values.bucket));
        }
        // The bucket depends on the event only, so copies share a partition.
        let merged_row = heartbeat("evt-c", hour, false);
        let late_row = heartbeat("evt-c", hour, true);
        let merged = hour_values(&merged_row, 60);
        let late = hour_values(&late_row, 60);
        assert_eq!((merged.hour_ms, merged.bucket), (late.hour_ms, late.bucket));
    }

    #[test]
    fn replay_names_the_full_partition_key_and_a_closed_range() {
        let select = render(SELECT_REPLAY, "hb_unit");
        assert!(select.contains(" FROM hb_unit.by_user_video WHERE "));
        let where_clause = &select[select.find(" WHERE ").unwrap() + " WHERE ".len()..];
        assert_eq!(
            where_clause,
            "user_id = ? AND video_id = ? AND event_time_ms >= ? AND event_time_ms <= ?"
        );
        assert!(!select.contains("ALLOW FILTERING"));
        let mut columns = select_columns(&select);
        columns.sort();
        let mut expected: Vec<String> = BY_USER_VIDEO_COLUMNS
            .iter()
            .map(|(name, _)| name.to_string())
            .collect();
        expected.sort();
        assert_eq!(columns, expected);
    }

    /// INSERT values serialized by the driver, reassembled into a result row
    /// in SELECT order, deserialized by the driver and mapped back.
    fn round_trip(row: &RawHeartbeat) -> RawHeartbeat {
        let statements = schema_statements(&config("hb_unit")).unwrap();
        let create = create_table(&statements, "by_user_video");
        let specs = insert_specs(
            &render(INSERT_BY_USER_VIDEO, "hb_unit"),
            create,
            "by_user_video",
        );
        let cells = serialize_by_name(&user_video_values(row, 60), &specs);

        let types: BTreeMap<String, String> = table_columns(create).into_iter().collect();
        let select = render(SELECT_REPLAY, "hb_unit");
        let result_specs: Vec<ColumnSpec<'static>> = select_columns(&select)
            .into_iter()
            .map(|name| {
                let typ = native(&types[&name]);
                ColumnSpec::owned(name, typ, TableSpec::borrowed("hb_unit", "by_user_video"))
            })
            .collect();
        let mut frame = Vec::new();
        for spec in &result_specs {
            let cell = &cells[spec.name()];
            frame.extend_from_slice(&i32::try_from(cell.len()).unwrap().to_be_bytes());
            frame.extend_from_slice(cell);
        }
        StoredRow::type_check(&result_specs).expect("result columns type-check");
        let columns = ColumnIterator::new(&result_specs, FrameSlice::new_borrowed(&frame));
        row_from(StoredRow::deserialize(columns).expect("row deserializes"))
    }

    #[test]
    fn rows_round_trip_through_insert_and_replay() {
        for row in [
            heartbeat("evt-1", 1_700_000_000_000, false),
            heartbeat("evt-2", -5, true),
            RawHeartbeat {
                ad_id: String::new(),
                platform: String::new(),
                country: "日本".to_owned(),
                state: 4,
                bitrate_kbps: 0,
                ..heartbeat("evt-3", i64::MAX, false)
            },
        ] {
            assert_eq!(round_trip(&row), row);
        }
    }

    #[test]
    fn null_context_columns_read_as_empty() {
        let specs: Vec<ColumnSpec<'static>> = select_columns(&render(SELECT_REPLAY, "ks"))
            .into_iter()
            .map(|name| {
                let typ = native(
                    BY_USER_VIDEO_COLUMNS
                        .iter()
                        .find(|(n, _)| *n == name)
                        .unwrap()
                        .1,
                );
                ColumnSpec::owned(name, typ, TableSpec::borrowed("ks", "by_user_video"))
            })
            .collect();
        let mut frame = Vec::new();
        for spec in &specs {
            let value: Option<Vec<u8>> = match spec.name() {
                "event_id" => Some(b"e".to_vec()),
                "user_id" => Some(b"u".to_vec()),
                "video_id" => Some(b"v".to_vec()),
                "event_time_ms" => Some(7_i64.to_be_bytes().to_vec()),
                _ => None,
            };
            match value {
                Some(bytes) => {
                    frame.extend_from_slice(&i32::try_from(bytes.len()).unwrap().to_be_bytes());
                    frame.extend_from_slice(&bytes);
                }
                None => frame.extend_from_slice(&(-1_i32).to_be_bytes()),
            }
        }
        let columns = ColumnIterator::new(&specs, FrameSlice::new_borrowed(&frame));
        let row = row_from(StoredRow::deserialize(columns).unwrap());
        assert_eq!(
            row,
            RawHeartbeat {
                event_id: "e".into(),
                user_id: "u".into(),
                video_id: "v".into(),
                device_id: String::new(),
                event_time_ms: 7,
                position_ms: 0,
                state: 0,
                ad_id: String::new(),
                platform: String::new(),
                app_version: String::new(),
                country: String::new(),
                bitrate_kbps: 0,
                late: false,
            }
        );
    }

    #[test]
    fn replay_orders_by_time_then_event_id() {
        let mut rows = [
            heartbeat("b", 20, false),
            heartbeat("a", 20, false),
            heartbeat("z", 10, false),
        ];
        rows.sort_by(replay_order);
        let order: Vec<(i64, &str)> = rows
            .iter()
            .map(|r| (r.event_time_ms, r.event_id.as_str()))
            .collect();
        assert_eq!(order, vec![(10, "z"), (20, "a"), (20, "b")]);
    }

    #[test]
    fn split_handles_comments_blank_lines_and_trailing_semicolons() {
        let file = "-- header; with a semicolon\nCREATE A (x int); -- trailing\n\n  \nCREATE B\n  (y int)   ;\n;";
        assert_eq!(
            split_statements(file),
            vec![
                "CREATE A (x int)".to_owned(),
                "CREATE B\n  (y int)".to_owned()
            ]
        );
        assert_eq!(split_statements(KEYSPACE_CQL).len(), 1);
        assert_eq!(split_statements(TABLES_CQL).len(), 2);
    }

    #[test]
    fn bad_configs_are_fatal() {
        for keyspace in ["", "Heartbeats", "1ks", "ks-1", "ks;DROP", &"k".repeat(49)] {
            assert!(
                matches!(
                    schema_statements(&config(keyspace)),
                    Err(SinkError::Fatal(_))
                ),
                "{keyspace:?}"
            );
        }
        assert!(schema_statements(&config(&"k".repeat(48))).is_ok());
        assert!(schema_statements(&config("hb_test_0a1b")).is_ok());
        for bad in [
            ScyllaConfig {
                replication_factor: 0,
                ..config("ks")
            },
            ScyllaConfig {
                ttl_secs: 0,
                ..config("ks")
            },
            ScyllaConfig {
                ttl_secs: MAX_TTL_SECS + 1,
                ..config("ks")
            },
            ScyllaConfig {
                local_dc: Some(" ".into()),
                ..config("ks")
            },
        ] {
            assert!(
                matches!(schema_statements(&bad), Err(SinkError::Fatal(_))),
                "{bad:?}"
            );
        }
        assert_eq!(ttl_bind_value(MAX_TTL_SECS), 630_720_000);
    }

    #[test]
    fn defaults_match_the_spec() {
        let defaults = ScyllaConfig::default();
        assert_eq!(defaults.keyspace, "heartbeats");
        assert_eq!(defaults.replication_factor, 3);
        assert_eq!(defaults.ttl_secs, 30 * 24 * 3_600);
        assert_eq!(defaults.consistency, Consistency::LocalQuorum);
        assert_eq!(defaults.local_dc, None);
    }

    #[test]
    fn consistency_parses_as_operators_write_it() {
        assert_eq!(
            parse_consistency("LOCAL_QUORUM"),
            Ok(Consistency::LocalQuorum)
        );
        assert_eq!(parse_consistency(" local-one "), Ok(Consistency::LocalOne));
        assert_eq!(parse_consistency("quorum"), Ok(Consistency::Quorum));
        assert_eq!(parse_consistency("ONE"), Ok(Consistency::One));
        for bad in ["ANY", "EACH_QUORUM", "SERIAL", "", "lots"] {
            assert!(parse_consistency(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn errors_split_by_what_the_caller_should_do() {
        let db = |error: DbError| {
            execution_error_is_transient(&ExecutionError::LastAttemptError(
                RequestAttemptError::DbError(error, "msg".into()),
            ))
        };
        let transient = [
            DbError::Overloaded,
            DbError::IsBootstrapping,
            DbError::ServerError,
            DbError::Unavailable {
                consistency: Consistency::LocalQuorum,
                required: 2,
                alive: 1,
            },
            DbError::WriteTimeout {
                consistency: Consistency::LocalQuorum,
                received: 1,
                required: 2,
                write_type: WriteType::Simple,
            },
            DbError::ReadTimeout {
                consistency: Consistency::LocalQuorum,
                received: 1,
                required: 2,
                data_present: false,
            },
            DbError::RateLimitReached {
                op_type: OperationType::Write,
                rejected_by_coordinator: true,
            },
        ];
        for error in transient {
            assert!(db(error.clone()), "{error:?}");
        }
        let permanent = [
            DbError::SyntaxError,
            DbError::Invalid,
            DbError::Unauthorized,
            DbError::AuthenticationError,
            DbError::ConfigError,
            DbError::ProtocolError,
        ];
        for error in permanent {
            assert!(!db(error.clone()), "{error:?}");
        }
        assert!(execution_error_is_transient(
            &ExecutionError::RequestTimeout(std::time::Duration::from_secs(2))
        ));
        assert!(execution_error_is_transient(&ExecutionError::EmptyPlan));
        assert!(attempt_error_is_transient(
            &RequestAttemptError::UnableToAllocStreamId
        ));
        assert!(!attempt_error_is_transient(
            &RequestAttemptError::NonfinishedPagingState
        ));
        assert!(!prepare_error_is_transient(
            &PrepareError::AllAttemptsFailed {
                first_attempt: RequestAttemptError::DbError(
                    DbError::Invalid,
                    "no such table".into()
                ),
            }
        ));
        assert!(!new_session_error_is_transient(
            &NewSessionError::EmptyKnownNodesList
        ));
        assert!(new_session_error_is_transient(
            &NewSessionError::FailedToResolveAnyHostname(vec!["scylla:9042".into()])
        ));

        let err = sink_error("scylla insert into by_hour", &DbError::Overloaded, true);
        assert!(
            matches!(err, SinkError::Unavailable(ref m) if m.starts_with("scylla insert into by_hour: "))
        );
        assert!(matches!(
            sink_error("x", &DbError::Invalid, false),
            SinkError::Fatal(_)
        ));
    }
}
