//! The core budget as a pure function: what each stage gets from the cores
//! and the user's pins.
#![cfg(feature = "face")]

use facepool::service::budget::{split, Pins, Split};

fn s(workers: usize, inference_threads: usize, intra_threads: usize) -> Split {
    Split {
        workers,
        inference_threads,
        intra_threads,
    }
}

fn pins(w: Option<usize>, i: Option<usize>, intra: Option<usize>) -> Pins {
    Pins {
        workers: w,
        inference_threads: i,
        intra_threads: intra,
    }
}

#[test]
fn split_table() {
    let table = [
        // (cores, pins, expected, why)
        (
            2,
            pins(None, None, None),
            s(2, 2, 1),
            "no split: every stage may use every core",
        ),
        (1, pins(None, None, None), s(1, 1, 1), "one core"),
        (16, pins(None, None, None), s(16, 16, 1), "many cores"),
        (
            0,
            pins(None, None, None),
            s(1, 1, 1),
            "no cores reported: one of each",
        ),
        (
            2,
            pins(Some(1), None, None),
            s(1, 2, 1),
            "pinned workers keep the rest",
        ),
        (
            2,
            pins(None, Some(1), None),
            s(2, 1, 1),
            "pinned inference threads",
        ),
        (
            4,
            pins(None, None, Some(2)),
            s(4, 2, 2),
            "intra-op threads divide the inference threads",
        ),
        (
            2,
            pins(None, None, Some(4)),
            s(2, 1, 4),
            "more intra-op threads than cores: one inference thread",
        ),
        (
            8,
            pins(Some(3), Some(5), Some(1)),
            s(3, 5, 1),
            "everything pinned",
        ),
        (2, pins(Some(0), Some(0), Some(0)), s(1, 1, 1), "a pin of 0 is 1"),
    ];
    for (cores, p, want, why) in table {
        assert_eq!(split(cores, p), want, "{why}: {cores} cores, {p:?}");
    }
}
