//! The dealer: draws heartbeats from the fleet in delivery order and hands
//! them to the lanes by user, tick by tick at `--rate`, never with an event
//! time ahead of the wall clock (or drawn up front with `--pregenerate`).

use super::codec::{Batch, BatchBuilder};
use super::report::{add, Counters};
use hb_common::time::{now_ms, timestamp_to_ms};
use hb_proto::v1::Heartbeat;
use hb_testkit::fleet::Fleet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Lane of a user: all of one user's heartbeats go through one call.
pub(super) fn lane_of(user_id: &str, lanes: usize) -> usize {
    // FNV-1a: cheap, stable across runs.
    let hash = user_id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    (hash % lanes as u64) as usize
}

/// Generator tick for `lanes` at `rate`: long enough that a lane gets a few
/// dozen heartbeats per tick (fewer, larger writes and acks), at most 50 ms.
pub(super) fn tick_for(lanes: usize, rate: f64) -> Duration {
    Duration::from_secs_f64((lanes as f64 * 32.0 / rate).clamp(0.005, 0.05))
}

/// Draws heartbeats from the fleet in delivery order and deals them to lanes
/// by user, keeping to `rate` and never past the wall clock.
pub(super) struct Dealer {
    fleet: Fleet,
    lanes: usize,
    rate: f64,
    /// Catching up after a stall never deals more than this at once.
    max_burst: u64,
    dealt: u64,
    /// Drawn but not dealt: its event time was still ahead of the cap.
    held: Option<Heartbeat>,
    counters: Arc<Counters>,
}

impl Dealer {
    pub(super) fn new(fleet: Fleet, lanes: usize, rate: f64, counters: Arc<Counters>) -> Dealer {
        Dealer {
            fleet,
            lanes,
            rate,
            max_burst: (rate * 0.1).max(1.0) as u64,
            dealt: 0,
            held: None,
            counters,
        }
    }

    /// Deals what is due `elapsed` into the run, with event times up to
    /// `cap_ms`; one builder per lane.
    fn deal(&mut self, elapsed: Duration, cap_ms: i64) -> Vec<BatchBuilder> {
        let due = (self.rate * elapsed.as_secs_f64()) as u64;
        self.dealt = self.dealt.max(due.saturating_sub(self.max_burst));
        let wanted = due.saturating_sub(self.dealt);
        let mut per_lane: Vec<BatchBuilder> =
            (0..self.lanes).map(|_| BatchBuilder::default()).collect();
        let mut made = 0;
        while made < wanted {
            let heartbeat = self
                .held
                .take()
                .unwrap_or_else(|| self.fleet.next_heartbeat());
            let event_ms = heartbeat.event_time.as_ref().map_or(0, timestamp_to_ms);
            if event_ms > cap_ms {
                // The fleet has caught up with the wall clock: never send from
                // the future; the rate drops to the fleet's real pace.
                self.held = Some(heartbeat);
                add(&self.counters.held_to_real_time, wanted - made);
                break;
            }
            per_lane[lane_of(&heartbeat.user_id, self.lanes)].push(&heartbeat);
            made += 1;
        }
        self.dealt = if self.held.is_some() {
            due
        } else {
            self.dealt + made
        };
        add(&self.counters.generated, made);
        per_lane
    }
}

/// Where the heartbeats of a run come from.
pub(super) enum Source {
    /// Drawn from the fleet as the run goes.
    Live(Box<Dealer>),
    /// Drawn before the run: per tick, the batch of each lane.
    Prepared(Vec<Vec<Option<Batch>>>),
}

/// Draws the whole run up front (`--pregenerate`), as the live dealer would
/// deal it tick by tick, assuming the run starts now.
pub(super) fn pregenerate(mut dealer: Dealer, duration: Duration, tick: Duration) -> Source {
    let start_ms = now_ms();
    let ticks = (duration.as_secs_f64() / tick.as_secs_f64()).ceil() as u32;
    let placeholder = Instant::now();
    let prepared = (0..ticks)
        .map(|k| {
            let elapsed = tick * k;
            dealer
                .deal(elapsed, start_ms + elapsed.as_millis() as i64)
                .into_iter()
                .map(|builder| builder.finish(placeholder))
                .collect()
        })
        .collect();
    Source::Prepared(prepared)
}

/// Hands heartbeats to the lanes tick by tick until `deadline`; returns when
/// done (dropping the lanes ends their input).
pub(super) fn generate(
    source: Source,
    lanes: Vec<mpsc::Sender<Batch>>,
    tick: Duration,
    deadline: Instant,
    stop: CancellationToken,
) {
    let started = Instant::now();
    let (mut dealer, mut prepared) = match source {
        Source::Live(dealer) => (Some(dealer), None),
        Source::Prepared(ticks) => (None, Some(ticks.into_iter())),
    };
    let mut k: u32 = 0;
    loop {
        let scheduled = started + tick * k;
        let now = Instant::now();
        if scheduled > now {
            std::thread::sleep(scheduled - now);
        }
        let now = Instant::now();
        if now >= deadline || stop.is_cancelled() {
            return;
        }
        let batches: Vec<Option<Batch>> = if let Some(dealer) = &mut dealer {
            // Live: whatever is due now; a late tick deals the backlog.
            k = k.max((now.duration_since(started).as_secs_f64() / tick.as_secs_f64()) as u32);
            dealer
                .deal(now.duration_since(started), now_ms())
                .into_iter()
                .map(|builder| builder.finish(now))
                .collect()
        } else if let Some(batches) = prepared.as_mut().and_then(Iterator::next) {
            // Prepared: latency counts from when the batch was due, so a
            // sender that falls behind shows up in it.
            batches
                .into_iter()
                .map(|batch| {
                    batch.map(|mut batch| {
                        batch.offered_at = scheduled;
                        batch
                    })
                })
                .collect()
        } else {
            return;
        };
        for (lane, batch) in lanes.iter().zip(batches) {
            if let Some(batch) = batch {
                if !hand_over(lane, batch, deadline, &stop) {
                    return;
                }
            }
        }
        k += 1;
    }
}

