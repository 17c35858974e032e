//! svc-ingest started with no Kafka runs the embedded default: the stream
//! stage in the same process, and an ack only once the SQLite commit holding
//! the heartbeats is done.

mod helpers;

use hb_proto::v1::ingest_service_client::IngestServiceClient;
use helpers::*;
use sqlx::Row;
use std::time::Duration;
use svc_ingest::config::IngestConfig;
use svc_ingest::IngestListeners;
use svc_stream::config::StreamConfig;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn without_kafka_acked_heartbeats_are_already_committed_to_the_embedded_store() {
    hb_common::telemetry::init_for_tests();
    let dir = tempfile::tempdir().unwrap();
    let mut ingest = IngestConfig::defaults();
    ingest.addr = "127.0.0.1:0".parse().unwrap();
    ingest.metrics_addr = "127.0.0.1:0".parse().unwrap();
    let mut stream = StreamConfig::defaults();
    stream.store.data_dir = dir.path().to_path_buf();
    let listeners = IngestListeners {
        grpc: TcpListener::bind(ingest.addr).await.unwrap(),
        metrics: TcpListener::bind(ingest.metrics_addr).await.unwrap(),
    };
    let addr = listeners.grpc.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(svc_ingest::embedded::run(
        ingest,
        stream,
        listeners,
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        shutdown.clone(),
    ));

    let mut client = loop {
        match IngestServiceClient::connect(format!("http://{addr}")).await {
            Ok(client) => break client,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let sent = heartbeats("d-embedded", 5);
    let summary = client
        .push(tokio_stream::iter(sent.clone()))
        .await
        .expect("push succeeds without a token: the embedded default runs open on loopback")
        .into_inner();
    assert_eq!(summary.accepted, 5);

    // Read right after the ack, while the service still runs.
    let pool = hb_common::store::open_sqlite(dir.path(), 1).await.unwrap();
    let raw: i64 = sqlx::query("SELECT COUNT(*) FROM raw_heartbeats")
        .fetch_one(&pool)
        .await
        .unwrap()
        .get(0);
    assert_eq!(raw, 5);
    let heartbeats: i64 =
        sqlx::query("SELECT COALESCE(SUM(heartbeats), 0) FROM sessions WHERE user_id = $1")
            .bind(&sent[0].user_id)
            .fetch_one(&pool)
            .await
            .unwrap()
            .get(0);
    assert_eq!(heartbeats, 5);

    shutdown.cancel();
    server
        .await
        .unwrap()
        .expect("ingest and stream stop cleanly");
}
