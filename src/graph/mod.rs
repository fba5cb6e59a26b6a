//! Dependency-graph scheduling on a [`Pool`]: nodes declared with their
//! inputs, each submitted to the pool by the end of its last input.
//!
//! A [`GraphBuilder`] declares nodes as closures over the run's input and
//! their inputs' values, wired by typed [`Node`] handles (a wrong input type
//! is a compile error); [`build`](GraphBuilder::build) rejects a handle
//! from another builder, a duplicate name and a cycle. A built [`Graph`] is
//! reusable: each [`run`](Graph::run) takes its own input and returns a
//! [`RunHandle`] to join or `.await`, which gives a [`Report`]: the run's
//! verdict, every node's [`Outcome`] and times, and the values.
//!
//! # Scheduling
//! The roots are submitted when the run starts; after that the thread that
//! ends a node (a worker, or the timer) counts down its dependents and
//! submits those whose last input it was. No thread polls, and no pool
//! worker waits for another node: independent nodes run side by side and a
//! run takes about its critical path. Nodes are submitted under the pool's
//! admission rules: the roots as `submit` does (blocking on a full pool
//! unless it is `nonblocking`, or when `run` is called on one of the pool's
//! own workers), every later node without blocking. A refused node fails
//! with [`NodeError::Refused`]: size the pool's queue for the graph's width.
//!
//! # Outcomes
//! Every node of a run ends exactly once: [`Outcome::Done`] (its value),
//! `Degraded` (its default stands in, and why), `Failed` (why), `Skipped`
//! (an input has no value), `Cancelled` (never started: the run failed or
//! was cancelled first) or `Abandoned` (running when the run failed; its
//! result is dropped). A panic in a body is that node's error. The run
//! fails when a required node ends without a value, when its deadline
//! passes, or when its handle is dropped or cancelled; then every node not
//! yet started is cancelled and never runs, and the handle resolves at once.
//!
//! # Guards per node ([`GraphBuilder::set`])
//! - `timeout(d)`: the node must have its value within `d` of becoming
//!   ready (its last input ended), time queued in the pool included. A node
//!   still queued then never runs (the pool's job deadline drops it); a
//!   running one cannot be stopped: it finishes on its worker and its late
//!   value is dropped. The timer thread ends the node `TimedOut` on time;
//!   nothing waits for the body. A value that arrives after the timeout is
//!   late even if the timer has not fired yet.
//! - `or_default(v)`: `v` stands in whenever the node has no value of its
//!   own (error, panic, timeout, refusal, breaker open, an input without a
//!   value); the node ends `Degraded` and the run goes on.
//! - `optional()`: the node's failure does not fail the run; its dependents
//!   are skipped (or take their own default).
//! - `retry(Retry, transient)` and `breaker(CircuitBreaker)`: the
//!   [`guard`](crate::guard) wrappers around the body, breaker outermost.
//!   Attempts and backoffs run on the node's worker, inside its timeout.
//!
//! Timeouts and run deadlines are kept by one timer thread for the process
//! (`facepool-timer`, shared with the front door's deadlines), started by the first run that needs it and
//! asleep until the earliest entry is due. Should it fail to start, a late
//! value is still found late when it returns, and a queued job still
//! expires in the pool.
//!
//! ```
//! use std::time::Duration;
//! use facepool::graph::{Graph, Outcome};
//! use facepool::pool::Pool;
//!
//! let pool = Pool::builder().capacity(4).build().unwrap();
//! let mut g = Graph::<u32>::builder();
//! let a = g.node("a", |x| Ok(x + 1));
//! let b = g.node("b", |x| Ok(x * 2));
//! let sum = g.node2("sum", &a, &b, |_, a, b| Ok(a + b));
//! let slow = g.node1("slow", &sum, |_, s| {
//!     std::thread::sleep(Duration::from_millis(200));
//!     Ok(*s)
//! });
//! g.set(&slow).timeout(Duration::from_millis(10)).or_default(0);
//! let graph = g.build().unwrap();
//!
//! for x in [1, 2] {
//!     let report = graph.run(&pool, x).join();
//!     assert!(report.is_ok());
//!     assert_eq!(report.value(&sum), Some(&(3 * x + 1)));
//!     assert_eq!(report.value(&slow), Some(&0));
//!     assert!(matches!(report.outcome(&slow), Some(Outcome::Degraded(_))));
//! }
//! ```

mod builder;
mod report;
mod run;

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::pool::Pool;

pub use self::builder::{BoxError, GraphBuilder, GraphError, Node, NodeSettings};
pub use self::report::{NodeError, NodeReport, Outcome, Report, RunError, RunHandle};

/// A built graph: reusable, cheap to clone, run on any pool.
pub struct Graph<I = ()> {
    spec: Arc<builder::Spec<I>>,
}

impl<I> Clone for Graph<I> {
    fn clone(&self) -> Self {
        Self {
            spec: self.spec.clone(),
        }
    }
}

impl<I> std::fmt::Debug for Graph<I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Graph")
            .field("nodes", &self.spec.meta.names)
            .finish()
    }
}

/// Options of one run.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// The run fails if it has not ended by then (instead of the graph's
    /// own deadline, if it has one).
    pub deadline: Option<Instant>,
}

impl RunOptions {
    /// A run that must end before `deadline`.
    pub fn deadline(deadline: Instant) -> Self {
        Self {
            deadline: Some(deadline),
        }
    }

    /// A run that must end within `d` from now (no deadline if `d` is too
    /// far to represent).
    pub fn within(d: Duration) -> Self {
        Self {
            deadline: Instant::now().checked_add(d),
        }
    }
}

impl<I: Send + Sync + 'static> Graph<I> {
    /// A builder for a graph whose runs take an `I`.
    pub fn builder() -> GraphBuilder<I> {
        GraphBuilder::new()
    }

    /// Starts a run on `pool` with `input` and returns once its roots are
    /// submitted (a blocking pool that is full makes this wait, as
    /// `submit` does; see the module's notes on admission).
    pub fn run<S: 'static>(&self, pool: &Pool<S>, input: I) -> RunHandle {
        self.run_with(pool, input, RunOptions::default())
    }

    /// Like [`run`](Self::run), with options (a deadline).
    pub fn run_with<S: 'static>(&self, pool: &Pool<S>, input: I, opts: RunOptions) -> RunHandle {
        RunHandle::new(run::start(&self.spec, pool, input, opts.deadline))
    }

    /// The number of nodes.
    pub fn len(&self) -> usize {
        self.spec.meta.names.len()
    }

    /// Whether the graph has no node.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The nodes' names, in declaration order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.spec.meta.names.iter().map(|n| &**n)
    }
}
