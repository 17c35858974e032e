//! The OpenAPI document of the HTTP API: served without a token at
//! `GET /openapi.json` as OpenAPI 3.1, listing every endpoint with its
//! parameters, security and statuses, and describing the answers the real
//! service gives (checked here by a small JSON Schema walker on real
//! answers; the schemathesis run of `.ci/ops/openapi_check.sh` fuzzes it).

mod common;

use common::{rfc, token, Backend, Seed, TestApp, TestStore, T0};
use hb_common::raw::HOUR_MS;
use serde_json::{json, Value};

/// Every path the API serves, with its method.
const OPERATIONS: [(&str, &str); 9] = [
    ("get", "/v1/reports/royalties"),
    ("get", "/v1/reports/impressions"),
    ("get", "/v1/reports/concurrency"),
    ("get", "/v1/reports/traffic"),
    ("get", "/v1/users/{user_id}/progress"),
    ("get", "/v1/users/{user_id}/sessions"),
    ("put", "/v1/catalog/videos"),
    ("put", "/v1/catalog/ads"),
    ("delete", "/v1/users/{user_id}"),
];

async fn seeded_app() -> (TestStore, Seed, TestApp) {
    let test = TestStore::new(Backend::Sqlite).await;
    let seed = Seed::generate(3);
    seed.load(&test.store).await;
    let app = TestApp::spawn(test.config.clone()).await;
    (test, seed, app)
}

async fn document(app: &TestApp) -> Value {
    let response = app
        .client
        .get(format!("{}/openapi.json", app.http))
        .send()
        .await
        .expect("GET /openapi.json");
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "application/json",
        "the document is JSON"
    );
    response.json().await.expect("a JSON document")
}

/// Follows a `$ref` to `#/components/...`.
fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(reference) => {
            let pointer = reference.strip_prefix('#').expect("a local $ref");
            resolve(doc, doc.pointer(pointer).expect("the $ref resolves"))
        }
        None => schema,
    }
}

/// The part of JSON Schema the document uses: `$ref`, `type` (one or a
/// list), `properties`, `required`, `additionalProperties: false`,
/// `items`, `minimum`. Returns what does not conform.
fn violations(doc: &Value, schema: &Value, value: &Value, at: &str) -> Vec<String> {
    let schema = resolve(doc, schema);
    let mut found = Vec::new();
    let types: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    let type_ok = types.is_empty()
        || types.iter().any(|t| match *t {
            "object" => value.is_object(),
            "array" => value.is_array(),
            "string" => value.is_string(),
            "integer" => value.is_i64() || value.is_u64(),
            "number" => value.is_number(),
            "boolean" => value.is_boolean(),
            "null" => value.is_null(),
            _ => false,
        });
    if !type_ok {
        found.push(format!("{at}: {value} is not {types:?}"));
        return found;
    }
    if let (Some(minimum), Some(n)) = (schema["minimum"].as_i64(), value.as_i64()) {
        if n < minimum {
            found.push(format!("{at}: {n} < minimum {minimum}"));
        }
    }
    if let Some(object) = value.as_object() {
        let properties = schema["properties"].as_object();
        for name in schema["required"].as_array().into_iter().flatten() {
            let name = name.as_str().unwrap();
            if !object.contains_key(name) {
                found.push(format!("{at}: required {name} missing"));
            }
        }
        for (name, field) in object {
            match properties.and_then(|p| p.get(name)) {
                Some(property) => {
                    found.extend(violations(doc, property, field, &format!("{at}.{name}")))
                }
                None if schema["additionalProperties"] == json!(false) => {
                    found.push(format!("{at}: {name} is not in the schema"))
                }
                None => {}
            }
        }
    }
    if let (Some(items), Some(array)) = (schema.get("items"), value.as_array()) {
        for (index, item) in array.iter().enumerate() {
            found.extend(violations(doc, items, item, &format!("{at}[{index}]")));
        }
    }
    found
}

/// The JSON schema of `status` of the operation `method path`.
fn response_schema<'a>(doc: &'a Value, method: &str, path: &str, status: u16) -> &'a Value {
    let response = &doc["paths"][path][method]["responses"][status.to_string()];
    let response = resolve(doc, response);
    let schema = &response["content"]["application/json"]["schema"];
    assert!(
        !schema.is_null(),
        "{method} {path} documents no JSON body for {status}"
    );
    schema
}

