//! The gallery's operations: enroll, remove, look up, list.
//!
//! - **Bounded.** An id is 1 to [`MAX_ID_BYTES`] bytes of text, metadata
//!   at most [`MAX_META_BYTES`], neither with control characters (so an
//!   answer never multiplies them as `\u00XX`), a page at most
//!   [`MAX_PAGE`] people: every answer is bounded in bytes.
//! - **All or nothing, live only once stored.** A change runs on the one
//!   gallery-change worker (changes never race): with a gallery file, it
//!   is made on a fork of the index, the fork is saved, and only then does
//!   the live index become the fork. A save that fails leaves the gallery
//!   as it was, and the caller gets the error.
//! - **Idempotent on request.** An enroll with a key that was already
//!   answered (within the last [`KEYS_KEPT`] keyed enrolls of this process)
//!   answers what it answered then, without enrolling again; the same key
//!   with another request is a `Conflict`.
//! - **Off the async threads.** Index reads (lookups, listings, searches)
//!   run on the service's index-read workers, changes on its change
//!   worker, each awaited; a full queue refuses with `Overloaded`.

use std::time::Instant;

use sha2::{Digest, Sha256};

use super::ops::block_on;
use super::pipeline::ImageSource;
use super::results::{person_of, Call, PeoplePage, Person};
use super::{ErrorKind, FaceService, ServiceError};
use crate::gallery::{apply_to, Applied, Change, MAX_FACES};
use crate::index::{Index, IndexError};

/// Longest person id, bytes.
pub const MAX_ID_BYTES: usize = 256;
/// Longest metadata, bytes.
pub const MAX_META_BYTES: usize = 4096;
/// People a listing page may hold.
pub const MAX_PAGE: usize = 1000;
/// Keyed enrolls remembered (per process).
pub const KEYS_KEPT: usize = 10_000;

/// What a keyed enroll answered, with the fingerprint of its request.
pub(crate) type Keyed = ([u8; 32], Person);

fn malformed(code: &'static str, message: String) -> ServiceError {
    ServiceError::request(ErrorKind::Malformed, code, message)
}

/// A person's id: 1 to [`MAX_ID_BYTES`] bytes of text without control
/// characters.
pub fn check_id(id: &str) -> Result<&str, ServiceError> {
    if id.is_empty() || id.len() > MAX_ID_BYTES || id.chars().any(char::is_control) {
        return Err(malformed(
            "bad_id",
            format!("a person's id is 1 to {MAX_ID_BYTES} bytes of text without control characters"),
        ));
    }
    Ok(id)
}

/// Metadata: at most [`MAX_META_BYTES`] bytes of text without control
/// characters (tabs and line breaks allowed).
pub fn check_meta(meta: &str) -> Result<&str, ServiceError> {
    let control = meta
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r'));
    if meta.len() > MAX_META_BYTES || control {
        return Err(malformed(
            "bad_meta",
            format!(
                "metadata is at most {MAX_META_BYTES} bytes of text without control characters (it has {} bytes)",
                meta.len()
            ),
        ));
    }
    Ok(meta)
}

fn unknown(id: &str) -> ServiceError {
    ServiceError::request(ErrorKind::NotFound, "unknown_person", format!("no person {id:?}"))
}

/// The fingerprint of an enroll request (what a key must be reused with).
fn fingerprint(id: &str, images: &[ImageSource], meta: Option<&str>, replace: bool) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(id.as_bytes());
    h.update([u8::from(replace), u8::from(meta.is_some())]);
    h.update(meta.unwrap_or("").as_bytes());
    for i in images {
        match i {
            ImageSource::Path(p) => {
                h.update(b"p");
                h.update(p.to_string_lossy().as_bytes());
            }
            ImageSource::Bytes(b) => {
                h.update(b"b");
                h.update((b.len() as u64).to_le_bytes());
                h.update(b);
            }
        }
    }
    h.finalize().into()
}

