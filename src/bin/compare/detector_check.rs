//! `compare detector-check`: the face detector on one runtime (--backend),
//! several frames a run, against the detector on another (--against), one
//! frame a run, on the group photos and the labelled photos (the same
//! faces, boxes and scores); and the bare detector's frames/s at each
//! batch size. `scripts/gpu-check.sh` runs it on the GPU; it works on any
//! runtime.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use facepool::face::{self, Backend, DetectInput, DetectModels, Detection, Detector};
use facepool::service::FaceConfig;
use serde_json::json;

use crate::check::round;
use crate::service_args::{config, ServiceArgs};

/// The arguments of `compare detector-check`.
#[derive(clap::Args)]
pub(crate) struct DetectorCheckArgs {
    /// The runtime to compare with, one frame a run (the one under test is
    /// --backend).
    #[arg(long, default_value = "ort")]
    against: Backend,
    /// Batch sizes (frames a run) whose throughput is measured; the parity
    /// runs at the largest.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    batches: Vec<usize>,
    /// Seconds of runs per batch size.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    #[command(flatten)]
    service: ServiceArgs,
}

/// The detector and landmark models of `cfg` on `backend`, planned for runs
/// of `batches` frames where the runtime plans.
fn load(backend: Backend, cfg: &FaceConfig, batches: &[usize]) -> Result<DetectModels, String> {
    let (det, lm) = (&cfg.detector, cfg.landmarks.as_deref());
    let loaded = match backend {
        Backend::Tract => DetectModels::load_batched(det, lm, batches),
        #[cfg(feature = "ort")]
        Backend::Ort => face::onnxruntime::OrtRuntime::load(&cfg.embed_settings().onnxruntime)
            .and_then(|rt| DetectModels::load_ort(&rt, det, lm)),
        #[cfg(feature = "cuda")]
        Backend::Cuda => DetectModels::load_cuda(det, lm, batches),
        other => {
            return Err(format!(
                "the detector on {other} is not in this build (tract, ort, cuda)"
            ))
        }
    };
    loaded.map_err(|e| e.to_string())
}

/// Every image of the group photos and of the labelled photos.
fn frames(assets: &Path) -> Result<Vec<(PathBuf, image::RgbImage)>, String> {
    let mut paths = Vec::new();
    let mut walk = vec![assets.join("photos/faces"), assets.join("photos/johns")];
    while let Some(dir) = walk.pop() {
        for entry in std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))? {
            let path = entry.map_err(|e| e.to_string())?.path();
            if path.is_dir() {
                walk.push(path);
            } else if path.extension().is_some_and(|e| e == "jpg" || e == "png") {
                paths.push(path);
            }
        }
    }
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let img = face::decode_file(&p, &face::DecodeLimits::default())
                .map_err(|e| format!("{}: {e}", p.display()))?;
            Ok((p, img))
        })
        .collect()
}

/// Frames/s of runs of `batch` inputs (cycling through `inputs`) for `secs`.
fn throughput(d: &mut Detector, inputs: &[DetectInput], batch: usize, secs: f64) -> Result<f64, String> {
    let run: Vec<DetectInput> = inputs.iter().cycle().take(batch).cloned().collect();
    // A warm-up run (first-run allocations, kernel loads).
    d.detect_inputs(&run, 0.7, 0.3).map_err(|e| e.to_string())?;
    let (start, mut done) = (Instant::now(), 0usize);
    while start.elapsed() < Duration::from_secs_f64(secs) || done == 0 {
        d.detect_inputs(&run, 0.7, 0.3).map_err(|e| e.to_string())?;
        done += batch;
    }
    Ok(done as f64 / start.elapsed().as_secs_f64())
}

pub(crate) fn run(args: DetectorCheckArgs) -> ExitCode {
    match check(&args) {
        Ok((report, ok)) => {
            println!("{report}");
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("compare detector-check: {e}");
            ExitCode::from(2)
        }
    }
}

/// The largest gap between two frames' faces (boxes in pixels, scores),
/// or `None` when they found a different number of faces.
fn gaps(a: &[Detection], b: &[Detection]) -> Option<(f32, f32)> {
    (a.len() == b.len()).then(|| {
        a.iter().zip(b).fold((0f32, 0f32), |(bx, sc), (x, y)| {
            let off = x
                .bbox
                .iter()
                .zip(&y.bbox)
                .map(|(p, q)| (p - q).abs())
                .fold(0.0, f32::max);
            (bx.max(off), sc.max((x.score - y.score).abs()))
        })
    })
}

fn check(args: &DetectorCheckArgs) -> Result<(serde_json::Value, bool), String> {
    if args.batches.is_empty() || args.batches.contains(&0) || !(args.seconds > 0.0 && args.seconds <= 600.0)
    {
        return Err("--batches must be positive and --seconds in (0, 600]".into());
    }
    let cfg = config(&args.service);
    let assets = FaceConfig::locate_assets(args.service.assets.clone());
    let tested = load(args.service.backend, &cfg, &args.batches)?;
    let against = load(args.against, &cfg, &[1])?;
    eprintln!(
        "compare detector-check: {} (runs of {:?} frames) against {} (one frame a run)",
        tested.runtime(),
        args.batches,
        against.runtime()
    );
    let frames = frames(&assets)?;
    let (mut t, mut a) = (
        tested.detector().map_err(|e| e.to_string())?,
        against.detector().map_err(|e| e.to_string())?,
    );
    let inputs: Vec<DetectInput> = frames
        .iter()
        .map(|(_, img)| t.input(img))
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;

    // Parity: every frame, in runs of the largest batch, against one frame
    // a run on the other runtime.
    let largest = args.batches.iter().copied().max().unwrap_or(1);
    let mut found = Vec::with_capacity(inputs.len());
    for run in inputs.chunks(largest) {
        found.extend(t.detect_inputs(run, 0.7, 0.3).map_err(|e| e.to_string())?);
    }
    let (mut faces, mut differing, mut max_box, mut max_score) = (0usize, Vec::new(), 0f32, 0f32);
    for ((path, img), mine) in frames.iter().zip(&found) {
        let theirs = a.detect(img, 0.7, 0.3).map_err(|e| e.to_string())?;
        faces += theirs.len();
        match gaps(mine, &theirs) {
            Some((b, s)) if b <= 1.0 && s <= 1e-3 => {
                max_box = max_box.max(b);
                max_score = max_score.max(s);
            }
            _ => differing.push(path.display().to_string()),
        }
    }

    let mut rates = Vec::new();
    for &batch in &args.batches {
        let rate = throughput(&mut t, &inputs, batch, args.seconds)?;
        eprintln!("compare detector-check: {batch} frames a run: {rate:.1} frames/s");
        rates.push(json!({"batch": batch, "frames_per_s": round(rate, 1)}));
    }
    let ok = differing.is_empty();
    Ok((
        json!({
            "runtime": tested.runtime(),
            "against": against.runtime(),
            "frames": frames.len(),
            "parity": {
                "faces": faces,
                "batch": largest,
                "frames_differing": differing,
                "max_box_offset_px": round(f64::from(max_box), 4),
                "max_score_gap": round(f64::from(max_score), 6),
            },
            "bare_detector": rates,
            "nodes_on_cpu": tested.cpu_nodes(),
        }),
        ok,
    ))
}
