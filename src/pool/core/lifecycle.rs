//! Lifecycle: starting workers, resize, idle expiry, close, the shutdown
//! barrier, restart, and the housekeeper's clock.
//!
//! Invariants:
//! - `workers` counts threads that serve jobs (or will, once their state is
//!   built); `threads` also counts threads told to retire that have not yet
//!   gone. The shutdown barrier waits for `threads == 0` and an empty gate.
//! - Growth takes effect at once (queued jobs get new workers); surplus
//!   workers finish their current job and then leave; a retired idle
//!   worker is taken off `workers` by whoever retired it (loom:
//!   `tune_shrinks_against_submit_and_park`, `reap_races_submit`).
//! - Close drains by default: no job accepted before the close is lost.
//!   Jobs that no thread will ever run (none left, none can start) are
//!   cancelled by whoever sees that last: the last thread out, a failed
//!   spawn, or the barrier (loom: `shutdown_races_submit`,
//!   `shutdown_now_cancels_or_runs`, `restart_races_shutdown`).
//! - Every accepted job ends in exactly one outcome; `cancel` ends queued
//!   ones as cancelled.

use std::time::{Duration, Instant};

use crate::sync::{lock, thread, wait_timeout, wait_until, Arc, Ordering};

use super::super::error::TuneError;
use super::super::handle::Abort;
use super::wake::{Signal, IDLE, SEARCHING};
use super::worker::worker_main;
use super::{Deferred, Shared, Task};

