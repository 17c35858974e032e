//! Compact exact indexes from 64-bit fingerprints to key slots: the
//! `(user_id, video_id)` keys (to find a key's slot) and the event ids of
//! recent heartbeats (for deduplication). Open addressing with linear probing
//! over small inline entries, so a lookup is usually one cache line; neither
//! stores strings: every candidate is verified against the slot it names, so
//! fingerprint collisions cost a probe, never a wrong answer.

/// Index of a key slot.
pub(super) type SlotIndex = u32;

/// Fingerprint value marking an empty entry (real fingerprints avoid it).
const EMPTY: u32 = 0;

/// The stored form of a key fingerprint: its low 32 bits (which also place
/// the entry), never [`EMPTY`].
#[inline]
fn stored(fingerprint: u64) -> u32 {
    (fingerprint as u32).max(1)
}

/// Fingerprint -> slot, exact insert and remove (backward-shift deletion).
/// 8-byte entries: every candidate is verified against its slot's key, so
/// 32 bits of fingerprint only need to keep false candidates rare.
#[derive(Debug)]
pub(super) struct KeyTable {
    entries: Vec<(u32, SlotIndex)>,
    len: usize,
}

impl Default for KeyTable {
    fn default() -> Self {
        KeyTable {
            entries: vec![(EMPTY, 0); 16],
            len: 0,
        }
    }
}

impl KeyTable {
    #[inline]
    fn mask(&self) -> usize {
        self.entries.len() - 1
    }

    /// The slot whose key has this fingerprint and passes `is_key`.
    #[inline]
    pub(super) fn find(
        &self,
        fingerprint: u64,
        is_key: impl Fn(SlotIndex) -> bool,
    ) -> Option<SlotIndex> {
        let fingerprint = stored(fingerprint);
        let mask = self.mask();
        let mut at = fingerprint as usize & mask;
        loop {
            let (entry, slot) = self.entries[at];
            if entry == EMPTY {
                return None;
            }
            if entry == fingerprint && is_key(slot) {
                return Some(slot);
            }
            at = (at + 1) & mask;
        }
    }

    /// The first slot with this fingerprint, unverified (a load hint).
    #[inline]
    pub(super) fn candidate(&self, fingerprint: u64) -> Option<SlotIndex> {
        let fingerprint = stored(fingerprint);
        let mask = self.mask();
        let mut at = fingerprint as usize & mask;
        loop {
            let (entry, slot) = self.entries[at];
            if entry == EMPTY {
                return None;
            }
            if entry == fingerprint {
                return Some(slot);
            }
            at = (at + 1) & mask;
        }
    }

    /// Loads the entry where this fingerprint's lookup starts (a hint).
    #[inline]
    pub(super) fn touch(&self, fingerprint: u64) {
        super::prefetch::line(&self.entries[stored(fingerprint) as usize & self.mask()]);
    }

    /// Records a slot (its key is not in the table yet).
    pub(super) fn insert(&mut self, fingerprint: u64, slot: SlotIndex) {
        if (self.len + 1) * 2 > self.entries.len() {
            self.grow();
        }
        self.place(stored(fingerprint), slot);
        self.len += 1;
    }

    fn place(&mut self, fingerprint: u32, slot: SlotIndex) {
        let mask = self.mask();
        let mut at = fingerprint as usize & mask;
        while self.entries[at].0 != EMPTY {
            at = (at + 1) & mask;
        }
        self.entries[at] = (fingerprint, slot);
    }

    fn grow(&mut self) {
        let size = self.entries.len() * 2;
        let old = std::mem::replace(&mut self.entries, vec![(EMPTY, 0); size]);
        for (fingerprint, slot) in old {
            if fingerprint != EMPTY {
                self.place(fingerprint, slot);
            }
        }
    }

    /// Forgets the entry of `slot`.
    pub(super) fn remove(&mut self, fingerprint: u64, slot: SlotIndex) {
        let fingerprint = stored(fingerprint);
        let mask = self.mask();
        let mut at = fingerprint as usize & mask;
        loop {
            let entry = self.entries[at];
            if entry.0 == EMPTY {
                return;
            }
            if entry == (fingerprint, slot) {
                break;
            }
            at = (at + 1) & mask;
        }
        // Backward-shift: pull later entries of the run into the hole when
        // their home is not between the hole and them.
        let mut hole = at;
        let mut next = (hole + 1) & mask;
        loop {
            let entry = self.entries[next];
            if entry.0 == EMPTY {
                break;
            }
            let home = entry.0 as usize & mask;
            let distance_to_home = next.wrapping_sub(home) & mask;
            let distance_to_hole = next.wrapping_sub(hole) & mask;
            if distance_to_home >= distance_to_hole {
                self.entries[hole] = entry;
                hole = next;
            }
            next = (next + 1) & mask;
        }
        self.entries[hole] = (EMPTY, 0);
        self.len -= 1;
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.len
    }
}

