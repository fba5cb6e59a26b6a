//! The pool's concurrency core: one mutex over the waiting queue and the
//! worker bookkeeping, a parker per idle worker, and the worker loop.
//!
//! Invariants (all under `Shared::state`):
//! - `workers` counts threads that serve jobs; `threads` also counts threads
//!   that were told to retire but have not yet gone (the shutdown barrier).
//! - A job is admitted while `queue.len() + held + running < capacity + queue_cap`,
//!   where `held` counts jobs a worker took from a long queue in one batch
//!   (into its registered `Batch`) and has not started yet. Held jobs stay
//!   reachable: growth, a worker about to park, and shutdown take them back
//!   into the queue (`reclaim_held`). Lock order: `state`, then a `Batch`.
//! - After a push, if more jobs wait than there are workers on their way to
//!   the queue (`pending_wakes` woken or spawned ones, plus the spinner), one
//!   idle worker is woken or one new worker is spawned. A worker parks only
//!   after seeing an empty queue under the lock, so no job is left behind.
//! - An idle worker in the container receives exactly one signal per park:
//!   `Wake` (whoever detached it counted it in `pending_wakes`) or `Exit`
//!   (whoever detached it already took it off `workers`).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::sync::{
    lock, thread, wait, wait_timeout, wait_until, Arc, AtomicU64, AtomicUsize, Condvar, Mutex, MutexGuard,
    Ordering,
};

use super::autoscale::{AutoscaleState, ScalePolicy};
use super::clock::Clock;
use super::error::{SubmitError, TuneError};
use super::handle::{Abort, Ended};
use super::job::JobBox;
use super::worker_queue::{new_queue, IdleOrder, IdleWorker, WorkerQueue};

pub(crate) type Factory<S> = std::sync::Arc<dyn Fn() -> S + Send + Sync>;
pub(crate) type Hook = std::sync::Arc<dyn Fn(usize) + Send + Sync>;
pub(crate) type PanicHook = std::sync::Arc<dyn Fn(&str) + Send + Sync>;

/// Immutable settings, fixed at build time.
pub(crate) struct Config<S> {
    pub(crate) queue_cap: usize,
    pub(crate) min_workers: usize,
    pub(crate) nonblocking: bool,
    pub(crate) max_blocked: Option<usize>,
    pub(crate) submit_timeout: Option<Duration>,
    pub(crate) expiry: Option<Duration>,
    pub(crate) thread_name: String,
    pub(crate) stack_size: Option<usize>,
    pub(crate) factory: Factory<S>,
    pub(crate) on_start: Option<Hook>,
    pub(crate) on_exit: Option<Hook>,
    pub(crate) on_panic: Option<PanicHook>,
    pub(crate) clock: std::sync::Arc<dyn Clock>,
    pub(crate) spin: u32,
    pub(crate) autoscale: Option<ScalePolicy>,
}

/// A job waiting in the queue.
pub(crate) struct Task<S: 'static> {
    pub(crate) job: JobBox<S>,
    pub(crate) deadline: Option<Instant>,
}

/// How a submit behaves when the pool is full.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Wait {
    /// Refuse at once with `Overloaded`.
    No,
    /// Block, at most this long if given.
    Block(Option<Duration>),
}

/// What a parked worker is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Signal {
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

    fn send(&self, s: Signal) {
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

impl<S: 'static> State<S> {
    pub(crate) fn idle_len(&self) -> usize {
        self.idle.len()
    }
}

/// A worker's batch: jobs it took from a long queue in one go. Only its
/// worker pops from the front; others take the jobs back under `state`.
pub(crate) struct Batch<S: 'static> {
    jobs: Mutex<VecDeque<Task<S>>>,
}

pub(crate) struct State<S: 'static> {
    pub(crate) queue: VecDeque<Task<S>>,
    idle: Box<dyn WorkerQueue>,
    pub(crate) capacity: usize,
    pub(crate) workers: usize,
    pub(crate) threads: usize,
    pub(crate) running: usize,
    /// Jobs taken off the queue in a worker's batch, not yet started.
    pub(crate) held: usize,
    /// Every live worker's batch, so held jobs can be taken back.
    batches: Vec<Arc<Batch<S>>>,
    pending_wakes: usize,
    spinning: usize,
    pub(crate) blocked: usize,
    blocked_unnotified: usize,
    pub(crate) closed: bool,
    /// Every submit call, and those refused (counted under the lock that
    /// admission takes anyway).
    pub(crate) submitted: u64,
    pub(crate) rejected: u64,
    next_id: usize,
    pub(crate) autoscale: Option<AutoscaleState>,
    housekeeper_stop: bool,
}

