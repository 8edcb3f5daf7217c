//! The service layer: every registry operation, with no HTTP types.
//!
//! Each operation that changes metadata runs as one optimistic transaction (see
//! [`crate::meta`]) and touches the blob store only before (uploads, a version's manifest)
//! or after (deleting manifests, then objects nothing references) it commits, so a crash
//! at any point leaves no version pointing at missing bytes and no committed version
//! missing from the bucket.

pub mod admin;
pub mod backends;
pub mod budget;
mod census;
pub mod fsck;
mod gc;
pub mod instance;
mod inventory;
pub mod limits;
pub mod oci;
pub mod prune;
pub mod pull;
pub mod pulls;
pub mod push;
pub mod reindex;
pub mod retention;
mod summary_record;
pub mod sweep;
pub mod template_record;
pub mod templates;
#[cfg(test)]
mod test_support;
pub mod upload;

use std::sync::Arc;
use std::time::Duration;

use crate::meta::{MetaError, MetaStore, MetaTx};
use crate::model::Invalid;
use crate::store::{BlobStore, StoreError};

/// Why an operation failed; the API maps each kind to an HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The request is malformed or invalid.
    #[error("{0}")]
    BadRequest(String),
    /// A template, version, file or session does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The request contradicts the registry's state.
    #[error("{0}")]
    Conflict(String),
    /// A byte range outside the file.
    #[error("requested range not satisfiable for a file of {size} bytes")]
    RangeNotSatisfiable {
        /// The file's size.
        size: u64,
    },
    /// The metadata store failed.
    #[error(transparent)]
    Meta(#[from] MetaError),
    /// The blob store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The caller holds as many open uploads as it may; it may retry once some end.
    #[error("{0}")]
    TooManyUploads(String),
    /// Too many concurrent changes to the same records; the client may retry.
    #[error("the registry is busy with concurrent changes to the same template; retry")]
    Busy,
}

impl From<Invalid> for RegistryError {
    fn from(e: Invalid) -> Self {
        RegistryError::BadRequest(e.0)
    }
}

/// Result of registry operations.
pub type RegistryResult<T> = Result<T, RegistryError>;

/// The registry: metadata plus bytes.
#[derive(Clone)]
pub struct Registry {
    meta: Arc<dyn MetaStore>,
    blobs: Arc<dyn BlobStore>,
    part_size: u64,
    upload_concurrency: usize,
    part_memory: Arc<budget::PartMemory>,
    frontiers: Arc<upload::Frontiers>,
    limits: limits::Limits,
    pulls: Arc<pulls::PullLog>,
    retention: Arc<retention::RetentionConfig>,
}

impl Registry {
    /// A registry over the given stores; uploads use parts of at least `part_size` bytes,
    /// `upload_concurrency` of them in flight per file.
    pub fn new(
        meta: Arc<dyn MetaStore>,
        blobs: Arc<dyn BlobStore>,
        part_size: u64,
        upload_concurrency: usize,
    ) -> Self {
        let part_size = part_size.max(blobs.min_part_size());
        Self {
            meta,
            blobs,
            part_size,
            upload_concurrency: upload_concurrency.max(1),
            part_memory: Arc::new(budget::PartMemory::new(budget::DEFAULT_PART_MEMORY)),
            frontiers: Arc::new(upload::Frontiers::new(budget::DEFAULT_PART_MEMORY / 4)),
            limits: limits::Limits::default(),
            pulls: Arc::default(),
            retention: Arc::default(),
        }
    }

    /// The same registry with these caps on metadata.
    pub fn with_limits(mut self, limits: limits::Limits) -> Self {
        self.limits = limits;
        self
    }

    /// The same registry with `bytes` of memory for all upload part buffers together.
    pub fn with_part_memory(mut self, bytes: u64) -> Self {
        self.part_memory = Arc::new(budget::PartMemory::new(bytes));
        // Parts held ahead of a hash frontier are not in flight: a quarter of the budget
        // on top of it.
        self.frontiers = Arc::new(upload::Frontiers::new(bytes / 4));
        self
    }

    /// Frees the upload part buffers kept for reuse that went unused for `idle`.
    pub fn release_idle_part_buffers(&self, idle: std::time::Duration) -> usize {
        self.part_memory.release_idle(idle)
    }

    /// The metadata store.
    pub fn meta(&self) -> &dyn MetaStore {
        self.meta.as_ref()
    }

    /// The blob store.
    pub fn blobs(&self) -> &dyn BlobStore {
        self.blobs.as_ref()
    }

    /// Answers when both stores are reachable.
    pub async fn ready(&self) -> RegistryResult<()> {
        self.meta.ping().await?;
        self.blobs.ping().await?;
        Ok(())
    }

    /// The part size for a file: large enough that any file fits in S3's 10,000 parts,
    /// and never above [`budget::MAX_PART_SIZE`] (files are at most
    /// [`model::MAX_FILE_SIZE`](crate::model::MAX_FILE_SIZE)).
    pub fn part_size_for(&self, size: u64) -> u64 {
        const MAX_PARTS: u64 = 10_000;
        const MIB: u64 = 1 << 20;
        let needed = size.div_ceil(MAX_PARTS).div_ceil(MIB) * MIB;
        needed.max(self.part_size).min(budget::MAX_PART_SIZE)
    }

    /// Refuses files whose parts could not be buffered within the part memory.
    pub fn check_file_sizes(&self, sizes: impl IntoIterator<Item = u64>) -> RegistryResult<()> {
        for size in sizes {
            let part = self.part_size_for(size);
            if part > self.part_memory.budget() {
                return Err(RegistryError::BadRequest(format!(
                    "a file of {size} bytes is uploaded in parts of {part} bytes, more than this registry's part memory of {} bytes (--part-memory)",
                    self.part_memory.budget()
                )));
            }
        }
        Ok(())
    }
}

/// Upload sessions untouched this long are abandoned, as distribution decides after 168 h.
pub const UPLOAD_SESSION_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

const MAX_ATTEMPTS: u32 = 200;

/// Runs `op` in a metadata transaction until it commits without a conflict.
pub(crate) async fn transact<T>(
    meta: &dyn MetaStore,
    mut op: impl AsyncFnMut(&mut Box<dyn MetaTx>) -> RegistryResult<T>,
) -> RegistryResult<T> {
    for attempt in 0..MAX_ATTEMPTS {
        let mut tx = meta.begin().await?;
        let out = op(&mut tx).await?;
        if tx.commit().await? {
            return Ok(out);
        }
        // Spread the retries of racing writers so they stop colliding.
        let jitter = uuid::Uuid::new_v4().as_u128() % 8;
        tokio::time::sleep(Duration::from_millis(
            u64::from(attempt.min(20)) * 2 + jitter as u64,
        ))
        .await;
    }
    Err(RegistryError::Busy)
}
