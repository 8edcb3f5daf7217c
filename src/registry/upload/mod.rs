//! The upload machinery both front doors share: the state of one file's multipart upload,
//! saved after every durable part, and the writer that sends its parts.

mod frontier;
mod parts;
mod stored;
mod writer;

use serde::{Deserialize, Serialize};

use super::{transact, Registry, RegistryError, RegistryResult};
use crate::digest::ResumableSha256;
use crate::meta::{MetaStoreExt, MetaTxExt};
use crate::store::{PartInfo, UploadHandle};

pub(crate) use frontier::{Frontier, Frontiers};
pub(crate) use parts::{part_at, part_count, Claim, PartPlace};
pub(crate) use stored::{delete_state, write_state, StrayParts};
pub(crate) use writer::{PartWriter, RecordPart};

/// The layout of the upload state this code writes: the small record below, and each
/// durable part in a record of its own ([`keys::upload_part`](crate::meta::keys::upload_part)).
/// Records written before had no `layout` and held the whole part list under `parts`.
pub(crate) const LAYOUT: u32 = 2;

/// How far one file's upload got; saved after every durable part.
///
/// A record of [`LAYOUT`] has no `parts` field, which older code requires: a replica still
/// running it refuses the record as corrupt instead of taking the upload for partless.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct UploadState {
    /// The record's layout; [`LAYOUT`] whenever this code writes it.
    #[serde(default, serialize_with = "stored::current_layout")]
    pub layout: u32,
    /// The multipart upload, once started.
    pub handle: Option<UploadHandle>,
    /// Durable parts, numbered from 1, contiguous, each in a record of its own.
    #[serde(default)]
    pub count: u32,
    /// Durable parts past the contiguous ones (a file pushed as several ranges), as
    /// inclusive runs of part numbers in order, never touching `count`; each part also in
    /// a record of its own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ahead: Vec<[u32; 2]>,
    /// The requests writing ranges of the file, oldest first: a newer one takes over the
    /// parts of its range from the older ones (see [`Claim`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub claims: Vec<Claim>,
    /// The part list of a record of the older layout, which kept it inline; moved to
    /// records of their own by the first write of this code.
    #[serde(rename = "parts", default, skip_serializing)]
    pub(crate) legacy_parts: Vec<PartInfo>,
    /// Bytes in the contiguous durable parts.
    pub received: u64,
    /// SHA-256 state over the first bytes of the file: all of `received` for a file sent
    /// as one stream; for one sent as ranges, as far as a replica hashed in order, the
    /// rest being hashed when the last part lands.
    pub hasher: ResumableSha256,
    /// The final digest, once complete.
    pub sha256: Option<String>,
    /// The upload request that owns the file now. A newer request takes the file over, so
    /// an older one still landing its last parts (its client died or reconnected) can no
    /// longer record them and make the newer one fail.
    #[serde(default)]
    pub writer: Option<String>,
}

impl UploadState {
    pub(crate) fn complete(&self) -> bool {
        self.sha256.is_some()
    }

    /// Durable parts, whichever layout the record was read in.
    pub(crate) fn recorded(&self) -> u32 {
        self.count.max(self.legacy_parts.len() as u32)
    }
}

impl Registry {
    /// Saves a file's upload state, with `part` its newest durable part when one was
    /// added, if nobody else moved it since `expected` was read and no newer request took
    /// the file over.
    pub(crate) async fn save_state(
        &self,
        key: &str,
        expected: Option<u64>,
        state: &UploadState,
        part: Option<&PartInfo>,
    ) -> RegistryResult<()> {
        transact(self.meta(), async |tx| {
            let current = tx.get_json::<UploadState>(key).await?;
            let moved = current.as_ref().map(|s| s.received) != expected
                || current.as_ref().is_some_and(|s| s.writer != state.writer);
            if moved {
                return Err(RegistryError::Conflict(
                    "another upload of this file is running; ask for its status and resume".into(),
                ));
            }
            stored::write_state(tx, key, current.as_ref(), state, part);
            Ok(())
        })
        .await
    }

    /// Makes `claim`'s request the owner of its range of a file's upload, starting the
    /// multipart upload if `stored` has none; returns the state it takes over.
    pub(crate) async fn claim_upload(
        &self,
        object: &str,
        state_key: &str,
        claim: Claim,
        stored: Option<&UploadState>,
    ) -> RegistryResult<UploadState> {
        let started = match stored.and_then(|s| s.handle.clone()) {
            Some(_) => None,
            None => Some(self.blobs.begin_upload(object).await?),
        };
        let claimed = transact(self.meta(), async |tx| {
            let stored = tx.get_json::<UploadState>(state_key).await?;
            let mut current = stored.clone().unwrap_or_default();
            if current.handle.is_none() {
                // Reset meanwhile (a digest mismatch): the client must ask where to restart.
                let Some(handle) = started.clone() else {
                    return Err(RegistryError::Conflict(
                        "the upload of this file was restarted; ask for its status and resume"
                            .into(),
                    ));
                };
                current.handle = Some(handle);
            }
            current.writer = Some(claim.writer.clone());
            current.count = current.recorded();
            if !current.complete() {
                current.add_claim(claim.clone());
            }
            stored::write_state(tx, state_key, stored.as_ref(), &current, None);
            Ok(current)
        })
        .await;
        if let Some(handle) = &started {
            let ours = matches!(&claimed, Ok(c) if c.handle.as_ref() == Some(handle));
            if !ours {
                // Another request started the upload first; ours holds nothing yet.
                let _ = self.blobs.abort_upload(handle).await;
            }
        }
        claimed
    }

    pub(crate) async fn upload_state(
        &self,
        state_key: &str,
    ) -> RegistryResult<Option<UploadState>> {
        Ok(self.meta.get_json(state_key).await?)
    }
}
