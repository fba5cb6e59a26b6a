//! The face pipeline on the real models and the 55 labelled photos (fetched
//! by `scripts/fetch-assets.sh`, which the test command runs first).
#![cfg(feature = "face")]

use crate::common;

use common::assets;
use facepool::face::{
    self, align, DecodeLimits, DetectModels, Embedder, Embedding, FaceError, FaceInput, FaceMode,
    FindOptions, Similarity, TractModel, DEFAULT_THRESHOLD,
};
use image::RgbImage;

/// The labelled photos: (person, image), sorted.
fn photos() -> Vec<(String, RgbImage)> {
    let mut out = Vec::new();
    for (name, files) in common::johns() {
        for f in files {
            out.push((
                name.clone(),
                face::decode_file(&f, &DecodeLimits::default()).unwrap(),
            ));
        }
    }
    assert_eq!(out.len(), 55);
    out
}

fn model(sizes: &[usize]) -> TractModel {
    TractModel::load(&assets().join("models/fr_feature.onnx"), sizes).unwrap()
}

fn aligned_input(img: &RgbImage) -> FaceInput {
    let opts = FindOptions {
        mode: FaceMode::Aligned,
        ..FindOptions::default()
    };
    face::find_faces(img, None, &opts).unwrap().remove(0).input
}

fn embed_all(e: &mut impl Embedder, faces: &[FaceInput]) -> Vec<Embedding> {
    e.embed(faces).unwrap().into_iter().map(Result::unwrap).collect()
}

#[test]
fn labelled_photos_separate_at_the_threshold() {
    let photos = photos();
    let m = model(&[1]);
    assert_eq!(m.dim(), 512);
    let mut e = m.embedder().unwrap();
    let inputs: Vec<FaceInput> = photos.iter().map(|(_, img)| aligned_input(img)).collect();
    let embs = embed_all(&mut e, &inputs);
    let (mut same_min, mut diff_max, mut wrong, mut pairs) = (1.0f32, -1.0f32, 0, 0);
    let mut nn_correct = 0;
    for i in 0..embs.len() {
        let mut best = (-2.0f32, 0);
        for j in 0..embs.len() {
            if i == j {
                continue;
            }
            let s = embs[i].cosine(&embs[j]);
            if s > best.0 {
                best = (s, j);
            }
            if j > i {
                pairs += 1;
                let same = photos[i].0 == photos[j].0;
                if same {
                    same_min = same_min.min(s);
                } else {
                    diff_max = diff_max.max(s);
                }
                wrong += usize::from(same != (s >= DEFAULT_THRESHOLD));
            }
        }
        nn_correct += usize::from(photos[best.1].0 == photos[i].0);
    }
    println!(
        "{pairs} pairs: {} wrong at threshold {DEFAULT_THRESHOLD}; same-person min {same_min:.3}, \
         different-person max {diff_max:.3}; nearest neighbour {nn_correct}/55",
        wrong
    );
    assert_eq!(pairs, 1485);
    assert_eq!(wrong, 0, "same min {same_min}, diff max {diff_max}");
    assert_eq!(nn_correct, 55);
}

#[test]
fn embeddings_do_not_depend_on_the_batch() {
    let photos = photos();
    let inputs: Vec<FaceInput> = photos
        .iter()
        .take(11)
        .map(|(_, img)| aligned_input(img))
        .collect();
    let one = {
        let mut e = model(&[1]).embedder().unwrap();
        inputs
            .iter()
            .map(|f| embed_all(&mut e, std::slice::from_ref(f)).remove(0))
            .collect::<Vec<_>>()
    };
    let m = model(&[2, 8]);
    let mut e = m.embedder().unwrap();
    assert_eq!(e.batch_sizes(), [1, 2, 8]);
    // Exactly 2 and exactly 8 use those plans (the model's [1,-1] reshape
    // returns [1, b x 512]); 11 is split 8 + 2 + 1.
    for n in [2, 8, 11] {
        let got = embed_all(&mut e, &inputs[..n]);
        assert_eq!(got.len(), n);
        for (a, b) in got.iter().zip(&one) {
            let diff =
                a.0.iter()
                    .zip(&b.0)
                    .map(|(x, y)| (x - y).abs())
                    .fold(0.0f32, f32::max);
            assert!(diff < 1e-5, "batch {n}: max difference {diff}");
        }
    }
}

