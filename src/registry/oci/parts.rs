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
