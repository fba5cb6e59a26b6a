//! Deadlines on one clock: a job's `deadline_ms` counts from its publish
//! time, which the broker stamps with its own clock. This process measures
//! the offset of its clock from the broker's (a probe message published to
//! a stream of its own, whose broker timestamp is compared with the middle
//! of the local publish round trip, so the error is at most half that
//! round trip) and ages jobs on the broker's clock. A consumer whose clock
//! is minutes off does not dead-letter every job as late.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use time::OffsetDateTime;

/// The offset of this process's clock from the broker's.
#[derive(Debug, Default)]
pub(super) struct Clock {
    /// Broker time minus local time, nanoseconds.
    offset_ns: AtomicI64,
}

impl Clock {
    /// A job's age on the broker's clock, from its publish time.
    pub fn age(&self, published: OffsetDateTime) -> Duration {
        let now =
            OffsetDateTime::now_utc() + time::Duration::nanoseconds(self.offset_ns.load(Ordering::Relaxed));
        (now - published).try_into().unwrap_or(Duration::ZERO)
    }

    /// The offset measured last.
    pub fn offset(&self) -> time::Duration {
        time::Duration::nanoseconds(self.offset_ns.load(Ordering::Relaxed))
    }

    /// Measures the offset against the broker: a probe published to
    /// `subject` of `probe` (a stream of the consumer's own).
    pub async fn measure(
        &self,
        js: &jetstream::Context,
        probe: &stream::Stream,
        subject: &str,
    ) -> Result<(), String> {
        let t0 = OffsetDateTime::now_utc();
        let ack = js
            .publish(subject.to_owned(), bytes::Bytes::new())
            .await
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        let t1 = OffsetDateTime::now_utc();
        let msg = probe
            .get_raw_message(ack.sequence)
            .await
            .map_err(|e| e.to_string())?;
        let local: OffsetDateTime = t0 + (t1 - t0) / 2i32;
        let offset: time::Duration = msg.time - local;
        let ns = i64::try_from(offset.whole_nanoseconds()).unwrap_or(0);
        self.offset_ns.store(ns, Ordering::Relaxed);
        Ok(())
    }
}
