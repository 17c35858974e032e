//! The same reports over gRPC `heartbeat.v1.ReportService`. Times are epoch
//! milliseconds in the messages; the bearer token is the `authorization`
//! metadata. Errors map as in [`crate::error`].

use crate::access::Endpoint;
use crate::error::ApiError;
use crate::report::{parse_id, ConcurrencySpec, Window, DEFAULT_STEP_S};
use crate::service::QueryService;
use hb_proto::v1::report_service_server::ReportService;
use hb_proto::v1::{
    ConcurrencyReply, ConcurrencyRequest, ConcurrencyRow, EraseUserReply, ImpressionRow,
    ImpressionsReply, ProgressReply, ProgressRow, ReportRequest, RoyaltiesReply, RoyaltyRow,
    SessionRow, SessionsReply, TrafficReply, TrafficRow, UserRequest, UserSessionsRequest,
};
use tonic::{Request, Response, Status};

/// `ReportService` on top of [`QueryService`].
#[derive(Clone)]
pub struct GrpcReports {
    service: QueryService,
}

impl GrpcReports {
    pub fn new(service: QueryService) -> GrpcReports {
        GrpcReports { service }
    }
}

fn authorization<T>(request: &Request<T>) -> Option<String> {
    request
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

fn reply<T>(result: Result<T, ApiError>) -> Result<Response<T>, Status> {
    result.map(Response::new).map_err(|e| e.grpc_status())
}

#[tonic::async_trait]
impl ReportService for GrpcReports {
    async fn royalties(
        &self,
        request: Request<ReportRequest>,
    ) -> Result<Response<RoyaltiesReply>, Status> {
        let token = authorization(&request);
        let message = request.into_inner();
        reply(
            self.service
                .call(Endpoint::Royalties, token.as_deref(), |scope| async move {
                    let window = Window::new(message.from_ms, message.to_ms)?;
                    let rows = self.service.royalties(window, &scope).await?;
                    Ok(RoyaltiesReply {
                        rows: rows
                            .into_iter()
                            .map(|r| RoyaltyRow {
                                license_holder_id: r.license_holder_id,
                                video_id: r.video_id,
                                sessions: r.sessions,
                                viewers: r.viewers,
                                watch_ms: r.watch_ms,
                                amount_micros: r.amount_micros,
                            })
                            .collect(),
                    })
                })
                .await,
        )
    }

    async fn impressions(
        &self,
        request: Request<ReportRequest>,
    ) -> Result<Response<ImpressionsReply>, Status> {
        let token = authorization(&request);
        let message = request.into_inner();
        reply(
            self.service
                .call(
                    Endpoint::Impressions,
                    token.as_deref(),
                    |scope| async move {
                        let window = Window::new(message.from_ms, message.to_ms)?;
                        let rows = self.service.impressions(window, &scope).await?;
                        Ok(ImpressionsReply {
                            rows: rows
                                .into_iter()
                                .map(|r| ImpressionRow {
                                    advertiser_id: r.advertiser_id,
                                    campaign_id: r.campaign_id,
                                    ad_id: r.ad_id,
                                    impressions: r.impressions,
                                    viewers: r.viewers,
                                })
                                .collect(),
                        })
                    },
                )
                .await,
        )
    }

    async fn concurrency(
        &self,
        request: Request<ConcurrencyRequest>,
    ) -> Result<Response<ConcurrencyReply>, Status> {
        let token = authorization(&request);
        let message = request.into_inner();
        reply(
            self.service
                .call(
                    Endpoint::Concurrency,
                    token.as_deref(),
                    |_scope| async move {
                        let window = Window::new(message.from_ms, message.to_ms)?;
                        let step_s = match message.step_s {
                            0 => DEFAULT_STEP_S,
                            step => i64::from(step),
                        };
                        let spec = ConcurrencySpec::new(window, step_s)?;
                        let rows = self.service.concurrency(spec).await?;
                        Ok(ConcurrencyReply {
                            rows: rows
                                .into_iter()
                                .map(|r| ConcurrencyRow {
                                    bucket_start_ms: r.bucket_start_ms,
                                    viewers: r.viewers,
                                })
                                .collect(),
                        })
                    },
                )
                .await,
        )
    }

    async fn traffic(
        &self,
        request: Request<ReportRequest>,
    ) -> Result<Response<TrafficReply>, Status> {
        let token = authorization(&request);
        let message = request.into_inner();
        reply(
            self.service
                .call(Endpoint::Traffic, token.as_deref(), |scope| async move {
                    let window = Window::new(message.from_ms, message.to_ms)?;
                    let rows = self.service.traffic(window, &scope).await?;
                    Ok(TrafficReply {
                        rows: rows
                            .into_iter()
                            .map(|r| TrafficRow {
                                hour_start_ms: r.hour_start_ms,
                                license_holder_id: r.license_holder_id,
                                heartbeats: r.heartbeats,
                                devices: r.devices,
                            })
                            .collect(),
                    })
                })
                .await,
        )
    }

    async fn user_progress(
        &self,
        request: Request<UserRequest>,
    ) -> Result<Response<ProgressReply>, Status> {
        let token = authorization(&request);
        let message = request.into_inner();
        reply(
            self.service
                .call(Endpoint::Progress, token.as_deref(), |_scope| async move {
                    let user_id = parse_id("user_id", &message.user_id)?;
                    let rows = self.service.progress(&user_id).await?;
                    Ok(ProgressReply {
                        rows: rows
                            .into_iter()
                            .map(|r| ProgressRow {
                                video_id: r.video_id,
                                last_position_ms: r.last_position_ms,
                                end_ms: r.end_ms,
                                start_ms: r.start_ms,
                            })
                            .collect(),
                    })
                })
                .await,
        )
    }

    /// `to_ms == 0` means no upper bound (all of the user's sessions from `from_ms`).
    async fn user_sessions(
        &self,
        request: Request<UserSessionsRequest>,
    ) -> Result<Response<SessionsReply>, Status> {
        let token = authorization(&request);
        let message = request.into_inner();
        reply(
            self.service
                .call(Endpoint::Sessions, token.as_deref(), |_scope| async move {
                    let user_id = parse_id("user_id", &message.user_id)?;
                    let to_ms = if message.to_ms == 0 {
                        i64::MAX
                    } else {
                        message.to_ms
                    };
                    if message.from_ms >= to_ms {
                        return Err(ApiError::BadRequest("from_ms must be before to_ms".into()));
                    }
                    let rows = self
                        .service
                        .sessions(&user_id, message.from_ms, to_ms)
                        .await?;
                    Ok(SessionsReply {
                        rows: rows
                            .into_iter()
                            .map(|r| SessionRow {
                                user_id: r.user_id,
                                video_id: r.video_id,
                                start_ms: r.start_ms,
                                end_ms: r.end_ms,
                                heartbeats: r.heartbeats,
                                watch_ms: r.watch_ms,
                                coverage_ms: r.coverage_ms,
                                last_position_ms: r.last_position_ms,
                                ads: r.ads,
                                devices: r.devices,
                            })
                            .collect(),
                    })
                })
                .await,
        )
    }

    async fn erase_user(
        &self,
        request: Request<UserRequest>,
    ) -> Result<Response<EraseUserReply>, Status> {
        let token = authorization(&request);
        let message = request.into_inner();
        reply(
            self.service
                .call_as(
                    Endpoint::EraseUser,
                    token.as_deref(),
                    |_scope, caller| async move {
                        let user_id = parse_id("user_id", &message.user_id)?;
                        let erased = self.service.erase_user(&user_id, &caller).await?;
                        Ok(EraseUserReply {
                            user_id: erased.user_id,
                            raw_heartbeats: erased.raw_heartbeats,
                            sessions: erased.sessions,
                            ad_links: erased.ad_links,
                            erasure_id: erased.erasure_id,
                        })
                    },
                )
                .await,
        )
    }
}
