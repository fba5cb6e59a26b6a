//! The preparation path of every image the service takes (decode → find
//! faces → align, as `FaceService` runs it on a pool worker), on the real
//! detector and landmark models, in each face mode:
//! - `aligned`: any decodable image is one chip (no detector);
//! - `detect`: faces above the score threshold, each with its box inside
//!   the image, or `NoFace`;
//! - `auto`: whichever of the two the image resolves to, largest face only
//!   (run when it resolves to a chip; resolved to `detect`, it is the
//!   detect run with fewer faces, so the model is not run twice).
//!
//! Every face is a model input of exactly `3 × 112 × 112` values in the
//! range the preprocessing maps pixels to. Decode errors are the decode
//! target's business: here they only have to be decode errors.
#![no_main]

use std::cell::RefCell;

use facepool::face::{
    decode, find_faces, DecodeLimits, DetectModels, Detector, FaceError, FaceMode, FacePath, FindOptions,
    Prepared, INPUT_LEN,
};
use facepool_fuzz::assets;
use libfuzzer_sys::fuzz_target;

thread_local! {
    // Leaked: tract's model states must not be dropped by a thread-local
    // destructor at exit (tract's own thread-local scratch may be gone).
    static DETECTOR: &'static RefCell<Detector> = Box::leak(Box::new(RefCell::new({
        let a = assets();
        DetectModels::load(
            &a.join("models/fr_detect.onnx"),
            Some(&a.join("models/fr_landmark.onnx")),
        )
        .and_then(|m| m.detector())
        .expect("the detector and landmark models load")
    })));
}

fn check_face(f: &Prepared, w: u32, h: u32, opts: &FindOptions) {
    assert_eq!(f.input.0.len(), INPUT_LEN, "a face input of the wrong size");
    let (lo, hi) = (-127.0 / 128.0, 128.0 / 128.0);
    assert!(
        f.input.0.iter().all(|x| (lo..=hi).contains(x)),
        "a face input value outside [{lo}, {hi}]"
    );
    match f.path {
        FacePath::Aligned => assert!(f.bbox.is_none(), "an aligned chip with a box"),
        FacePath::Detected { score, .. } => {
            assert!(
                score.is_finite() && score >= opts.min_score && score <= 1.0,
                "a detection scored {score}"
            );
            let b = f.bbox.expect("a detected face has its box");
            let (w, h) = (w as f32, h as f32);
            assert!(
                b.iter().all(|v| v.is_finite())
                    && 0.0 <= b[0]
                    && b[0] < b[2]
                    && b[2] <= w
                    && 0.0 <= b[1]
                    && b[1] < b[3]
                    && b[3] <= h,
                "box {b:?} outside the {w}x{h} image"
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let img = match decode(data, &DecodeLimits::default()) {
        Ok(img) => img,
        Err(
            FaceError::FileTooLarge { .. }
            | FaceError::TooLarge(_)
            | FaceError::TooSmall { .. }
            | FaceError::Unsupported(_)
            | FaceError::Decode(_),
        ) => return,
        Err(other) => panic!("decode gave an error that is not about the image: {other:?}"),
    };
    let (w, h) = img.dimensions();
    DETECTOR.with(|det| {
        let det = &mut *det.borrow_mut();
        for (mode, all_faces) in [
            (FaceMode::Aligned, true),
            (FaceMode::Detect, true),
            (FaceMode::Auto, false),
        ] {
            let opts = FindOptions {
                mode,
                all_faces,
                ..FindOptions::default()
            };
            let detects = opts.needs_detector(&img);
            if mode == FaceMode::Auto && detects {
                // The detect run above, less its other faces: not worth a
                // second model run per input.
                continue;
            }
            match find_faces(&img, Some(&mut *det), &opts) {
                Ok(faces) => {
                    assert!(!faces.is_empty(), "{mode:?}: Ok with no face");
                    if !detects {
                        assert_eq!(faces.len(), 1, "{mode:?}: a chip is one face");
                        assert_eq!(faces[0].path, FacePath::Aligned);
                    } else if !all_faces {
                        assert_eq!(faces.len(), 1, "{mode:?}: the largest face only");
                    }
                    for f in &faces {
                        assert_eq!(
                            matches!(f.path, FacePath::Detected { .. }),
                            detects,
                            "{mode:?}: a face from the other path"
                        );
                        check_face(f, w, h, &opts);
                    }
                }
                Err(FaceError::NoFace) if detects => {}
                Err(e) => panic!("{mode:?} on a decoded {w}x{h} image: {e:?}"),
            }
        }
    });
});
