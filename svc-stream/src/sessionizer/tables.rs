//! Compact exact indexes from 64-bit fingerprints to key slots: the
//! `(user_id, video_id)` keys (to find a key's slot) and the event ids of
//! recent heartbeats (for deduplication). Open addressing with linear probing
//! over small inline entries, so a lookup is usually one cache line; neither
//! stores strings: every candidate is verified against the slot it names, so
//! fingerprint collisions cost a probe, never a wrong answer.

/// Index of a key slot.
pub(super) type SlotIndex = u32;

/// Fingerprint value marking an empty entry (real fingerprints avoid it).
const EMPTY: u64 = 0;

#[inline]
fn stored(fingerprint: u64) -> u64 {
    if fingerprint == EMPTY {
        1
    } else {
        fingerprint
    }
}

/// Fingerprint -> slot, exact insert and remove (backward-shift deletion).
#[derive(Debug)]
pub(super) struct KeyTable {
    entries: Vec<(u64, SlotIndex)>,
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

    fn place(&mut self, fingerprint: u64, slot: SlotIndex) {
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
/// removed one by one: an entry older than the lateness horizon is dead (any
/// heartbeat with its id would be late anyway), and dead entries are dropped
/// in bulk when the table fills, which costs a sequential sweep instead of a
/// cache miss per frozen heartbeat.
#[derive(Debug)]
pub(super) struct IdTable {
    entries: Vec<IdEntry>,
    /// Occupied entries, live or dead.
    occupied: usize,
}

/// 12 bytes. The fingerprint's low 32 bits both place the entry and tell
/// entries apart: a match is verified against the slot's heartbeats anyway,
/// and two ids of one probe run agreeing on 32 bits are rare.
#[derive(Clone, Copy, Debug)]
struct IdEntry {
    fingerprint: u32,
    /// Event time in whole seconds (clamped to `u32`): an entry is dead once
    /// that entire second is behind the horizon.
    time_s: u32,
    slot: SlotIndex,
}

const EMPTY_ID: IdEntry = IdEntry {
    fingerprint: 0,
    time_s: 0,
    slot: 0,
};

impl IdEntry {
    /// The stored form of a fingerprint (never 0, which marks an empty
    /// entry).
    #[inline]
    fn fingerprint(fingerprint: u64) -> u32 {
        (fingerprint as u32).max(1)
    }

    #[inline]
    fn is_empty(&self) -> bool {
        self.fingerprint == 0
    }

    #[inline]
    fn seconds(time_ms: i64) -> u32 {
        time_ms.div_euclid(1_000).clamp(0, i64::from(u32::MAX)) as u32
    }

    /// False only when every heartbeat with this entry's id would be late
    /// (times beyond the `u32` range of seconds never die).
    #[inline]
    fn is_live(&self, horizon_ms: i64) -> bool {
        i64::from(self.time_s) * 1_000 + 999 >= horizon_ms || self.time_s == u32::MAX
    }
}

impl Default for IdTable {
    fn default() -> Self {
        IdTable {
            entries: vec![EMPTY_ID; 64],
            occupied: 0,
        }
    }
}

impl IdTable {
    /// Where a stored fingerprint's probe starts (any table size:
    /// multiply-shift).
    #[inline]
    fn home(&self, fingerprint: u32) -> usize {
        ((u64::from(fingerprint) * self.entries.len() as u64) >> 32) as usize
    }

    #[inline]
    fn next(&self, at: usize) -> usize {
        if at + 1 == self.entries.len() {
            0
        } else {
            at + 1
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
        let fingerprint = IdEntry::fingerprint(fingerprint);
        let mut at = self.home(fingerprint);
        loop {
            let entry = self.entries[at];
            if entry.is_empty() {
                return false;
            }
            if entry.fingerprint == fingerprint && entry.is_live(horizon_ms) && holds(entry.slot) {
                return true;
            }
            at = self.next(at);
        }
    }

    /// Loads the entry where this fingerprint's lookup starts (a hint).
    #[inline]
    pub(super) fn touch(&self, fingerprint: u64) {
        super::prefetch::line(&self.entries[self.home(IdEntry::fingerprint(fingerprint))]);
    }

    /// Records the id of a heartbeat held in `slot`. `horizon_ms` (no later
    /// than the current lateness horizon) tells which entries a sweep drops.
    #[inline]
    pub(super) fn insert(
        &mut self,
        fingerprint: u64,
        time_ms: i64,
        slot: SlotIndex,
        horizon_ms: i64,
    ) {
        if (self.occupied + 1) * 4 > self.entries.len() * 3 {
            self.sweep(horizon_ms);
        }
        self.place(IdEntry {
            fingerprint: IdEntry::fingerprint(fingerprint),
            time_s: IdEntry::seconds(time_ms),
            slot,
        });
        self.occupied += 1;
    }

    fn place(&mut self, entry: IdEntry) {
        let mut at = self.home(entry.fingerprint);
        while !self.entries[at].is_empty() {
            at = self.next(at);
        }
        self.entries[at] = entry;
    }

    /// Drops dead entries in place, in one sequential pass (no allocation).
    /// When the live ones then fill more than half or less than an eighth of
    /// the table, they move to a new one, two-fifths full. With sweeps due
    /// at three quarters full, one comes every `size / 4` inserts or more,
    /// and at a steady rate the table stays at 2 to 2.5 entries per live id
    /// (each is memory every open session pays for).
    fn sweep(&mut self, horizon_ms: i64) {
        // From an empty entry (sweeps come at three quarters full), every entry is
        // taken out and, if live, placed again: dropping entries may have
        // cut probe runs, and an entry can only move back towards its home,
        // into a part of its run already swept.
        let size = self.entries.len();
        let start = self
            .entries
            .iter()
            .position(IdEntry::is_empty)
            .expect("sweeps come at three quarters full");
        let (mut at, mut live) = (start, 0);
        for _ in 0..size {
            at = self.next(at);
            let entry = self.entries[at];
            if entry.is_empty() {
                continue;
            }
            self.entries[at] = EMPTY_ID;
            if entry.is_live(horizon_ms) {
                live += 1;
                self.place(entry);
            }
        }
        self.occupied = live;
        let resized = if live * 2 > size || (live * 8 < size && size > 64) {
            Some((live * 5 / 2).max(64))
        } else {
            None
        };
        if let Some(resized) = resized {
            let old = std::mem::replace(&mut self.entries, vec![EMPTY_ID; resized]);
            for entry in old {
                if !entry.is_empty() {
                    self.place(entry);
                }
            }
        }
    }

    /// Entries held, live or dead.
    #[cfg(test)]
    fn occupied(&self) -> usize {
        self.occupied
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
        let mut table = IdTable::default();
        for i in 0..1_000i64 {
            table.insert(fingerprint(i), i * 1_000, 7, (i - 100) * 1_000);
        }
        assert!(table.occupied() < 1_000, "sweeps dropped dead entries");
        let horizon_ms = 899_000;
        assert!(table.contains(fingerprint(999), horizon_ms, |slot| slot == 7));
        assert!(table.contains(fingerprint(899), horizon_ms, |slot| slot == 7));
        assert!(!table.contains(fingerprint(898), horizon_ms, |_| true));
        assert!(!table.contains(fingerprint(10), horizon_ms, |_| true));
        // A live fingerprint whose slot does not hold the id is no duplicate.
        assert!(!table.contains(fingerprint(999), horizon_ms, |_| false));
    }

    #[test]
    fn sweeping_in_place_keeps_every_live_entry_findable() {
        let mut table = IdTable::default();
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
        assert!(table.entries.len() <= 16 * 301, "{}", table.entries.len());
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
    fn an_id_entry_takes_twelve_bytes() {
        assert_eq!(std::mem::size_of::<IdEntry>(), 12);
    }

    #[test]
    fn an_entry_stays_live_while_any_millisecond_of_its_second_is_not_late() {
        let entry = IdEntry {
            fingerprint: 1,
            time_s: IdEntry::seconds(5_250),
            slot: 0,
        };
        assert!(entry.is_live(5_999));
        assert!(!entry.is_live(6_000));
        assert_eq!(IdEntry::seconds(-1), 0);
        assert_eq!(IdEntry::seconds(i64::MAX), u32::MAX);
    }
}
