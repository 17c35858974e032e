//! Sessionizing a whole input at once, with no lateness limit.

use std::collections::HashSet;

use super::config::SessionConfig;
use super::events::Event;
use super::fxhash::FxBuildHasher;
use super::sessions::{Outcome, Session};
use super::Sessionizer;

impl Sessionizer {
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
