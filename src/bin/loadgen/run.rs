//! Drives one mode with the profile's arrivals and records every request.
//!
//! Open loop: a scheduler sends each request at its intended time, whatever
//! became of the earlier ones, and a request's latency runs from that
//! intended time (not from when it was actually handed over), so a stalled
//! service cannot hide its queueing (coordinated omission). Closed loop:
//! each client sends its next request when the last one is answered.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::backend::{Outcome, Request, Target};
use crate::profile::{ArrivalModel, Mode, Profile};

/// One request's record.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Intended send time, from the start of the mode.
    pub sent: Duration,
    /// From the intended send time to the answer or refusal.
    pub latency: Duration,
    /// Faces in the request.
    pub faces: u32,
    pub kind: Kind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Done,
    Rejected,
    Failed,
}

/// What one mode's run recorded.
pub struct ModeRun {
    /// The name in the report: the mode's, or an HTTP target's label.
    pub label: String,
    /// Every request sent, answered or not, in completion order.
    pub samples: Vec<Sample>,
    /// Requests sent (scheduled, for an open loop).
    pub sent: u64,
    /// From the first send to the end of sending.
    pub send_time: Duration,
    /// From the first send to the last answer.
    pub total_time: Duration,
    /// Requests not answered by the end of the drain.
    pub unanswered: u64,
    /// The first few failure messages, with their counts.
    pub failures: Vec<(String, u64)>,
    pub rss_start_mb: f64,
    pub peak_rss_mb: f64,
    pub mean_batch: Option<f64>,
    pub stages: Option<facepool::metrics::Snapshot>,
    pub extra: std::collections::BTreeMap<String, serde_json::Value>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Distinct failure messages kept.
const MAX_FAILURE_KINDS: usize = 8;

/// Where requests report, and how many are still out.
struct Recorder {
    start: Instant,
    samples: Mutex<Vec<Sample>>,
    failures: Mutex<Vec<(String, u64)>>,
    out: Mutex<u64>,
    idle: Condvar,
    done: AtomicU64,
    rejected: AtomicU64,
    failed: AtomicU64,
}

impl Recorder {
    fn new(start: Instant) -> Self {
        Self {
            start,
            samples: Mutex::new(Vec::new()),
            failures: Mutex::new(Vec::new()),
            out: Mutex::new(0),
            idle: Condvar::new(),
            done: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        }
    }

    fn begin(&self) {
        *lock(&self.out) += 1;
    }

    /// Records a request sent at `due` that ended now.
    fn end(&self, due: Instant, faces: usize, outcome: Outcome) {
        let now = Instant::now();
        let kind = match outcome {
            Outcome::Done => {
                self.done.fetch_add(1, Ordering::Relaxed);
                Kind::Done
            }
            Outcome::Rejected(_) => {
                self.rejected.fetch_add(1, Ordering::Relaxed);
                Kind::Rejected
            }
            Outcome::Failed(why) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                let mut f = lock(&self.failures);
                if let Some(slot) = f.iter_mut().find(|(w, _)| *w == why) {
                    slot.1 += 1;
                } else if f.len() < MAX_FAILURE_KINDS {
                    f.push((why, 1));
                }
                Kind::Failed
            }
        };
        lock(&self.samples).push(Sample {
            sent: due.saturating_duration_since(self.start),
            latency: now.saturating_duration_since(due),
            faces: faces as u32,
            kind,
        });
        let mut out = lock(&self.out);
        *out = out.saturating_sub(1);
        if *out == 0 {
            self.idle.notify_all();
        }
    }

    /// Waits until no request is out, or `deadline`; returns those still out.
    fn drain(&self, deadline: Instant) -> u64 {
        let mut out = lock(&self.out);
        while *out > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            out = self
                .idle
                .wait_timeout(out, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        *out
    }
}

/// The resident set size of this process, in MiB.
pub fn rss_mb() -> f64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|v| v.parse::<f64>().ok()))
        .unwrap_or(0.0);
    pages * 4096.0 / (1024.0 * 1024.0)
}

/// Makes the requests of a run, reproducibly.
struct Shapes {
    rng: Mutex<fastrand::Rng>,
    faces: (usize, usize),
    identify: f64,
    photos: usize,
}

impl Shapes {
    fn next(&self) -> Request {
        let mut rng = lock(&self.rng);
        let n = rng.usize(self.faces.0..=self.faces.1);
        Request {
            images: (0..n).map(|_| rng.usize(0..self.photos.max(1))).collect(),
            identify: rng.f64() < self.identify,
        }
    }
}

