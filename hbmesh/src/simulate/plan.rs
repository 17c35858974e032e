//! The load plan: the command line of `hbmesh simulate` and what is decided
//! from it before traffic starts (lanes, connections, the players' pace, the
//! token), and the fleet that offers the rate in real time.

use anyhow::{bail, Context};
use hb_common::auth::{Role, TokenKey};
use hb_common::duration::parse_duration;
use hb_common::settings::AuthSettings;
use hb_testkit::fleet::FleetConfig;
use serde::Serialize;
use std::path::PathBuf;
use std::time::Duration;

/// Share of the fleet watching at any time (the fleet's steady state, which
/// it also starts in), to choose how often players beat to offer the rate.
const ACTIVE_SHARE_ESTIMATE: f64 = 0.7;
/// Players never beat more often than this (100 heartbeats/s per device).
const MIN_INTERVAL_MS: i64 = 10;
/// Nor less often than this.
const MAX_INTERVAL_MS: i64 = 60_000;
/// After `--duration`, how long lanes may take to get their last acks.
pub(super) const DRAIN_TIMEOUT: Duration = Duration::from_secs(15);

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

    /// Without `--token`, a gateway token is minted with this secret (`HB_AUTH_SECRET`).
    #[command(flatten)]
    pub auth: AuthSettings,

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
pub(super) struct Plan {
    pub(super) endpoint: String,
    pub(super) streams: usize,
    pub(super) connections: usize,
    pub(super) seed: u64,
    pub(super) users: usize,
    pub(super) start_ms: i64,
    /// Heartbeat interval of the players, so the fleet offers the rate.
    pub(super) interval_ms: i64,
    pub(super) authorization: Option<String>,
}

pub(super) fn plan(args: &SimulateArgs, now_ms: i64) -> anyhow::Result<Plan> {
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
    let authorization = match (&args.token, args.auth.secret()) {
        (Some(token), _) if !token.is_empty() => {
            let token = token.strip_prefix("Bearer ").unwrap_or(token);
            Some(format!("Bearer {token}"))
        }
        (_, Some(secret)) => {
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
pub(super) fn fleet_config(args: &SimulateArgs, plan: &Plan) -> FleetConfig {
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

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(in crate::simulate) fn args(devices: usize, rate: f64, duration: &str) -> SimulateArgs {
        SimulateArgs {
            devices,
            rate,
            duration: parse_duration(duration).unwrap(),
            target: "127.0.0.1:50051".into(),
            token: None,
            auth: AuthSettings::default(),
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
        a.auth.secret = Some(hb_common::settings::Secret::new("s"));
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
}
