//! The `serve` binary as a child process on a free loopback port, killed
//! on drop (for the tests that drive it as a client would).

use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The bearer token the served API takes.
pub const TOKEN: &str = "test-token-1";

/// A running `serve`.
pub struct Serve {
    pub child: Child,
    pub addr: String,
}

impl Serve {
    /// Starts `serve` with a token, a gallery in `dir` and `extra` flags;
    /// returns once it listens (ready or not: see [`wait_ready`]).
    pub fn start(dir: &Path, extra: &[&str]) -> Self {
        std::fs::write(dir.join("tokens"), format!("{TOKEN}\n")).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_serve"))
            .args(["--listen", "127.0.0.1:0", "--token-file"])
            .arg(dir.join("tokens"))
            .arg("--assets")
            .arg(super::assets())
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.join("serve.log")).unwrap())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("serve did not start: {line:?}"))
            .to_owned();
        Self { child, addr }
    }

    /// Waits until `/readyz` says 200.
    pub fn wait_ready(&self) {
        super::wait_until("serve ready", || self.status("GET", "/readyz", None) == Some(200));
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The status of one request on a new connection (`None`: no answer).
    pub fn status(&self, method: &str, path: &str, body: Option<&serde_json::Value>) -> Option<u16> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        let url = self.url(path);
        let auth = format!("Bearer {TOKEN}");
        // Compact JSON (ureq's `send_json` pretty-prints, which doubles a
        // body of many short strings).
        let json = "application/json";
        let r = match (method, body) {
            ("GET", _) => agent.get(&url).header("authorization", &auth).call(),
            ("DELETE", _) => agent.delete(&url).header("authorization", &auth).call(),
            ("PUT", Some(b)) => agent
                .put(&url)
                .header("authorization", &auth)
                .header("content-type", json)
                .send(b.to_string()),
            (_, Some(b)) => agent
                .post(&url)
                .header("authorization", &auth)
                .header("content-type", json)
                .send(b.to_string()),
            (_, None) => agent.post(&url).header("authorization", &auth).send_empty(),
        };
        match r {
            Ok(r) => Some(r.status().as_u16()),
            Err(e) => {
                eprintln!("{method} {path}: no answer: {e}");
                None
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The process's resident memory now and at its peak, bytes.
    pub fn rss(&self) -> (u64, u64) {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        let kb = |key: &str| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
                * 1024
        };
        (kb("VmRSS:"), kb("VmHWM:"))
    }

    /// Open file descriptors of the process.
    pub fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid())).map_or(0, |d| d.count())
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// Waits for the exit code (a generous bound: a hang is a failure).
    pub fn wait(&mut self) -> i32 {
        let limit = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.code().unwrap_or(-1);
            }
            assert!(Instant::now() < limit, "serve did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
