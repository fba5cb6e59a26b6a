//! The HTTP API on axum: facepool as a face-verification service.
//!
//! [`App`] holds the service and the settings; [`App::router`] is an axum
//! `Router` a program can serve as it is (the `serve` binary does) or mount
//! in its own axum app. Routes (JSON bodies with base64 images, or the same
//! fields as multipart/form-data):
//!
//! - `POST /v1/verify`, `POST /v1/verify/batch`, `POST /v1/identify`,
//!   `POST /v1/embed`;
//! - the gallery: `PUT /v1/people/{id}` (`?replace=true`), `GET
//!   /v1/people` (paged), `GET /v1/people/{id}`, `DELETE /v1/people/{id}`,
//!   saved to the index file after each change;
//! - `GET /livez`, `GET /readyz` (ready once the models and the index are
//!   loaded), `GET /v1/info`, `GET /metrics` (Prometheus),
//!   `GET /debug/pprof/profile` and `/debug/pprof/flamegraph`, `GET
//!   /openapi.json`.
//!
//! Rules:
//! - Admission goes through the pool and the batcher: a request's images
//!   are admitted all or none ([`FaceService::admit`]); a full service
//!   answers 429 with `Retry-After` at once, having done no work.
//! - Handlers await the pool's and the batcher's handles; no tokio worker
//!   blocks and nothing is handed to tokio's blocking pool per request.
//!   The gallery file is written by one writer thread.
//! - A request's timeout (`X-Request-Timeout-Ms`, bounded by the settings)
//!   becomes the deadline of its pool jobs and batch items; past it the
//!   answer is 504, and the work not yet started is dropped. A client that
//!   disconnects drops its work the same way (its handler's future is
//!   dropped with the work's handles).
//! - Every error is mapped in one place ([`ApiError`]).

mod api;
mod error;
mod gallery;
mod metrics;
mod openapi;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, MatchedPath, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use subtle::ConstantTimeEq;

pub use self::api::*;
pub use self::error::{ApiError, ErrorBody, ErrorDetail};
pub use self::gallery::Gallery;
use self::metrics::HttpMetrics;
use crate::service::{FaceResult, FaceService, ImageSource, Timings};

/// The server's settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Bearer tokens accepted on `/v1/*` and `/debug/*` (any of them).
    /// Empty: those routes are open (the `serve` binary refuses to start so
    /// unless told `--no-auth`).
    pub tokens: Vec<String>,
    /// A token `/metrics` requires; `None`: open, like the probes.
    pub metrics_token: Option<String>,
    /// Largest request body, bytes (413 beyond).
    pub max_body: usize,
    /// Most images in one request (verify/batch targets, enroll images).
    pub max_images: usize,
    /// A request's timeout when it asks for none.
    pub default_timeout: Duration,
    /// The longest timeout a request may ask for.
    pub max_timeout: Duration,
    /// What `Retry-After` says on a 429.
    pub retry_after: Duration,
    /// The gallery's index file: loaded at start, saved after each change.
    pub gallery: Option<PathBuf>,
}

impl Default for ServerConfig {
    /// No tokens, 8 MiB bodies, 64 images a request, 30 s timeouts (at most
    /// 120 s), `Retry-After: 1`, no gallery file.
    fn default() -> Self {
        Self {
            tokens: Vec::new(),
            metrics_token: None,
            max_body: 8 << 20,
            max_images: 64,
            default_timeout: Duration::from_secs(30),
            max_timeout: Duration::from_secs(120),
            retry_after: Duration::from_secs(1),
            gallery: None,
        }
    }
}

/// The HTTP application: settings, the service (once loaded), the
/// gallery's writer and the metrics. Cheap to clone.
#[derive(Clone)]
pub struct App {
    inner: Arc<Inner>,
}

struct Inner {
    config: ServerConfig,
    service: Arc<OnceLock<FaceService>>,
    gallery: OnceLock<Gallery>,
    stopping: AtomicBool,
    metrics: HttpMetrics,
    /// One CPU profile at a time (the profiler is process-wide).
    profiling: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("config", &self.inner.config)
            .field("ready", &self.is_ready())
            .finish_non_exhaustive()
    }
}

/// The header a client sets its request timeout in, milliseconds.
pub const TIMEOUT_HEADER: &str = "x-request-timeout-ms";

