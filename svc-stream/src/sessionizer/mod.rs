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
//! `watermark - lateness` (the *horizon*) is [`Outcome::Late`], so nothing can
//! ever be inserted before the horizon again: heartbeats behind it are
//! *frozen* (in runs, an eighth of the lateness at a time), folded into a
//! compact per-session summary (count, watched sum, coverage spans and the
//! last frozen heartbeat as the predecessor of the next step). Only the
//! unfrozen tail is held in full. Each session also carries running totals
//! over frozen part and tail, updated in O(1) for the usual in-order append, a
//! prepend or a bridge, and rebuilt from the frozen summary plus the tail when
//! a heartbeat lands inside the tail.
//!
//! Deduplication is exact by `event_id` for every heartbeat not behind the
//! horizon (a copy of an older one is late anyway): a table of id
//! fingerprints names the key slot holding each recent heartbeat, and a hit is
//! confirmed against the id held there. Entries age out with the horizon and
//! are swept in bulk, so memory follows the open sessions, not the history.
//!
//! Per heartbeat the cost is mostly memory latency (the key's slot, its tail,
//! two table entries), so ids are kept inline, a key's first session lives in
//! its slot, and [`Sessionizer::push_batch`] loads the state of the next
//! heartbeats of a batch while the current one is processed.
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
mod id;
mod ids;
mod prefetch;
#[cfg(test)]
mod tests;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet, VecDeque};

use hb_proto::v1::Heartbeat;

use coverage::Coverage;
use fxhash::{fingerprint, key_fingerprint, FxBuildHasher};
use id::Id;
use ids::{IdTable, KeyTable, SlotIndex, SlotSet};

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

/// A heartbeat borrowed from the caller, for the push methods that do not take
/// ownership ([`Sessionizer::push_ref`], [`Sessionizer::push_events`],
/// [`Sessionizer::push_event_refs`]): the caller keeps (and can reuse) the
/// buffers, and the sessionizer copies only what it keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventRef<'a> {
    pub event_id: &'a str,
    pub user_id: &'a str,
    pub video_id: &'a str,
    pub device_id: &'a str,
    /// Device clock, epoch milliseconds.
    pub time_ms: i64,
    pub position_ms: i64,
    pub state: PlaybackState,
    /// Non-empty while an ad plays.
    pub ad_id: &'a str,
}

impl<'a> EventRef<'a> {
    /// Borrows a wire heartbeat; fails like [`Event::from_proto`].
    pub fn from_proto(hb: &'a Heartbeat) -> Result<EventRef<'a>, String> {
        let (time_ms, position_ms, state) = Event::scalars(hb)?;
        Ok(EventRef {
            event_id: &hb.event_id,
            user_id: &hb.user_id,
            video_id: &hb.video_id,
            device_id: &hb.device_id,
            time_ms,
            position_ms,
            state,
            ad_id: &hb.ad_id,
        })
    }

    /// An owned copy.
    pub fn to_owned_event(&self) -> Event {
        Event {
            event_id: self.event_id.to_owned(),
            user_id: self.user_id.to_owned(),
            video_id: self.video_id.to_owned(),
            device_id: self.device_id.to_owned(),
            time_ms: self.time_ms,
            position_ms: self.position_ms,
            state: self.state,
            ad_id: self.ad_id.to_owned(),
        }
    }
}

impl Event {
    /// Borrows this event.
    #[inline]
    pub fn to_ref(&self) -> EventRef<'_> {
        EventRef {
            event_id: &self.event_id,
            user_id: &self.user_id,
            video_id: &self.video_id,
            device_id: &self.device_id,
            time_ms: self.time_ms,
            position_ms: self.position_ms,
            state: self.state,
            ad_id: &self.ad_id,
        }
    }
}

/// What the batch push methods can borrow a heartbeat from.
trait AsEventRef {
    fn event_ref(&self) -> EventRef<'_>;
}

impl AsEventRef for Event {
    #[inline]
    fn event_ref(&self) -> EventRef<'_> {
        self.to_ref()
    }
}

impl AsEventRef for EventRef<'_> {
    #[inline]
    fn event_ref(&self) -> EventRef<'_> {
        *self
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

/// A [`Session`] borrowed from the sessionizer's state (see
/// [`Sessionizer::drain_changes_with`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionRef<'a> {
    pub user_id: &'a str,
    pub video_id: &'a str,
    pub start_ms: i64,
    pub end_ms: i64,
    pub heartbeats: u64,
    pub watch_ms: i64,
    pub coverage_ms: i64,
    pub last_position_ms: i64,
    /// Distinct non-empty ad ids, sorted.
    pub ads: &'a [String],
    pub devices: u64,
}

impl SessionRef<'_> {
    /// An owned copy.
    pub fn to_session(&self) -> Session {
        Session {
            user_id: self.user_id.to_owned(),
            video_id: self.video_id.to_owned(),
            start_ms: self.start_ms,
            end_ms: self.end_ms,
            heartbeats: self.heartbeats,
            watch_ms: self.watch_ms,
            coverage_ms: self.coverage_ms,
            last_position_ms: self.last_position_ms,
            ads: self.ads.to_vec(),
            devices: self.devices,
        }
    }
}

