//! The pool's concurrency core: a lock-free job queue with lock-free
//! admission on the submit path, one mutex (`Shared::state`) over the worker
//! bookkeeping (idle workers, resize, blocked submitters, lifecycle), a
//! parker per idle worker, and the worker loop.
//!
//! Five protocols, one file each, each with its invariant at the top and the
//! loom models (`tests/loom_pool.rs`) that check it:
//! - [`admission`]: the submit path. A place in the window
//!   (`waiting + running <= capacity + queue_cap`), the shutdown gate, and
//!   blocked submitters.
//! - [`wake`]: who runs a queued job. The `wake` word (searching and parked
//!   workers, whether one more may be spawned), parking without lost
//!   wake-ups, and dispatch.
//! - [`worker`]: the worker loop, the worker-state factory (retried with
//!   backoff), and the guards around every piece of user code a worker runs.
//! - [`lifecycle`]: start, resize, idle expiry, close, the shutdown barrier,
//!   restart.
//! - [`counters`]: the outcome counters and the ledger that jobs count
//!   themselves in.
//!
//! Mirrors: lock-free paths read copies of locked state (`closing`, the
//! gate's closed bit, `shrinking`, `has_blocked`, `limit`, the spawnable bit
//! of `wake`). They are written in one place, [`Shared::publish`], which
//! every change to `capacity`, `workers`, `closed` or `blocked_unnotified`
//! is followed by, under the lock.

mod admission;
mod counters;
mod lifecycle;
mod wake;
mod worker;

use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;

use crate::sync::{lock, Arc, AtomicBool, AtomicU64, Condvar, Mutex, MutexGuard, Ordering, Queue};

use super::autoscale::{AutoscaleState, ScalePolicy};
use super::clock::Clock;
use super::job::JobBox;
use super::worker_queue::{new_queue, IdleOrder, WorkerQueue};

use self::admission::{Submit, CLOSED};
pub(crate) use self::counters::{Counters, Ledger};
pub(crate) use self::wake::Parker;
use self::wake::SPAWNABLE;
pub(crate) use self::worker::on_worker_of;

pub(crate) type Factory<S> = std::sync::Arc<dyn Fn() -> S + Send + Sync>;
pub(crate) type Hook = std::sync::Arc<dyn Fn(usize) + Send + Sync>;
pub(crate) type PanicHook = std::sync::Arc<dyn Fn(&str) + Send + Sync>;
pub(crate) type Gauge = std::sync::Arc<dyn Fn() -> usize + Send + Sync>;

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
    /// What waits downstream, for the autoscaler.
    pub(crate) downstream: Option<Gauge>,
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

/// The worker bookkeeping, under `Shared::state`.
pub(crate) struct State {
    idle: Box<dyn WorkerQueue>,
    pub(crate) capacity: usize,
    /// Threads that serve jobs (or will, once their state is built).
    pub(crate) workers: usize,
    /// Every worker thread not yet gone, also those told to retire (the
    /// shutdown barrier).
    pub(crate) threads: usize,
    /// Workers spawned whose state is being built (first attempt): jobs
    /// they will take need no other worker.
    starting: usize,
    /// Submitters blocked on a full pool (for stats and `max_blocked`).
    pub(crate) blocked: usize,
    /// Blocked submitters registered since the last notification.
    blocked_unnotified: usize,
    /// Bumped by every notification of blocked submitters, so that one
    /// giving up knows whether its registration still counts.
    notify_epoch: u64,
    pub(crate) closed: bool,
    /// Bumped by every restart, so that a shutdown waiting for the workers
    /// of a closed pool stops waiting when it is reopened.
    generation: u64,
    next_id: usize,
    pub(crate) autoscale: Option<AutoscaleState>,
    housekeeper_stop: bool,
    /// What the lock-free mirrors hold now.
    published: Mirrors,
}

impl State {
    pub(crate) fn idle_len(&self) -> usize {
        self.idle.len()
    }
}

pub(crate) struct Shared<S: 'static> {
    queue: Queue<Task<S>>,
    submit: CachePadded<Submit>,
    wake: CachePadded<AtomicU64>,
    /// Mirror of `blocked_unnotified > 0`, for workers finishing a job.
    has_blocked: AtomicBool,
    /// Mirror of `workers > capacity`, for workers finishing a job.
    shrinking: AtomicBool,
    /// Mirror of `closed`, for workers (so that a worker finding the queue
    /// empty does not read the submitters' cache line).
    closing: AtomicBool,
    /// Mirror of `capacity + queue_cap`, for admission.
    limit: AtomicU64,
    pub(crate) state: Mutex<State>,
    not_full: Condvar,
    exited: Condvar,
    housekeeper_cv: Condvar,
    /// Workers whose factory failed wait here for their next attempt (or
    /// the close).
    retry_cv: Condvar,
    pub(crate) counters: Counters,
    pub(crate) config: Config<S>,
    /// Coarse "now" (nanoseconds since `epoch`), refreshed by housekeeping so
    /// that a worker going idle never reads the clock.
    coarse_now: AtomicU64,
    epoch: Instant,
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

fn window(capacity: usize, queue_cap: usize) -> u64 {
    u64::try_from(capacity.saturating_add(queue_cap)).unwrap_or(u64::MAX)
}

