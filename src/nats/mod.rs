//! The async mode on NATS JetStream: jobs come from a durable stream, go
//! through the same [`FaceService`](crate::service::FaceService) as the
//! HTTP API, and each job's result is published once to a results stream.
//!
//! - A durable **pull consumer** on the jobs stream, bound by several
//!   processes at once (they share the work). It pulls no more jobs than
//!   it has room for (`max_inflight`), so the broker holds the backlog and the process's
//!   memory stays bounded; each job's faces are then admitted to the pool
//!   and the batcher all or none, waiting for room.
//! - A result goes to `RESULTS.<id>` with `Nats-Msg-Id: <id>`, so the
//!   broker drops the duplicate publish of a redelivered job; the job is
//!   acked only after the result's publish ack. A redelivered job whose
//!   result is already in the results stream is acked without being
//!   computed again.
//! - Long jobs send progress acks (`ack_wait` / 3); a crashed consumer's
//!   unacked jobs are redelivered to another after `ack_wait`.
//! - A job that fails (an image that does not decode, no face, a model
//!   error) is retried with a backoff until its `max_deliver`-th delivery,
//!   then goes to the dead-letter subject `DEAD.<id>` with its error (a
//!   delivery past `max_deliver + 2`, after crashes or stops, goes there at
//!   once); a
//!   message that is not a job at all (bad JSON, bad id), a job past its
//!   deadline or too big for the queue goes there at once. Nothing is
//!   dropped silently.
//! - Stopping: no more pulls, what is in flight finishes and is acked
//!   (bounded by the drain time), then [`Consumer::run`] returns.

mod job;
mod process;

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use futures_util::StreamExt;
use tokio::sync::Semaphore;

pub use self::job::{valid_id, ImageRef, Job, Work, DEAD_LETTER_JOB_BYTES};
use crate::guard::RateLimit;
use crate::server::App;

/// Errors of the async mode at start (after it, errors are per job).
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    /// The broker cannot be reached at the URL.
    #[error("cannot connect to NATS at {url}: {why}")]
    Connect {
        /// The URL given.
        url: String,
        /// Why.
        why: String,
    },
    /// A stream, consumer or bucket cannot be created or bound.
    #[error("JetStream {what}: {why}")]
    Setup {
        /// What was being set up.
        what: String,
        /// Why.
        why: String,
    },
    /// Settings that cannot work.
    #[error("{0}")]
    Config(String),
}

/// The async mode's settings: names, limits and retry rules.
#[derive(Debug, Clone)]
pub struct NatsConfig {
    /// The broker, `nats://HOST:PORT` (several, comma-separated, for a
    /// cluster).
    pub url: String,
    /// The jobs stream (created if absent, work-queue retention).
    pub jobs_stream: String,
    /// The subject jobs are published to.
    pub jobs_subject: String,
    /// The results stream (created if absent).
    pub results_stream: String,
    /// Results go to `<results_prefix>.<job id>`.
    pub results_prefix: String,
    /// The dead-letter stream (created if absent).
    pub dead_stream: String,
    /// Dead letters go to `<dead_prefix>.<job id>`.
    pub dead_prefix: String,
    /// The durable consumer's name (shared by every process).
    pub consumer: String,
    /// The object store bucket of `{"object": KEY}` images.
    pub bucket: String,
    /// How long the broker waits for an ack before redelivering.
    pub ack_wait: Duration,
    /// Deliveries of a failing job before it is dead-lettered.
    pub max_deliver: i64,
    /// Jobs this process holds at once (pulled and not yet acked). 0:
    /// half the service's queue.
    pub max_inflight: usize,
    /// Faces per second sent to the model at most (a token bucket).
    pub rate_limit: Option<f64>,
    /// Most jobs the jobs stream keeps (the backlog bound), and most bytes.
    pub max_jobs: i64,
    /// Most bytes the jobs stream keeps.
    pub max_bytes: i64,
    /// Replicas of each stream (1; 3 on a 3-node cluster).
    pub replicas: usize,
    /// How long the broker remembers a result's id to drop duplicates.
    pub duplicate_window: Duration,
    /// At stop, how long jobs in flight may take to finish.
    pub drain: Duration,
    /// This process's name in results (which consumer did the work).
    pub name: String,
}

