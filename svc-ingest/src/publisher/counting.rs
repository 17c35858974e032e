//! Transport floor for benchmarks: counts and acknowledges at once. It reports
//! itself as non-production so a service using it never becomes ready.

use super::{DeadLetter, PublishError, Publisher};
use async_trait::async_trait;
use hb_proto::v1::Heartbeat;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

#[derive(Clone, Default)]
pub struct CountingPublisher {
    pub heartbeats: Arc<AtomicU64>,
    pub dead_letters: Arc<AtomicU64>,
}

#[async_trait]
impl Publisher for CountingPublisher {
    async fn publish(&self, batch: Vec<Heartbeat>) -> Result<(), PublishError> {
        self.heartbeats
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    async fn dead_letter(&self, letters: Vec<DeadLetter>) -> Result<(), PublishError> {
        self.dead_letters
            .fetch_add(letters.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    fn name(&self) -> &'static str {
        "counting"
    }

    fn is_production(&self) -> bool {
        false
    }
}
