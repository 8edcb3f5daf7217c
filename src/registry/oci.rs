//! The OCI Distribution API's service side: content-addressed blobs uploaded in parts
//! through the same multipart machinery as the vendor protocol, and manifests kept byte
//! for byte under their digest, with tags pointing at them.
//!
//! How it is stored (metadata keys in `meta::keys`, object keys in `store::keys`):
//! - a blob is a [`FileRecord`] under `file:oci-sha256-<hex>` (registry key
//!   `oci-sha256-<hex>`), whose object is `blobs/oci/<upload id>`, the object its upload
//!   completed to; blobs are global by digest, so any repository finds a blob any other
//!   pushed (the spec's automatic content discovery);
//! - an open upload is `oci:upl:<id>` (repository, tail) plus `oci:parts:<id>` (the
//!   multipart state the part pump keeps); bytes past the last whole part wait in a
//!   `uploads/oci/<id>/tail-<end>` object, so memory stays bounded and any replica goes on;
//! - a manifest is `oci:man:<repo>@<digest>` (media type, size) over the object
//!   `oci/manifests/sha256/<hex>`; a tag is `oci:tag:<repo>:<tag>` holding a digest, listed
//!   in the set `oci:tags:<repo>`; repositories are the set `oci:repos`.

use std::fmt::Display;

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use serde::{Deserialize, Serialize};

use super::parts::PartPump;
use super::push::UploadState;
use super::{transact, Registry, RegistryError};
use crate::digest::{is_sha256_hex, sha256_hex};
use crate::meta::{decode, keys, MetaTxExt};
use crate::model::{now, FileRecord};
use crate::store::keys as object_keys;

/// Largest manifest accepted, as distribution does (4 MiB).
pub const MAX_MANIFEST: usize = 4 << 20;

/// Why an OCI operation failed, by the spec's error codes.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    /// No blob with that digest.
    #[error("blob unknown to registry")]
    BlobUnknown,
    /// No open upload with that id in that repository.
    #[error("blob upload unknown to registry")]
    BlobUploadUnknown,
    /// The upload's bytes or range are not acceptable.
    #[error("blob upload invalid: {0}")]
    BlobUploadInvalid(String),
    /// A chunk that does not start where the upload stands; `received` is where it does.
    #[error("chunk does not start at byte {received}")]
    RangeInvalid {
        /// Bytes received so far.
        received: u64,
    },
    /// The digest is malformed, unsupported or does not match the content.
    #[error("provided digest did not match uploaded content: {0}")]
    DigestInvalid(String),
    /// No manifest under that tag or digest.
    #[error("manifest unknown to registry")]
    ManifestUnknown,
    /// The manifest is not acceptable.
    #[error("manifest invalid: {0}")]
    ManifestInvalid(String),
    /// The repository name is malformed.
    #[error("invalid repository name")]
    NameInvalid,
    /// The repository has nothing in it.
    #[error("repository name not known to registry")]
    NameUnknown,
    /// The tag is malformed.
    #[error("manifest tag invalid")]
    TagInvalid,
    /// The stores failed, or a concurrent change won.
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

/// Result of OCI operations.
pub type OciResult<T> = Result<T, OciError>;

impl From<crate::meta::MetaError> for OciError {
    fn from(e: crate::meta::MetaError) -> Self {
        OciError::Registry(e.into())
    }
}

impl From<crate::store::StoreError> for OciError {
    fn from(e: crate::store::StoreError) -> Self {
        OciError::Registry(e.into())
    }
}

/// An open upload, beside its multipart state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct OciUpload {
    repo: String,
    created: u64,
    tail: Option<Tail>,
}

/// Bytes received past the last whole part, kept in an object of their own.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Tail {
    object: String,
    len: u64,
    /// The byte the tail starts at; a tail whose start is not where the parts end was
    /// already sent as a part by a request that died before it could drop it.
    at: u64,
}

/// A stored manifest's record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct ManifestRecord {
    media_type: String,
    size: u64,
    object: String,
}

