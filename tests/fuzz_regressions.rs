//! What the fuzz targets (`fuzz/`) found, kept as plain tests: each input
//! under `tests/fuzz_inputs/` goes through the code that failed on it, and
//! the property the target asserts is checked (no fuzzer needed).
//!
//! Also the fuzz targets' seed corpora: the small seeds of `fuzz/corpus/`
//! are made here (`FACEPOOL_WRITE_SEEDS=1 cargo nextest run --test
//! fuzz_regressions` writes them), and checked to still reach the code
//! behind the first checks (the images decode, the index files load).
#![cfg(feature = "face")]

use crate::common;

use std::path::PathBuf;

use facepool::face::{self, DecodeLimits, FaceError};
use facepool::gallery::Entry;
use facepool::index::{Index, IndexError, FORMAT_VERSION};
use image::{ImageEncoder, RgbImage};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn input(name: &str) -> Vec<u8> {
    let p = root().join("tests/fuzz_inputs").join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("facepool-fuzzreg-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

// ---- seeds -------------------------------------------------------------

fn gradient(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x * 7) as u8, (y * 11) as u8, ((x + y) * 5) as u8])
    })
}

fn png(img: &image::DynamicImage) -> Vec<u8> {
    let mut out = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    out
}

fn encoded(img: &RgbImage, format: image::ImageFormat) -> Vec<u8> {
    let mut out = Vec::new();
    image::DynamicImage::ImageRgb8(img.clone())
        .write_to(&mut std::io::Cursor::new(&mut out), format)
        .unwrap();
    out
}

fn jpeg(img: &RgbImage) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 80)
        .write_image(
            img.as_raw(),
            img.width(),
            img.height(),
            image::ExtendedColorType::Rgb8,
        )
        .unwrap();
    out
}

/// A JPEG of `img` carrying an EXIF orientation tag.
fn jpeg_with_orientation(img: &RgbImage, orientation: u16) -> Vec<u8> {
    common::with_orientation(&jpeg(img), orientation)
}

/// The image seeds (decode and prepare): one of each format and colour
/// type, and rotated JPEGs; with their decoded sizes.
fn image_seeds() -> Vec<(&'static str, Vec<u8>, (u32, u32))> {
    let g = gradient(24, 24);
    let wide = gradient(120, 20);
    let gray16 = image::DynamicImage::ImageLuma16(image::ImageBuffer::from_fn(20, 20, |x, y| {
        image::Luma([(x * 3000 + y * 100) as u16])
    }));
    let rgba = image::DynamicImage::ImageRgba8(image::ImageBuffer::from_fn(32, 18, |x, y| {
        image::Rgba([(x * 8) as u8, (y * 14) as u8, 90, (x * y) as u8])
    }));
    vec![
        (
            "seed-rgb.png",
            png(&image::DynamicImage::ImageRgb8(g.clone())),
            (24, 24),
        ),
        ("seed-gray16.png", png(&gray16), (20, 20)),
        ("seed-rgba.png", png(&rgba), (32, 18)),
        ("seed-rgb.jpg", jpeg(&g), (24, 24)),
        (
            "seed-exif6.jpg",
            jpeg_with_orientation(&gradient(40, 24), 6),
            (24, 40),
        ),
        ("seed-exif8-wide.jpg", jpeg_with_orientation(&wide, 8), (20, 120)),
        ("seed-rgb.gif", encoded(&g, image::ImageFormat::Gif), (24, 24)),
        (
            "seed-rgb.bmp",
            encoded(&gradient(17, 16), image::ImageFormat::Bmp),
            (17, 16),
        ),
        ("seed-rgb.webp", encoded(&g, image::ImageFormat::WebP), (24, 24)),
    ]
}

