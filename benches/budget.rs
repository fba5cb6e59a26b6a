//! The core budget, measured: `compare --pairs --no-dedup` with the default
//! configuration, with the preparation workers autoscaled, and with every
//! fixed split of workers × inference threads, on face chips (`--faces
//! aligned`, the labelled pairs) and on full photos (`--faces detect`,
//! every ordered pair of the photos under `assets/photos/faces`); then the Python
//! peer (`benches/peers/compare_pairs.py`) on the same chips, when its
//! packages are installed.
//!
//! ```text
//! bash scripts/fetch-assets.sh && cargo bench --bench budget
//! cargo bench --bench budget -- --rounds 3 --chip-pairs 1485 --python target/peers/bin/python --json
//! ```
//!
//! Runs go in rounds, one run of each configuration per round, so a slow
//! spell of the machine falls on all of them alike; each cell is the median
//! of the rounds. Throughput is images per second (two per pair).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

fn assets() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets")
}

struct Args {
    rounds: usize,
    chip_pairs: usize,
    python: String,
    json: bool,
}

fn args() -> Args {
    let mut a = Args {
        rounds: 3,
        chip_pairs: 600,
        python: "python3".to_owned(),
        json: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(x) = it.next() {
        match x.as_str() {
            "--rounds" => a.rounds = it.next().and_then(|s| s.parse().ok()).unwrap_or(a.rounds),
            "--chip-pairs" => a.chip_pairs = it.next().and_then(|s| s.parse().ok()).unwrap_or(a.chip_pairs),
            "--python" => a.python = it.next().unwrap_or(a.python),
            "--json" => a.json = true,
            // cargo bench passes --bench; nothing else is ours.
            _ => {}
        }
    }
    a
}

/// A workload: a pairs file and how faces are found.
struct Workload {
    name: &'static str,
    pairs: PathBuf,
    faces: &'static str,
}

/// The first `n` labelled pairs, as a pairs file in `dir` (absolute paths).
fn chip_pairs(dir: &Path, n: usize) -> PathBuf {
    let src = assets().join("photos/johns/pairs.csv");
    let base = src.parent().map(Path::to_path_buf).unwrap_or_default();
    let text = std::fs::read_to_string(&src).expect("assets missing: run scripts/fetch-assets.sh");
    let lines: Vec<String> = text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#') && !l.starts_with("a,"))
        .take(n)
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            format!(
                "{},{},{}",
                base.join(f[0].trim()).display(),
                base.join(f[1].trim()).display(),
                f.get(2).map_or("", |x| x.trim())
            )
        })
        .collect();
    let out = dir.join("chips.csv");
    std::fs::write(&out, lines.join("\n")).expect("a temp file");
    out
}

/// Every pair of the full photos with faces in them, both ways round, as
/// a pairs file.
fn photo_pairs(dir: &Path) -> PathBuf {
    let mut photos: Vec<PathBuf> = std::fs::read_dir(assets().join("photos/faces"))
        .expect("assets missing: run scripts/fetch-assets.sh")
        .filter_map(|e| e.ok().map(|e| e.path()))
        // The one photo without a person in it.
        .filter(|p| p.file_name().is_some_and(|n| n != "dogs.jpg"))
        .collect();
    photos.sort();
    let mut lines = Vec::new();
    for a in &photos {
        for b in &photos {
            if a != b {
                lines.push(format!("{},{}", a.display(), b.display()));
            }
        }
    }
    let out = dir.join("photos.csv");
    std::fs::write(&out, lines.join("\n")).expect("a temp file");
    out
}