impl App {
    /// An app that is not ready yet: `/livez` answers, `/readyz` and the API
    /// say 503 until [`ready`](Self::ready) hands it the service.
    pub fn new(config: ServerConfig) -> Self {
        let service = Arc::new(OnceLock::new());
        Self {
            inner: Arc::new(Inner {
                metrics: HttpMetrics::new(service.clone()),
                config,
                service,
                gallery: OnceLock::new(),
                stopping: AtomicBool::new(false),
                profiling: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// Makes the app ready with `service` (its index is the gallery) and,
    /// if the settings name a gallery file, its writer. An error if it was
    /// ready already, with the service handed back.
    pub fn ready(&self, service: FaceService) -> Result<(), Box<FaceService>> {
        if let Some(path) = &self.inner.config.gallery {
            let _ = self
                .inner
                .gallery
                .set(Gallery::start(service.index().clone(), path.clone()));
        }
        self.inner.service.set(service).map_err(Box::new)
    }

    /// Whether the models and the index are loaded.
    pub fn is_ready(&self) -> bool {
        self.inner.service.get().is_some()
    }

    /// The service, once ready.
    pub fn service(&self) -> Option<&FaceService> {
        self.inner.service.get()
    }

    /// The settings.
    pub fn config(&self) -> &ServerConfig {
        &self.inner.config
    }

    /// Marks the app as stopping: `/readyz` says 503 so load balancers take
    /// it out, new API requests are refused with 503, admitted ones finish.
    pub fn stop_accepting(&self) {
        self.inner.stopping.store(true, Ordering::SeqCst);
    }

    /// Saves the gallery now (at shutdown), if there is a gallery file.
    pub fn save_gallery(&self) -> Result<(), String> {
        match self.inner.gallery.get() {
            Some(g) => g.save_now(),
            None => Ok(()),
        }
    }

    /// The router: every route, the auth and metrics middleware, the body
    /// limit.
    pub fn router(&self) -> Router {
        let api = Router::new()
            .route("/v1/verify", post(verify))
            .route("/v1/verify/batch", post(verify_batch))
            .route("/v1/identify", post(identify))
            .route("/v1/embed", post(embed))
            .route("/v1/people", get(list_people))
            .route(
                "/v1/people/{id}",
                put(enroll).get(get_person).delete(remove_person),
            )
            .route("/v1/info", get(info))
            .route("/debug/pprof/profile", get(pprof_profile))
            .route("/debug/pprof/flamegraph", get(pprof_flamegraph))
            .route_layer(middleware::from_fn_with_state(self.clone(), require_token));
        let metrics =
            Router::new()
                .route("/metrics", get(metrics_text))
                .route_layer(middleware::from_fn_with_state(
                    self.clone(),
                    require_metrics_token,
                ));
        Router::new()
            .route("/livez", get(livez))
            .route("/readyz", get(readyz))
            .route("/openapi.json", get(openapi_json))
            .merge(api)
            .merge(metrics)
            .fallback(not_found)
            .method_not_allowed_fallback(method_not_allowed)
            .layer(middleware::from_fn_with_state(self.clone(), count_requests))
            .layer(DefaultBodyLimit::max(self.inner.config.max_body))
            .with_state(self.clone())
    }

    /// The service, or why the API cannot answer now.
    fn ready_service(&self) -> Result<&FaceService, ApiError> {
        if self.inner.stopping.load(Ordering::SeqCst) {
            return Err(ApiError::unavailable(
                "shutting_down",
                "the server is shutting down",
            ));
        }
        self.inner
            .service
            .get()
            .ok_or_else(|| ApiError::unavailable("not_ready", "the models are still loading"))
    }

    /// The request's timeout: its header, bounded, else the default.
    fn timeout(&self, headers: &HeaderMap) -> Result<Duration, ApiError> {
        let c = &self.inner.config;
        let Some(v) = headers.get(TIMEOUT_HEADER) else {
            return Ok(c.default_timeout);
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
        Ok(Duration::from_millis(ms).min(c.max_timeout))
    }

    /// Refuses more images than a request may carry.
    fn check_images(&self, n: usize) -> Result<(), ApiError> {
        let max = self.inner.config.max_images;
        if n > max {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_many_images",
                format!("{n} images in one request, more than {max}"),
            ));
        }
        if n == 0 {
            return Err(ApiError::bad_request("no_images", "no images given"));
        }
        Ok(())
    }

    /// Admits `images`, embeds them within the request's timeout, and hands
    /// back one result per image; an `Err` for the request as a whole
    /// (refused, or past its deadline).
    async fn embed(
        &self,
        svc: &FaceService,
        headers: &HeaderMap,
        images: Vec<Arc<[u8]>>,
    ) -> Result<Vec<Result<(FaceResult, Timings), ApiError>>, ApiError> {
        let timeout = self.timeout(headers)?;
        let retry = self.inner.config.retry_after;
        let _admitted = svc
            .admit(images.len())
            .map_err(|e| ApiError::from_service(&e, retry))?;
        let deadline = Instant::now() + timeout;
        let sources = images.into_iter().map(ImageSource::Bytes).collect();
        let work = svc.embed_all_async(sources, Some(deadline));
        let results = tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| ApiError::deadline(timeout))?;
        Ok(results
            .into_iter()
            .map(|r| r.map_err(|e| ApiError::from_service(&e, retry)))
            .collect())
    }

    async fn save(&self) -> Result<(), ApiError> {
        match self.inner.gallery.get() {
            Some(g) => g
                .save()
                .await
                .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "gallery_save", e)),
            None => Ok(()),
        }
    }
}

