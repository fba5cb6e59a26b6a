//! The flush rule: when a batch thread that is free to call the handler
//! should take the waiting items, as a plain function of what waits, the
//! policy and the time.

use std::time::{Duration, Instant};

/// How items are gathered into batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchPolicy {
    /// At most this many items per handler call (at least 1).
    pub max_items: usize,
    /// At most this much total weight per handler call, if set. An item
    /// heavier than this on its own still goes, alone, in a batch.
    pub max_weight: Option<usize>,
    /// Flush once the oldest waiting item has waited this long.
    pub max_delay: Duration,
    /// Handler calls in flight at once: one batch thread (each owning its
    /// handler instance) per call.
    pub in_flight: usize,
}

impl Default for BatchPolicy {
    /// 32 items, no weight limit, 5 ms delay, one call at a time.
    fn default() -> Self {
        Self {
            max_items: 32,
            max_weight: None,
            max_delay: Duration::from_millis(5),
            in_flight: 1,
        }
    }
}

impl BatchPolicy {
    /// Checks that the policy can ever flush.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.max_items == 0 {
            return Err(PolicyError::ZeroItems);
        }
        if self.max_weight == Some(0) {
            return Err(PolicyError::ZeroWeight);
        }
        if self.in_flight == 0 {
            return Err(PolicyError::ZeroInFlight);
        }
        Ok(())
    }
}

/// Why a [`BatchPolicy`] was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// `max_items` must be at least 1.
    #[error("max_items must be at least 1")]
    ZeroItems,
    /// `max_weight`, when set, must be at least 1.
    #[error("max_weight must be at least 1")]
    ZeroWeight,
    /// `in_flight` must be at least 1.
    #[error("in_flight must be at least 1")]
    ZeroInFlight,
}

/// Why a batch was flushed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FlushReason {
    /// The batch reached `max_items` or `max_weight`.
    Full,
    /// The oldest item had waited `max_delay`.
    Delay,
    /// Waiting longer would have made an item miss its deadline.
    Deadline,
    /// The batcher is shutting down and flushes what is pending.
    Shutdown,
}

/// What waits in the pending queue, as the flush rule sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueView {
    /// Items waiting.
    pub items: usize,
    /// Their total weight.
    pub weight: usize,
    /// When the oldest waiting item arrived (`None` when empty).
    pub oldest: Option<Instant>,
    /// The earliest deadline among waiting items, if any has one.
    pub earliest_deadline: Option<Instant>,
    /// How long a handler call is expected to take (recent average).
    pub expected_call: Duration,
    /// Whether the batcher is shutting down.
    pub closing: bool,
}

/// The flush rule's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flush {
    /// Nothing is due: sleep until an item arrives.
    Idle,
    /// Take a batch now.
    Now(FlushReason),
    /// Sleep until this instant (or until an item arrives), then ask again.
    At(Instant),
}

