//! `hbmesh up`'s supervision: when one service fails, the whole mesh stops
//! (the others are shut down) and reports the failure, instead of serving on
//! with a part missing until the next signal.

use hb_common::config_from_env;
use hbmesh::mesh::start;
use std::time::Duration;
use svc_ingest::config::IngestConfig;
use svc_query::config::QueryConfig;
use svc_stream::config::StreamConfig;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_service_stops_the_whole_mesh_with_its_error() {
    hb_common::telemetry::init_for_tests();
    let dir = tempfile::tempdir().unwrap();
    let local = "127.0.0.1:0".parse().unwrap();
    let mut ingest: IngestConfig = config_from_env().unwrap();
    ingest.addr = local;
    ingest.metrics_addr = local;
    ingest.auth.secret = None;
    let mut stream: StreamConfig = config_from_env().unwrap();
    stream.metrics_addr = local;
    stream.store.data_dir = dir.path().to_path_buf();
    stream.kafka.brokers = None;
    stream.store.yugabyte_url = None;
    stream.scylla_nodes = None;
    let mut query: QueryConfig = config_from_env().unwrap();
    query.http_addr = local;
    query.grpc_addr = local;
    query.metrics_addr = local;
    query.store.data_dir = dir.path().to_path_buf();
    query.store.yugabyte_url = None;
    query.trino_url = None;
    query.auth.secret = None;
    // The query service refuses this as soon as it runs.
    query.query_timeout = Duration::ZERO;

    let shutdown = CancellationToken::new();
    let (addrs, done) = start(ingest, stream, query, shutdown.clone())
        .await
        .expect("the listeners bind");
    let result = tokio::time::timeout(Duration::from_secs(20), done)
        .await
        .expect("the mesh stops by itself once a service failed");
    let error = result.expect_err("the failure is reported");
    assert!(
        format!("{error:#}").contains("query") && format!("{error:#}").contains("HB_QUERY_TIMEOUT"),
        "{error:#}"
    );
    assert!(!shutdown.is_cancelled(), "the caller's token is left alone");
    // Ingest was stopped too: its port no longer answers.
    assert!(
        tokio::net::TcpStream::connect(addrs.ingest).await.is_err(),
        "ingest still listening"
    );
}
