//! Every report and look-up over a seeded store, SQLite and PostgreSQL,
//! equals the straightforward computation of SPEC 7 in `common::Seed`,
//! including the period edges and empty results.

mod common;

use common::{Backend, Seed, SeedSession, TestStore, MINUTE, T0};
use hb_common::raw::{BUMP_RAW_HOURS_UNTIL_SQL, BUMP_RAW_HOUR_SQL, HOUR_MS};
use hb_common::store::Store;
use std::time::Duration;
use svc_query::catalog::upsert_videos;
use svc_query::engine::direct::DirectEngine;
use svc_query::engine::sql::SHORT_ROYALTIES_MS;
use svc_query::engine::ReportEngine;
use svc_query::report::{ConcurrencySpec, Window};
use svc_query::store::{progress, sessions};

const DAY: i64 = 24 * HOUR_MS;

/// Periods worth checking: the seeded day, an hour, a period with nothing
/// in it, and periods whose edges sit exactly on seeded rows.
fn windows() -> Vec<(i64, i64)> {
    vec![
        (T0, T0 + DAY),
        (T0 - 3 * HOUR_MS, T0 + 2 * DAY),
        (T0 + 5 * HOUR_MS, T0 + 6 * HOUR_MS),
        (T0 + DAY - 1, T0 + DAY),
        (T0 - 1, T0),
        (T0 + 10 * DAY, T0 + 11 * DAY),
    ]
}

async fn check_reports(backend: Backend) {
    let test = TestStore::new(backend).await;
    let seed = Seed::generate(7);
    seed.load(&test.store).await;
    let engine = DirectEngine::new(test.store.clone(), Duration::from_secs(30));

    let mut non_empty = 0;
    for (from, to) in windows() {
        let window = Window::new(from, to).unwrap();
        let royalties = engine.royalties(window, None).await.unwrap();
        assert_eq!(
            royalties,
            seed.royalties(from, to, None),
            "royalties {from}..{to}"
        );
        non_empty += usize::from(!royalties.is_empty());
        for holder in ["L0", "L1", "L3", "nobody"] {
            assert_eq!(
                engine.royalties(window, Some(holder)).await.unwrap(),
                seed.royalties(from, to, Some(holder)),
                "royalties {holder} {from}..{to}"
            );
        }
        assert_eq!(
            engine.impressions(window, None).await.unwrap(),
            seed.impressions(from, to, None),
            "impressions {from}..{to}"
        );
        for advertiser in ["A0", "A1", "nobody"] {
            assert_eq!(
                engine.impressions(window, Some(advertiser)).await.unwrap(),
                seed.impressions(from, to, Some(advertiser)),
                "impressions {advertiser} {from}..{to}"
            );
        }
        assert_eq!(
            engine.traffic(window, None).await.unwrap(),
            seed.traffic(from, to, None),
            "traffic {from}..{to}"
        );
        assert_eq!(
            engine.traffic(window, Some("L2")).await.unwrap(),
            seed.traffic(from, to, Some("L2")),
            "traffic L2 {from}..{to}"
        );
    }
    assert!(non_empty >= 3, "the seed must exercise non-empty results");

    // Many requests at once, identical ones among them (which may share a
    // run while they wait for a slot): each still gets its own exact answer.
    let day = Window::new(T0, T0 + DAY).unwrap();
    let spec = ConcurrencySpec::new(day, 3_600).unwrap();
    let at_once: Vec<_> = (0..12)
        .map(|i| {
            let engine = engine.clone();
            tokio::spawn(async move {
                let holder = ["L1", "L3"].get(i % 3).copied();
                let royalties = engine.royalties(day, holder).await.unwrap();
                let concurrency = engine.concurrency(spec).await.unwrap();
                let traffic = engine.traffic(day, holder).await.unwrap();
                (holder, royalties, concurrency, traffic)
            })
        })
        .collect();
    for request in at_once {
        let (holder, royalties, concurrency, traffic) = request.await.unwrap();
        assert_eq!(
            royalties,
            seed.royalties(T0, T0 + DAY, holder),
            "royalties {holder:?} at once"
        );
        assert_eq!(
            concurrency,
            seed.concurrency(T0, T0 + DAY, 3_600),
            "concurrency at once"
        );
        assert_eq!(
            traffic,
            seed.traffic(T0, T0 + DAY, holder),
            "traffic {holder:?} at once"
        );
    }

    // The edge sessions: start == from counts, start == to does not.
    let day = Window::new(T0, T0 + DAY).unwrap();
    let v1 = engine.royalties(day, Some("L1")).await.unwrap();
    let edge_users = seed
        .sessions
        .iter()
        .filter(|s| s.user_id.starts_with("edge") && s.start_ms >= T0 && s.start_ms < T0 + DAY)
        .count();
    assert_eq!(edge_users, 2);
    assert!(v1.iter().any(|r| r.video_id == "v1"));
    // Empty periods answer no rows, not an error.
    let empty = Window::new(T0 + 10 * DAY, T0 + 11 * DAY).unwrap();
    assert!(engine.royalties(empty, None).await.unwrap().is_empty());
    assert!(engine.traffic(empty, None).await.unwrap().is_empty());

    for (from, to, step) in [
        (T0, T0 + DAY, 3_600),
        (T0 + HOUR_MS, T0 + 3 * HOUR_MS, 60),
        (T0 - 1, T0 + 25 * MINUTE + 7, 600),
        (T0 + 5 * DAY, T0 + 5 * DAY + HOUR_MS, 300),
    ] {
        let spec = ConcurrencySpec::new(Window::new(from, to).unwrap(), step).unwrap();
        let rows = engine.concurrency(spec).await.unwrap();
        assert_eq!(
            rows,
            seed.concurrency(from, to, step),
            "concurrency {from}..{to}/{step}"
        );
    }
    // Zero buckets are rows too.
    let quiet = ConcurrencySpec::new(
        Window::new(T0 + 5 * DAY, T0 + 5 * DAY + HOUR_MS).unwrap(),
        300,
    )
    .unwrap();
    let rows = engine.concurrency(quiet).await.unwrap();
    assert_eq!(rows.len(), 12);
    assert!(rows.iter().all(|r| r.viewers == 0));

    for user in seed
        .busiest_users(5)
        .iter()
        .map(String::as_str)
        .chain(["edge0", "nobody"])
    {
        assert_eq!(
            progress(&test.store, user).await.unwrap(),
            seed.progress(user),
            "progress {user}"
        );
        assert_eq!(
            sessions(&test.store, user, i64::MIN, i64::MAX)
                .await
                .unwrap(),
            seed.user_sessions(user, i64::MIN, i64::MAX),
            "sessions {user}"
        );
        assert_eq!(
            sessions(&test.store, user, T0, T0 + 6 * HOUR_MS)
                .await
                .unwrap(),
            seed.user_sessions(user, T0, T0 + 6 * HOUR_MS),
            "sessions {user} in a period"
        );
    }
    assert!(progress(&test.store, "nobody").await.unwrap().is_empty());
}

