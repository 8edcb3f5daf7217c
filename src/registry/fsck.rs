//! `vmreg admin fsck`: checks, without changing anything, that the index and the stores
//! agree: every version's files are recorded and stored whole, every stored object is held
//! by a file or an open upload, sessions are fresh, manifests match the committed versions.

use std::collections::{BTreeMap, HashMap, HashSet};

use futures_util::StreamExt;
use serde::Serialize;
use uuid::Uuid;

use super::census::{self, Holder, BLOBS};
use super::upload::StrayParts;
use super::{oci, template_record, Registry, RegistryResult};
use crate::meta::{keys, MetaStoreExt};
use crate::model::{self, FileRecord, Template};
use crate::store::{keys as object_keys, ObjectInfo};

/// What to check beyond the default.
#[derive(Clone, Copy, Debug)]
pub struct FsckOptions {
    /// Read every stored file and compare its SHA-256 with its record (reads everything).
    pub digests: bool,
    /// Upload sessions older than this many seconds count as stale.
    pub session_ttl: u64,
}

/// One kind of disagreement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    /// The template set names a template that has no record.
    MissingTemplate,
    /// A version names a file that has no record.
    MissingFileRecord,
    /// A file record names an object the store does not hold.
    MissingObject,
    /// A stored object, or a record, has another size than the version says.
    SizeMismatch,
    /// A stored object's bytes, or a record, have another SHA-256 than the version says.
    DigestMismatch,
    /// A file record counts other references than the versions that name it.
    RefCountMismatch,
    /// An object that no file and no open upload holds.
    OrphanObject,
    /// An upload session past its lifetime, or a session id without a record.
    StaleSession,
    /// A multipart upload (or temporary file) that no open upload session holds.
    IncompleteUpload,
    /// Records of upload parts whose upload state is gone.
    StrayUploadPart,
    /// Version records that no template head lists.
    StrayVersionRecord,
    /// A committed version without its manifest in the bucket.
    MissingManifest,
    /// A manifest in the bucket for a version the index does not hold.
    StrayManifest,
    /// An API key or permission group the index holds and the bucket does not (or holds
    /// otherwise): a lost index would lose it, or change it back.
    IdentityNotInBucket,
    /// An API key or permission group the bucket holds and the index does not: a reindex
    /// would restore it (a create whose commit never came).
    IdentityNotInIndex,
    /// An API key or group the bucket marks deleted and the index still holds (a delete
    /// cut off between its two steps): a reindex removes it.
    DeletedIdentityLive,
}

/// One problem found.
#[derive(Clone, Debug, Serialize)]
pub struct Problem {
    /// What kind.
    pub kind: ProblemKind,
    /// The key, object or session concerned.
    pub subject: String,
    /// What is wrong, for a person.
    pub detail: String,
}

/// What fsck looked at and what it found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FsckReport {
    /// True when no problem was found.
    pub clean: bool,
    /// Templates checked.
    pub templates: usize,
    /// Versions checked.
    pub versions: usize,
    /// File records checked.
    pub files: usize,
    /// Objects under `blobs/`.
    pub objects: usize,
    /// Bytes in those objects.
    pub bytes: u64,
    /// Open upload sessions.
    pub sessions: usize,
    /// Of those objects, the ones the OCI front door wrote (judged like the others).
    pub oci_objects: usize,
    /// Whether every stored file was read and hashed.
    pub digests_checked: bool,
    /// The problems, ordered by kind.
    pub problems: Vec<Problem>,
}

impl FsckReport {
    fn add(&mut self, kind: ProblemKind, subject: impl Into<String>, detail: impl Into<String>) {
        self.problems.push(Problem {
            kind,
            subject: subject.into(),
            detail: detail.into(),
        });
    }
}

impl std::fmt::Display for FsckReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for p in &self.problems {
            let kind = serde_json::to_value(p.kind).unwrap_or_default();
            writeln!(
                f,
                "{} {}: {}",
                kind.as_str().unwrap_or(""),
                p.subject,
                p.detail
            )?;
        }
        write!(
            f,
            "{}: {} problems in {} templates, {} versions, {} files, {} objects ({} bytes), {} upload sessions{}",
            if self.clean { "clean" } else { "NOT CLEAN" },
            self.problems.len(),
            self.templates,
            self.versions,
            self.files,
            self.objects,
            self.bytes,
            self.sessions,
            if self.digests_checked { ", digests checked" } else { "" }
        )
    }
}

