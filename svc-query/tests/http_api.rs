//! The HTTP API end to end: the real service on port 0 over a seeded store.
//! Every role against every endpoint, tenant scoping, bad tokens, bad
//! parameters, exact answers, metrics, open mode and shutdown.

mod common;

use common::{rfc, rows, token, Backend, Seed, TestApp, TestStore, T0};
use hb_common::raw::HOUR_MS;
use serde_json::json;
use svc_query::report::{
    ConcurrencyRow, ImpressionRow, ProgressRow, RoyaltyRow, SessionRow, TrafficRow,
};

const DAY: i64 = 24 * HOUR_MS;

fn day_query() -> String {
    format!("from={}&to={}", rfc(T0), rfc(T0 + DAY))
}

/// (name, method, path, body) of every endpoint, with valid parameters.
fn endpoints() -> Vec<(
    &'static str,
    &'static str,
    String,
    Option<serde_json::Value>,
)> {
    let q = day_query();
    vec![
        (
            "royalties",
            "GET",
            format!("/v1/reports/royalties?{q}"),
            None,
        ),
        (
            "impressions",
            "GET",
            format!("/v1/reports/impressions?{q}"),
            None,
        ),
        (
            "concurrency",
            "GET",
            format!("/v1/reports/concurrency?{q}&step_s=3600"),
            None,
        ),
        ("traffic", "GET", format!("/v1/reports/traffic?{q}"), None),
        ("progress", "GET", "/v1/users/u1/progress".to_string(), None),
        (
            "sessions",
            "GET",
            format!("/v1/users/u1/sessions?{q}"),
            None,
        ),
        (
            "catalog_videos",
            "PUT",
            "/v1/catalog/videos".to_string(),
            Some(
                json!([{"video_id": "v-new", "title": "New", "license_holder_id": "L7", "rate_micros_per_hour": 5}]),
            ),
        ),
        (
            "catalog_ads",
            "PUT",
            "/v1/catalog/ads".to_string(),
            Some(json!([{"ad_id": "a-new", "campaign_id": "c9", "advertiser_id": "A9"}])),
        ),
        // A user the store does not know: erasing it changes no report.
        (
            "erase_user",
            "DELETE",
            "/v1/users/u-unknown".to_string(),
            None,
        ),
    ]
}

fn allowed(role: &str, endpoint: &str) -> bool {
    match role {
        "admin" => true,
        r if r.starts_with("license_holder:") => matches!(endpoint, "royalties" | "traffic"),
        r if r.starts_with("advertiser:") => endpoint == "impressions",
        "app" => matches!(endpoint, "progress" | "sessions"),
        _ => false,
    }
}

async fn call(
    app: &TestApp,
    method: &str,
    path: &str,
    body: &Option<serde_json::Value>,
    bearer: Option<&str>,
) -> (u16, serde_json::Value) {
    match method {
        "GET" => app.get(path, bearer).await,
        "DELETE" => app.delete(path, bearer).await,
        _ => app.put(path, bearer, body.as_ref().unwrap()).await,
    }
}

async fn seeded_app() -> (TestStore, Seed, TestApp) {
    let test = TestStore::new(Backend::Sqlite).await;
    let seed = Seed::generate(3);
    seed.load(&test.store).await;
    let app = TestApp::spawn(test.config.clone()).await;
    (test, seed, app)
}

