//! Index search speed on random normalised data, against the machine's
//! memory bandwidth.
//!
//! ```text
//! cargo run --release --example index_bench -- --n 100000 --dim 512 --queries 1000 --k 10 --json
//! ```
//!
//! Measures, on `--threads` threads (rayon):
//! - `build_sec`: inserting the `n` vectors (normalising each);
//! - `queries_per_sec`: all queries searched as one batch (one scan);
//! - `single_queries_per_sec`: queries searched one at a time (one scan each);
//! - `bandwidth_gbs`: the best of five parallel read passes over a buffer
//!   the size of the index's vectors (a sum of its floats), and from it
//!   `bound_single_queries_per_sec`: a full scan per query at that rate;
//! - `save_sec` / `load_sec` of the index file.
//!
//! `--f16` also measures whether half-precision storage would pay: the same
//! top-1 scan, one query at a time, over f32 rows and over f16 rows
//! (converted to f32 in small blocks with F16C when the CPU has it), and how
//! often the f16 top-1 agrees with the f32 one.
//!
//! `--exact` scans every row in f32, `--compact` the rows' 8-bit codes
//! (re-scoring in f32 the rows that may be in the top k: the same answer);
//! by default the index chooses by its size and the CPU.
//!
//! The batch is timed as the best of three (after an untimed warm-up); the
//! single queries report their p50 and p99 latency; `peak_rss_mb` is the
//! process's peak resident memory.
//!
//! `--dump DIR` writes the data (`base.f32`, `queries.f32`, raw
//! little-endian), the index file (`index.fpi`), each query's top-1 row
//! (`top1.u32`) and its top-k rows (`topk.u32`, queries × k, best first,
//! `u32::MAX` where fewer were found) for `scripts/faiss_compare.py`
//! (`benches/identify_faiss.sh` runs both), which runs FAISS `IndexFlatIP`
//! on the same data and threads and reports how often the top-1 and the
//! top-k agree.
//!
//! `--from DIR` searches what a `--dump` run wrote instead of generating:
//! the index file loaded with its vectors left in the file (`--in-memory`
//! to load them), the queries from `queries.f32`; it writes `top1.u32` and
//! `topk.u32` again. So the search process's peak memory is the index's
//! alone, not the generated data's: `--dump DIR --no-search`, then
//! `--from DIR`.

use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use facepool::index::{Index, ScanMethod, SearchOptions, Vectors};
use rayon::prelude::*;

