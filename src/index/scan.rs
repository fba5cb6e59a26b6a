//! The search kernels: dot products over contiguous rows, a top-k collector
//! that keeps each person once, and the scan of one chunk.

use std::sync::Arc;

use ndarray::linalg::general_mat_mul;
use ndarray::{ArrayView2, ArrayViewMut2};

use super::codes::{self, Queries, TILE};
use super::{Chunk, IndexError, Match, Person};
use crate::vector::dot;

/// Below this many queries a scan computes dot products row by row (the
/// scan is memory-bound); from it on, a matrix product (compute-bound,
/// using the CPU's vector units through `matrixmultiply`).
pub const GEMM_MIN_QUERIES: usize = 8;

/// Queries per matrix product: each product packs its chunk of rows
/// again, so the more queries per product the fewer packings; the score
/// tile is `QUERY_BLOCK` × chunk rows (2 MB per thread). 512 against 128:
/// 1,473–1,505 against 1,318–1,355 queries/s (100,000 × 512, 1,000
/// queries, 2 threads, `examples/index_bench`); 1,024 adds 2 %.
const QUERY_BLOCK: usize = 512;

/// Rows of one chunk a compact scan reads one at a time from an index
/// file before it reads the whole chunk instead (a row is a read call and
/// 2 KB; a chunk, one call and 2 MB). A batch of 1,000 queries over
/// 100,000 rows wants about 4,000 rows of each chunk; one query, a few.
const WHOLE_CHUNK_AFTER: usize = 64;

/// The best `k` people for one query, each person once with its best score.
#[derive(Clone)]
pub(crate) struct TopK {
    k: usize,
    min: f32,
    items: Vec<(f32, Arc<Person>)>,
    /// Lowest kept score once `items` is full, else `min`: the bar a new
    /// score must pass.
    floor: f32,
}

impl TopK {
    pub(crate) fn new(k: usize, min: f32) -> Self {
        Self {
            k,
            min,
            items: Vec::with_capacity(k.min(1024)),
            floor: min,
        }
    }

    /// An empty collector with this one's `k` and minimum.
    pub(crate) fn empty_like(&self) -> Self {
        Self::new(self.k, self.min)
    }

    /// The bar a score must pass to matter.
    #[inline]
    pub(crate) fn floor(&self) -> f32 {
        self.floor
    }

    /// Offers a score (call only when it passes [`floor`](Self::floor), or
    /// when merging).
    pub(crate) fn offer(&mut self, score: f32, who: &Arc<Person>) {
        if self.k == 0 || score.is_nan() || score < self.min {
            return;
        }
        if let Some(slot) = self.items.iter_mut().find(|(_, p)| p.key == who.key) {
            if score > slot.0 {
                slot.0 = score;
                self.refloor();
            }
            return;
        }
        if self.items.len() < self.k {
            self.items.push((score, who.clone()));
            if self.items.len() == self.k {
                self.refloor();
            }
        } else if score > self.floor {
            if let Some(low) = self.lowest() {
                self.items[low] = (score, who.clone());
            }
            self.refloor();
        }
    }

    fn lowest(&self) -> Option<usize> {
        (0..self.items.len()).min_by(|&a, &b| self.items[a].0.total_cmp(&self.items[b].0))
    }

    fn refloor(&mut self) {
        self.floor = if self.items.len() < self.k {
            self.min
        } else {
            self.lowest().map_or(self.min, |i| self.items[i].0)
        };
    }

    /// Folds another collector of the same query into this one.
    pub(crate) fn merge(&mut self, other: TopK) {
        for (s, p) in &other.items {
            self.offer(*s, p);
        }
    }

    /// The kept people, best first (ties by id, so results are stable).
    pub(crate) fn into_matches(self) -> Vec<Match> {
        let mut v: Vec<Match> = self
            .items
            .into_iter()
            .map(|(s, p)| Match {
                id: p.id.clone(),
                similarity: s.clamp(-1.0, 1.0),
                meta: p.meta.clone(),
            })
            .collect();
        v.sort_by(|a, b| {
            b.similarity
                .total_cmp(&a.similarity)
                .then_with(|| a.id.cmp(&b.id))
        });
        v
    }
}

/// Per-thread scratch space and results of a scan.
pub(crate) struct Scan {
    tops: Vec<TopK>,
    scores: Vec<f32>,
    /// A compact scan's best lower ends of the code scores, per query:
    /// a row whose upper end is below their floor is not in the top k.
    lower: Vec<TopK>,
    /// Rows read from an index file: a whole chunk, and one row.
    rows: Vec<f32>,
    row: Vec<f32>,
    /// The first failure to read rows from an index file: the scan stops.
    error: Option<IndexError>,
}

impl Scan {
    pub(crate) fn new(queries: usize, k: usize, min: f32) -> Self {
        Self {
            tops: vec![TopK::new(k, min); queries],
            scores: Vec::new(),
            lower: Vec::new(),
            rows: Vec::new(),
            row: Vec::new(),
            error: None,
        }
    }

    /// Each query's matches, best first, or the scan's failure.
    pub(crate) fn into_matches(self) -> Result<Vec<Vec<Match>>, IndexError> {
        match self.error {
            Some(e) => Err(e),
            None => Ok(self.tops.into_iter().map(TopK::into_matches).collect()),
        }
    }