#[test]
fn the_group_photo_has_many_faces() {
    let det = DetectModels::load(
        &assets().join("models/fr_detect.onnx"),
        Some(&assets().join("models/fr_landmark.onnx")),
    )
    .unwrap();
    let mut d = det.detector().unwrap();
    let img = face::decode_file(
        &assets().join("photos/faces/bald_guys.jpg"),
        &DecodeLimits::default(),
    )
    .unwrap();
    let opts = FindOptions {
        mode: FaceMode::Detect,
        all_faces: true,
        ..FindOptions::default()
    };
    let faces = face::find_faces(&img, Some(&mut d), &opts).unwrap();
    println!("bald_guys.jpg: {} faces", faces.len());
    assert!(faces.len() >= 5, "found {} faces", faces.len());
    // A photo without faces: a clear error.
    let blank = RgbImage::from_pixel(320, 240, image::Rgb([128, 128, 128]));
    assert_eq!(
        face::find_faces(&blank, Some(&mut d), &opts).unwrap_err(),
        FaceError::NoFace
    );
}

fn png_with_header(width: u32, height: u32) -> Vec<u8> {
    let mut v = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    v.extend_from_slice(&13u32.to_be_bytes());
    v.extend_from_slice(&ihdr);
    v.extend_from_slice(&crc32fast::hash(&ihdr).to_be_bytes());
    v
}

fn encode(img: &image::DynamicImage, format: image::ImageFormat) -> Vec<u8> {
    let mut buf = std::io::Cursor::new(Vec::new());
    img.write_to(&mut buf, format).unwrap();
    buf.into_inner()
}

#[test]
fn bad_inputs_end_in_clear_errors_or_correct_results() {
    let limits = DecodeLimits::default();
    let chip = std::fs::read(
        assets()
            .join("photos/johns/John_Simm")
            .read_dir()
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path(),
    )
    .unwrap();
    let decoded = face::decode(&chip, &limits).unwrap();
    let dynimg = image::DynamicImage::ImageRgb8(decoded.clone());

    let errs: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        (
            "random bytes",
            (0..5000u32)
                .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
                .collect(),
        ),
        (
            "text named .jpg",
            b"this is not an image, whatever its name says\n".to_vec(),
        ),
        ("truncated JPEG", chip[..chip.len() / 3].to_vec()),
        (
            "PNG header claiming 100000x100000",
            png_with_header(100_000, 100_000),
        ),
        (
            "1x1 PNG",
            encode(
                &image::DynamicImage::ImageRgb8(RgbImage::new(1, 1)),
                image::ImageFormat::Png,
            ),
        ),
    ];
    for (what, bytes) in errs {
        match face::decode(&bytes, &limits) {
            Err(e) => println!("{what}: {e}"),
            Ok(img) => panic!("{what}: decoded to {}x{}", img.width(), img.height()),
        }
    }
    assert!(matches!(
        face::decode(&png_with_header(100_000, 100_000), &limits),
        Err(FaceError::TooLarge(_))
    ));
    assert!(matches!(
        face::decode(&vec![0u8; 40 << 20], &limits),
        Err(FaceError::FileTooLarge { .. })
    ));

    // Formats and colour types that must work and give the same face.
    let m = model(&[1]);
    let mut e = m.embedder().unwrap();
    let reference = embed_all(&mut e, &[aligned_input(&decoded)]).remove(0);
    let sixteen =
        image::DynamicImage::ImageRgb16(image::DynamicImage::ImageRgb8(decoded.clone()).into_rgb16());
    let rgba = image::DynamicImage::ImageRgba8(dynimg.to_rgba8());
    let mut gif = Vec::new();
    {
        let mut enc = image::codecs::gif::GifEncoder::new(&mut gif);
        let frame = |img: &image::DynamicImage| image::Frame::new(img.to_rgba8());
        let other = image::DynamicImage::ImageRgb8(RgbImage::from_pixel(150, 150, image::Rgb([0, 0, 255])));
        enc.encode_frames(vec![frame(&dynimg), frame(&other)]).unwrap();
    }
    let mut cmyk = Vec::new();
    {
        let px: Vec<u8> = decoded
            .pixels()
            .flat_map(|p| {
                let [r, g, b] = p.0;
                let k = 255 - r.max(g).max(b);
                let c = |v: u8| {
                    if k == 255 {
                        0
                    } else {
                        ((255 - v - k) as u32 * 255 / (255 - k) as u32) as u8
                    }
                };
                [c(r), c(g), c(b), k]
            })
            .collect();
        let enc = jpeg_encoder::Encoder::new(&mut cmyk, 95);
        enc.encode(&px, 150, 150, jpeg_encoder::ColorType::Cmyk).unwrap();
    }
    let ok: Vec<(&str, Vec<u8>, f32)> = vec![
        ("PNG", encode(&dynimg, image::ImageFormat::Png), 0.999),
        ("16-bit PNG", encode(&sixteen, image::ImageFormat::Png), 0.999),
        ("RGBA PNG", encode(&rgba, image::ImageFormat::Png), 0.999),
        ("BMP", encode(&dynimg, image::ImageFormat::Bmp), 0.999),
        ("WebP (lossless)", encode(&rgba, image::ImageFormat::WebP), 0.999),
        ("animated GIF (first frame)", gif, 0.9),
        ("CMYK JPEG", cmyk, 0.9),
        (
            "grey JPEG",
            encode(
                &image::DynamicImage::ImageLuma8(dynimg.to_luma8()),
                image::ImageFormat::Jpeg,
            ),
            0.8,
        ),
    ];
    for (what, bytes, min) in ok {
        let img = face::decode(&bytes, &limits).unwrap_or_else(|e| panic!("{what}: {e}"));
        let mad: f64 = img
            .as_raw()
            .iter()
            .zip(decoded.as_raw())
            .map(|(a, b)| (*a as f64 - *b as f64).abs())
            .sum::<f64>()
            / img.as_raw().len() as f64;
        println!("{what}: mean abs pixel difference {mad:.1}");
        assert_eq!((img.width(), img.height()), (150, 150), "{what}");
        let emb = embed_all(&mut e, &[aligned_input(&img)]).remove(0);
        let s = emb.cosine(&reference);
        println!("{what}: similarity to the original {s:.4}");
        assert!(s >= min, "{what}: similarity {s}");
    }
}