/// Fingerprint -> (slot, event time) of recent heartbeats. Entries are never
/// removed as their heartbeats freeze: an entry older than the lateness
/// horizon is dead (any heartbeat with its id would be late anyway). Every
/// insert moves a sweep on by [`SWEEP_STEP`] entries (in rounds of
/// [`SWEEP_EVERY`] inserts), dropping the dead ones it passes, and a table
/// that fills moves into a larger one [`MOVE_STEP`] entries per insert: no
/// insert pays for a pass over the whole table, which at millions of ids
/// would pause the stage (and every acknowledgement waiting on it).
#[derive(Debug)]
pub(super) struct IdTable {
    /// Entries as words ([`IdEntry::word`]; 0 is empty), so that a new table
    /// comes zeroed from the system (its pages are then written ahead all
    /// the same, see [`Successor`]).
    entries: Vec<u64>,
    /// Occupied entries of `entries`, live or dead.
    occupied: usize,
    /// Length of the event-time ticks entries are stamped with.
    tick_ms: i64,
    /// Where the sweep goes on.
    cursor: usize,
    /// Inserts since the sweep last went on.
    unswept: u32,
    /// The horizon when the sweep last started from the table's first entry
    /// (`i64::MIN`: none yet).
    pass_from_ms: i64,
    /// The table being moved into `entries`.
    moving: Option<Moving>,
    /// The larger table a filling one will move into, written ahead.
    successor: Option<Successor>,
}

/// The next, larger table, written a few pages per sweep round while the
/// current one fills from [`PREPARE_FROM`] to three quarters. A table fresh
/// from the system is pages not yet mapped: the first probe that reads one
/// maps the shared zero page, and the first write then copies it and flushes
/// every core's TLB for it; at a few hundred MB that cost, paid on the
/// stage's path in the inserts right after a move, stalls every ack
/// behind it. Written first, each page costs one plain fault, spread thin.
#[derive(Debug)]
struct Successor {
    entries: Vec<u64>,
    /// Entries before this one are on written pages.
    written: usize,
}

impl Successor {
    fn new(size: usize) -> Successor {
        Successor {
            entries: zeroed(size),
            written: 0,
        }
    }

    /// Writes the next `pages` pages (a zero, as they hold already).
    fn write(&mut self, pages: usize) {
        for _ in 0..pages {
            let Some(entry) = self.entries.get_mut(self.written) else {
                return;
            };
            *entry = 0;
            self.written += PAGE_ENTRIES;
        }
    }

    /// The table, every page of it written.
    fn finish(mut self) -> Vec<u64> {
        self.write(self.entries.len().div_ceil(PAGE_ENTRIES));
        // The last page, when the table does not start on a page boundary.
        if let Some(last) = self.entries.last_mut() {
            *last = 0;
        }
        self.entries
    }
}

/// A table whose entries are being moved to a new one, in index order. They
/// stay in place until all are moved, so its probe runs stay whole and
/// lookups of the entries not yet moved find them there.
#[derive(Debug)]
struct Moving {
    entries: Vec<u64>,
    moved: usize,
}

/// Entries an insert sweeps: with the table at most half live after a move,
/// a dead entry waits at most an eighth of the table's inserts, so sweeping
/// alone keeps a steady table under three quarters full.
const SWEEP_STEP: usize = 8;
/// Inserts whose sweeping is done together: one loop over a few hundred
/// entries costs less than a call per insert, and pauses nothing.
const SWEEP_EVERY: u32 = 32;
/// Ticks of event time a sweep round may take before the insert that finds
/// it behind finishes it: a dead entry must be swept before its 5-bit tick
/// wraps round to read live again (after [`DEAD_AGES`] ticks). Under a steady
/// load a round takes about five ticks; this catches a table left large by
/// a load that dropped.
const ROUND_TICKS: i64 = 8;
/// Entries of the old table an insert moves, at least: as many more as it
/// takes to end the move within a quarter of the new table's inserts, so
/// that the new one (at least twice the live entries moved) is at most three
/// quarters full by then.
const MOVE_STEP: usize = 8;
const MIN_ID_ENTRIES: usize = 64;
/// Entries in a 4 KiB page.
const PAGE_ENTRIES: usize = 4096 / std::mem::size_of::<u64>();
/// How full (in sixteenths) a table is when its [`Successor`] starts: the
/// last sixteenth before the move leaves `len / 512` sweep rounds to write
/// the successor's `1.5 * len / 512` pages, [`SUCCESSOR_PAGES`] per round.
/// A steady table stays at or under five eighths (half live after a move,
/// at most an eighth dead between sweeps), so it holds no successor.
const PREPARE_FROM: usize = 11;
const SUCCESSOR_PAGES: usize = 2;

