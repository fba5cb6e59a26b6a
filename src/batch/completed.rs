//! The batch-completion synchronizer: run slow per-item calls on the pool and
//! hand their results to ONE consumer in completion order, N at a time.
//!
//! The consumer (say, a thread that writes rows in transactions of 25) gets
//! each group as soon as 25 calls are done, never waiting for the slowest
//! call before writing the first groups. A failure reaches the consumer as
//! soon as it happens; dropping the iterator (or [`Completed::abort`])
//! cancels every call that has not started.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{channel, Receiver, Sender};

use crate::panics::message as panic_message;
use crate::pool::{JobHandle, Pool, SubmitError};

/// One finished call: the item's position in the input and its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Done<T> {
    /// Position of the item in the input.
    pub index: usize,
    /// What the call returned.
    pub value: T,
}

/// A call that did not produce a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MapError<E> {
    /// The call returned an error.
    #[error("item {index} failed: {error}")]
    Failed {
        /// Position of the item in the input.
        index: usize,
        /// The call's error.
        error: E,
    },
    /// The call panicked.
    #[error("item {index} panicked: {message}")]
    Panicked {
        /// Position of the item in the input.
        index: usize,
        /// The panic message.
        message: String,
    },
    /// The pool refused the call (it was shut down).
    #[error("item {index} refused by the pool: {error}")]
    Refused {
        /// Position of the item in the input.
        index: usize,
        /// Why the pool refused it.
        error: SubmitError,
    },
    /// The pool cancelled the call before it started (shutdown, expiry).
    #[error("item {index} cancelled before it ran")]
    Cancelled {
        /// Position of the item in the input.
        index: usize,
    },
}

impl<E> MapError<E> {
    /// Position of the failed item in the input.
    pub fn index(&self) -> usize {
        match self {
            Self::Failed { index, .. }
            | Self::Panicked { index, .. }
            | Self::Refused { index, .. }
            | Self::Cancelled { index } => *index,
        }
    }
}

type Outcome<T, E> = (usize, Result<T, MapError<E>>);

/// Sends a call's outcome exactly once: the value, or `Cancelled` when the
/// pool drops the call without running it.
struct Reply<T, E> {
    index: usize,
    tx: Option<Sender<Outcome<T, E>>>,
}

impl<T, E> Reply<T, E> {
    fn send(mut self, r: Result<T, MapError<E>>) {
        if let Some(tx) = self.tx.take() {
            // The consumer may have gone (aborted): nobody to tell.
            let _ = tx.send((self.index, r));
        }
    }
}

impl<T, E> Drop for Reply<T, E> {
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send((self.index, Err(MapError::Cancelled { index: self.index })));
        }
    }
}

/// Results of [`map_completed`] in completion order. Dropping it cancels the
/// calls that have not started.
pub struct Completed<T, E> {
    rx: Receiver<Outcome<T, E>>,
    submit: Box<dyn FnMut(usize) -> Result<JobHandle<()>, SubmitError> + Send>,
    next_index: usize,
    total: usize,
    /// Calls submitted whose outcome has not been received.
    in_flight: usize,
    /// How many calls may be in the pool at once (its workers plus queue).
    window: usize,
    handles: Vec<JobHandle<()>>,
    refused: Vec<(usize, SubmitError)>,
}

