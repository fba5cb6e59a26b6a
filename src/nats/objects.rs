//! A job's images in the object store: each located from its metadata
//! (its size, a link followed once, to the same bucket) before the job is
//! admitted, then read within its size, under a timeout and the job's
//! deadline. An object that links to itself, or whose chunks are gone,
//! cannot hold a job.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use tokio::io::AsyncReadExt;

use super::delivery::{Worker, MAX_OBJECT_BYTES};
use super::job::ImageRef;
use super::results::Fail;
use crate::service::ErrorKind;

impl Worker {
    /// The bucket, looked up once.
    async fn store(&self) -> Result<&jetstream::object_store::ObjectStore, Fail> {
        self.bucket
            .get_or_try_init(|| self.js.get_object_store(&self.config.bucket))
            .await
            .map_err(|e| {
                Fail::new(
                    ErrorKind::Internal,
                    "object_store",
                    format!("the image bucket: {e}"),
                )
            })
    }

    /// An image's bytes if inline (decoded now: the job holds them
    /// already), or its object, resolved and sized from its metadata (a
    /// link followed once, to an object of the same bucket).
    pub(super) async fn locate(
        &self,
        n: usize,
        r: &ImageRef,
        deadline: Option<Instant>,
    ) -> Result<Located, Fail> {
        let object = match r {
            ImageRef::Inline(s) => {
                let bytes = crate::service::wire::decode_base64(&format!("image {n}"), s)
                    .map_err(|e| Fail::of(&e))?;
                if bytes.is_empty() {
                    return Err(Fail::now("empty_image", format!("image {n}: empty")));
                }
                return Ok(Located::Bytes(bytes));
            }
            ImageRef::Object { object } => object,
        };
        let store = self.store().await?;
        let failed = |what: &str, e: &dyn std::fmt::Display| {
            Fail::new(
                ErrorKind::Internal,
                "object_store",
                format!("image {n}: {what} {object:?}: {e}"),
            )
        };
        let mut info = bounded(deadline, store.info(object))
            .await?
            .map_err(|e| failed("no object", &e))?;
        let mut name = object.clone();
        if let Some(link) = info.options.as_ref().and_then(|o| o.link.clone()) {
            let (Some(target), true) = (link.name, link.bucket == self.config.bucket) else {
                return Err(Fail::now(
                    "object_link",
                    format!("image {n}: object {object:?} links to a bucket or another bucket"),
                ));
            };
            info = bounded(deadline, store.info(&target))
                .await?
                .map_err(|e| failed("the link's target of", &e))?;
            if info.options.as_ref().is_some_and(|o| o.link.is_some()) {
                return Err(Fail::now(
                    "object_link",
                    format!("image {n}: object {object:?} links to a link"),
                ));
            }
            name = target;
        }
        if info.deleted {
            return Err(failed("deleted", &"the object was deleted"));
        }
        if info.size as u64 > MAX_OBJECT_BYTES {
            return Err(Fail::new(
                ErrorKind::TooLarge,
                "image_too_large",
                format!("image {n}: object {object:?} is over {MAX_OBJECT_BYTES} bytes"),
            ));
        }
        if info.size == 0 {
            return Err(Fail::now(
                "empty_image",
                format!("image {n}: object {object:?} is empty"),
            ));
        }
        Ok(Located::Object {
            name,
            size: info.size,
        })
    }

    /// A located image's bytes: an object read within its size (what
    /// arrives must be what its metadata says), within
    /// [`OBJECT_READ_TIMEOUT`] and the job's deadline.
    pub(super) async fn read(
        &self,
        n: usize,
        l: Located,
        deadline: Option<Instant>,
    ) -> Result<Arc<[u8]>, Fail> {
        let (name, size) = match l {
            Located::Bytes(b) => return Ok(b),
            Located::Object { name, size } => (name, size),
        };
        let store = self.store().await?;
        let read = async {
            let obj = store.get(&name).await.map_err(|e| e.to_string())?;
            let mut bytes = Vec::with_capacity(size);
            obj.take(size as u64 + 1)
                .read_to_end(&mut bytes)
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(bytes)
        };
        let bytes = bounded(deadline, read).await?.map_err(|e| {
            Fail::new(
                ErrorKind::Internal,
                "object_store",
                format!("image {n}: cannot read {name:?}: {e}"),
            )
        })?;
        if bytes.len() != size {
            return Err(Fail::new(
                ErrorKind::Internal,
                "object_store",
                format!(
                    "image {n}: object {name:?} read {} bytes, its metadata says {size}",
                    bytes.len()
                ),
            ));
        }
        Ok(bytes.into())
    }
}

/// Where an image of a job is.
pub(super) enum Located {
    /// Inline: its bytes.
    Bytes(Arc<[u8]>),
    /// An object of the bucket (a link resolved): its name and size.
    Object { name: String, size: usize },
}

impl Located {
    pub(super) fn bytes(&self) -> usize {
        match self {
            Located::Bytes(b) => b.len(),
            Located::Object { size, .. } => *size,
        }
    }
}

/// How long one object-store request (a lookup, or a read) may take.
const OBJECT_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// `f` within [`OBJECT_READ_TIMEOUT`] and the job's deadline: past the
/// deadline the job is late (dead-lettered), past the timeout the object
/// store failed (retried).
async fn bounded<T>(deadline: Option<Instant>, f: impl std::future::Future<Output = T>) -> Result<T, Fail> {
    let by_timeout = Instant::now() + OBJECT_READ_TIMEOUT;
    let (until, late) = match deadline {
        Some(d) if d < by_timeout => (d, true),
        _ => (by_timeout, false),
    };
    match tokio::time::timeout_at(until.into(), f).await {
        Ok(v) => Ok(v),
        Err(_) if late => Err(Fail::new(
            ErrorKind::Deadline,
            "deadline_exceeded",
            "the job's deadline passed while its images were read",
        )),
        Err(_) => Err(Fail::new(
            ErrorKind::Internal,
            "object_timeout",
            format!(
                "the object store did not answer within {} s",
                OBJECT_READ_TIMEOUT.as_secs()
            ),
        )),
    }
}
