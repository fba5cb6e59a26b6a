//! The pool's concurrency core: a lock-free job queue with lock-free
//! admission on the submit path, one mutex for the worker bookkeeping (idle
//! workers, resize, blocked submitters), a parker per idle worker, and the
//! worker loop.
//!
//! Submit path (no lock while the pool is neither full nor short of awake
//! workers):
//! - `gate` counts submitters between their closed check and their push;
//!   its top bit is "closed". A worker leaves a closed pool only when the
//!   queue is empty and no submitter is inside the gate, so a job accepted
//!   concurrently with a shutdown is still drained.
//! - `admitted` (compare-and-set) against `ended` (the sum of the sharded
//!   outcome counters) bounds `waiting + running` by `capacity + queue_cap`.
//!   A stale `ended` only under-admits, so the submitter reads the workers'
//!   counters only when the pool looks full, and before sleeping on a full
//!   pool it polls for room a few times, yielding its core.
//! - The `wake` word packs the workers that are searching (spinning, woken
//!   or spawned and on their way to the queue), the parked ones, and whether
//!   another may be spawned. After its push a submitter takes the lock only
//!   if nobody is searching and a parked or new worker is available.
//!
//! Invariants:
//! - Lost wake-ups: a submitter pushes, fences, then reads `wake`; a worker
//!   going to park adds itself to `wake`, fences, then looks at the queue.
//!   One of them sees the other. A searching worker that takes a job, if it
//!   was the last searcher and jobs remain, wakes another (so parallelism
//!   grows one worker at a time while a backlog lasts).
//! - Blocked submitters: a submitter registers (`has_blocked`) under the lock,
//!   fences, and re-checks for room; a worker counts its job's outcome,
//!   fences, and reads `has_blocked`. One of them sees the other. Registered
//!   submitters are notified all at once and re-register if still blocked;
//!   `notify_epoch` tells one that gives up whether it is still counted.
//! - An idle worker in the container receives exactly one signal per park:
//!   `Wake` (whoever detached it counted it as searching) or `Exit`
//!   (whoever detached it already took it off `workers`).
//! - `workers` counts threads that serve jobs; `threads` also counts threads
//!   that were told to retire but have not yet gone (the shutdown barrier).

use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;

