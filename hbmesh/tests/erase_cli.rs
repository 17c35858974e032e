//! `hbmesh erase --user ID` as an operator runs it: against the store the
//! configuration names (here the embedded file of `HB_DATA_DIR`), without a
//! running service, printing the counts and leaving an audit row by `cli`.

use std::process::Command;
use std::sync::Arc;
use svc_stream::sessionizer::{Change, Session};
use svc_stream::sink::sql::SqliteStore;
use svc_stream::sink::{Flush, RawHeartbeat, SessionStore};

fn raw(event_id: &str, user_id: &str, time_ms: i64) -> RawHeartbeat {
    RawHeartbeat {
        event_id: event_id.into(),
        user_id: user_id.into(),
        video_id: "v1".into(),
        device_id: "d1".into(),
        event_time_ms: time_ms,
        position_ms: 0,
        state: 1,
        ad_id: String::new(),
        platform: String::new(),
        app_version: String::new(),
        country: String::new(),
        bitrate_kbps: 0,
        late: false,
    }
}

fn session(user_id: &str, ads: &[&str]) -> Session {
    Session {
        user_id: user_id.into(),
        video_id: "v1".into(),
        start_ms: 1_000,
        end_ms: 6_000,
        heartbeats: 2,
        watch_ms: 5_000,
        coverage_ms: 5_000,
        last_position_ms: 5_000,
        devices: 1,
        ads: ads.iter().map(|ad| ad.to_string()).collect(),
    }
}

fn erase(data: &std::path::Path, user: &str) -> (i32, serde_json::Value, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_hbmesh"))
        .args(["erase", "--user", user])
        .env("HB_DATA_DIR", data)
        .env_remove("HB_YUGABYTE_URL")
        .env_remove("HB_AUTH_SECRET")
        .output()
        .expect("hbmesh runs");
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    (
        output.status.code().unwrap_or(-1),
        serde_json::from_str(&stdout).unwrap_or(serde_json::Value::Null),
        String::from_utf8_lossy(&output.stderr).to_string(),
    )
}

#[tokio::test]
async fn erase_removes_the_users_rows_from_the_configured_store_and_prints_the_counts() {
    let data = tempfile::tempdir().unwrap();
    let pool = hb_common::store::open_sqlite(data.path(), 2).await.unwrap();
    let store = SqliteStore::new(pool.clone(), 30 * 86_400_000);
    let flush = Flush {
        raw: vec![
            raw("a1", "alice", 1_000),
            raw("a2", "alice", 6_000),
            raw("b1", "bob", 1_000),
        ],
        changes: vec![
            (0, Change::Final(session("alice", &["ad-1", "ad-2"]))),
            (0, Change::Final(session("bob", &["ad-1"]))),
        ],
        ..Flush::default()
    };
    store.commit(Arc::new(flush)).await.unwrap();

    let (code, answer, stderr) = erase(data.path(), "alice");
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        answer,
        serde_json::json!({"user_id": "alice", "raw_heartbeats": 2, "sessions": 1,
                           "ad_links": 2, "erasure_id": 1})
    );
    for (user, left) in [("alice", 0), ("bob", 1)] {
        let sessions: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM sessions WHERE user_id = $1")
            .bind(user)
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(sessions, left, "{user}");
    }
    let audit: (String, String) =
        sqlx::query_as("SELECT user_id, requested_by FROM erasures WHERE id = 1")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(audit, ("alice".to_string(), "cli".to_string()));

    let (code, _, stderr) = erase(data.path(), "");
    assert_ne!(code, 0);
    assert!(stderr.contains("user_id"), "{stderr}");
}
