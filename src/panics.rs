//! Catching panics of user code that runs on the runtime's own threads (a
//! job, a drop of its captures or result, a waker, a clock, a factory), so
//! that none of them can kill a worker or a batch thread mid-bookkeeping.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// The message of a panic payload (`&str` or `String`), or a placeholder.
pub(crate) fn message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

/// Takes a caught panic's payload: returns its message, and drops it. A
/// payload is user data too: if its drop panics, that is said in the
/// message, and the second payload is leaked (dropping it could panic again,
/// without end).
#[cold]
#[inline(never)]
fn settle(payload: Box<dyn Any + Send>) -> String {
    let mut msg = message(&*payload);
    if let Err(second) = catch_unwind(AssertUnwindSafe(move || drop(payload))) {
        msg = format!("{msg} (and dropping its payload panicked: {})", message(&*second));
        std::mem::forget(second);
    }
    msg
}

/// Runs `f`; a panic comes back as its message. Inlined: it wraps every
/// job, and a call per job showed in profiles of no-op jobs.
#[inline]
pub(crate) fn catch<R>(f: impl FnOnce() -> R) -> Result<R, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(settle)
}

/// Drops `x` (user data: captures, a result, a waker); a panic in its drop
/// comes back as its message.
#[inline]
pub(crate) fn drop_caught<T>(x: T) -> Result<(), String> {
    catch(move || drop(x))
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    struct Bomb(&'static str);
    impl Drop for Bomb {
        fn drop(&mut self) {
            panic!("{}", self.0);
        }
    }

    #[test]
    fn messages_of_str_string_and_other_payloads() {
        assert_eq!(catch(|| panic!("plain")).unwrap_err(), "plain");
        assert_eq!(catch(|| panic!("{}", 7)).unwrap_err(), "7");
        assert_eq!(
            catch(|| std::panic::panic_any(3u8)).unwrap_err(),
            "non-string panic payload"
        );
        assert_eq!(catch(|| 5), Ok(5));
    }

    #[test]
    fn a_payload_whose_drop_panics_is_reported_not_rethrown() {
        let msg = catch(|| std::panic::panic_any(Bomb("inner"))).unwrap_err();
        assert_eq!(
            msg,
            "non-string panic payload (and dropping its payload panicked: inner)"
        );
        assert_eq!(drop_caught(Bomb("in drop")).unwrap_err(), "in drop");
        assert_eq!(drop_caught(3), Ok(()));
    }
}
