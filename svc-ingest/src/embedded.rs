//! The embedded tier of ingest: with no Kafka configured, ingest hands its
//! batches to the stream stage in the same process, and a device's ack waits
//! for the SQLite commit (in `HB_DATA_DIR`) that holds its heartbeats. This is
//! what `svc-ingest` runs when started with no configuration, and the ingest
//! + stream half of `hbmesh up`.

use crate::config::IngestConfig;
use crate::{IngestListeners, PublishTarget};
use anyhow::Context;
use hb_common::handoff;
use svc_stream::config::StreamConfig;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Batches waiting for the stream stage before ingest waits too.
pub const HANDOFF_CAPACITY: usize = 1024;

/// Runs ingest and the embedded stream stage until `shutdown`: ingest stops
/// accepting and drains, then the stream stage commits what is left and
/// stops once ingest has dropped its end of the hand-off.
pub async fn run(
    ingest_config: IngestConfig,
    stream_config: StreamConfig,
    listeners: IngestListeners,
    stream_metrics: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let (tx, rx) = handoff::channel(HANDOFF_CAPACITY);
    let stream = tokio::spawn(svc_stream::run(
        stream_config,
        svc_stream::Source::Embedded(rx),
        stream_metrics,
        shutdown.clone(),
    ));
    let ingest = crate::run(
        ingest_config,
        PublishTarget::Embedded(tx),
        listeners,
        shutdown,
    )
    .await;
    let stream = stream.await.context("stream stage panicked")?;
    ingest.context("ingest")?;
    stream.context("stream")
}
