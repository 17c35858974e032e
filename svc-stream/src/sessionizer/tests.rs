//! One hand-checked case per rule of SPEC 5, plus the change stream the store
//! sees. Times are milliseconds; `G` and `L` are the default gap and lateness.

use std::collections::BTreeMap;

use hb_proto::v1::Heartbeat;

use super::*;

const G: i64 = 600_000;
const L: i64 = 120_000;
const IDLE: i64 = 600_000;

/// A heartbeat of user "u" watching "v" on device "phone", no ad.
fn hb(event_id: &str, time_ms: i64, position_ms: i64, state: PlaybackState) -> Event {
    Event {
        event_id: event_id.to_owned(),
        user_id: "u".to_owned(),
        video_id: "v".to_owned(),
        device_id: "phone".to_owned(),
        time_ms,
        position_ms,
        state,
        ad_id: String::new(),
    }
}

fn playing(event_id: &str, time_ms: i64, position_ms: i64) -> Event {
    hb(event_id, time_ms, position_ms, PlaybackState::Playing)
}

trait EventExt {
    fn on(self, device_id: &str) -> Event;
    fn with_ad(self, ad_id: &str) -> Event;
    fn for_user(self, user_id: &str) -> Event;
}

impl EventExt for Event {
    fn on(mut self, device_id: &str) -> Event {
        self.device_id = device_id.to_owned();
        self
    }
    fn with_ad(mut self, ad_id: &str) -> Event {
        self.ad_id = ad_id.to_owned();
        self
    }
    fn for_user(mut self, user_id: &str) -> Event {
        self.user_id = user_id.to_owned();
        self
    }
}

fn key(user_id: &str, start_ms: i64) -> SessionKey {
    SessionKey {
        user_id: user_id.to_owned(),
        video_id: "v".to_owned(),
        start_ms,
    }
}

/// Pushes everything in the given arrival order (all merged), then finishes.
fn sessions_of(events: Vec<Event>) -> Vec<Session> {
    let mut sessionizer = Sessionizer::new(SessionConfig::default());
    for event in events {
        assert_eq!(sessionizer.push(event), Outcome::Merged);
    }
    sessionizer.finish();
    let mut sessions = finals_of(sessionizer.drain_changes());
    sessions.sort_by_key(Session::key);
    sessions
}

fn only_session(events: Vec<Event>) -> Session {
    let mut sessions = sessions_of(events);
    assert_eq!(sessions.len(), 1, "{sessions:#?}");
    sessions.remove(0)
}

fn upsert_keys(changes: &[Change]) -> Vec<SessionKey> {
    keys_of(changes, |change| matches!(change, Change::Upsert(_)))
}

/// The `Final`s among `changes`, in order.
fn finals_of(changes: Vec<Change>) -> Vec<Session> {
    changes
        .into_iter()
        .filter_map(|change| match change {
            Change::Final(session) => Some(session),
            _ => None,
        })
        .collect()
}

fn final_keys(changes: &[Change]) -> Vec<SessionKey> {
    keys_of(changes, |change| matches!(change, Change::Final(_)))
}

fn keys_of(changes: &[Change], wanted: impl Fn(&Change) -> bool) -> Vec<SessionKey> {
    changes
        .iter()
        .filter(|change| wanted(change))
        .filter_map(|change| match change {
            Change::Upsert(session) | Change::Final(session) => Some(session.key()),
            Change::Delete(_) => None,
        })
        .collect()
}

/// Applies changes the way the store does.
fn apply(store: &mut BTreeMap<SessionKey, (Session, bool)>, changes: Vec<Change>) {
    for change in changes {
        match change {
            Change::Upsert(session) => {
                store.insert(session.key(), (session, false));
            }
            Change::Final(session) => {
                store.insert(session.key(), (session, true));
            }
            Change::Delete(key) => {
                store.remove(&key);
            }
        }
    }
}

#[test]
fn a_gap_of_exactly_g_starts_a_new_session() {
    let sessions = sessions_of(vec![playing("a", 0, 0), playing("b", G, 5_000)]);
    assert_eq!(sessions.len(), 2);
    assert_eq!((sessions[0].start_ms, sessions[0].end_ms), (0, 0));
    assert_eq!((sessions[1].start_ms, sessions[1].end_ms), (G, G));
    assert_eq!(sessions[1].last_position_ms, 5_000);
}

#[test]
fn a_gap_of_g_minus_one_joins_the_session() {
    let session = only_session(vec![playing("a", 0, 0), playing("b", G - 1, 5_000)]);
    assert_eq!(
        (session.start_ms, session.end_ms, session.heartbeats),
        (0, G - 1, 2)
    );
    assert_eq!(session.watch_ms, 5_000);
}

#[test]
fn a_forward_seek_beyond_twice_the_elapsed_time_counts_nothing() {
    let session = only_session(vec![
        playing("a", 0, 0),
        playing("b", 5_000, 5_000),
        playing("c", 10_000, 300_000),
        playing("d", 15_000, 305_000),
    ]);
    assert_eq!(session.watch_ms, 10_000);
    assert_eq!(session.coverage_ms, 10_000);
    assert_eq!(session.last_position_ms, 305_000);
}

