//! What the operations answer (transport-neutral; the wire bodies in
//! `wire` are built from these).

use std::sync::Arc;
use std::time::Instant;

use super::error::ServiceError;
use super::pipeline::Timings;
use crate::face::FacePath;
use crate::index::Match;

/// How a call is admitted and how long it may take.
#[derive(Debug, Default)]
pub struct Call {
    /// When the answer is due: work not started by then is dropped, and
    /// the call ends with [`ErrorKind::Deadline`](super::ErrorKind) (also
    /// while it waits in line for admission).
    pub deadline: Option<Instant>,
    /// At capacity, refuse at once with
    /// [`ErrorKind::Overloaded`](super::ErrorKind) instead of waiting in
    /// line (fairly: first come, first served) for room.
    pub refuse_when_full: bool,
    /// Admission the caller already holds for this call (taken before its
    /// images were read, say): used first, and topped up if the call turns
    /// out to cost more.
    pub permit: Option<super::Permit>,
}

impl Call {
    /// Wait in line for room, with no deadline (the default).
    pub fn wait() -> Self {
        Self::default()
    }

    /// Refuse at once when full (a service that sheds load).
    pub fn refuse_when_full() -> Self {
        Self {
            refuse_when_full: true,
            ..Self::default()
        }
    }

    /// Due by `at`.
    pub fn until(self, at: Instant) -> Self {
        Self {
            deadline: Some(at),
            ..self
        }
    }

    /// Due within `d` from now.
    pub fn within(self, d: std::time::Duration) -> Self {
        self.until(Instant::now() + d)
    }

    /// With admission already held.
    pub fn with_permit(self, permit: super::Permit) -> Self {
        Self {
            permit: Some(permit),
            ..self
        }
    }
}

/// The outcome of verifying two images.
#[derive(Debug, Clone)]
pub struct Verdict {
    /// Cosine similarity of the two faces.
    pub similarity: f32,
    /// Whether it reaches the threshold.
    pub same: bool,
    /// The threshold used.
    pub threshold: f32,
    /// How each face was found.
    pub paths: [FacePath; 2],
    /// Each face's box in its image (left, top, right, bottom, pixels),
    /// when it was detected.
    pub boxes: [Option<[f32; 4]>; 2],
    /// Per-stage timings.
    pub timings: Timings,
}

/// One target of a batch verify.
#[derive(Debug, Clone)]
pub struct TargetVerdict {
    /// Cosine similarity with the source.
    pub similarity: f32,
    /// Whether it reaches the threshold.
    pub same: bool,
    /// How the target's face was found.
    pub path: FacePath,
}

/// One source face against many targets.
#[derive(Debug, Clone)]
pub struct BatchVerdict {
    /// Each target's verdict, or why it has none, in order.
    pub targets: Vec<Result<TargetVerdict, ServiceError>>,
    /// How the source face was found.
    pub source: FacePath,
    /// The threshold used.
    pub threshold: f32,
    /// Per-stage timings of the whole call (the longest image of each
    /// stage; the comparisons summed).
    pub timings: Timings,
}

/// The outcome of identifying the face in an image.
#[derive(Debug, Clone)]
pub struct Identification {
    /// The best match if it reaches the threshold; `None` means unknown.
    pub best: Option<Match>,
    /// The closest people, best first, whether or not they reach it.
    pub matches: Vec<Match>,
    /// The threshold used.
    pub threshold: f32,
    /// How the face was found.
    pub path: FacePath,
    /// The face's box in the image (left, top, right, bottom, pixels), when
    /// it was detected.
    pub bbox: Option<[f32; 4]>,
    /// Per-stage timings.
    pub timings: Timings,
}

/// The outcome of identifying every face of an image.
#[derive(Debug, Clone)]
pub struct Identifications {
    /// Each face, largest first (at most the service's `max_faces`).
    pub faces: Vec<Identification>,
    /// The threshold used.
    pub threshold: f32,
    /// Per-stage timings of the whole call (the longest face of each
    /// stage).
    pub timings: Timings,
}

/// An enrolled person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Person {
    /// The id.
    pub id: String,
    /// Faces enrolled.
    pub faces: usize,
    /// The text stored with the person.
    pub meta: Option<String>,
}

/// A page of enrolled people, by id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeoplePage {
    /// People enrolled in all.
    pub total: usize,
    /// The page's first position.
    pub offset: usize,
    /// The page.
    pub people: Vec<Person>,
}

