//! `compare`: are two face images the same person? Who is this?
//!
//! ```text
//! compare A.jpg B.jpg
//! compare --pairs pairs.csv --json
//! compare enroll --index people.fpi --id NAME IMG...
//! compare identify --index people.fpi IMG...
//! compare remove --index people.fpi --id NAME
//! compare index-info people.fpi
//! compare model-check --backend cuda --against ort
//! ```
//!
//! Exit codes (`src/bin/common/exit.rs`): 0 when every input was handled,
//! 1 when some inputs were refused as they are (each is reported), 2 for
//! usage and set-up errors, 70 when the service itself failed on an input,
//! 75 when an input was not handled for now (run it again).

mod check;
mod detector_check;
#[path = "../common/exit.rs"]
mod exit;
mod index;
mod pairs;
#[path = "../common/service_args.rs"]
mod service_args;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use facepool::metrics::profiling::Capture;
use facepool::service::{FaceService, Timings, Verdict};

use self::pairs::{Pair, PairsReader, Pipeline};
use self::service_args::{config, ServiceArgs};
use serde_json::json;

#[derive(clap::Subcommand)]
enum Command {
    #[command(flatten)]
    Index(index::Command),
    /// One embedding backend (--backend) against another (--against) on
    /// the labelled photos: parity of each embedding and of every pair's
    /// verdict, and the bare model's faces/s at each batch size (JSON).
    ModelCheck(check::CheckArgs),
    /// The face detector on one runtime (--backend), several frames a run,
    /// against another (--against), one frame a run, on the group photos and
    /// the labelled photos; and the bare detector's frames/s at each batch
    /// size (JSON).
    DetectorCheck(detector_check::DetectorCheckArgs),
}

#[derive(Parser)]
#[command(
    about = "Compare face images: are they the same person? Enroll people and identify faces.",
    args_conflicts_with_subcommands = true
)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Two images to compare (or use --pairs).
    images: Vec<PathBuf>,
    /// A CSV file of pairs: `a,b` or `a,b,label` per line (label 1/0 or
    /// same/different); relative paths are relative to the file.
    #[arg(long)]
    pairs: Option<PathBuf>,
    /// One JSON object per pair (and a summary line with --pairs).
    #[arg(long)]
    json: bool,
    /// Embed every image of every pair, even one already embedded for an
    /// earlier pair (by default each distinct image, by content, is
    /// embedded once).
    #[arg(long)]
    no_dedup: bool,
    /// At the end, print each stage's latency percentiles and the batch
    /// sizes to stderr.
    #[arg(long)]
    stats: bool,
    #[command(flatten)]
    service: ServiceArgs,
    /// Write a CPU flamegraph of the run (SVG).
    #[arg(long, global = true)]
    flamegraph: Option<PathBuf>,
    /// Write the run's CPU profile in pprof's protobuf format.
    #[arg(long, global = true)]
    pprof: Option<PathBuf>,
}

/// Starts the service and says which embedding backend runs, or says why
/// it could not start.
fn start_service(args: &ServiceArgs) -> Result<FaceService, ExitCode> {
    // A batch run is after throughput, not a latency per request: the
    // queue is the fixed limit.
    let mut c = config(args);
    c.latency_target = None;
    let svc = FaceService::start(c).map_err(|e| {
        eprintln!("compare: {e}");
        ExitCode::from(2)
    })?;
    eprintln!("compare: embedding backend: {}", svc.backend());
    Ok(svc)
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e5).round() / 100.0
}

/// A similarity to four decimals.
fn round4(x: f32) -> f64 {
    (f64::from(x) * 1e4).round() / 1e4
}

/// The exit code of an input that failed with `kind` (`exit::code_of`).
fn exit_code(kind: facepool::service::ErrorKind) -> u8 {
    exit::code_of(kind)
}

fn timings_json(t: &Timings) -> serde_json::Value {
    json!({
        "admission": ms(t.admission), "queue": ms(t.queue), "prepare": ms(t.prepare), "batch_wait": ms(t.batch_wait),
        "inference": ms(t.inference), "search": ms(t.search), "total": ms(t.total),
    })
}

fn verdict_json(p: &Pair, v: &Verdict) -> serde_json::Value {
    let mut o = json!({
        "a": p.a, "b": p.b,
        "similarity": round4(v.similarity),
        "same": v.same,
        "threshold": round4(v.threshold),
        "faces": [v.paths[0].to_string(), v.paths[1].to_string()],
        "timings_ms": timings_json(&v.timings),
    });
    if let Some(l) = p.label {
        o["label"] = json!(l);
    }
    o
}

