//! Layout of the raw heartbeat mirror shared by its writer (svc-stream) and its
//! readers (svc-query's traffic report): ScyllaDB partitions `(hour_ms, bucket)`
//! so an hour of traffic is read by naming every partition key in full.

/// Buckets per hour partition: spreads one hour's writes over 16 partitions.
pub const BUCKETS: i32 = 16;

/// One hour in milliseconds.
pub const HOUR_MS: i64 = 3_600_000;

/// Start of the hour holding `event_time_ms`.
pub fn hour_ms(event_time_ms: i64) -> i64 {
    event_time_ms.div_euclid(HOUR_MS) * HOUR_MS
}

/// Stable bucket of an event (FNV-1a of the id), identical on every node and release.
pub fn bucket(event_id: &str) -> i32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in event_id.as_bytes() {
        hash ^= u32::from(*byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    (hash % BUCKETS as u32) as i32
}

/// Hour partitions covering `[from_ms, to_ms)`.
pub fn hours_between(from_ms: i64, to_ms: i64) -> Vec<i64> {
    let mut hours = Vec::new();
    if from_ms >= to_ms {
        return hours;
    }
    let mut hour = hour_ms(from_ms);
    while hour < to_ms {
        hours.push(hour);
        hour += HOUR_MS;
    }
    hours
}

/// Marks an hour's raw heartbeats as changed (bind the hour's start). Every
/// write that adds raw rows runs it once per hour it touched, in the same
/// transaction: svc-query keeps the traffic report of whole hours and uses
/// one only while its hour's version is unchanged.
pub const BUMP_RAW_HOUR_SQL: &str =
    "INSERT INTO raw_hour_versions (hour_ms, version) VALUES ($1, 1) \
     ON CONFLICT (hour_ms) DO UPDATE SET version = raw_hour_versions.version + 1";

/// Marks every hour up to and including the one starting at the bound value
/// as changed: run after raw rows of those hours were removed (expiry).
pub const BUMP_RAW_HOURS_UNTIL_SQL: &str =
    "UPDATE raw_hour_versions SET version = version + 1 WHERE hour_ms <= $1";

/// The distinct hours of some event times, ascending.
pub fn hours_of(event_times: impl IntoIterator<Item = i64>) -> Vec<i64> {
    let mut hours: Vec<i64> = event_times.into_iter().map(hour_ms).collect();
    hours.sort_unstable();
    hours.dedup();
    hours
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hours_of_lists_each_touched_hour_once() {
        assert_eq!(
            hours_of([2 * HOUR_MS + 5, 10, HOUR_MS - 1, 2 * HOUR_MS]),
            vec![0, 2 * HOUR_MS]
        );
    }

    #[test]
    fn buckets_are_stable_and_in_range() {
        assert_eq!(bucket("a"), bucket("a"));
        assert_eq!(bucket(""), (0x811c_9dc5_u32 % 16) as i32);
        assert!((0..1000).all(|i| (0..BUCKETS).contains(&bucket(&format!("e{i}")))));
    }

    #[test]
    fn hours_cover_the_half_open_range() {
        assert_eq!(hours_between(0, HOUR_MS), vec![0]);
        assert_eq!(hours_between(1, HOUR_MS + 1), vec![0, HOUR_MS]);
        assert!(hours_between(5, 5).is_empty());
    }
}