#[tokio::test]
async fn every_role_against_every_endpoint() {
    let (_test, _seed, app) = seeded_app().await;
    let roles = [
        "admin",
        "license_holder:L1",
        "advertiser:A1",
        "app",
        "device:d1",
        "gateway",
    ];
    for role in roles {
        let bearer = token(role, false);
        for (name, method, path, body) in endpoints() {
            let (status, body) = call(&app, method, &path, &body, Some(&bearer)).await;
            if allowed(role, name) {
                assert_eq!(status, 200, "{role} {name}: {body}");
                assert!(
                    body.get("rows").is_some()
                        || body.get("upserted").is_some()
                        || body.get("erasure_id").is_some(),
                    "{body}"
                );
            } else {
                assert_eq!(status, 403, "{role} {name}: {body}");
                assert_eq!(body["error"], "forbidden");
                assert!(body["detail"].as_str().unwrap().contains(name), "{body}");
            }
        }
    }
    // Whatever the endpoint, a caller without a valid token learns nothing.
    let valid = token("admin", false);
    let (claims, _) = valid.split_once('.').unwrap();
    let forged_claims = base64_url(br#"{"sub":"x","role":"admin","exp":99999999999}"#);
    let other_key = hb_common::auth::TokenKey::new("another secret").mint(
        "x",
        &hb_common::auth::Role::Admin,
        chrono::Utc::now().timestamp() + 60,
    );
    let bad_tokens = [
        ("missing", None),
        ("expired", Some(token("admin", true))),
        (
            "tampered claims",
            Some(format!(
                "{forged_claims}.{}",
                valid.split_once('.').unwrap().1
            )),
        ),
        ("tampered signature", Some(format!("{claims}.AAAA"))),
        ("other secret", Some(other_key)),
        ("garbage", Some("not-a-token".to_string())),
    ];
    for (what, bearer) in &bad_tokens {
        for (name, method, path, body) in endpoints() {
            let (status, body) = call(&app, method, &path, &body, bearer.as_deref()).await;
            assert_eq!(status, 401, "{what} token on {name}: {body}");
            assert_eq!(body["error"], "unauthenticated");
        }
    }
    // Bad parameters do not leak past authentication either.
    let (status, _) = app.get("/v1/reports/royalties", None).await;
    assert_eq!(status, 401);
    app.stop().await.unwrap();
}

fn base64_url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

#[tokio::test]
async fn tenants_only_ever_see_their_own_rows() {
    let (_test, seed, app) = seeded_app().await;
    let q = day_query();
    let l1 = token("license_holder:L1", false);
    // Asking for another holder's rows (a parameter the API does not have) changes nothing.
    for path in [
        format!("/v1/reports/royalties?{q}"),
        format!("/v1/reports/royalties?{q}&license_holder_id=L2"),
    ] {
        let (status, body) = app.get(&path, Some(&l1)).await;
        assert_eq!(status, 200);
        let got: Vec<RoyaltyRow> = rows(&body);
        assert_eq!(got, seed.royalties(T0, T0 + DAY, Some("L1")));
        assert!(!got.is_empty());
        assert!(got.iter().all(|r| r.license_holder_id == "L1"));
    }
    let (_, body) = app
        .get(
            &format!("/v1/reports/traffic?{q}&license_holder_id=L2"),
            Some(&l1),
        )
        .await;
    let traffic: Vec<TrafficRow> = rows(&body);
    assert_eq!(traffic, seed.traffic(T0, T0 + DAY, Some("L1")));
    assert!(!traffic.is_empty() && traffic.iter().all(|r| r.license_holder_id == "L1"));

    let a0 = token("advertiser:A0", false);
    let (_, body) = app
        .get(
            &format!("/v1/reports/impressions?{q}&advertiser_id=A1"),
            Some(&a0),
        )
        .await;
    let impressions: Vec<ImpressionRow> = rows(&body);
    assert_eq!(impressions, seed.impressions(T0, T0 + DAY, Some("A0")));
    assert!(!impressions.is_empty() && impressions.iter().all(|r| r.advertiser_id == "A0"));

    // A holder with no titles gets an empty list, not someone else's.
    let nobody = token("license_holder:L-none", false);
    let (status, body) = app
        .get(&format!("/v1/reports/royalties?{q}"), Some(&nobody))
        .await;
    assert_eq!((status, body), (200, json!({"rows": []})));
    app.stop().await.unwrap();
}

#[tokio::test]
async fn answers_are_exact_over_http() {
    let (_test, seed, app) = seeded_app().await;
    let admin = token("admin", false);
    let app_token = token("app", false);
    let q = day_query();
    let (_, body) = app
        .get(&format!("/v1/reports/royalties?{q}"), Some(&admin))
        .await;
    assert_eq!(
        rows::<RoyaltyRow>(&body),
        seed.royalties(T0, T0 + DAY, None)
    );
    let (_, body) = app
        .get(&format!("/v1/reports/impressions?{q}"), Some(&admin))
        .await;
    assert_eq!(
        rows::<ImpressionRow>(&body),
        seed.impressions(T0, T0 + DAY, None)
    );
    let (_, body) = app
        .get(
            &format!("/v1/reports/concurrency?{q}&step_s=900"),
            Some(&admin),
        )
        .await;
    assert_eq!(
        rows::<ConcurrencyRow>(&body),
        seed.concurrency(T0, T0 + DAY, 900)
    );
    // step_s defaults to 60.
    let hour = format!("from={}&to={}", rfc(T0), rfc(T0 + HOUR_MS));
    let (_, body) = app
        .get(&format!("/v1/reports/concurrency?{hour}"), Some(&admin))
        .await;
    assert_eq!(
        rows::<ConcurrencyRow>(&body),
        seed.concurrency(T0, T0 + HOUR_MS, 60)
    );
    let (_, body) = app
        .get(&format!("/v1/reports/traffic?{q}"), Some(&admin))
        .await;
    assert_eq!(rows::<TrafficRow>(&body), seed.traffic(T0, T0 + DAY, None));
    for user in seed.busiest_users(3) {
        let (_, body) = app
            .get(&format!("/v1/users/{user}/progress"), Some(&app_token))
            .await;
        assert_eq!(rows::<ProgressRow>(&body), seed.progress(&user));
        let (_, body) = app
            .get(&format!("/v1/users/{user}/sessions"), Some(&app_token))
            .await;
        assert_eq!(
            rows::<SessionRow>(&body),
            seed.user_sessions(&user, i64::MIN, i64::MAX)
        );
        let (_, body) = app
            .get(&format!("/v1/users/{user}/sessions?{q}"), Some(&app_token))
            .await;
        assert_eq!(
            rows::<SessionRow>(&body),
            seed.user_sessions(&user, T0, T0 + DAY)
        );
    }
    // Times are integers in fields ending _ms, amounts integers.
    let (_, body) = app
        .get(&format!("/v1/reports/royalties?{q}"), Some(&admin))
        .await;
    assert!(body["rows"][0]["amount_micros"].is_i64());
    assert!(body["rows"][0]["watch_ms"].is_i64());

    // Catalog writes show in the next report.
    let (status, body) = app
        .put(
            "/v1/catalog/videos",
            Some(&admin),
            &json!([{"video_id": "v12", "title": "Late addition", "license_holder_id": "L5", "rate_micros_per_hour": 3600000}]),
        )
        .await;
    assert_eq!((status, body), (200, json!({"upserted": 1})));
    let mut with_v12 = seed.clone();
    with_v12.videos.push(svc_query::catalog::Video {
        video_id: "v12".into(),
        title: "Late addition".into(),
        license_holder_id: "L5".into(),
        rate_micros_per_hour: 3_600_000,
    });
    let (_, body) = app
        .get(&format!("/v1/reports/royalties?{q}"), Some(&admin))
        .await;
    let got = rows::<RoyaltyRow>(&body);
    assert_eq!(got, with_v12.royalties(T0, T0 + DAY, None));
    assert!(got.iter().any(|r| r.license_holder_id == "L5"));
    app.stop().await.unwrap();
}

#[tokio::test]
async fn bad_parameters_are_400_with_a_reason() {
    let (_test, _seed, app) = seeded_app().await;
    let admin = token("admin", false);
    let t0 = rfc(T0);
    let t1 = rfc(T0 + HOUR_MS);
    let cases = [
        ("/v1/reports/royalties".to_string(), "missing from"),
        (format!("/v1/reports/royalties?from={t0}"), "missing to"),
        (
            format!("/v1/reports/impressions?from=yesterday&to={t1}"),
            "from",
        ),
        (format!("/v1/reports/traffic?from={t1}&to={t0}"), "before"),
        (format!("/v1/reports/royalties?from={t0}&to={t0}"), "before"),
        (
            format!("/v1/reports/concurrency?from={t0}&to={t1}&step_s=0"),
            "step_s",
        ),
        (
            format!("/v1/reports/concurrency?from={t0}&to={t1}&step_s=ten"),
            "step_s",
        ),
        (
            format!("/v1/reports/concurrency?from={t0}&to={t1}&step_s=86401"),
            "step_s",
        ),
        (
            format!(
                "/v1/reports/concurrency?from={t0}&to={}&step_s=1",
                rfc(T0 + 3 * HOUR_MS)
            ),
            "buckets",
        ),
        (
            format!("/v1/reports/traffic?from={t0}&to={}", rfc(T0 + 32 * DAY)),
            "hours",
        ),
        (
            format!("/v1/reports/royalties?from=1969-12-31T00:00:00Z&to={t0}"),
            "1970",
        ),
        (format!("/v1/users/{}/progress", "x".repeat(129)), "user_id"),
        ("/v1/users/u1/sessions?from=never".to_string(), "from"),
        // Present but empty is a bad value, not an absent one (schemathesis).
        ("/v1/users/u1/sessions?to=".to_string(), "to"),
        (
            format!("/v1/reports/concurrency?from={t0}&to={t1}&step_s="),
            "step_s",
        ),
    ];
    for (path, needle) in cases {
        let (status, body) = app.get(&path, Some(&admin)).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(body["error"], "bad_request", "{path}");
        let detail = body["detail"].as_str().unwrap();
        assert!(detail.contains(needle), "{path}: {detail}");
    }
    for (path, body, needle) in [
        (
            "/v1/catalog/videos",
            json!([{"video_id": "v", "title": "t", "license_holder_id": "L", "rate_micros_per_hour": -1}]),
            "row 0",
        ),
        (
            "/v1/catalog/videos",
            json!([{"video_id": "v", "title": "t"}]),
            "license_holder_id",
        ),
        ("/v1/catalog/videos", json!({"video_id": "v"}), "array"),
        (
            "/v1/catalog/ads",
            json!([{"ad_id": "", "campaign_id": "c", "advertiser_id": "A"}]),
            "ad_id",
        ),
    ] {
        let (status, reply) = app.put(path, Some(&admin), &body).await;
        assert_eq!(status, 400, "{body}: {reply}");
        assert!(
            reply["detail"].as_str().unwrap().contains(needle),
            "{reply}"
        );
    }
    let (status, body) = app.get("/v1/nope", Some(&admin)).await;
    assert_eq!((status, body["error"].as_str()), (404, Some("not_found")));
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_wrong_method_is_a_json_405() {
    let (_test, _seed, app) = seeded_app().await;
    let admin = token("admin", false);
    let q = day_query();
    for (method, path) in [
        (reqwest::Method::POST, format!("/v1/reports/royalties?{q}")),
        (reqwest::Method::GET, "/v1/catalog/videos".to_string()),
        (reqwest::Method::DELETE, "/v1/users/u1/progress".to_string()),
    ] {
        let response = app
            .client
            .request(method.clone(), format!("{}{path}", app.http))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 405, "{method} {path}");
        let body: serde_json::Value = response.json().await.expect("a JSON body");
        assert_eq!(body["error"], "method_not_allowed", "{method} {path}");
        assert!(body["detail"]
            .as_str()
            .is_some_and(|d| d.contains(method.as_str())));
    }
    app.stop().await.unwrap();
}

#[tokio::test]
async fn metrics_show_every_report_before_the_first_request() {
    let (_test, _seed, app) = seeded_app().await;
    let text = app
        .client
        .get(format!("{}/metrics", app.metrics))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for report in [
        "royalties",
        "impressions",
        "concurrency",
        "traffic",
        "progress",
    ] {
        let needle = format!("hb_query_latency_seconds_count{{report=\"{report}\"}} 0");
        assert!(text.contains(&needle), "{needle} missing from\n{text}");
    }
    assert!(text.contains("hb_query_requests_total{"), "{text}");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn metrics_count_requests_by_report_and_status() {
    let (_test, _seed, app) = seeded_app().await;
    let q = day_query();
    app.get(
        &format!("/v1/reports/royalties?{q}"),
        Some(&token("admin", false)),
    )
    .await;
    app.get(
        &format!("/v1/reports/royalties?{q}"),
        Some(&token("app", false)),
    )
    .await;
    app.get("/v1/reports/royalties", Some(&token("admin", false)))
        .await;
    let text = app
        .client
        .get(format!("{}/metrics", app.metrics))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for needle in [
        "hb_query_requests_total{report=\"royalties\",status=\"ok\"} 1",
        "hb_query_requests_total{report=\"royalties\",status=\"forbidden\"} 1",
        "hb_query_requests_total{report=\"royalties\",status=\"bad_request\"} 1",
        "hb_query_latency_seconds_count{report=\"royalties\"} 3",
    ] {
        assert!(text.contains(needle), "{needle} missing from\n{text}");
    }
    app.stop().await.unwrap();
}

#[tokio::test]
async fn open_mode_serves_everyone_on_loopback_only() {
    let test = TestStore::new(Backend::Sqlite).await;
    let seed = Seed::generate(5);
    seed.load(&test.store).await;
    let mut config = test.config.clone();
    config.auth.secret = None;
    let app = TestApp::spawn(config.clone()).await;
    let (status, body) = app
        .get(&format!("/v1/reports/royalties?{}", day_query()), None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        rows::<RoyaltyRow>(&body),
        seed.royalties(T0, T0 + DAY, None)
    );
    app.stop().await.unwrap();

    config.http_addr = "0.0.0.0:0".parse().unwrap();
    let listeners = svc_query::QueryListeners::bind(&config).await.unwrap();
    let error = svc_query::run(
        config,
        listeners,
        tokio_util::sync::CancellationToken::new(),
    )
    .await
    .unwrap_err();
    assert!(error.to_string().contains("refusing"), "{error}");
}

#[tokio::test]
async fn shutdown_drains_and_returns_ok() {
    let (_test, _seed, app) = seeded_app().await;
    let http = app.http.clone();
    let (status, _) = app
        .get("/v1/users/u1/progress", Some(&token("app", false)))
        .await;
    assert_eq!(status, 200);
    app.stop().await.unwrap();
    assert!(
        reqwest::get(format!("{http}/v1/users/u1/progress"))
            .await
            .is_err(),
        "listener closed"
    );
}
