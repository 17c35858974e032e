//! A session's unfrozen heartbeats, held in full as 33-byte records: most of
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
}

const PLAYING: u8 = 1;
const HAS_AD: u8 = 2;
/// The id is not 32 hex digits: `id` holds the index of its text among the
/// tail's texts.
const TEXT: u8 = 4;
/// The id is 32 hex digits without hyphens.
const PLAIN: u8 = 8;

/// One held heartbeat. Byte arrays only, so records pack at 33 bytes with no
/// padding.
#[derive(Clone, Copy, Debug)]
pub(super) struct Held {
    time_ms: [u8; 8],
    position_ms: [u8; 8],
    id: [u8; 16],
    flags: u8,
}

impl Held {
    #[inline]
    pub(super) fn time_ms(&self) -> i64 {
        i64::from_ne_bytes(self.time_ms)
    }

    #[inline]
    pub(super) fn point(&self) -> Point {
        Point {
            time_ms: self.time_ms(),
            position_ms: i64::from_ne_bytes(self.position_ms),
            playing: self.flags & PLAYING != 0,
            has_ad: self.flags & HAS_AD != 0,
        }
    }

    fn text_index(&self) -> Option<usize> {
        (self.flags & TEXT != 0)
            .then(|| u32::from_ne_bytes(self.id[..4].try_into().expect("four bytes")) as usize)
    }
}

/// Texts of the ids that are not 32 hex digits, in slots that are reused.
#[derive(Debug, Default)]
struct Texts {
    slots: Vec<Option<Box<str>>>,
    free: Vec<u32>,
}

impl Texts {
    fn add(&mut self, text: Box<str>) -> u32 {
        match self.free.pop() {
            Some(index) => {
                self.slots[index as usize] = Some(text);
                index
            }
            None => {
                self.slots.push(Some(text));
                (self.slots.len() - 1) as u32
            }
        }
    }

    fn take(&mut self, index: usize) -> Box<str> {
        self.free.push(index as u32);
        self.slots[index].take().expect("a held text")
    }

    fn get(&self, index: usize) -> &str {
        self.slots[index].as_deref().expect("a held text")
    }
}

/// Held heartbeats in `(time_ms, event_id)` order.
#[derive(Default)]
pub(super) struct Tail {
    records: VecDeque<Held>,
    /// Only for sessions that hold an id that is not 32 hex digits.
    texts: Option<Box<Texts>>,
}

impl Tail {
    /// An empty tail in `buffer` (an emptied tail's records).
    pub(super) fn in_buffer(mut buffer: VecDeque<Held>) -> Tail {
        buffer.clear();
        Tail {
            records: buffer,
            texts: None,
        }
    }

    /// The tail's record buffer, for a new tail to reuse (see
    /// [`Tail::in_buffer`]); the texts go with the tail.
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

    /// The id of a record of this tail.
    #[inline]
    pub(super) fn id_of<'a>(&'a self, held: &Held) -> EventId<'a> {
        match held.text_index() {
            None => EventId::Hex(HexId {
                bytes: held.id,
                hyphens: held.flags & PLAIN == 0,
            }),
            Some(index) => EventId::Text(self.texts.as_ref().expect("texts").get(index)),
        }
    }

    /// True when `held` sorts before `(time_ms, event_id)`.
    #[inline]
    pub(super) fn is_before(&self, held: &Held, time_ms: i64, event_id: &[u8]) -> bool {
        let held_ms = held.time_ms();
        held_ms < time_ms || (held_ms == time_ms && self.id_of(held).cmp_text(event_id).is_lt())
    }

    /// True when a held heartbeat has the id `event_id`.
    pub(super) fn holds(&self, event_id: &str) -> bool {
        self.records
            .iter()
            .any(|held| self.id_of(held).is(event_id))
    }

    fn record(&mut self, new: NewHeld<'_>) -> Held {
        let mut flags = 0;
        if new.point.playing {
            flags |= PLAYING;
        }
        if new.point.has_ad {
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
                let index = self.texts.get_or_insert_default().add(new.event_id.into());
                let mut id = [0; 16];
                id[..4].copy_from_slice(&index.to_ne_bytes());
                id
            }
        };
        Held {
            time_ms: new.point.time_ms.to_ne_bytes(),
            position_ms: new.point.position_ms.to_ne_bytes(),
            id,
            flags,
        }
    }

    /// Grows by half when full: a tail settles at about what its session
    /// holds over the lateness window, not at the next power of two.
    #[inline]
    fn make_room(&mut self, more: usize) {
        let len = self.records.len();
        if len + more > self.records.capacity() {
            self.records.reserve_exact((len / 2).max(2).max(more));
        }
    }

    #[inline]
    pub(super) fn push_back(&mut self, new: NewHeld<'_>) {
        let held = self.record(new);
        self.make_room(1);
        self.records.push_back(held);
    }

    pub(super) fn push_front(&mut self, new: NewHeld<'_>) {
        let held = self.record(new);
        self.make_room(1);
        self.records.push_front(held);
    }

    /// Inserts `new` where it sorts.
    pub(super) fn insert(&mut self, new: NewHeld<'_>) {
        let (time_ms, id) = (new.point.time_ms, new.event_id.as_bytes());
        let index = self
            .records
            .partition_point(|held| self.is_before(held, time_ms, id));
        let held = self.record(new);
        self.make_room(1);
        self.records.insert(index, held);
    }

    /// Takes the first record (its text, if any, is let go).
    #[inline]
    pub(super) fn pop_front(&mut self) -> Option<Held> {
        let held = self.records.pop_front()?;
        if let Some(index) = held.text_index() {
            self.texts.as_mut().expect("texts").take(index);
        }
        Some(held)
    }

    /// Appends a tail whose records all sort after this one's.
    pub(super) fn append(&mut self, mut later: Tail) {
        self.make_room(later.len());
        let mut later_texts = later.texts.take();
        for mut held in later.records.drain(..) {
            if let Some(index) = held.text_index() {
                let text = later_texts.as_mut().expect("texts").take(index);
                let moved = self.texts.get_or_insert_default().add(text);
                held.id[..4].copy_from_slice(&moved.to_ne_bytes());
            }
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
                    .map(|held| (held.time_ms(), self.id_of(held))),
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
        }
    }

    const UUID: &str = "0f8fad5b-d9cb-469f-a165-70867728950e";
    const PLAIN_HEX: &str = "0f8fad5bd9cb469fa16570867728950e";

    #[test]
    fn a_held_heartbeat_takes_thirty_three_bytes() {
        assert_eq!(std::mem::size_of::<Held>(), 33);
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
                let point = held.point();
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
        let texts = tail.texts.as_ref().expect("texts");
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
        assert!(tail.texts.is_none());
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
}
