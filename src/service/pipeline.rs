//! The stages one admitted image goes through: preparation on the pool
//! (decode, find faces, align; each worker owns a detector), then its face
//! in the batcher (each inference thread owns an embedding state), then
//! its timings. The operations (`ops`) drive these; so can a caller that
//! pipelines its own stream of images (`compare --pairs`), with permits it
//! got from [`FaceService::admission`].
//!
//! A stage never blocks a pool worker waiting for another stage: the pool
//! job returns its prepared faces, and the caller (an async task, or a
//! thread of its own) hands them to the batcher and awaits the result.
//!
//! Each image carries its part of the request's permit: its bytes are given
//! back as soon as it is decoded, its face when its model run ends (or when
//! its work is dropped), so admission counts what is really in flight, and
//! a caller that keeps many images going can never block its own releases.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_channel::oneshot;

use super::admission::{Cost, Permit};
use super::{FaceService, ServiceError};
use crate::batch::{self, BatchError, Batcher};
use crate::face::{
    self, DetectInput, Detector, Embedding, FaceError, FaceInput, FacePath, Located, Prepared,
};
use crate::metrics::Stage;
use crate::pool::{self, JobError};

/// An image to compare.
#[derive(Debug, Clone)]
pub enum ImageSource {
    /// A file on disk.
    Path(std::path::PathBuf),
    /// Encoded bytes.
    Bytes(Arc<[u8]>),
}

impl ImageSource {
    /// What admitting it costs: one face, and its bytes when they are held
    /// in memory (a file is read by the worker that decodes it).
    pub fn cost(&self) -> Cost {
        match self {
            ImageSource::Path(_) => Cost::new(1, 0),
            ImageSource::Bytes(b) => Cost::new(1, b.len()),
        }
    }

    /// What admitting it for up to `faces` faces costs (an operation over
    /// every face of the image).
    pub fn cost_up_to(&self, faces: usize) -> Cost {
        Cost::new(faces.max(1), self.cost().bytes)
    }

    /// The decoded image within `limits`; its bytes (held in memory, and in
    /// `permit`) are given back once it is decoded or has failed to be.
    fn decode(self, limits: &face::DecodeLimits, permit: &mut Permit) -> Result<image::RgbImage, FaceError> {
        let img = match &self {
            ImageSource::Path(p) => face::decode_file(p, limits),
            ImageSource::Bytes(b) => face::decode(b, limits),
        };
        drop(self);
        permit.release_bytes();
        img
    }

    /// What admitting all of `images` costs.
    pub fn cost_of(images: &[ImageSource]) -> Cost {
        Self::cost_of_up_to(images, 1)
    }

    /// What admitting all of `images`, each for up to `faces` faces, costs.
    pub fn cost_of_up_to(images: &[ImageSource], faces: usize) -> Cost {
        images
            .iter()
            .fold(Cost::default(), |c, i| c.saturating_add(i.cost_up_to(faces)))
    }
}

/// Time spent per stage of one call.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Timings {
    /// Waiting for admission (in line, or none when admitted at once).
    pub admission: Duration,
    /// Waiting for a pool worker (the longest of the images).
    pub queue: Duration,
    /// Decoding, detection and alignment (the longest of the images).
    pub prepare: Duration,
    /// Waiting for a batch (submission to the start of its model run).
    pub batch_wait: Duration,
    /// The model run of the batch.
    pub inference: Duration,
    /// Comparing the embeddings (verify) or searching the index (identify).
    pub search: Duration,
    /// The whole call, from asking for admission to the answer.
    pub total: Duration,
}

impl Timings {
    /// The stages of several images of one call: the longest of each.
    pub fn longest(self, o: Timings) -> Timings {
        Timings {
            admission: self.admission.max(o.admission),
            queue: self.queue.max(o.queue),
            prepare: self.prepare.max(o.prepare),
            batch_wait: self.batch_wait.max(o.batch_wait),
            inference: self.inference.max(o.inference),
            search: self.search.max(o.search),
            total: self.total.max(o.total),
        }
    }
}

