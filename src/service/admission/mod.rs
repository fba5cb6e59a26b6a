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
use std::sync::{Arc, Condvar, Mutex};
use std::task::Waker;
use std::time::{Duration, Instant};

use super::limit::{Control, LimitPolicy};
use crate::sync::{lock, wait_until};

mod cost;
mod wait;

pub use cost::{AdmissionStats, AdmitError, Cost};
pub use wait::Acquire;
use wait::Room;

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
    /// Waits for room only ([`Admission::room`]): granted without taking
    /// any.
    probe: bool,
}

struct State {
    limit: Cost,
    cap: Cost,
    in_use: Cost,
    line: VecDeque<Waiter>,
    next_id: u64,
    closed: bool,
    stats: AdmissionStats,
    /// The adaptive limit's controller, when the limit adapts.
    control: Option<Control>,
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
            if !w.probe {
                self.in_use = self.in_use.saturating_add(w.cost);
                if let Some(c) = &mut self.control {
                    c.in_use(self.in_use.faces);
                }
                self.stats.granted += 1;
                self.stats.granted_after_wait += 1;
            }
            wake.extend(w.slot.settle(SlotState::Granted));
        }
    }

    /// When a request of `cost` refused now may try again.
    fn retry_after(&self, cost: Cost) -> Duration {
        let second = Duration::from_secs(1);
        let Some(rate) = self
            .control
            .as_ref()
            .and_then(|c| c.state.rate)
            .filter(|r| *r > 0.0)
        else {
            return second;
        };
        let excess = (self.in_use.faces + cost.faces)
            .saturating_sub(self.limit.faces)
            .max(1);
        Duration::from_secs_f64((excess as f64 / rate).min(60.0)).max(Duration::from_millis(1))
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

/// How a request asks ([`Admission::enter`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ask {
    /// Now or never.
    Now,
    /// Now, else wait in line.
    InLine,
    /// Would it be granted now? (Takes nothing.)
    Peek,
}

struct Shared {
    state: Mutex<State>,
}

impl Shared {
    /// Gives `cost` back, and records `sample` (a request's faces that
    /// finished, and their sojourn) if any.
    fn release(&self, cost: Cost, sample: Option<(usize, Duration)>) {
        if cost.is_zero() && sample.is_none() {
            return;
        }
        let mut wake = Vec::new();
        {
            let mut s = lock(&self.state);
            s.in_use = s.in_use.saturating_sub(cost);
            if let Some(c) = &mut s.control {
                let now = Instant::now();
                if let Some((faces, sojourn)) = sample {
                    c.finished(faces, sojourn, now);
                }
                if let Some(limit) = c.tick(now) {
                    s.limit.faces = limit;
                    s.stats.limit = s.limit;
                }
            }
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
///
/// The adaptive limit's latency sample is the request's: its faces count
/// as finished when the last part holding any of them is given back, with
/// one sojourn for all of them, from the grant to when the last of them
/// finished. What a client waits for is its last face, so a request of
/// two faces gives two samples of the slower, not one of each.
#[must_use = "the admission is given back when the permit is dropped"]
pub struct Permit {
    shared: Option<Arc<Shared>>,
    cost: Cost,
    /// When it was granted (the request's sojourn counts from here).
    granted: Instant,
    /// Shared by the permit and every part split from it.
    tally: Option<Arc<Mutex<Tally>>>,
}

/// A request's faces that finished so far, and when the last did.
#[derive(Debug, Default)]
struct Tally {
    faces: usize,
    last: Option<Instant>,
}

impl Tally {
    fn new() -> Option<Arc<Mutex<Tally>>> {
        Some(Arc::new(Mutex::new(Tally::default())))
    }
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
            granted: Instant::now(),
            // No admission, no sample; a merge takes the other's tally.
            tally: None,
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
            granted: self.granted,
            tally: self.tally.clone(),
        }
    }

    /// Adds `other` (from the same admission) to this permit.
    pub fn merge(&mut self, mut other: Permit) {
        if self.shared.is_none() {
            self.shared = other.shared.clone();
            self.granted = other.granted;
            self.tally = other.tally.clone();
        }
        self.granted = self.granted.min(other.granted);
        self.cost = self.cost.saturating_add(std::mem::take(&mut other.cost));
    }

    /// Gives the bytes back now (the images are decoded), keeping the faces.
    pub fn release_bytes(&mut self) {
        let bytes = Cost::new(0, self.cost.bytes);
        self.cost.bytes = 0;
        if let Some(s) = &self.shared {
            s.release(bytes, None);
        }
    }

    /// Gives back the faces held beyond `keep` now (an image admitted for
    /// more faces than it turned out to have), as never used: they are no
    /// latency sample of the adaptive limit.
    pub fn release_faces_beyond(&mut self, keep: usize) {
        let unused = Cost::new(self.cost.faces.saturating_sub(keep), 0);
        self.cost = self.cost.saturating_sub(unused);
        if let Some(s) = &self.shared {
            s.release(unused, None);
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let Some(s) = self.shared.take() else {
            return;
        };
        let Some(tally) = self.tally.take() else {
            s.release(self.cost, None);
            return;
        };
        if self.cost.faces > 0 {
            let now = Instant::now();
            let mut t = lock(&tally);
            t.faces += self.cost.faces;
            t.last = Some(t.last.map_or(now, |l| l.max(now)));
        }
        // The last part given back (exactly one drop gets the tally)
        // records the request's sample.
        let sample = Arc::into_inner(tally)
            .map(|m| m.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner))
            .and_then(|t| Some((t.faces, t.last?.saturating_duration_since(self.granted))))
            .filter(|(faces, _)| *faces > 0);
        s.release(self.cost, sample);
    }
}

impl Admission {
    /// An admission with `limit` in use at once and `cap` per request (a
    /// limit above the cap is lowered to it).
    pub fn new(limit: Cost, cap: Cost) -> Self {
        Self::with(limit, cap, None)
    }