impl NatsConfig {
    /// The defaults for a broker at `url`: streams `FACEPOOL_JOBS`,
    /// `FACEPOOL_RESULTS`, `FACEPOOL_DEAD` on `facepool.jobs`,
    /// `facepool.results.*`, `facepool.dead.*`; consumer `facepool`;
    /// `ack_wait` 30 s; `max_deliver` 3; a million jobs or 1 GiB of
    /// backlog; 10 minutes of duplicate detection.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            jobs_stream: "FACEPOOL_JOBS".into(),
            jobs_subject: "facepool.jobs".into(),
            results_stream: "FACEPOOL_RESULTS".into(),
            results_prefix: "facepool.results".into(),
            dead_stream: "FACEPOOL_DEAD".into(),
            dead_prefix: "facepool.dead".into(),
            consumer: "facepool".into(),
            bucket: "facepool-images".into(),
            ack_wait: Duration::from_secs(30),
            max_deliver: 3,
            max_inflight: 0,
            rate_limit: None,
            max_jobs: 1_000_000,
            max_bytes: 1 << 30,
            replicas: 1,
            duplicate_window: Duration::from_secs(600),
            drain: Duration::from_secs(30),
            name: format!("facepool-{}", std::process::id()),
        }
    }
}

/// A connected consumer, its streams created and bound.
pub struct Consumer {
    config: NatsConfig,
    app: App,
    js: jetstream::Context,
    consumer: consumer::PullConsumer,
    results: stream::Stream,
    rate: Option<Arc<RateLimit>>,
    inflight: usize,
}

