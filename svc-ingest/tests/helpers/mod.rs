//! Shared harness for svc-ingest's end-to-end tests: spawns the real service
//! on port-0 listeners with a publisher chosen by the test, and offers typed
//! client calls. Quiet unless `TEST_LOG` is set.
// Each test binary uses a different subset of the harness.
#![allow(dead_code)]

use async_trait::async_trait;
use hb_common::auth::{Role, TokenKey};
use hb_common::time::{ms_to_timestamp, now_ms};
use hb_proto::v1::ingest_service_client::IngestServiceClient;
use hb_proto::v1::{Heartbeat, PlaybackState, PushAck, PushSummary};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use svc_ingest::config::IngestConfig;
use svc_ingest::publisher::{DeadLetter, PublishError, Publisher};
use svc_ingest::{IngestListeners, PublishTarget};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::{Request, Status, Streaming};

/// Secret the test services sign tokens with.
pub const SECRET: &str = "test-secret";

/// How long any single wait in a test may take before it counts as a hang.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// A running svc-ingest and a client connection to it.
pub struct TestApp {
    pub grpc_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub channel: Channel,
    pub shutdown: CancellationToken,
    server: Option<JoinHandle<anyhow::Result<()>>>,
    key: TokenKey,
}

/// Starts svc-ingest with `publisher` and the default configuration
/// (auth on, default device limits).
pub async fn spawn_app(publisher: Arc<dyn Publisher>) -> TestApp {
    spawn_app_with(publisher, |_| {}).await
}

/// Starts svc-ingest with `publisher`, after `adjust` has tuned the config.
pub async fn spawn_app_with(
    publisher: Arc<dyn Publisher>,
    adjust: impl FnOnce(&mut IngestConfig),
) -> TestApp {
    try_spawn_app_with(publisher, adjust)
        .await
        .expect("svc-ingest starts")
}

/// Like [`spawn_app_with`], but hands back a start-up failure.
pub async fn try_spawn_app_with(
    publisher: Arc<dyn Publisher>,
    adjust: impl FnOnce(&mut IngestConfig),
) -> anyhow::Result<TestApp> {
    hb_common::telemetry::init_for_tests();
    let mut config = IngestConfig::defaults();
    config.addr = "127.0.0.1:0".parse().expect("addr");
    config.metrics_addr = "127.0.0.1:0".parse().expect("addr");
    config.auth.secret = Some(hb_common::settings::Secret::new(SECRET));
    adjust(&mut config);
    let listeners = IngestListeners {
        grpc: TcpListener::bind(config.addr).await?,
        metrics: TcpListener::bind(config.metrics_addr).await?,
    };
    let grpc_addr = listeners.grpc.local_addr()?;
    let metrics_addr = listeners.metrics.local_addr()?;
    let shutdown = CancellationToken::new();
    let mut server = tokio::spawn(svc_ingest::run(
        config,
        PublishTarget::Custom(publisher),
        listeners,
        shutdown.clone(),
    ));
    let channel = Channel::from_shared(format!("http://{grpc_addr}"))?;
    // Start-up may fail before the listener serves (e.g. a broker check):
    // surface that error rather than a connection refusal.
    let channel = tokio::select! {
        outcome = &mut server => {
            return Err(match outcome {
                Ok(Ok(())) => anyhow::anyhow!("svc-ingest returned before serving"),
                Ok(Err(err)) => err,
                Err(join) => join.into(),
            });
        }
        channel = connect_when_up(channel) => channel?,
    };
    Ok(TestApp {
        grpc_addr,
        metrics_addr,
        channel,
        shutdown,
        server: Some(server),
        key: TokenKey::new(SECRET),
    })
}

