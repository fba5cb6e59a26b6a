//! One run of a graph: each node is started by the end of its last input,
//! and every node ends exactly once.
//!
//! Invariants:
//! - A node's phase only moves forward, Waiting → Queued → Running → Ended,
//!   under the node's own lock, and Ended is entered once. Whoever moves it
//!   there decides the node's one outcome: the worker whose body returned,
//!   the timer, the pool aborting the job, the submitter it refused, an
//!   input without a value, or the run's cancellation. Everyone else finds
//!   the node ended and leaves it alone (a late value is dropped).
//! - A node is queued only when its `waiting` count (predecessors not yet
//!   ended with a value) reaches zero, so no node starts before its inputs
//!   have ended, and their values are set before it is queued (the
//!   decrements are `AcqRel`).
//! - A predecessor that ends without a value never decrements: it fails the
//!   run (a required node) or ends its dependents at once (an optional one:
//!   they are skipped, or take their default).
//! - `pending` counts the nodes not yet ended; whoever ends the last one
//!   resolves the run. A failure (a required node, the deadline, the
//!   handle) first sets `over` and the error, then ends every node not yet
//!   ended: unstarted ones `Cancelled` (a queued job finds its node ended
//!   and never runs the body), running ones `Abandoned`. So the run resolves
//!   as soon as it fails, with every node's outcome known.
//! - Nothing here waits for another node: bodies run on pool workers; a node
//!   made ready by a worker or the timer is submitted without blocking (a
//!   refusal fails it); timeouts and the deadline are fired by the timer.
//! - Lock order: a node's lock, then the timer's. No user code runs under a
//!   lock (a default's clone, a late value's drop run after it).
//!
//! One file, though longer than the project's 600 lines: the invariants
//! above are one protocol among the node's phase, `waiting`, `pending` and
//! the run's failure, and every function here moves one of them; split,
//! the parts would each hold half of an invariant.

use std::any::Any;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use crate::guard::{BreakerError, RetryError};
use crate::panics;
use crate::pool::core::Ledger;
use crate::pool::handle::{Abort, Ended, Job, Slot};
use crate::pool::{Pool, SubmitError};
use crate::sync::lock;

use super::builder::{Meta, Spec, Value};
use super::report::{NodeError, NodeReport, Outcome, RunError};
use crate::timer;

/// The timer tag of a run's deadline (node tags are node indices).
pub(crate) const RUN: usize = usize::MAX;

/// A run as the handle, the report and the timer see it, whatever its
/// input type.
pub(crate) trait RunObj: Send + Sync + 'static {
    fn core(&self) -> &Arc<Core>;
    /// Fails the run as cancelled; true if this call ended it.
    fn cancel(self: Arc<Self>) -> bool;
}

/// How a run ended, fixed when it resolves.
#[derive(Debug, Clone)]
pub(crate) struct Resolved {
    pub(crate) status: Result<(), RunError>,
    pub(crate) elapsed: Duration,
}

/// The part of a run that does not depend on its input type: what a report
/// keeps (not the input, not the pool).
pub(crate) struct Core {
    pub(crate) meta: Arc<Meta>,
    cells: Box<[Cell]>,
    start: Instant,
    resolved: OnceLock<Resolved>,
    /// Finished once `resolved` is set; joiners and the awaiting task wait
    /// here.
    pub(crate) done: Slot<(), Infallible>,
}

enum Phase {
    Waiting,
    Queued,
    Running,
    Ended(Outcome),
}

/// A node's record, under its lock.
struct Rec {
    phase: Phase,
    queued: Option<Instant>,
    started: Option<Instant>,
    finished: Option<Instant>,
    /// When the node's timeout passes (set when it is queued).
    deadline: Option<Instant>,
    timer: Option<timer::Key>,
    /// The pool refused the node's job: the submitter ends the node, not
    /// the job's drop.
    refused: bool,
}

struct Cell {
    /// Predecessors not yet ended with a value.
    waiting: AtomicUsize,
    rec: Mutex<Rec>,
    /// Set once, by whoever ended the node with a value, before any
    /// dependent is queued.
    value: OnceLock<Value>,
    attempts: AtomicU32,
}

