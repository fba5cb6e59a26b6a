//! The vector index for 1:N identify: exact cosine top-k over L2-normalised
//! vectors, several vectors per person, and a versioned, checksummed file.
//!
//! Vectors are normalised once on insert; a search is a dot product with
//! every row. Rows live in chunks of [`CHUNK_ROWS`] contiguous vectors, each
//! behind an `Arc`: a search clones the list of chunks under a read lock (a
//! few pointer copies) and scans without holding any lock, so searches run
//! while people are enrolled and removed. A writer changes a chunk in place
//! when no search holds it, and copies it first when one does.
//!
//! Large scans are split across rayon's threads (call inside
//! `ThreadPool::install` to choose the pool); a batch of queries is scored
//! with one matrix product per chunk.
//!
//! The index knows nothing of images or models.

mod codes;
mod error;
mod file;
mod scan;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use rayon::prelude::*;

pub use crate::vector::dot;
pub use error::IndexError;
pub use file::{FORMAT_VERSION, MAGIC};

/// Vectors per chunk: the unit of copy-on-write and of parallel work.
pub const CHUNK_ROWS: usize = 1024;

/// Largest vector length the index accepts.
pub const MAX_DIM: usize = 65_536;

/// Longest id or metadata string, in bytes.
pub const MAX_TEXT: usize = 64 * 1024;

/// Below this many multiply-adds a search runs on the calling thread only.
const PARALLEL_MIN_WORK: usize = 1 << 21;

/// One person: an external id, optional metadata, one or more vectors.
#[derive(Debug)]
pub(crate) struct Person {
    /// Unique for the life of the index (ids can be re-enrolled).
    key: u64,
    id: Arc<str>,
    meta: Option<Arc<str>>,
}

/// Up to [`CHUNK_ROWS`] vectors, contiguous, with their owners.
#[derive(Clone, Debug, Default)]
pub(crate) struct Chunk {
    rows: Vec<f32>,
    owners: Vec<Arc<Person>>,
    /// The rows' 8-bit codes, made by the first compact scan.
    codes: codes::Lazy,
}

/// One person found by a search.
#[derive(Debug, Clone, PartialEq)]
pub struct Match {
    /// The person's id.
    pub id: Arc<str>,
    /// Cosine similarity of the query with the person's closest vector.
    pub similarity: f32,
    /// The metadata stored with the person.
    pub meta: Option<Arc<str>>,
}

/// What a search returns.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SearchOptions {
    /// Most people per query.
    pub k: usize,
    /// Only people at or above this similarity.
    pub min_similarity: Option<f32>,
    /// How the rows are scanned (the answer is the same).
    pub method: ScanMethod,
}

/// How a search scans the rows. Every method gives the exact answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ScanMethod {
    /// [`Compact`](Self::Compact) where it pays: a CPU with AVX-512 VNNI
    /// and at least [`COMPACT_MIN_ROWS`] rows; else [`Exact`](Self::Exact).
    #[default]
    Auto,
    /// Every row scored in f32.
    Exact,
    /// Every row scored from its 8-bit codes with a bound on the error;
    /// the rows that may be in the top k scored again in f32.
    Compact,
}

/// Rows from which [`ScanMethod::Auto`] scans compactly. Measured with
/// `examples/index_bench` (512 dimensions, 2 threads): one query at a time
/// the compact scan is 2.4× the exact one at 2,048 rows and 3.2× at 8,192;
/// a batch of 1,000 queries is 0.71× at 2,048 rows and 1.5× at 8,192.
pub const COMPACT_MIN_ROWS: usize = 4 * CHUNK_ROWS;

impl SearchOptions {
    /// The best `k` people, whatever their similarity.
    pub fn top(k: usize) -> Self {
        Self {
            k,
            min_similarity: None,
            method: ScanMethod::Auto,
        }
    }

    /// Scanned by `method`.
    pub fn method(self, method: ScanMethod) -> Self {
        Self { method, ..self }
    }

