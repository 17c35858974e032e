//! The svc-ingest binary publishes to Kafka only: started without a broker it
//! refuses at once, as a configuration error, and names the command that runs
//! the mesh without Kafka.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn without_a_broker_svc_ingest_refuses_to_start_and_points_to_hbmesh_up() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_svc-ingest"))
        .env_remove("HB_KAFKA_BROKERS")
        .env_remove("HB_AUTH_SECRET")
        .env("HB_INGEST_ADDR", "127.0.0.1:0")
        .env("HB_INGEST_METRICS_ADDR", "127.0.0.1:0")
        .env("HB_LOG", "error")
        .env("HB_LOG_FORMAT", "text")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("svc-ingest starts");
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().expect("svc-ingest status").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("svc-ingest without a broker kept running");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().expect("svc-ingest output");
    let stderr = String::from_utf8_lossy(&output.stderr);

    assert_eq!(
        output.status.code(),
        Some(hb_common::EXIT_CONFIG),
        "exit status; stderr:\n{stderr}"
    );
    assert!(stderr.contains("HB_KAFKA_BROKERS"), "{stderr}");
    assert!(stderr.contains("hbmesh up"), "{stderr}");
}
