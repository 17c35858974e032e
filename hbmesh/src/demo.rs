//! `hbmesh up --demo`: seeds a small catalog, runs a simulated fleet against
//! the mesh just started, and prints the reports, so a newcomer sees the whole
//! product in one command. With `HB_AUTH_SECRET` set the demo mints its own
//! tokens: admin for the catalog and the reports, gateway for the fleet. When
//! the mesh serves TLS the demo's clients speak it, trusting the CA given.

use crate::mesh::MeshAddrs;
use anyhow::Context;
use hb_common::auth::{Role, TokenKey};
use std::io::Write;
use std::path::Path;
use std::time::Duration;

const LICENSE_HOLDERS: [&str; 4] = ["studio-north", "studio-south", "indie-films", "archive-co"];
const ADVERTISERS: [&str; 3] = ["acme", "globex", "initech"];
/// The simulator's catalog sizes (hb_testkit::fleet defaults).
const VIDEOS: usize = 2_000;
const ADS: usize = 200;

/// Runs the demo against the mesh at `addrs`, printing on stdout; `secret`
/// is the mesh's `HB_AUTH_SECRET`, if any, and `ca_cert` the PEM CA to trust
/// when the mesh serves TLS (`None`: plaintext).
pub async fn run(
    addrs: &MeshAddrs,
    duration: Duration,
    secret: Option<&str>,
    ca_cert: Option<&Path>,
) -> anyhow::Result<()> {
    run_to(addrs, duration, secret, ca_cert, &mut std::io::stdout()).await
}

/// [`run`], printing the figures and reports on `out`.
pub async fn run_to(
    addrs: &MeshAddrs,
    duration: Duration,
    secret: Option<&str>,
    ca_cert: Option<&Path>,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    let secret = secret.filter(|s| !s.is_empty());
    let admin = secret.map(|secret| {
        let exp = hb_common::time::now_ms() / 1_000 + duration.as_secs() as i64 + 86_400;
        TokenKey::new(secret).mint("hbmesh-demo", &Role::Admin, exp)
    });
    let (scheme, client) = match ca_cert {
        None => ("http", reqwest::Client::new()),
        Some(path) => {
            let pem = std::fs::read(path)
                .with_context(|| format!("reading the demo's CA {}", path.display()))?;
            let ca = reqwest::Certificate::from_pem(&pem)
                .with_context(|| format!("{} is not a PEM certificate", path.display()))?;
            let client = reqwest::Client::builder()
                .tls_certs_only([ca])
                .build()
                .context("the demo's HTTPS client")?;
            ("https", client)
        }
    };
    let http = Api {
        client,
        base: format!("{scheme}://{}", addrs.query_http),
        token: admin,
    };
    let base = http.base.clone();
    seed_catalog(&http).await?;
    writeln!(
        out,
        "demo: catalog seeded ({VIDEOS} videos, {ADS} ads); simulating 300 players for {}s",
        duration.as_secs()
    )?;

    let started = hb_common::time::now_ms();
    let target = format!("{scheme}://{}", addrs.ingest);
    let seconds = format!("{}s", duration.as_secs().max(1));
    let mut args: crate::simulate::SimulateArgs = parse_args(&[
        "--devices",
        "300",
        "--rate",
        "300",
        "--duration",
        &seconds,
        "--target",
        &target,
        // One fleet for every demo: a random one shows no ad impressions now
        // and then (few players start a title, and so see a pre-roll, within
        // a short run), and the reports should show every kind of row.
        "--seed",
        "7",
    ])?;
    // The fleet's gateway token is minted from the mesh's own secret, not
    // from whatever HB_TOKEN / HB_AUTH_SECRET the environment holds.
    args.token = None;
    args.auth.secret = secret.map(hb_common::settings::Secret::new);
    args.ca_cert = ca_cert.map(Path::to_path_buf);
    crate::simulate::run(args).await?;
    // Sessions become visible within a flush; give the pipeline a moment.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let from = hb_common::time::ms_to_rfc3339(started - 86_400_000);
    let to = hb_common::time::ms_to_rfc3339(hb_common::time::now_ms() + 3_600_000);
    // Viewers per 10 s around the run (its event clocks follow the wall clock).
    let concurrency_from = hb_common::time::ms_to_rfc3339((started - 60_000) / 60_000 * 60_000);
    let concurrency_to =
        hb_common::time::ms_to_rfc3339((hb_common::time::now_ms() / 1_000 + 60) * 1_000);
    for (title, path, limit) in [
        (
            "royalties",
            format!("/v1/reports/royalties?from={from}&to={to}"),
            8,
        ),
        (
            "impressions",
            format!("/v1/reports/impressions?from={from}&to={to}"),
            8,
        ),
        (
            "concurrency",
            format!(
                "/v1/reports/concurrency?from={concurrency_from}&to={concurrency_to}&step_s=10"
            ),
            40,
        ),
        (
            "traffic",
            format!("/v1/reports/traffic?from={from}&to={to}"),
            8,
        ),
    ] {
        let body: serde_json::Value = http
            .get(&path)
            .send()
            .await?
            .error_for_status()
            .with_context(|| format!("the {title} report"))?
            .json()
            .await?;
        print_rows(out, title, &body, limit)?;
    }
    let auth = if http.token.is_some() {
        " -H \"authorization: Bearer $(hbmesh token --role admin)\""
    } else {
        ""
    };
    writeln!(
        out,
        "demo: try  curl{auth} '{base}/v1/reports/royalties?from={from}&to={to}'"
    )?;
    Ok(())
}

