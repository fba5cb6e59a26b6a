//! Circuit breaker: closed → open when the failure rate over a time window
//! passes a limit → half-open probes after a cool-down → closed again when
//! the probes succeed (or open again when one fails).
//!
//! [`Breaker`] is the pure state machine (every method takes `now`);
//! [`CircuitBreaker`] is the thin thread-safe wrapper around a call.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::pool::{Clock, SystemClock};

/// Breaker settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerConfig {
    /// The failure rate is measured over this much recent time.
    pub window: Duration,
    /// The window is kept in this many buckets (its time resolution).
    pub buckets: u32,
    /// Calls needed in the window before the rate is trusted.
    pub min_calls: u32,
    /// Open when failures / calls in the window reach this (0 < rate <= 1).
    pub failure_rate: f64,
    /// How long the breaker stays open before it lets probes through.
    pub cool_down: Duration,
    /// Probes let through at once when half-open; this many successes close it.
    pub probes: u32,
}

impl Default for BreakerConfig {
    /// 10 s window in 10 buckets, 20 calls minimum, 50 % failures, 5 s
    /// cool-down, 1 probe.
    fn default() -> Self {
        Self {
            window: Duration::from_secs(10),
            buckets: 10,
            min_calls: 20,
            failure_rate: 0.5,
            cool_down: Duration::from_secs(5),
            probes: 1,
        }
    }
}

/// Why a [`BreakerConfig`] was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The window must be longer than zero and have at least one bucket.
    #[error("the window must be longer than zero, with at least one bucket")]
    Window,
    /// The failure rate must be in (0, 1].
    #[error("the failure rate must be in (0, 1]")]
    Rate,
    /// At least one probe and one minimum call are needed.
    #[error("probes and min_calls must be at least 1")]
    Counts,
}

impl BreakerConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.window.is_zero() || self.buckets == 0 {
            return Err(ConfigError::Window);
        }
        if !(self.failure_rate > 0.0 && self.failure_rate <= 1.0) {
            return Err(ConfigError::Rate);
        }
        if self.probes == 0 || self.min_calls == 0 {
            return Err(ConfigError::Counts);
        }
        Ok(())
    }
}

/// The breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through; outcomes are measured.
    Closed,
    /// Calls are refused until `until`.
    Open {
        /// When probes will be let through.
        until: Instant,
    },
    /// A few probe calls go through to test the downstream.
    HalfOpen,
}

/// What the breaker says to one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Make the call (closed).
    Call,
    /// Make the call as a probe (half-open).
    Probe,
    /// Do not call; the breaker is open (or its probes are all out).
    Reject {
        /// When it is worth asking again.
        retry_after: Duration,
    },
}

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    /// Which bucket period (since the epoch) the counts are for.
    period: u64,
    ok: u32,
    failed: u32,
}

/// The pure breaker state machine.
#[derive(Debug, Clone)]
pub struct Breaker {
    cfg: BreakerConfig,
    state: BreakerState,
    epoch: Option<Instant>,
    buckets: Vec<Bucket>,
    probes_out: u32,
    probe_successes: u32,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(cfg: BreakerConfig) -> Result<Self, ConfigError> {
        cfg.validate()?;
        Ok(Self {
            cfg,
            state: BreakerState::Closed,
            epoch: None,
            buckets: vec![Bucket::default(); cfg.buckets as usize],
            probes_out: 0,
            probe_successes: 0,
        })
    }

    /// The state, as of the last call to [`admit`](Self::admit) or
    /// [`record`](Self::record).
    pub fn state(&self) -> BreakerState {
        self.state
    }

    fn bucket_len(&self) -> Duration {
        (self.cfg.window / self.cfg.buckets).max(Duration::from_nanos(1))
    }

