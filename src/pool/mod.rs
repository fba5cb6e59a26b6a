//! A bounded worker pool in the style of Go's `ants`, with result handles,
//! per-job deadlines, per-worker state, live resize, idle expiry, panic
//! isolation, graceful shutdown and autoscaling on queue watermarks.
//!
//! Every accepted job ends in exactly one outcome: done, panicked, expired
//! (its deadline passed before it started), or cancelled (by its handle or by
//! shutdown). A refused submit says so at once (`Overloaded`, `Timeout`,
//! `Closed`). At rest the counters satisfy
//! `submitted = completed + panicked + expired + cancelled + rejected`.
//!
//! ```
//! use facepool::pool::{Pool, SubmitError};
//!
//! // A pool of 2 workers; at most 8 jobs wait; refuse instead of blocking.
//! let pool = Pool::builder().capacity(2).queue_capacity(8).nonblocking(true).build().unwrap();
//! let handles: Vec<_> = (0..4).map(|i| pool.submit(move |_| i * i).unwrap()).collect();
//! let squares: Vec<i32> = handles.into_iter().map(|h| h.join().unwrap()).collect();
//! assert_eq!(squares, [0, 1, 4, 9]);
//! let report = pool.shutdown(std::time::Duration::from_secs(5));
//! assert_eq!(report.still_running, 0);
//! assert_eq!(pool.try_submit(|_| ()).unwrap_err(), SubmitError::Closed);
//! ```

pub mod autoscale;
mod builder;
pub mod clock;
pub(crate) mod core;
mod error;
pub(crate) mod handle;
mod job;
mod multi;
mod worker_queue;

use std::time::{Duration, Instant};

use crate::sync::{lock, thread, Arc, Mutex, Ordering};

pub use self::autoscale::{decide, Decision, Observation, PolicyError, ScalePolicy};
pub use self::builder::PoolBuilder;
pub use self::clock::{Clock, ManualClock, SystemClock};
pub use self::error::{BuildError, JobError, SubmitError, TuneError};
pub use self::handle::JobHandle;
pub use self::multi::{Balance, MultiPool};
pub use self::worker_queue::IdleOrder;

use self::core::{Shared, Task, Wait};
#[cfg(not(loom))]
use self::handle::Job;
use self::handle::{ExecJob, HandleJob};
use self::job::JobBox;

/// A job the pool refused, handed back to its submitter so that it can
/// note why before the job is dropped (a graph node's job ends its node
/// when dropped unrun).
#[cfg(not(loom))]
pub(crate) struct RefusedJob<S: 'static>(#[allow(dead_code)] Task<S>);

/// A point-in-time view of the pool's gauges and counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PoolStats {
    /// Jobs being run now.
    pub running: usize,
    /// Workers parked, waiting for a job.
    pub idle: usize,
    /// Jobs waiting in the queue.
    pub waiting: usize,
    /// Submitters blocked on a full queue.
    pub blocked: usize,
    /// Maximum number of workers now.
    pub capacity: usize,
    /// Worker threads serving now.
    pub workers: usize,
    /// Every submit call, accepted or not.
    pub submitted: u64,
    /// Jobs that ran and returned.
    pub completed: u64,
    /// Submits refused (`Overloaded`, `Timeout`, `Closed`).
    pub rejected: u64,
    /// Jobs that panicked.
    pub panicked: u64,
    /// Jobs dropped because their deadline passed before they started.
    pub expired: u64,
    /// Jobs cancelled before they started (handle or shutdown).
    pub cancelled: u64,
    /// Capacity changes (by `tune` or the autoscaler).
    pub resizes: u64,
    /// Autoscaler decisions to grow.
    pub autoscale_grows: u64,
    /// Autoscaler decisions to shrink.
    pub autoscale_shrinks: u64,
    /// Worker threads the OS refused to start.
    pub spawn_failures: u64,
}

impl PoolStats {
    /// Accepted jobs that have not ended yet.
    pub fn in_flight(&self) -> u64 {
        self.submitted
            .saturating_sub(self.rejected + self.completed + self.panicked + self.expired + self.cancelled)
    }
}

/// What a shutdown achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ShutdownReport {
    /// Jobs that ended by running (done, panicked) or expiring during the shutdown.
    pub completed: u64,
    /// Jobs cancelled during the shutdown.
    pub cancelled: u64,
    /// Jobs still running when the timeout passed (they finish on their own).
    pub still_running: usize,
}

/// Options of one job.
#[derive(Debug, Clone, Copy, Default)]
pub struct JobOptions {
    /// If the job has not started by then, it is dropped and ends `Expired`.
    pub deadline: Option<Instant>,
}

impl JobOptions {
    /// A job that must start before `deadline`.
    pub fn deadline(deadline: Instant) -> Self {
        Self {
            deadline: Some(deadline),
        }
    }

