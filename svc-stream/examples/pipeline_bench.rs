//! Stream stage throughput without the network: realistic heartbeats through
//! the pipeline (sessionizer + flushes) into the embedded SQLite store, or
//! PostgreSQL with `HB_BENCH_PG=postgres://...`. Prints heartbeats/s and the
//! flush latency. `cargo run --release -p svc-stream --example pipeline_bench`
//! Env: HB_BENCH_EVENTS (default 1_000_000), HB_BENCH_DEVICES (simulated
//! players, one heartbeat per 5 s each, 7 users per 10 devices; default
//! 100_000), HB_BENCH_FLUSH (default 20_000),
//! HB_BENCH_BATCH (heartbeats per `ingest_batch`, as a consumer poll hands
//! them over; default 2_048, 1: one at a time), HB_BENCH_LATE_SHARE (share of
//! devices, 0 to 1, whose heartbeats arrive an hour late and go through the
//! late lane; default 0), HB_BENCH_LAG (heartbeats; default 0: the fleet's
//! own order): the users fall into 64 groups, as the simulator's lanes, and
//! each group's heartbeats arrive a fixed number of heartbeats late, up to
//! this many, as from lanes out of step while the stage catches up after a
//! stall (a flush then holds rows from far apart in event time). The run ends
//! once every due correction is applied.

use hb_proto::v1::Heartbeat;
use hb_testkit::fleet::{Fleet, FleetConfig};
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::time::Instant;
use svc_stream::metrics::StreamMetrics;
use svc_stream::pipeline::{Pipeline, SourceKind, CORRECTION_SETTLE_MS};
use svc_stream::sessionizer::SessionConfig;
use svc_stream::sink::sql::{PgStore, SqliteStore};
use svc_stream::sink::{RawInStore, RawPlacement};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A stable hash of an id, to pick groups of users or devices.
fn id_hash(id: &str) -> u64 {
    id.bytes()
        .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)))
}

/// Delivers each of 64 user groups' heartbeats a fixed number of places
/// later (the group's lag, spread evenly up to `lag`), keeping each group's
/// own order.
fn out_of_step(heartbeats: Vec<Heartbeat>, lag: usize) -> Vec<Heartbeat> {
    const GROUPS: u64 = 64;
    let group_lag = |user_id: &str| {
        let group = id_hash(user_id) % GROUPS;
        (group * lag as u64 / (GROUPS - 1)) as usize
    };
    let mut keyed: Vec<(usize, Heartbeat)> = heartbeats
        .into_iter()
        .enumerate()
        .map(|(index, hb)| (index + group_lag(&hb.user_id), hb))
        .collect();
    keyed.sort_by_key(|(at, _)| *at);
    keyed.into_iter().map(|(_, hb)| hb).collect()
}

async fn bench<S: RawInStore + 'static>(name: &str, store: Arc<S>) -> anyhow::Result<()> {
    let events = env_usize("HB_BENCH_EVENTS", 1_000_000);
    let flush_every = env_usize("HB_BENCH_FLUSH", 20_000);
    let batch = env_usize("HB_BENCH_BATCH", 2_048).max(1);
    let late_share: f64 = std::env::var("HB_BENCH_LATE_SHARE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    let devices = env_usize("HB_BENCH_DEVICES", 100_000);
    let mut fleet = Fleet::new(FleetConfig {
        devices,
        users: devices * 7 / 10,
        seed: 42,
        ..FleetConfig::default()
    });
    let mut heartbeats: Vec<_> = fleet.heartbeats(events).collect();
    let lag = env_usize("HB_BENCH_LAG", 0);
    if lag > 0 {
        heartbeats = out_of_step(heartbeats, lag);
    }
    // Offline devices: their heartbeats come an hour after they were made.
    let late_devices = (late_share.clamp(0.0, 1.0) * 1_000.0) as u64;
    let mut late = 0;
    for hb in &mut heartbeats {
        if id_hash(&hb.device_id) % 1_000 < late_devices {
            if let Some(t) = hb.event_time.as_mut() {
                t.seconds -= 3_600;
                late += 1;
            }
        }
    }
    let metrics = StreamMetrics::register(&mut Registry::default());
    let mut pipeline = Pipeline::new(
        SessionConfig::default(),
        SourceKind::Log {
            topic: "bench".into(),
        },
        store.clone(),
        RawPlacement::InStore(store),
        metrics,
    );
    pipeline.assign(0).await?;
    let started = Instant::now();
    let mut flushes = Vec::new();
    let mut unflushed = 0;
    let mut offsets = heartbeats.into_iter().zip(0i64..).peekable();
    while offsets.peek().is_some() {
        let chunk: Vec<_> = offsets.by_ref().take(batch).collect();
        unflushed += chunk.len();
        pipeline.ingest_batch(
            0,
            chunk.into_iter().map(|(hb, offset)| (Some(offset), hb)),
            hb_common::time::now_ms(),
        );
        if unflushed >= flush_every {
            unflushed = 0;
            let t = Instant::now();
            pipeline.flush().await?;
            flushes.push(t.elapsed().as_secs_f64() * 1000.0);
        }
    }
    pipeline.flush().await?;
    let elapsed = started.elapsed().as_secs_f64();
    // The corrections of the last late heartbeats, once they have settled
    // (this also finalizes by watermark, which the load itself never does).
    let tail = Instant::now();
    if late > 0 {
        pipeline.tick(hb_common::time::now_ms() + CORRECTION_SETTLE_MS);
        pipeline.flush().await?;
    }
    let tail = tail.elapsed().as_secs_f64();
    let corrections = pipeline.metrics().corrections.get();
    flushes.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        flushes
            .get(((flushes.len() as f64 - 1.0) * p) as usize)
            .copied()
            .unwrap_or(0.0)
    };
    println!(
        "{name}: {events} heartbeats (batches of {batch}, {late} an hour late) in {elapsed:.2}s = {:.0} heartbeats/s; flush of {flush_every}: p50 {:.1} ms, p99 {:.1} ms; {corrections} corrections, then {tail:.2}s for the last ones",
        events as f64 / elapsed,
        pct(0.5),
        pct(0.99)
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    hb_common::telemetry::init();
    let dir = tempfile::tempdir()?;
    let pool = hb_common::store::open_sqlite(dir.path(), 2).await?;
    bench("sqlite", Arc::new(SqliteStore::new(pool, 30 * 86_400_000))).await?;
    if let Ok(url) = std::env::var("HB_BENCH_PG") {
        let pool = hb_common::store::open_postgres(&url, 4).await?;
        bench("postgres", Arc::new(PgStore::new(pool, 30 * 86_400_000))).await?;
    }
    Ok(())
}
