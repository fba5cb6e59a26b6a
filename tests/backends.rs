//! The two embedding backends on the real model and the 55 labelled photos:
//! ONNX Runtime agrees with tract, and the backend choice falls back or
//! fails clearly when the runtime library is absent or corrupt.
//!
//! Each test runs in its own process (nextest), so each loads ONNX Runtime
//! (a process-wide library) afresh or not at all.
#![cfg(feature = "ort")]

use crate::common;

use std::path::{Path, PathBuf};

use common::{assets, TempDir};
use facepool::face::backend::onnxruntime_in;
use facepool::face::onnxruntime::{OrtModel, OrtOptions, OrtRuntime};
use facepool::face::{
    self, Backend, DecodeLimits, EmbedModel, EmbedSettings, Embedder, Embedding, FaceError, FaceInput,
    FaceMode, FindOptions, DEFAULT_THRESHOLD,
};

fn settings(backend: Backend, library: PathBuf) -> EmbedSettings {
    EmbedSettings {
        backend,
        model: assets().join("models/fr_feature.onnx"),
        onnxruntime: library,
        tract_batch_sizes: vec![1],
        cuda_batch_sizes: vec![1, 8],
        max_batch: 8,
        intra_threads: 1,
    }
}

fn library() -> PathBuf {
    let lib = onnxruntime_in(&assets());
    assert!(
        lib.is_file(),
        "run scripts/fetch-assets.sh (the test command does)"
    );
    lib
}

/// The 55 labelled chips as model inputs, with whose they are.
fn inputs() -> (Vec<String>, Vec<FaceInput>) {
    let opts = FindOptions {
        mode: FaceMode::Aligned,
        ..FindOptions::default()
    };
    let (mut who, mut faces) = (Vec::new(), Vec::new());
    for (name, files) in common::johns() {
        for f in files {
            let img = face::decode_file(&f, &DecodeLimits::default()).unwrap();
            who.push(name.clone());
            faces.push(face::find_faces(&img, None, &opts).unwrap().remove(0).input);
        }
    }
    assert_eq!(faces.len(), 55);
    (who, faces)
}

fn embed_all(e: &mut dyn Embedder, faces: &[FaceInput]) -> Vec<Embedding> {
    let out = e.embed(faces).unwrap();
    assert_eq!(out.len(), faces.len());
    out.into_iter().map(Result::unwrap).collect()
}

/// Index of each face's nearest other face.
fn nearest(embs: &[Embedding]) -> Vec<usize> {
    (0..embs.len())
        .map(|i| {
            (0..embs.len())
                .filter(|j| *j != i)
                .max_by(|a, b| embs[i].cosine(&embs[*a]).total_cmp(&embs[i].cosine(&embs[*b])))
                .unwrap()
        })
        .collect()
}

#[test]
fn ort_and_tract_agree_on_the_labelled_photos() {
    let (who, faces) = inputs();
    let (tract, choice) = EmbedModel::load(&settings(Backend::Tract, library())).unwrap();
    assert_eq!(choice.used, Backend::Tract);
    let (ort, choice) = EmbedModel::load(&settings(Backend::Ort, library())).unwrap();
    assert_eq!(choice.used, Backend::Ort);
    assert_eq!(choice.passed_over, vec![]);
    assert_eq!(ort.backend(), Backend::Ort);
    assert_eq!(ort.dim(), 512);
    assert_eq!(tract.dim(), ort.dim());

    // tract one face at a time; ONNX Runtime in batches of up to 8 (55 =
    // 6 × 8 + 7, so a short batch too).
    let t = embed_all(&mut *tract.embedder().unwrap(), &faces);
    let o = embed_all(&mut *ort.embedder().unwrap(), &faces);
    let worst = t.iter().zip(&o).map(|(a, b)| a.cosine(b)).fold(1.0f32, f32::min);
    assert!(worst >= 0.9999, "lowest tract/ort cosine {worst}");

    // Identical verify decisions on all 1,485 pairs, with both sides
    // actually deciding both ways.
    let (mut same, mut pairs) = (0, 0);
    for i in 0..55 {
        for j in i + 1..55 {
            let dt = t[i].cosine(&t[j]) >= DEFAULT_THRESHOLD;
            let dox = o[i].cosine(&o[j]) >= DEFAULT_THRESHOLD;
            assert_eq!(dt, dox, "pair {i},{j}: tract {dt}, ort {dox}");
            assert_eq!(dox, who[i] == who[j], "pair {i},{j} decided wrongly");
            same += usize::from(dox);
            pairs += 1;
        }
    }
    assert_eq!((same, pairs), (5 * 55, 1485));
    // Identical identify answers: each face's nearest other face.
    assert_eq!(nearest(&t), nearest(&o));
}

