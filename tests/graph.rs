//! Behaviour of the graph scheduler, one test per promise. No timing
//! assertions: gates, counters and rendezvous decide; bounded waits are
//! only guards against hangs.

use crate::common;

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use common::{wait_until, Gate, Rng};
use facepool::graph::{
    BoxError, Graph, GraphError, Node, NodeError, Outcome, Report, RunError, RunHandle, RunOptions,
};
use facepool::guard::{BreakerConfig, CircuitBreaker, Jitter, Retry, RetryPolicy};
use facepool::pool::{Pool, SubmitError};

const MS: Duration = Duration::from_millis(1);

fn pool(capacity: usize) -> Pool {
    Pool::builder()
        .capacity(capacity)
        .queue_capacity(1024)
        .build()
        .unwrap()
}

/// Waits until every job the pool accepted has ended.
fn idle(pool: &Pool) {
    wait_until("pool idle", || pool.stats().in_flight() == 0);
}

/// Panics are expected in some tests; keep the output readable.
fn quiet_planned_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let p = info.payload();
            let msg = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            if !msg.contains("planned") {
                default_hook(info);
            }
        }));
    });
}

/// A logical clock: each call returns a later tick.
#[derive(Default)]
struct Ticks(AtomicU64);

impl Ticks {
    fn tick(&self) -> u64 {
        self.0.fetch_add(1, Ordering::SeqCst) + 1
    }
}

fn outcome_of<T>(r: &Report, n: &Node<T>) -> Outcome {
    r.outcome(n).cloned().expect("node of this graph")
}

#[test]
fn no_node_starts_before_its_inputs() {
    let pool = pool(4);
    let ticks = Arc::new(Ticks::default());
    // (start, end) ticks of each node's body.
    let seen: Arc<Mutex<Vec<(u64, u64)>>> = Arc::new(Mutex::new(vec![(0, 0); 6]));
    let mut g = Graph::<u64>::builder();
    let rec = |i: usize| {
        let (ticks, seen) = (ticks.clone(), seen.clone());
        move |f: &dyn Fn() -> u64| {
            let start = ticks.tick();
            std::thread::yield_now();
            let v = f();
            seen.lock().unwrap()[i] = (start, ticks.tick());
            v
        }
    };
    let (r0, r1, r2, r3, r4, r5) = (rec(0), rec(1), rec(2), rec(3), rec(4), rec(5));
    let a = g.node("a", move |x| Ok(r0(&|| *x)));
    let b = g.node1("b", &a, move |_, a| Ok(r1(&|| a + 1)));
    let c = g.node1("c", &a, move |_, a| Ok(r2(&|| a * 10)));
    let d = g.node2("d", &b, &c, move |_, b, c| Ok(r3(&|| b + c)));
    let e = g.node1("e", &d, move |_, d| Ok(r4(&|| d * 2)));
    let x = g.node("x", move |x| Ok(r5(&|| x + 100)));
    let graph = g.build().unwrap();
    let edges = [(0, 1), (0, 2), (1, 3), (2, 3), (3, 4)];
    for input in 0..50u64 {
        let r = graph.run(&pool, input).join();
        assert!(r.is_ok(), "{r}");
        assert_eq!(r.value(&e), Some(&(2 * (input + 1 + input * 10))));
        assert_eq!(r.value(&x), Some(&(input + 100)));
        let seen = seen.lock().unwrap().clone();
        for (p, n) in edges {
            assert!(
                seen[p].1 < seen[n].0,
                "node {n} started before input {p} ended: {seen:?}"
            );
            let (pr, nr) = (&r.nodes()[p], &r.nodes()[n]);
            assert!(pr.finished <= nr.queued.unwrap(), "{r}");
            assert!(nr.queued <= nr.started);
        }
        // The critical path ends at the node that ended last and walks
        // back along edges to a root: a-b-d-e, a-c-d-e, or x alone.
        let path = r.critical_path();
        let last = r.nodes().iter().map(|n| n.finished).max();
        assert_eq!(path.last().map(|&i| r.nodes()[i].finished), last, "{path:?}");
        assert!(path.windows(2).all(|w| edges.contains(&(w[0], w[1]))), "{path:?}");
        assert!(matches!(path.first(), Some(0 | 5)), "{path:?}");
    }
    common::pool_balanced(&pool.stats());
}

/// Arrives at a rendezvous of `n` and waits (boundedly) for the others.
fn meet(count: &AtomicUsize, n: usize) {
    count.fetch_add(1, Ordering::SeqCst);
    wait_until("the other nodes inside at once", || {
        count.load(Ordering::SeqCst) >= n
    });
}

