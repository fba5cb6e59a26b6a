//! Results of a run: per-mode summaries (table and JSON), SLO checks, and
//! with `--out` the `.hgrm` files and a latency-over-time plot.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use facepool::metrics::{Metrics, Stage};
use plotters::prelude::*;
use serde::Serialize;

use crate::profile::{Profile, Slo};
use crate::run::{Kind, ModeRun};

#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ModeReport {
    pub mode: String,
    /// Requests sent per second of sending.
    pub offered_rps: f64,
    /// Requests answered per second, from the first send to the last answer.
    pub throughput_rps: f64,
    /// Requests answered within the SLO's p99 target per second (all the
    /// answered ones when the profile sets no target).
    pub goodput_rps: f64,
    /// Faces answered per second.
    pub faces_per_sec: f64,
    pub sent: u64,
    pub completed: u64,
    pub rejected: u64,
    pub errors: u64,
    /// Answered requests, from intended send to answer.
    pub latency_ms: Latency,
    /// Refused requests, from intended send to refusal.
    pub reject_ms: Latency,
    pub mean_batch: Option<f64>,
    pub rss_start_mb: f64,
    pub peak_rss_mb: f64,
    pub slo_ok: bool,
    /// The SLOs missed, in words.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub slo_missed: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<Failure>,
    /// A target's own counts (a broker's jobs, results, lost, duplicates,
    /// dead letters).
    #[serde(flatten)]
    pub extra: std::collections::BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    pub error: String,
    pub count: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub profile: String,
    pub description: String,
    pub arrival: String,
    pub backend: String,
    pub slo: Slo,
    pub modes: Vec<ModeReport>,
}

fn round(x: f64, places: i32) -> f64 {
    let f = 10f64.powi(places);
    (x * f).round() / f
}

fn latency(m: &Metrics) -> Latency {
    let s = m.snapshot().summary(Stage::EndToEnd);
    Latency {
        p50: round(s.p50, 2),
        p90: round(s.p90, 2),
        p99: round(s.p99, 2),
        p999: round(s.p999, 2),
        max: round(s.max, 2),
    }
}

/// The latency histograms of a run: answered and refused requests.
pub struct Histograms {
    pub done: Metrics,
    pub rejected: Metrics,
}

pub fn histograms(run: &ModeRun) -> Histograms {
    let (done, rejected) = (Metrics::new(), Metrics::new());
    for s in &run.samples {
        match s.kind {
            Kind::Done => done.record(Stage::EndToEnd, s.latency),
            Kind::Rejected => rejected.record(Stage::EndToEnd, s.latency),
            Kind::Failed => {}
        }
    }
    Histograms { done, rejected }
}

pub fn summarise(run: &ModeRun, slo: &Slo) -> ModeReport {
    let h = histograms(run);
    let count = |k: Kind| run.samples.iter().filter(|s| s.kind == k).count() as u64;
    let (completed, rejected) = (count(Kind::Done), count(Kind::Rejected));
    let errors = count(Kind::Failed) + run.unanswered;
    let faces: u64 = run
        .samples
        .iter()
        .filter(|s| s.kind == Kind::Done)
        .map(|s| u64::from(s.faces))
        .sum();
    let secs = |d: Duration| d.as_secs_f64().max(1e-9);
    let latency_ms = latency(&h.done);
    let within = slo
        .p99_ms
        .map_or(Duration::MAX, |ms| Duration::from_secs_f64(ms / 1e3));
    let good = run
        .samples
        .iter()
        .filter(|s| s.kind == Kind::Done && s.latency <= within)
        .count();
    let mut missed = Vec::new();
    let total = run.sent.max(1) as f64;
    if let Some(p99) = slo.p99_ms {
        if completed == 0 || latency_ms.p99 > p99 {
            missed.push(format!("p99 {} ms > {p99} ms", latency_ms.p99));
        }
    }
    if let Some(max) = slo.error_rate {
        let rate = errors as f64 / total;
        if rate > max {
            missed.push(format!("error rate {:.4} > {max}", rate));
        }
    }
    if let Some(max) = slo.reject_rate {
        let rate = rejected as f64 / total;
        if rate > max {
            missed.push(format!("reject rate {:.4} > {max}", rate));
        }
    }
    let mut failures: Vec<Failure> = run
        .failures
        .iter()
        .map(|(e, n)| Failure {
            error: e.clone(),
            count: *n,
        })
        .collect();
    if run.unanswered > 0 {
        failures.push(Failure {
            error: "no answer by the end of the drain".into(),
            count: run.unanswered,
        });
    }
    ModeReport {
        mode: run.label.clone(),
        offered_rps: round(run.sent as f64 / secs(run.send_time), 1),
        throughput_rps: round(completed as f64 / secs(run.total_time), 1),
        goodput_rps: round(good as f64 / secs(run.total_time), 1),
        faces_per_sec: round(faces as f64 / secs(run.total_time), 1),
        sent: run.sent,
        completed,
        rejected,
        errors,
        latency_ms,
        reject_ms: latency(&h.rejected),
        mean_batch: run.mean_batch.map(|b| round(b, 1)),
        rss_start_mb: round(run.rss_start_mb, 1),
        peak_rss_mb: round(run.peak_rss_mb, 1),
        slo_ok: missed.is_empty(),
        slo_missed: missed,
        failures,
        extra: run.extra.clone(),
    }
}

