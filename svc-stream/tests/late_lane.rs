//! The late lane: a heartbeat past the allowed lateness is mirrored raw and
//! marked; once every session it can reach is final, its key's sessions
//! around it are recomputed from the raw rows and replaced in one
//! transaction. Once the stage is quiescent the store equals the batch
//! definition over every accepted heartbeat, however late it came.

mod support;

use hb_proto::v1::{Heartbeat, PlaybackState};
use hb_testkit::fleet::{Fleet, FleetConfig};
use prometheus_client::registry::Registry;
use sqlx::Row;
use std::sync::Arc;
use support::{
    expected, heartbeat, idle_closes, idle_through, stored_sessions_postgres,
    stored_sessions_sqlite, FaultyStore,
};
use svc_stream::metrics::StreamMetrics;
use svc_stream::pipeline::{Pipeline, SourceKind, CORRECTION_SETTLE_MS};
use svc_stream::sink::sql::{PgStore, SqliteStore};
use svc_stream::sink::{RawPlacement, SessionStore, SinkError};

const TOPIC: &str = "heartbeats";
const PARTITION: i32 = 2;
const TTL_MS: i64 = 30 * 86_400_000;
const START_MS: i64 = 1_700_000_000_000;
const MINUTE_MS: i64 = 60_000;
const DAY_MS: i64 = 86_400_000;

/// One heartbeat every 5 s of `user_id` watching `video_id` from `from_ms`
/// for `minutes`, from position `position_ms` on, at 1x (a pause now and then).
fn viewing(
    user_id: &str,
    video_id: &str,
    from_ms: i64,
    minutes: i64,
    position_ms: u64,
) -> Vec<Heartbeat> {
    (0..minutes * 12)
        .map(|i| {
            let mut hb = heartbeat(
                &format!("{user_id}-{video_id}-{}", from_ms + i * 5_000),
                user_id,
                from_ms + i * 5_000,
                position_ms + i as u64 * 5_000,
            );
            hb.video_id = video_id.into();
            if i % 50 == 49 {
                hb.state = PlaybackState::Paused as i32;
            }
            hb
        })
        .collect()
}

/// Two delivery sequences merged by event time, each keeping its own order.
fn merge_by_time(a: Vec<Heartbeat>, b: Vec<Heartbeat>) -> Vec<Heartbeat> {
    let time = |hb: &Heartbeat| hb.event_time.as_ref().map_or(0, |t| t.seconds);
    let (mut a, mut b) = (a.into_iter().peekable(), b.into_iter().peekable());
    let mut merged = Vec::new();
    loop {
        let take_a = match (a.peek(), b.peek()) {
            (Some(x), Some(y)) => time(x) <= time(y),
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => return merged,
        };
        merged.extend(if take_a { a.next() } else { b.next() });
    }
}

/// A live fleet for about a quarter of an hour from `START_MS`, with a
/// commuter whose last five minutes of a title are live; then the uploads of
/// offline viewing: the commuter's first half hour of that title (which joins
/// the live session), and a traveller's hour of a film watched a day earlier.
fn offline_backlog() -> (Vec<Heartbeat>, Vec<Heartbeat>) {
    let mut fleet = Fleet::new(FleetConfig {
        devices: 40,
        users: 25,
        videos: 12,
        ads: 4,
        seed: 17,
        start_ms: START_MS,
        ..FleetConfig::default()
    });
    let fleet: Vec<Heartbeat> = fleet.heartbeats(6_000).collect();
    let commuter_live = viewing("commuter", "v-commute", START_MS, 5, 1_800_000);
    let live = merge_by_time(fleet, commuter_live);
    let mut late = viewing("commuter", "v-commute", START_MS - 30 * MINUTE_MS, 30, 0);
    late.extend(viewing("traveller", "v-flight", START_MS - DAY_MS, 60, 0));
    (live, late)
}

fn stage(source: SourceKind, store: Arc<dyn SessionStore>, raw: RawPlacement) -> Pipeline {
    let metrics = StreamMetrics::register(&mut Registry::default());
    Pipeline::new(support::config(), source, store, raw, metrics)
}

fn log() -> SourceKind {
    SourceKind::Log {
        topic: TOPIC.into(),
    }
}

/// Feeds `live` then `late` in batches of 100, each batch flushed (every
/// other one raw rows only when the stage defers session writes), then lets
/// the partition go idle until everything is final and corrected. Returns
/// the processing time reached.
async fn run(stage: &mut Pipeline, live: &[Heartbeat], late: &[Heartbeat]) -> i64 {
    let first = stage.assign(PARTITION).await.unwrap().unwrap_or(0);
    let mut offset = first;
    let mut now = hb_common::time::now_ms();
    for (i, batch) in live
        .iter()
        .chain(late)
        .collect::<Vec<_>>()
        .chunks(100)
        .enumerate()
    {
        let with_offsets = batch.iter().map(|hb| {
            let at = offset;
            offset += 1;
            (Some(at), (*hb).clone())
        });
        stage.ingest_batch(PARTITION, with_offsets, now);
        stage.tick(now);
        now += 50;
        match stage.prepare_raw_flush() {
            Some(flush) if i % 2 == 0 => {
                flush.commit().await.unwrap();
            }
            Some(flush) => {
                flush.commit().await.unwrap();
                stage.flush().await.unwrap();
            }
            None => {}
        }
    }
    stage.flush().await.unwrap();
    quiesce(stage, now).await
}

