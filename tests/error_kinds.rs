//! Each kind of service error as every edge maps it, in one table: the
//! HTTP status (`server::status_of`), how a NATS delivery is settled
//! (`nats::settle`, first of three deliveries and last) and the command
//! line's exit code (`src/bin/common/exit.rs`).
#![cfg(all(feature = "server", feature = "nats"))]

#[path = "../src/bin/common/exit.rs"]
mod exit;

use std::time::Duration;

use facepool::nats::{settle, Settle};
use facepool::server::status_of;
use facepool::service::ErrorKind;

#[test]
fn every_kind_on_every_edge() {
    use ErrorKind as K;
    use Settle::*;
    let retry = Retry(Duration::from_millis(500));
    // kind, HTTP status, NATS on delivery 1 of 3, NATS on delivery 3 of 3,
    // exit code, retryable
    let table = [
        (K::Malformed, 400, DeadLetter, DeadLetter, 1, false),
        (K::Invalid, 422, retry, DeadLetter, 1, false),
        (K::TooLarge, 413, DeadLetter, DeadLetter, 1, false),
        (K::NotFound, 404, DeadLetter, DeadLetter, 1, false),
        (K::Conflict, 409, DeadLetter, DeadLetter, 1, false),
        (K::Overloaded, 429, Requeue, Requeue, 75, true),
        (K::Deadline, 504, DeadLetter, DeadLetter, 75, false),
        (K::Unavailable, 503, Requeue, Requeue, 75, true),
        (K::Internal, 500, retry, DeadLetter, 70, true),
    ];
    assert_eq!(table.len(), ErrorKind::ALL.len(), "every kind is in the table");
    for (kind, status, first, last, code, retryable) in table {
        assert_eq!(status_of(kind).as_u16(), status, "{kind:?}: HTTP");
        assert_eq!(settle(1, 3, kind), first, "{kind:?}: NATS, delivery 1 of 3");
        assert_eq!(settle(3, 3, kind), last, "{kind:?}: NATS, delivery 3 of 3");
        assert_eq!(exit::code_of(kind), code, "{kind:?}: exit code");
        assert_eq!(kind.retryable(), retryable, "{kind:?}: retryable");
    }
    // The most serious exit code wins.
    assert_eq!(exit::worse(exit::INPUT, exit::TEMPFAIL), exit::TEMPFAIL);
    assert_eq!(exit::worse(exit::SOFTWARE, exit::TEMPFAIL), exit::SOFTWARE);
    assert_eq!(exit::worse(exit::OK, exit::INPUT), exit::INPUT);
}
