//! The traffic report's whole hours, summed once and kept in the store
//! (`traffic_rollup`, migration `traffic_rollup`), for the direct engine.
//!
//! A month of traffic over the raw mirror reads and sorts every heartbeat of
//! the month (millions of rows); summed per hour it reads at most one row per
//! (hour, license holder). The answer stays exact because an hour's stored
//! result is used only while nothing it depends on has changed since it was
//! computed: every write of raw rows bumps its hour's version
//! (`hb_common::raw::BUMP_RAW_HOUR_SQL`) and every catalog change bumps the
//! catalog version (triggers), each in the transaction making the change.
//! Versions are read before the raw rows they label, so a label is never
//! newer than its data; a mismatch only costs a recount.
//!
//! Partial hours at the ends of a period are always read from the raw rows.

use super::lock;
use crate::error::EngineError;
use crate::report::DenseIds;
use crate::report::TrafficRow;
use crate::store::{
    pg_snapshot, prepare_bound, save_traffic_hours, sqlite_read, sqlite_text, stale_traffic_hours,
};
use hb_common::raw::HOUR_MS;
use hb_common::shutdown::CancellationToken;
use hb_common::store::{pg_copy, Param, Statement, Store};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// Hours recounted per transaction, so a long refresh keeps its progress.
const HOURS_PER_SAVE: usize = 24;

/// Keeps the stored hours of a store fresh. Refreshes run side by side and
/// split the work per hour: an hour is counted by one of them at a time
/// (two saving the same hour at once would collide on its rows), and a
/// request for a day counts that day itself instead of queueing behind the
/// start-up count of a whole imported month.
#[derive(Clone, Debug, Default)]
pub struct TrafficRollup {
    counting: Arc<Counting>,
    owners: OwnersCache,
}

/// `[from, to)` cut into whole hours and the partial hours around them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HourSplit {
    /// First and past-the-last whole hour; empty when `start >= end`.
    pub whole: (i64, i64),
    /// The partial hours before and after, as periods (empty ones omitted).
    pub head: Option<(i64, i64)>,
    pub tail: Option<(i64, i64)>,
}

impl HourSplit {
    pub fn of(from_ms: i64, to_ms: i64) -> HourSplit {
        let start = from_ms.div_euclid(HOUR_MS) * HOUR_MS
            + if from_ms.rem_euclid(HOUR_MS) == 0 {
                0
            } else {
                HOUR_MS
            };
        let end = to_ms.div_euclid(HOUR_MS) * HOUR_MS;
        if start >= end {
            return HourSplit {
                whole: (start, start),
                head: (from_ms < to_ms).then_some((from_ms, to_ms)),
                tail: None,
            };
        }
        HourSplit {
            whole: (start, end),
            head: (from_ms < start).then_some((from_ms, start)),
            tail: (end < to_ms).then_some((end, to_ms)),
        }
    }
}

impl TrafficRollup {
    /// Recounts every whole hour of `[start, end)` whose stored result is
    /// missing or stale. Runs on its own task: a request that gives up at
    /// its deadline does not throw the work away.
    ///
    /// Hours another refresh is counting are waited for and then read
    /// again, so a write that landed before this call but after the other
    /// refresh read its versions is still counted here.
    pub async fn refresh(&self, store: &Store, start: i64, end: i64) -> Result<(), EngineError> {
        let (counting, owners) = (self.counting.clone(), self.owners.clone());
        let store = store.clone();
        tokio::spawn(async move {
            loop {
                let stale = stale_traffic_hours(&store, start, end).await?;
                let mut busy = None;
                // Claimed a run at a time, as the count reaches it, so a
                // long refresh leaves the hours ahead of it to others.
                for run in runs(&stale) {
                    let (claim, others) = counting.claim(run);
                    busy = busy.or(others);
                    if !claim.is_empty() {
                        count_claimed(&store, &owners, &claim).await?;
                    }
                }
                match busy {
                    Some(done) => done.cancelled().await,
                    None => return Ok::<(), EngineError>(()),
                }
            }
        })
        .await
        .map_err(|err| EngineError::Internal(format!("traffic refresh task: {err}")))?
    }

