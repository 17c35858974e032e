//! Rows as the driver sees them: the values bound to each insert, matched to
//! its markers by name, and replayed rows mapped back to [`RawHeartbeat`].

use std::cmp::Ordering;

use scylla::{DeserializeRow, SerializeRow};

use super::config::MAX_TTL_SECS;
use crate::sink::RawHeartbeat;

/// Bound values of [`INSERT_BY_USER_VIDEO`] / [`INSERT_BY_USER_VIDEO_LATE`],
/// matched to the bind markers by name (`[ttl]` is the name ScyllaDB gives
/// the `USING TTL ?` marker), so a reordered column list cannot swap values.
///
/// [`INSERT_BY_USER_VIDEO`]: super::INSERT_BY_USER_VIDEO
/// [`INSERT_BY_USER_VIDEO_LATE`]: super::INSERT_BY_USER_VIDEO_LATE
#[derive(Clone, Debug, PartialEq, Eq, SerializeRow)]
pub(super) struct UserVideoValues<'a> {
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
///
/// [`INSERT_BY_HOUR`]: super::INSERT_BY_HOUR
/// [`INSERT_BY_HOUR_LATE`]: super::INSERT_BY_HOUR_LATE
#[derive(Clone, Debug, PartialEq, Eq, SerializeRow)]
pub(super) struct HourValues<'a> {
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

pub(super) fn user_video_values(row: &RawHeartbeat, ttl: i32) -> UserVideoValues<'_> {
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

pub(super) fn hour_values(row: &RawHeartbeat, ttl: i32) -> HourValues<'_> {
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

/// The primary key of `row` in `by_hour`: `(hour_ms, bucket, event_time_ms,
/// event_id)`, bound to [`DELETE_BY_HOUR`].
///
/// [`DELETE_BY_HOUR`]: super::DELETE_BY_HOUR
pub(super) fn hour_key(row: &RawHeartbeat) -> (i64, i32, i64, &str) {
    let values = hour_values(row, 0);
    (
        values.hour_ms,
        values.bucket,
        values.event_time_ms,
        values.event_id,
    )
}

/// A row of [`SELECT_REPLAY`], matched to the result columns by name.
/// Context columns read a null (a row written by another tool) as empty.
///
/// [`SELECT_REPLAY`]: super::SELECT_REPLAY
#[derive(Clone, Debug, PartialEq, Eq, DeserializeRow)]
pub(super) struct StoredRow {
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

pub(super) fn row_from(stored: StoredRow) -> RawHeartbeat {
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

pub(super) fn replay_order(a: &RawHeartbeat, b: &RawHeartbeat) -> Ordering {
    (a.event_time_ms, &a.event_id).cmp(&(b.event_time_ms, &b.event_id))
}

/// The TTL as CQL binds it (`int`); `check_config` keeps it in range.
pub(super) fn ttl_bind_value(ttl_secs: u32) -> i32 {
    i32::try_from(ttl_secs.min(MAX_TTL_SECS)).unwrap_or(i32::MAX)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use hb_common::raw::HOUR_MS;
    use scylla::deserialize::row::{ColumnIterator, DeserializeRow};
    use scylla::deserialize::FrameSlice;
    use scylla::frame::response::result::{ColumnSpec, ColumnType, NativeType, TableSpec};
    use scylla::serialize::row::{RowSerializationContext, SerializeRow};
    use scylla::serialize::writers::RowWriter;

    use super::*;
    use crate::sink::scylla::config::DEFAULT_TTL_SECS;
    use crate::sink::scylla::schema::schema_statements;
    use crate::sink::scylla::statements::{
        render, INSERT_BY_HOUR_LATE, INSERT_BY_USER_VIDEO, SELECT_REPLAY,
    };
    use crate::sink::scylla::testing::{
        config, create_table, heartbeat, insert_columns, select_columns, table_columns,
        BY_USER_VIDEO_COLUMNS,
    };

    fn native(typ: &str) -> ColumnType<'static> {
        match typ {
            "text" => ColumnType::Native(NativeType::Text),
            "bigint" => ColumnType::Native(NativeType::BigInt),
            "int" => ColumnType::Native(NativeType::Int),
            "boolean" => ColumnType::Native(NativeType::Boolean),
            other => panic!("unexpected column type {other}"),
        }
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
        assert_eq!(ttl_bind_value(MAX_TTL_SECS), 630_720_000);
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
    fn the_by_hour_key_of_a_row_is_the_one_it_was_written_under() {
        let row = heartbeat("evt-1", 3 * HOUR_MS + 59_999, true);
        let written = hour_values(&row, 60);
        assert_eq!(
            hour_key(&row),
            (written.hour_ms, written.bucket, row.event_time_ms, "evt-1")
        );
        assert_eq!(hour_key(&row).0, 3 * HOUR_MS);
        assert_eq!(hour_key(&row).1, hb_common::raw::bucket("evt-1"));
    }
}