/// A manifest as served.
#[derive(Clone, Debug)]
pub struct OciManifest {
    /// `sha256:<hex>` of the bytes.
    pub digest: String,
    /// The media type it was pushed with.
    pub media_type: String,
    /// The bytes exactly as pushed.
    pub bytes: Bytes,
}

/// Checks a repository name against the spec's grammar: lowercase path components of
/// alphanumerics joined by `.`, `_`, `__` or dashes, separated by `/`.
pub fn validate_repo(name: &str) -> OciResult<()> {
    let component_ok = |c: &str| {
        let b = c.as_bytes();
        !b.is_empty()
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
            && b.iter()
                .all(|x| x.is_ascii_lowercase() || x.is_ascii_digit() || b"._-".contains(x))
    };
    match name.len() <= 255 && name.split('/').all(component_ok) {
        true => Ok(()),
        false => Err(OciError::NameInvalid),
    }
}

/// Checks a tag: `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
pub fn validate_oci_tag(tag: &str) -> OciResult<()> {
    let b = tag.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|x| x.is_ascii_alphanumeric() || b"._-".contains(x));
    match ok {
        true => Ok(()),
        false => Err(OciError::TagInvalid),
    }
}

/// The hex of a `sha256:<hex>` digest; other algorithms are refused as invalid.
pub fn sha256_of_digest(digest: &str) -> OciResult<&str> {
    match digest.strip_prefix("sha256:") {
        Some(hex) if is_sha256_hex(hex) => Ok(hex),
        _ => Err(OciError::DigestInvalid(format!(
            "{digest:?} is not a sha256 digest"
        ))),
    }
}

fn blob_key(hex: &str) -> String {
    format!("oci-sha256-{hex}")
}

impl Registry {
    /// Opens an upload session in `repo`; answers its id.
    pub async fn oci_start_upload(&self, repo: &str) -> OciResult<String> {
        validate_repo(repo)?;
        let id = uuid::Uuid::new_v4().to_string();
        let record = OciUpload {
            repo: repo.to_string(),
            created: now(),
            tail: None,
        };
        transact(self.meta(), async |tx| {
            tx.put_json(&keys::oci_upload(&id), &record);
            Ok(())
        })
        .await?;
        Ok(id)
    }

    async fn oci_load_upload(&self, repo: &str, id: &str) -> OciResult<(OciUpload, UploadState)> {
        let found = self
            .meta()
            .get_many(&[keys::oci_upload(id), keys::oci_upload_parts(id)])
            .await?;
        let mut found = found.into_iter();
        let upload: OciUpload = match found.next().flatten() {
            Some(bytes) => decode(&keys::oci_upload(id), &bytes)?,
            None => return Err(OciError::BlobUploadUnknown),
        };
        if upload.repo != repo {
            return Err(OciError::BlobUploadUnknown);
        }
        let state = match found.next().flatten() {
            Some(bytes) => decode(&keys::oci_upload_parts(id), &bytes)?,
            None => UploadState::default(),
        };
        Ok((upload, state))
    }

