//! Timeout per call: the call runs on a pool (the guard owns no thread), and
//! the caller stops waiting after the limit. A call that has not started by
//! then is cancelled; one already running finishes on its worker and its
//! result is dropped (a synchronous call cannot be interrupted safely).

use std::time::{Duration, Instant};

use crate::pool::{JobError, JobOptions, Pool, SubmitError};

/// Why a call through [`Timeout`] gave no value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimeoutError {
    /// The call did not finish within the limit (queueing included).
    #[error("call did not finish within {0:?}")]
    Elapsed(Duration),
    /// The pool refused the call.
    #[error("call refused: {0}")]
    Refused(#[from] SubmitError),
    /// The call panicked.
    #[error("call panicked: {0}")]
    Panicked(String),
    /// The pool cancelled the call (shutdown).
    #[error("call cancelled before it ran")]
    Cancelled,
}

/// Runs calls on a pool with a time limit each.
#[derive(Debug, Clone)]
pub struct Timeout<S: 'static = ()> {
    pool: Pool<S>,
    limit: Duration,
}

impl<S: 'static> Timeout<S> {
    /// Calls on `pool`, each allowed `limit` from submission to result.
    pub fn new(pool: Pool<S>, limit: Duration) -> Self {
        Self { pool, limit }
    }

    /// The limit per call.
    pub fn limit(&self) -> Duration {
        self.limit
    }

    /// Runs `f` on the pool and waits at most the limit for its value. The
    /// job also carries the limit as its deadline, so a call still queued
    /// when the caller gives up is never run.
    pub fn call<T, F>(&self, f: F) -> Result<T, TimeoutError>
    where
        F: FnOnce(&mut S) -> T + Send + 'static,
        T: Send + 'static,
    {
        let deadline = Instant::now() + self.limit;
        let h = self.pool.submit_with(JobOptions::deadline(deadline), f)?;
        let left = deadline.saturating_duration_since(Instant::now());
        match h.join_timeout(left) {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(JobError::Panicked(m))) => Err(TimeoutError::Panicked(m)),
            Ok(Err(JobError::Expired)) => Err(TimeoutError::Elapsed(self.limit)),
            Ok(Err(JobError::Cancelled)) => Err(TimeoutError::Cancelled),
            Err(handle) => {
                // Dropping the handle cancels the call if it has not started.
                drop(handle);
                Err(TimeoutError::Elapsed(self.limit))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn value_panic_and_elapsed() {
        let pool = Pool::builder().capacity(1).build().unwrap();
        let t = Timeout::new(pool.clone(), Duration::from_secs(30));
        assert_eq!(t.call(|_| 6 * 7), Ok(42));
        assert_eq!(
            t.call(|_| -> u32 { panic!("boom") }),
            Err(TimeoutError::Panicked("boom".into()))
        );

        // Hold the only worker until told; a call behind it cannot finish.
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let (started_tx, started_rx) = mpsc::channel::<()>();
        pool.execute(move |_| {
            started_tx.send(()).unwrap();
            let _ = release_rx.recv();
        })
        .unwrap();
        started_rx.recv().unwrap();
        let short = Timeout::new(pool.clone(), Duration::from_millis(20));
        let ran = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let ran2 = ran.clone();
        let r = short.call(move |_| ran2.store(true, std::sync::atomic::Ordering::SeqCst));
        assert_eq!(r, Err(TimeoutError::Elapsed(Duration::from_millis(20))));
        release_tx.send(()).unwrap();
        pool.shutdown(Duration::from_secs(10));
        // The call was still queued when the caller gave up: never run.
        assert!(!ran.load(std::sync::atomic::Ordering::SeqCst));
        assert_eq!(t.call(|_| 1), Err(TimeoutError::Refused(SubmitError::Closed)));
    }
}
