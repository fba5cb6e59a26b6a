//! The async mode against a real broker: each test starts its own
//! `nats-server -js` on a free loopback port with a temporary store, and
//! `serve --nats` consumer processes on the real model; the test is the
//! producer (async-nats). `.ci/run` installs nats-server (Debian's package).

#![cfg(feature = "serve")]

use crate::common;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer};
use futures_util::StreamExt;
use serde_json::{json, Value};

use common::nats::{
    all_messages, by_id, connect, count, free_port, publish, publish_raw, rt, wait_count, Broker, Consumer,
};
use common::{b64_file, photos_of, TempDir};

fn verify_job(id: &str, a: &Path, b: &Path) -> Value {
    json!({"id": id, "kind": "verify", "image1": b64_file(a), "image2": b64_file(b)})
}

#[test]
fn each_kind_of_job_round_trips() {
    let dir = TempDir::new("nats-kinds");
    let broker = Broker::start(dir.path());
    let c = Consumer::start(dir.path(), "a", &broker.url(), &[]);
    let simm = photos_of("John_Simm");
    let savage = photos_of("John_Savage");
    // The gallery, through the HTTP API of the same process.
    let body = json!({"images": [b64_file(&simm[0])]});
    let r = ureq::put(&format!("http://{}/v1/people/simm", c.addr))
        .send_json(&body)
        .unwrap();
    assert_eq!(r.status(), 200);

    rt().block_on(async {
        let js = connect(&broker.url()).await;
        // An image in the object store bucket the consumer made.
        let store = js.get_object_store("facepool-images").await.unwrap();
        let bytes = std::fs::read(&simm[2]).unwrap();
        store.put("simm-2.jpg", &mut bytes.as_slice()).await.unwrap();

        publish(&js, &verify_job("same", &simm[0], &simm[1])).await;
        publish(&js, &verify_job("other", &simm[0], &savage[0])).await;
        publish(&js, &json!({"id": "obj", "kind": "verify", "image1": b64_file(&simm[1]), "image2": {"object": "simm-2.jpg"}})).await;
        publish(&js, &json!({"id": "who", "kind": "identify", "image": b64_file(&simm[1]), "k": 3})).await;
        let frames = |p: &[PathBuf]| p.iter().map(|f| Value::String(b64_file(f))).collect::<Vec<_>>();
        publish(&js, &json!({"id": "rev-ok", "kind": "review", "video": "v1", "frames": frames(&simm[1..4]), "reference": b64_file(&simm[0])})).await;
        let mut mixed = frames(&simm[1..3]);
        mixed.push(Value::String(b64_file(&savage[1])));
        publish(&js, &json!({"id": "rev-bad", "kind": "review", "video": "v2", "frames": mixed, "reference": b64_file(&simm[0])})).await;
        publish(&js, &json!({"id": "watch", "kind": "review", "video": "v3", "frames": frames(&savage[..2])})).await;
        publish(&js, &json!({"id": "watch-hit", "kind": "review", "video": "v4", "frames": frames(&simm[3..5])})).await;
        // Every face of a frame of two people.
        let crowd = common::b64(&common::grid_frame(&[simm[2].clone(), savage[2].clone()]));
        publish(&js, &json!({"id": "crowd", "kind": "identify", "image": crowd, "all_faces": true})).await;
        publish(&js, &json!({"id": "watch-all", "kind": "review", "video": "v5", "frames": [crowd], "all_faces": true})).await;

        wait_count(&js, "FACEPOOL_RESULTS", 10, Duration::from_secs(120)).await;
        let results = by_id(&all_messages(&js, "FACEPOOL_RESULTS").await);
        let one = |id: &str| {
            let v = &results[id];
            assert_eq!(v.len(), 1, "{id}: {v:?}");
            v[0].clone()
        };
        assert_eq!(one("same")["same"], true);
        assert_eq!(one("same")["kind"], "verify");
        assert!(one("same")["timings_ms"]["inference"].as_f64().unwrap() > 0.0);
        assert_eq!(one("other")["same"], false);
        assert_eq!(one("obj")["same"], true, "the object store image");
        assert_eq!(one("who")["best"]["id"], "simm");
        let ok = one("rev-ok");
        assert_eq!((ok["passes"].clone(), ok["frames"].as_array().unwrap().len()), (json!(true), 3));
        let bad = one("rev-bad");
        assert_eq!(bad["passes"], false);
        assert_eq!(bad["frames"][2]["same"], false);
        assert_eq!(bad["frames"][0]["same"], true);
        assert_eq!(one("watch")["passes"], true, "nobody of the gallery");
        let hit = one("watch-hit");
        assert_eq!(hit["passes"], false);
        assert_eq!(hit["frames"][0]["match"]["id"], "simm");
        assert_eq!(hit["frames"][0]["people"][0]["id"], "simm");
        let crowd = one("crowd");
        assert_eq!(crowd["faces"].as_array().map(Vec::len), Some(2), "{crowd}");
        assert_eq!(crowd["box"], crowd["faces"][0]["box"]);
        let all = one("watch-all");
        assert_eq!(all["frames"][0]["face"], true, "{all}");
        assert!(all["frames"][0]["people"].is_array(), "{all}");
        assert_eq!(count(&js, "FACEPOOL_DEAD").await, 0);
    });
}

