//! Crash and restart of the stream stage against the real stores: stop the
//! pipeline between flushes (losing what it had not committed), restart it
//! from the stored offsets and replay. The store must then equal the batch
//! definition of SPEC 5: nothing lost, nothing counted twice.

mod support;

use hb_proto::v1::Heartbeat;
use hb_testkit::fleet::{Fleet, FleetConfig};
use prometheus_client::registry::Registry;
use sqlx::Row;
use std::collections::HashSet;
use std::sync::Arc;
use support::{
    config, expected, expected_with_gap, heartbeat, idle_closes, idle_through, session_of,
    stored_sessions_sqlite, SELECT_SESSIONS,
};
use svc_stream::metrics::StreamMetrics;
use svc_stream::pipeline::{Pipeline, SourceKind, CORRECTION_SETTLE_MS, SESSION_WRITE_SHARES};
use svc_stream::sessionizer::{Session, SessionConfig, Share};
use svc_stream::sink::sql::{PgStore, SqliteStore};
use svc_stream::sink::{RawInStore, RawPlacement};

const TOPIC: &str = "heartbeats";
const PARTITION: i32 = 3;
const TTL_MS: i64 = 30 * 86_400_000;

/// 40 devices of 25 users over 15 titles.
fn small_fleet() -> FleetConfig {
    FleetConfig {
        devices: 40,
        users: 25,
        videos: 15,
        ads: 5,
        seed: 7,
        ..FleetConfig::default()
    }
}

fn workload(count: usize) -> Vec<Heartbeat> {
    Fleet::new(small_fleet()).heartbeats(count).collect()
}

/// Like [`workload`], with viewers who often leave a title and come back
/// to another after a short while: sessions end all through the run.
fn restless_workload(count: usize) -> Vec<Heartbeat> {
    let mut fleet = Fleet::new(FleetConfig {
        abandon_per_beat: 0.03,
        think_ms: (5_000, 60_000),
        ..small_fleet()
    });
    fleet.heartbeats(count).collect()
}

/// A stage reading partition `PARTITION` of a log, with offsets (Kafka).
fn pipeline<S: RawInStore + 'static>(store: Arc<S>) -> Pipeline {
    stage(
        SourceKind::Log {
            topic: TOPIC.into(),
        },
        store,
    )
}

/// A stage fed by the hand-off, without offsets (the embedded tier).
fn handoff_pipeline<S: RawInStore + 'static>(store: Arc<S>) -> Pipeline {
    stage(SourceKind::Handoff, store)
}

fn stage<S: RawInStore + 'static>(source: SourceKind, store: Arc<S>) -> Pipeline {
    stage_with(config(), source, store)
}

fn stage_with<S: RawInStore + 'static>(
    config: SessionConfig,
    source: SourceKind,
    store: Arc<S>,
) -> Pipeline {
    let metrics = StreamMetrics::register(&mut Registry::default());
    Pipeline::new(
        config,
        source,
        store.clone(),
        RawPlacement::InStore(store),
        metrics,
    )
}

/// Feeds `heartbeats` as partition `PARTITION`, crashing after each of
/// `crash_at` (with 37 heartbeats processed but never flushed), restarting
/// from the store each time.
async fn run_with_crashes<S: RawInStore + 'static>(
    store: Arc<S>,
    heartbeats: &[Heartbeat],
    crash_at: &[usize],
) {
    let mut crashes = crash_at.iter().copied().peekable();
    loop {
        let mut stage = pipeline(store.clone());
        let resume = stage.assign(PARTITION).await.unwrap().unwrap_or(0) as usize;
        let mut offset = resume;
        let crash = crashes.next();
        let stop = crash.map_or(heartbeats.len(), |c| c.min(heartbeats.len()));
        while offset < stop {
            let now = hb_common::time::now_ms();
            stage.ingest(PARTITION, Some(offset as i64), &heartbeats[offset], now);
            offset += 1;
            if offset.is_multiple_of(200) {
                stage.flush().await.unwrap();
            }
        }
        stage.flush().await.unwrap();
        match crash {
            Some(_) => {
                // Work that never reaches a flush is lost with the process.
                let end = (offset + 37).min(heartbeats.len());
                for (i, hb) in heartbeats.iter().enumerate().take(end).skip(offset) {
                    stage.ingest(PARTITION, Some(i as i64), hb, hb_common::time::now_ms());
                }
                drop(stage);
            }
            None => return,
        }
    }
}

