//! svc-ingest: devices stream playback heartbeats over gRPC; each one is
//! validated, deduplicated within its call, published durably (Kafka or the
//! embedded store) and only then acknowledged.
#![forbid(unsafe_code)]

pub mod admission;
pub mod config;
pub mod limiter;
pub mod metrics;
pub mod publisher;
pub mod readiness;
pub mod service;
pub mod validate;

use anyhow::Context;
use config::IngestConfig;
use hb_common::auth::{Authenticator, Role};
use hb_common::handoff::HandoffTx;
use hb_common::health::Health;
use hb_proto::v1::ingest_service_server::IngestServiceServer;
use metrics::IngestMetrics;
use prometheus_client::registry::Registry;
use publisher::embedded::EmbeddedPublisher;
use publisher::kafka::{KafkaPublisher, KafkaSettings};
use publisher::Publisher;
use service::{Ingest, IngestHandler};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tonic::{Request, Status};

/// Largest frame the transport decodes. Heartbeats between 4 KiB and this are
/// rejected one by one (`message_too_large`); anything larger ends the call
/// with INVALID_ARGUMENT.
pub const MAX_FRAME_BYTES: usize = 64 * 1024;

/// How long open calls may keep going after SIGTERM before they are cut.
pub const DRAIN_GRACE: Duration = Duration::from_secs(5);

/// Where accepted heartbeats go.
pub enum PublishTarget {
    /// Kafka from `HB_KAFKA_BROKERS` (svc-ingest's own binary).
    Kafka,
    /// The in-process stream stage of `hbmesh up`.
    Embedded(HandoffTx),
    /// A publisher built by the caller (benchmarks, tests).
    Custom(Arc<dyn Publisher>),
}

/// Already-bound sockets, so callers (and tests) choose ports, including 0.
pub struct IngestListeners {
    pub grpc: TcpListener,
    pub metrics: TcpListener,
}

impl IngestListeners {
    pub async fn bind(config: &IngestConfig) -> anyhow::Result<IngestListeners> {
        Ok(IngestListeners {
            grpc: TcpListener::bind(config.addr)
                .await
                .with_context(|| format!("binding ingest gRPC on {}", config.addr))?,
            metrics: TcpListener::bind(config.metrics_addr)
                .await
                .with_context(|| format!("binding ingest metrics on {}", config.metrics_addr))?,
        })
    }
}

/// Builds the publisher for `target`.
pub async fn build_publisher(
    config: &IngestConfig,
    target: PublishTarget,
    metrics: &IngestMetrics,
) -> anyhow::Result<Arc<dyn Publisher>> {
    Ok(match target {
        PublishTarget::Custom(publisher) => publisher,
        PublishTarget::Embedded(tx) => {
            Arc::new(EmbeddedPublisher::new(tx, metrics.publish_latency.clone()))
        }
        PublishTarget::Kafka => {
            let brokers = config.kafka.brokers.clone().context(
                "svc-ingest needs HB_KAFKA_BROKERS; `hbmesh up` runs the embedded tier without Kafka",
            )?;
            let settings = KafkaSettings {
                brokers,
                topic: config.kafka.topic.clone(),
                dlq_topic: config.dlq_topic.clone(),
                timeout: config.kafka_timeout,
                extra: Vec::new(),
            };
            Arc::new(KafkaPublisher::connect(settings, metrics.clone()).await?)
        }
    })
}

/// Roles allowed to send heartbeats.
fn may_ingest(role: &Role) -> bool {
    matches!(role, Role::Device(_) | Role::Gateway | Role::Admin)
}