impl Cell {
    fn new(preds: usize) -> Self {
        Self {
            waiting: AtomicUsize::new(preds),
            rec: Mutex::new(Rec {
                phase: Phase::Waiting,
                queued: None,
                started: None,
                finished: None,
                deadline: None,
                timer: None,
                refused: false,
            }),
            value: OnceLock::new(),
            attempts: AtomicU32::new(0),
        }
    }
}

impl Core {
    pub(crate) fn is_resolved(&self) -> bool {
        self.resolved.get().is_some()
    }

    /// How the run ended. Only asked once the run is resolved; a run that
    /// is not (never the case) reads as cancelled.
    pub(crate) fn resolved(&self) -> Resolved {
        self.resolved.get().cloned().unwrap_or(Resolved {
            status: Err(RunError::Cancelled),
            elapsed: self.start.elapsed(),
        })
    }

    pub(crate) fn value(&self, i: usize) -> Option<&(dyn Any + Send + Sync)> {
        self.cells.get(i)?.value.get().map(|v| &**v)
    }

    pub(crate) fn node_report(&self, i: usize) -> NodeReport {
        let since = |t: Option<Instant>| t.map(|t| t.saturating_duration_since(self.start));
        let name = self.meta.names.get(i).cloned().unwrap_or_else(|| "?".into());
        let Some(cell) = self.cells.get(i) else {
            return NodeReport {
                name,
                outcome: Outcome::Failed(NodeError::Internal("no such node")),
                queued: None,
                started: None,
                finished: Duration::ZERO,
                attempts: 0,
            };
        };
        let r = lock(&cell.rec);
        let outcome = match &r.phase {
            Phase::Ended(o) => o.clone(),
            // A resolved run has ended every node.
            _ => Outcome::Failed(NodeError::Internal("node not ended")),
        };
        NodeReport {
            name,
            outcome,
            queued: since(r.queued),
            started: since(r.started),
            finished: since(r.finished).unwrap_or_default(),
            attempts: cell.attempts.load(Ordering::Relaxed),
        }
    }
}

/// A node's inputs, as its body reads them.
pub(crate) struct Inputs<'a> {
    cells: &'a [Cell],
    idx: &'a [usize],
}

impl<'a> Inputs<'a> {
    /// Input `k`'s value.
    pub(crate) fn get<A: 'static>(&self, k: usize) -> Result<&'a A, NodeError> {
        let cells = self.cells;
        let v = self
            .idx
            .get(k)
            .and_then(|&j| cells.get(j))
            .and_then(|c| c.value.get())
            .ok_or(NodeError::Internal("an input has no value"))?;
        v.downcast_ref::<A>()
            .ok_or(NodeError::Internal("an input has the wrong type"))
    }
}

/// How the pool is reached, whatever its worker state type.
pub(crate) trait Submit<I: Send + Sync + 'static>: Send + Sync {
    /// Submits a node's job. On refusal, `refused` is called before the job
    /// is dropped.
    fn push(
        &self,
        job: NodeJob<I>,
        deadline: Option<Instant>,
        from_runtime: bool,
        refused: &dyn Fn(),
    ) -> Result<(), SubmitError>;
}

impl<I: Send + Sync + 'static, S: 'static> Submit<I> for Pool<S> {
    fn push(
        &self,
        job: NodeJob<I>,
        deadline: Option<Instant>,
        from_runtime: bool,
        refused: &dyn Fn(),
    ) -> Result<(), SubmitError> {
        self.push_job(job, deadline, from_runtime).map_err(|(job, e)| {
            refused();
            drop(job);
            e
        })
    }
}

/// Why a node is being ended.
enum Cause {
    /// Its body returned (valid while it runs).
    Returned(Result<Value, NodeError>),
    /// Its timeout passed (while queued or running).
    TimedOut,
    /// The pool refused its job (while queued).
    Refused(SubmitError),
    /// The pool cancelled or dropped its job unrun (while queued).
    PoolCancelled,
    /// This predecessor ended without a value (while waiting).
    InputMissing(usize),
    /// The run failed or was cancelled (any phase).
    RunOver,
}

/// What the node's end gives its dependents.
enum Verdict {
    Value(Value),
    Error(NodeError),
    /// Cancelled or abandoned: the run is over, nothing follows.
    Over,
}