/// A change as [`Sessionizer::drain_changes_with`] hands it over: an open
/// session borrowed, a final one (whose state is gone) and a deleted key owned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChangeRef<'a> {
    /// See [`Change::Upsert`].
    Upsert(SessionRef<'a>),
    /// See [`Change::Final`].
    Final(Session),
    /// See [`Change::Delete`].
    Delete(SessionKey),
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

/// An unfrozen heartbeat, held in full (64 bytes with a UUID inline).
#[derive(Debug)]
struct HeldEvent {
    time_ms: i64,
    position_ms: i64,
    event_id: Id,
    playing: bool,
    has_ad: bool,
}

impl HeldEvent {
    #[inline]
    fn point(&self) -> Point {
        Point {
            time_ms: self.time_ms,
            position_ms: self.position_ms,
            playing: self.playing,
            has_ad: self.has_ad,
        }
    }

    /// True when this heartbeat sorts before `(time_ms, event_id)`.
    #[inline]
    fn is_before(&self, time_ms: i64, event_id: &[u8]) -> bool {
        self.time_ms < time_ms || (self.time_ms == time_ms && self.event_id.as_bytes() < event_id)
    }
}

/// Summary of a session's frozen heartbeats (all older than the lateness
/// horizon, so nothing can be inserted among them any more). They are the
/// session's earliest, so its start time is theirs.
#[derive(Debug, Default)]
struct Frozen {
    heartbeats: u64,
    watch_ms: i64,
    coverage: Coverage,
    /// The last frozen heartbeat: predecessor of the first tail heartbeat.
    last: Option<Point>,
}

/// Distinct devices of a session; there is always at least one.
#[repr(C)]
#[derive(Debug)]
struct Devices {
    first: Id,
    more: Vec<Id>,
}

impl Devices {
    #[inline]
    fn add(&mut self, device_id: &str) {
        if !self.first.is(device_id) && !self.more.iter().any(|device| device.is(device_id)) {
            self.more.push(Id::new(device_id));
        }
    }

    fn count(&self) -> u64 {
        1 + self.more.len() as u64
    }

    fn absorb(&mut self, other: Devices) {
        for device in std::iter::once(other.first).chain(other.more) {
            self.add(device.as_str());
        }
    }
}

/// An open session of one key. Laid out hot first: an in-order push reads
/// and writes only the fields up to `devices`.
#[repr(C)]
#[derive(Debug)]
struct OpenSession {
    /// Time of the first heartbeat.
    start_ms: i64,
    /// The last heartbeat (the back of the tail, or the last frozen one).
    last: Point,
    /// Time of the first tail heartbeat (`i64::MAX` when the tail is empty),
    /// so deciding whether to freeze does not touch the tail.
    tail_front_ms: i64,
    /// Unfrozen heartbeats in `(time_ms, event_id)` order.
    tail: VecDeque<HeldEvent>,
    /// Totals over frozen part and tail.
    heartbeats: u64,
    watch_ms: i64,
    /// Identifies the session in the finalization queue.
    uid: u64,
    /// Changed since the last drain (its slot is in `Sessionizer::changed`).
    dirty: bool,
    /// Start under which the store holds this session (as of the last drain;
    /// `None` again once the start moved and that row's delete is queued).
    stored_start_ms: Option<i64>,
    coverage: Coverage,
    devices: Devices,
    /// Sorted, distinct.
    ads: Vec<String>,
    frozen: Frozen,
}

impl OpenSession {
    /// A session of one heartbeat; `tail` is an empty buffer to hold it in.
    fn new(uid: u64, first: HeldEvent, device_id: &str, mut tail: VecDeque<HeldEvent>) -> Self {
        let last = first.point();
        tail.push_back(first);
        OpenSession {
            uid,
            start_ms: last.time_ms,
            last,
            frozen: Frozen::default(),
            tail,
            tail_front_ms: last.time_ms,
            heartbeats: 1,
            watch_ms: 0,
            coverage: Coverage::default(),
            devices: Devices {
                first: Id::new(device_id),
                more: Vec::new(),
            },
            ads: Vec::new(),
            stored_start_ms: None,
            dirty: false,
        }
    }

    /// Some heartbeats are frozen (read from hot fields only).
    #[inline]
    fn has_frozen(&self) -> bool {
        debug_assert_eq!(
            self.heartbeats,
            self.frozen.heartbeats + self.tail.len() as u64
        );
        self.heartbeats > self.tail.len() as u64
    }

    /// True when the first heartbeat sorts before `(time_ms, event_id)`.
    /// Frozen heartbeats are older than any heartbeat still accepted.
    #[inline]
    fn starts_before(&self, time_ms: i64, event_id: &[u8]) -> bool {
        self.has_frozen()
            || self.start_ms < time_ms
            || (self.start_ms == time_ms && self.tail[0].event_id.as_bytes() < event_id)
    }

    /// True when `(time_ms, event_id)` sorts before the last heartbeat.
    #[inline]
    fn ends_after(&self, time_ms: i64, event_id: &[u8]) -> bool {
        match self.tail.back() {
            None => false,
            Some(last) => {
                time_ms < last.time_ms
                    || (time_ms == last.time_ms && event_id < last.event_id.as_bytes())
            }
        }
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
        let (last, point) = (self.last, event.point());
        self.count_step(&last, &point);
        self.last = point;
        if self.tail.is_empty() {
            self.tail_front_ms = point.time_ms;
        }
        self.tail.push_back(event);
        self.heartbeats += 1;
    }

    /// Adds a heartbeat that sorts before every held one (the start moves).
    fn prepend(&mut self, event: HeldEvent) {
        debug_assert_eq!(
            self.frozen.heartbeats, 0,
            "nothing sorts before frozen heartbeats"
        );
        let (point, first) = (event.point(), self.tail[0].point());
        self.count_step(&point, &first);
        self.start_ms = point.time_ms;
        self.tail_front_ms = point.time_ms;
        self.tail.push_front(event);
        self.heartbeats += 1;
    }

    /// Adds a heartbeat that sorts between two tail heartbeats: the step it
    /// splits is replaced, so the totals are rebuilt from the frozen summary.
    fn insert_within(&mut self, event: HeldEvent) {
        let index = self
            .tail
            .partition_point(|held| held.is_before(event.time_ms, event.event_id.as_bytes()));
        self.tail.insert(index, event);
        self.tail_front_ms = self.tail[0].time_ms;
        self.heartbeats += 1;
        self.watch_ms = self.frozen.watch_ms;
        self.coverage = self.frozen.coverage.clone();
        let mut previous = self.frozen.last;
        for index in 0..self.tail.len() {
            let point = self.tail[index].point();
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
        let (last, first) = (self.last, later.tail[0].point());
        self.count_step(&last, &first);
        self.last = later.last;
        self.heartbeats += later.heartbeats;
        self.watch_ms = self.watch_ms.saturating_add(later.watch_ms);
        self.coverage.extend(&later.coverage);
        self.tail.extend(later.tail);
        self.devices.absorb(later.devices);
        for ad in &later.ads {
            self.add_ad(ad);
        }
    }

    #[inline]
    fn add_ad(&mut self, ad_id: &str) {
        if ad_id.is_empty() {
            return;
        }
        if let Err(index) = self.ads.binary_search_by(|ad| ad.as_str().cmp(ad_id)) {
            self.ads.insert(index, ad_id.to_owned());
        }
    }

    /// Folds tail heartbeats older than `horizon_ms` into the frozen summary;
    /// returns how many.
    #[inline]
    fn freeze_before(&mut self, horizon_ms: i64) -> usize {
        let mut frozen_now = 0;
        while self
            .tail
            .front()
            .is_some_and(|first| first.time_ms < horizon_ms)
        {
            let event = self.tail.pop_front().expect("checked non-empty");
            let (frozen, point) = (&mut self.frozen, event.point());
            if let Some(previous) = frozen.last {
                if let Some((lo, hi)) = watched_span(&previous, &point) {
                    frozen.watch_ms = frozen.watch_ms.saturating_add(hi.saturating_sub(lo));
                    frozen.coverage.add(lo, hi);
                }
            }
            frozen.heartbeats += 1;
            frozen.last = Some(point);
            frozen_now += 1;
        }
        self.tail_front_ms = self.tail.front().map_or(i64::MAX, |first| first.time_ms);
        frozen_now
    }

    fn to_session(&self, user_id: &Id, video_id: &Id) -> Session {
        self.to_session_ref(user_id, video_id).to_session()
    }

    #[inline]
    fn to_session_ref<'a>(&'a self, user_id: &'a Id, video_id: &'a Id) -> SessionRef<'a> {
        SessionRef {
            user_id: user_id.as_str(),
            video_id: video_id.as_str(),
            start_ms: self.start_ms,
            end_ms: self.last.time_ms,
            heartbeats: self.heartbeats,
            watch_ms: self.watch_ms,
            coverage_ms: self.coverage.covered_ms(),
            last_position_ms: self.last.position_ms,
            ads: &self.ads,
            devices: self.devices.count(),
        }
    }
}

