//! The journal of an interrupted push, `<lib>/.vmreg/push/<uuid>.json`: the registry,
//! template, tag and upload session, and the hash state at recent part boundaries of each
//! file, so that a rerun continues the same session without re-reading what was sent.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::error::{ClientError, ClientResult};
use super::library::{write_atomic, LocalVm};
use super::Transfer;
use crate::digest::ResumableSha256;

/// What the journal of an interrupted push holds.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct JournalState {
    /// The registry: `instance:<id>` when it reports an instance id, else its URL.
    pub registry: String,
    /// Template id.
    pub id: Uuid,
    /// Tag being pushed.
    pub tag: String,
    /// Upload session.
    pub session: String,
    /// Hash states at part boundaries, per key, oldest first.
    #[serde(default)]
    pub checkpoints: BTreeMap<String, Vec<ResumableSha256>>,
    /// Digests of files completely sent.
    #[serde(default)]
    pub digests: BTreeMap<String, String>,
    /// Size and modification time of each local file when the push began.
    #[serde(default)]
    pub files: BTreeMap<String, (u64, u64)>,
}

/// Hash checkpoints kept per file: enough to cover what a crash can leave unacknowledged.
const CHECKPOINTS: usize = 32;

/// The journal of one VM's push, at `<lib>/.vmreg/push/<uuid>.json`.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    state: Mutex<Option<JournalState>>,
}

impl Journal {
    /// The journal of `vm`'s push in the transfer's library (empty when none is open).
    pub fn open(t: &Transfer, vm: &LocalVm) -> ClientResult<Self> {
        let dir = t.library.state_dir().join("push");
        std::fs::create_dir_all(&dir).map_err(|e| ClientError::io(&dir, e))?;
        let path = dir.join(format!("{}.json", vm.uuid));
        let state = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        Ok(Self {
            path,
            state: Mutex::new(state),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<JournalState>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What the journal holds, if a push is open.
    pub fn current(&self) -> Option<JournalState> {
        self.lock().clone()
    }

    /// Records a newly opened push.
    pub fn begin(&self, state: JournalState) -> ClientResult<()> {
        let mut guard = self.lock();
        *guard = Some(state);
        self.save(&guard)
    }

    fn save(&self, state: &Option<JournalState>) -> ClientResult<()> {
        let json = serde_json::to_vec(state)
            .map_err(|e| ClientError::Invalid(format!("push journal: {e}")))?;
        write_atomic(&self.path, &json)
    }

    /// Records the hash state at a part boundary of `key`.
    pub fn checkpoint(&self, key: &str, hasher: &ResumableSha256) -> ClientResult<()> {
        let mut guard = self.lock();
        let Some(state) = guard.as_mut() else {
            return Ok(());
        };
        let list = state.checkpoints.entry(key.to_string()).or_default();
        list.retain(|h| h.len() < hasher.len());
        list.push(hasher.clone());
        if list.len() > CHECKPOINTS {
            list.remove(0);
        }
        self.save(&guard)
    }

    /// The latest hash state at or before byte `upto` of `key`.
    pub fn checkpoint_before(&self, key: &str, upto: u64) -> Option<ResumableSha256> {
        let guard = self.lock();
        let list = guard.as_ref()?.checkpoints.get(key)?;
        list.iter()
            .filter(|h| h.len() <= upto)
            .max_by_key(|h| h.len())
            .cloned()
    }

    /// Records a completely sent file's digest.
    pub fn finished(&self, key: &str, digest: &str) -> ClientResult<()> {
        let mut guard = self.lock();
        let Some(state) = guard.as_mut() else {
            return Ok(());
        };
        state.digests.insert(key.to_string(), digest.to_string());
        // The last checkpoint (the whole file) is all a resumed run needs.
        if let Some(list) = state.checkpoints.get_mut(key) {
            let keep = list.len().saturating_sub(1);
            list.drain(..keep);
        }
        self.save(&guard)
    }

    /// Forgets the push (committed, or refused for good).
    pub fn remove(&self) {
        *self.lock() = None;
        let _ = std::fs::remove_file(&self.path);
    }
}
