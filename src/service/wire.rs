//! The answers of the operations as serde bodies: one set, sent as they
//! are by the HTTP API and inside the NATS results, so that the same work
//! gets the same body on either edge. (With the `server` feature they also
//! describe themselves to the OpenAPI document.)

use serde::Serialize;

use super::results::{
    BatchVerdict, FrameVerdict, Identification, Identifications, PeoplePage, Person, Review, Verdict,
};
use super::{FaceResult, ServiceError, Timings};
use crate::face::FaceError;

/// Decodes an image sent as base64 text (`data:...;base64,` prefixes
/// allowed); `field` names it in the error (`bad_base64`, malformed).
#[cfg(any(feature = "server", feature = "nats"))]
pub fn decode_base64(field: &str, s: &str) -> Result<std::sync::Arc<[u8]>, ServiceError> {
    use base64::Engine;
    let s = s.trim();
    let s = match s.strip_prefix("data:") {
        Some(rest) => rest.split_once(',').map_or(rest, |(_, b)| b),
        None => s,
    };
    base64::engine::general_purpose::STANDARD
        .decode(s.as_bytes())
        .map(std::sync::Arc::from)
        .map_err(|e| {
            ServiceError::request(
                super::ErrorKind::Malformed,
                "bad_base64",
                format!("{field}: not base64: {e}"),
            )
        })
}

/// Time spent per stage, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct TimingsMs {
    /// Waiting for admission (0 when admitted at once).
    pub admission: f64,
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

/// A duration in milliseconds, to two decimals.
pub fn ms(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 1e5).round() / 100.0
}

impl From<Timings> for TimingsMs {
    fn from(t: Timings) -> Self {
        Self {
            admission: ms(t.admission),
            queue: ms(t.queue),
            prepare: ms(t.prepare),
            batch_wait: ms(t.batch_wait),
            inference: ms(t.inference),
            search: ms(t.search),
            total: ms(t.total),
        }
    }
}

/// An error's code and message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct ErrorDetail {
    /// A stable, machine-readable code.
    pub code: String,
    /// A human-readable explanation.
    pub message: String,
}

impl From<&ServiceError> for ErrorDetail {
    fn from(e: &ServiceError) -> Self {
        Self {
            code: e.code().to_owned(),
            message: e.message(),
        }
    }
}

/// Where a detected face is in its image: pixels from the image's top left
/// corner (its EXIF orientation applied, as browsers show it), to one
/// decimal.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct FaceBox {
    /// The left edge.
    pub left: f32,
    /// The top edge.
    pub top: f32,
    /// The right edge.
    pub right: f32,
    /// The bottom edge.
    pub bottom: f32,
}

impl FaceBox {
    /// The box of a face found by the detector; `None` for an image taken
    /// as an aligned chip (the whole image is the face).
    pub fn of(bbox: Option<[f32; 4]>) -> Option<Self> {
        let r = |v: f32| (v * 10.0).round() / 10.0;
        bbox.map(|[l, t, rt, b]| Self {
            left: r(l),
            top: r(t),
            right: r(rt),
            bottom: r(b),
        })
    }
}

/// The verdict on two faces.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct VerifyResponse {
    /// Cosine similarity of the two faces.
    pub similarity: f32,
    /// Whether it reaches the threshold.
    pub same: bool,
    /// The threshold used.
    pub threshold: f32,
    /// How each face was found (`aligned`, `detected`, ...).
    pub faces: Vec<String>,
    /// Each face's box in its image, in order; `null` for an image taken
    /// as an aligned chip.
    pub boxes: Vec<Option<FaceBox>>,
    /// Per-stage timings.
    pub timings_ms: TimingsMs,
}

impl From<&Verdict> for VerifyResponse {
    fn from(v: &Verdict) -> Self {
        Self {
            similarity: v.similarity,
            same: v.same,
            threshold: v.threshold,
            faces: v.paths.iter().map(ToString::to_string).collect(),
            boxes: v.boxes.iter().map(|b| FaceBox::of(*b)).collect(),
            timings_ms: v.timings.into(),
        }
    }
}

/// One target's verdict, or why it has none.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
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
    pub error: Option<ErrorDetail>,
}

/// The source against every target, in order.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
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

impl From<&BatchVerdict> for VerifyBatchResponse {
    fn from(b: &BatchVerdict) -> Self {
        let results = b
            .targets
            .iter()
            .enumerate()
            .map(|(index, r)| match r {
                Ok(t) => TargetResult {
                    index,
                    similarity: Some(t.similarity),
                    same: Some(t.same),
                    face: Some(t.path.to_string()),
                    error: None,
                },
                Err(e) => TargetResult {
                    index,
                    similarity: None,
                    same: None,
                    face: None,
                    error: Some(e.into()),
                },
            })
            .collect();
        Self {
            results,
            threshold: b.threshold,
            source_face: b.source.to_string(),
            timings_ms: b.timings.into(),
        }
    }
}

/// An enrolled person matched.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
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
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct IdentifyResponse {
    /// The best match if it reaches the threshold; `null` means unknown.
    pub best: Option<MatchBody>,
    /// The closest people, best first, whether or not they reach it.
    pub matches: Vec<MatchBody>,
    /// The threshold used.
    pub threshold: f32,
    /// How the face was found.
    pub face: String,
    /// The face's box in the image; `null` for an image taken as an
    /// aligned chip.
    #[serde(rename = "box")]
    pub face_box: Option<FaceBox>,
    /// Every face of the image, largest first (the first is the face
    /// above), when every face was asked for (`all_faces`); absent
    /// otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub faces: Option<Vec<FaceIdentity>>,
    /// Per-stage timings.
    pub timings_ms: TimingsMs,
}

