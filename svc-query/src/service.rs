//! What both front doors (HTTP and gRPC) call: authenticate, authorize,
//! validate, run on the engine or the store, record metrics. The order is
//! fixed: a caller without a valid token learns nothing about parameters.

use crate::access::{authorize, Endpoint, Scope};
use crate::catalog::{Ad, Video};
use crate::engine::ReportEngine;
use crate::error::{ApiError, EngineError};
use crate::metrics::Metrics;
use crate::report::{
    ConcurrencyRow, ConcurrencySpec, ImpressionRow, ProgressRow, RoyaltyRow, SessionRow,
    TrafficRow, Window,
};
use crate::{catalog, erase, store};
use hb_common::auth::Authenticator;
use hb_common::store::Store;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Who calls when the service runs without auth (no `HB_AUTH_SECRET`).
pub const OPEN_CALLER: &str = "open";

/// The query service core, cheap to clone.
#[derive(Clone)]
pub struct QueryService {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Arc<dyn ReportEngine>,
    store: Store,
    auth: Authenticator,
    metrics: Metrics,
    timeout: Duration,
}

impl QueryService {
    pub fn new(
        engine: Arc<dyn ReportEngine>,
        store: Store,
        auth: Authenticator,
        metrics: Metrics,
        timeout: Duration,
    ) -> QueryService {
        QueryService {
            inner: Arc::new(Inner {
                engine,
                store,
                auth,
                metrics,
                timeout,
            }),
        }
    }

    pub fn engine_name(&self) -> &'static str {
        self.inner.engine.name()
    }

    /// Runs `work` for `endpoint` on behalf of the bearer of `authorization`,
    /// with the scope it is allowed, and records the outcome.
    pub async fn call<T, F, Fut>(
        &self,
        endpoint: Endpoint,
        authorization: Option<&str>,
        work: F,
    ) -> Result<T, ApiError>
    where
        F: FnOnce(Scope) -> Fut,
        Fut: Future<Output = Result<T, ApiError>>,
    {
        self.call_as(endpoint, authorization, |scope, _| work(scope))
            .await
    }

    /// Like [`QueryService::call`], also telling `work` who calls: the
    /// token's subject, or `open` without auth.
    pub async fn call_as<T, F, Fut>(
        &self,
        endpoint: Endpoint,
        authorization: Option<&str>,
        work: F,
    ) -> Result<T, ApiError>
    where
        F: FnOnce(Scope, String) -> Fut,
        Fut: Future<Output = Result<T, ApiError>>,
    {
        let started = Instant::now();
        let outcome = async {
            let principal = self.inner.auth.authenticate(authorization)?;
            let scope = authorize(principal.as_ref(), endpoint)?;
            let caller = principal.map_or_else(|| OPEN_CALLER.to_string(), |p| p.subject);
            work(scope, caller).await
        }
        .await;
        let status = match &outcome {
            Ok(_) => "ok",
            Err(error) => error.code(),
        };
        self.inner
            .metrics
            .observe(endpoint.label(), status, started.elapsed());
        outcome
    }

    /// Point look-ups and catalog writes: the store with the query deadline.
    async fn on_store<T>(
        &self,
        work: impl Future<Output = Result<T, EngineError>>,
    ) -> Result<T, ApiError> {
        match tokio::time::timeout(self.inner.timeout, work).await {
            Ok(result) => result.map_err(ApiError::from),
            Err(_) => Err(EngineError::Deadline(self.inner.timeout).into()),
        }
    }

    pub async fn royalties(
        &self,
        window: Window,
        scope: &Scope,
    ) -> Result<Vec<RoyaltyRow>, ApiError> {
        Ok(self
            .inner
            .engine
            .royalties(window, scope.license_holder())
            .await?)
    }

    pub async fn impressions(
        &self,
        window: Window,
        scope: &Scope,
    ) -> Result<Vec<ImpressionRow>, ApiError> {
        Ok(self
            .inner
            .engine
            .impressions(window, scope.advertiser())
            .await?)
    }

    pub async fn concurrency(
        &self,
        spec: ConcurrencySpec,
    ) -> Result<Vec<ConcurrencyRow>, ApiError> {
        Ok(self.inner.engine.concurrency(spec).await?)
    }

    pub async fn traffic(
        &self,
        window: Window,
        scope: &Scope,
    ) -> Result<Vec<TrafficRow>, ApiError> {
        let window = window.for_traffic()?;
        Ok(self
            .inner
            .engine
            .traffic(window, scope.license_holder())
            .await?)
    }

    pub async fn progress(&self, user_id: &str) -> Result<Vec<ProgressRow>, ApiError> {
        self.on_store(store::progress(&self.inner.store, user_id))
            .await
    }

    pub async fn sessions(
        &self,
        user_id: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<SessionRow>, ApiError> {
        self.on_store(store::sessions(&self.inner.store, user_id, from_ms, to_ms))
            .await
    }

    pub async fn upsert_videos(&self, videos: &[Video]) -> Result<usize, ApiError> {
        self.on_store(catalog::upsert_videos(&self.inner.store, videos))
            .await
    }

    pub async fn upsert_ads(&self, ads: &[Ad]) -> Result<usize, ApiError> {
        self.on_store(catalog::upsert_ads(&self.inner.store, ads))
            .await
    }

    /// Erases `user_id` on behalf of `requested_by` (see [`erase::erase_user`]).
    pub async fn erase_user(
        &self,
        user_id: &str,
        requested_by: &str,
    ) -> Result<erase::UserErased, ApiError> {
        self.on_store(erase::erase_user(&self.inner.store, user_id, requested_by))
            .await
    }
}
