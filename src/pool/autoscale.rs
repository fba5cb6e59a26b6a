//! Autoscaling on queue watermarks.
//!
//! The decision is a pure function, [`decide`], of what was observed and the
//! policy; the pool's housekeeping thread samples the waiting queue every
//! `sample_interval`, calls it, and applies the answer with `tune`.
//!
//! A pool that feeds a downstream (the face service's preparation pool
//! feeds the batcher) can show the autoscaler what waits there
//! (`PoolBuilder::downstream`): while the downstream's queue stays above
//! `downstream_high_watermark`, the downstream is the bottleneck, and the
//! pool does not grow (more workers would only lengthen that queue).

use std::time::{Duration, Instant};

/// When and how the pool resizes itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScalePolicy {
    /// Never fewer workers than this (at least 1).
    pub min: usize,
    /// Never more workers than this.
    pub max: usize,
    /// Shrink when waiting jobs stay below this.
    pub low_watermark: usize,
    /// Grow when waiting jobs stay above this.
    pub high_watermark: usize,
    /// Workers added or removed per change.
    pub step: usize,
    /// At least this long between two changes.
    pub cooldown: Duration,
    /// How often the waiting queue is sampled.
    pub sample_interval: Duration,
    /// How many samples in a row must agree before a change ("stay above").
    pub sustain: u32,
    /// Hold growth while the downstream's waiting work stays above this
    /// (needs a downstream gauge, `PoolBuilder::downstream`; `None`: the
    /// downstream is not looked at).
    pub downstream_high_watermark: Option<usize>,
}

impl ScalePolicy {
    /// A policy between `min` and `max` workers with defaults for the rest:
    /// low watermark 1, high watermark 2 × max, step 1, cooldown 1 s,
    /// sample interval 100 ms, sustain 3 samples.
    pub fn new(min: usize, max: usize) -> Self {
        Self {
            min,
            max,
            low_watermark: 1,
            high_watermark: max.saturating_mul(2),
            step: 1,
            cooldown: Duration::from_secs(1),
            sample_interval: Duration::from_millis(100),
            sustain: 3,
            downstream_high_watermark: None,
        }
    }

    /// Checks that the policy makes sense.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.min == 0 {
            return Err(PolicyError::ZeroMin);
        }
        if self.min > self.max {
            return Err(PolicyError::MinAboveMax);
        }
        if self.low_watermark > self.high_watermark {
            return Err(PolicyError::LowAboveHigh);
        }
        if self.step == 0 {
            return Err(PolicyError::ZeroStep);
        }
        if self.sample_interval.is_zero() {
            return Err(PolicyError::ZeroInterval);
        }
        if self.sustain == 0 {
            return Err(PolicyError::ZeroSustain);
        }
        Ok(())
    }
}

/// What is wrong with a [`ScalePolicy`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// `min` must be at least 1.
    #[error("min must be at least 1")]
    ZeroMin,
    /// `min` must not exceed `max`.
    #[error("min exceeds max")]
    MinAboveMax,
    /// The low watermark must not exceed the high one.
    #[error("low watermark exceeds high watermark")]
    LowAboveHigh,
    /// `step` must be at least 1.
    #[error("step must be at least 1")]
    ZeroStep,
    /// The sample interval must be longer than zero.
    #[error("sample interval must be longer than zero")]
    ZeroInterval,
    /// `sustain` must be at least 1.
    #[error("sustain must be at least 1")]
    ZeroSustain,
}

/// What the autoscaler saw since its last change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observation {
    /// The pool's capacity now.
    pub capacity: usize,
    /// The fewest jobs waiting in the last `samples` samples.
    pub waiting_min: usize,
    /// The most jobs waiting in the last `samples` samples.
    pub waiting_max: usize,
    /// How many samples those cover (at most `sustain`).
    pub samples: u32,
    /// Time since the last change, or `None` if there was none.
    pub since_change: Option<Duration>,
    /// The least work waiting downstream in those samples, if the pool has
    /// a downstream gauge.
    pub downstream_min: Option<usize>,
}

/// The autoscaler's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Resize up to this capacity.
    Grow(usize),
    /// Resize down to this capacity.
    Shrink(usize),
    /// Leave the capacity as it is.
    Hold,
}

