//! 1:N identify through `FaceService` on the real models and the labelled
//! photos: enroll 5 photos per person, identify the other 6, and a person
//! never enrolled comes back unknown.
#![cfg(feature = "face")]

use crate::common;

use std::path::PathBuf;
use std::sync::Arc;

use common::{assets, cell_of, grid_frame, johns};
use facepool::face::FaceMode;
use facepool::index::{Index, Match, ScanMethod, SearchOptions, Vectors};
use facepool::service::{
    block_on, Call, Cost, ErrorKind, FaceConfig, FaceService, FrameVerdict, ImageSource, ReviewRequest,
    ServiceError,
};

fn sources(paths: &[PathBuf]) -> Vec<ImageSource> {
    paths.iter().cloned().map(ImageSource::Path).collect()
}

#[test]
fn enroll_five_identify_six_and_strangers_are_unknown() {
    let mut svc = FaceService::start(FaceConfig::from_assets(&assets())).unwrap();
    let people = johns();
    assert_eq!(people.len(), 5);
    assert!(people.iter().all(|(_, f)| f.len() == 11));
    // The last person is never enrolled.
    let (enrolled, stranger) = people.split_at(4);
    for (name, photos) in enrolled {
        let n = svc
            .enroll(name, sources(&photos[..5]), Some("test"), false)
            .unwrap();
        assert_eq!(n.faces, 5);
    }
    assert_eq!((svc.index().len(), svc.index().vectors()), (4, 20));

    let (mut right, mut total) = (0, 0);
    for (name, photos) in enrolled {
        for p in &photos[5..] {
            let id = svc.identify(ImageSource::Path(p.clone()), 3).unwrap();
            total += 1;
            let best = id.best.as_ref().map(|m| &*m.id);
            if best == Some(name.as_str()) {
                right += 1;
            } else {
                eprintln!("{}: {best:?}, matches {:?}", p.display(), id.matches);
            }
            assert_eq!(id.matches.len(), 3);
            assert!(id.timings.total >= id.timings.search);
        }
    }
    eprintln!("identify top-1: {right}/{total}");
    // Every identify recorded its search and its whole time; every face its
    // stages; every model run its batch size.
    let m = svc.metrics().snapshot();
    use facepool::metrics::Stage;
    assert_eq!(m.summary(Stage::Search).count, 24);
    assert_eq!(m.summary(Stage::EndToEnd).count, 24);
    assert_eq!(m.summary(Stage::Inference).count, 20 + 24);
    assert_eq!(m.summary(Stage::PoolWait).count, 20 + 24);
    assert!(m.batch_summary().count >= 1 && m.batch_summary().max <= 32.0);
    assert!(m.summary(Stage::EndToEnd).max >= m.summary(Stage::Inference).min);
    assert_eq!(total, 24);
    assert_eq!(right, total, "top-1 accuracy {right}/{total}");

    for p in &stranger[0].1 {
        let id = svc.identify(ImageSource::Path(p.clone()), 1).unwrap();
        assert!(
            id.best.is_none(),
            "{} (never enrolled) identified as {:?}",
            p.display(),
            id.best
        );
        assert!(id.matches[0].similarity < id.threshold);
    }

    // The index survives a save and load, and answers the same.
    let dir = std::env::temp_dir().join(format!("facepool-identify-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("people.fpi");
    svc.index().save(&file).unwrap();
    let probe = ImageSource::Path(enrolled[1].1[7].clone());
    let before = svc.identify(probe.clone(), 4).unwrap();
    svc.set_index(Index::load(&file).unwrap()).unwrap();
    let after = svc.identify(probe.clone(), 4).unwrap();
    assert_eq!(before.matches, after.matches);
    assert_eq!(after.best.unwrap().meta.as_deref(), Some("test"));
    std::fs::remove_dir_all(&dir).unwrap();

    // Removed people are no longer found.
    assert_eq!(svc.remove(&enrolled[1].0).unwrap(), 5);
    let gone = svc.identify(probe, 4).unwrap();
    assert!(gone.best.is_none(), "{:?}", gone.best);
    assert!(gone.matches.iter().all(|m| *m.id != *enrolled[1].0));

    // Enroll is all or nothing: a bad image names itself and adds nothing.
    let mut images = sources(&stranger[0].1[..2]);
    images.insert(1, ImageSource::Bytes(Arc::from(&b"not an image"[..])));
    let before = svc.index().vectors();
    match svc.enroll(&stranger[0].0, images, None, false) {
        Err(ServiceError::Image { index: 1, .. }) => {}
        other => panic!("expected image 1 to fail: {other:?}"),
    }
    assert_eq!(svc.index().vectors(), before);
    assert!(!svc.index().contains(&stranger[0].0));
    // Replacing keeps only the new faces.
    assert_eq!(
        svc.enroll(&enrolled[0].0, sources(&enrolled[0].1[..2]), None, true)
            .unwrap()
            .faces,
        2
    );
    assert_eq!(
        svc.enroll(&enrolled[0].0, sources(&enrolled[0].1[2..3]), None, false)
            .unwrap()
            .faces,
        3
    );
    // An index of another model's size is refused.
    assert!(matches!(
        svc.set_index(Index::new(7).unwrap()),
        Err(ServiceError::Index(_))
    ));
    svc.shutdown(std::time::Duration::from_secs(10));
}

/// The compact scan on real face embeddings: each of the 55 photos
/// searched in a gallery of all of them hidden among 8,192 random vectors
/// (so that the default scan is the compact one on a CPU with VNNI), with
/// the gallery's vectors in memory and left in its file. Every method
/// gives the exact scan's answer, and after the photo itself the best
/// match is another photo of the same person (top-1 1.00).
#[test]
fn the_compact_scan_finds_the_same_person_on_real_embeddings() {
    let svc = FaceService::start(FaceConfig::from_assets(&assets())).unwrap();
    let mut photos = Vec::new();
    let mut emb = Vec::new();
    for (name, files) in johns() {
        let faces = svc.embed_all(sources(&files)).unwrap();
        for (f, r) in files.iter().zip(faces) {
            photos.push((name.clone(), f.clone()));
            emb.push(r.unwrap().0.embedding.0);
        }
    }
    assert_eq!(photos.len(), 55);
    let dim = emb[0].len();
    let index = Index::new(dim).unwrap();
    let mut rng = fastrand::Rng::with_seed(55);
    let noise: Vec<(String, Vec<f32>)> = (0..8 * 1024)
        .map(|i| {
            (
                format!("noise-{i}"),
                (0..dim).map(|_| rng.f32() * 2.0 - 1.0).collect(),
            )
        })
        .collect();
    index
        .insert_many(noise.iter().map(|(i, v)| (i.as_str(), v.as_slice())))
        .unwrap();
    let ids: Vec<String> = photos
        .iter()
        .enumerate()
        .map(|(i, (n, _))| format!("{n}/{i}"))
        .collect();
    index
        .insert_many(ids.iter().map(String::as_str).zip(emb.iter().map(Vec::as_slice)))
        .unwrap();
    let dir = std::env::temp_dir().join(format!("facepool-identify-compact-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("gallery.fpi");
    index.save(&file).unwrap();
    let in_file = Index::load_with(&file, Vectors::InFile).unwrap();
    let queries: Vec<&[f32]> = emb.iter().map(Vec::as_slice).collect();
    let exact = index
        .search_batch(&queries, SearchOptions::top(2).method(ScanMethod::Exact))
        .unwrap();
    for (i, top) in exact.iter().enumerate() {
        // The photo itself is in the top two (first, or tied at 1.0 with
        // a duplicate photo); the best other one is the same person.
        assert!(top.iter().any(|m| *m.id == *ids[i]), "{top:?}");
        let other = top.iter().find(|m| *m.id != *ids[i]).map(|m| &*m.id);
        let name = other.and_then(|o| o.split_once('/')).map(|(n, _)| n);
        assert_eq!(
            name,
            Some(photos[i].0.as_str()),
            "{}: {top:?}",
            photos[i].1.display()
        );
    }
    // The same people, and the same similarities up to the rounding of
    // a matrix product against a dot product.
    let same = |got: &[Match], want: &[Match], m: ScanMethod| {
        let ids = |v: &[Match]| v.iter().map(|m| m.id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(got), ids(want), "{m:?}");
        for (g, w) in got.iter().zip(want) {
            assert!((g.similarity - w.similarity).abs() < 1e-5, "{m:?}: {g:?} {w:?}");
        }
    };
    for gallery in [&index, &in_file] {
        for m in [ScanMethod::Auto, ScanMethod::Compact] {
            let opts = SearchOptions::top(2).method(m);
            let batch = gallery.search_batch(&queries, opts).unwrap();
            for ((q, want), got) in queries.iter().zip(&exact).zip(&batch) {
                same(got, want, m);
                same(&gallery.search_batch(&[q], opts).unwrap()[0], want, m);
            }
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
    svc.shutdown(std::time::Duration::from_secs(10));
}

/// A service that sheds load refuses a request at once, with
/// `Overloaded`, while what it admitted fills it, before any work is done
/// for it: admission is the front door, the pool and the batcher only a
/// backstop.
#[test]
fn a_shedding_service_refuses_while_full() {
    let mut config = FaceConfig::from_assets(&assets());
    config.queue = 1;
    // The first face waits for its batch until the service shuts down, so
    // the service stays full for as long as the test looks.
    config.cpu.batch_max = 64;
    config.cpu.batch_delay = std::time::Duration::from_secs(3600);
    let svc = FaceService::start(config).unwrap();
    let people = johns();
    let photo = |i: usize| ImageSource::Path(people[i].1[0].clone());
    let permit = svc.admission().try_acquire(photo(0).cost()).unwrap();
    let first = svc.prepare(photo(0), permit, None).unwrap();
    let first = svc.embed_first(first).unwrap();
    for i in 1..3 {
        match block_on(svc.identify_async(photo(i), 1, Call::refuse_when_full())) {
            Err(e) if e.kind() == ErrorKind::Overloaded => {}
            Err(e) => panic!("expected Overloaded, got {e}"),
            Ok(_) => panic!("admitted past a full service"),
        }
    }
    let (pool, batch) = (svc.pool_stats(), svc.batch_stats());
    assert_eq!(pool.submitted, 1, "refused before the pool");
    assert_eq!(
        (batch.queued, batch.rejected),
        (1, 0),
        "refused before the batcher"
    );
    assert_eq!(svc.admission().stats().refused_full, 2);
    drop(first);
    drop(svc);
}

/// Verify and identify score the same pair of faces the same, to the bit:
/// both are the one dot product of the two normalised embeddings
/// (`facepool::vector`), and the index keeps an embedding as it was.
#[test]
fn verify_and_identify_give_the_same_similarity() {
    let svc = FaceService::start(FaceConfig::from_assets(&assets())).unwrap();
    let people = johns();
    let (a, b) = (&people[0].1[0], &people[0].1[3]);
    let c = &people[1].1[2];
    svc.enroll("a", sources(std::slice::from_ref(a)), None, false)
        .unwrap();
    for probe in [b, c] {
        let v = svc
            .verify(ImageSource::Path(a.clone()), ImageSource::Path(probe.clone()))
            .unwrap();
        let id = svc.identify(ImageSource::Path(probe.clone()), 1).unwrap();
        assert_eq!(
            id.matches[0].similarity.to_bits(),
            v.similarity.to_bits(),
            "{}: identify {} against verify {}",
            probe.display(),
            id.matches[0].similarity,
            v.similarity
        );
        assert_eq!(id.best.is_some(), v.same);
    }
    svc.shutdown(std::time::Duration::from_secs(10));
}

/// Every face of a frame identified: four people in one frame (one never
/// enrolled) and `max_faces` 3 give three faces, largest first, each the
/// person of its photo and the stranger unknown; plain identify answers
/// the first of them. A review of every face lists everyone of the gallery
/// it saw, and finds a reference's person who is not the largest face.
/// Admission gets back every face, those admitted and never found
/// included.
#[test]
fn every_face_of_a_frame_is_identified_up_to_max_faces() {
    let mut cfg = FaceConfig::from_assets(&assets());
    cfg.find.mode = FaceMode::Detect;
    cfg.max_faces = 3;
    // The hard cap, 4 faces a request: the identity check of every face
    // below fits, the frame admitted for its 3 and the reference for 1
    // (only its largest face is compared).
    cfg.queue = 4;
    let svc = FaceService::start(cfg).unwrap();
    let people = johns();
    // The last person is the stranger, as above.
    let grid = [&people[0], &people[1], &people[4], &people[2]];
    for (name, photos) in [&people[0], &people[1], &people[2]] {
        svc.enroll(name, sources(&photos[..4]), None, false).unwrap();
    }
    let frame: Arc<[u8]> = grid_frame(&grid.iter().map(|(_, p)| p[6].clone()).collect::<Vec<_>>()).into();

    let ids = svc.identify_all(ImageSource::Bytes(frame.clone()), 2).unwrap();
    assert_eq!(ids.faces.len(), 3, "four faces, max_faces 3");
    let area = |b: [f32; 4]| (b[2] - b[0]) * (b[3] - b[1]);
    let boxes: Vec<[f32; 4]> = ids.faces.iter().map(|f| f.bbox.unwrap()).collect();
    assert!(
        boxes.windows(2).all(|w| area(w[0]) >= area(w[1])),
        "largest first: {boxes:?}"
    );
    let mut cells = Vec::new();
    for f in &ids.faces {
        let cell = cell_of(f.bbox.unwrap());
        let want = (cell != 2).then(|| grid[cell].0.as_str());
        assert_eq!(
            f.best.as_ref().map(|m| &*m.id),
            want,
            "the face in cell {cell}: {:?}",
            f.matches
        );
        assert_eq!(f.matches.len(), 2);
        cells.push(cell);
    }
    cells.sort();
    cells.dedup();
    assert_eq!(cells.len(), 3, "three faces in three photos");
    assert!(ids.timings.total >= ids.timings.search);

    let one = svc.identify(ImageSource::Bytes(frame.clone()), 2).unwrap();
    assert_eq!(one.bbox, ids.faces[0].bbox);
    assert_eq!(one.matches, ids.faces[0].matches);

    // A watch list of every face: everyone enrolled among the three.
    let review = |reference: Option<ImageSource>, all_faces| {
        svc.review(ReviewRequest {
            video: "v".into(),
            frames: vec![ImageSource::Bytes(frame.clone())],
            reference,
            all_faces,
        })
        .unwrap()
    };
    let mut seen: Vec<String> = ids
        .faces
        .iter()
        .filter_map(|f| f.best.as_ref().map(|m| m.id.to_string()))
        .collect();
    seen.sort();
    match &review(None, true).frames[0] {
        FrameVerdict::Gallery { best, people } => {
            let mut ids: Vec<String> = people.iter().map(|m| m.id.to_string()).collect();
            ids.sort();
            assert_eq!(ids, seen);
            assert!(people.windows(2).all(|w| w[0].similarity >= w[1].similarity));
            assert_eq!(best.as_ref(), people.first());
        }
        other => panic!("{other:?}"),
    }
    match &review(None, false).frames[0] {
        FrameVerdict::Gallery { people, .. } => assert!(people.len() <= 1, "{people:?}"),
        other => panic!("{other:?}"),
    }
    // The identity check of the person in the smallest face found.
    let last = cell_of(boxes[2]);
    let reference = ImageSource::Path(grid[last].1[7].clone());
    let checked = review(Some(reference), true);
    assert!(checked.passes, "{:?}", checked.frames);

    assert_eq!(svc.admission().stats().in_use, Cost::default());
    svc.shutdown(std::time::Duration::from_secs(10));
}

/// Frames that share detector runs (`detect_batch`: decoding on the pool,
/// the detector on a thread of its own, alignment on the pool again) find
/// the faces and the people that a worker running the detector on its own
/// frame finds, with many callers at once; runs do hold several frames.
/// Every call gets its one outcome (a corrupt image its decoding error, a
/// passed deadline its deadline, a chip its face without the detector),
/// and admission ends with nothing held.
#[test]
fn frames_sharing_detector_runs_find_what_one_frame_a_run_finds() {
    let start = |detect_batch: usize| {
        let mut cfg = FaceConfig::from_assets(&assets());
        cfg.find.mode = FaceMode::Auto;
        cfg.max_faces = 4;
        cfg.cpu.detect_batch = detect_batch;
        // Long enough for the callers' frames to gather.
        cfg.cpu.batch_delay = std::time::Duration::from_millis(30);
        let svc = FaceService::start(cfg).unwrap();
        for (name, photos) in &johns()[..3] {
            svc.enroll(name, sources(&photos[..4]), None, false).unwrap();
        }
        svc
    };
    let (alone, shared) = (start(0), start(8));
    assert!(alone.detect_stats().is_none());
    let people = johns();
    let frames: Vec<Arc<[u8]>> = (0..12)
        .map(|i| {
            let grid: Vec<PathBuf> = (0..1 + i % 4)
                .map(|k| people[(i + k) % 5].1[5 + k].clone())
                .collect();
            grid_frame(&grid).into()
        })
        .collect();
    let found = |svc: &FaceService, frame: &Arc<[u8]>| {
        let ids = svc.identify_all(ImageSource::Bytes(frame.clone()), 1).unwrap();
        ids.faces
            .iter()
            .map(|f| (f.bbox.unwrap(), f.best.as_ref().map(|m| m.id.to_string())))
            .collect::<Vec<_>>()
    };
    let want: Vec<_> = frames.iter().map(|f| found(&alone, f)).collect();
    assert!(want.iter().map(Vec::len).sum::<usize>() >= 24, "{want:?}");
    // Every frame from a caller of its own, all at once.
    let got: Vec<_> = std::thread::scope(|s| {
        let calls: Vec<_> = frames.iter().map(|f| s.spawn(|| found(&shared, f))).collect();
        calls.into_iter().map(|c| c.join().unwrap()).collect()
    });
    for (i, (w, g)) in want.iter().zip(&got).enumerate() {
        assert_eq!(w.len(), g.len(), "frame {i}: faces");
        for ((wb, wid), (gb, gid)) in w.iter().zip(g) {
            let off = wb.iter().zip(gb).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
            assert!(off <= 0.5, "frame {i}: boxes {wb:?} and {gb:?}");
            assert_eq!(wid, gid, "frame {i}: who");
        }
    }
    let stats = shared.detect_stats().unwrap();
    assert_eq!(
        stats.delivered, 12,
        "every frame detected (the enrolled photos are chips)"
    );
    assert!(
        stats.batches < stats.delivered,
        "no run held two frames: {stats:?}"
    );

    // A chip takes no detector run; a corrupt image and a passed deadline
    // get their own errors.
    let (a, b) = (people[0].1[0].clone(), people[0].1[1].clone());
    let v = shared.verify(ImageSource::Path(a), ImageSource::Path(b)).unwrap();
    assert!(v.same, "{v:?}");
    assert_eq!(shared.detect_stats().unwrap().delivered, 12);
    let junk: Arc<[u8]> = Arc::from(&b"\xff\xd8\xff not a jpeg"[..]);
    let e = shared.identify_all(ImageSource::Bytes(junk), 1).unwrap_err();
    assert!(matches!(e, ServiceError::Face(_)), "{e:?}");
    // Due before the detector's run can start (it waits 30 ms for frames),
    // admitted beforehand (admission would refuse so short a deadline).
    let frame = ImageSource::Bytes(frames[3].clone());
    let permit = shared.admission().try_acquire(frame.cost_up_to(4)).unwrap();
    let soon = Call::wait()
        .with_permit(permit)
        .within(std::time::Duration::from_millis(5));
    let e = block_on(shared.identify_all_async(frame, 1, soon)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Deadline, "{e}");

    // The frame past its deadline gives its faces back when its stage
    // drops it (at the latest, at the detector's next run).
    for svc in [&alone, &shared] {
        common::wait_until("admission holds nothing", || {
            svc.admission().stats().in_use == Cost::default()
        });
        svc.shutdown(std::time::Duration::from_secs(10));
    }
}