/// The values last published to the lock-free mirrors (see `publish`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Mirrors {
    closed: bool,
    shrinking: bool,
    has_blocked: bool,
    spawnable: bool,
    limit: u64,
}

impl<S: 'static> Shared<S> {
    pub(crate) fn new(config: Config<S>, capacity: usize, order: IdleOrder) -> Self {
        let epoch = config.clock.now();
        let autoscale = config.autoscale.map(AutoscaleState::new);
        let limit = window(capacity, config.queue_cap);
        Self {
            queue: Queue::new(),
            submit: CachePadded::new(Submit::new()),
            wake: CachePadded::new(AtomicU64::new(SPAWNABLE)),
            has_blocked: AtomicBool::new(false),
            shrinking: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            limit: AtomicU64::new(limit),
            state: Mutex::new(State {
                idle: new_queue(order),
                capacity,
                workers: 0,
                threads: 0,
                starting: 0,
                blocked: 0,
                blocked_unnotified: 0,
                notify_epoch: 0,
                closed: false,
                generation: 0,
                next_id: 0,
                autoscale,
                housekeeper_stop: false,
                published: Mirrors {
                    closed: false,
                    shrinking: false,
                    has_blocked: false,
                    spawnable: true,
                    limit,
                },
            }),
            not_full: Condvar::new(),
            exited: Condvar::new(),
            housekeeper_cv: Condvar::new(),
            retry_cv: Condvar::new(),
            counters: Counters::new(),
            config,
            coarse_now: AtomicU64::new(0),
            epoch,
        }
    }

    /// Publishes every mirror of locked state that lock-free paths read.
    /// Call under the lock after any change to `capacity`, `workers`,
    /// `closed` or `blocked_unnotified`. Only mirrors whose value changed
    /// are written, and the last published values are kept in the locked
    /// state, so a call that changes nothing touches no shared cache line.
    fn publish(&self, st: &mut State) {
        let now = Mirrors {
            closed: st.closed,
            shrinking: st.workers > st.capacity,
            has_blocked: st.blocked_unnotified > 0,
            spawnable: st.workers < st.capacity,
            limit: window(st.capacity, self.config.queue_cap),
        };
        let was = std::mem::replace(&mut st.published, now);
        let s = Ordering::SeqCst;
        if now.closed != was.closed {
            // Closed: the gate's bit first, then `closing`. A worker that
            // sees `closing` and then an empty gate knows that every
            // submitter admitted before the close has pushed.
            if now.closed {
                self.submit.gate.fetch_or(CLOSED, s);
            } else {
                self.submit.gate.fetch_and(!CLOSED, s);
            }
            self.closing.store(now.closed, s);
        }
        if now.shrinking != was.shrinking {
            self.shrinking.store(now.shrinking, s);
        }
        if now.has_blocked != was.has_blocked {
            self.has_blocked.store(now.has_blocked, s);
        }
        if now.limit != was.limit {
            self.limit.store(now.limit, s);
        }
        if now.spawnable != was.spawnable {
            if now.spawnable {
                self.wake.fetch_or(SPAWNABLE, s);
            } else {
                self.wake.fetch_and(!SPAWNABLE, s);
            }
        }
    }

    fn keep_warm(&self, st: &State) -> usize {
        self.config.min_workers.min(st.capacity)
    }

    /// Jobs waiting in the queue.
    pub(crate) fn waiting(&self) -> usize {
        self.queue.len()
    }

    /// Jobs admitted and not yet ended: waiting, running, or being pushed.
    pub(crate) fn in_flight(&self) -> u64 {
        let ended = self.counters.ended();
        self.submit.admitted.load(Ordering::SeqCst).saturating_sub(ended)
    }

    pub(crate) fn lock_state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// The ledger jobs count their outcomes in (and report stray panics to).
    pub(crate) fn ledger(&self) -> Ledger<'_> {
        Ledger::new(&self.counters, self.config.on_panic.as_ref())
    }

    /// Tells the panic handler about a panic of user code.
    pub(crate) fn report_panic(&self, msg: &str) {
        self.ledger().report(msg);
    }

    /// The user's clock. A clock that panics is reported and the system
    /// clock answers instead, so no worker or housekeeper dies of it.
    pub(crate) fn now(&self) -> Instant {
        match crate::panics::catch(|| self.config.clock.now()) {
            Ok(t) => t,
            Err(msg) => {
                self.report_panic(&format!("clock panicked: {msg}"));
                Instant::now()
            }
        }
    }

    /// The downstream gauge's reading, if there is a gauge (user code: one
    /// that panics is reported and gives no reading).
    pub(crate) fn downstream_waiting(&self) -> Option<usize> {
        let g = self.config.downstream.as_ref()?;
        match crate::panics::catch(|| g()) {
            Ok(n) => Some(n),
            Err(msg) => {
                self.report_panic(&format!("downstream gauge panicked: {msg}"));
                None
            }
        }
    }

    /// Carries out what was decided under the lock.
    pub(crate) fn apply(this: &Arc<Self>, d: Deferred<S>) {
        for p in d.wake {
            p.send(wake::Signal::Wake);
        }
        for p in d.exit {
            p.send(wake::Signal::Exit);
        }
        for _ in 0..d.spawn {
            if Shared::spawn_worker(this).is_err() {
                this.spawn_failed();
            }
        }
        if d.notify_submitters {
            this.not_full.notify_all();
        }
        this.cancel(d.cancel);
    }
}