/// The readable table.
pub fn table(r: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "profile {}: {}", r.profile, r.arrival);
    let _ = writeln!(out, "backend: {}", r.backend);
    let _ = writeln!(
        out,
        "{:<10} {:>9} {:>9} {:>9} {:>8} {:>8} {:>6} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>6} {:>8} {:>4}",
        "mode",
        "offered/s",
        "done/s",
        "faces/s",
        "done",
        "refused",
        "errors",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "p99.9 ms",
        "max ms",
        "refuse99",
        "batch",
        "peak MB",
        "SLO"
    );
    for m in &r.modes {
        let _ = writeln!(
            out,
            "{:<10} {:>9.1} {:>9.1} {:>9.1} {:>8} {:>8} {:>6} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>8.2} {:>6} {:>8.1} {:>4}",
            m.mode,
            m.offered_rps,
            m.throughput_rps,
            m.faces_per_sec,
            m.completed,
            m.rejected,
            m.errors,
            m.latency_ms.p50,
            m.latency_ms.p90,
            m.latency_ms.p99,
            m.latency_ms.p999,
            m.latency_ms.max,
            m.reject_ms.p99,
            m.mean_batch.map_or("-".to_owned(), |b| format!("{b:.1}")),
            m.peak_rss_mb,
            if m.slo_ok { "ok" } else { "MISS" }
        );
    }
    for m in &r.modes {
        for s in &m.slo_missed {
            let _ = writeln!(out, "{}: SLO missed: {s}", m.mode);
        }
        for f in &m.failures {
            let _ = writeln!(out, "{}: {} × {}", m.mode, f.count, f.error);
        }
    }
    out
}

fn file_name(mode: &str) -> String {
    mode.replace('+', "_")
}

/// Writes the `.hgrm` files of each mode (answered and refused requests,
/// and the runtime's own stages where it keeps them) and `latency.svg`.
pub fn write_out(dir: &Path, runs: &[ModeRun], profile_name: &str) -> Result<Vec<String>, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let mut written = Vec::new();
    let mut write = |name: String, text: String| -> Result<(), String> {
        let p = dir.join(&name);
        std::fs::write(&p, text).map_err(|e| format!("cannot write {}: {e}", p.display()))?;
        written.push(name);
        Ok(())
    };
    for run in runs {
        let m = file_name(run.label.as_str());
        let h = histograms(run);
        write(
            format!("{m}.latency.hgrm"),
            h.done.snapshot().hgrm(Stage::EndToEnd),
        )?;
        write(
            format!("{m}.refused.hgrm"),
            h.rejected.snapshot().hgrm(Stage::EndToEnd),
        )?;
        if let Some(stages) = &run.stages {
            for stage in Stage::ALL {
                write(format!("{m}.{}.hgrm", stage.name()), stages.hgrm(stage))?;
            }
            write(format!("{m}.batch_size.hgrm"), stages.batch_hgrm())?;
        }
    }
    let svg = dir.join("latency.svg");
    plot(&svg, runs, profile_name)?;
    written.push("latency.svg".into());
    Ok(written)
}

/// Per second of send time: (second, [p50 ms, p99 ms]) of answered requests.
fn windows(run: &ModeRun) -> Vec<(f64, [f64; 2])> {
    let mut by_sec: std::collections::BTreeMap<u64, Vec<f64>> = std::collections::BTreeMap::new();
    for s in run.samples.iter().filter(|s| s.kind == Kind::Done) {
        by_sec
            .entry(s.sent.as_secs())
            .or_default()
            .push(s.latency.as_secs_f64() * 1e3);
    }
    by_sec
        .into_iter()
        .map(|(sec, mut v)| {
            v.sort_by(f64::total_cmp);
            let q = |p: f64| v[((v.len() as f64 * p) as usize).min(v.len() - 1)];
            (sec as f64 + 0.5, [q(0.5), q(0.99)])
        })
        .collect()
}

/// Latency over time: p50 and p99 of answered requests per second of send
/// time, a line per mode.
fn plot(path: &Path, runs: &[ModeRun], profile_name: &str) -> Result<(), String> {
    let series: Vec<_> = runs.iter().map(|r| (r.label.as_str(), windows(r))).collect();
    let x_max = series
        .iter()
        .flat_map(|(_, w)| w.iter().map(|p| p.0))
        .fold(1.0f64, f64::max)
        .ceil();
    let y_max = series
        .iter()
        .flat_map(|(_, w)| w.iter().map(|p| p.1[1]))
        .fold(1.0f64, f64::max)
        * 1.05;
    let err = |e: &dyn std::fmt::Display| format!("cannot draw {}: {e}", path.display());
    let root = SVGBackend::new(path, (960, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("{profile_name}: latency by send time"),
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("send time (s)")
        .y_desc("latency (ms)")
        .draw()
        .map_err(|e| err(&e))?;
    for (i, (mode, w)) in series.iter().enumerate() {
        let colour = Palette99::pick(i).to_rgba();
        // p99 as a thick line, p50 as a thin one, in the mode's colour.
        for (name, q, width) in [("p99", 1, 2), ("p50", 0, 1)] {
            let style = colour.stroke_width(width);
            chart
                .draw_series(LineSeries::new(w.iter().map(|p| (p.0, p.1[q])), style))
                .map_err(|e| err(&e))?
                .label(format!("{mode} {name}"))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        }
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

/// One line of how the backend was set up.
pub fn backend_line(profile: &Profile, model: Option<&str>, photos: usize) -> String {
    let Some(model) = model else {
        let s = &profile.synthetic;
        return format!(
            "synthetic: {} ms + {} ms per item per call, {} call(s) at a time, {} ms prepare per face",
            s.call_ms, s.item_ms, s.concurrency, s.prepare_ms
        );
    };
    format!("face model ({model}) on {photos} photos")
}
