//! Extractors: what a handler takes from a request, each refusing with the
//! API's own error shape.
//!
//! - [`JsonOrForm<T>`]: the body as JSON (images base64) or as
//!   multipart/form-data (the same field names, images as files), within
//!   the body limit;
//! - [`WorkRequest<T>`]: that body and the call it makes: its deadline
//!   (`X-Request-Timeout-Ms`, bounded by the settings) and the server's
//!   admission rule (refuse when full);
//! - [`QueryOf<T>`] and [`PathOf<T>`]: a query string and a path, 400 when
//!   malformed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRequest, FromRequestParts, Multipart, Path, Query, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::error::ApiError;
use super::{App, TIMEOUT_HEADER};
use crate::service::{Call, ImageSource};

/// A multipart form: each field's values in order (files as bytes, text as
/// UTF-8 bytes).
pub type Form = HashMap<String, Vec<Vec<u8>>>;

/// A request body type that can also be read from a multipart form.
pub trait FromForm: Sized {
    /// Builds the request from the form's fields (refusing unknown ones).
    fn from_form(form: Form) -> Result<Self, ApiError>;
}

/// Request body bytes held at once, across requests: taken before a body
/// is read (from its `Content-Length`, or chunk by chunk as it arrives),
/// given back when its request is answered.
#[derive(Debug, Clone)]
pub(super) struct BodyBudget(Arc<tokio::sync::Semaphore>);

/// A request's share of the [`BodyBudget`].
#[derive(Debug, Default)]
pub struct BodyHold(Option<tokio::sync::OwnedSemaphorePermit>);

/// Each body byte is counted twice: the body, then the images it holds.
const BYTES_PER_BODY_BYTE: usize = 2;

impl BodyBudget {
    pub(super) fn new(bytes: usize) -> Self {
        Self(Arc::new(tokio::sync::Semaphore::new(
            bytes.clamp(1, tokio::sync::Semaphore::MAX_PERMITS),
        )))
    }

    /// Bytes held now.
    pub(super) fn held(&self, total: usize) -> usize {
        total.saturating_sub(self.0.available_permits())
    }

    /// Adds `bytes` of body to `hold`, or refuses (429) when the budget is
    /// spent.
    fn take(&self, hold: &mut BodyHold, bytes: usize) -> Result<(), ApiError> {
        let n = u32::try_from(bytes.saturating_mul(BYTES_PER_BODY_BYTE)).unwrap_or(u32::MAX);
        match self.0.clone().try_acquire_many_owned(n) {
            Ok(p) => {
                match &mut hold.0 {
                    Some(held) => held.merge(p),
                    None => hold.0 = Some(p),
                }
                Ok(())
            }
            Err(_) => Err(ApiError {
                retry_after: Some(Duration::from_secs(1)),
                ..ApiError::new(
                    axum::http::StatusCode::TOO_MANY_REQUESTS,
                    "overloaded",
                    "too many request bodies are being received; nothing was read, try again later",
                )
            }),
        }
    }
}

/// The body as JSON or as a multipart form, with its share of the bytes
/// in flight (held until the request is answered).
#[derive(Debug)]
pub struct JsonOrForm<T>(pub T, pub BodyHold);

thread_local! {
    /// Most items of a counted array ([`Images`]) while a body is parsed.
    static MAX_ITEMS: std::cell::Cell<usize> = const { std::cell::Cell::new(usize::MAX) };
    /// Whether a counted array in the body being parsed was over the limit.
    static OVER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The request's `Content-Length`, if it gives one.
fn content_length(headers: &HeaderMap) -> Option<usize> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

impl<T: DeserializeOwned + FromForm + Send> FromRequest<App> for JsonOrForm<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, app: &App) -> Result<Self, ApiError> {
        let (limit, h) = (app.config().max_body, &app.config().hygiene);
        let declared = content_length(req.headers());
        if let Some(n) = declared.filter(|n| *n > limit) {
            return Err(refused(req, n, limit, ApiError::too_large(limit)).await);
        }
        let budget = app.body_budget();
        let mut hold = BodyHold::default();
        let multipart = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.to_ascii_lowercase().starts_with("multipart/form-data"));
        // A body of a declared size is counted before a byte of it is read;
        // a form without one is counted at the limit.
        let taken = match (declared, multipart) {
            (Some(n), _) => budget.take(&mut hold, n),
            (None, true) => budget.take(&mut hold, limit),
            (None, false) => Ok(()),
        };
        if let Err(e) = taken {
            return Err(refused(req, declared.unwrap_or(limit), limit, e).await);
        }
        let late = || {
            ApiError::new(
                axum::http::StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                format!(
                    "the body did not arrive within {} s",
                    h.body_timeout.as_secs_f64()
                ),
            )
        };
        if multipart {
            let form = tokio::time::timeout(h.body_timeout, read_form(req, limit))
                .await
                .map_err(|_| late())??;
            return T::from_form(form).map(|t| JsonOrForm(t, hold));
        }
        let read = read_body(req, limit, declared, |n| match declared {
            Some(_) => Ok(()),
            None => budget.take(&mut hold, n),
        });
        let bytes = tokio::time::timeout(h.body_timeout, read)
            .await
            .map_err(|_| late())??;
        let max = app.config().max_images;
        MAX_ITEMS.set(max);
        OVER.set(false);
        let parsed = serde_json::from_slice(&bytes);
        MAX_ITEMS.set(usize::MAX);
        drop(bytes);
        // A malformed body is malformed first; a well-formed one with too
        // many images is too large.
        match parsed {
            Err(e) => Err(ApiError::bad_request("bad_json", e.to_string())),
            Ok(_) if OVER.replace(false) => Err(ApiError::new(
                axum::http::StatusCode::PAYLOAD_TOO_LARGE,
                "too_many_images",
                format!("more than {max} images in one request"),
            )),
            Ok(t) => Ok(JsonOrForm(t, hold)),
        }
    }
}