/// Bits of an entry's tag that hold its tick (the rest hold the fingerprint).
const TICK_BITS: u32 = 5;
const TICK_MASK: u32 = (1 << TICK_BITS) - 1;
/// Ticks in the lateness window: an entry never stamps a tick more than this
/// (plus one) ahead of the horizon's, as no held heartbeat is newer than the
/// horizon plus the lateness.
const WINDOW_TICKS: i64 = 12;
/// Ticks behind the horizon's that read as dead; the remaining ages of the
/// 32 read as live: at least the `WINDOW_TICKS + 1` ahead of the horizon a
/// live entry can stand at, so no live entry ever reads as dead.
const DEAD_AGES: u32 = (1 << TICK_BITS) - WINDOW_TICKS as u32 - 2;

/// 8 bytes: 27 bits of the fingerprint and the event time's tick (modulo 32)
/// share one word. The fingerprint both places the entry and tells
/// entries apart: a match is verified against the slot's heartbeats anyway,
/// and two ids of one probe run agreeing on 27 bits are rare. The tick only
/// decides which entries a sweep may drop: an entry far behind the horizon
/// can read as live again (it stays until a later sweep), never the other way.
#[derive(Clone, Copy, Debug)]
struct IdEntry {
    tag: u32,
    slot: SlotIndex,
}

impl IdEntry {
    /// The entry as stored: the tag in the low half (never 0 when occupied).
    #[inline]
    fn word(self) -> u64 {
        u64::from(self.tag) | u64::from(self.slot) << 32
    }

    #[inline]
    fn from_word(word: u64) -> IdEntry {
        IdEntry {
            tag: word as u32,
            slot: (word >> 32) as u32,
        }
    }

    /// The stored form of a fingerprint: its low 32 bits with the tick bits
    /// cleared, never 0 (which marks an empty entry).
    #[inline]
    fn fingerprint(fingerprint: u64) -> u32 {
        (fingerprint as u32 & !TICK_MASK).max(1 << TICK_BITS)
    }

    #[inline]
    fn stored_fingerprint(&self) -> u32 {
        self.tag & !TICK_MASK
    }

    #[inline]
    fn tick(&self) -> u32 {
        self.tag & TICK_MASK
    }
}

/// The horizon's tick, to tell live entries by.
#[derive(Clone, Copy)]
struct Liveness {
    horizon_tick: u32,
    /// No horizon yet: nothing is late.
    always: bool,
}

impl Liveness {
    /// False only when every heartbeat with the entry's id would be late:
    /// the entry's whole tick is behind the horizon.
    #[inline]
    fn is_live(self, entry: &IdEntry) -> bool {
        let age = self.horizon_tick.wrapping_sub(entry.tick()) & TICK_MASK;
        self.always || age == 0 || age > DEAD_AGES
    }
}

impl IdTable {
    /// A table for heartbeats accepted up to `lateness_ms` behind the newest.
    pub(super) fn new(lateness_ms: i64) -> Self {
        IdTable {
            entries: vec![0; MIN_ID_ENTRIES],
            occupied: 0,
            tick_ms: (lateness_ms.max(0) / WINDOW_TICKS + 1).max(1_000),
            cursor: 0,
            unswept: 0,
            pass_from_ms: i64::MIN,
            moving: None,
            successor: None,
        }
    }

    #[inline]
    fn tick(&self, time_ms: i64) -> u32 {
        time_ms.div_euclid(self.tick_ms) as u32 & TICK_MASK
    }

    /// Tells live entries for one horizon.
    #[inline]
    fn liveness(&self, horizon_ms: i64) -> Liveness {
        Liveness {
            horizon_tick: self.tick(horizon_ms),
            always: horizon_ms == i64::MIN,
        }
    }

