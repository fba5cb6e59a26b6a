//! Identify's searches gathered into one scan: each search waits on the
//! search thread's batcher, and the searches that arrived while a scan
//! ran go together into the next (no delay is added: one search alone is
//! scanned at once). A scan of a large gallery costs about as much for
//! eight queries as for one (it is bound by reading the gallery), so
//! concurrent identifies share it.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use crate::batch::{BatchPolicy, Batcher, BuildError};
use crate::index::{Index, IndexError, Match, SearchOptions, GEMM_MIN_QUERIES};

/// Searches in one scan at most.
const MAX_BATCH: usize = 256;

/// One search: its gallery (the service's at the time: a gallery swapped
/// meanwhile is searched on its own), its query and how many it wants.
pub(crate) struct Search {
    pub(crate) index: Index,
    pub(crate) query: Vec<f32>,
    pub(crate) k: usize,
}

/// A search's matches, or why the gallery could not answer.
pub(crate) type Found = Result<Vec<Match>, Arc<IndexError>>;

/// The batcher of searches: one thread, whose scans split over rayon's
/// threads; `room` searches may wait.
pub(crate) fn batcher(room: usize) -> Result<Batcher<Search, Found>, BuildError> {
    let policy = BatchPolicy {
        max_items: MAX_BATCH,
        max_weight: None,
        max_delay: Duration::ZERO,
        in_flight: 1,
    };
    Batcher::builder(policy)
        .queue_capacity(room.max(1))
        .thread_name("face-search")
        .build(|_| Ok::<_, Infallible>(|items: Vec<Search>| Ok::<_, Infallible>(search_all(&items))))
}

/// Each search's matches, in order: the searches of one gallery in one
/// scan for the largest `k` among them, each cut to its own `k` (the best
/// `k` of a longer list, in the same order, are the best `k`). A gallery
/// scanned in f32 takes fewer than [`GEMM_MIN_QUERIES`] queries per scan:
/// a larger batch is one matrix product, whose sums may differ from a dot
/// product's in the last bits, and identify's similarity is verify's to
/// the bit (a compact scan re-scores with the dot product).
fn search_all(items: &[Search]) -> Vec<Found> {
    let mut out: Vec<Option<Found>> = items.iter().map(|_| None).collect();
    let mut left: Vec<usize> = (0..items.len()).collect();
    while let Some(&first) = left.first() {
        let (same, rest): (Vec<usize>, Vec<usize>) = left
            .iter()
            .partition(|&&i| items[i].index.same(&items[first].index));
        let index = &items[first].index;
        let per = match index.scans_compactly() {
            true => MAX_BATCH,
            false => GEMM_MIN_QUERIES - 1,
        };
        for part in same.chunks(per) {
            let k = part.iter().map(|&i| items[i].k).max().unwrap_or(1);
            let queries: Vec<&[f32]> = part.iter().map(|&i| items[i].query.as_slice()).collect();
            match index.search_batch(&queries, SearchOptions::top(k)) {
                Ok(found) => {
                    for (&i, mut m) in part.iter().zip(found) {
                        m.truncate(items[i].k);
                        out[i] = Some(Ok(m));
                    }
                }
                Err(e) => {
                    let e = Arc::new(e);
                    for &i in part {
                        out[i] = Some(Err(e.clone()));
                    }
                }
            }
        }
        left = rest;
    }
    // Every slot is filled; were one not, the batcher would fail the
    // whole batch for its wrong number of results.
    out.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(rng: &mut fastrand::Rng, dim: usize) -> Vec<f32> {
        (0..dim).map(|_| rng.f32() * 2.0 - 1.0).collect()
    }

    #[test]
    fn searches_gathered_answer_as_each_alone() {
        let mut rng = fastrand::Rng::with_seed(4);
        let dim = 24;
        let (a, b) = (Index::new(dim).unwrap(), Index::new(dim).unwrap());
        for i in 0..3000 {
            a.insert(&format!("a{}", i % 700), &unit(&mut rng, dim)).unwrap();
            if i < 50 {
                b.insert(&format!("b{i}"), &unit(&mut rng, dim)).unwrap();
            }
        }
        // Two galleries, several k, in one batch.
        let items: Vec<Search> = (0..30)
            .map(|i| Search {
                index: if i % 3 == 0 { b.clone() } else { a.clone() },
                query: unit(&mut rng, dim),
                k: 1 + i % 7,
            })
            .collect();
        let found = search_all(&items);
        assert_eq!(found.len(), items.len());
        for (s, f) in items.iter().zip(&found) {
            let alone = s.index.search(&s.query, s.k).unwrap();
            let got = f.as_ref().unwrap();
            // To the bit: these galleries are scanned in f32, fewer than
            // GEMM_MIN_QUERIES queries at a time.
            assert_eq!(got, &alone);
        }
        // A query of the wrong length fails its own scan (the searches
        // scanned with it), not the other gallery's.
        let mut bad = items;
        bad[1].query.pop();
        let found = search_all(&bad);
        assert!(found[1].is_err());
        for (i, f) in found.iter().enumerate().filter(|(i, _)| i % 3 == 0) {
            assert!(f.is_ok(), "search {i}");
        }
    }
}
