//! The cluster tier as separate processes, as it is deployed: the built
//! `svc-ingest` (2), `svc-stream` (3, one consumer group) and `svc-query`
//! binaries, configured through their env variables only, on the test Kafka
//! broker (a 4-partition topic of this test) and a fresh PostgreSQL database
//! (the stand-in for YugabyteDB). Heartbeats go in through both ingest
//! processes while stream processes are killed with SIGKILL and started
//! again; once quiescent, every user's sessions and the royalties report
//! equal the batch definition (SPEC 5, SPEC 7).

use hb_proto::v1::ingest_service_client::IngestServiceClient;
use hb_proto::v1::Heartbeat;
use hb_testkit::broker::{create_topic, delete_topics, test_broker, unique_topic};
use hb_testkit::db::TestDb;
use hb_testkit::fleet::{Fleet, FleetConfig};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use svc_stream::sessionizer::{sessionize_all, Event, Session, SessionConfig};

const PARTITIONS: i32 = 4;
const HEARTBEATS: usize = 6_000;
const CHUNK: usize = 100;
const PATIENCE: Duration = Duration::from_secs(40);

/// The built service binaries: `HB_TEST_BIN_DIR` when set (e.g. when other
/// checkouts share this `target/` and overwrite its binaries), else next to
/// this test's executable's directory (`target/debug/deps/..`).
/// `cargo test --workspace` builds them (their packages have integration
/// tests); when one is missing or older than the sources, `cargo build` is
/// run for them first.
fn service_binaries() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            if let Some(dir) = std::env::var_os("HB_TEST_BIN_DIR") {
                return PathBuf::from(dir);
            }
            let exe = std::env::current_exe().expect("test executable");
            let dir = exe
                .parent()
                .and_then(Path::parent)
                .expect("target/<profile>")
                .to_path_buf();
            let names = ["svc-ingest", "svc-stream", "svc-query"];
            let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
            let sources = ["proto", "common", "svc-ingest", "svc-stream", "svc-query"]
                .iter()
                .filter_map(|krate| newest_modified(&workspace.join(krate)))
                .max();
            let current = names.iter().all(|name| {
                let built = std::fs::metadata(dir.join(name)).and_then(|m| m.modified());
                matches!((built, sources), (Ok(built), Some(sources)) if built >= sources)
            });
            if !current {
                let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
                let mut build = Command::new(cargo);
                build.arg("build").current_dir(&workspace);
                for name in names {
                    build.args(["-p", name, "--bin", name]);
                }
                eprintln!("building the service binaries: {build:?}");
                let status = build.status().expect("cargo build runs");
                assert!(status.success(), "cargo build of the service binaries");
            }
            dir
        })
        .clone()
}

/// Newest modification time of the files under `path` (sources, manifests,
/// migrations), skipping `target`.
fn newest_modified(path: &Path) -> Option<SystemTime> {
    let metadata = std::fs::metadata(path).ok()?;
    if metadata.is_file() {
        return metadata.modified().ok();
    }
    std::fs::read_dir(path)
        .ok()?
        .filter_map(Result::ok)
        .filter(|entry| entry.file_name() != "target")
        .filter_map(|entry| newest_modified(&entry.path()))
        .max()
}

/// One service process; killed (SIGKILL) and reaped on drop. Its logs (JSON,
/// stderr) are kept to show when the test fails, and echoed with `TEST_LOG`.
struct Service {
    name: String,
    child: Child,
    logs: Arc<Mutex<Vec<String>>>,
    /// The fields of its "listening"/"starting" log line.
    started: serde_json::Value,
}

