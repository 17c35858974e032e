//! The HTTP JSON API of SPEC 7 (axum). Every list answer is `{"rows": [...]}`;
//! every error `{"error", "detail"}` with its status (see [`crate::error`]).
//!
//! Each handler carries its `#[utoipa::path]` description (parameters,
//! answers, statuses) and is mounted through [`api`] with `routes!`, which
//! takes the method and path from that annotation: a route and its OpenAPI
//! entry cannot drift apart, and a new endpoint is its annotated handler
//! plus one `.routes(routes!(handler))` line. The document is served at
//! `GET /openapi.json` (no token needed), with a Scalar page at `/docs`.

use crate::access::Endpoint;
use crate::catalog::{self, Ad, Video};
use crate::erase::UserErased;
use crate::error::{ApiError, ErrorBody};
use crate::report::{
    optional_period, parse_id, ConcurrencyRow, ConcurrencySpec, ImpressionRow, ProgressRow,
    RoyaltyRow, SessionRow, TrafficRow, Window,
};
use crate::service::QueryService;
use axum::body::Bytes;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::OpenApi as Document;
use utoipa::{IntoParams, IntoResponses, Modify, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use utoipa_scalar::{Scalar, Servable};

/// Largest catalog `PUT` body.
const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

type Params = Result<Query<HashMap<String, String>>, QueryRejection>;

/// Every list answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Rows<T> {
    pub rows: Vec<T>,
}

/// The answer of a catalog `PUT`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Upserted {
    /// Rows written (a key given twice in one body counts once).
    pub upserted: usize,
}

fn rows<T: Serialize>(result: Result<Vec<T>, ApiError>) -> Response {
    match result {
        Ok(rows) => Json(Rows { rows }).into_response(),
        Err(error) => error.into_response(),
    }
}

fn authorization(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
}

fn params(query: Params) -> Result<HashMap<String, String>, ApiError> {
    query
        .map(|Query(map)| map)
        .map_err(|e| ApiError::BadRequest(format!("unreadable query string: {e}")))
}

fn param<'a>(map: &'a HashMap<String, String>, name: &str) -> Option<&'a str> {
    map.get(name).map(String::as_str)
}

/// The document's frame: what no handler says (title, security scheme,
/// tags). Paths and schemas come from the handlers through [`api`].
#[derive(OpenApi)]
#[openapi(
    info(
        title = "svc-query",
        description = "Reports (royalties, impressions, concurrency, traffic), per-user look-ups \
            and catalog writes of the heartbeat mesh. Times in query strings are RFC 3339; \
            answers carry integer epoch milliseconds in fields ending `_ms`. Every call needs \
            `Authorization: Bearer <token>` when the service has `HB_AUTH_SECRET`; without \
            one it runs open on loopback and every caller is admin."
    ),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    components(schemas(ErrorBody)),
    tags(
        (name = "reports", description = "Aggregates over a period `[from, to)`"),
        (name = "users", description = "One user's resume positions and sessions, and their erasure (admin only)"),
        (name = "catalog", description = "Videos and ads the reports join with (admin only)"),
    )
)]
struct ApiDoc;

/// The `bearer` security scheme: the HMAC tokens `hbmesh token` mints.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut Document) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("hbmesh token (claims.signature, base64url)")
                    .description(Some(
                        "A token of `hbmesh token --role ROLE`, signed with HB_AUTH_SECRET",
                    ))
                    .build(),
            ),
        );
    }
}

/// Every documented endpoint, with its OpenAPI description.
fn api() -> OpenApiRouter<QueryService> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(royalties))
        .routes(routes!(impressions))
        .routes(routes!(concurrency))
        .routes(routes!(traffic))
        .routes(routes!(progress))
        .routes(routes!(sessions))
        .routes(routes!(put_videos))
        .routes(routes!(put_ads))
        .routes(routes!(erase_user))
}

/// The OpenAPI 3.1 document of the HTTP API, as `GET /openapi.json` serves it.
pub fn openapi() -> Document {
    api().into_openapi()
}

/// The API router; `run` serves it, tests may too.
pub fn router(service: QueryService) -> Router {
    let (api, document) = api().split_for_parts();
    let json = document.to_json().expect("the OpenAPI document serialises");
    api.route(
        "/openapi.json",
        get(move || async move { ([(header::CONTENT_TYPE, "application/json")], json) }),
    )
    // The page loads Scalar's script from its CDN in the browser; nothing
    // is bundled into the binary.
    .merge(Scalar::with_url("/docs", document))
    .fallback(not_found)
    .method_not_allowed_fallback(method_not_allowed)
    // Catalog bodies are bounded; reports have none.
    .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
    .with_state(service)
}

