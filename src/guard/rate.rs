//! Token-bucket rate limit toward a downstream, in items per second with a
//! burst, on the `governor` crate (GCRA, lock-free).

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

use super::{real_sleep, Sleeper};

/// Why tokens were not granted.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
pub enum RateLimitError {
    /// Not enough tokens now; enough will be there after `retry_after`.
    #[error("rate limited: retry in {retry_after:?}")]
    Limited {
        /// How long until the request would conform.
        retry_after: Duration,
    },
    /// More tokens than the burst were asked for at once (non-blocking
    /// calls only; blocking calls take them burst by burst).
    #[error("{asked} tokens asked at once, more than the burst of {burst}")]
    ExceedsBurst {
        /// Tokens asked for.
        asked: usize,
        /// The bucket's size.
        burst: u32,
    },
    /// A blocking call would have had to wait longer than allowed.
    #[error("rate limit would hold the call {needed:?}, more than {limit:?}")]
    Timeout {
        /// The wait that would have been needed.
        needed: Duration,
        /// The most the caller allowed.
        limit: Duration,
    },
    /// The rate or burst is not usable (rate not positive and finite,
    /// burst zero).
    #[error("invalid rate limit: {rate} per second with a burst of {burst}")]
    Invalid {
        /// Requested rate.
        rate: f64,
        /// Requested burst.
        burst: u32,
    },
}

/// A token bucket: `rate` tokens per second, holding at most `burst`. Share
/// it (`Arc`) among every caller of one downstream.
pub struct RateLimit<C: Clock = DefaultClock> {
    limiter: RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<C::Instant>>,
    clock: C,
    burst: NonZeroU32,
    sleep: Sleeper,
}

impl<C: Clock> std::fmt::Debug for RateLimit<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimit")
            .field("burst", &self.burst)
            .finish_non_exhaustive()
    }
}

impl RateLimit<DefaultClock> {
    /// `rate` tokens per second, at most `burst` at once, on the real clock.
    pub fn per_second(rate: f64, burst: u32) -> Result<Self, RateLimitError> {
        Self::with_clock(rate, burst, DefaultClock::default())
    }
}

impl<C: Clock + Clone> RateLimit<C> {
    /// Like [`per_second`](RateLimit::per_second) on a given clock (tests use
    /// `governor::clock::FakeRelativeClock`).
    pub fn with_clock(rate: f64, burst: u32, clock: C) -> Result<Self, RateLimitError> {
        let invalid = RateLimitError::Invalid { rate, burst };
        let nz_burst = NonZeroU32::new(burst).ok_or(invalid)?;
        if !(rate.is_finite() && rate > 0.0) {
            return Err(invalid);
        }
        let period = Duration::try_from_secs_f64(1.0 / rate).map_err(|_| invalid)?;
        let quota = Quota::with_period(period).ok_or(invalid)?.allow_burst(nz_burst);
        Ok(Self {
            limiter: RateLimiter::direct_with_clock(quota, clock.clone()),
            clock,
            burst: nz_burst,
            sleep: real_sleep(),
        })
    }

    /// Replaces how blocking calls sleep (tests advance a fake clock).
    pub fn with_sleeper(mut self, sleep: Sleeper) -> Self {
        self.sleep = sleep;
        self
    }

    /// The bucket's size.
    pub fn burst(&self) -> u32 {
        self.burst.get()
    }

