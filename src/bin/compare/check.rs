//! `compare model-check`: one embedding backend against another on the
//! labelled photos (parity of every embedding and of every pair's
//! verdict), and the bare model's throughput at each batch size. The check
//! a GPU machine runs (`scripts/gpu-check.sh`); it works on any backend.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use facepool::face::{self, Backend, EmbedModel, Embedder, Embedding, FaceInput, FaceMode, FindOptions};
use facepool::service::FaceConfig;
use serde_json::json;

use crate::service_args::{config, ServiceArgs};

/// The arguments of `compare model-check`.
#[derive(clap::Args)]
pub(crate) struct CheckArgs {
    /// The backend to compare with (the one under test is --backend).
    #[arg(long, default_value = "ort")]
    against: Backend,
    /// A folder of face chips, one sub-folder per person (every pair of
    /// chips is compared).
    #[arg(long)]
    photos: Option<PathBuf>,
    /// Batch sizes whose throughput is measured.
    #[arg(long, value_delimiter = ',', default_value = "1,32,64,128,256")]
    batches: Vec<usize>,
    /// Seconds of runs per batch size.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    #[command(flatten)]
    service: ServiceArgs,
}

/// The chips of `dir` (one sub-folder per person), sorted, as model inputs
/// with whose they are.
fn chips(dir: &Path) -> Result<(Vec<String>, Vec<FaceInput>), String> {
    let read = |d: &Path| -> Result<Vec<PathBuf>, String> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(d)
            .map_err(|e| format!("{}: {e}", d.display()))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .collect();
        v.sort();
        Ok(v)
    };
    let opts = FindOptions {
        mode: FaceMode::Aligned,
        ..FindOptions::default()
    };
    let (mut who, mut faces) = (Vec::new(), Vec::new());
    for person in read(dir)?.into_iter().filter(|p| p.is_dir()) {
        let name = person
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        for file in read(&person)?.into_iter().filter(|p| p.is_file()) {
            let img = face::decode_file(&file, &face::DecodeLimits::default())
                .map_err(|e| format!("{}: {e}", file.display()))?;
            let mut found =
                face::find_faces(&img, None, &opts).map_err(|e| format!("{}: {e}", file.display()))?;
            if !found.is_empty() {
                who.push(name.clone());
                faces.push(found.swap_remove(0).input);
            }
        }
    }
    if faces.len() < 2 {
        return Err(format!("{}: fewer than two face chips", dir.display()));
    }
    Ok((who, faces))
}

fn embed_all(m: &EmbedModel, faces: &[FaceInput]) -> Result<Vec<Embedding>, String> {
    let mut e = m.embedder().map_err(|e| e.to_string())?;
    let out = e.embed(faces).map_err(|e| e.to_string())?;
    out.into_iter().map(|r| r.map_err(|e| e.to_string())).collect()
}

/// Faces/s of batches of `batch` (cycling through `faces`) for `secs`.
fn throughput(e: &mut dyn Embedder, faces: &[FaceInput], batch: usize, secs: f64) -> Result<f64, String> {
    let batch_faces: Vec<FaceInput> = faces.iter().cycle().take(batch).cloned().collect();
    // A warm-up run (first-run allocations, kernel loads).
    e.embed(&batch_faces).map_err(|e| e.to_string())?;
    let (start, mut done) = (Instant::now(), 0usize);
    while start.elapsed() < Duration::from_secs_f64(secs) || done == 0 {
        e.embed(&batch_faces).map_err(|e| e.to_string())?;
        done += batch;
    }
    Ok(done as f64 / start.elapsed().as_secs_f64())
}

/// `x` rounded to `digits` decimals (for reports).
pub(crate) fn round(x: f64, digits: i32) -> f64 {
    let p = 10f64.powi(digits);
    (x * p).round() / p
}

pub(crate) fn run(args: CheckArgs) -> ExitCode {
    match check(&args) {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("compare model-check: {e}");
            ExitCode::from(2)
        }
    }
}

fn check(args: &CheckArgs) -> Result<serde_json::Value, String> {
    if args.batches.contains(&0) || !(args.seconds > 0.0 && args.seconds <= 600.0) {
        return Err("--batches must be positive and --seconds in (0, 600]".into());
    }
    let base = config(&args.service);
    let photos = args
        .photos
        .clone()
        .unwrap_or_else(|| FaceConfig::locate_assets(args.service.assets.clone()).join("photos/johns"));
    let (who, faces) = chips(&photos)?;
    let mut settings = base.embed_settings();
    // A plan for each batch size measured, on the backends that plan.
    settings.tract_batch_sizes = args.batches.clone();
    settings.cuda_batch_sizes = args.batches.clone();
    settings.max_batch = args.batches.iter().copied().max().unwrap_or(1).max(faces.len());
    let (tested, choice) = EmbedModel::load(&settings).map_err(|e| e.to_string())?;
    eprintln!("compare model-check: backend under test: {choice}");
    settings.backend = args.against;
    let (against, against_choice) = EmbedModel::load(&settings).map_err(|e| e.to_string())?;
    eprintln!("compare model-check: compared with: {against_choice}");

    // Parity: every face's embedding, and every pair's verdict.
    let (a, b) = (embed_all(&tested, &faces)?, embed_all(&against, &faces)?);
    let cosines: Vec<f32> = a.iter().zip(&b).map(|(x, y)| x.cosine(y)).collect();
    let min_cosine = cosines.iter().copied().fold(f32::INFINITY, f32::min);
    let (mut pairs, mut differ, mut correct) = (0usize, 0usize, 0usize);
    let mut max_gap = 0f32;
    for i in 0..faces.len() {
        for j in i + 1..faces.len() {
            let (sa, sb) = (a[i].cosine(&a[j]), b[i].cosine(&b[j]));
            let same = sa >= base.threshold;
            pairs += 1;
            differ += usize::from(same != (sb >= base.threshold));
            correct += usize::from(same == (who[i] == who[j]));
            max_gap = max_gap.max((sa - sb).abs());
        }
    }

    // The bare model: one state, batches of each size.
    let mut e = tested.embedder().map_err(|e| e.to_string())?;
    let mut rates = Vec::new();
    for &batch in &args.batches {
        let rate = throughput(&mut *e, &faces, batch, args.seconds)?;
        eprintln!("compare model-check: batch {batch}: {rate:.1} faces/s");
        rates.push(json!({"batch": batch, "faces_per_s": round(rate, 1)}));
    }
    #[cfg(feature = "cuda")]
    let cpu_nodes: Vec<String> = match &tested {
        EmbedModel::Cuda(m) => m.cpu_nodes().to_vec(),
        _ => Vec::new(),
    };
    #[cfg(not(feature = "cuda"))]
    let cpu_nodes: Vec<String> = Vec::new();
    Ok(json!({
        "backend": choice.used.to_string(),
        "backend_detail": choice.to_string(),
        "against": against_choice.used.to_string(),
        "faces": faces.len(),
        "parity": {
            "min_cosine": round(f64::from(min_cosine), 6),
            "faces_below_0_9999": cosines.iter().filter(|c| **c < 0.9999).count(),
            "pairs": pairs,
            "verdicts_differing": differ,
            "max_pair_score_gap": round(f64::from(max_gap), 6),
            "verdicts_correct": correct,
            "threshold": round(f64::from(base.threshold), 4),
        },
        "bare_model": rates,
        "nodes_on_cpu": cpu_nodes,
    }))
}
