//! Workload files (`profiles/*.toml`): how requests arrive, how long a run
//! lasts, what a request holds, the SLOs, and the runtime's settings.
//!
//! Unknown fields are errors (a typo must not silently fall back to a
//! default), and every value is checked; an error names the field.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

/// A workload.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// What the workload stands for (shown in reports).
    #[serde(default)]
    pub description: String,
    /// Modes run when `--modes` is not given.
    #[serde(default = "all_modes")]
    pub modes: Vec<Mode>,
    /// How requests arrive.
    pub arrival: Arrival,
    /// When a mode's run ends.
    #[serde(default)]
    pub stop: Stop,
    /// What one request holds.
    #[serde(default)]
    pub request: RequestShape,
    /// Service-level objectives checked at the end.
    #[serde(default)]
    pub slo: Slo,
    /// Settings of the runtime under test.
    #[serde(default)]
    pub runtime: Runtime,
    /// The synthetic downstream (`--synthetic`).
    #[serde(default)]
    pub synthetic: Synthetic,
}

/// How requests are served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
pub enum Mode {
    /// A thread per request, calling the backend itself.
    #[serde(rename = "direct")]
    Direct,
    /// The bounded pool; each job serves a whole request, no batching.
    #[serde(rename = "pool")]
    Pool,
    /// The full runtime: the pool prepares, the batcher gathers faces from
    /// all requests into model runs.
    #[serde(rename = "pool+batch")]
    PoolBatch,
    /// A running service over HTTP (`--target`), however it serves.
    #[serde(skip)]
    Http,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Direct => "direct",
            Mode::Pool => "pool",
            Mode::PoolBatch => "pool+batch",
            Mode::Http => "http",
        }
    }
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "direct" => Ok(Mode::Direct),
            "pool" => Ok(Mode::Pool),
            "pool+batch" | "batch" => Ok(Mode::PoolBatch),
            other => Err(format!(
                "unknown mode `{other}` (expected direct, pool or pool+batch)"
            )),
        }
    }
}

fn all_modes() -> Vec<Mode> {
    vec![Mode::Direct, Mode::Pool, Mode::PoolBatch]
}

/// The arrival process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ArrivalModel {
    /// Open loop, evenly spaced sends.
    Open,
    /// Open loop, exponential gaps (a Poisson process).
    Poisson,
    /// Closed loop: `clients` callers, each sending its next request when
    /// the last one is answered.
    Closed,
}

/// How requests arrive.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Arrival {
    /// `open`, `poisson` or `closed`.
    pub model: ArrivalModel,
    /// Open loop: requests per second (when there are no phases).
    pub rate: Option<f64>,
    /// Closed loop: concurrent clients.
    pub clients: Option<usize>,
    /// Open loop: phases run in order, each at a fixed rate or ramping
    /// linearly from `rate` to `ramp_to` (bursts are short phases at a high
    /// rate). The run lasts as long as the phases.
    #[serde(default)]
    pub phases: Vec<Phase>,
    /// Closed loop: a client refused with a Retry-After waits that long
    /// before its next request, as a well-behaved client does (by default
    /// it sends the next at once).
    #[serde(default)]
    pub honour_retry_after: bool,
}

/// One phase of an open-loop run.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Phase {
    /// How long the phase lasts.
    pub seconds: f64,
    /// Requests per second at the start of the phase.
    pub rate: f64,
    /// Requests per second at the end of the phase (a linear ramp).
    pub ramp_to: Option<f64>,
}

/// When a mode's run stops sending.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stop {
    /// Seconds of sending per mode (open loop with phases: their sum).
    pub seconds: Option<f64>,
    /// Stop after this many requests, if sooner.
    pub requests: Option<u64>,
    /// After sending stops, how long answers are awaited before the
    /// requests still out count as errors (default 60 s).
    pub drain_seconds: Option<f64>,
}

/// What one request holds.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RequestShape {
    /// Faces per request: a number, or `[min, max]` (uniform).
    pub faces: Faces,
    /// Fraction of requests that identify each face against the index; the
    /// others verify their first face against the rest.
    pub identify: f64,
    /// The photos used with the real model: `johns`, `faces` or `all`.
    pub images: ImageSet,
}

impl Default for RequestShape {
    fn default() -> Self {
        Self {
            faces: Faces::Fixed(1),
            identify: 0.0,
            images: ImageSet::Johns,
        }
    }
}

