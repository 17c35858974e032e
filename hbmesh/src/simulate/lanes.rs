//! The lanes: each is one long-lived call at a time on a shared HTTP/2
//! connection, carrying the heartbeats of a group of users, keeping what is
//! not yet acknowledged, and resending it on a new call after a failure.

use super::codec::{Batch, EncodedCodec};
use super::plan::{Mode, Plan, SimulateArgs};
use super::report::{add, Counters, LaneReport};
use anyhow::Context;
use futures::StreamExt;
use hb_proto::v1::{PushAck, PushSummary};
use prost::bytes::Bytes;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Request, Status};

/// Batches waiting per lane before the generator waits too.
pub(super) const LANE_CAPACITY: usize = 256;

/// One lane: a sequence of calls carrying its devices' heartbeats.
pub(super) struct Lane {
    channel: Channel,
    authorization: Option<MetadataValue<tonic::metadata::Ascii>>,
    input: mpsc::Receiver<Batch>,
    input_open: bool,
    /// Sent, not yet acknowledged: batches and how many of each are acked.
    unacked: VecDeque<(Batch, usize)>,
    unacked_len: usize,
    window: usize,
    push_batch: usize,
    counters: Arc<Counters>,
    /// Ends the lane at once (drain timeout, fatal error elsewhere, Ctrl-C).
    abort: CancellationToken,
    /// The first error no retry can fix; it ends the whole run.
    fatal: Arc<Mutex<Option<String>>>,
    report: LaneReport,
    backoff: Duration,
}

/// Running totals of the current call, to turn cumulative acks into deltas.
#[derive(Default)]
struct CallTotals {
    accepted: u64,
    duplicates: u64,
    rejected: u64,
}

enum CallEnd {
    /// Input exhausted and everything acknowledged.
    Done,
    /// The call failed or ended early; retry on a new one.
    Retry,
    /// Stop the lane.
    Stop,
}

impl Lane {
    pub(super) fn new(
        channel: Channel,
        authorization: Option<MetadataValue<tonic::metadata::Ascii>>,
        input: mpsc::Receiver<Batch>,
        args: &SimulateArgs,
        counters: Arc<Counters>,
        abort: CancellationToken,
        fatal: Arc<Mutex<Option<String>>>,
    ) -> Lane {
        Lane {
            channel,
            authorization,
            input,
            input_open: true,
            unacked: VecDeque::new(),
            unacked_len: 0,
            window: args.window,
            push_batch: args.push_batch,
            counters,
            abort,
            fatal,
            report: LaneReport::new(),
            backoff: Duration::from_millis(50),
        }
    }