#[test]
fn independent_nodes_run_at_the_same_time() {
    let pool = pool(3);
    let inside = Arc::new(AtomicUsize::new(0));
    let mut g = Graph::<()>::builder();
    let mk = |k: u32| {
        let inside = inside.clone();
        move |_: &()| -> Result<u32, BoxError> {
            // Each waits until all three are inside: only a parallel run
            // gets through.
            meet(&inside, 3);
            Ok(k)
        }
    };
    let a = g.node("a", mk(1));
    let b = g.node("b", mk(2));
    let c = g.node("c", mk(3));
    let sum = g.node3("sum", &a, &b, &c, |_, a, b, c| Ok(a + b + c));
    let r = g.build().unwrap().run(&pool, ()).join();
    assert!(r.is_ok(), "{r}");
    assert_eq!(r.value(&sum), Some(&6));
}

#[test]
fn cycles_unknown_nodes_and_duplicate_names_are_refused_at_build() {
    let mut g = Graph::<()>::builder();
    let a = g.node("a", |_| Ok(1));
    let b = g.node1("b", &a, |_, a| Ok(a + 1));
    let c = g.node1("c", &b, |_, b| Ok(b + 1));
    g.after(&a, &c);
    match g.build() {
        Err(GraphError::Cycle(names)) => {
            assert_eq!(names.len(), 4, "{names:?}");
            assert_eq!(names.first(), names.last());
            for n in ["a", "b", "c"] {
                assert!(names.iter().any(|x| x == n), "{names:?}");
            }
        }
        other => panic!("expected a cycle, got {other:?}"),
    }

    let mut g = Graph::<()>::builder();
    let a = g.node("a", |_| Ok(1));
    g.after(&a, &a);
    assert_eq!(
        g.build().unwrap_err(),
        GraphError::Cycle(vec!["a".into(), "a".into()])
    );

    let mut other = Graph::<()>::builder();
    let foreign = other.node("foreign", |_| Ok(1u8));
    let mut g = Graph::<()>::builder();
    let a = g.node("a", |_| Ok(1u8));
    let _ = g.node2("uses_foreign", &a, &foreign, |_, a, f| Ok(a + f));
    assert_eq!(
        g.build().unwrap_err(),
        GraphError::UnknownNode {
            node: "uses_foreign".into()
        }
    );
    let mut g = Graph::<()>::builder();
    let _ = g.node("a", |_| Ok(1u8));
    let _ = g.set(&foreign).optional();
    assert!(matches!(g.build(), Err(GraphError::UnknownNode { .. })));

    let mut g = Graph::<()>::builder();
    let _ = g.node("same", |_| Ok(1));
    let _ = g.node("same", |_| Ok(2));
    assert_eq!(g.build().unwrap_err(), GraphError::DuplicateName("same".into()));

    // An acyclic graph with an ordering edge builds, and the edge holds.
    let mut g = Graph::<()>::builder();
    let order = Arc::new(Mutex::new(Vec::new()));
    let (o1, o2) = (order.clone(), order.clone());
    let first = g.node("first", move |_| {
        o1.lock().unwrap().push("first");
        Ok(())
    });
    let second = g.node("second", move |_| {
        o2.lock().unwrap().push("second");
        Ok(())
    });
    g.after(&second, &first);
    let r = g.build().unwrap().run(&pool(2), ()).join();
    assert!(r.is_ok() && r.value(&second).is_some(), "{r}");
    assert_eq!(*order.lock().unwrap(), ["first", "second"]);
}

/// A value whose drops are counted.
struct Counted(u32, Arc<AtomicU32>);

