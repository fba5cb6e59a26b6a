//! The resource limits at the edges (listed in `docs/hostile-input.md`),
//! each exactly at the limit (accepted) and one past it (refused, with the
//! documented error): the image's file size, width, height and pixels; the
//! HTTP body; the images of one request; the faces of one image; a line of
//! a pairs file. Small configured limits keep the images cheap; the
//! documented defaults are checked too.
#![cfg(feature = "serve")]

use crate::common;

use std::io::Cursor;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use common::{assets, b64, photos_of, TempDir};
use facepool::face::detect::{select_faces, Detection, MAX_FACES};
use facepool::face::{decode, decode_file, DecodeLimits, FaceError};
use facepool::server::{App, ServerConfig};
use facepool::service::{FaceConfig, FaceService};
use serde_json::Value;

/// A `width` × `height` PNG with some texture (so it is not all one run).
fn png(width: u32, height: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x * 7) as u8, (y * 13) as u8, ((x ^ y) * 3) as u8])
    });
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// A PNG that claims `width` × `height` (8-bit RGB) but holds only the
/// start of its first row: a decompression bomb's shape, a few hundred
/// bytes that would decode to gigabytes.
fn png_claiming(width: u32, height: u32) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    common::png_chunk(&mut out, b"IHDR", &ihdr);
    // zlib header, then one stored deflate block (not the last) of 101
    // bytes: the filter byte and the first 100 bytes of row 0.
    let mut idat = vec![0x78, 0x01, 0x00];
    idat.extend_from_slice(&101u16.to_le_bytes());
    idat.extend_from_slice(&(!101u16).to_le_bytes());
    idat.extend_from_slice(&[0u8; 101]);
    common::png_chunk(&mut out, b"IDAT", &idat);
    common::png_chunk(&mut out, b"IEND", &[]);
    out
}

fn too_large(r: Result<image::RgbImage, FaceError>) -> String {
    match r {
        Err(FaceError::TooLarge(m)) => m,
        other => panic!("expected TooLarge, got {:?}", other.map(|i| i.dimensions())),
    }
}

fn dims(r: Result<image::RgbImage, FaceError>) -> (u32, u32) {
    r.unwrap_or_else(|e| panic!("expected an image, got {e}"))
        .dimensions()
}

#[test]
fn documented_defaults() {
    assert_eq!(
        DecodeLimits::default(),
        DecodeLimits {
            max_file_bytes: 32 << 20,
            max_width: 8192,
            max_height: 8192,
            max_pixels: 40_000_000,
            max_decoded_bytes: 128 << 20,
        }
    );
    let s = ServerConfig::default();
    assert_eq!((s.max_body, s.max_images), (8 << 20, 64));
    assert_eq!(MAX_FACES, 64);
}

#[test]
fn image_file_size_at_and_past_the_limit() {
    let img = png(32, 32);
    let n = img.len() as u64;
    let at = DecodeLimits {
        max_file_bytes: n,
        ..DecodeLimits::default()
    };
    let past = DecodeLimits {
        max_file_bytes: n - 1,
        ..DecodeLimits::default()
    };
    assert_eq!(dims(decode(&img, &at)), (32, 32));
    assert_eq!(
        decode(&img, &past).unwrap_err(),
        FaceError::FileTooLarge {
            size: n,
            limit: n - 1
        }
    );
    // A file is refused by its size before it is read.
    let dir = TempDir::new("limits-file");
    let path = dir.path().join("a.png");
    std::fs::write(&path, &img).unwrap();
    assert_eq!(dims(decode_file(&path, &at)), (32, 32));
    assert_eq!(
        decode_file(&path, &past).unwrap_err(),
        FaceError::FileTooLarge {
            size: n,
            limit: n - 1
        }
    );

    // The default, 32 MiB: a small PNG padded after its end to exactly the
    // limit decodes; one byte more is refused.
    let limit = DecodeLimits::default().max_file_bytes as usize;
    let mut padded = png(16, 16);
    padded.resize(limit, 0);
    assert_eq!(dims(decode(&padded, &DecodeLimits::default())), (16, 16));
    padded.push(0);
    assert_eq!(
        decode(&padded, &DecodeLimits::default()).unwrap_err(),
        FaceError::FileTooLarge {
            size: limit as u64 + 1,
            limit: limit as u64
        }
    );
}

#[test]
fn image_width_and_height_at_and_past_the_limit() {
    let small = DecodeLimits {
        max_width: 64,
        max_height: 48,
        max_pixels: 64 * 48,
        ..DecodeLimits::default()
    };
    assert_eq!(dims(decode(&png(64, 16), &small)), (64, 16));
    too_large(decode(&png(65, 16), &small));
    assert_eq!(dims(decode(&png(16, 48), &small)), (16, 48));
    too_large(decode(&png(16, 49), &small));
    assert_eq!(dims(decode(&png(64, 48), &small)), (64, 48));

    // The defaults, 8192 a side.
    let d = DecodeLimits::default();
    assert_eq!(dims(decode(&png(8192, 16), &d)), (8192, 16));
    too_large(decode(&png(8193, 16), &d));
    assert_eq!(dims(decode(&png(16, 8192), &d)), (16, 8192));
    too_large(decode(&png(16, 8193), &d));
    // Refused from the header alone, however few bytes follow it.
    too_large(decode(&png_claiming(100_000, 100_000), &d));
}

