//! What the pool comparison example and the benches share: a countdown
//! latch (every system's jobs count down the same way, and the waiter wakes
//! when the last one is done), and the crossbeam-channel pool baseline.

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

type BoxedJob = Box<dyn FnOnce() + Send>;

/// The baseline a Rust service would write by hand: worker threads reading
/// boxed closures from one crossbeam channel (bounded or not). Dropping it
/// closes the channel and joins the workers.
pub struct ChannelPool {
    tx: Option<crossbeam_channel::Sender<BoxedJob>>,
    workers: Vec<std::thread::JoinHandle<()>>,
}

impl ChannelPool {
    /// `threads` workers; with `bound`, `execute` blocks while that many wait.
    pub fn new(threads: usize, bound: Option<usize>) -> Self {
        let (tx, rx) = match bound {
            Some(n) => crossbeam_channel::bounded::<BoxedJob>(n),
            None => crossbeam_channel::unbounded::<BoxedJob>(),
        };
        let workers = (0..threads)
            .map(|_| {
                let rx = rx.clone();
                std::thread::spawn(move || {
                    while let Ok(f) = rx.recv() {
                        f();
                    }
                })
            })
            .collect();
        Self {
            tx: Some(tx),
            workers,
        }
    }

    /// Queues a job (blocking while a bounded channel is full).
    pub fn execute(&self, f: impl FnOnce() + Send + 'static) {
        if let Some(tx) = &self.tx {
            tx.send(Box::new(f)).expect("the workers outlive the sender");
        }
    }
}

impl Drop for ChannelPool {
    fn drop(&mut self) {
        drop(self.tx.take());
        for w in self.workers.drain(..) {
            w.join().expect("worker");
        }
    }
}
