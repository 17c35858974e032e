//! svc-ingest end to end over gRPC: a real tonic client against `run` on
//! port-0 listeners, with a recording publisher standing in for Kafka.

mod helpers;

use hb_common::auth::Role;
use hb_common::time::{ms_to_timestamp, now_ms};
use hb_proto::v1::{Heartbeat, PlaybackState, PushAck};
use helpers::*;
use prost::Message;
use std::collections::HashMap;
use std::time::Duration;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::{Code, Request, Status};

fn reasons_by_index(rejections: &[hb_proto::v1::Rejection]) -> HashMap<u64, String> {
    rejections
        .iter()
        .map(|r| {
            (
                r.index,
                r.reason.split(':').next().unwrap_or("").to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn push_counts_accepted_duplicate_and_rejected_heartbeats_with_one_reason_per_rule() {
    let publisher = RecordingPublisher::new();
    let app = spawn_app(publisher.target()).await;
    let token = app.gateway_token();

    let good = heartbeat("d-1");
    let mut cases: Vec<(Heartbeat, Option<&str>)> = vec![(good.clone(), None)];
    let mut bad = |expected: &'static str, change: &dyn Fn(&mut Heartbeat)| {
        let mut hb = heartbeat("d-1");
        change(&mut hb);
        cases.push((hb, Some(expected)));
    };
    bad("missing_id", &|hb| hb.event_id.clear());
    bad("missing_id", &|hb| hb.device_id.clear());
    bad("missing_id", &|hb| hb.user_id.clear());
    bad("missing_id", &|hb| hb.video_id.clear());
    bad("id_too_long", &|hb| hb.video_id = "v".repeat(129));
    bad("id_not_printable", &|hb| hb.user_id = "u\n1".into());
    bad("event_time_missing", &|hb| hb.event_time = None);
    bad("event_time_in_future", &|hb| {
        hb.event_time = Some(ms_to_timestamp(now_ms() + 6 * 60_000))
    });
    bad("event_time_too_old", &|hb| {
        hb.event_time = Some(ms_to_timestamp(now_ms() - 8 * 86_400_000))
    });
    bad("state_unspecified", &|hb| {
        hb.state = PlaybackState::Unspecified as i32
    });
    bad("message_too_large", &|hb| {
        hb.platform = "p".repeat(5 * 1024)
    });
    // The same event id again within the call: a duplicate, not a rejection.
    let mut heartbeats: Vec<Heartbeat> = cases.iter().map(|(hb, _)| hb.clone()).collect();
    heartbeats.push(good.clone());

    let summary = app
        .push(Some(&token), heartbeats)
        .await
        .expect("push succeeds");

    let expected_rejections = cases.iter().filter(|(_, r)| r.is_some()).count() as u64;
    assert_eq!(summary.accepted, 1);
    assert_eq!(summary.duplicates, 1);
    assert_eq!(summary.rejected, expected_rejections);
    let reasons = reasons_by_index(&summary.rejections);
    assert_eq!(reasons.len() as u64, expected_rejections);
    for (index, (_, expected)) in cases.iter().enumerate() {
        assert_eq!(
            reasons.get(&(index as u64)).map(String::as_str),
            *expected,
            "heartbeat {index}"
        );
    }
    assert_eq!(
        publisher.event_ids(),
        vec![good.event_id],
        "only the good one, once"
    );
    let dead_letters = publisher.dead_letters();
    assert_eq!(dead_letters.len() as u64, expected_rejections);
    assert!(dead_letters
        .iter()
        .any(|d| d.reason.starts_with("event_time_too_old")));
}

#[tokio::test]
async fn push_reports_at_most_one_hundred_rejections_but_counts_them_all() {
    let publisher = RecordingPublisher::new();
    let app = spawn_app_with(publisher.target(), |c| c.device_rate = 0).await;
    let mut heartbeats = heartbeats("d-many", 150);
    for hb in &mut heartbeats {
        hb.state = PlaybackState::Unspecified as i32;
    }
    let summary = app
        .push(Some(&app.gateway_token()), heartbeats)
        .await
        .expect("push succeeds");
    assert_eq!(summary.rejected, 150);
    assert_eq!(summary.rejections.len(), 100);
    assert_eq!(publisher.dead_letters().len(), 150);
}

#[tokio::test]
async fn bidi_acks_advance_in_order_and_carry_the_rejections_they_cover() {
    let publisher = RecordingPublisher::new();
    let app = spawn_app(publisher.target()).await;
    let mut stream = app
        .open_stream(Some(&app.gateway_token()))
        .await
        .expect("stream opens");

    let first = heartbeats("d-a", 3);
    stream.send(first.clone()).await;
    let acks = stream.acks_until(2).await;
    assert_eq!(acks.last().unwrap().acked_index, 2);
    assert_eq!(acks.last().unwrap().accepted, 3);

    let mut second = heartbeats("d-a", 3);
    second[1].event_time = None;
    second[2].event_id = first[0].event_id.clone();
    stream.send(second.clone()).await;
    let acks = stream.acks_until(5).await;
    let indices: Vec<i64> = acks.iter().map(|a| a.acked_index).collect();
    assert!(
        indices.windows(2).all(|w| w[0] < w[1]),
        "acks only advance: {indices:?}"
    );
    let rejections: Vec<_> = acks.iter().flat_map(|a| a.rejections.clone()).collect();
    assert_eq!(rejections.len(), 1);
    assert_eq!(rejections[0].index, 4);
    assert_eq!(rejections[0].event_id, second[1].event_id);
    assert!(rejections[0].reason.starts_with("event_time_missing"));
    let last = acks.last().unwrap();
    assert_eq!((last.accepted, last.duplicates, last.rejected), (4, 1, 1));

    stream.close();
    let (rest, end) = stream.acks_until_end().await;
    assert!(rest.is_empty());
    assert!(
        end.is_ok(),
        "a device closing its side ends the call cleanly: {end:?}"
    );
    assert_eq!(publisher.heartbeats().len(), 4);
}

#[tokio::test]
async fn a_call_without_a_token_is_unauthenticated() {
    let app = spawn_app(RecordingPublisher::new().target()).await;
    let status = app.push(None, heartbeats("d-1", 1)).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    let status = app.open_stream(None).await.err().expect("refused");
    assert_eq!(status.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn a_garbage_token_is_unauthenticated() {
    let publisher = RecordingPublisher::new();
    let app = spawn_app(publisher.target()).await;
    for token in ["garbage", "a.b", "eyJzdWIiOiJ4In0.c2lnbmF0dXJl"] {
        let status = app
            .push(Some(token), heartbeats("d-1", 1))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "token {token:?}");
    }
    assert!(publisher.heartbeats().is_empty());
}

#[tokio::test]
async fn an_expired_token_is_unauthenticated() {
    let app = spawn_app(RecordingPublisher::new().target()).await;
    let token = app.expired_token(Role::Gateway);
    let status = app
        .push(Some(&token), heartbeats("d-1", 1))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(status.message().contains("expired"), "{}", status.message());
}

#[tokio::test]
async fn an_app_token_may_not_send_heartbeats() {
    let publisher = RecordingPublisher::new();
    let app = spawn_app(publisher.target()).await;
    let token = app.token(Role::App);
    let status = app
        .push(Some(&token), heartbeats("d-1", 1))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let token = app.token(Role::LicenseHolder("lh".into()));
    let status = app.open_stream(Some(&token)).await.err().expect("refused");
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(publisher.heartbeats().is_empty());
}

#[tokio::test]
async fn a_device_token_cannot_send_another_devices_heartbeats() {
    let publisher = RecordingPublisher::new();
    let app = spawn_app(publisher.target()).await;
    let token = app.token(Role::Device("d-mine".into()));
    let mine = heartbeat("d-mine");
    let theirs = heartbeat("d-theirs");
    let summary = app
        .push(Some(&token), vec![mine.clone(), theirs.clone()])
        .await
        .expect("the call itself succeeds");
    assert_eq!((summary.accepted, summary.rejected), (1, 1));
    assert_eq!(summary.rejections[0].index, 1);
    assert_eq!(summary.rejections[0].event_id, theirs.event_id);
    assert!(summary.rejections[0].reason.starts_with("device_mismatch"));
    assert_eq!(publisher.event_ids(), vec![mine.event_id]);
}

#[tokio::test]
async fn a_device_over_its_rate_gets_resource_exhausted_with_retry_advice_after_its_burst_is_acked()
{
    let publisher = RecordingPublisher::new();
    let app = spawn_app_with(publisher.target(), |c| {
        c.device_rate = 1;
        c.device_burst = 3;
    })
    .await;
    let mut stream = app
        .open_stream(Some(&app.gateway_token()))
        .await
        .expect("stream opens");
    stream.send(heartbeats("d-fast", 3)).await;
    stream.acks_until(2).await;
    stream.send(heartbeats("d-fast", 2)).await;
    let (acks, end) = stream.acks_until_end().await;
    assert!(
        acks.iter().all(|a| a.acked_index <= 2),
        "nothing beyond the burst acked"
    );
    let status = end.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    let retry_ms: u64 = status
        .metadata()
        .get("retry-after-ms")
        .expect("retry advice in metadata")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (500..=1_000).contains(&retry_ms),
        "one token at 1/s: {retry_ms} ms"
    );
    let retry_info = tonic_types::StatusExt::get_details_retry_info(&status)
        .expect("google.rpc.RetryInfo in the status details");
    let delay = retry_info.retry_delay.expect("a retry delay");
    assert_eq!(delay.as_millis() as u64, retry_ms);
    assert_eq!(publisher.heartbeats().len(), 3);
}

#[tokio::test]
async fn a_batch_larger_than_the_burst_publishes_the_burst_then_advises_a_real_wait() {
    let publisher = RecordingPublisher::new();
    let app = spawn_app_with(publisher.target(), |c| {
        c.device_rate = 2;
        c.device_burst = 5;
    })
    .await;
    let sent = heartbeats("d-burst", 8);
    let status = app
        .push(Some(&app.gateway_token()), sent.clone())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    let retry_ms: u64 = status
        .metadata()
        .get("retry-after-ms")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (250..=500).contains(&retry_ms),
        "one token at 2/s: {retry_ms} ms"
    );
    let expected: Vec<String> = sent[..5].iter().map(|hb| hb.event_id.clone()).collect();
    assert_eq!(
        publisher.event_ids(),
        expected,
        "the admitted prefix is durable"
    );
}

#[tokio::test]
async fn a_frame_over_64_kib_ends_the_call_with_invalid_argument_after_earlier_acks() {
    let publisher = RecordingPublisher::new();
    let app = spawn_app(publisher.target()).await;
    let mut stream = app
        .open_stream(Some(&app.gateway_token()))
        .await
        .expect("stream opens");
    stream.send(heartbeats("d-big", 2)).await;
    stream.acks_until(1).await;
    let mut huge = heartbeat("d-big");
    huge.platform = "x".repeat(70 * 1024);
    stream.send([huge]).await;
    let (acks, end) = stream.acks_until_end().await;
    assert!(acks.is_empty(), "nothing more acked: {acks:?}");
    assert_eq!(end.unwrap_err().code(), Code::InvalidArgument);
    assert_eq!(
        publisher.heartbeats().len(),
        2,
        "earlier heartbeats stay acknowledged"
    );
}

#[tokio::test]
async fn a_5_kib_heartbeat_is_rejected_and_the_stream_continues() {
    let publisher = RecordingPublisher::new();
    let app = spawn_app(publisher.target()).await;
    let mut stream = app
        .open_stream(Some(&app.gateway_token()))
        .await
        .expect("stream opens");
    let mut large = heartbeat("d-5k");
    large.platform = "x".repeat(5 * 1024);
    stream.send([large.clone()]).await;
    let acks = stream.acks_until(0).await;
    let rejection = &acks.last().unwrap().rejections[0];
    assert_eq!(rejection.event_id, large.event_id);
    assert!(rejection.reason.starts_with("message_too_large"));
    stream.send(heartbeats("d-5k", 1)).await;
    let acks = stream.acks_until(1).await;
    assert_eq!(acks.last().unwrap().accepted, 1);
    stream.close();
    assert!(stream.acks_until_end().await.1.is_ok());
    assert_eq!(publisher.dead_letters().len(), 1);
    assert!(publisher.dead_letters()[0]
        .reason
        .starts_with("message_too_large"));
}

/// Sends pre-encoded message bodies as they are, so a test can put bytes on
/// the wire that no protobuf encoder would produce.
#[derive(Clone, Default)]
struct RawCodec;

struct RawEncoder;
struct AckDecoder;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = PushAck;
    type Encoder = RawEncoder;
    type Decoder = AckDecoder;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> AckDecoder {
        AckDecoder
    }
}

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        use prost::bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for AckDecoder {
    type Item = PushAck;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<PushAck>, Status> {
        PushAck::decode(src)
            .map(Some)
            .map_err(|e| Status::internal(e.to_string()))
    }
}

#[tokio::test]
async fn a_malformed_frame_mid_stream_ends_the_call_with_invalid_argument_and_keeps_earlier_acks() {
    let publisher = RecordingPublisher::new();
    let app = spawn_app(publisher.target()).await;
    let valid = heartbeats("d-raw", 5);
    let mut frames: Vec<Vec<u8>> = valid.iter().map(Message::encode_to_vec).collect();
    // Field 1 (event_id) claims 100 bytes but 1 follows: undecodable.
    frames.push(vec![0x0a, 100, b'x']);
    // The device keeps its side open: the server must end the call itself.
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    for frame in frames {
        tx.send(frame).await.unwrap();
    }
    let request = authorized(
        Request::new(tokio_stream::wrappers::ReceiverStream::new(rx)),
        Some(&app.gateway_token()),
    );
    let mut grpc = tonic::client::Grpc::new(app.channel.clone());
    grpc.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static("/heartbeat.v1.IngestService/Stream");
    let mut acks = grpc
        .streaming(request, path, RawCodec)
        .await
        .expect("call opens")
        .into_inner();

    let mut acked_index = -1;
    let status = loop {
        match tokio::time::timeout(PATIENCE, acks.message())
            .await
            .expect("in time")
        {
            Ok(Some(ack)) => acked_index = ack.acked_index,
            Ok(None) => panic!("the call must not end cleanly"),
            Err(status) => break status,
        }
    };
    drop(tx);
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(
        acked_index, 4,
        "the five heartbeats before the garbage were acked"
    );
    let expected: Vec<String> = valid.into_iter().map(|hb| hb.event_id).collect();
    assert_eq!(publisher.event_ids(), expected);
}

#[tokio::test]
async fn a_failing_publisher_fails_push_with_unavailable_and_no_summary() {
    let publisher = RecordingPublisher::new();
    publisher.fail();
    let app = spawn_app(publisher.target()).await;
    let status = app
        .push(Some(&app.gateway_token()), heartbeats("d-1", 4))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(publisher.heartbeats().is_empty());
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("hb_ingest_heartbeats_accepted_total 0\n"),
        "nothing counted as accepted:\n{metrics}"
    );
}

