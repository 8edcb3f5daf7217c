//! Pushing a version: negotiate, upload (streamed, resumable, hashed as it arrives),
//! commit (verify, then append atomically), abort.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Display;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::gc::{delete_objects, release, Release};
use super::parts::PartPump;
use super::templates::write_template;
use super::{transact, Registry, RegistryError, RegistryResult};
use crate::digest::{is_sha256_hex, ResumableSha256};
use crate::meta::{decode, keys, MetaTxExt};
use crate::model::{self, FileKind, FileRecord, FileRef, StoredManifest, Template, Version};
use crate::protocol::{
    CommitRequest, Committed, PlannedFile, PushPlan, PushRequest, UploadProgress,
};
use crate::store::{keys as object_keys, PartInfo, UploadHandle};

const MAX_DESCRIPTION: usize = 4096;
const MAX_FILES: usize = 1000;

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
}

/// How far one file's upload got; saved after every durable part.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct UploadState {
    /// The multipart upload, once started.
    pub handle: Option<UploadHandle>,
    /// Durable parts, contiguous from the start.
    pub parts: Vec<PartInfo>,
    /// Bytes in `parts`.
    pub received: u64,
    /// SHA-256 state over the received bytes.
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
    fn complete(&self) -> bool {
        self.sha256.is_some()
    }
}

fn session_not_found(id: &str) -> RegistryError {
    RegistryError::NotFound(format!(
        "upload session {id} not found (committed, aborted or expired)"
    ))
}

/// A file whose name the registry holds with other bytes. A layer's name stands for its
/// content: every VM built on a layer shares it by name in its library, so a second
/// content under one name would make a pull overwrite a layer other VMs rely on.
fn changed_in_place(name: &str, registry: &str, local: Option<&str>) -> RegistryError {
    let local = local.map_or_else(|| "a different size".to_string(), |d| format!("sha256 {d}"));
    RegistryError::Conflict(format!(
        "file {name} changed since it was pushed: the registry holds it with sha256 {registry}, \
         the local file has {local}. A layer keeps its content once pushed, as every VM built on \
         it shares it by name: make the change a new layer (clone the VM and push the clone) or \
         restore the file's pushed content, then push again"
    ))
}

fn validate_request(req: &PushRequest) -> RegistryResult<()> {
    model::validate_template_name(&req.name)?;
    model::validate_tag(&req.tag)?;
    if req.description.len() > MAX_DESCRIPTION {
        return Err(RegistryError::BadRequest(format!(
            "description is longer than {MAX_DESCRIPTION} bytes"
        )));
    }
    if let Some(arch) = &req.arch {
        if !arch.is_empty() {
            model::validate_arch(arch)?;
        }
    }
    if !req.config.is_object() {
        return Err(RegistryError::BadRequest(
            "config must be a JSON object (the VM's config.yaml)".into(),
        ));
    }
    if req.files.is_empty() || req.files.len() > MAX_FILES {
        return Err(RegistryError::BadRequest(format!(
            "a version has 1 to {MAX_FILES} files"
        )));
    }
    let mut names = HashSet::new();
    let mut nvrams = 0;
    for f in &req.files {
        let as_ref = FileRef {
            name: f.name.clone(),
            kind: f.kind,
            size: f.size,
            sha256: f.sha256.clone().unwrap_or_default(),
        };
        model::validate_file(&as_ref)?;
        if !names.insert(f.name.as_str()) {
            return Err(RegistryError::BadRequest(format!(
                "file {} is listed twice",
                f.name
            )));
        }
        if f.kind == FileKind::Nvram {
            nvrams += 1;
            if f.sha256.is_none() {
                return Err(RegistryError::BadRequest(
                    "the nvram file needs its sha256 at negotiation".into(),
                ));
            }
        }
    }
    if nvrams > 1 {
        return Err(RegistryError::BadRequest(
            "a version has at most one nvram file".into(),
        ));
    }
    Ok(())
}

/// Refuses a new template whose name another template owns.
async fn check_name_free(
    tx: &mut Box<dyn crate::meta::MetaTx>,
    name: &str,
    id: &Uuid,
) -> RegistryResult<()> {
    match tx.get_json::<Uuid>(&keys::template_name(name)).await? {
        Some(owner) if owner != *id => Err(RegistryError::Conflict(format!(
            "template {name:?} already exists with uuid {owner}: registry uuid ({owner}) doesn't match ({id})"
        ))),
        _ => Ok(()),
    }
}

