//! One person as a store keeps it: its faces' embeddings and its metadata,
//! in a small versioned binary form (a fleet's bucket holds one per key).
//!
//! `FPG1`, then little-endian `u32`s: the vector length, the number of
//! faces, the metadata's length in bytes (`u32::MAX`: none); the metadata
//! (UTF-8); the faces' `f32`s, one vector after another. Whatever a store
//! hands back is read as outside input: every length is checked before
//! anything is allocated, and every number must be finite.

use crate::index::{MAX_DIM, MAX_TEXT};

/// The key of a person in a fleet's bucket: its id's bytes, base64url
/// without padding (a bucket's keys take letters, digits, `-`, `_`, `=`,
/// `.` and `/` only).
#[cfg(feature = "nats-wire")]
pub fn key_of(id: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(id.as_bytes())
}

/// The person of a key, if it is one [`key_of`] makes.
#[cfg(feature = "nats-wire")]
pub fn id_of(key: &str) -> Option<String> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(key)
        .ok()?;
    String::from_utf8(bytes).ok().filter(|s| !s.is_empty())
}

/// Faces one person may have in a store.
pub const MAX_FACES: usize = 256;

const MAGIC: &[u8; 4] = b"FPG1";
const HEADER: usize = 16;
const NO_META: u32 = u32::MAX;

/// A person's faces and metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    dim: usize,
    /// The faces, one vector after another.
    floats: Vec<f32>,
    meta: Option<String>,
}

/// Why bytes are not an entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    /// Not this format (or cut short, or with bytes after it).
    #[error("not a gallery entry: {0}")]
    Malformed(String),
    /// Vectors of another length than the gallery's.
    #[error("a gallery entry of vectors of length {got}, not {expected}")]
    WrongDim {
        /// The gallery's.
        expected: usize,
        /// The entry's.
        got: usize,
    },
}

fn malformed(why: impl Into<String>) -> EntryError {
    EntryError::Malformed(why.into())
}

impl Entry {
    /// An entry of `vectors` (each of length `dim`; at least one, at most
    /// [`MAX_FACES`], finite) and `meta`.
    pub fn new(dim: usize, vectors: &[&[f32]], meta: Option<&str>) -> Result<Self, EntryError> {
        if dim == 0 || dim > MAX_DIM {
            return Err(malformed(format!("vector length {dim}")));
        }
        if vectors.is_empty() || vectors.len() > MAX_FACES {
            return Err(malformed(format!("{} faces (1 to {MAX_FACES})", vectors.len())));
        }
        if meta.is_some_and(|m| m.len() > MAX_TEXT) {
            return Err(malformed("metadata too long"));
        }
        let mut floats = Vec::with_capacity(dim * vectors.len());
        for v in vectors {
            if v.len() != dim {
                return Err(EntryError::WrongDim {
                    expected: dim,
                    got: v.len(),
                });
            }
            floats.extend_from_slice(v);
        }
        if floats.iter().any(|x| !x.is_finite()) {
            return Err(malformed("a number that is not finite"));
        }
        Ok(Self {
            dim,
            floats,
            meta: meta.map(str::to_owned),
        })
    }

    /// The vector length.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Number of faces.
    pub fn faces(&self) -> usize {
        self.floats.len() / self.dim
    }

    /// The faces' vectors.
    pub fn vectors(&self) -> impl Iterator<Item = &[f32]> {
        self.floats.chunks_exact(self.dim)
    }

    /// The metadata.
    pub fn meta(&self) -> Option<&str> {
        self.meta.as_deref()
    }

    /// This entry with `more` faces after its own (its metadata kept).
    pub fn with_more(&self, more: &[&[f32]]) -> Result<Self, EntryError> {
        let mut all: Vec<&[f32]> = self.vectors().collect();
        all.extend_from_slice(more);
        Self::new(self.dim, &all, self.meta())
    }

    /// Bytes of the encoded entry of `faces` faces of length `dim` with
    /// `meta_bytes` of metadata.
    pub fn encoded_len(dim: usize, faces: usize, meta_bytes: usize) -> usize {
        HEADER + meta_bytes + 4 * dim * faces
    }

    /// The encoded entry.
    pub fn encode(&self) -> Vec<u8> {
        let meta = self.meta.as_deref().unwrap_or("");
        let mut out = Vec::with_capacity(Self::encoded_len(self.dim, self.faces(), meta.len()));
        out.extend_from_slice(MAGIC);
        // Lengths were bounded by `new` (MAX_DIM, MAX_FACES, MAX_TEXT): they
        // fit a u32.
        for n in [self.dim, self.faces()] {
            out.extend_from_slice(&u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes());
        }
        let meta_len = match &self.meta {
            Some(m) => u32::try_from(m.len()).unwrap_or(u32::MAX - 1),
            None => NO_META,
        };
        out.extend_from_slice(&meta_len.to_le_bytes());
        out.extend_from_slice(meta.as_bytes());
        for x in &self.floats {
            out.extend_from_slice(&x.to_le_bytes());
        }
        out
    }

