//! Face detection (UltraFace RFB-320) with non-maximum suppression, and the
//! 68-point landmark model reduced to the 5 alignment points.

use std::path::Path;

use image::RgbImage;

use super::model::{self, Plan, State};
use super::resize::Shrinker;
use super::FaceError;

const DET_W: u32 = 320;
const DET_H: u32 = 240;
const LM_SIDE: u32 = 64;

/// One detected face, in image pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Detection {
    /// Left, top, right, bottom.
    pub bbox: [f32; 4],
    /// Face score in [0, 1].
    pub score: f32,
}

impl Detection {
    /// Area in pixels².
    pub fn area(&self) -> f32 {
        (self.bbox[2] - self.bbox[0]).max(0.0) * (self.bbox[3] - self.bbox[1]).max(0.0)
    }
}

/// Intersection over union of two boxes.
pub fn iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let iw = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let ih = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = iw * ih;
    let area = |r: &[f32; 4]| (r[2] - r[0]).max(0.0) * (r[3] - r[1]).max(0.0);
    let union = area(a) + area(b) - inter;
    if union <= 0.0 {
        0.0
    } else {
        inter / union
    }
}

/// Greedy non-maximum suppression: keeps the best-scoring boxes, dropping
/// any that overlaps a kept one by more than `max_iou`.
pub fn nms(dets: Vec<Detection>, max_iou: f32) -> Vec<Detection> {
    nms_at_most(dets, max_iou, usize::MAX)
}

/// [`nms`] that stops once `max` boxes are kept (the best-scoring ones), so
/// its cost is at most candidates × `max` overlap tests.
fn nms_at_most(mut dets: Vec<Detection>, max_iou: f32, max: usize) -> Vec<Detection> {
    dets.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut kept: Vec<Detection> = Vec::new();
    for d in dets {
        if kept.len() >= max {
            break;
        }
        if kept.iter().all(|k| iou(&k.bbox, &d.bbox) <= max_iou) {
            kept.push(d);
        }
    }
    kept
}

/// The most faces found in one image: the [`MAX_FACES`] best-scoring after
/// NMS. A crowd, or an image made to look like one, costs a bounded time
/// (NMS, then one landmark run and one alignment per face) and memory.
/// The service embeds the largest of these, or, where every face is asked
/// for, the largest up to its `max_faces`.
pub const MAX_FACES: usize = 64;

/// The faces [`Detector::detect`] reports from the candidates scoring above
/// its threshold: NMS at `max_iou`, at most [`MAX_FACES`] (the best-scoring),
/// largest first.
pub fn select_faces(dets: Vec<Detection>, max_iou: f32) -> Vec<Detection> {
    let mut kept = nms_at_most(dets, max_iou, MAX_FACES);
    kept.sort_by(|a, b| b.area().total_cmp(&a.area()));
    kept
}

/// A model of the detection stage on the runtime that runs it.
#[derive(Clone)]
enum Net {
    /// Plans for batch sizes, smallest first (1 among them).
    Tract(Vec<(usize, Plan)>),
    /// One session runs any batch (the batch dimension made free).
    #[cfg(feature = "ort")]
    Ort(super::onnxruntime::OrtNet),
    #[cfg(feature = "cuda")]
    Cuda(super::cuda::CudaNet),
}

impl Net {
    fn state(&self) -> Result<NetState, FaceError> {
        Ok(match self {
            Self::Tract(plans) => NetState::Tract(
                plans
                    .iter()
                    .map(|(b, p)| Ok((*b, model::spawn(p)?)))
                    .collect::<Result<_, FaceError>>()?,
            ),
            #[cfg(feature = "ort")]
            Self::Ort(n) => NetState::Ort(n.session()?),
            #[cfg(feature = "cuda")]
            Self::Cuda(n) => NetState::Cuda(n.states()?),
        })
    }

    /// Tract plans of `frame` (the input's shape past the batch) for each
    /// of `batch_sizes` (1 always among them).
    fn tract(path: &Path, frame: &[usize], batch_sizes: &[usize]) -> Result<Self, FaceError> {
        model::plan_sizes(batch_sizes, None)
            .into_iter()
            .map(|b| Ok((b, model::load(path, &model::batch_shape(b, frame))?)))
            .collect::<Result<_, _>>()
            .map(Self::Tract)
    }
}