/// The watermark rule. Pure: no clocks, no threads.
///
/// - A capacity outside `[min, max]` is brought back at once.
/// - Otherwise nothing changes before `sustain` samples were seen or within
///   `cooldown` of the last change.
/// - Grow by `step` (up to `max`) when every sample was above the high
///   watermark, unless every sample also found more than
///   `downstream_high_watermark` waiting downstream (the downstream is the
///   bottleneck: hold); shrink by `step` (down to `min`) when every sample
///   was below the low watermark.
pub fn decide(obs: &Observation, policy: &ScalePolicy) -> Decision {
    if obs.capacity < policy.min {
        return Decision::Grow(policy.min);
    }
    if obs.capacity > policy.max {
        return Decision::Shrink(policy.max);
    }
    if obs.samples < policy.sustain {
        return Decision::Hold;
    }
    if obs.since_change.is_some_and(|d| d < policy.cooldown) {
        return Decision::Hold;
    }
    let downstream_full = matches!(
        (obs.downstream_min, policy.downstream_high_watermark),
        (Some(d), Some(high)) if d > high
    );
    if obs.waiting_min > policy.high_watermark && obs.capacity < policy.max && !downstream_full {
        return Decision::Grow(obs.capacity.saturating_add(policy.step).min(policy.max));
    }
    if obs.waiting_max < policy.low_watermark && obs.capacity > policy.min {
        return Decision::Shrink(obs.capacity.saturating_sub(policy.step).max(policy.min));
    }
    Decision::Hold
}

/// The sampling window the housekeeping thread keeps between decisions.
pub(crate) struct AutoscaleState {
    pub(crate) policy: ScalePolicy,
    /// Samples: (waiting here, waiting downstream if gauged).
    window: std::collections::VecDeque<(usize, Option<usize>)>,
    last_sample: Option<Instant>,
    last_change: Option<Instant>,
}

impl AutoscaleState {
    pub(crate) fn new(policy: ScalePolicy) -> Self {
        Self {
            policy,
            window: std::collections::VecDeque::new(),
            last_sample: None,
            last_change: None,
        }
    }

