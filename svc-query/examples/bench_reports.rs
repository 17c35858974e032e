//! Report latency benchmark: seeds a store with N sessions (SQLite file or a
//! fresh PostgreSQL database), serves it with the real svc-query on port 0,
//! and measures p50/p99 of every report and of the progress look-up over HTTP
//! at 1 and 16 concurrent clients. Optionally exports the same rows as CSV
//! (for `bench/duckdb_reports.py`) and the answers as JSON, so the DuckDB run
//! can check it computed the same numbers.
//!
//! ```sh
//! cargo run --release -p svc-query --example bench_reports -- --store sqlite --export
//! cargo run --release -p svc-query --example bench_reports -- --store postgres
//! python3 bench/duckdb_reports.py --dir /tmp/hbq-bench
//! ```

use clap::Parser;
use hb_common::settings::{AuthSettings, Secret};
use hb_common::store::{Store, StoreSettings};
use hdrhistogram::Histogram;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use sqlx::postgres::PgPoolCopyExt;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use svc_query::catalog::{Ad, Video};
use svc_query::config::QueryConfig;
use svc_query::QueryListeners;
use tokio_util::sync::CancellationToken;

/// 2024-04-01T00:00:00Z.
const B0: i64 = 1_711_929_600_000;
const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;
const SPAN: i64 = 30 * DAY;
const USERS: u32 = 200_000;
const VIDEOS: usize = 20_000;
const HOLDERS: usize = 200;
const ADS: usize = 2_000;
const SECRET: &str = "bench-secret";

#[derive(Parser)]
struct Args {
    /// `sqlite` (file in --dir) or `postgres` (database --pg-db at --pg-url).
    #[arg(long, default_value = "sqlite")]
    store: String,
    #[arg(long, default_value_t = 1_000_000)]
    sessions: usize,
    #[arg(long, default_value_t = 3_000_000)]
    raw: usize,
    #[arg(long, default_value = "/tmp/hbq-bench")]
    dir: PathBuf,
    /// PostgreSQL server (trust auth); the bench creates database hbq_bench on it.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    pg_url: String,
    /// Database the bench creates (and drops first) on that server.
    #[arg(long, default_value = "hbq_bench")]
    pg_db: String,
    /// Keep an already seeded store instead of seeding again.
    #[arg(long)]
    reuse: bool,
    /// Write the rows as CSV to <dir>/csv and the answers to <dir>/answers.
    #[arg(long)]
    export: bool,
    /// Requests per report with one client.
    #[arg(long, default_value_t = 10)]
    iterations: usize,
    /// Requests per client per report with 16 clients.
    #[arg(long, default_value_t = 3)]
    iterations_16: usize,
    /// Progress look-ups per client.
    #[arg(long, default_value_t = 1_000)]
    lookups: usize,
    /// Also run the 30-day reports with 16 clients (minutes on 2 cores).
    #[arg(long)]
    month_16: bool,
    /// Connections svc-query keeps to the store (its default when unset).
    #[arg(long)]
    store_connections: Option<u32>,
    /// Measure only the reports whose name contains this (e.g. `royalties_day`).
    #[arg(long)]
    only: Option<String>,
    /// Ask this report (e.g. `traffic_30d`) first, right after the service
    /// starts, before any warm-up: on a store whose traffic was never
    /// counted, it races the service's start-up count from the beginning.
    #[arg(long)]
    cold_first: Option<String>,
}

struct Session {
    user_id: String,
    video_id: String,
    start_ms: i64,
    end_ms: i64,
    heartbeats: i64,
    watch_ms: i64,
    coverage_ms: i64,
    last_position_ms: i64,
    devices: i64,
    ads: Vec<String>,
    /// Open (still playing) when the month ends: the sessions of its last hour.
    is_final: bool,
}

struct Raw {
    event_id: String,
    user_id: String,
    video_id: String,
    device_id: String,
    event_time_ms: i64,
}

struct Data {
    videos: Vec<Video>,
    ads: Vec<Ad>,
    sessions: Vec<Session>,
    raw: Vec<Raw>,
}

/// Popular titles watched more: a cubic skew over the catalog, 1% of views
/// on titles missing from it.
fn pick_video(rng: &mut SmallRng) -> String {
    if rng.random_bool(0.01) {
        return format!("vx{:03}", rng.random_range(0..100));
    }
    let skew: f64 = rng.random::<f64>().powi(3);
    format!("v{:05}", (skew * VIDEOS as f64) as usize)
}