/// One thread's running state of a [`Net`].
enum NetState {
    Tract(Vec<(usize, State)>),
    #[cfg(feature = "ort")]
    Ort(super::onnxruntime::OrtNetSession),
    #[cfg(feature = "cuda")]
    Cuda(Vec<super::cuda::PlannedState>),
}

impl NetState {
    /// Runs `n` inputs of shape `frame` (one after the other in `data`);
    /// answers each input's outputs, flat, each with its shape (batch 1).
    fn run(&mut self, frame: &[usize], data: &[f32], n: usize) -> Result<Vec<Vec<model::Output>>, FaceError> {
        let per: usize = frame.iter().product();
        if per == 0 || data.len() != n * per {
            return Err(FaceError::Model(format!(
                "{} values for {n} inputs of {frame:?}",
                data.len()
            )));
        }
        match self {
            Self::Tract(states) => run_planned(states, frame, data, n, model::run),
            #[cfg(feature = "ort")]
            Self::Ort(s) => {
                let mut each = vec![Vec::new(); n];
                split_outputs(s.run(&model::batch_shape(n, frame), data)?, n, &mut each)?;
                Ok(each)
            }
            #[cfg(feature = "cuda")]
            Self::Cuda(states) => run_planned(states, frame, data, n, |s, shape, d| {
                model::run(&mut **s, shape, d)
            }),
        }
    }
}

/// Runs `n` inputs on plans of fixed batch sizes ([`model::schedule`]):
/// pieces padded with zeros up to their plan's size.
fn run_planned<S>(
    states: &mut [(usize, S)],
    frame: &[usize],
    data: &[f32],
    n: usize,
    mut run: impl FnMut(&mut S, &[usize], &[f32]) -> Result<Vec<model::Output>, FaceError>,
) -> Result<Vec<Vec<model::Output>>, FaceError> {
    let per: usize = frame.iter().product();
    let sizes: Vec<usize> = states.iter().map(|s| s.0).collect();
    let mut each = Vec::with_capacity(n);
    let mut rest = data;
    let mut padded = Vec::new();
    for (index, take) in model::schedule(&sizes, n) {
        let (now, later) = rest.split_at(take * per);
        rest = later;
        let (b, state) = &mut states[index];
        let input = if *b == take {
            now
        } else {
            padded.clear();
            padded.extend_from_slice(now);
            padded.resize(*b * per, 0.0);
            &padded[..]
        };
        let mut part = vec![Vec::new(); *b];
        split_outputs(run(state, &model::batch_shape(*b, frame), input)?, *b, &mut part)?;
        part.truncate(take);
        each.extend(part);
    }
    Ok(each)
}

/// Splits each output of a run of `b` inputs along its first dimension
/// into `each` (one entry per input); a run of one input keeps its outputs
/// as they are.
fn split_outputs(
    outs: Vec<model::Output>,
    b: usize,
    each: &mut [Vec<model::Output>],
) -> Result<(), FaceError> {
    if b == 1 {
        // One input: its outputs as they are, whatever their shapes.
        if let Some(first) = each.first_mut() {
            *first = outs;
        }
        return Ok(());
    }
    for (shape, flat) in outs {
        if b == 0 || shape.first() != Some(&b) || !flat.len().is_multiple_of(b) {
            return Err(FaceError::BadOutput(format!(
                "an output of shape {shape:?} for a batch of {b}"
            )));
        }
        let per = flat.len() / b;
        let one = model::batch_shape(1, &shape[1..]);
        for (i, out) in each.iter_mut().enumerate().take(b) {
            out.push((one.clone(), flat[i * per..(i + 1) * per].to_vec()));
        }
    }
    Ok(())
}

/// The detector's input shape past the batch.
const DET_FRAME: [usize; 3] = [3, DET_H as usize, DET_W as usize];
/// The landmark model's input shape past the batch.
const LM_FRAME: [usize; 3] = [1, LM_SIDE as usize, LM_SIDE as usize];