    /// The live tail of an upload: the one that starts where its parts end.
    fn live_tail<'a>(upload: &'a OciUpload, state: &UploadState) -> Option<&'a Tail> {
        upload.tail.as_ref().filter(|t| t.at == state.received)
    }

    /// Bytes an upload has received.
    pub async fn oci_upload_status(&self, repo: &str, id: &str) -> OciResult<u64> {
        let (upload, state) = self.oci_load_upload(repo, id).await?;
        Ok(state.received + Self::live_tail(&upload, &state).map_or(0, |t| t.len))
    }

    /// Appends a body to an upload; `start`, when the client names it, must be where the
    /// upload stands. Answers the bytes received.
    pub async fn oci_append<S, E>(
        &self,
        repo: &str,
        id: &str,
        start: Option<u64>,
        body: S,
    ) -> OciResult<u64>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: Display,
    {
        let (upload, mut state) = self.oci_load_upload(repo, id).await?;
        let received = state.received + Self::live_tail(&upload, &state).map_or(0, |t| t.len);
        if start.is_some_and(|s| s != received) {
            return Err(OciError::RangeInvalid { received });
        }
        let buffer = self.oci_stream(id, &upload, &mut state, body).await?;
        let end = state.received + buffer.len() as u64;
        let tail = match buffer.is_empty() {
            true => None,
            false => {
                let object = object_keys::oci_tail(id, end);
                self.blobs().put(&object, buffer).await?;
                Some(Tail {
                    object,
                    len: end - state.received,
                    at: state.received,
                })
            }
        };
        let old = upload.tail.clone();
        let key = keys::oci_upload(id);
        transact(self.meta(), async |tx| {
            let Some(mut current) = tx.get_json::<OciUpload>(&key).await? else {
                return Err(RegistryError::NotFound("upload cancelled".into()));
            };
            if current.tail != old {
                return Err(RegistryError::Conflict(
                    "another request appended to this upload meanwhile".into(),
                ));
            }
            current.tail = tail.clone();
            tx.put_json(&key, &current);
            Ok(())
        })
        .await
        .map_err(|e| match e {
            RegistryError::NotFound(_) => OciError::BlobUploadUnknown,
            e => OciError::Registry(e),
        })?;
        if let Some(old) = old.filter(|o| Some(o) != tail.as_ref()) {
            let _ = self.blobs().delete(&old.object).await;
        }
        Ok(end)
    }

    /// Streams the live tail and then `body` into whole parts; answers the bytes past the
    /// last whole part (fewer than a part). The multipart upload starts only once a whole
    /// part has come, so a small blob never opens one.
    async fn oci_stream<S, E>(
        &self,
        id: &str,
        upload: &OciUpload,
        state: &mut UploadState,
        mut body: S,
    ) -> OciResult<Bytes>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: Display,
    {
        let part_size = self.part_size as usize;
        let state_key = keys::oci_upload_parts(id);
        // Bytes before the first whole part, fewer than a part.
        let mut first = BytesMut::new();
        if let Some(tail) = Self::live_tail(upload, state) {
            first.extend_from_slice(&self.blobs().read(&tail.object).await?);
        }
        let mut pump = None;
        loop {
            let chunk = match body.next().await {
                Some(Ok(chunk)) => chunk,
                Some(Err(e)) => {
                    if let Some(p) = pump.as_mut() {
                        let _ = PartPump::drain(p, state).await;
                    }
                    return Err(OciError::BlobUploadInvalid(format!("body cut short: {e}")));
                }
                None => break,
            };
            match pump.as_mut() {
                Some(p) => p.feed(chunk, state).await?,
                None if first.len() + chunk.len() < part_size => first.extend_from_slice(&chunk),
                None => {
                    let p = pump.insert(self.oci_pump(id, &state_key, state).await?);
                    p.feed(std::mem::take(&mut first).freeze(), state).await?;
                    p.feed(chunk, state).await?;
                }
            }
        }
        match pump.as_mut() {
            Some(p) => {
                p.drain(state).await?;
                Ok(p.take_filling())
            }
            None => Ok(first.freeze()),
        }
    }

    /// The part pump of an upload, starting its multipart upload on first use.
    async fn oci_pump<'a>(
        &'a self,
        id: &str,
        state_key: &'a str,
        state: &mut UploadState,
    ) -> OciResult<PartPump<'a>> {
        let handle = match state.handle.clone() {
            Some(h) => h,
            None => {
                let h = self
                    .blobs()
                    .begin_upload(&object_keys::blob("oci", id))
                    .await?;
                state.handle = Some(h.clone());
                if let Err(e) = self.save_state(state_key, None, state).await {
                    let _ = self.blobs().abort_upload(&h).await;
                    return Err(e.into());
                }
                h
            }
        };
        Ok(PartPump::new(
            self,
            handle,
            state_key,
            state,
            self.part_size as usize,
        ))
    }

    /// Closes an upload with its last bytes: checks the digest and makes the blob.
    pub async fn oci_finish<S, E>(
        &self,
        repo: &str,
        id: &str,
        digest: &str,
        body: S,
    ) -> OciResult<FileRecord>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: Display,
    {
        let hex = sha256_of_digest(digest)?.to_string();
        let (upload, mut state) = self.oci_load_upload(repo, id).await?;
        let rest = self.oci_stream(id, &upload, &mut state, body).await?;
        let object = object_keys::blob("oci", id);
        let size = state.received + rest.len() as u64;
        let mut hasher = state.hasher.clone();
        hasher.update(&rest);
        let actual = hasher.finalize_hex();
        if actual != hex {
            self.oci_discard(id, &upload, &state).await?;
            return Err(OciError::DigestInvalid(format!(
                "declared sha256:{hex}, received sha256:{actual}"
            )));
        }
        match state.handle.clone() {
            None => self.blobs().put(&object, rest.clone()).await?,
            Some(handle) => {
                let state_key = keys::oci_upload_parts(id);
                if !rest.is_empty() {
                    let mut pump = PartPump::new(
                        self,
                        handle.clone(),
                        &state_key,
                        &state.clone(),
                        self.part_size as usize,
                    );
                    pump.feed(rest.clone(), &mut state).await?;
                    pump.send_tail(&mut state).await?;
                    pump.drain(&mut state).await?;
                }
                self.blobs().complete_upload(&handle, &state.parts).await?;
            }
        }
        let key = blob_key(&hex);
        let fresh = FileRecord {
            key: key.clone(),
            size,
            sha256: hex.clone(),
            object: object.clone(),
            refs: 0,
            pins: Vec::new(),
        };
        let record_key = keys::file(&key);
        let kept = transact(self.meta(), async |tx| {
            let existing = tx.get_json::<FileRecord>(&record_key).await?;
            if existing.is_none() {
                tx.put_json(&record_key, &fresh);
            }
            tx.delete(&keys::oci_upload(id));
            tx.delete(&keys::oci_upload_parts(id));
            tx.set_add(keys::OCI_REPOS, repo);
            Ok(existing)
        })
        .await?;
        if let Some(tail) = &upload.tail {
            let _ = self.blobs().delete(&tail.object).await;
        }
        match kept {
            // The same content was already stored: keep one copy.
            Some(existing) => {
                let _ = self.blobs().delete(&object).await;
                Ok(existing)
            }
            None => Ok(fresh),
        }
    }

    /// Forgets an upload and drops its bytes.
    async fn oci_discard(
        &self,
        id: &str,
        upload: &OciUpload,
        state: &UploadState,
    ) -> OciResult<()> {
        transact(self.meta(), async |tx| {
            tx.delete(&keys::oci_upload(id));
            tx.delete(&keys::oci_upload_parts(id));
            Ok(())
        })
        .await?;
        if let Some(handle) = &state.handle {
            let _ = self.blobs().abort_upload(handle).await;
        }
        if let Some(tail) = &upload.tail {
            let _ = self.blobs().delete(&tail.object).await;
        }
        Ok(())
    }

    /// Cancels an upload.
    pub async fn oci_cancel(&self, repo: &str, id: &str) -> OciResult<()> {
        let (upload, state) = self.oci_load_upload(repo, id).await?;
        self.oci_discard(id, &upload, &state).await
    }

    /// The record of a blob by digest.
    pub async fn oci_blob(&self, repo: &str, digest: &str) -> OciResult<FileRecord> {
        validate_repo(repo)?;
        let hex = sha256_of_digest(digest)?;
        let record_key = keys::file(&blob_key(hex));
        let found = self
            .meta()
            .get_many(std::slice::from_ref(&record_key))
            .await?
            .pop()
            .flatten();
        match found {
            Some(bytes) => Ok(decode(&record_key, &bytes)?),
            None => Err(OciError::BlobUnknown),
        }
    }

    /// Stores a manifest byte for byte and points `reference` at it when it is a tag;
    /// answers its digest.
    pub async fn oci_put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        bytes: Bytes,
    ) -> OciResult<String> {
        validate_repo(repo)?;
        if bytes.len() > MAX_MANIFEST {
            return Err(OciError::ManifestInvalid(format!(
                "larger than {MAX_MANIFEST} bytes"
            )));
        }
        if serde_json::from_slice::<serde_json::Value>(&bytes).map_or(true, |v| !v.is_object()) {
            return Err(OciError::ManifestInvalid("not a JSON object".into()));
        }
        let hex = sha256_hex(&bytes);
        let digest = format!("sha256:{hex}");
        let tag = match reference.starts_with("sha256:") || reference.contains(':') {
            true if reference == digest => None,
            true => {
                return Err(OciError::DigestInvalid(format!(
                    "the manifest's digest is {digest}, not {reference}"
                )))
            }
            false => {
                validate_oci_tag(reference)?;
                Some(reference.to_string())
            }
        };
        let object = object_keys::oci_manifest("sha256", &hex);
        let record = ManifestRecord {
            media_type: media_type.to_string(),
            size: bytes.len() as u64,
            object: object.clone(),
        };
        self.blobs().put(&object, bytes).await?;
        transact(self.meta(), async |tx| {
            tx.put_json(&keys::oci_manifest(repo, &digest), &record);
            if let Some(tag) = &tag {
                tx.put_json(&keys::oci_tag(repo, tag), &digest);
                tx.set_add(&keys::oci_tags(repo), tag);
            }
            tx.set_add(keys::OCI_REPOS, repo);
            Ok(())
        })
        .await?;
        Ok(digest)
    }

    /// A manifest by tag or digest, with its bytes.
    pub async fn oci_manifest(&self, repo: &str, reference: &str) -> OciResult<OciManifest> {
        validate_repo(repo)?;
        let digest = match reference.contains(':') {
            true => {
                sha256_of_digest(reference)?;
                reference.to_string()
            }
            false => {
                validate_oci_tag(reference)?;
                let key = keys::oci_tag(repo, reference);
                match self
                    .meta()
                    .get_many(std::slice::from_ref(&key))
                    .await?
                    .pop()
                    .flatten()
                {
                    Some(bytes) => decode::<String>(&key, &bytes)?,
                    None => return Err(OciError::ManifestUnknown),
                }
            }
        };
        let key = keys::oci_manifest(repo, &digest);
        let record: ManifestRecord = match self
            .meta()
            .get_many(std::slice::from_ref(&key))
            .await?
            .pop()
            .flatten()
        {
            Some(bytes) => decode(&key, &bytes)?,
            None => return Err(OciError::ManifestUnknown),
        };
        let bytes = self.blobs().read(&record.object).await?;
        Ok(OciManifest {
            digest,
            media_type: record.media_type,
            bytes,
        })
    }

    /// The tags of a repository, sorted.
    pub async fn oci_tags(&self, repo: &str) -> OciResult<Vec<String>> {
        validate_repo(repo)?;
        let mut tags = self.meta().members(&keys::oci_tags(repo)).await?;
        if tags.is_empty()
            && !self
                .meta()
                .members(keys::OCI_REPOS)
                .await?
                .iter()
                .any(|r| r == repo)
        {
            return Err(OciError::NameUnknown);
        }
        tags.sort();
        Ok(tags)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_tags_and_digests_follow_the_spec() {
        assert!(validate_repo("a/b-c/d_e.f").is_ok());
        assert!(validate_repo("library/ubuntu").is_ok());
        for bad in ["", "A", "a//b", "-a", "a-", "a/"] {
            assert!(validate_repo(bad).is_err(), "{bad:?}");
        }
        assert!(validate_oci_tag("latest").is_ok() && validate_oci_tag("_v1.2-3").is_ok());
        assert!(validate_oci_tag(".x").is_err() && validate_oci_tag(&"a".repeat(129)).is_err());
        let hex = "a".repeat(64);
        assert_eq!(
            sha256_of_digest(&format!("sha256:{hex}")).ok(),
            Some(hex.as_str())
        );
        assert!(sha256_of_digest("sha256:abc").is_err());
        assert!(sha256_of_digest(&format!("md5:{hex}")).is_err());
    }
}