/// Who one face of an image is.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct FaceIdentity {
    /// The best match if it reaches the threshold; `null` means unknown.
    pub best: Option<MatchBody>,
    /// The closest people, best first, whether or not they reach it.
    pub matches: Vec<MatchBody>,
    /// How the face was found.
    pub face: String,
    /// The face's box in the image; `null` for an image taken as an
    /// aligned chip.
    #[serde(rename = "box")]
    pub face_box: Option<FaceBox>,
}

impl From<&Identification> for FaceIdentity {
    fn from(id: &Identification) -> Self {
        Self {
            best: id.best.as_ref().map(MatchBody::from),
            matches: id.matches.iter().map(MatchBody::from).collect(),
            face: id.path.to_string(),
            face_box: FaceBox::of(id.bbox),
        }
    }
}

impl From<&Identification> for IdentifyResponse {
    fn from(id: &Identification) -> Self {
        let face = FaceIdentity::from(id);
        Self {
            best: face.best,
            matches: face.matches,
            threshold: id.threshold,
            face: face.face,
            face_box: face.face_box,
            faces: None,
            timings_ms: id.timings.into(),
        }
    }
}

impl IdentifyResponse {
    /// The answer for every face of an image: the largest face's fields,
    /// and every face in `faces`; `no_face` when there is none (an
    /// identify of every face answers at least one, or fails).
    pub fn of_all(ids: &Identifications) -> Result<Self, ServiceError> {
        let first = ids.faces.first().ok_or(FaceError::NoFace)?;
        Ok(Self {
            faces: Some(ids.faces.iter().map(FaceIdentity::from).collect()),
            timings_ms: ids.timings.into(),
            ..Self::from(first)
        })
    }
}

/// An image's embedding.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
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

impl From<(FaceResult, Timings)> for EmbedResponse {
    fn from((face, t): (FaceResult, Timings)) -> Self {
        let embedding = face.embedding.0;
        Self {
            dimension: embedding.len(),
            embedding,
            face: face.path.to_string(),
            timings_ms: t.into(),
        }
    }
}

/// An enrolled person.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct PersonBody {
    /// The person's id.
    pub id: String,
    /// Faces enrolled.
    pub faces: usize,
    /// The text stored with the person.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub meta: Option<String>,
}

impl From<Person> for PersonBody {
    fn from(p: Person) -> Self {
        Self {
            id: p.id,
            faces: p.faces,
            meta: p.meta,
        }
    }
}

/// A page of enrolled people, by id.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema), schema(as = PeoplePage))]
pub struct PeoplePageBody {
    /// People enrolled in all.
    pub total: usize,
    /// The page's first position.
    pub offset: usize,
    /// The page.
    pub people: Vec<PersonBody>,
}

impl From<PeoplePage> for PeoplePageBody {
    fn from(p: PeoplePage) -> Self {
        Self {
            total: p.total,
            offset: p.offset,
            people: p.people.into_iter().map(PersonBody::from).collect(),
        }
    }
}

/// A person removed.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct RemovedBody {
    /// The person's id.
    pub id: String,
    /// Faces removed.
    pub removed_faces: usize,
}

/// One frame of a review.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct FrameResult {
    /// The frame's position, from 0.
    pub frame: usize,
    /// Whether a face was found in it.
    pub face: bool,
    /// Similarity with the reference (reference mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub similarity: Option<f32>,
    /// Whether it is the reference's person (reference mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub same: Option<bool>,
    /// The gallery's person it shows, or `null` (gallery mode, with a face).
    #[serde(rename = "match", skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "server", schema(value_type = Option<MatchBody>))]
    pub matched: Option<Option<MatchBody>>,
    /// Everyone of the gallery the frame's faces matched, each once, best
    /// first (gallery mode, with a face; more than `match` only when every
    /// face was asked for).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub people: Option<Vec<MatchBody>>,
}

/// The verdict on a video's frames.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct ReviewResponse {
    /// The video's id, as given.
    pub video: String,
    /// `reference` (every frame with a face shows the reference's person)
    /// or `gallery` (no frame shows anyone of the gallery).
    pub mode: String,
    /// Whether the video passes.
    pub passes: bool,
    /// Frames in which a face was found.
    pub frames_with_face: usize,
    /// Frames that matched (the reference, or someone of the gallery).
    pub frames_matched: usize,
    /// The threshold used.
    pub threshold: f32,
    /// Each frame, in order.
    pub frames: Vec<FrameResult>,
    /// Per-stage timings of the whole request.
    pub timings_ms: TimingsMs,
}

impl From<&Review> for ReviewResponse {
    fn from(r: &Review) -> Self {
        let frames = r
            .frames
            .iter()
            .enumerate()
            .map(|(frame, v)| {
                let mut f = FrameResult {
                    frame,
                    face: true,
                    similarity: None,
                    same: None,
                    matched: None,
                    people: None,
                };
                match v {
                    FrameVerdict::NoFace => f.face = false,
                    FrameVerdict::Reference { similarity, same } => {
                        f.similarity = Some(*similarity);
                        f.same = Some(*same);
                    }
                    FrameVerdict::Gallery { best, people } => {
                        f.matched = Some(best.as_ref().map(MatchBody::from));
                        f.people = Some(people.iter().map(MatchBody::from).collect());
                    }
                }
                f
            })
            .collect();
        Self {
            video: r.video.clone(),
            mode: r.mode.as_str().to_owned(),
            passes: r.passes,
            frames_with_face: r.frames_with_face,
            frames_matched: r.frames_matched,
            threshold: r.threshold,
            frames,
            timings_ms: r.timings.into(),
        }
    }
}
