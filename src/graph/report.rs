//! What a run tells its caller: each node's outcome and timings, the run's
//! own verdict, and the handle that waits for them.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::guard::Answer;
use crate::pool::SubmitError;

use super::builder::Node;
use super::run::{Core, Resolved, RunObj};

/// Why a node has no value of its own.
#[derive(Debug, Clone, thiserror::Error)]
pub enum NodeError {
    /// The body returned an error.
    #[error("{0}")]
    Failed(Arc<dyn std::error::Error + Send + Sync>),
    /// The body panicked (the message); the worker carried on.
    #[error("panicked: {0}")]
    Panicked(String),
    /// No value within the node's timeout of its becoming ready.
    #[error("no value within {0:?} of being ready")]
    TimedOut(Duration),
    /// The pool refused the node's job.
    #[error("refused by the pool: {0}")]
    Refused(SubmitError),
    /// The pool cancelled the node's job before it started (`shutdown_now`).
    #[error("cancelled by the pool before it started")]
    PoolCancelled,
    /// The node's circuit breaker is open; the body was not run.
    #[error("circuit open: retry in {retry_after:?}")]
    BreakerOpen {
        /// When the breaker will let a probe through.
        retry_after: Duration,
    },
    /// An input (or an `after` prerequisite) ended without a value.
    #[error("input {input} has no value")]
    InputMissing {
        /// The input's name.
        input: Arc<str>,
    },
    /// A bug in facepool (an input's value missing or of the wrong type).
    #[error("internal error: {0}")]
    Internal(&'static str),
}

impl NodeError {
    /// The body's own error as an `E`, if it returned one of that type.
    pub fn downcast_ref<E: std::error::Error + 'static>(&self) -> Option<&E> {
        match self {
            Self::Failed(e) => e.downcast_ref::<E>(),
            _ => None,
        }
    }
}

/// How one node of a run ended. Every node of a run ends exactly once.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The body returned a value.
    Done,
    /// The node's default stands in for its value, for this reason.
    Degraded(NodeError),
    /// The node has no value, for this reason (a required node's failure
    /// fails the run).
    Failed(NodeError),
    /// Never run: this input (or prerequisite) ended without a value.
    Skipped {
        /// The input's name.
        input: Arc<str>,
    },
    /// Never started: the run failed, passed its deadline or was cancelled
    /// first.
    Cancelled,
    /// Was running when the run failed, passed its deadline or was
    /// cancelled; the body finishes on its worker and its result is dropped.
    Abandoned,
}

impl Outcome {
    /// Whether the node has a value (its own or its default).
    pub fn has_value(&self) -> bool {
        matches!(self, Self::Done | Self::Degraded(_))
    }

    /// The error, for `Degraded` and `Failed`.
    pub fn error(&self) -> Option<&NodeError> {
        match self {
            Self::Degraded(e) | Self::Failed(e) => Some(e),
            _ => None,
        }
    }

    fn label(&self) -> String {
        match self {
            Self::Done => "done".to_owned(),
            Self::Degraded(e) => format!("default ({e})"),
            Self::Failed(e) => format!("failed ({e})"),
            Self::Skipped { input } => format!("skipped ({input} has no value)"),
            Self::Cancelled => "cancelled".to_owned(),
            Self::Abandoned => "abandoned".to_owned(),
        }
    }
}

/// Why a run failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RunError {
    /// A required node ended without a value.
    #[error("node {node} failed: {error}")]
    NodeFailed {
        /// The node's name.
        node: Arc<str>,
        /// Why it has no value.
        error: NodeError,
    },
    /// The run's deadline (this long after its start) passed first.
    #[error("the run's deadline ({0:?} after its start) passed")]
    DeadlineExceeded(Duration),
    /// The run was cancelled (its handle was dropped or cancelled).
    #[error("the run was cancelled")]
    Cancelled,
}

/// One node's outcome and times, relative to the run's start.
#[derive(Debug, Clone)]
pub struct NodeReport {
    /// The node's name.
    pub name: Arc<str>,
    /// How it ended.
    pub outcome: Outcome,
    /// When it was ready and submitted to the pool (never, if it was not).
    pub queued: Option<Duration>,
    /// When a worker started its body (never, if it did not).
    pub started: Option<Duration>,
    /// When its outcome was decided (for a timed-out or abandoned node,
    /// before its body returned).
    pub finished: Duration,
    /// Body attempts started (more than one with a retry).
    pub attempts: u32,
}

/// The result of one run: the verdict, every node's outcome and times, and
/// the values (read through the nodes' handles). It keeps the values alive,
/// not the run's input nor the pool.
pub struct Report {
    core: Arc<Core>,
    status: Result<(), RunError>,
    elapsed: Duration,
    nodes: Vec<NodeReport>,
}

impl std::fmt::Debug for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Report")
            .field("status", &self.status)
            .field("elapsed", &self.elapsed)
            .field("nodes", &self.nodes)
            .finish()
    }
}

impl Report {
    fn new(core: Arc<Core>) -> Self {
        let Resolved { status, elapsed } = core.resolved();
        let nodes = (0..core.meta.names.len()).map(|i| core.node_report(i)).collect();
        Self {
            core,
            status,
            elapsed,
            nodes,
        }
    }

    /// `Ok` if every required node has a value.
    pub fn result(&self) -> Result<(), &RunError> {
        self.status.as_ref().map(|_| ())
    }

    /// Whether every required node has a value.
    pub fn is_ok(&self) -> bool {
        self.status.is_ok()
    }

