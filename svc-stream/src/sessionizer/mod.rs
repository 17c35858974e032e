//! The sessionizer: the pure core of svc-stream. Heartbeats go in, session
//! changes come out, exactly as SPEC 5 defines sessions. No IO, no clock (the
//! caller passes processing time), no async: one instance per partition.
//!
//! # How it stays exact with bounded memory
//!
//! State is kept per `(user_id, video_id)` key (a *slot*), holding that key's
//! open sessions sorted by start; sessions of one key are separated by at least
//! the gap, so a heartbeat joins at most the session before it and the one
//! after it (joining both is the "late bridge" merge).
//!
//! The watermark is the newest event time accepted. A heartbeat older than
//! `watermark - lateness` is [`Outcome::Late`], so nothing can ever be inserted
//! before that horizon again: heartbeats behind it are *frozen*, folded into a
//! compact per-session summary (count, watched sum, coverage spans, the first
//! time and the last frozen heartbeat as the predecessor of the next step), and
//! their ids leave the dedup index. Only the unfrozen tail is held in full.
//! Each session also carries running totals over frozen part and tail, updated
//! in O(1) for the usual in-order append, a prepend or a bridge, and rebuilt
//! from the frozen summary plus the tail when a heartbeat lands inside the tail.
//!
//! # Finalization and the idle-flush choice
//!
//! A session becomes final once the watermark passes `end + gap + lateness`
//! (no accepted heartbeat can reach it any more), or when its key saw no push
//! for `idle_timeout_ms` of processing time. An idle flush can happen while a
//! heartbeat could still reach the session, so the slot remembers the span
//! `[start, end]` of each idle-flushed session until the watermark makes it
//! unreachable: a later heartbeat *inside* such a span is reported `Late` (it
//! belongs to a session that is already final, and is most likely a resend
//! whose id was dropped with the session); one outside the span, even within
//! the gap, starts a new session. Both are documented departures from the
//! batch definition that only an idle flush can cause.
//!
//! # Changes
//!
//! The store sees sessions through [`Sessionizer::drain_changes`]: `Upsert`
//! while open, `Final` once closed, and `Delete` for a key the store holds that
//! no longer names a session (merged away, or its start moved earlier).
//! Applying the changes in order to a map keyed by [`SessionKey`] yields the
//! sessions of SPEC 5.

mod coverage;
mod fxhash;
mod ids;
#[cfg(test)]
mod tests;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};

use hb_proto::v1::Heartbeat;

use coverage::Coverage;
use fxhash::{fingerprint, FxBuildHasher};
use ids::{IdIndex, SlotIndex};

/// Player state of a heartbeat. `PLAYBACK_STATE_UNSPECIFIED` is rejected at
/// ingest, so it has no variant here.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PlaybackState {
    Playing,
    Paused,
    Buffering,
    Ended,
}

impl PlaybackState {
    /// The proto enum name (`"PLAYING"`, ...), as used in JSON Lines.
    pub fn as_str(self) -> &'static str {
        match self {
            PlaybackState::Playing => "PLAYING",
            PlaybackState::Paused => "PAUSED",
            PlaybackState::Buffering => "BUFFERING",
            PlaybackState::Ended => "ENDED",
        }
    }

    /// The proto enum number.
    pub fn to_proto(self) -> i32 {
        use hb_proto::v1::PlaybackState as Proto;
        match self {
            PlaybackState::Playing => Proto::Playing as i32,
            PlaybackState::Paused => Proto::Paused as i32,
            PlaybackState::Buffering => Proto::Buffering as i32,
            PlaybackState::Ended => Proto::Ended as i32,
        }
    }
}

impl TryFrom<i32> for PlaybackState {
    type Error = String;

    fn try_from(value: i32) -> Result<Self, Self::Error> {
        use hb_proto::v1::PlaybackState as Proto;
        match Proto::try_from(value) {
            Ok(Proto::Playing) => Ok(PlaybackState::Playing),
            Ok(Proto::Paused) => Ok(PlaybackState::Paused),
            Ok(Proto::Buffering) => Ok(PlaybackState::Buffering),
            Ok(Proto::Ended) => Ok(PlaybackState::Ended),
            Ok(Proto::Unspecified) => Err("playback state is unspecified".to_owned()),
            Err(_) => Err(format!("unknown playback state {value}")),
        }
    }
}

impl std::str::FromStr for PlaybackState {
    type Err = String;

    /// Parses the proto enum name (`"PLAYING"`, `"PAUSED"`, `"BUFFERING"`, `"ENDED"`).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "PLAYING" => Ok(PlaybackState::Playing),
            "PAUSED" => Ok(PlaybackState::Paused),
            "BUFFERING" => Ok(PlaybackState::Buffering),
            "ENDED" => Ok(PlaybackState::Ended),
            other => Err(format!("unknown playback state {other:?}")),
        }
    }
}

/// One accepted heartbeat, as the sessionizer needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub event_id: String,
    pub user_id: String,
    pub video_id: String,
    pub device_id: String,
    /// Device clock, epoch milliseconds.
    pub time_ms: i64,
    pub position_ms: i64,
    pub state: PlaybackState,
    /// Non-empty while an ad plays.
    pub ad_id: String,
}

