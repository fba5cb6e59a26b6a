//! The vector index: exactness against brute force, id semantics, the file
//! format (round trip and a corpus of damaged files) and concurrency.
#![cfg(feature = "index")]

use crate::common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::{as_format_1, reseal, reseal_header, TempDir};
use facepool::index::{
    stored_codes_len, Index, IndexError, Match, ScanMethod, SearchOptions, Vectors, CHUNK_ROWS,
};

fn random_vec(rng: &mut fastrand::Rng, dim: usize) -> Vec<f32> {
    (0..dim).map(|_| rng.f32() * 2.0 - 1.0).collect()
}

fn unit(v: &[f32]) -> Vec<f64> {
    let n = v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    v.iter().map(|x| f64::from(*x) / n).collect()
}

/// Best score per person for `q`, in f64, best first.
fn brute(data: &[(String, Vec<f32>)], q: &[f32]) -> Vec<(String, f64)> {
    let q = unit(q);
    let mut best: HashMap<&str, f64> = HashMap::new();
    for (id, v) in data {
        let s: f64 = unit(v).iter().zip(&q).map(|(a, b)| a * b).sum();
        let e = best.entry(id.as_str()).or_insert(f64::NEG_INFINITY);
        *e = e.max(s);
    }
    let mut v: Vec<(String, f64)> = best.into_iter().map(|(k, s)| (k.to_owned(), s)).collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1));
    v
}

/// The result must hold the reference's scores, in order, and each id must
/// carry its own best score (ids of near-equal scores may swap places).
fn check(got: &[Match], reference: &[(String, f64)], k: usize, min: Option<f32>, what: &str) {
    let want: Vec<&(String, f64)> = reference
        .iter()
        .filter(|(_, s)| min.is_none_or(|m| *s >= f64::from(m) + 1e-5))
        .take(k)
        .collect();
    let best: HashMap<&str, f64> = reference.iter().map(|(i, s)| (i.as_str(), *s)).collect();
    assert!(
        got.len() == want.len() || min.is_some() && got.len().abs_diff(want.len()) <= 1,
        "{what}: {} matches, want {}",
        got.len(),
        want.len()
    );
    let mut seen = std::collections::HashSet::new();
    for (i, m) in got.iter().enumerate() {
        assert!(seen.insert(m.id.clone()), "{what}: {} twice", m.id);
        if let Some(w) = want.get(i) {
            assert!(
                (f64::from(m.similarity) - w.1).abs() < 1e-4,
                "{what}: rank {i}: {} vs {}",
                m.similarity,
                w.1
            );
        }
        let own = best[&*m.id];
        assert!(
            (f64::from(m.similarity) - own).abs() < 1e-4,
            "{what}: {} has {} not {own}",
            m.id,
            m.similarity
        );
        if let Some(min) = min {
            assert!(m.similarity >= min, "{what}: {} below {min}", m.similarity);
        }
    }
}

fn build(rng: &mut fastrand::Rng, n: usize, dim: usize, people: usize) -> (Index, Vec<(String, Vec<f32>)>) {
    let idx = Index::new(dim).unwrap();
    let data: Vec<(String, Vec<f32>)> = (0..n)
        .map(|_| (format!("p{}", rng.usize(..people.max(1))), random_vec(rng, dim)))
        .collect();
    idx.insert_many(data.iter().map(|(i, v)| (i.as_str(), v.as_slice())))
        .unwrap();
    (idx, data)
}

/// Every scan method gives the exact answer.
const METHODS: [ScanMethod; 3] = [ScanMethod::Auto, ScanMethod::Exact, ScanMethod::Compact];

