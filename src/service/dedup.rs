//! Embedding each distinct image once: images are keyed by their content
//! (two paths to the same bytes are one image; a changed file is a new
//! one), and recent results are kept in a bounded map.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::path::Path;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::face::{DecodeLimits, FaceError};

/// An image's identity: the SHA-256 of its encoded bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ImageKey([u8; 32]);

impl ImageKey {
    /// The key of these encoded bytes.
    pub fn of(bytes: &[u8]) -> Self {
        Self(Sha256::digest(bytes).into())
    }
}

/// Reads an image file (at most `limits.max_file_bytes`) and keys it.
pub fn read_keyed(path: &Path, limits: &DecodeLimits) -> Result<(ImageKey, Arc<[u8]>), FaceError> {
    let bytes: Arc<[u8]> = crate::face::decode::read_file(path, limits)?.into();
    Ok((ImageKey::of(&bytes), bytes))
}

/// A map that keeps at most `capacity` entries, forgetting the oldest
/// inserted first: memory stays bounded however many distinct images a run
/// sees, and an image forgotten and seen again is only computed again.
#[derive(Debug)]
pub struct Recent<K, V> {
    map: HashMap<K, V>,
    order: VecDeque<K>,
    capacity: usize,
}

impl<K: Hash + Eq + Clone, V> Recent<K, V> {
    /// An empty map of at most `capacity` (at least 1) entries.
    pub fn new(capacity: usize) -> Self {
        Self {
            map: HashMap::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    /// The value of `k`, if kept.
    pub fn get(&self, k: &K) -> Option<&V> {
        self.map.get(k)
    }

    /// Keeps `v` under `k` (replacing an older value), forgetting the
    /// oldest entry if the map is full.
    pub fn insert(&mut self, k: K, v: V) {
        if self.map.insert(k.clone(), v).is_some() {
            return;
        }
        self.order.push_back(k);
        while self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.map.remove(&old);
            }
        }
    }

    /// Entries kept.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_content_not_names() {
        assert_eq!(ImageKey::of(b"abc"), ImageKey::of(b"abc"));
        assert_ne!(ImageKey::of(b"abc"), ImageKey::of(b"abd"));
    }

    #[test]
    fn recent_forgets_the_oldest_beyond_capacity() {
        let mut r = Recent::new(2);
        r.insert(1, "a");
        r.insert(2, "b");
        r.insert(1, "a2");
        assert_eq!((r.len(), r.get(&1)), (2, Some(&"a2")));
        r.insert(3, "c");
        assert_eq!(r.get(&1), None, "the oldest inserted goes first");
        assert_eq!((r.get(&2), r.get(&3), r.len()), (Some(&"b"), Some(&"c"), 2));
    }
}
