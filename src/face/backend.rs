//! Choosing the embedding backend: tract (pure Rust, always built), ONNX
//! Runtime (feature `ort`, a shared library loaded at run time) or CUDA
//! (feature `cuda`, tract's CUDA runtime, its libraries loaded at run time).

use std::path::{Path, PathBuf};

#[cfg(feature = "cuda")]
use super::cuda::CudaModel;
use super::embed::{Embedder, TractModel};
#[cfg(feature = "ort")]
use super::onnxruntime::{OrtModel, OrtOptions, OrtRuntime};
use super::FaceError;

/// Which backend to run the embedding model on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    /// CUDA when a device and its libraries load, else ONNX Runtime when
    /// its library is present and loads, else tract.
    #[default]
    Auto,
    /// tract (pure Rust).
    Tract,
    /// ONNX Runtime; an error when its library is missing or unusable.
    Ort,
    /// tract's CUDA runtime on the first GPU; an error naming what is
    /// missing when there is no driver, device or CUDA library.
    Cuda,
}

impl std::str::FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "tract" => Ok(Self::Tract),
            "ort" | "onnxruntime" => Ok(Self::Ort),
            "cuda" => Ok(Self::Cuda),
            other => Err(format!("unknown backend {other:?} (auto, tract, ort, cuda)")),
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Tract => "tract",
            Self::Ort => "ort",
            Self::Cuda => "cuda",
        })
    }
}

/// What loading the embedding model needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbedSettings {
    /// The backend asked for.
    pub backend: Backend,
    /// The model file (ONNX).
    pub model: PathBuf,
    /// The ONNX Runtime library (`libonnxruntime.so`).
    pub onnxruntime: PathBuf,
    /// Batch sizes tract builds a plan for (1 is always added).
    pub tract_batch_sizes: Vec<usize>,
    /// Batch sizes the CUDA backend builds a plan for (1 is always added; a
    /// batch runs on the smallest plan that holds it, padded).
    pub cuda_batch_sizes: Vec<usize>,
    /// Most faces per ONNX Runtime run.
    pub max_batch: usize,
    /// ONNX Runtime's intra-op threads per inference thread (tract's states
    /// run on one thread each).
    pub intra_threads: usize,
}

/// The backend a model was loaded on, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendChoice {
    /// The backend that runs (never `Auto`).
    pub used: Backend,
    /// The backends `auto` tried first and passed over, each with its load
    /// error, in the order tried (empty when asked for a backend by name).
    pub passed_over: Vec<(Backend, String)>,
    /// The ONNX Runtime library, when it is the one that runs.
    pub library: Option<PathBuf>,
}

impl std::fmt::Display for BackendChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.used)?;
        let mut notes: Vec<String> = self.library.iter().map(|l| l.display().to_string()).collect();
        notes.extend(
            self.passed_over
                .iter()
                .map(|(b, why)| format!("{b} passed over: {why}")),
        );
        if !notes.is_empty() {
            write!(f, " ({})", notes.join("; "))?;
        }
        Ok(())
    }
}

/// The embedding model loaded on one backend, shareable between inference
/// threads; each makes its own state with [`EmbedModel::embedder`].
#[derive(Debug, Clone)]
pub enum EmbedModel {
    /// tract plans.
    Tract(TractModel),
    /// ONNX Runtime.
    #[cfg(feature = "ort")]
    Ort(OrtModel),
    /// tract's CUDA runtime.
    #[cfg(feature = "cuda")]
    Cuda(CudaModel),
}

