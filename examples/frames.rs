//! Camera-sized frames made from the labelled photos: each photo pasted at
//! its own size onto a blurred copy of itself filling the frame, written
//! as a JPEG (quality 90), with the pairs file rewritten to point at the
//! frames (same pairs, same labels). What a camera feed or a full photo
//! gives the service, as against a 150 × 150 crop around the face.
//!
//! ```text
//! cargo run --release --example frames -- --size 1920x1080 --out target/frames/1080p
//! compare --pairs target/frames/1080p/pairs.csv --faces detect --no-dedup --json
//! ```
//!
//! Deterministic: the same photos give the same frames (the photo's place
//! in the frame comes from its name).

use std::path::{Path, PathBuf};

use clap::Parser;
use image::imageops::{self, FilterType};
use image::RgbImage;

#[derive(Parser)]
struct Args {
    /// The frame's size, WIDTHxHEIGHT.
    #[arg(long, default_value = "1920x1080")]
    size: String,
    /// Where the frames and their pairs.csv go.
    #[arg(long)]
    out: PathBuf,
    /// The labelled pairs (paths relative to the file).
    #[arg(long, default_value = "assets/photos/johns/pairs.csv")]
    pairs: PathBuf,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let (w, h) = args
        .size
        .split_once('x')
        .and_then(|(w, h)| Some((w.parse::<u32>().ok()?, h.parse::<u32>().ok()?)))
        .ok_or("--size is WIDTHxHEIGHT")?;
    let root = args.pairs.parent().unwrap_or(Path::new("."));
    let text = std::fs::read_to_string(&args.pairs)?;
    let mut made = std::collections::BTreeSet::new();
    for line in text.lines() {
        for name in line.split(',').take(2) {
            let name = name.trim();
            if made.insert(name.to_owned()) {
                let photo = image::open(root.join(name))?.to_rgb8();
                let frame = frame_of(&photo, w, h, name);
                let path = args.out.join(name);
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                let mut file = std::io::BufWriter::new(std::fs::File::create(&path)?);
                image::codecs::jpeg::JpegEncoder::new_with_quality(&mut file, 90).encode_image(&frame)?;
            }
        }
    }
    std::fs::write(args.out.join("pairs.csv"), text)?;
    println!("{} frames of {w}x{h} in {}", made.len(), args.out.display());
    Ok(())
}

/// `photo` at its own size on a blurred copy of itself that fills `w` × `h`.
fn frame_of(photo: &RgbImage, w: u32, h: u32, name: &str) -> RgbImage {
    // Blurred: shrunk to a few dozen pixels, then stretched back.
    let small = imageops::resize(photo, 32, 18, FilterType::Triangle);
    let mut frame = imageops::resize(&small, w, h, FilterType::Triangle);
    // A place from the name (FNV-1a), anywhere the photo fits whole.
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let x = (hash % u64::from(w.saturating_sub(photo.width()).max(1))) as i64;
    let y = ((hash >> 32) % u64::from(h.saturating_sub(photo.height()).max(1))) as i64;
    imageops::replace(&mut frame, photo, x, y);
    frame
}
