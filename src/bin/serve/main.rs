//! `serve`: facepool as an HTTP face-verification service (and, with
//! `--nats`, a consumer of jobs from NATS JetStream).
//!
//! ```text
//! serve --listen 127.0.0.1:8080 --index people.fpi --token-file tokens.txt
//! ```
//!
//! Prints `listening on ADDR` on stdout once bound (`--listen
//! 127.0.0.1:0` takes a free port), loads the models and the gallery (until
//! then `/readyz` answers 503), and serves until SIGTERM or SIGINT: then
//! `/readyz` says 503 for `--settle-ms` while the listener still accepts,
//! the listener closes, what was admitted finishes (at most
//! `--drain-timeout`), the gallery is saved and it exits. A second signal
//! stops at once. Every flag can be given as a `FACEPOOL_*` environment
//! variable. Exit codes: 0 after a clean shutdown, 1 when the gallery cannot
//! be saved at the end, 2 for usage and set-up errors (also a signal that
//! comes before the models are loaded), 3 when the drain did not finish
//! (its time ran out, or a second signal came): requests were cut.

#[path = "../common/service_args.rs"]
mod service_args;

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use facepool::gallery::{KvConfig, KvGallery};
use facepool::index::{Index, Vectors};
use facepool::nats::{Consumer, NatsConfig};
use facepool::server::{App, ServerConfig};
use facepool::service::FaceService;

use self::service_args::{config, ServiceArgs};

#[derive(Parser)]
#[command(about = "Serve face verification and identification over HTTP.")]
struct Args {
    /// Address to listen on (port 0: a free port, printed at start).
    #[arg(long, env = "FACEPOOL_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// The gallery's index file: loaded at start (created if absent), saved
    /// after each change.
    #[arg(long, env = "FACEPOOL_INDEX")]
    index: Option<PathBuf>,
    /// Where the gallery is kept: `file` (--index, one machine), `nats` (a
    /// Key-Value bucket on the --nats broker, one gallery for every process
    /// on it; each keeps a replica), `none` (this process only). Default:
    /// `file` with --index, else `nats` with --nats, else `none`.
    #[arg(long, env = "FACEPOOL_GALLERY", value_enum)]
    gallery: Option<GalleryKind>,
    /// The fleet gallery's bucket (default: the --nats-prefix, then
    /// `-gallery`).
    #[arg(long, env = "FACEPOOL_GALLERY_BUCKET")]
    gallery_bucket: Option<String>,
    /// Before serving, store every person of this index file (`compare
    /// enroll`'s, or an export) in the fleet gallery, replacing people of
    /// the same ids.
    #[arg(long, env = "FACEPOOL_GALLERY_IMPORT")]
    gallery_import: Option<PathBuf>,
    /// Write the fleet gallery to this index file (once this process's
    /// replica has caught up), then exit instead of serving.
    #[arg(long)]
    gallery_export: Option<PathBuf>,
    /// Where the loaded gallery's vectors stay: `memory`, or `file` (read
    /// from the index file when a search needs them; memory holds their
    /// 8-bit codes, a quarter of the size: for large galleries).
    #[arg(long, env = "FACEPOOL_INDEX_VECTORS", value_enum, default_value_t = IndexVectors::Memory)]
    index_vectors: IndexVectors,
    /// Bearer tokens accepted on /v1 and /debug, one per line.
    #[arg(long, env = "FACEPOOL_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// Serve /v1 and /debug without tokens (only behind something that
    /// authenticates).
    #[arg(long, env = "FACEPOOL_NO_AUTH")]
    no_auth: bool,
    /// Do not serve the web console at / (the API is unchanged).
    #[arg(long, env = "FACEPOOL_NO_CONSOLE")]
    no_console: bool,
    /// A token /metrics then requires, in a file (default: /metrics is open).
    #[arg(long, env = "FACEPOOL_METRICS_TOKEN_FILE")]
    metrics_token_file: Option<PathBuf>,
    /// Largest request body, bytes.
    #[arg(long, env = "FACEPOOL_MAX_BODY", default_value_t = 8 << 20)]
    max_body: usize,
    /// Most images in one request.
    #[arg(long, env = "FACEPOOL_MAX_IMAGES", default_value_t = 64)]
    max_images: usize,
    /// Faces admitted at once at most (waiting or in work): the hard cap
    /// under the adaptive limit (with --latency-target-ms 0, the limit
    /// itself). Default: 256 per core.
    #[arg(long, env = "FACEPOOL_QUEUE")]
    queue: Option<usize>,
    /// The latency admitted requests should meet at p99, ms: the faces
    /// admitted at once adapt to hold it, and a request that cannot meet
    /// it is refused at once (429). 0: a fixed limit of --queue faces.
    #[arg(long, env = "FACEPOOL_LATENCY_TARGET_MS", default_value_t = 300)]
    latency_target_ms: u64,
    /// A request's timeout when it sets no X-Request-Timeout-Ms, ms.
    #[arg(long, env = "FACEPOOL_TIMEOUT_MS", default_value_t = 30_000)]
    timeout_ms: u64,
    /// The longest timeout a request may ask for, ms.
    #[arg(long, env = "FACEPOOL_MAX_TIMEOUT_MS", default_value_t = 120_000)]
    max_timeout_ms: u64,
    /// At shutdown, how long admitted requests may take to finish, s.
    #[arg(long, env = "FACEPOOL_DRAIN_TIMEOUT", default_value_t = 30.0)]
    drain_timeout: f64,
    /// Logs as JSON lines.
    #[arg(long, env = "FACEPOOL_LOG_JSON")]
    log_json: bool,
    #[command(flatten)]
    hygiene: HygieneArgs,
    #[command(flatten)]
    nats: NatsArgs,
    #[command(flatten)]
    service: ServiceArgs,
}

