//! The gallery's routes: enroll, list, look up, remove.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;

use super::super::api::{EnrollQuery, EnrollRequest, PageQuery};
use super::super::error::{
    ApiError, AuthErrors, Internal, KeyReused, Malformed, NotFound, Unavailable, WorkErrors,
};
use super::super::extract::{Image, PathOf, QueryOf, WorkRequest};
use super::super::App;
use crate::service::wire::{PeoplePageBody, PersonBody, RemovedBody};

#[utoipa::path(put, path = "/v1/people/{id}", request_body = EnrollRequest,
    params(("id" = String, Path, description = "The person's id"), EnrollQuery,
        ("Idempotency-Key" = Option<String>, Header, description = "Makes a retry of this enroll (after a lost answer) a no-op that answers the same; 1 to 256 visible ASCII characters")),
    responses((status = 200, body = PersonBody), AuthErrors, WorkErrors, KeyReused), security(("bearer" = [])))]
pub(in super::super) async fn enroll(
    State(app): State<App>,
    PathOf(id): PathOf<String>,
    QueryOf(q): QueryOf<EnrollQuery>,
    headers: HeaderMap,
    WorkRequest {
        call,
        body: r,
        held: _held,
    }: WorkRequest<EnrollRequest>,
) -> Result<Json<PersonBody>, ApiError> {
    crate::service::check_id(&id)?;
    let key = idempotency_key(&headers)?;
    if let Some(vectors) = r.embeddings {
        if !r.images.0.is_empty() {
            return Err(ApiError::bad_request(
                "images_and_embeddings",
                "give images or embeddings, not both",
            ));
        }
        let svc = app.ready_service()?;
        let person = svc
            .enroll_embeddings_async(key, &id, vectors, r.meta.as_deref(), q.replace)
            .await?;
        return Ok(Json(person.into()));
    }
    app.check_images(r.images.0.len())?;
    let images = Image::sources(r.images, "images")?;
    let svc = app.ready_service()?;
    let person = svc
        .enroll_keyed_async(key, &id, images, r.meta.as_deref(), q.replace, call)
        .await?;
    Ok(Json(person.into()))
}

/// The `Idempotency-Key` header: 1 to 256 visible ASCII characters.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    match v.to_str() {
        Ok(k) if (1..=256).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_graphic()) => Ok(Some(k)),
        _ => Err(ApiError::bad_request(
            "bad_idempotency_key",
            "Idempotency-Key is 1 to 256 visible ASCII characters",
        )),
    }
}

#[utoipa::path(get, path = "/v1/people", params(PageQuery),
    responses((status = 200, body = PeoplePageBody), AuthErrors, Malformed, Unavailable), security(("bearer" = [])))]
pub(in super::super) async fn list_people(
    State(app): State<App>,
    QueryOf(q): QueryOf<PageQuery>,
) -> Result<Json<PeoplePageBody>, ApiError> {
    let svc = app.ready_service()?;
    let limit = q.limit.unwrap_or(100);
    let page = match &q.search {
        Some(text) => svc.search_people_async(text, q.offset, limit).await?,
        None => svc.people_async(q.offset, limit).await?,
    };
    Ok(Json(page.into()))
}

#[utoipa::path(get, path = "/v1/people/{id}", params(("id" = String, Path, description = "The person's id")),
    responses((status = 200, body = PersonBody), AuthErrors, Malformed, NotFound, Unavailable), security(("bearer" = [])))]
pub(in super::super) async fn get_person(
    State(app): State<App>,
    PathOf(id): PathOf<String>,
) -> Result<Json<PersonBody>, ApiError> {
    Ok(Json(app.ready_service()?.person_async(&id).await?.into()))
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
