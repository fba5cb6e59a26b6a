//! User code that runs on a batch thread or under the batcher's lock
//! outside the handler (drops of items and results, wakers) cannot wedge the
//! batcher: every slot of a batch resolves, the queue's weight is never
//! leaked, and the batch thread keeps serving.

use crate::common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Wake, Waker};
use std::time::{Duration, Instant};

use common::{wait_until, Gate};
use facepool::batch::{BatchError, BatchPolicy, Batcher};
use facepool::pool::{Clock, ManualClock};

const LONG: Duration = Duration::from_secs(20);

/// A value that panics when dropped, if armed.
struct Bomb {
    v: u32,
    armed: bool,
}

impl Bomb {
    fn new(v: u32, armed: bool) -> Self {
        Self { v, armed }
    }
}

impl Drop for Bomb {
    fn drop(&mut self) {
        if self.armed && !std::thread::panicking() {
            panic!("drop bomb {}", self.v);
        }
    }
}

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

fn policy(max_items: usize) -> BatchPolicy {
    BatchPolicy {
        max_items,
        max_weight: None,
        max_delay: Duration::from_millis(1),
        in_flight: 1,
    }
}

/// A batcher whose handler waits on `gate` for batches holding item 0, and
/// answers each item `v` with a result that panics on drop when `v` is odd
/// (or, with `short`, answers one result too few).
fn bomb_batcher(
    gate: Gate,
    queue: usize,
    short: bool,
    max_items: usize,
    clock: Option<Arc<dyn Clock>>,
) -> (Batcher<Bomb, Bomb>, Arc<Mutex<Vec<String>>>) {
    quiet_planned_panics();
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let s2 = seen.clone();
    let mut b = Batcher::builder(policy(max_items)).queue_capacity(queue);
    if let Some(c) = clock {
        b = b.clock(c);
    }
    let b = b
        .panic_handler(move |m| s2.lock().unwrap().push(m.to_owned()))
        .build(move |_| {
            let gate = gate.clone();
            Ok::<_, String>(move |items: Vec<Bomb>| {
                if items.iter().any(|i| i.v == 0) {
                    gate.wait();
                }
                let mut out: Vec<Bomb> = items.iter().map(|i| Bomb::new(i.v, i.v % 2 == 1)).collect();
                if short && items.iter().all(|i| i.v % 2 == 1) {
                    // Not dropped here: the batch thread is to drop the rest.
                    std::mem::forget(out.pop());
                }
                // The items themselves are plain here.
                Ok::<_, std::convert::Infallible>(out)
            })
        })
        .unwrap();
    (b, seen)
}

fn still_serves(b: &Batcher<Bomb, Bomb>) {
    let h = b.submit(Bomb::new(2, false)).unwrap();
    match h.join_timeout(LONG) {
        Ok(Ok(r)) => assert_eq!(r.v, 2),
        Ok(Err(e)) => panic!("{e}"),
        Err(_) => panic!("the batcher stopped serving"),
    }
}

#[test]
fn a_result_dropped_on_the_batch_thread_panics_and_the_batch_still_resolves() {
    let gate = Gate::new();
    // A clock that never moves: the one batch is flushed only when full.
    let (b, seen) = bomb_batcher(gate.clone(), 64, false, 4, Some(Arc::new(ManualClock::new())));
    // One batch of four: 0 holds the handler, 1 answers with a bomb.
    let first = b.submit(Bomb::new(0, false)).unwrap();
    let bomb = b.submit(Bomb::new(1, false)).unwrap();
    let two = b.submit(Bomb::new(2, false)).unwrap();
    let four = b.submit(Bomb::new(4, false)).unwrap();
    wait_until("batch in flight", || {
        b.stats().batches == 1 && b.stats().queued == 0
    });
    // Item 1 has been sent: dropping its handle leaves its result to be
    // dropped by the batch thread.
    drop(bomb);
    gate.open();
    assert_eq!(first.join().unwrap().v, 0);
    assert_eq!(two.join().unwrap().v, 2);
    assert_eq!(four.join().unwrap().v, 4);
    wait_until("drop reported", || {
        seen.lock().unwrap().iter().any(|m| m.contains("drop bomb 1"))
    });
    // Still serving: another full batch.
    let more: Vec<_> = [6, 8, 10, 12]
        .into_iter()
        .map(|v| b.submit(Bomb::new(v, false)).unwrap())
        .collect();
    for (h, v) in more.into_iter().zip([6, 8, 10, 12]) {
        assert_eq!(h.join().unwrap().v, v);
    }
    assert_eq!(b.shutdown(LONG).threads_left, 0);
    let s = b.stats();
    common::batch_balanced(&s);
    assert_eq!((s.delivered, s.abandoned), (4 + 4, 0), "{s:?}");
}

