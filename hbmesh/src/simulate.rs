//! `hbmesh simulate`: the project's load generator (SPEC 10). A deterministic
//! fleet of players ([`hb_common::workload::Fleet`]: pauses, seeks, ads,
//! device switches, late and resent heartbeats) streams to svc-ingest over
//! many concurrent calls, and the run ends with a summary: sent,
//! acknowledged, rejected, duplicates, throughput and ack latency.
//!
//! Shape of a run:
//! - one generator thread draws heartbeats from the fleet in delivery order,
//!   paced to `--rate` in 5 ms ticks, and deals them to `--streams` lanes by
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
//! ([`fleet_config`]). So consecutive runs against one mesh never send
//! heartbeats behind the event time it has already seen (which would be
//! late, beyond `HB_ALLOWED_LATENESS`), but for the fleet's few deliberately
//! late deliveries, seconds behind.

use anyhow::{bail, Context};
use futures::StreamExt;
use hb_common::auth::{Role, TokenKey};
use hb_common::duration::{format_duration, parse_duration};
use hb_common::time::{now_ms, timestamp_to_ms};
use hb_common::workload::{Fleet, FleetConfig};
use hb_proto::v1::{Heartbeat, PushAck, PushSummary};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use prost::bytes::{BufMut, Bytes, BytesMut};
use prost::Message;
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::io::IsTerminal;
use std::marker::PhantomData;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Request, Status};

/// Share of the fleet watching at any time (the fleet's steady state, which
/// it also starts in), to choose how often players beat to offer the rate.
const ACTIVE_SHARE_ESTIMATE: f64 = 0.7;
/// Players never beat more often than this (100 heartbeats/s per device).
const MIN_INTERVAL_MS: i64 = 10;
/// Nor less often than this.
const MAX_INTERVAL_MS: i64 = 60_000;
/// Batches waiting per lane before the generator waits too.
const LANE_CAPACITY: usize = 256;
/// After `--duration`, how long lanes may take to get their last acks.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(15);

/// How lanes talk to svc-ingest.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Bidirectional `Stream` calls: acks flow back as heartbeats go.
    Stream,
    /// Client-streaming `Push` calls of up to `--push-batch` heartbeats.
    Push,
}

#[derive(clap::Args, Debug, Clone)]
pub struct SimulateArgs {
    /// Simulated players.
    #[arg(long, default_value_t = 1_000)]
    pub devices: usize,

    /// Heartbeats per second offered across the whole fleet.
    #[arg(long, default_value_t = 200.0)]
    pub rate: f64,

    /// How long to offer traffic, e.g. `30s`, `5m`.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub duration: Duration,

    /// svc-ingest address: `http://host:port`, `https://host:port` or `host:port`.
    #[arg(
        long,
        env = "HB_SIMULATE_TARGET",
        default_value = "http://127.0.0.1:50051"
    )]
    pub target: String,

    /// Bearer token to send (a `gateway` token: lanes carry many devices).
    #[arg(long, env = "HB_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// Without `--token`, a gateway token is minted with this secret.
    #[arg(long, env = "HB_AUTH_SECRET", hide_env_values = true)]
    pub auth_secret: Option<String>,

    /// `stream` (bidirectional, acks as it goes) or `push` (client-streaming batches).
    #[arg(long, value_enum, default_value = "stream")]
    pub mode: Mode,

    /// HTTP/2 connections the lanes share.
    #[arg(long, default_value_t = 8)]
    pub connections: usize,

    /// Concurrent calls (lanes); each carries the devices of a group of users.
    /// Default: one per device, at most 64.
    #[arg(long)]
    pub streams: Option<usize>,

    /// Unacknowledged heartbeats a lane may have before it stops sending.
    #[arg(long, default_value_t = 16_384)]
    pub window: usize,

    /// Largest `Push` call in heartbeats (`--mode push`).
    #[arg(long, default_value_t = 2_000)]
    pub push_batch: usize,

    /// Viewers in the fleet (default: 70% of the devices; the rest are second screens).
    #[arg(long)]
    pub users: Option<usize>,

    /// Seed of the fleet (default: random, printed so a run can be repeated).
    #[arg(long)]
    pub seed: Option<u64>,

    /// PEM CA certificate for an `https://` target.
    #[arg(long)]
    pub ca_cert: Option<PathBuf>,

    /// Draw the whole run from the fleet before sending (memory: about 150
    /// bytes per heartbeat), so generating it does not compete for CPU with a
    /// server under test on the same machine. Latency then counts from when
    /// each batch was due.
    #[arg(long)]
    pub pregenerate: bool,

    /// Print the summary as JSON on stdout (and no progress bar).
    #[arg(long)]
    pub json: bool,
}

