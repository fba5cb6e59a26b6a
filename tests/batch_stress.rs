//! Stress: 1,000,000 items from 4 submitting threads into a batcher with two
//! batch threads, with random deadlines (some already past), random handle
//! drops, random handler failures and panics, and a full queue now and then.
//! Every submit must be accounted for exactly once, in the stats and by what
//! the callers saw, and every delivered result must be the item's own.

use crate::common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Rng;
use facepool::batch::{BatchError, BatchPolicy, Batcher, ItemOptions, SubmitError};

const ITEMS: u64 = 1_000_000;
const SUBMITTERS: u64 = 4;

#[derive(Default)]
struct Seen {
    delivered: AtomicU64,
    failed: AtomicU64,
    expired: AtomicU64,
    dropped: AtomicU64,
    refused: AtomicU64,
    handler_items: AtomicU64,
}

#[derive(Debug, thiserror::Error)]
#[error("downstream hiccup")]
struct Hiccup;

#[test]
fn a_million_items_balance_exactly() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let planned = info
            .payload()
            .downcast_ref::<&str>()
            .is_some_and(|m| *m == "planned panic");
        if !planned {
            default_hook(info);
        }
    }));
    let seen = Arc::new(Seen::default());
    let policy = BatchPolicy {
        max_items: 64,
        max_weight: None,
        max_delay: Duration::from_micros(200),
        in_flight: 2,
    };
    let s2 = seen.clone();
    let batcher: Batcher<u64, u64> = Batcher::builder(policy)
        .queue_capacity(64)
        .blocking(Some(Duration::from_millis(20)))
        .build(move |thread| {
            let seen = s2.clone();
            let mut rng = Rng::new(1000 + thread as u64);
            Ok::<_, String>(move |items: Vec<u64>| {
                seen.handler_items
                    .fetch_add(items.len() as u64, Ordering::Relaxed);
                match rng.below(1000) {
                    0..=4 => Err(Hiccup),
                    5 => panic!("planned panic"),
                    _ => Ok(items.into_iter().map(|x| x.wrapping_mul(3)).collect()),
                }
            })
        })
        .unwrap();

    let submitters: Vec<_> = (0..SUBMITTERS)
        .map(|t| {
            let (b, seen) = (batcher.clone(), seen.clone());
            std::thread::spawn(move || {
                let mut rng = Rng::new(t + 1);
                let mut pending = Vec::with_capacity(256);
                let n = ITEMS / SUBMITTERS;
                for i in 0..n {
                    let x = t * n + i;
                    let opts = match rng.below(100) {
                        // Already past: must expire, never be sent.
                        0 => ItemOptions::deadline(Instant::now() - Duration::from_millis(1)),
                        1..=5 => {
                            ItemOptions::deadline(Instant::now() + Duration::from_micros(rng.below(500)))
                        }
                        _ => ItemOptions::default(),
                    };
                    let r = if rng.chance(10) {
                        b.try_submit(x)
                    } else {
                        b.submit_with(x, opts)
                    };
                    match r {
                        Ok(h) if rng.chance(20) => {
                            drop(h);
                            seen.dropped.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(h) => pending.push((x, h)),
                        Err(SubmitError::Overloaded | SubmitError::Timeout(_)) => {
                            seen.refused.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => panic!("unexpected refusal {e}"),
                    }
                    if pending.len() >= 256 || i + 1 == n {
                        for (x, h) in pending.drain(..) {
                            let c = match h.join() {
                                Ok(v) => {
                                    assert_eq!(v, x.wrapping_mul(3), "item {x} got another item's result");
                                    &seen.delivered
                                }
                                Err(BatchError::Expired) => &seen.expired,
                                Err(BatchError::Handler(_) | BatchError::Panicked(_)) => &seen.failed,
                                Err(e) => panic!("item {x}: unexpected outcome {e}"),
                            };
                            c.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    for s in submitters {
        s.join().unwrap();
    }
    let report = batcher.shutdown(Duration::from_secs(60));
    assert_eq!(report.threads_left, 0);
    let s = batcher.stats();
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    println!("{s:#?}");

    assert_eq!(s.submitted, ITEMS);
    assert_eq!(
        s.submitted,
        s.delivered + s.failed + s.expired + s.abandoned + s.cancelled + s.rejected,
        "{s:?}"
    );
    assert_eq!(s.rejected, load(&seen.refused));
    assert_eq!(s.cancelled, 0);
    // Callers that kept their handle saw exactly their items' outcomes. An
    // item whose handle was dropped is abandoned if it was still queued;
    // otherwise it had already expired, or was sent and delivered or failed
    // with nobody watching.
    let sent_unwatched = (s.delivered - load(&seen.delivered)) + (s.failed - load(&seen.failed));
    let unwatched = (s.expired - load(&seen.expired)) + s.abandoned + sent_unwatched;
    assert_eq!(unwatched, load(&seen.dropped));
    // Everything the handler saw is counted as sent, nothing more.
    assert_eq!(load(&seen.handler_items), s.delivered + s.failed);
    assert!(
        s.expired > 0 && s.abandoned > 0 && s.failed > 0 && s.rejected > 0,
        "{s:?}"
    );
    assert!(s.mean_batch() > 1.0, "no batching happened: {s:?}");
    let total: u64 = s.batch_sizes.buckets().map(|(_, _, c)| c).sum();
    assert_eq!(total, s.batches);
}