/// A request refused before its body was read: a body of up to twice the
/// limit is read and thrown away first (within a few seconds, never kept),
/// so that the client, still sending, gets the answer instead of a broken
/// connection; a larger one is not read (the connection closes).
async fn refused(req: Request, declared: usize, limit: usize, e: ApiError) -> ApiError {
    use http_body_util::BodyExt;
    // A client that sent `Expect: 100-continue` waits for the answer before
    // it sends the body: it is never asked for it (the connection closes
    // after the answer, as it may still be sending).
    if declared > limit.saturating_mul(2) || expects_continue(&req) {
        return e;
    }
    let mut body = req.into_body();
    let drain = async {
        let mut seen = 0usize;
        while let Some(Ok(frame)) = body.frame().await {
            if let Ok(d) = frame.into_data() {
                seen += d.len();
                if seen > declared {
                    break;
                }
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), drain).await;
    e
}

/// Whether the client waits for `100 Continue` before sending its body
/// (HTTP/1.1 on: an HTTP/1.0 client sends it at once).
fn expects_continue(req: &Request) -> bool {
    req.version() >= axum::http::Version::HTTP_11
        && req
            .headers()
            .get(header::EXPECT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("100-continue"))
}

/// Reads a body of at most `limit` bytes, telling `more` of each chunk as
/// it arrives.
async fn read_body(
    req: Request,
    limit: usize,
    declared: Option<usize>,
    mut more: impl FnMut(usize) -> Result<(), ApiError>,
) -> Result<Vec<u8>, ApiError> {
    use http_body_util::BodyExt;
    let mut body = req.into_body();
    let mut buf = Vec::with_capacity(declared.unwrap_or(0).min(limit));
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| ApiError::bad_request("bad_body", format!("cannot read the body: {e}")))?;
        let Ok(data) = frame.into_data() else { continue };
        if buf.len() + data.len() > limit {
            return Err(ApiError::too_large(limit));
        }
        more(data.len())?;
        buf.extend_from_slice(&data);
    }
    Ok(buf)
}

/// A JSON array of images counted while it is parsed: the items past the
/// request's limit are checked to be strings but not kept, and the body is
/// refused (413) once it has parsed.
#[derive(Debug, Default)]
pub struct Images(pub Vec<Image>);

impl<'de> Deserialize<'de> for Images {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Counted;
        impl<'de> serde::de::Visitor<'de> for Counted {
            type Value = Images;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an array of base64 images")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Images, A::Error> {
                let max = MAX_ITEMS.get();
                let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
                while v.len() < max {
                    match seq.next_element::<Image>()? {
                        Some(x) => v.push(x),
                        None => return Ok(Images(v)),
                    }
                }
                while seq.next_element::<Skipped>()?.is_some() {
                    OVER.set(true);
                }
                Ok(Images(v))
            }
        }
        d.deserialize_seq(Counted)
    }
}

/// A string read and not kept.
struct Skipped;

impl<'de> Deserialize<'de> for Skipped {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct AnyStr;
        impl serde::de::Visitor<'_> for AnyStr {
            type Value = Skipped;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a base64 image")
            }
            fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<Skipped, E> {
                Ok(Skipped)
            }
        }
        d.deserialize_str(AnyStr)
    }
}

async fn read_form(req: Request, limit: usize) -> Result<Form, ApiError> {
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
    Ok(form)
}

fn multipart_error(e: axum::extract::multipart::MultipartError, limit: usize) -> ApiError {
    if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::too_large(limit)
    } else {
        ApiError::bad_request("bad_multipart", e.body_text())
    }
}

/// An image in a request: base64 text (JSON; a `data:` URL prefix is
/// allowed) or a file's bytes (a form).
#[derive(Debug, Clone, Deserialize)]
#[serde(from = "String")]
pub enum Image {
    /// Base64, not yet decoded.
    Base64(String),
    /// Bytes.
    Bytes(Arc<[u8]>),
}