/// A face embedded, with how it got there.
#[derive(Debug, Clone)]
pub struct FaceResult {
    /// The embedding.
    pub embedding: Embedding,
    /// How the face was found.
    pub path: FacePath,
    /// Its box in the decoded image (left, top, right, bottom, pixels, the
    /// EXIF orientation applied), when it was detected.
    pub bbox: Option<[f32; 4]>,
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

/// A face waiting in the batcher, with its part of the permit (given back
/// when the batch has run, or when the item is dropped).
pub struct Queued {
    pub(crate) input: FaceInput,
    pub(crate) permit: Permit,
}

/// An image prepared on the pool.
pub(crate) struct Prep {
    faces: Vec<Prepared>,
    permit: Permit,
    queue: Duration,
    prepare: Duration,
}

impl Prep {
    /// An image's faces, prepared from `started` on after `queue` in line;
    /// the faces of `permit` beyond them given back.
    fn new(faces: Vec<Prepared>, mut permit: Permit, queue: Duration, started: Instant) -> Self {
        permit.release_faces_beyond(faces.len());
        Self {
            faces,
            permit,
            queue,
            prepare: started.elapsed(),
        }
    }
}

/// Pending preparation of one image.
pub struct PendingImage {
    preparing: Preparing,
    deadline: Option<Instant>,
}

/// How an image is being prepared.
enum Preparing {
    /// By one pool job, the detector run on its worker.
    Job(pool::JobHandle<Result<Prep, FaceError>>),
    /// In stages that hand the image on themselves (decoding on the pool,
    /// the detector run shared with other frames, alignment on the pool):
    /// the first stage's job (dropped unstarted, the image is never
    /// decoded), and where the last stage answers.
    Staged {
        first: pool::JobHandle<()>,
        answer: oneshot::Receiver<Result<Prep, ServiceError>>,
    },
}

impl PendingImage {
    /// The prepared image, or why there is none.
    async fn prepared(self) -> Result<Prep, ServiceError> {
        match self.preparing {
            Preparing::Job(handle) => Ok(handle.await??),
            Preparing::Staged { first, answer } => {
                first.await?;
                match answer.await {
                    Ok(prep) => prep,
                    // A later stage dropped it unrun: its deadline passed
                    // in a queue, or the service is stopping.
                    Err(oneshot::Canceled) => Err(match self.deadline {
                        Some(d) if Instant::now() >= d => ServiceError::Deadline,
                        _ => BatchError::Cancelled.into(),
                    }),
                }
            }
        }
    }
}

/// Where a staged image's preparation answers: taken by the stage that
/// answers, or dropped with the last stage holding it (the waiting caller
/// then hears that it was dropped).
struct Reply(std::sync::Mutex<Option<oneshot::Sender<Result<Prep, ServiceError>>>>);

impl Reply {
    fn new() -> (Arc<Self>, oneshot::Receiver<Result<Prep, ServiceError>>) {
        let (tx, rx) = oneshot::channel();
        (Arc::new(Self(std::sync::Mutex::new(Some(tx)))), rx)
    }

    fn send(&self, r: Result<Prep, ServiceError>) {
        let tx = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(tx) = tx {
            // The caller may have gone: then nobody needs the answer.
            let _ = tx.send(r);
        }
    }