fn distinct_events(heartbeats: &[Heartbeat]) -> usize {
    heartbeats
        .iter()
        .map(|hb| &hb.event_id)
        .collect::<HashSet<_>>()
        .len()
}

/// The store equals the batch definition over `heartbeats`: the sessions
/// row by row, one raw row per distinct event, impressions exactly.
macro_rules! assert_store_exact {
    ($pool:expr, $heartbeats:expr) => {
        assert_store_exact!($pool, $heartbeats, config().gap_ms)
    };
    ($pool:expr, $heartbeats:expr, $gap_ms:expr) => {{
        let rows = sqlx::query(SELECT_SESSIONS).fetch_all($pool).await.unwrap();
        let stored: Vec<Session> = rows.iter().map(session_of).collect();
        assert_eq!(stored, expected_with_gap($heartbeats, $gap_ms));
        let raw: i64 = sqlx::query("SELECT COUNT(*) FROM raw_heartbeats")
            .fetch_one($pool)
            .await
            .unwrap()
            .get(0);
        assert_eq!(raw as usize, distinct_events($heartbeats));
        let impressions: i64 = sqlx::query("SELECT COUNT(*) FROM session_ads")
            .fetch_one($pool)
            .await
            .unwrap()
            .get(0);
        let expected_impressions: usize = expected_with_gap($heartbeats, $gap_ms)
            .iter()
            .map(|s| s.ads.len())
            .sum();
        assert_eq!(impressions as usize, expected_impressions);
    }};
}

#[tokio::test]
async fn sqlite_store_survives_crashes_without_loss_or_double_count() {
    let dir = tempfile::tempdir().unwrap();
    let pool = hb_common::store::open_sqlite(dir.path(), 2).await.unwrap();
    let store = Arc::new(SqliteStore::new(pool.clone(), TTL_MS));
    let heartbeats = workload(3_000);

    run_with_crashes(store, &heartbeats, &[450, 1_201, 1_900, 2_650]).await;

    let rows = sqlx::query(SELECT_SESSIONS).fetch_all(&pool).await.unwrap();
    let stored: Vec<Session> = rows.iter().map(session_of).collect();
    assert_eq!(stored, expected(&heartbeats));
    let total: i64 = stored.iter().map(|s| s.heartbeats as i64).sum();
    let raw: i64 = sqlx::query("SELECT COUNT(*) FROM raw_heartbeats")
        .fetch_one(&pool)
        .await
        .unwrap()
        .get(0);
    assert_eq!(total as usize, distinct_events(&heartbeats));
    assert_eq!(raw as usize, distinct_events(&heartbeats));
    let offset: i64 =
        sqlx::query("SELECT next_offset FROM stream_offsets WHERE topic = $1 AND partition = $2")
            .bind(TOPIC)
            .bind(PARTITION)
            .fetch_one(&pool)
            .await
            .unwrap()
            .get(0);
    assert_eq!(offset as usize, heartbeats.len());
}

#[tokio::test]
async fn postgres_store_survives_crashes_without_loss_or_double_count() {
    let (_db, pool) = hb_testkit::db::TestDb::create().await.unwrap();
    let store = Arc::new(PgStore::new(pool.clone(), TTL_MS));
    let heartbeats = workload(3_000);

    run_with_crashes(store, &heartbeats, &[333, 1_000, 1_001, 2_222]).await;

    assert_store_exact!(&pool, &heartbeats);
}

#[tokio::test]
async fn a_restart_without_crash_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let pool = hb_common::store::open_sqlite(dir.path(), 2).await.unwrap();
    let store = Arc::new(SqliteStore::new(pool.clone(), TTL_MS));
    let heartbeats = workload(800);
    run_with_crashes(store.clone(), &heartbeats, &[]).await;
    let before: Vec<Session> = sqlx::query(SELECT_SESSIONS)
        .fetch_all(&pool)
        .await
        .unwrap()
        .iter()
        .map(session_of)
        .collect();
    // Restart: restore, replay nothing new, flush.
    let mut stage = pipeline(store);
    assert_eq!(stage.assign(PARTITION).await.unwrap(), Some(800));
    stage.flush().await.unwrap();
    let after: Vec<Session> = sqlx::query(SELECT_SESSIONS)
        .fetch_all(&pool)
        .await
        .unwrap()
        .iter()
        .map(session_of)
        .collect();
    assert_eq!(before, after);
}

