//! Property test of the sessionizer against SPEC 5 itself: random heartbeat
//! sets (few keys, times clustered around the gap, random states, ads,
//! positions and resends) are fed in random arrival orders that stay within
//! the allowed lateness, with random drains, watermark advances and restarts
//! (restore from the open sessions' raw heartbeats). The sessions the store
//! ends up with, and those of `sessionize_all`, must equal a straightforward
//! batch implementation of SPEC 5 written here, independent of the module.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use proptest::prelude::*;
use svc_stream::sessionizer::{
    sessionize_all, Change, ChangeRef, Event, Outcome, PlaybackState, Session, SessionConfig,
    SessionKey, Sessionizer,
};

/// SPEC 5 as a batch over every heartbeat, the first copy of an id winning.
fn oracle(heartbeats: &[Event], gap_ms: i64) -> BTreeMap<SessionKey, Session> {
    let mut seen = HashSet::new();
    let mut by_key: BTreeMap<(&str, &str), Vec<&Event>> = BTreeMap::new();
    for event in heartbeats {
        if seen.insert(event.event_id.as_str()) {
            by_key
                .entry((event.user_id.as_str(), event.video_id.as_str()))
                .or_default()
                .push(event);
        }
    }
    let mut sessions = BTreeMap::new();
    for ((user_id, video_id), mut events) in by_key {
        events.sort_by(|a, b| (a.time_ms, &a.event_id).cmp(&(b.time_ms, &b.event_id)));
        let mut runs: Vec<Vec<&Event>> = Vec::new();
        for event in events {
            match runs.last_mut() {
                Some(run) if event.time_ms - run.last().unwrap().time_ms < gap_ms => {
                    run.push(event)
                }
                _ => runs.push(vec![event]),
            }
        }
        for run in runs {
            let mut watch_ms = 0;
            let mut intervals = Vec::new();
            for pair in run.windows(2) {
                let (a, b) = (pair[0], pair[1]);
                let dt = b.time_ms - a.time_ms;
                let dp = b.position_ms - a.position_ms;
                if a.state == PlaybackState::Playing
                    && a.ad_id.is_empty()
                    && b.ad_id.is_empty()
                    && 0 < dp
                    && dp <= 2 * dt
                {
                    watch_ms += dp;
                    intervals.push((a.position_ms, b.position_ms));
                }
            }
            intervals.sort_unstable();
            let mut coverage_ms = 0;
            let mut open: Option<(i64, i64)> = None;
            for (lo, hi) in intervals {
                open = match open {
                    Some((olo, ohi)) if lo <= ohi => Some((olo, ohi.max(hi))),
                    Some((olo, ohi)) => {
                        coverage_ms += ohi - olo;
                        Some((lo, hi))
                    }
                    None => Some((lo, hi)),
                };
            }
            coverage_ms += open.map_or(0, |(lo, hi)| hi - lo);
            let ads: BTreeSet<&str> = run
                .iter()
                .filter(|e| !e.ad_id.is_empty())
                .map(|e| e.ad_id.as_str())
                .collect();
            let devices: BTreeSet<&str> = run.iter().map(|e| e.device_id.as_str()).collect();
            let session = Session {
                user_id: user_id.to_owned(),
                video_id: video_id.to_owned(),
                start_ms: run[0].time_ms,
                end_ms: run.last().unwrap().time_ms,
                heartbeats: run.len() as u64,
                watch_ms,
                coverage_ms,
                last_position_ms: run.last().unwrap().position_ms,
                ads: ads.into_iter().map(str::to_owned).collect(),
                devices: devices.len() as u64,
            };
            sessions.insert(session.key(), session);
        }
    }
    sessions
}

/// One generated heartbeat before ids and arrival are assigned.
#[derive(Clone, Debug)]
struct Draft {
    user: u8,
    video: u8,
    device: u8,
    cluster: i64,
    offset: Offset,
    position: Position,
    state: PlaybackState,
    ad: u8,
    /// Fraction of the lateness this heartbeat is delivered behind its time.
    delay_permille: i64,
    /// Delivered once more, this far behind.
    resend_permille: Option<i64>,
}

#[derive(Clone, Copy, Debug)]
enum Offset {
    Zero,
    One,
    GapMinusOne,
    Half,
    Any(i64),
}