/// The `from` and `to` of a report: both required.
// Documentation only: the handlers read the query string themselves so that
// a bad value gets its precise reason (see `report::Window`).
#[allow(dead_code)]
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
struct Period {
    /// Start of the period, inclusive (RFC 3339, not before 1970).
    #[param(format = DateTime, example = "2024-05-01T00:00:00Z")]
    from: String,
    /// End of the period, exclusive (RFC 3339, after `from`).
    #[param(format = DateTime, example = "2024-05-02T00:00:00Z")]
    to: String,
}

/// The period and bucket width of the concurrency report.
#[allow(dead_code)]
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
struct ConcurrencyQuery {
    /// Start of the first bucket (RFC 3339, not before 1970).
    #[param(format = DateTime, example = "2024-05-01T00:00:00Z")]
    from: String,
    /// End of the period, exclusive (RFC 3339, after `from`).
    #[param(format = DateTime, example = "2024-05-01T06:00:00Z")]
    to: String,
    /// Bucket width in seconds; at most 10 000 buckets per request.
    #[param(
        required = false,
        minimum = 1,
        maximum = 86_400,
        default = 60,
        example = 300
    )]
    step_s: i64,
}

/// The optional period of a user's sessions: an absent bound is open.
#[allow(dead_code)]
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
struct OptionalPeriod {
    /// Sessions starting at or after this time (RFC 3339).
    #[param(required = false, format = DateTime, example = "2024-05-01T00:00:00Z")]
    from: String,
    /// Sessions starting before this time (RFC 3339, after `from`).
    #[param(required = false, format = DateTime, example = "2024-05-02T00:00:00Z")]
    to: String,
}

/// The user of a look-up.
#[allow(dead_code)]
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
struct UserPath {
    /// The user's id: 1 to 128 bytes, no control characters.
    #[param(
        min_length = 1,
        max_length = 128,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]+$",
        example = "user-42"
    )]
    user_id: String,
}

/// The refusals every endpoint may answer (after the token, then the
/// role, then the parameters are checked, in that order).
#[allow(dead_code)]
#[derive(IntoResponses)]
enum Refusals {
    /// A parameter or the body is wrong; `detail` says which and why.
    #[response(status = 400)]
    BadRequest(ErrorBody),
    /// The bearer token is missing, expired, tampered with or signed with another secret.
    #[response(status = 401)]
    Unauthenticated(ErrorBody),
    /// The token's role may not call this endpoint.
    #[response(status = 403)]
    Forbidden(ErrorBody),
}

/// The failures of reading or writing the sessions store.
#[allow(dead_code)]
#[derive(IntoResponses)]
enum StoreFailures {
    /// A store error that is a bug to report.
    #[response(status = 500)]
    Internal(ErrorBody),
    /// The store is unreachable or busy; retry later.
    #[response(status = 503)]
    Unavailable(ErrorBody),
    /// The query did not finish within HB_QUERY_TIMEOUT and was cancelled.
    #[response(status = 504)]
    DeadlineExceeded(ErrorBody),
}

/// The failures of a report engine (the store, or Trino when configured).
#[allow(dead_code)]
#[derive(IntoResponses)]
enum EngineFailures {
    /// The report query was rejected by the engine: a bug to report.
    #[response(status = 500)]
    Internal(ErrorBody),
    /// Trino is misconfigured (missing catalog or table, access denied): page the operator.
    #[response(status = 502)]
    Upstream(ErrorBody),
    /// The store or Trino is unreachable, busy or out of resources; retry later.
    #[response(status = 503)]
    Unavailable(ErrorBody),
    /// The query did not finish within HB_QUERY_TIMEOUT and was cancelled.
    #[response(status = 504)]
    DeadlineExceeded(ErrorBody),
}

async fn not_found() -> Response {
    let body = ErrorBody::new("not_found", "no such endpoint");
    (StatusCode::NOT_FOUND, Json(body)).into_response()
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    let body = ErrorBody::new(
        "method_not_allowed",
        format!("{method} is not allowed on {}", uri.path()),
    );
    (StatusCode::METHOD_NOT_ALLOWED, Json(body)).into_response()
}

