//! The HTTP API on axum: facepool as a face-verification service, a thin
//! edge over [`FaceService`].
//!
//! [`App`] holds the settings and the service (once loaded);
//! [`App::router`] is an axum `Router` a program can serve as it is
//! ([`serve`] does, with a graceful drain) or mount in its own axum app.
//! Routes (JSON bodies with base64 images, or the same fields as
//! multipart/form-data):
//!
//! - `POST /v1/verify`, `POST /v1/verify/batch`, `POST /v1/identify`,
//!   `POST /v1/embed`, `POST /v1/review`;
//! - the gallery: `PUT /v1/people/{id}` (`?replace=true`), `GET
//!   /v1/people` (paged), `GET /v1/people/{id}`, `DELETE /v1/people/{id}`;
//! - `GET /`: the web console (its files under `/console/`), when
//!   [`ServerConfig::console`] is on;
//! - `GET /livez`, `GET /readyz` (ready once the models and the gallery are
//!   loaded), `GET /v1/info`, `GET /metrics` (Prometheus), `GET
//!   /openapi.json`;
//! - with the `profiling` feature, `GET /debug/pprof/profile` and
//!   `/debug/pprof/flamegraph` (a CPU profile of the server).
//!
//! Rules:
//! - A handler extracts, calls the front door, maps its error with `?`
//!   ([`ApiError`]: one `From<ServiceError>`, by the error's kind) and
//!   answers. Admission, deadlines and the pipeline are the service's: a
//!   request is refused with 429 at once when full, having done no work
//!   ([`Call::refuse_when_full`](crate::service::Call)).
//! - A request's timeout (`X-Request-Timeout-Ms`, bounded by the settings)
//!   is its call's deadline: past it the answer is 504 and the work not yet
//!   started is dropped. A client that disconnects drops its work the same
//!   way (its handler's future is dropped with the work's handles).
//! - Handlers await the service's futures; no tokio worker blocks and
//!   nothing is handed to tokio's blocking pool per request.

mod api;
mod auth;
mod conn;
mod console;
mod error;
mod extract;
mod handlers;
mod metrics;
mod openapi;
mod serve;
mod stats;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post, put};
use axum::Router;

pub use self::api::*;
pub use self::conn::Hygiene;
pub use self::error::{status_of, ApiError, ErrorBody, ErrorDetail};
pub use self::extract::{Image, JsonOrForm};
use self::handlers::{people, system, work};
use self::metrics::HttpMetrics;
pub use self::serve::{serve, Drained, Stop};
pub use crate::service::wire::*;
use crate::service::{FaceService, Timings};

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
    /// Most images in one request (verify/batch targets, enroll images,
    /// review frames): 413 beyond, before any is decoded.
    pub max_images: usize,
    /// A request's timeout when it asks for none.
    pub default_timeout: Duration,
    /// The longest timeout a request may ask for.
    pub max_timeout: Duration,
    /// The bounds on connections, headers and bodies ([`serve`] applies
    /// the connection and header ones; the body ones hold however the
    /// router is served).
    pub hygiene: Hygiene,
    /// Whether `GET /` answers with the web console (and `/console/*` with
    /// its files). Off by default, so that a program mounting the router in
    /// its own app keeps its `/`; the `serve` binary turns it on unless
    /// told `--no-console`.
    pub console: bool,
}

impl Default for ServerConfig {
    /// No tokens, 8 MiB bodies, 64 images a request, 30 s timeouts (at most
    /// 120 s), [`Hygiene::default`], no console.
    fn default() -> Self {
        Self {
            tokens: Vec::new(),
            metrics_token: None,
            max_body: 8 << 20,
            max_images: 64,
            default_timeout: Duration::from_secs(30),
            max_timeout: Duration::from_secs(120),
            hygiene: Hygiene::default(),
            console: false,
        }
    }
}

/// The HTTP application: settings, the service (once loaded) and the
/// metrics. Cheap to clone.
#[derive(Clone)]
pub struct App {
    inner: Arc<Inner>,
}

