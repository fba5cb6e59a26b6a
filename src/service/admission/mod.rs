//! Admission: the front door's one permit.
//!
//! A request asks once, before any of its images is decoded, for a permit
//! covering its [`Cost`]: the faces its images may yield and their encoded
//! bytes. It gets all of it or none. Two ways to ask:
//!
//! - [`Admission::try_acquire`]: at once or never (`Overloaded`), for
//!   callers that shed load (an HTTP request answered 429);
//! - [`Admission::acquire`] (a future) and [`Admission::acquire_blocking`]:
//!   wait in line, first come first served, until the permit is granted,
//!   the deadline passes or admission closes (a NATS job, a batch run from
//!   the command line).
//!
//! Invariants (checked by the tests below and `tests/admission.rs`):
//! - **All or none**: a permit is granted whole; what is in use never goes
//!   over the limit, except that one request alone may always run (when
//!   nothing is in use) if it is within the hard cap: a request bigger than
//!   a (moving) limit is delayed, never starved.
//! - **FIFO, no barging**: while anyone waits, `try_acquire` refuses and
//!   new waiters queue behind; capacity that frees goes to the head of the
//!   line first. A big request is not starved by a stream of small ones.
//! - **No polling**: a waiter sleeps until a release, a limit change or
//!   closing grants it (or its deadline passes); the releaser wakes it.
//! - **Nothing leaks**: a waiter that gives up (dropped future, deadline)
//!   leaves the line; if it was granted meanwhile it hands the capacity
//!   back at once. A permit's capacity returns when the permit (or each
//!   part split from it) is dropped.
//!
//! Lock order: the admission's state, then a waiter's slot. Wakers are
//! woken after both are released.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use crate::sync::{lock, wait_until};

/// What a request asks for: the faces its images may yield and their bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cost {
    /// Faces (one per image today).
    pub faces: usize,
    /// Encoded bytes of the images held in memory.
    pub bytes: usize,
}

impl Cost {
    /// `faces` faces of `bytes` bytes.
    pub fn new(faces: usize, bytes: usize) -> Self {
        Self { faces, bytes }
    }

    /// The sum of two costs.
    pub fn saturating_add(self, o: Cost) -> Cost {
        Cost {
            faces: self.faces.saturating_add(o.faces),
            bytes: self.bytes.saturating_add(o.bytes),
        }
    }

    /// What `self` asks beyond `o` (zero where `o` covers it).
    pub fn saturating_sub(self, o: Cost) -> Cost {
        Cost {
            faces: self.faces.saturating_sub(o.faces),
            bytes: self.bytes.saturating_sub(o.bytes),
        }
    }

    fn within(self, limit: Cost) -> bool {
        self.faces <= limit.faces && self.bytes <= limit.bytes
    }

    fn min(self, o: Cost) -> Cost {
        Cost {
            faces: self.faces.min(o.faces),
            bytes: self.bytes.min(o.bytes),
        }
    }

    fn is_zero(self) -> bool {
        self.faces == 0 && self.bytes == 0
    }
}

/// Why admission refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdmitError {
    /// More than the hard cap: no wait can help.
    #[error("{} faces and {} bytes in one request, over the limit of {} faces and {} bytes", asked.faces, asked.bytes, cap.faces, cap.bytes)]
    TooLarge {
        /// What was asked.
        asked: Cost,
        /// The hard cap.
        cap: Cost,
    },
    /// Full now (and, for a waiter, not before its deadline).
    #[error("at capacity")]
    Overloaded,
    /// The deadline passed while waiting in line.
    #[error("the deadline passed while waiting for admission")]
    Timeout,
    /// Admission is closed (the service is stopping).
    #[error("the service is shutting down")]
    Closed,
}

/// Counts of the admission, for gauges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AdmissionStats {
    /// The current limit (faces and bytes in use at once).
    pub limit: Cost,
    /// The hard cap a single request may not pass.
    pub cap: Cost,
    /// In use now.
    pub in_use: Cost,
    /// Waiters in line.
    pub waiting: usize,
    /// Permits granted.
    pub granted: u64,
    /// Refused at once because full (`try_acquire`).
    pub refused_full: u64,
    /// Refused because over the hard cap.
    pub refused_too_large: u64,
    /// Waiters whose deadline passed (or who gave up) in line.
    pub gave_up: u64,
    /// Permits granted after waiting in line.
    pub granted_after_wait: u64,
}

