//! The raw mirror kept in the sessions store (SQLite in the embedded tier,
//! PostgreSQL without ScyllaDB): idempotent writes, replay of open sessions,
//! and TTL expiry, each checked on both engines.

use std::sync::Arc;
use svc_stream::sink::sql::{PgStore, SqliteStore};
use svc_stream::sink::{Flush, OpenSession, RawHeartbeat, RawMirror, SessionStore};

const DAY: i64 = 86_400_000;

fn raw(event_id: &str, user_id: &str, video_id: &str, event_time_ms: i64) -> RawHeartbeat {
    RawHeartbeat {
        event_id: event_id.into(),
        user_id: user_id.into(),
        video_id: video_id.into(),
        device_id: format!("dev-{user_id}"),
        event_time_ms,
        position_ms: event_time_ms % 1_000_000,
        state: 1,
        ad_id: String::new(),
        platform: "web".into(),
        app_version: "1.0".into(),
        country: "SE".into(),
        bitrate_kbps: 3_000,
        late: false,
    }
}

async fn commit_raw(store: &dyn SessionStore, rows: Vec<RawHeartbeat>) {
    let flush = Flush {
        raw: rows,
        ..Flush::default()
    };
    store.commit(Arc::new(flush)).await.unwrap();
}

fn ids(rows: &[RawHeartbeat]) -> Vec<&str> {
    rows.iter().map(|r| r.event_id.as_str()).collect()
}

async fn a_resent_heartbeat_is_stored_once(store: Arc<impl SessionStore + RawMirror>) {
    let now = hb_common::time::now_ms();
    let first = raw("e-1", "u-1", "v-1", now);
    commit_raw(&*store, vec![first.clone(), first.clone()]).await;
    commit_raw(&*store, vec![first.clone()]).await;
    let replayed = store
        .replay("u-1", "v-1", now - DAY, now + DAY)
        .await
        .unwrap();
    assert_eq!(replayed, vec![first]);
}

async fn replaying_open_sessions_returns_exactly_their_rows_in_time_order(
    store: Arc<impl SessionStore + RawMirror>,
) {
    let t = hb_common::time::now_ms() - DAY;
    commit_raw(
        &*store,
        vec![
            raw("a-3", "u-a", "v-1", t + 3_000),
            raw("b-1", "u-b", "v-1", t + 1_000),
            raw("a-1", "u-a", "v-1", t + 1_000),
            raw("a-2", "u-a", "v-1", t + 2_000),
            raw("a-other-video", "u-a", "v-2", t + 2_000),
            // The same key, but before the open session began: an older session.
            raw("a-0", "u-a", "v-1", t - 60_000),
            raw("c-9", "u-c", "v-9", t + 2_500),
        ],
    )
    .await;
    let open = vec![
        OpenSession {
            user_id: "u-a".into(),
            video_id: "v-1".into(),
            start_ms: t + 1_000,
            end_ms: t + 3_000,
        },
        OpenSession {
            user_id: "u-c".into(),
            video_id: "v-9".into(),
            start_ms: t + 2_500,
            end_ms: t + 2_500,
        },
    ];
    let mut replayed = Vec::new();
    store
        .replay_open(&open, &mut |row| replayed.push(row))
        .await
        .unwrap();
    assert!(
        replayed
            .windows(2)
            .all(|pair| pair[0].event_time_ms <= pair[1].event_time_ms),
        "handed on in time order"
    );
    replayed.sort_by(|a, b| (&a.user_id, a.event_time_ms).cmp(&(&b.user_id, b.event_time_ms)));
    assert_eq!(ids(&replayed), vec!["a-1", "a-2", "a-3", "c-9"]);
    assert_eq!(
        replayed[0],
        raw("a-1", "u-a", "v-1", t + 1_000),
        "every column"
    );
    store
        .replay_open(&[], &mut |row| panic!("nothing is open, yet {row:?} came"))
        .await
        .unwrap();
}

async fn expiry_deletes_rows_past_their_ttl_and_keeps_the_rest(
    store: Arc<impl SessionStore + RawMirror>,
) {
    let now = hb_common::time::now_ms();
    commit_raw(
        &*store,
        vec![
            raw("old", "u-1", "v-1", now - 3 * DAY),
            raw("fresh", "u-1", "v-1", now - DAY / 2),
        ],
    )
    .await;
    assert_eq!(store.expire_raw(now).await.unwrap(), 1);
    let left = store
        .replay("u-1", "v-1", now - 10 * DAY, now)
        .await
        .unwrap();
    assert_eq!(ids(&left), vec!["fresh"]);
}

async fn sqlite(ttl_ms: i64) -> (tempfile::TempDir, Arc<SqliteStore>) {
    let dir = tempfile::tempdir().unwrap();
    let pool = hb_common::store::open_sqlite(dir.path(), 2).await.unwrap();
    (dir, Arc::new(SqliteStore::new(pool, ttl_ms)))
}

async fn postgres(ttl_ms: i64) -> (hb_testkit::db::TestDb, Arc<PgStore>) {
    let (db, pool) = hb_testkit::db::TestDb::create().await.unwrap();
    (db, Arc::new(PgStore::new(pool, ttl_ms)))
}

#[tokio::test]
async fn sqlite_stores_a_resent_heartbeat_once() {
    let (_dir, store) = sqlite(30 * DAY).await;
    a_resent_heartbeat_is_stored_once(store).await;
}