impl Registry {
    /// Negotiates a push: pins the files the registry has and opens an upload session for
    /// the rest.
    pub async fn negotiate(&self, req: PushRequest) -> RegistryResult<PushPlan> {
        validate_request(&req)?;
        crate::telemetry::trace::record_template(&req.id);
        self.check_config_size(&req.config)?;
        self.check_file_sizes(req.files.iter().map(|f| f.size))?;
        self.check_session_count().await?;
        let session_id = Uuid::new_v4().simple().to_string();
        let session = transact(self.meta(), async |tx| {
            let name = match tx.get_json::<Template>(&keys::template(&req.id)).await? {
                Some(t) => {
                    if t.versions.iter().any(|v| v.tag == req.tag) {
                        return Err(RegistryError::Conflict(format!(
                            "tag {:?} already exists in template {}",
                            req.tag, t.name
                        )));
                    }
                    self.check_version_count(&t.name, t.versions.len())?;
                    t.name
                }
                None => {
                    check_name_free(tx, &req.name, &req.id).await?;
                    self.check_template_count().await?;
                    req.name.clone()
                }
            };
            let mut files = Vec::with_capacity(req.files.len());
            for f in &req.files {
                let key = model::file_key(&f.name, f.kind, f.sha256.as_deref().unwrap_or(""));
                let record_key = keys::file(&key);
                let present = match (tx.get_json::<FileRecord>(&record_key).await?, &f.sha256) {
                    (Some(record), _) if record.size != f.size => {
                        return Err(changed_in_place(&f.name, &record.sha256, None));
                    }
                    (Some(record), Some(digest)) if *digest != record.sha256 => {
                        return Err(changed_in_place(&f.name, &record.sha256, Some(digest)));
                    }
                    (Some(mut record), Some(_)) => {
                        record.pins.push(session_id.clone());
                        tx.put_json(&record_key, &record);
                        Some(record.sha256)
                    }
                    // Without a digest the file is sent, and compared when it is complete.
                    (_, None) | (None, _) => None,
                };
                files.push(SessionFile {
                    name: f.name.clone(),
                    kind: f.kind,
                    size: f.size,
                    sha256: f.sha256.clone().or(present.clone()),
                    key,
                    upload: present.is_none(),
                    part_size: self.part_size_for(f.size),
                });
            }
            let session = UploadSession {
                id: session_id.clone(),
                template: req.id,
                name,
                tag: req.tag.clone(),
                description: req.description.clone(),
                arch: req.arch.clone().filter(|a| !a.is_empty()),
                config: req.config.clone(),
                files,
                created: model::now(),
            };
            tx.put_json(&keys::session(&session_id), &session);
            tx.set_add(keys::SESSIONS, &session_id);
            Ok(session)
        })
        .await?;
        Ok(plan(&session, &BTreeMap::new()))
    }

    async fn load_session(&self, id: &str) -> RegistryResult<UploadSession> {
        if !id.chars().all(|c| c.is_ascii_alphanumeric()) || id.is_empty() || id.len() > 64 {
            return Err(RegistryError::BadRequest(format!(
                "invalid upload session id {id:?}"
            )));
        }
        let key = keys::session(id);
        let found = self
            .meta
            .get_many(std::slice::from_ref(&key))
            .await?
            .into_iter()
            .next()
            .flatten();
        match found {
            Some(bytes) => {
                let session: UploadSession = decode(&key, &bytes)?;
                crate::telemetry::trace::record_template(&session.template);
                Ok(session)
            }
            None => Err(session_not_found(id)),
        }
    }

    async fn load_states(
        &self,
        session: &UploadSession,
    ) -> RegistryResult<BTreeMap<String, UploadState>> {
        let uploads: Vec<&SessionFile> = session.files.iter().filter(|f| f.upload).collect();
        let wanted: Vec<String> = uploads
            .iter()
            .map(|f| keys::upload(&session.id, &f.key))
            .collect();
        let values = self.meta.get_many(&wanted).await?;
        let mut out = BTreeMap::new();
        for ((file, name), value) in uploads.iter().zip(&wanted).zip(values) {
            let state = match value {
                Some(bytes) => decode(name, &bytes)?,
                None => UploadState::default(),
            };
            out.insert(file.key.clone(), state);
        }
        Ok(out)
    }

