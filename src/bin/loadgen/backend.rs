//! What a request is served by, in each mode: the synthetic downstream or
//! the real face model, called directly, from the pool, or through the pool
//! and the batcher.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use facepool::face::{self, Backend, BackendChoice, DetectModels, Detector, EmbedModel, Embedder, FaceError};
use facepool::index::Index;
use facepool::pool::Pool;
use facepool::service::{
    block_on, Call, ErrorKind, FaceConfig, FaceService, ImageSource, Pins, ServiceError,
};

use crate::profile::{ImageSet, Mode, Profile};

/// One request.
#[derive(Debug, Clone)]
pub struct Request {
    /// Which photos (indices into the backend's set); their count is the
    /// request's faces.
    pub images: Vec<usize>,
    /// Identify each face (else verify the first against the rest).
    pub identify: bool,
}

/// How a request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Answered.
    Done,
    /// Refused at admission (`Overloaded`), with when to try again if the
    /// service said.
    Rejected(Option<std::time::Duration>),
    /// Failed, with why.
    Failed(String),
}

/// A mode of a backend: serves one request on the calling thread.
pub trait Target: Send + Sync {
    /// Serves `req` and returns when it is answered or refused.
    fn call(&self, req: &Request) -> Outcome;
    /// Mean faces per downstream call or model run so far, where batching.
    fn mean_batch(&self) -> Option<f64>;
    /// Stops the runtime's threads (after the run).
    fn shutdown(&self) {}
    /// The runtime's own per-stage histograms, where it keeps them.
    fn stages(&self) -> Option<facepool::metrics::Snapshot> {
        None
    }
    /// Counts of its own for the report (a broker's jobs, results, lost).
    fn extra(&self) -> std::collections::BTreeMap<String, serde_json::Value> {
        Default::default()
    }
}

pub use crate::synthetic::synthetic;
use crate::synthetic::{job_outcome, request_queue, workers};

/// The photos of an image set, read into memory once.
pub struct Photos {
    pub bytes: Vec<Arc<[u8]>>,
    /// The person of each photo (its folder), for enrolling.
    pub person: Vec<String>,
}

/// Most photo bytes read (the sets are a few MB).
const MAX_PHOTO_BYTES: u64 = 64 << 20;

impl Photos {
    pub fn load(assets: &Path, set: ImageSet) -> Result<Self, String> {
        let dirs: &[&str] = match set {
            ImageSet::Johns => &["photos/johns"],
            ImageSet::Faces => &["photos/faces"],
            ImageSet::All => &["photos/johns", "photos/faces"],
        };
        let mut files = Vec::new();
        for d in dirs {
            collect_images(&assets.join(d), &mut files)?;
        }
        files.sort();
        let (mut bytes, mut person, mut total) = (Vec::new(), Vec::new(), 0u64);
        for f in files {
            let b = std::fs::read(&f).map_err(|e| format!("cannot read {}: {e}", f.display()))?;
            total += b.len() as u64;
            if total > MAX_PHOTO_BYTES {
                return Err(format!("the photos are over {MAX_PHOTO_BYTES} bytes"));
            }
            bytes.push(Arc::from(b));
            let owner = f
                .parent()
                .and_then(Path::file_name)
                .map(|s| s.to_string_lossy().into_owned());
            person.push(owner.unwrap_or_default());
        }
        if bytes.is_empty() {
            return Err(format!(
                "no photos under {} (run scripts/fetch-assets.sh)",
                assets.join(dirs[0]).display()
            ));
        }
        Ok(Self { bytes, person })
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }
}

fn collect_images(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), String> {
    let rd = std::fs::read_dir(dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
    for entry in rd {
        let p = entry
            .map_err(|e| format!("cannot list {}: {e}", dir.display()))?
            .path();
        if p.is_dir() {
            collect_images(&p, out)?;
        } else if p
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| ["jpg", "jpeg", "png"].contains(&e.to_ascii_lowercase().as_str()))
        {
            out.push(p);
        }
    }
    Ok(())
}

/// What the real-model modes share: the photos, the models, the index the
/// identify requests search, and the settings.
pub struct Real {
    photos: Arc<Photos>,
    config: FaceConfig,
    model: EmbedModel,
    choice: BackendChoice,
    det: DetectModels,
    index: Index,
}