/// Idles the partition until every session is final, flushing after each
/// stretch: the flush after the last one corrects what was still waiting.
async fn quiesce(stage: &mut Pipeline, now: i64) -> i64 {
    let mut now = now;
    for _ in 0..2 {
        idle_through(stage, now, now + idle_closes(0));
        now += idle_closes(0);
        stage.flush().await.unwrap();
    }
    now
}

/// Lets late heartbeats settle (no more of them for their keys), then flushes.
async fn settle_and_flush(stage: &mut Pipeline, now: i64) -> Result<(), SinkError> {
    idle_through(stage, now, now + CORRECTION_SETTLE_MS);
    stage.flush().await.map(|_| ())
}

#[tokio::test]
async fn an_hour_of_offline_viewing_uploaded_a_day_late_equals_the_batch_definition() {
    let dir = tempfile::tempdir().unwrap();
    let pool = hb_common::store::open_sqlite(dir.path(), 2).await.unwrap();
    let store = Arc::new(SqliteStore::new(pool.clone(), TTL_MS));
    let (live, late) = offline_backlog();

    // The embedded tier: the hand-off, raw rows in the store, session writes deferred.
    let mut embedded = stage(
        SourceKind::Handoff,
        store.clone(),
        RawPlacement::InStore(store.clone()),
    );
    assert!(embedded.defer_sessions());
    run(&mut embedded, &live, &late).await;

    let all: Vec<Heartbeat> = live.iter().chain(&late).cloned().collect();
    assert_eq!(stored_sessions_sqlite(&pool).await, expected(&all));
    let metrics = embedded.metrics();
    assert_eq!(
        metrics.late.get(),
        late.len() as u64,
        "every upload was late"
    );
    assert_eq!(metrics.corrected_heartbeats.get(), late.len() as u64);
    assert_eq!(metrics.corrections.get(), 2, "one correction per key");
    assert_eq!(metrics.corrections_pending.get(), 0);
    let marks: i64 = sqlx::query("SELECT COUNT(*) FROM late_corrections")
        .fetch_one(&pool)
        .await
        .unwrap()
        .get(0);
    assert_eq!(marks, 0, "no correction left to do");
}

#[tokio::test]
async fn offline_viewing_from_a_log_on_postgres_equals_the_batch_definition() {
    let (_db, pool) = hb_testkit::db::TestDb::create().await.unwrap();
    let store = Arc::new(PgStore::new(pool.clone(), TTL_MS));
    let (live, late) = offline_backlog();

    let mut cluster = stage(log(), store.clone(), RawPlacement::InStore(store.clone()));
    run(&mut cluster, &live, &late).await;

    let all: Vec<Heartbeat> = live.iter().chain(&late).cloned().collect();
    assert_eq!(stored_sessions_postgres(&pool).await, expected(&all));
}

#[tokio::test]
async fn offline_viewing_is_corrected_from_a_separate_raw_mirror() {
    // The cluster tier with ScyllaDB: the raw rows live outside the sessions
    // store (here a second store stands in for the mirror).
    let (_db, pool) = hb_testkit::db::TestDb::create().await.unwrap();
    let store = Arc::new(PgStore::new(pool.clone(), TTL_MS));
    let mirror_dir = tempfile::tempdir().unwrap();
    let mirror_pool = hb_common::store::open_sqlite(mirror_dir.path(), 2)
        .await
        .unwrap();
    let mirror = Arc::new(SqliteStore::new(mirror_pool, TTL_MS));
    let (live, late) = offline_backlog();

    let mut cluster = stage(log(), store, RawPlacement::Mirror(mirror));
    run(&mut cluster, &live, &late).await;

    let all: Vec<Heartbeat> = live.iter().chain(&late).cloned().collect();
    assert_eq!(stored_sessions_postgres(&pool).await, expected(&all));
}

/// `ann` watched a minute, stopped for eleven (more than the gap), watched
/// another minute: two sessions. The heartbeat from the middle of the break
/// arrives once both are final; it is within the gap of each.
fn bridged() -> (Vec<Heartbeat>, Heartbeat) {
    let mut live = viewing("ann", "v1", START_MS, 1, 0);
    live.extend(viewing("ann", "v1", START_MS + 12 * MINUTE_MS, 1, 60_000));
    let bridge = heartbeat("ann-bridge", "ann", START_MS + 6 * MINUTE_MS, 30_000);
    (live, bridge)
}

