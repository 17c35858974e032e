//! The `ReportEngine` seam: the four aggregate reports, run either as SQL on
//! the sessions store ([`direct::DirectEngine`]) or through Trino
//! ([`trino::TrinoEngine`]), from the same SQL text ([`sql`]). Both engines
//! return the raw aggregates; the shared finishing below (amounts, bucket
//! counting, ordering) makes their answers identical by construction.

mod coalesce;
pub mod direct;
pub mod rollup;
pub mod sql;
pub mod trino;

use crate::error::EngineError;
use crate::report::DenseIds;
use crate::report::{
    amount_micros, ConcurrencyRow, ConcurrencySpec, ImpressionRow, RoyaltyRow, TrafficRow, Window,
};
use async_trait::async_trait;

/// Locks a mutex of the engine's bookkeeping, poisoned or not: nothing
/// panics while holding one, so the data behind a poisoned one is whole.
pub(crate) fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A backend that computes the aggregate reports. Scope filters are applied
/// inside the query (never by filtering rows afterwards).
#[async_trait]
pub trait ReportEngine: Send + Sync + 'static {
    /// `direct-sqlite`, `direct-postgres` or `trino`, for logs.
    fn name(&self) -> &'static str;

    /// Royalty rows of sessions started in `window`, only `license_holder`'s when given.
    async fn royalties(
        &self,
        window: Window,
        license_holder: Option<&str>,
    ) -> Result<Vec<RoyaltyRow>, EngineError>;

    /// Impression rows of sessions started in `window`, only `advertiser`'s when given.
    async fn impressions(
        &self,
        window: Window,
        advertiser: Option<&str>,
    ) -> Result<Vec<ImpressionRow>, EngineError>;

    /// Distinct viewers per bucket, zero buckets included.
    async fn concurrency(&self, spec: ConcurrencySpec) -> Result<Vec<ConcurrencyRow>, EngineError>;

    /// Raw heartbeats and distinct devices per hour and license holder.
    async fn traffic(
        &self,
        window: Window,
        license_holder: Option<&str>,
    ) -> Result<Vec<TrafficRow>, EngineError>;
}

hb_common::row_struct! {
    /// A royalties aggregate before the amount is computed.
    #[derive(Debug, Clone)]
    pub struct RoyaltyAggregate {
        pub license_holder_id: String,
        pub video_id: String,
        pub sessions: i64,
        pub viewers: i64,
        pub watch_ms: i64,
        pub rate_micros_per_hour: i64,
    }
}

/// Sessions, distinct viewers and watch time per title, fed one session at
/// a time (for a short period on the embedded store, see
/// [`sql::Tables::royalty_sessions`]). Titles and users are interned to
/// integers (ids kept inline, no allocation per session), each session
/// becomes one `u64` (title, user), and viewers are the distinct pairs per
/// title after one sort.
#[derive(Debug, Default)]
pub struct RoyaltyCounter {
    titles: DenseIds,
    counts: Vec<TitleCount>,
    users: DenseIds,
    pairs: Vec<u64>,
}

/// One title's counted sessions, before the catalog join.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TitleCount {
    pub video_id: String,
    pub sessions: i64,
    pub viewers: i64,
    pub watch_ms: i64,
}

impl TitleCount {
    /// The royalties aggregate of this title under its catalog row.
    pub fn priced(self, license_holder_id: String, rate_micros_per_hour: i64) -> RoyaltyAggregate {
        RoyaltyAggregate {
            license_holder_id,
            video_id: self.video_id,
            sessions: self.sessions,
            viewers: self.viewers,
            watch_ms: self.watch_ms,
            rate_micros_per_hour,
        }
    }
}

impl RoyaltyCounter {
    /// Adds one session.
    pub fn add(&mut self, video_id: &str, user_id: &str, watch_ms: i64) -> Result<(), EngineError> {
        let title = self.titles.id(video_id);
        if title as usize == self.counts.len() {
            self.counts.push(TitleCount {
                video_id: video_id.to_string(),
                sessions: 0,
                viewers: 0,
                watch_ms: 0,
            });
        }
        let user = self.users.id(user_id);
        let count = &mut self.counts[title as usize];
        count.sessions += 1;
        count.watch_ms = count.watch_ms.checked_add(watch_ms).ok_or_else(|| {
            EngineError::Internal(format!(
                "royalty watch time of video {video_id} exceeds 64 bits"
            ))
        })?;
        self.pairs.push(u64::from(title) << 32 | u64::from(user));
        Ok(())
    }

    /// Every title seen, with its distinct viewers.
    pub fn finish(mut self) -> RoyaltyCounts {
        self.pairs.sort_unstable();
        self.pairs.dedup();
        for pair in &self.pairs {
            self.counts[(pair >> 32) as usize].viewers += 1;
        }
        RoyaltyCounts {
            titles: self.titles,
            counts: self.counts.into_iter().map(Some).collect(),
        }
    }
}

