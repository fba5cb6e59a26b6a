//! Criterion benchmarks of the pool's hot paths, with a crossbeam-channel
//! pool of the same size as the baseline on the same workload.
//!
//! `cargo bench --bench pool`

use std::hint::black_box;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

#[path = "../examples/common/baseline.rs"]
mod baseline;
use baseline::{ChannelPool, Latch};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use facepool::pool::{Pool, SubmitError};

const THREADS: usize = 2;

fn throughput(c: &mut Criterion) {
    const N: usize = 10_000;
    let mut g = c.benchmark_group("10k_empty_jobs");
    g.throughput(Throughput::Elements(N as u64));
    let pool = Pool::builder()
        .capacity(THREADS)
        .prestart(true)
        .queue_capacity(N)
        .build()
        .unwrap();
    g.bench_function(BenchmarkId::new("facepool", "execute"), |b| {
        b.iter(|| {
            let latch = Latch::new(N);
            for _ in 0..N {
                let l = latch.clone();
                pool.execute(move |_| l.count_down()).unwrap();
            }
            latch.wait();
        })
    });
    g.bench_function(BenchmarkId::new("facepool", "submit+join"), |b| {
        let mut hs = Vec::with_capacity(N);
        b.iter(|| {
            hs.extend((0..N).map(|i| pool.submit(move |_| i).unwrap()));
            for h in hs.drain(..) {
                black_box(h.join().unwrap());
            }
        })
    });
    let baseline = ChannelPool::new(THREADS, None);
    g.bench_function(BenchmarkId::new("crossbeam_pool", "execute"), |b| {
        b.iter(|| {
            let latch = Latch::new(N);
            for _ in 0..N {
                let l = latch.clone();
                baseline.execute(move || l.count_down());
            }
            latch.wait();
        })
    });
    drop(baseline);
    g.finish();
}

fn latency(c: &mut Criterion) {
    let mut g = c.benchmark_group("single_job");
    let pool = Pool::builder().capacity(THREADS).prestart(true).build().unwrap();
    g.bench_function("submit_join_roundtrip", |b| {
        b.iter(|| black_box(pool.submit(|_| 1u64).unwrap().join().unwrap()))
    });
    // The cost of refusing: a full pool answering try_submit.
    let full = Pool::builder().capacity(1).queue_capacity(0).build().unwrap();
    let gate = Arc::new((Mutex::new(false), Condvar::new()));
    let g2 = gate.clone();
    full.execute(move |_| {
        let mut open = g2.0.lock().unwrap();
        while !*open {
            open = g2.1.wait(open).unwrap();
        }
    })
    .unwrap();
    while full.stats().running == 0 {
        std::thread::yield_now();
    }
    g.bench_function("try_submit_overloaded", |b| {
        b.iter(|| assert_eq!(full.try_submit(|_| ()).unwrap_err(), SubmitError::Overloaded))
    });
    g.bench_function("stats", |b| b.iter(|| black_box(pool.stats())));
    *gate.0.lock().unwrap() = true;
    gate.1.notify_all();
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = throughput, latency
}
criterion_main!(benches);
