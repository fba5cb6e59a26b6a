//! The by-value pool builder, validated in [`PoolBuilder::build`].

use std::time::Duration;

use crate::sync::Arc;

use super::autoscale::ScalePolicy;
use super::clock::{Clock, SystemClock};
use super::core::{Config, Factory, Gauge, Hook, PanicHook, Shared};
use super::error::BuildError;
use super::worker_queue::IdleOrder;
use super::Pool;

/// Everything a builder holds but the worker-state factory.
struct Settings {
    capacity: usize,
    min_workers: usize,
    prestart: bool,
    queue_cap: usize,
    nonblocking: bool,
    max_blocked: Option<usize>,
    submit_timeout: Option<Duration>,
    expiry: Option<Duration>,
    thread_name: String,
    stack_size: Option<usize>,
    on_start: Option<Hook>,
    on_exit: Option<Hook>,
    on_panic: Option<PanicHook>,
    clock: std::sync::Arc<dyn Clock>,
    spin: u32,
    idle_order: IdleOrder,
    autoscale: Option<ScalePolicy>,
    downstream: Option<Gauge>,
    housekeeping: Option<Duration>,
    drop_timeout: Option<Duration>,
}

/// Builds a [`Pool`]. Every setting has a default; `build` validates them.
///
/// ```
/// use std::time::Duration;
/// use facepool::pool::Pool;
///
/// let pool = Pool::builder()
///     .capacity(4)
///     .queue_capacity(256)
///     .idle_expiry(Duration::from_secs(30))
///     .thread_name("decode")
///     .build()
///     .unwrap();
/// let h = pool.submit(|_| 6 * 7).unwrap();
/// assert_eq!(h.join(), Ok(42));
/// ```
#[must_use]
pub struct PoolBuilder<S = ()> {
    s: Settings,
    factory: Factory<S>,
}

impl Default for PoolBuilder<()> {
    fn default() -> Self {
        Self::new()
    }
}

impl PoolBuilder<()> {
    /// Defaults: capacity = the number of available cores, no minimum,
    /// queue of 1024 jobs, blocking submit, idle expiry 10 s, LIFO reuse.
    pub fn new() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self {
            s: Settings {
                capacity: cores,
                min_workers: 0,
                prestart: false,
                queue_cap: 1024,
                nonblocking: false,
                max_blocked: None,
                submit_timeout: None,
                expiry: Some(Duration::from_secs(10)),
                thread_name: "facepool".to_owned(),
                stack_size: None,
                on_start: None,
                on_exit: None,
                on_panic: None,
                clock: std::sync::Arc::new(SystemClock),
                spin: if cfg!(loom) { 0 } else { 64 },
                idle_order: IdleOrder::Lifo,
                autoscale: None,
                downstream: None,
                housekeeping: None,
                drop_timeout: None,
            },
            factory: std::sync::Arc::new(|| ()),
        }
    }
}

