//! Type-erased storage for a queued job, without a heap allocation for the
//! common case.
//!
//! A job closure that fits in three machine words (an `execute` closure that
//! captures an `Arc`, a job with a result handle) is stored inline in the
//! queue entry, next to a static table of the functions that run, abort or
//! drop it. A larger or over-aligned one is boxed and the box is stored
//! inline instead, so there is one code path. Measured on `pool_vs_peers`
//! (`empty`, 2 cores): the per-job `Box` was about 30% of the submitting
//! thread's time in glibc malloc.

use std::marker::PhantomData;
use std::mem::{align_of, size_of, ManuallyDrop, MaybeUninit};
use std::ptr;

use super::core::Ledger;
use super::handle::{Abort, Ended, Job};

/// Inline room for a job, in machine words.
const WORDS: usize = 3;
type Storage = [MaybeUninit<usize>; WORDS];

struct VTable<S> {
    run: unsafe fn(*mut Storage, &mut S, &Ledger<'_>) -> Ended,
    abort: unsafe fn(*mut Storage, Abort, &Ledger<'_>) -> Ended,
    drop: unsafe fn(*mut Storage),
}

/// The vtable of one job type, as a constant so it can be borrowed `'static`.
struct Table<J, S>(PhantomData<(J, S)>);

impl<S, J: Job<S>> Table<J, S> {
    const VTABLE: VTable<S> = VTable {
        run: run_in_place::<J, S>,
        abort: abort_in_place::<J, S>,
        drop: drop_in_place::<J>,
    };
}

/// # Safety
/// `p` holds an initialised `J` that nothing reads or drops afterwards.
unsafe fn run_in_place<J: Job<S>, S>(p: *mut Storage, state: &mut S, c: &Ledger<'_>) -> Ended {
    // SAFETY: guaranteed by the caller: the value is initialised and this is
    // its only read, so moving it out is sound.
    let job = unsafe { ptr::read(p.cast::<J>()) };
    job.run(state, c)
}

/// # Safety
/// As for [`run_in_place`].
unsafe fn abort_in_place<J: Job<S>, S>(p: *mut Storage, why: Abort, c: &Ledger<'_>) -> Ended {
    // SAFETY: as in `run_in_place`.
    let job = unsafe { ptr::read(p.cast::<J>()) };
    job.abort(why, c)
}

/// # Safety
/// `p` holds an initialised `J` that nothing uses afterwards.
unsafe fn drop_in_place<J>(p: *mut Storage) {
    // SAFETY: guaranteed by the caller.
    unsafe { ptr::drop_in_place(p.cast::<J>()) }
}

/// A job too large or too aligned for the inline room: boxed, and the box
/// stored inline.
struct Boxed<J>(Box<J>);

impl<S, J: Job<S>> Job<S> for Boxed<J> {
    fn run(self, state: &mut S, c: &Ledger<'_>) -> Ended {
        (*self.0).run(state, c)
    }
    fn abort(self, why: Abort, c: &Ledger<'_>) -> Ended {
        (*self.0).abort(why, c)
    }
}

const fn fits<J>() -> bool {
    size_of::<J>() <= size_of::<Storage>() && align_of::<J>() <= align_of::<Storage>()
}

/// One queued job, run or aborted exactly once (or dropped).
pub(crate) struct JobBox<S: 'static> {
    data: Storage,
    vtable: &'static VTable<S>,
}

// SAFETY: a `JobBox` is only ever made from a `J: Job<S>`, and `Job` requires
// `Send`; the vtable is a table of plain functions.
unsafe impl<S> Send for JobBox<S> {}

impl<S: 'static> JobBox<S> {
    pub(crate) fn new<J: Job<S> + 'static>(job: J) -> Self {
        if fits::<J>() {
            Self::inline(job)
        } else {
            Self::inline(Boxed(Box::new(job)))
        }
    }

    fn inline<J: Job<S> + 'static>(job: J) -> Self {
        // Never taken for a type that does not fit (checked by `new`); kept
        // as a hard stop so the write below can never overflow.
        assert!(fits::<J>(), "job does not fit its inline storage");
        let mut data: Storage = [MaybeUninit::uninit(); WORDS];
        // SAFETY: `data` is large and aligned enough for `J` (asserted above),
        // and it is uninitialised, so nothing is overwritten.
        unsafe { ptr::write(data.as_mut_ptr().cast::<J>(), job) };
        Self {
            data,
            vtable: &Table::<J, S>::VTABLE,
        }
    }

    /// Runs the job.
    pub(crate) fn run(self, state: &mut S, c: &Ledger<'_>) -> Ended {
        let mut me = ManuallyDrop::new(self);
        let f = me.vtable.run;
        // SAFETY: `data` holds the initialised job written by `inline`, and
        // `ManuallyDrop` keeps `Drop` from touching it after this one read.
        unsafe { f(&mut me.data, state, c) }
    }

    /// Removes the job without running it.
    pub(crate) fn abort(self, why: Abort, c: &Ledger<'_>) -> Ended {
        let mut me = ManuallyDrop::new(self);
        let f = me.vtable.abort;
        // SAFETY: as in `run`.
        unsafe { f(&mut me.data, why, c) }
    }
}

