//! Shrinking an RGB image, or a box of it, to a model's input size: a SIMD
//! convolution resampler (`fast_image_resize`) with the triangle (bilinear)
//! filter widened to the scale, the filter `image::imageops::resize` applies
//! with `Triangle`, at a fraction of its cost on a camera frame (a 1080p
//! frame to the detector's 320 × 240 is most of that function's time).

use fast_image_resize::images::{TypedImage, TypedImageRef};
use fast_image_resize::pixels::U8x3;
use fast_image_resize::{FilterType, ResizeAlg, ResizeOptions, Resizer};
use image::RgbImage;

use super::FaceError;

/// One thread's resampler (it keeps its buffers from call to call).
#[derive(Default)]
pub struct Shrinker(Resizer);

impl std::fmt::Debug for Shrinker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Shrinker")
    }
}

impl Shrinker {
    /// `img`, or its box `[left, top, width, height]` (pixels), resampled to
    /// `w` × `h`.
    pub fn resize(
        &mut self,
        img: &RgbImage,
        crop: Option<[u32; 4]>,
        w: u32,
        h: u32,
    ) -> Result<RgbImage, FaceError> {
        let err = |e: &dyn std::fmt::Display| FaceError::BadOutput(format!("resize: {e}"));
        // Typed to RGB8: the untyped `resize` dispatches on the pixel type
        // at run time, so every pixel type's kernels (a dozen, each for
        // every SIMD extension) would be compiled into facepool: half its
        // machine code, and minutes of every build.
        let src = TypedImageRef::<U8x3>::from_buffer(img.width(), img.height(), img.as_raw())
            .map_err(|e| err(&e))?;
        let mut out = vec![0u8; w as usize * h as usize * 3];
        let mut dst = TypedImage::<U8x3>::from_buffer(w, h, &mut out).map_err(|e| err(&e))?;
        let mut options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear));
        if let Some([l, t, cw, ch]) = crop {
            options = options.crop(f64::from(l), f64::from(t), f64::from(cw), f64::from(ch));
        }
        self.0
            .resize_typed(&src, &mut dst, &options)
            .map_err(|e| err(&e))?;
        drop(dst);
        RgbImage::from_raw(w, h, out).ok_or_else(|| err(&"buffer of the wrong size"))
    }
}

#[cfg(test)]
mod tests {
    use image::imageops::{self, FilterType};

    use super::*;

    /// The same filter as `image`'s Triangle: the same picture within a
    /// rounding step or two per channel, whole and cropped.
    #[test]
    fn matches_the_image_crate_triangle_filter() {
        let img = RgbImage::from_fn(1280, 720, |x, y| {
            image::Rgb([(x % 256) as u8, (y % 256) as u8, ((x * 7 + y * 13) % 256) as u8])
        });
        let mut s = Shrinker::default();
        let ours = s.resize(&img, None, 320, 240).unwrap();
        let theirs = imageops::resize(&img, 320, 240, FilterType::Triangle);
        let worst = ours
            .as_raw()
            .iter()
            .zip(theirs.as_raw())
            .map(|(a, b)| a.abs_diff(*b))
            .max()
            .unwrap();
        assert!(worst <= 2, "largest difference {worst}");
        let crop = imageops::crop_imm(&img, 100, 50, 300, 280).to_image();
        let ours = s.resize(&img, Some([100, 50, 300, 280]), 64, 64).unwrap();
        let theirs = imageops::resize(&crop, 64, 64, FilterType::Triangle);
        let mean = ours
            .as_raw()
            .iter()
            .zip(theirs.as_raw())
            .map(|(a, b)| f64::from(a.abs_diff(*b)))
            .sum::<f64>()
            / ours.as_raw().len() as f64;
        assert!(mean < 1.0, "mean difference {mean}");
    }
}