/// Constant-time comparison of a presented token with the accepted ones:
/// SHA-256 digests are compared, so neither a token's content nor its
/// length shows in the time taken.
fn token_ok(presented: &[u8], accepted: &[String]) -> bool {
    use sha2::{Digest, Sha256};
    let p = Sha256::digest(presented);
    let mut ok = subtle::Choice::from(0);
    for t in accepted {
        ok |= p.as_slice().ct_eq(Sha256::digest(t.as_bytes()).as_slice());
    }
    ok.into()
}

/// The bearer token of a request: `None` without one.
fn bearer(headers: &HeaderMap) -> Option<&[u8]> {
    let v = headers.get(header::AUTHORIZATION)?.as_bytes();
    let scheme = v.get(..7)?;
    scheme
        .eq_ignore_ascii_case(b"bearer ")
        .then(|| v[7..].trim_ascii())
}

fn check(headers: &HeaderMap, accepted: &[String]) -> Result<(), ApiError> {
    match bearer(headers) {
        None => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "an Authorization: Bearer token is required",
        )),
        Some(t) if token_ok(t, accepted) => Ok(()),
        Some(_) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the token is not accepted",
        )),
    }
}

async fn require_token(State(app): State<App>, req: Request, next: Next) -> Response {
    let tokens = &app.inner.config.tokens;
    if !tokens.is_empty() {
        if let Err(e) = check(req.headers(), tokens) {
            let mut r = e.into_response();
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return r;
        }
    }
    next.run(req).await
}

async fn require_metrics_token(State(app): State<App>, req: Request, next: Next) -> Response {
    if let Some(t) = &app.inner.config.metrics_token {
        if let Err(e) = check(req.headers(), std::slice::from_ref(t)) {
            return e.into_response();
        }
    }
    next.run(req).await
}

async fn count_requests(State(app): State<App>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    // A fixed set: hyper accepts any method name, and labels must not grow
    // with what clients send.
    let method = match req.method().as_str() {
        m @ ("GET" | "POST" | "PUT" | "DELETE" | "HEAD" | "OPTIONS" | "PATCH") => m,
        _ => "other",
    }
    .to_owned();
    let t0 = Instant::now();
    let r = next.run(req).await;
    app.inner
        .metrics
        .request(&route, &method, r.status().as_u16(), t0.elapsed());
    r
}

async fn not_found() -> ApiError {
    ApiError::not_found("no_route", "no such route")
}

/// A known route with a method it does not take: the JSON error shape
/// like every other error (axum's own 405 has an empty body); axum adds
/// the `Allow` header.
async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "the route does not take this method",
    )
}

#[utoipa::path(get, path = "/livez", responses((status = 200, body = StatusBody)))]
async fn livez() -> Json<StatusBody> {
    Json(StatusBody {
        status: "ok".to_owned(),
    })
}

#[utoipa::path(get, path = "/readyz", responses(
    (status = 200, body = StatusBody), (status = 503, body = StatusBody)))]
async fn readyz(State(app): State<App>) -> (StatusCode, Json<StatusBody>) {
    let status = if app.inner.stopping.load(Ordering::SeqCst) {
        "stopping"
    } else if app.is_ready() {
        "ok"
    } else {
        "loading"
    };
    let code = if status == "ok" {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        Json(StatusBody {
            status: status.to_owned(),
        }),
    )
}

