//! The fleet's gallery: a NATS JetStream Key-Value bucket, a key per
//! person (its id, base64url) holding its [`Entry`], and in every process
//! an index kept as a replica of the bucket.
//!
//! - **A replica fed by deltas.** At start the replica reads the bucket's
//!   current entries (a watch that delivers the last entry of each key),
//!   then follows the same watch: each put replaces one person, each
//!   delete removes one, under the index's own locking. A thread of its
//!   own applies them (index writes never run on an async thread).
//! - **Writes are compare-and-set.** A change reads the person's entry and
//!   its revision, makes the new entry (the old faces and the new ones, or
//!   the new ones alone) and stores it only if the revision is still the
//!   same; another process's change in between makes it read and try
//!   again, so two enrolls of one person at once both land; after
//!   [`CAS_TRIES`] lost races it is a conflict.
//! - **Read-your-writes.** A change answers once this process's replica
//!   has applied its revision; every other replica applies it when its
//!   watch delivers it (the lag is in [`StoreStatus`]).
//! - **Cut off, it answers from what it has.** When the broker cannot be
//!   reached the replica keeps its index, says it is not connected, and
//!   follows again from the revision after its last one when the broker
//!   is back (the watch is made anew from there).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use futures_util::StreamExt;

use super::entry::{id_of, key_of};
use super::{Applied, Change, Entry, GalleryError, GalleryStore, StoreStatus};
use crate::index::Index;

/// Tries of a compare-and-set that loses to other processes' changes
/// before the change is a conflict.
pub const CAS_TRIES: usize = 8;

/// The bucket and how a replica follows it.
#[derive(Debug, Clone)]
pub struct KvConfig {
    /// The broker, `nats://HOST:PORT` (several, comma-separated, for a
    /// cluster).
    pub url: String,
    /// The bucket (created if absent).
    pub bucket: String,
    /// Replicas of the bucket's stream (1; 3 on a 3-node cluster).
    pub replicas: usize,
    /// How long a change waits for this process's replica to apply it.
    pub apply_timeout: Duration,
    /// How long the first connection may take.
    pub connect_timeout: Duration,
    /// How long the first read of the bucket may take.
    pub snapshot_timeout: Duration,
    /// The connection's name on the broker.
    pub name: String,
}

impl KvConfig {
    /// A bucket `bucket` at `url`, one replica; changes wait 10 s for the
    /// replica; connecting 30 s, the first read 10 minutes.
    pub fn new(url: impl Into<String>, bucket: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            bucket: bucket.into(),
            replicas: 1,
            apply_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(30),
            snapshot_timeout: Duration::from_secs(600),
            name: format!("facepool-gallery-{}", std::process::id()),
        }
    }
}

/// The servers of a broker URL: `nats://HOST:PORT`, or several,
/// comma-separated, for a cluster (the client takes them as a list).
pub fn servers(url: &str) -> Vec<&str> {
    url.split(',').map(str::trim).filter(|u| !u.is_empty()).collect()
}

/// The bucket's description: it names the vector length, which every
/// process that opens the bucket checks against its model's.
fn describe(dim: usize) -> String {
    format!("facepool gallery: one key per person; vectors of length {dim}")
}

/// The vector length a bucket's description names.
fn dim_of(description: &str) -> Option<usize> {
    description
        .rsplit_once("vectors of length ")
        .and_then(|(_, n)| n.trim().parse().ok())
}

/// Whether a broker's version (`2.9.10`) is older than `than`.
fn older_than(version: &str, than: (u64, u64, u64)) -> bool {
    let mut parts = version
        .trim_start_matches('v')
        .split(['.', '-'])
        .map(|p| p.parse::<u64>().unwrap_or(0));
    let mut next = || parts.next().unwrap_or(0);
    (next(), next(), next()) < than
}

/// Where the replica stands.
#[derive(Debug)]
struct Progress {
    /// The last revision applied.
    revision: u64,
    /// When the last change was applied (or the replica caught up).
    at: Instant,
    /// Whether an entry came with nothing after it (the replica caught up
    /// with the bucket as it was then).
    caught_up: bool,
}

