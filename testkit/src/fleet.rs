//! A deterministic fleet of simulated players producing realistic playback
//! heartbeats, for `hbmesh simulate`, benchmarks and tests. Pure: no clock, no
//! IO; the same [`FleetConfig`] (seed included) and the same sequence of calls
//! give the same heartbeats, ids included.
//!
//! Each device belongs to a user (device `i` to user `i % users`, so a user
//! has about `devices / users` devices) and alternates between watching a
//! video and idling ("think time"). While watching it sends a heartbeat every
//! `interval_ms` (± jitter): PLAYING with the position advancing by the elapsed
//! time times the speed (1x, sometimes 1.5x or 2x), PAUSED and BUFFERING spells
//! (position frozen), seeks forward and back, ad breaks (pre-roll and mid-roll:
//! `ad_id` set, position frozen), ENDED at the end of the title. Viewers also
//! abandon a title for another one, and move to another of their devices mid-
//! video (the other device resumes the same video at the same position after
//! a short delay, the first one goes quiet). Delivery is slightly imperfect:
//! a few heartbeats arrive a few seconds late (after newer ones), and a few
//! are resent (the same `event_id` twice).
//!
//! Times are simulated from `start_ms`. [`Fleet::next_for_device`] gives a
//! device's heartbeats in its delivery order and [`Fleet::next_due_ms`] when
//! the next one is due, so a real-time simulator can pace each device by the
//! due time; [`Fleet::heartbeats`] merges the whole fleet in delivery order.
//! A device switch changes another device's future, so per-device sequences
//! are reproducible for a given interleaving of calls (the merged iterator is
//! one such interleaving); the algorithm of `rand`'s `SmallRng` is fixed by the
//! locked `rand` version.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use hb_proto::v1::{Heartbeat, PlaybackState};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use hb_common::time::ms_to_timestamp;

/// Knobs of the simulated fleet. Probabilities "per beat" apply to each
/// heartbeat sent while playing (not during ads, pauses or buffering).
#[derive(Clone, Debug)]
pub struct FleetConfig {
    /// Simulated players.
    pub devices: usize,
    /// Viewers; device `i` belongs to user `i % users` (clamped to `1..=devices`).
    pub users: usize,
    /// Titles in the catalog (`video-00000`, ...). Popularity is skewed: low
    /// indexes are watched far more often.
    pub videos: usize,
    /// Ads in the catalog (`ad-0000`, ...).
    pub ads: usize,
    /// Seed of every random choice.
    pub seed: u64,
    /// Event time (epoch ms) at which the simulation starts.
    pub start_ms: i64,
    /// Time between two heartbeats of a player (default 5000).
    pub interval_ms: i64,
    /// Each interval is `interval_ms` ± up to this much (default 250).
    pub interval_jitter_ms: i64,
    /// Share of devices already mid-video at `start_ms` (the rest start after
    /// a think time), so the fleet looks like steady state from the start.
    pub active_at_start: f64,
    /// Share of titles watched at 1.5x or 2x instead of 1x.
    pub fast_playback: f64,
    /// Share of titles resumed from a previous position instead of 0.
    pub resume: f64,
    /// Share of titles starting with a pre-roll ad.
    pub preroll: f64,
    /// Content time between mid-roll ad breaks (0: none).
    pub ad_break_every_ms: i64,
    /// Length of an ad break in heartbeats (inclusive range).
    pub ad_beats: (u32, u32),
    /// Chance per beat to pause, and the pause length in heartbeats.
    pub pause_per_beat: f64,
    pub pause_beats: (u32, u32),
    /// Chance per beat to stall, and the stall length in heartbeats.
    pub buffering_per_beat: f64,
    pub buffering_beats: (u32, u32),
    /// Chance per beat to seek; a seek jumps between `-seek_back_ms` and
    /// `+seek_forward_ms`.
    pub seek_per_beat: f64,
    pub seek_back_ms: i64,
    pub seek_forward_ms: i64,
    /// Chance per beat to abandon the title (then think, then another title).
    pub abandon_per_beat: f64,
    /// Chance per beat to move to another idle device of the same user, which
    /// resumes after `switch_delay_ms` (inclusive range).
    pub device_switch_per_beat: f64,
    pub switch_delay_ms: (i64, i64),
    /// Idle time between titles (inclusive range).
    pub think_ms: (i64, i64),
    /// Chance per heartbeat to be delivered late, by up to `max_delay_ms`
    /// (after newer heartbeats of the same device).
    pub delay_per_beat: f64,
    pub max_delay_ms: i64,
    /// Chance per heartbeat to be delivered twice (same `event_id`), the copy
    /// `resend_delay_ms` (inclusive range) after the original.
    pub resend_per_beat: f64,
    pub resend_delay_ms: (i64, i64),
}