/// Everything decided before traffic starts.
#[derive(Debug)]
struct Plan {
    endpoint: String,
    streams: usize,
    connections: usize,
    seed: u64,
    users: usize,
    start_ms: i64,
    /// Heartbeat interval of the players, so the fleet offers the rate.
    interval_ms: i64,
    authorization: Option<String>,
}

fn plan(args: &SimulateArgs, now_ms: i64) -> anyhow::Result<Plan> {
    anyhow::ensure!(args.devices > 0, "--devices must be at least 1");
    anyhow::ensure!(
        args.rate.is_finite() && args.rate > 0.0,
        "--rate must be a positive number of heartbeats per second"
    );
    anyhow::ensure!(!args.duration.is_zero(), "--duration must be longer than 0");
    anyhow::ensure!(args.connections > 0, "--connections must be at least 1");
    anyhow::ensure!(
        args.window > 0 && args.push_batch > 0,
        "--window and --push-batch must be at least 1"
    );
    let streams = args.streams.unwrap_or(args.devices.min(64));
    anyhow::ensure!(streams > 0, "--streams must be at least 1");
    let users = args
        .users
        .unwrap_or(args.devices * 7 / 10)
        .clamp(1, args.devices);
    // The watching share of the fleet beats `rate` times a second.
    let interval = args.devices as f64 * ACTIVE_SHARE_ESTIMATE * 1_000.0 / args.rate;
    if interval < MIN_INTERVAL_MS as f64 {
        bail!(
            "{} devices at {} heartbeats/s would each beat every {:.1} ms (at most one per \
             {MIN_INTERVAL_MS} ms): use more devices or a lower rate",
            args.devices,
            args.rate,
            interval,
        );
    }
    let interval_ms = (interval.round() as i64).min(MAX_INTERVAL_MS);
    // The clocks start now and follow the wall clock.
    let start_ms = now_ms;
    let authorization = match (&args.token, &args.auth_secret) {
        (Some(token), _) if !token.is_empty() => {
            let token = token.strip_prefix("Bearer ").unwrap_or(token);
            Some(format!("Bearer {token}"))
        }
        (_, Some(secret)) if !secret.is_empty() => {
            let ttl_s = (args.duration + DRAIN_TIMEOUT).as_secs() as i64 + 3_600;
            let token = TokenKey::new(secret).mint(
                "hbmesh-simulate",
                &Role::Gateway,
                now_ms / 1_000 + ttl_s,
            );
            Some(format!("Bearer {token}"))
        }
        _ => None,
    };
    Ok(Plan {
        endpoint: endpoint_uri(&args.target)?,
        streams,
        connections: args.connections.min(streams),
        seed: args.seed.unwrap_or_else(rand::random),
        users,
        start_ms,
        interval_ms,
        authorization,
    })
}

/// The fleet of a run: the default players, beating every `plan.interval_ms`
/// instead of every 5 s, with what is counted in beats scaled so that per
/// second of (real) time they pause, seek, abandon, switch devices and see
/// ads as often and as long as the default fleet does.
fn fleet_config(args: &SimulateArgs, plan: &Plan) -> FleetConfig {
    let base = FleetConfig::default();
    // Beats per default beat.
    let k = base.interval_ms as f64 / plan.interval_ms as f64;
    let per_beat = |p: f64| (p / k).min(1.0);
    let beats = |(lo, hi): (u32, u32)| {
        let scale = |n: u32| ((f64::from(n) * k).round() as u32).max(1);
        (scale(lo), scale(hi).max(scale(lo)))
    };
    FleetConfig {
        devices: args.devices,
        users: plan.users,
        seed: plan.seed,
        start_ms: plan.start_ms,
        interval_ms: plan.interval_ms,
        interval_jitter_ms: (base.interval_jitter_ms as f64 / k).round() as i64,
        pause_per_beat: per_beat(base.pause_per_beat),
        pause_beats: beats(base.pause_beats),
        buffering_per_beat: per_beat(base.buffering_per_beat),
        buffering_beats: beats(base.buffering_beats),
        seek_per_beat: per_beat(base.seek_per_beat),
        abandon_per_beat: per_beat(base.abandon_per_beat),
        device_switch_per_beat: per_beat(base.device_switch_per_beat),
        ad_beats: beats(base.ad_beats),
        ..base
    }
}

