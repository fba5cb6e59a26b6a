//! A NATS JetStream broker as the target: `loadgen --target nats://HOST:PORT`
//! is the producer side of `serve --nats`. Each request of the profile
//! becomes a job published to `PREFIX.jobs` (with `Nats-Msg-Id` = its id);
//! two readers follow the results and dead-letter streams from the start of
//! the run, and a request ends when its job's result or dead letter
//! arrives. Two faces make a `verify` job, one an `identify` job, more a
//! `review` (the first face as the reference, the rest as frames; without a
//! reference, against the gallery, for identify requests).
//!
//! Latency runs from the intended send time to the result's arrival. The
//! report adds `jobs` (published), `results` (distinct jobs answered),
//! `lost` (published jobs with neither a result nor a dead letter at the
//! end of the drain), `duplicates` (results beyond the first for a job)
//! and `dead_lettered`. The per-stage histograms come from the results'
//! `timings_ms`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use facepool::metrics::{Metrics, Stage};
use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::backend::{Outcome, Request, Target};
use crate::profile::Profile;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Default)]
struct Seen {
    /// Jobs answered (a result or a dead letter), and how often.
    answered: HashMap<String, u64>,
    results: u64,
    dead: u64,
    duplicates: u64,
}

struct Shared {
    run: String,
    waiting: Mutex<HashMap<String, mpsc::SyncSender<Outcome>>>,
    seen: Mutex<Seen>,
    stages: Metrics,
}

impl Shared {
    /// A result (`dead` false) or a dead letter for `id`.
    fn answer(&self, id: &str, dead: Option<String>, timings: Option<&Value>) {
        if !id.starts_with(&self.run) {
            return; // another run's
        }
        let first = {
            let mut s = lock(&self.seen);
            let n = s.answered.entry(id.to_owned()).or_insert(0);
            *n += 1;
            if *n > 1 {
                s.duplicates += 1;
                false
            } else {
                if dead.is_some() {
                    s.dead += 1;
                } else {
                    s.results += 1;
                }
                true
            }
        };
        if !first {
            return;
        }
        if let Some(t) = timings {
            for (stage, key) in [
                (Stage::PoolWait, "queue"),
                (Stage::Prepare, "prepare"),
                (Stage::BatchWait, "batch_wait"),
                (Stage::Inference, "inference"),
            ] {
                if let Some(ms) = t.get(key).and_then(Value::as_f64) {
                    self.stages
                        .record(stage, Duration::from_secs_f64(ms.max(0.0) / 1e3));
                }
            }
        }
        if let Some(tx) = lock(&self.waiting).remove(id) {
            let _ = tx.send(match dead {
                None => Outcome::Done,
                Some(code) => Outcome::Failed(format!("dead-lettered: {code}")),
            });
        }
    }
}

pub struct NatsTarget {
    rt: tokio::runtime::Runtime,
    js: jetstream::Context,
    subject: String,
    next: AtomicU64,
    bodies: Arc<Vec<String>>,
    shared: Arc<Shared>,
    published: AtomicU64,
    wait: Duration,
}

impl NatsTarget {
    /// Connects, checks the jobs stream exists (`serve --nats` makes it),
    /// and starts following the results and dead letters.
    pub fn connect(
        url: &str,
        prefix: &str,
        bodies: Arc<Vec<String>>,
        profile: &Profile,
    ) -> Result<Self, String> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| format!("tokio: {e}"))?;
        let upper = prefix.to_ascii_uppercase().replace('-', "_");
        let run = format!("lg{:x}", fastrand::u64(..));
        let shared = Arc::new(Shared {
            run: run.clone(),
            waiting: Mutex::new(HashMap::new()),
            seen: Mutex::new(Seen::default()),
            stages: Metrics::new(),
        });
        let js = rt.block_on(async {
            let client = async_nats::ConnectOptions::new()
                .name("facepool-loadgen")
                .connection_timeout(Duration::from_secs(5))
                .max_reconnects(None)
                .connect(facepool::gallery::servers(url))
                .await
                .map_err(|e| format!("cannot connect to NATS at {url}: {e}"))?;
            let js = jetstream::new(client);
            for s in ["JOBS", "RESULTS", "DEAD"] {
                js.get_stream(format!("{upper}_{s}"))
                    .await
                    .map_err(|e| format!("stream {upper}_{s}: {e} (start `serve --nats {url}` first)"))?;
            }
            for (s, dead) in [("RESULTS", false), ("DEAD", true)] {
                let stream = js
                    .get_stream(format!("{upper}_{s}"))
                    .await
                    .map_err(|e| format!("stream {upper}_{s}: {e}"))?;
                follow(stream, dead, shared.clone()).await?;
            }
            Ok::<_, String>(js)
        })?;
        Ok(Self {
            rt,
            js,
            subject: format!("{prefix}.jobs"),
            next: AtomicU64::new(0),
            bodies,
            shared,
            published: AtomicU64::new(0),
            wait: profile.drain()
                + profile.send_window().unwrap_or(Duration::from_secs(60))
                + Duration::from_secs(30),
        })
    }

    fn image(&self, i: usize) -> Value {
        self.bodies
            .get(i)
            .map_or(Value::Null, |b| Value::String(b.clone()))
    }

    fn job(&self, id: &str, req: &Request) -> Value {
        let imgs: Vec<Value> = req.images.iter().map(|&i| self.image(i)).collect();
        match (imgs.as_slice(), req.identify) {
            ([one], _) => json!({"id": id, "kind": "identify", "image": one, "k": 1}),
            ([a, b], false) => json!({"id": id, "kind": "verify", "image1": a, "image2": b}),
            (all, true) => json!({"id": id, "kind": "review", "video": id, "frames": all}),
            ([first, rest @ ..], false) => {
                json!({"id": id, "kind": "review", "video": id, "frames": rest, "reference": first})
            }
            ([], _) => json!({"id": id, "kind": "verify"}),
        }
    }
}

