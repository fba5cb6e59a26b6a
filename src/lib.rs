//! facepool: a runtime for high-concurrency face comparison.
//!
//! This crate's foundation is [`pool`], a bounded worker pool in the style of
//! Go's `ants` with result handles, deadlines, per-worker state, live resize,
//! idle expiry, panic isolation, graceful shutdown and autoscaling on queue
//! watermarks. It builds alone with `default-features = false`.
#![warn(missing_docs)]

pub mod pool;
pub(crate) mod sync;
