//! facepool's pool against the pools a Rust service would otherwise use,
//! on the same workloads and the same number of threads, in one process.
//!
//! ```text
//! cargo run --release --example pool_vs_peers -- --tasks 1000000 --json
//! ```
//!
//! Workloads: `empty` (N no-op jobs, time until all are done), `spin_10us`
//! (N/10 jobs of ~10 µs of busy work), `burst` (N jobs submitted as fast as
//! possible through a bounded queue of 1024 with blocking submit). Peers
//! without a bounded queue (rayon, threadpool, tokio's blocking pool) run
//! `burst` unbounded, their natural equivalent; the results say so. A thread
//! per task runs N/100 tasks (at most 20,000) and is scaled to a rate.
//!
//! Also measured: the pool's memory per queued job beyond the job itself,
//! with a counting allocator, for `execute` and for `submit` (with handle).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;

#[path = "common/baseline.rs"]
mod baseline;
use baseline::{ChannelPool, Latch};
use facepool::pool::Pool;
use serde::Serialize;

// ---- a counting allocator, switched on only for the memory measurement ----

struct Counting;
static COUNTING: AtomicBool = AtomicBool::new(false);
static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards every call unchanged to the system allocator; it only
// counts bytes on the side.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            LIVE_BYTES.fetch_add(l.size() as isize, Ordering::Relaxed);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        if COUNTING.load(Ordering::Relaxed) {
            LIVE_BYTES.fetch_sub(l.size() as isize, Ordering::Relaxed);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            LIVE_BYTES.fetch_add(new as isize - l.size() as isize, Ordering::Relaxed);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

#[derive(Parser)]
#[command(about = "facepool's pool against peer thread pools, same threads, one process")]
struct Args {
    /// Jobs per workload (spin_10us runs a tenth of them).
    #[arg(long, default_value_t = 1_000_000)]
    tasks: usize,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Rounds (one run of each system per round); each system's median is
    /// reported.
    #[arg(long, default_value_t = 5)]
    repeat: usize,
    /// Only these workloads (comma-separated).
    #[arg(long, value_delimiter = ',')]
    workloads: Vec<String>,
    /// Only these systems (comma-separated).
    #[arg(long, value_delimiter = ',')]
    systems: Vec<String>,
}

const THREADS: usize = 2;
const BOUND: usize = 1024;

#[derive(Clone, Copy, PartialEq)]
enum Work {
    Empty,
    Spin10us,
    Burst,
}

#[inline]
fn spin_10us() {
    let t = Instant::now();
    while t.elapsed() < Duration::from_micros(10) {
        std::hint::spin_loop();
    }
}

fn job(work: Work, latch: &Latch) {
    if work == Work::Spin10us {
        spin_10us();
    }
    latch.count_down();
}