/// Gives `batch` to a lane, waiting while its queue is full (backpressure)
/// but never past `deadline`. False when the run is over.
fn hand_over(
    lane: &mpsc::Sender<Batch>,
    mut batch: Batch,
    deadline: Instant,
    stop: &CancellationToken,
) -> bool {
    loop {
        match lane.try_send(batch) {
            Ok(()) => return true,
            // A lane that gave up (fatal error) no longer takes traffic.
            Err(mpsc::error::TrySendError::Closed(_)) => return true,
            Err(mpsc::error::TrySendError::Full(back)) => {
                if Instant::now() >= deadline || stop.is_cancelled() {
                    return false;
                }
                batch = back;
                std::thread::sleep(Duration::from_micros(500));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simulate::report::get;
    use hb_testkit::fleet::FleetConfig;
    use prost::Message;

    #[test]
    fn a_user_always_maps_to_the_same_lane_and_users_spread_over_lanes() {
        let mut used = std::collections::HashSet::new();
        for user in 0..1_000 {
            let id = format!("user-{user:06}");
            let lane = lane_of(&id, 16);
            assert_eq!(lane, lane_of(&id, 16));
            used.insert(lane);
        }
        assert_eq!(used.len(), 16);
    }

    fn fleet(devices: usize, start_ms: i64) -> Fleet {
        Fleet::new(FleetConfig {
            devices,
            users: devices * 7 / 10,
            seed: 3,
            start_ms,
            ..FleetConfig::default()
        })
    }

    /// Runs the generator to the end and returns every batch each lane got.
    fn drain(source: Source, lanes: usize, tick: Duration, run: Duration) -> Vec<Vec<Batch>> {
        let (txs, mut rxs): (Vec<_>, Vec<_>) = (0..lanes).map(|_| mpsc::channel(100_000)).unzip();
        generate(
            source,
            txs,
            tick,
            Instant::now() + run,
            CancellationToken::new(),
        );
        rxs.iter_mut()
            .map(|rx| std::iter::from_fn(|| rx.try_recv().ok()).collect())
            .collect()
    }

    fn decoded(batch: &Batch) -> Vec<Heartbeat> {
        (0..batch.len())
            .map(|index| Heartbeat::decode(batch.message(index)).unwrap())
            .collect()
    }

    #[test]
    fn the_live_generator_offers_the_rate_by_user_lane_and_never_from_the_future() {
        let counters = Arc::new(Counters::default());
        // Far enough back that the clock never catches up in this test.
        let dealer = Dealer::new(
            fleet(200, now_ms() - 3_600_000),
            4,
            2_000.0,
            Arc::clone(&counters),
        );
        let lanes = drain(
            Source::Live(Box::new(dealer)),
            4,
            Duration::from_millis(10),
            Duration::from_millis(500),
        );
        let mut received = 0;
        for (lane, batches) in lanes.iter().enumerate() {
            for heartbeat in batches.iter().flat_map(decoded) {
                assert!(timestamp_to_ms(heartbeat.event_time.as_ref().unwrap()) <= now_ms());
                assert_eq!(lane_of(&heartbeat.user_id, 4), lane, "dealt by user");
                received += 1;
            }
        }
        assert_eq!(received, get(&counters.generated));
        assert!(
            (900..=1_100).contains(&received),
            "2000/s for 0.5 s gave {received}"
        );
    }

    #[test]
    fn a_fleet_whose_clock_reaches_now_is_held_to_real_time() {
        let counters = Arc::new(Counters::default());
        let dealer = Dealer::new(fleet(10, now_ms()), 1, 2_000.0, Arc::clone(&counters));
        let lanes = drain(
            Source::Live(Box::new(dealer)),
            1,
            Duration::from_millis(10),
            Duration::from_millis(300),
        );
        let received: usize = lanes[0].iter().map(Batch::len).sum();
        assert!(
            received < 20,
            "10 devices cannot send 600 heartbeats in 0.3 s of real time: {received}"
        );
        assert!(get(&counters.held_to_real_time) > 0);
    }

    #[test]
    fn a_pregenerated_run_offers_the_same_rate_from_batches_made_before_it() {
        let counters = Arc::new(Counters::default());
        let tick = Duration::from_millis(10);
        let dealer = Dealer::new(
            fleet(500, now_ms() - 3_600_000),
            3,
            4_000.0,
            Arc::clone(&counters),
        );
        let source = pregenerate(dealer, Duration::from_millis(500), tick);
        let made = get(&counters.generated);
        assert!(
            (1_900..=2_000).contains(&made),
            "4000/s for 0.5 s drawn up front: {made}"
        );
        let started = Instant::now();
        let lanes = drain(source, 3, tick, Duration::from_secs(5));
        let received: u64 = lanes.iter().flatten().map(|b| b.len() as u64).sum();
        assert_eq!(received, made, "everything drawn is handed over");
        assert!(
            started.elapsed() >= Duration::from_millis(450),
            "paced, not dumped at once"
        );
        let offered: Vec<Instant> = lanes[0].iter().map(|b| b.offered_at).collect();
        assert!(
            offered.windows(2).all(|w| w[0] < w[1]),
            "each batch is stamped with its own tick"
        );
    }
}
