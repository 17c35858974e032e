//! `hbmesh up`: its command line (its own options and every service's
//! settings), the checks before anything starts, then the mesh of
//! [`crate::mesh`] in this process, with the demo of [`crate::demo`] on
//! `--demo`.

use crate::mesh;
use std::time::Duration;
use svc_ingest::config::IngestConfig;
use svc_query::config::QueryConfig;
use svc_stream::config::StreamConfig;

/// `hbmesh up`'s command line: its own options and the services' settings,
/// in any order.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Every setting of svc-ingest, svc-stream and svc-query is also a --flag \
here (see each service's --help; a setting two services share, such as --auth-secret, \
goes to both), besides its HB_* environment variable."
)]
pub struct UpArgs {
    /// `--demo`, `--demo-duration` and the services' `--settings`.
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        num_args = 0..,
        value_name = "--SETTING [VALUE]"
    )]
    pub settings: Vec<String>,
}

/// `hbmesh up`'s own options (read from [`UpArgs::settings`]).
#[derive(clap::Args, Debug)]
pub struct UpOptions {
    /// Seed a small catalog, run a simulated fleet against the mesh, print live
    /// figures and the reports, then keep serving.
    #[arg(long)]
    pub demo: bool,

    /// Length of the demo's simulated traffic.
    #[arg(long, default_value = "20s", value_parser = hb_common::duration::parse_duration)]
    pub demo_duration: Duration,

    /// PEM CA certificate that signed HB_TLS_CERT: the demo's fleet and report
    /// client trust it when the mesh serves TLS (needed then).
    #[arg(long, env = "HB_DEMO_CA_CERT")]
    pub demo_ca_cert: Option<std::path::PathBuf>,
}

/// `up --help`'s list of every setting it takes: its own options, then each
/// service's, each with its environment variable and default (a shared
/// setting such as `--auth-secret` is listed under every service it goes to).
pub fn settings_help() -> String {
    use clap::Args;
    let mut out = String::from(
        "Every setting below is a --flag here and an environment variable; a flag wins over \
         its variable, and a setting listed under two services goes to both.\n",
    );
    for (title, command) in [
        (
            "hbmesh up",
            UpOptions::augment_args(clap::Command::new("up")),
        ),
        (
            "svc-ingest",
            IngestConfig::augment_args(clap::Command::new("ingest")),
        ),
        (
            "svc-stream",
            StreamConfig::augment_args(clap::Command::new("stream")),
        ),
        (
            "svc-query",
            QueryConfig::augment_args(clap::Command::new("query")),
        ),
    ] {
        out.push_str(&format!("\n{title}:\n"));
        for arg in command.get_arguments() {
            let Some(long) = arg.get_long() else {
                continue;
            };
            let mut line = format!("  --{long}");
            if let Some(env) = arg.get_env() {
                line.push_str(&format!(" [{}]", env.to_string_lossy()));
            }
            if let Some(default) = arg.get_default_values().first() {
                line.push_str(&format!(" (default {})", default.to_string_lossy()));
            }
            if let Some(help) = arg.get_help() {
                line.push_str(&format!(": {help}"));
            }
            out.push_str(&line);
            out.push('\n');
        }
    }
    out
}

/// The settings of `up`'s command line, checked against every flag it knows.
pub fn shared_flags(settings: &[String]) -> Result<hb_common::SharedFlags, String> {
    use clap::Args;
    let commands = [
        UpOptions::augment_args(clap::Command::new("up")),
        IngestConfig::augment_args(clap::Command::new("ingest")),
        StreamConfig::augment_args(clap::Command::new("stream")),
        QueryConfig::augment_args(clap::Command::new("query")),
    ];
    hb_common::SharedFlags::parse(settings, &commands)
}