/// What the follower and the writers share.
#[derive(Debug)]
struct Shared {
    applied: Mutex<Progress>,
    changed: Condvar,
    /// As the broker said with the last entry: entries after it.
    pending: AtomicU64,
    /// Entries that could not be applied.
    rejected: AtomicU64,
    /// Whether the watch runs.
    following: AtomicBool,
    stop: tokio::sync::Notify,
}

impl Shared {
    fn revision(&self) -> u64 {
        crate::sync::lock(&self.applied).revision
    }

    /// `revision` applied, `pending` entries after it.
    fn applied(&self, revision: u64, pending: u64) {
        let mut a = crate::sync::lock(&self.applied);
        if revision > a.revision {
            a.revision = revision;
            a.at = Instant::now();
        }
        a.caught_up |= pending == 0;
        drop(a);
        self.changed.notify_all();
    }

    /// The bucket's stream was made anew: everything is read again.
    fn reset(&self) {
        let mut a = crate::sync::lock(&self.applied);
        *a = Progress {
            revision: 0,
            at: Instant::now(),
            caught_up: false,
        };
    }

    /// Waits until `revision` is applied (or, with `or_caught_up`, until an
    /// entry came with nothing after it), at most `within`.
    fn wait_for(&self, revision: u64, or_caught_up: bool, within: Duration) -> Result<(), GalleryError> {
        let a = crate::sync::lock(&self.applied);
        let done = |a: &Progress| a.revision >= revision || (or_caught_up && a.caught_up);
        let (a, _) = self
            .changed
            .wait_timeout_while(a, within, |a| !done(a))
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !done(&a) {
            return Err(GalleryError::NotApplied {
                revision,
                waited: within,
            });
        }
        Ok(())
    }

    /// Waits until `revision` is applied, at most `within`.
    fn wait(&self, revision: u64, within: Duration) -> Result<(), GalleryError> {
        self.wait_for(revision, false, within)
    }
}

/// Bytes a write's headers may take beside its entry (the broker counts
/// both against its max payload).
const HEADER_ROOM: usize = 512;

/// How often the replica asks the broker where the bucket stands.
const PROBE_EVERY: Duration = Duration::from_secs(2);

/// Probes in a row that find the bucket ahead of a replica that does not
/// move before its watch is made anew.
const STALLED_PROBES: u32 = 3;

/// The fleet's gallery in a NATS JetStream Key-Value bucket.
#[derive(Debug)]
pub struct KvGallery {
    config: KvConfig,
    runtime: tokio::runtime::Handle,
    client: async_nats::Client,
    js: jetstream::Context,
    store: kv::Store,
    dim: usize,
    /// Largest entry the broker takes.
    max_entry: usize,
    shared: Arc<Shared>,
}

fn unreachable(what: &str, e: impl std::fmt::Display) -> GalleryError {
    GalleryError::Unreachable(format!("{what}: {e}"))
}

/// A write lost to another process's change.
enum WriteError {
    Raced,
    Failed(GalleryError),
}

impl KvGallery {
    /// Connects, creates the bucket if absent, reads it into `index` (which
    /// should be empty, of the gallery's vector length) and follows it from
    /// then on, on a thread of its own. Returns once `index` holds every
    /// entry the bucket had when it was opened. Blocks: call from outside
    /// the async runtime `runtime` is a handle of.
    pub fn open(
        config: KvConfig,
        index: Index,
        runtime: tokio::runtime::Handle,
    ) -> Result<Self, GalleryError> {
        let t0 = Instant::now();
        let within = config.connect_timeout;
        let opened = runtime.block_on(async {
            tokio::time::timeout(within, Self::connect(&config, index.dim()))
                .await
                .map_err(|_| unreachable(&config.url, format!("no answer within {within:?}")))?
        })?;
        let (client, js, store, last) = opened;
        let server = client.server_info();
        if config.replicas > 1 && older_than(&server.version, (2, 9, 21)) {
            tracing::warn!(
                version = %server.version,
                "gallery: on a cluster, brokers before 2.9.21 do not serialise compare-and-set: two nodes adding faces to one person at the same instant can lose one of the adds"
            );
        }
        let max_entry = server.max_payload.saturating_sub(HEADER_ROOM).max(1024);
        let shared = Arc::new(Shared {
            applied: Mutex::new(Progress {
                revision: 0,
                at: Instant::now(),
                caught_up: last == 0,
            }),
            changed: Condvar::new(),
            pending: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            following: AtomicBool::new(false),
            stop: tokio::sync::Notify::new(),
        });
        let gallery = Self {
            dim: index.dim(),
            config,
            runtime: runtime.clone(),
            client,
            js,
            store: store.clone(),
            max_entry,
            shared: shared.clone(),
        };
        let follower = Follower {
            store,
            index,
            shared,
            bucket: gallery.config.bucket.clone(),
        };
        std::thread::Builder::new()
            .name("face-replica".into())
            .spawn(move || runtime.block_on(follower.run()))
            .map_err(|e| GalleryError::Store(format!("cannot start the replica's thread: {e}")))?;
        gallery
            .shared
            .wait_for(last, true, gallery.config.snapshot_timeout)?;
        tracing::info!(
            bucket = %gallery.config.bucket,
            revision = gallery.shared.revision(),
            seconds = t0.elapsed().as_secs_f64(),
            "gallery: replica caught up"
        );
        Ok(gallery)
    }

