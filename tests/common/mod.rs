//! Helpers shared by the integration tests: gates to hold jobs, bounded
//! polling of a condition (a guard against hangs, never a timing assertion),
//! the fetched models and labelled photos, temporary folders, base64, EXIF
//! orientation, and the books of the pool and the batcher (every submit
//! has exactly one outcome).
#![allow(dead_code)]

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// A gate that jobs wait on until the test opens it.
#[derive(Clone, Default)]
pub struct Gate(Arc<(Mutex<bool>, Condvar)>);

impl Gate {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn wait(&self) {
        let (m, cv) = &*self.0;
        let mut open = m.lock().unwrap();
        while !*open {
            open = cv.wait(open).unwrap();
        }
    }
    pub fn open(&self) {
        let (m, cv) = &*self.0;
        *m.lock().unwrap() = true;
        cv.notify_all();
    }
}

/// Polls `cond` until it holds; panics with `what` if it does not within a
/// generous bound (a failure, not a measurement).
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let limit = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < limit, "timed out waiting for: {what}");
        std::thread::yield_now();
    }
}

/// A tiny deterministic generator (xorshift64*), so stress tests need no
/// extra crate and a failing seed can be replayed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// True with probability `per_mille` / 1000.
    pub fn chance(&mut self, per_mille: u64) -> bool {
        self.next() % 1000 < per_mille
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The fetched models and photos (the test command fetches them first).
pub fn assets() -> std::path::PathBuf {
    let a = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets");
    assert!(
        a.join("models/fr_feature.onnx").is_file(),
        "assets missing: run scripts/fetch-assets.sh (the test command does)"
    );
    a
}

/// The labelled photos of one person, sorted.
pub fn photos_of(person: &str) -> Vec<std::path::PathBuf> {
    let dir = assets().join("photos/johns").join(person);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
}

/// The labelled photos: (person, their photos sorted), people sorted.
pub fn johns() -> Vec<(String, Vec<std::path::PathBuf>)> {
    let mut people: Vec<String> = std::fs::read_dir(assets().join("photos/johns"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    people.sort();
    people
        .into_iter()
        .map(|p| {
            let files = photos_of(&p);
            (p, files)
        })
        .collect()
}

/// A fresh directory under the system's temp dir, removed on drop.
pub struct TempDir(std::path::PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!("facepool-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Base64 of `bytes` (the API's image encoding).
pub fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Base64 of a file's bytes.
pub fn b64_file(path: &std::path::Path) -> String {
    b64(&std::fs::read(path).unwrap())
}

/// `jpeg` with an EXIF orientation tag: an APP1 segment right after the
/// start-of-image marker.
pub fn with_orientation(jpeg: &[u8], orientation: u16) -> Vec<u8> {
    let mut tiff = b"II*\0".to_vec();
    tiff.extend_from_slice(&8u32.to_le_bytes());
    tiff.extend_from_slice(&1u16.to_le_bytes());
    tiff.extend_from_slice(&0x0112u16.to_le_bytes());
    tiff.extend_from_slice(&3u16.to_le_bytes());
    tiff.extend_from_slice(&1u32.to_le_bytes());
    tiff.extend_from_slice(&orientation.to_le_bytes());
    tiff.extend_from_slice(&[0, 0]);
    tiff.extend_from_slice(&0u32.to_le_bytes());
    let mut app1 = vec![0xFF, 0xE1];
    app1.extend_from_slice(&((2 + 6 + tiff.len()) as u16).to_be_bytes());
    app1.extend_from_slice(b"Exif\0\0");
    app1.extend_from_slice(&tiff);
    let mut out = jpeg[..2].to_vec();
    out.extend_from_slice(&app1);
    out.extend_from_slice(&jpeg[2..]);
    out
}

/// Appends a PNG chunk (length, kind, data, CRC) to `out`.
pub fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(kind);
    crc.update(data);
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    out.extend_from_slice(&crc.finalize().to_be_bytes());
}

/// The batcher's books balance: every item submitted had exactly one
/// outcome.
pub fn batch_balanced(s: &facepool::batch::BatchStats) {
    assert_eq!(
        s.submitted,
        s.delivered + s.failed + s.expired + s.abandoned + s.cancelled + s.rejected,
        "every submit has exactly one outcome: {s:?}"
    );
}

/// The pool's books balance: every job submitted had exactly one outcome.
pub fn pool_balanced(s: &facepool::pool::PoolStats) {
    assert_eq!(
        s.submitted,
        s.completed + s.panicked + s.expired + s.cancelled + s.rejected,
        "every submit has exactly one outcome: {s:?}"
    );
}

#[cfg(feature = "serve")]
pub mod nats;
#[cfg(feature = "serve")]
pub mod serve;

/// Rewrites an index file's whole-file checksum so that a change gets
/// past it.
pub fn reseal(b: &mut [u8]) {
    let n = b.len() - 8;
    let crc = crc32fast::hash(&b[..n]);
    b[n..n + 4].copy_from_slice(&crc.to_le_bytes());
}

/// Rewrites an index file's header checksum.
pub fn reseal_header(b: &mut [u8]) {
    let crc = crc32fast::hash(&b[..44]);
    b[44..48].copy_from_slice(&crc.to_le_bytes());
}

/// A format-2 index file's bytes as format 1 wrote them: without the
/// codes section.
#[cfg(feature = "index")]
pub fn as_format_1(v2: &[u8], dim: usize, vectors: u64) -> Vec<u8> {
    let codes = facepool::index::stored_codes_len(dim, vectors).unwrap() as usize;
    let end = v2.len() - 8;
    let mut b = [&v2[..end - codes], &v2[end..]].concat();
    b[8..12].copy_from_slice(&1u32.to_le_bytes());
    reseal_header(&mut b);
    reseal(&mut b);
    b
}

/// Side of one cell of [`grid_frame`], pixels.
pub const CELL: u32 = 250;

#[cfg(feature = "face")]
/// A JPEG of `photos` (the labelled 250 × 250 photos) in a grid two cells
/// wide on a grey frame, row by row: a frame with several faces, each
/// face's person known by its cell ([`cell_of`]).
pub fn grid_frame(photos: &[std::path::PathBuf]) -> Vec<u8> {
    let rows = photos.len().div_ceil(2) as u32;
    let mut frame = image::RgbImage::from_pixel(2 * CELL, rows * CELL, image::Rgb([120, 120, 120]));
    for (i, p) in photos.iter().enumerate() {
        let photo = image::open(p).unwrap().to_rgb8();
        let (x, y) = ((i as u32 % 2) * CELL, (i as u32 / 2) * CELL);
        image::imageops::overlay(&mut frame, &photo, x.into(), y.into());
    }
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
        .encode_image(&frame)
        .unwrap();
    out
}

/// The cell of [`grid_frame`] that a face's box (left, top, right,
/// bottom) is centred in.
pub fn cell_of(b: [f32; 4]) -> usize {
    let (x, y) = ((b[0] + b[2]) / 2.0, (b[1] + b[3]) / 2.0);
    (y / CELL as f32) as usize * 2 + (x / CELL as f32) as usize
}
