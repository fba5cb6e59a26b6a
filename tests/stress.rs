//! Stress: 1,000,000 jobs from 4 submitting threads with random panics,
//! deadlines, cancels and drops, while another thread keeps calling `tune()`;
//! then shutdown. Every submit must be accounted for exactly once.

use crate::common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Rng;
use facepool::pool::{JobError, JobOptions, Pool, SubmitError};

const JOBS: u64 = 1_000_000;
const SUBMITTERS: u64 = 4;

#[derive(Default)]
struct Seen {
    done: AtomicU64,
    panicked: AtomicU64,
    expired: AtomicU64,
    cancelled: AtomicU64,
    refused: AtomicU64,
    ran: AtomicU64,
}

#[test]
fn a_million_jobs_balance_exactly() {
    // Panicking jobs are expected here; keep the output readable.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let planned = info
            .payload()
            .downcast_ref::<String>()
            .is_some_and(|m| m.ends_with(" panics"));
        if !planned {
            default_hook(info);
        }
    }));
    let pool = Pool::builder()
        .capacity(4)
        .queue_capacity(256)
        .submit_timeout(Duration::from_millis(50))
        .idle_expiry(Duration::from_millis(5))
        .build()
        .unwrap();
    let seen = Arc::new(Seen::default());
    let stop = Arc::new(AtomicBool::new(false));

    let tuner = {
        let (pool, stop) = (pool.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut rng = Rng::new(99);
            let mut tunes = 0u64;
            while !stop.load(Ordering::Relaxed) {
                pool.tune(1 + rng.below(6) as usize).unwrap();
                tunes += 1;
                for _ in 0..rng.below(2000) {
                    std::hint::spin_loop();
                }
                std::thread::yield_now();
            }
            tunes
        })
    };

    let submitters: Vec<_> = (0..SUBMITTERS)
        .map(|t| {
            let (pool, seen) = (pool.clone(), seen.clone());
            std::thread::spawn(move || {
                let mut rng = Rng::new(0x5eed + t);
                let mut pending = Vec::with_capacity(64);
                for i in 0..JOBS / SUBMITTERS {
                    let panics = rng.chance(2);
                    let ran = seen.clone();
                    let job = move |_: &mut ()| {
                        ran.ran.fetch_add(1, Ordering::Relaxed);
                        if panics {
                            panic!("job {i} panics");
                        }
                        i
                    };
                    let r = match rng.below(100) {
                        // A deadline that has passed or will pass soon.
                        0..=9 => {
                            let dl = Instant::now() + Duration::from_micros(rng.below(200));
                            pool.submit_with(JobOptions::deadline(dl), job)
                        }
                        10..=14 => pool.try_submit(job),
                        15..=19 => {
                            // Fire-and-forget; its outcome shows only in the stats.
                            match pool.execute(move |s| {
                                let _ = job(s);
                            }) {
                                Ok(()) => continue,
                                Err(_) => {
                                    seen.refused.fetch_add(1, Ordering::Relaxed);
                                    continue;
                                }
                            }
                        }
                        _ => pool.submit(job),
                    };
                    let h = match r {
                        Ok(h) => h,
                        Err(SubmitError::Overloaded | SubmitError::Timeout(_)) => {
                            seen.refused.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        Err(SubmitError::Closed) => panic!("closed while running"),
                    };
                    match rng.below(100) {
                        0..=4 => {
                            h.cancel();
                            pending.push(h);
                        }
                        // Dropped handle: cancelled if it has not started.
                        5..=7 => drop(h),
                        _ => pending.push(h),
                    }
                    if pending.len() >= 64 {
                        for h in pending.drain(..) {
                            record(&seen, h.join());
                        }
                    }
                }
                for h in pending {
                    record(&seen, h.join());
                }
            })
        })
        .collect();
    for s in submitters {
        s.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let tunes = tuner.join().unwrap();
    let report = pool.shutdown(Duration::from_secs(60));
    assert_eq!(report.still_running, 0);

    let s = pool.stats();
    eprintln!("{s:?}\ntunes: {tunes}");
    assert_eq!(s.submitted, JOBS);
    assert_eq!(
        s.submitted,
        s.completed + s.panicked + s.expired + s.cancelled + s.rejected,
        "every submit has exactly one outcome: {s:?}"
    );
    // What the stats say ran is what actually ran.
    assert_eq!(s.completed + s.panicked, seen.ran.load(Ordering::Relaxed));
    assert_eq!(s.rejected, seen.refused.load(Ordering::Relaxed));
    // Outcomes seen through handles never exceed the pool's counts.
    assert!(seen.done.load(Ordering::Relaxed) <= s.completed);
    assert!(seen.panicked.load(Ordering::Relaxed) <= s.panicked);
    assert!(seen.expired.load(Ordering::Relaxed) <= s.expired);
    assert!(seen.cancelled.load(Ordering::Relaxed) <= s.cancelled);
    // The mix really exercised every path.
    assert!(
        s.panicked > 0 && s.expired > 0 && s.cancelled > 0 && s.rejected > 0,
        "{s:?}"
    );
    assert!(s.resizes > 100, "tune ran concurrently: {s:?}");
}

fn record(seen: &Seen, r: Result<u64, JobError>) {
    let c = match r {
        Ok(_) => &seen.done,
        Err(JobError::Panicked(_)) => &seen.panicked,
        Err(JobError::Expired) => &seen.expired,
        Err(JobError::Cancelled) => &seen.cancelled,
    };
    c.fetch_add(1, Ordering::Relaxed);
}

/// The admission observer: at a fixed capacity, under 4 submitters with
/// cancels, drops, deadlines and refusals, no more jobs are alive than the
/// window admits and no more run than there are workers.
///
/// Every job's closure carries a guard counted in one word with the number
/// of closures their submitter has not yet seen admitted or refused
/// ("pending"). `live - pending` never exceeds the admitted jobs whose
/// closures are alive, so it must stay within `capacity + queue_capacity`
/// (a job's captures are dropped before its place is freed).
#[test]
fn admission_observer_at_fixed_capacity() {
    const CAPACITY: u64 = 3;
    const QUEUE: u64 = 16;
    const PER_SUBMITTER: u64 = 50_000;
    const LIVE: u64 = 1;
    const PENDING: u64 = 1 << 32;

    struct Guard(Arc<AtomicU64>);
    impl Drop for Guard {
        fn drop(&mut self) {
            self.0.fetch_sub(LIVE, Ordering::SeqCst);
        }
    }

    let pool = Pool::builder()
        .capacity(CAPACITY as usize)
        .queue_capacity(QUEUE as usize)
        .submit_timeout(Duration::from_millis(20))
        .build()
        .unwrap();
    let word = Arc::new(AtomicU64::new(0));
    let running = Arc::new(AtomicU64::new(0));
    let max_live = Arc::new(AtomicU64::new(0));
    let max_running = Arc::new(AtomicU64::new(0));

    let submitters: Vec<_> = (0..SUBMITTERS)
        .map(|t| {
            let (pool, word, running) = (pool.clone(), word.clone(), running.clone());
            let (max_live, max_running) = (max_live.clone(), max_running.clone());
            std::thread::spawn(move || {
                let mut rng = Rng::new(0xad31 + t);
                for _ in 0..PER_SUBMITTER {
                    word.fetch_add(PENDING + LIVE, Ordering::SeqCst);
                    let guard = Guard(word.clone());
                    let (word2, running2) = (word.clone(), running.clone());
                    let (max_live2, max_running2) = (max_live.clone(), max_running.clone());
                    let spin = rng.below(200);
                    let job = move |_: &mut ()| {
                        let _keep = &guard;
                        let r = running2.fetch_add(1, Ordering::SeqCst) + 1;
                        max_running2.fetch_max(r, Ordering::SeqCst);
                        let w = word2.load(Ordering::SeqCst);
                        let admitted_live = (w & (PENDING - 1)).saturating_sub(w >> 32);
                        max_live2.fetch_max(admitted_live, Ordering::SeqCst);
                        for _ in 0..spin {
                            std::hint::spin_loop();
                        }
                        running2.fetch_sub(1, Ordering::SeqCst);
                    };
                    let r = match rng.below(10) {
                        0 => pool.try_submit(job),
                        1 => pool.submit_with(JobOptions::within(Duration::from_micros(rng.below(100))), job),
                        _ => pool.submit(job),
                    };
                    word.fetch_sub(PENDING, Ordering::SeqCst);
                    match r {
                        Ok(h) => match rng.below(10) {
                            0 => drop(h),
                            1 => {
                                h.cancel();
                            }
                            _ => h.detach(),
                        },
                        Err(SubmitError::Closed) => panic!("closed while running"),
                        Err(_) => {}
                    }
                }
            })
        })
        .collect();
    for s in submitters {
        s.join().unwrap();
    }
    assert_eq!(pool.shutdown(Duration::from_secs(60)).still_running, 0);
    let s = pool.stats();
    assert_eq!(
        s.submitted,
        s.completed + s.panicked + s.expired + s.cancelled + s.rejected,
        "{s:?}"
    );
    assert_eq!(word.load(Ordering::SeqCst), 0, "every closure was dropped");
    let (live, run) = (
        max_live.load(Ordering::SeqCst),
        max_running.load(Ordering::SeqCst),
    );
    eprintln!("max admitted live {live}, max running {run}; {s:?}");
    assert!(live <= CAPACITY + QUEUE, "{live} jobs alive beyond the window");
    assert!(run <= CAPACITY, "{run} jobs ran at once on {CAPACITY} workers");
    assert!(
        s.completed > 0 && s.rejected + s.expired + s.cancelled > 0,
        "{s:?}"
    );
}