/// Where the gallery is kept.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum GalleryKind {
    File,
    Nats,
    None,
}

/// The gallery as `load` opens it.
#[derive(Clone)]
enum GallerySetup {
    None,
    File(PathBuf, Vectors),
    Nats {
        config: KvConfig,
        import: Option<PathBuf>,
        runtime: tokio::runtime::Handle,
    },
}

impl Args {
    /// The gallery the flags ask for (the runtime: the fleet gallery's).
    fn gallery(&self, runtime: tokio::runtime::Handle) -> Result<GallerySetup, Failure> {
        let kind = self.gallery.unwrap_or(match (&self.index, &self.nats.nats) {
            (Some(_), _) => GalleryKind::File,
            (None, Some(_)) => GalleryKind::Nats,
            (None, None) => GalleryKind::None,
        });
        if self.gallery_import.is_some() && kind != GalleryKind::Nats {
            return Err(Failure::Setup(
                "--gallery-import stores into the fleet gallery: give --nats (and no --index, or --gallery nats)".into(),
            ));
        }
        match kind {
            GalleryKind::None => Ok(GallerySetup::None),
            GalleryKind::File => match &self.index {
                Some(p) => Ok(GallerySetup::File(p.clone(), self.index_vectors.into())),
                None => Err(Failure::Setup("--gallery file needs --index FILE".into())),
            },
            GalleryKind::Nats => {
                let Some(url) = &self.nats.nats else {
                    return Err(Failure::Setup("--gallery nats needs --nats URL".into()));
                };
                let bucket = self
                    .gallery_bucket
                    .clone()
                    .unwrap_or_else(|| format!("{}-gallery", self.nats.nats_prefix.trim()));
                let mut config = KvConfig::new(url.clone(), bucket);
                config.replicas = self.nats.nats_replicas.max(1);
                Ok(GallerySetup::Nats {
                    config,
                    import: self.gallery_import.clone(),
                    runtime,
                })
            }
        }
    }
}

/// Where a loaded gallery's vectors stay.
#[derive(Clone, Copy, clap::ValueEnum)]
enum IndexVectors {
    Memory,
    File,
}

impl From<IndexVectors> for Vectors {
    fn from(v: IndexVectors) -> Self {
        match v {
            IndexVectors::Memory => Vectors::InMemory,
            IndexVectors::File => Vectors::InFile,
        }
    }
}

