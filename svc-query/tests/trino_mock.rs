//! The Trino engine against a wiremock server speaking Trino's client
//! protocol: POST /v1/statement -> QUEUED -> RUNNING -> data pages ->
//! FINISHED, `nextUri`s built from the mock's own address, full `stats`.
//! Checks the exact SQL per report (golden strings), the session headers,
//! paging, failures on a GET page, 503 retries and the deadline's single
//! DELETE.

mod common;

use serde_json::{json, Value};
use std::time::Duration;
use svc_query::engine::trino::{TrinoEngine, TrinoSettings};
use svc_query::engine::ReportEngine;
use svc_query::error::EngineError;
use svc_query::report::{
    ConcurrencyRow, ConcurrencySpec, ImpressionRow, RoyaltyRow, TrafficRow, Window,
};
use wiremock::matchers::{body_string, header, method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

const T0: i64 = 1_714_521_600_000;
const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;

const ROYALTIES_SQL: &str = r#"SELECT v.license_holder_id, a.video_id, a.sessions, a.viewers, a.watch_ms, v.rate_micros_per_hour
FROM (
SELECT s.video_id, COUNT(*) AS sessions, COUNT(DISTINCT s.user_id) AS viewers, CAST(SUM(s.watch_ms) AS BIGINT) AS watch_ms
FROM "yugabyte"."public"."sessions" s
WHERE s.start_ms >= 1714521600000 AND s.start_ms < 1714608000000
GROUP BY s.video_id
) a JOIN "yugabyte"."public"."videos" v ON v.video_id = a.video_id"#;

const ROYALTIES_L1_SQL: &str = r#"SELECT v.license_holder_id, a.video_id, a.sessions, a.viewers, a.watch_ms, v.rate_micros_per_hour
FROM (
SELECT s.video_id, COUNT(*) AS sessions, COUNT(DISTINCT s.user_id) AS viewers, CAST(SUM(s.watch_ms) AS BIGINT) AS watch_ms
FROM "yugabyte"."public"."sessions" s
WHERE s.start_ms >= 1714521600000 AND s.start_ms < 1714608000000 AND s.video_id IN (SELECT video_id FROM "yugabyte"."public"."videos" WHERE license_holder_id = 'L1')
GROUP BY s.video_id
) a JOIN "yugabyte"."public"."videos" v ON v.video_id = a.video_id
WHERE v.license_holder_id = 'L1'"#;

const IMPRESSIONS_A1_SQL: &str = r#"SELECT a.advertiser_id, a.campaign_id, x.ad_id, x.impressions, x.viewers
FROM (
SELECT x.ad_id, COUNT(*) AS impressions, COUNT(DISTINCT x.user_id) AS viewers
FROM "yugabyte"."public"."session_ads" x
WHERE x.start_ms >= 1714521600000 AND x.start_ms < 1714608000000 AND x.ad_id IN (SELECT ad_id FROM "yugabyte"."public"."ads" WHERE advertiser_id = 'A1')
GROUP BY x.ad_id
) x JOIN "yugabyte"."public"."ads" a ON a.ad_id = x.ad_id
WHERE a.advertiser_id = 'A1'"#;

const CONCURRENCY_SQL: &str = r#"SELECT s.user_id, s.start_ms, s.end_ms
FROM "yugabyte"."public"."sessions" s
WHERE s.start_ms < 1714525200000 AND s.end_ms >= 1714521600000"#;

const TRAFFIC_L1_SQL: &str = r#"WITH raw_hours AS (
SELECT hour_ms, video_id, device_id, COUNT(*) AS heartbeats
FROM "scylla"."heartbeats"."by_hour"
WHERE hour_ms IN (1714521600000, 1714525200000) AND bucket IN (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15) AND event_time_ms >= 1714521600000 AND event_time_ms < 1714528800000
GROUP BY hour_ms, video_id, device_id
), titles AS (
SELECT video_id, license_holder_id FROM "yugabyte"."public"."videos" WHERE license_holder_id = 'L1'
)
SELECT r.hour_ms AS hour_start_ms, t.license_holder_id, CAST(SUM(r.heartbeats) AS BIGINT) AS heartbeats, COUNT(DISTINCT r.device_id) AS devices
FROM raw_hours r JOIN titles t ON t.video_id = r.video_id
GROUP BY r.hour_ms, t.license_holder_id"#;

