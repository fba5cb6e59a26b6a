//! One job, from its message to its result or dead letter and its ack.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream, AckKind};
use futures_util::FutureExt;
use serde_json::{json, Value};
use tokio::io::AsyncReadExt;

use super::job::{valid_id, ImageRef, Job, Work, DEAD_LETTER_JOB_BYTES};
use super::NatsConfig;
use crate::guard::{RateLimit, RateLimitError};
use crate::server::{decode_image, ApiError, App, IdentifyResponse, MatchBody, VerifyResponse};
use crate::service::{FaceResult, FaceService, ImageSource, Timings};

/// Most bytes of an image read from the object store.
const MAX_OBJECT_BYTES: u64 = 16 << 20;
/// Most bytes of all a job's images together.
const MAX_JOB_BYTES: usize = 32 << 20;

/// Why a job failed: its error code and message, and whether trying
/// again can help.
#[derive(Debug)]
struct Fail {
    code: String,
    message: String,
    /// No retry can help (not a job, past its deadline, too big): dead
    /// letter at once.
    permanent: bool,
}

impl Fail {
    fn now(code: &str, message: impl Into<String>) -> Self {
        Self {
            code: code.to_owned(),
            message: message.into(),
            permanent: true,
        }
    }

    fn api(e: ApiError) -> Self {
        // A deadline that passed stays passed; a job over the queue never
        // fits; the rest may be transient (a model error, a missing
        // object) and is retried until max_deliver.
        let permanent = matches!(
            e.code,
            "deadline_exceeded" | "too_many_faces" | "bad_base64" | "empty_image"
        );
        Self {
            code: e.code.to_owned(),
            message: e.message,
            permanent,
        }
    }
}

pub(super) struct Worker {
    pub config: NatsConfig,
    pub app: App,
    pub js: jetstream::Context,
    pub results: stream::Stream,
    pub rate: Option<Arc<RateLimit>>,
    /// The object store, looked up once.
    pub bucket: tokio::sync::OnceCell<jetstream::object_store::ObjectStore>,
}

