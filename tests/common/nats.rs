//! A real broker for the tests: `nats-server -js` processes (one, or a
//! cluster) on free loopback ports with temporary stores, `serve --nats`
//! processes on the real model, and a producer's helpers (async-nats).
//! `.ci/run` installs nats-server (Debian's package).

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer};
use futures_util::StreamExt;
use serde_json::Value;

pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A `nats-server -js` of the test's own, stopped on drop.
pub struct Broker {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
    /// A cluster node's flags (its name, its routes).
    cluster: Vec<String>,
}

impl Broker {
    pub fn start(dir: &Path) -> Self {
        let mut b = Broker {
            child: None,
            port: free_port(),
            dir: dir.join("js"),
            cluster: Vec::new(),
        };
        b.launch();
        b
    }

    /// A JetStream cluster of `n` nodes routed to each other on loopback;
    /// returns once every node takes connections (electing the meta leader
    /// takes a few seconds more: whoever uses it retries).
    pub fn cluster(dir: &Path, n: usize) -> Vec<Broker> {
        let routes: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let all = routes
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut nodes: Vec<Broker> = (0..n)
            .map(|i| Broker {
                child: None,
                port: free_port(),
                dir: dir.join(format!("js{i}")),
                cluster: vec![
                    "--server_name".into(),
                    format!("n{i}"),
                    "--cluster_name".into(),
                    "fleet".into(),
                    "--cluster".into(),
                    format!("nats://127.0.0.1:{}", routes[i]),
                    "--routes".into(),
                    all.clone(),
                ],
            })
            .collect();
        for b in &mut nodes {
            b.launch();
        }
        nodes
    }

    fn launch(&mut self) {
        let child = Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &self.port.to_string(), "-sd"])
            .arg(&self.dir)
            .args(&self.cluster)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server (Debian's package nats-server; .ci/run installs it)");
        self.child = Some(child);
        let t0 = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "nats-server did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops it (SIGTERM: it syncs its store) and starts it again on the
    /// same port and store.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            signal(c.id(), "TERM");
            let _ = c.wait();
        }
    }

    /// Kills it (SIGKILL: a crash).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            signal(c.id(), "KILL");
            let _ = c.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

/// A `serve --nats` consumer process, killed on drop.
pub struct Consumer {
    child: Option<Child>,
    pub addr: String,
    pub log: PathBuf,
}

impl Consumer {
    /// A consumer with a gallery file of its own, `DIR/NAME.fpi`.
    pub fn start(dir: &Path, name: &str, url: &str, extra: &[&str]) -> Self {
        let index = dir.join(format!("{name}.fpi"));
        let index = index.to_str().unwrap();
        let mut args = vec!["--index", index];
        args.extend_from_slice(extra);
        Self::spawn(dir, name, url, &args)
    }

    /// A node of a fleet: its gallery is the broker's (`--gallery nats`,
    /// the default without `--index`); returns once its replica has caught
    /// up and it consumes jobs.
    pub fn node(dir: &Path, name: &str, url: &str, extra: &[&str]) -> Self {
        Self::spawn(dir, name, url, extra)
    }

    fn spawn(dir: &Path, name: &str, url: &str, extra: &[&str]) -> Self {
        let log = dir.join(format!("{name}.log"));
        let mut child = Command::new(env!("CARGO_BIN_EXE_serve"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--no-auth",
                "--nats",
                url,
                "--threads",
                "1",
            ])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line.trim().trim_start_matches("listening on ").to_owned();
        let c = Consumer {
            child: Some(child),
            addr,
            log,
        };
        c.wait_log("nats: consuming jobs");
        c
    }

