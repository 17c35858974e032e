//! `hbmesh up --demo`: seeds a small catalog, runs a simulated fleet against
//! the mesh just started, and prints the reports, so a newcomer sees the whole
//! product in one command.

use crate::up::MeshAddrs;
use anyhow::Context;
use std::time::Duration;

const LICENSE_HOLDERS: [&str; 4] = ["studio-north", "studio-south", "indie-films", "archive-co"];
const ADVERTISERS: [&str; 3] = ["acme", "globex", "initech"];
/// The simulator's catalog sizes (hb_common::workload defaults).
const VIDEOS: usize = 2_000;
const ADS: usize = 200;

pub async fn run(addrs: &MeshAddrs, duration: Duration) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let base = format!("http://{}", addrs.query_http);
    seed_catalog(&http, &base).await?;
    println!(
        "demo: catalog seeded ({VIDEOS} videos, {ADS} ads); simulating 300 players for {}s",
        duration.as_secs()
    );

    let started = hb_common::time::now_ms();
    let target = format!("http://{}", addrs.ingest);
    let seconds = format!("{}s", duration.as_secs().max(1));
    let args: crate::simulate::SimulateArgs = parse_args(&[
        "--devices",
        "300",
        "--rate",
        "300",
        "--duration",
        &seconds,
        "--target",
        &target,
    ])?;
    crate::simulate::run(args).await?;
    // Sessions become visible within a flush; give the pipeline a moment.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let from = hb_common::time::ms_to_rfc3339(started - 86_400_000);
    let to = hb_common::time::ms_to_rfc3339(hb_common::time::now_ms() + 3_600_000);
    for (title, path) in [
        (
            "royalties",
            format!("/v1/reports/royalties?from={from}&to={to}"),
        ),
        (
            "impressions",
            format!("/v1/reports/impressions?from={from}&to={to}"),
        ),
        (
            "traffic",
            format!("/v1/reports/traffic?from={from}&to={to}"),
        ),
    ] {
        let body: serde_json::Value = http
            .get(format!("{base}{path}"))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        print_rows(title, &body, 8);
    }
    println!("demo: try  curl '{base}/v1/reports/royalties?from={from}&to={to}'");
    Ok(())
}

/// Parses command-line style arguments into a clap `Args` struct.
fn parse_args<T: clap::Args + clap::FromArgMatches>(args: &[&str]) -> anyhow::Result<T> {
    let command = T::augment_args(clap::Command::new("demo"));
    let matches = command
        .try_get_matches_from(std::iter::once("demo").chain(args.iter().copied()))
        .map_err(|e| anyhow::anyhow!("demo arguments: {e}"))?;
    Ok(T::from_arg_matches(&matches)?)
}

async fn seed_catalog(http: &reqwest::Client, base: &str) -> anyhow::Result<()> {
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
        http.put(format!("{base}/v1/catalog/{path}"))
            .json(&rows)
            .send()
            .await
            .with_context(|| format!("seeding {path}"))?
            .error_for_status()
            .with_context(|| format!("seeding {path}"))?;
    }
    Ok(())
}

fn print_rows(title: &str, body: &serde_json::Value, limit: usize) {
    let rows = body["rows"].as_array().cloned().unwrap_or_default();
    println!("\n== {title} ({} rows) ==", rows.len());
    for row in rows.iter().take(limit) {
        println!("  {row}");
    }
    if rows.len() > limit {
        println!("  ... {} more", rows.len() - limit);
    }
}