/// Outcome counters of one shard, on a cache line of their own.
#[repr(align(128))]
pub(crate) struct Shard {
    completed: AtomicU64,
    panicked: AtomicU64,
    expired: AtomicU64,
    cancelled: AtomicU64,
}

impl Shard {
    fn new() -> Self {
        Self {
            completed: AtomicU64::new(0),
            panicked: AtomicU64::new(0),
            expired: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
        }
    }
}

const SHARDS: usize = 4;

std::thread_local! {
    /// Which counter shard this thread bumps (assigned round-robin).
    static SHARD: std::cell::Cell<usize> = const { std::cell::Cell::new(usize::MAX) };
}
static NEXT_SHARD: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn my_shard() -> usize {
    SHARD.with(|c| {
        if c.get() == usize::MAX {
            c.set(NEXT_SHARD.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % SHARDS);
        }
        c.get()
    })
}

/// Outcome counters, sharded so that workers finishing jobs at the same time
/// do not fight over one cache line; read by summing the shards.
pub(crate) struct Counters {
    shards: [Shard; SHARDS],
    pub(crate) resizes: AtomicU64,
    pub(crate) grows: AtomicU64,
    pub(crate) shrinks: AtomicU64,
    pub(crate) spawn_failures: AtomicU64,
}

/// Sums of the outcome counters.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Outcomes {
    pub(crate) completed: u64,
    pub(crate) panicked: u64,
    pub(crate) expired: u64,
    pub(crate) cancelled: u64,
}

impl Counters {
    pub(crate) fn new() -> Self {
        Self {
            shards: std::array::from_fn(|_| Shard::new()),
            resizes: AtomicU64::new(0),
            grows: AtomicU64::new(0),
            shrinks: AtomicU64::new(0),
            spawn_failures: AtomicU64::new(0),
        }
    }

    pub(crate) fn count(&self, ended: &Ended) {
        let sh = &self.shards[my_shard()];
        let c = match ended {
            Ended::Completed => &sh.completed,
            Ended::Panicked(_) => &sh.panicked,
            Ended::Expired => &sh.expired,
            Ended::Cancelled => &sh.cancelled,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn outcomes(&self) -> Outcomes {
        let r = Ordering::Relaxed;
        self.shards.iter().fold(Outcomes::default(), |a, s| Outcomes {
            completed: a.completed + s.completed.load(r),
            panicked: a.panicked + s.panicked.load(r),
            expired: a.expired + s.expired.load(r),
            cancelled: a.cancelled + s.cancelled.load(r),
        })
    }
}

pub(crate) struct Shared<S: 'static> {
    pub(crate) state: Mutex<State<S>>,
    not_full: Condvar,
    exited: Condvar,
    housekeeper_cv: Condvar,
    pub(crate) counters: Counters,
    pub(crate) config: Config<S>,
    /// Coarse "now" (nanoseconds since `epoch`), refreshed by housekeeping so
    /// that a worker going idle never reads the clock.
    coarse_now: AtomicU64,
    epoch: Instant,
    /// Mirror of `queue.len()` for the spinning worker to poll without the lock.
    queued: AtomicUsize,
}

/// Things to do after the lock is released.
#[must_use]
pub(crate) struct Deferred<S: 'static> {
    wake: Vec<Arc<Parker>>,
    exit: Vec<Arc<Parker>>,
    spawn: usize,
    cancel: Vec<Task<S>>,
    notify_submitters: bool,
}

impl<S: 'static> Deferred<S> {
    fn new() -> Self {
        Self {
            wake: Vec::new(),
            exit: Vec::new(),
            spawn: 0,
            cancel: Vec::new(),
            notify_submitters: false,
        }
    }
}

