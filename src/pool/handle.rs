//! Result handles and the job wrappers that feed them.
//!
//! Every accepted job ends in exactly one outcome. The outcome is decided by
//! one compare-and-set on the job's slot: the worker moves it from `Pending`
//! to `Running`, or a canceller (the handle, the deadline check, shutdown)
//! moves it from `Pending` to finished. Whoever wins decides.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use crate::panics;
use crate::sync::{lock, wait_until, Arc, Condvar, Mutex};

use super::core::Ledger;
use super::error::JobError;

/// What a job's removal from the pool means for the counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Ended {
    Completed,
    Panicked(String),
    Expired,
    Cancelled,
}

/// Why a queued job is removed without running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Abort {
    Expired,
    Cancelled,
}

/// A job as the pool stores it: run it once on a worker, or abort it.
///
/// Both drop the job's captures first, then count the outcome in the
/// ledger, then tell the handle: a job's captures are gone before its place
/// in the pool is freed, and a caller that has seen an outcome also sees it
/// in the pool's stats. Neither lets a panic out: user code that runs here
/// outside the job's body (drops, wakers) is caught and reported through the
/// ledger.
pub(crate) trait Job<S>: Send + Sized {
    /// Runs the job on a worker (unless its handle cancelled it first).
    fn run(self, state: &mut S, ledger: &Ledger<'_>) -> Ended;
    /// Removes the job without running it.
    fn abort(self, why: Abort, ledger: &Ledger<'_>) -> Ended;
}

impl Abort {
    fn outcome(self) -> (Ended, JobError) {
        match self {
            Abort::Expired => (Ended::Expired, JobError::Expired),
            Abort::Cancelled => (Ended::Cancelled, JobError::Cancelled),
        }
    }
}

/// A fire-and-forget job (`execute`).
pub(crate) struct ExecJob<F>(pub(crate) F);

impl<S, F> Job<S> for ExecJob<F>
where
    F: FnOnce(&mut S) + Send,
{
    fn run(self, state: &mut S, ledger: &Ledger<'_>) -> Ended {
        let f = self.0;
        let ended = match panics::catch(|| f(state)) {
            Ok(()) => Ended::Completed,
            Err(msg) => Ended::Panicked(msg),
        };
        ledger.count(&ended);
        ended
    }
    fn abort(self, why: Abort, ledger: &Ledger<'_>) -> Ended {
        ledger.drop_user("an unstarted job's captures", self.0);
        let (ended, _) = why.outcome();
        ledger.count(&ended);
        ended
    }
}

enum Phase<T, E> {
    Pending,
    Running,
    Finished(Result<T, E>),
    Taken,
}

struct SlotInner<T, E> {
    phase: Phase<T, E>,
    waker: Option<Waker>,
    joiners: u32,
}

/// The waker of a slot whose outcome was just decided, taken out of the
/// slot's lock so that it is called with no lock held (a waker is user code:
/// it may call back into the pool or the batcher).
#[must_use = "a decided slot's waker must be woken"]
pub(crate) struct Wake(Option<Waker>);

impl Wake {
    /// Wakes on the caller's own thread (a panicking waker panics there).
    pub(crate) fn now(self) {
        if let Some(w) = self.0 {
            w.wake();
        }
    }

    /// Wakes on one of the runtime's threads: a panic of the waker is
    /// caught and its message returned.
    pub(crate) fn caught(self) -> Result<(), String> {
        match self.0 {
            None => Ok(()),
            Some(w) => panics::catch(move || w.wake()),
        }
    }
}

/// Where one unit of work's outcome is delivered to its handle: a job's
/// (here) or a batched item's (in `batch/`).
///
/// The outcome is decided once: `start` moves it from pending to running,
/// or `decide_unstarted` ends it before it started; whoever comes first wins.
/// Deciding returns the waker to call, outside any lock.
pub(crate) struct Slot<T, E = JobError> {
    inner: Mutex<SlotInner<T, E>>,
    done: Condvar,
}

impl<T, E> Slot<T, E> {
    pub(crate) fn new() -> Self {
        Self {
            inner: Mutex::new(SlotInner {
                phase: Phase::Pending,
                waker: None,
                joiners: 0,
            }),
            done: Condvar::new(),
        }
    }

    /// Pending -> Running. False if the outcome was already decided.
    pub(crate) fn start(&self) -> bool {
        let mut g = lock(&self.inner);
        if matches!(g.phase, Phase::Pending) {
            g.phase = Phase::Running;
            true
        } else {
            false
        }
    }

    /// Pending -> Finished(err). `None` if it had already started or ended.
    pub(crate) fn decide_unstarted(&self, err: E) -> Option<Wake> {
        self.decide_unstarted_counted(err, |_| {})
    }

    /// As `decide_unstarted`, calling `count` (with whether this call
    /// decided) before the outcome can be seen, under the slot's lock, so
    /// that a caller who has seen an outcome also sees it counted. `count`
    /// must not run user code.
    pub(crate) fn decide_unstarted_counted(&self, err: E, count: impl FnOnce(bool)) -> Option<Wake> {
        let mut g = lock(&self.inner);
        if !matches!(g.phase, Phase::Pending) {
            count(false);
            return None;
        }
        count(true);
        g.phase = Phase::Finished(Err(err));
        Some(self.wake(g))
    }

    /// Delivers the outcome of started work.
    pub(crate) fn finish(&self, r: Result<T, E>) -> Wake {
        let mut g = lock(&self.inner);
        g.phase = Phase::Finished(r);
        self.wake(g)
    }

    /// Tells the joiners, and hands back the async waiter's waker.
    fn wake(&self, mut g: crate::sync::MutexGuard<'_, SlotInner<T, E>>) -> Wake {
        let waker = g.waker.take();
        let joiners = g.joiners > 0;
        drop(g);
        if joiners {
            self.done.notify_all();
        }
        Wake(waker)
    }

    pub(crate) fn is_finished(&self) -> bool {
        matches!(lock(&self.inner).phase, Phase::Finished(_) | Phase::Taken)
    }

    /// Whether it ended in an error that `pred` accepts.
    pub(crate) fn ended_with(&self, pred: impl Fn(&E) -> bool) -> bool {
        matches!(&lock(&self.inner).phase, Phase::Finished(Err(e)) if pred(e))
    }

    fn take(g: &mut SlotInner<T, E>) -> Option<Result<T, E>> {
        if matches!(g.phase, Phase::Finished(_)) {
            if let Phase::Finished(r) = std::mem::replace(&mut g.phase, Phase::Taken) {
                return Some(r);
            }
        }
        None
    }

    /// Waits for the outcome (at most until `deadline`, if given) and takes
    /// it. `None` on time-out, or if another waiter took it.
    pub(crate) fn join_until(&self, deadline: Option<Instant>) -> Option<Result<T, E>> {
        let mut g = lock(&self.inner);
        // A short job is often done within microseconds; look a few times
        // (yielding the core) before sleeping, since a sleeping joiner costs
        // a wake-up that takes longer than the job.
        let polls = if cfg!(loom) { 0 } else { JOIN_POLLS };
        for i in 0..polls {
            if !matches!(g.phase, Phase::Pending | Phase::Running) {
                break;
            }
            drop(g);
            if i % 16 == 15 {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
            g = lock(&self.inner);
        }
        loop {
            if let Some(r) = Self::take(&mut g) {
                return Some(r);
            }
            if matches!(g.phase, Phase::Taken) {
                return None;
            }
            g.joiners += 1;
            let (g2, passed) = wait_until(&self.done, g, deadline);
            g = g2;
            g.joiners -= 1;
            if passed {
                return None;
            }
        }
    }

    /// Takes the outcome if it is there, else registers `cx`'s waker.
    ///
    /// A waker's clone and drop are user code: they run with the slot
    /// unlocked (a waker that calls back into the pool or the batcher must
    /// not find this slot's lock taken).
    pub(crate) fn poll_take(&self, cx: &mut Context<'_>) -> Poll<Result<T, E>> {
        let mut g = lock(&self.inner);
        if let Some(r) = Self::take(&mut g) {
            return Poll::Ready(r);
        }
        if g.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            return Poll::Pending;
        }
        drop(g);
        let new = cx.waker().clone();
        let mut g = lock(&self.inner);
        if let Some(r) = Self::take(&mut g) {
            drop(g);
            drop(new);
            return Poll::Ready(r);
        }
        let old = g.waker.replace(new);
        drop(g);
        drop(old);
        Poll::Pending
    }
}

/// How many times a joiner looks for the outcome before it sleeps
/// (yielding its core every 16th time).
const JOIN_POLLS: u32 = 64;

/// A job with a result handle (`submit`).
pub(crate) struct HandleJob<F, T> {
    f: Option<F>,
    slot: Option<Arc<Slot<T>>>,
}

impl<F, T> HandleJob<F, T> {
    pub(crate) fn new(f: F) -> (Self, JobHandle<T>) {
        let slot = Arc::new(Slot::new());
        let job = Self {
            f: Some(f),
            slot: Some(slot.clone()),
        };
        (job, JobHandle { slot: Some(slot) })
    }
}

impl<S, F, T> Job<S> for HandleJob<F, T>
where
    F: FnOnce(&mut S) -> T + Send,
    T: Send,
{
    fn run(mut self, state: &mut S, ledger: &Ledger<'_>) -> Ended {
        let (Some(f), Some(slot)) = (self.f.take(), self.slot.take()) else {
            ledger.count(&Ended::Cancelled);
            return Ended::Cancelled;
        };
        if !slot.start() {
            // The handle cancelled (or was dropped) before a worker got here.
            ledger.drop_user("a cancelled job's captures", f);
            ledger.count(&Ended::Cancelled);
            ledger.drop_user("a cancelled job's slot", slot);
            return Ended::Cancelled;
        }
        // The job consumes its captures: they are dropped inside the catch.
        let (ended, r) = match panics::catch(|| f(state)) {
            Ok(v) => (Ended::Completed, Ok(v)),
            Err(msg) => (Ended::Panicked(msg.clone()), Err(JobError::Panicked(msg))),
        };
        ledger.count(&ended);
        ledger.wake(slot.finish(r));
        // If nobody holds the handle any more (detached, or dropped while
        // the job ran), this drops the result here.
        ledger.drop_user("a job's result", slot);
        ended
    }

    fn abort(mut self, why: Abort, ledger: &Ledger<'_>) -> Ended {
        if let Some(f) = self.f.take() {
            ledger.drop_user("an unstarted job's captures", f);
        }
        let Some(slot) = self.slot.take() else {
            ledger.count(&Ended::Cancelled);
            return Ended::Cancelled;
        };
        let (ended, err) = why.outcome();
        // Count first (the handle may be watching the stats); if the handle
        // had already cancelled the job, that is its outcome instead.
        let mut g = lock(&slot.inner);
        let ended = if matches!(g.phase, Phase::Pending) {
            ledger.count(&ended);
            g.phase = Phase::Finished(Err(err));
            ledger.wake(slot.wake(g));
            ended
        } else {
            drop(g);
            ledger.count(&Ended::Cancelled);
            Ended::Cancelled
        };
        ledger.drop_user("an unstarted job's slot", slot);
        ended
    }
}

impl<F, T> Drop for HandleJob<F, T> {
    fn drop(&mut self) {
        // A job dropped without being run or aborted (a refused submit whose
        // handle was never returned, or a pool torn down abnormally) still
        // tells its handle, so no caller ever waits forever. A panicking
        // waker is not let out of a drop.
        if let Some(slot) = self.slot.take() {
            if let Some(w) = slot.decide_unstarted(JobError::Cancelled) {
                let _ = w.caught();
            }
        }
    }
}

/// The handle to a submitted job's outcome.
///
/// Wait with [`join`](Self::join) or [`join_timeout`](Self::join_timeout), or
/// `.await` it (it is a `Future`; the pool does not depend on any async
/// runtime). Dropping the handle before the job has started cancels the job:
/// work whose caller has gone is not computed. Use [`detach`](Self::detach)
/// to let it run anyway, or `Pool::execute` for fire-and-forget jobs.
#[must_use = "dropping a JobHandle cancels the job if it has not started"]
pub struct JobHandle<T> {
    slot: Option<Arc<Slot<T>>>,
}

impl<T> JobHandle<T> {
    /// Waits for the job's outcome.
    pub fn join(mut self) -> Result<T, JobError> {
        self.slot
            .take()
            .and_then(|slot| slot.join_until(None))
            .unwrap_or(Err(JobError::Cancelled))
    }

    /// Waits at most `timeout`; on time-out the handle is given back.
    pub fn join_timeout(self, timeout: Duration) -> Result<Result<T, JobError>, Self> {
        let Some(slot) = self.slot.as_ref() else {
            return Ok(Err(JobError::Cancelled));
        };
        slot.join_until(Some(Instant::now() + timeout)).ok_or(self)
    }

    /// Whether the job has ended (done, panicked, expired or cancelled).
    pub fn is_finished(&self) -> bool {
        self.slot.as_ref().is_none_or(|s| s.is_finished())
    }

    /// Cancels the job if it has not started. Returns true if this call
    /// cancelled it; false if it had already started or ended.
    pub fn cancel(&self) -> bool {
        match self
            .slot
            .as_ref()
            .and_then(|s| s.decide_unstarted(JobError::Cancelled))
        {
            Some(w) => {
                w.now();
                true
            }
            None => false,
        }
    }

    /// Whether the job ended by cancellation.
    pub fn is_cancelled(&self) -> bool {
        self.slot
            .as_ref()
            .is_some_and(|s| s.ended_with(|e| *e == JobError::Cancelled))
    }

    /// Lets the job run to completion with nobody waiting for its result.
    pub fn detach(mut self) {
        self.slot = None;
    }
}

impl<T> Drop for JobHandle<T> {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            if let Some(w) = slot.decide_unstarted(JobError::Cancelled) {
                // Not let out of a drop (it may run during unwinding).
                let _ = w.caught();
            }
        }
    }
}

impl<T> std::fmt::Debug for JobHandle<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobHandle")
            .field("finished", &self.is_finished())
            .finish()
    }
}

impl<T> Unpin for JobHandle<T> {}

impl<T> Future for JobHandle<T> {
    type Output = Result<T, JobError>;

    /// # Panics
    /// If polled again after it returned `Ready` (as futures may).
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(slot) = self.slot.as_ref() else {
            panic!("JobHandle polled after completion");
        };
        let r = std::task::ready!(slot.poll_take(cx));
        self.slot = None;
        Poll::Ready(r)
    }
}