/// Runs `f` on every item on `pool` and returns the results in completion
/// order. Use [`Completed::chunks`] to take them N at a time.
///
/// Calls are submitted as the iterator is driven, up to as many as the pool
/// can hold (its capacity plus its queue), blocking while the pool is full.
pub fn map_completed<S, I, T, E, F>(pool: &Pool<S>, items: Vec<I>, f: F) -> Completed<T, E>
where
    S: 'static,
    I: Send + 'static,
    T: Send + 'static,
    E: Send + 'static,
    F: Fn(I) -> Result<T, E> + Send + Sync + 'static,
{
    let (tx, rx) = channel();
    let f = std::sync::Arc::new(f);
    let total = items.len();
    let mut items: VecDeque<I> = items.into();
    let pool2 = pool.clone();
    let submit = move |index: usize| {
        let Some(item) = items.pop_front() else {
            return Err(SubmitError::Closed);
        };
        let reply = Reply {
            index,
            tx: Some(tx.clone()),
        };
        let f = f.clone();
        pool2.submit_blocking(move |_: &mut S| {
            let r = match catch_unwind(AssertUnwindSafe(|| f(item))) {
                Ok(Ok(v)) => Ok(v),
                Ok(Err(error)) => Err(MapError::Failed { index, error }),
                Err(p) => Err(MapError::Panicked {
                    index,
                    message: panic_message(&*p),
                }),
            };
            reply.send(r);
        })
    };
    Completed {
        rx,
        submit: Box::new(submit),
        next_index: 0,
        total,
        in_flight: 0,
        window: pool.window().max(1),
        handles: Vec::with_capacity(total),
        refused: Vec::new(),
    }
}

impl<T, E> Completed<T, E> {
    /// Submits more calls while the pool has room for ours.
    fn top_up(&mut self) {
        while self.next_index < self.total && self.in_flight < self.window {
            let index = self.next_index;
            self.next_index += 1;
            // A refused call's `Reply` was dropped, which sends `Cancelled`;
            // remember the real reason for when that arrives.
            match (self.submit)(index) {
                Ok(h) => self.handles.push(h),
                Err(e) => self.refused.push((index, e)),
            }
            self.in_flight += 1;
        }
    }

    /// Calls not yet finished (submitted or not).
    pub fn remaining(&self) -> usize {
        self.total - (self.next_index - self.in_flight)
    }

    /// Takes the results `n` at a time (the last group may be smaller). A
    /// failure is yielded as soon as it arrives, as an `Err`; the results
    /// gathered so far stay for the next group.
    ///
    /// # Panics
    /// If `n` is zero.
    pub fn chunks(self, n: usize) -> Chunks<T, E> {
        assert!(n > 0, "chunk size must be at least 1");
        Chunks {
            inner: self,
            n,
            buf: Vec::new(),
        }
    }

    /// Cancels every call that has not started; returns how many.
    pub fn abort(mut self) -> usize {
        self.handles.drain(..).filter(|h| h.cancel()).count() + (self.total - self.next_index)
    }
}

impl<T, E> Iterator for Completed<T, E> {
    type Item = Result<Done<T>, MapError<E>>;

    fn next(&mut self) -> Option<Self::Item> {
        self.top_up();
        if self.in_flight == 0 {
            return None;
        }
        // Every submitted call sends exactly one outcome (its `Reply` sends
        // on drop), and we hold a sender, so this cannot hang or fail.
        let (index, r) = self.rx.recv().ok()?;
        self.in_flight -= 1;
        Some(match r {
            Ok(value) => Ok(Done { index, value }),
            Err(MapError::Cancelled { .. }) => match self.refused.iter().position(|(i, _)| *i == index) {
                Some(p) => Err(MapError::Refused {
                    index,
                    error: self.refused.swap_remove(p).1,
                }),
                None => Err(MapError::Cancelled { index }),
            },
            Err(e) => Err(e),
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let r = self.remaining();
        (r, Some(r))
    }
}

/// Results of [`map_completed`] in groups of N (see [`Completed::chunks`]).
pub struct Chunks<T, E> {
    inner: Completed<T, E>,
    n: usize,
    buf: Vec<Done<T>>,
}

impl<T, E> Chunks<T, E> {
    /// Cancels every call that has not started; returns how many.
    pub fn abort(self) -> usize {
        self.inner.abort()
    }
}

impl<T, E> Iterator for Chunks<T, E> {
    type Item = Result<Vec<Done<T>>, MapError<E>>;

    fn next(&mut self) -> Option<Self::Item> {
        while self.buf.len() < self.n {
            match self.inner.next() {
                Some(Ok(d)) => self.buf.push(d),
                Some(Err(e)) => return Some(Err(e)),
                None => break,
            }
        }
        if self.buf.is_empty() {
            None
        } else {
            Some(Ok(std::mem::take(&mut self.buf)))
        }
    }
}
