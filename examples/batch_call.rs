//! A batch-only downstream, called three ways by the same 64 closed-loop
//! clients, in one process.
//!
//! ```text
//! cargo run --release --example batch_call -- --json
//! ```
//!
//! The downstream takes one call at a time and costs 50 ms + 0.25 ms per item
//! per call, like a GPU service that crawls when called per request and flies
//! when called with big batches. Each client sends requests of 1-16 images,
//! back to back, for 10 s per mode:
//! - `direct`: each request calls the downstream itself;
//! - `limited`: the same, behind a token-bucket rate limit (`--rate` images/s);
//! - `batched`: each image goes through the micro-batcher (max 256 items,
//!   max delay 20 ms), which makes the downstream calls.
//!
//! Latency is per request, from send to its last image's result.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use facepool::batch::{BatchPolicy, Batcher};
use facepool::guard::RateLimit;
use serde::Serialize;

#[derive(Parser)]
#[command(about = "A batch-only downstream called directly, rate-limited, and through the batcher")]
struct Args {
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Seconds per mode.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Closed-loop clients.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Largest request (images); requests are 1..=this, uniform.
    #[arg(long, default_value_t = 16)]
    max_images: usize,
    /// Fixed cost of one downstream call, ms.
    #[arg(long, default_value_t = 50.0)]
    call_ms: f64,
    /// Cost per item of one downstream call, ms.
    #[arg(long, default_value_t = 0.25)]
    item_ms: f64,
    /// Batcher: most items per call.
    #[arg(long, default_value_t = 256)]
    max_items: usize,
    /// Batcher: most time the oldest item waits, ms.
    #[arg(long, default_value_t = 20.0)]
    max_delay_ms: f64,
    /// `limited` mode: images per second let through to the downstream.
    #[arg(long, default_value_t = 150.0)]
    rate: f64,
    /// Modes to run (comma-separated): direct, limited, batched.
    #[arg(long, value_delimiter = ',', default_value = "direct,limited,batched")]
    modes: Vec<String>,
}

/// The simulated downstream: one call at a time, fixed + per-item cost.
struct Downstream {
    one_at_a_time: Mutex<()>,
    fixed: Duration,
    per_item: Duration,
}

impl Downstream {
    fn call(&self, items: Vec<u32>) -> Vec<u32> {
        let _one = self
            .one_at_a_time
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        std::thread::sleep(self.fixed + self.per_item * items.len() as u32);
        items.into_iter().map(|x| x ^ 1).collect()
    }
}

#[derive(Serialize)]
struct Latency {
    p50: f64,
    p99: f64,
    max: f64,
}

#[derive(Serialize)]
struct ModeResult {
    mode: String,
    requests: usize,
    images_per_sec: f64,
    latency_ms: Latency,
    #[serde(skip_serializing_if = "Option::is_none")]
    mean_batch: Option<f64>,
}

#[derive(Serialize)]
struct Report {
    modes: Vec<ModeResult>,
}

/// Runs `clients` closed-loop clients for `duration`; `send(images)` makes
/// one request and returns when all its results are in.
fn closed_loop(args: &Args, send: impl Fn(Vec<u32>) + Send + Sync) -> (Vec<Duration>, usize, Duration) {
    let stop = AtomicBool::new(false);
    let t0 = Instant::now();
    let per_client: Vec<(Vec<Duration>, usize)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..args.clients)
            .map(|c| {
                let (stop, send) = (&stop, &send);
                s.spawn(move || {
                    let mut rng = fastrand::Rng::with_seed(c as u64 + 1);
                    let (mut lat, mut images) = (Vec::new(), 0);
                    while !stop.load(Ordering::Relaxed) {
                        let n = rng.usize(1..=args.max_images);
                        let sent = Instant::now();
                        send((0..n as u32).collect());
                        lat.push(sent.elapsed());
                        images += n;
                    }
                    (lat, images)
                })
            })
            .collect();
        std::thread::sleep(Duration::from_secs_f64(args.duration));
        stop.store(true, Ordering::Relaxed);
        workers.into_iter().filter_map(|w| w.join().ok()).collect()
    });
    let elapsed = t0.elapsed();
    let images = per_client.iter().map(|(_, n)| n).sum();
    let lat = per_client.into_iter().flat_map(|(l, _)| l).collect();
    (lat, images, elapsed)
}