/// Follows a stream from now on (an ordered consumer: it resumes by
/// itself after a reconnect) and hands each message to `shared`.
async fn follow(stream: stream::Stream, dead: bool, shared: Arc<Shared>) -> Result<(), String> {
    let c = stream
        .create_consumer(consumer::pull::OrderedConfig {
            deliver_policy: consumer::DeliverPolicy::New,
            ..Default::default()
        })
        .await
        .map_err(|e| format!("follow {}: {e}", stream.cached_info().config.name))?;
    let mut messages = c.messages().await.map_err(|e| format!("follow: {e}"))?;
    tokio::spawn(async move {
        while let Some(m) = messages.next().await {
            let Ok(m) = m else { continue };
            let Ok(v) = serde_json::from_slice::<Value>(&m.payload) else {
                continue;
            };
            let Some(id) = v.get("id").and_then(Value::as_str) else {
                continue;
            };
            let code = dead.then(|| v["error"]["code"].as_str().unwrap_or("unknown").to_owned());
            shared.answer(id, code, v.get("timings_ms"));
        }
    });
    Ok(())
}

impl Target for NatsTarget {
    fn call(&self, req: &Request) -> Outcome {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let id = format!("{}-{n}", self.shared.run);
        let (tx, rx) = mpsc::sync_channel(1);
        lock(&self.shared.waiting).insert(id.clone(), tx);
        let body = match serde_json::to_vec(&self.job(&id, req)) {
            Ok(b) => b,
            Err(e) => return Outcome::Failed(format!("job: {e}")),
        };
        let published = self.rt.block_on(async {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", id.as_str());
            let ack = self
                .js
                .publish_with_headers(self.subject.clone(), headers, body.into())
                .await
                .map_err(|e| e.to_string())?;
            ack.await.map_err(|e| e.to_string())
        });
        if let Err(e) = published {
            lock(&self.shared.waiting).remove(&id);
            return Outcome::Failed(format!("publish: {e}"));
        }
        self.published.fetch_add(1, Ordering::Relaxed);
        match rx.recv_timeout(self.wait) {
            Ok(o) => o,
            Err(_) => {
                lock(&self.shared.waiting).remove(&id);
                Outcome::Failed("no result".into())
            }
        }
    }

    fn mean_batch(&self) -> Option<f64> {
        None
    }

    fn stages(&self) -> Option<facepool::metrics::Snapshot> {
        Some(self.shared.stages.snapshot())
    }

    fn extra(&self) -> BTreeMap<String, Value> {
        let jobs = self.published.load(Ordering::Relaxed);
        let s = lock(&self.shared.seen);
        let answered: HashSet<&String> = s.answered.keys().collect();
        let lost = jobs.saturating_sub(answered.len() as u64);
        let snap = self.shared.stages.snapshot();
        let stages: serde_json::Map<String, Value> = [
            Stage::PoolWait,
            Stage::Prepare,
            Stage::BatchWait,
            Stage::Inference,
        ]
        .into_iter()
        .map(|st| {
            let x = snap.summary(st);
            (st.name().to_owned(), json!({"p50": x.p50, "p99": x.p99}))
        })
        .collect();
        BTreeMap::from([
            ("stages_ms".to_owned(), Value::Object(stages)),
            ("jobs".to_owned(), json!(jobs)),
            ("results".to_owned(), json!(s.results)),
            ("lost".to_owned(), json!(lost)),
            ("duplicates".to_owned(), json!(s.duplicates)),
            ("dead_lettered".to_owned(), json!(s.dead)),
        ])
    }
}
