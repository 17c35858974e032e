//! The embedded ingest -> stream hand-off used by `hbmesh up`.
//!
//! A batch carries its own acknowledgement channel. The only way to complete it
//! is [`HandoffBatch::complete`], which the stream stage calls after the store
//! transaction holding the batch has committed; dropping a batch unanswered
//! resolves the waiting publisher with an error. So an ingest ack can never run
//! ahead of durability.

use hb_proto::v1::Heartbeat;
use tokio::sync::{mpsc, oneshot};

/// Why the stream stage could not make a batch durable.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum HandoffError {
    #[error("embedded stream stage is not running")]
    Closed,
    #[error("embedded store failed: {0}")]
    Store(String),
}

/// Rejected input with its reason, kept for operators (SPEC 4).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetter {
    pub received_ms: i64,
    pub event_id: String,
    pub device_id: String,
    pub reason: String,
    /// The heartbeat as received (protobuf), when it could be decoded.
    pub payload: Vec<u8>,
}

/// Heartbeats (and dead letters) handed to the stream stage, with the channel
/// that acknowledges them.
#[derive(Debug)]
pub struct HandoffBatch {
    pub heartbeats: Vec<Heartbeat>,
    pub dead_letters: Vec<DeadLetter>,
    done: oneshot::Sender<Result<(), HandoffError>>,
}

impl HandoffBatch {
    /// Reports the outcome to the waiting publisher. Call only after commit.
    pub fn complete(self, outcome: Result<(), HandoffError>) {
        let _ = self.done.send(outcome);
    }
}

/// Sending half, held by the embedded publisher in svc-ingest.
#[derive(Clone, Debug)]
pub struct HandoffTx {
    tx: mpsc::Sender<HandoffBatch>,
}

/// Receiving half, held by the embedded stream stage.
pub type HandoffRx = mpsc::Receiver<HandoffBatch>;

/// A bounded hand-off: at most `capacity` batches wait for the stream stage,
/// beyond that publishers wait (backpressure reaches the devices).
pub fn channel(capacity: usize) -> (HandoffTx, HandoffRx) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    (HandoffTx { tx }, rx)
}

impl HandoffTx {
    /// Hands `heartbeats` over and resolves once they are committed.
    pub async fn send(
        &self,
        heartbeats: Vec<Heartbeat>,
        dead_letters: Vec<DeadLetter>,
    ) -> Result<(), HandoffError> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send(HandoffBatch {
                heartbeats,
                dead_letters,
                done,
            })
            .await
            .map_err(|_| HandoffError::Closed)?;
        wait.await.map_err(|_| HandoffError::Closed)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_sender_resolves_only_when_the_batch_completes() {
        let (tx, mut rx) = channel(4);
        let sender = tokio::spawn(async move { tx.send(vec![Heartbeat::default()], vec![]).await });
        let batch = rx.recv().await.unwrap();
        assert_eq!(batch.heartbeats.len(), 1);
        assert!(!sender.is_finished());
        batch.complete(Ok(()));
        assert_eq!(sender.await.unwrap(), Ok(()));
    }

    #[tokio::test]
    async fn a_dropped_batch_is_an_error_not_an_ack() {
        let (tx, mut rx) = channel(4);
        let sender = tokio::spawn(async move { tx.send(vec![], vec![]).await });
        drop(rx.recv().await.unwrap());
        assert_eq!(sender.await.unwrap(), Err(HandoffError::Closed));
    }
}