#[tokio::test]
async fn reports_over_sqlite_match_the_definition() {
    check_reports(Backend::Sqlite).await;
}

#[tokio::test]
async fn reports_over_postgres_match_the_definition() {
    check_reports(Backend::Postgres).await;
}

/// A short period's royalties are counted per title and then joined with
/// the catalog, read title by title when few titles were watched and whole
/// when many were: both ways, scoped and not, against the definition.
async fn check_royalties_over_many_titles(backend: Backend) {
    let test = TestStore::new(backend).await;
    let mut seed = Seed::generate(3);
    for i in 0..700_i64 {
        // Every seventh title is missing from the catalog.
        if i % 7 != 0 {
            seed.videos.push(svc_query::catalog::Video {
                video_id: format!("w{i:03}"),
                title: format!("Wide {i}"),
                license_holder_id: format!("L{}", i % 4),
                rate_micros_per_hour: 50_000 + 7 * i,
            });
        }
        for n in 0..=(i % 3) {
            seed.sessions.push(SeedSession {
                user_id: format!("wide{}", (i + n) % 50),
                video_id: format!("w{i:03}"),
                start_ms: T0 + (i * 97 + n * 13) % DAY,
                end_ms: T0 + (i * 97 + n * 13) % DAY + MINUTE,
                heartbeats: 3,
                watch_ms: 1_000 * (i + n),
                coverage_ms: 0,
                last_position_ms: 0,
                devices: 1,
                ads: Vec::new(),
                is_final: n != 1,
            });
        }
    }
    seed.load(&test.store).await;
    let engine = DirectEngine::new(test.store.clone(), Duration::from_secs(30));
    for (from, to) in [(T0, T0 + DAY), (T0 + HOUR_MS, T0 + 2 * HOUR_MS)] {
        let window = Window::new(from, to).unwrap();
        for holder in [None, Some("L1"), Some("nobody")] {
            assert_eq!(
                engine.royalties(window, holder).await.unwrap(),
                seed.royalties(from, to, holder),
                "royalties {holder:?} {from}..{to}"
            );
        }
    }
    let all_day = engine
        .royalties(Window::new(T0, T0 + DAY).unwrap(), None)
        .await
        .unwrap();
    assert!(
        all_day
            .iter()
            .filter(|r| r.video_id.starts_with('w'))
            .count()
            > 500
    );
}

