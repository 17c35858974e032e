//! svc-ingest binary: config from env/flags, telemetry, bind, publish to Kafka
//! until SIGTERM. Without Kafka there is no stream to publish to: the embedded
//! tier (ingest handing batches to the stream stage in memory) is `hbmesh up`.

use clap::Parser;
use svc_ingest::config::IngestConfig;
use svc_ingest::{IngestListeners, PublishTarget};

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
    if cli.config.kafka.brokers.is_none() {
        tracing::error!(
            "svc-ingest publishes to Kafka and HB_KAFKA_BROKERS is not set; \
             to run ingest, stream and query in one process without Kafka, run `hbmesh up`"
        );
        std::process::exit(hb_common::EXIT_CONFIG);
    }
    let shutdown = hb_common::shutdown::on_signal();
    let result = async {
        let listeners = IngestListeners::bind(&cli.config).await?;
        svc_ingest::run(cli.config, PublishTarget::Kafka, listeners, shutdown).await
    }
    .await;
    if let Err(err) = result {
        tracing::error!(error = format!("{err:#}"), "svc-ingest failed");
        std::process::exit(1);
    }
}