/// Runs `n` jobs on one system; returns the wall time and a note.
fn run(system: &str, work: Work, n: usize) -> (Duration, &'static str) {
    let latch = Latch::new(n);
    match system {
        "facepool" => {
            let queue = if work == Work::Burst { BOUND } else { n };
            let pool = Pool::builder()
                .capacity(THREADS)
                .prestart(true)
                .queue_capacity(queue)
                .build()
                .expect("pool");
            let t = Instant::now();
            for _ in 0..n {
                let l = latch.clone();
                pool.execute(move |_| job(work, &l)).expect("execute");
            }
            latch.wait();
            (
                t.elapsed(),
                if work == Work::Burst {
                    "bounded queue 1024, blocking submit"
                } else {
                    ""
                },
            )
        }
        "rayon" => {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(THREADS)
                .build()
                .expect("rayon");
            let t = Instant::now();
            for _ in 0..n {
                let l = latch.clone();
                pool.spawn(move || job(work, &l));
            }
            latch.wait();
            (
                t.elapsed(),
                if work == Work::Burst {
                    "no bounded queue: unbounded"
                } else {
                    ""
                },
            )
        }
        "threadpool" => {
            let pool = threadpool::ThreadPool::new(THREADS);
            let t = Instant::now();
            for _ in 0..n {
                let l = latch.clone();
                pool.execute(move || job(work, &l));
            }
            latch.wait();
            (
                t.elapsed(),
                if work == Work::Burst {
                    "no bounded queue: unbounded"
                } else {
                    ""
                },
            )
        }
        "tokio" => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .max_blocking_threads(THREADS)
                .build()
                .expect("tokio");
            let t = Instant::now();
            for _ in 0..n {
                let l = latch.clone();
                drop(rt.spawn_blocking(move || job(work, &l)));
            }
            latch.wait();
            (
                t.elapsed(),
                if work == Work::Burst {
                    "spawn_blocking has no bounded queue: unbounded"
                } else {
                    ""
                },
            )
        }
        "crossbeam" => {
            let bound = if work == Work::Burst { Some(BOUND) } else { None };
            let pool = ChannelPool::new(THREADS, bound);
            let t = Instant::now();
            for _ in 0..n {
                let l = latch.clone();
                pool.execute(move || job(work, &l));
            }
            latch.wait();
            let elapsed = t.elapsed();
            drop(pool);
            (
                elapsed,
                if work == Work::Burst {
                    "bounded channel 1024"
                } else {
                    ""
                },
            )
        }
        "thread_per_task" => {
            let t = Instant::now();
            for _ in 0..n {
                let l = latch.clone();
                std::thread::spawn(move || job(work, &l));
            }
            latch.wait();
            (t.elapsed(), "a thread per task, fewer tasks, scaled")
        }
        other => panic!("unknown system {other}"),
    }
}

/// Peak resident memory since the last reset, in MiB (Linux; 0 elsewhere).
fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Resets the peak-RSS mark to the current RSS (Linux ≥ 4.0).
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

#[derive(Serialize)]
struct SysResult {
    system: String,
    tasks_per_sec: f64,
    peak_rss_mb: f64,
    tasks: usize,
    #[serde(skip_serializing_if = "str::is_empty")]
    note: &'static str,
}

#[derive(Serialize)]
struct WorkloadResult {
    name: &'static str,
    tasks: usize,
    results: Vec<SysResult>,
}

#[derive(Serialize)]
struct MemResult {
    queued_jobs: usize,
    execute_bytes_per_job: f64,
    submit_bytes_per_job: f64,
    handle_slot_bytes_per_job: f64,
}

#[derive(Serialize)]
struct Report {
    threads: usize,
    workloads: Vec<WorkloadResult>,
    pool_memory: MemResult,
}

/// Bytes the pool holds per queued job beyond the job itself: the closures
/// are zero-sized (a `Box` of a zero-sized closure allocates nothing), so
/// every byte counted is the pool's (queue entry, job box, result slot).
fn measure_memory(jobs: usize) -> MemResult {
    let pool = Pool::builder()
        .capacity(1)
        .queue_capacity(2 * jobs)
        .build()
        .expect("pool");
    let gate = Arc::new((Mutex::new(false), Condvar::new()));
    let g = gate.clone();
    pool.execute(move |_| {
        let mut open = g.0.lock().unwrap();
        while !*open {
            open = g.1.wait(open).unwrap();
        }
    })
    .expect("execute");
    while pool.stats().running == 0 {
        std::thread::yield_now();
    }
    let per_job = |f: &dyn Fn()| {
        LIVE_BYTES.store(0, Ordering::SeqCst);
        COUNTING.store(true, Ordering::SeqCst);
        f();
        COUNTING.store(false, Ordering::SeqCst);
        LIVE_BYTES.load(Ordering::SeqCst) as f64 / jobs as f64
    };
    let exec = per_job(&|| {
        for _ in 0..jobs {
            pool.execute(|_| ()).expect("execute");
        }
    });
    let mut handles = Vec::with_capacity(2 * jobs);
    let handle_vec = std::cell::RefCell::new(&mut handles);
    let submit = per_job(&|| {
        for _ in 0..jobs {
            handle_vec.borrow_mut().push(pool.submit(|_| ()).expect("submit"));
        }
    });
    // The handles' own vector is the caller's memory, not the pool's; the
    // slot each handle points to is shared by job and handle.
    let handles_vec_bytes =
        (2 * jobs * std::mem::size_of::<facepool::pool::JobHandle<()>>()) as f64 / jobs as f64;
    *gate.0.lock().unwrap() = true;
    gate.1.notify_all();
    for h in handles {
        h.join().expect("join");
    }
    MemResult {
        queued_jobs: jobs,
        execute_bytes_per_job: exec,
        submit_bytes_per_job: submit - handles_vec_bytes,
        handle_slot_bytes_per_job: submit - handles_vec_bytes - exec,
    }
}