#[test]
fn image_pixels_at_and_past_the_limit() {
    let small = DecodeLimits {
        max_width: 64,
        max_height: 64,
        max_pixels: 2048,
        ..DecodeLimits::default()
    };
    assert_eq!(dims(decode(&png(64, 32), &small)), (64, 32));
    assert_eq!(dims(decode(&png(32, 64), &small)), (32, 64));
    let m = too_large(decode(&png(64, 33), &small));
    assert!(m.contains("at most 2048 pixels"), "{m}");
    too_large(decode(&png(33, 64), &small));

    // The default, 40 megapixels, on images that claim the size but hold
    // almost no data: at the limit the header passes (the decoder then
    // finds the data missing), one row more is refused from the header.
    let d = DecodeLimits::default();
    match decode(&png_claiming(5000, 8000), &d) {
        Err(FaceError::Decode(_)) => {}
        other => panic!(
            "5000x8000 passes the limits and fails on its missing data, got {:?}",
            other.map(|i| i.dimensions())
        ),
    }
    let m = too_large(decode(&png_claiming(5000, 8001), &d));
    assert!(m.contains("at most 40000000 pixels"), "{m}");
}

/// A box `side` pixels wide in cell `i` of a grid whose cells never overlap.
fn face(i: usize, side: f32, score: f32) -> Detection {
    let (x, y) = ((i % 16) as f32 * 100.0, (i / 16) as f32 * 100.0);
    Detection {
        bbox: [x, y, x + side, y + side],
        score,
    }
}

#[test]
fn faces_per_image_at_and_past_the_limit() {
    // MAX_FACES separate faces: all kept, largest first.
    let at: Vec<Detection> = (0..MAX_FACES)
        .map(|i| face(i, 10.0 + (i % 9) as f32, 0.99 - i as f32 * 1e-3))
        .collect();
    let kept = select_faces(at.clone(), 0.3);
    assert_eq!(kept.len(), MAX_FACES);
    assert!(kept.windows(2).all(|w| w[0].area() >= w[1].area()));
    for d in &at {
        assert!(kept.contains(d));
    }

    // One more, scoring lowest though largest: the best-scoring MAX_FACES
    // are kept, and it is not among them.
    let mut past = at.clone();
    let extra = face(MAX_FACES, 60.0, 0.5);
    past.push(extra);
    let kept = select_faces(past, 0.3);
    assert_eq!(kept.len(), MAX_FACES);
    assert!(!kept.contains(&extra));

    // Overlapping boxes still collapse before the cap counts them.
    let dup: Vec<Detection> = (0..MAX_FACES + 1)
        .flat_map(|i| [face(i, 20.0, 0.9), face(i, 21.0, 0.8)])
        .collect();
    assert_eq!(select_faces(dup, 0.3).len(), MAX_FACES);
}

// ---- The HTTP service -----------------------------------------------------

const TOKEN: &str = "limits-token";

/// A server in this process on `127.0.0.1:0`, stopped on drop.
struct InProc {
    addr: SocketAddr,
    app: App,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl InProc {
    fn start(config: ServerConfig, tweak: &dyn Fn(&mut FaceConfig)) -> Self {
        let app = App::new(config);
        let mut c = FaceConfig::from_assets(&assets());
        tweak(&mut c);
        app.ready(FaceService::start(c).expect("the service starts"))
            .expect("ready once");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let router = app.router();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                axum::serve(listener, router)
                    .with_graceful_shutdown(async move {
                        let _ = rx.await;
                    })
                    .await
                    .unwrap();
            });
        });
        Self {
            addr,
            app,
            stop: Some(tx),
            thread: Some(thread),
        }
    }

    /// POSTs `body` (raw bytes, JSON) to `path`: status and JSON answer.
    fn post(&self, path: &str, body: Vec<u8>) -> (u16, Value) {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        let mut r = agent
            .post(&format!("http://{}{path}", self.addr))
            .header("authorization", format!("Bearer {TOKEN}"))
            .header("content-type", "application/json")
            .send(&body[..])
            .unwrap();
        let text = r.body_mut().read_to_string().unwrap_or_default();
        let v = serde_json::from_str(&text).unwrap_or(Value::Null);
        (r.status().as_u16(), v)
    }
}

impl Drop for InProc {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Some(svc) = self.app.service() {
            svc.shutdown(Duration::from_secs(10));
        }
    }
}