#[test]
fn a_backward_seek_counts_nothing_and_rewatching_counts_watch_but_not_coverage() {
    let session = only_session(vec![
        playing("a", 0, 0),
        playing("b", 5_000, 5_000),
        playing("c", 10_000, 0),
        playing("d", 15_000, 5_000),
    ]);
    assert_eq!(session.watch_ms, 10_000);
    assert_eq!(session.coverage_ms, 5_000);
}

#[test]
fn a_step_at_exactly_twice_speed_is_watched() {
    let session = only_session(vec![playing("a", 0, 0), playing("b", 10_000, 20_000)]);
    assert_eq!((session.watch_ms, session.coverage_ms), (20_000, 20_000));
}

#[test]
fn a_step_one_millisecond_beyond_twice_speed_is_not_watched() {
    let session = only_session(vec![playing("a", 0, 0), playing("b", 10_000, 20_001)]);
    assert_eq!((session.watch_ms, session.coverage_ms), (0, 0));
}

#[test]
fn a_step_without_progress_is_not_watched() {
    let session = only_session(vec![playing("a", 0, 7_000), playing("b", 5_000, 7_000)]);
    assert_eq!((session.watch_ms, session.coverage_ms), (0, 0));
    assert_eq!(session.last_position_ms, 7_000);
}

#[test]
fn ad_steps_count_nothing_and_each_ad_is_collected_once() {
    let session = only_session(vec![
        playing("a", 0, 0).with_ad("ad-1"),
        playing("b", 5_000, 0).with_ad("ad-1"),
        playing("c", 10_000, 0),
        playing("d", 15_000, 5_000),
        playing("e", 20_000, 10_000).with_ad("ad-0"),
        playing("f", 25_000, 15_000).with_ad("ad-1"),
        playing("g", 30_000, 20_000),
    ]);
    // Only c -> d is watched: every other step has an ad at one end.
    assert_eq!((session.watch_ms, session.coverage_ms), (5_000, 5_000));
    assert_eq!(session.ads, vec!["ad-0".to_owned(), "ad-1".to_owned()]);
}

#[test]
fn a_step_from_a_paused_heartbeat_counts_nothing() {
    let session = only_session(vec![
        hb("a", 0, 0, PlaybackState::Paused),
        playing("b", 5_000, 5_000),
        playing("c", 10_000, 10_000),
    ]);
    assert_eq!(session.watch_ms, 5_000);
    assert_eq!(session.coverage_ms, 5_000);
}

#[test]
fn a_step_from_a_buffering_heartbeat_counts_nothing() {
    let session = only_session(vec![
        playing("a", 0, 0),
        hb("b", 5_000, 5_000, PlaybackState::Buffering),
        playing("c", 10_000, 8_000),
        hb("d", 15_000, 13_000, PlaybackState::Ended),
    ]);
    assert_eq!(session.watch_ms, 10_000);
    assert_eq!(session.coverage_ms, 10_000);
}

#[test]
fn a_device_switch_within_the_gap_stays_one_session_with_two_devices() {
    let session = only_session(vec![
        playing("a", 0, 0).on("phone"),
        playing("b", 5_000, 5_000).on("phone"),
        playing("c", 65_000, 5_000).on("tv"),
        playing("d", 70_000, 10_000).on("tv"),
    ]);
    assert_eq!(session.devices, 2);
    assert_eq!(session.heartbeats, 4);
    assert_eq!(session.watch_ms, 10_000);
}

#[test]
fn a_duplicate_event_id_is_ignored() {
    let mut sessionizer = Sessionizer::new(SessionConfig::default());
    assert_eq!(sessionizer.push(playing("a", 0, 0)), Outcome::Merged);
    assert_eq!(
        sessionizer.push(playing("b", 5_000, 5_000)),
        Outcome::Merged
    );
    assert_eq!(sessionizer.push(playing("a", 0, 0)), Outcome::Duplicate);
    // Same id, different content: the first copy still counts.
    assert_eq!(
        sessionizer.push(playing("b", 6_000, 9_000)),
        Outcome::Duplicate
    );
    sessionizer.finish();
    let changes = sessionizer.drain_changes();
    let Change::Final(session) = &changes[0] else {
        panic!("{changes:?}")
    };
    assert_eq!(
        (session.heartbeats, session.end_ms, session.watch_ms),
        (2, 5_000, 5_000)
    );
}

#[test]
fn a_late_heartbeat_inside_a_session_merges_exactly() {
    let mut sessionizer = Sessionizer::new(SessionConfig::default());
    sessionizer.push(playing("a", 0, 0));
    sessionizer.push(playing("c", 10_000, 25_000));
    let before = upserted(sessionizer.drain_changes());
    // a -> c: 25 s of position in 10 s is a seek.
    assert_eq!(before.watch_ms, 0);
    assert_eq!(
        sessionizer.push(playing("b", 5_000, 5_000)),
        Outcome::Merged
    );
    let after = upserted(sessionizer.drain_changes());
    // a -> b is watched, b -> c (20 s in 5 s) is not.
    assert_eq!(
        (after.heartbeats, after.watch_ms, after.coverage_ms),
        (3, 5_000, 5_000)
    );
    assert_eq!(
        after,
        only_session(vec![
            playing("a", 0, 0),
            playing("b", 5_000, 5_000),
            playing("c", 10_000, 25_000)
        ])
    );
}

