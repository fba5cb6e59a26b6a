//! The embedding backends side by side, in one run on the same cores:
//! faces/s of the bare model by backend × batch size × threads, then the
//! whole `compare --pairs` pipeline (decode, align, batch, embed, compare
//! on the 1,485 labelled pairs, two faces each) on each backend, as a share
//! of the bare model's rate in the same thread split, measured just before
//! and just after it.
//!
//! ```text
//! bash scripts/fetch-assets.sh && cargo bench --bench backends
//! cargo bench --bench backends -- --seconds 2 --json
//! ```
//!
//! `threads` is the CPU threads one configuration uses: for tract, that
//! many inference threads each with its own state (tract runs a state on
//! one thread); for ONNX Runtime, `states × intra-op threads`.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use facepool::face::backend::onnxruntime_in;
use facepool::face::onnxruntime::{OrtModel, OrtOptions, OrtRuntime};
use facepool::face::{Embedder, FaceInput, TractModel};
use serde_json::{json, Value};

#[path = "common/photos.rs"]
mod photos;

fn assets() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets")
}

/// The 55 labelled chips as model inputs.
fn faces() -> Vec<FaceInput> {
    let root = assets().join("photos/johns");
    let mut files = Vec::new();
    for person in std::fs::read_dir(&root).expect("assets missing: run scripts/fetch-assets.sh") {
        let dir = person.expect("a readable folder").path();
        if dir.is_dir() {
            for f in std::fs::read_dir(&dir).expect("a readable folder") {
                files.push(f.expect("a readable file").path());
            }
        }
    }
    files.sort();
    photos::inputs(&files)
}

/// Faces per second of `states` embedders running batches of `batch` on
/// their own threads for about `secs`.
fn rate<E: Embedder>(mut states: Vec<E>, faces: &[FaceInput], batch: usize, secs: f64) -> f64 {
    // Warm up (first runs allocate and pack weights).
    for e in &mut states {
        e.embed(&faces[..batch]).expect("embeds");
    }
    let until = Instant::now() + Duration::from_secs_f64(secs);
    let t0 = Instant::now();
    let done: usize = std::thread::scope(|s| {
        let runs: Vec<_> = states
            .iter_mut()
            .enumerate()
            .map(|(i, e)| {
                s.spawn(move || {
                    let mut n = 0;
                    let mut at = i * 7;
                    while Instant::now() < until {
                        let start = at % (faces.len() - batch + 1);
                        n += e.embed(&faces[start..start + batch]).expect("embeds").len();
                        at += batch;
                    }
                    n
                })
            })
            .collect();
        runs.into_iter().map(|h| h.join().expect("a bench thread")).sum()
    });
    done as f64 / t0.elapsed().as_secs_f64()
}