#[derive(Clone, Copy, Debug)]
enum Position {
    /// Position = time (1x playback from 0), plus a small wobble.
    Playhead(i64),
    Doubled(i64),
    Anywhere(i64),
    /// Billions of milliseconds away (a seek across a live stream's days):
    /// beyond what a held heartbeat keeps in 32 bits from its tail's base.
    Far(i64),
}

fn draft() -> impl Strategy<Value = Draft> {
    let state = prop_oneof![
        6 => Just(PlaybackState::Playing),
        1 => Just(PlaybackState::Paused),
        1 => Just(PlaybackState::Buffering),
        1 => Just(PlaybackState::Ended),
    ];
    let offset = prop_oneof![
        Just(Offset::Zero),
        Just(Offset::One),
        Just(Offset::GapMinusOne),
        Just(Offset::Half),
        (0i64..1_000).prop_map(Offset::Any),
    ];
    let position = prop_oneof![
        6 => (-3i64..=3).prop_map(Position::Playhead),
        1 => (-1i64..=1).prop_map(Position::Doubled),
        2 => (0i64..2_000).prop_map(Position::Anywhere),
        1 => (-2i64..=2).prop_map(Position::Far),
    ];
    (
        (0u8..3, 0u8..2, 0u8..3, 0i64..8),
        offset,
        position,
        state,
        prop_oneof![6 => Just(0u8), 1 => Just(1u8), 1 => Just(2u8)],
        0i64..=1_000,
        proptest::option::weighted(0.1, 0i64..=1_000),
    )
        .prop_map(
            |((user, video, device, cluster), offset, position, state, ad, delay, resend)| Draft {
                user,
                video,
                device,
                cluster,
                offset,
                position,
                state,
                ad,
                delay_permille: delay,
                resend_permille: resend,
            },
        )
}

/// What happens after an arrival.
#[derive(Clone, Copy, Debug)]
enum Step {
    Nothing,
    Drain,
    AdvanceAndDrain,
    Restart,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        8 => Just(Step::Nothing),
        3 => Just(Step::Drain),
        3 => Just(Step::AdvanceAndDrain),
        1 => Just(Step::Restart),
    ]
}

#[derive(Clone, Debug)]
struct Scenario {
    config: SessionConfig,
    /// Unique heartbeats.
    heartbeats: Vec<Event>,
    /// Delivery order, resent copies included.
    arrivals: Vec<Event>,
    steps: Vec<Step>,
    /// Feed through `push_batch` (flushed before each step) instead of `push`.
    batched: bool,
}

fn scenario() -> impl Strategy<Value = Scenario> {
    (
        prop_oneof![Just(50i64), Just(100)],
        prop_oneof![Just(0i64), Just(10), Just(30), Just(100), Just(250)],
        proptest::collection::vec(draft(), 1..70),
        proptest::collection::vec(step(), 140),
        any::<bool>(),
    )
        .prop_map(|(gap_ms, lateness_ms, drafts, steps, batched)| {
            let config = SessionConfig {
                gap_ms,
                lateness_ms,
                idle_timeout_ms: i64::MAX / 4,
            };
            let mut heartbeats = Vec::new();
            let mut deliveries = Vec::new();
            for (index, draft) in drafts.into_iter().enumerate() {
                let offset = match draft.offset {
                    Offset::Zero => 0,
                    Offset::One => 1,
                    Offset::GapMinusOne => gap_ms - 1,
                    Offset::Half => gap_ms / 2,
                    Offset::Any(n) => n % gap_ms,
                };
                let time_ms = draft.cluster * gap_ms + offset;
                let position_ms = match draft.position {
                    Position::Playhead(wobble) => time_ms + wobble,
                    Position::Doubled(wobble) => 2 * time_ms + wobble,
                    Position::Anywhere(n) => n,
                    Position::Far(n) => time_ms + n * 3_000_000_000,
                };
                // A third of the ids canonical UUIDs and a third 32 plain hex
                // digits (both held as 16 bytes), a third other text (held as
                // text), in an order unrelated to the index, so ties in time
                // are broken across all three forms.
                let scrambled = (index as u32).wrapping_mul(0x9e37_79b9);
                let event_id = match index % 3 {
                    0 => format!("{scrambled:08x}-0000-4000-8000-{index:012x}"),
                    1 => format!("{scrambled:08x}00004000a000{index:012x}"),
                    _ => format!("{:x}{index:03}", scrambled >> 28),
                };
                let event = Event {
                    event_id,
                    user_id: format!("u{}", draft.user),
                    video_id: format!("v{}", draft.video),
                    device_id: format!("d{}", draft.device),
                    time_ms,
                    position_ms,
                    state: draft.state,
                    ad_id: if draft.ad == 0 {
                        String::new()
                    } else {
                        format!("ad{}", draft.ad)
                    },
                };
                // Delivered at time + delay with delay <= lateness: every
                // heartbeat arrives within the lateness of the newest before it.
                let due = |permille: i64| time_ms * 1_000 + permille * lateness_ms;
                deliveries.push((due(draft.delay_permille), deliveries.len(), event.clone()));
                if let Some(permille) = draft.resend_permille {
                    deliveries.push((due(permille), deliveries.len(), event.clone()));
                }
                heartbeats.push(event);
            }
            deliveries.sort_by_key(|(due, order, _)| (*due, *order));
            Scenario {
                config,
                heartbeats,
                arrivals: deliveries.into_iter().map(|(_, _, event)| event).collect(),
                steps,
                batched,
            }
        })
}

