//! The HTTP API end to end on the real models: a server on `127.0.0.1:0`
//! (in-process, or the `serve` binary as a child process) and HTTP
//! requests to it. Every route, the error statuses, 429, 504, a client
//! that disconnects, SIGTERM's drain and the gallery across a restart.
#![cfg(feature = "serve")]

use crate::common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{assets, b64_file, photos_of, wait_until, TempDir};
use facepool::server::{App, ServerConfig};
use facepool::service::{FaceConfig, FaceService};
use serde_json::{json, Value};

use common::serve::{Serve, TOKEN};

/// A server running in this process, on its own runtime thread.
struct InProc {
    addr: SocketAddr,
    app: App,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl InProc {
    /// A server with `config`, ready with a service built from the assets
    /// (changed by `tweak`); `None`: never made ready.
    fn start(config: ServerConfig, tweak: Option<&dyn Fn(&mut FaceConfig)>) -> Self {
        let app = App::new(config);
        if let Some(tweak) = tweak {
            let mut c = FaceConfig::from_assets(&assets());
            tweak(&mut c);
            let svc = FaceService::start(c).expect("the service starts");
            app.ready(svc).expect("ready once");
        }
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let addr = std_listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let router = app.router();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
                axum::serve(listener, router)
                    .with_graceful_shutdown(async move {
                        let _ = rx.await;
                    })
                    .await
                    .unwrap();
            });
        });
        Self {
            addr,
            app,
            stop: Some(tx),
            thread: Some(thread),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for InProc {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Some(svc) = self.app.service() {
            svc.shutdown(Duration::from_secs(10));
        }
    }
}

