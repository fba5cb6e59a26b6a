//! The micro-batcher: flush reasons, splitting, failures, admission, deadlines,
//! abandonment, shutdown, and the exact outcome accounting. Time is a
//! `ManualClock` where the flush time matters; nothing sleeps to synchronise.

use crate::common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;

use common::{wait_until, Gate};
use facepool::batch::{
    BatchError, BatchHandle, BatchPolicy, Batcher, BatcherBuilder, BuildError, ItemOptions, SubmitError,
};
use facepool::pool::{Clock, ManualClock};

const MS: Duration = Duration::from_millis(1);
const HOUR: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("downstream refused item {0}")]
struct Refused(u32);

fn policy(max_items: usize, max_delay: Duration) -> BatchPolicy {
    BatchPolicy {
        max_items,
        max_weight: None,
        max_delay,
        in_flight: 1,
    }
}

/// A handler that doubles items and records each batch it was given.
fn doubler(seen: Arc<Mutex<Vec<Vec<u32>>>>) -> impl Fn(usize) -> Result<Doubler, String> + Send + Sync {
    move |_| Ok(Doubler { seen: seen.clone() })
}

struct Doubler {
    seen: Arc<Mutex<Vec<Vec<u32>>>>,
}

impl facepool::batch::BatchHandler<u32, u32> for Doubler {
    type Error = Refused;
    fn call(&mut self, items: Vec<u32>) -> Result<Vec<u32>, Refused> {
        self.seen.lock().unwrap().push(items.clone());
        if let Some(bad) = items.iter().find(|x| **x == 13) {
            return Err(Refused(*bad));
        }
        if items.contains(&666) {
            panic!("handler blew up");
        }
        if items.contains(&7) {
            return Ok(items.iter().skip(1).map(|x| x * 2).collect());
        }
        Ok(items.iter().map(|x| x * 2).collect())
    }
}

fn build(b: BatcherBuilder<u32, u32>, seen: &Arc<Mutex<Vec<Vec<u32>>>>) -> Batcher<u32, u32> {
    b.build(doubler(seen.clone())).unwrap()
}

fn new_seen() -> Arc<Mutex<Vec<Vec<u32>>>> {
    Arc::new(Mutex::new(Vec::new()))
}

#[test]
fn a_full_batch_flushes_at_once() {
    let seen = new_seen();
    let b = build(Batcher::builder(policy(4, HOUR)), &seen);
    let hs: Vec<_> = (1..=4).map(|i| b.submit(i).unwrap()).collect();
    let out: Vec<u32> = hs.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(out, [2, 4, 6, 8]);
    let s = b.stats();
    assert_eq!((s.batches, s.flushes.full, s.delivered), (1, 1, 4));
    assert_eq!(s.batch_sizes.buckets().collect::<Vec<_>>(), [(3, 4, 1)]);
    assert_eq!(*seen.lock().unwrap(), [vec![1, 2, 3, 4]]);
    common::batch_balanced(&s);
}

#[test]
fn the_oldest_item_waits_at_most_max_delay() {
    let clock = Arc::new(ManualClock::new());
    let seen = new_seen();
    let b = build(Batcher::builder(policy(100, 10 * MS)).clock(clock.clone()), &seen);
    let h1 = b.submit(1).unwrap();
    clock.advance(4 * MS);
    let h2 = b.submit(2).unwrap();
    // The clock stands still: however long real time goes, nothing flushes.
    let h1 = h1.join_timeout(30 * MS).expect_err("flushed before max_delay");
    assert_eq!(b.stats().batches, 0);
    clock.advance(6 * MS);
    assert_eq!(h1.join(), Ok(2));
    assert_eq!(h2.join(), Ok(4));
    let s = b.stats();
    assert_eq!((s.batches, s.flushes.delay), (1, 1));
    common::batch_balanced(&s);
}

