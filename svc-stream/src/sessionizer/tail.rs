//! A session's unfrozen heartbeats, held in full as 25-byte records: most of
//! an open session's memory is its tail, one record per heartbeat of the
//! lateness window.

use std::collections::VecDeque;

use super::id::{pack_hex, EventId, HexId};

/// The parts of a heartbeat that session arithmetic needs.
#[derive(Clone, Copy, Debug)]
pub(super) struct Point {
    pub(super) time_ms: i64,
    pub(super) position_ms: i64,
    pub(super) playing: bool,
    pub(super) has_ad: bool,
}

/// A heartbeat about to be held: borrowed from the push.
#[derive(Clone, Copy, Debug)]
pub(super) struct NewHeld<'a> {
    pub(super) point: Point,
    pub(super) event_id: &'a str,
    /// How much event time a tail spans before its front is frozen: what
    /// a growing tail is sized for.
    pub(super) hold_ms: i64,
}

const PLAYING: u8 = 1;
const HAS_AD: u8 = 2;
/// The id is not 32 hex digits: `id` holds the index of its text among the
/// tail's texts.
const TEXT: u8 = 4;
/// The id is 32 hex digits without hyphens.
const PLAIN: u8 = 8;
/// Time or position is too far from the tail's base for 32 bits: `time`
/// holds the index of both among the tail's wide values.
const WIDE: u8 = 16;

/// One held heartbeat: time and position as 32-bit offsets from the tail's
/// base (a tail spans about the lateness window, so they nearly always fit).
/// Byte arrays only, so records pack at 25 bytes with no padding.
#[derive(Clone, Copy, Debug)]
pub(super) struct Held {
    time: [u8; 4],
    position: [u8; 4],
    id: [u8; 16],
    flags: u8,
}

impl Held {
    fn index_in(field: [u8; 4]) -> usize {
        u32::from_ne_bytes(field) as usize
    }

    fn text_index(&self) -> Option<usize> {
        (self.flags & TEXT != 0)
            .then(|| Self::index_in(self.id[..4].try_into().expect("four bytes")))
    }

    fn wide_index(&self) -> Option<usize> {
        (self.flags & WIDE != 0).then(|| Self::index_in(self.time))
    }
}

/// Values of the rare records that do not fit inline, in slots that are
/// reused.
#[derive(Debug)]
struct Slots<T> {
    slots: Vec<Option<T>>,
    free: Vec<u32>,
}

impl<T> Default for Slots<T> {
    fn default() -> Self {
        Slots {
            slots: Vec::new(),
            free: Vec::new(),
        }
    }
}

impl<T> Slots<T> {
    fn add(&mut self, value: T) -> u32 {
        match self.free.pop() {
            Some(index) => {
                self.slots[index as usize] = Some(value);
                index
            }
            None => {
                self.slots.push(Some(value));
                (self.slots.len() - 1) as u32
            }
        }
    }

    fn take(&mut self, index: usize) -> T {
        self.free.push(index as u32);
        self.slots[index].take().expect("a held value")
    }

    fn get(&self, index: usize) -> &T {
        self.slots[index].as_ref().expect("a held value")
    }
}

/// What a tail keeps beside its records for the rare ones.
#[derive(Debug, Default)]
struct Aside {
    /// Ids that are not 32 hex digits.
    texts: Slots<Box<str>>,
    /// `(time_ms, position_ms)` too far from the base.
    wide: Slots<(i64, i64)>,
}

/// Held heartbeats in `(time_ms, event_id)` order.
#[derive(Default)]
pub(super) struct Tail {
    records: VecDeque<Held>,
    /// What record offsets count from: the values of the record that
    /// started or last rebased the tail.
    base_time_ms: i64,
    base_position_ms: i64,
    /// Only for sessions that hold a record that does not fit inline.
    aside: Option<Box<Aside>>,
}

