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
use crate::report::{
    amount_micros, ConcurrencyRow, ConcurrencySpec, ImpressionRow, RoyaltyRow, TrafficRow, Window,
};
use async_trait::async_trait;

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

/// A royalties aggregate before the amount is computed.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RoyaltyAggregate {
    pub license_holder_id: String,
    pub video_id: String,
    pub sessions: i64,
    pub viewers: i64,
    pub watch_ms: i64,
    pub rate_micros_per_hour: i64,
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
