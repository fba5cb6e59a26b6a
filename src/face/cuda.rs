//! The CUDA embedding backend (feature `cuda`): the model on tract's CUDA
//! runtime (`tract-cuda`); the face detector on it too ([`CudaNet`]).
//!
//! Nothing CUDA is needed to build: the driver (`libcuda.so.1`) and the
//! CUDA 13 libraries (cudart, cuBLAS, cuDNN, NVRTC) are opened at run time
//! through the loader's path (`LD_LIBRARY_PATH`), and the kernels are
//! compiled by NVRTC at first start (headers under `CUDA_HOME`) and cached.
//! Loading checks all of that first, so a machine without a GPU gets an
//! error that names what is missing instead of a panic deep in the runtime.
//!
//! One plan per batch size, each shared by the inference threads; each
//! thread runs its own state on its own CUDA stream. A batch runs on the
//! smallest plan that holds it, padded with blank faces (a GPU runs 64 faces
//! in about the time of one, so padding costs little and keeps the number
//! of plans small); a batch larger than the largest plan is split.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::Arc;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::runtime::{runtime_for_name, Runnable, Runtime, State};

use super::align::FACE_SIZE;
use super::embed::{concat, probe_dim, rows, Embedder, Embedding, FaceInput, INPUT_LEN};
use super::model::{self, plan_sizes, schedule};
use super::FaceError;

// Linking the crate registers its runtime with tract-core.
use tract_cuda as _;

/// The name tract-core knows the runtime by.
const RUNTIME: &str = "cuda";

fn gpu_err(e: impl std::fmt::Display) -> FaceError {
    FaceError::Gpu(e.to_string())
}

/// tract's CUDA runtime, once its driver, device and libraries are checked:
/// an error that says which one is missing otherwise.
fn runtime() -> Result<&'static dyn Runtime, FaceError> {
    let found = catch_unwind(|| runtime_for_name(RUNTIME))
        .map_err(|_| gpu_err("the CUDA runtime panicked while checking the device"))?;
    match found {
        Ok(Some(rt)) => Ok(rt),
        Ok(None) => Err(gpu_err("tract's CUDA runtime is not linked into this build")),
        Err(e) => Err(gpu_err(format!("{e:#}"))),
    }
}

/// Whether a node of a prepared plan runs on the GPU: CUDA and generic GPU
/// operators, the copies between host and device, inputs and constants.
pub(crate) fn on_gpu(op: &str) -> bool {
    op.starts_with("Cuda")
        || op.starts_with("Gpu")
        || op.starts_with("DeviceSync")
        || op == "Source"
        || op == "Const"
}

/// The embedding model on the GPU: one plan per batch size.
#[derive(Clone)]
pub struct CudaModel {
    plans: Vec<(usize, Arc<dyn Runnable>)>,
    dim: usize,
    cpu_nodes: Vec<String>,
}

impl std::fmt::Debug for CudaModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sizes: Vec<usize> = self.plans.iter().map(|p| p.0).collect();
        f.debug_struct("CudaModel")
            .field("batch_sizes", &sizes)
            .field("dim", &self.dim)
            .field("cpu_nodes", &self.cpu_nodes)
            .finish()
    }
}

impl CudaModel {
    /// Loads the model at `path` onto the GPU with a plan for each of
    /// `batch_sizes` (1 is always added). Fails with [`FaceError::Gpu`]
    /// naming what is missing when there is no driver, no device or no
    /// CUDA library, and with [`FaceError::Model`] when the file is not a
    /// usable model.
    pub fn load(path: &Path, batch_sizes: &[usize]) -> Result<Self, FaceError> {
        let CudaNet { plans, cpu_nodes } = CudaNet::load(path, &[3, FACE_SIZE, FACE_SIZE], batch_sizes)?;
        let mut m = Self {
            plans,
            dim: 0,
            cpu_nodes,
        };
        let mut e = m.embedder()?;
        m.dim = probe_dim(|f| e.run_plan(0, f))?;
        Ok(m)
    }

    /// An embedder for one inference thread (its own states).
    pub fn embedder(&self) -> Result<CudaEmbedder, FaceError> {
        let states = self
            .plans
            .iter()
            .map(|(_, p)| spawn(&**p))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(CudaEmbedder {
            sizes: self.plans.iter().map(|p| p.0).collect(),
            states,
            dim: self.dim,
            data: Vec::new(),
        })
    }

