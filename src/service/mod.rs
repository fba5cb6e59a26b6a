//! `FaceService`, the one front door: the pool, the batcher, the face
//! pipeline and the gallery behind admission, deadlines and every
//! operation (verify, verify-batch, identify, embed, enroll, remove,
//! review), in async and blocking forms.
//!
//! - **Admission** ([`admission`]): a request asks once, before any of its
//!   images is decoded, for a permit for its faces and bytes: refused at
//!   once when full ([`Call::refuse_when_full`], HTTP's 429), or waiting in
//!   a fair line (NATS jobs, the command line). The pool and the batcher
//!   keep bounds of their own only as a backstop.
//! - **Deadlines**: a call's deadline drops its work not yet started and
//!   ends the call with [`ErrorKind::Deadline`], woken by a timer, not by
//!   polling.
//! - **Errors**: one [`ServiceError`] with a transport-neutral
//!   [`ErrorKind`] that each edge maps once.
//!
//! Decoding, detection and alignment run as pool jobs (each worker owns a
//! detector state); faces go to the batcher, whose inference threads each
//! own an embedding state (`pipeline`). No pool worker ever waits for the
//! batcher. The service knows nothing of HTTP or NATS.

pub mod admission;
pub mod budget;
mod config;
mod deadline;
pub mod dedup;
mod error;
pub mod limit;
mod ops;
mod people;
mod pipeline;
mod results;
mod search;
#[cfg(feature = "serde")]
pub mod wire;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::batch::{BatchPolicy, Batcher};
use crate::face::{BackendChoice, DetectModels, EmbedModel, FaceError};
use crate::gallery::{GalleryError, GalleryFile, GalleryStore, StoreStatus};
use crate::index::{Index, IndexError, Vectors};
use crate::metrics::Metrics;
use crate::pool::{self, Pool, ScalePolicy};

pub use self::admission::{Admission, AdmissionStats, AdmitError, Cost, Permit};
pub use self::budget::{Pins, Split};
pub use self::config::{Batching, FaceConfig};
pub use self::dedup::{ImageKey, Recent};
pub use self::error::{ErrorKind, ServiceError, StartError};
pub use self::ops::{block_on, MAX_K};
pub use self::people::{check_id, check_meta, KEYS_KEPT, MAX_ID_BYTES, MAX_META_BYTES, MAX_PAGE};
pub use self::pipeline::{Embedded, FaceResult, ImageSource, PendingFace, PendingImage, Queued, Timings};
pub use self::results::{
    BatchVerdict, Call, FrameVerdict, Identification, Identifications, PeoplePage, Person, Review,
    ReviewMode, ReviewRequest, TargetVerdict, Verdict,
};

use self::pipeline::{Finder, WorkerState};

