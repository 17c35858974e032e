//! A broker outage under load (issue 15): the cluster tier's Kafka broker
//! stops answering for 30 s while devices keep pushing. Ingest must answer
//! `UNAVAILABLE` promptly (and go unready) instead of holding devices, must
//! never acknowledge what it could not make durable, and once the broker is
//! back the stream must resume exactly: every acknowledged heartbeat stored
//! once, the sessions equal to the batch definition over them.
//!
//! The outage is a freeze (SIGSTOP, then SIGCONT 30 s later) of a broker of
//! this test's own: the test broker (`tansu`) keeps its data in memory only,
//! so a kill and restart would lose what was acknowledged; a frozen broker
//! is what a partition or a stalled node looks like to its clients (open
//! connections, no answers) and keeps its data.
//!
//! Devices' clocks run at wall speed, so what they resend after the outage
//! is at most as late as the outage was long (within `HB_ALLOWED_LATENESS`).
//! (With compressed event time the resends arrive minutes late, and svc-stream
//! only mirrors such heartbeats raw: SPEC 5.6's late lane, which must merge
//! them into their sessions, is not implemented; that is its own bug, not an
//! outage one.)

use hb_e2e_tests::{spawn_app_configured, Tier};
use hb_proto::v1::ingest_service_client::IngestServiceClient;
use hb_proto::v1::Heartbeat;
use hb_testkit::broker::{create_topic, PrivateBroker};
use hb_testkit::db::TestDb;
use hb_testkit::fleet::{Fleet, FleetConfig};
use sqlx::Row;
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use svc_stream::sessionizer::{sessionize_all, Event, Session, SessionConfig};

const OUTAGE: Duration = Duration::from_secs(30);
/// Heartbeats per `Push` call, and the offered rate over all devices.
const BATCH: usize = 25;
const RATE_PER_S: f64 = 400.0;
/// Concurrent callers (device gateways), each with one call open at a time.
const CALLERS: usize = 4;
/// How long a device waits before resending a batch that was not acknowledged.
const RETRY_AFTER: Duration = Duration::from_millis(300);
/// Ingest's delivery timeout (`HB_KAFKA_TIMEOUT`, its default).
const KAFKA_TIMEOUT: Duration = Duration::from_secs(10);

/// One `Push` call as a device saw it.
#[derive(Clone, Debug)]
struct Call {
    started: Instant,
    took: Duration,
    /// `None`: acknowledged; else the status code.
    failed: Option<tonic::Code>,
    message: String,
}

/// The fleet, what was not acknowledged yet, and what was.
struct Devices {
    fleet: Fleet,
    generated: usize,
    /// Batches to resend, oldest first, each with when it may go again.
    pending: VecDeque<(Instant, Vec<Heartbeat>)>,
    acknowledged: Vec<Heartbeat>,
    calls: Vec<Call>,
}

impl Devices {
    /// The next batch to send: a due resend first, else a new batch while the
    /// offered rate allows and new traffic is still wanted.
    fn next(&mut self, begun: Instant, generate: bool) -> Option<Vec<Heartbeat>> {
        let now = Instant::now();
        if self.pending.front().is_some_and(|(due, _)| *due <= now) {
            return self.pending.pop_front().map(|(_, batch)| batch);
        }
        let allowed = (begun.elapsed().as_secs_f64() * RATE_PER_S) as usize;
        if generate && self.generated + BATCH <= allowed {
            self.generated += BATCH;
            return Some(self.fleet.heartbeats(BATCH).collect());
        }
        None
    }
}