    fn request<S>(&self, stream: S) -> Request<S> {
        let mut request = Request::new(stream);
        if let Some(value) = &self.authorization {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        request
    }

    /// The oldest `count` unacknowledged heartbeats are acknowledged at `at`.
    fn record_acked(&mut self, mut count: usize, at: Instant) {
        add(&self.counters.acknowledged, count as u64);
        self.unacked_len -= count;
        while count > 0 {
            let Some((batch, acked)) = self.unacked.front_mut() else {
                break;
            };
            let covered = count.min(batch.len() - *acked);
            let micros = at.duration_since(batch.offered_at).as_micros() as u64;
            self.report
                .latency_us
                .saturating_record_n(micros.max(1), covered as u64);
            *acked += covered;
            count -= covered;
            if *acked == batch.len() {
                self.unacked.pop_front();
            }
        }
    }

    fn record_rejections(&mut self, rejections: &[hb_proto::v1::Rejection]) {
        for rejection in rejections {
            let code = rejection.reason.split(':').next().unwrap_or("unknown");
            *self.report.reasons.entry(code.to_string()).or_default() += 1;
        }
    }

    /// Takes a batch from the generator into `unacked`; `None` ends the input.
    fn take_batch(&mut self, batch: Option<Batch>) -> Option<Batch> {
        let Some(batch) = batch else {
            self.input_open = false;
            return None;
        };
        add(&self.counters.sent, batch.len() as u64);
        self.unacked_len += batch.len();
        self.unacked.push_back((batch.clone(), 0));
        Some(batch)
    }

    /// Every unacknowledged heartbeat, oldest first, up to `limit`.
    fn unacked_messages(&self, limit: usize) -> Vec<Bytes> {
        let mut messages = Vec::with_capacity(limit.min(self.unacked_len));
        for (batch, acked) in &self.unacked {
            let to = batch.len().min(acked + limit - messages.len());
            messages.extend(batch.clone().messages(*acked, to));
            if messages.len() == limit {
                break;
            }
        }
        messages
    }

    /// Decides what a failed call means for the lane, and waits before a retry.
    async fn failed(&mut self, status: &Status) -> CallEnd {
        add(&self.counters.call_errors, 1);
        *self
            .report
            .errors
            .entry(format!("{:?}", status.code()))
            .or_default() += 1;
        let text = format!("{:?}: {}", status.code(), status.message());
        self.report.last_error = Some(text.clone());
        let fatal = matches!(
            status.code(),
            Code::Unauthenticated
                | Code::PermissionDenied
                | Code::Unimplemented
                | Code::InvalidArgument
        );
        if fatal {
            self.fatal.lock().expect("fatal lock").get_or_insert(text);
            self.abort.cancel();
            return CallEnd::Stop;
        }
        let advised = status
            .metadata()
            .get("retry-after-ms")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .map(Duration::from_millis);
        let wait = advised.unwrap_or(self.backoff);
        self.backoff = (self.backoff * 2).min(Duration::from_secs(2));
        tokio::select! {
            () = tokio::time::sleep(wait) => CallEnd::Retry,
            () = self.abort.cancelled() => CallEnd::Stop,
        }
    }

    pub(super) async fn run(mut self, mode: Mode) -> LaneReport {
        loop {
            if !self.input_open && self.unacked_len == 0 {
                break;
            }
            let end = match mode {
                Mode::Stream => self.stream_call().await,
                Mode::Push => self.push_call().await,
            };
            match end {
                CallEnd::Done | CallEnd::Stop => break,
                CallEnd::Retry => {}
            }
        }
        self.report.unacknowledged = self.unacked_len as u64;
        self.report
    }

    /// One bidirectional call: resends what is unacknowledged, then streams
    /// new batches while reading acks.
    async fn stream_call(&mut self) -> CallEnd {
        let (request_tx, request_rx) = mpsc::unbounded_channel::<(Batch, usize)>();
        for (batch, acked) in &self.unacked {
            let _ = request_tx.send((batch.clone(), *acked));
        }
        add(&self.counters.resent, self.unacked_len as u64);
        let mut request_tx = self.input_open.then_some(request_tx);
        let messages = UnboundedReceiverStream::new(request_rx).flat_map(|(batch, from)| {
            let to = batch.len();
            futures::stream::iter(batch.messages(from, to))
        });
        let mut grpc = tonic::client::Grpc::new(self.channel.clone());
        let opened = async {
            grpc.ready()
                .await
                .map_err(|e| Status::unavailable(e.to_string()))?;
            let request = self.request(messages);
            let path = PathAndQuery::from_static("/heartbeat.v1.IngestService/Stream");
            grpc.streaming(request, path, EncodedCodec::<PushAck>::default())
                .await
        };
        let opened = tokio::select! {
            opened = opened => opened,
            () = self.abort.cancelled() => return CallEnd::Stop,
        };
        let mut acks = match opened {
            Ok(response) => response.into_inner(),
            Err(status) => return self.failed(&status).await,
        };
        // Index (within this call) of the oldest unacknowledged heartbeat.
        let mut acked_in_call = 0i64;
        let mut totals = CallTotals::default();
        loop {
            let room = self.unacked_len < self.window;
            tokio::select! {
                biased;
                () = self.abort.cancelled() => return CallEnd::Stop,
                ack = acks.message() => match ack {
                    Ok(Some(ack)) => {
                        let covered = (ack.acked_index + 1 - acked_in_call)
                            .clamp(0, self.unacked_len as i64);
                        acked_in_call += covered;
                        self.record_acked(covered as usize, Instant::now());
                        add(&self.counters.accepted, ack.accepted.saturating_sub(totals.accepted));
                        add(&self.counters.duplicates, ack.duplicates.saturating_sub(totals.duplicates));
                        add(&self.counters.rejected, ack.rejected.saturating_sub(totals.rejected));
                        totals = CallTotals {
                            accepted: ack.accepted,
                            duplicates: ack.duplicates,
                            rejected: ack.rejected,
                        };
                        self.record_rejections(&ack.rejections);
                        self.backoff = Duration::from_millis(50);
                    }
                    Ok(None) if !self.input_open && self.unacked_len == 0 => return CallEnd::Done,
                    Ok(None) => {
                        let early = Status::unavailable("the call ended before everything was acknowledged");
                        return self.failed(&early).await;
                    }
                    Err(status) => return self.failed(&status).await,
                },
                batch = self.input.recv(), if self.input_open && room => {
                    match (self.take_batch(batch), &request_tx) {
                        (Some(batch), Some(tx)) => {
                            let _ = tx.send((batch, 0));
                        }
                        // Input is over: closing our side lets the server finish.
                        _ => request_tx = None,
                    }
                }
            }
        }
    }

    /// One `Push` call with the oldest unacknowledged heartbeats, topped up
    /// from the input.
    async fn push_call(&mut self) -> CallEnd {
        if self.unacked_len == 0 {
            let batch = tokio::select! {
                batch = self.input.recv() => batch,
                () = self.abort.cancelled() => return CallEnd::Stop,
            };
            self.take_batch(batch);
        }
        let limit = self.window.min(self.push_batch);
        while self.input_open && self.unacked_len < limit {
            match self.input.try_recv() {
                Ok(batch) => {
                    self.take_batch(Some(batch));
                }
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => self.input_open = false,
            }
        }
        if self.unacked_len == 0 {
            return CallEnd::Done;
        }
        let messages = self.unacked_messages(self.push_batch);
        let count = messages.len();
        let mut grpc = tonic::client::Grpc::new(self.channel.clone());
        let call = async {
            grpc.ready()
                .await
                .map_err(|e| Status::unavailable(e.to_string()))?;
            let request = self.request(tokio_stream::iter(messages));
            let path = PathAndQuery::from_static("/heartbeat.v1.IngestService/Push");
            grpc.client_streaming(request, path, EncodedCodec::<PushSummary>::default())
                .await
        };
        let answer = tokio::select! {
            answer = call => answer,
            () = self.abort.cancelled() => return CallEnd::Stop,
        };
        match answer {
            Ok(summary) => {
                let summary = summary.into_inner();
                self.record_acked(count, Instant::now());
                add(&self.counters.accepted, summary.accepted);
                add(&self.counters.duplicates, summary.duplicates);
                add(&self.counters.rejected, summary.rejected);
                self.record_rejections(&summary.rejections);
                self.backoff = Duration::from_millis(50);
                CallEnd::Retry
            }
            Err(status) => {
                add(&self.counters.resent, count as u64);
                self.failed(&status).await
            }
        }
    }
}

/// Opens the HTTP/2 connections the lanes share.
pub(super) async fn connect(plan: &Plan, args: &SimulateArgs) -> anyhow::Result<Vec<Channel>> {
    let mut endpoint = Endpoint::from_shared(plan.endpoint.clone())?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .initial_stream_window_size(1 << 20)
        .initial_connection_window_size(8 << 20)
        .http2_keep_alive_interval(Duration::from_secs(30));
    if plan.endpoint.starts_with("https://") {
        let ca = args
            .ca_cert
            .as_ref()
            .context("an https:// target needs --ca-cert (the CA that signed HB_TLS_CERT)")?;
        let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
        endpoint = endpoint
            .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)))?;
    }
    let mut channels = Vec::with_capacity(plan.connections);
    for _ in 0..plan.connections {
        let channel = endpoint
            .connect()
            .await
            .with_context(|| format!("cannot reach svc-ingest at {}", plan.endpoint))?;
        channels.push(channel);
    }
    Ok(channels)
}