/// Decides whether to flush now.
///
/// Full by count or weight, or shutting down: now. The oldest item has
/// waited `max_delay`: now. An item's deadline would pass before a call
/// started later could return (`deadline - expected_call`): now. Otherwise
/// sleep until the earliest of those instants.
pub fn decide(view: &QueueView, policy: &BatchPolicy, now: Instant) -> Flush {
    let Some(oldest) = view.oldest else {
        return Flush::Idle;
    };
    if view.items == 0 {
        return Flush::Idle;
    }
    if view.closing {
        return Flush::Now(FlushReason::Shutdown);
    }
    let full_by_weight = policy.max_weight.is_some_and(|w| view.weight >= w);
    if view.items >= policy.max_items || full_by_weight {
        return Flush::Now(FlushReason::Full);
    }
    let by_delay = oldest.checked_add(policy.max_delay);
    if by_delay.is_some_and(|t| now >= t) {
        return Flush::Now(FlushReason::Delay);
    }
    let by_deadline = view
        .earliest_deadline
        .map(|d| d.checked_sub(view.expected_call).unwrap_or(d));
    if let Some(t) = by_deadline {
        if now >= t {
            return Flush::Now(FlushReason::Deadline);
        }
    }
    match (by_delay, by_deadline) {
        (Some(a), Some(b)) => Flush::At(a.min(b)),
        (Some(t), None) | (None, Some(t)) => Flush::At(t),
        // A delay too long to represent: only fullness flushes.
        (None, None) => Flush::Idle,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn policy() -> BatchPolicy {
        BatchPolicy {
            max_items: 8,
            max_weight: Some(20),
            max_delay: 10 * MS,
            in_flight: 1,
        }
    }

    #[test]
    fn table() {
        let t0 = Instant::now();
        let view =
            |items, weight, oldest: Option<u32>, deadline: Option<u32>, call: u32, closing| QueueView {
                items,
                weight,
                oldest: oldest.map(|ms| t0 + ms * MS),
                earliest_deadline: deadline.map(|ms| t0 + ms * MS),
                expected_call: call * MS,
                closing,
            };
        // (view, now in ms after t0, expected decision)
        let cases: [(QueueView, u32, Flush); 16] = [
            (view(0, 0, None, None, 0, false), 0, Flush::Idle),
            (view(0, 0, None, None, 0, true), 0, Flush::Idle),
            (view(1, 1, Some(0), None, 0, false), 0, Flush::At(t0 + 10 * MS)),
            (view(1, 1, Some(0), None, 0, false), 9, Flush::At(t0 + 10 * MS)),
            (
                view(1, 1, Some(0), None, 0, false),
                10,
                Flush::Now(FlushReason::Delay),
            ),
            (
                view(1, 1, Some(0), None, 0, false),
                50,
                Flush::Now(FlushReason::Delay),
            ),
            (
                view(8, 8, Some(0), None, 0, false),
                0,
                Flush::Now(FlushReason::Full),
            ),
            (
                view(9, 9, Some(0), None, 0, false),
                0,
                Flush::Now(FlushReason::Full),
            ),
            (
                view(3, 20, Some(0), None, 0, false),
                0,
                Flush::Now(FlushReason::Full),
            ),
            (view(3, 19, Some(0), None, 0, false), 0, Flush::At(t0 + 10 * MS)),
            (
                view(1, 1, Some(0), None, 0, true),
                0,
                Flush::Now(FlushReason::Shutdown),
            ),
            // A deadline before the delay flush, with a 2 ms call: flush at 4.
            (view(1, 1, Some(0), Some(6), 2, false), 0, Flush::At(t0 + 4 * MS)),
            (
                view(1, 1, Some(0), Some(6), 2, false),
                4,
                Flush::Now(FlushReason::Deadline),
            ),
            // A deadline after the delay flush changes nothing.
            (
                view(1, 1, Some(0), Some(30), 2, false),
                0,
                Flush::At(t0 + 10 * MS),
            ),
            // Full wins over deadline and delay.
            (
                view(8, 8, Some(0), Some(1), 5, false),
                20,
                Flush::Now(FlushReason::Full),
            ),
            // Delay is checked before deadline when both are due.
            (
                view(1, 1, Some(0), Some(12), 5, false),
                10,
                Flush::Now(FlushReason::Delay),
            ),
        ];
        for (i, (v, now, want)) in cases.into_iter().enumerate() {
            assert_eq!(
                decide(&v, &policy(), t0 + now * MS),
                want,
                "case {i}: {v:?} at {now} ms"
            );
        }
    }

    #[test]
    fn no_weight_limit_and_zero_delay() {
        let t0 = Instant::now();
        let p = BatchPolicy {
            max_weight: None,
            max_delay: Duration::ZERO,
            ..policy()
        };
        let v = QueueView {
            items: 1,
            weight: 1_000,
            oldest: Some(t0),
            earliest_deadline: None,
            expected_call: Duration::ZERO,
            closing: false,
        };
        assert_eq!(decide(&v, &p, t0), Flush::Now(FlushReason::Delay));
    }

    #[test]
    fn huge_delay_does_not_overflow() {
        let t0 = Instant::now();
        let p = BatchPolicy {
            max_delay: Duration::MAX,
            ..policy()
        };
        let v = QueueView {
            items: 1,
            weight: 1,
            oldest: Some(t0),
            earliest_deadline: None,
            expected_call: Duration::ZERO,
            closing: false,
        };
        assert_eq!(decide(&v, &p, t0), Flush::Idle);
        let with_deadline = QueueView {
            earliest_deadline: Some(t0 + MS),
            ..v
        };
        assert_eq!(decide(&with_deadline, &p, t0), Flush::At(t0 + MS));
    }

    #[test]
    fn validation() {
        assert_eq!(policy().validate(), Ok(()));
        let bad = |f: fn(&mut BatchPolicy)| {
            let mut p = policy();
            f(&mut p);
            p.validate()
        };
        assert_eq!(bad(|p| p.max_items = 0), Err(PolicyError::ZeroItems));
        assert_eq!(bad(|p| p.max_weight = Some(0)), Err(PolicyError::ZeroWeight));
        assert_eq!(bad(|p| p.in_flight = 0), Err(PolicyError::ZeroInFlight));
    }
}