    /// Whether nobody waits for the answer any more (the caller dropped
    /// its image, or it was answered): the stages left skip their work.
    fn gone(&self) -> bool {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            .is_none_or(|tx| tx.is_canceled())
    }
}

/// A frame waiting for the detector run it shares with other callers'
/// frames (and the landmark run its faces share with theirs), and what
/// follows (its faces aligned on the pool). Dropped unrun (its deadline
/// passed, the service stopping), the frame's caller hears so.
pub struct Finding {
    input: DetectInput,
    img: image::RgbImage,
    /// Faces to place at most (the largest).
    most: usize,
    reply: Arc<Reply>,
    then: AfterFinding,
}

/// The detector's thread: frames from every caller in one detector run.
pub(crate) type Finder = Batcher<Finding, ()>;

/// What follows a frame's detector and landmark runs: its faces aligned.
type AfterFinding = Box<dyn FnOnce(image::RgbImage, Result<Vec<Located>, FaceError>) + Send>;

/// The handler of the detector's thread: one detector run for the frames of
/// a batch whose callers still wait, one landmark run for the faces found,
/// then each frame handed on.
pub(crate) fn finder(
    mut detector: Detector,
    find: face::FindOptions,
) -> impl FnMut(Vec<Finding>) -> Result<Vec<()>, FaceError> {
    move |items: Vec<Finding>| {
        let n = items.len();
        let (inputs, live): (Vec<DetectInput>, Vec<_>) = items
            .into_iter()
            .filter(|f| !f.reply.gone())
            .map(|f| (f.input, (f.img, f.most, f.then)))
            .unzip();
        match detector.detect_inputs(&inputs, find.min_score, find.max_iou) {
            Ok(found) => {
                // Every frame's faces (up to its `most`) in one landmark run.
                let mut faces = Vec::new();
                let mut counts = Vec::with_capacity(live.len());
                for ((img, most, _), dets) in live.iter().zip(found) {
                    let dets = face::largest(dets, *most);
                    counts.push(dets.len());
                    faces.extend(dets.into_iter().map(|d| (img, d)));
                }
                let mut located = detector.locate(&faces).into_iter();
                drop(faces);
                for ((img, _, then), take) in live.into_iter().zip(counts) {
                    then(img, Ok(located.by_ref().take(take).collect()));
                }
            }
            Err(e) => {
                for (img, _, then) in live {
                    then(img, Err(e.clone()));
                }
            }
        }
        Ok(vec![(); n])
    }
}

/// Pending embedding of one image's face (a batch item).
pub struct PendingFace {
    handle: batch::BatchHandle<Embedded>,
    path: FacePath,
    bbox: Option<[f32; 4]>,
    queue: Duration,
    prepare: Duration,
    submitted: Instant,
}

/// A pool worker's state: its detector, or why it has none.
pub(crate) type WorkerState = Result<Detector, FaceError>;

impl FaceService {
    /// Starts decoding and finding the faces of an image on the pool,
    /// holding `permit` (its part of an admitted request: see
    /// [`ImageSource::cost`]); not started by `deadline`, the work is
    /// dropped. The pool refuses at once when its queue (a backstop behind
    /// admission) is full.
    pub fn prepare(
        &self,
        src: ImageSource,
        permit: Permit,
        deadline: Option<Instant>,
    ) -> Result<PendingImage, ServiceError> {
        self.prepare_up_to(src, permit, deadline, 1)
    }

    /// [`prepare`](Self::prepare), finding up to `most` faces (the largest;
    /// see [`face::find_faces_up_to`]). `permit` holds a face for each
    /// ([`ImageSource::cost_up_to`]); those the image does not have are
    /// given back as soon as its faces are found.
    pub fn prepare_up_to(
        &self,
        src: ImageSource,
        permit: Permit,
        deadline: Option<Instant>,
        most: usize,
    ) -> Result<PendingImage, ServiceError> {
        if let Some(finder) = &self.finder {
            return self.prepare_staged(finder, src, permit, deadline, most);
        }
        let cfg = self.config.clone();
        let submitted = Instant::now();
        let job = move |det: &mut WorkerState| {
            let mut permit = permit;
            let started = Instant::now();
            let queue = started - submitted;
            let img = src.decode(&cfg.limits, &mut permit)?;
            let detector = match det {
                Ok(d) => Some(d),
                // Say why this worker has no detector, if it needs one.
                Err(why) if cfg.find.needs_detector(&img) => return Err(why.clone()),
                Err(_) => None,
            };
            let faces = face::find_faces_up_to(&img, detector, &cfg.find, most)?;
            Ok(Prep::new(faces, permit, queue, started))
        };
        let handle = self.pool.try_submit_with(pool::JobOptions { deadline }, job)?;
        Ok(PendingImage {
            preparing: Preparing::Job(handle),
            deadline,
        })
    }

