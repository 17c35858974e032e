//! svc-query binary: configuration from flags and `HB_*` variables (exit 64
//! when it cannot run), telemetry, bind, serve until SIGTERM.
#![forbid(unsafe_code)]

use clap::Parser;
use svc_query::config::QueryConfig;
use svc_query::QueryListeners;

/// Reports (royalties, impressions, concurrency, traffic) and user look-ups
/// over HTTP JSON and gRPC.
#[derive(Parser)]
#[command(name = "svc-query", version)]
struct Cli {
    #[command(flatten)]
    config: QueryConfig,
}

#[tokio::main]
async fn main() {
    hb_common::install_crypto_provider();
    let config = match Cli::try_parse() {
        Ok(cli) => cli.config,
        Err(error) if error.use_stderr() => {
            let _ = error.print();
            std::process::exit(hb_common::EXIT_CONFIG);
        }
        Err(help) => {
            let _ = help.print();
            return;
        }
    };
    hb_common::telemetry::init();
    if let Err(error) = config.validate() {
        tracing::error!(error = %error, "invalid configuration");
        std::process::exit(hb_common::EXIT_CONFIG);
    }
    let listeners = match QueryListeners::bind(&config).await {
        Ok(listeners) => listeners,
        Err(error) => {
            tracing::error!(error = %format!("{error:#}"), "cannot bind");
            std::process::exit(1);
        }
    };
    let shutdown = hb_common::shutdown::on_signal();
    if let Err(error) = svc_query::run(config, listeners, shutdown).await {
        tracing::error!(error = %format!("{error:#}"), "svc-query failed");
        std::process::exit(1);
    }
}