#[test]
fn top_k_equals_brute_force() {
    let mut rng = fastrand::Rng::with_seed(7);
    for &(n, dim) in &[
        (0, 8),
        (1, 3),
        (17, 3),
        (500, 64),
        (2 * CHUNK_ROWS + 5, 32),
        (3000, 512),
    ] {
        for &people in &[n.max(1), (n / 3).max(1)] {
            let (idx, data) = build(&mut rng, n, dim, people);
            assert_eq!(idx.vectors(), n);
            // 600 queries: more than one matrix product's block of queries.
            let nqs: &[usize] = if dim <= 64 { &[1, 3, 20, 600] } else { &[1, 3, 20] };
            for &nq in nqs {
                let qs: Vec<Vec<f32>> = (0..nq).map(|_| random_vec(&mut rng, dim)).collect();
                let refs: Vec<Vec<(String, f64)>> = qs.iter().map(|q| brute(&data, q)).collect();
                let views: Vec<&[f32]> = qs.iter().map(Vec::as_slice).collect();
                for (&k, method) in [1, 5, 50]
                    .iter()
                    .flat_map(|k| METHODS.iter().map(move |m| (k, *m)))
                {
                    let what = format!("n={n} dim={dim} people={people} queries={nq} k={k} {method:?}");
                    let got = idx
                        .search_batch(&views, SearchOptions::top(k).method(method))
                        .unwrap();
                    assert_eq!(got.len(), nq);
                    for (g, r) in got.iter().zip(&refs) {
                        check(g, r, k, None, &what);
                    }
                    let got = idx
                        .search_batch(&views, SearchOptions::top(k).above(0.1).method(method))
                        .unwrap();
                    for (g, r) in got.iter().zip(&refs) {
                        check(g, r, k, Some(0.1), &format!("{what} above 0.1"));
                    }
                }
                assert_eq!(
                    idx.search(&qs[0], 5).unwrap(),
                    idx.search_batch(&views[..1], SearchOptions::top(5)).unwrap()[0]
                );
            }
        }
    }
}

#[test]
fn several_vectors_per_person_come_back_once_with_the_best_score() {
    let idx = Index::new(2).unwrap();
    idx.insert("ann", &[1.0, 0.0]).unwrap();
    idx.insert("ann", &[0.0, 1.0]).unwrap();
    idx.insert("bob", &[1.0, 1.0]).unwrap();
    assert_eq!(
        (idx.len(), idx.vectors(), idx.count("ann"), idx.count("bob")),
        (2, 3, 2, 1)
    );
    let m = idx.search(&[0.0, 2.0], 10).unwrap();
    assert_eq!(m.len(), 2);
    assert_eq!((&*m[0].id, m[0].similarity), ("ann", 1.0));
    assert_eq!(&*m[1].id, "bob");
    assert!((m[1].similarity - std::f32::consts::FRAC_1_SQRT_2).abs() < 1e-6);
    // Thresholded: only ann.
    let m = idx
        .search_batch(&[&[0.0, 1.0]], SearchOptions::top(10).above(0.9))
        .unwrap();
    assert_eq!(m[0].iter().map(|m| &*m.id).collect::<Vec<_>>(), ["ann"]);
}

#[test]
fn remove_and_update() {
    let idx = Index::new(3).unwrap();
    idx.insert("ann", &[1.0, 0.0, 0.0]).unwrap();
    idx.insert("ann", &[0.0, 1.0, 0.0]).unwrap();
    idx.insert("bob", &[0.0, 0.0, 1.0]).unwrap();
    assert_eq!(idx.remove("ann").unwrap(), 2);
    assert_eq!(idx.remove("ann").unwrap(), 0);
    assert!(!idx.contains("ann"));
    assert_eq!((idx.len(), idx.vectors()), (1, 1));
    let m = idx.search(&[1.0, 0.0, 0.0], 5).unwrap();
    assert_eq!(m.iter().map(|m| &*m.id).collect::<Vec<_>>(), ["bob"]);

    // Update: re-enrolling replaces vectors and metadata.
    idx.upsert(
        "bob",
        &[&[1.0, 0.0, 0.0], &[1.0, 1.0, 0.0]],
        Some("{\"badge\":7}"),
    )
    .unwrap();
    assert_eq!((idx.len(), idx.vectors(), idx.count("bob")), (1, 2, 2));
    assert_eq!(idx.meta("bob").as_deref(), Some("{\"badge\":7}"));
    let m = idx.search(&[0.0, 0.0, 1.0], 5).unwrap();
    assert!(m[0].similarity.abs() < 1e-6, "old vector still there: {m:?}");
    let m = idx.search(&[1.0, 0.0, 0.0], 5).unwrap();
    assert_eq!(
        (&*m[0].id, m[0].similarity, m[0].meta.as_deref()),
        ("bob", 1.0, Some("{\"badge\":7}"))
    );
    idx.upsert("bob", &[&[0.0, 0.0, 1.0]], None).unwrap();
    assert_eq!(idx.meta("bob"), None);
    assert_eq!(idx.ids(), vec![Arc::<str>::from("bob")]);

    // Removing from the middle of many chunks keeps the rest intact.
    let mut rng = fastrand::Rng::with_seed(3);
    let (big, data) = build(&mut rng, 3 * CHUNK_ROWS, 16, 300);
    let gone = big.remove("p7").unwrap();
    assert_eq!(gone, data.iter().filter(|(i, _)| i == "p7").count());
    assert_eq!(big.vectors(), data.len() - gone);
    let rest: Vec<(String, Vec<f32>)> = data.into_iter().filter(|(i, _)| i != "p7").collect();
    let q = random_vec(&mut rng, 16);
    check(
        &big.search(&q, 20).unwrap(),
        &brute(&rest, &q),
        20,
        None,
        "after remove",
    );
}

