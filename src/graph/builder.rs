//! Declaring a graph: typed node handles, per-node settings, and the
//! build-time checks (unknown nodes, duplicate names, cycles).

use std::any::Any;
use std::collections::HashSet;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::guard::{CircuitBreaker, Retry};

use super::report::NodeError;
use super::run::Inputs;

/// The error a node body returns: anything that converts into a boxed
/// error (`?` on any `std::error::Error`, `"text".into()`, a `String`).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A node's value, type-erased (its handle knows the type).
pub(crate) type Value = Box<dyn Any + Send + Sync>;

/// A node body, type-erased: the run input and the node's inputs in, a
/// value or the body's error out.
pub(crate) type Body<I> = Box<dyn Fn(&I, &Inputs<'_>) -> Result<Value, NodeError> + Send + Sync>;

type Transient = Box<dyn Fn(&NodeError) -> bool + Send + Sync>;

/// Builders get distinct ids, so a handle from another builder is caught.
static NEXT_GRAPH: AtomicU64 = AtomicU64::new(1);

/// A typed handle to a node of one graph builder: a node that produces a
/// `T`. Copy it freely; it is only an index and the builder's id.
pub struct Node<T> {
    pub(crate) graph: u64,
    pub(crate) index: usize,
    _t: PhantomData<fn() -> T>,
}

impl<T> Clone for Node<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Node<T> {}

impl<T> std::fmt::Debug for Node<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("graph", &self.graph)
            .field("index", &self.index)
            .finish()
    }
}

impl<T> Node<T> {
    /// The node's position in its graph (the order of declaration), as in
    /// [`Report::nodes`](super::Report::nodes).
    pub fn index(&self) -> usize {
        self.index
    }
}

/// Why [`GraphBuilder::build`] refused a graph.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GraphError {
    /// A handle from another builder was used: the node it names is missing
    /// from this graph.
    #[error("node {node:?} refers to a node that is not in this graph (a handle from another builder)")]
    UnknownNode {
        /// The node (or setting) that used the foreign handle.
        node: String,
    },
    /// Two nodes have the same name.
    #[error("two nodes are named {0:?}")]
    DuplicateName(String),
    /// The dependencies form a cycle (names in dependency order, the first
    /// repeated at the end).
    #[error("dependency cycle: {}", .0.join(" -> "))]
    Cycle(Vec<String>),
}

/// Per-node guards, fixed at build time.
pub(crate) struct Guards {
    /// Time allowed from the moment the node is ready (queued) to its value.
    pub(crate) timeout: Option<Duration>,
    /// The stand-in value when the node has no value of its own.
    pub(crate) default: Option<Box<dyn Fn() -> Value + Send + Sync>>,
    /// The node's failure does not fail the run.
    pub(crate) optional: bool,
    pub(crate) retry: Option<(Retry, Transient)>,
    pub(crate) breaker: Option<CircuitBreaker>,
}

impl Guards {
    fn new() -> Self {
        Self {
            timeout: None,
            default: None,
            optional: false,
            retry: None,
            breaker: None,
        }
    }
}

/// A node as declared.
struct Decl<I> {
    name: Arc<str>,
    /// Data inputs, in the body's order (a node may appear twice).
    inputs: Vec<usize>,
    /// Ordering-only predecessors (`after`).
    after: Vec<usize>,
    body: Body<I>,
    guards: Guards,
}

/// The shape of a built graph and its guards; shared by all its runs.
pub(crate) struct Meta {
    pub(crate) id: u64,
    pub(crate) names: Vec<Arc<str>>,
    pub(crate) inputs: Vec<Vec<usize>>,
    /// Distinct predecessors (data inputs and `after`), per node.
    pub(crate) preds: Vec<Vec<usize>>,
    /// Distinct dependents, per node.
    pub(crate) dependents: Vec<Vec<usize>>,
    /// Nodes with no predecessor, in declaration order.
    pub(crate) roots: Vec<usize>,
    pub(crate) guards: Vec<Guards>,
    /// The default deadline of a run, from its start.
    pub(crate) deadline: Option<Duration>,
}

/// A built graph's shape and bodies.
pub(crate) struct Spec<I> {
    pub(crate) meta: Arc<Meta>,
    pub(crate) bodies: Vec<Body<I>>,
}