impl From<String> for Image {
    fn from(s: String) -> Self {
        Image::Base64(s)
    }
}

impl Image {
    /// The image's bytes to hand to the service (`field` names it in
    /// errors: `bad_base64`, `empty_image`).
    pub fn source(self, field: &str) -> Result<ImageSource, ApiError> {
        let bytes: Arc<[u8]> = match self {
            Image::Bytes(b) => b,
            Image::Base64(s) => crate::service::wire::decode_base64(field, &s)?,
        };
        if bytes.is_empty() {
            return Err(ApiError::bad_request("empty_image", format!("{field}: empty")));
        }
        Ok(ImageSource::Bytes(bytes))
    }

    /// Each of `images` to hand to the service, named `field[i]`.
    pub fn sources(images: Images, field: &str) -> Result<Vec<ImageSource>, ApiError> {
        images
            .0
            .into_iter()
            .enumerate()
            .map(|(i, im)| im.source(&format!("{field}[{i}]")))
            .collect()
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

/// The one image of form field `name`.
pub fn one_image(form: &mut Form, name: &str) -> Result<Image, ApiError> {
    Ok(Image::Bytes(one(form, name)?.into()))
}

/// Every image of form field `name` (none if absent).
pub fn images(form: &mut Form, name: &str) -> Images {
    Images(
        form.remove(name)
            .unwrap_or_default()
            .into_iter()
            .map(|b| Image::Bytes(b.into()))
            .collect(),
    )
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

/// Refuses unknown form fields (as JSON refuses unknown keys).
pub fn no_more(form: &Form) -> Result<(), ApiError> {
    match form.keys().next() {
        Some(k) => Err(ApiError::bad_request("bad_form", format!("unknown field {k}"))),
        None => Ok(()),
    }
}

/// The request's timeout: its header, bounded, else the default.
pub fn timeout(headers: &HeaderMap, default: Duration, max: Duration) -> Result<Duration, ApiError> {
    let Some(v) = headers.get(TIMEOUT_HEADER) else {
        return Ok(default);
    };
    let ms: u64 = v
        .to_str()
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| {
            ApiError::bad_request(
                "bad_timeout",
                format!("{TIMEOUT_HEADER} must be a whole number of ms"),
            )
        })?;
    if ms == 0 {
        return Err(ApiError::bad_request(
            "bad_timeout",
            format!("{TIMEOUT_HEADER} must be above 0"),
        ));
    }
    Ok(Duration::from_millis(ms).min(max))
}

/// A request for work: its body ([`JsonOrForm`]) and the call it makes,
/// due within its timeout (its `X-Request-Timeout-Ms`, at most the
/// settings' longest, else the default; the clock starts when the request
/// arrives) and refused at once when the service is full. The body is read
/// before a bad timeout is refused, so the client is never cut off while
/// it sends.
#[derive(Debug)]
pub struct WorkRequest<T> {
    /// The call.
    pub call: Call,
    /// The body.
    pub body: T,
    /// The body's share of the bytes in flight, until the answer.
    pub held: BodyHold,
}

impl<T: DeserializeOwned + FromForm + Send> FromRequest<App> for WorkRequest<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, app: &App) -> Result<Self, ApiError> {
        let c = app.config();
        let arrived = std::time::Instant::now();
        let t = timeout(req.headers(), c.default_timeout, c.max_timeout);
        // Refused before the body is parsed when not even one face would be
        // admitted now: under heavy overload most requests are refused, and
        // a refusal should cost the server next to nothing. Not a body too
        // large to be read (413 says more), nor a retried enroll (its
        // Idempotency-Key may answer it without work).
        let declared = content_length(req.headers());
        let peek = declared.is_none_or(|n| n <= c.max_body) && !req.headers().contains_key("idempotency-key");
        if let (true, Ok(t), Some(svc)) = (peek, &t, app.service()) {
            let call = Call::refuse_when_full().until(arrived + *t);
            if let Err(e) = svc.would_admit(&call) {
                let declared = declared.unwrap_or(c.max_body);
                return Err(refused(req, declared, c.max_body, e.into()).await);
            }
        }
        let JsonOrForm(body, held) = JsonOrForm::<T>::from_request(req, app).await?;
        Ok(WorkRequest {
            call: Call::refuse_when_full().until(arrived + t?),
            body,
            held,
        })
    }
}

/// A query string, 400 `bad_query` when malformed.
#[derive(Debug)]
pub struct QueryOf<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for QueryOf<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(q)| QueryOf(q))
            .map_err(|e| ApiError::bad_request("bad_query", e.body_text()))
    }
}

/// A path parameter, 400 `bad_path` when malformed.
#[derive(Debug)]
pub struct PathOf<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for PathOf<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(p)| PathOf(p))
            .map_err(|e| ApiError::bad_request("bad_path", e.body_text()))
    }
}