/// Deliveries past `max_deliver` a job may get (after crashes, stops or a
/// broker away) before it is dead-lettered without being run again.
const DELIVERY_SLACK: i64 = 2;

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
            Ok(i) => {
                let age = time::OffsetDateTime::now_utc() - i.published;
                (
                    i.delivered,
                    age.try_into().unwrap_or(Duration::ZERO),
                    i.stream_sequence,
                )
            }
            // Not a JetStream delivery: nothing to count; answer it once.
            Err(_) => (i64::MAX, Duration::ZERO, 0),
        };
        // The id first (so a job whose body is wrong is dead-lettered
        // under the id its producer waits on), then the job.
        let value = serde_json::from_slice::<Value>(&msg.payload).ok();
        let named = value
            .as_ref()
            .and_then(|v| v.get("id"))
            .and_then(Value::as_str)
            .filter(|id| valid_id(id))
            .map(str::to_owned);
        let fallback = || match seq {
            0 => format!("noseq-{}", time::OffsetDateTime::now_utc().unix_timestamp_nanos()),
            n => format!("seq-{n}"),
        };
        let job = match value.map(serde_json::from_value::<Job>) {
            Some(Ok(j)) if valid_id(&j.id) => j,
            Some(Ok(j)) => {
                let f = Fail::now(
                    "bad_id",
                    format!("a job id is 1 to 128 of A-Z a-z 0-9 _ -, not {:?}", j.id),
                );
                return self.dead(&msg, &fallback(), delivered, f).await;
            }
            Some(Err(e)) => {
                let id = named.unwrap_or_else(fallback);
                return self
                    .dead(
                        &msg,
                        &id,
                        delivered,
                        Fail::now("bad_job", format!("not a job: {e}")),
                    )
                    .await;
            }
            None => {
                let f = Fail::now("bad_job", "not a job: not JSON");
                return self.dead(&msg, &fallback(), delivered, f).await;
            }
        };
        if delivered > 1 {
            match self.has_result(&job.id).await {
                // Computed and published before a crash or a lost ack.
                Ok(true) => return ack(&msg).await,
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(id = %job.id, error = %e, "nats: cannot look the result up; later");
                    let _ = msg.ack_with(AckKind::Nak(Some(Duration::from_secs(1)))).await;
                    return;
                }
            }
        }
        if delivered > self.config.max_deliver.saturating_add(DELIVERY_SLACK) {
            let f = Fail::now(
                "max_deliver_exceeded",
                format!("delivered {delivered} times without an answer (crashes or stops on the way)"),
            );
            return self.dead(&msg, &job.id, delivered, f).await;
        }
        let deadline = match job.deadline_ms {
            None => None,
            Some(ms) => {
                let limit = Duration::from_millis(ms);
                match limit.checked_sub(age) {
                    Some(left) if !left.is_zero() => Some(Instant::now() + left),
                    _ => {
                        let f = Fail::now(
                            "deadline_exceeded",
                            format!("the job's deadline of {ms} ms passed"),
                        );
                        return self.dead(&msg, &job.id, delivered, f).await;
                    }
                }
            }
        };
        // A panic in the work is a failure of this delivery, not of the
        // consumer.
        let outcome = std::panic::AssertUnwindSafe(self.run(&job, deadline))
            .catch_unwind()
            .await
            .unwrap_or_else(|_| {
                Err(Fail {
                    code: "internal".into(),
                    message: "the job's work panicked".into(),
                    permanent: false,
                })
            });
        match outcome {
            Ok(mut result) => {
                // Which delivery answered (more than 1: after a crash, a
                // stop or a failure).
                if let Value::Object(m) = &mut result {
                    m.insert("delivered".into(), delivered.into());
                }
                let subject = format!("{}.{}", self.config.results_prefix, job.id);
                if self.publish(&subject, &job.id, result).await {
                    ack(&msg).await;
                } else {
                    // Not published: try again later (if it was in fact
                    // stored, the redelivery finds it and only acks).
                    let _ = msg.ack_with(AckKind::Nak(Some(Duration::from_secs(1)))).await;
                }
            }
            // The service is stopping: another consumer (or this one,
            // restarted) takes the job; never a dead letter for that.
            Err(f) if f.code == "shutting_down" => {
                let _ = msg.ack_with(AckKind::Nak(None)).await;
            }
            Err(f) if f.permanent || delivered >= self.config.max_deliver => {
                self.dead(&msg, &job.id, delivered, f).await;
            }
            Err(f) => {
                tracing::debug!(id = %job.id, code = %f.code, delivered, "nats: job failed, retrying");
                let backoff = Duration::from_millis(500 * delivered.clamp(1, 20) as u64);
                let _ = msg.ack_with(AckKind::Nak(Some(backoff))).await;
            }
        }
    }

    /// Whether the job's result is in the results stream.
    async fn has_result(&self, id: &str) -> Result<bool, String> {
        let subject = format!("{}.{}", self.config.results_prefix, id);
        match self.results.get_last_raw_message_by_subject(&subject).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(false),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Publishes `body` with `id` as its dedup id, waiting for the
    /// broker's ack; retries for a while if the broker is away.
    async fn publish(&self, subject: &str, id: &str, body: Value) -> bool {
        let payload: bytes::Bytes = match serde_json::to_vec(&body) {
            Ok(v) => v.into(),
            Err(_) => return false,
        };
        for attempt in 0..10u64 {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", id);
            let sent = self
                .js
                .publish_with_headers(subject.to_owned(), headers, payload.clone())
                .await;
            match sent {
                Ok(ack) => match ack.await {
                    Ok(_) => return true,
                    Err(e) => tracing::warn!(error = %e, subject, "nats: publish not acked"),
                },
                Err(e) => tracing::warn!(error = %e, subject, "nats: cannot publish"),
            }
            tokio::time::sleep(Duration::from_millis(200 * (attempt + 1))).await;
        }
        false
    }

    /// Publishes a dead letter for the message, then acks it (if the dead
    /// letter cannot be published, the job is naked and comes back).
    async fn dead(&self, msg: &jetstream::Message, id: &str, delivered: i64, f: Fail) {
        tracing::warn!(id, code = %f.code, error = %f.message, delivered, "nats: dead letter");
        let text = String::from_utf8_lossy(&msg.payload);
        let mut cut = text.len().min(DEAD_LETTER_JOB_BYTES);
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        let job = Value::String(text[..cut].to_owned());
        let body = json!({
            "id": id,
            "error": {"code": f.code, "message": f.message},
            "deliveries": delivered,
            "consumer": self.config.name,
            "job_bytes": msg.payload.len(),
            "job": job,
        });
        let subject = format!("{}.{}", self.config.dead_prefix, id);
        if self.publish(&subject, &format!("dead-{id}"), body).await {
            ack(msg).await;
        } else {
            let _ = msg.ack_with(AckKind::Nak(Some(Duration::from_secs(1)))).await;
        }
    }

    /// The job's work: its images read, admitted, embedded, compared.
    async fn run(&self, job: &Job, deadline: Option<Instant>) -> Result<Value, Fail> {
        let Some(svc) = self.app.service() else {
            return Err(Fail {
                code: "not_ready".into(),
                message: "the service is not loaded".into(),
                permanent: false,
            });
        };
        let refs = job.work.images();
        if refs.is_empty() {
            return Err(Fail::now("no_images", "the job has no images"));
        }
        // Before reading any image: a job bigger than the whole queue
        // could never be admitted.
        let queue = svc.config().queue.max(1);
        if refs.len() > queue {
            return Err(Fail::now(
                "too_many_faces",
                format!("{} images, more than the queue of {queue}", refs.len()),
            ));
        }
        let mut images = Vec::with_capacity(refs.len());
        let mut total = 0usize;
        for (i, r) in refs.iter().enumerate() {
            let img = self.image(i + 1, r).await?;
            total += img.len();
            if total > MAX_JOB_BYTES {
                return Err(Fail::now(
                    "job_too_large",
                    format!("the job's images are over {MAX_JOB_BYTES} bytes together"),
                ));
            }
            images.push(img);
        }
        let _admitted = admit(svc, images.len(), deadline).await?;
        if let Some(rate) = &self.rate {
            take(rate, images.len()).await;
        }
        let started = Instant::now();
        let sources = images.into_iter().map(ImageSource::Bytes).collect();
        let work = svc.embed_all_async(sources, deadline);
        let results = match deadline {
            None => work.await,
            Some(d) => tokio::time::timeout_at(d.into(), work)
                .await
                .map_err(|_| Fail::now("deadline_exceeded", "the job's deadline passed"))?,
        };
        let retry = Duration::from_secs(1);
        let mut results = results
            .into_iter()
            .enumerate()
            .map(|(i, r)| r.map_err(|e| ApiError::from_service(&e, retry).for_image(i + 1)));
        let mut next = || {
            results.next().unwrap_or_else(|| {
                Err(ApiError::new(
                    axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "an image's result is missing",
                ))
            })
        };
        let (id, kind) = (job.id.as_str(), job.work.kind());
        let consumer = self.config.name.as_str();
        match &job.work {
            Work::Verify { .. } => {
                let (ra, ta) = next().map_err(Fail::api)?;
                let (rb, tb) = next().map_err(Fail::api)?;
                let v = svc.verdict(&ra, &rb, ta, tb, started.elapsed());
                let body = VerifyResponse {
                    similarity: v.similarity,
                    same: v.same,
                    threshold: v.threshold,
                    faces: vec![ra.path.to_string(), rb.path.to_string()],
                    timings_ms: v.timings.into(),
                };
                Ok(with_id(id, kind, consumer, json!(body)))
            }
            Work::Identify { k, .. } => {
                let (face, t) = next().map_err(Fail::api)?;
                let body = identify(svc, &face, k.unwrap_or(5).clamp(1, 100), t)?;
                Ok(with_id(id, kind, consumer, json!(body)))
            }
            Work::Review {
                video,
                frames,
                reference,
            } => {
                let mut embedded = Vec::with_capacity(frames.len());
                for _ in frames {
                    embedded.push(next());
                }
                let reference = match reference {
                    Some(_) => Some(next().map_err(Fail::api)?),
                    None => None,
                };
                let (mut with_face, mut matched) = (0usize, 0usize);
                let mut out = Vec::with_capacity(frames.len());
                for (i, r) in embedded.into_iter().enumerate() {
                    let (face, t) = match r {
                        Ok(x) => x,
                        // A frame without a face is an answer, not a failure.
                        Err(e) if e.code == "no_face" => {
                            out.push(json!({"frame": i, "face": false}));
                            continue;
                        }
                        Err(e) => return Err(Fail::api(e)),
                    };
                    with_face += 1;
                    match &reference {
                        Some((rf, rt)) => {
                            let v = svc.verdict(rf, &face, *rt, t, started.elapsed());
                            matched += usize::from(v.same);
                            out.push(
                                json!({"frame": i, "face": true, "similarity": v.similarity, "same": v.same}),
                            );
                        }
                        None => {
                            let id = identify(svc, &face, 1, t)?;
                            matched += usize::from(id.best.is_some());
                            out.push(json!({"frame": i, "face": true, "match": id.best}));
                        }
                    }
                }
                let passes = match reference {
                    Some(_) => with_face > 0 && matched == with_face,
                    None => matched == 0,
                };
                let mode = if reference.is_some() {
                    "reference"
                } else {
                    "gallery"
                };
                Ok(json!({
                    "id": id, "kind": kind, "consumer": consumer, "video": video, "mode": mode,
                    "passes": passes, "frames_with_face": with_face, "frames_matched": matched,
                    "threshold": svc.config().threshold, "frames": out,
                }))
            }
        }
    }

    /// An image's bytes: base64 inline, or an object from the bucket.
    async fn image(&self, n: usize, r: &ImageRef) -> Result<Arc<[u8]>, Fail> {
        match r {
            ImageRef::Inline(s) => decode_image(&format!("image {n}"), s).map_err(Fail::api),
            ImageRef::Object { object } => {
                let transient = |what: &str, e: &dyn std::fmt::Display| Fail {
                    code: "object_store".into(),
                    message: format!("image {n}: {what} {object:?}: {e}"),
                    permanent: false,
                };
                let store = self
                    .bucket
                    .get_or_try_init(|| self.js.get_object_store(&self.config.bucket))
                    .await
                    .map_err(|e| transient("bucket of", &e))?;
                let obj = store.get(object).await.map_err(|e| transient("cannot get", &e))?;
                if obj.info.size as u64 > MAX_OBJECT_BYTES {
                    return Err(Fail::now(
                        "image_too_large",
                        format!("image {n}: object {object:?} is over {MAX_OBJECT_BYTES} bytes"),
                    ));
                }
                let mut bytes = Vec::with_capacity(obj.info.size.min(MAX_OBJECT_BYTES as usize));
                obj.take(MAX_OBJECT_BYTES + 1)
                    .read_to_end(&mut bytes)
                    .await
                    .map_err(|e| transient("cannot read", &e))?;
                if bytes.len() as u64 > MAX_OBJECT_BYTES {
                    return Err(Fail::now(
                        "image_too_large",
                        format!("image {n}: object {object:?} is over {MAX_OBJECT_BYTES} bytes"),
                    ));
                }
                if bytes.is_empty() {
                    return Err(Fail::now(
                        "empty_image",
                        format!("image {n}: object {object:?} is empty"),
                    ));
                }
                Ok(bytes.into())
            }
        }
    }
}

