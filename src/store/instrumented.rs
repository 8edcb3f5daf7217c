//! The blob store trait for [`Instrumented`]: every operation of the wrapped store timed.

use async_trait::async_trait;
use bytes::Bytes;

use super::{
    BlobStore, ByteStream, ObjectInfo, PartInfo, PendingUpload, Redirect, Space, StoreError,
    StoreResult, UploadHandle,
};
use crate::telemetry::metrics::timed;
use crate::telemetry::Instrumented;

/// A missing object is an answer, not a failure of the store.
fn failed(e: &StoreError) -> bool {
    !matches!(e, StoreError::NotFound(_))
}

#[async_trait]
impl<T: BlobStore> BlobStore for Instrumented<T> {
    async fn begin_upload(&self, key: &str) -> StoreResult<UploadHandle> {
        timed(
            self.name,
            "begin_upload",
            failed,
            self.inner.begin_upload(key),
        )
        .await
    }

    async fn write_part(
        &self,
        upload: &UploadHandle,
        number: u32,
        offset: u64,
        data: Bytes,
    ) -> StoreResult<PartInfo> {
        let write = self.inner.write_part(upload, number, offset, data);
        timed(self.name, "write_part", failed, write).await
    }

    async fn complete_upload(&self, upload: &UploadHandle, parts: &[PartInfo]) -> StoreResult<()> {
        let complete = self.inner.complete_upload(upload, parts);
        timed(self.name, "complete_upload", failed, complete).await
    }

    async fn abort_upload(&self, upload: &UploadHandle) -> StoreResult<()> {
        timed(
            self.name,
            "abort_upload",
            failed,
            self.inner.abort_upload(upload),
        )
        .await
    }

    async fn put(&self, key: &str, data: Bytes) -> StoreResult<()> {
        timed(self.name, "put", failed, self.inner.put(key, data)).await
    }

    async fn get(&self, key: &str, range: Option<(u64, u64)>) -> StoreResult<ByteStream> {
        // Times the request up to the first byte; the body streams afterwards.
        timed(self.name, "get", failed, self.inner.get(key, range)).await
    }

    async fn read(&self, key: &str) -> StoreResult<Bytes> {
        timed(self.name, "read", failed, self.inner.read(key)).await
    }

    async fn delete(&self, key: &str) -> StoreResult<()> {
        timed(self.name, "delete", failed, self.inner.delete(key)).await
    }

    async fn list(&self, prefix: &str) -> StoreResult<Vec<String>> {
        timed(self.name, "list", failed, self.inner.list(prefix)).await
    }

    async fn list_objects(&self, prefix: &str) -> StoreResult<Vec<ObjectInfo>> {
        timed(self.name, "list", failed, self.inner.list_objects(prefix)).await
    }

    async fn list_uploads(&self) -> StoreResult<Vec<PendingUpload>> {
        timed(self.name, "list_uploads", failed, self.inner.list_uploads()).await
    }

    async fn presign_get(&self, key: &str) -> StoreResult<Option<Redirect>> {
        self.inner.presign_get(key).await
    }

    async fn space(&self) -> StoreResult<Option<Space>> {
        timed(self.name, "space", failed, self.inner.space()).await
    }

    async fn ping(&self) -> StoreResult<()> {
        timed(self.name, "ping", failed, self.inner.ping()).await
    }

    fn min_part_size(&self) -> u64 {
        self.inner.min_part_size()
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }
}
