//! svc-stream binary: config from env/flags, telemetry, migrations, then
//! consume until SIGTERM.

use clap::Parser;
use svc_stream::config::StreamConfig;

#[derive(Parser)]
#[command(
    name = "svc-stream",
    version,
    about = "Exact sessionization of the heartbeat mesh"
)]
struct Cli {
    #[command(flatten)]
    config: StreamConfig,
}

#[tokio::main]
async fn main() {
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
    let config = cli.config;
    let result = async {
        if config.migrate_only {
            svc_stream::open_sinks(&config).await?;
            tracing::info!("migrations applied");
            return Ok(());
        }
        let shutdown = hb_common::shutdown::on_signal();
        let listener = tokio::net::TcpListener::bind(config.metrics_addr).await?;
        svc_stream::run(config, svc_stream::Source::Kafka, listener, shutdown).await
    }
    .await;
    if let Err(err) = result {
        tracing::error!(error = format!("{err:#}"), "svc-stream failed");
        std::process::exit(1);
    }
}
