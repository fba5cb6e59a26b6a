//! Connection hygiene: every stranger's connection under a time and a byte
//! bound before it costs memory or a worker.
//!
//! - **Headers** must arrive within `header_timeout` (hyper's header read
//!   timeout, which also bounds a keep-alive connection's wait for its next
//!   request) and within `max_header_bytes` (hyper's read buffer).
//! - **Connections** are capped at `max_connections`. At the cap a new one
//!   takes the place of the oldest *idle* one (no request in flight: still
//!   sending its headers, or waiting between requests), which is closed; a
//!   connection trickling a header line every few seconds holds nothing for
//!   long. When every connection is busy, up to `probe_connections` more
//!   are served the probes only (`/livez`, `/readyz`, `/metrics`; anything
//!   else 503), one request each; past those, a new connection is closed at
//!   once.
//! - **Bodies**: see `extract` (bytes in flight and the body timeout).
//!
//! Invariant: the registry holds exactly the open connections of the full
//! router; each is removed by its own task when it ends, whatever ends it
//! (the client, an eviction, the drain, an error).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use tokio::sync::Notify;

/// The bounds on connections and requests, with their defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hygiene {
    /// A request's headers must arrive within this (also the longest a
    /// keep-alive connection waits idle for its next request).
    pub header_timeout: Duration,
    /// Largest request head (request line and headers), bytes.
    pub max_header_bytes: usize,
    /// A request's body must arrive within this once its headers have.
    pub body_timeout: Duration,
    /// Connections open at once to the API.
    pub max_connections: usize,
    /// Connections kept for the probes when every other one is busy.
    pub probe_connections: usize,
    /// Request body bytes held at once, across requests (a body is counted
    /// from its `Content-Length` before it is read, or as it arrives).
    pub max_inflight_bytes: usize,
    /// At shutdown, how long `/readyz` says 503 while the listener still
    /// accepts, so that load balancers take the server out first.
    pub settle: Duration,
}

impl Default for Hygiene {
    /// Headers within 10 s and 64 KiB; bodies within 30 s; 1,024
    /// connections and 32 more for probes; 256 MiB of bodies at once; a
    /// settle of 2 s.
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            max_header_bytes: 64 << 10,
            body_timeout: Duration::from_secs(30),
            max_connections: 1024,
            probe_connections: 32,
            max_inflight_bytes: 256 << 20,
            settle: Duration::from_secs(2),
        }
    }
}

/// One open connection as the registry sees it.
struct Entry {
    /// Requests in flight on it.
    active: Arc<AtomicUsize>,
    /// When it last had a request in flight (or was opened).
    since: Arc<Mutex<Instant>>,
    /// Told to close at once (an eviction).
    evict: Arc<Notify>,
}

/// The open connections of the full router.
#[derive(Default)]
pub(super) struct Registry {
    open: Mutex<HashMap<u64, Entry>>,
    next: AtomicU64,
    probes: AtomicUsize,
    evicted: AtomicU64,
    refused: AtomicU64,
}

/// What a new connection gets.
pub(super) enum Admit {
    /// The full router.
    Full(Slot),
    /// The probes only, one request.
    Probes(ProbeSlot),
    /// Nothing: closed at once.
    Refused,
}

/// A connection's place in the registry, given back on drop.
pub(super) struct Slot {
    registry: Arc<Registry>,
    id: u64,
    pub active: Arc<AtomicUsize>,
    pub since: Arc<Mutex<Instant>>,
    pub evict: Arc<Notify>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        lock(&self.registry.open).remove(&self.id);
    }
}

/// A probe connection's place, given back on drop.
pub(super) struct ProbeSlot(Arc<Registry>);

impl Drop for ProbeSlot {
    fn drop(&mut self) {
        self.0.probes.fetch_sub(1, Ordering::AcqRel);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Registry {
    /// A place for a new connection, by the rules at the top.
    pub(super) fn admit(self: &Arc<Self>, h: &Hygiene) -> Admit {
        let mut open = lock(&self.open);
        if open.len() >= h.max_connections.max(1) {
            let oldest_idle = open
                .iter()
                .filter(|(_, e)| e.active.load(Ordering::Acquire) == 0)
                .min_by_key(|(_, e)| *lock(&e.since))
                .map(|(id, _)| *id);
            match oldest_idle.and_then(|id| open.remove(&id)) {
                Some(e) => {
                    e.evict.notify_one();
                    self.evicted.fetch_add(1, Ordering::Relaxed);
                }
                None => {
                    drop(open);
                    let probes = self.probes.fetch_add(1, Ordering::AcqRel);
                    if probes < h.probe_connections {
                        return Admit::Probes(ProbeSlot(self.clone()));
                    }
                    self.probes.fetch_sub(1, Ordering::AcqRel);
                    self.refused.fetch_add(1, Ordering::Relaxed);
                    return Admit::Refused;
                }
            }
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let entry = Entry {
            active: Arc::new(AtomicUsize::new(0)),
            since: Arc::new(Mutex::new(Instant::now())),
            evict: Arc::new(Notify::new()),
        };
        let slot = Slot {
            registry: self.clone(),
            id,
            active: entry.active.clone(),
            since: entry.since.clone(),
            evict: entry.evict.clone(),
        };
        open.insert(id, entry);
        Admit::Full(slot)
    }

    /// Connections open to the full router.
    pub(super) fn open(&self) -> usize {
        lock(&self.open).len()
    }

    /// Idle connections closed to make room, and connections refused.
    pub(super) fn counts(&self) -> (u64, u64) {
        (
            self.evicted.load(Ordering::Relaxed),
            self.refused.load(Ordering::Relaxed),
        )
    }
}

/// A hyper service that counts the requests in flight on its connection
/// (so that an idle connection can be told from a busy one).
#[derive(Clone)]
pub(super) struct Tracked<S> {
    pub inner: S,
    pub active: Arc<AtomicUsize>,
    pub since: Arc<Mutex<Instant>>,
}

/// Ends a request's count when its response is ready (or it is dropped).
struct InFlight {
    active: Arc<AtomicUsize>,
    since: Arc<Mutex<Instant>>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        *lock(&self.since) = Instant::now();
        self.active.fetch_sub(1, Ordering::AcqRel);
    }
}

pin_project_lite::pin_project! {
    /// A response future holding its request's count.
    pub(super) struct Counted<F> {
        #[pin]
        inner: F,
        guard: Option<InFlight>,
    }
}

impl<F: Future> Future for Counted<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let r = this.inner.poll(cx);
        if r.is_ready() {
            this.guard.take();
        }
        r
    }
}

impl<S> hyper::service::Service<hyper::Request<Incoming>> for Tracked<S>
where
    S: hyper::service::Service<hyper::Request<Incoming>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Counted<S::Future>;

    fn call(&self, req: hyper::Request<Incoming>) -> Self::Future {
        self.active.fetch_add(1, Ordering::AcqRel);
        *lock(&self.since) = Instant::now();
        Counted {
            inner: self.inner.call(req),
            guard: Some(InFlight {
                active: self.active.clone(),
                since: self.since.clone(),
            }),
        }
    }
}
