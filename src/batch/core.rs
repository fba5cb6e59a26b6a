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

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use crate::pool::handle::panic_message;
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
    pub(crate) clock: std::sync::Arc<dyn Clock>,
    /// Bumped by every handle dropped before its item was sent (see `purge`).
    pub(crate) abandoned_hint: Arc<AtomicUsize>,
}

impl<I, O> Shared<I, O> {
    pub(crate) fn new(policy: BatchPolicy, queue_cap: usize, clock: std::sync::Arc<dyn Clock>) -> Self {
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
            abandoned_hint: Arc::new(AtomicUsize::new(0)),
        }
    }

    pub(crate) fn lock_state(&self) -> MutexGuard<'_, State<I, O>> {
        lock(&self.state)
    }

    /// Admits an item, or says why not.
    pub(crate) fn push(
        &self,
        item: I,
        weight: usize,
        deadline: Option<Instant>,
        mode: Wait,
    ) -> Result<Arc<ItemSlot<O>>, SubmitError> {
        let mut st = lock(&self.state);
        st.submitted += 1;
        let mut started: Option<Instant> = None;
        loop {
            if st.closing != Closing::Open {
                st.rejected += 1;
                return Err(SubmitError::Closed);
            }
            if weight > self.queue_cap {
                st.rejected += 1;
                return Err(SubmitError::TooHeavy {
                    weight,
                    capacity: self.queue_cap,
                });
            }
            if st.weight + weight <= self.queue_cap {
                break;
            }
            // Full: first drop what nobody waits for any more.
            if self.purge(&mut st) > 0 && st.weight + weight <= self.queue_cap {
                break;
            }
            let limit = match mode {
                Wait::No => {
                    st.rejected += 1;
                    return Err(SubmitError::Overloaded);
                }
                Wait::Block(limit) => limit,
            };
            st.blocked += 1;
            match limit {
                None => st = wait(&self.not_full, st),
                Some(limit) => {
                    let t0 = *started.get_or_insert_with(Instant::now);
                    let left = limit.saturating_sub(t0.elapsed());
                    if left.is_zero() {
                        st.blocked -= 1;
                        st.rejected += 1;
                        return Err(SubmitError::Timeout(limit));
                    }
                    st = wait_timeout(&self.not_full, st, left).0;
                }
            }
            st.blocked -= 1;
        }
        let slot = Arc::new(ItemSlot::new());
        let was_empty = st.queue.is_empty();
        st.queue.push_back(Entry {
            item,
            weight,
            arrived: self.clock.now(),
            deadline,
            slot: slot.clone(),
        });
        st.weight += weight;
        let mut earlier = false;
        if let Some(d) = deadline {
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
        Ok(slot)
    }

    /// Removes entries that expired or whose handle was dropped. Returns how
    /// much weight was freed. Scans the queue only when something in it can
    /// be dead (a handle was dropped since the last scan, or the earliest
    /// deadline has passed), so refusals under overload stay cheap.
    fn purge(&self, st: &mut State<I, O>) -> usize {
        let now = self.clock.now();
        let dropped = self.abandoned_hint.swap(0, Ordering::AcqRel) > 0;
        if !dropped && st.earliest_deadline.is_none_or(|d| d >= now) {
            return 0;
        }
        let before = st.weight;
        let mut freed = 0;
        st.queue.retain(|e| {
            if let Some(why) = self.dead(e, now) {
                self.count_removed(&e.slot, why);
                freed += e.weight;
                false
            } else {
                true
            }
        });
        st.weight = before - freed;
        self.recompute_deadline(st);
        freed
    }

    /// Why `e` must not be sent, if so.
    fn dead(&self, e: &Entry<I, O>, now: Instant) -> Option<BatchError> {
        if e.slot.is_finished() {
            Some(BatchError::Abandoned)
        } else if e.deadline.is_some_and(|d| d < now) {
            Some(BatchError::Expired)
        } else {
            None
        }
    }

    /// Ends an unsent entry with `why`, counting it (as abandoned if its
    /// handle had already gone).
    fn count_removed(&self, slot: &ItemSlot<O>, why: BatchError) {
        let c = &self.counters;
        let counter = match why {
            BatchError::Expired => &c.expired,
            BatchError::Cancelled => &c.cancelled,
            _ => &c.abandoned,
        };
        // Count first, then decide; if the handle won the race, undo.
        Counters::add(counter, 1);
        if !matches!(why, BatchError::Abandoned) && !slot.decide_unstarted(why) {
            counter.fetch_sub(1, Ordering::Relaxed);
            Counters::add(&c.abandoned, 1);
        }
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
    /// `None` when the batcher is closing and nothing is left.
    fn next_batch(&self) -> Option<(Vec<Entry<I, O>>, FlushReason)> {
        let mut st = lock(&self.state);
        loop {
            let now = self.clock.now();
            match decide(&self.view(&st), &self.policy, now) {
                Flush::Idle if st.closing != Closing::Open => return None,
                Flush::Idle => st = wait(&self.work, st),
                Flush::At(t) => st = wait_timeout(&self.work, st, t.saturating_duration_since(now)).0,
                Flush::Now(reason) => {
                    let batch = self.take(&mut st, now);
                    let more = !st.queue.is_empty();
                    let blocked = st.blocked > 0;
                    drop(st);
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
                    st = lock(&self.state);
                }
            }
        }
    }

    /// Takes up to a batch from the front of the queue, skipping (and
    /// counting) entries that expired or were abandoned.
    fn take(&self, st: &mut State<I, O>, now: Instant) -> Vec<Entry<I, O>> {
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
            if let Some(why) = self.dead(&e, now) {
                self.count_removed(&e.slot, why);
                continue;
            }
            if !e.slot.start() {
                Counters::add(&self.counters.abandoned, 1);
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
        let r = catch_unwind(AssertUnwindSafe(|| handler.call(items)));
        self.record_call(t0.elapsed());
        let err = match r {
            Ok(Ok(outs)) if outs.len() == n => {
                Counters::add(&c.delivered, n);
                for (slot, o) in slots.into_iter().zip(outs) {
                    slot.finish(Ok(o));
                }
                return;
            }
            Ok(Ok(outs)) => BatchError::WrongCount {
                expected: n,
                got: outs.len(),
            },
            Ok(Err(e)) => BatchError::Handler(std::sync::Arc::new(e)),
            Err(p) => BatchError::Panicked(panic_message(&*p)),
        };
        Counters::add(&c.failed, n);
        for slot in slots {
            slot.finish(Err(err.clone()));
        }
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
        let mut cancelled = 0;
        if cancel {
            st.closing = Closing::Cancel;
            st.weight = 0;
            st.earliest_deadline = None;
            let drained: Vec<_> = st.queue.drain(..).collect();
            drop(st);
            for e in drained {
                cancelled += 1;
                self.count_removed(&e.slot, BatchError::Cancelled);
            }
        } else {
            if st.closing == Closing::Open {
                st.closing = Closing::Flush;
            }
            drop(st);
        }
        self.work.notify_all();
        self.not_full.notify_all();
        cancelled
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
    let made = catch_unwind(AssertUnwindSafe(|| factory(index)));
    let mut handler = match made {
        Ok(Ok(h)) => {
            shared.thread_ready(None);
            h
        }
        Ok(Err(e)) => {
            shared.thread_ready(Some((index, e.to_string())));
            shared.thread_exited();
            return;
        }
        Err(p) => {
            let msg = format!("factory panicked: {}", panic_message(&*p));
            shared.thread_ready(Some((index, msg)));
            shared.thread_exited();
            return;
        }
    };
    while let Some((batch, reason)) = shared.next_batch() {
        shared.run(&mut handler, batch, reason);
    }
    // The handler's Drop is user code: keep a panic in it off this thread's
    // exit accounting.
    let _ = catch_unwind(AssertUnwindSafe(move || drop(handler)));
    shared.thread_exited();
}
