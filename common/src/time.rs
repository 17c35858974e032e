//! Conversions between protobuf timestamps, epoch milliseconds and RFC 3339.

use chrono::{DateTime, Datelike, SecondsFormat, Utc};
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
    if let Some(ms) = utc_millis(text.as_bytes()) {
        return Ok(ms);
    }
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.timestamp_millis())
        .map_err(|e| format!("invalid RFC 3339 time {text:?}: {e}"))
}

/// `YYYY-MM-DDTHH:MM:SSZ` or `YYYY-MM-DDTHH:MM:SS.mmmZ` (the form players and
/// [`ms_to_rfc3339`] write), read without the general parser: `hbmesh
/// sessionize` reads one per line. `None` for anything else (offsets, other
/// precisions, leap seconds, bad dates): the general parser decides those.
fn utc_millis(text: &[u8]) -> Option<i64> {
    let millis = match text.len() {
        20 => 0,
        24 if text[19] == b'.' => digits(&text[20..23])?,
        _ => return None,
    };
    if text[4] != b'-'
        || text[7] != b'-'
        || text[10] != b'T'
        || text[13] != b':'
        || text[16] != b':'
        || text[text.len() - 1] != b'Z'
    {
        return None;
    }
    let (year, month, day) = (
        digits(&text[..4])?,
        digits(&text[5..7])?,
        digits(&text[8..10])?,
    );
    let (hour, minute, second) = (
        digits(&text[11..13])?,
        digits(&text[14..16])?,
        digits(&text[17..19])?,
    );
    // chrono's calendar checks the date; only the text is read by hand.
    let date = chrono::NaiveDate::from_ymd_opt(
        i32::try_from(year).ok()?,
        u32::try_from(month).ok()?,
        u32::try_from(day).ok()?,
    )?;
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let days = i64::from(date.num_days_from_ce()) - UNIX_EPOCH_DAYS_FROM_CE;
    Some((((days * 24 + hour) * 60 + minute) * 60 + second) * 1_000 + millis)
}

/// `NaiveDate::num_days_from_ce` of 1970-01-01.
const UNIX_EPOCH_DAYS_FROM_CE: i64 = 719_163;

/// The value of ASCII decimal digits; `None` if any byte is not one.
#[inline]
fn digits(text: &[u8]) -> Option<i64> {
    let mut value = 0;
    for &c in text {
        let digit = c.wrapping_sub(b'0');
        if digit > 9 {
            return None;
        }
        value = value * 10 + i64::from(digit);
    }
    Some(value)
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

    #[test]
    fn the_short_path_reads_times_exactly_as_chrono_does() {
        let chrono = |text: &str| {
            DateTime::parse_from_rfc3339(text)
                .map(|t| t.timestamp_millis())
                .ok()
        };
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        for _ in 0..20_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            // Years 0000 to 9999.
            let ms = (state % 315_537_897_600_000) as i64 - 62_167_219_200_000;
            for text in [
                ms_to_rfc3339(ms),
                ms_to_rfc3339(ms - ms.rem_euclid(1_000)).replace(".000", ""),
            ] {
                assert_eq!(utc_millis(text.as_bytes()), chrono(&text), "{text}");
            }
        }
        for text in [
            "2024-02-29T00:00:00Z",
            "2000-02-29T23:59:59.999Z",
            "1970-01-01T00:00:00.000Z",
            "1969-12-31T23:59:59.999Z",
        ] {
            assert_eq!(utc_millis(text.as_bytes()), chrono(text), "{text}");
        }
        // Left to chrono: impossible dates and times, leap seconds, other
        // forms; the answer is chrono's either way.
        for text in [
            "2026-02-29T00:00:00Z",
            "1900-02-29T00:00:00Z",
            "2026-04-31T00:00:00Z",
            "2026-00-10T00:00:00Z",
            "2026-01-00T00:00:00Z",
            "2026-01-01T24:00:00Z",
            "2026-01-01T00:60:00Z",
            "2016-12-31T23:59:60Z",
            "2026-01-01t00:00:00z",
            "2026-01-01T00:00:00+00:00",
            "2026-01-01T00:00:00.5Z",
            "2026-01-01T00:00:00.123456Z",
            "2026-01-01T0a:00:00Z",
            "+2026-01-01T00:00:00Z",
        ] {
            assert_eq!(utc_millis(text.as_bytes()), None, "{text}");
            assert_eq!(rfc3339_to_ms(text).ok(), chrono(text), "{text}");
        }
    }
}
