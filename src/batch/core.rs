//! The batcher's concurrency core: one mutex over the pending queue, the
//! batch threads that take batches from it by the flush rule, and the
//! splitting of results back to the items' slots.
//!
//! Invariants (under `Shared::state`):
//! - `weight` is the total weight of the entries in `queue`; a submit is
//!   admitted while `weight + its weight <= queue_cap`.
//! - An entry leaves the queue exactly once: into a batch (its slot moved to
//!   running), or counted as expired, abandoned or cancelled. Whoever removes
//!   it counts it, before telling its handle, so that a caller who has seen
//!   an outcome also sees it in the stats.
//! - `earliest_deadline` is at most the earliest deadline in the queue (it
//!   may be stale and early, which only wakes a batch thread to look again).
//! - No user code runs under the lock: entries removed from the queue
//!   (dead, cancelled) are settled after it is released, where their
//!   wakers are called and their items dropped. No user code on a batch
//!   thread can kill it: the handler, the drops of items and results, the
//!   wakers and the clock are each caught, reported to the panic handler,
//!   and every slot of a batch resolves (`tests/batch_user_code.rs`).
//!
//! One file, though longer than the project's 600 lines: it is one
//! protocol (submit, flush, run, settle, shut down) over one lock, and each
//! invariant above binds code in several of its functions; the loom model
//! (`tests/loom_batch.rs`) checks it as a whole.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::panics;
use crate::pool::handle::Wake;
use crate::pool::Clock;
use crate::sync::{
    lock, wait, wait_timeout, wait_until, Arc, AtomicU64, AtomicUsize, Condvar, Mutex, MutexGuard, Ordering,
};

use super::error::{BatchError, SubmitError};
use super::handle::ItemSlot;
use super::policy::{decide, BatchPolicy, Flush, FlushReason, QueueView};
use super::BatchHandler;

/// The least a handler call is assumed to take when the flush rule plans
/// for a deadline, so that an item is sent a little before its deadline
/// rather than exactly at it (when a late wake-up would expire it).
pub(crate) const MIN_CALL_ESTIMATE: Duration = Duration::from_millis(1);

/// One waiting item.
pub(crate) struct Entry<I, O> {
    pub(crate) item: I,
    pub(crate) weight: usize,
    pub(crate) arrived: Instant,
    pub(crate) deadline: Option<Instant>,
    pub(crate) slot: Arc<ItemSlot<O>>,
}

/// How a submit behaves when the queue is full.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Wait {
    No,
    Block(Option<Duration>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Closing {
    Open,
    /// Flush what is pending, then stop.
    Flush,
    /// Cancel what is pending, then stop.
    Cancel,
}

pub(crate) struct State<I, O> {
    pub(crate) queue: VecDeque<Entry<I, O>>,
    pub(crate) weight: usize,
    earliest_deadline: Option<Instant>,
    pub(crate) closing: Closing,
    pub(crate) blocked: usize,
    /// Batch threads alive.
    pub(crate) threads: usize,
    /// Batch threads whose handler factory has returned (either way).
    ready: usize,
    /// The first handler factory failure: (thread, message).
    pub(crate) failed: Option<(usize, String)>,
    expected_call: Duration,
    pub(crate) submitted: u64,
    pub(crate) rejected: u64,
}

/// Number of power-of-two batch-size buckets (the last one is open-ended).
pub(crate) const SIZE_BUCKETS: usize = 17;

/// The bucket of a batch of `n >= 1` items: 1, 2, 3-4, 5-8, ...
pub(crate) fn size_bucket(n: usize) -> usize {
    let b = (usize::BITS - n.saturating_sub(1).leading_zeros()) as usize;
    b.min(SIZE_BUCKETS - 1)
}

/// Outcome and flush counters (atomics: read without the lock).
pub(crate) struct Counters {
    pub(crate) delivered: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) expired: AtomicU64,
    pub(crate) abandoned: AtomicU64,
    pub(crate) cancelled: AtomicU64,
    pub(crate) batches: AtomicU64,
    pub(crate) flushes: [AtomicU64; 4],
    pub(crate) sizes: [AtomicU64; SIZE_BUCKETS],
}

