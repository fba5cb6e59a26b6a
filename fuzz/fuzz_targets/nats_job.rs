//! The job messages of the async mode (`src/nats/job.rs`), parsed as the
//! consumer parses them (`src/nats/delivery.rs`): straight from the bytes
//! into the job's typed fields, then its id checked.
//!
//! What must hold: bytes give a job or an error, never a panic; a job that
//! parses serialises, and parses back from that to the same job (compared
//! by its serialisation); its images are its kind's (two for a verify, one
//! for an identify, the frames and the reference for a review); an inline
//! image decodes from base64 to bytes or a malformed `bad_base64` error,
//! with the HTTP API's own decoder.
#![no_main]

use facepool::nats::{valid_id, ImageRef, Job, Work};
use facepool::service::wire::decode_base64;
use facepool::service::ErrorKind;
use libfuzzer_sys::fuzz_target;

fn parse(bytes: &[u8]) -> Option<Job> {
    serde_json::from_slice::<Job>(bytes).ok()
}

fuzz_target!(|data: &[u8]| {
    let Some(job) = parse(data) else {
        return;
    };
    // `valid_id` is a pure check on the text: it only has to agree with
    // its definition.
    let ok = valid_id(&job.id);
    assert_eq!(
        ok,
        !job.id.is_empty()
            && job.id.len() <= 128
            && job
                .id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    );
    let text = serde_json::to_vec(&job).expect("a parsed job serialises");
    let again = parse(&text).unwrap_or_else(|| {
        panic!(
            "a serialised job does not parse back: {}",
            String::from_utf8_lossy(&text)
        )
    });
    let text2 = serde_json::to_vec(&again).expect("a parsed job serialises");
    assert!(
        text == text2,
        "a job changed on its way back:\n{}\n{}",
        String::from_utf8_lossy(&text),
        String::from_utf8_lossy(&text2)
    );
    assert_eq!(job.id, again.id);
    assert_eq!(job.deadline_ms, again.deadline_ms);
    assert_eq!(job.work.kind(), again.work.kind());
    let images = job.work.images();
    let expected = match &job.work {
        Work::Verify { .. } => 2,
        Work::Identify { .. } => 1,
        Work::Review {
            frames, reference, ..
        } => frames.len() + usize::from(reference.is_some()),
    };
    assert_eq!(images.len(), expected);
    for (i, r) in images.iter().enumerate() {
        if let ImageRef::Inline(s) = r {
            // Empty bytes decode too; the consumer refuses them as
            // `empty_image`.
            if let Err(e) = decode_base64(&format!("image {}", i + 1), s) {
                assert_eq!((e.kind(), e.code()), (ErrorKind::Malformed, "bad_base64"), "{e}");
            }
        }
    }
});
