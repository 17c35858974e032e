//! The sources feed the pipeline in batches (`Pipeline::ingest_batch`): the
//! store must hold exactly what feeding the same heartbeats one at a time
//! gives, resends, late heartbeats, invalid ones and replays included.

use hb_proto::v1::Heartbeat;
use hb_testkit::fleet::{Fleet, FleetConfig};
use prometheus_client::registry::Registry;
use sqlx::{Row, SqlitePool};
use std::sync::Arc;
use svc_stream::metrics::StreamMetrics;
use svc_stream::pipeline::{Pipeline, SourceKind};
use svc_stream::sessionizer::SessionConfig;
use svc_stream::sink::sql::SqliteStore;
use svc_stream::sink::RawPlacement;

const PARTITION: i32 = 0;

/// A fleet's heartbeats with every 7th resent, every 50th sent again an
/// hour late, and an invalid one (no state) every 101st.
fn heartbeats() -> Vec<Heartbeat> {
    let mut fleet = Fleet::new(FleetConfig {
        devices: 40,
        users: 25,
        videos: 15,
        ads: 5,
        seed: 9,
        ..FleetConfig::default()
    });
    let mut out = Vec::new();
    for (i, hb) in fleet.heartbeats(3_000).enumerate() {
        if i % 7 == 0 {
            out.push(hb.clone());
        }
        if i % 50 == 0 {
            let mut late = hb.clone();
            late.event_id.push_str("-late");
            let t = hb_common::time::timestamp_to_ms(late.event_time.as_ref().unwrap());
            late.event_time = Some(hb_common::time::ms_to_timestamp(t - 3_600_000));
            out.push(late);
        }
        if i % 101 == 0 {
            let mut invalid = hb.clone();
            invalid.event_id.push_str("-invalid");
            invalid.state = 0;
            out.push(invalid);
        }
        out.push(hb);
    }
    out
}

async fn stage() -> (Pipeline, SqlitePool, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let pool = hb_common::store::open_sqlite(dir.path(), 2).await.unwrap();
    let store = Arc::new(SqliteStore::new(pool.clone(), 30 * 86_400_000));
    let mut pipeline = Pipeline::new(
        SessionConfig::default(),
        SourceKind::Log {
            topic: "heartbeats".into(),
        },
        store.clone(),
        RawPlacement::InStore(store),
        StreamMetrics::register(&mut Registry::default()),
    );
    pipeline.assign(PARTITION).await.unwrap();
    (pipeline, pool, dir)
}

/// Everything the store holds, in a fixed order.
async fn contents(pool: &SqlitePool) -> Vec<String> {
    let mut out = Vec::new();
    for sql in [
        "SELECT user_id || '/' || video_id || '/' || start_ms || '/' || end_ms || '/' || heartbeats || '/' || watch_ms || '/' || coverage_ms FROM sessions ORDER BY 1",
        "SELECT event_id || '/' || late FROM raw_heartbeats ORDER BY 1",
        "SELECT event_id || '/' || reason FROM dead_letters ORDER BY 1",
        "SELECT topic || '/' || partition || '/' || next_offset FROM stream_offsets ORDER BY 1",
    ] {
        let rows = sqlx::query(sql).fetch_all(pool).await.unwrap();
        out.extend(rows.iter().map(|row| row.get::<String, _>(0)));
    }
    out
}

#[tokio::test]
async fn batches_store_exactly_what_one_at_a_time_stores() {
    let heartbeats = heartbeats();
    let now = hb_common::time::now_ms();

    let (mut single, single_pool, _single_dir) = stage().await;
    for (offset, hb) in heartbeats.iter().enumerate() {
        single.ingest(PARTITION, Some(offset as i64), hb, now);
        if offset % 1_000 == 999 {
            single.flush().await.unwrap();
        }
    }
    single.tick(now);
    single.flush().await.unwrap();

    let (mut batched, batched_pool, _batched_dir) = stage().await;
    let indexed: Vec<(Option<i64>, Heartbeat)> = heartbeats
        .iter()
        .enumerate()
        .map(|(offset, hb)| (Some(offset as i64), hb.clone()))
        .collect();
    // Batches of 333 cross the flushes every 1 000 heartbeats above.
    for chunk in indexed.chunks(333) {
        batched.ingest_batch(PARTITION, chunk.iter().cloned(), now);
        if chunk.last().unwrap().0.unwrap() % 1_000 >= 1_000 - 333 {
            batched.flush().await.unwrap();
        }
    }
    batched.tick(now);
    batched.flush().await.unwrap();

    let expected = contents(&single_pool).await;
    assert!(expected.iter().any(|row| row.ends_with("/1")), "late rows");
    assert!(
        expected.iter().any(|row| row.contains("-invalid/")),
        "dead letters"
    );
    assert_eq!(contents(&batched_pool).await, expected);
}

#[tokio::test]
async fn a_replayed_batch_adds_nothing() {
    let heartbeats = heartbeats();
    let now = hb_common::time::now_ms();
    let (mut pipeline, pool, _dir) = stage().await;
    let indexed: Vec<(Option<i64>, Heartbeat)> = heartbeats
        .iter()
        .enumerate()
        .map(|(offset, hb)| (Some(offset as i64), hb.clone()))
        .collect();
    pipeline.ingest_batch(PARTITION, indexed.iter().cloned(), now);
    pipeline.flush().await.unwrap();
    let before = contents(&pool).await;

    // A new owner is delivered the committed messages again.
    pipeline.revoke(PARTITION);
    pipeline.assign(PARTITION).await.unwrap();
    pipeline.ingest_batch(PARTITION, indexed.iter().cloned(), now);
    pipeline.flush().await.unwrap();
    assert_eq!(contents(&pool).await, before);
}