    /// The stored rows of the whole hours in `[start, end)`, one holder's
    /// when scoped. Call [`TrafficRollup::refresh`] first.
    pub fn read(start: i64, end: i64, license_holder: Option<&str>) -> Statement {
        let mut params = vec![Param::Int(start), Param::Int(end)];
        let scope = match license_holder {
            Some(id) => {
                params.push(Param::Text(id.to_string()));
                " AND license_holder_id = $3"
            }
            None => "",
        };
        Statement {
            sql: format!(
                "SELECT hour_ms AS hour_start_ms, license_holder_id, heartbeats, devices\n\
                 FROM traffic_rollup\n\
                 WHERE hour_ms >= $1 AND hour_ms < $2{scope}"
            ),
            params,
        }
    }
}

/// Counts and saves the claimed hours that are still stale: another
/// refresh may have counted some of them since this one listed them. Each
/// run is labelled with the catalog version read with its rows.
async fn count_claimed(
    store: &Store,
    owners: &OwnersCache,
    claim: &Claim,
) -> Result<(), EngineError> {
    let (first, last) = claim.span();
    let stale = stale_traffic_hours(store, first, last + HOUR_MS).await?;
    let mine: Vec<(i64, i64)> = stale.into_iter().filter(|(h, _)| claim.holds(*h)).collect();
    for run in runs(&mine) {
        let (first, last) = (run[0].0, run[run.len() - 1].0);
        let (catalog_version, rows) = count_raw(store, owners, first, last + HOUR_MS).await?;
        save_traffic_hours(store, run, catalog_version, &rows).await?;
    }
    Ok(())
}

/// Every title's license holder as of one catalog version: read once per
/// version instead of once per counted run (20 k titles, a month is 30
/// runs). The version is bumped by any change to who holds which title, in
/// the transaction making it, so a map read in one snapshot with its
/// version stays exact for every snapshot showing that version.
#[derive(Debug, Default)]
struct Owners {
    version: i64,
    titles: DenseIds,
    holder_of_title: Vec<u32>,
    holders: Interner,
}

impl Owners {
    fn new(version: i64) -> Owners {
        Owners {
            version,
            ..Owners::default()
        }
    }

    /// Names a catalog title's holder.
    fn title(&mut self, video_id: &str, holder: &str) {
        let title = self.titles.id(video_id) as usize;
        let holder = self.holders.id(holder);
        if title == self.holder_of_title.len() {
            self.holder_of_title.push(holder);
        } else {
            self.holder_of_title[title] = holder;
        }
    }

    /// The holder of a catalog title; `None` for a title not in it.
    fn holder(&self, video_id: &str) -> Option<u32> {
        let title = self.titles.get(video_id)?;
        Some(self.holder_of_title[title as usize])
    }
}

/// The last [`Owners`] read, shared by the refreshes of one engine.
#[derive(Clone, Debug, Default)]
struct OwnersCache(Arc<Mutex<Option<Arc<Owners>>>>);

impl OwnersCache {
    /// The owners of `version`, if they are the ones kept.
    fn of(&self, version: i64) -> Option<Arc<Owners>> {
        let kept = lock(&self.0);
        kept.as_ref().filter(|o| o.version == version).cloned()
    }

    /// Keeps `owners` (just read) in place of the last ones.
    fn keep(&self, owners: Owners) -> Arc<Owners> {
        let owners = Arc::new(owners);
        *lock(&self.0) = Some(owners.clone());
        owners
    }
}

/// The hours being counted right now, each with a token cancelled when its
/// counter is done with it (saved, failed or dropped).
#[derive(Debug, Default)]
struct Counting {
    hours: Mutex<HashMap<i64, CancellationToken>>,
}

