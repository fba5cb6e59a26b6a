//! The web console in a real browser: Debian's headless Chromium driven
//! over WebDriver (`chromedriver`, started here on a free loopback port;
//! the test command installs both) against the `serve` binary on the
//! real models. Verify, identify, the gallery, the live numbers under
//! load, a wrong token, a photo with no face, a phone-sized window; no
//! error in the browser's console beyond the refusals the test asks for.
//! Screenshots go to `$FACEPOOL_SCREENSHOTS` (default: the target's tmp
//! folder), and `docs/console.md` shows them.
#![cfg(feature = "serve")]

use crate::common;

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::serve::{Serve, TOKEN};
use common::{b64_file, photos_of, TempDir};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

/// `chromedriver` on a free loopback port, in a process group of its own
/// that is killed on drop (the browsers it started with it, even when a
/// failed test never closed its session).
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    fn start(dir: &Path) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        let exe = std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".to_owned());
        let child = Command::new(&exe)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("chromedriver.log")).unwrap())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {exe} ({e}): the console tests need chromium and chromium-driver (scripts/test.sh installs them)")
            });
        let url = format!("http://127.0.0.1:{port}");
        let status = format!("{url}/status");
        common::wait_until("chromedriver listening", || ureq::get(&status).call().is_ok());
        Self { child, url }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Threads sending verifies to `url` until stopped or dropped.
struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<u32>>,
}

impl Load {
    fn start(url: String, body: Value, threads: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..threads)
            .map(|_| {
                let (stop, body, url) = (stop.clone(), body.to_string(), url.clone());
                std::thread::spawn(move || {
                    let agent: ureq::Agent = ureq::Agent::config_builder()
                        .http_status_as_error(false)
                        .build()
                        .into();
                    let mut answered = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let r = agent
                            .post(&url)
                            .header("authorization", &format!("Bearer {TOKEN}"))
                            .header("content-type", "application/json")
                            .send(&body);
                        match r {
                            Ok(r) if r.status().is_success() => answered += 1,
                            Ok(_) => {}
                            // The server is gone: stop.
                            Err(_) => break,
                        }
                    }
                    answered
                })
            })
            .collect();
        Self { stop, threads }
    }

    /// Stops the threads: the requests answered.
    fn stop(mut self) -> u32 {
        self.stop.store(true, Ordering::Relaxed);
        self.threads.drain(..).map(|t| t.join().unwrap_or(0)).sum()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A headless Chromium session; its profile in `dir`.
async fn browser(driver: &Driver, dir: &Path) -> Client {
    let profile = dir.join("profile");
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({ "args": [
            "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--window-size=1280,1000", "--no-first-run", "--disable-extensions",
            format!("--user-data-dir={}", profile.display()),
        ]}),
    );
    caps.insert("goog:loggingPrefs".into(), json!({ "browser": "ALL" }));
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .unwrap_or_else(|e| panic!("no browser session: {e}"))
}

/// chromedriver's browser log (`/se/log`): what the page's console shows.
#[derive(Debug)]
struct BrowserLog;

impl fantoccini::wd::WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(&self, base: &url::Url, session: Option<&str>) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/se/log", session.unwrap_or_default()))
    }
    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(r#"{"type":"browser"}"#.to_owned()))
    }
}

async fn browser_log(c: &Client) -> Vec<Value> {
    match c.issue_cmd(BrowserLog).await.unwrap() {
        Value::Array(v) => v,
        other => panic!("not a log: {other}"),
    }
}

