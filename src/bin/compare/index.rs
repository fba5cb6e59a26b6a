//! `compare enroll | identify | remove | index-info`: 1:N identify against an
//! index file.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use facepool::index::{Index, IndexError, FORMAT_VERSION};
use std::sync::Arc;

use facepool::service::dedup::read_keyed;
use facepool::service::{
    ErrorKind, FaceResult, FaceService, ImageKey, ImageSource, Recent, ServiceError, Timings,
};
use serde_json::json;

use super::{exit_code, ms, round4, start_service, timings_json, ServiceArgs};

/// Images identified per round (their preparations and faces are in flight
/// together; the rest wait, so memory stays bounded).
const ROUND: usize = 64;

#[derive(clap::Subcommand)]
pub(crate) enum Command {
    /// Enroll a person's face images into an index file (created if absent).
    Enroll {
        /// The index file.
        #[arg(long)]
        index: PathBuf,
        /// The person's id.
        #[arg(long)]
        id: String,
        /// Text stored with the person (for example JSON).
        #[arg(long)]
        meta: Option<String>,
        /// Replace the person's faces instead of adding to them.
        #[arg(long)]
        replace: bool,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
        /// Face images of the person (the largest face of each).
        #[arg(required = true)]
        images: Vec<PathBuf>,
        #[command(flatten)]
        service: ServiceArgs,
    },
    /// Who is in each image? The closest enrolled people, or unknown.
    Identify {
        /// The index file.
        #[arg(long)]
        index: PathBuf,
        /// Closest people to report per image.
        #[arg(long, default_value_t = 5)]
        k: usize,
        /// One JSON object per image.
        #[arg(long)]
        json: bool,
        /// Embed every image given, even one whose content was already
        /// embedded (by default each distinct image is embedded once).
        #[arg(long)]
        no_dedup: bool,
        /// Images to identify.
        #[arg(required = true)]
        images: Vec<PathBuf>,
        #[command(flatten)]
        service: ServiceArgs,
    },
    /// Remove a person from an index file.
    Remove {
        /// The index file.
        #[arg(long)]
        index: PathBuf,
        /// The person's id.
        #[arg(long)]
        id: String,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Describe an index file (and check it).
    IndexInfo {
        /// The index file.
        file: PathBuf,
        /// Also list the people and their face counts.
        #[arg(long)]
        ids: bool,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
}

fn fail(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("compare: {e}");
    ExitCode::from(2)
}

pub(crate) fn run(cmd: Command) -> ExitCode {
    match cmd {
        Command::Enroll {
            index,
            id,
            meta,
            replace,
            json,
            images,
            service,
        } => enroll(&index, &id, meta.as_deref(), replace, json, images, &service),
        Command::Identify {
            index,
            k,
            json,
            no_dedup,
            images,
            service,
        } => identify(&index, k, json, !no_dedup, images, &service),
        Command::Remove { index, id, json } => remove(&index, &id, json),
        Command::IndexInfo { file, ids, json } => info(&file, ids, json),
    }
}

fn enroll(
    path: &Path,
    id: &str,
    meta: Option<&str>,
    replace: bool,
    as_json: bool,
    images: Vec<PathBuf>,
    service: &ServiceArgs,
) -> ExitCode {
    let mut svc = match start_service(service) {
        Ok(s) => s,
        Err(code) => return code,
    };
    // The file (created if absent) is saved by the service after the change.
    if let Err(e) = svc.open_gallery(path) {
        return fail(format!("{}: {e}", path.display()));
    }
    let names: Vec<String> = images.iter().map(|p| p.display().to_string()).collect();
    let sources = images.into_iter().map(ImageSource::Path).collect();
    let result = svc.enroll(id, sources, meta, replace);
    let mut out = std::io::stdout().lock();
    let code = match result {
        Ok(person) => {
            let (faces, people) = (person.faces, svc.index().len());
            if as_json {
                let _ = writeln!(
                    out,
                    "{}",
                    json!({"id": id, "added": names.len(), "faces": faces,
                           "people": people, "index": path.display().to_string()})
                );
            } else {
                let _ = writeln!(
                    out,
                    "enrolled {id}: {} image(s) added, {faces} face(s) in all; {} now holds {people} people",
                    names.len(),
                    path.display(),
                );
            }
            ExitCode::SUCCESS
        }
        Err(facepool::service::ServiceError::Image { index, error }) => {
            let image = names.get(index).map_or("?", String::as_str);
            if as_json {
                let _ = writeln!(
                    out,
                    "{}",
                    json!({"id": id, "image": image, "error": error.to_string()})
                );
            } else {
                let _ = writeln!(out, "not enrolled: {image}: {error}");
            }
            ExitCode::from(exit_code(error.kind()))
        }
        Err(e) => {
            eprintln!("compare: {e}");
            ExitCode::from(exit_code(e.kind()))
        }
    };
    svc.shutdown(std::time::Duration::from_secs(30));
    code
}

/// An image's embedding, or why it has none.
type Embedded = Result<(FaceResult, Timings), ServiceError>;

/// An image file's content key and bytes.
type Keyed = (ImageKey, Arc<[u8]>);

/// Distinct images' results kept across rounds, at most.
const KEPT: usize = 16 << 10;

/// Embeds the images of a round, each distinct content once: those seen in
/// an earlier round come from `kept`, the rest are read, keyed, and
/// embedded together.
fn embed_distinct(
    svc: &FaceService,
    round: &[PathBuf],
    kept: &mut Recent<ImageKey, Embedded>,
    embedded: &mut usize,
) -> Vec<Embedded> {
    let limits = &svc.config().limits;
    let keys: Vec<Result<Keyed, ServiceError>> = round
        .iter()
        .map(|p| read_keyed(p, limits).map_err(ServiceError::from))
        .collect();
    let mut todo: Vec<Keyed> = Vec::new();
    for (key, bytes) in keys.iter().flatten() {
        if kept.get(key).is_none() && !todo.iter().any(|(k, _)| k == key) {
            todo.push((*key, bytes.clone()));
        }
    }
    let sources = todo.iter().map(|(_, b)| ImageSource::Bytes(b.clone())).collect();
    let results = match svc.embed_all(sources) {
        Ok(r) => r,
        Err(e) => todo.iter().map(|_| Err(e.clone())).collect(),
    };
    for ((key, _), r) in todo.iter().zip(results) {
        *embedded += usize::from(r.is_ok());
        kept.insert(*key, r);
    }
    keys.into_iter()
        .map(|k| {
            let (key, _) = k?;
            kept.get(&key).cloned().unwrap_or_else(|| {
                Err(ServiceError::request(
                    ErrorKind::Internal,
                    "internal",
                    "the image's result was forgotten before use",
                ))
            })
        })
        .collect()
}

fn identify(
    path: &Path,
    k: usize,
    as_json: bool,
    dedup: bool,
    images: Vec<PathBuf>,
    service: &ServiceArgs,
) -> ExitCode {
    let index = match Index::load(path) {
        Ok(i) => i,
        Err(e) => return fail(e),
    };
    let mut svc = match start_service(service) {
        Ok(s) => s,
        Err(code) => return code,
    };
    if let Err(e) = svc.set_index(index) {
        return fail(format!("{}: {e}", path.display()));
    }
    let mut out = std::io::stdout().lock();
    let mut code = super::exit::OK;
    // Each distinct image (by content) is embedded once; recent results are
    // kept for images given again in later rounds.
    let mut kept: Recent<ImageKey, Embedded> = Recent::new(KEPT);
    let mut embedded = 0usize;
    for round in images.chunks(ROUND) {
        let results: Vec<Embedded> = if dedup {
            embed_distinct(&svc, round, &mut kept, &mut embedded)
        } else {
            let sources = round.iter().cloned().map(ImageSource::Path).collect();
            let rs = svc
                .embed_all(sources)
                .unwrap_or_else(|e| round.iter().map(|_| Err(e.clone())).collect());
            embedded += rs.iter().filter(|r| r.is_ok()).count();
            rs
        };
        for (img, r) in round.iter().zip(results) {
            let image = img.display().to_string();
            let r = r.and_then(|(face, t)| svc.identify_face(&face, k, t));
            match r {
                Ok(id) => {
                    if as_json {
                        let matches: Vec<_> = id
                            .matches
                            .iter()
                            .map(|m| json!({"id": &*m.id, "similarity": round4(m.similarity)}))
                            .collect();
                        let _ = writeln!(
                            out,
                            "{}",
                            json!({
                                "image": image,
                                "id": id.best.as_ref().map(|m| &*m.id),
                                "known": id.best.is_some(),
                                "similarity": id.matches.first().map(|m| round4(m.similarity)),
                                "threshold": round4(id.threshold),
                                "matches": matches,
                                "face": id.path.to_string(),
                                "timings_ms": timings_json(&id.timings),
                            })
                        );
                    } else {
                        let who = match (&id.best, id.matches.first()) {
                            (Some(b), _) => format!("{} ({:.4})", b.id, b.similarity),
                            (None, Some(m)) => format!("unknown (closest {} at {:.4})", m.id, m.similarity),
                            (None, None) => "unknown (the index is empty)".to_owned(),
                        };
                        let _ = writeln!(out, "{image}: {who}  [{:.1} ms]", ms(id.timings.total));
                    }
                }
                Err(e) => {
                    code = super::exit::worse(code, exit_code(e.kind()));
                    if as_json {
                        let _ = writeln!(out, "{}", json!({"image": image, "error": e.to_string()}));
                    } else {
                        let _ = writeln!(out, "{image}: error: {e}");
                    }
                }
            }
        }
    }
    eprintln!("compare: {} images, {embedded} embedded", images.len());
    svc.shutdown(std::time::Duration::from_secs(30));
    ExitCode::from(code)
}

fn remove(path: &Path, id: &str, as_json: bool) -> ExitCode {
    let index = match Index::load(path) {
        Ok(i) => i,
        Err(e) => return fail(e),
    };
    let faces = match index.remove(id) {
        Ok(n) => n,
        Err(e) => return fail(e),
    };
    if faces == 0 {
        eprintln!("compare: {id:?} is not in {}", path.display());
        return ExitCode::from(1);
    }
    if let Err(e) = index.save(path) {
        return fail(e);
    }
    if as_json {
        println!(
            "{}",
            json!({"id": id, "removed_faces": faces, "people": index.len()})
        );
    } else {
        println!("removed {id} ({faces} face(s)); {} people left", index.len());
    }
    ExitCode::SUCCESS
}

fn info(path: &Path, ids: bool, as_json: bool) -> ExitCode {
    let index = match Index::load(path) {
        Ok(i) => i,
        Err(
            e @ (IndexError::Corrupt { .. } | IndexError::NotAnIndex { .. } | IndexError::Version { .. }),
        ) => {
            eprintln!("compare: {e}");
            return ExitCode::from(1);
        }
        Err(e) => return fail(e),
    };
    let i = index.info();
    let file_bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let people = if ids { index.people() } else { Vec::new() };
    if as_json {
        let mut o = json!({
            "file": path.display().to_string(), "format_version": FORMAT_VERSION,
            "dim": i.dim, "people": i.people, "faces": i.vectors,
            "file_bytes": file_bytes, "memory_bytes": i.bytes,
        });
        if ids {
            o["ids"] = people
                .iter()
                .map(|p| json!({"id": &*p.id, "faces": p.vectors, "meta": p.meta.as_deref()}))
                .collect();
        }
        println!("{o}");
    } else {
        println!(
            "{}: facepool index v{FORMAT_VERSION}, {} dims, {} people, {} faces, {} bytes (checksum ok)",
            path.display(),
            i.dim,
            i.people,
            i.vectors,
            file_bytes
        );
        for p in &people {
            match &p.meta {
                Some(m) => println!("  {}  {} face(s)  {m}", p.id, p.vectors),
                None => println!("  {}  {} face(s)", p.id, p.vectors),
            }
        }
    }
    ExitCode::SUCCESS
}
