//! The upload session: what a negotiated push stores so that any replica can serve its next
//! step, and the plan a client reads from it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::meta::{keys, MetaStoreExt};
use crate::model::FileKind;
use crate::protocol::{PlannedFile, PushPlan};
use crate::registry::upload::UploadState;
use crate::registry::{Registry, RegistryError, RegistryResult};

/// An open push, stored so that any replica can serve its next step.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UploadSession {
    /// Session id.
    pub id: String,
    /// Template id.
    pub template: Uuid,
    /// Template name.
    pub name: String,
    /// Tag to create.
    pub tag: String,
    /// Description of the version.
    pub description: String,
    /// Arch for a new template.
    pub arch: Option<String>,
    /// VM configuration.
    pub config: serde_json::Value,
    /// Every file of the version.
    pub files: Vec<SessionFile>,
    /// Epoch seconds of the negotiation.
    pub created: u64,
    /// The identity that opened the session, as `--max-upload-sessions-per-identity`
    /// counts it (see [`Uploader`](crate::registry::limits::Uploader)); none when it is
    /// not counted (authentication off, or a session older than the cap).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<String>,
}

/// One file of an open push.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SessionFile {
    /// Name in the VM library.
    pub name: String,
    /// What the file is.
    pub kind: FileKind,
    /// Declared size.
    pub size: u64,
    /// Declared digest, when given at negotiation.
    pub sha256: Option<String>,
    /// Registry key.
    pub key: String,
    /// True when the file must be uploaded; false when it was pinned as present.
    pub upload: bool,
    /// Part size for the upload.
    pub part_size: u64,
    /// For a file held under this name and size that the client did not give a digest of:
    /// the registry's digest, which the client's digest at commit must equal. The file is
    /// pinned against gc meanwhile, but the version takes it only once confirmed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<String>,
}

pub(super) fn session_not_found(id: &str) -> RegistryError {
    RegistryError::NotFound(format!(
        "upload session {id} not found (committed, aborted or expired)"
    ))
}

impl Registry {
    pub(super) async fn load_session(&self, id: &str) -> RegistryResult<UploadSession> {
        if !id.chars().all(|c| c.is_ascii_alphanumeric()) || id.is_empty() || id.len() > 64 {
            return Err(RegistryError::BadRequest(format!(
                "invalid upload session id {id:?}"
            )));
        }
        let key = keys::session(id);
        match self.meta.get_json::<UploadSession>(&key).await? {
            Some(session) => {
                crate::telemetry::trace::record_template(&session.template);
                Ok(session)
            }
            None => Err(session_not_found(id)),
        }
    }

    pub(super) async fn load_states(
        &self,
        session: &UploadSession,
    ) -> RegistryResult<BTreeMap<String, UploadState>> {
        let uploads: Vec<&SessionFile> = session.files.iter().filter(|f| f.upload).collect();
        let wanted: Vec<String> = uploads
            .iter()
            .map(|f| keys::upload(&session.id, &f.key))
            .collect();
        let values = self.meta.get_many_json::<UploadState>(&wanted).await?;
        Ok(uploads
            .iter()
            .zip(values)
            .map(|(file, state)| (file.key.clone(), state.unwrap_or_default()))
            .collect())
    }

    /// The session's plan with the bytes received so far.
    pub async fn push_status(&self, session_id: &str) -> RegistryResult<PushPlan> {
        let session = self.load_session(session_id).await?;
        let states = self.load_states(&session).await?;
        Ok(plan(&session, &states))
    }
}

pub(super) fn plan(session: &UploadSession, states: &BTreeMap<String, UploadState>) -> PushPlan {
    PushPlan {
        session: session.id.clone(),
        id: session.template,
        name: session.name.clone(),
        tag: session.tag.clone(),
        files: session
            .files
            .iter()
            .map(|f| {
                let state = states.get(&f.key);
                PlannedFile {
                    name: f.name.clone(),
                    key: f.key.clone(),
                    kind: f.kind,
                    size: f.size,
                    upload: f.upload,
                    received: match f.upload {
                        true => state.map(|s| s.received).unwrap_or(0),
                        false => f.size,
                    },
                    durable: state
                        .filter(|_| f.upload)
                        .map(|s| s.durable_ranges(f.size, f.part_size))
                        .unwrap_or_default(),
                    part_size: f.part_size,
                    sha256: match f.upload {
                        true => state.and_then(|s| s.sha256.clone()),
                        false => f.sha256.clone(),
                    },
                    confirm: f.held.is_some(),
                    confirm_hint: f
                        .held
                        .as_ref()
                        .map(|held| crate::protocol::held_hint(&session.id, held)),
                }
            })
            .collect(),
    }
}
