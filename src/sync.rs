//! The synchronisation primitives the concurrency cores are built on.
//!
//! Under `--cfg loom` these are loom's model-checked versions, so the pool's
//! submit / take / complete / shutdown protocol can be explored exhaustively
//! (see `tests/loom_pool.rs`); otherwise they are the standard library's.

#[cfg(loom)]
pub(crate) use loom::sync::{
    atomic::{fence, AtomicBool, AtomicU64, AtomicUsize, Ordering},
    Arc, Condvar, Mutex, MutexGuard,
};
#[cfg(loom)]
pub(crate) use loom::thread;

#[cfg(not(loom))]
pub(crate) use std::sync::{
    atomic::{fence, AtomicBool, AtomicU64, AtomicUsize, Ordering},
    Arc, Condvar, Mutex, MutexGuard,
};
#[cfg(not(loom))]
pub(crate) use std::thread;

/// An unbounded multi-producer, multi-consumer FIFO queue: crossbeam's
/// lock-free `SegQueue` (jobs stored inline in blocks of 31 slots), or under
/// loom a mutex-guarded stand-in with the same interface, so the protocol
/// around it can be model-checked.
#[cfg(not(loom))]
pub(crate) struct Queue<T>(crossbeam_queue::SegQueue<T>);

#[cfg(not(loom))]
impl<T> Queue<T> {
    pub(crate) fn new() -> Self {
        Self(crossbeam_queue::SegQueue::new())
    }
    #[inline]
    pub(crate) fn push(&self, t: T) {
        self.0.push(t);
    }
    #[inline]
    pub(crate) fn pop(&self) -> Option<T> {
        self.0.pop()
    }
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }
}

/// The loom stand-in: the items under a mutex, and their number in an
/// atomic of its own. `is_empty` and `len` read only the atomic, as the
/// real queue reads its indices without a lock, so the mutex does not order
/// a submitter's push against a parking worker's look at the queue: the
/// fences of that protocol are what the models check. The length is stored
/// with `Release` and read with `Acquire`, weaker than the real queue's
/// `SeqCst` indices: loom lets a `SeqCst` load read only the newest `SeqCst`
/// store, which would hide the fences as the mutex did. With it, deleting
/// either fence of the submit/park handshake makes
/// `spinning_worker_races_submit` deadlock.
#[cfg(loom)]
pub(crate) struct Queue<T> {
    items: Mutex<std::collections::VecDeque<T>>,
    len: AtomicUsize,
}

#[cfg(loom)]
impl<T> Queue<T> {
    pub(crate) fn new() -> Self {
        Self {
            items: Mutex::new(std::collections::VecDeque::new()),
            len: AtomicUsize::new(0),
        }
    }
    pub(crate) fn push(&self, t: T) {
        let mut q = lock(&self.items);
        q.push_back(t);
        self.len.store(q.len(), Ordering::Release);
    }
    pub(crate) fn pop(&self) -> Option<T> {
        let mut q = lock(&self.items);
        let t = q.pop_front();
        self.len.store(q.len(), Ordering::Release);
        t
    }
    pub(crate) fn is_empty(&self) -> bool {
        self.len.load(Ordering::Acquire) == 0
    }
    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }
}

/// Locks `m`, ignoring poisoning: the cores never run user code while holding
/// a lock, so a poisoned lock still guards consistent data.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Waits on `cv`, ignoring poisoning (see [`lock`]).
pub(crate) fn wait<'a, T>(cv: &Condvar, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
    cv.wait(guard).unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Waits on `cv` for at most `dur`; returns the guard and whether it timed out.
pub(crate) fn wait_timeout<'a, T>(
    cv: &Condvar,
    guard: MutexGuard<'a, T>,
    dur: std::time::Duration,
) -> (MutexGuard<'a, T>, bool) {
    let (g, r) = cv
        .wait_timeout(guard, dur)
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    (g, r.timed_out())
}

/// Waits on `cv` once, but not past `deadline` when one is given. Returns
/// the guard and whether the deadline had already passed (then nothing was
/// waited). Callers loop on their own condition around it.
pub(crate) fn wait_until<'a, T>(
    cv: &Condvar,
    guard: MutexGuard<'a, T>,
    deadline: Option<std::time::Instant>,
) -> (MutexGuard<'a, T>, bool) {
    match deadline {
        None => (wait(cv, guard), false),
        Some(d) => {
            let now = std::time::Instant::now();
            if now >= d {
                return (guard, true);
            }
            (wait_timeout(cv, guard, d - now).0, false)
        }
    }
}