/// The bounds on connections, headers and bodies (docs/hostile-input.md).
#[derive(clap::Args)]
struct HygieneArgs {
    /// A request's headers must arrive within this, ms (also the longest a
    /// keep-alive connection waits for its next request).
    #[arg(long, env = "FACEPOOL_HEADER_TIMEOUT_MS", default_value_t = 10_000)]
    header_timeout_ms: u64,
    /// Largest request head (request line and headers), bytes.
    #[arg(long, env = "FACEPOOL_MAX_HEADER_BYTES", default_value_t = 64 << 10)]
    max_header_bytes: usize,
    /// A request's body must arrive within this once its headers have, ms.
    #[arg(long, env = "FACEPOOL_BODY_TIMEOUT_MS", default_value_t = 30_000)]
    body_timeout_ms: u64,
    /// Connections open at once (at the cap the oldest idle one is closed
    /// for a new one).
    #[arg(long, env = "FACEPOOL_MAX_CONNECTIONS", default_value_t = 1024)]
    max_connections: usize,
    /// Connections kept for the probes when every other one is busy.
    #[arg(long, env = "FACEPOOL_PROBE_CONNECTIONS", default_value_t = 32)]
    probe_connections: usize,
    /// Request body bytes held at once across requests; more are refused
    /// (429) before they are read.
    #[arg(long, env = "FACEPOOL_MAX_INFLIGHT_BYTES", default_value_t = 256 << 20)]
    max_inflight_bytes: usize,
    /// At shutdown, how long /readyz says 503 before the listener closes, ms.
    #[arg(long, env = "FACEPOOL_SETTLE_MS", default_value_t = 2_000)]
    settle_ms: u64,
}

impl HygieneArgs {
    fn hygiene(&self) -> facepool::server::Hygiene {
        facepool::server::Hygiene {
            header_timeout: Duration::from_millis(self.header_timeout_ms.max(1)),
            max_header_bytes: self.max_header_bytes,
            body_timeout: Duration::from_millis(self.body_timeout_ms.max(1)),
            max_connections: self.max_connections.max(1),
            probe_connections: self.probe_connections,
            max_inflight_bytes: self.max_inflight_bytes.max(1),
            settle: Duration::from_millis(self.settle_ms),
        }
    }
}

/// Raises this process's open-file limit to its hard limit, so that the
/// connection cap, not the descriptor limit, is what refuses clients;
/// lowers the cap if the limit is still too low for it. Returns the cap.
fn descriptors(max_connections: usize, probes: usize) -> usize {
    let limit = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(1024);
    // Room for the gallery, the models, the broker and the logs.
    let spare = usize::try_from(limit)
        .unwrap_or(usize::MAX)
        .saturating_sub(probes + 64);
    if spare < max_connections {
        tracing::warn!(
            limit,
            max_connections = spare,
            "the open-file limit lowers the connection cap"
        );
    }
    max_connections.min(spare.max(1))
}

/// The async mode: jobs from NATS JetStream, beside the HTTP API.
#[derive(clap::Args)]
struct NatsArgs {
    /// Also take jobs from NATS JetStream at this URL (nats://HOST:PORT;
    /// several, comma-separated, for a cluster).
    #[arg(long, env = "FACEPOOL_NATS")]
    nats: Option<String>,
    /// Names: subjects PREFIX.jobs, PREFIX.results.<id>, PREFIX.dead.<id>;
    /// streams PREFIX_JOBS, PREFIX_RESULTS, PREFIX_DEAD (upper case);
    /// the durable consumer PREFIX; the image bucket PREFIX-images.
    #[arg(long, env = "FACEPOOL_NATS_PREFIX", default_value = "facepool")]
    nats_prefix: String,
    /// Deliveries of a failing job before it is dead-lettered.
    #[arg(long, env = "FACEPOOL_NATS_MAX_DELIVER", default_value_t = 3)]
    nats_max_deliver: i64,
    /// Seconds the broker waits for an ack before redelivering a job.
    #[arg(long, env = "FACEPOOL_NATS_ACK_WAIT", default_value_t = 30)]
    nats_ack_wait: u64,
    /// Jobs held at once (default: half the queue).
    #[arg(long, env = "FACEPOOL_NATS_INFLIGHT")]
    nats_inflight: Option<usize>,
    /// Faces per second sent to the model from NATS jobs at most.
    #[arg(long, env = "FACEPOOL_NATS_RATE")]
    nats_rate: Option<f64>,
    /// Most jobs the jobs stream keeps waiting.
    #[arg(long, env = "FACEPOOL_NATS_MAX_JOBS", default_value_t = 1_000_000)]
    nats_max_jobs: i64,
    /// Replicas of each stream (3 on a 3-node cluster).
    #[arg(long, env = "FACEPOOL_NATS_REPLICAS", default_value_t = 1)]
    nats_replicas: usize,
}