    /// Only people at or above `min`.
    pub fn above(self, min: f32) -> Self {
        Self {
            min_similarity: Some(min),
            ..self
        }
    }
}

/// One enrolled person, as [`Index::people`] lists them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersonInfo {
    /// The id.
    pub id: Arc<str>,
    /// Vectors enrolled for it.
    pub vectors: usize,
    /// Its metadata.
    pub meta: Option<Arc<str>>,
}

/// Sizes of an index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexInfo {
    /// Vector length.
    pub dim: usize,
    /// People (distinct ids).
    pub people: usize,
    /// Vectors.
    pub vectors: usize,
    /// Bytes of vector storage plus per-vector bookkeeping.
    pub bytes: usize,
}

#[derive(Default)]
struct State {
    chunks: Vec<Arc<Chunk>>,
    people: HashMap<Arc<str>, Arc<Person>>,
    vectors: usize,
}

struct Inner {
    dim: usize,
    state: RwLock<State>,
    next_key: AtomicU64,
}

/// An exact cosine index; cheap to clone (clones share the data).
#[derive(Clone)]
pub struct Index {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Index").field("info", &self.info()).finish()
    }
}

/// Copies `v`, scaled to unit length ([`crate::vector::normalised`]).
pub fn normalised(v: &[f32]) -> Result<Vec<f32>, IndexError> {
    crate::vector::normalised(v).map_err(|e| IndexError::BadVector(format!("norm is {}", e.norm)))
}

fn check_text(what: &str, s: &str, allow_empty: bool) -> Result<(), IndexError> {
    if s.is_empty() && !allow_empty {
        return Err(IndexError::BadText(format!("{what} is empty")));
    }
    if s.len() > MAX_TEXT {
        return Err(IndexError::BadText(format!(
            "{what} is {} bytes (most {MAX_TEXT})",
            s.len()
        )));
    }
    Ok(())
}

impl Index {
    /// An empty index of vectors of length `dim`.
    pub fn new(dim: usize) -> Result<Self, IndexError> {
        if dim == 0 || dim > MAX_DIM {
            return Err(IndexError::BadDim(dim));
        }
        Ok(Self::from_state(dim, State::default(), 0))
    }