/// A key's open sessions, sorted by start and separated by at least the gap.
/// Nearly every key has one, kept inline in the slot.
// Inline on purpose: boxing the one session would add a cache miss per push.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Default)]
enum SessionList {
    #[default]
    Empty,
    One(OpenSession),
    Many(Vec<OpenSession>),
}

impl SessionList {
    #[inline]
    fn as_slice(&self) -> &[OpenSession] {
        match self {
            SessionList::Empty => &[],
            SessionList::One(session) => std::slice::from_ref(session),
            SessionList::Many(sessions) => sessions,
        }
    }

    #[inline]
    fn as_mut_slice(&mut self) -> &mut [OpenSession] {
        match self {
            SessionList::Empty => &mut [],
            SessionList::One(session) => std::slice::from_mut(session),
            SessionList::Many(sessions) => sessions,
        }
    }

    fn is_empty(&self) -> bool {
        matches!(self, SessionList::Empty)
    }

    fn insert(&mut self, index: usize, session: OpenSession) {
        *self = match std::mem::take(self) {
            SessionList::Empty => SessionList::One(session),
            SessionList::One(existing) => {
                let mut sessions = Vec::with_capacity(2);
                sessions.push(existing);
                sessions.insert(index, session);
                SessionList::Many(sessions)
            }
            SessionList::Many(mut sessions) => {
                sessions.insert(index, session);
                SessionList::Many(sessions)
            }
        };
    }

