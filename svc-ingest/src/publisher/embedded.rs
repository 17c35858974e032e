//! Embedded tier: hands batches to the in-process stream stage and waits for
//! its store commit (see `hb_common::handoff`).

use super::{DeadLetter, PublishError, Publisher};
use async_trait::async_trait;
use hb_common::handoff::{HandoffError, HandoffTx};
use hb_proto::v1::Heartbeat;
use prometheus_client::metrics::histogram::Histogram;
use std::time::Instant;

pub struct EmbeddedPublisher {
    tx: HandoffTx,
    /// `hb_ingest_publish_latency_seconds`: here the wait for the commit.
    latency: Histogram,
}

impl EmbeddedPublisher {
    pub fn new(tx: HandoffTx, latency: Histogram) -> EmbeddedPublisher {
        EmbeddedPublisher { tx, latency }
    }
}

fn map(err: HandoffError) -> PublishError {
    PublishError::Unavailable(err.to_string())
}

#[async_trait]
impl Publisher for EmbeddedPublisher {
    async fn publish(&self, batch: Vec<Heartbeat>) -> Result<(), PublishError> {
        let started = Instant::now();
        let outcome = self.tx.send(batch, Vec::new()).await.map_err(map);
        self.latency.observe(started.elapsed().as_secs_f64());
        outcome
    }

    async fn dead_letter(&self, letters: Vec<DeadLetter>) -> Result<(), PublishError> {
        self.tx.send(Vec::new(), letters).await.map_err(map)
    }

    fn name(&self) -> &'static str {
        "embedded"
    }
}
