//! Face embeddings: the [`Embedder`] trait and its tract CPU backend (the
//! ONNX Runtime one is in `onnxruntime`, behind the `ort` feature).

use std::path::Path;

use super::align::FACE_SIZE;
use super::model::{self, Plan, State};
use super::FaceError;

/// Floats in one model input (3 × 112 × 112).
pub const INPUT_LEN: usize = 3 * FACE_SIZE * FACE_SIZE;

/// An aligned face as the model's input: NCHW, `(x - 127) / 128`.
#[derive(Clone, PartialEq)]
pub struct FaceInput(pub Box<[f32]>);

impl std::fmt::Debug for FaceInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FaceInput({} floats)", self.0.len())
    }
}

/// An L2-normalised embedding.
#[derive(Debug, Clone, PartialEq)]
pub struct Embedding(pub Vec<f32>);

impl Embedding {
    /// Normalises `v` to unit length ([`crate::vector::normalise`]); an
    /// error for NaN, infinite or zero vectors.
    pub fn normalised(mut v: Vec<f32>) -> Result<Self, FaceError> {
        crate::vector::normalise(&mut v)
            .map_err(|e| FaceError::BadOutput(format!("embedding norm is {}", e.norm)))?;
        Ok(Self(v))
    }

    /// Cosine similarity with another embedding ([`crate::vector::similarity`]:
    /// a dot product, both being normalised, clamped to [-1, 1]).
    pub fn cosine(&self, other: &Self) -> f32 {
        cosine(&self.0, &other.0)
    }
}

/// Cosine similarity of two unit vectors ([`crate::vector::similarity`]).
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    crate::vector::similarity(a, b)
}

/// A face-embedding model: a batch of aligned faces in, one normalised
/// vector per face out. One instance per inference thread (`&mut self`).
pub trait Embedder: Send {
    /// Length of the embeddings.
    fn dim(&self) -> usize;
    /// Batch sizes this backend runs natively (larger batches are split).
    fn batch_sizes(&self) -> &[usize];
    /// Embeds every face; the outer error fails the whole batch, an inner
    /// one only its face (a NaN or zero output).
    fn embed(&mut self, faces: &[FaceInput]) -> Result<Vec<Result<Embedding, FaceError>>, FaceError>;
}

impl<E: Embedder + ?Sized> Embedder for Box<E> {
    fn dim(&self) -> usize {
        (**self).dim()
    }
    fn batch_sizes(&self) -> &[usize] {
        (**self).batch_sizes()
    }
    fn embed(&mut self, faces: &[FaceInput]) -> Result<Vec<Result<Embedding, FaceError>>, FaceError> {
        (**self).embed(faces)
    }
}

/// The embedding model loaded once: one optimised plan per batch size,
/// shareable between inference threads.
#[derive(Clone)]
pub struct TractModel {
    plans: Vec<(usize, Plan)>,
    dim: usize,
}

impl std::fmt::Debug for TractModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sizes: Vec<usize> = self.plans.iter().map(|p| p.0).collect();
        f.debug_struct("TractModel")
            .field("batch_sizes", &sizes)
            .field("dim", &self.dim)
            .finish()
    }
}

impl TractModel {
    /// Loads the model at `path` with a plan for each of `batch_sizes`
    /// (1 is always added: every batch can be split into plans that exist).
    pub fn load(path: &Path, batch_sizes: &[usize]) -> Result<Self, FaceError> {
        let sizes = model::plan_sizes(batch_sizes, None);
        let mut plans = Vec::with_capacity(sizes.len());
        for b in sizes {
            plans.push((b, model::load(path, &[b, 3, FACE_SIZE, FACE_SIZE])?));
        }
        let mut m = Self { plans, dim: 0 };
        let mut e = m.embedder()?;
        m.dim = probe_dim(|f| e.run_plan(0, f))?;
        Ok(m)
    }

    /// An embedder for one inference thread (its own run states).
    pub fn embedder(&self) -> Result<TractEmbedder, FaceError> {
        let states = self
            .plans
            .iter()
            .map(|(_, p)| model::spawn(p))
            .collect::<Result<Vec<State>, _>>()?;
        Ok(TractEmbedder {
            sizes: self.plans.iter().map(|p| p.0).collect(),
            states,
            dim: self.dim,
        })
    }