fn stats(state: &str, rows: u64) -> Value {
    json!({
        "state": state,
        "queued": state == "QUEUED",
        "scheduled": state != "QUEUED",
        "progressPercentage": if state == "FINISHED" { 100.0 } else { 0.0 },
        "runningPercentage": 0.0,
        "nodes": 1,
        "totalSplits": 4,
        "queuedSplits": 0,
        "runningSplits": if state == "RUNNING" { 2 } else { 0 },
        "completedSplits": if state == "FINISHED" { 4 } else { 2 },
        "cpuTimeMillis": 12,
        "wallTimeMillis": 30,
        "queuedTimeMillis": 1,
        "elapsedTimeMillis": 45,
        "processedRows": rows,
        "processedBytes": rows * 64,
        "physicalInputBytes": rows * 64,
        "physicalWrittenBytes": 0,
        "peakMemoryBytes": 1024,
        "spilledBytes": 0,
        "rootStage": null
    })
}

fn column(name: &str, ty: &str) -> Value {
    let (raw, arguments) = match ty {
        "varchar" => ("varchar", json!([{"kind": "LONG", "value": 2147483647}])),
        "bigint" => ("bigint", json!([])),
        t if t.starts_with("decimal") => (
            "decimal",
            json!([{"kind": "LONG", "value": 20}, {"kind": "LONG", "value": 0}]),
        ),
        t if t.starts_with("timestamp") => ("timestamp", json!([{"kind": "LONG", "value": 3}])),
        other => panic!("no signature for {other}"),
    };
    json!({"name": name, "type": ty, "typeSignature": {"rawType": raw, "arguments": arguments}})
}

fn page(server: &MockServer, id: &str, state: &str, next: Option<&str>) -> Value {
    let uri = server.uri();
    let mut page = json!({
        "id": id,
        "infoUri": format!("{uri}/ui/query.html?{id}"),
        "stats": stats(state, 0),
        "warnings": []
    });
    if let Some(next) = next {
        page["nextUri"] = json!(format!("{uri}{next}"));
        page["partialCancelUri"] = json!(format!("{uri}/v1/stage/{id}.0"));
    }
    page
}

/// Mounts a whole successful query: POST (with the exact SQL and session
/// headers) -> QUEUED -> RUNNING without data -> one RUNNING page per entry
/// of `data` -> FINISHED. Every step is expected exactly once.
async fn mount_query(server: &MockServer, id: &str, sql: &str, columns: Value, data: Vec<Value>) {
    Mock::given(method("POST"))
        .and(path("/v1/statement"))
        .and(body_string(sql))
        .and(header("X-Trino-User", "hbmesh"))
        .and(header("X-Trino-Catalog", "yugabyte"))
        .and(header("X-Trino-Schema", "public"))
        .respond_with(ResponseTemplate::new(200).set_body_json(page(
            server,
            id,
            "QUEUED",
            Some(&format!("/v1/statement/queued/{id}/y0/1")),
        )))
        .expect(1)
        .named(format!("{id} submit"))
        .mount(server)
        .await;
    Mock::given(method("GET"))
        .and(path(format!("/v1/statement/queued/{id}/y0/1")))
        .and(header("X-Trino-User", "hbmesh"))
        .respond_with(ResponseTemplate::new(200).set_body_json(page(
            server,
            id,
            "RUNNING",
            Some(&format!("/v1/statement/executing/{id}/y1/0")),
        )))
        .expect(1)
        .named(format!("{id} queued"))
        .mount(server)
        .await;
    let pages = data.len();
    for (token, rows) in data.into_iter().enumerate() {
        let mut body = page(
            server,
            id,
            "RUNNING",
            Some(&format!("/v1/statement/executing/{id}/y1/{}", token + 1)),
        );
        body["columns"] = columns.clone();
        body["data"] = rows;
        Mock::given(method("GET"))
            .and(path(format!("/v1/statement/executing/{id}/y1/{token}")))
            .respond_with(ResponseTemplate::new(200).set_body_json(body))
            .expect(1)
            .named(format!("{id} page {token}"))
            .mount(server)
            .await;
    }
    let mut finished = page(server, id, "FINISHED", None);
    finished["columns"] = columns;
    finished["stats"] = stats("FINISHED", 10);
    Mock::given(method("GET"))
        .and(path(format!("/v1/statement/executing/{id}/y1/{pages}")))
        .respond_with(ResponseTemplate::new(200).set_body_json(finished))
        .expect(1)
        .named(format!("{id} finished"))
        .mount(server)
        .await;
}

fn settings(server: &MockServer, timeout: Duration) -> TrinoSettings {
    let mut config = svc_query::config::QueryConfig {
        query_timeout: timeout,
        ..Default::default()
    };
    config.trino_url = Some(server.uri());
    let mut settings = TrinoSettings::from_config(&config, &server.uri()).unwrap();
    settings.backoff = Duration::from_millis(10);
    settings
}