/// The counted titles, each taken once by the catalog join.
#[derive(Debug)]
pub struct RoyaltyCounts {
    titles: DenseIds,
    counts: Vec<Option<TitleCount>>,
}

impl RoyaltyCounts {
    /// How many titles were watched.
    pub fn len(&self) -> usize {
        self.counts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    /// The count of `video_id`, if it was watched and not taken yet.
    pub fn take(&mut self, video_id: &str) -> Option<TitleCount> {
        let title = self.titles.get(video_id)?;
        self.counts[title as usize].take()
    }

    /// The counts not taken yet.
    pub fn into_counts(self) -> impl Iterator<Item = TitleCount> {
        self.counts.into_iter().flatten()
    }
}

/// Adds up the rows of a title (the store answers final and open sessions
/// apart), computes amounts from the totals and orders by (license holder,
/// video).
pub fn finish_royalties(mut rows: Vec<RoyaltyAggregate>) -> Result<Vec<RoyaltyRow>, EngineError> {
    rows.sort_by(|a, b| {
        (&a.license_holder_id, &a.video_id).cmp(&(&b.license_holder_id, &b.video_id))
    });
    let mut merged: Vec<RoyaltyAggregate> = Vec::with_capacity(rows.len());
    for row in rows {
        match merged.last_mut() {
            Some(last)
                if last.video_id == row.video_id
                    && last.license_holder_id == row.license_holder_id =>
            {
                let sum = |a: i64, b: i64, what: &str| {
                    a.checked_add(b).ok_or_else(|| {
                        EngineError::Internal(format!(
                            "royalty {what} of video {} exceed 64 bits",
                            row.video_id
                        ))
                    })
                };
                last.sessions = sum(last.sessions, row.sessions, "sessions")?;
                last.viewers = sum(last.viewers, row.viewers, "viewers")?;
                last.watch_ms = sum(last.watch_ms, row.watch_ms, "watch time")?;
            }
            _ => merged.push(row),
        }
    }
    merged
        .into_iter()
        .map(|row| {
            let amount =
                amount_micros(row.watch_ms, row.rate_micros_per_hour).ok_or_else(|| {
                    EngineError::Internal(format!(
                        "royalty amount of video {} exceeds 64 bits",
                        row.video_id
                    ))
                })?;
            Ok(RoyaltyRow {
                license_holder_id: row.license_holder_id,
                video_id: row.video_id,
                sessions: row.sessions,
                viewers: row.viewers,
                watch_ms: row.watch_ms,
                amount_micros: amount,
            })
        })
        .collect()
}

/// Orders impressions by (advertiser, campaign, ad).
pub fn finish_impressions(mut rows: Vec<ImpressionRow>) -> Vec<ImpressionRow> {
    rows.sort_by(|a, b| {
        (&a.advertiser_id, &a.campaign_id, &a.ad_id).cmp(&(
            &b.advertiser_id,
            &b.campaign_id,
            &b.ad_id,
        ))
    });
    rows
}

/// Orders traffic by (hour, license holder).
pub fn finish_traffic(mut rows: Vec<TrafficRow>) -> Vec<TrafficRow> {
    rows.sort_by(|a, b| {
        (a.hour_start_ms, &a.license_holder_id).cmp(&(b.hour_start_ms, &b.license_holder_id))
    });
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_watching_a_title_twice_is_one_viewer_of_it() {
        let mut counter = RoyaltyCounter::default();
        for (video, user, watch) in [
            ("v1", "ann", 1_000),
            ("v1", "ann", 2_000),
            ("v1", "bob", 500),
            ("v2", "ann", 10),
            (
                "a-title-id-longer-than-twenty-three-bytes",
                "a-user-id-longer-than-twenty-three-bytes",
                7,
            ),
            (
                "a-title-id-longer-than-twenty-three-bytes",
                "a-user-id-longer-than-twenty-three-bytes",
                8,
            ),
        ] {
            counter.add(video, user, watch).unwrap();
        }
        let mut counts = counter.finish();
        assert_eq!(counts.len(), 3);
        let count = |video_id: &str, sessions, viewers, watch_ms| TitleCount {
            video_id: video_id.to_string(),
            sessions,
            viewers,
            watch_ms,
        };
        assert_eq!(counts.take("v1"), Some(count("v1", 3, 2, 3_500)));
        assert_eq!(counts.take("v1"), None, "a title is taken once");
        assert_eq!(counts.take("v3"), None, "an unwatched title has no count");
        let rest: Vec<TitleCount> = counts.into_counts().collect();
        assert_eq!(
            rest,
            vec![
                count("v2", 1, 1, 10),
                count("a-title-id-longer-than-twenty-three-bytes", 2, 1, 15),
            ]
        );
    }

    #[test]
    fn watch_time_past_64_bits_is_an_error_not_a_wrapped_sum() {
        let mut counter = RoyaltyCounter::default();
        counter.add("v1", "ann", i64::MAX).unwrap();
        assert!(counter.add("v1", "bob", 1).is_err());
    }
}