    /// Takes `n` tokens now, or says how long until they would be there.
    /// Taking zero tokens always succeeds.
    pub fn try_acquire(&self, n: usize) -> Result<(), RateLimitError> {
        let Some(nz) = u32::try_from(n).ok().and_then(NonZeroU32::new) else {
            return if n == 0 {
                Ok(())
            } else {
                Err(RateLimitError::ExceedsBurst {
                    asked: n,
                    burst: self.burst.get(),
                })
            };
        };
        match self.limiter.check_n(nz) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(RateLimitError::Limited {
                retry_after: not_until.wait_time_from(self.clock.now()),
            }),
            Err(_) => Err(RateLimitError::ExceedsBurst {
                asked: n,
                burst: self.burst.get(),
            }),
        }
    }

    /// Takes `n` tokens, sleeping until they are there; more than the burst
    /// are taken burst by burst. Returns how long it slept.
    pub fn acquire(&self, n: usize) -> Duration {
        self.acquire_within(n, None).unwrap_or_default()
    }

    /// Like [`acquire`](Self::acquire), but refuses at once (taking nothing
    /// more) when the next wait would exceed what is left of `limit`.
    pub fn acquire_timeout(&self, n: usize, limit: Duration) -> Result<Duration, RateLimitError> {
        self.acquire_within(n, Some(limit))
    }

    fn acquire_within(&self, mut n: usize, limit: Option<Duration>) -> Result<Duration, RateLimitError> {
        let burst = self.burst.get() as usize;
        let mut slept = Duration::ZERO;
        while n > 0 {
            let chunk = n.min(burst);
            match self.try_acquire(chunk) {
                Ok(()) => n -= chunk,
                Err(RateLimitError::Limited { retry_after }) => {
                    if let Some(limit) = limit {
                        let needed = slept + retry_after;
                        if needed > limit {
                            return Err(RateLimitError::Timeout { needed, limit });
                        }
                    }
                    // Never spin: a zero wait still yields the next tick.
                    let d = retry_after.max(Duration::from_micros(1));
                    (self.sleep)(d);
                    slept += d;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(slept)
    }

    /// Takes `n` tokens (blocking), then runs `f`.
    pub fn call<T>(&self, n: usize, f: impl FnOnce() -> T) -> T {
        self.acquire(n);
        f()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;
    use std::sync::Arc;

    fn limiter(rate: f64, burst: u32) -> (RateLimit<FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        let c2 = clock.clone();
        let rl = RateLimit::with_clock(rate, burst, clock.clone())
            .unwrap()
            .with_sleeper(Arc::new(move |d| c2.advance(d)));
        (rl, clock)
    }

    #[test]
    fn burst_then_refill() {
        let (rl, clock) = limiter(100.0, 32);
        assert_eq!(rl.try_acquire(32), Ok(()));
        match rl.try_acquire(1) {
            Err(RateLimitError::Limited { retry_after }) => {
                assert_eq!(retry_after, Duration::from_millis(10))
            }
            other => panic!("expected Limited, got {other:?}"),
        }
        clock.advance(Duration::from_millis(100));
        assert_eq!(rl.try_acquire(10), Ok(()));
        assert!(rl.try_acquire(1).is_err());
    }

    #[test]
    fn a_batch_takes_one_token_per_item() {
        let (rl, clock) = limiter(1000.0, 64);
        assert_eq!(rl.try_acquire(32), Ok(()));
        assert_eq!(rl.try_acquire(32), Ok(()));
        assert!(rl.try_acquire(32).is_err());
        clock.advance(Duration::from_millis(32));
        assert_eq!(rl.try_acquire(32), Ok(()));
    }

    #[test]
    fn more_than_the_burst() {
        let (rl, _) = limiter(10.0, 4);
        assert_eq!(
            rl.try_acquire(5),
            Err(RateLimitError::ExceedsBurst { asked: 5, burst: 4 })
        );
        assert_eq!(rl.try_acquire(0), Ok(()));
        // Blocking: 4 now, then 4 more after 400 ms, then 2 after 200 ms.
        assert_eq!(rl.acquire(10), Duration::from_millis(600));
    }

    #[test]
    fn blocking_acquire_waits_the_refill_time() {
        let (rl, _) = limiter(50.0, 10);
        assert_eq!(rl.acquire(10), Duration::ZERO);
        // 5 tokens at 50/s: 100 ms.
        assert_eq!(rl.acquire(5), Duration::from_millis(100));
        assert_eq!(rl.call(0, || 7), 7);
    }

    #[test]
    fn acquire_timeout_refuses_long_waits() {
        let (rl, _) = limiter(10.0, 10);
        rl.try_acquire(10).unwrap();
        let err = rl.acquire_timeout(5, Duration::from_millis(100)).unwrap_err();
        assert_eq!(
            err,
            RateLimitError::Timeout {
                needed: Duration::from_millis(500),
                limit: Duration::from_millis(100)
            }
        );
        assert_eq!(
            rl.acquire_timeout(5, Duration::from_secs(1)),
            Ok(Duration::from_millis(500))
        );
    }

    #[test]
    fn invalid_settings() {
        for (rate, burst) in [
            (0.0, 1),
            (-1.0, 1),
            (f64::NAN, 1),
            (f64::INFINITY, 1),
            (10.0, 0),
            (1e-30, 1),
        ] {
            assert!(
                matches!(
                    RateLimit::per_second(rate, burst),
                    Err(RateLimitError::Invalid { .. })
                ),
                "{rate} {burst}"
            );
        }
    }
}