/// The face service. Clones share the pool, the batcher, the admission and
/// the gallery.
#[derive(Clone)]
pub struct FaceService {
    pool: Pool<WorkerState>,
    batcher: Batcher<Queued, Embedded>,
    /// The detector's thread, where frames share detector runs (none: each
    /// preparation worker runs the detector on its own frame).
    finder: Option<Finder>,
    /// The runtime the detector runs on (`tract`, `ort`, `cuda`).
    detect_runtime: &'static str,
    config: Arc<FaceConfig>,
    backend: BackendChoice,
    dim: usize,
    index: Index,
    /// Where the gallery is kept (none: in this process only).
    store: Option<Arc<dyn GalleryStore>>,
    /// Index reads (lookups, listings), off the callers' threads.
    reads: Pool<()>,
    /// Identify's searches, gathered into scans on their own thread.
    searches: Batcher<search::Search, search::Found>,
    /// Gallery changes, one at a time.
    changes: Pool<()>,
    /// Keyed enrolls answered (idempotency).
    keys: Arc<std::sync::Mutex<Recent<String, people::Keyed>>>,
    metrics: Metrics,
    admission: Admission,
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
        let dim = model.dim();
        // Detection on the embedder's CPU runtime (ONNX Runtime when it
        // embeds; tract otherwise).
        let det = DetectModels::load_beside(&model, &config.detector, config.landmarks.as_deref())?;
        let metrics = Metrics::new();
        let batching = config.batching(backend.used).clone();
        let policy = BatchPolicy {
            max_items: batching.batch_max.max(1),
            max_weight: None,
            max_delay: batching.batch_delay,
            in_flight: batching.inference_threads.max(1),
        };
        let queue = config.queue.max(1);
        // Admission bounds what is in flight; the queues behind it are a
        // backstop with room for twice that: a request dropped by its
        // caller (a timeout, a disconnect) gives its admission back at
        // once, while its cancelled jobs keep their places until a worker
        // pops them.
        let room = queue.saturating_mul(2);
        // Frames share detector runs on a thread of their own, or each
        // preparation worker runs the detector on its own frame.
        let (finder, detect_runtime) = match batching.detect_batch {
            0 => None,
            _ => Self::finder(&config, &model, &batching, room)?,
        }
        .map_or((None, det.runtime()), |(f, runtime)| (Some(f), runtime));
        let batch_metrics = metrics.clone();
        let batcher = Batcher::builder(policy)
            .queue_capacity(room)
            .thread_name("face-infer")
            .build(move |_| {
                Ok::<_, FaceError>(pipeline::handler(model.embedder()?, batch_metrics.clone()))
            })?;
        let workers = config.workers.max(1);
        let mut pool = Pool::builder()
            .capacity(workers)
            .queue_capacity(room)
            .nonblocking(true)
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
                    downstream_high_watermark: Some(batching.round()),
                    ..ScalePolicy::new(1, workers)
                };
                pool.min_workers(1)
                    .autoscale(policy)
                    .downstream(move || gauge.queued_weight())
            }
        };
        let pool = pool.build()?;
        // Index reads on as many threads as cores (a large scan splits
        // itself over rayon's threads besides), changes on one; both with
        // bounded queues that refuse at once.
        let reads = Pool::builder()
            .capacity(budget::cores())
            .queue_capacity(256)
            .nonblocking(true)
            .thread_name("face-index")
            .build()?;
        let changes = Pool::builder()
            .capacity(1)
            .queue_capacity(256)
            .nonblocking(true)
            .thread_name("face-gallery")
            .build()?;
        let searches = search::batcher(room)?;
        let bytes = config.max_bytes.max(1);
        // The faces limit adapts to the latency target (from a face per
        // inference thread to the queue, starting at a batch per inference
        // thread), or is the queue.
        let admission = match config.latency_target {
            Some(target) => {
                let threads = batching.inference_threads.max(1);
                let policy = limit::LimitPolicy::new(target, threads, queue).starting_at(batching.round());
                Admission::adaptive(policy, bytes)
            }
            None => Admission::new(Cost::new(queue, bytes), Cost::new(queue, bytes)),
        };
        Ok(Self {
            pool,
            batcher,
            finder,
            detect_runtime,
            config: Arc::new(config),
            backend,
            dim,
            index: Index::new(dim).map_err(|e| FaceError::Model(e.to_string()))?,
            store: None,
            reads,
            searches,
            changes,
            keys: Arc::new(std::sync::Mutex::new(Recent::new(people::KEYS_KEPT))),
            metrics,
            admission,
        })
    }

    /// The detector's thread where frames share detector runs (of up to
    /// `batching.detect_batch` frames, gathered for `batching.batch_delay`):
    /// the detector on the GPU with the CUDA backend, else on the
    /// embedder's CPU runtime.
    fn finder(
        config: &FaceConfig,
        model: &EmbedModel,
        batching: &Batching,
        room: usize,
    ) -> Result<Option<(Finder, &'static str)>, StartError> {
        let most = batching.detect_batch.max(1);
        let landmarks = config.landmarks.as_deref();
        let models = match model {
            // Where tract's CUDA runtime cannot take the models, none: each
            // preparation worker then detects on the CPU, as without a GPU
            // (`detect_runtime` says which).
            #[cfg(feature = "cuda")]
            EmbedModel::Cuda(_) => match DetectModels::load_cuda(
                &config.detector,
                landmarks,
                &crate::face::plan_sizes(&batching.batch_sizes, Some(most)),
            ) {
                Ok(m) => m,
                Err(_) => return Ok(None),
            },
            _ => DetectModels::load_beside(model, &config.detector, landmarks)?,
        };
        let policy = BatchPolicy {
            max_items: most,
            max_weight: None,
            max_delay: batching.batch_delay,
            in_flight: 1,
        };
        let find = config.find;
        let runtime = models.runtime();
        // Frames waiting for the detector are held decoded: as many as
        // admission lets in (its faces; not their decoded bytes).
        let finder = Batcher::builder(policy)
            .queue_capacity(room)
            .thread_name("face-detect")
            .build(move |_| Ok::<_, FaceError>(pipeline::finder(models.detector()?, find)))?;
        Ok(Some((finder, runtime)))
    }

    /// The settings.
    pub fn config(&self) -> &FaceConfig {
        &self.config
    }

    /// Length of the embeddings.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The embedding backend that runs, and why `auto` passed over others.
    pub fn backend(&self) -> &BackendChoice {
        &self.backend
    }

    /// Latency histograms of every stage of every call, and batch sizes.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The admission every call goes through (for gauges, and for callers
    /// that pipeline their own images through [`prepare`](Self::prepare)).
    pub fn admission(&self) -> &Admission {
        &self.admission
    }

    /// The index that identify searches and enroll fills (empty at start).
    pub fn index(&self) -> &Index {
        &self.index
    }

    /// Uses `index` from now on (for example one loaded from a file); an
    /// error if its vectors are not this model's length, or if a gallery
    /// store is open (it keeps the index it was opened with).
    pub fn set_index(&mut self, index: Index) -> Result<(), ServiceError> {
        if index.dim() != self.dim {
            return Err(IndexError::WrongDim {
                expected: self.dim,
                got: index.dim(),
            }
            .into());
        }
        if self.store.is_some() {
            return Err(ServiceError::Gallery(
                "a gallery store is open; its index stays".into(),
            ));
        }
        self.index = index;
        Ok(())
    }

    /// Opens the gallery file at `path`: its index is loaded if the file
    /// exists (else the gallery starts empty), and from now on every enroll
    /// and remove is saved to it before it is live and answered. Returns
    /// the people loaded.
    pub fn open_gallery(&mut self, path: &Path) -> Result<usize, ServiceError> {
        self.open_gallery_with(path, Vectors::InMemory)
    }

    /// [`open_gallery`](Self::open_gallery), the loaded vectors kept where
    /// `vectors` says ([`Vectors::InFile`]: in the file, read when a search
    /// needs them; memory holds their 8-bit codes). A save renames a new
    /// file over the path; the file that was loaded stays open (its disk
    /// space is freed when the index lets go of it) for the rows no change moved
    /// into memory.
    pub fn open_gallery_with(&mut self, path: &Path, vectors: Vectors) -> Result<usize, ServiceError> {
        let file = GalleryFile::new(path.to_path_buf());
        let index = match file.load(vectors)? {
            Some(i) => i,
            None => Index::new(self.dim)?,
        };
        self.set_index(index)?;
        self.store = Some(Arc::new(file));
        Ok(self.index.len())
    }

    /// Keeps the gallery in `store` from now on: every enroll and remove
    /// goes through it. `store` must keep [`index`](Self::index) (a replica
    /// made on it, such as [`KvGallery`](crate::gallery::KvGallery)'s); an
    /// error if a store is open already.
    pub fn use_store(&mut self, store: Arc<dyn GalleryStore>) -> Result<(), ServiceError> {
        if self.store.is_some() {
            return Err(ServiceError::Gallery("a gallery store is open already".into()));
        }
        self.store = Some(store);
        Ok(())
    }

    /// Where the gallery is kept and how it stands (`None`: in this process
    /// only).
    pub fn gallery_status(&self) -> Option<StoreStatus> {
        self.store.as_ref().map(|s| s.status())
    }

    /// The pool's counters (decode / detect / align jobs).
    pub fn pool_stats(&self) -> pool::PoolStats {
        self.pool.stats()
    }

    /// The batcher's counters (model runs).
    pub fn batch_stats(&self) -> crate::batch::BatchStats {
        self.batcher.stats()
    }

    /// The runtime the face detector runs on: `tract`, `ort` or `cuda`.
    pub fn detect_runtime(&self) -> &'static str {
        self.detect_runtime
    }

    /// The detector thread's counters (detector runs, each of the frames it
    /// gathered) where frames share detector runs; none where each
    /// preparation worker runs the detector on its own frame.
    pub fn detect_stats(&self) -> Option<crate::batch::BatchStats> {
        self.finder.as_ref().map(Batcher::stats)
    }

    /// Stops admitting: every call from now on is refused with
    /// [`ErrorKind::Unavailable`] (waiters in line included); what was
    /// admitted goes on.
    pub fn close(&self) {
        self.admission.close();
    }

    /// Writes what the gallery store keeps beyond the process (the file,
    /// at shutdown), if one is open.
    pub fn save_gallery(&self) -> Result<(), ServiceError> {
        match &self.store {
            Some(g) => g
                .flush(&self.index)
                .map_err(|e: GalleryError| ServiceError::Gallery(e.to_string())),
            None => Ok(()),
        }
    }

    /// Stops admitting, then stops the pool, the detector's thread and the
    /// batcher, finishing what was accepted.
    pub fn shutdown(&self, timeout: Duration) {
        self.admission.close();
        if let Some(finder) = &self.finder {
            // The pool and the detector's thread hand images to each other:
            // neither stops before the images between them are through.
            // One deadline for the three steps.
            let by = std::time::Instant::now() + timeout;
            let left = || by.saturating_duration_since(std::time::Instant::now());
            while !left().is_zero()
                && (self.pool.waiting() + self.pool.running() > 0 || finder.stats().in_flight() > 0)
            {
                std::thread::sleep(Duration::from_millis(2));
            }
            finder.shutdown(left());
            self.pool.shutdown(left());
        } else {
            self.pool.shutdown(timeout);
        }
        self.batcher.shutdown(timeout);
        self.reads.shutdown(timeout);
        self.searches.shutdown(timeout);
        self.changes.shutdown(timeout);
    }
}
