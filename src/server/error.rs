//! The one mapping from errors to HTTP answers: every error the API answers
//! with is an [`ApiError`], sent as `{"error": {"code": "...", "message":
//! "..."}}`. A service error becomes one by its [`ErrorKind`] alone
//! ([`status_of`]), so handlers use `?`. The error statuses each route
//! documents in the OpenAPI document are written here once, as the
//! `IntoResponses` types the routes list.

use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::{IntoResponses, ToSchema};

pub use crate::service::wire::ErrorDetail;
use crate::service::{ErrorKind, ServiceError};

/// What went wrong, as the client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// A stable, machine-readable code (`bad_json`, `no_face`, ...).
    pub code: &'static str,
    /// A human-readable explanation.
    pub message: String,
    /// Sent as `Retry-After` (with 429 and 503).
    pub retry_after: Option<Duration>,
}

/// The body of every error answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// The HTTP status of each kind of service error.
pub fn status_of(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::Malformed => StatusCode::BAD_REQUEST,
        ErrorKind::Invalid => StatusCode::UNPROCESSABLE_ENTITY,
        ErrorKind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::Conflict => StatusCode::CONFLICT,
        ErrorKind::Overloaded => StatusCode::TOO_MANY_REQUESTS,
        ErrorKind::Deadline => StatusCode::GATEWAY_TIMEOUT,
        ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// How long a refused client is told to wait.
const RETRY_AFTER: Duration = Duration::from_secs(1);

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        let kind = e.kind();
        // The service's own estimate where it has one (the time the excess
        // takes to drain at the measured rate), else a second.
        let retry_after = matches!(kind, ErrorKind::Overloaded | ErrorKind::Unavailable)
            .then(|| e.retry_after().unwrap_or(RETRY_AFTER));
        Self {
            status: status_of(kind),
            code: e.code(),
            message: e.message(),
            retry_after,
        }
    }
}

impl ApiError {
    /// An error with this status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// 400: the request itself is malformed.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 404.
    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }

    /// 413: the body is over the limit.
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the request body is over the limit of {limit} bytes"),
        )
    }

    /// 503: not ready yet, or shutting down.
    pub fn unavailable(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            retry_after: Some(RETRY_AFTER),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status.as_u16(), self.code, self.message)
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message,
            },
        };
        let mut r = (self.status, axum::Json(body)).into_response();
        if let Some(after) = self.retry_after {
            // Whole seconds, rounded up (at least one).
            let secs = after.as_secs_f64().ceil().max(1.0) as u64;
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        r
    }
}

/// 401 and 403, on every route behind a token.
#[derive(IntoResponses)]
#[allow(dead_code)]
pub enum AuthErrors {
    /// No token.
    #[response(status = 401, description = "No bearer token")]
    Missing(ErrorBody),
    /// A token not accepted.
    #[response(status = 403, description = "Wrong bearer token")]
    Wrong(ErrorBody),
}

/// What a route that embeds images may answer besides its result and the
/// auth errors.
#[derive(IntoResponses)]
#[allow(dead_code)]
pub enum WorkErrors {
    /// 400.
    #[response(
        status = 400,
        description = "Malformed request: bad JSON, base64, form or parameter"
    )]
    Malformed(ErrorBody),
    /// 413.
    #[response(status = 413, description = "Body, images or faces over the limits")]
    TooLarge(ErrorBody),
    /// 422.
    #[response(
        status = 422,
        description = "Not an image, over the decode limits, or no face"
    )]
    Invalid(ErrorBody),
    /// 429.
    #[response(status = 429, description = "At capacity: nothing was done (see Retry-After)")]
    Overloaded(ErrorBody),
    /// 500.
    #[response(status = 500, description = "Model, index or gallery failure")]
    Internal(ErrorBody),
    /// 503.
    #[response(
        status = 503,
        description = "Not ready yet, or shutting down (see Retry-After)"
    )]
    Unavailable(ErrorBody),
    /// 504.
    #[response(status = 504, description = "The request's deadline passed")]
    Deadline(ErrorBody),
}

/// 400.
#[derive(IntoResponses)]
#[response(
    status = 400,
    description = "Malformed request: bad JSON, base64, form or parameter"
)]
pub struct Malformed(#[allow(dead_code)] ErrorBody);

/// 404.
#[derive(IntoResponses)]
#[response(status = 404, description = "Unknown person")]
pub struct NotFound(#[allow(dead_code)] ErrorBody);

/// 409.
#[cfg(feature = "profiling")]
#[derive(IntoResponses)]
#[response(status = 409, description = "A profile is already being taken")]
pub struct Busy(#[allow(dead_code)] ErrorBody);

/// 409 of an enroll.
#[derive(IntoResponses)]
#[response(
    status = 409,
    description = "The idempotency key was used for another request"
)]
pub struct KeyReused(#[allow(dead_code)] ErrorBody);

/// 500.
#[derive(IntoResponses)]
#[response(status = 500, description = "Model, index or gallery failure")]
pub struct Internal(#[allow(dead_code)] ErrorBody);

/// 503.
#[derive(IntoResponses)]
#[response(
    status = 503,
    description = "Not ready yet, or shutting down (see Retry-After)"
)]
pub struct Unavailable(#[allow(dead_code)] ErrorBody);
