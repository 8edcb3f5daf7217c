//! Receiving a pushed file, or a range of it: the body is cut into parts at the file's
//! part boundaries, parts already durable are skipped and the others written and recorded
//! in any order (see [`RangeWriter`]); the file is checked against its declared digest
//! once its last part lands.

use std::fmt::Display;

use bytes::Bytes;
use futures_util::Stream;
use uuid::Uuid;

use super::ranges::{record_digest, RangeWriter};
use super::session::SessionFile;
use crate::digest::ResumableSha256;
use crate::meta::keys;
use crate::protocol::UploadProgress;
use crate::registry::upload::{part_at, part_count, Claim, UploadState};
use crate::registry::{Registry, RegistryError, RegistryResult};
use crate::store::{keys as object_keys, UploadHandle};

impl Registry {
    /// Receives bytes of one file from `offset` on, to its end or until the body stops.
    pub async fn upload<S, E>(
        &self,
        session_id: &str,
        key: &str,
        offset: u64,
        body: S,
    ) -> RegistryResult<UploadProgress>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: Display,
    {
        self.upload_range(session_id, key, offset, None, body).await
    }

    /// Receives `len` bytes (when known) of one file from `offset`, a multiple of the
    /// file's part size. Parts are written as they fill, several in flight, in any order
    /// with the other ranges of the file; each durable part is recorded so a cut
    /// connection loses at most the parts in flight. A part already durable is not
    /// written again: its bytes in the body are dropped (the whole-file digest check
    /// covers the stored bytes, never the dropped ones). Bytes past the last whole part
    /// of a body that stops short of the file's end are discarded.
    pub async fn upload_range<S, E>(
        &self,
        session_id: &str,
        key: &str,
        offset: u64,
        len: Option<u64>,
        mut body: S,
    ) -> RegistryResult<UploadProgress>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: Display,
    {
        let session = self.load_session(session_id).await?;
        let file = session.files.iter().find(|f| f.key == key).ok_or_else(|| {
            RegistryError::NotFound(format!(
                "file {key} is not part of upload session {session_id}"
            ))
        })?;
        if !file.upload {
            return Err(RegistryError::Conflict(format!(
                "file {key} is already in the registry; it needs no upload"
            )));
        }
        if offset > file.size {
            return Err(RegistryError::BadRequest(format!(
                "offset {offset} lies past the {} bytes of {key}",
                file.size
            )));
        }
        let part_size = file.part_size.max(1);
        let state_key = keys::upload(&session.id, key);
        let stored = self.upload_state(&state_key).await?;
        if offset % part_size != 0 && offset != file.size {
            // A conflict, as the older protocol answered an offset past what arrived: its
            // clients ask for the status and resume from a part boundary.
            return Err(RegistryError::Conflict(format!(
                "upload of {key} is at byte {}; a body starts at a multiple of the part size {part_size}, not at {offset}",
                stored.as_ref().map_or(0, |s| s.received)
            )));
        }
        let progress = |s: &UploadState| UploadProgress {
            key: key.to_string(),
            received: s.received,
            durable: s.durable_ranges(file.size, part_size),
            size: file.size,
            complete: s.complete(),
        };
        if let Some(done) = stored.as_ref().filter(|s| s.complete()) {
            // Whatever the body holds is here already.
            return Ok(progress(done));
        }
        let writer = Uuid::new_v4().simple().to_string();
        let object = object_keys::blob(key, &session.id);
        if file.size == 0 {
            return self
                .receive_empty(file, &state_key, object)
                .await
                .map(|s| progress(&s));
        }
        let parts = part_count(file.size, part_size);
        let first = part_at(offset, part_size).min(parts);
        let last = match len {
            Some(len) if len > 0 => part_at(offset + len - 1, part_size).clamp(first, parts),
            _ => parts,
        };
        let claim = Claim {
            writer: writer.clone(),
            first,
            last,
        };
        let mut state = self
            .claim_upload(&object, &state_key, claim, stored.as_ref())
            .await?;
        if state.complete() {
            return Ok(progress(&state));
        }
        let Some(handle) = state.handle.clone() else {
            return Err(RegistryError::Conflict(format!(
                "upload of {key} was never started"
            )));
        };

        let mut parts_out =
            RangeWriter::ranges(self, offset, file, &state_key, &writer, handle, &state).await;
        let mut at = offset;
        loop {
            let chunk = match parts_out.next_chunk(&mut body, &mut state).await? {
                Some(Ok(chunk)) => chunk,
                Some(Err(e)) => {
                    tracing::info!(session = session_id, key, error = %e, "upload body cut short");
                    break;
                }
                None => break,
            };
            if at + chunk.len() as u64 > file.size {
                parts_out.discard_filling();
                parts_out.drain(&mut state).await?;
                return Err(RegistryError::BadRequest(format!(
                    "body runs past the {} bytes declared for {key}",
                    file.size
                )));
            }
            at += chunk.len() as u64;
            parts_out.feed(chunk, file.size, &mut state).await?;
        }
        parts_out.discard_filling();
        parts_out.drain(&mut state).await?;
        if state.received == file.size && !state.complete() {
            state = parts_out.recorder.finish(state).await?;
        }
        Ok(progress(&state))
    }

