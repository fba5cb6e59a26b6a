//! The people a service identifies against, and where they are stored.
//!
//! The in-memory [`Index`] is what searches read; a [`GalleryStore`] keeps
//! it beyond the process. A change is one [`Change`] to one person, made
//! by the service's one gallery-change thread through the store, which
//! answers only once the change is stored and the index holds it:
//!
//! - [`GalleryFile`]: the index file of one machine, saved atomically
//!   after each change (the embedded default).
//! - [`KvGallery`] (feature `nats`): a NATS JetStream Key-Value bucket
//!   shared by a fleet, a key per person. Every process keeps its index as
//!   a replica fed by a watch of the bucket: the current entries at start,
//!   then one delta per change, each applied under the index's own
//!   locking (never a full reload).
//!
//! Knows nothing of images, models or HTTP.

mod entry;
mod file;
#[cfg(feature = "nats")]
mod kv;

use std::time::Duration;

#[cfg(feature = "nats-wire")]
pub use self::entry::{id_of, key_of};
pub use self::entry::{Entry, EntryError, MAX_FACES};
pub use self::file::GalleryFile;
#[cfg(feature = "nats")]
pub use self::kv::{servers, KvConfig, KvGallery};

use crate::index::{Index, IndexError};

/// One change to one person.
#[derive(Debug, Clone)]
pub enum Change {
    /// Faces for `id`: added to those it has, or instead of them
    /// (`replace`). `meta` is stored when the person is new or replaced.
    Put {
        /// The person.
        id: String,
        /// Its new faces' embeddings.
        vectors: Vec<Vec<f32>>,
        /// Its metadata.
        meta: Option<String>,
        /// Instead of its faces, not besides them.
        replace: bool,
    },
    /// `id` and all its faces go.
    Remove {
        /// The person.
        id: String,
    },
}

/// What a change left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// The person as stored after a put.
    Person {
        /// Its id.
        id: String,
        /// Its faces.
        faces: usize,
        /// Its metadata.
        meta: Option<String>,
    },
    /// Faces removed with the person (0: it was not enrolled).
    Removed(usize),
}

/// Why a change was not made.
#[derive(Debug, thiserror::Error)]
pub enum GalleryError {
    /// The index refused it (a bad id, vector or length).
    #[error(transparent)]
    Index(#[from] IndexError),
    /// The store failed to keep it (a file that cannot be written); nothing
    /// changed.
    #[error("{0}")]
    Store(String),
    /// The store cannot be reached now (the broker). Nothing changed,
    /// unless a write was sent and its acknowledgement never came: then it
    /// may still land.
    #[error("the gallery store cannot be reached: {0}")]
    Unreachable(String),
    /// Another process changed the person at the same time, every try.
    #[error("person {id:?} was changed elsewhere at the same time, {tries} times in a row; try again")]
    Conflict {
        /// The person.
        id: String,
        /// Tries made.
        tries: usize,
    },
    /// The person would hold more than the store takes.
    #[error("person {id:?} would have {faces} faces ({bytes} bytes), more than the gallery store takes ({max} bytes, {MAX_FACES} faces)")]
    TooLarge {
        /// The person.
        id: String,
        /// Its faces after the change.
        faces: usize,
        /// Bytes of its entry.
        bytes: usize,
        /// Most bytes an entry may have.
        max: usize,
    },
    /// The change is stored, but this process's replica did not apply it
    /// in time (other processes will; so will this one when it catches up).
    #[error(
        "the change is stored (revision {revision}) but this process has not applied it after {waited:?}"
    )]
    NotApplied {
        /// The change's revision.
        revision: u64,
        /// How long it waited.
        waited: Duration,
    },
}

/// Where a store stands (for `/v1/info`, `/readyz` and the metrics).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StoreStatus {
    /// `memory`, `file` or `nats`.
    pub kind: &'static str,
    /// The file, or the bucket and its broker.
    pub place: String,
    /// The last revision applied to the index (a replica; 0 otherwise).
    pub revision: u64,
    /// Changes stored that this replica has not applied yet, as the broker
    /// last said.
    pub pending: u64,
    /// Whether the replica follows the store now (false: cut off, it
    /// answers from what it has).
    pub connected: bool,
    /// Since the last change was applied (or since the replica caught up,
    /// if later).
    pub since_last_change: Option<Duration>,
    /// Entries of the store that could not be used (skipped, logged).
    pub rejected: u64,
}

impl StoreStatus {
    /// Whether the store answers from a copy that may be behind (a cut-off
    /// replica).
    pub fn degraded(&self) -> bool {
        !self.connected
    }
}

/// Where the gallery is kept beyond the process.
///
/// [`apply`](Self::apply) is called from one thread at a time (the
/// service's gallery-change worker) and may block: it returns once the
/// change is stored and `index` holds it, or with nothing changed.
pub trait GalleryStore: Send + Sync + std::fmt::Debug {
    /// Stores `change` and makes `index` hold it.
    fn apply(&self, index: &Index, change: &Change) -> Result<Applied, GalleryError>;

    /// Writes what must outlive the process (at shutdown).
    fn flush(&self, index: &Index) -> Result<(), GalleryError>;

    /// Where it stands.
    fn status(&self) -> StoreStatus;
}

/// Applies `change` to `index` directly (a store's last step, or a
/// gallery that is not kept).
pub fn apply_to(index: &Index, change: &Change) -> Result<Applied, IndexError> {
    match change {
        Change::Put {
            id,
            vectors,
            meta,
            replace,
        } => {
            let views: Vec<&[f32]> = vectors.iter().map(Vec::as_slice).collect();
            if *replace {
                index.upsert(id, &views, meta.as_deref())?;
            } else {
                index.add(id, &views, meta.as_deref())?;
            }
            Ok(Applied::Person {
                id: id.clone(),
                faces: index.count(id),
                meta: index.meta(id).map(|m| m.to_string()),
            })
        }
        Change::Remove { id } => Ok(Applied::Removed(index.remove(id)?)),
    }
}