    /// A job that must start within `d` from now.
    pub fn within(d: Duration) -> Self {
        Self::deadline(Instant::now() + d)
    }
}

struct PoolInner<S: 'static> {
    shared: Arc<Shared<S>>,
    housekeeper: Mutex<Option<thread::JoinHandle<()>>>,
    drop_timeout: Option<Duration>,
}

impl<S: 'static> Drop for PoolInner<S> {
    fn drop(&mut self) {
        let deadline = self.drop_timeout.map(|d| Instant::now() + d);
        let generation = Shared::close(&self.shared, false);
        self.shared.stop_housekeeper();
        if core::on_worker_of(&self.shared) {
            // The last handle was dropped by one of the pool's own jobs:
            // waiting here would wait for ourselves. The workers still drain
            // the queue and exit on their own.
            return;
        }
        self.shared.wait_exited(generation, deadline);
        if let Some(h) = lock(&self.housekeeper).take() {
            // The housekeeper never runs user code; a join error cannot carry
            // anything useful.
            let _ = h.join();
        }
    }
}

/// The worker pool. Cheap to clone; the pool shuts down (draining its queue)
/// when the last clone is dropped.
///
/// `S` is the per-worker state (see [`PoolBuilder::worker_state`]); jobs are
/// closures `FnOnce(&mut S) -> T`.
pub struct Pool<S: 'static = ()> {
    inner: Arc<PoolInner<S>>,
}

impl<S: 'static> Clone for Pool<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<S: 'static> std::fmt::Debug for Pool<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("stats", &self.stats()).finish()
    }
}

impl Pool<()> {
    /// A builder with the defaults of [`PoolBuilder::new`].
    pub fn builder() -> PoolBuilder<()> {
        PoolBuilder::new()
    }
}

