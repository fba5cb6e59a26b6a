//! Several pools behind one handle (ants' `MultiPool`): spreads jobs over
//! independent queues so one lock is not shared by every submitter.

use std::time::Duration;

use crate::sync::{AtomicUsize, Ordering};

use super::core::Wait;
use super::{BuildError, JobHandle, JobOptions, Pool, PoolStats, ShutdownReport, SubmitError};

/// How a [`MultiPool`] picks the pool for the next job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Balance {
    /// Each pool in turn.
    #[default]
    RoundRobin,
    /// The pool with the fewest waiting plus running jobs.
    LeastLoaded,
}

/// N pools behind one handle. A job goes to the pool chosen by the
/// [`Balance`] rule; if that pool is full it overflows to the next one, and
/// only when every pool is full does it block (or get `Overloaded`, for
/// `try_submit` and non-blocking pools).
pub struct MultiPool<S: 'static = ()> {
    pools: Vec<Pool<S>>,
    balance: Balance,
    next: AtomicUsize,
}

impl<S: 'static> MultiPool<S> {
    /// Wraps already-built pools.
    pub fn new(pools: Vec<Pool<S>>, balance: Balance) -> Result<Self, BuildError> {
        if pools.is_empty() {
            return Err(BuildError::NoPools);
        }
        Ok(Self {
            pools,
            balance,
            next: AtomicUsize::new(0),
        })
    }

    /// Builds `n` pools with `make(i)`.
    pub fn build(
        n: usize,
        balance: Balance,
        mut make: impl FnMut(usize) -> Result<Pool<S>, BuildError>,
    ) -> Result<Self, BuildError> {
        let pools = (0..n).map(&mut make).collect::<Result<Vec<_>, _>>()?;
        Self::new(pools, balance)
    }

    /// The pools, in order.
    pub fn pools(&self) -> &[Pool<S>] {
        &self.pools
    }

    fn first_choice(&self) -> usize {
        match self.balance {
            Balance::RoundRobin => self.next.fetch_add(1, Ordering::Relaxed) % self.pools.len(),
            Balance::LeastLoaded => self
                .pools
                .iter()
                .enumerate()
                .min_by_key(|(_, p)| {
                    let s = p.stats();
                    s.waiting + s.running
                })
                .map_or(0, |(i, _)| i),
        }
    }

    /// Submits a job with a result handle.
    pub fn submit<F, T>(&self, f: F) -> Result<JobHandle<T>, SubmitError>
    where
        F: FnOnce(&mut S) -> T + Send + 'static,
        T: Send + 'static,
    {
        self.submit_with(JobOptions::default(), f)
    }

    /// Submits a job with options (a deadline).
    pub fn submit_with<F, T>(&self, opts: JobOptions, f: F) -> Result<JobHandle<T>, SubmitError>
    where
        F: FnOnce(&mut S) -> T + Send + 'static,
        T: Send + 'static,
    {
        let first = self.first_choice();
        let (task, handle) = Pool::<S>::make_task(f, opts);
        self.place(first, task, None)?;
        Ok(handle)
    }

    /// Submits without blocking: `Overloaded` only if every pool is full.
    pub fn try_submit<F, T>(&self, f: F) -> Result<JobHandle<T>, SubmitError>
    where
        F: FnOnce(&mut S) -> T + Send + 'static,
        T: Send + 'static,
    {
        let first = self.first_choice();
        let (task, handle) = Pool::<S>::make_task(f, JobOptions::default());
        self.place(first, task, Some(Wait::No))?;
        Ok(handle)
    }

    fn place(
        &self,
        first: usize,
        mut task: super::core::Task<S>,
        last_wait: Option<Wait>,
    ) -> Result<(), SubmitError> {
        let n = self.pools.len();
        let pool_at = |i: usize| &self.pools[(first + i) % n];
        // Overflow attempts that were refused are one job, not several:
        // take back the extra submit/reject counts of the attempts before
        // the one that decided.
        let uncount = |tried: usize| (0..tried).for_each(|k| pool_at(k).uncount_overflow());
        let mut err = SubmitError::Closed;
        for i in 0..n {
            let pool = pool_at(i);
            let wait = if i + 1 == n {
                last_wait.unwrap_or_else(|| pool.default_wait())
            } else {
                Wait::No
            };
            match pool.push_task(task, wait) {
                Ok(()) => {
                    uncount(i);
                    return Ok(());
                }
                Err((t, e)) => {
                    task = t;
                    if e != SubmitError::Closed || err == SubmitError::Closed {
                        err = e;
                    }
                }
            }
        }
        uncount(n - 1);
        Err(err)
    }

    /// Sum of the pools' stats.
    pub fn stats(&self) -> PoolStats {
        self.pools
            .iter()
            .map(Pool::stats)
            .fold(PoolStats::default(), |a, s| PoolStats {
                running: a.running + s.running,
                idle: a.idle + s.idle,
                waiting: a.waiting + s.waiting,
                blocked: a.blocked + s.blocked,
                capacity: a.capacity + s.capacity,
                workers: a.workers + s.workers,
                submitted: a.submitted + s.submitted,
                completed: a.completed + s.completed,
                rejected: a.rejected + s.rejected,
                panicked: a.panicked + s.panicked,
                expired: a.expired + s.expired,
                cancelled: a.cancelled + s.cancelled,
                resizes: a.resizes + s.resizes,
                autoscale_grows: a.autoscale_grows + s.autoscale_grows,
                autoscale_shrinks: a.autoscale_shrinks + s.autoscale_shrinks,
                spawn_failures: a.spawn_failures + s.spawn_failures,
            })
    }

    /// Shuts every pool down, each within `timeout`; the reports are summed.
    pub fn shutdown(&self, timeout: Duration) -> ShutdownReport {
        let deadline = std::time::Instant::now() + timeout;
        self.pools.iter().fold(ShutdownReport::default(), |a, p| {
            let r = p.shutdown(deadline.saturating_duration_since(std::time::Instant::now()));
            ShutdownReport {
                completed: a.completed + r.completed,
                cancelled: a.cancelled + r.cancelled,
                still_running: a.still_running + r.still_running,
            }
        })
    }
}
