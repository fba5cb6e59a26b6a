//! The `compare` binary end to end on the real models: single pairs, pair
//! files with labels and relative paths, JSON output, exit codes, and the
//! index subcommands (enroll, identify, remove, index-info).
#![cfg(feature = "cli")]

use crate::common;

use std::process::Command;

use common::assets;

fn compare(args: &[&str]) -> (i32, String, String) {
    let assets = assets().display().to_string();
    run(&[args, &["--assets", &assets]].concat())
}

/// `compare` with exactly these arguments.
fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_compare"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn photo(person: &str, n: usize) -> String {
    common::photos_of(person)[n].display().to_string()
}

#[test]
fn two_images_json() {
    let (a, b, c) = (
        photo("John_Savage", 0),
        photo("John_Savage", 1),
        photo("John_Simm", 0),
    );
    let (code, out, err) = compare(&["--json", &a, &b]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["a"], a.as_str());
    assert_eq!(v["same"], true);
    assert!(v["similarity"].as_f64().unwrap() > v["threshold"].as_f64().unwrap());
    assert!(v["timings_ms"]["inference"].as_f64().unwrap() > 0.0);
    let (code, out, _) = compare(&["--json", &a, &c]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["same"], false);
}

#[test]
fn pair_files_with_labels_relative_paths_and_failures() {
    let dir = std::env::temp_dir().join(format!("facepool-pairs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (person, n, name) in [
        ("John_Savage", 0, "a.jpg"),
        ("John_Savage", 1, "b.jpg"),
        ("John_Simm", 0, "c.jpg"),
    ] {
        std::fs::copy(photo(person, n), dir.join(name)).unwrap();
    }
    std::fs::write(dir.join("bad.jpg"), b"not an image").unwrap();
    std::fs::write(
        dir.join("pairs.csv"),
        "a,b,label\na.jpg,b.jpg,same\na.jpg,c.jpg,0\nb.jpg,c.jpg,different\na.jpg,bad.jpg,1\nmissing.jpg,a.jpg\na.jpg,b.jpg,maybe\n",
    )
    .unwrap();
    let pairs = dir.join("pairs.csv").display().to_string();
    let (code, out, err) = compare(&["--pairs", &pairs, "--json"]);
    assert_eq!(code, 1, "some inputs failed: exit 1 ({err})");
    let lines: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 7, "{out}");
    assert_eq!(lines[0]["same"], true);
    assert_eq!(lines[1]["same"], false);
    assert_eq!(lines[2]["same"], false);
    for (i, what) in [(3, "image"), (4, "missing.jpg"), (5, "label")] {
        let e = lines[i]["error"]
            .as_str()
            .unwrap_or_else(|| panic!("line {i}: {}", lines[i]));
        assert!(e.contains(what), "line {i}: {e}");
    }
    let s = &lines[6]["summary"];
    assert_eq!((s["pairs"].as_u64(), s["failed"].as_u64()), (Some(6), Some(3)));
    assert_eq!(s["accuracy"].as_f64(), Some(1.0));
    // The per-stage latencies of the three pairs that were compared (the
    // failed one with a good image still spent time on the pool).
    let stages = s["metrics"]["stages"].as_array().unwrap();
    let count = |name: &str| {
        stages
            .iter()
            .find(|x| x["stage"] == name)
            .map(|x| x["count"].as_u64())
    };
    assert_eq!(count("end_to_end"), Some(Some(3)), "{stages:?}");
    // a, b and c are embedded once each, however many pairs name them.
    assert_eq!(count("inference"), Some(Some(3)));
    assert_eq!(s["images_embedded"].as_u64(), Some(3));
    assert!(s["metrics"]["batch"]["count"].as_u64().unwrap() >= 1);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn usage_errors_exit_2() {
    assert_eq!(compare(&["only-one.jpg"]).0, 2);
    assert_eq!(compare(&["--faces", "sideways", "a.jpg", "b.jpg"]).0, 2);
    assert_eq!(compare(&["--pairs", "/nonexistent/pairs.csv"]).0, 2);
    let (code, _, err) = compare(&["--model", "/nonexistent/model.onnx", "a.jpg", "b.jpg"]);
    assert_eq!(code, 2);
    assert!(err.contains("model"), "{err}");
}

fn json_lines(out: &str) -> Vec<serde_json::Value> {
    out.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn enroll_identify_remove_and_index_info() {
    let dir = std::env::temp_dir().join(format!("facepool-cli-index-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("people.fpi");
    let index = file.display().to_string();

    // Enroll two people (the file is created by the first).
    for person in ["John_Savage", "John_Salley"] {
        let photos: Vec<String> = (0..3).map(|i| photo(person, i)).collect();
        let mut args = vec!["enroll", "--index", &index, "--id", person, "--json"];
        args.extend(photos.iter().map(String::as_str));
        let (code, out, err) = compare(&args);
        assert_eq!(code, 0, "{err}");
        let v = &json_lines(&out)[0];
        assert_eq!((v["id"].as_str(), v["faces"].as_u64()), (Some(person), Some(3)));
    }
    // A bad image enrolls nothing and says which image.
    let (code, out, _) = compare(&[
        "enroll",
        "--index",
        &index,
        "--id",
        "x",
        "--json",
        &photo("John_Simm", 0),
        "/no/such.jpg",
    ]);
    assert_eq!(code, 1);
    assert_eq!(json_lines(&out)[0]["image"], "/no/such.jpg");

    let (code, out, err) = run(&["index-info", &index, "--ids", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v = &json_lines(&out)[0];
    assert_eq!(
        (v["people"].as_u64(), v["faces"].as_u64(), v["dim"].as_u64()),
        (Some(2), Some(6), Some(512))
    );
    assert_eq!(v["ids"][0]["id"], "John_Salley");

    // Identify: a known face, a stranger, and a file that is not an image.
    let (known, stranger) = (photo("John_Savage", 8), photo("John_Simm", 1));
    let (code, out, _) = compare(&[
        "identify",
        "--index",
        &index,
        "--k",
        "2",
        "--json",
        &known,
        &stranger,
        "/etc/hostname",
    ]);
    assert_eq!(code, 1, "one input failed");
    let v = json_lines(&out);
    assert_eq!(v.len(), 3);
    assert_eq!(
        (v[0]["id"].as_str(), v[0]["known"].as_bool()),
        (Some("John_Savage"), Some(true))
    );
    assert_eq!(v[0]["matches"].as_array().unwrap().len(), 2);
    assert_eq!(
        (v[1]["id"].as_str(), v[1]["known"].as_bool()),
        (None, Some(false))
    );
    assert!(v[1]["similarity"].as_f64().unwrap() < v[1]["threshold"].as_f64().unwrap());
    assert!(v[2]["error"].as_str().unwrap().contains("not a supported image"));

    // The same image given three times (once as a copy) is embedded once.
    let copy = dir.join("copy.jpg");
    std::fs::copy(&known, &copy).unwrap();
    let copy = copy.display().to_string();
    let (code, out, err) = compare(&["identify", "--index", &index, "--json", &known, &copy, &known]);
    assert_eq!(code, 0, "{err}");
    let v = json_lines(&out);
    assert_eq!(v.len(), 3);
    assert!(v
        .iter()
        .all(|x| x["id"] == "John_Savage" && x["similarity"] == v[0]["similarity"]));
    assert!(err.contains("3 images, 1 embedded"), "{err}");
    let (_, _, err) = compare(&["identify", "--index", &index, "--no-dedup", &known, &copy]);
    assert!(err.contains("2 images, 2 embedded"), "{err}");

    // Remove, then the face is no longer known.
    let (code, out, err) = run(&["remove", "--index", &index, "--id", "John_Savage", "--json"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(json_lines(&out)[0]["removed_faces"], 3);
    let (code, _, _) = run(&["remove", "--index", &index, "--id", "John_Savage"]);
    assert_eq!(code, 1, "removing someone absent");
    let (code, out, _) = compare(&["identify", "--index", &index, "--json", &known]);
    assert_eq!(code, 0);
    assert_eq!(json_lines(&out)[0]["known"], false);

    // Damaged or missing index files are clear errors.
    let bytes = std::fs::read(&file).unwrap();
    let cut = dir.join("cut.fpi");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let (code, _, err) = run(&["index-info", &cut.display().to_string()]);
    assert_eq!(code, 1);
    assert!(err.contains("corrupt index"), "{err}");
    let (code, _, err) = compare(&["identify", "--index", &cut.display().to_string(), &known]);
    assert_eq!(code, 2);
    assert!(err.contains("truncated"), "{err}");
    let (code, _, err) = run(&["index-info", &dir.join("none.fpi").display().to_string()]);
    assert_eq!(code, 2);
    assert!(err.contains("none.fpi"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `--flamegraph` and `--pprof` profile the run: the SVG shows the
/// pipeline's own frames, and the protobuf is a gzip-free profile message
/// naming them too.
#[test]
fn flamegraph_and_pprof() {
    let dir = common::TempDir::new("compare-profile");
    let (svg, pb) = (dir.path().join("run.svg"), dir.path().join("run.pb"));
    let all = std::fs::read_to_string(assets().join("photos/johns/pairs.csv")).unwrap();
    let pairs = dir.path().join("pairs.csv");
    let few: Vec<String> = all
        .lines()
        .filter(|l| l.contains(".jpg"))
        .take(8)
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            let abs = |p: &str| assets().join("photos/johns").join(p.trim()).display().to_string();
            format!("{},{},{}", abs(f[0]), abs(f[1]), f[2].trim())
        })
        .collect();
    std::fs::write(&pairs, few.join("\n")).unwrap();
    let (code, _, err) = compare(&[
        "--pairs",
        pairs.to_str().unwrap(),
        "--flamegraph",
        svg.to_str().unwrap(),
        "--pprof",
        pb.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("CPU profile:"), "{err}");
    let svg = std::fs::read_to_string(&svg).unwrap();
    assert!(
        svg.contains("<svg") && svg.contains("facepool::"),
        "no pipeline frames"
    );
    let pb = std::fs::read(&pb).unwrap();
    // The string table of the profile holds the function names.
    let names = String::from_utf8_lossy(&pb);
    assert!(
        names.contains("facepool::"),
        "{} bytes, no pipeline frames",
        pb.len()
    );

    // An output that cannot be written is a clear error, exit code 2.
    let bad = dir.path().join("no/such/dir/run.svg");
    let (a, b) = (photo("John_Simm", 0), photo("John_Simm", 1));
    let (code, _, err) = compare(&["--flamegraph", bad.to_str().unwrap(), &a, &b]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("run.svg"), "{err}");
}

/// The similarity of each pair line, in order.
fn similarities(out: &str) -> Vec<f64> {
    json_lines(out)
        .iter()
        .filter_map(|v| v["similarity"].as_f64())
        .collect()
}

#[test]
fn backends_give_the_same_verdicts_and_say_which_ran() {
    // Every pair of three people's first two photos: same and different.
    let dir = common::TempDir::new("backend-pairs");
    let photos: Vec<String> = ["John_Savage", "John_Simm", "John_Salley"]
        .iter()
        .flat_map(|p| [photo(p, 0), photo(p, 1)])
        .collect();
    let mut lines = String::new();
    for i in 0..photos.len() {
        for j in i + 1..photos.len() {
            lines += &format!("{},{},{}\n", photos[i], photos[j], u8::from(i / 2 == j / 2));
        }
    }
    let pairs = dir.path().join("pairs.csv");
    std::fs::write(&pairs, lines).unwrap();
    let pairs = pairs.display().to_string();

    let mut runs = Vec::new();
    for backend in ["tract", "ort"] {
        let (code, out, err) = compare(&["--pairs", &pairs, "--json", "--backend", backend]);
        assert_eq!(code, 0, "{err}");
        assert!(err.contains(&format!("embedding backend: {backend}")), "{err}");
        let summary = json_lines(&out).last().unwrap()["summary"].clone();
        assert_eq!(summary["backend"], backend);
        assert_eq!(summary["accuracy"], 1.0, "{out}");
        let verdicts: Vec<bool> = json_lines(&out)
            .iter()
            .filter_map(|v| v["same"].as_bool())
            .collect();
        assert_eq!(verdicts.len(), 15);
        runs.push((verdicts, similarities(&out)));
    }
    assert_eq!(runs[0].0, runs[1].0, "the backends decided differently");
    for (t, o) in runs[0].1.iter().zip(&runs[1].1) {
        assert!((t - o).abs() < 2e-3, "tract {t} vs ort {o}");
    }
}

#[test]
fn a_missing_runtime_is_an_error_for_ort_and_a_fallback_for_auto() {
    let dir = common::TempDir::new("cli-no-ort");
    let missing = dir.path().join("libonnxruntime.so.1").display().to_string();
    let (a, b) = (photo("John_Savage", 0), photo("John_Savage", 1));
    let (code, out, err) = compare(&["--backend", "ort", "--onnxruntime", &missing, &a, &b]);
    assert_eq!(code, 2, "{out}");
    assert!(
        err.contains("ONNX Runtime library") && err.contains(&missing),
        "{err}"
    );
    assert!(out.is_empty());

    let (code, out, err) = compare(&["--backend", "auto", "--onnxruntime", &missing, &a, &b]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("embedding backend: tract (cuda passed over: "),
        "{err}"
    );
    assert!(err.contains("; ort passed over: ONNX Runtime library"), "{err}");
    assert!(err.contains(&missing), "{err}");
    assert!(out.contains("same"), "{out}");

    let (code, _, err) = compare(&["--backend", "gpu", &a, &b]);
    assert_eq!(code, 2);
    assert!(err.contains("unknown backend"), "{err}");
}

/// The test machines have no NVIDIA GPU: `--backend cuda` is a start-up
/// error that says what is missing (exit 2, nothing on stdout), and `auto`
/// says why it passed CUDA over and runs on ONNX Runtime.
#[test]
fn cuda_without_a_gpu_is_a_clear_error_and_auto_passes_it_over() {
    let (a, b) = (photo("John_Savage", 0), photo("John_Savage", 1));
    let (code, out, err) = compare(&["--backend", "cuda", &a, &b]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(out.is_empty(), "{out}");
    assert!(err.contains("CUDA backend unavailable"), "{err}");
    // It names the missing piece: the driver library, the device or a
    // CUDA library.
    assert!(
        err.contains("libcuda") || err.contains("device") || err.contains("sub-library"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");

    let (code, out, err) = compare(&["--backend", "auto", &a, &b]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("embedding backend: ort ("), "{err}");
    assert!(
        err.contains("cuda passed over: CUDA backend unavailable"),
        "{err}"
    );
    assert!(out.contains("same"), "{out}");
}

/// The verdict lines of a `--json` pairs run, and its summary.
fn verdicts(out: &str) -> (Vec<serde_json::Value>, serde_json::Value) {
    let mut lines: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let summary = lines.pop().map(|s| s["summary"].clone()).unwrap_or_default();
    (lines, summary)
}

#[test]
fn dedup_gives_the_verdicts_of_no_dedup_on_the_labelled_pairs() {
    let pairs = assets().join("photos/johns/pairs.csv").display().to_string();
    let (code, out, err) = compare(&["--pairs", &pairs, "--json"]);
    assert_eq!(code, 0, "{err}");
    let (once, s1) = verdicts(&out);
    let (code, out, err) = compare(&["--pairs", &pairs, "--json", "--no-dedup"]);
    assert_eq!(code, 0, "{err}");
    let (every, s2) = verdicts(&out);
    assert_eq!(once.len(), 1485);
    assert_eq!(once.len(), every.len());
    for (a, b) in once.iter().zip(&every) {
        assert_eq!((&a["a"], &a["b"], &a["same"]), (&b["a"], &b["b"], &b["same"]));
        assert_eq!(a["similarity"], b["similarity"], "{a} / {b}");
    }
    // 55 files, two of which hold the same bytes: 54 distinct images.
    assert_eq!(s1["images_embedded"].as_u64(), Some(54), "{s1}");
    assert_eq!(s2["images_embedded"].as_u64(), Some(2970), "{s2}");
    assert_eq!(
        (s1["accuracy"].as_f64(), s2["accuracy"].as_f64()),
        (Some(1.0), Some(1.0))
    );
}

#[test]
fn one_image_named_through_two_paths_is_embedded_once() {
    let dir = common::TempDir::new("dedup-paths");
    let sub = dir.path().join("sub");
    std::fs::create_dir_all(&sub).unwrap();
    std::fs::copy(photo("John_Savage", 0), dir.path().join("a.jpg")).unwrap();
    // The same bytes under another name, and the same file by two spellings.
    std::fs::copy(photo("John_Savage", 0), sub.join("copy.jpg")).unwrap();
    std::fs::copy(photo("John_Savage", 1), dir.path().join("b.jpg")).unwrap();
    std::fs::write(
        dir.path().join("pairs.csv"),
        "a.jpg,b.jpg,1\nsub/copy.jpg,b.jpg,1\nsub/../a.jpg,./b.jpg,1\n",
    )
    .unwrap();
    let pairs = dir.path().join("pairs.csv").display().to_string();
    let (code, out, err) = compare(&["--pairs", &pairs, "--json"]);
    assert_eq!(code, 0, "{err}");
    let (lines, s) = verdicts(&out);
    assert_eq!(lines.len(), 3);
    assert!(lines.iter().all(|l| l["same"] == true), "{out}");
    assert_eq!(s["images_embedded"].as_u64(), Some(2), "{s}");
    // A changed file is a new image, not a stale one.
    std::fs::copy(photo("John_Simm", 0), sub.join("copy.jpg")).unwrap();
    let (_, out, _) = compare(&["--pairs", &pairs, "--json"]);
    let (lines, s) = verdicts(&out);
    assert_eq!(lines[1]["same"], false, "{out}");
    assert_eq!(s["images_embedded"].as_u64(), Some(3), "{s}");
}

#[test]
fn a_pairs_line_too_long_is_an_error_in_its_place() {
    let dir = common::TempDir::new("long-line");
    std::fs::copy(photo("John_Savage", 0), dir.path().join("a.jpg")).unwrap();
    std::fs::copy(photo("John_Savage", 1), dir.path().join("b.jpg")).unwrap();
    let long = "x".repeat(100_000);
    std::fs::write(
        dir.path().join("pairs.csv"),
        format!("a.jpg,b.jpg\n{long},b.jpg\na.jpg,b.jpg\n"),
    )
    .unwrap();
    let pairs = dir.path().join("pairs.csv").display().to_string();
    let (code, out, _) = compare(&["--pairs", &pairs, "--json"]);
    assert_eq!(code, 1);
    let (lines, s) = verdicts(&out);
    assert_eq!(lines.len(), 3, "{out}");
    assert_eq!(
        (lines[0]["same"].clone(), lines[2]["same"].clone()),
        (true.into(), true.into())
    );
    assert!(
        lines[1]["error"].as_str().unwrap().contains("longer than"),
        "{}",
        lines[1]
    );
    assert_eq!(s["failed"].as_u64(), Some(1));
}

/// The decode limits are flags: an image over them is that pair's error
/// (exit 1), with the limit named.
#[test]
fn decode_limits_are_flags() {
    let (a, b) = (photo("John_Savage", 0), photo("John_Savage", 1));
    let (code, out, err) = compare(&["--max-image-bytes", "100", &a, &b]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("more than the limit of 100"), "{out}");
    let (code, out, _) = compare(&["--max-image-side", "20", &a, &b]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("image too large"), "{out}");
    let (code, out, err) = compare(&["--max-image-pixels", "100000000", &a, &b]);
    assert_eq!(code, 0, "{out}{err}");
}
