//! The integration tests, in one test binary: one link instead of one per
//! file, and the shared helpers compiled once. Each file of `tests/` is a
//! module here, named after it (`nats::each_kind_of_job_round_trips`); the
//! loom models are built apart, under `--cfg loom`.
//!
//! One file's tests: `cargo nextest run --release --all-features -E
//! 'test(/^server::/)'`.

#[path = "common/mod.rs"]
mod common;

#[path = "admission.rs"]
mod admission;

#[path = "backends.rs"]
mod backends;

#[path = "batch.rs"]
mod batch;

#[path = "batch_stress.rs"]
mod batch_stress;

#[path = "batch_user_code.rs"]
mod batch_user_code;

#[path = "budget.rs"]
mod budget;

#[path = "compare_cli.rs"]
mod compare_cli;

#[path = "completed.rs"]
mod completed;

#[path = "console.rs"]
mod console;

#[path = "crash_safety.rs"]
mod crash_safety;

#[path = "error_kinds.rs"]
mod error_kinds;

#[path = "face.rs"]
mod face;

#[path = "fleet.rs"]
mod fleet;

#[path = "fuzz_regressions.rs"]
mod fuzz_regressions;

#[path = "graph.rs"]
mod graph;

#[path = "hostile.rs"]
mod hostile;

#[path = "identify.rs"]
mod identify;

#[path = "index.rs"]
mod index;

#[path = "limits.rs"]
mod limits;

#[path = "loadgen.rs"]
mod loadgen;

#[path = "metrics.rs"]
mod metrics;

#[path = "nats.rs"]
mod nats;

#[path = "pool.rs"]
mod pool;

#[path = "pool_user_code.rs"]
mod pool_user_code;

#[path = "server.rs"]
mod server;

#[path = "stress.rs"]
mod stress;
