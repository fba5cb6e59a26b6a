//! `loadgen`: drives the in-process runtime with a workload from
//! `profiles/` and reports throughput, latency, refusals, memory and SLOs,
//! for each mode side by side.
//!
//! ```text
//! loadgen --profile profiles/saturate.toml --modes direct,pool,pool+batch
//! loadgen --profile profiles/overload.toml --synthetic --json --out results/
//! loadgen --profile profiles/steady.toml --check
//! loadgen --profile profiles/http_saturate.toml --target http://127.0.0.1:8080 --token T
//! loadgen --profile profiles/http_overload.toml --target serve=http://127.0.0.1:8080 \
//!         --target-pid serve=1234 --target python=http://127.0.0.1:8099 --out results/
//! ```
//!
//! With `--target`, the profile's requests go over HTTP to running
//! services, one after another, instead of to the in-process modes.
//!
//! It stops by itself (the profile bounds every run), never retries, and
//! touches nothing outside the process but the files it is told to write
//! (and the services it is pointed at).
//! Exit codes: 0 after a run (with `--strict`: only if every SLO held),
//! 1 when `--strict` and an SLO was missed, 2 for usage and set-up errors.

mod backend;
mod http;
mod nats;
mod profile;
mod report;
mod run;
mod synthetic;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use facepool::face::Backend;
use facepool::metrics::profiling::Capture;
use facepool::service::FaceConfig;

use crate::profile::{Mode, Profile};

