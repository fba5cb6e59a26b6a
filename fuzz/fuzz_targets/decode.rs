//! Image decoding with limits: every input ends in an RGB image within the
//! limits or a decode `FaceError`; no panic; no more memory held than the
//! limits allow (pixels × 20 for the decoder's own buffers, an oriented
//! copy and the RGB result, plus a fixed slack and a few times the input).
//! Each input is decoded twice: with the default limits, and with small,
//! non-square ones (so rotated EXIF orientations meet a limit that differs
//! by axis).
#![no_main]

use facepool::face::decode::MIN_SIDE;
use facepool::face::{decode, DecodeLimits, FaceError};
use facepool_fuzz::{peak_of, Counting};
use libfuzzer_sys::fuzz_target;

#[global_allocator]
static ALLOC: Counting = Counting;

const SMALL: DecodeLimits = DecodeLimits {
    max_file_bytes: 1 << 20,
    max_width: 256,
    max_height: 96,
    max_pixels: 16_384,
    max_decoded_bytes: 16_384 * 8,
};

fn check(data: &[u8], limits: &DecodeLimits) {
    let (result, peak) = peak_of(|| decode(data, limits));
    let bound = 20 * limits.max_pixels as usize + (32 << 20) + 4 * data.len();
    assert!(
        peak <= bound,
        "decoding {} bytes held {peak} bytes at most, over {bound} for {limits:?}",
        data.len()
    );
    match result {
        Ok(img) => {
            let (w, h) = img.dimensions();
            assert!(
                w <= limits.max_width
                    && h <= limits.max_height
                    && u64::from(w) * u64::from(h) <= limits.max_pixels,
                "{w}x{h} decoded past the limits {limits:?}"
            );
            assert!(
                w >= MIN_SIDE && h >= MIN_SIDE,
                "{w}x{h} is under the smallest side"
            );
            assert_eq!(img.as_raw().len(), 3 * w as usize * h as usize);
            assert!(data.len() as u64 <= limits.max_file_bytes);
        }
        Err(
            FaceError::FileTooLarge { .. }
            | FaceError::TooLarge(_)
            | FaceError::TooSmall { .. }
            | FaceError::Unsupported(_)
            | FaceError::Decode(_),
        ) => {}
        Err(other) => panic!("decode gave an error that is not about the image: {other:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    check(data, &DecodeLimits::default());
    check(data, &SMALL);
});
