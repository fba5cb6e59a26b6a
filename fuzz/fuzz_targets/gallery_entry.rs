//! What the fleet gallery reads from its broker (`src/gallery/entry.rs`,
//! `src/gallery/kv.rs`): a person's entry, and the key it is stored under.
//!
//! The first byte picks the vector length (1 to 64) an entry is read
//! with; the rest are the entry's bytes, and also, as text, a key.
//!
//! What must hold: bytes give an entry or an error, never a panic and
//! never an allocation past what the bytes hold; an entry has 1 to
//! `MAX_FACES` faces of that length, all finite, and encodes back to the
//! very same bytes (the format has one spelling); a key gives a person's
//! id or nothing, and an id gives back the same key.
#![no_main]

use facepool::gallery::{id_of, key_of, Entry, MAX_FACES};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let dim = usize::from(first % 64) + 1;
    if let Ok(entry) = Entry::decode(rest, dim) {
        assert!((1..=MAX_FACES).contains(&entry.faces()));
        assert_eq!(entry.dim(), dim);
        assert!(entry
            .vectors()
            .all(|v| v.len() == dim && v.iter().all(|x| x.is_finite())));
        assert!(
            entry.encode() == rest,
            "an entry does not encode back to its bytes"
        );
    }
    if let Ok(text) = std::str::from_utf8(rest) {
        if let Some(id) = id_of(text) {
            assert!(!id.is_empty());
            assert_eq!(key_of(&id), text);
        }
    }
});
