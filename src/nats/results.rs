//! What the consumer publishes: results (the service's own bodies, with
//! the job's id, kind, consumer and delivery) and dead letters, each with a
//! dedup id and awaited until the broker acks it.

use std::time::Duration;

use async_nats::jetstream;
use serde::Serialize;

use super::job::DEAD_LETTER_JOB_BYTES;
use crate::service::wire::ErrorDetail;
use crate::service::{ErrorKind, ServiceError};

/// Why a delivery failed: its kind (how it is settled), code and message.
#[derive(Debug)]
pub(super) struct Fail {
    pub kind: ErrorKind,
    pub code: String,
    pub message: String,
}

impl Fail {
    /// A failure the consumer finds itself.
    pub fn new(kind: ErrorKind, code: &str, message: impl Into<String>) -> Self {
        Self {
            kind,
            code: code.to_owned(),
            message: message.into(),
        }
    }

    /// A malformed job: not a job, a bad id, a bad or empty image.
    pub fn now(code: &str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Malformed, code, message)
    }

    /// The service's error.
    pub fn of(e: &ServiceError) -> Self {
        Self {
            kind: e.kind(),
            code: e.code().to_owned(),
            message: e.message(),
        }
    }
}

/// The service's answer to a job: the body the HTTP API sends for the
/// same work.
#[derive(Serialize)]
#[serde(untagged)]
pub(super) enum Answer {
    Verify(crate::service::wire::VerifyResponse),
    Identify(crate::service::wire::IdentifyResponse),
    Review(crate::service::wire::ReviewResponse),
}

/// A result: the service's body with the job's id and kind, the consumer
/// that answered and its delivery (more than 1: after a crash, a stop or a
/// failure).
#[derive(Serialize)]
pub(super) struct Envelope<'a, B: Serialize> {
    pub id: &'a str,
    pub kind: &'a str,
    pub consumer: &'a str,
    pub delivered: i64,
    #[serde(flatten)]
    pub body: B,
}

/// A dead letter: the job's id, why, after how many deliveries, which
/// consumer, and the job itself (cut at [`DEAD_LETTER_JOB_BYTES`]).
#[derive(Serialize)]
pub(super) struct DeadLetter {
    id: String,
    error: ErrorDetail,
    deliveries: i64,
    consumer: String,
    job_bytes: usize,
    job: String,
}

pub(super) fn dead_letter(id: &str, f: &Fail, delivered: i64, consumer: &str, payload: &[u8]) -> DeadLetter {
    let text = String::from_utf8_lossy(payload);
    let mut cut = text.len().min(DEAD_LETTER_JOB_BYTES);
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    DeadLetter {
        id: id.to_owned(),
        error: ErrorDetail {
            code: f.code.clone(),
            message: f.message.clone(),
        },
        deliveries: delivered,
        consumer: consumer.to_owned(),
        job_bytes: payload.len(),
        job: text[..cut].to_owned(),
    }
}

/// Publishes `payload` with `id` as its dedup id, waiting for the broker's
/// ack; retries for a while if the broker is away.
pub(super) async fn publish(js: &jetstream::Context, subject: &str, id: &str, payload: bytes::Bytes) -> bool {
    for attempt in 0..10u64 {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", id);
        match js
            .publish_with_headers(subject.to_owned(), headers, payload.clone())
            .await
        {
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

/// Acks and waits for the broker to confirm (a lost ack means a
/// redelivery, which finds the result and only acks).
pub(super) async fn ack(msg: &jetstream::Message) {
    if let Err(e) = msg.double_ack().await {
        tracing::warn!(error = %e, "nats: ack not confirmed");
    }
}