impl Event {
    /// Converts a wire heartbeat; fails for an unspecified state, a missing
    /// `event_time` or a position beyond `i64::MAX`.
    pub fn from_proto(hb: &Heartbeat) -> Result<Event, String> {
        let (time_ms, position_ms, state) = Self::scalars(hb)?;
        Ok(Event {
            event_id: hb.event_id.clone(),
            user_id: hb.user_id.clone(),
            video_id: hb.video_id.clone(),
            device_id: hb.device_id.clone(),
            time_ms,
            position_ms,
            state,
            ad_id: hb.ad_id.clone(),
        })
    }

    fn scalars(hb: &Heartbeat) -> Result<(i64, i64, PlaybackState), String> {
        let state = PlaybackState::try_from(hb.state)?;
        let time = hb.event_time.as_ref().ok_or("event_time is missing")?;
        let position_ms = i64::try_from(hb.position_ms)
            .map_err(|_| format!("position_ms {} is out of range", hb.position_ms))?;
        Ok((hb_common::time::timestamp_to_ms(time), position_ms, state))
    }
}

impl TryFrom<Heartbeat> for Event {
    type Error = String;

    /// Like [`Event::from_proto`], moving the ids instead of copying them.
    fn try_from(hb: Heartbeat) -> Result<Self, Self::Error> {
        let (time_ms, position_ms, state) = Event::scalars(&hb)?;
        Ok(Event {
            event_id: hb.event_id,
            user_id: hb.user_id,
            video_id: hb.video_id,
            device_id: hb.device_id,
            time_ms,
            position_ms,
            state,
            ad_id: hb.ad_id,
        })
    }
}

/// A viewing session with the fields of SPEC 5.5.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Session {
    pub user_id: String,
    pub video_id: String,
    /// Time of the first heartbeat.
    pub start_ms: i64,
    /// Time of the last heartbeat.
    pub end_ms: i64,
    pub heartbeats: u64,
    /// Sum of the position advance over watched steps (rewatching counts again).
    pub watch_ms: i64,
    /// Length of the union of the watched position intervals.
    pub coverage_ms: i64,
    /// Position of the last heartbeat.
    pub last_position_ms: i64,
    /// Distinct non-empty ad ids, sorted.
    pub ads: Vec<String>,
    /// Number of distinct devices.
    pub devices: u64,
}

impl Session {
    /// The store key of this session.
    pub fn key(&self) -> SessionKey {
        SessionKey {
            user_id: self.user_id.clone(),
            video_id: self.video_id.clone(),
            start_ms: self.start_ms,
        }
    }
}

/// Store key of a session: `(user_id, video_id, start_ms)`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionKey {
    pub user_id: String,
    pub video_id: String,
    pub start_ms: i64,
}

/// A change to apply to the sessions store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// The session is still open: write it, replacing the row with its key.
    Upsert(Session),
    /// The session is closed for good; the sessionizer dropped its state.
    Final(Session),
    /// The row with this key no longer names a session: it was merged into
    /// another one, or its start moved earlier (an `Upsert` under the new key
    /// comes with it).
    Delete(SessionKey),
}

impl Change {
    /// The store key this change writes or deletes.
    pub fn key(&self) -> SessionKey {
        match self {
            Change::Upsert(session) | Change::Final(session) => session.key(),
            Change::Delete(key) => key.clone(),
        }
    }
}

/// What [`Sessionizer::push`] did with a heartbeat.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Folded into a session.
    Merged,
    /// Its `event_id` was already accepted: ignored.
    Duplicate,
    /// Older than `watermark - lateness` (or inside an idle-flushed session):
    /// not sessionized; the caller still mirrors and counts it.
    Late,
}

/// Session rules; the defaults are those of SPEC 5.
#[derive(Clone, Copy, Debug)]
pub struct SessionConfig {
    /// Time between heartbeats that starts a new session (`HB_SESSION_GAP`).
    pub gap_ms: i64,
    /// How far behind the newest event time a heartbeat is still merged
    /// (`HB_ALLOWED_LATENESS`).
    pub lateness_ms: i64,
    /// Processing time without a push after which a key's sessions are
    /// finalized (`HB_IDLE_TIMEOUT`).
    pub idle_timeout_ms: i64,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            gap_ms: 600_000,
            lateness_ms: 120_000,
            idle_timeout_ms: 600_000,
        }
    }
}

/// The parts of a heartbeat that session arithmetic needs.
#[derive(Clone, Copy, Debug)]
struct Point {
    time_ms: i64,
    position_ms: i64,
    playing: bool,
    has_ad: bool,
}

/// The watched interval of the step `a -> b` (SPEC 5.4), if it is watched.
#[inline]
fn watched_span(a: &Point, b: &Point) -> Option<(i64, i64)> {
    if !a.playing || a.has_ad || b.has_ad {
        return None;
    }
    let dp = b.position_ms.saturating_sub(a.position_ms);
    let dt = b.time_ms.saturating_sub(a.time_ms);
    (dp > 0 && dp <= dt.saturating_mul(2)).then_some((a.position_ms, b.position_ms))
}