/// `host:port` becomes `http://host:port`; URIs pass through.
fn endpoint_uri(target: &str) -> anyhow::Result<String> {
    let uri = if target.contains("://") {
        target.to_string()
    } else {
        format!("http://{target}")
    };
    let parsed: tonic::codegen::http::Uri = uri
        .parse()
        .with_context(|| format!("invalid --target {target:?}"))?;
    anyhow::ensure!(
        matches!(parsed.scheme_str(), Some("http" | "https")) && parsed.authority().is_some(),
        "invalid --target {target:?}: expected http://host:port, https://host:port or host:port"
    );
    Ok(uri)
}

/// Lane of a user: all of one user's heartbeats go through one call.
fn lane_of(user_id: &str, lanes: usize) -> usize {
    // FNV-1a: cheap, stable across runs.
    let hash = user_id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    (hash % lanes as u64) as usize
}

/// Heartbeats handed to a lane at one instant, encoded back to back by the
/// generator thread (so lanes move bytes, not structs, and resending after a
/// failure costs no re-encoding).
#[derive(Clone)]
struct Batch {
    offered_at: Instant,
    bytes: Bytes,
    /// End offset of each message in `bytes`.
    ends: Arc<[u32]>,
}

impl Batch {
    fn len(&self) -> usize {
        self.ends.len()
    }

    /// The encoded heartbeat at `index`.
    fn message(&self, index: usize) -> Bytes {
        let start = if index == 0 {
            0
        } else {
            self.ends[index - 1] as usize
        };
        self.bytes.slice(start..self.ends[index] as usize)
    }

    /// Messages `from..to`.
    fn messages(self, from: usize, to: usize) -> impl Iterator<Item = Bytes> {
        (from..to).map(move |index| self.message(index))
    }
}

/// A lane's heartbeats being encoded during one tick.
#[derive(Default)]
struct BatchBuilder {
    bytes: BytesMut,
    ends: Vec<u32>,
}

impl BatchBuilder {
    fn push(&mut self, heartbeat: &Heartbeat) {
        heartbeat
            .encode(&mut self.bytes)
            .expect("BytesMut grows as needed");
        self.ends.push(self.bytes.len() as u32);
    }

    fn finish(self, offered_at: Instant) -> Option<Batch> {
        (!self.ends.is_empty()).then(|| Batch {
            offered_at,
            bytes: self.bytes.freeze(),
            ends: self.ends.into(),
        })
    }
}