    /// [`prepare_up_to`](Self::prepare_up_to) where frames share detector
    /// runs: decoding on the pool, the frame then to `finder`, whose thread
    /// runs the detector on the frames it has gathered and the landmark
    /// model on their faces, and hands each frame on to the pool again for
    /// its alignment. No stage waits for another: each hands the image on;
    /// the last answers.
    fn prepare_staged(
        &self,
        finder: &Finder,
        src: ImageSource,
        permit: Permit,
        deadline: Option<Instant>,
        most: usize,
    ) -> Result<PendingImage, ServiceError> {
        let (cfg, pool, finder) = (self.config.clone(), self.pool.clone(), finder.clone());
        let submitted = Instant::now();
        let (reply, answer) = Reply::new();
        let job = move |det: &mut WorkerState| {
            if reply.gone() {
                return;
            }
            let started = Instant::now();
            let queue = started - submitted;
            let mut permit = permit;
            let img = match src.decode(&cfg.limits, &mut permit) {
                Ok(img) => img,
                Err(e) => return reply.send(Err(e.into())),
            };
            if !cfg.find.needs_detector(&img) {
                let prep = face::find_faces_up_to(&img, None, &cfg.find, most)
                    .map(|faces| Prep::new(faces, permit, queue, started));
                return reply.send(prep.map_err(Into::into));
            }
            let detector = match det {
                Ok(d) => d,
                Err(why) => return reply.send(Err(why.clone().into())),
            };
            let input = match detector.input(&img) {
                Ok(i) => i,
                Err(e) => return reply.send(Err(e.into())),
            };
            let then_reply = reply.clone();
            let then = move |img: image::RgbImage, found: Result<Vec<Located>, FaceError>| {
                let last = then_reply.clone();
                let align = move |_: &mut WorkerState| {
                    if last.gone() {
                        return;
                    }
                    // Detached, its panic would reach nobody: answered here.
                    let prep = catch_unwind(AssertUnwindSafe(|| {
                        let located = found?;
                        face::align_located(&img, &located)
                    }));
                    last.send(match prep {
                        Ok(Ok(faces)) => Ok(Prep::new(faces, permit, queue, started)),
                        Ok(Err(e)) => Err(e.into()),
                        Err(_) => {
                            Err(JobError::Panicked("aligning the image's faces panicked".into()).into())
                        }
                    });
                };
                match pool.try_submit_with(pool::JobOptions { deadline }, align) {
                    Ok(h) => h.detach(),
                    Err(e) => then_reply.send(Err(e.into())),
                }
            };
            let item = Finding {
                input,
                img,
                most,
                reply: reply.clone(),
                then: Box::new(then),
            };
            match finder.try_submit_with(item, batch::ItemOptions { deadline }) {
                Ok(h) => h.detach(),
                Err(e) => reply.send(Err(e.into())),
            }
        };
        let first = self.pool.try_submit_with(pool::JobOptions { deadline }, job)?;
        Ok(PendingImage {
            preparing: Preparing::Staged { first, answer },
            deadline,
        })
    }

    /// Waits (on this thread) for an image's preparation and hands its
    /// first (largest) face to the batcher. Never call it from a pool
    /// worker.
    pub fn embed_first(&self, img: PendingImage) -> Result<PendingFace, ServiceError> {
        super::block_on(self.embed_first_async(img))
    }

    /// [`embed_first`](Self::embed_first), awaiting the preparation.
    pub async fn embed_first_async(&self, img: PendingImage) -> Result<PendingFace, ServiceError> {
        let deadline = img.deadline;
        let prep = img.prepared().await?;
        self.submit_face(prep, deadline)
    }

    /// [`embed_first_async`](Self::embed_first_async) for every face the
    /// image was prepared for, largest first.
    pub async fn embed_each_async(&self, img: PendingImage) -> Result<Vec<PendingFace>, ServiceError> {
        let deadline = img.deadline;
        let prep = img.prepared().await?;
        self.submit_faces(prep, deadline, usize::MAX)
    }

    /// Hands a prepared image's first face to the batcher.
    fn submit_face(&self, prep: Prep, deadline: Option<Instant>) -> Result<PendingFace, ServiceError> {
        self.submit_faces(prep, deadline, 1)?
            .pop()
            .ok_or_else(|| FaceError::NoFace.into())
    }

    /// Hands a prepared image's first `most` faces to the batcher, each
    /// with a face of the image's permit (the last with what is left).
    fn submit_faces(
        &self,
        prep: Prep,
        deadline: Option<Instant>,
        most: usize,
    ) -> Result<Vec<PendingFace>, ServiceError> {
        let Prep {
            faces,
            mut permit,
            queue,
            prepare,
        } = prep;
        let n = faces.len().min(most);
        if n == 0 {
            return Err(FaceError::NoFace.into());
        }
        let submitted = Instant::now();
        let mut pending = Vec::with_capacity(n);
        for (i, face) in faces.into_iter().take(n).enumerate() {
            let part = match i + 1 == n {
                true => std::mem::replace(&mut permit, Permit::none()),
                false => permit.split(Cost::new(1, 0)),
            };
            let item = Queued {
                input: face.input,
                permit: part,
            };
            let handle = self
                .batcher
                .try_submit_with(item, batch::ItemOptions { deadline })?;
            pending.push(PendingFace {
                handle,
                path: face.path,
                bbox: face.bbox,
                queue,
                prepare,
                submitted,
            });
        }
        Ok(pending)
    }