fn engine(server: &MockServer) -> TrinoEngine {
    TrinoEngine::new(settings(server, Duration::from_secs(10))).unwrap()
}

fn day() -> Window {
    Window::new(T0, T0 + DAY).unwrap()
}

async fn deletes(server: &MockServer) -> Vec<String> {
    server
        .received_requests()
        .await
        .unwrap()
        .into_iter()
        .filter(|r: &Request| r.method.as_str() == "DELETE")
        .map(|r| r.url.path().to_string())
        .collect()
}

#[tokio::test]
async fn royalties_page_through_the_protocol() {
    let server = MockServer::start().await;
    let columns = json!([
        column("license_holder_id", "varchar"),
        column("video_id", "varchar"),
        column("sessions", "bigint"),
        column("viewers", "bigint"),
        column("watch_ms", "bigint"),
        // A NUMERIC rate in YugabyteDB arrives as a decimal string.
        column("rate_micros_per_hour", "decimal(20,0)"),
    ]);
    mount_query(
        &server,
        "20240501_000000_00001_aaaaa",
        ROYALTIES_SQL,
        columns,
        vec![
            json!([
                ["L2", "v9", 3, 2, 7200000, "1500000"],
                ["L1", "v2", 1, 1, 1, "3599999"]
            ]),
            json!([["L1", "v1", 5, 4, 3600000, "1000000"]]),
            json!([]),
        ],
    )
    .await;
    let rows = engine(&server).royalties(day(), None).await.unwrap();
    assert_eq!(
        rows,
        vec![
            RoyaltyRow {
                license_holder_id: "L1".into(),
                video_id: "v1".into(),
                sessions: 5,
                viewers: 4,
                watch_ms: 3_600_000,
                amount_micros: 1_000_000
            },
            RoyaltyRow {
                license_holder_id: "L1".into(),
                video_id: "v2".into(),
                sessions: 1,
                viewers: 1,
                watch_ms: 1,
                amount_micros: 0
            },
            RoyaltyRow {
                license_holder_id: "L2".into(),
                video_id: "v9".into(),
                sessions: 3,
                viewers: 2,
                watch_ms: 7_200_000,
                amount_micros: 3_000_000
            },
        ]
    );
    assert!(
        deletes(&server).await.is_empty(),
        "a finished query is not cancelled"
    );
    server.verify().await;
}

#[tokio::test]
async fn scoped_royalties_and_impressions_send_the_scope_in_the_sql() {
    let server = MockServer::start().await;
    mount_query(
        &server,
        "q_royalties_l1",
        ROYALTIES_L1_SQL,
        json!([
            column("video_id", "varchar"),
            column("license_holder_id", "varchar"),
            column("rate_micros_per_hour", "bigint"),
            column("watch_ms", "bigint"),
            column("viewers", "bigint"),
            column("sessions", "bigint"),
        ]),
        // Columns in another order: mapped by name, not position.
        vec![json!([["v1", "L1", 7200000, 1800000, 2, 3]])],
    )
    .await;
    mount_query(
        &server,
        "q_impressions_a1",
        IMPRESSIONS_A1_SQL,
        json!([
            column("advertiser_id", "varchar"),
            column("campaign_id", "varchar"),
            column("ad_id", "varchar"),
            column("impressions", "bigint"),
            column("viewers", "bigint"),
        ]),
        vec![
            json!([["A1", "c2", "a9", 4, 3]]),
            json!([["A1", "c1", "a1", 10, 7]]),
        ],
    )
    .await;
    let engine = engine(&server);
    let royalties = engine.royalties(day(), Some("L1")).await.unwrap();
    assert_eq!(royalties.len(), 1);
    assert_eq!(
        (
            royalties[0].sessions,
            royalties[0].watch_ms,
            royalties[0].amount_micros
        ),
        (3, 1_800_000, 3_600_000)
    );
    let impressions = engine.impressions(day(), Some("A1")).await.unwrap();
    assert_eq!(
        impressions,
        vec![
            ImpressionRow {
                advertiser_id: "A1".into(),
                campaign_id: "c1".into(),
                ad_id: "a1".into(),
                impressions: 10,
                viewers: 7
            },
            ImpressionRow {
                advertiser_id: "A1".into(),
                campaign_id: "c2".into(),
                ad_id: "a9".into(),
                impressions: 4,
                viewers: 3
            },
        ]
    );
    server.verify().await;
}

