//! The job messages of the async mode, parsed straight from their bytes
//! into typed fields (no `serde_json::Value`, no buffered enum: a job costs
//! about its own size to parse).

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};

/// Most bytes of a job's text kept in its dead letter (more is cut).
pub const DEAD_LETTER_JOB_BYTES: usize = 64 << 10;

/// A job: `{"id", "kind", ..., "deadline_ms"}`. The id names its result
/// (`RESULTS.<id>`), so it is 1 to 128 characters of `A-Z a-z 0-9 _ -`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(try_from = "RawJob")]
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
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
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

impl<'de> Deserialize<'de> for ImageRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ImageRef;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(r#"a base64 string or {"object": KEY}"#)
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<ImageRef, E> {
                Ok(ImageRef::Inline(s.to_owned()))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<ImageRef, E> {
                Ok(ImageRef::Inline(s))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<ImageRef, A::Error> {
                let mut object = None;
                while let Some(k) = m.next_key::<std::borrow::Cow<'de, str>>()? {
                    match &*k {
                        "object" if object.is_none() => object = Some(m.next_value::<String>()?),
                        "object" => return Err(de::Error::duplicate_field("object")),
                        other => return Err(de::Error::unknown_field(other, &["object"])),
                    }
                }
                object
                    .map(|object| ImageRef::Object { object })
                    .ok_or_else(|| de::Error::missing_field("object"))
            }
        }
        d.deserialize_any(V)
    }
}

/// The kinds of job.
#[derive(Debug, Clone, Serialize)]
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
        #[serde(default, skip_serializing_if = "Option::is_none")]
        k: Option<usize>,
        /// Every face of the image (at most the consumer's `max_faces`),
        /// not only the largest.
        #[serde(default, skip_serializing_if = "is_false")]
        all_faces: bool,
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
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reference: Option<ImageRef>,
        /// Every face of each frame (at most the consumer's `max_faces`),
        /// not only its largest.
        #[serde(default, skip_serializing_if = "is_false")]
        all_faces: bool,
    },
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Every field any kind of job has, as sent; checked into a [`Job`].
/// Unknown fields are ignored (skipped without being kept).
#[derive(Deserialize)]
struct RawJob {
    id: String,
    #[serde(default)]
    deadline_ms: Option<u64>,
    kind: String,
    #[serde(default)]
    image1: Option<ImageRef>,
    #[serde(default)]
    image2: Option<ImageRef>,
    #[serde(default)]
    image: Option<ImageRef>,
    #[serde(default)]
    k: Option<usize>,
    #[serde(default)]
    video: Option<String>,
    #[serde(default)]
    frames: Option<Vec<ImageRef>>,
    #[serde(default)]
    reference: Option<ImageRef>,
    #[serde(default)]
    all_faces: bool,
}

impl TryFrom<RawJob> for Job {
    type Error = String;

    fn try_from(r: RawJob) -> Result<Self, String> {
        let need = |f: Option<ImageRef>, name: &str| f.ok_or_else(|| format!("missing field `{name}`"));
        let work = match r.kind.as_str() {
            "verify" => Work::Verify {
                image1: need(r.image1, "image1")?,
                image2: need(r.image2, "image2")?,
            },
            "identify" => Work::Identify {
                image: need(r.image, "image")?,
                k: r.k,
                all_faces: r.all_faces,
            },
            "review" => Work::Review {
                video: r.video.ok_or("missing field `video`")?,
                frames: r.frames.ok_or("missing field `frames`")?,
                reference: r.reference,
                all_faces: r.all_faces,
            },
            other => {
                return Err(format!(
                    "unknown kind `{other}`, expected one of `verify`, `identify`, `review`"
                ))
            }
        };
        Ok(Job {
            id: r.id,
            deadline_ms: r.deadline_ms,
            work,
        })
    }
}

/// Just the id of a message that is not a job (so that its dead letter is
/// filed under the id its producer waits on); every other field skipped.
#[cfg(feature = "nats")]
#[derive(Deserialize)]
pub(super) struct IdOnly {
    #[serde(default, deserialize_with = "string_or_nothing")]
    pub id: Option<String>,
}