#[test]
fn poison_jobs_end_in_the_dead_letters_after_max_deliver() {
    let dir = TempDir::new("nats-poison");
    let broker = Broker::start(dir.path());
    let _c = Consumer::start(dir.path(), "a", &broker.url(), &["--nats-max-deliver", "2"]);
    let simm = photos_of("John_Simm");
    rt().block_on(async {
        let js = connect(&broker.url()).await;
        let text = common::b64(b"not a picture at all");
        publish(&js, &json!({"id": "undecodable", "kind": "verify", "image1": text, "image2": b64_file(&simm[0])})).await;
        publish_raw(&js, "garbage", b"{this is not json".to_vec()).await;
        publish(&js, &json!({"id": "bad id with spaces", "kind": "verify", "image1": "", "image2": ""})).await;
        publish(&js, &json!({"id": "late", "kind": "verify", "image1": b64_file(&simm[0]), "image2": b64_file(&simm[1]), "deadline_ms": 1})).await;
        publish(&js, &json!({"id": "fine", "kind": "verify", "image1": b64_file(&simm[0]), "image2": b64_file(&simm[1])})).await;

        wait_count(&js, "FACEPOOL_DEAD", 4, Duration::from_secs(60)).await;
        wait_count(&js, "FACEPOOL_RESULTS", 1, Duration::from_secs(60)).await;
        let dead = all_messages(&js, "FACEPOOL_DEAD").await;
        let codes: HashMap<String, (String, i64)> = dead
            .iter()
            .map(|(_, v)| {
                let code = v["error"]["code"].as_str().unwrap().to_owned();
                (code, (v["id"].as_str().unwrap().to_owned(), v["deliveries"].as_i64().unwrap()))
            })
            .collect();
        assert_eq!(codes["not_an_image"], ("undecodable".to_owned(), 2), "retried to max_deliver: {dead:?}");
        assert_eq!(codes["bad_job"].1, 1, "not a job: dead at once");
        assert!(codes["bad_job"].0.starts_with("seq-"));
        assert_eq!(codes["bad_id"].1, 1);
        assert_eq!(codes["deadline_exceeded"].0, "late");
        // Each dead letter carries the job it was.
        assert!(dead.iter().all(|(_, v)| v["job"].is_string()));
        let results = all_messages(&js, "FACEPOOL_RESULTS").await;
        assert_eq!(results.len(), 1);
        assert_eq!(results[0].1["id"], "fine");
        // The jobs stream empties: every job was acked.
        let t0 = Instant::now();
        while count(&js, "FACEPOOL_JOBS").await > 0 {
            assert!(t0.elapsed() < Duration::from_secs(30), "a job was never acked");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
}

/// Two consumer processes share one durable consumer; one is killed with
/// SIGKILL in the middle of the work (the jobs it held are redelivered to
/// the other); the other is stopped with SIGTERM in the middle of more
/// work (it finishes what it holds, exit 0) and a third finishes the rest;
/// every job has exactly one result.
#[test]
fn a_killed_consumer_loses_nothing_and_two_share_the_work() {
    let dir = TempDir::new("nats-kill");
    let broker = Broker::start(dir.path());
    let extra = ["--nats-ack-wait", "5"];
    let mut a = Consumer::start(dir.path(), "a", &broker.url(), &extra);
    let mut b = Consumer::start(dir.path(), "b", &broker.url(), &extra);
    let johns = photos_of("John_Salley");
    const JOBS: usize = 120;
    const MORE: usize = 60;
    let job = |i: usize| {
        verify_job(
            &format!("job-{i}"),
            &johns[i % johns.len()],
            &johns[(i + 1) % johns.len()],
        )
    };
    rt().block_on(async {
        let js = connect(&broker.url()).await;
        for i in 0..JOBS {
            publish(&js, &job(i)).await;
        }
        wait_count(&js, "FACEPOOL_RESULTS", 20, Duration::from_secs(120)).await;
        let jobs = js.get_stream("FACEPOOL_JOBS").await.unwrap();
        let mut c: consumer::PullConsumer = jobs.get_consumer("facepool").await.unwrap();
        assert!(
            c.info().await.unwrap().num_ack_pending > 0,
            "jobs are held when a is killed"
        );
        a.kill9();
        wait_count(&js, "FACEPOOL_RESULTS", JOBS as u64, Duration::from_secs(180)).await;
        let redelivered = all_messages(&js, "FACEPOOL_RESULTS")
            .await
            .iter()
            .filter(|(_, v)| v["delivered"].as_i64().unwrap_or(0) > 1)
            .count();
        assert!(redelivered > 0, "the jobs a held went to b");

        // More work, and b stopped gracefully in its middle.
        for i in JOBS..JOBS + MORE {
            publish(&js, &job(i)).await;
        }
        wait_count(&js, "FACEPOOL_RESULTS", JOBS as u64 + 5, Duration::from_secs(120)).await;
        assert_eq!(b.terminate(), 0, "graceful stop");
        let log = std::fs::read_to_string(&b.log).unwrap();
        assert!(
            log.contains("nats: stopped") && !log.contains("panicked"),
            "{log}"
        );
        let _c = Consumer::start(dir.path(), "c", &broker.url(), &extra);
        wait_count(
            &js,
            "FACEPOOL_RESULTS",
            (JOBS + MORE) as u64,
            Duration::from_secs(180),
        )
        .await;

        // Any late duplicate would show within an ack_wait.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let results = all_messages(&js, "FACEPOOL_RESULTS").await;
        let ids = by_id(&results);
        assert_eq!(results.len(), JOBS + MORE, "one result per job");
        for i in 0..JOBS + MORE {
            assert_eq!(ids[&format!("job-{i}")].len(), 1);
        }
        let consumers: HashSet<&str> = results
            .iter()
            .filter_map(|(_, v)| v["consumer"].as_str())
            .collect();
        assert_eq!(consumers.len(), 3, "every process did work: {consumers:?}");
        assert_eq!(count(&js, "FACEPOOL_DEAD").await, 0);
    });
}

/// The broker restarts in the middle of a run (file storage): no job is
/// lost, the consumer reconnects by itself.
#[test]
fn a_broker_restart_loses_no_job() {
    let dir = TempDir::new("nats-restart");
    let mut broker = Broker::start(dir.path());
    let _c = Consumer::start(dir.path(), "a", &broker.url(), &["--nats-ack-wait", "3"]);
    let johns = photos_of("John_Schneider");
    const BEFORE: usize = 80;
    const AFTER: usize = 40;
    rt().block_on(async {
        let js = connect(&broker.url()).await;
        for i in 0..BEFORE {
            publish(
                &js,
                &verify_job(&format!("b-{i}"), &johns[i % johns.len()], &johns[0]),
            )
            .await;
        }
        wait_count(&js, "FACEPOOL_RESULTS", 10, Duration::from_secs(120)).await;
        broker.restart();
        for i in 0..AFTER {
            publish(
                &js,
                &verify_job(&format!("a-{i}"), &johns[i % johns.len()], &johns[1]),
            )
            .await;
        }
        wait_count(
            &js,
            "FACEPOOL_RESULTS",
            (BEFORE + AFTER) as u64,
            Duration::from_secs(180),
        )
        .await;
        let ids = by_id(&all_messages(&js, "FACEPOOL_RESULTS").await);
        assert_eq!(ids.len(), BEFORE + AFTER);
        assert!(ids.values().all(|v| v.len() == 1));
    });
}

/// A backlog of many times what the consumer may hold stays in the
/// broker: the consumer never holds more than its max_ack_pending, and its
/// memory stays flat while it works through the backlog.
#[test]
fn a_backlog_stays_in_the_broker() {
    let dir = TempDir::new("nats-backlog");
    let broker = Broker::start(dir.path());
    // A queue of 8 faces: 4 jobs held at most.
    let c = Consumer::start(dir.path(), "a", &broker.url(), &["--queue", "8"]);
    let johns = photos_of("John_Shimkus");
    const JOBS: usize = 160; // 40x what it may hold
    let pid = c.pid();
    let rss = move || -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{pid}/statm")).unwrap_or_default();
        s.split_whitespace()
            .nth(1)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            * 4096
    };
    rt().block_on(async {
        let js = connect(&broker.url()).await;
        for i in 0..JOBS {
            publish(
                &js,
                &verify_job(&format!("j-{i}"), &johns[i % johns.len()], &johns[0]),
            )
            .await;
        }
        wait_count(&js, "FACEPOOL_RESULTS", 8, Duration::from_secs(120)).await;
        let warm = rss();
        let jobs = js.get_stream("FACEPOOL_JOBS").await.unwrap();
        let (mut peak_rss, mut peak_held) = (warm, 0i64);
        let t0 = Instant::now();
        while count(&js, "FACEPOOL_RESULTS").await < JOBS as u64 {
            assert!(
                t0.elapsed() < Duration::from_secs(240),
                "backlog not worked through"
            );
            let mut cons: consumer::PullConsumer = jobs.get_consumer("facepool").await.unwrap();
            let held = cons.info().await.unwrap().num_ack_pending as i64;
            peak_rss = peak_rss.max(rss());
            peak_held = peak_held.max(held);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The broker does not cap it (max_ack_pending is unlimited, being
        // shared by every process): the consumer's own permits do.
        assert!(peak_held <= 4, "held {peak_held} jobs, at most 4 allowed");
        assert!(peak_held >= 1);
        let grown = peak_rss.saturating_sub(warm) as f64 / (1 << 20) as f64;
        eprintln!(
            "rss warm {} MiB, growth {grown:.1} MiB while working through the backlog",
            warm >> 20
        );
        assert!(
            grown < 64.0,
            "the consumer's memory grew {grown:.1} MiB with the backlog"
        );
    });
}

#[test]
fn an_unreachable_broker_is_a_clear_error_at_start() {
    let dir = TempDir::new("nats-unreachable");
    let port = free_port();
    let out = Command::new(env!("CARGO_BIN_EXE_serve"))
        .args(["--listen", "127.0.0.1:0", "--no-auth", "--nats"])
        .arg(format!("nats://127.0.0.1:{port}"))
        .arg("--index")
        .arg(dir.path().join("g.fpi"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("cannot connect to NATS at nats://127.0.0.1:"),
        "{err}"
    );
}

/// A body without what differs between two runs of the same work: the
/// timings, and the result's job envelope (id, kind, consumer, delivery).
fn work_of(mut v: Value) -> Value {
    if let Value::Object(m) = &mut v {
        for k in ["timings_ms", "id", "kind", "consumer", "delivered"] {
            m.remove(k);
        }
    }
    v
}

/// The same verify, identify and review through the HTTP API and as NATS
/// jobs give the same body (the service's one set of result bodies):
/// same similarities to the bit, same verdicts, same matches.
#[test]
fn http_and_nats_give_the_same_bodies() {
    let dir = TempDir::new("nats-same-bodies");
    let broker = Broker::start(dir.path());
    let c = Consumer::start(dir.path(), "a", &broker.url(), &[]);
    let simm = photos_of("John_Simm");
    let savage = photos_of("John_Savage");
    let http = |path: &str, body: &Value| -> Value {
        let mut r = ureq::post(&format!("http://{}{path}", c.addr))
            .send_json(body)
            .unwrap();
        assert_eq!(r.status(), 200);
        r.body_mut().read_json().unwrap()
    };
    let put = ureq::put(&format!("http://{}/v1/people/simm", c.addr))
        .send_json(json!({"images": [b64_file(&simm[0])], "meta": "gallery"}))
        .unwrap();
    assert_eq!(put.status(), 200);
    let frames: Vec<Value> = [&simm[2], &simm[3], &savage[1]]
        .iter()
        .map(|p| Value::String(b64_file(p)))
        .collect();
    let work = [
        (
            "verify",
            "/v1/verify",
            json!({"image1": b64_file(&simm[1]), "image2": b64_file(&savage[0])}),
        ),
        (
            "identify",
            "/v1/identify",
            json!({"image": b64_file(&simm[4]), "k": 2}),
        ),
        (
            "review",
            "/v1/review",
            json!({"video": "clip", "frames": frames.clone(), "reference": b64_file(&simm[0])}),
        ),
    ];
    let over_http: Vec<Value> = work.iter().map(|(_, path, body)| http(path, body)).collect();
    rt().block_on(async {
        let js = connect(&broker.url()).await;
        for (kind, _, body) in &work {
            let mut job = body.clone();
            job["id"] = json!(format!("same-{kind}"));
            job["kind"] = json!(kind);
            publish(&js, &job).await;
        }
        wait_count(
            &js,
            "FACEPOOL_RESULTS",
            work.len() as u64,
            Duration::from_secs(120),
        )
        .await;
        let results = by_id(&all_messages(&js, "FACEPOOL_RESULTS").await);
        for ((kind, _, _), h) in work.iter().zip(&over_http) {
            let n = &results[&format!("same-{kind}")][0];
            assert!(h["timings_ms"]["total"].as_f64().unwrap() > 0.0);
            assert!(n["timings_ms"]["total"].as_f64().unwrap() > 0.0);
            assert_eq!(work_of(h.clone()), work_of(n.clone()), "{kind}");
        }
    });
    assert_eq!(over_http[1]["best"]["id"], "simm");
    assert_eq!(over_http[2]["frames"][2]["same"], false);
}

/// A job with as many images as the service's whole queue waits in the
/// service's fair line and is admitted within a bound, while HTTP verify
/// requests keep the service at capacity: capacity that frees goes to the
/// head of the line, and the HTTP requests behind it are refused (429)
/// until it is in, instead of taking every free face before it.
#[test]
fn a_job_as_big_as_the_queue_is_admitted_under_saturating_traffic() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    let dir = TempDir::new("nats-fair");
    let broker = Broker::start(dir.path());
    const QUEUE: usize = 8;
    let c = Consumer::start(dir.path(), "a", &broker.url(), &["--queue", "8"]);
    let simm = photos_of("John_Simm");
    let pair = json!({"image1": b64_file(&simm[1]), "image2": b64_file(&simm[2])});
    let stop = Arc::new(AtomicBool::new(false));
    let (done, refused) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    // Twice the queue's worth of verify requests, each sent again as soon
    // as it is answered or refused.
    let clients: Vec<_> = (0..QUEUE)
        .map(|_| {
            let (stop, done, refused) = (stop.clone(), done.clone(), refused.clone());
            let (url, pair) = (format!("http://{}/v1/verify", c.addr), pair.clone());
            std::thread::spawn(move || {
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .build()
                    .into();
                while !stop.load(Ordering::Relaxed) {
                    match agent.post(&url).send_json(&pair).map(|r| r.status().as_u16()) {
                        Ok(200) => done.fetch_add(1, Ordering::Relaxed),
                        Ok(429) => refused.fetch_add(1, Ordering::Relaxed),
                        other => panic!("verify: {other:?}"),
                    };
                }
            })
        })
        .collect();
    // The service is at capacity: requests are being refused.
    let t0 = Instant::now();
    while refused.load(Ordering::Relaxed) < 20 {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the traffic never filled the service"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let frames: Vec<Value> = (0..QUEUE - 1)
        .map(|i| Value::String(b64_file(&simm[i % simm.len()])))
        .collect();
    let job = json!({"id": "big", "kind": "review", "video": "v", "frames": frames, "reference": b64_file(&simm[0])});
    let (took, overtook) = rt().block_on(async {
        let js = connect(&broker.url()).await;
        let t0 = Instant::now();
        let at_publish = done.load(Ordering::Relaxed);
        publish(&js, &job).await;
        wait_count(&js, "FACEPOOL_RESULTS", 1, Duration::from_secs(60)).await;
        let overtook = done.load(Ordering::Relaxed) - at_publish;
        let took = t0.elapsed();
        let r = &by_id(&all_messages(&js, "FACEPOOL_RESULTS").await)["big"][0];
        assert_eq!(r["passes"], true, "{r}");
        (took, overtook)
    });
    let before = done.load(Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    for t in clients {
        t.join().unwrap();
    }
    eprintln!(
        "a job of {QUEUE} images answered in {took:?}, {overtook} verifies answered meanwhile; {} verifies and {} refusals in all",
        done.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed)
    );
    // The bound is in work, not time: the verifies answered while the job
    // was on its way are those admitted before it (at most the queue's
    // worth) and those that fit in as its own faces finish. A job that
    // waited for a moment with nothing admitted would see hundreds.
    assert!(
        overtook <= 2 * QUEUE as u64,
        "{overtook} verifies were answered while the job of {QUEUE} images waited"
    );
    assert!(
        done.load(Ordering::Relaxed) > before,
        "the traffic went on after the job"
    );
}

/// The dead letters by job id: (code, deliveries).
async fn dead_by_id(js: &jetstream::Context) -> HashMap<String, (String, i64)> {
    all_messages(js, "FACEPOOL_DEAD")
        .await
        .iter()
        .map(|(_, v)| {
            (
                v["id"].as_str().unwrap_or("").to_owned(),
                (
                    v["error"]["code"].as_str().unwrap_or("").to_owned(),
                    v["deliveries"].as_i64().unwrap_or(0),
                ),
            )
        })
        .collect()
}

/// An image object that links to itself, or whose chunks are gone, cannot
/// hold a job forever: links are followed once, and reads are bounded by a
/// timeout and the job's deadline, so each job reaches its dead letter.
#[test]
fn objects_that_never_end_reach_a_dead_letter_within_the_deadline() {
    use base64::Engine as _;
    let dir = TempDir::new("nats-objects");
    let broker = Broker::start(dir.path());
    let _c = Consumer::start(dir.path(), "a", &broker.url(), &["--nats-max-deliver", "2"]);
    let simm = photos_of("John_Simm");
    rt().block_on(async {
        let js = connect(&broker.url()).await;
        let store = js.get_object_store("facepool-images").await.unwrap();
        let bytes = std::fs::read(&simm[0]).unwrap();
        let x = store.put("x", &mut bytes.as_slice()).await.unwrap();
        // "loop" links to itself: its metadata rewritten as the broker
        // keeps it.
        let mut info = store.add_link("loop", &x).await.unwrap();
        if let Some(link) = info.options.as_mut().and_then(|o| o.link.as_mut()) {
            link.name = Some("loop".into());
        }
        let mut h = async_nats::HeaderMap::new();
        h.insert("Nats-Rollup", "sub");
        let subject = format!(
            "$O.facepool-images.M.{}",
            base64::engine::general_purpose::URL_SAFE.encode("loop")
        );
        js.publish_with_headers(subject, h, serde_json::to_vec(&info).unwrap().into())
            .await
            .unwrap()
            .await
            .unwrap();
        // "gone" promises chunks that are not there.
        let gone = store.put("gone", &mut bytes.as_slice()).await.unwrap();
        let chunks = format!("$O.facepool-images.C.{}", gone.nuid);
        js.get_stream("OBJ_facepool-images")
            .await
            .unwrap()
            .purge()
            .filter(chunks)
            .await
            .unwrap();
        let t0 = Instant::now();
        let image = b64_file(&simm[1]);
        publish(&js, &json!({"id": "loop", "kind": "verify", "image1": {"object": "loop"}, "image2": image, "deadline_ms": 20000})).await;
        publish(&js, &json!({"id": "gone", "kind": "verify", "image1": {"object": "gone"}, "image2": image, "deadline_ms": 4000})).await;
        wait_count(&js, "FACEPOOL_DEAD", 2, Duration::from_secs(60)).await;
        let took = t0.elapsed();
        let dead = dead_by_id(&js).await;
        eprintln!("a self-linked object and one without its chunks: dead letters {dead:?} after {took:?}");
        assert_eq!(dead["loop"].0, "object_link");
        assert_eq!(dead["gone"].0, "deadline_exceeded");
        assert!(took < Duration::from_secs(30), "{took:?}");
        assert_eq!(count(&js, "FACEPOOL_RESULTS").await, 0);
    });
}

/// A job is admitted by the service before its images are read, so a
/// consumer that holds many jobs holds the images of only those admitted:
/// 16 jobs held, each of four 7 MB objects, against a queue of 4 faces.
#[test]
fn a_job_is_admitted_before_its_images_are_read() {
    let dir = TempDir::new("nats-admit-first");
    let broker = Broker::start(dir.path());
    let c = Consumer::start(
        dir.path(),
        "a",
        &broker.url(),
        &["--queue", "4", "--nats-inflight", "16", "--nats-max-deliver", "1"],
    );
    let pid = c.pid();
    let peak = move || -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        s.lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            << 10
    };
    rt().block_on(async {
        let js = connect(&broker.url()).await;
        let store = js.get_object_store("facepool-images").await.unwrap();
        let noise: Vec<u8> = (0..7_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8).collect();
        for i in 0..4 {
            store.put(format!("n{i}").as_str(), &mut noise.as_slice()).await.unwrap();
        }
        let before = peak();
        const JOBS: u64 = 32;
        for j in 0..JOBS {
            let frames: Vec<Value> = (0..3).map(|i| json!({"object": format!("n{i}")})).collect();
            publish(&js, &json!({"id": format!("big-{j}"), "kind": "review", "video": "v", "frames": frames, "reference": {"object": "n3"}})).await;
        }
        wait_count(&js, "FACEPOOL_DEAD", JOBS, Duration::from_secs(240)).await;
        let grown = peak().saturating_sub(before);
        eprintln!(
            "{JOBS} jobs of four 7 MB objects, 16 held at once: the consumer's peak RSS grew {} MiB",
            grown >> 20
        );
        let dead = dead_by_id(&js).await;
        assert!(dead.values().all(|(code, _)| code == "not_an_image"), "{dead:?}");
        assert!(grown < 200 << 20, "peak RSS grew {} MiB", grown >> 20);
    });
}

/// A result larger than the broker's max payload is a dead letter of its
/// own at once (not retried to max_deliver as if the broker were away).
#[test]
fn a_result_over_the_max_payload_is_a_dead_letter_of_its_own() {
    let dir = TempDir::new("nats-big-result");
    // A gallery of 1,100 people with 4 KiB of metadata each: an identify
    // of k = 1000 answers about 4 MB.
    let index = facepool::index::Index::new(512).unwrap();
    let meta = "m".repeat(4096);
    for i in 0..1100u32 {
        let v: Vec<f32> = (0..512).map(|d| ((i * 512 + d) % 97) as f32 - 48.0).collect();
        index.add(&format!("p{i}"), &[&v], Some(&meta)).unwrap();
    }
    index.save(&dir.path().join("a.fpi")).unwrap();
    let broker = Broker::start(dir.path());
    let _c = Consumer::start(dir.path(), "a", &broker.url(), &[]);
    let simm = photos_of("John_Simm");
    rt().block_on(async {
        let js = connect(&broker.url()).await;
        publish(
            &js,
            &json!({"id": "huge", "kind": "identify", "image": b64_file(&simm[0]), "k": 1000}),
        )
        .await;
        wait_count(&js, "FACEPOOL_DEAD", 1, Duration::from_secs(60)).await;
        let dead = dead_by_id(&js).await;
        assert_eq!(dead["huge"], ("result_too_large".to_owned(), 1), "{dead:?}");
    });
}

/// A job whose dead letter was published before a crash (the ack lost) is
/// acked on its next delivery without being worked again: one outcome.
#[test]
fn a_redelivered_job_with_a_dead_letter_is_acked_without_work() {
    let dir = TempDir::new("nats-dead-once");
    let broker = Broker::start(dir.path());
    // A consumer makes the streams and the durable consumer, then dies.
    let mut first = Consumer::start(dir.path(), "a", &broker.url(), &["--nats-ack-wait", "2"]);
    first.kill9();
    let simm = photos_of("John_Simm");
    rt().block_on(async {
        let js = connect(&broker.url()).await;
        publish(&js, &verify_job("twice", &simm[0], &simm[1])).await;
        // A delivery taken and never acked (the crashed consumer's)...
        let jobs = js.get_stream("FACEPOOL_JOBS").await.unwrap();
        let cons: consumer::PullConsumer = jobs.get_consumer("facepool").await.unwrap();
        let mut batch = cons.fetch().max_messages(1).messages().await.unwrap();
        let taken = batch.next().await.unwrap().unwrap();
        assert_eq!(taken.info().unwrap().delivered, 1);
        // ... after its dead letter was published.
        let mut h = async_nats::HeaderMap::new();
        h.insert("Nats-Msg-Id", "dead-twice");
        let body = json!({"id": "twice", "error": {"code": "internal", "message": "before the crash"}, "deliveries": 1});
        js.publish_with_headers("facepool.dead.twice", h, serde_json::to_vec(&body).unwrap().into())
            .await
            .unwrap()
            .await
            .unwrap();
        drop(batch);
        let _second = Consumer::start(dir.path(), "b", &broker.url(), &["--nats-ack-wait", "2"]);
        let t0 = Instant::now();
        while count(&js, "FACEPOOL_JOBS").await > 0 {
            assert!(t0.elapsed() < Duration::from_secs(60), "the redelivered job was never acked");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(count(&js, "FACEPOOL_RESULTS").await, 0, "a second outcome was published");
        assert_eq!(count(&js, "FACEPOOL_DEAD").await, 1);
    });
}