/// Why `serve` stops other than cleanly, and its exit code.
enum Failure {
    /// A usage or set-up error (exit 2).
    Setup(String),
    /// The gallery could not be saved at the end (exit 1).
    Save(String),
    /// The drain did not finish: requests were cut (exit 3).
    Cut(String),
}

impl Failure {
    fn exit(self) -> ExitCode {
        let (code, why) = match self {
            Failure::Setup(w) => (2, w),
            Failure::Save(w) => (1, format!("cannot save the gallery: {w}")),
            Failure::Cut(w) => (3, w),
        };
        eprintln!("serve: {why}");
        ExitCode::from(code)
    }
}

impl NatsArgs {
    fn config(&self, drain: Duration) -> Result<Option<NatsConfig>, Failure> {
        let Some(url) = &self.nats else { return Ok(None) };
        let mut c = NatsConfig::with_prefix(url.clone(), &self.nats_prefix)
            .map_err(|e| Failure::Setup(format!("--nats-prefix: {e}")))?;
        if let Some(r) = self.nats_rate {
            if !(r.is_finite() && r > 0.0) {
                return Err(Failure::Setup(format!(
                    "--nats-rate: a positive number of faces per second, not {r}"
                )));
            }
        }
        c.max_deliver = self.nats_max_deliver.max(1);
        c.ack_wait = Duration::from_secs(self.nats_ack_wait.max(1));
        c.max_inflight = self.nats_inflight.unwrap_or(0);
        c.rate_limit = self.nats_rate;
        c.max_jobs = self.nats_max_jobs.max(1);
        c.replicas = self.nats_replicas.max(1);
        c.drain = drain;
        Ok(Some(c))
    }
}

fn read_tokens(path: &Path) -> Result<Vec<String>, Failure> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Failure::Setup(format!("cannot read {}: {e}", path.display())))?;
    let tokens: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect();
    if tokens.is_empty() {
        return Err(Failure::Setup(format!("{} holds no token", path.display())));
    }
    Ok(tokens)
}

fn logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if json {
        b.json().init();
    } else {
        b.init();
    }
}

/// The hard cap on faces admitted, per core, by default: far above what the
/// latency target lets in on a CPU (about 45 faces on 2 cores at 300 ms),
/// so that the target governs; it bounds memory when the model is fast.
const QUEUE_PER_CORE: usize = 256;

/// Loads the models and the gallery (on a thread of its own, while the
/// server already answers its probes).
fn load(
    service: &ServiceArgs,
    queue: usize,
    target: Option<Duration>,
    gallery: GallerySetup,
) -> Result<FaceService, String> {
    let mut c = config(service);
    c.queue = queue;
    c.latency_target = target;
    let mut svc = FaceService::start(c).map_err(|e| e.to_string())?;
    tracing::info!(backend = %svc.backend(), "models loaded");
    match gallery {
        GallerySetup::None => {}
        GallerySetup::File(path, vectors) => {
            let people = svc
                .open_gallery_with(&path, vectors)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            tracing::info!(people, path = %path.display(), "gallery opened");
        }
        GallerySetup::Nats {
            config,
            import,
            runtime,
        } => {
            let bucket = config.bucket.clone();
            let kv = KvGallery::open(config, svc.index().clone(), runtime)
                .map_err(|e| format!("gallery bucket {bucket}: {e}"))?;
            tracing::info!(people = svc.index().len(), %bucket, "gallery replica opened");
            if let Some(path) = import {
                let from = Index::load(&path).map_err(|e| format!("{}: {e}", path.display()))?;
                if from.dim() != svc.dim() {
                    return Err(format!(
                        "{}: vectors of length {}, the model's are {}",
                        path.display(),
                        from.dim(),
                        svc.dim()
                    ));
                }
                let t0 = std::time::Instant::now();
                let n = kv
                    .import(&from, 256)
                    .map_err(|e| format!("importing {}: {e}", path.display()))?;
                tracing::info!(people = n, seconds = t0.elapsed().as_secs_f64(), path = %path.display(), "gallery imported");
            }
            svc.use_store(Arc::new(kv)).map_err(|e| e.to_string())?;
        }
    }
    Ok(svc)
}