impl Counting {
    fn hours(&self) -> MutexGuard<'_, HashMap<i64, CancellationToken>> {
        lock(&self.hours)
    }

    /// Claims the hours of `wanted` that nobody is counting; also returns
    /// the token of one hour somebody else is counting, to wait for.
    fn claim(self: &Arc<Self>, wanted: &[(i64, i64)]) -> (Claim, Option<CancellationToken>) {
        let done = CancellationToken::new();
        let mut hours = Vec::new();
        let mut busy = None;
        let mut counting = self.hours();
        for &(hour, _) in wanted {
            match counting.get(&hour) {
                Some(other) => busy = busy.or_else(|| Some(other.clone())),
                None => {
                    counting.insert(hour, done.clone());
                    hours.push(hour);
                }
            }
        }
        let claim = Claim {
            counting: self.clone(),
            hours,
            done,
        };
        (claim, busy)
    }
}

/// Hours one refresh counts; let go (and waiters woken) when dropped.
struct Claim {
    counting: Arc<Counting>,
    /// Ascending, as claimed from a run.
    hours: Vec<i64>,
    done: CancellationToken,
}

impl Claim {
    fn is_empty(&self) -> bool {
        self.hours.is_empty()
    }

    fn holds(&self, hour: i64) -> bool {
        self.hours.binary_search(&hour).is_ok()
    }

    /// First and last claimed hour; call on a claim that is not empty.
    fn span(&self) -> (i64, i64) {
        (self.hours[0], self.hours[self.hours.len() - 1])
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut counting = self.counting.hours();
        for hour in &self.hours {
            counting.remove(hour);
        }
        drop(counting);
        self.done.cancel();
    }
}

/// How long counting one run of hours from the raw rows may take.
const RAW_COUNT_DEADLINE: Duration = Duration::from_secs(600);

/// The raw heartbeats of `[from, to)`: (event_time_ms, video_id,
/// device_id), in any order.
fn raw_rows(from_ms: i64, to_ms: i64) -> Statement {
    Statement {
        sql: "SELECT event_time_ms, video_id, device_id FROM raw_heartbeats\n\
              WHERE event_time_ms >= $1 AND event_time_ms < $2"
            .to_string(),
        params: vec![Param::Int(from_ms), Param::Int(to_ms)],
    }
}

/// Every title's license holder: (video_id, license_holder_id).
fn title_holders() -> Statement {
    Statement {
        sql: "SELECT video_id, license_holder_id FROM videos".to_string(),
        params: Vec::new(),
    }
}

/// The catalog version, read in the snapshot of the rows it labels.
const CATALOG_VERSION: &str = "SELECT version FROM catalog_version WHERE id = 1";

