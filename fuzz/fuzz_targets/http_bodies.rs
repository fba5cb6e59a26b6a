//! The HTTP API's request bodies, through the router in-process (the real
//! `App::router`, a `FaceService` on the real models, each request sent
//! with `tower::ServiceExt::oneshot` on one current-thread runtime).
//!
//! An input is two bytes that pick the request, then the body:
//! - byte 0: the route and method (every route, wrong methods, unknown
//!   paths), a person id, and query strings;
//! - byte 1, bits 0-2: how the body is sent: as given as JSON, as given as
//!   multipart, the route's JSON with the rest as its base64 image(s)
//!   (plain or as a `data:` URL), the route's form with the rest as its
//!   file(s), as given with no content type, a multipart type without a
//!   boundary, or text/plain;
//! - bits 3-4: the bearer token (right, none, wrong, odd spelling);
//! - bits 5-6: an `X-Request-Timeout-Ms` header (none, 60000, 0, junk).
//!
//! What must hold, for every request:
//! - no panic, and no 5xx; the one exception is 504 when the request set
//!   its own timeout;
//! - every 4xx answer is JSON of exactly the documented error shape
//!   (`{"error": {"code": "...", "message": "..."}}`, a non-empty code);
//!   401 says `WWW-Authenticate: Bearer`, 429 and 503 `Retry-After`;
//! - an API route with the right method and no accepted token is 401 or
//!   403, whatever the body;
//! - every 2xx JSON answer is JSON.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use base64::Engine;
use facepool::server::{App, ServerConfig};
use facepool::service::{FaceConfig, FaceService};
use facepool_fuzz::assets;
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};
use tower::ServiceExt;

const TOKEN: &str = "fuzz-token";
const BOUNDARY: &str = "fuzzboundary";

struct Server {
    rt: tokio::runtime::Runtime,
    app: App,
    router: Router,
}

fn server() -> &'static Server {
    static S: OnceLock<Server> = OnceLock::new();
    S.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let app = App::new(ServerConfig {
            tokens: vec![TOKEN.to_owned()],
            max_body: 512 << 10,
            max_images: 4,
            default_timeout: Duration::from_secs(30),
            max_timeout: Duration::from_secs(60),
            ..ServerConfig::default()
        });
        let mut c = FaceConfig::from_assets(&assets());
        c.workers = 1;
        c.cpu.inference_threads = 1;
        c.cpu.intra_threads = 1;
        c.queue = 64;
        c.cpu.batch_delay = Duration::from_millis(1);
        let svc = FaceService::start(c).expect("the service starts");
        app.ready(svc).expect("ready once");
        let router = app.router();
        Server { rt, app, router }
    })
}

/// The requests byte 0 picks from: method, path, and what the body is for.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Verify,
    Batch,
    Identify,
    Embed,
    Enroll,
    /// A route that takes no body.
    Bodiless,
}

const ROUTES: &[(&str, &str, Kind, bool)] = &[
    // (method, path, body kind, whether it is an API route behind the token
    // with the method it serves)
    ("POST", "/v1/verify", Kind::Verify, true),
    ("POST", "/v1/verify/batch", Kind::Batch, true),
    ("POST", "/v1/identify", Kind::Identify, true),
    ("POST", "/v1/embed", Kind::Embed, true),
    ("PUT", "/v1/people/{id}", Kind::Enroll, true),
    ("GET", "/v1/people/{id}", Kind::Bodiless, true),
    ("DELETE", "/v1/people/{id}", Kind::Bodiless, true),
    ("GET", "/v1/people", Kind::Bodiless, true),
    ("GET", "/v1/info", Kind::Bodiless, true),
    ("GET", "/v1/stats", Kind::Bodiless, true),
    ("GET", "/livez", Kind::Bodiless, false),
    ("GET", "/readyz", Kind::Bodiless, false),
    ("GET", "/metrics", Kind::Bodiless, false),
    ("GET", "/openapi.json", Kind::Bodiless, false),
    // Wrong methods, unknown paths, odd methods.
    ("GET", "/v1/verify", Kind::Verify, false),
    ("PUT", "/v1/identify", Kind::Identify, false),
    ("POST", "/v1/people/{id}", Kind::Enroll, false),
    ("POST", "/v1/people", Kind::Enroll, false),
    ("DELETE", "/v1/people", Kind::Bodiless, false),
    ("PATCH", "/v1/embed", Kind::Embed, false),
    ("HEAD", "/v1/info", Kind::Bodiless, false),
    ("HEAD", "/livez", Kind::Bodiless, false),
    ("OPTIONS", "/v1/verify", Kind::Verify, false),
    ("POST", "/v1/nothing", Kind::Embed, false),
    ("POST", "/v1/verify/", Kind::Verify, false),
    ("GET", "/", Kind::Bodiless, false),
    ("BREW", "/v1/embed", Kind::Embed, false),
    // The profiling routes are not in this build (facepool without its
    // `profiling` feature): unknown paths here.
    ("GET", "/debug/pprof/profile", Kind::Bodiless, false),
];