    fn remove(&mut self, index: usize) -> OpenSession {
        let (list, removed) = match std::mem::take(self) {
            SessionList::Empty => panic!("no session {index} to remove"),
            SessionList::One(session) => {
                assert_eq!(index, 0, "one session only");
                (SessionList::Empty, session)
            }
            SessionList::Many(mut sessions) => {
                let removed = sessions.remove(index);
                let list = if sessions.len() == 1 {
                    SessionList::One(sessions.pop().expect("one left"))
                } else {
                    SessionList::Many(sessions)
                };
                (list, removed)
            }
        };
        *self = list;
        removed
    }
}

/// State of one `(user_id, video_id)` key, laid out hot first.
#[repr(C)]
#[derive(Debug, Default)]
struct KeySlot {
    user_id: Id,
    video_id: Id,
    /// Bumped when the slot is released, so queued references go stale.
    generation: u32,
    live: bool,
    /// An entry for this slot is in the idle queue.
    idle_scheduled: bool,
    /// Processing time of the last push.
    last_push_ms: i64,
    /// `[start, end]` of idle-flushed sessions an accepted heartbeat could
    /// still reach (before `sessions`: every push reads its length).
    closed: Vec<(i64, i64)>,
    sessions: SessionList,
}

impl KeySlot {
    /// True when an unfrozen heartbeat with this id is held here.
    fn holds_id(&self, event_id: &str) -> bool {
        self.sessions
            .as_slice()
            .iter()
            .any(|session| session.tail.iter().any(|held| held.event_id.is(event_id)))
    }

    fn in_closed_span(&self, time_ms: i64) -> bool {
        self.closed
            .iter()
            .any(|&(start, end)| start <= time_ms && time_ms <= end)
    }

    fn key(&self, start_ms: i64) -> SessionKey {
        session_key(&self.user_id, &self.video_id, start_ms)
    }

    fn position_of(&self, uid: u64) -> Option<usize> {
        self.sessions
            .as_slice()
            .iter()
            .position(|session| session.uid == uid)
    }
}

fn session_key(user_id: &Id, video_id: &Id, start_ms: i64) -> SessionKey {
    SessionKey {
        user_id: user_id.as_str().to_owned(),
        video_id: video_id.as_str().to_owned(),
        start_ms,
    }
}

/// The hashes a push needs, computed once.
#[derive(Clone, Copy, Debug)]
struct Fingerprints {
    key: u64,
    id: u64,
}

impl Fingerprints {
    #[inline]
    fn of(event: &EventRef<'_>) -> Self {
        Fingerprints {
            key: key_fingerprint(event.user_id, event.video_id),
            id: fingerprint(event.event_id.as_bytes()),
        }
    }
}

/// Tail buffers kept for reuse (at most ~8 MiB of them).
const SPARE_TAILS: usize = 4_096;

/// Capacity of a new tail: the lateness window at one heartbeat per 5 s, so
/// most tails never regrow.
const TAIL_CAPACITY: usize = 32;

/// Distance in heartbeats between the stages of `push_batch`'s look-ahead:
/// enough pushes for a load to arrive, few enough that what was loaded is
/// still cached when used.
const AHEAD: usize = 8;

/// The part of a slot an in-order push reads: the key, the closed spans'
/// length and the first session up to its devices. (A hint's length: the
/// enum's tag, if it has one, may shift it by a few bytes.)
const SLOT_HOT_BYTES: usize =
    std::mem::offset_of!(KeySlot, sessions) + std::mem::offset_of!(OpenSession, ads);

/// What the drain reads of a slot: up to the first session's frozen summary.
const SLOT_DRAIN_BYTES: usize =
    std::mem::offset_of!(KeySlot, sessions) + std::mem::offset_of!(OpenSession, frozen);

/// Changed slots the drain asks for ahead of the one it writes out.
const DRAIN_AHEAD: usize = 8;

/// Marker uid of a watermark-queue entry that expires a slot's closed spans.
const CLOSED_SPANS: u64 = u64::MAX;