/// One run: the graph, the input, the pool, and the nodes' states.
pub(crate) struct Run<I> {
    core: Arc<Core>,
    spec: Arc<Spec<I>>,
    input: I,
    pool: Box<dyn Submit<I>>,
    deadline: Option<Instant>,
    deadline_timer: Mutex<Option<timer::Key>>,
    /// Nodes not yet ended.
    pending: AtomicUsize,
    /// The run failed or was cancelled: nothing more is queued.
    over: AtomicBool,
    error: Mutex<Option<RunError>>,
}

/// Starts a run of `spec` on `pool`.
pub(crate) fn start<I, S>(
    spec: &Arc<Spec<I>>,
    pool: &Pool<S>,
    input: I,
    deadline: Option<Instant>,
) -> Arc<dyn RunObj>
where
    I: Send + Sync + 'static,
    S: 'static,
{
    let meta = spec.meta.clone();
    let n = meta.names.len();
    let start = Instant::now();
    let deadline = deadline.or_else(|| meta.deadline.and_then(|d| start.checked_add(d)));
    let cells = meta.preds.iter().map(|p| Cell::new(p.len())).collect();
    let run = Arc::new(Run {
        core: Arc::new(Core {
            meta: meta.clone(),
            cells,
            start,
            resolved: OnceLock::new(),
            done: Slot::new(),
        }),
        spec: spec.clone(),
        input,
        pool: Box::new(pool.clone()),
        deadline,
        deadline_timer: Mutex::new(None),
        pending: AtomicUsize::new(n),
        over: AtomicBool::new(false),
        error: Mutex::new(None),
    });
    if n == 0 {
        run.resolve();
        return run;
    }
    if let Some(d) = deadline {
        let weak: Weak<dyn timer::Fire> = Arc::downgrade(&run) as Weak<Run<I>>;
        let key = timer::schedule(d, weak, RUN);
        *lock(&run.deadline_timer) = key;
    }
    for &r in &meta.roots {
        if let Err(e) = run.make_ready(r, false) {
            run.settle(r, Cause::Refused(e));
        }
    }
    run
}

/// A timer entry fired: a node's timeout, or the run's deadline.
impl<I: Send + Sync + 'static> timer::Fire for Run<I> {
    fn fire(self: Arc<Self>, tag: usize) {
        if tag == RUN {
            self.fail_deadline();
        } else {
            self.settle(tag, Cause::TimedOut);
        }
    }
}

impl<I: Send + Sync + 'static> RunObj for Run<I> {
    fn core(&self) -> &Arc<Core> {
        &self.core
    }

    fn cancel(self: Arc<Self>) -> bool {
        !self.core.is_resolved() && self.fail(RunError::Cancelled)
    }
}

