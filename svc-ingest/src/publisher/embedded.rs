//! Embedded tier: hands batches to the in-process stream stage and waits for
//! its store commit (see `hb_common::handoff`).

use super::{DeadLetter, PublishError, Publisher};
use async_trait::async_trait;
use hb_common::handoff::{HandoffError, HandoffTx};
use hb_proto::v1::Heartbeat;

pub struct EmbeddedPublisher {
    tx: HandoffTx,
}

impl EmbeddedPublisher {
    pub fn new(tx: HandoffTx) -> EmbeddedPublisher {
        EmbeddedPublisher { tx }
    }
}

fn map(err: HandoffError) -> PublishError {
    PublishError::Unavailable(err.to_string())
}

#[async_trait]
impl Publisher for EmbeddedPublisher {
    async fn publish(&self, batch: Vec<Heartbeat>) -> Result<(), PublishError> {
        self.tx.send(batch, Vec::new()).await.map_err(map)
    }

    async fn dead_letter(&self, letters: Vec<DeadLetter>) -> Result<(), PublishError> {
        self.tx.send(Vec::new(), letters).await.map_err(map)
    }

    fn name(&self) -> &'static str {
        "embedded"
    }
}
