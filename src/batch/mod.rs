//! A Nagle-style micro-batcher: items from many callers are gathered into one
//! call of a downstream that is fast per batch and slow per call (a model, a
//! batch-only service), and each result goes back to its own caller.
//!
//! A batch is flushed when it is full (by count or weight), when the oldest
//! item has waited `max_delay`, or when waiting longer would make an item
//! miss its deadline (see [`decide`]). Handler instances live on a fixed set
//! of batch threads, one each, because model state lives there. Items whose
//! deadline passed or whose handle was dropped are removed before the call.
//!
//! Every accepted item ends in exactly one outcome: delivered, failed (the
//! handler's error, panic, or a wrong number of results), expired, abandoned
//! or cancelled (shutdown without flush). At rest the counters satisfy
//! `submitted = delivered + failed + expired + abandoned + cancelled + rejected`.
//!
//! ```
//! use std::time::Duration;
//! use facepool::batch::{Batcher, BatchPolicy};
//!
//! let policy = BatchPolicy { max_items: 16, max_delay: Duration::from_millis(2), ..Default::default() };
//! // One handler per batch thread; here it doubles every item of a batch.
//! let batcher = Batcher::builder(policy)
//!     .build(|_thread| Ok::<_, std::convert::Infallible>(|items: Vec<u32>| {
//!         Ok::<_, std::convert::Infallible>(items.into_iter().map(|x| x * 2).collect())
//!     }))
//!     .unwrap();
//! let handles: Vec<_> = (0..10).map(|i| batcher.submit(i).unwrap()).collect();
//! let out: Vec<u32> = handles.into_iter().map(|h| h.join().unwrap()).collect();
//! assert_eq!(out, (0..10).map(|i| i * 2).collect::<Vec<_>>());
//! ```

mod completed;
pub(crate) mod core;
mod error;
mod handle;
mod policy;

use std::time::{Duration, Instant};

use crate::pool::{Clock, SystemClock};
use crate::sync::{thread, Arc, Ordering};

pub use self::completed::{map_completed, Chunks, Completed, Done, MapError};
pub use self::error::{BatchError, BuildError, SubmitError};
pub use self::handle::BatchHandle;
pub use self::policy::{decide, BatchPolicy, Flush, FlushReason, PolicyError, QueueView};

use self::core::{Closing, Shared, Wait, SIZE_BUCKETS};

/// The downstream a batcher calls: a batch of items in, one result per item
/// out, in order. Each batch thread owns one instance (`&mut self`).
///
/// Per-item failures: make `O` a `Result`. An `Err` from `call` fails every
/// item of that batch with [`BatchError::Handler`].
pub trait BatchHandler<I, O>: Send + 'static {
    /// The error of a whole failed call.
    type Error: std::error::Error + Send + Sync + 'static;
    /// Processes one batch; must return exactly one result per item.
    fn call(&mut self, items: Vec<I>) -> Result<Vec<O>, Self::Error>;
}

impl<I, O, E, F> BatchHandler<I, O> for F
where
    F: FnMut(Vec<I>) -> Result<Vec<O>, E> + Send + 'static,
    E: std::error::Error + Send + Sync + 'static,
{
    type Error = E;
    fn call(&mut self, items: Vec<I>) -> Result<Vec<O>, E> {
        self(items)
    }
}

/// Options of one item.
#[derive(Debug, Clone, Copy, Default)]
pub struct ItemOptions {
    /// If the item has not been sent downstream by then, it is removed and
    /// ends `Expired`. The flush rule also sends it early enough to meet it.
    pub deadline: Option<Instant>,
}

impl ItemOptions {
    /// An item that must be sent before `deadline`.
    pub fn deadline(deadline: Instant) -> Self {
        Self {
            deadline: Some(deadline),
        }
    }
}

/// Counts of flushes by reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FlushCounts {
    /// Batches sent because they were full.
    pub full: u64,
    /// Batches sent because the oldest item had waited `max_delay`.
    pub delay: u64,
    /// Batches sent early to meet an item's deadline.
    pub deadline: u64,
    /// Batches sent by a flushing shutdown.
    pub shutdown: u64,
}

/// Batch sizes in power-of-two buckets: 1, 2, 3-4, 5-8, ..., 32769 and more.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SizeHistogram {
    counts: [u64; SIZE_BUCKETS],
}

