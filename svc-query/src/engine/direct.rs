//! Reports as SQL run directly on the sessions store (SQLite in the embedded
//! tier, PostgreSQL/YugabyteDB when no Trino is configured).
//!
//! The deadline is a client-side timeout: the request is answered with 504
//! when it passes and the query future is dropped. What the database does
//! then is up to sqlx 0.8: SQLite's worker stops at the next row it would
//! hand over (an aggregation still finishes its first row), PostgreSQL's
//! backend finishes the statement and the connection drains it before
//! reuse; neither offers a server-side cancel through sqlx. Reports on the
//! store are bounded by the period caps in [`crate::report`] instead.
use super::sql::Tables;
use super::{finish_impressions, finish_royalties, finish_traffic, ReportEngine, RoyaltyAggregate};
use crate::error::EngineError;
use crate::report::{
    ConcurrencyRow, ConcurrencySpec, ImpressionRow, RoyaltyRow, TrafficRow, Window,
};
use crate::store::Store;
use async_trait::async_trait;
use std::time::Duration;

/// The direct SQL engine.
#[derive(Clone, Debug)]
pub struct DirectEngine {
    store: Store,
    tables: Tables,
    timeout: Duration,
}

impl DirectEngine {
    pub fn new(store: Store, timeout: Duration) -> DirectEngine {
        DirectEngine {
            store,
            tables: Tables::store(),
            timeout,
        }
    }

    async fn within_deadline<T, F>(&self, work: F) -> Result<T, EngineError>
    where
        F: std::future::Future<Output = Result<T, sqlx::Error>>,
    {
        match tokio::time::timeout(self.timeout, work).await {
            Ok(result) => result.map_err(EngineError::from),
            Err(_) => Err(EngineError::Deadline(self.timeout)),
        }
    }
}

#[async_trait]
impl ReportEngine for DirectEngine {
    fn name(&self) -> &'static str {
        match self.store {
            Store::Sqlite(_) => "direct-sqlite",
            Store::Postgres(_) => "direct-postgres",
        }
    }

    async fn royalties(
        &self,
        window: Window,
        license_holder: Option<&str>,
    ) -> Result<Vec<RoyaltyRow>, EngineError> {
        let statement = self
            .tables
            .royalties(window.from_ms(), window.to_ms(), license_holder);
        let rows: Vec<RoyaltyAggregate> = self
            .within_deadline(self.store.fetch_all(&statement))
            .await?;
        finish_royalties(rows)
    }

    async fn impressions(
        &self,
        window: Window,
        advertiser: Option<&str>,
    ) -> Result<Vec<ImpressionRow>, EngineError> {
        let statement = self
            .tables
            .impressions(window.from_ms(), window.to_ms(), advertiser);
        let rows = self
            .within_deadline(self.store.fetch_all(&statement))
            .await?;
        Ok(finish_impressions(rows))
    }

    async fn concurrency(&self, spec: ConcurrencySpec) -> Result<Vec<ConcurrencyRow>, EngineError> {
        let statement = self
            .tables
            .concurrency(spec.window().from_ms(), spec.upper_ms());
        let rows: Vec<(String, i64, i64)> = self
            .within_deadline(self.store.fetch_all(&statement))
            .await?;
        Ok(spec.count(rows))
    }

    async fn traffic(
        &self,
        window: Window,
        license_holder: Option<&str>,
    ) -> Result<Vec<TrafficRow>, EngineError> {
        let statement = self
            .tables
            .traffic(window.from_ms(), window.to_ms(), license_holder);
        let rows = self
            .within_deadline(self.store.fetch_all(&statement))
            .await?;
        Ok(finish_traffic(rows))
    }
}
