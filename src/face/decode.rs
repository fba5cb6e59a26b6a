//! Image decoding with limits checked before pixels are allocated, EXIF
//! orientation applied, and every colour type converted to 8-bit RGB.

use std::io::Cursor;

use image::{DynamicImage, ImageDecoder, ImageReader, RgbImage};

use super::FaceError;

/// Limits on what will be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest encoded file, bytes.
    pub max_file_bytes: u64,
    /// Largest width, pixels.
    pub max_width: u32,
    /// Largest height, pixels.
    pub max_height: u32,
    /// Largest width × height.
    pub max_pixels: u64,
    /// Largest image as the decoder holds it, in its own pixel format
    /// (a 16-bit RGBA image is 8 bytes a pixel, an 8-bit RGB one 3), bytes:
    /// with `max_pixels`, what bounds a decode's memory.
    pub max_decoded_bytes: u64,
}

impl Default for DecodeLimits {
    /// 32 MiB files, 8192 × 8192 at most, 40 megapixels, 128 MiB decoded
    /// (40 megapixels of 8-bit RGB, 16 of 16-bit RGBA).
    fn default() -> Self {
        Self {
            max_file_bytes: 32 << 20,
            max_width: 8192,
            max_height: 8192,
            max_pixels: 40_000_000,
            max_decoded_bytes: 128 << 20,
        }
    }
}

/// The smallest side accepted (a face chip smaller than this is useless).
pub const MIN_SIDE: u32 = 16;

fn decode_err(e: image::ImageError, limits: &DecodeLimits) -> FaceError {
    match e {
        image::ImageError::Unsupported(u) => FaceError::Unsupported(u.to_string()),
        // The decoder checks the header's dimensions against the same
        // limits (some formats read past the header before we could).
        image::ImageError::Limits(l) => FaceError::TooLarge(format!(
            "{l} (at most {}x{}, {} pixels)",
            limits.max_width, limits.max_height, limits.max_pixels
        )),
        other => FaceError::Decode(other.to_string()),
    }
}

/// Decodes `bytes` (JPEG, PNG, WebP, BMP, or the first frame of a GIF) to
/// RGB, applying EXIF orientation. Dimensions are checked against `limits`
/// from the header, before the pixels are allocated.
pub fn decode(bytes: &[u8], limits: &DecodeLimits) -> Result<RgbImage, FaceError> {
    let size = bytes.len() as u64;
    if size > limits.max_file_bytes {
        return Err(FaceError::FileTooLarge {
            size,
            limit: limits.max_file_bytes,
        });
    }
    if bytes.is_empty() {
        return Err(FaceError::Unsupported("empty file".into()));
    }
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| FaceError::Decode(e.to_string()))?;
    match reader.format() {
        None => return Err(FaceError::Unsupported("unrecognised file signature".into())),
        Some(image::ImageFormat::Jpeg) if truncated_jpeg(bytes) => {
            return Err(FaceError::Decode(
                "truncated JPEG: no end-of-image marker after the scan".into(),
            ))
        }
        Some(_) => {}
    }
    let mut l = image::Limits::default();
    // The decoder checks the sides as stored, before the EXIF orientation
    // turns them: either may be the longer limit here; the sides as shown
    // are checked below.
    let side = limits.max_width.max(limits.max_height);
    l.max_image_width = Some(side);
    l.max_image_height = Some(side);
    // What the decoder may hold: the image in its own pixel format.
    l.max_alloc = Some(limits.max_decoded_bytes.min(limits.max_pixels.saturating_mul(8)));
    reader.limits(l);
    let mut decoder = reader.into_decoder().map_err(|e| decode_err(e, limits))?;
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    // The limits are on the image as shown: a quarter turn swaps its sides
    // (found by the decode fuzz target: a 120x20 JPEG turned by its EXIF
    // tag came out 20x120, past a height limit of 96).
    let (stored_w, stored_h) = decoder.dimensions();
    let (width, height) = if quarter_turn(orientation) {
        (stored_h, stored_w)
    } else {
        (stored_w, stored_h)
    };
    check_dimensions(width, height, limits)?;
    let held = decoder.total_bytes();
    if held > limits.max_decoded_bytes {
        return Err(FaceError::TooLarge(format!(
            "{width}x{height} decodes to {held} bytes, at most {}",
            limits.max_decoded_bytes
        )));
    }
    // To 8-bit RGB first, then turned: the decoded image and the turned one
    // are never held at their own (larger) pixel size together.
    let rgb = DynamicImage::from_decoder(decoder)
        .map_err(|e| decode_err(e, limits))?
        .into_rgb8();
    let mut img = DynamicImage::ImageRgb8(rgb);
    img.apply_orientation(orientation);
    Ok(match img {
        DynamicImage::ImageRgb8(rgb) => rgb,
        other => other.to_rgb8(),
    })
}

/// Whether an EXIF orientation swaps the width and the height.
fn quarter_turn(o: image::metadata::Orientation) -> bool {
    use image::metadata::Orientation::*;
    matches!(o, Rotate90 | Rotate270 | Rotate90FlipH | Rotate270FlipH)
}

/// A JPEG whose last scan (SOS marker) is not followed by an end-of-image
/// marker was cut short. The decoder would fill the missing part with grey
/// and return a half image; a face from it would be wrong, not an error.
fn truncated_jpeg(bytes: &[u8]) -> bool {
    let last = |marker: u8| bytes.windows(2).rposition(|w| w[0] == 0xFF && w[1] == marker);
    match (last(0xDA), last(0xD9)) {
        (Some(sos), Some(eoi)) => eoi < sos,
        (Some(_), None) => true,
        _ => false,
    }
}

fn check_dimensions(width: u32, height: u32, limits: &DecodeLimits) -> Result<(), FaceError> {
    let too_large = |why: String| FaceError::TooLarge(format!("{width}x{height}, {why}"));
    if width > limits.max_width || height > limits.max_height {
        return Err(too_large(format!(
            "at most {}x{}",
            limits.max_width, limits.max_height
        )));
    }
    if u64::from(width) * u64::from(height) > limits.max_pixels {
        return Err(too_large(format!("at most {} pixels", limits.max_pixels)));
    }
    if width < MIN_SIDE || height < MIN_SIDE {
        return Err(FaceError::TooSmall { width, height });
    }
    Ok(())
}

/// Reads an image file, at most `limits.max_file_bytes` of it (a larger
/// file is refused, also one that grows while it is read).
pub fn read_file(path: &std::path::Path, limits: &DecodeLimits) -> Result<Vec<u8>, FaceError> {
    use std::io::Read;
    let io = |e: std::io::Error| FaceError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let size = file.metadata().map_err(io)?.len();
    let too_large = |size| FaceError::FileTooLarge {
        size,
        limit: limits.max_file_bytes,
    };
    if size > limits.max_file_bytes {
        return Err(too_large(size));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    file.take(limits.max_file_bytes.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > limits.max_file_bytes {
        return Err(too_large(bytes.len() as u64));
    }
    Ok(bytes)
}

/// Reads ([`read_file`]) and decodes an image file.
pub fn decode_file(path: &std::path::Path, limits: &DecodeLimits) -> Result<RgbImage, FaceError> {
    decode(&read_file(path, limits)?, limits)
}
