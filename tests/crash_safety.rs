//! Crash safety of the index file: a writer process saving in a loop is
//! killed with SIGKILL at random instants, many times, and after each kill
//! the file is either absent (no save finished yet) or exactly one of the
//! contents the writer saves, never a torn mix; the temp files that killed
//! writers leave are removed by the next save.
//!
//! The writer is this test binary itself, re-run with `CHILD_ENV` set to
//! the file's path and told to run only `crash_writer_child`.
//!
//! The HTTP service's gallery saves through `Index::save` (its writer
//! thread calls it under a lock, `src/gallery/file.rs`), so this covers
//! the gallery's file too.
#![cfg(feature = "index")]

use crate::common;

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Rng, TempDir};
use facepool::index::Index;

/// Set in a child to the path it saves to.
const CHILD_ENV: &str = "FACEPOOL_CRASH_WRITER";
/// What the writer prints once it is about to save, and after each save.
const READY: &str = "crash-writer-ready";
const SAVED: &str = "crash-writer-saved";
/// Kills in one run.
const KILLS: usize = 200;
/// The largest random delay between the writer's start and its kill.
const MAX_DELAY_MS: u64 = 30;
const DIM: usize = 64;
const FILE: &str = "gallery.idx";

/// A deterministic vector, never zero.
fn vector(seed: u64) -> Vec<f32> {
    let mut r = Rng::new(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    (0..DIM)
        .map(|_| (r.below(2001) as f32 - 1000.0) / 1000.0 + 0.001)
        .collect()
}

/// The contents the writer alternates between: sizes differ by orders of
/// magnitude (one vector, a hundred, three chunks of the index's rows), so
/// a file holding a start of one and an end of another cannot pass.
fn contents() -> Vec<Index> {
    let small = Index::new(DIM).unwrap();
    small.insert("only", &vector(1)).unwrap();

    let medium = Index::new(DIM).unwrap();
    for p in 0..40u64 {
        let vs: Vec<Vec<f32>> = (0..3).map(|i| vector(100 + p * 3 + i)).collect();
        let refs: Vec<&[f32]> = vs.iter().map(Vec::as_slice).collect();
        let meta = format!("{{\"n\":{p}}}");
        medium.add(&format!("person-{p}"), &refs, Some(&meta)).unwrap();
    }

    let large = Index::new(DIM).unwrap();
    let vs: Vec<(String, Vec<f32>)> = (0..3000u64)
        .map(|i| (format!("p{}", i % 700), vector(10_000 + i)))
        .collect();
    large
        .insert_many(vs.iter().map(|(id, v)| (id.as_str(), v.as_slice())))
        .unwrap();
    vec![small, medium, large]
}

fn temps(dir: &Path) -> usize {
    let prefix = format!(".{FILE}.tmp.");
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with(&prefix)
        })
        .count()
}

/// Not a test on its own: the writer that the test below runs and kills.
/// Without `CHILD_ENV` it returns at once.
#[test]
fn crash_writer_child() {
    let Ok(path) = std::env::var(CHILD_ENV) else {
        return;
    };
    let path = std::path::PathBuf::from(path);
    let all = contents();
    println!("{READY}");
    // A guard in case the parent is gone: the writer never outlives it long.
    let stop = Instant::now() + Duration::from_secs(30);
    let mut i = 0usize;
    while Instant::now() < stop {
        all[i % all.len()].save(&path).unwrap();
        println!("{SAVED} {}", i % all.len());
        i += 1;
    }
}