    /// Length of the embeddings.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The batch sizes with a plan.
    pub fn batch_sizes(&self) -> Vec<usize> {
        self.plans.iter().map(|p| p.0).collect()
    }

    /// The nodes of the plan that stay on the CPU (name and operator),
    /// empty when the whole model runs on the GPU.
    pub fn cpu_nodes(&self) -> &[String] {
        &self.cpu_nodes
    }
}

/// The model decluttered (not optimised for the CPU: the CUDA runtime
/// translates the generic operators, then optimises) and prepared for
/// inputs of `shape` (its first dimension the batch).
fn prepare(rt: &dyn Runtime, path: &Path, shape: &[usize]) -> Result<Arc<dyn Runnable>, FaceError> {
    let b = shape.first().copied().unwrap_or(1);
    let model_err = |e: String| FaceError::Model(format!("{}: {e}", path.display()));
    let typed = catch_unwind(AssertUnwindSafe(|| -> TractResult<TypedModel> {
        let model = tract_onnx::onnx()
            .model_for_path(path)?
            .with_input_fact(0, f32::fact(shape).into())?;
        model::free_outputs(model)?.into_typed()?.into_decluttered()
    }))
    .map_err(|_| model_err("the model loader panicked (not a usable ONNX model)".into()))?
    .map_err(|e| model_err(format!("{e:#}")))?;
    let plan = catch_unwind(AssertUnwindSafe(|| rt.prepare(typed)))
        .map_err(|_| gpu_err("the CUDA runtime panicked while preparing the model (no usable device?)"))?
        .map_err(|e| gpu_err(format!("preparing the model for batches of {b}: {e:#}")))?;
    Ok(Arc::from(plan))
}

/// A state of a prepared plan for one thread.
fn spawn(plan: &dyn Runnable) -> Result<Box<dyn State>, FaceError> {
    catch_unwind(AssertUnwindSafe(|| plan.spawn()))
        .map_err(|_| gpu_err("the CUDA runtime panicked while making a state"))?
        .map_err(|e| gpu_err(format!("{e:#}")))
}

/// One thread's state of a plan, with the plan's batch size.
pub(crate) type PlannedState = (usize, Box<dyn State>);

/// A model on the GPU (the embedder's plans, the detector, the landmark
/// model): a plan for each batch size, inputs of one shape each.
#[derive(Clone)]
pub struct CudaNet {
    plans: Vec<(usize, Arc<dyn Runnable>)>,
    cpu_nodes: Vec<String>,
}

impl std::fmt::Debug for CudaNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sizes: Vec<usize> = self.plans.iter().map(|p| p.0).collect();
        f.debug_struct("CudaNet")
            .field("batch_sizes", &sizes)
            .field("cpu_nodes", &self.cpu_nodes)
            .finish()
    }
}

impl CudaNet {
    /// Loads the model at `path` onto the GPU with a plan for each of
    /// `batch_sizes` (1 always among them), each frame of `frame` (the
    /// input's shape past the batch). Errors as [`CudaModel::load`]'s.
    pub fn load(path: &Path, frame: &[usize], batch_sizes: &[usize]) -> Result<Self, FaceError> {
        if !path.is_file() {
            return Err(FaceError::Model(format!(
                "{}: no such file (run scripts/fetch-assets.sh)",
                path.display()
            )));
        }
        let rt = runtime()?;
        let mut plans = Vec::new();
        let mut cpu_nodes = Vec::new();
        for b in plan_sizes(batch_sizes, None) {
            let plan = prepare(rt, path, &model::batch_shape(b, frame))?;
            if cpu_nodes.is_empty() {
                cpu_nodes = off_gpu(&*plan);
            }
            plans.push((b, plan));
        }
        Ok(Self { plans, cpu_nodes })
    }

    /// States for one thread, with the batch size of each plan.
    pub(crate) fn states(&self) -> Result<Vec<PlannedState>, FaceError> {
        self.plans.iter().map(|(b, p)| Ok((*b, spawn(&**p)?))).collect()
    }

