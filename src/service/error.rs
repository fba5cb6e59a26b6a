//! The front door's errors: one [`ServiceError`] for every operation, each
//! with a transport-neutral [`ErrorKind`] and a stable machine code. Each
//! edge maps the kind in one place (HTTP status, NATS ack, exit code); no
//! edge decides from another edge's codes.

use std::sync::Arc;

use super::admission::AdmitError;
use crate::batch::{self, BatchError};
use crate::face::FaceError;
use crate::gallery::GalleryError;
use crate::index::IndexError;
use crate::pool::{self, JobError};

/// What kind of failure, as every edge needs to know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The request itself is malformed (a bad id, a bad parameter, no
    /// images): fix the request.
    Malformed,
    /// An input cannot be used: not an image, over the decode limits, no
    /// face. The same input fails again.
    Invalid,
    /// More than any request may carry (images, faces, bytes).
    TooLarge,
    /// What the request names does not exist (an unknown person).
    NotFound,
    /// The request conflicts with the current state (a concurrent change).
    Conflict,
    /// At capacity now: nothing was done; try again later.
    Overloaded,
    /// The request's deadline passed.
    Deadline,
    /// The service is not there for it now (stopping, not ready).
    Unavailable,
    /// A failure of the service itself (the model, the index, a file).
    Internal,
}

impl ErrorKind {
    /// Every kind (for tables).
    pub const ALL: [ErrorKind; 9] = [
        ErrorKind::Malformed,
        ErrorKind::Invalid,
        ErrorKind::TooLarge,
        ErrorKind::NotFound,
        ErrorKind::Conflict,
        ErrorKind::Overloaded,
        ErrorKind::Deadline,
        ErrorKind::Unavailable,
        ErrorKind::Internal,
    ];

    /// Whether the same request, sent again later (or to another
    /// process), may succeed: at capacity, unavailable, or an internal
    /// failure that may be transient. Not a malformed or invalid request,
    /// one too large, or one whose deadline passed.
    pub fn retryable(self) -> bool {
        matches!(
            self,
            ErrorKind::Overloaded | ErrorKind::Unavailable | ErrorKind::Internal
        )
    }
}

