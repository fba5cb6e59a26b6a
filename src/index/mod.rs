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
//! An index loaded with [`Vectors::InFile`] keeps only the rows' 8-bit
//! codes in memory (a quarter of the floats) and reads the f32 rows from
//! its file when a search re-scores a candidate, an exact scan passes, or
//! a change needs them; a chunk that changes moves into memory.
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
pub use file::{stored_codes_len, FORMAT_VERSION, MAGIC};
pub use scan::GEMM_MIN_QUERIES;

/// A person as [`Index::export`] gives it: its id, its metadata, its
/// vectors.
pub type Exported = (Arc<str>, Option<Arc<str>>, Vec<Vec<f32>>);

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
#[derive(Clone, Debug)]
pub(crate) struct Chunk {
    rows: Rows,
    owners: Vec<Arc<Person>>,
    /// The rows' 8-bit codes, read from the file or made by the first
    /// compact scan.
    codes: codes::Lazy,
}

/// Where a chunk's f32 rows are.
#[derive(Clone, Debug)]
enum Rows {
    Memory(Vec<f32>),
    /// In an index file, from byte `at` on, read when needed.
    File {
        file: Arc<file::Stored>,
        at: u64,
    },
}

impl Chunk {
    fn in_memory(rows: Vec<f32>, owners: Vec<Arc<Person>>) -> Self {
        Self {
            rows: Rows::Memory(rows),
            owners,
            codes: codes::Lazy::default(),
        }
    }

    /// Whether its rows are in a file.
    fn in_file(&self) -> bool {
        matches!(self.rows, Rows::File { .. })
    }

    /// All rows: borrowed when in memory, else read into `buf`.
    fn rows<'a>(&'a self, dim: usize, buf: &'a mut Vec<f32>) -> Result<&'a [f32], IndexError> {
        match &self.rows {
            Rows::Memory(v) => Ok(v),
            Rows::File { file, at } => {
                file.read(*at, self.owners.len() * dim, buf)?;
                Ok(buf)
            }
        }
    }

    /// Row `r`: borrowed when in memory, else read into `buf`.
    fn row<'a>(&'a self, r: usize, dim: usize, buf: &'a mut Vec<f32>) -> Result<&'a [f32], IndexError> {
        match &self.rows {
            Rows::Memory(v) => Ok(&v[r * dim..(r + 1) * dim]),
            Rows::File { file, at } => {
                file.read(at + (4 * r * dim) as u64, dim, buf)?;
                Ok(buf)
            }
        }
    }

    /// The rows' codes, made now if not yet.
    fn codes(&self, dim: usize) -> Result<&codes::Codes, IndexError> {
        match &self.rows {
            Rows::Memory(v) => Ok(self.codes.of(v, dim)),
            Rows::File { .. } => self.codes.get(
                || {
                    let mut buf = Vec::new();
                    self.rows(dim, &mut buf)?;
                    Ok(buf)
                },
                dim,
            ),
        }
    }

    /// Bytes it holds in memory: rows there, owners, codes once made.
    fn bytes(&self) -> usize {
        let rows = match &self.rows {
            Rows::Memory(v) => std::mem::size_of_val(&v[..]),
            Rows::File { .. } => 0,
        };
        rows + std::mem::size_of_val(&self.owners[..]) + self.codes.peek().map_or(0, codes::Codes::bytes)
    }
}

/// Where a loaded index keeps its f32 vectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Vectors {
    /// In memory (4 bytes a dimension a vector).
    #[default]
    InMemory,
    /// In the file, read when a search or a change needs them; memory
    /// holds their 8-bit codes (a quarter of the size). The file must not
    /// be changed in place while the index is in use (saves replace it by
    /// renaming a new file over it, which leaves the open one readable).
    InFile,
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
    /// and at least [`COMPACT_MIN_ROWS`] rows, or rows left in the index
    /// file ([`Vectors::InFile`]: an exact scan would read all of them);
    /// else [`Exact`](Self::Exact).
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