impl Counters {
    fn new() -> Self {
        Self {
            delivered: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            expired: AtomicU64::new(0),
            abandoned: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            flushes: std::array::from_fn(|_| AtomicU64::new(0)),
            sizes: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    fn add(c: &AtomicU64, n: usize) {
        c.fetch_add(n as u64, Ordering::Relaxed);
    }
}

pub(crate) fn reason_index(r: FlushReason) -> usize {
    match r {
        FlushReason::Full => 0,
        FlushReason::Delay => 1,
        FlushReason::Deadline => 2,
        FlushReason::Shutdown => 3,
    }
}

pub(crate) type PanicHook = std::sync::Arc<dyn Fn(&str) + Send + Sync>;

pub(crate) struct Shared<I, O> {
    pub(crate) state: Mutex<State<I, O>>,
    /// Batch threads wait here for items or for the flush time.
    work: Condvar,
    /// Blocked submitters wait here for room.
    not_full: Condvar,
    /// Signalled when a batch thread becomes ready or exits.
    threads_cv: Condvar,
    pub(crate) counters: Counters,
    pub(crate) policy: BatchPolicy,
    pub(crate) queue_cap: usize,
    clock: std::sync::Arc<dyn Clock>,
    on_panic: Option<PanicHook>,
    /// Bumped by every handle dropped before its item was sent (see `purge`).
    pub(crate) abandoned_hint: Arc<AtomicUsize>,
}

/// A submit in progress (it may wait for room several times).
struct Attempt {
    weight: usize,
    deadline: Option<Instant>,
    mode: Wait,
    /// When it first waited (for its timeout).
    started: Option<Instant>,
    /// Counted in `submitted` already.
    counted: bool,
}

/// What one try at admitting gave.
enum Pushed<I, O> {
    Done(Result<Arc<ItemSlot<O>>, SubmitError>),
    /// Waited for room: try again with a fresh clock reading.
    Again(I),
}

/// Entries taken out of the queue under the lock without being sent, each
/// with why; settled (counted, told, dropped) after the lock is released.
type Dead<I, O> = Vec<(Entry<I, O>, BatchError)>;

impl<I, O> Shared<I, O> {
    pub(crate) fn new(
        policy: BatchPolicy,
        queue_cap: usize,
        clock: std::sync::Arc<dyn Clock>,
        on_panic: Option<PanicHook>,
    ) -> Self {
        Self {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                weight: 0,
                earliest_deadline: None,
                closing: Closing::Open,
                blocked: 0,
                threads: 0,
                ready: 0,
                failed: None,
                expected_call: Duration::ZERO,
                submitted: 0,
                rejected: 0,
            }),
            work: Condvar::new(),
            not_full: Condvar::new(),
            threads_cv: Condvar::new(),
            counters: Counters::new(),
            policy,
            queue_cap,
            clock,
            on_panic,
            abandoned_hint: Arc::new(AtomicUsize::new(0)),
        }
    }