    async fn connect(
        config: &KvConfig,
        dim: usize,
    ) -> Result<(async_nats::Client, jetstream::Context, kv::Store, u64), GalleryError> {
        let client = async_nats::ConnectOptions::new()
            .name(config.name.clone())
            .connection_timeout(Duration::from_secs(5))
            .max_reconnects(None)
            .connect(servers(&config.url))
            .await
            .map_err(|e| unreachable(&config.url, e))?;
        let js = jetstream::new(client.clone());
        // The bucket's stream as the Key-Value protocol lays it out, made
        // here (not by `create_key_value`, which asks for the account's
        // limits in a form older brokers do not answer); making it again
        // with the same settings changes nothing.
        let store = match js.get_key_value(&config.bucket).await {
            Ok(s) => s,
            Err(_) => {
                let made = js
                    .create_stream(jetstream::stream::Config {
                        name: format!("KV_{}", config.bucket),
                        description: Some(describe(dim)),
                        subjects: vec![format!("$KV.{}.>", config.bucket)],
                        max_messages_per_subject: 1,
                        discard: jetstream::stream::DiscardPolicy::New,
                        allow_rollup: true,
                        deny_delete: true,
                        allow_direct: true,
                        storage: jetstream::stream::StorageType::File,
                        num_replicas: config.replicas.max(1),
                        ..Default::default()
                    })
                    .await;
                js.get_key_value(&config.bucket).await.map_err(|e| match made {
                    Err(made) => GalleryError::Store(format!("bucket {}: {made}", config.bucket)),
                    Ok(_) => GalleryError::Store(format!("bucket {}: {e}", config.bucket)),
                })?
            }
        };
        if let Some(theirs) = store
            .stream
            .cached_info()
            .config
            .description
            .as_deref()
            .and_then(dim_of)
        {
            if theirs != dim {
                return Err(GalleryError::Store(format!(
                    "bucket {} holds vectors of length {theirs}; this model's are {dim}",
                    config.bucket
                )));
            }
        }
        let mut stream = store.stream.clone();
        let state = stream
            .info()
            .await
            .map_err(|e| unreachable(&config.bucket, e))?
            .state
            .clone();
        // A bucket whose entries were all purged away has a last sequence
        // but nothing to deliver.
        let last = if state.messages == 0 {
            0
        } else {
            state.last_sequence
        };
        Ok((client, js, store, last))
    }

    /// The bucket.
    pub fn bucket(&self) -> &str {
        &self.config.bucket
    }

    /// The last revision this replica applied.
    pub fn revision(&self) -> u64 {
        self.shared.revision()
    }

