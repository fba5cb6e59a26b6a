//! The process's one timer: it fires the graph's node timeouts and run
//! deadlines and the front door's request deadlines. One thread, started
//! by the first entry, asleep until the earliest entry is due (or forever
//! when there is none). It never polls and runs no user code of its own:
//! firing an entry ends a node or a run (see `graph::run`), which at most
//! submits ready nodes without blocking, or wakes a task.
//!
//! Invariants:
//! - Entries are keyed by (due time, sequence number), so keys are unique
//!   and a cancel removes exactly its own entry.
//! - The thread sleeps at most until the first key it saw; a new entry
//!   earlier than every other wakes it.
//! - An entry holds its target weakly: a target nobody holds is not kept
//!   alive (and firing it does nothing).
//! - The timer's lock is never held while an entry fires, so firing may
//!   schedule and cancel entries.

use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex, OnceLock, Weak};
use std::time::Instant;

use crate::sync::lock;

/// What an entry fires.
pub(crate) trait Fire: Send + Sync + 'static {
    /// The entry of `tag` is due.
    fn fire(self: Arc<Self>, tag: usize);
}

/// Names one scheduled entry, for [`cancel`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Key(Instant, u64);

struct Entry {
    target: Weak<dyn Fire>,
    /// What the target is told (a graph node's index, or its run's tag).
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

/// Fires `tag` of `target` at `at`. `None` if the timer thread could not
/// be started: the caller then finds lateness only when its work returns
/// or expires in the pool.
pub(crate) fn schedule(at: Instant, target: Weak<dyn Fire>, tag: usize) -> Option<Key> {
    let timer = TIMER.get_or_init(Timer::default);
    let mut st = lock(&timer.state);
    if !st.started {
        let spawned = std::thread::Builder::new()
            .name("facepool-timer".to_owned())
            .spawn(move || serve(timer));
        if spawned.is_err() {
            return None;
        }
        st.started = true;
    }
    st.seq += 1;
    let key = Key(at, st.seq);
    let first = st.due.first_key_value().is_none_or(|(k, _)| key < *k);
    st.due.insert(key, Entry { target, tag });
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
                if let Some(target) = e.target.upgrade() {
                    // Firing runs no user code, but the target may be
                    // dropped here (a graph run's input and values are
                    // user data).
                    let _ = crate::panics::catch(move || target.fire(e.tag));
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
