//! What a request asks of admission, why it may be refused, and the
//! admission's counts.

use std::time::Duration;

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

    pub(super) fn within(self, limit: Cost) -> bool {
        self.faces <= limit.faces && self.bytes <= limit.bytes
    }

    pub(super) fn min(self, o: Cost) -> Cost {
        Cost {
            faces: self.faces.min(o.faces),
            bytes: self.bytes.min(o.bytes),
        }
    }

    pub(super) fn is_zero(self) -> bool {
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
    /// Full now: try again after about `retry_after` (the time the excess
    /// takes to drain at the measured rate; a second when unmeasured).
    #[error("at capacity")]
    Overloaded {
        /// When trying again may succeed.
        retry_after: Duration,
    },
    /// The request's own deadline is shorter than the wait it would have
    /// (the faces ahead of it at the measured rate): refused at once
    /// instead of admitted to time out.
    #[error("the request's deadline is shorter than the expected wait of {} ms", expected.as_millis())]
    Unmeetable {
        /// The expected wait.
        expected: Duration,
    },
    /// The deadline passed while waiting in line.
    #[error("the deadline passed while waiting for admission")]
    Timeout,
    /// Admission is closed (the service is stopping).
    #[error("the service is shutting down")]
    Closed,
}

/// Counts of the admission, for gauges.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
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
    /// Refused because their deadline was shorter than the expected wait.
    pub refused_deadline: u64,
    /// The latency target the limit holds, when it adapts.
    pub target: Option<Duration>,
    /// Faces finished per second while the limit held requests back (the
    /// measured capacity).
    pub rate: Option<f64>,
    /// The smallest face sojourn seen (what a face costs alone).
    pub floor: Option<Duration>,
    /// The last interval's face sojourn p99.
    pub sojourn_p99: Option<Duration>,
    /// What a face admitted now would wait, at the measured rate.
    pub expected_wait: Option<Duration>,
}