    /// Writes `value` (a put, or a delete marker when `None`) for `key` if
    /// the key's last revision is still `expect` (0: the key has none);
    /// returns the new revision.
    async fn write(&self, key: &str, value: Option<Vec<u8>>, expect: u64) -> Result<u64, WriteError> {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
            expect.to_string().as_str(),
        );
        if value.is_none() {
            headers.insert("KV-Operation", "DEL");
        }
        let subject = format!("$KV.{}.{key}", self.config.bucket);
        let failed = |e: &dyn std::fmt::Display| WriteError::Failed(unreachable(&self.config.bucket, e));
        let ack = self
            .js
            .publish_with_headers(subject, headers, value.unwrap_or_default().into())
            .await
            .map_err(|e| failed(&e))?
            .await;
        match ack {
            Ok(a) => Ok(a.sequence),
            Err(e) if e.kind() == jetstream::context::PublishErrorKind::WrongLastSequence => {
                Err(WriteError::Raced)
            }
            Err(e) => Err(failed(&e)),
        }
    }

    /// The person's entry now (`None`: absent or deleted, or unreadable),
    /// the key's last revision (0: none), and whether that was a put.
    async fn current(&self, key: &str) -> Result<(Option<Entry>, u64, bool), GalleryError> {
        let e = self
            .store
            .entry(key)
            .await
            .map_err(|e| unreachable(&self.config.bucket, e))?;
        Ok(match e {
            None => (None, 0, false),
            Some(e) if e.operation == kv::Operation::Put => {
                (Entry::decode(&e.value, self.dim).ok(), e.revision, true)
            }
            Some(e) => (None, e.revision, false),
        })
    }

    async fn put(
        &self,
        id: &str,
        vectors: &[Vec<f32>],
        meta: Option<&str>,
        replace: bool,
    ) -> Result<(Entry, u64), GalleryError> {
        let key = key_of(id);
        let views: Vec<&[f32]> = vectors.iter().map(Vec::as_slice).collect();
        for _ in 0..CAS_TRIES {
            let (old, revision, _) = self.current(&key).await?;
            let faces = views.len() + old.as_ref().filter(|_| !replace).map_or(0, Entry::faces);
            let entry = match old {
                Some(old) if !replace => old.with_more(&views),
                _ => Entry::new(self.dim, &views, meta),
            }
            .map_err(|_| self.too_large(id, faces, meta))?;
            let bytes = entry.encode();
            if bytes.len() > self.max_entry {
                return Err(self.too_large(id, faces, meta));
            }
            match self.write(&key, Some(bytes), revision).await {
                Ok(r) => return Ok((entry, r)),
                Err(WriteError::Raced) => continue,
                Err(WriteError::Failed(e)) => return Err(e),
            }
        }
        Err(GalleryError::Conflict {
            id: id.to_owned(),
            tries: CAS_TRIES,
        })
    }

    fn too_large(&self, id: &str, faces: usize, meta: Option<&str>) -> GalleryError {
        GalleryError::TooLarge {
            id: id.to_owned(),
            faces,
            bytes: Entry::encoded_len(self.dim, faces, meta.map_or(0, str::len)),
            max: self.max_entry,
        }
    }

    async fn remove(&self, id: &str) -> Result<(usize, u64), GalleryError> {
        let key = key_of(id);
        for _ in 0..CAS_TRIES {
            let (old, revision, put) = self.current(&key).await?;
            if !put {
                return Ok((0, revision));
            }
            // An entry that does not read (which no replica holds) is
            // deleted too, and answered as nobody.
            match self.write(&key, None, revision).await {
                Ok(r) => return Ok((old.map_or(0, |e| e.faces()), r)),
                Err(WriteError::Raced) => continue,
                Err(WriteError::Failed(e)) => return Err(e),
            }
        }
        Err(GalleryError::Conflict {
            id: id.to_owned(),
            tries: CAS_TRIES,
        })
    }

    /// Stores every person of `from` in the bucket (replacing what the
    /// bucket has under their ids), `parallel` writes in flight, and waits
    /// until this replica holds them. Returns the people stored. Blocks.
    pub fn import(&self, from: &Index, parallel: usize) -> Result<usize, GalleryError> {
        let people = from.export()?;
        let n = people.len();
        for (id, meta, vectors) in &people {
            let bytes = Entry::encoded_len(self.dim, vectors.len(), meta.as_ref().map_or(0, |m| m.len()));
            if vectors.len() > super::MAX_FACES || bytes > self.max_entry {
                return Err(self.too_large(id, vectors.len(), meta.as_deref()));
            }
        }
        let last = self.runtime.block_on(async {
            let mut last = 0;
            let mut writes =
                futures_util::stream::iter(people.into_iter().map(|(id, meta, vectors)| async move {
                    let views: Vec<&[f32]> = vectors.iter().map(Vec::as_slice).collect();
                    let entry = Entry::new(self.dim, &views, meta.as_deref())
                        .map_err(|e| GalleryError::Store(format!("person {id:?}: {e}")))?;
                    let subject = format!("$KV.{}.{}", self.config.bucket, key_of(&id));
                    let ack = self
                        .js
                        .publish(subject, entry.encode().into())
                        .await
                        .map_err(|e| unreachable(&self.config.bucket, e))?
                        .await
                        .map_err(|e| unreachable(&self.config.bucket, e))?;
                    Ok::<u64, GalleryError>(ack.sequence)
                }))
                .buffer_unordered(parallel.max(1));
            while let Some(r) = writes.next().await {
                last = last.max(r?);
            }
            Ok::<u64, GalleryError>(last)
        })?;
        self.shared
            .wait(last, self.config.connect_timeout.max(self.config.apply_timeout))?;
        Ok(n)
    }
}

