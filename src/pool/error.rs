//! The pool's error types.

use std::time::Duration;

/// Why [`PoolBuilder::build`](super::PoolBuilder::build) refused a configuration.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The capacity (maximum number of workers) must be at least 1.
    #[error("capacity must be at least 1")]
    ZeroCapacity,
    /// `min_workers` may not exceed the capacity.
    #[error("min_workers ({min}) exceeds capacity ({capacity})")]
    MinAboveCapacity {
        /// Requested minimum.
        min: usize,
        /// Requested capacity.
        capacity: usize,
    },
    /// The idle expiry must be longer than zero.
    #[error("idle expiry must be longer than zero")]
    ZeroExpiry,
    /// The autoscaling policy is inconsistent.
    #[error("invalid autoscaling policy: {0}")]
    Policy(#[from] crate::pool::autoscale::PolicyError),
    /// A multi-pool needs at least one pool.
    #[error("a multi-pool needs at least one pool")]
    NoPools,
    /// A worker or housekeeping thread could not be started; the threads
    /// already started were shut down again.
    #[error("could not start a pool thread: {0}")]
    Spawn(#[from] std::io::Error),
}

/// Why a job was refused. A refused job is never run and counts as `rejected`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// Every worker is busy and the waiting queue is full (non-blocking
    /// submit), or the number of blocked submitters reached its limit.
    #[error("pool overloaded: all workers busy and the queue is full")]
    Overloaded,
    /// A blocking submit waited this long for room in the queue and gave up.
    #[error("no room in the pool's queue within {0:?}")]
    Timeout(Duration),
    /// The pool has been shut down.
    #[error("pool is shut down")]
    Closed,
}

/// How an accepted job ended, when it did not return a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    /// The job panicked; the worker caught the panic and kept serving.
    #[error("job panicked: {0}")]
    Panicked(String),
    /// The job's deadline passed before it started; it was never run.
    #[error("job deadline passed before it started")]
    Expired,
    /// The job was cancelled (by its handle or by shutdown) before it started.
    #[error("job cancelled before it started")]
    Cancelled,
}

/// `tune` was asked for a capacity of zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("capacity must be at least 1")]
pub struct TuneError;
