//! Per-key state: a key's slot, its open sessions, each with the unfrozen
//! tail of heartbeats held in full, the frozen summary and running totals.

use super::coverage::Coverage;
use super::id::Id;
use super::sessions::{Session, SessionKey, SessionRef};
use super::spill::Spill;
use super::tail::{NewHeld, Point, Tail};

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

/// Summary of a session's frozen heartbeats (all older than the lateness
/// horizon, so nothing can be inserted among them any more). They are the
/// session's earliest, so its start time is theirs.
#[derive(Debug, Default)]
pub(super) struct Frozen {
    watch_ms: i64,
    coverage: Coverage,
    /// The last frozen heartbeat: predecessor of the first tail heartbeat.
    last: Option<Point>,
}

/// Distinct devices of a session; there is always at least one.
#[repr(C)]
#[derive(Debug)]
pub(super) struct Devices {
    first: Id,
    more: Spill<Id>,
}

impl Devices {
    #[inline]
    pub(super) fn add(&mut self, device_id: &str) {
        if !self.first.is(device_id)
            && !self
                .more
                .as_slice()
                .iter()
                .any(|device| device.is(device_id))
        {
            self.more.as_vec_mut().push(Id::new(device_id));
        }
    }

    fn count(&self) -> u64 {
        1 + self.more.as_slice().len() as u64
    }

    fn absorb(&mut self, mut other: Devices) {
        for device in std::iter::once(other.first).chain(other.more.take()) {
            self.add(device.as_str());
        }
    }
}

/// An open session of one key. Laid out hot first: an in-order push reads
/// and writes only the fields up to `devices`.
#[repr(C)]
#[derive(Debug)]
pub(super) struct LiveSession {
    /// Time of the first heartbeat.
    pub(super) start_ms: i64,
    /// The last heartbeat (the back of the tail, or the last frozen one).
    pub(super) last: Point,
    /// Time of the first tail heartbeat (`i64::MAX` when the tail is empty),
    /// so deciding whether to freeze does not touch the tail.
    pub(super) tail_front_ms: i64,
    /// Unfrozen heartbeats in `(time_ms, event_id)` order.
    pub(super) tail: Tail,
    /// Totals over frozen part and tail.
    heartbeats: u64,
    watch_ms: i64,
    /// Identifies the session in the finalization queue (a wrapping
    /// counter: see `Sessionizer::finalize_by_watermark`).
    pub(super) uid: u32,
    /// Changed since the last drain (its slot is in `Sessionizer::changed`).
    pub(super) dirty: bool,
    /// The store holds this session, under `stored_ms` (see
    /// [`LiveSession::stored_start_ms`]); beside `dirty`, where an
    /// `Option<i64>` would take a word more.
    stored: bool,
    stored_ms: i64,
    coverage: Coverage,
    pub(super) devices: Devices,
    /// Sorted, distinct.
    pub(super) ads: Spill<String>,
    pub(super) frozen: Frozen,
}

