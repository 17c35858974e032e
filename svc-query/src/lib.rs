//! svc-query: the reports of the heartbeat mesh (royalties, impressions,
//! concurrency, traffic) and the per-user look-ups (resume progress,
//! sessions), over HTTP JSON and gRPC, with tenant-scoped access.
//!
//! Wiring: [`run`] takes already-bound listeners and a shutdown token (so
//! tests bind port 0 and stop cleanly). Reports run on a [`engine::ReportEngine`]:
//! Trino when `HB_TRINO_URL` is set, else SQL on the sessions store. Point
//! look-ups and catalog writes always go to the store ([`hb_common::store::Store`]).
#![forbid(unsafe_code)]

pub mod access;
pub mod catalog;
pub mod config;
pub mod engine;
pub mod erase;
pub mod error;
pub mod grpc;
pub mod http;
pub mod metrics;
pub mod report;
pub mod service;
pub mod store;

use crate::config::QueryConfig;
use crate::engine::direct::DirectEngine;
use crate::engine::trino::{TrinoEngine, TrinoSettings};
use crate::engine::ReportEngine;
use anyhow::Context as _;
use hb_common::auth::Authenticator;
use hb_common::health::{Health, HealthHandle};
use hb_common::shutdown::CancellationToken;
use hb_common::store::Store;
use hb_proto::v1::report_service_server::ReportServiceServer;
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// How long in-flight requests may take to finish once shutdown starts.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// The three sockets svc-query serves, bound by the caller.
pub struct QueryListeners {
    pub http: TcpListener,
    pub grpc: TcpListener,
    pub metrics: TcpListener,
}

impl QueryListeners {
    /// Binds the configured addresses.
    pub async fn bind(config: &QueryConfig) -> anyhow::Result<QueryListeners> {
        let bind = |addr: SocketAddr, what: &'static str| async move {
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the {what} address {addr}"))
        };
        Ok(QueryListeners {
            http: bind(config.http_addr, "HTTP").await?,
            grpc: bind(config.grpc_addr, "gRPC").await?,
            metrics: bind(config.metrics_addr, "metrics").await?,
        })
    }
}

/// TLS material loaded once at start.
struct Tls {
    http: axum_server::tls_rustls::RustlsConfig,
    grpc: tonic::transport::ServerTlsConfig,
}

async fn load_tls(config: &QueryConfig) -> anyhow::Result<Option<Tls>> {
    let (Some(cert), Some(key)) = (&config.tls.cert, &config.tls.key) else {
        return Ok(None);
    };
    // axum-server and tonic take the process-wide rustls provider; the
    // binaries install it at start, and so does this for embedders (tests).
    hb_common::install_crypto_provider();
    let cert_pem = tokio::fs::read(cert)
        .await
        .with_context(|| format!("reading HB_TLS_CERT {}", cert.display()))?;
    let key_pem = tokio::fs::read(key)
        .await
        .with_context(|| format!("reading HB_TLS_KEY {}", key.display()))?;
    let http = axum_server::tls_rustls::RustlsConfig::from_pem(cert_pem.clone(), key_pem.clone())
        .await
        .context("loading the TLS certificate and key")?;
    let grpc = tonic::transport::ServerTlsConfig::new()
        .identity(tonic::transport::Identity::from_pem(cert_pem, key_pem));
    Ok(Some(Tls { http, grpc }))
}

/// Builds the report engine the configuration asks for. The direct engine
/// also gets a task keeping the traffic roll-up of recent hours counted,
/// so a month's report does not pay for hours nobody asked for yet.
fn build_engine(
    config: &QueryConfig,
    store: &Store,
    shutdown: &CancellationToken,
) -> anyhow::Result<Arc<dyn ReportEngine>> {
    match &config.trino_url {
        Some(url) => {
            let settings = TrinoSettings::from_config(config, url)?;
            Ok(Arc::new(TrinoEngine::new(settings)?))
        }
        None => {
            let engine = DirectEngine::new(store.clone(), config.query_timeout);
            tokio::spawn(engine.clone().keep_traffic_counted(shutdown.child_token()));
            Ok(Arc::new(engine))
        }
    }
}