struct Inner {
    config: ServerConfig,
    service: Arc<OnceLock<FaceService>>,
    stopping: AtomicBool,
    metrics: HttpMetrics,
    bodies: extract::BodyBudget,
    /// The connections [`serve`] has open (for the gauges).
    connections: Arc<OnceLock<Arc<conn::Registry>>>,
    /// One CPU profile at a time (the profiler is process-wide).
    #[cfg(feature = "profiling")]
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
        let connections = Arc::new(OnceLock::new());
        let bodies = extract::BodyBudget::new(config.hygiene.max_inflight_bytes);
        Self {
            inner: Arc::new(Inner {
                metrics: HttpMetrics::new(
                    service.clone(),
                    connections.clone(),
                    (bodies.clone(), config.hygiene.max_inflight_bytes),
                ),
                bodies,
                connections,
                config,
                service,
                stopping: AtomicBool::new(false),
                #[cfg(feature = "profiling")]
                profiling: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// Makes the app ready with `service` (its gallery is the one the API
    /// changes). An error if it was ready already, with the service handed
    /// back.
    pub fn ready(&self, service: FaceService) -> Result<(), Box<FaceService>> {
        self.inner.service.set(service).map_err(Box::new)
    }

    /// Whether the models and the gallery are loaded.
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
    /// it out, and the service stops admitting (new requests are refused
    /// with 503); admitted ones finish.
    pub fn stop_accepting(&self) {
        self.inner.stopping.store(true, Ordering::SeqCst);
        if let Some(svc) = self.service() {
            svc.close();
        }
    }

    /// Whether [`stop_accepting`](Self::stop_accepting) was called.
    pub fn is_stopping(&self) -> bool {
        self.inner.stopping.load(Ordering::SeqCst)
    }

    /// The router: every route, the auth and metrics middleware, the body
    /// limit.
    pub fn router(&self) -> Router {
        let api = Router::new()
            .route("/v1/verify", post(work::verify))
            .route("/v1/verify/batch", post(work::verify_batch))
            .route("/v1/identify", post(work::identify))
            .route("/v1/embed", post(work::embed))
            .route("/v1/review", post(work::review))
            .route("/v1/people", get(people::list_people))
            .route(
                "/v1/people/{id}",
                put(people::enroll)
                    .get(people::get_person)
                    .delete(people::remove_person),
            )
            .route("/v1/info", get(system::info))
            .route("/v1/stats", get(system::stats));
        #[cfg(feature = "profiling")]
        let api = api
            .route("/debug/pprof/profile", get(handlers::profiling::pprof_profile))
            .route(
                "/debug/pprof/flamegraph",
                get(handlers::profiling::pprof_flamegraph),
            );
        let api = api.route_layer(middleware::from_fn_with_state(self.clone(), auth::require_token));
        let metrics = self.metrics_router();
        let mut router = Router::new()
            .route("/livez", get(system::livez))
            .route("/readyz", get(system::readyz))
            .route("/openapi.json", get(system::openapi_json))
            .merge(api)
            .merge(metrics);
        if self.inner.config.console {
            router = router.merge(console::router());
        }
        router
            .fallback(system::not_found)
            .method_not_allowed_fallback(system::method_not_allowed)
            .layer(middleware::from_fn_with_state(self.clone(), count_requests))
            .layer(DefaultBodyLimit::max(self.inner.config.max_body))
            .with_state(self.clone())
    }

    /// `/metrics`, behind its own token.
    fn metrics_router(&self) -> Router<App> {
        Router::new()
            .route("/metrics", get(system::metrics_text))
            .route_layer(middleware::from_fn_with_state(
                self.clone(),
                auth::require_metrics_token,
            ))
    }

    /// The router a connection gets when every other connection is busy:
    /// the probes and `/metrics`; anything else 503.
    pub fn probe_router(&self) -> Router {
        let metrics = self.metrics_router();
        Router::new()
            .route("/livez", get(system::livez))
            .route("/readyz", get(system::readyz))
            .merge(metrics)
            .fallback(system::too_many_connections)
            .layer(middleware::from_fn_with_state(self.clone(), count_requests))
            .with_state(self.clone())
    }

    /// Lets the gauges see the connections [`serve`] keeps.
    fn watch_connections(&self, r: Arc<conn::Registry>) {
        let _ = self.inner.connections.set(r);
    }

    fn body_budget(&self) -> &extract::BodyBudget {
        &self.inner.bodies
    }

    /// The service, or why the API cannot answer now.
    fn ready_service(&self) -> Result<&FaceService, ApiError> {
        if self.is_stopping() {
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

    /// Refuses more images than a request may carry, or none.
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

    /// Records an answered request's stages.
    fn stages(&self, t: &Timings) {
        self.inner.metrics.stages(t);
    }

    fn metrics(&self) -> &HttpMetrics {
        &self.inner.metrics
    }

    #[cfg(feature = "profiling")]
    fn profiling(&self) -> &tokio::sync::Mutex<()> {
        &self.inner.profiling
    }
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
