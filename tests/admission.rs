//! The front door's admission (`src/service/admission.rs`) on its own:
//! all or none within the limit, bytes like faces, FIFO without barging,
//! waiters that give up or are granted late, a limit that moves, closing,
//! permits split per image, and a stress of every way of asking.
#![cfg(feature = "face")]

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use facepool::service::admission::{Acquire, Admission, AdmitError, Cost, Permit};

struct Flag(AtomicBool);
impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::SeqCst);
    }
}

fn waker() -> (Arc<Flag>, Waker) {
    let f = Arc::new(Flag(AtomicBool::new(false)));
    (f.clone(), Waker::from(f))
}

fn poll(a: &mut Acquire, w: &Waker) -> Poll<Result<Permit, AdmitError>> {
    Pin::new(a).poll(&mut Context::from_waker(w))
}

/// Full, on a fixed limit: try again in a second.
const FULL: AdmitError = AdmitError::Overloaded {
    retry_after: Duration::from_secs(1),
};

fn faces(n: usize) -> Cost {
    Cost::new(n, 0)
}

fn adm(limit: usize) -> Admission {
    Admission::new(Cost::new(limit, 1 << 30), Cost::new(limit, 1 << 30))
}

#[test]
fn all_or_none_within_the_limit() {
    let a = adm(4);
    let p = a.try_acquire(faces(3)).unwrap();
    assert_eq!(a.try_acquire(faces(2)).unwrap_err(), FULL);
    let q = a.try_acquire(faces(1)).unwrap();
    assert_eq!(a.in_use(), faces(4));
    drop(p);
    assert_eq!(a.in_use(), faces(1));
    drop(q);
    assert_eq!(a.in_use(), faces(0));
    assert!(matches!(
        a.try_acquire(faces(5)),
        Err(AdmitError::TooLarge { .. })
    ));
}

#[test]
fn would_admit_takes_nothing_and_refuses_as_try_acquire_would() {
    let a = adm(4);
    a.would_admit(faces(4), None).unwrap();
    assert_eq!(a.in_use(), faces(0), "a peek takes nothing");
    assert_eq!(a.stats().granted, 0, "a peek is not a grant");
    let p = a.try_acquire(faces(3)).unwrap();
    a.would_admit(faces(1), None).unwrap();
    assert_eq!(a.would_admit(faces(2), None).unwrap_err(), FULL);
    assert_eq!(a.stats().refused_full, 1, "a refused peek is counted");
    // While someone waits in line, nothing would be admitted (no barging).
    let (_flag, w) = waker();
    let mut big = a.acquire(faces(4));
    assert!(poll(&mut big, &w).is_pending());
    assert_eq!(a.would_admit(faces(1), None).unwrap_err(), FULL);
    assert_eq!(
        (a.in_use(), a.stats().waiting),
        (faces(3), 1),
        "the line is as it was"
    );
    drop((p, big));
    a.would_admit(faces(4), None).unwrap();
    a.close();
    assert_eq!(a.would_admit(faces(1), None).unwrap_err(), AdmitError::Closed);
}

#[test]
fn bytes_count_like_faces() {
    let a = Admission::new(Cost::new(10, 100), Cost::new(10, 100));
    let _p = a.try_acquire(Cost::new(1, 80)).unwrap();
    assert_eq!(a.try_acquire(Cost::new(1, 30)).unwrap_err(), FULL);
    let _q = a.try_acquire(Cost::new(1, 20)).unwrap();
}

#[test]
fn a_waiter_at_the_head_is_not_overtaken() {
    let a = adm(4);
    let small = a.try_acquire(faces(1)).unwrap();
    let (flag, w) = waker();
    let mut big = a.acquire(faces(4));
    assert!(poll(&mut big, &w).is_pending());
    // No barging: a small request that would fit is refused while the
    // big one waits.
    assert_eq!(a.try_acquire(faces(1)).unwrap_err(), FULL);
    assert!(!flag.0.load(Ordering::SeqCst));
    drop(small);
    assert!(flag.0.load(Ordering::SeqCst), "the release woke the waiter");
    let p = match poll(&mut big, &w) {
        Poll::Ready(Ok(p)) => p,
        other => panic!("{other:?}"),
    };
    assert_eq!(p.cost(), faces(4));
    assert_eq!(a.stats().granted_after_wait, 1);
}

#[test]
fn a_dropped_waiter_leaves_the_line_and_hands_back_a_late_grant() {
    let a = adm(2);
    let held = a.try_acquire(faces(2)).unwrap();
    let (_f1, w1) = waker();
    let mut first = a.acquire(faces(2));
    assert!(poll(&mut first, &w1).is_pending());
    let (_f2, w2) = waker();
    let mut second = a.acquire(faces(1));
    assert!(poll(&mut second, &w2).is_pending());
    // The head gives up: the second is next.
    drop(first);
    drop(held);
    assert!(matches!(poll(&mut second, &w2), Poll::Ready(Ok(_))));
    assert_eq!(
        a.in_use(),
        faces(0),
        "the granted permit was dropped with its poll result"
    );
    // Granted, then dropped before being polled: capacity returns.
    let held = a.try_acquire(faces(2)).unwrap();
    let mut third = a.acquire(faces(2));
    assert!(poll(&mut third, &w2).is_pending());
    drop(held);
    assert_eq!(a.in_use(), faces(2), "granted to the waiter");
    drop(third);
    assert_eq!(a.in_use(), faces(0));
    assert_eq!(a.stats().waiting, 0);
}