#[test]
fn add_enrolls_once_and_keeps_every_vector() {
    let idx = Index::new(2).unwrap();
    idx.add("ann", &[&[1.0, 0.0]], Some("first")).unwrap();
    idx.add("ann", &[&[0.0, 1.0], &[1.0, 1.0]], Some("second"))
        .unwrap();
    assert_eq!((idx.len(), idx.count("ann")), (1, 3));
    assert_eq!(
        idx.meta("ann").as_deref(),
        Some("first"),
        "an existing person keeps its metadata"
    );
    assert!(matches!(idx.add("bob", &[], None), Err(IndexError::NoVectors(_))));
    assert!(matches!(
        idx.add("bob", &[&[f32::NAN, 0.0]], None),
        Err(IndexError::BadVector(_))
    ));
    assert!(!idx.contains("bob"));

    // Threads adding to the same new id all keep their vectors.
    std::thread::scope(|s| {
        for t in 0..4 {
            let idx = &idx;
            s.spawn(move || {
                for i in 0..50 {
                    idx.add("cat", &[&[1.0 + (t * 50 + i) as f32, 1.0]], None)
                        .unwrap();
                }
            });
        }
    });
    assert_eq!(idx.count("cat"), 200);
    let people = idx.people();
    let listed: Vec<(&str, usize)> = people.iter().map(|p| (&*p.id, p.vectors)).collect();
    assert_eq!(listed, [("ann", 3), ("cat", 200)]);
    assert_eq!(people[0].meta.as_deref(), Some("first"));
}

#[test]
fn bad_input_is_an_error() {
    assert!(matches!(Index::new(0), Err(IndexError::BadDim(0))));
    assert!(matches!(Index::new(1 << 20), Err(IndexError::BadDim(_))));
    let idx = Index::new(3).unwrap();
    assert!(matches!(
        idx.insert("a", &[1.0, 2.0]),
        Err(IndexError::WrongDim { expected: 3, got: 2 })
    ));
    assert!(matches!(
        idx.insert("a", &[f32::NAN, 0.0, 1.0]),
        Err(IndexError::BadVector(_))
    ));
    assert!(matches!(
        idx.insert("a", &[0.0; 3]),
        Err(IndexError::BadVector(_))
    ));
    assert!(matches!(
        idx.insert("a", &[f32::INFINITY, 0.0, 1.0]),
        Err(IndexError::BadVector(_))
    ));
    assert!(matches!(
        idx.insert("", &[1.0, 0.0, 0.0]),
        Err(IndexError::BadText(_))
    ));
    assert!(matches!(
        idx.upsert("a", &[], None),
        Err(IndexError::NoVectors(_))
    ));
    assert!(matches!(idx.search(&[1.0], 1), Err(IndexError::WrongDim { .. })));
    assert!(matches!(idx.search(&[0.0; 3], 1), Err(IndexError::BadVector(_))));
    // A bad item in a bulk insert adds nothing.
    let v = [1.0, 0.0, 0.0];
    assert!(idx
        .insert_many([("a", &v[..]), ("b", &[f32::NAN, 0.0, 0.0][..])])
        .is_err());
    assert_eq!(idx.vectors(), 0);
    // Empty index, k = 0, no queries.
    assert_eq!(idx.search(&v, 5).unwrap(), vec![]);
    idx.insert("a", &v).unwrap();
    assert_eq!(idx.search(&v, 0).unwrap(), vec![]);
    assert_eq!(
        idx.search_batch(&[], SearchOptions::top(3)).unwrap(),
        Vec::<Vec<Match>>::new()
    );
}