impl<I: Send + Sync + 'static> Run<I> {
    fn cell(&self, i: usize) -> Option<&Cell> {
        self.core.cells.get(i)
    }

    /// Queues node `i` (its last predecessor has just ended with a value).
    /// A refusal comes back for the caller to end the node with.
    fn make_ready(self: &Arc<Self>, i: usize, from_runtime: bool) -> Result<(), SubmitError> {
        let Some(cell) = self.cell(i) else {
            return Ok(());
        };
        if self.over.load(Ordering::Acquire) {
            // The run's cancellation ends this node.
            return Ok(());
        }
        let now = Instant::now();
        let timeout = self.core.meta.guards.get(i).and_then(|g| g.timeout);
        let node_deadline = timeout.and_then(|t| now.checked_add(t));
        let job_deadline = match (node_deadline, self.deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        {
            let mut r = lock(&cell.rec);
            if !matches!(r.phase, Phase::Waiting) {
                return Ok(());
            }
            r.phase = Phase::Queued;
            r.queued = Some(now);
            r.deadline = node_deadline;
            if let Some(d) = node_deadline {
                let weak: Weak<dyn timer::Fire> = Arc::downgrade(self) as Weak<Run<I>>;
                r.timer = timer::schedule(d, weak, i);
            }
        }
        let job = NodeJob {
            run: Some(self.clone()),
            node: i,
        };
        self.pool.push(job, job_deadline, from_runtime, &|| {
            lock(&cell.rec).refused = true
        })
    }

    /// Ends node `i` for `cause` if that is still its to decide, and
    /// carries out what follows, for it and for every node it ends in turn
    /// (kept on a list, not the stack, however deep the graph).
    fn settle(self: &Arc<Self>, i: usize, cause: Cause) {
        let mut more = Vec::new();
        self.settle_one(i, cause, &mut more);
        while let Some((j, c)) = more.pop() {
            self.settle_one(j, c, &mut more);
        }
    }

    fn settle_one(self: &Arc<Self>, i: usize, cause: Cause, more: &mut Vec<(usize, Cause)>) {
        let meta = &*self.core.meta;
        let (Some(cell), Some(guards)) = (self.cell(i), meta.guards.get(i)) else {
            return;
        };
        let now = Instant::now();
        if matches!(cause, Cause::Returned(_)) && self.deadline.is_some_and(|d| now >= d) {
            // A value after the run's deadline: the run fails first, and
            // this node, still running, is abandoned.
            self.fail_deadline();
        }
        let mut late = None;
        let (verdict, timer_key) = {
            let mut r = lock(&cell.rec);
            let valid = match (&r.phase, &cause) {
                (Phase::Ended(_), _) => false,
                (_, Cause::RunOver) => true,
                (Phase::Running, Cause::Returned(_)) => true,
                (Phase::Queued | Phase::Running, Cause::TimedOut) => true,
                (Phase::Queued, Cause::Refused(_) | Cause::PoolCancelled) => true,
                (Phase::Waiting, Cause::InputMissing(_)) => true,
                _ => false,
            };
            if !valid {
                drop(r);
                // A late or losing value is user data: dropped unlocked.
                let _ = panics::drop_caught(cause);
                return;
            }
            let timed_out = || NodeError::TimedOut(guards.timeout.unwrap_or_default());
            let is_late = r.deadline.is_some_and(|d| now >= d);
            let verdict = match cause {
                Cause::Returned(Ok(v)) if !is_late => Verdict::Value(v),
                Cause::Returned(Err(e)) if !is_late => Verdict::Error(e),
                Cause::Returned(res) => {
                    // After its timeout: the timer lost the race by a hair.
                    late = Some(res);
                    Verdict::Error(timed_out())
                }
                Cause::TimedOut => Verdict::Error(timed_out()),
                Cause::Refused(e) => Verdict::Error(NodeError::Refused(e)),
                Cause::PoolCancelled => Verdict::Error(NodeError::PoolCancelled),
                Cause::InputMissing(j) => Verdict::Error(NodeError::InputMissing {
                    input: meta.names.get(j).cloned().unwrap_or_else(|| "?".into()),
                }),
                Cause::RunOver => Verdict::Over,
            };
            let outcome = match &verdict {
                Verdict::Value(_) => Outcome::Done,
                Verdict::Error(e) if guards.default.is_some() => Outcome::Degraded(e.clone()),
                Verdict::Error(NodeError::InputMissing { input }) => {
                    Outcome::Skipped { input: input.clone() }
                }
                Verdict::Error(e) => Outcome::Failed(e.clone()),
                Verdict::Over if matches!(r.phase, Phase::Running) => Outcome::Abandoned,
                Verdict::Over => Outcome::Cancelled,
            };
            r.phase = Phase::Ended(outcome);
            r.finished = Some(now);
            (verdict, r.timer.take())
        };
        if let Some(k) = timer_key {
            timer::cancel(k);
        }
        if let Some(late) = late {
            let _ = panics::drop_caught(late);
        }
        let value = match verdict {
            Verdict::Value(v) => Some(v),
            Verdict::Error(e) => match &guards.default {
                Some(default) => match panics::catch(default) {
                    Ok(v) => Some(v),
                    Err(msg) => {
                        let e = NodeError::Panicked(format!("the default's clone panicked: {msg}"));
                        lock(&cell.rec).phase = Phase::Ended(Outcome::Failed(e.clone()));
                        self.lost(i, e, more);
                        None
                    }
                },
                None => {
                    self.lost(i, e, more);
                    None
                }
            },
            Verdict::Over => None,
        };
        if let Some(v) = value {
            let _ = cell.value.set(v);
            for &d in meta.dependents.get(i).into_iter().flatten() {
                let reached_zero = self
                    .cell(d)
                    .is_some_and(|c| c.waiting.fetch_sub(1, Ordering::AcqRel) == 1);
                if reached_zero {
                    if let Err(e) = self.make_ready(d, true) {
                        more.push((d, Cause::Refused(e)));
                    }
                }
            }
        }
        if self.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.resolve();
        }
    }

    /// Node `i` ended without a value: a required node fails the run, an
    /// optional one ends its dependents.
    fn lost(self: &Arc<Self>, i: usize, error: NodeError, more: &mut Vec<(usize, Cause)>) {
        let meta = &*self.core.meta;
        if meta.guards.get(i).is_some_and(|g| g.optional) {
            for &d in meta.dependents.get(i).into_iter().flatten() {
                more.push((d, Cause::InputMissing(i)));
            }
        } else {
            let node = meta.names.get(i).cloned().unwrap_or_else(|| "?".into());
            self.fail(RunError::NodeFailed { node, error });
        }
    }

    fn fail_deadline(self: &Arc<Self>) {
        let after = self
            .deadline
            .map(|d| d.saturating_duration_since(self.core.start))
            .unwrap_or_default();
        self.fail(RunError::DeadlineExceeded(after));
    }

    /// Fails the run (the first failure only): ends every node not yet
    /// ended. True if this call failed it.
    fn fail(self: &Arc<Self>, error: RunError) -> bool {
        if self.over.swap(true, Ordering::AcqRel) {
            return false;
        }
        *lock(&self.error) = Some(error);
        if let Some(k) = lock(&self.deadline_timer).take() {
            timer::cancel(k);
        }
        let mut none = Vec::new();
        for i in 0..self.core.cells.len() {
            // `RunOver` ends a node with nothing to follow.
            self.settle_one(i, Cause::RunOver, &mut none);
        }
        true
    }

    /// The last node has ended: the run's verdict is fixed and told.
    fn resolve(&self) {
        if let Some(k) = lock(&self.deadline_timer).take() {
            timer::cancel(k);
        }
        let status = match lock(&self.error).clone() {
            Some(e) => Err(e),
            None => Ok(()),
        };
        let _ = self.core.resolved.set(Resolved {
            status,
            elapsed: self.core.start.elapsed(),
        });
        // The waker is user code: a panic in it is not ours to raise here.
        let _ = self.core.done.finish(Ok(())).caught();
    }

    /// Runs node `i`'s body on a worker, unless the node has already ended
    /// (then it never starts), and ends the node with its result. The job's
    /// pool outcome is counted before the node's dependents are submitted,
    /// so its place in the pool is free for them.
    fn execute(self: &Arc<Self>, i: usize, ledger: &Ledger<'_>) -> Ended {
        let (Some(cell), Some(body)) = (self.cell(i), self.spec.bodies.get(i)) else {
            ledger.count(&Ended::Cancelled);
            return Ended::Cancelled;
        };
        let over = {
            let mut r = lock(&cell.rec);
            if !matches!(r.phase, Phase::Queued) {
                drop(r);
                ledger.count(&Ended::Cancelled);
                return Ended::Cancelled;
            }
            let over = self.over.load(Ordering::Acquire);
            if !over {
                r.phase = Phase::Running;
                r.started = Some(Instant::now());
            }
            over
        };
        if over {
            // The run failed and its cancellation has not reached this node.
            ledger.count(&Ended::Cancelled);
            self.settle(i, Cause::RunOver);
            return Ended::Cancelled;
        }
        let meta = &*self.core.meta;
        let inputs = Inputs {
            cells: &self.core.cells,
            idx: meta.inputs.get(i).map_or(&[], Vec::as_slice),
        };
        let attempt = || {
            cell.attempts.fetch_add(1, Ordering::Relaxed);
            panics::catch(|| body(&self.input, &inputs)).unwrap_or_else(|msg| Err(NodeError::Panicked(msg)))
        };
        let result =
            panics::catch(|| self.guarded(i, attempt)).unwrap_or_else(|msg| Err(NodeError::Panicked(msg)));
        let ended = match &result {
            Err(NodeError::Panicked(msg)) => Ended::Panicked(msg.clone()),
            _ => Ended::Completed,
        };
        ledger.count(&ended);
        self.settle(i, Cause::Returned(result));
        ended
    }

    /// The body through the node's guards, outermost first: breaker, then
    /// retry (as `guard` recommends).
    fn guarded(&self, i: usize, attempt: impl Fn() -> Result<Value, NodeError>) -> Result<Value, NodeError> {
        let Some(g) = self.core.meta.guards.get(i) else {
            return Err(NodeError::Internal("no such node"));
        };
        let retried = || match &g.retry {
            None => attempt(),
            Some((retry, transient)) => retry
                .call(|e| !self.has_ended(i) && transient(e), |_| attempt())
                .map_err(RetryError::into_inner),
        };
        match &g.breaker {
            None => retried(),
            Some(b) => b
                .call(|| {
                    // A value the node can no longer use (timed out,
                    // abandoned) is a failure in the breaker's books.
                    let v = retried()?;
                    if self.has_ended(i) {
                        let _ = panics::drop_caught(v);
                        return Err(NodeError::TimedOut(g.timeout.unwrap_or_default()));
                    }
                    Ok(v)
                })
                .map_err(|e| match e {
                    BreakerError::Open { retry_after } => NodeError::BreakerOpen { retry_after },
                    BreakerError::Inner(e) => e,
                }),
        }
    }

    fn has_ended(&self, i: usize) -> bool {
        self.cell(i)
            .is_none_or(|c| matches!(lock(&c.rec).phase, Phase::Ended(_)))
    }

    /// The pool removed node `i`'s job without running it.
    fn aborted(self: &Arc<Self>, i: usize, why: Abort) {
        match why {
            Abort::Cancelled => self.settle(i, Cause::PoolCancelled),
            Abort::Expired => {
                // The job's deadline was the earlier of the node's and the run's.
                let node = self.cell(i).and_then(|c| lock(&c.rec).deadline);
                match (node, self.deadline) {
                    (Some(n), Some(r)) if r < n => self.fail_deadline(),
                    (Some(_), _) => self.settle(i, Cause::TimedOut),
                    (None, Some(_)) => self.fail_deadline(),
                    (None, None) => self.settle(i, Cause::PoolCancelled),
                };
            }
        }
    }

    /// Node `i`'s job was dropped unrun: unless the pool refused it (then
    /// its submitter ends the node), the node ends as cancelled by the pool.
    fn dropped(self: &Arc<Self>, i: usize) {
        if self.cell(i).is_some_and(|c| !lock(&c.rec).refused) {
            self.settle(i, Cause::PoolCancelled);
        }
    }
}

