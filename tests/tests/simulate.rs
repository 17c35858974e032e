//! `hbmesh simulate` run twice back to back against one embedded mesh, as an
//! operator would: the second run's event clocks follow the wall clock, so
//! none of its heartbeats is late for the mesh (behind the newest event time
//! it has seen by more than HB_ALLOWED_LATENESS), and every heartbeat
//! mirrored raw is counted in a session.

use hb_e2e_tests::spawn_app;
use hbmesh::simulate::{simulate, Mode, SimulateArgs};
use sqlx::Row;
use std::time::Duration;

fn args(target: String, seed: u64) -> SimulateArgs {
    SimulateArgs {
        devices: 50,
        rate: 200.0,
        duration: Duration::from_secs(5),
        target,
        token: None,
        auth: Default::default(),
        mode: Mode::Stream,
        connections: 2,
        streams: Some(4),
        window: 16_384,
        push_batch: 2_000,
        users: None,
        seed: Some(seed),
        ca_cert: None,
        pregenerate: false,
        json: true,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_simulate_runs_back_to_back_send_no_late_heartbeats() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_app(dir.path().to_path_buf()).await;
    let target = format!("http://{}", app.addrs.ingest);
    let mut accepted = 0;
    for seed in [11, 12] {
        let started = hb_common::time::now_ms();
        let summary = simulate(&args(target.clone(), seed)).await.unwrap();
        assert_eq!(summary.rejected, 0, "{:?}", summary.rejection_reasons);
        assert!(summary.accepted > 500, "{summary:?}");
        assert!(
            summary.event_clock_start_ms >= started - 5_000,
            "event clocks start {} ms behind the wall clock",
            started - summary.event_clock_start_ms
        );
        accepted += summary.accepted;
    }
    // Sessions may be written a little after the raw rows (up to
    // HB_SESSION_WRITE_INTERVAL under load): wait for them, for a while.
    let pool = hb_common::store::open_sqlite(dir.path(), 1).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let (raw, sessionized) = loop {
        let raw: i64 = sqlx::query("SELECT COUNT(*) FROM raw_heartbeats")
            .fetch_one(&pool)
            .await
            .unwrap()
            .get(0);
        let sessionized: i64 = sqlx::query("SELECT COALESCE(SUM(heartbeats), 0) FROM sessions")
            .fetch_one(&pool)
            .await
            .unwrap()
            .get(0);
        if sessionized == raw || std::time::Instant::now() > deadline {
            break (raw, sessionized);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(raw as u64, accepted, "every accepted heartbeat is mirrored");
    assert_eq!(
        sessionized, raw,
        "heartbeats mirrored but not sessionized were late"
    );
    app.stop().await;
}
