//! The CQL the mirror runs (an insert per table and kind of write, the
//! replay select) and its preparation, once per process.

use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;

use super::config::ScyllaConfig;
use super::errors::{prepare_error_is_transient, sink_error};
use crate::sink::{RawHeartbeat, SinkError};

/// Write timestamp (microseconds) of late rows: below any real write
/// timestamp, so a merged copy of the same heartbeat always wins.
pub const LATE_WRITE_TIMESTAMP_MICROS: i64 = 1;

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

/// Removes one row of `by_hour`, named by its full primary key (an erased
/// user's row, found through `by_user_video`).
pub const DELETE_BY_HOUR: &str = "DELETE FROM {keyspace}.by_hour \
     WHERE hour_ms = ? AND bucket = ? AND event_time_ms = ? AND event_id = ?";

/// Removes one user's whole partition of one video from `by_user_video`.
pub const DELETE_BY_USER_VIDEO: &str =
    "DELETE FROM {keyspace}.by_user_video WHERE user_id = ? AND video_id = ?";

/// The two mirror tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Table {
    ByUserVideo,
    ByHour,
}

impl Table {
    pub(super) const ALL: [Table; 2] = [Table::ByUserVideo, Table::ByHour];

    pub(super) fn insert_context(self) -> &'static str {
        match self {
            Table::ByUserVideo => "scylla insert into by_user_video",
            Table::ByHour => "scylla insert into by_hour",
        }
    }
}

/// Whether a row is written to win (merged) or to lose (late) against
/// another copy of the same heartbeat.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum WriteKind {
    Merged,
    Late,
}

pub(super) fn write_kind(row: &RawHeartbeat) -> WriteKind {
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
pub(super) fn render(template: &str, keyspace: &str) -> String {
    template.replace("{keyspace}", keyspace)
}

/// Statements prepared once per process.
pub(super) struct Statements {
    /// Indexed by [`Statements::slot`].
    inserts: Vec<PreparedStatement>,
    pub(super) replay: PreparedStatement,
    /// An erased user's rows: [`DELETE_BY_HOUR`], [`DELETE_BY_USER_VIDEO`].
    pub(super) delete_by_hour: PreparedStatement,
    pub(super) delete_by_user_video: PreparedStatement,
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

    pub(super) async fn prepare(
        session: &Session,
        config: &ScyllaConfig,
    ) -> Result<Self, SinkError> {
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
        let mut deletes = Vec::with_capacity(2);
        for cql in [DELETE_BY_HOUR, DELETE_BY_USER_VIDEO] {
            let mut statement = prepare(session, &render(cql, &config.keyspace)).await?;
            // Deleting the same row or partition again changes nothing.
            statement.set_is_idempotent(true);
            statement.set_consistency(config.consistency);
            deletes.push(statement);
        }
        let delete_by_user_video = deletes.pop().expect("two deletes prepared");
        let delete_by_hour = deletes.pop().expect("two deletes prepared");
        Ok(Self {
            inserts,
            replay,
            delete_by_hour,
            delete_by_user_video,
        })
    }

    pub(super) fn insert(&self, table: Table, kind: WriteKind) -> &PreparedStatement {
        &self.inserts[Self::slot(table, kind)]
    }
}

async fn prepare(session: &Session, cql: &str) -> Result<PreparedStatement, SinkError> {
    session.prepare(cql).await.map_err(|err| {
        let transient = prepare_error_is_transient(&err);
        sink_error("scylla prepare", &err, transient)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::scylla::schema::schema_statements;
    use crate::sink::scylla::testing::{
        config, create_table, heartbeat, insert_columns, select_columns, table_columns,
        BY_USER_VIDEO_COLUMNS,
    };

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
    fn erasure_deletes_name_full_keys_of_both_tables() {
        let by_hour = render(DELETE_BY_HOUR, "hb_unit");
        assert_eq!(
            by_hour,
            "DELETE FROM hb_unit.by_hour WHERE hour_ms = ? AND bucket = ? \
             AND event_time_ms = ? AND event_id = ?"
        );
        let by_user_video = render(DELETE_BY_USER_VIDEO, "hb_unit");
        assert_eq!(
            by_user_video,
            "DELETE FROM hb_unit.by_user_video WHERE user_id = ? AND video_id = ?"
        );
        // The keys named are the tables' primary keys (a partition for
        // by_user_video, a row for by_hour): no scan, no ALLOW FILTERING.
        let statements = schema_statements(&config("hb_unit")).unwrap();
        assert!(create_table(&statements, "by_hour")
            .contains("PRIMARY KEY ((hour_ms, bucket), event_time_ms, event_id)"));
        assert!(create_table(&statements, "by_user_video")
            .contains("PRIMARY KEY ((user_id, video_id), event_time_ms, event_id)"));
        for delete in [by_hour, by_user_video] {
            assert!(!delete.contains("ALLOW FILTERING"));
            assert!(!delete.contains("IF EXISTS"), "no LWT: {delete}");
        }
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
}