/// `json` padded with trailing spaces (still valid JSON) to `len` bytes.
fn padded(json: &Value, len: usize) -> Vec<u8> {
    let mut b = json.to_string().into_bytes();
    assert!(b.len() <= len, "{} bytes of JSON before padding", b.len());
    b.resize(len, b' ');
    b
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

#[test]
fn http_body_images_and_image_limits_at_and_past() {
    const MAX_BODY: usize = 64 << 10;
    const MAX_IMAGES: usize = 3;
    let photo = std::fs::read(&photos_of("John_Savage")[0]).unwrap();
    let (w, h) = dims(decode(&photo, &DecodeLimits::default()));
    // The service's decode limits are exactly this photo's.
    let limits = DecodeLimits {
        max_file_bytes: photo.len() as u64,
        max_width: w,
        max_height: h,
        max_pixels: u64::from(w) * u64::from(h),
        ..DecodeLimits::default()
    };
    let s = InProc::start(
        ServerConfig {
            tokens: vec![TOKEN.to_owned()],
            max_body: MAX_BODY,
            max_images: MAX_IMAGES,
            ..ServerConfig::default()
        },
        &|c: &mut FaceConfig| c.limits = limits,
    );
    let embed = |image: &[u8]| serde_json::json!({ "image": b64(image) });

    // The body: exactly max_body bytes is read; one more is 413.
    let (st, v) = s.post("/v1/embed", padded(&embed(&photo), MAX_BODY));
    assert_eq!(st, 200, "{v}");
    let (st, v) = s.post("/v1/embed", padded(&embed(&photo), MAX_BODY + 1));
    assert_eq!((st, code(&v)), (413, "body_too_large"), "{v}");

    // The image: at every decode limit at once it is embedded; a byte, a
    // column or a row more is 422 image_too_large.
    let mut longer = photo.clone();
    longer.push(0);
    let (st, v) = s.post("/v1/embed", embed(&longer).to_string().into_bytes());
    assert_eq!((st, code(&v)), (422, "image_too_large"), "{v}");
    let (st, v) = s.post("/v1/embed", embed(&png(w + 1, 16)).to_string().into_bytes());
    assert_eq!((st, code(&v)), (422, "image_too_large"), "{v}");
    let (st, v) = s.post("/v1/embed", embed(&png(16, h + 1)).to_string().into_bytes());
    assert_eq!((st, code(&v)), (422, "image_too_large"), "{v}");

    // The images of one request (the source counts): max_images are
    // compared; one more is 413 too_many_images.
    let a = b64(&photo);
    let batch = |targets: usize| {
        serde_json::json!({ "source": a, "targets": vec![a.clone(); targets] })
            .to_string()
            .into_bytes()
    };
    let (st, v) = s.post("/v1/verify/batch", batch(MAX_IMAGES - 1));
    assert_eq!(st, 200, "{v}");
    let (st, v) = s.post("/v1/verify/batch", batch(MAX_IMAGES));
    assert_eq!((st, code(&v)), (413, "too_many_images"), "{v}");
}

/// The longest line of a pairs file (`compare --pairs`), bytes without its
/// newline: `MAX_LINE` in `src/bin/compare/pairs.rs`.
const MAX_LINE: usize = 64 << 10;

#[test]
fn pairs_file_line_at_and_past_the_limit() {
    let dir = TempDir::new("limits-pairs");
    let photos = photos_of("John_Savage");
    std::fs::copy(&photos[0], dir.path().join("a.jpg")).unwrap();
    std::fs::copy(&photos[1], dir.path().join("b.jpg")).unwrap();
    // Fields are trimmed, so spaces pad a valid line to any length.
    let line = |len: usize| {
        let mut l = "a.jpg".to_owned();
        l.push_str(&" ".repeat(len - "a.jpg,b.jpg,1".len()));
        l.push_str(",b.jpg,1");
        assert_eq!(l.len(), len);
        l
    };
    let text = format!(
        "{}\n{}\na.jpg,b.jpg,1\n{}",
        line(MAX_LINE),
        line(MAX_LINE + 1),
        line(MAX_LINE)
    );
    let pairs = dir.path().join("pairs.csv");
    std::fs::write(&pairs, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_compare"))
        .args(["--pairs", pairs.to_str().unwrap(), "--json"])
        .args(["--assets", assets().to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "one line failed: exit 1 ({})",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Vec<Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(v.len(), 5, "{stdout}");
    // At the limit (also the last line, without a newline): compared.
    for i in [0, 2, 3] {
        assert_eq!(v[i]["same"], true, "line {}: {}", i + 1, v[i]);
    }
    // Past it: an error in its place, naming the limit; the next line is read.
    let e = v[1]["error"].as_str().unwrap_or_default();
    assert!(e.contains(&format!("longer than {MAX_LINE} bytes")), "{e}");
    let s = &v[4]["summary"];
    assert_eq!((s["pairs"].as_u64(), s["failed"].as_u64()), (Some(4), Some(1)));
}
