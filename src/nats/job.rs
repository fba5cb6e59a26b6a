//! The job and result messages of the async mode.

use serde::{Deserialize, Serialize};

/// Most bytes of a job's text kept in its dead letter (more is cut).
pub const DEAD_LETTER_JOB_BYTES: usize = 64 << 10;

/// A job: `{"id", "kind", ..., "deadline_ms"}`. The id names its result
/// (`RESULTS.<id>`), so it is 1 to 128 characters of `A-Z a-z 0-9 _ -`.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Job {
    /// The job's id, unique per job.
    pub id: String,
    /// Milliseconds from the job's publish time after which its work is
    /// dropped and it is dead-lettered with `deadline_exceeded`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
    /// What to do.
    #[serde(flatten)]
    pub work: Work,
}

/// An image: base64 inline (within the broker's max payload), or the key
/// of an object in the consumer's JetStream object store bucket.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum ImageRef {
    /// Base64 (a `data:` prefix is accepted).
    Inline(String),
    /// `{"object": "KEY"}`.
    Object {
        /// The object's key in the bucket.
        object: String,
    },
}

/// The kinds of job.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Work {
    /// Are the faces of two images the same person?
    Verify {
        /// The first image.
        image1: ImageRef,
        /// The second image.
        image2: ImageRef,
    },
    /// Who, in the gallery, is the face of the image?
    Identify {
        /// The image.
        image: ImageRef,
        /// Matches to return (default 5).
        #[serde(default)]
        k: Option<usize>,
    },
    /// The frames sampled from a video: with a `reference` face, does
    /// every frame with a face show that person (an identity check; the
    /// video passes when each does and at least one frame has a face)?
    /// Without one, is anyone of the gallery in a frame (a watch list;
    /// the video passes when no frame matches)?
    Review {
        /// The video's id, echoed in the result.
        video: String,
        /// The frames, in order.
        frames: Vec<ImageRef>,
        /// The face every frame should show.
        #[serde(default)]
        reference: Option<ImageRef>,
    },
}

impl Work {
    /// The job's kind, as in its JSON.
    pub fn kind(&self) -> &'static str {
        match self {
            Work::Verify { .. } => "verify",
            Work::Identify { .. } => "identify",
            Work::Review { .. } => "review",
        }
    }

    /// Its images, in order (for a review: the frames, then the reference).
    pub fn images(&self) -> Vec<&ImageRef> {
        match self {
            Work::Verify { image1, image2 } => vec![image1, image2],
            Work::Identify { image, .. } => vec![image],
            Work::Review {
                frames, reference, ..
            } => frames.iter().chain(reference.iter()).collect(),
        }
    }
}

/// Whether `id` can name a result subject.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}