impl Default for FleetConfig {
    fn default() -> Self {
        FleetConfig {
            devices: 1_000,
            users: 700,
            videos: 2_000,
            ads: 200,
            seed: 1,
            start_ms: 1_700_000_000_000,
            interval_ms: 5_000,
            interval_jitter_ms: 250,
            active_at_start: 0.7,
            fast_playback: 0.08,
            resume: 0.3,
            preroll: 0.5,
            ad_break_every_ms: 10 * 60_000,
            ad_beats: (3, 6),
            pause_per_beat: 0.003,
            pause_beats: (2, 60),
            buffering_per_beat: 0.008,
            buffering_beats: (1, 3),
            seek_per_beat: 0.006,
            seek_back_ms: 120_000,
            seek_forward_ms: 300_000,
            abandon_per_beat: 0.002,
            device_switch_per_beat: 0.0008,
            switch_delay_ms: (10_000, 90_000),
            think_ms: (5_000, 20 * 60_000),
            delay_per_beat: 0.01,
            max_delay_ms: 8_000,
            resend_per_beat: 0.003,
            resend_delay_ms: (1_000, 30_000),
        }
    }
}

/// What a player is doing on its current title.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Playing,
    Paused { beats_left: u32 },
    Buffering { beats_left: u32 },
    Ad { ad: u32, beats_left: u32 },
    Ending,
}

#[derive(Clone, Copy, Debug)]
struct Playback {
    video: u32,
    position_ms: i64,
    /// Playback speed in percent (100, 150 or 200).
    speed_pct: i64,
    mode: Mode,
    next_ad_break_ms: i64,
}

/// A heartbeat waiting for its delivery time.
#[derive(Debug)]
struct Pending {
    due_ms: i64,
    sequence: u64,
    heartbeat: Heartbeat,
}

#[derive(Debug)]
struct Device {
    device_id: String,
    user: u32,
    platform: &'static str,
    app_version: &'static str,
    country: &'static str,
    bitrate_kbps: u32,
    rng: SmallRng,
    /// Event time of the next heartbeat to generate.
    clock_ms: i64,
    /// Event time of the last heartbeat generated.
    last_ms: i64,
    playback: Option<Playback>,
    /// Generated, not yet delivered; small, kept unsorted.
    outbox: Vec<Pending>,
    /// Bumped whenever the due time may have changed behind the merge queue.
    version: u32,
}

/// A simulated fleet of players (see the module docs).
#[derive(Debug)]
pub struct Fleet {
    config: FleetConfig,
    users: Vec<String>,
    videos: Vec<(String, i64)>,
    ads: Vec<String>,
    devices: Vec<Device>,
    sequence: u64,
    /// `(due_ms, device, version)` of every device, for the merged order.
    queue: BinaryHeap<Reverse<(i64, u32, u32)>>,
    queue_ready: bool,
    /// Devices whose future a device switch just changed.
    touched: Vec<u32>,
}

const PLATFORMS: [(&str, &str); 4] = [
    ("ios", "7.4.1"),
    ("android", "7.4.0"),
    ("web", "2025.11.3"),
    ("tv", "3.2.0"),
];
const COUNTRIES: [&str; 8] = ["US", "BR", "DE", "FR", "IN", "JP", "GB", "MX"];

