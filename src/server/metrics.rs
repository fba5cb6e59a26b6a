//! Prometheus exposition (`GET /metrics`, OpenMetrics text): requests by
//! route and status, request latency and the per-stage latencies of the
//! pipeline (histograms), and the pool's and batcher's gauges and batch
//! sizes, read at each scrape.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::service::{FaceService, Timings};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabel {
    stage: &'static str,
}

fn latency_histogram() -> Histogram {
    // 0.5 ms to about 33 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 17))
}

/// The server's metrics and their registry.
pub struct HttpMetrics {
    registry: Registry,
    /// The API's requests of the last minutes, per second (`/v1/stats`).
    recent: super::stats::Recent,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabel, Histogram>,
    stages: Family<StageLabel, Histogram>,
}

impl std::fmt::Debug for HttpMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpMetrics").finish_non_exhaustive()
    }
}

impl HttpMetrics {
    /// The metrics, with the runtime's gauges read from `service` once it
    /// is set.
    pub fn new(
        service: Arc<OnceLock<FaceService>>,
        connections: Arc<OnceLock<Arc<super::conn::Registry>>>,
        bodies: (super::extract::BodyBudget, usize),
    ) -> Self {
        let mut registry = Registry::with_prefix("facepool");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by route, method and status",
            requests.clone(),
        );
        let latency =
            Family::<RouteLabel, Histogram>::new_with_constructor(latency_histogram as fn() -> Histogram);
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency, by route",
            latency.clone(),
        );
        let stages =
            Family::<StageLabel, Histogram>::new_with_constructor(latency_histogram as fn() -> Histogram);
        registry.register(
            "stage_duration_seconds",
            "Time per pipeline stage of the answered requests (admission, queue, prepare, batch_wait, inference, search, total)",
            stages.clone(),
        );
        registry.register_collector(Box::new(Runtime {
            service,
            connections,
            bodies,
        }));
        Self {
            registry,
            recent: super::stats::Recent::new(),
            requests,
            latency,
            stages,
        }
    }

    /// The API's requests of the last minutes.
    pub fn recent(&self) -> &super::stats::Recent {
        &self.recent
    }

    /// Counts an answered request (the API's, but the stats' own, also in
    /// the window of [`recent`](Self::recent)).
    pub fn request(&self, route: &str, method: &str, status: u16, took: Duration) {
        if route.starts_with("/v1/") && route != "/v1/stats" {
            self.recent.record(status, took);
        }
        self.requests
            .get_or_create(&RequestLabels {
                route: route.to_owned(),
                method: method.to_owned(),
                status,
            })
            .inc();
        self.latency
            .get_or_create(&RouteLabel {
                route: route.to_owned(),
            })
            .observe(took.as_secs_f64());
    }

    /// Records a request's per-stage timings.
    pub fn stages(&self, t: &Timings) {
        for (stage, d) in [
            ("admission", t.admission),
            ("queue", t.queue),
            ("prepare", t.prepare),
            ("batch_wait", t.batch_wait),
            ("inference", t.inference),
            ("search", t.search),
            ("total", t.total),
        ] {
            self.stages
                .get_or_create(&StageLabel { stage })
                .observe(d.as_secs_f64());
        }
    }

    /// The exposition text.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// The pool's and batcher's gauges and counters, read at each scrape.
struct Runtime {
    service: Arc<OnceLock<FaceService>>,
    connections: Arc<OnceLock<Arc<super::conn::Registry>>>,
    bodies: (super::extract::BodyBudget, usize),
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").finish_non_exhaustive()
    }
}

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, v: i64) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(v);
    g.encode(e.encode_descriptor(name, help, None, g.metric_type())?)
}

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> Result<(), std::fmt::Error> {
    let c = ConstCounter::new(v);
    c.encode(e.encode_descriptor(name, help, None, c.metric_type())?)
}

fn fgauge(e: &mut DescriptorEncoder, name: &str, help: &str, v: f64) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(v);
    g.encode(e.encode_descriptor(name, help, None, g.metric_type())?)
}