/// How the deferred stage of [`run_deferred_with_crashes`] writes sessions.
#[derive(Clone, Copy)]
enum SessionFlush {
    /// Every change at once, every 100 heartbeats.
    Whole,
    /// The next share of the keys, every 25 heartbeats: a round of shares
    /// spans more event time than the gap, so that restores start from a
    /// watermark older than some of the finals stored.
    Share,
}

/// The embedded stage with deferred session writes: most flushes commit only
/// raw rows (every third writes the sessions too, whole or one share's), and
/// the process dies right after a raw-only flush with more work unflushed.
/// Devices resend what was not acknowledged (everything after the last
/// commit, plus a few acked ones again); the restart must rebuild the
/// deferred session changes from the raw rows.
async fn run_deferred_with_crashes<S: RawInStore + 'static>(
    store: Arc<S>,
    heartbeats: &[Heartbeat],
    crash_at: &[usize],
    config: SessionConfig,
    sessions: SessionFlush,
) {
    let mut crashes = crash_at.iter().copied().peekable();
    let mut acked: usize = 0;
    loop {
        let mut stage = stage_with(config, SourceKind::Handoff, store.clone());
        assert!(stage.defer_sessions(), "the raw mirror is in the store");
        stage.assign(PARTITION).await.unwrap();
        let mut next = acked.saturating_sub(5);
        let crash = crashes.next();
        let stop = crash.map_or(heartbeats.len(), |c| c.min(heartbeats.len()));
        let mut flushes = 0;
        while next < stop {
            stage.ingest(
                PARTITION,
                None,
                &heartbeats[next],
                hb_common::time::now_ms(),
            );
            next += 1;
            let every = match sessions {
                SessionFlush::Whole => 100,
                SessionFlush::Share => 25,
            };
            if next.is_multiple_of(every) {
                // Sessions become final as the stage ticks.
                stage.tick(hb_common::time::now_ms());
                flushes += 1;
                let prepared = match (flushes % 3, sessions) {
                    (0, SessionFlush::Whole) => stage.prepare_flush(),
                    (0, SessionFlush::Share) => stage.prepare_share_flush(),
                    _ => stage.prepare_raw_flush(),
                };
                if let Some(prepared) = prepared {
                    prepared.commit().await.unwrap();
                }
            }
        }
        match crash {
            Some(_) => {
                if let Some(prepared) = stage.prepare_raw_flush() {
                    prepared.commit().await.unwrap();
                }
                acked = next;
                let end = (next + 37).min(heartbeats.len());
                for hb in &heartbeats[next..end] {
                    stage.ingest(PARTITION, None, hb, hb_common::time::now_ms());
                }
                drop(stage);
            }
            None => {
                stage.flush().await.unwrap();
                return;
            }
        }
    }
}

#[tokio::test]
async fn deferred_session_writes_survive_crashes_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let pool = hb_common::store::open_sqlite(dir.path(), 2).await.unwrap();
    let store = Arc::new(SqliteStore::new(pool.clone(), TTL_MS));
    let heartbeats = workload(3_000);

    run_deferred_with_crashes(
        store,
        &heartbeats,
        &[450, 1_201, 1_950, 2_650],
        config(),
        SessionFlush::Whole,
    )
    .await;

    assert_store_exact!(&pool, &heartbeats);
}

#[tokio::test]
async fn deferred_session_writes_survive_crashes_on_postgres() {
    let (_db, pool) = hb_testkit::db::TestDb::create().await.unwrap();
    let store = Arc::new(PgStore::new(pool.clone(), TTL_MS));
    let heartbeats = workload(3_000);

    run_deferred_with_crashes(
        store,
        &heartbeats,
        &[333, 1_000, 1_001, 2_222],
        config(),
        SessionFlush::Whole,
    )
    .await;

    assert_store_exact!(&pool, &heartbeats);
}

/// Sessions short enough that many become final within the run, so that
/// share flushes write finals past the watermark a restore starts from.
fn short_sessions() -> SessionConfig {
    SessionConfig {
        gap_ms: 20_000,
        lateness_ms: 10_000,
        ..config()
    }
}

#[tokio::test]
async fn session_writes_spread_over_shares_survive_crashes_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let pool = hb_common::store::open_sqlite(dir.path(), 2).await.unwrap();
    let store = Arc::new(SqliteStore::new(pool.clone(), TTL_MS));
    let heartbeats = restless_workload(4_000);
    let config = short_sessions();

    let crashes = [700, 1_450, 2_201, 2_950, 3_700];
    run_deferred_with_crashes(store, &heartbeats, &crashes, config, SessionFlush::Share).await;

    assert_store_exact!(&pool, &heartbeats, config.gap_ms);
}