/// The query API, with the demo's token when the mesh has a secret.
struct Api {
    client: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Api {
    fn with_token(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.with_token(self.client.get(format!("{}{path}", self.base)))
    }

    fn put(&self, path: &str) -> reqwest::RequestBuilder {
        self.with_token(self.client.put(format!("{}{path}", self.base)))
    }
}

/// Parses command-line style arguments into a clap `Args` struct.
fn parse_args<T: clap::Args + clap::FromArgMatches>(args: &[&str]) -> anyhow::Result<T> {
    let command = T::augment_args(clap::Command::new("demo"));
    let matches = command
        .try_get_matches_from(std::iter::once("demo").chain(args.iter().copied()))
        .map_err(|e| anyhow::anyhow!("demo arguments: {e}"))?;
    Ok(T::from_arg_matches(&matches)?)
}

async fn seed_catalog(http: &Api) -> anyhow::Result<()> {
    let videos: Vec<serde_json::Value> = (0..VIDEOS)
        .map(|i| {
            serde_json::json!({
                "video_id": format!("video-{i:05}"),
                "title": format!("Title {i}"),
                "license_holder_id": LICENSE_HOLDERS[i % LICENSE_HOLDERS.len()],
                "rate_micros_per_hour": 50_000 + (i as i64 % 5) * 10_000,
            })
        })
        .collect();
    let ads: Vec<serde_json::Value> = (0..ADS)
        .map(|i| {
            serde_json::json!({
                "ad_id": format!("ad-{i:04}"),
                "campaign_id": format!("campaign-{}", i % 20),
                "advertiser_id": ADVERTISERS[i % ADVERTISERS.len()],
            })
        })
        .collect();
    for (path, rows) in [("videos", videos), ("ads", ads)] {
        http.put(&format!("/v1/catalog/{path}"))
            .json(&rows)
            .send()
            .await
            .with_context(|| format!("seeding {path}"))?
            .error_for_status()
            .with_context(|| format!("seeding {path}"))?;
    }
    Ok(())
}

fn print_rows(
    out: &mut (dyn Write + Send),
    title: &str,
    body: &serde_json::Value,
    limit: usize,
) -> std::io::Result<()> {
    let rows = body["rows"].as_array().cloned().unwrap_or_default();
    writeln!(out, "\n== {title} ({} rows) ==", rows.len())?;
    for row in rows.iter().take(limit) {
        writeln!(out, "  {row}")?;
    }
    if rows.len() > limit {
        writeln!(out, "  ... {} more", rows.len() - limit)?;
    }
    Ok(())
}
