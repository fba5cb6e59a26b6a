//! Per-stage latency histograms (HDR, 3 significant figures, microseconds)
//! and a batch-size histogram, with snapshots, merging, reset and reports: a
//! table, a serialisable summary, and the percentile-distribution text
//! (`.hgrm`) that HdrHistogram plotters read.
//!
//! With the `profiling` feature, [`profiling`] captures CPU flamegraphs.
//!
//! Recording takes a short uncontended lock per value and never does I/O;
//! reports are built from snapshots, off the hot path.

#[cfg(feature = "profiling")]
pub mod profiling;

use std::fmt::Write as _;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use hdrhistogram::Histogram;

/// Highest latency tracked exactly, in µs (one hour); longer ones saturate.
const MAX_MICROS: u64 = 3_600_000_000;
/// Largest batch size tracked.
const MAX_BATCH: u64 = 1 << 20;
/// Significant figures kept.
const SIGFIG: u8 = 3;

/// A stage of a request, each with its own latency histogram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize), serde(rename_all = "snake_case"))]
pub enum Stage {
    /// Waiting for a pool worker.
    PoolWait,
    /// Decoding, detection and alignment on a pool worker.
    Prepare,
    /// Waiting in the batcher for a model run.
    BatchWait,
    /// The model run.
    Inference,
    /// Comparing embeddings or searching the index.
    Search,
    /// The whole request.
    EndToEnd,
}

impl Stage {
    /// Every stage, in request order.
    pub const ALL: [Stage; 6] = [
        Stage::PoolWait,
        Stage::Prepare,
        Stage::BatchWait,
        Stage::Inference,
        Stage::Search,
        Stage::EndToEnd,
    ];

    /// The stage's name in reports and file names.
    pub fn name(self) -> &'static str {
        match self {
            Stage::PoolWait => "pool_wait",
            Stage::Prepare => "prepare",
            Stage::BatchWait => "batch_wait",
            Stage::Inference => "inference",
            Stage::Search => "search",
            Stage::EndToEnd => "end_to_end",
        }
    }

    fn slot(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

// The bounds are constants within hdrhistogram's limits (low ≥ 1,
// high ≥ 2 × low, sigfig ≤ 5); no input reaches these calls.
fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_MICROS, SIGFIG).expect("constant histogram bounds are valid")
}

fn batch_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_BATCH, SIGFIG).expect("constant histogram bounds are valid")
}

/// A histogram's main figures (latencies in milliseconds).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Summary {
    /// Values recorded.
    pub count: u64,
    /// Smallest.
    pub min: f64,
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest.
    pub max: f64,
}

fn summarise(h: &Histogram<u64>, scale: f64) -> Summary {
    if h.is_empty() {
        return Summary::default();
    }
    let q = |x: f64| h.value_at_quantile(x) as f64 / scale;
    Summary {
        count: h.len(),
        min: h.min() as f64 / scale,
        mean: h.mean() / scale,
        p50: q(0.5),
        p90: q(0.9),
        p99: q(0.99),
        p999: q(0.999),
        max: h.max() as f64 / scale,
    }
}

#[derive(Clone)]
struct Hists {
    stages: Vec<Histogram<u64>>,
    batch: Histogram<u64>,
}

impl Hists {
    fn new() -> Self {
        Self {
            stages: Stage::ALL.iter().map(|_| latency_histogram()).collect(),
            batch: batch_histogram(),
        }
    }
}

/// Recorders for every stage; cheap to clone (clones record into the same
/// histograms).
#[derive(Clone)]
pub struct Metrics {
    stages: Arc<[Mutex<Histogram<u64>>]>,
    batch: Arc<Mutex<Histogram<u64>>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Metrics {
    /// Empty histograms.
    pub fn new() -> Self {
        let h = Hists::new();
        Self {
            stages: h.stages.into_iter().map(Mutex::new).collect(),
            batch: Arc::new(Mutex::new(h.batch)),
        }
    }

    /// Records one latency of `stage` (to the microsecond; an hour or more
    /// counts as an hour).
    pub fn record(&self, stage: Stage, d: Duration) {
        let us = u64::try_from(d.as_micros())
            .unwrap_or(u64::MAX)
            .clamp(1, MAX_MICROS);
        lock(&self.stages[stage.slot()]).saturating_record(us);
    }

    /// Records the size of one batch (model run).
    pub fn record_batch(&self, size: usize) {
        let n = u64::try_from(size).unwrap_or(u64::MAX).clamp(1, MAX_BATCH);
        lock(&self.batch).saturating_record(n);
    }

    /// A copy of every histogram.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot(Hists {
            stages: self.stages.iter().map(|m| lock(m).clone()).collect(),
            batch: lock(&self.batch).clone(),
        })
    }

    /// Clears every histogram.
    pub fn reset(&self) {
        for m in self.stages.iter() {
            lock(m).reset();
        }
        lock(&self.batch).reset();
    }

    /// A copy of every histogram, clearing each as it is copied (for
    /// reports per interval).
    pub fn take(&self) -> Snapshot {
        let take = |m: &Mutex<Histogram<u64>>| {
            let mut h = lock(m);
            let copy = h.clone();
            h.reset();
            copy
        };
        Snapshot(Hists {
            stages: self.stages.iter().map(take).collect(),
            batch: take(&self.batch),
        })
    }
}

