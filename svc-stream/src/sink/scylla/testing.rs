//! Fixtures and readers of CQL text shared by this folder's unit tests.

use super::ScyllaConfig;
use crate::sink::RawHeartbeat;

pub(super) fn heartbeat(event_id: &str, event_time_ms: i64, late: bool) -> RawHeartbeat {
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

pub(super) fn config(keyspace: &str) -> ScyllaConfig {
    ScyllaConfig {
        keyspace: keyspace.to_owned(),
        ..ScyllaConfig::default()
    }
}

/// `name type` pairs of a CREATE TABLE statement, in declaration order.
pub(super) fn table_columns(create: &str) -> Vec<(String, String)> {
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

/// Column names of an INSERT, in order.
pub(super) fn insert_columns(insert: &str) -> Vec<String> {
    let start = insert.find('(').expect("column list") + 1;
    let end = insert.find(')').expect("column list end");
    insert[start..end]
        .split(',')
        .map(|name| name.trim().to_owned())
        .collect()
}

pub(super) fn select_columns(select: &str) -> Vec<String> {
    let start = "SELECT ".len();
    let end = select.find(" FROM ").expect("from");
    select[start..end]
        .split(',')
        .map(|name| name.trim().to_owned())
        .collect()
}

pub(super) fn create_table<'a>(statements: &'a [String], table: &str) -> &'a str {
    let prefix = format!("CREATE TABLE IF NOT EXISTS hb_unit.{table} (");
    statements
        .iter()
        .find(|statement| statement.starts_with(&prefix))
        .expect("create table")
}

pub(super) const BY_USER_VIDEO_COLUMNS: [(&str, &str); 13] = [
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
