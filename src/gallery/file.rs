//! The gallery's file: the index saved atomically (the index file's own
//! temp-file-and-rename, flushed, the directory flushed) by the caller's
//! thread, one save at a time. A change is made on a fork of the index,
//! the fork is saved, and only then does the live index become the fork.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use super::{apply_to, Applied, Change, GalleryError, GalleryStore, StoreStatus};
use crate::index::{Index, IndexError, Vectors};

/// The gallery's file.
#[derive(Debug)]
pub struct GalleryFile {
    path: PathBuf,
    /// Held across each whole save, so two saves never race and the last
    /// rename is of the last save asked for.
    one: Mutex<()>,
}

impl GalleryFile {
    /// The gallery at `path` (nothing is read or written yet).
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            one: Mutex::new(()),
        }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the index in the file, its vectors kept where `vectors` says,
    /// or `None` if there is no file.
    pub fn load(&self, vectors: Vectors) -> Result<Option<Index>, IndexError> {
        if !self.path.exists() {
            return Ok(None);
        }
        Index::load_with(&self.path, vectors).map(Some)
    }

    /// Writes `index` to the file, atomically; done when it is on disk.
    pub fn save(&self, index: &Index) -> Result<(), IndexError> {
        let _one = self.one.lock().unwrap_or_else(PoisonError::into_inner);
        index.save(&self.path)
    }

    fn failed(&self, e: IndexError) -> GalleryError {
        GalleryError::Store(format!("{}: {e}", self.path.display()))
    }
}

impl GalleryStore for GalleryFile {
    fn apply(&self, index: &Index, change: &Change) -> Result<Applied, GalleryError> {
        let fork = index.fork();
        let applied = apply_to(&fork, change)?;
        if applied == Applied::Removed(0) {
            return Ok(applied);
        }
        self.save(&fork).map_err(|e| self.failed(e))?;
        index.replace_with(&fork)?;
        Ok(applied)
    }

    fn flush(&self, index: &Index) -> Result<(), GalleryError> {
        self.save(index).map_err(|e| self.failed(e))
    }

    fn status(&self) -> StoreStatus {
        StoreStatus {
            kind: "file",
            place: self.path.display().to_string(),
            connected: true,
            ..StoreStatus::default()
        }
    }
}
