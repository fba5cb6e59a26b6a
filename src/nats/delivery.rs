//! One delivery of a job, from its message to exactly one of: a result
//! published, a dead letter published, or a nak (tried again later); and
//! [`settle`], the rule that picks between them from the error's kind.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream, AckKind};
use futures_util::FutureExt;

use super::job::{valid_id, IdOnly, Job, Work};
use super::results::{self, Fail};
use super::NatsConfig;
use crate::guard::{RateLimit, RateLimitError};
use crate::service::wire::{IdentifyResponse, ReviewResponse, VerifyResponse};
use crate::service::{
    AdmitError, Call, Cost, ErrorKind, FaceService, ImageSource, ReviewRequest, ServiceError,
};

/// Most bytes of an image read from the object store.
pub(super) const MAX_OBJECT_BYTES: u64 = 16 << 20;
/// Most bytes of all a job's images together.
const MAX_JOB_BYTES: usize = 32 << 20;

/// How long a requeued job waits before its next delivery.
const REQUEUE_DELAY: Duration = Duration::from_millis(250);

/// Deliveries past `max_deliver` a job may get (after crashes, stops or a
/// broker away) before it is dead-lettered without being run again.
pub(super) const DELIVERY_SLACK: i64 = 2;

/// What to do with a delivery that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    /// Nak without delay: the service is stopping or full, so another
    /// consumer (or this one, later) takes the job; never a dead letter for
    /// that.
    Requeue,
    /// Nak with this delay: it may work on a later delivery.
    Retry(Duration),
    /// Publish a dead letter, then ack: trying again cannot help, or the
    /// job had its last delivery.
    DeadLetter,
}

/// How the `delivered`-th delivery of a job that failed with `kind` is
/// settled, given the consumer's `max_deliver`. A pure function of the
/// three; the table in its tests is the whole rule.
///
/// - `Unavailable`, `Overloaded`: requeued (the job is fine; this process
///   is not taking it now). Deliveries are still counted: past
///   `max_deliver + 2` the job is dead-lettered before it is run.
/// - `Invalid`, `Internal`: retried with a backoff of half a second per
///   delivery until the `max_deliver`-th, then dead-lettered (a consumer
///   cannot tell a corrupt upload from a truncated read, nor a failing
///   model from one that recovers).
/// - `Malformed`, `TooLarge`, `NotFound`, `Conflict`, `Deadline`:
///   dead-lettered at once.
pub fn settle(delivered: i64, max_deliver: i64, kind: ErrorKind) -> Settle {
    match kind {
        ErrorKind::Unavailable | ErrorKind::Overloaded => Settle::Requeue,
        ErrorKind::Invalid | ErrorKind::Internal if delivered < max_deliver => {
            Settle::Retry(Duration::from_millis(500 * delivered.clamp(1, 20) as u64))
        }
        _ => Settle::DeadLetter,
    }
}

pub(super) struct Worker {
    pub config: NatsConfig,
    pub service: FaceService,
    pub js: jetstream::Context,
    pub results: stream::Stream,
    pub dead_letters: stream::Stream,
    /// The broker's largest message.
    pub max_payload: usize,
    /// This process's clock against the broker's.
    pub clock: Arc<super::clock::Clock>,
    pub rate: Option<Arc<RateLimit>>,
    /// The object store, looked up once.
    pub bucket: tokio::sync::OnceCell<jetstream::object_store::ObjectStore>,
}

/// Sends progress acks until dropped.
struct Progress(tokio::task::JoinHandle<()>);

