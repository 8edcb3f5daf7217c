//! Receiving a pushed file: the body is streamed into parts (see [`PartPump`]), hashed as
//! it arrives, and checked against its declared digest once complete.

use std::fmt::Display;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use uuid::Uuid;

use super::session::SessionFile;
use crate::meta::{keys, MetaTxExt};
use crate::protocol::UploadProgress;
use crate::registry::upload::{delete_state, write_state, PartPump, UploadState};
use crate::registry::{transact, Registry, RegistryError, RegistryResult};
use crate::store::{keys as object_keys, UploadHandle};

impl Registry {
    /// Receives bytes of one file from `offset` on. Parts are written as they fill, several
    /// in flight; each durable part is recorded so a cut connection loses at most the
    /// parts in flight. Bytes past the last whole part of a body that stops short of the
    /// file's end are discarded.
    pub async fn upload<S, E>(
        &self,
        session_id: &str,
        key: &str,
        offset: u64,
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
        let state_key = keys::upload(&session.id, key);
        let stored = self.upload_state(&state_key).await?;
        let progress = |s: &UploadState| UploadProgress {
            key: key.to_string(),
            received: s.received,
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
            self.blobs.put(&object, Bytes::new()).await?;
            let state = UploadState {
                handle: Some(UploadHandle {
                    key: object,
                    upload_id: String::new(),
                }),
                writer: Some(writer),
                ..UploadState::default()
            };
            return self
                .finish_upload(file, &state_key, None, state)
                .await
                .map(|s| progress(&s));
        }
        let mut state = self
            .claim_upload(&object, &state_key, &writer, stored.as_ref())
            .await?;
        if state.complete() {
            return Ok(progress(&state));
        }
        if offset > state.received {
            return Err(RegistryError::Conflict(format!(
                "upload of {key} is at byte {}, not {offset}; resume from there",
                state.received
            )));
        }
        // A client that read the status while an older request was still landing parts
        // starts below what is durable now: skip what is here rather than refuse, so that
        // it never sends the rest of the file into a refusal.
        let mut skip = state.received - offset;
        let Some(handle) = state.handle.clone() else {
            return Err(RegistryError::Conflict(format!(
                "upload of {key} was never started"
            )));
        };

        let part_size = file.part_size as usize;
        let mut pump = PartPump::new(self, handle, &state_key, &state, part_size);
        let mut body_ended = false;
        loop {
            // Parts that land while the client is slow are recorded at once, so that the
            // status a resuming client reads is as far as the bytes durably are.
            let next = {
                let front = pump.front_write();
                tokio::select! {
                    biased;
                    chunk = body.next() => Ok(chunk),
                    Some(written) = async { match front { Some(w) => Some(w.await), None => None } } => Err(written),
                }
            };
            let next = match next {
                Ok(next) => next,
                Err(written) => {
                    pump.record_front(written, &mut state).await?;
                    continue;
                }
            };
            let mut chunk = match next {
                Some(Ok(chunk)) => chunk,
                Some(Err(e)) => {
                    tracing::info!(session = session_id, key, error = %e, "upload body cut short");
                    break;
                }
                None => {
                    body_ended = true;
                    break;
                }
            };
            if skip > 0 {
                let n = skip.min(chunk.len() as u64);
                skip -= n;
                let _ = chunk.split_to(n as usize);
            }
            if pump.next_offset() + (pump.buffered() + chunk.len()) as u64 > file.size {
                pump.drain(&mut state).await?;
                return Err(RegistryError::BadRequest(format!(
                    "body runs past the {} bytes declared for {key}",
                    file.size
                )));
            }
            pump.feed(chunk, &mut state).await?;
        }
        if body_ended && pump.next_offset() + pump.buffered() as u64 == file.size {
            pump.send_tail(&mut state).await?;
        }
        pump.drain(&mut state).await?;
        if state.received == file.size {
            let expected = Some(state.received);
            state = self
                .finish_upload(file, &state_key, expected, state)
                .await?;
        }
        Ok(progress(&state))
    }

    /// Checks a fully received file against its declared digest and makes it an object.
    async fn finish_upload(
        &self,
        file: &SessionFile,
        state_key: &str,
        expected: Option<u64>,
        mut state: UploadState,
    ) -> RegistryResult<UploadState> {
        let digest = state.hasher.finalize_hex();
        let Some(handle) = state.handle.clone() else {
            return Err(RegistryError::Conflict(format!(
                "upload of {} was never started",
                file.key
            )));
        };
        if let Some(declared) = &file.sha256 {
            if *declared != digest {
                // Start the file over: the bytes are not the ones declared.
                if file.size > 0 {
                    let _ = self.blobs.abort_upload(&handle).await;
                }
                transact(self.meta(), async |tx| delete_state(tx, state_key).await).await?;
                return Err(RegistryError::BadRequest(format!(
                    "SHA-256 mismatch for {}: declared {declared}, received {digest}; upload it again",
                    file.name
                )));
            }
        }
        if file.size > 0 {
            let parts = self.upload_parts(state_key, &state).await?;
            if let Err(e) = self.blobs.complete_upload(&handle, &parts).await {
                // An older request that received the same last part may have completed it.
                return match self.upload_state(state_key).await? {
                    Some(done) if done.complete() => Ok(done),
                    _ => Err(e.into()),
                };
            }
        }
        state.sha256 = Some(digest);
        // Completion is recorded whoever owns the upload now: the object is made, and its
        // bytes are exactly the recorded parts.
        transact(self.meta(), async |tx| {
            let current = tx.get_json::<UploadState>(state_key).await?;
            if current.as_ref().map(|s| s.received) != expected {
                return Err(RegistryError::Conflict(
                    "another upload of this file is running; ask for its status and resume".into(),
                ));
            }
            write_state(tx, state_key, current.as_ref(), &state, None);
            Ok(())
        })
        .await?;
        Ok(state)
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
        let plan = r.negotiate(req).await.unwrap();
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
            .negotiate(request(Uuid::new_v4(), "v0", &[("b.ank", &data)]))
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