/// `--gallery-export FILE`: the fleet gallery, once caught up, to a file.
fn export(args: &Args, path: &Path) -> Result<(), Failure> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Failure::Setup(format!("cannot start the runtime: {e}")))?;
    let GallerySetup::Nats {
        config: kv_config, ..
    } = args.gallery(runtime.handle().clone())?
    else {
        return Err(Failure::Setup(
            "--gallery-export writes the fleet gallery: give --nats".into(),
        ));
    };
    let dim = facepool::face::EmbedModel::load(&config(&args.service).embed_settings())
        .map_err(|e| Failure::Setup(e.to_string()))?
        .0
        .dim();
    let index = Index::new(dim).map_err(|e| Failure::Setup(e.to_string()))?;
    let bucket = kv_config.bucket.clone();
    let kv = KvGallery::open(kv_config, index.clone(), runtime.handle().clone())
        .map_err(|e| Failure::Setup(format!("gallery bucket {bucket}: {e}")))?;
    index
        .save(path)
        .map_err(|e| Failure::Save(format!("{}: {e}", path.display())))?;
    eprintln!(
        "serve: exported {} people ({} faces) at revision {} to {}",
        index.len(),
        index.vectors(),
        kv.revision(),
        path.display()
    );
    Ok(())
}

async fn signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    logging(args.log_json);
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => f.exit(),
    }
}