#[tokio::test]
async fn session_writes_spread_over_shares_survive_crashes_on_postgres() {
    let (_db, pool) = hb_testkit::db::TestDb::create().await.unwrap();
    let store = Arc::new(PgStore::new(pool.clone(), TTL_MS));
    let heartbeats = restless_workload(4_000);
    let config = short_sessions();

    let crashes = [650, 1_400, 1_401, 2_222, 3_100];
    run_deferred_with_crashes(store, &heartbeats, &crashes, config, SessionFlush::Share).await;

    assert_store_exact!(&pool, &heartbeats, config.gap_ms);
}

/// A user watching "v1" whose key is in share `index` of the share flushes.
fn user_in_share(index: u32) -> String {
    let share = Share {
        index,
        of: SESSION_WRITE_SHARES,
    };
    (0..)
        .map(|i| format!("user-{i}"))
        .find(|user| share.holds(user, "v1"))
        .unwrap()
}

#[tokio::test]
async fn a_session_stored_by_a_late_share_whose_start_then_moved_leaves_no_stale_row() {
    let dir = tempfile::tempdir().unwrap();
    let pool = hb_common::store::open_sqlite(dir.path(), 2).await.unwrap();
    let store = Arc::new(SqliteStore::new(pool.clone(), TTL_MS));
    let config = short_sessions();
    let (steady, mover) = (user_in_share(0), user_in_share(SESSION_WRITE_SHARES - 1));
    let s = |seconds: i64| 1_700_000_000_000 + seconds * 1_000;
    let mut sent = Vec::new();
    let mut stage = stage_with(config, SourceKind::Handoff, store.clone());
    assert!(stage.defer_sessions());
    stage.assign(PARTITION).await.unwrap();
    let mut send = |stage: &mut Pipeline, hb: Heartbeat| {
        stage.ingest(PARTITION, None, &hb, hb_common::time::now_ms());
        sent.push(hb);
    };
    // A round of share flushes: the steady viewer's share first (at 50 s),
    // the mover's last (at 105 s), its session then starting at 100 s.
    for (i, seconds) in (0..=50).step_by(5).enumerate() {
        send(
            &mut stage,
            heartbeat(&format!("steady-{i}"), &steady, s(seconds), 0),
        );
    }
    for (share, seconds) in (0..SESSION_WRITE_SHARES).zip((50..).step_by(5)) {
        if share == SESSION_WRITE_SHARES - 1 {
            send(&mut stage, heartbeat("mover-100", &mover, s(100), 0));
        }
        send(
            &mut stage,
            heartbeat(&format!("steady-at-{seconds}"), &steady, s(seconds + 5), 0),
        );
        stage.prepare_share_flush().unwrap().commit().await.unwrap();
    }
    // Within the lateness, before the mover's stored start: the start moves.
    send(&mut stage, heartbeat("mover-97", &mover, s(97), 0));
    stage.prepare_raw_flush().unwrap().commit().await.unwrap();
    drop(stage);

    let mut stage = stage_with(config, SourceKind::Handoff, store);
    assert!(stage.defer_sessions());
    stage.assign(PARTITION).await.unwrap();
    stage.flush().await.unwrap();

    assert_store_exact!(&pool, &sent, config.gap_ms);
}

#[tokio::test]
async fn a_restart_after_deferred_flushes_keeps_what_an_idle_partition_closed() {
    let dir = tempfile::tempdir().unwrap();
    let pool = hb_common::store::open_sqlite(dir.path(), 2).await.unwrap();
    let store = Arc::new(SqliteStore::new(pool.clone(), TTL_MS));
    let t = 1_700_000_000_000;
    let now = hb_common::time::now_ms();

    let mut stage = handoff_pipeline(store.clone());
    assert!(stage.defer_sessions());
    stage.assign(PARTITION).await.unwrap();
    stage.ingest(PARTITION, None, &heartbeat("a1", "ann", t, 0), now);
    stage.ingest(
        PARTITION,
        None,
        &heartbeat("a2", "ann", t + 5_000, 5_000),
        now,
    );
    stage.ingest(PARTITION, None, &heartbeat("b1", "bob", t, 0), now);
    stage.flush().await.unwrap();
    // The partition goes quiet: its watermark advances with processing time
    // until both sessions are final.
    idle_through(&mut stage, now, now + idle_closes(0));
    stage.flush().await.unwrap();
    // Behind the advanced horizon: late; this commit holds its raw row and
    // late mark only.
    stage.ingest(
        PARTITION,
        None,
        &heartbeat("b2", "bob", t + 10_000, 10_000),
        now + idle_closes(0),
    );
    stage.prepare_raw_flush().unwrap().commit().await.unwrap();
    drop(stage);

    let mut stage = handoff_pipeline(store);
    assert!(stage.defer_sessions());
    stage.assign(PARTITION).await.unwrap();
    // The advanced watermark survived the restart: still late, so both late
    // heartbeats reach their final sessions through the late lane (once the
    // watermark is a gap past them), not as sessions of their own.
    let now = hb_common::time::now_ms();
    stage.ingest(
        PARTITION,
        None,
        &heartbeat("a3", "ann", t + 2_500, 2_500),
        now,
    );
    idle_through(&mut stage, now, now + idle_closes(0));
    stage.flush().await.unwrap();

    let stored = stored_sessions_sqlite(&pool).await;
    let summary: Vec<(&str, i64, u64, i64)> = stored
        .iter()
        .map(|s| (s.user_id.as_str(), s.start_ms, s.heartbeats, s.watch_ms))
        .collect();
    assert_eq!(summary, vec![("ann", t, 3, 5_000), ("bob", t, 2, 10_000)]);
}

