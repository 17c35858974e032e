//! Sessionizer benchmark over the realistic workload of `hb_testkit::fleet`.
//!
//! 1. A criterion group on a small input (push + drain of 50 000 heartbeats).
//! 2. A throughput run printing heartbeats/s on one core (wall time and the
//!    thread's on-CPU time) and peak memory: the fleet is generated in small
//!    batches outside the timed section, each pushed right after, with
//!    `advance` + `drain_changes` every `HB_BENCH_DRAIN_EVERY` heartbeats
//!    (processing time follows the newest event time, as live).
//!    It then checks the streamed sessions against `sessionize_all` over the
//!    same heartbeats and prints the totals that `bench/duckdb_sessions.py`
//!    compares with DuckDB.
//!
//! Environment: `HB_BENCH_EVENTS` (default 5 000 000), `HB_BENCH_DEVICES`
//! (100 000), `HB_BENCH_DRAIN_EVERY` (50 000), `HB_BENCH_SEED` (42),
//! `HB_BENCH_MODE` (`batch`, the default: `push_events` over event buffers
//! reused from batch to batch, as a consumer decoding into the same messages,
//! and `drain_changes_with`; `owned`: `push_batch` of owned events and
//! `drain_changes`; `push`: `push` one by one and `drain_changes`),
//! `HB_BENCH_JSONL` (write the heartbeats as JSON Lines there),
//! `HB_BENCH_SESSIONS_JSONL` (write the sessions there), `HB_BENCH_CRITERION=0`
//! (skip the criterion group), `HB_BENCH_VERIFY=0` (skip the batch check).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion};
use hb_common::time::{ms_to_rfc3339, timestamp_to_ms};
use hb_proto::v1::Heartbeat;
use hb_testkit::fleet::{Fleet, FleetConfig};
use svc_stream::sessionizer::{
    sessionize_all, Change, ChangeRef, Event, Outcome, PlaybackState, Session, SessionConfig,
    Sessionizer,
};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(text) => text
            .replace('_', "")
            .parse()
            .unwrap_or_else(|_| panic!("{name}={text} is not a number")),
        Err(_) => default,
    }
}

fn bench_fleet(devices: usize, seed: u64) -> Fleet {
    Fleet::new(FleetConfig {
        devices,
        users: devices * 7 / 10,
        videos: (devices / 5).max(100),
        ads: 500,
        seed,
        ..FleetConfig::default()
    })
}

fn event_of(heartbeat: Heartbeat) -> Event {
    Event::try_from(heartbeat).expect("the workload sends valid heartbeats")
}

/// Copies a heartbeat into an event whose buffers are reused, as a consumer
/// decoding each poll into the same messages does (no allocation once the
/// buffers are large enough).
fn fill_event(event: &mut Event, heartbeat: &Heartbeat) {
    let time = heartbeat
        .event_time
        .as_ref()
        .expect("the workload sets times");
    for (to, from) in [
        (&mut event.event_id, &heartbeat.event_id),
        (&mut event.user_id, &heartbeat.user_id),
        (&mut event.video_id, &heartbeat.video_id),
        (&mut event.device_id, &heartbeat.device_id),
        (&mut event.ad_id, &heartbeat.ad_id),
    ] {
        to.clear();
        to.push_str(from);
    }
    event.time_ms = timestamp_to_ms(time);
    event.position_ms = i64::try_from(heartbeat.position_ms).expect("in range");
    event.state = PlaybackState::try_from(heartbeat.state).expect("specified");
}

/// How the throughput run feeds the sessionizer (`HB_BENCH_MODE`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// `push_events` over reused event buffers (the default).
    Borrowed,
    /// `push_batch` of owned events, dropped by the sessionizer.
    Owned,
    /// `push` one owned event at a time.
    OneByOne,
}

/// Time this thread spent on a CPU, in ns (`/proc/thread-self/schedstat`,
/// Linux only): on a shared machine wall time also counts the time other
/// processes held the core.
struct CpuClock(Option<File>);

impl CpuClock {
    fn open() -> Self {
        CpuClock(File::open("/proc/thread-self/schedstat").ok())
    }

    fn ns(&self) -> Option<u64> {
        use std::os::unix::fs::FileExt;
        let file = self.0.as_ref()?;
        let mut buf = [0u8; 128];
        let read = file.read_at(&mut buf, 0).ok()?;
        std::str::from_utf8(&buf[..read])
            .ok()?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }
}