/// Serves ingest on the given listeners until `shutdown`, then drains open
/// calls (up to [`DRAIN_GRACE`]) and flushes the publisher.
pub async fn run(
    config: IngestConfig,
    target: PublishTarget,
    listeners: IngestListeners,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    config.validate().map_err(anyhow::Error::msg)?;
    // tonic's TLS acceptor takes the process-wide rustls provider.
    hb_common::install_crypto_provider();
    let mut registry = Registry::default();
    let metrics = IngestMetrics::register(&mut registry);
    let publisher = build_publisher(&config, target, &metrics).await?;
    let authenticator = Authenticator::from_secret(config.auth.secret());
    if authenticator.is_open() {
        tracing::warn!("HB_AUTH_SECRET is not set: ingest is OPEN to any caller on loopback; set a secret before exposing it");
    }

    let health = Health::default();
    let publisher_health = health.register("publisher");
    if publisher.is_production() {
        // Ready only while the publisher can take writes: checked every
        // second, unready as soon as a check fails (or stops reporting).
        tokio::spawn(readiness::watch(
            Arc::clone(&publisher),
            publisher_health,
            shutdown.clone(),
        ));
    } else {
        tracing::warn!(
            publisher = publisher.name(),
            "debug publisher in use: readiness stays down"
        );
    }

    let grpc_addr = listeners.grpc.local_addr()?;
    let metrics_addr = listeners.metrics.local_addr()?;
    tracing::info!(%grpc_addr, %metrics_addr, publisher = publisher.name(), tls = config.tls.cert.is_some(), "svc-ingest listening");

    let handler = Arc::new(IngestHandler {
        publisher: Arc::clone(&publisher),
        limiter: limiter::DeviceLimiter::new(config.device_rate, config.device_burst),
        metrics: metrics.clone(),
        max_age_ms: config.max_event_age.as_millis() as i64,
        batch_size: config.batch_size,
        window: config.window,
        shutdown: shutdown.clone(),
        drain_grace: DRAIN_GRACE,
    });

    let ingest =
        IngestServiceServer::new(Ingest { handler }).max_decoding_message_size(MAX_FRAME_BYTES);
    let ingest = InterceptedService::new(ingest, move |mut request: Request<()>| {
        let header = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        match authenticator.authenticate(header) {
            Ok(None) => Ok(request),
            Ok(Some(principal)) if may_ingest(&principal.role) => {
                request.extensions_mut().insert(principal);
                Ok(request)
            }
            Ok(Some(principal)) => Err(Status::permission_denied(format!(
                "role {} may not send heartbeats",
                principal.role
            ))),
            Err(err) => Err(Status::unauthenticated(err.to_string())),
        }
    });

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<IngestServiceServer<Ingest>>()
        .await;
    // Reflection lists exactly what this port serves (the proto file also
    // describes ReportService, served by svc-query), in v1 and v1alpha.
    let reflection = |itself: &str| {
        tonic_reflection::server::Builder::configure()
            .with_service_name(itself)
            .register_encoded_file_descriptor_set(hb_proto::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .with_service_name(hb_proto::v1::ingest_service_server::SERVICE_NAME)
            .with_service_name(tonic_health::pb::health_server::SERVICE_NAME)
    };
    let reflection_v1alpha =
        reflection(tonic_reflection::pb::v1alpha::server_reflection_server::SERVICE_NAME)
            .build_v1alpha()?;
    let reflection =
        reflection(tonic_reflection::pb::v1::server_reflection_server::SERVICE_NAME).build_v1()?;

    // Admission control for the whole server: at most `concurrency` calls,
    // each counted until its response ends; beyond that, shed at once.
    let admission = admission::CallLimitLayer::new(config.concurrency, metrics.load_shed.clone());

    let mut builder = Server::builder();
    if let (Some(cert), Some(key)) = (&config.tls.cert, &config.tls.key) {
        let cert = std::fs::read(cert).with_context(|| format!("reading {}", cert.display()))?;
        let key = std::fs::read(key).with_context(|| format!("reading {}", key.display()))?;
        builder =
            builder.tls_config(ServerTlsConfig::new().identity(Identity::from_pem(cert, key)))?;
    }
    let grpc = builder
        .layer(admission)
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .add_service(ingest)
        .serve_with_incoming_shutdown(
            // Acks are small writes: without TCP_NODELAY, Nagle holds each
            // one until the device's delayed ACK (~40 ms on Linux).
            TcpIncoming::from(listeners.grpc).with_nodelay(Some(true)),
            shutdown.clone().cancelled_owned(),
        );

    let ops = hb_common::metrics_http::serve(
        listeners.metrics,
        Arc::new(registry),
        health,
        shutdown.clone(),
    );
    let (grpc_result, ops_result) = tokio::join!(grpc, ops);
    health_reporter
        .set_not_serving::<IngestServiceServer<Ingest>>()
        .await;
    if let Err(err) = publisher.flush().await {
        tracing::error!(error = %err, "flushing the publisher on shutdown failed");
    }
    grpc_result.context("ingest gRPC server")?;
    ops_result.context("ingest metrics server")?;
    tracing::info!("svc-ingest stopped");
    Ok(())
}
