//! The embedded stream stage of `hbmesh up`: batches arrive through the
//! in-process hand-off, and each is acknowledged only after the SQLite
//! transaction holding it commits. Group commit: one transaction takes every
//! batch that arrived while the previous one was committing.

use crate::pipeline::Pipeline;
use hb_common::handoff::{HandoffBatch, HandoffError, HandoffRx};
use hb_common::time::now_ms;
use std::time::{Duration, Instant};

/// Topic name under which the embedded tier records its watermark.
pub const EMBEDDED_TOPIC: &str = "embedded";
/// The embedded tier is one partition: the whole stream.
pub const EMBEDDED_PARTITION: i32 = 0;
/// How often expired raw rows are deleted.
const EXPIRE_EVERY: Duration = Duration::from_secs(3600);

/// Runs until every sender of `rx` is gone (ingest has drained), then makes a
/// last flush. Sessions stay open in the store across restarts.
pub async fn run(
    mut pipeline: Pipeline,
    mut rx: HandoffRx,
    tick: Duration,
    flush_max: usize,
) -> anyhow::Result<()> {
    pipeline.assign(EMBEDDED_PARTITION).await?;
    let mut waiting: Vec<HandoffBatch> = Vec::new();
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_expire = Instant::now();
    loop {
        tokio::select! {
            maybe = rx.recv() => {
                let Some(batch) = maybe else { break };
                accept(&mut pipeline, batch, &mut waiting);
                // Take whatever else is already queued, up to the flush size.
                while pipeline.pending() < flush_max {
                    match rx.try_recv() {
                        Ok(batch) => accept(&mut pipeline, batch, &mut waiting),
                        Err(_) => break,
                    }
                }
                flush_and_ack(&mut pipeline, &mut waiting).await;
            }
            _ = ticker.tick() => {
                pipeline.tick(now_ms());
                flush_and_ack(&mut pipeline, &mut waiting).await;
                if last_expire.elapsed() >= EXPIRE_EVERY {
                    last_expire = Instant::now();
                    match pipeline.expire_raw().await {
                        Ok(n) if n > 0 => tracing::info!(rows = n, "expired raw heartbeats"),
                        Ok(_) => {}
                        Err(err) => tracing::warn!(error = %err, "expiring raw heartbeats failed"),
                    }
                }
            }
        }
    }
    pipeline.tick(now_ms());
    flush_and_ack(&mut pipeline, &mut waiting).await;
    tracing::info!("embedded stream stage stopped");
    Ok(())
}

fn accept(pipeline: &mut Pipeline, mut batch: HandoffBatch, waiting: &mut Vec<HandoffBatch>) {
    let now = now_ms();
    for hb in &batch.heartbeats {
        pipeline.ingest(EMBEDDED_PARTITION, None, hb, now);
    }
    pipeline.dead_letters(std::mem::take(&mut batch.dead_letters));
    waiting.push(batch);
}

/// Commits, then acknowledges every waiting batch with the outcome. After a
/// failure the state is rebuilt from the store, so the devices' resends are
/// counted exactly once.
async fn flush_and_ack(pipeline: &mut Pipeline, waiting: &mut Vec<HandoffBatch>) {
    let outcome = pipeline.flush().await;
    if let Err(err) = &outcome {
        tracing::error!(error = %err, "embedded flush failed; rebuilding state from the store");
        if let Err(reload) = pipeline.reload().await {
            tracing::error!(error = %reload, "rebuilding state failed");
        }
    }
    for batch in waiting.drain(..) {
        batch.complete(
            outcome
                .as_ref()
                .map(|_| ())
                .map_err(|e| HandoffError::Store(e.to_string())),
        );
    }
}