/// The sessions store as the service keeps it: row plus "final" flag.
#[derive(Default)]
struct Store {
    rows: BTreeMap<SessionKey, (Session, bool)>,
}

impl Store {
    fn apply(&mut self, changes: Vec<Change>) -> Result<(), TestCaseError> {
        let keys: Vec<SessionKey> = changes.iter().map(Change::key).collect();
        let distinct: BTreeSet<&SessionKey> = keys.iter().collect();
        prop_assert_eq!(
            distinct.len(),
            keys.len(),
            "one change per key: {:?}",
            changes
        );
        let first_write = changes
            .iter()
            .position(|change| !matches!(change, Change::Delete(_)))
            .unwrap_or(changes.len());
        prop_assert!(
            changes[first_write..]
                .iter()
                .all(|c| !matches!(c, Change::Delete(_))),
            "deletes come first: {:?}",
            changes
        );
        for change in changes {
            let key = change.key();
            if let Some((_, true)) = self.rows.get(&key) {
                prop_assert!(false, "a final session was changed again: {:?}", change);
            }
            match change {
                Change::Upsert(session) => {
                    self.rows.insert(key, (session, false));
                }
                Change::Final(session) => {
                    self.rows.insert(key, (session, true));
                }
                Change::Delete(_) => {
                    prop_assert!(
                        self.rows.remove(&key).is_some(),
                        "deleted an unknown key {:?}",
                        key
                    );
                }
            }
        }
        Ok(())
    }
}