fn faces_of(r: &FaceResult) -> String {
    r.path.to_string()
}

#[utoipa::path(post, path = "/v1/verify", request_body = VerifyRequest,
    responses((status = 200, body = VerifyResponse), (status = 400, description = "Malformed request: bad JSON, base64, form or parameter", body = ErrorBody), (status = 401, description = "No bearer token", body = ErrorBody), (status = 403, description = "Wrong bearer token", body = ErrorBody), (status = 413, description = "Body, images or faces over the limits", body = ErrorBody), (status = 422, description = "Not an image, over the decode limits, or no face", body = ErrorBody), (status = 429, description = "At capacity: nothing was done (see Retry-After)", body = ErrorBody), (status = 500, description = "Model, index or gallery failure", body = ErrorBody), (status = 503, description = "Not ready yet, or shutting down (see Retry-After)", body = ErrorBody), (status = 504, description = "The request's deadline passed", body = ErrorBody)),
    security(("bearer" = [])))]
async fn verify(
    State(app): State<App>,
    headers: HeaderMap,
    req: Request,
) -> Result<Json<VerifyResponse>, ApiError> {
    let (a, b) = match read_input::<VerifyRequest>(req, app.inner.config.max_body).await? {
        Input::Json(r) => (
            decode_image("image1", &r.image1)?,
            decode_image("image2", &r.image2)?,
        ),
        Input::Form(mut f) => {
            let a = form_image("image1", one(&mut f, "image1")?)?;
            let b = form_image("image2", one(&mut f, "image2")?)?;
            no_more(&f)?;
            (a, b)
        }
    };
    let svc = app.ready_service()?;
    let mut rs = app.embed(svc, &headers, vec![a, b]).await?.into_iter();
    let (ra, ta) = rs.next().unwrap_or_else(missing).map_err(|e| e.for_image(1))?;
    let (rb, tb) = rs.next().unwrap_or_else(missing).map_err(|e| e.for_image(2))?;
    let v = svc.verdict(&ra, &rb, ta, tb, ta.total.max(tb.total));
    app.inner.metrics.stages(&v.timings);
    Ok(Json(VerifyResponse {
        similarity: v.similarity,
        same: v.same,
        threshold: v.threshold,
        faces: vec![faces_of(&ra), faces_of(&rb)],
        timings_ms: v.timings.into(),
    }))
}

/// A result missing from `embed`'s answer (it gives one per image).
fn missing<T>() -> Result<T, ApiError> {
    Err(ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "an image's result is missing",
    ))
}

#[utoipa::path(post, path = "/v1/verify/batch", request_body = VerifyBatchRequest,
    responses((status = 200, body = VerifyBatchResponse), (status = 400, description = "Malformed request: bad JSON, base64, form or parameter", body = ErrorBody), (status = 401, description = "No bearer token", body = ErrorBody), (status = 403, description = "Wrong bearer token", body = ErrorBody), (status = 413, description = "Body, images or faces over the limits", body = ErrorBody), (status = 422, description = "Not an image, over the decode limits, or no face", body = ErrorBody), (status = 429, description = "At capacity: nothing was done (see Retry-After)", body = ErrorBody), (status = 500, description = "Model, index or gallery failure", body = ErrorBody), (status = 503, description = "Not ready yet, or shutting down (see Retry-After)", body = ErrorBody), (status = 504, description = "The request's deadline passed", body = ErrorBody)),
    security(("bearer" = [])))]