#[test]
fn index_save_survives_sigkill_at_any_instant() {
    let all = contents();
    let refs_dir = TempDir::new("crash-refs");
    let expected: Vec<Vec<u8>> = all
        .iter()
        .enumerate()
        .map(|(i, idx)| {
            let p = refs_dir.path().join(format!("{i}.idx"));
            idx.save(&p).unwrap();
            std::fs::read(&p).unwrap()
        })
        .collect();
    // Saving is deterministic, and the contents are distinct.
    for (i, idx) in all.iter().enumerate() {
        let again = refs_dir.path().join(format!("{i}-again.idx"));
        idx.save(&again).unwrap();
        assert_eq!(std::fs::read(&again).unwrap(), expected[i]);
    }
    let mut sizes: Vec<usize> = expected.iter().map(Vec::len).collect();
    sizes.sort_unstable();
    sizes.dedup();
    assert_eq!(sizes.len(), expected.len());

    let dir = TempDir::new("crash-writer");
    let target = dir.path().join(FILE);
    let seed = std::env::var("FACEPOOL_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    eprintln!("FACEPOOL_CRASH_SEED={seed}");
    let mut rng = Rng::new(seed);
    let exe = std::env::current_exe().unwrap();

    let mut confirmed_saves = 0usize;
    // Writers since (and including) the last one seen to finish a save:
    // each may leave one temp file, and a finished save removes the older.
    let mut since_clean = 0usize;
    let mut kills_mid_write = 0usize;
    let mut seen = vec![0usize; expected.len()];
    for kill in 0..KILLS {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "crash_safety::crash_writer_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, &target)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        loop {
            line.clear();
            if out.read_line(&mut line).unwrap() == 0 {
                let mut err = String::new();
                let _ = child.stderr.take().unwrap().read_to_string(&mut err);
                panic!("kill {kill}: the writer exited before it was ready: {err}");
            }
            // libtest prints `test crash_writer_child ... ` before it.
            if line.contains(READY) {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(rng.below(MAX_DELAY_MS + 1)));
        child.kill().unwrap(); // SIGKILL
        let status = child.wait().unwrap();
        let mut err = String::new();
        child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
        assert!(!err.contains("panicked"), "kill {kill}: the writer failed: {err}");
        assert!(!status.success(), "kill {kill}: the writer ended on its own");
        let mut rest = String::new();
        out.read_to_string(&mut rest).unwrap();
        let saves = rest.lines().filter(|l| l.contains(SAVED)).count();
        confirmed_saves += saves;
        since_clean = if saves > 0 { 1 } else { since_clean + 1 };

        match std::fs::read(&target) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                assert_eq!(
                    confirmed_saves, 0,
                    "kill {kill}: the file vanished after a save had finished"
                );
            }
            Err(e) => panic!("kill {kill}: cannot read the file: {e}"),
            Ok(bytes) => {
                let which = expected.iter().position(|e| *e == bytes).unwrap_or_else(|| {
                    panic!(
                        "kill {kill} (seed {seed}): the file ({} bytes) is none of the saved contents",
                        bytes.len()
                    )
                });
                seen[which] += 1;
                let loaded = Index::load(&target).unwrap();
                assert_eq!(loaded.vectors(), all[which].vectors());
                assert_eq!(loaded.ids(), all[which].ids());
            }
        }
        let left = temps(dir.path());
        if left > 0 {
            kills_mid_write += 1;
        }
        assert!(
            left <= since_clean,
            "kill {kill}: {left} temp files left, but at most {since_clean} writers died since a save finished"
        );
    }
    eprintln!(
        "{KILLS} kills: {confirmed_saves} saves finished, final contents seen {seen:?}, \
         {kills_mid_write} kills left a temp file (killed mid-write)"
    );
    // The writer spends nearly all its time inside a save, so kills land
    // mid-write; without any, this test would prove nothing.
    assert!(kills_mid_write > 0, "no kill landed inside a save");
    assert!(confirmed_saves > 0, "no writer ever finished a save");

    // The next save removes what killed writers left.
    all[0].save(&target).unwrap();
    assert_eq!(temps(dir.path()), 0, "a finished save leaves no temp files");
    assert_eq!(std::fs::read(&target).unwrap(), expected[0]);
}

/// A temp file being written (its writer's lock held) is not removed by a
/// concurrent save of the same path; an abandoned one (lock free) is.
#[test]
fn save_removes_only_abandoned_temp_files() {
    let dir = TempDir::new("crash-temps");
    let target = dir.path().join(FILE);
    let idx = &contents()[0];
    let abandoned = dir.path().join(format!(".{FILE}.tmp.1.2"));
    std::fs::write(&abandoned, b"half a file").unwrap();
    let busy = dir.path().join(format!(".{FILE}.tmp.3.4"));
    let held = std::fs::File::create(&busy).unwrap();
    held.lock().unwrap();
    let other = dir.path().join(".other.idx.tmp.5.6");
    std::fs::write(&other, b"not ours").unwrap();

    idx.save(&target).unwrap();
    assert!(!abandoned.exists(), "an abandoned temp file is removed");
    assert!(busy.exists(), "a temp file under its writer's lock is kept");
    assert!(other.exists(), "another file's temp files are not touched");
    drop(held);
    idx.save(&target).unwrap();
    assert!(!busy.exists(), "once its writer is gone, it is removed");
    assert_eq!(Index::load(&target).unwrap().vectors(), 1);
}
