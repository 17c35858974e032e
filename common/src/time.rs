//! Conversions between protobuf timestamps, epoch milliseconds and RFC 3339.

use chrono::{DateTime, SecondsFormat, Utc};
use hb_proto::Timestamp;

/// Epoch milliseconds of a protobuf timestamp (saturating, never panics).
pub fn timestamp_to_ms(ts: &Timestamp) -> i64 {
    ts.seconds
        .saturating_mul(1_000)
        .saturating_add(i64::from(ts.nanos) / 1_000_000)
}

/// Protobuf timestamp for epoch milliseconds.
pub fn ms_to_timestamp(ms: i64) -> Timestamp {
    Timestamp {
        seconds: ms.div_euclid(1_000),
        nanos: (ms.rem_euclid(1_000) * 1_000_000) as i32,
    }
}

/// Current wall-clock time in epoch milliseconds.
pub fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// RFC 3339 text (UTC, millisecond precision) for epoch milliseconds.
pub fn ms_to_rfc3339(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Epoch milliseconds of an RFC 3339 timestamp.
pub fn rfc3339_to_ms(text: &str) -> Result<i64, String> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.timestamp_millis())
        .map_err(|e| format!("invalid RFC 3339 time {text:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip_through_milliseconds() {
        for ms in [0, 1, 999, 1_700_000_000_123, -1, -1_001] {
            assert_eq!(timestamp_to_ms(&ms_to_timestamp(ms)), ms);
        }
    }

    #[test]
    fn rfc3339_round_trips() {
        let ms = 1_700_000_000_123;
        assert_eq!(rfc3339_to_ms(&ms_to_rfc3339(ms)).unwrap(), ms);
        assert!(rfc3339_to_ms("yesterday").is_err());
    }
}
