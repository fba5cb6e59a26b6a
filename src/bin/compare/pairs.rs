//! `compare --pairs`: a pairs file streamed through the service, each
//! distinct image embedded once, verdicts in input order.
//!
//! The file is read a line at a time (it may be larger than memory). Each
//! image is keyed by its content, so two paths to the same bytes are one
//! image and a changed file is a new one; recent results are kept in a
//! bounded map. Distinct images flow through two stages in first-seen
//! order, images being prepared on the pool and faces waiting in the
//! batcher (so runs are shared by pairs), while the oldest pair waits for
//! its two images and is reported.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Instant;

use facepool::service::dedup::read_keyed;
use facepool::service::{
    AdmitError, ErrorKind, FaceResult, FaceService, ImageKey, ImageSource, PendingFace, PendingImage, Recent,
    ServiceError, Timings, Verdict,
};

/// One pair to compare, as given.
pub struct Pair {
    pub a: String,
    pub b: String,
    pub label: Option<bool>,
    /// A problem with the line itself.
    pub error: Option<String>,
    pub dir: PathBuf,
}

fn parse_label(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "1" | "same" | "true" | "yes" => Ok(true),
        "0" | "different" | "false" | "no" => Ok(false),
        other => Err(format!("label {other:?} is not 1/0 or same/different")),
    }
}

/// Longest line of a pairs file, bytes (two paths and a label).
pub const MAX_LINE: usize = 64 << 10;

/// The pairs of a file, a line at a time: `a,b` or `a,b,label`, blank
/// lines and `#` comments skipped, a header line skipped. A bad line is a
/// pair with an error, reported in its place; a line over [`MAX_LINE`] is
/// one too, and the reader skips to its end without keeping it.
pub struct PairsReader<R> {
    input: R,
    dir: PathBuf,
    line_no: usize,
    buf: Vec<u8>,
}

impl PairsReader<BufReader<std::fs::File>> {
    /// Opens `path`; relative image paths are relative to its folder.
    pub fn open(path: &Path) -> Result<Self, String> {
        let f = std::fs::File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        if f.metadata().is_ok_and(|m| m.is_dir()) {
            return Err(format!("cannot read {}: it is a folder", path.display()));
        }
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Ok(Self::new(BufReader::new(f), dir))
    }
}

impl<R: BufRead> PairsReader<R> {
    pub fn new(input: R, dir: PathBuf) -> Self {
        Self {
            input,
            dir,
            line_no: 0,
            buf: Vec::new(),
        }
    }

    /// The next line, at most `MAX_LINE` bytes of it; `Err` for a longer
    /// one (whose rest is skipped) or a read error.
    fn next_line(&mut self) -> Option<Result<String, String>> {
        self.buf.clear();
        let limit = u64::try_from(MAX_LINE + 1).unwrap_or(u64::MAX);
        let n = match (&mut self.input).take(limit).read_until(b'\n', &mut self.buf) {
            Ok(n) => n,
            Err(e) => return Some(Err(format!("cannot read the pairs file: {e}"))),
        };
        if n == 0 {
            return None;
        }
        self.line_no += 1;
        if self.buf.len() > MAX_LINE && self.buf.last() != Some(&b'\n') {
            // Skip the rest of the line without keeping it.
            loop {
                let chunk = match self.input.fill_buf() {
                    Ok(c) => c,
                    Err(e) => return Some(Err(format!("cannot read the pairs file: {e}"))),
                };
                if chunk.is_empty() {
                    break;
                }
                match chunk.iter().position(|&b| b == b'\n') {
                    Some(i) => {
                        self.input.consume(i + 1);
                        break;
                    }
                    None => {
                        let len = chunk.len();
                        self.input.consume(len);
                    }
                }
            }
            return Some(Err(format!(
                "line {}: longer than {MAX_LINE} bytes",
                self.line_no
            )));
        }
        Some(
            String::from_utf8(std::mem::take(&mut self.buf))
                .map_err(|_| format!("line {}: not UTF-8", self.line_no)),
        )
    }
}

impl<R: BufRead> Iterator for PairsReader<R> {
    type Item = Pair;