/// Index files: an empty one, and two people (one with metadata) over
/// three vectors; each with the mode byte of the index_load target (bit 0:
/// fix the lengths, bit 1: fix the checksums).
fn index_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let d = scratch("seeds");
    let empty = Index::new(4).unwrap();
    empty.save(&d.join("empty.idx")).unwrap();
    let two = Index::new(4).unwrap();
    two.add(
        "alice",
        &[&[1.0, 0.0, 0.0, 0.0], &[0.0, 1.0, 0.0, 0.0]],
        Some("{\"a\":1}"),
    )
    .unwrap();
    two.add("bob", &[&[0.5, 0.5, 0.5, 0.5]], None).unwrap();
    two.save(&d.join("two.idx")).unwrap();
    let with = |mode: u8, f: &str| {
        let mut v = vec![mode];
        v.extend(std::fs::read(d.join(f)).unwrap());
        v
    };
    let mut v1 = vec![0u8];
    v1.extend(common::as_format_1(
        &std::fs::read(d.join("two.idx")).unwrap(),
        4,
        3,
    ));
    let out = vec![
        ("seed-empty", with(0, "empty.idx")),
        ("seed-two-people", with(0, "two.idx")),
        ("seed-two-people-fixups", with(3, "two.idx")),
        ("seed-two-people-format-1", v1),
    ];
    let _ = std::fs::remove_dir_all(&d);
    out
}

fn text_seeds() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let b64 = |b: &[u8]| common::b64(b);
    let tiny = b64(&png(&image::DynamicImage::ImageRgb8(gradient(16, 16))));
    let pairs = |mode: u8, text: &[u8]| {
        let mut v = vec![mode];
        v.extend_from_slice(text);
        v
    };
    // The http_bodies target: byte 0 picks the route (0 verify, 1 batch,
    // 2 identify, 3 embed, 4 enroll, 7 people list), byte 1 the body mode
    // (0 JSON as given, 1 multipart as given, 2 the route's JSON around
    // the rest as base64, 3 the route's form around the rest).
    let http = |route: u8, flags: u8, body: &[u8]| {
        let mut v = vec![route, flags];
        v.extend_from_slice(body);
        v
    };
    let form = format!(
        "--fuzzboundary\r\nContent-Disposition: form-data; name=\"images\"; filename=\"a.png\"\r\n\
         Content-Type: image/png\r\n\r\n{}\r\n--fuzzboundary\r\nContent-Disposition: form-data; \
         name=\"meta\"\r\n\r\nsome text\r\n--fuzzboundary--\r\n",
        "\u{89}PNG"
    );
    let small_png = png(&image::DynamicImage::ImageRgb8(gradient(16, 16)));
    vec![
        ("pairs_csv", "seed-basic", pairs(0, b"a,b,label\nx.jpg,y.jpg,1\n# a comment\n\n z.jpg , w.jpg , different\nq.jpg,r.jpg\n")),
        ("pairs_csv", "seed-bad-lines", pairs(3, b"one\na,b,c,d\nx,y,maybe\r\n\xff,b\n")),
        ("pairs_csv", "seed-long-line", pairs(0xc0, b"b,c\nd,e,0\n")),
        (
            "loadgen_profile",
            "seed-closed.toml",
            b"modes = [\"pool\"]\n[arrival]\nmodel = \"closed\"\nclients = 4\n[stop]\nseconds = 2.0\n[request]\nfaces = 3\nimages = \"all\"\n[runtime]\nworkers = 2\nbatch_max = 8\nbatch_delay_ms = 1.5\n".to_vec(),
        ),
        (
            "loadgen_profile",
            "seed-phases.toml",
            b"[arrival]\nmodel = \"poisson\"\n[[arrival.phases]]\nseconds = 1.0\nrate = 10.0\nramp_to = 50.0\n[[arrival.phases]]\nseconds = 0.5\nrate = 200.0\n[stop]\nrequests = 100\n[slo]\nreject_rate = 0.1\n[synthetic]\ncall_ms = 1.0\nconcurrency = 2\nprepare_ms = 0.5\n".to_vec(),
        ),
        (
            "nats_job",
            "seed-verify",
            format!("{{\"id\":\"job-1\",\"kind\":\"verify\",\"image1\":\"{tiny}\",\"image2\":{{\"object\":\"photos/b.jpg\"}},\"deadline_ms\":5000}}").into_bytes(),
        ),
        ("nats_job", "seed-identify", b"{\"id\":\"j_2\",\"kind\":\"identify\",\"image\":{\"object\":\"x\"},\"k\":3}".to_vec()),
        (
            "nats_job",
            "seed-review",
            format!("{{\"id\":\"r3\",\"kind\":\"review\",\"video\":\"v1\",\"frames\":[\"data:image/png;base64,{tiny}\",{{\"object\":\"f2\"}}],\"reference\":\"{tiny}\"}}").into_bytes(),
        ),
        ("http_bodies", "seed-verify-json", http(0, 0, format!("{{\"image1\":\"{tiny}\",\"image2\":\"{tiny}\"}}").as_bytes())),
        ("http_bodies", "seed-batch-json", http(1, 0, format!("{{\"source\":\"{tiny}\",\"targets\":[\"{tiny}\",\"AAAA\"]}}").as_bytes())),
        ("http_bodies", "seed-identify-image", http(2, 2, &small_png)),
        ("http_bodies", "seed-embed-form", http(3, 3, &small_png)),
        ("http_bodies", "seed-enroll-multipart", http(4, 1, form.as_bytes())),
        ("http_bodies", "seed-people-list", http(7, 0, b"")),
        ("gallery_entry", "seed-entry", gallery_entry(Some("{\"n\":1}"))),
        ("gallery_entry", "seed-entry-no-meta", gallery_entry(None)),
        // The key of "Ada Lovelace" (base64url).
        ("gallery_entry", "seed-key", b"\x00QWRhIExvdmVsYWNl".to_vec()),
    ]
}