    /// The session's plan with the bytes received so far.
    pub async fn push_status(&self, session_id: &str) -> RegistryResult<PushPlan> {
        let session = self.load_session(session_id).await?;
        let states = self.load_states(&session).await?;
        Ok(plan(&session, &states))
    }

    /// Saves a file's upload state if nobody else moved it since `expected` was read and
    /// no newer request took the file over.
    pub(crate) async fn save_state(
        &self,
        key: &str,
        expected: Option<u64>,
        state: &UploadState,
    ) -> RegistryResult<()> {
        transact(self.meta(), async |tx| {
            let current = tx.get_json::<UploadState>(key).await?;
            let moved = current.as_ref().map(|s| s.received) != expected
                || current.is_some_and(|s| s.writer != state.writer);
            if moved {
                return Err(RegistryError::Conflict(
                    "another upload of this file is running; ask for its status and resume".into(),
                ));
            }
            tx.put_json(key, state);
            Ok(())
        })
        .await
    }

    /// Makes `writer` the owner of a file's upload, starting the multipart upload if
    /// `stored` has none; returns the state it takes over.
    async fn claim_upload(
        &self,
        object: &str,
        state_key: &str,
        writer: &str,
        stored: Option<&UploadState>,
    ) -> RegistryResult<UploadState> {
        let started = match stored.and_then(|s| s.handle.clone()) {
            Some(_) => None,
            None => Some(self.blobs.begin_upload(object).await?),
        };
        let claimed = transact(self.meta(), async |tx| {
            let mut current = tx
                .get_json::<UploadState>(state_key)
                .await?
                .unwrap_or_default();
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
            current.writer = Some(writer.to_string());
            tx.put_json(state_key, &current);
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
                transact(self.meta(), async |tx| {
                    tx.delete(state_key);
                    Ok(())
                })
                .await?;
                return Err(RegistryError::BadRequest(format!(
                    "SHA-256 mismatch for {}: declared {declared}, received {digest}; upload it again",
                    file.name
                )));
            }
        }
        if file.size > 0 {
            if let Err(e) = self.blobs.complete_upload(&handle, &state.parts).await {
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
            tx.put_json(state_key, &state);
            Ok(())
        })
        .await?;
        Ok(state)
    }

    async fn upload_state(&self, state_key: &str) -> RegistryResult<Option<UploadState>> {
        let found = self
            .meta
            .get_many(&[state_key.to_string()])
            .await?
            .pop()
            .flatten();
        Ok(found.map(|b| decode(state_key, &b)).transpose()?)
    }

