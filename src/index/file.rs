//! The index file: versioned, checksummed, written atomically.
//!
//! Layout (little-endian):
//!
//! | bytes | content |
//! |---|---|
//! | 8 | magic `FACEPIDX` |
//! | 4 | format version (2; 1 has no codes section) |
//! | 4 | dimension |
//! | 8 | people |
//! | 8 | vectors |
//! | 8 | bytes of the people section |
//! | 4 | flags (0: f32 vectors) |
//! | 4 | CRC-32 of the 44 bytes above |
//! | … | people: id length u32, id (UTF-8), has-metadata u8, [metadata length u32, metadata] |
//! | 4 × vectors | owner of each vector (index into people, who are numbered in the order of their first vector) |
//! | 4 × dim × vectors | the vectors, f32, unit length |
//! | [`stored_codes_len`] | the codes: for each chunk of [`CHUNK_ROWS`] vectors (the last one shorter), its 8-bit codes in blocks of 16 vectors (dimensions padded to a multiple of 4), then each vector's scale, residual and reach (f32) and shift (i32) |
//! | 4 | CRC-32 of everything before it |
//! | 4 | end marker `XDIP` |
//!
//! A reader checks the magic, the version and the header's checksum, then
//! that the file is exactly as long as the header says, before it allocates
//! anything sized by the header; then it reads the rest, validating every
//! field, and checks the whole-file checksum before the index is used. The
//! codes are checked for finite numbers and shifts that match them, and
//! otherwise trusted (they are a function of the vectors; the checksum
//! guards them against corruption). Format 1 files load (their codes are
//! made when first needed); saves write format 2.

use std::cell::RefCell;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::codes::{Codes, Lazy};
use super::{Chunk, IndexError, Person, Rows, Vectors, CHUNK_ROWS, MAX_DIM, MAX_TEXT};

/// The first eight bytes of an index file.
pub const MAGIC: [u8; 8] = *b"FACEPIDX";
/// The format version this build writes (it reads 1 and 2).
pub const FORMAT_VERSION: u32 = 2;
const END: [u8; 4] = *b"XDIP";
const HEADER: usize = 48;
const TRAILER: usize = 8;