#[cfg(feature = "nats")]
fn string_or_nothing<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Option<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("anything")
        }
        fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
            Ok(Some(s.to_owned()))
        }
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_seq<A: de::SeqAccess<'de>>(self, mut s: A) -> Result<Self::Value, A::Error> {
            while s.next_element::<de::IgnoredAny>()?.is_some() {}
            Ok(None)
        }
        fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
            while m.next_entry::<de::IgnoredAny, de::IgnoredAny>()?.is_some() {}
            Ok(None)
        }
    }
    d.deserialize_any(V)
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

    /// Whether it asks for every face of its images.
    pub fn all_faces(&self) -> bool {
        match self {
            Work::Verify { .. } => false,
            Work::Identify { all_faces, .. } | Work::Review { all_faces, .. } => *all_faces,
        }
    }

    /// The faces its images are taken for at most, as the service admits
    /// them: one an image, or `max_faces` for each image of which every
    /// face is asked for (a review's reference stays one: its largest face
    /// is the one compared).
    pub fn faces_up_to(&self, max_faces: usize) -> usize {
        let each = if self.all_faces() { max_faces } else { 1 };
        match self {
            Work::Verify { .. } => 2,
            Work::Identify { .. } => each,
            Work::Review {
                frames, reference, ..
            } => frames
                .len()
                .saturating_mul(each)
                .saturating_add(usize::from(reference.is_some())),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_parse_from_their_bytes() {
        let j: Job = serde_json::from_str(
            r#"{"kind": "verify", "image2": {"object": "k"}, "id": "a", "image1": "QQ==", "extra": [1, {"x": 2}]}"#,
        )
        .unwrap();
        assert_eq!(j.id, "a");
        assert!(
            matches!(&j.work, Work::Verify { image1: ImageRef::Inline(s), image2: ImageRef::Object { object } } if s == "QQ==" && object == "k")
        );
        let r: Job =
            serde_json::from_str(r#"{"id": "r", "kind": "review", "video": "v", "frames": ["QQ=="]}"#)
                .unwrap();
        assert_eq!(r.work.images().len(), 1);
        // The faces each kind is admitted for: a review's reference is
        // one face, every face or not.
        let faces = |s: &str| serde_json::from_str::<Job>(s).unwrap().work.faces_up_to(8);
        assert_eq!(faces(r#"{"id": "a", "kind": "identify", "image": "QQ=="}"#), 1);
        assert_eq!(
            faces(r#"{"id": "a", "kind": "identify", "image": "QQ==", "all_faces": true}"#),
            8
        );
        assert_eq!(
            faces(
                r#"{"id": "a", "kind": "review", "video": "v", "frames": ["QQ==", "QQ=="], "reference": "QQ==", "all_faces": true}"#
            ),
            17
        );
        assert_eq!(
            faces(
                r#"{"id": "a", "kind": "review", "video": "v", "frames": ["QQ==", "QQ=="], "reference": "QQ=="}"#
            ),
            3
        );
        assert_eq!(
            faces(r#"{"id": "a", "kind": "verify", "image1": "QQ==", "image2": "QQ=="}"#),
            2
        );
        // A job serialises and parses back to itself.
        let again: Job = serde_json::from_slice(&serde_json::to_vec(&j).unwrap()).unwrap();
        assert_eq!(
            serde_json::to_value(&again).unwrap(),
            serde_json::to_value(&j).unwrap()
        );
        for bad in [
            r#"{"id": "a", "kind": "verify", "image1": "QQ=="}"#,
            r#"{"id": "a", "kind": "dance"}"#,
            r#"{"id": "a", "kind": "identify", "image": {"object": "k", "other": 1}}"#,
            r#"{"id": "a", "kind": "identify", "image": 7}"#,
            r#"[1, 2]"#,
        ] {
            assert!(serde_json::from_str::<Job>(bad).is_err(), "{bad}");
        }
    }

    #[cfg(feature = "nats")]
    #[test]
    fn the_id_of_what_is_not_a_job_is_read_when_it_is_text() {
        let id = |s: &str| serde_json::from_str::<IdOnly>(s).ok().and_then(|i| i.id);
        assert_eq!(id(r#"{"id": "x", "kind": 5}"#).as_deref(), Some("x"));
        assert_eq!(id(r#"{"id": {"no": 1}, "kind": 5}"#), None);
        assert_eq!(id(r#"{"kind": 5}"#), None);
    }
}
