//! Behaviour of the worker pool, one test per promise.

use crate::common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Barrier, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use common::{wait_until, Gate};
use facepool::pool::{
    Balance, BuildError, Decision, IdleOrder, JobError, JobOptions, ManualClock, MultiPool, PolicyError,
    Pool, ScalePolicy, SubmitError,
};

const LONG: Duration = Duration::from_secs(30);

fn small(capacity: usize, queue: usize) -> Pool {
    Pool::builder()
        .capacity(capacity)
        .queue_capacity(queue)
        .build()
        .unwrap()
}

/// Fills all `n` workers with jobs that wait on the returned gate.
fn occupy(pool: &Pool, n: usize) -> Gate {
    let gate = Gate::new();
    for _ in 0..n {
        let g = gate.clone();
        pool.execute(move |_| g.wait()).unwrap();
    }
    wait_until("workers busy", || pool.stats().running == n);
    gate
}

#[test]
fn submit_returns_results() {
    let pool = small(2, 16);
    let hs: Vec<_> = (0..10u64).map(|i| pool.submit(move |_| i * 2).unwrap()).collect();
    let got: Vec<u64> = hs.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(got, (0..10).map(|i| i * 2).collect::<Vec<_>>());
    let s = pool.stats();
    assert_eq!((s.submitted, s.completed, s.rejected), (10, 10, 0));
}

#[test]
fn try_submit_is_overloaded_when_workers_and_queue_are_full() {
    let pool = small(1, 1);
    let gate = occupy(&pool, 1);
    let queued = pool.try_submit(|_| 1).unwrap();
    assert_eq!(pool.try_submit(|_| 2).unwrap_err(), SubmitError::Overloaded);
    assert_eq!(pool.try_execute(|_| ()).unwrap_err(), SubmitError::Overloaded);
    let s = pool.stats();
    assert_eq!((s.waiting, s.running, s.rejected), (1, 1, 2));
    gate.open();
    assert_eq!(queued.join(), Ok(1));
}

#[test]
fn queue_capacity_zero_accepts_only_what_workers_can_take() {
    let pool = small(2, 0);
    let gate = occupy(&pool, 2);
    assert_eq!(pool.try_submit(|_| ()).unwrap_err(), SubmitError::Overloaded);
    gate.open();
    wait_until("workers free", || pool.stats().running == 0);
    assert_eq!(pool.try_submit(|_| 5).unwrap().join(), Ok(5));
}

#[test]
fn nonblocking_submit_refuses_instead_of_blocking() {
    let pool = Pool::builder()
        .capacity(1)
        .queue_capacity(0)
        .nonblocking(true)
        .build()
        .unwrap();
    let gate = occupy(&pool, 1);
    assert_eq!(pool.submit(|_| ()).unwrap_err(), SubmitError::Overloaded);
    assert_eq!(pool.execute(|_| ()).unwrap_err(), SubmitError::Overloaded);
    gate.open();
}

#[test]
fn blocking_submit_waits_for_room() {
    let pool = small(1, 1);
    let gate = occupy(&pool, 1);
    let _queued = pool.submit(|_| ()).unwrap();
    let p2 = pool.clone();
    let (tx, rx) = mpsc::channel();
    let submitter = std::thread::spawn(move || {
        let h = p2.submit(|_| 7).unwrap();
        tx.send(()).unwrap();
        h.join()
    });
    wait_until("submitter blocked", || pool.stats().blocked == 1);
    assert!(rx.try_recv().is_err(), "submit returned while the pool was full");
    gate.open();
    assert_eq!(submitter.join().unwrap(), Ok(7));
}

#[test]
fn blocking_submit_times_out() {
    let pool = Pool::builder()
        .capacity(1)
        .queue_capacity(0)
        .submit_timeout(Duration::from_millis(20))
        .build()
        .unwrap();
    let gate = occupy(&pool, 1);
    assert_eq!(
        pool.submit(|_| ()).unwrap_err(),
        SubmitError::Timeout(Duration::from_millis(20))
    );
    assert!(matches!(
        pool.submit_timeout(Duration::from_millis(5), |_| ()),
        Err(SubmitError::Timeout(_))
    ));
    assert_eq!(pool.stats().rejected, 2);
    assert_eq!(pool.stats().blocked, 0);
    gate.open();
}