/// `/proc/self/status` field in KiB (Linux only).
fn proc_status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[derive(serde::Serialize)]
struct JsonHeartbeat<'a> {
    event_id: &'a str,
    device_id: &'a str,
    user_id: &'a str,
    video_id: &'a str,
    event_time: String,
    position_ms: u64,
    state: &'static str,
    ad_id: &'a str,
}

fn write_jsonl(out: &mut impl Write, heartbeat: &Heartbeat) {
    let time_ms = timestamp_to_ms(heartbeat.event_time.as_ref().expect("set"));
    let state = PlaybackState::try_from(heartbeat.state).expect("specified");
    let line = JsonHeartbeat {
        event_id: &heartbeat.event_id,
        device_id: &heartbeat.device_id,
        user_id: &heartbeat.user_id,
        video_id: &heartbeat.video_id,
        event_time: ms_to_rfc3339(time_ms),
        position_ms: heartbeat.position_ms,
        state: state.as_str(),
        ad_id: &heartbeat.ad_id,
    };
    serde_json::to_writer(&mut *out, &line).expect("write heartbeat");
    out.write_all(b"\n").expect("write heartbeat");
}

#[derive(Default, Debug, PartialEq, Eq)]
struct Totals {
    sessions: u64,
    heartbeats: u64,
    watch_ms: i64,
    coverage_ms: i64,
    ads: u64,
    devices: u64,
}

impl Totals {
    fn add(&mut self, session: &Session) {
        self.sessions += 1;
        self.heartbeats += session.heartbeats;
        self.watch_ms += session.watch_ms;
        self.coverage_ms += session.coverage_ms;
        self.ads += session.ads.len() as u64;
        self.devices += session.devices;
    }
}

fn criterion_group() {
    let events: Vec<Event> = bench_fleet(5_000, 7)
        .heartbeats(50_000)
        .map(event_of)
        .collect();
    let mut criterion = Criterion::default()
        .sample_size(20)
        .measurement_time(Duration::from_secs(5))
        .configure_from_args();
    let mut group = criterion.benchmark_group("sessionizer");
    group.throughput(criterion::Throughput::Elements(events.len() as u64));
    group.bench_function("push_and_drain_50k", |bencher| {
        bencher.iter_batched(
            || events.clone(),
            |events| {
                let mut sessionizer = Sessionizer::new(SessionConfig::default());
                let mut changes = 0;
                for (index, event) in events.into_iter().enumerate() {
                    let now_ms = event.time_ms;
                    sessionizer.push(event);
                    if index % 5_000 == 4_999 {
                        sessionizer.advance(now_ms);
                        changes += sessionizer.drain_changes().len();
                    }
                }
                changes
            },
            BatchSize::LargeInput,
        )
    });
    group.bench_function("sessionize_all_50k", |bencher| {
        bencher.iter_batched(
            || events.clone(),
            |events| sessionize_all(events, 600_000).len(),
            BatchSize::LargeInput,
        )
    });
    group.finish();
    criterion.final_summary();
}