/// A video's frames to review: against a reference face (an identity
/// check), or against the gallery (a watch list).
#[derive(Debug, Clone)]
pub struct ReviewRequest {
    /// The video's id, echoed in the answer.
    pub video: String,
    /// The frames, in order.
    pub frames: Vec<super::ImageSource>,
    /// The face every frame should show; `None`: watch the gallery.
    pub reference: Option<super::ImageSource>,
    /// Every face of each frame (the largest, up to the service's
    /// `max_faces`) instead of its largest only: a frame shows the
    /// reference's person when any of its faces does, and shows the
    /// gallery's people whose faces it has. Each frame is admitted for
    /// `max_faces` faces.
    pub all_faces: bool,
}

/// How a review is decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReviewMode {
    /// Every frame with a face shows the reference's person, and at least
    /// one frame has a face.
    Reference,
    /// No frame shows anyone of the gallery.
    Gallery,
}

impl ReviewMode {
    /// `reference` or `gallery`.
    pub fn as_str(self) -> &'static str {
        match self {
            ReviewMode::Reference => "reference",
            ReviewMode::Gallery => "gallery",
        }
    }
}

/// One frame of a review.
#[derive(Debug, Clone)]
pub enum FrameVerdict {
    /// No face in the frame (an answer, not a failure).
    NoFace,
    /// Compared with the reference.
    Reference {
        /// Cosine similarity with the reference.
        similarity: f32,
        /// Whether it reaches the threshold.
        same: bool,
    },
    /// Searched in the gallery: the best match if it reaches the threshold.
    Gallery {
        /// The person matched (the first of `people`).
        best: Option<Match>,
        /// Everyone of the gallery the frame's faces matched, each once,
        /// best first (at most `best` unless every face was asked for).
        people: Vec<Match>,
    },
}

/// The outcome of a review.
#[derive(Debug, Clone)]
pub struct Review {
    /// The video's id.
    pub video: String,
    /// How it was decided.
    pub mode: ReviewMode,
    /// Whether the video passes (see [`ReviewMode`]).
    pub passes: bool,
    /// Frames in which a face was found.
    pub frames_with_face: usize,
    /// Frames that matched (the reference, or someone of the gallery).
    pub frames_matched: usize,
    /// The threshold used.
    pub threshold: f32,
    /// Each frame, in order.
    pub frames: Vec<FrameVerdict>,
    /// Per-stage timings of the whole call.
    pub timings: Timings,
}

impl Review {
    /// The pass rule of a review from its frames.
    pub fn decide(mode: ReviewMode, frames: &[FrameVerdict]) -> (bool, usize, usize) {
        let with_face = frames
            .iter()
            .filter(|f| !matches!(f, FrameVerdict::NoFace))
            .count();
        let matched = frames
            .iter()
            .filter(|f| match f {
                FrameVerdict::NoFace => false,
                FrameVerdict::Reference { same, .. } => *same,
                FrameVerdict::Gallery { best, .. } => best.is_some(),
            })
            .count();
        let passes = match mode {
            ReviewMode::Reference => with_face > 0 && matched == with_face,
            ReviewMode::Gallery => matched == 0,
        };
        (passes, with_face, matched)
    }
}

/// A match's id and metadata as owned strings.
pub(crate) fn person_of(id: &Arc<str>, faces: usize, meta: Option<&Arc<str>>) -> Person {
    Person {
        id: id.to_string(),
        faces,
        meta: meta.map(|m| m.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m() -> Option<Match> {
        Some(Match {
            id: "a".into(),
            similarity: 0.9,
            meta: None,
        })
    }

    fn gallery(best: Option<Match>) -> FrameVerdict {
        FrameVerdict::Gallery {
            people: best.iter().cloned().collect(),
            best,
        }
    }

    #[test]
    fn the_review_rules() {
        use FrameVerdict as F;
        let same = |s| F::Reference {
            similarity: 0.5,
            same: s,
        };
        type Case = (ReviewMode, Vec<FrameVerdict>, (bool, usize, usize));
        let cases: Vec<Case> = vec![
            (
                ReviewMode::Reference,
                vec![same(true), F::NoFace, same(true)],
                (true, 2, 2),
            ),
            (
                ReviewMode::Reference,
                vec![same(true), same(false)],
                (false, 2, 1),
            ),
            // No face at all is no identity.
            (ReviewMode::Reference, vec![F::NoFace, F::NoFace], (false, 0, 0)),
            (ReviewMode::Gallery, vec![gallery(None), F::NoFace], (true, 1, 0)),
            (
                ReviewMode::Gallery,
                vec![gallery(None), gallery(m())],
                (false, 2, 1),
            ),
            (ReviewMode::Gallery, vec![], (true, 0, 0)),
        ];
        for (mode, frames, want) in cases {
            assert_eq!(Review::decide(mode, &frames), want, "{mode:?} {frames:?}");
        }
    }
}
