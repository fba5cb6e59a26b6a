//! The face pipeline's error type.

/// Why an image gave no embedding.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FaceError {
    /// The file is larger than the decode limit.
    #[error("file is {size} bytes, more than the limit of {limit}")]
    FileTooLarge {
        /// The file's size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The image's dimensions exceed a limit (checked before any pixel is
    /// allocated, so decompression bombs are refused).
    #[error("image too large: {0}")]
    TooLarge(String),
    /// The image is too small to hold a face.
    #[error("image is {width}x{height}, too small for a face")]
    TooSmall {
        /// Width.
        width: u32,
        /// Height.
        height: u32,
    },
    /// The bytes are not an image in a supported format.
    #[error("not a supported image (JPEG, PNG, WebP, BMP, GIF): {0}")]
    Unsupported(String),
    /// The image is corrupt or truncated.
    #[error("could not decode the image: {0}")]
    Decode(String),
    /// No face was found.
    #[error("no face found in the image")]
    NoFace,
    /// A model could not be loaded or run.
    #[error("model error: {0}")]
    Model(String),
    /// The ONNX Runtime library could not be loaded (missing, not a shared
    /// library, not ONNX Runtime, too old, or another one already loaded).
    #[error("ONNX Runtime library {library}: {message}")]
    Runtime {
        /// The library's path.
        library: String,
        /// Why it could not be used.
        message: String,
    },
    /// The CUDA backend cannot run: no driver, no device, a CUDA library
    /// missing or too old, or a build without the `cuda` feature.
    #[error("CUDA backend unavailable: {0}")]
    Gpu(String),
    /// The model returned something unusable (wrong shape, NaN, zero vector).
    #[error("model output unusable: {0}")]
    BadOutput(String),
    /// Reading the file failed.
    #[error("could not read {path}: {message}")]
    Io {
        /// The path.
        path: String,
        /// The OS error.
        message: String,
    },
}
