//! The pairs file reader of `compare --pairs` (`src/bin/compare/pairs.rs`,
//! compiled here as it is). The first byte of an input is a mode, the rest
//! the file:
//! - bits 0-3: the read buffer's capacity, 1 to 16 bytes;
//! - bit 7: the file starts with a line of `MAX_LINE - 64 + (bits 0-6)`
//!   bytes, so lines at and past the limit are reached.
//!
//! What must hold:
//! - the same pairs come out whatever the read buffer's size;
//! - a pair without an error has two fields with no comma and no
//!   surrounding white space, and a label only if it came with one;
//! - every error names its line, and line numbers only grow;
//! - no more pairs than lines.
#![no_main]

use std::io::{BufReader, Cursor};
use std::path::{Path, PathBuf};

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../src/bin/compare/pairs.rs"]
mod pairs;

use pairs::{PairsReader, MAX_LINE};

type Seen = (String, String, Option<bool>, Option<String>);

fn read(r: impl std::io::BufRead) -> Vec<Seen> {
    let dir = Path::new("pairs-dir");
    PairsReader::new(r, PathBuf::from(dir))
        .map(|p| {
            assert_eq!(p.dir, dir);
            (p.a, p.b, p.label, p.error)
        })
        .collect()
}

fn line_no(e: &str) -> usize {
    e.strip_prefix("line ")
        .and_then(|r| r.split(':').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("an error that names no line: {e:?}"))
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut text = Vec::new();
    if mode & 0x80 != 0 {
        text.resize(MAX_LINE - 64 + usize::from(mode & 0x7f), b'a');
    }
    text.extend_from_slice(rest);
    let whole = read(Cursor::new(&text));
    let small = read(BufReader::with_capacity(usize::from(mode & 0x0f) + 1, &text[..]));
    assert!(whole == small, "the pairs depend on the read buffer's size");
    let lines = text.split(|&b| b == b'\n').count();
    assert!(whole.len() <= lines, "{} pairs from {lines} lines", whole.len());
    let mut last = 0;
    for (a, b, label, error) in &whole {
        match error {
            Some(e) => {
                let n = line_no(e);
                assert!(n > last && n <= lines, "line {n} after line {last}, of {lines}");
                last = n;
                assert!(label.is_none(), "a label with an error");
            }
            None => {
                for f in [a, b] {
                    assert!(!f.contains(',') && f.trim() == f, "field {f:?}");
                    assert!(f.len() <= MAX_LINE);
                }
            }
        }
    }
});