/// An unfrozen heartbeat, held in full.
#[derive(Debug)]
struct HeldEvent {
    point: Point,
    fingerprint: u64,
    /// The id went to the dedup index's overflow map (fingerprint collision).
    id_in_overflow: bool,
    event_id: String,
}

impl HeldEvent {
    /// True when this heartbeat sorts before `(time_ms, event_id)`.
    #[inline]
    fn is_before(&self, time_ms: i64, event_id: &str) -> bool {
        match self.point.time_ms.cmp(&time_ms) {
            std::cmp::Ordering::Less => true,
            std::cmp::Ordering::Greater => false,
            std::cmp::Ordering::Equal => self.event_id.as_str() < event_id,
        }
    }
}

/// Summary of a session's frozen heartbeats (all older than the lateness
/// horizon, so nothing can be inserted among them any more).
#[derive(Debug, Default)]
struct Frozen {
    heartbeats: u64,
    watch_ms: i64,
    coverage: Coverage,
    first_ms: i64,
    /// The last frozen heartbeat: predecessor of the first tail heartbeat.
    last: Option<Point>,
}

/// An open session of one key.
#[derive(Debug)]
struct OpenSession {
    /// Identifies the session in the finalization queue and the change list.
    uid: u64,
    frozen: Frozen,
    /// Unfrozen heartbeats in `(time_ms, event_id)` order.
    tail: VecDeque<HeldEvent>,
    /// Totals over frozen part and tail.
    heartbeats: u64,
    watch_ms: i64,
    coverage: Coverage,
    devices: Vec<String>,
    /// Sorted, distinct.
    ads: Vec<String>,
    /// Start under which the store holds this session (as of the last drain).
    stored_start_ms: Option<i64>,
    /// Listed in `Sessionizer::changed`.
    dirty: bool,
}

impl OpenSession {
    fn new(uid: u64, first: HeldEvent) -> Self {
        let mut tail = VecDeque::with_capacity(8);
        tail.push_back(first);
        OpenSession {
            uid,
            frozen: Frozen::default(),
            tail,
            heartbeats: 1,
            watch_ms: 0,
            coverage: Coverage::default(),
            devices: Vec::new(),
            ads: Vec::new(),
            stored_start_ms: None,
            dirty: false,
        }
    }

    fn start_ms(&self) -> i64 {
        if self.frozen.heartbeats > 0 {
            self.frozen.first_ms
        } else {
            self.tail[0].point.time_ms
        }
    }

    fn end_ms(&self) -> i64 {
        self.last_point().time_ms
    }

    fn last_point(&self) -> Point {
        match self.tail.back() {
            Some(last) => last.point,
            None => self
                .frozen
                .last
                .expect("a session holds at least one heartbeat"),
        }
    }

    /// True when the first heartbeat sorts before `(time_ms, event_id)`.
    /// Frozen heartbeats are older than any heartbeat still accepted.
    #[inline]
    fn starts_before(&self, time_ms: i64, event_id: &str) -> bool {
        self.frozen.heartbeats > 0 || self.tail[0].is_before(time_ms, event_id)
    }

    /// True when `(time_ms, event_id)` sorts before the last heartbeat.
    #[inline]
    fn ends_after(&self, time_ms: i64, event_id: &str) -> bool {
        self.tail
            .back()
            .is_some_and(|last| !last.is_before(time_ms, event_id))
    }

    #[inline]
    fn count_step(&mut self, a: &Point, b: &Point) {
        if let Some((lo, hi)) = watched_span(a, b) {
            self.watch_ms = self.watch_ms.saturating_add(hi.saturating_sub(lo));
            self.coverage.add(lo, hi);
        }
    }

    /// Adds a heartbeat that sorts after every held one.
    #[inline]
    fn append(&mut self, event: HeldEvent) {
        let last = self.last_point();
        self.count_step(&last, &event.point);
        self.tail.push_back(event);
        self.heartbeats += 1;
    }

    /// Adds a heartbeat that sorts before every held one (the start moves).
    fn prepend(&mut self, event: HeldEvent) {
        debug_assert_eq!(
            self.frozen.heartbeats, 0,
            "nothing sorts before frozen heartbeats"
        );
        let first = self.tail[0].point;
        self.count_step(&event.point, &first);
        self.tail.push_front(event);
        self.heartbeats += 1;
    }

    /// Adds a heartbeat that sorts between two tail heartbeats: the step it
    /// splits is replaced, so the totals are rebuilt.
    fn insert_within(&mut self, event: HeldEvent) {
        let (time_ms, event_id) = (event.point.time_ms, event.event_id.as_str());
        let index = self
            .tail
            .partition_point(|held| held.is_before(time_ms, event_id));
        self.tail.insert(index, event);
        self.heartbeats += 1;
        self.watch_ms = self.frozen.watch_ms;
        self.coverage = self.frozen.coverage.clone();
        let mut previous = self.frozen.last;
        for index in 0..self.tail.len() {
            let point = self.tail[index].point;
            if let Some(a) = previous {
                self.count_step(&a, &point);
            }
            previous = Some(point);
        }
    }

