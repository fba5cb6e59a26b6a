//! One gallery for a fleet: `serve --nats` processes without `--index`
//! share the broker's Key-Value bucket, each searching a replica of it fed
//! by deltas. Real `nats-server` processes (one, or a three-node cluster)
//! on free loopback ports, real `serve` processes on the real model.

#![cfg(feature = "serve")]

use crate::common;

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{json, Value};

use common::nats::{all_messages, by_id, connect, publish, rt, wait_count, Broker, Consumer};
use common::{b64_file, photos_of, wait_until, Rng, TempDir};

/// A random direction of the model's length (an embedding made elsewhere).
fn embedding(rng: &mut Rng, dim: usize) -> Vec<f32> {
    (0..dim)
        .map(|_| (rng.below(2001) as f32 - 1000.0) / 1000.0)
        .collect()
}

fn dim(node: &Consumer) -> usize {
    let (_, info) = node.http("GET", "/v1/info", None).unwrap();
    info["dimension"].as_u64().unwrap() as usize
}

/// Enrolls embeddings under `id` on `node`: the status and the answer.
fn enroll(node: &Consumer, id: &str, vectors: &[Vec<f32>]) -> (u16, Value) {
    node.http(
        "PUT",
        &format!("/v1/people/{id}"),
        Some(&json!({ "embeddings": vectors })),
    )
    .unwrap_or((0, Value::Null))
}

fn faces(node: &Consumer, id: &str) -> Option<u64> {
    match node.http("GET", &format!("/v1/people/{id}"), None) {
        Some((200, v)) => v["faces"].as_u64(),
        _ => None,
    }
}

fn best(node: &Consumer, photo: &std::path::Path) -> Value {
    let (status, v) = node
        .http("POST", "/v1/identify", Some(&json!({ "image": b64_file(photo) })))
        .unwrap();
    assert_eq!(status, 200, "{v}");
    v["best"]["id"].clone()
}