#[tokio::test]
async fn a_late_heartbeat_that_bridges_two_stored_sessions_merges_them() {
    let dir = tempfile::tempdir().unwrap();
    let pool = hb_common::store::open_sqlite(dir.path(), 2).await.unwrap();
    let store = Arc::new(SqliteStore::new(pool.clone(), TTL_MS));
    let (live, bridge) = bridged();

    let mut embedded = stage(
        SourceKind::Handoff,
        store.clone(),
        RawPlacement::InStore(store.clone()),
    );
    let now = run(&mut embedded, &live, &[]).await;
    assert_eq!(stored_sessions_sqlite(&pool).await.len(), 2);

    embedded.ingest(PARTITION, None, &bridge, now);
    settle_and_flush(&mut embedded, now).await.unwrap();

    let mut all = live.clone();
    all.push(bridge);
    let stored = stored_sessions_sqlite(&pool).await;
    assert_eq!(
        stored.len(),
        1,
        "one session from the first heartbeat to the last"
    );
    assert_eq!(stored, expected(&all));
    let links: i64 = sqlx::query("SELECT COUNT(*) FROM session_ads")
        .fetch_one(&pool)
        .await
        .unwrap()
        .get(0);
    assert_eq!(links, 0);
}

#[tokio::test]
async fn a_crash_during_a_correction_leaves_the_old_sessions_and_the_restart_redoes_it() {
    let dir = tempfile::tempdir().unwrap();
    let pool = hb_common::store::open_sqlite(dir.path(), 2).await.unwrap();
    let store = Arc::new(FaultyStore::commits(
        SqliteStore::new(pool.clone(), TTL_MS),
        |flush| !flush.corrected.is_empty(),
    ));
    let (live, bridge) = bridged();

    let mut first = stage(log(), store.clone(), RawPlacement::InStore(store.clone()));
    let now = run(&mut first, &live, &[]).await;
    let before = stored_sessions_sqlite(&pool).await;
    assert_eq!(before.len(), 2);

    // The bridge's raw row and mark commit; its correction fails, and the
    // process dies with it.
    store.set_failing(true);
    let offset = live.len() as i64;
    first.ingest(PARTITION, Some(offset), &bridge, now);
    assert!(settle_and_flush(&mut first, now).await.is_err());
    drop(first);
    assert_eq!(
        stored_sessions_sqlite(&pool).await,
        before,
        "a failed correction changes no session"
    );

    store.set_failing(false);
    let mut second = stage(log(), store.clone(), RawPlacement::InStore(store.clone()));
    assert_eq!(second.assign(PARTITION).await.unwrap(), Some(offset + 1));
    second.flush().await.unwrap();

    let mut all = live.clone();
    all.push(bridge);
    assert_eq!(stored_sessions_sqlite(&pool).await, expected(&all));
    assert_eq!(second.metrics().corrections.get(), 1);
    // Done once: a further restart finds nothing to correct.
    let mut third = stage(log(), store.clone(), RawPlacement::InStore(store));
    third.assign(PARTITION).await.unwrap();
    third.flush().await.unwrap();
    assert_eq!(third.metrics().corrections.get(), 0);
    assert_eq!(stored_sessions_sqlite(&pool).await, expected(&all));
}

#[tokio::test]
async fn a_late_heartbeat_waits_while_its_key_still_has_an_open_session() {
    let dir = tempfile::tempdir().unwrap();
    let pool = hb_common::store::open_sqlite(dir.path(), 2).await.unwrap();
    let store = Arc::new(SqliteStore::new(pool.clone(), TTL_MS));
    // Bob watches for half an hour; his first minute arrives after the rest.
    let viewing = viewing("bob", "v1", START_MS, 30, 0);
    let (early, rest) = viewing.split_at(12);

    let mut embedded = stage(
        SourceKind::Handoff,
        store.clone(),
        RawPlacement::InStore(store.clone()),
    );
    embedded.assign(PARTITION).await.unwrap();
    let now = hb_common::time::now_ms();
    embedded.ingest_batch(PARTITION, rest.iter().map(|hb| (None, hb.clone())), now);
    embedded.ingest_batch(PARTITION, early.iter().map(|hb| (None, hb.clone())), now);
    embedded.flush().await.unwrap();
    assert_eq!(embedded.metrics().late.get(), 12);
    assert_eq!(
        embedded.metrics().corrections.get(),
        0,
        "his session is still open: the correction waits for it to close"
    );
    assert_eq!(embedded.metrics().corrections_pending.get(), 1);

    quiesce(&mut embedded, now).await;
    assert_eq!(stored_sessions_sqlite(&pool).await, expected(&viewing));
    assert_eq!(embedded.metrics().corrections.get(), 1);
}
