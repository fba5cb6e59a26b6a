//! The face pipeline: decode with limits, find and align faces, embed them
//! with a face-embedding model, compare embeddings.
//!
//! This module knows nothing of the pool or the batcher; `FaceService`
//! wires them together.

pub mod align;
pub mod backend;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod decode;
pub mod detect;
pub mod embed;
mod error;
mod model;
#[cfg(feature = "ort")]
pub mod onnxruntime;
mod resize;

use image::RgbImage;

pub use self::align::{Similarity, ARCFACE_TEMPLATE, FACE_SIZE};
pub use self::backend::{Backend, BackendChoice, EmbedModel, EmbedSettings};
pub use self::decode::{decode, decode_file, DecodeLimits};
pub use self::detect::{DetectInput, DetectModels, Detection, Detector, Located, PointsFrom, MAX_FACES};
pub use self::embed::{cosine, Embedder, Embedding, FaceInput, TractEmbedder, TractModel, INPUT_LEN};
pub use self::error::FaceError;
pub use self::model::plan_sizes;

/// Verify threshold on the cosine similarity of the default model's
/// embeddings: calibrated on the 55 labelled photos (see docs/face.md), where
/// same-person pairs score 0.45 and above and different-person pairs 0.36
/// and below; 0.40 sits in that gap.
pub const DEFAULT_THRESHOLD: f32 = 0.40;

/// How faces are found in an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaceMode {
    /// The image is already a face chip (dlib-style, like the labelled
    /// photos): map it onto the model's frame, no detection.
    Aligned,
    /// Detect faces, find their landmarks, align each.
    Detect,
    /// `Aligned` for small square images that look like chips, else `Detect`.
    Auto,
}

impl std::str::FromStr for FaceMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "aligned" => Ok(Self::Aligned),
            "detect" => Ok(Self::Detect),
            "auto" => Ok(Self::Auto),
            other => Err(format!("unknown face mode {other:?} (aligned, detect, auto)")),
        }
    }
}

/// Which path an image took to its face.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FacePath {
    /// Treated as an aligned chip.
    Aligned,
    /// Detected with this score, aligned from these points.
    Detected {
        /// Detector score.
        score: f32,
        /// Where the alignment points came from.
        points: PointsFrom,
    },
}

impl std::fmt::Display for FacePath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Aligned => f.write_str("aligned"),
            Self::Detected {
                points: PointsFrom::Landmarks,
                ..
            } => f.write_str("detected"),
            Self::Detected {
                points: PointsFrom::BoxFallback,
                ..
            } => f.write_str("detected (box points)"),
        }
    }
}

/// One face ready for the embedding model.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The model input.
    pub input: FaceInput,
    /// How it was found.
    pub path: FacePath,
    /// Its box in the image, when detected.
    pub bbox: Option<[f32; 4]>,
}

/// Settings of face finding.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FindOptions {
    /// How faces are found.
    pub mode: FaceMode,
    /// Lowest detector score kept.
    pub min_score: f32,
    /// NMS overlap limit.
    pub max_iou: f32,
    /// Every face (largest first) instead of the largest only.
    pub all_faces: bool,
}

impl Default for FindOptions {
    fn default() -> Self {
        Self {
            mode: FaceMode::Auto,
            min_score: 0.7,
            max_iou: 0.3,
            all_faces: false,
        }
    }
}

impl FindOptions {
    /// Whether finding the faces of `img` takes the detector (`detect`, or
    /// `auto` on an image that is not a chip).
    pub fn needs_detector(&self, img: &RgbImage) -> bool {
        match self.mode {
            FaceMode::Aligned => false,
            FaceMode::Detect => true,
            FaceMode::Auto => !looks_like_chip(img),
        }
    }
}

/// Whether an image looks like an aligned face chip: square (within 5 %)
/// and at most 256 pixels a side.
pub fn looks_like_chip(img: &RgbImage) -> bool {
    let (w, h) = (img.width() as f32, img.height() as f32);
    (w - h).abs() <= 0.05 * w.max(h) && w.max(h) <= 256.0
}

fn input_of(face: &RgbImage) -> FaceInput {
    let mut v = vec![0.0; INPUT_LEN];
    align::to_input(face, &mut v);
    FaceInput(v.into_boxed_slice())
}

/// Finds the faces of a decoded image and prepares them for the model.
/// `detector` is needed unless the mode resolves to `Aligned`.
pub fn find_faces(
    img: &RgbImage,
    detector: Option<&mut Detector>,
    opts: &FindOptions,
) -> Result<Vec<Prepared>, FaceError> {
    let most = if opts.all_faces { MAX_FACES } else { 1 };
    find_faces_up_to(img, detector, opts, most)
}

/// [`find_faces`], preparing at most `most` faces (the largest; at least
/// one, at most [`MAX_FACES`]) whatever `opts.all_faces` says: the faces
/// past them cost no landmark run and no alignment.
pub fn find_faces_up_to(
    img: &RgbImage,
    detector: Option<&mut Detector>,
    opts: &FindOptions,
    most: usize,
) -> Result<Vec<Prepared>, FaceError> {
    if !opts.needs_detector(img) {
        let face = align::warp(img, &Similarity::dlib_chip(img.width()))
            .ok_or_else(|| FaceError::BadOutput("degenerate chip mapping".into()))?;
        return Ok(vec![Prepared {
            input: input_of(&face),
            path: FacePath::Aligned,
            bbox: None,
        }]);
    }
    let Some(detector) = detector else {
        return Err(FaceError::Model("no face detector loaded".into()));
    };
    let dets = detector.detect(img, opts.min_score, opts.max_iou)?;
    align_faces(img, dets, detector, most)
}

/// The first `most` of `dets` (1 to [`MAX_FACES`]): the largest, as
/// [`Detector::detect`] orders them.
pub fn largest(mut dets: Vec<Detection>, most: usize) -> Vec<Detection> {
    dets.truncate(most.clamp(1, MAX_FACES));
    dets
}

/// The faces `dets` (as [`Detector::detect`] answers them for `img`,
/// largest first) placed and aligned: the rest of [`find_faces_up_to`]
/// once the detector has run (where frames share detector runs, it ran on
/// another thread). At most `most` faces (1 to [`MAX_FACES`]); none is
/// [`FaceError::NoFace`].
pub fn align_faces(
    img: &RgbImage,
    dets: Vec<Detection>,
    detector: &mut Detector,
    most: usize,
) -> Result<Vec<Prepared>, FaceError> {
    let faces: Vec<(&RgbImage, Detection)> = largest(dets, most).into_iter().map(|d| (img, d)).collect();
    let located = detector.locate(&faces);
    align_located(img, &located)
}

/// The faces of `img` aligned from their points and made model inputs, in
/// order; a face whose points give no usable mapping is left out, and none
/// left is [`FaceError::NoFace`].
pub fn align_located(img: &RgbImage, located: &[Located]) -> Result<Vec<Prepared>, FaceError> {
    let mut out = Vec::with_capacity(located.len());
    for l in located {
        let Some(t) = Similarity::estimate(&l.points, &ARCFACE_TEMPLATE) else {
            continue;
        };
        let Some(face) = align::warp(img, &t) else {
            continue;
        };
        out.push(Prepared {
            input: input_of(&face),
            path: FacePath::Detected {
                score: l.det.score,
                points: l.from,
            },
            bbox: Some(l.det.bbox),
        });
    }
    if out.is_empty() {
        return Err(FaceError::NoFace);
    }
    Ok(out)
}
