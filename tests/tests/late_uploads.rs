//! Offline viewing uploaded late, through the whole embedded mesh: players
//! send their live heartbeats, then devices that were offline upload what
//! they recorded (a day ago, and the half hour before a viewing went live).
//! Once the mesh is quiescent, every user's sessions over HTTP equal SPEC 5's
//! batch definition over everything accepted, however late.

use hb_e2e_tests::{spawn_app_configured, Tier};
use hb_proto::v1::{Heartbeat, PlaybackState};
use hb_testkit::fleet::{Fleet, FleetConfig};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};
use svc_stream::sessionizer::{sessionize_all, Event, Session};

const GAP: Duration = Duration::from_secs(5);
const MINUTE_MS: i64 = 60_000;

/// One heartbeat every 5 s of `user_id` watching `video_id` from `from_ms`.
fn viewing(user_id: &str, video_id: &str, from_ms: i64, beats: i64) -> Vec<Heartbeat> {
    (0..beats)
        .map(|i| Heartbeat {
            event_id: format!("{user_id}-{video_id}-{i}-{from_ms}"),
            device_id: format!("{user_id}-tablet"),
            user_id: user_id.into(),
            video_id: video_id.into(),
            event_time: Some(hb_common::time::ms_to_timestamp(from_ms + i * 1_000)),
            position_ms: i as u64 * 1_000,
            state: PlaybackState::Playing as i32,
            ..Heartbeat::default()
        })
        .collect()
}

fn expected(heartbeats: &[Heartbeat]) -> BTreeMap<String, Vec<Session>> {
    let events = heartbeats
        .iter()
        .map(|hb| Event::from_proto(hb).unwrap())
        .collect();
    let mut by_user: BTreeMap<String, Vec<Session>> = BTreeMap::new();
    for session in sessionize_all(events, GAP.as_millis() as i64) {
        by_user
            .entry(session.user_id.clone())
            .or_default()
            .push(session);
    }
    by_user
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_viewing_uploaded_late_ends_in_exact_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_app_configured(dir.path().to_path_buf(), Tier::default(), |_, stream, _| {
        stream.gap.session_gap = GAP;
        stream.allowed_lateness = Duration::from_secs(2);
        stream.idle_timeout = Some(Duration::from_secs(1));
    })
    .await;
    let now = hb_common::time::now_ms();
    let mut fleet = Fleet::new(FleetConfig {
        devices: 20,
        users: 12,
        videos: 6,
        ads: 3,
        seed: 5,
        interval_ms: 1_000,
        interval_jitter_ms: 100,
        start_ms: now - 3 * MINUTE_MS,
        ..FleetConfig::default()
    });
    let mut live: Vec<Heartbeat> = fleet.heartbeats(2_000).collect();
    live.retain(|hb| hb.event_time.as_ref().unwrap().seconds * 1_000 < now);
    // The commuter's last minute is live; the minute before it was offline.
    let live_from = now - 2 * MINUTE_MS;
    live.extend(viewing("commuter", "v-commute", live_from, 60));
    let mut offline = viewing("commuter", "v-commute", live_from - MINUTE_MS, 60);
    // The traveller watched for ten minutes a day ago.
    offline.extend(viewing(
        "traveller",
        "v-flight",
        now - 1_440 * MINUTE_MS,
        600,
    ));

    for chunk in live.chunks(500) {
        let summary = app.push(chunk.to_vec()).await.unwrap();
        assert_eq!(summary.rejected, 0, "{summary:?}");
    }
    for chunk in offline.chunks(500) {
        let summary = app.push(chunk.to_vec()).await.unwrap();
        assert_eq!(summary.rejected, 0, "{summary:?}");
    }

    let all: Vec<Heartbeat> = live.iter().chain(&offline).cloned().collect();
    let want = expected(&all);
    let users: BTreeSet<&String> = want.keys().collect();
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let mut got = BTreeMap::new();
        for user in &users {
            let mut sessions = app.user_sessions(user).await;
            sessions.sort_by(|a, b| (&a.video_id, a.start_ms).cmp(&(&b.video_id, b.start_ms)));
            if !sessions.is_empty() {
                got.insert((*user).clone(), sessions);
            }
        }
        if got == want {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "sessions still differ from the batch definition: {:?}",
            users
                .iter()
                .filter(|u| got.get(**u) != want.get(**u))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    app.stop().await;
}