#[test]
fn wrong_model_files_are_errors_not_panics() {
    let dir = std::env::temp_dir().join(format!("facepool-bad-model-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let text = dir.join("model.onnx");
    std::fs::write(&text, b"not a model at all").unwrap();
    assert!(matches!(TractModel::load(&text, &[1]), Err(FaceError::Model(_))));
    assert!(matches!(
        TractModel::load(&dir.join("missing.onnx"), &[1]),
        Err(FaceError::Model(_))
    ));
    // A real model of the wrong kind (the detector wants 240x320 input).
    let r = TractModel::load(&assets().join("models/fr_detect.onnx"), &[1]);
    assert!(
        matches!(r, Err(FaceError::Model(_) | FaceError::BadOutput(_))),
        "{r:?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Rotates and scales a chip's mapping onto the face frame about its centre.
fn rotated(img: &RgbImage, degrees: f32) -> FaceInput {
    let chip = Similarity::dlib_chip(img.width());
    let (s, c) = degrees.to_radians().sin_cos();
    let centre = [56.0f32, 56.0];
    let rot = |p: [f32; 2]| {
        let (x, y) = (p[0] - centre[0], p[1] - centre[1]);
        [c * x - s * y + centre[0], s * x + c * y + centre[1]]
    };
    // Compose: image -> face frame -> rotated face frame.
    let t0 = rot(chip.apply([0.0, 0.0]));
    let t1 = rot(chip.apply([1.0, 0.0]));
    let m = Similarity {
        a: t1[0] - t0[0],
        b: t1[1] - t0[1],
        t: t0,
    };
    let face = align::warp(img, &m).unwrap();
    let mut v = vec![0.0; face::INPUT_LEN];
    align::to_input(&face, &mut v);
    FaceInput(v.into_boxed_slice())
}

#[test]
fn transformed_photos_still_verify() {
    use image::imageops::{self, FilterType};
    let photos = photos();
    let m = model(&[1]);
    let mut e = m.embedder().unwrap();
    let det = DetectModels::load(
        &assets().join("models/fr_detect.onnx"),
        Some(&assets().join("models/fr_landmark.onnx")),
    )
    .unwrap();
    let mut d = det.detector().unwrap();
    let auto = FindOptions::default();
    let jpeg = |img: &RgbImage, q: u8| {
        let mut buf = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut buf, q)
            .encode_image(img)
            .unwrap();
        face::decode(&buf, &DecodeLimits::default()).unwrap()
    };
    type Transform = Box<dyn Fn(&RgbImage) -> RgbImage>;
    let transforms: Vec<(&str, Transform)> = vec![
        ("darker", Box::new(|i| imageops::colorops::brighten(i, -60))),
        ("brighter", Box::new(|i| imageops::colorops::brighten(i, 60))),
        ("blurred", Box::new(|i| imageops::blur(i, 1.5))),
        ("JPEG quality 10", Box::new(move |i| jpeg(i, 10))),
        (
            "grey",
            Box::new(|i| {
                image::DynamicImage::ImageLuma8(image::DynamicImage::ImageRgb8(i.clone()).to_luma8())
                    .to_rgb8()
            }),
        ),
        ("mirrored", Box::new(imageops::flip_horizontal)),
        (
            "low resolution (40 px)",
            Box::new(|i| {
                imageops::resize(
                    &imageops::resize(i, 40, 40, FilterType::Triangle),
                    150,
                    150,
                    FilterType::Triangle,
                )
            }),
        ),
        (
            "upscaled 3x (detected)",
            Box::new(|i| imageops::resize(i, 450, 450, FilterType::CatmullRom)),
        ),
    ];
    // Per person: photo 0 is the reference; photo 1 is transformed.
    let people: Vec<usize> = (0..5).map(|p| p * 11).collect();
    let refs: Vec<Embedding> = people
        .iter()
        .map(|i| embed_all(&mut e, &[aligned_input(&photos[*i].1)]).remove(0))
        .collect();
    let check = |what: &str, p: usize, input: FaceInput, e: &mut facepool::face::TractEmbedder| {
        let emb = embed_all(e, &[input]).remove(0);
        for (q, r) in refs.iter().enumerate() {
            let s = emb.cosine(r);
            let same = s >= DEFAULT_THRESHOLD;
            assert_eq!(same, p == q, "{what}: person {p} vs {q}: similarity {s:.3}");
        }
    };
    for (what, t) in &transforms {
        for (p, i) in people.iter().enumerate() {
            let img = t(&photos[i + 1].1);
            let input = face::find_faces(&img, Some(&mut d), &auto)
                .unwrap_or_else(|err| panic!("{what}: {err}"))
                .remove(0)
                .input;
            check(what, p, input, &mut e);
        }
    }
    for degrees in [-8.0, 8.0] {
        for (p, i) in people.iter().enumerate() {
            check(
                &format!("rotated {degrees} degrees"),
                p,
                rotated(&photos[i + 1].1, degrees),
                &mut e,
            );
        }
    }
}

/// A JPEG of `img` carrying an EXIF orientation tag.
fn jpeg_with_orientation(img: &RgbImage, orientation: u16) -> Vec<u8> {
    let mut plain = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut plain, 95)
        .encode_image(img)
        .unwrap();
    common::with_orientation(&plain, orientation)
}

#[test]
fn exif_orientation_is_applied() {
    let photos = photos();
    let upright = &photos[0].1;
    // A phone photo stored sideways: pixels rotated 90 degrees one way, the
    // EXIF tag (6: rotate 90 clockwise to display) says how to undo it.
    let stored = image::imageops::rotate270(upright);
    let bytes = jpeg_with_orientation(&stored, 6);
    let img = face::decode(&bytes, &DecodeLimits::default()).unwrap();
    assert_eq!((img.width(), img.height()), (upright.width(), upright.height()));
    let m = model(&[1]);
    let mut e = m.embedder().unwrap();
    let a = embed_all(&mut e, &[aligned_input(upright)]).remove(0);
    let b = embed_all(&mut e, &[aligned_input(&img)]).remove(0);
    let ignored = embed_all(&mut e, &[aligned_input(&stored)]).remove(0);
    println!(
        "with orientation applied {:.4}, stored sideways {:.4}",
        a.cosine(&b),
        a.cosine(&ignored)
    );
    assert!(a.cosine(&b) > 0.95);
    assert!(a.cosine(&b) > a.cosine(&ignored) + 0.2);
}