    pub(crate) fn lock_state(&self) -> MutexGuard<'_, State<I, O>> {
        lock(&self.state)
    }

    /// Tells the panic handler about a panic of user code that is not an
    /// item's outcome. A panic of the handler itself is dropped.
    pub(crate) fn report(&self, msg: &str) {
        if let Some(h) = &self.on_panic {
            let _ = panics::catch(|| h(msg));
        }
    }

    /// Drops user data on a runtime thread; a panic is reported.
    fn drop_user<T>(&self, what: &str, x: T) {
        if let Err(msg) = panics::drop_caught(x) {
            self.report(&format!("dropping {what} panicked: {msg}"));
        }
    }

    /// Wakes a decided slot's async waiter; a panic is reported.
    fn wake(&self, w: Wake) {
        if let Err(msg) = w.caught() {
            self.report(&format!("a waker panicked: {msg}"));
        }
    }

    /// The user's clock; one that panics is reported and the system clock
    /// answers instead. Never called under the lock.
    pub(crate) fn now(&self) -> Instant {
        match panics::catch(|| self.clock.now()) {
            Ok(t) => t,
            Err(msg) => {
                self.report(&format!("clock panicked: {msg}"));
                Instant::now()
            }
        }
    }

    /// Admits an item, or says why not. The clock is read with the lock
    /// released, again after every wait for room.
    pub(crate) fn push(
        &self,
        item: I,
        weight: usize,
        deadline: Option<Instant>,
        mode: Wait,
    ) -> Result<Arc<ItemSlot<O>>, SubmitError> {
        let mut attempt = Attempt {
            weight,
            deadline,
            mode,
            started: None,
            counted: false,
        };
        let mut item = item;
        loop {
            let now = self.now();
            let mut dead = Vec::new();
            let r = self.push_locked(item, &mut attempt, now, &mut dead);
            self.settle(dead);
            match r {
                Pushed::Done(r) => return r,
                Pushed::Again(it) => item = it,
            }
        }
    }

    /// One try at admitting under the lock: the outcome, or the item back
    /// after a wait for room (the caller reads the clock and tries again).
    fn push_locked(&self, item: I, a: &mut Attempt, now: Instant, dead: &mut Dead<I, O>) -> Pushed<I, O> {
        let mut st = lock(&self.state);
        if !std::mem::replace(&mut a.counted, true) {
            st.submitted += 1;
        }
        let weight = a.weight;
        if st.closing != Closing::Open {
            st.rejected += 1;
            return Pushed::Done(Err(SubmitError::Closed));
        }
        if weight > self.queue_cap {
            st.rejected += 1;
            return Pushed::Done(Err(SubmitError::TooHeavy {
                weight,
                capacity: self.queue_cap,
            }));
        }
        if st.weight + weight > self.queue_cap {
            // Full: first drop what nobody waits for any more.
            self.purge(&mut st, now, dead);
        }
        if st.weight + weight > self.queue_cap {
            let limit = match a.mode {
                Wait::No => {
                    st.rejected += 1;
                    return Pushed::Done(Err(SubmitError::Overloaded));
                }
                Wait::Block(limit) => limit,
            };
            st.blocked += 1;
            match limit {
                None => st = wait(&self.not_full, st),
                Some(limit) => {
                    let t0 = *a.started.get_or_insert_with(Instant::now);
                    let left = limit.saturating_sub(t0.elapsed());
                    if left.is_zero() {
                        st.blocked -= 1;
                        st.rejected += 1;
                        return Pushed::Done(Err(SubmitError::Timeout(limit)));
                    }
                    st = wait_timeout(&self.not_full, st, left).0;
                }
            }
            st.blocked -= 1;
            return Pushed::Again(item);
        }
        let slot = Arc::new(ItemSlot::new());
        let was_empty = st.queue.is_empty();
        st.queue.push_back(Entry {
            item,
            weight,
            arrived: now,
            deadline: a.deadline,
            slot: slot.clone(),
        });
        st.weight += weight;
        let mut earlier = false;
        if let Some(d) = a.deadline {
            if st.earliest_deadline.is_none_or(|e| d < e) {
                st.earliest_deadline = Some(d);
                earlier = true;
            }
        }
        let full =
            st.queue.len() >= self.policy.max_items || self.policy.max_weight.is_some_and(|w| st.weight >= w);
        drop(st);
        // Wake a batch thread only when its flush decision may change.
        if was_empty || full || earlier {
            self.work.notify_one();
        }
        Pushed::Done(Ok(slot))
    }

    /// Takes out entries that expired or whose handle was dropped (into
    /// `dead`, to be settled after the lock). Scans the queue only when something in it can be dead (a
    /// handle was dropped since the last scan, or the earliest deadline has
    /// passed), so refusals under overload stay cheap.
    fn purge(&self, st: &mut State<I, O>, now: Instant, dead: &mut Dead<I, O>) {
        let dropped = self.abandoned_hint.swap(0, Ordering::AcqRel) > 0;
        if !dropped && st.earliest_deadline.is_none_or(|d| d >= now) {
            return;
        }
        let mut freed = 0;
        let mut kept = VecDeque::with_capacity(st.queue.len());
        for e in st.queue.drain(..) {
            match Self::dead(&e, now) {
                Some(why) => {
                    freed += e.weight;
                    dead.push((e, why));
                }
                None => kept.push_back(e),
            }
        }
        st.queue = kept;
        st.weight -= freed;
        self.recompute_deadline(st);
    }

    /// Why `e` must not be sent, if so.
    fn dead(e: &Entry<I, O>, now: Instant) -> Option<BatchError> {
        if e.slot.is_finished() {
            Some(BatchError::Abandoned)
        } else if e.deadline.is_some_and(|d| d < now) {
            Some(BatchError::Expired)
        } else {
            None
        }
    }

    /// Ends unsent entries: each is counted (as abandoned if its handle had
    /// already gone), its handle told, and its item dropped. Called with no
    /// lock held: wakers and drops are user code.
    fn settle(&self, dead: Dead<I, O>) {
        for (e, why) in dead {
            let Entry { item, slot, .. } = e;
            if let Some(w) = self.count_removed(&slot, why) {
                self.wake(w);
            }
            self.drop_user("an unsent item", item);
            self.drop_user("an item's slot", slot);
        }
    }

    /// Counts an unsent entry's outcome and decides it (as abandoned if its
    /// handle had already gone); the waker to call if this decided it.
    fn count_removed(&self, slot: &ItemSlot<O>, why: BatchError) -> Option<Wake> {
        let c = &self.counters;
        if matches!(why, BatchError::Abandoned) {
            Counters::add(&c.abandoned, 1);
            return None;
        }
        let counter = match why {
            BatchError::Expired => &c.expired,
            _ => &c.cancelled,
        };
        slot.decide_unstarted_counted(why, |decided| {
            Counters::add(if decided { counter } else { &c.abandoned }, 1);
        })
    }

    fn recompute_deadline(&self, st: &mut State<I, O>) {
        st.earliest_deadline = st.queue.iter().filter_map(|e| e.deadline).min();
    }

    fn view(&self, st: &State<I, O>) -> QueueView {
        QueueView {
            items: st.queue.len(),
            weight: st.weight,
            oldest: st.queue.front().map(|e| e.arrived),
            earliest_deadline: st.earliest_deadline,
            expected_call: st.expected_call.max(MIN_CALL_ESTIMATE),
            closing: st.closing != Closing::Open,
        }
    }

    /// Waits until the flush rule says to take a batch, and takes it.
    /// `None` when the batcher is closing and nothing is left. The clock is
    /// read with the lock released.
    fn next_batch(&self) -> Option<(Vec<Entry<I, O>>, FlushReason)> {
        loop {
            let now = self.now();
            let mut st = lock(&self.state);
            // An item may have arrived since the clock was read: time is at
            // least its arrival (else the rule would wait for an instant
            // that has already passed).
            let now = st.queue.back().map_or(now, |e| e.arrived.max(now));
            match decide(&self.view(&st), &self.policy, now) {
                Flush::Idle if st.closing != Closing::Open => return None,
                Flush::Idle => drop(wait(&self.work, st)),
                Flush::At(t) => drop(wait_timeout(&self.work, st, t.saturating_duration_since(now)).0),
                Flush::Now(reason) => {
                    let mut dead = Vec::new();
                    let batch = self.take(&mut st, now, &mut dead);
                    let more = !st.queue.is_empty();
                    let blocked = st.blocked > 0;
                    drop(st);
                    self.settle(dead);
                    if blocked {
                        self.not_full.notify_all();
                    }
                    if more {
                        // Another free batch thread may take the rest.
                        self.work.notify_one();
                    }
                    if !batch.is_empty() {
                        return Some((batch, reason));
                    }
                }
            }
        }
    }

    /// Takes up to a batch from the front of the queue; entries that
    /// expired or were abandoned go to `dead`.
    fn take(&self, st: &mut State<I, O>, now: Instant, dead: &mut Dead<I, O>) -> Vec<Entry<I, O>> {
        let p = &self.policy;
        let mut batch = Vec::with_capacity(p.max_items.min(st.queue.len()));
        let mut w = 0;
        while let Some(front) = st.queue.front() {
            if batch.len() >= p.max_items {
                break;
            }
            if p.max_weight
                .is_some_and(|m| !batch.is_empty() && w + front.weight > m)
            {
                break;
            }
            let Some(e) = st.queue.pop_front() else { break };
            st.weight -= e.weight;
            if let Some(why) = Self::dead(&e, now) {
                dead.push((e, why));
                continue;
            }
            if !e.slot.start() {
                dead.push((e, BatchError::Abandoned));
                continue;
            }
            w += e.weight;
            batch.push(e);
        }
        if st.queue.is_empty() {
            st.earliest_deadline = None;
        } else if st.earliest_deadline.is_some() {
            self.recompute_deadline(st);
        }
        batch
    }

    /// Runs one batch through `handler` and hands each item its result.
    /// Every slot resolves, whatever panics on the way.
    fn run<H: BatchHandler<I, O>>(&self, handler: &mut H, batch: Vec<Entry<I, O>>, reason: FlushReason) {
        let n = batch.len();
        let c = &self.counters;
        Counters::add(&c.batches, 1);
        Counters::add(&c.flushes[reason_index(reason)], 1);
        Counters::add(&c.sizes[size_bucket(n)], 1);
        let mut items = Vec::with_capacity(n);
        let mut slots = Vec::with_capacity(n);
        for e in batch {
            items.push(e.item);
            slots.push(e.slot);
        }
        let t0 = Instant::now();
        // The handler consumes the items: their drops happen inside the catch.
        let r = panics::catch(|| handler.call(items));
        self.record_call(t0.elapsed());
        let err = match r {
            Ok(Ok(outs)) if outs.len() == n => {
                Counters::add(&c.delivered, n);
                for (slot, o) in slots.into_iter().zip(outs) {
                    self.deliver(slot, Ok(o));
                }
                return;
            }
            Ok(Ok(outs)) => {
                let got = outs.len();
                for o in outs {
                    self.drop_user("a result of a batch with the wrong count", o);
                }
                BatchError::WrongCount { expected: n, got }
            }
            Ok(Err(e)) => BatchError::Handler(std::sync::Arc::new(e)),
            Err(msg) => BatchError::Panicked(msg),
        };
        Counters::add(&c.failed, n);
        for slot in slots {
            self.deliver(slot, Err(err.clone()));
        }
        // The last reference to the handler's error may be this one.
        self.drop_user("a handler's error", err);
    }

    /// Hands a sent item its result, then lets go of the slot: if its
    /// handle is gone, that drops the result here.
    fn deliver(&self, slot: Arc<ItemSlot<O>>, r: Result<O, BatchError>) {
        self.wake(slot.finish(r));
        self.drop_user("an item's result", slot);
    }

    /// Folds a call's duration into the running estimate (1/8 weight).
    fn record_call(&self, d: Duration) {
        let mut st = lock(&self.state);
        st.expected_call = if st.expected_call.is_zero() {
            d
        } else {
            (st.expected_call * 7 + d) / 8
        };
    }

    /// Stops admitting items. With `cancel`, pending items end `Cancelled`
    /// now; otherwise the batch threads flush them. Returns how many were
    /// cancelled.
    pub(crate) fn close(&self, cancel: bool) -> usize {
        let mut st = lock(&self.state);
        let mut cancelled = Vec::new();
        if cancel {
            st.closing = Closing::Cancel;
            st.weight = 0;
            st.earliest_deadline = None;
            cancelled = st.queue.drain(..).map(|e| (e, BatchError::Cancelled)).collect();
        } else if st.closing == Closing::Open {
            st.closing = Closing::Flush;
        }
        drop(st);
        let n = cancelled.len();
        self.settle(cancelled);
        self.work.notify_all();
        self.not_full.notify_all();
        n
    }

    /// Waits until every batch thread has exited, or `deadline` passes.
    /// Returns the threads still alive.
    pub(crate) fn wait_exited(&self, deadline: Option<Instant>) -> usize {
        let mut st = lock(&self.state);
        while st.threads > 0 {
            let (g, passed) = wait_until(&self.threads_cv, st, deadline);
            st = g;
            if passed {
                break;
            }
        }
        st.threads
    }

    /// Waits until `n` batch threads have created their handlers (or
    /// failed to). Returns the first failure.
    pub(crate) fn wait_ready(&self, n: usize) -> Option<(usize, String)> {
        let mut st = lock(&self.state);
        while st.ready < n && st.failed.is_none() {
            st = wait(&self.threads_cv, st);
        }
        st.failed.clone()
    }

    fn thread_ready(&self, failure: Option<(usize, String)>) {
        let mut st = lock(&self.state);
        st.ready += 1;
        if st.failed.is_none() {
            st.failed = failure;
        }
        drop(st);
        self.threads_cv.notify_all();
    }

    fn thread_exited(&self) {
        let mut st = lock(&self.state);
        st.threads -= 1;
        drop(st);
        self.threads_cv.notify_all();
    }
}

