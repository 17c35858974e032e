//! The ScyllaDB raw mirror against a real node, gated on
//! `HB_TEST_SCYLLA=host:port` (e.g. `docker run -p 9042:9042 scylladb/scylla
//! --smp 1` then `HB_TEST_SCYLLA=127.0.0.1:9042 cargo test -p svc-stream --test
//! scylla_gated`). Each run creates a fresh keyspace `hb_test_<random>` with
//! RF 1 and drops it at the end, pass or fail. Without the variable the test
//! prints why it skipped and passes. Covers writes, replays and erasing a
//! user from both tables.

use std::panic::AssertUnwindSafe;

use futures::{FutureExt, TryStreamExt};
use hb_common::raw::{bucket, hour_ms, HOUR_MS};
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use svc_stream::sink::scylla::{ScyllaConfig, ScyllaMirror};
use svc_stream::sink::{RawHeartbeat, RawMirror};

fn scylla_addr() -> Option<String> {
    match std::env::var("HB_TEST_SCYLLA") {
        Ok(addr) if !addr.trim().is_empty() => Some(addr.trim().to_owned()),
        _ => {
            eprintln!("skipped: HB_TEST_SCYLLA not set");
            None
        }
    }
}

fn heartbeat(event_id: &str, user_id: &str, event_time_ms: i64, late: bool) -> RawHeartbeat {
    RawHeartbeat {
        event_id: event_id.to_owned(),
        user_id: user_id.to_owned(),
        video_id: "video-1".to_owned(),
        device_id: "phone-1".to_owned(),
        event_time_ms,
        position_ms: 10_000,
        state: 1,
        ad_id: String::new(),
        platform: "ios".to_owned(),
        app_version: "1.0.0".to_owned(),
        country: "FR".to_owned(),
        bitrate_kbps: 3_000,
        late,
    }
}

/// Event ids, late flags of the by_hour partition `(hour, bucket)`.
async fn hour_partition(
    session: &Session,
    keyspace: &str,
    hour: i64,
    bucket: i32,
) -> Vec<(String, bool)> {
    let cql =
        format!("SELECT event_id, late FROM {keyspace}.by_hour WHERE hour_ms = ? AND bucket = ?");
    session
        .query_iter(cql, (hour, bucket))
        .await
        .expect("by_hour query")
        .rows_stream::<(String, bool)>()
        .expect("by_hour columns")
        .try_collect()
        .await
        .expect("by_hour rows")
}