fn generate(args: &Args) -> Data {
    let mut rng = SmallRng::seed_from_u64(42);
    let videos = (0..VIDEOS)
        .map(|i| Video {
            video_id: format!("v{i:05}"),
            title: format!("Title {i}"),
            license_holder_id: format!("lh{:03}", i % HOLDERS),
            rate_micros_per_hour: 100_000 + (i as i64 % 50) * 20_000,
        })
        .collect();
    let ads = (0..ADS)
        .map(|i| Ad {
            ad_id: format!("ad{i:04}"),
            campaign_id: format!("c{:03}", i % 400),
            advertiser_id: format!("adv{:02}", i % 50),
        })
        .collect();
    let mut sessions = Vec::with_capacity(args.sessions);
    let mut keys = std::collections::HashSet::with_capacity(args.sessions);
    while sessions.len() < args.sessions {
        let user_id = format!("u{:06}", rng.random_range(0..USERS));
        let video_id = pick_video(&mut rng);
        let start_ms = B0 + rng.random_range(0..SPAN);
        if !keys.insert((user_id.clone(), video_id.clone(), start_ms)) {
            continue;
        }
        // Mostly short, some long: mean about 25 minutes, capped at 4 hours.
        let length =
            ((-rng.random::<f64>().max(1e-9).ln()) * 25.0 * 60_000.0).min(4.0 * HOUR as f64) as i64;
        let watch_ms = (length as f64 * rng.random_range(0.5..1.0)) as i64;
        let ads = if rng.random_bool(0.3) {
            let mut ads: Vec<String> = (0..rng.random_range(1..=3))
                .map(|_| format!("ad{:04}", rng.random_range(0..ADS + 20)))
                .collect();
            ads.sort();
            ads.dedup();
            ads
        } else {
            Vec::new()
        };
        sessions.push(Session {
            user_id,
            video_id,
            start_ms,
            end_ms: start_ms + length,
            heartbeats: length / 5_000 + 1,
            watch_ms,
            coverage_ms: watch_ms * 9 / 10,
            last_position_ms: rng.random_range(0..2 * HOUR),
            devices: 1 + i64::from(rng.random_bool(0.1)),
            ads,
            is_final: start_ms < B0 + SPAN - HOUR,
        });
    }
    // The stream service writes sessions as they happen: rows land in the
    // store roughly in time order, which is what makes range scans cheap.
    sessions.sort_by_key(|s| s.start_ms);
    let mut raw: Vec<Raw> = (0..args.raw)
        .map(|i| Raw {
            event_id: format!("e{i:08}"),
            user_id: format!("u{:06}", rng.random_range(0..USERS)),
            video_id: pick_video(&mut rng),
            device_id: format!("d{:06}", rng.random_range(0..300_000)),
            event_time_ms: B0 + rng.random_range(0..SPAN),
        })
        .collect();
    raw.sort_by_key(|r| r.event_time_ms);
    for (i, r) in raw.iter_mut().enumerate() {
        r.event_id = format!("e{i:08}");
    }
    Data {
        videos,
        ads,
        sessions,
        raw,
    }
}

fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

fn sessions_csv(sessions: &[Session]) -> String {
    let mut out = String::new();
    for s in sessions {
        let ads = serde_json::to_string(&s.ads).expect("ads json");
        let _ = writeln!(
            out,
            "{},{},{},{},{},{},{},{},{},{},{}",
            s.user_id,
            s.video_id,
            s.start_ms,
            s.end_ms,
            s.heartbeats,
            s.watch_ms,
            s.coverage_ms,
            s.last_position_ms,
            s.devices,
            csv_field(&ads),
            s.is_final
        );
    }
    out
}

fn session_ads_csv(sessions: &[Session]) -> String {
    let mut out = String::new();
    for s in sessions {
        for ad in &s.ads {
            let _ = writeln!(out, "{},{},{},{}", s.user_id, s.video_id, s.start_ms, ad);
        }
    }
    out
}

fn raw_csv(raw: &[Raw]) -> String {
    let mut out = String::new();
    for r in raw {
        let _ = writeln!(
            out,
            "{},{},{},{},{},0,1,{}",
            r.event_id,
            r.user_id,
            r.video_id,
            r.device_id,
            r.event_time_ms,
            r.event_time_ms + SPAN
        );
    }
    out
}

const SESSION_COLUMNS: &str =
    "user_id, video_id, start_ms, end_ms, heartbeats, watch_ms, coverage_ms, \
     last_position_ms, devices, ads, is_final";
