//! Every operation of the front door, each admitted once, as a whole,
//! before any of its images is decoded, and bounded by its call's deadline:
//! verify, verify-batch, identify, embed, enroll, remove, review, and the
//! gallery's listings.
//!
//! Each is an `async fn` (`*_async`) that awaits the pool's and the
//! batcher's handles and blocks no thread, for async callers (the HTTP API,
//! the NATS consumer), and a blocking form of the same name without the
//! suffix that runs it on the calling thread, waiting in line for room with
//! no deadline (for programs and tests; never call it from a pool worker
//! or an async task). The futures need no particular runtime.

use std::time::Instant;

use super::admission::{AdmitError, Permit};
use super::deadline::{within, Late};
use super::pipeline::{FaceResult, ImageSource, Timings};
use super::results::{
    BatchVerdict, Call, FrameVerdict, Identification, Identifications, Review, ReviewMode, ReviewRequest,
    TargetVerdict, Verdict,
};
use super::search;
use super::{ErrorKind, FaceService, ServiceError};
use crate::face::FaceError;
use crate::metrics::Stage;

/// Closest people an identify may ask for.
pub const MAX_K: usize = 1000;

/// Runs a future to its end on this thread (the blocking forms).
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    pollster::block_on(f)
}

type Embedded = Vec<Result<(FaceResult, Timings), ServiceError>>;
type EmbeddedEach = Vec<Result<Vec<(FaceResult, Timings)>, ServiceError>>;

fn check_k(k: usize) -> Result<usize, ServiceError> {
    if k == 0 || k > MAX_K {
        return Err(ServiceError::request(
            ErrorKind::Malformed,
            "bad_k",
            format!("k must be 1 to {MAX_K}"),
        ));
    }
    Ok(k)
}

/// The `k` closest people of a face in `index`, and the best if it
/// reaches `threshold`; the search is added to `timings`.
fn identify_in(
    index: &crate::index::Index,
    threshold: f32,
    face: &FaceResult,
    k: usize,
    timings: Timings,
) -> Result<Identification, ServiceError> {
    let started = Instant::now();
    let matches = index.search(&face.embedding.0, k)?;
    Ok(identified(threshold, face, matches, timings, started))
}

/// The identification of `face` from its matches; the search started at
/// `started`.
fn identified(
    threshold: f32,
    face: &FaceResult,
    matches: Vec<crate::index::Match>,
    timings: Timings,
    started: Instant,
) -> Identification {
    let best = matches.first().filter(|m| m.similarity >= threshold).cloned();
    Identification {
        best,
        matches,
        threshold,
        path: face.path,
        bbox: face.bbox,
        timings: Timings {
            search: started.elapsed(),
            ..timings
        },
    }
}

fn missing() -> ServiceError {
    ServiceError::request(ErrorKind::Internal, "internal", "an image's result is missing")
}

impl FaceService {
    /// Whether `call` would be admitted now for the least any call costs
    /// (one face), taking nothing; refused as it would be. For an edge that
    /// refuses before it reads a request's body, so that a refusal costs no
    /// parsing. A call that waits in line for room is never refused here.
    pub fn would_admit(&self, call: &Call) -> Result<(), ServiceError> {
        if !call.refuse_when_full || call.permit.is_some() {
            return Ok(());
        }
        let least = super::Cost::new(1, 0);
        Ok(self.admission.would_admit(least, call.deadline)?)
    }

    /// Admits `cost` as the call says: with what it already holds, then at
    /// once or in line until its deadline for the rest.
    async fn admit(&self, cost: super::Cost, call: &mut Call) -> Result<Permit, ServiceError> {
        let mut held = call.permit.take().unwrap_or_else(Permit::none);
        let more = cost.saturating_sub(held.cost());
        if more == super::Cost::default() {
            return Ok(held);
        }
        let rest = if call.refuse_when_full {
            self.admission.try_acquire_by(more, call.deadline)?
        } else {
            match within(call.deadline, self.admission.acquire_by(more, call.deadline)).await {
                Ok(r) => r?,
                Err(Late) => return Err(AdmitError::Timeout.into()),
            }
        };
        held.merge(rest);
        Ok(held)
    }