#[test]
fn ort_batches_give_the_rows_of_single_runs() {
    let (_, faces) = inputs();
    let rt = OrtRuntime::load(&library()).unwrap();
    let path = assets().join("models/fr_feature.onnx");
    let opts = |max_batch| OrtOptions {
        max_batch,
        ..OrtOptions::default()
    };
    let one = OrtModel::load(&rt, &path, opts(1)).unwrap();
    let many = OrtModel::load(&rt, &path, opts(32)).unwrap();
    assert_eq!(one.embedder().unwrap().batch_sizes(), &[1]);
    let mut e = many.embedder().unwrap();
    assert_eq!(e.batch_sizes(), &[32]);
    let singles = embed_all(&mut one.embedder().unwrap(), &faces[..20]);
    // 20 faces in one run, then the 55 split as 32 + 23.
    let batched = embed_all(&mut e, &faces[..20]);
    for (a, b) in singles.iter().zip(&batched) {
        assert!(a.cosine(b) > 0.99999, "batch row differs: {}", a.cosine(b));
    }
    let all = embed_all(&mut e, &faces);
    assert!(all[19].cosine(&singles[19]) > 0.99999);
    assert!(e.embed(&[]).unwrap().is_empty());
    // A malformed input fails the batch with a clear error.
    let short = FaceInput(vec![0.0; 10].into_boxed_slice());
    match e.embed(&[faces[0].clone(), short]) {
        Err(FaceError::BadOutput(m)) => assert!(m.contains("10 floats"), "{m}"),
        other => panic!("expected BadOutput, got {other:?}"),
    }
}