/// Runs `mode` against `target` as `profile` says. `photos` is the size of
/// the image set requests draw from.
/// `label` names the run in the report; the memory sampled is this
/// process's, or `rss_pid`'s and its descendants' (a service under test).
pub fn run_mode(
    profile: &Profile,
    (mode, label): (Mode, String),
    target: Arc<dyn Target>,
    photos: usize,
    (show, rss_pid): (bool, Option<u32>),
) -> ModeRun {
    let rss_mb = move || rss_pid.map_or_else(rss_mb, crate::http::rss_tree_mb);
    let shapes = Shapes {
        rng: Mutex::new(fastrand::Rng::with_seed(0x5eed)),
        faces: profile.request.faces.bounds(),
        identify: profile.request.identify,
        photos,
    };
    let rss_start_mb = rss_mb();
    let peak = Arc::new(Mutex::new(rss_start_mb));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, stop) = (peak.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let now = rss_mb();
                let mut p = lock(&peak);
                *p = p.max(now);
                drop(p);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let start = Instant::now();
    let rec = Arc::new(Recorder::new(start));
    let sent = Arc::new(AtomicU64::new(0));
    let bar = progress(profile, &label, show);
    let ticker = {
        let (rec, sent, stop, bar) = (rec.clone(), sent.clone(), stop.clone(), bar.clone());
        let window = profile.send_window();
        let cap = profile.stop.requests;
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let pos = match window {
                    Some(_) => start.elapsed().as_millis() as u64,
                    None => sent.load(Ordering::Relaxed).min(cap.unwrap_or(u64::MAX)),
                };
                bar.set_position(pos);
                bar.set_message(format!(
                    "sent {} done {} refused {} failed {}",
                    sent.load(Ordering::Relaxed),
                    rec.done.load(Ordering::Relaxed),
                    rec.rejected.load(Ordering::Relaxed),
                    rec.failed.load(Ordering::Relaxed)
                ));
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let driver = Arc::new(Driver {
        mode,
        target: target.clone(),
        rec: rec.clone(),
        live: Arc::new(AtomicUsize::new(0)),
        limit: profile.runtime.direct_threads,
    });
    let send_time = match profile.arrival.model {
        ArrivalModel::Closed => closed_loop(profile, &driver, &shapes, &sent),
        _ => open_loop(profile, &driver, &shapes, &sent),
    };
    let unanswered = rec.drain(Instant::now() + profile.drain());
    let total_time = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    let _ = ticker.join();
    let _ = sampler.join();
    bar.finish_and_clear();
    let mean_batch = target.mean_batch();
    let stages = target.stages();
    let extra = target.extra();
    if unanswered == 0 {
        target.shutdown();
    }
    let peak_rss_mb = *lock(&peak);
    let samples = std::mem::take(&mut *lock(&rec.samples));
    let failures = std::mem::take(&mut *lock(&rec.failures));
    ModeRun {
        label,
        samples,
        sent: sent.load(Ordering::Relaxed),
        send_time,
        total_time,
        unanswered,
        failures,
        rss_start_mb,
        peak_rss_mb,
        mean_batch,
        stages,
        extra,
    }
}

fn progress(profile: &Profile, label: &str, show: bool) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let (len, unit) = match (profile.send_window(), profile.stop.requests) {
        (Some(w), _) => (w.as_millis() as u64, "{elapsed_precise}"),
        (None, Some(n)) => (n, "{pos}/{len}"),
        (None, None) => (0, ""),
    };
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    let template = format!("{label:<10} [{{bar:30}}] {unit} {{msg}}");
    if let Ok(style) = ProgressStyle::with_template(&template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// What serves a mode's requests: the target, the recorder, and (for
/// `direct`) the count of live request threads.
struct Driver {
    mode: Mode,
    target: Arc<dyn Target>,
    rec: Arc<Recorder>,
    live: Arc<AtomicUsize>,
    limit: usize,
}

impl Driver {
    /// Serves one request as the mode does, from the current thread, and
    /// records its end (the sender records its start): `direct` runs it on
    /// a new thread of its own (the naive thread-per-request service),
    /// failing past the thread limit; `wait` waits for that thread.
    /// Serves `req`; returns the wait a refusal asked for (not for a
    /// request on a thread of its own).
    fn serve(self: &Arc<Self>, req: Request, due: Instant, wait: bool) -> Option<Duration> {
        let faces = req.images.len();
        if self.mode != Mode::Direct {
            let o = self.target.call(&req);
            let retry = match o {
                Outcome::Rejected(after) => after,
                _ => None,
            };
            self.rec.end(due, faces, o);
            return retry;
        }
        let limit = self.limit;
        if self.live.fetch_add(1, Ordering::AcqRel) >= limit {
            self.live.fetch_sub(1, Ordering::AcqRel);
            let why = format!("over {limit} request threads");
            self.rec.end(due, faces, Outcome::Failed(why));
            return None;
        }
        let me = self.clone();
        let spawned = std::thread::Builder::new()
            .name("loadgen-direct".into())
            .spawn(move || {
                let o = me.target.call(&req);
                me.rec.end(due, faces, o);
                me.live.fetch_sub(1, Ordering::AcqRel);
            });
        match spawned {
            Ok(h) if wait => {
                let _ = h.join();
            }
            Ok(_) => {}
            Err(e) => {
                self.live.fetch_sub(1, Ordering::AcqRel);
                let why = format!("cannot start a thread: {e}");
                self.rec.end(due, faces, Outcome::Failed(why));
            }
        }
        None
    }
}

fn closed_loop(profile: &Profile, d: &Arc<Driver>, shapes: &Shapes, sent: &AtomicU64) -> Duration {
    let start = d.rec.start;
    let window = profile.send_window().unwrap_or(Duration::MAX);
    let cap = profile.stop.requests.unwrap_or(u64::MAX);
    let honour = profile.arrival.honour_retry_after;
    std::thread::scope(|s| {
        for c in 0..profile.arrival.clients.unwrap_or(1) {
            let builder = std::thread::Builder::new().name(format!("loadgen-client-{c}"));
            let spawned = builder.spawn_scoped(s, move || loop {
                if start.elapsed() >= window || sent.fetch_add(1, Ordering::Relaxed) >= cap {
                    break;
                }
                d.rec.begin();
                let retry = d.serve(shapes.next(), Instant::now(), true);
                // A client that honours Retry-After waits as it asks
                // (within what is left of the run).
                if let Some(after) = retry.filter(|_| honour) {
                    std::thread::sleep(after.min(window.saturating_sub(start.elapsed())));
                }
            });
            if spawned.is_err() {
                break;
            }
        }
    });
    // Counted one past the cap by each client that stopped on it.
    sent.fetch_min(cap, Ordering::Relaxed);
    start.elapsed().min(window)
}

fn open_loop(profile: &Profile, d: &Arc<Driver>, shapes: &Shapes, sent: &AtomicU64) -> Duration {
    let (start, rec) = (d.rec.start, &d.rec);
    let window = profile.send_window().map(|w| w.as_secs_f64());
    let cap = profile.stop.requests.unwrap_or(u64::MAX);
    let poisson = profile.arrival.model == ArrivalModel::Poisson;
    let mut rng = fastrand::Rng::with_seed(0xa11);
    // The callers: facepool's own pool, one request per job, an idle caller
    // woken per request (for direct, each request gets a thread of its own
    // instead). Its queue is far deeper than an open loop ever gets ahead.
    let callers = match d.mode {
        Mode::Direct => None,
        _ => facepool::pool::Pool::builder()
            .capacity(profile.runtime.callers.max(1))
            .queue_capacity(1 << 20)
            .thread_name("loadgen-caller")
            .build()
            .ok(),
    };
    let mut t = 0.0f64;
    let mut n = 0u64;
    loop {
        if window.is_some_and(|w| t >= w) || n >= cap {
            break;
        }
        let rate = profile.rate_at(t);
        if rate <= 0.0 {
            break;
        }
        let due = start + Duration::from_secs_f64(t);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        let req = shapes.next();
        n += 1;
        sent.store(n, Ordering::Relaxed);
        rec.begin();
        match &callers {
            _ if d.mode == Mode::Direct => {
                d.serve(req, due, false);
            }
            Some(pool) => {
                let (dd, faces) = (d.clone(), req.images.len());
                if let Err(e) = pool.execute(move |_| {
                    dd.serve(req, due, true);
                }) {
                    rec.end(due, faces, Outcome::Failed(format!("no caller: {e}")));
                }
            }
            None => rec.end(
                due,
                req.images.len(),
                Outcome::Failed("no caller could start".into()),
            ),
        }
        let gap = if poisson {
            -(1.0 - rng.f64()).ln() / rate
        } else {
            1.0 / rate
        };
        t += gap;
    }
    let send_time = start.elapsed();
    // The callers finish what is queued, then exit; `run_mode` waits for
    // the answers (the drain), not for them.
    // (Without a thread for that, the pool is dropped with the refused
    // closure: here, waiting for the callers.)
    if let Some(pool) = callers {
        let dropper = std::thread::Builder::new().name("loadgen-callers-drop".into());
        let _ = dropper.spawn(move || drop(pool));
    }
    send_time
}