impl<S: 'static> PoolBuilder<S> {
    /// Maximum number of workers (at least 1).
    pub fn capacity(mut self, n: usize) -> Self {
        self.s.capacity = n;
        self
    }

    /// Workers kept alive even when idle (never expired). They start at build.
    pub fn min_workers(mut self, n: usize) -> Self {
        self.s.min_workers = n;
        self
    }

    /// Start all `capacity` workers at build instead of on demand.
    pub fn prestart(mut self, yes: bool) -> Self {
        self.s.prestart = yes;
        self
    }

    /// How many jobs may wait for a worker. 0 means a job is accepted only
    /// when a worker can take it at once.
    pub fn queue_capacity(mut self, n: usize) -> Self {
        self.s.queue_cap = n;
        self
    }

    /// With `true`, `submit` never blocks: a full pool refuses with
    /// `Overloaded` (as `try_submit` always does).
    pub fn nonblocking(mut self, yes: bool) -> Self {
        self.s.nonblocking = yes;
        self
    }

    /// At most this many submitters may block at once; more get `Overloaded`.
    pub fn max_blocked_submitters(mut self, n: usize) -> Self {
        self.s.max_blocked = Some(n);
        self
    }

    /// A blocking submit gives up with `SubmitError::Timeout` after this long.
    pub fn submit_timeout(mut self, d: Duration) -> Self {
        self.s.submit_timeout = Some(d);
        self
    }

    /// Workers above `min_workers` that stay idle this long exit (default 10 s).
    pub fn idle_expiry(mut self, d: Duration) -> Self {
        self.s.expiry = Some(d);
        self
    }

    /// Idle workers never expire.
    pub fn keep_idle_workers(mut self) -> Self {
        self.s.expiry = None;
        self
    }

    /// Prefix of worker thread names (`{prefix}-{n}`).
    pub fn thread_name(mut self, prefix: impl Into<String>) -> Self {
        self.s.thread_name = prefix.into();
        self
    }

    /// Stack size of worker threads.
    pub fn stack_size(mut self, bytes: usize) -> Self {
        self.s.stack_size = Some(bytes);
        self
    }

    /// Called on each worker thread when it starts, with the worker's number.
    pub fn on_thread_start(mut self, f: impl Fn(usize) + Send + Sync + 'static) -> Self {
        self.s.on_start = Some(std::sync::Arc::new(f));
        self
    }

    /// Called on each worker thread just before it exits.
    pub fn on_thread_exit(mut self, f: impl Fn(usize) + Send + Sync + 'static) -> Self {
        self.s.on_exit = Some(std::sync::Arc::new(f));
        self
    }

    /// Called with the message of every panic a worker catches: a job's
    /// (also its outcome, `JobError::Panicked`), and any other user code's
    /// that runs on a worker: the drop of a job's captures or result, a
    /// waker, the clock, the worker-state factory, a hook. The worker
    /// survives each of them.
    pub fn panic_handler(mut self, f: impl Fn(&str) + Send + Sync + 'static) -> Self {
        self.s.on_panic = Some(std::sync::Arc::new(f));
        self
    }

    /// Per-worker state: `factory` runs once on each worker thread, and every
    /// job on that thread gets the value as `&mut`. This is how a model
    /// session lives on its thread. Workers build their states side by side:
    /// a slow factory delays only its own worker. A factory that panics is
    /// reported to the panic handler and tried again by the same worker
    /// after a backoff (10 ms, doubling up to 1 s) until it succeeds or the
    /// pool closes or shrinks; queued jobs wait for a worker whose factory
    /// succeeded, or are cancelled when the pool is shut down with none.
    pub fn worker_state<T: 'static>(self, factory: impl Fn() -> T + Send + Sync + 'static) -> PoolBuilder<T> {
        PoolBuilder {
            s: self.s,
            factory: std::sync::Arc::new(factory),
        }
    }

    /// The time source (a `ManualClock` in tests).
    pub fn clock(mut self, clock: std::sync::Arc<dyn Clock>) -> Self {
        self.s.clock = clock;
        self
    }

    /// Which idle worker takes the next job (default LIFO).
    pub fn idle_order(mut self, order: IdleOrder) -> Self {
        self.s.idle_order = order;
        self
    }

    /// How many times a worker that found the queue empty polls it before
    /// parking (0 parks at once). Spinning saves a wake-up per job when jobs
    /// are short; at most one worker spins at a time. A submitter that finds
    /// the pool full likewise polls for room `rounds / 16` times, yielding
    /// its core between polls, before it sleeps.
    pub fn spin(mut self, rounds: u32) -> Self {
        self.s.spin = rounds;
        self
    }

    /// Resize the pool on queue watermarks (see `autoscale::decide`). The
    /// capacity given to the builder is the starting point, clamped to
    /// `[policy.min, policy.max]`.
    pub fn autoscale(mut self, policy: ScalePolicy) -> Self {
        self.s.autoscale = Some(policy);
        self
    }

    /// A gauge of the work waiting in what this pool feeds (for example a
    /// batcher's `queued_weight`), sampled with the queue by the
    /// autoscaler: while it stays above the policy's
    /// `downstream_high_watermark`, the pool does not grow. A gauge that
    /// panics is reported and not looked at.
    pub fn downstream(mut self, gauge: impl Fn() -> usize + Send + Sync + 'static) -> Self {
        self.s.downstream = Some(std::sync::Arc::new(gauge));
        self
    }

    /// Interval of the housekeeping thread (clock refresh, idle expiry,
    /// autoscaling). `Duration::ZERO` starts no thread: the owner calls
    /// `Pool::housekeep` itself (deterministic tests with a manual clock).
    /// Default: a quarter of the expiry or the sample interval, within
    /// [1 ms, 1 s].
    pub fn housekeeping_interval(mut self, d: Duration) -> Self {
        self.s.housekeeping = Some(d);
        self
    }

    /// How long dropping the last handle to the pool waits for queued and
    /// running jobs (default: until they are done).
    pub fn drop_timeout(mut self, d: Duration) -> Self {
        self.s.drop_timeout = Some(d);
        self
    }

    /// Validates the settings and starts the pool.
    pub fn build(self) -> Result<Pool<S>, BuildError> {
        if self.s.capacity == 0 {
            return Err(BuildError::ZeroCapacity);
        }
        if self.s.min_workers > self.s.capacity {
            return Err(BuildError::MinAboveCapacity {
                min: self.s.min_workers,
                capacity: self.s.capacity,
            });
        }
        if self.s.expiry.is_some_and(|d| d.is_zero()) {
            return Err(BuildError::ZeroExpiry);
        }
        let mut capacity = self.s.capacity;
        if let Some(p) = &self.s.autoscale {
            p.validate()?;
            capacity = capacity.clamp(p.min, p.max);
        }
        let tick = self.s.housekeeping.unwrap_or_else(|| {
            let base = match (self.s.expiry, &self.s.autoscale) {
                (_, Some(p)) => p.sample_interval,
                (Some(e), None) => e / 4,
                (None, None) => Duration::from_secs(1),
            };
            base.clamp(Duration::from_millis(1), Duration::from_secs(1))
        });
        let config = Config {
            queue_cap: self.s.queue_cap,
            min_workers: self.s.min_workers,
            nonblocking: self.s.nonblocking,
            max_blocked: self.s.max_blocked,
            submit_timeout: self.s.submit_timeout,
            expiry: self.s.expiry,
            thread_name: self.s.thread_name,
            stack_size: self.s.stack_size,
            factory: self.factory,
            on_start: self.s.on_start,
            on_exit: self.s.on_exit,
            on_panic: self.s.on_panic,
            clock: self.s.clock,
            spin: self.s.spin,
            autoscale: self.s.autoscale,
            downstream: self.s.downstream,
        };
        let shared = Arc::new(Shared::new(config, capacity, self.s.idle_order));
        let warm = if self.s.prestart {
            capacity
        } else {
            self.s.min_workers
        };
        Pool::start(shared, warm, tick, self.s.drop_timeout)
    }
}