    /// Verifies every file and appends the version with the next number, atomically.
    /// Committing a session that already committed answers with its version again, so a
    /// client whose reply was lost can ask once more.
    pub async fn commit(&self, session_id: &str, req: CommitRequest) -> RegistryResult<Committed> {
        let session = match self.load_session(session_id).await {
            Err(RegistryError::NotFound(e)) => {
                return match self.committed_earlier(session_id).await? {
                    Some(done) => Ok(done),
                    None => Err(RegistryError::NotFound(e)),
                }
            }
            other => other?,
        };
        let states = self.load_states(&session).await?;
        let mut files = Vec::with_capacity(session.files.len());
        for f in &session.files {
            let claimed = req.digests.get(&f.key).or(f.sha256.as_ref());
            let Some(claimed) = claimed.filter(|d| is_sha256_hex(d)) else {
                return Err(RegistryError::BadRequest(format!(
                    "no valid sha256 given for {}",
                    f.name
                )));
            };
            if f.upload {
                let Some(state) = states.get(&f.key) else {
                    return Err(session_not_found(session_id));
                };
                let Some(actual) = &state.sha256 else {
                    return Err(RegistryError::Conflict(format!(
                        "file {} is incomplete: {} of {} bytes received",
                        f.name, state.received, f.size
                    )));
                };
                if actual != claimed {
                    return Err(RegistryError::Conflict(format!("SHA-256 mismatch for {}: client says {claimed}, registry received {actual}", f.name)));
                }
            }
            files.push(FileRef {
                name: f.name.clone(),
                kind: f.kind,
                size: f.size,
                sha256: claimed.clone(),
            });
        }
        let mut config = session.config.clone();
        let (template, version, objects, garbage) = transact(self.meta(), async |tx| {
            if tx.get(&keys::session(session_id)).await?.is_none() {
                return Err(session_not_found(session_id));
            }
            let now = model::now();
            let mut template = match tx
                .get_json::<Template>(&keys::template(&session.template))
                .await?
            {
                Some(t) => t,
                None => {
                    check_name_free(tx, &session.name, &session.template).await?;
                    self.check_template_count().await?;
                    Template {
                        id: session.template,
                        name: session.name.clone(),
                        arch: session
                            .arch
                            .clone()
                            .unwrap_or_else(|| model::arch_of_config(&session.config).to_string()),
                        created: now,
                        last_push: now,
                        versions: Vec::new(),
                    }
                }
            };
            if template.versions.iter().any(|v| v.tag == session.tag) {
                return Err(RegistryError::Conflict(format!(
                    "tag {:?} already exists in template {}",
                    session.tag, template.name
                )));
            }
            self.check_version_count(&template.name, template.versions.len())?;
            let mut objects = BTreeMap::new();
            let mut garbage = Vec::new();
            for (f, file) in session.files.iter().zip(&files) {
                let record_key = keys::file(&f.key);
                let existing = tx.get_json::<FileRecord>(&record_key).await?;
                let record = match (f.upload, existing) {
                    (true, Some(mut record)) => {
                        // Someone committed the same file first; keep theirs, drop ours.
                        if record.size != file.size || record.sha256 != file.sha256 {
                            return Err(changed_in_place(
                                &f.name,
                                &record.sha256,
                                Some(&file.sha256),
                            ));
                        }
                        garbage.push(object_keys::blob(&f.key, &session.id));
                        record.refs += 1;
                        record
                    }
                    (true, None) => FileRecord {
                        key: f.key.clone(),
                        size: file.size,
                        sha256: file.sha256.clone(),
                        object: object_keys::blob(&f.key, &session.id),
                        refs: 1,
                        pins: Vec::new(),
                    },
                    (false, Some(mut record)) => {
                        if record.sha256 != file.sha256 {
                            return Err(RegistryError::Conflict(format!(
                                "SHA-256 mismatch for {}: the registry's copy differs",
                                f.name
                            )));
                        }
                        record.pins.retain(|p| p != session_id);
                        record.refs += 1;
                        record
                    }
                    (false, None) => {
                        return Err(RegistryError::Conflict(format!(
                            "file {} left the registry during the push; push again",
                            f.name
                        )));
                    }
                };
                objects.insert(f.key.clone(), record.object.clone());
                tx.put_json(&record_key, &record);
                tx.delete(&keys::upload(session_id, &f.key));
            }
            if let Some(map) = config.as_object_mut() {
                map.insert(
                    "uuid".into(),
                    serde_json::Value::String(template.id.to_string()),
                );
                map.insert(
                    "name".into(),
                    serde_json::Value::String(template.name.clone()),
                );
            }
            let version = Version {
                number: template.versions.len() as u32,
                tag: session.tag.clone(),
                description: session.description.clone(),
                files: files.clone(),
                config: config.clone(),
                created: now,
                push_id: session.id.clone(),
            };
            template.versions.push(version.clone());
            template.last_push = now;
            self.check_record_size(&template.name, crate::meta::encode(&template).len())?;
            write_template(tx, &template);
            tx.delete(&keys::session(session_id));
            tx.set_remove(keys::SESSIONS, session_id);
            tx.put_json(&keys::pushed(session_id), &template.id);
            tx.set_add(keys::PUSHED, &keys::pushed_member(now, session_id));
            Ok((template, version, objects, garbage))
        })
        .await?;
        delete_objects(self.blobs(), &garbage).await;
        self.write_manifest(&template, &version, objects).await;
        Ok(Committed {
            id: template.id,
            name: template.name,
            tag: version.tag,
            number: version.number,
        })
    }