fn identify(svc: &FaceService, face: &FaceResult, k: usize, t: Timings) -> Result<IdentifyResponse, Fail> {
    let id = svc
        .identify_face(face, k, t)
        .map_err(|e| Fail::api(ApiError::from_service(&e, Duration::from_secs(1))))?;
    Ok(IdentifyResponse {
        best: id.best.as_ref().map(MatchBody::from),
        matches: id.matches.iter().map(MatchBody::from).collect(),
        threshold: id.threshold,
        face: id.path.to_string(),
        timings_ms: id.timings.into(),
    })
}

fn with_id(id: &str, kind: &str, consumer: &str, mut body: Value) -> Value {
    if let Value::Object(m) = &mut body {
        m.insert("id".into(), id.into());
        m.insert("kind".into(), kind.into());
        m.insert("consumer".into(), consumer.into());
    }
    body
}

/// Acks and waits for the broker to confirm (a lost ack means a
/// redelivery, which finds the result and only acks).
async fn ack(msg: &jetstream::Message) {
    if let Err(e) = msg.double_ack().await {
        tracing::warn!(error = %e, "nats: ack not confirmed");
    }
}

/// Admits `faces` to the service, waiting for room (the job is already
/// held; the broker keeps the rest of the backlog).
async fn admit(
    svc: &FaceService,
    faces: usize,
    deadline: Option<Instant>,
) -> Result<crate::service::Admission, Fail> {
    loop {
        match svc.admit(faces) {
            Ok(a) => return Ok(a),
            Err(e) => {
                let api = ApiError::from_service(&e, Duration::from_secs(1));
                if api.code != "overloaded" {
                    return Err(Fail::api(api));
                }
            }
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(Fail::now(
                "deadline_exceeded",
                "the job's deadline passed while waiting for room",
            ));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
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