#[derive(Parser)]
#[command(about = "Load-test the runtime with a workload profile, mode by mode")]
struct Args {
    /// The workload (e.g. profiles/saturate.toml).
    #[arg(long)]
    profile: PathBuf,
    /// Modes to run, in order (default: the profile's): direct, pool,
    /// pool+batch.
    #[arg(long, value_delimiter = ',')]
    modes: Option<Vec<Mode>>,
    /// Use the synthetic downstream instead of the face model.
    #[arg(long)]
    synthetic: bool,
    /// Seconds of sending per mode, instead of the profile's.
    #[arg(long)]
    seconds: Option<f64>,
    /// Faces that may wait, instead of the profile's `runtime.queue`.
    #[arg(long)]
    queue: Option<usize>,
    /// Pool workers, instead of the profile's `runtime.workers`.
    #[arg(long)]
    workers: Option<usize>,
    /// Face model, pool+batch: inference threads, instead of the profile's.
    #[arg(long)]
    inference_threads: Option<usize>,
    /// Face model: the embedding backend (ort, tract, or auto: ort when its
    /// library loads, else tract).
    #[arg(long, default_value = "auto")]
    backend: Backend,
    /// The ONNX Runtime library (default: assets/lib/libonnxruntime.so.1).
    #[arg(long)]
    onnxruntime: Option<PathBuf>,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
    /// Also write each mode's `.hgrm` files and `latency.svg` here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Only read and check the profile, and say what it would run.
    #[arg(long)]
    check: bool,
    /// Exit with 1 when a mode misses an SLO.
    #[arg(long)]
    strict: bool,
    /// Folder of the fetched assets (default: ./assets, or next to the binary).
    #[arg(long)]
    assets: Option<PathBuf>,
    /// Write a CPU flamegraph of the run (SVG).
    #[arg(long)]
    flamegraph: Option<PathBuf>,
    /// Write the run's CPU profile in pprof's protobuf format.
    #[arg(long)]
    pprof: Option<PathBuf>,
    /// Drive a running service instead of the in-process modes: over HTTP
    /// (`[LABEL=]http://HOST:PORT`), or as the producer of `serve --nats`
    /// (`[LABEL=]nats://HOST:PORT`); several run one after another.
    #[arg(long)]
    target: Vec<http::TargetSpec>,
    /// With a nats:// target: the names `serve --nats-prefix` uses.
    #[arg(long, default_value = "facepool")]
    nats_prefix: String,
    /// The Bearer token sent to the targets.
    #[arg(long, env = "FACEPOOL_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Sample this process's memory (and its children's) during the run of
    /// the target with the same label: `[LABEL=]PID`.
    #[arg(long)]
    target_pid: Vec<http::PidSpec>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("loadgen: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(args: &Args) -> Result<ExitCode, String> {
    let mut profile = Profile::load(&args.profile).map_err(|e| e.to_string())?;
    if let Some(s) = args.seconds {
        if !profile.arrival.phases.is_empty() {
            return Err("--seconds: this profile's phases set its length".into());
        }
        if !(s.is_finite() && s > 0.0) {
            return Err(format!("--seconds: must be positive, not {s}"));
        }
        profile.stop.seconds = Some(s);
    }
    if let Some(q) = args.queue {
        if q == 0 {
            return Err("--queue: must be at least 1".into());
        }
        profile.runtime.queue = q;
    }
    for (flag, v, slot) in [
        ("--workers", args.workers, &mut profile.runtime.workers),
        (
            "--inference-threads",
            args.inference_threads,
            &mut profile.runtime.inference_threads,
        ),
    ] {
        match v {
            Some(0) => return Err(format!("{flag}: must be at least 1")),
            Some(n) => *slot = Some(n),
            None => {}
        }
    }
    let modes = args.modes.clone().unwrap_or_else(|| profile.modes.clone());
    let name = args
        .profile
        .file_stem()
        .map_or_else(|| "profile".into(), |s| s.to_string_lossy().into_owned());
    if args.check {
        let names: Vec<&str> = modes.iter().map(|m| m.name()).collect();
        println!("{name}: {} [{}]", profile.arrival_line(), names.join(", "));
        return Ok(ExitCode::SUCCESS);
    }
    let capture = Capture::start(args.flamegraph.clone(), args.pprof.clone()).map_err(|e| e.to_string())?;
    if !args.target.is_empty() {
        let runs = run_http(args, &profile)?;
        return finish(args, &profile, &name, runs, capture, "a running service".into());
    }
    let real = if args.synthetic {
        None
    } else {
        let assets = FaceConfig::locate_assets(args.assets.clone());
        let real = backend::Real::load(&assets, &profile, args.backend, args.onnxruntime.clone())?;
        eprintln!("loadgen: embedding backend: {}", real.backend());
        Some(real)
    };
    let photos = real.as_ref().map_or(1, backend::Real::photos);
    let show = !args.json && std::io::stderr().is_terminal();
    let mut runs = Vec::new();
    for &mode in &modes {
        let target: Arc<dyn backend::Target> = match &real {
            None => backend::synthetic(&profile, mode)?,
            Some(r) => r.target(&profile, mode)?,
        };
        if !args.json && !show {
            eprintln!("running {} ...", mode.name());
        }
        let label = mode.name().to_owned();
        runs.push(run::run_mode(
            &profile,
            (mode, label),
            target,
            photos,
            (show, None),
        ));
    }
    let backend = report::backend_line(
        &profile,
        real.as_ref().map(|r| r.backend().used.to_string()).as_deref(),
        photos,
    );
    finish(args, &profile, &name, runs, capture, backend)
}

/// Runs the profile against each `--target` in turn.
fn run_http(args: &Args, profile: &Profile) -> Result<Vec<run::ModeRun>, String> {
    let assets = FaceConfig::locate_assets(args.assets.clone());
    let photos = backend::Photos::load(&assets, profile.request.images)?;
    let bodies = http::encode(&photos);
    let show = !args.json && std::io::stderr().is_terminal();
    let mut runs = Vec::new();
    for spec in &args.target {
        let target: Arc<dyn backend::Target> = if spec.url.starts_with("nats://") {
            Arc::new(nats::NatsTarget::connect(
                &spec.url,
                &args.nats_prefix,
                bodies.clone(),
                profile,
            )?)
        } else {
            let t = http::Http::new(spec, args.token.as_deref(), bodies.clone(), profile);
            t.probe()?;
            Arc::new(t)
        };
        let pid = args
            .target_pid
            .iter()
            .find(|p| p.label.as_deref().is_none_or(|l| l == spec.label))
            .map(|p| p.pid);
        if !args.json && !show {
            eprintln!("running {} ({}) ...", spec.label, spec.url);
        }
        let label = (Mode::Http, spec.label.clone());
        runs.push(run::run_mode(profile, label, target, photos.len(), (show, pid)));
    }
    Ok(runs)
}

/// Reports the runs: the table or JSON, the files, the CPU profile.
fn finish(
    args: &Args,
    profile: &Profile,
    name: &str,
    runs: Vec<run::ModeRun>,
    capture: Option<Capture>,
    backend: String,
) -> Result<ExitCode, String> {
    let report = report::Report {
        profile: name.to_owned(),
        description: profile.description.clone(),
        arrival: profile.arrival_line(),
        backend,
        slo: profile.slo.clone(),
        modes: runs.iter().map(|r| report::summarise(r, &profile.slo)).collect(),
    };
    if let Some(dir) = &args.out {
        let files = report::write_out(dir, &runs, name)?;
        if !args.json {
            eprintln!("wrote {} files to {}", files.len(), dir.display());
        }
    }
    if let Some(c) = capture {
        let w = c.finish().map_err(|e| e.to_string())?;
        if !args.json {
            eprintln!("CPU profile: {} samples, {} stacks", w.samples, w.stacks);
        }
    }
    if args.json {
        let text = serde_json::to_string(&report).map_err(|e| e.to_string())?;
        println!("{text}");
    } else {
        print!("{}", report::table(&report));
    }
    let missed = report.modes.iter().any(|m| !m.slo_ok);
    Ok(if args.strict && missed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