#[test]
fn save_and_load_round_trip() {
    let dir = TempDir::new("index-roundtrip");
    let path = dir.path().join("people.fpi");
    let mut rng = fastrand::Rng::with_seed(11);
    let (idx, _) = build(&mut rng, CHUNK_ROWS + 100, 64, 400);
    idx.upsert("zoë", &[&random_vec(&mut rng, 64)], Some("métadonnées"))
        .unwrap();
    idx.save(&path).unwrap();
    let back = Index::load(&path).unwrap();
    assert_eq!(
        (back.dim(), back.len(), back.vectors()),
        (idx.dim(), idx.len(), idx.vectors())
    );
    assert_eq!(back.ids(), idx.ids());
    assert_eq!(back.meta("zoë").as_deref(), Some("métadonnées"));
    for id in idx.ids() {
        assert_eq!(back.count(&id), idx.count(&id));
    }
    for _ in 0..5 {
        let q = random_vec(&mut rng, 64);
        assert_eq!(back.search(&q, 10).unwrap(), idx.search(&q, 10).unwrap());
    }
    // The loaded index takes new people, and a second save replaces the file
    // and leaves no temporary file behind.
    back.insert("new", &random_vec(&mut rng, 64)).unwrap();
    back.save(&path).unwrap();
    assert_eq!(Index::load(&path).unwrap().len(), idx.len() + 1);
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("people.fpi")]);

    // An empty index round-trips; a save into a missing directory is an I/O error.
    let empty = dir.path().join("empty.fpi");
    Index::new(5).unwrap().save(&empty).unwrap();
    let e = Index::load(&empty).unwrap();
    assert_eq!((e.dim(), e.len()), (5, 0));
    assert!(matches!(
        idx.save(&dir.path().join("no/such/dir.fpi")),
        Err(IndexError::Io { .. })
    ));
    assert!(matches!(
        Index::load(&dir.path().join("missing.fpi")),
        Err(IndexError::Io { .. })
    ));
}

fn load_bytes(dir: &TempDir, name: &str, bytes: &[u8]) -> Result<Index, IndexError> {
    let p = dir.path().join(name);
    std::fs::write(&p, bytes).unwrap();
    Index::load(&p)
}