impl SizeHistogram {
    /// Non-empty buckets as `(smallest size, largest size, batches)`; the
    /// last bucket's largest size is `usize::MAX`.
    pub fn buckets(&self) -> impl Iterator<Item = (usize, usize, u64)> + '_ {
        self.counts
            .iter()
            .enumerate()
            .filter(|(_, c)| **c > 0)
            .map(|(i, c)| {
                let lo = if i == 0 { 1 } else { (1usize << (i - 1)) + 1 };
                let hi = if i == SIZE_BUCKETS - 1 {
                    usize::MAX
                } else {
                    1usize << i
                };
                (lo, hi, *c)
            })
    }

    /// Total batches counted.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// A point-in-time view of the batcher's counters and gauges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BatchStats {
    /// Every submit call, accepted or not.
    pub submitted: u64,
    /// Submits refused (`Overloaded`, `Timeout`, `TooHeavy`, `Closed`).
    pub rejected: u64,
    /// Items that got a result from the handler.
    pub delivered: u64,
    /// Items whose batch failed (handler error, panic, wrong count).
    pub failed: u64,
    /// Items removed unsent because their deadline passed.
    pub expired: u64,
    /// Items removed unsent because their handle was dropped.
    pub abandoned: u64,
    /// Items removed unsent by a cancelling shutdown.
    pub cancelled: u64,
    /// Handler calls made.
    pub batches: u64,
    /// Why batches were flushed.
    pub flushes: FlushCounts,
    /// Items per handler call.
    pub batch_sizes: SizeHistogram,
    /// Items waiting now.
    pub queued: usize,
    /// Their total weight.
    pub queued_weight: usize,
    /// Submitters blocked on a full queue now.
    pub blocked: usize,
}

impl BatchStats {
    /// Accepted items that have no outcome yet (queued or in a call).
    pub fn in_flight(&self) -> u64 {
        self.submitted.saturating_sub(
            self.rejected + self.delivered + self.failed + self.expired + self.abandoned + self.cancelled,
        )
    }

    /// Mean items per handler call.
    pub fn mean_batch(&self) -> f64 {
        if self.batches == 0 {
            0.0
        } else {
            (self.delivered + self.failed) as f64 / self.batches as f64
        }
    }
}

/// What a shutdown achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ShutdownReport {
    /// Items cancelled unsent (shutdown without flush).
    pub cancelled: usize,
    /// Batch threads still in a handler call when the timeout passed (they
    /// finish on their own).
    pub threads_left: usize,
}

type Weigher<I> = std::sync::Arc<dyn Fn(&I) -> usize + Send + Sync>;

/// Builds a [`Batcher`]. By value; validated in `build`.
pub struct BatcherBuilder<I, O> {
    policy: BatchPolicy,
    queue_capacity: usize,
    wait: Wait,
    weigher: Option<Weigher<I>>,
    clock: std::sync::Arc<dyn Clock>,
    thread_name: String,
    drop_timeout: Option<Duration>,
    on_panic: Option<core::PanicHook>,
    _out: std::marker::PhantomData<fn() -> O>,
}

impl<I: Send + 'static, O: Send + 'static> BatcherBuilder<I, O> {
    fn new(policy: BatchPolicy) -> Self {
        Self {
            policy,
            queue_capacity: 1024,
            wait: Wait::No,
            weigher: None,
            clock: std::sync::Arc::new(SystemClock),
            thread_name: "facepool-batch".to_owned(),
            drop_timeout: Some(Duration::from_secs(30)),
            on_panic: None,
            _out: std::marker::PhantomData,
        }
    }

    /// How much weight may wait (default 1024). Submits beyond it are
    /// refused or block (see [`blocking`](Self::blocking)).
    pub fn queue_capacity(mut self, weight: usize) -> Self {
        self.queue_capacity = weight;
        self
    }

    /// Makes `submit` block while the queue is full, at most `timeout` if
    /// given. By default `submit` refuses at once with `Overloaded`.
    pub fn blocking(mut self, timeout: Option<Duration>) -> Self {
        self.wait = Wait::Block(timeout);
        self
    }