    fn period(&mut self, now: Instant) -> u64 {
        let epoch = *self.epoch.get_or_insert(now);
        let since = now.saturating_duration_since(epoch).as_nanos();
        u64::try_from(since / self.bucket_len().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Calls and failures in the window ending at `now`.
    pub fn window_counts(&mut self, now: Instant) -> (u32, u32) {
        let p = self.period(now);
        let n = self.buckets.len() as u64;
        self.buckets
            .iter()
            .filter(|b| b.period + n > p && b.period <= p)
            .fold((0, 0), |(c, f), b| (c + b.ok + b.failed, f + b.failed))
    }

    fn reset_window(&mut self) {
        self.buckets.iter_mut().for_each(|b| *b = Bucket::default());
        self.epoch = None;
    }

    fn open(&mut self, now: Instant) {
        let until = now.checked_add(self.cfg.cool_down).unwrap_or(now);
        self.state = BreakerState::Open { until };
        self.probes_out = 0;
        self.probe_successes = 0;
        self.reset_window();
    }

    /// Whether a call may go through now.
    pub fn admit(&mut self, now: Instant) -> Admit {
        if let BreakerState::Open { until } = self.state {
            if now < until {
                return Admit::Reject {
                    retry_after: until - now,
                };
            }
            self.state = BreakerState::HalfOpen;
        }
        match self.state {
            BreakerState::Closed => Admit::Call,
            _ if self.probes_out < self.cfg.probes => {
                self.probes_out += 1;
                Admit::Probe
            }
            // Every probe is out: ask again after a small part of the cool-down.
            _ => Admit::Reject {
                retry_after: self.bucket_len().min(self.cfg.cool_down),
            },
        }
    }

    /// Records the outcome of a call that [`admit`](Self::admit) let
    /// through as `admitted`.
    pub fn record(&mut self, admitted: Admit, ok: bool, now: Instant) {
        match (admitted, self.state) {
            (Admit::Probe, BreakerState::HalfOpen) => {
                self.probes_out = self.probes_out.saturating_sub(1);
                if !ok {
                    self.open(now);
                    return;
                }
                self.probe_successes += 1;
                if self.probe_successes >= self.cfg.probes {
                    self.state = BreakerState::Closed;
                    self.probes_out = 0;
                    self.probe_successes = 0;
                    self.reset_window();
                }
            }
            (Admit::Call, BreakerState::Closed) => {
                let p = self.period(now);
                let i = (p % self.buckets.len() as u64) as usize;
                let b = &mut self.buckets[i];
                if b.period != p {
                    *b = Bucket {
                        period: p,
                        ok: 0,
                        failed: 0,
                    };
                }
                if ok {
                    b.ok += 1;
                } else {
                    b.failed += 1;
                }
                let (calls, failed) = self.window_counts(now);
                if calls >= self.cfg.min_calls
                    && f64::from(failed) >= self.cfg.failure_rate * f64::from(calls)
                {
                    self.open(now);
                }
            }
            // An outcome from before the last transition (a call let through
            // while closed that ends after the breaker opened): it says
            // nothing about the state the breaker is in now.
            _ => {}
        }
    }
}

/// A refused or failed call through a [`CircuitBreaker`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BreakerError<E> {
    /// The breaker is open; the call was not made.
    #[error("circuit open: retry in {retry_after:?}")]
    Open {
        /// When it is worth asking again.
        retry_after: Duration,
    },
    /// The call was made and failed.
    #[error(transparent)]
    Inner(E),
}

/// A thread-safe circuit breaker around calls to one downstream. Cheap to
/// clone (clones share the state).
#[derive(Clone)]
pub struct CircuitBreaker {
    machine: Arc<Mutex<Breaker>>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("state", &self.state())
            .finish()
    }
}

/// Records a failure if the call unwinds before it reported, so a panicking
/// probe cannot hold its probe slot forever.
struct Outstanding<'a> {
    cb: &'a CircuitBreaker,
    admitted: Admit,
    done: bool,
}

impl Drop for Outstanding<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.cb.record(self.admitted, false);
        }
    }
}

impl CircuitBreaker {
    /// A closed breaker on the real clock.
    pub fn new(cfg: BreakerConfig) -> Result<Self, ConfigError> {
        Self::with_clock(cfg, Arc::new(SystemClock))
    }

