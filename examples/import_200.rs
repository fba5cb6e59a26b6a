//! The 200-row import: each row needs a slow call (200-400 ms, 2 % take 3 s),
//! and finished rows are written in groups of 25 by ONE consumer (one
//! transaction per group, 300 ms each).
//!
//! ```text
//! cargo run --release --example import_200
//! ```
//!
//! Two strategies on the same call durations (fixed seed):
//! - (a) wait for every call, then write the 8 groups;
//! - (b) the synchronizer (`map_completed(..).chunks(25)`): each group is
//!   written as soon as 25 calls are done, while the others still run.
//!
//! (b) should end about one group write after the last call ends.

use std::time::{Duration, Instant};

use clap::Parser;
use facepool::batch::map_completed;
use facepool::pool::Pool;

#[derive(Parser)]
#[command(about = "200 slow calls written in groups of 25 by one consumer: wait-all vs. the synchronizer")]
struct Args {
    /// Rows to import.
    #[arg(long, default_value_t = 200)]
    rows: usize,
    /// Rows per write (one transaction).
    #[arg(long, default_value_t = 25)]
    group: usize,
    /// Cost of one group write, ms.
    #[arg(long, default_value_t = 300)]
    write_ms: u64,
    /// Seed of the call durations.
    #[arg(long, default_value_t = 7)]
    seed: u64,
}

/// One row's call: sleeps its duration (a remote call), returns the row.
fn call(row: (usize, Duration)) -> Result<usize, String> {
    std::thread::sleep(row.1);
    Ok(row.0)
}

/// One transaction writing a group of rows (simulated by its cost).
fn write_group(_rows: &[usize], write: Duration) {
    std::thread::sleep(write);
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let mut rng = fastrand::Rng::with_seed(args.seed);
    let rows: Vec<(usize, Duration)> = (0..args.rows)
        .map(|i| {
            let ms = if rng.u32(0..100) < 2 {
                3000
            } else {
                rng.u64(200..=400)
            };
            (i, Duration::from_millis(ms))
        })
        .collect();
    let slowest = rows.iter().map(|r| r.1).max().unwrap_or_default();
    let write = Duration::from_millis(args.write_ms);
    // The calls wait on a remote service, not on the CPU: a worker per row
    // in flight is the right size for this pool.
    let pool = Pool::builder()
        .capacity(args.rows.max(1))
        .thread_name("import")
        .build()?;

    // (a) Wait for all, then write.
    let t0 = Instant::now();
    let handles: Vec<_> = rows
        .iter()
        .map(|r| {
            let r = *r;
            pool.submit(move |_| call(r))
        })
        .collect::<Result<_, _>>()?;
    let mut done = Vec::with_capacity(args.rows);
    for h in handles {
        done.push(h.join()??);
    }
    let a_last_call = t0.elapsed();
    for g in done.chunks(args.group) {
        write_group(g, write);
    }
    let a_total = t0.elapsed();

    // (b) The synchronizer: write each group as soon as it is complete.
    let t0 = Instant::now();
    let mut groups = 0;
    for group in map_completed(&pool, rows.clone(), call).chunks(args.group) {
        // A failed row aborts the import: dropping the iterator cancels the
        // calls that have not started, and the transaction is rolled back.
        let group = group?;
        let ids: Vec<usize> = group.iter().map(|d| d.value).collect();
        write_group(&ids, write);
        groups += 1;
    }
    let b_total = t0.elapsed();

    let s = |d: Duration| format!("{:.2} s", d.as_secs_f64());
    println!(
        "{} rows, calls 200-400 ms (2 % take 3 s; slowest {}), groups of {}, {} ms per write",
        args.rows,
        s(slowest),
        args.group,
        args.write_ms
    );
    println!("(a) wait for all, then write {groups} groups: {}", s(a_total));
    println!("    last call ended at {}", s(a_last_call));
    println!(
        "(b) synchronizer, groups written as they complete: {}",
        s(b_total)
    );
    println!(
        "    (b) ended {} after the slowest call, {:.1} group writes",
        s(b_total.saturating_sub(slowest)),
        b_total.saturating_sub(slowest).as_secs_f64() / write.as_secs_f64()
    );
    println!(
        "    saved {} ({:.0} %)",
        s(a_total.saturating_sub(b_total)),
        100.0 * (1.0 - b_total.as_secs_f64() / a_total.as_secs_f64())
    );
    Ok(())
}
