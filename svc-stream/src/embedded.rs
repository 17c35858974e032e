//! The embedded stream stage of `hbmesh up`: batches arrive through the
//! in-process hand-off, and each is acknowledged only after the SQLite
//! transaction holding it commits. Group commit: one transaction takes every
//! batch that arrived while the previous one was committing.

use crate::pipeline::{prepare_next, FlushStats, Pipeline, Readiness, SessionWrites};
use crate::sink::SinkError;
use hb_common::handoff::{HandoffBatch, HandoffError, HandoffRx};
use hb_common::time::now_ms;
use std::time::{Duration, Instant};

/// Topic name under which the embedded tier records its watermark.
pub const EMBEDDED_TOPIC: &str = "embedded";
/// The embedded tier is one partition: the whole stream.
pub const EMBEDDED_PARTITION: i32 = 0;
/// How often expired raw rows are deleted.
const EXPIRE_EVERY: Duration = Duration::from_secs(3600);

/// A commit under way, the batches it acknowledges, and when it started.
type InFlight = (
    tokio::task::JoinHandle<Result<FlushStats, SinkError>>,
    Vec<HandoffBatch>,
    Instant,
);

pub use crate::pipeline::{StageSettings, DEFER_FROM};

/// Runs until every sender of `rx` is gone (ingest has drained), then makes a
/// last flush. Sessions stay open in the store across restarts.
///
/// One commit is in flight at a time, and the next batches are sessionized
/// while it runs (the CPU would otherwise idle through each fsync). A batch
/// is acknowledged only by the outcome of the commit that holds it; when a
/// commit fails, the state is rebuilt from the store, so every batch absorbed
/// since is failed too and the devices resend it.
///
/// Under load a commit may hold only raw rows (see
/// `StageSettings::session_write_interval`): the batches are durable, so they
/// are acknowledged; the sessions they changed follow within the interval,
/// or with the next commit once the load drops.
///
/// Readiness is renewed on every tick and after every commit (see [`Readiness`]).
pub async fn run(
    pipeline: Pipeline,
    rx: HandoffRx,
    settings: StageSettings,
    ready: Readiness,
) -> anyhow::Result<()> {
    let commits = tokio::runtime::Handle::current();
    run_committing_on(pipeline, rx, settings, ready, commits).await
}

