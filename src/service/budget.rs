//! The core budget: how many threads prepare images and how many run the
//! model, from the cores and what the user pinned.
//!
//! The rule is the simplest that measured as fast as the best fixed split
//! on both face chips and full photos (`benches/budget.rs`): no split. Every
//! stage may use every core (as many preparation workers as cores, as many
//! inference threads as cores divided by their intra-op threads) and the OS
//! shares the cores between them. A stage with nothing to do sleeps and
//! leaves its cores to the other: on chips, preparation is busy a few per
//! cent of the time and the model gets the cores; on full photos, detection
//! takes its share back. A fixed split cannot be right for both.
//!
//! Pure: no threads, no clocks; `tests/budget.rs` checks it with tables.

/// What the user fixed by flags or settings; the rest follows the rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pins {
    /// Preparation workers (decode, detect, align).
    pub workers: Option<usize>,
    /// Inference threads, each with its own model state.
    pub inference_threads: Option<usize>,
    /// ONNX Runtime intra-op threads per inference thread.
    pub intra_threads: Option<usize>,
}

/// The threads of each stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Split {
    /// Preparation workers.
    pub workers: usize,
    /// Inference threads.
    pub inference_threads: usize,
    /// Intra-op threads per inference thread.
    pub intra_threads: usize,
}

/// The split for `cores` cores. A pinned value is kept (at least 1); the
/// others may each use every core: `workers = cores`, `intra = 1`,
/// `inference = cores / intra` (at least 1).
pub fn split(cores: usize, pins: Pins) -> Split {
    let cores = cores.max(1);
    let intra_threads = pins.intra_threads.unwrap_or(1).max(1);
    Split {
        workers: pins.workers.unwrap_or(cores).max(1),
        inference_threads: pins.inference_threads.unwrap_or(cores / intra_threads).max(1),
        intra_threads,
    }
}

/// The cores this process may use.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(2, usize::from)
}