impl Tail {
    /// An empty tail in `buffer` (an emptied tail's records).
    pub(super) fn in_buffer(mut buffer: VecDeque<Held>) -> Tail {
        buffer.clear();
        Tail {
            records: buffer,
            ..Tail::default()
        }
    }

    /// The tail's record buffer, for a new tail to reuse (see
    /// [`Tail::in_buffer`]); the values aside go with the tail.
    pub(super) fn into_buffer(self) -> VecDeque<Held> {
        self.records
    }

    #[inline]
    pub(super) fn len(&self) -> usize {
        self.records.len()
    }

    #[inline]
    pub(super) fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    #[inline]
    pub(super) fn front(&self) -> Option<&Held> {
        self.records.front()
    }

    #[inline]
    pub(super) fn back(&self) -> Option<&Held> {
        self.records.back()
    }

    #[inline]
    pub(super) fn get(&self, index: usize) -> &Held {
        &self.records[index]
    }

    fn aside(&self) -> &Aside {
        self.aside.as_deref().expect("values aside")
    }

    fn aside_mut(&mut self) -> &mut Aside {
        self.aside.get_or_insert_default()
    }

    /// `(time_ms, position_ms)` of a record of this tail.
    #[inline]
    fn values_of(&self, held: &Held) -> (i64, i64) {
        match held.wide_index() {
            None => (
                self.base_time_ms + i64::from(i32::from_ne_bytes(held.time)),
                self.base_position_ms + i64::from(i32::from_ne_bytes(held.position)),
            ),
            Some(index) => *self.aside().wide.get(index),
        }
    }

    /// The time of a record of this tail.
    #[inline]
    pub(super) fn time_of(&self, held: &Held) -> i64 {
        self.values_of(held).0
    }

    /// The heartbeat a record of this tail stands for.
    #[inline]
    pub(super) fn point_of(&self, held: &Held) -> Point {
        let (time_ms, position_ms) = self.values_of(held);
        Point {
            time_ms,
            position_ms,
            playing: held.flags & PLAYING != 0,
            has_ad: held.flags & HAS_AD != 0,
        }
    }