    /// Admits `images` as a whole, then embeds the largest face of each
    /// (one result per image, in order), all within the call's deadline.
    /// Each result's timings carry the admission wait; `t0` is the call's
    /// start.
    pub(crate) async fn embed_call(
        &self,
        images: Vec<ImageSource>,
        call: &mut Call,
        t0: Instant,
    ) -> Result<Embedded, ServiceError> {
        let images = images.into_iter().map(|i| (i, 1)).collect();
        let each = self.embed_call_up_to(images, call, t0).await?;
        Ok(each
            .into_iter()
            .map(|r| r.and_then(|faces| faces.into_iter().next().ok_or_else(missing)))
            .collect())
    }

    /// [`embed_call`](Self::embed_call) for up to `most` faces of each
    /// image `(image, most)` (largest first), each image admitted for its
    /// `most`.
    async fn embed_call_up_to(
        &self,
        images: Vec<(ImageSource, usize)>,
        call: &mut Call,
        t0: Instant,
    ) -> Result<EmbeddedEach, ServiceError> {
        let cost = images.iter().fold(super::Cost::default(), |c, (i, most)| {
            c.saturating_add(i.cost_up_to(*most))
        });
        let permit = self.admit(cost, call).await?;
        let admission = t0.elapsed();
        let work = self.embed_admitted(images, permit, call.deadline);
        let results = within(call.deadline, work)
            .await
            .map_err(|Late| ServiceError::Deadline)?;
        Ok(results
            .into_iter()
            .map(|r| {
                r.map(|faces| {
                    faces
                        .into_iter()
                        .map(|(f, t)| (f, Timings { admission, ..t }))
                        .collect()
                })
            })
            .collect())
    }

    /// Ends a call's timings: its total from `started`, and its search and
    /// total recorded in the metrics (for callers that pipeline their own
    /// calls, as the operations do).
    pub fn record_call(&self, t: &mut Timings, started: Instant) {
        t.total = started.elapsed();
        self.metrics.record(Stage::Search, t.search);
        self.metrics.record(Stage::EndToEnd, t.total);
    }

    /// The verdict on two embedded faces (their stage timings combined).
    pub fn verdict(&self, a: &FaceResult, b: &FaceResult, ta: Timings, tb: Timings) -> Verdict {
        let started = Instant::now();
        let similarity = a.embedding.cosine(&b.embedding);
        let threshold = self.config.threshold;
        Verdict {
            similarity,
            same: similarity >= threshold,
            threshold,
            paths: [a.path, b.path],
            boxes: [a.bbox, b.bbox],
            timings: Timings {
                search: started.elapsed(),
                ..ta.longest(tb)
            },
        }
    }

    /// Compares the largest faces of two images (1:1 verify). An image
    /// that fails fails the call, naming it (`image 1`, `image 2`).
    pub async fn verify_async(
        &self,
        a: ImageSource,
        b: ImageSource,
        mut call: Call,
    ) -> Result<Verdict, ServiceError> {
        let t0 = Instant::now();
        let mut rs = self.embed_call(vec![a, b], &mut call, t0).await?.into_iter();
        let (fa, ta) = rs
            .next()
            .unwrap_or_else(|| Err(missing()))
            .map_err(|e| e.for_image(1))?;
        let (fb, tb) = rs
            .next()
            .unwrap_or_else(|| Err(missing()))
            .map_err(|e| e.for_image(2))?;
        let mut v = self.verdict(&fa, &fb, ta, tb);
        self.record_call(&mut v.timings, t0);
        Ok(v)
    }

    /// [`verify_async`](Self::verify_async), blocking.
    pub fn verify(&self, a: ImageSource, b: ImageSource) -> Result<Verdict, ServiceError> {
        block_on(self.verify_async(a, b, Call::wait()))
    }