async fn verify_batch(
    State(app): State<App>,
    headers: HeaderMap,
    req: Request,
) -> Result<Json<VerifyBatchResponse>, ApiError> {
    let (source, targets) = match read_input::<VerifyBatchRequest>(req, app.inner.config.max_body).await? {
        Input::Json(r) => {
            let targets = r
                .targets
                .iter()
                .enumerate()
                .map(|(i, t)| decode_image(&format!("targets[{i}]"), t))
                .collect::<Result<Vec<_>, _>>()?;
            (decode_image("source", &r.source)?, targets)
        }
        Input::Form(mut f) => {
            let source = form_image("source", one(&mut f, "source")?)?;
            let targets = f
                .remove("targets")
                .unwrap_or_default()
                .into_iter()
                .map(|b| form_image("targets", b))
                .collect::<Result<Vec<_>, _>>()?;
            no_more(&f)?;
            (source, targets)
        }
    };
    app.check_images(targets.len() + 1)?;
    let svc = app.ready_service()?;
    let n = targets.len();
    let mut images = Vec::with_capacity(n + 1);
    images.push(source);
    images.extend(targets);
    let mut rs = app.embed(svc, &headers, images).await?.into_iter();
    let (src, ts) = rs.next().unwrap_or_else(missing).map_err(|e| e.for_image(0))?;
    let mut timings = ts;
    let mut results = Vec::with_capacity(n);
    for (index, r) in rs.enumerate() {
        results.push(match r {
            Ok((t, tt)) => {
                let v = svc.verdict(&src, &t, ts, tt, ts.total.max(tt.total));
                timings.queue = timings.queue.max(v.timings.queue);
                timings.prepare = timings.prepare.max(v.timings.prepare);
                timings.batch_wait = timings.batch_wait.max(v.timings.batch_wait);
                timings.inference = timings.inference.max(v.timings.inference);
                timings.search += v.timings.search;
                timings.total = timings.total.max(v.timings.total);
                TargetResult {
                    index,
                    similarity: Some(v.similarity),
                    same: Some(v.same),
                    face: Some(faces_of(&t)),
                    error: None,
                }
            }
            Err(e) => TargetResult {
                index,
                similarity: None,
                same: None,
                face: None,
                error: Some(ErrorDetail {
                    code: e.code.to_owned(),
                    message: e.message,
                }),
            },
        });
    }
    app.inner.metrics.stages(&timings);
    Ok(Json(VerifyBatchResponse {
        results,
        threshold: svc.config().threshold,
        source_face: faces_of(&src),
        timings_ms: timings.into(),
    }))
}

#[utoipa::path(post, path = "/v1/identify", request_body = IdentifyRequest,
    responses((status = 200, body = IdentifyResponse), (status = 400, description = "Malformed request: bad JSON, base64, form or parameter", body = ErrorBody), (status = 401, description = "No bearer token", body = ErrorBody), (status = 403, description = "Wrong bearer token", body = ErrorBody), (status = 413, description = "Body, images or faces over the limits", body = ErrorBody), (status = 422, description = "Not an image, over the decode limits, or no face", body = ErrorBody), (status = 429, description = "At capacity: nothing was done (see Retry-After)", body = ErrorBody), (status = 500, description = "Model, index or gallery failure", body = ErrorBody), (status = 503, description = "Not ready yet, or shutting down (see Retry-After)", body = ErrorBody), (status = 504, description = "The request's deadline passed", body = ErrorBody)),
    security(("bearer" = [])))]
async fn identify(
    State(app): State<App>,
    headers: HeaderMap,
    req: Request,
) -> Result<Json<IdentifyResponse>, ApiError> {
    let (image, k) = match read_input::<IdentifyRequest>(req, app.inner.config.max_body).await? {
        Input::Json(r) => (decode_image("image", &r.image)?, r.k),
        Input::Form(mut f) => {
            let image = form_image("image", one(&mut f, "image")?)?;
            let k = match text(&mut f, "k")? {
                Some(k) => Some(
                    k.trim()
                        .parse()
                        .map_err(|_| ApiError::bad_request("bad_k", "k must be a whole number"))?,
                ),
                None => None,
            };
            no_more(&f)?;
            (image, k)
        }
    };
    let k = k.unwrap_or(5);
    if k == 0 || k > 1000 {
        return Err(ApiError::bad_request("bad_k", "k must be 1 to 1000"));
    }
    let svc = app.ready_service()?;
    let (face, t) = app
        .embed(svc, &headers, vec![image])
        .await?
        .into_iter()
        .next()
        .unwrap_or_else(missing)?;
    let retry = app.inner.config.retry_after;
    let id = svc
        .identify_face(&face, k, t)
        .map_err(|e| ApiError::from_service(&e, retry))?;
    app.inner.metrics.stages(&id.timings);
    Ok(Json(IdentifyResponse {
        best: id.best.as_ref().map(MatchBody::from),
        matches: id.matches.iter().map(MatchBody::from).collect(),
        threshold: id.threshold,
        face: id.path.to_string(),
        timings_ms: id.timings.into(),
    }))
}

