//! Model checks of the pool's submit / take / complete / shutdown core.
//! Run with: RUSTFLAGS="--cfg loom" cargo test --release --test loom_pool
#![cfg(loom)]

use std::time::Duration;

use facepool::pool::{JobError, Pool, SubmitError};

fn pool(capacity: usize, queue: usize) -> Pool {
    Pool::builder()
        .capacity(capacity)
        .queue_capacity(queue)
        .keep_idle_workers()
        .spin(0)
        .build()
        .unwrap()
}

const FOREVER: Duration = Duration::from_secs(3600);

/// A job submitted to a lazily started worker runs exactly once and its
/// result reaches the handle; shutdown then joins the worker.
#[test]
fn submit_join_shutdown() {
    loom::model(|| {
        let p = pool(1, 1);
        let h = p.submit(|_| 7).unwrap();
        assert_eq!(h.join(), Ok(7));
        let r = p.shutdown(FOREVER);
        assert_eq!(r.still_running, 0);
        let s = p.stats();
        assert_eq!((s.completed, s.workers), (1, 0));
    });
}

/// Two submitters race a single worker; both jobs end, none is lost, and a
/// worker parked between them is woken (no lost wake-up).
#[test]
fn two_submitters_one_worker() {
    loom::model(|| {
        let p = pool(1, 2);
        let p2 = p.clone();
        let t = loom::thread::spawn(move || p2.submit(|_| 1).unwrap().join());
        let mine = p.submit(|_| 2).unwrap().join();
        assert_eq!(mine, Ok(2));
        assert_eq!(t.join().unwrap(), Ok(1));
        p.shutdown(FOREVER);
        assert_eq!(p.stats().completed, 2);
    });
}

/// Shutdown racing a submit: the submit is either refused with `Closed` or
/// accepted and then run (drained); it is never accepted and lost.
#[test]
fn shutdown_races_submit() {
    loom::model(|| {
        let p = pool(1, 1);
        let p2 = p.clone();
        let t = loom::thread::spawn(move || match p2.submit(|_| 5) {
            Ok(h) => h.join().map(Some),
            Err(SubmitError::Closed) => Ok(None),
            Err(e) => panic!("unexpected {e:?}"),
        });
        let report = p.shutdown(FOREVER);
        let got = t.join().unwrap();
        assert_eq!(report.still_running, 0);
        let s = p.stats();
        match got {
            Ok(Some(5)) => assert_eq!((s.completed, s.rejected), (1, 0)),
            Ok(None) => assert_eq!((s.completed, s.rejected), (0, 1)),
            other => panic!("unexpected outcome {other:?}"),
        }
    });
}

/// A cancel racing the worker decides exactly one outcome.
#[test]
fn cancel_races_start() {
    loom::model(|| {
        let p = pool(1, 1);
        let h = p.submit(|_| 3).unwrap();
        let cancelled = h.cancel();
        let r = h.join();
        if cancelled {
            assert_eq!(r, Err(JobError::Cancelled));
        } else {
            assert_eq!(r, Ok(3));
        }
        p.shutdown(FOREVER);
        let s = p.stats();
        assert_eq!(s.completed + s.cancelled, 1);
    });
}

/// shutdown_now against a queued job: it either ran or was cancelled.
#[test]
fn shutdown_now_cancels_or_runs() {
    loom::model(|| {
        let p = pool(1, 2);
        let h = p.submit(|_| 1).unwrap();
        p.shutdown_now(FOREVER);
        match h.join() {
            Ok(1) | Err(JobError::Cancelled) => {}
            other => panic!("unexpected {other:?}"),
        }
        let s = p.stats();
        assert_eq!(s.completed + s.cancelled, 1);
    });
}

/// Two workers started on demand, two jobs, then a draining shutdown: the
/// dispatch that spawns and wakes several workers loses nothing.
#[test]
fn two_workers_drain_on_shutdown() {
    loom::model(|| {
        let p = pool(2, 2);
        let a = p.submit(|_| 1).unwrap();
        let b = p.submit(|_| 2).unwrap();
        let report = p.shutdown(FOREVER);
        assert_eq!(report.still_running, 0);
        assert_eq!((a.join(), b.join()), (Ok(1), Ok(2)));
        let s = p.stats();
        assert_eq!((s.completed, s.workers), (2, 0));
    });
}

/// A worker started at build time parks; a submit racing its park wakes it
/// (the submitter reads the parked count after its push, the worker looks at
/// the queue after counting itself parked: one of them sees the other).
#[test]
fn submit_races_park() {
    loom::model(|| {
        let p = Pool::builder()
            .capacity(1)
            .queue_capacity(1)
            .prestart(true)
            .keep_idle_workers()
            .spin(0)
            .build()
            .unwrap();
        assert_eq!(p.submit(|_| 4).unwrap().join(), Ok(4));
        p.shutdown(FOREVER);
        assert_eq!(p.stats().completed, 1);
    });
}

