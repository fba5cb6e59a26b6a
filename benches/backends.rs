//! The embedding backends side by side, in one run on the same cores:
//! faces/s of the bare model by backend × batch size × threads, then the
//! whole `compare --pairs` pipeline (decode, align, batch, embed, compare)
//! on each backend, as a share of that backend's best bare rate.
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
use facepool::face::{self, DecodeLimits, Embedder, FaceInput, FaceMode, FindOptions, TractModel};
use serde_json::{json, Value};

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
    let opts = FindOptions {
        mode: FaceMode::Aligned,
        ..FindOptions::default()
    };
    files
        .iter()
        .map(|f| {
            let img = face::decode_file(f, &DecodeLimits::default()).expect("a photo");
            face::find_faces(&img, None, &opts)
                .expect("a face")
                .remove(0)
                .input
        })
        .collect()
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
        .args(["--json", "--backend", backend])
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

fn main() {
    let a = args();
    let faces = faces();
    let model = assets().join("models/fr_feature.onnx");
    let mut rows = Vec::new();
    let mut push = |backend: &str, batch: usize, states: usize, intra: usize, fps: f64| {
        if !a.json {
            eprintln!("{backend:<6} batch {batch:>2}  states {states}  intra {intra}  {fps:>7.1} faces/s");
        }
        rows.push(json!({"backend": backend, "batch": batch, "states": states,
                         "intra_threads": intra, "threads": states * intra,
                         "faces_per_sec": (fps * 10.0).round() / 10.0}));
    };

    let tract = TractModel::load(&model, &[1, 8, 32]).expect("tract loads the model");
    for batch in [1, 8, 32] {
        for states in [1, 2] {
            let es = (0..states).map(|_| tract.embedder().expect("a state")).collect();
            push("tract", batch, states, 1, rate(es, &faces, batch, a.secs));
        }
    }
    let rt = OrtRuntime::load(&onnxruntime_in(&assets())).expect("ONNX Runtime loads");
    for batch in [1, 8, 32] {
        for (states, intra) in [(1, 1), (1, 2), (2, 1)] {
            let opts = OrtOptions {
                max_batch: batch,
                intra_threads: intra,
                ..OrtOptions::default()
            };
            let m = OrtModel::load(&rt, &model, opts).expect("ONNX Runtime loads the model");
            let es = (0..states).map(|_| m.embedder().expect("a session")).collect();
            push("ort", batch, states, intra, rate(es, &faces, batch, a.secs));
        }
    }
    let best = |backend: &str| {
        rows.iter()
            .filter(|r| r["backend"] == backend)
            .filter_map(|r| r["faces_per_sec"].as_f64())
            .fold(0.0, f64::max)
    };
    let (best_tract, best_ort) = (best("tract"), best("ort"));

    let mut pipes = Vec::new();
    for (backend, extra) in [("tract", &[][..]), ("ort", &[][..])] {
        let (fps, used) = pipeline(backend, extra);
        let raw = if used == "ort" { best_ort } else { best_tract };
        if !a.json {
            eprintln!(
                "compare --pairs --backend {backend} {}: {fps:.1} faces/s = {:.0} % of the bare model's best",
                extra.join(" "),
                100.0 * fps / raw
            );
        }
        pipes.push(json!({"backend": used, "args": extra.join(" "),
                          "faces_per_sec": (fps * 10.0).round() / 10.0,
                          "share_of_bare_best": (fps / raw * 1000.0).round() / 1000.0}));
    }
    let pipe = |b: &str| {
        pipes
            .iter()
            .filter(|p| p["backend"] == b)
            .filter_map(|p| p["faces_per_sec"].as_f64())
            .fold(0.0, f64::max)
    };
    let speedup = pipe("ort") / pipe("tract").max(1e-9);
    if a.json {
        println!(
            "{}",
            json!({"cores": std::thread::available_parallelism().map_or(0, usize::from),
                   "bare": rows, "pipeline": pipes,
                   "ort_pipeline_over_tract_pipeline": (speedup * 100.0).round() / 100.0})
        );
    } else {
        eprintln!("ort pipeline / tract pipeline: {speedup:.2}x");
    }
}