/// SplitMix64: independent seeds for the catalog and each device.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn chance(rng: &mut SmallRng, p: f64) -> bool {
    p > 0.0 && rng.random_bool(p.min(1.0))
}

fn between<T: rand::distr::uniform::SampleUniform + PartialOrd + Copy>(
    rng: &mut SmallRng,
    (lo, hi): (T, T),
) -> T {
    if hi <= lo {
        lo
    } else {
        rng.random_range(lo..=hi)
    }
}

impl Fleet {
    /// Builds the fleet and its catalog; nothing is generated yet.
    pub fn new(config: FleetConfig) -> Fleet {
        let device_count = config.devices.max(1);
        let user_count = config.users.clamp(1, device_count);
        let video_count = config.videos.max(1);
        let mut catalog_rng = SmallRng::seed_from_u64(mix(config.seed));
        let videos = (0..video_count)
            .map(|index| {
                let minutes = match catalog_rng.random_range(0..100) {
                    0..25 => catalog_rng.random_range(1..=6),
                    25..75 => catalog_rng.random_range(20..=50),
                    _ => catalog_rng.random_range(80..=150),
                };
                (format!("video-{index:05}"), minutes * 60_000)
            })
            .collect();
        let ads = (0..config.ads)
            .map(|index| format!("ad-{index:04}"))
            .collect();
        let users = (0..user_count)
            .map(|index| format!("user-{index:06}"))
            .collect();
        let devices = (0..device_count)
            .map(|index| {
                let mut rng = SmallRng::seed_from_u64(mix(config.seed ^ mix(index as u64 + 1)));
                let (platform, app_version) = PLATFORMS[rng.random_range(0..PLATFORMS.len())];
                Device {
                    device_id: format!("dev-{index:07}"),
                    user: (index % user_count) as u32,
                    platform,
                    app_version,
                    country: COUNTRIES[rng.random_range(0..COUNTRIES.len())],
                    bitrate_kbps: [800, 1_800, 3_500, 6_000, 12_000][rng.random_range(0..5)],
                    rng,
                    clock_ms: config.start_ms,
                    last_ms: i64::MIN,
                    playback: None,
                    outbox: Vec::new(),
                    version: 0,
                }
            })
            .collect();
        let mut fleet = Fleet {
            config: FleetConfig {
                devices: device_count,
                users: user_count,
                videos: video_count,
                ..config
            },
            users,
            videos,
            ads,
            devices,
            sequence: 0,
            queue: BinaryHeap::new(),
            queue_ready: false,
            touched: Vec::new(),
        };
        for index in 0..device_count {
            fleet.place_at_start(index);
        }
        fleet
    }

    /// The configuration (counts clamped to at least one).
    pub fn config(&self) -> &FleetConfig {
        &self.config
    }

    /// Number of devices.
    pub fn devices(&self) -> usize {
        self.devices.len()
    }

    /// The `device_id` a device normally sends.
    pub fn device_id(&self, device_index: usize) -> &str {
        &self.devices[device_index].device_id
    }

    /// The `user_id` a device belongs to.
    pub fn user_id(&self, device_index: usize) -> &str {
        &self.users[self.devices[device_index].user as usize]
    }

    /// The catalog: `(video_id, duration_ms)`.
    pub fn videos(&self) -> &[(String, i64)] {
        &self.videos
    }

    /// The catalog's ad ids.
    pub fn ads(&self) -> &[String] {
        &self.ads
    }

    /// Delivery time (simulated epoch ms) of the device's next heartbeat.
    pub fn next_due_ms(&mut self, device_index: usize) -> i64 {
        self.fill(device_index);
        self.devices[device_index]
            .outbox
            .iter()
            .map(|pending| pending.due_ms)
            .min()
            .expect("fill leaves a pending heartbeat")
    }

