//! The worker loop, the worker-state factory, and the guards around every
//! piece of user code a worker runs.
//!
//! Invariants:
//! - No user code runs on a worker outside a catch: the job (its panic is
//!   its outcome), the drops of its captures and result, its waker, the
//!   clock, the factory, the hooks and the state's drop (each panic is
//!   reported to the panic handler). The counters stay balanced and the
//!   worker keeps serving (`tests/pool_user_code.rs`).
//! - Should a worker unwind all the same, its exit guard releases what it
//!   holds (searching, starting, its place in `workers` and `threads`) and
//!   dispatches a replacement for what waits.
//! - A factory that panics is retried by its own worker with backoff; the
//!   worker leaves if the pool closes or shrinks meanwhile. Queued jobs are
//!   never stranded: they run on a worker whose factory succeeded, or the
//!   last thread out of a closed pool cancels them.
//! - A worker leaves a closed pool only when the queue is empty and no
//!   submitter is inside the gate (see `admission`).

use std::time::{Duration, Instant};

use crate::sync::{fence, lock, thread, wait_until, Arc, MutexGuard, Ordering};

use super::super::handle::{Abort, Ended};
use super::wake::{Parked, Parker, SEARCHING, YIELD_EVERY};
use super::{Deferred, Shared, State, Task};

/// The first wait before a failed factory is tried again; it doubles up to
/// `RETRY_MAX`.
const RETRY_MIN: Duration = Duration::from_millis(10);
const RETRY_MAX: Duration = Duration::from_secs(1);

std::thread_local! {
    /// The pool whose worker this thread is (its `Shared` address), or 0.
    static CURRENT_POOL: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Whether the calling thread is one of this pool's workers.
pub(crate) fn on_worker_of<S>(shared: &Arc<Shared<S>>) -> bool {
    // loom runs its model threads as coroutines on one OS thread, where a
    // std thread-local would be shared; the models never drop a pool from a job.
    if cfg!(loom) {
        return false;
    }
    let me = Arc::as_ptr(shared) as usize;
    CURRENT_POOL.with(|c| c.get() == me)
}

/// Runs user code on a worker outside a job (a hook, the state's drop) so
/// that a panic in it cannot kill the thread; the panic is reported.
fn guarded<S>(shared: &Shared<S>, what: &str, f: impl FnOnce()) {
    if let Err(msg) = crate::panics::catch(f) {
        shared.report_panic(&format!("{what} panicked: {msg}"));
    }
}

/// Runs one task on a worker: the deadline check, the job, the counters.
fn run_task<S: 'static>(shared: &Shared<S>, task: Task<S>, state: &mut S) {
    let ledger = shared.ledger();
    let ended = match task.deadline {
        Some(dl) if shared.now() >= dl => task.job.abort(Abort::Expired, &ledger),
        _ => task.job.run(state, &ledger),
    };
    if let Ended::Panicked(msg) = &ended {
        ledger.report(msg);
    }
}

/// What a worker holds in the pool's books, released by whoever ends it:
/// the worker itself when it leaves, or this guard's `Drop` if it unwinds.
struct Books<'a, S: 'static> {
    shared: &'a Arc<Shared<S>>,
    id: usize,
    /// Counted in `State::starting`.
    starting: bool,
    /// Counted as searching in the `wake` word.
    searching: bool,
    /// Counted in `State::workers`.
    serving: bool,
    /// Counted in `State::threads`.
    thread: bool,
}

impl<S: 'static> Books<'_, S> {
    /// Gives up the worker's place (searching, starting, serving), with the
    /// lock held. In an open pool what waits may need someone else now
    /// (e.g. after a shrink); in a closed one, jobs left behind go to the
    /// remaining workers, or are cancelled by the last thread out (a
    /// replacement would only fail the same way: a worker leaves a closed
    /// pool with jobs queued only when its factory failed).
    fn leave(&mut self, st: &mut State, d: &mut Deferred<S>) {
        let shared = self.shared;
        if std::mem::take(&mut self.searching) {
            shared.wake.fetch_sub(SEARCHING, Ordering::SeqCst);
        }
        if std::mem::take(&mut self.starting) {
            st.starting -= 1;
        }
        if std::mem::take(&mut self.serving) {
            st.workers -= 1;
        }
        shared.publish(st);
        if !st.closed {
            shared.dispatch(st, d);
        }
    }

    /// The thread is going: the exit hook, then the shutdown barrier.
    fn finish_thread(&mut self) {
        if !std::mem::take(&mut self.thread) {
            return;
        }
        let shared = self.shared;
        if let Some(h) = &shared.config.on_exit {
            let id = self.id;
            guarded(shared, "on_thread_exit hook", || h(id));
        }
        let mut st = lock(&shared.state);
        st.threads -= 1;
        let last = st.threads == 0;
        // Every worker has gone while jobs wait in a closed pool (threads
        // could not be started, or no factory succeeded): they will never run.
        let cancel = if last && st.closed {
            shared.take_queued()
        } else {
            Vec::new()
        };
        drop(st);
        shared.cancel(cancel);
        if last {
            shared.exited.notify_all();
        }
    }
}

