//! Stream stage throughput without the network: realistic heartbeats through
//! the pipeline (sessionizer + flushes) into the embedded SQLite store, or
//! PostgreSQL with `HB_BENCH_PG=postgres://...`. Prints heartbeats/s and the
//! flush latency. `cargo run --release -p svc-stream --example pipeline_bench`
//! Env: HB_BENCH_EVENTS (default 1_000_000), HB_BENCH_FLUSH (default 20_000),
//! HB_BENCH_BATCH (heartbeats per `ingest_batch`, as a consumer poll hands
//! them over; default 2_048, 1: one at a time).

use hb_testkit::fleet::{Fleet, FleetConfig};
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::time::Instant;
use svc_stream::metrics::StreamMetrics;
use svc_stream::pipeline::{Pipeline, SourceKind};
use svc_stream::sessionizer::SessionConfig;
use svc_stream::sink::sql::{PgStore, SqliteStore};
use svc_stream::sink::{RawInStore, RawPlacement};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn bench<S: RawInStore + 'static>(name: &str, store: Arc<S>) -> anyhow::Result<()> {
    let events = env_usize("HB_BENCH_EVENTS", 1_000_000);
    let flush_every = env_usize("HB_BENCH_FLUSH", 20_000);
    let batch = env_usize("HB_BENCH_BATCH", 2_048).max(1);
    let mut fleet = Fleet::new(FleetConfig {
        devices: 100_000,
        users: 70_000,
        seed: 42,
        ..FleetConfig::default()
    });
    let heartbeats: Vec<_> = fleet.heartbeats(events).collect();
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
    for (index, chunk) in heartbeats.chunks(batch).enumerate() {
        let first = (index * batch) as i64;
        pipeline.ingest_batch(
            0,
            chunk
                .iter()
                .enumerate()
                .map(|(at, hb)| (Some(first + at as i64), hb)),
            0,
        );
        unflushed += chunk.len();
        if unflushed >= flush_every {
            unflushed = 0;
            let t = Instant::now();
            pipeline.flush().await?;
            flushes.push(t.elapsed().as_secs_f64() * 1000.0);
        }
    }
    pipeline.flush().await?;
    let elapsed = started.elapsed().as_secs_f64();
    flushes.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        flushes
            .get(((flushes.len() as f64 - 1.0) * p) as usize)
            .copied()
            .unwrap_or(0.0)
    };
    println!(
        "{name}: {events} heartbeats (batches of {batch}) in {elapsed:.2}s = {:.0} heartbeats/s; flush of {flush_every}: p50 {:.1} ms, p99 {:.1} ms",
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