#[test]
fn damaged_files_give_errors() {
    let dir = TempDir::new("index-corpus");
    let good_path = dir.path().join("good.fpi");
    let idx = Index::new(4).unwrap();
    idx.insert("ann", &[1.0, 2.0, 3.0, 4.0]).unwrap();
    idx.insert("ann", &[4.0, 3.0, 2.0, 1.0]).unwrap();
    idx.upsert("bob", &[&[0.0, 1.0, 0.0, 0.0]], Some("m")).unwrap();
    idx.save(&good_path).unwrap();
    let good = std::fs::read(&good_path).unwrap();
    assert!(load_bytes(&dir, "copy", &good).is_ok());

    // Every truncation.
    for n in 0..good.len() {
        let e = load_bytes(&dir, "cut", &good[..n]).unwrap_err();
        assert!(
            matches!(e, IndexError::Corrupt { .. } | IndexError::NotAnIndex { .. }),
            "truncated to {n}: {e}"
        );
    }
    // Every byte flipped.
    for i in 0..good.len() {
        let mut b = good.clone();
        b[i] ^= 0x5a;
        let e = load_bytes(&dir, "flip", &b).unwrap_err();
        assert!(
            matches!(
                e,
                IndexError::Corrupt { .. } | IndexError::NotAnIndex { .. } | IndexError::Version { .. }
            ),
            "byte {i} flipped: {e}"
        );
    }
    // Appended bytes.
    let mut b = good.clone();
    b.extend_from_slice(&[0; 16]);
    assert!(matches!(
        load_bytes(&dir, "long", &b),
        Err(IndexError::Corrupt { .. })
    ));

    // Not an index at all.
    for (name, bytes) in [
        ("empty", &b""[..]),
        ("text", b"hello, world, this is not an index file at all"),
        (
            "jpeg",
            &[
                0xff, 0xd8, 0xff, 0xe0, 0, 16, b'J', b'F', b'I', b'F', 0, 1, 1, 0, 0, 1, 0, 1, 0, 0, 0, 0, 0,
                0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                0, 0,
            ],
        ),
    ] {
        assert!(
            matches!(load_bytes(&dir, name, bytes), Err(IndexError::NotAnIndex { .. })),
            "{name}"
        );
    }

    // A newer version.
    let mut b = good.clone();
    b[8..12].copy_from_slice(&3u32.to_le_bytes());
    reseal_header(&mut b);
    assert!(matches!(
        load_bytes(&dir, "v3", &b),
        Err(IndexError::Version { found: 3, .. })
    ));

    // Headers that lie, with valid header checksums: huge counts must not
    // allocate, and a count that does not fit the file is refused.
    for (at, value) in [
        (24, u64::MAX),
        (24, 1u64 << 40),
        (16, 1u64 << 40),
        (32, u64::MAX),
        (32, 1),
        (24, 2),
    ] {
        let mut b = good.clone();
        b[at..at + 8].copy_from_slice(&value.to_le_bytes());
        reseal_header(&mut b);
        let e = load_bytes(&dir, "lie", &b).unwrap_err();
        assert!(
            matches!(e, IndexError::Corrupt { .. }),
            "field at {at} = {value}: {e}"
        );
    }
    for dim in [0u32, u32::MAX, 8] {
        let mut b = good.clone();
        b[12..16].copy_from_slice(&dim.to_le_bytes());
        reseal_header(&mut b);
        assert!(
            matches!(load_bytes(&dir, "dim", &b), Err(IndexError::Corrupt { .. })),
            "dim {dim}"
        );
    }

    // Bodies that are wrong but carry a valid checksum: the reader still
    // validates every field.
    let codes = stored_codes_len(4, 3).unwrap() as usize;
    let rows_end = good.len() - 8 - codes;
    let owners_at = rows_end - 3 * 4 * 4 - 3 * 4;
    let mut b = good.clone();
    b[owners_at..owners_at + 4].copy_from_slice(&9u32.to_le_bytes());
    reseal(&mut b);
    let e = load_bytes(&dir, "owner", &b).unwrap_err();
    assert!(e.to_string().contains("belongs to person 9"), "{e}");
    let mut b = good.clone();
    for o in 0..3 {
        b[owners_at + 4 * o..owners_at + 4 * o + 4].copy_from_slice(&0u32.to_le_bytes());
    }
    reseal(&mut b);
    let e = load_bytes(&dir, "unused", &b).unwrap_err();
    assert!(e.to_string().contains("has no vectors"), "{e}");
    let mut b = good.clone();
    let v = rows_end - 4;
    b[v..v + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    reseal(&mut b);
    let e = load_bytes(&dir, "nan", &b).unwrap_err();
    assert!(e.to_string().contains("NaN"), "{e}");
    let mut b = good.clone();
    b[48 + 4] = 0xff; // inside the first id: not UTF-8
    reseal(&mut b);
    let e = load_bytes(&dir, "utf8", &b).unwrap_err();
    assert!(e.to_string().contains("UTF-8"), "{e}");
}

/// Every method's answers to `queries`, one at a time and as a batch.
fn answers(idx: &Index, queries: &[Vec<f32>]) -> Vec<Vec<Vec<Match>>> {
    let views: Vec<&[f32]> = queries.iter().map(Vec::as_slice).collect();
    let mut out = Vec::new();
    for m in METHODS {
        let opts = SearchOptions::top(7).method(m);
        out.push(idx.search_batch(&views, opts).unwrap());
        out.push(
            views
                .iter()
                .map(|q| idx.search_batch(&[q], opts).unwrap().remove(0))
                .collect(),
        );
    }
    out
}

/// The same people in the same order, with the same notes, for every
/// query of every method; the similarities equal to float rounding. An
/// index whose rows stay in the file answers `Auto` with the compact scan,
/// whose exact re-rank sums row by row, where the same rows in memory may
/// be scanned exactly by a matrix product (on a CPU without VNNI), which
/// sums in another order: the last bits may differ, nothing else.
fn same_answers(got: &[Vec<Vec<Match>>], want: &[Vec<Vec<Match>>], what: &str) {
    let shape = |a: &[Vec<Vec<Match>>]| a.iter().map(Vec::len).collect::<Vec<_>>();
    assert_eq!(shape(got), shape(want), "{what}");
    for (g, w) in got.iter().flatten().zip(want.iter().flatten()) {
        let people = |q: &[Match]| {
            q.iter()
                .map(|m| (m.id.clone(), m.meta.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(people(g), people(w), "{what}");
        for (a, b) in g.iter().zip(w) {
            assert!(
                (a.similarity - b.similarity).abs() <= 1e-6,
                "{what}: {} {} against {}",
                a.id,
                a.similarity,
                b.similarity
            );
        }
    }
}

#[test]
fn codes_in_the_file_are_checked() {
    let dir = TempDir::new("index-codes");
    let path = dir.path().join("c.fpi");
    let mut rng = fastrand::Rng::with_seed(21);
    let (idx, _) = build(&mut rng, 40, 6, 10);
    idx.save(&path).unwrap();
    let good = std::fs::read(&path).unwrap();
    let codes_at = good.len() - 8 - stored_codes_len(6, 40).unwrap() as usize;
    // A code changed: its row's shift no longer matches.
    let mut b = good.clone();
    b[codes_at + 5] ^= 0x11;
    reseal(&mut b);
    let e = load_bytes(&dir, "code", &b).unwrap_err();
    assert!(
        matches!(&e, IndexError::Corrupt { reason, .. } if reason.contains("shift")),
        "{e}"
    );
    // A scale that is not a number. (Codes of 40 rows of 6, padded to 8:
    // three blocks of 16 rows, 8 codes each, then the scales.)
    let mut b = good.clone();
    let scale_at = codes_at + 3 * 16 * 8;
    b[scale_at..scale_at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    reseal(&mut b);
    let e = load_bytes(&dir, "scale", &b).unwrap_err();
    assert!(
        matches!(&e, IndexError::Corrupt { reason, .. } if reason.contains("scale NaN")),
        "{e}"
    );
}

#[test]
fn format_1_files_still_load() {
    let dir = TempDir::new("index-v1");
    let (v2, v1) = (dir.path().join("v2.fpi"), dir.path().join("v1.fpi"));
    let mut rng = fastrand::Rng::with_seed(22);
    let (idx, data) = build(&mut rng, 5 * CHUNK_ROWS + 11, 32, 3000);
    idx.save(&v2).unwrap();
    let bytes = std::fs::read(&v2).unwrap();
    std::fs::write(&v1, as_format_1(&bytes, 32, data.len() as u64)).unwrap();
    let queries: Vec<Vec<f32>> = (0..12).map(|_| random_vec(&mut rng, 32)).collect();
    let want = answers(&idx, &queries);
    for keep in [Vectors::InMemory, Vectors::InFile] {
        let old = Index::load_with(&v1, keep).unwrap();
        assert_eq!((old.len(), old.vectors()), (idx.len(), idx.vectors()));
        same_answers(&answers(&old, &queries), &want, &format!("{keep:?}"));
        // Saved again, it is the format-2 file.
        let again = dir.path().join("again.fpi");
        old.save(&again).unwrap();
        assert!(std::fs::read(&again).unwrap() == bytes, "{keep:?}");
    }
}

#[test]
fn codes_saved_after_changes_are_the_codes_of_the_rows() {
    // Removals leave short chunks; a save groups the rows again and copies
    // their codes. The same rows loaded without codes (format 1) and saved
    // have theirs made afresh: the two files must be the same bytes.
    let dir = TempDir::new("index-regroup");
    let (changed, fresh) = (dir.path().join("changed.fpi"), dir.path().join("fresh.fpi"));
    let mut rng = fastrand::Rng::with_seed(24);
    let (idx, _) = build(&mut rng, 4 * CHUNK_ROWS + 300, 40, 900);
    let q = random_vec(&mut rng, 40);
    idx.search_batch(&[q.as_slice()], SearchOptions::top(3).method(ScanMethod::Compact))
        .unwrap();
    for id in ["p1", "p400", "p899"] {
        idx.remove(id).unwrap();
    }
    idx.insert("late", &random_vec(&mut rng, 40)).unwrap();
    idx.save(&changed).unwrap();
    let bytes = std::fs::read(&changed).unwrap();
    std::fs::write(&fresh, as_format_1(&bytes, 40, idx.vectors() as u64)).unwrap();
    Index::load(&fresh).unwrap().save(&fresh).unwrap();
    assert!(std::fs::read(&fresh).unwrap() == bytes);
}

#[test]
fn vectors_kept_in_the_file_answer_as_in_memory() {
    let dir = TempDir::new("index-infile");
    let path = dir.path().join("g.fpi");
    let mut rng = fastrand::Rng::with_seed(23);
    let dim = 48;
    let (idx, _) = build(&mut rng, 5 * CHUNK_ROWS + 37, dim, 2000);
    idx.save(&path).unwrap();
    let cold = Index::load_with(&path, Vectors::InFile).unwrap();
    let warm = Index::load(&path).unwrap();
    // Memory holds the codes (about a quarter of the floats) and owners.
    assert!(
        cold.info().bytes * 2 < warm.info().bytes,
        "{:?} against {:?}",
        cold.info(),
        warm.info()
    );
    let mut queries: Vec<Vec<f32>> = (0..10).map(|_| random_vec(&mut rng, dim)).collect();
    let want = answers(&idx, &queries);
    same_answers(&answers(&cold, &queries), &want, "in the file");

    // Changes: the chunks they touch move into memory; the rest stay.
    let fresh = random_vec(&mut rng, dim);
    for i in [&idx, &cold] {
        i.upsert("p3", &[&fresh], Some("m")).unwrap();
        assert!(i.remove("p5").unwrap() > 0);
        i.insert("new", &random_vec(&mut fastrand::Rng::with_seed(9), dim))
            .unwrap();
    }
    queries.push(fresh);
    let want = answers(&idx, &queries);
    same_answers(&answers(&cold, &queries), &want, "in the file");
    assert_eq!(cold.meta("p3").as_deref(), Some("m"));
    assert!(cold.info().bytes < warm.info().bytes);

    // Saved over its own file (a new file renamed over it: the open one
    // still reads), and loaded again.
    cold.save(&path).unwrap();
    same_answers(&answers(&cold, &queries), &want, "in the file");
    let back = Index::load_with(&path, Vectors::InFile).unwrap();
    same_answers(&answers(&back, &queries), &want, "loaded again");

    // A file cut short under a loaded index (against the rules): searches
    // and removals that need its rows fail with an I/O error, nothing
    // changes, nothing panics.
    let other = dir.path().join("cut.fpi");
    idx.save(&other).unwrap();
    let victim = Index::load_with(&other, Vectors::InFile).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&other)
        .unwrap()
        .set_len(100)
        .unwrap();
    let q = queries[0].as_slice();
    for m in METHODS {
        let e = victim
            .search_batch(&[q], SearchOptions::top(3).method(m))
            .unwrap_err();
        assert!(matches!(e, IndexError::Io { .. }), "{m:?}: {e}");
    }
    let before = victim.vectors();
    assert!(matches!(victim.remove("p7"), Err(IndexError::Io { .. })));
    assert!(victim.contains("p7"));
    assert_eq!(victim.vectors(), before);
}

#[test]
fn searches_run_while_people_are_enrolled_and_removed() {
    let dim = 32;
    let idx = Index::new(dim).unwrap();
    let mut rng = fastrand::Rng::with_seed(5);
    let anchor = random_vec(&mut rng, dim);
    idx.insert("anchor", &anchor).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    // The writes start once every reader is searching (on a busy machine a
    // reader thread may otherwise start only after the writes are done).
    let searching = Arc::new(std::sync::Barrier::new(3));
    let readers: Vec<_> = (0..2)
        .map(|t| {
            let (idx, stop, anchor) = (idx.clone(), stop.clone(), anchor.clone());
            let searching = searching.clone();
            std::thread::spawn(move || {
                searching.wait();
                let mut searches = 0u64;
                let mut rng = fastrand::Rng::with_seed(100 + t);
                loop {
                    let m = idx.search(&anchor, 5).unwrap();
                    assert_eq!(&*m[0].id, "anchor", "{m:?}");
                    assert!((m[0].similarity - 1.0).abs() < 1e-5);
                    let q = random_vec(&mut rng, dim);
                    let qs = vec![q.as_slice(); 9];
                    let all = idx.search_batch(&qs, SearchOptions::top(20)).unwrap();
                    for m in &all {
                        assert!(m.windows(2).all(|w| w[0].similarity >= w[1].similarity));
                        let ids: std::collections::HashSet<_> = m.iter().map(|m| m.id.clone()).collect();
                        assert_eq!(ids.len(), m.len(), "a person twice");
                        assert_eq!(m, &all[0], "one scan, one answer");
                    }
                    searches += 1;
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                }
                searches
            })
        })
        .collect();
    let mut data = vec![("anchor".to_owned(), anchor.clone())];
    searching.wait();
    for i in 0..3 * CHUNK_ROWS {
        let v = random_vec(&mut rng, dim);
        let id = format!("p{}", i % 700);
        idx.insert(&id, &v).unwrap();
        data.push((id, v));
        if i % 97 == 96 {
            let gone = format!("p{}", rng.usize(..700));
            idx.remove(&gone).unwrap();
            data.retain(|(id, _)| *id != gone);
        }
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        assert!(r.join().unwrap() > 0);
    }
    assert_eq!(idx.vectors(), data.len());
    let q = random_vec(&mut rng, dim);
    check(
        &idx.search(&q, 30).unwrap(),
        &brute(&data, &q),
        30,
        None,
        "after the writes",
    );
}

/// The compact scan (the default from `COMPACT_MIN_ROWS` rows on a CPU with
/// VNNI, forced here) against the f32 scan, one query at a time (both then
/// score with the same `dot`, so the answers are equal to the bit): on
/// near-duplicates, on a query equal to a stored row, and after the index
/// changed under codes made by an earlier search.
#[test]
fn the_compact_scan_answers_as_the_exact_one_through_changes() {
    let mut rng = fastrand::Rng::with_seed(11);
    let dim = 64;
    let idx = Index::new(dim).unwrap();
    let base = random_vec(&mut rng, dim);
    let n = facepool::index::COMPACT_MIN_ROWS + 100;
    for i in 0..n {
        // Every tenth row a near-duplicate of `base` (within 1e-3).
        let v: Vec<f32> = if i % 10 == 0 {
            base.iter().map(|x| x + (rng.f32() - 0.5) * 1e-3).collect()
        } else {
            random_vec(&mut rng, dim)
        };
        idx.insert(&format!("p{}", i % 3000), &v).unwrap();
    }
    let same = |q: &[f32], what: &str| {
        for k in [1, 10, 60] {
            let exact = idx
                .search_batch(&[q], SearchOptions::top(k).method(ScanMethod::Exact))
                .unwrap();
            for m in [ScanMethod::Compact, ScanMethod::Auto] {
                let got = idx.search_batch(&[q], SearchOptions::top(k).method(m)).unwrap();
                assert_eq!(got, exact, "{what} k={k} {m:?}");
            }
        }
    };
    same(&base, "near-duplicates");
    let q = random_vec(&mut rng, dim);
    same(&q, "a random query");
    // A person equal to the query comes first once added, and is gone once
    // removed: the codes of the changed chunks are made again.
    idx.insert("twin", &q).unwrap();
    same(&q, "after an insert");
    let top = idx
        .search_batch(&[q.as_slice()], SearchOptions::top(1).method(ScanMethod::Compact))
        .unwrap();
    assert_eq!(top[0][0].id.as_ref(), "twin");
    // p0 holds rows 0, 3000, 6000…, in several chunks.
    let held = idx.count("p0");
    assert!(held >= 2);
    assert_eq!(idx.remove("p0").unwrap(), held);
    idx.remove("twin").unwrap();
    same(&q, "after removals");
    same(&base, "near-duplicates after removals");
}