fn run(args: Args) -> Result<(), Failure> {
    if let Some(path) = &args.gallery_export {
        return export(&args, path);
    }
    let tokens = match (&args.token_file, args.no_auth) {
        (Some(f), _) => read_tokens(f)?,
        (None, true) => Vec::new(),
        (None, false) => {
            return Err(Failure::Setup(
                "give --token-file FILE (or --no-auth to serve without tokens)".into(),
            ))
        }
    };
    let metrics_token = match &args.metrics_token_file {
        Some(f) => read_tokens(f)?.into_iter().next(),
        None => None,
    };
    let drain = Duration::try_from_secs_f64(args.drain_timeout.max(0.0)).map_err(|_| {
        Failure::Setup(format!(
            "--drain-timeout: not a number of seconds: {}",
            args.drain_timeout
        ))
    })?;
    let nats = args.nats.config(drain)?;
    let mut hygiene = args.hygiene.hygiene();
    hygiene.max_connections = descriptors(hygiene.max_connections, hygiene.probe_connections);
    let app = App::new(ServerConfig {
        tokens,
        metrics_token,
        max_body: args.max_body,
        max_images: args.max_images.max(1),
        default_timeout: Duration::from_millis(args.timeout_ms.max(1)),
        max_timeout: Duration::from_millis(args.max_timeout_ms.max(1)),
        hygiene,
        console: !args.no_console,
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Setup(format!("cannot start the runtime: {e}")))?;
    runtime.block_on(serve(args, app, nats, drain))
}

async fn serve(args: Args, app: App, nats: Option<NatsConfig>, drain: Duration) -> Result<(), Failure> {
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| Failure::Setup(format!("cannot listen on {}: {e}", args.listen)))?;
    let addr = listener.local_addr().map_or(args.listen, |a| a);
    println!("listening on {addr}");
    let _ = std::io::stdout().flush();
    tracing::info!(%addr, "listening");

    // Load on a thread of its own; a failure to load, or to bind the NATS
    // consumer, ends the server (exit 2).
    let (failed_tx, mut failed_rx) = tokio::sync::mpsc::channel::<String>(2);
    let (loaded_tx, loaded_rx) = tokio::sync::oneshot::channel::<FaceService>();
    {
        let (app, failed) = (app.clone(), failed_tx.clone());
        let queue = args
            .queue
            .unwrap_or_else(|| QUEUE_PER_CORE * facepool::service::budget::cores())
            .max(1);
        let service = args.service.clone();
        let gallery = args.gallery(tokio::runtime::Handle::current())?;
        let target = (args.latency_target_ms > 0).then(|| Duration::from_millis(args.latency_target_ms));
        std::thread::spawn(move || {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                load(&service, queue, target, gallery)
            }));
            match r {
                Ok(Ok(svc)) => {
                    let _ = app.ready(svc.clone());
                    tracing::info!("ready");
                    let _ = loaded_tx.send(svc);
                }
                Ok(Err(e)) => {
                    let _ = failed.blocking_send(e);
                }
                Err(_) => {
                    let _ = failed.blocking_send("loading the models failed".to_owned());
                }
            }
        });
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let consumer = nats.map(|config| {
        let (failed, mut stop) = (failed_tx.clone(), stop_rx.clone());
        tokio::spawn(async move {
            let Ok(svc) = loaded_rx.await else { return };
            let url = config.url.clone();
            let c = tokio::select! {
                c = Consumer::connect(config, svc) => c,
                _ = stop.wait_for(|s| *s) => return,
            };
            match c {
                Ok(c) => {
                    tracing::info!(%url, inflight = c.max_inflight(), "nats: consuming jobs");
                    c.run(async move {
                        let _ = stop.wait_for(|s| *s).await;
                    })
                    .await;
                    tracing::info!("nats: stopped");
                }
                Err(e) => {
                    let _ = failed.send(e.to_string()).await;
                }
            }
        })
    });
    drop(failed_tx);

    // Drain on a signal, or on a failure to load or to bind the consumer;
    // a second signal stops at once.
    let stop = facepool::server::Stop::new();
    let (fatal_tx, fatal_rx) = tokio::sync::oneshot::channel::<String>();
    {
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = signal() => tracing::info!("stopping: finishing admitted requests and jobs"),
                Some(e) = failed_rx.recv() => {
                    let _ = fatal_tx.send(e);
                }
            }
            stop.drain();
            let _ = stop_tx.send(true);
            signal().await;
            tracing::warn!("a second signal: stopping now");
            stop.now();
        });
    }
    let drained = facepool::server::serve(app.clone(), listener, stop, drain)
        .await
        .map_err(|e| Failure::Setup(format!("the server failed: {e}")))?;
    if let Some(c) = consumer {
        // It drains its own jobs (at most `drain`).
        let _ = c.await;
    }
    // A fatal error, if that is what stopped it, was sent before the drain
    // began (the signal task lives on, for a second signal).
    let mut fatal_rx = fatal_rx;
    let fatal = fatal_rx.try_recv().ok();
    let Some(svc) = app.service() else {
        // The models never loaded: a set-up error.
        return Err(Failure::Setup(
            fatal.unwrap_or_else(|| "stopped before the models were loaded".into()),
        ));
    };
    if let Some(e) = fatal {
        svc.shutdown(Duration::from_secs(5));
        return Err(Failure::Setup(e));
    }
    let saved = svc.save_gallery();
    svc.shutdown(Duration::from_secs(5));
    saved.map_err(|e| Failure::Save(e.to_string()))?;
    match drained {
        facepool::server::Drained::Finished => {
            tracing::info!("stopped");
            Ok(())
        }
        facepool::server::Drained::TimedOut => Err(Failure::Cut(format!(
            "the drain did not finish within {} s: requests were cut",
            drain.as_secs_f64()
        ))),
        facepool::server::Drained::Cut => Err(Failure::Cut("stopped at once: requests were cut".into())),
    }
}