#[tokio::test]
async fn royalties_over_many_titles_match_the_definition_sqlite() {
    check_royalties_over_many_titles(Backend::Sqlite).await;
}

#[tokio::test]
async fn royalties_over_many_titles_match_the_definition_postgres() {
    check_royalties_over_many_titles(Backend::Postgres).await;
}

/// The store picks how it reads royalties by the period's length (the
/// start-order range counted in Rust up to `SHORT_ROYALTIES_MS`, SQL in
/// title order beyond) and bounds the
/// concurrency scan by the longest final session: every choice, and both
/// sides of every bound, against the definition.
async fn check_statement_choices(backend: Backend) {
    let test = TestStore::new(backend).await;
    let mut seed = Seed::generate(5);
    // The longest final session, and an open one that started even earlier
    // (open sessions are not bounded by the longest final).
    let long = |user: &str, start_ms: i64, end_ms: i64, is_final: bool| SeedSession {
        user_id: user.into(),
        video_id: "v2".into(),
        start_ms,
        end_ms,
        heartbeats: 2,
        watch_ms: end_ms - start_ms,
        coverage_ms: 0,
        last_position_ms: 0,
        devices: 1,
        ads: Vec::new(),
        is_final,
    };
    let (long_start, long_end) = (T0 - 9 * DAY, T0 - 9 * DAY + 30 * HOUR_MS);
    seed.sessions
        .push(long("long-final", long_start, long_end, true));
    seed.sessions
        .push(long("long-open", T0 - 20 * DAY, T0 + 3 * HOUR_MS, false));
    seed.load(&test.store).await;
    let engine = DirectEngine::new(test.store.clone(), Duration::from_secs(30));

    let short = SHORT_ROYALTIES_MS;
    for (from, to) in [
        (T0 + DAY - short, T0 + DAY),
        (T0 + DAY - short - 1, T0 + DAY),
        (long_start, long_start + short),
        (long_start, long_start + short + 1),
        (long_start + 1, T0 + 2 * DAY),
        (T0 - 30 * DAY, T0 + 30 * DAY),
    ] {
        let window = Window::new(from, to).unwrap();
        for holder in [None, Some("L2"), Some("L3")] {
            assert_eq!(
                engine.royalties(window, holder).await.unwrap(),
                seed.royalties(from, to, holder),
                "royalties {holder:?} {from}..{to}"
            );
        }
    }
    assert!(engine
        .royalties(Window::new(long_start, long_start + short).unwrap(), None)
        .await
        .unwrap()
        .iter()
        .any(|r| r.video_id == "v2"));

    for (from, to, step) in [
        // The longest final ends exactly at `from`: counted in bucket 0.
        (long_end, long_end + HOUR_MS, 60),
        (long_end + 1, long_end + HOUR_MS, 60),
        (long_end - 1, long_end + 1, 1),
        (long_start - 1, long_start + 1, 1),
        (long_start + 5 * HOUR_MS, long_start + 6 * HOUR_MS, 600),
        (T0 - 2 * DAY, T0 + 2 * DAY, 3_600),
        (T0 - 10 * DAY, T0 + 2 * DAY, 3_600),
    ] {
        let spec = ConcurrencySpec::new(Window::new(from, to).unwrap(), step).unwrap();
        assert_eq!(
            engine.concurrency(spec).await.unwrap(),
            seed.concurrency(from, to, step),
            "concurrency {from}..{to}/{step}"
        );
    }
    let at_end =
        ConcurrencySpec::new(Window::new(long_end, long_end + 60_000).unwrap(), 60).unwrap();
    // long-final (ending at `from`) and long-open.
    assert_eq!(engine.concurrency(at_end).await.unwrap()[0].viewers, 2);
}