    /// The version a session committed, while it exists.
    async fn committed_earlier(&self, session_id: &str) -> RegistryResult<Option<Committed>> {
        let key = keys::pushed(session_id);
        let Some(id) = self
            .meta
            .get_many(std::slice::from_ref(&key))
            .await?
            .pop()
            .flatten()
        else {
            return Ok(None);
        };
        let id: Uuid = decode(&key, &id)?;
        let tkey = keys::template(&id);
        let Some(template) = self
            .meta
            .get_many(std::slice::from_ref(&tkey))
            .await?
            .pop()
            .flatten()
        else {
            return Ok(None);
        };
        let template: Template = decode(&tkey, &template)?;
        Ok(template
            .versions
            .iter()
            .find(|v| v.push_id == session_id)
            .map(|v| Committed {
                id: template.id,
                name: template.name.clone(),
                tag: v.tag.clone(),
                number: v.number,
            }))
    }

    async fn write_manifest(
        &self,
        template: &Template,
        version: &Version,
        objects: BTreeMap<String, String>,
    ) {
        if version.number == 0 {
            self.write_template_record(template).await;
        }
        let manifest = StoredManifest {
            id: template.id,
            name: template.name.clone(),
            version: version.clone(),
            objects,
        };
        let key = object_keys::manifest(&template.id, version.number, &version.push_id);
        if let Err(e) = self
            .blobs
            .put(&key, crate::meta::encode(&manifest).into())
            .await
        {
            tracing::error!(template = %template.id, number = version.number, error = %e, "could not write the version manifest");
        }
    }

    /// Ends a session without a version: unpins its files and discards its uploads.
    pub async fn abort(&self, session_id: &str) -> RegistryResult<()> {
        let session = self.load_session(session_id).await?;
        let states = self.load_states(&session).await?;
        let objects = transact(self.meta(), async |tx| {
            if tx.get(&keys::session(session_id)).await?.is_none() {
                return Err(session_not_found(session_id));
            }
            let mut objects = Vec::new();
            for f in session.files.iter().filter(|f| !f.upload) {
                objects.extend(release(tx, &f.key, Release::Unpin(session_id)).await?);
            }
            for f in session.files.iter().filter(|f| f.upload) {
                tx.delete(&keys::upload(session_id, &f.key));
            }
            tx.delete(&keys::session(session_id));
            tx.set_remove(keys::SESSIONS, session_id);
            Ok(objects)
        })
        .await?;
        for state in states.values() {
            if let Some(handle) = &state.handle {
                let _ = match state.complete() {
                    true => self.blobs.delete(&handle.key).await,
                    false => self.blobs.abort_upload(handle).await,
                };
            }
        }
        delete_objects(self.blobs(), &objects).await;
        Ok(())
    }

    /// Aborts sessions older than `max_age_secs`; returns how many.
    pub async fn purge_stale_sessions(&self, max_age_secs: u64) -> RegistryResult<usize> {
        let cutoff = model::now().saturating_sub(max_age_secs);
        let mut purged = 0;
        for id in self.meta.members(keys::SESSIONS).await? {
            match self.load_session(&id).await {
                Ok(s) if s.created < cutoff => {
                    self.abort(&id).await?;
                    purged += 1;
                }
                Err(RegistryError::NotFound(_)) => {
                    // A member without a session: clear the stale membership.
                    transact(self.meta(), async |tx| {
                        tx.set_remove(keys::SESSIONS, &id);
                        Ok(())
                    })
                    .await?;
                }
                _ => {}
            }
        }
        Ok(purged)
    }
}