fn upserted(changes: Vec<Change>) -> Session {
    match <[Change; 1]>::try_from(changes) {
        Ok([Change::Upsert(session)]) => session,
        other => panic!("expected one upsert, got {other:?}"),
    }
}

#[test]
fn a_late_heartbeat_that_bridges_two_sessions_merges_them_and_deletes_the_later_key() {
    let mut sessionizer = Sessionizer::new(SessionConfig::default());
    sessionizer.push(playing("a", 0, 0));
    sessionizer.push(playing("c", 610_000, 510_000));
    assert_eq!(
        upsert_keys(&sessionizer.drain_changes()),
        vec![key("u", 0), key("u", 610_000)]
    );
    assert_eq!(sessionizer.open_sessions(), 2);
    // 500 s after a and 110 s before c: within the gap of both.
    assert_eq!(
        sessionizer.push(playing("b", 500_000, 400_000)),
        Outcome::Merged
    );
    let changes = sessionizer.drain_changes();
    assert_eq!(changes.len(), 2, "{changes:?}");
    assert_eq!(changes[0], Change::Delete(key("u", 610_000)));
    let Change::Upsert(merged) = &changes[1] else {
        panic!("{changes:?}")
    };
    assert_eq!(
        (merged.start_ms, merged.end_ms, merged.heartbeats),
        (0, 610_000, 3)
    );
    assert_eq!((merged.watch_ms, merged.coverage_ms), (510_000, 510_000));
    assert_eq!(sessionizer.open_sessions(), 1);
}

#[test]
fn a_heartbeat_before_the_start_moves_the_session_key() {
    let mut sessionizer = Sessionizer::new(SessionConfig::default());
    sessionizer.push(playing("b", 100_000, 5_000));
    assert_eq!(
        upsert_keys(&sessionizer.drain_changes()),
        vec![key("u", 100_000)]
    );
    sessionizer.push(playing("a", 95_000, 0));
    let changes = sessionizer.drain_changes();
    assert_eq!(changes[0], Change::Delete(key("u", 100_000)));
    assert_eq!(upsert_keys(&changes), vec![key("u", 95_000)]);
    assert_eq!(changes.len(), 2);
}

#[test]
fn a_heartbeat_older_than_the_lateness_horizon_is_late_and_changes_nothing() {
    let mut sessionizer = Sessionizer::new(SessionConfig::default());
    sessionizer.push(playing("a", 1_000_000, 0));
    sessionizer.drain_changes();
    assert_eq!(
        sessionizer.push(playing("z", 1_000_000 - L - 1, 0)),
        Outcome::Late
    );
    assert_eq!(
        sessionizer.push(playing("y", 1_000_000 - L - 1, 0).for_user("w")),
        Outcome::Late
    );
    assert!(sessionizer.drain_changes().is_empty());
    assert_eq!(
        (sessionizer.open_sessions(), sessionizer.open_keys()),
        (1, 1)
    );
    // Exactly at the horizon is still merged.
    assert_eq!(
        sessionizer.push(playing("x", 1_000_000 - L, 0)),
        Outcome::Merged
    );
    assert_eq!(sessionizer.watermark_ms(), Some(1_000_000));
}

#[test]
fn a_session_becomes_final_once_the_watermark_passes_end_plus_gap_plus_lateness() {
    let mut sessionizer = Sessionizer::new(SessionConfig::default());
    sessionizer.push(playing("a", 0, 0));
    sessionizer.push(playing("b", 5_000, 5_000));
    sessionizer.push(playing("c", 5_000 + G + L, 0).for_user("other"));
    sessionizer.advance(0);
    assert_eq!(
        sessionizer.open_sessions(),
        2,
        "the watermark only reached end + G + L"
    );
    sessionizer.drain_changes();
    sessionizer.push(playing("d", 5_000 + G + L + 1, 5_000).for_user("other"));
    sessionizer.advance(0);
    assert_eq!(sessionizer.open_sessions(), 1);
    let changes = sessionizer.drain_changes();
    let finals: Vec<&Session> = changes
        .iter()
        .filter_map(|change| match change {
            Change::Final(session) => Some(session),
            _ => None,
        })
        .collect();
    assert_eq!(finals.len(), 1);
    assert_eq!(
        (
            finals[0].user_id.as_str(),
            finals[0].heartbeats,
            finals[0].watch_ms
        ),
        ("u", 2, 5_000)
    );
    assert_eq!(
        sessionizer.held_events(),
        2,
        "only the open session's heartbeats are held"
    );
}