#[test]
fn one_request_alone_may_pass_a_lowered_limit() {
    let a = adm(8);
    a.set_limit(faces(2));
    let p = a.try_acquire(faces(6)).unwrap();
    assert_eq!(a.try_acquire(faces(1)).unwrap_err(), FULL);
    drop(p);
    // Raising the limit admits waiters at once.
    let _p = a.try_acquire(faces(2)).unwrap();
    let (flag, w) = waker();
    let mut next = a.acquire(faces(2));
    assert!(poll(&mut next, &w).is_pending());
    a.set_limit(faces(4));
    assert!(flag.0.load(Ordering::SeqCst));
    assert!(matches!(poll(&mut next, &w), Poll::Ready(Ok(_))));
}

#[test]
fn blocking_waiters_time_out_or_are_granted() {
    let a = adm(1);
    let held = a.try_acquire(faces(1)).unwrap();
    let t0 = Instant::now();
    let r = a.acquire_blocking(faces(1), Some(Instant::now() + Duration::from_millis(30)));
    assert_eq!(r.unwrap_err(), AdmitError::Timeout);
    assert!(t0.elapsed() >= Duration::from_millis(30));
    assert_eq!(a.stats().waiting, 0);
    let b = a.clone();
    let t = std::thread::spawn(move || b.acquire_blocking(faces(1), None).map(|p| p.cost()));
    while a.stats().waiting == 0 {
        std::thread::yield_now();
    }
    drop(held);
    assert_eq!(t.join().unwrap(), Ok(faces(1)));
    assert_eq!(a.in_use(), faces(0));
}

#[test]
fn closing_refuses_and_wakes_every_waiter() {
    let a = adm(1);
    let held = a.try_acquire(faces(1)).unwrap();
    let (flag, w) = waker();
    let mut waiting = a.acquire(faces(1));
    assert!(poll(&mut waiting, &w).is_pending());
    a.close();
    assert!(flag.0.load(Ordering::SeqCst));
    assert!(matches!(
        poll(&mut waiting, &w),
        Poll::Ready(Err(AdmitError::Closed))
    ));
    assert_eq!(a.try_acquire(faces(1)).unwrap_err(), AdmitError::Closed);
    drop(held);
    assert_eq!(a.in_use(), faces(0));
}

#[test]
fn split_parts_come_back_one_by_one() {
    let a = Admission::new(Cost::new(4, 100), Cost::new(4, 100));
    let mut p = a.try_acquire(Cost::new(2, 60)).unwrap();
    let mut one = p.split(Cost::new(1, 40));
    assert_eq!((p.cost(), one.cost()), (Cost::new(1, 20), Cost::new(1, 40)));
    one.release_bytes();
    assert_eq!(a.in_use(), Cost::new(2, 20));
    drop(one);
    assert_eq!(a.in_use(), Cost::new(1, 20));
    drop(p);
    assert_eq!(a.in_use(), Cost::default());
}

/// An image admitted for more faces than it has gives the rest back at
/// once (and makes room), keeping its bytes and the faces it has.
#[test]
fn faces_beyond_those_found_come_back_at_once() {
    let a = Admission::new(Cost::new(8, 100), Cost::new(8, 100));
    let mut p = a.try_acquire(Cost::new(8, 50)).unwrap();
    assert_eq!(a.try_acquire(faces(3)).unwrap_err(), FULL);
    p.release_faces_beyond(2);
    assert_eq!((p.cost(), a.in_use()), (Cost::new(2, 50), Cost::new(2, 50)));
    let more = a.try_acquire(faces(6)).unwrap();
    // Keeping more than it holds gives nothing back.
    p.release_faces_beyond(5);
    assert_eq!(a.in_use(), Cost::new(8, 50));
    drop((p, more));
    assert_eq!(a.in_use(), Cost::default());
}

/// Many threads mixing every way of asking: what is in use never goes
/// over the limit (one request alone aside) and everything comes back.
#[test]
fn stress_never_over_the_limit_and_nothing_leaks() {
    let a = adm(8);
    let over = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..6u64)
        .map(|t| {
            let (a, over) = (a.clone(), over.clone());
            std::thread::spawn(move || {
                let mut x = t + 1;
                for _ in 0..2000 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let n = (x % 5 + 1) as usize;
                    let p = if x % 3 == 0 {
                        a.try_acquire(faces(n)).ok()
                    } else {
                        a.acquire_blocking(faces(n), Some(Instant::now() + Duration::from_millis(2)))
                            .ok()
                    };
                    if let Some(p) = p {
                        if a.in_use().faces > 8 {
                            over.store(true, Ordering::SeqCst);
                        }
                        drop(p);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert!(!over.load(Ordering::SeqCst));
    let s = a.stats();
    assert_eq!((s.in_use, s.waiting), (Cost::default(), 0));
}