    /// From the run's start to its end (all nodes ended, or its failure).
    pub fn elapsed(&self) -> Duration {
        self.elapsed
    }

    /// Every node, in declaration order.
    pub fn nodes(&self) -> &[NodeReport] {
        &self.nodes
    }

    fn index<T>(&self, node: &Node<T>) -> Option<usize> {
        (node.graph == self.core.meta.id && node.index < self.nodes.len()).then_some(node.index)
    }

    /// The node's value (its own or its default); `None` if it has none or
    /// the handle is from another graph.
    pub fn value<T: 'static>(&self, node: &Node<T>) -> Option<&T> {
        let i = self.index(node)?;
        self.core.value(i)?.downcast_ref::<T>()
    }

    /// The node's value, marked degraded (with the reason) if it is the
    /// node's default.
    pub fn answer<T: 'static>(&self, node: &Node<T>) -> Option<Answer<&T>> {
        let v = self.value(node)?;
        Some(match &self.report(node)?.outcome {
            Outcome::Degraded(e) => Answer::Degraded {
                value: v,
                reason: e.to_string(),
            },
            _ => Answer::Fresh(v),
        })
    }

    /// The node's outcome.
    pub fn outcome<T>(&self, node: &Node<T>) -> Option<&Outcome> {
        self.report(node).map(|r| &r.outcome)
    }

    /// The node's outcome and times.
    pub fn report<T>(&self, node: &Node<T>) -> Option<&NodeReport> {
        self.nodes.get(self.index(node)?)
    }

    /// The chain of nodes that decided the run's length: the node that
    /// ended last, the predecessor of it that ended last, and so on back to
    /// a root; listed from the root.
    pub fn critical_path(&self) -> Vec<usize> {
        let preds = &self.core.meta.preds;
        let last =
            |ids: &mut dyn Iterator<Item = usize>| ids.max_by_key(|&i| self.nodes.get(i).map(|n| n.finished));
        let mut path = Vec::new();
        let mut cur = last(&mut (0..self.nodes.len()));
        while let Some(i) = cur {
            path.push(i);
            cur = preds.get(i).and_then(|p| last(&mut p.iter().copied()));
        }
        path.reverse();
        path
    }
}

fn ms(d: Option<Duration>) -> String {
    d.map_or_else(|| "-".to_owned(), |d| format!("{:.1}", d.as_secs_f64() * 1e3))
}

/// A table: one row per node, times in milliseconds from the run's start.
impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.status {
            Ok(()) => writeln!(f, "run ok in {}", ms(Some(self.elapsed)))?,
            Err(e) => writeln!(f, "run failed in {}: {e}", ms(Some(self.elapsed)))?,
        }
        writeln!(
            f,
            "{:<16} {:>8} {:>8} {:>8}  outcome",
            "node", "queued", "started", "ended"
        )?;
        for n in &self.nodes {
            writeln!(
                f,
                "{:<16} {:>8} {:>8} {:>8}  {}",
                n.name,
                ms(n.queued),
                ms(n.started),
                ms(Some(n.finished)),
                n.outcome.label()
            )?;
        }
        Ok(())
    }
}

/// The handle to a run. Wait with [`join`](Self::join) or
/// [`join_timeout`](Self::join_timeout), or `.await` it (it is a `Future`;
/// no async runtime is needed). Dropping it before the run has ended
/// cancels the run: nodes not started never run.
#[must_use = "dropping a RunHandle cancels the run"]
pub struct RunHandle {
    run: Arc<dyn RunObj>,
    /// Dropping it lets the run go on (`detach`).
    detached: bool,
}

impl std::fmt::Debug for RunHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunHandle")
            .field("finished", &self.is_finished())
            .finish()
    }
}

impl RunHandle {
    pub(crate) fn new(run: Arc<dyn RunObj>) -> Self {
        Self { run, detached: false }
    }

    /// Waits for the run to end.
    ///
    /// Called on one of the pool's own workers it holds that worker, as
    /// any blocking wait there does; await the handle instead.
    pub fn join(self) -> Report {
        self.run.core().done.join_until(None);
        Report::new(self.run.core().clone())
    }

    /// Waits at most `timeout`; on time-out the handle is given back.
    pub fn join_timeout(self, timeout: Duration) -> Result<Report, Self> {
        let core = self.run.core();
        core.done.join_until(Some(Instant::now() + timeout));
        if core.is_resolved() {
            Ok(Report::new(self.run.core().clone()))
        } else {
            Err(self)
        }
    }

    /// Whether the run has ended.
    pub fn is_finished(&self) -> bool {
        self.run.core().is_resolved()
    }

    /// Cancels the run: nodes not started never run, running ones are
    /// abandoned. True if this call ended the run; false if it had already
    /// ended or failed.
    pub fn cancel(&self) -> bool {
        self.run.clone().cancel()
    }

    /// Lets the run go on with nobody waiting for it.
    pub fn detach(mut self) {
        self.detached = true;
    }
}

impl Drop for RunHandle {
    fn drop(&mut self) {
        if !self.detached && !self.run.core().is_resolved() {
            self.run.clone().cancel();
        }
    }
}

impl Unpin for RunHandle {}

impl Future for RunHandle {
    type Output = Report;

    /// Ready with the report once the run has ended (and again with the
    /// same report if polled after that).
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Report> {
        let core = self.run.core();
        if !core.is_resolved() && core.done.poll_take(cx).is_pending() {
            return Poll::Pending;
        }
        Poll::Ready(Report::new(self.run.core().clone()))
    }
}