#[test]
fn a_viewer_who_moved_on_holds_no_heartbeats_once_the_hold_passes_and_counts_the_same_on_return() {
    let mut sessionizer = Sessionizer::new(SessionConfig::default());
    let mut events: Vec<Event> = (0..=24)
        .map(|beat| playing(&format!("u{beat}"), beat * 5_000, beat * 5_000))
        .collect();
    for event in events.clone() {
        sessionizer.push(event);
    }
    let hold = L + L / 8;
    let elsewhere = playing("o", 120_000 + hold, 0).for_user("other");
    sessionizer.push(elsewhere.clone());
    sessionizer.advance(0);
    assert_eq!(
        sessionizer.held_events(),
        26,
        "not idle for the whole hold yet"
    );
    let still_elsewhere = playing("o2", 120_000 + hold + 1, 0).for_user("other");
    sessionizer.push(still_elsewhere.clone());
    sessionizer.advance(0);
    assert_eq!(sessionizer.held_events(), 2, "only the other viewer's");
    assert_eq!(sessionizer.open_sessions(), 2, "idle is not final");

    let back = playing("u25", 120_000 + hold + 5_000, 125_000);
    assert_eq!(sessionizer.push(back.clone()), Outcome::Merged);
    sessionizer.finish();
    let mut finals = finals_of(sessionizer.drain_changes());
    finals.sort_by_key(Session::key);
    events.extend([elsewhere, still_elsewhere, back]);
    let mut expected = sessionize_all(events, G);
    expected.sort_by_key(Session::key);
    assert_eq!(finals, expected);
    assert_eq!(finals[1].heartbeats, 26);
}

#[test]
fn sessions_of_one_key_that_share_a_wrapped_uid_each_become_final_on_their_own_time() {
    let mut sessionizer = Sessionizer::new(SessionConfig::default());
    sessionizer.push(playing("a", 0, 0));
    // The counter wrapped around to the first session's uid.
    sessionizer.next_uid = 0;
    sessionizer.push(playing("b", G, 0));
    assert_eq!(sessionizer.open_sessions(), 2);
    sessionizer.drain_changes();
    sessionizer.push(playing("c", G + L + 1, 0).for_user("other"));
    sessionizer.advance(0);
    assert_eq!(final_keys(&sessionizer.drain_changes()), [key("u", 0)]);
    assert_eq!(sessionizer.open_sessions(), 2, "the later one and other's");
    sessionizer.push(playing("d", 2 * G + L, 0).for_user("other"));
    sessionizer.advance(0);
    assert_eq!(final_keys(&sessionizer.drain_changes()), [], "not due yet");
    sessionizer.push(playing("e", 2 * G + L + 1, 0).for_user("other"));
    sessionizer.advance(0);
    assert_eq!(final_keys(&sessionizer.drain_changes()), [key("u", G)]);
    assert_eq!(sessionizer.open_sessions(), 1);
}

/// Advances every half second of processing time from `from_ms` to `to_ms`,
/// as the stage's ticks do.
fn tick_through(sessionizer: &mut Sessionizer, from_ms: i64, to_ms: i64) {
    let mut now_ms = from_ms;
    while now_ms < to_ms {
        now_ms = (now_ms + 500).min(to_ms);
        sessionizer.advance(now_ms);
    }
}

#[test]
fn a_partition_quiet_for_the_idle_timeout_advances_its_watermark_with_processing_time() {
    let mut sessionizer = Sessionizer::new(SessionConfig::default());
    sessionizer.push(playing("a", 0, 0));
    sessionizer.push(playing("b", 5_000, 5_000));
    sessionizer.advance(0);
    tick_through(&mut sessionizer, 0, IDLE);
    assert_eq!(
        sessionizer.watermark_ms(),
        Some(5_000),
        "quiet, not idle yet"
    );
    tick_through(&mut sessionizer, IDLE, IDLE + 60_000);
    assert_eq!(sessionizer.watermark_ms(), Some(65_000));
    assert_eq!(
        sessionizer.open_sessions(),
        1,
        "end + gap + lateness not passed"
    );
    tick_through(&mut sessionizer, IDLE + 60_000, IDLE + G + L + 1);
    assert_eq!(
        (sessionizer.open_sessions(), sessionizer.open_keys()),
        (0, 0)
    );
    let changes = sessionizer.drain_changes();
    assert!(
        matches!(changes.as_slice(), [Change::Final(s)] if s.heartbeats == 2 && s.watch_ms == 5_000),
        "{changes:?}"
    );
    assert_eq!(sessionizer.held_events(), 0);
}

#[test]
fn while_heartbeats_keep_coming_sessions_close_by_event_time_only() {
    let mut sessionizer = Sessionizer::new(SessionConfig::default());
    sessionizer.push(playing("a", 0, 0));
    // Another key of the partition keeps it busy for twice the idle timeout
    // of processing time, with little event time passing.
    let mut now_ms = 0;
    for n in 0..(2 * IDLE / 1_000) {
        now_ms += 1_000;
        let event = playing(&format!("o{n}"), n, 0).for_user("other");
        sessionizer.push(event);
        sessionizer.advance(now_ms);
    }
    assert_eq!(sessionizer.open_sessions(), 2);
    assert_eq!(
        sessionizer.push(playing("b", 5_000, 5_000)),
        Outcome::Merged
    );
    sessionizer.finish();
    let finals: Vec<_> = sessionizer
        .drain_changes()
        .into_iter()
        .filter_map(|change| match change {
            Change::Final(session) if session.user_id == "u" => Some(session),
            _ => None,
        })
        .collect();
    assert_eq!(finals.len(), 1, "{finals:?}");
    assert_eq!(finals[0].heartbeats, 2);
}

