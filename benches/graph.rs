//! The graph scheduler's cost per node over a bare pool submit, on no-op
//! nodes, by graph shape. A plain timing loop (no criterion): each shape is
//! run as a graph and as the same jobs on the bare pool (`execute`, a
//! finishing job submitting the next where the shape has edges), in
//! alternating rounds; the medians are printed.
//!
//! `cargo bench --no-default-features --bench graph` (add `-- --json` for
//! one JSON object, `-- --secs 0.5` for the time per shape and system).

use std::sync::Arc;
use std::time::{Duration, Instant};

// Only the latch is used here, not the channel pool.
#[allow(dead_code)]
#[path = "../examples/common/baseline.rs"]
mod baseline;
use baseline::Latch;

use facepool::graph::{Graph, Node};
use facepool::pool::Pool;

const THREADS: usize = 2;
const ROUNDS: usize = 5;

/// A shape: the graph, and the same work on the bare pool.
struct Shape {
    name: &'static str,
    nodes: usize,
    graph: Graph<()>,
    bare: fn(&Pool, usize),
}

/// `n` independent no-op nodes.
fn independent(n: usize) -> Graph<()> {
    let mut g = Graph::<()>::builder();
    for i in 0..n {
        let _ = g.node(&format!("n{i}"), |_| Ok(()));
    }
    g.build().expect("acyclic")
}

fn bare_independent(pool: &Pool, n: usize) {
    let latch = Latch::new(n);
    for _ in 0..n {
        let l = latch.clone();
        pool.execute(move |_| l.count_down()).expect("room");
    }
    latch.wait();
}

/// A chain of `n` nodes, each the next one's input.
fn chain(n: usize) -> Graph<()> {
    let mut g = Graph::<()>::builder();
    let mut last = g.node("n0", |_| Ok(0u64));
    for i in 1..n {
        last = g.node1(&format!("n{i}"), &last, |_, v| Ok(v + 1));
    }
    g.build().expect("acyclic")
}

/// Each job submits the next from its worker, as the graph does.
fn bare_chain(pool: &Pool, n: usize) {
    fn step(pool: Pool, left: usize, latch: Arc<Latch>) {
        if left == 0 {
            latch.count_down();
            return;
        }
        let p = pool.clone();
        pool.execute(move |_| step(p, left - 1, latch)).expect("room");
    }
    let latch = Latch::new(1);
    step(pool.clone(), n, latch.clone());
    latch.wait();
}

/// One root, `n - 2` nodes fed by it, one node fed by all of them.
fn fan(n: usize) -> Graph<()> {
    let mut g = Graph::<()>::builder();
    let root = g.node("root", |_| Ok(1u64));
    let mid: Vec<Node<u64>> = (0..n - 2)
        .map(|i| g.node1(&format!("m{i}"), &root, |_, v| Ok(v + 1)))
        .collect();
    let _ = g.node_all("sink", &mid, |_, vs| Ok(vs.iter().copied().sum::<u64>()));
    g.build().expect("acyclic")
}

fn bare_fan(pool: &Pool, n: usize) {
    let latch = Latch::new(1);
    let p = pool.clone();
    let l = latch.clone();
    pool.execute(move |_| {
        let sink = Arc::new(std::sync::atomic::AtomicUsize::new(n - 2));
        for _ in 0..n - 2 {
            let (p2, s, l2) = (p.clone(), sink.clone(), l.clone());
            p.execute(move |_| {
                if s.fetch_sub(1, std::sync::atomic::Ordering::AcqRel) == 1 {
                    p2.execute(move |_| l2.count_down()).expect("room");
                }
            })
            .expect("room");
        }
    })
    .expect("room");
    latch.wait();
}

/// Runs `f` repeatedly for about `secs`; the mean time per call.
fn time(secs: f64, mut f: impl FnMut()) -> Duration {
    for _ in 0..20 {
        f();
    }
    let budget = Duration::from_secs_f64(secs);
    let t = Instant::now();
    let mut n = 0u32;
    while t.elapsed() < budget {
        f();
        n += 1;
    }
    t.elapsed() / n.max(1)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let json = args.iter().any(|a| a == "--json");
    let secs = args
        .iter()
        .position(|a| a == "--secs")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(0.4);
    let pool = Pool::builder()
        .capacity(THREADS)
        .prestart(true)
        .queue_capacity(4096)
        .build()
        .expect("pool");
    let shapes = [
        Shape {
            name: "independent_64",
            nodes: 64,
            graph: independent(64),
            bare: bare_independent,
        },
        Shape {
            name: "chain_64",
            nodes: 64,
            graph: chain(64),
            bare: bare_chain,
        },
        Shape {
            name: "fan_1_62_1",
            nodes: 64,
            graph: fan(64),
            bare: bare_fan,
        },
    ];
    let mut out = Vec::new();
    if !json {
        println!("{THREADS} workers, no-op nodes, median of {ROUNDS} rounds of {secs} s per system");
        println!(
            "{:<16} {:>14} {:>14} {:>16}",
            "shape", "graph ns/node", "bare ns/node", "overhead ns/node"
        );
    }
    for s in &shapes {
        let (mut graph, mut bare) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            let g = time(secs, || {
                let r = s.graph.run(&pool, ()).join();
                assert!(r.is_ok());
            });
            let b = time(secs, || (s.bare)(&pool, s.nodes));
            graph.push(g.as_secs_f64() * 1e9 / s.nodes as f64);
            bare.push(b.as_secs_f64() * 1e9 / s.nodes as f64);
        }
        let (g, b) = (median(&mut graph), median(&mut bare));
        if !json {
            println!("{:<16} {:>14.0} {:>14.0} {:>16.0}", s.name, g, b, g - b);
        }
        out.push(format!(
            "\"{}\":{{\"graph_ns_per_node\":{g:.0},\"bare_ns_per_node\":{b:.0},\"overhead_ns_per_node\":{:.0}}}",
            s.name,
            g - b
        ));
    }
    if json {
        println!("{{{}}}", out.join(","));
    }
}
