//! The pull loop: jobs are pulled only while this process may hold more
//! (`max_inflight`: the broker keeps the backlog), each in a task of its
//! own that the service admits fairly; at stop, no more pulls and the
//! tasks drain.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use futures_util::StreamExt;
use tokio::sync::Semaphore;

use super::{delivery, NatsConfig, NatsError};
use crate::guard::RateLimit;
use crate::service::FaceService;

/// A connected consumer, its streams created and bound.
pub struct Consumer {
    config: NatsConfig,
    service: FaceService,
    js: jetstream::Context,
    consumer: consumer::PullConsumer,
    results: stream::Stream,
    dead_letters: stream::Stream,
    clock_stream: stream::Stream,
    clock: Arc<super::clock::Clock>,
    max_payload: usize,
    rate: Option<Arc<RateLimit>>,
    inflight: usize,
}

impl Consumer {
    /// Connects (a clear error if the broker cannot be reached), creates
    /// the streams and the durable consumer if absent, and binds it; jobs
    /// go to `service`.
    pub async fn connect(config: NatsConfig, service: FaceService) -> Result<Self, NatsError> {
        let svc = &service;
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
            .connect(crate::gallery::servers(&config.url))
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
        let jobs = ensure_stream(
            &js,
            stream::Config {
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
            },
        )
        .await?;
        let results = ensure_stream(
            &js,
            stream::Config {
                name: config.results_stream.clone(),
                subjects: vec![format!("{}.*", config.results_prefix)],
                storage: stream::StorageType::File,
                duplicate_window: config.duplicate_window,
                max_messages: config.max_jobs,
                max_bytes: config.max_bytes,
                num_replicas: config.replicas,
                ..Default::default()
            },
        )
        .await?;
        // Bounded: a flood of junk cannot fill the broker's disk; the
        // oldest dead letters go first.
        let dead_letters = ensure_stream(
            &js,
            stream::Config {
                name: config.dead_stream.clone(),
                subjects: vec![format!("{}.*", config.dead_prefix)],
                storage: stream::StorageType::File,
                duplicate_window: config.duplicate_window,
                num_replicas: config.replicas,
                max_age: config.dead_max_age,
                max_bytes: config.dead_max_bytes,
                discard: stream::DiscardPolicy::Old,
                ..Default::default()
            },
        )
        .await?;
        // The clock probe: one message, in memory.
        let clock_stream = ensure_stream(
            &js,
            stream::Config {
                name: config.clock_stream.clone(),
                subjects: vec![config.clock_subject.clone()],
                storage: stream::StorageType::Memory,
                max_messages: 16,
                discard: stream::DiscardPolicy::Old,
                num_replicas: config.replicas,
                ..Default::default()
            },
        )
        .await?;
        let clock = Arc::new(super::clock::Clock::default());
        clock
            .measure(&js, &clock_stream, &config.clock_subject)
            .await
            .map_err(|e| setup("the clock probe")(&e))?;
        tracing::info!(
            offset_ms = clock.offset().whole_milliseconds(),
            "nats: this clock against the broker's"
        );
        let max_payload = js.client().server_info().max_payload;
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
            service,
            js,
            consumer,
            results,
            dead_letters,
            clock_stream,
            clock,
            max_payload,
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
        let me = Arc::new(delivery::Worker {
            config,
            service: self.service.clone(),
            js: self.js.clone(),
            results: self.results.clone(),
            dead_letters: self.dead_letters.clone(),
            max_payload: self.max_payload,
            clock: self.clock.clone(),
            rate: self.rate.clone(),
            bucket: tokio::sync::OnceCell::new(),
        });
        // The clock is measured again every few minutes (clocks drift).
        let remeasure = {
            let (js, probe, clock) = (self.js.clone(), self.clock_stream.clone(), self.clock.clone());
            let subject = self.config.clock_subject.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(300));
                tick.tick().await;
                loop {
                    tick.tick().await;
                    if let Err(e) = clock.measure(&js, &probe, &subject).await {
                        tracing::warn!(error = %e, "nats: cannot measure the clock; keeping the last offset");
                    }
                }
            })
        };
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
            // Then room in the service: jobs are pulled against the same
            // admission limit as every other request (the broker keeps the
            // backlog), a verify's worth at a time beyond the first.
            let admission = self.service.admission().clone();
            tokio::select! {
                _ = &mut stop => break 'pull,
                _ = admission.room(1) => {}
            }
            let a = admission.stats();
            let room_jobs = a.limit.faces.saturating_sub(a.in_use.faces) / 2;
            let free = (permits.available_permits() + 1).min(room_jobs.max(1));
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
        remeasure.abort();
    }
}

/// The stream `config` names, created if absent.
async fn ensure_stream(js: &jetstream::Context, config: stream::Config) -> Result<stream::Stream, NatsError> {
    let what = format!("stream {}", config.name);
    js.get_or_create_stream(config)
        .await
        .map_err(|e| NatsError::Setup {
            what,
            why: e.to_string(),
        })
}
