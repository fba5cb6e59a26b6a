//! The settings of a [`FaceService`](super::FaceService): the models, how
//! faces are found, the threads, the batching of each kind of backend, and
//! what admission lets in.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::budget::{self, Pins};
use crate::face::{self, Backend, DecodeLimits, EmbedSettings, FindOptions};

/// How faces are gathered into model runs, and by how many threads. One
/// set for the CPU backends (tract, ONNX Runtime) and one for a GPU; the
/// service runs the set of the backend that loads.
#[derive(Debug, Clone, PartialEq)]
pub struct Batching {
    /// Most faces per model run.
    pub batch_max: usize,
    /// Most time a face waits for its batch to fill.
    pub batch_delay: Duration,
    /// Batch sizes given a plan of their own (tract and CUDA; ONNX Runtime
    /// runs any size up to `batch_max`). 1 is always added; on a GPU, sizes
    /// above `batch_max` are dropped and `batch_max` is added.
    pub batch_sizes: Vec<usize>,
    /// Inference threads, each owning a model state.
    pub inference_threads: usize,
    /// ONNX Runtime's intra-op threads per inference thread (tract runs
    /// each state on its inference thread alone).
    pub intra_threads: usize,
    /// Most frames per detector run when detection is batched across
    /// requests (frames from many callers in one run of the detector, on a
    /// thread of its own, gathered for `batch_delay`); 0: each preparation
    /// worker runs the detector on its own frame.
    pub detect_batch: usize,
}

impl Batching {
    /// A batch per inference thread: the faces of one round of the model.
    pub fn round(&self) -> usize {
        self.batch_max.max(1) * self.inference_threads.max(1)
    }

    /// The CPU's: batches of up to 4 (ONNX Runtime's cost per face on the
    /// default model rises above that, measured in `benches/backends.rs`,
    /// and tract's does not fall with batch size), 2 ms, tract plans for
    /// batch 1; threads from the core budget. Detection is not batched: a
    /// run of several frames costs what their runs one by one cost on ONNX
    /// Runtime, and more on tract (`compare detector-check`).
    pub fn cpu() -> Self {
        let threads = budget::split(budget::cores(), Pins::default());
        Self {
            batch_max: 4,
            batch_delay: Duration::from_millis(2),
            batch_sizes: vec![1],
            inference_threads: threads.inference_threads,
            intra_threads: threads.intra_threads,
            detect_batch: 0,
        }
    }

    /// A GPU's: it runs 64 faces in about the time of one, so it is fed
    /// large batches (up to 256, gathered for 4 ms) on a ladder of plans (a
    /// batch runs on the smallest plan that holds it, padded); two
    /// inference threads keep one device busy (each owns its state and
    /// CUDA stream, so one copies and runs while the other waits). The
    /// detector runs there too, on up to 32 frames a run.
    pub fn gpu() -> Self {
        Self {
            batch_max: 256,
            batch_delay: Duration::from_millis(4),
            batch_sizes: vec![1, 8, 32, 64, 128, 256],
            inference_threads: 2,
            intra_threads: 1,
            detect_batch: 32,
        }
    }
}

/// Settings of a [`FaceService`](super::FaceService).
#[derive(Debug, Clone)]
pub struct FaceConfig {
    /// The embedding model (ONNX).
    pub model: PathBuf,
    /// The backend that runs it: `Auto` takes CUDA when a GPU and its
    /// libraries load, else ONNX Runtime when its library loads, else tract.
    pub backend: Backend,
    /// The ONNX Runtime library (`libonnxruntime.so`).
    pub onnxruntime: PathBuf,
    /// The face detector (UltraFace ONNX).
    pub detector: PathBuf,
    /// The 68-point landmark model; without it alignment uses box proportions.
    pub landmarks: Option<PathBuf>,
    /// How faces are found.
    pub find: FindOptions,
    /// Faces of one image that an operation over every face takes at most
    /// (the largest; 1 to [`face::MAX_FACES`]): identify with every face,
    /// and reviews that ask for every face. Such an image is admitted for
    /// this many faces, and gives back those it did not have once they are
    /// found.
    pub max_faces: usize,
    /// Cosine similarity at or above which two faces are the same person.
    pub threshold: f32,
    /// Pool workers for decoding, detection and alignment.
    pub workers: usize,
    /// The batching on the CPU backends.
    pub cpu: Batching,
    /// The batching on the CUDA backend.
    pub gpu: Batching,
    /// Decode limits.
    pub limits: DecodeLimits,
    /// Faces admitted at once at most (waiting or in work): the hard cap
    /// under the adaptive limit (or the limit itself without a latency
    /// target); a request of more is refused as too large. The pool's and
    /// the batcher's queues hold twice this, as a backstop.
    pub queue: usize,
    /// The latency admitted requests should meet at p99: the faces
    /// admitted at once adapt to hold it ([`limit`](super::limit)).
    /// `None`: `queue` faces, fixed.
    pub latency_target: Option<Duration>,
    /// Encoded image bytes admitted at once; a request of more is refused
    /// as too large.
    pub max_bytes: usize,
    /// Scale the preparation workers between 1 and `workers` on the images
    /// waiting, holding growth while a round of full batches waits for the
    /// model (the pool's autoscaler sees the batcher's queue). Off: a fixed
    /// `workers`.
    pub autoscale: bool,
}

