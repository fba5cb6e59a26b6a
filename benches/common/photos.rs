//! What the embedding benches share: test photos turned into model inputs.

use std::path::PathBuf;

use facepool::face::{self, DecodeLimits, FaceInput, FaceMode, FindOptions};

/// The aligned face of each photo, as a model input, in order.
pub fn inputs<'a>(files: impl IntoIterator<Item = &'a PathBuf>) -> Vec<FaceInput> {
    let opts = FindOptions {
        mode: FaceMode::Aligned,
        ..FindOptions::default()
    };
    files
        .into_iter()
        .map(|f| {
            let img = face::decode_file(f, &DecodeLimits::default()).expect("a photo");
            face::find_faces(&img, None, &opts)
                .expect("a face")
                .remove(0)
                .input
        })
        .collect()
}