fn config() -> ServerConfig {
    ServerConfig {
        tokens: vec![TOKEN.to_owned(), "another".to_owned()],
        ..ServerConfig::default()
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into()
}

/// An HTTP answer: status, headers we look at, body.
struct Answer {
    status: u16,
    retry_after: Option<String>,
    content_type: String,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    /// The error code of a JSON error answer.
    fn code(&self) -> String {
        self.json()["error"]["code"].as_str().unwrap_or("").to_owned()
    }
}

fn answer(r: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Answer {
    let mut r = r.unwrap_or_else(|e| panic!("request failed: {e}"));
    let h = |n: &str| {
        r.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let (retry_after, content_type) = (h("retry-after"), h("content-type").unwrap_or_default());
    Answer {
        status: r.status().as_u16(),
        retry_after,
        content_type,
        body: r.body_mut().read_to_string().unwrap_or_default(),
    }
}

fn get(url: &str, token: Option<&str>) -> Answer {
    let mut req = agent().get(url);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    answer(req.call())
}

fn send(method: &str, url: &str, token: Option<&str>, body: Value, headers: &[(&str, &str)]) -> Answer {
    let a = agent();
    let mut req = match method {
        "PUT" => a.put(url),
        _ => a.post(url),
    }
    .header("content-type", "application/json");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    answer(req.send(body.to_string()))
}

/// POSTs `body` as it is, with the token.
fn send_raw(url: &str, body: &[u8]) -> Answer {
    answer(
        agent()
            .post(url)
            .header("authorization", format!("Bearer {TOKEN}"))
            .header("content-type", "application/json")
            .send(body),
    )
}

/// Sends the head of a POST of `len` bytes with `Expect: 100-continue` and
/// no body; returns what the server says first (within 10 s).
fn expect_continue(url: &str, len: usize) -> String {
    use std::io::Read;
    let rest = url.trim_start_matches("http://");
    let (host, path) = rest.split_at(rest.find('/').unwrap());
    let mut c = TcpStream::connect(host).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        c,
        "POST {path} HTTP/1.1\r\nhost: {host}\r\nauthorization: Bearer {TOKEN}\r\n\
         content-type: application/json\r\ncontent-length: {len}\r\nexpect: 100-continue\r\n\r\n"
    )
    .unwrap();
    let mut buf = [0u8; 4096];
    let n = c.read(&mut buf).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

fn post(url: &str, body: Value) -> Answer {
    send("POST", url, Some(TOKEN), body, &[])
}

fn photo(person: &str, n: usize) -> PathBuf {
    photos_of(person)[n].clone()
}

/// A multipart/form-data body of (field, bytes) parts.
fn multipart(parts: &[(&str, Vec<u8>)]) -> (String, Vec<u8>) {
    let boundary = "facepool-test-boundary-7d31";
    let mut body = Vec::new();
    for (name, bytes) in parts {
        write!(
            body,
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{name}.jpg\"\r\nContent-Type: application/octet-stream\r\n\r\n"
        )
        .unwrap();
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    write!(body, "--{boundary}--\r\n").unwrap();
    (format!("multipart/form-data; boundary={boundary}"), body)
}

fn send_multipart(method: &str, url: &str, parts: &[(&str, Vec<u8>)]) -> Answer {
    let (ct, body) = multipart(parts);
    let a = agent();
    let req = match method {
        "PUT" => a.put(url),
        _ => a.post(url),
    };
    answer(
        req.header("content-type", ct)
            .header("authorization", format!("Bearer {TOKEN}"))
            .send(&body[..]),
    )
}

/// Checks OpenMetrics/Prometheus text: comments, then `name{labels} value`
/// samples with parseable values, and the `# EOF` end.
fn check_prometheus_text(text: &str) -> usize {
    let mut samples = 0;
    let mut lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.pop(), Some("# EOF"), "ends with # EOF");
    for l in lines {
        if let Some(c) = l.strip_prefix("# ") {
            assert!(
                c.starts_with("HELP ") || c.starts_with("TYPE ") || c.starts_with("UNIT "),
                "{l}"
            );
            continue;
        }
        let (series, value) = l.rsplit_once(' ').unwrap_or_else(|| panic!("no value: {l}"));
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "{l}"
        );
        if name_end < series.len() {
            assert!(series.ends_with('}'), "{l}");
        }
        assert!(
            value == "+Inf" || value == "NaN" || value.parse::<f64>().is_ok(),
            "{l}"
        );
        samples += 1;
    }
    samples
}

#[test]
fn every_route_answers_and_the_gallery_works() {
    let s = InProc::start(config(), Some(&|_| {}));
    let (a, a2, b) = (
        photo("John_Savage", 0),
        photo("John_Savage", 1),
        photo("John_Simm", 0),
    );

    assert_eq!(get(&s.url("/livez"), None).status, 200);
    assert_eq!(get(&s.url("/readyz"), None).json()["status"], "ok");
    let info = get(&s.url("/v1/info"), Some(TOKEN));
    assert_eq!(info.status, 200, "{}", info.body);
    let info = info.json();
    assert_eq!(info["dimension"], 512);
    assert_eq!(info["limits"]["max_body_bytes"], 8 << 20);
    assert_eq!(info["limits"]["max_faces"], 8);

    // Verify, as JSON and as multipart.
    let v = post(
        &s.url("/v1/verify"),
        json!({"image1": b64_file(&a), "image2": b64_file(&a2)}),
    );
    assert_eq!(v.status, 200, "{}", v.body);
    let v = v.json();
    assert_eq!(
        (v["same"].as_bool(), v["faces"][0].as_str()),
        (Some(true), Some("aligned"))
    );
    // Taken as aligned chips: no boxes (a detected face has one: the
    // console's browser test draws them).
    assert_eq!(v["boxes"], json!([null, null]));
    assert!(v["timings_ms"]["inference"].as_f64().unwrap() > 0.0);
    let v = send_multipart(
        "POST",
        &s.url("/v1/verify"),
        &[
            ("image1", std::fs::read(&a).unwrap()),
            ("image2", std::fs::read(&b).unwrap()),
        ],
    );
    assert_eq!(v.status, 200, "{}", v.body);
    assert_eq!(v.json()["same"], false);

    // Verify one source against many targets; a bad target fails alone.
    let v = post(
        &s.url("/v1/verify/batch"),
        json!({"source": b64_file(&a), "targets": [b64_file(&a2), b64_file(&b), common::b64(b"not an image")]}),
    );
    assert_eq!(v.status, 200, "{}", v.body);
    let v = v.json();
    let r = v["results"].as_array().unwrap();
    assert_eq!(r.len(), 3);
    assert_eq!(
        (r[0]["same"].as_bool(), r[1]["same"].as_bool()),
        (Some(true), Some(false))
    );
    assert_eq!(r[2]["error"]["code"], "not_an_image", "{v}");

    // Embed.
    let e = post(&s.url("/v1/embed"), json!({"image": b64_file(&a)}));
    assert_eq!(e.status, 200, "{}", e.body);
    let e = e.json();
    let norm: f64 = e["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap().powi(2))
        .sum();
    assert_eq!(e["dimension"], 512);
    assert!((norm - 1.0).abs() < 1e-3, "{norm}");

    // The gallery: enroll (JSON, then multipart with replace), list, get,
    // identify, delete.
    let id = post(&s.url("/v1/identify"), json!({"image": b64_file(&a2)}));
    assert_eq!(
        (id.status, id.json()["best"].clone()),
        (200, Value::Null),
        "{}",
        id.body
    );
    let p = send(
        "PUT",
        &s.url("/v1/people/John_Savage"),
        Some(TOKEN),
        json!({"images": [b64_file(&a)], "meta": "{\"team\": 7}"}),
        &[],
    );
    assert_eq!(p.status, 200, "{}", p.body);
    assert_eq!(
        (p.json()["faces"].as_u64(), p.json()["meta"].as_str()),
        (Some(1), Some("{\"team\": 7}"))
    );
    let p = send_multipart(
        "PUT",
        &s.url("/v1/people/John_Savage?replace=true"),
        &[
            ("images", std::fs::read(&a).unwrap()),
            ("images", std::fs::read(&a2).unwrap()),
        ],
    );
    assert_eq!(
        (p.status, p.json()["faces"].as_u64()),
        (200, Some(2)),
        "{}",
        p.body
    );
    let simm = send(
        "PUT",
        &s.url("/v1/people/John_Simm"),
        Some(TOKEN),
        json!({"images": [b64_file(&b)]}),
        &[],
    );
    assert_eq!(simm.status, 200);
    let list = get(&s.url("/v1/people?limit=1&offset=1"), Some(TOKEN)).json();
    assert_eq!(
        (list["total"].as_u64(), list["people"][0]["id"].as_str()),
        (Some(2), Some("John_Simm"))
    );
    // Searched by id: a part of it, any case.
    let found = get(&s.url("/v1/people?search=SiMm"), Some(TOKEN)).json();
    assert_eq!(
        (found["total"].as_u64(), found["people"][0]["id"].as_str()),
        (Some(1), Some("John_Simm"))
    );
    let none = get(&s.url("/v1/people?search=nobody"), Some(TOKEN)).json();
    assert_eq!(
        (none["total"].as_u64(), none["people"].as_array().map(Vec::len)),
        (Some(0), Some(0))
    );
    let long = get(
        &s.url(&format!("/v1/people?search={}", "x".repeat(300))),
        Some(TOKEN),
    );
    assert_eq!((long.status, long.code()), (400, "bad_search".to_owned()));
    let one = get(&s.url("/v1/people/John_Savage"), Some(TOKEN));
    assert_eq!((one.status, one.json()["faces"].as_u64()), (200, Some(2)));
    let id = post(
        &s.url("/v1/identify"),
        json!({"image": b64_file(&photo("John_Savage", 3)), "k": 2}),
    );
    assert_eq!(id.status, 200, "{}", id.body);
    let id = id.json();
    assert_eq!(id["best"]["id"], "John_Savage", "{id}");
    assert_eq!(id["matches"].as_array().unwrap().len(), 2);
    assert!(id.get("faces").is_none(), "{id}");
    // Every face of a frame of two people: `faces`, largest first, the
    // first of them as the answer's own fields.
    let frame = common::grid_frame(&[photo("John_Savage", 3), photo("John_Simm", 1)]);
    let all = post(
        &s.url("/v1/identify"),
        json!({"image": common::b64(&frame), "k": 1, "all_faces": true}),
    );
    assert_eq!(all.status, 200, "{}", all.body);
    let all = all.json();
    let faces = all["faces"].as_array().unwrap();
    assert_eq!(faces.len(), 2, "{all}");
    for key in ["best", "matches", "box", "face"] {
        assert_eq!(all[key], faces[0][key], "{key}: {all}");
    }
    let cells: Vec<usize> = faces
        .iter()
        .map(|f| {
            let b = &f["box"];
            let v = |k: &str| b[k].as_f64().unwrap() as f32;
            common::cell_of([v("left"), v("top"), v("right"), v("bottom")])
        })
        .collect();
    assert!(cells.contains(&0) && cells.contains(&1), "{all}");
    let bad = send_multipart(
        "POST",
        &s.url("/v1/identify"),
        &[("image", frame), ("all_faces", b"maybe".to_vec())],
    );
    assert_eq!(
        (bad.status, bad.code()),
        (400, "bad_form".to_owned()),
        "{}",
        bad.body
    );
    let gone = agent()
        .delete(&s.url("/v1/people/John_Savage"))
        .header("authorization", format!("Bearer {TOKEN}"))
        .call();
    let gone = answer(gone);
    assert_eq!(
        (gone.status, gone.json()["removed_faces"].as_u64()),
        (200, Some(2))
    );
    let missing = get(&s.url("/v1/people/John_Savage"), Some(TOKEN));
    assert_eq!(
        (missing.status, missing.code()),
        (404, "unknown_person".to_owned())
    );

    // Methods outside the usual set share one label value, so clients
    // cannot grow the metrics.
    for method in ["FOO1", "FOO2"] {
        use std::io::{Read, Write};
        let addr = s.url("").trim_start_matches("http://").to_owned();
        let mut c = std::net::TcpStream::connect(&addr).unwrap();
        write!(
            c,
            "{method} /livez HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut answer = String::new();
        let _ = c.read_to_string(&mut answer);
        assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
    }

    // Metrics, as Prometheus text.
    let m = get(&s.url("/metrics"), None);
    assert!(!m.body.contains("FOO"), "{}", m.body);
    assert!(
        m.body.contains("method=\"other\",status=\"405\"} 2"),
        "{}",
        m.body
    );
    assert_eq!(m.status, 200);
    assert!(m.content_type.contains("openmetrics"), "{}", m.content_type);
    assert!(check_prometheus_text(&m.body) > 20);
    for needle in [
        "facepool_http_requests_total{route=\"/v1/verify\",method=\"POST\",status=\"200\"} 2",
        "facepool_stage_duration_seconds_count{stage=\"inference\"}",
        "facepool_pool_workers",
        "facepool_batch_size_bucket",
    ] {
        assert!(m.body.contains(needle), "{needle} missing from\n{}", m.body);
    }

    // The live numbers: this test's requests of the last minute by
    // outcome, with their latency, beside the runtime's gauges.
    assert_eq!(get(&s.url("/v1/stats"), None).status, 401);
    let st = get(&s.url("/v1/stats?seconds=120"), Some(TOKEN));
    assert_eq!(st.status, 200, "{}", st.body);
    let st = st.json();
    let seconds = st["seconds"].as_array().unwrap();
    assert_eq!(seconds.len(), 120);
    assert_eq!(seconds.last().unwrap()["ago"], 0);
    let sum = |k: &str| seconds.iter().map(|x| x[k].as_u64().unwrap()).sum::<u64>();
    assert!(sum("ok") >= 10, "{st}");
    assert!(sum("client_errors") >= 1, "{st}");
    assert!(st["p99_ms"].as_f64().unwrap() >= st["p50_ms"].as_f64().unwrap());
    assert!(st["p50_ms"].as_f64().unwrap() > 0.0);
    assert!(st["pool"]["capacity"].as_u64().unwrap() >= 1);
    assert!(st["batcher"]["batches"].as_u64().unwrap() >= 1);
    assert!(st["batcher"]["mean_batch_size"].as_f64().unwrap() >= 1.0);
    assert!(st["admission"]["limit_faces"].as_u64().unwrap() >= 1);
    assert!(st["memory_bytes"].as_u64().unwrap() > 10 << 20);
    let all = get(&s.url("/v1/stats?seconds=300"), Some(TOKEN)).json();
    assert_eq!(all["seconds"].as_array().unwrap().len(), 300);
    for bad in ["0", "301", "-1", "x"] {
        let r = get(&s.url(&format!("/v1/stats?seconds={bad}")), Some(TOKEN));
        assert_eq!(r.status, 400, "{bad}: {}", r.body);
    }

    // The OpenAPI document names every route.
    let doc = get(&s.url("/openapi.json"), None).json();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{doc}");
    for path in [
        "/v1/verify",
        "/v1/verify/batch",
        "/v1/identify",
        "/v1/embed",
        "/v1/people",
        "/v1/people/{id}",
        "/v1/info",
        "/v1/stats",
        "/livez",
        "/readyz",
        "/metrics",
        "/debug/pprof/profile",
        "/debug/pprof/flamegraph",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} missing");
    }
    assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
}

#[test]
fn auth_and_bad_input_get_clear_errors() {
    let s = InProc::start(
        ServerConfig {
            max_body: 64 << 10,
            max_images: 4,
            ..config()
        },
        Some(&|c: &mut FaceConfig| c.find.mode = facepool::face::FaceMode::Auto),
    );
    let a = b64_file(&photo("John_Savage", 0));
    let url = s.url("/v1/verify");
    let body = json!({"image1": a, "image2": a});
    let no_token = send("POST", &url, None, body.clone(), &[]);
    assert_eq!(
        (no_token.status, no_token.code()),
        (401, "unauthorized".to_owned())
    );
    let wrong = send("POST", &url, Some("wrong"), body.clone(), &[]);
    assert_eq!((wrong.status, wrong.code()), (403, "forbidden".to_owned()));
    assert_eq!(send("POST", &url, Some("another"), body.clone(), &[]).status, 200);
    // Probes and metrics stay open.
    assert_eq!(get(&s.url("/readyz"), None).status, 200);
    assert_eq!(get(&s.url("/metrics"), None).status, 200);

    // 413: body over the limit (within twice it, so the server reads it
    // to the end and the client sees the answer, not a broken pipe), too
    // many images.
    let big = "A".repeat(40 << 10);
    let r = post(&url, json!({"image1": big, "image2": big}));
    assert_eq!(
        (r.status, r.code()),
        (413, "body_too_large".to_owned()),
        "{}",
        r.body
    );
    let r = post(
        &s.url("/v1/verify/batch"),
        json!({"source": a, "targets": [a, a, a, a]}),
    );
    assert_eq!((r.status, r.code()), (413, "too_many_images".to_owned()));

    // 400: bad JSON, unknown fields, bad base64, bad parameters.
    let r = answer(
        agent()
            .post(&url)
            .header("authorization", format!("Bearer {TOKEN}"))
            .header("content-type", "application/json")
            .send("{\"image1\": "),
    );
    assert_eq!((r.status, r.code()), (400, "bad_json".to_owned()), "{}", r.body);
    let r = post(&url, json!({"image1": a, "image2": a, "extra": 1}));
    assert_eq!((r.status, r.code()), (400, "bad_json".to_owned()));
    let r = post(&url, json!({"image1": "%%%", "image2": a}));
    assert_eq!((r.status, r.code()), (400, "bad_base64".to_owned()));
    let r = post(&s.url("/v1/identify"), json!({"image": a, "k": 0}));
    assert_eq!((r.status, r.code()), (400, "bad_k".to_owned()));
    let r = get(&s.url("/v1/people?limit=zero"), Some(TOKEN));
    assert_eq!((r.status, r.code()), (400, "bad_query".to_owned()));
    let r = send_multipart("POST", &url, &[("image1", b"x".to_vec())]);
    assert_eq!((r.status, r.code()), (400, "bad_form".to_owned()));

    // 422: not an image, no face.
    let text = common::b64(b"plain text, not a picture");
    let r = post(&url, json!({"image1": text, "image2": a}));
    assert_eq!(
        (r.status, r.code()),
        (422, "not_an_image".to_owned()),
        "{}",
        r.body
    );
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("image 1:"));
    // A plain grey picture: decodes, has no face (small enough for the 64 KiB limit).
    let mut grey = Vec::new();
    image::RgbImage::from_pixel(320, 240, image::Rgb([128, 128, 128]))
        .write_to(&mut std::io::Cursor::new(&mut grey), image::ImageFormat::Png)
        .unwrap();
    let grey = common::b64(&grey);
    let r = post(&url, json!({"image1": a, "image2": grey}));
    assert_eq!((r.status, r.code()), (422, "no_face".to_owned()), "{}", r.body);

    // 404: unknown person, unknown route (JSON errors both).
    let r = get(&s.url("/v1/people/nobody"), Some(TOKEN));
    assert_eq!((r.status, r.code()), (404, "unknown_person".to_owned()));
    let r = get(&s.url("/v2/nothing"), None);
    assert_eq!((r.status, r.code()), (404, "no_route".to_owned()));
    let r = post(&s.url("/v1/identify"), json!({"image": a}));
    assert_eq!(r.status, 200, "an empty gallery still answers: {}", r.body);
}

#[test]
fn a_full_service_refuses_at_once_with_429_and_does_no_work() {
    let s = InProc::start(config(), Some(&|c: &mut FaceConfig| c.queue = 8));
    let svc = s.app.service().unwrap();
    // Everything the service may hold is taken (as by other requests).
    let held = svc
        .admission()
        .try_acquire(facepool::service::Cost::new(8, 0))
        .unwrap();
    let before = (svc.pool_stats().submitted, svc.batch_stats().submitted);
    let a = b64_file(&photo("John_Savage", 0));
    let t0 = Instant::now();
    let r = post(&s.url("/v1/verify"), json!({"image1": a, "image2": a}));
    let took = t0.elapsed();
    assert_eq!((r.status, r.code()), (429, "overloaded".to_owned()), "{}", r.body);
    assert_eq!(r.retry_after.as_deref(), Some("1"));
    assert_eq!(
        (svc.pool_stats().submitted, svc.batch_stats().submitted),
        before,
        "no work was done"
    );
    eprintln!("429 in {took:?}");
    // Refused on the headers: a body that is not even JSON is not parsed.
    let r = send_raw(&s.url("/v1/verify"), b"{ not json");
    assert_eq!((r.status, r.code()), (429, "overloaded".to_owned()), "{}", r.body);
    // A client that waits for `100 Continue` is answered 429 without being
    // asked for its body.
    let answer = expect_continue(&s.url("/v1/verify"), 100_000);
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    // A body that could never be read is too large, full or not.
    let max = ServerConfig::default().max_body;
    let answer = expect_continue(&s.url("/v1/verify"), max + 1);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    drop(held);
    assert_eq!(
        post(&s.url("/v1/verify"), json!({"image1": a, "image2": a})).status,
        200
    );
    // A request larger than the whole queue could never fit: 413, not 429.
    let r = post(
        &s.url("/v1/verify/batch"),
        json!({"source": a, "targets": vec![a.clone(); 8]}),
    );
    assert_eq!(
        (r.status, r.code()),
        (413, "too_many_faces".to_owned()),
        "{}",
        r.body
    );
}

#[test]
fn a_short_deadline_answers_504() {
    let s = InProc::start(config(), Some(&|_| {}));
    let photo = b64_file(&assets().join("photos/faces/bald_guys.jpg"));
    let r = send(
        "POST",
        &s.url("/v1/verify"),
        Some(TOKEN),
        json!({"image1": photo, "image2": photo}),
        &[("x-request-timeout-ms", "1")],
    );
    assert_eq!(
        (r.status, r.code()),
        (504, "deadline_exceeded".to_owned()),
        "{}",
        r.body
    );
    let r = send(
        "POST",
        &s.url("/v1/verify"),
        Some(TOKEN),
        json!({"image1": photo, "image2": photo}),
        &[("x-request-timeout-ms", "soon")],
    );
    assert_eq!((r.status, r.code()), (400, "bad_timeout".to_owned()));
}

#[test]
fn a_client_that_disconnects_has_its_work_dropped() {
    let s = InProc::start(
        config(),
        Some(&|c: &mut FaceConfig| {
            c.find.mode = facepool::face::FaceMode::Detect;
            c.workers = 1;
        }),
    );
    let svc = s.app.service().unwrap();
    let photo = b64_file(&assets().join("photos/faces/bald_guys.jpg"));
    let body = json!({"image1": photo, "image2": photo}).to_string();
    // Many requests whose images need detection, each client gone as soon
    // as its request is sent.
    for _ in 0..12 {
        let mut c = TcpStream::connect(s.addr).unwrap();
        write!(
            c,
            "POST /v1/verify HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        c.flush().unwrap();
        drop(c);
    }
    // The work ends (a busy machine may notice the clients left before a
    // request reaches the pool at all: then nothing is submitted), and stays
    // ended for a moment.
    let quiet = || {
        let p = svc.pool_stats();
        (p.in_flight() == 0 && svc.admission().in_use().faces == 0).then_some(p.submitted)
    };
    let mut last = None;
    wait_until("requests ended", || {
        let now = quiet();
        let settled = now.is_some() && now == last;
        last = now;
        if !settled {
            std::thread::sleep(Duration::from_millis(300));
        }
        settled
    });
    let p = svc.pool_stats();
    eprintln!("{p:?}");
    // 24 images were sent; those of clients that left were dropped, before
    // the pool or in it, not prepared.
    assert!(
        p.completed < 24,
        "images of clients that left were still prepared: {p:?}"
    );
    if p.submitted > 0 {
        assert!(p.cancelled > 0 && p.completed < p.submitted, "{p:?}");
    }
}

#[test]
fn not_ready_until_the_service_is_set() {
    let s = InProc::start(config(), None);
    let r = get(&s.url("/readyz"), None);
    assert_eq!((r.status, r.json()["status"].as_str()), (503, Some("loading")));
    assert_eq!(get(&s.url("/livez"), None).status, 200);
    let r = post(&s.url("/v1/embed"), json!({"image": "AAAA"}));
    assert_eq!((r.status, r.code()), (503, "not_ready".to_owned()));
    assert!(r.retry_after.is_some());
}

/// The `serve` binary as a child process, with the gallery file in `dir`.
fn child(dir: &Path, extra: &[&str]) -> Serve {
    let index = dir.join("gallery.fpi");
    let mut args = vec!["--index", index.to_str().unwrap()];
    args.extend_from_slice(extra);
    let s = Serve::start(dir, &args);
    s.wait_ready();
    s
}

#[test]
fn sigterm_drains_admitted_requests_saves_the_gallery_and_it_survives_a_restart() {
    let dir = TempDir::new("serve-drain");
    let mut s = child(dir.path(), &["--faces", "detect", "--threads", "1"]);
    let simm = b64_file(&photo("John_Simm", 0));
    let r = send(
        "PUT",
        &s.url("/v1/people/John_Simm"),
        Some(TOKEN),
        json!({"images": [simm]}),
        &[],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    // A slow request in flight (a group photo against several targets, with
    // detection), then SIGTERM while it runs.
    let photo = b64_file(&assets().join("photos/faces/bald_guys.jpg"));
    let url = s.url("/v1/verify/batch");
    let slow =
        std::thread::spawn(move || post(&url, json!({"source": photo, "targets": vec![photo.clone(); 6]})));
    std::thread::sleep(Duration::from_millis(300));
    s.signal("TERM");
    let r = slow.join().unwrap();
    assert_eq!(r.status, 200, "the admitted request finished: {}", r.body);
    assert_eq!(r.json()["results"].as_array().unwrap().len(), 6);
    assert_eq!(s.wait(), 0, "a clean exit");
    assert!(dir.path().join("gallery.fpi").is_file(), "the gallery was saved");

    // The gallery survives a restart.
    let s2 = child(dir.path(), &[]);
    let r = get(&s2.url("/v1/people/John_Simm"), Some(TOKEN));
    assert_eq!(
        (r.status, r.json()["faces"].as_u64()),
        (200, Some(1)),
        "{}",
        r.body
    );
    let id = post(
        &s2.url("/v1/identify"),
        json!({"image": b64_file(&photo_of_simm())}),
    );
    assert_eq!(id.json()["best"]["id"], "John_Simm", "{}", id.body);
}

fn photo_of_simm() -> PathBuf {
    photo("John_Simm", 4)
}

#[test]
fn serve_refuses_to_start_without_tokens_or_with_a_bad_model() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_serve"))
        .args(["--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--token-file"));
    let dir = TempDir::new("serve-bad-model");
    std::fs::write(dir.path().join("tokens"), "t\n").unwrap();
    std::fs::write(dir.path().join("model.onnx"), b"not a model").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_serve"))
        .args(["--listen", "127.0.0.1:0", "--token-file"])
        .arg(dir.path().join("tokens"))
        .arg("--model")
        .arg(dir.path().join("model.onnx"))
        .arg("--assets")
        .arg(assets())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