impl GalleryStore for KvGallery {
    fn apply(&self, _index: &Index, change: &Change) -> Result<Applied, GalleryError> {
        let (applied, revision) = match change {
            Change::Put {
                id,
                vectors,
                meta,
                replace,
            } => {
                let (entry, r) = self
                    .runtime
                    .block_on(self.put(id, vectors, meta.as_deref(), *replace))?;
                let person = Applied::Person {
                    id: id.clone(),
                    faces: entry.faces(),
                    meta: entry.meta().map(str::to_owned),
                };
                (person, r)
            }
            Change::Remove { id } => {
                let (faces, r) = self.runtime.block_on(self.remove(id))?;
                (Applied::Removed(faces), r)
            }
        };
        // Stored is stored: a replica that has not applied it in time (it
        // is cut off, and says so) gets it when it follows again.
        if let Err(e) = self.shared.wait(revision, self.config.apply_timeout) {
            tracing::warn!(bucket = %self.config.bucket, error = %e, "gallery: answered before this replica applied the change");
        }
        Ok(applied)
    }

    fn flush(&self, _index: &Index) -> Result<(), GalleryError> {
        Ok(())
    }

    fn status(&self) -> StoreStatus {
        let (revision, at) = {
            let p = crate::sync::lock(&self.shared.applied);
            (p.revision, p.at)
        };
        StoreStatus {
            kind: "nats",
            place: format!("bucket {} at {}", self.config.bucket, self.config.url),
            revision,
            pending: self.shared.pending.load(Ordering::Relaxed),
            connected: self.shared.following.load(Ordering::Relaxed)
                && self.client.connection_state() == async_nats::connection::State::Connected,
            since_last_change: Some(at.elapsed()),
            rejected: self.shared.rejected.load(Ordering::Relaxed),
        }
    }
}

impl Drop for KvGallery {
    fn drop(&mut self) {
        self.shared.stop.notify_one();
    }
}

/// The replica's thread: follows the bucket's watch into the index.
struct Follower {
    store: kv::Store,
    index: Index,
    shared: Arc<Shared>,
    bucket: String,
}

/// What a probe of the bucket found.
enum Probe {
    /// The replica follows (or is moving).
    Fine,
    /// The bucket is ahead and the replica has not moved for several
    /// probes: its watch is made anew.
    Stalled,
    /// The bucket's stream is behind the replica: it was made anew (a
    /// deleted and recreated bucket, a broker with an empty store).
    Reset,
}