impl Real {
    /// Loads the models and the photos, and enrolls each person's first
    /// photo (with a person) into the index identify requests search.
    /// `backend` and `onnxruntime` choose the embedding backend as
    /// `FaceConfig` does; every mode then runs the one chosen.
    pub fn load(
        assets: &Path,
        profile: &Profile,
        backend: Backend,
        onnxruntime: Option<PathBuf>,
    ) -> Result<Self, String> {
        let photos = Arc::new(Photos::load(assets, profile.request.images)?);
        let mut config = FaceConfig::from_assets(assets);
        config.backend = backend;
        if let Some(lib) = onnxruntime {
            config.onnxruntime = lib;
        }
        let (model, choice) = EmbedModel::load(&config.embed_settings()).map_err(|e| e.to_string())?;
        // The service in pool+batch mode runs what was chosen here.
        config.backend = choice.used;
        let det = DetectModels::load_beside(&model, &config.detector, config.landmarks.as_deref())
            .map_err(|e| e.to_string())?;
        let index = Index::new(model.dim()).map_err(|e| e.to_string())?;
        let real = Self {
            photos,
            config,
            model,
            choice,
            det,
            index,
        };
        let mut state = real.state()?;
        let mut seen = std::collections::HashSet::new();
        for (i, person) in real.photos.person.iter().enumerate() {
            if person.is_empty() || person == "faces" || !seen.insert(person.clone()) {
                continue;
            }
            let e = real_embed(&mut state, &real.photos, &real.config, &[i])?;
            real.index
                .insert(person, &e[0])
                .map_err(|e| format!("enroll {person}: {e}"))?;
        }
        Ok(real)
    }

    pub fn photos(&self) -> usize {
        self.photos.len()
    }

    /// The embedding backend every mode runs.
    pub fn backend(&self) -> &BackendChoice {
        &self.choice
    }

    fn state(&self) -> Result<State, String> {
        Ok(State {
            det: self.det.detector().map_err(|e| e.to_string())?,
            emb: self.model.embedder().map_err(|e| e.to_string())?,
        })
    }

    /// Builds the real-model target of a mode.
    pub fn target(&self, profile: &Profile, mode: Mode) -> Result<Arc<dyn Target>, String> {
        let shared = Shared {
            photos: self.photos.clone(),
            config: self.config.clone(),
            index: self.index.clone(),
        };
        Ok(match mode {
            Mode::Direct => Arc::new(RealDirect {
                shared,
                model: self.model.clone(),
                det: self.det.clone(),
            }),
            Mode::Pool => {
                let (model, det) = (self.model.clone(), self.det.clone());
                let pool = Pool::builder()
                    .capacity(workers(profile))
                    .min_workers(workers(profile))
                    .queue_capacity(request_queue(profile))
                    .nonblocking(true)
                    .thread_name("loadgen-pool")
                    .worker_state(move || -> Result<State, String> {
                        Ok(State {
                            det: det.detector().map_err(|e| e.to_string())?,
                            emb: model.embedder().map_err(|e| e.to_string())?,
                        })
                    })
                    .build()
                    .map_err(|e| format!("pool: {e}"))?;
                Arc::new(RealPool { shared, pool })
            }
            Mode::Http => return Err("an HTTP target is not built here".into()),
            Mode::PoolBatch => {
                let r = &profile.runtime;
                // The same core budget as the service's own defaults.
                let mut c = self.config.clone().with_threads(Pins {
                    workers: r.workers,
                    inference_threads: r.inference_threads,
                    intra_threads: Some(self.config.cpu.intra_threads),
                });
                c.queue = r.queue;
                c.cpu.batch_max = r.batch_max.unwrap_or(c.cpu.batch_max);
                if let Some(ms) = r.batch_delay_ms {
                    c.cpu.batch_delay = Duration::from_secs_f64(ms / 1e3);
                }
                let mut service = FaceService::start(c).map_err(|e| e.to_string())?;
                service.set_index(self.index.clone()).map_err(|e| e.to_string())?;
                Arc::new(RealBatch { shared, service })
            }
        })
    }
}

/// A thread's model states.
struct State {
    det: Detector,
    emb: Box<dyn Embedder>,
}

#[derive(Clone)]
struct Shared {
    photos: Arc<Photos>,
    config: FaceConfig,
    index: Index,
}