    /// An item's weight (default 1; 0 counts as 1), e.g. the number of faces
    /// in a request. Queue capacity and `max_weight` are in this unit.
    pub fn weigher(mut self, f: impl Fn(&I) -> usize + Send + Sync + 'static) -> Self {
        self.weigher = Some(std::sync::Arc::new(f));
        self
    }

    /// The time source for arrival times, deadlines and the flush rule.
    pub fn clock(mut self, clock: std::sync::Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Prefix of the batch threads' names.
    pub fn thread_name(mut self, name: impl Into<String>) -> Self {
        self.thread_name = name.into();
        self
    }

    /// How long dropping the last handle waits for pending items to be
    /// flushed (default 30 s; `None` waits as long as it takes).
    pub fn drop_timeout(mut self, t: Option<Duration>) -> Self {
        self.drop_timeout = t;
        self
    }

    /// Called with the message of a panic of user code on a batch thread
    /// that is not an item's outcome: the drop of an item, a result or the
    /// handler, a waker, the clock. The thread survives each of them (a
    /// panic of the handler's call is every item's outcome instead:
    /// `BatchError::Panicked`).
    pub fn panic_handler(mut self, f: impl Fn(&str) + Send + Sync + 'static) -> Self {
        self.on_panic = Some(std::sync::Arc::new(f));
        self
    }

    /// Starts `policy.in_flight` batch threads; each calls `factory(index)`
    /// once to create the handler it owns. If any factory fails (or panics),
    /// the threads are stopped and the error says which one.
    pub fn build<H, E, F>(self, factory: F) -> Result<Batcher<I, O>, BuildError>
    where
        H: BatchHandler<I, O>,
        E: std::fmt::Display + 'static,
        F: Fn(usize) -> Result<H, E> + Send + Sync + 'static,
    {
        self.policy.validate()?;
        if self.queue_capacity == 0 {
            return Err(BuildError::ZeroQueue);
        }
        let n = self.policy.in_flight;
        let shared = Arc::new(Shared::new(
            self.policy,
            self.queue_capacity,
            self.clock,
            self.on_panic,
        ));
        let batcher = Batcher {
            inner: Arc::new(Inner {
                shared: shared.clone(),
                wait: self.wait,
                weigher: self.weigher,
                drop_timeout: self.drop_timeout,
            }),
        };
        // From here on, dropping `batcher` stops whatever was started.
        let factory = std::sync::Arc::new(factory);
        for i in 0..n {
            shared.lock_state().threads += 1;
            let (sh, f) = (shared.clone(), factory.clone());
            let spawned = thread::Builder::new()
                .name(format!("{}-{i}", self.thread_name))
                .spawn(move || core::batch_thread(sh, i, f));
            if let Err(e) = spawned {
                shared.lock_state().threads -= 1;
                return Err(BuildError::Spawn(e));
            }
        }
        if let Some((thread, message)) = shared.wait_ready(n) {
            return Err(BuildError::Handler { thread, message });
        }
        Ok(batcher)
    }
}

struct Inner<I, O> {
    shared: Arc<Shared<I, O>>,
    wait: Wait,
    weigher: Option<Weigher<I>>,
    drop_timeout: Option<Duration>,
}

impl<I, O> Drop for Inner<I, O> {
    fn drop(&mut self) {
        self.shared.close(false);
        if !core::on_batch_thread(&self.shared) {
            self.shared
                .wait_exited(self.drop_timeout.map(|d| Instant::now() + d));
        }
    }
}

/// The micro-batcher. Cheap to clone; when the last clone is dropped, the
/// pending items are flushed and the batch threads stop.
pub struct Batcher<I, O> {
    inner: Arc<Inner<I, O>>,
}

impl<I, O> Clone for Batcher<I, O> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<I, O> std::fmt::Debug for Batcher<I, O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher")
            .field("policy", &self.inner.shared.policy)
            .finish_non_exhaustive()
    }
}

impl<I: Send + 'static, O: Send + 'static> Batcher<I, O> {
    /// A builder with the given policy.
    pub fn builder(policy: BatchPolicy) -> BatcherBuilder<I, O> {
        BatcherBuilder::new(policy)
    }

