//! Face alignment: a least-squares similarity transform from 5 landmarks
//! onto the 112×112 ArcFace template, bilinear warping, and the model's
//! input normalisation.

use image::RgbImage;

/// Side of an aligned face.
pub const FACE_SIZE: usize = 112;

/// The ArcFace 5-point template in the 112×112 frame: left eye, right eye,
/// nose tip, left and right mouth corners.
pub const ARCFACE_TEMPLATE: [[f32; 2]; 5] = [
    [38.2946, 51.6963],
    [73.5318, 51.5014],
    [56.0252, 71.7366],
    [41.5493, 92.3655],
    [70.7299, 92.2041],
];

/// A dlib-style 150×150 face chip maps onto the ArcFace frame by this scale
/// and shift (per 150 pixels of chip).
pub const DLIB_CHIP_SCALE: f32 = 0.6869;
/// See [`DLIB_CHIP_SCALE`].
pub const DLIB_CHIP_SHIFT: [f32; 2] = [5.196, 20.27];

/// A 2-D similarity transform `p -> [a -b; b a] p + t` (rotation, uniform
/// scale, translation).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Similarity {
    /// `scale × cos(angle)`.
    pub a: f32,
    /// `scale × sin(angle)`.
    pub b: f32,
    /// Translation.
    pub t: [f32; 2],
}

impl Similarity {
    /// Maps a point.
    pub fn apply(&self, p: [f32; 2]) -> [f32; 2] {
        [
            self.a * p[0] - self.b * p[1] + self.t[0],
            self.b * p[0] + self.a * p[1] + self.t[1],
        ]
    }

    /// The inverse transform; `None` if degenerate (zero scale).
    pub fn inverse(&self) -> Option<Self> {
        let d = self.a * self.a + self.b * self.b;
        if !(d.is_finite() && d > 1e-12) {
            return None;
        }
        let (a, b) = (self.a / d, -self.b / d);
        let t = [-(a * self.t[0] - b * self.t[1]), -(b * self.t[0] + a * self.t[1])];
        Some(Self { a, b, t })
    }

    /// The least-squares similarity mapping `src[i]` onto `dst[i]` (the
    /// closed-form 2-D Umeyama solution). `None` if the source points all
    /// coincide or are not finite.
    pub fn estimate(src: &[[f32; 2]], dst: &[[f32; 2]]) -> Option<Self> {
        let n = src.len().min(dst.len());
        if n < 2 {
            return None;
        }
        let mean = |ps: &[[f32; 2]]| {
            let (x, y) = ps[..n].iter().fold((0.0, 0.0), |(x, y), p| (x + p[0], y + p[1]));
            [x / n as f32, y / n as f32]
        };
        let (ms, md) = (mean(src), mean(dst));
        let (mut num_a, mut num_b, mut den) = (0.0f32, 0.0f32, 0.0f32);
        for i in 0..n {
            let (sx, sy) = (src[i][0] - ms[0], src[i][1] - ms[1]);
            let (dx, dy) = (dst[i][0] - md[0], dst[i][1] - md[1]);
            num_a += sx * dx + sy * dy;
            num_b += sx * dy - sy * dx;
            den += sx * sx + sy * sy;
        }
        if !(den.is_finite() && den > 1e-6) {
            return None;
        }
        let (a, b) = (num_a / den, num_b / den);
        let t = [md[0] - (a * ms[0] - b * ms[1]), md[1] - (b * ms[0] + a * ms[1])];
        let s = Self { a, b, t };
        (a.is_finite() && b.is_finite() && t[0].is_finite() && t[1].is_finite()).then_some(s)
    }

    /// The mapping of a square dlib-style face chip of side `side` onto the
    /// ArcFace frame.
    pub fn dlib_chip(side: u32) -> Self {
        let a = DLIB_CHIP_SCALE * 150.0 / side.max(1) as f32;
        Self {
            a,
            b: 0.0,
            t: DLIB_CHIP_SHIFT,
        }
    }
}