    /// True when a live entry with this fingerprint names a slot for which
    /// `holds(slot)` confirms the id.
    #[inline]
    pub(super) fn contains(
        &self,
        fingerprint: u64,
        horizon_ms: i64,
        holds: impl Fn(SlotIndex) -> bool,
    ) -> bool {
        let (fingerprint, liveness) =
            (IdEntry::fingerprint(fingerprint), self.liveness(horizon_ms));
        probe(&self.entries, fingerprint, liveness, &holds)
            || self
                .moving
                .as_ref()
                .is_some_and(|old| probe(&old.entries, fingerprint, liveness, &holds))
    }

    /// Loads the entries where this fingerprint's lookup starts (a hint).
    #[inline]
    pub(super) fn touch(&self, fingerprint: u64) {
        let fingerprint = IdEntry::fingerprint(fingerprint);
        super::prefetch::line(&self.entries[home(self.entries.len(), fingerprint)]);
        if let Some(old) = &self.moving {
            super::prefetch::line(&old.entries[home(old.entries.len(), fingerprint)]);
        }
    }

    /// Records the id of a heartbeat held in `slot`. `horizon_ms` (no later
    /// than the current lateness horizon) tells which entries are dead.
    #[inline]
    pub(super) fn insert(
        &mut self,
        fingerprint: u64,
        time_ms: i64,
        slot: SlotIndex,
        horizon_ms: i64,
    ) {
        let liveness = self.liveness(horizon_ms);
        if self.moving.is_some() {
            self.move_some(liveness);
            // A move sized at the edge (a new table twice the entries it
            // takes, the inserts meanwhile a quarter of it) can reach three
            // quarters one insert before it ends: it ends now, and the check
            // below grows the table.
            while self.moving.is_some() && (self.occupied + 1) * 4 > self.entries.len() * 3 {
                self.move_some(liveness);
            }
        }
        // Also on the insert that ends a move: the entries moved and those
        // inserted meanwhile can leave the new table at three quarters.
        if self.moving.is_none() {
            self.unswept += 1;
            if self.unswept == SWEEP_EVERY {
                self.unswept = 0;
                if let Some(successor) = self.successor.as_mut() {
                    successor.write(SUCCESSOR_PAGES);
                }
                self.sweep_some(liveness, horizon_ms);
            }
            let len = self.entries.len();
            if self.successor.is_none() && (self.occupied + 1) * 16 > len * PREPARE_FROM {
                self.successor = Some(Successor::new(len * 3 / 2));
            }
            if (self.occupied + 1) * 4 > len * 3 {
                let successor = self.successor.take().map(Successor::finish);
                self.start_move(successor.unwrap_or_else(|| zeroed(self.occupied * 2)));
            }
        }
        debug_assert!((self.occupied + 1) * 4 <= self.entries.len() * 3);
        self.place(IdEntry {
            tag: IdEntry::fingerprint(fingerprint) | self.tick(time_ms),
            slot,
        });
    }

    fn place(&mut self, entry: IdEntry) {
        let len = self.entries.len();
        let mut at = home(len, entry.stored_fingerprint());
        while self.entries[at] != 0 {
            at = next(len, at);
        }
        self.entries[at] = entry.word();
        self.occupied += 1;
    }

    /// Drops the dead entries among the next [`SWEEP_STEP`] per insert since
    /// the last call; once a sweep has gone round a table less than an
    /// eighth full, moves it into a smaller one.
    fn sweep_some(&mut self, liveness: Liveness, horizon_ms: i64) {
        if horizon_ms == i64::MIN {
            return; // nothing is dead before there is a horizon
        }
        if self.pass_from_ms == i64::MIN {
            self.pass_from_ms = horizon_ms;
        }
        let len = self.entries.len();
        let behind = horizon_ms.saturating_sub(self.pass_from_ms) >= ROUND_TICKS * self.tick_ms;
        let step = SWEEP_STEP * SWEEP_EVERY as usize;
        for _ in 0..if behind { len } else { step } {
            let at = self.cursor;
            // Each removal shifts the run's next entry into `at`.
            while self.entries[at] != 0 && !liveness.is_live(&IdEntry::from_word(self.entries[at]))
            {
                self.remove_at(at);
            }
            self.cursor = next(len, at);
            if self.cursor == 0 {
                self.pass_from_ms = horizon_ms;
                if self.occupied * 8 < len * 5 {
                    // A load that dropped back: the table will not fill.
                    self.successor = None;
                }
                if self.occupied * 8 < len && len > MIN_ID_ENTRIES {
                    // At most eight times smaller, so a move stays a few entries per insert.
                    self.start_move(zeroed((self.occupied * 2).max(len / 8)));
                }
                return;
            }
        }
    }

