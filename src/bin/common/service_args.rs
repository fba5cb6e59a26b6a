//! The face service's settings as command-line flags (and `FACEPOOL_*`
//! environment variables), shared by the binaries.

use std::path::PathBuf;
use std::time::Duration;

use facepool::face::{Backend, FaceMode};
use facepool::service::{FaceConfig, Pins};

/// How the face service runs.
#[derive(clap::Args, Clone)]
pub struct ServiceArgs {
    /// Folder of the fetched assets (default: ./assets, or next to the binary).
    #[arg(long, env = "FACEPOOL_ASSETS")]
    pub assets: Option<PathBuf>,
    /// The embedding model.
    #[arg(long, env = "FACEPOOL_MODEL")]
    pub model: Option<PathBuf>,
    /// The face detector model.
    #[arg(long, env = "FACEPOOL_DETECTOR")]
    pub detector: Option<PathBuf>,
    /// Embedding backend: cuda (tract's CUDA runtime on the first GPU), ort
    /// (ONNX Runtime), tract, or auto (cuda when a GPU and its libraries
    /// load, else ort when its library loads, else tract).
    #[arg(long, env = "FACEPOOL_BACKEND", default_value = "auto")]
    pub backend: Backend,
    /// The ONNX Runtime library (default: assets/lib/libonnxruntime.so.1).
    #[arg(long, env = "FACEPOOL_ONNXRUNTIME")]
    pub onnxruntime: Option<PathBuf>,
    /// How faces are found: aligned (face chips), detect, or auto.
    #[arg(long, env = "FACEPOOL_FACES", default_value = "auto")]
    pub faces: FaceMode,
    /// Faces of one image identified at most where every face is asked
    /// for (identify and review with `all_faces`), the largest first; such
    /// an image is admitted for this many faces (1 to 64, default: 8).
    #[arg(long, env = "FACEPOOL_MAX_FACES", value_parser = clap::value_parser!(u32).range(1..=64))]
    pub max_faces: Option<u32>,
    /// Similarity at or above which two faces are the same person.
    #[arg(long, env = "FACEPOOL_THRESHOLD")]
    pub threshold: Option<f32>,
    /// Pool workers for decoding and detection (default: the cores; they
    /// share them with the inference threads).
    #[arg(long, env = "FACEPOOL_THREADS")]
    pub threads: Option<usize>,
    /// Inference threads, each with its own model state (default: the
    /// cores, divided by the intra-op threads; 2 on a GPU).
    #[arg(long, env = "FACEPOOL_INFERENCE_THREADS")]
    pub inference_threads: Option<usize>,
    /// Scale the preparation workers between 1 and --threads on their
    /// queue, holding growth while faces wait for the model.
    #[arg(long, env = "FACEPOOL_AUTOSCALE")]
    pub autoscale: bool,
    /// ONNX Runtime intra-op threads per inference thread (default: 1).
    #[arg(long, env = "FACEPOOL_INTRA_THREADS")]
    pub intra_threads: Option<usize>,
    /// Most faces per model run (default: 4 on the CPU, 256 on a GPU).
    #[arg(long, env = "FACEPOOL_BATCH_MAX")]
    pub batch_max: Option<usize>,
    /// Largest image file accepted, bytes (default: 32 MiB).
    #[arg(long, env = "FACEPOOL_MAX_IMAGE_BYTES")]
    pub max_image_bytes: Option<u64>,
    /// Widest and tallest image accepted, pixels (default: 8192).
    #[arg(long, env = "FACEPOOL_MAX_IMAGE_SIDE")]
    pub max_image_side: Option<u32>,
    /// Most pixels (width × height) of an image accepted (default: 40000000).
    #[arg(long, env = "FACEPOOL_MAX_IMAGE_PIXELS")]
    pub max_image_pixels: Option<u64>,
    /// Largest image as decoded in its own pixel format, bytes (default:
    /// 134217728, 128 MiB: 40 MP of 8-bit RGB, 16 MP of 16-bit RGBA).
    #[arg(long, env = "FACEPOOL_MAX_DECODE_BYTES")]
    pub max_decode_bytes: Option<u64>,
    /// Most frames per detector run, detection batched across requests on
    /// a thread of its own; 0: each preparation worker detects on its own
    /// frame (default: 0 on the CPU, where batching gains nothing, 32 on a
    /// GPU).
    #[arg(long, env = "FACEPOOL_DETECT_BATCH")]
    pub detect_batch: Option<usize>,
    /// Most time a face waits for its batch, ms (default: 2 on the CPU, 4
    /// on a GPU).
    #[arg(long, env = "FACEPOOL_BATCH_DELAY_MS", value_parser = delay_ms)]
    pub batch_delay_ms: Option<f64>,
}

/// A delay in milliseconds: a finite number, 0 to one hour.
fn delay_ms(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if (0.0..=3.6e6).contains(&v) => Ok(v),
        _ => Err(format!("a delay in ms from 0 to 3600000, not {s:?}")),
    }
}

/// The service settings the flags give (the rest from the assets folder
/// and the core budget).
pub fn config(args: &ServiceArgs) -> FaceConfig {
    let assets = FaceConfig::locate_assets(args.assets.clone());
    let mut c = FaceConfig::from_assets(&assets);
    if let Some(m) = &args.model {
        c.model = m.clone();
    }
    if let Some(d) = &args.detector {
        c.detector = d.clone();
    }
    c.backend = args.backend;
    if let Some(l) = &args.onnxruntime {
        c.onnxruntime = l.clone();
    }
    c.find.mode = args.faces;
    if let Some(n) = args.max_faces {
        c.max_faces = n as usize;
    }
    if let Some(t) = args.threshold {
        c.threshold = t;
    }
    c.autoscale = args.autoscale;
    c = c.with_threads(Pins {
        workers: args.threads,
        inference_threads: args.inference_threads,
        intra_threads: args.intra_threads,
    });
    if let Some(b) = args.max_image_bytes {
        c.limits.max_file_bytes = b;
    }
    if let Some(side) = args.max_image_side {
        c.limits.max_width = side;
        c.limits.max_height = side;
    }
    if let Some(p) = args.max_image_pixels {
        c.limits.max_pixels = p;
    }
    if let Some(b) = args.max_decode_bytes {
        c.limits.max_decoded_bytes = b;
    }
    // What the flags set holds on every backend (the GPU's own defaults
    // apply only where a flag leaves them).
    if let Some(n) = args.inference_threads {
        c.gpu.inference_threads = n.max(1);
    }
    if let Some(b) = args.batch_max {
        c.cpu.batch_max = b.max(1);
        c.gpu.batch_max = b.max(1);
    }
    if let Some(n) = args.detect_batch {
        c.cpu.detect_batch = n;
        c.gpu.detect_batch = n;
    }
    if let Some(d) = args.batch_delay_ms {
        c.cpu.batch_delay = Duration::from_secs_f64(d.max(0.0) / 1e3);
        c.gpu.batch_delay = c.cpu.batch_delay;
    }
    c
}
