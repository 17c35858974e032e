//! Admission control for the whole server: a concurrency limit with load
//! shedding, as one tower layer.
//!
//! tower's `ConcurrencyLimit` releases its permit when the response future
//! resolves, which for gRPC is when the response *headers* go out: a
//! bidirectional `Stream` call would stop counting right after it started.
//! Here the permit rides inside the response body, so a call counts until its
//! last frame is sent (or the client goes away). At the limit a call is
//! refused at once with `UNAVAILABLE` instead of queueing, so a device backs
//! off and retries rather than piling up behind an overloaded server.

use futures::future::BoxFuture;
use http_body_util::BodyExt;
use prometheus_client::metrics::counter::Counter;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::Semaphore;
use tonic::body::Body;
use tower::{BoxError, Layer, Service};

/// Limits calls in flight across all connections to `max`.
#[derive(Clone)]
pub struct CallLimitLayer {
    permits: Arc<Semaphore>,
    shed: Counter,
}

impl CallLimitLayer {
    /// `shed` counts the calls refused at the limit.
    pub fn new(max: usize, shed: Counter) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(max)),
            shed,
        }
    }
}

impl<S> Layer<S> for CallLimitLayer {
    type Service = CallLimit<S>;

    fn layer(&self, inner: S) -> CallLimit<S> {
        CallLimit {
            inner,
            permits: Arc::clone(&self.permits),
            shed: self.shed.clone(),
        }
    }
}

#[derive(Clone)]
pub struct CallLimit<S> {
    inner: S,
    permits: Arc<Semaphore>,
    shed: Counter,
}

impl<S, B> Service<http::Request<B>> for CallLimit<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<http::Response<Body>, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let Ok(permit) = Arc::clone(&self.permits).try_acquire_owned() else {
            self.shed.inc();
            let refused = tonic::Status::unavailable(
                "server at its concurrency limit (HB_INGEST_CONCURRENCY); retry with backoff",
            )
            .into_http();
            return Box::pin(std::future::ready(Ok(refused)));
        };
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await.map_err(Into::into)?;
            // The permit is dropped with the body: when the call ends.
            Ok(response.map(|body| {
                Body::new(body.map_frame(move |frame| {
                    let _held = &permit;
                    frame
                }))
            }))
        })
    }
}