impl LiveSession {
    /// A session of one heartbeat; `tail` is an empty tail to hold it in.
    pub(super) fn new(uid: u32, first: NewHeld<'_>, device_id: &str, mut tail: Tail) -> Self {
        let last = first.point;
        tail.push_back(first);
        LiveSession {
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
                more: Spill::default(),
            },
            ads: Spill::default(),
            stored: false,
            stored_ms: 0,
            dirty: false,
        }
    }

    /// Start under which the store holds this session (as of the last drain;
    /// `None` again once the start moved and that row's delete is queued).
    #[inline]
    pub(super) fn stored_start_ms(&self) -> Option<i64> {
        self.stored.then_some(self.stored_ms)
    }

    #[inline]
    pub(super) fn set_stored_start_ms(&mut self, start_ms: Option<i64>) {
        (self.stored, self.stored_ms) = (start_ms.is_some(), start_ms.unwrap_or(0));
    }

    /// Some heartbeats are frozen: the tail does not hold them all (read
    /// from hot fields only).
    #[inline]
    fn has_frozen(&self) -> bool {
        self.heartbeats > self.tail.len() as u64
    }

    /// True when the first heartbeat sorts before `(time_ms, event_id)`.
    /// Frozen heartbeats are older than any heartbeat still accepted.
    #[inline]
    pub(super) fn starts_before(&self, time_ms: i64, event_id: &[u8]) -> bool {
        self.has_frozen()
            || self.start_ms < time_ms
            || (self.start_ms == time_ms
                && self.tail.id_of(self.tail.get(0)).cmp_text(event_id).is_lt())
    }

    /// True when `(time_ms, event_id)` sorts before the last heartbeat.
    #[inline]
    pub(super) fn ends_after(&self, time_ms: i64, event_id: &[u8]) -> bool {
        match self.tail.back() {
            None => false,
            Some(last) => {
                let last_ms = self.tail.time_of(last);
                time_ms < last_ms
                    || (time_ms == last_ms && self.tail.id_of(last).cmp_text(event_id).is_gt())
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
    pub(super) fn append(&mut self, event: NewHeld<'_>) {
        let (last, point) = (self.last, event.point);
        self.count_step(&last, &point);
        self.last = point;
        if self.tail.is_empty() {
            self.tail_front_ms = point.time_ms;
        }
        self.tail.push_back(event);
        self.heartbeats += 1;
    }

    /// Adds a heartbeat that sorts before every held one (the start moves).
    pub(super) fn prepend(&mut self, event: NewHeld<'_>) {
        debug_assert!(!self.has_frozen(), "nothing sorts before frozen heartbeats");
        let (point, first) = (event.point, self.tail.point_of(self.tail.get(0)));
        self.count_step(&point, &first);
        self.start_ms = point.time_ms;
        self.tail_front_ms = point.time_ms;
        self.tail.push_front(event);
        self.heartbeats += 1;
    }

    /// Adds a heartbeat that sorts between two tail heartbeats: the step it
    /// splits is replaced, so the totals are rebuilt from the frozen summary.
    pub(super) fn insert_within(&mut self, event: NewHeld<'_>) {
        self.tail.insert(event);
        self.tail_front_ms = self.tail.time_of(self.tail.get(0));
        self.heartbeats += 1;
        self.watch_ms = self.frozen.watch_ms;
        self.coverage = self.frozen.coverage.clone();
        let mut previous = self.frozen.last;
        for index in 0..self.tail.len() {
            let point = self.tail.point_of(self.tail.get(index));
            if let Some(a) = previous {
                self.count_step(&a, &point);
            }
            previous = Some(point);
        }
    }

    /// Appends a later session of the same key; `self` already ends with the
    /// heartbeat that bridges the two.
    pub(super) fn absorb(&mut self, later: LiveSession) {
        debug_assert!(!later.has_frozen(), "a later session cannot be frozen");
        let (last, first) = (self.last, later.tail.point_of(later.tail.get(0)));
        self.count_step(&last, &first);
        self.last = later.last;
        self.heartbeats += later.heartbeats;
        self.watch_ms = self.watch_ms.saturating_add(later.watch_ms);
        self.coverage.extend(&later.coverage);
        self.tail.append(later.tail);
        self.devices.absorb(later.devices);
        for ad in later.ads.as_slice() {
            self.add_ad(ad);
        }
    }

    #[inline]
    pub(super) fn add_ad(&mut self, ad_id: &str) {
        if ad_id.is_empty() {
            return;
        }
        if let Err(index) = self
            .ads
            .as_slice()
            .binary_search_by(|ad| ad.as_str().cmp(ad_id))
        {
            self.ads.as_vec_mut().insert(index, ad_id.to_owned());
        }
    }

    /// Folds tail heartbeats older than `horizon_ms` into the frozen summary;
    /// returns how many.
    #[inline]
    pub(super) fn freeze_before(&mut self, horizon_ms: i64) -> usize {
        let mut frozen_now = 0;
        while self
            .tail
            .front()
            .is_some_and(|first| self.tail.time_of(first) < horizon_ms)
        {
            let point = self.tail.pop_front().expect("checked non-empty");
            let frozen = &mut self.frozen;
            if let Some(previous) = frozen.last {
                if let Some((lo, hi)) = watched_span(&previous, &point) {
                    frozen.watch_ms = frozen.watch_ms.saturating_add(hi.saturating_sub(lo));
                    frozen.coverage.add(lo, hi);
                }
            }
            frozen.last = Some(point);
            frozen_now += 1;
        }
        self.tail_front_ms = self
            .tail
            .front()
            .map_or(i64::MAX, |first| self.tail.time_of(first));
        frozen_now
    }

    pub(super) fn to_session(&self, user_id: &Id, video_id: &Id) -> Session {
        self.to_session_ref(user_id, video_id).to_session()
    }

    #[inline]
    pub(super) fn to_session_ref<'a>(
        &'a self,
        user_id: &'a Id,
        video_id: &'a Id,
    ) -> SessionRef<'a> {
        SessionRef {
            user_id: user_id.as_str(),
            video_id: video_id.as_str(),
            start_ms: self.start_ms,
            end_ms: self.last.time_ms,
            heartbeats: self.heartbeats,
            watch_ms: self.watch_ms,
            coverage_ms: self.coverage.covered_ms(),
            last_position_ms: self.last.position_ms,
            ads: self.ads.as_slice(),
            devices: self.devices.count(),
        }
    }
}