/// A gallery entry of two faces of length 4 (the target's first byte: 3,
/// the length less one).
fn gallery_entry(meta: Option<&str>) -> Vec<u8> {
    let (a, b) = ([0.5f32, -0.5, 0.5, -0.5], [1.0f32, 0.0, 0.0, 0.0]);
    let e = Entry::new(4, &[&a, &b], meta).unwrap();
    [&[3u8][..], &e.encode()].concat()
}

/// Writes the seeds with `FACEPOOL_WRITE_SEEDS=1`; otherwise checks that
/// the committed ones are there and still get past the first checks.
#[test]
fn fuzz_seeds_are_there_and_reach_the_parsers() {
    let corpus = root().join("fuzz/corpus");
    let write = std::env::var_os("FACEPOOL_WRITE_SEEDS").is_some();
    let put = |target: &str, name: &str, bytes: &[u8]| {
        let d = corpus.join(target);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(name), bytes).unwrap();
    };
    if write {
        for (name, bytes, _) in image_seeds() {
            put("decode", name, &bytes);
            put("prepare", name, &bytes);
        }
        for (name, bytes) in index_seeds() {
            put("index_load", name, &bytes);
        }
        for (target, name, bytes) in text_seeds() {
            put(target, name, &bytes);
        }
    }
    for (name, _, size) in image_seeds() {
        for target in ["decode", "prepare"] {
            let bytes = std::fs::read(corpus.join(target).join(name)).unwrap();
            let img = face::decode(&bytes, &DecodeLimits::default())
                .unwrap_or_else(|e| panic!("{target}/{name}: {e}"));
            assert_eq!(img.dimensions(), size, "{target}/{name}");
        }
    }
    let d = scratch("seedcheck");
    for (name, _) in index_seeds() {
        let bytes = std::fs::read(corpus.join("index_load").join(name)).unwrap();
        let f = d.join("seed.idx");
        std::fs::write(&f, &bytes[1..]).unwrap();
        Index::load(&f).unwrap_or_else(|e| panic!("index_load/{name}: {e}"));
    }
    let _ = std::fs::remove_dir_all(&d);
    for (target, name, _) in text_seeds() {
        assert!(
            corpus.join(target).join(name).is_file(),
            "{target}/{name} is missing"
        );
    }
    let total: u64 = std::fs::read_dir(&corpus)
        .unwrap()
        .flat_map(|t| std::fs::read_dir(t.unwrap().path()).unwrap())
        .map(|f| f.unwrap())
        // Only the committed seeds (what fuzz runs add is git-ignored).
        .filter(|f| f.file_name().to_string_lossy().starts_with("seed-"))
        .map(|f| f.metadata().unwrap().len())
        .sum();
    assert!(total < 1 << 20, "the committed seeds take {total} bytes");
}

