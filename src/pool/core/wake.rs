//! Waking: who runs a queued job, without a lost wake-up and without a
//! thread per job.
//!
//! The `wake` word packs the workers that are searching (spinning, or woken
//! and on their way to the queue), the parked ones, and whether another
//! worker may be spawned. A worker whose state is still being built is
//! neither: it is counted in `State::starting`, so a slow factory delays
//! only its own worker, and dispatch spawns another only for jobs beyond
//! those the starting workers will take.
//!
//! Invariants:
//! - No lost wake-up: a submitter pushes, fences, then reads `wake`; a
//!   worker going to park adds itself to `wake`, fences, then looks at the
//!   queue. One of them sees the other (loom: `submit_races_park`,
//!   `spinning_worker_races_submit`, `tune_shrinks_against_submit_and_park`,
//!   `reap_races_submit`).
//! - A change that takes a spare away from submitters (retiring a parked
//!   worker) is made after the change that gives one (spawnable), never
//!   before: a submitter reading `wake` in between still dispatches (loom:
//!   `reap_races_submit`).
//! - A searching worker that takes a job, if it was the last searcher and
//!   jobs remain while a worker is spare, wakes or spawns one more, so
//!   parallelism grows one worker at a time while a backlog lasts (loom:
//!   `two_workers_drain_on_shutdown`).
//! - An idle worker in the container receives exactly one signal per park:
//!   `Wake` (whoever detached it counted it as searching) or `Exit`
//!   (whoever detached it already took it off `workers`).

use crate::sync::{fence, lock, wait, Arc, Condvar, Mutex, MutexGuard, Ordering};

use super::super::worker_queue::IdleWorker;
use super::{Deferred, Shared, State};

// The `wake` word: workers searching (low 20 bits), workers parked (next 20
// bits), and whether another worker may be spawned.
pub(super) const SEARCHING: u64 = 1;
pub(super) const IDLE: u64 = 1 << 20;
const FIELD: u64 = IDLE - 1;
pub(super) const SPAWNABLE: u64 = 1 << 40;

pub(super) fn searching(w: u64) -> u64 {
    w & FIELD
}

/// Whether a parked worker could be woken or a new one spawned.
pub(super) fn has_spare(w: u64) -> bool {
    (w >> 20) & FIELD > 0 || w & SPAWNABLE != 0
}

/// A spinning worker (and a submitter polling a full pool) yields its core
/// once every this many polls (a yield is a system call; with nothing else
/// runnable it is pure overhead).
pub(super) const YIELD_EVERY: u32 = 16;

/// Workers allowed to spin at once (measured: a second spinner burns CPU
/// the submitter needs, for no gain on 2 cores).
const MAX_SPINNERS: u64 = 1;

/// What a parked worker is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Signal {
    Empty,
    Wake,
    Exit,
}

/// One idle worker's private wake-up slot.
pub(crate) struct Parker {
    signal: Mutex<(Signal, bool)>,
    cv: Condvar,
}

impl Parker {
    pub(crate) fn new() -> Self {
        Self {
            signal: Mutex::new((Signal::Empty, false)),
            cv: Condvar::new(),
        }
    }

    pub(super) fn send(&self, s: Signal) {
        let mut g = lock(&self.signal);
        g.0 = s;
        let sleeping = g.1;
        drop(g);
        if sleeping {
            self.cv.notify_one();
        }
    }

    fn park(&self) -> Signal {
        let mut g = lock(&self.signal);
        while g.0 == Signal::Empty {
            g.1 = true;
            g = wait(&self.cv, g);
            g.1 = false;
        }
        std::mem::replace(&mut g.0, Signal::Empty)
    }
}

/// How a worker's attempt to park ended.
pub(super) enum Parked<'a> {
    /// Do not sleep: look at the queue again.
    Again,
    /// Woken by a dispatcher (now counted as searching).
    Woken,
    /// The pool has more workers than capacity: leave (the caller takes
    /// itself off `workers`).
    Leave(MutexGuard<'a, State>),
    /// Retired from the idle container (already off `workers`).
    Retired(MutexGuard<'a, State>),
}

impl<S: 'static> Shared<S> {
    /// Takes the lock and wakes or spawns a worker if one is needed.
    pub(super) fn dispatch_now(this: &Arc<Self>) {
        let mut st = lock(&this.state);
        let mut d = Deferred::new();
        this.dispatch(&mut st, &mut d);
        drop(st);
        Shared::apply(this, d);
    }

    /// Wakes one parked worker if jobs wait and nobody is searching (it
    /// wakes the next if jobs remain); with none parked, spawns workers for
    /// the jobs beyond those that the workers still building their state
    /// will take, side by side, up to the capacity.
    pub(super) fn dispatch(&self, st: &mut State, d: &mut Deferred<S>) {
        let w = self.wake.load(Ordering::SeqCst);
        if searching(w) > 0 || self.queue.is_empty() {
            return;
        }
        if let Some(idle) = st.idle.detach() {
            self.wake.fetch_sub(IDLE - SEARCHING, Ordering::SeqCst);
            d.wake.push(idle.parker);
            return;
        }
        let wanted = self.queue.len().saturating_sub(st.starting);
        for _ in 0..wanted.min(st.capacity.saturating_sub(st.workers)) {
            self.enlist(st);
            d.spawn += 1;
        }
    }

    /// Counts a worker about to be spawned: in `workers`, in `threads`, and
    /// as starting (it becomes searching once its state is built).
    pub(super) fn enlist(&self, st: &mut State) {
        st.workers += 1;
        st.threads += 1;
        st.starting += 1;
        self.publish(st);
    }

    /// A searching worker took a job. If it was the last searcher and jobs
    /// remain while a worker is spare, it wakes one more.
    pub(super) fn stop_searching(this: &Arc<Self>) {
        let before = this.wake.fetch_sub(SEARCHING, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        if searching(before) == 1 && has_spare(before) && !this.queue.is_empty() {
            Shared::dispatch_now(this);
        }
    }

    /// Becomes the (one) spinning searcher, if nobody searches.
    pub(super) fn try_search(&self) -> bool {
        self.wake
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |w| {
                (searching(w) < MAX_SPINNERS).then_some(w + SEARCHING)
            })
            .is_ok()
    }

    /// A worker found the queue empty: it parks in the idle container until
    /// a dispatcher wakes it or it is retired. `searching` is the worker's
    /// own note of whether it is counted as searching, kept up to date.
    pub(super) fn park<'a>(&'a self, parker: &Arc<Parker>, searching: &mut bool) -> Parked<'a> {
        let mut st = lock(&self.state);
        if st.closed {
            return Parked::Again;
        }
        if st.workers > st.capacity {
            return Parked::Leave(st);
        }
        // Count as parked, then look at the queue once more: a submitter
        // that pushed before this saw us as not parked and did not wake anyone.
        let parked = if *searching { IDLE - SEARCHING } else { IDLE };
        self.wake.fetch_add(parked, Ordering::SeqCst);
        *searching = false;
        fence(Ordering::SeqCst);
        if !self.queue.is_empty() {
            self.wake.fetch_sub(IDLE - SEARCHING, Ordering::SeqCst);
            *searching = true;
            return Parked::Again;
        }
        st.idle.insert(IdleWorker {
            parker: parker.clone(),
            since: self.now_coarse(),
        });
        drop(st);
        match parker.park() {
            Signal::Exit => Parked::Retired(lock(&self.state)),
            _ => {
                // Whoever woke us counted us as searching.
                *searching = true;
                Parked::Woken
            }
        }
    }
}
