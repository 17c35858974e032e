//! `hbmesh up` as an operator runs it: a configuration it cannot serve
//! safely is refused at once with exit code 64, before anything listens.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs `hbmesh up` with every address on loopback port 0 but `overrides`,
/// no secret, and a fresh data directory; returns its exit code and stderr,
/// or None when it was still running after `limit` (then it is killed).
fn up_with(overrides: &[(&str, &str)], limit: Duration) -> Option<(i32, String)> {
    up_with_args(&[], overrides, limit)
}

/// [`up_with`], with `args` after `up`.
fn up_with_args(
    args: &[&str],
    overrides: &[(&str, &str)],
    limit: Duration,
) -> Option<(i32, String)> {
    let data = tempfile::tempdir().unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_hbmesh"));
    command
        .arg("up")
        .args(args)
        .env_remove("HB_DEMO_CA_CERT")
        .env("HB_DATA_DIR", data.path())
        .env_remove("HB_AUTH_SECRET")
        .env_remove("HB_KAFKA_BROKERS")
        .env_remove("HB_YUGABYTE_URL")
        .env_remove("HB_SCYLLA_NODES")
        .env_remove("HB_TRINO_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for name in [
        "HB_INGEST_ADDR",
        "HB_QUERY_HTTP_ADDR",
        "HB_QUERY_GRPC_ADDR",
        "HB_INGEST_METRICS_ADDR",
        "HB_STREAM_METRICS_ADDR",
        "HB_QUERY_METRICS_ADDR",
    ] {
        command.env(name, "127.0.0.1:0");
    }
    for (name, value) in overrides {
        command.env(name, value);
    }
    let mut child = command.spawn().expect("hbmesh starts");
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
            return Some((status.code().unwrap_or(-1), stderr));
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_non_loopback_listener_without_a_secret_is_refused_at_once_with_exit_64() {
    for name in [
        "HB_INGEST_ADDR",
        "HB_QUERY_HTTP_ADDR",
        "HB_QUERY_GRPC_ADDR",
        "HB_INGEST_METRICS_ADDR",
        "HB_STREAM_METRICS_ADDR",
        "HB_QUERY_METRICS_ADDR",
    ] {
        let (code, stderr) = up_with(&[(name, "0.0.0.0:0")], Duration::from_secs(20))
            .unwrap_or_else(|| panic!("with {name}=0.0.0.0:0 `hbmesh up` kept running"));
        assert_eq!(code, 64, "{name}: {stderr}");
        assert!(
            stderr.contains("refusing") && stderr.contains(name),
            "{name}: {stderr}"
        );
    }
}

#[test]
fn a_demo_against_a_mesh_serving_tls_without_the_ca_to_trust_is_refused_with_exit_64() {
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/tls");
    let (cert, key) = (
        format!("{fixtures}/server.pem"),
        format!("{fixtures}/server.key"),
    );
    let (code, stderr) = up_with_args(
        &["--demo"],
        &[("HB_TLS_CERT", &cert), ("HB_TLS_KEY", &key)],
        Duration::from_secs(20),
    )
    .expect("`hbmesh up --demo` with TLS and no CA kept running");
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("--demo-ca-cert"), "{stderr}");
}
