//! Helpers of the end-to-end tests: [`spawn_app`] starts the very mesh that
//! `hbmesh up` runs (ingest, stream, query) on port-0 listeners with a fresh
//! store, and [`TestApp`] talks to it through its public APIs only.
#![forbid(unsafe_code)]

use hb_common::config_from_env;
use hb_proto::v1::ingest_service_client::IngestServiceClient;
use hb_proto::v1::{Heartbeat, PushSummary};
use hbmesh::mesh::{start, MeshAddrs};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use svc_ingest::config::IngestConfig;
use svc_query::config::QueryConfig;
use svc_stream::config::StreamConfig;
use svc_stream::sessionizer::Session;
use tokio_util::sync::CancellationToken;

/// Cluster settings for [`spawn_app_with`]; empty means the embedded tier.
#[derive(Clone, Debug, Default)]
pub struct Tier {
    pub kafka_brokers: Option<String>,
    pub yugabyte_url: Option<String>,
}

/// A running mesh. Stopped (gracefully) by [`TestApp::stop`].
pub struct TestApp {
    pub addrs: MeshAddrs,
    pub data_dir: PathBuf,
    pub http: reqwest::Client,
    shutdown: CancellationToken,
    done: Option<Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>>,
}

/// A file of `fixtures/tls/`: a test CA (`ca.pem`) and a certificate for
/// `localhost` / `127.0.0.1` it signed (`server.pem`, `server.key`), valid
/// until 2126.
pub fn tls_fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/tls")
        .join(name)
}

/// Starts the embedded mesh on a fresh data directory.
pub async fn spawn_app(data_dir: PathBuf) -> TestApp {
    spawn_app_with(data_dir, Tier::default()).await
}

/// Starts the mesh with `tier` settings.
pub async fn spawn_app_with(data_dir: PathBuf, tier: Tier) -> TestApp {
    spawn_app_configured(data_dir, tier, |_, _, _| {}).await
}

/// Starts the mesh with `tier` settings and whatever `adjust` changes in the
/// test configuration (TLS, secrets, ...) before the services start.
pub async fn spawn_app_configured(
    data_dir: PathBuf,
    tier: Tier,
    adjust: impl FnOnce(&mut IngestConfig, &mut StreamConfig, &mut QueryConfig),
) -> TestApp {
    hb_common::telemetry::init_for_tests();
    let local = "127.0.0.1:0".parse().unwrap();
    let mut ingest: IngestConfig = config_from_env().unwrap();
    ingest.addr = local;
    ingest.metrics_addr = local;
    ingest.auth.secret = None;
    ingest.device_rate = 0;
    ingest.kafka.brokers = tier.kafka_brokers.clone();
    let mut stream: StreamConfig = config_from_env().unwrap();
    stream.metrics_addr = local;
    stream.store.data_dir = data_dir.clone();
    stream.kafka.brokers = tier.kafka_brokers.clone();
    stream.store.yugabyte_url = tier.yugabyte_url.clone();
    stream.scylla_nodes = None;
    stream.flush_interval = std::time::Duration::from_millis(50);
    let mut query: QueryConfig = config_from_env().unwrap();
    query.http_addr = local;
    query.grpc_addr = local;
    query.metrics_addr = local;
    query.store.data_dir = data_dir.clone();
    query.store.yugabyte_url = tier.yugabyte_url.clone();
    query.trino_url = None;
    query.auth.secret = None;
    adjust(&mut ingest, &mut stream, &mut query);
    let shutdown = CancellationToken::new();
    let (addrs, done) = start(ingest, stream, query, shutdown.clone())
        .await
        .expect("mesh starts");
    TestApp {
        addrs,
        data_dir,
        http: reqwest::Client::new(),
        shutdown,
        done: Some(Box::pin(done)),
    }
}

impl TestApp {
    pub async fn ingest_client(&self) -> IngestServiceClient<tonic::transport::Channel> {
        IngestServiceClient::connect(format!("http://{}", self.addrs.ingest))
            .await
            .expect("ingest reachable")
    }

    /// Sends `heartbeats` in one `Push` call.
    pub async fn push(&self, heartbeats: Vec<Heartbeat>) -> Result<PushSummary, tonic::Status> {
        let mut client = self.ingest_client().await;
        client
            .push(futures::stream::iter(heartbeats))
            .await
            .map(|r| r.into_inner())
    }

    /// GETs a query API path and returns the JSON body.
    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        let response = self
            .http
            .get(format!("http://{}{path}", self.addrs.query_http))
            .send()
            .await
            .expect("query reachable");
        assert!(
            response.status().is_success(),
            "GET {path}: {}",
            response.status()
        );
        response.json().await.expect("json body")
    }

    /// The sessions of `user_id` as the query API returns them.
    pub async fn user_sessions(&self, user_id: &str) -> Vec<Session> {
        let from = hb_common::time::ms_to_rfc3339(0);
        let to = hb_common::time::ms_to_rfc3339(hb_common::time::now_ms() + 86_400_000);
        let body = self
            .get_json(&format!("/v1/users/{user_id}/sessions?from={from}&to={to}"))
            .await;
        serde_json::from_value(body["rows"].clone()).expect("session rows")
    }

    /// Stops the mesh gracefully and waits for every service to finish.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(done) = self.done.take() {
            done.await.expect("mesh stops cleanly");
        }
    }
}
