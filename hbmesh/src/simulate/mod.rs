//! `hbmesh simulate`: the project's load generator (SPEC 10). A deterministic
//! fleet of players ([`hb_testkit::fleet::Fleet`]: pauses, seeks, ads,
//! device switches, late and resent heartbeats) streams to svc-ingest over
//! many concurrent calls, and the run ends with a summary: sent,
//! acknowledged, rejected, duplicates, throughput and ack latency.
//!
//! Shape of a run:
//! - one generator thread draws heartbeats from the fleet in delivery order,
//!   paced to `--rate` in ticks of 5 to 50 ms, and deals them to `--streams` lanes by
//!   user (so one user's heartbeats keep their order end to end);
//! - each lane is one long-lived call on one of `--connections` HTTP/2
//!   connections: a bidirectional `Stream` (acks as it goes) or, with
//!   `--mode push`, consecutive client-streaming `Push` calls;
//! - a lane keeps what is not yet acknowledged (at most `--window`); when a
//!   call fails it backs off (honouring `retry-after-ms`) and resends that on
//!   a new call, as a device would;
//! - ack latency is measured per heartbeat, from the moment the generator
//!   hands it to its lane to the ack covering its index, so time spent queued
//!   behind a slow server counts.
//!
//! Event times follow the wall clock: the fleet's clocks start when the run
//! does and no heartbeat is ever sent with an event time ahead of the wall
//! clock. To offer `--rate` with `--devices` in real time, the players beat
//! more (or less) often than every 5 s, their per-beat chances and spell
//! lengths in beats scaled alike so they behave the same per second
//! (`plan::fleet_config`). So consecutive runs against one mesh never send
//! heartbeats behind the event time it has already seen (which would be
//! late, beyond `HB_ALLOWED_LATENESS`), but for the fleet's few deliberately
//! late deliveries, seconds behind.

mod codec;
mod dealer;
mod lanes;
mod plan;
mod report;

pub use plan::{Mode, SimulateArgs};
pub use report::{LatencyMs, Summary};

use anyhow::{bail, Context};
use dealer::{generate, pregenerate, tick_for, Dealer, Source};
use hb_common::duration::format_duration;
use hb_common::time::now_ms;
use hb_testkit::fleet::Fleet;
use lanes::{connect, Lane, LANE_CAPACITY};
use plan::{fleet_config, plan, DRAIN_TIMEOUT};
use report::{get, latency_histogram, print_summary, Counters, Progress};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::metadata::MetadataValue;

/// `hbmesh simulate`: the run, then its summary on stdout (JSON with
/// `--json`); an error when nothing was accepted.
pub async fn run(args: SimulateArgs) -> anyhow::Result<()> {
    let summary = simulate(&args).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print_summary(&summary);
    }
    if summary.accepted == 0 {
        let why = summary
            .last_error
            .as_deref()
            .or(summary.rejection_reasons.keys().next().map(String::as_str))
            .unwrap_or("no answer");
        bail!(
            "nothing was acknowledged as accepted by {} ({why})",
            summary.target
        );
    }
    Ok(())
}

