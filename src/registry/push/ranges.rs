//! A pushed file's parts written in any order: a request sends the parts of its range,
//! several in flight, and records each durable part in the file's part set (see
//! [`UploadState::insert_part`]); requests on other ranges, on any replica, do the same
//! under optimistic transactions. The file's hash frontier hashes the parts that land in
//! order; the file is checked and made an object when its last part lands.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use tokio::sync::Mutex;

use super::session::SessionFile;
use crate::digest::ResumableSha256;
use crate::meta::{keys, MetaTxExt};
use crate::registry::upload::{
    delete_state, write_state, Frontier, PartPlace, PartWriter, RecordPart, UploadState,
};
use crate::registry::{transact, Registry, RegistryError, RegistryResult};
use crate::store::{PartInfo, UploadHandle};

fn restarted() -> RegistryError {
    RegistryError::Conflict(
        "the upload of this file was restarted; ask for its status and resume".into(),
    )
}

/// Writes and records the parts of one request's range.
pub(super) type RangeWriter<'a> = PartWriter<'a, Ranges<'a>>;

impl<'a> RangeWriter<'a> {
    /// Writes parts of `file`'s upload `handle` as `writer`, from a body starting at byte
    /// `at`, on this replica's frontier.
    pub(super) async fn ranges(
        registry: &'a Registry,
        at: u64,
        file: &'a SessionFile,
        state_key: &'a str,
        writer: &'a str,
        handle: UploadHandle,
        state: &UploadState,
    ) -> Self {
        let frontier = registry.frontiers.get(state_key, &state.hasher);
        frontier.lock().await.adopt(&state.hasher);
        let ranges = Ranges {
            registry,
            file,
            state_key,
            writer,
            handle: handle.clone(),
            frontier,
        };
        PartWriter::new(registry, handle, (at, file.part_size), ranges)
    }
}

/// How the parts of a file pushed as ranges are recorded: in its part set, under the
/// request's claim, with its hash frontier.
pub(super) struct Ranges<'a> {
    registry: &'a Registry,
    file: &'a SessionFile,
    state_key: &'a str,
    writer: &'a str,
    handle: UploadHandle,
    frontier: Arc<Mutex<Frontier>>,
}

impl RecordPart for Ranges<'_> {
    type With = ();

    fn sending(&mut self, _: &[u8]) {}

    /// Offers the part to the frontier.
    fn durable(&self, offset: u64, part: Bytes) -> Option<BoxFuture<'static, ()>> {
        let (frontiers, frontier) = (self.registry.frontiers.clone(), self.frontier.clone());
        Some(Box::pin(async move {
            frontiers.offer(&frontier, offset, &part).await
        }))
    }

    /// Adds a durable part to the file's part set, with the furthest hash state this
    /// replica has within the contiguous durable bytes.
    async fn record(
        &mut self,
        part: PartInfo,
        (): (),
        state: &mut UploadState,
    ) -> RegistryResult<()> {
        let (key, file, part) = (self.state_key, self.file, &part);
        *state = transact(self.registry.meta(), async |tx| {
            let Some(current) = tx.get_json::<UploadState>(key).await? else {
                return Err(restarted());
            };
            if current.handle.as_ref() != Some(&self.handle) {
                return Err(restarted());
            }
            if current.complete() {
                return Ok(current);
            }
            match current.place(self.writer, part.number) {
                PartPlace::Durable => return Ok(current),
                PartPlace::TakenOver => {
                    return Err(RegistryError::Conflict(format!(
                        "a newer request sends part {} of this file; ask for its status and resume",
                        part.number
                    )))
                }
                PartPlace::Open => {}
            }
            let mut next = current.clone();
            next.insert_part(part.number, file.size, file.part_size);
            let frontier = self.frontier.lock().await;
            if let Some(s) = frontier.snapshot_within(next.hasher.len(), next.received) {
                next.hasher = s;
            }
            write_state(tx, key, Some(&current), &next, None);
            tx.put_json(&keys::upload_part(key, part.number), part);
            Ok(next)
        })
        .await?;
        let mut frontier = self.frontier.lock().await;
        frontier.adopt(&state.hasher);
        frontier.recorded(state.hasher.len());
        Ok(())
    }
}

