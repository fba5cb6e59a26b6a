//! Admission: the submit path, the shutdown gate, and blocked submitters.
//!
//! Invariants:
//! - The window: `admitted - ended <= capacity + queue_cap` (`limit`) at
//!   every instant, so `waiting + running` never exceeds it, also while
//!   `tune` moves the capacity. `admitted` grows by compare-and-set against
//!   a recent `ended`; a stale `ended` only under-admits, so the submitter
//!   reads the workers' counters only when the pool looks full (stress:
//!   `tests/stress.rs`, the admission observer).
//! - The gate counts submitters between their closed check and their push;
//!   its top bit is "closed". A worker leaves a closed pool only when the
//!   queue is empty and nobody is inside the gate, and the shutdown barrier
//!   also waits for the gate to empty: a job accepted at the moment of a
//!   shutdown is drained, never lost (loom: `shutdown_races_submit`,
//!   `restart_races_shutdown`).
//! - Blocked submitters: a submitter registers (`blocked_unnotified`,
//!   mirrored in `has_blocked`) under the lock, fences, and re-checks for
//!   room; a worker counts its job's outcome, fences, and reads
//!   `has_blocked`. One of them sees the other. Registered submitters are
//!   notified all at once and register again if still blocked;
//!   `notify_epoch` tells one that gives up whether it is still counted
//!   (loom: `blocked_submitter_is_let_in`, `two_blocked_submitters`).

use std::time::Instant;

use crate::sync::{fence, lock, thread, wait, wait_timeout, Arc, AtomicU64, Ordering};

use super::super::error::SubmitError;
use super::wake::{has_spare, searching, YIELD_EVERY};
use super::{Shared, State, Task, Wait};

/// `Submit::gate`: set once the pool is closed; the rest counts submitters
/// between their closed check and their push.
pub(super) const CLOSED: u64 = 1 << 63;

/// The submit side's counters, on a cache line of their own.
pub(super) struct Submit {
    pub(super) gate: AtomicU64,
    /// Jobs admitted, ever.
    pub(super) admitted: AtomicU64,
    /// A recent value of `Counters::ended` (it only grows, so a stale value
    /// only under-admits).
    ended_seen: AtomicU64,
    /// Submits refused.
    rejected: AtomicU64,
}

impl Submit {
    pub(super) fn new() -> Self {
        Self {
            gate: AtomicU64::new(0),
            admitted: AtomicU64::new(0),
            ended_seen: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
        }
    }
}