/// Royalties per license holder and video over sessions started in
/// `[from, to)`: `amount_micros = floor(watch_ms * rate_micros_per_hour / 3 600 000)`.
/// Roles: admin (all rows), `license_holder:<id>` (its own rows).
#[utoipa::path(
    get,
    path = "/v1/reports/royalties",
    tag = "reports",
    params(Period),
    responses((status = 200, description = "One row per license holder and video", body = Rows<RoyaltyRow>), Refusals, EngineFailures),
)]
async fn royalties(
    State(service): State<QueryService>,
    headers: HeaderMap,
    query: Params,
) -> Response {
    let svc = &service;
    rows(
        service
            .call(
                Endpoint::Royalties,
                authorization(&headers),
                |scope| async move {
                    let query = params(query)?;
                    let window = Window::from_rfc3339(param(&query, "from"), param(&query, "to"))?;
                    svc.royalties(window, &scope).await
                },
            )
            .await,
    )
}

/// Ad impressions per advertiser, campaign and ad: (session, ad) pairs of
/// sessions started in `[from, to)`.
/// Roles: admin (all rows), `advertiser:<id>` (its own rows).
#[utoipa::path(
    get,
    path = "/v1/reports/impressions",
    tag = "reports",
    params(Period),
    responses((status = 200, description = "One row per advertiser, campaign and ad", body = Rows<ImpressionRow>), Refusals, EngineFailures),
)]
async fn impressions(
    State(service): State<QueryService>,
    headers: HeaderMap,
    query: Params,
) -> Response {
    let svc = &service;
    rows(
        service
            .call(
                Endpoint::Impressions,
                authorization(&headers),
                |scope| async move {
                    let query = params(query)?;
                    let window = Window::from_rfc3339(param(&query, "from"), param(&query, "to"))?;
                    svc.impressions(window, &scope).await
                },
            )
            .await,
    )
}

/// Distinct viewers per bucket of `step_s` seconds from `from`; a session
/// counts in every bucket it overlaps. Role: admin.
#[utoipa::path(
    get,
    path = "/v1/reports/concurrency",
    tag = "reports",
    params(ConcurrencyQuery),
    responses((status = 200, description = "One row per bucket, empty buckets included", body = Rows<ConcurrencyRow>), Refusals, EngineFailures),
)]
async fn concurrency(
    State(service): State<QueryService>,
    headers: HeaderMap,
    query: Params,
) -> Response {
    let svc = &service;
    rows(
        service
            .call(
                Endpoint::Concurrency,
                authorization(&headers),
                |_scope| async move {
                    let query = params(query)?;
                    let window = Window::from_rfc3339(param(&query, "from"), param(&query, "to"))?;
                    let step_s = ConcurrencySpec::parse_step(param(&query, "step_s"))?;
                    let spec = ConcurrencySpec::new(window, step_s)?;
                    svc.concurrency(spec).await
                },
            )
            .await,
    )
}

/// Raw heartbeats and distinct devices per hour and license holder, over
/// heartbeats in `[from, to)` (at most 31 days).
/// Roles: admin (all rows), `license_holder:<id>` (its own rows).
#[utoipa::path(
    get,
    path = "/v1/reports/traffic",
    tag = "reports",
    params(Period),
    responses((status = 200, description = "One row per hour and license holder", body = Rows<TrafficRow>), Refusals, EngineFailures),
)]
async fn traffic(
    State(service): State<QueryService>,
    headers: HeaderMap,
    query: Params,
) -> Response {
    let svc = &service;
    rows(
        service
            .call(
                Endpoint::Traffic,
                authorization(&headers),
                |scope| async move {
                    let query = params(query)?;
                    let window = Window::from_rfc3339(param(&query, "from"), param(&query, "to"))?;
                    svc.traffic(window, &scope).await
                },
            )
            .await,
    )
}

/// Resume positions of a user: per video, the latest session's
/// `last_position_ms` and `end_ms`. Roles: admin, app.
#[utoipa::path(
    get,
    path = "/v1/users/{user_id}/progress",
    tag = "users",
    params(UserPath),
    responses((status = 200, description = "One row per video the user watched", body = Rows<ProgressRow>), Refusals, StoreFailures),
)]
async fn progress(
    State(service): State<QueryService>,
    headers: HeaderMap,
    user_id: Result<Path<String>, PathRejection>,
) -> Response {
    let svc = &service;
    rows(
        service
            .call(
                Endpoint::Progress,
                authorization(&headers),
                |_scope| async move {
                    let Path(user_id) = user_id.map_err(|e| ApiError::BadRequest(e.to_string()))?;
                    let user_id = parse_id("user_id", &user_id)?;
                    svc.progress(&user_id).await
                },
            )
            .await,
    )
}