fn plan(session: &UploadSession, states: &BTreeMap<String, UploadState>) -> PushPlan {
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
                    part_size: f.part_size,
                    sha256: match f.upload {
                        true => state.and_then(|s| s.sha256.clone()),
                        false => f.sha256.clone(),
                    },
                }
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::meta::embedded::EmbeddedMeta;
    use crate::protocol::PushFile;
    use crate::store::fs::FsStore;

    fn registry(dir: &std::path::Path) -> Registry {
        let meta = Arc::new(EmbeddedMeta::open(&dir.join("meta.redb")).unwrap());
        let blobs = Arc::new(FsStore::open(dir, 5 << 20).unwrap());
        Registry::new(meta, blobs, 5 << 20, 2)
    }

    fn request(id: Uuid, tag: &str, files: &[(&str, &[u8])]) -> PushRequest {
        PushRequest {
            id,
            name: format!("t-{id}"),
            tag: tag.into(),
            description: String::new(),
            arch: None,
            config: serde_json::json!({}),
            files: files
                .iter()
                .map(|(name, data)| PushFile {
                    name: name.to_string(),
                    kind: FileKind::Image,
                    size: data.len() as u64,
                    sha256: Some(crate::digest::sha256_hex(data)),
                })
                .collect(),
        }
    }

    async fn push(r: &Registry, req: PushRequest, files: &[(&str, &[u8])]) -> PushPlan {
        let plan = r.negotiate(req).await.unwrap();
        for (name, data) in files {
            if plan.files.iter().any(|f| f.name == *name && f.upload) {
                let body = futures_util::stream::iter([Ok::<_, std::io::Error>(
                    Bytes::copy_from_slice(data),
                )]);
                r.upload(&plan.session, name, 0, body).await.unwrap();
            }
        }
        plan
    }

    fn objects(dir: &std::path::Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![dir.join("objects/blobs")];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                if e.path().is_dir() {
                    stack.push(e.path());
                } else {
                    out.push(e.path().strip_prefix(dir).unwrap().display().to_string());
                }
            }
        }
        out.sort();
        out
    }

    #[tokio::test]
    async fn purging_stale_sessions_frees_their_uploads_but_never_a_referenced_file() {
        let dir = tempfile::tempdir().unwrap();
        let r = registry(dir.path());
        let base: &[u8] = b"base layer";
        let committed = Uuid::new_v4();
        let plan = push(
            &r,
            request(committed, "v0", &[("base.ank", base)]),
            &[("base.ank", base)],
        )
        .await;
        r.commit(&plan.session, CommitRequest::default())
            .await
            .unwrap();

        // A stale push pinned base.ank and uploaded new.ank without committing.
        let new: &[u8] = b"new layer";
        let stale = push(
            &r,
            request(Uuid::new_v4(), "x", &[("base.ank", base), ("new.ank", new)]),
            &[("new.ank", new)],
        )
        .await;
        assert!(stale
            .files
            .iter()
            .any(|f| f.name == "base.ank" && !f.upload));
        assert_eq!(
            objects(dir.path()).len(),
            2,
            "base.ank and the uploaded new.ank"
        );

        assert_eq!(
            r.purge_stale_sessions(3600).await.unwrap(),
            0,
            "a fresh session is kept"
        );
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
        assert_eq!(r.purge_stale_sessions(0).await.unwrap(), 1);

        let left = objects(dir.path());
        assert_eq!(left.len(), 1, "the abandoned upload is gone: {left:?}");
        assert!(left[0].contains("base.ank"));
        let record = r.file("base.ank").await.unwrap();
        assert_eq!((record.refs, record.pins.len()), (1, 0));
        assert!(matches!(
            r.commit(&stale.session, CommitRequest::default()).await,
            Err(RegistryError::NotFound(_))
        ));
    }

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

    #[tokio::test]
    async fn a_commit_asked_again_answers_with_the_committed_version() {
        let dir = tempfile::tempdir().unwrap();
        let r = registry(dir.path());
        let id = Uuid::new_v4();
        let files: &[(&str, &[u8])] = &[("c.ank", b"layer")];
        let plan = push(&r, request(id, "v0", files), files).await;
        let first = r
            .commit(&plan.session, CommitRequest::default())
            .await
            .unwrap();
        let again = r
            .commit(&plan.session, CommitRequest::default())
            .await
            .unwrap();
        assert_eq!((again.id, again.tag.as_str(), again.number), (id, "v0", 0));
        assert_eq!(first.number, again.number);
        assert_eq!(r.file("c.ank").await.unwrap().refs, 1, "committed once");

        let other = r
            .negotiate(request(Uuid::new_v4(), "v0", &[("d.ank", b"x")]))
            .await
            .unwrap();
        r.abort(&other.session).await.unwrap();
        assert!(matches!(
            r.commit(&other.session, CommitRequest::default()).await,
            Err(RegistryError::NotFound(_))
        ));
    }

    #[test]
    fn part_sizes_fit_five_terabytes_in_ten_thousand_parts() {
        let dir = tempfile::tempdir().unwrap();
        let r = registry(dir.path());
        assert_eq!(r.part_size_for(1 << 30), 5 << 20);
        let five_tb = 5_000_000_000_000u64;
        let part = r.part_size_for(five_tb);
        assert!(five_tb.div_ceil(part) <= 10_000);
        assert_eq!(part % (1 << 20), 0);
    }
}