impl<S: 'static> Shared<S> {
    pub(crate) fn new(config: Config<S>, capacity: usize, order: IdleOrder) -> Self {
        let epoch = config.clock.now();
        let autoscale = config.autoscale.map(AutoscaleState::new);
        Self {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                idle: new_queue(order),
                capacity,
                workers: 0,
                threads: 0,
                running: 0,
                held: 0,
                batches: Vec::new(),
                pending_wakes: 0,
                spinning: 0,
                blocked: 0,
                blocked_unnotified: 0,
                closed: false,
                submitted: 0,
                rejected: 0,
                next_id: 0,
                autoscale,
                housekeeper_stop: false,
            }),
            not_full: Condvar::new(),
            exited: Condvar::new(),
            housekeeper_cv: Condvar::new(),
            counters: Counters::new(),
            config,
            coarse_now: AtomicU64::new(0),
            epoch,
            queued: AtomicUsize::new(0),
        }
    }

    /// Mirrors the queue length for the spinning worker; call after every
    /// change to the queue.
    fn mirror_queue_len(&self, st: &State<S>) {
        self.queued.store(st.queue.len(), Ordering::Relaxed);
    }

    fn keep_warm(&self, st: &State<S>) -> usize {
        self.config.min_workers.min(st.capacity)
    }

    /// Admits `task` or hands it back with the reason.
    pub(crate) fn push(this: &Arc<Self>, task: Task<S>, mode: Wait) -> Result<(), (Task<S>, SubmitError)> {
        let mut st = lock(&this.state);
        st.submitted += 1;
        let mut started: Option<Instant> = None;
        let mut registered = false;
        loop {
            if st.closed {
                if registered {
                    st.blocked -= 1;
                }
                st.rejected += 1;
                return Err((task, SubmitError::Closed));
            }
            if st.queue.len() + st.held + st.running < st.capacity + this.config.queue_cap {
                break;
            }
            let limit = match mode {
                Wait::No => {
                    st.rejected += 1;
                    return Err((task, SubmitError::Overloaded));
                }
                Wait::Block(limit) => limit,
            };
            if !registered {
                if this.config.max_blocked.is_some_and(|m| st.blocked >= m) {
                    st.rejected += 1;
                    return Err((task, SubmitError::Overloaded));
                }
                st.blocked += 1;
                registered = true;
            }
            st.blocked_unnotified += 1;
            match limit {
                None => st = wait(&this.not_full, st),
                Some(limit) => {
                    let t0 = *started.get_or_insert_with(Instant::now);
                    let left = limit.saturating_sub(t0.elapsed());
                    if left.is_zero() {
                        st.blocked_unnotified = st.blocked_unnotified.saturating_sub(1);
                        st.blocked -= 1;
                        st.rejected += 1;
                        return Err((task, SubmitError::Timeout(limit)));
                    }
                    let (g, timed_out) = wait_timeout(&this.not_full, st, left);
                    st = g;
                    if timed_out {
                        st.blocked_unnotified = st.blocked_unnotified.saturating_sub(1);
                    }
                }
            }
        }
        if registered {
            st.blocked -= 1;
        }
        st.queue.push_back(task);
        let mut d = Deferred::new();
        this.dispatch(&mut st, &mut d);
        this.mirror_queue_len(&st);
        drop(st);
        Shared::apply(this, d);
        Ok(())
    }

    /// Wakes or spawns workers while more jobs wait than workers are coming.
    fn dispatch(&self, st: &mut State<S>, d: &mut Deferred<S>) {
        while st.queue.len() > st.pending_wakes + st.spinning {
            if let Some(w) = st.idle.detach() {
                st.pending_wakes += 1;
                d.wake.push(w.parker);
            } else if st.workers < st.capacity {
                st.workers += 1;
                st.threads += 1;
                st.pending_wakes += 1;
                d.spawn += 1;
            } else {
                break;
            }
        }
    }

    pub(crate) fn apply(this: &Arc<Self>, d: Deferred<S>) {
        for p in d.wake {
            p.send(Signal::Wake);
        }
        for p in d.exit {
            p.send(Signal::Exit);
        }
        for _ in 0..d.spawn {
            if Shared::spawn_worker(this).is_err() {
                this.spawn_failed();
            }
        }
        for t in d.cancel {
            t.job.abort(Abort::Cancelled, &this.counters);
        }
        if d.notify_submitters {
            this.not_full.notify_all();
        }
    }

    /// Undoes the counts of a worker whose thread the OS refused to start.
    fn spawn_failed(&self) {
        let mut st = lock(&self.state);
        st.workers -= 1;
        st.threads -= 1;
        st.pending_wakes -= 1;
        self.counters.spawn_failures.fetch_add(1, Ordering::Relaxed);
        if st.threads == 0 {
            self.exited.notify_all();
        }
    }

    /// Starts one worker thread; the caller has already counted it in
    /// `workers`, `threads` and `pending_wakes`.
    pub(crate) fn spawn_worker(this: &Arc<Self>) -> std::io::Result<()> {
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

    fn now_coarse(&self) -> u64 {
        self.coarse_now.load(Ordering::Relaxed)
    }

    /// `t` as nanoseconds since the pool's epoch (the unit of the coarse clock).
    fn nanos_since_epoch(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Reads the clock and refreshes the cached coarse time.
    pub(crate) fn refresh_clock(&self) -> Instant {
        let now = self.config.clock.now();
        let ns = self.nanos_since_epoch(now);
        self.coarse_now.fetch_max(ns, Ordering::Relaxed);
        now
    }

    /// A worker finished its batch (one job plus `ran_held` held ones that it
    /// ran itself; others were taken back): free their places and let as
    /// many blocked submitters in.
    fn batch_done(&self, st: &mut State<S>, ran_held: usize) {
        st.running -= 1;
        st.held -= ran_held;
        for _ in 0..=ran_held {
            if st.blocked_unnotified == 0 {
                break;
            }
            st.blocked_unnotified -= 1;
            self.not_full.notify_one();
        }
    }

    /// Moves every job held in a worker's batch back to the front of the
    /// queue (in order). Returns how many moved.
    fn reclaim_held(&self, st: &mut State<S>) -> usize {
        if st.held == 0 {
            return 0;
        }
        let mut moved = 0;
        for b in &st.batches {
            let mut jobs = lock(&b.jobs);
            moved += jobs.len();
            while let Some(t) = jobs.pop_back() {
                st.queue.push_front(t);
            }
        }
        st.held -= moved;
        self.mirror_queue_len(st);
        moved
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
            // Jobs held in busy workers' batches go back to the queue, where
            // the new workers can take them.
            this.reclaim_held(&mut st);
            this.dispatch(&mut st, &mut d);
            st.blocked_unnotified = 0;
            d.notify_submitters = st.blocked > 0;
        } else if st.workers > capacity {
            let surplus = st.workers - capacity;
            for w in st.idle.retire_oldest(surplus) {
                st.workers -= 1;
                d.exit.push(w.parker);
            }
        }
        drop(st);
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
        drop(st);
        for w in retired {
            w.parker.send(Signal::Exit);
        }
        n
    }

    /// Starts workers up to `n` (used at build, restart and for min_workers).
    pub(crate) fn start_workers(this: &Arc<Self>, n: usize) -> std::io::Result<()> {
        for _ in 0..n {
            {
                let mut st = lock(&this.state);
                if st.workers >= n.min(st.capacity) {
                    return Ok(());
                }
                st.workers += 1;
                st.threads += 1;
                st.pending_wakes += 1;
            }
            if let Err(e) = Shared::spawn_worker(this) {
                this.spawn_failed();
                return Err(e);
            }
        }
        Ok(())
    }

    /// Stops intake. With `cancel_queued`, jobs not yet started are cancelled;
    /// otherwise they are drained by the workers.
    pub(crate) fn close(this: &Arc<Self>, cancel_queued: bool) {
        let mut st = lock(&this.state);
        st.closed = true;
        let mut d = Deferred::new();
        if cancel_queued {
            this.reclaim_held(&mut st);
            d.cancel.extend(st.queue.drain(..));
        }
        if st.threads == 0 {
            // Nobody is left to drain the queue (all spawns failed).
            d.cancel.extend(st.queue.drain(..));
        }
        for w in st.idle.drain() {
            st.pending_wakes += 1;
            d.wake.push(w.parker);
        }
        st.blocked_unnotified = 0;
        d.notify_submitters = true;
        this.mirror_queue_len(&st);
        drop(st);
        Shared::apply(this, d);
    }

    /// Waits until every worker thread has gone, at most until `deadline`.
    /// Returns how many jobs were still running at the deadline.
    pub(crate) fn wait_exited(&self, deadline: Option<Instant>) -> usize {
        let mut st = lock(&self.state);
        while st.threads > 0 {
            let (g, passed) = wait_until(&self.exited, st, deadline);
            st = g;
            if passed {
                break;
            }
        }
        if st.threads == 0 {
            return 0;
        }
        // Time is up: cancel what has not started; report what still runs.
        self.reclaim_held(&mut st);
        let cancel: Vec<Task<S>> = st.queue.drain(..).collect();
        let running = st.running;
        self.mirror_queue_len(&st);
        drop(st);
        for t in cancel {
            t.job.abort(Abort::Cancelled, &self.counters);
        }
        running
    }

    /// Reopens a closed pool.
    pub(crate) fn reopen(this: &Arc<Self>) -> std::io::Result<()> {
        let warm = {
            let mut st = lock(&this.state);
            if !st.closed {
                return Ok(());
            }
            st.closed = false;
            this.keep_warm(&st)
        };
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

    pub(crate) fn lock_state(&self) -> MutexGuard<'_, State<S>> {
        lock(&self.state)
    }
}