    /// Takes a sample if one is due and returns the decision.
    pub(crate) fn sample(
        &mut self,
        now: Instant,
        capacity: usize,
        waiting: usize,
        downstream: Option<usize>,
    ) -> Decision {
        if self
            .last_sample
            .is_some_and(|t| now.saturating_duration_since(t) < self.policy.sample_interval)
        {
            return Decision::Hold;
        }
        self.last_sample = Some(now);
        self.window.push_back((waiting, downstream));
        while self.window.len() > self.policy.sustain as usize {
            self.window.pop_front();
        }
        let here = self.window.iter().map(|s| s.0);
        let obs = Observation {
            capacity,
            waiting_min: here.clone().min().unwrap_or(0),
            waiting_max: here.max().unwrap_or(0),
            samples: u32::try_from(self.window.len()).unwrap_or(u32::MAX),
            since_change: self.last_change.map(|t| now.saturating_duration_since(t)),
            // Only when every sample had a reading.
            downstream_min: self
                .window
                .iter()
                .map(|s| s.1)
                .collect::<Option<Vec<_>>>()
                .and_then(|d| d.into_iter().min()),
        };
        let d = decide(&obs, &self.policy);
        if d != Decision::Hold {
            self.last_change = Some(now);
            self.window.clear();
        }
        d
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn policy() -> ScalePolicy {
        ScalePolicy {
            min: 2,
            max: 8,
            low_watermark: 2,
            high_watermark: 10,
            step: 2,
            cooldown: Duration::from_secs(5),
            sample_interval: Duration::from_millis(100),
            sustain: 3,
            downstream_high_watermark: Some(32),
        }
    }

    fn obs(capacity: usize, wmin: usize, wmax: usize, samples: u32, since: Option<u64>) -> Observation {
        Observation {
            capacity,
            waiting_min: wmin,
            waiting_max: wmax,
            samples,
            since_change: since.map(Duration::from_secs),
            downstream_min: None,
        }
    }

    fn downstream(o: Observation, d: usize) -> Observation {
        Observation {
            downstream_min: Some(d),
            ..o
        }
    }

    #[test]
    fn decision_table() {
        use Decision::*;
        let p = policy();
        let table = [
            // (observation, expected, why)
            (obs(4, 11, 20, 3, None), Grow(6), "all samples above high"),
            (
                obs(4, 10, 20, 3, None),
                Hold,
                "min sample equal to high is not above",
            ),
            (obs(4, 5, 50, 3, None), Hold, "between the marks at least once"),
            (obs(7, 50, 60, 3, None), Grow(8), "growth clamps to max"),
            (obs(8, 50, 60, 3, None), Hold, "already at max"),
            (obs(6, 0, 1, 3, None), Shrink(4), "all samples below low"),
            (obs(3, 0, 0, 3, None), Shrink(2), "shrink clamps to min"),
            (obs(2, 0, 0, 3, None), Hold, "already at min"),
            (
                obs(6, 0, 2, 3, None),
                Hold,
                "a sample at the low mark is not below",
            ),
            (obs(4, 11, 20, 2, None), Hold, "not sustained long enough"),
            (obs(4, 11, 20, 3, Some(4)), Hold, "within cooldown"),
            (obs(4, 11, 20, 3, Some(5)), Grow(6), "cooldown over"),
            (obs(1, 0, 0, 0, Some(0)), Grow(2), "below min is fixed at once"),
            (obs(12, 0, 0, 0, Some(0)), Shrink(8), "above max is fixed at once"),
            (
                downstream(obs(4, 11, 20, 3, None), 33),
                Hold,
                "the downstream stayed above its mark: it is the bottleneck",
            ),
            (
                downstream(obs(4, 11, 20, 3, None), 32),
                Grow(6),
                "the downstream at its mark is not above it",
            ),
            (
                downstream(obs(6, 0, 1, 3, None), 100),
                Shrink(4),
                "a full downstream does not stop a shrink",
            ),
        ];
        for (o, want, why) in table {
            assert_eq!(decide(&o, &p), want, "{why}: {o:?}");
        }
    }

    #[test]
    fn validation() {
        let ok = policy();
        assert_eq!(ok.validate(), Ok(()));
        assert_eq!(ScalePolicy { min: 0, ..ok }.validate(), Err(PolicyError::ZeroMin));
        assert_eq!(
            ScalePolicy { min: 9, ..ok }.validate(),
            Err(PolicyError::MinAboveMax)
        );
        assert_eq!(
            ScalePolicy {
                low_watermark: 11,
                ..ok
            }
            .validate(),
            Err(PolicyError::LowAboveHigh)
        );
        assert_eq!(
            ScalePolicy { step: 0, ..ok }.validate(),
            Err(PolicyError::ZeroStep)
        );
        assert_eq!(
            ScalePolicy {
                sample_interval: Duration::ZERO,
                ..ok
            }
            .validate(),
            Err(PolicyError::ZeroInterval)
        );
        assert_eq!(
            ScalePolicy { sustain: 0, ..ok }.validate(),
            Err(PolicyError::ZeroSustain)
        );
        assert_eq!(ScalePolicy::new(1, 4).validate(), Ok(()));
    }

    #[test]
    fn window_samples_on_interval_and_resets_after_change() {
        let p = policy();
        let mut a = AutoscaleState::new(p);
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        assert_eq!(a.sample(t0, 4, 20, None), Decision::Hold);
        // Too soon: not a sample.
        assert_eq!(a.sample(t0 + ms(50), 4, 20, None), Decision::Hold);
        assert_eq!(a.sample(t0 + ms(100), 4, 20, None), Decision::Hold);
        assert_eq!(a.sample(t0 + ms(200), 4, 20, None), Decision::Grow(6));
        // Cooldown holds even with sustained pressure...
        for i in 3..50u64 {
            assert_eq!(
                a.sample(t0 + ms(100 * i), 6, 20, None),
                Decision::Hold,
                "sample {i}"
            );
        }
        // ...and then the next change comes.
        assert_eq!(a.sample(t0 + ms(5200), 6, 20, None), Decision::Grow(8));
    }

    #[test]
    fn a_saturated_downstream_holds_growth_until_it_drains() {
        let mut a = AutoscaleState::new(policy());
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        // Work waits here, and more than the mark waits downstream.
        for i in 0..10u64 {
            assert_eq!(
                a.sample(t0 + ms(100 * i), 4, 20, Some(40)),
                Decision::Hold,
                "sample {i}"
            );
        }
        // A sample that finds the downstream drained ends "stays above":
        // with the pressure here sustained, the pool grows.
        assert_eq!(a.sample(t0 + ms(1000), 4, 20, Some(5)), Decision::Grow(6));
        // Without a downstream reading in every sample, it is not looked at.
        let mut b = AutoscaleState::new(policy());
        assert_eq!(b.sample(t0, 4, 20, Some(40)), Decision::Hold);
        assert_eq!(b.sample(t0 + ms(100), 4, 20, None), Decision::Hold);
        assert_eq!(b.sample(t0 + ms(200), 4, 20, Some(40)), Decision::Grow(6));
    }
}