#[tokio::test]
async fn without_deferral_a_restart_on_postgres_keeps_what_an_idle_partition_closed() {
    // The Kafka tier: every flush writes its sessions, the store is
    // PostgreSQL (as YugabyteDB).
    let (_db, pool) = hb_testkit::db::TestDb::create().await.unwrap();
    let store = Arc::new(PgStore::new(pool.clone(), TTL_MS));
    let t = 1_700_000_000_000;
    let now = hb_common::time::now_ms();

    let mut stage = handoff_pipeline(store.clone());
    stage.assign(PARTITION).await.unwrap();
    stage.ingest(PARTITION, None, &heartbeat("a1", "ann", t, 0), now);
    stage.ingest(
        PARTITION,
        None,
        &heartbeat("a2", "ann", t + 5_000, 5_000),
        now,
    );
    stage.flush().await.unwrap();
    idle_through(&mut stage, now, now + idle_closes(0));
    stage.flush().await.unwrap();
    drop(stage);

    let mut stage = handoff_pipeline(store);
    stage.assign(PARTITION).await.unwrap();
    // A heartbeat inside her final session is late after the restart; the
    // late lane brings it into that session, not into one of its own.
    let now = hb_common::time::now_ms();
    stage.ingest(
        PARTITION,
        None,
        &heartbeat("a3", "ann", t + 2_500, 2_500),
        now,
    );
    stage.tick(now + CORRECTION_SETTLE_MS);
    stage.flush().await.unwrap();

    let rows = sqlx::query(SELECT_SESSIONS).fetch_all(&pool).await.unwrap();
    let summary: Vec<(String, i64, u64)> = rows
        .iter()
        .map(session_of)
        .map(|s| (s.user_id, s.start_ms, s.heartbeats))
        .collect();
    assert_eq!(summary, vec![("ann".to_owned(), t, 3)]);
}

/// The Kafka stage with deferred session writes: most flushes commit raw
/// rows and the committed offset only (every third writes the sessions and
/// their offset too), and the process dies right after a raw-only flush with
/// more work unflushed. Kafka then delivers the partition again from a little
/// before the sessions' offset (its committed offset is only a hint); the
/// restart skips what the sessions hold and sessionizes the rest, writing
/// raw rows only for what was never committed.
async fn run_source_deferred_with_crashes<S: RawInStore + 'static>(
    store: Arc<S>,
    heartbeats: &[Heartbeat],
    crash_at: &[usize],
) {
    let mut crashes = crash_at.iter().copied().peekable();
    loop {
        let mut stage = pipeline(store.clone());
        stage.defer_sessions_to_source();
        let resume = stage.assign(PARTITION).await.unwrap().unwrap_or(0) as usize;
        let mut offset = resume.saturating_sub(50);
        let crash = crashes.next();
        let stop = crash.map_or(heartbeats.len(), |c| c.min(heartbeats.len()));
        let mut flushes = 0;
        while offset < stop {
            // What the sessions already hold is skipped, as the consumer does.
            if stage
                .next_offset(PARTITION)
                .is_none_or(|next| offset as i64 >= next)
            {
                let now = hb_common::time::now_ms();
                stage.ingest(PARTITION, Some(offset as i64), &heartbeats[offset], now);
            }
            offset += 1;
            if offset.is_multiple_of(100) {
                flushes += 1;
                let prepared = if flushes % 3 == 0 {
                    stage.prepare_flush()
                } else {
                    stage.prepare_raw_flush()
                };
                if let Some(prepared) = prepared {
                    prepared.commit().await.unwrap();
                }
            }
        }
        match crash {
            Some(_) => {
                if let Some(prepared) = stage.prepare_raw_flush() {
                    prepared.commit().await.unwrap();
                }
                let end = (offset + 37).min(heartbeats.len());
                for (i, hb) in heartbeats.iter().enumerate().take(end).skip(offset) {
                    stage.ingest(PARTITION, Some(i as i64), hb, hb_common::time::now_ms());
                }
                drop(stage);
            }
            None => {
                stage.flush().await.unwrap();
                return;
            }
        }
    }
}

