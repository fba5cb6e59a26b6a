//! The batch-completion synchronizer: completion order, groups of N, errors
//! reaching the consumer at once, and cancellation of the rest on abort.

use crate::common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use common::wait_until;
use facepool::batch::{map_completed, Done, MapError};
use facepool::pool::{Pool, SubmitError};

type Receivers = Arc<Mutex<Vec<Option<mpsc::Receiver<()>>>>>;

/// Per-item release channels: item i finishes when the test sends on `tx[i]`.
fn releasers(n: usize) -> (Vec<mpsc::Sender<()>>, Receivers) {
    let (txs, rxs): (Vec<_>, Vec<_>) = (0..n).map(|_| mpsc::channel::<()>()).unzip();
    (txs, Arc::new(Mutex::new(rxs.into_iter().map(Some).collect())))
}

#[test]
fn results_come_in_completion_order() {
    let pool = Pool::builder().capacity(4).build().unwrap();
    let (txs, rxs) = releasers(4);
    let mut it = map_completed(&pool, (0..4).collect(), move |i: usize| {
        let rx = rxs.lock().unwrap()[i].take().unwrap();
        rx.recv().unwrap();
        Ok::<_, String>(i * 10)
    });
    let mut order = Vec::new();
    for i in [3, 1, 2, 0] {
        txs[i].send(()).unwrap();
        let Done { index, value } = it.next().unwrap().unwrap();
        assert_eq!(value, index * 10);
        order.push(index);
    }
    assert_eq!(order, [3, 1, 2, 0]);
    assert!(it.next().is_none());
}

#[test]
fn groups_of_n_then_the_partial_group() {
    let pool = Pool::builder().capacity(3).queue_capacity(2).build().unwrap();
    // More items than the pool holds at once: they are fed as it drains.
    let sizes: Vec<usize> = map_completed(&pool, (0..57u32).collect(), Ok::<_, String>)
        .chunks(25)
        .map(|g| g.unwrap().len())
        .collect();
    assert_eq!(sizes, [25, 25, 7]);
    let mut all: Vec<u32> = map_completed(&pool, (0..57u32).collect(), |i| Ok::<_, String>(i * 2))
        .map(|d| d.unwrap().value)
        .collect();
    all.sort();
    assert_eq!(all, (0..57).map(|i| i * 2).collect::<Vec<_>>());
    assert_eq!(
        map_completed(&pool, Vec::<u32>::new(), Ok::<_, String>).count(),
        0
    );
}

#[test]
fn the_first_group_does_not_wait_for_the_slowest_call() {
    let pool = Pool::builder().capacity(4).build().unwrap();
    let (txs, rxs) = releasers(1);
    let mut groups = map_completed(&pool, (0..9).collect(), move |i: usize| {
        if i == 0 {
            // The slow call: held until the test has its first two groups.
            let rx = rxs.lock().unwrap()[0].take().unwrap();
            rx.recv().unwrap();
        }
        Ok::<_, String>(i)
    })
    .chunks(4);
    let first = groups.next().unwrap().unwrap();
    let second = groups.next().unwrap().unwrap();
    let early: Vec<usize> = first.iter().chain(&second).map(|d| d.index).collect();
    assert!(!early.contains(&0), "{early:?}");
    txs[0].send(()).unwrap();
    let last = groups.next().unwrap().unwrap();
    assert_eq!(last.iter().map(|d| d.index).collect::<Vec<_>>(), [0]);
    assert!(groups.next().is_none());
}

#[test]
fn a_failure_reaches_the_consumer_and_abort_cancels_the_rest() {
    let pool = Pool::builder().capacity(1).build().unwrap();
    let ran = Arc::new(AtomicUsize::new(0));
    let ran2 = ran.clone();
    let mut groups = map_completed(&pool, (0..50).collect(), move |i: usize| {
        ran2.fetch_add(1, Ordering::SeqCst);
        if i == 0 {
            Err(format!("row {i} rejected"))
        } else {
            std::thread::sleep(Duration::from_millis(1));
            Ok(i)
        }
    })
    .chunks(25);
    // The error arrives as soon as it happens, before any group is full.
    match groups.next() {
        Some(Err(MapError::Failed { index: 0, error })) => assert_eq!(error, "row 0 rejected"),
        other => panic!("expected the failure first, got {other:?}"),
    }
    let cancelled = groups.abort();
    assert!(cancelled > 0, "nothing was left to cancel");
    pool.shutdown(Duration::from_secs(10));
    // Only calls that had started before the abort ran.
    assert_eq!(ran.load(Ordering::SeqCst), 50 - cancelled);
}

#[test]
fn panics_and_a_closed_pool_are_errors_not_hangs() {
    let pool = Pool::builder().capacity(2).build().unwrap();
    let mut r: Vec<_> = map_completed(&pool, vec![1, 2, 3], |i: u32| {
        if i == 2 {
            panic!("bad row");
        }
        Ok::<_, String>(i)
    })
    .collect();
    r.sort_by_key(|x| match x {
        Ok(d) => d.index,
        Err(e) => e.index(),
    });
    assert!(matches!(&r[1], Err(MapError::Panicked { index: 1, message }) if message == "bad row"));
    assert!(r[0].is_ok() && r[2].is_ok());

    pool.shutdown(Duration::from_secs(10));
    let r: Vec<_> = map_completed(&pool, vec![1, 2], |i: u32| Ok::<_, String>(i)).collect();
    assert_eq!(r.len(), 2);
    for x in r {
        assert!(matches!(
            x,
            Err(MapError::Refused {
                error: SubmitError::Closed,
                ..
            })
        ));
    }
}

#[test]
fn calls_cancelled_by_the_pool_are_reported() {
    let pool = Pool::builder().capacity(1).build().unwrap();
    let started = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = mpsc::channel::<()>();
    let rx = Arc::new(Mutex::new(rx));
    let s2 = started.clone();
    let it = map_completed(&pool, vec![0, 1, 2], move |i: usize| {
        s2.fetch_add(1, Ordering::SeqCst);
        if i == 0 {
            rx.lock().unwrap().recv().unwrap();
        }
        Ok::<_, String>(i)
    });
    let mut it = it;
    let p2 = pool.clone();
    // Drive the iterator on another thread; shut the pool down under it.
    let consumer = std::thread::spawn(move || it.by_ref().collect::<Vec<_>>());
    wait_until("one call runs and two wait", || {
        started.load(Ordering::SeqCst) == 1 && p2.stats().waiting == 2
    });
    let report = p2.shutdown_now(Duration::from_millis(10));
    assert_eq!(report.cancelled, 2);
    tx.send(()).unwrap();
    let out = consumer.join().unwrap();
    assert_eq!(out.len(), 3);
    let cancelled = out
        .iter()
        .filter(|x| matches!(x, Err(MapError::Cancelled { .. })))
        .count();
    assert_eq!(cancelled, 2);
}