#[test]
fn max_blocked_submitters_is_enforced() {
    let pool = Pool::builder()
        .capacity(1)
        .queue_capacity(0)
        .max_blocked_submitters(1)
        .build()
        .unwrap();
    let gate = occupy(&pool, 1);
    let p2 = pool.clone();
    let blocked = std::thread::spawn(move || p2.submit(|_| 3).map(|h| h.join()));
    wait_until("one submitter blocked", || pool.stats().blocked == 1);
    assert_eq!(pool.submit(|_| 4).unwrap_err(), SubmitError::Overloaded);
    gate.open();
    assert_eq!(blocked.join().unwrap(), Ok(Ok(3)));
}

#[test]
fn shutdown_wakes_blocked_submitters_with_closed() {
    let pool = small(1, 0);
    let gate = occupy(&pool, 1);
    let p2 = pool.clone();
    let blocked = std::thread::spawn(move || p2.submit(|_| ()).map(drop));
    wait_until("submitter blocked", || pool.stats().blocked == 1);
    let p3 = pool.clone();
    let closer = std::thread::spawn(move || p3.shutdown(LONG));
    assert_eq!(blocked.join().unwrap(), Err(SubmitError::Closed));
    gate.open();
    assert_eq!(closer.join().unwrap().still_running, 0);
}

#[test]
fn deadline_passed_before_start_expires_without_running() {
    let clock = Arc::new(ManualClock::new());
    let pool = Pool::builder()
        .capacity(1)
        .clock(clock.clone())
        .keep_idle_workers()
        .build()
        .unwrap();
    let gate = occupy(&pool, 1);
    let ran = Arc::new(AtomicUsize::new(0));
    let r = ran.clone();
    let deadline = facepool::pool::Clock::now(&*clock) + Duration::from_millis(10);
    let late = pool
        .submit_with(JobOptions::deadline(deadline), move |_| {
            r.fetch_add(1, Ordering::SeqCst);
        })
        .unwrap();
    let on_time = pool
        .submit_with(JobOptions::deadline(deadline + Duration::from_secs(60)), |_| 9)
        .unwrap();
    clock.advance(Duration::from_millis(20));
    gate.open();
    assert_eq!(late.join(), Err(JobError::Expired));
    assert_eq!(on_time.join(), Ok(9));
    assert_eq!(ran.load(Ordering::SeqCst), 0);
    assert_eq!(pool.stats().expired, 1);
}

#[test]
fn cancel_drops_a_queued_job_but_not_a_running_one() {
    let pool = small(1, 4);
    let started = Gate::new();
    let gate = Gate::new();
    let (s, g) = (started.clone(), gate.clone());
    let running = pool
        .submit(move |_| {
            s.open();
            g.wait();
            1
        })
        .unwrap();
    started.wait();
    let ran = Arc::new(AtomicUsize::new(0));
    let r = ran.clone();
    let queued = pool.submit(move |_| r.fetch_add(1, Ordering::SeqCst)).unwrap();
    assert!(!running.cancel(), "a running job cannot be cancelled");
    assert!(queued.cancel());
    assert!(!queued.cancel(), "cancel is decided once");
    assert!(queued.is_finished() && queued.is_cancelled());
    gate.open();
    assert_eq!(running.join(), Ok(1));
    assert_eq!(queued.join(), Err(JobError::Cancelled));
    wait_until("queue drained", || pool.stats().cancelled == 1);
    assert_eq!(ran.load(Ordering::SeqCst), 0);
}

#[test]
fn dropping_a_handle_cancels_unstarted_work_and_detach_keeps_it() {
    let pool = small(1, 4);
    let gate = occupy(&pool, 1);
    let ran = Arc::new(AtomicUsize::new(0));
    let (r1, r2) = (ran.clone(), ran.clone());
    drop(pool.submit(move |_| r1.fetch_add(1, Ordering::SeqCst)).unwrap());
    pool.submit(move |_| r2.fetch_add(10, Ordering::SeqCst))
        .unwrap()
        .detach();
    gate.open();
    pool.shutdown(LONG);
    assert_eq!(ran.load(Ordering::SeqCst), 10);
    let s = pool.stats();
    assert_eq!((s.cancelled, s.completed), (1, 2));
}