/// Checks the three services' settings before anything starts: what each
/// service checks itself, and that without `HB_AUTH_SECRET` every listener
/// (the metrics ones included) is on loopback.
pub fn validate(
    ingest: &IngestConfig,
    stream: &StreamConfig,
    query: &QueryConfig,
) -> Result<(), String> {
    ingest.validate()?;
    query.validate().map_err(|e| e.to_string())?;
    // The stream stage has no secret of its own: HB_AUTH_SECRET is shared.
    hb_common::refuse_open_non_loopback(
        ingest.auth.secret().or(query.secret()),
        &[("HB_STREAM_METRICS_ADDR", stream.metrics_addr)],
    )
}

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    hb_common::install_crypto_provider();
    hb_common::telemetry::init();
    let flags = match shared_flags(&args.settings) {
        Ok(flags) => flags,
        Err(err) => {
            eprintln!("hbmesh up: {err} (see hbmesh up --help)");
            std::process::exit(hb_common::EXIT_CONFIG);
        }
    };
    let options: UpOptions = flags.config()?;
    let ingest_config: IngestConfig = flags.config()?;
    let stream_config: StreamConfig = flags.config()?;
    let query_config: QueryConfig = flags.config()?;
    if let Err(err) = validate(&ingest_config, &stream_config, &query_config) {
        eprintln!("hbmesh up: {err}");
        std::process::exit(hb_common::EXIT_CONFIG);
    }
    let secret = ingest_config
        .auth
        .secret()
        .or(query_config.secret())
        .map(str::to_string);
    let tls = ingest_config.tls.cert.is_some() || query_config.tls.cert.is_some();
    if options.demo && tls && options.demo_ca_cert.is_none() {
        eprintln!(
            "hbmesh up: the mesh serves TLS (HB_TLS_CERT), so --demo needs --demo-ca-cert \
             (HB_DEMO_CA_CERT), the CA that signed the certificate"
        );
        std::process::exit(hb_common::EXIT_CONFIG);
    }
    let shutdown = hb_common::shutdown::on_signal();
    let (addrs, mesh) =
        mesh::start(ingest_config, stream_config, query_config, shutdown.clone()).await?;
    println!(
        "heartbeat mesh up: ingest gRPC {}, query HTTP {}://{}, query gRPC {}{}",
        addrs.ingest,
        if tls { "https" } else { "http" },
        addrs.query_http,
        addrs.query_grpc,
        if tls { " (TLS)" } else { "" }
    );
    let mut mesh = std::pin::pin!(mesh);
    if options.demo {
        let ca_cert = options.demo_ca_cert.as_deref().filter(|_| tls);
        let demo = crate::demo::run(&addrs, options.demo_duration, secret.as_deref(), ca_cert);
        tokio::select! {
            result = demo => {
                if let Err(err) = result {
                    eprintln!("demo failed: {err:#}");
                }
                println!("demo finished; the mesh keeps serving (Ctrl-C to stop)");
            }
            () = shutdown.cancelled() => {}
            // A service failed: the mesh has stopped the others already.
            result = &mut mesh => return result,
        }
    }
    mesh.await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(text: &str) -> Vec<String> {
        text.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn up_help_lists_every_service_setting_with_its_variable() {
        let help = settings_help();
        for expected in [
            "--demo-duration",
            "--ingest-addr [HB_INGEST_ADDR]",
            "--query-http-addr [HB_QUERY_HTTP_ADDR]",
            "--auth-secret [HB_AUTH_SECRET]",
            "svc-stream:",
        ] {
            assert!(help.contains(expected), "{expected} missing from:\n{help}");
        }
        // A shared setting is listed under each service it goes to.
        assert_eq!(
            help.matches("--auth-secret").count(),
            2,
            "ingest and query: {help}"
        );
        assert_eq!(
            help.matches("--data-dir").count(),
            2,
            "stream and query: {help}"
        );
    }

    #[test]
    fn up_hands_each_service_its_flags_and_shared_ones_to_all() {
        let flags = shared_flags(&line(
            "--data-dir /srv/hb --auth-secret s3cret --demo --ingest-addr 127.0.0.1:0 \
             --query-http-addr=127.0.0.1:0 --grpc-addr 127.0.0.1:0 --demo-duration 5s",
        ))
        .unwrap();
        let options: UpOptions = flags.config().unwrap();
        let ingest: IngestConfig = flags.config().unwrap();
        let stream: StreamConfig = flags.config().unwrap();
        let query: QueryConfig = flags.config().unwrap();
        assert!(options.demo);
        assert_eq!(options.demo_duration, Duration::from_secs(5));
        assert_eq!(ingest.addr.port(), 0);
        assert_eq!(ingest.auth.secret(), Some("s3cret"));
        assert_eq!(query.secret(), Some("s3cret"));
        assert_eq!(query.http_addr.port(), 0);
        // The name of earlier releases still works.
        assert_eq!(query.grpc_addr.port(), 0);
        assert_eq!(stream.store.data_dir, std::path::PathBuf::from("/srv/hb"));
        assert_eq!(query.store.data_dir, std::path::PathBuf::from("/srv/hb"));
    }

    #[test]
    fn up_refuses_a_setting_no_service_has() {
        let err = shared_flags(&line("--demo --no-such-setting 1")).unwrap_err();
        assert_eq!(err, "unknown setting --no-such-setting");
    }
}