/// A user's sessions starting in `[from, to)`; without `from` or `to` the
/// period is open on that side. Roles: admin, app.
#[utoipa::path(
    get,
    path = "/v1/users/{user_id}/sessions",
    tag = "users",
    params(UserPath, OptionalPeriod),
    responses((status = 200, description = "The user's sessions", body = Rows<SessionRow>), Refusals, StoreFailures),
)]
async fn sessions(
    State(service): State<QueryService>,
    headers: HeaderMap,
    user_id: Result<Path<String>, PathRejection>,
    query: Params,
) -> Response {
    let svc = &service;
    rows(
        service
            .call(
                Endpoint::Sessions,
                authorization(&headers),
                |_scope| async move {
                    let Path(user_id) = user_id.map_err(|e| ApiError::BadRequest(e.to_string()))?;
                    let user_id = parse_id("user_id", &user_id)?;
                    let query = params(query)?;
                    let (from_ms, to_ms) =
                        optional_period(param(&query, "from"), param(&query, "to"))?;
                    svc.sessions(&user_id, from_ms, to_ms).await
                },
            )
            .await,
    )
}

fn upserted(result: Result<usize, ApiError>) -> Response {
    match result {
        Ok(upserted) => Json(Upserted { upserted }).into_response(),
        Err(error) => error.into_response(),
    }
}

/// Inserts or replaces videos by `video_id`, all in one transaction (at
/// most 10 000 rows; bigger catalogs go through `hbmesh catalog import`). Role: admin.
#[utoipa::path(
    put,
    path = "/v1/catalog/videos",
    tag = "catalog",
    request_body(content = Vec<Video>, description = "Videos, at most 10 000"),
    responses((status = 200, description = "The videos were written", body = Upserted), Refusals, StoreFailures),
)]
async fn put_videos(
    State(service): State<QueryService>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let svc = &service;
    upserted(
        service
            .call(
                Endpoint::CatalogVideos,
                authorization(&headers),
                |_scope| async move {
                    let videos: Vec<Video> = catalog::parse_json(&body, Video::validate)
                        .map_err(ApiError::BadRequest)?;
                    svc.upsert_videos(&videos).await
                },
            )
            .await,
    )
}

/// Inserts or replaces ads by `ad_id`, all in one transaction (at most
/// 10 000 rows). Role: admin.
#[utoipa::path(
    put,
    path = "/v1/catalog/ads",
    tag = "catalog",
    request_body(content = Vec<Ad>, description = "Ads, at most 10 000"),
    responses((status = 200, description = "The ads were written", body = Upserted), Refusals, StoreFailures),
)]
async fn put_ads(State(service): State<QueryService>, headers: HeaderMap, body: Bytes) -> Response {
    let svc = &service;
    upserted(
        service
            .call(
                Endpoint::CatalogAds,
                authorization(&headers),
                |_scope| async move {
                    let ads: Vec<Ad> =
                        catalog::parse_json(&body, Ad::validate).map_err(ApiError::BadRequest)?;
                    svc.upsert_ads(&ads).await
                },
            )
            .await,
    )
}

/// Erases a user: their raw heartbeats, sessions and ad links, in one
/// transaction with an audit row; the reports are recounted without them.
/// Answers the counts removed, also for a user the store knows nothing of
/// (all zero). Role: admin.
#[utoipa::path(
    delete,
    path = "/v1/users/{user_id}",
    tag = "users",
    params(UserPath),
    responses((status = 200, description = "The user was erased", body = UserErased), Refusals, StoreFailures),
)]
async fn erase_user(
    State(service): State<QueryService>,
    headers: HeaderMap,
    user_id: Result<Path<String>, PathRejection>,
) -> Response {
    let svc = &service;
    let erased = service
        .call_as(
            Endpoint::EraseUser,
            authorization(&headers),
            |_scope, caller| async move {
                let Path(user_id) = user_id.map_err(|e| ApiError::BadRequest(e.to_string()))?;
                let user_id = parse_id("user_id", &user_id)?;
                svc.erase_user(&user_id, &caller).await
            },
        )
        .await;
    match erased {
        Ok(erased) => Json(erased).into_response(),
        Err(error) => error.into_response(),
    }
}