#[tokio::test]
async fn postgres_stores_a_resent_heartbeat_once() {
    let (_db, store) = postgres(30 * DAY).await;
    a_resent_heartbeat_is_stored_once(store).await;
}

#[tokio::test]
async fn sqlite_replays_exactly_the_open_sessions_rows() {
    let (_dir, store) = sqlite(30 * DAY).await;
    replaying_open_sessions_returns_exactly_their_rows_in_time_order(store).await;
}

#[tokio::test]
async fn postgres_replays_exactly_the_open_sessions_rows() {
    let (_db, store) = postgres(30 * DAY).await;
    replaying_open_sessions_returns_exactly_their_rows_in_time_order(store).await;
}

#[tokio::test]
async fn sqlite_expires_raw_rows_past_their_ttl() {
    let (_dir, store) = sqlite(DAY).await;
    expiry_deletes_rows_past_their_ttl_and_keeps_the_rest(store).await;
}

#[tokio::test]
async fn postgres_expires_raw_rows_past_their_ttl() {
    let (_db, store) = postgres(DAY).await;
    expiry_deletes_rows_past_their_ttl_and_keeps_the_rest(store).await;
}

#[tokio::test]
async fn sqlite_commits_reach_the_database_file_off_the_commit_path() {
    let (dir, store) = sqlite(30 * DAY).await;
    let file = dir.path().join(hb_common::store::SQLITE_FILE);
    let size = || std::fs::metadata(&file).unwrap().len();
    let before = size();
    let t = hb_common::time::now_ms();
    let rows = (0..5_000)
        .map(|i| raw(&format!("e-{i}"), &format!("u-{i}"), "v-1", t + i))
        .collect();
    commit_raw(&*store, rows).await;
    // The writer never checkpoints (wal_autocheckpoint = 0) and nothing else
    // writes here, so the file grows only if the checkpoint thread copied the
    // committed pages out of the WAL.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while size() <= before {
        assert!(
            std::time::Instant::now() < deadline,
            "the committed rows never reached the database file"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Every write of raw rows bumps the version of each hour it touched, in
/// the same transaction, and expiry bumps the hours it emptied: svc-query
/// uses a summed hour of traffic only while its version is unchanged.
macro_rules! check_raw_writes_bump_their_hours {
    ($store:expr) => {{
        let store = $store;
        let hour = hb_common::raw::HOUR_MS;
        let t = hb_common::raw::hour_ms(hb_common::time::now_ms() - 3 * DAY);
        let versions = || async {
            sqlx::query_as::<_, (i64, i64)>(
                "SELECT hour_ms, version FROM raw_hour_versions ORDER BY hour_ms",
            )
            .fetch_all(store.pool())
            .await
            .unwrap()
        };
        commit_raw(
            &*store,
            vec![
                raw("a", "u-1", "v-1", t + 1),
                raw("b", "u-1", "v-1", t + hour + 5),
                raw("c", "u-2", "v-1", t + 7),
            ],
        )
        .await;
        assert_eq!(versions().await, vec![(t, 1), (t + hour, 1)]);
        commit_raw(&*store, vec![raw("d", "u-1", "v-1", t + 2)]).await;
        assert_eq!(versions().await, vec![(t, 2), (t + hour, 1)]);
        // A flush without raw rows leaves every hour alone.
        commit_raw(&*store, Vec::new()).await;
        assert_eq!(versions().await, vec![(t, 2), (t + hour, 1)]);
        // The TTL is one day: both hours lose their rows.
        assert_eq!(
            store.expire_raw(hb_common::time::now_ms()).await.unwrap(),
            4
        );
        assert_eq!(versions().await, vec![(t, 3), (t + hour, 2)]);
    }};
}

#[tokio::test]
async fn sqlite_raw_writes_and_expiry_bump_their_hours() {
    let (_dir, store) = sqlite(DAY).await;
    check_raw_writes_bump_their_hours!(store);
}

#[tokio::test]
async fn postgres_raw_writes_and_expiry_bump_their_hours() {
    let (_db, store) = postgres(DAY).await;
    check_raw_writes_bump_their_hours!(store);
}

/// A PostgreSQL restart or failover cuts the pool's connections; one used
/// within a second of its last use is not pinged first, so its write fails,
/// and it must fail as worth retrying (the flush retries it) rather than as
/// a rejected write.
#[tokio::test]
async fn a_write_on_a_connection_the_server_cut_fails_as_retryable() {
    let (db, store) = postgres(30 * DAY).await;
    let now = hb_common::time::now_ms();
    commit_raw(&*store, vec![raw("before", "u-1", "v-1", now)]).await;
    db.cut_connections().await.unwrap();
    let after = Arc::new(Flush {
        raw: vec![raw("after", "u-1", "v-1", now + 1)],
        ..Flush::default()
    });
    let mut failures = 0;
    while let Err(err) = store.commit(after.clone()).await {
        assert!(
            matches!(err, svc_stream::sink::SinkError::Unavailable(_)),
            "{err}"
        );
        failures += 1;
        assert!(failures < 10, "the pool never replaced the cut connections");
    }
    let replayed = store
        .replay("u-1", "v-1", now - DAY, now + DAY)
        .await
        .unwrap();
    assert_eq!(ids(&replayed), vec!["before", "after"]);
}
