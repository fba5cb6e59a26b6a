//! The live numbers (`GET /v1/stats`): the API's requests of the last
//! minutes, one slot per second (answered, refused, failed; latency of the
//! answered ones), beside the runtime's gauges read at the call. What a
//! dashboard draws without parsing Prometheus text.
//!
//! Recording a request costs a short lock and a histogram add; the window
//! holds [`WINDOW_SECS`] slots at most, each a small HDR histogram.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// Seconds of requests kept.
pub const WINDOW_SECS: u64 = 300;

/// One second of requests.
#[derive(Debug, Clone)]
struct Slot {
    /// Seconds since the window started.
    second: u64,
    ok: u64,
    refused: u64,
    client_errors: u64,
    server_errors: u64,
    /// Latency of the answered (2xx) requests, µs.
    latency: Histogram<u64>,
}

impl Slot {
    fn new(second: u64) -> Option<Self> {
        // 1 µs to 10 min, 2 significant digits: a few KiB a slot.
        let latency = Histogram::new_with_bounds(1, 600_000_000, 2).ok()?;
        Some(Self {
            second,
            ok: 0,
            refused: 0,
            client_errors: 0,
            server_errors: 0,
            latency,
        })
    }
}

/// One second as the stats give it (oldest first).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Second {
    /// Seconds before now (0: the current one).
    pub ago: u64,
    /// Requests answered 2xx.
    pub ok: u64,
    /// Requests refused: 429 (full, or a deadline the wait cannot meet)
    /// and 503 (stopping, a dependency away).
    pub refused: u64,
    /// Other 4xx answers.
    pub client_errors: u64,
    /// 5xx answers but 503.
    pub server_errors: u64,
    /// Median latency of the answered requests, ms.
    pub p50_ms: Option<f64>,
    /// 99th percentile, ms.
    pub p99_ms: Option<f64>,
}

/// The requests of a window: per second, and over all of it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Window {
    /// Oldest first, one per second, the current one last.
    pub seconds: Vec<Second>,
    /// Median latency of the answered requests over the window, ms.
    pub p50_ms: Option<f64>,
    /// 99th percentile over the window, ms.
    pub p99_ms: Option<f64>,
}

/// The API's requests of the last [`WINDOW_SECS`] seconds.
#[derive(Debug)]
pub struct Recent {
    start: Instant,
    slots: Mutex<VecDeque<Slot>>,
}

impl Default for Recent {
    fn default() -> Self {
        Self::new()
    }
}

fn ms(us: u64) -> f64 {
    (us as f64 / 10.0).round() / 100.0
}