    /// The device's next heartbeat in its delivery order: event-time order,
    /// except the few delivered late and the resent copies.
    pub fn next_for_device(&mut self, device_index: usize) -> Heartbeat {
        self.fill(device_index);
        let outbox = &mut self.devices[device_index].outbox;
        let next = (0..outbox.len())
            .min_by_key(|&at| (outbox[at].due_ms, outbox[at].sequence))
            .expect("fill leaves a pending heartbeat");
        outbox.swap_remove(next).heartbeat
    }

    /// The fleet's next heartbeat in delivery order.
    pub fn next_heartbeat(&mut self) -> Heartbeat {
        if !self.queue_ready {
            self.queue_ready = true;
            for index in 0..self.devices.len() {
                let due_ms = self.next_due_ms(index);
                self.queue
                    .push(Reverse((due_ms, index as u32, self.devices[index].version)));
            }
        }
        loop {
            let Reverse((_, device, version)) = self.queue.pop().expect("every device is queued");
            let index = device as usize;
            if self.devices[index].version != version {
                continue;
            }
            let heartbeat = self.next_for_device(index);
            for other in std::mem::take(&mut self.touched)
                .into_iter()
                .chain([device])
            {
                let other = other as usize;
                self.devices[other].version = self.devices[other].version.wrapping_add(1);
                let due_ms = self.next_due_ms(other);
                self.queue
                    .push(Reverse((due_ms, other as u32, self.devices[other].version)));
            }
            return heartbeat;
        }
    }

