//! Blob uploads: a session per upload, chunks streamed into whole parts (see
//! [`ChunkParts`]), the bytes past the last whole part kept as the upload's tail, and the digest
//! checked when the upload closes.

use std::fmt::Display;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use serde::{Deserialize, Serialize};

use super::parts::ChunkParts;
use super::{
    blob_key, hold, link_value, parse_digest, validate_repo, Algorithm, OciError, OciResult,
};
use crate::meta::{decode, keys, MetaStoreExt, MetaTxExt};
use crate::model::{now, FileRecord};
use crate::registry::budget::PartBuffer;
use crate::registry::limits::{release_upload_place, Door, Uploader};
use crate::registry::upload::{delete_state, UploadState};
use crate::registry::{transact, Registry, RegistryError};
use crate::store::{keys as object_keys, StoreResult};

/// An open upload, beside its multipart state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct OciUpload {
    repo: String,
    created: u64,
    tail: Option<Tail>,
    /// The identity that opened it, as `--max-upload-sessions-per-identity` counts it;
    /// none when it is not counted (authentication off, or an upload older than the cap).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    holder: Option<String>,
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

impl Registry {
    /// Opens an upload session in `repo` for `by`, one of those it may hold open;
    /// answers its id.
    pub async fn oci_start_upload(&self, repo: &str, by: &Uploader) -> OciResult<String> {
        validate_repo(repo)?;
        self.oci_check_repo_room(repo).await?;
        self.oci_check_upload_room().await?;
        let id = uuid::Uuid::new_v4().to_string();
        let record = OciUpload {
            repo: repo.to_string(),
            created: now(),
            tail: None,
            holder: by.key().map(str::to_string),
        };
        transact(self.meta(), async |tx| {
            self.hold_upload_place(tx, Door::Oci, by, &id).await?;
            tx.put_json(&keys::oci_upload(&id), &record);
            tx.set_add(keys::OCI_UPLOADS, &id);
            Ok(())
        })
        .await
        .map_err(|e| match e {
            RegistryError::TooManyUploads(m) => OciError::TooManyUploads(m),
            e => OciError::Registry(e),
        })?;
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
        let rest = self.oci_stream(id, &upload, &mut state, body).await?;
        let rest = rest.filter(|r| !r.buf.is_empty());
        let end = state.received + rest.as_ref().map_or(0, |r| r.buf.len() as u64);
        let tail = match rest {
            None => None,
            Some(rest) => {
                let object = object_keys::oci_tail(id, end);
                // The buffer stays reserved until the store is done with its bytes.
                let (bytes, reservation) = rest.freeze();
                let stored = self.blobs().put(&object, bytes.clone()).await;
                self.part_memory.give_back(bytes, reservation);
                stored?;
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
    /// last whole part (fewer than a part), in their buffer from the part memory. The
    /// multipart upload starts only once a whole part has come, so a small blob never
    /// opens one; the bytes before it are collected in a part buffer too, so that every
    /// byte an upload holds counts in `--part-memory` and an upload past the budget waits
    /// for it before it reads its body.
    async fn oci_stream<S, E>(
        &self,
        id: &str,
        upload: &OciUpload,
        state: &mut UploadState,
        body: S,
    ) -> OciResult<Option<PartBuffer>>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: Display,
    {
        let part_size = self.part_size as usize;
        let state_key = keys::oci_upload_parts(id);
        // Bytes before the first whole part, fewer than a part.
        let mut first: Option<PartBuffer> = None;
        let tail = match Self::live_tail(upload, state) {
            Some(tail) => {
                // Reserved before the read starts, so no store connection waits on it.
                first = Some(self.part_memory.take(part_size).await);
                self.blobs().get(&tail.object, None).await?
            }
            None => futures_util::stream::empty::<StoreResult<Bytes>>().boxed(),
        };
        // The tail's bytes come first, read as a stream into the same buffer as the body's.
        let mut bytes = tail
            .map(|r| r.map_err(|e| Cut::Store(e.into())))
            .chain(body.map(|r| r.map_err(|e| Cut::Body(e.to_string()))));
        let mut parts: Option<ChunkParts> = None;
        loop {
            let next = match parts.as_mut() {
                Some(p) => p.next_chunk(&mut bytes, state).await?,
                None => bytes.next().await,
            };
            let chunk = match next {
                Some(Ok(chunk)) => chunk,
                Some(Err(cut)) => {
                    if let Some(p) = parts.as_mut() {
                        let _ = p.drain(state).await;
                    }
                    return Err(match cut {
                        Cut::Store(e) => e,
                        Cut::Body(e) => OciError::BlobUploadInvalid(format!("body cut short: {e}")),
                    });
                }
                None => break,
            };
            if let Some(p) = parts.as_mut() {
                p.feed(chunk, u64::MAX, state).await?;
                continue;
            }
            let buffer = match first.as_mut() {
                Some(buffer) => buffer,
                None => first.insert(self.part_memory.take(part_size).await),
            };
            if buffer.buf.len() + chunk.len() < part_size {
                buffer.buf.extend_from_slice(&chunk);
                continue;
            }
            let p = parts.insert(self.oci_parts(id, &state_key, state).await?);
            if let Some(buffer) = first.take() {
                p.adopt(buffer, u64::MAX, state).await?;
            }
            p.feed(chunk, u64::MAX, state).await?;
        }
        match parts.as_mut() {
            Some(p) => {
                p.drain(state).await?;
                Ok(p.take_filling())
            }
            None => Ok(first),
        }
    }

    /// Closes an upload with its last bytes: checks the digest (SHA-256 or SHA-512) and
    /// makes the blob, stored under its SHA-256 whatever algorithm named it. `start`, when
    /// the client names it, must be where the upload stands, as for an append: else 416
    /// and the upload stays open.
    pub async fn oci_finish<S, E>(
        &self,
        repo: &str,
        id: &str,
        start: Option<u64>,
        digest: &str,
        body: S,
    ) -> OciResult<FileRecord>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: Display,
    {
        let (algorithm, declared) = parse_digest(digest)?;
        let (upload, mut state) = self.oci_load_upload(repo, id).await?;
        let received = state.received + Self::live_tail(&upload, &state).map_or(0, |t| t.len);
        if start.is_some_and(|s| s != received) {
            return Err(OciError::RangeInvalid { received });
        }
        let rest = self.oci_stream(id, &upload, &mut state, body).await?;
        let last: &[u8] = rest.as_ref().map_or(&[], |r| &r.buf);
        let object = object_keys::blob("oci", id);
        let size = state.received + last.len() as u64;
        let mut hasher = state.hasher.clone();
        hasher.update(last);
        let hex = hasher.finalize_hex();
        // The digest is checked before the blob is stored when the bytes at hand tell it:
        // a SHA-256 always (the parts keep its running state), a SHA-512 of a blob that
        // never filled a part.
        let early = match (algorithm, &state.handle) {
            (Algorithm::Sha256, _) => Some(hex.clone()),
            (Algorithm::Sha512, None) => Some(algorithm.hex(last)),
            (Algorithm::Sha512, Some(_)) => None,
        };
        if let Some(actual) = early.filter(|a| a != declared) {
            drop(rest);
            self.oci_discard(id, &upload, &state).await?;
            return Err(mismatch(digest, algorithm, &actual));
        }
        match (state.handle.clone(), rest) {
            (None, rest) => {
                let (bytes, reservation) = match rest {
                    Some(rest) => {
                        let (bytes, reservation) = rest.freeze();
                        (bytes, Some(reservation))
                    }
                    None => (Bytes::new(), None),
                };
                let stored = self.blobs().put(&object, bytes.clone()).await;
                if let Some(reservation) = reservation {
                    self.part_memory.give_back(bytes, reservation);
                }
                stored?;
            }
            (Some(handle), rest) => {
                let state_key = keys::oci_upload_parts(id);
                if let Some(rest) = rest {
                    let mut writer = self.oci_parts(id, &state_key, &mut state).await?;
                    writer.adopt(rest, size, &mut state).await?;
                    writer.drain(&mut state).await?;
                }
                let parts = self
                    .upload_parts(&keys::oci_upload_parts(id), &state)
                    .await?;
                self.blobs().complete_upload(&handle, &parts).await?;
            }
        }
        if algorithm == Algorithm::Sha512 && state.handle.is_some() {
            // No running SHA-512 is kept across parts: the stored bytes are read back
            // once, streamed, to check it.
            let actual = self.oci_sha512_of(&object).await?;
            if actual != declared {
                self.oci_discard(id, &upload, &state).await?;
                let _ = self.blobs().delete(&object).await;
                return Err(mismatch(digest, algorithm, &actual));
            }
        }
        let fresh = FileRecord {
            key: blob_key(&hex),
            size,
            sha256: hex.clone(),
            object: object.clone(),
            refs: 0,
            pins: Vec::new(),
        };
        let link = keys::oci_blob(repo, digest);
        let held = transact(self.meta(), async |tx| {
            if tx.get(&keys::oci_upload(id)).await?.is_none() {
                return Err(RegistryError::NotFound("upload cancelled".into()));
            }
            tx.delete(&keys::oci_upload(id));
            delete_state(tx, &keys::oci_upload_parts(id)).await?;
            tx.set_remove(keys::OCI_UPLOADS, id);
            release_upload_place(tx, Door::Oci, upload.holder.as_deref(), id);
            tx.set_add(keys::OCI_REPOS, repo);
            // A repository that holds the blob already keeps its one reference.
            if let Some(record) = tx.get_json::<FileRecord>(&keys::file(&fresh.key)).await? {
                if tx.get(&link).await?.is_some() {
                    return Ok(record);
                }
            }
            tx.put_json(&link, &link_value(digest, &hex));
            if algorithm != Algorithm::Sha256 {
                tx.put_json(&keys::oci_content_alias(digest), &hex);
            }
            hold(tx, &fresh).await
        })
        .await
        .map_err(|e| match e {
            RegistryError::NotFound(_) => OciError::BlobUploadUnknown,
            e => OciError::Registry(e),
        })?;
        if let Some(tail) = &upload.tail {
            let _ = self.blobs().delete(&tail.object).await;
        }
        if held.object != object {
            // The same content was already stored: keep one copy.
            let _ = self.blobs().delete(&object).await;
        }
        Ok(held)
    }

    /// The SHA-512 hex of a stored object, read as a stream.
    async fn oci_sha512_of(&self, object: &str) -> OciResult<String> {
        use sha2::Digest as _;
        let mut hasher = sha2::Sha512::new();
        let mut stream = self.blobs().get(object, None).await?;
        while let Some(chunk) = stream.next().await {
            hasher.update(&chunk?);
        }
        Ok(hex::encode(hasher.finalize()))
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
            delete_state(tx, &keys::oci_upload_parts(id)).await?;
            tx.set_remove(keys::OCI_UPLOADS, id);
            release_upload_place(tx, Door::Oci, upload.holder.as_deref(), id);
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

    /// The open uploads started before `cutoff` (seconds since the epoch), by id with
    /// their repository; ids left in the set without a record are answered with `None`.
    async fn oci_uploads_before(
        &self,
        cutoff: u64,
    ) -> Result<Vec<(String, Option<String>)>, RegistryError> {
        let ids = self.meta().members(keys::OCI_UPLOADS).await?;
        let wanted: Vec<String> = ids.iter().map(|id| keys::oci_upload(id)).collect();
        let found = self.meta().get_many_json::<OciUpload>(&wanted).await?;
        Ok(ids
            .into_iter()
            .zip(found)
            .filter_map(|(id, upload)| match upload {
                Some(u) if u.created < cutoff => Some((id, Some(u.repo))),
                Some(_) => None,
                None => Some((id, None)),
            })
            .collect())
    }

    /// Lists in the set of open uploads those opened before the set existed, which
    /// would otherwise be neither counted against `--max-upload-sessions` nor expired;
    /// answers how many (with `dry_run`, how many it would). The keys are walked before
    /// the set is read: an upload opens with both at once, so a record seen without its
    /// member is one that never had one.
    pub async fn oci_adopt_uploads(&self, dry_run: bool) -> Result<usize, RegistryError> {
        let prefix = keys::oci_upload("");
        let found = self.meta().keys_with_prefix(&prefix).await?;
        let listed: std::collections::HashSet<String> = self
            .meta()
            .members(keys::OCI_UPLOADS)
            .await?
            .into_iter()
            .collect();
        let mut adopted = 0;
        for key in &found {
            let Some(id) = key.strip_prefix(&prefix).filter(|id| !listed.contains(*id)) else {
                continue;
            };
            adopted += 1;
            if !dry_run {
                transact(self.meta(), async |tx| {
                    // Closed meanwhile: nothing to adopt.
                    if tx.get(key).await?.is_some() {
                        tx.set_add(keys::OCI_UPLOADS, id);
                    }
                    Ok(())
                })
                .await?;
            }
        }
        Ok(adopted)
    }

    /// How many open uploads are older than `max_age_secs`.
    pub async fn oci_count_stale_uploads(&self, max_age_secs: u64) -> Result<usize, RegistryError> {
        let cutoff = now().saturating_sub(max_age_secs);
        let stale = self.oci_uploads_before(cutoff).await?;
        Ok(stale.iter().filter(|(_, repo)| repo.is_some()).count())
    }

    /// Cancels the uploads older than `max_age_secs`, as the vendor protocol's stale
    /// sessions are aborted; answers how many.
    pub async fn oci_purge_stale_uploads(&self, max_age_secs: u64) -> Result<usize, RegistryError> {
        let cutoff = now().saturating_sub(max_age_secs);
        let mut purged = 0;
        for (id, repo) in self.oci_uploads_before(cutoff).await? {
            let Some(repo) = repo else {
                // A member without a record (closed meanwhile): clear the membership.
                transact(self.meta(), async |tx| {
                    if tx.get(&keys::oci_upload(&id)).await?.is_none() {
                        tx.set_remove(keys::OCI_UPLOADS, &id);
                    }
                    Ok(())
                })
                .await?;
                continue;
            };
            match self.oci_cancel(&repo, &id).await {
                Ok(()) => purged += 1,
                // Closed or cancelled by its client meanwhile.
                Err(OciError::BlobUploadUnknown) => {}
                Err(OciError::Registry(e)) => return Err(e),
                Err(e) => return Err(RegistryError::Conflict(e.to_string())),
            }
        }
        Ok(purged)
    }
}

/// Why the bytes of an append stopped: the stored tail could not be read, or the
/// client's body broke off.
enum Cut {
    Store(OciError),
    Body(String),
}

/// The error for content whose digest is not the one declared.
fn mismatch(declared: &str, algorithm: Algorithm, actual: &str) -> OciError {
    OciError::DigestInvalid(format!(
        "declared {declared}, received {}",
        algorithm.digest(actual)
    ))
}