enum SlotState {
    Waiting(Option<Waker>),
    Granted,
    Closed,
}

struct Slot {
    state: Mutex<SlotState>,
    cv: Condvar,
}

impl Slot {
    fn new(waker: Option<Waker>) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(SlotState::Waiting(waker)),
            cv: Condvar::new(),
        })
    }

    /// Sets the slot's end; returns the waker to wake (after unlocking).
    fn settle(&self, to: SlotState) -> Option<Waker> {
        let mut s = lock(&self.state);
        let waker = match std::mem::replace(&mut *s, to) {
            SlotState::Waiting(w) => w,
            _ => None,
        };
        drop(s);
        self.cv.notify_all();
        waker
    }
}

struct Waiter {
    id: u64,
    cost: Cost,
    slot: Arc<Slot>,
}

struct State {
    limit: Cost,
    cap: Cost,
    in_use: Cost,
    line: VecDeque<Waiter>,
    next_id: u64,
    closed: bool,
    stats: AdmissionStats,
}

impl State {
    /// Whether `cost` may be granted now, ignoring the line.
    fn fits(&self, cost: Cost) -> bool {
        // One request alone may always run if within the cap.
        self.in_use.is_zero() || self.in_use.saturating_add(cost).within(self.limit)
    }

    /// Grants the head of the line while it fits; returns the wakers.
    fn grant_line(&mut self, wake: &mut Vec<Waker>) {
        while let Some(head) = self.line.front() {
            if !self.fits(head.cost) {
                break;
            }
            let Some(w) = self.line.pop_front() else { break };
            self.in_use = self.in_use.saturating_add(w.cost);
            self.stats.granted += 1;
            self.stats.granted_after_wait += 1;
            wake.extend(w.slot.settle(SlotState::Granted));
        }
    }

    fn remove(&mut self, id: u64) -> bool {
        match self.line.iter().position(|w| w.id == id) {
            Some(i) => {
                self.line.remove(i);
                true
            }
            None => false,
        }
    }
}

struct Shared {
    state: Mutex<State>,
}

impl Shared {
    fn release(&self, cost: Cost) {
        if cost.is_zero() {
            return;
        }
        let mut wake = Vec::new();
        {
            let mut s = lock(&self.state);
            s.in_use = s.in_use.saturating_sub(cost);
            s.grant_line(&mut wake);
        }
        wake.into_iter().for_each(Waker::wake);
    }
}

/// The admission of one service: a limit on what is in use at once, a
/// hard cap per request, and a line of waiters. Cheap to clone (clones
/// share it).
#[derive(Clone)]
pub struct Admission {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admission").field("stats", &self.stats()).finish()
    }
}

/// A request's admission, all of it; given back when dropped (each part
/// split from it when that part is dropped).
#[must_use = "the admission is given back when the permit is dropped"]
pub struct Permit {
    shared: Option<Arc<Shared>>,
    cost: Cost,
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permit").field("cost", &self.cost).finish()
    }
}

impl Permit {
    /// A permit of nothing, from no admission (for work admitted elsewhere).
    pub fn none() -> Self {
        Self {
            shared: None,
            cost: Cost::default(),
        }
    }

    /// What this permit still holds.
    pub fn cost(&self) -> Cost {
        self.cost
    }

    /// Moves `part` (at most what this holds) into a permit of its own,
    /// given back when that one is dropped.
    pub fn split(&mut self, part: Cost) -> Permit {
        let part = part.min(self.cost);
        self.cost = self.cost.saturating_sub(part);
        Permit {
            shared: self.shared.clone(),
            cost: part,
        }
    }

    /// Adds `other` (from the same admission) to this permit.
    pub fn merge(&mut self, mut other: Permit) {
        if self.shared.is_none() {
            self.shared = other.shared.clone();
        }
        self.cost = self.cost.saturating_add(std::mem::take(&mut other.cost));
    }

