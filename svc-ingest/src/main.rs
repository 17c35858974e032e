//! svc-ingest binary: config from env/flags, telemetry, bind, run until SIGTERM.

use clap::Parser;
use svc_ingest::config::IngestConfig;
use svc_ingest::{IngestListeners, PublishTarget};
use svc_stream::config::StreamConfig;

#[derive(Parser)]
#[command(
    name = "svc-ingest",
    version,
    about = "gRPC heartbeat ingest of the heartbeat mesh"
)]
struct Cli {
    #[command(flatten)]
    config: IngestConfig,
}

#[tokio::main]
async fn main() {
    hb_common::install_crypto_provider();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) if err.use_stderr() => {
            let _ = err.print();
            std::process::exit(hb_common::EXIT_CONFIG);
        }
        Err(err) => {
            let _ = err.print();
            return;
        }
    };
    hb_common::telemetry::init();
    if let Err(err) = cli.config.validate() {
        tracing::error!(error = %err, "invalid configuration");
        std::process::exit(hb_common::EXIT_CONFIG);
    }
    let shutdown = hb_common::shutdown::on_signal();
    let result = async {
        let listeners = IngestListeners::bind(&cli.config).await?;
        if cli.config.kafka.brokers.is_some() {
            return svc_ingest::run(cli.config, PublishTarget::Kafka, listeners, shutdown).await;
        }
        // No Kafka: the embedded default, with the stream stage in process.
        let stream_config: StreamConfig = hb_common::config_from_env()?;
        if let Err(err) = hb_common::refuse_open_non_loopback(
            cli.config.auth.secret(),
            &[("HB_STREAM_METRICS_ADDR", stream_config.metrics_addr)],
        ) {
            tracing::error!(error = %err, "invalid configuration");
            std::process::exit(hb_common::EXIT_CONFIG);
        }
        tracing::warn!(
            data_dir = %stream_config.store.data_dir.display(),
            "no HB_KAFKA_BROKERS: running the embedded tier (ingest + stream into SQLite) in this process"
        );
        let stream_metrics = tokio::net::TcpListener::bind(stream_config.metrics_addr).await?;
        svc_ingest::embedded::run(cli.config, stream_config, listeners, stream_metrics, shutdown)
            .await
    }
    .await;
    if let Err(err) = result {
        tracing::error!(error = format!("{err:#}"), "svc-ingest failed");
        std::process::exit(1);
    }
}