impl EmbedModel {
    /// Loads the model on the backend `settings` ask for. Under `auto`, a
    /// GPU or runtime that is missing or does not load, or a model it
    /// cannot run, passes to the next of CUDA, ONNX Runtime and tract, and
    /// the choice says why.
    pub fn load(settings: &EmbedSettings) -> Result<(Self, BackendChoice), FaceError> {
        let named = |m: Self| {
            let used = m.backend();
            let library = (used == Backend::Ort).then(|| settings.onnxruntime.clone());
            Ok((
                m,
                BackendChoice {
                    used,
                    passed_over: Vec::new(),
                    library,
                },
            ))
        };
        match settings.backend {
            Backend::Tract => named(Self::load_tract(settings)?),
            Backend::Ort => named(Self::load_ort(settings)?),
            Backend::Cuda => named(Self::load_cuda(settings)?),
            Backend::Auto => {
                let mut passed_over = Vec::new();
                for (backend, load) in [
                    (
                        Backend::Cuda,
                        Self::load_cuda as fn(&EmbedSettings) -> Result<Self, FaceError>,
                    ),
                    (Backend::Ort, Self::load_ort),
                ] {
                    match load(settings) {
                        Ok(m) => {
                            let (m, mut choice) = named(m)?;
                            choice.passed_over = passed_over;
                            return Ok((m, choice));
                        }
                        Err(e) => passed_over.push((backend, e.to_string())),
                    }
                }
                let (m, mut choice) = named(Self::load_tract(settings)?)?;
                choice.passed_over = passed_over;
                Ok((m, choice))
            }
        }
    }

    fn load_tract(settings: &EmbedSettings) -> Result<Self, FaceError> {
        Ok(Self::Tract(TractModel::load(
            &settings.model,
            &settings.tract_batch_sizes,
        )?))
    }

    #[cfg(feature = "cuda")]
    fn load_cuda(settings: &EmbedSettings) -> Result<Self, FaceError> {
        Ok(Self::Cuda(CudaModel::load(
            &settings.model,
            &settings.cuda_batch_sizes,
        )?))
    }

    #[cfg(not(feature = "cuda"))]
    fn load_cuda(_: &EmbedSettings) -> Result<Self, FaceError> {
        Err(FaceError::Gpu(
            "this build has no CUDA backend (cargo feature `cuda`)".into(),
        ))
    }

    #[cfg(feature = "ort")]
    fn load_ort(settings: &EmbedSettings) -> Result<Self, FaceError> {
        let runtime = OrtRuntime::load(&settings.onnxruntime)?;
        let options = OrtOptions {
            max_batch: settings.max_batch,
            intra_threads: settings.intra_threads,
            ..OrtOptions::default()
        };
        Ok(Self::Ort(OrtModel::load(&runtime, &settings.model, options)?))
    }

    #[cfg(not(feature = "ort"))]
    fn load_ort(settings: &EmbedSettings) -> Result<Self, FaceError> {
        Err(FaceError::Runtime {
            library: settings.onnxruntime.display().to_string(),
            message: "this build has no ONNX Runtime backend (cargo feature `ort`)".into(),
        })
    }

    /// A state for one inference thread.
    pub fn embedder(&self) -> Result<Box<dyn Embedder>, FaceError> {
        Ok(match self {
            Self::Tract(m) => Box::new(m.embedder()?),
            #[cfg(feature = "ort")]
            Self::Ort(m) => Box::new(m.embedder()?),
            #[cfg(feature = "cuda")]
            Self::Cuda(m) => Box::new(m.embedder()?),
        })
    }

    /// Length of the embeddings.
    pub fn dim(&self) -> usize {
        match self {
            Self::Tract(m) => m.dim(),
            #[cfg(feature = "ort")]
            Self::Ort(m) => m.dim(),
            #[cfg(feature = "cuda")]
            Self::Cuda(m) => m.dim(),
        }
    }

    /// The backend it runs on.
    pub fn backend(&self) -> Backend {
        match self {
            Self::Tract(_) => Backend::Tract,
            #[cfg(feature = "ort")]
            Self::Ort(_) => Backend::Ort,
            #[cfg(feature = "cuda")]
            Self::Cuda(_) => Backend::Cuda,
        }
    }
}

/// Where `scripts/fetch-assets.sh` puts the ONNX Runtime library under an
/// assets folder.
pub fn onnxruntime_in(assets: &Path) -> PathBuf {
    assets.join("lib/libonnxruntime.so.1")
}
