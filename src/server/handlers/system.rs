//! Probes, information, metrics, the OpenAPI document, and the
//! answers to routes and methods that do not exist.

use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::super::api::{
    AdmissionBody, BatcherBody, GalleryBody, InfoBody, LimitsBody, PoolBody, SecondBody, StatsBody,
    StatsQuery, StatusBody,
};
use super::super::error::{ApiError, AuthErrors, Internal, Malformed, Unavailable};
use super::super::extract::QueryOf;
use super::super::App;

pub(in super::super) async fn not_found() -> ApiError {
    ApiError::not_found("no_route", "no such route")
}

/// A connection served the probes only (every other connection is busy).
pub(in super::super) async fn too_many_connections() -> ApiError {
    ApiError::unavailable(
        "too_many_connections",
        "the server has as many connections as it serves; try again later",
    )
}

/// A known route with a method it does not take: the JSON error shape
/// like every other error (axum's own 405 has an empty body); axum adds
/// the `Allow` header.
pub(in super::super) async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "the route does not take this method",
    )
}

#[utoipa::path(get, path = "/livez", responses((status = 200, body = StatusBody)))]
pub(in super::super) async fn livez() -> Json<StatusBody> {
    Json(StatusBody {
        status: "ok".to_owned(),
    })
}

#[utoipa::path(get, path = "/readyz", responses(
    (status = 200, body = StatusBody), (status = 503, body = StatusBody)))]
pub(in super::super) async fn readyz(State(app): State<App>) -> (StatusCode, Json<StatusBody>) {
    let status = if app.is_stopping() {
        "stopping"
    } else if app.is_ready() {
        let degraded = app
            .service()
            .and_then(|s| s.gallery_status())
            .is_some_and(|g| g.degraded());
        if degraded {
            "degraded"
        } else {
            "ok"
        }
    } else {
        "loading"
    };
    // Degraded is still ready: the replica answers from what it has.
    let code = if matches!(status, "ok" | "degraded") {
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

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[utoipa::path(get, path = "/v1/info", responses((status = 200, body = InfoBody), AuthErrors, Unavailable),
    security(("bearer" = [])))]
pub(in super::super) async fn info(State(app): State<App>) -> Result<Json<InfoBody>, ApiError> {
    let svc = app.ready_service()?;
    let c = svc.config();
    let s = app.config();
    Ok(Json(InfoBody {
        model: c.model.display().to_string(),
        backend: svc.backend().used.to_string(),
        dimension: svc.dim(),
        threshold: c.threshold,
        people: svc.index().len(),
        gallery: svc.gallery_status().map(|g| GalleryBody {
            store: g.kind.to_owned(),
            place: g.place,
            revision: g.revision,
            pending: g.pending,
            connected: g.connected,
            last_change_age_ms: g.since_last_change.map(crate::service::wire::ms),
            rejected: g.rejected,
        }),
        limits: LimitsBody {
            max_body_bytes: s.max_body,
            max_images: s.max_images,
            queue_faces: c.queue,
            default_timeout_ms: ms(s.default_timeout),
            max_timeout_ms: ms(s.max_timeout),
            max_image_bytes: c.limits.max_file_bytes,
            max_image_pixels: c.limits.max_pixels,
            max_faces: svc.max_faces(),
        },
        admission: admission_body(&svc.admission().stats()),
        version: env!("CARGO_PKG_VERSION").to_owned(),
    }))
}

#[utoipa::path(get, path = "/v1/stats", params(StatsQuery),
    responses((status = 200, body = StatsBody), AuthErrors, Malformed, Unavailable), security(("bearer" = [])))]
pub(in super::super) async fn stats(
    State(app): State<App>,
    QueryOf(q): QueryOf<StatsQuery>,
) -> Result<Json<StatsBody>, ApiError> {
    let seconds = q.seconds.unwrap_or(60);
    if !(1..=super::super::stats::WINDOW_SECS).contains(&seconds) {
        return Err(ApiError::bad_request(
            "bad_seconds",
            format!("seconds is 1 to {}", super::super::stats::WINDOW_SECS),
        ));
    }
    let svc = app.ready_service()?;
    let w = app.metrics().recent().window(seconds);
    let p = svc.pool_stats();
    let b = svc.batch_stats();
    Ok(Json(StatsBody {
        seconds: w
            .seconds
            .into_iter()
            .map(|s| SecondBody {
                ago: s.ago,
                ok: s.ok,
                refused: s.refused,
                client_errors: s.client_errors,
                server_errors: s.server_errors,
                p50_ms: s.p50_ms,
                p99_ms: s.p99_ms,
            })
            .collect(),
        p50_ms: w.p50_ms,
        p99_ms: w.p99_ms,
        pool: PoolBody {
            workers: p.workers,
            capacity: p.capacity,
            running: p.running,
            waiting: p.waiting,
        },
        batcher: BatcherBody {
            queued_faces: b.queued,
            batches: b.batches,
            faces: b.delivered,
            mean_batch_size: match b.batches {
                0 => 0.0,
                n => (b.delivered as f64 / n as f64 * 100.0).round() / 100.0,
            },
            batch_max: svc.config().batching(svc.backend().used).batch_max,
        },
        admission: admission_body(&svc.admission().stats()),
        people: svc.index().len(),
        memory_bytes: super::super::stats::resident_bytes(),
    }))
}

fn admission_body(a: &crate::service::AdmissionStats) -> AdmissionBody {
    let ms = |d: Option<Duration>| d.map(crate::service::wire::ms);
    AdmissionBody {
        limit_faces: a.limit.faces,
        cap_faces: a.cap.faces,
        in_use_faces: a.in_use.faces,
        waiting: a.waiting,
        target_ms: ms(a.target),
        rate_faces_per_sec: a.rate.map(|r| (r * 10.0).round() / 10.0),
        min_sojourn_ms: ms(a.floor),
        sample_sojourn_ms: ms(a.sojourn_p99),
        expected_wait_ms: ms(a.expected_wait),
        refused_full: a.refused_full,
        refused_too_large: a.refused_too_large,
        refused_deadline: a.refused_deadline,
    }
}

#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus (OpenMetrics) text", content_type = "application/openmetrics-text"), AuthErrors, Internal))]
pub(in super::super) async fn metrics_text(State(app): State<App>) -> Response {
    match app.metrics().encode() {
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

#[utoipa::path(get, path = "/openapi.json", responses((status = 200, description = "This document")))]
pub(in super::super) async fn openapi_json() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        super::super::openapi::document(),
    )
        .into_response()
}
