//! User code that runs on a pool worker outside a job's body (a drop, a
//! waker, a clock, a worker-state factory) cannot wedge the pool: a panic in
//! it is caught and reported, the counters stay balanced, and the worker
//! keeps serving. Also: shutdown from inside a job drains, derived counters
//! never go backwards, and slow factories start side by side.

use crate::common;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use common::{wait_until, Gate};
use facepool::pool::{Clock, JobError, JobOptions, Pool, PoolBuilder, PoolStats, SubmitError};

const LONG: Duration = Duration::from_secs(20);

/// A value whose drop panics.
struct DropBomb;

impl Drop for DropBomb {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            panic!("drop bomb");
        }
    }
}

/// Silences the default panic output of the planned panics of this file
/// (their messages all mention "bomb").
fn quiet_planned_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let msg = info
                .payload()
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| info.payload().downcast_ref::<String>().cloned())
                .unwrap_or_default();
            let planned = ["drop bomb", "factory bomb", "clock bomb", "waker bomb"];
            if !planned.iter().any(|p| msg.starts_with(p)) {
                default_hook(info);
            }
        }));
    });
}

type Reports = Arc<Mutex<Vec<String>>>;

/// A pool of `capacity` workers whose panic handler records messages.
fn reporting(capacity: usize, queue: usize) -> (PoolBuilder<()>, Reports) {
    quiet_planned_panics();
    let seen: Reports = Arc::default();
    let s2 = seen.clone();
    let b = Pool::builder()
        .capacity(capacity)
        .queue_capacity(queue)
        .panic_handler(move |m| s2.lock().unwrap().push(m.to_owned()));
    (b, seen)
}

/// The next job still runs, within a bound (a hang fails the test).
fn still_serves<S: 'static>(pool: &Pool<S>) {
    let h = pool.submit(|_| 42).unwrap();
    match h.join_timeout(LONG) {
        Ok(r) => assert_eq!(r, Ok(42)),
        Err(_) => panic!("the pool stopped serving"),
    }
}

fn has_report(seen: &Reports, needle: &str) -> bool {
    seen.lock().unwrap().iter().any(|m| m.contains(needle))
}

/// Shuts down, and checks that it did not hang and the books balance.
fn shut<S: 'static>(pool: &Pool<S>) -> PoolStats {
    assert_eq!(pool.shutdown(LONG).still_running, 0);
    let s = pool.stats();
    common::pool_balanced(&s);
    assert_eq!(s.workers, 0, "{s:?}");
    s
}

#[test]
fn a_detached_result_whose_drop_panics() {
    let (b, seen) = reporting(1, 4);
    let pool = b.build().unwrap();
    pool.submit(|_| DropBomb).unwrap().detach();
    still_serves(&pool);
    assert!(has_report(&seen, "drop bomb"), "{:?}", seen.lock().unwrap());
    let s = shut(&pool);
    assert_eq!(s.completed, 2);
}

#[test]
fn a_result_whose_handle_left_while_it_ran_and_whose_drop_panics() {
    let (b, _seen) = reporting(1, 4);
    let pool = b.build().unwrap();
    let gate = Gate::new();
    let g = gate.clone();
    let started = Arc::new(AtomicBool::new(false));
    let s2 = started.clone();
    let h = pool
        .submit(move |_| {
            s2.store(true, Ordering::SeqCst);
            g.wait();
            DropBomb
        })
        .unwrap();
    wait_until("job running", || started.load(Ordering::SeqCst));
    drop(h);
    gate.open();
    still_serves(&pool);
    assert_eq!(shut(&pool).completed, 2);
}

#[test]
fn a_cancelled_jobs_captures_that_panic_on_drop() {
    let (b, seen) = reporting(1, 4);
    let pool = b.build().unwrap();
    let gate = Gate::new();
    let g = gate.clone();
    pool.execute(move |_| g.wait()).unwrap();
    wait_until("worker busy", || pool.stats().running == 1);
    let bomb = DropBomb;
    let h = pool.submit(move |_| drop(bomb)).unwrap();
    // Cancelled while queued: the worker drops the captures when it
    // dequeues the job.
    assert!(h.cancel());
    gate.open();
    still_serves(&pool);
    wait_until("drop reported", || has_report(&seen, "drop bomb"));
    let s = shut(&pool);
    assert_eq!((s.completed, s.cancelled), (2, 1));
}