    /// One source face against many targets, each embedded once and all
    /// admitted together. The source failing fails the call (`image 0`); a
    /// target failing is that target's answer.
    pub async fn verify_batch_async(
        &self,
        source: ImageSource,
        targets: Vec<ImageSource>,
        mut call: Call,
    ) -> Result<BatchVerdict, ServiceError> {
        let t0 = Instant::now();
        let mut images = Vec::with_capacity(targets.len() + 1);
        images.push(source);
        images.extend(targets);
        let mut rs = self.embed_call(images, &mut call, t0).await?.into_iter();
        let (src, ts) = rs
            .next()
            .unwrap_or_else(|| Err(missing()))
            .map_err(|e| e.for_image(0))?;
        let mut timings = ts;
        timings.search = std::time::Duration::ZERO;
        let targets = rs
            .map(|r| {
                r.map(|(t, tt)| {
                    let v = self.verdict(&src, &t, ts, tt);
                    let search = timings.search + v.timings.search;
                    timings = Timings {
                        search,
                        ..timings.longest(v.timings)
                    };
                    TargetVerdict {
                        similarity: v.similarity,
                        same: v.same,
                        path: t.path,
                    }
                })
            })
            .collect();
        self.record_call(&mut timings, t0);
        Ok(BatchVerdict {
            targets,
            source: src.path,
            threshold: self.config.threshold,
            timings,
        })
    }

    /// [`verify_batch_async`](Self::verify_batch_async), blocking.
    pub fn verify_batch(
        &self,
        source: ImageSource,
        targets: Vec<ImageSource>,
    ) -> Result<BatchVerdict, ServiceError> {
        block_on(self.verify_batch_async(source, targets, Call::wait()))
    }

    /// The embedding of the largest face of an image.
    pub async fn embed_async(
        &self,
        src: ImageSource,
        mut call: Call,
    ) -> Result<(FaceResult, Timings), ServiceError> {
        let t0 = Instant::now();
        let (face, mut t) = self
            .embed_call(vec![src], &mut call, t0)
            .await?
            .into_iter()
            .next()
            .unwrap_or_else(|| Err(missing()))?;
        self.record_call(&mut t, t0);
        Ok((face, t))
    }

    /// [`embed_async`](Self::embed_async), blocking.
    pub fn embed(&self, src: ImageSource) -> Result<(FaceResult, Timings), ServiceError> {
        block_on(self.embed_async(src, Call::wait()))
    }

    /// The embeddings of the largest face of each image, admitted as a
    /// whole (their faces share model runs): one result per image, in
    /// order; an `Err` for the call as a whole (refused, or past its
    /// deadline).
    pub async fn embed_all_async(
        &self,
        images: Vec<ImageSource>,
        mut call: Call,
    ) -> Result<Embedded, ServiceError> {
        let t0 = Instant::now();
        let mut results = self.embed_call(images, &mut call, t0).await?;
        let total = t0.elapsed();
        for (_, t) in results.iter_mut().flatten() {
            t.total = total;
        }
        Ok(results)
    }

    /// [`embed_all_async`](Self::embed_all_async), blocking.
    pub fn embed_all(&self, images: Vec<ImageSource>) -> Result<Embedded, ServiceError> {
        block_on(self.embed_all_async(images, Call::wait()))
    }

    /// Identify for a face already embedded (for callers that pipeline
    /// their own images): the `k` (1 to [`MAX_K`]) closest people, and the
    /// best of them if it reaches the threshold; `timings` are the face's,
    /// and the search is added to them.
    pub fn identify_face(
        &self,
        face: &FaceResult,
        k: usize,
        timings: Timings,
    ) -> Result<Identification, ServiceError> {
        identify_in(&self.index, self.config.threshold, face, check_k(k)?, timings)
    }