impl<S: 'static> Drop for JobBox<S> {
    fn drop(&mut self) {
        // SAFETY: a `JobBox` that is dropped was neither run nor aborted (both
        // consume it through `ManuallyDrop`), so `data` still holds the job.
        unsafe { (self.vtable.drop)(&mut self.data) }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::*;
    use crate::pool::core::Counters;
    use crate::pool::handle::ExecJob;

    struct CountDrop(Arc<AtomicUsize>);
    impl Drop for CountDrop {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn counters() -> Counters {
        Counters::new()
    }

    fn ledger(c: &Counters) -> Ledger<'_> {
        Ledger::new(c, None)
    }

    #[test]
    fn small_and_large_jobs_run_once_and_drop_once() {
        let drops = Arc::new(AtomicUsize::new(0));
        let ran = Arc::new(AtomicUsize::new(0));
        let c = counters();
        // Small: one Arc captured, stored inline.
        let (d, r) = (CountDrop(drops.clone()), ran.clone());
        let small = JobBox::<()>::new(ExecJob(move |_: &mut ()| {
            let _keep = &d;
            r.fetch_add(1, Ordering::SeqCst);
        }));
        assert_eq!(small.run(&mut (), &ledger(&c)), Ended::Completed);
        // Large: 64 bytes of captures, boxed.
        let (d, r) = (CountDrop(drops.clone()), ran.clone());
        let big = [7u64; 8];
        let large = JobBox::<()>::new(ExecJob(move |_: &mut ()| {
            let _keep = &d;
            r.fetch_add(big.iter().sum::<u64>() as usize, Ordering::SeqCst);
        }));
        assert_eq!(large.run(&mut (), &ledger(&c)), Ended::Completed);
        assert_eq!(ran.load(Ordering::SeqCst), 1 + 56);
        assert_eq!(drops.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn aborted_and_dropped_jobs_release_their_captures() {
        let drops = Arc::new(AtomicUsize::new(0));
        let c = counters();
        for big in [false, true] {
            let d = CountDrop(drops.clone());
            let pad = [0u8; 40];
            let job = if big {
                JobBox::<()>::new(ExecJob(move |_: &mut ()| drop((d, pad))))
            } else {
                JobBox::<()>::new(ExecJob(move |_: &mut ()| drop(d)))
            };
            assert_eq!(job.abort(Abort::Expired, &ledger(&c)), Ended::Expired);
            let d = CountDrop(drops.clone());
            drop(JobBox::<()>::new(ExecJob(move |_: &mut ()| drop(d))));
        }
        assert_eq!(drops.load(Ordering::SeqCst), 4);
    }

    #[test]
    fn over_aligned_jobs_are_boxed() {
        #[repr(align(64))]
        struct Wide(u8);
        let w = Wide(3);
        let ran = Arc::new(AtomicUsize::new(0));
        let r = ran.clone();
        let job = JobBox::<()>::new(ExecJob(move |_: &mut ()| {
            r.fetch_add(usize::from(w.0), Ordering::SeqCst);
        }));
        job.run(&mut (), &ledger(&counters()));
        assert_eq!(ran.load(Ordering::SeqCst), 3);
    }
}
