//! Embedding facepool in a program: verify that two photos show the same
//! person, with the models that `scripts/fetch-assets.sh` fetched.
//!
//! ```text
//! cargo run --release --example verify -- assets/photos/johns/John_Simm/*.jpg
//! ```

use std::path::PathBuf;

use facepool::service::{FaceConfig, FaceService, ImageSource};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let images: Vec<PathBuf> = std::env::args().skip(1).map(PathBuf::from).collect();
    let [a, b, ..] = images.as_slice() else {
        return Err("give two images".into());
    };
    // The pool, the batcher and the model, with the default core budget.
    let service = FaceService::start(FaceConfig::from_assets(&FaceConfig::locate_assets(None)))?;
    let v = service.verify(ImageSource::Path(a.clone()), ImageSource::Path(b.clone()))?;
    println!(
        "similarity {:.3}: {} ({:.1} ms)",
        v.similarity,
        if v.same { "same person" } else { "different people" },
        v.timings.total.as_secs_f64() * 1e3
    );
    Ok(())
}
