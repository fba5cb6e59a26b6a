//! Retry with exponential backoff and jitter, for errors the caller marks
//! transient, bounded by max attempts and by a retry budget shared among
//! callers (so that a failing downstream is not hit by a storm of retries).

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::{real_sleep, Sleeper};

/// How much randomness is applied to a backoff.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Jitter {
    /// The exact exponential backoff.
    None,
    /// Uniform in `[0, backoff]` (spreads retries most).
    Full,
    /// Uniform in `[backoff / 2, backoff]`.
    Equal,
}

/// Retry settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (1 means no retry).
    pub max_attempts: u32,
    /// Backoff before the first retry.
    pub base: Duration,
    /// Backoffs never exceed this.
    pub max_backoff: Duration,
    /// Growth of the backoff per retry.
    pub multiplier: f64,
    /// Randomness applied to each backoff.
    pub jitter: Jitter,
}

impl Default for RetryPolicy {
    /// 3 attempts, 50 ms doubling up to 2 s, full jitter.
    fn default() -> Self {
        Self {
            max_attempts: 3,
            base: Duration::from_millis(50),
            max_backoff: Duration::from_secs(2),
            multiplier: 2.0,
            jitter: Jitter::Full,
        }
    }
}

/// The backoff before retry number `retry` (1 = the first retry), given a
/// uniform random `unit` in `[0, 1)`. A plain function, for tests and tools.
pub fn backoff(policy: &RetryPolicy, retry: u32, unit: f64) -> Duration {
    let exp = policy
        .multiplier
        .max(1.0)
        .powi(retry.saturating_sub(1).min(1000) as i32);
    let raw = policy.base.as_secs_f64() * exp;
    let capped = if raw.is_finite() {
        raw.min(policy.max_backoff.as_secs_f64())
    } else {
        policy.max_backoff.as_secs_f64()
    };
    let unit = unit.clamp(0.0, 1.0);
    let secs = match policy.jitter {
        Jitter::None => capped,
        Jitter::Full => capped * unit,
        Jitter::Equal => capped / 2.0 + capped / 2.0 * unit,
    };
    Duration::try_from_secs_f64(secs).unwrap_or(policy.max_backoff)
}

/// A budget of retries shared by the callers of one downstream: each first
/// attempt deposits `ratio` of a token, each retry withdraws one, and the
/// budget holds at most `reserve` tokens (and starts full). Over time at most
/// `ratio` retries per call are made, in bursts of at most `reserve`.
#[derive(Debug)]
pub struct RetryBudget {
    /// Thousandths of a token.
    milli: AtomicI64,
    deposit: i64,
    cap: i64,
}

impl RetryBudget {
    /// A budget of `ratio` retries per call (e.g. 0.1), at most `reserve` at once.
    pub fn new(ratio: f64, reserve: u32) -> Self {
        let deposit = (ratio.clamp(0.0, 1000.0) * 1000.0).round() as i64;
        let cap = i64::from(reserve) * 1000;
        Self {
            milli: AtomicI64::new(cap),
            deposit,
            cap,
        }
    }

    /// Records a first attempt.
    pub fn deposit(&self) {
        let _ = self
            .milli
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |m| {
                Some((m + self.deposit).min(self.cap))
            });
    }

    /// Takes one retry from the budget, if there is one.
    pub fn try_withdraw(&self) -> bool {
        self.milli
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |m| {
                (m >= 1000).then_some(m - 1000)
            })
            .is_ok()
    }

    /// Whole retries available now.
    pub fn available(&self) -> u32 {
        u32::try_from(self.milli.load(Ordering::Relaxed) / 1000).unwrap_or(0)
    }
}

/// Why a retried call gave up; carries the last error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RetryError<E> {
    /// The error was not transient: no retry was made after it.
    #[error("permanent failure after {attempts} attempt(s): {error}")]
    Permanent {
        /// Attempts made.
        attempts: u32,
        /// The error.
        error: E,
    },
    /// Every attempt failed with a transient error.
    #[error("gave up after {attempts} attempt(s): {error}")]
    Exhausted {
        /// Attempts made.
        attempts: u32,
        /// The last error.
        error: E,
    },
    /// The shared retry budget was empty.
    #[error("retry budget exhausted after {attempts} attempt(s): {error}")]
    NoBudget {
        /// Attempts made.
        attempts: u32,
        /// The last error.
        error: E,
    },
}

impl<E> RetryError<E> {
    /// The last error.
    pub fn into_inner(self) -> E {
        match self {
            Self::Permanent { error, .. } | Self::Exhausted { error, .. } | Self::NoBudget { error, .. } => {
                error
            }
        }
    }

    /// Attempts made.
    pub fn attempts(&self) -> u32 {
        match self {
            Self::Permanent { attempts, .. }
            | Self::Exhausted { attempts, .. }
            | Self::NoBudget { attempts, .. } => *attempts,
        }
    }
}

/// Retries a call by a [`RetryPolicy`], sleeping on the calling thread.
#[derive(Clone)]
pub struct Retry {
    policy: RetryPolicy,
    budget: Option<Arc<RetryBudget>>,
    sleep: Sleeper,
}

impl std::fmt::Debug for Retry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Retry")
            .field("policy", &self.policy)
            .field("budget", &self.budget)
            .finish_non_exhaustive()
    }
}

impl Retry {
    /// Retries by `policy`, with no budget.
    pub fn new(policy: RetryPolicy) -> Self {
        Self {
            policy,
            budget: None,
            sleep: real_sleep(),
        }
    }

    /// Draws retries from a budget shared with other callers.
    pub fn with_budget(mut self, budget: Arc<RetryBudget>) -> Self {
        self.budget = Some(budget);
        self
    }