fn run(scenario: &Scenario) -> Result<BTreeMap<SessionKey, Session>, TestCaseError> {
    let mut sessionizer = Sessionizer::new(scenario.config);
    let mut store = Store::default();
    // The raw mirror: every accepted heartbeat.
    let mut mirror: Vec<Event> = Vec::new();
    let mut accepted_ids = HashSet::new();
    let mut batch = Vec::new();
    let mut expected_outcomes = Vec::new();
    let last = scenario.arrivals.len() - 1;
    for (index, (arrival, step)) in scenario
        .arrivals
        .iter()
        .zip(scenario.steps.iter().cycle())
        .enumerate()
    {
        let first_copy = !accepted_ids.contains(&arrival.event_id);
        let expected = if first_copy {
            Outcome::Merged
        } else {
            Outcome::Duplicate
        };
        if first_copy {
            accepted_ids.insert(arrival.event_id.clone());
            mirror.push(arrival.clone());
        }
        if scenario.batched {
            batch.push(arrival.clone());
            expected_outcomes.push(expected);
            if matches!(step, Step::Nothing) && index < last {
                continue;
            }
            // Alternately owned and borrowed: both must behave like `push`.
            let outcomes = if index % 2 == 0 {
                sessionizer.push_batch(std::mem::take(&mut batch))
            } else {
                let outcomes = sessionizer.push_events(&batch);
                batch.clear();
                outcomes
            };
            prop_assert_eq!(&outcomes, &expected_outcomes);
            expected_outcomes.clear();
        } else {
            let outcome = sessionizer.push(arrival.clone());
            prop_assert_eq!(outcome, expected, "{:?}", arrival);
        }
        match step {
            Step::Nothing => {}
            Step::Drain => {
                // The borrowing drain hands over the same changes.
                let mut changes = Vec::new();
                sessionizer.drain_changes_with(|change| {
                    changes.push(match change {
                        ChangeRef::Upsert(session) => Change::Upsert(session.to_session()),
                        ChangeRef::Final(session) => Change::Final(session),
                        ChangeRef::Delete(key) => Change::Delete(key),
                    })
                });
                store.apply(changes)?
            }
            Step::AdvanceAndDrain => {
                sessionizer.advance(0);
                store.apply(sessionizer.drain_changes())?;
            }
            Step::Restart => {
                store.apply(sessionizer.drain_changes())?;
                let watermark_ms = sessionizer.watermark_ms();
                let open: Vec<Event> = store
                    .rows
                    .values()
                    .filter(|(_, is_final)| !is_final)
                    .flat_map(|(session, _)| {
                        mirror.iter().filter(move |e| {
                            e.user_id == session.user_id
                                && e.video_id == session.video_id
                                && session.start_ms <= e.time_ms
                                && e.time_ms <= session.end_ms
                        })
                    })
                    .cloned()
                    .collect();
                let open_before = sessionizer.open_sessions();
                sessionizer = Sessionizer::new(scenario.config);
                sessionizer.restore(open, watermark_ms);
                prop_assert_eq!(sessionizer.open_sessions(), open_before);
                prop_assert_eq!(sessionizer.watermark_ms(), watermark_ms);
                prop_assert!(sessionizer.drain_changes().is_empty());
            }
        }
        if !matches!(step, Step::Nothing) {
            // Right after a drain the store holds exactly the open sessions.
            let open_rows = store
                .rows
                .values()
                .filter(|(_, is_final)| !is_final)
                .count();
            prop_assert_eq!(open_rows, sessionizer.open_sessions());
        }
    }
    sessionizer.finish();
    store.apply(sessionizer.drain_changes())?;
    prop_assert_eq!(sessionizer.open_sessions(), 0);
    prop_assert_eq!(sessionizer.held_events(), 0);
    prop_assert!(store.rows.values().all(|(_, is_final)| *is_final));
    Ok(store
        .rows
        .into_iter()
        .map(|(key, (session, _))| (key, session))
        .collect())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 600, ..ProptestConfig::default() })]

    #[test]
    fn the_store_fed_by_the_change_stream_ends_up_with_the_batch_sessions(scenario in scenario()) {
        let expected = oracle(&scenario.heartbeats, scenario.config.gap_ms);
        let streamed = run(&scenario)?;
        prop_assert_eq!(streamed, expected);
    }

    #[test]
    fn sessionize_all_equals_the_batch_definition_whatever_the_input_order(scenario in scenario()) {
        // Arrival order with resends: the oracle takes the first copy too.
        let expected: Vec<Session> =
            oracle(&scenario.arrivals, scenario.config.gap_ms).into_values().collect();
        prop_assert_eq!(sessionize_all(scenario.arrivals.clone(), scenario.config.gap_ms), expected);
    }

    #[test]
    fn heartbeats_behind_the_lateness_horizon_are_late_and_change_nothing(
        scenario in scenario(),
        behind in 1i64..50,
    ) {
        let mut sessionizer = Sessionizer::new(scenario.config);
        for arrival in &scenario.arrivals {
            sessionizer.push(arrival.clone());
        }
        sessionizer.advance(0);
        let before = sessionizer.drain_changes().len();
        prop_assume!(before > 0);
        let watermark_ms = sessionizer.watermark_ms().unwrap();
        let mut late = scenario.heartbeats[0].clone();
        late.event_id = "late".to_owned();
        late.time_ms = watermark_ms - scenario.config.lateness_ms - behind;
        prop_assert_eq!(sessionizer.push(late), Outcome::Late);
        prop_assert!(sessionizer.drain_changes().is_empty());
    }
}