const IDS: &[&str] = &["alice", "bob", "%20", "a%2Fb", "%FF", "%00", "x", "%E2%80%AE"];

/// Query strings, by route.
fn query(path: &str, pick: u8) -> &'static str {
    let pick = usize::from(pick);
    let from = |qs: &'static [&'static str]| qs[pick % qs.len()];
    match path {
        "/v1/people/{id}" => from(&[
            "",
            "?replace=true",
            "?replace=false",
            "?replace=maybe",
            "?replace",
        ]),
        "/v1/people" => from(&[
            "",
            "?offset=1",
            "?limit=0",
            "?limit=1001",
            "?offset=-1",
            "?limit=2&offset=9",
        ]),
        _ => from(&["", "?x=1"]),
    }
}

/// The route's JSON body with `image` (base64) in each image field.
fn json_body(kind: Kind, image: &str) -> Value {
    match kind {
        Kind::Verify => json!({"image1": image, "image2": image}),
        Kind::Batch => json!({"source": image, "targets": [image]}),
        Kind::Identify => json!({"image": image, "k": 3}),
        Kind::Embed | Kind::Bodiless => json!({"image": image}),
        Kind::Enroll => json!({"images": [image], "meta": "{\"fuzz\": true}"}),
    }
}

/// The route's multipart form with `image` as each file field.
fn form_body(kind: Kind, image: &[u8]) -> Vec<u8> {
    let fields: &[&str] = match kind {
        Kind::Verify => &["image1", "image2"],
        Kind::Batch => &["source", "targets"],
        Kind::Identify | Kind::Embed | Kind::Bodiless => &["image"],
        Kind::Enroll => &["images"],
    };
    let mut b = Vec::new();
    for f in fields {
        b.extend_from_slice(
            format!(
                "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{f}\"; filename=\"f.jpg\"\r\n\
                 Content-Type: application/octet-stream\r\n\r\n"
            )
            .as_bytes(),
        );
        b.extend_from_slice(image);
        b.extend_from_slice(b"\r\n");
    }
    if kind == Kind::Identify {
        b.extend_from_slice(
            format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"k\"\r\n\r\n2\r\n").as_bytes(),
        );
    }
    b.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    b
}

fn check_error_body(status: StatusCode, body: &[u8], what: &str) {
    let v: Value = serde_json::from_slice(body).unwrap_or_else(|e| {
        panic!(
            "{what}: {status} answered a body that is not JSON ({e}): {:?}",
            String::from_utf8_lossy(body)
        )
    });
    let ok = v.as_object().is_some_and(|o| o.len() == 1)
        && v["error"].as_object().is_some_and(|e| e.len() == 2)
        && v["error"]["code"].as_str().is_some_and(|c| !c.is_empty())
        && v["error"]["message"].is_string();
    assert!(ok, "{what}: {status} answered {v} (not the error shape)");
}