/// `compare --pairs` on the labelled pairs with `backend`: faces per second
/// (two per pair) and the backend it reports.
fn pipeline(backend: &str, extra: &[&str]) -> (f64, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_compare"))
        .args(["--pairs"])
        .arg(assets().join("photos/johns/pairs.csv"))
        .args(["--json", "--no-dedup", "--backend", backend])
        .args(extra)
        .output()
        .expect("compare runs");
    assert!(
        out.status.success(),
        "compare failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let summary: Value = text
        .lines()
        .rev()
        .find_map(|l| {
            serde_json::from_str::<Value>(l)
                .ok()
                .filter(|v| v.get("summary").is_some())
        })
        .expect("a summary line");
    let s = &summary["summary"];
    let pairs = s["pairs_per_sec"].as_f64().expect("pairs_per_sec");
    (2.0 * pairs, s["backend"].as_str().unwrap_or("?").to_string())
}

struct Args {
    secs: f64,
    json: bool,
}

fn args() -> Args {
    let mut a = Args {
        secs: 3.0,
        json: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(x) = it.next() {
        match x.as_str() {
            "--seconds" => a.secs = it.next().and_then(|s| s.parse().ok()).unwrap_or(a.secs),
            "--json" => a.json = true,
            // cargo bench passes --bench; nothing else is ours.
            _ => {}
        }
    }
    a
}

/// A backend's bare model, at a given batch size and thread split.
enum Bare {
    Tract(TractModel),
    Ort(OrtRuntime, PathBuf),
}

impl Bare {
    fn name(&self) -> &'static str {
        match self {
            Self::Tract(_) => "tract",
            Self::Ort(..) => "ort",
        }
    }

    /// Faces/s with `states` threads of `intra` intra-op threads each.
    fn rate(&self, faces: &[FaceInput], batch: usize, states: usize, intra: usize, secs: f64) -> f64 {
        match self {
            Self::Tract(m) => {
                let es = (0..states).map(|_| m.embedder().expect("a state")).collect();
                rate(es, faces, batch, secs)
            }
            Self::Ort(rt, model) => {
                let opts = OrtOptions {
                    max_batch: batch,
                    intra_threads: intra,
                    ..OrtOptions::default()
                };
                let m = OrtModel::load(rt, model, opts).expect("ONNX Runtime loads the model");
                let es = (0..states).map(|_| m.embedder().expect("a session")).collect();
                rate(es, faces, batch, secs)
            }
        }
    }
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn main() {
    let a = args();
    let faces = faces();
    let model = assets().join("models/fr_feature.onnx");
    let cores = std::thread::available_parallelism().map_or(2, usize::from);
    let backends = [
        Bare::Tract(TractModel::load(&model, &[1, 8]).expect("tract loads the model")),
        Bare::Ort(
            OrtRuntime::load(&onnxruntime_in(&assets())).expect("ONNX Runtime loads"),
            model.clone(),
        ),
    ];

    // The bare model: backend × batch × (states, intra-op threads).
    let mut rows = Vec::new();
    for b in &backends {
        let (batches, splits): (&[usize], &[(usize, usize)]) = match b {
            Bare::Tract(_) => (&[1, 8], &[(1, 1), (2, 1)]),
            Bare::Ort(..) => (&[1, 2, 4, 8, 32], &[(1, 1), (1, 2), (2, 1)]),
        };
        for &batch in batches {
            for &(states, intra) in splits {
                let fps = b.rate(&faces, batch, states, intra, a.secs);
                if !a.json {
                    eprintln!(
                        "bare  {:<5}  batch {batch:>2}  states {states}  intra {intra}  {fps:>7.1} faces/s",
                        b.name()
                    );
                }
                rows.push(json!({"backend": b.name(), "batch": batch, "states": states,
                                 "intra_threads": intra, "threads": states * intra,
                                 "faces_per_sec": round1(fps)}));
            }
        }
    }

    // The pipeline (every image embedded, `--no-dedup`): one inference
    // thread, and the default, one per core; the preparing workers are the
    // default's, one per core, sharing the cores. Each run sits between two
    // runs of the bare model in the same split, so the share compares like
    // with like, minutes apart at most.
    let mut pipes = Vec::new();
    for infer in [1, cores] {
        for b in &backends {
            let threads = infer.to_string();
            let prep_workers = cores;
            let prep = prep_workers.to_string();
            let extra = ["--inference-threads", &threads, "--threads", &prep];
            // What the service runs: tract a batch-1 plan, face after face;
            // ONNX Runtime batches of up to 4 (the defaults).
            let batch = if matches!(b, Bare::Tract(_)) { 1 } else { 4 };
            let before = b.rate(&faces, batch, infer, 1, a.secs);
            let (fps, used) = pipeline(b.name(), &extra);
            let after = b.rate(&faces, batch, infer, 1, a.secs);
            assert_eq!(used, b.name(), "compare ran another backend");
            let bare = (before + after) / 2.0;
            if !a.json {
                eprintln!(
                    "compare --pairs --backend {} {}: {fps:.1} faces/s; bare model in that split {bare:.1} \
                     faces/s; pipeline/bare {:.0} %",
                    b.name(),
                    extra.join(" "),
                    100.0 * fps / bare
                );
            }
            pipes.push(
                json!({"backend": used, "prep_workers": prep_workers, "inference_threads": infer,
                              "bare_batch": batch, "faces_per_sec": round1(fps),
                              "bare_faces_per_sec": round1(bare),
                              "pipeline_over_bare": (fps / bare * 1000.0).round() / 1000.0}),
            );
        }
    }
    let speedups: Vec<Value> = pipes
        .chunks(2)
        .map(|p| {
            let x = p[1]["faces_per_sec"].as_f64().unwrap_or(0.0) / p[0]["faces_per_sec"].as_f64().unwrap_or(1.0);
            if !a.json {
                eprintln!(
                    "inference threads {}: ort pipeline / tract pipeline {x:.2}x",
                    p[0]["inference_threads"]
                );
            }
            json!({"inference_threads": p[0]["inference_threads"], "ort_over_tract": (x * 100.0).round() / 100.0})
        })
        .collect();
    if a.json {
        println!(
            "{}",
            json!({"cores": cores, "bare": rows, "pipeline": pipes, "pipeline_speedup": speedups})
        );
    }
}