/// Faces per request.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(untagged)]
pub enum Faces {
    /// Always this many.
    Fixed(usize),
    /// Uniform in `[min, max]`.
    Range([usize; 2]),
}

impl Faces {
    pub fn bounds(self) -> (usize, usize) {
        match self {
            Faces::Fixed(n) => (n, n),
            Faces::Range([a, b]) => (a, b),
        }
    }

    pub fn mean(self) -> f64 {
        let (a, b) = self.bounds();
        (a + b) as f64 / 2.0
    }
}

/// Photo sets of the fetched assets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageSet {
    /// `assets/photos/johns`: 55 photos of 5 people.
    Johns,
    /// `assets/photos/faces`: group photos, several faces each.
    Faces,
    /// Both.
    All,
}

/// Service-level objectives.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Slo {
    /// The 99th percentile of answered requests' latency, at most (ms).
    pub p99_ms: Option<f64>,
    /// Failed requests (not refusals) over all requests, at most.
    pub error_rate: Option<f64>,
    /// Refused requests (`Overloaded`) over all requests, at most.
    pub reject_rate: Option<f64>,
}

/// Settings of the runtime under test.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Runtime {
    /// Pool workers (default: the cores; in pool+batch they share them
    /// with the inference threads, as the face service's defaults do).
    pub workers: Option<usize>,
    /// Faces that may wait (the pool mode takes as many mean-sized
    /// requests); more are refused with `Overloaded`.
    pub queue: usize,
    /// Most faces per model run (default: 256 for the synthetic
    /// downstream; the face service's own default, 4, for the model).
    pub batch_max: Option<usize>,
    /// Most time the oldest face waits for its batch to fill, ms (default:
    /// 20 synthetic; the face service's default, 2, for the model).
    pub batch_delay_ms: Option<f64>,
    /// Face model, pool+batch: inference threads, each with its own model
    /// state (default: the face service's, the cores).
    pub inference_threads: Option<usize>,
    /// Open loop: threads that hold admitted requests until answered (a
    /// server's request handlers); requests wait for one, and that wait
    /// counts in their latency.
    pub callers: usize,
    /// Direct mode: most request threads alive at once; more fail.
    pub direct_threads: usize,
}

impl Default for Runtime {
    fn default() -> Self {
        Self {
            workers: None,
            queue: 1024,
            batch_max: None,
            batch_delay_ms: None,
            inference_threads: None,
            callers: 512,
            direct_threads: 1024,
        }
    }
}

/// The synthetic downstream: a call costs `call_ms + item_ms` per item, and
/// at most `concurrency` calls run at once.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Synthetic {
    /// Fixed cost of a call (ms).
    pub call_ms: f64,
    /// Cost per item of a call (ms).
    pub item_ms: f64,
    /// Calls that may run at once.
    pub concurrency: usize,
    /// CPU work per face before it is sent, on the pool (ms of spinning).
    pub prepare_ms: f64,
}

impl Default for Synthetic {
    fn default() -> Self {
        Self {
            call_ms: 50.0,
            item_ms: 0.25,
            concurrency: 1,
            prepare_ms: 0.0,
        }
    }
}

/// A profile that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}: {source}")]
    Parse {
        path: String,
        source: Box<toml::de::Error>,
    },
    #[error("{path}: `{field}` {why}")]
    Invalid {
        path: String,
        field: &'static str,
        why: String,
    },
}

/// Most seconds a run may send for (a day): the generator stops by itself.
const MAX_SECONDS: f64 = 86_400.0;
/// Fewest seconds a duration may be (a millisecond): a positive number that
/// rounds to no time at all is no limit.
const MIN_SECONDS: f64 = 1e-3;
/// Most requests per second a profile may ask for.
const MAX_RATE: f64 = 1e6;
/// Fewest requests per second an open loop may ask for (one in 1000 s): the
/// gap to the next request, 1 / rate, must be a duration.
const MIN_RATE: f64 = 1e-3;
/// Most faces in one request, and most clients, callers or threads.
const MAX_COUNT: usize = 100_000;