impl Progress {
    fn start(msg: &jetstream::Message, ack_wait: Duration) -> Self {
        let msg = msg.clone();
        let every = (ack_wait / 3).max(Duration::from_millis(100));
        Self(tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            loop {
                tick.tick().await;
                let _ = msg.ack_with(AckKind::Progress).await;
            }
        }))
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Worker {
    /// Runs one job to exactly one of: a result published, a dead letter
    /// published, or a nak (tried again later); then acks it.
    pub async fn handle(&self, msg: jetstream::Message) {
        // From the first moment: the job is not redelivered elsewhere
        // while this delivery works on it (result lookup, publish retries
        // included).
        let _progress = Progress::start(&msg, self.config.ack_wait);
        let (delivered, age, seq) = match msg.info() {
            // The job's age on the broker's clock: this process's clock
            // corrected by the offset measured against the broker.
            Ok(i) => (i.delivered, self.clock.age(i.published), i.stream_sequence),
            // Not a JetStream delivery: nothing to count; answer it once.
            Err(_) => (i64::MAX, Duration::ZERO, 0),
        };
        let fallback = || match seq {
            0 => format!("noseq-{}", time::OffsetDateTime::now_utc().unix_timestamp_nanos()),
            n => format!("seq-{n}"),
        };
        // Parsed straight into typed fields; a message that is not a job is
        // dead-lettered under the id its producer waits on, if it has one.
        let job = match serde_json::from_slice::<Job>(&msg.payload) {
            Ok(j) if valid_id(&j.id) => j,
            Ok(j) => {
                let f = Fail::now(
                    "bad_id",
                    format!("a job id is 1 to 128 of A-Z a-z 0-9 _ -, not {:?}", j.id),
                );
                return self.dead(&msg, &fallback(), delivered, f).await;
            }
            Err(e) => {
                let id = serde_json::from_slice::<IdOnly>(&msg.payload)
                    .ok()
                    .and_then(|i| i.id)
                    .filter(|id| valid_id(id))
                    .unwrap_or_else(fallback);
                let why = if e.is_syntax() || e.is_eof() {
                    "not a job: not JSON".to_owned()
                } else {
                    format!("not a job: {e}")
                };
                return self.dead(&msg, &id, delivered, Fail::now("bad_job", why)).await;
            }
        };
        if delivered > 1 {
            // Answered before a crash or a lost ack, by a result or a dead
            // letter: only ack (one outcome per job).
            match self.answered(&job.id).await {
                Ok(true) => return results::ack(&msg).await,
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(id = %job.id, error = %e, "nats: cannot look the answer up; later");
                    let _ = msg.ack_with(AckKind::Nak(Some(Duration::from_secs(1)))).await;
                    return;
                }
            }
        }
        if delivered > self.config.max_deliver.saturating_add(DELIVERY_SLACK) {
            let f = Fail::new(
                ErrorKind::Unavailable,
                "max_deliver_exceeded",
                format!("delivered {delivered} times without an answer (crashes or stops on the way)"),
            );
            return self.dead(&msg, &job.id, delivered, f).await;
        }
        let deadline = match job.deadline_ms {
            None => None,
            Some(ms) => match Duration::from_millis(ms).checked_sub(age) {
                Some(left) if !left.is_zero() => Some(Instant::now() + left),
                _ => {
                    let f = Fail::new(
                        ErrorKind::Deadline,
                        "deadline_exceeded",
                        format!("the job's deadline of {ms} ms passed"),
                    );
                    return self.dead(&msg, &job.id, delivered, f).await;
                }
            },
        };
        // A panic in the work is a failure of this delivery, not of the
        // consumer.
        let outcome = std::panic::AssertUnwindSafe(self.run(&job, deadline))
            .catch_unwind()
            .await
            .unwrap_or_else(|_| {
                Err(Fail::new(
                    ErrorKind::Internal,
                    "internal",
                    "the job's work panicked",
                ))
            });
        match outcome {
            Ok(body) => {
                let result = results::Envelope {
                    id: &job.id,
                    kind: job.work.kind(),
                    consumer: &self.config.name,
                    delivered,
                    body,
                };
                let subject = format!("{}.{}", self.config.results_prefix, job.id);
                let payload = match serde_json::to_vec(&result) {
                    Ok(p) => p,
                    Err(e) => {
                        let f = Fail::new(ErrorKind::Internal, "internal", e.to_string());
                        return self.dead(&msg, &job.id, delivered, f).await;
                    }
                };
                // The broker would refuse it, every time: a dead letter of
                // its own, not retries to max_deliver.
                if payload.len() > self.max_payload {
                    let f = Fail::new(
                        ErrorKind::TooLarge,
                        "result_too_large",
                        format!(
                            "the result is {} bytes, more than the broker's max payload of {}",
                            payload.len(),
                            self.max_payload
                        ),
                    );
                    return self.dead(&msg, &job.id, delivered, f).await;
                }
                let published = results::publish(&self.js, &subject, &job.id, payload.into()).await;
                if published {
                    results::ack(&msg).await;
                } else {
                    // Not published: try again later (if it was in fact
                    // stored, the redelivery finds it and only acks).
                    let _ = msg.ack_with(AckKind::Nak(Some(Duration::from_secs(1)))).await;
                }
            }
            Err(f) => match settle(delivered, self.config.max_deliver, f.kind) {
                // Another consumer (or this one, when it has room) takes
                // it: after a moment, so that a full consumer does not
                // spin on its own redeliveries.
                Settle::Requeue => {
                    let _ = msg.ack_with(AckKind::Nak(Some(REQUEUE_DELAY))).await;
                }
                Settle::Retry(backoff) => {
                    tracing::debug!(id = %job.id, code = %f.code, delivered, "nats: job failed, retrying");
                    let _ = msg.ack_with(AckKind::Nak(Some(backoff))).await;
                }
                Settle::DeadLetter => self.dead(&msg, &job.id, delivered, f).await,
            },
        }
    }

    /// Whether the job has its answer already: a result in the results
    /// stream, or a dead letter in the dead-letter stream.
    async fn answered(&self, id: &str) -> Result<bool, String> {
        let result = format!("{}.{}", self.config.results_prefix, id);
        let dead = format!("{}.{}", self.config.dead_prefix, id);
        for (stream, subject) in [(&self.results, result), (&self.dead_letters, dead)] {
            match stream.get_last_raw_message_by_subject(&subject).await {
                Ok(_) => return Ok(true),
                Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(false)
    }

    /// Publishes a dead letter for the message, then acks it (if the dead
    /// letter cannot be published, the job is naked and comes back).
    async fn dead(&self, msg: &jetstream::Message, id: &str, delivered: i64, f: Fail) {
        tracing::warn!(id, code = %f.code, error = %f.message, delivered, "nats: dead letter");
        let body = results::dead_letter(id, &f, delivered, &self.config.name, &msg.payload);
        let subject = format!("{}.{}", self.config.dead_prefix, id);
        let sent = match serde_json::to_vec(&body) {
            Ok(payload) => results::publish(&self.js, &subject, &format!("dead-{id}"), payload.into()).await,
            Err(_) => false,
        };
        if sent {
            results::ack(msg).await;
        } else {
            let _ = msg.ack_with(AckKind::Nak(Some(Duration::from_secs(1)))).await;
        }
    }

    /// The job's work: admitted by the service for its images (their
    /// sizes as the job and the bucket say) before any is read, then the
    /// images read (objects under a timeout and the deadline), then the
    /// service's operation on that admission, within the deadline.
    async fn run(&self, job: &Job, deadline: Option<Instant>) -> Result<results::Answer, Fail> {
        let svc = &self.service;
        let refs = job.work.images();
        if refs.is_empty() {
            return Err(Fail::now("no_images", "the job has no images"));
        }
        // Its faces as the operation will ask for them (all taken here,
        // so that the operation never waits in line for more while holding
        // these). A job over the per-request cap could never be admitted.
        let faces = job.work.faces_up_to(svc.max_faces());
        let cap = svc.admission().stats().cap.faces;
        if faces > cap {
            return Err(Fail::new(
                ErrorKind::TooLarge,
                "too_many_faces",
                format!(
                    "{} images of up to {faces} faces in all, more than the {cap} one request may carry",
                    refs.len()
                ),
            ));
        }
        let mut sources = Vec::with_capacity(refs.len());
        let mut bytes = 0usize;
        for (i, r) in refs.iter().enumerate() {
            let s = self.locate(i + 1, r, deadline).await?;
            bytes = bytes.saturating_add(s.bytes());
            if bytes > MAX_JOB_BYTES {
                return Err(Fail::new(
                    ErrorKind::TooLarge,
                    "job_too_large",
                    format!("the job's images are over {MAX_JOB_BYTES} bytes together"),
                ));
            }
            sources.push(s);
        }
        // Admitted in the service's fair line (no request barges ahead of
        // it), by the job's deadline. The consumer pulls a job only when
        // the service has room for it, so the wait is short: a request
        // that took the room meanwhile finishes ahead of it.
        let cost = Cost::new(faces, bytes);
        let wait = svc.admission().acquire_by(cost, deadline);
        let permit = match deadline {
            None => wait.await,
            Some(d) => tokio::time::timeout_at(d.into(), wait)
                .await
                .map_err(|_| Fail::of(&AdmitError::Timeout.into()))?,
        }
        .map_err(|e| Fail::of(&e.into()))?;
        let mut images = Vec::with_capacity(sources.len());
        for (i, s) in sources.into_iter().enumerate() {
            images.push(ImageSource::Bytes(self.read(i + 1, s, deadline).await?));
        }
        if let Some(rate) = &self.rate {
            take(rate, images.len()).await;
        }
        let call = Call {
            deadline,
            refuse_when_full: false,
            permit: Some(permit),
        };
        let fail = |e: ServiceError| Fail::of(&e);
        let mut images = images.into_iter();
        let mut next = || {
            images
                .next()
                .ok_or_else(|| Fail::now("no_images", "an image is missing"))
        };
        Ok(match &job.work {
            Work::Verify { .. } => {
                let (a, b) = (next()?, next()?);
                let v = svc.verify_async(a, b, call).await.map_err(fail)?;
                results::Answer::Verify(VerifyResponse::from(&v))
            }
            Work::Identify {
                k, all_faces: false, ..
            } => {
                let id = svc
                    .identify_async(next()?, k.unwrap_or(5), call)
                    .await
                    .map_err(fail)?;
                results::Answer::Identify(IdentifyResponse::from(&id))
            }
            Work::Identify {
                k, all_faces: true, ..
            } => {
                let ids = svc
                    .identify_all_async(next()?, k.unwrap_or(5), call)
                    .await
                    .map_err(fail)?;
                results::Answer::Identify(IdentifyResponse::of_all(&ids).map_err(fail)?)
            }
            Work::Review {
                video,
                frames,
                reference,
                all_faces,
            } => {
                let frames: Vec<ImageSource> = (0..frames.len()).map(|_| next()).collect::<Result<_, _>>()?;
                let reference = match reference {
                    Some(_) => Some(next()?),
                    None => None,
                };
                let req = ReviewRequest {
                    video: video.clone(),
                    frames,
                    reference,
                    all_faces: *all_faces,
                };
                let r = svc.review_async(req, call).await.map_err(fail)?;
                results::Answer::Review(ReviewResponse::from(&r))
            }
        })
    }
}

/// Takes `n` tokens from the rate limit, sleeping as it says.
async fn take(rate: &RateLimit, n: usize) {
    let mut left = n;
    while left > 0 {
        let chunk = left.min(rate.burst() as usize);
        match rate.try_acquire(chunk) {
            Ok(()) => left -= chunk,
            Err(RateLimitError::Limited { retry_after }) => tokio::time::sleep(retry_after).await,
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The whole rule, as a table: (delivered, max_deliver, kind) → settle.
    #[test]
    fn settle_table() {
        use ErrorKind as K;
        use Settle::*;
        let ms = Duration::from_millis;
        let table = [
            (1, 3, K::Unavailable, Requeue),
            (9, 3, K::Unavailable, Requeue),
            (1, 3, K::Overloaded, Requeue),
            (1, 3, K::Internal, Retry(ms(500))),
            (2, 3, K::Internal, Retry(ms(1000))),
            (3, 3, K::Internal, DeadLetter),
            (1, 3, K::Invalid, Retry(ms(500))),
            (3, 3, K::Invalid, DeadLetter),
            (1, 1, K::Invalid, DeadLetter),
            (40, 99, K::Internal, Retry(ms(10_000))),
            (1, 3, K::Malformed, DeadLetter),
            (1, 3, K::TooLarge, DeadLetter),
            (1, 3, K::NotFound, DeadLetter),
            (1, 3, K::Conflict, DeadLetter),
            (1, 3, K::Deadline, DeadLetter),
        ];
        for (delivered, max, kind, want) in table {
            assert_eq!(
                settle(delivered, max, kind),
                want,
                "{delivered} of {max}, {kind:?}"
            );
        }
        // Every kind is settled one way or another, and only the transient
        // ones are ever requeued.
        for k in ErrorKind::ALL {
            let s = settle(1, 3, k);
            assert_eq!(
                matches!(s, Requeue),
                matches!(k, K::Unavailable | K::Overloaded),
                "{k:?}"
            );
        }
    }
}