    fn push(&self, item: I, opts: ItemOptions, wait: Wait) -> Result<BatchHandle<O>, SubmitError> {
        let weight = self.inner.weigher.as_ref().map_or(1, |w| w(&item)).max(1);
        let shared = &self.inner.shared;
        let slot = shared.push(item, weight, opts.deadline, wait)?;
        Ok(BatchHandle::new(slot, shared.abandoned_hint.clone()))
    }

    /// Submits an item. Refuses with `Overloaded` when the queue is full,
    /// unless built [`blocking`](BatcherBuilder::blocking).
    pub fn submit(&self, item: I) -> Result<BatchHandle<O>, SubmitError> {
        self.push(item, ItemOptions::default(), self.inner.wait)
    }

    /// Like [`submit`](Self::submit), with options (a deadline).
    pub fn submit_with(&self, item: I, opts: ItemOptions) -> Result<BatchHandle<O>, SubmitError> {
        self.push(item, opts, self.inner.wait)
    }

    /// Submits without ever blocking.
    pub fn try_submit(&self, item: I) -> Result<BatchHandle<O>, SubmitError> {
        self.push(item, ItemOptions::default(), Wait::No)
    }

    /// Like [`try_submit`](Self::try_submit), with options (a deadline).
    pub fn try_submit_with(&self, item: I, opts: ItemOptions) -> Result<BatchHandle<O>, SubmitError> {
        self.push(item, opts, Wait::No)
    }

    /// Submits, blocking at most `timeout` for room in the queue.
    pub fn submit_timeout(&self, item: I, timeout: Duration) -> Result<BatchHandle<O>, SubmitError> {
        self.push(item, ItemOptions::default(), Wait::Block(Some(timeout)))
    }

    /// The policy the batcher runs with.
    pub fn policy(&self) -> BatchPolicy {
        self.inner.shared.policy
    }

    /// The counters and gauges now.
    pub fn stats(&self) -> BatchStats {
        let sh = &self.inner.shared;
        let (submitted, rejected, queued, queued_weight, blocked) = {
            let st = sh.lock_state();
            (st.submitted, st.rejected, st.queue.len(), st.weight, st.blocked)
        };
        let c = &sh.counters;
        let r = |a: &crate::sync::AtomicU64| a.load(Ordering::Relaxed);
        let mut sizes = SizeHistogram::default();
        for (d, s) in sizes.counts.iter_mut().zip(&c.sizes) {
            *d = r(s);
        }
        BatchStats {
            submitted,
            rejected,
            delivered: r(&c.delivered),
            failed: r(&c.failed),
            expired: r(&c.expired),
            abandoned: r(&c.abandoned),
            cancelled: r(&c.cancelled),
            batches: r(&c.batches),
            flushes: FlushCounts {
                full: r(&c.flushes[0]),
                delay: r(&c.flushes[1]),
                deadline: r(&c.flushes[2]),
                shutdown: r(&c.flushes[3]),
            },
            batch_sizes: sizes,
            queued,
            queued_weight,
            blocked,
        }
    }

    /// The weight of the items waiting now (their count, without a
    /// weigher): a cheap gauge for shedding load before work is done for
    /// an item the batcher would refuse.
    pub fn queued_weight(&self) -> usize {
        self.inner.shared.lock_state().weight
    }

    /// Whether the batcher has been shut down.
    pub fn is_closed(&self) -> bool {
        self.inner.shared.lock_state().closing != Closing::Open
    }

    /// Stops admitting items, flushes what is pending, and waits at most
    /// `timeout` for the batch threads to finish. Idempotent.
    pub fn shutdown(&self, timeout: Duration) -> ShutdownReport {
        self.stop(false, timeout)
    }

    /// Stops admitting items and cancels what is pending (each ends
    /// `Cancelled`); calls in progress finish. Waits at most `timeout`.
    pub fn shutdown_now(&self, timeout: Duration) -> ShutdownReport {
        self.stop(true, timeout)
    }

    fn stop(&self, cancel: bool, timeout: Duration) -> ShutdownReport {
        let sh = &self.inner.shared;
        let cancelled = sh.close(cancel);
        let threads_left = if core::on_batch_thread(sh) {
            sh.lock_state().threads
        } else {
            sh.wait_exited(Some(Instant::now() + timeout))
        };
        ShutdownReport {
            cancelled,
            threads_left,
        }
    }
}
