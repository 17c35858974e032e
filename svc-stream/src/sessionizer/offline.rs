//! Sessionizing a whole input at once, with no lateness limit.

use std::collections::HashSet;

use super::config::SessionConfig;
use super::events::{Event, EventRef};
use super::fxhash::FxBuildHasher;
use super::sessions::{Outcome, Session};
use super::Sessionizer;

/// Heartbeats pushed at once: enough for the look-ahead to pay off, few
/// enough that the strings a batch's fingerprints read first (a few cache
/// lines of each heartbeat) are still in the core's cache when its pushes
/// compare them, and that finished sessions are collected often.
const BATCH: usize = 512;

impl Sessionizer {
    /// A sessionizer for a whole input sorted by `(time_ms, event_id)`: with
    /// zero lateness nothing is late, and everything behind the newest time is
    /// frozen and finalized as it goes, so memory stays bounded by the open
    /// sessions. Records no upserts, and keeps no ids: the input holds one
    /// copy of each.
    fn for_sorted_batch(gap_ms: i64) -> Self {
        let mut sessionizer = Sessionizer::new(SessionConfig {
            gap_ms,
            lateness_ms: 0,
            idle_timeout_ms: i64::MAX / 4,
        });
        sessionizer.track_upserts = false;
        sessionizer.checks_ids = false;
        sessionizer
    }
}

/// Offline, whole-input sessionization (no lateness limit): the first copy
/// of each `event_id` in input order counts; the rest is
/// [`sessionize_sorted`] over the input sorted by `(time_ms, event_id)`.
/// Sessions come back sorted by `(user_id, video_id, start_ms)`.
pub fn sessionize_all(events: Vec<Event>, gap_ms: i64) -> Vec<Session> {
    let mut seen: HashSet<&str, FxBuildHasher> =
        HashSet::with_capacity_and_hasher(events.len(), FxBuildHasher::default());
    let mut unique: Vec<&Event> = events
        .iter()
        .filter(|event| seen.insert(event.event_id.as_str()))
        .collect();
    drop(seen);
    unique.sort_unstable_by(|a, b| {
        (a.time_ms, a.event_id.as_str()).cmp(&(b.time_ms, b.event_id.as_str()))
    });
    sessionize_sorted(unique.into_iter().map(Event::to_ref), gap_ms)
}

/// The sessions of heartbeats with one copy per `event_id`, sorted by
/// `(time_ms, event_id)`, pushed in batches through the streaming code path
/// (its look-ahead included; `hbmesh sessionize` runs it per shard of keys).
/// Sessions come back sorted by `(user_id, video_id, start_ms)`.
pub fn sessionize_sorted<'a>(
    events: impl IntoIterator<Item = EventRef<'a>>,
    gap_ms: i64,
) -> Vec<Session> {
    let mut sessionizer = Sessionizer::for_sorted_batch(gap_ms);
    let mut sessions = Vec::new();
    let mut events = events.into_iter();
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        batch.clear();
        batch.extend(events.by_ref().take(BATCH));
        if batch.is_empty() {
            break;
        }
        let outcomes = sessionizer.push_event_refs(&batch);
        debug_assert!(
            outcomes.iter().all(|outcome| *outcome == Outcome::Merged),
            "sorted, deduplicated input"
        );
        sessionizer.advance(0);
        sessions.append(&mut sessionizer.finals);
    }
    sessionizer.finish();
    sessions.append(&mut sessionizer.finals);
    sort_sessions(&mut sessions);
    sessions
}

/// Sorts sessions by their key `(user_id, video_id, start_ms)`.
pub fn sort_sessions(sessions: &mut [Session]) {
    sessions.sort_unstable_by(|a, b| {
        (a.user_id.as_str(), a.video_id.as_str(), a.start_ms).cmp(&(
            b.user_id.as_str(),
            b.video_id.as_str(),
            b.start_ms,
        ))
    });
}
