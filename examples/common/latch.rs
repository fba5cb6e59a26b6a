//! A countdown latch shared by the pool comparison example and benches:
//! every system's jobs count down the same way, and the waiter wakes when the
//! last one is done.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};

/// Counts jobs down; the waiter wakes when the last one is done.
pub struct Latch {
    left: AtomicUsize,
    done: Mutex<bool>,
    cv: Condvar,
}

impl Latch {
    /// A latch waiting for `n` count-downs.
    pub fn new(n: usize) -> Arc<Self> {
        Arc::new(Self {
            left: AtomicUsize::new(n),
            done: Mutex::new(n == 0),
            cv: Condvar::new(),
        })
    }

    /// One job is done.
    #[inline]
    pub fn count_down(&self) {
        if self.left.fetch_sub(1, Ordering::AcqRel) == 1 {
            *self.done.lock().unwrap() = true;
            self.cv.notify_all();
        }
    }

    /// Waits until every job is done.
    pub fn wait(&self) {
        let mut d = self.done.lock().unwrap();
        while !*d {
            d = self.cv.wait(d).unwrap();
        }
    }
}