// ---- regressions ---------------------------------------------------------

/// The decode target's check: an image within the limits, or an error
/// about the image.
#[allow(dead_code)]
fn decodes_within(bytes: &[u8], limits: &DecodeLimits) {
    match face::decode(bytes, limits) {
        Ok(img) => {
            let (w, h) = img.dimensions();
            assert!(
                w <= limits.max_width
                    && h <= limits.max_height
                    && u64::from(w) * u64::from(h) <= limits.max_pixels,
                "{w}x{h} past {limits:?}"
            );
        }
        Err(
            FaceError::FileTooLarge { .. }
            | FaceError::TooLarge(_)
            | FaceError::TooSmall { .. }
            | FaceError::Unsupported(_)
            | FaceError::Decode(_),
        ) => {}
        Err(e) => panic!("{e:?}"),
    }
}

/// The index_load target's check: rejected with a format error, or loaded
/// and saved back to the same bytes.
#[allow(dead_code)]
fn loads_or_rejects(file: &[u8]) {
    let d = scratch("idx");
    let (i, o) = (d.join("in.idx"), d.join("out.idx"));
    std::fs::write(&i, file).unwrap();
    match Index::load(&i) {
        Ok(index) => {
            index.save(&o).unwrap();
            let saved = std::fs::read(&o).unwrap();
            if file[8..12] == FORMAT_VERSION.to_le_bytes() {
                assert!(saved == file, "saved back to other bytes");
            } else {
                // An older format saves as the current one, which saves
                // back to itself.
                let again = Index::load(&o).unwrap();
                assert_eq!((again.len(), again.vectors()), (index.len(), index.vectors()));
                again.save(&o).unwrap();
                assert!(std::fs::read(&o).unwrap() == saved, "saved back to other bytes");
            }
        }
        Err(IndexError::NotAnIndex { .. } | IndexError::Version { .. } | IndexError::Corrupt { .. }) => {}
        Err(e) => panic!("{e:?}"),
    }
    let _ = std::fs::remove_dir_all(&d);
}

/// index_load: a format-1 file whose second row is subnormal (4e-44 at
/// most: rows of a file are not renormalised) loaded, but its codes had
/// a NaN residual (its scale underflowed to 0), so the format-2 file it
/// saved to did not load. Such a row now codes as all residual.
#[test]
fn index_with_a_subnormal_row_saves_to_a_file_that_loads() {
    let file = input("index-format-1-subnormal-row.idx");
    loads_or_rejects(&file);
    let d = scratch("subnormal");
    let (i, o) = (d.join("in.idx"), d.join("out.idx"));
    std::fs::write(&i, &file).unwrap();
    Index::load(&i).unwrap().save(&o).unwrap();
    assert_eq!(Index::load(&o).unwrap().vectors(), 3);
    let _ = std::fs::remove_dir_all(&d);
}

