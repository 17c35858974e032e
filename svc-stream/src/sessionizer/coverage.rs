//! Union of watched position intervals, kept as sorted disjoint spans so the
//! covered length is always at hand and linear playback costs O(1) per step.

use super::spill::Spill;

/// Sorted, disjoint closed spans `[lo, hi]` (`lo < hi`) and their total length.
/// The last span is kept inline: linear playback only ever touches it.
#[repr(C)]
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Coverage {
    covered_ms: i64,
    /// The last span; [`NO_SPAN`] (empty) while there is none, one word
    /// less than an `Option`.
    last: (i64, i64),
    /// Every span before `last` (none while playback is linear).
    earlier: Spill<(i64, i64)>,
}

/// Marks "no last span": every span held is non-empty.
const NO_SPAN: (i64, i64) = (0, 0);

impl Coverage {
    fn last(&self) -> Option<(i64, i64)> {
        (self.last.0 < self.last.1).then_some(self.last)
    }

    /// Length of the union of every span added so far.
    pub(super) fn covered_ms(&self) -> i64 {
        self.covered_ms
    }

    /// Adds the span `[lo, hi]`; spans that overlap or touch are merged.
    #[inline]
    pub(super) fn add(&mut self, lo: i64, hi: i64) {
        debug_assert!(lo < hi, "empty span [{lo}, {hi}]");
        // Fast path: linear playback extends the last span or starts after it.
        match self.last() {
            None => {
                self.last = (lo, hi);
                self.covered_ms = self.covered_ms.saturating_add(hi.saturating_sub(lo));
            }
            Some(last) if lo > last.1 => {
                self.earlier.as_vec_mut().push(last);
                self.last = (lo, hi);
                self.covered_ms = self.covered_ms.saturating_add(hi.saturating_sub(lo));
            }
            Some(last) if lo >= last.0 => {
                if hi > last.1 {
                    self.covered_ms = self.covered_ms.saturating_add(hi.saturating_sub(last.1));
                    self.last.1 = hi;
                }
            }
            Some(_) => self.add_before_last(lo, hi),
        }
    }

    fn add_before_last(&mut self, lo: i64, hi: i64) {
        let mut spans = self.earlier.take();
        spans.extend(self.last());
        // Spans are disjoint, so their ends are sorted too.
        let first = spans.partition_point(|span| span.1 < lo);
        let beyond = spans.partition_point(|span| span.0 <= hi);
        if first == beyond {
            spans.insert(first, (lo, hi));
            self.covered_ms = self.covered_ms.saturating_add(hi.saturating_sub(lo));
        } else {
            let merged_lo = lo.min(spans[first].0);
            let merged_hi = hi.max(spans[beyond - 1].1);
            let removed: i64 = spans[first..beyond]
                .iter()
                .map(|span| span.1.saturating_sub(span.0))
                .fold(0, i64::saturating_add);
            self.covered_ms = self
                .covered_ms
                .saturating_sub(removed)
                .saturating_add(merged_hi.saturating_sub(merged_lo));
            spans[first] = (merged_lo, merged_hi);
            spans.drain(first + 1..beyond);
        }
        self.last = spans.pop().unwrap_or(NO_SPAN);
        self.earlier.put(spans);
    }

    /// Adds every span of `other`.
    pub(super) fn extend(&mut self, other: &Coverage) {
        for &(lo, hi) in other.earlier.as_slice().iter().chain(&other.last()) {
            self.add(lo, hi);
        }
    }

    #[cfg(test)]
    pub(super) fn spans(&self) -> Vec<(i64, i64)> {
        self.earlier
            .as_slice()
            .iter()
            .chain(&self.last())
            .copied()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive_union(spans: &[(i64, i64)]) -> i64 {
        let mut sorted = spans.to_vec();
        sorted.sort_unstable();
        let mut total = 0;
        let mut current: Option<(i64, i64)> = None;
        for (lo, hi) in sorted {
            current = match current {
                Some((clo, chi)) if lo <= chi => Some((clo, chi.max(hi))),
                Some((clo, chi)) => {
                    total += chi - clo;
                    Some((lo, hi))
                }
                None => Some((lo, hi)),
            };
        }
        total + current.map_or(0, |(lo, hi)| hi - lo)
    }

    #[test]
    fn a_coverage_takes_four_words() {
        assert_eq!(std::mem::size_of::<Coverage>(), 32);
    }

    #[test]
    fn touching_spans_merge_into_one() {
        let mut coverage = Coverage::default();
        coverage.add(0, 5);
        coverage.add(5, 10);
        assert_eq!(coverage.spans(), [(0, 10)]);
        assert_eq!(coverage.covered_ms(), 10);
    }

    #[test]
    fn a_span_bridging_several_merges_them_and_counts_overlap_once() {
        let mut coverage = Coverage::default();
        coverage.add(20, 30);
        coverage.add(0, 5);
        coverage.add(10, 12);
        coverage.add(40, 50);
        assert_eq!(coverage.covered_ms(), 27);
        coverage.add(3, 25);
        assert_eq!(coverage.spans(), [(0, 30), (40, 50)]);
        assert_eq!(coverage.covered_ms(), 40);
    }

    #[test]
    fn covered_length_matches_a_naive_union_for_pseudo_random_spans() {
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        for _ in 0..200 {
            let mut coverage = Coverage::default();
            let mut added = Vec::new();
            for _ in 0..30 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let lo = (state % 1000) as i64;
                let hi = lo + 1 + ((state >> 20) % 60) as i64;
                coverage.add(lo, hi);
                added.push((lo, hi));
                assert_eq!(coverage.covered_ms(), naive_union(&added));
                assert!(coverage.spans().windows(2).all(|w| w[0].1 < w[1].0));
            }
        }
    }
}
