//! The loadgen workload files (`Profile::parse` of
//! `src/bin/loadgen/profile.rs`, compiled here as it is).
//!
//! What must hold: text is a profile or a parse / invalid-field error
//! (never a read error, never a panic); a profile that parses has passed
//! its checks, so everything loadgen derives from it is usable: at least
//! one mode, a send window or a request count that ends the run, durations
//! of at least a millisecond, and a rate at every instant that is finite,
//! not negative and not above the most a profile may ask for; in an open
//! loop, a rate whose gap to the next request is a duration.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../src/bin/loadgen/profile.rs"]
mod profile;

use profile::{ArrivalModel, Profile, ProfileError};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let p = match Profile::parse("fuzz.toml", text) {
        Ok(p) => p,
        Err(e @ (ProfileError::Parse { .. } | ProfileError::Invalid { .. })) => {
            assert!(e.to_string().starts_with("fuzz.toml: "), "{e}");
            return;
        }
        Err(e) => panic!("parsing text gave {e:?}"),
    };
    assert!(!p.modes.is_empty());
    let window = p.send_window();
    match p.arrival.model {
        ArrivalModel::Closed => {
            assert!(p.arrival.clients.is_some_and(|c| c >= 1));
            assert!(window.is_some(), "a closed loop that never stops");
        }
        ArrivalModel::Open | ArrivalModel::Poisson => {
            assert!(
                window.is_some() || p.stop.requests.is_some(),
                "an open loop that never stops"
            );
        }
    }
    // Durations loadgen waits for: at least a millisecond (a positive
    // number of seconds that rounds to no time at all is no limit).
    let ms = Duration::from_millis(1);
    if let Some(w) = window {
        assert!(ms <= w && w.as_secs_f64() <= 86_400.0, "send window {w:?}");
    }
    let drain = p.drain();
    assert!(drain >= ms, "drain {drain:?}");
    // The open loop sends at rate_at(t) and waits 1 / rate for the next
    // request (`run.rs`): within the window, a rate whose gap is a duration.
    let open = p.arrival.model != ArrivalModel::Closed;
    let end = window.map_or(1.0, |w| w.as_secs_f64());
    for i in 0..16 {
        let t = end * f64::from(i) / 16.0;
        let r = p.rate_at(t);
        assert!(r.is_finite() && (0.0..=1e6).contains(&r), "rate {r:e} at {t} s");
        if open {
            assert!(
                r > 0.0 && Duration::try_from_secs_f64(1.0 / r).is_ok(),
                "rate {r:e} at {t} s: no gap between requests"
            );
        }
    }
    let (lo, hi) = p.request.faces.bounds();
    assert!(1 <= lo && lo <= hi);
    assert!(p.request.faces.mean().is_finite());
    assert!(!p.arrival_line().is_empty());
});
