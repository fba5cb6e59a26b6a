//! Guards toward a slow or failing downstream, each a small wrapper usable
//! alone around any call, and composable with each other and with the
//! batcher (wrap the downstream call inside a batch handler).
//!
//! - [`RateLimit`]: a token bucket in items per second with a burst (on the
//!   `governor` crate); a batch of 32 takes 32 tokens.
//! - [`Timeout`]: runs a call on a pool and gives up waiting after a limit.
//! - [`Retry`]: exponential backoff with jitter for errors the caller marks
//!   transient, with max attempts and a shared [`RetryBudget`].
//! - [`CircuitBreaker`]: the pure state machine [`Breaker`] (closed → open
//!   on a failure rate over a window → half-open probes → closed) behind a lock.
//! - [`Answer`] / [`or_degrade`]: a caller-supplied degraded answer, marked
//!   as such, when a call fails or the breaker is open.
//!
//! # Order of composition
//! Order changes behaviour, as in tower. The recommended order, outermost
//! first, is `breaker → retry → rate limit → timeout → call`:
//! - the breaker sees one outcome per logical call (after retries), so a
//!   burst of retried failures opens it once, not once per attempt;
//! - every attempt, retries included, takes rate-limit tokens, so retries
//!   cannot exceed the downstream's rate;
//! - the timeout bounds one attempt, not the whole retry loop.
//!
//! Put the breaker inside the retry instead, and an open breaker's refusal
//! is itself retried (mark `BreakerError::Open` as permanent if you do).
//!
//! None of these own threads: sleeps happen on the calling thread, and
//! [`Timeout`] uses a pool the caller gives it.

mod breaker;
mod fallback;
mod rate;
mod retry;
mod timeout;

pub use self::breaker::{
    Admit, Breaker, BreakerConfig, BreakerError, BreakerState, CircuitBreaker, ConfigError,
};
pub use self::fallback::{or_degrade, Answer};
pub use self::rate::{RateLimit, RateLimitError};
pub use self::retry::{backoff, Jitter, Retry, RetryBudget, RetryError, RetryPolicy};
pub use self::timeout::{Timeout, TimeoutError};

/// How a guard sleeps: the real `thread::sleep`, or in tests a function that
/// advances a fake clock.
pub type Sleeper = std::sync::Arc<dyn Fn(std::time::Duration) + Send + Sync>;

fn real_sleep() -> Sleeper {
    std::sync::Arc::new(std::thread::sleep)
}
