//! The embedded stream stage acknowledges a batch only through the commit
//! that holds it; a failed commit fails its batches (and any absorbed since),
//! the state is rebuilt from the store, and the resent batches count once.

mod support;

use hb_common::handoff::{self, HandoffError};
use hb_common::health::Health;
use hb_testkit::fleet::{Fleet, FleetConfig};
use prometheus_client::registry::Registry;
use sqlx::Row;
use std::sync::Arc;
use std::time::Duration;
use support::FaultyStore;
use svc_stream::metrics::StreamMetrics;
use svc_stream::pipeline::{Pipeline, Readiness, SourceKind};
use svc_stream::sessionizer::SessionConfig;
use svc_stream::sink::sql::SqliteStore;
use svc_stream::sink::RawPlacement;

#[tokio::test]
async fn a_failed_commit_fails_its_batch_and_the_resend_counts_once() {
    let dir = tempfile::tempdir().unwrap();
    let pool = hb_common::store::open_sqlite(dir.path(), 2).await.unwrap();
    let store = Arc::new(FaultyStore::any_commit(SqliteStore::new(
        pool.clone(),
        30 * 86_400_000,
    )));
    let metrics = StreamMetrics::register(&mut Registry::default());
    let pipeline = Pipeline::new(
        SessionConfig::default(),
        SourceKind::Handoff,
        store.clone(),
        RawPlacement::InStore(store.clone()),
        metrics,
    );
    let health = Health::default();
    let (tx, rx) = handoff::channel(16);
    // On its own thread, as `hbmesh up` runs it.
    let stage = tokio::spawn(svc_stream::embedded::run_on_own_thread(
        pipeline,
        rx,
        svc_stream::embedded::StageSettings {
            tick: Duration::from_millis(50),
            flush_max: 20_000,
            session_write_interval: Duration::from_secs(2),
            defer_from: svc_stream::embedded::DEFER_FROM,
        },
        Readiness::new(health.register("stream"), Duration::from_secs(30)),
    ));
    let mut fleet = Fleet::new(FleetConfig {
        devices: 20,
        users: 15,
        seed: 11,
        ..FleetConfig::default()
    });
    let first: Vec<_> = fleet.heartbeats(300).collect();
    let second: Vec<_> = fleet.heartbeats(300).collect();

    tx.send(first.clone(), vec![])
        .await
        .expect("first batch committed");
    assert!(health.is_ready(), "readiness is renewed by the commit");
    store.set_failing(true);
    let refused = tx.send(second.clone(), vec![]).await;
    assert!(
        matches!(refused, Err(HandoffError::Store(_))),
        "{refused:?}"
    );
    store.set_failing(false);
    tx.send(second.clone(), vec![])
        .await
        .expect("the resend is committed");
    drop(tx);
    stage.await.unwrap().unwrap();

    let distinct: std::collections::HashSet<_> = first
        .iter()
        .chain(&second)
        .map(|hb| hb.event_id.clone())
        .collect();
    let raw: i64 = sqlx::query("SELECT COUNT(*) FROM raw_heartbeats")
        .fetch_one(&pool)
        .await
        .unwrap()
        .get(0);
    let in_sessions: i64 = sqlx::query("SELECT COALESCE(SUM(heartbeats), 0) FROM sessions")
        .fetch_one(&pool)
        .await
        .unwrap()
        .get(0);
    assert_eq!(raw as usize, distinct.len());
    assert_eq!(in_sessions as usize, distinct.len());
}

#[tokio::test]
async fn under_load_acks_come_with_raw_rows_and_sessions_follow_once_it_quiets() {
    let dir = tempfile::tempdir().unwrap();
    let pool = hb_common::store::open_sqlite(dir.path(), 2).await.unwrap();
    let store = Arc::new(SqliteStore::new(pool.clone(), 30 * 86_400_000));
    let mut registry = Registry::default();
    let metrics = StreamMetrics::register(&mut registry);
    let pipeline = Pipeline::new(
        SessionConfig::default(),
        SourceKind::Handoff,
        store.clone(),
        RawPlacement::InStore(store),
        metrics.clone(),
    );
    let health = Health::default();
    let (tx, rx) = handoff::channel(16);
    // Every commit with heartbeats counts as "under load", and the interval
    // never runs out: sessions are written only when nothing is pending.
    let stage = tokio::spawn(svc_stream::embedded::run(
        pipeline,
        rx,
        svc_stream::embedded::StageSettings {
            tick: Duration::from_millis(50),
            flush_max: 20_000,
            session_write_interval: Duration::from_secs(3600),
            defer_from: 1,
        },
        Readiness::new(health.register("stream"), Duration::from_secs(30)),
    ));
    let mut fleet = Fleet::new(FleetConfig {
        devices: 30,
        users: 20,
        seed: 5,
        ..FleetConfig::default()
    });
    let heartbeats: Vec<_> = fleet.heartbeats(2_000).collect();
    let sends = heartbeats
        .chunks(100)
        .map(|chunk| tx.send(chunk.to_vec(), vec![]));
    for acked in futures::future::join_all(sends).await {
        acked.expect("committed");
    }
    assert!(
        metrics.deferred_flushes.get() > 0,
        "no commit deferred its sessions"
    );

    let expected = svc_stream::sessionizer::sessionize_all(
        heartbeats
            .iter()
            .map(|hb| svc_stream::sessionizer::Event::from_proto(hb).unwrap())
            .collect(),
        SessionConfig::default().gap_ms,
    );
    let expected_total: u64 = expected.iter().map(|s| s.heartbeats).sum();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let in_sessions: i64 = sqlx::query("SELECT COALESCE(SUM(heartbeats), 0) FROM sessions")
            .fetch_one(&pool)
            .await
            .unwrap()
            .get(0);
        if in_sessions as u64 == expected_total {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "sessions never caught up: {in_sessions} of {expected_total} heartbeats"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let sessions: i64 = sqlx::query("SELECT COUNT(*) FROM sessions")
        .fetch_one(&pool)
        .await
        .unwrap()
        .get(0);
    assert_eq!(sessions as usize, expected.len());
    drop(tx);
    stage.await.unwrap().unwrap();
}