fn main() -> ExitCode {
    let mut args = Args::parse();
    let capture = match Capture::start(args.flamegraph.take(), args.pprof.take()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("compare: {e}");
            return ExitCode::from(2);
        }
    };
    let code = run(args);
    if let Some(c) = capture {
        match c.finish() {
            Ok(w) => eprintln!("CPU profile: {} samples, {} stacks", w.samples, w.stacks),
            Err(e) => {
                eprintln!("compare: {e}");
                return ExitCode::from(2);
            }
        }
    }
    code
}

fn run(args: Args) -> ExitCode {
    match args.command {
        Some(Command::Index(cmd)) => return index::run(cmd),
        Some(Command::ModelCheck(a)) => return check::run(a),
        Some(Command::DetectorCheck(a)) => return detector_check::run(a),
        None => {}
    }
    let mut pairs: Box<dyn Iterator<Item = Pair>> = match (&args.pairs, args.images.len()) {
        (Some(file), 0) => match PairsReader::open(file) {
            Ok(p) => Box::new(p),
            Err(e) => {
                eprintln!("compare: {e}");
                return ExitCode::from(2);
            }
        },
        (None, 2) => Box::new(std::iter::once(Pair {
            a: args.images[0].display().to_string(),
            b: args.images[1].display().to_string(),
            label: None,
            error: None,
            dir: PathBuf::new(),
        })),
        _ => {
            eprintln!("compare: give two images, or --pairs FILE (see --help)");
            return ExitCode::from(2);
        }
    };
    let svc = match start_service(&args.service) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let bar = if args.pairs.is_some() && std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        indicatif::ProgressBar::new_spinner()
    } else {
        indicatif::ProgressBar::hidden()
    };
    let t0 = Instant::now();
    let (mut total, mut failed, mut labelled, mut correct) = (0usize, 0usize, 0usize, 0usize);
    let mut code = exit::OK;
    let mut out = std::io::stdout().lock();
    if !args.json {
        let _ = writeln!(out, "{:>10}  {:<9}  pair", "similarity", "verdict");
    }
    let mut pipeline = Pipeline::new(&svc, !args.no_dedup);
    while let Some((pair, r)) = pipeline.next(&mut pairs) {
        total += 1;
        bar.inc(1);
        match r {
            Ok(v) => {
                if let Some(l) = pair.label {
                    labelled += 1;
                    correct += usize::from(l == v.same);
                }
                if args.json {
                    let _ = writeln!(out, "{}", verdict_json(&pair, &v));
                } else {
                    let verdict = if v.same { "same" } else { "different" };
                    let _ = writeln!(
                        out,
                        "{:>10.4}  {:<9}  {} , {}",
                        v.similarity, verdict, pair.a, pair.b
                    );
                }
            }
            Err(e) => {
                failed += 1;
                code = exit::worse(code, exit_code(e.kind()));
                if args.json {
                    let _ = writeln!(
                        out,
                        "{}",
                        json!({"a": pair.a, "b": pair.b, "error": e.to_string()})
                    );
                } else {
                    let _ = writeln!(out, "{:>10}  {:<9}  {} , {}: {e}", "-", "error", pair.a, pair.b);
                }
            }
        }
    }
    let embedded = pipeline.embedded;
    drop(pipeline);
    bar.finish_and_clear();
    let secs = t0.elapsed().as_secs_f64();
    if args.pairs.is_some() {
        let accuracy = (labelled > 0).then(|| (correct as f64 / labelled as f64 * 1e4).round() / 1e4);
        let per_sec = ((total as f64 / secs.max(1e-9)) * 100.0).round() / 100.0;
        let seconds = (secs * 100.0).round() / 100.0;
        if args.json {
            let mut s = json!({"pairs": total, "failed": failed, "pairs_per_sec": per_sec,
                               "seconds": seconds, "images_embedded": embedded,
                               "dedup": !args.no_dedup,
                               "backend": svc.backend().used.to_string(),
                               "metrics": svc.metrics().snapshot().report()});
            if let Some(a) = accuracy {
                s["accuracy"] = json!(a);
            }
            let _ = writeln!(out, "{}", json!({ "summary": s }));
        } else {
            let acc = accuracy.map_or(String::new(), |a| format!(", accuracy {:.2} %", a * 100.0));
            let _ = writeln!(
                out,
                "{total} pairs, {failed} failed{acc}, {embedded} images embedded, {seconds} s, {per_sec} pairs/s"
            );
        }
    }
    if args.stats {
        eprint!("{}", svc.metrics().snapshot().table());
    }
    svc.shutdown(Duration::from_secs(30));
    ExitCode::from(code)
}
