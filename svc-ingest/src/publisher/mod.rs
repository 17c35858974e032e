//! The publish seam: where accepted heartbeats go, and the promise that a
//! `publish` resolves only once they are durable.

pub mod counting;
pub mod embedded;
pub mod kafka;

use async_trait::async_trait;
pub use hb_common::handoff::DeadLetter;
use hb_proto::v1::Heartbeat;
use std::time::Duration;

/// Why heartbeats could not be made durable. Every variant means the device
/// must resend: nothing in the failed batch is reported as accepted.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum PublishError {
    /// The destination is down, slow or refused the write: retry later.
    #[error("publisher unavailable: {0}")]
    Unavailable(String),
    /// The destination can never take this batch (e.g. over the broker's size limit).
    #[error("publisher rejected the batch: {0}")]
    Rejected(String),
}

/// Destination of accepted heartbeats and dead letters.
#[async_trait]
pub trait Publisher: Send + Sync + 'static {
    /// Resolves `Ok` only when every heartbeat of `batch` is durable
    /// (Kafka acks=all, or committed by the embedded store).
    async fn publish(&self, batch: Vec<Heartbeat>) -> Result<(), PublishError>;

    /// Records rejected input with its reason; best effort for the device
    /// (its rejection is reported regardless) but awaited for durability.
    async fn dead_letter(&self, letters: Vec<DeadLetter>) -> Result<(), PublishError>;

    /// Flushes whatever is buffered; called on shutdown.
    async fn flush(&self) -> Result<(), PublishError> {
        Ok(())
    }

    /// Whether the destination can take writes now, answered within
    /// `timeout` (it may block a thread that long, never an async worker).
    /// Asked every second for readiness (`crate::readiness`); a publisher
    /// with nothing to check says yes.
    async fn check(&self, timeout: Duration) -> Result<(), PublishError> {
        let _ = timeout;
        Ok(())
    }

    /// Name for logs and health.
    fn name(&self) -> &'static str;

    /// Debug publishers say false so readiness can never pass with them.
    fn is_production(&self) -> bool {
        true
    }
}
