//! The timer that fires node timeouts and run deadlines: one thread for the
//! process, started by the first run that needs it, asleep until the
//! earliest entry is due (or forever when there is none). It never polls
//! and runs no user code of its own: firing an entry ends a node or a run
//! (see `run`), which at most submits ready nodes without blocking.
//!
//! Invariants:
//! - Entries are keyed by (due time, sequence number), so keys are unique
//!   and a cancel removes exactly its own entry.
//! - The thread sleeps at most until the first key it saw; a new entry
//!   earlier than every other wakes it.
//! - An entry holds its run weakly: a run nobody holds is not kept alive
//!   (and firing it does nothing).
//! - The timer's lock is never held while an entry fires, so firing may
//!   schedule and cancel entries.

use std::collections::BTreeMap;
use std::sync::{Condvar, Mutex, OnceLock, Weak};
use std::time::Instant;

use crate::sync::lock;

use super::run::RunObj;

/// Names one scheduled entry, for [`cancel`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Key(Instant, u64);

struct Entry {
    run: Weak<dyn RunObj>,
    /// A node index, or [`RUN`](super::run::RUN) for the run's deadline.
    tag: usize,
}

#[derive(Default)]
struct State {
    due: BTreeMap<Key, Entry>,
    seq: u64,
    started: bool,
}

#[derive(Default)]
struct Timer {
    state: Mutex<State>,
    wake: Condvar,
}

static TIMER: OnceLock<Timer> = OnceLock::new();

/// Fires `tag` of `run` at `at`. `None` if the timer thread could not be
/// started: the run then finds lateness only when a node returns or its
/// job expires in the pool.
pub(crate) fn schedule(at: Instant, run: Weak<dyn RunObj>, tag: usize) -> Option<Key> {
    let timer = TIMER.get_or_init(Timer::default);
    let mut st = lock(&timer.state);
    if !st.started {
        let spawned = std::thread::Builder::new()
            .name("facepool-graph-timer".to_owned())
            .spawn(move || serve(timer));
        if spawned.is_err() {
            return None;
        }
        st.started = true;
    }
    st.seq += 1;
    let key = Key(at, st.seq);
    let first = st.due.first_key_value().is_none_or(|(k, _)| key < *k);
    st.due.insert(key, Entry { run, tag });
    drop(st);
    if first {
        timer.wake.notify_one();
    }
    Some(key)
}

/// Removes an entry that has not fired (nothing if it has).
pub(crate) fn cancel(key: Key) {
    if let Some(timer) = TIMER.get() {
        lock(&timer.state).due.remove(&key);
    }
}

fn serve(timer: &'static Timer) {
    let mut fired = Vec::new();
    let mut st = lock(&timer.state);
    loop {
        let now = Instant::now();
        while let Some(e) = st.due.first_entry() {
            if e.key().0 > now {
                break;
            }
            fired.push(e.remove());
        }
        if !fired.is_empty() {
            drop(st);
            for e in fired.drain(..) {
                if let Some(run) = e.run.upgrade() {
                    // Ending a node runs no user code, but the run may be
                    // dropped here (its input and values are user data).
                    let _ = crate::panics::catch(move || run.expire(e.tag));
                }
            }
            st = lock(&timer.state);
            continue;
        }
        st = match st.due.first_key_value().map(|(k, _)| k.0) {
            Some(at) => crate::sync::wait_timeout(&timer.wake, st, at.saturating_duration_since(now)).0,
            None => crate::sync::wait(&timer.wake, st),
        };
    }
}