/// A spinning worker yields its core once every this many polls (a yield
/// is a system call; with nothing else runnable it is pure overhead).
const YIELD_EVERY: u32 = 16;

/// Workers allowed to spin at once (measured: a second spinner burns CPU
/// the submitter needs, for no gain on 2 cores).
const MAX_SPINNERS: usize = 1;

/// The most jobs a worker takes from the queue in one lock acquisition.
const MAX_BATCH: usize = 32;

/// Runs one task on a worker: the deadline check, the job, the counters.
fn run_task<S: 'static>(shared: &Shared<S>, task: Task<S>, state: &mut S) {
    let ended = match task.deadline {
        Some(dl) if shared.config.clock.now() >= dl => task.job.abort(Abort::Expired, &shared.counters),
        _ => task.job.run(state, &shared.counters),
    };
    if let Ended::Panicked(msg) = &ended {
        report_panic(shared, msg);
    }
}

/// Tells the panic handler. A panic inside the handler itself is dropped:
/// there is nobody left to tell, and the worker must survive it.
fn report_panic<S>(shared: &Shared<S>, msg: &str) {
    if let Some(h) = &shared.config.on_panic {
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| h(msg)));
    }
}

/// Runs user code on a worker outside a job (a hook, the worker state's
/// drop) so that a panic in it cannot kill the thread before its
/// bookkeeping is done; the panic goes to the panic handler.
fn guarded<S>(shared: &Shared<S>, what: &str, f: impl FnOnce()) {
    if let Err(p) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        report_panic(
            shared,
            &format!("{what} panicked: {}", super::handle::panic_message(&*p)),
        );
    }
}

