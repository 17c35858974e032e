//! The report vocabulary: validated request parameters (parse, don't
//! validate: a [`Window`] or [`ConcurrencySpec`] only exists when it is
//! usable) and the rows every engine answers with.
//!
//! Definitions (SPEC 7), where the spec leaves room the choice is written here:
//! - `[from, to)` selects sessions by `start_ms` for royalties and impressions,
//!   and raw heartbeats by `event_time_ms` for traffic.
//! - concurrency counts a session in every bucket it overlaps, whenever it
//!   started: "who was watching at 10:00" includes a viewer who began at 9:50.
//!   A session `[start, end]` overlaps bucket `[b, b + step)` when
//!   `start < b + step && end >= b` (its last heartbeat at `b` is inside).
//!   Buckets are full width, so the last one may reach past `to`.
//! - sessions of videos missing from the catalog have no license holder and
//!   are left out of royalties and traffic; impressions of ads missing from
//!   the catalog likewise. Loading the catalog later makes them appear.
//! - times before 1970 are refused: the hour arithmetic assumes `ms >= 0`.

use hb_common::time::rfc3339_to_ms;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Most concurrency buckets one request may ask for.
pub const MAX_BUCKETS: i64 = 10_000;
/// Bucket width bounds, seconds.
pub const MIN_STEP_S: i64 = 1;
pub const MAX_STEP_S: i64 = 86_400;
/// Default bucket width, seconds.
pub const DEFAULT_STEP_S: i64 = 60;
/// Most hours one traffic request may span: every hour is 16 ScyllaDB
/// partitions named in the query (31 days = 11 904 partitions).
pub const MAX_TRAFFIC_HOURS: i64 = 31 * 24;
/// Longest id accepted anywhere (SPEC 4).
pub const MAX_ID_BYTES: usize = 128;

/// A parameter the caller got wrong: always 400 / `INVALID_ARGUMENT`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParamError(pub String);

fn bad(detail: impl Into<String>) -> ParamError {
    ParamError(detail.into())
}

/// A half-open period `[from_ms, to_ms)` with `0 <= from_ms < to_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    from_ms: i64,
    to_ms: i64,
}

impl Window {
    pub fn new(from_ms: i64, to_ms: i64) -> Result<Window, ParamError> {
        if from_ms < 0 {
            return Err(bad("from must not be before 1970-01-01T00:00:00Z"));
        }
        if from_ms >= to_ms {
            return Err(bad("from must be before to"));
        }
        Ok(Window { from_ms, to_ms })
    }

    /// From the RFC 3339 `from` and `to` query parameters, both required.
    pub fn from_rfc3339(from: Option<&str>, to: Option<&str>) -> Result<Window, ParamError> {
        let from = parse_time("from", from)?;
        let to = parse_time("to", to)?;
        Window::new(from, to)
    }

    pub fn from_ms(&self) -> i64 {
        self.from_ms
    }

    pub fn to_ms(&self) -> i64 {
        self.to_ms
    }

    /// The window as a traffic request: at most [`MAX_TRAFFIC_HOURS`] hour partitions.
    pub fn for_traffic(self) -> Result<Window, ParamError> {
        let hours = hb_common::raw::hours_between(self.from_ms, self.to_ms).len() as i64;
        if hours > MAX_TRAFFIC_HOURS {
            return Err(bad(format!(
                "traffic spans {hours} hours; at most {MAX_TRAFFIC_HOURS} per request"
            )));
        }
        Ok(self)
    }
}

fn parse_time(name: &str, value: Option<&str>) -> Result<i64, ParamError> {
    let value = value.filter(|v| !v.is_empty()).ok_or_else(|| {
        bad(format!(
            "missing {name} (RFC 3339 time, e.g. 2024-05-01T00:00:00Z)"
        ))
    })?;
    rfc3339_to_ms(value).map_err(|e| bad(format!("{name}: {e}")))
}

/// A concurrency request: `buckets` buckets of `step_ms` from `window.from`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConcurrencySpec {
    window: Window,
    step_ms: i64,
    buckets: i64,
}

