//! Errors at the two boundaries: [`EngineError`] (what a report backend says,
//! split by what the caller should do) and [`ApiError`] (what a request gets),
//! with the one mapping of each to HTTP and gRPC.
//!
//! | error | HTTP | gRPC | caller should |
//! |---|---|---|---|
//! | bad parameter | 400 `bad_request` | `INVALID_ARGUMENT` | fix the request |
//! | missing/expired/tampered token | 401 `unauthenticated` | `UNAUTHENTICATED` | get a token |
//! | role not allowed | 403 `forbidden` | `PERMISSION_DENIED` | use another role |
//! | query deadline passed (query cancelled) | 504 `deadline_exceeded` | `DEADLINE_EXCEEDED` | narrow the period / retry later |
//! | store or Trino unreachable, store busy or in conflict (serialisation, deadlock, lock time-out), Trino 503 after retries, Trino out of resources, connector (EXTERNAL) failure | 503 `unavailable` | `UNAVAILABLE` | retry later |
//! | Trino catalog/schema/table/column missing, Trino denied our user, Trino internal error, unreadable answer | 502 `upstream_error` | `FAILED_PRECONDITION` | page the operator: deployment problem |
//! | report SQL rejected (SYNTAX_ERROR and other Trino user errors), other store errors | 500 `internal` | `INTERNAL` | report a bug |

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use hb_common::auth::AuthError;
use hb_common::store::pg_copy::CopyError;
use hb_common::store::Failure;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use utoipa::ToSchema;

/// The body of every error answer, whatever its status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// What kind of error, for programs: `bad_request`, `unauthenticated`,
    /// `forbidden`, `not_found`, `method_not_allowed`, `internal`,
    /// `upstream_error`, `unavailable` or `deadline_exceeded`.
    #[schema(example = "bad_request")]
    pub error: String,
    /// What went wrong, for people.
    #[schema(example = "missing from (RFC 3339 time, e.g. 2024-05-01T00:00:00Z)")]
    pub detail: String,
}

impl ErrorBody {
    pub fn new(error: &str, detail: impl Into<String>) -> ErrorBody {
        ErrorBody {
            error: error.to_string(),
            detail: detail.into(),
        }
    }
}

/// A report backend's failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    #[error("query did not finish within {0:?} and was cancelled")]
    Deadline(Duration),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Upstream(String),
    #[error("{0}")]
    Internal(String),
}

impl From<sqlx::Error> for EngineError {
    fn from(error: sqlx::Error) -> EngineError {
        match hb_common::store::classify(&error) {
            Failure::Unavailable => {
                EngineError::Unavailable(format!("sessions store unavailable: {error}"))
            }
            Failure::Conflict | Failure::Fatal => {
                EngineError::Internal(format!("sessions store error: {error}"))
            }
        }
    }
}

impl From<CopyError> for EngineError {
    fn from(error: CopyError) -> EngineError {
        EngineError::Internal(format!("sessions store sent unreadable rows: {error}"))
    }
}

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthenticated(#[from] AuthError),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Engine(#[from] EngineError),
}

impl From<crate::report::ParamError> for ApiError {
    fn from(error: crate::report::ParamError) -> ApiError {
        ApiError::BadRequest(error.0)
    }
}

impl ApiError {
    /// The `error` field of the JSON body, also the `status` metric label.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Unauthenticated(_) => "unauthenticated",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::Engine(EngineError::Deadline(_)) => "deadline_exceeded",
            ApiError::Engine(EngineError::Unavailable(_)) => "unavailable",
            ApiError::Engine(EngineError::Upstream(_)) => "upstream_error",
            ApiError::Engine(EngineError::Internal(_)) => "internal",
        }
    }

    pub fn http_status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::Engine(EngineError::Deadline(_)) => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Engine(EngineError::Unavailable(_)) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Engine(EngineError::Upstream(_)) => StatusCode::BAD_GATEWAY,
            ApiError::Engine(EngineError::Internal(_)) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn grpc_status(&self) -> tonic::Status {
        let detail = self.to_string();
        match self {
            ApiError::BadRequest(_) => tonic::Status::invalid_argument(detail),
            ApiError::Unauthenticated(_) => tonic::Status::unauthenticated(detail),
            ApiError::Forbidden(_) => tonic::Status::permission_denied(detail),
            ApiError::Engine(EngineError::Deadline(_)) => tonic::Status::deadline_exceeded(detail),
            ApiError::Engine(EngineError::Unavailable(_)) => tonic::Status::unavailable(detail),
            ApiError::Engine(EngineError::Upstream(_)) => {
                tonic::Status::failed_precondition(detail)
            }
            ApiError::Engine(EngineError::Internal(_)) => tonic::Status::internal(detail),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.http_status();
        if status.is_server_error() {
            tracing::warn!(error = self.code(), detail = %self, "query failed");
        }
        let body = ErrorBody::new(self.code(), self.to_string());
        (status, axum::Json(body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_has_a_distinct_status() {
        let errors = [
            ApiError::BadRequest("x".into()),
            ApiError::Unauthenticated(AuthError::Expired),
            ApiError::Forbidden("x".into()),
            ApiError::Engine(EngineError::Deadline(Duration::from_secs(1))),
            ApiError::Engine(EngineError::Unavailable("x".into())),
            ApiError::Engine(EngineError::Upstream("x".into())),
            ApiError::Engine(EngineError::Internal("x".into())),
        ];
        let http: std::collections::HashSet<_> = errors.iter().map(|e| e.http_status()).collect();
        let grpc: std::collections::HashSet<_> =
            errors.iter().map(|e| e.grpc_status().code()).collect();
        assert_eq!(http.len(), errors.len());
        assert_eq!(grpc.len(), errors.len());
        assert_eq!(errors[1].http_status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            errors[2].grpc_status().code(),
            tonic::Code::PermissionDenied
        );
    }
}