impl Consumer {
    /// Connects (a clear error if the broker cannot be reached), creates
    /// the streams and the durable consumer if absent, and binds it. `app`
    /// must be ready (its service loaded).
    pub async fn connect(config: NatsConfig, app: App) -> Result<Self, NatsError> {
        let Some(svc) = app.service() else {
            return Err(NatsError::Config("the service is not loaded".into()));
        };
        if config.max_deliver < 1 {
            return Err(NatsError::Config("max_deliver must be at least 1".into()));
        }
        let queue = svc.config().queue.max(1);
        let inflight = match config.max_inflight {
            0 => (queue / 2).max(1),
            n => n,
        };
        let rate = match config.rate_limit {
            None => None,
            Some(r) => {
                // A second's worth of faces, and at least a whole queue, so
                // that any admitted job fits in the bucket.
                let burst = (r.ceil() as usize).max(queue).min(u32::MAX as usize) as u32;
                Some(Arc::new(
                    RateLimit::per_second(r, burst)
                        .map_err(|e| NatsError::Config(format!("rate limit: {e}")))?,
                ))
            }
        };
        let client = async_nats::ConnectOptions::new()
            .name(config.name.clone())
            .connection_timeout(Duration::from_secs(5))
            .max_reconnects(None)
            .connect(config.url.as_str())
            .await
            .map_err(|e| NatsError::Connect {
                url: config.url.clone(),
                why: e.to_string(),
            })?;
        let js = jetstream::new(client);
        let setup = |what: &str| {
            let what = what.to_owned();
            move |e: &dyn std::fmt::Display| NatsError::Setup {
                what: what.clone(),
                why: e.to_string(),
            }
        };
        let jobs = js
            .get_or_create_stream(stream::Config {
                name: config.jobs_stream.clone(),
                subjects: vec![config.jobs_subject.clone()],
                retention: stream::RetentionPolicy::WorkQueue,
                // A full backlog refuses new jobs (the producer sees the
                // error) instead of deleting the oldest.
                discard: stream::DiscardPolicy::New,
                storage: stream::StorageType::File,
                max_messages: config.max_jobs,
                max_bytes: config.max_bytes,
                num_replicas: config.replicas,
                ..Default::default()
            })
            .await
            .map_err(|e| setup(&format!("stream {}", config.jobs_stream))(&e))?;
        let results = js
            .get_or_create_stream(stream::Config {
                name: config.results_stream.clone(),
                subjects: vec![format!("{}.*", config.results_prefix)],
                storage: stream::StorageType::File,
                duplicate_window: config.duplicate_window,
                max_messages: config.max_jobs,
                max_bytes: config.max_bytes,
                num_replicas: config.replicas,
                ..Default::default()
            })
            .await
            .map_err(|e| setup(&format!("stream {}", config.results_stream))(&e))?;
        js.get_or_create_stream(stream::Config {
            name: config.dead_stream.clone(),
            subjects: vec![format!("{}.*", config.dead_prefix)],
            storage: stream::StorageType::File,
            duplicate_window: config.duplicate_window,
            num_replicas: config.replicas,
            ..Default::default()
        })
        .await
        .map_err(|e| setup(&format!("stream {}", config.dead_stream))(&e))?;
        // The bucket producers put large images in (`{"object": KEY}`).
        if js.get_object_store(&config.bucket).await.is_err() {
            js.create_object_store(jetstream::object_store::Config {
                bucket: config.bucket.clone(),
                storage: stream::StorageType::File,
                num_replicas: config.replicas,
                ..Default::default()
            })
            .await
            .map_err(|e| setup(&format!("object store {}", config.bucket))(&e))?;
        }
        let consumer = jobs
            .get_or_create_consumer(
                &config.consumer,
                consumer::pull::Config {
                    durable_name: Some(config.consumer.clone()),
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: config.ack_wait,
                    // Deliveries are counted by the consumer code (with
                    // slack for crashes and stops), so a job whose last
                    // delivery was interrupted still ends in the dead
                    // letters instead of staying in the stream.
                    max_deliver: -1,
                    // Shared by every process bound to the consumer: each
                    // holds at most its own `max_inflight` (its permits);
                    // a broker-side cap would cap the whole fleet.
                    max_ack_pending: -1,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| setup(&format!("consumer {}", config.consumer))(&e))?;
        Ok(Self {
            config,
            app,
            js,
            consumer,
            results,
            rate,
            inflight,
        })
    }

    /// Jobs held at once.
    pub fn max_inflight(&self) -> usize {
        self.inflight
    }

    /// Pulls and runs jobs until `stop` resolves, then finishes and acks
    /// what is in flight (at most the drain time) and returns.
    pub async fn run(self, stop: impl std::future::Future<Output = ()>) {
        // The broker's ack_wait rules (an existing consumer keeps its own).
        let mut config = self.config.clone();
        let on_broker = &self.consumer.cached_info().config;
        if on_broker.ack_wait != config.ack_wait && !on_broker.ack_wait.is_zero() {
            tracing::warn!(
                broker = ?on_broker.ack_wait, asked = ?config.ack_wait,
                "nats: the consumer exists with another ack_wait; using the broker's"
            );
            config.ack_wait = on_broker.ack_wait;
        }
        let me = Arc::new(process::Worker {
            config,
            app: self.app.clone(),
            js: self.js.clone(),
            results: self.results.clone(),
            rate: self.rate.clone(),
            bucket: tokio::sync::OnceCell::new(),
        });
        let permits = Arc::new(Semaphore::new(self.inflight));
        let mut tasks = tokio::task::JoinSet::new();
        let mut failures = 0u32;
        let expires = Duration::from_secs(1);
        tokio::pin!(stop);
        'pull: loop {
            // Room first: never pull more than can be held.
            let room = tokio::select! {
                _ = &mut stop => break 'pull,
                p = permits.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break 'pull,
                },
            };
            let free = permits.available_permits() + 1;
            let started = tokio::time::Instant::now();
            let batch = tokio::select! {
                _ = &mut stop => break 'pull,
                b = self.consumer.fetch().max_messages(free).expires(expires).messages() => b,
            };
            let mut batch = match batch {
                Ok(b) => {
                    failures = 0;
                    b
                }
                Err(e) => {
                    // The broker is away: it reconnects by itself; pull
                    // again after a backoff.
                    failures = failures.saturating_add(1);
                    tracing::warn!(error = %e, "nats: cannot pull jobs");
                    drop(room);
                    let wait = Duration::from_millis(100 * u64::from(failures.min(20)));
                    tokio::select! {
                        _ = &mut stop => break 'pull,
                        _ = tokio::time::sleep(wait) => continue 'pull,
                    }
                }
            };
            // Every message of the batch gets a task (the batch ends by
            // itself within `expires`), even when stopping: a message
            // pulled is never left to its ack_wait.
            let mut room = Some(room);
            let mut got = 0usize;
            while let Some(msg) = batch.next().await {
                let msg = match msg {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::debug!(error = %e, "nats: pull");
                        continue;
                    }
                };
                got += 1;
                // The first message uses the permit already held; the
                // others were counted as free when pulled.
                let permit = match room.take() {
                    Some(p) => p,
                    None => match permits.clone().acquire_owned().await {
                        Ok(p) => p,
                        Err(_) => break,
                    },
                };
                let me = me.clone();
                tasks.spawn(async move {
                    me.handle(msg).await;
                    drop(permit);
                });
                // Reap the finished ones as we go.
                while tasks.try_join_next().is_some() {}
            }
            drop(room);
            // An empty batch that ended early (the broker answers at once
            // when other pulls are waiting): back off instead of spinning.
            if got == 0 && started.elapsed() < expires / 2 {
                tokio::select! {
                    _ = &mut stop => break 'pull,
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
            }
        }
        // Drain: every task done means every job held was answered.
        let drained = tokio::time::timeout(self.config.drain, async {
            while let Some(r) = tasks.join_next().await {
                if let Err(e) = r {
                    tracing::error!(error = %e, "nats: a job task failed");
                }
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                left = tasks.len(),
                "nats: drain timeout; the jobs left are redelivered after ack_wait"
            );
            tasks.abort_all();
        }
    }
}