/// Declares the nodes of a [`Graph`](super::Graph) whose runs take an `I`.
///
/// Each node is a closure over the run's input and its inputs' values,
/// declared with the handles of those inputs; a wrong input type is a
/// compile error. [`build`](Self::build) checks the rest.
///
/// ```compile_fail
/// use facepool::graph::Graph;
/// let mut g = Graph::<()>::builder();
/// let a = g.node("a", |_| Ok(1u32));
/// // `a` gives a u32: a body that takes a String does not compile.
/// let b = g.node1("b", &a, |_, s: &String| Ok(s.len()));
/// ```
pub struct GraphBuilder<I> {
    id: u64,
    decls: Vec<Decl<I>>,
    deadline: Option<Duration>,
    /// The first wiring error, reported by `build`.
    error: Option<GraphError>,
}

impl<I> std::fmt::Debug for GraphBuilder<I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GraphBuilder")
            .field("nodes", &self.decls.len())
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

impl<I: Send + Sync + 'static> Default for GraphBuilder<I> {
    fn default() -> Self {
        Self::new()
    }
}

fn wrap<T: Send + Sync + 'static>(r: Result<T, BoxError>) -> Result<Value, NodeError> {
    r.map(|v| Box::new(v) as Value)
        .map_err(|e| NodeError::Failed(Arc::from(e)))
}