    /// Stores an empty file: one empty object, checked against its declared digest.
    async fn receive_empty(
        &self,
        file: &SessionFile,
        state_key: &str,
        object: String,
    ) -> RegistryResult<UploadState> {
        let hasher = ResumableSha256::default();
        let digest = hasher.finalize_hex();
        if let Some(declared) = file.sha256.as_ref().filter(|d| **d != digest) {
            return Err(RegistryError::BadRequest(format!(
                "SHA-256 mismatch for {}: declared {declared}, received {digest}; upload it again",
                file.name
            )));
        }
        self.blobs.put(&object, Bytes::new()).await?;
        let handle = UploadHandle {
            key: object,
            upload_id: String::new(),
        };
        record_digest(self, state_key, &handle, hasher, digest).await
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use futures_util::Stream;
    use uuid::Uuid;

    use super::super::testing::{registry, request};
    use crate::meta::keys;
    use crate::protocol::CommitRequest;
    use crate::registry::limits::Uploader;
    use crate::registry::{Registry, RegistryError};

    fn channel_body() -> (
        tokio::sync::mpsc::UnboundedSender<Bytes>,
        impl Stream<Item = Result<Bytes, std::io::Error>> + Unpin,
    ) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
        let body = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|b| (Ok(b), rx))
        });
        (tx, Box::pin(body))
    }

    async fn received(r: &Registry, session: &str) -> u64 {
        r.push_status(session).await.unwrap().files[0].received
    }

    async fn writer(r: &Registry, session: &str, key: &str) -> Option<String> {
        let state = r.upload_state(&keys::upload(session, key)).await.unwrap();
        state.and_then(|s| s.writer)
    }

    /// A client killed mid-file leaves its request landing the parts in flight; the rerun
    /// reads the status before they land. It must neither be refused by them nor make the
    /// client send the rest of the file into a refusal.
    #[tokio::test]
    async fn a_rerun_racing_the_killed_requests_tail_takes_the_file_over() {
        // The registry's futures are not Send (actix runs them on one thread): spawn locally.
        tokio::task::LocalSet::new()
            .run_until(rerun_racing_the_tail())
            .await;
    }

    async fn rerun_racing_the_tail() {
        const PART: usize = 5 << 20;
        let dir = tempfile::tempdir().unwrap();
        let r = registry(dir.path());
        let data: Vec<u8> = (0..4 * PART + 1000).map(|i| (i * 7 % 251) as u8).collect();
        let req = request(Uuid::new_v4(), "v0", &[("a.ank", &data)]);
        let plan = r.negotiate(req, &Uploader::anonymous()).await.unwrap();
        let session = plan.session.clone();

        // The killed client's request: one part recorded, one more still to land.
        let (old_tx, old_body) = channel_body();
        let old = tokio::task::spawn_local({
            let (r, session) = (r.clone(), session.clone());
            async move { r.upload(&session, "a.ank", 0, old_body).await }
        });
        old_tx.send(Bytes::copy_from_slice(&data[..PART])).unwrap();
        while received(&r, &session).await < PART as u64 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let old_writer = writer(&r, &session, "a.ank").await;

        // The rerun read the status (one part) and starts its request.
        let (new_tx, new_body) = channel_body();
        let new = tokio::task::spawn_local({
            let (r, session) = (r.clone(), session.clone());
            async move { r.upload(&session, "a.ank", PART as u64, new_body).await }
        });
        while writer(&r, &session, "a.ank").await == old_writer {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }

        // The old request's tail part lands now: it may not record it.
        old_tx
            .send(Bytes::copy_from_slice(&data[PART..2 * PART]))
            .unwrap();
        drop(old_tx);
        assert!(matches!(
            old.await.unwrap(),
            Err(RegistryError::Conflict(_))
        ));
        assert_eq!(received(&r, &session).await, PART as u64);

        new_tx.send(Bytes::copy_from_slice(&data[PART..])).unwrap();
        drop(new_tx);
        let done = new.await.unwrap().unwrap();
        assert!(done.complete && done.received == data.len() as u64);

        // A third request that read an older status is not refused: it skips what is here.
        let body = futures_util::stream::iter([Ok::<_, std::io::Error>(Bytes::copy_from_slice(
            &data[PART..],
        ))]);
        let again = r
            .upload(&session, "a.ank", PART as u64, body)
            .await
            .unwrap();
        assert!(again.complete);
        r.commit(&session, CommitRequest::default()).await.unwrap();
        let record = r.file("a.ank").await.unwrap();
        assert_eq!(record.sha256, crate::digest::sha256_hex(&data));
        let stored = std::fs::read(dir.path().join("objects").join(&record.object)).unwrap();
        assert!(stored == data, "the object holds exactly the pushed bytes");
    }

    /// A request that starts below what is durable skips what arrived instead of refusing.
    #[tokio::test]
    async fn an_upload_from_a_stale_offset_skips_the_bytes_already_durable() {
        const PART: usize = 5 << 20;
        let dir = tempfile::tempdir().unwrap();
        let r = registry(dir.path());
        let data: Vec<u8> = (0..3 * PART + 17).map(|i| (i * 13 % 241) as u8).collect();
        let plan = r
            .negotiate(
                request(Uuid::new_v4(), "v0", &[("b.ank", &data)]),
                &Uploader::anonymous(),
            )
            .await
            .unwrap();
        let cut = futures_util::stream::iter([
            Ok(Bytes::copy_from_slice(&data[..2 * PART + 100])),
            Err(std::io::Error::other("connection reset")),
        ]);
        let first = r.upload(&plan.session, "b.ank", 0, cut).await.unwrap();
        assert_eq!(first.received, 2 * PART as u64);

        let whole = futures_util::stream::iter([Ok::<_, std::io::Error>(Bytes::copy_from_slice(
            &data[PART..],
        ))]);
        let rest = r
            .upload(&plan.session, "b.ank", PART as u64, whole)
            .await
            .unwrap();
        assert!(rest.complete);
        r.commit(&plan.session, CommitRequest::default())
            .await
            .unwrap();
        let record = r.file("b.ank").await.unwrap();
        assert_eq!(record.sha256, crate::digest::sha256_hex(&data));
    }
}
