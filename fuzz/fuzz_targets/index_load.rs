//! Index file load. The first byte of an input is a mode, the rest is the
//! file. Mode bits, so that the fuzzer gets past the checksums to the
//! structure behind them:
//! - bit 0: make the header's length fields agree with the file's length
//!   (the people section takes what the vectors leave);
//! - bit 1: write correct checksums (header and whole file).
//!
//! What must hold:
//! - a file that does not load is rejected with `NotAnIndex`, `Version` or
//!   `Corrupt` (never an I/O error: the file is there and readable, so a
//!   read past its end means a size was trusted that should not have been);
//! - a file that loads has a dimension in 1..=MAX_DIM, as many vectors and
//!   people as its header says, and saves back to exactly the same bytes
//!   (a format-1 file: to a format-2 file that itself loads and saves back
//!   to the same bytes).
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use facepool::index::{stored_codes_len, Index, IndexError, FORMAT_VERSION, MAGIC, MAX_DIM};
use facepool_fuzz::scratch;
use libfuzzer_sys::fuzz_target;

const HEADER: usize = 48;
const TRAILER: usize = 8;

fn dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| scratch("index"))
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// The file the input stands for.
fn file_of(data: &[u8]) -> Vec<u8> {
    let Some((&mode, rest)) = data.split_first() else {
        return Vec::new();
    };
    let mut f = rest.to_vec();
    if f.len() < HEADER + TRAILER {
        return f;
    }
    if mode & 1 != 0 {
        let dim = u64::from(u32_at(&f, 12));
        let vectors = u64_at(&f, 24);
        let codes = match u32_at(&f, 8) {
            1 => Some(0),
            _ => stored_codes_len(dim as usize, vectors),
        };
        let rows = vectors
            .checked_mul(4 * (dim + 1))
            .and_then(|r| r.checked_add(codes?));
        let left = (f.len() - HEADER - TRAILER) as u64;
        if let Some(people_bytes) = rows.and_then(|r| left.checked_sub(r)) {
            f[32..40].copy_from_slice(&people_bytes.to_le_bytes());
        }
    }
    if mode & 2 != 0 {
        let crc = crc32fast::hash(&f[..44]);
        f[44..48].copy_from_slice(&crc.to_le_bytes());
        let end = f.len() - TRAILER;
        let crc = crc32fast::hash(&f[..end]);
        f[end..end + 4].copy_from_slice(&crc.to_le_bytes());
    }
    f
}

fuzz_target!(|data: &[u8]| {
    let file = file_of(data);
    let path = dir().join("in.idx");
    std::fs::write(&path, &file).expect("the scratch file is written");
    match Index::load(&path) {
        Ok(index) => {
            assert!(file.len() >= HEADER + TRAILER && file[..8] == MAGIC);
            assert!((1..=MAX_DIM).contains(&index.dim()));
            assert_eq!(index.dim() as u64, u64::from(u32_at(&file, 12)));
            assert_eq!(index.len() as u64, u64_at(&file, 16), "people");
            assert_eq!(index.vectors() as u64, u64_at(&file, 24), "vectors");
            let out = dir().join("out.idx");
            index.save(&out).expect("a loaded index saves");
            let mut saved = std::fs::read(&out).expect("the saved file reads");
            let mut file = file;
            if u32_at(&file, 8) != FORMAT_VERSION {
                // An older format: the saved file is the reference.
                let again = Index::load(&out).expect("a saved file loads");
                assert_eq!((again.len(), again.vectors()), (index.len(), index.vectors()));
                file = std::mem::take(&mut saved);
                again.save(&out).expect("a loaded index saves");
                saved = std::fs::read(&out).expect("the saved file reads");
            }
            assert!(
                saved == file,
                "a loaded file saves to other bytes ({} bytes in, {} out, first difference at {:?})",
                file.len(),
                saved.len(),
                saved.iter().zip(&file).position(|(a, b)| a != b)
            );
        }
        Err(IndexError::NotAnIndex { .. } | IndexError::Version { .. } | IndexError::Corrupt { .. }) => {}
        Err(e) => panic!("a damaged file gave {e:?}"),
    }
});