fn corrupt(path: &Path, reason: impl Into<String>) -> IndexError {
    IndexError::Corrupt {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

fn io(path: &Path, source: std::io::Error) -> IndexError {
    IndexError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// A writer that keeps a running CRC-32 of what passes through it.
struct Crc<W> {
    inner: W,
    crc: crc32fast::Hasher,
}

impl<W: Write> Write for Crc<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A reader that keeps a running CRC-32 of what it read.
struct CrcRead<R> {
    inner: R,
    crc: crc32fast::Hasher,
}

impl<R: Read> CrcRead<R> {
    fn exact(&mut self, buf: &mut [u8]) -> std::io::Result<()> {
        self.inner.read_exact(buf)?;
        self.crc.update(buf);
        Ok(())
    }
}

/// Bytes of the codes section of a format-2 file of `vectors` vectors of
/// `dim` (`None` if that overflows).
#[doc(hidden)]
pub fn stored_codes_len(dim: usize, vectors: u64) -> Option<u64> {
    let rows = CHUNK_ROWS as u64;
    let full = Codes::stored_len(CHUNK_ROWS, dim)? as u64;
    let last = Codes::stored_len(usize::try_from(vectors % rows).ok()?, dim)? as u64;
    (vectors / rows).checked_mul(full)?.checked_add(last)
}

/// An index file kept open for its vectors: read by position, never
/// written (a save renames a new file over the path, and this handle goes
/// on reading the file it opened).
#[derive(Debug)]
pub(crate) struct Stored {
    file: File,
    path: PathBuf,
}

thread_local! {
    static BYTES: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

impl Stored {
    /// Reads `floats` f32 from byte `at` into `out` (replacing what it held).
    pub(crate) fn read(&self, at: u64, floats: usize, out: &mut Vec<f32>) -> Result<(), IndexError> {
        BYTES.with_borrow_mut(|bytes| {
            bytes.resize(4 * floats, 0);
            read_at(&self.file, bytes, at).map_err(|e| io(&self.path, e))?;
            out.clear();
            out.extend(
                bytes
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            );
            Ok(())
        })
    }
}

#[cfg(unix)]
fn read_at(f: &File, buf: &mut [u8], at: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(f, buf, at)
}

#[cfg(windows)]
fn read_at(f: &File, mut buf: &mut [u8], mut at: u64) -> std::io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buf.is_empty() {
        match f.seek_read(buf, at)? {
            0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            n => {
                buf = &mut buf[n..];
                at += n as u64;
            }
        }
    }
    Ok(())
}

fn header(dim: usize, people: u64, vectors: u64, people_bytes: u64) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[0..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&(dim as u32).to_le_bytes());
    h[16..24].copy_from_slice(&people.to_le_bytes());
    h[24..32].copy_from_slice(&vectors.to_le_bytes());
    h[32..40].copy_from_slice(&people_bytes.to_le_bytes());
    // 40..44: flags, 0.
    let crc = crc32fast::hash(&h[..44]);
    h[44..48].copy_from_slice(&crc.to_le_bytes());
    h
}

pub(super) fn save(path: &Path, dim: usize, chunks: &[Arc<Chunk>]) -> Result<(), IndexError> {
    // Number the people in order of first appearance.
    let mut number: std::collections::HashMap<u64, u32> = std::collections::HashMap::new();
    let mut people = Vec::new();
    let mut owners = Vec::new();
    for c in chunks {
        for p in &c.owners {
            let next = number.len() as u32;
            let n = *number.entry(p.key).or_insert_with(|| {
                people.push(p.clone());
                next
            });
            owners.push(n);
        }
    }
    let mut table = Vec::new();
    for p in &people {
        table.extend_from_slice(&(p.id.len() as u32).to_le_bytes());
        table.extend_from_slice(p.id.as_bytes());
        match &p.meta {
            Some(m) => {
                table.push(1);
                table.extend_from_slice(&(m.len() as u32).to_le_bytes());
                table.extend_from_slice(m.as_bytes());
            }
            None => table.push(0),
        }
    }

    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let prefix = temp_prefix(path)?;
    let tmp = dir.join(format!("{prefix}{}.{}", std::process::id(), fastrand::u64(..)));
    let e = |e: std::io::Error| io(path, e);
    let write = || -> Result<(), IndexError> {
        let f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(e)?;
        // Held until the temp file is renamed or its writer dies, so that a
        // later save can tell an abandoned temp file from one being written.
        match f.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                // A concurrent save is removing it as abandoned (possible only
                // in the instant between its creation and this lock).
                return Err(e(std::io::Error::other(
                    "the temp file was taken by a concurrent save",
                )));
            }
            // No locks on this filesystem: write anyway; abandoned temp
            // files are then left for the operator.
            Err(TryLockError::Error(_)) => {}
        }
        let mut w = Crc {
            inner: BufWriter::with_capacity(1 << 20, f),
            crc: crc32fast::Hasher::new(),
        };
        w.write_all(&header(
            dim,
            people.len() as u64,
            owners.len() as u64,
            table.len() as u64,
        ))
        .map_err(e)?;
        w.write_all(&table).map_err(e)?;
        let mut buf = Vec::with_capacity(CHUNK_ROWS * 4 * dim.max(1));
        for o in &owners {
            buf.extend_from_slice(&o.to_le_bytes());
        }
        w.write_all(&buf).map_err(e)?;
        let mut rows = Vec::new();
        for c in chunks {
            buf.clear();
            for x in c.rows(dim, &mut rows)? {
                buf.extend_from_slice(&x.to_le_bytes());
            }
            w.write_all(&buf).map_err(e)?;
        }
        // The codes of each CHUNK_ROWS rows: a chunk that is one of those
        // groups gives its own; the rows of chunks that changes left
        // shorter are grouped again, each row's codes copied (a row's
        // codes do not depend on its neighbours). A chunk without codes
        // (an index that never scanned compactly keeps none in memory)
        // has them made for the file only.
        let mut group = Codes::empty(dim);
        for (i, c) in chunks.iter().enumerate() {
            let n = c.owners.len();
            let made;
            let codes = match c.codes.peek() {
                Some(codes) => codes,
                None => {
                    made = Codes::encode(c.rows(dim, &mut rows)?, dim);
                    &made
                }
            };
            buf.clear();
            if group.rows() == 0 && (n == CHUNK_ROWS || i + 1 == chunks.len()) {
                codes.write(&mut buf);
            } else {
                for r in 0..n {
                    group.push_row(codes, r);
                    if group.rows() == CHUNK_ROWS {
                        group.write(&mut buf);
                        group = Codes::empty(dim);
                    }
                }
            }
            w.write_all(&buf).map_err(e)?;
        }
        if group.rows() > 0 {
            buf.clear();
            group.write(&mut buf);
            w.write_all(&buf).map_err(e)?;
        }
        let crc = w.crc.clone().finalize();
        let mut inner = w.inner;
        inner.write_all(&crc.to_le_bytes()).map_err(e)?;
        inner.write_all(&END).map_err(e)?;
        let f = inner.into_inner().map_err(|x| e(x.into_error()))?;
        f.sync_all().map_err(e)?;
        std::fs::rename(&tmp, path).map_err(e)?;
        // Make the rename itself durable.
        File::open(&dir).and_then(|d| d.sync_all()).map_err(e)
    };
    if let Err(err) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(err);
    }
    remove_abandoned(&dir, &prefix);
    Ok(())
}

