//! A small multiplicative hasher (the "Fx" hash used by rustc): the keys hashed
//! here are short ids, where SipHash would dominate the per-heartbeat cost.
//! Not DoS-resistant; nothing relies on it for correctness (id fingerprints are
//! always verified, see `tables`).

use std::hash::{BuildHasherDefault, Hasher};

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

/// Fx hasher state.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct FxHasher {
    hash: u64,
}

/// `BuildHasher` for maps keyed by ids.
pub(super) type FxBuildHasher = BuildHasherDefault<FxHasher>;

impl FxHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word));
        }
    }

    #[inline]
    fn write_u8(&mut self, value: u8) {
        self.add(u64::from(value));
    }

    #[inline]
    fn write_u32(&mut self, value: u32) {
        self.add(u64::from(value));
    }

    #[inline]
    fn write_u64(&mut self, value: u64) {
        self.add(value);
    }

    #[inline]
    fn write_usize(&mut self, value: usize) {
        self.add(value as u64);
    }

    /// The multiply leaves the low bits depending on few input bits, and
    /// hashbrown picks buckets from the low bits: finish with the MurmurHash3
    /// finalizer so every bit depends on every input bit.
    #[inline]
    fn finish(&self) -> u64 {
        let mut h = self.hash;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}

/// Well-mixed 64-bit fingerprint of an id (its bytes and its length).
#[inline]
pub(super) fn fingerprint(id: &[u8]) -> u64 {
    let mut hasher = FxHasher::default();
    hasher.write(id);
    hasher.write_usize(id.len());
    hasher.finish()
}

/// Fingerprint of a `(user_id, video_id)` key; the lengths keep the pair
/// boundary unambiguous.
#[inline]
pub(super) fn key_fingerprint(user_id: &str, video_id: &str) -> u64 {
    let mut hasher = FxHasher::default();
    hasher.write(user_id.as_bytes());
    hasher.write_usize(user_id.len());
    hasher.write(video_id.as_bytes());
    hasher.write_usize(video_id.len());
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_that_differ_in_one_character_spread_over_the_low_bits() {
        // hashbrown indexes buckets by the low bits: sequential ids must not
        // pile up in a few of them.
        let buckets: std::collections::HashSet<u64> = (0..4_096)
            .map(|i| {
                let mut hasher = FxHasher::default();
                hasher.write(format!("user-{i:06}").as_bytes());
                hasher.finish() & 0xfff
            })
            .collect();
        assert!(
            buckets.len() > 2_000,
            "{} distinct low-bit patterns",
            buckets.len()
        );
    }

    #[test]
    fn fingerprints_separate_ids_that_differ_only_in_padding() {
        assert_ne!(fingerprint(b"a"), fingerprint(b"a\0"));
        assert_ne!(fingerprint(b""), fingerprint(b"\0"));
        assert_eq!(fingerprint(b"same"), fingerprint(b"same"));
        assert_ne!(key_fingerprint("ab", "c"), key_fingerprint("a", "bc"));
    }
}
