//! Where and how the raw mirror connects, with its defaults, and the checks
//! a config passes before any of it goes into CQL text.

use scylla::statement::Consistency;

use crate::sink::SinkError;

/// Longest TTL ScyllaDB accepts (20 years).
pub const MAX_TTL_SECS: u32 = 630_720_000;

/// Default `HB_RAW_TTL`: 30 days.
pub const DEFAULT_TTL_SECS: u32 = 30 * 86_400;

/// Rows per page when replaying (the driver fetches the next page while the
/// previous one is consumed).
pub const DEFAULT_REPLAY_PAGE_SIZE: i32 = 5_000;

/// Statements in flight per `write` call.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 256;

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

pub(super) fn check_config(config: &ScyllaConfig) -> Result<(), SinkError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::scylla::testing::config;

    #[test]
    fn bad_configs_are_fatal() {
        for keyspace in ["", "Heartbeats", "1ks", "ks-1", "ks;DROP", &"k".repeat(49)] {
            assert!(
                matches!(check_config(&config(keyspace)), Err(SinkError::Fatal(_))),
                "{keyspace:?}"
            );
        }
        assert!(check_config(&config(&"k".repeat(48))).is_ok());
        assert!(check_config(&config("hb_test_0a1b")).is_ok());
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
                matches!(check_config(&bad), Err(SinkError::Fatal(_))),
                "{bad:?}"
            );
        }
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
}
