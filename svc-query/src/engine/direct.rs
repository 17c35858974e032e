//! Reports as SQL run directly on the sessions store (SQLite in the embedded
//! tier, PostgreSQL/YugabyteDB when no Trino is configured).
//!
//! The deadline is a client-side timeout: the request is answered with 504
//! when it passes and the query future is dropped. What the database does
//! then is up to sqlx 0.8: SQLite's worker stops at the next row it would
//! hand over (an aggregation still finishes its first row), PostgreSQL's
//! backend finishes the statement and the connection drains it before
//! reuse; neither offers a server-side cancel through sqlx. Reports on the
//! store are bounded by the period caps in [`crate::report`] instead. The
//! exceptions are royalties, concurrency and the traffic roll-up on SQLite,
//! read through rusqlite ([`crate::store::sqlite_scan`]), whose deadline
//! interrupts the statement.
use super::coalesce::Coalesced;
use super::rollup::{HourSplit, TrafficRollup};
use super::sql::Tables;
use super::sql::SHORT_ROYALTIES_MS;
use super::{
    finish_impressions, finish_royalties, finish_traffic, ReportEngine, RoyaltyAggregate,
    RoyaltyCounter,
};
use crate::error::EngineError;
use crate::report::{
    ConcurrencyRow, ConcurrencySpec, ImpressionRow, RoyaltyRow, TrafficRow, Window,
};
use crate::store::{
    oldest_raw_ms, pg_snapshot, prepare_bound, sqlite_read, sqlite_scan, sqlite_text,
};
use async_trait::async_trait;
use hb_common::raw::hour_ms;
use hb_common::shutdown::CancellationToken;
use hb_common::store::{pg_copy, Statement, Store, StoredRow};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// How often recent traffic hours are counted in the background.
const ROLLUP_REFRESH_EVERY: Duration = Duration::from_secs(300);

/// The direct SQL engine.
#[derive(Clone, Debug)]
pub struct DirectEngine {
    store: Store,
    tables: Tables,
    timeout: Duration,
    rollup: TrafficRollup,
    /// Reports running at once, the rest wait in line (see [`DirectEngine::new`]).
    running: Arc<Semaphore>,
    /// Identical requests waiting in that line share one run.
    waiting: Waiting,
}

/// The requests waiting for a slot, per report.
#[derive(Clone, Debug, Default)]
struct Waiting {
    royalties: Coalesced<Vec<RoyaltyRow>>,
    impressions: Coalesced<Vec<ImpressionRow>>,
    concurrency: Coalesced<Vec<ConcurrencyRow>>,
    traffic: Coalesced<Vec<TrafficRow>>,
}

impl DirectEngine {
    /// At most one report per core runs at once; others wait for a slot
    /// within their deadline. A report is CPU work on this machine (SQLite)
    /// or the store's, and more reports than cores at once do not finish
    /// sooner in total than one after another: each only gets slower, with
    /// threads and SQLite's allocator contending.
    ///
    /// Requests identical to one still waiting for a slot join it and share
    /// its answer ([`Coalesced`]): read after each of them arrived, so as
    /// exact as a run of their own.
    pub fn new(store: Store, timeout: Duration) -> DirectEngine {
        let cores = std::thread::available_parallelism().map_or(2, usize::from);
        let tables = match store {
            Store::Sqlite(_) => Tables::sqlite(),
            Store::Postgres(_) => Tables::postgres(),
        };
        DirectEngine {
            store,
            tables,
            timeout,
            rollup: TrafficRollup::default(),
            running: Arc::new(Semaphore::new(cores)),
            waiting: Waiting::default(),
        }
    }

    /// Every few minutes, counts the whole hours whose traffic is missing
    /// or stale (the hour that just ended, every hour after a title moved
    /// holder, the hours of an import), until `stop`: every hour from the
    /// oldest raw heartbeat the store holds to the current one. Expiry keeps
    /// that to the raw TTL on a live store, and an imported history is
    /// counted here rather than by its first reader.
    pub async fn keep_traffic_counted(self, stop: CancellationToken) {
        let mut tick = tokio::time::interval(ROLLUP_REFRESH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let oldest = match oldest_raw_ms(&self.store).await {
                Ok(Some(oldest)) => oldest,
                Ok(None) => continue,
                Err(err) => {
                    tracing::warn!(%err, "reading the oldest raw heartbeat failed; retried later");
                    continue;
                }
            };
            let (start, end) = (hour_ms(oldest), hour_ms(hb_common::time::now_ms()));
            let refresh = self.rollup.refresh(&self.store, start, end);
            tokio::select! {
                _ = stop.cancelled() => return,
                done = refresh => if let Err(err) = done {
                    tracing::warn!(%err, "counting recent traffic hours failed; retried later");
                }
            }
        }
    }