/// [`ScanMethod::Auto`]'s choice: compact on a VNNI CPU from
/// [`COMPACT_MIN_ROWS`] rows, and wherever rows are left in a file (even
/// without VNNI: an exact scan would read the whole file).
fn auto_compact(chunks: &[Arc<Chunk>]) -> bool {
    let rows: usize = chunks.iter().map(|c| c.owners.len()).sum();
    (codes::vnni() && rows >= COMPACT_MIN_ROWS) || chunks.iter().any(|c| c.in_file())
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

    /// Whether a search with [`ScanMethod::Auto`] scans compactly now.
    pub fn scans_compactly(&self) -> bool {
        auto_compact(&self.snapshot())
    }

    /// Whether `other` is this index or a clone of it (not a fork).
    pub fn same(&self, other: &Index) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
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
            bytes: s.chunks.iter().map(|c| c.bytes()).sum(),
        }
    }

    /// Bytes each vector takes in memory when its floats are there: the
    /// floats and its owner pointer (its 8-bit codes, once a compact scan
    /// made them, add [`codes_bytes_per_vector`](Self::codes_bytes_per_vector)).
    pub fn bytes_per_vector(dim: usize) -> usize {
        dim * std::mem::size_of::<f32>() + std::mem::size_of::<Arc<Person>>()
    }

    /// Bytes of a vector's 8-bit codes and their numbers.
    pub fn codes_bytes_per_vector(dim: usize) -> usize {
        codes::Codes::stored_len(codes::LANES, dim).map_or(usize::MAX, |b| b / codes::LANES)
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

    /// Every person with its metadata and its vectors as stored (normalised,
    /// in the order they were added), sorted by id, in one pass over the
    /// rows (an export). An I/O error if vectors are in the file and it
    /// cannot be read.
    pub fn export(&self) -> Result<Vec<Exported>, IndexError> {
        let (chunks, people) = {
            let s = self.read();
            (s.chunks.clone(), s.people.values().cloned().collect::<Vec<_>>())
        };
        let mut at: HashMap<u64, usize> = HashMap::with_capacity(people.len());
        let mut out: Vec<Exported> = Vec::with_capacity(people.len());
        for p in &people {
            at.insert(p.key, out.len());
            out.push((p.id.clone(), p.meta.clone(), Vec::new()));
        }
        let dim = self.inner.dim;
        let mut buf = Vec::new();
        for c in &chunks {
            let rows = c.rows(dim, &mut buf)?;
            for (row, p) in rows.chunks_exact(dim).zip(&c.owners) {
                if let Some(&i) = at.get(&p.key) {
                    out[i].2.push(row.to_vec());
                }
            }
        }
        out.retain(|p| !p.2.is_empty());
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// The vectors of `id` as stored (normalised), in the order they were
    /// added (none if absent). An I/O error if they are in the file and it
    /// cannot be read.
    pub fn vectors_of(&self, id: &str) -> Result<Vec<Vec<f32>>, IndexError> {
        let chunks = {
            let s = self.read();
            let Some(key) = s.people.get(id).map(|p| p.key) else {
                return Ok(Vec::new());
            };
            s.chunks
                .iter()
                .filter(|c| c.owners.iter().any(|p| p.key == key))
                .map(|c| (c.clone(), key))
                .collect::<Vec<_>>()
        };
        let dim = self.inner.dim;
        let mut out = Vec::new();
        let mut buf = Vec::new();
        for (c, key) in chunks {
            for (r, p) in c.owners.iter().enumerate() {
                if p.key == key {
                    out.push(c.row(r, dim, &mut buf)?.to_vec());
                }
            }
        }
        Ok(out)
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
    /// both and never neither. An I/O error (nothing changed) if the old
    /// vectors are in the file and cannot be read.
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
        if let Some(old) = s.people.get(id).map(|p| p.key) {
            let plan = Self::without(&s, old, self.inner.dim)?;
            s.people.remove(id);
            Self::apply(&mut s, plan);
        }
        s.people.insert(p.id.clone(), p.clone());
        for v in rows {
            Self::append(&mut s, &v, p.clone());
        }
        Ok(())
    }

    /// Removes `id` and all its vectors; returns how many vectors went.
    /// An error only if the vectors live in the file and it cannot be
    /// read (then nothing is removed).
    pub fn remove(&self, id: &str) -> Result<usize, IndexError> {
        let mut s = self.write();
        let Some(key) = s.people.get(id).map(|p| p.key) else {
            return Ok(0);
        };
        let plan = Self::without(&s, key, self.inner.dim)?;
        s.people.remove(id);
        Ok(Self::apply(&mut s, plan))
    }

    fn append(s: &mut State, v: &[f32], p: Arc<Person>) {
        // A chunk whose rows are in the file is not grown (that would read
        // it): a new one starts.
        let full = s
            .chunks
            .last()
            .is_none_or(|c| c.owners.len() >= CHUNK_ROWS || c.in_file());
        if full {
            s.chunks.push(Arc::new(Chunk::in_memory(
                Vec::with_capacity(CHUNK_ROWS * v.len()),
                Vec::with_capacity(CHUNK_ROWS),
            )));
        }
        if let Some(last) = s.chunks.last_mut() {
            // Copies the chunk only if a search is scanning it right now.
            let c = Arc::make_mut(last);
            if let Rows::Memory(rows) = &mut c.rows {
                rows.extend_from_slice(v);
                c.owners.push(p);
                c.codes = codes::Lazy::default();
                s.vectors += 1;
            }
        }
    }

    /// The chunks that hold rows of `key`, each rebuilt in memory without
    /// them (read from the file where they are there), by position.
    fn without(s: &State, key: u64, dim: usize) -> Result<Vec<(usize, Chunk)>, IndexError> {
        let mut plan = Vec::new();
        let mut buf = Vec::new();
        for (i, c) in s.chunks.iter().enumerate() {
            if !c.owners.iter().any(|p| p.key == key) {
                continue;
            }
            let all = c.rows(dim, &mut buf)?;
            let mut rows = Vec::with_capacity(all.len());
            let mut owners = Vec::with_capacity(c.owners.len());
            for (row, p) in all.chunks_exact(dim).zip(&c.owners) {
                if p.key != key {
                    rows.extend_from_slice(row);
                    owners.push(p.clone());
                }
            }
            plan.push((i, Chunk::in_memory(rows, owners)));
        }
        Ok(plan)
    }

    /// Puts in the chunks [`without`](Self::without) rebuilt; returns the
    /// rows that went.
    fn apply(s: &mut State, plan: Vec<(usize, Chunk)>) -> usize {
        let mut gone = 0;
        for (i, c) in plan {
            if let Some(slot) = s.chunks.get_mut(i) {
                gone += slot.owners.len() - c.owners.len();
                *slot = Arc::new(c);
            }
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
            ScanMethod::Auto => auto_compact(&chunks).then(|| codes::Queries::encode(&flat, dim)),
        };
        let bars = codes::Bars::new(if compact.is_some() { nq } else { 0 });
        let one = |scan: &mut scan::Scan, c: &Chunk| match &compact {
            Some(q) => scan.chunk_compact(c, q, &bars, &flat, dim),
            None => scan.chunk(c, &flat, dim),
        };
        let scan: scan::Scan = if rows.saturating_mul(nq).saturating_mul(dim) < PARALLEL_MIN_WORK {
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
        scan.into_matches()
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
    /// sizes and checksum before trusting any of it; its vectors in memory.
    pub fn load(path: &Path) -> Result<Self, IndexError> {
        Self::load_with(path, Vectors::InMemory)
    }

    /// [`load`](Self::load), keeping the vectors where `vectors` says. The
    /// whole file is read and checked either way; with
    /// [`Vectors::InFile`] it stays open and only the codes stay in memory
    /// (files of format 1, which have none, get theirs made by the first
    /// compact scan of each chunk).
    pub fn load_with(path: &Path, vectors: Vectors) -> Result<Self, IndexError> {
        let (dim, rows) = file::load(path, vectors)?;
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
