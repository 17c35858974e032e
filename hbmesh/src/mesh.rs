//! The mesh in one process, as `hbmesh up` and the end-to-end tests run it:
//! ingest, stream and query side by side, supervised together. On the
//! embedded default (no cluster settings) ingest hands batches to the stream
//! stage in memory and a device's ack waits for the SQLite commit holding its
//! heartbeats; with `HB_KAFKA_BROKERS` / `HB_YUGABYTE_URL` / `HB_SCYLLA_NODES`
//! the same services use the cluster adapters.

use anyhow::Context;
use svc_ingest::config::IngestConfig;
use svc_ingest::{IngestListeners, PublishTarget};
use svc_query::config::QueryConfig;
use svc_query::QueryListeners;
use svc_stream::config::StreamConfig;
use tokio_util::sync::CancellationToken;

/// Addresses the running mesh serves on.
#[derive(Clone, Debug)]
pub struct MeshAddrs {
    pub ingest: std::net::SocketAddr,
    pub query_http: std::net::SocketAddr,
    pub query_grpc: std::net::SocketAddr,
}

/// Starts the three services; the returned future resolves once all stopped
/// after `shutdown`, or, when one of them fails (or stops unasked), once the
/// others have been stopped too, with the failure. Used by `up` and by the
/// end-to-end tests.
pub async fn start(
    ingest_config: IngestConfig,
    stream_config: StreamConfig,
    query_config: QueryConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<(
    MeshAddrs,
    impl std::future::Future<Output = anyhow::Result<()>>,
)> {
    // The services stop on `stop`: the caller's signal, or a sibling's failure.
    let stop = shutdown.child_token();
    let shutdown = stop.clone();
    let cluster = stream_config.kafka.brokers.is_some() || ingest_config.kafka.brokers.is_some();
    // Migrate once before the services open their own pools.
    svc_stream::open_sinks(&stream_config)
        .await
        .context("opening the sessions store")?;

    let ingest_listeners = IngestListeners::bind(&ingest_config).await?;
    let stream_metrics = tokio::net::TcpListener::bind(stream_config.metrics_addr)
        .await
        .with_context(|| format!("binding stream metrics on {}", stream_config.metrics_addr))?;
    let query_listeners = QueryListeners::bind(&query_config).await?;
    let addrs = MeshAddrs {
        ingest: ingest_listeners.grpc.local_addr()?,
        query_http: query_listeners.http.local_addr()?,
        query_grpc: query_listeners.grpc.local_addr()?,
    };

    // In the cluster tier ingest and stream are independent and stop on the
    // signal; embedded, the stream stage stops once ingest has drained.
    let mut services = Vec::with_capacity(3);
    if cluster {
        services.push((
            "stream",
            tokio::spawn(svc_stream::run(
                stream_config,
                svc_stream::Source::Kafka,
                stream_metrics,
                shutdown.clone(),
            )),
        ));
        services.push((
            "ingest",
            tokio::spawn(svc_ingest::run(
                ingest_config,
                PublishTarget::Kafka,
                ingest_listeners,
                shutdown.clone(),
            )),
        ));
    } else {
        services.push((
            "ingest/stream",
            tokio::spawn(run_embedded(
                ingest_config,
                stream_config,
                ingest_listeners,
                stream_metrics,
                shutdown.clone(),
            )),
        ));
    }
    services.push((
        "query",
        tokio::spawn(svc_query::run(
            query_config,
            query_listeners,
            shutdown.clone(),
        )),
    ));

    let done = supervise(services, stop);
    Ok((addrs, done))
}

/// Batches waiting for the stream stage before ingest waits too.
const HANDOFF_CAPACITY: usize = 1024;

/// The embedded tier: ingest hands its batches to the stream stage in this
/// process, and a device's ack waits for the SQLite commit (in
/// `HB_DATA_DIR`) that holds its heartbeats. Runs until `shutdown`: ingest
/// stops accepting and drains, then the stream stage commits what is left
/// and stops once ingest has dropped its end of the hand-off.
async fn run_embedded(
    ingest_config: IngestConfig,
    stream_config: StreamConfig,
    ingest_listeners: IngestListeners,
    stream_metrics: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let (tx, rx) = hb_common::handoff::channel(HANDOFF_CAPACITY);
    let stream = tokio::spawn(svc_stream::run(
        stream_config,
        svc_stream::Source::Embedded(rx),
        stream_metrics,
        shutdown.clone(),
    ));
    let ingest = svc_ingest::run(
        ingest_config,
        PublishTarget::Embedded(tx),
        ingest_listeners,
        shutdown,
    )
    .await;
    let stream = stream.await.context("stream stage panicked")?;
    ingest.context("ingest")?;
    stream.context("stream")
}

/// Waits for every service; the first one to fail, or to stop before it was
/// asked to, stops the others, and the result names every failure.
async fn supervise(
    services: Vec<(&'static str, tokio::task::JoinHandle<anyhow::Result<()>>)>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    use futures::stream::{FuturesUnordered, StreamExt};
    let mut running: FuturesUnordered<_> = services
        .into_iter()
        .map(|(name, handle)| async move { (name, handle.await) })
        .collect();
    let mut failures = Vec::new();
    while let Some((name, result)) = running.next().await {
        let failure = match result {
            Ok(Ok(())) if stop.is_cancelled() => None,
            Ok(Ok(())) => Some(format!("{name}: stopped unexpectedly")),
            Ok(Err(err)) => Some(format!("{name}: {err:#}")),
            Err(err) => Some(format!("{name}: {err}")),
        };
        if let Some(failure) = failure {
            if !stop.is_cancelled() {
                tracing::error!(error = %failure, "a service failed: stopping the mesh");
                stop.cancel();
            } else {
                tracing::error!(error = %failure, "a service failed while stopping");
            }
            failures.push(failure);
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(anyhow::anyhow!(failures.join("; ")))
    }
}
