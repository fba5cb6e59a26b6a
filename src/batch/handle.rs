//! The handle through which a batched item's caller gets its own result.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::pool::handle::Slot;
use crate::sync::{Arc, AtomicUsize, Ordering};

use super::error::BatchError;

pub(crate) type ItemSlot<O> = Slot<O, BatchError>;

/// The handle to one submitted item's result.
///
/// Wait with [`join`](Self::join) or [`join_timeout`](Self::join_timeout), or
/// `.await` it. Dropping the handle before the item is sent downstream
/// abandons the item: it is removed before the next call and never computed.
#[must_use = "dropping a BatchHandle abandons the item if it has not been sent"]
pub struct BatchHandle<O> {
    slot: Option<Arc<ItemSlot<O>>>,
    /// The batcher's count of handles dropped before their item was sent.
    abandoned: Arc<AtomicUsize>,
}

impl<O> BatchHandle<O> {
    pub(crate) fn new(slot: Arc<ItemSlot<O>>, abandoned: Arc<AtomicUsize>) -> Self {
        Self {
            slot: Some(slot),
            abandoned,
        }
    }

    /// Waits for the item's result.
    pub fn join(mut self) -> Result<O, BatchError> {
        self.slot
            .take()
            .and_then(|slot| slot.join_until(None))
            .unwrap_or(Err(BatchError::Abandoned))
    }

    /// Waits at most `timeout`; on time-out the handle is given back (and
    /// the item stays queued or in flight).
    pub fn join_timeout(self, timeout: Duration) -> Result<Result<O, BatchError>, Self> {
        let Some(slot) = self.slot.as_ref() else {
            return Ok(Err(BatchError::Abandoned));
        };
        slot.join_until(Some(Instant::now() + timeout)).ok_or(self)
    }

    /// Whether the item has its outcome.
    pub fn is_finished(&self) -> bool {
        self.slot.as_ref().is_none_or(|s| s.is_finished())
    }

    /// Lets the item be sent and computed with nobody waiting for its
    /// result (an item that carries its own way to answer).
    pub fn detach(mut self) {
        self.slot = None;
    }
}

impl<O> Drop for BatchHandle<O> {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            // Counted as abandoned by whoever removes it from the queue;
            // the hint tells a full queue that there is something to remove.
            if let Some(w) = slot.decide_unstarted(BatchError::Abandoned) {
                self.abandoned.fetch_add(1, Ordering::AcqRel);
                // Not let out of a drop (it may run during unwinding).
                let _ = w.caught();
            }
        }
    }
}

impl<O> std::fmt::Debug for BatchHandle<O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchHandle")
            .field("finished", &self.is_finished())
            .finish()
    }
}

impl<O> Unpin for BatchHandle<O> {}

impl<O> Future for BatchHandle<O> {
    type Output = Result<O, BatchError>;

    /// # Panics
    /// If polled again after it returned `Ready` (as futures may).
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(slot) = self.slot.as_ref() else {
            panic!("BatchHandle polled after completion");
        };
        let r = std::task::ready!(slot.poll_take(cx));
        self.slot = None;
        Poll::Ready(r)
    }
}
