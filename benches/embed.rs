//! Embedding throughput of the tract backend by batch size and thread count
//! (faces per second), on the real model and photos.
//!
//! ```text
//! bash scripts/fetch-assets.sh && cargo bench --bench embed
//! ```
//!
//! Each thread owns its own run state (as inference threads do); batch size
//! b runs the plan built for exactly b faces.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use facepool::face::{Embedder, FaceInput, TractModel};

#[path = "common/photos.rs"]
mod photos;

fn faces(n: usize) -> Vec<FaceInput> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/photos/johns/John_Simm");
    let mut files: Vec<_> = std::fs::read_dir(&root)
        .expect("assets missing: run scripts/fetch-assets.sh")
        .map(|e| e.expect("readable dir").path())
        .collect();
    files.sort();
    photos::inputs(files.iter().cycle().take(n))
}

fn embed(c: &mut Criterion) {
    let model_path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/models/fr_feature.onnx");
    let sizes = [1, 2, 4, 8];
    let model = TractModel::load(&model_path, &sizes).expect("the model loads");
    let inputs = faces(8);
    let mut g = c.benchmark_group("embed");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    for threads in [1usize, 2] {
        for b in sizes {
            g.throughput(Throughput::Elements((b * threads) as u64));
            g.bench_function(format!("batch{b}/threads{threads}"), |bench| {
                bench.iter_custom(|iters| {
                    let mut embedders: Vec<_> =
                        (0..threads).map(|_| model.embedder().expect("a state")).collect();
                    let t0 = Instant::now();
                    std::thread::scope(|s| {
                        for e in &mut embedders {
                            let batch = &inputs[..b];
                            s.spawn(move || {
                                for _ in 0..iters {
                                    let out = e.embed(batch).expect("embeds");
                                    assert_eq!(out.len(), b);
                                }
                            });
                        }
                    });
                    t0.elapsed()
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, embed);
criterion_main!(benches);