    fn from_state(dim: usize, state: State, next_key: u64) -> Self {
        Self {
            inner: Arc::new(Inner {
                dim,
                state: RwLock::new(state),
                next_key: AtomicU64::new(next_key),
            }),
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.inner.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.inner.state.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Vector length.
    pub fn dim(&self) -> usize {
        self.inner.dim
    }

    /// Number of people.
    pub fn len(&self) -> usize {
        self.read().people.len()
    }

    /// Whether no one is enrolled.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of vectors.
    pub fn vectors(&self) -> usize {
        self.read().vectors
    }

    /// Sizes.
    pub fn info(&self) -> IndexInfo {
        let s = self.read();
        IndexInfo {
            dim: self.inner.dim,
            people: s.people.len(),
            vectors: s.vectors,
            bytes: s.vectors * Self::bytes_per_vector(self.inner.dim),
        }
    }

    /// Bytes each vector takes in memory: its floats and its owner pointer.
    pub fn bytes_per_vector(dim: usize) -> usize {
        dim * std::mem::size_of::<f32>() + std::mem::size_of::<Arc<Person>>()
    }

    /// Every person with its number of vectors and its metadata, sorted by
    /// id (one pass over the rows).
    pub fn people(&self) -> Vec<PersonInfo> {
        let s = self.read();
        let mut counts: HashMap<u64, usize> = HashMap::with_capacity(s.people.len());
        for c in &s.chunks {
            for p in &c.owners {
                *counts.entry(p.key).or_default() += 1;
            }
        }
        let mut v: Vec<PersonInfo> = s
            .people
            .values()
            .map(|p| PersonInfo {
                id: p.id.clone(),
                vectors: counts.get(&p.key).copied().unwrap_or(0),
                meta: p.meta.clone(),
            })
            .collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// Whether `id` is enrolled.
    pub fn contains(&self, id: &str) -> bool {
        self.read().people.contains_key(id)
    }

    /// The ids, sorted.
    pub fn ids(&self) -> Vec<Arc<str>> {
        let mut v: Vec<Arc<str>> = self.read().people.keys().cloned().collect();
        v.sort();
        v
    }

    /// The metadata of `id` (`None` if absent or without metadata).
    pub fn meta(&self, id: &str) -> Option<Arc<str>> {
        self.read().people.get(id).and_then(|p| p.meta.clone())
    }

    /// Number of vectors enrolled for `id`.
    pub fn count(&self, id: &str) -> usize {
        let s = self.read();
        let Some(key) = s.people.get(id).map(|p| p.key) else {
            return 0;
        };
        s.chunks
            .iter()
            .map(|c| c.owners.iter().filter(|p| p.key == key).count())
            .sum()
    }

    fn check(&self, v: &[f32]) -> Result<Vec<f32>, IndexError> {
        if v.len() != self.inner.dim {
            return Err(IndexError::WrongDim {
                expected: self.inner.dim,
                got: v.len(),
            });
        }
        normalised(v)
    }

    fn person(&self, id: &str, meta: Option<&str>) -> Result<Arc<Person>, IndexError> {
        check_text("id", id, false)?;
        if let Some(m) = meta {
            check_text("metadata", m, true)?;
        }
        Ok(Arc::new(Person {
            key: self.inner.next_key.fetch_add(1, Ordering::Relaxed),
            id: id.into(),
            meta: meta.map(Into::into),
        }))
    }

    /// Adds one vector to `id`, enrolling it if new (several vectors per
    /// person: a search returns the person once, with its best score).
    pub fn insert(&self, id: &str, vector: &[f32]) -> Result<(), IndexError> {
        self.insert_many([(id, vector)])
    }

    /// Adds vectors to their ids under one lock (a bulk load); nothing is
    /// added if any vector or id is bad.
    pub fn insert_many<'a, I>(&self, items: I) -> Result<(), IndexError>
    where
        I: IntoIterator<Item = (&'a str, &'a [f32])>,
    {
        let mut rows = Vec::new();
        for (id, v) in items {
            check_text("id", id, false)?;
            rows.push((id, self.check(v)?));
        }
        let mut s = self.write();
        let mut fresh: HashMap<&str, Arc<Person>> = HashMap::new();
        for (id, _) in &rows {
            if !s.people.contains_key(*id) && !fresh.contains_key(id) {
                fresh.insert(id, self.person(id, None)?);
            }
        }
        for (id, p) in fresh {
            s.people.insert(id.into(), p);
        }
        for (id, v) in rows {
            let Some(p) = s.people.get(id).cloned() else {
                continue;
            };
            Self::append(&mut s, &v, p);
        }
        Ok(())
    }

    /// Adds vectors to `id` under one lock, enrolling it with `meta` if it
    /// is new (an existing person keeps its metadata); nothing is added if
    /// any vector is bad. Two callers adding to the same new id both keep
    /// their vectors.
    pub fn add(&self, id: &str, vectors: &[&[f32]], meta: Option<&str>) -> Result<(), IndexError> {
        if vectors.is_empty() {
            return Err(IndexError::NoVectors(id.to_owned()));
        }
        let rows = vectors
            .iter()
            .map(|v| self.check(v))
            .collect::<Result<Vec<_>, _>>()?;
        let fresh = self.person(id, meta)?;
        let mut s = self.write();
        let p = s.people.entry(fresh.id.clone()).or_insert(fresh).clone();
        for v in rows {
            Self::append(&mut s, &v, p.clone());
        }
        Ok(())
    }

    /// Enrolls `id` with exactly these vectors and metadata, replacing any
    /// it had (an update). Searches see the old or the new person, never
    /// both and never neither.
    pub fn upsert(&self, id: &str, vectors: &[&[f32]], meta: Option<&str>) -> Result<(), IndexError> {
        if vectors.is_empty() {
            return Err(IndexError::NoVectors(id.to_owned()));
        }
        let rows = vectors
            .iter()
            .map(|v| self.check(v))
            .collect::<Result<Vec<_>, _>>()?;
        let p = self.person(id, meta)?;
        let mut s = self.write();
        if let Some(old) = s.people.remove(id) {
            Self::drop_rows(&mut s, old.key);
        }
        s.people.insert(p.id.clone(), p.clone());
        for v in rows {
            Self::append(&mut s, &v, p.clone());
        }
        Ok(())
    }

    /// Removes `id` and all its vectors; returns how many vectors went.
    pub fn remove(&self, id: &str) -> usize {
        let mut s = self.write();
        match s.people.remove(id) {
            Some(p) => Self::drop_rows(&mut s, p.key),
            None => 0,
        }
    }

    fn append(s: &mut State, v: &[f32], p: Arc<Person>) {
        let full = s.chunks.last().is_none_or(|c| c.owners.len() >= CHUNK_ROWS);
        if full {
            s.chunks.push(Arc::new(Chunk {
                rows: Vec::with_capacity(CHUNK_ROWS * v.len()),
                owners: Vec::with_capacity(CHUNK_ROWS),
                codes: codes::Lazy::default(),
            }));
        }
        if let Some(last) = s.chunks.last_mut() {
            // Copies the chunk only if a search is scanning it right now.
            let c = Arc::make_mut(last);
            c.rows.extend_from_slice(v);
            c.owners.push(p);
            c.codes = codes::Lazy::default();
            s.vectors += 1;
        }
    }

    fn drop_rows(s: &mut State, key: u64) -> usize {
        let mut gone = 0;
        for chunk in &mut s.chunks {
            if !chunk.owners.iter().any(|p| p.key == key) {
                continue;
            }
            let c = Arc::make_mut(chunk);
            let dim = c.rows.len() / c.owners.len().max(1);
            let mut rows = Vec::with_capacity(c.rows.len());
            let mut owners = Vec::with_capacity(c.owners.len());
            for (row, p) in c.rows.chunks_exact(dim).zip(&c.owners) {
                if p.key == key {
                    gone += 1;
                } else {
                    rows.extend_from_slice(row);
                    owners.push(p.clone());
                }
            }
            *c = Chunk {
                rows,
                owners,
                codes: codes::Lazy::default(),
            };
        }
        s.chunks.retain(|c| !c.owners.is_empty());
        s.vectors -= gone;
        gone
    }

    /// A copy of this index that can be changed without touching this one
    /// (its vectors are shared until either side changes them: a chunk is
    /// copied when first written). For changes that must be stored before
    /// they are live: change the fork, save it, then
    /// [`replace_with`](Self::replace_with) it.
    pub fn fork(&self) -> Index {
        let (state, next) = self.fork_state();
        Self::from_state(self.inner.dim, state, next)
    }

    /// What this index holds (its chunks shared, copied when written) and
    /// its next key.
    fn fork_state(&self) -> (State, u64) {
        let s = self.read();
        let state = State {
            chunks: s.chunks.clone(),
            people: s.people.clone(),
            vectors: s.vectors,
        };
        (state, self.inner.next_key.load(Ordering::Relaxed))
    }

    /// Makes this index hold what `other` holds (a fork of it, changed), in
    /// one step: searches see all of the old or all of the new. An error
    /// if the dimensions differ.
    pub fn replace_with(&self, other: &Index) -> Result<(), IndexError> {
        if other.dim() != self.dim() {
            return Err(IndexError::WrongDim {
                expected: self.dim(),
                got: other.dim(),
            });
        }
        let (state, next) = other.fork_state();
        *self.write() = state;
        self.inner.next_key.fetch_max(next, Ordering::Relaxed);
        Ok(())
    }

    fn snapshot(&self) -> Vec<Arc<Chunk>> {
        self.read().chunks.clone()
    }

    /// The best `k` people for `query`, best first.
    pub fn search(&self, query: &[f32], k: usize) -> Result<Vec<Match>, IndexError> {
        let mut r = self.search_batch(&[query], SearchOptions::top(k))?;
        Ok(r.pop().unwrap_or_default())
    }

    /// Searches several queries in one scan of the index; one list of
    /// matches per query, in order.
    pub fn search_batch(
        &self,
        queries: &[&[f32]],
        opts: SearchOptions,
    ) -> Result<Vec<Vec<Match>>, IndexError> {
        let dim = self.inner.dim;
        let mut flat = Vec::with_capacity(queries.len() * dim);
        for q in queries {
            flat.extend(self.check(q)?);
        }
        let min = opts.min_similarity.unwrap_or(f32::NEG_INFINITY);
        if queries.is_empty() || opts.k == 0 {
            return Ok(vec![Vec::new(); queries.len()]);
        }
        let chunks = self.snapshot();
        let rows: usize = chunks.iter().map(|c| c.owners.len()).sum();
        let nq = queries.len();
        let compact = match opts.method {
            ScanMethod::Exact => None,
            ScanMethod::Compact => Some(codes::Queries::encode(&flat, dim)),
            ScanMethod::Auto => {
                (codes::vnni() && rows >= COMPACT_MIN_ROWS).then(|| codes::Queries::encode(&flat, dim))
            }
        };
        let bars = codes::Bars::new(if compact.is_some() { nq } else { 0 });
        let one = |scan: &mut scan::Scan, c: &Chunk| match &compact {
            Some(q) => scan.chunk_compact(c, q, &bars, &flat, dim),
            None => scan.chunk(c, &flat, dim),
        };
        let scan = if rows.saturating_mul(nq).saturating_mul(dim) < PARALLEL_MIN_WORK {
            let mut scan = scan::Scan::new(nq, opts.k, min);
            for c in &chunks {
                one(&mut scan, c);
            }
            scan
        } else {
            chunks
                .par_iter()
                .fold(
                    || scan::Scan::new(nq, opts.k, min),
                    |mut scan, c| {
                        one(&mut scan, c);
                        scan
                    },
                )
                .reduce(|| scan::Scan::new(nq, opts.k, min), scan::Scan::merge)
        };
        Ok(scan.tops.into_iter().map(scan::TopK::into_matches).collect())
    }

    /// Writes the index to `path` atomically: a temporary file in the same
    /// directory (`.{name}.tmp.{pid}.{random}`, locked while written),
    /// flushed to disk, renamed over `path`, then the directory flushed so
    /// the rename survives a power cut. A process killed at any instant
    /// leaves `path` with the old or the new content, never a mix
    /// (`tests/crash_safety.rs`). A successful save removes the temp files
    /// that killed writers left (those whose lock is free). Searches and
    /// writes go on meanwhile; the file holds the index as it was when the
    /// save began.
    pub fn save(&self, path: &Path) -> Result<(), IndexError> {
        let chunks = self.snapshot();
        file::save(path, self.inner.dim, &chunks)
    }

    /// Reads an index written by [`save`](Self::save), checking its format,
    /// sizes and checksum before trusting any of it.
    pub fn load(path: &Path) -> Result<Self, IndexError> {
        let (dim, rows) = file::load(path)?;
        let mut state = State::default();
        let mut next_key = 0u64;
        for chunk in &rows {
            for p in &chunk.owners {
                if !state.people.contains_key(&p.id) {
                    next_key = next_key.max(p.key + 1);
                    state.people.insert(p.id.clone(), p.clone());
                }
            }
            state.vectors += chunk.owners.len();
        }
        state.chunks = rows.into_iter().map(Arc::new).collect();
        Ok(Self::from_state(dim, state, next_key))
    }
}