impl<S: 'static> Shared<S> {
    /// Admits `task` or hands it back with the reason.
    pub(crate) fn push(this: &Arc<Self>, task: Task<S>, mode: Wait) -> Result<(), (Task<S>, SubmitError)> {
        let gate = &this.submit.gate;
        let admitted = if gate.fetch_add(1, Ordering::SeqCst) & CLOSED != 0 {
            Err(SubmitError::Closed)
        } else if this.try_admit() {
            Ok(())
        } else {
            this.admit_slow(mode)
        };
        if let Err(e) = admitted {
            this.submit.rejected.fetch_add(1, Ordering::SeqCst);
            this.leave_gate();
            return Err((task, e));
        }
        this.queue.push(task);
        // Pairs with the fence of a worker going to park (see `wake`).
        fence(Ordering::SeqCst);
        let w = this.wake.load(Ordering::SeqCst);
        if searching(w) == 0 && has_spare(w) {
            Shared::dispatch_now(this);
        }
        this.leave_gate();
        Ok(())
    }

    /// A submitter is done with its push (or refusal). The last one out of
    /// a closed pool tells a waiting shutdown.
    fn leave_gate(&self) {
        if self.submit.gate.fetch_sub(1, Ordering::SeqCst) == CLOSED | 1 {
            let _st = lock(&self.state);
            self.exited.notify_all();
        }
    }

    /// Submitters between their closed check and their push.
    pub(super) fn in_gate(&self) -> u64 {
        self.submit.gate.load(Ordering::SeqCst) & !CLOSED
    }

    /// Every submit call (accepted or not) and the refused ones.
    pub(crate) fn submits(&self) -> (u64, u64) {
        let rejected = self.submit.rejected.load(Ordering::SeqCst);
        (self.submit.admitted.load(Ordering::SeqCst) + rejected, rejected)
    }

    /// Takes back the `submitted` and `rejected` counts of one refusal.
    pub(crate) fn uncount_rejected(&self) {
        self.submit.rejected.fetch_sub(1, Ordering::SeqCst);
    }

    /// Takes a place in the window if there is one, without blocking.
    fn try_admit(&self) -> bool {
        let limit = self.limit.load(Ordering::SeqCst);
        let sub = &self.submit;
        let mut seen = sub.ended_seen.load(Ordering::Relaxed);
        let mut a = sub.admitted.load(Ordering::Relaxed);
        loop {
            // `seen` may be newer than `a`; then `a` is stale and the
            // exchange below fails and reloads it.
            if a.saturating_sub(seen) >= limit {
                let ended = self.counters.ended();
                if a.saturating_sub(ended) >= limit {
                    return false;
                }
                sub.ended_seen.fetch_max(ended, Ordering::Relaxed);
                seen = ended;
            }
            match sub
                .admitted
                .compare_exchange_weak(a, a + 1, Ordering::SeqCst, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(now) => a = now,
            }
        }
    }

    /// The pool is full: refuse at once, or block (at most `limit`, if
    /// given) until there is room.
    fn admit_slow(&self, mode: Wait) -> Result<(), SubmitError> {
        let limit = match mode {
            Wait::No => return Err(SubmitError::Overloaded),
            Wait::Block(limit) => limit,
        };
        // Room usually comes within microseconds when jobs are short: poll
        // a while (yielding the core to the workers) before sleeping.
        for _ in 0..self.config.spin / YIELD_EVERY {
            thread::yield_now();
            if self.try_admit() {
                return Ok(());
            }
        }
        let mut st = lock(&self.state);
        let mut started: Option<Instant> = None;
        let mut blocked = false;
        // The notification epoch of this submitter's registration, if any.
        let mut registration: Option<u64> = None;
        let outcome = loop {
            if st.closed {
                break Err(SubmitError::Closed);
            }
            if registration != Some(st.notify_epoch) {
                st.blocked_unnotified += 1;
                registration = Some(st.notify_epoch);
                self.publish(&mut st);
                // Pairs with the worker's fence between counting an outcome
                // and reading `has_blocked`.
                fence(Ordering::SeqCst);
            }
            if self.try_admit() {
                break Ok(());
            }
            if !blocked {
                if self.config.max_blocked.is_some_and(|m| st.blocked >= m) {
                    break Err(SubmitError::Overloaded);
                }
                st.blocked += 1;
                blocked = true;
            }
            match limit {
                None => st = wait(&self.not_full, st),
                Some(limit) => {
                    let t0 = *started.get_or_insert_with(Instant::now);
                    let left = limit.saturating_sub(t0.elapsed());
                    if left.is_zero() {
                        break Err(SubmitError::Timeout(limit));
                    }
                    st = wait_timeout(&self.not_full, st, left).0;
                }
            }
        };
        if registration == Some(st.notify_epoch) {
            // Not notified since it registered: withdraw the registration.
            st.blocked_unnotified -= 1;
            self.publish(&mut st);
        }
        if blocked {
            st.blocked -= 1;
        }
        outcome
    }

    /// Marks every registered blocked submitter notified; the caller
    /// notifies `not_full` (after releasing the lock). Returns whether any
    /// was registered.
    pub(super) fn release_blocked(&self, st: &mut State) -> bool {
        if st.blocked_unnotified == 0 {
            return false;
        }
        st.blocked_unnotified = 0;
        st.notify_epoch += 1;
        self.publish(st);
        true
    }

    /// A job ended: let blocked submitters re-check for room.
    pub(super) fn notify_blocked(&self) {
        let mut st = lock(&self.state);
        let any = self.release_blocked(&mut st);
        drop(st);
        if any {
            self.not_full.notify_all();
        }
    }
}