impl ConcurrencySpec {
    pub fn new(window: Window, step_s: i64) -> Result<ConcurrencySpec, ParamError> {
        if !(MIN_STEP_S..=MAX_STEP_S).contains(&step_s) {
            return Err(bad(format!(
                "step_s must be between {MIN_STEP_S} and {MAX_STEP_S}, got {step_s}"
            )));
        }
        let step_ms = step_s * 1_000;
        let span = window.to_ms - window.from_ms;
        let buckets = span / step_ms + i64::from(span % step_ms != 0);
        if buckets > MAX_BUCKETS {
            return Err(bad(format!(
                "{buckets} buckets requested; at most {MAX_BUCKETS} (widen step_s or narrow the period)"
            )));
        }
        Ok(ConcurrencySpec {
            window,
            step_ms,
            buckets,
        })
    }

    /// `step_s` as the HTTP query string carries it (absent = 60; present
    /// but empty is not a number).
    pub fn parse_step(step_s: Option<&str>) -> Result<i64, ParamError> {
        match step_s {
            None => Ok(DEFAULT_STEP_S),
            Some(text) => text.parse::<i64>().map_err(|_| {
                bad(format!(
                    "step_s must be an integer number of seconds, got {text:?}"
                ))
            }),
        }
    }

    pub fn window(&self) -> Window {
        self.window
    }

    pub fn step_ms(&self) -> i64 {
        self.step_ms
    }

    pub fn buckets(&self) -> i64 {
        self.buckets
    }

    /// End of the last bucket: sessions starting at or after it overlap nothing.
    pub fn upper_ms(&self) -> i64 {
        self.window.from_ms + self.buckets * self.step_ms
    }

    /// Counts distinct users per bucket from `(user_id, start_ms, end_ms)`
    /// sessions; see [`BucketCounter`].
    pub fn count<I>(&self, sessions: I) -> Vec<ConcurrencyRow>
    where
        I: IntoIterator<Item = (String, i64, i64)>,
    {
        let mut counter = self.counter();
        for (user, start, end) in sessions {
            counter.add(&user, start, end);
        }
        counter.finish()
    }

    /// An empty counter for this request's buckets.
    pub fn counter(&self) -> BucketCounter {
        BucketCounter {
            spec: *self,
            users: DenseIds::default(),
            ranges: Vec::new(),
        }
    }
}

/// Distinct users per bucket, fed one session at a time (so rows can be
/// counted as the store hands them over, without keeping them). Sessions
/// may come in any order; each user's bucket ranges are merged before
/// counting, so a user is counted once per bucket however many of their
/// sessions overlap it.
///
/// A month is ~1 M sessions of ~200 k users, so the per-session work is
/// what counts: users are interned to integers through a table whose keys
/// hold short ids inline (one probe, no pointer to chase per session, where
/// a `String`-keyed map would compare keys behind pointers), and each
/// session becomes one `u64` (user, first bucket, last bucket) so the sort
/// compares integers. O(n log n), memory O(users + sessions + buckets).
#[derive(Debug)]
pub struct BucketCounter {
    spec: ConcurrencySpec,
    users: DenseIds,
    ranges: Vec<u64>,
}

/// Bucket indexes fit in 16 bits of a packed range.
const _: () = assert!(MAX_BUCKETS < 1 << 16);

impl BucketCounter {
    /// Adds one session; sessions overlapping no bucket are ignored.
    pub fn add(&mut self, user: &str, start: i64, end: i64) {
        let spec = &self.spec;
        let from = spec.window.from_ms;
        if start >= spec.upper_ms() || end < from || start > end {
            return;
        }
        let first = if start <= from {
            0
        } else {
            (start - from) / spec.step_ms
        };
        let last = ((end - from) / spec.step_ms).min(spec.buckets - 1);
        let id = self.users.id(user);
        self.ranges
            .push(u64::from(id) << 32 | (first as u64) << 16 | last as u64);
    }