const RAW_COLUMNS: &str =
    "event_id, user_id, video_id, device_id, event_time_ms, position_ms, state, expires_ms";

async fn load_postgres(pool: &sqlx::PgPool, data: &Data) -> anyhow::Result<()> {
    for (table, columns, body) in [
        ("sessions", SESSION_COLUMNS, sessions_csv(&data.sessions)),
        (
            "session_ads",
            "user_id, video_id, start_ms, ad_id",
            session_ads_csv(&data.sessions),
        ),
        ("raw_heartbeats", RAW_COLUMNS, raw_csv(&data.raw)),
    ] {
        let mut copy = pool
            .copy_in_raw(&format!(
                "COPY {table} ({columns}) FROM STDIN WITH (FORMAT csv)"
            ))
            .await?;
        for chunk in body.as_bytes().chunks(1 << 20) {
            copy.send(chunk).await?;
        }
        copy.finish().await?;
    }
    sqlx::query(RAW_HOURS_SQL).execute(pool).await?;
    // A store that has been running has been autovacuumed: index-only scans
    // need the visibility map that a fresh COPY has not set yet.
    sqlx::query("VACUUM ANALYZE").execute(pool).await?;
    Ok(())
}

/// The raw versions of the seeded hours, as the stream stage's flushes
/// would have left them (they are written here, not through svc-stream).
const RAW_HOURS_SQL: &str = "INSERT INTO raw_hour_versions (hour_ms, version) \
     SELECT DISTINCT event_time_ms - (event_time_ms % 3600000), 1 FROM raw_heartbeats WHERE true \
     ON CONFLICT (hour_ms) DO NOTHING";

async fn load_sqlite(pool: &sqlx::SqlitePool, data: &Data) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    for chunk in data.sessions.chunks(500) {
        let mut sql = format!("INSERT INTO sessions ({SESSION_COLUMNS}) VALUES ");
        let mut n = 0;
        for i in 0..chunk.len() {
            let placeholders: Vec<String> = (0..11)
                .map(|_| {
                    n += 1;
                    format!("${n}")
                })
                .collect();
            let _ = write!(
                sql,
                "{}({})",
                if i == 0 { "" } else { ", " },
                placeholders.join(", ")
            );
        }
        let mut query = sqlx::query(&sql);
        for s in chunk {
            query = query
                .bind(&s.user_id)
                .bind(&s.video_id)
                .bind(s.start_ms)
                .bind(s.end_ms)
                .bind(s.heartbeats)
                .bind(s.watch_ms)
                .bind(s.coverage_ms)
                .bind(s.last_position_ms)
                .bind(s.devices)
                .bind(serde_json::to_string(&s.ads)?)
                .bind(s.is_final);
        }
        query.execute(&mut *tx).await?;
    }
    let pairs: Vec<(&Session, &String)> = data
        .sessions
        .iter()
        .flat_map(|s| s.ads.iter().map(move |ad| (s, ad)))
        .collect();
    for chunk in pairs.chunks(1_000) {
        let mut sql =
            "INSERT INTO session_ads (user_id, video_id, start_ms, ad_id) VALUES ".to_string();
        for i in 0..chunk.len() {
            let b = i * 4;
            let _ = write!(
                sql,
                "{}(${}, ${}, ${}, ${})",
                if i == 0 { "" } else { ", " },
                b + 1,
                b + 2,
                b + 3,
                b + 4
            );
        }
        let mut query = sqlx::query(&sql);
        for (s, ad) in chunk {
            query = query
                .bind(&s.user_id)
                .bind(&s.video_id)
                .bind(s.start_ms)
                .bind(*ad);
        }
        query.execute(&mut *tx).await?;
    }
    for chunk in data.raw.chunks(1_000) {
        let mut sql = format!("INSERT INTO raw_heartbeats ({RAW_COLUMNS}) VALUES ");
        for i in 0..chunk.len() {
            let b = i * 6;
            let _ = write!(
                sql,
                "{}(${}, ${}, ${}, ${}, ${}, 0, 1, ${})",
                if i == 0 { "" } else { ", " },
                b + 1,
                b + 2,
                b + 3,
                b + 4,
                b + 5,
                b + 6
            );
        }
        let mut query = sqlx::query(&sql);
        for r in chunk {
            query = query
                .bind(&r.event_id)
                .bind(&r.user_id)
                .bind(&r.video_id)
                .bind(&r.device_id)
                .bind(r.event_time_ms)
                .bind(r.event_time_ms + SPAN);
        }
        query.execute(&mut *tx).await?;
    }
    sqlx::query(RAW_HOURS_SQL).execute(&mut *tx).await?;
    tx.commit().await?;
    sqlx::query("ANALYZE").execute(pool).await?;
    Ok(())
}

