//! A blob store for unit tests: the local store, remembering the order of deletions and
//! refusing writes under a prefix when told to.

use std::sync::Mutex;

use async_trait::async_trait;
use bytes::Bytes;

use super::fs::FsStore;
use super::{
    BlobStore, ByteStream, ObjectInfo, PartInfo, PendingUpload, Space, StoreError, StoreResult,
    UploadHandle,
};

/// The local store, watched.
pub(crate) struct Watched {
    inner: FsStore,
    /// Keys deleted, in order.
    pub(crate) deletes: Mutex<Vec<String>>,
    /// Writes of whole objects under this prefix fail.
    pub(crate) refuse_puts: Mutex<Option<String>>,
}

impl Watched {
    pub(crate) fn new(inner: FsStore) -> Self {
        Self {
            inner,
            deletes: Mutex::default(),
            refuse_puts: Mutex::default(),
        }
    }
}

#[async_trait]
impl BlobStore for Watched {
    async fn begin_upload(&self, key: &str) -> StoreResult<UploadHandle> {
        self.inner.begin_upload(key).await
    }
    async fn write_part(
        &self,
        u: &UploadHandle,
        n: u32,
        o: u64,
        d: Bytes,
    ) -> StoreResult<PartInfo> {
        self.inner.write_part(u, n, o, d).await
    }
    async fn complete_upload(&self, u: &UploadHandle, p: &[PartInfo]) -> StoreResult<()> {
        self.inner.complete_upload(u, p).await
    }
    async fn abort_upload(&self, u: &UploadHandle) -> StoreResult<()> {
        self.inner.abort_upload(u).await
    }
    async fn put(&self, key: &str, data: Bytes) -> StoreResult<()> {
        let refused = self.refuse_puts.lock().unwrap().clone();
        if refused.is_some_and(|p| key.starts_with(&p)) {
            return Err(StoreError::Unavailable(format!("refused write of {key}")));
        }
        self.inner.put(key, data).await
    }
    async fn get(&self, key: &str, range: Option<(u64, u64)>) -> StoreResult<ByteStream> {
        self.inner.get(key, range).await
    }
    async fn read(&self, key: &str) -> StoreResult<Bytes> {
        self.inner.read(key).await
    }
    async fn delete(&self, key: &str) -> StoreResult<()> {
        self.deletes.lock().unwrap().push(key.to_string());
        self.inner.delete(key).await
    }
    async fn list_objects(&self, prefix: &str) -> StoreResult<Vec<ObjectInfo>> {
        self.inner.list_objects(prefix).await
    }
    async fn list_uploads(&self) -> StoreResult<Vec<PendingUpload>> {
        self.inner.list_uploads().await
    }
    async fn space(&self) -> StoreResult<Option<Space>> {
        self.inner.space().await
    }
    async fn ping(&self) -> StoreResult<()> {
        self.inner.ping().await
    }
    fn min_part_size(&self) -> u64 {
        self.inner.min_part_size()
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
}
