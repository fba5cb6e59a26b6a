//! Choosing the embedding backend: tract (pure Rust, always built) or ONNX
//! Runtime (feature `ort`, a shared library loaded at run time).

use std::path::{Path, PathBuf};

use super::embed::{Embedder, TractModel};
#[cfg(feature = "ort")]
use super::onnxruntime::{OrtModel, OrtOptions, OrtRuntime};
use super::FaceError;

/// Which backend to run the embedding model on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    /// ONNX Runtime when its library is present and loads, else tract.
    #[default]
    Auto,
    /// tract (pure Rust).
    Tract,
    /// ONNX Runtime; an error when its library is missing or unusable.
    Ort,
}

impl std::str::FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "tract" => Ok(Self::Tract),
            "ort" | "onnxruntime" => Ok(Self::Ort),
            other => Err(format!("unknown backend {other:?} (auto, tract, ort)")),
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Tract => "tract",
            Self::Ort => "ort",
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
    /// Why `auto` did not take ONNX Runtime (the load error), when it did not.
    pub fallback: Option<String>,
    /// The ONNX Runtime library, when it is the one that runs.
    pub library: Option<PathBuf>,
}

impl std::fmt::Display for BackendChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.library, &self.fallback) {
            (Some(lib), _) => write!(f, "{} ({})", self.used, lib.display()),
            (None, Some(why)) => write!(f, "{} (ONNX Runtime unavailable: {why})", self.used),
            (None, None) => write!(f, "{}", self.used),
        }
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
}

impl EmbedModel {
    /// Loads the model on the backend `settings` ask for. Under `auto` a
    /// runtime that is missing or does not load, or a model it cannot run,
    /// falls back to tract, and the choice says why.
    pub fn load(settings: &EmbedSettings) -> Result<(Self, BackendChoice), FaceError> {
        let tract = || -> Result<Self, FaceError> {
            Ok(Self::Tract(TractModel::load(
                &settings.model,
                &settings.tract_batch_sizes,
            )?))
        };
        match settings.backend {
            Backend::Tract => Ok((
                tract()?,
                BackendChoice {
                    used: Backend::Tract,
                    fallback: None,
                    library: None,
                },
            )),
            Backend::Ort => {
                let m = Self::load_ort(settings)?;
                let library = Some(settings.onnxruntime.clone());
                Ok((
                    m,
                    BackendChoice {
                        used: Backend::Ort,
                        fallback: None,
                        library,
                    },
                ))
            }
            Backend::Auto => match Self::load_ort(settings) {
                Ok(m) => Ok((
                    m,
                    BackendChoice {
                        used: Backend::Ort,
                        fallback: None,
                        library: Some(settings.onnxruntime.clone()),
                    },
                )),
                Err(e) => Ok((
                    tract()?,
                    BackendChoice {
                        used: Backend::Tract,
                        fallback: Some(e.to_string()),
                        library: None,
                    },
                )),
            },
        }
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
        })
    }

    /// Length of the embeddings.
    pub fn dim(&self) -> usize {
        match self {
            Self::Tract(m) => m.dim(),
            #[cfg(feature = "ort")]
            Self::Ort(m) => m.dim(),
        }
    }

    /// The backend it runs on.
    pub fn backend(&self) -> Backend {
        match self {
            Self::Tract(_) => Backend::Tract,
            #[cfg(feature = "ort")]
            Self::Ort(_) => Backend::Ort,
        }
    }
}

/// Where `scripts/fetch-assets.sh` puts the ONNX Runtime library under an
/// assets folder.
pub fn onnxruntime_in(assets: &Path) -> PathBuf {
    assets.join("lib/libonnxruntime.so.1")
}
