//! The batch push: a software pipeline that loads what the next heartbeats
//! of a batch will touch while the current one is pushed, so memory
//! latencies overlap instead of adding up.

use super::engine::Fingerprints;
use super::events::{Event, EventRef};
use super::prefetch;
use super::sessions::Outcome;
use super::state::{Frozen, KeySlot, LiveSession};
use super::tail::Held;
use super::Sessionizer;

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

/// Distance in heartbeats between the stages of `push_batch`'s look-ahead:
/// enough pushes for a load to arrive, few enough that what was loaded is
/// still cached when used.
const AHEAD: usize = 8;

/// The part of a slot an in-order push reads: the key and the first session
/// up to its devices. (A hint's length: the
/// enum's tag, if it has one, may shift it by a few bytes.)
const SLOT_HOT_BYTES: usize =
    std::mem::offset_of!(KeySlot, sessions) + std::mem::offset_of!(LiveSession, ads);

impl Sessionizer {
    /// Feeds heartbeats in order, exactly as `push` one by one would, and
    /// returns their outcomes in the same order. Faster on large state: it
    /// looks ahead in the batch and loads what the next heartbeats will need
    /// (their table entries, key slots and tails) while the current one is
    /// processed, so memory latencies overlap instead of adding up.
    pub fn push_batch(&mut self, events: Vec<Event>) -> Vec<Outcome> {
        self.push_many(&events)
    }

    /// Like [`Sessionizer::push_batch`], borrowing the heartbeats: the caller
    /// keeps their buffers (to reuse them for the next batch, say).
    pub fn push_events(&mut self, events: &[Event]) -> Vec<Outcome> {
        self.push_many(events)
    }

    /// Like [`Sessionizer::push_batch`], for borrowed heartbeats.
    pub fn push_event_refs(&mut self, events: &[EventRef<'_>]) -> Vec<Outcome> {
        self.push_many(events)
    }

    fn push_many<E: AsEventRef>(&mut self, events: &[E]) -> Vec<Outcome> {
        // The strings of a heartbeat a few ahead are asked for while this
        // one is hashed: heartbeats borrowed from a large input (a file
        // sessionized offline) are no longer cached when pushed.
        let checks_ids = self.checks_ids;
        let fingerprints: Vec<Fingerprints> = (0..events.len())
            .map(|at| {
                if let Some(ahead) = events.get(at + AHEAD) {
                    let ahead = ahead.event_ref();
                    prefetch::line(ahead.event_id.as_ptr());
                    prefetch::line(ahead.user_id.as_ptr());
                    prefetch::line(ahead.video_id.as_ptr());
                }
                Fingerprints::of(&events[at].event_ref(), checks_ids)
            })
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
                if self.checks_ids {
                    self.ids.touch(ahead.id);
                }
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
                outcomes.push(self.push_fingerprinted(event, fingerprints[push]));
            }
        }
        outcomes
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
            let held: *const Held = held;
            prefetch::line(held);
            prefetch::line(held.wrapping_add(1));
        }
        // A push that will freeze a run reads the tail's front and the
        // frozen summary too, both cold by then.
        if session.tail_front_ms < self.freeze_before_ms() {
            if let Some(front) = session.tail.front() {
                prefetch::lines(front, 3 * std::mem::size_of::<Held>());
            }
            prefetch::lines(&session.frozen, std::mem::size_of::<Frozen>());
        }
    }
}
