//! The command line's exit codes, from the front door's error kinds: the
//! one place the binaries map them.
//!
//! - 0: every input was handled;
//! - 1: some inputs were refused as they are (malformed, not an image, no
//!   face, too large, unknown): each is reported, the others were handled;
//! - 2: usage and set-up errors (bad flags, models that do not load);
//! - 70 (`EX_SOFTWARE`): the service itself failed on an input (the model,
//!   the index, a file it writes);
//! - 75 (`EX_TEMPFAIL`): an input was not handled for now (the service was
//!   full or stopping, or a deadline passed): running it again may work.
//!
//! When inputs fail in several ways, the code is the most serious of them
//! (70 over 75 over 1).
#![allow(dead_code)]

use facepool::service::ErrorKind;

/// Every input was handled.
pub const OK: u8 = 0;
/// Some inputs were refused as they are.
pub const INPUT: u8 = 1;
/// Usage or set-up error.
pub const USAGE: u8 = 2;
/// The service failed (`EX_SOFTWARE`).
pub const SOFTWARE: u8 = 70;
/// Not handled for now; try again (`EX_TEMPFAIL`).
pub const TEMPFAIL: u8 = 75;

/// The exit code of an input that failed with `kind`.
pub fn code_of(kind: ErrorKind) -> u8 {
    match kind {
        ErrorKind::Malformed
        | ErrorKind::Invalid
        | ErrorKind::TooLarge
        | ErrorKind::NotFound
        | ErrorKind::Conflict => INPUT,
        ErrorKind::Overloaded | ErrorKind::Deadline | ErrorKind::Unavailable => TEMPFAIL,
        ErrorKind::Internal => SOFTWARE,
    }
}

/// The more serious of two exit codes.
pub fn worse(a: u8, b: u8) -> u8 {
    let rank = |c: u8| match c {
        OK => 0,
        INPUT => 1,
        TEMPFAIL => 2,
        SOFTWARE => 3,
        _ => 4,
    };
    if rank(b) > rank(a) {
        b
    } else {
        a
    }
}