    /// `work` run in a report slot with the time left of the deadline, or
    /// the answer of an identical request (`key`) still waiting for one;
    /// the shared answer becomes the caller's own (the last request takes
    /// it without a copy).
    async fn in_slot<T, F, Fut>(
        &self,
        waiting: &Coalesced<Vec<T>>,
        key: String,
        work: F,
    ) -> Result<Vec<T>, EngineError>
    where
        T: Clone + Send + Sync + 'static,
        F: FnOnce(DirectEngine, Duration) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<Vec<T>, EngineError>> + Send + 'static,
    {
        let this = self.clone();
        let answer = waiting
            .run(key, &self.running, self.timeout, move |left| {
                work(this, left)
            })
            .await?;
        Ok(Arc::try_unwrap(answer).unwrap_or_else(|shared| shared.as_ref().clone()))
    }

    /// Every row of `statement` within `left`: on SQLite read through
    /// rusqlite, each row mapped by `from_row` (large answers cost less
    /// than through sqlx), on PostgreSQL through sqlx.
    async fn fetch_rows<T>(
        &self,
        statement: &Statement,
        left: Duration,
        from_row: fn(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Vec<T>, EngineError>
    where
        T: StoredRow + 'static,
    {
        match &self.store {
            Store::Sqlite(pool) => {
                sqlite_scan(pool, statement, left, move |stored| {
                    let mut rows = Vec::new();
                    while let Some(row) = stored.next()? {
                        rows.push(from_row(row)?);
                    }
                    Ok(rows)
                })
                .await
            }
            Store::Postgres(_) => {
                self.within_deadline(left, self.store.fetch_all_replanned(statement))
                    .await
            }
        }
    }

    async fn within_deadline<T, E, F>(&self, left: Duration, work: F) -> Result<T, EngineError>
    where
        F: std::future::Future<Output = Result<T, E>>,
        E: Into<EngineError>,
    {
        match tokio::time::timeout(left, work).await {
            Ok(result) => result.map_err(Into::into),
            Err(_) => Err(EngineError::Deadline(self.timeout)),
        }
    }
}

impl DirectEngine {
    async fn royalties_now(
        &self,
        window: Window,
        license_holder: Option<&str>,
        left: Duration,
    ) -> Result<Vec<RoyaltyRow>, EngineError> {
        if window.to_ms() - window.from_ms() <= SHORT_ROYALTIES_MS {
            let rows = match &self.store {
                Store::Sqlite(pool) => {
                    self.royalties_counted_sqlite(pool, window, license_holder, left)
                        .await?
                }
                Store::Postgres(pool) => {
                    self.royalties_counted_postgres(pool, window, license_holder, left)
                        .await?
                }
            };
            return finish_royalties(rows);
        }
        let statement = self
            .tables
            .royalties(window.from_ms(), window.to_ms(), license_holder);
        // Up to one row per title (20 k): on SQLite read through rusqlite,
        // as sqlx's per-row hand-over would cost as much as the query.
        let rows = self
            .fetch_rows(&statement, left, |row| {
                Ok(RoyaltyAggregate {
                    license_holder_id: row.get(0)?,
                    video_id: row.get(1)?,
                    sessions: row.get(2)?,
                    viewers: row.get(3)?,
                    watch_ms: row.get(4)?,
                    rate_micros_per_hour: row.get(5)?,
                })
            })
            .await?;
        finish_royalties(rows)
    }

    /// A short period's royalties on the store: the period's sessions
    /// counted per title in Rust ([`RoyaltyCounter`]), then joined with the
    /// catalog, in one read transaction (one snapshot). Counting in Rust
    /// avoids the store's grouping: SQLite's, with a distinct count, goes
    /// through two temporary B-trees and PostgreSQL's sorts the rows per
    /// title, each costing several times the scan itself.
    ///
    /// On SQLite the catalog is read title by title when few titles were
    /// watched, else whole (one scan instead of thousands of look-ups).
    async fn royalties_counted_sqlite(
        &self,
        pool: &sqlx::SqlitePool,
        window: Window,
        license_holder: Option<&str>,
        left: Duration,
    ) -> Result<Vec<RoyaltyAggregate>, EngineError> {
        const TITLE_LOOK_UPS: usize = 500;
        let tables = self.tables.clone();
        let sessions = tables.royalty_sessions(window.from_ms(), window.to_ms(), license_holder);
        let holder = license_holder.map(str::to_string);
        sqlite_read(pool, left, move |connection| {
            let snapshot = connection.unchecked_transaction()?;
            let mut counter = RoyaltyCounter::default();
            {
                let mut prepared = prepare_bound(connection, &sessions)?;
                let mut rows = prepared.raw_query();
                while let Some(row) = rows.next()? {
                    let added =
                        counter.add(sqlite_text(row, 0)?, sqlite_text(row, 1)?, row.get(2)?);
                    if let Err(err) = added {
                        return Ok(Err(err));
                    }
                }
            }
            let counts = counter.finish();
            let mut out = Vec::with_capacity(counts.len());
            if counts.len() <= TITLE_LOOK_UPS {
                for count in counts.into_counts() {
                    let title = tables.royalty_title(&count.video_id, holder.as_deref());
                    let mut prepared = prepare_bound(connection, &title)?;
                    let mut rows = prepared.raw_query();
                    if let Some(row) = rows.next()? {
                        let (holder, rate) = (row.get(1)?, row.get(2)?);
                        out.push(count.priced(holder, rate));
                    }
                }
            } else {
                let mut counts = counts;
                let titles = tables.royalty_titles(holder.as_deref());
                let mut prepared = prepare_bound(connection, &titles)?;
                let mut rows = prepared.raw_query();
                while let Some(row) = rows.next()? {
                    if let Some(count) = counts.take(sqlite_text(row, 0)?) {
                        out.push(count.priced(row.get(1)?, row.get(2)?));
                    }
                }
            }
            snapshot.commit()?;
            Ok(Ok(out))
        })
        .await?
    }

    /// [`DirectEngine::royalties_counted_sqlite`] on PostgreSQL: both reads
    /// as binary COPY rows (see `pg_copy`) in one repeatable-read
    /// transaction, the (scoped) catalog whole.
    async fn royalties_counted_postgres(
        &self,
        pool: &sqlx::PgPool,
        window: Window,
        license_holder: Option<&str>,
        left: Duration,
    ) -> Result<Vec<RoyaltyAggregate>, EngineError> {
        let sessions =
            self.tables
                .royalty_sessions(window.from_ms(), window.to_ms(), license_holder);
        let work = async {
            let mut tx = pg_snapshot(pool).await?;
            let mut counter = RoyaltyCounter::default();
            pg_copy::each_row(&mut tx, &sessions, |row| {
                counter.add(
                    pg_copy::text(row, 0)?,
                    pg_copy::text(row, 1)?,
                    pg_copy::int8(row, 2)?,
                )
            })
            .await?;
            let mut counts = counter.finish();
            let mut out = Vec::with_capacity(counts.len());
            let titles = self.tables.royalty_titles(license_holder);
            pg_copy::each_row(&mut tx, &titles, |row| {
                if let Some(count) = counts.take(pg_copy::text(row, 0)?) {
                    out.push(
                        count.priced(pg_copy::text(row, 1)?.to_string(), pg_copy::int8(row, 2)?),
                    );
                }
                Ok::<_, EngineError>(())
            })
            .await?;
            tx.commit().await?;
            Ok::<_, EngineError>(out)
        };
        self.within_deadline(left, work).await
    }

    async fn impressions_now(
        &self,
        window: Window,
        advertiser: Option<&str>,
        left: Duration,
    ) -> Result<Vec<ImpressionRow>, EngineError> {
        let statement = self
            .tables
            .impressions(window.from_ms(), window.to_ms(), advertiser);
        let rows = self
            .within_deadline(left, self.store.fetch_all_replanned(&statement))
            .await?;
        Ok(finish_impressions(rows))
    }

    async fn concurrency_now(
        &self,
        spec: ConcurrencySpec,
        left: Duration,
    ) -> Result<Vec<ConcurrencyRow>, EngineError> {
        let statement = self
            .tables
            .concurrency(spec.window().from_ms(), spec.upper_ms());
        match &self.store {
            // A month reads ~every session: counted as SQLite steps them.
            Store::Sqlite(pool) => {
                sqlite_scan(pool, &statement, left, move |rows| {
                    let mut counter = spec.counter();
                    while let Some(row) = rows.next()? {
                        let user = sqlite_text(row, 0)?;
                        counter.add(user, row.get(1)?, row.get(2)?);
                    }
                    Ok(counter.finish())
                })
                .await
            }
            // Counted as the rows arrive, read as binary COPY data (cheaper
            // than sqlx's per-row hand-over over a month; see `pg_copy`).
            Store::Postgres(pool) => {
                let count = async {
                    let mut connection = pool.acquire().await?;
                    let mut counter = spec.counter();
                    pg_copy::each_row(&mut connection, &statement, |row| {
                        counter.add(
                            pg_copy::text(row, 0)?,
                            pg_copy::int8(row, 1)?,
                            pg_copy::int8(row, 2)?,
                        );
                        Ok::<_, EngineError>(())
                    })
                    .await?;
                    Ok::<_, EngineError>(counter.finish())
                };
                self.within_deadline(left, count).await
            }
        }
    }

    /// Whole hours from the stored per-hour results (recounted first where
    /// stale), partial hours at the ends from the raw rows.
    async fn traffic_now(
        &self,
        window: Window,
        license_holder: Option<&str>,
        left: Duration,
    ) -> Result<Vec<TrafficRow>, EngineError> {
        let split = HourSplit::of(window.from_ms(), window.to_ms());
        let (start, end) = split.whole;
        let mut rows = Vec::new();
        if start < end {
            self.within_deadline(left, self.rollup.refresh(&self.store, start, end))
                .await?;
            let statement = TrafficRollup::read(start, end, license_holder);
            // A month is ~144 k stored rows: on SQLite read through
            // rusqlite, as sqlx's per-row hand-over costs more than the read.
            rows = self
                .fetch_rows(&statement, left, |row| {
                    Ok(TrafficRow {
                        hour_start_ms: row.get(0)?,
                        license_holder_id: row.get(1)?,
                        heartbeats: row.get(2)?,
                        devices: row.get(3)?,
                    })
                })
                .await?;
        }
        for (from, to) in [split.head, split.tail].into_iter().flatten() {
            let statement = self.tables.traffic(from, to, license_holder);
            let partial: Vec<TrafficRow> = self
                .within_deadline(left, self.store.fetch_all_replanned(&statement))
                .await?;
            rows.extend(partial);
        }
        Ok(finish_traffic(rows))
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
        let scope = license_holder.map(str::to_string);
        let key = format!("{window:?} {scope:?}");
        self.in_slot(&self.waiting.royalties, key, move |this, left| async move {
            this.royalties_now(window, scope.as_deref(), left).await
        })
        .await
    }

    async fn impressions(
        &self,
        window: Window,
        advertiser: Option<&str>,
    ) -> Result<Vec<ImpressionRow>, EngineError> {
        let scope = advertiser.map(str::to_string);
        let key = format!("{window:?} {scope:?}");
        self.in_slot(&self.waiting.impressions, key, move |this, left| async move {
            this.impressions_now(window, scope.as_deref(), left).await
        })
        .await
    }

    async fn concurrency(&self, spec: ConcurrencySpec) -> Result<Vec<ConcurrencyRow>, EngineError> {
        let key = format!("{spec:?}");
        self.in_slot(
            &self.waiting.concurrency,
            key,
            move |this, left| async move { this.concurrency_now(spec, left).await },
        )
        .await
    }

    async fn traffic(
        &self,
        window: Window,
        license_holder: Option<&str>,
    ) -> Result<Vec<TrafficRow>, EngineError> {
        let scope = license_holder.map(str::to_string);
        let key = format!("{window:?} {scope:?}");
        self.in_slot(&self.waiting.traffic, key, move |this, left| async move {
            this.traffic_now(window, scope.as_deref(), left).await
        })
        .await
    }
}