/// The detection and landmark models, loaded once and shared.
#[derive(Clone)]
pub struct DetectModels {
    detector: Net,
    landmarks: Option<Net>,
}

impl std::fmt::Debug for DetectModels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DetectModels")
            .field("runtime", &self.runtime())
            .field("landmarks", &self.landmarks.is_some())
            .finish_non_exhaustive()
    }
}

impl DetectModels {
    /// Loads the detector, and the landmark model if a path is given, on
    /// tract (the detector planned for one frame a run).
    pub fn load(detector: &Path, landmarks: Option<&Path>) -> Result<Self, FaceError> {
        Self::load_batched(detector, landmarks, &[1])
    }

    /// [`load`](Self::load), the detector planned for runs of each of
    /// `batch_sizes` frames (1 always among them; a run of other sizes is
    /// split and padded, see [`Detector::detect_inputs`]).
    pub fn load_batched(
        detector: &Path,
        landmarks: Option<&Path>,
        batch_sizes: &[usize],
    ) -> Result<Self, FaceError> {
        Ok(Self {
            detector: Net::tract(detector, &DET_FRAME, batch_sizes)?,
            landmarks: landmarks.map(|p| Net::tract(p, &LM_FRAME, &[1])).transpose()?,
        })
    }

    /// [`load`](Self::load) on ONNX Runtime (the detector takes runs of
    /// any number of frames, the landmark model of any number of faces).
    #[cfg(feature = "ort")]
    pub fn load_ort(
        runtime: &super::onnxruntime::OrtRuntime,
        detector: &Path,
        landmarks: Option<&Path>,
    ) -> Result<Self, FaceError> {
        use super::onnxruntime::OrtNet;
        Ok(Self {
            detector: Net::Ort(OrtNet::load_batchable(runtime, detector)?),
            landmarks: landmarks
                .map(|p| OrtNet::load_batchable(runtime, p).map(Net::Ort))
                .transpose()?,
        })
    }

    /// Both models on the GPU (tract's CUDA runtime): the detector with a
    /// plan for each of `batch_sizes` frames, the landmark model for as
    /// many faces.
    #[cfg(feature = "cuda")]
    pub fn load_cuda(
        detector: &Path,
        landmarks: Option<&Path>,
        batch_sizes: &[usize],
    ) -> Result<Self, FaceError> {
        use super::cuda::CudaNet;
        Ok(Self {
            detector: Net::Cuda(CudaNet::load(detector, &DET_FRAME, batch_sizes)?),
            landmarks: landmarks
                .map(|p| CudaNet::load(p, &LM_FRAME, batch_sizes).map(Net::Cuda))
                .transpose()?,
        })
    }

    /// The models on the CPU runtime of `embedder`: ONNX Runtime when the
    /// embeddings run on it (several times faster than tract), else tract
    /// (the preparation workers' models with the CUDA backend too; its
    /// batched detection runs on [`load_cuda`](Self::load_cuda)'s).
    pub fn load_beside(
        embedder: &super::backend::EmbedModel,
        detector: &Path,
        landmarks: Option<&Path>,
    ) -> Result<Self, FaceError> {
        match embedder {
            #[cfg(feature = "ort")]
            super::backend::EmbedModel::Ort(m) => Self::load_ort(m.runtime(), detector, landmarks),
            _ => Self::load(detector, landmarks),
        }
    }

    /// The runtime the detector runs on: `tract`, `ort` or `cuda`.
    pub fn runtime(&self) -> &'static str {
        match self.detector {
            Net::Tract(_) => "tract",
            #[cfg(feature = "ort")]
            Net::Ort(_) => "ort",
            #[cfg(feature = "cuda")]
            Net::Cuda(_) => "cuda",
        }
    }

    /// The detector's nodes left on the CPU where it runs on the GPU
    /// (name and operator; empty elsewhere, or when all are on the GPU).
    pub fn cpu_nodes(&self) -> Vec<String> {
        match &self.detector {
            #[cfg(feature = "cuda")]
            Net::Cuda(n) => n.cpu_nodes().to_vec(),
            _ => Vec::new(),
        }
    }

    /// Run states for one thread.
    pub fn detector(&self) -> Result<Detector, FaceError> {
        Ok(Detector {
            det: self.detector.state()?,
            lm: self.landmarks.as_ref().map(Net::state).transpose()?,
            shrink: Shrinker::default(),
            batch: Vec::new(),
        })
    }
}