#[test]
fn a_stall_of_the_stage_of_any_length_is_not_idleness() {
    let mut sessionizer = Sessionizer::new(SessionConfig::default());
    sessionizer.push(playing("a", 0, 0));
    sessionizer.advance(0);
    // The process was paused for ten idle timeouts; the backlog comes next.
    sessionizer.advance(10 * IDLE);
    assert_eq!(sessionizer.watermark_ms(), Some(0));
    assert_eq!(
        sessionizer.push(playing("b", 5_000, 5_000)),
        Outcome::Merged
    );
    assert_eq!(sessionizer.open_sessions(), 1);
}

#[test]
fn after_an_idle_advance_a_heartbeat_behind_the_new_horizon_is_late() {
    let mut sessionizer = Sessionizer::new(SessionConfig::default());
    sessionizer.push(playing("a", 0, 0));
    sessionizer.advance(0);
    tick_through(&mut sessionizer, 0, IDLE + L + 10_000);
    assert_eq!(sessionizer.watermark_ms(), Some(L + 10_000));
    assert_eq!(sessionizer.push(playing("b", 5_000, 5_000)), Outcome::Late);
    assert_eq!(
        sessionizer.push(playing("c", 10_000, 10_000)),
        Outcome::Merged,
        "at the horizon: merged"
    );
}

#[test]
fn drained_changes_hold_one_entry_per_key_with_deletes_first() {
    let mut sessionizer = Sessionizer::new(SessionConfig::default());
    sessionizer.push(playing("b", 100_000, 5_000));
    sessionizer.push(playing("c", 105_000, 10_000));
    // Never drained under 100 000, so no delete for it.
    sessionizer.push(playing("a", 95_000, 0));
    assert_eq!(
        upsert_keys(&sessionizer.drain_changes()),
        vec![key("u", 95_000)]
    );
    sessionizer.push(playing("x", 100_000, 0).for_user("w"));
    sessionizer.push(playing("a0", 90_000, 0));
    sessionizer.push(playing("a1", 85_000, 0));
    sessionizer.push(playing("d", 110_000, 15_000));
    let changes = sessionizer.drain_changes();
    assert_eq!(changes[0], Change::Delete(key("u", 95_000)));
    // Upserts ordered by key slot: "u" came first.
    assert_eq!(
        upsert_keys(&changes),
        vec![key("u", 85_000), key("w", 100_000)]
    );
    assert_eq!(changes.len(), 3);
    assert!(
        sessionizer.drain_changes().is_empty(),
        "nothing changed since"
    );
}

#[test]
fn a_final_under_a_moved_start_deletes_the_stored_key() {
    let mut sessionizer = Sessionizer::new(SessionConfig::default());
    sessionizer.push(playing("b", 100_000, 5_000));
    sessionizer.drain_changes();
    sessionizer.push(playing("a", 50_000, 0));
    sessionizer.push(playing("z", 100_000 + G + L + 1, 0).for_user("w"));
    sessionizer.advance(0);
    let changes = sessionizer.drain_changes();
    assert_eq!(changes[0], Change::Delete(key("u", 100_000)));
    assert!(
        matches!(&changes[2], Change::Final(s) if s.key() == key("u", 50_000)),
        "{changes:?}"
    );
    assert_eq!(upsert_keys(&changes), vec![key("w", 100_000 + G + L + 1)]);
}

/// A long session with seeks, pauses, ads and a second device, delivered with
/// adjacent swaps so some heartbeats land inside the tail.
fn long_viewing(count: i64) -> Vec<Event> {
    (0..count)
        .map(|i| {
            let state = match i % 17 {
                3 => PlaybackState::Paused,
                9 => PlaybackState::Buffering,
                _ => PlaybackState::Playing,
            };
            let position_ms = match i % 41 {
                20 => i * 5_000 - 60_000,
                30 => i * 5_000 + 200_000,
                _ => i * 5_000,
            };
            let mut event = hb(&format!("e{i:05}"), i * 5_000, position_ms, state);
            if i % 53 < 3 {
                event.ad_id = format!("ad{}", i % 5);
            }
            if i > count / 2 {
                event.device_id = "tv".to_owned();
            }
            event
        })
        .collect()
}

