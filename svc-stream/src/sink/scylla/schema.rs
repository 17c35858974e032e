//! The keyspace and tables DDL: the shipped CQL files, split into
//! statements and rendered for a config.

use super::config::{check_config, ScyllaConfig};
use crate::sink::SinkError;

/// Keyspace DDL template (`{keyspace}`, `{replication}`).
pub const KEYSPACE_CQL: &str = include_str!("../../../cql/0001_keyspace.cql");

/// Tables DDL template (`{keyspace}`, `{ttl_secs}`).
pub const TABLES_CQL: &str = include_str!("../../../cql/0002_tables.cql");

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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::sink::scylla::config::DEFAULT_TTL_SECS;
    use crate::sink::scylla::testing::{
        config, create_table, table_columns, BY_USER_VIDEO_COLUMNS,
    };

    fn primary_key(create: &str) -> &str {
        let start = create.find("PRIMARY KEY ").expect("primary key") + "PRIMARY KEY ".len();
        let line_end = create[start..].find('\n').expect("line end") + start;
        &create[start..line_end]
    }

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
}
