//! The API's request bodies and query strings (their OpenAPI schemas are
//! derived from these types); the answers are the service's own bodies
//! ([`crate::service::wire`]), shared with the NATS results.

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::error::ApiError;
use super::extract::{images, no_more, one_image, text, Form, FromForm, Image, Images};

/// `POST /v1/verify`: are the faces of two images the same person?
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest {
    /// The first image, base64 (a `data:` URL prefix is allowed).
    #[schema(value_type = String)]
    pub image1: Image,
    /// The second image.
    #[schema(value_type = String)]
    pub image2: Image,
}

impl FromForm for VerifyRequest {
    fn from_form(mut f: Form) -> Result<Self, ApiError> {
        let image1 = one_image(&mut f, "image1")?;
        let image2 = one_image(&mut f, "image2")?;
        no_more(&f)?;
        Ok(Self { image1, image2 })
    }
}

/// `POST /v1/verify/batch`: one source face against many targets.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyBatchRequest {
    /// The source image, base64 (embedded once).
    #[schema(value_type = String)]
    pub source: Image,
    /// The target images, base64.
    #[schema(value_type = Vec<String>)]
    pub targets: Images,
}

impl FromForm for VerifyBatchRequest {
    fn from_form(mut f: Form) -> Result<Self, ApiError> {
        let source = one_image(&mut f, "source")?;
        let targets = images(&mut f, "targets");
        no_more(&f)?;
        Ok(Self { source, targets })
    }
}

/// `POST /v1/identify`: who is this, among the enrolled people?
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IdentifyRequest {
    /// The image, base64.
    #[schema(value_type = String)]
    pub image: Image,
    /// Closest people to return (default 5).
    #[serde(default)]
    pub k: Option<usize>,
    /// Identify every face of the image (largest first, at most the
    /// server's `max_faces`, in `faces`), not only the largest. The image
    /// is admitted for `max_faces` faces.
    #[serde(default)]
    pub all_faces: bool,
}

impl FromForm for IdentifyRequest {
    fn from_form(mut f: Form) -> Result<Self, ApiError> {
        let image = one_image(&mut f, "image")?;
        let k = match text(&mut f, "k")? {
            Some(k) => Some(
                k.trim()
                    .parse()
                    .map_err(|_| ApiError::bad_request("bad_k", "k must be a whole number"))?,
            ),
            None => None,
        };
        let all_faces = flag(&mut f, "all_faces")?;
        no_more(&f)?;
        Ok(Self { image, k, all_faces })
    }
}

/// A form's `true`/`false` field, false when absent.
fn flag(f: &mut Form, name: &str) -> Result<bool, ApiError> {
    match text(f, name)?.as_deref().map(str::trim) {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(_) => Err(ApiError::bad_request(
            "bad_form",
            format!("`{name}` must be true or false"),
        )),
    }
}

/// `POST /v1/embed`: the embedding of an image's largest face.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EmbedRequest {
    /// The image, base64.
    #[schema(value_type = String)]
    pub image: Image,
}

impl FromForm for EmbedRequest {
    fn from_form(mut f: Form) -> Result<Self, ApiError> {
        let image = one_image(&mut f, "image")?;
        no_more(&f)?;
        Ok(Self { image })
    }
}

/// `PUT /v1/people/{id}`: enroll a person's face images, or embeddings
/// made before (all or none).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    /// Face images of the person, base64 (the largest face of each).
    #[serde(default)]
    #[schema(value_type = Vec<String>)]
    pub images: Images,
    /// Instead of images: the faces' embeddings (this model's length each;
    /// for migrations and imports).
    #[serde(default)]
    pub embeddings: Option<Vec<Vec<f32>>>,
    /// Text stored with the person (for example JSON), when new or replaced.
    #[serde(default)]
    pub meta: Option<String>,
}

impl FromForm for EnrollRequest {
    fn from_form(mut f: Form) -> Result<Self, ApiError> {
        let images = images(&mut f, "images");
        let meta = text(&mut f, "meta")?;
        no_more(&f)?;
        Ok(Self {
            images,
            embeddings: None,
            meta,
        })
    }
}