impl FaceConfig {
    /// The batching of `backend` (the GPU's on CUDA, else the CPU's).
    pub fn batching(&self, backend: Backend) -> &Batching {
        match backend {
            Backend::Cuda => &self.gpu,
            _ => &self.cpu,
        }
    }

    /// What loading the embedding model takes from these settings.
    pub fn embed_settings(&self) -> EmbedSettings {
        EmbedSettings {
            backend: self.backend,
            model: self.model.clone(),
            onnxruntime: self.onnxruntime.clone(),
            tract_batch_sizes: face::plan_sizes(&self.cpu.batch_sizes, None),
            cuda_batch_sizes: face::plan_sizes(&self.gpu.batch_sizes, Some(self.gpu.batch_max)),
            max_batch: self.cpu.batch_max.max(1),
            intra_threads: self.cpu.intra_threads.max(1),
        }
    }

    /// The threads of each stage from the core budget, keeping what
    /// `pins` fixes ([`budget::split`] on this machine's cores).
    pub fn with_threads(mut self, pins: Pins) -> Self {
        let s = budget::split(budget::cores(), pins);
        self.workers = s.workers;
        self.cpu.inference_threads = s.inference_threads;
        self.cpu.intra_threads = s.intra_threads;
        self
    }

    /// The assets folder: `given`, else the first of `./assets` and an
    /// `assets` folder beside the running binary or above it that holds the
    /// embedding model, else `./assets` (whose missing files the load
    /// errors will then name).
    pub fn locate_assets(given: Option<PathBuf>) -> PathBuf {
        if let Some(p) = given {
            return p;
        }
        let mut candidates = vec![PathBuf::from("assets")];
        if let Ok(exe) = std::env::current_exe() {
            candidates.extend(exe.ancestors().skip(1).map(|d| d.join("assets")));
        }
        candidates
            .into_iter()
            .find(|c| c.join("models/fr_feature.onnx").is_file())
            .unwrap_or_else(|| PathBuf::from("assets"))
    }

    /// The defaults, with the models under `assets` (as fetched by
    /// `scripts/fetch-assets.sh`), threads from the core budget
    /// ([`budget::split`]: as many preparation workers as cores and as many
    /// inference threads as cores, one intra-op thread each, sharing the
    /// cores), [`Batching::cpu`] and [`Batching::gpu`], up to 8 faces of an
    /// image where every face is asked for, a latency target of
    /// 300 ms under a cap of 4096 faces, and 256 MiB admitted at once.
    pub fn from_assets(assets: &Path) -> Self {
        let threads = budget::split(budget::cores(), Pins::default());
        Self {
            model: assets.join("models/fr_feature.onnx"),
            backend: Backend::Auto,
            onnxruntime: face::backend::onnxruntime_in(assets),
            detector: assets.join("models/fr_detect.onnx"),
            landmarks: Some(assets.join("models/fr_landmark.onnx")),
            find: FindOptions::default(),
            max_faces: 8,
            threshold: face::DEFAULT_THRESHOLD,
            workers: threads.workers,
            cpu: Batching::cpu(),
            gpu: Batching::gpu(),
            limits: DecodeLimits::default(),
            queue: 4096,
            latency_target: Some(Duration::from_millis(300)),
            max_bytes: 256 << 20,
            autoscale: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> FaceConfig {
        FaceConfig::from_assets(Path::new("assets"))
    }

    #[test]
    fn each_backend_runs_its_own_batching() {
        let c = config();
        for b in [Backend::Tract, Backend::Ort, Backend::Auto] {
            assert_eq!(c.batching(b), &c.cpu, "{b}");
        }
        assert_eq!(c.batching(Backend::Cuda), &c.gpu);
        // Small batches on the CPU (the cost per face rises above 4 on ONNX
        // Runtime; see benches/backends.rs).
        assert_eq!(
            (c.cpu.batch_max, c.cpu.batch_delay),
            (4, Duration::from_millis(2))
        );
    }

    #[test]
    fn the_gpu_gets_large_batches_a_few_ms_and_two_threads() {
        let g = config().gpu;
        assert_eq!(g.batch_max, 256);
        assert_eq!(g.batch_delay, Duration::from_millis(4));
        assert_eq!(g.inference_threads, 2);
        assert_eq!(g.intra_threads, 1);
        // The plans the model is loaded with end at batch_max.
        assert_eq!(
            config().embed_settings().cuda_batch_sizes,
            vec![1, 8, 32, 64, 128, 256]
        );
    }

    #[test]
    fn gpu_plan_sizes_end_at_batch_max() {
        let mut c = config();
        c.gpu.batch_max = 100;
        assert_eq!(c.embed_settings().cuda_batch_sizes, vec![1, 8, 32, 64, 100]);
        c.gpu.batch_max = 0;
        assert_eq!(c.embed_settings().cuda_batch_sizes, vec![1]);
        c.gpu.batch_max = 512;
        c.gpu.batch_sizes = vec![0, 512, 300, 8, 8];
        assert_eq!(c.embed_settings().cuda_batch_sizes, vec![1, 8, 300, 512]);
        // tract: the sizes asked for, with 1.
        c.cpu.batch_sizes = vec![8, 0, 8];
        assert_eq!(c.embed_settings().tract_batch_sizes, vec![1, 8]);
    }
}