/// The traffic report of `[from, to)` (whole hours) from the raw rows,
/// counted in Rust as the store hands them over: the report's SQL sorts
/// every raw row twice (per hour, title and device, then per hour and
/// holder for the distinct devices; on PostgreSQL the sorts spill to disk
/// at the default `work_mem`); here each row is three hash look-ups. The
/// catalog is read once, in the same read transaction as the raw rows, and
/// each row's title looked up in it: on SQLite joining in SQL costs two
/// B-tree searches a row, several times the read itself. Same definition as
/// [`Tables::traffic`](super::sql::Tables::traffic): raw heartbeats of
/// titles in the catalog, per hour and license holder, with the distinct
/// devices among them. Returns the catalog version the rows were counted
/// with.
async fn count_raw(
    store: &Store,
    cache: &OwnersCache,
    from_ms: i64,
    to_ms: i64,
) -> Result<(i64, Vec<TrafficRow>), EngineError> {
    let (titles, raw) = (title_holders(), raw_rows(from_ms, to_ms));
    let cache = cache.clone();
    match store {
        Store::Sqlite(pool) => {
            sqlite_read(pool, RAW_COUNT_DEADLINE, move |connection| {
                let snapshot = connection.unchecked_transaction()?;
                let version: i64 = connection.query_row(CATALOG_VERSION, [], |row| row.get(0))?;
                let owners = match cache.of(version) {
                    Some(owners) => owners,
                    None => {
                        let mut owners = Owners::new(version);
                        let mut catalog = prepare_bound(connection, &titles)?;
                        let mut rows = catalog.raw_query();
                        while let Some(row) = rows.next()? {
                            owners.title(sqlite_text(row, 0)?, sqlite_text(row, 1)?);
                        }
                        cache.keep(owners)
                    }
                };
                let mut counter = RawCounter::new(owners);
                let mut scan = prepare_bound(connection, &raw)?;
                let mut rows = scan.raw_query();
                while let Some(row) = rows.next()? {
                    counter.add(row.get(0)?, sqlite_text(row, 1)?, sqlite_text(row, 2)?);
                }
                drop(rows);
                snapshot.commit()?;
                Ok((version, counter.finish()))
            })
            .await
        }
        // Binary COPY (see `pg_copy`), every read in one snapshot.
        Store::Postgres(pool) => {
            let count = async {
                let mut tx = pg_snapshot(pool).await?;
                let version: i64 = sqlx::query_scalar(CATALOG_VERSION)
                    .fetch_one(&mut *tx)
                    .await?;
                let owners = match cache.of(version) {
                    Some(owners) => owners,
                    None => {
                        let mut owners = Owners::new(version);
                        pg_copy::each_row(&mut tx, &titles, |row| {
                            owners.title(pg_copy::text(row, 0)?, pg_copy::text(row, 1)?);
                            Ok::<_, EngineError>(())
                        })
                        .await?;
                        cache.keep(owners)
                    }
                };
                let mut counter = RawCounter::new(owners);
                pg_copy::each_row(&mut tx, &raw, |row| {
                    counter.add(
                        pg_copy::int8(row, 0)?,
                        pg_copy::text(row, 1)?,
                        pg_copy::text(row, 2)?,
                    );
                    Ok::<_, EngineError>(())
                })
                .await?;
                tx.commit().await?;
                Ok::<_, EngineError>((version, counter.finish()))
            };
            match tokio::time::timeout(RAW_COUNT_DEADLINE, count).await {
                Ok(counted) => counted,
                Err(_) => Err(EngineError::Deadline(RAW_COUNT_DEADLINE)),
            }
        }
    }
}

/// Heartbeats and distinct devices per (hour, license holder), fed one raw
/// row at a time; titles, holders and devices interned so the sets hold
/// integers.
struct RawCounter {
    owners: Arc<Owners>,
    devices: DenseIds,
    heartbeats: HashMap<(i64, u32), i64>,
    seen: HashSet<(i64, u32, u32)>,
}

impl RawCounter {
    fn new(owners: Arc<Owners>) -> RawCounter {
        RawCounter {
            owners,
            devices: DenseIds::default(),
            heartbeats: HashMap::new(),
            seen: HashSet::new(),
        }
    }

    /// Counts one raw heartbeat; those of titles missing from the catalog
    /// are left out (as the report's join leaves them out).
    fn add(&mut self, event_time_ms: i64, video_id: &str, device: &str) {
        let Some(holder) = self.owners.holder(video_id) else {
            return;
        };
        let hour = event_time_ms - event_time_ms.rem_euclid(HOUR_MS);
        let device = self.devices.id(device);
        *self.heartbeats.entry((hour, holder)).or_insert(0) += 1;
        self.seen.insert((hour, holder, device));
    }

    fn finish(self) -> Vec<TrafficRow> {
        let mut distinct: HashMap<(i64, u32), i64> = HashMap::new();
        for (hour, holder, _) in self.seen {
            *distinct.entry((hour, holder)).or_insert(0) += 1;
        }
        let names = &self.owners.holders.names;
        self.heartbeats
            .into_iter()
            .map(|((hour, holder), count)| TrafficRow {
                hour_start_ms: hour,
                license_holder_id: names[holder as usize].clone(),
                heartbeats: count,
                devices: distinct.get(&(hour, holder)).copied().unwrap_or(0),
            })
            .collect()
    }
}