impl FaceService {
    /// Runs `f` on the index-read workers and awaits it.
    pub(crate) async fn read_index<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Index) -> T + Send + 'static,
    ) -> Result<T, ServiceError> {
        let index = self.index.clone();
        Ok(self.reads.try_submit(move |_: &mut ()| f(&index))?.await?)
    }

    /// Runs a change on the gallery-change worker, through the gallery
    /// store when there is one (it answers once the change is stored and
    /// the index holds it), on the live index otherwise. A keyed change
    /// answered before answers the same again without being made.
    async fn change(
        &self,
        change: Change,
        keyed: Option<(String, [u8; 32])>,
    ) -> Result<Applied, ServiceError> {
        let (index, store, keys) = (self.index.clone(), self.store.clone(), self.keys.clone());
        let job = move |_: &mut ()| {
            if let Some((k, fp)) = &keyed {
                if let Some(done) = answered(&keys, k, fp)? {
                    return Ok(Applied::Person {
                        id: done.id,
                        faces: done.faces,
                        meta: done.meta,
                    });
                }
            }
            let applied = match &store {
                None => apply_to(&index, &change)?,
                Some(s) => s.apply(&index, &change)?,
            };
            if let (Some((k, fp)), Applied::Person { id, faces, meta }) = (keyed, &applied) {
                let person = Person {
                    id: id.clone(),
                    faces: *faces,
                    meta: meta.clone(),
                };
                crate::sync::lock(&keys).insert(k, (fp, person));
            }
            Ok(applied)
        };
        self.changes.try_submit(job)?.await?
    }

    /// Enrolls `vectors` (embeddings) under `id` and answers the person as
    /// stored: the path of every enroll, after its images are embedded.
    async fn enroll_vectors(
        &self,
        keyed: Option<(String, [u8; 32])>,
        id: String,
        vectors: Vec<Vec<f32>>,
        meta: Option<String>,
        replace: bool,
    ) -> Result<Person, ServiceError> {
        let change = Change::Put {
            id,
            vectors,
            meta,
            replace,
        };
        match self.change(change, keyed).await? {
            Applied::Person { id, faces, meta } => Ok(Person { id, faces, meta }),
            Applied::Removed(_) => Err(ServiceError::Gallery("a put answered a removal".into())),
        }
    }

    /// Enrolls embeddings made elsewhere (a migration, another facepool's
    /// export) under `id`, as [`enroll_async`](Self::enroll_async) enrolls
    /// images: each of this model's length, finite and not all zero; at
    /// most [`MAX_FACES`] at once. All or nothing.
    pub async fn enroll_embeddings_async(
        &self,
        key: Option<&str>,
        id: &str,
        vectors: Vec<Vec<f32>>,
        meta: Option<&str>,
        replace: bool,
    ) -> Result<Person, ServiceError> {
        let id = check_id(id)?.to_owned();
        let meta = meta.map(check_meta).transpose()?.map(str::to_owned);
        if vectors.is_empty() {
            return Err(IndexError::NoVectors(id).into());
        }
        if vectors.len() > MAX_FACES {
            return Err(ServiceError::request(
                ErrorKind::TooLarge,
                "too_many_embeddings",
                format!("{} embeddings in one enroll (most {MAX_FACES})", vectors.len()),
            ));
        }
        for (i, v) in vectors.iter().enumerate() {
            if v.len() != self.dim {
                return Err(malformed(
                    "bad_embedding",
                    format!(
                        "embedding {i} has {} numbers; this model's have {}",
                        v.len(),
                        self.dim
                    ),
                ));
            }
            if crate::index::normalised(v).is_err() {
                return Err(malformed(
                    "bad_embedding",
                    format!("embedding {i} is not a direction (a number that is not finite, or all zero)"),
                ));
            }
        }
        let keyed = key.map(|k| {
            let mut h = Sha256::new();
            h.update(b"embeddings");
            for v in &vectors {
                for x in v {
                    h.update(x.to_le_bytes());
                }
            }
            h.update(fingerprint(&id, &[], meta.as_deref(), replace));
            (k.to_owned(), <[u8; 32]>::from(h.finalize()))
        });
        if let Some((k, fp)) = &keyed {
            if let Some(done) = self.answered(k, fp)? {
                return Ok(done);
            }
        }
        self.enroll_vectors(keyed, id, vectors, meta, replace).await
    }

    /// Enrolls the largest face of each image under `id`, adding to the
    /// faces it already has (`replace`: instead of them). All or nothing:
    /// if any image fails, the gallery is left as it was and the error
    /// names the image (by its position, from 0). `meta` is stored when
    /// the person is new or replaced. The change is live only once the
    /// gallery file (if the service has one) holds it.
    pub async fn enroll_async(
        &self,
        id: &str,
        images: Vec<ImageSource>,
        meta: Option<&str>,
        replace: bool,
        call: Call,
    ) -> Result<Person, ServiceError> {
        self.enroll_keyed_async(None, id, images, meta, replace, call)
            .await
    }

    /// [`enroll_async`](Self::enroll_async) with an idempotency key: an
    /// enroll of the same key answered before answers the same again
    /// without enrolling anything (a client's retry after a lost answer);
    /// the same key with another request is a `Conflict`.
    pub async fn enroll_keyed_async(
        &self,
        key: Option<&str>,
        id: &str,
        images: Vec<ImageSource>,
        meta: Option<&str>,
        replace: bool,
        mut call: Call,
    ) -> Result<Person, ServiceError> {
        let t0 = Instant::now();
        let id = check_id(id)?.to_owned();
        let meta = meta.map(check_meta).transpose()?.map(str::to_owned);
        if images.is_empty() {
            return Err(IndexError::NoVectors(id).into());
        }
        let keyed = key.map(|k| (k.to_owned(), fingerprint(&id, &images, meta.as_deref(), replace)));
        if let Some((k, fp)) = &keyed {
            if let Some(done) = self.answered(k, fp)? {
                return Ok(done);
            }
        }
        let mut vectors = Vec::with_capacity(images.len());
        for (index, r) in self
            .embed_call(images, &mut call, t0)
            .await?
            .into_iter()
            .enumerate()
        {
            vectors.push(r.map_err(|e| e.for_image(index))?.0.embedding.0);
        }
        self.enroll_vectors(keyed, id, vectors, meta, replace).await
    }

    /// What a keyed enroll answered before, if it was the same request.
    fn answered(&self, key: &str, fp: &[u8; 32]) -> Result<Option<Person>, ServiceError> {
        answered(&self.keys, key, fp)
    }

    /// [`enroll_async`](Self::enroll_async), blocking.
    pub fn enroll(
        &self,
        id: &str,
        images: Vec<ImageSource>,
        meta: Option<&str>,
        replace: bool,
    ) -> Result<Person, ServiceError> {
        block_on(self.enroll_async(id, images, meta, replace, Call::wait()))
    }

    /// Removes `id` and its faces; returns how many faces went
    /// (`NotFound` if it was not enrolled). Live only once stored, like an
    /// enroll.
    pub async fn remove_async(&self, id: &str) -> Result<usize, ServiceError> {
        let id = check_id(id)?.to_owned();
        match self.change(Change::Remove { id: id.clone() }, None).await? {
            Applied::Removed(0) => Err(unknown(&id)),
            Applied::Removed(n) => Ok(n),
            Applied::Person { .. } => Err(ServiceError::Gallery("a removal answered a put".into())),
        }
    }

    /// [`remove_async`](Self::remove_async), blocking.
    pub fn remove(&self, id: &str) -> Result<usize, ServiceError> {
        block_on(self.remove_async(id))
    }

    /// An enrolled person (`NotFound` if not), read on the index workers.
    pub async fn person_async(&self, id: &str) -> Result<Person, ServiceError> {
        let id = check_id(id)?.to_owned();
        self.read_index(move |index| person_in(index, &id)).await?
    }

    /// An enrolled person (`NotFound` if not), read on this thread.
    pub fn person(&self, id: &str) -> Result<Person, ServiceError> {
        person_in(&self.index, check_id(id)?)
    }

    /// A page of the enrolled people, by id: `limit` (1 to [`MAX_PAGE`])
    /// people from position `offset`, read on the index workers.
    pub async fn people_async(&self, offset: usize, limit: usize) -> Result<PeoplePage, ServiceError> {
        check_limit(limit)?;
        self.read_index(move |index| page_of(index, None, offset, limit))
            .await
    }

    /// [`people_async`](Self::people_async) of the people whose id contains
    /// `text` (case-insensitive, at most [`MAX_ID_BYTES`] bytes): `total`
    /// counts those.
    pub async fn search_people_async(
        &self,
        text: &str,
        offset: usize,
        limit: usize,
    ) -> Result<PeoplePage, ServiceError> {
        let text = check_search(text, limit)?;
        self.read_index(move |index| page_of(index, Some(&text), offset, limit))
            .await
    }

    /// [`search_people_async`](Self::search_people_async), read on this
    /// thread.
    pub fn search_people(&self, text: &str, offset: usize, limit: usize) -> Result<PeoplePage, ServiceError> {
        let text = check_search(text, limit)?;
        Ok(page_of(&self.index, Some(&text), offset, limit))
    }

    /// [`people_async`](Self::people_async), read on this thread.
    pub fn people(&self, offset: usize, limit: usize) -> Result<PeoplePage, ServiceError> {
        check_limit(limit)?;
        Ok(page_of(&self.index, None, offset, limit))
    }
}