    /// Appends a later session of the same key; `self` already ends with the
    /// heartbeat that bridges the two.
    fn absorb(&mut self, later: OpenSession) {
        debug_assert_eq!(
            later.frozen.heartbeats, 0,
            "a later session cannot be frozen"
        );
        let last = self.last_point();
        self.count_step(&last, &later.tail[0].point);
        self.heartbeats += later.heartbeats;
        self.watch_ms = self.watch_ms.saturating_add(later.watch_ms);
        self.coverage.extend(&later.coverage);
        self.tail.extend(later.tail);
        for device in later.devices {
            self.add_device(device);
        }
        for ad in later.ads {
            self.add_ad(ad);
        }
    }

    #[inline]
    fn add_device(&mut self, device_id: String) {
        if !self.devices.contains(&device_id) {
            self.devices.push(device_id);
        }
    }

    #[inline]
    fn add_ad(&mut self, ad_id: String) {
        if ad_id.is_empty() {
            return;
        }
        if let Err(index) = self.ads.binary_search(&ad_id) {
            self.ads.insert(index, ad_id);
        }
    }

    /// Folds tail heartbeats older than `horizon_ms` into the frozen summary.
    #[inline]
    fn freeze_before(&mut self, horizon_ms: i64, ids: &mut IdIndex) {
        while self
            .tail
            .front()
            .is_some_and(|first| first.point.time_ms < horizon_ms)
        {
            let event = self.tail.pop_front().expect("checked non-empty");
            let frozen = &mut self.frozen;
            match frozen.last {
                Some(previous) => {
                    if let Some((lo, hi)) = watched_span(&previous, &event.point) {
                        frozen.watch_ms = frozen.watch_ms.saturating_add(hi.saturating_sub(lo));
                        frozen.coverage.add(lo, hi);
                    }
                }
                None => frozen.first_ms = event.point.time_ms,
            }
            frozen.heartbeats += 1;
            frozen.last = Some(event.point);
            ids.remove(event.fingerprint, &event.event_id, event.id_in_overflow);
        }
    }

    fn to_session(&self, user_id: &str, video_id: &str) -> Session {
        Session {
            user_id: user_id.to_owned(),
            video_id: video_id.to_owned(),
            start_ms: self.start_ms(),
            end_ms: self.end_ms(),
            heartbeats: self.heartbeats,
            watch_ms: self.watch_ms,
            coverage_ms: self.coverage.covered_ms(),
            last_position_ms: self.last_point().position_ms,
            ads: self.ads.clone(),
            devices: self.devices.len() as u64,
        }
    }
}

/// State of one `(user_id, video_id)` key.
#[derive(Debug, Default)]
struct KeySlot {
    user_id: String,
    video_id: String,
    /// Bumped when the slot is released, so queued references go stale.
    generation: u32,
    live: bool,
    /// Open sessions sorted by start, separated by at least the gap.
    sessions: Vec<OpenSession>,
    /// `[start, end]` of idle-flushed sessions an accepted heartbeat could
    /// still reach.
    closed: Vec<(i64, i64)>,
    /// Processing time of the last push.
    last_push_ms: i64,
    /// An entry for this slot is in the idle queue.
    idle_scheduled: bool,
}

impl KeySlot {
    /// True when an unfrozen heartbeat with this id is held here.
    fn holds_id(&self, fingerprint: u64, event_id: &str) -> bool {
        self.sessions.iter().any(|session| {
            session
                .tail
                .iter()
                .any(|held| held.fingerprint == fingerprint && held.event_id == event_id)
        })
    }

    fn in_closed_span(&self, time_ms: i64) -> bool {
        self.closed
            .iter()
            .any(|&(start, end)| start <= time_ms && time_ms <= end)
    }

    fn key(&self, start_ms: i64) -> SessionKey {
        SessionKey {
            user_id: self.user_id.clone(),
            video_id: self.video_id.clone(),
            start_ms,
        }
    }
}

/// Marker uid of a watermark-queue entry that expires a slot's closed spans.
const CLOSED_SPANS: u64 = u64::MAX;

/// Incremental, exact sessionizer of one partition (see the module docs).
#[derive(Debug)]
pub struct Sessionizer {
    config: SessionConfig,
    watermark_ms: Option<i64>,
    slots: Vec<KeySlot>,
    free_slots: Vec<SlotIndex>,
    /// Live slots by user id (a user rarely has more than one open video).
    by_user: HashMap<String, Vec<SlotIndex>, FxBuildHasher>,
    ids: IdIndex,
    next_uid: u64,
    /// `(deadline, slot, generation, uid)`: a session may be final once the
    /// watermark passes `deadline` (a lower bound of `end + gap + lateness`,
    /// re-checked when popped). One entry per session.
    watermark_queue: BinaryHeap<Reverse<(i64, SlotIndex, u32, u64)>>,
    /// `(deadline, slot, generation)`: a key may be idle from `deadline` on.
    idle_queue: BinaryHeap<Reverse<(i64, SlotIndex, u32)>>,
    /// Record upserts (off for the offline batch, which only wants finals).
    track_upserts: bool,
    /// Sessions changed since the last drain, in order of first change.
    changed: Vec<(SlotIndex, u32, u64)>,
    deleted: Vec<SessionKey>,
    finals: Vec<Session>,
    open_sessions: usize,
    open_keys: usize,
}