#[test]
fn an_expired_jobs_captures_that_panic_on_drop() {
    let (b, seen) = reporting(1, 4);
    let pool = b.build().unwrap();
    let gate = Gate::new();
    let g = gate.clone();
    pool.execute(move |_| g.wait()).unwrap();
    wait_until("worker busy", || pool.stats().running == 1);
    let bomb = DropBomb;
    let dl = Instant::now() + Duration::from_millis(1);
    let h = pool
        .submit_with(JobOptions::deadline(dl), move |_| drop(bomb))
        .unwrap();
    let bomb2 = DropBomb;
    pool.execute(move |_| drop(bomb2))
        .unwrap_or_else(|e| panic!("{e}"));
    while Instant::now() <= dl {
        std::thread::sleep(Duration::from_millis(1));
    }
    gate.open();
    assert_eq!(h.join(), Err(JobError::Expired));
    still_serves(&pool);
    assert!(has_report(&seen, "drop bomb"));
    let s = shut(&pool);
    assert_eq!(s.expired, 1);
}

#[test]
fn a_panic_payload_whose_drop_panics() {
    let (b, seen) = reporting(1, 4);
    let pool = b.build().unwrap();
    let h = pool
        .submit(|_| -> u32 { std::panic::panic_any(DropBomb) })
        .unwrap();
    assert!(matches!(h.join(), Err(JobError::Panicked(_))));
    pool.execute(|_| std::panic::panic_any(DropBomb)).unwrap();
    still_serves(&pool);
    wait_until("payload drops reported", || {
        seen.lock()
            .unwrap()
            .iter()
            .filter(|m| m.contains("drop bomb"))
            .count()
            == 2
    });
    let s = shut(&pool);
    assert_eq!((s.completed, s.panicked), (1, 2));
}

/// A clock that panics while `broken` is set.
struct BrokenClock {
    broken: AtomicBool,
}

impl Clock for BrokenClock {
    fn now(&self) -> Instant {
        if self.broken.load(Ordering::SeqCst) {
            panic!("clock bomb");
        }
        Instant::now()
    }
}

#[test]
fn a_clock_that_panics() {
    let clock = Arc::new(BrokenClock {
        broken: AtomicBool::new(false),
    });
    let (b, seen) = reporting(1, 4);
    let pool = b
        .clock(clock.clone())
        .idle_expiry(Duration::from_millis(5))
        .housekeeping_interval(Duration::from_millis(1))
        .build()
        .unwrap();
    clock.broken.store(true, Ordering::SeqCst);
    // The deadline check cannot read the time: the job runs (a deadline that
    // cannot be checked does not lose the job).
    let h = pool.submit_with(JobOptions::within(LONG), |_| 5).unwrap();
    assert_eq!(h.join(), Ok(5));
    wait_until("clock panic reported", || has_report(&seen, "clock bomb"));
    still_serves(&pool);
    // The housekeeper survived it too: once the clock works again, idle
    // workers expire.
    clock.broken.store(false, Ordering::SeqCst);
    wait_until("idle worker expired", || pool.stats().workers == 0);
    shut(&pool);
}

/// A waker whose wake panics.
struct BombWaker;

impl Wake for BombWaker {
    fn wake(self: Arc<Self>) {
        panic!("waker bomb");
    }
}

#[test]
fn a_waker_that_panics() {
    let (b, seen) = reporting(1, 4);
    let pool = b.build().unwrap();
    let gate = Gate::new();
    let g = gate.clone();
    let mut h = pool
        .submit(move |_| {
            g.wait();
            9
        })
        .unwrap();
    let waker = Waker::from(Arc::new(BombWaker));
    let mut cx = Context::from_waker(&waker);
    assert!(std::pin::Pin::new(&mut h).poll(&mut cx).is_pending());
    // The worker finishes the job and wakes the task: the waker panics.
    gate.open();
    wait_until("outcome delivered", || h.is_finished());
    still_serves(&pool);
    wait_until("waker panic reported", || has_report(&seen, "waker bomb"));
    assert_eq!(std::pin::Pin::new(&mut h).poll(&mut cx), Poll::Ready(Ok(9)));
    assert_eq!(shut(&pool).completed, 2);
}

