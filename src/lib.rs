//! facepool: a runtime for high-concurrency face comparison.
//!
//! The runtime, usable alone with `default-features = false`:
//! - [`pool`]: a bounded worker pool in the style of Go's `ants`, with result
//!   handles, deadlines, per-worker state, live resize, idle expiry, panic
//!   isolation, graceful shutdown and autoscaling on queue watermarks;
//! - [`batch`]: a Nagle-style micro-batcher that gathers items from many
//!   callers into one downstream call and splits the results back, and the
//!   batch-completion synchronizer ([`batch::map_completed`]);
//! - [`guard`]: rate limit, timeout, retry with backoff, circuit breaker and
//!   degrade, as small wrappers around any call;
//! - [`graph`]: dependency-graph scheduling on the pool: each node submitted
//!   by the end of its last input, with per-node timeout, default, retry and
//!   breaker, cancellation, and per-node timings.
#![warn(missing_docs)]

pub mod batch;
#[cfg(feature = "face")]
pub mod face;
#[cfg(feature = "face")]
pub mod gallery;
#[cfg(not(loom))]
pub mod graph;
pub mod guard;
#[cfg(feature = "index")]
pub mod index;
#[cfg(feature = "metrics")]
pub mod metrics;
#[cfg(feature = "nats-wire")]
pub mod nats;
pub(crate) mod panics;
pub mod pool;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "face")]
pub mod service;
pub(crate) mod sync;
#[cfg(not(loom))]
pub(crate) mod timer;
#[cfg(feature = "index")]
pub mod vector;