impl Profile {
    /// Reads and checks a profile file.
    pub fn load(path: &Path) -> Result<Self, ProfileError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ProfileError::Read {
            path: name.clone(),
            source,
        })?;
        Self::parse(&name, &text)
    }

    /// Parses and checks a profile; `name` labels the errors.
    pub fn parse(name: &str, text: &str) -> Result<Self, ProfileError> {
        let p: Profile = toml::from_str(text).map_err(|source| ProfileError::Parse {
            path: name.to_owned(),
            source: Box::new(source),
        })?;
        p.check().map_err(|(field, why)| ProfileError::Invalid {
            path: name.to_owned(),
            field,
            why,
        })?;
        Ok(p)
    }

    fn check(&self) -> Result<(), (&'static str, String)> {
        let positive = |field: &'static str, v: f64, max: f64| {
            if v.is_finite() && v > 0.0 && v <= max {
                Ok(())
            } else {
                Err((field, format!("must be a number in (0, {max}], not {v}")))
            }
        };
        let within = |field: &'static str, v: f64, min: f64, max: f64| {
            if v.is_finite() && (min..=max).contains(&v) {
                Ok(())
            } else {
                Err((field, format!("must be a number in [{min}, {max}], not {v}")))
            }
        };
        let seconds = |field: &'static str, v: f64| within(field, v, MIN_SECONDS, MAX_SECONDS);
        let rate = |field: &'static str, v: f64| within(field, v, MIN_RATE, MAX_RATE);
        let count = |field: &'static str, v: usize| {
            if (1..=MAX_COUNT).contains(&v) {
                Ok(())
            } else {
                Err((field, format!("must be in 1..={MAX_COUNT}, not {v}")))
            }
        };
        if self.modes.is_empty() {
            return Err(("modes", "must name at least one mode".into()));
        }
        let a = &self.arrival;
        match a.model {
            ArrivalModel::Closed => {
                let Some(clients) = a.clients else {
                    return Err(("arrival.clients", "is required for a closed loop".into()));
                };
                count("arrival.clients", clients)?;
                if a.rate.is_some() {
                    return Err((
                        "arrival.rate",
                        "is for open loops; a closed loop has clients".into(),
                    ));
                }
                if !a.phases.is_empty() {
                    return Err(("arrival.phases", "are for open loops".into()));
                }
                if self.stop.seconds.is_none() {
                    return Err(("stop.seconds", "is required for a closed loop".into()));
                }
            }
            ArrivalModel::Open | ArrivalModel::Poisson => {
                if a.clients.is_some() {
                    return Err((
                        "arrival.clients",
                        "is for closed loops; an open loop has a rate".into(),
                    ));
                }
                match (a.rate, a.phases.is_empty()) {
                    (Some(r), true) => {
                        rate("arrival.rate", r)?;
                        if self.stop.seconds.is_none() && self.stop.requests.is_none() {
                            return Err(("stop.seconds", "is required (or stop.requests)".into()));
                        }
                    }
                    (None, false) => {
                        for ph in &a.phases {
                            seconds("arrival.phases.seconds", ph.seconds)?;
                            rate("arrival.phases.rate", ph.rate)?;
                            if let Some(r) = ph.ramp_to {
                                rate("arrival.phases.ramp_to", r)?;
                            }
                        }
                        if self.stop.seconds.is_some() {
                            return Err(("stop.seconds", "is set by the phases; leave it out".into()));
                        }
                        seconds("arrival.phases", self.phase_seconds())?;
                    }
                    (Some(_), false) => {
                        return Err(("arrival.rate", "and arrival.phases cannot both be given".into()));
                    }
                    (None, true) => {
                        return Err((
                            "arrival.rate",
                            "is required for an open loop (or arrival.phases)".into(),
                        ));
                    }
                }
            }
        }
        if let Some(s) = self.stop.seconds {
            seconds("stop.seconds", s)?;
        }
        if self.stop.requests == Some(0) {
            return Err(("stop.requests", "must be at least 1".into()));
        }
        if let Some(s) = self.stop.drain_seconds {
            seconds("stop.drain_seconds", s)?;
        }
        let (lo, hi) = self.request.faces.bounds();
        count("request.faces", lo)?;
        count("request.faces", hi)?;
        if lo > hi {
            return Err((
                "request.faces",
                format!("[{lo}, {hi}]: the first must not exceed the second"),
            ));
        }
        let id = self.request.identify;
        if !(0.0..=1.0).contains(&id) {
            return Err((
                "request.identify",
                format!("must be a fraction in [0, 1], not {id}"),
            ));
        }
        if let Some(p) = self.slo.p99_ms {
            positive("slo.p99_ms", p, MAX_SECONDS * 1e3)?;
        }
        for (field, v) in [
            ("slo.error_rate", self.slo.error_rate),
            ("slo.reject_rate", self.slo.reject_rate),
        ] {
            if let Some(v) = v {
                if !(0.0..=1.0).contains(&v) {
                    return Err((field, format!("must be a fraction in [0, 1], not {v}")));
                }
            }
        }
        let r = &self.runtime;
        if let Some(w) = r.workers {
            count("runtime.workers", w)?;
        }
        count("runtime.queue", r.queue)?;
        if let Some(b) = r.batch_max {
            count("runtime.batch_max", b)?;
        }
        if let Some(t) = r.inference_threads {
            count("runtime.inference_threads", t)?;
        }
        count("runtime.callers", r.callers)?;
        count("runtime.direct_threads", r.direct_threads)?;
        if let Some(d) = r.batch_delay_ms {
            if !(d.is_finite() && (0.0..=60_000.0).contains(&d)) {
                return Err(("runtime.batch_delay_ms", "must be in [0, 60000]".into()));
            }
        }
        let s = &self.synthetic;
        for (field, v) in [
            ("synthetic.call_ms", s.call_ms),
            ("synthetic.item_ms", s.item_ms),
            ("synthetic.prepare_ms", s.prepare_ms),
        ] {
            if !(v.is_finite() && (0.0..=60_000.0).contains(&v)) {
                return Err((field, format!("must be in [0, 60000] ms, not {v}")));
            }
        }
        count("synthetic.concurrency", s.concurrency)?;
        Ok(())
    }

    fn phase_seconds(&self) -> f64 {
        self.arrival.phases.iter().map(|p| p.seconds).sum()
    }

    /// How long a mode sends for (the phases, or `stop.seconds`; `None`
    /// when only a request count stops it).
    pub fn send_window(&self) -> Option<Duration> {
        if !self.arrival.phases.is_empty() {
            return Some(Duration::from_secs_f64(self.phase_seconds()));
        }
        self.stop.seconds.map(Duration::from_secs_f64)
    }

    /// How long answers are awaited after sending stops.
    pub fn drain(&self) -> Duration {
        Duration::from_secs_f64(self.stop.drain_seconds.unwrap_or(60.0))
    }

    /// The open-loop rate at `t` seconds into the run.
    pub fn rate_at(&self, t: f64) -> f64 {
        let a = &self.arrival;
        if a.phases.is_empty() {
            return a.rate.unwrap_or(0.0);
        }
        let mut start = 0.0;
        for ph in &a.phases {
            if t < start + ph.seconds {
                let x = (t - start) / ph.seconds;
                return match ph.ramp_to {
                    Some(end) => ph.rate + (end - ph.rate) * x,
                    None => ph.rate,
                };
            }
            start += ph.seconds;
        }
        0.0
    }

    /// One line saying how requests arrive.
    pub fn arrival_line(&self) -> String {
        let a = &self.arrival;
        let (lo, hi) = self.request.faces.bounds();
        let faces = if lo == hi {
            format!("{lo} face(s)")
        } else {
            format!("{lo}-{hi} faces")
        };
        let how = match a.model {
            ArrivalModel::Closed => format!("closed loop, {} clients", a.clients.unwrap_or(0)),
            m => {
                let kind = if m == ArrivalModel::Poisson {
                    "Poisson"
                } else {
                    "open loop"
                };
                if a.phases.is_empty() {
                    format!("{kind} at {} req/s", a.rate.unwrap_or(0.0))
                } else {
                    format!("{kind}, {} phases", a.phases.len())
                }
            }
        };
        let window = match (self.send_window(), self.stop.requests) {
            (Some(w), Some(n)) => format!("{:.0} s or {n} requests", w.as_secs_f64()),
            (Some(w), None) => format!("{:.0} s", w.as_secs_f64()),
            (None, Some(n)) => format!("{n} requests"),
            (None, None) => String::new(),
        };
        format!("{how}, {faces} per request, {window} per mode")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ramp_and_phases() {
        let p = Profile::parse(
            "t",
            "[arrival]\nmodel = 'open'\n[[arrival.phases]]\nseconds = 2\nrate = 10\nramp_to = 30\n\
             [[arrival.phases]]\nseconds = 1\nrate = 100\n",
        )
        .unwrap();
        assert_eq!(p.send_window(), Some(Duration::from_secs(3)));
        assert!((p.rate_at(0.0) - 10.0).abs() < 1e-9);
        assert!((p.rate_at(1.0) - 20.0).abs() < 1e-9);
        assert!((p.rate_at(2.5) - 100.0).abs() < 1e-9);
        assert_eq!(p.rate_at(3.5), 0.0);
    }
}
