//! The gallery's routes: enroll, list, look up, remove.

use axum::extract::State;
use axum::Json;

use super::super::api::{EnrollQuery, EnrollRequest, PageQuery};
use super::super::error::{ApiError, AuthErrors, Internal, Malformed, NotFound, Unavailable, WorkErrors};
use super::super::extract::{Image, PathOf, QueryOf, WorkRequest};
use super::super::App;
use crate::service::wire::{PeoplePageBody, PersonBody, RemovedBody};

#[utoipa::path(put, path = "/v1/people/{id}", request_body = EnrollRequest,
    params(("id" = String, Path, description = "The person's id"), EnrollQuery),
    responses((status = 200, body = PersonBody), AuthErrors, WorkErrors), security(("bearer" = [])))]
pub(in super::super) async fn enroll(
    State(app): State<App>,
    PathOf(id): PathOf<String>,
    QueryOf(q): QueryOf<EnrollQuery>,
    WorkRequest { call, body: r }: WorkRequest<EnrollRequest>,
) -> Result<Json<PersonBody>, ApiError> {
    crate::service::check_id(&id)?;
    app.check_images(r.images.len())?;
    let images = Image::sources(r.images, "images")?;
    let svc = app.ready_service()?;
    let person = svc
        .enroll_async(&id, images, r.meta.as_deref(), q.replace, call)
        .await?;
    Ok(Json(person.into()))
}

#[utoipa::path(get, path = "/v1/people", params(PageQuery),
    responses((status = 200, body = PeoplePageBody), AuthErrors, Malformed, Unavailable), security(("bearer" = [])))]
pub(in super::super) async fn list_people(
    State(app): State<App>,
    QueryOf(q): QueryOf<PageQuery>,
) -> Result<Json<PeoplePageBody>, ApiError> {
    let page = app.ready_service()?.people(q.offset, q.limit.unwrap_or(100))?;
    Ok(Json(page.into()))
}

#[utoipa::path(get, path = "/v1/people/{id}", params(("id" = String, Path, description = "The person's id")),
    responses((status = 200, body = PersonBody), AuthErrors, Malformed, NotFound, Unavailable), security(("bearer" = [])))]
pub(in super::super) async fn get_person(
    State(app): State<App>,
    PathOf(id): PathOf<String>,
) -> Result<Json<PersonBody>, ApiError> {
    Ok(Json(app.ready_service()?.person(&id)?.into()))
}

#[utoipa::path(delete, path = "/v1/people/{id}", params(("id" = String, Path, description = "The person's id")),
    responses((status = 200, body = RemovedBody), AuthErrors, Malformed, NotFound, Internal, Unavailable),
    security(("bearer" = [])))]
pub(in super::super) async fn remove_person(
    State(app): State<App>,
    PathOf(id): PathOf<String>,
) -> Result<Json<RemovedBody>, ApiError> {
    let removed_faces = app.ready_service()?.remove_async(&id).await?;
    Ok(Json(RemovedBody { id, removed_faces }))
}