    /// Gives the bytes back now (the images are decoded), keeping the faces.
    pub fn release_bytes(&mut self) {
        let bytes = Cost::new(0, self.cost.bytes);
        self.cost.bytes = 0;
        if let Some(s) = &self.shared {
            s.release(bytes);
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(s) = self.shared.take() {
            s.release(self.cost);
        }
    }
}

impl Admission {
    /// An admission with `limit` in use at once and `cap` per request (a
    /// limit above the cap is lowered to it).
    pub fn new(limit: Cost, cap: Cost) -> Self {
        let cap = Cost::new(cap.faces.max(1), cap.bytes.max(1));
        let limit = Cost::new(limit.faces.clamp(1, cap.faces), limit.bytes.clamp(1, cap.bytes));
        let stats = AdmissionStats {
            limit,
            cap,
            ..AdmissionStats::default()
        };
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    limit,
                    cap,
                    in_use: Cost::default(),
                    line: VecDeque::new(),
                    next_id: 0,
                    closed: false,
                    stats,
                }),
            }),
        }
    }

    fn permit(&self, cost: Cost) -> Permit {
        Permit {
            shared: Some(self.shared.clone()),
            cost,
        }
    }

    /// Checks that can refuse at once; `Ok(true)` if granted now.
    fn enter(s: &mut State, cost: Cost, queue_ok: bool) -> Result<bool, AdmitError> {
        if s.closed {
            return Err(AdmitError::Closed);
        }
        if !cost.within(s.cap) {
            s.stats.refused_too_large += 1;
            return Err(AdmitError::TooLarge {
                asked: cost,
                cap: s.cap,
            });
        }
        if s.line.is_empty() && s.fits(cost) {
            s.in_use = s.in_use.saturating_add(cost);
            s.stats.granted += 1;
            return Ok(true);
        }
        if !queue_ok {
            s.stats.refused_full += 1;
            return Err(AdmitError::Overloaded);
        }
        Ok(false)
    }

    /// The permit now, or `Overloaded` (also while others wait in line:
    /// no barging), `TooLarge` or `Closed`.
    pub fn try_acquire(&self, cost: Cost) -> Result<Permit, AdmitError> {
        let mut s = lock(&self.shared.state);
        Self::enter(&mut s, cost, false)?;
        drop(s);
        Ok(self.permit(cost))
    }

    /// Waits in line for the permit (a future; dropping it leaves the line).
    /// Bound the wait with the caller's deadline.
    pub fn acquire(&self, cost: Cost) -> Acquire {
        Acquire {
            admission: self.clone(),
            cost,
            waiting: None,
            done: false,
        }
    }

    /// Waits in line on this thread until the permit is granted or
    /// `deadline` passes (`Timeout`).
    pub fn acquire_blocking(&self, cost: Cost, deadline: Option<Instant>) -> Result<Permit, AdmitError> {
        let (id, slot) = {
            let mut s = lock(&self.shared.state);
            if Self::enter(&mut s, cost, true)? {
                drop(s);
                return Ok(self.permit(cost));
            }
            Self::queue(&mut s, cost, None)
        };
        let mut st = lock(&slot.state);
        loop {
            match &*st {
                SlotState::Granted => return Ok(self.permit(cost)),
                SlotState::Closed => return Err(AdmitError::Closed),
                SlotState::Waiting(_) => {}
            }
            let (g, timed_out) = wait_until(&slot.cv, st, deadline);
            st = g;
            if timed_out && matches!(&*st, SlotState::Waiting(_)) {
                drop(st);
                return self.give_up(id, &slot, cost).ok_or(AdmitError::Timeout);
            }
        }
    }

    fn queue(s: &mut State, cost: Cost, waker: Option<Waker>) -> (u64, Arc<Slot>) {
        let id = s.next_id;
        s.next_id += 1;
        let slot = Slot::new(waker);
        s.line.push_back(Waiter {
            id,
            cost,
            slot: slot.clone(),
        });
        (id, slot)
    }

    /// A waiter leaves the line. If it was granted meanwhile, the permit is
    /// returned to the caller (who may keep or drop it).
    fn give_up(&self, id: u64, slot: &Slot, cost: Cost) -> Option<Permit> {
        let mut wake = Vec::new();
        let granted = {
            let mut s = lock(&self.shared.state);
            if s.remove(id) {
                s.stats.gave_up += 1;
                // The head may have been the one blocking the others.
                s.grant_line(&mut wake);
                false
            } else {
                matches!(&*lock(&slot.state), SlotState::Granted)
            }
        };
        wake.into_iter().for_each(Waker::wake);
        granted.then(|| self.permit(cost))
    }

    /// Sets the limit (at most the cap, at least 1 face and 1 byte); a
    /// higher limit admits waiters at once, a lower one only stops new
    /// grants (what is in use finishes).
    pub fn set_limit(&self, limit: Cost) {
        let mut wake = Vec::new();
        {
            let mut s = lock(&self.shared.state);
            let cap = s.cap;
            s.limit = Cost::new(limit.faces.clamp(1, cap.faces), limit.bytes.clamp(1, cap.bytes));
            s.stats.limit = s.limit;
            s.grant_line(&mut wake);
        }
        wake.into_iter().for_each(Waker::wake);
    }

    /// Refuses every request from now on (`Closed`), waiters included.
    /// Permits already granted stay valid.
    pub fn close(&self) {
        let mut wake = Vec::new();
        {
            let mut s = lock(&self.shared.state);
            s.closed = true;
            for w in s.line.drain(..) {
                wake.extend(w.slot.settle(SlotState::Closed));
            }
        }
        wake.into_iter().for_each(Waker::wake);
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        lock(&self.shared.state).closed
    }

    /// What is in use now.
    pub fn in_use(&self) -> Cost {
        lock(&self.shared.state).in_use
    }

    /// The counts.
    pub fn stats(&self) -> AdmissionStats {
        let s = lock(&self.shared.state);
        AdmissionStats {
            in_use: s.in_use,
            waiting: s.line.len(),
            ..s.stats
        }
    }
}

