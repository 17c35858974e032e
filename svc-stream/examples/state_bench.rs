//! Memory per open session: opens one session per simulated viewer and prints
//! the resident memory it took, per open session and per held heartbeat, for
//! the stream stage as `hbmesh up` runs it (realistic heartbeats through
//! `Pipeline::ingest_batch` and flushes into the embedded SQLite store) and
//! for a bare `Sessionizer` fed the same heartbeats, and what a restart
//! after a crash (the pipeline part exits without closing anything) takes
//! to restore those sessions from the store (time and memory; it fails
//! unless every open session comes back). Each
//! part runs in a process of its own, so none inherits another's heap.
//! `cargo run -p svc-stream --example state_bench` (allocation sizes do not
//! depend on the build profile).
//! Env: HB_BENCH_VIEWERS (default 100_000), HB_BENCH_BEATS (heartbeats per
//! viewer, one every 5 s of event time; default 3), HB_BENCH_FLUSH (default
//! 20_000), HB_BENCH_PART (`pipeline`, `restore` or `sessionizer`: that
//! part only; the first two on the store in HB_BENCH_DIR).
//! With `--features dhat-heap` each part writes its Rust heap as it stands at
//! the end (`dhat-<part>.json`, "eb" bytes per allocation site); SQLite
//! allocates outside it, so resident minus that heap is mostly SQLite's.

use hb_proto::v1::Heartbeat;
use hb_testkit::fleet::{Fleet, FleetConfig};
use prometheus_client::registry::Registry;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use svc_stream::embedded::EMBEDDED_PARTITION;
use svc_stream::metrics::StreamMetrics;
use svc_stream::pipeline::{Pipeline, SourceKind};
use svc_stream::sessionizer::{EventRef, SessionConfig, Sessionizer};
use svc_stream::sink::sql::SqliteStore;
use svc_stream::sink::RawPlacement;

#[cfg(feature = "dhat-heap")]
#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

/// Heartbeats generated and handed over at a time (a consumer poll's worth).
const BATCH: usize = 2_048;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

/// Resident and anonymous resident bytes of this process.
#[derive(Clone, Copy)]
struct Resident {
    rss: u64,
    anon: u64,
}

impl Resident {
    fn now() -> Resident {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|kb| kb.parse::<u64>().ok())
                .map_or(0, |kb| kb * 1_024)
        };
        Resident {
            rss: field("VmRSS:"),
            anon: field("RssAnon:"),
        }
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 20) as f64
}

/// One session per viewer: every device is mid-video from the start, and
/// a user has about 1.4 devices, as in the pipeline benchmark.
fn fleet(viewers: usize) -> Fleet {
    Fleet::new(FleetConfig {
        devices: viewers,
        users: (viewers * 7 / 10).max(1),
        seed: 42,
        active_at_start: 1.0,
        ..FleetConfig::default()
    })
}

struct Run {
    heartbeats: usize,
    open: usize,
    held: usize,
    before: Resident,
    after: Resident,
    seconds: f64,
    /// The state measured, dropped only after the heap profile is taken.
    _state: Box<dyn std::any::Any>,
}

/// Resident memory and the clock as a part starts measuring.
struct Start {
    before: Resident,
    started: Instant,
}

impl Start {
    fn now() -> Start {
        Start {
            before: Resident::now(),
            started: Instant::now(),
        }
    }

    /// The run, with `state` held until it is dropped.
    fn finish(
        self,
        heartbeats: usize,
        open: usize,
        held: usize,
        state: Box<dyn std::any::Any>,
    ) -> Run {
        Run {
            heartbeats,
            open,
            held,
            before: self.before,
            after: Resident::now(),
            seconds: self.started.elapsed().as_secs_f64(),
            _state: state,
        }
    }
}