impl Follower {
    async fn run(self) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let from = self.shared.revision();
            // The first watch delivers each key's last entry (`watch_all`
            // would deliver only new ones); after a cut, everything after
            // the last revision applied.
            let watch = match from {
                0 => self.store.watch_with_history(">").await,
                r => self.store.watch_all_from_revision(r + 1).await,
            };
            match watch {
                Ok(mut watch) => {
                    self.shared.following.store(true, Ordering::Relaxed);
                    backoff = Duration::from_millis(100);
                    // The watch alone would not say when it is stuck (its
                    // consumer is rebuilt inside the client without a
                    // word): the bucket is asked where it stands.
                    let mut probes = tokio::time::interval(PROBE_EVERY);
                    probes.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    let (mut seen, mut stalled) = (self.shared.revision(), 0u32);
                    loop {
                        tokio::select! {
                            e = watch.next() => match e {
                                Some(Ok(e)) => self.apply(e),
                                Some(Err(e)) => {
                                    tracing::warn!(bucket = %self.bucket, error = %e, "gallery: the watch failed; following again");
                                    break;
                                }
                                None => break,
                            },
                            _ = probes.tick() => match self.probe(&mut seen, &mut stalled).await {
                                Probe::Fine => {}
                                Probe::Stalled => {
                                    tracing::warn!(bucket = %self.bucket, revision = seen, "gallery: the replica stopped following; following again");
                                    break;
                                }
                                Probe::Reset => {
                                    tracing::warn!(bucket = %self.bucket, "gallery: the bucket was made anew; reading it again");
                                    if let Ok(empty) = Index::new(self.index.dim()) {
                                        let _ = self.index.replace_with(&empty);
                                    }
                                    self.shared.reset();
                                    break;
                                }
                            },
                            _ = self.shared.stop.notified() => return,
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(bucket = %self.bucket, error = %e, "gallery: cannot watch the bucket; trying again");
                }
            }
            self.shared.following.store(false, Ordering::Relaxed);
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = self.shared.stop.notified() => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    /// Asks the broker for the bucket's last revision: a broker that does
    /// not answer makes the replica not following (it answers from what it
    /// has); `seen` and `stalled` carry the replica's progress between
    /// probes.
    async fn probe(&self, seen: &mut u64, stalled: &mut u32) -> Probe {
        // The replica's revision is read first: the bucket's last revision,
        // read after it, is never below it unless the bucket was made anew.
        let now = self.shared.revision();
        let mut stream = self.store.stream.clone();
        let last = match tokio::time::timeout(PROBE_EVERY, stream.info()).await {
            Ok(Ok(info)) => info.state.last_sequence,
            _ => {
                self.shared.following.store(false, Ordering::Relaxed);
                return Probe::Fine;
            }
        };
        if last < now {
            return Probe::Reset;
        }
        self.shared
            .pending
            .store(last.saturating_sub(self.shared.revision()), Ordering::Relaxed);
        // Behind and not moving: stuck, unless the bucket's last message is
        // gone (a compacted delete marker leaves the last revision behind
        // with nothing to deliver).
        let behind = last > now
            && now == *seen
            && matches!(
                tokio::time::timeout(PROBE_EVERY, stream.get_raw_message(last)).await,
                Ok(Ok(_))
            );
        if behind {
            *stalled += 1;
        } else {
            *stalled = 0;
        }
        *seen = now;
        if *stalled >= STALLED_PROBES {
            return Probe::Stalled;
        }
        self.shared.following.store(*stalled == 0, Ordering::Relaxed);
        Probe::Fine
    }

    /// Applies one delta: a put replaces the person, a delete removes it.
    /// An entry that cannot be used removes the person it names (every
    /// replica does the same), and is counted and logged.
    fn apply(&self, e: kv::Entry) {
        if e.revision <= self.shared.revision() {
            return;
        }
        self.shared.pending.store(e.delta, Ordering::Relaxed);
        let r = match id_of(&e.key) {
            None => Err(format!("key {:?} is not a person's", e.key)),
            Some(id) => {
                let r = match e.operation {
                    kv::Operation::Put => Entry::decode(&e.value, self.index.dim())
                        .map_err(|err| err.to_string())
                        .and_then(|entry| {
                            let views: Vec<&[f32]> = entry.vectors().collect();
                            self.index
                                .upsert(&id, &views, entry.meta())
                                .map_err(|err| err.to_string())
                        }),
                    kv::Operation::Delete | kv::Operation::Purge => {
                        self.index.remove(&id).map(|_| ()).map_err(|err| err.to_string())
                    }
                };
                r.map_err(|why| {
                    let _ = self.index.remove(&id);
                    format!("person {id:?}: {why}")
                })
            }
        };
        if let Err(why) = r {
            self.shared.rejected.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(bucket = %self.bucket, revision = e.revision, %why, "gallery: an entry was not applied");
        }
        self.shared.applied(e.revision, e.delta);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_names_its_vector_length_and_versions_compare() {
        assert_eq!(dim_of(&describe(512)), Some(512));
        assert_eq!(dim_of("someone else's stream"), None);
        assert!(older_than("2.9.10", (2, 9, 21)));
        assert!(older_than("v2.9.20-beta", (2, 9, 21)));
        assert!(!older_than("2.9.21", (2, 9, 21)));
        assert!(!older_than("2.10.0", (2, 9, 21)));
    }
}