/// What every version expects of one file.
struct Expected {
    size: u64,
    sha256: String,
    refs: u64,
    by: String,
}

impl Registry {
    /// Checks the index against the stores; changes nothing.
    pub async fn fsck(&self, options: FsckOptions) -> RegistryResult<FsckReport> {
        let mut report = FsckReport {
            digests_checked: options.digests,
            ..FsckReport::default()
        };
        let templates = self.fsck_templates(&mut report).await?;
        let expected = expected_files(&templates);
        let file_keys: Vec<String> = expected.keys().map(|k| keys::file(k)).collect();
        let records = self.meta().get_many_json::<FileRecord>(&file_keys).await?;
        // Sessions are read before the objects are listed, and judged per object after, so
        // an upload completed meanwhile is never taken for an orphan (see `census`).
        let sessions = census::sessions(self.meta()).await?;
        let objects = self.blobs().list_objects(BLOBS).await?;
        report.objects = objects.len();
        report.bytes = objects.iter().map(|o| o.size).sum();
        let by_key: HashMap<&str, &ObjectInfo> =
            objects.iter().map(|o| (o.key.as_str(), o)).collect();

        for ((key, want), record) in expected.iter().zip(records) {
            let Some(record) = record else {
                report.add(
                    ProblemKind::MissingFileRecord,
                    key,
                    format!("{} names it, but the registry has no record of it", want.by),
                );
                continue;
            };
            report.files += 1;
            self.check_file(&mut report, options, key, want, &record, &by_key)
                .await?;
        }
        self.fsck_oci_content(&mut report, options, &by_key).await?;

        self.fsck_sessions(&mut report, options, &sessions).await?;
        for (object, holder) in objects
            .iter()
            .zip(census::holders(self.meta(), &objects).await?)
        {
            if census::blob_owner(&object.key).is_some_and(|(f, _)| f == census::OCI_FILE_KEY) {
                report.oci_objects += 1;
            }
            if holder == Holder::Nobody {
                report.add(
                    ProblemKind::OrphanObject,
                    &object.key,
                    format!(
                        "{} bytes held by no file and no open upload, written {} s ago",
                        object.size,
                        model::now().saturating_sub(object.modified)
                    ),
                );
            }
        }
        self.fsck_manifests(&mut report, &templates, &sessions)
            .await?;
        self.fsck_identities(&mut report).await?;
        report
            .problems
            .sort_by(|a, b| (a.kind, &a.subject).cmp(&(b.kind, &b.subject)));
        report.clean = report.problems.is_empty();
        Ok(report)
    }

    async fn fsck_templates(&self, report: &mut FsckReport) -> RegistryResult<Vec<Template>> {
        let members = self.meta().members(keys::TEMPLATES).await?;
        // An id that is no uuid names no template: a missing template.
        let ids: Vec<Uuid> = members.iter().filter_map(|m| m.parse().ok()).collect();
        let mut loaded = template_record::load_many(self.meta(), &ids)
            .await?
            .into_iter();
        let mut templates = Vec::new();
        for member in &members {
            let found = match member.parse::<Uuid>() {
                Ok(_) => loaded.next().flatten(),
                Err(_) => None,
            };
            match found {
                Some(t) => templates.push(t.template),
                None => report.add(
                    ProblemKind::MissingTemplate,
                    member,
                    "listed among the templates, but has no record",
                ),
            }
        }
        for (id, slots) in template_record::StrayVersions::find(self.meta()).await?.0 {
            report.add(
                ProblemKind::StrayVersionRecord,
                keys::template(&id),
                format!("{} version records its head does not list", slots.len()),
            );
        }
        report.templates = templates.len();
        report.versions = templates.iter().map(|t| t.versions.len()).sum();
        Ok(templates)
    }