impl<S: 'static> Pool<S> {
    fn start(
        shared: Arc<Shared<S>>,
        warm: usize,
        tick: Duration,
        drop_timeout: Option<Duration>,
    ) -> Result<Self, BuildError> {
        let pool = Pool {
            inner: Arc::new(PoolInner {
                shared: shared.clone(),
                housekeeper: Mutex::new(None),
                drop_timeout,
            }),
        };
        // If anything fails from here on, dropping `pool` tears down what
        // was started.
        Shared::start_workers(&shared, warm)?;
        let needs_housekeeper = shared.config.expiry.is_some() || shared.config.autoscale.is_some();
        if needs_housekeeper && !tick.is_zero() && !cfg!(loom) {
            let hk = shared.clone();
            let h = thread::Builder::new()
                .name(format!("{}-housekeeper", shared.config.thread_name))
                .spawn(move || {
                    while hk.housekeeper_wait(tick) {
                        housekeep(&hk);
                    }
                })?;
            *lock(&pool.inner.housekeeper) = Some(h);
        }
        Ok(pool)
    }

    fn shared(&self) -> &Arc<Shared<S>> {
        &self.inner.shared
    }

    fn default_wait(&self) -> Wait {
        let c = &self.shared().config;
        if c.nonblocking {
            Wait::No
        } else {
            Wait::Block(c.submit_timeout)
        }
    }

    pub(crate) fn push_task(&self, task: Task<S>, wait: Wait) -> Result<(), (Task<S>, SubmitError)> {
        Shared::push(self.shared(), task, wait)
    }

    /// Takes back the `submitted` and `rejected` counts of a refusal that a
    /// multi-pool overflowed to another pool.
    pub(crate) fn uncount_overflow(&self) {
        self.shared().uncount_rejected();
    }

    pub(crate) fn make_task<F, T>(f: F, opts: JobOptions) -> (Task<S>, JobHandle<T>)
    where
        F: FnOnce(&mut S) -> T + Send + 'static,
        T: Send + 'static,
    {
        let (job, handle) = HandleJob::new(f);
        (
            Task {
                job: JobBox::new(job),
                deadline: opts.deadline,
            },
            handle,
        )
    }

    /// Submits a job and returns a handle to its outcome. Blocks while the
    /// pool is full, unless built `nonblocking` (then `Overloaded` at once).
    pub fn submit<F, T>(&self, f: F) -> Result<JobHandle<T>, SubmitError>
    where
        F: FnOnce(&mut S) -> T + Send + 'static,
        T: Send + 'static,
    {
        self.submit_with(JobOptions::default(), f)
    }

    /// Like [`submit`](Self::submit), with options (a deadline).
    pub fn submit_with<F, T>(&self, opts: JobOptions, f: F) -> Result<JobHandle<T>, SubmitError>
    where
        F: FnOnce(&mut S) -> T + Send + 'static,
        T: Send + 'static,
    {
        let (task, handle) = Self::make_task(f, opts);
        self.push_task(task, self.default_wait()).map_err(|(_, e)| e)?;
        Ok(handle)
    }

    /// Submits, blocking as long as the pool is full whatever the pool's
    /// own submit mode (used where a refusal would only be retried).
    pub(crate) fn submit_blocking<F, T>(&self, f: F) -> Result<JobHandle<T>, SubmitError>
    where
        F: FnOnce(&mut S) -> T + Send + 'static,
        T: Send + 'static,
    {
        let (task, handle) = Self::make_task(f, JobOptions::default());
        self.push_task(task, Wait::Block(None)).map_err(|(_, e)| e)?;
        Ok(handle)
    }

    /// Submits one of the runtime's own jobs (a graph node), which ends
    /// itself through [`Job`] instead of a result handle. It never blocks
    /// when `from_runtime` is set or when called on one of this pool's own
    /// workers (a worker waiting for room would wait for itself); otherwise
    /// it waits as `submit` does. (The graph, its only user, has no loom
    /// model.)
    #[cfg(not(loom))]
    pub(crate) fn push_job<J: Job<S> + 'static>(
        &self,
        job: J,
        deadline: Option<Instant>,
        from_runtime: bool,
    ) -> Result<(), (RefusedJob<S>, SubmitError)> {
        let wait = if from_runtime || core::on_worker_of(self.shared()) {
            Wait::No
        } else {
            self.default_wait()
        };
        let task = Task {
            job: JobBox::new(job),
            deadline,
        };
        self.push_task(task, wait).map_err(|(t, e)| (RefusedJob(t), e))
    }

    /// How many jobs the pool holds at most: running plus waiting.
    pub(crate) fn window(&self) -> usize {
        let capacity = self.shared().lock_state().capacity;
        capacity.saturating_add(self.shared().config.queue_cap)
    }

    /// Submits without ever blocking: `Overloaded` at once if the pool is full.
    pub fn try_submit<F, T>(&self, f: F) -> Result<JobHandle<T>, SubmitError>
    where
        F: FnOnce(&mut S) -> T + Send + 'static,
        T: Send + 'static,
    {
        let (task, handle) = Self::make_task(f, JobOptions::default());
        self.push_task(task, Wait::No).map_err(|(_, e)| e)?;
        Ok(handle)
    }

    /// Like [`try_submit`](Self::try_submit), with options (a deadline).
    pub fn try_submit_with<F, T>(&self, opts: JobOptions, f: F) -> Result<JobHandle<T>, SubmitError>
    where
        F: FnOnce(&mut S) -> T + Send + 'static,
        T: Send + 'static,
    {
        let (task, handle) = Self::make_task(f, opts);
        self.push_task(task, Wait::No).map_err(|(_, e)| e)?;
        Ok(handle)
    }

    /// Submits, blocking at most `timeout` for room in the queue.
    pub fn submit_timeout<F, T>(&self, timeout: Duration, f: F) -> Result<JobHandle<T>, SubmitError>
    where
        F: FnOnce(&mut S) -> T + Send + 'static,
        T: Send + 'static,
    {
        let (task, handle) = Self::make_task(f, JobOptions::default());
        self.push_task(task, Wait::Block(Some(timeout)))
            .map_err(|(_, e)| e)?;
        Ok(handle)
    }

    /// Fire-and-forget: the cheapest path, no handle. A panic goes to the
    /// panic handler. Blocks while full, unless built `nonblocking`.
    pub fn execute<F>(&self, f: F) -> Result<(), SubmitError>
    where
        F: FnOnce(&mut S) + Send + 'static,
    {
        let task = Task {
            job: JobBox::new(ExecJob(f)),
            deadline: None,
        };
        self.push_task(task, self.default_wait()).map_err(|(_, e)| e)
    }

    /// Fire-and-forget without ever blocking.
    pub fn try_execute<F>(&self, f: F) -> Result<(), SubmitError>
    where
        F: FnOnce(&mut S) + Send + 'static,
    {
        let task = Task {
            job: JobBox::new(ExecJob(f)),
            deadline: None,
        };
        self.push_task(task, Wait::No).map_err(|(_, e)| e)
    }

    /// Changes the capacity. Growth takes effect at once (queued jobs get new
    /// workers); when shrinking, surplus workers finish their current job and
    /// then exit.
    pub fn tune(&self, capacity: usize) -> Result<(), TuneError> {
        Shared::tune(self.shared(), capacity)
    }

    /// The current gauges and counters. Takes the pool's lock briefly (the
    /// worker gauges live under it); the queue and the counters are read
    /// without it, so under load the values are a close, not an atomic,
    /// snapshot. At rest they are exact.
    pub fn stats(&self) -> PoolStats {
        let shared = self.shared();
        let c = &shared.counters;
        let r = Ordering::Relaxed;
        let st = shared.lock_state();
        let waiting = shared.waiting();
        let in_flight = usize::try_from(shared.in_flight()).unwrap_or(usize::MAX);
        let (submitted, rejected) = shared.submits();
        let o = c.outcomes();
        PoolStats {
            running: in_flight.saturating_sub(waiting),
            idle: st.idle_len(),
            waiting,
            blocked: st.blocked,
            capacity: st.capacity,
            workers: st.workers,
            submitted,
            completed: o.completed,
            rejected,
            panicked: o.panicked,
            expired: o.expired,
            cancelled: o.cancelled,
            resizes: c.resizes.load(r),
            autoscale_grows: c.grows.load(r),
            autoscale_shrinks: c.shrinks.load(r),
            spawn_failures: c.spawn_failures.load(r),
        }
    }

    /// Jobs running now.
    pub fn running(&self) -> usize {
        self.stats().running
    }

    /// Workers that could still be started (capacity minus running jobs).
    pub fn free(&self) -> usize {
        let s = self.stats();
        s.capacity.saturating_sub(s.running)
    }

    /// Jobs waiting in the queue.
    pub fn waiting(&self) -> usize {
        self.stats().waiting
    }

    /// Whether the pool has been shut down (and not restarted).
    pub fn is_closed(&self) -> bool {
        lock(&self.shared().state).closed
    }

    /// One round of housekeeping, as the background thread does it every
    /// tick: refresh the cached clock, retire expired idle workers, and take
    /// an autoscaling sample. Call it yourself when the pool was built with
    /// `housekeeping_interval(Duration::ZERO)` (e.g. with a `ManualClock`).
    /// Returns the number of workers retired and the autoscaler's decision.
    pub fn housekeep(&self) -> (usize, Decision) {
        housekeep(self.shared())
    }

    /// Stops intake, lets the workers drain the queue, and waits for them at
    /// most `timeout`. Jobs still queued at the timeout are cancelled; jobs
    /// still running are reported and finish on their own. Idempotent.
    ///
    /// Called from inside one of the pool's own jobs, it cannot wait (it
    /// would wait for itself): it stops intake and returns at once, the
    /// workers drain the queue, and `still_running` counts the jobs not yet
    /// ended, the calling one included.
    pub fn shutdown(&self, timeout: Duration) -> ShutdownReport {
        self.shutdown_inner(false, Some(Instant::now() + timeout))
    }

    /// Stops intake, cancels every job that has not started, and waits at
    /// most `timeout` for the running ones. Idempotent.
    pub fn shutdown_now(&self, timeout: Duration) -> ShutdownReport {
        self.shutdown_inner(true, Some(Instant::now() + timeout))
    }

    fn shutdown_inner(&self, cancel: bool, deadline: Option<Instant>) -> ShutdownReport {
        let shared = self.shared();
        let c = &shared.counters;
        let before = c.outcomes();
        let generation = Shared::close(shared, cancel);
        let still_running = if core::on_worker_of(shared) {
            // Called from one of this pool's own jobs: waiting would wait
            // for ourselves. The workers (this one too, once its job
            // returns) drain the queue as after any other shutdown.
            usize::try_from(shared.in_flight()).unwrap_or(usize::MAX)
        } else {
            shared.wait_exited(generation, deadline)
        };
        // Counters only grow, so these differences cannot underflow.
        let after = c.outcomes();
        ShutdownReport {
            completed: after.finished().saturating_sub(before.finished()),
            cancelled: after.cancelled.saturating_sub(before.cancelled),
            still_running,
        }
    }

    /// Reopens a shut-down pool: intake resumes and the minimum workers start
    /// again. Does nothing on an open pool.
    pub fn restart(&self) -> Result<(), BuildError> {
        Shared::reopen(self.shared()).map_err(BuildError::Spawn)
    }
}

fn housekeep<S: 'static>(shared: &Arc<Shared<S>>) -> (usize, Decision) {
    let now = shared.refresh_clock();
    let retired = shared.reap_idle(now);
    // The gauge is user code: read before taking the lock.
    let downstream = match shared.config.autoscale {
        Some(_) => shared.downstream_waiting(),
        None => None,
    };
    let decision = {
        let mut st = shared.lock_state();
        let (capacity, waiting, closed) = (st.capacity, shared.waiting(), st.closed);
        match st.autoscale.as_mut() {
            Some(a) if !closed => a.sample(now, capacity, waiting, downstream),
            _ => Decision::Hold,
        }
    };
    let c = &shared.counters;
    match decision {
        Decision::Grow(to) => {
            c.grows.fetch_add(1, Ordering::Relaxed);
            let _ = Shared::tune(shared, to);
        }
        Decision::Shrink(to) => {
            c.shrinks.fetch_add(1, Ordering::Relaxed);
            let _ = Shared::tune(shared, to);
        }
        Decision::Hold => {}
    }
    (retired, decision)
}