#[test]
fn an_early_deadline_flushes_before_max_delay() {
    let clock = Arc::new(ManualClock::new());
    let seen = new_seen();
    let b = build(Batcher::builder(policy(100, HOUR)).clock(clock.clone()), &seen);
    let h = b
        .submit_with(5, ItemOptions::deadline(clock.now() + 5 * MS))
        .unwrap();
    let h = h.join_timeout(30 * MS).expect_err("flushed too early");
    // Sent a (minimum) call estimate before its deadline, not at the hour.
    clock.advance(4 * MS);
    assert_eq!(h.join(), Ok(10));
    let s = b.stats();
    assert_eq!((s.flushes.deadline, s.expired), (1, 0));
    common::batch_balanced(&s);
}

#[test]
fn expired_and_abandoned_items_are_never_sent() {
    let clock = Arc::new(ManualClock::new());
    let seen = new_seen();
    let b = build(Batcher::builder(policy(4, HOUR)).clock(clock.clone()), &seen);
    let late = b
        .submit_with(100, ItemOptions::deadline(clock.now() + 2 * MS))
        .unwrap();
    let dropped = b.submit(200).unwrap();
    drop(dropped);
    // Past the deadline before the batch fills.
    clock.advance(10 * MS);
    wait_until("the expired item is removed", || b.stats().expired == 1);
    assert_eq!(late.join(), Err(BatchError::Expired));
    let hs: Vec<_> = (1..=4).map(|i| b.submit(i).unwrap()).collect();
    for (i, h) in hs.into_iter().enumerate() {
        assert_eq!(h.join(), Ok(2 * (i as u32 + 1)));
    }
    b.shutdown(Duration::from_secs(10));
    let s = b.stats();
    assert_eq!((s.expired, s.abandoned, s.delivered), (1, 1, 4));
    let sent: Vec<u32> = seen.lock().unwrap().concat();
    assert!(!sent.contains(&100) && !sent.contains(&200), "sent {sent:?}");
    common::batch_balanced(&s);
}

#[test]
fn a_failing_batch_fails_only_its_own_items() {
    let seen = new_seen();
    let b = build(Batcher::builder(policy(4, HOUR)), &seen);
    let round = |items: [u32; 4]| -> Vec<Result<u32, BatchError>> {
        let hs: Vec<_> = items.iter().map(|i| b.submit(*i).unwrap()).collect();
        hs.into_iter().map(BatchHandle::join).collect()
    };
    assert_eq!(round([1, 2, 3, 4]), [Ok(2), Ok(4), Ok(6), Ok(8)]);
    // An error from the handler reaches every item of that batch.
    for r in round([10, 11, 12, 13]) {
        let e = r.unwrap_err();
        assert_eq!(e.handler_error::<Refused>(), Some(&Refused(13)), "{e}");
    }
    // A panic, then a wrong number of results: clear errors, thread lives on.
    for r in round([666, 1, 2, 3]) {
        assert_eq!(r, Err(BatchError::Panicked("handler blew up".into())));
    }
    for r in round([7, 1, 2, 3]) {
        assert!(matches!(r, Err(BatchError::WrongCount { expected: 4, got: 3 })));
    }
    assert_eq!(round([5, 6, 8, 9]), [Ok(10), Ok(12), Ok(16), Ok(18)]);
    let s = b.stats();
    assert_eq!((s.delivered, s.failed, s.batches), (8, 12, 5));
    common::batch_balanced(&s);
}

/// A batcher whose single handler call blocks on `gate` whenever it sees 0.
fn gated(b: BatcherBuilder<u32, u32>, gate: Gate, started: Arc<AtomicUsize>) -> Batcher<u32, u32> {
    b.build(move |_| {
        let (gate, started) = (gate.clone(), started.clone());
        Ok::<_, String>(move |items: Vec<u32>| {
            started.fetch_add(1, Ordering::SeqCst);
            if items.contains(&0) {
                gate.wait();
            }
            Ok::<_, Refused>(items)
        })
    })
    .unwrap()
}