fn export_csv(dir: &Path, data: &Data) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut videos = String::from("video_id,title,license_holder_id,rate_micros_per_hour\n");
    for v in &data.videos {
        let _ = writeln!(
            videos,
            "{},{},{},{}",
            v.video_id,
            csv_field(&v.title),
            v.license_holder_id,
            v.rate_micros_per_hour
        );
    }
    std::fs::write(dir.join("videos.csv"), videos)?;
    let mut ads = String::from("ad_id,campaign_id,advertiser_id\n");
    for a in &data.ads {
        let _ = writeln!(ads, "{},{},{}", a.ad_id, a.campaign_id, a.advertiser_id);
    }
    std::fs::write(dir.join("ads.csv"), ads)?;
    std::fs::write(
        dir.join("sessions.csv"),
        format!(
            "user_id,video_id,start_ms,end_ms,heartbeats,watch_ms,coverage_ms,last_position_ms,devices,ads,is_final\n{}",
            sessions_csv(&data.sessions)
        ),
    )?;
    std::fs::write(
        dir.join("session_ads.csv"),
        format!(
            "user_id,video_id,start_ms,ad_id\n{}",
            session_ads_csv(&data.sessions)
        ),
    )?;
    std::fs::write(
        dir.join("raw_heartbeats.csv"),
        format!(
            "event_id,user_id,video_id,device_id,event_time_ms,position_ms,state,expires_ms\n{}",
            raw_csv(&data.raw)
        ),
    )?;
    Ok(())
}

/// The 1/5/15-minute load average (other work on the machine skews figures).
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|_| "unknown".into())
}

fn rfc(ms: i64) -> String {
    hb_common::time::ms_to_rfc3339(ms)
}

/// The report requests measured: (name, path).
fn report_paths() -> Vec<(&'static str, String)> {
    let day = (B0 + 14 * DAY, B0 + 15 * DAY);
    let month = (B0, B0 + SPAN);
    let q = |(from, to): (i64, i64)| format!("from={}&to={}", rfc(from), rfc(to));
    vec![
        ("royalties_day", format!("/v1/reports/royalties?{}", q(day))),
        (
            "royalties_30d",
            format!("/v1/reports/royalties?{}", q(month)),
        ),
        (
            "impressions_day",
            format!("/v1/reports/impressions?{}", q(day)),
        ),
        (
            "impressions_30d",
            format!("/v1/reports/impressions?{}", q(month)),
        ),
        (
            "concurrency_day_60s",
            format!("/v1/reports/concurrency?{}&step_s=60", q(day)),
        ),
        (
            "concurrency_30d_1h",
            format!("/v1/reports/concurrency?{}&step_s=3600", q(month)),
        ),
        ("traffic_day", format!("/v1/reports/traffic?{}", q(day))),
        ("traffic_30d", format!("/v1/reports/traffic?{}", q(month))),
    ]
}

/// `path` (a day's request) moved to day `client` of the month.
fn own_day(path: &str, client: usize) -> String {
    let day = (B0 + 14 * DAY, B0 + 15 * DAY);
    let moved = (
        B0 + (client as i64 % 30) * DAY,
        B0 + (client as i64 % 30 + 1) * DAY,
    );
    let q = |(from, to): (i64, i64)| format!("from={}&to={}", rfc(from), rfc(to));
    path.replace(&q(day), &q(moved))
}

struct Measure {
    name: String,
    clients: usize,
    histogram: Histogram<u64>,
    rows: usize,
    /// CPU the whole process (server and client) spent per request: less
    /// sensitive than latency to other work on a shared machine.
    cpu_ms_per_request: f64,
}

/// CPU time of this process so far (user + system), from /proc (clock ticks of 10 ms).
fn process_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // After the command name: state is field 0, utime 11, stime 12.
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

impl Measure {
    fn line(&self) -> String {
        let ms = |v: u64| v as f64 / 1_000.0;
        format!(
            "| {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {} |",
            self.name,
            self.clients,
            self.histogram.len(),
            ms(self.histogram.value_at_quantile(0.5)),
            ms(self.histogram.value_at_quantile(0.99)),
            ms(self.histogram.max()),
            self.cpu_ms_per_request,
            self.rows
        )
    }
}