    /// Empties entry `at`, moving later entries of its probe run back so
    /// that every entry stays reachable from its home (no tombstones).
    fn remove_at(&mut self, mut at: usize) {
        let len = self.entries.len();
        let mut later = at;
        loop {
            later = next(len, later);
            let word = self.entries[later];
            if word == 0 {
                break;
            }
            let own = home(len, IdEntry::from_word(word).stored_fingerprint());
            // It may move back to `at` unless its home lies in (at, later].
            let stays = if at <= later {
                at < own && own <= later
            } else {
                at < own || own <= later
            };
            if !stays {
                self.entries[at] = word;
                at = later;
            }
        }
        self.entries[at] = 0;
        self.occupied -= 1;
    }

    /// Starts moving every entry into `entries` (all 0, from [`zeroed`]).
    fn start_move(&mut self, entries: Vec<u64>) {
        let old = std::mem::replace(&mut self.entries, entries);
        self.moving = Some(Moving {
            entries: old,
            moved: 0,
        });
        self.occupied = 0;
        self.cursor = 0;
    }

    /// Moves the next [`MOVE_STEP`] entries of the old table (the live ones)
    /// and drops it once all are.
    fn move_some(&mut self, liveness: Liveness) {
        let Some(mut old) = self.moving.take() else {
            return;
        };
        let step = MOVE_STEP.max(old.entries.len() * 4 / self.entries.len() + 1);
        let end = (old.moved + step).min(old.entries.len());
        for &word in &old.entries[old.moved..end] {
            let entry = IdEntry::from_word(word);
            if word != 0 && liveness.is_live(&entry) {
                self.place(entry);
            }
        }
        old.moved = end;
        if end < old.entries.len() {
            self.moving = Some(old);
        }
    }

    /// Entries held, live or dead (in the old table too while moving).
    #[cfg(test)]
    fn occupied(&self) -> usize {
        self.occupied
            + self.moving.as_ref().map_or(0, |old| {
                old.entries[old.moved..]
                    .iter()
                    .filter(|&&word| word != 0)
                    .count()
            })
    }

    /// Entries the tables take, the old one included while moving.
    #[cfg(test)]
    fn capacity(&self) -> usize {
        self.entries.len() + self.moving.as_ref().map_or(0, |old| old.entries.len())
    }

    /// Entries of the successor being written, and how many are on written pages.
    #[cfg(test)]
    fn successor(&self) -> Option<(usize, usize)> {
        self.successor
            .as_ref()
            .map(|next| (next.entries.len(), next.written.min(next.entries.len())))
    }
}

/// An empty id table of `size` entries, at least [`MIN_ID_ENTRIES`].
fn zeroed(size: usize) -> Vec<u64> {
    vec![0; size.max(MIN_ID_ENTRIES)]
}

/// Where a stored fingerprint's probe starts in a table of `len` entries
/// (multiply-shift: any size).
#[inline]
fn home(len: usize, stored_fingerprint: u32) -> usize {
    ((u64::from(stored_fingerprint) * len as u64) >> 32) as usize
}

#[inline]
fn next(len: usize, at: usize) -> usize {
    if at + 1 == len {
        0
    } else {
        at + 1
    }
}

/// Looks an id up in one table of entry words.
#[inline]
fn probe(
    entries: &[u64],
    fingerprint: u32,
    liveness: Liveness,
    holds: &impl Fn(SlotIndex) -> bool,
) -> bool {
    let len = entries.len();
    let mut at = home(len, fingerprint);
    loop {
        let word = entries[at];
        if word == 0 {
            return false;
        }
        let entry = IdEntry::from_word(word);
        if entry.stored_fingerprint() == fingerprint
            && liveness.is_live(&entry)
            && holds(entry.slot)
        {
            return true;
        }
        at = next(len, at);
    }
}

/// A set of slot indexes, walked in increasing order.
#[derive(Debug, Default)]
pub(super) struct SlotSet {
    words: Vec<u64>,
    /// Members, so an empty set is known without a scan.
    len: usize,
}

