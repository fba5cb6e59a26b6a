//! Model checks of the batcher's submit / take / split / shutdown core.
//! Run with: RUSTFLAGS="--cfg loom" cargo test --release --test loom_batch
#![cfg(loom)]

mod common;

use std::time::Duration;

use facepool::batch::{BatchError, BatchPolicy, Batcher, SubmitError};

const FOREVER: Duration = Duration::from_secs(3600);

fn batcher(max_items: usize) -> Batcher<u32, u32> {
    let policy = BatchPolicy {
        max_items,
        max_weight: None,
        max_delay: Duration::ZERO,
        in_flight: 1,
    };
    Batcher::builder(policy)
        .queue_capacity(2)
        .build(|_| {
            Ok::<_, String>(|items: Vec<u32>| {
                Ok::<_, std::convert::Infallible>(items.into_iter().map(|x| x + 100).collect())
            })
        })
        .unwrap()
}

/// Two submitters race the batch thread: each gets its own result exactly
/// once, however the items are split into batches; shutdown joins the thread.
#[test]
fn two_submitters_get_their_own_results() {
    loom::model(|| {
        let b = batcher(2);
        let b2 = b.clone();
        let t = loom::thread::spawn(move || b2.submit(1).unwrap().join());
        assert_eq!(b.submit(2).unwrap().join(), Ok(102));
        assert_eq!(t.join().unwrap(), Ok(101));
        assert_eq!(b.shutdown(FOREVER).threads_left, 0);
        let s = b.stats();
        assert_eq!(s.delivered, 2);
        common::batch_balanced(&s);
    });
}

/// A handle dropped while its item is being taken: the item is either sent
/// (delivered, nobody watching) or abandoned, never both, never lost.
#[test]
fn drop_races_the_flush() {
    loom::model(|| {
        let b = batcher(1);
        let h = b.submit(1).unwrap();
        let t = loom::thread::spawn(move || drop(h));
        t.join().unwrap();
        b.shutdown(FOREVER);
        let s = b.stats();
        assert_eq!(s.delivered + s.abandoned, 1, "{s:?}");
        common::batch_balanced(&s);
    });
}

/// Shutdown without flush races a submit: the item is refused, delivered or
/// cancelled, and its handle says which.
#[test]
fn shutdown_now_races_a_submit() {
    loom::model(|| {
        let b = batcher(1);
        let b2 = b.clone();
        let t = loom::thread::spawn(move || match b2.submit(5) {
            Ok(h) => match h.join() {
                Ok(v) => {
                    assert_eq!(v, 105);
                    1
                }
                Err(BatchError::Cancelled) => 2,
                Err(e) => panic!("unexpected {e}"),
            },
            Err(SubmitError::Closed) => 3,
            Err(e) => panic!("unexpected {e}"),
        });
        b.shutdown_now(FOREVER);
        let seen = t.join().unwrap();
        let s = b.stats();
        let want = match seen {
            1 => (1, 0, 0),
            2 => (0, 1, 0),
            _ => (0, 0, 1),
        };
        assert_eq!((s.delivered, s.cancelled, s.rejected), want);
        common::batch_balanced(&s);
    });
}

/// Two batch threads and a submitter blocked on the full queue (room for
/// one item): it is let in when a batch thread takes the first item, both
/// items are delivered once, and shutdown joins both threads.
#[test]
fn two_batch_threads_and_a_blocked_submitter() {
    // Four threads: explored with two preemptions, not three (a bound of
    // three takes over ten minutes).
    let mut model = loom::model::Builder::new();
    model.preemption_bound = Some(2);
    model.check(|| {
        let policy = BatchPolicy {
            max_items: 1,
            max_weight: None,
            max_delay: Duration::ZERO,
            in_flight: 2,
        };
        let b: Batcher<u32, u32> = Batcher::builder(policy)
            .queue_capacity(1)
            .blocking(None)
            .build(|_| {
                Ok::<_, String>(|items: Vec<u32>| {
                    Ok::<_, std::convert::Infallible>(items.into_iter().map(|x| x + 100).collect())
                })
            })
            .unwrap();
        let first = b.submit(1).unwrap();
        let b2 = b.clone();
        let t = loom::thread::spawn(move || b2.submit(2).unwrap().join());
        assert_eq!(first.join(), Ok(101));
        assert_eq!(t.join().unwrap(), Ok(102));
        assert_eq!(b.shutdown(FOREVER).threads_left, 0);
        let s = b.stats();
        assert_eq!(s.delivered, 2);
        common::batch_balanced(&s);
    });
}