/// [`run`], its commits spawned on `commits`.
async fn run_committing_on(
    mut pipeline: Pipeline,
    mut rx: HandoffRx,
    settings: StageSettings,
    ready: Readiness,
    commits: tokio::runtime::Handle,
) -> anyhow::Result<()> {
    let StageSettings {
        tick,
        flush_max,
        session_write_interval,
        defer_from,
    } = settings;
    let deferring = !session_write_interval.is_zero() && pipeline.defer_sessions();
    let interval = if deferring {
        session_write_interval
    } else {
        Duration::ZERO
    };
    let mut writes = SessionWrites::new(interval, defer_from, pipeline.session_shares());
    pipeline.assign(EMBEDDED_PARTITION).await?;
    // Absorbed into the sessionizer, not yet part of a flush.
    let mut waiting: Vec<HandoffBatch> = Vec::new();
    let mut in_flight: Option<InFlight> = None;
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_expire = Instant::now();
    let mut open = true;
    while open || in_flight.is_some() || !waiting.is_empty() {
        tokio::select! {
            maybe = rx.recv(), if open && pipeline.pending() < flush_max => {
                match maybe {
                    Some(batch) => {
                        accept(&mut pipeline, batch, &mut waiting);
                        let committed = in_flight.as_ref().map(|(commit, _, _)| commit);
                        take_queued(&mut pipeline, &mut rx, &mut waiting, flush_max, committed);
                    }
                    None => {
                        open = false;
                        pipeline.tick(now_ms());
                    }
                }
            }
            outcome = async { (&mut in_flight.as_mut().expect("guarded").0).await }, if in_flight.is_some() => {
                let (_, batches, _) = in_flight.take().expect("guarded");
                let outcome = outcome.unwrap_or_else(|join| {
                    Err(SinkError::Unavailable(format!("flush task: {join}")))
                });
                if let Err(err) = &outcome {
                    tracing::error!(error = %err, "embedded flush failed; rebuilding state from the store");
                    // Everything absorbed since is gone with the in-memory state.
                    let lost = std::mem::take(&mut waiting);
                    complete(lost, Err(err));
                    if let Err(reload) = pipeline.reload().await {
                        tracing::error!(error = %reload, "rebuilding state failed");
                    }
                }
                complete(batches, outcome.as_ref().map(|_| ()));
                ready.renew(&pipeline, None);
            }
            _ = ticker.tick() => {
                // Batches waiting in the hand-off: the partition is not idle,
                // the stage is behind.
                if rx.is_empty() {
                    pipeline.tick(now_ms());
                }
                if let Err(err) = pipeline.poll_erasures().await {
                    tracing::warn!(error = %err, "reading erasures failed; read again on a later tick");
                }
                ready.renew(&pipeline, in_flight.as_ref().map(|(_, _, started)| *started));
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
        if in_flight.is_none() {
            // What arrived during the last commit goes into this one.
            if open {
                take_queued(&mut pipeline, &mut rx, &mut waiting, flush_max, None);
            }
            let quiet = pipeline.pending() == 0 && rx.is_empty();
            let prepared = prepare_next(&mut pipeline, &mut writes, quiet, !open);
            match prepared {
                Some(prepared) => {
                    in_flight = Some((
                        commits.spawn(prepared.commit()),
                        std::mem::take(&mut waiting),
                        Instant::now(),
                    ));
                }
                // Nothing to write (duplicates only): nothing to wait for.
                None => complete(std::mem::take(&mut waiting), Ok(())),
            }
        }
    }
    tracing::info!("embedded stream stage stopped");
    Ok(())
}

/// [`run`] on a thread of its own, with a single-threaded runtime. The
/// stage is the embedded tier's one sequential step, and as one task among
/// the ingest calls' it waits behind them for a worker whenever the cores
/// are busy, its backlog (and every ack) growing meanwhile; as a thread it
/// gets the system's share of a core. Its commits still run on the
/// caller's runtime: on the stage's own, a commit would start (and its end
/// be seen) only when the busy stage next yields.
pub async fn run_on_own_thread(
    pipeline: Pipeline,
    rx: HandoffRx,
    settings: StageSettings,
    ready: Readiness,
) -> anyhow::Result<()> {
    let commits = tokio::runtime::Handle::current();
    let (done, stopped) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("hb-stream-stage".into())
        .spawn(move || {
            let result = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(anyhow::Error::from)
                .and_then(|runtime| {
                    runtime.block_on(run_committing_on(pipeline, rx, settings, ready, commits))
                });
            let _ = done.send(result);
        })?;
    stopped
        .await
        .map_err(|_| anyhow::anyhow!("the stream stage's thread panicked"))?
}

fn accept(pipeline: &mut Pipeline, mut batch: HandoffBatch, waiting: &mut Vec<HandoffBatch>) {
    // The batch stays only for its acknowledgement; the heartbeats' strings
    // move on into the raw rows.
    let heartbeats = std::mem::take(&mut batch.heartbeats);
    pipeline.ingest_batch(
        EMBEDDED_PARTITION,
        heartbeats.into_iter().map(|hb| (None, hb)),
        now_ms(),
    );
    pipeline.dead_letters(std::mem::take(&mut batch.dead_letters));
    waiting.push(batch);
}

/// Takes the batches already queued, up to the flush size. Not the ones that
/// arrive meanwhile: under a steady load they come as fast as they are
/// taken, and the commit in flight would finish unnoticed, its batches
/// unacknowledged, for as long as that lasted. For the same reason it stops
/// once `committed` (the commit in flight) has finished.
fn take_queued(
    pipeline: &mut Pipeline,
    rx: &mut HandoffRx,
    waiting: &mut Vec<HandoffBatch>,
    flush_max: usize,
    committed: Option<&tokio::task::JoinHandle<Result<FlushStats, SinkError>>>,
) {
    for _ in 0..rx.len() {
        if pipeline.pending() >= flush_max || committed.is_some_and(|c| c.is_finished()) {
            break;
        }
        match rx.try_recv() {
            Ok(batch) => accept(pipeline, batch, waiting),
            Err(_) => break,
        }
    }
}

/// Acknowledges (or fails) `batches` with one commit's outcome.
fn complete(batches: Vec<HandoffBatch>, outcome: Result<(), &SinkError>) {
    for batch in batches {
        batch.complete(outcome.map_err(|e| HandoffError::Store(e.to_string())));
    }
}
