//! `ReportService` over a real tonic client on port 0: every RPC answers the
//! SPEC 7 definition, errors map to their gRPC codes, health and reflection
//! are served.

mod common;

use common::{token, Backend, Seed, TestApp, TestStore, T0};
use hb_common::raw::HOUR_MS;
use hb_proto::v1::report_service_client::ReportServiceClient;
use hb_proto::v1::{ConcurrencyRequest, ReportRequest, UserRequest, UserSessionsRequest};
use tonic::transport::Channel;
use tonic::{Code, Request};

const DAY: i64 = 24 * HOUR_MS;

fn with_token<T>(message: T, role: &str) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", token(role, false)).parse().unwrap(),
    );
    request
}

async fn setup() -> (TestStore, Seed, TestApp, ReportServiceClient<Channel>) {
    let test = TestStore::new(Backend::Sqlite).await;
    let seed = Seed::generate(19);
    seed.load(&test.store).await;
    let app = TestApp::spawn(test.config.clone()).await;
    let client = ReportServiceClient::connect(app.grpc.clone())
        .await
        .unwrap();
    (test, seed, app, client)
}

fn day() -> ReportRequest {
    ReportRequest {
        from_ms: T0,
        to_ms: T0 + DAY,
    }
}

#[tokio::test]
async fn royalties_and_impressions_over_grpc() {
    let (_test, seed, app, mut client) = setup().await;
    let reply = client
        .royalties(with_token(day(), "admin"))
        .await
        .unwrap()
        .into_inner();
    let want = seed.royalties(T0, T0 + DAY, None);
    assert_eq!(reply.rows.len(), want.len());
    for (got, want) in reply.rows.iter().zip(&want) {
        assert_eq!(
            (
                &got.license_holder_id,
                &got.video_id,
                got.sessions,
                got.viewers,
                got.watch_ms,
                got.amount_micros
            ),
            (
                &want.license_holder_id,
                &want.video_id,
                want.sessions,
                want.viewers,
                want.watch_ms,
                want.amount_micros
            )
        );
    }
    let scoped = client
        .royalties(with_token(day(), "license_holder:L2"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        scoped.rows.len(),
        seed.royalties(T0, T0 + DAY, Some("L2")).len()
    );
    assert!(!scoped.rows.is_empty() && scoped.rows.iter().all(|r| r.license_holder_id == "L2"));

    let reply = client
        .impressions(with_token(day(), "advertiser:A1"))
        .await
        .unwrap()
        .into_inner();
    let want = seed.impressions(T0, T0 + DAY, Some("A1"));
    let got: Vec<_> = reply
        .rows
        .iter()
        .map(|r| {
            (
                r.advertiser_id.clone(),
                r.campaign_id.clone(),
                r.ad_id.clone(),
                r.impressions,
                r.viewers,
            )
        })
        .collect();
    let want: Vec<_> = want
        .into_iter()
        .map(|r| {
            (
                r.advertiser_id,
                r.campaign_id,
                r.ad_id,
                r.impressions,
                r.viewers,
            )
        })
        .collect();
    assert_eq!(got, want);
    assert!(!got.is_empty());
    app.stop().await.unwrap();
}

#[tokio::test]
async fn concurrency_and_traffic_over_grpc() {
    let (_test, seed, app, mut client) = setup().await;
    let reply = client
        .concurrency(with_token(
            ConcurrencyRequest {
                from_ms: T0,
                to_ms: T0 + DAY,
                step_s: 1_800,
            },
            "admin",
        ))
        .await
        .unwrap()
        .into_inner();
    let got: Vec<(i64, i64)> = reply
        .rows
        .iter()
        .map(|r| (r.bucket_start_ms, r.viewers))
        .collect();
    let want: Vec<(i64, i64)> = seed
        .concurrency(T0, T0 + DAY, 1_800)
        .into_iter()
        .map(|r| (r.bucket_start_ms, r.viewers))
        .collect();
    assert_eq!(got, want);
    // step_s 0 is the default of 60.
    let reply = client
        .concurrency(with_token(
            ConcurrencyRequest {
                from_ms: T0,
                to_ms: T0 + HOUR_MS,
                step_s: 0,
            },
            "admin",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.rows.len(), 60);

    let reply = client
        .traffic(with_token(day(), "license_holder:L0"))
        .await
        .unwrap()
        .into_inner();
    let got: Vec<_> = reply
        .rows
        .iter()
        .map(|r| {
            (
                r.hour_start_ms,
                r.license_holder_id.clone(),
                r.heartbeats,
                r.devices,
            )
        })
        .collect();
    let want: Vec<_> = seed
        .traffic(T0, T0 + DAY, Some("L0"))
        .into_iter()
        .map(|r| {
            (
                r.hour_start_ms,
                r.license_holder_id,
                r.heartbeats,
                r.devices,
            )
        })
        .collect();
    assert_eq!(got, want);
    assert!(!got.is_empty());
    app.stop().await.unwrap();
}

#[tokio::test]
async fn user_lookups_over_grpc() {
    let (_test, seed, app, mut client) = setup().await;
    let user = seed.busiest_users(1).remove(0);
    let reply = client
        .user_progress(with_token(
            UserRequest {
                user_id: user.clone(),
            },
            "app",
        ))
        .await
        .unwrap()
        .into_inner();
    let got: Vec<_> = reply
        .rows
        .iter()
        .map(|r| (r.video_id.clone(), r.last_position_ms, r.end_ms, r.start_ms))
        .collect();
    let want: Vec<_> = seed
        .progress(&user)
        .into_iter()
        .map(|r| (r.video_id, r.last_position_ms, r.end_ms, r.start_ms))
        .collect();
    assert_eq!(got, want);
    assert!(!got.is_empty());

    for (from_ms, to_ms, want_to) in [(0, 0, i64::MAX), (T0, T0 + DAY, T0 + DAY)] {
        let reply = client
            .user_sessions(with_token(
                UserSessionsRequest {
                    user_id: user.clone(),
                    from_ms,
                    to_ms,
                },
                "app",
            ))
            .await
            .unwrap()
            .into_inner();
        let want = seed.user_sessions(&user, from_ms, want_to);
        assert_eq!(reply.rows.len(), want.len());
        for (got, want) in reply.rows.iter().zip(&want) {
            assert_eq!(
                (
                    &got.video_id,
                    got.start_ms,
                    got.end_ms,
                    got.heartbeats,
                    got.watch_ms,
                    got.coverage_ms
                ),
                (
                    &want.video_id,
                    want.start_ms,
                    want.end_ms,
                    want.heartbeats,
                    want.watch_ms,
                    want.coverage_ms
                )
            );
            assert_eq!(
                (got.last_position_ms, got.devices, &got.ads),
                (want.last_position_ms, want.devices, &want.ads)
            );
        }
    }
    app.stop().await.unwrap();
}

#[tokio::test]
async fn grpc_errors_carry_their_codes() {
    let (_test, _seed, app, mut client) = setup().await;
    let status = client.royalties(Request::new(day())).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    let mut expired = Request::new(day());
    expired.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", token("admin", true)).parse().unwrap(),
    );
    assert_eq!(
        client.royalties(expired).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    let status = client
        .royalties(with_token(day(), "app"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let status = client
        .user_progress(with_token(
            UserRequest {
                user_id: "u1".into(),
            },
            "gateway",
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let backwards = ReportRequest {
        from_ms: T0 + 1,
        to_ms: T0,
    };
    let status = client
        .impressions(with_token(backwards, "admin"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("before"), "{}", status.message());
    let status = client
        .concurrency(with_token(
            ConcurrencyRequest {
                from_ms: T0,
                to_ms: T0 + DAY,
                step_s: 1,
            },
            "admin",
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = client
        .user_sessions(with_token(UserSessionsRequest::default(), "app"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn health_and_reflection_are_served() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;

    let (_test, _seed, app, _client) = setup().await;
    let channel = Channel::from_shared(app.grpc.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let status = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: "heartbeat.v1.ReportService".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = ServerReflectionClient::new(channel.clone())
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection answer");
    };
    let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    // Exactly what this port serves: not IngestService, health included.
    assert_eq!(
        names,
        [
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "heartbeat.v1.ReportService",
        ],
    );

    // grpc.reflection.v1alpha (older grpcurl and tools) answers the same.
    use tonic_reflection::pb::v1alpha as alpha;
    let request = alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    };
    let mut responses = alpha::server_reflection_client::ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().unwrap();
    let Some(alpha::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        response.message_response
    else {
        panic!("unexpected v1alpha reflection answer");
    };
    let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection",
            "heartbeat.v1.ReportService",
        ],
    );
    app.stop().await.unwrap();
}
