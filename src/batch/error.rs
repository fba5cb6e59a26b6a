//! The batcher's error types.

use std::sync::Arc;
use std::time::Duration;

use super::policy::PolicyError;

/// Why [`BatcherBuilder::build`](super::BatcherBuilder::build) failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The batch policy is inconsistent.
    #[error("invalid batch policy: {0}")]
    Policy(#[from] PolicyError),
    /// The pending queue must hold at least one unit of weight.
    #[error("queue capacity must be at least 1")]
    ZeroQueue,
    /// The handler factory failed on a batch thread; the threads already
    /// started were shut down again.
    #[error("could not create the batch handler on thread {thread}: {message}")]
    Handler {
        /// Which batch thread (0-based).
        thread: usize,
        /// The factory's error.
        message: String,
    },
    /// A batch thread could not be started.
    #[error("could not start a batch thread: {0}")]
    Spawn(#[from] std::io::Error),
}

/// Why an item was refused. A refused item is never sent downstream and
/// counts as `rejected`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// The pending queue is full (non-blocking submit).
    #[error("batcher overloaded: the pending queue is full")]
    Overloaded,
    /// A blocking submit waited this long for room and gave up.
    #[error("no room in the batcher's queue within {0:?}")]
    Timeout(Duration),
    /// The item weighs more than the whole pending queue can hold.
    #[error("item weight {weight} exceeds the queue capacity {capacity}")]
    TooHeavy {
        /// The item's weight.
        weight: usize,
        /// The queue's capacity, in weight.
        capacity: usize,
    },
    /// The batcher has been shut down.
    #[error("batcher is shut down")]
    Closed,
}

/// How an accepted item ended, when it got no result.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BatchError {
    /// The handler returned an error for the item's batch.
    #[error("batch handler failed: {0}")]
    Handler(Arc<dyn std::error::Error + Send + Sync>),
    /// The handler panicked on the item's batch.
    #[error("batch handler panicked: {0}")]
    Panicked(String),
    /// The handler returned a different number of results than items.
    #[error("batch handler returned {got} results for {expected} items")]
    WrongCount {
        /// Items in the batch.
        expected: usize,
        /// Results returned.
        got: usize,
    },
    /// The item's deadline passed before its batch was sent; it never was.
    #[error("item deadline passed before it was sent downstream")]
    Expired,
    /// The item's handle was dropped before it was sent; it never was.
    #[error("item abandoned by its caller before it was sent downstream")]
    Abandoned,
    /// The batcher was shut down without flushing; the item never was sent.
    #[error("item cancelled by shutdown before it was sent downstream")]
    Cancelled,
}

impl PartialEq for BatchError {
    /// Handler errors are equal when they are the same error or read the same.
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Handler(a), Self::Handler(b)) => Arc::ptr_eq(a, b) || a.to_string() == b.to_string(),
            (Self::Panicked(a), Self::Panicked(b)) => a == b,
            (
                Self::WrongCount { expected, got },
                Self::WrongCount {
                    expected: e2,
                    got: g2,
                },
            ) => expected == e2 && got == g2,
            _ => std::mem::discriminant(self) == std::mem::discriminant(other),
        }
    }
}

impl BatchError {
    /// The handler's own error, if this is one of type `E`.
    pub fn handler_error<E: std::error::Error + 'static>(&self) -> Option<&E> {
        match self {
            Self::Handler(e) => e.downcast_ref::<E>(),
            _ => None,
        }
    }
}