use std::future::Future;

/// A job's captures whose drop panics, cancelled by `shutdown_now` while a
/// submitter is blocked on the full pool: the blocked submitter is told
/// `Closed` and the books balance.
#[test]
fn shutdown_now_cancels_panicking_captures_and_frees_blocked_submitters() {
    let (b, _seen) = reporting(1, 1);
    let pool = b.build().unwrap();
    let gate = Gate::new();
    let g = gate.clone();
    pool.execute(move |_| g.wait()).unwrap();
    wait_until("worker busy", || pool.stats().running == 1);
    let bomb = DropBomb;
    let queued = pool.submit(move |_| drop(bomb)).unwrap();
    let p2 = pool.clone();
    let blocked = std::thread::spawn(move || p2.submit(|_| 1).map(|h| h.join()));
    wait_until("submitter blocked", || pool.stats().blocked == 1);
    let closer = {
        let p = pool.clone();
        std::thread::spawn(move || p.shutdown_now(LONG))
    };
    assert_eq!(queued.join(), Err(JobError::Cancelled));
    let got = blocked.join().unwrap();
    assert_eq!(got.err(), Some(SubmitError::Closed));
    gate.open();
    let report = closer.join().unwrap();
    assert_eq!(report.cancelled, 1);
    let s = pool.stats();
    common::pool_balanced(&s);
    assert_eq!(s.in_flight(), 0);
}

#[test]
fn a_factory_that_panics_once_is_retried_and_runs_the_queued_jobs() {
    quiet_planned_panics();
    let calls = Arc::new(AtomicUsize::new(0));
    let seen: Reports = Arc::default();
    let (c, s2) = (calls.clone(), seen.clone());
    let pool = Pool::builder()
        .capacity(1)
        .panic_handler(move |m| s2.lock().unwrap().push(m.to_owned()))
        .worker_state(move || {
            if c.fetch_add(1, Ordering::SeqCst) == 0 {
                panic!("factory bomb");
            }
            7u32
        })
        .build()
        .unwrap();
    // No second submit is needed: the worker retries its factory.
    let a = pool.submit(|s: &mut u32| *s).unwrap();
    match a.join_timeout(LONG) {
        Ok(r) => assert_eq!(r, Ok(7)),
        Err(_) => panic!("the queued job was stranded"),
    }
    assert!(has_report(&seen, "worker state factory panicked: factory bomb"));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    shut(&pool);
}

