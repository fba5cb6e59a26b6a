//! The load generator, run as users run it: profiles good and bad, and a
//! smoke run of every mode.
#![cfg(feature = "loadgen")]

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;

fn loadgen() -> Command {
    Command::new(env!("CARGO_BIN_EXE_loadgen"))
}

fn profiles() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("profiles")
}

fn write_profile(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn every_shipped_profile_is_valid() {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(profiles()).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "toml") {
            let out = loadgen()
                .arg("--profile")
                .arg(&p)
                .arg("--check")
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}: {}",
                p.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            names.push(p.file_stem().unwrap().to_string_lossy().into_owned());
        }
    }
    names.sort();
    assert_eq!(
        names,
        [
            "burst",
            "cameras",
            "http_identify",
            "http_overload",
            "http_saturate",
            "nats_saturate",
            "nats_trial",
            "overload",
            "saturate",
            "smoke",
            "steady",
            "video_review"
        ]
    );
}

/// Each bad profile must fail with exit code 2 and a message naming the
/// field at fault.
#[test]
fn bad_profiles_name_the_field() {
    let dir = common::TempDir::new("loadgen-bad");
    let cases: &[(&str, &str)] = &[
        (
            "[arrival]\nmodel = 'open'\nrat = 5.0\n[stop]\nseconds = 1\n",
            "rat",
        ),
        ("[arrival]\nmodel = 'sometimes'\n", "sometimes"),
        (
            "[arrival]\nmodel = 'open'\nrate = -3.0\n[stop]\nseconds = 1\n",
            "arrival.rate",
        ),
        ("[arrival]\nmodel = 'open'\nrate = 5.0\n", "stop.seconds"),
        (
            "[arrival]\nmodel = 'closed'\n[stop]\nseconds = 1\n",
            "arrival.clients",
        ),
        (
            "[arrival]\nmodel = 'closed'\nclients = 4\nrate = 5.0\n[stop]\nseconds = 1\n",
            "arrival.rate",
        ),
        (
            "[arrival]\nmodel = 'closed'\nclients = 4\n[stop]\nseconds = 1\n[request]\nfaces = [5, 2]\n",
            "request.faces",
        ),
        (
            "[arrival]\nmodel = 'closed'\nclients = 4\n[stop]\nseconds = 1\n[request]\nidentify = 1.5\n",
            "request.identify",
        ),
        (
            "[arrival]\nmodel = 'closed'\nclients = 4\n[stop]\nseconds = 'ten'\n",
            "seconds",
        ),
        (
            "[arrival]\nmodel = 'closed'\nclients = 4\n[stop]\nseconds = 1\n[runtime]\nqueue = 0\n",
            "runtime.queue",
        ),
        (
            "[arrival]\nmodel = 'closed'\nclients = 4\n[stop]\nseconds = 1\n[slo]\nerror_rate = 2.0\n",
            "slo.error_rate",
        ),
        (
            "modes = ['pool', 'turbo']\n[arrival]\nmodel = 'closed'\nclients = 4\n[stop]\nseconds = 1\n",
            "turbo",
        ),
        (
            "[arrival]\nmodel = 'poisson'\n[[arrival.phases]]\nseconds = 0\nrate = 5\n",
            "arrival.phases.seconds",
        ),
        (
            "[arrival]\nmodel = 'closed'\nclients = 4\n[stop]\nseconds = 1\n[synthetic]\ncall_ms = nan\n",
            "synthetic.call_ms",
        ),
        ("this is not toml", "line 1"),
    ];
    for (i, (text, field)) in cases.iter().enumerate() {
        let p = write_profile(dir.path(), &format!("bad{i}.toml"), text);
        let out = loadgen()
            .arg("--profile")
            .arg(&p)
            .arg("--check")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "case {i}: {err}");
        assert!(err.contains(field), "case {i}: expected `{field}` in: {err}");
        assert!(
            err.contains(&format!("bad{i}.toml")),
            "case {i}: the file is not named: {err}"
        );
    }
    let out = loadgen()
        .arg("--profile")
        .arg(dir.path().join("missing.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.toml"));
}