/// `POST /v1/review`: a video's frames against a reference face (does
/// every frame with a face show that person?) or, without one, against the
/// gallery (is anyone of it in a frame?).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReviewRequestBody {
    /// The video's id, echoed in the answer.
    pub video: String,
    /// The frames, base64, in order.
    #[schema(value_type = Vec<String>)]
    pub frames: Images,
    /// The face every frame should show, base64.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub reference: Option<Image>,
    /// Every face of each frame (at most the server's `max_faces`), not
    /// only its largest: a frame shows the reference's person when any of
    /// its faces does, and lists in `people` everyone of the gallery it
    /// shows. Each frame is admitted for `max_faces` faces.
    #[serde(default)]
    pub all_faces: bool,
}

impl FromForm for ReviewRequestBody {
    fn from_form(mut f: Form) -> Result<Self, ApiError> {
        let video = text(&mut f, "video")?.unwrap_or_default();
        let frames = images(&mut f, "frames");
        let reference = match f.contains_key("reference") {
            true => Some(one_image(&mut f, "reference")?),
            false => None,
        };
        let all_faces = flag(&mut f, "all_faces")?;
        no_more(&f)?;
        Ok(Self {
            video,
            frames,
            reference,
            all_faces,
        })
    }
}

/// `?replace=true`: replace the person's faces instead of adding to them.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EnrollQuery {
    /// Replace the person's faces instead of adding to them.
    #[serde(default)]
    pub replace: bool,
}

/// `GET /v1/people?offset=&limit=&search=`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// People to skip (by id order).
    #[serde(default)]
    pub offset: usize,
    /// People to return (default 100, at most 1000).
    #[serde(default)]
    pub limit: Option<usize>,
    /// Only the people whose id contains this text (case-insensitive);
    /// `total` counts them.
    #[serde(default)]
    pub search: Option<String>,
}

/// `?seconds=N` of the profiling endpoints.
#[cfg(feature = "profiling")]
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ProfileQuery {
    /// How long to sample (default 10, at most 60).
    #[serde(default)]
    pub seconds: Option<u64>,
}

/// Limits the server applies.
#[derive(Debug, Serialize, ToSchema)]
pub struct LimitsBody {
    /// Largest request body, bytes.
    pub max_body_bytes: usize,
    /// Most images in one request.
    pub max_images: usize,
    /// Faces in flight at most; more are refused with 429.
    pub queue_faces: usize,
    /// Default and largest request timeout, ms.
    pub default_timeout_ms: u64,
    /// Largest request timeout a client may ask for, ms.
    pub max_timeout_ms: u64,
    /// Largest image file, bytes.
    pub max_image_bytes: u64,
    /// Largest image, pixels.
    pub max_image_pixels: u64,
    /// Faces of one image identified at most where every face is asked
    /// for (`all_faces`).
    pub max_faces: usize,
}

/// The admission's state: its limit and how it moves.
#[derive(Debug, Serialize, ToSchema)]
pub struct AdmissionBody {
    /// Faces admitted at once at most now (the adaptive limit).
    pub limit_faces: usize,
    /// The hard cap (`--queue`).
    pub cap_faces: usize,
    /// Faces admitted and not yet embedded.
    pub in_use_faces: usize,
    /// Requests waiting in line.
    pub waiting: usize,
    /// The latency target, ms (absent: a fixed limit).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_ms: Option<f64>,
    /// Faces finished per second while the limit held requests back.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_faces_per_sec: Option<f64>,
    /// The smallest face sojourn seen, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_sojourn_ms: Option<f64>,
    /// The last interval's face sojourn p99, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sample_sojourn_ms: Option<f64>,
    /// What a face admitted now would wait, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected_wait_ms: Option<f64>,
    /// Requests refused at once because full.
    pub refused_full: u64,
    /// Requests refused because over the cap.
    pub refused_too_large: u64,
    /// Requests refused because their deadline was shorter than the
    /// expected wait.
    pub refused_deadline: u64,
}