/// One thread's detector and landmark states.
pub struct Detector {
    det: NetState,
    lm: Option<NetState>,
    shrink: Shrinker,
    /// A run's input, kept between runs (its capacity reused).
    batch: Vec<f32>,
}

impl std::fmt::Debug for Detector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Detector")
            .field("landmarks", &self.lm.is_some())
            .finish()
    }
}

/// Where the 5 alignment points came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PointsFrom {
    /// The 68-point landmark model.
    Landmarks,
    /// Fixed proportions of the detection box (no landmark model, or its
    /// answer was implausible).
    BoxFallback,
}

/// A frame shrunk for the detector: its input values, and the frame's size
/// (the boxes found are scaled back to it). Frames of any size make inputs
/// of one size, so any frames can share a run.
#[derive(Clone)]
pub struct DetectInput {
    data: Box<[f32]>,
    width: u32,
    height: u32,
}

impl std::fmt::Debug for DetectInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DetectInput")
            .field("width", &self.width)
            .field("height", &self.height)
            .finish_non_exhaustive()
    }
}

impl Detector {
    /// Faces scoring at least `min_score`, after NMS at `max_iou`, at most
    /// [`MAX_FACES`], largest first ([`select_faces`]).
    pub fn detect(
        &mut self,
        img: &RgbImage,
        min_score: f32,
        max_iou: f32,
    ) -> Result<Vec<Detection>, FaceError> {
        let input = self.input(img)?;
        self.detect_inputs(std::slice::from_ref(&input), min_score, max_iou)?
            .pop()
            .ok_or_else(|| FaceError::BadOutput("the detector answered no frame".into()))
    }

    /// `img` shrunk for the detector (the part of [`detect`](Self::detect)
    /// before the model run).
    pub fn input(&mut self, img: &RgbImage) -> Result<DetectInput, FaceError> {
        let small = self.shrink.resize(img, None, DET_W, DET_H)?;
        let plane = (DET_W * DET_H) as usize;
        let mut data = vec![0.0f32; 3 * plane];
        for (i, p) in small.pixels().enumerate() {
            for c in 0..3 {
                data[c * plane + i] = (f32::from(p.0[c]) - 127.0) / 128.0;
            }
        }
        Ok(DetectInput {
            data: data.into_boxed_slice(),
            width: img.width(),
            height: img.height(),
        })
    }

    /// The faces of several frames, found in one model run (or the runs of
    /// the planned batch sizes, see [`DetectModels::load_batched`]): for
    /// each input, what [`detect`](Self::detect) finds on its frame.
    pub fn detect_inputs(
        &mut self,
        inputs: &[DetectInput],
        min_score: f32,
        max_iou: f32,
    ) -> Result<Vec<Vec<Detection>>, FaceError> {
        if inputs.is_empty() {
            return Ok(Vec::new());
        }
        // One frame runs on its own input; several are put side by side.
        let data: &[f32] = match inputs {
            [one] => &one.data,
            _ => {
                self.batch.clear();
                for i in inputs {
                    self.batch.extend_from_slice(&i.data);
                }
                &self.batch
            }
        };
        let outs = self.det.run(&DET_FRAME, data, inputs.len())?;
        inputs
            .iter()
            .zip(outs)
            .map(|(i, o)| faces_of(&o, i.width, i.height, min_score, max_iou))
            .collect()
    }

    /// The 5 alignment points (eyes, nose, mouth corners) of a detected face.
    pub fn five_points(&mut self, img: &RgbImage, det: &Detection) -> ([[f32; 2]; 5], PointsFrom) {
        match self.locate(&[(img, *det)]).pop() {
            Some(l) => (l.points, l.from),
            None => (box_points(&det.bbox), PointsFrom::BoxFallback),
        }
    }