impl Clone for Counted {
    fn clone(&self) -> Self {
        Counted(self.0, self.1.clone())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.1.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn a_timeout_takes_the_default_and_drops_the_late_value() {
    let pool = pool(2);
    let gate = Gate::new();
    let drops = Arc::new(AtomicU32::new(0));
    let returned = Arc::new(AtomicU32::new(0));
    let mut g = Graph::<()>::builder();
    let (gt, dr, ret) = (gate.clone(), drops.clone(), returned.clone());
    let slow = g.node("slow", move |_| {
        gt.wait();
        ret.fetch_add(1, Ordering::SeqCst);
        Ok(Counted(99, dr.clone()))
    });
    let double = g.node1("double", &slow, |_, s| Ok(s.0 * 2));
    g.set(&slow)
        .timeout(20 * MS)
        .or_default(Counted(7, drops.clone()));
    let graph = g.build().unwrap();
    let r = graph.run(&pool, ()).join();
    assert!(r.is_ok(), "{r}");
    assert!(
        matches!(outcome_of(&r, &slow), Outcome::Degraded(NodeError::TimedOut(d)) if d == 20 * MS),
        "{r}"
    );
    assert_eq!(r.value(&slow).map(|c| c.0), Some(7));
    assert_eq!(r.value(&double), Some(&14));
    let answer = r.answer(&slow).unwrap();
    assert!(answer.is_degraded());
    assert_eq!(answer.value().0, 7);
    // The body was still running; its late value is dropped, not used.
    let before = drops.load(Ordering::SeqCst);
    gate.open();
    wait_until("late body returned", || returned.load(Ordering::SeqCst) == 1);
    wait_until("late value dropped", || {
        drops.load(Ordering::SeqCst) == before + 1
    });
    assert_eq!(r.value(&slow).map(|c| c.0), Some(7));
    idle(&pool);
    common::pool_balanced(&pool.stats());
}

#[test]
fn a_timeout_without_default_fails_the_run_and_a_queued_node_never_runs() {
    // One worker, held by `hold`: `queued` waits in the pool past its
    // timeout and never runs.
    let pool = pool(1);
    let gate = Gate::new();
    let ran = Arc::new(AtomicU32::new(0));
    let mut g = Graph::<()>::builder();
    let gt = gate.clone();
    let hold = g.node("hold", move |_| {
        gt.wait();
        Ok(1)
    });
    let r2 = ran.clone();
    let queued = g.node("queued", move |_| {
        r2.fetch_add(1, Ordering::SeqCst);
        Ok(2)
    });
    let after = g.node2("after", &hold, &queued, |_, a, b| Ok(a + b));
    g.set(&queued).timeout(20 * MS);
    let r = g.build().unwrap().run(&pool, ()).join();
    match r.result() {
        Err(RunError::NodeFailed { node, error }) => {
            assert_eq!(&**node, "queued");
            assert!(matches!(error, NodeError::TimedOut(_)), "{error:?}");
        }
        other => panic!("expected the run to fail, got {other:?}"),
    }
    assert!(matches!(
        outcome_of(&r, &queued),
        Outcome::Failed(NodeError::TimedOut(_))
    ));
    assert!(r.report(&queued).unwrap().started.is_none());
    assert!(matches!(outcome_of(&r, &hold), Outcome::Abandoned));
    assert!(matches!(outcome_of(&r, &after), Outcome::Cancelled));
    gate.open();
    idle(&pool);
    assert_eq!(ran.load(Ordering::SeqCst), 0);
    common::pool_balanced(&pool.stats());
}

#[test]
fn a_panic_is_the_nodes_error_with_its_default_or_the_runs_failure() {
    quiet_planned_panics();
    let pool = pool(2);
    for with_default in [true, false] {
        let mut g = Graph::<()>::builder();
        let boom = g.node("boom", |_| -> Result<u32, BoxError> { panic!("planned boom") });
        let next = g.node1("next", &boom, |_, b| Ok(b + 1));
        if with_default {
            let _ = g.set(&boom).or_default(41);
        }
        let r = g.build().unwrap().run(&pool, ()).join();
        let panicked = |e: &NodeError| matches!(e, NodeError::Panicked(m) if m == "planned boom");
        if with_default {
            assert!(r.is_ok(), "{r}");
            assert!(matches!(outcome_of(&r, &boom), Outcome::Degraded(ref e) if panicked(e)));
            assert_eq!(r.value(&next), Some(&42));
        } else {
            assert!(matches!(r.result(), Err(RunError::NodeFailed { error, .. }) if panicked(error)));
            assert!(matches!(outcome_of(&r, &boom), Outcome::Failed(ref e) if panicked(e)));
            assert!(matches!(outcome_of(&r, &next), Outcome::Cancelled));
            assert_eq!(r.value(&next), None);
        }
    }
    idle(&pool);
    // The pool counted both panics and its workers carried on.
    assert_eq!(pool.stats().panicked, 2);
    assert_eq!(pool.submit(|_| 5).unwrap().join(), Ok(5));
    common::pool_balanced(&pool.stats());
}

#[test]
fn an_optional_nodes_failure_does_not_fail_the_run() {
    let pool = pool(2);
    let ran = Arc::new(AtomicU32::new(0));
    let mut g = Graph::<()>::builder();
    let a = g.node("a", |_| Ok(10));
    let enrich = g.node("enrich", |_| -> Result<u32, BoxError> {
        Err("enrichment down".into())
    });
    let r2 = ran.clone();
    let log = g.node1("log", &enrich, move |_, e| {
        r2.fetch_add(1, Ordering::SeqCst);
        Ok(*e)
    });
    let extra = g.node1("extra", &enrich, |_, e| Ok(e + 1));
    let total = g.node2("total", &a, &extra, |_, a, x| Ok(a + x));
    g.set(&enrich).optional();
    g.set(&log).optional();
    g.set(&extra).or_default(0);
    let graph = g.build().unwrap();
    let r = graph.run(&pool, ()).join();
    assert!(r.is_ok(), "{r}");
    assert!(
        matches!(outcome_of(&r, &enrich), Outcome::Failed(ref e) if e.to_string() == "enrichment down"),
        "{r}"
    );
    assert!(matches!(outcome_of(&r, &log), Outcome::Skipped { ref input } if &**input == "enrich"));
    assert!(matches!(
        outcome_of(&r, &extra),
        Outcome::Degraded(NodeError::InputMissing { .. })
    ));
    assert_eq!(r.value(&total), Some(&10));
    assert_eq!(ran.load(Ordering::SeqCst), 0);

    // A required node that needs the optional one's value fails the run.
    let mut g = Graph::<()>::builder();
    let enrich = g.node("enrich", |_| -> Result<u32, BoxError> { Err("down".into()) });
    let needs = g.node1("needs", &enrich, |_, e| Ok(*e));
    g.set(&enrich).optional();
    let r = g.build().unwrap().run(&pool, ()).join();
    assert!(matches!(outcome_of(&r, &needs), Outcome::Skipped { .. }));
    assert!(matches!(
        r.result(),
        Err(RunError::NodeFailed { node, error: NodeError::InputMissing { .. } }) if &**node == "needs"
    ));
}

#[test]
fn a_failure_cancels_the_nodes_not_started() {
    // Two workers: `hold` takes one until the gate opens, `fail` the other.
    // The rest wait in the queue (or for their inputs) when `fail` fails.
    let pool = pool(2);
    let gate = Gate::new();
    let ran = Arc::new(AtomicU32::new(0));
    let mut g = Graph::<()>::builder();
    let gt = gate.clone();
    let hold = g.node("hold", move |_| {
        gt.wait();
        Ok(1u32)
    });
    let fail = g.node("fail", |_| -> Result<u32, BoxError> { Err("no".into()) });
    let mut queued = Vec::new();
    for k in 0..3 {
        let r = ran.clone();
        queued.push(g.node(&format!("q{k}"), move |_| {
            r.fetch_add(1, Ordering::SeqCst);
            Ok(k)
        }));
    }
    let r3 = ran.clone();
    let dependent = g.node2("dependent", &hold, &fail, move |_, a, b| {
        r3.fetch_add(1, Ordering::SeqCst);
        Ok(a + b)
    });
    let r = g.build().unwrap().run(&pool, ()).join();
    assert!(
        matches!(r.result(), Err(RunError::NodeFailed { node, .. }) if &**node == "fail"),
        "{r}"
    );
    for q in &queued {
        assert!(matches!(outcome_of(&r, q), Outcome::Cancelled), "{r}");
    }
    assert!(matches!(outcome_of(&r, &dependent), Outcome::Cancelled));
    assert!(matches!(outcome_of(&r, &hold), Outcome::Abandoned));
    gate.open();
    idle(&pool);
    assert_eq!(ran.load(Ordering::SeqCst), 0, "a cancelled node ran");
    // The abandoned node's value was never taken.
    assert_eq!(r.value(&hold), None);
    common::pool_balanced(&pool.stats());
}

/// A graph on one worker: `hold` runs (counted in `ran` as it starts, then
/// held until the gate opens), `queued` waits in the pool, `dependent`
/// waits for `hold`; those two count 100 if they run.
fn held_graph(gate: &Gate, ran: &Arc<AtomicU32>) -> Graph<()> {
    let mut g = Graph::<()>::builder();
    let (gt, r1) = (gate.clone(), ran.clone());
    let hold = g.node("hold", move |_| {
        r1.fetch_add(1, Ordering::SeqCst);
        gt.wait();
        Ok(1u32)
    });
    let r2 = ran.clone();
    let _queued = g.node("queued", move |_| {
        r2.fetch_add(100, Ordering::SeqCst);
        Ok(2u32)
    });
    let r3 = ran.clone();
    let _dependent = g.node1("dependent", &hold, move |_, h| {
        r3.fetch_add(100, Ordering::SeqCst);
        Ok(h + 1)
    });
    g.build().unwrap()
}

#[test]
fn dropping_the_handle_cancels_the_nodes_not_started() {
    let pool = pool(1);
    let (gate, ran) = (Gate::new(), Arc::new(AtomicU32::new(0)));
    let graph = held_graph(&gate, &ran);
    let h = graph.run(&pool, ());
    wait_until("hold running", || ran.load(Ordering::SeqCst) == 1);
    drop(h);
    gate.open();
    idle(&pool);
    // Only `hold` ran.
    assert_eq!(ran.load(Ordering::SeqCst), 1);
    common::pool_balanced(&pool.stats());

    // The same through `cancel`, with the report.
    let (gate, ran) = (Gate::new(), Arc::new(AtomicU32::new(0)));
    let graph = held_graph(&gate, &ran);
    let h = graph.run(&pool, ());
    wait_until("hold running", || ran.load(Ordering::SeqCst) == 1);
    assert!(h.cancel());
    assert!(!h.cancel());
    let r = h.join();
    assert!(matches!(r.result(), Err(RunError::Cancelled)));
    let outcomes: Vec<_> = r.nodes().iter().map(|n| n.outcome.clone()).collect();
    assert!(matches!(
        outcomes[..],
        [Outcome::Abandoned, Outcome::Cancelled, Outcome::Cancelled]
    ));
    gate.open();
    idle(&pool);
    assert_eq!(ran.load(Ordering::SeqCst), 1);
}

#[test]
fn a_built_graph_is_reused_with_new_inputs() {
    let pool = pool(4);
    let mut g = Graph::<Vec<u64>>::builder();
    let sum = g.node("sum", |v| Ok(v.iter().sum::<u64>()));
    let max = g.node("max", |v| v.iter().max().copied().ok_or_else(|| "empty".into()));
    let spread = g.node2("spread", &sum, &max, |v, s, m| Ok(m * v.len() as u64 - s));
    let graph = g.build().unwrap();
    // Many runs at once, each with its own input.
    let handles: Vec<_> = (1..=100u64)
        .map(|n| (n, graph.run(&pool, (1..=n).collect())))
        .collect();
    for (n, h) in handles {
        let r = h.join();
        assert!(r.is_ok(), "{r}");
        assert_eq!(r.value(&sum), Some(&(n * (n + 1) / 2)));
        assert_eq!(r.value(&spread), Some(&(n * n - n * (n + 1) / 2)));
    }
    // A failing input fails that run only.
    let r = graph.run(&pool, Vec::new()).join();
    assert!(matches!(r.result(), Err(RunError::NodeFailed { node, .. }) if &**node == "max"));
    assert!(graph.run(&pool, vec![3]).join().is_ok());
    // A handle from another graph reads nothing.
    let other = Graph::<()>::builder().node("x", |_| Ok(1u64));
    assert_eq!(r.value(&other), None);
}

struct Unpark(std::thread::Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

fn block_on<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

#[test]
fn a_run_handle_is_a_future() {
    let pool = pool(2);
    let gate = Gate::new();
    let mut g = Graph::<u32>::builder();
    let gt = gate.clone();
    let a = g.node("a", move |x| {
        gt.wait();
        Ok(x + 1)
    });
    let b = g.node1("b", &a, |_, a| Ok(a * 2));
    let graph = g.build().unwrap();
    let h = graph.run(&pool, 20);
    let opener = std::thread::spawn(move || gate.open());
    let r = block_on(h);
    opener.join().unwrap();
    assert_eq!(r.value(&b), Some(&42));
    // Already ended: ready at once.
    assert_eq!(block_on(graph.run(&pool, 1)).value(&b), Some(&4));
}

#[test]
fn a_refused_submit_fails_the_node_with_the_pools_error() {
    let pool = Pool::builder()
        .capacity(1)
        .queue_capacity(0)
        .nonblocking(true)
        .build()
        .unwrap();
    let gate = Gate::new();
    let gt = gate.clone();
    pool.execute(move |_| gt.wait()).unwrap();
    wait_until("worker busy", || pool.stats().running == 1);
    let mut g = Graph::<()>::builder();
    let a = g.node("a", |_| Ok(1));
    let b = g.node("b", |_| Ok(2));
    g.set(&b).or_default(20);
    let graph = g.build().unwrap();
    let r = graph.run(&pool, ()).join();
    assert!(matches!(
        r.result(),
        Err(RunError::NodeFailed {
            error: NodeError::Refused(SubmitError::Overloaded),
            ..
        })
    ));
    assert!(matches!(
        outcome_of(&r, &a),
        Outcome::Failed(NodeError::Refused(SubmitError::Overloaded))
    ));
    gate.open();
    idle(&pool);
    common::pool_balanced(&pool.stats());
    // A free pool of one worker and no queue runs a chain: a finishing node
    // has left its place when it submits the next.
    let mut g = Graph::<()>::builder();
    let mut last = g.node("n0", |_| Ok(0u32));
    for k in 1..20 {
        last = g.node1(&format!("n{k}"), &last, |_, v| Ok(v + 1));
    }
    let r = g.build().unwrap().run(&pool, ()).join();
    assert!(r.is_ok(), "{r}");
    assert_eq!(r.value(&last), Some(&19));
    let _ = (a, b);
}

#[test]
fn the_run_deadline_fails_the_run() {
    let pool = pool(2);
    let gate = Gate::new();
    let mut g = Graph::<()>::builder();
    let gt = gate.clone();
    let slow = g.node("slow", move |_| {
        gt.wait();
        Ok(1)
    });
    let next = g.node1("next", &slow, |_, s| Ok(s + 1));
    let fast = g.node("fast", |_| Ok(5));
    let graph = g.build().unwrap();
    let r = graph.run_with(&pool, (), RunOptions::within(20 * MS)).join();
    assert!(matches!(r.result(), Err(RunError::DeadlineExceeded(_))), "{r}");
    assert!(matches!(outcome_of(&r, &slow), Outcome::Abandoned));
    assert!(matches!(outcome_of(&r, &next), Outcome::Cancelled));
    assert!(matches!(outcome_of(&r, &fast), Outcome::Done));
    gate.open();
    idle(&pool);
    // The graph's own deadline applies when the run sets none.
    let mut g = Graph::<()>::builder();
    let gate = Gate::new();
    let gt = gate.clone();
    let _ = g.node("slow", move |_| {
        gt.wait();
        Ok(1)
    });
    g.deadline(20 * MS);
    let r = g.build().unwrap().run(&pool, ()).join();
    assert!(matches!(r.result(), Err(RunError::DeadlineExceeded(d)) if *d == 20 * MS));
    gate.open();
    idle(&pool);
    common::pool_balanced(&pool.stats());
}

#[derive(Debug)]
struct Flaky;

impl std::fmt::Display for Flaky {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("flaky")
    }
}

impl std::error::Error for Flaky {}

#[test]
fn retry_and_breaker_wrap_the_body() {
    let pool = pool(2);
    let calls = Arc::new(AtomicU32::new(0));
    let no_sleep = Retry::new(RetryPolicy {
        max_attempts: 5,
        base: MS,
        max_backoff: MS,
        multiplier: 2.0,
        jitter: Jitter::None,
    })
    .with_sleeper(Arc::new(|_| {}));
    let mut g = Graph::<()>::builder();
    let c = calls.clone();
    let flaky = g.node("flaky", move |_| {
        if c.fetch_add(1, Ordering::SeqCst) < 2 {
            Err(Flaky.into())
        } else {
            Ok("third time")
        }
    });
    g.set(&flaky)
        .retry(no_sleep.clone(), |e| e.downcast_ref::<Flaky>().is_some());
    let r = g.build().unwrap().run(&pool, ()).join();
    assert!(r.is_ok(), "{r}");
    assert_eq!(r.value(&flaky), Some(&"third time"));
    assert_eq!(r.report(&flaky).unwrap().attempts, 3);

    // A permanent error is not retried.
    let mut g = Graph::<()>::builder();
    let bad = g.node("bad", |_| -> Result<u8, BoxError> { Err("bad request".into()) });
    g.set(&bad)
        .retry(no_sleep, |e| e.downcast_ref::<Flaky>().is_some());
    let r = g.build().unwrap().run(&pool, ()).join();
    assert_eq!(r.report(&bad).unwrap().attempts, 1);

    // The breaker opens on the first failure; the next run does not call.
    let breaker = CircuitBreaker::new(BreakerConfig {
        min_calls: 1,
        failure_rate: 1.0,
        cool_down: Duration::from_secs(600),
        ..BreakerConfig::default()
    })
    .unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    let mut g = Graph::<()>::builder();
    let c = calls.clone();
    let down = g.node("down", move |_| -> Result<u32, BoxError> {
        c.fetch_add(1, Ordering::SeqCst);
        Err("down".into())
    });
    g.set(&down).breaker(breaker).or_default(0);
    let graph = g.build().unwrap();
    let r = graph.run(&pool, ()).join();
    assert!(matches!(
        outcome_of(&r, &down),
        Outcome::Degraded(NodeError::Failed(_))
    ));
    let r = graph.run(&pool, ()).join();
    assert!(r.is_ok());
    assert!(matches!(
        outcome_of(&r, &down),
        Outcome::Degraded(NodeError::BreakerOpen { .. })
    ));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[test]
fn a_pool_shutdown_cancels_queued_nodes() {
    let pool = pool(1);
    let gate = Gate::new();
    let ran = Arc::new(AtomicU32::new(0));
    let graph = held_graph(&gate, &ran);
    let h = graph.run(&pool, ());
    wait_until("hold running", || ran.load(Ordering::SeqCst) == 1);
    let report = pool.shutdown_now(MS);
    assert_eq!(report.still_running, 1);
    let r = h.join();
    assert!(matches!(
        r.result(),
        Err(RunError::NodeFailed { error: NodeError::PoolCancelled, node }) if &**node == "queued"
    ));
    gate.open();
    idle(&pool);
    assert_eq!(ran.load(Ordering::SeqCst), 1);
    common::pool_balanced(&pool.stats());
}

// ---- stress ----

/// What a stress node does.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Kind {
    Ok,
    Err,
    Panic,
    /// Sleeps past a short timeout (or not: the timer races the body).
    Slow,
}

/// One node's record in the stress test, beside the report.
#[derive(Default)]
struct Probe {
    ran: AtomicU32,
    start: AtomicU64,
    end: AtomicU64,
}

struct Planned {
    graph: Graph<u64>,
    nodes: Vec<Node<u64>>,
    preds: Vec<Vec<usize>>,
    kinds: Vec<Kind>,
    defaults: Vec<Option<u64>>,
    optional: Vec<bool>,
    probes: Arc<Vec<Probe>>,
}

const NODES: usize = 50;

fn plan(rng: &mut Rng, ticks: &Arc<Ticks>) -> Planned {
    let probes: Arc<Vec<Probe>> = Arc::new((0..NODES).map(|_| Probe::default()).collect());
    let mut g = Graph::<u64>::builder();
    let mut nodes: Vec<Node<u64>> = Vec::with_capacity(NODES);
    let (mut preds, mut kinds, mut defaults, mut optional) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..NODES {
        let k = if i == 0 { 0 } else { rng.below(4) as usize };
        let mut ps: Vec<usize> = (0..k).map(|_| rng.below(i as u64) as usize).collect();
        ps.sort_unstable();
        ps.dedup();
        let kind = match rng.below(1000) {
            0..=4 => Kind::Err,
            5..=6 => Kind::Panic,
            7..=16 => Kind::Slow,
            _ => Kind::Ok,
        };
        let (probes, ticks) = (probes.clone(), ticks.clone());
        let inputs: Vec<Node<u64>> = ps.iter().map(|&p| nodes[p]).collect();
        let n = g.node_all(&format!("n{i}"), &inputs, move |x, ins| {
            let p = &probes[i];
            p.ran.fetch_add(1, Ordering::SeqCst);
            p.start.store(ticks.tick(), Ordering::SeqCst);
            let v = x + i as u64 + ins.iter().copied().sum::<u64>();
            let r = match kind {
                Kind::Ok => Ok(v),
                Kind::Err => Err("planned error".into()),
                Kind::Panic => panic!("planned panic"),
                Kind::Slow => {
                    std::thread::sleep(Duration::from_micros(100));
                    Ok(v)
                }
            };
            p.end.store(ticks.tick(), Ordering::SeqCst);
            r
        });
        let mut default = None;
        {
            let mut s = g.set(&n);
            if kind == Kind::Slow {
                s = s.timeout(Duration::from_micros(rng.below(150)));
            }
            if rng.chance(150) {
                default = Some(1_000_000 + i as u64);
                s = s.or_default(1_000_000 + i as u64);
            }
            let opt = rng.chance(100);
            if opt {
                s = s.optional();
            }
            optional.push(opt);
            let _ = s;
        }
        nodes.push(n);
        preds.push(ps);
        kinds.push(kind);
        defaults.push(default);
    }
    Planned {
        graph: g.build().unwrap(),
        nodes,
        preds,
        kinds,
        defaults,
        optional,
        probes,
    }
}

/// Checks one run's report against its plan; returns the nodes that must
/// never run (cancelled or skipped), to be checked again once all is idle.
fn check(p: &Planned, input: u64, r: &Report, how: Ending) -> Vec<usize> {
    assert_eq!(r.nodes().len(), NODES);
    let mut never = Vec::new();
    for (i, n) in r.nodes().iter().enumerate() {
        let probe = &p.probes[i];
        let ran = probe.ran.load(Ordering::SeqCst);
        assert!(ran <= 1, "node {i} ran {ran} times");
        if let Some(e) = n.outcome.error() {
            assert!(!matches!(e, NodeError::Internal(_)), "node {i}: {e}");
        }
        match &n.outcome {
            Outcome::Done => {
                assert_eq!(ran, 1, "node {i} done without running");
                assert!(n.started.is_some());
                let want = input
                    + i as u64
                    + p.preds[i]
                        .iter()
                        .map(|&q| *r.value(&p.nodes[q]).unwrap())
                        .sum::<u64>();
                assert_eq!(r.value(&p.nodes[i]), Some(&want), "node {i}");
                assert!(
                    matches!(p.kinds[i], Kind::Ok | Kind::Slow),
                    "node {i}: {:?}",
                    p.kinds[i]
                );
            }
            Outcome::Degraded(_) => {
                assert_eq!(r.value(&p.nodes[i]).copied(), p.defaults[i], "node {i}");
            }
            Outcome::Failed(e) => {
                assert!(p.defaults[i].is_none());
                assert_eq!(r.value(&p.nodes[i]), None);
                match e {
                    NodeError::Failed(_) => assert_eq!(p.kinds[i], Kind::Err),
                    NodeError::Panicked(_) => assert_eq!(p.kinds[i], Kind::Panic),
                    NodeError::TimedOut(_) => assert_eq!(p.kinds[i], Kind::Slow),
                    NodeError::Refused(_) | NodeError::PoolCancelled => {}
                    other => panic!("node {i}: {other:?}"),
                }
            }
            Outcome::Skipped { .. } => {
                assert!(p.defaults[i].is_none());
                assert!(n.started.is_none() && n.queued.is_none());
                never.push(i);
            }
            Outcome::Cancelled => {
                assert!(n.started.is_none());
                assert!(r.result().is_err(), "cancelled in a run that succeeded");
                never.push(i);
            }
            Outcome::Abandoned => {
                assert!(n.started.is_some());
                assert!(r.result().is_err());
            }
        }
        // No node was queued before its inputs ended with a value.
        if let Some(q) = n.queued {
            for &pr in &p.preds[i] {
                let pn = &r.nodes()[pr];
                assert!(pn.outcome.has_value(), "node {i} queued without input {pr}");
                assert!(pn.finished <= q, "node {i} queued before input {pr} ended");
            }
        }
        // A body started only after its inputs' bodies returned.
        if matches!(n.outcome, Outcome::Done) {
            for &pr in &p.preds[i] {
                if matches!(r.nodes()[pr].outcome, Outcome::Done) {
                    let (end, start) = (
                        p.probes[pr].end.load(Ordering::SeqCst),
                        probe.start.load(Ordering::SeqCst),
                    );
                    assert!(
                        end < start,
                        "node {i} started at {start}, input {pr} ended at {end}"
                    );
                }
            }
        }
    }
    // The verdict: ok exactly when every required node has a value.
    let lost_required = |i: usize| !p.optional[i] && !r.nodes()[i].outcome.has_value();
    match r.result() {
        Ok(()) => assert!((0..NODES).all(|i| !lost_required(i))),
        Err(RunError::NodeFailed { node, .. }) => {
            let i = r.nodes().iter().position(|n| n.name == *node).unwrap();
            assert!(lost_required(i), "node {i} failed the run");
        }
        Err(RunError::Cancelled) => assert_eq!(how, Ending::Cancelled),
        Err(RunError::DeadlineExceeded(_)) => assert_eq!(how, Ending::Deadline),
    }
    never
}

/// How a stress run was started.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Ending {
    Normal,
    Deadline,
    Cancelled,
}

#[test]
fn stress_ten_thousand_random_graphs() {
    quiet_planned_panics();
    const GRAPHS: usize = 10_000;
    const IN_FLIGHT: usize = 32;
    let big = Pool::builder().capacity(4).queue_capacity(4096).build().unwrap();
    // A small non-blocking pool, where later nodes are sometimes refused.
    let tight = Pool::builder()
        .capacity(2)
        .queue_capacity(8)
        .nonblocking(true)
        .build()
        .unwrap();
    let ticks = Arc::new(Ticks::default());
    // A failing seed can be replayed (GRAPH_STRESS_SEED=n).
    let seed = std::env::var("GRAPH_STRESS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x6a9f);
    let mut rng = Rng::new(seed);
    let mut flight: VecDeque<(Planned, u64, RunHandle, Ending)> = VecDeque::new();
    let mut never_run: Vec<(Arc<Vec<Probe>>, Vec<usize>)> = Vec::new();
    let (mut ok, mut failed, mut outcomes) = (0usize, 0usize, [0usize; 6]);
    let mut finish = |(p, input, h, how): (Planned, u64, RunHandle, Ending)| {
        let r = h.join();
        let never = check(&p, input, &r, how);
        if r.is_ok() {
            ok += 1;
        } else {
            failed += 1;
        }
        for n in r.nodes() {
            let k = match n.outcome {
                Outcome::Done => 0,
                Outcome::Degraded(_) => 1,
                Outcome::Failed(_) => 2,
                Outcome::Skipped { .. } => 3,
                Outcome::Cancelled => 4,
                Outcome::Abandoned => 5,
            };
            outcomes[k] += 1;
        }
        never_run.push((p.probes.clone(), never));
    };
    for _ in 0..GRAPHS {
        let p = plan(&mut rng, &ticks);
        let input = rng.below(1000);
        let pool = if rng.chance(100) { &tight } else { &big };
        let mut how = Ending::Normal;
        let h = if rng.chance(10) {
            how = Ending::Deadline;
            p.graph.run_with(
                pool,
                input,
                RunOptions::within(Duration::from_micros(rng.below(300))),
            )
        } else {
            p.graph.run(pool, input)
        };
        if rng.chance(20) && h.cancel() {
            how = Ending::Cancelled;
        }
        flight.push_back((p, input, h, how));
        if flight.len() >= IN_FLIGHT {
            if let Some(f) = flight.pop_front() {
                finish(f);
            }
        }
    }
    while let Some(f) = flight.pop_front() {
        finish(f);
    }
    idle(&big);
    idle(&tight);
    // Nodes reported cancelled or skipped never ran, not even late.
    for (probes, never) in &never_run {
        for &i in never {
            assert_eq!(
                probes[i].ran.load(Ordering::SeqCst),
                0,
                "node {i} ran after its end"
            );
        }
    }
    common::pool_balanced(&big.stats());
    common::pool_balanced(&tight.stats());
    assert_eq!(outcomes.iter().sum::<usize>(), GRAPHS * NODES);
    println!("seed {seed}: runs ok {ok}, failed {failed}; outcomes done/default/failed/skipped/cancelled/abandoned {outcomes:?}");
    assert!(ok > 0 && failed > 0);
    assert!(outcomes.iter().all(|&n| n > 0), "{outcomes:?}");
}