#[test]
fn a_wrong_count_batch_with_panicking_outputs_fails_every_slot() {
    let gate = Gate::new();
    gate.open();
    let (b, seen) = bomb_batcher(gate, 64, true, 4, None);
    // 1, 3 and 5 come back as bombs, one result short.
    let hs: Vec<_> = [1, 3, 5, 7]
        .into_iter()
        .map(|v| b.submit(Bomb::new(v, false)).unwrap())
        .collect();
    for h in hs {
        match h.join_timeout(LONG) {
            Ok(Err(BatchError::WrongCount { .. })) => {}
            Ok(other) => panic!("{:?}", other.map(|r| r.v)),
            Err(_) => panic!("a slot of the batch never resolved"),
        }
    }
    still_serves(&b);
    wait_until("drops reported", || {
        seen.lock().unwrap().iter().any(|m| m.contains("drop bomb"))
    });
    assert_eq!(b.shutdown(LONG).threads_left, 0);
    common::batch_balanced(&b.stats());
}

#[test]
fn abandoned_items_whose_drop_panics_are_purged_without_leaking_weight() {
    let gate = Gate::new();
    let (b, _seen) = bomb_batcher(gate.clone(), 4, false, 1, None);
    let first = b.submit(Bomb::new(0, false)).unwrap();
    wait_until("first batch in flight", || {
        b.stats().queued == 0 && b.stats().batches == 1
    });
    // Fill the queue with items that panic when dropped, then abandon them.
    let hs: Vec<_> = (0..4)
        .map(|i| b.submit(Bomb::new(11 + 2 * i, true)).unwrap())
        .collect();
    assert_eq!(b.stats().queued_weight, 4);
    drop(hs);
    // A push on the full queue purges the abandoned items (dropping them).
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| b.try_submit(Bomb::new(2, false))));
    let h = match caught {
        Ok(Ok(h)) => h,
        Ok(Err(e)) => panic!("refused after the purge: {e}"),
        Err(_) => panic!("an item's drop panicked into the submitter"),
    };
    assert_eq!(b.stats().queued_weight, 1, "{:?}", b.stats());
    gate.open();
    assert_eq!(first.join().unwrap().v, 0);
    assert_eq!(h.join().unwrap().v, 2);
    still_serves(&b);
    assert_eq!(b.shutdown(LONG).threads_left, 0);
    let s = b.stats();
    common::batch_balanced(&s);
    assert_eq!(s.abandoned, 4);
}

#[test]
fn shutdown_now_cancels_items_whose_drop_panics() {
    let gate = Gate::new();
    let (b, _seen) = bomb_batcher(gate.clone(), 8, false, 1, None);
    let first = b.submit(Bomb::new(0, false)).unwrap();
    wait_until("first batch in flight", || {
        b.stats().queued == 0 && b.stats().batches == 1
    });
    let hs: Vec<_> = (0..4)
        .map(|i| b.submit(Bomb::new(21 + 2 * i, true)).unwrap())
        .collect();
    let closer = {
        let b = b.clone();
        std::thread::spawn(move || b.shutdown_now(LONG))
    };
    for h in hs {
        match h.join_timeout(LONG) {
            Ok(r) => assert_eq!(r.map(|x| x.v).unwrap_err(), BatchError::Cancelled),
            Err(_) => panic!("a cancelled item never resolved"),
        }
    }
    gate.open();
    assert_eq!(first.join().unwrap().v, 0);
    let report = closer.join().unwrap();
    assert_eq!((report.cancelled, report.threads_left), (4, 0));
    common::batch_balanced(&b.stats());
}