    async fn check_file(
        &self,
        report: &mut FsckReport,
        options: FsckOptions,
        key: &str,
        want: &Expected,
        record: &FileRecord,
        objects: &HashMap<&str, &ObjectInfo>,
    ) -> RegistryResult<()> {
        if record.size != want.size || record.sha256 != want.sha256 {
            report.add(
                ProblemKind::DigestMismatch,
                key,
                format!(
                    "{} says {} bytes with sha256 {}, the record {} bytes with sha256 {}",
                    want.by, want.size, want.sha256, record.size, record.sha256
                ),
            );
        }
        if record.refs != want.refs {
            report.add(
                ProblemKind::RefCountMismatch,
                key,
                format!(
                    "the record counts {} references, {} versions name it",
                    record.refs, want.refs
                ),
            );
        }
        let Some(object) = objects.get(record.object.as_str()) else {
            report.add(
                ProblemKind::MissingObject,
                key,
                format!(
                    "{} names object {}, which is not stored",
                    want.by, record.object
                ),
            );
            return Ok(());
        };
        if object.size != record.size {
            report.add(
                ProblemKind::SizeMismatch,
                key,
                format!(
                    "object {} holds {} bytes, the record says {}",
                    record.object, object.size, record.size
                ),
            );
        } else if options.digests {
            let actual = self.stored_digest(&record.object).await?;
            if actual != record.sha256 {
                report.add(
                    ProblemKind::DigestMismatch,
                    key,
                    format!(
                        "object {} has sha256 {actual}, the record says {}",
                        record.object, record.sha256
                    ),
                );
            }
        }
        Ok(())
    }

    /// Checks the OCI front door's content records as the versions' files are checked:
    /// stored whole, and counting one reference per repository link and stored manifest.
    async fn fsck_oci_content(
        &self,
        report: &mut FsckReport,
        options: FsckOptions,
        objects: &HashMap<&str, &ObjectInfo>,
    ) -> RegistryResult<()> {
        let records = oci::held::content_records(self.meta()).await?;
        let refs = oci::held::expected_refs(self.meta()).await?;
        for record in records {
            report.files += 1;
            let want = Expected {
                size: record.size,
                sha256: record.sha256.clone(),
                refs: refs.get(&record.key).copied().unwrap_or(0),
                by: format!("OCI content sha256:{}", record.sha256),
            };
            self.check_file(report, options, &record.key, &want, &record, objects)
                .await?;
        }
        Ok(())
    }

    /// The SHA-256 of a stored object, read whole.
    async fn stored_digest(&self, object: &str) -> RegistryResult<String> {
        use sha2::Digest;
        let mut stream = self.blobs().get(object, None).await?;
        let mut hasher = sha2::Sha256::new();
        while let Some(chunk) = stream.next().await {
            hasher.update(&chunk?);
        }
        Ok(hex::encode(hasher.finalize()))
    }

    async fn fsck_sessions(
        &self,
        report: &mut FsckReport,
        options: FsckOptions,
        sessions: &[(String, Option<super::push::UploadSession>)],
    ) -> RegistryResult<()> {
        report.sessions = sessions.len();
        let cutoff = model::now().saturating_sub(options.session_ttl);
        for (id, session) in sessions {
            match session {
                None => report.add(
                    ProblemKind::StaleSession,
                    id,
                    "listed among the upload sessions, but has no record",
                ),
                Some(s) if s.created < cutoff => report.add(
                    ProblemKind::StaleSession,
                    id,
                    format!(
                        "opened {} s ago for {}:{}, past the {} s lifetime",
                        model::now().saturating_sub(s.created),
                        s.name,
                        s.tag,
                        options.session_ttl
                    ),
                ),
                Some(_) => {}
            }
        }
        for (state, numbers) in StrayParts::find(self.meta()).await?.0 {
            report.add(
                ProblemKind::StrayUploadPart,
                &state,
                format!(
                    "{} part records left by an upload that no longer records them",
                    numbers.len()
                ),
            );
        }
        let states = census::upload_states(self.meta(), sessions).await?;
        let held: HashSet<&str> = states
            .iter()
            .filter_map(|(_, _, s)| s.handle.as_ref().map(|h| h.upload_id.as_str()))
            .collect();
        for upload in self.blobs().list_uploads().await? {
            let age = model::now().saturating_sub(upload.started);
            let held = match &upload.key {
                Some(key) => census::writer_open(self.meta(), key).await?,
                // A temporary file names no session: it may be an OCI upload or a small
                // write in flight, so only one older than a session's lifetime is stale.
                None => held.contains(upload.upload_id.as_str()) || age < options.session_ttl,
            };
            if held {
                continue;
            }
            report.add(
                ProblemKind::IncompleteUpload,
                upload.key.as_deref().unwrap_or(&upload.upload_id),
                format!(
                    "upload {} started {age} s ago, held by no open upload session",
                    upload.upload_id
                ),
            );
        }
        Ok(())
    }