fn run_json(args: &[&str]) -> serde_json::Value {
    let out = loadgen().args(args).arg("--json").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A mode's (sent, completed, rejected, errors), after checking that every
/// request sent has exactly one outcome.
fn outcomes(m: &serde_json::Value) -> (u64, u64, u64, u64) {
    let n = |k: &str| m[k].as_u64().unwrap();
    let (sent, done, refused, errors) = (n("sent"), n("completed"), n("rejected"), n("errors"));
    assert_eq!(done + refused + errors, sent, "{m}");
    (sent, done, refused, errors)
}

fn check_mode(m: &serde_json::Value, faces: (u64, u64), min_sent: u64) {
    let name = m["mode"].as_str().unwrap();
    let (sent, _, refused, errors) = outcomes(m);
    // The smoke load is far below every mode's capacity.
    assert!(sent >= min_sent, "{name}: {m}");
    assert_eq!((refused, errors), (0, 0), "{name}: {m}");
    let l = &m["latency_ms"];
    let p = |k: &str| l[k].as_f64().unwrap();
    assert!(
        p("p50") > 0.0 && p("p50") <= p("p90") && p("p90") <= p("p99"),
        "{name}: {l}"
    );
    assert!(p("p99") <= p("p999") && p("p999") <= p("max"), "{name}: {l}");
    let faces_per_req = m["faces_per_sec"].as_f64().unwrap() / m["throughput_rps"].as_f64().unwrap();
    assert!(
        faces_per_req >= faces.0 as f64 && faces_per_req <= faces.1 as f64,
        "{name}: {m}"
    );
    assert!(m["peak_rss_mb"].as_f64().unwrap() > 0.0);
    assert!(m["slo_ok"].is_boolean());
}

#[test]
fn smoke_runs_every_mode_on_the_synthetic_backend() {
    let dir = common::TempDir::new("loadgen-smoke");
    let profile = profiles().join("smoke.toml");
    let out_dir = dir.path().join("out");
    let v = run_json(&[
        "--profile",
        profile.to_str().unwrap(),
        "--synthetic",
        "--modes",
        "direct,pool,pool+batch",
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    assert_eq!(v["profile"], "smoke");
    let modes = v["modes"].as_array().unwrap();
    let names: Vec<&str> = modes.iter().map(|m| m["mode"].as_str().unwrap()).collect();
    assert_eq!(names, ["direct", "pool", "pool+batch"]);
    for m in modes {
        check_mode(m, (1, 4), 20);
    }
    // Batching gathers faces of several requests into one call.
    let batch = modes[2]["mean_batch"].as_f64().unwrap();
    let direct = modes[0]["mean_batch"].as_f64().unwrap();
    assert!(batch >= direct, "{batch} vs {direct}");
    for f in [
        "direct.latency.hgrm",
        "pool.latency.hgrm",
        "pool_batch.latency.hgrm",
        "latency.svg",
    ] {
        let text = std::fs::read_to_string(out_dir.join(f)).unwrap();
        assert!(!text.is_empty(), "{f}");
    }
    let hgrm = std::fs::read_to_string(out_dir.join("pool.latency.hgrm")).unwrap();
    assert!(hgrm.contains("Percentile") && hgrm.contains("#[Max"), "{hgrm}");
    let svg = std::fs::read_to_string(out_dir.join("latency.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("pool+batch p99"), "{svg}");
}

/// An open loop far past a one-call-at-a-time downstream: pool+batch
/// refuses the excess with `Overloaded` and answers what it admitted.
#[test]
fn overload_is_refused_not_queued() {
    let dir = common::TempDir::new("loadgen-over");
    let p = write_profile(
        dir.path(),
        "over.toml",
        "[arrival]\nmodel = 'open'\nrate = 400.0\n[stop]\nseconds = 1.0\n\
         [request]\nfaces = [4, 4]\n[runtime]\nqueue = 16\nbatch_max = 8\nbatch_delay_ms = 1.0\n\
         [synthetic]\ncall_ms = 20.0\nitem_ms = 0.0\n",
    );
    let v = run_json(&[
        "--profile",
        p.to_str().unwrap(),
        "--synthetic",
        "--modes",
        "pool+batch,pool",
    ]);
    for m in v["modes"].as_array().unwrap() {
        let (sent, done, refused, errors) = outcomes(m);
        assert_eq!(errors, 0, "{m}");
        assert!(done > 0, "{m}");
        // Capacity is at most 8 faces per 20 ms = 100 req/s of 4 faces;
        // 400 req/s offered: most must be refused.
        assert!(refused > sent / 2, "{m}");
    }
}

/// The real model, every mode, on the fetched photos.
#[test]
fn smoke_runs_every_mode_on_the_face_model() {
    let dir = common::TempDir::new("loadgen-real");
    let p = write_profile(
        dir.path(),
        "real.toml",
        "[arrival]\nmodel = 'closed'\nclients = 2\n[stop]\nseconds = 0.5\n\
         [request]\nfaces = [1, 2]\nidentify = 0.5\n",
    );
    let v = run_json(&[
        "--profile",
        p.to_str().unwrap(),
        "--assets",
        common::assets().to_str().unwrap(),
        "--modes",
        "direct,pool,pool+batch",
    ]);
    assert!(v["backend"].as_str().unwrap().contains("55 photos"), "{v}");
    for m in v["modes"].as_array().unwrap() {
        check_mode(m, (1, 2), 2);
    }
}
