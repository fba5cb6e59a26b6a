//! A running HTTP service as the target: `loadgen --target http://HOST:PORT`
//! sends each request of the profile to facepool's `serve` (or to any
//! service with the same `/v1/verify` shape, such as the Python peer under
//! `benches/peers/`) and counts its answers as the in-process modes do:
//! 200 answered, 429 refused, anything else failed with its status and
//! error code.
//!
//! A request of one face is `POST /v1/embed`, of two `POST /v1/verify`, of
//! more `POST /v1/verify/batch` (the first against the rest); an identify
//! request is one `POST /v1/identify` per face. Bodies are JSON with the
//! photos base64-encoded once, at load; the profile draws the photos of
//! each request at random from the set, so consecutive bodies differ.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;

use crate::backend::{Outcome, Photos, Request, Target};
use crate::profile::Profile;

/// Connections kept open per host: one per client, so a closed loop of
/// this many clients reuses its connections instead of opening new ones.
const IDLE_CONNECTIONS: usize = 512;

/// A target `[LABEL=]URL`.
#[derive(Debug, Clone)]
pub struct TargetSpec {
    pub label: String,
    pub url: String,
}

impl std::str::FromStr for TargetSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (label, url) = match s.split_once('=') {
            Some((l, u)) if !l.contains("://") => (l.trim().to_owned(), u.trim()),
            _ => (
                if s.trim().starts_with("nats://") {
                    "nats"
                } else {
                    "http"
                }
                .to_owned(),
                s.trim(),
            ),
        };
        let url = url.trim_end_matches('/');
        if !["http://", "https://", "nats://"]
            .iter()
            .any(|p| url.starts_with(p))
        {
            return Err(format!(
                "a target is [LABEL=]http://HOST:PORT or [LABEL=]nats://HOST:PORT, not {s:?}"
            ));
        }
        if label.is_empty() || label.contains(char::is_whitespace) {
            return Err(format!("a target's label is one word, not {label:?}"));
        }
        Ok(Self {
            label,
            url: url.to_owned(),
        })
    }
}

/// A process whose memory is sampled during a target's run: `[LABEL=]PID`.
#[derive(Debug, Clone)]
pub struct PidSpec {
    pub label: Option<String>,
    pub pid: u32,
}

impl std::str::FromStr for PidSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (label, pid) = match s.split_once('=') {
            Some((l, p)) => (Some(l.trim().to_owned()), p.trim()),
            None => (None, s.trim()),
        };
        let pid = pid
            .parse()
            .map_err(|_| format!("a process is [LABEL=]PID, not {s:?}"))?;
        Ok(Self { label, pid })
    }
}

pub struct Http {
    agent: ureq::Agent,
    base: String,
    auth: Option<String>,
    bodies: Arc<Vec<String>>,
}

/// Each photo base64-encoded, once, shared by every target of the run.
pub fn encode(photos: &Photos) -> Arc<Vec<String>> {
    let b64 = base64::engine::general_purpose::STANDARD;
    Arc::new(photos.bytes.iter().map(|b| b64.encode(b)).collect())
}

