//! The stream stage after a user's erasure: the user's sessions it holds in
//! memory and the rows waiting for its next flush are forgotten, the rows a
//! flush wrote between the erasure and the stage noticing it are removed by
//! the stage's next flush, another user's sessions are untouched, and the
//! user's heartbeats sent afterwards make new sessions.

use async_trait::async_trait;
use hb_common::store::erase::{erase_and_record, Request};
use hb_common::store::{Statement, Store};
use hb_proto::v1::Heartbeat;
use prometheus_client::registry::Registry;
use std::sync::{Arc, Mutex};
use svc_stream::embedded::EMBEDDED_PARTITION;
use svc_stream::metrics::StreamMetrics;
use svc_stream::pipeline::{Pipeline, SourceKind};
use svc_stream::sessionizer::SessionConfig;
use svc_stream::sink::sql::{PgStore, SqliteStore};
use svc_stream::sink::{RawHeartbeat, RawInStore, RawMirror, RawPlacement, SinkError};

const T0: i64 = 1_714_521_600_000;

fn heartbeat(event_id: &str, user_id: &str, video_id: &str, time_ms: i64) -> Heartbeat {
    Heartbeat {
        event_id: event_id.into(),
        device_id: format!("{user_id}-phone"),
        user_id: user_id.into(),
        video_id: video_id.into(),
        event_time: Some(hb_common::time::ms_to_timestamp(time_ms)),
        position_ms: (time_ms - T0) as u64,
        state: hb_proto::v1::PlaybackState::Playing as i32,
        ad_id: if event_id.ends_with("-ad") {
            "ad-1".into()
        } else {
            String::new()
        },
        ..Heartbeat::default()
    }
}

/// `heartbeats` of `user_id` on video `v1` every 5 s from `from_ms`, the
/// second one during ad `ad-1`.
fn viewing(user_id: &str, from_ms: i64, heartbeats: i64) -> Vec<Heartbeat> {
    (0..heartbeats)
        .map(|i| {
            let suffix = if i == 1 { "-ad" } else { "" };
            heartbeat(
                &format!("{user_id}-{from_ms}-{i}{suffix}"),
                user_id,
                "v1",
                from_ms + i * 5_000,
            )
        })
        .collect()
}

/// Feeds [`viewing`] to `pipeline`.
fn watch(pipeline: &mut Pipeline, user_id: &str, from_ms: i64, heartbeats: i64) {
    let batch = viewing(user_id, from_ms, heartbeats);
    pipeline.ingest_batch(
        EMBEDDED_PARTITION,
        batch.into_iter().map(|hb| (None, hb)),
        hb_common::time::now_ms(),
    );
}

async fn count(store: &Store, sql: &str) -> i64 {
    let rows: Vec<(i64,)> = store
        .fetch_all(&Statement::new(sql, Vec::new()))
        .await
        .unwrap();
    rows[0].0
}

/// `(sessions, session_ads, raw_heartbeats)` rows of `user_id`.
async fn rows_of(pool: &Store, user_id: &str) -> (i64, i64, i64) {
    let mut counts = [0; 3];
    for (count_of, table) in counts
        .iter_mut()
        .zip(["sessions", "session_ads", "raw_heartbeats"])
    {
        *count_of = count(
            pool,
            &format!("SELECT COUNT(*) FROM {table} WHERE user_id = '{user_id}'"),
        )
        .await;
    }
    (counts[0], counts[1], counts[2])
}

async fn erase(store: &Store, user_id: &str) -> i64 {
    let request = Request {
        user_id: user_id.into(),
        requested_by: "test".into(),
        requested_at_ms: hb_common::time::now_ms(),
    };
    erase_and_record(store, &request).await.unwrap().0
}