use crate::sync::{
    fence, lock, thread, wait, wait_timeout, wait_until, Arc, AtomicBool, AtomicU64, Condvar, Mutex,
    MutexGuard, Ordering, Queue,
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

/// The worker bookkeeping, under `Shared::state`.
pub(crate) struct State {
    idle: Box<dyn WorkerQueue>,
    pub(crate) capacity: usize,
    pub(crate) workers: usize,
    pub(crate) threads: usize,
    /// Submitters blocked on a full pool (for stats and `max_blocked`).
    pub(crate) blocked: usize,
    /// Blocked submitters registered since the last notification.
    blocked_unnotified: usize,
    /// Bumped by every notification of blocked submitters, so that one
    /// giving up knows whether its registration still counts.
    notify_epoch: u64,
    pub(crate) closed: bool,
    next_id: usize,
    pub(crate) autoscale: Option<AutoscaleState>,
    housekeeper_stop: bool,
}

impl State {
    pub(crate) fn idle_len(&self) -> usize {
        self.idle.len()
    }
}

/// Outcome counters of one shard, on a cache line of their own. `ended`
/// counts every outcome (so the admission check reads one counter per
/// shard); completions are `ended` minus the others.
#[repr(align(128))]
pub(crate) struct Shard {
    ended: AtomicU64,
    panicked: AtomicU64,
    expired: AtomicU64,
    cancelled: AtomicU64,
}

impl Shard {
    fn new() -> Self {
        Self {
            ended: AtomicU64::new(0),
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

    /// Counts one outcome. The specific counter first, then `ended`
    /// (sequentially consistent: a blocked submitter's re-check and this
    /// worker's look at `has_blocked` cannot both miss each other).
    pub(crate) fn count(&self, ended: &Ended) {
        let sh = &self.shards[my_shard()];
        let specific = match ended {
            Ended::Completed => None,
            Ended::Panicked(_) => Some(&sh.panicked),
            Ended::Expired => Some(&sh.expired),
            Ended::Cancelled => Some(&sh.cancelled),
        };
        if let Some(c) = specific {
            c.fetch_add(1, Ordering::Relaxed);
        }
        sh.ended.fetch_add(1, Ordering::SeqCst);
    }

    /// Every outcome counted so far.
    pub(crate) fn ended(&self) -> u64 {
        self.shards.iter().map(|s| s.ended.load(Ordering::SeqCst)).sum()
    }

    pub(crate) fn outcomes(&self) -> Outcomes {
        let r = Ordering::Relaxed;
        let mut o = Outcomes::default();
        let mut ended = 0;
        for s in &self.shards {
            ended += s.ended.load(Ordering::SeqCst);
            o.panicked += s.panicked.load(r);
            o.expired += s.expired.load(r);
            o.cancelled += s.cancelled.load(r);
        }
        o.completed = ended.saturating_sub(o.panicked + o.expired + o.cancelled);
        o
    }
}

/// `Submit::gate`: set once the pool is closed; the rest counts submitters
/// between their closed check and their push.
const CLOSED: u64 = 1 << 63;

/// The submit side's counters, on a cache line of their own.
struct Submit {
    gate: AtomicU64,
    /// Jobs admitted, ever.
    admitted: AtomicU64,
    /// A recent value of `Counters::ended` (it only grows, so a stale value
    /// only under-admits).
    ended_seen: AtomicU64,
    /// Submits refused.
    rejected: AtomicU64,
}

// The `wake` word: workers searching (low 20 bits), workers parked (next 20
// bits), and whether another worker may be spawned.
const SEARCHING: u64 = 1;
const IDLE: u64 = 1 << 20;
const FIELD: u64 = IDLE - 1;
const SPAWNABLE: u64 = 1 << 40;

fn searching(w: u64) -> u64 {
    w & FIELD
}

/// Whether a parked worker could be woken or a new one spawned.
fn has_spare(w: u64) -> bool {
    (w >> 20) & FIELD > 0 || w & SPAWNABLE != 0
}

pub(crate) struct Shared<S: 'static> {
    queue: Queue<Task<S>>,
    submit: CachePadded<Submit>,
    wake: CachePadded<AtomicU64>,
    /// Submitters are blocked and not yet notified (mirror of
    /// `blocked_unnotified > 0` for the workers to read without the lock).
    has_blocked: AtomicBool,
    /// More workers than capacity (mirror for the workers).
    shrinking: AtomicBool,
    /// Mirror of `State::closed` for the workers (so that a worker finding
    /// the queue empty does not read the submitters' cache line).
    closing: AtomicBool,
    /// `capacity + queue_cap`.
    limit: AtomicU64,
    pub(crate) state: Mutex<State>,
    not_full: Condvar,
    exited: Condvar,
    housekeeper_cv: Condvar,
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

impl<S: 'static> Shared<S> {
    pub(crate) fn new(config: Config<S>, capacity: usize, order: IdleOrder) -> Self {
        let epoch = config.clock.now();
        let autoscale = config.autoscale.map(AutoscaleState::new);
        let limit = window(capacity, config.queue_cap);
        Self {
            queue: Queue::new(),
            submit: CachePadded::new(Submit {
                gate: AtomicU64::new(0),
                admitted: AtomicU64::new(0),
                ended_seen: AtomicU64::new(0),
                rejected: AtomicU64::new(0),
            }),
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
                blocked: 0,
                blocked_unnotified: 0,
                notify_epoch: 0,
                closed: false,
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

    /// Every submit call (accepted or not) and the refused ones.
    pub(crate) fn submits(&self) -> (u64, u64) {
        let rejected = self.submit.rejected.load(Ordering::SeqCst);
        (self.submit.admitted.load(Ordering::SeqCst) + rejected, rejected)
    }

    /// Takes back the `submitted` and `rejected` counts of one refusal.
    pub(crate) fn uncount_rejected(&self) {
        self.submit.rejected.fetch_sub(1, Ordering::SeqCst);
    }

    /// Mirrors `workers` against `capacity` for the lock-free paths; call
    /// under the lock after either changes.
    fn publish(&self, st: &State) {
        if st.workers < st.capacity {
            self.wake.fetch_or(SPAWNABLE, Ordering::SeqCst);
        } else {
            self.wake.fetch_and(!SPAWNABLE, Ordering::SeqCst);
        }
        self.shrinking.store(st.workers > st.capacity, Ordering::SeqCst);
    }

    /// Admits `task` or hands it back with the reason.
    pub(crate) fn push(this: &Arc<Self>, task: Task<S>, mode: Wait) -> Result<(), (Task<S>, SubmitError)> {
        let gate = &this.submit.gate;
        let admitted = if gate.fetch_add(1, Ordering::SeqCst) & CLOSED != 0 {
            Err(SubmitError::Closed)
        } else if this.try_admit() {
            Ok(())
        } else {
            this.admit_slow(mode)
        };
        if let Err(e) = admitted {
            this.submit.rejected.fetch_add(1, Ordering::SeqCst);
            this.leave_gate();
            return Err((task, e));
        }
        this.queue.push(task);
        fence(Ordering::SeqCst);
        let w = this.wake.load(Ordering::SeqCst);
        if searching(w) == 0 && has_spare(w) {
            Shared::dispatch_now(this);
        }
        this.leave_gate();
        Ok(())
    }

    /// A submitter is done with its push (or refusal). The last one out of
    /// a closed pool tells a waiting shutdown.
    fn leave_gate(&self) {
        if self.submit.gate.fetch_sub(1, Ordering::SeqCst) == CLOSED | 1 {
            let _st = lock(&self.state);
            self.exited.notify_all();
        }
    }

    /// Submitters between their closed check and their push.
    fn in_gate(&self) -> u64 {
        self.submit.gate.load(Ordering::SeqCst) & !CLOSED
    }

    /// Takes a place in the window if there is one, without blocking.
    fn try_admit(&self) -> bool {
        let limit = self.limit.load(Ordering::SeqCst);
        let sub = &self.submit;
        let mut seen = sub.ended_seen.load(Ordering::Relaxed);
        let mut a = sub.admitted.load(Ordering::Relaxed);
        loop {
            // `seen` may be newer than `a`; then `a` is stale and the
            // exchange below fails and reloads it.
            if a.saturating_sub(seen) >= limit {
                let ended = self.counters.ended();
                if a.saturating_sub(ended) >= limit {
                    return false;
                }
                sub.ended_seen.fetch_max(ended, Ordering::Relaxed);
                seen = ended;
            }
            match sub
                .admitted
                .compare_exchange_weak(a, a + 1, Ordering::SeqCst, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(now) => a = now,
            }
        }
    }

    /// The pool is full: refuse at once, or block (at most `limit`, if
    /// given) until there is room.
    fn admit_slow(&self, mode: Wait) -> Result<(), SubmitError> {
        let limit = match mode {
            Wait::No => return Err(SubmitError::Overloaded),
            Wait::Block(limit) => limit,
        };
        // Room usually comes within microseconds when jobs are short: poll
        // a while (yielding the core to the workers) before sleeping.
        for _ in 0..self.config.spin / YIELD_EVERY {
            thread::yield_now();
            if self.try_admit() {
                return Ok(());
            }
        }
        let mut st = lock(&self.state);
        let mut started: Option<Instant> = None;
        let mut blocked = false;
        // The notification epoch of this submitter's registration, if any.
        let mut registration: Option<u64> = None;
        let outcome = loop {
            if st.closed {
                break Err(SubmitError::Closed);
            }
            if registration != Some(st.notify_epoch) {
                st.blocked_unnotified += 1;
                registration = Some(st.notify_epoch);
                self.has_blocked.store(true, Ordering::SeqCst);
                // Pairs with the worker's fence between counting an outcome
                // and reading `has_blocked`.
                fence(Ordering::SeqCst);
            }
            if self.try_admit() {
                break Ok(());
            }
            if !blocked {
                if self.config.max_blocked.is_some_and(|m| st.blocked >= m) {
                    break Err(SubmitError::Overloaded);
                }
                st.blocked += 1;
                blocked = true;
            }
            match limit {
                None => st = wait(&self.not_full, st),
                Some(limit) => {
                    let t0 = *started.get_or_insert_with(Instant::now);
                    let left = limit.saturating_sub(t0.elapsed());
                    if left.is_zero() {
                        break Err(SubmitError::Timeout(limit));
                    }
                    st = wait_timeout(&self.not_full, st, left).0;
                }
            }
        };
        if registration == Some(st.notify_epoch) {
            // Not notified since it registered: withdraw the registration.
            st.blocked_unnotified -= 1;
            if st.blocked_unnotified == 0 {
                self.has_blocked.store(false, Ordering::SeqCst);
            }
        }
        if blocked {
            st.blocked -= 1;
        }
        outcome
    }

    /// Marks every registered blocked submitter notified; the caller
    /// notifies `not_full` (after releasing the lock). Returns whether any
    /// was registered.
    fn release_blocked(&self, st: &mut State) -> bool {
        if st.blocked_unnotified == 0 {
            return false;
        }
        st.blocked_unnotified = 0;
        st.notify_epoch += 1;
        self.has_blocked.store(false, Ordering::SeqCst);
        true
    }

    /// A job ended: let blocked submitters re-check for room.
    fn notify_blocked(&self) {
        let mut st = lock(&self.state);
        let any = self.release_blocked(&mut st);
        drop(st);
        if any {
            self.not_full.notify_all();
        }
    }

    /// Takes the lock and wakes or spawns a worker if one is needed.
    fn dispatch_now(this: &Arc<Self>) {
        let mut st = lock(&this.state);
        let mut d = Deferred::new();
        this.dispatch(&mut st, &mut d);
        drop(st);
        Shared::apply(this, d);
    }

    /// Wakes or spawns one worker if jobs wait and nobody is searching.
    fn dispatch(&self, st: &mut State, d: &mut Deferred<S>) {
        let w = self.wake.load(Ordering::SeqCst);
        if searching(w) > 0 || self.queue.is_empty() {
            return;
        }
        if let Some(idle) = st.idle.detach() {
            self.wake.fetch_sub(IDLE - SEARCHING, Ordering::SeqCst);
            d.wake.push(idle.parker);
        } else if st.workers < st.capacity {
            self.enlist(st);
            d.spawn += 1;
        }
    }

    /// Counts a worker about to be spawned: in `workers`, in `threads`, and
    /// as searching (it looks at the queue when it arrives).
    fn enlist(&self, st: &mut State) {
        st.workers += 1;
        st.threads += 1;
        self.wake.fetch_add(SEARCHING, Ordering::SeqCst);
        self.publish(st);
    }

    /// Takes every job still queued (to be cancelled outside the lock).
    fn take_queued(&self) -> Vec<Task<S>> {
        std::iter::from_fn(|| self.queue.pop()).collect()
    }

    /// Ends jobs that never started as cancelled.
    fn cancel(&self, tasks: Vec<Task<S>>) {
        for t in tasks {
            t.job.abort(Abort::Cancelled, &self.counters);
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
        this.cancel(d.cancel);
        if d.notify_submitters {
            this.not_full.notify_all();
        }
    }

    /// Undoes the counts of a worker whose thread the OS refused to start.
    /// If that leaves a closed pool without threads, what waits is cancelled.
    fn spawn_failed(&self) {
        let mut st = lock(&self.state);
        st.workers -= 1;
        st.threads -= 1;
        self.wake.fetch_sub(SEARCHING, Ordering::SeqCst);
        self.publish(&st);
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

    /// Starts one worker thread; the caller has already counted it in
    /// `workers`, `threads` and as searching.
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
        this.limit
            .store(window(capacity, this.config.queue_cap), Ordering::SeqCst);
        this.counters.resizes.fetch_add(1, Ordering::Relaxed);
        let mut d = Deferred::new();
        if grew {
            this.publish(&st);
            this.dispatch(&mut st, &mut d);
            d.notify_submitters = this.release_blocked(&mut st);
        } else if st.workers > capacity {
            let surplus = st.workers - capacity;
            for w in st.idle.retire_oldest(surplus) {
                st.workers -= 1;
                this.wake.fetch_sub(IDLE, Ordering::SeqCst);
                d.exit.push(w.parker);
            }
            this.publish(&st);
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
        self.wake.fetch_sub(IDLE * n as u64, Ordering::SeqCst);
        self.publish(&st);
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
                this.enlist(&mut st);
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
        this.submit.gate.fetch_or(CLOSED, Ordering::SeqCst);
        this.closing.store(true, Ordering::SeqCst);
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
        Shared::apply(this, d);
    }

    /// Waits until every worker thread has gone (and every submitter that
    /// was admitted before the close has pushed, and started a worker if it
    /// needed one), at most until `deadline`. Returns how many jobs were
    /// still running at the deadline.
    pub(crate) fn wait_exited(&self, deadline: Option<Instant>) -> usize {
        let mut st = lock(&self.state);
        while st.threads > 0 || (st.closed && self.in_gate() > 0) {
            let (g, passed) = wait_until(&self.exited, st, deadline);
            st = g;
            if passed {
                break;
            }
        }
        if st.threads == 0 {
            return 0;
        }
        drop(st);
        // Time is up: cancel what has not started; report what still runs.
        self.cancel(self.take_queued());
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
            this.closing.store(false, Ordering::SeqCst);
            this.submit.gate.fetch_and(!CLOSED, Ordering::SeqCst);
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

    pub(crate) fn lock_state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    // ---- the worker's side ----

    /// A searching worker took a job. If it was the last searcher and jobs
    /// remain while a worker is spare, it wakes one more.
    fn stop_searching(this: &Arc<Self>) {
        let before = this.wake.fetch_sub(SEARCHING, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        if searching(before) == 1 && has_spare(before) && !this.queue.is_empty() {
            Shared::dispatch_now(this);
        }
    }

    /// Becomes the (one) spinning searcher, if nobody searches.
    fn try_search(&self) -> bool {
        self.wake
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |w| {
                (searching(w) < MAX_SPINNERS).then_some(w + SEARCHING)
            })
            .is_ok()
    }
}

/// A spinning worker yields its core once every this many polls (a yield
/// is a system call; with nothing else runnable it is pure overhead).
const YIELD_EVERY: u32 = 16;

/// Workers allowed to spin at once (measured: a second spinner burns CPU
/// the submitter needs, for no gain on 2 cores).
const MAX_SPINNERS: u64 = 1;

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
            shared.wake.fetch_sub(SEARCHING, Ordering::SeqCst);
            st.workers -= 1;
            shared.publish(&st);
            drop(st);
            finish_thread(&shared, id);
            return;
        }
    };

    // Spawned workers arrive counted as searching.
    let mut searching = true;
    let mut spun = false;
    let mut st: MutexGuard<'_, State>;
    let leave = loop {
        if let Some(task) = shared.queue.pop() {
            if searching {
                searching = false;
                Shared::stop_searching(&shared);
            }
            run_task(&shared, task, &mut state);
            // The outcome is counted; now look for blocked submitters (see
            // `admit_slow`).
            fence(Ordering::SeqCst);
            if shared.has_blocked.load(Ordering::Relaxed) {
                shared.notify_blocked();
            }
            spun = false;
            if shared.shrinking.load(Ordering::Relaxed) {
                st = lock(&shared.state);
                if st.workers > st.capacity {
                    break Leave::Own;
                }
                drop(st);
            }
            continue;
        }
        if shared.closing.load(Ordering::SeqCst) {
            if shared.in_gate() > 0 {
                // A submitter admitted before the close is still pushing.
                thread::yield_now();
                continue;
            }
            st = lock(&shared.state);
            if st.closed && shared.queue.is_empty() {
                break Leave::Own;
            }
            drop(st);
            continue;
        }
        if !spun && shared.config.spin > 0 && (searching || shared.try_search()) {
            // Stay awake briefly: with short jobs the next one usually
            // arrives within microseconds, and a wake-up costs more.
            searching = true;
            spun = true;
            for i in 0..shared.config.spin {
                if !shared.queue.is_empty() {
                    break;
                }
                if i % YIELD_EVERY == YIELD_EVERY - 1 {
                    thread::yield_now();
                } else {
                    std::hint::spin_loop();
                }
            }
            continue;
        }
        st = lock(&shared.state);
        if st.closed {
            drop(st);
            continue;
        }
        if st.workers > st.capacity {
            break Leave::Own;
        }
        // Count as parked, then look at the queue once more: a submitter
        // that pushed before this saw us as not parked and did not wake anyone.
        let parked = if searching { IDLE - SEARCHING } else { IDLE };
        shared.wake.fetch_add(parked, Ordering::SeqCst);
        searching = false;
        fence(Ordering::SeqCst);
        if !shared.queue.is_empty() {
            shared.wake.fetch_sub(IDLE - SEARCHING, Ordering::SeqCst);
            searching = true;
            spun = false;
            drop(st);
            continue;
        }
        st.idle.insert(IdleWorker {
            parker: parker.clone(),
            since: shared.now_coarse(),
        });
        drop(st);
        let signal = parker.park();
        spun = false;
        match signal {
            Signal::Exit => {
                st = lock(&shared.state);
                break Leave::Retired;
            }
            // Whoever woke us counted us as searching.
            _ => searching = true,
        }
    };
    if searching {
        shared.wake.fetch_sub(SEARCHING, Ordering::SeqCst);
    }
    if let Leave::Own = leave {
        st.workers -= 1;
    }
    shared.publish(&st);
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
    // Every worker has gone while jobs wait in a closed pool (only possible
    // if threads could not be started): they will never run.
    let cancel = if last && st.closed {
        shared.take_queued()
    } else {
        Vec::new()
    };
    drop(st);
    shared.cancel(cancel);
    if last {
        shared.exited.notify_all();
    }
}
