//! The one mapping from errors to HTTP status codes: every error the API
//! answers with is an [`ApiError`], sent as
//! `{"error": {"code": "...", "message": "..."}}`.

use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::batch::{self, BatchError};
use crate::face::FaceError;
use crate::index::IndexError;
use crate::pool::{self, JobError};
use crate::service::ServiceError;

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

/// An error's code and message.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// A stable, machine-readable code.
    pub code: String,
    /// A human-readable explanation.
    pub message: String,
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

    /// 429: full; try again after `retry_after`.
    pub fn overloaded(retry_after: Duration) -> Self {
        Self {
            retry_after: Some(retry_after),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "overloaded",
                "the service is at capacity; nothing was done, try again later",
            )
        }
    }

    /// 503: not ready yet, or shutting down.
    pub fn unavailable(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            retry_after: Some(Duration::from_secs(1)),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
        }
    }

    /// 504: the request's deadline passed.
    pub fn deadline(limit: Duration) -> Self {
        Self::new(
            StatusCode::GATEWAY_TIMEOUT,
            "deadline_exceeded",
            format!("the request did not finish within {} ms", limit.as_millis()),
        )
    }

    /// The error of one image of several (`image 2: no face found`).
    pub fn for_image(self, index: usize) -> Self {
        Self {
            message: format!("image {index}: {}", self.message),
            ..self
        }
    }

    /// Maps a service error, `retry_after` for refusals.
    pub fn from_service(e: &ServiceError, retry_after: Duration) -> Self {
        match e {
            ServiceError::Face(f) => Self::from_face(f),
            ServiceError::Pool(pool::SubmitError::Overloaded | pool::SubmitError::Timeout(_))
            | ServiceError::Batch(batch::SubmitError::Overloaded | batch::SubmitError::Timeout(_)) => {
                Self::overloaded(retry_after)
            }
            ServiceError::Batch(batch::SubmitError::TooHeavy { .. }) => {
                Self::new(StatusCode::PAYLOAD_TOO_LARGE, "too_many_faces", e.to_string())
            }
            ServiceError::Pool(pool::SubmitError::Closed)
            | ServiceError::Batch(batch::SubmitError::Closed)
            | ServiceError::Job(JobError::Cancelled)
            | ServiceError::Inference(BatchError::Cancelled | BatchError::Abandoned) => {
                Self::unavailable("shutting_down", "the service is shutting down")
            }
            ServiceError::Job(JobError::Expired) | ServiceError::Inference(BatchError::Expired) => Self::new(
                StatusCode::GATEWAY_TIMEOUT,
                "deadline_exceeded",
                "the request's deadline passed before its work started",
            ),
            ServiceError::Job(JobError::Panicked(_)) | ServiceError::Inference(_) => {
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
            }
            ServiceError::Index(i) => Self::from_index(i),
            ServiceError::Image { index, error } => Self::from_service(error, retry_after).for_image(*index),
        }
    }

    fn from_face(f: &FaceError) -> Self {
        let code = match f {
            FaceError::NoFace => "no_face",
            FaceError::FileTooLarge { .. } | FaceError::TooLarge(_) => "image_too_large",
            FaceError::TooSmall { .. } => "image_too_small",
            FaceError::Unsupported(_) | FaceError::Decode(_) => "not_an_image",
            FaceError::Io { .. } => "io",
            FaceError::Model(_) | FaceError::Runtime { .. } | FaceError::Gpu(_) | FaceError::BadOutput(_) => {
                return Self::new(StatusCode::INTERNAL_SERVER_ERROR, "model", f.to_string());
            }
        };
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, f.to_string())
    }

    fn from_index(i: &IndexError) -> Self {
        match i {
            IndexError::BadText(_) => Self::bad_request("bad_id", i.to_string()),
            IndexError::NoVectors(_) => Self::bad_request("no_images", i.to_string()),
            _ => Self::new(StatusCode::INTERNAL_SERVER_ERROR, "index", i.to_string()),
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
            let secs = after.as_secs().max(1);
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        r
    }
}