    /// Replaces how backoffs are slept (tests record them instead).
    pub fn with_sleeper(mut self, sleep: Sleeper) -> Self {
        self.sleep = sleep;
        self
    }

    /// Calls `f(attempt)` (attempt 1, 2, ...) until it succeeds, fails with an
    /// error `transient` rejects, or attempts or budget run out.
    pub fn call<T, E>(
        &self,
        transient: impl Fn(&E) -> bool,
        mut f: impl FnMut(u32) -> Result<T, E>,
    ) -> Result<T, RetryError<E>> {
        if let Some(b) = &self.budget {
            b.deposit();
        }
        let max = self.policy.max_attempts.max(1);
        let mut attempt = 1;
        loop {
            let error = match f(attempt) {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            if !transient(&error) {
                return Err(RetryError::Permanent {
                    attempts: attempt,
                    error,
                });
            }
            if attempt >= max {
                return Err(RetryError::Exhausted {
                    attempts: attempt,
                    error,
                });
            }
            if self.budget.as_ref().is_some_and(|b| !b.try_withdraw()) {
                return Err(RetryError::NoBudget {
                    attempts: attempt,
                    error,
                });
            }
            (self.sleep)(backoff(&self.policy, attempt, fastrand::f64()));
            attempt += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    const MS: Duration = Duration::from_millis(1);

    fn policy(jitter: Jitter) -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            base: 10 * MS,
            max_backoff: 50 * MS,
            multiplier: 2.0,
            jitter,
        }
    }

    #[test]
    fn backoff_table() {
        let p = policy(Jitter::None);
        let cases = [
            (1, 10),
            (2, 20),
            (3, 40),
            (4, 50),
            (5, 50),
            (1000, 50),
            (u32::MAX, 50),
        ];
        for (retry, ms) in cases {
            assert_eq!(backoff(&p, retry, 0.5), ms * MS, "retry {retry}");
        }
        let full = policy(Jitter::Full);
        assert_eq!(backoff(&full, 2, 0.0), Duration::ZERO);
        assert_eq!(backoff(&full, 2, 0.5), 10 * MS);
        let equal = policy(Jitter::Equal);
        assert_eq!(backoff(&equal, 2, 0.0), 10 * MS);
        assert_eq!(backoff(&equal, 2, 1.0), 20 * MS);
        // A silly multiplier or unit stays within the cap.
        let wild = RetryPolicy {
            multiplier: f64::INFINITY,
            ..p
        };
        assert_eq!(backoff(&wild, 3, 0.5), 50 * MS);
        assert_eq!(backoff(&full, 1, 7.0), 10 * MS);
    }

    fn recorder() -> (Sleeper, Arc<Mutex<Vec<Duration>>>) {
        let slept = Arc::new(Mutex::new(Vec::new()));
        let s2 = slept.clone();
        (Arc::new(move |d| s2.lock().unwrap().push(d)), slept)
    }

    #[test]
    fn retries_transient_errors_then_succeeds() {
        let (sleep, slept) = recorder();
        let r = Retry::new(policy(Jitter::None)).with_sleeper(sleep);
        let out = r.call(
            |_: &&str| true,
            |attempt| if attempt < 3 { Err("flaky") } else { Ok(attempt) },
        );
        assert_eq!(out, Ok(3));
        assert_eq!(*slept.lock().unwrap(), vec![10 * MS, 20 * MS]);
    }

    #[test]
    fn permanent_errors_are_not_retried() {
        let (sleep, slept) = recorder();
        let r = Retry::new(policy(Jitter::None)).with_sleeper(sleep);
        let out: Result<(), _> = r.call(|e: &&str| *e == "flaky", |_| Err("bad request"));
        assert_eq!(
            out,
            Err(RetryError::Permanent {
                attempts: 1,
                error: "bad request"
            })
        );
        assert!(slept.lock().unwrap().is_empty());
    }

    #[test]
    fn gives_up_after_max_attempts() {
        let (sleep, slept) = recorder();
        let r = Retry::new(policy(Jitter::Full)).with_sleeper(sleep);
        let mut calls = 0;
        let out: Result<(), _> = r.call(
            |_: &u32| true,
            |a| {
                calls += 1;
                Err(a)
            },
        );
        let err = out.unwrap_err();
        assert_eq!(err.attempts(), 5);
        assert!(matches!(err, RetryError::Exhausted { error: 5, .. }));
        assert_eq!(calls, 5);
        let slept = slept.lock().unwrap();
        assert_eq!(slept.len(), 4);
        assert!(slept.iter().all(|d| *d <= 50 * MS));
    }

    #[test]
    fn budget_limits_retries_across_calls() {
        let budget = Arc::new(RetryBudget::new(0.5, 2));
        assert_eq!(budget.available(), 2);
        let (sleep, _) = recorder();
        let r = Retry::new(policy(Jitter::None))
            .with_budget(budget.clone())
            .with_sleeper(sleep);
        // Always failing: the first call spends the 2 reserved retries.
        let fail = |_| Err::<(), _>("down");
        let e = r.call(|_| true, fail).unwrap_err();
        assert!(matches!(e, RetryError::NoBudget { attempts: 3, .. }), "{e:?}");
        // Two more calls deposit half a token each: one retry between them.
        let e = r.call(|_| true, fail).unwrap_err();
        assert_eq!(e.attempts(), 1);
        let e = r.call(|_| true, fail).unwrap_err();
        assert_eq!(e.attempts(), 2);
        assert_eq!(budget.available(), 0);
        // Deposits never exceed the reserve.
        for _ in 0..100 {
            budget.deposit();
        }
        assert_eq!(budget.available(), 2);
    }
}