    fn next(&mut self) -> Option<Pair> {
        loop {
            let mut p = Pair {
                a: String::new(),
                b: String::new(),
                label: None,
                error: None,
                dir: self.dir.clone(),
            };
            let line = match self.next_line()? {
                Ok(l) => l,
                Err(e) => {
                    p.error = Some(e);
                    return Some(p);
                }
            };
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let f: Vec<&str> = line.split(',').map(str::trim).collect();
            p.a = f.first().unwrap_or(&"").to_string();
            p.b = f.get(1).unwrap_or(&"").to_string();
            match f.len() {
                2 => {}
                3 => match parse_label(f[2]) {
                    Ok(l) => p.label = Some(l),
                    // A header line names its columns: skip it.
                    Err(_) if self.line_no == 1 && f[0].eq_ignore_ascii_case("a") => continue,
                    Err(e) => p.error = Some(format!("line {}: {e}", self.line_no)),
                },
                k => {
                    p.error = Some(format!(
                        "line {}: {k} fields, expected a,b or a,b,label",
                        self.line_no
                    ))
                }
            }
            return Some(p);
        }
    }
}

fn resolve(dir: &Path, p: &str) -> PathBuf {
    let path = Path::new(p);
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        dir.join(path)
    }
}

/// One distinct image on its way.
enum Stage {
    Preparing(PendingImage),
    Embedding(PendingFace),
    Done(Result<(FaceResult, Timings), ServiceError>),
    /// Moved out while being advanced.
    Moving,
}

type Image = Rc<RefCell<Stage>>;

/// A pair in flight: its two images (shared with other pairs that name the
/// same content), or why it cannot be compared.
struct InFlight {
    pair: Pair,
    started: Instant,
    images: Result<[Image; 2], ServiceError>,
}

/// Distinct images kept for reuse, at most (about 2 KiB each).
const KEPT: usize = 16 << 10;
/// Pairs in flight.
const PAIRS: usize = 64;
/// Distinct images being prepared, and faces in the batcher, at most.
const PREPARING: usize = 64;
const EMBEDDING: usize = 64;

/// The pipeline over a pairs stream.
pub struct Pipeline<'a> {
    svc: &'a FaceService,
    dedup: bool,
    kept: Recent<ImageKey, Image>,
    preparing: VecDeque<Image>,
    embedding: VecDeque<Image>,
    window: VecDeque<InFlight>,
    /// Distinct images whose embedding was computed.
    pub embedded: usize,
}

impl<'a> Pipeline<'a> {
    /// With `dedup`, each distinct image (by content) is embedded once;
    /// without it, every image of every pair is.
    pub fn new(svc: &'a FaceService, dedup: bool) -> Self {
        Self {
            svc,
            dedup,
            kept: Recent::new(KEPT),
            preparing: VecDeque::new(),
            embedding: VecDeque::new(),
            window: VecDeque::new(),
            embedded: 0,
        }
    }

    /// The image at `path`: one already on its way if its content was seen
    /// (with dedup), else a new one, whose preparation starts now.
    fn image(&mut self, path: &Path) -> Result<Image, ServiceError> {
        if !self.dedup {
            return self.submit(ImageSource::Path(path.to_path_buf()));
        }
        let (key, bytes) = read_keyed(path, &self.svc.config().limits)?;
        if let Some(img) = self.kept.get(&key) {
            return Ok(img.clone());
        }
        let img = self.submit(ImageSource::Bytes(bytes))?;
        self.kept.insert(key, img.clone());
        Ok(img)
    }

    fn submit(&mut self, src: ImageSource) -> Result<Image, ServiceError> {
        // Keep the preparation stage bounded: move the oldest on first.
        while self.preparing.len() >= PREPARING {
            self.advance();
        }
        // The permit comes back as the image moves on (its bytes once
        // decoded, its face once embedded). While this thread holds images
        // of its own it moves them on instead of waiting, so it never
        // waits on a release only it could make, however small the limit.
        let permit = loop {
            if self.preparing.is_empty() && self.embedding.is_empty() {
                break self.svc.admission().acquire_blocking(src.cost(), None)?;
            }
            match self.svc.admission().try_acquire(src.cost()) {
                Ok(p) => break p,
                Err(AdmitError::Overloaded { .. }) => self.advance(),
                Err(e) => return Err(e.into()),
            }
        };
        let pending = self.svc.prepare(src, permit, None)?;
        let img = Rc::new(RefCell::new(Stage::Preparing(pending)));
        self.preparing.push_back(img.clone());
        Ok(img)
    }