#[test]
fn auto_falls_back_to_tract_when_the_library_is_absent() {
    let dir = TempDir::new("no-ort");
    let missing = dir.path().join("libonnxruntime.so.1");
    let (m, choice) = EmbedModel::load(&settings(Backend::Auto, missing.clone())).unwrap();
    assert_eq!(m.backend(), Backend::Tract);
    assert_eq!(choice.used, Backend::Tract);
    // Each backend passed over, in the order tried, with its reason: CUDA
    // (the test machines have no GPU, or the build no `cuda` feature), then
    // ONNX Runtime (the library is absent).
    let tried: Vec<Backend> = choice.passed_over.iter().map(|p| p.0).collect();
    assert_eq!(tried, vec![Backend::Cuda, Backend::Ort], "{choice}");
    assert!(choice.passed_over[0].1.contains("CUDA"), "{choice}");
    let why = &choice.passed_over[1].1;
    assert!(why.contains(&missing.display().to_string()), "{why}");
    assert!(
        choice.to_string().starts_with("tract (cuda passed over: "),
        "{choice}"
    );
    assert!(
        choice
            .to_string()
            .contains("; ort passed over: ONNX Runtime library"),
        "{choice}"
    );
    // The fallback embeds.
    let (_, faces) = inputs();
    assert_eq!(embed_all(&mut *m.embedder().unwrap(), &faces[..2]).len(), 2);

    // Asked for explicitly, the same absence is an error naming the file.
    match EmbedModel::load(&settings(Backend::Ort, missing.clone())) {
        Err(FaceError::Runtime { library, message }) => {
            assert_eq!(library, missing.display().to_string());
            assert!(message.contains("no such file"), "{message}");
        }
        other => panic!("expected a runtime error, got {other:?}"),
    }
    // With the library present, auto takes ONNX Runtime.
    let (m, choice) = EmbedModel::load(&settings(Backend::Auto, library())).unwrap();
    assert_eq!((m.backend(), choice.used), (Backend::Ort, Backend::Ort));
    let tried: Vec<Backend> = choice.passed_over.iter().map(|p| p.0).collect();
    assert_eq!(tried, vec![Backend::Cuda], "{choice}");
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn a_corrupt_library_is_a_clear_error_and_auto_falls_back() {
    let dir = TempDir::new("bad-ort");
    // Not an ELF file at all, and an ELF header cut short (a truncated
    // download).
    let garbage = write(dir.path(), "garbage.so", b"this is not a shared library\n");
    let real = std::fs::read(library()).unwrap();
    let truncated = write(dir.path(), "truncated.so", &real[..4096]);
    for bad in [garbage, truncated] {
        match EmbedModel::load(&settings(Backend::Ort, bad.clone())) {
            Err(e @ FaceError::Runtime { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains(&bad.display().to_string()), "{msg}");
                assert!(msg.contains("failed to load"), "{msg}");
            }
            other => panic!("expected a runtime error for {}, got {other:?}", bad.display()),
        }
        let (m, choice) = EmbedModel::load(&settings(Backend::Auto, bad)).unwrap();
        assert_eq!((m.backend(), choice.used), (Backend::Tract, Backend::Tract));
        let ort = choice.passed_over.iter().find(|p| p.0 == Backend::Ort);
        assert!(ort.is_some_and(|p| p.1.contains("failed to load")), "{choice}");
    }
    // Once a library is loaded, another one in the same process is refused
    // by name rather than silently ignored.
    OrtRuntime::load(&library()).unwrap();
    let copy = write(dir.path(), "libonnxruntime.so.1", &real);
    match OrtRuntime::load(&copy) {
        Err(FaceError::Runtime { message, .. }) => assert!(message.contains("already loaded"), "{message}"),
        other => panic!("expected a runtime error, got {other:?}"),
    }
    // The same library again is the same runtime.
    assert_eq!(
        OrtRuntime::load(&library()).unwrap().library(),
        library().canonicalize().unwrap()
    );
}

#[test]
fn a_file_that_is_not_a_model_is_a_model_error_on_ort() {
    let dir = TempDir::new("bad-model");
    let rt = OrtRuntime::load(&library()).unwrap();
    let junk = write(dir.path(), "junk.onnx", &[0xff; 1000]);
    match OrtModel::load(&rt, &junk, OrtOptions::default()) {
        Err(FaceError::Model(m)) => assert!(m.contains("junk.onnx"), "{m}"),
        other => panic!("expected a model error, got {other:?}"),
    }
    // A valid ONNX file that is not an embedding model (the landmark model
    // takes a 1×64×64 grey image): the probe run fails, clearly.
    match OrtModel::load(
        &rt,
        &assets().join("models/fr_landmark.onnx"),
        OrtOptions::default(),
    ) {
        Err(FaceError::Model(m)) => assert!(!m.is_empty()),
        other => panic!("expected a model error, got {other:?}"),
    }
    match OrtModel::load(&rt, &dir.path().join("missing.onnx"), OrtOptions::default()) {
        Err(FaceError::Model(m)) => assert!(m.contains("missing.onnx"), "{m}"),
        other => panic!("expected a model error, got {other:?}"),
    }
}

/// The detector and the landmark model on ONNX Runtime find what they find
/// on tract: on every group photo and labelled photo, the same faces (by
/// box, within a pixel), the same scores (1e-4), the same alignment points
/// (within half a pixel) from the same source.
#[test]
fn detection_on_ort_matches_tract() {
    use facepool::face::DetectModels;
    let det = assets().join("models/fr_detect.onnx");
    let lm = assets().join("models/fr_landmark.onnx");
    let tract = DetectModels::load(&det, Some(&lm)).unwrap();
    let runtime = OrtRuntime::load(&library()).unwrap();
    let ort = DetectModels::load_ort(&runtime, &det, Some(&lm)).unwrap();
    assert_eq!((tract.runtime(), ort.runtime()), ("tract", "ort"));
    let (mut t, mut o) = (tract.detector().unwrap(), ort.detector().unwrap());
    let mut photos: Vec<PathBuf> = std::fs::read_dir(assets().join("photos/faces"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    photos.extend(common::johns().into_iter().flat_map(|(_, files)| files));
    let (mut faces, mut with_landmarks) = (0, 0);
    for path in &photos {
        let img = face::decode_file(path, &DecodeLimits::default()).unwrap();
        let (a, b) = (
            t.detect(&img, 0.7, 0.3).unwrap(),
            o.detect(&img, 0.7, 0.3).unwrap(),
        );
        assert_eq!(a.len(), b.len(), "{}: faces", path.display());
        for (x, y) in a.iter().zip(&b) {
            let off = x
                .bbox
                .iter()
                .zip(&y.bbox)
                .map(|(p, q)| (p - q).abs())
                .fold(0.0, f32::max);
            assert!(
                off <= 1.0,
                "{}: boxes {:?} and {:?}",
                path.display(),
                x.bbox,
                y.bbox
            );
            assert!((x.score - y.score).abs() <= 1e-4, "{}: scores", path.display());
            let ((pa, fa), (pb, fb)) = (t.five_points(&img, x), o.five_points(&img, y));
            assert_eq!(fa, fb, "{}: where the points came from", path.display());
            for (p, q) in pa.iter().zip(&pb) {
                assert!(
                    (p[0] - q[0]).abs() <= 0.5 && (p[1] - q[1]).abs() <= 0.5,
                    "{}: points {pa:?} and {pb:?}",
                    path.display()
                );
            }
            faces += 1;
            with_landmarks += usize::from(fa == face::PointsFrom::Landmarks);
        }
    }
    // Real work was compared: the group photos hold many faces, and the
    // landmark model placed most points.
    assert!(
        faces > 60 && with_landmarks * 2 > faces,
        "{faces} faces, {with_landmarks} by landmarks"
    );
}

/// The detector takes several frames a run (the batch dimension made free
/// on ONNX Runtime; plans of 1 and 4 frames on tract, a run of 5 split
/// into 4 and 1, one of 3 padded to 4) and finds on each frame what a run
/// of that frame alone finds; the landmark model places every face of
/// every frame in one run as it places each alone.
#[test]
fn detector_and_landmark_runs_of_several_find_what_single_runs_find() {
    use facepool::face::DetectModels;
    let det = assets().join("models/fr_detect.onnx");
    let runtime = OrtRuntime::load(&library()).unwrap();
    let mut photos: Vec<PathBuf> = std::fs::read_dir(assets().join("photos/faces"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    photos.sort();
    let frames: Vec<_> = photos
        .iter()
        .map(|p| face::decode_file(p, &DecodeLimits::default()).unwrap())
        .collect();
    let lm = assets().join("models/fr_landmark.onnx");
    for models in [
        DetectModels::load_batched(&det, Some(&lm), &[4]).unwrap(),
        DetectModels::load_ort(&runtime, &det, Some(&lm)).unwrap(),
    ] {
        let mut d = models.detector().unwrap();
        let alone: Vec<_> = frames.iter().map(|f| d.detect(f, 0.7, 0.3).unwrap()).collect();
        let inputs: Vec<_> = frames.iter().map(|f| d.input(f).unwrap()).collect();
        let mut together = Vec::new();
        for run in [&inputs[..5], &inputs[5..8], &inputs[8..]] {
            together.extend(d.detect_inputs(run, 0.7, 0.3).unwrap());
        }
        assert_eq!(together.len(), frames.len());
        let mut faces = 0;
        for (i, (a, b)) in alone.iter().zip(&together).enumerate() {
            assert_eq!(a.len(), b.len(), "{}: frame {i}", models.runtime());
            for (x, y) in a.iter().zip(b) {
                let off = x
                    .bbox
                    .iter()
                    .zip(&y.bbox)
                    .map(|(p, q)| (p - q).abs())
                    .fold(0.0, f32::max);
                assert!(off <= 0.01, "{}: frame {i}: {x:?} and {y:?}", models.runtime());
                assert!((x.score - y.score).abs() <= 1e-5);
                faces += 1;
            }
        }
        assert!(faces > 40, "{}: {faces} faces", models.runtime());
        assert!(d.detect_inputs(&[], 0.7, 0.3).unwrap().is_empty());
        // Every face of every frame placed by one landmark run: the points
        // of a run of that face alone.
        let all: Vec<_> = frames
            .iter()
            .zip(&alone)
            .flat_map(|(f, dets)| dets.iter().map(move |d| (f, *d)))
            .collect();
        let located = d.locate(&all);
        assert_eq!(located.len(), all.len());
        let mut by_landmarks = 0;
        for ((f, det), l) in all.iter().zip(&located) {
            let (points, from) = d.five_points(f, det);
            assert_eq!((l.det, l.from), (*det, from), "{}", models.runtime());
            for (p, q) in points.iter().zip(&l.points) {
                assert!(
                    (p[0] - q[0]).abs() <= 0.01 && (p[1] - q[1]).abs() <= 0.01,
                    "{}: {points:?} and {:?}",
                    models.runtime(),
                    l.points
                );
            }
            by_landmarks += usize::from(from == face::PointsFrom::Landmarks);
        }
        assert!(
            by_landmarks * 2 > all.len(),
            "{}: {by_landmarks} of {}",
            models.runtime(),
            all.len()
        );
        assert!(d.locate(&[]).is_empty());
    }
}