#[tokio::test]
async fn session_writes_left_to_kafka_redelivery_survive_crashes_on_postgres() {
    let (_db, pool) = hb_testkit::db::TestDb::create().await.unwrap();
    let store = Arc::new(PgStore::new(pool.clone(), TTL_MS));
    let heartbeats = workload(3_000);

    run_source_deferred_with_crashes(store, &heartbeats, &[450, 1_201, 1_202, 1_950, 2_650]).await;

    assert_store_exact!(&pool, &heartbeats);
}

#[tokio::test]
async fn session_writes_left_to_kafka_redelivery_survive_crashes_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let pool = hb_common::store::open_sqlite(dir.path(), 2).await.unwrap();
    let store = Arc::new(SqliteStore::new(pool.clone(), TTL_MS));
    let heartbeats = workload(3_000);

    run_source_deferred_with_crashes(store, &heartbeats, &[300, 999, 2_000, 2_001]).await;

    assert_store_exact!(&pool, &heartbeats);
}

/// A process that lost its partition without knowing it (paused past the
/// group's session timeout) wakes up and flushes what it had read: its commit
/// is refused whole, and the new owner's results stand.
async fn a_stale_owner_cannot_commit_over_the_new_one<S: RawInStore + 'static>(
    store: Arc<S>,
    heartbeats: &[Heartbeat],
) {
    let mut stale = pipeline(store.clone());
    stale.assign(PARTITION).await.unwrap();
    for (offset, hb) in heartbeats.iter().enumerate().take(1_000) {
        stale.ingest(
            PARTITION,
            Some(offset as i64),
            hb,
            hb_common::time::now_ms(),
        );
    }
    stale.flush().await.unwrap();

    let mut owner = pipeline(store.clone());
    let resume = owner.assign(PARTITION).await.unwrap().unwrap() as usize;
    assert_eq!(resume, 1_000);
    for (offset, hb) in heartbeats.iter().enumerate().take(1_500).skip(resume) {
        owner.ingest(
            PARTITION,
            Some(offset as i64),
            hb,
            hb_common::time::now_ms(),
        );
    }
    owner.flush().await.unwrap();

    for (offset, hb) in heartbeats.iter().enumerate().take(1_200).skip(1_000) {
        stale.ingest(
            PARTITION,
            Some(offset as i64),
            hb,
            hb_common::time::now_ms(),
        );
    }
    let refused = stale
        .flush()
        .await
        .expect_err("the partition was taken over");
    assert!(refused.to_string().contains("taken over"), "{refused}");

    for (offset, hb) in heartbeats.iter().enumerate().skip(1_500) {
        owner.ingest(
            PARTITION,
            Some(offset as i64),
            hb,
            hb_common::time::now_ms(),
        );
    }
    owner.flush().await.unwrap();
}

#[tokio::test]
async fn a_stale_owner_cannot_commit_over_the_new_one_on_postgres() {
    let (_db, pool) = hb_testkit::db::TestDb::create().await.unwrap();
    let store = Arc::new(PgStore::new(pool.clone(), TTL_MS));
    let heartbeats = workload(2_000);
    a_stale_owner_cannot_commit_over_the_new_one(store, &heartbeats).await;
    assert_store_exact!(&pool, &heartbeats);
}

#[tokio::test]
async fn a_stale_owner_cannot_commit_over_the_new_one_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let pool = hb_common::store::open_sqlite(dir.path(), 2).await.unwrap();
    let store = Arc::new(SqliteStore::new(pool.clone(), TTL_MS));
    let heartbeats = workload(2_000);
    a_stale_owner_cannot_commit_over_the_new_one(store, &heartbeats).await;
    assert_store_exact!(&pool, &heartbeats);
}