#[derive(Parser)]
#[command(about = "Vector index: search speed vs. memory bandwidth")]
struct Args {
    /// Vectors in the index.
    #[arg(long, default_value_t = 100_000)]
    n: usize,
    /// Vector length.
    #[arg(long, default_value_t = 512)]
    dim: usize,
    /// Queries.
    #[arg(long, default_value_t = 1000)]
    queries: usize,
    /// Results per query.
    #[arg(long, default_value_t = 10)]
    k: usize,
    /// Threads for scans.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Queries searched one at a time (each is a full scan).
    #[arg(long, default_value_t = 100)]
    single: usize,
    /// Seed of the random data.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Write the data, the index file and the answers here.
    #[arg(long)]
    dump: Option<PathBuf>,
    /// Search the index and queries a `--dump` run wrote here (the other
    /// sizes come from the files).
    #[arg(long, conflicts_with_all = ["dump", "f16"])]
    from: Option<PathBuf>,
    /// With `--from`: load the vectors into memory (by default they stay
    /// in the file and memory holds their codes).
    #[arg(long, requires = "from")]
    in_memory: bool,
    /// Build (and dump) only: no searches.
    #[arg(long)]
    no_search: bool,
    /// Also measure f16 storage against f32 (top-1 scans).
    #[arg(long)]
    f16: bool,
    /// Scan every row in f32 (the default picks by gallery size and CPU).
    #[arg(long, conflicts_with = "compact")]
    exact: bool,
    /// Scan the rows' 8-bit codes, re-scoring in f32 the rows that may be
    /// in the top k (the same answer).
    #[arg(long)]
    compact: bool,
    /// One JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

/// Rows per conversion block of the f16 scan (stays in L1).
const F16_BLOCK: usize = 16;

/// Top-1 row of one query over `n` rows, split across rayon's threads;
/// `row(i, buf)` yields row `i` as f32 (copying into `buf` if it must).
fn top1<R>(n: usize, q: &[f32], rows: R) -> usize
where
    R: Fn(std::ops::Range<usize>, &mut Vec<f32>, &mut dyn FnMut(usize, &[f32])) + Sync,
{
    let parts = rayon::current_num_threads() * 8;
    let per = n.div_ceil(parts).max(1);
    (0..n.div_ceil(per))
        .into_par_iter()
        .map(|p| {
            let mut buf = Vec::new();
            let mut best = (f32::NEG_INFINITY, 0usize);
            let (a, b) = (p * per, ((p + 1) * per).min(n));
            let mut visit = |i: usize, r: &[f32]| {
                let s = facepool::index::dot(r, q);
                if s > best.0 {
                    best = (s, i);
                }
            };
            for start in (a..b).step_by(F16_BLOCK) {
                rows(start..(start + F16_BLOCK).min(b), &mut buf, &mut visit);
            }
            best
        })
        .reduce(|| (f32::NEG_INFINITY, 0), |x, y| if y.0 > x.0 { y } else { x })
        .1
}

/// f32 vs f16 storage: (f32 queries/s, f16 queries/s, top-1 agreement).
fn f16_experiment(base: &[f32], queries: &[f32], dim: usize, count: usize) -> (f64, f64, f64) {
    use half::slice::HalfFloatSliceExt;
    let unit = |v: &[f32]| facepool::index::normalised(v).unwrap_or_else(|_| v.to_vec());
    let rows32: Vec<f32> = base.chunks_exact(dim).flat_map(unit).collect();
    let mut rows16 = vec![half::f16::ZERO; rows32.len()];
    rows16.convert_from_f32_slice(&rows32);
    let n = rows32.len() / dim;
    let qs: Vec<Vec<f32>> = queries.chunks_exact(dim).take(count).map(unit).collect();
    let t = Instant::now();
    let want: Vec<usize> = qs
        .iter()
        .map(|q| {
            top1(n, q, |r, _, visit| {
                for i in r {
                    visit(i, &rows32[i * dim..(i + 1) * dim]);
                }
            })
        })
        .collect();
    let f32_qps = qs.len() as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    let got: Vec<usize> = qs
        .iter()
        .map(|q| {
            top1(n, q, |r, buf, visit| {
                buf.resize(r.len() * dim, 0.0);
                rows16[r.start * dim..r.end * dim].convert_to_f32_slice(buf);
                for (j, i) in r.enumerate() {
                    visit(i, &buf[j * dim..(j + 1) * dim]);
                }
            })
        })
        .collect();
    let f16_qps = qs.len() as f64 / t.elapsed().as_secs_f64();
    let agree = want.iter().zip(&got).filter(|(a, b)| a == b).count() as f64 / qs.len().max(1) as f64;
    (f32_qps, f16_qps, agree)
}

fn random(rng: &mut fastrand::Rng, n: usize, dim: usize) -> Vec<f32> {
    (0..n * dim).map(|_| rng.f32() * 2.0 - 1.0).collect()
}

fn write_f32(path: &std::path::Path, v: &[f32]) -> std::io::Result<()> {
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    std::fs::write(path, bytes)
}

fn read_f32(path: &std::path::Path) -> std::io::Result<Vec<f32>> {
    Ok(std::fs::read(path)?
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

/// Each query's top `k` ids as numbers, `u32::MAX` where fewer were found.
fn top_rows(results: &[Vec<facepool::index::Match>], k: usize) -> Vec<u8> {
    results
        .iter()
        .flat_map(|r| {
            (0..k).map(move |i| {
                r.get(i)
                    .and_then(|m| m.id.parse::<u32>().ok())
                    .unwrap_or(u32::MAX)
            })
        })
        .flat_map(u32::to_le_bytes)
        .collect()
}

/// What the searches measured.
#[derive(Default)]
struct Searched {
    results: Vec<Vec<facepool::index::Match>>,
    batch_sec: f64,
    single: usize,
    single_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
}

type Error = Box<dyn std::error::Error + Send + Sync>;

/// The batch (best of three after a warm-up), then `single` queries one at
/// a time, each checked against the batch's top-1.
fn search(index: &Index, views: &[&[f32]], opts: SearchOptions, single: usize) -> Result<Searched, Error> {
    index.search_batch(&views[..views.len().min(16)], opts)?;
    let mut out = Searched {
        batch_sec: f64::INFINITY,
        ..Searched::default()
    };
    for _ in 0..3 {
        let t = Instant::now();
        out.results = index.search_batch(views, opts)?;
        out.batch_sec = out.batch_sec.min(t.elapsed().as_secs_f64());
    }
    out.single = single.min(views.len());
    let mut lat = Vec::with_capacity(out.single);
    let t = Instant::now();
    for (q, want) in views[..out.single].iter().zip(&out.results) {
        let t1 = Instant::now();
        let got = index.search_batch(&[q], opts)?.pop().unwrap_or_default();
        lat.push(t1.elapsed().as_secs_f64() * 1e3);
        if got.first().map(|m| &m.id) != want.first().map(|m| &m.id) {
            return Err("a single search disagrees with the batch".into());
        }
    }
    out.single_sec = t.elapsed().as_secs_f64();
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p).ceil() as usize).saturating_sub(1))
            .copied()
            .unwrap_or(0.0)
    };
    (out.p50_ms, out.p99_ms) = (pct(0.50), pct(0.99));
    Ok(out)
}