#[utoipa::path(post, path = "/v1/embed", request_body = EmbedRequest,
    responses((status = 200, body = EmbedResponse), (status = 400, description = "Malformed request: bad JSON, base64, form or parameter", body = ErrorBody), (status = 401, description = "No bearer token", body = ErrorBody), (status = 403, description = "Wrong bearer token", body = ErrorBody), (status = 413, description = "Body, images or faces over the limits", body = ErrorBody), (status = 422, description = "Not an image, over the decode limits, or no face", body = ErrorBody), (status = 429, description = "At capacity: nothing was done (see Retry-After)", body = ErrorBody), (status = 500, description = "Model, index or gallery failure", body = ErrorBody), (status = 503, description = "Not ready yet, or shutting down (see Retry-After)", body = ErrorBody), (status = 504, description = "The request's deadline passed", body = ErrorBody)),
    security(("bearer" = [])))]
async fn embed(
    State(app): State<App>,
    headers: HeaderMap,
    req: Request,
) -> Result<Json<EmbedResponse>, ApiError> {
    let image = match read_input::<EmbedRequest>(req, app.inner.config.max_body).await? {
        Input::Json(r) => decode_image("image", &r.image)?,
        Input::Form(mut f) => {
            let image = form_image("image", one(&mut f, "image")?)?;
            no_more(&f)?;
            image
        }
    };
    let svc = app.ready_service()?;
    let (face, t) = app
        .embed(svc, &headers, vec![image])
        .await?
        .into_iter()
        .next()
        .unwrap_or_else(missing)?;
    app.inner.metrics.stages(&t);
    let embedding = face.embedding.0;
    Ok(Json(EmbedResponse {
        dimension: embedding.len(),
        embedding,
        face: face.path.to_string(),
        timings_ms: t.into(),
    }))
}

/// A query string, or a 400 saying what is wrong with it.
fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<Query<T>, ApiError> {
    q.map_err(|e| ApiError::bad_request("bad_query", e.body_text()))
}

/// A path parameter, or a 400 saying what is wrong with it.
fn path<T>(p: Result<Path<T>, PathRejection>) -> Result<Path<T>, ApiError> {
    p.map_err(|e| ApiError::bad_request("bad_path", e.body_text()))
}

/// A person's id from the path: 1 to 256 bytes of text.
fn person_id(id: &str) -> Result<&str, ApiError> {
    if id.is_empty() || id.len() > 256 || id.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "bad_id",
            "a person's id is 1 to 256 bytes of text without control characters",
        ));
    }
    Ok(id)
}

#[utoipa::path(put, path = "/v1/people/{id}", request_body = EnrollRequest,
    params(("id" = String, Path, description = "The person's id"), EnrollQuery),
    responses((status = 200, body = PersonBody), (status = 400, description = "Malformed request: bad JSON, base64, form or parameter", body = ErrorBody), (status = 401, description = "No bearer token", body = ErrorBody), (status = 403, description = "Wrong bearer token", body = ErrorBody), (status = 413, description = "Body, images or faces over the limits", body = ErrorBody), (status = 422, description = "Not an image, over the decode limits, or no face", body = ErrorBody), (status = 429, description = "At capacity: nothing was done (see Retry-After)", body = ErrorBody), (status = 500, description = "Model, index or gallery failure", body = ErrorBody), (status = 503, description = "Not ready yet, or shutting down (see Retry-After)", body = ErrorBody), (status = 504, description = "The request's deadline passed", body = ErrorBody)),
    security(("bearer" = [])))]
async fn enroll(
    State(app): State<App>,
    id: Result<Path<String>, PathRejection>,
    q: Result<Query<EnrollQuery>, QueryRejection>,
    headers: HeaderMap,
    req: Request,
) -> Result<Json<PersonBody>, ApiError> {
    let (Path(id), Query(q)) = (path(id)?, query(q)?);
    let id = person_id(&id)?.to_owned();
    let (images, meta) = match read_input::<EnrollRequest>(req, app.inner.config.max_body).await? {
        Input::Json(r) => {
            let images = r
                .images
                .iter()
                .enumerate()
                .map(|(i, s)| decode_image(&format!("images[{i}]"), s))
                .collect::<Result<Vec<_>, _>>()?;
            (images, r.meta)
        }
        Input::Form(mut f) => {
            let images = f
                .remove("images")
                .unwrap_or_default()
                .into_iter()
                .map(|b| form_image("images", b))
                .collect::<Result<Vec<_>, _>>()?;
            let meta = text(&mut f, "meta")?;
            no_more(&f)?;
            (images, meta)
        }
    };
    app.check_images(images.len())?;
    let svc = app.ready_service()?;
    let mut vectors = Vec::with_capacity(images.len());
    for (i, r) in app.embed(svc, &headers, images).await?.into_iter().enumerate() {
        let (face, t) = r.map_err(|e| e.for_image(i))?;
        app.inner.metrics.stages(&t);
        vectors.push(face.embedding.0);
    }
    let views: Vec<&[f32]> = vectors.iter().map(Vec::as_slice).collect();
    let index = svc.index();
    let retry = app.inner.config.retry_after;
    let added = if q.replace {
        index.upsert(&id, &views, meta.as_deref())
    } else {
        index.add(&id, &views, meta.as_deref())
    };
    added.map_err(|e| ApiError::from_service(&e.into(), retry))?;
    app.save().await?;
    Ok(Json(PersonBody {
        faces: index.count(&id),
        meta: index.meta(&id).map(|m| m.to_string()),
        id,
    }))
}