fuzz_target!(|data: &[u8]| {
    let [pick, flags, rest @ ..] = data else {
        return;
    };
    let s = server();
    let (method, path, kind, guarded) = ROUTES[usize::from(*pick) % ROUTES.len()];
    let id = IDS[usize::from(*pick / 32) % IDS.len()];
    let uri = format!(
        "{}{}",
        path.replace("{id}", id),
        query(path, pick.wrapping_mul(7) ^ flags)
    );
    let mut req = Request::builder()
        .method(Method::from_bytes(method.as_bytes()).expect("a method"))
        .uri(&uri);
    let (content_type, body): (Option<String>, Vec<u8>) = match flags & 7 {
        0 => (Some("application/json".into()), rest.to_vec()),
        1 => (
            Some(format!("multipart/form-data; boundary={BOUNDARY}")),
            rest.to_vec(),
        ),
        2 | 7 => {
            let b64 = base64::engine::general_purpose::STANDARD.encode(rest);
            let image = if flags & 7 == 7 {
                format!("data:image/jpeg;base64,{b64}")
            } else {
                b64
            };
            let body = serde_json::to_vec(&json_body(kind, &image)).expect("JSON");
            (Some("application/json".into()), body)
        }
        3 => (
            Some(format!("multipart/form-data; boundary={BOUNDARY}")),
            form_body(kind, rest),
        ),
        4 => (None, rest.to_vec()),
        5 => (Some("multipart/form-data".into()), rest.to_vec()),
        _ => (Some("text/plain".into()), rest.to_vec()),
    };
    if let Some(t) = &content_type {
        req = req.header(header::CONTENT_TYPE, t);
    }
    let auth = (flags >> 3) & 3;
    match auth {
        0 => req = req.header(header::AUTHORIZATION, format!("Bearer {TOKEN}")),
        1 => {}
        2 => req = req.header(header::AUTHORIZATION, "Bearer not-the-token"),
        _ => req = req.header(header::AUTHORIZATION, format!("bearer   {TOKEN}  ")),
    }
    let timeout = (flags >> 5) & 3;
    match timeout {
        0 => {}
        1 => req = req.header("x-request-timeout-ms", "60000"),
        2 => req = req.header("x-request-timeout-ms", "0"),
        _ => req = req.header("x-request-timeout-ms", "1e3"),
    }
    req = req.header(header::CONTENT_LENGTH, body.len());
    let req = req.body(Body::from(body)).expect("a request");
    let what = format!(
        "{method} {uri} (body mode {}, auth {auth}, timeout {timeout})",
        flags & 7
    );

    let (status, headers, bytes) = s.rt.block_on(async {
        let r = s
            .router
            .clone()
            .oneshot(req)
            .await
            .expect("the router is infallible");
        let (parts, body) = r.into_parts();
        let bytes = axum::body::to_bytes(body, usize::MAX)
            .await
            .expect("an answer's body reads");
        (parts.status, parts.headers, bytes)
    });

    if status.is_server_error() {
        let own_timeout = timeout == 1 && status == StatusCode::GATEWAY_TIMEOUT;
        assert!(
            own_timeout,
            "{what}: {status}: {}",
            String::from_utf8_lossy(&bytes)
        );
    }
    if guarded && auth != 0 && auth != 3 {
        assert!(
            status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN,
            "{what}: {status} without an accepted token"
        );
    }
    let head = method == "HEAD";
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if status.is_client_error() {
        assert!(
            json,
            "{what}: {status} answered with content type {:?}",
            headers.get(header::CONTENT_TYPE)
        );
        if !head {
            check_error_body(status, &bytes, &what);
        }
        if status == StatusCode::UNAUTHORIZED {
            assert_eq!(
                headers.get(header::WWW_AUTHENTICATE).map(|v| v.as_bytes()),
                Some(&b"Bearer"[..]),
                "{what}: 401 without WWW-Authenticate: Bearer"
            );
        }
    }
    if matches!(
        status,
        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
    ) {
        assert!(
            headers.contains_key(header::RETRY_AFTER),
            "{what}: {status} without Retry-After"
        );
    }
    if status.is_success() && json && !head {
        serde_json::from_slice::<Value>(&bytes)
            .unwrap_or_else(|e| panic!("{what}: {status} answered JSON that is not ({e})"));
    }

    // Keep the gallery small over a long run (enrolls add to it).
    if let Some(svc) = s.app.service() {
        let index = svc.index();
        if index.vectors() > 256 {
            for id in index.ids() {
                index
                    .remove(&id)
                    .expect("the gallery is in memory: removing reads nothing");
            }
        }
    }
});
