//! Serving an [`App`]: the accept loop with the connection rules of
//! `conn`, and the drain, as the `serve` binary does and as tests and
//! embedders can.
//!
//! The drain, on [`Stop::drain`]: `/readyz` says 503 and the API refuses
//! new work (503) at once, while the listener still accepts for the
//! settle period (so a load balancer polling `/readyz` on new connections
//! sees the 503 and takes the server out); then the listener closes, idle
//! connections close, and the requests in flight get the drain time to
//! finish; what is left then is cut. [`Stop::now`] (a second signal) cuts
//! everything at once.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::conn::{Admit, Registry, Tracked};
use super::App;

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drained {
    /// Every admitted request finished.
    Finished,
    /// The drain time ran out with requests still running (they were cut).
    TimedOut,
    /// Stopped at once ([`Stop::now`]): what was running was cut.
    Cut,
}

/// Tells a running [`serve`] to drain, or to stop at once. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Stop(Arc<watch::Sender<u8>>);

impl Default for Stop {
    fn default() -> Self {
        Self::new()
    }
}

impl Stop {
    /// Not stopping yet.
    pub fn new() -> Self {
        Self(Arc::new(watch::channel(0).0))
    }

    /// Drain: stop taking work, finish what is admitted.
    pub fn drain(&self) {
        self.0.send_if_modified(|s| {
            let was = *s;
            *s = (*s).max(1);
            was != *s
        });
    }

    /// Stop at once: cut what is running.
    pub fn now(&self) {
        self.0.send_replace(2);
    }

    /// A future that ends when the stop reaches `level` (1: drain, 2: now).
    fn reached(&self, level: u8) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.0.subscribe();
        async move {
            let _ = rx.wait_for(|s| *s >= level).await;
        }
    }
}

/// Serves `app` on `listener` until `stop` says drain, then drains (see
/// the top of this module) for at most `drain`, and says how it ended. An
/// error only if the server itself fails.
pub async fn serve(app: App, listener: TcpListener, stop: Stop, drain: Duration) -> std::io::Result<Drained> {
    let h = app.config().hygiene.clone();
    let registry = Arc::new(Registry::default());
    app.watch_connections(registry.clone());
    let (full, probes) = (app.router(), app.probe_router());
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(h.header_timeout)
        .max_buf_size(h.max_header_bytes.max(8192))
        .keep_alive(true);
    let mut probe_http = http.clone();
    probe_http.keep_alive(false);
    let (finish_tx, finish_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let draining = stop.reached(1);
    let now = stop.reached(2);
    tokio::pin!(draining, now);
    let mut settle: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = &mut draining, if settle.is_none() => {
                app.stop_accepting();
                settle = Some(tokio::time::Instant::now() + h.settle);
            }
            _ = tokio::time::sleep_until(settle.unwrap_or_else(tokio::time::Instant::now)), if settle.is_some() => break,
            _ = &mut now => {
                app.stop_accepting();
                tasks.abort_all();
                return Ok(Drained::Cut);
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    match registry.admit(&h) {
                        Admit::Full(slot) => {
                            let svc = Tracked {
                                inner: TowerToHyperService::new(full.clone()),
                                active: slot.active.clone(),
                                since: slot.since.clone(),
                            };
                            let (http, finish) = (http.clone(), finish_rx.clone());
                            tasks.spawn(async move {
                                let evict = slot.evict.clone();
                                connection(stream, &http, svc, Some(evict), finish).await;
                                drop(slot);
                            });
                        }
                        Admit::Probes(slot) => {
                            let svc = TowerToHyperService::new(probes.clone());
                            let (http, finish) = (probe_http.clone(), finish_rx.clone());
                            tasks.spawn(async move {
                                connection(stream, &http, svc, None, finish).await;
                                drop(slot);
                            });
                        }
                        Admit::Refused => drop(stream),
                    }
                }
                // Out of descriptors (or another transient failure): the
                // connections open are still served; try again shortly
                // instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    // The settle is over: no new connections; the open ones finish what
    // they are doing and close.
    drop(listener);
    let _ = finish_tx.send(true);
    let all_done = async { while tasks.join_next().await.is_some() {} };
    tokio::select! {
        r = tokio::time::timeout(drain, all_done) => match r {
            Ok(()) => Ok(Drained::Finished),
            Err(_) => Ok(Drained::TimedOut),
        },
        _ = &mut now => Ok(Drained::Cut),
    }
    // Dropping `tasks` here aborts whatever is left.
}

/// One connection: served until it ends, is evicted (closed at once: it
/// was idle), or the drain asks it to finish (its requests in flight
/// complete, then it closes).
async fn connection<S>(
    stream: TcpStream,
    http: &hyper::server::conn::http1::Builder,
    svc: S,
    evict: Option<Arc<tokio::sync::Notify>>,
    mut finish: watch::Receiver<bool>,
) where
    S: hyper::service::Service<hyper::Request<hyper::body::Incoming>, Response = axum::response::Response>
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let conn = http.serve_connection(TokioIo::new(stream), svc);
    tokio::pin!(conn);
    let evicted = async {
        match &evict {
            Some(n) => n.notified().await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(evicted);
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = &mut evicted => return,
        _ = finish.wait_for(|f| *f) => {}
    }
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}
