//! The gallery's file: the index is saved atomically (the index file's own
//! temp-file-and-rename) after each change, by one writer thread, so that
//! no async task writes a file. Saves asked for while one is under way are
//! served by the next one.

use std::path::PathBuf;
use std::sync::{mpsc, Arc, Mutex, PoisonError};

use futures_channel::oneshot;

use crate::index::Index;

type Reply = oneshot::Sender<Result<(), String>>;

/// The gallery's file and its writer.
#[derive(Debug)]
pub struct GalleryFile {
    tx: mpsc::Sender<Reply>,
    index: Index,
    path: PathBuf,
    /// Held across each whole save (its snapshot and its rename), so two
    /// saves never race and the last rename is of the newest snapshot.
    one: Arc<Mutex<()>>,
}

fn save(one: &Mutex<()>, index: &Index, path: &std::path::Path) -> Result<(), String> {
    let _one = one.lock().unwrap_or_else(PoisonError::into_inner);
    index.save(path).map_err(|e| e.to_string())
}

impl GalleryFile {
    /// Starts the writer of `index` to `path`.
    pub fn start(index: Index, path: PathBuf) -> Self {
        let (tx, rx) = mpsc::channel::<Reply>();
        let one = Arc::new(Mutex::new(()));
        let (idx, p, lock) = (index.clone(), path.clone(), one.clone());
        let spawned = std::thread::Builder::new()
            .name("gallery-writer".to_owned())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    // Everything asked so far is covered by one save.
                    let mut waiting = vec![first];
                    waiting.extend(rx.try_iter());
                    let r = save(&lock, &idx, &p);
                    for w in waiting {
                        let _ = w.send(r.clone());
                    }
                }
            });
        // Without a writer (the thread could not start), its receiver is
        // gone and every change fails to save (never a file write on an
        // async task); the save at shutdown still runs.
        drop(spawned);
        Self { tx, index, path, one }
    }

    /// Saves the gallery; done when the file holds at least the index as it
    /// was when this was called.
    pub async fn save(&self) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(tx).is_err() {
            return Err("the gallery writer is not running".to_owned());
        }
        rx.await.map_err(|_| "the gallery writer stopped".to_owned())?
    }

    /// The file.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Saves on the calling thread (at shutdown), after any save under way.
    pub fn save_now(&self) -> Result<(), String> {
        save(&self.one, &self.index, &self.path)
    }
}