/// Best of five parallel read passes over `buf`, in GB/s.
fn bandwidth(buf: &[f32]) -> f64 {
    let part = buf.len().div_ceil(rayon::current_num_threads() * 8).max(1);
    let mut best = 0f64;
    for _ in 0..5 {
        let t = Instant::now();
        // Sixteen independent sums per pass, so the adds keep up with memory.
        let s: f32 = buf
            .par_chunks(part)
            .map(|c| {
                let mut acc = [0f32; 16];
                for x in c.chunks_exact(16) {
                    for i in 0..16 {
                        acc[i] += x[i];
                    }
                }
                acc.iter().sum::<f32>()
            })
            .sum();
        let secs = t.elapsed().as_secs_f64();
        std::hint::black_box(s);
        best = best.max(std::mem::size_of_val(buf) as f64 / secs / 1e9);
    }
    best
}

/// The process's peak resident memory (Linux's `VmHWM`), in MB; 0 where
/// it cannot be read.
fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn main() -> Result<(), Error> {
    let a = Args::parse();
    let pool = rayon::ThreadPoolBuilder::new().num_threads(a.threads).build()?;
    let method = match (a.exact, a.compact) {
        (true, _) => ScanMethod::Exact,
        (_, true) => ScanMethod::Compact,
        _ => ScanMethod::Auto,
    };
    let opts = SearchOptions::top(a.k).method(method);
    let mut o = serde_json::json!({"k": a.k, "threads": a.threads, "method": format!("{method:?}")});

    let (index, queries, base) = match &a.from {
        Some(dir) => {
            let keep = if a.in_memory {
                Vectors::InMemory
            } else {
                Vectors::InFile
            };
            let t = Instant::now();
            let index = Index::load_with(&dir.join("index.fpi"), keep)?;
            o["load_sec"] = t.elapsed().as_secs_f64().into();
            o["vectors"] = format!("{keep:?}").into();
            o["index_memory_mb"] = (index.info().bytes as f64 / 1e6).into();
            (index, read_f32(&dir.join("queries.f32"))?, None)
        }
        None => {
            let mut rng = fastrand::Rng::with_seed(a.seed);
            let base = random(&mut rng, a.n, a.dim);
            let queries = random(&mut rng, a.queries, a.dim);
            let ids: Vec<String> = (0..a.n).map(|i| i.to_string()).collect();
            let (index, build_sec) = pool.install(|| -> Result<_, facepool::index::IndexError> {
                let t = Instant::now();
                let index = Index::new(a.dim)?;
                index.insert_many(ids.iter().map(String::as_str).zip(base.chunks_exact(a.dim)))?;
                Ok((index, t.elapsed().as_secs_f64()))
            })?;
            o["build_sec"] = build_sec.into();
            (index, queries, Some(base))
        }
    };
    let dim = index.dim();
    o["n"] = index.vectors().into();
    o["dim"] = dim.into();
    o["bytes_per_vector"] = Index::bytes_per_vector(dim).into();
    o["codes_bytes_per_vector"] = Index::codes_bytes_per_vector(dim).into();
    let views: Vec<&[f32]> = queries.chunks_exact(dim).collect();

    let searched = (!a.no_search)
        .then(|| pool.install(|| search(&index, &views, opts, a.single)))
        .transpose()?;
    if let Some(s) = &searched {
        o["queries_per_sec"] = (views.len() as f64 / s.batch_sec).into();
        o["single_queries_per_sec"] = (s.single as f64 / s.single_sec).into();
        o["single_p50_ms"] = s.p50_ms.into();
        o["single_p99_ms"] = s.p99_ms.into();
    }
    if let (Some(base), Some(_)) = (&base, &searched) {
        let bw = pool.install(|| bandwidth(base));
        o["bandwidth_gbs"] = bw.into();
        o["bound_single_queries_per_sec"] = (bw * 1e9 / (base.len() * 4) as f64).into();
    }

    if let Some(base) = &base {
        let (file, keep) = match &a.dump {
            Some(dir) => {
                std::fs::create_dir_all(dir)?;
                write_f32(&dir.join("base.f32"), base)?;
                write_f32(&dir.join("queries.f32"), &queries)?;
                (dir.join("index.fpi"), true)
            }
            None => (
                std::env::temp_dir().join(format!("facepool-index-bench-{}.fpi", std::process::id())),
                false,
            ),
        };
        let t = Instant::now();
        index.save(&file)?;
        o["save_sec"] = t.elapsed().as_secs_f64().into();
        o["file_bytes"] = std::fs::metadata(&file)?.len().into();
        if a.dump.is_none() {
            let t = Instant::now();
            let back = Index::load(&file)?;
            o["load_sec"] = t.elapsed().as_secs_f64().into();
            if (back.len(), back.vectors()) != (index.len(), index.vectors()) {
                return Err("the loaded index differs".into());
            }
        }
        if !keep {
            std::fs::remove_file(&file)?;
        }
    }
    if let (Some(dir), Some(s)) = (a.dump.as_ref().or(a.from.as_ref()), &searched) {
        std::fs::write(dir.join("top1.u32"), top_rows(&s.results, 1))?;
        std::fs::write(dir.join("topk.u32"), top_rows(&s.results, a.k))?;
    }
    o["peak_rss_mb"] = peak_rss_mb().into();

    if let (true, Some(base)) = (a.f16, &base) {
        let (f32_qps, f16_qps, agree) =
            pool.install(|| f16_experiment(base, &queries, dim, a.queries.min(200)));
        o["f16_experiment"] = serde_json::json!({
            "f32_top1_queries_per_sec": f32_qps,
            "f16_top1_queries_per_sec": f16_qps,
            "top1_agreement": agree,
        });
    }
    if a.json {
        println!("{o}");
    } else {
        let f = |key: &str, digits: usize| {
            o.get(key)
                .and_then(serde_json::Value::as_f64)
                .map_or_else(|| "-".to_owned(), |x| format!("{x:.digits$}"))
        };
        println!(
            "index: {} vectors × {dim} dims, k = {}, {} threads, {method:?} scan",
            o["n"], a.k, a.threads
        );
        println!(
            "build / load     {} s / {} s",
            f("build_sec", 3),
            f("load_sec", 3)
        );
        println!(
            "batch of {:5}   {} queries/s",
            views.len(),
            f("queries_per_sec", 0)
        );
        println!(
            "one at a time    {} queries/s (bandwidth bound {}, {} GB/s)",
            f("single_queries_per_sec", 1),
            f("bound_single_queries_per_sec", 1),
            f("bandwidth_gbs", 1)
        );
        println!(
            "single latency   p50 {} ms, p99 {} ms",
            f("single_p50_ms", 2),
            f("single_p99_ms", 2)
        );
        println!("peak RSS         {} MB", f("peak_rss_mb", 0));
        println!(
            "memory           {} bytes/vector in f32, {} bytes/vector as codes",
            o["bytes_per_vector"], o["codes_bytes_per_vector"]
        );
        println!(
            "save             {} s ({} bytes)",
            f("save_sec", 3),
            f("file_bytes", 0)
        );
        if let Some(x) = o.get("f16_experiment") {
            println!("f16 experiment   {x}");
        }
    }
    Ok(())
}
