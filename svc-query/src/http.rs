//! The HTTP JSON API of SPEC 7 (axum). Every list answer is `{"rows": [...]}`;
//! every error `{"error", "detail"}` with its status (see [`crate::error`]).

use crate::access::Endpoint;
use crate::catalog::{self, Ad, Video};
use crate::error::ApiError;
use crate::report::{optional_period, parse_id, ConcurrencySpec, Window};
use crate::service::QueryService;
use axum::body::Bytes;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, put};
use axum::{Json, Router};
use serde::Serialize;
use std::collections::HashMap;

/// Largest catalog `PUT` body.
const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

type Params = Result<Query<HashMap<String, String>>, QueryRejection>;

#[derive(Serialize)]
struct Rows<T> {
    rows: Vec<T>,
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

/// The API router; `run` serves it, tests may too.
pub fn router(service: QueryService) -> Router {
    Router::new()
        .route("/v1/reports/royalties", get(royalties))
        .route("/v1/reports/impressions", get(impressions))
        .route("/v1/reports/concurrency", get(concurrency))
        .route("/v1/reports/traffic", get(traffic))
        .route("/v1/users/{user_id}/progress", get(progress))
        .route("/v1/users/{user_id}/sessions", get(sessions))
        .route("/v1/users/{user_id}", delete(erase_user))
        .route("/v1/catalog/videos", put(put_videos))
        .route("/v1/catalog/ads", put(put_ads))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // Catalog bodies are bounded; reports have none.
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(service)
}

async fn not_found() -> Response {
    let body = serde_json::json!({"error": "not_found", "detail": "no such endpoint"});
    (StatusCode::NOT_FOUND, Json(body)).into_response()
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    let body = serde_json::json!({
        "error": "method_not_allowed",
        "detail": format!("{method} is not allowed on {}", uri.path()),
    });
    (StatusCode::METHOD_NOT_ALLOWED, Json(body)).into_response()
}

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
        Ok(count) => Json(serde_json::json!({ "upserted": count })).into_response(),
        Err(error) => error.into_response(),
    }
}

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

/// `DELETE /v1/users/{user_id}`: 200 with the counts removed, also for a
/// user the store knows nothing of (all zero).
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