impl Http {
    pub fn new(spec: &TargetSpec, token: Option<&str>, bodies: Arc<Vec<String>>, profile: &Profile) -> Self {
        // Timeouts per phase, none on resolving: with one, ureq resolves
        // on a thread of its own, one per request (a host name is resolved
        // by the system, as any client does). The answer may wait for the
        // whole drain; past that it is counted as unanswered anyway.
        let (phase, timeout) = (Duration::from_secs(10), profile.drain() + Duration::from_secs(30));
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(phase))
            .timeout_send_request(Some(phase))
            .timeout_send_body(Some(phase))
            .timeout_recv_response(Some(timeout))
            .timeout_recv_body(Some(phase))
            .max_idle_connections(IDLE_CONNECTIONS)
            .max_idle_connections_per_host(IDLE_CONNECTIONS)
            .user_agent("facepool-loadgen")
            .build()
            .new_agent();
        Self {
            agent,
            base: spec.url.clone(),
            auth: token.map(|t| format!("Bearer {t}")),
            bodies,
        }
    }

    /// Checks the service answers `/livez`, before a run counts anything.
    pub fn probe(&self) -> Result<(), String> {
        let url = format!("{}/livez", self.base);
        match self.agent.get(&url).call() {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(format!("{url}: HTTP {}", r.status().as_u16())),
            Err(e) => Err(format!("{url}: {e}")),
        }
    }

    fn body(&self, i: usize) -> Result<&str, Outcome> {
        self.bodies
            .get(i)
            .map(String::as_str)
            .ok_or_else(|| Outcome::Failed("no such photo".into()))
    }

    fn post(&self, path: &str, body: String) -> Outcome {
        let mut req = self
            .agent
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json");
        if let Some(a) = &self.auth {
            req = req.header("authorization", a);
        }
        let mut resp = match req.send(body) {
            Ok(r) => r,
            Err(e) => return Outcome::Failed(format!("{path}: {e}")),
        };
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(std::time::Duration::from_secs);
        // Read the whole answer, so the connection is reused.
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        match status {
            200 => Outcome::Done,
            429 => Outcome::Rejected(retry_after),
            s => Outcome::Failed(format!("{path}: HTTP {s} {}", error_code(&text))),
        }
    }

    fn serve(&self, req: &Request) -> Result<Outcome, Outcome> {
        let images = &req.images;
        if req.identify {
            for &i in images {
                let o = self.post(
                    "/v1/identify",
                    format!(r#"{{"image":"{}","k":1}}"#, self.body(i)?),
                );
                if o != Outcome::Done {
                    return Ok(o);
                }
            }
            return Ok(Outcome::Done);
        }
        Ok(match images.as_slice() {
            [] => Outcome::Failed("no faces".into()),
            [a] => self.post("/v1/embed", format!(r#"{{"image":"{}"}}"#, self.body(*a)?)),
            [a, b] => self.post(
                "/v1/verify",
                format!(
                    r#"{{"image1":"{}","image2":"{}"}}"#,
                    self.body(*a)?,
                    self.body(*b)?
                ),
            ),
            [source, rest @ ..] => {
                let mut targets = Vec::with_capacity(rest.len());
                for &t in rest {
                    targets.push(format!("\"{}\"", self.body(t)?));
                }
                self.post(
                    "/v1/verify/batch",
                    format!(
                        r#"{{"source":"{}","targets":[{}]}}"#,
                        self.body(*source)?,
                        targets.join(",")
                    ),
                )
            }
        })
    }
}

/// The `error.code` of a JSON error answer, else a piece of the text.
fn error_code(text: &str) -> String {
    serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|v| v["error"]["code"].as_str().map(str::to_owned))
        .unwrap_or_else(|| text.chars().take(80).collect())
}

impl Target for Http {
    fn call(&self, req: &Request) -> Outcome {
        self.serve(req).unwrap_or_else(|o| o)
    }
    /// An HTTP service does not say how it batched.
    fn mean_batch(&self) -> Option<f64> {
        None
    }
}

/// The resident memory of a process and all its descendants, in MiB (a
/// Python service with `--workers` is several processes); 0 when it is
/// gone.
pub fn rss_tree_mb(pid: u32) -> f64 {
    let mut total_pages = 0.0;
    let mut stack = vec![pid];
    let mut seen = 0;
    while let Some(p) = stack.pop() {
        seen += 1;
        if seen > 4096 {
            break;
        }
        let dir = Path::new("/proc").join(p.to_string());
        if let Some(pages) = std::fs::read_to_string(dir.join("statm"))
            .ok()
            .and_then(|s| s.split_whitespace().nth(1).and_then(|v| v.parse::<f64>().ok()))
        {
            total_pages += pages;
        }
        let Ok(tasks) = std::fs::read_dir(dir.join("task")) else {
            continue;
        };
        for t in tasks.flatten() {
            if let Ok(children) = std::fs::read_to_string(t.path().join("children")) {
                stack.extend(children.split_whitespace().filter_map(|c| c.parse::<u32>().ok()));
            }
        }
    }
    total_pages * 4096.0 / (1024.0 * 1024.0)
}