/// Run-wide counters, read by the progress bar and the summary.
#[derive(Default)]
struct Counters {
    generated: AtomicU64,
    sent: AtomicU64,
    resent: AtomicU64,
    acknowledged: AtomicU64,
    accepted: AtomicU64,
    duplicates: AtomicU64,
    rejected: AtomicU64,
    call_errors: AtomicU64,
    /// Heartbeats held back because their event time was still ahead of now.
    held_to_real_time: AtomicU64,
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

fn get(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

/// Generator tick for `lanes` at `rate`: long enough that a lane gets a few
/// dozen heartbeats per tick (fewer, larger writes and acks), at most 50 ms.
fn tick_for(lanes: usize, rate: f64) -> Duration {
    Duration::from_secs_f64((lanes as f64 * 32.0 / rate).clamp(0.005, 0.05))
}

/// Draws heartbeats from the fleet in delivery order and deals them to lanes
/// by user, keeping to `rate` and never past the wall clock.
struct Dealer {
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
    fn new(fleet: Fleet, lanes: usize, rate: f64, counters: Arc<Counters>) -> Dealer {
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
enum Source {
    /// Drawn from the fleet as the run goes.
    Live(Box<Dealer>),
    /// Drawn before the run: per tick, the batch of each lane.
    Prepared(Vec<Vec<Option<Batch>>>),
}

/// Draws the whole run up front (`--pregenerate`), as the live dealer would
/// deal it tick by tick, assuming the run starts now.
fn pregenerate(mut dealer: Dealer, duration: Duration, tick: Duration) -> Source {
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
fn generate(
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

/// Sends pre-encoded heartbeats as they are and decodes the answer type `D`.
struct EncodedCodec<D>(PhantomData<D>);

impl<D> Default for EncodedCodec<D> {
    fn default() -> Self {
        EncodedCodec(PhantomData)
    }
}

struct BytesEncoder;
struct AnswerDecoder<D>(PhantomData<D>);

impl<D: Message + Default + Send + 'static> Codec for EncodedCodec<D> {
    type Encode = Bytes;
    type Decode = D;
    type Encoder = BytesEncoder;
    type Decoder = AnswerDecoder<D>;

    fn encoder(&mut self) -> BytesEncoder {
        BytesEncoder
    }

    fn decoder(&mut self) -> AnswerDecoder<D> {
        AnswerDecoder(PhantomData)
    }
}

impl Encoder for BytesEncoder {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl<D: Message + Default> Decoder for AnswerDecoder<D> {
    type Item = D;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<D>, Status> {
        D::decode(src)
            .map(Some)
            .map_err(|e| Status::internal(e.to_string()))
    }
}

/// What a lane saw, merged into the summary.
struct LaneReport {
    latency_us: Histogram<u64>,
    reasons: BTreeMap<String, u64>,
    errors: BTreeMap<String, u64>,
    last_error: Option<String>,
    unacknowledged: u64,
}

/// One lane: a sequence of calls carrying its devices' heartbeats.
struct Lane {
    channel: Channel,
    authorization: Option<MetadataValue<tonic::metadata::Ascii>>,
    input: mpsc::Receiver<Batch>,
    input_open: bool,
    /// Sent, not yet acknowledged: batches and how many of each are acked.
    unacked: VecDeque<(Batch, usize)>,
    unacked_len: usize,
    window: usize,
    push_batch: usize,
    counters: Arc<Counters>,
    /// Ends the lane at once (drain timeout, fatal error elsewhere, Ctrl-C).
    abort: CancellationToken,
    /// The first error no retry can fix; it ends the whole run.
    fatal: Arc<Mutex<Option<String>>>,
    report: LaneReport,
    backoff: Duration,
}

/// Running totals of the current call, to turn cumulative acks into deltas.
#[derive(Default)]
struct CallTotals {
    accepted: u64,
    duplicates: u64,
    rejected: u64,
}

enum CallEnd {
    /// Input exhausted and everything acknowledged.
    Done,
    /// The call failed or ended early; retry on a new one.
    Retry,
    /// Stop the lane.
    Stop,
}

impl Lane {
    fn request<S>(&self, stream: S) -> Request<S> {
        let mut request = Request::new(stream);
        if let Some(value) = &self.authorization {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        request
    }

    /// The oldest `count` unacknowledged heartbeats are acknowledged at `at`.
    fn record_acked(&mut self, mut count: usize, at: Instant) {
        add(&self.counters.acknowledged, count as u64);
        self.unacked_len -= count;
        while count > 0 {
            let Some((batch, acked)) = self.unacked.front_mut() else {
                break;
            };
            let covered = count.min(batch.len() - *acked);
            let micros = at.duration_since(batch.offered_at).as_micros() as u64;
            self.report
                .latency_us
                .saturating_record_n(micros.max(1), covered as u64);
            *acked += covered;
            count -= covered;
            if *acked == batch.len() {
                self.unacked.pop_front();
            }
        }
    }

    fn record_rejections(&mut self, rejections: &[hb_proto::v1::Rejection]) {
        for rejection in rejections {
            let code = rejection.reason.split(':').next().unwrap_or("unknown");
            *self.report.reasons.entry(code.to_string()).or_default() += 1;
        }
    }

    /// Takes a batch from the generator into `unacked`; `None` ends the input.
    fn take_batch(&mut self, batch: Option<Batch>) -> Option<Batch> {
        let Some(batch) = batch else {
            self.input_open = false;
            return None;
        };
        add(&self.counters.sent, batch.len() as u64);
        self.unacked_len += batch.len();
        self.unacked.push_back((batch.clone(), 0));
        Some(batch)
    }

    /// Every unacknowledged heartbeat, oldest first, up to `limit`.
    fn unacked_messages(&self, limit: usize) -> Vec<Bytes> {
        let mut messages = Vec::with_capacity(limit.min(self.unacked_len));
        for (batch, acked) in &self.unacked {
            let to = batch.len().min(acked + limit - messages.len());
            messages.extend(batch.clone().messages(*acked, to));
            if messages.len() == limit {
                break;
            }
        }
        messages
    }

    /// Decides what a failed call means for the lane, and waits before a retry.
    async fn failed(&mut self, status: &Status) -> CallEnd {
        add(&self.counters.call_errors, 1);
        *self
            .report
            .errors
            .entry(format!("{:?}", status.code()))
            .or_default() += 1;
        let text = format!("{:?}: {}", status.code(), status.message());
        self.report.last_error = Some(text.clone());
        let fatal = matches!(
            status.code(),
            Code::Unauthenticated
                | Code::PermissionDenied
                | Code::Unimplemented
                | Code::InvalidArgument
        );
        if fatal {
            self.fatal.lock().expect("fatal lock").get_or_insert(text);
            self.abort.cancel();
            return CallEnd::Stop;
        }
        let advised = status
            .metadata()
            .get("retry-after-ms")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .map(Duration::from_millis);
        let wait = advised.unwrap_or(self.backoff);
        self.backoff = (self.backoff * 2).min(Duration::from_secs(2));
        tokio::select! {
            () = tokio::time::sleep(wait) => CallEnd::Retry,
            () = self.abort.cancelled() => CallEnd::Stop,
        }
    }

    async fn run(mut self, mode: Mode) -> LaneReport {
        loop {
            if !self.input_open && self.unacked_len == 0 {
                break;
            }
            let end = match mode {
                Mode::Stream => self.stream_call().await,
                Mode::Push => self.push_call().await,
            };
            match end {
                CallEnd::Done | CallEnd::Stop => break,
                CallEnd::Retry => {}
            }
        }
        self.report.unacknowledged = self.unacked_len as u64;
        self.report
    }

    /// One bidirectional call: resends what is unacknowledged, then streams
    /// new batches while reading acks.
    async fn stream_call(&mut self) -> CallEnd {
        let (request_tx, request_rx) = mpsc::unbounded_channel::<(Batch, usize)>();
        for (batch, acked) in &self.unacked {
            let _ = request_tx.send((batch.clone(), *acked));
        }
        add(&self.counters.resent, self.unacked_len as u64);
        let mut request_tx = self.input_open.then_some(request_tx);
        let messages = UnboundedReceiverStream::new(request_rx).flat_map(|(batch, from)| {
            let to = batch.len();
            futures::stream::iter(batch.messages(from, to))
        });
        let mut grpc = tonic::client::Grpc::new(self.channel.clone());
        let opened = async {
            grpc.ready()
                .await
                .map_err(|e| Status::unavailable(e.to_string()))?;
            let request = self.request(messages);
            let path = PathAndQuery::from_static("/heartbeat.v1.IngestService/Stream");
            grpc.streaming(request, path, EncodedCodec::<PushAck>::default())
                .await
        };
        let opened = tokio::select! {
            opened = opened => opened,
            () = self.abort.cancelled() => return CallEnd::Stop,
        };
        let mut acks = match opened {
            Ok(response) => response.into_inner(),
            Err(status) => return self.failed(&status).await,
        };
        // Index (within this call) of the oldest unacknowledged heartbeat.
        let mut acked_in_call = 0i64;
        let mut totals = CallTotals::default();
        loop {
            let room = self.unacked_len < self.window;
            tokio::select! {
                biased;
                () = self.abort.cancelled() => return CallEnd::Stop,
                ack = acks.message() => match ack {
                    Ok(Some(ack)) => {
                        let covered = (ack.acked_index + 1 - acked_in_call)
                            .clamp(0, self.unacked_len as i64);
                        acked_in_call += covered;
                        self.record_acked(covered as usize, Instant::now());
                        add(&self.counters.accepted, ack.accepted.saturating_sub(totals.accepted));
                        add(&self.counters.duplicates, ack.duplicates.saturating_sub(totals.duplicates));
                        add(&self.counters.rejected, ack.rejected.saturating_sub(totals.rejected));
                        totals = CallTotals {
                            accepted: ack.accepted,
                            duplicates: ack.duplicates,
                            rejected: ack.rejected,
                        };
                        self.record_rejections(&ack.rejections);
                        self.backoff = Duration::from_millis(50);
                    }
                    Ok(None) if !self.input_open && self.unacked_len == 0 => return CallEnd::Done,
                    Ok(None) => {
                        let early = Status::unavailable("the call ended before everything was acknowledged");
                        return self.failed(&early).await;
                    }
                    Err(status) => return self.failed(&status).await,
                },
                batch = self.input.recv(), if self.input_open && room => {
                    match (self.take_batch(batch), &request_tx) {
                        (Some(batch), Some(tx)) => {
                            let _ = tx.send((batch, 0));
                        }
                        // Input is over: closing our side lets the server finish.
                        _ => request_tx = None,
                    }
                }
            }
        }
    }

    /// One `Push` call with the oldest unacknowledged heartbeats, topped up
    /// from the input.
    async fn push_call(&mut self) -> CallEnd {
        if self.unacked_len == 0 {
            let batch = tokio::select! {
                batch = self.input.recv() => batch,
                () = self.abort.cancelled() => return CallEnd::Stop,
            };
            self.take_batch(batch);
        }
        let limit = self.window.min(self.push_batch);
        while self.input_open && self.unacked_len < limit {
            match self.input.try_recv() {
                Ok(batch) => {
                    self.take_batch(Some(batch));
                }
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => self.input_open = false,
            }
        }
        if self.unacked_len == 0 {
            return CallEnd::Done;
        }
        let messages = self.unacked_messages(self.push_batch);
        let count = messages.len();
        let mut grpc = tonic::client::Grpc::new(self.channel.clone());
        let call = async {
            grpc.ready()
                .await
                .map_err(|e| Status::unavailable(e.to_string()))?;
            let request = self.request(tokio_stream::iter(messages));
            let path = PathAndQuery::from_static("/heartbeat.v1.IngestService/Push");
            grpc.client_streaming(request, path, EncodedCodec::<PushSummary>::default())
                .await
        };
        let answer = tokio::select! {
            answer = call => answer,
            () = self.abort.cancelled() => return CallEnd::Stop,
        };
        match answer {
            Ok(summary) => {
                let summary = summary.into_inner();
                self.record_acked(count, Instant::now());
                add(&self.counters.accepted, summary.accepted);
                add(&self.counters.duplicates, summary.duplicates);
                add(&self.counters.rejected, summary.rejected);
                self.record_rejections(&summary.rejections);
                self.backoff = Duration::from_millis(50);
                CallEnd::Retry
            }
            Err(status) => {
                add(&self.counters.resent, count as u64);
                self.failed(&status).await
            }
        }
    }
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
        let lane = Lane {
            channel: channels[index % channels.len()].clone(),
            authorization: authorization.clone(),
            input: rx,
            input_open: true,
            unacked: VecDeque::new(),
            unacked_len: 0,
            window: args.window,
            push_batch: args.push_batch,
            counters: Arc::clone(&counters),
            abort: abort.clone(),
            fatal: Arc::clone(&fatal),
            report: LaneReport {
                latency_us: Histogram::new_with_bounds(1, 3_600_000_000, 3)
                    .expect("histogram bounds"),
                reasons: BTreeMap::new(),
                errors: BTreeMap::new(),
                last_error: None,
                unacknowledged: 0,
            },
            backoff: Duration::from_millis(50),
        };
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

    let mut latency =
        Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).expect("histogram bounds");
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

/// Opens the HTTP/2 connections the lanes share.
async fn connect(plan: &Plan, args: &SimulateArgs) -> anyhow::Result<Vec<Channel>> {
    let mut endpoint = Endpoint::from_shared(plan.endpoint.clone())?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .initial_stream_window_size(1 << 20)
        .initial_connection_window_size(8 << 20)
        .http2_keep_alive_interval(Duration::from_secs(30));
    if plan.endpoint.starts_with("https://") {
        let ca = args
            .ca_cert
            .as_ref()
            .context("an https:// target needs --ca-cert (the CA that signed HB_TLS_CERT)")?;
        let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
        endpoint = endpoint
            .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)))?;
    }
    let mut channels = Vec::with_capacity(plan.connections);
    for _ in 0..plan.connections {
        let channel = endpoint
            .connect()
            .await
            .with_context(|| format!("cannot reach svc-ingest at {}", plan.endpoint))?;
        channels.push(channel);
    }
    Ok(channels)
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
struct Progress {
    bar: ProgressBar,
    ticker: tokio::task::JoinHandle<()>,
}

impl Progress {
    fn start(args: &SimulateArgs, counters: Arc<Counters>, started: Instant) -> Progress {
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

    fn finish(self) {
        self.ticker.abort();
        self.bar.finish_and_clear();
    }
}

fn print_summary(s: &Summary) {
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
        println!(
            "  held back      {:>12}   (the fleet's clock reached now; add devices to offer more)",
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

#[cfg(test)]
mod tests {
    use super::*;

    fn args(devices: usize, rate: f64, duration: &str) -> SimulateArgs {
        SimulateArgs {
            devices,
            rate,
            duration: parse_duration(duration).unwrap(),
            target: "127.0.0.1:50051".into(),
            token: None,
            auth_secret: None,
            mode: Mode::Stream,
            connections: 8,
            streams: None,
            window: 16_384,
            push_batch: 2_000,
            users: None,
            seed: Some(1),
            ca_cert: None,
            pregenerate: false,
            json: true,
        }
    }

    const NOW: i64 = 1_800_000_000_000;

    #[test]
    fn a_fleet_below_its_natural_pace_beats_less_often_in_real_time() {
        // 1000 devices at 50/s: 700 watching, each beating every 14 s.
        let plan = plan(&args(1_000, 50.0, "60s"), NOW).unwrap();
        assert_eq!(plan.start_ms, NOW, "clocks start now");
        assert_eq!(plan.interval_ms, 14_000);
    }

    #[test]
    fn a_fleet_asked_for_more_beats_more_often_and_still_starts_now() {
        // 100 devices at 200/s: 70 watching, each beating every 350 ms.
        let plan = plan(&args(100, 200.0, "60s"), NOW).unwrap();
        assert_eq!(plan.start_ms, NOW, "never behind the wall clock");
        assert_eq!(plan.interval_ms, 350);
        let config = fleet_config(&args(100, 200.0, "60s"), &plan);
        let base = FleetConfig::default();
        let k = 5_000.0 / 350.0;
        // The same behaviour per second: chances per beat down, spells in beats up.
        assert!((config.abandon_per_beat * k - base.abandon_per_beat).abs() < 1e-12);
        assert!((config.pause_per_beat * k - base.pause_per_beat).abs() < 1e-12);
        assert_eq!(config.ad_beats, (43, 86));
        assert_eq!(config.think_ms, base.think_ms, "times stay times");
        assert_eq!(config.max_delay_ms, base.max_delay_ms);
        assert_eq!(config.start_ms, NOW);
    }

    #[test]
    fn a_rate_needing_a_beat_more_often_than_every_10_ms_is_refused() {
        let err = plan(&args(10, 100_000.0, "10m"), NOW).unwrap_err();
        assert!(err.to_string().contains("more devices"), "{err}");
    }

    #[test]
    fn targets_accept_host_port_and_uris() {
        assert_eq!(
            endpoint_uri("127.0.0.1:50051").unwrap(),
            "http://127.0.0.1:50051"
        );
        assert_eq!(
            endpoint_uri("http://localhost:1").unwrap(),
            "http://localhost:1"
        );
        assert_eq!(
            endpoint_uri("https://ingest.example:443").unwrap(),
            "https://ingest.example:443"
        );
        assert!(endpoint_uri("ftp://x:1").is_err());
        assert!(endpoint_uri("").is_err());
    }

    #[test]
    fn a_secret_mints_a_gateway_token_and_an_explicit_token_wins() {
        let mut a = args(10, 1.0, "1s");
        a.auth_secret = Some("s".into());
        let minted = plan(&a, NOW).unwrap().authorization.unwrap();
        let token = minted.strip_prefix("Bearer ").unwrap();
        let principal = TokenKey::new("s").verify(token, NOW / 1_000).unwrap();
        assert_eq!(principal.role, Role::Gateway);
        a.token = Some("Bearer abc".into());
        assert_eq!(plan(&a, NOW).unwrap().authorization.unwrap(), "Bearer abc");
        a.token = Some("abc".into());
        assert_eq!(plan(&a, NOW).unwrap().authorization.unwrap(), "Bearer abc");
    }

    #[test]
    fn lanes_default_to_one_per_device_up_to_64() {
        assert_eq!(plan(&args(10, 1.0, "1s"), NOW).unwrap().streams, 10);
        assert_eq!(plan(&args(10_000, 1.0, "1s"), NOW).unwrap().streams, 64);
        assert_eq!(plan(&args(10, 1.0, "1s"), NOW).unwrap().connections, 8);
        assert_eq!(plan(&args(3, 1.0, "1s"), NOW).unwrap().connections, 3);
    }

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
            a.auth_secret = Some("s".into());
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