    /// An admission whose faces limit adapts to hold `policy`'s latency
    /// target (between its `min` and `max`, the hard cap of a request), and
    /// whose bytes limit is `bytes`.
    pub fn adaptive(policy: LimitPolicy, bytes: usize) -> Self {
        let control = Control::new(policy);
        let limit = Cost::new(control.state.faces(), bytes);
        Self::with(limit, Cost::new(policy.max, bytes), Some(control))
    }

    fn with(limit: Cost, cap: Cost, control: Option<Control>) -> Self {
        let cap = Cost::new(cap.faces.max(1), cap.bytes.max(1));
        let limit = Cost::new(limit.faces.clamp(1, cap.faces), limit.bytes.clamp(1, cap.bytes));
        let stats = AdmissionStats {
            limit,
            cap,
            target: control.as_ref().map(|c| c.policy.target),
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
                    control,
                }),
            }),
        }
    }

    fn permit(&self, cost: Cost) -> Permit {
        Permit {
            shared: Some(self.shared.clone()),
            cost,
            granted: Instant::now(),
            tally: Tally::new(),
        }
    }

    /// Checks that can refuse at once; `Ok(true)` if granted now (taken
    /// unless `ask` only peeks).
    fn enter(s: &mut State, cost: Cost, ask: Ask, deadline: Option<Instant>) -> Result<bool, AdmitError> {
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
        // A deadline shorter than the wait it would have: refused at once.
        let in_use = s.in_use.faces;
        if let (Some(d), Some(c)) = (deadline, &mut s.control) {
            if let Some(expected) = c.state.expected(in_use, cost.faces) {
                if Instant::now() + expected > d {
                    c.refused_deadline += 1;
                    s.stats.refused_deadline += 1;
                    return Err(AdmitError::Unmeetable { expected });
                }
            }
        }
        if s.line.is_empty() && s.fits(cost) {
            if ask == Ask::Peek {
                return Ok(true);
            }
            s.in_use = s.in_use.saturating_add(cost);
            s.stats.granted += 1;
            if let Some(c) = &mut s.control {
                c.in_use(s.in_use.faces);
            }
            return Ok(true);
        }
        if let Some(c) = &mut s.control {
            c.limited();
        }
        if ask != Ask::InLine {
            s.stats.refused_full += 1;
            return Err(AdmitError::Overloaded {
                retry_after: s.retry_after(cost),
            });
        }
        Ok(false)
    }

    /// The permit now, or `Overloaded` (also while others wait in line:
    /// no barging), `TooLarge` or `Closed`.
    pub fn try_acquire(&self, cost: Cost) -> Result<Permit, AdmitError> {
        self.try_acquire_by(cost, None)
    }

    /// [`try_acquire`](Self::try_acquire) for a request due by `deadline`:
    /// also refused (`Unmeetable`) when the expected wait is longer.
    pub fn try_acquire_by(&self, cost: Cost, deadline: Option<Instant>) -> Result<Permit, AdmitError> {
        let mut s = lock(&self.shared.state);
        Self::enter(&mut s, cost, Ask::Now, deadline)?;
        drop(s);
        Ok(self.permit(cost))
    }

    /// Whether [`try_acquire_by`](Self::try_acquire_by) would grant `cost`
    /// now, taking nothing: refused (and counted) as it would be. For an
    /// edge that refuses before it reads a request's body, asking for the
    /// least any request costs.
    pub fn would_admit(&self, cost: Cost, deadline: Option<Instant>) -> Result<(), AdmitError> {
        let mut s = lock(&self.shared.state);
        Self::enter(&mut s, cost, Ask::Peek, deadline).map(|_| ())
    }

    /// Waits in line for the permit (a future; dropping it leaves the line).
    /// Bound the wait with the caller's deadline.
    pub fn acquire(&self, cost: Cost) -> Acquire {
        self.acquire_by(cost, None)
    }

    /// [`acquire`](Self::acquire) for a request due by `deadline`: refused
    /// at once (`Unmeetable`) when the expected wait is longer. (The wait
    /// itself is the caller's to bound.)
    pub fn acquire_by(&self, cost: Cost, deadline: Option<Instant>) -> Acquire {
        Acquire {
            admission: self.clone(),
            cost,
            deadline,
            waiting: None,
            done: false,
        }
    }

    /// Waits in line on this thread until the permit is granted or
    /// `deadline` passes (`Timeout`).
    pub fn acquire_blocking(&self, cost: Cost, deadline: Option<Instant>) -> Result<Permit, AdmitError> {
        let (id, slot) = {
            let mut s = lock(&self.shared.state);
            if Self::enter(&mut s, cost, Ask::InLine, deadline)? {
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
            probe: false,
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

    /// Waits, in line like a request, until a request of `faces` would be
    /// admitted now, taking nothing (for a caller that fetches its work
    /// only when there is room for it: the NATS consumer). Resolves at once
    /// when closed.
    pub async fn room(&self, faces: usize) {
        let cost = Cost::new(faces, 0);
        let slot = {
            let mut s = lock(&self.shared.state);
            if s.closed || (s.line.is_empty() && s.fits(cost)) {
                return;
            }
            // Kept waiting by the limit, as a request in line is.
            if let Some(c) = &mut s.control {
                c.limited();
            }
            let (id, slot) = Self::queue(&mut s, cost, None);
            if let Some(w) = s.line.back_mut().filter(|w| w.id == id) {
                w.probe = true;
            }
            (id, slot)
        };
        Room {
            admission: self.clone(),
            slot: Some(slot),
        }
        .await;
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
        let control = s.control.as_ref().map(|c| c.state);
        AdmissionStats {
            in_use: s.in_use,
            waiting: s.line.len(),
            rate: control.and_then(|c| c.rate),
            floor: control.and_then(|c| c.floor),
            sojourn_p99: control.and_then(|c| c.p99),
            expected_wait: control.and_then(|c| c.expected(s.in_use.faces, 1)),
            ..s.stats
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(a: &Admission) -> (Vec<Duration>, u64) {
        let s = lock(&a.shared.state);
        let (w, n) = s.control.as_ref().map(|c| c.window()).unwrap_or_default();
        (w.to_vec(), n)
    }

    #[test]
    fn a_request_is_sampled_at_its_last_face() {
        let policy = LimitPolicy::new(Duration::from_millis(300), 1, 64);
        let a = Admission::adaptive(policy, 1 << 20);
        let Ok(mut root) = a.try_acquire(Cost::new(3, 100)) else {
            panic!("refused");
        };
        let (first, second) = (root.split(Cost::new(1, 0)), root.split(Cost::new(1, 0)));
        // Bytes and faces never used are no sample.
        root.release_bytes();
        root.release_faces_beyond(0);
        drop(root);
        drop(first);
        assert_eq!(window(&a), (vec![], 0), "a face finished, the request not");
        assert_eq!(a.in_use(), Cost::new(1, 0), "its capacity is back at once");
        std::thread::sleep(Duration::from_millis(20));
        drop(second);
        let (samples, faces) = window(&a);
        assert_eq!(faces, 2);
        assert_eq!(samples.len(), 2);
        assert!(
            samples.iter().all(|s| *s >= Duration::from_millis(20)),
            "{samples:?}"
        );
        assert_eq!(a.in_use(), Cost::default());
    }

    #[test]
    fn waiting_for_room_counts_as_turned_away() {
        use std::future::Future;
        // Starts at its floor: one face.
        let a = Admission::adaptive(LimitPolicy::new(Duration::from_millis(300), 1, 64), 1 << 20);
        let limited = |a: &Admission| {
            lock(&a.shared.state)
                .control
                .as_ref()
                .is_some_and(|c| c.was_limited())
        };
        let mut room = Box::pin(a.room(1));
        let mut cx = std::task::Context::from_waker(Waker::noop());
        assert!(room.as_mut().poll(&mut cx).is_ready(), "room at once");
        assert!(!limited(&a));
        let Ok(held) = a.try_acquire(Cost::new(1, 0)) else {
            panic!("refused");
        };
        let mut room = Box::pin(a.room(1));
        assert!(room.as_mut().poll(&mut cx).is_pending());
        assert!(
            limited(&a),
            "a consumer kept waiting grows the limit as a refusal does"
        );
        drop(held);
        assert!(room.as_mut().poll(&mut cx).is_ready());
    }
}