    /// Scores every row of `chunk` against every query from the rows'
    /// codes (`q`, the queries' codes), and again in f32 (`queries`) the
    /// rows that may be in a query's top k.
    pub(crate) fn chunk_compact(
        &mut self,
        chunk: &Chunk,
        q: &Queries,
        bars: &codes::Bars,
        queries: &[f32],
        dim: usize,
    ) {
        let rows = chunk.owners.len();
        if rows == 0 || self.error.is_some() {
            return;
        }
        if self.lower.len() != self.tops.len() {
            self.lower = self.tops.iter().map(TopK::empty_like).collect();
        }
        let codes = match chunk.codes(dim) {
            Ok(c) => c,
            Err(e) => {
                self.error = Some(e);
                return;
            }
        };
        let kernel = codes::Kernel::detect();
        let nq = self.tops.len();
        let (tops, lower) = (&mut self.tops, &mut self.lower);
        let (whole, one) = (&mut self.rows, &mut self.row);
        // Rows in a file are read one at a time, until so many are wanted
        // (a batch of queries) that reading the whole chunk once is cheaper.
        let (mut reads, mut read_whole) = (0usize, false);
        let mut failed = None;
        // Each query's bar: the best of this scan's and every other's.
        let mut floors: Vec<f32> = lower
            .iter()
            .enumerate()
            .map(|(j, l)| l.floor().max(bars.get(j)))
            .collect();
        // Offers a row that may be in query `j`'s top k; returns the bar.
        let mut each = |j: usize, r: usize, s: codes::Bounded| {
            if failed.is_some() {
                // The chunk's rows cannot be read: no row passes.
                return f32::INFINITY;
            }
            let low = &mut lower[j];
            if s.score + s.bound >= low.floor() {
                reads += 1;
                if !read_whole && reads > WHOLE_CHUNK_AFTER && chunk.in_file() {
                    match chunk.rows(dim, whole) {
                        Ok(_) => read_whole = true,
                        Err(e) => {
                            failed.get_or_insert(e);
                            return f32::INFINITY;
                        }
                    }
                }
                let row = if read_whole {
                    Ok(&whole[r * dim..(r + 1) * dim])
                } else {
                    chunk.row(r, dim, one)
                };
                let row = match row {
                    Ok(row) => row,
                    Err(e) => {
                        // No row passes an infinite bar.
                        failed.get_or_insert(e);
                        return f32::INFINITY;
                    }
                };
                let who = &chunk.owners[r];
                let before = low.floor();
                low.offer(s.score - s.bound, who);
                if low.floor() > before {
                    bars.raise(j, low.floor());
                }
                let exact = dot(row, &queries[j * dim..(j + 1) * dim]);
                if exact >= tops[j].floor() {
                    tops[j].offer(exact, who);
                }
            }
            low.floor().max(bars.get(j))
        };
        for b in 0..codes.blocks() {
            let mut j0 = 0;
            while j0 + TILE <= nq {
                codes::score_block::<TILE>(codes, b, rows, q, j0, kernel, &mut floors, &mut each);
                j0 += TILE;
            }
            while j0 < nq {
                codes::score_block::<1>(codes, b, rows, q, j0, kernel, &mut floors, &mut each);
                j0 += 1;
            }
        }
        if let Some(e) = failed {
            self.error = Some(e);
        }
    }

    /// Scores every row of `chunk` against every query (`queries` is
    /// `n × dim`, row-major, normalised).
    pub(crate) fn chunk(&mut self, chunk: &Chunk, queries: &[f32], dim: usize) {
        if chunk.owners.is_empty() || self.error.is_some() {
            return;
        }
        let mut buf = std::mem::take(&mut self.rows);
        match chunk.rows(dim, &mut buf) {
            Ok(rows) => self.rows_of(chunk, rows, queries, dim),
            Err(e) => self.error = Some(e),
        }
        self.rows = buf;
    }

    /// [`chunk`](Self::chunk) with its rows (`all`) at hand.
    fn rows_of(&mut self, chunk: &Chunk, all: &[f32], queries: &[f32], dim: usize) {
        let rows = chunk.owners.len();
        let nq = self.tops.len();
        if nq < GEMM_MIN_QUERIES {
            for (r, row) in all.chunks_exact(dim).enumerate() {
                for (top, q) in self.tops.iter_mut().zip(queries.chunks_exact(dim)) {
                    let s = dot(row, q);
                    if s >= top.floor() {
                        top.offer(s, &chunk.owners[r]);
                    }
                }
            }
            return;
        }
        let (Ok(rows_view), true) = (
            ArrayView2::from_shape((rows, dim), all),
            queries.len() == nq * dim,
        ) else {
            return;
        };
        for (b, qblock) in queries.chunks(QUERY_BLOCK * dim).enumerate() {
            let bq = qblock.len() / dim;
            self.scores.resize(bq * rows, 0.0);
            let (Ok(q_view), Ok(mut c_view)) = (
                ArrayView2::from_shape((bq, dim), qblock),
                ArrayViewMut2::from_shape((bq, rows), &mut self.scores[..bq * rows]),
            ) else {
                return;
            };
            general_mat_mul(1.0, &q_view, &rows_view.t(), 0.0, &mut c_view);
            let tops = &mut self.tops[b * QUERY_BLOCK..b * QUERY_BLOCK + bq];
            for (top, srow) in tops.iter_mut().zip(self.scores.chunks_exact(rows)) {
                for (r, &s) in srow.iter().enumerate() {
                    if s >= top.floor() {
                        top.offer(s, &chunk.owners[r]);
                    }
                }
            }
        }
    }

    /// Folds another thread's results into this one.
    pub(crate) fn merge(mut self, other: Scan) -> Scan {
        for (a, b) in self.tops.iter_mut().zip(other.tops) {
            a.merge(b);
        }
        self.error = self.error.or(other.error);
        self
    }
}