/// Histograms at one moment; merge several (threads, runs, intervals) into
/// one.
#[derive(Clone)]
pub struct Snapshot(Hists);

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("report", &self.report())
            .finish()
    }
}

impl Default for Snapshot {
    fn default() -> Self {
        Self(Hists::new())
    }
}

/// One stage's summary (ms).
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct StageSummary {
    /// The stage.
    pub stage: Stage,
    /// Its figures, ms.
    #[cfg_attr(feature = "serde", serde(flatten))]
    pub summary: Summary,
}

/// Every stage's summary and the batch sizes', serialisable.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Report {
    /// Latency per stage, ms (stages with no values are left out).
    pub stages: Vec<StageSummary>,
    /// Batch sizes (counts, not ms).
    pub batch: Summary,
}

impl Snapshot {
    /// Adds another snapshot's values to this one.
    pub fn merge(&mut self, other: &Snapshot) {
        for (a, b) in self.0.stages.iter_mut().zip(&other.0.stages) {
            // Same bounds on both sides: adding cannot fail; if it ever
            // did, the values beyond the bounds would be the ones missing.
            let _ = a.add(b);
        }
        let _ = self.0.batch.add(&other.0.batch);
    }

    /// The raw histogram of a stage (µs).
    pub fn histogram(&self, stage: Stage) -> &Histogram<u64> {
        &self.0.stages[stage.slot()]
    }

    /// The raw batch-size histogram.
    pub fn batch_histogram(&self) -> &Histogram<u64> {
        &self.0.batch
    }

    /// A stage's summary, in milliseconds.
    pub fn summary(&self, stage: Stage) -> Summary {
        summarise(self.histogram(stage), 1000.0)
    }

    /// The batch sizes' summary.
    pub fn batch_summary(&self) -> Summary {
        summarise(&self.0.batch, 1.0)
    }

    /// Every stage with values, and the batch sizes.
    pub fn report(&self) -> Report {
        Report {
            stages: Stage::ALL
                .iter()
                .filter(|s| !self.histogram(**s).is_empty())
                .map(|s| StageSummary {
                    stage: *s,
                    summary: self.summary(*s),
                })
                .collect(),
            batch: self.batch_summary(),
        }
    }

    /// A fixed-width table: one row per stage with values (ms), then the
    /// batch sizes.
    pub fn table(&self) -> String {
        let mut t = format!(
            "{:<11} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}\n",
            "stage", "count", "mean", "p50", "p90", "p99", "p99.9", "max"
        );
        let mut row = |name: &str, s: &Summary| {
            let _ = writeln!(
                t,
                "{:<11} {:>9} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
                name, s.count, s.mean, s.p50, s.p90, s.p99, s.p999, s.max
            );
        };
        for s in self.report().stages {
            row(s.stage.name(), &s.summary);
        }
        let b = self.batch_summary();
        if b.count > 0 {
            row("batch size", &b);
        }
        t
    }

    /// The percentile distribution of a stage in milliseconds, in the
    /// `.hgrm` text format of HdrHistogram's `outputPercentileDistribution`
    /// (5 ticks per half distance), which its plotters read.
    pub fn hgrm(&self, stage: Stage) -> String {
        hgrm(self.histogram(stage), 1000.0)
    }

    /// The batch-size distribution in the same format.
    pub fn batch_hgrm(&self) -> String {
        hgrm(&self.0.batch, 1.0)
    }
}

fn hgrm(h: &Histogram<u64>, scale: f64) -> String {
    let mut out = format!(
        "{:>12} {:>14} {:>10} {:>14}\n\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    let mut total = 0u64;
    if !h.is_empty() {
        for v in h.iter_quantiles(5) {
            total += v.count_since_last_iteration();
            let q = v.quantile_iterated_to();
            let value = v.value_iterated_to() as f64 / scale;
            if q < 1.0 {
                let _ = writeln!(out, "{value:12.3} {q:2.12} {total:10} {:14.2}", 1.0 / (1.0 - q));
            } else {
                let _ = writeln!(out, "{value:12.3} {q:2.12} {total:10}");
            }
        }
    }
    let (mean, sd, max) = if h.is_empty() {
        (0.0, 0.0, 0.0)
    } else {
        (h.mean() / scale, h.stdev() / scale, h.max() as f64 / scale)
    };
    let _ = writeln!(out, "#[Mean    = {mean:12.3}, StdDeviation   = {sd:12.3}]");
    let _ = writeln!(out, "#[Max     = {max:12.3}, Total count    = {:12}]", h.len());
    let _ = writeln!(
        out,
        "#[Buckets = {:12}, SubBuckets     = {:12}]",
        h.buckets(),
        h.distinct_values()
    );
    out
}
