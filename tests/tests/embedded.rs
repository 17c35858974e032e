//! The whole embedded mesh, driven through its public APIs: heartbeats over
//! gRPC, sessions and reports over HTTP, compared with SPEC 5's batch
//! definition. Nothing lost, nothing double counted, across a restart too.

use hb_e2e_tests::{spawn_app, TestApp};
use hb_proto::v1::Heartbeat;
use hb_testkit::fleet::{Fleet, FleetConfig};
use sqlx::Row;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use svc_stream::sessionizer::{sessionize_all, Event, Session, SessionConfig};

/// Realistic heartbeats whose event times end before now (so ingest accepts them).
fn workload(count: usize, seed: u64) -> Vec<Heartbeat> {
    let mut fleet = Fleet::new(FleetConfig {
        devices: 24,
        users: 16,
        videos: 8,
        ads: 4,
        seed,
        start_ms: hb_common::time::now_ms() - 60 * 60_000,
        ..FleetConfig::default()
    });
    fleet.heartbeats(count).collect()
}

fn expected(heartbeats: &[Heartbeat]) -> BTreeMap<String, Vec<Session>> {
    let events = heartbeats
        .iter()
        .map(|hb| Event::from_proto(hb).unwrap())
        .collect();
    let mut by_user: BTreeMap<String, Vec<Session>> = BTreeMap::new();
    for session in sessionize_all(events, SessionConfig::default().gap_ms) {
        by_user
            .entry(session.user_id.clone())
            .or_default()
            .push(session);
    }
    by_user
}

async fn push_in_calls(app: &TestApp, heartbeats: &[Heartbeat], per_call: usize) -> u64 {
    let mut accepted = 0;
    for chunk in heartbeats.chunks(per_call) {
        let summary = app.push(chunk.to_vec()).await.expect("push accepted");
        assert_eq!(summary.rejected, 0, "{:?}", summary.rejections);
        accepted += summary.accepted;
    }
    accepted
}

async fn assert_sessions_match(app: &TestApp, heartbeats: &[Heartbeat]) {
    for (user, mut sessions) in expected(heartbeats) {
        let mut stored = app.user_sessions(&user).await;
        let order = |s: &Session| (s.video_id.clone(), s.start_ms);
        stored.sort_by_key(order);
        sessions.sort_by_key(order);
        assert_eq!(stored, sessions, "sessions of {user}");
    }
}

async fn raw_rows(app: &TestApp) -> i64 {
    let pool = hb_common::store::open_sqlite(&app.data_dir, 1)
        .await
        .unwrap();
    sqlx::query("SELECT COUNT(*) FROM raw_heartbeats")
        .fetch_one(&pool)
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushed_heartbeats_become_exact_sessions_in_the_query_api() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_app(dir.path().to_path_buf()).await;
    let heartbeats = workload(1_500, 3);

    let accepted = push_in_calls(&app, &heartbeats, 100).await;

    // An ack means committed: the sessions are visible as soon as push returns.
    assert_sessions_match(&app, &heartbeats).await;
    let distinct: HashSet<_> = heartbeats.iter().map(|hb| &hb.event_id).collect();
    assert!(accepted as usize >= distinct.len());
    assert_eq!(raw_rows(&app).await as usize, distinct.len());
    let total: u64 = expected(&heartbeats)
        .values()
        .flatten()
        .map(|s| s.heartbeats)
        .sum();
    assert_eq!(total as usize, distinct.len());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_means_the_heartbeats_are_already_committed_to_the_embedded_store() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_app(dir.path().to_path_buf()).await;
    let heartbeats = workload(40, 11);
    let distinct: HashSet<_> = heartbeats.iter().map(|hb| &hb.event_id).collect();

    let summary = app
        .push(heartbeats.clone())
        .await
        .expect("push succeeds without a token: the embedded default runs open on loopback");

    assert_eq!(summary.rejected, 0, "{:?}", summary.rejections);
    // Read from the SQLite file right after the ack, while the mesh still runs.
    assert_eq!(raw_rows(&app).await as usize, distinct.len());
    let pool = hb_common::store::open_sqlite(&app.data_dir, 1)
        .await
        .unwrap();
    let in_sessions: i64 = sqlx::query("SELECT COALESCE(SUM(heartbeats), 0) FROM sessions")
        .fetch_one(&pool)
        .await
        .unwrap()
        .get(0);
    assert_eq!(in_sessions as usize, distinct.len());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_mesh_continues_its_open_sessions_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let heartbeats = workload(1_200, 5);
    let (first, second) = heartbeats.split_at(700);

    let app = spawn_app(dir.path().to_path_buf()).await;
    push_in_calls(&app, first, 50).await;
    app.stop().await;

    let app = spawn_app(dir.path().to_path_buf()).await;
    push_in_calls(&app, second, 50).await;
    assert_sessions_match(&app, &heartbeats).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_heartbeats_are_dead_lettered_with_their_reason() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_app(dir.path().to_path_buf()).await;
    let mut heartbeats = workload(10, 9);
    heartbeats[3].user_id.clear();
    heartbeats[6].state = 0;

    let summary = app.push(heartbeats).await.unwrap();

    assert_eq!((summary.accepted, summary.rejected), (8, 2));
    let reasons: BTreeSet<_> = summary
        .rejections
        .iter()
        .map(|r| (r.index, r.reason.split(':').next().unwrap().to_string()))
        .collect();
    assert_eq!(
        reasons,
        BTreeSet::from([
            (3, "missing_id".to_string()),
            (6, "state_unspecified".to_string())
        ])
    );
    let pool = hb_common::store::open_sqlite(&app.data_dir, 1)
        .await
        .unwrap();
    let stored: Vec<String> = sqlx::query("SELECT reason FROM dead_letters ORDER BY id")
        .fetch_all(&pool)
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(stored.len(), 2);
    assert!(stored[0].starts_with("missing_id") && stored[1].starts_with("state_unspecified"));
    app.stop().await;
}