/// Small integers for repeated strings, copied once each.
#[derive(Debug, Default)]
struct Interner {
    ids: HashMap<String, u32>,
    names: Vec<String>,
}

impl Interner {
    fn id(&mut self, name: &str) -> u32 {
        if let Some(&id) = self.ids.get(name) {
            return id;
        }
        let id = self.names.len() as u32;
        self.ids.insert(name.to_owned(), id);
        self.names.push(name.to_owned());
        id
    }
}

/// Stale `(hour, version)`s, ascending, cut into runs of consecutive hours
/// of at most [`HOURS_PER_SAVE`]: each run is one raw query and one save.
fn runs(stale: &[(i64, i64)]) -> Vec<&[(i64, i64)]> {
    let mut out = Vec::new();
    let mut begin = 0;
    for i in 1..=stale.len() {
        let cut = i == stale.len()
            || stale[i].0 != stale[i - 1].0 + HOUR_MS
            || i - begin == HOURS_PER_SAVE;
        if cut {
            out.push(&stale[begin..i]);
            begin = i;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_period_splits_into_partial_and_whole_hours() {
        let h = HOUR_MS;
        assert_eq!(
            HourSplit::of(h / 2, 3 * h + 5),
            HourSplit {
                whole: (h, 3 * h),
                head: Some((h / 2, h)),
                tail: Some((3 * h, 3 * h + 5)),
            }
        );
        assert_eq!(
            HourSplit::of(h, 3 * h),
            HourSplit {
                whole: (h, 3 * h),
                head: None,
                tail: None,
            }
        );
        // Inside one hour: all of it from the raw rows.
        assert_eq!(
            HourSplit::of(h + 1, 2 * h - 1),
            HourSplit {
                whole: (2 * h, 2 * h),
                head: Some((h + 1, 2 * h - 1)),
                tail: None,
            }
        );
        assert_eq!(HourSplit::of(h, h).head, None);
    }

    fn hours(of: &[i64]) -> Vec<(i64, i64)> {
        of.iter().map(|&i| (i * HOUR_MS, 1)).collect()
    }

    #[test]
    fn an_hour_is_counted_by_one_refresh_at_a_time() {
        let counting = Arc::new(Counting::default());
        let (month, busy) = counting.claim(&hours(&[0, 1, 2]));
        assert!(busy.is_none());
        assert_eq!(month.span(), (0, 2 * HOUR_MS));

        // A request for other hours gets them at once; for the same hours
        // it gets the other counter's token to wait for.
        let (day, busy) = counting.claim(&hours(&[2, 3, 4]));
        assert!(day.holds(3 * HOUR_MS) && day.holds(4 * HOUR_MS));
        assert!(!day.holds(2 * HOUR_MS));
        let busy = busy.expect("hour 2 is being counted");
        assert!(!busy.is_cancelled());

        // Letting go (on success, error or a dropped task alike) wakes the
        // waiter and frees the hours.
        drop(month);
        assert!(busy.is_cancelled());
        let (again, busy) = counting.claim(&hours(&[0, 1, 2, 3]));
        assert!(busy.is_some(), "hour 3 is still the day's");
        assert!(again.holds(0) && again.holds(2 * HOUR_MS) && !again.holds(3 * HOUR_MS));
        drop((day, again));
        assert!(counting.hours().is_empty());
    }

    #[test]
    fn stale_hours_are_recounted_in_runs_of_consecutive_hours() {
        let h = HOUR_MS;
        let stale: Vec<(i64, i64)> = [0, 1, 2, 5, 6, 9].iter().map(|&i| (i * h, 1)).collect();
        let lengths: Vec<usize> = runs(&stale).iter().map(|r| r.len()).collect();
        assert_eq!(lengths, vec![3, 2, 1]);
        let day: Vec<(i64, i64)> = (0..30).map(|i| (i * h, 1)).collect();
        let lengths: Vec<usize> = runs(&day).iter().map(|r| r.len()).collect();
        assert_eq!(lengths, vec![24, 6]);
        assert!(runs(&[]).is_empty());
    }
}
