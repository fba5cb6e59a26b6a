//! `FaceService`: the pool, the batcher, the face pipeline and the index
//! wired into verify (1:1), identify (1:N), enroll and remove.
//!
//! Decoding, detection and alignment run as pool jobs (each worker owns a
//! detector state). The caller's thread then hands the faces to the batcher,
//! whose inference threads each own an embedding state, and waits for them.
//! No pool worker ever waits for the batcher.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::batch::{self, BatchError, BatchPolicy, Batcher};
use crate::face::{
    self, Backend, BackendChoice, DecodeLimits, DetectModels, Detector, EmbedModel, EmbedSettings, Embedding,
    FaceError, FaceInput, FacePath, FindOptions, Prepared,
};
use crate::index::{Index, IndexError, Match};
use crate::metrics::{Metrics, Stage};
use crate::pool::{self, JobError, Pool, ScalePolicy};

pub mod budget;
pub mod dedup;

pub use self::budget::{Pins, Split};
pub use self::dedup::{ImageKey, Recent};

/// Why a service call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ServiceError {
    /// An image gave no face or no embedding.
    #[error(transparent)]
    Face(#[from] FaceError),
    /// The pool refused the work.
    #[error("pool: {0}")]
    Pool(#[from] pool::SubmitError),
    /// A pool job ended without a value.
    #[error("pool job: {0}")]
    Job(#[from] JobError),
    /// The batcher refused the face.
    #[error("batcher: {0}")]
    Batch(#[from] batch::SubmitError),
    /// The face's batch failed.
    #[error("inference: {0}")]
    Inference(#[from] BatchError),
    /// The index refused the vector or the query.
    #[error("index: {0}")]
    Index(Arc<IndexError>),
    /// One of several images failed (enroll is all or nothing).
    #[error("image {index}: {error}")]
    Image {
        /// Position of the image in the call.
        index: usize,
        /// Why it failed.
        error: Box<ServiceError>,
    },
}

impl From<IndexError> for ServiceError {
    fn from(e: IndexError) -> Self {
        Self::Index(Arc::new(e))
    }
}

/// Why a service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A model could not be loaded.
    #[error(transparent)]
    Face(#[from] FaceError),
    /// The pool could not start.
    #[error("pool: {0}")]
    Pool(#[from] pool::BuildError),
    /// The batcher could not start.
    #[error("batcher: {0}")]
    Batch(#[from] batch::BuildError),
}

/// Settings of a [`FaceService`].
#[derive(Debug, Clone)]
pub struct FaceConfig {
    /// The embedding model (ONNX).
    pub model: PathBuf,
    /// The backend that runs it: `Auto` takes ONNX Runtime when the
    /// library loads (and the `ort` feature is built), else tract.
    pub backend: Backend,
    /// The ONNX Runtime library (`libonnxruntime.so`).
    pub onnxruntime: PathBuf,
    /// The face detector (UltraFace ONNX).
    pub detector: PathBuf,
    /// The 68-point landmark model; without it alignment uses box proportions.
    pub landmarks: Option<PathBuf>,
    /// How faces are found.
    pub find: FindOptions,
    /// Cosine similarity at or above which two faces are the same person.
    pub threshold: f32,
    /// Pool workers for decoding, detection and alignment.
    pub workers: usize,
    /// Inference threads (each owns an embedding state).
    pub inference_threads: usize,
    /// ONNX Runtime's intra-op threads per inference thread (tract runs
    /// each state on its inference thread alone).
    pub intra_threads: usize,
    /// Batch sizes the tract backend gets a plan for (ONNX Runtime runs any
    /// size up to `batch_max`).
    pub batch_sizes: Vec<usize>,
    /// Most faces per model run.
    pub batch_max: usize,
    /// Most time a face waits for its batch to fill.
    pub batch_delay: Duration,
    /// Decode limits.
    pub limits: DecodeLimits,
    /// Images that may wait for a pool worker, and faces that may wait for
    /// a model run (each queue has this bound).
    pub queue: usize,
    /// The batching that replaces `batch_max`, `batch_delay`, `batch_sizes`
    /// and `inference_threads` when the model runs on the CUDA backend.
    pub gpu: GpuBatching,
    /// Scale the preparation workers between 1 and `workers` on the images
    /// waiting, holding growth while a round of full batches waits for the
    /// model (the pool's autoscaler sees the batcher's queue). Off: a fixed
    /// `workers`.
    pub autoscale: bool,
    /// How long a call waits for room in a full queue: `None` refuses at
    /// once with `Overloaded` (for services that shed load), `Some(t)`
    /// blocks up to `t` and then fails with `Timeout`.
    pub admission_wait: Option<Duration>,
}

impl FaceConfig {
    /// What loading the embedding model takes from these settings.
    pub fn embed_settings(&self) -> EmbedSettings {
        EmbedSettings {
            backend: self.backend,
            model: self.model.clone(),
            onnxruntime: self.onnxruntime.clone(),
            tract_batch_sizes: self.batch_sizes.clone(),
            cuda_batch_sizes: self.gpu.plan_sizes(),
            max_batch: self.batch_max.max(1),
            intra_threads: self.intra_threads.max(1),
        }
    }

    /// These settings as they run on `backend`: on CUDA, the batching of
    /// [`FaceConfig::gpu`]; on the CPU backends, unchanged.
    pub fn for_backend(&self, backend: Backend) -> Self {
        let mut c = self.clone();
        if backend == Backend::Cuda {
            c.batch_max = self.gpu.batch_max.max(1);
            c.batch_delay = self.gpu.batch_delay;
            c.batch_sizes = self.gpu.plan_sizes();
            c.inference_threads = self.gpu.inference_threads.max(1);
            c.intra_threads = 1;
        }
        c
    }

    /// The threads of each stage from the core budget, keeping what
    /// `pins` fixes ([`budget::split`] on this machine's cores).
    pub fn with_threads(mut self, pins: Pins) -> Self {
        let s = budget::split(budget::cores(), pins);
        self.workers = s.workers;
        self.inference_threads = s.inference_threads;
        self.intra_threads = s.intra_threads;
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
    /// `scripts/fetch-assets.sh`), and threads from the core budget
    /// ([`budget::split`]): as many preparation workers as cores and as
    /// many inference threads as cores, one intra-op thread each, sharing
    /// the cores. Batches of up to 4: ONNX Runtime's cost per face on the
    /// default model rises above that (measured in `benches/backends.rs`),
    /// and tract's does not fall with batch size.
    pub fn from_assets(assets: &Path) -> Self {
        let threads = budget::split(budget::cores(), Pins::default());
        Self {
            model: assets.join("models/fr_feature.onnx"),
            backend: Backend::Auto,
            onnxruntime: face::backend::onnxruntime_in(assets),
            detector: assets.join("models/fr_detect.onnx"),
            landmarks: Some(assets.join("models/fr_landmark.onnx")),
            find: FindOptions::default(),
            threshold: face::DEFAULT_THRESHOLD,
            workers: threads.workers,
            inference_threads: threads.inference_threads,
            intra_threads: threads.intra_threads,
            batch_sizes: vec![1],
            batch_max: 4,
            batch_delay: Duration::from_millis(2),
            limits: DecodeLimits::default(),
            queue: 4096,
            gpu: GpuBatching::default(),
            autoscale: false,
            admission_wait: Some(Duration::from_secs(60)),
        }
    }
}

/// The batching of the CUDA backend. A GPU runs 64 faces in about the
/// time of one, so it is fed large batches: the batcher gathers up to
/// `batch_max` faces for a few milliseconds, and a plan exists for a ladder
/// of sizes up to it (a batch runs on the smallest plan that holds it,
/// padded). One or two inference threads keep one device busy: each owns
/// its own state and CUDA stream, so one copies and runs while the other
/// waits for its batch.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuBatching {
    /// Most faces per model run.
    pub batch_max: usize,
    /// Most time a face waits for its batch to fill.
    pub batch_delay: Duration,
    /// Batch sizes with a plan (those above `batch_max` are dropped and
    /// `batch_max` and 1 are added).
    pub batch_sizes: Vec<usize>,
    /// Inference threads on the device.
    pub inference_threads: usize,
}

impl Default for GpuBatching {
    fn default() -> Self {
        Self {
            batch_max: 256,
            batch_delay: Duration::from_millis(4),
            batch_sizes: vec![1, 8, 32, 64, 128, 256],
            inference_threads: 2,
        }
    }
}

impl GpuBatching {
    /// The plan sizes: `batch_sizes` up to `batch_max`, with 1 and
    /// `batch_max`, sorted and unique.
    pub fn plan_sizes(&self) -> Vec<usize> {
        let max = self.batch_max.max(1);
        let mut sizes: Vec<usize> = self
            .batch_sizes
            .iter()
            .copied()
            .filter(|b| (1..=max).contains(b))
            .collect();
        sizes.extend([1, max]);
        sizes.sort_unstable();
        sizes.dedup();
        sizes
    }
}

/// An image to compare.
#[derive(Debug, Clone)]
pub enum ImageSource {
    /// A file on disk.
    Path(PathBuf),
    /// Encoded bytes.
    Bytes(Arc<[u8]>),
}

/// Time spent per stage of one comparison.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Timings {
    /// Waiting for a pool worker (the longer of the two images).
    pub queue: Duration,
    /// Decoding, detection and alignment (the longer of the two images).
    pub prepare: Duration,
    /// Waiting for a batch (submission to the start of its model run).
    pub batch_wait: Duration,
    /// The model run of the batch.
    pub inference: Duration,
    /// Comparing the embeddings (verify) or searching the index (identify).
    pub search: Duration,
    /// The whole comparison.
    pub total: Duration,
}

/// A face embedded, with how it got there.
#[derive(Debug, Clone)]
pub struct FaceResult {
    /// The embedding.
    pub embedding: Embedding,
    /// How the face was found.
    pub path: FacePath,
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
    /// Per-stage timings.
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
    /// Per-stage timings.
    pub timings: Timings,
}

/// An embedding as the batch handler returns it, with its run's timing.
#[derive(Debug, Clone)]
pub struct Embedded {
    /// The face's embedding, or why the model gave none for it.
    pub embedding: Result<Embedding, FaceError>,
    /// When its batch's model run started.
    pub started: Instant,
    /// How long the run took.
    pub inference: Duration,
    /// Faces in the run.
    pub batch: usize,
}

struct Prep {
    faces: Vec<Prepared>,
    queue: Duration,
    prepare: Duration,
}

/// Pending preparation of one image (a pool job).
pub struct PendingImage {
    handle: pool::JobHandle<Result<Prep, FaceError>>,
}

/// Faces admitted by [`FaceService::admit`]; released on drop.
#[derive(Debug)]
#[must_use = "the admission is released when dropped"]
pub struct Admission {
    counter: Arc<AtomicUsize>,
    faces: usize,
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.counter.fetch_sub(self.faces, Ordering::AcqRel);
    }
}

/// Pending embedding of one image's face (a batch item).
pub struct PendingFace {
    handle: batch::BatchHandle<Embedded>,
    path: FacePath,
    queue: Duration,
    prepare: Duration,
    submitted: Instant,
}

type WorkerState = Result<Detector, FaceError>;

/// The face service: verify and identify images through the pool and the
/// batcher. Clones share the pool, the batcher and the index.
#[derive(Clone)]
pub struct FaceService {
    pool: Pool<WorkerState>,
    batcher: Batcher<FaceInput, Embedded>,
    config: Arc<FaceConfig>,
    backend: BackendChoice,
    dim: usize,
    index: Index,
    metrics: Metrics,
    /// Faces admitted by `admit` and not yet released.
    admitted: Arc<AtomicUsize>,
}

impl std::fmt::Debug for FaceService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaceService")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl FaceService {
    /// Loads the models and starts the pool and the batcher.
    pub fn start(config: FaceConfig) -> Result<Self, StartError> {
        let (model, backend) = EmbedModel::load(&config.embed_settings())?;
        // The batching of the backend that runs.
        let config = config.for_backend(backend.used);
        let dim = model.dim();
        let det = DetectModels::load(&config.detector, config.landmarks.as_deref())?;
        let metrics = Metrics::new();
        let batch_metrics = metrics.clone();
        let policy = BatchPolicy {
            max_items: config.batch_max.max(1),
            max_weight: None,
            max_delay: config.batch_delay,
            in_flight: config.inference_threads.max(1),
        };
        // Where requests are admitted up front (`admit`), the queues get
        // room for twice the admitted faces: a request dropped by its
        // caller (a timeout, a disconnect) releases its admission at once,
        // while its cancelled jobs keep their places until a worker pops
        // them; the headroom keeps those from refusing the next admitted
        // request half-way.
        let room = match config.admission_wait {
            None => config.queue.max(1).saturating_mul(2),
            Some(_) => config.queue.max(1),
        };
        let batcher = Batcher::builder(policy).queue_capacity(room);
        let batcher = match config.admission_wait {
            None => batcher,
            Some(t) => batcher.blocking(Some(t)),
        };
        let batcher = batcher.thread_name("face-infer").build(move |_| {
            let mut e = model.embedder()?;
            let metrics = batch_metrics.clone();
            Ok::<_, FaceError>(move |faces: Vec<FaceInput>| -> Result<Vec<Embedded>, FaceError> {
                let started = Instant::now();
                metrics.record_batch(faces.len());
                let out = e.embed(&faces)?;
                let inference = started.elapsed();
                let batch = faces.len();
                Ok(out
                    .into_iter()
                    .map(|embedding| Embedded {
                        embedding,
                        started,
                        inference,
                        batch,
                    })
                    .collect())
            })
        })?;
        let workers = config.workers.max(1);
        let mut pool = Pool::builder()
            .capacity(workers)
            .queue_capacity(room)
            .thread_name("face-prep")
            .worker_state(move || det.detector());
        pool = match config.autoscale {
            // A fixed set of workers, started now.
            false => pool.min_workers(workers),
            // Between 1 and `workers` on the images waiting; no growth while
            // a round of full batches waits for the model (preparing more
            // would only lengthen the batcher's queue).
            true => {
                let gauge = batcher.clone();
                let policy = ScalePolicy {
                    low_watermark: 1,
                    high_watermark: workers,
                    cooldown: Duration::from_millis(200),
                    sample_interval: Duration::from_millis(20),
                    sustain: 3,
                    downstream_high_watermark: Some(
                        config.batch_max.max(1) * config.inference_threads.max(1),
                    ),
                    ..ScalePolicy::new(1, workers)
                };
                pool.min_workers(1)
                    .autoscale(policy)
                    .downstream(move || gauge.queued_weight())
            }
        };
        pool = match config.admission_wait {
            None => pool.nonblocking(true),
            Some(t) => pool.submit_timeout(t),
        };
        let pool = pool.build()?;
        Ok(Self {
            pool,
            batcher,
            config: Arc::new(config),
            backend,
            dim,
            index: Index::new(dim).map_err(|e| FaceError::Model(e.to_string()))?,
            metrics,
            admitted: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// The settings.
    pub fn config(&self) -> &FaceConfig {
        &self.config
    }

    /// Length of the embeddings.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The embedding backend that runs, and why `auto` fell back to tract
    /// if it did.
    pub fn backend(&self) -> &BackendChoice {
        &self.backend
    }

    /// Latency histograms of every stage of every call, and batch sizes.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The index that identify searches and enroll fills (empty at start).
    pub fn index(&self) -> &Index {
        &self.index
    }

    /// Uses `index` from now on (for example one loaded from a file); an
    /// error if its vectors are not this model's length.
    pub fn set_index(&mut self, index: Index) -> Result<(), ServiceError> {
        if index.dim() != self.dim {
            return Err(IndexError::WrongDim {
                expected: self.dim,
                got: index.dim(),
            }
            .into());
        }
        self.index = index;
        Ok(())
    }

    /// The pool's counters (decode / detect / align jobs).
    pub fn pool_stats(&self) -> pool::PoolStats {
        self.pool.stats()
    }

    /// The batcher's counters (model runs).
    pub fn batch_stats(&self) -> batch::BatchStats {
        self.batcher.stats()
    }

    /// Starts decoding and finding the faces of an image on the pool.
    ///
    /// A service that sheds load (`admission_wait: None`) refuses the image
    /// with `Overloaded` at once when the batcher's queue is already full,
    /// instead of preparing a face the batcher would then refuse.
    pub fn prepare(&self, src: ImageSource) -> Result<PendingImage, ServiceError> {
        if self.config.admission_wait.is_none() && self.batcher.queued_weight() >= self.config.queue.max(1) {
            return Err(batch::SubmitError::Overloaded.into());
        }
        self.prepare_job(src, None, false)
    }

    /// Submits an image's preparation to the pool: blocking for room as the
    /// settings say, or (`now`) refusing at once; not started by `deadline`,
    /// it is dropped.
    fn prepare_job(
        &self,
        src: ImageSource,
        deadline: Option<Instant>,
        now: bool,
    ) -> Result<PendingImage, ServiceError> {
        let cfg = self.config.clone();
        let submitted = Instant::now();
        let job = move |det: &mut WorkerState| {
            let started = Instant::now();
            let queue = started - submitted;
            let img = match &src {
                ImageSource::Path(p) => face::decode_file(p, &cfg.limits)?,
                ImageSource::Bytes(b) => face::decode(b, &cfg.limits)?,
            };
            let detector = match det {
                Ok(d) => Some(d),
                // Say why this worker has no detector, if it needs one.
                Err(why) if cfg.find.needs_detector(&img) => return Err(why.clone()),
                Err(_) => None,
            };
            let faces = face::find_faces(&img, detector, &cfg.find)?;
            Ok(Prep {
                faces,
                queue,
                prepare: started.elapsed(),
            })
        };
        let opts = pool::JobOptions { deadline };
        let handle = if now {
            self.pool.try_submit_with(opts, job)?
        } else {
            self.pool.submit_with(opts, job)?
        };
        Ok(PendingImage { handle })
    }

    /// Waits for an image's preparation and hands its first (largest) face
    /// to the batcher. Call from the caller's thread, never a pool worker.
    pub fn embed_first(&self, img: PendingImage) -> Result<PendingFace, ServiceError> {
        let prep = img.handle.join()??;
        self.submit_face(prep, None, false)
    }

    /// Hands a prepared image's first face to the batcher.
    fn submit_face(
        &self,
        prep: Prep,
        deadline: Option<Instant>,
        now: bool,
    ) -> Result<PendingFace, ServiceError> {
        let Some(face) = prep.faces.into_iter().next() else {
            return Err(FaceError::NoFace.into());
        };
        let submitted = Instant::now();
        let opts = batch::ItemOptions { deadline };
        let handle = if now {
            self.batcher.try_submit_with(face.input, opts)?
        } else {
            self.batcher.submit_with(face.input, opts)?
        };
        Ok(PendingFace {
            handle,
            path: face.path,
            queue: prep.queue,
            prepare: prep.prepare,
            submitted,
        })
    }

    /// Waits for a face's embedding.
    pub fn finish(&self, face: PendingFace) -> Result<(FaceResult, Timings), ServiceError> {
        let PendingFace {
            handle,
            path,
            queue,
            prepare,
            submitted,
        } = face;
        self.finished(handle.join()?, path, queue, prepare, submitted)
    }

    /// A face's embedding with its timings (recorded in the metrics).
    fn finished(
        &self,
        e: Embedded,
        path: FacePath,
        queue: Duration,
        prepare: Duration,
        submitted: Instant,
    ) -> Result<(FaceResult, Timings), ServiceError> {
        let embedding = e.embedding?;
        let timings = Timings {
            queue,
            prepare,
            batch_wait: e.started.saturating_duration_since(submitted),
            inference: e.inference,
            search: Duration::ZERO,
            total: Duration::ZERO,
        };
        let m = &self.metrics;
        m.record(Stage::PoolWait, timings.queue);
        m.record(Stage::Prepare, timings.prepare);
        m.record(Stage::BatchWait, timings.batch_wait);
        m.record(Stage::Inference, timings.inference);
        Ok((FaceResult { embedding, path }, timings))
    }

    /// Admits a request of `faces` images, all or none, for the async
    /// entry points: refused with `Overloaded` at once, having done no work,
    /// if more than `queue` faces would then be in flight (`TooHeavy` if the
    /// request alone is more than `queue`). While admitted
    /// faces stay within that bound, neither the pool's nor the batcher's
    /// queue refuses them (with `admission_wait: None` both queues hold
    /// twice `queue`, for the cancelled work of dropped requests that is
    /// not yet popped). Released when the `Admission` is dropped.
    pub fn admit(&self, faces: usize) -> Result<Admission, ServiceError> {
        let limit = self.config.queue.max(1);
        let mut now = self.admitted.load(Ordering::Relaxed);
        if faces > limit {
            // More than the whole queue: waiting would never help.
            return Err(batch::SubmitError::TooHeavy {
                weight: faces,
                capacity: limit,
            }
            .into());
        }
        loop {
            if now + faces > limit {
                return Err(pool::SubmitError::Overloaded.into());
            }
            match self
                .admitted
                .compare_exchange_weak(now, now + faces, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => {
                    return Ok(Admission {
                        counter: self.admitted.clone(),
                        faces,
                    })
                }
                Err(seen) => now = seen,
            }
        }
    }

    /// Faces admitted and not yet released (a gauge).
    pub fn admitted(&self) -> usize {
        self.admitted.load(Ordering::Relaxed)
    }

    /// Embeds the largest face of each image, all in flight at once, for
    /// async callers: nothing blocks the calling thread (the preparation and
    /// the model run are awaited), and a full pool or batcher refuses at
    /// once. Work not started by `deadline` is dropped; dropping the future
    /// drops the work not yet started. Admit the images first ([`admit`](Self::admit)).
    pub async fn embed_all_async(
        &self,
        images: Vec<ImageSource>,
        deadline: Option<Instant>,
    ) -> Vec<Result<(FaceResult, Timings), ServiceError>> {
        let t0 = Instant::now();
        let prepared: Vec<_> = images
            .into_iter()
            .map(|src| self.prepare_job(src, deadline, true))
            .collect();
        let mut faces = Vec::with_capacity(prepared.len());
        for p in prepared {
            faces.push(match p {
                Ok(p) => match p.handle.await {
                    Ok(Ok(prep)) => self.submit_face(prep, deadline, true),
                    Ok(Err(e)) => Err(e.into()),
                    Err(e) => Err(e.into()),
                },
                Err(e) => Err(e),
            });
        }
        let mut out = Vec::with_capacity(faces.len());
        for f in faces {
            out.push(match f {
                Ok(f) => {
                    let PendingFace {
                        handle,
                        path,
                        queue,
                        prepare,
                        submitted,
                    } = f;
                    match handle.await {
                        Ok(e) => self
                            .finished(e, path, queue, prepare, submitted)
                            .map(|(r, mut t)| {
                                t.total = t0.elapsed();
                                (r, t)
                            }),
                        Err(e) => Err(e.into()),
                    }
                }
                Err(e) => Err(e),
            });
        }
        out
    }

    /// Embeds the largest face of one image.
    pub fn embed(&self, src: ImageSource) -> Result<(FaceResult, Timings), ServiceError> {
        let (r, t) = self.embed_one(src)?;
        self.metrics.record(Stage::EndToEnd, t.total);
        Ok((r, t))
    }

    fn embed_one(&self, src: ImageSource) -> Result<(FaceResult, Timings), ServiceError> {
        let t0 = Instant::now();
        let p = self.prepare(src)?;
        let (r, mut t) = self.finish(self.embed_first(p)?)?;
        t.total = t0.elapsed();
        Ok((r, t))
    }

    /// Embeds the largest face of each image, all in flight at once (their
    /// faces share model runs); one result per image, in order.
    pub fn embed_all(&self, images: Vec<ImageSource>) -> Vec<Result<(FaceResult, Timings), ServiceError>> {
        let t0 = Instant::now();
        let prepared: Vec<_> = images.into_iter().map(|src| self.prepare(src)).collect();
        let faces: Vec<_> = prepared
            .into_iter()
            .map(|p| p.and_then(|p| self.embed_first(p)))
            .collect();
        faces
            .into_iter()
            .map(|f| {
                let (r, mut t) = self.finish(f?)?;
                t.total = t0.elapsed();
                Ok((r, t))
            })
            .collect()
    }

    /// Enrolls the largest face of each image under `id`, adding to the
    /// faces it already has (`replace`: instead of them). All or nothing:
    /// if any image fails, the index is left as it was and the error names
    /// the image. `meta` is stored when the person is new or replaced.
    /// Returns the number of faces `id` now has.
    pub fn enroll(
        &self,
        id: &str,
        images: Vec<ImageSource>,
        meta: Option<&str>,
        replace: bool,
    ) -> Result<usize, ServiceError> {
        if images.is_empty() {
            return Err(IndexError::NoVectors(id.to_owned()).into());
        }
        let mut vectors = Vec::new();
        for (index, r) in self.embed_all(images).into_iter().enumerate() {
            match r {
                Ok((face, _)) => vectors.push(face.embedding.0),
                Err(e) => {
                    return Err(ServiceError::Image {
                        index,
                        error: Box::new(e),
                    })
                }
            }
        }
        let views: Vec<&[f32]> = vectors.iter().map(Vec::as_slice).collect();
        if replace {
            self.index.upsert(id, &views, meta)?;
        } else {
            self.index.add(id, &views, meta)?;
        }
        Ok(self.index.count(id))
    }

    /// Removes `id` and its faces; returns how many faces went.
    pub fn remove(&self, id: &str) -> usize {
        self.index.remove(id)
    }

    /// Who is the largest face of the image? The `k` closest people, and
    /// the best of them if it reaches the verify threshold (else unknown).
    pub fn identify(&self, src: ImageSource, k: usize) -> Result<Identification, ServiceError> {
        let (face, t) = self.embed_one(src)?;
        self.identify_face(&face, k, t)
    }

    /// Identify for a face already embedded (for callers that pipeline
    /// their own requests); `timings` are the embedding's, and the search
    /// is added to them and to their total.
    pub fn identify_face(
        &self,
        face: &FaceResult,
        k: usize,
        timings: Timings,
    ) -> Result<Identification, ServiceError> {
        let started = Instant::now();
        let matches = self.index.search(&face.embedding.0, k.max(1))?;
        let search = started.elapsed();
        let total = timings.total + search;
        self.metrics.record(Stage::Search, search);
        self.metrics.record(Stage::EndToEnd, total);
        let threshold = self.config.threshold;
        let best = matches.first().filter(|m| m.similarity >= threshold).cloned();
        Ok(Identification {
            best,
            matches: matches.into_iter().take(k).collect(),
            threshold,
            path: face.path,
            timings: Timings {
                search,
                total,
                ..timings
            },
        })
    }

    /// Compares the largest faces of two images (1:1 verify).
    pub fn verify(&self, a: ImageSource, b: ImageSource) -> Result<Verdict, ServiceError> {
        let t0 = Instant::now();
        let (pa, pb) = (self.prepare(a)?, self.prepare(b)?);
        let (fa, fb) = (self.embed_first(pa)?, self.embed_first(pb)?);
        let ((ra, ta), (rb, tb)) = (self.finish(fa)?, self.finish(fb)?);
        Ok(self.verdict(&ra, &rb, ta, tb, t0.elapsed()))
    }

    /// The verdict on two embedded faces.
    pub fn verdict(
        &self,
        a: &FaceResult,
        b: &FaceResult,
        ta: Timings,
        tb: Timings,
        total: Duration,
    ) -> Verdict {
        let started = Instant::now();
        let similarity = a.embedding.cosine(&b.embedding);
        let search = started.elapsed();
        self.metrics.record(Stage::Search, search);
        self.metrics.record(Stage::EndToEnd, total);
        Verdict {
            similarity,
            same: similarity >= self.config.threshold,
            threshold: self.config.threshold,
            paths: [a.path, b.path],
            timings: Timings {
                queue: ta.queue.max(tb.queue),
                prepare: ta.prepare.max(tb.prepare),
                batch_wait: ta.batch_wait.max(tb.batch_wait),
                inference: ta.inference.max(tb.inference),
                search,
                total,
            },
        }
    }

    /// Stops the pool and the batcher, finishing what was accepted.
    pub fn shutdown(&self, timeout: Duration) {
        self.pool.shutdown(timeout);
        self.batcher.shutdown(timeout);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> FaceConfig {
        FaceConfig::from_assets(Path::new("assets"))
    }

    #[test]
    fn the_cpu_backends_keep_their_batching() {
        let c = config();
        for b in [Backend::Tract, Backend::Ort] {
            let r = c.for_backend(b);
            assert_eq!(
                (
                    r.batch_max,
                    r.batch_delay,
                    &r.batch_sizes,
                    r.inference_threads,
                    r.intra_threads
                ),
                (
                    c.batch_max,
                    c.batch_delay,
                    &c.batch_sizes,
                    c.inference_threads,
                    c.intra_threads
                ),
                "{b}"
            );
        }
        // Small batches on the CPU (the cost per face rises above 4 on ONNX
        // Runtime; see benches/backends.rs).
        assert_eq!((c.batch_max, c.batch_delay), (4, Duration::from_millis(2)));
    }

    #[test]
    fn the_gpu_gets_large_batches_a_few_ms_and_two_threads() {
        let c = config();
        let r = c.for_backend(Backend::Cuda);
        assert_eq!(r.batch_max, 256);
        assert_eq!(r.batch_delay, Duration::from_millis(4));
        assert_eq!(r.inference_threads, 2);
        assert_eq!(r.intra_threads, 1);
        assert_eq!(r.batch_sizes, vec![1, 8, 32, 64, 128, 256]);
        // Preparation is untouched: it stays on the CPU pool.
        assert_eq!((r.workers, r.queue), (c.workers, c.queue));
        // The plans the model is loaded with are the ones it runs.
        assert_eq!(c.embed_settings().cuda_batch_sizes, r.batch_sizes);
    }

    #[test]
    fn gpu_plan_sizes_end_at_batch_max() {
        let mut g = GpuBatching {
            batch_max: 100,
            ..GpuBatching::default()
        };
        assert_eq!(g.plan_sizes(), vec![1, 8, 32, 64, 100]);
        g.batch_max = 0;
        assert_eq!(g.plan_sizes(), vec![1]);
        g.batch_max = 512;
        g.batch_sizes = vec![0, 512, 300, 8, 8];
        assert_eq!(g.plan_sizes(), vec![1, 8, 300, 512]);
    }
}