#[tokio::test]
async fn statement_choices_match_the_definition_sqlite() {
    check_statement_choices(Backend::Sqlite).await;
}

#[tokio::test]
async fn statement_choices_match_the_definition_postgres() {
    check_statement_choices(Backend::Postgres).await;
}

async fn check_catalog_upserts(backend: Backend) {
    let test = TestStore::new(backend).await;
    let seed = Seed::generate(11);
    seed.load(&test.store).await;
    let engine = DirectEngine::new(test.store.clone(), Duration::from_secs(30));
    let day = Window::new(T0, T0 + DAY).unwrap();
    // Move v1 to another holder at another rate; the reports follow.
    let mut moved = seed.clone();
    let video = moved
        .videos
        .iter_mut()
        .find(|v| v.video_id == "v1")
        .unwrap();
    video.license_holder_id = "L9".into();
    video.rate_micros_per_hour = 7;
    // The same key twice in one batch: the last copy wins.
    let mut batch = vec![video.clone(), video.clone()];
    batch[0].rate_micros_per_hour = 1;
    assert_eq!(upsert_videos(&test.store, &batch).await.unwrap(), 1);
    assert_eq!(
        engine.royalties(day, None).await.unwrap(),
        moved.royalties(T0, T0 + DAY, None)
    );
    assert_eq!(
        engine.royalties(day, Some("L9")).await.unwrap(),
        moved.royalties(T0, T0 + DAY, Some("L9"))
    );
    assert!(!engine.royalties(day, Some("L9")).await.unwrap().is_empty());
}

#[tokio::test]
async fn catalog_upserts_replace_rows_sqlite() {
    check_catalog_upserts(Backend::Sqlite).await;
}

#[tokio::test]
async fn catalog_upserts_replace_rows_postgres() {
    check_catalog_upserts(Backend::Postgres).await;
}

/// Runs one statement on either store, as a writer of the raw mirror would.
async fn execute(store: &Store, sql: &str, binds: &[i64]) {
    macro_rules! run {
        ($pool:expr) => {{
            let mut query = sqlx::query(sql);
            for value in binds {
                query = query.bind(*value);
            }
            query.execute($pool).await.unwrap();
        }};
    }
    match store {
        Store::Sqlite(pool) => run!(pool),
        Store::Postgres(pool) => run!(pool),
    }
}

