//! What a run reports: the run-wide counters, each lane's latency histogram
//! and tallies, the live progress on stderr and the closing summary.

use super::plan::{Mode, SimulateArgs};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Run-wide counters, read by the progress bar and the summary.
#[derive(Default)]
pub(super) struct Counters {
    pub(super) generated: AtomicU64,
    pub(super) sent: AtomicU64,
    pub(super) resent: AtomicU64,
    pub(super) acknowledged: AtomicU64,
    pub(super) accepted: AtomicU64,
    pub(super) duplicates: AtomicU64,
    pub(super) rejected: AtomicU64,
    pub(super) call_errors: AtomicU64,
    /// Heartbeats held back because their event time was still ahead of now.
    pub(super) held_to_real_time: AtomicU64,
}

pub(super) fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

pub(super) fn get(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

/// What a lane saw, merged into the summary.
pub(super) struct LaneReport {
    pub(super) latency_us: Histogram<u64>,
    pub(super) reasons: BTreeMap<String, u64>,
    pub(super) errors: BTreeMap<String, u64>,
    pub(super) last_error: Option<String>,
    pub(super) unacknowledged: u64,
}

impl LaneReport {
    pub(super) fn new() -> LaneReport {
        LaneReport {
            latency_us: latency_histogram(),
            reasons: BTreeMap::new(),
            errors: BTreeMap::new(),
            last_error: None,
            unacknowledged: 0,
        }
    }
}

/// Ack latencies in microseconds, from 1 µs to an hour, 3 significant digits.
pub(super) fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("histogram bounds")
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Serialize)]
pub struct LatencyMs {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

/// The closing summary (also the `--json` document).
#[derive(Debug, Serialize)]
pub struct Summary {
    pub target: String,
    pub mode: Mode,
    pub devices: usize,
    pub users: usize,
    pub streams: usize,
    pub connections: usize,
    pub seed: u64,
    pub duration_s: f64,
    pub offered_rate: f64,
    /// Heartbeats the fleet produced (offered to the lanes).
    pub generated: u64,
    /// Heartbeats put on the wire for the first time.
    pub sent: u64,
    /// Heartbeats sent again after a failed call.
    pub resent: u64,
    /// Heartbeats covered by an ack (accepted, duplicate or rejected).
    pub acknowledged: u64,
    pub accepted: u64,
    pub duplicates: u64,
    pub rejected: u64,
    /// Sent but never acknowledged (the run ended or the calls failed).
    pub unacknowledged: u64,
    /// Heartbeats held back because the fleet's clock had reached now.
    pub held_to_real_time: u64,
    pub call_errors: u64,
    pub errors: BTreeMap<String, u64>,
    pub rejection_reasons: BTreeMap<String, u64>,
    pub last_error: Option<String>,
    /// Sent per second over `--duration`.
    pub sent_per_s: f64,
    /// Acknowledged per second over `--duration` (what the server sustained).
    pub throughput_acked_per_s: f64,
    /// From the moment a heartbeat is handed to its lane to its ack.
    pub ack_latency_ms: LatencyMs,
    /// Event time of the fleet's first heartbeat (epoch ms).
    pub event_clock_start_ms: i64,
}

/// How often the plain progress line is printed when stderr is no terminal.
const PLAIN_PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// One plain progress line (logs, CI, `up --demo` under a supervisor).
fn plain_progress_line(
    elapsed: Duration,
    sent: u64,
    sent_per_s: f64,
    acked: u64,
    acked_per_s: f64,
    rejected: u64,
    errors: u64,
) -> String {
    format!(
        "simulate: {:>4.0}s  sent {sent} ({sent_per_s:.0}/s)  acked {acked} ({acked_per_s:.0}/s)  \
         rejected {rejected}  call errors {errors}",
        elapsed.as_secs_f64()
    )
}

/// The progress bar on a terminal; without one, a plain line on stderr every
/// [`PLAIN_PROGRESS_EVERY`]; nothing with `--json`.
pub(super) struct Progress {
    bar: ProgressBar,
    ticker: tokio::task::JoinHandle<()>,
}

impl Progress {
    pub(super) fn start(
        args: &SimulateArgs,
        counters: Arc<Counters>,
        started: Instant,
    ) -> Progress {
        let total_ms = args.duration.as_millis() as u64;
        let plain = !args.json && !std::io::stderr().is_terminal();
        let bar = if args.json || plain {
            ProgressBar::hidden()
        } else {
            ProgressBar::with_draw_target(Some(total_ms), ProgressDrawTarget::stderr_with_hz(4))
                .with_style(
                    ProgressStyle::with_template("{spinner} {elapsed:>4} [{bar:30}] {msg}")
                        .expect("valid template")
                        .progress_chars("=> "),
                )
        };
        let ticker = {
            let bar = bar.clone();
            tokio::spawn(async move {
                let mut last = (Instant::now(), 0u64, 0u64);
                let mut last_line = (Instant::now(), 0u64, 0u64);
                let mut interval = tokio::time::interval(Duration::from_millis(250));
                loop {
                    interval.tick().await;
                    let now = Instant::now();
                    let (sent, acked) = (get(&counters.sent), get(&counters.acknowledged));
                    if plain && now.duration_since(last_line.0) >= PLAIN_PROGRESS_EVERY {
                        let dt = now.duration_since(last_line.0).as_secs_f64();
                        eprintln!(
                            "{}",
                            plain_progress_line(
                                now.duration_since(started),
                                sent,
                                (sent - last_line.1) as f64 / dt,
                                acked,
                                (acked - last_line.2) as f64 / dt,
                                get(&counters.rejected),
                                get(&counters.call_errors),
                            )
                        );
                        last_line = (now, sent, acked);
                    }
                    let dt = now.duration_since(last.0).as_secs_f64().max(1e-3);
                    bar.set_position(
                        (now.duration_since(started).as_millis() as u64).min(total_ms),
                    );
                    bar.set_message(format!(
                        "sent {sent} ({:.0}/s)  acked {acked} ({:.0}/s)  rejected {}  errors {}",
                        (sent - last.1) as f64 / dt,
                        (acked - last.2) as f64 / dt,
                        get(&counters.rejected),
                        get(&counters.call_errors),
                    ));
                    last = (now, sent, acked);
                }
            })
        };
        Progress { bar, ticker }
    }