impl Service {
    /// Starts `binary` with exactly `env` (plus `PATH`) and waits for the log
    /// line with `message`, which carries the bound addresses.
    fn start(name: &str, binary: &str, env: &[(&str, String)], message: &str) -> Service {
        let path = service_binaries().join(binary);
        let mut command = Command::new(&path);
        command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HB_LOG_FORMAT", "json")
            .env("HB_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command
            .spawn()
            .unwrap_or_else(|err| panic!("starting {}: {err}", path.display()));
        let stderr = child.stderr.take().expect("piped stderr");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (started_tx, started_rx) = mpsc::channel();
        let (echo, tag, kept, wanted) = (
            std::env::var_os("TEST_LOG").is_some(),
            name.to_string(),
            logs.clone(),
            message.to_string(),
        );
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if echo {
                    eprintln!("[{tag}] {line}");
                }
                if let Ok(fields) = serde_json::from_str::<serde_json::Value>(&line) {
                    if fields["message"] == wanted.as_str() {
                        let _ = started_tx.send(fields);
                    }
                }
                kept.lock().unwrap().push(line);
            }
        });
        let mut service = Service {
            name: name.to_string(),
            child,
            logs,
            started: serde_json::Value::Null,
        };
        match started_rx.recv_timeout(Duration::from_secs(30)) {
            Ok(fields) => service.started = fields,
            Err(_) => panic!(
                "{name} did not log {message:?}; its log:\n{}",
                service.log()
            ),
        }
        service
    }

    fn addr(&self, field: &str) -> String {
        self.started[field]
            .as_str()
            .unwrap_or_else(|| panic!("{}: no {field} in {}", self.name, self.started))
            .to_string()
    }

    fn log(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{name} {}", self.name);
    }

    /// SIGKILL: no drain, no flush, no leaving the consumer group.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Fails the test when the process has exited on its own.
    fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "{} exited with {status}; its log:\n{}",
                self.name,
                self.log()
            );
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The whole cluster tier of one test.
struct Cluster {
    brokers: String,
    topic: String,
    dlq_topic: String,
    group: String,
    db_url: String,
    data_dir: tempfile::TempDir,
    ingest: Vec<Service>,
    stream: Vec<Option<Service>>,
    query: Option<Service>,
    /// Settings of this test on top of the common ones.
    settings: Vec<(&'static str, String)>,
}

impl Cluster {
    /// Topics of its own on the test broker, a fresh database and the built
    /// service binaries; no process started yet.
    async fn prepare(
        name: &str,
        settings: Vec<(&'static str, String)>,
    ) -> (Cluster, TestDb, sqlx::PgPool) {
        let brokers = test_broker().await.expect("a Kafka broker for the test");
        let (topic, dlq_topic) = (unique_topic(name), unique_topic(&format!("{name}-dlq")));
        create_topic(&brokers, &topic, PARTITIONS)
            .await
            .expect("topic");
        create_topic(&brokers, &dlq_topic, 1)
            .await
            .expect("dlq topic");
        let (db, pool) = TestDb::create().await.expect("test database");
        tokio::task::spawn_blocking(service_binaries)
            .await
            .expect("service binaries");
        let cluster = Cluster {
            brokers,
            topic,
            dlq_topic,
            group: unique_topic(&format!("{name}-group")),
            db_url: db.url.clone(),
            data_dir: tempfile::tempdir().expect("data dir"),
            ingest: Vec::new(),
            stream: Vec::new(),
            query: None,
            settings,
        };
        (cluster, db, pool)
    }

    /// Stops every process (SIGKILL), then deletes the topics: deleting a
    /// topic a client still knows crashes that client on tansu.
    async fn finish(self) {
        let (brokers, topics) = (
            self.brokers.clone(),
            [self.topic.clone(), self.dlq_topic.clone()],
        );
        drop(self);
        delete_topics(&brokers, &[&topics[0], &topics[1]]).await;
    }

    fn common_env(&self) -> Vec<(&'static str, String)> {
        let local = "127.0.0.1:0".to_string();
        let mut env = vec![
            ("HB_KAFKA_BROKERS", self.brokers.clone()),
            ("HB_KAFKA_TOPIC", self.topic.clone()),
            ("HB_DLQ_TOPIC", self.dlq_topic.clone()),
            ("HB_KAFKA_GROUP", self.group.clone()),
            ("HB_KAFKA_SESSION_TIMEOUT", "3s".into()),
            ("HB_YUGABYTE_URL", self.db_url.clone()),
            (
                "HB_DATA_DIR",
                self.data_dir.path().to_string_lossy().into_owned(),
            ),
            ("HB_DEVICE_RATE", "0".into()),
            ("HB_INGEST_ADDR", local.clone()),
            ("HB_INGEST_METRICS_ADDR", local.clone()),
            ("HB_STREAM_METRICS_ADDR", local.clone()),
            ("HB_QUERY_HTTP_ADDR", local.clone()),
            ("HB_QUERY_GRPC_ADDR", local.clone()),
            ("HB_QUERY_METRICS_ADDR", local),
        ];
        env.extend(self.settings.iter().cloned());
        env
    }

    fn start_ingest(&mut self) {
        let name = format!("svc-ingest-{}", self.ingest.len());
        let service = Service::start(
            &name,
            "svc-ingest",
            &self.common_env(),
            "svc-ingest listening",
        );
        self.ingest.push(service);
    }

    fn start_stream(&mut self, index: usize) {
        let name = format!("svc-stream-{index}");
        let service = Service::start(
            &name,
            "svc-stream",
            &self.common_env(),
            "svc-stream starting",
        );
        if self.stream.len() <= index {
            self.stream.resize_with(index + 1, || None);
        }
        self.stream[index] = Some(service);
    }

    /// Pauses a stream process (SIGSTOP), as a long GC pause, a slow disk
    /// or a stalled host would.
    fn freeze_stream(&self, index: usize) {
        self.stream[index].as_ref().expect("running").signal("STOP");
    }

    fn thaw_stream(&self, index: usize) {
        self.stream[index].as_ref().expect("running").signal("CONT");
    }

    fn kill_stream(&mut self, index: usize) {
        if let Some(mut service) = self.stream[index].take() {
            service.kill();
        }
    }

    fn start_query(&mut self) {
        let service = Service::start(
            "svc-query",
            "svc-query",
            &self.common_env(),
            "svc-query listening",
        );
        self.query = Some(service);
    }

    fn query_url(&self, path: &str) -> String {
        let query = self.query.as_ref().expect("svc-query started");
        format!("http://{}{path}", query.addr("http"))
    }

    fn assert_running(&mut self) {
        let services = self
            .ingest
            .iter_mut()
            .chain(self.stream.iter_mut().flatten());
        for service in services.chain(self.query.iter_mut()) {
            service.assert_running();
        }
    }

    /// Every process's log, for a failure message.
    fn logs(&self) -> String {
        let services = self.ingest.iter().chain(self.stream.iter().flatten());
        services
            .chain(self.query.iter())
            .map(|s| format!("---- {} ----\n{}", s.name, s.log()))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn workload() -> Vec<Heartbeat> {
    let mut fleet = Fleet::new(FleetConfig {
        devices: 40,
        users: 24,
        videos: 8,
        ads: 3,
        seed: 61,
        start_ms: hb_common::time::now_ms() - 60 * 60_000,
        ..FleetConfig::default()
    });
    fleet.heartbeats(HEARTBEATS).collect()
}

/// The catalog of the fleet's videos: two license holders, distinct rates.
fn catalog(videos: &BTreeSet<String>) -> Vec<serde_json::Value> {
    videos
        .iter()
        .enumerate()
        .map(|(i, video_id)| {
            serde_json::json!({
                "video_id": video_id,
                "title": format!("Title {i}"),
                "license_holder_id": if i % 2 == 0 { "studio-north" } else { "studio-south" },
                "rate_micros_per_hour": 40_000 + 7_919 * i as i64,
            })
        })
        .collect()
}

/// SPEC 7 royalties over `sessions`, as the report's rows, in a fixed order.
fn expected_royalties(
    sessions: &[Session],
    catalog: &[serde_json::Value],
) -> Vec<serde_json::Value> {
    /// Sessions, viewers, watch time and rate of one (license holder, video).
    #[derive(Default)]
    struct Row {
        sessions: i64,
        viewers: BTreeSet<String>,
        watch_ms: i64,
        rate: i64,
    }
    let mut by_video: BTreeMap<(String, String), Row> = BTreeMap::new();
    for session in sessions {
        let entry = catalog
            .iter()
            .find(|row| row["video_id"] == session.video_id.as_str())
            .expect("every video is in the catalog");
        let holder = entry["license_holder_id"].as_str().unwrap().to_string();
        let rate = entry["rate_micros_per_hour"].as_i64().unwrap();
        let row = by_video
            .entry((holder, session.video_id.clone()))
            .or_default();
        row.sessions += 1;
        row.viewers.insert(session.user_id.clone());
        row.watch_ms += session.watch_ms;
        row.rate = rate;
    }
    by_video
        .into_iter()
        .map(|((holder, video), row)| {
            serde_json::json!({
                "license_holder_id": holder,
                "video_id": video,
                "sessions": row.sessions,
                "viewers": row.viewers.len(),
                "watch_ms": row.watch_ms,
                "amount_micros": (row.watch_ms as i128 * row.rate as i128 / 3_600_000) as i64,
            })
        })
        .collect()
}

fn sorted_rows(body: &serde_json::Value) -> Vec<serde_json::Value> {
    let mut rows = body["rows"].as_array().cloned().unwrap_or_default();
    rows.sort_by_key(|row| {
        (
            row["license_holder_id"].to_string(),
            row["video_id"].to_string(),
        )
    });
    rows
}

async fn get_json(http: &reqwest::Client, url: &str) -> serde_json::Value {
    let response = http.get(url).send().await.expect("svc-query reachable");
    assert!(
        response.status().is_success(),
        "GET {url}: {}",
        response.status()
    );
    response.json().await.expect("json body")
}

/// The heartbeats of the test, pushed a chunk per call, alternating
/// between the ingest processes.
struct Load<'a> {
    clients: Vec<IngestServiceClient<tonic::transport::Channel>>,
    chunks: Vec<&'a [Heartbeat]>,
    /// Chunks pushed so far.
    pushed: usize,
    /// Distinct event ids pushed so far.
    distinct: HashSet<String>,
}

impl<'a> Load<'a> {
    /// `heartbeats` in chunks, to go through every ingest process of `cluster`.
    async fn connect(cluster: &Cluster, heartbeats: &'a [Heartbeat]) -> Load<'a> {
        let mut clients = Vec::new();
        for ingest in &cluster.ingest {
            let url = format!("http://{}", ingest.addr("grpc_addr"));
            clients.push(
                IngestServiceClient::connect(url)
                    .await
                    .expect("ingest reachable"),
            );
        }
        Load {
            clients,
            chunks: heartbeats.chunks(CHUNK).collect(),
            pushed: 0,
            distinct: HashSet::new(),
        }
    }

    /// Pushes the next `count` chunks (fewer when the load ends).
    async fn push(&mut self, cluster: &Cluster, count: usize) {
        let end = self.chunks.len().min(self.pushed.saturating_add(count));
        for i in self.pushed..end {
            let chunk = self.chunks[i];
            let lanes = self.clients.len();
            let client = &mut self.clients[i % lanes];
            let summary = client
                .push(futures::stream::iter(chunk.to_vec()))
                .await
                .unwrap_or_else(|status| panic!("push {i}: {status}\n{}", cluster.logs()))
                .into_inner();
            assert_eq!(summary.rejected, 0, "push {i}: {:?}", summary.rejections);
            self.distinct
                .extend(chunk.iter().map(|hb| hb.event_id.clone()));
            self.pushed = i + 1;
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
    }
}

/// Polls svc-query until every user's sessions equal `expected`, failing
/// after [`PATIENCE`] with the first user whose sessions differ.
async fn assert_sessions_equal(
    cluster: &mut Cluster,
    http: &reqwest::Client,
    expected: &[Session],
) {
    let mut by_user: BTreeMap<String, Vec<Session>> = BTreeMap::new();
    for session in expected {
        by_user
            .entry(session.user_id.clone())
            .or_default()
            .push(session.clone());
    }
    let order = |s: &Session| (s.video_id.clone(), s.start_ms);
    for sessions in by_user.values_mut() {
        sessions.sort_by_key(order);
    }
    let (from, to) = (
        hb_common::time::ms_to_rfc3339(0),
        hb_common::time::ms_to_rfc3339(hb_common::time::now_ms() + 86_400_000),
    );
    let deadline = Instant::now() + PATIENCE;
    loop {
        let mut first_difference = None;
        for (user, sessions) in &by_user {
            let url = cluster.query_url(&format!("/v1/users/{user}/sessions?from={from}&to={to}"));
            let body = get_json(http, &url).await;
            let mut stored: Vec<Session> =
                serde_json::from_value(body["rows"].clone()).expect("session rows");
            stored.sort_by_key(order);
            if &stored != sessions {
                first_difference = Some((user.clone(), stored, sessions.clone()));
                break;
            }
        }
        let Some((user, stored, sessions)) = first_difference else {
            return;
        };
        if Instant::now() > deadline {
            cluster.assert_running();
            assert_eq!(stored, sessions, "sessions of {user} after {PATIENCE:?}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Waits until the sessions in the store hold at least `at_least` heartbeats.
async fn wait_stored(pool: &sqlx::PgPool, at_least: usize, cluster: &mut Cluster) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let stored: i64 =
            sqlx::query_scalar("SELECT COALESCE(SUM(heartbeats), 0)::BIGINT FROM sessions")
                .fetch_one(pool)
                .await
                .expect("sessions readable");
        if stored as usize >= at_least {
            return;
        }
        cluster.assert_running();
        assert!(
            Instant::now() < deadline,
            "only {stored} of {at_least} heartbeats in sessions after {PATIENCE:?}\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn separate_processes_with_stream_processes_killed_mid_load_equal_the_batch_definition() {
    let (mut cluster, _db, pool) = Cluster::prepare("hb-procs", Vec::new()).await;
    for index in 0..3 {
        cluster.start_stream(index);
    }
    cluster.start_ingest();
    cluster.start_ingest();
    cluster.start_query();

    let heartbeats = workload();
    let distinct: HashSet<_> = heartbeats.iter().map(|hb| hb.event_id.clone()).collect();

    // Push through both ingest processes; meanwhile kill stream processes
    // with SIGKILL (mid-processing: once the group has stored part of what
    // was pushed) and start them again.
    let mut load = Load::connect(&cluster, &heartbeats).await;
    load.push(&cluster, 15).await;
    wait_stored(&pool, load.distinct.len() / 2, &mut cluster).await;
    cluster.kill_stream(0);
    load.push(&cluster, 10).await;
    cluster.start_stream(0);
    load.push(&cluster, 5).await;
    wait_stored(&pool, load.distinct.len() * 3 / 4, &mut cluster).await;
    cluster.kill_stream(1);
    load.push(&cluster, 5).await;
    cluster.kill_stream(2);
    load.push(&cluster, 10).await;
    cluster.start_stream(1);
    load.push(&cluster, 5).await;
    cluster.start_stream(2);
    wait_stored(&pool, load.distinct.len() * 3 / 4, &mut cluster).await;
    cluster.kill_stream(0);
    load.push(&cluster, usize::MAX).await;
    cluster.start_stream(0);
    assert_eq!(load.pushed, load.chunks.len(), "every chunk pushed");
    cluster.assert_running();

    let http = reqwest::Client::new();
    let events: Vec<Event> = heartbeats
        .iter()
        .map(|hb| Event::from_proto(hb).expect("valid heartbeat"))
        .collect();
    let expected = sessionize_all(events, SessionConfig::default().gap_ms);
    assert_eq!(
        expected
            .iter()
            .map(|s| s.heartbeats as usize)
            .sum::<usize>(),
        distinct.len(),
        "the oracle holds every distinct heartbeat"
    );

    let videos: BTreeSet<String> = heartbeats.iter().map(|hb| hb.video_id.clone()).collect();
    let catalog = catalog(&videos);
    let put = http
        .put(cluster.query_url("/v1/catalog/videos"))
        .json(&catalog)
        .send()
        .await
        .expect("svc-query reachable");
    assert!(put.status().is_success(), "PUT catalog: {}", put.status());

    // Quiescent: every user's sessions as svc-query answers them equal the
    // batch definition (polled: the stream stage catches up after restarts).
    assert_sessions_equal(&mut cluster, &http, &expected).await;

    let (from, to) = (
        hb_common::time::ms_to_rfc3339(0),
        hb_common::time::ms_to_rfc3339(hb_common::time::now_ms() + 86_400_000),
    );
    let royalties = get_json(
        &http,
        &cluster.query_url(&format!("/v1/reports/royalties?from={from}&to={to}")),
    )
    .await;
    assert_eq!(
        sorted_rows(&royalties),
        expected_royalties(&expected, &catalog),
        "royalties report"
    );
    cluster.assert_running();

    cluster.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_process_frozen_mid_load_for_many_idle_timeouts_changes_no_session() {
    let idle_timeout = Duration::from_secs(2);
    let settings = vec![
        ("HB_IDLE_TIMEOUT", format!("{}ms", idle_timeout.as_millis())),
        // The pause is not meant to cost the process its partitions.
        ("HB_KAFKA_SESSION_TIMEOUT", "30s".into()),
    ];
    let (mut cluster, _db, pool) = Cluster::prepare("hb-stall", settings).await;
    cluster.start_stream(0);
    cluster.start_ingest();
    cluster.start_ingest();
    cluster.start_query();

    let heartbeats = workload();
    let mut load = Load::connect(&cluster, &heartbeats).await;
    // Half the load, stored; then the stream process is paused for three
    // idle timeouts while the other half goes to Kafka, and let go.
    load.push(&cluster, load.chunks.len() / 2).await;
    wait_stored(&pool, load.distinct.len(), &mut cluster).await;
    cluster.freeze_stream(0);
    let frozen_at = Instant::now();
    load.push(&cluster, usize::MAX).await;
    tokio::time::sleep((3 * idle_timeout).saturating_sub(frozen_at.elapsed())).await;
    cluster.thaw_stream(0);
    assert_eq!(load.pushed, load.chunks.len(), "every chunk pushed");

    let events: Vec<Event> = heartbeats
        .iter()
        .map(|hb| Event::from_proto(hb).expect("valid heartbeat"))
        .collect();
    let expected = sessionize_all(events, SessionConfig::default().gap_ms);
    let http = reqwest::Client::new();
    assert_sessions_equal(&mut cluster, &http, &expected).await;
    let late: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM raw_heartbeats WHERE late")
        .fetch_one(&pool)
        .await
        .expect("raw rows readable");
    assert_eq!(late, 0, "nothing was late");

    cluster.finish().await;
}