/// A node's job on the pool: runs the node's body, or ends the node if the
/// pool aborts or drops the job. It owns a reference to the run, which may
/// be the last one: it is released where user data may be dropped safely.
pub(crate) struct NodeJob<I: Send + Sync + 'static> {
    run: Option<Arc<Run<I>>>,
    node: usize,
}

impl<I: Send + Sync + 'static, S> Job<S> for NodeJob<I> {
    fn run(mut self, _state: &mut S, ledger: &Ledger<'_>) -> Ended {
        let Some(run) = self.run.take() else {
            ledger.count(&Ended::Cancelled);
            return Ended::Cancelled;
        };
        let ended = run.execute(self.node, ledger);
        ledger.drop_user("a graph run", run);
        ended
    }

    fn abort(mut self, why: Abort, ledger: &Ledger<'_>) -> Ended {
        let ended = match why {
            Abort::Expired => Ended::Expired,
            Abort::Cancelled => Ended::Cancelled,
        };
        ledger.count(&ended);
        if let Some(run) = self.run.take() {
            run.aborted(self.node, why);
            ledger.drop_user("a graph run", run);
        }
        ended
    }
}

impl<I: Send + Sync + 'static> Drop for NodeJob<I> {
    fn drop(&mut self) {
        // Only a job neither run nor aborted: refused, or a pool torn down
        // abnormally. No node is left without an outcome; nothing is let
        // out of a drop.
        if let Some(run) = self.run.take() {
            let node = self.node;
            let _ = panics::catch(move || run.dropped(node));
        }
    }
}