/// `(mirror_erased_ms, mirror_videos)` of erasure `id`.
async fn carried_out(store: &Store, id: i64) -> (Option<i64>, String) {
    let rows: Vec<(Option<i64>, String)> = store
        .fetch_all(&Statement::new(
            "SELECT mirror_erased_ms, mirror_videos FROM erasures WHERE id = $1",
            vec![hb_common::store::Param::Int(id)],
        ))
        .await
        .unwrap();
    rows[0].clone()
}

fn pipeline(store: Arc<dyn svc_stream::sink::SessionStore>, raw: RawPlacement) -> Pipeline {
    Pipeline::new(
        SessionConfig::default(),
        SourceKind::Handoff,
        store,
        raw,
        StreamMetrics::register(&mut Registry::default()),
    )
}

async fn check_open_sessions_do_not_come_back(pool: Store, store: Arc<dyn RawInStore>) {
    let mut stage = pipeline(store.clone(), RawPlacement::InStore(store.clone()));
    stage.assign(EMBEDDED_PARTITION).await.unwrap();
    // Reads where to start: nothing erased yet.
    assert_eq!(stage.poll_erasures().await.unwrap(), 0);

    watch(&mut stage, "alice", T0, 10);
    watch(&mut stage, "bob", T0, 10);
    stage.flush().await.unwrap();
    assert_eq!(rows_of(&pool, "alice").await, (1, 1, 10));
    // More viewing of both, taken as a flush before the erasure and
    // committed after it: it writes some of Alice's rows back.
    watch(&mut stage, "alice", T0 + 50_000, 5);
    watch(&mut stage, "bob", T0 + 50_000, 5);
    let racing = stage.prepare_flush().expect("rows to write");
    // Held in memory, not flushed yet.
    watch(&mut stage, "alice", T0 + 75_000, 5);

    let erasure_id = erase(&pool, "alice").await;
    assert_eq!(rows_of(&pool, "alice").await, (0, 0, 0));
    racing.commit().await.unwrap();
    assert_ne!(
        rows_of(&pool, "alice").await,
        (0, 0, 0),
        "the race wrote rows back"
    );

    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    assert_eq!(stage.poll_erasures().await.unwrap(), 1);
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    assert_eq!(stage.poll_erasures().await.unwrap(), 0, "applied once");
    stage.flush().await.unwrap();
    assert_eq!(rows_of(&pool, "alice").await, (0, 0, 0));
    assert_eq!(rows_of(&pool, "bob").await, (1, 1, 15));
    let (mirror_erased, videos) = carried_out(&pool, erasure_id).await;
    assert!(mirror_erased.is_some());
    assert_eq!(videos, "[]", "the audit keeps no viewing once carried out");

    // The sessions close (the partition idles): Bob's is final, Alice has none.
    let mut now_ms = hb_common::time::now_ms();
    for _ in 0..2_000 {
        now_ms += 1_000;
        stage.tick(now_ms);
    }
    let stats = stage.flush().await.unwrap();
    assert_eq!(stats.finalized, 1);
    assert_eq!(rows_of(&pool, "alice").await, (0, 0, 0));
    assert_eq!(
        count(
            &pool,
            "SELECT COUNT(*) FROM sessions WHERE user_id = 'bob' AND is_final AND heartbeats = 15"
        )
        .await,
        1
    );

    // Alice comes back: new data, a new session (the watermark moved on
    // with the idle partition, so she watches at a later time).
    let back_ms = stage_watermark(&pool).await + 60_000;
    watch(&mut stage, "alice", back_ms, 3);
    stage.flush().await.unwrap();
    let alice: Vec<(i64, i64)> = pool
        .fetch_all(&Statement::new(
            "SELECT start_ms, heartbeats FROM sessions WHERE user_id = 'alice'",
            Vec::new(),
        ))
        .await
        .unwrap();
    let (start_ms, heartbeats) = alice[0];
    assert_eq!((start_ms, heartbeats), (back_ms, 3));
    assert_eq!(rows_of(&pool, "alice").await, (1, 1, 3));
}