impl Recent {
    /// An empty window starting now.
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
            slots: Mutex::new(VecDeque::with_capacity(WINDOW_SECS as usize + 1)),
        }
    }

    fn now(&self) -> u64 {
        self.start.elapsed().as_secs()
    }

    /// Counts a request answered with `status` after `took`.
    pub fn record(&self, status: u16, took: Duration) {
        self.record_at(self.now(), status, took);
    }

    fn record_at(&self, second: u64, status: u16, took: Duration) {
        let mut slots = crate::sync::lock(&self.slots);
        if slots.back().is_none_or(|s| s.second < second) {
            let Some(slot) = Slot::new(second) else { return };
            slots.push_back(slot);
            while slots.front().is_some_and(|s| s.second + WINDOW_SECS <= second) {
                slots.pop_front();
            }
        }
        let Some(slot) = slots.back_mut() else { return };
        match status {
            200..=299 => {
                slot.ok += 1;
                let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
                slot.latency.saturating_record(us.max(1));
            }
            429 | 503 => slot.refused += 1,
            400..=499 => slot.client_errors += 1,
            _ => slot.server_errors += 1,
        }
    }

    /// The last `seconds` seconds (at most [`WINDOW_SECS`]), one entry for
    /// each, empty ones (and those before the window started) included.
    pub fn window(&self, seconds: u64) -> Window {
        self.window_at(self.now(), seconds)
    }

    fn window_at(&self, now: u64, seconds: u64) -> Window {
        let seconds = seconds.clamp(1, WINDOW_SECS);
        let first = (now + 1).saturating_sub(seconds);
        let slots = crate::sync::lock(&self.slots);
        let mut all: Option<Histogram<u64>> = None;
        let mut out = Vec::with_capacity(seconds as usize);
        let mut kept = slots.iter().filter(|s| s.second >= first).peekable();
        // Seconds before the window started are there too, empty.
        for ago in (0..seconds).rev() {
            let mut entry = Second {
                ago,
                ..Second::default()
            };
            let Some(second) = now.checked_sub(ago) else {
                out.push(entry);
                continue;
            };
            if let Some(s) = kept.next_if(|s| s.second == second) {
                entry.ok = s.ok;
                entry.refused = s.refused;
                entry.client_errors = s.client_errors;
                entry.server_errors = s.server_errors;
                if !s.latency.is_empty() {
                    entry.p50_ms = Some(ms(s.latency.value_at_quantile(0.5)));
                    entry.p99_ms = Some(ms(s.latency.value_at_quantile(0.99)));
                    match &mut all {
                        Some(h) => {
                            let _ = h.add(&s.latency);
                        }
                        None => all = Some(s.latency.clone()),
                    }
                }
            }
            out.push(entry);
        }
        Window {
            seconds: out,
            p50_ms: all.as_ref().map(|h| ms(h.value_at_quantile(0.5))),
            p99_ms: all.as_ref().map(|h| ms(h.value_at_quantile(0.99))),
        }
    }
}

/// This process's resident memory, bytes (Linux; `None` elsewhere).
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_count_by_outcome_and_old_ones_go() {
        let r = Recent::new();
        let ms = Duration::from_millis;
        r.record_at(10, 200, ms(10));
        r.record_at(10, 200, ms(30));
        r.record_at(10, 429, ms(1));
        r.record_at(12, 404, ms(1));
        r.record_at(12, 500, ms(1));
        r.record_at(12, 503, ms(1));
        let w = r.window_at(12, 4);
        assert_eq!(
            w.seconds.iter().map(|s| s.ago).collect::<Vec<_>>(),
            vec![3, 2, 1, 0]
        );
        // Within the histogram's 2 significant digits.
        let near = |got: Option<f64>, want: f64| got.is_some_and(|g| (g - want).abs() <= want * 0.01);
        let ten = &w.seconds[1];
        assert_eq!((ten.ok, ten.refused), (2, 1));
        assert!(near(ten.p50_ms, 10.0) && near(ten.p99_ms, 30.0), "{ten:?}");
        assert_eq!(
            w.seconds[2],
            Second {
                ago: 1,
                ..Second::default()
            }
        );
        let twelve = &w.seconds[3];
        assert_eq!(
            (
                twelve.ok,
                twelve.refused,
                twelve.client_errors,
                twelve.server_errors
            ),
            (0, 1, 1, 1)
        );
        assert!(near(w.p50_ms, 10.0) && near(w.p99_ms, 30.0), "{w:?}");
        // Past the window, a slot goes when the next one comes.
        r.record_at(10 + WINDOW_SECS, 200, ms(5));
        let w = r.window_at(10 + WINDOW_SECS, WINDOW_SECS);
        assert_eq!(w.seconds.len(), WINDOW_SECS as usize);
        assert_eq!(w.seconds.iter().map(|s| s.ok).sum::<u64>(), 1);
        assert_eq!(crate::sync::lock(&r.slots).len(), 2);
        let early = r.window_at(3, 1000);
        assert_eq!(early.seconds.len(), WINDOW_SECS as usize);
        assert_eq!(early.seconds.first().map(|s| s.ago), Some(WINDOW_SECS - 1));
    }
}
