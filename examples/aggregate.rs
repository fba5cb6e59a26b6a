//! The aggregation scenario: a page built from nine simulated RPCs, run
//! group by group and as a self-driven graph, on the same pool, in one run.
//!
//! ```text
//! cargo run --release --example aggregate -- --json
//! ```
//!
//! The calls (latencies drawn per round, in ms; the same draws for both):
//!
//! | node | needs | latency |
//! |---|---|---|
//! | profile (A) | - | 40-80 |
//! | orders (B) | - | 80-140 |
//! | catalog (C) | - | 20-60 |
//! | recs (F) | - | 30-60, one round in three 200 (times out at 100: empty default) |
//! | ads (H) | - | 100-150 |
//! | pricing (D) | A, B | 20-40 |
//! | inventory (I) | C | 120-180 |
//! | summary (E) | C, D | 30-60 |
//! | page (G) | E, F, H, I | 10-20 |
//!
//! Grouped: the calls are run level by level (each level's calls at once on
//! the pool, then wait for the whole level), which is what code that awaits
//! a batch of calls and then the next batch does. It waits for the slowest
//! call of each level. The graph starts each call when its own inputs are
//! in, so it takes about the critical path: the longest chain of latencies.

use std::time::{Duration, Instant};

use clap::Parser;
use facepool::graph::{Graph, Node, Outcome, RunHandle};
use facepool::pool::{JobOptions, Pool};

#[derive(Parser)]
#[command(about = "group-by-group scheduling against the self-driven graph, same pool, same latencies")]
struct Args {
    /// Rounds (one run of each per round, with the same latencies).
    #[arg(long, default_value_t = 9)]
    rounds: usize,
    /// Seed of the latency draws.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Print one JSON object instead of tables.
    #[arg(long)]
    json: bool,
}

const A: usize = 0;
const B: usize = 1;
const C: usize = 2;
const F: usize = 3;
const H: usize = 4;
const D: usize = 5;
const I: usize = 6;
const E: usize = 7;
const G: usize = 8;
const NAMES: [&str; 9] = [
    "profile",
    "orders",
    "catalog",
    "recs",
    "ads",
    "pricing",
    "inventory",
    "summary",
    "page",
];
/// Inputs of each call, by index.
const NEEDS: [&[usize]; 9] = [&[], &[], &[], &[], &[], &[A, B], &[C], &[C, D], &[E, F, H, I]];
/// Levels for the grouped run: a call's level is one more than its
/// deepest input's.
const LEVELS: [&[usize]; 4] = [&[A, B, C, F, H], &[D, I], &[E], &[G]];
const RECS_TIMEOUT: Duration = Duration::from_millis(100);

/// One round's latencies, in ms (the graph's run input).
#[derive(Clone, Copy, Debug)]
struct Lat([u64; 9]);

impl Lat {
    fn draw(rng: &mut fastrand::Rng, round: usize) -> Self {
        let mut l = [0; 9];
        l[A] = rng.u64(40..=80);
        l[B] = rng.u64(80..=140);
        l[C] = rng.u64(20..=60);
        l[F] = if round % 3 == 2 { 200 } else { rng.u64(30..=60) };
        l[H] = rng.u64(100..=150);
        l[D] = rng.u64(20..=40);
        l[I] = rng.u64(120..=180);
        l[E] = rng.u64(30..=60);
        l[G] = rng.u64(10..=20);
        Self(l)
    }

    /// The longest chain of latencies (recs counted at most its timeout).
    fn critical_path_ms(&self) -> u64 {
        let mut finish = [0u64; 9];
        for lvl in LEVELS {
            for &n in lvl {
                let own = if n == F {
                    self.0[n].min(RECS_TIMEOUT.as_millis() as u64)
                } else {
                    self.0[n]
                };
                finish[n] = NEEDS[n].iter().map(|&p| finish[p]).max().unwrap_or(0) + own;
            }
        }
        finish[G]
    }
}

/// A simulated RPC: sleeps its latency, answers a number.
fn rpc(lat: &Lat, n: usize, inputs: &[u64]) -> u64 {
    std::thread::sleep(Duration::from_millis(lat.0[n]));
    inputs.iter().sum::<u64>() + n as u64 + 1
}

/// The graph, built once and run every round.
fn build() -> (Graph<Lat>, Node<u64>, Node<u64>) {
    let mut g = Graph::<Lat>::builder();
    let a = g.node(NAMES[A], |l| Ok(rpc(l, A, &[])));
    let b = g.node(NAMES[B], |l| Ok(rpc(l, B, &[])));
    let c = g.node(NAMES[C], |l| Ok(rpc(l, C, &[])));
    let f = g.node(NAMES[F], |l| Ok(rpc(l, F, &[])));
    let h = g.node(NAMES[H], |l| Ok(rpc(l, H, &[])));
    let d = g.node2(NAMES[D], &a, &b, |l, a, b| Ok(rpc(l, D, &[*a, *b])));
    let i = g.node1(NAMES[I], &c, |l, c| Ok(rpc(l, I, &[*c])));
    let e = g.node2(NAMES[E], &c, &d, |l, c, d| Ok(rpc(l, E, &[*c, *d])));
    let page = g.node_all(NAMES[G], &[e, f, h, i], |l, ins| {
        let v: Vec<u64> = ins.iter().map(|x| **x).collect();
        Ok(rpc(l, G, &v))
    });
    g.set(&f).timeout(RECS_TIMEOUT).or_default(0);
    (g.build().expect("the graph is acyclic"), page, f)
}