/// The start of the name of every temp file a save of `path` writes:
/// `.{file name}.tmp.`, followed by the writer's process id and a random
/// number.
fn temp_prefix(path: &Path) -> Result<String, IndexError> {
    let name = path
        .file_name()
        .ok_or_else(|| corrupt(path, "the path names no file"))?
        .to_string_lossy();
    Ok(format!(".{name}.tmp."))
}

/// Removes the temp files of saves whose writer died before its rename (a
/// crash, `kill -9`): those whose lock can be taken. A temp file being
/// written holds its writer's lock, in this process or another, and is left
/// alone. Best effort: errors only leave a file for the next save.
fn remove_abandoned(dir: &Path, prefix: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if !e.file_name().to_string_lossy().starts_with(prefix) {
            continue;
        }
        let p = e.path();
        // Opened for writing: some platforms lock only writable files.
        let Ok(f) = OpenOptions::new().write(true).open(&p) else {
            continue;
        };
        if f.try_lock().is_ok() {
            let _ = std::fs::remove_file(&p);
        }
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(x)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

/// Parses the people section.
fn people(path: &Path, table: &[u8], count: usize) -> Result<Vec<Arc<Person>>, IndexError> {
    let mut at = 0usize;
    let mut take = |n: usize, what: &str| -> Result<&[u8], IndexError> {
        let end = at
            .checked_add(n)
            .filter(|&e| e <= table.len())
            .ok_or_else(|| corrupt(path, format!("people section ends inside {what}")))?;
        let s = &table[at..end];
        at = end;
        Ok(s)
    };
    let text = |bytes: &[u8], what: &str, i: usize| -> Result<Arc<str>, IndexError> {
        std::str::from_utf8(bytes)
            .map(Arc::from)
            .map_err(|_| corrupt(path, format!("{what} of person {i} is not UTF-8")))
    };
    let mut out = Vec::with_capacity(count);
    let mut seen = std::collections::HashSet::with_capacity(count);
    for i in 0..count {
        let n = u32_at(take(4, "an id length")?, 0) as usize;
        if n == 0 || n > MAX_TEXT {
            return Err(corrupt(path, format!("person {i} has an id of {n} bytes")));
        }
        let id = text(take(n, "an id")?, "the id", i)?;
        let meta = match take(1, "a metadata flag")?[0] {
            0 => None,
            1 => {
                let m = u32_at(take(4, "a metadata length")?, 0) as usize;
                if m > MAX_TEXT {
                    return Err(corrupt(path, format!("person {i} has {m} bytes of metadata")));
                }
                Some(text(take(m, "metadata")?, "the metadata", i)?)
            }
            f => return Err(corrupt(path, format!("person {i} has metadata flag {f}"))),
        };
        if !seen.insert(id.clone()) {
            return Err(corrupt(path, format!("id {id:?} appears twice")));
        }
        out.push(Arc::new(Person {
            key: i as u64,
            id,
            meta,
        }));
    }
    if at != table.len() {
        return Err(corrupt(path, "people section is longer than its entries"));
    }
    Ok(out)
}

pub(super) fn load(path: &Path, keep: Vectors) -> Result<(usize, Vec<Chunk>), IndexError> {
    let f = File::open(path).map_err(|e| io(path, e))?;
    let len = f.metadata().map_err(|e| io(path, e))?.len();
    let stored = match keep {
        Vectors::InMemory => None,
        Vectors::InFile => Some(Arc::new(Stored {
            file: f.try_clone().map_err(|e| io(path, e))?,
            path: path.to_path_buf(),
        })),
    };
    let mut r = CrcRead {
        inner: BufReader::with_capacity(1 << 20, f),
        crc: crc32fast::Hasher::new(),
    };
    let mut h = [0u8; HEADER];
    if len < 8 {
        return Err(IndexError::NotAnIndex {
            path: path.display().to_string(),
        });
    }
    if len < (HEADER + TRAILER) as u64 {
        let mut m = [0u8; 8];
        r.exact(&mut m).map_err(|e| io(path, e))?;
        if m != MAGIC {
            return Err(IndexError::NotAnIndex {
                path: path.display().to_string(),
            });
        }
        return Err(corrupt(
            path,
            format!("truncated: {len} bytes, shorter than a header"),
        ));
    }
    r.exact(&mut h).map_err(|e| io(path, e))?;
    if h[0..8] != MAGIC {
        return Err(IndexError::NotAnIndex {
            path: path.display().to_string(),
        });
    }
    let version = u32_at(&h, 8);
    if !(1..=FORMAT_VERSION).contains(&version) {
        return Err(IndexError::Version {
            path: path.display().to_string(),
            found: version,
        });
    }
    if crc32fast::hash(&h[..44]) != u32_at(&h, 44) {
        return Err(corrupt(path, "header checksum mismatch"));
    }
    let dim = u32_at(&h, 12) as usize;
    let (people_n, vectors, people_bytes) = (u64_at(&h, 16), u64_at(&h, 24), u64_at(&h, 32));
    let flags = u32_at(&h, 40);
    if flags != 0 {
        return Err(corrupt(path, format!("unknown flags {flags:#x}")));
    }
    if dim == 0 || dim > MAX_DIM {
        return Err(corrupt(path, format!("dimension {dim} is outside 1..={MAX_DIM}")));
    }
    if people_n > vectors {
        return Err(corrupt(
            path,
            format!("{people_n} people but only {vectors} vectors"),
        ));
    }
    let codes_bytes = match version {
        1 => Some(0),
        _ => stored_codes_len(dim, vectors),
    };
    let expected = vectors
        .checked_mul(4 * (dim as u64 + 1))
        .and_then(|v| v.checked_add(people_bytes))
        .and_then(|v| v.checked_add(codes_bytes?))
        .and_then(|v| v.checked_add((HEADER + TRAILER) as u64));
    if expected != Some(len) {
        let said = expected.map_or_else(|| "an impossible size".to_owned(), |e| format!("{e} bytes"));
        return Err(corrupt(
            path,
            format!("file is {len} bytes but its header says {said} (truncated or overwritten)"),
        ));
    }
    // From here every size is bounded by the file's real length.
    let (people_n, vectors, people_bytes) = (people_n as usize, vectors as usize, people_bytes as usize);
    let rd = |e: std::io::Error| io(path, e);
    let mut table = vec![0u8; people_bytes];
    r.exact(&mut table).map_err(rd)?;
    let people = people(path, &table, people_n)?;
    drop(table);

    let mut owners = Vec::with_capacity(vectors);
    // People are numbered in the order of their first vector, as `save`
    // numbers them: a file numbered otherwise would load, then save to
    // other bytes (found by the index_load fuzz target).
    let mut seen = 0usize;
    let mut buf = vec![0u8; 4 * CHUNK_ROWS * dim];
    let mut left = vectors;
    while left > 0 {
        let n = left.min(buf.len() / 4);
        r.exact(&mut buf[..4 * n]).map_err(rd)?;
        for (i, b) in buf[..4 * n].chunks_exact(4).enumerate() {
            let o = u32_at(b, 0) as usize;
            let v = vectors - left + i;
            let p = people
                .get(o)
                .ok_or_else(|| corrupt(path, format!("vector {v} belongs to person {o} of {people_n}")))?;
            if o > seen {
                return Err(corrupt(
                    path,
                    format!("vector {v} belongs to person {o} before person {seen} has a vector"),
                ));
            }
            seen += usize::from(o == seen);
            owners.push(p.clone());
        }
        left -= n;
    }
    if seen < people_n {
        return Err(corrupt(path, format!("person {seen} has no vectors")));
    }

    let mut chunks = Vec::with_capacity(vectors.div_ceil(CHUNK_ROWS));
    let mut at = (HEADER + people_bytes + 4 * vectors) as u64;
    for (c, own) in owners.chunks(CHUNK_ROWS).enumerate() {
        let bytes = &mut buf[..4 * dim * own.len()];
        r.exact(bytes).map_err(rd)?;
        let float = |b: &[u8]| f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        if let Some(i) = bytes.chunks_exact(4).position(|b| !float(b).is_finite()) {
            let v = c * CHUNK_ROWS + i / dim;
            return Err(corrupt(
                path,
                format!("vector {v} holds {}", float(&bytes[4 * i..])),
            ));
        }
        let rows = match &stored {
            None => Rows::Memory(bytes.chunks_exact(4).map(float).collect()),
            Some(file) => Rows::File {
                file: file.clone(),
                at,
            },
        };
        at += bytes.len() as u64;
        chunks.push(Chunk {
            rows,
            owners: own.to_vec(),
            codes: Lazy::default(),
        });
    }
    if version >= 2 {
        for (c, chunk) in chunks.iter_mut().enumerate() {
            let n = chunk.owners.len();
            let size =
                Codes::stored_len(n, dim).ok_or_else(|| corrupt(path, "codes of an impossible size"))?;
            buf.resize(size.max(buf.len()), 0);
            r.exact(&mut buf[..size]).map_err(rd)?;
            let codes = Codes::read(&buf[..size], n, dim)
                .map_err(|why| corrupt(path, format!("chunk {c}: {why}")))?;
            chunk.codes = Lazy::made(codes);
        }
    }
    let crc = r.crc.clone().finalize();
    let mut t = [0u8; TRAILER];
    r.inner.read_exact(&mut t).map_err(rd)?;
    if t[4..] != END {
        return Err(corrupt(path, "missing end marker"));
    }
    if u32_at(&t, 0) != crc {
        return Err(corrupt(path, "checksum mismatch"));
    }
    Ok((dim, chunks))
}