/// Runs the fleet against the target and returns the summary.
pub async fn simulate(args: &SimulateArgs) -> anyhow::Result<Summary> {
    let plan = plan(args, now_ms())?;
    let authorization = plan
        .authorization
        .as_deref()
        .map(MetadataValue::try_from)
        .transpose()
        .context("the token is not valid header text")?;
    let channels = connect(&plan, args).await?;
    if !args.json {
        eprintln!(
            "simulate: {} devices ({} users), {} {} lanes on {} connections to {}, {} heartbeats/s for {}, seed {}, event clocks from {}",
            args.devices,
            plan.users,
            plan.streams,
            match args.mode {
                Mode::Stream => "stream",
                Mode::Push => "push",
            },
            plan.connections,
            plan.endpoint,
            args.rate,
            format_duration(args.duration),
            plan.seed,
            hb_common::time::ms_to_rfc3339(plan.start_ms),
        );
    }
    let config = fleet_config(args, &plan);
    let counters = Arc::new(Counters::default());
    let tick = tick_for(plan.streams, args.rate);
    let source = {
        let (counters, streams, rate) = (Arc::clone(&counters), plan.streams, args.rate);
        let (pregenerate_run, duration) = (args.pregenerate, args.duration);
        tokio::task::spawn_blocking(move || {
            let dealer = Dealer::new(Fleet::new(config), streams, rate, counters);
            if pregenerate_run {
                pregenerate(dealer, duration, tick)
            } else {
                Source::Live(Box::new(dealer))
            }
        })
        .await?
    };
    let abort = CancellationToken::new();
    let fatal = Arc::new(Mutex::new(None));
    let mut lane_txs = Vec::with_capacity(plan.streams);
    let mut lanes = Vec::with_capacity(plan.streams);
    for index in 0..plan.streams {
        let (tx, rx) = mpsc::channel(LANE_CAPACITY);
        lane_txs.push(tx);
        let lane = Lane::new(
            channels[index % channels.len()].clone(),
            authorization.clone(),
            rx,
            args,
            Arc::clone(&counters),
            abort.clone(),
            Arc::clone(&fatal),
        );
        lanes.push(tokio::spawn(lane.run(args.mode)));
    }

    let started = Instant::now();
    let deadline = started + args.duration;
    let generator = {
        let stop = abort.clone();
        std::thread::Builder::new()
            .name("hb-simulate-fleet".into())
            .spawn(move || generate(source, lane_txs, tick, deadline, stop))
            .context("starting the fleet thread")?
    };
    let interrupt = {
        let abort = abort.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                abort.cancel();
            }
        })
    };
    let progress = Progress::start(args, Arc::clone(&counters), started);

    tokio::select! {
        () = tokio::time::sleep_until(deadline.into()) => {}
        () = abort.cancelled() => {}
    }
    let elapsed = started.elapsed().as_secs_f64();
    let sent_by_deadline = get(&counters.sent);
    let acked_by_deadline = get(&counters.acknowledged);

    // Drain: lanes send what is left and wait for its acks, for a while.
    let drained = async {
        let mut reports = Vec::with_capacity(lanes.len());
        for lane in lanes {
            reports.push(lane.await);
        }
        reports
    };
    let reports = match tokio::time::timeout(DRAIN_TIMEOUT, drained).await {
        Ok(reports) => reports,
        Err(_) => {
            abort.cancel();
            bail!("lanes did not stop within {DRAIN_TIMEOUT:?} of the end of the run");
        }
    };
    abort.cancel();
    interrupt.abort();
    progress.finish();
    let _ = tokio::task::spawn_blocking(move || generator.join()).await;

    let mut latency = latency_histogram();
    let mut errors = BTreeMap::new();
    let mut reasons = BTreeMap::new();
    let mut last_error = fatal.lock().expect("fatal lock").clone();
    let mut unacknowledged = 0;
    for report in reports {
        let report = report.context("a lane panicked")?;
        latency.add(&report.latency_us).expect("same bounds");
        for (code, n) in report.errors {
            *errors.entry(code).or_default() += n;
        }
        for (reason, n) in report.reasons {
            *reasons.entry(reason).or_default() += n;
        }
        if last_error.is_none() {
            last_error = report.last_error;
        }
        unacknowledged += report.unacknowledged;
    }
    let ms = |q: f64| latency.value_at_quantile(q) as f64 / 1_000.0;
    Ok(Summary {
        target: plan.endpoint,
        mode: args.mode,
        devices: args.devices,
        users: plan.users,
        streams: plan.streams,
        connections: plan.connections,
        seed: plan.seed,
        duration_s: elapsed,
        offered_rate: args.rate,
        generated: get(&counters.generated),
        sent: get(&counters.sent),
        resent: get(&counters.resent),
        acknowledged: get(&counters.acknowledged),
        accepted: get(&counters.accepted),
        duplicates: get(&counters.duplicates),
        rejected: get(&counters.rejected),
        unacknowledged,
        held_to_real_time: get(&counters.held_to_real_time),
        call_errors: get(&counters.call_errors),
        errors,
        rejection_reasons: reasons,
        last_error,
        sent_per_s: sent_by_deadline as f64 / elapsed,
        throughput_acked_per_s: acked_by_deadline as f64 / elapsed,
        ack_latency_ms: LatencyMs {
            p50: ms(0.5),
            p90: ms(0.9),
            p99: ms(0.99),
            p999: ms(0.999),
            max: latency.max() as f64 / 1_000.0,
        },
        event_clock_start_ms: plan.start_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::plan::tests::args;
    use super::*;
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    /// svc-ingest in process, with a publisher that counts, and the address
    /// it serves on.
    async fn ingest(
        secret: &str,
    ) -> (
        std::net::SocketAddr,
        svc_ingest::publisher::counting::CountingPublisher,
        CancellationToken,
        tokio::task::JoinHandle<anyhow::Result<()>>,
    ) {
        hb_common::telemetry::init_for_tests();
        let publisher = svc_ingest::publisher::counting::CountingPublisher::default();
        let mut config = svc_ingest::config::IngestConfig::defaults();
        config.auth.secret = Some(hb_common::settings::Secret::new(secret));
        let listeners = svc_ingest::IngestListeners {
            grpc: tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
            metrics: tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        };
        let addr = listeners.grpc.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(svc_ingest::run(
            config,
            svc_ingest::PublishTarget::Custom(Arc::new(publisher.clone())),
            listeners,
            shutdown.clone(),
        ));
        (addr, publisher, shutdown, server)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_run_against_svc_ingest_gets_everything_it_sent_acknowledged_in_every_mode() {
        let (addr, publisher, shutdown, server) = ingest("s").await;
        let mut accepted_before = 0;
        for (mode, pregenerate) in [
            (Mode::Stream, false),
            (Mode::Push, false),
            (Mode::Stream, true),
        ] {
            // 1000 devices at 2000/s: 2 per device per second, within the default device limit.
            let mut a = args(1_000, 2_000.0, "1s");
            a.target = addr.to_string();
            a.auth.secret = Some(hb_common::settings::Secret::new("s"));
            a.mode = mode;
            a.pregenerate = pregenerate;
            a.streams = Some(6);
            a.connections = 2;
            let summary = simulate(&a).await.unwrap();
            assert!(summary.sent >= 1_500, "{mode:?}: {summary:?}");
            assert_eq!(summary.call_errors, 0, "{mode:?}: {summary:?}");
            assert_eq!(summary.unacknowledged, 0, "{mode:?}: {summary:?}");
            assert_eq!(summary.acknowledged, summary.sent, "{mode:?}: {summary:?}");
            assert_eq!(summary.rejected, 0, "{mode:?}: {summary:?}");
            assert_eq!(
                summary.accepted + summary.duplicates,
                summary.acknowledged,
                "{mode:?}: {summary:?}"
            );
            let published = publisher.heartbeats.load(Ordering::Relaxed);
            assert_eq!(summary.accepted, published - accepted_before, "{mode:?}");
            accepted_before = published;
            assert!(
                summary.ack_latency_ms.p50 > 0.0
                    && summary.ack_latency_ms.p99 >= summary.ack_latency_ms.p50
            );
        }
        shutdown.cancel();
        server.await.unwrap().unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refused_token_ends_the_run_early_and_run_fails() {
        let (addr, publisher, shutdown, server) = ingest("s").await;
        let mut a = args(100, 500.0, "30s");
        a.target = addr.to_string();
        a.token = Some("not-a-token".into());
        let started = Instant::now();
        let summary = simulate(&a).await.unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "stops at the first refusal"
        );
        assert_eq!(summary.accepted, 0);
        assert!(
            summary
                .last_error
                .as_deref()
                .unwrap_or("")
                .starts_with("Unauthenticated"),
            "{summary:?}"
        );
        a.duration = Duration::from_millis(200);
        let err = run(a).await.unwrap_err();
        assert!(
            err.to_string().contains("nothing was acknowledged"),
            "{err}"
        );
        assert_eq!(publisher.heartbeats.load(Ordering::Relaxed), 0);
        shutdown.cancel();
        server.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn an_unreachable_target_is_a_clear_error() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let mut a = args(10, 10.0, "1s");
        a.target = closed.to_string();
        let err = simulate(&a).await.unwrap_err();
        assert!(err.to_string().contains("cannot reach svc-ingest"), "{err}");
    }
}