/// Waits (bounded: a hang is a failure) until the text of `css` passes
/// `ok`, and returns it.
async fn wait_text(c: &Client, css: &str, ok: impl Fn(&str) -> bool) -> String {
    let limit = Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    loop {
        if let Ok(e) = c.find(Locator::Css(css)).await {
            if let Ok(t) = e.text().await {
                if ok(&t) {
                    return t;
                }
                last = t;
            }
        }
        assert!(
            Instant::now() < limit,
            "timed out waiting on {css}; its text: {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits (bounded) until `css` matches `n` elements (boxes are drawn once
/// the photos are decoded, after the answer is shown).
async fn wait_count(c: &Client, css: &str, n: usize) {
    let limit = Instant::now() + Duration::from_secs(60);
    loop {
        let found = c.find_all(Locator::Css(css)).await.map_or(0, |v| v.len());
        if found == n {
            return;
        }
        assert!(
            Instant::now() < limit,
            "timed out waiting for {n} of {css}; found {found}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn set(c: &Client, css: &str, text: &str) {
    let e = c.find(Locator::Css(css)).await.unwrap();
    e.clear().await.unwrap();
    if !text.is_empty() {
        e.send_keys(text).await.unwrap();
    }
}

async fn pick(c: &Client, id: &str, files: &[PathBuf]) {
    let paths: Vec<String> = files
        .iter()
        .map(|p| p.canonicalize().unwrap().display().to_string())
        .collect();
    let e = c.find(Locator::Id(id)).await.unwrap();
    e.send_keys(&paths.join("\n")).await.unwrap();
}

async fn click(c: &Client, css: &str) {
    c.find(Locator::Css(css)).await.unwrap().click().await.unwrap();
}

async fn js(c: &Client, script: &str) -> Value {
    c.execute(script, vec![]).await.unwrap()
}

fn shots() -> PathBuf {
    let d = std::env::var_os("FACEPOOL_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_TARGET_TMPDIR")).join("console"));
    std::fs::create_dir_all(&d).unwrap();
    d
}

async fn screenshot(c: &Client, name: &str) {
    let png = c.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a screenshot is a PNG");
    std::fs::write(shots().join(name), png).unwrap();
}

/// The ids the console promises (docs/console.md).
const STABLE_IDS: [&str; 14] = [
    "token",
    "image1",
    "image2",
    "verify",
    "similarity",
    "verdict",
    "identify-image",
    "identify",
    "matches",
    "people",
    "add-person",
    "live-rps",
    "live-p99",
    "live-workers",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_in_a_browser() {
    let dir = TempDir::new("console");
    // `--faces detect`: the labelled photos are small and square, which
    // `auto` would take as aligned chips; detected faces have boxes.
    let serve = Serve::start(
        dir.path(),
        &[
            "--faces",
            "detect",
            "--max-body",
            "1000000",
            "--max-image-bytes",
            "200000",
        ],
    );
    serve.wait_ready();
    let blank = dir.path().join("blank.png");
    image::RgbImage::from_pixel(240, 240, image::Rgb([128, 128, 128]))
        .save(&blank)
        .unwrap();
    // Over the server's file limit, under its body limit; and over both.
    let big = dir.path().join("big.jpg");
    std::fs::write(&big, vec![0u8; 250_000]).unwrap();
    let huge = dir.path().join("huge.jpg");
    std::fs::write(&huge, vec![0u8; 1_100_000]).unwrap();

    let driver = Driver::start(dir.path());
    let c = browser(&driver, dir.path()).await;
    c.goto(&serve.url("/")).await.unwrap();
    assert_eq!(c.title().await.unwrap(), "facepool console");
    for id in STABLE_IDS {
        c.find(Locator::Id(id))
            .await
            .unwrap_or_else(|e| panic!("#{id} is missing: {e}"));
    }
    // Every form control is labelled.
    let unlabelled = js(
        &c,
        "return [...document.querySelectorAll('input, select, textarea')]
            .filter(e => !e.labels.length && !e.getAttribute('aria-label')).map(e => e.id);",
    )
    .await;
    assert_eq!(unlabelled, json!([]), "inputs without a label");

    // The token, then the server's line.
    set(&c, "#token", TOKEN).await;
    click(&c, "#token-use").await;
    let line = wait_text(&c, "#server", |t| t.contains("threshold")).await;
    assert!(line.contains("gallery") && !line.contains('/'), "{line}");

    // Verify: two photos of one person, drawn with their boxes.
    let salley = photos_of("John_Salley");
    let savage = photos_of("John_Savage");
    let simm = photos_of("John_Simm");
    pick(&c, "image1", &salley[..1]).await;
    pick(&c, "image2", &salley[1..2]).await;
    click(&c, "#verify").await;
    let verdict = wait_text(&c, "#verdict", |t| t != "–").await;
    assert_eq!(verdict, "Same person");
    let similarity: f32 = c
        .find(Locator::Id("similarity"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
        .parse()
        .unwrap();
    let threshold = js(&c, "return document.getElementById('threshold').textContent;").await;
    let threshold: f32 = threshold
        .as_str()
        .and_then(|t| t.strip_prefix("threshold "))
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("threshold shown: {threshold}"));
    assert!(similarity >= threshold, "{similarity} < {threshold}");
    for id in ["image1", "image2"] {
        wait_count(&c, &format!("#{id}-photo .box"), 1).await;
        // The box lies inside its photo.
        let inside = js(
            &c,
            &format!(
                "const f = document.querySelector('#{id}-photo .frame').getBoundingClientRect();
                 const b = document.querySelector('#{id}-photo .box').getBoundingClientRect();
                 return b.width > 10 && b.left >= f.left - 1 && b.right <= f.right + 1
                     && b.top >= f.top - 1 && b.bottom <= f.bottom + 1;"
            ),
        )
        .await;
        assert_eq!(inside, json!(true), "the box on {id} is inside the photo");
    }
    screenshot(&c, "verify.png").await;

    // Two people, the button pressed from the keyboard.
    pick(&c, "image2", &savage[..1]).await;
    c.find(Locator::Id("verify"))
        .await
        .unwrap()
        .send_keys(&fantoccini::key::Key::Enter.to_string())
        .await
        .unwrap();
    let verdict = wait_text(&c, "#verdict", |t| t != "–" && t != "Same person").await;
    assert_eq!(verdict, "Different people");

    // A photo with no face: the API's own error.
    pick(&c, "image2", std::slice::from_ref(&blank)).await;
    click(&c, "#verify").await;
    let err = wait_text(&c, "#verify-error", |t| !t.is_empty()).await;
    assert!(err.starts_with("422 no_face"), "{err}");
    assert_eq!(
        c.find(Locator::Id("verdict"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "–"
    );
    // A file larger than the server takes: its refusal.
    pick(&c, "image2", std::slice::from_ref(&big)).await;
    click(&c, "#verify").await;
    let err = wait_text(&c, "#verify-error", |t| t.contains("image_too_large")).await;
    assert!(err.starts_with("422 image_too_large: image 2"), "{err}");
    // Larger than a request may be: not sent, with the server's limit.
    pick(&c, "image2", std::slice::from_ref(&huge)).await;
    click(&c, "#verify").await;
    let err = wait_text(&c, "#verify-error", |t| t.starts_with("Not sent")).await;
    assert!(err.contains("(1.0 MB, serve --max-body)"), "{err}");

    // The gallery: add two people, one with two photos.
    set(&c, "#person-id", "John_Simm").await;
    set(&c, "#person-meta", "actor").await;
    pick(&c, "person-images", &simm[..2]).await;
    click(&c, "#add-person").await;
    wait_text(&c, "#person-status", |t| t == "John_Simm has 2 faces.").await;
    set(&c, "#person-id", "John_Salley").await;
    set(&c, "#person-meta", "").await;
    pick(&c, "person-images", &salley[..1]).await;
    click(&c, "#add-person").await;
    wait_text(&c, "#person-status", |t| t == "John_Salley has 1 face.").await;
    let rows = wait_text(&c, "#people tbody", |t| {
        t.contains("John_Salley") && t.contains("John_Simm")
    })
    .await;
    assert!(rows.contains("actor"), "{rows}");
    // Faces added to a person from its row.
    click(&c, "button[aria-label='Add faces to John_Salley']").await;
    let id = c
        .find(Locator::Id("person-id"))
        .await
        .unwrap()
        .prop("value")
        .await
        .unwrap();
    assert_eq!(id.as_deref(), Some("John_Salley"));
    pick(&c, "person-images", &salley[2..3]).await;
    click(&c, "#add-person").await;
    wait_text(&c, "#person-status", |t| t == "John_Salley has 2 faces.").await;
    // Search by id.
    set(&c, "#people-search", "simm").await;
    wait_text(&c, "#people tbody", |t| {
        t.contains("John_Simm") && !t.contains("John_Salley")
    })
    .await;
    wait_text(&c, "#people-page", |t| t == "1–1 of 1").await;
    // (A space: typing fires the page's search; the id is trimmed.)
    set(&c, "#people-search", " ").await;
    wait_text(&c, "#people-page", |t| t == "1–2 of 2").await;

    // Identify a photo of an enrolled person not used to enroll them.
    pick(&c, "identify-image", &simm[3..4]).await;
    click(&c, "#identify").await;
    let first = wait_text(&c, "#matches li", |t| !t.is_empty()).await;
    assert!(first.starts_with("John_Simm · "), "{first}");
    assert!(first.ends_with("· actor"), "{first}");
    let best = c
        .find(Locator::Id("identify-best"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(best.starts_with("John_Simm ("), "{best}");
    wait_count(&c, "#identify-image-photo .box", 1).await;
    js(
        &c,
        "document.getElementById('identify-image').closest('.card').scrollIntoView();",
    )
    .await;
    screenshot(&c, "identify.png").await;

    // Remove a person: gone from the page and from the API.
    click(&c, "button[aria-label='Remove John_Salley']").await;
    wait_text(&c, "#person-status", |t| t == "Removed John_Salley (2 faces).").await;
    wait_text(&c, "#people tbody", |t| !t.contains("John_Salley")).await;
    assert_eq!(serve.status("GET", "/v1/people/John_Salley", None), Some(404));
    js(&c, "document.getElementById('gallery').scrollIntoView();").await;
    screenshot(&c, "gallery.png").await;

    // Live: the numbers move while a load runs.
    js(&c, "document.getElementById('live').scrollIntoView();").await;
    wait_text(&c, "#live-workers", |t| t.contains(" / ")).await;
    wait_text(&c, "#live-rps", |t| t == "0.0").await;
    let body = json!({ "image1": b64_file(&simm[0]), "image2": b64_file(&simm[1]) });
    let load = Load::start(serve.url("/v1/verify"), body, 4);
    let rps = wait_text(&c, "#live-rps", |t| t.parse::<f64>().is_ok_and(|v| v >= 1.0)).await;
    let ms = |t: &str| t.strip_suffix(" ms").and_then(|v| v.parse::<f64>().ok());
    let p99 = wait_text(&c, "#live-p99", |t| ms(t).is_some_and(|v| v > 0.0)).await;
    let batch = wait_text(&c, "#live-batch", |t| t.contains(" of ") && !t.starts_with('–')).await;
    // A later reading differs: the page keeps updating without a reload.
    let chart = js(
        &c,
        "return document.querySelectorAll('#chart-rps polyline').length;",
    )
    .await;
    assert!(
        chart.as_u64().is_some_and(|n| n >= 1),
        "the requests chart has a line: {chart}"
    );
    let before = js(&c, "return document.getElementById('chart-rps').innerHTML;").await;
    let limit = Instant::now() + Duration::from_secs(30);
    while js(&c, "return document.getElementById('chart-rps').innerHTML;").await == before {
        assert!(Instant::now() < limit, "the chart did not change");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    screenshot(&c, "live.png").await;
    let answered = load.stop();
    assert!(answered > 0);
    eprintln!("live under load: {rps} requests/s, p99 {p99}, batch {batch}; {answered} answered");

    // A phone-sized window: nothing wider than the screen.
    c.set_window_size(390, 844).await.unwrap();
    js(&c, "window.scrollTo(0, 0);").await;
    let overflow = js(
        &c,
        "const w = document.documentElement.clientWidth;
         return [...document.querySelectorAll('body *')]
            .filter(e => e.getBoundingClientRect().right > w + 0.5)
            .map(e => e.tagName + '#' + e.id + '.' + e.className);",
    )
    .await;
    assert_eq!(overflow, json!([]), "wider than a phone's screen");
    screenshot(&c, "phone.png").await;
    c.set_window_size(1280, 1000).await.unwrap();

    // A wrong token: the API's refusal, shown.
    set(&c, "#token", "not-the-token").await;
    click(&c, "#token-use").await;
    let line = wait_text(&c, "#server", |t| t.starts_with("403")).await;
    assert!(
        line.contains("forbidden") && line.contains("Check the API token"),
        "{line}"
    );

    // The browser's console: only the refusals asked for above (a photo
    // with no face: 422; the wrong token: 403).
    let log = browser_log(&c).await;
    let unexpected: Vec<&Value> = log
        .iter()
        .filter(|e| e["level"] == "SEVERE" || e["level"] == "WARNING")
        .filter(|e| {
            let m = e["message"].as_str().unwrap_or("");
            let asked = (m.contains("/v1/verify") && m.contains("status of 422"))
                || (m.contains("/v1/") && m.contains("status of 403"));
            !(e["source"] == "network" && asked)
        })
        .collect();
    assert!(
        unexpected.is_empty(),
        "errors in the browser console: {unexpected:#?}"
    );
    c.close().await.unwrap();
}

/// The console's answers carry their policy; `--no-console` leaves only the
/// API (no browser needed).
#[test]
fn the_console_is_served_with_a_strict_policy_and_can_be_turned_off() {
    let dir = TempDir::new("console-off");
    let on = Serve::start(dir.path(), &[]);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    for (path, kind) in [
        ("/", "text/html"),
        ("/console/console.js", "text/javascript"),
        ("/console/console.css", "text/css"),
        ("/console/icon.svg", "image/svg+xml"),
    ] {
        let r = agent.get(&on.url(path)).call().unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let h = |n: &str| {
            r.headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned()
        };
        assert!(
            h("content-type").starts_with(kind),
            "{path}: {}",
            h("content-type")
        );
        let csp = h("content-security-policy");
        assert!(
            csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
            "{csp}"
        );
        assert!(!csp.contains("unsafe"), "{csp}");
        assert_eq!(h("x-content-type-options"), "nosniff");
        assert_eq!(h("x-frame-options"), "DENY");
    }
    // The page holds no data: open without a token, while the API is not.
    let r = agent.get(&on.url("/v1/info")).call().unwrap();
    assert_eq!(r.status(), 401);
    drop(on);

    let off = Serve::start(dir.path(), &["--no-console"]);
    for path in ["/", "/console/console.js"] {
        let r = agent.get(&off.url(path)).call().unwrap();
        assert_eq!(r.status(), 404, "{path} with --no-console");
    }
    let r = agent.get(&off.url("/openapi.json")).call().unwrap();
    assert_eq!(r.status(), 200);
}