    /// One row per bucket, zero buckets included.
    pub fn finish(self) -> Vec<ConcurrencyRow> {
        let BucketCounter {
            spec, mut ranges, ..
        } = self;
        ranges.sort_unstable();
        // delta[i] = users entering bucket i minus users leaving before it.
        let mut delta = vec![0i64; spec.buckets as usize + 1];
        let mut add = |first: u64, last: u64| {
            delta[first as usize] += 1;
            delta[last as usize + 1] -= 1;
        };
        let unpack = |range: u64| (range >> 32, (range >> 16) & 0xffff, range & 0xffff);
        let mut current: Option<(u64, u64, u64)> = None;
        for (user, first, last) in ranges.into_iter().map(unpack) {
            current = match current {
                Some((cur_user, cur_first, cur_last))
                    if cur_user == user && first <= cur_last + 1 =>
                {
                    Some((cur_user, cur_first, cur_last.max(last)))
                }
                Some((_, cur_first, cur_last)) => {
                    add(cur_first, cur_last);
                    Some((user, first, last))
                }
                None => Some((user, first, last)),
            };
        }
        if let Some((_, first, last)) = current {
            add(first, last);
        }
        let mut viewers = 0;
        (0..spec.buckets)
            .map(|i| {
                viewers += delta[i as usize];
                ConcurrencyRow {
                    bucket_start_ms: spec.window.from_ms + i * spec.step_ms,
                    viewers,
                }
            })
            .collect()
    }
}

/// Longest id kept inline in [`DenseIds`] (the byte after it is the length).
const INLINE_ID_BYTES: usize = 23;

/// Ids (of users, of titles) to dense integers, 0, 1, 2, ... in order of
/// first sight. Ids up to [`INLINE_ID_BYTES`] (the usual case) are keys by
/// value; longer ones go to a map of owned strings.
#[derive(Debug, Default)]
pub(crate) struct DenseIds {
    short: std::collections::HashMap<[u8; INLINE_ID_BYTES + 1], u32>,
    long: std::collections::HashMap<String, u32>,
}

impl DenseIds {
    /// The integer of `id`, given it the first time it is seen.
    pub(crate) fn id(&mut self, id: &str) -> u32 {
        let next = self.len() as u32;
        match inline_key(id) {
            Some(key) => *self.short.entry(key).or_insert(next),
            None => match self.long.get(id) {
                Some(&n) => n,
                None => {
                    self.long.insert(id.to_owned(), next);
                    next
                }
            },
        }
    }

    /// The integer of `id` if it was seen.
    pub(crate) fn get(&self, id: &str) -> Option<u32> {
        match inline_key(id) {
            Some(key) => self.short.get(&key).copied(),
            None => self.long.get(id).copied(),
        }
    }

    /// How many ids were seen.
    pub(crate) fn len(&self) -> usize {
        self.short.len() + self.long.len()
    }
}

/// `id` as an inline key, when it is short enough.
fn inline_key(id: &str) -> Option<[u8; INLINE_ID_BYTES + 1]> {
    let bytes = id.as_bytes();
    (bytes.len() <= INLINE_ID_BYTES).then(|| {
        let mut key = [0u8; INLINE_ID_BYTES + 1];
        key[..bytes.len()].copy_from_slice(bytes);
        key[INLINE_ID_BYTES] = bytes.len() as u8;
        key
    })
}

/// A user id from a path: non-empty, at most 128 bytes, no control characters.
pub fn parse_id(name: &str, value: &str) -> Result<String, ParamError> {
    if value.is_empty() {
        return Err(bad(format!("{name} must not be empty")));
    }
    if value.len() > MAX_ID_BYTES {
        return Err(bad(format!("{name} is longer than {MAX_ID_BYTES} bytes")));
    }
    if value.chars().any(char::is_control) {
        return Err(bad(format!("{name} contains control characters")));
    }
    Ok(value.to_string())
}