#[tokio::test]
async fn concurrency_and_traffic_golden_sql() {
    let server = MockServer::start().await;
    mount_query(
        &server,
        "q_concurrency",
        CONCURRENCY_SQL,
        json!([
            column("user_id", "varchar"),
            column("start_ms", "bigint"),
            column("end_ms", "bigint")
        ]),
        vec![
            json!([
                ["u1", T0 - 60_000, T0 + 60_000],
                ["u2", T0 + 1_800_000, T0 + 1_900_000]
            ]),
            json!([["u1", T0 + 120_000, T0 + 3_000_000]]),
        ],
    )
    .await;
    mount_query(
        &server,
        "q_traffic",
        TRAFFIC_L1_SQL,
        json!([
            // An hour exposed as a timestamp (e.g. through a view) is read as epoch ms.
            column("hour_start_ms", "timestamp(3)"),
            column("license_holder_id", "varchar"),
            column("heartbeats", "bigint"),
            column("devices", "bigint"),
        ]),
        vec![json!([
            ["2024-05-01 01:00:00.000", "L1", 40, 3],
            ["2024-05-01 00:00:00.000", "L1", 720, 10]
        ])],
    )
    .await;
    let engine = engine(&server);
    let spec = ConcurrencySpec::new(Window::new(T0, T0 + HOUR).unwrap(), 1_800).unwrap();
    assert_eq!(
        engine.concurrency(spec).await.unwrap(),
        vec![
            ConcurrencyRow {
                bucket_start_ms: T0,
                viewers: 1
            },
            ConcurrencyRow {
                bucket_start_ms: T0 + 1_800_000,
                viewers: 2
            },
        ]
    );
    let traffic = engine
        .traffic(Window::new(T0, T0 + 2 * HOUR).unwrap(), Some("L1"))
        .await
        .unwrap();
    assert_eq!(
        traffic,
        vec![
            TrafficRow {
                hour_start_ms: T0,
                license_holder_id: "L1".into(),
                heartbeats: 720,
                devices: 10
            },
            TrafficRow {
                hour_start_ms: T0 + HOUR,
                license_holder_id: "L1".into(),
                heartbeats: 40,
                devices: 3
            },
        ]
    );
    server.verify().await;
}

/// POST -> QUEUED, then the first GET answers FAILED with `error`.
async fn mount_failure(server: &MockServer, id: &str, name: &str, code: i64, kind: &str) {
    Mock::given(method("POST"))
        .and(path("/v1/statement"))
        .respond_with(ResponseTemplate::new(200).set_body_json(page(
            server,
            id,
            "QUEUED",
            Some(&format!("/v1/statement/queued/{id}/y0/1")),
        )))
        .expect(1)
        .mount(server)
        .await;
    let mut failed = page(server, id, "FAILED", None);
    failed["error"] = json!({
        "message": format!("line 2:6: {name} for this query"),
        "sqlState": null,
        "errorCode": code,
        "errorName": name,
        "errorType": kind,
        "errorLocation": {"lineNumber": 2, "columnNumber": 6},
        "failureInfo": {
            "type": "io.trino.spi.TrinoException",
            "message": format!("{name} for this query"),
            "suppressed": [],
            "stack": ["io.trino.sql.analyzer.StatementAnalyzer.analyze(StatementAnalyzer.java:1)"],
            "cause": null,
            "errorLocation": {"lineNumber": 2, "columnNumber": 6}
        }
    });
    Mock::given(method("GET"))
        .and(path(format!("/v1/statement/queued/{id}/y0/1")))
        .respond_with(ResponseTemplate::new(200).set_body_json(failed))
        .expect(1)
        .mount(server)
        .await;
}

#[tokio::test]
async fn failed_pages_map_to_clear_errors() {
    for (name, code, kind) in [
        ("TABLE_NOT_FOUND", 46, "USER_ERROR"),
        ("PERMISSION_DENIED", 4, "USER_ERROR"),
        ("SYNTAX_ERROR", 1, "USER_ERROR"),
        ("EXCEEDED_TIME_LIMIT", 131075, "INSUFFICIENT_RESOURCES"),
    ] {
        let server = MockServer::start().await;
        mount_failure(&server, "q_failed", name, code, kind).await;
        let error = engine(&server).royalties(day(), None).await.unwrap_err();
        let detail = error.to_string();
        assert!(detail.contains(name), "{detail}");
        match name {
            "TABLE_NOT_FOUND" | "PERMISSION_DENIED" => {
                assert!(
                    matches!(error, EngineError::Upstream(_)),
                    "{name}: {error:?}"
                )
            }
            "SYNTAX_ERROR" => assert!(matches!(error, EngineError::Internal(_)), "{error:?}"),
            _ => assert!(matches!(error, EngineError::Unavailable(_)), "{error:?}"),
        }
        assert!(
            deletes(&server).await.is_empty(),
            "a failed query is over already"
        );
        server.verify().await;
    }
}