impl<S: 'static> Shared<S> {
    /// Starts workers up to `n` (used at build, restart and for min_workers).
    pub(crate) fn start_workers(this: &Arc<Self>, n: usize) -> std::io::Result<()> {
        for _ in 0..n {
            {
                let mut st = lock(&this.state);
                if st.workers >= n.min(st.capacity) {
                    return Ok(());
                }
                this.enlist(&mut st);
            }
            if let Err(e) = Shared::spawn_worker(this) {
                this.spawn_failed();
                return Err(e);
            }
        }
        Ok(())
    }

    /// Starts one worker thread; the caller has already counted it (`enlist`).
    pub(super) fn spawn_worker(this: &Arc<Self>) -> std::io::Result<()> {
        let id = {
            let mut st = lock(&this.state);
            st.next_id += 1;
            st.next_id
        };
        let shared = this.clone();
        let mut b = thread::Builder::new().name(format!("{}-{id}", this.config.thread_name));
        if let Some(sz) = this.config.stack_size {
            b = b.stack_size(sz);
        }
        b.spawn(move || worker_main(shared, id)).map(drop)
    }

    /// Undoes the counts of a worker whose thread the OS refused to start.
    /// If that leaves a closed pool without threads, what waits is cancelled.
    pub(super) fn spawn_failed(&self) {
        let mut st = lock(&self.state);
        st.workers -= 1;
        st.threads -= 1;
        st.starting -= 1;
        self.publish(&mut st);
        self.counters.spawn_failures.fetch_add(1, Ordering::Relaxed);
        let cancel = if st.threads == 0 && st.closed {
            self.take_queued()
        } else {
            Vec::new()
        };
        if st.threads == 0 {
            self.exited.notify_all();
        }
        drop(st);
        self.cancel(cancel);
    }

    /// Takes every job still queued (to be cancelled outside the lock).
    pub(super) fn take_queued(&self) -> Vec<Task<S>> {
        std::iter::from_fn(|| self.queue.pop()).collect()
    }

    /// Ends jobs that never started as cancelled.
    pub(super) fn cancel(&self, tasks: Vec<Task<S>>) {
        if tasks.is_empty() {
            return;
        }
        let ledger = self.ledger();
        for t in tasks {
            t.job.abort(Abort::Cancelled, &ledger);
        }
    }

    /// Changes the capacity. Growth takes effect at once; surplus workers
    /// finish their current job and then exit.
    pub(crate) fn tune(this: &Arc<Self>, capacity: usize) -> Result<(), TuneError> {
        if capacity == 0 {
            return Err(TuneError);
        }
        let mut st = lock(&this.state);
        if st.capacity == capacity {
            return Ok(());
        }
        let grew = capacity > st.capacity;
        st.capacity = capacity;
        this.counters.resizes.fetch_add(1, Ordering::Relaxed);
        let mut d = Deferred::new();
        if grew {
            this.publish(&mut st);
            this.dispatch(&mut st, &mut d);
            d.notify_submitters = this.release_blocked(&mut st);
        } else {
            let surplus = st.workers.saturating_sub(capacity);
            for w in st.idle.retire_oldest(surplus) {
                st.workers -= 1;
                this.wake.fetch_sub(IDLE, Ordering::SeqCst);
                d.exit.push(w.parker);
            }
            this.publish(&mut st);
        }
        drop(st);
        // Workers waiting to retry a failed factory are the first to go
        // when the pool shrinks: they look now, not after their backoff.
        if !grew {
            this.retry_cv.notify_all();
        }
        Shared::apply(this, d);
        Ok(())
    }

    /// Retires idle workers above the minimum that have been idle at least
    /// the expiry as of `now`. Returns how many were retired.
    pub(crate) fn reap_idle(&self, now: Instant) -> usize {
        let Some(expiry) = self.config.expiry else {
            return 0;
        };
        let mut st = lock(&self.state);
        let keep = self.keep_warm(&st);
        let surplus = st.workers.saturating_sub(keep);
        let now_ns = self.nanos_since_epoch(now);
        let Some(cutoff) = now_ns.checked_sub(u64::try_from(expiry.as_nanos()).unwrap_or(u64::MAX)) else {
            return 0;
        };
        let retired = st.idle.retire_expired(cutoff, surplus);
        let n = retired.len();
        st.workers -= n;
        // Spawnable first, then fewer parked: a submitter reading `wake`
        // in between must still see a spare worker (loom:
        // `reap_races_submit`, which found the other order's lost job).
        self.publish(&mut st);
        self.wake.fetch_sub(IDLE * n as u64, Ordering::SeqCst);
        drop(st);
        for w in retired {
            w.parker.send(Signal::Exit);
        }
        n
    }

    /// Stops intake. With `cancel_queued`, jobs not yet started are cancelled;
    /// otherwise they are drained by the workers. Returns the pool's
    /// generation, for `wait_exited`.
    pub(crate) fn close(this: &Arc<Self>, cancel_queued: bool) -> u64 {
        let mut st = lock(&this.state);
        st.closed = true;
        let generation = st.generation;
        this.publish(&mut st);
        let mut d = Deferred::new();
        // With no thread left and no submitter about to start one, nobody
        // would drain the queue (all spawns failed).
        if cancel_queued || (st.threads == 0 && this.in_gate() == 0) {
            d.cancel = this.take_queued();
        }
        for w in st.idle.drain() {
            this.wake.fetch_sub(IDLE - SEARCHING, Ordering::SeqCst);
            d.wake.push(w.parker);
        }
        this.release_blocked(&mut st);
        d.notify_submitters = true;
        drop(st);
        // Workers waiting to retry their factory give up.
        this.retry_cv.notify_all();
        Shared::apply(this, d);
        generation
    }

    /// Waits until every worker thread has gone (and every submitter that
    /// was admitted before the close has pushed, and started a worker if it
    /// needed one), at most until `deadline`. Jobs left queued then (the
    /// deadline passed, or no thread is left to run them) are cancelled.
    /// Returns how many jobs were still running. If the pool is reopened
    /// meanwhile (a new `generation`), it stops waiting: the workers serve
    /// the reopened pool, and what runs is reported.
    pub(crate) fn wait_exited(&self, generation: u64, deadline: Option<Instant>) -> usize {
        let mut st = lock(&self.state);
        while st.generation == generation && (st.threads > 0 || (st.closed && self.in_gate() > 0)) {
            let (g, passed) = wait_until(&self.exited, st, deadline);
            st = g;
            if passed {
                break;
            }
        }
        if st.generation != generation {
            drop(st);
            return usize::try_from(self.in_flight()).unwrap_or(usize::MAX);
        }
        let gone = st.threads == 0 && self.in_gate() == 0;
        // Under the lock, so that no restart can come between.
        let left = self.take_queued();
        drop(st);
        self.cancel(left);
        if gone {
            return 0;
        }
        usize::try_from(self.in_flight()).unwrap_or(usize::MAX)
    }

    /// Reopens a closed pool.
    pub(crate) fn reopen(this: &Arc<Self>) -> std::io::Result<()> {
        let warm = {
            let mut st = lock(&this.state);
            if !st.closed {
                return Ok(());
            }
            st.closed = false;
            st.generation += 1;
            this.publish(&mut st);
            // Jobs may wait that no worker of the closed pool took (its
            // last worker left with its factory failing): start one.
            let mut d = Deferred::new();
            this.dispatch(&mut st, &mut d);
            let warm = this.keep_warm(&st);
            drop(st);
            Shared::apply(this, d);
            warm
        };
        // A shutdown still waiting for the old generation stops waiting.
        this.exited.notify_all();
        Shared::start_workers(this, warm)
    }

    // ---- housekeeping ----

    pub(crate) fn housekeeper_wait(&self, tick: Duration) -> bool {
        let st = lock(&self.state);
        if st.housekeeper_stop {
            return false;
        }
        let (st, _) = wait_timeout(&self.housekeeper_cv, st, tick);
        !st.housekeeper_stop
    }

    pub(crate) fn stop_housekeeper(&self) {
        lock(&self.state).housekeeper_stop = true;
        self.housekeeper_cv.notify_all();
    }

    pub(super) fn now_coarse(&self) -> u64 {
        self.coarse_now.load(Ordering::Relaxed)
    }

    /// `t` as nanoseconds since the pool's epoch (the unit of the coarse clock).
    fn nanos_since_epoch(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Reads the clock and refreshes the cached coarse time.
    pub(crate) fn refresh_clock(&self) -> Instant {
        let now = self.now();
        let ns = self.nanos_since_epoch(now);
        self.coarse_now.fetch_max(ns, Ordering::Relaxed);
        now
    }
}
