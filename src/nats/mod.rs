//! The async mode on NATS JetStream: jobs come from a durable stream, go
//! through the same front door ([`FaceService`](crate::service::FaceService))
//! as the HTTP API, and each job's result is published once to a results
//! stream. A thin edge: the work, its admission and its result bodies are
//! the service's; this module moves messages and settles them.
//!
//! - A durable **pull consumer** on the jobs stream, bound by several
//!   processes at once (they share the work). It pulls no more jobs than
//!   it may hold (`max_inflight`), so the broker holds the backlog; each
//!   job then waits in the service's fair admission line (no polling) and
//!   is admitted as a whole ([`consumer`]).
//! - A result goes to `RESULTS.<id>` with `Nats-Msg-Id: <id>`, so the
//!   broker drops the duplicate publish of a redelivered job; the job is
//!   acked only after the result's publish ack. A redelivered job whose
//!   result is already in the results stream is acked without being
//!   computed again ([`results`]).
//! - Long jobs send progress acks (`ack_wait` / 3); a crashed consumer's
//!   unacked jobs are redelivered to another after `ack_wait`.
//! - How a failed delivery is settled follows from its error's kind alone
//!   ([`settle`], a pure function): tried again later when the service is
//!   stopping or full, retried with a backoff until the `max_deliver`-th
//!   delivery when an input or the service failed, dead-lettered at once
//!   (`DEAD.<id>`, with its error) when retrying cannot help (not a job, a
//!   malformed or too large job, a deadline passed). A delivery past
//!   `max_deliver + 2` (after crashes or stops) is dead-lettered without
//!   being run. Nothing is dropped silently.
//! - Stopping: no more pulls, what is in flight finishes and is acked
//!   (bounded by the drain time), then [`Consumer::run`] returns.
//!
//! With the `nats-wire` feature alone (no NATS client, no tokio) the module
//! has the job messages only: [`Job`], [`Work`], [`ImageRef`], [`valid_id`].

#[cfg(feature = "nats")]
mod clock;
#[cfg(feature = "nats")]
mod consumer;
#[cfg(feature = "nats")]
mod delivery;
mod job;
#[cfg(feature = "nats")]
mod objects;
#[cfg(feature = "nats")]
mod results;

#[cfg(feature = "nats")]
use std::time::Duration;

#[cfg(feature = "nats")]
pub use self::consumer::Consumer;
#[cfg(feature = "nats")]
pub use self::delivery::{settle, Settle};
pub use self::job::{valid_id, ImageRef, Job, Work, DEAD_LETTER_JOB_BYTES};

/// Errors of the async mode at start (after it, errors are per job).
#[cfg(feature = "nats")]
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
#[cfg(feature = "nats")]
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
    /// Dead letters are kept this long at most.
    pub dead_max_age: Duration,
    /// Bytes of dead letters kept at most (the oldest go first).
    pub dead_max_bytes: i64,
    /// The stream of the clock probe (this process's clock against the
    /// broker's, for deadlines).
    pub clock_stream: String,
    /// The clock probe's subject.
    pub clock_subject: String,
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

#[cfg(feature = "nats")]
impl NatsConfig {
    /// The defaults for a broker at `url`: streams `FACEPOOL_JOBS`,
    /// `FACEPOOL_RESULTS`, `FACEPOOL_DEAD` on `facepool.jobs`,
    /// `facepool.results.*`, `facepool.dead.*`; consumer `facepool`;
    /// `ack_wait` 30 s; `max_deliver` 3; a million jobs or 1 GiB of
    /// backlog; 10 minutes of duplicate detection; dead letters kept a week
    /// and 256 MiB at most; the clock probe on `FACEPOOL_CLOCK`.
    pub fn new(url: impl Into<String>) -> Self {
        let mut c = Self {
            url: url.into(),
            jobs_stream: String::new(),
            jobs_subject: String::new(),
            results_stream: String::new(),
            results_prefix: String::new(),
            dead_stream: String::new(),
            dead_prefix: String::new(),
            dead_max_age: Duration::from_secs(7 * 24 * 3600),
            dead_max_bytes: 256 << 20,
            clock_stream: String::new(),
            clock_subject: String::new(),
            consumer: String::new(),
            bucket: String::new(),
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
        };
        c.name_all("facepool");
        c
    }

    /// The defaults with every name taken from `prefix` (letters, digits,
    /// `_` and `-`): subjects `PREFIX.jobs`, `PREFIX.results.<id>`,
    /// `PREFIX.dead.<id>`; streams `PREFIX_JOBS`, `PREFIX_RESULTS`,
    /// `PREFIX_DEAD` (upper case, `-` as `_`); the durable consumer
    /// `PREFIX`; the image bucket `PREFIX-images`. Several services can
    /// share one broker under different prefixes.
    pub fn with_prefix(url: impl Into<String>, prefix: &str) -> Result<Self, NatsError> {
        let p = prefix.trim();
        if p.is_empty()
            || !p
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(NatsError::Config(format!(
                "a prefix is letters, digits, _ and - only, not {p:?}"
            )));
        }
        let mut c = Self::new(url);
        c.name_all(p);
        Ok(c)
    }

    fn name_all(&mut self, p: &str) {
        let upper = p.to_ascii_uppercase().replace('-', "_");
        self.jobs_stream = format!("{upper}_JOBS");
        self.jobs_subject = format!("{p}.jobs");
        self.results_stream = format!("{upper}_RESULTS");
        self.results_prefix = format!("{p}.results");
        self.dead_stream = format!("{upper}_DEAD");
        self.dead_prefix = format!("{p}.dead");
        self.clock_stream = format!("{upper}_CLOCK");
        self.clock_subject = format!("{p}.clock");
        self.consumer = p.to_owned();
        self.bucket = format!("{p}-images");
    }
}

#[cfg(all(test, feature = "nats"))]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_prefix() {
        let d = NatsConfig::new("nats://x");
        assert_eq!(
            (
                d.jobs_stream.as_str(),
                d.jobs_subject.as_str(),
                d.consumer.as_str(),
                d.bucket.as_str()
            ),
            ("FACEPOOL_JOBS", "facepool.jobs", "facepool", "facepool-images")
        );
        let c = NatsConfig::with_prefix("nats://x", "cam-1").unwrap();
        assert_eq!(c.results_stream, "CAM_1_RESULTS");
        assert_eq!(c.dead_prefix, "cam-1.dead");
        for bad in ["", " ", "a.b", "a b", "*"] {
            assert!(NatsConfig::with_prefix("nats://x", bad).is_err(), "{bad:?}");
        }
    }
}