#[tokio::test]
async fn an_erased_users_open_sessions_do_not_come_back_and_new_heartbeats_start_afresh_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let pool = hb_common::store::open_sqlite(dir.path(), 2).await.unwrap();
    let store = Arc::new(SqliteStore::new(pool.clone(), 30 * 86_400_000));
    check_open_sessions_do_not_come_back(Store::Sqlite(pool), store).await;
}

#[tokio::test]
async fn an_erased_users_open_sessions_do_not_come_back_and_new_heartbeats_start_afresh_postgres() {
    let (_db, pool) = hb_testkit::db::TestDb::create().await.unwrap();
    let store = Arc::new(PgStore::new(pool.clone(), 30 * 86_400_000));
    check_open_sessions_do_not_come_back(Store::Postgres(pool), store).await;
}

async fn stage_watermark(pool: &Store) -> i64 {
    count(
        pool,
        "SELECT COALESCE(MAX(watermark_ms), 0) FROM stream_offsets",
    )
    .await
}

/// A raw mirror that records what it is asked, in order.
#[derive(Default)]
struct RecordingMirror {
    calls: Mutex<Vec<String>>,
}

#[async_trait]
impl RawMirror for RecordingMirror {
    async fn write(&self, rows: &[RawHeartbeat]) -> Result<(), SinkError> {
        let mut users: Vec<&str> = rows.iter().map(|r| r.user_id.as_str()).collect();
        users.sort_unstable();
        users.dedup();
        self.calls
            .lock()
            .unwrap()
            .push(format!("write {}", users.join(",")));
        Ok(())
    }

    async fn erase_user(&self, user_id: &str, videos: &[String]) -> Result<u64, SinkError> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("erase {user_id} {}", videos.join(",")));
        Ok(0)
    }

    async fn replay(
        &self,
        _user_id: &str,
        _video_id: &str,
        _from_ms: i64,
        _to_ms: i64,
    ) -> Result<Vec<RawHeartbeat>, SinkError> {
        Ok(Vec::new())
    }
}

#[tokio::test]
async fn a_separate_raw_mirror_is_erased_before_the_flush_writes_new_rows() {
    let dir = tempfile::tempdir().unwrap();
    let pool = hb_common::store::open_sqlite(dir.path(), 2).await.unwrap();
    let store = Arc::new(SqliteStore::new(pool.clone(), 30 * 86_400_000));
    let db = Store::Sqlite(pool);
    let mirror = Arc::new(RecordingMirror::default());
    let mut stage = pipeline(store.clone(), RawPlacement::Mirror(mirror.clone()));
    stage.assign(EMBEDDED_PARTITION).await.unwrap();
    watch(&mut stage, "alice", T0, 3);
    stage.flush().await.unwrap();
    // Alice's second video is only in memory when she is erased.
    let batch = [heartbeat("w-1", "alice", "v2", T0 + 20_000)];
    stage.ingest_batch(
        EMBEDDED_PARTITION,
        batch.into_iter().map(|hb| (None, hb)),
        hb_common::time::now_ms(),
    );
    erase(&db, "alice").await;
    assert_eq!(stage.poll_erasures().await.unwrap(), 1);
    // Heartbeats after the erasure is applied are new data.
    watch(&mut stage, "alice", T0 + 30_000, 2);
    stage.flush().await.unwrap();
    let calls = mirror.calls.lock().unwrap().clone();
    assert_eq!(
        calls,
        vec![
            "write alice".to_string(),
            "erase alice v1,v2".to_string(),
            "write alice".to_string(),
        ]
    );
    // The store kept the new session only (no raw rows: they are mirrored).
    assert_eq!(rows_of(&db, "alice").await, (1, 1, 0));
    let (mirror_erased, videos) = carried_out(&db, 1).await;
    assert!(mirror_erased.is_some());
    assert_eq!(videos, "[]");
}

