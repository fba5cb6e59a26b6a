//! The people a service identifies against, and where they are stored.
//!
//! The in-memory [`Index`](crate::index::Index) is what searches read; a
//! store keeps it beyond the process. Today: [`GalleryFile`], the index
//! file of one machine, saved atomically after each change by one writer
//! thread (no async task ever writes a file).
//!
//! Knows nothing of images, models or HTTP.

mod file;

pub use self::file::GalleryFile;
