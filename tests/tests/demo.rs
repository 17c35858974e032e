//! `hbmesh up --demo` against the mesh it started: catalog seeded, a fleet
//! simulated, the reports printed, with and without `HB_AUTH_SECRET`.

use hb_common::settings::Secret;
use hb_e2e_tests::{spawn_app_configured, tls_fixture as fixture, Tier};
use std::time::Duration;

async fn demo_output(secret: Option<&str>) -> String {
    demo_output_with(secret, false).await
}

async fn demo_output_with(secret: Option<&str>, tls: bool) -> String {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_app_configured(
        dir.path().to_path_buf(),
        Tier::default(),
        |ingest, _, query| {
            ingest.auth.secret = secret.map(Secret::new);
            query.auth.secret = secret.map(Secret::new);
            if tls {
                ingest.tls.cert = Some(fixture("server.pem"));
                ingest.tls.key = Some(fixture("server.key"));
                query.tls.cert = Some(fixture("server.pem"));
                query.tls.key = Some(fixture("server.key"));
            }
        },
    )
    .await;
    let ca = fixture("ca.pem");
    let ca_cert = tls.then_some(ca.as_path());
    let mut out = Vec::new();
    hbmesh::demo::run_to(
        &app.addrs,
        Duration::from_secs(2),
        secret,
        ca_cert,
        &mut out,
    )
    .await
    .expect("the demo runs to its end");
    app.stop().await;
    String::from_utf8(out).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_runs_against_a_mesh_with_a_secret_using_its_own_tokens() {
    let out = demo_output(Some("demo-secret")).await;
    assert!(out.contains("== royalties ("), "{out}");
    assert!(out.contains("== traffic ("), "{out}");
    assert!(out.contains("== concurrency ("), "{out}");
    assert!(out.contains("bucket_start_ms"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_speaks_tls_to_a_mesh_that_serves_it_trusting_the_ca_given() {
    let out = demo_output_with(Some("demo-secret"), true).await;
    assert!(out.contains("https://127.0.0.1:"), "{out}");
    assert!(out.contains("== royalties ("), "{out}");
    assert!(out.contains("== traffic ("), "{out}");
    assert!(out.contains("bucket_start_ms"), "{out}");
}