    async fn fsck_manifests(
        &self,
        report: &mut FsckReport,
        templates: &[Template],
        sessions: &[(String, Option<super::push::UploadSession>)],
    ) -> RegistryResult<()> {
        let stored: HashSet<String> = self.blobs().list("manifests/").await?.into_iter().collect();
        // A push's manifest is written before its commit: while the push is open, it is
        // the commit in progress (or to be asked again), not a stray.
        let mut known: HashSet<String> = sessions
            .iter()
            .filter_map(|(id, s)| {
                s.as_ref()
                    .map(|s| object_keys::push_manifest(&s.template, id))
            })
            .collect();
        // So is its template's record, which gc keeps while a push targets the template.
        known.extend(
            sessions
                .iter()
                .filter_map(|(_, s)| s.as_ref())
                .map(|s| object_keys::template_record(&s.template)),
        );
        for t in templates {
            known.insert(object_keys::template_record(&t.id));
            for v in &t.versions {
                let key = v.manifest_key(&t.id);
                if !stored.contains(&key) {
                    report.add(
                        ProblemKind::MissingManifest,
                        &key,
                        format!(
                            "version {}:{} is committed, but its manifest is not in the bucket",
                            t.name, v.tag
                        ),
                    );
                }
                known.insert(key);
            }
        }
        let ids: HashSet<Uuid> = templates.iter().map(|t| t.id).collect();
        for key in stored.difference(&known) {
            let detail = match template_of_manifest(key) {
                Some(id) if ids.contains(&id) => "a manifest of a version the index does not hold",
                _ => "a manifest of a template the index does not hold",
            };
            report.add(ProblemKind::StrayManifest, key, detail);
        }
        Ok(())
    }
}

impl Registry {
    /// Compares the API keys and groups of the index with those kept in the bucket.
    async fn fsck_identities(&self, report: &mut FsckReport) -> RegistryResult<()> {
        use crate::auth::durable::{compare, Disagreement};
        let found =
            compare(self.meta(), self.blobs())
                .await
                .map_err(|e| -> super::RegistryError {
                    match e {
                        crate::auth::AuthError::Meta(e) => e.into(),
                        crate::auth::AuthError::Store(e) => e.into(),
                        other => crate::meta::MetaError::Corrupt {
                            key: crate::store::keys::IDENTITIES.into(),
                            reason: other.to_string(),
                        }
                        .into(),
                    }
                })?;
        for d in found {
            let (kind, subject, detail) = match d {
                Disagreement::NotInBucket(s, d) => (ProblemKind::IdentityNotInBucket, s, d),
                Disagreement::NotInIndex(s, d) => (ProblemKind::IdentityNotInIndex, s, d),
                Disagreement::DeletedButLive(s, d) => (ProblemKind::DeletedIdentityLive, s, d),
            };
            report.add(kind, subject, detail);
        }
        Ok(())
    }
}

fn template_of_manifest(key: &str) -> Option<Uuid> {
    key.strip_prefix("manifests/")?
        .split('/')
        .next()?
        .parse()
        .ok()
}

/// Each file key the versions name, with the size and digest they expect and how many
/// versions name it.
fn expected_files(templates: &[Template]) -> BTreeMap<String, Expected> {
    let mut out: BTreeMap<String, Expected> = BTreeMap::new();
    for t in templates {
        for v in &t.versions {
            let mut seen = HashSet::new();
            for f in &v.files {
                let key = f.key();
                if !seen.insert(key.clone()) {
                    continue;
                }
                out.entry(key)
                    .and_modify(|e| e.refs += 1)
                    .or_insert_with(|| Expected {
                        size: f.size,
                        sha256: f.sha256.clone(),
                        refs: 1,
                        by: format!("version {}:{}", t.name, v.tag),
                    });
            }
        }
    }
    out
}