    /// The alignment points of several faces, each in its frame, placed by
    /// one run of the landmark model for all of them (or the runs of its
    /// planned batch sizes); a face whose answer is implausible, or every
    /// face when the run fails, takes the box's points. One answer per
    /// face, in order.
    pub fn locate(&mut self, faces: &[(&RgbImage, Detection)]) -> Vec<Located> {
        let fallback = |det: &Detection| Located {
            det: *det,
            points: box_points(&det.bbox),
            from: PointsFrom::BoxFallback,
        };
        if self.lm.is_none() {
            return faces.iter().map(|(_, d)| fallback(d)).collect();
        }
        // Each face's crop of its frame, shrunk into the run's input.
        self.batch.clear();
        let mut crops = Vec::with_capacity(faces.len());
        for (img, det) in faces {
            let crop = landmark_crop(img, det);
            let small = self.shrink.resize(img, Some(crop), LM_SIDE, LM_SIDE).ok();
            if let Some(small) = &small {
                self.batch.extend(small.pixels().map(|p| {
                    let [r, g, b] = p.0.map(f32::from);
                    (0.299 * r + 0.587 * g + 0.114 * b) / 256.0
                }));
            }
            crops.push(small.map(|_| crop));
        }
        let ran = crops.iter().filter(|c| c.is_some()).count();
        let outs = match (&mut self.lm, ran) {
            (Some(lm), 1..) => lm.run(&LM_FRAME, &self.batch, ran).unwrap_or_default(),
            _ => Vec::new(),
        };
        let mut outs = outs.into_iter();
        faces
            .iter()
            .zip(crops)
            .map(|((_, det), crop)| {
                let points = crop
                    .and_then(|c| outs.next().map(|o| (c, o)))
                    .and_then(|(c, o)| points_of(&o, c, det));
                match points {
                    Some(points) => Located {
                        det: *det,
                        points,
                        from: PointsFrom::Landmarks,
                    },
                    None => fallback(det),
                }
            })
            .collect()
    }
}

/// A detected face with its alignment points.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Located {
    /// The face as the detector found it.
    pub det: Detection,
    /// Eyes, nose, mouth corners, in the frame's pixels.
    pub points: [[f32; 2]; 5],
    /// Where the points came from.
    pub from: PointsFrom,
}

/// The part of the frame the landmark model reads for a face: its box
/// within the frame (left, top, width, height; at least a pixel).
fn landmark_crop(img: &RgbImage, det: &Detection) -> [u32; 4] {
    let [x0, y0, x1, y1] = det.bbox;
    let (bw, bh) = (x1 - x0, y1 - y0);
    let (cx, cy) = (x0.max(0.0) as u32, y0.max(0.0) as u32);
    let cw = (bw as u32).min(img.width().saturating_sub(cx)).max(1);
    let ch = (bh as u32).min(img.height().saturating_sub(cy)).max(1);
    [cx, cy, cw, ch]
}

/// The 5 alignment points from the landmark model's answer for the crop
/// `[cx, cy, cw, ch]` of a face, when there are 68 points and they look
/// like a face in its box.
fn points_of(outs: &[model::Output], [cx, cy, cw, ch]: [u32; 4], det: &Detection) -> Option<[[f32; 2]; 5]> {
    let v = &outs.first()?.1;
    if v.len() != 136 {
        return None;
    }
    let pt = |i: usize| {
        [
            v[2 * i] * cw as f32 + cx as f32,
            v[2 * i + 1] * ch as f32 + cy as f32,
        ]
    };
    let mean = |ids: &[usize]| {
        let s = ids.iter().fold([0.0, 0.0], |a, i| {
            let p = pt(*i);
            [a[0] + p[0], a[1] + p[1]]
        });
        [s[0] / ids.len() as f32, s[1] / ids.len() as f32]
    };
    // 68-point convention: eyes 36-41 and 42-47, nose tip 30, mouth
    // corners 48 and 54 (with the inner corners 60 and 64).
    let points = [
        mean(&[37, 38, 40, 41]),
        mean(&[43, 44, 46, 47]),
        pt(30),
        mean(&[48, 60]),
        mean(&[54, 64]),
    ];
    plausible(&points, &det.bbox).then_some(points)
}