#[test]
fn panics_are_isolated_and_reported() {
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let s2 = seen.clone();
    let pool = Pool::builder()
        .capacity(1)
        .panic_handler(move |m| s2.lock().unwrap().push(m.to_owned()))
        .build()
        .unwrap();
    let bad = pool.submit(|_| -> u32 { panic!("boom {}", 7) }).unwrap();
    assert_eq!(bad.join(), Err(JobError::Panicked("boom 7".into())));
    pool.execute(|_| panic!("static boom")).unwrap();
    // The single worker survived both panics.
    assert_eq!(pool.submit(|_| 5).unwrap().join(), Ok(5));
    assert_eq!(pool.stats().panicked, 2);
    assert_eq!(pool.stats().spawn_failures, 0);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen, vec!["boom 7".to_owned(), "static boom".to_owned()]);
}

struct Flag(std::thread::Thread);
impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let waker = Waker::from(Arc::new(Flag(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

#[test]
fn handles_are_futures() {
    let pool = small(2, 8);
    let gate = Gate::new();
    let g = gate.clone();
    let h = pool
        .submit(move |_| {
            g.wait();
            "done"
        })
        .unwrap();
    let opener = std::thread::spawn(move || gate.open());
    assert_eq!(block_on(h), Ok("done"));
    opener.join().unwrap();
    // Many futures joined together.
    let hs: Vec<_> = (0..50).map(|i| pool.submit(move |_| i).unwrap()).collect();
    let total: i32 = block_on(async {
        let mut t = 0;
        for h in hs {
            t += h.await.unwrap();
        }
        t
    });
    assert_eq!(total, (0..50).sum::<i32>());
}

#[test]
fn join_timeout_gives_the_handle_back() {
    let pool = small(1, 1);
    let gate = Gate::new();
    let g = gate.clone();
    let h = pool
        .submit(move |_| {
            g.wait();
            3
        })
        .unwrap();
    let h = match h.join_timeout(Duration::from_millis(5)) {
        Err(h) => h,
        Ok(r) => panic!("finished early: {r:?}"),
    };
    assert!(!h.is_finished());
    gate.open();
    assert_eq!(h.join_timeout(LONG).ok(), Some(Ok(3)));
}

#[test]
fn worker_state_is_created_once_per_thread() {
    let made = Arc::new(AtomicUsize::new(0));
    let m = made.clone();
    let pool = Pool::builder()
        .capacity(2)
        .worker_state(move || {
            m.fetch_add(1, Ordering::SeqCst);
            (std::thread::current().id(), 0u32)
        })
        .build()
        .unwrap();
    let hs: Vec<_> = (0..200)
        .map(|_| {
            pool.submit(|st: &mut (std::thread::ThreadId, u32)| {
                st.1 += 1;
                (st.0 == std::thread::current().id(), st.1)
            })
            .unwrap()
        })
        .collect();
    let mut max_uses = 0;
    for h in hs {
        let (same_thread, uses) = h.join().unwrap();
        assert!(same_thread, "state used off its own thread");
        max_uses = max_uses.max(uses);
    }
    let made = made.load(Ordering::SeqCst);
    assert!((1..=2).contains(&made), "factory ran {made} times for 2 workers");
    assert!(max_uses > 1, "state was not kept between jobs");
}

#[test]
fn tune_grows_at_once() {
    let pool = small(1, 16);
    // Three jobs that can only finish together: impossible with one worker.
    let barrier = Arc::new(Barrier::new(3));
    let hs: Vec<_> = (0..3)
        .map(|_| {
            let b = barrier.clone();
            pool.submit(move |_| {
                b.wait();
            })
            .unwrap()
        })
        .collect();
    wait_until("one running", || pool.stats().running == 1);
    pool.tune(3).unwrap();
    for h in hs {
        assert_eq!(h.join_timeout(LONG).ok(), Some(Ok(())));
    }
    assert_eq!(pool.stats().capacity, 3);
    assert_eq!(pool.stats().resizes, 1);
    assert!(pool.tune(0).is_err());
}

#[test]
fn tune_shrinks_after_current_jobs() {
    let (tx, rx) = mpsc::channel();
    let pool = Pool::builder()
        .capacity(4)
        .on_thread_exit(move |id| tx.send(id).unwrap())
        .build()
        .unwrap();
    let gate = occupy(&pool, 4);
    pool.tune(2).unwrap();
    // Surplus workers finish their current job first.
    assert_eq!(pool.stats().running, 4);
    assert!(rx.try_recv().is_err());
    gate.open();
    rx.recv_timeout(LONG).unwrap();
    rx.recv_timeout(LONG).unwrap();
    wait_until("two workers left", || pool.stats().workers == 2);
    // And the pool goes on with two.
    let hs: Vec<_> = (0..20).map(|i| pool.submit(move |_| i).unwrap()).collect();
    assert_eq!(hs.into_iter().map(|h| h.join().unwrap()).sum::<i32>(), 190);
    assert!(pool.stats().workers <= 2);
}

#[test]
fn idle_workers_above_minimum_expire() {
    let clock = Arc::new(ManualClock::new());
    let (tx, rx) = mpsc::channel();
    let pool = Pool::builder()
        .capacity(4)
        .min_workers(1)
        .idle_expiry(Duration::from_secs(10))
        .housekeeping_interval(Duration::ZERO)
        .clock(clock.clone())
        .on_thread_exit(move |id| tx.send(id).unwrap())
        .build()
        .unwrap();
    let gate = occupy(&pool, 4);
    gate.open();
    wait_until("all idle", || pool.stats().idle == 4);
    assert_eq!(pool.housekeep().0, 0, "nothing has expired yet");
    clock.advance(Duration::from_secs(9));
    assert_eq!(pool.housekeep().0, 0, "9 s < 10 s expiry");
    clock.advance(Duration::from_secs(2));
    assert_eq!(pool.housekeep().0, 3, "all but min_workers expire");
    for _ in 0..3 {
        rx.recv_timeout(LONG).unwrap();
    }
    assert_eq!(pool.stats().workers, 1);
    clock.advance(Duration::from_secs(60));
    assert_eq!(pool.housekeep().0, 0, "min_workers are kept warm");
    // The pool grows again on demand.
    let gate = occupy(&pool, 3);
    gate.open();
}

#[test]
fn autoscaler_grows_on_high_and_shrinks_on_low_watermark() {
    let clock = Arc::new(ManualClock::new());
    let policy = ScalePolicy {
        min: 1,
        max: 3,
        low_watermark: 1,
        high_watermark: 2,
        step: 1,
        cooldown: Duration::from_secs(1),
        sample_interval: Duration::from_millis(100),
        sustain: 2,
        downstream_high_watermark: None,
    };
    let pool = Pool::builder()
        .capacity(1)
        .autoscale(policy)
        .housekeeping_interval(Duration::ZERO)
        .clock(clock.clone())
        .build()
        .unwrap();
    let gate = occupy(&pool, 1);
    let queued: Vec<_> = (0..6)
        .map(|_| {
            let g = gate.clone();
            pool.submit(move |_| g.wait()).unwrap()
        })
        .collect();
    let tick = |pool: &Pool, clock: &ManualClock| {
        clock.advance(Duration::from_millis(100));
        pool.housekeep().1
    };
    assert_eq!(tick(&pool, &clock), Decision::Hold, "one sample is not sustained");
    assert_eq!(tick(&pool, &clock), Decision::Grow(2));
    wait_until("grown", || pool.stats().running == 2);
    assert_eq!(tick(&pool, &clock), Decision::Hold);
    assert_eq!(tick(&pool, &clock), Decision::Hold, "cooldown");
    for _ in 0..8 {
        tick(&pool, &clock);
    }
    assert_eq!(pool.stats().capacity, 3, "grew again after the cooldown");
    assert_eq!(pool.stats().capacity, 3);
    gate.open();
    for h in queued {
        h.join().unwrap();
    }
    wait_until("drained", || pool.stats().running == 0);
    let mut shrunk = 0;
    for _ in 0..40 {
        if let Decision::Shrink(_) = tick(&pool, &clock) {
            shrunk += 1;
        }
    }
    let s = pool.stats();
    assert_eq!((shrunk, s.capacity), (2, 1), "shrinks to min and stops there");
    assert_eq!((s.autoscale_grows, s.autoscale_shrinks, s.resizes), (2, 2, 4));
}

#[test]
fn autoscaler_holds_growth_while_the_downstream_is_full() {
    let clock = Arc::new(ManualClock::new());
    let downstream = Arc::new(AtomicUsize::new(100));
    let d2 = downstream.clone();
    let policy = ScalePolicy {
        low_watermark: 0,
        high_watermark: 2,
        cooldown: Duration::ZERO,
        sustain: 2,
        downstream_high_watermark: Some(8),
        ..ScalePolicy::new(1, 3)
    };
    let pool = Pool::builder()
        .capacity(1)
        .autoscale(policy)
        .downstream(move || d2.load(Ordering::SeqCst))
        .housekeeping_interval(Duration::ZERO)
        .clock(clock.clone())
        .build()
        .unwrap();
    let gate = occupy(&pool, 1);
    let queued: Vec<_> = (0..6)
        .map(|_| {
            let g = gate.clone();
            pool.submit(move |_| g.wait()).unwrap()
        })
        .collect();
    let tick = || {
        clock.advance(Duration::from_millis(100));
        pool.housekeep().1
    };
    // Jobs wait here, but more waits downstream than its mark: the
    // downstream is the bottleneck and the pool does not grow.
    for i in 0..6 {
        assert_eq!(tick(), Decision::Hold, "tick {i}");
    }
    downstream.store(3, Ordering::SeqCst);
    assert_eq!(tick(), Decision::Grow(2), "the downstream drained");
    assert_eq!(pool.stats().autoscale_grows, 1);
    gate.open();
    for h in queued {
        h.join().unwrap();
    }
}

#[test]
fn shutdown_drains_the_queue() {
    let pool = small(1, 100);
    let gate = occupy(&pool, 1);
    let hs: Vec<_> = (0..50).map(|i| pool.submit(move |_| i).unwrap()).collect();
    let p2 = pool.clone();
    let closer = std::thread::spawn(move || p2.shutdown(LONG));
    wait_until("closed", || pool.is_closed());
    assert_eq!(pool.try_submit(|_| 0).unwrap_err(), SubmitError::Closed);
    gate.open();
    let report = closer.join().unwrap();
    assert_eq!(
        (report.completed, report.cancelled, report.still_running),
        (51, 0, 0)
    );
    for (i, h) in hs.into_iter().enumerate() {
        assert_eq!(h.join(), Ok(i));
    }
    assert_eq!(pool.stats().workers, 0);
}

#[test]
fn shutdown_timeout_cancels_queued_and_reports_running() {
    let pool = small(1, 10);
    let gate = occupy(&pool, 1);
    let hs: Vec<_> = (0..5).map(|_| pool.submit(|_| ()).unwrap()).collect();
    let report = pool.shutdown(Duration::from_millis(20));
    assert_eq!(
        (report.completed, report.cancelled, report.still_running),
        (0, 5, 1)
    );
    for h in hs {
        assert_eq!(h.join(), Err(JobError::Cancelled));
    }
    gate.open();
    let again = pool.shutdown(LONG);
    assert_eq!((again.cancelled, again.still_running), (0, 0), "idempotent");
    assert_eq!(pool.stats().completed, 1);
}

#[test]
fn shutdown_now_cancels_what_has_not_started() {
    let pool = small(1, 10);
    let gate = occupy(&pool, 1);
    let hs: Vec<_> = (0..5).map(|_| pool.submit(|_| ()).unwrap()).collect();
    let p2 = pool.clone();
    let closer = std::thread::spawn(move || p2.shutdown_now(LONG));
    for h in hs {
        assert_eq!(h.join(), Err(JobError::Cancelled));
    }
    gate.open();
    let report = closer.join().unwrap();
    assert_eq!(
        (report.completed, report.cancelled, report.still_running),
        (1, 5, 0)
    );
}

#[test]
fn a_closed_pool_restarts() {
    let pool = Pool::builder().capacity(2).min_workers(1).build().unwrap();
    assert_eq!(pool.submit(|_| 1).unwrap().join(), Ok(1));
    pool.shutdown(LONG);
    assert!(pool.is_closed());
    assert_eq!(pool.submit(|_| 2).unwrap_err(), SubmitError::Closed);
    pool.restart().unwrap();
    assert!(!pool.is_closed());
    wait_until("min worker back", || pool.stats().workers == 1);
    assert_eq!(pool.submit(|_| 3).unwrap().join(), Ok(3));
}

#[test]
fn dropping_the_pool_drains_it() {
    let done = Arc::new(AtomicUsize::new(0));
    let pool = small(2, 1000);
    for _ in 0..500 {
        let d = done.clone();
        pool.execute(move |_| {
            d.fetch_add(1, Ordering::SeqCst);
        })
        .unwrap();
    }
    drop(pool);
    assert_eq!(done.load(Ordering::SeqCst), 500);
}

#[test]
fn dropping_the_last_handle_inside_a_job_does_not_hang() {
    let pool = small(1, 4);
    let p2 = pool.clone();
    let (tx, rx) = mpsc::channel();
    let gate = Gate::new();
    let g = gate.clone();
    pool.execute(move |_| {
        g.wait();
        drop(p2);
        tx.send(()).unwrap();
    })
    .unwrap();
    drop(pool);
    // The only handle left is inside the job; dropping it there must return.
    gate.open();
    rx.recv_timeout(LONG).unwrap();
}

#[test]
fn hooks_and_thread_names() {
    let (tx, rx) = mpsc::channel();
    let pool = Pool::builder()
        .capacity(1)
        .thread_name("decode")
        .on_thread_start(move |_| tx.send(std::thread::current().name().map(str::to_owned)).unwrap())
        .build()
        .unwrap();
    let name = pool
        .submit(|_| std::thread::current().name().map(str::to_owned))
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(name.as_deref(), Some("decode-1"));
    assert_eq!(rx.recv_timeout(LONG).unwrap().as_deref(), Some("decode-1"));
}

#[test]
fn prestart_and_min_workers_start_at_build() {
    let pool = Pool::builder().capacity(3).prestart(true).build().unwrap();
    wait_until("prestarted", || pool.stats().idle == 3);
    let pool = Pool::builder().capacity(3).min_workers(2).build().unwrap();
    wait_until("warm", || pool.stats().idle == 2);
    assert_eq!(pool.stats().workers, 2);
}

#[test]
fn fifo_idle_order_works() {
    let pool = Pool::builder()
        .capacity(2)
        .idle_order(IdleOrder::Fifo)
        .build()
        .unwrap();
    let hs: Vec<_> = (0..100).map(|i| pool.submit(move |_| i).unwrap()).collect();
    assert_eq!(hs.into_iter().map(|h| h.join().unwrap()).sum::<i32>(), 4950);
}

#[test]
fn build_validates() {
    assert!(matches!(
        Pool::builder().capacity(0).build(),
        Err(BuildError::ZeroCapacity)
    ));
    assert!(matches!(
        Pool::builder().capacity(2).min_workers(3).build(),
        Err(BuildError::MinAboveCapacity { min: 3, capacity: 2 })
    ));
    assert!(matches!(
        Pool::builder().idle_expiry(Duration::ZERO).build(),
        Err(BuildError::ZeroExpiry)
    ));
    let bad = ScalePolicy {
        step: 0,
        ..ScalePolicy::new(1, 4)
    };
    assert!(matches!(
        Pool::builder().autoscale(bad).build(),
        Err(BuildError::Policy(PolicyError::ZeroStep))
    ));
    // The starting capacity is clamped into the policy's range.
    let p = Pool::builder()
        .capacity(10)
        .autoscale(ScalePolicy::new(1, 4))
        .build()
        .unwrap();
    assert_eq!(p.stats().capacity, 4);
    assert!(matches!(
        MultiPool::<()>::new(vec![], Balance::RoundRobin),
        Err(BuildError::NoPools)
    ));
}

#[test]
fn multipool_round_robin_overflows_to_the_next_pool() {
    let mp = MultiPool::build(3, Balance::RoundRobin, |i| {
        Pool::builder()
            .capacity(1)
            .queue_capacity(0)
            .thread_name(format!("mp{i}"))
            .build()
    })
    .unwrap();
    let gate = Gate::new();
    let names: Vec<_> = (0..3)
        .map(|_| {
            let g = gate.clone();
            mp.try_submit(move |_| {
                g.wait();
                std::thread::current().name().map(str::to_owned)
            })
            .unwrap()
        })
        .collect();
    // All three pools are busy now: the fourth job overflows everywhere.
    assert_eq!(
        mp.try_submit(|_| None::<String>).unwrap_err(),
        SubmitError::Overloaded
    );
    gate.open();
    let mut names: Vec<String> = names.into_iter().map(|h| h.join().unwrap().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["mp0-1", "mp1-1", "mp2-1"]);
    let s = mp.stats();
    assert_eq!((s.submitted, s.completed, s.rejected), (4, 3, 1));
    assert_eq!(mp.shutdown(LONG).still_running, 0);
}

#[test]
fn multipool_overflow_when_first_choice_is_full() {
    let mp = MultiPool::build(2, Balance::RoundRobin, |_| {
        Pool::builder().capacity(1).queue_capacity(0).build()
    })
    .unwrap();
    let gate = occupy(&mp.pools()[0], 1);
    // Round robin starts at pool 0, which is full: both go to pool 1 in turn.
    let h = mp.try_submit(|_| 1).unwrap();
    assert_eq!(h.join(), Ok(1));
    let s = mp.stats();
    assert_eq!((s.rejected, s.submitted), (0, 2), "overflow is not a rejection");
    gate.open();
}

#[test]
fn multipool_least_loaded_picks_the_idle_pool() {
    let mp = MultiPool::build(2, Balance::LeastLoaded, |i| {
        Pool::builder()
            .capacity(1)
            .queue_capacity(8)
            .thread_name(format!("ll{i}"))
            .build()
    })
    .unwrap();
    let gate = occupy(&mp.pools()[0], 1);
    let name = mp
        .submit(|_| std::thread::current().name().map(str::to_owned))
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(name.as_deref(), Some("ll1-1"));
    gate.open();
}

#[test]
fn counters_balance_at_rest() {
    let pool = Pool::builder()
        .capacity(2)
        .queue_capacity(4)
        .nonblocking(true)
        .build()
        .unwrap();
    let deadline = Instant::now();
    let mut hs = Vec::new();
    for i in 0..2000u32 {
        let r = match i % 4 {
            0 => pool.submit(move |_| i).map(Some),
            1 => pool
                .submit_with(JobOptions::deadline(deadline), move |_| i)
                .map(Some),
            2 => pool.submit(move |_| -> u32 { panic!("p{i}") }).map(Some),
            _ => pool.execute(|_| ()).map(|_| None),
        };
        if let Ok(Some(h)) = r {
            hs.push(h);
        }
    }
    for h in hs {
        let _ = h.join();
    }
    pool.shutdown(LONG);
    let s = pool.stats();
    assert_eq!(s.submitted, 2000);
    assert_eq!(
        s.submitted,
        s.completed + s.panicked + s.expired + s.cancelled + s.rejected,
        "{s:?}"
    );
    assert_eq!(s.in_flight(), 0);
}

#[test]
fn jobs_queued_behind_a_running_one_are_waiting_and_cancellable() {
    let pool = small(1, 16);
    let first = occupy(&pool, 1);
    // Queue a gated job and five more behind it.
    let (started, gate) = (Gate::new(), Gate::new());
    let (s, g) = (started.clone(), gate.clone());
    let gated = pool
        .submit(move |_| {
            s.open();
            g.wait();
        })
        .unwrap();
    let rest: Vec<_> = (0..5).map(|i| pool.submit(move |_| i).unwrap()).collect();
    first.open();
    started.wait();
    // The worker runs the gated job; the five still wait.
    assert_eq!(pool.stats().waiting, 5);
    let p2 = pool.clone();
    let closer = std::thread::spawn(move || p2.shutdown_now(LONG));
    for h in rest {
        assert_eq!(h.join(), Err(JobError::Cancelled));
    }
    gate.open();
    assert_eq!(gated.join(), Ok(()));
    let report = closer.join().unwrap();
    assert_eq!((report.cancelled, report.still_running), (5, 0));
    let s = pool.stats();
    assert_eq!(s.submitted, s.completed + s.cancelled, "{s:?}");
}

#[test]
fn panicking_hooks_and_handler_do_not_kill_workers() {
    let pool = Pool::builder()
        .capacity(2)
        .on_thread_start(|_| panic!("start hook"))
        .on_thread_exit(|_| panic!("exit hook"))
        .panic_handler(|_| panic!("the handler panics too"))
        .build()
        .unwrap();
    let hs: Vec<_> = (0..20)
        .map(|i| {
            pool.submit(move |_| if i % 5 == 0 { panic!("job {i}") } else { i })
                .unwrap()
        })
        .collect();
    let ok = hs.into_iter().map(|h| h.join()).filter(Result::is_ok).count();
    assert_eq!(ok, 16);
    // Shutdown completes: every worker finished its bookkeeping.
    assert_eq!(pool.shutdown(LONG).still_running, 0);
    assert_eq!(pool.stats().workers, 0);
}

#[test]
fn shutdown_from_inside_a_job_returns() {
    let pool = small(1, 4);
    let p2 = pool.clone();
    let h = pool.submit(move |_| p2.shutdown(LONG)).unwrap();
    let report = match h.join_timeout(LONG) {
        Ok(r) => r.unwrap(),
        Err(_) => panic!("shutdown inside a job hung"),
    };
    assert_eq!(report.still_running, 1, "the calling job itself");
    assert!(pool.is_closed());
}
