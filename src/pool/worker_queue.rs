//! The container of idle workers, behind a small seam (as ants'
//! `worker_queue.go`): `len` / `insert` / `detach` / `retire_expired` /
//! `drain`, with two orders.
//!
//! Both containers keep workers ordered by the time they went idle, oldest
//! first, so the expired ones are found with one binary search.

use std::collections::VecDeque;

use crate::sync::Arc;

use super::core::Parker;

/// Which idle worker takes the next job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IdleOrder {
    /// The most recently idle worker (hot caches, and the others expire).
    #[default]
    Lifo,
    /// The longest idle worker (spreads work evenly over all workers).
    Fifo,
}

/// A parked worker and when it went idle (coarse clock, nanoseconds).
pub(crate) struct IdleWorker {
    pub(crate) parker: Arc<Parker>,
    pub(crate) since: u64,
}

/// The seam between the pool and its idle-worker container.
pub(crate) trait WorkerQueue: Send {
    fn len(&self) -> usize;
    fn insert(&mut self, w: IdleWorker);
    /// The worker that should take the next job.
    fn detach(&mut self) -> Option<IdleWorker>;
    /// Removes up to `max` workers idle since `cutoff` or earlier, oldest first.
    fn retire_expired(&mut self, cutoff: u64, max: usize) -> Vec<IdleWorker>;
    /// Removes up to `max` workers, oldest first (used when shrinking).
    fn retire_oldest(&mut self, max: usize) -> Vec<IdleWorker>;
    /// Removes every worker.
    fn drain(&mut self) -> Vec<IdleWorker>;
}

pub(crate) fn new_queue(order: IdleOrder) -> Box<dyn WorkerQueue> {
    match order {
        IdleOrder::Lifo => Box::new(LifoStack(Vec::new())),
        IdleOrder::Fifo => Box::new(FifoRing(VecDeque::new())),
    }
}

/// Idle workers as a stack: the newest on top is used first.
struct LifoStack(Vec<IdleWorker>);

impl WorkerQueue for LifoStack {
    fn len(&self) -> usize {
        self.0.len()
    }
    fn insert(&mut self, w: IdleWorker) {
        self.0.push(w);
    }
    fn detach(&mut self) -> Option<IdleWorker> {
        self.0.pop()
    }
    fn retire_expired(&mut self, cutoff: u64, max: usize) -> Vec<IdleWorker> {
        let expired = self.0.partition_point(|w| w.since <= cutoff);
        self.0.drain(..expired.min(max)).collect()
    }
    fn retire_oldest(&mut self, max: usize) -> Vec<IdleWorker> {
        let n = self.0.len().min(max);
        self.0.drain(..n).collect()
    }
    fn drain(&mut self) -> Vec<IdleWorker> {
        std::mem::take(&mut self.0)
    }
}

/// Idle workers as a ring: the oldest at the front is used first.
struct FifoRing(VecDeque<IdleWorker>);

impl WorkerQueue for FifoRing {
    fn len(&self) -> usize {
        self.0.len()
    }
    fn insert(&mut self, w: IdleWorker) {
        self.0.push_back(w);
    }
    fn detach(&mut self) -> Option<IdleWorker> {
        self.0.pop_front()
    }
    fn retire_expired(&mut self, cutoff: u64, max: usize) -> Vec<IdleWorker> {
        let expired = self.0.partition_point(|w| w.since <= cutoff);
        self.0.drain(..expired.min(max)).collect()
    }
    fn retire_oldest(&mut self, max: usize) -> Vec<IdleWorker> {
        let n = self.0.len().min(max);
        self.0.drain(..n).collect()
    }
    fn drain(&mut self) -> Vec<IdleWorker> {
        self.0.drain(..).collect()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn w(since: u64) -> IdleWorker {
        IdleWorker {
            parker: Arc::new(Parker::new()),
            since,
        }
    }

    #[test]
    fn lifo_detaches_newest_and_retires_oldest() {
        let mut q = new_queue(IdleOrder::Lifo);
        for s in [10, 20, 30, 40] {
            q.insert(w(s));
        }
        assert_eq!(q.detach().map(|w| w.since), Some(40));
        let r: Vec<u64> = q.retire_expired(20, 10).iter().map(|w| w.since).collect();
        assert_eq!(r, vec![10, 20]);
        assert_eq!(q.len(), 1);
        assert_eq!(q.retire_expired(25, 10).len(), 0);
    }

    #[test]
    fn fifo_detaches_oldest() {
        let mut q = new_queue(IdleOrder::Fifo);
        for s in [10, 20, 30] {
            q.insert(w(s));
        }
        assert_eq!(q.detach().map(|w| w.since), Some(10));
        assert_eq!(q.retire_oldest(1).first().map(|w| w.since), Some(20));
        assert_eq!(q.drain().len(), 1);
        assert_eq!(q.len(), 0);
    }

    #[test]
    fn retire_respects_max() {
        for order in [IdleOrder::Lifo, IdleOrder::Fifo] {
            let mut q = new_queue(order);
            for s in [1, 2, 3, 4] {
                q.insert(w(s));
            }
            let r: Vec<u64> = q.retire_expired(100, 3).iter().map(|w| w.since).collect();
            assert_eq!(r, vec![1, 2, 3]);
        }
    }
}