/// Runs `clients` tasks, each sending `per_client` GETs built by `path`.
async fn measure<F>(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    name: &str,
    clients: usize,
    per_client: usize,
    path: F,
) -> anyhow::Result<Measure>
where
    F: Fn(usize, usize) -> String + Send + Sync + 'static,
{
    let path = Arc::new(path);
    let cpu_before = process_cpu();
    let mut tasks = Vec::new();
    for client in 0..clients {
        let http = http.clone();
        let url = base.to_string();
        let token = token.to_string();
        let path = path.clone();
        tasks.push(tokio::spawn(async move {
            let mut histogram = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
            let mut rows = 0;
            for i in 0..per_client {
                let started = Instant::now();
                let response = http
                    .get(format!("{url}{}", path(client, i)))
                    .bearer_auth(&token)
                    .send()
                    .await?;
                let status = response.status();
                let body: serde_json::Value = response.json().await?;
                let elapsed = started.elapsed();
                anyhow::ensure!(status.is_success(), "{status}: {body}");
                rows = body["rows"].as_array().map_or(0, Vec::len);
                histogram.record(elapsed.as_micros().max(1) as u64)?;
            }
            anyhow::Ok((histogram, rows))
        }));
    }
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    let mut rows = 0;
    for task in tasks {
        let (h, r) = task.await??;
        histogram.add(h)?;
        rows = r;
    }
    let cpu = process_cpu().saturating_sub(cpu_before);
    Ok(Measure {
        name: name.to_string(),
        clients,
        cpu_ms_per_request: cpu.as_secs_f64() * 1_000.0 / histogram.len().max(1) as f64,
        histogram,
        rows,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.dir)?;
    let mut config = QueryConfig {
        http_addr: "127.0.0.1:0".parse()?,
        grpc_addr: "127.0.0.1:0".parse()?,
        metrics_addr: "127.0.0.1:0".parse()?,
        store: StoreSettings {
            data_dir: args.dir.join("sqlite"),
            yugabyte_url: None,
        },
        auth: AuthSettings {
            secret: Some(Secret::new(SECRET)),
        },
        query_timeout: Duration::from_secs(120),
        ..QueryConfig::default()
    };
    if let Some(connections) = args.store_connections {
        config.store_connections = connections;
    }
    if args.store == "postgres" {
        let base = args
            .pg_url
            .rsplit_once('/')
            .map(|(b, _)| b)
            .unwrap_or(&args.pg_url);
        config.store.yugabyte_url = Some(format!("{base}/{}", args.pg_db));
        if !args.reuse {
            let admin = sqlx::PgPool::connect(&args.pg_url).await?;
            let db = &args.pg_db;
            anyhow::ensure!(
                db.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
                "--pg-db must be a plain lowercase identifier"
            );
            sqlx::query(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
                .execute(&admin)
                .await?;
            sqlx::query(&format!("CREATE DATABASE {db}"))
                .execute(&admin)
                .await?;
            admin.close().await;
        }
    } else if !args.reuse {
        let _ = std::fs::remove_dir_all(args.dir.join("sqlite"));
    }

    if !args.reuse {
        let started = Instant::now();
        let data = generate(&args);
        eprintln!(
            "generated {} sessions, {} impressions, {} raw heartbeats in {:.1}s",
            data.sessions.len(),
            data.sessions.iter().map(|s| s.ads.len()).sum::<usize>(),
            data.raw.len(),
            started.elapsed().as_secs_f64()
        );
        let store = svc_query::store::open(&config).await?;
        svc_query::catalog::upsert_videos(&store, &data.videos).await?;
        svc_query::catalog::upsert_ads(&store, &data.ads).await?;
        let started = Instant::now();
        match &store {
            Store::Sqlite(pool) => load_sqlite(pool, &data).await?,
            Store::Postgres(pool) => load_postgres(pool, &data).await?,
        }
        eprintln!(
            "loaded {} in {:.1}s",
            store.kind(),
            started.elapsed().as_secs_f64()
        );
        store.close().await;
        if args.export {
            export_csv(&args.dir.join("csv"), &data)?;
            eprintln!("exported CSV to {}", args.dir.join("csv").display());
        }
    }

    let listeners = QueryListeners::bind(&config).await?;
    let base = format!("http://{}", listeners.http.local_addr()?);
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(svc_query::run(config.clone(), listeners, shutdown.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let token = hb_common::auth::TokenKey::new(SECRET).mint(
        "bench",
        &hb_common::auth::Role::Admin,
        chrono::Utc::now().timestamp() + 86_400,
    );
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(32)
        .build()?;

    let mut lines = vec![
        format!(
            "store: {} ({} sessions, {} raw heartbeats), nproc=2, client and server in one process",
            args.store, args.sessions, args.raw
        ),
        "| request | clients | n | p50 ms | p99 ms | max ms | cpu ms/req | rows |".to_string(),
        "|---|---|---|---|---|---|---|---|".to_string(),
    ];
    if let Some(first) = &args.cold_first {
        let (name, path) = report_paths()
            .into_iter()
            .find(|(name, _)| name == first)
            .ok_or_else(|| anyhow::anyhow!("--cold-first: no report named {first}"))?;
        let started = Instant::now();
        http.get(format!("{base}{path}"))
            .bearer_auth(&token)
            .send()
            .await?
            .error_for_status()?
            .bytes()
            .await?;
        lines.push(format!(
            "| {name} (first request right after start) | 1 | 1 | {:.1} | | | | |",
            started.elapsed().as_secs_f64() * 1_000.0
        ));
    }
    // Warm caches once per report so the first sample is not a cold read.
    // The first traffic request of a fresh store also counts its whole
    // hours into the roll-up: reported on its own line.
    for (name, path) in report_paths() {
        let started = Instant::now();
        http.get(format!("{base}{path}"))
            .bearer_auth(&token)
            .send()
            .await?
            .bytes()
            .await?;
        if name.starts_with("traffic") {
            lines.push(format!(
                "| {name} (first request, before the timed ones) | 1 | 1 | {:.1} | | | | |",
                started.elapsed().as_secs_f64() * 1_000.0
            ));
        }
    }
    if args.export {
        let answers = args.dir.join("answers");
        std::fs::create_dir_all(&answers)?;
        for (name, path) in report_paths() {
            let body: serde_json::Value = http
                .get(format!("{base}{path}"))
                .bearer_auth(&token)
                .send()
                .await?
                .json()
                .await?;
            std::fs::write(answers.join(format!("{name}.json")), body.to_string())?;
        }
        for user in ["u000042", "u123456"] {
            let body: serde_json::Value = http
                .get(format!("{base}/v1/users/{user}/progress"))
                .bearer_auth(&token)
                .send()
                .await?
                .json()
                .await?;
            std::fs::write(
                answers.join(format!("progress_{user}.json")),
                body.to_string(),
            )?;
        }
    }

    for (name, path) in report_paths() {
        if args
            .only
            .as_deref()
            .is_some_and(|only| !name.contains(only))
        {
            continue;
        }
        for (clients, per_client) in [(1, args.iterations), (16, args.iterations_16)] {
            if clients == 16 && name.contains("30d") && !args.month_16 {
                continue;
            }
            let path = path.clone();
            let result = measure(
                &http,
                &base,
                &token,
                name,
                clients,
                per_client,
                move |_, _| path.clone(),
            )
            .await?;
            eprintln!("{}", result.line());
            lines.push(result.line());
        }
        // The same 16 clients each asking for a day of their own: no two
        // requests are identical, so none shares another's run (see
        // svc-query's `engine::coalesce`), which the row above allows.
        if name.contains("_day") {
            let own_days = format!("{name} (own day per client)");
            let result = measure(
                &http,
                &base,
                &token,
                &own_days,
                16,
                args.iterations_16,
                move |client, _| own_day(&path, client),
            )
            .await?;
            eprintln!("{}", result.line());
            lines.push(result.line());
        }
    }
    for clients in [1, 16] {
        let result = measure(
            &http,
            &base,
            &token,
            "progress",
            clients,
            args.lookups,
            move |client, i| {
                // A different user per request, spread over all users.
                let user = (client as u64 * 7_919 + i as u64 * 104_729) % u64::from(USERS);
                format!("/v1/users/u{user:06}/progress")
            },
        )
        .await?;
        eprintln!("{}", result.line());
        lines.push(result.line());
    }
    lines.push(format!("load average after the run: {}", load_average()));
    println!("{}", lines.join("\n"));
    std::fs::write(
        args.dir.join(format!("results-{}.md", args.store)),
        lines.join("\n") + "\n",
    )?;
    shutdown.cancel();
    server.await??;
    Ok(())
}
