//! The synchronisation primitives the concurrency cores are built on.
//!
//! Under `--cfg loom` these are loom's model-checked versions, so the pool's
//! submit / take / complete / shutdown protocol can be explored exhaustively
//! (see `tests/loom_pool.rs`); otherwise they are the standard library's.

#[cfg(loom)]
pub(crate) use loom::sync::{
    atomic::{AtomicU64, AtomicUsize, Ordering},
    Arc, Condvar, Mutex, MutexGuard,
};
#[cfg(loom)]
pub(crate) use loom::thread;

#[cfg(not(loom))]
pub(crate) use std::sync::{
    atomic::{AtomicU64, AtomicUsize, Ordering},
    Arc, Condvar, Mutex, MutexGuard,
};
#[cfg(not(loom))]
pub(crate) use std::thread;

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