#[test]
fn a_full_queue_refuses_and_blocking_submit_waits() {
    let (gate, started) = (Gate::new(), Arc::new(AtomicUsize::new(0)));
    let b = gated(
        Batcher::builder(policy(1, Duration::ZERO)).queue_capacity(4),
        gate.clone(),
        started.clone(),
    );
    let busy = b.submit(0).unwrap();
    wait_until("the first call starts", || started.load(Ordering::SeqCst) == 1);
    let queued: Vec<_> = (1..=4).map(|i| b.submit(i).unwrap()).collect();
    assert_eq!(b.try_submit(5).unwrap_err(), SubmitError::Overloaded);
    assert_eq!(b.submit(5).unwrap_err(), SubmitError::Overloaded);
    assert_eq!(
        b.submit_timeout(5, 20 * MS).unwrap_err(),
        SubmitError::Timeout(20 * MS)
    );
    // A blocked submitter gets in once the call ends and the queue drains.
    let b2 = b.clone();
    let waiter = std::thread::spawn(move || b2.submit_timeout(9, Duration::from_secs(30)).map(|h| h.join()));
    wait_until("the submitter blocks", || b.stats().blocked == 1);
    gate.open();
    assert_eq!(waiter.join().unwrap(), Ok(Ok(9)));
    assert_eq!(busy.join(), Ok(0));
    for (i, h) in queued.into_iter().enumerate() {
        assert_eq!(h.join(), Ok(i as u32 + 1));
    }
    let s = b.stats();
    assert_eq!(s.rejected, 3);
    common::batch_balanced(&s);
}

#[test]
fn weights_bound_batches_and_the_queue() {
    let seen = new_seen();
    let p = BatchPolicy {
        max_weight: Some(10),
        ..policy(100, HOUR)
    };
    let b = build(
        Batcher::builder(p)
            .queue_capacity(12)
            .weigher(|x: &u32| *x as usize),
        &seen,
    );
    assert_eq!(
        b.submit(13).unwrap_err(),
        SubmitError::TooHeavy {
            weight: 13,
            capacity: 12
        }
    );
    let h: Vec<_> = [4, 4, 4].iter().map(|w| b.submit(*w).unwrap()).collect();
    // 12 waits (>= max_weight 10): one batch of 4 + 4, the third 4 stays.
    wait_until("the first batch", || b.stats().batches == 1);
    assert_eq!(b.stats().queued_weight, 4);
    b.shutdown(Duration::from_secs(10));
    for h in h {
        assert_eq!(h.join(), Ok(8));
    }
    assert_eq!(*seen.lock().unwrap(), [vec![4, 4], vec![4]]);
    let s = b.stats();
    assert_eq!((s.flushes.full, s.flushes.shutdown), (1, 1));
    common::batch_balanced(&s);
}

#[test]
fn shutdown_flushes_and_shutdown_now_cancels() {
    let seen = new_seen();
    let b = build(Batcher::builder(policy(100, HOUR)), &seen);
    let hs: Vec<_> = (1..=3).map(|i| b.submit(i).unwrap()).collect();
    let report = b.shutdown(Duration::from_secs(10));
    assert_eq!((report.cancelled, report.threads_left), (0, 0));
    assert_eq!(
        hs.into_iter().map(|h| h.join().unwrap()).collect::<Vec<_>>(),
        [2, 4, 6]
    );
    assert_eq!(b.submit(1).unwrap_err(), SubmitError::Closed);
    assert!(b.is_closed());
    common::batch_balanced(&b.stats());

    let (gate, started) = (Gate::new(), Arc::new(AtomicUsize::new(0)));
    let b = gated(
        Batcher::builder(policy(1, Duration::ZERO)),
        gate.clone(),
        started.clone(),
    );
    let busy = b.submit(0).unwrap();
    wait_until("the call starts", || started.load(Ordering::SeqCst) == 1);
    let queued: Vec<_> = (1..=3).map(|i| b.submit(i).unwrap()).collect();
    let report = b.shutdown_now(10 * MS);
    assert_eq!((report.cancelled, report.threads_left), (3, 1));
    for h in queued {
        assert_eq!(h.join(), Err(BatchError::Cancelled));
    }
    gate.open();
    assert_eq!(busy.join(), Ok(0));
    assert_eq!(b.shutdown(Duration::from_secs(10)).threads_left, 0);
    let s = b.stats();
    assert_eq!((s.cancelled, s.delivered), (3, 1));
    common::batch_balanced(&s);
}