impl<I: Send + Sync + 'static> GraphBuilder<I> {
    /// An empty builder.
    pub fn new() -> Self {
        Self {
            id: NEXT_GRAPH.fetch_add(1, Ordering::Relaxed),
            decls: Vec::new(),
            deadline: None,
            error: None,
        }
    }

    fn note(&mut self, e: GraphError) {
        self.error.get_or_insert(e);
    }

    /// The index of `n` if it belongs to this builder; else the error is
    /// noted for `build` (and the returned index is never used).
    fn own<A>(&mut self, user: &str, n: &Node<A>) -> Option<usize> {
        if n.graph == self.id && n.index < self.decls.len() {
            Some(n.index)
        } else {
            self.note(GraphError::UnknownNode {
                node: user.to_owned(),
            });
            None
        }
    }

    fn add<T>(&mut self, name: &str, inputs: Vec<Option<usize>>, body: Body<I>) -> Node<T> {
        let index = self.decls.len();
        self.decls.push(Decl {
            name: Arc::from(name),
            inputs: inputs.into_iter().map(|i| i.unwrap_or(usize::MAX)).collect(),
            after: Vec::new(),
            body,
            guards: Guards::new(),
        });
        Node {
            graph: self.id,
            index,
            _t: PhantomData,
        }
    }

    /// A node with no inputs but the run's input.
    pub fn node<T, F>(&mut self, name: &str, f: F) -> Node<T>
    where
        T: Send + Sync + 'static,
        F: Fn(&I) -> Result<T, BoxError> + Send + Sync + 'static,
    {
        self.add(name, Vec::new(), Box::new(move |i, _| wrap(f(i))))
    }

    /// A node of one input.
    pub fn node1<A, T, F>(&mut self, name: &str, a: &Node<A>, f: F) -> Node<T>
    where
        A: Send + Sync + 'static,
        T: Send + Sync + 'static,
        F: Fn(&I, &A) -> Result<T, BoxError> + Send + Sync + 'static,
    {
        let inputs = vec![self.own(name, a)];
        self.add(name, inputs, Box::new(move |i, ins| wrap(f(i, ins.get(0)?))))
    }

    /// A node of two inputs.
    pub fn node2<A, B, T, F>(&mut self, name: &str, a: &Node<A>, b: &Node<B>, f: F) -> Node<T>
    where
        A: Send + Sync + 'static,
        B: Send + Sync + 'static,
        T: Send + Sync + 'static,
        F: Fn(&I, &A, &B) -> Result<T, BoxError> + Send + Sync + 'static,
    {
        let inputs = vec![self.own(name, a), self.own(name, b)];
        self.add(
            name,
            inputs,
            Box::new(move |i, ins| wrap(f(i, ins.get(0)?, ins.get(1)?))),
        )
    }

    /// A node of three inputs.
    pub fn node3<A, B, C, T, F>(&mut self, name: &str, a: &Node<A>, b: &Node<B>, c: &Node<C>, f: F) -> Node<T>
    where
        A: Send + Sync + 'static,
        B: Send + Sync + 'static,
        C: Send + Sync + 'static,
        T: Send + Sync + 'static,
        F: Fn(&I, &A, &B, &C) -> Result<T, BoxError> + Send + Sync + 'static,
    {
        let inputs = vec![self.own(name, a), self.own(name, b), self.own(name, c)];
        self.add(
            name,
            inputs,
            Box::new(move |i, ins| wrap(f(i, ins.get(0)?, ins.get(1)?, ins.get(2)?))),
        )
    }

    /// A node of any number of inputs of one type (a fan-in), given to the
    /// body in the order listed.
    pub fn node_all<A, T, F>(&mut self, name: &str, inputs: &[Node<A>], f: F) -> Node<T>
    where
        A: Send + Sync + 'static,
        T: Send + Sync + 'static,
        F: Fn(&I, &[&A]) -> Result<T, BoxError> + Send + Sync + 'static,
    {
        let idx = inputs.iter().map(|n| self.own(name, n)).collect();
        let n = inputs.len();
        self.add(
            name,
            idx,
            Box::new(move |i, ins| {
                let values = (0..n).map(|k| ins.get::<A>(k)).collect::<Result<Vec<_>, _>>()?;
                wrap(f(i, &values))
            }),
        )
    }

    /// Makes `node` wait for `prereq` to end with a value, without taking
    /// its value (an ordering-only edge). The only way to declare a cycle.
    pub fn after<T, U>(&mut self, node: &Node<T>, prereq: &Node<U>) -> &mut Self {
        let name = self.name_of(node.index);
        if let (Some(n), Some(p)) = (self.own(&name, node), self.own(&name, prereq)) {
            self.decls[n].after.push(p);
        }
        self
    }

    fn name_of(&self, index: usize) -> String {
        self.decls
            .get(index)
            .map_or_else(|| format!("#{index}"), |d| d.name.to_string())
    }

    /// The settings of `node`: timeout, default, optional, retry, breaker.
    pub fn set<T>(&mut self, node: &Node<T>) -> NodeSettings<'_, I, T> {
        let name = self.name_of(node.index);
        let index = self.own(&name, node);
        NodeSettings {
            builder: self,
            index,
            _t: PhantomData,
        }
    }

    /// A deadline for every run, from its start (a run may set its own with
    /// [`RunOptions`](super::RunOptions)).
    pub fn deadline(&mut self, d: Duration) -> &mut Self {
        self.deadline = Some(d);
        self
    }

    /// Checks the graph and freezes it: every handle from this builder, no
    /// two nodes of one name, no cycle.
    pub fn build(self) -> Result<super::Graph<I>, GraphError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        let mut seen = HashSet::new();
        for d in &self.decls {
            if !seen.insert(d.name.clone()) {
                return Err(GraphError::DuplicateName(d.name.to_string()));
            }
        }
        let n = self.decls.len();
        let preds: Vec<Vec<usize>> = self
            .decls
            .iter()
            .map(|d| {
                let mut p: Vec<usize> = d.inputs.iter().chain(&d.after).copied().collect();
                p.sort_unstable();
                p.dedup();
                p
            })
            .collect();
        let mut dependents = vec![Vec::new(); n];
        for (i, ps) in preds.iter().enumerate() {
            for &p in ps {
                dependents[p].push(i);
            }
        }
        let names: Vec<Arc<str>> = self.decls.iter().map(|d| d.name.clone()).collect();
        if let Some(cycle) = find_cycle(&preds, &dependents) {
            return Err(GraphError::Cycle(
                cycle.into_iter().map(|i| names[i].to_string()).collect(),
            ));
        }
        let roots = (0..n).filter(|&i| preds[i].is_empty()).collect();
        let mut inputs = Vec::with_capacity(n);
        let mut guards = Vec::with_capacity(n);
        let mut bodies = Vec::with_capacity(n);
        for d in self.decls {
            inputs.push(d.inputs);
            guards.push(d.guards);
            bodies.push(d.body);
        }
        let meta = Meta {
            id: self.id,
            names,
            inputs,
            preds,
            dependents,
            roots,
            guards,
            deadline: self.deadline,
        };
        Ok(super::Graph {
            spec: Arc::new(Spec {
                meta: Arc::new(meta),
                bodies,
            }),
        })
    }
}