fn int(v: usize) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Collector for Runtime {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (budget, total) = &self.bodies;
        gauge(
            &mut e,
            "http_body_bytes_held",
            "Request body bytes counted against the budget (twice each body byte)",
            int(budget.held(*total)),
        )?;
        if let Some(c) = self.connections.get() {
            gauge(
                &mut e,
                "http_connections",
                "Connections open to the API",
                int(c.open()),
            )?;
            let (evicted, refused) = c.counts();
            counter(
                &mut e,
                "http_connections_evicted",
                "Idle connections closed to make room at the connection cap",
                evicted,
            )?;
            counter(
                &mut e,
                "http_connections_refused",
                "Connections closed at once: every connection busy, the probe room full",
                refused,
            )?;
        }
        let Some(svc) = self.service.get() else {
            return Ok(());
        };
        let p = svc.pool_stats();
        gauge(
            &mut e,
            "pool_workers",
            "Preparation workers serving",
            int(p.workers),
        )?;
        gauge(&mut e, "pool_running", "Images being prepared", int(p.running))?;
        gauge(
            &mut e,
            "pool_waiting",
            "Images waiting for a worker",
            int(p.waiting),
        )?;
        gauge(
            &mut e,
            "pool_capacity",
            "Preparation workers at most",
            int(p.capacity),
        )?;
        counter(
            &mut e,
            "pool_jobs_completed",
            "Preparation jobs that ran",
            p.completed,
        )?;
        counter(
            &mut e,
            "pool_jobs_rejected",
            "Preparation jobs refused",
            p.rejected,
        )?;
        let b = svc.batch_stats();
        gauge(
            &mut e,
            "batch_queued_faces",
            "Faces waiting for a model run",
            int(b.queued),
        )?;
        let a = svc.admission().stats();
        gauge(
            &mut e,
            "admitted_faces",
            "Faces admitted and not yet embedded",
            int(a.in_use.faces),
        )?;
        gauge(
            &mut e,
            "admitted_bytes",
            "Image bytes admitted and not yet decoded",
            int(a.in_use.bytes),
        )?;
        gauge(
            &mut e,
            "admission_limit_faces",
            "Faces admitted at once at most (the adaptive limit)",
            int(a.limit.faces),
        )?;
        gauge(
            &mut e,
            "admission_cap_faces",
            "The hard cap on faces admitted at once",
            int(a.cap.faces),
        )?;
        let secs = |d: Option<std::time::Duration>| d.map_or(0.0, |d| d.as_secs_f64());
        fgauge(
            &mut e,
            "admission_target_seconds",
            "The latency target admitted requests are held to (0: a fixed limit)",
            secs(a.target),
        )?;
        fgauge(
            &mut e,
            "admission_rate_faces_per_second",
            "Faces finished per second while the limit held requests back (the measured capacity)",
            a.rate.unwrap_or(0.0),
        )?;
        fgauge(
            &mut e,
            "admission_min_sojourn_seconds",
            "The smallest face sojourn seen (what a face costs alone)",
            secs(a.floor),
        )?;
        fgauge(
            &mut e,
            "admission_sample_sojourn_seconds",
            "The last interval's face sojourn p99",
            secs(a.sojourn_p99),
        )?;
        fgauge(
            &mut e,
            "admission_expected_wait_seconds",
            "What a face admitted now would wait, at the measured rate",
            secs(a.expected_wait),
        )?;
        counter(
            &mut e,
            "admission_refused_deadline",
            "Requests refused at once because their deadline was shorter than the expected wait",
            a.refused_deadline,
        )?;
        gauge(
            &mut e,
            "admission_waiting",
            "Requests waiting in line for admission",
            int(a.waiting),
        )?;
        counter(&mut e, "admission_granted", "Requests admitted", a.granted)?;
        counter(
            &mut e,
            "admission_refused_full",
            "Requests refused at once because the service was full",
            a.refused_full,
        )?;
        counter(
            &mut e,
            "admission_refused_too_large",
            "Requests refused because they were over the per-request cap",
            a.refused_too_large,
        )?;
        if let Some(g) = svc.gallery_status() {
            gauge(
                &mut e,
                "gallery_people",
                "People in the gallery this process searches",
                int(svc.index().len()),
            )?;
            gauge(
                &mut e,
                "gallery_revision",
                "The last revision of the fleet gallery this replica applied",
                i64::try_from(g.revision).unwrap_or(i64::MAX),
            )?;
            gauge(
                &mut e,
                "gallery_pending_changes",
                "Changes stored that this replica has not applied yet (as the broker last said)",
                i64::try_from(g.pending).unwrap_or(i64::MAX),
            )?;
            gauge(
                &mut e,
                "gallery_connected",
                "1 while the replica follows its store; 0 while cut off (it answers from what it has)",
                i64::from(g.connected),
            )?;
            fgauge(
                &mut e,
                "gallery_last_change_age_seconds",
                "Since the replica applied its last change (or caught up)",
                secs(g.since_last_change),
            )?;
            counter(
                &mut e,
                "gallery_rejected_entries",
                "Entries of the store that could not be applied (skipped, logged)",
                g.rejected,
            )?;
        }
        counter(&mut e, "batches", "Model runs", b.batches)?;
        counter(&mut e, "batch_faces_delivered", "Faces embedded", b.delivered)?;
        counter(
            &mut e,
            "batch_faces_expired",
            "Faces dropped at their deadline before a run",
            b.expired,
        )?;
        counter(
            &mut e,
            "batch_faces_abandoned",
            "Faces dropped because their caller left",
            b.abandoned,
        )?;
        // Batch sizes: the batcher's power-of-two buckets as a histogram.
        // Every bucket, empty ones too, so each scrape has the same series
        // (the encoder makes the counts cumulative; f64::MAX is +Inf).
        let seen: Vec<(usize, u64)> = b.batch_sizes.buckets().map(|(_, hi, n)| (hi, n)).collect();
        let at = |hi: usize| seen.iter().find(|(h, _)| *h == hi).map_or(0, |(_, n)| *n);
        let mut buckets: Vec<(f64, u64)> = (0..16).map(|i| ((1u64 << i) as f64, at(1 << i))).collect();
        buckets.push((f64::MAX, at(usize::MAX)));
        let count = b.batches;
        // Every face sent to a run was delivered or failed with it.
        let sum = (b.delivered + b.failed) as f64;
        let mut m = e.encode_descriptor(
            "batch_size",
            "Faces per model run (power-of-two buckets)",
            None,
            MetricType::Histogram,
        )?;
        m.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }
}
