//! Shared test helpers: fresh stores (a SQLite tempdir, or a PostgreSQL
//! database of `hb_testkit::db`, dropped on `Drop`), a seeded data set with
//! its straightforward oracle computations of SPEC 7, and `spawn_app` which
//! runs the real service on port 0.
#![allow(dead_code)]

use hb_common::auth::{Role, TokenKey};
use hb_common::raw::{hours_of, BUMP_RAW_HOUR_SQL, HOUR_MS};
use hb_common::settings::{AuthSettings, Secret};
use hb_common::store::{Store, StoreSettings};
use hb_testkit::db::TestDb;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use svc_query::catalog;
use svc_query::catalog::{Ad, Video};
use svc_query::config::QueryConfig;
use svc_query::report::{
    ConcurrencyRow, ImpressionRow, ProgressRow, RoyaltyRow, SessionRow, TrafficRow,
};
use svc_query::QueryListeners;
use tokio_util::sync::CancellationToken;

/// 2024-05-01T00:00:00Z.
pub const T0: i64 = 1_714_521_600_000;
pub const MINUTE: i64 = 60_000;
pub const SECRET: &str = "test-secret-not-for-production";

/// A store for one test, with whatever keeps it alive.
pub struct TestStore {
    pub store: Store,
    pub config: QueryConfig,
    _dir: tempfile::TempDir,
    _pg: Option<TestDb>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl TestStore {
    pub async fn new(backend: Backend) -> TestStore {
        let dir = tempfile::tempdir().expect("tempdir");
        let pg = match backend {
            Backend::Sqlite => None,
            Backend::Postgres => Some(TestDb::create_empty().await.expect("a test database")),
        };
        let config = QueryConfig {
            http_addr: "127.0.0.1:0".parse().unwrap(),
            grpc_addr: "127.0.0.1:0".parse().unwrap(),
            metrics_addr: "127.0.0.1:0".parse().unwrap(),
            store: StoreSettings {
                data_dir: dir.path().to_path_buf(),
                yugabyte_url: pg.as_ref().map(|db| db.url.clone()),
            },
            auth: AuthSettings {
                secret: Some(Secret::new(SECRET)),
            },
            store_connections: 4,
            ..QueryConfig::default()
        };
        let store = svc_query::store::open(&config).await.expect("open store");
        TestStore {
            store,
            config,
            _dir: dir,
            _pg: pg,
        }
    }
}

/// A session as the stream service stores it.
#[derive(Clone, Debug)]
pub struct SeedSession {
    pub user_id: String,
    pub video_id: String,
    pub start_ms: i64,
    pub end_ms: i64,
    pub heartbeats: i64,
    pub watch_ms: i64,
    pub coverage_ms: i64,
    pub last_position_ms: i64,
    pub devices: i64,
    pub ads: Vec<String>,
    pub is_final: bool,
}

/// A raw heartbeat row (the fields the traffic report reads).
#[derive(Clone, Debug)]
pub struct SeedRaw {
    pub event_id: String,
    pub user_id: String,
    pub video_id: String,
    pub device_id: String,
    pub event_time_ms: i64,
}

async fn write_raw(store: &Store, raw: &[SeedRaw], bump: bool) {
    macro_rules! run {
        ($pool:expr) => {{
            let mut tx = $pool.begin().await.unwrap();
            for r in raw {
                sqlx::query(
                    "INSERT INTO raw_heartbeats (event_id, user_id, video_id, device_id, event_time_ms, \
                     position_ms, state, expires_ms) VALUES ($1, $2, $3, $4, $5, 0, 1, $6)",
                )
                .bind(&r.event_id)
                .bind(&r.user_id)
                .bind(&r.video_id)
                .bind(&r.device_id)
                .bind(r.event_time_ms)
                .bind(r.event_time_ms + 30 * 24 * HOUR_MS)
                .execute(&mut *tx)
                .await
                .unwrap();
            }
            if bump {
                for hour in hours_of(raw.iter().map(|r| r.event_time_ms)) {
                    sqlx::query(BUMP_RAW_HOUR_SQL)
                        .bind(hour)
                        .execute(&mut *tx)
                        .await
                        .unwrap();
                }
            }
            tx.commit().await.unwrap();
        }};
    }
    match store {
        Store::Sqlite(pool) => run!(pool),
        Store::Postgres(pool) => run!(pool),
    }
}

/// A data set and the oracle over it.
#[derive(Clone, Debug, Default)]
pub struct Seed {
    pub videos: Vec<Video>,
    pub ads: Vec<Ad>,
    pub sessions: Vec<SeedSession>,
    pub raw: Vec<SeedRaw>,
}

impl Seed {
    /// A deterministic, messy data set around [T0, T0 + 24h): sessions of
    /// videos and ads missing from the catalog, sessions exactly on the
    /// period edges, users with several sessions per video, a rate that is
    /// not a multiple of anything.
    pub fn generate(seed: u64) -> Seed {
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut data = Seed::default();
        for v in 0..12 {
            data.videos.push(Video {
                video_id: format!("v{v}"),
                title: format!("Title {v}"),
                license_holder_id: format!("L{}", v % 4),
                rate_micros_per_hour: 1_000_000 + 333_333 * v,
            });
        }
        for a in 0..6 {
            data.ads.push(Ad {
                ad_id: format!("a{a}"),
                campaign_id: format!("c{}", a % 3),
                advertiser_id: format!("A{}", a % 2),
            });
        }
        // v12 and a6 are watched/shown but not in the catalog.
        let mut keys = BTreeSet::new();
        for _ in 0..400 {
            let user = format!("u{}", rng.random_range(0..25));
            let video = format!("v{}", rng.random_range(0..13));
            let start = T0 - 2 * HOUR_MS + rng.random_range(0..28 * HOUR_MS);
            if !keys.insert((user.clone(), video.clone(), start)) {
                continue;
            }
            let length = rng.random_range(0..90 * MINUTE);
            let mut ads: Vec<String> = (0..rng.random_range(0..3))
                .map(|_| format!("a{}", rng.random_range(0..7)))
                .collect();
            ads.sort();
            ads.dedup();
            data.sessions.push(SeedSession {
                user_id: user,
                video_id: video,
                start_ms: start,
                end_ms: start + length,
                heartbeats: length / 5_000 + 1,
                watch_ms: rng.random_range(0..=length),
                coverage_ms: rng.random_range(0..=length),
                last_position_ms: rng.random_range(0..3_600_000),
                devices: rng.random_range(1..3),
                ads,
                is_final: rng.random_bool(0.8),
            });
        }
        // The period edges, exactly.
        for (i, start) in [T0, T0 + 24 * HOUR_MS - 1, T0 + 24 * HOUR_MS, T0 - 1]
            .into_iter()
            .enumerate()
        {
            data.sessions.push(SeedSession {
                user_id: format!("edge{i}"),
                video_id: "v1".into(),
                start_ms: start,
                end_ms: start + 10 * MINUTE,
                heartbeats: 121,
                watch_ms: 7 * MINUTE + 1,
                coverage_ms: 5 * MINUTE,
                last_position_ms: 420_000,
                devices: 1,
                ads: vec!["a1".into()],
                is_final: true,
            });
        }
        // A session whose last heartbeat is exactly the start of a period
        // (and of a bucket): it overlaps that bucket.
        data.sessions.push(SeedSession {
            user_id: "edge-end".into(),
            video_id: "v3".into(),
            start_ms: T0 - 10 * MINUTE,
            end_ms: T0,
            heartbeats: 121,
            watch_ms: 10 * MINUTE,
            coverage_ms: 10 * MINUTE,
            last_position_ms: 600_000,
            devices: 1,
            ads: Vec::new(),
            is_final: true,
        });
        for i in 0..1_500 {
            data.raw.push(SeedRaw {
                event_id: format!("e{i}"),
                // Not drawn, so the rest of the data set stays as it was.
                user_id: format!("u{}", i % 25),
                video_id: format!("v{}", rng.random_range(0..13)),
                device_id: format!("d{}", rng.random_range(0..30)),
                event_time_ms: T0 - HOUR_MS + rng.random_range(0..27 * HOUR_MS),
            });
        }
        for (i, t) in [T0, T0 + 24 * HOUR_MS - 1, T0 + 24 * HOUR_MS, T0 - 1]
            .into_iter()
            .enumerate()
        {
            data.raw.push(SeedRaw {
                event_id: format!("edge{i}"),
                user_id: "u".into(),
                video_id: "v2".into(),
                device_id: "d-edge".into(),
                event_time_ms: t,
            });
        }
        data
    }