fn report(part: &str, viewers: usize, run: &Run) {
    let grown = run.after.rss.saturating_sub(run.before.rss);
    let anon = run.after.anon.saturating_sub(run.before.anon);
    let work = if run.heartbeats == 0 {
        format!("restored in {:.1}s", run.seconds)
    } else {
        format!("{} heartbeats in {:.1}s", run.heartbeats, run.seconds)
    };
    println!(
        "{part}: {viewers} viewers, {work}, {} open sessions, {} held heartbeats; \
         resident {:.1} -> {:.1} MiB (anonymous {:.1} -> {:.1} MiB); \
         {:.0} B per open session ({:.0} B anonymous), {:.0} B per held heartbeat",
        run.open,
        run.held,
        mib(run.before.rss),
        mib(run.after.rss),
        mib(run.before.anon),
        mib(run.after.anon),
        grown as f64 / run.open.max(1) as f64,
        anon as f64 / run.open.max(1) as f64,
        grown as f64 / run.held.max(1) as f64,
    );
}

/// The heartbeats of `fleet` a batch at a time, none kept once handed over.
/// The first batch is generated at once: it sets up every device's queue, so
/// memory measured after it grows with the state only.
struct Batches<'a> {
    fleet: &'a mut Fleet,
    left: usize,
    next: Vec<Heartbeat>,
}