#[test]
fn dropping_the_last_handle_flushes_pending_items() {
    let seen = new_seen();
    let b = build(Batcher::builder(policy(100, HOUR)), &seen);
    let hs: Vec<_> = (1..=3).map(|i| b.submit(i).unwrap()).collect();
    drop(b);
    assert_eq!(
        hs.into_iter().map(|h| h.join().unwrap()).collect::<Vec<_>>(),
        [2, 4, 6]
    );
}

#[test]
fn each_batch_thread_owns_its_handler_and_calls_overlap() {
    let p = BatchPolicy {
        in_flight: 2,
        ..policy(1, Duration::ZERO)
    };
    let made = Arc::new(Mutex::new(Vec::new()));
    let barrier = Arc::new(Barrier::new(2));
    let (made2, barrier2) = (made.clone(), barrier.clone());
    let b: Batcher<u32, (usize, u32)> = Batcher::builder(p)
        .build(move |thread| {
            made2.lock().unwrap().push(thread);
            let barrier = barrier2.clone();
            let mut calls = 0u32;
            Ok::<_, String>(move |items: Vec<u32>| {
                calls += 1;
                // Both calls must be in flight at once to pass.
                barrier.wait();
                Ok::<_, Refused>(items.into_iter().map(|_| (thread, calls)).collect())
            })
        })
        .unwrap();
    let mut made_now = made.lock().unwrap().clone();
    made_now.sort();
    assert_eq!(made_now, [0, 1]);
    let (h1, h2) = (b.submit(1).unwrap(), b.submit(2).unwrap());
    let mut threads = [h1.join().unwrap(), h2.join().unwrap()];
    threads.sort();
    assert_eq!(threads, [(0, 1), (1, 1)]);
}

#[test]
fn a_failing_handler_factory_is_a_build_error() {
    let r = Batcher::<u32, u32>::builder(BatchPolicy {
        in_flight: 3,
        ..policy(4, MS)
    })
    .build(|thread| {
        if thread == 1 {
            Err("model file missing".to_owned())
        } else {
            Ok(|items: Vec<u32>| Ok::<_, Refused>(items))
        }
    });
    match r {
        Err(BuildError::Handler { thread, message }) => {
            assert_eq!((thread, message.as_str()), (1, "model file missing"))
        }
        other => panic!("expected a handler error, got {other:?}"),
    }
    let bad = Batcher::<u32, u32>::builder(policy(0, MS))
        .build(|_| Ok::<_, String>(|i: Vec<u32>| Ok::<_, Refused>(i)));
    assert!(matches!(bad, Err(BuildError::Policy(_))));
}

#[test]
fn handles_are_futures() {
    let seen = new_seen();
    let b = build(Batcher::builder(policy(2, HOUR)), &seen);
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let out = rt.block_on(async {
        let (a, c) = (b.submit(20).unwrap(), b.submit(21).unwrap());
        (a.await, c.await)
    });
    assert_eq!(out, (Ok(40), Ok(42)));
}

#[derive(Debug, thiserror::Error)]
#[error("downstream flaked")]
struct Flaky;