    /// The id of a record of this tail.
    #[inline]
    pub(super) fn id_of<'a>(&'a self, held: &Held) -> EventId<'a> {
        match held.text_index() {
            None => EventId::Hex(HexId {
                bytes: held.id,
                hyphens: held.flags & PLAIN == 0,
            }),
            Some(index) => EventId::Text(self.aside().texts.get(index)),
        }
    }

    /// True when `held` sorts before `(time_ms, event_id)`.
    #[inline]
    pub(super) fn is_before(&self, held: &Held, time_ms: i64, event_id: &[u8]) -> bool {
        let held_ms = self.time_of(held);
        held_ms < time_ms || (held_ms == time_ms && self.id_of(held).cmp_text(event_id).is_lt())
    }

    /// True when a held heartbeat has the id `event_id`.
    pub(super) fn holds(&self, event_id: &str) -> bool {
        self.records
            .iter()
            .any(|held| self.id_of(held).is(event_id))
    }

    /// Time and position as offsets from the base, when both fit.
    #[inline]
    fn offsets(&self, time_ms: i64, position_ms: i64) -> Option<([u8; 4], [u8; 4])> {
        let time = i32::try_from(time_ms.checked_sub(self.base_time_ms)?).ok()?;
        let position = i32::try_from(position_ms.checked_sub(self.base_position_ms)?).ok()?;
        Some((time.to_ne_bytes(), position.to_ne_bytes()))
    }

    /// Stores `time_ms` and `position_ms` in `held`: inline when they fit,
    /// aside otherwise (`held` holds nothing aside yet).
    fn place_values(&mut self, held: &mut Held, time_ms: i64, position_ms: i64) {
        match self.offsets(time_ms, position_ms) {
            Some((time, position)) => {
                held.flags &= !WIDE;
                (held.time, held.position) = (time, position);
            }
            None => {
                held.flags |= WIDE;
                let index = self.aside_mut().wide.add((time_ms, position_ms));
                (held.time, held.position) = (index.to_ne_bytes(), [0; 4]);
            }
        }
    }

    /// Makes `(time_ms, position_ms)` the base and stores every record's
    /// values from it: a tail whose heartbeats moved far from where it
    /// started (a long session, a seek) keeps its records inline.
    fn rebase(&mut self, time_ms: i64, position_ms: i64) {
        let points: Vec<Point> = self
            .records
            .iter()
            .map(|held| self.point_of(held))
            .collect();
        if let Some(aside) = self.aside.as_deref_mut() {
            aside.wide = Slots::default();
        }
        (self.base_time_ms, self.base_position_ms) = (time_ms, position_ms);
        let mut records = std::mem::take(&mut self.records);
        for (held, point) in records.iter_mut().zip(points) {
            self.place_values(held, point.time_ms, point.position_ms);
        }
        self.records = records;
    }

    fn record(&mut self, new: NewHeld<'_>) -> Held {
        let Point {
            time_ms,
            position_ms,
            playing,
            has_ad,
        } = new.point;
        if self.records.is_empty() {
            (self.base_time_ms, self.base_position_ms) = (time_ms, position_ms);
        } else if self.offsets(time_ms, position_ms).is_none() {
            self.rebase(time_ms, position_ms);
        }
        let mut flags = 0;
        if playing {
            flags |= PLAYING;
        }
        if has_ad {
            flags |= HAS_AD;
        }
        let id = match pack_hex(new.event_id.as_bytes()) {
            Some(hex) => {
                if !hex.hyphens {
                    flags |= PLAIN;
                }
                hex.bytes
            }
            None => {
                flags |= TEXT;
                let index = self.aside_mut().texts.add(new.event_id.into());
                let mut id = [0; 16];
                id[..4].copy_from_slice(&index.to_ne_bytes());
                id
            }
        };
        let mut held = Held {
            time: [0; 4],
            position: [0; 4],
            id,
            flags,
        };
        self.place_values(&mut held, time_ms, position_ms);
        held
    }

    /// Makes room for `more` records. A full tail grows to what its
    /// heartbeats' pace fills in `hold_ms`, plus three (both ends of the
    /// span, the heartbeat whose push freezes the front, one for an uneven
    /// pace), at most eight to fifteen times its length (see
    /// [`Tail::growth_spread`]) and at least by half. So it settles at what
    /// its session holds in a step or two, instead of through a run of
    /// growths whose freed buffers a crowd of sessions growing together
    /// leaves behind as holes in the heap.
    #[inline]
    fn make_room(&mut self, more: usize, hold_ms: i64) {
        let len = self.records.len();
        if len + more > self.records.capacity() {
            let paced = match (self.records.front(), self.records.back()) {
                (Some(front), Some(back)) if len >= 2 => {
                    let span_ms = self.time_of(back).saturating_sub(self.time_of(front));
                    let per_hold = (len as i64 - 1)
                        .saturating_mul(hold_ms)
                        .checked_div(span_ms)
                        .unwrap_or(i64::MAX);
                    usize::try_from(per_hold.saturating_add(3)).unwrap_or(usize::MAX)
                }
                _ => 0,
            };
            let step = len.saturating_mul(8 + self.growth_spread());
            // Past two thirds of the pace, the next growth (by half at
            // least) would overshoot it: the pace's size now instead.
            let capped = if step.saturating_mul(3) >= paced.saturating_mul(2) {
                paced
            } else {
                step
            };
            let target = capped.max(len + (len / 2).max(2)).max(len + more);
            self.records.reserve_exact(target - len);
        }
    }

    /// 0 to 7, from the front record's id: how many more times its length
    /// a tail still short of its pace grows by. Sessions that start
    /// together at one pace (a crowd joining a live event) would otherwise
    /// fill each capacity at the same heartbeat, and all grow at once: each
    /// growth copies into memory fresh from the system, and tens of
    /// thousands of them at once stall the stage for as long as the page
    /// faults take. Spread over the ids, the growth to the paced size lands
    /// over a span of event time as long as the one before it took.
    #[inline]
    fn growth_spread(&self) -> usize {
        self.records.front().map_or(0, |front| {
            let id = u128::from_ne_bytes(front.id);
            ((id ^ (id >> 64) ^ (id >> 35)) & 7) as usize
        })
    }

    #[inline]
    pub(super) fn push_back(&mut self, new: NewHeld<'_>) {
        let held = self.record(new);
        self.make_room(1, new.hold_ms);
        self.records.push_back(held);
    }

    pub(super) fn push_front(&mut self, new: NewHeld<'_>) {
        let held = self.record(new);
        self.make_room(1, new.hold_ms);
        self.records.push_front(held);
    }

    /// Inserts `new` where it sorts.
    pub(super) fn insert(&mut self, new: NewHeld<'_>) {
        let (time_ms, id) = (new.point.time_ms, new.event_id.as_bytes());
        let index = self
            .records
            .partition_point(|held| self.is_before(held, time_ms, id));
        let held = self.record(new);
        self.make_room(1, new.hold_ms);
        self.records.insert(index, held);
    }

    /// Takes the first heartbeat out (what it held aside is let go).
    #[inline]
    pub(super) fn pop_front(&mut self) -> Option<Point> {
        let held = *self.records.front()?;
        let point = self.point_of(&held);
        self.records.pop_front();
        self.let_go(&held);
        Some(point)
    }

    /// Lets go of what a record that left held aside.
    fn let_go(&mut self, held: &Held) {
        if let Some(index) = held.text_index() {
            self.aside_mut().texts.take(index);
        }
        if let Some(index) = held.wide_index() {
            self.aside_mut().wide.take(index);
        }
    }

    /// Appends a tail whose records all sort after this one's.
    pub(super) fn append(&mut self, mut later: Tail) {
        self.make_room(later.len(), 0);
        let mut records = std::mem::take(&mut later.records);
        for mut held in records.drain(..) {
            let point = later.point_of(&held);
            if let Some(index) = held.text_index() {
                let text = later.aside_mut().texts.take(index);
                let moved = self.aside_mut().texts.add(text);
                held.id[..4].copy_from_slice(&moved.to_ne_bytes());
            }
            if self.records.is_empty() {
                (self.base_time_ms, self.base_position_ms) = (point.time_ms, point.position_ms);
            }
            self.place_values(&mut held, point.time_ms, point.position_ms);
            self.records.push_back(held);
        }
    }

    #[cfg(test)]
    fn iter(&self) -> impl Iterator<Item = &Held> + '_ {
        self.records.iter()
    }
}