/// Why a worker leaves.
enum Leave {
    /// It decided itself (shrink, shutdown) and must take itself off `workers`.
    Own,
    /// It was retired from the idle container, already taken off `workers`.
    Retired,
}

std::thread_local! {
    /// The pool whose worker this thread is (its `Shared` address), or 0.
    static CURRENT_POOL: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Whether the calling thread is one of this pool's workers.
pub(crate) fn on_worker_of<S>(shared: &Arc<Shared<S>>) -> bool {
    // loom runs its model threads as coroutines on one OS thread, where a
    // std thread-local would be shared; the models never drop a pool from a job.
    if cfg!(loom) {
        return false;
    }
    let me = Arc::as_ptr(shared) as usize;
    CURRENT_POOL.with(|c| c.get() == me)
}

fn worker_main<S: 'static>(shared: Arc<Shared<S>>, id: usize) {
    if !cfg!(loom) {
        CURRENT_POOL.with(|c| c.set(Arc::as_ptr(&shared) as usize));
    }
    if let Some(h) = &shared.config.on_start {
        guarded(&shared, "on_thread_start hook", || h(id));
    }
    let parker = Arc::new(Parker::new());
    let factory = shared.config.factory.clone();
    let built = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| factory()));
    let mut state = match built {
        Ok(s) => s,
        Err(p) => {
            let msg = super::handle::panic_message(&*p);
            report_panic(&shared, &format!("worker state factory panicked: {msg}"));
            // No replacement is started here (a factory that always panics
            // would spin); the next submit starts one, and shutdown cancels
            // what waits if no worker is left.
            let mut st = lock(&shared.state);
            st.pending_wakes -= 1;
            st.workers -= 1;
            drop(st);
            finish_thread(&shared, id);
            return;
        }
    };

    let batch = Arc::new(Batch {
        jobs: Mutex::new(VecDeque::with_capacity(MAX_BATCH)),
    });
    let mut st = lock(&shared.state);
    st.batches.push(batch.clone());
    // Spawned workers arrive counted in `pending_wakes`.
    st.pending_wakes -= 1;
    let mut spun = false;
    let leave = loop {
        if st.workers > st.capacity {
            break Leave::Own;
        }
        if let Some(task) = st.queue.pop_front() {
            // From a long queue, take a fair share in one go: one contended
            // lock per batch instead of per job. A short queue gives
            // batches of one.
            let extra = (st.queue.len() / (2 * st.workers.max(1))).min(MAX_BATCH - 1);
            if extra > 0 {
                lock(&batch.jobs).extend(st.queue.drain(..extra));
                st.held += extra;
            }
            st.running += 1;
            shared.mirror_queue_len(&st);
            drop(st);
            run_task(&shared, task, &mut state);
            let mut ran_held = 0;
            if extra > 0 {
                loop {
                    let next = lock(&batch.jobs).pop_front();
                    let Some(t) = next else { break };
                    ran_held += 1;
                    run_task(&shared, t, &mut state);
                }
            }
            st = lock(&shared.state);
            shared.batch_done(&mut st, ran_held);
            spun = false;
            continue;
        }
        // The queue is empty but other workers may hold jobs they have not
        // started: take them back rather than idle beside them. (`held` also
        // counts jobs a worker has already started from its batch but not
        // yet accounted for, so only go round again if some moved.)
        if st.held > 0 && shared.reclaim_held(&mut st) > 0 {
            continue;
        }
        if st.closed {
            break Leave::Own;
        }
        if !spun && st.spinning < MAX_SPINNERS && shared.config.spin > 0 {
            // Stay awake briefly: with short jobs the next one usually
            // arrives within microseconds, and a wake-up costs more.
            st.spinning += 1;
            drop(st);
            for i in 0..shared.config.spin {
                if shared.queued.load(Ordering::Relaxed) > 0 {
                    break;
                }
                if i % YIELD_EVERY == YIELD_EVERY - 1 {
                    thread::yield_now();
                } else {
                    std::hint::spin_loop();
                }
            }
            st = lock(&shared.state);
            st.spinning -= 1;
            spun = true;
            continue;
        }
        let since = shared.now_coarse();
        st.idle.insert(IdleWorker {
            parker: parker.clone(),
            since,
        });
        drop(st);
        let signal = parker.park();
        st = lock(&shared.state);
        spun = false;
        match signal {
            Signal::Exit => break Leave::Retired,
            _ => st.pending_wakes -= 1,
        }
    };
    if let Leave::Own = leave {
        st.workers -= 1;
    }
    st.batches.retain(|b| !Arc::ptr_eq(b, &batch));
    // Someone else may now be needed for what waits (e.g. after a shrink).
    let mut d = Deferred::new();
    shared.dispatch(&mut st, &mut d);
    drop(st);
    Shared::apply(&shared, d);
    guarded(&shared, "worker state drop", move || drop(state));
    finish_thread(&shared, id);
}

fn finish_thread<S: 'static>(shared: &Shared<S>, id: usize) {
    if let Some(h) = &shared.config.on_exit {
        guarded(shared, "on_thread_exit hook", || h(id));
    }
    let mut st = lock(&shared.state);
    st.threads -= 1;
    let last = st.threads == 0;
    let mut cancel = Vec::new();
    if last && st.closed && !st.queue.is_empty() {
        // Every worker has gone while jobs wait in a closed pool (only
        // possible if threads could not be started): they will never run.
        cancel.extend(st.queue.drain(..));
        shared.mirror_queue_len(&st);
    }
    drop(st);
    for t in cancel {
        t.job.abort(Abort::Cancelled, &shared.counters);
    }
    if last {
        shared.exited.notify_all();
    }
}
