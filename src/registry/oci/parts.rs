//! How a blob upload keeps its parts: chunks come in order, so each part is hashed as it
//! is sent and recorded as the next of the contiguous prefix with the hash state after
//! it. The recorded state is always a contiguous, hashed prefix a client can resume from
//! on any replica, and the SHA-256 is known before the blob is made.

use super::OciResult;
use crate::digest::ResumableSha256;
use crate::registry::upload::{PartWriter, RecordPart, UploadState};
use crate::registry::{Registry, RegistryResult};
use crate::store::{keys as object_keys, PartInfo};

/// The parts of one upload request.
pub(super) type ChunkParts<'a> = PartWriter<'a, InOrder<'a>>;

/// Records parts in order, with the hash state after each.
pub(super) struct InOrder<'a> {
    registry: &'a Registry,
    state_key: &'a str,
    hasher: ResumableSha256,
}

impl RecordPart for InOrder<'_> {
    type With = ResumableSha256;

    fn sending(&mut self, part: &[u8]) -> ResumableSha256 {
        self.hasher.update(part);
        self.hasher.clone()
    }

    async fn record(
        &mut self,
        part: PartInfo,
        hasher: ResumableSha256,
        state: &mut UploadState,
    ) -> RegistryResult<()> {
        let expected = Some(state.received);
        state.received += part.size;
        state.count = state.recorded() + 1;
        state.hasher = hasher;
        self.registry
            .save_state(self.state_key, expected, state, Some(&part))
            .await
    }
}

impl Registry {
    /// The parts of an upload, starting its multipart upload on first use.
    pub(super) async fn oci_parts<'a>(
        &'a self,
        id: &str,
        state_key: &'a str,
        state: &mut UploadState,
    ) -> OciResult<ChunkParts<'a>> {
        let handle = match state.handle.clone() {
            Some(h) => h,
            None => {
                let h = self
                    .blobs()
                    .begin_upload(&object_keys::blob("oci", id))
                    .await?;
                state.handle = Some(h.clone());
                if let Err(e) = self.save_state(state_key, None, state, None).await {
                    let _ = self.blobs().abort_upload(&h).await;
                    return Err(e.into());
                }
                h
            }
        };
        let recorder = InOrder {
            registry: self,
            state_key,
            hasher: state.hasher.clone(),
        };
        let at = (state.received, self.part_size);
        Ok(PartWriter::new(self, handle, at, recorder))
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use crate::registry::limits::Uploader;
    use crate::registry::oci::OciError;
    use crate::registry::test_support::registry;

    const PART: usize = 5 << 20;

    /// A PATCH whose connection dies keeps the parts that became durable, recorded while
    /// the client was still sending; the client resumes from the status and sends only
    /// the rest.
    #[tokio::test]
    async fn a_cut_patch_keeps_its_durable_parts_and_the_resume_sends_only_the_rest() {
        // The registry's futures are not Send (actix runs them on one thread).
        tokio::task::LocalSet::new()
            .run_until(cut_and_resume())
            .await;
    }

    async fn cut_and_resume() {
        let dir = tempfile::tempdir().unwrap();
        let r = registry(dir.path());
        let data: Vec<u8> = (0..3 * PART + 1000).map(|i| (i * 11 % 253) as u8).collect();
        let id = r
            .oci_start_upload("acme/vm", &Uploader::anonymous())
            .await
            .unwrap();

        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Result<Bytes, std::io::Error>>();
        let body = Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|b| (b, rx))
        }));
        let patch = tokio::task::spawn_local({
            let (r, id) = (r.clone(), id.clone());
            async move { r.oci_append("acme/vm", &id, Some(0), body).await }
        });
        tx.send(Ok(Bytes::copy_from_slice(&data[..2 * PART + 100])))
            .unwrap();
        // Both whole parts are recorded while the body is still open.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while r.oci_upload_status("acme/vm", &id).await.unwrap() < 2 * PART as u64 {
            assert!(std::time::Instant::now() < deadline, "parts never recorded");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        tx.send(Err(std::io::Error::other("connection reset")))
            .unwrap();
        assert!(matches!(
            patch.await.unwrap(),
            Err(OciError::BlobUploadInvalid(_))
        ));
        let status = r.oci_upload_status("acme/vm", &id).await.unwrap();
        assert_eq!(
            status,
            2 * PART as u64,
            "the bytes past the parts are not kept"
        );

        let rest = futures_util::stream::iter([Ok::<_, std::io::Error>(Bytes::copy_from_slice(
            &data[2 * PART..],
        ))]);
        let appended = r
            .oci_append("acme/vm", &id, Some(status), rest)
            .await
            .unwrap();
        assert_eq!(appended, data.len() as u64);
        let digest = format!("sha256:{}", crate::digest::sha256_hex(&data));
        let none = futures_util::stream::iter(Vec::<Result<Bytes, std::io::Error>>::new());
        let blob = r
            .oci_finish("acme/vm", &id, None, &digest, none)
            .await
            .unwrap();
        assert_eq!(blob.size, data.len() as u64);
        let stored = std::fs::read(dir.path().join("objects").join(&blob.object)).unwrap();
        assert!(stored == data, "the blob holds exactly the pushed bytes");
    }
}