impl std::fmt::Debug for Tail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(
                self.records
                    .iter()
                    .map(|held| (self.time_of(held), self.id_of(held))),
            )
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new(time_ms: i64, event_id: &str) -> NewHeld<'_> {
        NewHeld {
            point: Point {
                time_ms,
                position_ms: time_ms * 2,
                playing: time_ms % 2 == 0,
                has_ad: time_ms % 3 == 0,
            },
            event_id,
            hold_ms: 0,
        }
    }

    const UUID: &str = "0f8fad5b-d9cb-469f-a165-70867728950e";
    const PLAIN_HEX: &str = "0f8fad5bd9cb469fa16570867728950e";

    #[test]
    fn a_held_heartbeat_takes_twenty_five_bytes() {
        assert_eq!(std::mem::size_of::<Held>(), 25);
    }

    #[test]
    fn records_give_back_what_was_held_whatever_the_id() {
        let mut tail = Tail::default();
        tail.push_back(new(2, UUID));
        tail.push_back(new(3, "not-a-uuid"));
        tail.push_front(new(1, "x"));
        tail.insert(new(2, "a"));
        let held: Vec<_> = tail
            .iter()
            .map(|held| {
                let point = tail.point_of(held);
                (
                    point.time_ms,
                    point.position_ms,
                    point.playing,
                    point.has_ad,
                )
            })
            .collect();
        assert_eq!(
            held,
            [
                (1, 2, false, false),
                (2, 4, true, false),
                (2, 4, true, false),
                (3, 6, false, true)
            ]
        );
        assert_eq!(
            format!("{tail:?}"),
            format!(
                "{:?}",
                [
                    (1, "x"),
                    (2, "0f8fad5b-d9cb-469f-a165-70867728950e"),
                    (2, "a"),
                    (3, "not-a-uuid")
                ]
            )
        );
        for id in ["x", UUID, "a", "not-a-uuid"] {
            assert!(tail.holds(id), "{id}");
        }
        assert!(!tail.holds("y"));
    }

    #[test]
    fn texts_are_let_go_as_records_leave_and_move_with_an_appended_tail() {
        let mut tail = Tail::default();
        tail.push_back(new(1, "one"));
        tail.push_back(new(2, "two"));
        tail.pop_front();
        assert!(!tail.holds("one"));
        tail.push_back(new(3, "three"));
        let texts = &tail.aside().texts;
        assert_eq!(texts.slots.len(), 2, "the freed slot was reused");
        let mut later = Tail::default();
        later.push_back(new(4, "four"));
        later.push_back(new(5, UUID));
        tail.append(later);
        assert_eq!(
            format!("{tail:?}"),
            format!("{:?}", [(2, "two"), (3, "three"), (4, "four"), (5, UUID)])
        );
    }

    #[test]
    fn hex_ids_with_or_without_hyphens_take_no_text() {
        let mut tail = Tail::default();
        tail.push_back(new(1, UUID));
        tail.push_back(new(1, PLAIN_HEX));
        assert!(tail.aside.is_none());
        assert!(tail.holds(PLAIN_HEX) && tail.holds(UUID));
        assert!(!tail.holds(&PLAIN_HEX.to_uppercase()));
        assert_eq!(
            format!("{tail:?}"),
            format!("{:?}", [(1, UUID), (1, PLAIN_HEX)])
        );
        // Same time: ordered as texts ('-' sorts before the digits).
        assert!(tail.is_before(tail.get(0), 1, PLAIN_HEX.as_bytes()));
        assert!(!tail.is_before(tail.get(1), 1, UUID.as_bytes()));
    }

    #[test]
    fn a_tail_grows_by_half_not_to_the_next_power_of_two() {
        let mut tail = Tail::default();
        for time_ms in 0..23 {
            tail.push_back(new(time_ms, UUID));
        }
        assert!(tail.records.capacity() < 32, "{}", tail.records.capacity());
    }

    #[test]
    fn tails_that_start_together_at_one_pace_do_not_all_grow_at_the_same_heartbeat() {
        let hold_ms = 120_000;
        let ids: Vec<String> = (0..64u64)
            .map(|n| {
                format!(
                    "{:032x}",
                    n.wrapping_mul(0x9e37_79b9_7f4a_7c15) as u128 * 0x1_0000_0001
                )
            })
            .collect();
        let mut grew_at = std::collections::BTreeSet::new();
        for id in &ids {
            let mut tail = Tail::default();
            let mut growths = Vec::new();
            // One heartbeat every 200 ms, as a crowd of players sends them.
            for beat in 0..1_000 {
                let before = tail.records.capacity();
                let mut held = new(beat * 200, id);
                held.hold_ms = hold_ms;
                tail.push_back(held);
                // The front freezes once the tail spans the hold.
                if beat * 200 - tail.time_of(tail.front().expect("held")) > hold_ms {
                    tail.pop_front();
                }
                if tail.records.capacity() != before {
                    growths.push(beat);
                }
            }
            // Still one growth to the pace's size, and no more than that.
            assert!(
                tail.records.capacity() <= 603,
                "{}",
                tail.records.capacity()
            );
            assert!(growths.len() <= 4, "{growths:?}");
            grew_at.insert(*growths.last().expect("a growth"));
        }
        assert!(grew_at.len() >= 8, "{grew_at:?}");
    }

    fn at(time_ms: i64, position_ms: i64, event_id: &str) -> NewHeld<'_> {
        NewHeld {
            point: Point {
                time_ms,
                position_ms,
                playing: true,
                has_ad: false,
            },
            event_id,
            hold_ms: 0,
        }
    }

    fn points(tail: &Tail) -> Vec<(i64, i64)> {
        tail.iter()
            .map(|held| {
                let point = tail.point_of(held);
                (point.time_ms, point.position_ms)
            })
            .collect()
    }

    #[test]
    fn values_far_from_the_base_are_held_exactly_and_let_go_with_their_record() {
        let mut tail = Tail::default();
        let far = [
            (i64::MIN, i64::MAX),
            (-1, 0),
            (0, i64::MIN),
            (i64::from(i32::MAX) + 1, 5),
            (i64::MAX, -1),
        ];
        for (time_ms, position_ms) in far {
            tail.push_back(at(time_ms, position_ms, UUID));
        }
        assert_eq!(points(&tail), far);
        assert_eq!(tail.time_of(tail.get(4)), i64::MAX);
        while tail.pop_front().is_some() {}
        if let Some(aside) = &tail.aside {
            assert!(aside.wide.slots.iter().all(Option::is_none));
        }
    }

    #[test]
    fn a_tail_that_moved_far_from_its_base_rebases_and_holds_its_records_inline() {
        let mut tail = Tail::default();
        let day_ms = 86_400_000;
        // A session of many days, one heartbeat a minute, the front frozen as it goes.
        for minute in 0..60 * 24 * 30 {
            let time_ms = 1_700_000_000_000 + minute * 60_000;
            tail.push_back(at(time_ms, minute * 60_000, UUID));
            if tail.len() > 3 {
                tail.pop_front();
            }
        }
        let last = 1_700_000_000_000 + (60 * 24 * 30 - 1) * 60_000;
        assert_eq!(
            points(&tail),
            [-2, -1, 0].map(|back| (
                last + back * 60_000,
                last - 1_700_000_000_000 + back * 60_000
            ))
        );
        assert!(tail.iter().all(|held| held.wide_index().is_none()));
        // A seek far away and back: records on both sides stay exact.
        tail.push_back(at(last + 1, 40 * day_ms, UUID));
        tail.push_back(at(last + 2, 0, UUID));
        tail.insert(at(last + 1, -40 * day_ms, "a"));
        let held = points(&tail);
        assert_eq!(
            held[3..],
            [
                (last + 1, 40 * day_ms),
                (last + 1, -40 * day_ms),
                (last + 2, 0)
            ]
        );
    }

    #[test]
    fn an_appended_tail_keeps_its_values_and_texts_whatever_its_base() {
        let mut tail = Tail::default();
        tail.push_back(at(10, 100, UUID));
        let mut later = Tail::default();
        later.push_back(at(i64::from(i32::MAX) * 2, 7, "later"));
        later.push_back(at(i64::from(i32::MAX) * 2 + 1, 8, UUID));
        tail.append(later);
        assert_eq!(
            points(&tail),
            [
                (10, 100),
                (i64::from(i32::MAX) * 2, 7),
                (i64::from(i32::MAX) * 2 + 1, 8)
            ]
        );
        assert!(tail.holds("later"));
        let mut empty = Tail::default();
        empty.append(tail);
        assert_eq!(points(&empty)[0], (10, 100));
    }
}