impl<'a> Batches<'a> {
    fn new(fleet: &'a mut Fleet, total: usize) -> Batches<'a> {
        let next = fleet.heartbeats(total.min(BATCH)).collect::<Vec<_>>();
        Batches {
            left: total - next.len(),
            fleet,
            next,
        }
    }

    fn next_batch(&mut self) -> Option<Vec<Heartbeat>> {
        if self.next.is_empty() {
            return None;
        }
        let count = self.left.min(BATCH);
        self.left -= count;
        let following = self.fleet.heartbeats(count).collect();
        Some(std::mem::replace(&mut self.next, following))
    }
}

fn sessionizer_alone(viewers: usize, beats: usize, flush_every: usize) -> Run {
    let mut fleet = fleet(viewers);
    let mut batches = Batches::new(&mut fleet, viewers * beats);
    let mut sessionizer = Sessionizer::new(SessionConfig::default());
    let start = Start::now();
    let mut unflushed = 0;
    while let Some(batch) = batches.next_batch() {
        let events: Vec<EventRef<'_>> = batch
            .iter()
            .filter_map(|hb| EventRef::from_proto(hb).ok())
            .collect();
        sessionizer.push_event_refs(&events);
        unflushed += batch.len();
        // The changes go where a flush would take them.
        if unflushed >= flush_every {
            unflushed = 0;
            sessionizer.drain_changes_with(|_| {});
        }
    }
    sessionizer.drain_changes_with(|_| {});
    let (open, held) = (sessionizer.open_sessions(), sessionizer.held_events());
    start.finish(viewers * beats, open, held, Box::new(sessionizer))
}

/// The embedded stage's pipeline on the store in `dir`, as `hbmesh up`
/// opens it (a restart restores the open sessions from it).
async fn open_pipeline(dir: &Path) -> anyhow::Result<Pipeline> {
    let pool = hb_common::store::open_sqlite(dir, 4).await?;
    let store = Arc::new(SqliteStore::new(pool, 30 * 86_400_000));
    let metrics = StreamMetrics::register(&mut Registry::default());
    let mut pipeline = Pipeline::new(
        SessionConfig::default(),
        SourceKind::Handoff,
        store.clone(),
        RawPlacement::InStore(store),
        metrics,
    );
    // As `hbmesh up` runs it (with its default `HB_SESSION_WRITE_INTERVAL`):
    // a restore then also replays the raw rows of the lateness window.
    pipeline.defer_sessions();
    pipeline.assign(EMBEDDED_PARTITION).await?;
    Ok(pipeline)
}

async fn pipeline(
    dir: &Path,
    viewers: usize,
    beats: usize,
    flush_every: usize,
) -> anyhow::Result<Run> {
    let mut fleet = fleet(viewers);
    let mut batches = Batches::new(&mut fleet, viewers * beats);
    let mut pipeline = open_pipeline(dir).await?;
    let start = Start::now();
    while let Some(batch) = batches.next_batch() {
        pipeline.ingest_batch(
            EMBEDDED_PARTITION,
            batch.into_iter().map(|hb| (None, hb)),
            hb_common::time::now_ms(),
        );
        if pipeline.pending() >= flush_every {
            pipeline.flush().await?;
        }
    }
    pipeline.flush().await?;
    let open = pipeline.metrics().open_sessions.get() as usize;
    assert_eq!(
        open,
        pipeline.open_sessions(),
        "the gauge follows the state"
    );
    let held = pipeline.held_events();
    Ok(start.finish(viewers * beats, open, held, Box::new(pipeline)))
}

/// A restart on the store the pipeline part left as a crash does: the open
/// sessions are rebuilt from their stored rows and raw heartbeats.
async fn restore(dir: &Path) -> anyhow::Result<Run> {
    let start = Start::now();
    let pipeline = open_pipeline(dir).await?;
    let (open, held) = (pipeline.open_sessions(), pipeline.held_events());
    Ok(start.finish(0, open, held, Box::new(pipeline)))
}

fn main() -> anyhow::Result<()> {
    let viewers = env_usize("HB_BENCH_VIEWERS", 100_000).max(1);
    let beats = env_usize("HB_BENCH_BEATS", 3).max(1);
    let flush_every = env_usize("HB_BENCH_FLUSH", 20_000).max(1);
    let part = std::env::var("HB_BENCH_PART").unwrap_or_default();
    match part.as_str() {
        "sessionizer" => {
            #[cfg(feature = "dhat-heap")]
            let profiler = dhat::Profiler::builder()
                .file_name("dhat-sessionizer.json")
                .build();
            let run = sessionizer_alone(viewers, beats, flush_every);
            // The heap as it stands with the state held.
            #[cfg(feature = "dhat-heap")]
            drop(profiler);
            report("sessionizer alone", viewers, &run);
        }
        "pipeline" | "restore" => {
            let dir = std::env::var_os("HB_BENCH_DIR")
                .map(PathBuf::from)
                .ok_or_else(|| anyhow::anyhow!("HB_BENCH_DIR names the store's directory"))?;
            #[cfg(feature = "dhat-heap")]
            let profiler = dhat::Profiler::builder()
                .file_name(format!("dhat-{part}.json"))
                .build();
            let runtime = tokio::runtime::Runtime::new()?;
            let run = runtime.block_on(async {
                match part.as_str() {
                    "pipeline" => pipeline(&dir, viewers, beats, flush_every).await,
                    _ => restore(&dir).await,
                }
            })?;
            #[cfg(feature = "dhat-heap")]
            drop(profiler);
            let left_open = dir.join("open_sessions");
            if part == "pipeline" {
                report("pipeline + SQLite", viewers, &run);
                std::fs::write(&left_open, run.open.to_string())?;
                // Gone as a crash leaves it: no store closed, nothing dropped.
                std::process::exit(0);
            }
            report("restored after a crash", viewers, &run);
            let expected: usize = std::fs::read_to_string(&left_open)
                .map_or(Ok(run.open), |text| text.trim().parse())?;
            anyhow::ensure!(
                run.open == expected,
                "restored {} open sessions where the pipeline left {expected}",
                run.open
            );
        }
        "" => {
            let dir = tempfile::tempdir()?;
            for part in ["pipeline", "restore", "sessionizer"] {
                let status = std::process::Command::new(std::env::current_exe()?)
                    .env("HB_BENCH_PART", part)
                    .env("HB_BENCH_DIR", dir.path())
                    .status()?;
                anyhow::ensure!(status.success(), "the {part} part failed: {status}");
            }
        }
        other => {
            anyhow::bail!("HB_BENCH_PART is `pipeline`, `restore` or `sessionizer`, not `{other}`")
        }
    }
    Ok(())
}
