//! The API's request and response bodies (their OpenAPI schemas are
//! derived from these types), and reading a request's images from JSON
//! (base64 strings) or from multipart/form-data (the same field names).

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{FromRequest, Multipart, Request};
use axum::http::header;
use base64::Engine;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::error::ApiError;
use crate::service::Timings;

/// `POST /v1/verify`: are the faces of two images the same person?
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest {
    /// The first image, base64 (a `data:` URL prefix is allowed).
    pub image1: String,
    /// The second image.
    pub image2: String,
}

/// `POST /v1/verify/batch`: one source face against many targets.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyBatchRequest {
    /// The source image, base64 (embedded once).
    pub source: String,
    /// The target images, base64.
    pub targets: Vec<String>,
}

/// `POST /v1/identify`: who is this, among the enrolled people?
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IdentifyRequest {
    /// The image, base64.
    pub image: String,
    /// Closest people to return (default 5).
    #[serde(default)]
    pub k: Option<usize>,
}

/// `POST /v1/embed`: the embedding of an image's largest face.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EmbedRequest {
    /// The image, base64.
    pub image: String,
}

/// `PUT /v1/people/{id}`: enroll a person's face images (all or none).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    /// Face images of the person, base64 (the largest face of each).
    pub images: Vec<String>,
    /// Text stored with the person (for example JSON), when new or replaced.
    #[serde(default)]
    pub meta: Option<String>,
}

/// `?replace=true`: replace the person's faces instead of adding to them.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EnrollQuery {
    /// Replace the person's faces instead of adding to them.
    #[serde(default)]
    pub replace: bool,
}

/// `GET /v1/people?offset=&limit=`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// People to skip (by id order).
    #[serde(default)]
    pub offset: usize,
    /// People to return (default 100, at most 1000).
    #[serde(default)]
    pub limit: Option<usize>,
}

/// `?seconds=N` of the profiling endpoints.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ProfileQuery {
    /// How long to sample (default 10, at most 60).
    #[serde(default)]
    pub seconds: Option<u64>,
}

/// Time spent per stage, in milliseconds.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub struct TimingsMs {
    /// Waiting for a preparation worker (the longest of the images).
    pub queue: f64,
    /// Decoding, detection and alignment.
    pub prepare: f64,
    /// Waiting for a model run.
    pub batch_wait: f64,
    /// The model run.
    pub inference: f64,
    /// Comparing or searching.
    pub search: f64,
    /// The whole request, as the service saw it.
    pub total: f64,
}

fn ms(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 1e5).round() / 100.0
}

impl From<Timings> for TimingsMs {
    fn from(t: Timings) -> Self {
        Self {
            queue: ms(t.queue),
            prepare: ms(t.prepare),
            batch_wait: ms(t.batch_wait),
            inference: ms(t.inference),
            search: ms(t.search),
            total: ms(t.total),
        }
    }
}

/// The verdict on two faces.
#[derive(Debug, Serialize, ToSchema)]
pub struct VerifyResponse {
    /// Cosine similarity of the two faces.
    pub similarity: f32,
    /// Whether it reaches the threshold.
    pub same: bool,
    /// The threshold used.
    pub threshold: f32,
    /// How each face was found (`aligned`, `detected`, ...).
    pub faces: Vec<String>,
    /// Per-stage timings.
    pub timings_ms: TimingsMs,
}

/// One target's verdict, or why it has none.
#[derive(Debug, Serialize, ToSchema)]
pub struct TargetResult {
    /// The target's position in the request.
    pub index: usize,
    /// Cosine similarity with the source (absent on error).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub similarity: Option<f32>,
    /// Whether it reaches the threshold (absent on error).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub same: Option<bool>,
    /// How the target's face was found (absent on error).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub face: Option<String>,
    /// Why this target has no verdict.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<super::error::ErrorDetail>,
}

/// The source against every target, in order.
#[derive(Debug, Serialize, ToSchema)]
pub struct VerifyBatchResponse {
    /// One result per target, in order.
    pub results: Vec<TargetResult>,
    /// The threshold used.
    pub threshold: f32,
    /// How the source face was found.
    pub source_face: String,
    /// Per-stage timings of the whole request.
    pub timings_ms: TimingsMs,
}

/// An enrolled person matched.
#[derive(Debug, Serialize, ToSchema)]
pub struct MatchBody {
    /// The person's id.
    pub id: String,
    /// Cosine similarity with the person's closest face.
    pub similarity: f32,
    /// The text stored with the person.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub meta: Option<String>,
}

impl From<&crate::index::Match> for MatchBody {
    fn from(m: &crate::index::Match) -> Self {
        Self {
            id: m.id.to_string(),
            similarity: m.similarity,
            meta: m.meta.as_ref().map(|s| s.to_string()),
        }
    }
}

/// Who the face is.
#[derive(Debug, Serialize, ToSchema)]
pub struct IdentifyResponse {
    /// The best match if it reaches the threshold; `null` means unknown.
    pub best: Option<MatchBody>,
    /// The closest people, best first, whether or not they reach it.
    pub matches: Vec<MatchBody>,
    /// The threshold used.
    pub threshold: f32,
    /// How the face was found.
    pub face: String,
    /// Per-stage timings.
    pub timings_ms: TimingsMs,
}

/// An image's embedding.
#[derive(Debug, Serialize, ToSchema)]
pub struct EmbedResponse {
    /// The L2-normalised embedding.
    pub embedding: Vec<f32>,
    /// Its length.
    pub dimension: usize,
    /// How the face was found.
    pub face: String,
    /// Per-stage timings.
    pub timings_ms: TimingsMs,
}