    /// Waits (on this thread) for a face's embedding.
    pub fn finish(&self, face: PendingFace) -> Result<(FaceResult, Timings), ServiceError> {
        super::block_on(self.finish_async(face))
    }

    /// [`finish`](Self::finish), awaiting the embedding.
    pub async fn finish_async(&self, mut face: PendingFace) -> Result<(FaceResult, Timings), ServiceError> {
        let e = (&mut face.handle).await?;
        self.finished(e, &face)
    }

    /// A face's embedding with its timings (recorded in the metrics).
    fn finished(&self, e: Embedded, face: &PendingFace) -> Result<(FaceResult, Timings), ServiceError> {
        let PendingFace {
            path,
            bbox,
            queue,
            prepare,
            submitted,
            ..
        } = *face;
        let embedding = e.embedding?;
        let timings = Timings {
            queue,
            prepare,
            batch_wait: e.started.saturating_duration_since(submitted),
            inference: e.inference,
            ..Timings::default()
        };
        let m = &self.metrics;
        m.record(Stage::PoolWait, timings.queue);
        m.record(Stage::Prepare, timings.prepare);
        m.record(Stage::BatchWait, timings.batch_wait);
        m.record(Stage::Inference, timings.inference);
        Ok((
            FaceResult {
                embedding,
                path,
                bbox,
            },
            timings,
        ))
    }

    /// Embeds up to `most` faces (the largest) of each admitted image
    /// `(image, most)`, all in flight at once (their faces share model
    /// runs): one result per image, in order, holding its faces largest
    /// first. `permit` covers them all (each image's
    /// [`cost_up_to`](ImageSource::cost_up_to) its `most`); each image
    /// takes its part. A face the model fails fails its image.
    pub(crate) async fn embed_admitted(
        &self,
        images: Vec<(ImageSource, usize)>,
        mut permit: Permit,
        deadline: Option<Instant>,
    ) -> Vec<Result<Vec<(FaceResult, Timings)>, ServiceError>> {
        let pending: Vec<_> = images
            .into_iter()
            .map(|(src, most)| {
                let part = permit.split(src.cost_up_to(most));
                self.prepare_up_to(src, part, deadline, most)
            })
            .collect();
        drop(permit);
        let mut faces = Vec::with_capacity(pending.len());
        for p in pending {
            faces.push(match p {
                Ok(p) => self.embed_each_async(p).await,
                Err(e) => Err(e),
            });
        }
        let mut out = Vec::with_capacity(faces.len());
        for f in faces {
            out.push(match f {
                Ok(fs) => {
                    // The first failure ends the image; its faces not
                    // awaited yet are dropped (and dropped unrun).
                    let mut done = Vec::with_capacity(fs.len());
                    let mut ended = Ok(());
                    for f in fs {
                        match self.finish_async(f).await {
                            Ok(r) => done.push(r),
                            Err(e) => {
                                ended = Err(e);
                                break;
                            }
                        }
                    }
                    ended.map(|()| done)
                }
                Err(e) => Err(e),
            });
        }
        out
    }
}

/// The batch handler of one inference thread: runs the model on the faces
/// of a batch, gives their permits back, and times the run.
pub(crate) fn handler(
    mut embedder: Box<dyn face::Embedder>,
    metrics: crate::metrics::Metrics,
) -> impl FnMut(Vec<Queued>) -> Result<Vec<Embedded>, FaceError> {
    move |items: Vec<Queued>| {
        let started = Instant::now();
        let batch = items.len();
        metrics.record_batch(batch);
        let (inputs, permits): (Vec<FaceInput>, Vec<Permit>) =
            items.into_iter().map(|q| (q.input, q.permit)).unzip();
        let out = embedder.embed(&inputs);
        drop(permits);
        let inference = started.elapsed();
        Ok(out?
            .into_iter()
            .map(|embedding| Embedded {
                embedding,
                started,
                inference,
                batch,
            })
            .collect())
    }
}