    /// A closed breaker on the given clock.
    pub fn with_clock(cfg: BreakerConfig, clock: Arc<dyn Clock>) -> Result<Self, ConfigError> {
        Ok(Self {
            machine: Arc::new(Mutex::new(Breaker::new(cfg)?)),
            clock,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Breaker> {
        // The machine never panics while locked; a poisoned lock still
        // holds a consistent state.
        self.machine
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn record(&self, admitted: Admit, ok: bool) {
        let now = self.clock.now();
        self.lock().record(admitted, ok, now);
    }

    /// The current state.
    pub fn state(&self) -> BreakerState {
        self.lock().state()
    }

    /// Runs `f` if the breaker admits it; every `Err` counts as a failure.
    pub fn call<T, E>(&self, f: impl FnOnce() -> Result<T, E>) -> Result<T, BreakerError<E>> {
        self.call_classified(|_| true, f)
    }

    /// Runs `f` if the breaker admits it; an `Err` counts as a failure only
    /// if `is_failure` says so (a caller's bad request is not the
    /// downstream's fault).
    pub fn call_classified<T, E>(
        &self,
        is_failure: impl Fn(&E) -> bool,
        f: impl FnOnce() -> Result<T, E>,
    ) -> Result<T, BreakerError<E>> {
        let now = self.clock.now();
        let admitted = self.lock().admit(now);
        if let Admit::Reject { retry_after } = admitted {
            return Err(BreakerError::Open { retry_after });
        }
        let mut out = Outstanding {
            cb: self,
            admitted,
            done: false,
        };
        let r = f();
        out.done = true;
        let ok = r.as_ref().err().is_none_or(|e| !is_failure(e));
        self.record(admitted, ok);
        r.map_err(BreakerError::Inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::ManualClock;

    const S: Duration = Duration::from_secs(1);

    fn cfg() -> BreakerConfig {
        BreakerConfig {
            window: 10 * S,
            buckets: 10,
            min_calls: 4,
            failure_rate: 0.5,
            cool_down: 5 * S,
            probes: 2,
        }
    }

    /// One step of a table: at `t` seconds, either admit (expecting an
    /// answer) or record an outcome of a call admitted as `kind`.
    enum Step {
        Admit(u32, Admit),
        Record(u32, Admit, bool),
        State(BreakerState),
    }

    fn run(steps: &[Step]) {
        let t0 = Instant::now();
        let at = |s: u32| t0 + s * S;
        let mut b = Breaker::new(cfg()).unwrap();
        for (i, step) in steps.iter().enumerate() {
            match step {
                Step::Admit(t, want) => assert_eq!(b.admit(at(*t)), *want, "step {i}"),
                Step::Record(t, kind, ok) => b.record(*kind, *ok, at(*t)),
                Step::State(want) => assert_eq!(b.state(), *want, "step {i}"),
            }
        }
    }

    use Admit::{Call, Probe};
    use Step::{Admit as A, Record as R, State as St};

    #[test]
    fn opens_on_failure_rate_after_min_calls() {
        run(&[
            A(0, Call),
            R(0, Call, false),
            R(0, Call, false),
            R(0, Call, false),
            // 3 calls, all failed: below min_calls, still closed.
            St(BreakerState::Closed),
            R(1, Call, true),
            // 4 calls, 3 failed (75 % >= 50 %): open until 1 + 5 s.
            A(1, Call.min_reject(5)),
        ]);
    }

    #[test]
    fn stays_closed_below_the_rate() {
        run(&[
            R(0, Call, true),
            R(0, Call, true),
            R(0, Call, true),
            R(0, Call, false),
            R(0, Call, true),
            St(BreakerState::Closed),
            A(0, Call),
        ]);
    }

    #[test]
    fn old_failures_leave_the_window() {
        run(&[
            R(0, Call, false),
            R(0, Call, false),
            R(0, Call, false),
            // 11 s later the three failures are out of the 10 s window.
            R(11, Call, false),
            St(BreakerState::Closed),
            R(11, Call, true),
            R(11, Call, true),
            R(11, Call, true),
            St(BreakerState::Closed),
        ]);
    }

    #[test]
    fn half_open_probes_close_it_again() {
        run(&[
            R(0, Call, false),
            R(0, Call, false),
            R(0, Call, false),
            R(0, Call, false),
            A(4, Call.min_reject(1)),
            // Cool-down over: two probes, then the rest are refused.
            A(5, Probe),
            A(5, Probe),
            A(5, Call.min_reject(1)),
            R(6, Probe, true),
            St(BreakerState::HalfOpen),
            R(6, Probe, true),
            St(BreakerState::Closed),
            A(6, Call),
        ]);
    }

    #[test]
    fn a_failed_probe_reopens_it() {
        run(&[
            R(0, Call, false),
            R(0, Call, false),
            R(0, Call, false),
            R(0, Call, false),
            A(5, Probe),
            R(7, Probe, false),
            A(7, Call.min_reject(5)),
            A(12, Probe),
        ]);
    }

    #[test]
    fn late_outcomes_of_calls_from_before_do_not_count() {
        run(&[
            R(0, Call, false),
            R(0, Call, false),
            R(0, Call, false),
            R(0, Call, false),
            A(5, Probe),
            // A call admitted long ago while closed reports now: ignored.
            R(5, Call, true),
            R(5, Call, false),
            St(BreakerState::HalfOpen),
        ]);
    }

    trait MinReject {
        fn min_reject(self, secs: u32) -> Admit;
    }
    impl MinReject for Admit {
        fn min_reject(self, secs: u32) -> Admit {
            Admit::Reject {
                retry_after: secs * S,
            }
        }
    }

    #[test]
    fn config_validation() {
        let bad = |f: fn(&mut BreakerConfig)| {
            let mut c = cfg();
            f(&mut c);
            Breaker::new(c).err()
        };
        assert_eq!(bad(|c| c.window = Duration::ZERO), Some(ConfigError::Window));
        assert_eq!(bad(|c| c.buckets = 0), Some(ConfigError::Window));
        assert_eq!(bad(|c| c.failure_rate = 0.0), Some(ConfigError::Rate));
        assert_eq!(bad(|c| c.failure_rate = f64::NAN), Some(ConfigError::Rate));
        assert_eq!(bad(|c| c.failure_rate = 1.5), Some(ConfigError::Rate));
        assert_eq!(bad(|c| c.probes = 0), Some(ConfigError::Counts));
        assert_eq!(bad(|_| {}), None);
    }

    #[test]
    fn wrapper_refuses_while_open_and_counts_panics() {
        let clock = Arc::new(ManualClock::new());
        let cb = CircuitBreaker::with_clock(
            BreakerConfig {
                min_calls: 2,
                probes: 1,
                ..cfg()
            },
            clock.clone(),
        )
        .unwrap();
        for _ in 0..2 {
            assert_eq!(cb.call(|| Err::<(), _>("down")), Err(BreakerError::Inner("down")));
        }
        assert!(matches!(cb.state(), BreakerState::Open { .. }));
        let mut called = false;
        let r = cb.call(|| {
            called = true;
            Ok::<_, ()>(())
        });
        assert_eq!(r, Err(BreakerError::Open { retry_after: 5 * S }));
        assert!(!called);
        // The probe panics: it counts as a failure and the breaker reopens.
        clock.advance(5 * S);
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _ = cb.call(|| -> Result<(), ()> { panic!("probe blew up") });
        }));
        assert!(panicked.is_err());
        assert!(matches!(cb.state(), BreakerState::Open { .. }));
        // Next probe succeeds: closed.
        clock.advance(5 * S);
        assert_eq!(cb.call(|| Ok::<_, ()>(1)), Ok(1));
        assert_eq!(cb.state(), BreakerState::Closed);
        // A caller's error that is not the downstream's fault does not count.
        for _ in 0..5 {
            let r = cb.call_classified(|e: &&str| *e != "bad input", || Err::<(), _>("bad input"));
            assert_eq!(r, Err(BreakerError::Inner("bad input")));
        }
        assert_eq!(cb.state(), BreakerState::Closed);
    }
}