/// The optional period of `GET /v1/users/{id}/sessions`: absent bounds are
/// open (all of the user's sessions), present ones are RFC 3339 (`?to=` is
/// a bad time, not an absent one).
pub fn optional_period(from: Option<&str>, to: Option<&str>) -> Result<(i64, i64), ParamError> {
    let bound = |name: &str, value: Option<&str>, open: i64| match value {
        Some(text) => rfc3339_to_ms(text).map_err(|e| bad(format!("{name}: {e}"))),
        None => Ok(open),
    };
    let from_ms = bound("from", from, i64::MIN)?;
    let to_ms = bound("to", to, i64::MAX)?;
    if from_ms >= to_ms {
        return Err(bad("from must be before to"));
    }
    Ok((from_ms, to_ms))
}

/// `{license_holder_id, video_id, sessions, viewers, watch_ms, amount_micros}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RoyaltyRow {
    pub license_holder_id: String,
    pub video_id: String,
    pub sessions: i64,
    pub viewers: i64,
    pub watch_ms: i64,
    pub amount_micros: i64,
}

hb_common::row_struct! {
    /// `{advertiser_id, campaign_id, ad_id, impressions, viewers}`.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
    pub struct ImpressionRow {
        pub advertiser_id: String,
        pub campaign_id: String,
        pub ad_id: String,
        pub impressions: i64,
        pub viewers: i64,
    }
}

/// `{bucket_start_ms, viewers}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ConcurrencyRow {
    pub bucket_start_ms: i64,
    pub viewers: i64,
}

hb_common::row_struct! {
    /// `{hour_start_ms, license_holder_id, heartbeats, devices}`.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
    pub struct TrafficRow {
        pub hour_start_ms: i64,
        pub license_holder_id: String,
        pub heartbeats: i64,
        pub devices: i64,
    }
}

hb_common::row_struct! {
    /// `{video_id, last_position_ms, end_ms, start_ms}` of a user's latest session per video.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
    pub struct ProgressRow {
        pub video_id: String,
        pub last_position_ms: i64,
        pub end_ms: i64,
        pub start_ms: i64,
    }
}

/// A session with every field of SPEC 5.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SessionRow {
    pub user_id: String,
    pub video_id: String,
    pub start_ms: i64,
    pub end_ms: i64,
    pub heartbeats: i64,
    pub watch_ms: i64,
    pub coverage_ms: i64,
    pub last_position_ms: i64,
    pub ads: Vec<String>,
    pub devices: i64,
    /// False while the session may still grow (SPEC 5.7).
    pub is_final: bool,
}