/// Serves the query API until `shutdown` is cancelled, then drains in-flight
/// requests and closes the store. Refuses to listen beyond loopback without
/// `HB_AUTH_SECRET`; says loudly when running open.
pub async fn run(
    config: QueryConfig,
    listeners: QueryListeners,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    config.validate()?;
    let http_addr = listeners.http.local_addr()?;
    let grpc_addr = listeners.grpc.local_addr()?;
    let metrics_addr = listeners.metrics.local_addr()?;
    let auth = Authenticator::from_secret(config.secret());
    if auth.is_open() {
        for addr in [http_addr, grpc_addr, metrics_addr] {
            if !hb_common::is_loopback(&addr) {
                anyhow::bail!(
                    "refusing to listen on non-loopback {addr} without HB_AUTH_SECRET: \
                     set a secret or bind 127.0.0.1"
                );
            }
        }
        tracing::warn!(
            "svc-query is running OPEN: no HB_AUTH_SECRET, every caller is admin \
             (loopback only); set HB_AUTH_SECRET before exposing it"
        );
    }

    let store = store::open(&config).await?;
    let engine = build_engine(&config, &store, &shutdown)?;
    let tls = load_tls(&config).await?;

    let mut registry = Registry::default();
    let metrics = metrics::Metrics::register(&mut registry);
    let health = Health::default();
    let store_health = health.register("store");

    let service = service::QueryService::new(
        engine.clone(),
        store.clone(),
        auth.clone(),
        metrics,
        config.query_timeout,
    );

    tracing::info!(
        http = %http_addr,
        grpc = %grpc_addr,
        metrics = %metrics_addr,
        engine = engine.name(),
        store = store.kind(),
        tls = tls.is_some(),
        auth = if auth.is_open() { "open" } else { "hmac" },
        "svc-query listening"
    );

    // A child token: a server that fails stops its siblings without
    // cancelling the caller's token (hbmesh up runs other services on it).
    let stop = shutdown.child_token();
    let mut tasks: JoinSet<anyhow::Result<()>> = JoinSet::new();
    tasks.spawn(watch_store(store.clone(), store_health, stop.clone()));
    tasks.spawn(serve_http(
        listeners.http,
        http::router(service.clone()),
        tls.as_ref().map(|t| t.http.clone()),
        stop.clone(),
    ));
    tasks.spawn(serve_grpc(
        listeners.grpc,
        service,
        tls.map(|t| t.grpc),
        stop.clone(),
    ));
    tasks.spawn({
        let stop = stop.clone();
        async move {
            hb_common::metrics_http::serve(listeners.metrics, Arc::new(registry), health, stop)
                .await
                .context("metrics server")
        }
    });

    let mut first_error = None;
    while let Some(joined) = tasks.join_next().await {
        let outcome = joined.map_err(anyhow::Error::from).and_then(|r| r);
        if let Err(error) = outcome {
            tracing::error!(error = %format!("{error:#}"), "svc-query task failed, stopping");
            stop.cancel();
            first_error.get_or_insert(error);
        } else if !stop.is_cancelled() {
            // A server returned without being asked to: stop the rest too.
            stop.cancel();
        }
    }
    store.close().await;
    tracing::info!("svc-query stopped");
    match first_error {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

/// Readiness: the store answers a trivial query every few seconds.
async fn watch_store(
    store: Store,
    health: HealthHandle,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        match tokio::time::timeout(Duration::from_secs(3), store.ping()).await {
            Ok(Ok(())) => health.healthy_for(Duration::from_secs(15)),
            Ok(Err(error)) => {
                tracing::warn!(error = %error, "sessions store ping failed");
                health.unhealthy();
            }
            Err(_) => {
                tracing::warn!("sessions store ping timed out");
                health.unhealthy();
            }
        }
    }
}

async fn serve_http(
    listener: TcpListener,
    app: axum::Router,
    tls: Option<axum_server::tls_rustls::RustlsConfig>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    match tls {
        None => axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
            .context("HTTP server"),
        Some(tls) => {
            let handle = axum_server::Handle::new();
            let drain = handle.clone();
            tokio::spawn(async move {
                stop.cancelled().await;
                drain.graceful_shutdown(Some(DRAIN_TIMEOUT));
            });
            axum_server::from_tcp_rustls(listener.into_std()?, tls)?
                .handle(handle)
                .serve(app.into_make_service())
                .await
                .context("HTTPS server")
        }
    }
}

async fn serve_grpc(
    listener: TcpListener,
    service: service::QueryService,
    tls: Option<tonic::transport::ServerTlsConfig>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<ReportServiceServer<grpc::GrpcReports>>()
        .await;
    // Reflection lists exactly what this port serves (the proto file also
    // describes IngestService, served by svc-ingest), in v1 and v1alpha.
    let reflection = |itself: &str| {
        tonic_reflection::server::Builder::configure()
            .with_service_name(itself)
            .register_encoded_file_descriptor_set(hb_proto::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .with_service_name(hb_proto::v1::report_service_server::SERVICE_NAME)
            .with_service_name(tonic_health::pb::health_server::SERVICE_NAME)
    };
    let reflection_v1alpha =
        reflection(tonic_reflection::pb::v1alpha::server_reflection_server::SERVICE_NAME)
            .build_v1alpha()
            .context("building gRPC reflection")?;
    let reflection = reflection(tonic_reflection::pb::v1::server_reflection_server::SERVICE_NAME)
        .build_v1()
        .context("building gRPC reflection")?;
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls).context("gRPC TLS")?;
    }
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let drained = {
        let stop = stop.clone();
        let reporter = health_reporter.clone();
        async move {
            stop.cancelled().await;
            reporter
                .set_not_serving::<ReportServiceServer<grpc::GrpcReports>>()
                .await;
        }
    };
    builder
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .add_service(ReportServiceServer::new(grpc::GrpcReports::new(service)))
        .serve_with_incoming_shutdown(incoming, drained)
        .await
        .context("gRPC server")
}
