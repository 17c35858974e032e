//! Erasure end to end: the real service on port 0 over a seeded store, on
//! SQLite and PostgreSQL. After `DELETE /v1/users/{id}` every report equals
//! the definition over the data set without that user, the answer counts
//! what went, the audit row holds who asked, and only admins may ask.

mod common;

use common::{rfc, rows, token, Backend, Seed, TestApp, TestStore, T0};
use hb_common::raw::HOUR_MS;
use hb_proto::v1::report_service_client::ReportServiceClient;
use hb_proto::v1::UserRequest;
use svc_query::report::{
    ConcurrencyRow, ImpressionRow, ProgressRow, RoyaltyRow, SessionRow, TrafficRow,
};

const DAY: i64 = 24 * HOUR_MS;

/// Every report of SPEC 7 over the service equals `seed`'s definition.
async fn assert_reports_match(app: &TestApp, seed: &Seed, users: &[String]) {
    let admin = token("admin", false);
    let periods = [
        (T0, T0 + DAY),
        (T0 - 2 * HOUR_MS, T0 + 26 * HOUR_MS),
        (T0 + 3 * HOUR_MS + 17, T0 + 9 * HOUR_MS - 5),
    ];
    for (from, to) in periods {
        let q = format!("from={}&to={}", rfc(from), rfc(to));
        let (status, body) = app
            .get(&format!("/v1/reports/royalties?{q}"), Some(&admin))
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(rows::<RoyaltyRow>(&body), seed.royalties(from, to, None));
        let (_, body) = app
            .get(&format!("/v1/reports/impressions?{q}"), Some(&admin))
            .await;
        assert_eq!(
            rows::<ImpressionRow>(&body),
            seed.impressions(from, to, None)
        );
        let (_, body) = app
            .get(&format!("/v1/reports/traffic?{q}"), Some(&admin))
            .await;
        assert_eq!(rows::<TrafficRow>(&body), seed.traffic(from, to, None));
    }
    let q = format!("from={}&to={}&step_s=900", rfc(T0), rfc(T0 + DAY));
    let (_, body) = app
        .get(&format!("/v1/reports/concurrency?{q}"), Some(&admin))
        .await;
    assert_eq!(
        rows::<ConcurrencyRow>(&body),
        seed.concurrency(T0, T0 + DAY, 900)
    );
    for user in users {
        let (_, body) = app
            .get(&format!("/v1/users/{user}/progress"), Some(&admin))
            .await;
        assert_eq!(rows::<ProgressRow>(&body), seed.progress(user), "{user}");
        let (_, body) = app
            .get(&format!("/v1/users/{user}/sessions"), Some(&admin))
            .await;
        assert_eq!(
            rows::<SessionRow>(&body),
            seed.user_sessions(user, i64::MIN, i64::MAX),
            "{user}"
        );
    }
}

