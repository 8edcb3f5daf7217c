//! The blob store: file bytes, streamed in parts and out by ranges.
//!
//! Uploads are multipart: `begin_upload`, then `write_part` for parts 1.. (each but the
//! last at least the store's minimum part size), then `complete_upload`, which makes the
//! object visible under its key at once, or `abort_upload`. This is S3's model; the local
//! filesystem store follows it so that the service above has one code path.

#[cfg(test)]
mod contract;
pub mod fs;
pub mod instrumented;
pub mod memory;
pub mod ranged;
pub mod s3;
pub mod shared;
#[cfg(test)]
pub(crate) mod testing;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::BoxStream;
use serde::{Deserialize, Serialize};

/// A failure of the blob backend.
#[derive(Clone, Debug, thiserror::Error)]
pub enum StoreError {
    /// No object under that key.
    #[error("object {0} not found")]
    NotFound(String),
    /// The backend cannot be reached or answered with an error.
    #[error("blob store unavailable: {0}")]
    Unavailable(String),
}

/// Result of blob store operations.
pub type StoreResult<T> = Result<T, StoreError>;

/// A stream of object bytes.
pub type ByteStream = BoxStream<'static, StoreResult<Bytes>>;

/// A multipart upload in progress; kept in the metadata store so any replica can go on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadHandle {
    /// The object key the upload will complete to.
    pub key: String,
    /// The backend's id for the upload (S3 upload id, or a temporary file name).
    pub upload_id: String,
}

/// A part that was written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartInfo {
    /// 1-based part number.
    pub number: u32,
    /// Bytes in the part.
    pub size: u64,
    /// The backend's tag for the part (S3 ETag).
    pub etag: String,
}

/// Where a download may be sent instead of streaming it through the server.
#[derive(Clone, Debug)]
pub struct Redirect {
    /// A presigned URL.
    pub url: String,
}

/// Free and total bytes of the storage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Space {
    /// Bytes free.
    pub free: u64,
    /// Bytes in all.
    pub total: u64,
}

/// An object as a listing shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectInfo {
    /// The object's key.
    pub key: String,
    /// Bytes in the object.
    pub size: u64,
    /// Epoch seconds of its last write.
    pub modified: u64,
}

/// A multipart upload the store holds that was neither completed nor aborted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingUpload {
    /// The key it would complete to, when the store records it (S3 does; the local disk
    /// store's temporary files do not).
    pub key: Option<String>,
    /// The backend's id for the upload.
    pub upload_id: String,
    /// Epoch seconds of its start.
    pub started: u64,
}

/// A byte store for files and manifests.
#[async_trait]
pub trait BlobStore: Send + Sync {
    /// Starts a multipart upload to `key`.
    async fn begin_upload(&self, key: &str) -> StoreResult<UploadHandle>;
    /// Writes part `number` (1-based), which starts at byte `offset` of the object.
    async fn write_part(
        &self,
        upload: &UploadHandle,
        number: u32,
        offset: u64,
        data: Bytes,
    ) -> StoreResult<PartInfo>;
    /// Makes the object visible from its parts, in order.
    async fn complete_upload(&self, upload: &UploadHandle, parts: &[PartInfo]) -> StoreResult<()>;
    /// Discards an upload and its parts.
    async fn abort_upload(&self, upload: &UploadHandle) -> StoreResult<()>;
    /// Writes a small object whole (manifests, empty files).
    async fn put(&self, key: &str, data: Bytes) -> StoreResult<()>;
    /// Streams an object, or the byte range `start..end` of it.
    async fn get(&self, key: &str, range: Option<(u64, u64)>) -> StoreResult<ByteStream>;
    /// Reads a small object whole.
    async fn read(&self, key: &str) -> StoreResult<Bytes>;
    /// Deletes an object; deleting a missing object succeeds.
    async fn delete(&self, key: &str) -> StoreResult<()>;
    /// Keys under a prefix.
    async fn list(&self, prefix: &str) -> StoreResult<Vec<String>> {
        Ok(self
            .list_objects(prefix)
            .await?
            .into_iter()
            .map(|o| o.key)
            .collect())
    }
    /// Objects under a prefix, with their sizes and ages.
    async fn list_objects(&self, prefix: &str) -> StoreResult<Vec<ObjectInfo>>;
    /// Multipart uploads (and temporary files) never completed nor aborted.
    async fn list_uploads(&self) -> StoreResult<Vec<PendingUpload>>;
    /// A URL the client may fetch the range from directly, when the store offers one.
    async fn presign_get(&self, _key: &str) -> StoreResult<Option<Redirect>> {
        Ok(None)
    }
    /// Free and total bytes, when the store knows them.
    async fn space(&self) -> StoreResult<Option<Space>>;
    /// Answers when the backend is reachable.
    async fn ping(&self) -> StoreResult<()>;
    /// The smallest part size the store accepts (all parts but the last).
    fn min_part_size(&self) -> u64;
    /// A short name for logs and the start-up banner.
    fn describe(&self) -> String;
}