/// Incremental, exact sessionizer of one partition (see the module docs).
#[derive(Debug)]
pub struct Sessionizer {
    config: SessionConfig,
    watermark_ms: Option<i64>,
    slots: Vec<KeySlot>,
    free_slots: Vec<SlotIndex>,
    keys: KeyTable,
    /// Ids of recent heartbeats (every unfrozen one among them).
    ids: IdTable,
    /// Heartbeats in the tails.
    held: usize,
    /// Emptied tail buffers of finalized sessions, for new ones: a tail
    /// allocation is large enough to be slow in common allocators.
    spare_tails: Vec<VecDeque<HeldEvent>>,
    next_uid: u64,
    /// `(deadline, slot, generation, uid)`: a session may be final once the
    /// watermark passes `deadline` (a lower bound of `end + gap + lateness`,
    /// re-checked when popped). One entry per session.
    watermark_queue: BinaryHeap<Reverse<(i64, SlotIndex, u32, u64)>>,
    /// `(deadline, slot, generation)`: a key may be idle from `deadline` on.
    idle_queue: BinaryHeap<Reverse<(i64, SlotIndex, u32)>>,
    /// Record upserts (off for the offline batch, which only wants finals).
    track_upserts: bool,
    /// Slots holding a session changed since the last drain: the drain walks
    /// them in slot order without sorting a list of changes.
    changed: SlotSet,
    /// Scratch of `drain_changes_with`: the changed slots, in order.
    drained: Vec<SlotIndex>,
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
            keys: KeyTable::default(),
            ids: IdTable::default(),
            held: 0,
            spare_tails: Vec::new(),
            next_uid: 0,
            watermark_queue: BinaryHeap::new(),
            idle_queue: BinaryHeap::new(),
            track_upserts: true,
            changed: SlotSet::default(),
            drained: Vec::new(),
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
        self.push_ref(event.to_ref(), now_ms)
    }

    /// Like [`Sessionizer::push`], borrowing the heartbeat.
    pub fn push_ref(&mut self, event: EventRef<'_>, now_ms: i64) -> Outcome {
        let fingerprints = Fingerprints::of(&event);
        self.push_fingerprinted(event, fingerprints, now_ms)
    }

    /// Feeds heartbeats in order, exactly as `push` one by one would, and
    /// returns their outcomes in the same order. Faster on large state: it
    /// looks ahead in the batch and loads what the next heartbeats will need
    /// (their table entries, key slots and tails) while the current one is
    /// processed, so memory latencies overlap instead of adding up.
    pub fn push_batch(&mut self, events: Vec<Event>, now_ms: i64) -> Vec<Outcome> {
        self.push_many(&events, now_ms)
    }

    /// Like [`Sessionizer::push_batch`], borrowing the heartbeats: the caller
    /// keeps their buffers (to reuse them for the next batch, say).
    pub fn push_events(&mut self, events: &[Event], now_ms: i64) -> Vec<Outcome> {
        self.push_many(events, now_ms)
    }

    /// Like [`Sessionizer::push_batch`], for borrowed heartbeats.
    pub fn push_event_refs(&mut self, events: &[EventRef<'_>], now_ms: i64) -> Vec<Outcome> {
        self.push_many(events, now_ms)
    }

    fn push_many<E: AsEventRef>(&mut self, events: &[E], now_ms: i64) -> Vec<Outcome> {
        let fingerprints: Vec<Fingerprints> = events
            .iter()
            .map(|event| Fingerprints::of(&event.event_ref()))
            .collect();
        let mut outcomes = Vec::with_capacity(events.len());
        // A software pipeline: step `at` asks for the table entries of
        // heartbeat `at`, the slot of `at - AHEAD` (its table entry arrived
        // meanwhile) and the tail of `at - 2 * AHEAD` (its slot arrived), and
        // pushes `at - 3 * AHEAD`. Every load has a few pushes' time to
        // arrive, and the requests are spread out instead of flooding the
        // miss buffers.
        for at in 0..events.len() + 3 * AHEAD {
            if let Some(ahead) = fingerprints.get(at) {
                self.keys.touch(ahead.key);
                self.ids.touch(ahead.id);
            }
            if let Some(ahead) = at.checked_sub(AHEAD).and_then(|at| fingerprints.get(at)) {
                self.touch_slot(ahead.key, false);
            }
            if let Some(ahead) = at
                .checked_sub(2 * AHEAD)
                .and_then(|at| fingerprints.get(at))
            {
                self.touch_slot(ahead.key, true);
            }
            if let Some(push) = at.checked_sub(3 * AHEAD).filter(|&at| at < events.len()) {
                let event = events[push].event_ref();
                outcomes.push(self.push_fingerprinted(event, fingerprints[push], now_ms));
            }
        }
        outcomes
    }

    fn push_fingerprinted(
        &mut self,
        event: EventRef<'_>,
        fingerprints: Fingerprints,
        now_ms: i64,
    ) -> Outcome {
        if self.is_late(event.time_ms) {
            return Outcome::Late;
        }
        let id_fingerprint = fingerprints.id;
        if self.holds_id(id_fingerprint, event.event_id) {
            return Outcome::Duplicate;
        }
        let slot_index = self.slot_for(fingerprints.key, event.user_id, event.video_id);
        if self.slots[slot_index as usize].in_closed_span(event.time_ms) {
            self.release_if_empty(slot_index);
            return Outcome::Late;
        }
        let watermark_ms = self
            .watermark_ms
            .map_or(event.time_ms, |wm| wm.max(event.time_ms));
        self.watermark_ms = Some(watermark_ms);
        let target = self.merge(slot_index, event, id_fingerprint, now_ms);
        let (horizon_ms, freeze_before_ms) = (self.horizon_ms(), self.freeze_before_ms());
        let session = &mut self.slots[slot_index as usize].sessions.as_mut_slice()[target];
        if session.tail_front_ms < freeze_before_ms {
            self.held -= session.freeze_before(horizon_ms);
        }
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
    /// same batch), then the `Upsert`s (ordered by internal key slot), then the
    /// `Final`s in order of finalization. Deterministic for a given input.
    pub fn drain_changes(&mut self) -> Vec<Change> {
        let mut changes = Vec::with_capacity(self.finals.len());
        self.drain_changes_with(|change| {
            changes.push(match change {
                ChangeRef::Upsert(session) => Change::Upsert(session.to_session()),
                ChangeRef::Final(session) => Change::Final(session),
                ChangeRef::Delete(key) => Change::Delete(key),
            })
        });
        changes
    }

    /// The changes of [`Sessionizer::drain_changes`], in the same order, handed
    /// to `visit` one by one with each open session borrowed from the state:
    /// nothing is copied for an upsert the consumer only reads.
    pub fn drain_changes_with(&mut self, mut visit: impl FnMut(ChangeRef<'_>)) {
        let mut deleted = std::mem::take(&mut self.deleted);
        if !deleted.is_empty() {
            deleted.sort_unstable();
            deleted.dedup();
            // A key written again in this drain is no delete: one of the
            // finals, or a changed session of the key's live slot.
            let finals: HashSet<(&str, &str, i64), FxBuildHasher> = self
                .finals
                .iter()
                .map(|session| {
                    (
                        session.user_id.as_str(),
                        session.video_id.as_str(),
                        session.start_ms,
                    )
                })
                .collect();
            let (keys, slots) = (&self.keys, &self.slots);
            deleted.retain(|key| {
                let (user_id, video_id) = (key.user_id.as_str(), key.video_id.as_str());
                if finals.contains(&(user_id, video_id, key.start_ms)) {
                    return false;
                }
                let Some(slot_index) =
                    keys.find(key_fingerprint(user_id, video_id), |slot_index| {
                        let slot = &slots[slot_index as usize];
                        slot.user_id.is(user_id) && slot.video_id.is(video_id)
                    })
                else {
                    return true;
                };
                !slots[slot_index as usize]
                    .sessions
                    .as_slice()
                    .iter()
                    .any(|session| session.dirty && session.start_ms == key.start_ms)
            });
            for key in deleted.drain(..) {
                visit(ChangeRef::Delete(key));
            }
        }
        self.deleted = deleted;
        // One pass by slot, a walk through memory in order rather than at
        // random. Sessions that were changed and then merged away or
        // finalized are no longer in their slot; a released slot holds none.
        // (Keys the store holds under an older start were queued for delete
        // when the start moved.)
        let mut changed = std::mem::take(&mut self.drained);
        changed.clear();
        self.changed.drain(|slot_index| changed.push(slot_index));
        for (at, &slot_index) in changed.iter().enumerate() {
            if let Some(slot) = changed
                .get(at + DRAIN_AHEAD)
                .and_then(|&ahead| self.slots.get(ahead as usize))
            {
                prefetch::lines(slot, SLOT_DRAIN_BYTES);
            }
            let slot = &mut self.slots[slot_index as usize];
            let (user_id, video_id) = (&slot.user_id, &slot.video_id);
            for session in slot.sessions.as_mut_slice() {
                if session.dirty {
                    session.dirty = false;
                    session.stored_start_ms = Some(session.start_ms);
                    visit(ChangeRef::Upsert(session.to_session_ref(user_id, video_id)));
                }
            }
        }
        self.drained = changed;
        for session in self.finals.drain(..) {
            visit(ChangeRef::Final(session));
        }
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
        for event in &events {
            let event = event.to_ref();
            if self.is_late(event.time_ms) {
                continue;
            }
            let fingerprints = Fingerprints::of(&event);
            let id_fingerprint = fingerprints.id;
            if self.holds_id(id_fingerprint, event.event_id) {
                continue;
            }
            let slot_index = self.slot_for(fingerprints.key, event.user_id, event.video_id);
            if self.slots[slot_index as usize].in_closed_span(event.time_ms) {
                self.release_if_empty(slot_index);
                continue;
            }
            newest_ms = newest_ms.max(Some(event.time_ms));
            self.merge(slot_index, event, id_fingerprint, now_ms);
            touched.push(slot_index);
        }
        self.watermark_ms = newest_ms.max(watermark_ms);
        touched.dedup();
        if let Some(watermark_ms) = self.watermark_ms {
            let horizon_ms = watermark_ms.saturating_sub(self.config.lateness_ms);
            for &slot_index in &touched {
                for session in self.slots[slot_index as usize].sessions.as_mut_slice() {
                    self.held -= session.freeze_before(horizon_ms);
                }
            }
        }
        if fresh {
            self.changed.clear();
            for slot in &mut self.slots {
                for session in slot.sessions.as_mut_slice() {
                    session.dirty = false;
                    session.stored_start_ms = Some(session.start_ms);
                }
            }
        }
    }

    /// Re-seeds, after a restart, the spans `[start, end]` of sessions an
    /// idle flush made final, as `(user_id, video_id, start, end)`: a later
    /// heartbeat inside one stays [`Outcome::Late`], as it was before the
    /// restart. Call after [`Sessionizer::restore`]; spans the watermark has
    /// already made unreachable are skipped.
    pub fn restore_closed<'a>(
        &mut self,
        spans: impl IntoIterator<Item = (&'a str, &'a str, i64, i64)>,
    ) {
        let horizon_ms = self.horizon_ms();
        let lateness_ms = self.config.lateness_ms;
        for (user_id, video_id, start_ms, end_ms) in spans {
            if end_ms < horizon_ms {
                continue;
            }
            let slot_index = self.slot_for(key_fingerprint(user_id, video_id), user_id, video_id);
            let slot = &mut self.slots[slot_index as usize];
            slot.closed.push((start_ms, end_ms));
            let generation = slot.generation;
            self.watermark_queue.push(Reverse((
                end_ms.saturating_add(lateness_ms),
                slot_index,
                generation,
                CLOSED_SPANS,
            )));
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
            self.held,
            self.slots
                .iter()
                .flat_map(|slot| slot.sessions.as_slice())
                .map(|session| session.tail.len())
                .sum::<usize>()
        );
        self.held
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

    #[inline]
    fn is_late(&self, time_ms: i64) -> bool {
        self.watermark_ms
            .is_some_and(|wm| time_ms < wm.saturating_sub(self.config.lateness_ms))
    }

    /// Heartbeats older than this are late (and may be frozen).
    #[inline]
    fn horizon_ms(&self) -> i64 {
        self.watermark_ms
            .map_or(i64::MIN, |wm| wm.saturating_sub(self.config.lateness_ms))
    }

    #[inline]
    fn holds_id(&self, id_fingerprint: u64, event_id: &str) -> bool {
        let slots = &self.slots;
        self.ids
            .contains(id_fingerprint, self.horizon_ms(), |slot_index| {
                slots[slot_index as usize].holds_id(event_id)
            })
    }

    /// Asks for what a push to the key with this fingerprint will read: the
    /// slot (with its first session inline), or with `tail`, the lines where
    /// its last session's tail ends. A hint only: a wrong or missing slot
    /// costs nothing.
    #[inline]
    fn touch_slot(&self, key_fingerprint: u64, tail: bool) {
        let Some(slot) = self
            .keys
            .candidate(key_fingerprint)
            .and_then(|slot_index| self.slots.get(slot_index as usize))
        else {
            return;
        };
        if !tail {
            prefetch::lines(slot, SLOT_HOT_BYTES);
            return;
        }
        let Some(session) = slot.sessions.as_slice().last() else {
            return;
        };
        if let Some(held) = session.tail.back() {
            let held: *const HeldEvent = held;
            prefetch::line(held);
            prefetch::line(held.wrapping_add(1));
        }
        // A push that will freeze a run reads the tail's front and the
        // frozen summary too, both cold by then.
        if session.tail_front_ms < self.freeze_before_ms() {
            if let Some(front) = session.tail.front() {
                prefetch::lines(front, 3 * std::mem::size_of::<HeldEvent>());
            }
            prefetch::lines(&session.frozen, std::mem::size_of::<Frozen>());
        }
    }

    /// A push freezes its session's tail once the front is older than this:
    /// an eighth of the lateness behind the horizon, so runs are frozen at
    /// once and the tail's front is read once per run.
    #[inline]
    fn freeze_before_ms(&self) -> i64 {
        self.horizon_ms()
            .saturating_sub(self.config.lateness_ms / 8)
    }

    /// The slot of `(user_id, video_id)`, created if needed.
    #[inline]
    fn slot_for(&mut self, key_fingerprint: u64, user_id: &str, video_id: &str) -> SlotIndex {
        let slots = &self.slots;
        let found = self.keys.find(key_fingerprint, |slot_index| {
            let slot = &slots[slot_index as usize];
            slot.user_id.is(user_id) && slot.video_id.is(video_id)
        });
        if let Some(slot_index) = found {
            return slot_index;
        }
        let slot_index = match self.free_slots.pop() {
            Some(slot_index) => slot_index,
            None => {
                self.slots.push(KeySlot::default());
                SlotIndex::try_from(self.slots.len() - 1).expect("fewer than 2^32 open keys")
            }
        };
        self.keys.insert(key_fingerprint, slot_index);
        let slot = &mut self.slots[slot_index as usize];
        slot.user_id = Id::new(user_id);
        slot.video_id = Id::new(video_id);
        slot.live = true;
        slot_index
    }

    /// Adds a heartbeat to its key's sessions (SPEC 5.3: it joins the session
    /// before it and/or after it when within the gap); returns the index of
    /// the session that now holds it.
    fn merge(
        &mut self,
        slot_index: SlotIndex,
        event: EventRef<'_>,
        id_fingerprint: u64,
        now_ms: i64,
    ) -> usize {
        let EventRef {
            event_id,
            device_id,
            time_ms,
            position_ms,
            state,
            ad_id,
            ..
        } = event;
        let horizon_ms = self.horizon_ms();
        self.ids
            .insert(id_fingerprint, time_ms, slot_index, horizon_ms);
        self.held += 1;
        let held = HeldEvent {
            time_ms,
            position_ms,
            event_id: Id::new(event_id),
            playing: state == PlaybackState::Playing,
            has_ad: !ad_id.is_empty(),
        };
        let gap_ms = self.config.gap_ms;
        let slot = &mut self.slots[slot_index as usize];
        slot.last_push_ms = now_ms;
        let id = held.event_id.as_bytes();
        let sessions = slot.sessions.as_slice();
        let after = sessions.partition_point(|s| s.starts_before(time_ms, id));
        let inside = after > 0 && sessions[after - 1].ends_after(time_ms, id);
        let joins_previous =
            after > 0 && time_ms.saturating_sub(sessions[after - 1].last.time_ms) < gap_ms;
        let joins_next =
            after < sessions.len() && sessions[after].start_ms.saturating_sub(time_ms) < gap_ms;
        let target = match (inside, joins_previous, joins_next) {
            (true, _, _) => {
                slot.sessions.as_mut_slice()[after - 1].insert_within(held);
                after - 1
            }
            (false, true, true) => {
                let later = slot.sessions.remove(after);
                if let Some(stored_ms) = later.stored_start_ms {
                    self.deleted.push(slot.key(stored_ms));
                }
                let previous = &mut slot.sessions.as_mut_slice()[after - 1];
                previous.append(held);
                previous.absorb(later);
                self.open_sessions -= 1;
                after - 1
            }
            (false, true, false) => {
                slot.sessions.as_mut_slice()[after - 1].append(held);
                after - 1
            }
            (false, false, true) => {
                let session = &mut slot.sessions.as_mut_slice()[after];
                session.prepend(held);
                // The store holds it under its old start (queued once: the
                // start only moves earlier).
                if let Some(stored_ms) = session.stored_start_ms.take() {
                    self.deleted.push(slot.key(stored_ms));
                }
                after
            }
            (false, false, false) => {
                let uid = self.next_uid;
                self.next_uid += 1;
                let deadline_ms = time_ms
                    .saturating_add(gap_ms)
                    .saturating_add(self.config.lateness_ms);
                self.watermark_queue
                    .push(Reverse((deadline_ms, slot_index, slot.generation, uid)));
                if slot.sessions.is_empty() {
                    self.open_keys += 1;
                }
                let tail_buffer = self
                    .spare_tails
                    .pop()
                    .unwrap_or_else(|| VecDeque::with_capacity(TAIL_CAPACITY));
                slot.sessions
                    .insert(after, OpenSession::new(uid, held, device_id, tail_buffer));
                self.open_sessions += 1;
                after
            }
        };
        let session = &mut slot.sessions.as_mut_slice()[target];
        session.devices.add(device_id);
        session.add_ad(ad_id);
        if self.track_upserts && !session.dirty {
            session.dirty = true;
            self.changed.insert(slot_index);
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
            let Some(index) = slot.position_of(uid) else {
                continue;
            };
            let due_ms = slot.sessions.as_slice()[index]
                .last
                .time_ms
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
            while let Some(session) = self.slots[slot_index as usize].sessions.as_slice().first() {
                let (start_ms, end_ms) = (session.start_ms, session.last.time_ms);
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
        let mut session = slot.sessions.remove(index);
        self.held -= session.tail.len();
        if self.spare_tails.len() < SPARE_TAILS {
            let mut tail = std::mem::take(&mut session.tail);
            tail.clear();
            self.spare_tails.push(tail);
        }
        if let Some(stored_ms) = session
            .stored_start_ms
            .filter(|&stored_ms| stored_ms != session.start_ms)
        {
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
        self.keys.remove(
            key_fingerprint(slot.user_id.as_str(), slot.video_id.as_str()),
            slot_index,
        );
        slot.live = false;
        slot.generation = slot.generation.wrapping_add(1);
        slot.idle_scheduled = false;
        slot.user_id = Id::default();
        slot.video_id = Id::default();
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
