//! TLS on ingest's gRPC port (`HB_TLS_CERT` / `HB_TLS_KEY`): a device pushes
//! heartbeats over TLS and they are acknowledged. Its own test binary, so no
//! other test has installed a rustls crypto provider in the process first:
//! ring and aws-lc-rs are both linked here, as in the service binaries, so
//! rustls cannot choose one by itself and the mesh must install one.
//!
//! `fixtures/tls/`: a test CA (`ca.pem`) and a certificate for `localhost` /
//! `127.0.0.1` it signed (`server.pem`, `server.key`), valid until 2126.

use hb_e2e_tests::{spawn_app_configured, tls_fixture as fixture, Tier};
use hb_proto::v1::ingest_service_client::IngestServiceClient;
use hb_testkit::fleet::{Fleet, FleetConfig};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_with_a_certificate_acknowledges_heartbeats_pushed_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_app_configured(dir.path().to_path_buf(), Tier::default(), |ingest, _, _| {
        ingest.tls.cert = Some(fixture("server.pem"));
        ingest.tls.key = Some(fixture("server.key"));
    })
    .await;

    let ca = std::fs::read(fixture("ca.pem")).unwrap();
    let channel = Endpoint::from_shared(format!("https://localhost:{}", app.addrs.ingest.port()))
        .unwrap()
        .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)))
        .unwrap()
        .connect()
        .await
        .expect("TLS handshake with ingest");
    let heartbeats: Vec<_> = Fleet::new(FleetConfig {
        devices: 4,
        users: 2,
        videos: 3,
        ads: 2,
        seed: 7,
        start_ms: hb_common::time::now_ms() - 10 * 60_000,
        ..FleetConfig::default()
    })
    .heartbeats(20)
    .collect();
    let summary = IngestServiceClient::new(channel)
        .push(futures::stream::iter(heartbeats))
        .await
        .expect("push over TLS")
        .into_inner();
    assert_eq!(summary.rejected, 0, "{:?}", summary.rejections);
    assert_eq!(summary.accepted + summary.duplicates, 20);

    // The plaintext port is not: a plain HTTP/2 client is refused.
    let plain = IngestServiceClient::connect(format!("http://{}", app.addrs.ingest)).await;
    if let Ok(mut client) = plain {
        assert!(client
            .push(futures::stream::iter(Vec::new()))
            .await
            .is_err());
    }
    app.stop().await;
}