#[test]
fn frozen_summaries_give_the_same_session_as_the_batch_and_keep_few_heartbeats() {
    let events = long_viewing(2_000);
    let expected = sessionize_all(events.clone(), G);
    assert_eq!(expected.len(), 1);
    let mut arrivals = events;
    for pair in arrivals.chunks_mut(2) {
        pair.reverse();
    }
    let mut sessionizer = Sessionizer::new(SessionConfig::default());
    let mut most_held = 0;
    for event in arrivals {
        assert_eq!(sessionizer.push(event), Outcome::Merged);
        most_held = most_held.max(sessionizer.held_events());
    }
    // 2 min of lateness, frozen in runs of an eighth of it, at one heartbeat
    // per 5 s, plus the swapped neighbour.
    assert!(
        most_held <= (L + L / 8) as usize / 5_000 + 2,
        "held {most_held}"
    );
    sessionizer.finish();
    let changes = sessionizer.drain_changes();
    assert!(
        matches!(changes.as_slice(), [Change::Final(s)] if *s == expected[0]),
        "{changes:?}"
    );
    assert_eq!(expected[0].devices, 2);
    assert_eq!(expected[0].ads.len(), 5);
}

#[test]
fn restoring_open_sessions_then_continuing_gives_the_same_sessions_as_never_restarting() {
    let mut events = long_viewing(400);
    events.extend(long_viewing(300).into_iter().map(|e| e.for_user("w")));
    events.sort_by_key(|e| e.time_ms);
    let cut = 500;

    let mut uninterrupted = Sessionizer::new(SessionConfig::default());
    let mut expected = BTreeMap::new();
    for event in events.clone() {
        uninterrupted.push(event);
        apply(&mut expected, uninterrupted.drain_changes());
    }
    uninterrupted.finish();
    apply(&mut expected, uninterrupted.drain_changes());

    let mut before = Sessionizer::new(SessionConfig::default());
    let mut store = BTreeMap::new();
    for event in events[..cut].iter().cloned() {
        before.push(event);
    }
    apply(&mut store, before.drain_changes());
    // What the service reads back: the raw heartbeats of the open sessions.
    let open: Vec<Event> = store
        .values()
        .filter(|(_, is_final)| !is_final)
        .flat_map(|(session, _)| {
            events[..cut].iter().filter(move |e| {
                e.user_id == session.user_id
                    && (session.start_ms..=session.end_ms).contains(&e.time_ms)
            })
        })
        .cloned()
        .collect();
    assert!(open.len() > 100);
    let mut after = Sessionizer::new(SessionConfig::default());
    let mut reversed = open;
    reversed.reverse();
    reversed.push(reversed[0].clone());
    after.restore(reversed, before.watermark_ms());
    assert!(after.drain_changes().is_empty(), "restore emits nothing");
    assert_eq!(after.open_sessions(), before.open_sessions());
    assert!(after.held_events() <= before.held_events());
    for event in events[cut..].iter().cloned() {
        after.push(event);
        apply(&mut store, after.drain_changes());
    }
    after.finish();
    apply(&mut store, after.drain_changes());
    assert_eq!(store, expected);
    assert!(store.values().all(|(_, is_final)| *is_final));
}

#[test]
fn a_restored_watermark_keeps_rejecting_what_was_already_too_late() {
    let mut sessionizer = Sessionizer::new(SessionConfig::default());
    sessionizer.restore(vec![playing("a", 10_000, 0)], Some(1_000_000));
    assert_eq!(sessionizer.watermark_ms(), Some(1_000_000));
    assert_eq!(
        sessionizer.push(playing("b", 1_000_000 - L - 1, 0)),
        Outcome::Late
    );
    assert_eq!(
        sessionizer.held_events(),
        0,
        "the restored heartbeat is frozen at once"
    );
    assert_eq!(sessionizer.open_sessions(), 1);
}

#[test]
fn sessionize_all_keeps_the_first_copy_in_input_order_and_sorts_by_key() {
    let events = vec![
        playing("b", 5_000, 5_000).for_user("z"),
        playing("a", 0, 0).for_user("z"),
        playing("a", 0, 99_000).for_user("z"),
        playing("c", 0, 0).for_user("m"),
        playing("d", G, 0).for_user("m"),
    ];
    let sessions = sessionize_all(events, G);
    let keys: Vec<SessionKey> = sessions.iter().map(Session::key).collect();
    assert_eq!(keys, vec![key("m", 0), key("m", G), key("z", 0)]);
    assert_eq!((sessions[2].heartbeats, sessions[2].watch_ms), (2, 5_000));
}

#[test]
fn from_proto_rejects_an_unspecified_state_and_a_missing_time() {
    let mut heartbeat = Heartbeat {
        event_id: "e".to_owned(),
        device_id: "d".to_owned(),
        user_id: "u".to_owned(),
        video_id: "v".to_owned(),
        event_time: Some(hb_common::time::ms_to_timestamp(1_700_000_000_123)),
        position_ms: 42,
        state: hb_proto::v1::PlaybackState::Paused as i32,
        ad_id: "ad".to_owned(),
        ..Default::default()
    };
    let event = Event::from_proto(&heartbeat).unwrap();
    assert_eq!(
        (event.time_ms, event.position_ms, event.state),
        (1_700_000_000_123, 42, PlaybackState::Paused)
    );
    assert_eq!(Event::try_from(heartbeat.clone()).unwrap(), event);
    heartbeat.state = 0;
    assert!(Event::from_proto(&heartbeat).is_err());
    heartbeat.state = 1;
    heartbeat.event_time = None;
    assert!(Event::from_proto(&heartbeat).is_err());
}