#[tokio::test]
async fn a_503_is_retried_then_succeeds() {
    let server = MockServer::start().await;
    // The first submit and the first page fetch are refused with 503.
    Mock::given(method("POST"))
        .and(path("/v1/statement"))
        .respond_with(ResponseTemplate::new(503).set_body_string("server starting"))
        .up_to_n_times(1)
        .with_priority(1)
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/v1/statement/executing/q_retry/y1/0"))
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(1)
        .with_priority(1)
        .expect(1)
        .mount(&server)
        .await;
    mount_query(
        &server,
        "q_retry",
        CONCURRENCY_SQL,
        json!([
            column("user_id", "varchar"),
            column("start_ms", "bigint"),
            column("end_ms", "bigint")
        ]),
        vec![json!([["u1", T0, T0]])],
    )
    .await;
    let spec = ConcurrencySpec::new(Window::new(T0, T0 + HOUR).unwrap(), 3_600).unwrap();
    let rows = engine(&server).concurrency(spec).await.unwrap();
    assert_eq!(
        rows,
        vec![ConcurrencyRow {
            bucket_start_ms: T0,
            viewers: 1
        }]
    );
    server.verify().await;
}

#[tokio::test]
async fn a_trino_that_stays_503_is_unavailable() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/statement"))
        .respond_with(ResponseTemplate::new(503))
        .expect(5)
        .mount(&server)
        .await;
    let error = engine(&server).royalties(day(), None).await.unwrap_err();
    assert!(matches!(error, EngineError::Unavailable(_)), "{error:?}");
    assert!(error.to_string().contains("503"));
    server.verify().await;
}

#[tokio::test]
async fn a_slow_page_past_the_deadline_is_cancelled_exactly_once() {
    let server = MockServer::start().await;
    let id = "q_slow";
    Mock::given(method("POST"))
        .and(path("/v1/statement"))
        .respond_with(ResponseTemplate::new(200).set_body_json(page(
            &server,
            id,
            "QUEUED",
            Some(&format!("/v1/statement/queued/{id}/y0/1")),
        )))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(format!("/v1/statement/queued/{id}/y0/1")))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(page(
                    &server,
                    id,
                    "RUNNING",
                    Some(&format!("/v1/statement/executing/{id}/y1/0")),
                ))
                .set_delay(Duration::from_secs(5)),
        )
        .mount(&server)
        .await;
    Mock::given(method("DELETE"))
        .and(path(format!("/v1/query/{id}")))
        .respond_with(ResponseTemplate::new(204))
        .expect(1)
        .mount(&server)
        .await;
    let engine = TrinoEngine::new(settings(&server, Duration::from_millis(400))).unwrap();
    let started = std::time::Instant::now();
    let error = engine.royalties(day(), None).await.unwrap_err();
    assert_eq!(error, EngineError::Deadline(Duration::from_millis(400)));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the deadline, not the slow page"
    );
    // The cancel was awaited before answering; nothing else follows it.
    assert_eq!(deletes(&server).await, vec![format!("/v1/query/{id}")]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(deletes(&server).await.len(), 1);
    server.verify().await;
}

#[tokio::test]
async fn the_http_api_reports_trino_failures_with_their_status() {
    let server = MockServer::start().await;
    mount_failure(&server, "q_http", "TABLE_NOT_FOUND", 46, "USER_ERROR").await;
    let store = common::TestStore::new(common::Backend::Sqlite).await;
    let mut config = store.config.clone();
    config.trino_url = Some(server.uri());
    let app = common::TestApp::spawn(config).await;
    let (status, body) = app
        .get(
            &format!(
                "/v1/reports/royalties?from={}&to={}",
                common::rfc(T0),
                common::rfc(T0 + DAY)
            ),
            Some(&common::token("admin", false)),
        )
        .await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"], "upstream_error");
    assert!(
        body["detail"].as_str().unwrap().contains("TABLE_NOT_FOUND"),
        "{body}"
    );
    // Progress never goes through Trino: it answers from the store.
    let (status, body) = app
        .get("/v1/users/u1/progress", Some(&common::token("app", false)))
        .await;
    assert_eq!((status, body), (200, json!({"rows": []})));
    app.stop().await.unwrap();
}