    /// The next `count` heartbeats of the whole fleet, merged in delivery order.
    pub fn heartbeats(&mut self, count: usize) -> impl Iterator<Item = Heartbeat> + '_ {
        (0..count).map(move |_| self.next_heartbeat())
    }

    fn place_at_start(&mut self, index: usize) {
        let config = &self.config;
        let device = &mut self.devices[index];
        let interval_ms = config.interval_ms.max(1);
        if chance(&mut device.rng, config.active_at_start) {
            let video = pick_video(&mut device.rng, self.videos.len());
            let duration_ms = self.videos[video as usize].1;
            let position_ms = device.rng.random_range(0..duration_ms);
            device.playback = Some(Playback {
                video,
                position_ms,
                speed_pct: pick_speed(&mut device.rng, config.fast_playback),
                mode: Mode::Playing,
                next_ad_break_ms: next_break_after(position_ms, config.ad_break_every_ms),
            });
            device.clock_ms = config.start_ms + device.rng.random_range(0..interval_ms);
        } else {
            device.clock_ms = config.start_ms + between(&mut device.rng, config.think_ms);
        }
    }

    /// Generates until the earliest pending heartbeat can no longer be
    /// overtaken by one generated later.
    fn fill(&mut self, index: usize) {
        loop {
            let device = &self.devices[index];
            let earliest = device.outbox.iter().map(|pending| pending.due_ms).min();
            match earliest {
                Some(due_ms) if due_ms <= device.clock_ms => return,
                _ => self.generate(index),
            }
        }
    }

    /// Emits the heartbeat at the device's clock and moves its player on.
    fn generate(&mut self, index: usize) {
        let config = &self.config;
        let interval_ms = config.interval_ms.max(1);
        let device = &mut self.devices[index];
        let time_ms = device.clock_ms.max(device.last_ms.saturating_add(1));
        device.last_ms = time_ms;
        let mut playback = match device.playback {
            Some(playback) => playback,
            None => {
                let video = pick_video(&mut device.rng, self.videos.len());
                let duration_ms = self.videos[video as usize].1;
                let position_ms = if chance(&mut device.rng, config.resume) {
                    device.rng.random_range(0..duration_ms * 9 / 10)
                } else {
                    0
                };
                let mode = if chance(&mut device.rng, config.preroll) && !self.ads.is_empty() {
                    Mode::Ad {
                        ad: device.rng.random_range(0..self.ads.len() as u32),
                        beats_left: between(&mut device.rng, config.ad_beats).max(1),
                    }
                } else {
                    Mode::Playing
                };
                Playback {
                    video,
                    position_ms,
                    speed_pct: pick_speed(&mut device.rng, config.fast_playback),
                    mode,
                    next_ad_break_ms: next_break_after(position_ms, config.ad_break_every_ms),
                }
            }
        };
        let duration_ms = self.videos[playback.video as usize].1;
        let (state, ad_id) = match playback.mode {
            Mode::Playing => (PlaybackState::Playing, String::new()),
            Mode::Paused { .. } => (PlaybackState::Paused, String::new()),
            Mode::Buffering { .. } => (PlaybackState::Buffering, String::new()),
            Mode::Ad { ad, .. } => (PlaybackState::Playing, self.ads[ad as usize].clone()),
            Mode::Ending => (PlaybackState::Ended, String::new()),
        };
        let mut id_bytes = [0u8; 16];
        device.rng.fill(&mut id_bytes);
        let heartbeat = Heartbeat {
            event_id: uuid::Builder::from_random_bytes(id_bytes)
                .into_uuid()
                .to_string(),
            device_id: device.device_id.clone(),
            user_id: self.users[device.user as usize].clone(),
            video_id: self.videos[playback.video as usize].0.clone(),
            event_time: Some(ms_to_timestamp(time_ms)),
            position_ms: playback.position_ms.max(0) as u64,
            state: state as i32,
            ad_id,
            platform: device.platform.to_owned(),
            app_version: device.app_version.to_owned(),
            country: device.country.to_owned(),
            bitrate_kbps: device.bitrate_kbps,
        };

        let due_ms = if chance(&mut device.rng, config.delay_per_beat) {
            time_ms + device.rng.random_range(1..=config.max_delay_ms.max(1))
        } else {
            time_ms
        };
        if chance(&mut device.rng, config.resend_per_beat) {
            self.sequence += 1;
            device.outbox.push(Pending {
                due_ms: due_ms + between(&mut device.rng, config.resend_delay_ms).max(1),
                sequence: self.sequence,
                heartbeat: heartbeat.clone(),
            });
        }
        self.sequence += 1;
        device.outbox.push(Pending {
            due_ms,
            sequence: self.sequence,
            heartbeat,
        });

        // Move the player on to the next heartbeat.
        let step_ms = interval_ms
            + if config.interval_jitter_ms > 0 {
                device
                    .rng
                    .random_range(-config.interval_jitter_ms..=config.interval_jitter_ms)
            } else {
                0
            };
        let step_ms = step_ms.max(1);
        device.clock_ms = time_ms + step_ms;
        match playback.mode {
            Mode::Ending => {
                device.playback = None;
                device.clock_ms = time_ms + between(&mut device.rng, config.think_ms);
                return;
            }
            Mode::Ad { ad, beats_left } => {
                playback.mode = if beats_left <= 1 {
                    Mode::Playing
                } else {
                    Mode::Ad {
                        ad,
                        beats_left: beats_left - 1,
                    }
                };
            }
            Mode::Paused { beats_left } => {
                playback.mode = if beats_left <= 1 {
                    Mode::Playing
                } else {
                    Mode::Paused {
                        beats_left: beats_left - 1,
                    }
                };
            }
            Mode::Buffering { beats_left } => {
                playback.mode = if beats_left <= 1 {
                    Mode::Playing
                } else {
                    Mode::Buffering {
                        beats_left: beats_left - 1,
                    }
                };
            }
            Mode::Playing => {
                playback.position_ms += step_ms * playback.speed_pct / 100;
                let rng = &mut device.rng;
                if playback.position_ms >= duration_ms {
                    playback.position_ms = duration_ms;
                    playback.mode = Mode::Ending;
                } else if config.ad_break_every_ms > 0
                    && playback.position_ms >= playback.next_ad_break_ms
                    && !self.ads.is_empty()
                {
                    playback.next_ad_break_ms += config.ad_break_every_ms;
                    playback.mode = Mode::Ad {
                        ad: rng.random_range(0..self.ads.len() as u32),
                        beats_left: between(rng, config.ad_beats).max(1),
                    };
                } else if chance(rng, config.abandon_per_beat) {
                    device.playback = None;
                    device.clock_ms = time_ms + between(rng, config.think_ms);
                    return;
                } else if chance(rng, config.device_switch_per_beat) {
                    if self.switch_device(index, playback, time_ms) {
                        return;
                    }
                } else if chance(rng, config.seek_per_beat) {
                    let jump_ms = rng.random_range(-config.seek_back_ms..=config.seek_forward_ms);
                    playback.position_ms =
                        (playback.position_ms + jump_ms).clamp(0, duration_ms - 1);
                    playback.next_ad_break_ms =
                        next_break_after(playback.position_ms, config.ad_break_every_ms);
                } else if chance(rng, config.pause_per_beat) {
                    playback.mode = Mode::Paused {
                        beats_left: between(rng, config.pause_beats).max(1),
                    };
                } else if chance(rng, config.buffering_per_beat) {
                    playback.mode = Mode::Buffering {
                        beats_left: between(rng, config.buffering_beats).max(1),
                    };
                }
            }
        }
        self.devices[index].playback = Some(playback);
    }

    /// Hands the current title over to an idle sibling device of the same
    /// user; false when the user has no idle other device.
    fn switch_device(&mut self, index: usize, playback: Playback, time_ms: i64) -> bool {
        let users = self.config.users;
        let siblings = (self.devices.len() - 1 - index % users) / users + 1;
        if siblings < 2 {
            return false;
        }
        let config = &self.config;
        let device = &mut self.devices[index];
        let pick = device.rng.random_range(0..siblings - 1);
        let own = index / users;
        let sibling = index % users + users * if pick >= own { pick + 1 } else { pick };
        let delay_ms = between(&mut device.rng, config.switch_delay_ms).max(1);
        let rest_ms = between(&mut device.rng, config.think_ms) + delay_ms;
        if self.devices[sibling].playback.is_some() {
            return false;
        }
        let device = &mut self.devices[index];
        device.playback = None;
        device.clock_ms = time_ms + rest_ms;
        let other = &mut self.devices[sibling];
        other.playback = Some(Playback {
            mode: Mode::Playing,
            ..playback
        });
        other.clock_ms = (time_ms + delay_ms).max(other.last_ms + 1);
        self.touched.push(sibling as u32);
        true
    }
}