/// Waiting in line for a permit ([`Admission::acquire`]).
#[must_use = "futures do nothing unless polled"]
pub struct Acquire {
    admission: Admission,
    cost: Cost,
    waiting: Option<(u64, Arc<Slot>)>,
    done: bool,
}

impl Future for Acquire {
    type Output = Result<Permit, AdmitError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.done {
            return Poll::Ready(Err(AdmitError::Closed));
        }
        let cost = self.cost;
        let Some((_, slot)) = &self.waiting else {
            let entered = {
                let mut s = lock(&self.admission.shared.state);
                Self::enter_or_queue(&mut s, cost, cx.waker())
            };
            return match entered {
                Err(e) => {
                    self.done = true;
                    Poll::Ready(Err(e))
                }
                Ok(None) => {
                    self.done = true;
                    Poll::Ready(Ok(self.admission.permit(cost)))
                }
                Ok(Some(w)) => {
                    self.waiting = Some(w);
                    Poll::Pending
                }
            };
        };
        let mut st = lock(&slot.state);
        match &mut *st {
            SlotState::Granted => {
                drop(st);
                self.done = true;
                self.waiting = None;
                Poll::Ready(Ok(self.admission.permit(cost)))
            }
            SlotState::Closed => {
                drop(st);
                self.done = true;
                self.waiting = None;
                Poll::Ready(Err(AdmitError::Closed))
            }
            SlotState::Waiting(w) => {
                if !w.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    *w = Some(cx.waker().clone());
                }
                Poll::Pending
            }
        }
    }
}

impl Acquire {
    /// Granted now (`None`), or queued with this waker.
    fn enter_or_queue(
        s: &mut State,
        cost: Cost,
        waker: &Waker,
    ) -> Result<Option<(u64, Arc<Slot>)>, AdmitError> {
        if Admission::enter(s, cost, true)? {
            return Ok(None);
        }
        Ok(Some(Admission::queue(s, cost, Some(waker.clone()))))
    }
}

impl Drop for Acquire {
    fn drop(&mut self) {
        if let Some((id, slot)) = self.waiting.take() {
            // Granted after the last poll: the permit is dropped here,
            // which hands the capacity back.
            drop(self.admission.give_up(id, &slot, self.cost));
        }
    }
}