/// Why a service call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ServiceError {
    /// An image gave no face or no embedding.
    #[error(transparent)]
    Face(#[from] FaceError),
    /// Admission refused the request.
    #[error("admission: {0}")]
    Admit(#[from] AdmitError),
    /// The pool refused the work (a backstop behind admission).
    #[error("pool: {0}")]
    Pool(#[from] pool::SubmitError),
    /// A pool job ended without a value.
    #[error("pool job: {0}")]
    Job(#[from] JobError),
    /// The batcher refused the face (a backstop behind admission).
    #[error("batcher: {0}")]
    Batch(#[from] batch::SubmitError),
    /// The face's batch failed.
    #[error("inference: {0}")]
    Inference(#[from] BatchError),
    /// The index refused the vector or the query.
    #[error("index: {0}")]
    Index(Arc<IndexError>),
    /// The call's deadline passed.
    #[error("the request did not finish within its deadline")]
    Deadline,
    /// The gallery could not be stored.
    #[error("gallery: {0}")]
    Gallery(String),
    /// A request the service refuses as it is.
    #[error("{message}")]
    Request {
        /// Its kind.
        kind: ErrorKind,
        /// A stable code (`bad_k`, `unknown_person`, ...).
        code: &'static str,
        /// What is wrong.
        message: String,
    },
    /// One of several images failed (the error of the whole request).
    #[error("image {index}: {error}")]
    Image {
        /// Position of the image in the call.
        index: usize,
        /// Why it failed.
        error: Box<ServiceError>,
    },
}

impl From<IndexError> for ServiceError {
    fn from(e: IndexError) -> Self {
        Self::Index(Arc::new(e))
    }
}

impl From<GalleryError> for ServiceError {
    fn from(e: GalleryError) -> Self {
        let (kind, code) = match &e {
            GalleryError::Index(_) | GalleryError::Store(_) => (ErrorKind::Internal, ""),
            GalleryError::Unreachable(_) => (ErrorKind::Unavailable, "gallery_unreachable"),
            GalleryError::Conflict { .. } => (ErrorKind::Conflict, "gallery_conflict"),
            GalleryError::TooLarge { .. } => (ErrorKind::TooLarge, "person_too_large"),
            GalleryError::NotApplied { .. } => (ErrorKind::Unavailable, "gallery_lagging"),
        };
        match e {
            GalleryError::Index(i) => i.into(),
            GalleryError::Store(s) => Self::Gallery(s),
            e => Self::request(kind, code, e.to_string()),
        }
    }
}

impl ServiceError {
    /// A request refused as it is.
    pub fn request(kind: ErrorKind, code: &'static str, message: impl Into<String>) -> Self {
        Self::Request {
            kind,
            code,
            message: message.into(),
        }
    }

    /// The error of image `index` of several.
    pub fn for_image(self, index: usize) -> Self {
        Self::Image {
            index,
            error: Box::new(self),
        }
    }

    /// Its kind (see [`ErrorKind`]).
    pub fn kind(&self) -> ErrorKind {
        use ErrorKind as K;
        match self {
            ServiceError::Face(f) => match f {
                FaceError::Model(_)
                | FaceError::Runtime { .. }
                | FaceError::Gpu(_)
                | FaceError::BadOutput(_) => K::Internal,
                _ => K::Invalid,
            },
            ServiceError::Admit(a) => match a {
                AdmitError::TooLarge { .. } => K::TooLarge,
                AdmitError::Overloaded { .. } | AdmitError::Unmeetable { .. } => K::Overloaded,
                AdmitError::Timeout => K::Deadline,
                AdmitError::Closed => K::Unavailable,
            },
            ServiceError::Pool(p) => match p {
                pool::SubmitError::Overloaded | pool::SubmitError::Timeout(_) => K::Overloaded,
                pool::SubmitError::Closed => K::Unavailable,
            },
            ServiceError::Job(j) => match j {
                JobError::Expired => K::Deadline,
                JobError::Cancelled => K::Unavailable,
                JobError::Panicked(_) => K::Internal,
            },
            ServiceError::Batch(b) => match b {
                batch::SubmitError::Overloaded | batch::SubmitError::Timeout(_) => K::Overloaded,
                batch::SubmitError::TooHeavy { .. } => K::TooLarge,
                batch::SubmitError::Closed => K::Unavailable,
            },
            ServiceError::Inference(b) => match b {
                BatchError::Expired => K::Deadline,
                BatchError::Cancelled | BatchError::Abandoned => K::Unavailable,
                _ => K::Internal,
            },
            ServiceError::Index(i) => match &**i {
                IndexError::BadText(_) | IndexError::NoVectors(_) => K::Malformed,
                _ => K::Internal,
            },
            ServiceError::Deadline => K::Deadline,
            ServiceError::Gallery(_) => K::Internal,
            ServiceError::Request { kind, .. } => *kind,
            ServiceError::Image { error, .. } => error.kind(),
        }
    }

    /// Whether trying again may help ([`ErrorKind::retryable`]).
    pub fn retryable(&self) -> bool {
        self.kind().retryable()
    }

    /// A stable, machine-readable code: the same on every edge (`no_face`,
    /// `overloaded`, `deadline_exceeded`, ...).
    pub fn code(&self) -> &'static str {
        match self {
            ServiceError::Face(f) => match f {
                FaceError::NoFace => "no_face",
                FaceError::FileTooLarge { .. } | FaceError::TooLarge(_) => "image_too_large",
                FaceError::TooSmall { .. } => "image_too_small",
                FaceError::Unsupported(_) | FaceError::Decode(_) => "not_an_image",
                FaceError::Io { .. } => "io",
                FaceError::Model(_)
                | FaceError::Runtime { .. }
                | FaceError::Gpu(_)
                | FaceError::BadOutput(_) => "model",
            },
            ServiceError::Admit(AdmitError::TooLarge { .. })
            | ServiceError::Batch(batch::SubmitError::TooHeavy { .. }) => "too_many_faces",
            ServiceError::Index(i) => match &**i {
                IndexError::BadText(_) => "bad_id",
                IndexError::NoVectors(_) => "no_images",
                _ => "index",
            },
            ServiceError::Gallery(_) => "gallery_save",
            ServiceError::Admit(AdmitError::Unmeetable { .. }) => "deadline_unmeetable",
            ServiceError::Request { code, .. } => code,
            ServiceError::Image { error, .. } => error.code(),
            _ => match self.kind() {
                ErrorKind::Overloaded => "overloaded",
                ErrorKind::Deadline => "deadline_exceeded",
                ErrorKind::Unavailable => "shutting_down",
                _ => "internal",
            },
        }
    }

    /// When a refused request may be tried again: the admission's estimate
    /// for a full service (the excess drained at the measured rate), one
    /// second for other transient refusals; `None` for errors a retry does
    /// not cure.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            ServiceError::Admit(AdmitError::Overloaded { retry_after }) => Some(*retry_after),
            ServiceError::Image { error, .. } => error.retry_after(),
            _ if matches!(self.kind(), ErrorKind::Overloaded | ErrorKind::Unavailable) => {
                Some(std::time::Duration::from_secs(1))
            }
            _ => None,
        }
    }

    /// The message a client is shown: this error's text, except that
    /// refusals and deadlines say what happened in the client's terms.
    pub fn message(&self) -> String {
        match self {
            ServiceError::Image { index, error } => format!("image {index}: {}", error.message()),
            ServiceError::Request { message, .. } => message.clone(),
            _ => match self.kind() {
                ErrorKind::Overloaded => {
                    "the service is at capacity; nothing was done, try again later".to_owned()
                }
                ErrorKind::Unavailable => "the service is shutting down".to_owned(),
                ErrorKind::Deadline => match self {
                    ServiceError::Job(_) | ServiceError::Inference(_) => {
                        "the request's deadline passed before its work started".to_owned()
                    }
                    ServiceError::Admit(_) => {
                        "the request's deadline passed while it waited for admission".to_owned()
                    }
                    _ => "the request did not finish within its deadline".to_owned(),
                },
                _ => self.to_string(),
            },
        }
    }
}

/// Why a service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A model could not be loaded.
    #[error(transparent)]
    Face(#[from] FaceError),
    /// The pool could not start.
    #[error("pool: {0}")]
    Pool(#[from] pool::BuildError),
    /// The batcher could not start.
    #[error("batcher: {0}")]
    Batch(#[from] batch::BuildError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_codes_of_every_source() {
        use ErrorKind as K;
        let cases: Vec<(ServiceError, K, &str)> = vec![
            (FaceError::NoFace.into(), K::Invalid, "no_face"),
            (FaceError::Decode("x".into()).into(), K::Invalid, "not_an_image"),
            (
                FaceError::TooLarge("x".into()).into(),
                K::Invalid,
                "image_too_large",
            ),
            (FaceError::Model("x".into()).into(), K::Internal, "model"),
            (
                AdmitError::Overloaded {
                    retry_after: std::time::Duration::from_secs(1),
                }
                .into(),
                K::Overloaded,
                "overloaded",
            ),
            (
                AdmitError::Unmeetable {
                    expected: std::time::Duration::from_secs(1),
                }
                .into(),
                K::Overloaded,
                "deadline_unmeetable",
            ),
            (AdmitError::Timeout.into(), K::Deadline, "deadline_exceeded"),
            (AdmitError::Closed.into(), K::Unavailable, "shutting_down"),
            (
                AdmitError::TooLarge {
                    asked: Default::default(),
                    cap: Default::default(),
                }
                .into(),
                K::TooLarge,
                "too_many_faces",
            ),
            (pool::SubmitError::Overloaded.into(), K::Overloaded, "overloaded"),
            (
                pool::SubmitError::Timeout(std::time::Duration::ZERO).into(),
                K::Overloaded,
                "overloaded",
            ),
            (
                batch::SubmitError::Timeout(std::time::Duration::ZERO).into(),
                K::Overloaded,
                "overloaded",
            ),
            (pool::SubmitError::Closed.into(), K::Unavailable, "shutting_down"),
            (JobError::Expired.into(), K::Deadline, "deadline_exceeded"),
            (JobError::Panicked("p".into()).into(), K::Internal, "internal"),
            (BatchError::Abandoned.into(), K::Unavailable, "shutting_down"),
            (IndexError::BadText("x".into()).into(), K::Malformed, "bad_id"),
            (
                IndexError::NoVectors("x".into()).into(),
                K::Malformed,
                "no_images",
            ),
            (IndexError::BadDim(0).into(), K::Internal, "index"),
            (ServiceError::Deadline, K::Deadline, "deadline_exceeded"),
            (ServiceError::Gallery("disk".into()), K::Internal, "gallery_save"),
            (
                ServiceError::request(K::NotFound, "unknown_person", "no person"),
                K::NotFound,
                "unknown_person",
            ),
            (
                ServiceError::from(FaceError::NoFace).for_image(2),
                K::Invalid,
                "no_face",
            ),
        ];
        for (e, kind, code) in cases {
            assert_eq!((e.kind(), e.code()), (kind, code), "{e:?}");
        }
    }

    #[test]
    fn image_errors_name_their_image() {
        let e = ServiceError::from(FaceError::NoFace).for_image(1);
        assert_eq!(e.message(), "image 1: no face found in the image");
        let e = ServiceError::from(AdmitError::Overloaded {
            retry_after: std::time::Duration::from_millis(2500),
        });
        assert!(e.message().contains("nothing was done"));
        assert_eq!(e.retry_after(), Some(std::time::Duration::from_millis(2500)));
    }

    #[test]
    fn only_transient_kinds_are_retryable() {
        let yes: Vec<ErrorKind> = ErrorKind::ALL.into_iter().filter(|k| k.retryable()).collect();
        assert_eq!(
            yes,
            [ErrorKind::Overloaded, ErrorKind::Unavailable, ErrorKind::Internal]
        );
    }
}