#[test]
fn a_factory_that_always_panics_ends_every_job_at_shutdown() {
    quiet_planned_panics();
    for racing_submitters in [false, true] {
        let pool = Pool::builder()
            .capacity(2)
            .queue_capacity(64)
            .nonblocking(true)
            .panic_handler(|_| {})
            .worker_state(|| -> u32 { panic!("factory bomb") })
            .build()
            .unwrap();
        let mut hs: Vec<_> = (0..8).map(|_| pool.submit(|s: &mut u32| *s).unwrap()).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let racers: Vec<_> = (0..if racing_submitters { 2 } else { 0 })
            .map(|_| {
                let (p, stop) = (pool.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut mine = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        match p.submit(|s: &mut u32| *s) {
                            Ok(h) => mine.push(h),
                            Err(SubmitError::Closed) => break,
                            Err(_) => std::thread::yield_now(),
                        }
                    }
                    mine
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(20));
        let report = pool.shutdown(LONG);
        stop.store(true, Ordering::Relaxed);
        for r in racers {
            hs.extend(r.join().unwrap());
        }
        assert_eq!(report.still_running, 0);
        for h in hs {
            match h.join_timeout(LONG) {
                Ok(r) => assert_eq!(r, Err(JobError::Cancelled)),
                Err(_) => panic!("a job was stranded"),
            }
        }
        let s = pool.stats();
        common::pool_balanced(&s);
        assert_eq!(s.completed, 0);
    }
}

#[test]
fn a_factory_that_panics_half_the_time_under_load_with_a_concurrent_shutdown() {
    quiet_planned_panics();
    for round in 0..20u64 {
        let n = Arc::new(AtomicU64::new(round));
        let pool = Pool::builder()
            .capacity(3)
            .queue_capacity(32)
            .idle_expiry(Duration::from_millis(1))
            .housekeeping_interval(Duration::from_millis(1))
            .panic_handler(|_| {})
            .worker_state(move || {
                let k = n.fetch_add(1, Ordering::SeqCst);
                if k.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 63 == 1 {
                    panic!("factory bomb {k}");
                }
                k
            })
            .build()
            .unwrap();
        let submitters: Vec<_> = (0..2)
            .map(|_| {
                let p = pool.clone();
                std::thread::spawn(move || {
                    let mut hs = Vec::new();
                    for i in 0..200u64 {
                        match p.submit_timeout(Duration::from_millis(5), move |_: &mut u64| i) {
                            Ok(h) => hs.push((i, h)),
                            Err(SubmitError::Closed) => break,
                            Err(_) => {}
                        }
                    }
                    hs
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(round % 5));
        let report = pool.shutdown(LONG);
        assert_eq!(report.still_running, 0);
        for s in submitters {
            for (i, h) in s.join().unwrap() {
                match h.join_timeout(LONG) {
                    Ok(Ok(v)) => assert_eq!(v, i),
                    Ok(Err(e)) => assert_eq!(e, JobError::Cancelled),
                    Err(_) => panic!("a handle never resolved (round {round})"),
                }
            }
        }
        let s = pool.stats();
        common::pool_balanced(&s);
        assert_eq!(s.workers, 0);
    }
}

#[test]
fn shutdown_from_a_job_drains_the_jobs_queued_behind_it() {
    let pool = Pool::builder().capacity(1).queue_capacity(8).build().unwrap();
    let gate = Gate::new();
    let (p2, g) = (pool.clone(), gate.clone());
    let closer = pool
        .submit(move |_| {
            g.wait();
            p2.shutdown(LONG)
        })
        .unwrap();
    let behind: Vec<_> = (0..5).map(|i| pool.submit(move |_| i).unwrap()).collect();
    gate.open();
    let report = closer.join().unwrap();
    // The calling job and the five behind it are still to finish.
    assert_eq!(report.still_running, 6);
    assert_eq!(report.cancelled, 0);
    for (i, h) in behind.into_iter().enumerate() {
        assert_eq!(h.join(), Ok(i));
    }
    assert!(pool.is_closed());
    assert_eq!(pool.shutdown(LONG).still_running, 0);
    assert_eq!(pool.stats().completed, 6);
}

/// Stats read while jobs complete and get cancelled never go backwards, and
/// shutdown reports never underflow (this file's tests run in debug builds,
/// where an underflow panics), also when shutdown races shutdown_now.
#[test]
fn derived_counters_never_go_backwards_and_shutdowns_race_safely() {
    for round in 0..30 {
        let pool = Pool::builder()
            .capacity(2)
            .queue_capacity(64)
            .nonblocking(true)
            .build()
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let reads = Arc::new(AtomicU64::new(0));
        let reader = {
            let (p, stop, reads) = (pool.clone(), stop.clone(), reads.clone());
            std::thread::spawn(move || {
                let mut last = p.stats();
                while !stop.load(Ordering::Relaxed) {
                    let s = p.stats();
                    assert!(
                        s.completed >= last.completed,
                        "completed went back: {last:?} -> {s:?}"
                    );
                    assert!(s.cancelled >= last.cancelled, "{last:?} -> {s:?}");
                    last = s;
                    reads.fetch_add(1, Ordering::Relaxed);
                }
            })
        };
        wait_until("the reader reads", || reads.load(Ordering::Relaxed) > 0);
        let mut hs = Vec::new();
        for i in 0..60u64 {
            if let Ok(h) = pool.submit(move |_| {
                std::hint::black_box(i);
            }) {
                hs.push(h);
            }
        }
        for h in hs.iter().step_by(3) {
            h.cancel();
        }
        let (a, b) = (pool.clone(), pool.clone());
        let t1 = std::thread::spawn(move || a.shutdown(LONG));
        let t2 = std::thread::spawn(move || {
            if round % 2 == 0 {
                b.shutdown_now(LONG)
            } else {
                b.shutdown(LONG)
            }
        });
        let (r1, r2) = (t1.join().unwrap(), t2.join().unwrap());
        for h in hs {
            let _ = h.join();
        }
        stop.store(true, Ordering::Relaxed);
        reader.join().unwrap();
        let s = pool.stats();
        common::pool_balanced(&s);
        // The two shutdowns overlap, so each may count the same outcomes.
        for r in [r1, r2] {
            assert!(r.completed <= s.completed + s.panicked + s.expired, "{r:?} {s:?}");
            assert!(r.cancelled <= s.cancelled, "{r:?} {s:?}");
            assert_eq!(r.still_running, 0);
        }
    }
}

/// Four workers whose factory is slow start side by side: every factory is
/// in progress at once (each waits, bounded, for all four to have begun).
#[test]
fn slow_factories_start_side_by_side() {
    let started = Arc::new(AtomicUsize::new(0));
    let all_met = Arc::new(AtomicUsize::new(0));
    let (s2, m2) = (started.clone(), all_met.clone());
    let pool = Pool::builder()
        .capacity(4)
        .queue_capacity(8)
        .worker_state(move || {
            s2.fetch_add(1, Ordering::SeqCst);
            let limit = Instant::now() + Duration::from_secs(2);
            while s2.load(Ordering::SeqCst) < 4 && Instant::now() < limit {
                std::thread::sleep(Duration::from_millis(1));
            }
            if s2.load(Ordering::SeqCst) >= 4 {
                m2.fetch_add(1, Ordering::SeqCst);
            }
        })
        .build()
        .unwrap();
    let hs: Vec<_> = (0..4)
        .map(|i| {
            pool.submit(move |_| {
                std::thread::sleep(Duration::from_millis(20));
                i
            })
            .unwrap()
        })
        .collect();
    for (i, h) in hs.into_iter().enumerate() {
        assert_eq!(h.join(), Ok(i));
    }
    // Shutdown waits for every worker, so every factory has returned.
    shut(&pool);
    assert_eq!(started.load(Ordering::SeqCst), 4);
    assert_eq!(
        all_met.load(Ordering::SeqCst),
        4,
        "the workers' factories ran one after another, not side by side"
    );
}

/// Growth over a backlog (by `tune`, as the autoscaler does) starts the new
/// workers side by side too, without waiting for new submits.
#[test]
fn growth_over_a_backlog_starts_workers_side_by_side() {
    let started = Arc::new(AtomicUsize::new(0));
    let all_met = Arc::new(AtomicUsize::new(0));
    let (s2, m2) = (started.clone(), all_met.clone());
    let pool = Pool::builder()
        .capacity(1)
        .queue_capacity(8)
        .worker_state(move || {
            s2.fetch_add(1, Ordering::SeqCst);
            let limit = Instant::now() + Duration::from_secs(2);
            while s2.load(Ordering::SeqCst) < 3 && Instant::now() < limit {
                std::thread::sleep(Duration::from_millis(1));
            }
            if s2.load(Ordering::SeqCst) >= 3 {
                m2.fetch_add(1, Ordering::SeqCst);
            }
        })
        .build()
        .unwrap();
    let hs: Vec<_> = (0..3).map(|i| pool.submit(move |_| i).unwrap()).collect();
    wait_until("first worker starting", || started.load(Ordering::SeqCst) == 1);
    pool.tune(3).unwrap();
    for (i, h) in hs.into_iter().enumerate() {
        assert_eq!(h.join(), Ok(i));
    }
    // Shutdown waits for every worker, so every factory has returned.
    shut(&pool);
    assert_eq!(
        all_met.load(Ordering::SeqCst),
        3,
        "the new workers started one after another"
    );
}