/// A cycle, if there is one: Kahn's order leaves the nodes on or behind a
/// cycle; walking predecessors among them must come back to one.
fn find_cycle(preds: &[Vec<usize>], dependents: &[Vec<usize>]) -> Option<Vec<usize>> {
    let n = preds.len();
    let mut waiting: Vec<usize> = preds.iter().map(Vec::len).collect();
    let mut ready: Vec<usize> = (0..n).filter(|&i| waiting[i] == 0).collect();
    let mut done = vec![false; n];
    while let Some(i) = ready.pop() {
        done[i] = true;
        for &d in &dependents[i] {
            waiting[d] -= 1;
            if waiting[d] == 0 {
                ready.push(d);
            }
        }
    }
    let start = (0..n).find(|&i| !done[i])?;
    // Every node left has a predecessor left: walk back until one repeats.
    let mut pos = vec![usize::MAX; n];
    let mut walk = Vec::new();
    let mut cur = start;
    while pos[cur] == usize::MAX {
        pos[cur] = walk.len();
        walk.push(cur);
        cur = preds[cur].iter().copied().find(|&p| !done[p])?;
    }
    let mut cycle: Vec<usize> = walk[pos[cur]..].to_vec();
    // The walk went against the edges; name the cycle along them.
    cycle.reverse();
    cycle.push(cycle[0]);
    Some(cycle)
}

/// The settings of one node, from [`GraphBuilder::set`].
pub struct NodeSettings<'g, I, T> {
    builder: &'g mut GraphBuilder<I>,
    /// `None` for a foreign handle (already noted for `build`).
    index: Option<usize>,
    _t: PhantomData<fn() -> T>,
}

impl<I, T> std::fmt::Debug for NodeSettings<'_, I, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeSettings")
            .field("index", &self.index)
            .finish()
    }
}

impl<I, T: Send + Sync + 'static> NodeSettings<'_, I, T> {
    fn guards(&mut self) -> Option<&mut Guards> {
        let i = self.index?;
        self.builder.decls.get_mut(i).map(|d| &mut d.guards)
    }

    /// The node must have its value within `d` of becoming ready (its last
    /// input ended), time in the pool's queue included. A node still queued
    /// then never runs; one running is left to finish on its worker and its
    /// late value is dropped. Either way the node ends `TimedOut`.
    pub fn timeout(mut self, d: Duration) -> Self {
        if let Some(g) = self.guards() {
            g.timeout = Some(d);
        }
        self
    }

    /// When the node has no value of its own (its body failed, panicked,
    /// timed out, was refused, or an input has no value), `value` stands in
    /// and the node ends `Degraded` with the reason: its dependents run and
    /// the run does not fail because of it. Not used when the run itself is
    /// cancelled.
    pub fn or_default(mut self, value: T) -> Self
    where
        T: Clone,
    {
        if let Some(g) = self.guards() {
            g.default = Some(Box::new(move || Box::new(value.clone()) as Value));
        }
        self
    }

    /// The node's failure does not fail the run. Its dependents have no
    /// input then: they are skipped (or take their own default), and a
    /// required node skipped that way fails the run.
    pub fn optional(mut self) -> Self {
        if let Some(g) = self.guards() {
            g.optional = true;
        }
        self
    }

    /// Retries the body by `retry` for errors `transient` accepts. The
    /// attempts and their backoffs run on the node's worker, inside the
    /// node's timeout; no attempt starts after the node has ended.
    pub fn retry(
        mut self,
        retry: Retry,
        transient: impl Fn(&NodeError) -> bool + Send + Sync + 'static,
    ) -> Self {
        if let Some(g) = self.guards() {
            g.retry = Some((retry, Box::new(transient)));
        }
        self
    }

    /// Runs the node (all its attempts) through `breaker`, which counts
    /// every error, a late value included, as a failure; an open breaker
    /// fails the node with [`NodeError::BreakerOpen`] without running it.
    pub fn breaker(mut self, breaker: CircuitBreaker) -> Self {
        if let Some(g) = self.guards() {
            g.breaker = Some(breaker);
        }
        self
    }
}