    /// Moves the oldest prepared image on to the batcher (or, if the
    /// batcher stage is full, finishes its oldest face first).
    fn advance(&mut self) {
        if self.embedding.len() >= EMBEDDING || self.preparing.is_empty() {
            self.finish_oldest();
            return;
        }
        let Some(img) = self.preparing.pop_front() else {
            return;
        };
        let stage = std::mem::replace(&mut *img.borrow_mut(), Stage::Moving);
        let next = match stage {
            Stage::Preparing(p) => match self.svc.embed_first(p) {
                Ok(face) => {
                    self.embedding.push_back(img.clone());
                    Stage::Embedding(face)
                }
                Err(e) => Stage::Done(Err(e)),
            },
            other => other,
        };
        *img.borrow_mut() = next;
    }

    /// Waits for the oldest face in the batcher.
    fn finish_oldest(&mut self) {
        let Some(img) = self.embedding.pop_front() else {
            return;
        };
        let stage = std::mem::replace(&mut *img.borrow_mut(), Stage::Moving);
        let done = match stage {
            Stage::Embedding(face) => {
                let r = self.svc.finish(face);
                self.embedded += usize::from(r.is_ok());
                Stage::Done(r)
            }
            other => other,
        };
        *img.borrow_mut() = done;
    }

    /// Advances the stages until `img` is done. Images move in first-seen
    /// order, so the oldest pair's images are always at the fronts.
    fn complete(&mut self, img: &Image) -> Result<(FaceResult, Timings), ServiceError> {
        loop {
            if let Stage::Done(r) = &*img.borrow() {
                return r.clone();
            }
            let before = (self.preparing.len(), self.embedding.len());
            if matches!(&*img.borrow(), Stage::Embedding(_)) || self.preparing.is_empty() {
                self.finish_oldest();
            } else {
                self.advance();
            }
            if (self.preparing.len(), self.embedding.len()) == before
                && !matches!(&*img.borrow(), Stage::Done(_))
            {
                // Not in either stage: cannot happen, but never spin.
                return Err(ServiceError::request(
                    ErrorKind::Internal,
                    "internal",
                    "an image left the pipeline unfinished",
                ));
            }
        }
    }

    /// Takes a pair in: keys and starts its images.
    fn start(&mut self, pair: Pair) {
        let started = Instant::now();
        let images = match &pair.error {
            Some(e) => Err(ServiceError::request(ErrorKind::Malformed, "bad_pair", e.clone())),
            None => {
                let a = resolve(&pair.dir, &pair.a);
                let b = resolve(&pair.dir, &pair.b);
                // Start both, then fail on either, so that errors name the
                // first bad image.
                let (ia, ib) = (self.image(&a), self.image(&b));
                ia.and_then(|ia| Ok([ia, ib?]))
            }
        };
        self.window.push_back(InFlight {
            pair,
            started,
            images,
        });
    }

    /// The next verdict in input order, taking pairs from `todo` to keep
    /// the stages full.
    pub fn next(
        &mut self,
        todo: &mut impl Iterator<Item = Pair>,
    ) -> Option<(Pair, Result<Verdict, ServiceError>)> {
        while self.window.len() < PAIRS {
            match todo.next() {
                Some(p) => self.start(p),
                None => break,
            }
        }
        // Keep the batcher fed with what is prepared.
        while self.embedding.len() < EMBEDDING && !self.preparing.is_empty() {
            self.advance();
        }
        let f = self.window.pop_front()?;
        let r = f.images.and_then(|[a, b]| {
            let (ra, rb) = (self.complete(&a), self.complete(&b));
            let ((fa, ta), (fb, tb)) = (ra?, rb?);
            let mut v = self.svc.verdict(&fa, &fb, ta, tb);
            self.svc.record_call(&mut v.timings, f.started);
            Ok(v)
        });
        Some((f.pair, r))
    }
}