    /// Length of the embeddings.
    pub fn dim(&self) -> usize {
        self.dim
    }
}

/// The tract CPU backend for one inference thread.
pub struct TractEmbedder {
    sizes: Vec<usize>,
    states: Vec<State>,
    dim: usize,
}

impl TractEmbedder {
    /// Runs the plan at `index` (its batch size must equal `faces.len()`),
    /// returning the raw rows.
    fn run_plan(&mut self, index: usize, faces: &[FaceInput]) -> Result<Vec<Vec<f32>>, FaceError> {
        let b = self.sizes[index];
        debug_assert_eq!(b, faces.len());
        let mut data = Vec::new();
        concat(faces, &mut data)?;
        let outputs = model::run(&mut self.states[index], &[b, 3, FACE_SIZE, FACE_SIZE], &data)?;
        let Some((shape, flat)) = outputs.into_iter().next() else {
            return Err(FaceError::BadOutput("the model has no output".into()));
        };
        rows(&flat, b, self.dim, &shape)
    }
}

/// The embedding size, learnt from one run of a blank face through `run`
/// (which also checks that the model works at all).
pub(crate) fn probe_dim(
    run: impl FnOnce(&[FaceInput]) -> Result<Vec<Vec<f32>>, FaceError>,
) -> Result<usize, FaceError> {
    let probe = FaceInput(vec![0.0; INPUT_LEN].into_boxed_slice());
    match run(std::slice::from_ref(&probe))?.first().map_or(0, Vec::len) {
        0 => Err(FaceError::BadOutput(
            "the model returned an empty embedding".into(),
        )),
        dim => Ok(dim),
    }
}

/// Appends the batch's inputs to `data`, checking each one's length.
pub(crate) fn concat(faces: &[FaceInput], data: &mut Vec<f32>) -> Result<(), FaceError> {
    data.reserve(faces.len() * INPUT_LEN);
    for f in faces {
        if f.0.len() != INPUT_LEN {
            return Err(FaceError::BadOutput(format!(
                "face input has {} floats, not {INPUT_LEN}",
                f.0.len()
            )));
        }
        data.extend_from_slice(&f.0);
    }
    Ok(())
}

/// Splits a batch's output (`flat`, of `shape`) into one row per face.
/// `[b, dim]` and the default model's `[1, b × dim]` (its last Reshape is
/// hard-coded to `[1, -1]`) are the same rows; `dim` is checked when known
/// (non-zero).
pub(crate) fn rows<S: std::fmt::Debug + ?Sized>(
    flat: &[f32],
    b: usize,
    dim: usize,
    shape: &S,
) -> Result<Vec<Vec<f32>>, FaceError> {
    if b == 0 || flat.is_empty() || !flat.len().is_multiple_of(b) {
        return Err(FaceError::BadOutput(format!(
            "output of shape {shape:?} for a batch of {b}"
        )));
    }
    let got = flat.len() / b;
    if dim != 0 && got != dim {
        return Err(FaceError::BadOutput(format!(
            "output of {got} per face, expected {dim}"
        )));
    }
    Ok(flat.chunks(got).map(<[f32]>::to_vec).collect())
}

impl Embedder for TractEmbedder {
    fn dim(&self) -> usize {
        self.dim
    }

    fn batch_sizes(&self) -> &[usize] {
        &self.sizes
    }

    fn embed(&mut self, faces: &[FaceInput]) -> Result<Vec<Result<Embedding, FaceError>>, FaceError> {
        let mut out = Vec::with_capacity(faces.len());
        let mut rest = faces;
        while !rest.is_empty() {
            // The largest plan that fits what is left (1 always exists).
            let index = self.sizes.iter().rposition(|b| *b <= rest.len()).unwrap_or(0);
            let (now, later) = rest.split_at(self.sizes[index].min(rest.len()));
            for row in self.run_plan(index, now)? {
                out.push(Embedding::normalised(row));
            }
            rest = later;
        }
        Ok(out)
    }
}