    /// [`identify_face`](Self::identify_face) for several faces, searched
    /// on the search thread with the searches that wait beside them (their
    /// searches all wait at once, so they share scans; a large gallery's
    /// scan never holds an async thread), the answers in order.
    async fn identify_faces_async(
        &self,
        faces: Vec<(FaceResult, Timings)>,
        k: usize,
    ) -> Result<Vec<Identification>, ServiceError> {
        let k = check_k(k)?;
        let started = Instant::now();
        let mut searches = Vec::with_capacity(faces.len());
        for (face, _) in &faces {
            let search = search::Search {
                index: self.index.clone(),
                query: face.embedding.0.clone(),
                k,
            };
            searches.push(self.searches.try_submit(search)?);
        }
        let mut out = Vec::with_capacity(faces.len());
        for ((face, timings), search) in faces.into_iter().zip(searches) {
            let matches = search
                .await
                .map_err(|e| {
                    ServiceError::request(ErrorKind::Internal, "search_failed", format!("search: {e}"))
                })?
                .map_err(ServiceError::Index)?;
            out.push(identified(
                self.config.threshold,
                &face,
                matches,
                timings,
                started,
            ));
        }
        Ok(out)
    }

    /// Who is the largest face of the image? The `k` (1 to [`MAX_K`])
    /// closest people, and the best of them if it reaches the verify
    /// threshold (else unknown).
    pub async fn identify_async(
        &self,
        src: ImageSource,
        k: usize,
        call: Call,
    ) -> Result<Identification, ServiceError> {
        let ids = self.identify_up_to(src, k, call, 1).await?;
        let mut id = ids.faces.into_iter().next().ok_or_else(missing)?;
        id.timings = ids.timings;
        Ok(id)
    }

    /// [`identify_async`](Self::identify_async), blocking.
    pub fn identify(&self, src: ImageSource, k: usize) -> Result<Identification, ServiceError> {
        block_on(self.identify_async(src, k, Call::wait()))
    }

    /// Who are the faces of the image? Each face, largest first, up to the
    /// configured [`max_faces`](super::FaceConfig::max_faces), identified
    /// as [`identify_async`](Self::identify_async) identifies the largest.
    /// The image is admitted for `max_faces` faces and gives back those it
    /// does not have once they are found. No face at all fails the call
    /// (`no_face`).
    pub async fn identify_all_async(
        &self,
        src: ImageSource,
        k: usize,
        call: Call,
    ) -> Result<Identifications, ServiceError> {
        self.identify_up_to(src, k, call, self.max_faces()).await
    }

    /// Identifies up to `most` faces of the image (the largest), the image
    /// admitted for `most`; the call's timings are the longest face's.
    async fn identify_up_to(
        &self,
        src: ImageSource,
        k: usize,
        mut call: Call,
        most: usize,
    ) -> Result<Identifications, ServiceError> {
        let t0 = Instant::now();
        check_k(k)?;
        let faces = self
            .embed_call_up_to(vec![(src, most)], &mut call, t0)
            .await?
            .into_iter()
            .next()
            .unwrap_or_else(|| Err(missing()))?;
        let faces = self.identify_faces_async(faces, k).await?;
        let mut timings = faces
            .iter()
            .map(|f| f.timings)
            .reduce(Timings::longest)
            .unwrap_or_default();
        self.record_call(&mut timings, t0);
        Ok(Identifications {
            faces,
            threshold: self.config.threshold,
            timings,
        })
    }

    /// [`identify_all_async`](Self::identify_all_async), blocking.
    pub fn identify_all(&self, src: ImageSource, k: usize) -> Result<Identifications, ServiceError> {
        block_on(self.identify_all_async(src, k, Call::wait()))
    }

    /// Faces of one image that the operations over every face take
    /// ([`FaceConfig::max_faces`](super::FaceConfig::max_faces), within 1
    /// to [`MAX_FACES`](crate::face::MAX_FACES)): what admitting such an
    /// image costs.
    pub fn max_faces(&self) -> usize {
        self.config.max_faces.clamp(1, crate::face::MAX_FACES)
    }