/// A key's open sessions, sorted by start and separated by at least the gap.
/// Nearly every key has one, kept inline in the slot.
// Inline on purpose: boxing the one session would add a cache miss per push.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Default)]
pub(super) enum SessionList {
    #[default]
    Empty,
    One(LiveSession),
    Many(Vec<LiveSession>),
}

impl SessionList {
    #[inline]
    pub(super) fn as_slice(&self) -> &[LiveSession] {
        match self {
            SessionList::Empty => &[],
            SessionList::One(session) => std::slice::from_ref(session),
            SessionList::Many(sessions) => sessions,
        }
    }

    #[inline]
    pub(super) fn as_mut_slice(&mut self) -> &mut [LiveSession] {
        match self {
            SessionList::Empty => &mut [],
            SessionList::One(session) => std::slice::from_mut(session),
            SessionList::Many(sessions) => sessions,
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        matches!(self, SessionList::Empty)
    }

    pub(super) fn insert(&mut self, index: usize, session: LiveSession) {
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

    pub(super) fn remove(&mut self, index: usize) -> LiveSession {
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
pub(super) struct KeySlot {
    pub(super) user_id: Id,
    pub(super) video_id: Id,
    pub(super) live: bool,
    pub(super) sessions: SessionList,
}

impl KeySlot {
    /// True when an unfrozen heartbeat with this id is held here.
    pub(super) fn holds_id(&self, event_id: &str) -> bool {
        self.sessions
            .as_slice()
            .iter()
            .any(|session| session.tail.holds(event_id))
    }

    pub(super) fn key(&self, start_ms: i64) -> SessionKey {
        session_key(&self.user_id, &self.video_id, start_ms)
    }
}

fn session_key(user_id: &Id, video_id: &Id, start_ms: i64) -> SessionKey {
    SessionKey {
        user_id: user_id.as_str().to_owned(),
        video_id: video_id.as_str().to_owned(),
        start_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every open session pays for its slot: keep rarely used fields behind
    /// one pointer each.
    #[test]
    fn a_key_slot_with_its_first_session_inline_stays_within_368_bytes() {
        assert!(
            std::mem::size_of::<KeySlot>() <= 368,
            "{}",
            std::mem::size_of::<KeySlot>()
        );
    }
}
