//! The synthetic downstream and its targets: a call that sleeps as a
//! batch-friendly model would, called directly, from the pool, or through
//! the pool and the batcher.

use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use facepool::batch::{self, BatchHandle, BatchPolicy, Batcher};
use facepool::pool::{self, Pool};
use facepool::service::{budget, Pins};

use crate::backend::{Outcome, Request, Target};
use crate::profile::{Mode, Profile, Synthetic};

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The synthetic downstream: a call sleeps `call + item × n`, at most
/// `concurrency` calls at once (the others wait their turn).
pub struct Downstream {
    free: Mutex<usize>,
    turn: Condvar,
    call: Duration,
    item: Duration,
    calls: Mutex<(u64, u64)>,
}

impl Downstream {
    pub fn new(s: &Synthetic) -> Self {
        Self {
            free: Mutex::new(s.concurrency.max(1)),
            turn: Condvar::new(),
            call: Duration::from_secs_f64(s.call_ms / 1e3),
            item: Duration::from_secs_f64(s.item_ms / 1e3),
            calls: Mutex::new((0, 0)),
        }
    }

    /// One call with `n` items.
    pub fn call(&self, n: usize) {
        let mut free = lock(&self.free);
        while *free == 0 {
            free = self.turn.wait(free).unwrap_or_else(PoisonError::into_inner);
        }
        *free -= 1;
        drop(free);
        std::thread::sleep(self.call + self.item * n as u32);
        {
            let mut c = lock(&self.calls);
            c.0 += 1;
            c.1 += n as u64;
        }
        *lock(&self.free) += 1;
        self.turn.notify_one();
    }

    fn mean_items(&self) -> Option<f64> {
        let (calls, items) = *lock(&self.calls);
        (calls > 0).then(|| items as f64 / calls as f64)
    }
}

/// Busy CPU work standing in for decoding and alignment.
fn spin(d: Duration) {
    if d.is_zero() {
        return;
    }
    let until = Instant::now() + d;
    let mut x = 0u64;
    while Instant::now() < until {
        for i in 0..1000u64 {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(i));
        }
    }
}

/// The pool's workers: the profile's, else the core budget's (the cores).
pub(crate) fn workers(profile: &Profile) -> usize {
    profile
        .runtime
        .workers
        .unwrap_or(budget::split(budget::cores(), Pins::default()).workers)
}

/// The pool mode's queue, in requests: `runtime.queue` is in faces (the
/// admission unit), so the pool takes as many mean-sized requests.
pub(crate) fn request_queue(profile: &Profile) -> usize {
    let mean = profile.request.faces.mean().ceil().max(1.0) as usize;
    (profile.runtime.queue / mean).max(1)
}

/// The synthetic downstream's batching: up to 256 items, 20 ms.
fn batch_policy(profile: &Profile) -> BatchPolicy {
    BatchPolicy {
        max_items: profile.runtime.batch_max.unwrap_or(256),
        max_weight: None,
        max_delay: Duration::from_secs_f64(profile.runtime.batch_delay_ms.unwrap_or(20.0) / 1e3),
        in_flight: 1,
    }
}

/// Builds the synthetic target of a mode.
pub fn synthetic(profile: &Profile, mode: Mode) -> Result<Arc<dyn Target>, String> {
    let ds = Arc::new(Downstream::new(&profile.synthetic));
    let prepare = Duration::from_secs_f64(profile.synthetic.prepare_ms / 1e3);
    let pool = |queue: usize| {
        Pool::builder()
            .capacity(workers(profile))
            .queue_capacity(queue)
            .nonblocking(true)
            .thread_name("loadgen-pool")
            .build()
            .map_err(|e| format!("pool: {e}"))
    };
    Ok(match mode {
        Mode::Direct => Arc::new(SynthDirect { ds, prepare }),
        Mode::Pool => Arc::new(SynthPool {
            ds,
            prepare,
            pool: pool(request_queue(profile))?,
        }),
        Mode::Http => return Err("an HTTP target is not built here".into()),
        Mode::PoolBatch => {
            let handler_ds = ds.clone();
            let batcher = Batcher::builder(batch_policy(profile))
                .queue_capacity(profile.runtime.queue)
                .thread_name("loadgen-batch")
                .build(move |_| {
                    let ds = handler_ds.clone();
                    Ok::<_, String>(move |items: Vec<()>| {
                        ds.call(items.len());
                        Ok::<_, std::convert::Infallible>(items)
                    })
                })
                .map_err(|e| format!("batcher: {e}"))?;
            Arc::new(SynthBatch {
                prepare,
                pool: pool(profile.runtime.queue)?,
                batcher: Arc::new(batcher),
            })
        }
    })
}

struct SynthDirect {
    ds: Arc<Downstream>,
    prepare: Duration,
}

impl Target for SynthDirect {
    fn call(&self, req: &Request) -> Outcome {
        spin(self.prepare * req.images.len() as u32);
        self.ds.call(req.images.len());
        Outcome::Done
    }
    fn mean_batch(&self) -> Option<f64> {
        self.ds.mean_items()
    }
}

struct SynthPool {
    ds: Arc<Downstream>,
    prepare: Duration,
    pool: Pool,
}

pub(crate) fn job_outcome<T>(r: Result<pool::JobHandle<T>, pool::SubmitError>) -> Result<T, Outcome> {
    match r {
        Ok(h) => h.join().map_err(|e| Outcome::Failed(format!("pool job: {e}"))),
        Err(pool::SubmitError::Overloaded) => Err(Outcome::Rejected(None)),
        Err(e) => Err(Outcome::Failed(format!("pool: {e}"))),
    }
}

impl Target for SynthPool {
    fn call(&self, req: &Request) -> Outcome {
        let (ds, n, prepare) = (self.ds.clone(), req.images.len(), self.prepare);
        match job_outcome(self.pool.try_submit(move |_: &mut ()| {
            spin(prepare * n as u32);
            ds.call(n);
        })) {
            Ok(()) => Outcome::Done,
            Err(o) => o,
        }
    }
    fn mean_batch(&self) -> Option<f64> {
        self.ds.mean_items()
    }
    fn shutdown(&self) {
        self.pool.shutdown(Duration::from_secs(60));
    }
}

struct SynthBatch {
    prepare: Duration,
    pool: Pool,
    batcher: Arc<Batcher<(), ()>>,
}

impl Target for SynthBatch {
    fn call(&self, req: &Request) -> Outcome {
        let (batcher, n, prepare) = (self.batcher.clone(), req.images.len(), self.prepare);
        // The pool job prepares the faces and hands them to the batcher; it
        // never waits for the batch (the caller does).
        let handles = job_outcome(self.pool.try_submit(move |_: &mut ()| {
            spin(prepare * n as u32);
            (0..n)
                .map(|_| batcher.try_submit(()))
                .collect::<Result<Vec<BatchHandle<()>>, _>>()
        }));
        let handles = match handles {
            Ok(Ok(h)) => h,
            Ok(Err(batch::SubmitError::Overloaded)) => return Outcome::Rejected(None),
            Ok(Err(e)) => return Outcome::Failed(format!("batcher: {e}")),
            Err(o) => return o,
        };
        for h in handles {
            if let Err(e) = h.join() {
                return Outcome::Failed(format!("batch: {e}"));
            }
        }
        Outcome::Done
    }
    fn mean_batch(&self) -> Option<f64> {
        let s = self.batcher.stats();
        (s.batches > 0).then(|| s.mean_batch())
    }
    fn shutdown(&self) {
        self.pool.shutdown(Duration::from_secs(60));
        self.batcher.shutdown(Duration::from_secs(60));
    }
}