impl Registry {
    /// Finishes a file whose parts are all durable but that no request finished: the one
    /// that landed the last part lost the metadata store before it could (a Redis
    /// failover), and the client, told every byte is durable, sends nothing more. Its
    /// commit finishes it instead, as that request would have.
    pub(super) async fn finish_received(
        &self,
        file: &SessionFile,
        state_key: &str,
        state: UploadState,
    ) -> RegistryResult<UploadState> {
        let Some(handle) = state.handle.clone() else {
            return Ok(state);
        };
        let frontier = self.frontiers.get(state_key, &state.hasher);
        let ranges = Ranges {
            registry: self,
            file,
            state_key,
            writer: "",
            handle,
            frontier,
        };
        ranges.finish(state).await
    }
}

impl Ranges<'_> {
    /// Checks the file whose parts are all durable against its declared digest and makes
    /// it an object. The bytes the frontier has not hashed are read back from the store,
    /// which can read them only once the object is made: then a mismatch deletes it.
    pub(super) async fn finish(&self, state: UploadState) -> RegistryResult<UploadState> {
        let r = self.registry;
        let mut hasher = {
            let mut frontier = self.frontier.lock().await;
            frontier.adopt(&state.hasher);
            frontier.hasher().clone()
        };
        let parts = r.upload_parts(self.state_key, &state).await?;
        let read_back = hasher.len() < self.file.size;
        if read_back {
            if let Some(done) = self.complete(&parts).await? {
                return Ok(done);
            }
            self.read_back(&mut hasher).await?;
        }
        let digest = hasher.finalize_hex();
        if let Some(declared) = self.file.sha256.as_ref().filter(|d| **d != digest) {
            // Start the file over: the bytes are not the ones declared.
            let _ = match read_back {
                true => r.blobs.delete(&self.handle.key).await,
                false => r.blobs.abort_upload(&self.handle).await,
            };
            transact(r.meta(), async |tx| delete_state(tx, self.state_key).await).await?;
            r.frontiers.forget(self.state_key);
            return Err(RegistryError::BadRequest(format!(
                "SHA-256 mismatch for {}: declared {declared}, received {digest}; upload it again",
                self.file.name
            )));
        }
        if !read_back {
            if let Some(done) = self.complete(&parts).await? {
                return Ok(done);
            }
        }
        let done = record_digest(r, self.state_key, &self.handle, hasher, digest).await?;
        r.frontiers.forget(self.state_key);
        Ok(done)
    }

    /// Completes the multipart upload; answers the state when another request completed
    /// and recorded it first.
    async fn complete(&self, parts: &[PartInfo]) -> RegistryResult<Option<UploadState>> {
        let r = self.registry;
        if let Err(e) = r.blobs.complete_upload(&self.handle, parts).await {
            return match r.upload_state(self.state_key).await? {
                Some(done) if done.complete() => Ok(Some(done)),
                _ => Err(e.into()),
            };
        }
        Ok(None)
    }

    /// Hashes the object's bytes from where `hasher` stands to the end.
    async fn read_back(&self, hasher: &mut ResumableSha256) -> RegistryResult<()> {
        let (from, started) = (hasher.len(), Instant::now());
        let range = Some((from, self.file.size));
        let mut bytes = self.registry.blobs.get(&self.handle.key, range).await?;
        while let Some(chunk) = bytes.next().await {
            hasher.update(&chunk?);
        }
        tracing::info!(
            key = self.file.key,
            bytes = self.file.size - from,
            ms = started.elapsed().as_millis() as u64,
            "hashed the parts the frontier missed, read back from the store"
        );
        Ok(())
    }
}

/// Records a file's digest: it is complete, whoever owns its upload now, as long as the
/// upload was not restarted.
pub(super) async fn record_digest(
    r: &Registry,
    key: &str,
    handle: &UploadHandle,
    hasher: ResumableSha256,
    digest: String,
) -> RegistryResult<UploadState> {
    transact(r.meta(), async |tx| {
        let current = tx.get_json::<UploadState>(key).await?;
        if let Some(done) = current.as_ref().filter(|c| c.complete()) {
            return Ok(done.clone());
        }
        let mut next = current.clone().unwrap_or_default();
        if next.handle.is_some() && next.handle.as_ref() != Some(handle) {
            return Err(restarted());
        }
        next.handle = Some(handle.clone());
        next.received = hasher.len();
        next.hasher = hasher.clone();
        next.sha256 = Some(digest.clone());
        next.claims.clear();
        write_state(tx, key, current.as_ref(), &next, None);
        Ok(next)
    })
    .await
}