/// index_load: a file whose people are not numbered in the order of their
/// first vector (owners 1, 0, 1 here, checksums right) loaded, then saved
/// to other bytes (`save` numbers people by first appearance). The loader
/// now refuses the numbering no save writes.
#[test]
fn index_with_people_out_of_order_is_corrupt() {
    let file = input("index-owners-out-of-order.idx");
    let d = scratch("owners");
    let p = d.join("x.idx");
    std::fs::write(&p, &file).unwrap();
    let e = match Index::load(&p) {
        Ok(_) => panic!("a file numbered out of order loaded"),
        Err(e) => e,
    };
    assert!(
        matches!(&e, IndexError::Corrupt { reason, .. } if reason.contains("before person 0 has a vector")),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&d);
    loads_or_rejects(&file);
}

/// http_bodies: a route called with a method it does not take (input:
/// route byte 15, `GET /v1/verify?x=1`, no body) answered axum's 405 with
/// an empty body, not the JSON error every other 4xx is.
#[cfg(feature = "server")]
#[test]
fn wrong_method_is_a_json_error() {
    use std::io::{Read, Write};

    use facepool::server::{App, ServerConfig};

    assert_eq!(input("http-wrong-method.bin"), [15, 0]);
    let app = App::new(ServerConfig {
        tokens: vec!["t".to_owned()],
        ..ServerConfig::default()
    });
    let router = app.router();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.spawn(async move {
        let l = tokio::net::TcpListener::from_std(listener).unwrap();
        axum::serve(l, router).await.unwrap();
    });
    for (method, path) in [
        ("GET", "/v1/verify?x=1"),
        ("PUT", "/v1/identify"),
        ("POST", "/v1/people/alice"),
        ("DELETE", "/v1/people"),
        ("OPTIONS", "/v1/verify"),
        ("POST", "/livez"),
    ] {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t\r\n\
             Content-Type: application/json\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        let head = head.to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 405"), "{method} {path}: {head}");
        assert!(
            head.contains("content-type: application/json"),
            "{method} {path}: {head}"
        );
        assert!(
            head.contains("\r\nallow: "),
            "{method} {path}: no Allow header: {head}"
        );
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(
            v["error"]["code"], "method_not_allowed",
            "{method} {path}: {body}"
        );
    }
    rt.shutdown_background();
}

/// decode: a 120x20 JPEG whose EXIF orientation (8) turns it to 20x120
/// passed the limits on its stored sides (256 wide, 96 high) and came out
/// past the height limit. The limits are now on the sides as shown.
#[test]
fn exif_turn_is_within_the_limits() {
    let bytes = input("decode-exif-turn-past-height.jpg");
    let small = DecodeLimits {
        max_file_bytes: 1 << 20,
        max_width: 256,
        max_height: 96,
        max_pixels: 16_384,
        max_decoded_bytes: 16_384 * 8,
    };
    decodes_within(&bytes, &small);
    assert!(matches!(
        face::decode(&bytes, &small),
        Err(FaceError::TooLarge(_))
    ));
    // Turned the other way round, the same limits hold it.
    let turned = DecodeLimits {
        max_width: 96,
        max_height: 256,
        ..small
    };
    let img = face::decode(&bytes, &turned).unwrap();
    assert_eq!(img.dimensions(), (20, 120));
    decodes_within(&bytes, &DecodeLimits::default());
}

/// loadgen_profile: positive durations and rates that round to nothing
/// passed the checks: `drain_seconds = 30.05e-324` (a drain of 0 ns: every
/// request still out counted as an error), and `rate = 5e-324` with a
/// request count (1 / rate is infinite: `Duration::from_secs_f64` panics
/// in the open loop). Durations are now at least 1 ms, rates at least one
/// request in 1000 s.
#[cfg(feature = "loadgen")]
#[test]
fn profile_durations_and_rates_that_round_to_nothing_are_refused() {
    for (name, field) in [
        ("profile-drain-rounds-to-zero.toml", "stop.drain_seconds"),
        ("profile-rate-without-gap.toml", "arrival.rate"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_loadgen"))
            .arg("--profile")
            .arg(root().join("tests/fuzz_inputs").join(name))
            .arg("--check")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {err}");
        assert!(err.contains(field), "{name}: expected `{field}` in: {err}");
    }
}
