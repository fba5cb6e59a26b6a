//! The OpenAPI 3 document, generated from the handlers' annotations and the
//! request and response types (no UI assets).

use std::sync::OnceLock;

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::api::*;
use super::error::{ErrorBody, ErrorDetail};
#[cfg(feature = "profiling")]
use super::handlers::profiling;
use super::handlers::{people, system, work};
use crate::service::wire::*;

struct Bearer;

impl Modify for Bearer {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "facepool", description = "Face verification and identification over HTTP."),
    paths(
        system::livez, system::readyz, work::verify, work::verify_batch, work::identify, work::embed,
        work::review, people::enroll, people::list_people, people::get_person, people::remove_person,
        system::info, system::stats, system::metrics_text, system::openapi_json
    ),
    components(schemas(
        VerifyRequest, VerifyBatchRequest, IdentifyRequest, EmbedRequest, EnrollRequest, ReviewRequestBody,
        VerifyResponse, VerifyBatchResponse, TargetResult, IdentifyResponse, FaceIdentity, MatchBody, EmbedResponse, PersonBody,
        PeoplePageBody, RemovedBody, ReviewResponse, FrameResult, FaceBox, InfoBody, GalleryBody, StatsBody, SecondBody, PoolBody, BatcherBody, LimitsBody, AdmissionBody, StatusBody, TimingsMs,
        ErrorBody, ErrorDetail
    )),
    modifiers(&Bearer)
)]
struct ApiDoc;

/// The profiling routes, merged into [`ApiDoc`] when they are built.
#[cfg(feature = "profiling")]
#[derive(OpenApi)]
#[openapi(paths(profiling::pprof_profile, profiling::pprof_flamegraph))]
struct ProfilingDoc;

/// The document as JSON (built once).
pub fn document() -> String {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| {
        let doc = ApiDoc::openapi();
        #[cfg(feature = "profiling")]
        let doc = doc.merge_from(ProfilingDoc::openapi());
        doc.to_json()
            .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    })
    .clone()
}