/// Images per second of one `compare` run.
fn run(w: &Workload, extra: &[String]) -> f64 {
    let out = Command::new(env!("CARGO_BIN_EXE_compare"))
        .arg("--pairs")
        .arg(&w.pairs)
        .args(["--json", "--no-dedup", "--faces", w.faces])
        .args(extra)
        .output()
        .expect("compare runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let summary = text
        .lines()
        .rev()
        .find_map(|l| {
            serde_json::from_str::<Value>(l)
                .ok()
                .filter(|v| v.get("summary").is_some())
        })
        .unwrap_or_else(|| {
            panic!(
                "compare gave no summary: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    2.0 * summary["summary"]["pairs_per_sec"]
        .as_f64()
        .expect("pairs_per_sec")
}

/// The Python peer's images per second on `pairs`, or why it did not run.
fn python(python: &str, pairs: &Path) -> Result<f64, String> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/peers/compare_pairs.py");
    let out = Command::new(python)
        .arg(&script)
        .arg(pairs)
        .arg("--model")
        .arg(assets().join("models/fr_feature.onnx"))
        .arg("--json")
        .output()
        .map_err(|e| format!("{python}: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr)
            .lines()
            .last()
            .unwrap_or("")
            .to_owned());
    }
    let v: Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
    v["faces_per_sec"]
        .as_f64()
        .ok_or_else(|| "no faces_per_sec".to_owned())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn main() {
    let a = args();
    let cores = std::thread::available_parallelism().map_or(2, usize::from);
    let dir = std::env::temp_dir().join(format!("facepool-budget-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temp dir");
    let workloads = [
        Workload {
            name: "chips",
            pairs: chip_pairs(&dir, a.chip_pairs),
            faces: "aligned",
        },
        Workload {
            name: "photos",
            pairs: photo_pairs(&dir),
            faces: "detect",
        },
    ];
    // (name, extra flags, is a fixed split)
    let mut configs: Vec<(String, Vec<String>, bool)> = vec![
        ("default".to_owned(), vec![], false),
        (
            "autoscaled preparation".to_owned(),
            vec!["--autoscale".to_owned()],
            false,
        ),
    ];
    for w in 1..=cores {
        for i in 1..=cores {
            configs.push((
                format!("{w} workers + {i} inference"),
                vec![
                    "--threads".to_owned(),
                    w.to_string(),
                    "--inference-threads".to_owned(),
                    i.to_string(),
                ],
                true,
            ));
        }
    }
    let mut samples = vec![vec![Vec::new(); configs.len()]; workloads.len()];
    let mut peer = Vec::new();
    let mut peer_error = None;
    for round in 0..a.rounds.max(1) {
        for (wi, w) in workloads.iter().enumerate() {
            for (ci, (name, extra, _)) in configs.iter().enumerate() {
                let ips = run(w, extra);
                if !a.json {
                    eprintln!("round {round}  {:<7} {name:<28} {ips:>7.1} images/s", w.name);
                }
                samples[wi][ci].push(ips);
            }
        }
        match python(&a.python, &workloads[0].pairs) {
            Ok(ips) => {
                if !a.json {
                    eprintln!("round {round}  chips   python peer                  {ips:>7.1} images/s");
                }
                peer.push(ips);
            }
            Err(e) => peer_error = Some(e),
        }
    }
    let mut report = Vec::new();
    for (wi, w) in workloads.iter().enumerate() {
        let medians: Vec<f64> = samples[wi].iter().map(|s| median(s.clone())).collect();
        let best_fixed = configs
            .iter()
            .zip(&medians)
            .filter(|((_, _, fixed), _)| *fixed)
            .map(|(_, m)| *m)
            .fold(0.0, f64::max);
        let rows: Vec<Value> = configs
            .iter()
            .zip(&medians)
            .map(|((name, extra, fixed), m)| {
                json!({"config": name, "flags": extra.join(" "), "fixed_split": fixed,
                       "images_per_sec": round1(*m),
                       "of_best_fixed": (m / best_fixed * 1000.0).round() / 1000.0})
            })
            .collect();
        if !a.json {
            println!(
                "\n{} ({} pairs file, --faces {}), median of {} rounds",
                w.name,
                w.pairs.display(),
                w.faces,
                a.rounds
            );
            println!(
                "{:<28} {:>10} {:>14}",
                "configuration", "images/s", "of best fixed"
            );
            for r in &rows {
                println!(
                    "{:<28} {:>10.1} {:>13.1}%",
                    r["config"].as_str().unwrap_or(""),
                    r["images_per_sec"].as_f64().unwrap_or(0.0),
                    100.0 * r["of_best_fixed"].as_f64().unwrap_or(0.0)
                );
            }
        }
        report.push(json!({"workload": w.name, "faces": w.faces, "configs": rows,
                           "best_fixed_images_per_sec": round1(best_fixed)}));
    }
    let default_chips = median(samples[0][0].clone());
    let peer_json = if peer.is_empty() {
        let why = peer_error.unwrap_or_default();
        if !a.json {
            println!("\npython peer: not run ({why}); install with: python3 -m venv target/peers && target/peers/bin/pip install -r benches/peers/requirements.txt, then pass --python target/peers/bin/python");
        }
        json!({"ran": false, "why": why})
    } else {
        let p = median(peer);
        if !a.json {
            println!(
                "\npython peer on the same chips: {p:.1} images/s; facepool default / python = {:.2}x",
                default_chips / p
            );
        }
        json!({"ran": true, "images_per_sec": round1(p), "facepool_default_over_peer": (default_chips / p * 100.0).round() / 100.0})
    };
    if a.json {
        println!(
            "{}",
            json!({"cores": cores, "rounds": a.rounds, "chip_pairs": a.chip_pairs, "workloads": report, "python_peer": peer_json})
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