#[tokio::test]
async fn bidi_never_acknowledges_what_the_publisher_failed_to_persist() {
    let publisher = RecordingPublisher::new();
    let app = spawn_app(publisher.target()).await;
    let mut stream = app
        .open_stream(Some(&app.gateway_token()))
        .await
        .expect("stream opens");
    let first = heartbeats("d-1", 10);
    stream.send(first.clone()).await;
    stream.acks_until(9).await;
    publisher.fail();
    stream.send(heartbeats("d-1", 10)).await;
    let (acks, end) = stream.acks_until_end().await;
    assert!(acks.is_empty(), "no ack after the failure: {acks:?}");
    let status = end.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        status.message().contains("after index 9"),
        "{}",
        status.message()
    );
    let expected: Vec<String> = first.into_iter().map(|hb| hb.event_id).collect();
    assert_eq!(publisher.event_ids(), expected);
}

#[tokio::test]
async fn grpc_health_reports_the_ingest_service_serving() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    let app = spawn_app(RecordingPublisher::new().target()).await;
    let mut health = HealthClient::new(app.channel.clone());
    for service in ["", "heartbeat.v1.IngestService"] {
        let answer = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health answers")
            .into_inner();
        assert_eq!(
            answer.status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
            "service {service:?}"
        );
    }
}