impl<S: 'static> Drop for Books<'_, S> {
    fn drop(&mut self) {
        // Only on an unexpected unwind: a worker that leaves normally has
        // released everything.
        if self.starting || self.searching || self.serving {
            let mut d = Deferred::new();
            let mut st = lock(&self.shared.state);
            self.leave(&mut st, &mut d);
            drop(st);
            Shared::apply(self.shared, d);
        }
        self.finish_thread();
    }
}

/// Builds the worker's state. A factory that panics is reported and tried
/// again after a backoff. If the pool closed or shrank meanwhile, the
/// worker gives up: `Err` holds the lock under which it saw that, so that
/// it leaves before anyone else decides on the same count.
fn build_state<'a, S: 'static>(books: &mut Books<'a, S>) -> Result<S, MutexGuard<'a, State>> {
    let shared = books.shared;
    let mut backoff = RETRY_MIN;
    loop {
        let factory = &shared.config.factory;
        let failure = match crate::panics::catch(|| factory()) {
            Ok(state) => {
                let mut st = lock(&shared.state);
                if std::mem::take(&mut books.starting) {
                    st.starting -= 1;
                }
                shared.wake.fetch_add(SEARCHING, Ordering::SeqCst);
                books.searching = true;
                return Ok(state);
            }
            Err(msg) => msg,
        };
        shared.report_panic(&format!("worker state factory panicked: {failure}"));
        let mut st = lock(&shared.state);
        if !st.closed && std::mem::take(&mut books.starting) {
            // The jobs this worker was to take may go to another one.
            st.starting -= 1;
            let mut d = Deferred::new();
            shared.dispatch(&mut st, &mut d);
            drop(st);
            Shared::apply(shared, d);
            st = lock(&shared.state);
        }
        let until = Instant::now() + backoff;
        loop {
            if st.closed || st.workers > st.capacity {
                return Err(st);
            }
            let (g, passed) = wait_until(&shared.retry_cv, st, Some(until));
            st = g;
            if passed {
                break;
            }
        }
        backoff = (backoff * 2).min(RETRY_MAX);
    }
}

pub(super) fn worker_main<S: 'static>(shared: Arc<Shared<S>>, id: usize) {
    if !cfg!(loom) {
        CURRENT_POOL.with(|c| c.set(Arc::as_ptr(&shared) as usize));
    }
    // Spawned counted as serving, starting, and as a thread (`enlist`).
    let mut books = Books {
        shared: &shared,
        id,
        starting: true,
        searching: false,
        serving: true,
        thread: true,
    };
    if let Some(h) = &shared.config.on_start {
        guarded(&shared, "on_thread_start hook", || h(id));
    }
    let mut state = match build_state(&mut books) {
        Ok(state) => state,
        Err(mut st) => {
            let mut d = Deferred::new();
            books.leave(&mut st, &mut d);
            drop(st);
            Shared::apply(&shared, d);
            books.finish_thread();
            return;
        }
    };
    let parker = Arc::new(Parker::new());
    let mut spun = false;
    let mut st: MutexGuard<'_, State> = loop {
        if let Some(task) = shared.queue.pop() {
            if std::mem::take(&mut books.searching) {
                Shared::stop_searching(&shared);
            }
            run_task(&shared, task, &mut state);
            // The outcome is counted; now look for blocked submitters (see
            // `admission`).
            fence(Ordering::SeqCst);
            if shared.has_blocked.load(Ordering::Relaxed) {
                shared.notify_blocked();
            }
            spun = false;
            if shared.shrinking.load(Ordering::Relaxed) {
                let st = lock(&shared.state);
                if st.workers > st.capacity {
                    break st;
                }
            }
            continue;
        }
        if shared.closing.load(Ordering::SeqCst) {
            if shared.in_gate() > 0 {
                // A submitter admitted before the close is still pushing.
                thread::yield_now();
                continue;
            }
            let st = lock(&shared.state);
            if st.closed && shared.queue.is_empty() {
                break st;
            }
            continue;
        }
        if !spun && shared.config.spin > 0 && (books.searching || shared.try_search()) {
            // Stay awake briefly: with short jobs the next one usually
            // arrives within microseconds, and a wake-up costs more.
            books.searching = true;
            spun = true;
            for i in 0..shared.config.spin {
                if !shared.queue.is_empty() {
                    break;
                }
                if i % YIELD_EVERY == YIELD_EVERY - 1 {
                    thread::yield_now();
                } else {
                    std::hint::spin_loop();
                }
            }
            continue;
        }
        spun = false;
        match shared.park(&parker, &mut books.searching) {
            Parked::Again | Parked::Woken => {}
            Parked::Leave(st) => break st,
            Parked::Retired(st) => {
                // Whoever retired us took us off `workers`.
                books.serving = false;
                break st;
            }
        }
    };
    let mut d = Deferred::new();
    books.leave(&mut st, &mut d);
    drop(st);
    Shared::apply(&shared, d);
    guarded(&shared, "worker state drop", move || drop(state));
    books.finish_thread();
}