    /// Writes everything into `store`: catalog through the service's own
    /// upsert, sessions and raw rows as the stream service would.
    pub async fn load(&self, store: &Store) {
        catalog::upsert_videos(store, &self.videos)
            .await
            .expect("videos");
        catalog::upsert_ads(store, &self.ads).await.expect("ads");
        macro_rules! insert_all {
            ($pool:expr) => {{
                let mut tx = $pool.begin().await.unwrap();
                for s in &self.sessions {
                    sqlx::query(
                        "INSERT INTO sessions (user_id, video_id, start_ms, end_ms, heartbeats, watch_ms, \
                         coverage_ms, last_position_ms, devices, ads, is_final) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                    )
                    .bind(&s.user_id)
                    .bind(&s.video_id)
                    .bind(s.start_ms)
                    .bind(s.end_ms)
                    .bind(s.heartbeats)
                    .bind(s.watch_ms)
                    .bind(s.coverage_ms)
                    .bind(s.last_position_ms)
                    .bind(s.devices)
                    .bind(serde_json::to_string(&s.ads).unwrap())
                    .bind(s.is_final)
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                    for ad in &s.ads {
                        sqlx::query(
                            "INSERT INTO session_ads (user_id, video_id, start_ms, ad_id) VALUES ($1, $2, $3, $4)",
                        )
                        .bind(&s.user_id)
                        .bind(&s.video_id)
                        .bind(s.start_ms)
                        .bind(ad)
                        .execute(&mut *tx)
                        .await
                        .unwrap();
                    }
                }
                tx.commit().await.unwrap();
            }};
        }
        match store {
            Store::Sqlite(pool) => insert_all!(pool),
            Store::Postgres(pool) => insert_all!(pool),
        }
        write_raw(store, &self.raw, true).await;
    }

    /// Writes `raw[first..]` as the stream stage does: rows and their
    /// hours' version bumps in one transaction.
    pub async fn load_raw_since(&self, store: &Store, first: usize) {
        write_raw(store, &self.raw[first..], true).await;
    }

    /// Writes `raw[first..]` without bumping their hours: what a writer
    /// that forgot the bump would leave.
    pub async fn insert_raw_rows(&self, store: &Store, first: usize) {
        write_raw(store, &self.raw[first..], false).await;
    }

    /// Rows in `table`.
    pub async fn count(store: &Store, table: &str) -> i64 {
        Seed::scalar(store, &format!("SELECT COUNT(*) FROM {table}")).await
    }

    /// The one integer `sql` answers.
    pub async fn scalar(store: &Store, sql: &str) -> i64 {
        match store {
            Store::Sqlite(pool) => sqlx::query_scalar(sql).fetch_one(pool).await.unwrap(),
            Store::Postgres(pool) => sqlx::query_scalar(sql).fetch_one(pool).await.unwrap(),
        }
    }

    fn video(&self, id: &str) -> Option<&Video> {
        self.videos.iter().find(|v| v.video_id == id)
    }

    fn ad(&self, id: &str) -> Option<&Ad> {
        self.ads.iter().find(|a| a.ad_id == id)
    }

    /// SPEC 7 royalties, computed the obvious way.
    pub fn royalties(&self, from: i64, to: i64, holder: Option<&str>) -> Vec<RoyaltyRow> {
        // (holder, video) -> (sessions, users, watch_ms, rate)
        type Group = (i64, BTreeSet<String>, i64, i64);
        let mut groups: BTreeMap<(String, String), Group> = BTreeMap::new();
        for s in self
            .sessions
            .iter()
            .filter(|s| s.start_ms >= from && s.start_ms < to)
        {
            let Some(video) = self.video(&s.video_id) else {
                continue;
            };
            if holder.is_some_and(|h| h != video.license_holder_id) {
                continue;
            }
            let entry = groups
                .entry((video.license_holder_id.clone(), s.video_id.clone()))
                .or_insert((0, BTreeSet::new(), 0, video.rate_micros_per_hour));
            entry.0 += 1;
            entry.1.insert(s.user_id.clone());
            entry.2 += s.watch_ms;
        }
        groups
            .into_iter()
            .map(
                |((holder, video), (sessions, users, watch, rate))| RoyaltyRow {
                    license_holder_id: holder,
                    video_id: video,
                    sessions,
                    viewers: users.len() as i64,
                    watch_ms: watch,
                    amount_micros: (i128::from(watch) * i128::from(rate) / 3_600_000) as i64,
                },
            )
            .collect()
    }

    /// SPEC 7 impressions.
    pub fn impressions(&self, from: i64, to: i64, advertiser: Option<&str>) -> Vec<ImpressionRow> {
        let mut groups: BTreeMap<(String, String, String), (i64, BTreeSet<String>)> =
            BTreeMap::new();
        for s in self
            .sessions
            .iter()
            .filter(|s| s.start_ms >= from && s.start_ms < to)
        {
            for ad_id in &s.ads {
                let Some(ad) = self.ad(ad_id) else { continue };
                if advertiser.is_some_and(|a| a != ad.advertiser_id) {
                    continue;
                }
                let entry = groups
                    .entry((
                        ad.advertiser_id.clone(),
                        ad.campaign_id.clone(),
                        ad_id.clone(),
                    ))
                    .or_default();
                entry.0 += 1;
                entry.1.insert(s.user_id.clone());
            }
        }
        groups
            .into_iter()
            .map(
                |((advertiser, campaign, ad), (count, users))| ImpressionRow {
                    advertiser_id: advertiser,
                    campaign_id: campaign,
                    ad_id: ad,
                    impressions: count,
                    viewers: users.len() as i64,
                },
            )
            .collect()
    }

    /// SPEC 7 concurrency: per bucket, distinct users with a session overlapping it.
    pub fn concurrency(&self, from: i64, to: i64, step_s: i64) -> Vec<ConcurrencyRow> {
        let step = step_s * 1_000;
        let mut rows = Vec::new();
        let mut bucket = from;
        while bucket < to {
            let users: BTreeSet<&str> = self
                .sessions
                .iter()
                .filter(|s| s.start_ms < bucket + step && s.end_ms >= bucket)
                .map(|s| s.user_id.as_str())
                .collect();
            rows.push(ConcurrencyRow {
                bucket_start_ms: bucket,
                viewers: users.len() as i64,
            });
            bucket += step;
        }
        rows
    }

    /// SPEC 7 traffic.
    pub fn traffic(&self, from: i64, to: i64, holder: Option<&str>) -> Vec<TrafficRow> {
        let mut groups: BTreeMap<(i64, String), (i64, BTreeSet<String>)> = BTreeMap::new();
        for r in self
            .raw
            .iter()
            .filter(|r| r.event_time_ms >= from && r.event_time_ms < to)
        {
            let Some(video) = self.video(&r.video_id) else {
                continue;
            };
            if holder.is_some_and(|h| h != video.license_holder_id) {
                continue;
            }
            let hour = r.event_time_ms - r.event_time_ms % HOUR_MS;
            let entry = groups
                .entry((hour, video.license_holder_id.clone()))
                .or_default();
            entry.0 += 1;
            entry.1.insert(r.device_id.clone());
        }
        groups
            .into_iter()
            .map(|((hour, holder), (count, devices))| TrafficRow {
                hour_start_ms: hour,
                license_holder_id: holder,
                heartbeats: count,
                devices: devices.len() as i64,
            })
            .collect()
    }

    /// Per video, the user's latest session by start.
    pub fn progress(&self, user: &str) -> Vec<ProgressRow> {
        let mut latest: BTreeMap<&str, &SeedSession> = BTreeMap::new();
        for s in self.sessions.iter().filter(|s| s.user_id == user) {
            let keep = latest
                .get(s.video_id.as_str())
                .is_none_or(|l| l.start_ms < s.start_ms);
            if keep {
                latest.insert(&s.video_id, s);
            }
        }
        latest
            .into_values()
            .map(|s| ProgressRow {
                video_id: s.video_id.clone(),
                last_position_ms: s.last_position_ms,
                end_ms: s.end_ms,
                start_ms: s.start_ms,
            })
            .collect()
    }

    /// The user's sessions started in [from, to), by start then video.
    pub fn user_sessions(&self, user: &str, from: i64, to: i64) -> Vec<SessionRow> {
        let mut rows: Vec<SessionRow> = self
            .sessions
            .iter()
            .filter(|s| s.user_id == user && s.start_ms >= from && s.start_ms < to)
            .map(|s| SessionRow {
                user_id: s.user_id.clone(),
                video_id: s.video_id.clone(),
                start_ms: s.start_ms,
                end_ms: s.end_ms,
                heartbeats: s.heartbeats,
                watch_ms: s.watch_ms,
                coverage_ms: s.coverage_ms,
                last_position_ms: s.last_position_ms,
                ads: s.ads.clone(),
                devices: s.devices,
                is_final: s.is_final,
            })
            .collect();
        rows.sort_by(|a, b| (a.start_ms, &a.video_id).cmp(&(b.start_ms, &b.video_id)));
        rows
    }

    /// Forgets everything of `user`: the data set an erasure leaves.
    pub fn without_user(&self, user: &str) -> Seed {
        let mut seed = self.clone();
        seed.sessions.retain(|s| s.user_id != user);
        seed.raw.retain(|r| r.user_id != user);
        seed
    }

    /// Users with the most sessions, for look-up tests.
    pub fn busiest_users(&self, n: usize) -> Vec<String> {
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for s in &self.sessions {
            *counts.entry(&s.user_id).or_default() += 1;
        }
        let mut users: Vec<(&str, usize)> = counts.into_iter().collect();
        users.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        users
            .into_iter()
            .take(n)
            .map(|(u, _)| u.to_string())
            .collect()
    }
}

/// Mints a token for `role` valid for an hour (or already expired).
pub fn token(role: &str, expired: bool) -> String {
    let role: Role = role.parse().expect("role");
    let now = chrono::Utc::now().timestamp();
    let exp = if expired { now - 1 } else { now + 3_600 };
    TokenKey::new(SECRET).mint("test", &role, exp)
}

/// svc-query running on port 0 until dropped.
pub struct TestApp {
    pub http: String,
    pub grpc: String,
    pub metrics: String,
    pub client: reqwest::Client,
    shutdown: CancellationToken,
    handle: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl TestApp {
    pub async fn spawn(config: QueryConfig) -> TestApp {
        hb_common::telemetry::init_for_tests();
        let listeners = QueryListeners::bind(&config).await.expect("bind");
        let http = format!("http://{}", listeners.http.local_addr().unwrap());
        let grpc = format!("http://{}", listeners.grpc.local_addr().unwrap());
        let metrics = format!("http://{}", listeners.metrics.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(svc_query::run(config, listeners, shutdown.clone()));
        let app = TestApp {
            http,
            grpc,
            metrics,
            client: reqwest::Client::new(),
            shutdown,
            handle: Some(handle),
        };
        app.wait_ready().await;
        app
    }

    async fn wait_ready(&self) {
        for _ in 0..200 {
            if let Ok(response) = self
                .client
                .get(format!("{}/readyz", self.metrics))
                .send()
                .await
            {
                if response.status().is_success() {
                    return;
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        panic!("svc-query did not become ready");
    }

    /// GET `path` with an optional bearer token; (status, JSON body).
    pub async fn get(&self, path: &str, token: Option<&str>) -> (u16, serde_json::Value) {
        let mut request = self.client.get(format!("{}{path}", self.http));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        (
            status,
            response.json().await.unwrap_or(serde_json::Value::Null),
        )
    }

    /// PUT `path` with a JSON body.
    pub async fn put(
        &self,
        path: &str,
        token: Option<&str>,
        body: &serde_json::Value,
    ) -> (u16, serde_json::Value) {
        let mut request = self.client.put(format!("{}{path}", self.http)).json(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        (
            status,
            response.json().await.unwrap_or(serde_json::Value::Null),
        )
    }

    /// DELETE `path`.
    pub async fn delete(&self, path: &str, token: Option<&str>) -> (u16, serde_json::Value) {
        let mut request = self.client.delete(format!("{}{path}", self.http));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        (
            status,
            response.json().await.unwrap_or(serde_json::Value::Null),
        )
    }

    /// Stops the service and waits for a clean exit.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.handle.take().expect("running").await.expect("join")
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// RFC 3339 of epoch ms, for query strings.
pub fn rfc(ms: i64) -> String {
    hb_common::time::ms_to_rfc3339(ms)
}

/// Deserializes `{"rows": [...]}` into rows of `T`.
pub fn rows<T: for<'de> serde::Deserialize<'de>>(body: &serde_json::Value) -> Vec<T> {
    serde_json::from_value(body["rows"].clone()).expect("rows")
}