    /// Reads an entry of vectors of length `dim`.
    pub fn decode(bytes: &[u8], dim: usize) -> Result<Self, EntryError> {
        let u32_at = |at: usize| -> usize {
            let mut w = [0u8; 4];
            w.copy_from_slice(&bytes[at..at + 4]);
            u32::from_le_bytes(w) as usize
        };
        if bytes.len() < HEADER || &bytes[..4] != MAGIC {
            return Err(malformed("no FPG1 header"));
        }
        let (got, faces, meta_len) = (u32_at(4), u32_at(8), u32_at(12));
        if got != dim {
            return Err(EntryError::WrongDim { expected: dim, got });
        }
        if faces == 0 || faces > MAX_FACES {
            return Err(malformed(format!("{faces} faces (1 to {MAX_FACES})")));
        }
        let (meta_len, has_meta) = match meta_len as u32 {
            NO_META => (0, false),
            n if n as usize <= MAX_TEXT => (n as usize, true),
            n => return Err(malformed(format!("metadata of {n} bytes (most {MAX_TEXT})"))),
        };
        let want = Self::encoded_len(dim, faces, meta_len);
        if bytes.len() != want {
            return Err(malformed(format!(
                "{} bytes where the header says {want}",
                bytes.len()
            )));
        }
        let meta = match has_meta {
            true => Some(
                std::str::from_utf8(&bytes[HEADER..HEADER + meta_len])
                    .map_err(|_| malformed("metadata is not UTF-8"))?
                    .to_owned(),
            ),
            false => None,
        };
        let floats: Vec<f32> = bytes[HEADER + meta_len..]
            .chunks_exact(4)
            .map(|w| f32::from_le_bytes([w[0], w[1], w[2], w[3]]))
            .collect();
        if floats.iter().any(|x| !x.is_finite()) {
            return Err(malformed("a number that is not finite"));
        }
        Ok(Self { dim, floats, meta })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(feature = "nats-wire")]
    #[test]
    fn keys_are_valid_bucket_keys_and_give_back_the_id() {
        for id in ["ada", "ó / é", "a.b", "..", "x".repeat(256).as_str(), "\u{1F600}"] {
            let k = key_of(id);
            assert!(
                k.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
                "{k}"
            );
            assert_eq!(id_of(&k).as_deref(), Some(id));
        }
        use base64::Engine as _;
        assert_eq!(id_of("not base64!"), None);
        assert_eq!(id_of(""), None);
        assert_eq!(
            id_of(&base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([0xff, 0xfe])),
            None
        );
    }

    #[test]
    fn entries_round_trip_and_bad_bytes_are_refused() {
        let (a, b) = ([1.0f32, 0.0, -2.5], [0.0f32, 3.0, 1e-30]);
        for meta in [None, Some(""), Some("{\"name\":\"Ada\"}")] {
            let e = Entry::new(3, &[&a, &b], meta).unwrap();
            let bytes = e.encode();
            assert_eq!(bytes.len(), Entry::encoded_len(3, 2, meta.map_or(0, str::len)));
            let back = Entry::decode(&bytes, 3).unwrap();
            assert_eq!(back, e);
            assert_eq!(back.vectors().collect::<Vec<_>>(), vec![&a[..], &b[..]]);
            assert_eq!(back.meta(), meta);
            assert_eq!(
                Entry::decode(&bytes, 4),
                Err(EntryError::WrongDim { expected: 4, got: 3 })
            );
            for cut in 0..bytes.len() {
                assert!(Entry::decode(&bytes[..cut], 3).is_err(), "cut at {cut}");
            }
            let mut longer = bytes.clone();
            longer.push(0);
            assert!(Entry::decode(&longer, 3).is_err());
        }
        let mut nan = Entry::new(3, &[&a], None).unwrap().encode();
        let at = nan.len() - 4;
        nan[at..].copy_from_slice(&f32::NAN.to_le_bytes());
        assert!(Entry::decode(&nan, 3).is_err());
        let mut huge = Entry::new(3, &[&a], None).unwrap().encode();
        huge[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(Entry::decode(&huge, 3).is_err());
        assert!(Entry::new(3, &[], None).is_err());
        assert!(Entry::new(3, &[&[f32::INFINITY, 0.0, 0.0]], None).is_err());
        let many = vec![&a[..]; MAX_FACES + 1];
        assert!(Entry::new(3, &many, None).is_err());
        let e = Entry::new(3, &[&a], Some("m")).unwrap().with_more(&[&b]).unwrap();
        assert_eq!((e.faces(), e.meta()), (2, Some("m")));
    }
}
