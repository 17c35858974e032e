//! Plumbing shared by the three services and the `hbmesh` binary: bearer tokens,
//! config value parsing, telemetry, shutdown, the metrics/health endpoint and the
//! embedded ingest -> stream hand-off. Nothing domain-specific lives here.
#![forbid(unsafe_code)]

pub mod auth;
pub mod duration;
pub mod handoff;
pub mod health;
pub mod metrics_http;
pub mod raw;
pub mod schema;
pub mod shutdown;
pub mod telemetry;
pub mod testing;
pub mod time;
pub mod workload;

/// Exit code for a configuration error (EX_USAGE), so orchestrators can tell it
/// from a crash.
pub const EXIT_CONFIG: i32 = 64;

/// Installs rustls' ring crypto provider as the process default. Both ring
/// and aws-lc-rs are linked into the binaries (a dependency brings the
/// latter), so rustls cannot pick one by itself and any TLS server built
/// without an explicit provider (tonic's, axum-server's) would panic. Every
/// binary calls this at start; calling it again is harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// True when `addr` is a loopback address; services refuse to listen elsewhere
/// without an auth secret.
pub fn is_loopback(addr: &std::net::SocketAddr) -> bool {
    addr.ip().is_loopback()
}

/// Without an auth secret (unset or empty) every listener must be on
/// loopback: the first `(variable, address)` that is not is refused.
pub fn refuse_open_non_loopback(
    secret: Option<&str>,
    addrs: &[(&str, std::net::SocketAddr)],
) -> Result<(), String> {
    if secret.is_some_and(|s| !s.is_empty()) {
        return Ok(());
    }
    match addrs.iter().find(|(_, addr)| !is_loopback(addr)) {
        Some((name, addr)) => Err(format!(
            "refusing to listen on non-loopback {addr} ({name}) without HB_AUTH_SECRET: \
             set a secret or bind 127.0.0.1"
        )),
        None => Ok(()),
    }
}

/// Reads a service config from the environment (and its defaults) without
/// looking at the command line: every setting is an `HB_*` variable. Used
/// where one process runs several services, whose flags would collide.
pub fn config_from_env<T: clap::Args + clap::FromArgMatches>() -> anyhow::Result<T> {
    let command = T::augment_args(clap::Command::new("hbmesh"));
    let matches = command
        .try_get_matches_from(["hbmesh"])
        .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
    Ok(T::from_arg_matches(&matches)?)
}