/// A waker that calls back into the batcher: if wakers were called under
/// the batcher's lock, this would deadlock.
struct Reentrant {
    batcher: Mutex<Option<Batcher<u32, u32>>>,
    woken: AtomicBool,
}

impl Wake for Reentrant {
    fn wake(self: Arc<Self>) {
        if let Some(b) = self.batcher.lock().unwrap().as_ref() {
            let _ = b.stats();
        }
        self.woken.store(true, Ordering::SeqCst);
    }
}

#[test]
fn wakers_are_not_called_under_the_batch_lock() {
    let clock = Arc::new(ManualClock::new());
    let gate = Gate::new();
    let g = gate.clone();
    let b: Batcher<u32, u32> = Batcher::builder(policy(1))
        .clock(clock.clone())
        .build(move |_| {
            let g = g.clone();
            Ok::<_, String>(move |items: Vec<u32>| {
                if items.contains(&0) {
                    g.wait();
                }
                Ok::<_, std::convert::Infallible>(items)
            })
        })
        .unwrap();
    let first = b.submit(0).unwrap();
    wait_until("first batch in flight", || {
        b.stats().queued == 0 && b.stats().batches == 1
    });
    let dl = clock.now() + Duration::from_millis(5);
    let mut late = b
        .submit_with(1, facepool::batch::ItemOptions::deadline(dl))
        .unwrap();
    let waker = Arc::new(Reentrant {
        batcher: Mutex::new(Some(b.clone())),
        woken: AtomicBool::new(false),
    });
    let w = Waker::from(waker.clone());
    let mut cx = Context::from_waker(&w);
    assert!(std::future::Future::poll(std::pin::Pin::new(&mut late), &mut cx).is_pending());
    clock.advance(Duration::from_millis(10));
    // The batch thread finds item 1 expired when it takes the next batch.
    gate.open();
    assert_eq!(first.join(), Ok(0));
    let deadline = Instant::now() + LONG;
    while !waker.woken.load(Ordering::SeqCst) {
        assert!(Instant::now() < deadline, "the waker deadlocked the batcher");
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(late.join(), Err(BatchError::Expired));
    *waker.batcher.lock().unwrap() = None;
    assert_eq!(b.shutdown(LONG).threads_left, 0);
    common::batch_balanced(&b.stats());
}

/// A handler error whose drop panics, with every handle of its batch gone:
/// the batch thread drops the last reference to the error itself, and
/// survives it.
#[test]
fn a_handler_error_whose_drop_panics() {
    #[derive(Debug)]
    struct BombError;
    impl std::fmt::Display for BombError {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("refused")
        }
    }
    impl std::error::Error for BombError {}
    impl Drop for BombError {
        fn drop(&mut self) {
            if !std::thread::panicking() {
                panic!("drop bomb error");
            }
        }
    }
    quiet_planned_panics();
    let gate = Gate::new();
    let g = gate.clone();
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let s2 = seen.clone();
    let b: Batcher<u32, u32> = Batcher::builder(policy(4))
        .clock(Arc::new(ManualClock::new()))
        .panic_handler(move |m| s2.lock().unwrap().push(m.to_owned()))
        .build(move |_| {
            let g = g.clone();
            Ok::<_, String>(move |items: Vec<u32>| {
                if items.contains(&0) {
                    g.wait();
                    return Err(BombError);
                }
                Ok(items)
            })
        })
        .unwrap();
    // One full batch (the clock never moves), sent, then abandoned.
    let hs: Vec<_> = (0..4).map(|i| b.submit(i).unwrap()).collect();
    wait_until("batch in flight", || {
        b.stats().batches == 1 && b.stats().queued == 0
    });
    drop(hs);
    gate.open();
    wait_until("error drop reported", || {
        seen.lock().unwrap().iter().any(|m| m.contains("drop bomb error"))
    });
    // Still serving: another full batch.
    let hs: Vec<_> = (1..5).map(|i| b.submit(i).unwrap()).collect();
    for (h, i) in hs.into_iter().zip(1..5) {
        assert_eq!(h.join(), Ok(i));
    }
    assert_eq!(b.shutdown(LONG).threads_left, 0);
    let s = b.stats();
    common::batch_balanced(&s);
    assert_eq!((s.failed, s.delivered), (4, 4));
}