/// Whole hours of traffic come from the stored per-hour results; they must
/// follow every change to the raw rows and the catalog.
async fn check_traffic_rollup_follows_changes(backend: Backend) {
    let test = TestStore::new(backend).await;
    let mut seed = Seed::generate(5);
    seed.load(&test.store).await;
    let engine = DirectEngine::new(test.store.clone(), Duration::from_secs(30));
    let (from, to) = (T0 - HOUR_MS, T0 + DAY + HOUR_MS / 2);
    let window = Window::new(from, to).unwrap();
    assert_eq!(
        engine.traffic(window, None).await.unwrap(),
        seed.traffic(from, to, None)
    );
    let stored = Seed::count(&test.store, "traffic_rollup").await;
    assert!(stored > 0, "the whole hours were summed and kept");
    // Importing the same catalog again keeps them: nobody's titles moved.
    let catalog = Seed::scalar(&test.store, "SELECT version FROM catalog_version").await;
    upsert_videos(&test.store, &seed.videos).await.unwrap();
    assert_eq!(
        Seed::scalar(&test.store, "SELECT version FROM catalog_version").await,
        catalog
    );

    // A heartbeat arriving late into a summed hour, written the way the
    // stream stage writes raw rows (row and hour bump in one transaction).
    let late_hour = T0 + 2 * HOUR_MS;
    let v1 = seed
        .videos
        .iter()
        .find(|v| v.video_id == "v1")
        .unwrap()
        .clone();
    let late = [
        ("late-1", "late-device"),
        ("late-2", &*v1.license_holder_id),
    ];
    for (event_id, device) in late {
        seed.raw.push(common::SeedRaw {
            user_id: "u".into(),
            event_id: event_id.into(),
            video_id: v1.video_id.clone(),
            device_id: device.into(),
            event_time_ms: late_hour + 17,
        });
    }
    seed.load_raw_since(&test.store, seed.raw.len() - late.len())
        .await;
    assert_eq!(
        engine.traffic(window, None).await.unwrap(),
        seed.traffic(from, to, None)
    );
    assert_eq!(
        engine
            .traffic(window, Some(&v1.license_holder_id))
            .await
            .unwrap(),
        seed.traffic(from, to, Some(&v1.license_holder_id))
    );

    // The title moves to another holder: every hour follows.
    let moved = seed.videos.iter_mut().find(|v| v.video_id == "v1").unwrap();
    moved.license_holder_id = "L9".into();
    upsert_videos(&test.store, std::slice::from_ref(moved))
        .await
        .unwrap();
    assert_eq!(
        engine.traffic(window, None).await.unwrap(),
        seed.traffic(from, to, None)
    );
    assert!(!engine.traffic(window, Some("L9")).await.unwrap().is_empty());

    // Expiry removes the oldest hours' rows and marks them changed.
    let cutoff = T0 + 3 * HOUR_MS;
    execute(
        &test.store,
        "DELETE FROM raw_heartbeats WHERE event_time_ms < $1",
        &[cutoff],
    )
    .await;
    execute(&test.store, BUMP_RAW_HOURS_UNTIL_SQL, &[cutoff - HOUR_MS]).await;
    seed.raw.retain(|r| r.event_time_ms >= cutoff);
    assert_eq!(
        engine.traffic(window, None).await.unwrap(),
        seed.traffic(from, to, None)
    );

    // The check is what keeps it exact: a row written without its hour's
    // bump is not seen in a summed hour (so every raw writer bumps).
    let summed = T0 + 5 * HOUR_MS;
    let before = engine.traffic(window, None).await.unwrap();
    seed.raw.push(common::SeedRaw {
        user_id: "u".into(),
        event_id: "unannounced".into(),
        video_id: v1.video_id.clone(),
        device_id: "d-unannounced".into(),
        event_time_ms: summed + 1,
    });
    seed.insert_raw_rows(&test.store, seed.raw.len() - 1).await;
    assert_eq!(engine.traffic(window, None).await.unwrap(), before);
    execute(&test.store, BUMP_RAW_HOUR_SQL, &[summed]).await;
    assert_eq!(
        engine.traffic(window, None).await.unwrap(),
        seed.traffic(from, to, None)
    );
    assert_ne!(seed.traffic(from, to, None), before);
}

#[tokio::test]
async fn traffic_rollup_follows_raw_and_catalog_changes_sqlite() {
    check_traffic_rollup_follows_changes(Backend::Sqlite).await;
}

#[tokio::test]
async fn traffic_rollup_follows_raw_and_catalog_changes_postgres() {
    check_traffic_rollup_follows_changes(Backend::Postgres).await;
}

/// Requests over overlapping periods at once split the stale hours between
/// them: each hour is counted and saved by one of them (two saving the same
/// hour would collide on its rows), and every answer is the definition's.
async fn check_overlapping_traffic_requests(backend: Backend) {
    let test = TestStore::new(backend).await;
    let seed = Seed::generate(11);
    seed.load(&test.store).await;
    let engine = DirectEngine::new(test.store.clone(), Duration::from_secs(30));
    let periods = [
        (T0 - HOUR_MS, T0 + DAY + HOUR_MS / 2),
        (T0, T0 + DAY),
        (T0 + 5 * HOUR_MS, T0 + 30 * HOUR_MS),
        (T0 - 2 * HOUR_MS, T0 + 3 * HOUR_MS),
        (T0 + 12 * HOUR_MS, T0 + 13 * HOUR_MS),
        (T0 - HOUR_MS, T0 + DAY + HOUR_MS / 2),
    ];
    let answers = futures::future::join_all(periods.iter().map(|&(from, to)| {
        let engine = engine.clone();
        async move { engine.traffic(Window::new(from, to).unwrap(), None).await }
    }))
    .await;
    for (&(from, to), answer) in periods.iter().zip(answers) {
        assert_eq!(
            answer.expect("no request fails"),
            seed.traffic(from, to, None),
            "traffic {from}..{to}"
        );
    }
    let counted = Seed::scalar(
        &test.store,
        "SELECT CAST(COALESCE(SUM(heartbeats), 0) AS BIGINT) FROM traffic_rollup",
    )
    .await;
    let whole = (T0 - 2 * HOUR_MS, T0 + 30 * HOUR_MS);
    let expected: i64 = seed
        .traffic(whole.0, whole.1, None)
        .iter()
        .map(|r| r.heartbeats)
        .sum();
    assert!(expected > 0);
    assert_eq!(counted, expected, "every hour stored once");
}