#[utoipa::path(get, path = "/v1/people", params(PageQuery),
    responses((status = 200, body = PeoplePage), (status = 400, description = "Malformed request: bad JSON, base64, form or parameter", body = ErrorBody), (status = 401, description = "No bearer token", body = ErrorBody), (status = 403, description = "Wrong bearer token", body = ErrorBody), (status = 503, description = "Not ready yet, or shutting down (see Retry-After)", body = ErrorBody)),
    security(("bearer" = [])))]
async fn list_people(
    State(app): State<App>,
    q: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Json<PeoplePage>, ApiError> {
    let Query(q) = query(q)?;
    let svc = app.ready_service()?;
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > 1000 {
        return Err(ApiError::bad_request("bad_limit", "limit must be 1 to 1000"));
    }
    let index = svc.index();
    let mut people = index.people();
    people.sort_by(|a, b| a.id.cmp(&b.id));
    let total = people.len();
    let page = people
        .into_iter()
        .skip(q.offset)
        .take(limit)
        .map(|p| PersonBody {
            meta: index.meta(&p.id).map(|m| m.to_string()),
            id: p.id.to_string(),
            faces: p.vectors,
        })
        .collect();
    Ok(Json(PeoplePage {
        total,
        offset: q.offset,
        people: page,
    }))
}

#[utoipa::path(get, path = "/v1/people/{id}", params(("id" = String, Path, description = "The person's id")),
    responses((status = 200, body = PersonBody), (status = 400, description = "Malformed request: bad JSON, base64, form or parameter", body = ErrorBody), (status = 401, description = "No bearer token", body = ErrorBody), (status = 403, description = "Wrong bearer token", body = ErrorBody), (status = 404, description = "Unknown person", body = ErrorBody), (status = 503, description = "Not ready yet, or shutting down (see Retry-After)", body = ErrorBody)),
    security(("bearer" = [])))]
async fn get_person(
    State(app): State<App>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<PersonBody>, ApiError> {
    let Path(id) = path(id)?;
    let svc = app.ready_service()?;
    let id = person_id(&id)?;
    let index = svc.index();
    let faces = index.count(id);
    if faces == 0 {
        return Err(ApiError::not_found("unknown_person", format!("no person {id:?}")));
    }
    Ok(Json(PersonBody {
        id: id.to_owned(),
        faces,
        meta: index.meta(id).map(|m| m.to_string()),
    }))
}

#[utoipa::path(delete, path = "/v1/people/{id}", params(("id" = String, Path, description = "The person's id")),
    responses((status = 200, body = RemovedBody), (status = 400, description = "Malformed request: bad JSON, base64, form or parameter", body = ErrorBody), (status = 401, description = "No bearer token", body = ErrorBody), (status = 403, description = "Wrong bearer token", body = ErrorBody), (status = 404, description = "Unknown person", body = ErrorBody), (status = 500, description = "Model, index or gallery failure", body = ErrorBody), (status = 503, description = "Not ready yet, or shutting down (see Retry-After)", body = ErrorBody)),
    security(("bearer" = [])))]