/// What runs.
#[derive(Debug, Serialize, ToSchema)]
pub struct InfoBody {
    /// The embedding model file.
    pub model: String,
    /// The embedding backend that runs.
    pub backend: String,
    /// The embeddings' length.
    pub dimension: usize,
    /// The similarity at or above which two faces are the same person.
    pub threshold: f32,
    /// People enrolled.
    pub people: usize,
    /// Where the gallery is kept and how this process's copy stands
    /// (absent: in this process only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gallery: Option<GalleryBody>,
    /// The limits.
    pub limits: LimitsBody,
    /// The admission.
    pub admission: AdmissionBody,
    /// facepool's version.
    pub version: String,
}

/// The gallery's store, as this process sees it.
#[derive(Debug, Serialize, ToSchema)]
pub struct GalleryBody {
    /// `file` or `nats`.
    pub store: String,
    /// The file, or the bucket and its broker.
    pub place: String,
    /// The fleet gallery's last revision this replica applied.
    pub revision: u64,
    /// Changes stored that this replica has not applied yet (as the broker
    /// last said).
    pub pending: u64,
    /// Whether the replica follows the store now; `false`: cut off, it
    /// answers from what it has (`/readyz` says `degraded`).
    pub connected: bool,
    /// Since the replica applied its last change (or caught up), ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_change_age_ms: Option<f64>,
    /// Entries of the store that could not be applied.
    pub rejected: u64,
}

/// `?seconds=N` of `/v1/stats`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StatsQuery {
    /// Seconds of requests to give, one entry each (default 60, 1 to 300).
    #[serde(default)]
    #[param(minimum = 1, maximum = 300)]
    pub seconds: Option<u64>,
}

/// One second of the API's requests.
#[derive(Debug, Serialize, ToSchema)]
pub struct SecondBody {
    /// Seconds before now (0: the current one, still counting).
    pub ago: u64,
    /// Requests answered 2xx.
    pub ok: u64,
    /// Requests refused (429: full, or a deadline the wait cannot meet;
    /// 503: stopping, or a dependency away).
    pub refused: u64,
    /// Other 4xx answers.
    pub client_errors: u64,
    /// Other 5xx answers.
    pub server_errors: u64,
    /// Median latency of the answered requests, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p50_ms: Option<f64>,
    /// Their 99th percentile, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p99_ms: Option<f64>,
}

/// The preparation workers.
#[derive(Debug, Serialize, ToSchema)]
pub struct PoolBody {
    /// Workers serving.
    pub workers: usize,
    /// Workers at most.
    pub capacity: usize,
    /// Images being prepared.
    pub running: usize,
    /// Images waiting for a worker.
    pub waiting: usize,
}

/// The model's batches.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatcherBody {
    /// Faces waiting for a model run.
    pub queued_faces: usize,
    /// Model runs so far.
    pub batches: u64,
    /// Faces embedded so far.
    pub faces: u64,
    /// Faces per run, on average so far.
    pub mean_batch_size: f64,
    /// The most a run takes.
    pub batch_max: usize,
}

/// `GET /v1/stats`: what a dashboard shows, read at the call.
#[derive(Debug, Serialize, ToSchema)]
pub struct StatsBody {
    /// The API's requests, one entry per second, oldest first (`/v1/stats`
    /// itself, the probes and `/metrics` are not counted).
    pub seconds: Vec<SecondBody>,
    /// Median latency of the answered requests over those seconds, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p50_ms: Option<f64>,
    /// Their 99th percentile, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p99_ms: Option<f64>,
    /// The preparation workers.
    pub pool: PoolBody,
    /// The model's batches.
    pub batcher: BatcherBody,
    /// The admission: its limit, what it holds, the expected wait.
    pub admission: AdmissionBody,
    /// People enrolled.
    pub people: usize,
    /// This process's resident memory, bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
}

/// `{"status": "ok"}` (or `"loading"`).
#[derive(Debug, Serialize, ToSchema)]
pub struct StatusBody {
    /// `ok`, `degraded` (ready, but the gallery's replica is cut off from
    /// its store and answers from what it has), `loading` or `stopping`.
    pub status: String,
}
