//! `hbmesh simulate` as an operator (or a CI log, or `up --demo` under a
//! supervisor) sees it with no terminal: plain progress lines on stderr as
//! the run goes, and the closing summary on stdout.

use hb_common::config_from_env;
use hbmesh::mesh::start;
use std::process::Command;
use svc_ingest::config::IngestConfig;
use svc_query::config::QueryConfig;
use svc_stream::config::StreamConfig;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_terminal_simulate_prints_progress_lines_and_a_summary() {
    let dir = tempfile::tempdir().unwrap();
    let local = "127.0.0.1:0".parse().unwrap();
    let mut ingest: IngestConfig = config_from_env().unwrap();
    ingest.addr = local;
    ingest.metrics_addr = local;
    ingest.auth.secret = None;
    ingest.device_rate = 0;
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
    let shutdown = CancellationToken::new();
    let (addrs, done) = start(ingest, stream, query, shutdown.clone())
        .await
        .unwrap();

    let target = format!("http://{}", addrs.ingest);
    let output = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_hbmesh"))
            .args(["simulate", "--devices", "40", "--rate", "100"])
            .args(["--duration", "6s", "--seed", "3", "--target", &target])
            .env_remove("HB_AUTH_SECRET")
            .env_remove("HB_TOKEN")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    shutdown.cancel();
    done.await.unwrap();

    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    let progress: Vec<&str> = stderr
        .lines()
        .filter(|line| line.starts_with("simulate:") && line.contains("acked"))
        .collect();
    assert!(
        !progress.is_empty(),
        "no progress line on stderr:\n{stderr}"
    );
    assert!(progress[0].contains("sent"), "{}", progress[0]);
    // The closing summary names every figure of SPEC 10.
    for figure in [
        "sent",
        "acknowledged",
        "rejected",
        "throughput",
        "heartbeats/s acknowledged",
        "ack latency",
        "p50",
        "p99",
    ] {
        assert!(
            stdout.contains(figure),
            "no {figure:?} in the summary:\n{stdout}"
        );
    }
}