/// Warps `img` into a `FACE_SIZE`² face with `to_face` (image → face frame),
/// sampling bilinearly and filling outside the image with black.
pub fn warp(img: &RgbImage, to_face: &Similarity) -> Option<RgbImage> {
    let inv = to_face.inverse()?;
    let (w, h) = (img.width() as i64, img.height() as i64);
    let mut out = RgbImage::new(FACE_SIZE as u32, FACE_SIZE as u32);
    let px = |x: i64, y: i64| -> [f32; 3] {
        if x < 0 || y < 0 || x >= w || y >= h {
            return [0.0; 3];
        }
        let p = img.get_pixel(x as u32, y as u32).0;
        [p[0] as f32, p[1] as f32, p[2] as f32]
    };
    for oy in 0..FACE_SIZE {
        for ox in 0..FACE_SIZE {
            let [sx, sy] = inv.apply([ox as f32, oy as f32]);
            let (x0, y0) = (sx.floor(), sy.floor());
            let (fx, fy) = (sx - x0, sy - y0);
            let (x0, y0) = (x0 as i64, y0 as i64);
            let (p00, p10, p01, p11) = (px(x0, y0), px(x0 + 1, y0), px(x0, y0 + 1), px(x0 + 1, y0 + 1));
            let mut v = [0u8; 3];
            for c in 0..3 {
                let top = p00[c] * (1.0 - fx) + p10[c] * fx;
                let bottom = p01[c] * (1.0 - fx) + p11[c] * fx;
                v[c] = (top * (1.0 - fy) + bottom * fy).round().clamp(0.0, 255.0) as u8;
            }
            out.put_pixel(ox as u32, oy as u32, image::Rgb(v));
        }
    }
    Some(out)
}

/// Writes an aligned face as the model's input: NCHW planes of RGB,
/// `(x - 127) / 128`, into `out` (length `3 × 112 × 112`).
pub fn to_input(face: &RgbImage, out: &mut [f32]) {
    let plane = FACE_SIZE * FACE_SIZE;
    for (i, p) in face.pixels().enumerate().take(plane) {
        for c in 0..3 {
            out[c * plane + i] = (f32::from(p.0[c]) - 127.0) / 128.0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimate_recovers_a_known_similarity() {
        let truth = Similarity {
            a: 0.8 * 0.3f32.cos(),
            b: 0.8 * 0.3f32.sin(),
            t: [12.0, -7.5],
        };
        let src = [
            [10.0, 20.0],
            [80.0, 22.0],
            [45.0, 60.0],
            [20.0, 90.0],
            [75.0, 88.0],
        ];
        let dst: Vec<[f32; 2]> = src.iter().map(|p| truth.apply(*p)).collect();
        let est = Similarity::estimate(&src, &dst).unwrap();
        assert!(
            (est.a - truth.a).abs() < 1e-5 && (est.b - truth.b).abs() < 1e-5,
            "{est:?}"
        );
        assert!((est.t[0] - truth.t[0]).abs() < 1e-3 && (est.t[1] - truth.t[1]).abs() < 1e-3);
        let inv = est.inverse().unwrap();
        let back = inv.apply(est.apply([33.0, 44.0]));
        assert!((back[0] - 33.0).abs() < 1e-3 && (back[1] - 44.0).abs() < 1e-3);
    }

    #[test]
    fn degenerate_points_give_none() {
        let same = [[5.0, 5.0]; 5];
        assert!(Similarity::estimate(&same, &ARCFACE_TEMPLATE).is_none());
        let nan = [[f32::NAN, 1.0]; 5];
        assert!(Similarity::estimate(&nan, &ARCFACE_TEMPLATE).is_none());
        assert!(Similarity {
            a: 0.0,
            b: 0.0,
            t: [0.0; 2]
        }
        .inverse()
        .is_none());
    }

    #[test]
    fn warp_of_the_identity_copies_and_fills_black() {
        let mut img = RgbImage::new(50, 50);
        img.put_pixel(10, 20, image::Rgb([200, 100, 50]));
        let id = Similarity {
            a: 1.0,
            b: 0.0,
            t: [0.0, 0.0],
        };
        let out = warp(&img, &id).unwrap();
        assert_eq!(out.get_pixel(10, 20).0, [200, 100, 50]);
        assert_eq!(out.get_pixel(100, 100).0, [0, 0, 0]);
        let mut input = vec![0.0; 3 * FACE_SIZE * FACE_SIZE];
        to_input(&out, &mut input);
        let i = 20 * FACE_SIZE + 10;
        assert!((input[i] - (200.0 - 127.0) / 128.0).abs() < 1e-6);
        assert!((input[FACE_SIZE * FACE_SIZE + i] - (100.0 - 127.0) / 128.0).abs() < 1e-6);
    }
}