fn main() {
    let args = Args::parse();
    let all_systems = [
        "facepool",
        "rayon",
        "threadpool",
        "tokio",
        "crossbeam",
        "thread_per_task",
    ];
    let all_work = [
        ("empty", Work::Empty),
        ("spin_10us", Work::Spin10us),
        ("burst", Work::Burst),
    ];
    let mut report = Report {
        threads: THREADS,
        workloads: Vec::new(),
        pool_memory: measure_memory(100_000),
    };
    for (name, work) in all_work {
        if !args.workloads.is_empty() && !args.workloads.iter().any(|w| w == name) {
            continue;
        }
        let n = if work == Work::Spin10us {
            args.tasks / 10
        } else {
            args.tasks
        };
        let systems: Vec<&str> = all_systems
            .into_iter()
            .filter(|sys| args.systems.is_empty() || args.systems.iter().any(|s| s == sys))
            .collect();
        let tasks_for = |sys: &str| {
            if sys == "thread_per_task" {
                (n / 100).clamp(1, 20_000)
            } else {
                n
            }
        };
        // Rounds of one run per system, so that a slow spell of the machine
        // falls on every system alike rather than on one system's runs.
        let mut rates = vec![Vec::new(); systems.len()];
        let mut peaks = vec![0.0f64; systems.len()];
        let mut notes = vec![""; systems.len()];
        for _ in 0..args.repeat.max(1) {
            for (i, sys) in systems.iter().enumerate() {
                reset_peak_rss();
                let tasks = tasks_for(sys);
                let (d, note) = run(sys, work, tasks);
                peaks[i] = peaks[i].max(peak_rss_mb());
                notes[i] = note;
                rates[i].push(tasks as f64 / d.as_secs_f64());
            }
        }
        let mut results = Vec::new();
        for (i, sys) in systems.iter().enumerate() {
            let r = &mut rates[i];
            r.sort_by(f64::total_cmp);
            let median = r[r.len() / 2];
            if !args.json {
                eprintln!("  {name:<10} {sys:<16} {median:>14.0} tasks/s");
            }
            results.push(SysResult {
                system: (*sys).to_owned(),
                tasks_per_sec: median,
                peak_rss_mb: peaks[i],
                tasks: tasks_for(sys),
                note: notes[i],
            });
        }
        report.workloads.push(WorkloadResult {
            name,
            tasks: n,
            results,
        });
    }
    if args.json {
        println!("{}", serde_json::to_string(&report).expect("json"));
        return;
    }
    println!(
        "threads: {THREADS}; median of {} runs per cell",
        args.repeat.max(1)
    );
    for w in &report.workloads {
        let best_peer = w
            .results
            .iter()
            .filter(|r| r.system != "facepool")
            .map(|r| r.tasks_per_sec)
            .fold(0.0, f64::max);
        println!("\n{} ({} tasks)", w.name, w.tasks);
        println!(
            "{:<16} {:>14} {:>12} {:>9}  note",
            "system", "tasks/s", "peak RSS MB", "vs best"
        );
        for r in &w.results {
            let vs = if r.system == "facepool" && best_peer > 0.0 {
                format!("{:.2}x", r.tasks_per_sec / best_peer)
            } else {
                String::new()
            };
            println!(
                "{:<16} {:>14.0} {:>12.1} {:>9}  {}",
                r.system, r.tasks_per_sec, r.peak_rss_mb, vs, r.note
            );
        }
    }
    let m = &report.pool_memory;
    println!(
        "\npool memory per queued job ({} queued): execute {:.1} B, submit {:.1} B (of which result slot {:.1} B)",
        m.queued_jobs, m.execute_bytes_per_job, m.submit_bytes_per_job, m.handle_slot_bytes_per_job
    );
}