#[tokio::test]
async fn reflection_lists_the_ingest_service() {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    let app = spawn_app(RecordingPublisher::new().target()).await;
    let mut reflection = ServerReflectionClient::new(app.channel.clone());
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection answers")
        .into_inner();
    let answer = answers.message().await.unwrap().expect("one answer");
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("expected a service list, got {answer:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"heartbeat.v1.IngestService".to_string()),
        "{names:?}"
    );
    assert!(
        names.contains(&"grpc.health.v1.Health".to_string()),
        "{names:?}"
    );
}

#[tokio::test]
async fn the_metrics_endpoint_counts_accepted_and_rejected_heartbeats() {
    let app = spawn_app(RecordingPublisher::new().target()).await;
    let mut sent = heartbeats("d-m", 7);
    sent[6].state = PlaybackState::Unspecified as i32;
    app.push(Some(&app.gateway_token()), sent).await.unwrap();
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("hb_ingest_heartbeats_accepted_total 6\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("hb_ingest_heartbeats_rejected_total{reason=\"state_unspecified\"} 1\n"),
        "{metrics}"
    );
}

#[tokio::test]
async fn shutdown_delivers_in_flight_acks_and_run_returns_ok() {
    let publisher = RecordingPublisher::new();
    let mut app = spawn_app(publisher.target()).await;
    let mut stream = app
        .open_stream(Some(&app.gateway_token()))
        .await
        .expect("stream opens");
    publisher.hold();
    stream.send(heartbeats("d-1", 5)).await;
    publisher.started(1).await;

    app.shutdown.cancel();
    // Give the server a moment to act on the cancellation while the batch is held.
    tokio::time::sleep(Duration::from_millis(100)).await;
    publisher.release();
    let acks = stream.acks_until(4).await;
    assert_eq!(
        acks.last().unwrap().accepted,
        5,
        "the in-flight batch is acked"
    );
    stream.close();
    let (_, end) = stream.acks_until_end().await;
    assert!(end.is_ok(), "{end:?}");
    app.join(PATIENCE).await.expect("run returns Ok");
    assert_eq!(publisher.heartbeats().len(), 5);
}