#[test]
fn playback_states_round_trip_through_names_and_numbers() {
    for state in [
        PlaybackState::Playing,
        PlaybackState::Paused,
        PlaybackState::Buffering,
        PlaybackState::Ended,
    ] {
        assert_eq!(state.as_str().parse::<PlaybackState>().unwrap(), state);
        assert_eq!(PlaybackState::try_from(state.to_proto()).unwrap(), state);
        assert_eq!(
            serde_json::to_string(&state).unwrap(),
            format!("\"{}\"", state.as_str())
        );
    }
    assert!(PlaybackState::try_from(9).is_err());
}

#[test]
fn borrowed_pushes_and_drains_give_the_same_outcomes_and_changes_as_owned_ones() {
    // Two sessions; then a bridge between them (a delete) and a resend.
    let rounds = [
        vec![playing("a", 0, 0), playing("c", G + 60_000, 10_000)],
        vec![
            playing("b", 590_000, 5_000).with_ad("ad-1"),
            playing("a", 0, 0),
        ],
        // Far later: the merged session becomes final.
        vec![playing("d", 4 * G, 0)],
    ];
    let mut owned = Sessionizer::new(SessionConfig::default());
    let mut by_refs = Sessionizer::new(SessionConfig::default());
    let mut by_one_ref = Sessionizer::new(SessionConfig::default());
    let mut by_slice = Sessionizer::new(SessionConfig::default());
    for (round, events) in rounds.iter().enumerate() {
        let outcomes: Vec<Outcome> = events
            .iter()
            .map(|event| owned.push(event.clone()))
            .collect();
        let refs: Vec<EventRef<'_>> = events.iter().map(Event::to_ref).collect();
        assert_eq!(by_refs.push_event_refs(&refs), outcomes);
        assert_eq!(by_slice.push_events(events), outcomes);
        let one_ref: Vec<Outcome> = refs
            .iter()
            .map(|event| by_one_ref.push_ref(*event))
            .collect();
        assert_eq!(one_ref, outcomes);
        if round == 2 {
            for sessionizer in [&mut owned, &mut by_refs, &mut by_one_ref, &mut by_slice] {
                sessionizer.advance(0);
            }
        }
        let changes = owned.drain_changes();
        let has = |wanted: fn(&Change) -> bool| changes.iter().any(wanted);
        assert_eq!(has(|c| matches!(c, Change::Delete(_))), round == 1);
        assert_eq!(has(|c| matches!(c, Change::Final(_))), round == 2);
        let mut borrowed = Vec::new();
        by_refs.drain_changes_with(|change| {
            borrowed.push(match change {
                ChangeRef::Upsert(session) => Change::Upsert(session.to_session()),
                ChangeRef::Final(session) => Change::Final(session),
                ChangeRef::Delete(key) => Change::Delete(key),
            })
        });
        assert_eq!(borrowed, changes);
        assert_eq!(by_one_ref.drain_changes(), changes);
        assert_eq!(by_slice.drain_changes(), changes);
        assert_eq!(refs[0].to_owned_event(), events[0]);
    }
}

fn on_video(mut event: Event, video_id: &str) -> Event {
    event.video_id = video_id.to_owned();
    event
}

#[test]
fn forgetting_a_user_drops_every_key_of_theirs_and_nothing_else() {
    let mut sessionizer = Sessionizer::new(SessionConfig::default());
    for event in [
        playing("a1", 0, 0).for_user("alice"),
        playing("a2", 5_000, 5_000).for_user("alice"),
        on_video(playing("a3", 6_000, 0).for_user("alice"), "w"),
        playing("b1", 1_000, 0).for_user("bob"),
        playing("b2", 6_000, 5_000).for_user("bob"),
    ] {
        assert_eq!(sessionizer.push(event), Outcome::Merged);
    }
    assert_eq!(sessionizer.open_sessions(), 3);
    assert_eq!(sessionizer.forget_user("alice"), 2);
    assert_eq!(sessionizer.forget_user("alice"), 0);
    assert_eq!(sessionizer.forget_user("nobody"), 0);
    assert_eq!(sessionizer.open_sessions(), 1);
    assert_eq!(sessionizer.open_keys(), 1);
    assert_eq!(sessionizer.held_events(), 2);
    // Alice's undrained upserts are gone; Bob's remain.
    let changes = sessionizer.drain_changes();
    assert_eq!(upsert_keys(&changes), vec![key("bob", 1_000)]);
    sessionizer.finish();
    let finals = finals_of(sessionizer.drain_changes());
    assert_eq!(finals.len(), 1);
    assert_eq!(finals[0].user_id, "bob");
    assert_eq!(finals[0].heartbeats, 2);
}