async fn remove_person(
    State(app): State<App>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<RemovedBody>, ApiError> {
    let Path(id) = path(id)?;
    let svc = app.ready_service()?;
    let id = person_id(&id)?;
    let removed = svc.remove(id);
    if removed == 0 {
        return Err(ApiError::not_found("unknown_person", format!("no person {id:?}")));
    }
    app.save().await?;
    Ok(Json(RemovedBody {
        id: id.to_owned(),
        removed_faces: removed,
    }))
}

#[utoipa::path(get, path = "/v1/info", responses((status = 200, body = InfoBody), (status = 401, description = "No bearer token", body = ErrorBody), (status = 403, description = "Wrong bearer token", body = ErrorBody), (status = 503, description = "Not ready yet, or shutting down (see Retry-After)", body = ErrorBody)), security(("bearer" = [])))]
async fn info(State(app): State<App>) -> Result<Json<InfoBody>, ApiError> {
    let svc = app.ready_service()?;
    let c = svc.config();
    let s = &app.inner.config;
    Ok(Json(InfoBody {
        model: c.model.display().to_string(),
        backend: svc.backend().used.to_string(),
        dimension: svc.dim(),
        threshold: c.threshold,
        people: svc.index().len(),
        limits: LimitsBody {
            max_body_bytes: s.max_body,
            max_images: s.max_images,
            queue_faces: c.queue,
            default_timeout_ms: u64::try_from(s.default_timeout.as_millis()).unwrap_or(u64::MAX),
            max_timeout_ms: u64::try_from(s.max_timeout.as_millis()).unwrap_or(u64::MAX),
            max_image_bytes: c.limits.max_file_bytes,
            max_image_pixels: c.limits.max_pixels,
        },
        version: env!("CARGO_PKG_VERSION").to_owned(),
    }))
}

#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus (OpenMetrics) text", content_type = "application/openmetrics-text"), (status = 401, description = "No bearer token", body = ErrorBody), (status = 403, description = "Wrong bearer token", body = ErrorBody), (status = 500, description = "Model, index or gallery failure", body = ErrorBody)))]
async fn metrics_text(State(app): State<App>) -> Response {
    match app.inner.metrics.encode() {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(_) => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "metrics",
            "cannot encode the metrics",
        )
        .into_response(),
    }
}

async fn profile(
    app: &App,
    q: ProfileQuery,
    out: crate::metrics::profiling::Output,
) -> Result<Vec<u8>, ApiError> {
    let secs = q.seconds.unwrap_or(10);
    if secs == 0 || secs > 60 {
        return Err(ApiError::bad_request("bad_seconds", "seconds must be 1 to 60"));
    }
    let Ok(_one) = app.inner.profiling.try_lock() else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "profiling",
            "a profile is already being taken",
        ));
    };
    let capture = crate::metrics::profiling::Capture::with_frequency(
        crate::metrics::profiling::DEFAULT_FREQUENCY,
        None,
        None,
    )
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "profiling", e.to_string()))?;
    tokio::time::sleep(Duration::from_secs(secs)).await;
    capture
        .finish_to(out)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "profiling", e.to_string()))
}

#[utoipa::path(get, path = "/debug/pprof/profile", params(ProfileQuery),
    responses((status = 200, description = "A pprof protobuf", content_type = "application/octet-stream"), (status = 400, description = "Malformed request: bad JSON, base64, form or parameter", body = ErrorBody), (status = 401, description = "No bearer token", body = ErrorBody), (status = 403, description = "Wrong bearer token", body = ErrorBody), (status = 409, description = "A profile is already being taken", body = ErrorBody), (status = 500, description = "Model, index or gallery failure", body = ErrorBody)),
    security(("bearer" = [])))]
async fn pprof_profile(
    State(app): State<App>,
    q: Result<Query<ProfileQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query(q)?;
    let bytes = profile(&app, q, crate::metrics::profiling::Output::Pprof).await?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response())
}

#[utoipa::path(get, path = "/debug/pprof/flamegraph", params(ProfileQuery),
    responses((status = 200, description = "A flamegraph", content_type = "image/svg+xml"), (status = 400, description = "Malformed request: bad JSON, base64, form or parameter", body = ErrorBody), (status = 401, description = "No bearer token", body = ErrorBody), (status = 403, description = "Wrong bearer token", body = ErrorBody), (status = 409, description = "A profile is already being taken", body = ErrorBody), (status = 500, description = "Model, index or gallery failure", body = ErrorBody)),
    security(("bearer" = [])))]
async fn pprof_flamegraph(
    State(app): State<App>,
    q: Result<Query<ProfileQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query(q)?;
    let bytes = profile(&app, q, crate::metrics::profiling::Output::Flamegraph).await?;
    Ok(([(header::CONTENT_TYPE, "image/svg+xml")], bytes).into_response())
}

#[utoipa::path(get, path = "/openapi.json", responses((status = 200, description = "This document")))]
async fn openapi_json() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], openapi::document()).into_response()
}
