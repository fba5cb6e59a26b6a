//! Deadlines of the front door's calls: a future that ends with its work
//! or at its deadline, woken by the process's timer thread
//! ([`crate::timer`]), never by polling.

use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use crate::sync::lock;
use crate::timer::{cancel, schedule, Fire, Key};

pin_project_lite::pin_project! {
    /// A future that ends with its inner future, or with `Err(Late)` once
    /// `at` has passed, whichever comes first (the inner future is dropped
    /// with it then). It is woken by the timer thread, not by polling; with
    /// no deadline it is the inner future alone.
    pub(crate) struct Within<F> {
        #[pin]
        inner: F,
        at: Option<Instant>,
        alarm: Option<(Arc<Alarm>, Option<Key>)>,
    }

    impl<F> PinnedDrop for Within<F> {
        fn drop(this: Pin<&mut Self>) {
            if let Some((_, Some(key))) = this.project().alarm.take() {
                cancel(key);
            }
        }
    }
}

/// The deadline passed before the future ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Late;

/// What the timer fires for a [`Within`]: the task to wake.
#[derive(Default)]
pub(crate) struct Alarm {
    waker: Mutex<Option<std::task::Waker>>,
}

impl Fire for Alarm {
    fn fire(self: Arc<Self>, _tag: usize) {
        if let Some(w) = lock(&self.waker).take() {
            w.wake();
        }
    }
}

/// Runs `inner` until it ends or `at` passes.
pub(crate) fn within<F: std::future::Future>(at: Option<Instant>, inner: F) -> Within<F> {
    Within {
        inner,
        at,
        alarm: None,
    }
}

impl<F: std::future::Future> std::future::Future for Within<F> {
    type Output = Result<F::Output, Late>;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        use std::task::Poll;
        let this = self.project();
        if let Poll::Ready(v) = this.inner.poll(cx) {
            return Poll::Ready(Ok(v));
        }
        let Some(at) = *this.at else {
            return Poll::Pending;
        };
        if Instant::now() >= at {
            return Poll::Ready(Err(Late));
        }
        match this.alarm {
            Some((alarm, _)) => *lock(&alarm.waker) = Some(cx.waker().clone()),
            None => {
                let alarm = Arc::new(Alarm::default());
                *lock(&alarm.waker) = Some(cx.waker().clone());
                let weak: Weak<dyn Fire> = Arc::downgrade(&alarm) as Weak<Alarm>;
                let key = schedule(at, weak, 0);
                *this.alarm = Some((alarm, key));
            }
        }
        Poll::Pending
    }
}