async fn connect_when_up(endpoint: tonic::transport::Endpoint) -> anyhow::Result<Channel> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match endpoint.connect().await {
            Ok(channel) => return Ok(channel),
            Err(err) if tokio::time::Instant::now() > deadline => return Err(err.into()),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

impl TestApp {
    /// A token for `role`, valid for an hour.
    pub fn token(&self, role: Role) -> String {
        self.key.mint("test", &role, now_ms() / 1_000 + 3_600)
    }

    /// A gateway token: may send for any device.
    pub fn gateway_token(&self) -> String {
        self.token(Role::Gateway)
    }

    /// A token for `role` that expired a minute ago.
    pub fn expired_token(&self, role: Role) -> String {
        self.key.mint("test", &role, now_ms() / 1_000 - 60)
    }

    pub fn client(&self) -> IngestServiceClient<Channel> {
        IngestServiceClient::new(self.channel.clone()).max_decoding_message_size(1 << 20)
    }

    /// One `Push` call carrying `heartbeats`, with `token` (if any) as bearer.
    pub async fn push(
        &self,
        token: Option<&str>,
        heartbeats: Vec<Heartbeat>,
    ) -> Result<PushSummary, Status> {
        let request = authorized(Request::new(tokio_stream::iter(heartbeats)), token);
        tokio::time::timeout(PATIENCE, self.client().push(request))
            .await
            .expect("push answers in time")
            .map(tonic::Response::into_inner)
    }

    /// Opens a bidirectional `Stream` call.
    pub async fn open_stream(&self, token: Option<&str>) -> Result<DeviceStream, Status> {
        let (tx, rx) = mpsc::channel(1024);
        let request = authorized(Request::new(ReceiverStream::new(rx)), token);
        let acks = tokio::time::timeout(PATIENCE, self.client().stream(request))
            .await
            .expect("stream opens in time")?
            .into_inner();
        Ok(DeviceStream { tx: Some(tx), acks })
    }

    /// The Prometheus text of the metrics endpoint.
    pub async fn metrics(&self) -> String {
        http_get(self.metrics_addr, "/metrics").await
    }

    /// Cancels the service and waits for `run` to return.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        let server = self.server.take().expect("running");
        tokio::time::timeout(PATIENCE, server)
            .await
            .expect("run returns after shutdown")
            .expect("run does not panic")
    }

    /// Waits for `run` to return (after someone cancelled `shutdown`).
    pub async fn join(&mut self, within: Duration) -> anyhow::Result<()> {
        let server = self.server.as_mut().expect("running");
        let outcome = tokio::time::timeout(within, server)
            .await
            .expect("run returns in time")
            .expect("run does not panic");
        self.server = None;
        outcome
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Adds `authorization: Bearer <token>` when a token is given.
pub fn authorized<T>(mut request: Request<T>, token: Option<&str>) -> Request<T> {
    if let Some(token) = token {
        let value: MetadataValue<_> = format!("Bearer {token}").parse().expect("ascii token");
        request.metadata_mut().insert("authorization", value);
    }
    request
}

/// The device side of a bidirectional call.
pub struct DeviceStream {
    pub tx: Option<mpsc::Sender<Heartbeat>>,
    pub acks: Streaming<PushAck>,
}

impl DeviceStream {
    pub async fn send(&self, heartbeats: impl IntoIterator<Item = Heartbeat>) {
        let tx = self.tx.as_ref().expect("stream still open");
        for hb in heartbeats {
            tx.send(hb).await.expect("the call accepts heartbeats");
        }
    }

    /// Ends the device's side of the call.
    pub fn close(&mut self) {
        self.tx = None;
    }

    /// The next ack, or the status the call ended with (`Ok(None)` when it
    /// ended cleanly).
    pub async fn next_ack(&mut self) -> Result<Option<PushAck>, Status> {
        tokio::time::timeout(PATIENCE, self.acks.message())
            .await
            .expect("an ack or the end of the call arrives in time")
    }

    /// Reads acks until one covers `index`; returns every ack read.
    pub async fn acks_until(&mut self, index: i64) -> Vec<PushAck> {
        let mut acks = Vec::new();
        loop {
            let ack = self
                .next_ack()
                .await
                .expect("the call stays healthy")
                .expect("the call stays open");
            let covered = ack.acked_index >= index;
            acks.push(ack);
            if covered {
                return acks;
            }
        }
    }

    /// Reads acks until the call ends; returns them and the final status.
    pub async fn acks_until_end(&mut self) -> (Vec<PushAck>, Result<(), Status>) {
        let mut acks = Vec::new();
        loop {
            match self.next_ack().await {
                Ok(Some(ack)) => acks.push(ack),
                Ok(None) => return (acks, Ok(())),
                Err(status) => return (acks, Err(status)),
            }
        }
    }
}

static SEQUENCE: AtomicU64 = AtomicU64::new(0);

/// A fresh, unique event id.
pub fn event_id() -> String {
    format!(
        "ev-{}-{}",
        std::process::id(),
        SEQUENCE.fetch_add(1, Ordering::Relaxed)
    )
}

/// A valid heartbeat from `device` of user `u-<device>`, a second old.
pub fn heartbeat(device: &str) -> Heartbeat {
    Heartbeat {
        event_id: event_id(),
        device_id: device.to_string(),
        user_id: format!("u-{device}"),
        video_id: "v-1".to_string(),
        event_time: Some(ms_to_timestamp(now_ms() - 1_000)),
        position_ms: 42_000,
        state: PlaybackState::Playing as i32,
        platform: "test".to_string(),
        ..Default::default()
    }
}

/// `count` valid heartbeats from `device`.
pub fn heartbeats(device: &str, count: usize) -> Vec<Heartbeat> {
    (0..count).map(|_| heartbeat(device)).collect()
}

/// Minimal HTTP/1.1 GET returning the body (the ops endpoint is plain HTTP).
pub async fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("metrics endpoint");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = String::new();
    tokio::time::timeout(PATIENCE, stream.read_to_string(&mut response))
        .await
        .expect("metrics answer in time")
        .expect("read");
    match response.split_once("\r\n\r\n") {
        Some((_, body)) => body.to_string(),
        None => response,
    }
}

/// A publisher that stores what it is given, and can be told to fail or to
/// hold batches until released.
#[derive(Clone)]
pub struct RecordingPublisher {
    inner: Arc<Recording>,
}

struct Recording {
    heartbeats: Mutex<Vec<Heartbeat>>,
    dead_letters: Mutex<Vec<DeadLetter>>,
    failing: AtomicBool,
    held_tx: watch::Sender<bool>,
    batches_started_tx: watch::Sender<u64>,
}

impl Default for RecordingPublisher {
    fn default() -> Self {
        RecordingPublisher {
            inner: Arc::new(Recording {
                heartbeats: Mutex::default(),
                dead_letters: Mutex::default(),
                failing: AtomicBool::new(false),
                held_tx: watch::channel(false).0,
                batches_started_tx: watch::channel(0).0,
            }),
        }
    }
}

impl RecordingPublisher {
    pub fn new() -> RecordingPublisher {
        RecordingPublisher::default()
    }

    pub fn target(&self) -> Arc<dyn Publisher> {
        Arc::new(self.clone())
    }

    /// Heartbeats persisted so far, in publish order.
    pub fn heartbeats(&self) -> Vec<Heartbeat> {
        self.inner.heartbeats.lock().expect("lock").clone()
    }

    pub fn event_ids(&self) -> Vec<String> {
        self.heartbeats()
            .into_iter()
            .map(|hb| hb.event_id)
            .collect()
    }

    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        self.inner.dead_letters.lock().expect("lock").clone()
    }

    /// From now on every publish fails (and persists nothing).
    pub fn fail(&self) {
        self.inner.failing.store(true, Ordering::SeqCst);
    }

    /// Batches wait (unpersisted) until [`RecordingPublisher::release`].
    pub fn hold(&self) {
        self.inner.held_tx.send_replace(true);
    }

    pub fn release(&self) {
        self.inner.held_tx.send_replace(false);
    }

    /// Waits until at least `count` publish calls have started.
    pub async fn started(&self, count: u64) {
        let mut rx = self.inner.batches_started_tx.subscribe();
        tokio::time::timeout(PATIENCE, rx.wait_for(|started| *started >= count))
            .await
            .expect("publish called in time")
            .expect("publisher alive");
    }
}

#[async_trait]
impl Publisher for RecordingPublisher {
    async fn publish(&self, batch: Vec<Heartbeat>) -> Result<(), PublishError> {
        self.inner.batches_started_tx.send_modify(|n| *n += 1);
        let mut held = self.inner.held_tx.subscribe();
        held.wait_for(|held| !*held)
            .await
            .map_err(|_| PublishError::Unavailable("gone".into()))?;
        if self.inner.failing.load(Ordering::SeqCst) {
            return Err(PublishError::Unavailable("injected failure".into()));
        }
        self.inner.heartbeats.lock().expect("lock").extend(batch);
        Ok(())
    }

    async fn dead_letter(&self, letters: Vec<DeadLetter>) -> Result<(), PublishError> {
        self.inner
            .dead_letters
            .lock()
            .expect("lock")
            .extend(letters);
        Ok(())
    }

    fn name(&self) -> &'static str {
        "recording"
    }
}