    pub fn wait_log(&self, needle: &str) {
        let t0 = Instant::now();
        loop {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            if text.contains(needle) {
                return;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(120),
                "no {needle:?} in the consumer's log:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// One request to its HTTP API: the status and the JSON answer, or the
    /// text as a JSON string (`None`: no answer at all).
    pub fn http(&self, method: &str, path: &str, body: Option<&Value>) -> Option<(u16, Value)> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        let url = format!("http://{}{path}", self.addr);
        let r = match (method, body) {
            ("GET", _) => agent.get(&url).call(),
            ("DELETE", _) => agent.delete(&url).call(),
            ("PUT", Some(b)) => agent
                .put(&url)
                .header("content-type", "application/json")
                .send(b.to_string()),
            (_, Some(b)) => agent
                .post(&url)
                .header("content-type", "application/json")
                .send(b.to_string()),
            (_, None) => agent.post(&url).send_empty(),
        };
        let mut r = r.ok()?;
        let status = r.status().as_u16();
        let text = r.body_mut().read_to_string().unwrap_or_default();
        // Not JSON (the metrics): the text as a string.
        Some((status, serde_json::from_str(&text).unwrap_or(Value::String(text))))
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            signal(c.id(), "KILL");
            let _ = c.wait();
        }
    }

    /// SIGTERM, then the exit code.
    pub fn terminate(&mut self) -> i32 {
        let mut c = self.child.take().unwrap();
        signal(c.id(), "TERM");
        c.wait().unwrap().code().unwrap_or(-1)
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

pub async fn connect(url: &str) -> jetstream::Context {
    let client = async_nats::ConnectOptions::new()
        .max_reconnects(None)
        .connect(facepool::gallery::servers(url))
        .await
        .unwrap();
    jetstream::new(client)
}

/// Publishes a job (its id as the dedup id), retrying while the broker
/// is away.
pub async fn publish(js: &jetstream::Context, job: &Value) {
    let id = job["id"].as_str().unwrap_or("x").to_owned();
    publish_raw(js, &id, serde_json::to_vec(job).unwrap()).await;
}

pub async fn publish_raw(js: &jetstream::Context, id: &str, body: Vec<u8>) {
    for _ in 0..200 {
        let mut h = async_nats::HeaderMap::new();
        h.insert("Nats-Msg-Id", id);
        if let Ok(ack) = js
            .publish_with_headers("facepool.jobs", h, body.clone().into())
            .await
        {
            if ack.await.is_ok() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("cannot publish job {id}");
}

/// Every message of a stream so far, by subject (read with an ephemeral
/// ordered consumer from the start).
pub async fn all_messages(js: &jetstream::Context, name: &str) -> Vec<(String, Value)> {
    let mut s = js.get_stream(name).await.unwrap();
    let n = s.info().await.unwrap().state.messages as usize;
    let mut out = Vec::with_capacity(n);
    if n == 0 {
        return out;
    }
    let c = s
        .create_consumer(consumer::pull::OrderedConfig {
            deliver_policy: consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut m = c.messages().await.unwrap();
    while out.len() < n {
        let next = tokio::time::timeout(Duration::from_secs(10), m.next()).await;
        let Ok(Some(Ok(msg))) = next else { break };
        out.push((
            msg.subject.to_string(),
            serde_json::from_slice(&msg.payload).unwrap_or(Value::Null),
        ));
    }
    out
}

pub async fn count(js: &jetstream::Context, name: &str) -> u64 {
    match js.get_stream(name).await {
        Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(0),
        Err(_) => 0,
    }
}

/// Waits until the stream holds `n` messages.
pub async fn wait_count(js: &jetstream::Context, name: &str, n: u64, within: Duration) {
    let t0 = Instant::now();
    loop {
        let got = count(js, name).await;
        if got >= n {
            return;
        }
        assert!(
            t0.elapsed() < within,
            "{name}: {got} of {n} messages after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Results by job id (the results stream drops a duplicate publish, so a
/// job with two results would show here as two messages).
pub fn by_id(results: &[(String, Value)]) -> HashMap<String, Vec<Value>> {
    let mut m: HashMap<String, Vec<Value>> = HashMap::new();
    for (_, v) in results {
        m.entry(v["id"].as_str().unwrap_or("").to_owned())
            .or_default()
            .push(v.clone());
    }
    m
}