/// A device gateway: pushes batches until told to stop generating and
/// nothing is left unacknowledged (or `give_up`).
async fn caller(
    mut client: IngestServiceClient<tonic::transport::Channel>,
    devices: Arc<Mutex<Devices>>,
    begun: Instant,
    generate: Arc<AtomicBool>,
    give_up: Arc<AtomicBool>,
) {
    while !give_up.load(Ordering::Relaxed) {
        let next = {
            let mut devices = devices.lock().unwrap();
            let generating = generate.load(Ordering::Relaxed);
            match devices.next(begun, generating) {
                Some(batch) => Some(batch),
                None if !generating && devices.pending.is_empty() => return,
                None => None,
            }
        };
        let Some(batch) = next else {
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        };
        let started = Instant::now();
        // A call that hangs past this is a bug of its own (reported as such).
        let outcome = tokio::time::timeout(
            KAFKA_TIMEOUT * 3,
            client.push(futures::stream::iter(batch.clone())),
        )
        .await
        .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("no answer within 30 s")));
        let took = started.elapsed();
        let failed = {
            let mut devices = devices.lock().unwrap();
            match outcome {
                Ok(summary) => {
                    let summary = summary.into_inner();
                    assert_eq!(summary.rejected, 0, "rejections: {:?}", summary.rejections);
                    assert_eq!(
                        (summary.accepted + summary.duplicates) as usize,
                        batch.len(),
                        "{summary:?}"
                    );
                    devices.acknowledged.extend(batch);
                    devices.calls.push(Call {
                        started,
                        took,
                        failed: None,
                        message: String::new(),
                    });
                    false
                }
                Err(status) => {
                    devices.calls.push(Call {
                        started,
                        took,
                        failed: Some(status.code()),
                        message: status.message().to_string(),
                    });
                    devices
                        .pending
                        .push_back((Instant::now() + RETRY_AFTER, batch));
                    true
                }
            }
        };
        if failed {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Ingest's `/readyz`: true on 200.
async fn ready(http: &reqwest::Client, metrics: std::net::SocketAddr) -> bool {
    http.get(format!("http://{metrics}/readyz"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

/// Polls readiness every 100 ms until `until`; returns each change as
/// (when, ready).
async fn watch_readiness(
    http: reqwest::Client,
    metrics: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
) -> Vec<(Instant, bool)> {
    let mut changes: Vec<(Instant, bool)> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let now = ready(&http, metrics).await;
        if changes.last().map(|(_, r)| *r) != Some(now) {
            changes.push((Instant::now(), now));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    changes
}

fn secs(d: Duration) -> String {
    format!("{:.2}s", d.as_secs_f64())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_frozen_for_30_s_under_load_loses_nothing_acknowledged_and_the_stream_resumes_exactly(
) {
    let broker = PrivateBroker::tansu()
        .await
        .expect("a private tansu broker");
    let (topic, dlq_topic) = ("heartbeats", "heartbeats-dlq");
    create_topic(&broker.addr, topic, 2).await.expect("topic");
    create_topic(&broker.addr, dlq_topic, 1)
        .await
        .expect("dlq topic");
    let (db, pool) = TestDb::create().await.expect("a test database");
    let dir = tempfile::tempdir().unwrap();
    // Ingest's metrics listener (readiness) on a port known here.
    let ingest_metrics = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let app = spawn_app_configured(
        dir.path().to_path_buf(),
        Tier {
            kafka_brokers: Some(broker.addr.clone()),
            yugabyte_url: Some(db.url.clone()),
        },
        |ingest, stream, _| {
            ingest.metrics_addr = ingest_metrics;
            ingest.kafka.topic = topic.to_string();
            ingest.dlq_topic = dlq_topic.to_string();
            ingest.kafka_timeout = KAFKA_TIMEOUT;
            stream.kafka.topic = topic.to_string();
            stream.kafka_group = "hb-outage".to_string();
        },
    )
    .await;
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ready(&http, ingest_metrics).await {
        assert!(Instant::now() < deadline, "ingest not ready within 10 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let devices = Arc::new(Mutex::new(Devices {
        // Device clocks at wall speed: RATE_PER_S heartbeats a second from
        // devices beating every 5 s. What a device resends after the outage
        // is then as late as the outage was long (well within the allowed
        // lateness of 2 min), as in the field.
        fleet: Fleet::new(FleetConfig {
            devices: (RATE_PER_S * 5.0) as usize,
            users: 400,
            videos: 20,
            ads: 5,
            seed: 15,
            start_ms: hb_common::time::now_ms() - 60_000,
            ..FleetConfig::default()
        }),
        generated: 0,
        pending: VecDeque::new(),
        acknowledged: Vec::new(),
        calls: Vec::new(),
    }));
    let (generate, give_up, stop_watch) = (
        Arc::new(AtomicBool::new(true)),
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let watcher = tokio::spawn(watch_readiness(
        http.clone(),
        ingest_metrics,
        stop_watch.clone(),
    ));
    let begun = Instant::now();
    let callers: Vec<_> = {
        let mut callers = Vec::new();
        for _ in 0..CALLERS {
            callers.push(tokio::spawn(caller(
                app.ingest_client().await,
                devices.clone(),
                begun,
                generate.clone(),
                give_up.clone(),
            )));
        }
        callers
    };

    // Load for a few seconds, and the stream stage consuming it (its group
    // joined), so that the outage hits both ends.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let consuming_by = Instant::now() + Duration::from_secs(20);
    loop {
        let rows: i64 = sqlx::query("SELECT COUNT(*) FROM raw_heartbeats")
            .fetch_one(&pool)
            .await
            .unwrap()
            .get(0);
        if rows > 0 {
            break;
        }
        assert!(
            Instant::now() < consuming_by,
            "the stream stage stored nothing within {} of the load",
            secs(begun.elapsed())
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let consuming_after = begun.elapsed();
    let before = devices.lock().unwrap().acknowledged.len();
    assert!(before > 0, "nothing acknowledged before the outage");
    broker.freeze().expect("SIGSTOP the broker");
    let frozen = Instant::now();
    tokio::time::sleep(OUTAGE).await;
    broker.thaw().expect("SIGCONT the broker");
    let thawed = Instant::now();
    tokio::time::sleep(Duration::from_secs(5)).await;

    // Devices stop generating and resend what is still unacknowledged.
    generate.store(false, Ordering::Relaxed);
    let resent_by = Instant::now() + Duration::from_secs(20);
    for mut caller in callers {
        let left = resent_by.saturating_duration_since(Instant::now());
        if tokio::time::timeout(left, &mut caller).await.is_err() {
            give_up.store(true, Ordering::Relaxed);
            caller.abort();
            let _ = caller.await;
        }
    }
    stop_watch.store(true, Ordering::Relaxed);
    let readiness = watcher.await.unwrap();
    let devices = std::mem::replace(
        &mut *devices.lock().unwrap(),
        Devices {
            fleet: Fleet::new(FleetConfig::default()),
            generated: 0,
            pending: VecDeque::new(),
            acknowledged: Vec::new(),
            calls: Vec::new(),
        },
    );
    // ---- What devices saw during the outage ----
    let calls = &devices.calls;
    let failed: Vec<&Call> = calls.iter().filter(|c| c.failed.is_some()).collect();
    let down_at = readiness
        .iter()
        .find(|(at, ready)| *at >= frozen && !ready)
        .map(|(at, _)| *at);
    let up_at = readiness
        .iter()
        .find(|(at, ready)| *at >= thawed && *ready)
        .map(|(at, _)| *at);
    let first_ack_after = calls
        .iter()
        .filter(|c| c.failed.is_none() && c.started >= thawed)
        .map(|c| c.started + c.took)
        .min();
    let during: Vec<&Call> = calls
        .iter()
        .filter(|c| c.started >= frozen && c.started < thawed)
        .collect();
    let slowest_fail = failed.iter().map(|c| c.took).max().unwrap_or_default();
    let after_down: Vec<&&Call> = failed
        .iter()
        .filter(|c| down_at.is_some_and(|down| c.started >= down) && c.started < thawed)
        .collect();
    let slowest_after_down = after_down.iter().map(|c| c.took).max().unwrap_or_default();
    eprintln!(
        "outage: stream consuming {} into the load; {} calls ({} acknowledged before the freeze), {} failed ({} started during the freeze); \
         readiness down {} after the freeze, up {} after the thaw; slowest failing call {}, \
         slowest once unready {} ({} calls); first ack {} after the thaw; {} heartbeats acknowledged; \
         readiness changes {:?}",
        secs(consuming_after),
        calls.len(),
        before,
        failed.len(),
        during.len(),
        down_at.map(|at| secs(at - frozen)).unwrap_or("never".into()),
        up_at.map(|at| secs(at - thawed)).unwrap_or("never".into()),
        secs(slowest_fail),
        secs(slowest_after_down),
        after_down.len(),
        first_ack_after
            .map(|at| secs(at - thawed))
            .unwrap_or("never".into()),
        devices.acknowledged.len(),
        readiness
            .iter()
            .map(|(at, ready)| (format!("{:+.2}s", at.duration_since(begun).as_secs_f64()), *ready))
            .collect::<Vec<_>>(),
    );
    let messages: std::collections::BTreeSet<&str> =
        failed.iter().map(|c| c.message.as_str()).collect();
    eprintln!("failure messages: {messages:?}");
    assert!(
        devices.pending.is_empty(),
        "{} batches still unacknowledged 20 s after the load stopped (broker back {} ago); last calls: {:?}",
        devices.pending.len(),
        secs(thawed.elapsed()),
        devices.calls.iter().rev().take(5).collect::<Vec<_>>()
    );

    for call in &failed {
        assert_eq!(
            call.failed,
            Some(tonic::Code::Unavailable),
            "a failed push must be UNAVAILABLE: {call:?}"
        );
        assert!(
            call.took <= KAFKA_TIMEOUT + Duration::from_secs(2),
            "a failing push held the device past the delivery timeout: {call:?}"
        );
    }
    // Calls that started well inside the freeze cannot have been acknowledged.
    let settled = frozen + Duration::from_millis(500);
    for call in calls
        .iter()
        .filter(|c| c.started >= settled && c.started + c.took < thawed)
    {
        assert!(
            call.failed.is_some(),
            "a push was acknowledged while the broker was frozen: {call:?}"
        );
    }
    assert!(!during.is_empty(), "no call during the freeze");
    let down_at = down_at.expect("ingest never went unready during the freeze");
    assert!(
        down_at - frozen <= Duration::from_secs(5),
        "ingest went unready only {} after the freeze",
        secs(down_at - frozen)
    );
    assert!(!after_down.is_empty(), "no call while ingest was unready");
    assert!(
        slowest_after_down <= Duration::from_secs(1),
        "once unready, ingest must refuse at once; slowest took {}",
        secs(slowest_after_down)
    );
    let up_at = up_at.expect("ingest never ready again after the thaw");
    assert!(
        up_at - thawed <= Duration::from_secs(10),
        "ingest ready again only {} after the thaw",
        secs(up_at - thawed)
    );
    assert!(
        first_ack_after.is_some_and(|at| at - thawed <= Duration::from_secs(10)),
        "no push acknowledged within 10 s of the thaw"
    );

    // ---- Nothing acknowledged lost, nothing counted twice ----
    let last_ack = calls
        .iter()
        .filter(|c| c.failed.is_none())
        .map(|c| c.started + c.took)
        .max()
        .unwrap_or(thawed);
    let acknowledged: HashSet<&str> = devices
        .acknowledged
        .iter()
        .map(|hb| hb.event_id.as_str())
        .collect();
    // Quiescent: every raw row written and every session counting it (late
    // heartbeats, resent long after newer ones, reach their sessions
    // through the late lane, after their raw rows).
    let quiet_by = Instant::now() + Duration::from_secs(30);
    let (stored, total) = loop {
        let stored: HashSet<String> = sqlx::query("SELECT event_id FROM raw_heartbeats")
            .fetch_all(&pool)
            .await
            .unwrap()
            .into_iter()
            .map(|row| row.get(0))
            .collect();
        let total: i64 = sqlx::query("SELECT COALESCE(SUM(heartbeats), 0)::BIGINT FROM sessions")
            .fetch_one(&pool)
            .await
            .unwrap()
            .get(0);
        let caught_up = stored.len() >= acknowledged.len() && total as usize >= acknowledged.len();
        if caught_up || Instant::now() > quiet_by {
            break (stored, total);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!(
        "quiescent {} after the last ack: {} raw rows, {total} session heartbeats, {} acknowledged",
        secs(last_ack.elapsed()),
        stored.len(),
        acknowledged.len()
    );
    let lost: Vec<&&str> = acknowledged
        .iter()
        .filter(|id| !stored.contains(**id))
        .take(10)
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged heartbeats not stored 30 s after the load, e.g. {lost:?}",
        acknowledged
            .iter()
            .filter(|id| !stored.contains(**id))
            .count(),
        acknowledged.len()
    );
    // Every batch that failed was resent until acknowledged: nothing else
    // can be stored.
    assert_eq!(
        stored.len(),
        acknowledged.len(),
        "stored beyond the acknowledged"
    );

    let events: Vec<Event> = devices
        .acknowledged
        .iter()
        .map(|hb| Event::from_proto(hb).unwrap())
        .collect();
    let mut expected: BTreeMap<String, Vec<Session>> = BTreeMap::new();
    for s in sessionize_all(events, SessionConfig::default().gap_ms) {
        expected.entry(s.user_id.clone()).or_default().push(s);
    }
    // Every user's sessions as the query API serves them, against the
    // definition; the differences are collected, so a failure shows them all.
    let mut differences = Vec::new();
    for (user, mut sessions) in expected {
        let mut stored = app.user_sessions(&user).await;
        let order = |s: &Session| (s.video_id.clone(), s.start_ms);
        stored.sort_by_key(order);
        sessions.sort_by_key(order);
        if stored != sessions {
            let brief = |list: &[Session]| {
                list.iter()
                    .map(|s| {
                        format!(
                            "{}@{}..{}:{}hb",
                            s.video_id, s.start_ms, s.end_ms, s.heartbeats
                        )
                    })
                    .collect::<Vec<_>>()
            };
            differences.push(format!(
                "{user}: stored {:?} expected {:?}",
                brief(&stored),
                brief(&sessions)
            ));
        }
    }
    let late: i64 = sqlx::query("SELECT COUNT(*) FROM raw_heartbeats WHERE late")
        .fetch_one(&pool)
        .await
        .unwrap()
        .get(0);
    assert!(
        differences.is_empty() && total as usize == acknowledged.len(),
        "sessions differ from the definition over the acknowledged heartbeats: \
         {total} session heartbeats for {} acknowledged ({late} raw rows late); \
         {} users differ:\n{}",
        acknowledged.len(),
        differences.len(),
        differences.join("\n")
    );
    app.stop().await;
    drop(broker);
}