    pub(super) fn finish(self) {
        self.ticker.abort();
        self.bar.finish_and_clear();
    }
}

pub(super) fn print_summary(s: &Summary) {
    println!(
        "simulated {} devices for {:.1}s against {} ({:?} mode, {} lanes, {} connections, seed {})",
        s.devices, s.duration_s, s.target, s.mode, s.streams, s.connections, s.seed
    );
    println!("  offered        {:>12.0} heartbeats/s", s.offered_rate);
    println!("  sent           {:>12}   ({:.0}/s)", s.sent, s.sent_per_s);
    println!("  acknowledged   {:>12}", s.acknowledged);
    println!("  accepted       {:>12}", s.accepted);
    println!("  duplicates     {:>12}", s.duplicates);
    println!("  rejected       {:>12}", s.rejected);
    for (reason, n) in &s.rejection_reasons {
        println!("    {reason:<24} {n}");
    }
    if s.unacknowledged > 0 || s.resent > 0 {
        println!(
            "  unacknowledged {:>12}   (resent after failures: {})",
            s.unacknowledged, s.resent
        );
    }
    if s.held_to_real_time > 0 {
        // Players beat at the pace the rate needs if the estimated share of
        // them is mid-video; more devices only lengthen that pace in step,
        // so a higher rate is what sends more.
        println!(
            "  held back      {:>12}   (the fleet's clock reached now: fewer players were mid-video than the rate was paced for; raise --rate to send more)",
            s.held_to_real_time
        );
    }
    if s.call_errors > 0 {
        let errors: Vec<String> = s
            .errors
            .iter()
            .map(|(code, n)| format!("{code} {n}"))
            .collect();
        println!(
            "  call errors    {:>12}   ({})",
            s.call_errors,
            errors.join(", ")
        );
        if let Some(last) = &s.last_error {
            println!("    last: {last}");
        }
    }
    println!(
        "  throughput     {:>12.0} heartbeats/s acknowledged",
        s.throughput_acked_per_s
    );
    let l = &s.ack_latency_ms;
    println!(
        "  ack latency    p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  max {:.2} ms",
        l.p50, l.p90, l.p99, l.p999, l.max
    );
}