#[tokio::test]
async fn shutdown_ends_calls_that_outlive_the_drain_grace_with_unavailable() {
    let publisher = RecordingPublisher::new();
    let mut app = spawn_app(publisher.target()).await;
    let mut stream = app
        .open_stream(Some(&app.gateway_token()))
        .await
        .expect("stream opens");
    stream.send(heartbeats("d-1", 2)).await;
    stream.acks_until(1).await;
    app.shutdown.cancel();
    // The device never closes its side; the server cuts it after the grace.
    let (_, end) = stream.acks_until_end().await;
    let status = end.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        status.message().contains("up to index 1"),
        "{}",
        status.message()
    );
    app.join(svc_ingest::DRAIN_GRACE + PATIENCE)
        .await
        .expect("run returns Ok");
}

#[tokio::test]
async fn a_call_beyond_the_concurrency_limit_is_shed_while_an_open_stream_holds_its_place() {
    let publisher = RecordingPublisher::new();
    let app = spawn_app_with(publisher.target(), |c| c.concurrency = 1).await;
    let token = app.gateway_token();

    // A bidirectional stream counts for as long as it is open, not just until
    // its response headers are sent.
    let mut stream = app.open_stream(Some(&token)).await.expect("stream opens");
    stream.send(heartbeats("d-open", 1)).await;
    stream.acks_until(0).await;

    let shed = app
        .push(Some(&token), heartbeats("d-2", 1))
        .await
        .unwrap_err();
    assert_eq!(shed.code(), Code::Unavailable, "{shed:?}");
    assert!(
        shed.message().contains("concurrency limit"),
        "{}",
        shed.message()
    );
    assert!(app.metrics().await.contains("hb_ingest_load_shed_total 1"));

    stream.close();
    let (_, end) = stream.acks_until_end().await;
    assert!(end.is_ok(), "{end:?}");
    // The server lets go of the place when it drops the finished response,
    // a moment after the device has seen the end.
    let mut again = app.push(Some(&token), heartbeats("d-2", 1)).await;
    for _ in 0..50 {
        match &again {
            Err(status) if status.code() == Code::Unavailable => {
                tokio::time::sleep(Duration::from_millis(20)).await;
                again = app.push(Some(&token), heartbeats("d-2", 1)).await;
            }
            _ => break,
        }
    }
    let summary = again.expect("the place is free again once the stream ended");
    assert_eq!(summary.accepted, 1);
}

/// The services a reflection `ListServices` call names on `channel`, sorted.
async fn reflected_services(channel: tonic::transport::Channel) -> Vec<String> {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = ServerReflectionClient::new(channel)
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
    names
}

#[tokio::test]
async fn reflection_lists_exactly_the_services_of_the_ingest_port() {
    let app = spawn_app(RecordingPublisher::new().target()).await;
    assert_eq!(
        reflected_services(app.channel.clone()).await,
        [
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "heartbeat.v1.IngestService",
        ],
    );
    // v1alpha is served too (older tools).
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
    let mut client = ServerReflectionClient::new(app.channel.clone());
    let request = tonic_reflection::pb::v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest::ListServices(
                String::new(),
            ),
        ),
    };
    let answer = client
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .expect("v1alpha reflection is served")
        .into_inner()
        .message()
        .await
        .unwrap();
    assert!(answer.is_some());
    app.stop().await.unwrap();
}
