//! Session changes as the stores apply them: whatever order a flush holds
//! them in (the SQLite writer reorders them by key), each row ends as the
//! last change of its key made it, on both engines.

mod support;

use std::sync::Arc;
use support::{stored_sessions_postgres, stored_sessions_sqlite};
use svc_stream::sessionizer::{Change, Session};
use svc_stream::sink::sql::{PgStore, SqliteStore};
use svc_stream::sink::{Flush, SessionStore};

fn session(user_id: &str, video_id: &str, start_ms: i64, heartbeats: u64) -> Session {
    Session {
        user_id: user_id.into(),
        video_id: video_id.into(),
        start_ms,
        end_ms: start_ms + 5_000 * (heartbeats as i64 - 1),
        heartbeats,
        watch_ms: 5_000 * (heartbeats as i64 - 1),
        coverage_ms: 5_000 * (heartbeats as i64 - 1),
        last_position_ms: 5_000 * (heartbeats as i64 - 1),
        ads: Vec::new(),
        devices: 1,
    }
}

/// Changes in reverse key order, one key changed twice (open, then final).
fn changes_out_of_key_order() -> Vec<(i32, Change)> {
    vec![
        (0, Change::Upsert(session("u-3", "v-1", 1_000, 2))),
        (0, Change::Upsert(session("u-2", "v-9", 1_000, 2))),
        (0, Change::Upsert(session("u-2", "v-1", 9_000, 3))),
        (0, Change::Final(session("u-2", "v-1", 9_000, 4))),
        (0, Change::Upsert(session("u-1", "v-1", 1_000, 2))),
    ]
}

fn expected() -> Vec<Session> {
    vec![
        session("u-1", "v-1", 1_000, 2),
        session("u-2", "v-1", 9_000, 4),
        session("u-2", "v-9", 1_000, 2),
        session("u-3", "v-1", 1_000, 2),
    ]
}

async fn commit_changes(store: &dyn SessionStore) {
    let flush = Flush {
        changes: changes_out_of_key_order(),
        ..Flush::default()
    };
    store.commit(Arc::new(flush)).await.unwrap();
}

#[tokio::test]
async fn sqlite_stores_every_change_of_a_flush_the_last_of_a_key_winning() {
    let dir = tempfile::tempdir().unwrap();
    let pool = hb_common::store::open_sqlite(dir.path(), 2).await.unwrap();
    commit_changes(&SqliteStore::new(pool.clone(), 86_400_000)).await;
    assert_eq!(stored_sessions_sqlite(&pool).await, expected());
}

#[tokio::test]
async fn postgres_stores_every_change_of_a_flush_the_last_of_a_key_winning() {
    let (_db, pool) = hb_testkit::db::TestDb::create().await.unwrap();
    commit_changes(&PgStore::new(pool.clone(), 86_400_000)).await;
    assert_eq!(stored_sessions_postgres(&pool).await, expected());
}