/// Skewed popularity: low indexes are picked far more often.
fn pick_video(rng: &mut SmallRng, videos: usize) -> u32 {
    let u: f64 = rng.random();
    ((u * u * u * videos as f64) as usize).min(videos - 1) as u32
}

fn pick_speed(rng: &mut SmallRng, fast_playback: f64) -> i64 {
    if chance(rng, fast_playback) {
        if rng.random_bool(0.5) {
            150
        } else {
            200
        }
    } else {
        100
    }
}

fn next_break_after(position_ms: i64, every_ms: i64) -> i64 {
    if every_ms <= 0 {
        i64::MAX
    } else {
        (position_ms / every_ms + 1) * every_ms
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use super::*;
    use hb_common::time::timestamp_to_ms;

    fn fleet(devices: usize, seed: u64) -> Fleet {
        Fleet::new(FleetConfig {
            devices,
            users: devices * 2 / 3,
            seed,
            ..FleetConfig::default()
        })
    }

    fn time_of(heartbeat: &Heartbeat) -> i64 {
        timestamp_to_ms(heartbeat.event_time.as_ref().unwrap())
    }

    #[test]
    fn the_same_seed_gives_the_same_heartbeats_and_another_seed_does_not() {
        let a: Vec<Heartbeat> = fleet(50, 7).heartbeats(5_000).collect();
        let b: Vec<Heartbeat> = fleet(50, 7).heartbeats(5_000).collect();
        let c: Vec<Heartbeat> = fleet(50, 8).heartbeats(5_000).collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn the_merged_stream_is_in_event_time_order_but_for_a_few_late_deliveries() {
        let heartbeats: Vec<Heartbeat> = fleet(200, 1).heartbeats(50_000).collect();
        let mut newest = i64::MIN;
        let mut behind = 0;
        for heartbeat in &heartbeats {
            let time_ms = time_of(heartbeat);
            if time_ms < newest {
                behind += 1;
                assert!(newest - time_ms <= 40_000, "at most a resend delay behind");
            }
            newest = newest.max(time_ms);
        }
        assert!(behind > 100 && behind < 5_000, "{behind} out of order");
    }

    #[test]
    fn the_stream_shows_every_behaviour_the_sessionizer_must_handle() {
        let config = FleetConfig {
            devices: 300,
            users: 150,
            ..FleetConfig::default()
        };
        let interval_ms = config.interval_ms;
        let heartbeats: Vec<Heartbeat> = Fleet::new(config).heartbeats(200_000).collect();
        let mut ids = HashSet::new();
        let mut resends = 0;
        let mut by_device: HashMap<&str, Vec<&Heartbeat>> = HashMap::new();
        let mut devices_per_user_video: HashMap<(&str, &str), HashSet<&str>> = HashMap::new();
        for heartbeat in &heartbeats {
            if !ids.insert(heartbeat.event_id.as_str()) {
                resends += 1;
                continue;
            }
            by_device
                .entry(&heartbeat.device_id)
                .or_default()
                .push(heartbeat);
            devices_per_user_video
                .entry((&heartbeat.user_id, &heartbeat.video_id))
                .or_default()
                .insert(&heartbeat.device_id);
        }
        let (mut normal, mut fast, mut seeks, mut frozen_ads) = (0, 0, 0, 0);
        let mut states = HashMap::new();
        for beats in by_device.values_mut() {
            beats.sort_by_key(|hb| time_of(hb));
            for pair in beats.windows(2) {
                *states.entry(pair[0].state).or_insert(0) += 1;
                if pair[0].video_id != pair[1].video_id {
                    continue;
                }
                let dt = time_of(pair[1]) - time_of(pair[0]);
                let dp = pair[1].position_ms as i64 - pair[0].position_ms as i64;
                let both_playing = pair[0].state == PlaybackState::Playing as i32
                    && pair[1].state == PlaybackState::Playing as i32;
                if both_playing && pair[0].ad_id.is_empty() && pair[1].ad_id.is_empty() {
                    if dp == dt {
                        normal += 1;
                    } else if dp > dt && dp <= 2 * dt {
                        fast += 1;
                    } else if dt < 2 * interval_ms {
                        seeks += 1;
                    }
                }
                if !pair[0].ad_id.is_empty() && pair[0].ad_id == pair[1].ad_id {
                    assert_eq!(dp, 0, "the position is frozen during an ad");
                    frozen_ads += 1;
                }
            }
        }
        assert!(resends > 100, "{resends} resends");
        assert!(
            normal > 100_000 && fast > 1_000 && seeks > 100,
            "{normal} {fast} {seeks}"
        );
        assert!(frozen_ads > 1_000, "{frozen_ads}");
        for state in [
            PlaybackState::Paused,
            PlaybackState::Buffering,
            PlaybackState::Ended,
        ] {
            assert!(
                states.get(&(state as i32)).copied().unwrap_or(0) > 100,
                "{state:?}: {states:?}"
            );
        }
        let switched = devices_per_user_video
            .values()
            .filter(|d| d.len() > 1)
            .count();
        assert!(switched > 10, "{switched} device switches");
    }

    #[test]
    fn each_device_yields_its_own_heartbeats_in_due_order() {
        let mut fleet = fleet(10, 3);
        let mut last_due = i64::MIN;
        for _ in 0..500 {
            let due_ms = fleet.next_due_ms(4);
            assert!(due_ms >= last_due);
            last_due = due_ms;
            let heartbeat = fleet.next_for_device(4);
            assert_eq!(heartbeat.user_id, fleet.user_id(4));
            assert!(time_of(&heartbeat) <= due_ms);
        }
    }
}
