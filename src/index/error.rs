//! The index's error type.

use super::{FORMAT_VERSION, MAX_DIM};

/// Why an index operation failed.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// A vector or query of the wrong length.
    #[error("vector has {got} values, the index holds {expected}")]
    WrongDim {
        /// The index's dimension.
        expected: usize,
        /// The vector's length.
        got: usize,
    },
    /// A dimension the index does not support.
    #[error("dimension {0} is outside 1..={MAX_DIM}")]
    BadDim(usize),
    /// A vector that cannot be normalised (NaN, infinite or zero).
    #[error("vector cannot be normalised: {0}")]
    BadVector(String),
    /// An empty or oversized id or metadata string.
    #[error("{0}")]
    BadText(String),
    /// Nothing to insert.
    #[error("no vectors given for {0:?}")]
    NoVectors(String),
    /// The file is not a facepool index.
    #[error("{path}: not a facepool index (bad magic)")]
    NotAnIndex {
        /// The file.
        path: String,
    },
    /// The file was written by another format version.
    #[error("{path}: index format version {found}, this build reads version {FORMAT_VERSION}")]
    Version {
        /// The file.
        path: String,
        /// Its version.
        found: u32,
    },
    /// The file is truncated or corrupted.
    #[error("{path}: corrupt index: {reason}")]
    Corrupt {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}