impl SlotSet {
    #[inline]
    pub(super) fn insert(&mut self, slot: SlotIndex) {
        let (word, bit) = (slot as usize / 64, slot % 64);
        if word >= self.words.len() {
            self.words.resize(word + 1, 0);
        }
        let before = self.words[word];
        self.words[word] = before | 1 << bit;
        self.len += usize::from(before & 1 << bit == 0);
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(super) fn clear(&mut self) {
        self.words.fill(0);
        self.len = 0;
    }

    /// Hands every member to `visit` in increasing order and empties the set.
    pub(super) fn drain(&mut self, mut visit: impl FnMut(SlotIndex)) {
        if self.len == 0 {
            return;
        }
        for (index, word) in self.words.iter_mut().enumerate() {
            let mut bits = std::mem::take(word);
            while bits != 0 {
                visit((index * 64) as SlotIndex + bits.trailing_zeros());
                bits &= bits - 1;
            }
        }
        self.len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colliding_key_fingerprints_are_told_apart_by_the_slot() {
        let mut table = KeyTable::default();
        assert_eq!(table.find(9, |_| true), None);
        table.insert(9, 1);
        table.insert(9, 2);
        assert_eq!(table.find(9, |slot| slot == 2), Some(2));
        assert_eq!(table.find(9, |slot| slot == 1), Some(1));
        table.remove(9, 1);
        assert_eq!(table.find(9, |slot| slot == 1), None);
        assert_eq!(table.find(9, |slot| slot == 2), Some(2));
        // The empty marker is a valid fingerprint too.
        table.insert(0, 3);
        assert_eq!(table.find(0, |slot| slot == 3), Some(3));
        assert_eq!(table.len(), 2);
    }

    #[test]
    fn the_key_table_matches_a_map_through_inserts_removes_and_growth() {
        let mut table = KeyTable::default();
        let mut model = std::collections::BTreeMap::new();
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        for step in 0..20_000u32 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            // Few distinct fingerprints in few homes: long runs and wrap-around.
            let fingerprint = state % 300 * 0x1_0000_0001;
            match model.entry(fingerprint) {
                std::collections::btree_map::Entry::Occupied(entry) if state.is_multiple_of(3) => {
                    table.remove(fingerprint, entry.remove());
                }
                std::collections::btree_map::Entry::Occupied(_) => {}
                std::collections::btree_map::Entry::Vacant(entry) => {
                    entry.insert(step);
                    table.insert(fingerprint, step);
                }
            }
            for (&fingerprint, &slot) in model.iter().take(5) {
                assert_eq!(table.find(fingerprint, |s| s == slot), Some(slot));
            }
        }
        assert_eq!(table.len(), model.len());
        for (&fingerprint, &slot) in &model {
            assert_eq!(table.find(fingerprint, |s| s == slot), Some(slot));
        }
    }

    #[test]
    fn ids_behind_the_horizon_are_dead_and_swept_in_bulk() {
        let fingerprint = |i: i64| (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let mut table = IdTable::new(100_000);
        for i in 0..1_000i64 {
            table.insert(fingerprint(i), i * 1_000, 7, (i - 100) * 1_000);
        }
        assert!(table.occupied() < 1_000, "sweeps dropped dead entries");
        let horizon_ms = 899_000;
        assert!(table.contains(fingerprint(999), horizon_ms, |slot| slot == 7));
        // Ticks of 8,334 ms: the horizon's runs from 891,738 to 900,071.
        assert!(table.contains(fingerprint(892), horizon_ms, |slot| slot == 7));
        assert!(!table.contains(fingerprint(891), horizon_ms, |_| true));
        assert!(!table.contains(fingerprint(10), horizon_ms, |_| true));
        // A live fingerprint whose slot does not hold the id is no duplicate.
        assert!(!table.contains(fingerprint(999), horizon_ms, |_| false));
    }

    #[test]
    fn sweeping_in_place_keeps_every_live_entry_findable() {
        let mut table = IdTable::new(300_000);
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut recent = std::collections::VecDeque::new();
        for second in 0..20_000i64 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            // Clustered stored fingerprints (their low 32 bits): long runs
            // that wrap around the end.
            let fingerprint = state | 0xffff_ff00;
            let horizon_ms = (second - 300) * 1_000;
            table.insert(fingerprint, second * 1_000, 1, horizon_ms);
            recent.push_back((fingerprint, second));
            while recent.front().is_some_and(|&(_, s)| s < second - 300) {
                recent.pop_front();
            }
            if second % 97 == 0 {
                for &(fingerprint, _) in &recent {
                    assert!(table.contains(fingerprint, horizon_ms, |_| true));
                }
            }
        }
        assert!(table.capacity() <= 16 * 301, "{}", table.capacity());
    }

    #[test]
    fn ids_stay_findable_while_the_table_moves_into_a_larger_one() {
        let fingerprint = |i: u64| i.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 0xffff_0000;
        let mut table = IdTable::new(120_000);
        let mut checked_while_moving = 0;
        for i in 0..50_000u64 {
            table.insert(fingerprint(i), 0, (i % 1_000) as SlotIndex, i64::MIN);
            if table.moving.is_some() && i % 1_001 == 0 {
                checked_while_moving += 1;
                for j in (0..=i).step_by(13) {
                    let slot = (j % 1_000) as SlotIndex;
                    assert!(
                        table.contains(fingerprint(j), i64::MIN, |s| s == slot),
                        "{j} after {i}"
                    );
                }
            }
        }
        assert!(checked_while_moving > 3, "{checked_while_moving}");
        assert_eq!(table.occupied(), 50_000);
        assert!(table.capacity() <= 4 * 50_000, "{}", table.capacity());
    }

    #[test]
    fn a_filling_table_writes_its_successor_ahead_and_moves_into_it() {
        let fingerprint = |i: u64| i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let mut table = IdTable::new(120_000);
        let mut moves = Vec::new();
        for i in 0..200_000u64 {
            let before = table.successor();
            let was_moving = table.moving.is_some();
            table.insert(fingerprint(i), 0, 1, i64::MIN);
            if table.moving.is_some() && !was_moving {
                moves.push((before, table.entries.len()));
            }
        }
        let large: Vec<_> = moves
            .iter()
            .filter(|(_, len)| *len >= 16 * PAGE_ENTRIES)
            .collect();
        assert!(large.len() >= 3, "{moves:?}");
        for (successor, len) in large {
            let (size, written) = successor.expect("a successor before the move");
            assert_eq!(size, *len, "the move took the successor");
            assert_eq!(written, size, "every page written ahead");
        }
        for i in (0..200_000u64).step_by(997) {
            assert!(table.contains(fingerprint(i), i64::MIN, |s| s == 1), "{i}");
        }
    }

    #[test]
    fn a_table_whose_ids_die_drops_the_successor_it_started() {
        let fingerprint = |i: i64| (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let mut table = IdTable::new(60_000);
        let mut i = 0;
        while table.successor().is_none() || table.moving.is_some() {
            table.insert(fingerprint(i), 0, 1, i64::MIN);
            i += 1;
        }
        // An hour later: the ids so far are dead, and a sweep round finds the
        // table far from full.
        for j in 0..table.entries.len() as i64 {
            let time_ms = 3_600_000 + j;
            table.insert(fingerprint(i + j), time_ms, 1, time_ms - 60_000);
        }
        assert_eq!(table.successor(), None);
    }

    #[test]
    fn a_table_shrinks_after_its_ids_die_and_keeps_the_new_ones() {
        let fingerprint = |i: i64| (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let mut table = IdTable::new(60_000);
        for i in 0..100_000i64 {
            table.insert(fingerprint(i), 0, 1, i64::MIN);
        }
        let grown = table.capacity();
        // From an hour later, one id per 100 ms: every earlier id is dead,
        // and about 600 stay live at a time.
        let time_ms = |i: i64| 3_600_000 + (i - 100_000) * 100;
        for i in 100_000..200_000i64 {
            table.insert(fingerprint(i), time_ms(i), 1, time_ms(i) - 60_000);
        }
        assert!(
            table.capacity() * 16 < grown,
            "{} of {grown}",
            table.capacity()
        );
        let horizon_ms = time_ms(199_999) - 60_000;
        for i in 199_500..200_000i64 {
            assert!(table.contains(fingerprint(i), horizon_ms, |_| true), "{i}");
        }
        assert!(!table.contains(fingerprint(5), horizon_ms, |_| true));
    }

    #[test]
    fn a_table_stays_under_three_quarters_full_through_shrinks_and_growth() {
        let fingerprint = |i: i64| (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let mut shrinks = 0;
        // Tables of several sizes lose their ids to the horizon, shrink while
        // a few dozen stay live, then take a burst of new ones mid-move.
        for grown_by in (300..1_500).step_by(50) {
            for every_ms in [1_000, 1_100, 1_200, 1_300, 1_500] {
                let mut table = IdTable::new(60_000);
                let mut i = 0i64;
                let mut insert = |table: &mut IdTable, time_ms: i64| {
                    i += 1;
                    let was_moving = table.moving.is_some();
                    let len = table.entries.len();
                    table.insert(fingerprint(i), time_ms, 1, time_ms - 60_000);
                    assert!(
                        table.occupied * 4 <= table.entries.len() * 3,
                        "{} of {} after {grown_by} ids, then one per {every_ms} ms",
                        table.occupied,
                        table.entries.len()
                    );
                    !was_moving && table.entries.len() < len
                };
                for _ in 0..grown_by {
                    insert(&mut table, 0);
                }
                let mut time_ms = 3_600_000;
                let mut shrunk = false;
                for _ in 0..2_000 {
                    time_ms += every_ms;
                    if insert(&mut table, time_ms) {
                        shrunk = true;
                        break;
                    }
                }
                shrinks += usize::from(shrunk);
                for _ in 0..500 {
                    time_ms += 1;
                    insert(&mut table, time_ms);
                }
            }
        }
        assert!(shrinks > 50, "{shrinks}");
    }

    #[test]
    fn a_table_stays_under_three_quarters_full_while_every_id_stays_live() {
        let fingerprint = |i: u64| i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        // As a restore fills it: ids in time order, none behind the horizon.
        for lateness_ms in [1_000, 60_000, 120_000] {
            let mut table = IdTable::new(lateness_ms);
            for i in 0..300_000u64 {
                let time_ms = i as i64;
                table.insert(fingerprint(i), time_ms, 1, time_ms - lateness_ms);
                assert!(
                    table.occupied * 4 <= table.entries.len() * 3,
                    "{} of {} after {i} ids",
                    table.occupied,
                    table.entries.len()
                );
            }
        }
    }

    #[test]
    fn a_slot_set_hands_its_members_back_in_order_once() {
        let mut set = SlotSet::default();
        assert!(set.is_empty());
        for slot in [130, 3, 64, 3, 0, 63] {
            set.insert(slot);
        }
        assert!(!set.is_empty());
        let mut members = Vec::new();
        set.drain(|slot| members.push(slot));
        assert_eq!(members, [0, 3, 63, 64, 130]);
        assert!(set.is_empty());
        set.drain(|_| panic!("drained already"));
        set.insert(5);
        set.clear();
        assert!(set.is_empty());
        set.drain(|_| panic!("cleared"));
    }

    #[test]
    fn id_and_key_entries_take_eight_bytes() {
        assert_eq!(std::mem::size_of::<IdEntry>(), 8);
        assert_eq!(std::mem::size_of_val(&KeyTable::default().entries[0]), 8);
    }

    #[test]
    fn an_entry_stays_live_while_any_millisecond_of_its_tick_is_not_late() {
        let table = IdTable::new(0);
        let entry = |time_ms| IdEntry {
            tag: IdEntry::fingerprint(u64::MAX) | table.tick(time_ms),
            slot: 0,
        };
        assert!(table.liveness(5_999).is_live(&entry(5_250)));
        assert!(!table.liveness(6_000).is_live(&entry(5_250)));
        assert!(table.liveness(i64::MIN).is_live(&entry(5_250)));
        assert!(table.liveness(-1).is_live(&entry(-1_000)));
        assert!(!table.liveness(0).is_live(&entry(-1_000)));
    }

    #[test]
    fn no_entry_up_to_the_lateness_ahead_of_the_horizon_reads_as_dead() {
        for lateness_ms in [0, 1, 999, 120_000, 3_600_000, 86_400_000 * 30] {
            let table = IdTable::new(lateness_ms);
            for horizon_ms in [-7_777, 0, 1, 123_456_789, 1_700_000_000_000] {
                let liveness = table.liveness(horizon_ms);
                let step = (lateness_ms / 97).max(1);
                for time_ms in (horizon_ms..=horizon_ms + lateness_ms).step_by(step as usize) {
                    let entry = IdEntry {
                        tag: IdEntry::fingerprint(7) | table.tick(time_ms),
                        slot: 0,
                    };
                    assert!(
                        liveness.is_live(&entry),
                        "{lateness_ms} {horizon_ms} {time_ms}"
                    );
                }
                let behind = IdEntry {
                    tag: IdEntry::fingerprint(7) | table.tick(horizon_ms - table.tick_ms - 1),
                    slot: 0,
                };
                assert!(!liveness.is_live(&behind), "{lateness_ms} {horizon_ms}");
            }
        }
    }
}
