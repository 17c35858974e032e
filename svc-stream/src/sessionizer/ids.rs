//! The event ids of every unfrozen event, for deduplication. Ids are not
//! copied: the index maps a 64-bit fingerprint to the key slot holding the
//! event, and a hit is verified against the id stored there. The rare true
//! fingerprint collision keeps the colliding id in a small exact overflow map.

use std::collections::HashMap;

use super::fxhash::FxBuildHasher;

/// Slot index of the `(user_id, video_id)` key holding an event.
pub(super) type SlotIndex = u32;

#[derive(Debug, Default)]
pub(super) struct IdIndex {
    by_fingerprint: HashMap<u64, SlotIndex, FxBuildHasher>,
    overflow: HashMap<String, SlotIndex, FxBuildHasher>,
}

impl IdIndex {
    /// True when `id` belongs to an event still held. `holds(slot)` answers
    /// whether that slot holds an unfrozen event with this id.
    #[inline]
    pub(super) fn contains(
        &self,
        fingerprint: u64,
        id: &str,
        holds: impl Fn(SlotIndex) -> bool,
    ) -> bool {
        if let Some(&slot) = self.by_fingerprint.get(&fingerprint) {
            if holds(slot) {
                return true;
            }
        }
        !self.overflow.is_empty() && self.overflow.contains_key(id)
    }

    /// Records a new id (the caller checked `contains`); returns true when it
    /// went to the overflow map, which `remove` must be told.
    #[inline]
    pub(super) fn insert(&mut self, fingerprint: u64, id: &str, slot: SlotIndex) -> bool {
        match self.by_fingerprint.entry(fingerprint) {
            std::collections::hash_map::Entry::Vacant(vacant) => {
                vacant.insert(slot);
                false
            }
            std::collections::hash_map::Entry::Occupied(_) => {
                self.overflow.insert(id.to_owned(), slot);
                true
            }
        }
    }

    /// Forgets an id recorded by `insert`.
    #[inline]
    pub(super) fn remove(&mut self, fingerprint: u64, id: &str, in_overflow: bool) {
        if in_overflow {
            self.overflow.remove(id);
        } else {
            self.by_fingerprint.remove(&fingerprint);
        }
    }

    /// Number of ids held.
    pub(super) fn len(&self) -> usize {
        self.by_fingerprint.len() + self.overflow.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colliding_fingerprints_are_told_apart_by_the_id_itself() {
        let mut index = IdIndex::default();
        assert!(!index.contains(7, "a", |_| true));
        assert!(!index.insert(7, "a", 1));
        assert!(index.contains(7, "a", |slot| slot == 1));
        // "b" shares the fingerprint, but slot 1 does not hold an event "b".
        assert!(!index.contains(7, "b", |_| false));
        assert!(index.insert(7, "b", 2));
        assert!(index.contains(7, "b", |_| false));
        index.remove(7, "a", false);
        assert!(!index.contains(7, "a", |_| false));
        assert!(index.contains(7, "b", |_| false));
        index.remove(7, "b", true);
        assert!(!index.contains(7, "b", |_| false));
        assert_eq!(index.len(), 0);
    }
}