fn main() {
    if env_or("HB_BENCH_CRITERION", 1) != 0 {
        criterion_group();
    }

    let total: usize = env_or("HB_BENCH_EVENTS", 5_000_000);
    let devices: usize = env_or("HB_BENCH_DEVICES", 100_000);
    let drain_every: usize = env_or("HB_BENCH_DRAIN_EVERY", 50_000).max(1);
    let seed: u64 = env_or("HB_BENCH_SEED", 42);
    let mut jsonl = std::env::var("HB_BENCH_JSONL").ok().map(|path| {
        BufWriter::with_capacity(1 << 20, File::create(&path).expect("create HB_BENCH_JSONL"))
    });
    let mode = match std::env::var("HB_BENCH_MODE").as_deref() {
        Ok("push") => Mode::OneByOne,
        Ok("owned") => Mode::Owned,
        Ok("batch") | Err(_) => Mode::Borrowed,
        Ok(other) => panic!("HB_BENCH_MODE={other}: expected batch, owned or push"),
    };
    let batch_size = env_or("HB_BENCH_BATCH", 2_048usize).min(drain_every);
    println!(
        "sessionizer throughput: {total} heartbeats, {devices} devices, drain every {drain_every}, seed {seed}, {}",
        match mode {
            Mode::Borrowed => format!("push_events of {batch_size} reused events, drain_changes_with"),
            Mode::Owned => format!("push_batch of {batch_size} owned events, drain_changes"),
            Mode::OneByOne => "push one by one, drain_changes".to_owned(),
        }
    );

    let config = SessionConfig::default();
    let mut sessionizer = Sessionizer::new(config);
    let mut fleet = bench_fleet(devices, seed);
    // Small batches generated right before they are pushed, as a consumer
    // decodes a poll's worth of messages and feeds them: the events are warm
    // in cache, as they would be in the service.
    let cpu_clock = CpuClock::open();
    let mut on_cpu_ns = 0u64;
    let mut pushed = 0usize;
    let mut busy = Duration::ZERO;
    let mut generating = Duration::ZERO;
    let (mut merged, mut duplicates, mut late) = (0u64, 0u64, 0u64);
    let (mut upserts, mut deletes) = (0u64, 0u64);
    let mut finals: Vec<Session> = Vec::new();
    let mut most_open = 0;
    let mut most_held = 0;
    let mut first_ms = None;
    let mut now_ms = 0;
    let mut since_drain = 0;
    let mut batch = Vec::with_capacity(batch_size);
    // What a consumer reads of each upsert (it would write these fields).
    let mut upserted_checksum = 0u64;
    while pushed < total {
        let started = Instant::now();
        let count = batch_size
            .min(total - pushed)
            .min(drain_every - since_drain);
        // Borrowed mode: the events of this batch are `batch[..filled]`.
        let mut filled = 0;
        for heartbeat in fleet.heartbeats(count) {
            if let Some(out) = jsonl.as_mut() {
                write_jsonl(out, &heartbeat);
            }
            if mode != Mode::Borrowed {
                batch.push(event_of(heartbeat));
            } else if filled < batch.len() {
                fill_event(&mut batch[filled], &heartbeat);
                filled += 1;
            } else {
                batch.push(event_of(heartbeat));
                filled += 1;
            }
        }
        first_ms = first_ms.or(batch.first().map(|event: &Event| event.time_ms));
        generating += started.elapsed();

        let started = Instant::now();
        let cpu_started = cpu_clock.ns();
        now_ms = batch
            .iter()
            .fold(now_ms, |now_ms, event| now_ms.max(event.time_ms));
        let mut count_outcome = |outcome| match outcome {
            Outcome::Merged => merged += 1,
            Outcome::Duplicate => duplicates += 1,
            Outcome::Late => late += 1,
        };
        match mode {
            Mode::OneByOne => {
                for event in batch.drain(..) {
                    count_outcome(sessionizer.push(event));
                }
            }
            Mode::Owned => {
                for outcome in sessionizer.push_batch(std::mem::take(&mut batch)) {
                    count_outcome(outcome);
                }
            }
            Mode::Borrowed => {
                for outcome in sessionizer.push_events(&batch[..filled]) {
                    count_outcome(outcome);
                }
            }
        }
        since_drain += count;
        if since_drain == drain_every {
            since_drain = 0;
            most_open = most_open.max(sessionizer.open_sessions());
            most_held = most_held.max(sessionizer.held_events());
            sessionizer.advance(now_ms);
            if mode == Mode::Borrowed {
                sessionizer.drain_changes_with(|change| match change {
                    ChangeRef::Upsert(session) => {
                        upserts += 1;
                        upserted_checksum = upserted_checksum
                            .wrapping_add(session.user_id.len() as u64)
                            .wrapping_add(session.video_id.len() as u64)
                            .wrapping_add(session.start_ms as u64)
                            .wrapping_add(session.end_ms as u64)
                            .wrapping_add(session.heartbeats)
                            .wrapping_add(session.watch_ms as u64)
                            .wrapping_add(session.coverage_ms as u64)
                            .wrapping_add(session.last_position_ms as u64)
                            .wrapping_add(session.ads.len() as u64)
                            .wrapping_add(session.devices);
                    }
                    ChangeRef::Delete(_) => deletes += 1,
                    ChangeRef::Final(session) => finals.push(session),
                });
            } else {
                for change in sessionizer.drain_changes() {
                    match change {
                        Change::Upsert(_) => upserts += 1,
                        Change::Delete(_) => deletes += 1,
                        Change::Final(session) => finals.push(session),
                    }
                }
            }
        }
        busy += started.elapsed();
        if let (Some(from), Some(to)) = (cpu_started, cpu_clock.ns()) {
            on_cpu_ns += to - from;
        }
        pushed += count;
    }
    std::hint::black_box(upserted_checksum);
    drop(batch);
    let open_at_end = sessionizer.open_sessions();
    let peak_rss_kib = proc_status_kib("VmHWM:");
    let started = Instant::now();
    sessionizer.finish();
    for change in sessionizer.drain_changes() {
        match change {
            Change::Upsert(_) => upserts += 1,
            Change::Delete(_) => deletes += 1,
            Change::Final(session) => finals.push(session),
        }
    }
    let finishing = started.elapsed();
    if let Some(mut out) = jsonl.take() {
        out.flush().expect("flush HB_BENCH_JSONL");
    }

    let mut streamed = Totals::default();
    finals.iter().for_each(|session| streamed.add(session));
    let rate = pushed as f64 / busy.as_secs_f64();
    println!(
        "simulated event time: {:.1} min",
        (now_ms - first_ms.unwrap_or(now_ms)) as f64 / 60_000.0
    );
    println!(
        "push + advance + drain: {pushed} heartbeats in {:.3} s wall = {:.2} M heartbeats/s ({:.0} ns each)",
        busy.as_secs_f64(),
        rate / 1e6,
        1e9 / rate
    );
    if on_cpu_ns > 0 {
        let cpu_rate = pushed as f64 / (on_cpu_ns as f64 / 1e9);
        println!(
            "  on-CPU time {:.3} s = {:.2} M heartbeats/s per core ({:.0} ns each); wall/on-CPU = {:.2}",
            on_cpu_ns as f64 / 1e9,
            cpu_rate / 1e6,
            1e9 / cpu_rate,
            busy.as_secs_f64() / (on_cpu_ns as f64 / 1e9)
        );
    }
    println!(
        "finish (close {open_at_end} open sessions): {:.3} s; workload generation (untimed): {:.1} s",
        finishing.as_secs_f64(),
        generating.as_secs_f64()
    );
    println!("outcomes: merged {merged}, duplicate {duplicates}, late {late}");
    println!(
        "changes: {upserts} upserts, {deletes} deletes, {} finals; peak open sessions {most_open}, peak held heartbeats {most_held}",
        finals.len()
    );
    println!(
        "peak RSS (VmHWM, whole process incl. the workload generator): {:.1} MiB",
        peak_rss_kib.unwrap_or(0) as f64 / 1024.0
    );
    println!(
        "totals: sessions={} heartbeats={} watch_ms={} coverage_ms={} ads={} devices={}",
        streamed.sessions,
        streamed.heartbeats,
        streamed.watch_ms,
        streamed.coverage_ms,
        streamed.ads,
        streamed.devices
    );

    if let Ok(path) = std::env::var("HB_BENCH_SESSIONS_JSONL") {
        let mut out = BufWriter::new(File::create(&path).expect("create HB_BENCH_SESSIONS_JSONL"));
        for session in &finals {
            serde_json::to_writer(&mut out, session).expect("write session");
            out.write_all(b"\n").expect("write session");
        }
        out.flush().expect("flush sessions");
    }

    if env_or("HB_BENCH_VERIFY", 1) != 0 {
        // The same heartbeats again (the fleet is deterministic), as one batch.
        let events: Vec<Event> = bench_fleet(devices, seed)
            .heartbeats(total)
            .map(event_of)
            .collect();
        let started = Instant::now();
        let batch = sessionize_all(events, config.gap_ms);
        let elapsed = started.elapsed();
        println!(
            "sessionize_all (sort + batch): {:.2} M heartbeats/s",
            total as f64 / elapsed.as_secs_f64() / 1e6
        );
        finals.sort_by(|a, b| {
            (&a.user_id, &a.video_id, a.start_ms).cmp(&(&b.user_id, &b.video_id, b.start_ms))
        });
        let differing = finals.iter().zip(&batch).filter(|(a, b)| a != b).count()
            + finals.len().abs_diff(batch.len());
        if differing == 0 {
            println!("streamed sessions == sessionize_all over the same heartbeats");
        } else {
            let mut batch_totals = Totals::default();
            batch.iter().for_each(|session| batch_totals.add(session));
            println!(
                "streamed sessions differ from the batch in {differing} places (late {late}; idle flushes): batch totals {batch_totals:?}"
            );
        }
    }
}
