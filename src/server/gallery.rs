//! The gallery's file: the index is saved atomically (the index file's own
//! temp-file-and-rename) after each change, by one writer thread, so that
//! no tokio worker writes a file. Saves asked for while one is under way
//! are served by the next one.

use std::path::PathBuf;
use std::sync::mpsc;

use tokio::sync::oneshot;

use crate::index::Index;

type Reply = oneshot::Sender<Result<(), String>>;

/// The gallery's writer.
#[derive(Debug)]
pub struct Gallery {
    tx: mpsc::Sender<Reply>,
    index: Index,
    path: PathBuf,
}

impl Gallery {
    /// Starts the writer of `index` to `path`.
    pub fn start(index: Index, path: PathBuf) -> Self {
        let (tx, rx) = mpsc::channel::<Reply>();
        let (idx, p) = (index.clone(), path.clone());
        let spawned = std::thread::Builder::new()
            .name("gallery-writer".to_owned())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    // Everything asked so far is covered by one save.
                    let mut waiting = vec![first];
                    waiting.extend(rx.try_iter());
                    let r = idx.save(&p).map_err(|e| e.to_string());
                    for w in waiting {
                        let _ = w.send(r.clone());
                    }
                }
            });
        if let Err(e) = spawned {
            // Without a writer, saves happen on the caller's thread.
            tracing::warn!("cannot start the gallery writer ({e}); saves will be inline");
        }
        Self { tx, index, path }
    }

    /// Saves the gallery; done when the file holds at least the index as it
    /// was when this was called.
    pub async fn save(&self) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(tx).is_err() {
            return self.save_now();
        }
        rx.await.map_err(|_| "the gallery writer stopped".to_owned())?
    }

    /// Saves on the calling thread (at shutdown).
    pub fn save_now(&self) -> Result<(), String> {
        self.index.save(&self.path).map_err(|e| e.to_string())
    }
}