fn summarise(mode: &str, mut lat: Vec<Duration>, images: usize, elapsed: Duration) -> ModeResult {
    lat.sort();
    let ms = |d: Duration| (d.as_secs_f64() * 1e4).round() / 10.0;
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
    };
    ModeResult {
        mode: mode.to_owned(),
        requests: lat.len(),
        images_per_sec: (images as f64 / elapsed.as_secs_f64()).round(),
        latency_ms: Latency {
            p50: ms(pct(0.50).unwrap_or_default()),
            p99: ms(pct(0.99).unwrap_or_default()),
            max: ms(lat.last().copied().unwrap_or_default()),
        },
        mean_batch: None,
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let downstream = Arc::new(Downstream {
        one_at_a_time: Mutex::new(()),
        fixed: Duration::from_secs_f64(args.call_ms / 1e3),
        per_item: Duration::from_secs_f64(args.item_ms / 1e3),
    });
    let mut modes = Vec::new();
    for mode in &args.modes {
        if !args.json {
            eprintln!("running {mode} for {} s ...", args.duration);
        }
        let r = match mode.as_str() {
            "direct" => {
                let (lat, n, el) = closed_loop(&args, |imgs| drop(downstream.call(imgs)));
                summarise(mode, lat, n, el)
            }
            "limited" => {
                let limit = RateLimit::per_second(args.rate, args.max_images as u32)?;
                let (lat, n, el) = closed_loop(&args, |imgs| {
                    drop(limit.call(imgs.len(), || downstream.call(imgs)))
                });
                summarise(mode, lat, n, el)
            }
            "batched" => {
                let policy = BatchPolicy {
                    max_items: args.max_items,
                    max_weight: None,
                    max_delay: Duration::from_secs_f64(args.max_delay_ms / 1e3),
                    in_flight: 1,
                };
                let ds = downstream.clone();
                let batcher: Batcher<u32, u32> = Batcher::builder(policy)
                    .queue_capacity(args.clients * args.max_images)
                    .blocking(None)
                    .build(move |_| {
                        let ds = ds.clone();
                        Ok::<_, String>(move |items: Vec<u32>| {
                            Ok::<_, std::convert::Infallible>(ds.call(items))
                        })
                    })?;
                let (lat, n, el) = closed_loop(&args, |imgs| {
                    let handles: Vec<_> = imgs.into_iter().filter_map(|i| batcher.submit(i).ok()).collect();
                    for h in handles {
                        // Every image is accepted (blocking submit, queue
                        // sized for every client's largest request).
                        let _ = h.join();
                    }
                });
                let mut r = summarise(mode, lat, n, el);
                r.mean_batch = Some((batcher.stats().mean_batch() * 10.0).round() / 10.0);
                batcher.shutdown(Duration::from_secs(30));
                r
            }
            other => return Err(format!("unknown mode {other:?} (direct, limited, batched)").into()),
        };
        modes.push(r);
    }
    let report = Report { modes };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    println!(
        "{} clients, requests of 1-{} images, downstream {} ms + {} ms/item, one call at a time, {} s per mode",
        args.clients, args.max_images, args.call_ms, args.item_ms, args.duration
    );
    println!(
        "{:<9} {:>9} {:>10} {:>9} {:>9} {:>9} {:>11}",
        "mode", "requests", "images/s", "p50 ms", "p99 ms", "max ms", "mean batch"
    );
    let direct = report
        .modes
        .iter()
        .find(|m| m.mode == "direct")
        .map(|m| m.images_per_sec);
    for m in &report.modes {
        println!(
            "{:<9} {:>9} {:>10} {:>9} {:>9} {:>9} {:>11}",
            m.mode,
            m.requests,
            m.images_per_sec,
            m.latency_ms.p50,
            m.latency_ms.p99,
            m.latency_ms.max,
            m.mean_batch.map_or("-".to_owned(), |b| b.to_string())
        );
    }
    if let (Some(d), Some(b)) = (direct, report.modes.iter().find(|m| m.mode == "batched")) {
        println!("batched / direct images/s: {:.1}x", b.images_per_sec / d.max(1.0));
    }
    Ok(())
}
