//! The futures that wait in admission's line: for a permit ([`Acquire`])
//! and for room only ([`Room`]). Each leaves the line when dropped.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use super::{Admission, AdmitError, Ask, Cost, Permit, Slot, SlotState, State};
use crate::sync::lock;

/// Waiting in line for room ([`Admission::room`]); leaves the line when
/// dropped.
pub(super) struct Room {
    pub(super) admission: Admission,
    pub(super) slot: Option<(u64, Arc<Slot>)>,
}

impl Future for Room {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let Some((_, slot)) = &self.slot else {
            return Poll::Ready(());
        };
        let mut st = lock(&slot.state);
        match &mut *st {
            SlotState::Waiting(w) => {
                if !w.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    *w = Some(cx.waker().clone());
                }
                Poll::Pending
            }
            _ => {
                drop(st);
                self.slot = None;
                Poll::Ready(())
            }
        }
    }
}

impl Drop for Room {
    fn drop(&mut self) {
        if let Some((id, _)) = self.slot.take() {
            let mut wake = Vec::new();
            {
                let mut s = lock(&self.admission.shared.state);
                if s.remove(id) {
                    s.grant_line(&mut wake);
                }
            }
            wake.into_iter().for_each(Waker::wake);
        }
    }
}

/// Waiting in line for a permit ([`Admission::acquire`]).
#[must_use = "futures do nothing unless polled"]
pub struct Acquire {
    pub(super) admission: Admission,
    pub(super) cost: Cost,
    pub(super) deadline: Option<Instant>,
    pub(super) waiting: Option<(u64, Arc<Slot>)>,
    pub(super) done: bool,
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
                Self::enter_or_queue(&mut s, cost, self.deadline, cx.waker())
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
        deadline: Option<Instant>,
        waker: &Waker,
    ) -> Result<Option<(u64, Arc<Slot>)>, AdmitError> {
        if Admission::enter(s, cost, Ask::InLine, deadline)? {
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