async fn check_erasure(backend: Backend) {
    let test = TestStore::new(backend).await;
    let seed = Seed::generate(23);
    seed.load(&test.store).await;
    let app = TestApp::spawn(test.config.clone()).await;
    let admin = token("admin", false);
    let users = seed.busiest_users(3);
    let victim = users[0].clone();
    // The traffic hours are summed and kept before the erasure, so the
    // reports after it show that the erasure marked them changed.
    assert_reports_match(&app, &seed, &users).await;

    for role in ["app", "license_holder:L1", "advertiser:A0", "gateway"] {
        let (status, body) = app
            .delete(&format!("/v1/users/{victim}"), Some(&token(role, false)))
            .await;
        assert_eq!(status, 403, "{role}: {body}");
        assert_eq!(body["error"], "forbidden");
    }
    let (status, body) = app
        .delete(&format!("/v1/users/{victim}"), Some("not-a-token"))
        .await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"], "unauthenticated");
    let (status, _) = app.delete(&format!("/v1/users/{victim}"), None).await;
    assert_eq!(status, 401);
    // Nothing was removed by the refused calls.
    assert_reports_match(&app, &seed, &users).await;

    let sessions = seed.sessions.iter().filter(|s| s.user_id == victim);
    let expected_sessions = sessions.clone().count() as i64;
    let expected_ads: i64 = sessions.map(|s| s.ads.len() as i64).sum();
    let expected_raw = seed.raw.iter().filter(|r| r.user_id == victim).count() as i64;
    assert!(expected_sessions > 0 && expected_ads > 0 && expected_raw > 0);
    let (status, body) = app
        .delete(&format!("/v1/users/{victim}"), Some(&admin))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user_id"], victim.as_str());
    assert_eq!(body["sessions"], expected_sessions, "{body}");
    assert_eq!(body["ad_links"], expected_ads, "{body}");
    assert_eq!(body["raw_heartbeats"], expected_raw, "{body}");
    let erasure_id = body["erasure_id"].as_i64().expect("an audit row id");

    let after = seed.without_user(&victim);
    assert_reports_match(&app, &after, &users).await;
    for table in ["sessions", "session_ads", "raw_heartbeats"] {
        let left = Seed::scalar(
            &test.store,
            &format!("SELECT COUNT(*) FROM {table} WHERE user_id = '{victim}'"),
        )
        .await;
        assert_eq!(left, 0, "{table}");
    }
    let audit: Vec<(String, String, i64, i64, i64, i64)> = match &test.store {
        hb_common::store::Store::Sqlite(pool) => sqlx::query_as(AUDIT)
            .bind(erasure_id)
            .fetch_all(pool)
            .await
            .unwrap(),
        hb_common::store::Store::Postgres(pool) => sqlx::query_as(AUDIT)
            .bind(erasure_id)
            .fetch_all(pool)
            .await
            .unwrap(),
    };
    let (user, requested_by, at_ms, raw, sessions, ads) = audit[0].clone();
    assert_eq!(
        (user.as_str(), requested_by.as_str()),
        (victim.as_str(), "test")
    );
    assert!(
        (hb_common::time::now_ms() - at_ms).abs() < 60_000,
        "{at_ms}"
    );
    assert_eq!(
        (raw, sessions, ads),
        (expected_raw, expected_sessions, expected_ads)
    );

    // Erasing again, or a user never seen: 200, nothing to remove, audited.
    for user in [victim.as_str(), "never-seen"] {
        let (status, body) = app.delete(&format!("/v1/users/{user}"), Some(&admin)).await;
        assert_eq!(status, 200, "{body}");
        for count in ["raw_heartbeats", "sessions", "ad_links"] {
            assert_eq!(body[count], 0, "{user} {count}: {body}");
        }
        assert!(body["erasure_id"].as_i64().unwrap() > erasure_id);
    }
    assert_eq!(Seed::count(&test.store, "erasures").await, 3);
    assert_reports_match(&app, &after, &users).await;
    app.stop().await.unwrap();
}

const AUDIT: &str = "SELECT user_id, requested_by, requested_at_ms, raw_heartbeats, sessions, \
                     ad_links FROM erasures WHERE id = $1";

#[tokio::test]
async fn reports_after_an_erasure_match_the_definition_without_the_user_sqlite() {
    check_erasure(Backend::Sqlite).await;
}

#[tokio::test]
async fn reports_after_an_erasure_match_the_definition_without_the_user_postgres() {
    check_erasure(Backend::Postgres).await;
}

#[tokio::test]
async fn erasure_over_grpc_answers_the_counts_and_admin_only() {
    let test = TestStore::new(Backend::Sqlite).await;
    let seed = Seed::generate(29);
    seed.load(&test.store).await;
    let app = TestApp::spawn(test.config.clone()).await;
    let mut client = ReportServiceClient::connect(app.grpc.clone())
        .await
        .unwrap();
    let victim = seed.busiest_users(1)[0].clone();
    let request = |role: &str| {
        let mut request = tonic::Request::new(UserRequest {
            user_id: victim.clone(),
        });
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {}", token(role, false)).parse().unwrap(),
        );
        request
    };
    let refused = client.erase_user(request("app")).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    let unauthenticated = client
        .erase_user(UserRequest {
            user_id: victim.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(unauthenticated.code(), tonic::Code::Unauthenticated);
    let erased = client
        .erase_user(request("admin"))
        .await
        .unwrap()
        .into_inner();
    let sessions = seed.sessions.iter().filter(|s| s.user_id == victim);
    assert_eq!(erased.user_id, victim);
    assert_eq!(erased.sessions, sessions.clone().count() as i64);
    assert_eq!(
        erased.ad_links,
        sessions.map(|s| s.ads.len() as i64).sum::<i64>()
    );
    assert_eq!(
        erased.raw_heartbeats,
        seed.raw.iter().filter(|r| r.user_id == victim).count() as i64
    );
    assert_eq!(erased.erasure_id, 1);
    let mut empty = request("admin");
    empty.get_mut().user_id = String::new();
    let bad = client.erase_user(empty).await.unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    let after = seed.without_user(&victim);
    assert_reports_match(&app, &after, &seed.busiest_users(3)).await;
    app.stop().await.unwrap();
}