fn answered(
    keys: &std::sync::Mutex<super::Recent<String, Keyed>>,
    key: &str,
    fp: &[u8; 32],
) -> Result<Option<Person>, ServiceError> {
    match crate::sync::lock(keys).get(&key.to_owned()) {
        Some((seen, person)) if seen == fp => Ok(Some(person.clone())),
        Some(_) => Err(ServiceError::request(
            ErrorKind::Conflict,
            "idempotency_key_reused",
            format!("the idempotency key {key:?} was used for another request"),
        )),
        None => Ok(None),
    }
}

/// A search's text, lower-cased, once it and the page's limit are checked.
/// (Each search reads every id: a scan of the gallery's ids, like a page.)
fn check_search(text: &str, limit: usize) -> Result<String, ServiceError> {
    check_limit(limit)?;
    if text.len() > MAX_ID_BYTES {
        return Err(malformed(
            "bad_search",
            format!("search is at most {MAX_ID_BYTES} bytes"),
        ));
    }
    Ok(text.to_lowercase())
}

fn check_limit(limit: usize) -> Result<(), ServiceError> {
    if limit == 0 || limit > MAX_PAGE {
        return Err(malformed("bad_limit", format!("limit must be 1 to {MAX_PAGE}")));
    }
    Ok(())
}

fn person_in(index: &Index, id: &str) -> Result<Person, ServiceError> {
    let faces = index.count(id);
    if faces == 0 {
        return Err(unknown(id));
    }
    Ok(Person {
        id: id.to_owned(),
        faces,
        meta: index.meta(id).map(|m| m.to_string()),
    })
}

/// A page of the people (those whose lower-cased id contains `search`).
fn page_of(index: &Index, search: Option<&str>, offset: usize, limit: usize) -> PeoplePage {
    let mut people = index.people();
    if let Some(text) = search.filter(|t| !t.is_empty()) {
        people.retain(|p| p.id.to_lowercase().contains(text));
    }
    let total = people.len();
    let page = people
        .iter()
        .skip(offset)
        .take(limit)
        .map(|p| person_of(&p.id, p.vectors, p.meta.as_ref()))
        .collect();
    PeoplePage {
        total,
        offset,
        people: page,
    }
}