/// Royalty due for `watch_ms` at `rate_micros_per_hour`:
/// `floor(watch_ms * rate / 3_600_000)`, in 128-bit so no realistic input
/// overflows (a 64-bit product would overflow past ~2.5e12 watch-ms at a
/// 1 000 000 000 µ/h rate); `None` only if the result exceeds `i64`.
pub fn amount_micros(watch_ms: i64, rate_micros_per_hour: i64) -> Option<i64> {
    let product = i128::from(watch_ms) * i128::from(rate_micros_per_hour);
    i64::try_from(product.div_euclid(3_600_000)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = 3_600_000;

    #[test]
    fn windows_must_be_ordered_and_after_the_epoch() {
        assert!(Window::new(0, 1).is_ok());
        assert!(Window::new(5, 5).is_err());
        assert!(Window::new(6, 5).is_err());
        assert!(Window::new(-1, 5).is_err());
        let w = Window::from_rfc3339(
            Some("2024-01-01T00:00:00Z"),
            Some("2024-01-01T01:00:00+00:00"),
        )
        .unwrap();
        assert_eq!(w.to_ms() - w.from_ms(), H);
        assert!(Window::from_rfc3339(None, Some("2024-01-01T00:00:00Z"))
            .unwrap_err()
            .0
            .contains("missing from"));
        assert!(
            Window::from_rfc3339(Some("yesterday"), Some("2024-01-01T00:00:00Z"))
                .unwrap_err()
                .0
                .contains("from")
        );
    }

    #[test]
    fn traffic_is_capped_by_hours() {
        assert!(Window::new(0, MAX_TRAFFIC_HOURS * H)
            .unwrap()
            .for_traffic()
            .is_ok());
        assert!(Window::new(0, MAX_TRAFFIC_HOURS * H + 1)
            .unwrap()
            .for_traffic()
            .is_err());
    }

    #[test]
    fn concurrency_specs_bound_step_and_buckets() {
        let w = Window::new(0, 600_000).unwrap();
        assert_eq!(ConcurrencySpec::new(w, 60).unwrap().buckets(), 10);
        assert_eq!(ConcurrencySpec::new(w, 7).unwrap().buckets(), 86);
        assert!(ConcurrencySpec::new(w, 0).is_err());
        assert!(ConcurrencySpec::new(w, 86_401).is_err());
        let long = Window::new(0, 10_001 * 1_000).unwrap();
        assert!(ConcurrencySpec::new(long, 1).is_err());
        assert_eq!(ConcurrencySpec::parse_step(None).unwrap(), 60);
        assert!(ConcurrencySpec::parse_step(Some("1.5")).is_err());
        assert!(ConcurrencySpec::parse_step(Some("")).is_err());
    }

    #[test]
    fn counting_merges_a_users_sessions_and_honours_edges() {
        let spec = ConcurrencySpec::new(Window::new(1_000, 4_000).unwrap(), 1).unwrap();
        let rows = spec.count(vec![
            // before the window, ends exactly at its start: counted in bucket 0
            ("a".to_string(), 0, 1_000),
            // two sessions of b in bucket 1: counted once
            ("b".to_string(), 2_000, 2_100),
            ("b".to_string(), 2_500, 2_999),
            // starts at the end of bucket 1: only bucket 2
            ("c".to_string(), 3_000, 9_000),
            // ends just before the window
            ("d".to_string(), 0, 999),
        ]);
        let viewers: Vec<i64> = rows.iter().map(|r| r.viewers).collect();
        assert_eq!(viewers, vec![1, 1, 1]);
        assert_eq!(rows[2].bucket_start_ms, 3_000);
        assert_eq!(
            spec.count(Vec::new())
                .iter()
                .map(|r| r.viewers)
                .sum::<i64>(),
            0
        );
    }

    #[test]
    fn long_and_short_user_ids_are_told_apart() {
        let spec = ConcurrencySpec::new(Window::new(0, 2_000).unwrap(), 1).unwrap();
        let long = "x".repeat(INLINE_ID_BYTES + 1);
        let longer = "x".repeat(INLINE_ID_BYTES + 2);
        let inline = "x".repeat(INLINE_ID_BYTES);
        let rows = spec.count(vec![
            (long.clone(), 0, 500),
            (long.clone(), 400, 999),
            (longer, 0, 10),
            (inline.clone(), 0, 10),
            (inline, 5, 1_500),
            ("x".to_string(), 1_000, 1_999),
            ("x\0".to_string(), 1_000, 1_000),
        ]);
        let viewers: Vec<i64> = rows.iter().map(|r| r.viewers).collect();
        assert_eq!(viewers, vec![3, 3]);
    }

    #[test]
    fn amounts_floor_in_wide_arithmetic() {
        assert_eq!(amount_micros(3_600_000, 1_000_000), Some(1_000_000));
        assert_eq!(amount_micros(1, 3_599_999), Some(0));
        assert_eq!(amount_micros(7, 1_000_000), Some(1));
        assert_eq!(
            amount_micros(i64::MAX, 3_600_000),
            Some(i64::MAX),
            "no 64-bit overflow in the product"
        );
        assert_eq!(amount_micros(i64::MAX, i64::MAX), None);
    }

    #[test]
    fn ids_are_checked() {
        assert!(parse_id("user_id", "u-1").is_ok());
        assert!(parse_id("user_id", "").is_err());
        assert!(parse_id("user_id", &"x".repeat(129)).is_err());
        assert!(parse_id("user_id", "a\nb").is_err());
    }

    #[test]
    fn the_sessions_period_is_optional() {
        assert_eq!(optional_period(None, None).unwrap(), (i64::MIN, i64::MAX));
        assert!(optional_period(None, Some("")).is_err());
        assert!(optional_period(Some(""), None).is_err());
        assert!(
            optional_period(Some("2024-01-01T00:00:00Z"), Some("2023-01-01T00:00:00Z")).is_err()
        );
    }
}