/// An enrolled person.
#[derive(Debug, Serialize, ToSchema)]
pub struct PersonBody {
    /// The person's id.
    pub id: String,
    /// Faces enrolled.
    pub faces: usize,
    /// The text stored with the person.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub meta: Option<String>,
}

/// A page of enrolled people, by id.
#[derive(Debug, Serialize, ToSchema)]
pub struct PeoplePage {
    /// People enrolled in all.
    pub total: usize,
    /// The page's first position.
    pub offset: usize,
    /// The page.
    pub people: Vec<PersonBody>,
}

/// A person removed.
#[derive(Debug, Serialize, ToSchema)]
pub struct RemovedBody {
    /// The person's id.
    pub id: String,
    /// Faces removed.
    pub removed_faces: usize,
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
    /// The limits.
    pub limits: LimitsBody,
    /// facepool's version.
    pub version: String,
}

/// `{"status": "ok"}` (or `"loading"`).
#[derive(Debug, Serialize, ToSchema)]
pub struct StatusBody {
    /// `ok`, `loading` or `stopping`.
    pub status: String,
}

/// Decodes one base64 image (`data:...;base64,` prefixes allowed).
pub fn decode_image(field: &str, s: &str) -> Result<Arc<[u8]>, ApiError> {
    let s = s.trim();
    let s = match s.strip_prefix("data:") {
        Some(rest) => rest.split_once(',').map_or(rest, |(_, b)| b),
        None => s,
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s.as_bytes())
        .map_err(|e| ApiError::bad_request("bad_base64", format!("{field}: not base64: {e}")))?;
    if bytes.is_empty() {
        return Err(ApiError::bad_request("empty_image", format!("{field}: empty")));
    }
    Ok(bytes.into())
}

/// A multipart form: each field's values in order (files as bytes, text as
/// UTF-8 bytes).
pub type Form = HashMap<String, Vec<Vec<u8>>>;

/// A request body, parsed from JSON or from multipart/form-data.
pub enum Input<T> {
    /// A JSON body.
    Json(T),
    /// A multipart form.
    Form(Form),
}

/// Reads a JSON or multipart body of at most `limit` bytes.
pub async fn read_input<T: serde::de::DeserializeOwned>(
    req: Request,
    limit: usize,
) -> Result<Input<T>, ApiError> {
    let multipart = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().starts_with("multipart/form-data"));
    if multipart {
        let mut mp = Multipart::from_request(req, &())
            .await
            .map_err(|e| ApiError::bad_request("bad_multipart", e.body_text()))?;
        let mut form = Form::new();
        let mut total = 0usize;
        loop {
            let field = match mp.next_field().await {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => return Err(multipart_error(e, limit)),
            };
            let name = field.name().unwrap_or("").to_owned();
            let bytes = field.bytes().await.map_err(|e| multipart_error(e, limit))?;
            total += bytes.len();
            if total > limit {
                return Err(ApiError::too_large(limit));
            }
            form.entry(name).or_default().push(bytes.to_vec());
        }
        return Ok(Input::Form(form));
    }
    let bytes = axum::body::to_bytes(req.into_body(), limit).await.map_err(|e| {
        // The length limit is 413; a broken or aborted upload is 400.
        let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(&e);
        let mut over = false;
        while let Some(c) = cause {
            over |= c.is::<http_body_util::LengthLimitError>();
            cause = c.source();
        }
        if over {
            ApiError::too_large(limit)
        } else {
            ApiError::bad_request("bad_body", format!("cannot read the body: {e}"))
        }
    })?;
    serde_json::from_slice(&bytes)
        .map(Input::Json)
        .map_err(|e| ApiError::bad_request("bad_json", e.to_string()))
}

fn multipart_error(e: axum::extract::multipart::MultipartError, limit: usize) -> ApiError {
    if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::too_large(limit)
    } else {
        ApiError::bad_request("bad_multipart", e.body_text())
    }
}

/// The one value of form field `name`.
pub fn one(form: &mut Form, name: &str) -> Result<Vec<u8>, ApiError> {
    match form.remove(name) {
        Some(mut v) if v.len() == 1 => Ok(v.remove(0)),
        Some(_) => Err(ApiError::bad_request(
            "bad_form",
            format!("field {name} given more than once"),
        )),
        None => Err(ApiError::bad_request(
            "bad_form",
            format!("field {name} is missing"),
        )),
    }
}

/// The optional text of form field `name`.
pub fn text(form: &mut Form, name: &str) -> Result<Option<String>, ApiError> {
    match form.remove(name) {
        None => Ok(None),
        Some(mut v) if v.len() == 1 => String::from_utf8(v.remove(0))
            .map(Some)
            .map_err(|_| ApiError::bad_request("bad_form", format!("field {name} is not UTF-8"))),
        Some(_) => Err(ApiError::bad_request(
            "bad_form",
            format!("field {name} given more than once"),
        )),
    }
}

/// An image from form bytes (refusing an empty one).
pub fn form_image(name: &str, bytes: Vec<u8>) -> Result<Arc<[u8]>, ApiError> {
    if bytes.is_empty() {
        return Err(ApiError::bad_request("empty_image", format!("{name}: empty")));
    }
    Ok(bytes.into())
}

/// Refuses unknown form fields (as JSON refuses unknown keys).
pub fn no_more(form: &Form) -> Result<(), ApiError> {
    match form.keys().next() {
        Some(k) => Err(ApiError::bad_request("bad_form", format!("unknown field {k}"))),
        None => Ok(()),
    }
}
