//! Outcome counters, and the ledger jobs count themselves in.
//!
//! Invariants:
//! - Every counter only grows, and every reported figure is a sum of
//!   counters, never a difference: two reads in order give figures in
//!   order, so nothing derived from them goes backwards or underflows
//!   (`tests/pool_user_code.rs`, `derived_counters_never_go_backwards...`).
//! - An outcome bumps its own counter, once, sequentially consistent (one
//!   atomic write per job); admission's `ended` is the sum of all four per
//!   shard (one cache line each), read only when the pool looks full. A
//!   blocked submitter's re-check and a worker's look at `has_blocked`
//!   after counting cannot both miss each other (loom:
//!   `blocked_submitter_is_let_in`, `two_blocked_submitters`).
//! - Counters are sharded so that workers finishing jobs at the same time
//!   do not fight over one cache line; a read sums the shards.

use crate::sync::{AtomicU64, Ordering};

use super::super::handle::{Ended, Wake};
use super::PanicHook;

/// Outcome counters of one shard, on a cache line of their own.
#[repr(align(128))]
struct Shard {
    completed: AtomicU64,
    panicked: AtomicU64,
    expired: AtomicU64,
    cancelled: AtomicU64,
}

impl Shard {
    fn new() -> Self {
        Self {
            completed: AtomicU64::new(0),
            panicked: AtomicU64::new(0),
            expired: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
        }
    }
}

const SHARDS: usize = 4;

std::thread_local! {
    /// Which counter shard this thread bumps (assigned round-robin).
    static SHARD: std::cell::Cell<usize> = const { std::cell::Cell::new(usize::MAX) };
}
static NEXT_SHARD: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn my_shard() -> usize {
    SHARD.with(|c| {
        if c.get() == usize::MAX {
            c.set(NEXT_SHARD.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % SHARDS);
        }
        c.get()
    })
}

/// The pool's counters: outcomes (sharded) and the rarer events.
pub(crate) struct Counters {
    shards: [Shard; SHARDS],
    pub(crate) resizes: AtomicU64,
    pub(crate) grows: AtomicU64,
    pub(crate) shrinks: AtomicU64,
    pub(crate) spawn_failures: AtomicU64,
}

/// Sums of the outcome counters.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Outcomes {
    pub(crate) completed: u64,
    pub(crate) panicked: u64,
    pub(crate) expired: u64,
    pub(crate) cancelled: u64,
}

impl Outcomes {
    /// Jobs that ended by running (done, panicked) or expiring.
    pub(crate) fn finished(&self) -> u64 {
        self.completed + self.panicked + self.expired
    }
}

impl Counters {
    pub(crate) fn new() -> Self {
        Self {
            shards: std::array::from_fn(|_| Shard::new()),
            resizes: AtomicU64::new(0),
            grows: AtomicU64::new(0),
            shrinks: AtomicU64::new(0),
            spawn_failures: AtomicU64::new(0),
        }
    }

    /// Counts one outcome.
    #[inline]
    pub(crate) fn count(&self, ended: &Ended) {
        let sh = &self.shards[my_shard()];
        let own = match ended {
            Ended::Completed => &sh.completed,
            Ended::Panicked(_) => &sh.panicked,
            Ended::Expired => &sh.expired,
            Ended::Cancelled => &sh.cancelled,
        };
        own.fetch_add(1, Ordering::SeqCst);
    }

    /// Every outcome counted so far.
    pub(crate) fn ended(&self) -> u64 {
        let s = Ordering::SeqCst;
        self.shards
            .iter()
            .map(|sh| sh.completed.load(s) + sh.panicked.load(s) + sh.expired.load(s) + sh.cancelled.load(s))
            .sum()
    }

    /// The outcome counters, each summed over the shards.
    pub(crate) fn outcomes(&self) -> Outcomes {
        let r = Ordering::Relaxed;
        let mut o = Outcomes::default();
        for s in &self.shards {
            o.completed += s.completed.load(r);
            o.panicked += s.panicked.load(r);
            o.expired += s.expired.load(r);
            o.cancelled += s.cancelled.load(r);
        }
        o
    }
}

/// What a job needs to end itself: the counters, and where a panic of user
/// code that is not the job's outcome (a drop, a waker) is reported.
pub(crate) struct Ledger<'a> {
    counters: &'a Counters,
    on_panic: Option<&'a PanicHook>,
}

impl<'a> Ledger<'a> {
    pub(crate) fn new(counters: &'a Counters, on_panic: Option<&'a PanicHook>) -> Self {
        Self { counters, on_panic }
    }

    /// Counts one outcome.
    #[inline]
    pub(crate) fn count(&self, ended: &Ended) {
        self.counters.count(ended);
    }

    /// Tells the panic handler. A panic inside the handler itself is
    /// dropped: there is nobody left to tell, and the thread must survive.
    pub(crate) fn report(&self, msg: &str) {
        if let Some(h) = self.on_panic {
            let _ = crate::panics::catch(|| h(msg));
        }
    }

    /// Drops user data (`what` names it in the report if its drop panics).
    pub(crate) fn drop_user<T>(&self, what: &str, x: T) {
        if let Err(msg) = crate::panics::drop_caught(x) {
            self.report(&format!("dropping {what} panicked: {msg}"));
        }
    }

    /// Wakes a decided slot's async waiter (user code: a panic is reported).
    pub(crate) fn wake(&self, w: Wake) {
        if let Err(msg) = w.caught() {
            self.report(&format!("a waker panicked: {msg}"));
        }
    }
}