    /// Reviews a video's frames, all admitted together: with a reference
    /// face, does every frame with a face show that person (and at least
    /// one frame have a face)? Without one, is anyone of the gallery in a
    /// frame? A frame without a face is an answer, not a failure; any other
    /// failing image fails the call (frames from 0, then the reference).
    pub async fn review_async(&self, req: ReviewRequest, mut call: Call) -> Result<Review, ServiceError> {
        let t0 = Instant::now();
        let ReviewRequest {
            video,
            frames,
            reference,
            all_faces,
        } = req;
        let n = frames.len();
        if n == 0 {
            return Err(ServiceError::request(
                ErrorKind::Malformed,
                "no_images",
                "a review needs frames",
            ));
        }
        let mode = if reference.is_some() {
            ReviewMode::Reference
        } else {
            ReviewMode::Gallery
        };
        // Every face of each frame when asked; the reference's largest
        // only.
        let most = if all_faces { self.max_faces() } else { 1 };
        let mut images: Vec<_> = frames.into_iter().map(|f| (f, most)).collect();
        images.extend(reference.map(|r| (r, 1)));
        let mut results = self.embed_call_up_to(images, &mut call, t0).await?;
        let reference = match mode {
            ReviewMode::Reference => Some(
                results
                    .pop()
                    .unwrap_or_else(|| Err(missing()))
                    .and_then(|faces| faces.into_iter().next().ok_or_else(missing))
                    .map_err(|e| e.for_image(n))?,
            ),
            ReviewMode::Gallery => None,
        };
        // Each frame's faces; none is an answer, any other failure fails
        // the call.
        let mut frames = Vec::with_capacity(n);
        for (i, r) in results.into_iter().enumerate() {
            frames.push(match r {
                Ok(faces) => faces,
                Err(ServiceError::Face(FaceError::NoFace)) => Vec::new(),
                Err(e) => return Err(e.for_image(i)),
            });
        }
        let mut timings = reference.as_ref().map(|r| r.1).unwrap_or_default();
        let mut verdicts = Vec::with_capacity(n);
        match &reference {
            Some((rf, rt)) => {
                for faces in frames {
                    let closest = faces
                        .iter()
                        .map(|(face, t)| self.verdict(rf, face, *rt, *t))
                        .max_by(|a, b| a.similarity.total_cmp(&b.similarity));
                    let Some(v) = closest else {
                        verdicts.push(FrameVerdict::NoFace);
                        continue;
                    };
                    let search = timings.search + v.timings.search;
                    timings = Timings {
                        search,
                        ..timings.longest(v.timings)
                    };
                    verdicts.push(FrameVerdict::Reference {
                        similarity: v.similarity,
                        same: v.same,
                    });
                }
            }
            None => {
                // Every face of every frame searched at once.
                let counts: Vec<usize> = frames.iter().map(Vec::len).collect();
                let faces = frames.into_iter().flatten().collect();
                let mut found = self.identify_faces_async(faces, 1).await?.into_iter();
                for c in counts {
                    if c == 0 {
                        verdicts.push(FrameVerdict::NoFace);
                        continue;
                    }
                    let mut people: Vec<crate::index::Match> = Vec::new();
                    for id in found.by_ref().take(c) {
                        timings = timings.longest(id.timings);
                        people.extend(id.best);
                    }
                    people.sort_by(|a, b| b.similarity.total_cmp(&a.similarity));
                    let mut seen = std::collections::HashSet::new();
                    people.retain(|p| seen.insert(p.id.clone()));
                    verdicts.push(FrameVerdict::Gallery {
                        best: people.first().cloned(),
                        people,
                    });
                }
            }
        }
        let (passes, frames_with_face, frames_matched) = Review::decide(mode, &verdicts);
        self.record_call(&mut timings, t0);
        Ok(Review {
            video,
            mode,
            passes,
            frames_with_face,
            frames_matched,
            threshold: self.config.threshold,
            frames: verdicts,
            timings,
        })
    }

    /// [`review_async`](Self::review_async), blocking.
    pub fn review(&self, req: ReviewRequest) -> Result<Review, ServiceError> {
        block_on(self.review_async(req, Call::wait()))
    }
}