async fn exercise(config: &ScyllaConfig, session: &Session) {
    let mirror = ScyllaMirror::connect(config).await.expect("connect");
    // Applying the schema again on the next start is a no-op.
    let mirror_again = ScyllaMirror::connect(config)
        .await
        .expect("reconnect to an existing schema");
    drop(mirror_again);

    let hour = 480_000 * HOUR_MS;
    let before_hour = heartbeat("evt-a", "user-1", hour - 1, false);
    let on_hour = heartbeat("evt-b", "user-1", hour, false);
    let merged_then_late = heartbeat("evt-c", "user-1", hour + 5_000, false);
    let late_then_merged = heartbeat("evt-d", "user-1", hour + 10_000, false);
    let only_late = heartbeat("evt-e", "user-1", hour + 15_000, true);
    let other_user = heartbeat("evt-f", "user-2", hour + 5_000, false);
    let out_of_range = heartbeat("evt-g", "user-1", hour + 20_000, false);

    // A late copy carries different context so a wrong winner is visible.
    let late_copy = |row: &RawHeartbeat| RawHeartbeat {
        late: true,
        platform: "late-copy".to_owned(),
        position_ms: 999,
        ..row.clone()
    };

    mirror
        .write(&[
            before_hour.clone(),
            on_hour.clone(),
            merged_then_late.clone(),
            late_copy(&late_then_merged),
            only_late.clone(),
            other_user.clone(),
            out_of_range.clone(),
        ])
        .await
        .expect("first write");
    mirror
        .write(&[
            before_hour.clone(), // exact duplicate
            late_copy(&merged_then_late),
            late_then_merged.clone(),
        ])
        .await
        .expect("second write");
    mirror.write(&[]).await.expect("empty write");

    let replayed = mirror
        .replay("user-1", "video-1", hour - 1, hour + 15_000)
        .await
        .expect("replay");
    assert_eq!(
        replayed,
        vec![
            before_hour.clone(),
            on_hour.clone(),
            merged_then_late.clone(),
            late_then_merged.clone(),
            only_late.clone(),
        ]
    );
    assert_eq!(
        mirror
            .replay("user-1", "video-1", hour, hour)
            .await
            .expect("replay one ms"),
        vec![on_hour.clone()]
    );
    assert!(mirror
        .replay("user-1", "video-1", hour + 1, hour)
        .await
        .expect("empty range")
        .is_empty());
    assert_eq!(
        mirror
            .replay("user-2", "video-1", 0, i64::MAX)
            .await
            .expect("other user"),
        vec![other_user.clone()]
    );

    // by_hour: every row in the partition of its own hour and bucket, once,
    // and the merged copy won there too.
    for row in [
        &before_hour,
        &on_hour,
        &merged_then_late,
        &late_then_merged,
        &only_late,
        &other_user,
        &out_of_range,
    ] {
        let partition = hour_partition(
            session,
            &config.keyspace,
            hour_ms(row.event_time_ms),
            bucket(&row.event_id),
        )
        .await;
        let copies: Vec<&(String, bool)> = partition
            .iter()
            .filter(|(event_id, _)| *event_id == row.event_id)
            .collect();
        assert_eq!(
            copies,
            vec![&(row.event_id.clone(), row.late)],
            "{}",
            row.event_id
        );
    }
    assert_eq!(hour_ms(before_hour.event_time_ms), hour - HOUR_MS);
    let previous_hour = hour_partition(
        session,
        &config.keyspace,
        hour,
        bucket(&before_hour.event_id),
    )
    .await;
    assert!(!previous_hour.iter().any(|(id, _)| id == "evt-a"));

    // Replay through many pages (page size 3 in this config).
    let many: Vec<RawHeartbeat> = (0..50)
        .map(|i| heartbeat(&format!("evt-p{i:02}"), "user-3", hour + i * 1_000, false))
        .collect();
    mirror.write(&many).await.expect("write many");
    let replayed = mirror
        .replay("user-3", "video-1", 0, i64::MAX)
        .await
        .expect("replay many");
    assert_eq!(replayed, many);

    // Erasing user-1: both tables lose every row of theirs (merged or late),
    // whatever the hour; other users keep theirs. A video without rows and
    // erasing again change nothing.
    let user_1 = [
        &before_hour,
        &on_hour,
        &merged_then_late,
        &late_then_merged,
        &only_late,
        &out_of_range,
    ];
    let erased = mirror
        .erase_user("user-1", &["video-1".to_owned(), "video-none".to_owned()])
        .await
        .expect("erase user-1");
    assert_eq!(erased, user_1.len() as u64);
    assert!(mirror
        .replay("user-1", "video-1", 0, i64::MAX)
        .await
        .expect("replay erased")
        .is_empty());
    for row in user_1 {
        let partition = hour_partition(
            session,
            &config.keyspace,
            hour_ms(row.event_time_ms),
            bucket(&row.event_id),
        )
        .await;
        assert!(
            !partition.iter().any(|(id, _)| *id == row.event_id),
            "{} left in by_hour",
            row.event_id
        );
    }
    let other = hour_partition(
        session,
        &config.keyspace,
        hour_ms(other_user.event_time_ms),
        bucket(&other_user.event_id),
    )
    .await;
    assert!(other.iter().any(|(id, _)| *id == other_user.event_id));
    assert_eq!(
        mirror
            .replay("user-2", "video-1", 0, i64::MAX)
            .await
            .expect("other user after erasure"),
        vec![other_user.clone()]
    );
    assert_eq!(
        mirror
            .erase_user("user-1", &["video-1".to_owned()])
            .await
            .expect("erase again"),
        0
    );
    assert_eq!(
        mirror
            .replay("user-3", "video-1", 0, i64::MAX)
            .await
            .expect("user-3 after erasure"),
        many
    );
}

#[tokio::test]
async fn scylla_mirror_round_trip() {
    let Some(addr) = scylla_addr() else {
        return;
    };
    let keyspace = format!("hb_test_{:016x}", rand::random::<u64>());
    let config = ScyllaConfig {
        nodes: vec![addr.clone()],
        keyspace: keyspace.clone(),
        replication_factor: 1,
        ttl_secs: 3_600,
        replay_page_size: 3,
        ..ScyllaConfig::default()
    };
    let session = SessionBuilder::new()
        .known_node(&addr)
        .build()
        .await
        .expect("test session");

    let outcome = AssertUnwindSafe(exercise(&config, &session))
        .catch_unwind()
        .await;
    let dropped = session
        .query_unpaged(format!("DROP KEYSPACE IF EXISTS {keyspace}"), &[])
        .await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
    dropped.expect("drop the test keyspace");
}