    /// The nodes of the plans that stay on the CPU (name and operator).
    pub fn cpu_nodes(&self) -> &[String] {
        &self.cpu_nodes
    }
}

/// The nodes of a prepared plan that are not on the GPU.
fn off_gpu(plan: &dyn Runnable) -> Vec<String> {
    let Some(model) = plan.typed_model() else {
        return Vec::new();
    };
    model
        .nodes()
        .iter()
        .filter(|n| !on_gpu(&n.op.name()))
        .map(|n| format!("{} ({})", n.name, n.op.name()))
        .collect()
}

/// The CUDA backend for one inference thread.
pub struct CudaEmbedder {
    sizes: Vec<usize>,
    states: Vec<Box<dyn State>>,
    dim: usize,
    /// The batch's input, kept between runs (its capacity reused).
    data: Vec<f32>,
}

impl CudaEmbedder {
    /// Runs `faces` (at most the plan's size) on the plan at `index`,
    /// padded with blank faces; returns one row per face of `faces`.
    fn run_plan(&mut self, index: usize, faces: &[FaceInput]) -> Result<Vec<Vec<f32>>, FaceError> {
        let b = self.sizes[index];
        if faces.len() > b {
            return Err(FaceError::Model(format!(
                "{} faces for a plan of {b}",
                faces.len()
            )));
        }
        self.data.clear();
        concat(faces, &mut self.data)?;
        self.data.resize(b * INPUT_LEN, 0.0);
        let outputs = model::run(
            &mut *self.states[index],
            &[b, 3, FACE_SIZE, FACE_SIZE],
            &self.data,
        )?;
        let Some((shape, flat)) = outputs.into_iter().next() else {
            return Err(FaceError::BadOutput("the model has no output".into()));
        };
        let mut rows = rows(&flat, b, self.dim, &shape)?;
        rows.truncate(faces.len());
        Ok(rows)
    }
}

impl Embedder for CudaEmbedder {
    fn dim(&self) -> usize {
        self.dim
    }

    fn batch_sizes(&self) -> &[usize] {
        &self.sizes
    }

    fn embed(&mut self, faces: &[FaceInput]) -> Result<Vec<Result<Embedding, FaceError>>, FaceError> {
        let mut out = Vec::with_capacity(faces.len());
        let mut rest = faces;
        for (index, take) in schedule(&self.sizes, faces.len()) {
            let (now, later) = rest.split_at(take);
            for row in self.run_plan(index, now)? {
                out.push(Embedding::normalised(row));
            }
            rest = later;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_sizes_hold_one_and_are_sorted_and_unique() {
        assert_eq!(plan_sizes(&[256, 0, 64, 64, 8], None), vec![1, 8, 64, 256]);
        assert_eq!(plan_sizes(&[], None), vec![1]);
    }

    #[test]
    fn gpu_and_cpu_operators_are_told_apart() {
        for op in [
            "CudaConv",
            "GpuSlice",
            "CudaAdd",
            "DeviceSyncToHost",
            "Source",
            "Const",
        ] {
            assert!(on_gpu(op), "{op}");
        }
        for op in ["OptMatMul", "Conv", "Reshape"] {
            assert!(!on_gpu(op), "{op}");
        }
    }

    #[test]
    fn the_load_embeds_on_a_gpu_or_fails_naming_what_is_missing() {
        // The test machines have no NVIDIA driver: there the load must be a
        // GPU error (never a panic); on a GPU machine it must embed.
        let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/models/fr_feature.onnx");
        match (runtime(), CudaModel::load(&model, &[1, 4])) {
            (Ok(_), Ok(m)) => {
                let face = FaceInput(vec![0.5; INPUT_LEN].into_boxed_slice());
                let out = m
                    .embedder()
                    .unwrap()
                    .embed(&[face.clone(), face.clone(), face])
                    .unwrap();
                assert_eq!(out.len(), 3);
                assert!(out.iter().all(|e| e.as_ref().unwrap().0.len() == m.dim()));
            }
            (Err(FaceError::Gpu(why)), Err(FaceError::Gpu(m))) => {
                assert_eq!(why, m);
                assert!(m.contains("CUDA"), "{m}");
            }
            (rt, load) => panic!("runtime {rt:?}, load {load:?}"),
        }
    }
}