fn people(node: &Consumer) -> Vec<String> {
    let (status, v) = node.http("GET", "/v1/people?limit=1000", None).unwrap();
    assert_eq!(status, 200, "{v}");
    v["people"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn one_gallery_for_three_nodes() {
    let dir = TempDir::new("fleet-three");
    let broker = Broker::start(dir.path());
    let url = broker.url();
    let a = Consumer::node(dir.path(), "a", &url, &[]);
    let mut b = Consumer::node(dir.path(), "b", &url, &[]);
    let c = Consumer::node(dir.path(), "c", &url, &[]);
    let simm = photos_of("John_Simm");

    // Enroll on A (a photo): B and C identify the person, from the HTTP API
    // and from NATS identify jobs.
    let (status, v) = a
        .http(
            "PUT",
            "/v1/people/simm",
            Some(&json!({"images": [b64_file(&simm[0])], "meta": "m"})),
        )
        .unwrap();
    assert_eq!((status, v["faces"].clone()), (200, json!(1)), "{v}");
    assert_eq!(
        best(&a, &simm[1]),
        "simm",
        "read-your-writes on the node that answered"
    );
    for node in [&b, &c] {
        wait_until("the enroll reaches every node", || faces(node, "simm") == Some(1));
        assert_eq!(best(node, &simm[1]), "simm");
    }
    let (_, info) = b.http("GET", "/v1/info", None).unwrap();
    assert_eq!(info["gallery"]["store"], "nats", "{info}");
    assert_eq!(info["gallery"]["connected"], true, "{info}");
    assert!(info["gallery"]["revision"].as_u64().unwrap() >= 1, "{info}");
    rt().block_on(async {
        let js = connect(&url).await;
        for (i, photo) in simm[1..5].iter().enumerate() {
            publish(
                &js,
                &json!({"id": format!("who-{i}"), "kind": "identify", "image": b64_file(photo)}),
            )
            .await;
        }
        wait_count(&js, "FACEPOOL_RESULTS", 4, Duration::from_secs(120)).await;
        let results = by_id(&all_messages(&js, "FACEPOOL_RESULTS").await);
        for i in 0..4 {
            let r = &results[&format!("who-{i}")];
            assert_eq!(r.len(), 1);
            assert_eq!(r[0]["best"]["id"], "simm", "{}", r[0]);
        }
    });

    // Read-your-writes: each enroll is there on its node when it answers.
    let mut rng = Rng::new(29);
    let d = dim(&a);
    for i in 0..20 {
        let node = [&a, &b, &c][i % 3];
        let id = format!("x-{i}");
        let (status, v) = enroll(node, &id, &[embedding(&mut rng, d)]);
        assert_eq!(status, 200, "{v}");
        assert_eq!(faces(node, &id), Some(1), "{id} on the node that enrolled it");
    }

    // Delete on C: gone on C at once, and everywhere.
    let (status, v) = c.http("DELETE", "/v1/people/simm", None).unwrap();
    assert_eq!((status, v["removed_faces"].clone()), (200, json!(1)), "{v}");
    assert_eq!(best(&c, &simm[1]), Value::Null);
    for node in [&a, &b] {
        wait_until("the delete reaches every node", || faces(node, "simm").is_none());
        assert_eq!(best(node, &simm[1]), Value::Null);
    }
    assert_eq!(c.http("DELETE", "/v1/people/simm", None).unwrap().0, 404);

    // Two nodes add faces to one person at once: each enroll lands (the
    // compare-and-set reads and tries again) or is a clear 409; the faces
    // are those that landed, the same on every node.
    let landed = std::thread::scope(|s| {
        let runs: Vec<_> = [&a, &b]
            .into_iter()
            .enumerate()
            .map(|(n, node)| {
                s.spawn(move || {
                    let mut rng = Rng::new(100 + n as u64);
                    let mut landed = 0;
                    for _ in 0..25 {
                        let (status, v) = enroll(node, "dup", &[embedding(&mut rng, d)]);
                        match status {
                            200 => landed += 1,
                            409 => assert_eq!(v["error"]["code"], "gallery_conflict", "{v}"),
                            _ => panic!("{status} {v}"),
                        }
                    }
                    landed
                })
            })
            .collect();
        runs.into_iter().map(|r| r.join().unwrap()).sum::<u64>()
    });
    assert!(landed > 0);
    for node in [&a, &b, &c] {
        wait_until("every node has every face that landed", || {
            faces(node, "dup") == Some(landed)
        });
    }

    // B killed (SIGKILL); changes meanwhile; B restarted has them all
    // before it says it is ready.
    b.kill9();
    for i in 0..5 {
        let (status, v) = enroll(&a, &format!("late-{i}"), &[embedding(&mut rng, d)]);
        assert_eq!(status, 200, "{v}");
    }
    assert_eq!(c.http("DELETE", "/v1/people/x-0", None).unwrap().0, 200);
    let b = Consumer::node(dir.path(), "b-again", &url, &[]);
    let everyone = people(&a);
    assert_eq!(everyone.len(), 20 + 1 + 5 - 1);
    assert_eq!(people(&b), everyone, "caught up before ready");
    wait_until("C has them too", || people(&c) == everyone);
    assert!(everyone.contains(&"late-4".to_owned()) && !everyone.contains(&"x-0".to_owned()));
}

#[test]
fn a_broker_restart_keeps_the_replicas_answering() {
    let dir = TempDir::new("fleet-restart");
    let mut broker = Broker::start(dir.path());
    let url = broker.url();
    let a = Consumer::node(dir.path(), "a", &url, &[]);
    let b = Consumer::node(dir.path(), "b", &url, &[]);
    let mut rng = Rng::new(7);
    let d = dim(&a);
    assert_eq!(enroll(&a, "before", &[embedding(&mut rng, d)]).0, 200);
    wait_until("B has it", || faces(&b, "before") == Some(1));

    broker.stop();
    wait_until("B says it is degraded", || {
        b.http("GET", "/readyz", None)
            .is_some_and(|(s, v)| s == 200 && v["status"] == "degraded")
    });
    // Cut off, it answers from what it has.
    assert_eq!(faces(&b, "before"), Some(1));
    let (_, info) = b.http("GET", "/v1/info", None).unwrap();
    assert_eq!(info["gallery"]["connected"], false, "{info}");
    // A change cannot be stored: a clear error, not a hang.
    let (status, v) = enroll(&a, "during", &[embedding(&mut rng, d)]);
    assert_eq!(status, 503, "{v}");
    assert_eq!(v["error"]["code"], "gallery_unreachable", "{v}");

    broker.restart();
    wait_until("B follows again", || {
        b.http("GET", "/readyz", None)
            .is_some_and(|(s, v)| s == 200 && v["status"] == "ok")
    });
    let mut landed = vec!["before".to_owned()];
    for i in 0..10 {
        let id = format!("after-{i}");
        let node = if i % 2 == 0 { &a } else { &b };
        let (status, v) = enroll(node, &id, &[embedding(&mut rng, d)]);
        assert_eq!(status, 200, "{v}");
        landed.push(id);
    }
    for node in [&a, &b] {
        wait_until("every change after the restart on both", || {
            let ids: HashSet<String> = people(node).into_iter().collect();
            landed.iter().all(|id| ids.contains(id))
        });
    }
    let (status, text) = b.http("GET", "/metrics", None).unwrap();
    assert_eq!(status, 200);
    let text = text.as_str().unwrap_or_default().to_owned();
    for gauge in [
        "facepool_gallery_connected 1",
        "facepool_gallery_people 11",
        "facepool_gallery_pending_changes 0",
    ] {
        assert!(text.contains(gauge), "{gauge} not in\n{text}");
    }

    // The bucket deleted and made anew (as after a broker that lost its
    // store): every replica reads it again and holds what it holds.
    rt().block_on(async {
        let js = connect(&url).await;
        js.delete_stream("KV_facepool-gallery").await.unwrap();
    });
    let c = Consumer::node(dir.path(), "c", &url, &[]);
    assert_eq!(enroll(&c, "fresh", &[embedding(&mut rng, d)]).0, 200);
    for node in [&a, &b, &c] {
        wait_until("every replica holds the new bucket", || people(node) == ["fresh"]);
    }
}

#[test]
fn a_three_node_cluster_loses_a_node_and_no_enroll() {
    let dir = TempDir::new("fleet-cluster");
    let mut nodes = Broker::cluster(dir.path(), 3);
    let url = nodes.iter().map(Broker::url).collect::<Vec<_>>().join(",");
    // The cluster takes streams once its meta leader is elected.
    rt().block_on(async {
        let js = connect(&url).await;
        wait_until_async("the cluster takes a replicated stream", || async {
            js.create_stream(async_nats::jetstream::stream::Config {
                name: "PROBE".into(),
                subjects: vec!["probe".into()],
                num_replicas: 3,
                ..Default::default()
            })
            .await
            .is_ok()
        })
        .await;
        let _ = js.delete_stream("PROBE").await;
    });
    let a = Consumer::node(dir.path(), "a", &url, &["--nats-replicas", "3"]);
    let b = Consumer::node(dir.path(), "b", &url, &["--nats-replicas", "3"]);
    let mut rng = Rng::new(3);
    let d = dim(&a);
    let mut failed = 0;
    for i in 0..40 {
        if i == 15 {
            // A cluster node dies (SIGKILL) while enrolls go on.
            let mut dead = nodes.remove(2);
            dead.kill9();
        }
        let node = if i % 2 == 0 { &a } else { &b };
        let v = vec![embedding(&mut rng, d)];
        let id = format!("c-{i}");
        // An enroll refused while the cluster moves is tried again (a
        // replace: the same answer however often it lands).
        let mut tries = 0;
        loop {
            let (status, body) = node
                .http(
                    "PUT",
                    &format!("/v1/people/{id}?replace=true"),
                    Some(&json!({ "embeddings": v })),
                )
                .unwrap_or((0, Value::Null));
            if status == 200 {
                break;
            }
            assert!(status == 503 || status == 0, "{status} {body}");
            failed += 1;
            tries += 1;
            assert!(tries < 60, "{id}: {status} {body}");
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    eprintln!("enrolls refused while the cluster moved: {failed}");
    let want: Vec<String> = {
        let mut v: Vec<String> = (0..40).map(|i| format!("c-{i}")).collect();
        v.sort();
        v
    };
    for node in [&a, &b] {
        wait_until("nothing lost, on both nodes", || people(node) == want);
    }
}

/// Polls an async condition for up to two minutes (a guard against hangs,
/// never a timing assertion).
async fn wait_until_async<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let t0 = std::time::Instant::now();
    while !cond().await {
        assert!(t0.elapsed() < Duration::from_secs(120), "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[test]
fn an_index_file_imports_into_the_fleet_and_exports_back() {
    let dir = TempDir::new("fleet-import");
    let broker = Broker::start(dir.path());
    let url = broker.url();
    let a = Consumer::node(dir.path(), "a", &url, &[]);
    let d = dim(&a);
    // `compare enroll`'s kind of file: 50 people, some with two faces.
    let file = dir.path().join("people.fpi");
    let index = facepool::index::Index::new(d).unwrap();
    let mut rng = Rng::new(11);
    for i in 0..50 {
        let faces: Vec<Vec<f32>> = (0..1 + i % 2).map(|_| embedding(&mut rng, d)).collect();
        let views: Vec<&[f32]> = faces.iter().map(Vec::as_slice).collect();
        index
            .add(&format!("p-{i:02}"), &views, Some(&format!("{{\"n\":{i}}}")))
            .unwrap();
    }
    index.save(&file).unwrap();

    // B imports it at start; A, already running, gets it as deltas.
    let b = Consumer::node(
        dir.path(),
        "b",
        &url,
        &["--gallery-import", file.to_str().unwrap()],
    );
    let ids: Vec<String> = (0..50).map(|i| format!("p-{i:02}")).collect();
    assert_eq!(people(&b), ids, "imported before B is ready");
    wait_until("A has the import", || people(&a) == ids);
    assert_eq!(faces(&a, "p-01"), Some(2));
    let (_, p) = a.http("GET", "/v1/people/p-07", None).unwrap();
    assert_eq!(p["meta"], "{\"n\":7}");

    // The bucket exports back to a file that holds the same people.
    let out = dir.path().join("export.fpi");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_serve"))
        .args(["--nats", &url, "--gallery-export"])
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    let back = facepool::index::Index::load(&out).unwrap();
    assert_eq!(back.people().len(), 50);
    for id in &ids {
        let (x, y) = (index.vectors_of(id).unwrap(), back.vectors_of(id).unwrap());
        assert_eq!(x.len(), y.len(), "{id}");
        for (u, v) in x.iter().zip(&y) {
            let gap = u.iter().zip(v).map(|(p, q)| (p - q).abs()).fold(0.0f32, f32::max);
            assert!(gap < 1e-6, "{id}: {gap}");
        }
        assert_eq!(index.meta(id), back.meta(id));
    }
    // An entry written by something else that does not read: no replica
    // holds the person, each counts it, and a delete clears the key.
    rt().block_on(async {
        let js = connect(&url).await;
        let kv = js.get_key_value("facepool-gallery").await.unwrap();
        kv.put(facepool::gallery::key_of("junk"), "not an entry".into())
            .await
            .unwrap();
    });
    for node in [&a, &b] {
        wait_until("the bad entry is counted", || {
            node.http("GET", "/v1/info", None)
                .is_some_and(|(_, i)| i["gallery"]["rejected"] == 1)
        });
        assert_eq!(faces(node, "junk"), None);
    }
    assert_eq!(a.http("DELETE", "/v1/people/junk", None).unwrap().0, 404);
    rt().block_on(async {
        let js = connect(&url).await;
        let kv = js.get_key_value("facepool-gallery").await.unwrap();
        let e = kv
            .entry(facepool::gallery::key_of("junk"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(e.operation, async_nats::jetstream::kv::Operation::Delete);
        // A bucket of another vector length is refused at start.
        js.create_stream(async_nats::jetstream::stream::Config {
            name: "KV_other".into(),
            description: Some("facepool gallery: one key per person; vectors of length 3".into()),
            subjects: vec!["$KV.other.>".into()],
            max_messages_per_subject: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    });
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_serve"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--no-auth",
            "--nats",
            &url,
            "--gallery-bucket",
            "other",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("vectors of length 3"), "{err}");

    // Importing into a file gallery is refused with a clear error.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_serve"))
        .args(["--listen", "127.0.0.1:0", "--no-auth", "--gallery-import"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--gallery-import"));
}