#[tokio::test]
async fn the_document_is_openapi_3_1_and_lists_every_endpoint() {
    let (_test, _seed, app) = seeded_app().await;
    // No token: the document is public even where every call needs one.
    let doc = document(&app).await;
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1."),
        "{}",
        doc["openapi"]
    );
    assert_eq!(doc["info"]["title"], "svc-query");
    assert_eq!(
        doc,
        serde_json::to_value(svc_query::http::openapi()).unwrap(),
        "the served document is the generated one"
    );
    let paths = doc["paths"].as_object().unwrap();
    let mut documented: Vec<(String, String)> = paths
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .map(move |method| (method.clone(), path.clone()))
        })
        .collect();
    documented.sort();
    let mut expected: Vec<(String, String)> = OPERATIONS
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    expected.sort();
    assert_eq!(documented, expected);

    let scheme = &doc["components"]["securitySchemes"]["bearer"];
    assert_eq!(
        (&scheme["type"], &scheme["scheme"]),
        (&json!("http"), &json!("bearer"))
    );
    assert_eq!(doc["security"], json!([{"bearer": []}]));
    let error = resolve(&doc, &doc["components"]["schemas"]["ErrorBody"]);
    assert_eq!(error["required"], json!(["error", "detail"]));

    let mut ms_fields = 0;
    for (method, path) in OPERATIONS {
        let operation = &doc["paths"][path][method];
        let responses = operation["responses"].as_object().unwrap();
        for status in ["200", "400", "401", "403", "500", "503", "504"] {
            assert!(
                responses.contains_key(status),
                "{method} {path} does not document {status}"
            );
        }
        for (status, response) in responses {
            let schema = &resolve(&doc, response)["content"]["application/json"]["schema"];
            if status != "200" {
                assert_eq!(
                    schema["$ref"], "#/components/schemas/ErrorBody",
                    "{method} {path} {status}"
                );
            }
        }
        if path.contains("{user_id}") {
            let user = operation["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["name"] == "user_id")
                .expect("user_id documented");
            assert_eq!(
                (&user["in"], &user["required"]),
                (&json!("path"), &json!(true))
            );
            assert_eq!(user["schema"]["maxLength"], 128);
        }
        // Every list answer is {rows: [...]} and every *_ms field an integer.
        if method == "get" {
            let list = resolve(&doc, response_schema(&doc, method, path, 200));
            assert_eq!(list["required"], json!(["rows"]), "{path}");
            let row = resolve(&doc, &list["properties"]["rows"]["items"]);
            for (name, field) in row["properties"].as_object().unwrap() {
                if name.ends_with("_ms") {
                    assert_eq!(field["type"], "integer", "{path} {name}");
                    ms_fields += 1;
                }
            }
        }
    }
    // bucket_start_ms, hour_start_ms, progress (3), sessions (5 and watch_ms, coverage_ms).
    assert!(ms_fields >= 10, "{ms_fields} _ms fields");
    // Query parameters: the period of the reports, the bucket width.
    let concurrency = &doc["paths"]["/v1/reports/concurrency"]["get"]["parameters"];
    let params: Vec<(&str, bool)> = concurrency
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["name"].as_str().unwrap(), p["required"] == json!(true)))
        .collect();
    assert_eq!(params, [("from", true), ("to", true), ("step_s", false)]);
    assert_eq!(concurrency[0]["schema"]["format"], "date-time");
    assert_eq!(concurrency[2]["schema"]["minimum"], 1);
    assert_eq!(concurrency[2]["schema"]["maximum"], 86_400);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn real_answers_match_their_documented_schemas() {
    let (_test, seed, app) = seeded_app().await;
    let doc = document(&app).await;
    let admin = token("admin", false);
    let q = format!("from={}&to={}", rfc(T0), rfc(T0 + 24 * HOUR_MS));
    let user = seed.busiest_users(1).remove(0);
    let asks = [
        (
            "/v1/reports/royalties",
            format!("/v1/reports/royalties?{q}"),
        ),
        (
            "/v1/reports/impressions",
            format!("/v1/reports/impressions?{q}"),
        ),
        (
            "/v1/reports/concurrency",
            format!("/v1/reports/concurrency?{q}&step_s=3600"),
        ),
        ("/v1/reports/traffic", format!("/v1/reports/traffic?{q}")),
        (
            "/v1/users/{user_id}/progress",
            format!("/v1/users/{user}/progress"),
        ),
        (
            "/v1/users/{user_id}/sessions",
            format!("/v1/users/{user}/sessions"),
        ),
    ];
    for (path, url) in &asks {
        let (status, body) = app.get(url, Some(&admin)).await;
        assert_eq!(status, 200, "{url}: {body}");
        assert!(
            !body["rows"].as_array().unwrap().is_empty(),
            "{url}: rows to check"
        );
        let schema = response_schema(&doc, "get", path, 200);
        assert_eq!(
            violations(&doc, schema, &body, "body"),
            Vec::<String>::new()
        );
    }
    let (status, body) = app
        .put(
            "/v1/catalog/ads",
            Some(&admin),
            &json!([{"ad_id": "a-x", "campaign_id": "c", "advertiser_id": "A"}]),
        )
        .await;
    assert_eq!(status, 200);
    let schema = response_schema(&doc, "put", "/v1/catalog/ads", 200);
    assert_eq!(
        violations(&doc, schema, &body, "body"),
        Vec::<String>::new()
    );

    // Refusals, each with the status the document gives them.
    let app_token = token("app", false);
    for (status, url, bearer) in [
        (
            400,
            "/v1/reports/traffic?from=never".to_string(),
            Some(&admin),
        ),
        (401, format!("/v1/reports/royalties?{q}"), None),
        (403, format!("/v1/reports/royalties?{q}"), Some(&app_token)),
    ] {
        let (got, body) = app.get(&url, bearer.map(String::as_str)).await;
        assert_eq!(got, status, "{url}: {body}");
        let schema = response_schema(&doc, "get", "/v1/reports/traffic", status);
        assert_eq!(
            violations(&doc, schema, &body, "body"),
            Vec::<String>::new()
        );
    }
    // The checker does catch a wrong answer.
    let schema = response_schema(&doc, "get", "/v1/reports/concurrency", 200);
    let wrong = json!({"rows": [{"bucket_start_ms": "10:00", "viewers": 1}]});
    assert_eq!(violations(&doc, schema, &wrong, "body").len(), 1);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn the_docs_page_needs_no_token() {
    let (_test, _seed, app) = seeded_app().await;
    let response = app
        .client
        .get(format!("{}/docs", app.http))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let page = response.text().await.unwrap();
    assert!(
        page.contains("/v1/reports/royalties"),
        "the page embeds the document"
    );
    app.stop().await.unwrap();
}