#[test]
fn a_forgotten_users_pending_finals_and_deletes_are_not_reported() {
    let mut sessionizer = Sessionizer::new(SessionConfig::default());
    sessionizer.push(playing("a1", 0, 0).for_user("alice"));
    sessionizer.push(playing("b1", 0, 0).for_user("bob"));
    sessionizer.drain_changes();
    // Alice's session moves its start (a delete of the stored key) and both
    // sessions end (finals), none drained yet.
    sessionizer.push(playing("a0", -1_000, 0).for_user("alice"));
    sessionizer.push(playing("late-clock", 10 * G, 0).for_user("carol"));
    sessionizer.advance(0);
    assert_eq!(sessionizer.forget_user("alice"), 0, "already final");
    let changes = sessionizer.drain_changes();
    assert!(
        changes.iter().all(|change| match change {
            Change::Upsert(s) | Change::Final(s) => s.user_id != "alice",
            Change::Delete(key) => key.user_id != "alice",
        }),
        "{changes:?}"
    );
    assert!(changes
        .iter()
        .any(|change| matches!(change, Change::Final(s) if s.user_id == "bob")));
}

#[test]
fn heartbeats_of_a_forgotten_user_start_new_sessions_even_when_resent() {
    let mut sessionizer = Sessionizer::new(SessionConfig::default());
    sessionizer.push(playing("a1", 0, 0).for_user("alice"));
    sessionizer.push(playing("a2", 5_000, 5_000).for_user("alice"));
    sessionizer.drain_changes();
    assert_eq!(sessionizer.forget_user("alice"), 1);
    // The same heartbeat again is new data now, not a duplicate.
    assert_eq!(
        sessionizer.push(playing("a2", 5_000, 5_000).for_user("alice")),
        Outcome::Merged
    );
    sessionizer.push(playing("a3", 10_000, 10_000).for_user("alice"));
    let changes = sessionizer.drain_changes();
    assert_eq!(upsert_keys(&changes), vec![key("alice", 5_000)]);
    sessionizer.finish();
    let finals = finals_of(sessionizer.drain_changes());
    assert_eq!(finals.len(), 1);
    assert_eq!((finals[0].start_ms, finals[0].heartbeats), (5_000, 2));
}

/// The store's rows of the keys in `share`.
fn rows_in(
    store: &BTreeMap<SessionKey, (Session, bool)>,
    share: Share,
) -> Vec<(&SessionKey, &(Session, bool))> {
    store
        .iter()
        .filter(|(key, _)| share.holds(&key.user_id, &key.video_id))
        .collect()
}

#[test]
fn draining_share_by_share_writes_each_keys_changes_together_and_ends_where_whole_drains_do() {
    const SHARES: u32 = 4;
    let share = |index| Share { index, of: SHARES };
    let mut whole = Sessionizer::new(SessionConfig::default());
    let mut by_share = Sessionizer::new(SessionConfig::default());
    let (mut whole_store, mut share_store) = (BTreeMap::new(), BTreeMap::new());
    let users: Vec<String> = (0..24).map(|i| format!("user-{i}")).collect();
    let mut starts: BTreeMap<&str, i64> = BTreeMap::new();
    for step in 0..48_i64 {
        let now = step * 60_000;
        let mut events = Vec::new();
        for (i, user) in users.iter().enumerate() {
            // Ten minutes of viewing, then twelve away (over the gap): sessions
            // start, end and become final all through the run.
            if (step + 3 * i as i64) % 22 >= 10 {
                starts.remove(user.as_str());
                continue;
            }
            let time_ms = now + i as i64 * 100;
            let start = *starts.entry(user).or_insert(time_ms);
            events
                .push(playing(&format!("{user}-{step}"), time_ms, time_ms - start).for_user(user));
            if time_ms - start == 60_000 && i % 3 == 0 {
                // Just before the start, within the lateness: the key moves.
                events.push(playing(&format!("{user}-early"), start - 30_000, 0).for_user(user));
            }
        }
        for event in events {
            assert_eq!(whole.push(event.clone()), Outcome::Merged);
            assert_eq!(by_share.push(event), Outcome::Merged);
        }
        whole.advance(now);
        by_share.advance(now);
        apply(&mut whole_store, whole.drain_changes());
        let drained = share(step as u32 % SHARES);
        let changes = by_share.drain_share(drained);
        assert!(changes.iter().all(|change| {
            let (user_id, video_id) = match change {
                Change::Upsert(session) | Change::Final(session) => {
                    (&session.user_id, &session.video_id)
                }
                Change::Delete(key) => (&key.user_id, &key.video_id),
            };
            drained.holds(user_id, video_id)
        }));
        apply(&mut share_store, changes);
        assert_eq!(
            rows_in(&share_store, drained),
            rows_in(&whole_store, drained),
            "the drained share's keys are as a whole drain leaves them"
        );
    }
    for index in 0..SHARES {
        apply(&mut share_store, by_share.drain_share(share(index)));
    }
    let finals = whole_store
        .values()
        .filter(|(_, is_final)| *is_final)
        .count();
    assert!(
        finals > 10 && finals < whole_store.len(),
        "{finals} of {}",
        whole_store.len()
    );
    assert_eq!(share_store, whole_store);
}