/// Object keys, made in one place.
pub mod keys {
    use uuid::Uuid;

    /// The object holding one upload of a file; unique per upload so that deleting an
    /// unreferenced file can never remove the bytes of a newer upload of the same name.
    pub fn blob(file_key: &str, upload: &str) -> String {
        format!("blobs/{file_key}/{upload}")
    }

    /// Prefix of a template's manifests.
    pub fn manifest_prefix(id: &Uuid) -> String {
        format!("manifests/{id}/")
    }

    /// The manifest of a version committed before manifests were written ahead of the
    /// commit (see [`push_manifest`]).
    pub fn manifest(id: &Uuid, number: u32, push_id: &str) -> String {
        format!("manifests/{id}/v{number:010}-{push_id}.json")
    }

    /// The manifest a push writes before its commit, named by the push alone so that the
    /// push can rewrite it until the commit and remove it when it ends without one.
    pub fn push_manifest(id: &Uuid, push_id: &str) -> String {
        format!("manifests/{id}/{PUSH_MANIFEST}{push_id}.json")
    }

    /// The file name prefix of [`push_manifest`] keys.
    pub const PUSH_MANIFEST: &str = "push-";

    /// The template and push a version's manifest key names, in either naming
    /// ([`push_manifest`], or the older [`manifest`]).
    pub fn manifest_owner(key: &str) -> Option<(Uuid, &str)> {
        let (id, file) = key.strip_prefix("manifests/")?.split_once('/')?;
        let file = file.strip_suffix(".json")?;
        let push = match file.strip_prefix(PUSH_MANIFEST) {
            Some(push) => push,
            None => {
                let (number, push) = file.strip_prefix('v')?.split_once('-')?;
                let numeric = !number.is_empty() && number.bytes().all(|b| b.is_ascii_digit());
                numeric.then_some(push)?
            }
        };
        Some((id.parse().ok()?, push))
    }

    /// The template-level record (name, arch, creation) beside its manifests.
    pub fn template_record(id: &Uuid) -> String {
        format!("manifests/{id}/template.json")
    }

    /// Where identities are kept (API keys, permission groups, the sealed session signing
    /// key), as the truth `vmreg admin reindex` restores them from. Nothing under it is a
    /// file's bytes or a manifest: gc and fsck's object checks never list it.
    pub const IDENTITIES: &str = "identities/";

    /// One generation of an API key (its public key, groups, lifetime), rewritten by every
    /// change of that generation. Named by id and generation, so that a re-created id (a new
    /// generation) never overwrites, nor is overwritten by, a write for an older one.
    pub fn identity_key(id: &str, generation: &str) -> String {
        format!("{IDENTITIES}keys/{id}.{generation}.json")
    }

    /// The start of every [`identity_key`] object.
    pub const IDENTITY_KEYS: &str = "identities/keys/";

    /// The mark that a key's generation was deleted: written once, before the metadata
    /// store forgets the key, and never rewritten, so no write racing the delete brings it
    /// back.
    pub fn identity_revoked(id: &str, generation: &str) -> String {
        format!("{IDENTITIES}revoked/{id}.{generation}.json")
    }

    /// The start of every [`identity_revoked`] object.
    pub const IDENTITY_REVOKED: &str = "identities/revoked/";

    /// A permission group, or the mark that it was deleted. A short digest of the exact
    /// name keeps `CI` and `ci` apart on a case-insensitive disk.
    pub fn identity_group(name: &str) -> String {
        let digest = ring::digest::digest(&ring::digest::SHA256, name.as_bytes());
        format!(
            "{IDENTITIES}groups/{name}.{}.json",
            hex::encode(&digest.as_ref()[..8])
        )
    }

    /// The start of every [`identity_group`] object.
    pub const IDENTITY_GROUPS: &str = "identities/groups/";

    /// The session signing secret, sealed with AES-256-GCM under `--identity-secret`.
    pub const IDENTITY_SIGNING_KEY: &str = "identities/signing-key.json";

    // Per-template grants (the vendor's `resource_type: "template"`) go beside the groups,
    // one object per group and template, `identities/grants/<group>.<digest>/<template>.json`,
    // written before the metadata commit like the groups (see `auth::durable`).

    /// The bytes of an OCI blob upload past its last whole part, ending at byte `end`;
    /// named by where they end, so a new tail never overwrites the one a record names.
    pub fn oci_tail(upload: &str, end: u64) -> String {
        format!("uploads/oci/{upload}/tail-{end:020}")
    }
}