impl Sessionizer {
    /// A sessionizer with no state. Negative durations count as zero.
    pub fn new(config: SessionConfig) -> Self {
        let config = SessionConfig {
            gap_ms: config.gap_ms.max(0),
            lateness_ms: config.lateness_ms.max(0),
            idle_timeout_ms: config.idle_timeout_ms.max(0),
        };
        Sessionizer {
            config,
            watermark_ms: None,
            slots: Vec::new(),
            free_slots: Vec::new(),
            by_user: HashMap::default(),
            ids: IdIndex::default(),
            next_uid: 0,
            watermark_queue: BinaryHeap::new(),
            idle_queue: BinaryHeap::new(),
            track_upserts: true,
            changed: Vec::new(),
            deleted: Vec::new(),
            finals: Vec::new(),
            open_sessions: 0,
            open_keys: 0,
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> SessionConfig {
        self.config
    }

    /// Feeds one heartbeat; `now_ms` is processing (wall) time, used only for
    /// the idle timeout.
    pub fn push(&mut self, event: Event, now_ms: i64) -> Outcome {
        if self.is_late(event.time_ms) {
            return Outcome::Late;
        }
        let id_fingerprint = fingerprint(&event.event_id);
        if self.holds_id(id_fingerprint, &event.event_id) {
            return Outcome::Duplicate;
        }
        let Event {
            event_id,
            user_id,
            video_id,
            device_id,
            time_ms,
            position_ms,
            state,
            ad_id,
        } = event;
        let slot_index = self.slot_for(user_id, video_id);
        if self.slots[slot_index as usize].in_closed_span(time_ms) {
            self.release_if_empty(slot_index);
            return Outcome::Late;
        }
        let watermark_ms = self.watermark_ms.map_or(time_ms, |wm| wm.max(time_ms));
        self.watermark_ms = Some(watermark_ms);
        let held = self.hold(
            slot_index,
            event_id,
            id_fingerprint,
            time_ms,
            position_ms,
            state,
            &ad_id,
        );
        let target = self.merge(slot_index, held, device_id, ad_id, now_ms);
        let horizon_ms = watermark_ms.saturating_sub(self.config.lateness_ms);
        self.slots[slot_index as usize].sessions[target].freeze_before(horizon_ms, &mut self.ids);
        Outcome::Merged
    }

    /// Finalizes sessions whose end + gap + lateness the watermark passed, and
    /// the sessions of keys idle (no push) for `idle_timeout_ms` of processing
    /// time.
    pub fn advance(&mut self, now_ms: i64) {
        if let Some(watermark_ms) = self.watermark_ms {
            self.finalize_by_watermark(watermark_ms);
        }
        self.flush_idle(now_ms);
    }

    /// Changes since the last drain, coalesced to at most one per session key:
    /// first the `Delete`s (sorted by key, none for a key written again in the
    /// same batch), then the `Upsert`s in order of first change, then the
    /// `Final`s in order of finalization. Deterministic for a given input.
    pub fn drain_changes(&mut self) -> Vec<Change> {
        let mut written = Vec::with_capacity(self.changed.len() + self.finals.len());
        for (slot_index, generation, uid) in self.changed.drain(..) {
            let KeySlot {
                user_id,
                video_id,
                generation: slot_generation,
                live,
                sessions,
                ..
            } = &mut self.slots[slot_index as usize];
            if !*live || *slot_generation != generation {
                continue;
            }
            let Some(session) = sessions.iter_mut().find(|session| session.uid == uid) else {
                continue;
            };
            session.dirty = false;
            let start_ms = session.start_ms();
            if let Some(stored_ms) = session.stored_start_ms.filter(|&stored| stored != start_ms) {
                self.deleted.push(SessionKey {
                    user_id: user_id.clone(),
                    video_id: video_id.clone(),
                    start_ms: stored_ms,
                });
            }
            session.stored_start_ms = Some(start_ms);
            written.push(Change::Upsert(session.to_session(user_id, video_id)));
        }
        written.extend(self.finals.drain(..).map(Change::Final));
        let mut deleted = std::mem::take(&mut self.deleted);
        if deleted.is_empty() {
            return written;
        }
        deleted.sort_unstable();
        deleted.dedup();
        let rewritten: HashSet<(&str, &str, i64)> = written
            .iter()
            .filter_map(|change| match change {
                Change::Upsert(session) | Change::Final(session) => Some((
                    session.user_id.as_str(),
                    session.video_id.as_str(),
                    session.start_ms,
                )),
                Change::Delete(_) => None,
            })
            .collect();
        deleted.retain(|key| {
            !rewritten.contains(&(key.user_id.as_str(), key.video_id.as_str(), key.start_ms))
        });
        let mut changes = Vec::with_capacity(deleted.len() + written.len());
        changes.extend(deleted.into_iter().map(Change::Delete));
        changes.extend(written);
        changes
    }

    /// Finalizes every open session: the end of a batch run. (A service
    /// shutting down keeps its sessions open and restores them on restart.)
    pub fn finish(&mut self) {
        for slot_index in 0..self.slots.len() as SlotIndex {
            while !self.slots[slot_index as usize].sessions.is_empty() {
                self.finalize(slot_index, 0);
            }
            self.release_if_empty(slot_index);
        }
    }

    /// Newest event time accepted (or restored), if any.
    pub fn watermark_ms(&self) -> Option<i64> {
        self.watermark_ms
    }

    /// Re-seeds state after a restart with the heartbeats of the open sessions
    /// (in any order; read back from the raw mirror, late ones excluded) and
    /// the stored watermark. Emits no changes for them: the store already
    /// holds these sessions under their current keys. Duplicates among them
    /// are ignored. Meant for a fresh sessionizer; on one that already holds
    /// state, heartbeats behind its lateness horizon are skipped and the rest
    /// are merged (and reported) like pushes.
    pub fn restore(&mut self, mut events: Vec<Event>, watermark_ms: Option<i64>, now_ms: i64) {
        let fresh = self.open_sessions == 0
            && self.changed.is_empty()
            && self.deleted.is_empty()
            && self.finals.is_empty();
        events.sort_unstable_by(|a, b| {
            (a.time_ms, a.event_id.as_str()).cmp(&(b.time_ms, b.event_id.as_str()))
        });
        let mut newest_ms = self.watermark_ms;
        let mut touched = Vec::new();
        for event in events {
            if self.is_late(event.time_ms) {
                continue;
            }
            let id_fingerprint = fingerprint(&event.event_id);
            if self.holds_id(id_fingerprint, &event.event_id) {
                continue;
            }
            let slot_index = self.slot_for(event.user_id, event.video_id);
            if self.slots[slot_index as usize].in_closed_span(event.time_ms) {
                self.release_if_empty(slot_index);
                continue;
            }
            newest_ms = newest_ms.max(Some(event.time_ms));
            let held = self.hold(
                slot_index,
                event.event_id,
                id_fingerprint,
                event.time_ms,
                event.position_ms,
                event.state,
                &event.ad_id,
            );
            self.merge(slot_index, held, event.device_id, event.ad_id, now_ms);
            touched.push(slot_index);
        }
        self.watermark_ms = newest_ms.max(watermark_ms);
        touched.dedup();
        if let Some(watermark_ms) = self.watermark_ms {
            let horizon_ms = watermark_ms.saturating_sub(self.config.lateness_ms);
            for &slot_index in &touched {
                for session in &mut self.slots[slot_index as usize].sessions {
                    session.freeze_before(horizon_ms, &mut self.ids);
                }
            }
        }
        if fresh {
            self.changed.clear();
            for slot in &mut self.slots {
                for session in &mut slot.sessions {
                    session.dirty = false;
                    session.stored_start_ms = Some(session.start_ms());
                }
            }
        }
    }

    /// Number of open sessions.
    pub fn open_sessions(&self) -> usize {
        self.open_sessions
    }

    /// Number of `(user_id, video_id)` keys with at least one open session.
    pub fn open_keys(&self) -> usize {
        self.open_keys
    }

    /// Heartbeats held in full (the unfrozen tails); the rest of the state is
    /// per session. Bounded by what arrives within the lateness window.
    pub fn held_events(&self) -> usize {
        debug_assert_eq!(
            self.ids.len(),
            self.slots
                .iter()
                .flat_map(|slot| &slot.sessions)
                .map(|session| session.tail.len())
                .sum::<usize>()
        );
        self.ids.len()
    }

    /// A sessionizer for a whole input sorted by `(time_ms, event_id)`: with
    /// zero lateness nothing is late, and everything behind the newest time is
    /// frozen and finalized as it goes, so memory stays bounded by the open
    /// sessions. Records no upserts.
    fn for_sorted_batch(gap_ms: i64) -> Self {
        let mut sessionizer = Sessionizer::new(SessionConfig {
            gap_ms,
            lateness_ms: 0,
            idle_timeout_ms: i64::MAX / 4,
        });
        sessionizer.track_upserts = false;
        sessionizer
    }

    fn is_late(&self, time_ms: i64) -> bool {
        self.watermark_ms
            .is_some_and(|wm| time_ms < wm.saturating_sub(self.config.lateness_ms))
    }

    fn holds_id(&self, id_fingerprint: u64, event_id: &str) -> bool {
        let slots = &self.slots;
        self.ids.contains(id_fingerprint, event_id, |slot_index| {
            slots[slot_index as usize].holds_id(id_fingerprint, event_id)
        })
    }

    /// Records the id and builds the held form of a heartbeat.
    #[allow(clippy::too_many_arguments)]
    fn hold(
        &mut self,
        slot_index: SlotIndex,
        event_id: String,
        id_fingerprint: u64,
        time_ms: i64,
        position_ms: i64,
        state: PlaybackState,
        ad_id: &str,
    ) -> HeldEvent {
        let id_in_overflow = self.ids.insert(id_fingerprint, &event_id, slot_index);
        HeldEvent {
            point: Point {
                time_ms,
                position_ms,
                playing: state == PlaybackState::Playing,
                has_ad: !ad_id.is_empty(),
            },
            fingerprint: id_fingerprint,
            id_in_overflow,
            event_id,
        }
    }

    /// The slot of `(user_id, video_id)`, created if needed.
    fn slot_for(&mut self, user_id: String, video_id: String) -> SlotIndex {
        if let Some(candidates) = self.by_user.get(user_id.as_str()) {
            for &slot_index in candidates {
                if self.slots[slot_index as usize].video_id == video_id {
                    return slot_index;
                }
            }
        }
        let slot_index = match self.free_slots.pop() {
            Some(slot_index) => slot_index,
            None => {
                self.slots.push(KeySlot::default());
                SlotIndex::try_from(self.slots.len() - 1).expect("fewer than 2^32 open keys")
            }
        };
        let slot = &mut self.slots[slot_index as usize];
        slot.user_id.clone_from(&user_id);
        slot.video_id = video_id;
        slot.live = true;
        self.by_user.entry(user_id).or_default().push(slot_index);
        slot_index
    }

    /// Adds a held heartbeat to its key's sessions (SPEC 5.3: it joins the
    /// session before it and/or after it when within the gap); returns the
    /// index of the session that now holds it.
    fn merge(
        &mut self,
        slot_index: SlotIndex,
        held: HeldEvent,
        device_id: String,
        ad_id: String,
        now_ms: i64,
    ) -> usize {
        let gap_ms = self.config.gap_ms;
        let slot = &mut self.slots[slot_index as usize];
        slot.last_push_ms = now_ms;
        let sessions = &mut slot.sessions;
        let time_ms = held.point.time_ms;
        let after = sessions.partition_point(|s| s.starts_before(time_ms, &held.event_id));
        let target = if after > 0 && sessions[after - 1].ends_after(time_ms, &held.event_id) {
            sessions[after - 1].insert_within(held);
            after - 1
        } else {
            let joins_previous =
                after > 0 && time_ms.saturating_sub(sessions[after - 1].end_ms()) < gap_ms;
            let joins_next = after < sessions.len()
                && sessions[after].start_ms().saturating_sub(time_ms) < gap_ms;
            match (joins_previous, joins_next) {
                (true, true) => {
                    let later = sessions.remove(after);
                    if let Some(stored_ms) = later.stored_start_ms {
                        self.deleted.push(slot.key(stored_ms));
                    }
                    let sessions = &mut slot.sessions;
                    sessions[after - 1].append(held);
                    sessions[after - 1].absorb(later);
                    self.open_sessions -= 1;
                    after - 1
                }
                (true, false) => {
                    sessions[after - 1].append(held);
                    after - 1
                }
                (false, true) => {
                    sessions[after].prepend(held);
                    after
                }
                (false, false) => {
                    let uid = self.next_uid;
                    self.next_uid += 1;
                    let deadline_ms = time_ms
                        .saturating_add(gap_ms)
                        .saturating_add(self.config.lateness_ms);
                    self.watermark_queue.push(Reverse((
                        deadline_ms,
                        slot_index,
                        slot.generation,
                        uid,
                    )));
                    if sessions.is_empty() {
                        self.open_keys += 1;
                    }
                    sessions.insert(after, OpenSession::new(uid, held));
                    self.open_sessions += 1;
                    after
                }
            }
        };
        let session = &mut slot.sessions[target];
        session.add_device(device_id);
        session.add_ad(ad_id);
        if self.track_upserts && !session.dirty {
            session.dirty = true;
            self.changed
                .push((slot_index, slot.generation, session.uid));
        }
        if !slot.idle_scheduled {
            slot.idle_scheduled = true;
            let deadline_ms = now_ms.saturating_add(self.config.idle_timeout_ms);
            self.idle_queue
                .push(Reverse((deadline_ms, slot_index, slot.generation)));
        }
        target
    }

    fn finalize_by_watermark(&mut self, watermark_ms: i64) {
        let lateness_ms = self.config.lateness_ms;
        while let Some(&Reverse((deadline_ms, slot_index, generation, uid))) =
            self.watermark_queue.peek()
        {
            if deadline_ms >= watermark_ms {
                break;
            }
            self.watermark_queue.pop();
            let slot = &mut self.slots[slot_index as usize];
            if !slot.live || slot.generation != generation {
                continue;
            }
            if uid == CLOSED_SPANS {
                let horizon_ms = watermark_ms.saturating_sub(lateness_ms);
                slot.closed.retain(|&(_, end_ms)| end_ms >= horizon_ms);
                if let Some(end_ms) = slot.closed.iter().map(|&(_, end_ms)| end_ms).min() {
                    let deadline_ms = end_ms.saturating_add(lateness_ms);
                    self.watermark_queue.push(Reverse((
                        deadline_ms,
                        slot_index,
                        generation,
                        CLOSED_SPANS,
                    )));
                }
                self.release_if_empty(slot_index);
                continue;
            }
            let Some(index) = slot.sessions.iter().position(|session| session.uid == uid) else {
                continue;
            };
            let due_ms = slot.sessions[index]
                .end_ms()
                .saturating_add(self.config.gap_ms)
                .saturating_add(lateness_ms);
            if due_ms < watermark_ms {
                self.finalize(slot_index, index);
                self.release_if_empty(slot_index);
            } else {
                self.watermark_queue
                    .push(Reverse((due_ms, slot_index, generation, uid)));
            }
        }
    }

    fn flush_idle(&mut self, now_ms: i64) {
        while let Some(&Reverse((deadline_ms, slot_index, generation))) = self.idle_queue.peek() {
            if deadline_ms > now_ms {
                break;
            }
            self.idle_queue.pop();
            let slot = &mut self.slots[slot_index as usize];
            if !slot.live || slot.generation != generation {
                continue;
            }
            slot.idle_scheduled = false;
            if slot.sessions.is_empty() {
                continue;
            }
            let due_ms = slot
                .last_push_ms
                .saturating_add(self.config.idle_timeout_ms);
            if due_ms > now_ms {
                slot.idle_scheduled = true;
                self.idle_queue
                    .push(Reverse((due_ms, slot_index, generation)));
                continue;
            }
            while let Some(session) = self.slots[slot_index as usize].sessions.first() {
                let (start_ms, end_ms) = (session.start_ms(), session.end_ms());
                self.slots[slot_index as usize]
                    .closed
                    .push((start_ms, end_ms));
                let deadline_ms = end_ms.saturating_add(self.config.lateness_ms);
                self.watermark_queue.push(Reverse((
                    deadline_ms,
                    slot_index,
                    generation,
                    CLOSED_SPANS,
                )));
                self.finalize(slot_index, 0);
            }
        }
    }

    /// Closes a session for good: its state is dropped and a `Final` queued.
    fn finalize(&mut self, slot_index: SlotIndex, index: usize) {
        let slot = &mut self.slots[slot_index as usize];
        let session = slot.sessions.remove(index);
        for held in &session.tail {
            self.ids
                .remove(held.fingerprint, &held.event_id, held.id_in_overflow);
        }
        let start_ms = session.start_ms();
        if let Some(stored_ms) = session.stored_start_ms.filter(|&stored| stored != start_ms) {
            self.deleted.push(slot.key(stored_ms));
        }
        self.finals
            .push(session.to_session(&slot.user_id, &slot.video_id));
        self.open_sessions -= 1;
        if slot.sessions.is_empty() {
            self.open_keys -= 1;
        }
    }

    /// Frees a slot that holds nothing any more.
    fn release_if_empty(&mut self, slot_index: SlotIndex) {
        let slot = &mut self.slots[slot_index as usize];
        if !slot.live || !slot.sessions.is_empty() || !slot.closed.is_empty() {
            return;
        }
        if let Some(candidates) = self.by_user.get_mut(slot.user_id.as_str()) {
            candidates.retain(|&candidate| candidate != slot_index);
            if candidates.is_empty() {
                self.by_user.remove(slot.user_id.as_str());
            }
        }
        slot.live = false;
        slot.generation = slot.generation.wrapping_add(1);
        slot.idle_scheduled = false;
        slot.user_id = String::new();
        slot.video_id = String::new();
        self.free_slots.push(slot_index);
    }
}

/// Offline, whole-input sessionization (no lateness limit), used by
/// `hbmesh sessionize`: the first copy of each `event_id` in input order
/// counts; the rest is the streaming code path over the input sorted by
/// `(time_ms, event_id)`. Sessions come back sorted by
/// `(user_id, video_id, start_ms)`.
pub fn sessionize_all(events: Vec<Event>, gap_ms: i64) -> Vec<Session> {
    let mut seen: HashSet<&str, FxBuildHasher> =
        HashSet::with_capacity_and_hasher(events.len(), FxBuildHasher::default());
    let first_copy: Vec<bool> = events
        .iter()
        .map(|event| seen.insert(event.event_id.as_str()))
        .collect();
    drop(seen);
    let mut unique: Vec<Event> = events
        .into_iter()
        .zip(first_copy)
        .filter_map(|(event, first)| first.then_some(event))
        .collect();
    unique.sort_unstable_by(|a, b| {
        (a.time_ms, a.event_id.as_str()).cmp(&(b.time_ms, b.event_id.as_str()))
    });
    let mut sessionizer = Sessionizer::for_sorted_batch(gap_ms);
    let mut sessions = Vec::new();
    for (index, event) in unique.into_iter().enumerate() {
        let outcome = sessionizer.push(event, 0);
        debug_assert_eq!(outcome, Outcome::Merged, "sorted, deduplicated input");
        if index % 4096 == 4095 {
            sessionizer.advance(0);
            sessions.append(&mut sessionizer.finals);
        }
    }
    sessionizer.finish();
    sessions.append(&mut sessionizer.finals);
    sessions.sort_unstable_by(|a, b| {
        (a.user_id.as_str(), a.video_id.as_str(), a.start_ms).cmp(&(
            b.user_id.as_str(),
            b.video_id.as_str(),
            b.start_ms,
        ))
    });
    sessions
}