std::thread_local! {
    /// The batcher whose batch thread this is (address of its `Shared`).
    static CURRENT: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Whether the calling thread is one of `shared`'s batch threads.
pub(crate) fn on_batch_thread<I, O>(shared: &Shared<I, O>) -> bool {
    // loom runs its model threads as coroutines on one OS thread, where a
    // std thread-local would be shared; the models never drop a batcher
    // from a handler.
    if cfg!(loom) {
        return false;
    }
    CURRENT.with(|c| c.get() == shared as *const Shared<I, O> as usize)
}

/// A batch thread's place in `threads`, given back however the thread ends
/// (also if it unwinds, which no user code on it can cause).
struct Alive<'a, I, O>(&'a Shared<I, O>);

impl<I, O> Drop for Alive<'_, I, O> {
    fn drop(&mut self) {
        self.0.thread_exited();
    }
}

/// A batch thread: creates its handler, then takes and runs batches until
/// the batcher closes and the queue is empty.
pub(crate) fn batch_thread<I, O, H, E, F>(shared: Arc<Shared<I, O>>, index: usize, factory: std::sync::Arc<F>)
where
    H: BatchHandler<I, O>,
    E: std::fmt::Display,
    F: Fn(usize) -> Result<H, E> + Send + Sync + ?Sized,
{
    if !cfg!(loom) {
        CURRENT.with(|c| c.set(&*shared as *const Shared<I, O> as usize));
    }
    let _alive = Alive(&shared);
    let made = panics::catch(|| factory(index));
    let mut handler = match made {
        Ok(Ok(h)) => {
            shared.thread_ready(None);
            h
        }
        Ok(Err(e)) => {
            let msg =
                panics::catch(|| e.to_string()).unwrap_or_else(|m| format!("(its message panicked: {m})"));
            shared.drop_user("a handler factory's error", e);
            shared.thread_ready(Some((index, msg)));
            return;
        }
        Err(msg) => {
            shared.thread_ready(Some((index, format!("factory panicked: {msg}"))));
            return;
        }
    };
    while let Some((batch, reason)) = shared.next_batch() {
        shared.run(&mut handler, batch, reason);
    }
    shared.drop_user("the batch handler", handler);
}
