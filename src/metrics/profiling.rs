//! CPU profiles of a run, with the `pprof` crate: a flamegraph SVG and the
//! protobuf profile that `pprof` viewers read (`go tool pprof`, speedscope,
//! Pyroscope).
//!
//! The profiler samples every thread of the process at a fixed frequency
//! from a `SIGPROF` timer; it is process-wide, so only one [`Capture`] can
//! run at a time. Symbols are resolved once, when the capture finishes.
//!
//! ```no_run
//! use facepool::metrics::profiling::Capture;
//! let capture = Capture::start(Some("run.svg".into()), None)?;
//! // ... the work to profile ...
//! if let Some(c) = capture {
//!     let written = c.finish()?;
//!     eprintln!("{} samples", written.samples);
//! }
//! # Ok::<(), facepool::metrics::profiling::ProfileError>(())
//! ```

use std::path::{Path, PathBuf};

use pprof::protos::Message as _;

/// Samples per second per thread, by default. High enough for a few
/// thousand samples in a short run, low enough to cost ~1% of the CPU.
pub const DEFAULT_FREQUENCY: i32 = 250;

/// Frames from these libraries are left out of the stacks: they are the
/// signal machinery and thread start-up, not the program's work.
const BLOCKLIST: [&str; 4] = ["libc", "libgcc", "pthread", "vdso"];

/// Why a profile could not be taken or written.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// The profiler did not start (another capture running, no timer).
    #[error("cannot start the CPU profiler: {0}")]
    Start(#[source] pprof::Error),
    /// The samples could not be turned into a report.
    #[error("cannot build the CPU profile: {0}")]
    Report(#[source] pprof::Error),
    /// The flamegraph could not be drawn.
    #[error("cannot draw the flamegraph: {0}")]
    Flamegraph(#[source] pprof::Error),
    /// The protobuf profile could not be encoded.
    #[error("cannot encode the pprof profile: {0}")]
    Encode(String),
    /// An output file could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// A running CPU profile and where to write it.
pub struct Capture {
    guard: pprof::ProfilerGuard<'static>,
    flamegraph: Option<PathBuf>,
    pprof: Option<PathBuf>,
}

impl std::fmt::Debug for Capture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Capture")
            .field("flamegraph", &self.flamegraph)
            .field("pprof", &self.pprof)
            .finish_non_exhaustive()
    }
}

/// What [`Capture::finish`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// Stack samples taken.
    pub samples: u64,
    /// Distinct stacks.
    pub stacks: usize,
    /// The files written.
    pub files: Vec<PathBuf>,
}

impl Capture {
    /// Starts profiling at [`DEFAULT_FREQUENCY`] if either output is asked
    /// for; `None` (and no profiler) when neither is.
    pub fn start(flamegraph: Option<PathBuf>, pprof: Option<PathBuf>) -> Result<Option<Self>, ProfileError> {
        if flamegraph.is_none() && pprof.is_none() {
            return Ok(None);
        }
        Self::with_frequency(DEFAULT_FREQUENCY, flamegraph, pprof).map(Some)
    }

    /// Starts profiling at `frequency` samples per second.
    pub fn with_frequency(
        frequency: i32,
        flamegraph: Option<PathBuf>,
        pprof: Option<PathBuf>,
    ) -> Result<Self, ProfileError> {
        let guard = pprof::ProfilerGuardBuilder::default()
            .frequency(frequency.max(1))
            .blocklist(&BLOCKLIST)
            .build()
            .map_err(ProfileError::Start)?;
        Ok(Self {
            guard,
            flamegraph,
            pprof,
        })
    }

    /// Stops sampling, resolves symbols and writes the outputs.
    pub fn finish(self) -> Result<Written, ProfileError> {
        let report = self.guard.report().build().map_err(ProfileError::Report)?;
        drop(self.guard);
        let samples = report.data.values().map(|&n| n.max(0) as u64).sum();
        let stacks = report.data.len();
        let mut files = Vec::new();
        if let Some(path) = &self.flamegraph {
            write(path, &render(&report, Output::Flamegraph)?)?;
            files.push(path.clone());
        }
        if let Some(path) = &self.pprof {
            write(path, &render(&report, Output::Pprof)?)?;
            files.push(path.clone());
        }
        Ok(Written {
            samples,
            stacks,
            files,
        })
    }

    /// Stops sampling and renders the profile in memory (for an HTTP
    /// endpoint) instead of to files.
    pub fn finish_to(self, out: Output) -> Result<Vec<u8>, ProfileError> {
        let report = self.guard.report().build().map_err(ProfileError::Report)?;
        drop(self.guard);
        render(&report, out)
    }
}

/// A profile's rendering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// A flamegraph SVG.
    Flamegraph,
    /// A pprof protobuf.
    Pprof,
}

fn render(report: &pprof::Report, out: Output) -> Result<Vec<u8>, ProfileError> {
    match out {
        Output::Flamegraph => {
            let mut svg = Vec::new();
            report.flamegraph(&mut svg).map_err(ProfileError::Flamegraph)?;
            Ok(svg)
        }
        Output::Pprof => {
            let profile = report.pprof().map_err(ProfileError::Report)?;
            profile
                .write_to_bytes()
                .map_err(|e| ProfileError::Encode(e.to_string()))
        }
    }
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), ProfileError> {
    std::fs::write(path, bytes).map_err(|source| ProfileError::Write {
        path: path.to_owned(),
        source,
    })
}