/// A submitter blocked on a full pool (one place, no queue) is let in when
/// the running job ends: its re-check after registering and the worker's
/// look at the blocked flag after counting the outcome cannot both miss.
#[test]
fn blocked_submitter_is_let_in() {
    loom::model(|| {
        let p = pool(1, 0);
        let first = p.submit(|_| 1).unwrap();
        let p2 = p.clone();
        let t = loom::thread::spawn(move || p2.submit(|_| 2).unwrap().join());
        assert_eq!(first.join(), Ok(1));
        assert_eq!(t.join().unwrap(), Ok(2));
        p.shutdown(FOREVER);
        let s = p.stats();
        assert_eq!((s.completed, s.rejected, s.blocked), (2, 0, 0));
    });
}

/// `tune` shrinking the pool while a submit races two parking workers: the
/// job runs exactly once, the surplus worker leaves, and no worker is left
/// parked with the job queued.
#[test]
fn tune_shrinks_against_submit_and_park() {
    // Four threads: explored with two preemptions (three takes over ten
    // minutes).
    let mut model = loom::model::Builder::new();
    model.preemption_bound = Some(2);
    model.check(|| {
        let p = Pool::builder()
            .capacity(2)
            .queue_capacity(1)
            .prestart(true)
            .keep_idle_workers()
            .spin(0)
            .build()
            .unwrap();
        let p2 = p.clone();
        let t = loom::thread::spawn(move || p2.tune(1).unwrap());
        assert_eq!(p.submit(|_| 6).unwrap().join(), Ok(6));
        t.join().unwrap();
        assert_eq!(p.shutdown(FOREVER).still_running, 0);
        let s = p.stats();
        assert_eq!((s.completed, s.workers, s.capacity), (1, 0, 1));
    });
}

/// Idle expiry (on a manual clock) retiring the only worker while a submit
/// races it: the job still runs (on that worker, or on one started for it).
#[test]
fn reap_races_submit() {
    loom::model(|| {
        let clock = std::sync::Arc::new(facepool::pool::ManualClock::new());
        let p = Pool::builder()
            .capacity(1)
            .queue_capacity(1)
            .prestart(true)
            .clock(clock.clone())
            .idle_expiry(Duration::from_millis(1))
            .housekeeping_interval(Duration::ZERO)
            .spin(0)
            .build()
            .unwrap();
        clock.advance(Duration::from_millis(2));
        let p2 = p.clone();
        let t = loom::thread::spawn(move || p2.housekeep().0);
        assert_eq!(p.submit(|_| 8).unwrap().join(), Ok(8));
        let retired = t.join().unwrap();
        assert!(retired <= 1);
        assert_eq!(p.shutdown(FOREVER).still_running, 0);
        let s = p.stats();
        assert_eq!((s.completed, s.workers), (1, 0));
    });
}

/// Two submitters blocked on a full pool (one place, no queue): both are
/// let in as places free, one notification round at a time, none is lost.
#[test]
fn two_blocked_submitters() {
    // Four threads blocking on one another: explored with two preemptions
    // (a bound of three takes over ten minutes).
    let mut model = loom::model::Builder::new();
    model.preemption_bound = Some(2);
    model.check(|| {
        let p = pool(1, 0);
        let first = p.submit(|_| 1).unwrap();
        let (p2, p3) = (p.clone(), p.clone());
        let a = loom::thread::spawn(move || p2.submit(|_| 2).unwrap().join());
        let b = loom::thread::spawn(move || p3.submit(|_| 3).unwrap().join());
        assert_eq!(first.join(), Ok(1));
        assert_eq!(a.join().unwrap(), Ok(2));
        assert_eq!(b.join().unwrap(), Ok(3));
        p.shutdown(FOREVER);
        let s = p.stats();
        assert_eq!((s.completed, s.rejected, s.blocked), (3, 0, 0));
    });
}

/// A worker that spins (one round) before parking, racing a submit: the
/// spinning searcher, the park and the submitter's dispatch lose nothing.
#[test]
fn spinning_worker_races_submit() {
    loom::model(|| {
        let p = Pool::builder()
            .capacity(1)
            .queue_capacity(1)
            .prestart(true)
            .keep_idle_workers()
            .spin(1)
            .build()
            .unwrap();
        assert_eq!(p.submit(|_| 1).unwrap().join(), Ok(1));
        assert_eq!(p.submit(|_| 2).unwrap().join(), Ok(2));
        p.shutdown(FOREVER);
        assert_eq!(p.stats().completed, 2);
    });
}

/// `restart` racing `shutdown`: whichever wins, the pool ends consistent:
/// open and serving, or closed and refusing; its threads all accounted for.
#[test]
fn restart_races_shutdown() {
    loom::model(|| {
        let p = Pool::builder()
            .capacity(1)
            .queue_capacity(1)
            .min_workers(1)
            .keep_idle_workers()
            .spin(0)
            .build()
            .unwrap();
        let p2 = p.clone();
        let t = loom::thread::spawn(move || p2.restart().unwrap());
        p.shutdown(FOREVER);
        t.join().unwrap();
        match p.submit(|_| 9) {
            Ok(h) => {
                assert!(!p.is_closed());
                assert_eq!(h.join(), Ok(9));
            }
            Err(SubmitError::Closed) => assert!(p.is_closed()),
            Err(e) => panic!("unexpected {e:?}"),
        }
        assert_eq!(p.shutdown(FOREVER).still_running, 0);
        let s = p.stats();
        assert_eq!(s.workers, 0);
        assert_eq!(s.submitted, s.completed + s.rejected);
    });
}
