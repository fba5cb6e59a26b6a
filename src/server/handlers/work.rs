//! The routes that embed images: verify, verify/batch, identify, embed,
//! review.

use axum::extract::State;
use axum::Json;

use super::super::api::{
    EmbedRequest, IdentifyRequest, ReviewRequestBody, VerifyBatchRequest, VerifyRequest,
};
use super::super::error::{ApiError, AuthErrors, WorkErrors};
use super::super::extract::{Image, WorkRequest};
use super::super::App;
use crate::service::wire::{
    EmbedResponse, IdentifyResponse, ReviewResponse, VerifyBatchResponse, VerifyResponse,
};
use crate::service::ReviewRequest;

#[utoipa::path(post, path = "/v1/verify", request_body = VerifyRequest,
    responses((status = 200, body = VerifyResponse), AuthErrors, WorkErrors), security(("bearer" = [])))]
pub(in super::super) async fn verify(
    State(app): State<App>,
    WorkRequest {
        call,
        body: r,
        held: _held,
    }: WorkRequest<VerifyRequest>,
) -> Result<Json<VerifyResponse>, ApiError> {
    let (a, b) = (r.image1.source("image1")?, r.image2.source("image2")?);
    let v = app.ready_service()?.verify_async(a, b, call).await?;
    app.stages(&v.timings);
    Ok(Json((&v).into()))
}

#[utoipa::path(post, path = "/v1/verify/batch", request_body = VerifyBatchRequest,
    responses((status = 200, body = VerifyBatchResponse), AuthErrors, WorkErrors), security(("bearer" = [])))]
pub(in super::super) async fn verify_batch(
    State(app): State<App>,
    WorkRequest {
        call,
        body: r,
        held: _held,
    }: WorkRequest<VerifyBatchRequest>,
) -> Result<Json<VerifyBatchResponse>, ApiError> {
    app.check_images(r.targets.0.len() + 1)?;
    let source = r.source.source("source")?;
    let targets = Image::sources(r.targets, "targets")?;
    let b = app
        .ready_service()?
        .verify_batch_async(source, targets, call)
        .await?;
    app.stages(&b.timings);
    Ok(Json((&b).into()))
}

#[utoipa::path(post, path = "/v1/identify", request_body = IdentifyRequest,
    responses((status = 200, body = IdentifyResponse), AuthErrors, WorkErrors), security(("bearer" = [])))]
pub(in super::super) async fn identify(
    State(app): State<App>,
    WorkRequest {
        call,
        body: r,
        held: _held,
    }: WorkRequest<IdentifyRequest>,
) -> Result<Json<IdentifyResponse>, ApiError> {
    let image = r.image.source("image")?;
    let svc = app.ready_service()?;
    let k = r.k.unwrap_or(5);
    if !r.all_faces {
        let id = svc.identify_async(image, k, call).await?;
        app.stages(&id.timings);
        return Ok(Json((&id).into()));
    }
    let ids = svc.identify_all_async(image, k, call).await?;
    app.stages(&ids.timings);
    Ok(Json(IdentifyResponse::of_all(&ids)?))
}

#[utoipa::path(post, path = "/v1/embed", request_body = EmbedRequest,
    responses((status = 200, body = EmbedResponse), AuthErrors, WorkErrors), security(("bearer" = [])))]
pub(in super::super) async fn embed(
    State(app): State<App>,
    WorkRequest {
        call,
        body: r,
        held: _held,
    }: WorkRequest<EmbedRequest>,
) -> Result<Json<EmbedResponse>, ApiError> {
    let image = r.image.source("image")?;
    let (face, t) = app.ready_service()?.embed_async(image, call).await?;
    app.stages(&t);
    Ok(Json((face, t).into()))
}

#[utoipa::path(post, path = "/v1/review", request_body = ReviewRequestBody,
    responses((status = 200, body = ReviewResponse), AuthErrors, WorkErrors), security(("bearer" = [])))]
pub(in super::super) async fn review(
    State(app): State<App>,
    WorkRequest {
        call,
        body: r,
        held: _held,
    }: WorkRequest<ReviewRequestBody>,
) -> Result<Json<ReviewResponse>, ApiError> {
    app.check_images(r.frames.0.len() + usize::from(r.reference.is_some()))?;
    let req = ReviewRequest {
        video: r.video,
        frames: Image::sources(r.frames, "frames")?,
        reference: r.reference.map(|i| i.source("reference")).transpose()?,
        all_faces: r.all_faces,
    };
    let review = app.ready_service()?.review_async(req, call).await?;
    app.stages(&review.timings);
    Ok(Json((&review).into()))
}
