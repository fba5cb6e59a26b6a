//! CPU profiles of the running server (the `profiling` feature):
//! `GET /debug/pprof/profile` (a pprof protobuf) and
//! `/debug/pprof/flamegraph` (an SVG), one at a time.

use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use super::super::api::ProfileQuery;
use super::super::error::{ApiError, AuthErrors, Busy, Internal, Malformed};
use super::super::extract::QueryOf;
use super::super::App;
use crate::metrics::profiling::{Capture, Output, DEFAULT_FREQUENCY};

// `tag = "system"` below: the tag these operations had in the document
// when they were listed beside the other system routes (utoipa tags an
// operation by the module it is listed under in `paths(...)`, here
// `profiling`, unless the operation names its own).

async fn profile(app: &App, q: ProfileQuery, out: Output) -> Result<Vec<u8>, ApiError> {
    let secs = q.seconds.unwrap_or(10);
    if secs == 0 || secs > 60 {
        return Err(ApiError::bad_request("bad_seconds", "seconds must be 1 to 60"));
    }
    let Ok(_one) = app.profiling().try_lock() else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "profiling",
            "a profile is already being taken",
        ));
    };
    let internal = |e: &dyn std::fmt::Display| {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "profiling", e.to_string())
    };
    let capture = Capture::with_frequency(DEFAULT_FREQUENCY, None, None).map_err(|e| internal(&e))?;
    tokio::time::sleep(Duration::from_secs(secs)).await;
    // Symbolising and rendering take a while: on a thread of their own
    // (one profile at a time), never on a tokio worker.
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("facepool-profile".into())
        .spawn(move || {
            let _ = tx.send(capture.finish_to(out));
        })
        .map_err(|e| internal(&e))?;
    rx.await
        .map_err(|_| internal(&"the profile's thread ended without an answer"))?
        .map_err(|e| internal(&e))
}

#[utoipa::path(get, path = "/debug/pprof/profile", tag = "system", params(ProfileQuery),
    responses((status = 200, description = "A pprof protobuf", content_type = "application/octet-stream"), AuthErrors, Malformed, Busy, Internal),
    security(("bearer" = [])))]
pub(in super::super) async fn pprof_profile(
    State(app): State<App>,
    QueryOf(q): QueryOf<ProfileQuery>,
) -> Result<Response, ApiError> {
    let bytes = profile(&app, q, Output::Pprof).await?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response())
}

#[utoipa::path(get, path = "/debug/pprof/flamegraph", tag = "system", params(ProfileQuery),
    responses((status = 200, description = "A flamegraph", content_type = "image/svg+xml"), AuthErrors, Malformed, Busy, Internal),
    security(("bearer" = [])))]
pub(in super::super) async fn pprof_flamegraph(
    State(app): State<App>,
    QueryOf(q): QueryOf<ProfileQuery>,
) -> Result<Response, ApiError> {
    let bytes = profile(&app, q, Output::Flamegraph).await?;
    Ok(([(header::CONTENT_TYPE, "image/svg+xml")], bytes).into_response())
}