/// The faces of one frame of `w` × `h` from the detector's outputs for it
/// (scores `[., 2]`, boxes `[., 4]`, in parts of the frame).
fn faces_of(
    outs: &[model::Output],
    w: u32,
    h: u32,
    min_score: f32,
    max_iou: f32,
) -> Result<Vec<Detection>, FaceError> {
    let find = |last: usize| outs.iter().find(|(s, _)| s.last() == Some(&last)).map(|(_, v)| v);
    let (Some(scores), Some(boxes)) = (find(2), find(4)) else {
        return Err(FaceError::BadOutput(
            "detector outputs are not [.,2] scores and [.,4] boxes".into(),
        ));
    };
    let n = (scores.len() / 2).min(boxes.len() / 4);
    let (w, h) = (w as f32, h as f32);
    let mut dets = Vec::new();
    for i in 0..n {
        let score = scores[2 * i + 1];
        if score.is_nan() || score < min_score {
            continue;
        }
        let b = &boxes[4 * i..4 * i + 4];
        let bbox = [
            b[0].clamp(0.0, 1.0) * w,
            b[1].clamp(0.0, 1.0) * h,
            b[2].clamp(0.0, 1.0) * w,
            b[3].clamp(0.0, 1.0) * h,
        ];
        if bbox[2] - bbox[0] >= 4.0 && bbox[3] - bbox[1] >= 4.0 {
            dets.push(Detection { bbox, score });
        }
    }
    Ok(select_faces(dets, max_iou))
}

/// Whether 5 points look like a face inside its box: all inside (with a
/// margin), left eye left of the right eye, eyes above the nose above the
/// mouth.
fn plausible(p: &[[f32; 2]; 5], bbox: &[f32; 4]) -> bool {
    let (w, h) = (bbox[2] - bbox[0], bbox[3] - bbox[1]);
    let inside = p.iter().all(|q| {
        q[0].is_finite()
            && q[1].is_finite()
            && q[0] >= bbox[0] - 0.2 * w
            && q[0] <= bbox[2] + 0.2 * w
            && q[1] >= bbox[1] - 0.2 * h
            && q[1] <= bbox[3] + 0.2 * h
    });
    let eyes_y = (p[0][1] + p[1][1]) / 2.0;
    let mouth_y = (p[3][1] + p[4][1]) / 2.0;
    inside && p[0][0] < p[1][0] && p[3][0] < p[4][0] && eyes_y < p[2][1] && p[2][1] < mouth_y
}

/// The documented fallback: the 5 points at the proportions of the ArcFace
/// template within a face box (the box is assumed to frame the face from
/// brow to chin).
pub fn box_points(bbox: &[f32; 4]) -> [[f32; 2]; 5] {
    let (w, h) = (bbox[2] - bbox[0], bbox[3] - bbox[1]);
    let rel = [
        [0.31, 0.40],
        [0.69, 0.40],
        [0.50, 0.60],
        [0.35, 0.80],
        [0.65, 0.80],
    ];
    rel.map(|r| [bbox[0] + r[0] * w, bbox[1] + r[1] * h])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn det(b: [f32; 4], score: f32) -> Detection {
        Detection { bbox: b, score }
    }

    #[test]
    fn iou_and_nms() {
        let a = [0.0, 0.0, 10.0, 10.0];
        assert_eq!(iou(&a, &a), 1.0);
        assert_eq!(iou(&a, &[20.0, 20.0, 30.0, 30.0]), 0.0);
        assert!((iou(&a, &[5.0, 0.0, 15.0, 10.0]) - 1.0 / 3.0).abs() < 1e-6);
        let kept = nms(
            vec![
                det([0.0, 0.0, 10.0, 10.0], 0.8),
                det([1.0, 0.0, 11.0, 10.0], 0.9),
                det([50.0, 50.0, 60.0, 60.0], 0.7),
            ],
            0.4,
        );
        assert_eq!(kept.len(), 2);
        assert_eq!(kept[0].score, 0.9);
        assert_eq!(kept[1].score, 0.7);
    }

    #[test]
    fn box_fallback_points_are_plausible() {
        let b = [10.0, 20.0, 110.0, 140.0];
        assert!(plausible(&box_points(&b), &b));
        let mut swapped = box_points(&b);
        swapped.swap(0, 1);
        assert!(!plausible(&swapped, &b));
    }
}