#[test]
fn guards_compose_inside_a_batch_handler() {
    use facepool::guard::{
        or_degrade, BreakerConfig, BreakerError, CircuitBreaker, Jitter, RateLimit, Retry, RetryError,
        RetryPolicy,
    };
    use std::sync::atomic::AtomicBool;

    let calls = Arc::new(AtomicUsize::new(0));
    let down = Arc::new(AtomicBool::new(false));
    let breaker = CircuitBreaker::new(BreakerConfig {
        min_calls: 2,
        failure_rate: 0.5,
        cool_down: HOUR,
        ..BreakerConfig::default()
    })
    .unwrap();
    let retry = Retry::new(RetryPolicy {
        max_attempts: 3,
        base: Duration::ZERO,
        max_backoff: Duration::ZERO,
        multiplier: 1.0,
        jitter: Jitter::None,
    });
    let limit = Arc::new(RateLimit::per_second(1e6, 1000).unwrap());
    let (c2, d2) = (calls.clone(), down.clone());
    let b: Batcher<u32, u32> = Batcher::builder(policy(1, Duration::ZERO))
        .build(move |_| {
            let (breaker, retry, limit, calls, down) = (
                breaker.clone(),
                retry.clone(),
                limit.clone(),
                c2.clone(),
                d2.clone(),
            );
            // Outermost first: breaker -> retry -> rate limit -> call.
            Ok::<_, String>(
                move |items: Vec<u32>| -> Result<Vec<u32>, BreakerError<RetryError<Flaky>>> {
                    breaker.call(|| {
                        retry.call(
                            |_| true,
                            |attempt| {
                                limit.acquire(items.len());
                                calls.fetch_add(1, Ordering::SeqCst);
                                if down.load(Ordering::SeqCst) || attempt == 1 {
                                    Err(Flaky)
                                } else {
                                    Ok(items.iter().map(|x| x * 2).collect())
                                }
                            },
                        )
                    })
                },
            )
        })
        .unwrap();
    // The first attempt flakes, the retry succeeds.
    assert_eq!(b.submit(1).unwrap().join(), Ok(2));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    // The downstream goes down: three attempts, then the breaker opens.
    down.store(true, Ordering::SeqCst);
    let e = b.submit(2).unwrap().join().unwrap_err();
    assert!(e.to_string().contains("gave up after 3 attempt(s)"), "{e}");
    assert_eq!(calls.load(Ordering::SeqCst), 5);
    // Open: the downstream is not called at all, and the caller degrades.
    let r = b.submit(3).unwrap().join();
    assert_eq!(calls.load(Ordering::SeqCst), 5);
    let answer = or_degrade(r, |_| 0);
    assert!(answer.is_degraded(), "{answer:?}");
    assert!(
        matches!(answer, facepool::guard::Answer::Degraded { ref reason, .. } if reason.contains("circuit open"))
    );
}

#[test]
fn a_full_queue_makes_room_by_dropping_dead_items() {
    let clock = Arc::new(ManualClock::new());
    let (gate, started) = (Gate::new(), Arc::new(AtomicUsize::new(0)));
    let b = gated(
        Batcher::builder(policy(1, Duration::ZERO))
            .queue_capacity(2)
            .clock(clock.clone()),
        gate.clone(),
        started.clone(),
    );
    let busy = b.submit(0).unwrap();
    wait_until("the call starts", || started.load(Ordering::SeqCst) == 1);
    let kept = b.submit(1).unwrap();
    let late = b.submit_with(2, ItemOptions::deadline(clock.now() + MS)).unwrap();
    // Full, and nothing in it is dead: refused.
    assert_eq!(b.try_submit(3).unwrap_err(), SubmitError::Overloaded);
    // The deadline passes: its item is removed to make room.
    clock.advance(2 * MS);
    let third = b.try_submit(3).unwrap();
    assert_eq!(late.join(), Err(BatchError::Expired));
    // A dropped handle: its item is removed to make room.
    drop(third);
    let fourth = b.try_submit(4).unwrap();
    assert_eq!(b.try_submit(5).unwrap_err(), SubmitError::Overloaded);
    gate.open();
    assert_eq!(busy.join(), Ok(0));
    assert_eq!(kept.join(), Ok(1));
    assert_eq!(fourth.join(), Ok(4));
    let s = b.stats();
    assert_eq!((s.expired, s.abandoned, s.rejected), (1, 1, 2));
    common::batch_balanced(&s);
}