/// Decodes, finds and embeds the largest face of each photo, one model run
/// for the request's faces.
fn real_embed(
    state: &mut State,
    photos: &Photos,
    cfg: &FaceConfig,
    images: &[usize],
) -> Result<Vec<Vec<f32>>, String> {
    let mut inputs = Vec::with_capacity(images.len());
    for &i in images {
        let bytes = photos.bytes.get(i).ok_or("no such photo")?;
        let img = face::decode(bytes, &cfg.limits).map_err(|e| e.to_string())?;
        let det = cfg.find.needs_detector(&img).then_some(&mut state.det);
        let found = face::find_faces(&img, det, &cfg.find).map_err(|e| e.to_string())?;
        let first = found
            .into_iter()
            .next()
            .ok_or_else(|| FaceError::NoFace.to_string())?;
        inputs.push(first.input);
    }
    let out = state.emb.embed(&inputs).map_err(|e| e.to_string())?;
    out.into_iter()
        .map(|r| r.map(|e| e.0).map_err(|e| e.to_string()))
        .collect()
}

impl Shared {
    /// Verify or identify, on embeddings.
    fn answer(&self, req: &Request, emb: &[Vec<f32>]) -> Outcome {
        let Some(first) = emb.first() else {
            return Outcome::Failed("no faces".into());
        };
        if req.identify {
            let queries: Vec<&[f32]> = emb.iter().map(Vec::as_slice).collect();
            match self
                .index
                .search_batch(&queries, facepool::index::SearchOptions::top(1))
            {
                Ok(_) => Outcome::Done,
                Err(e) => Outcome::Failed(format!("search: {e}")),
            }
        } else {
            let decisions = emb[1..]
                .iter()
                .filter(|e| face::cosine(first, e) >= self.config.threshold)
                .count();
            std::hint::black_box(decisions);
            Outcome::Done
        }
    }

    fn serve(&self, state: &mut State, req: &Request) -> Outcome {
        match real_embed(state, &self.photos, &self.config, &req.images) {
            Ok(e) => self.answer(req, &e),
            Err(e) => Outcome::Failed(e),
        }
    }
}

/// A thread per request, each with its own model states (the naive service).
struct RealDirect {
    shared: Shared,
    model: EmbedModel,
    det: DetectModels,
}

impl Target for RealDirect {
    fn call(&self, req: &Request) -> Outcome {
        let state = self.det.detector().and_then(|det| {
            Ok(State {
                det,
                emb: self.model.embedder()?,
            })
        });
        match state {
            Ok(mut s) => self.shared.serve(&mut s, req),
            Err(e) => Outcome::Failed(e.to_string()),
        }
    }
    fn mean_batch(&self) -> Option<f64> {
        None
    }
}

struct RealPool {
    shared: Shared,
    pool: Pool<Result<State, String>>,
}

impl Target for RealPool {
    fn call(&self, req: &Request) -> Outcome {
        let (shared, req) = (self.shared.clone(), req.clone());
        let r = self
            .pool
            .try_submit(move |state: &mut Result<State, String>| match state {
                Ok(s) => shared.serve(s, &req),
                Err(e) => Outcome::Failed(e.clone()),
            });
        job_outcome(r).unwrap_or_else(|o| o)
    }
    fn mean_batch(&self) -> Option<f64> {
        None
    }
    fn shutdown(&self) {
        self.pool.shutdown(Duration::from_secs(60));
    }
}

struct RealBatch {
    shared: Shared,
    service: FaceService,
}

impl Target for RealBatch {
    /// Admits every image of the request or none, through the service's
    /// front door: a full service refuses the request at once, having done
    /// no work.
    fn call(&self, req: &Request) -> Outcome {
        let mut images = Vec::with_capacity(req.images.len());
        for &i in &req.images {
            let Some(bytes) = self.shared.photos.bytes.get(i) else {
                return Outcome::Failed("no such photo".into());
            };
            images.push(ImageSource::Bytes(bytes.clone()));
        }
        let fail = |e: ServiceError| match e.kind() {
            ErrorKind::Overloaded => Outcome::Rejected(e.retry_after()),
            _ => Outcome::Failed(e.to_string()),
        };
        let results = match block_on(self.service.embed_all_async(images, Call::refuse_when_full())) {
            Ok(r) => r,
            Err(e) => return fail(e),
        };
        let mut emb = Vec::with_capacity(results.len());
        for r in results {
            match r {
                Ok((f, _)) => emb.push(f.embedding.0),
                Err(e) => return fail(e),
            }
        }
        self.shared.answer(req, &emb)
    }
    fn mean_batch(&self) -> Option<f64> {
        let s = self.service.batch_stats();
        (s.batches > 0).then(|| s.mean_batch())
    }
    fn stages(&self) -> Option<facepool::metrics::Snapshot> {
        Some(self.service.metrics().snapshot())
    }
}