#[tokio::test]
async fn overlapping_traffic_requests_split_the_counting_sqlite() {
    check_overlapping_traffic_requests(Backend::Sqlite).await;
}

#[tokio::test]
async fn overlapping_traffic_requests_split_the_counting_postgres() {
    check_overlapping_traffic_requests(Backend::Postgres).await;
}

#[tokio::test]
async fn the_service_counts_recent_and_imported_traffic_hours_before_anyone_asks() {
    let test = TestStore::new(Backend::Sqlite).await;
    let mut seed = Seed::generate(3);
    let now = hb_common::time::now_ms();
    let last_hour = hb_common::raw::hour_ms(now) - HOUR_MS;
    // Half the raw rows in the hour that just ended, half in an hour of an
    // imported history a year and more back.
    let old_hour = T0 - 400 * DAY;
    let half = seed.raw.len() / 2;
    for (i, r) in seed.raw.iter_mut().enumerate() {
        let hour = if i < half { last_hour } else { old_hour };
        r.event_time_ms = hour + i as i64;
    }
    seed.load(&test.store).await;
    assert_eq!(Seed::count(&test.store, "traffic_hours").await, 0);
    let _app = common::TestApp::spawn(test.config.clone()).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while Seed::count(&test.store, "traffic_hours").await < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the hour was never counted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let counted = Seed::scalar(
        &test.store,
        "SELECT COALESCE(SUM(heartbeats), 0) FROM traffic_rollup",
    )
    .await;
    let expected: i64 = [old_hour, last_hour]
        .iter()
        .flat_map(|&hour| seed.traffic(hour, hour + HOUR_MS, None))
        .map(|r| r.heartbeats)
        .sum();
    assert!(expected > 0);
    assert_eq!(counted, expected);
}

#[tokio::test]
async fn csv_import_writes_the_configured_store() {
    let test = TestStore::new(Backend::Sqlite).await;
    let dir = tempfile::tempdir().unwrap();
    let videos = dir.path().join("videos.csv");
    let ads = dir.path().join("ads.csv");
    std::fs::write(
        &videos,
        "video_id,title,license_holder_id,rate_micros_per_hour\nv1,One,L1,3600000\nv2,\"Two, too\",L2,1\n",
    )
    .unwrap();
    std::fs::write(&ads, "ad_id,campaign_id,advertiser_id\na1,c1,A1\n").unwrap();
    let counts = svc_query::catalog::import_csv(&test.config, Some(&videos), Some(&ads))
        .await
        .unwrap();
    assert_eq!(counts, (2, 1));
    let seed = Seed {
        sessions: vec![common::SeedSession {
            user_id: "u".into(),
            video_id: "v1".into(),
            start_ms: T0,
            end_ms: T0 + MINUTE,
            heartbeats: 13,
            watch_ms: 60_000,
            coverage_ms: 60_000,
            last_position_ms: 60_000,
            devices: 1,
            ads: vec!["a1".into()],
            is_final: true,
        }],
        ..Seed::default()
    };
    seed.load(&test.store).await;
    let engine = DirectEngine::new(test.store.clone(), Duration::from_secs(30));
    let window = Window::new(T0, T0 + 1).unwrap();
    let royalties = engine.royalties(window, None).await.unwrap();
    assert_eq!(royalties.len(), 1);
    assert_eq!(royalties[0].amount_micros, 60_000, "60 s at 3.6 units/h");
    assert_eq!(
        engine.impressions(window, None).await.unwrap()[0].advertiser_id,
        "A1"
    );

    // A bad row anywhere writes nothing.
    std::fs::write(&ads, "ad_id,campaign_id,advertiser_id\na2,c1,A1\na3,,A1\n").unwrap();
    let error = svc_query::catalog::import_csv(&test.config, None, Some(&ads))
        .await
        .unwrap_err();
    assert!(format!("{error:#}").contains(":3:"), "{error:#}");
    let Store::Sqlite(pool) = &test.store else {
        unreachable!()
    };
    let ads: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM ads")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(ads, 1, "a2 was not written");
}
