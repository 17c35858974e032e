//! The reports on a real Trino, gated: `HB_TEST_TRINO=http://host:8080`
//! (catalog names from the usual `HB_TRINO_CATALOG_*` variables, defaults
//! `yugabyte`/`scylla`). Checks that every report runs and that scoped
//! answers are exactly the holder's slice of the unscoped one. With
//! `HB_TEST_TRINO_PG_URL` (the database behind the YugabyteDB catalog) the
//! Trino answers must also equal the direct SQL engine's on that database.

use std::time::Duration;
use svc_query::config::QueryConfig;
use svc_query::engine::direct::DirectEngine;
use svc_query::engine::trino::{TrinoEngine, TrinoSettings};
use svc_query::engine::ReportEngine;
use svc_query::report::{ConcurrencySpec, Window};

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

#[tokio::test]
async fn reports_on_a_real_trino() {
    let Ok(url) = std::env::var("HB_TEST_TRINO") else {
        eprintln!("skipping reports_on_a_real_trino: set HB_TEST_TRINO=http://host:8080 to run it");
        return;
    };
    let config = QueryConfig {
        trino_url: Some(url.clone()),
        trino_catalog_yugabyte: env_or("HB_TRINO_CATALOG_YUGABYTE", "yugabyte"),
        trino_schema_yugabyte: env_or("HB_TRINO_SCHEMA_YUGABYTE", "public"),
        trino_catalog_scylla: env_or("HB_TRINO_CATALOG_SCYLLA", "scylla"),
        trino_schema_scylla: env_or("HB_TRINO_SCHEMA_SCYLLA", "heartbeats"),
        query_timeout: Duration::from_secs(120),
        ..QueryConfig::default()
    };
    config.validate().unwrap();
    let engine = TrinoEngine::new(TrinoSettings::from_config(&config, &url).unwrap()).unwrap();
    let now = hb_common::time::now_ms();
    let to = now - now % 3_600_000 + 3_600_000;
    let window = Window::new(to - 7 * 24 * 3_600_000, to).unwrap();

    let royalties = engine.royalties(window, None).await.unwrap();
    if let Some(holder) = royalties.first().map(|r| r.license_holder_id.clone()) {
        let scoped = engine.royalties(window, Some(&holder)).await.unwrap();
        let slice: Vec<_> = royalties
            .iter()
            .filter(|r| r.license_holder_id == holder)
            .cloned()
            .collect();
        assert_eq!(scoped, slice);
    }
    let impressions = engine.impressions(window, None).await.unwrap();
    if let Some(advertiser) = impressions.first().map(|r| r.advertiser_id.clone()) {
        let scoped = engine.impressions(window, Some(&advertiser)).await.unwrap();
        let slice: Vec<_> = impressions
            .iter()
            .filter(|r| r.advertiser_id == advertiser)
            .cloned()
            .collect();
        assert_eq!(scoped, slice);
    }
    let spec = ConcurrencySpec::new(window, 3_600).unwrap();
    let concurrency = engine.concurrency(spec).await.unwrap();
    assert_eq!(concurrency.len(), 7 * 24);
    let last_day = Window::new(to - 24 * 3_600_000, to).unwrap();
    let traffic = engine.traffic(last_day, None).await.unwrap();
    if let Some(holder) = traffic.first().map(|r| r.license_holder_id.clone()) {
        let scoped = engine.traffic(last_day, Some(&holder)).await.unwrap();
        let slice: Vec<_> = traffic
            .iter()
            .filter(|r| r.license_holder_id == holder)
            .cloned()
            .collect();
        assert_eq!(scoped, slice);
    }
    eprintln!(
        "trino at {url}: {} royalty rows, {} impression rows, {} traffic rows",
        royalties.len(),
        impressions.len(),
        traffic.len()
    );

    if let Ok(pg_url) = std::env::var("HB_TEST_TRINO_PG_URL") {
        let store = svc_query::store::open(&QueryConfig {
            store: hb_common::store::StoreSettings {
                yugabyte_url: Some(pg_url),
                ..Default::default()
            },
            ..QueryConfig::default()
        })
        .await
        .unwrap();
        let direct = DirectEngine::new(store, Duration::from_secs(120));
        assert_eq!(direct.royalties(window, None).await.unwrap(), royalties);
        assert_eq!(direct.impressions(window, None).await.unwrap(), impressions);
        assert_eq!(direct.concurrency(spec).await.unwrap(), concurrency);
    } else {
        eprintln!("set HB_TEST_TRINO_PG_URL to also compare with the direct engine");
    }
}