#[tokio::test]
async fn a_stage_starting_after_an_erasure_no_stage_carried_out_applies_it() {
    let dir = tempfile::tempdir().unwrap();
    let pool = hb_common::store::open_sqlite(dir.path(), 2).await.unwrap();
    let store = Arc::new(SqliteStore::new(pool.clone(), 30 * 86_400_000));
    let db = Store::Sqlite(pool);
    let mirror = Arc::new(RecordingMirror::default());
    let mut first = pipeline(store.clone(), RawPlacement::Mirror(mirror.clone()));
    first.assign(EMBEDDED_PARTITION).await.unwrap();
    watch(&mut first, "alice", T0, 3);
    first.flush().await.unwrap();
    drop(first);
    // Erased while no stage runs; a later erasure too.
    erase(&db, "alice").await;
    erase(&db, "nobody").await;
    let mut second = pipeline(store.clone(), RawPlacement::Mirror(mirror.clone()));
    second.assign(EMBEDDED_PARTITION).await.unwrap();
    assert_eq!(second.poll_erasures().await.unwrap(), 2);
    second.flush().await.unwrap();
    let calls = mirror.calls.lock().unwrap().clone();
    assert_eq!(
        calls,
        vec![
            "write alice".to_string(),
            "erase alice v1".to_string(),
            "erase nobody ".to_string(),
            "write ".to_string(),
        ]
    );
    // Carried out: a third stage starts after them.
    let mut third = pipeline(store.clone(), RawPlacement::Mirror(mirror.clone()));
    third.assign(EMBEDDED_PARTITION).await.unwrap();
    assert_eq!(third.poll_erasures().await.unwrap(), 0);
}

#[tokio::test]
async fn the_embedded_stage_applies_an_erasure_on_its_tick() {
    let dir = tempfile::tempdir().unwrap();
    let pool = hb_common::store::open_sqlite(dir.path(), 2).await.unwrap();
    let store = Arc::new(SqliteStore::new(pool.clone(), 30 * 86_400_000));
    let db = Store::Sqlite(pool);
    let health = hb_common::health::Health::default();
    let (tx, rx) = hb_common::handoff::channel(16);
    let stage = tokio::spawn(svc_stream::embedded::run(
        pipeline(store.clone(), RawPlacement::InStore(store.clone())),
        rx,
        svc_stream::embedded::StageSettings {
            tick: std::time::Duration::from_millis(50),
            flush_max: 20_000,
            session_write_interval: std::time::Duration::from_secs(2),
            defer_from: svc_stream::embedded::DEFER_FROM,
        },
        svc_stream::pipeline::Readiness::new(
            health.register("stream"),
            std::time::Duration::from_secs(30),
        ),
    ));
    let first = [viewing("alice", T0, 10), viewing("bob", T0, 10)].concat();
    tx.send(first, vec![]).await.expect("committed");
    assert_eq!(rows_of(&db, "alice").await, (1, 1, 10));

    let erasure_id = erase(&db, "alice").await;
    let waited = std::time::Instant::now();
    while carried_out(&db, erasure_id).await.0.is_none() {
        assert!(
            waited.elapsed() < std::time::Duration::from_secs(10),
            "the stage never applied the erasure"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(rows_of(&db, "alice").await, (0, 0, 0));

    // Bob goes on; Alice comes back later: new data.
    let second = [
        viewing("bob", T0 + 50_000, 5),
        viewing("alice", T0 + 100_000, 3),
    ]
    .concat();
    tx.send(second, vec![]).await.expect("committed");
    drop(tx);
    stage.await.unwrap().unwrap();
    assert_eq!(rows_of(&db, "bob").await, (1, 1, 15));
    assert_eq!(rows_of(&db, "alice").await, (1, 1, 3));
    let alice: Vec<(i64, i64)> = db
        .fetch_all(&Statement::new(
            "SELECT start_ms, heartbeats FROM sessions WHERE user_id = 'alice'",
            Vec::new(),
        ))
        .await
        .unwrap();
    assert_eq!(alice, vec![(T0 + 100_000, 3)]);
}