/// Level by level: each level's calls at once on the pool, then wait for
/// all of them. Returns the page's value and whether recs timed out.
fn grouped(pool: &Pool, lat: Lat) -> (u64, bool) {
    let mut values = [0u64; 9];
    let mut timed_out = false;
    for lvl in LEVELS {
        let started = Instant::now();
        let handles: Vec<_> = lvl
            .iter()
            .map(|&n| {
                let inputs: Vec<u64> = NEEDS[n].iter().map(|&p| values[p]).collect();
                let opts = if n == F {
                    JobOptions::within(RECS_TIMEOUT)
                } else {
                    JobOptions::default()
                };
                (
                    n,
                    pool.submit_with(opts, move |_| rpc(&lat, n, &inputs))
                        .expect("pool has room"),
                )
            })
            .collect();
        for (n, h) in handles {
            values[n] = if n == F {
                let left = RECS_TIMEOUT.saturating_sub(started.elapsed());
                match h.join_timeout(left) {
                    Ok(Ok(v)) => v,
                    _ => {
                        timed_out = true;
                        0
                    }
                }
            } else {
                h.join().expect("call ran")
            };
        }
    }
    (values[G], timed_out)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    let args = Args::parse();
    // Enough workers for every call of a level at once: the calls sleep.
    let pool = Pool::builder()
        .capacity(8)
        .queue_capacity(64)
        .prestart(true)
        .build()
        .expect("pool");
    let (graph, page, recs) = build();
    let mut rng = fastrand::Rng::with_seed(args.seed);
    let (mut grouped_ms, mut graph_ms, mut crit_ms, mut ratios) = (vec![], vec![], vec![], vec![]);
    let mut rows = Vec::new();
    let mut last = None;
    let mut timeouts = 0;
    for round in 0..args.rounds.max(1) {
        let lat = Lat::draw(&mut rng, round);
        let run_graph = || {
            let t = Instant::now();
            let h: RunHandle = graph.run(&pool, lat);
            let r = h.join();
            (ms(t.elapsed()), r)
        };
        let run_grouped = || {
            let t = Instant::now();
            let (v, timed_out) = grouped(&pool, lat);
            (ms(t.elapsed()), v, timed_out)
        };
        // Alternate which goes first, so neither always follows the other.
        let ((gm, r), (gr, gv, g_to)) = if round % 2 == 0 {
            let a = run_graph();
            (a, run_grouped())
        } else {
            let b = run_grouped();
            (run_graph(), b)
        };
        assert!(r.is_ok(), "{r}");
        assert_eq!(r.value(&page), Some(&gv), "both compute the same page");
        let recs_to = matches!(r.outcome(&recs), Some(Outcome::Degraded(_)));
        assert_eq!(recs_to, g_to, "recs timed out in one system only");
        timeouts += usize::from(recs_to);
        let crit = lat.critical_path_ms() as f64;
        rows.push((round, crit, gr, gm, recs_to));
        grouped_ms.push(gr);
        graph_ms.push(gm);
        crit_ms.push(crit);
        ratios.push(gm / crit);
        last = Some(r);
    }
    let n = rows.len();
    let max_ratio = ratios.iter().copied().fold(0.0, f64::max);
    let (g, gr, c, ratio) = (
        median(&mut graph_ms),
        median(&mut grouped_ms),
        median(&mut crit_ms),
        median(&mut ratios),
    );
    if args.json {
        let out = serde_json::json!({
            "grouped_ms": gr,
            "graph_ms": g,
            "critical_path_ms": c,
            "graph_over_critical_path": ratio,
            "graph_over_critical_path_max": max_ratio,
            "grouped_over_graph": gr / g,
            "rounds": n,
            "recs_timeouts": timeouts,
            "rows": rows.iter().map(|(round, crit, gr, gm, to)| serde_json::json!({
                "round": round, "critical_path_ms": crit, "grouped_ms": gr, "graph_ms": gm, "recs_timed_out": to,
            })).collect::<Vec<_>>(),
        });
        println!("{out}");
        return;
    }
    println!("round  critical_ms  grouped_ms  graph_ms  recs");
    for (round, crit, gr, gm, to) in &rows {
        let recs = if *to { "timed out: default" } else { "ok" };
        println!("{round:>5}  {crit:>11.1}  {gr:>10.1}  {gm:>8.1}  {recs}");
    }
    println!(
        "median of {n} rounds: critical path {c:.1} ms, grouped {gr:.1} ms, graph {g:.1} ms; \
         graph/critical {ratio:.3} (max {max_ratio:.3}), grouped/graph {:.2}",
        gr / g
    );
    if let Some(r) = last {
        let path: Vec<&str> = r.critical_path().iter().map(|&i| &*r.nodes()[i].name).collect();
        println!(
            "\nlast round's graph run, critical path {}:\n{r}",
            path.join(" -> ")
        );
    }
}
