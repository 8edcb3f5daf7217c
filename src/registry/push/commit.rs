//! Committing a push: verifies every file, writes the version's immutable manifest, then
//! appends the version atomically.

use std::collections::BTreeMap;

use serde_json::Value;
use uuid::Uuid;

use super::negotiate::{changed_in_place, check_name_free};
use super::session::{session_not_found, UploadSession};
use crate::digest::is_sha256_hex;
use crate::meta::{encode, keys, MetaStoreExt, MetaTx, MetaTxExt};
use crate::model::{self, FileRecord, FileRef, StoredManifest, StoredTemplate, Template, Version};
use crate::protocol::{CommitRequest, Committed};
use crate::registry::gc::delete_objects;
use crate::registry::limits::{release_upload_place, Door};
use crate::registry::template_record;
use crate::registry::templates::write_template;
use crate::registry::upload::delete_state;
use crate::registry::{transact, Registry, RegistryError, RegistryResult};
use crate::store::keys as object_keys;

/// Passes of the commit transaction that may each find the manifest to write again (a
/// concurrent commit took the number, or a newer commit attempt the order) before one
/// finds it written as the commit would make it.
const MAX_REWRITES: usize = 50;

/// What one pass of the commit transaction decided.
enum Step {
    /// The version is appended; the objects to delete now that it is.
    Done(Committed, Vec<String>),
    /// The bucket must hold this manifest (and, for a new template, this record) before
    /// the commit: the pass changed nothing but, when it took a new place in the
    /// template's history, the counter of commit attempts.
    Write(StoredManifest, Option<StoredTemplate>),
}

/// The file records a commit writes, with the manifest's map of objects and the objects
/// it makes garbage.
struct FileChanges {
    records: Vec<(String, FileRecord)>,
    objects: BTreeMap<String, String>,
    garbage: Vec<String>,
}

impl Registry {
    /// Verifies every file and appends the version with the next number, atomically.
    /// Committing a session that already committed answers with its version again, so a
    /// client whose reply was lost can ask once more.
    ///
    /// The version's manifest is in the bucket before the version is in the index (the
    /// bucket is the truth, see `reindex`): each pass of the transaction builds the
    /// manifest the commit would make, and commits only when the bucket holds exactly that
    /// one; otherwise the manifest is written and the pass runs again. A commit that fails
    /// after writing it removes it again, and one interrupted leaves it to `abort` and gc.
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
        let files = self.verified_files(&session, &req).await?;
        // One time for every pass, so that the manifest and the index agree.
        let created = model::now();
        let mut written: Option<StoredManifest> = None;
        for _ in 0..MAX_REWRITES {
            let step = transact(self.meta(), async |tx| {
                self.commit_pass(tx, &session, &files, created, written.as_ref())
                    .await
            })
            .await;
            match step {
                Ok(Step::Done(committed, garbage)) => {
                    delete_objects(self.blobs(), &garbage).await;
                    return Ok(committed);
                }
                Ok(Step::Write(manifest, record)) => {
                    if let Some(record) = record {
                        let key = object_keys::template_record(&record.id);
                        self.blobs.put(&key, encode(&record).into()).await?;
                    }
                    let key = manifest.version.manifest_key(&manifest.id);
                    self.blobs.put(&key, encode(&manifest).into()).await?;
                    written = Some(manifest);
                }
                Err(e) => {
                    if written.is_some() {
                        self.settle_manifest(&session).await;
                    }
                    return Err(e);
                }
            }
        }
        Err(RegistryError::Busy)
    }

    /// The session's files as the version will name them, each upload complete and with
    /// the digest the client claims.
    async fn verified_files(
        &self,
        session: &UploadSession,
        req: &CommitRequest,
    ) -> RegistryResult<Vec<FileRef>> {
        // A held file changed in place dooms the push: say so before anything else, as the
        // client asks as soon as its digest differs, while its uploads still run.
        for f in &session.files {
            if let (Some(held), Some(claimed)) = (&f.held, req.digests.get(&f.key)) {
                if held != claimed {
                    return Err(changed_in_place(&f.name, Some(claimed)));
                }
            }
        }
        let states = self.load_states(session).await?;
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
                    return Err(session_not_found(&session.id));
                };
                let finished;
                let state = if !state.complete() && state.received == f.size && f.size > 0 {
                    let key = keys::upload(&session.id, &f.key);
                    finished = self.finish_received(f, &key, state.clone()).await?;
                    &finished
                } else {
                    state
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
        Ok(files)
    }

    /// One pass of the commit transaction (see [`Registry::commit`]).
    async fn commit_pass(
        &self,
        tx: &mut Box<dyn MetaTx>,
        session: &UploadSession,
        files: &[FileRef],
        created: u64,
        written: Option<&StoredManifest>,
    ) -> RegistryResult<Step> {
        let session_id = session.id.as_str();
        if tx.get(&keys::session(session_id)).await?.is_none() {
            return Err(session_not_found(session_id));
        }
        let before = template_record::load_tx(tx, self.meta(), &session.template).await?;
        let new_template = before.is_none();
        let mut template = match &before {
            Some(t) => t.template.clone(),
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
                    created,
                    last_push: created,
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
        let changes = file_changes(tx, session, files).await?;
        // A commit must come after every version it stacks on in the history, so that
        // replaying the manifests by `seq` rebuilds the versions (see `reindex`).
        let newest = template.versions.iter().map(|v| v.seq).max().unwrap_or(0);
        let seq = match written.map(|m| m.version.seq) {
            Some(seq) if seq > newest => seq,
            _ => {
                let counter = keys::commit_seq(&template.id);
                let seq = tx.get_json::<u64>(&counter).await?.unwrap_or(0).max(newest) + 1;
                tx.put_json(&counter, &seq);
                seq
            }
        };
        let mut config = session.config.clone();
        if let Some(map) = config.as_object_mut() {
            map.insert("uuid".into(), Value::String(template.id.to_string()));
            map.insert("name".into(), Value::String(template.name.clone()));
        }
        let manifest = StoredManifest {
            id: template.id,
            name: template.name.clone(),
            version: Version {
                number: template.versions.len() as u32,
                tag: session.tag.clone(),
                description: session.description.clone(),
                files: files.to_vec(),
                config,
                created,
                push_id: session.id.clone(),
                seq,
            },
            objects: changes.objects,
        };
        if written != Some(&manifest) {
            let record = new_template.then(|| StoredTemplate {
                id: template.id,
                name: template.name.clone(),
                arch: template.arch.clone(),
                created: template.created,
            });
            return Ok(Step::Write(manifest, record));
        }
        for (key, record) in &changes.records {
            tx.put_json(&keys::file(key), record);
            delete_state(tx, &keys::upload(session_id, key)).await?;
        }
        let version = manifest.version;
        template.versions.push(version.clone());
        self.check_record_size(&template.name, encode(&template).len())?;
        write_template(tx, before.as_ref(), &template);
        tx.delete(&keys::session(session_id));
        tx.set_remove(keys::SESSIONS, session_id);
        release_upload_place(tx, Door::Push, session.holder.as_deref(), session_id);
        tx.put_json(&keys::pushed(session_id), &template.id);
        tx.set_add(keys::PUSHED, &keys::pushed_member(created, session_id));
        let committed = Committed {
            id: template.id,
            name: template.name,
            tag: version.tag,
            number: version.number,
        };
        Ok(Step::Done(committed, changes.garbage))
    }

    /// After a commit failed with its manifest written: the manifest stays only when the
    /// push's version is committed all the same (by another request of the same push),
    /// written again as the index holds it; else it goes. A failure here leaves it to gc.
    async fn settle_manifest(&self, session: &UploadSession) {
        let key = object_keys::push_manifest(&session.template, &session.id);
        let settled = match self.committed_manifest(&session.id).await {
            Ok(Some(m)) => self.blobs.put(&key, encode(&m).into()).await,
            Ok(None) => self.blobs.delete(&key).await,
            Err(e) => Err(crate::store::StoreError::Unavailable(e.to_string())),
        };
        if let Err(e) = settled {
            tracing::warn!(manifest = key, error = %e, "could not settle the manifest of a failed commit");
        }
    }

    /// The manifest of the version a push committed, as the index holds it.
    async fn committed_manifest(&self, session_id: &str) -> RegistryResult<Option<StoredManifest>> {
        let Some((template, version)) = self.committed_version(session_id).await? else {
            return Ok(None);
        };
        let keys: Vec<String> = version.keys();
        let wanted: Vec<String> = keys.iter().map(|k| keys::file(k)).collect();
        let records = self.meta.get_many_json::<FileRecord>(&wanted).await?;
        let objects = keys
            .into_iter()
            .zip(records)
            .filter_map(|(k, r)| r.map(|r| (k, r.object)))
            .collect();
        Ok(Some(StoredManifest {
            id: template.id,
            name: template.name,
            version,
            objects,
        }))
    }

    /// The version a session committed, while it exists.
    async fn committed_earlier(&self, session_id: &str) -> RegistryResult<Option<Committed>> {
        Ok(self
            .committed_version(session_id)
            .await?
            .map(|(template, v)| Committed {
                id: template.id,
                name: template.name,
                tag: v.tag,
                number: v.number,
            }))
    }

    /// The template and the version a session committed, found through its commit record
    /// while both exist.
    async fn committed_version(
        &self,
        session_id: &str,
    ) -> RegistryResult<Option<(Template, Version)>> {
        let Some(id) = self
            .meta
            .get_json::<Uuid>(&keys::pushed(session_id))
            .await?
        else {
            return Ok(None);
        };
        let Some(template) = template_record::get(self.meta(), &id).await? else {
            return Ok(None);
        };
        let version = template
            .versions
            .iter()
            .find(|v| v.push_id == session_id)
            .cloned();
        Ok(version.map(|v| (template, v)))
    }
}

/// Within the commit transaction, reads the session's file records and works out what the
/// commit makes of them, writing nothing.
async fn file_changes(
    tx: &mut Box<dyn MetaTx>,
    session: &UploadSession,
    files: &[FileRef],
) -> RegistryResult<FileChanges> {
    let mut changes = FileChanges {
        records: Vec::with_capacity(files.len()),
        objects: BTreeMap::new(),
        garbage: Vec::new(),
    };
    for (f, file) in session.files.iter().zip(files) {
        let existing = tx.get_json::<FileRecord>(&keys::file(&f.key)).await?;
        let record = match (f.upload, existing) {
            (true, Some(mut record)) => {
                // Someone committed the same file first; keep theirs, drop ours.
                if record.size != file.size || record.sha256 != file.sha256 {
                    return Err(changed_in_place(&f.name, Some(&file.sha256)));
                }
                changes.garbage.push(object_keys::blob(&f.key, &session.id));
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
                // The file was not sent: the version takes the registry's copy only when
                // it holds the bytes the client has.
                if record.size != file.size || record.sha256 != file.sha256 {
                    return Err(changed_in_place(&f.name, Some(&file.sha256)));
                }
                record.pins.retain(|p| p != &session.id);
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
        changes.objects.insert(f.key.clone(), record.object.clone());
        changes.records.push((f.key.clone(), record));
    }
    Ok(changes)
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use crate::meta::MetaStoreExt;

    use std::sync::Arc;

    use super::super::testing::{push, registry, request};
    use super::Step;
    use crate::meta::embedded::EmbeddedMeta;
    use crate::meta::{keys, MetaStore};
    use crate::protocol::CommitRequest;
    use crate::registry::limits::Uploader;
    use crate::registry::{transact, Registry, RegistryError};
    use crate::store::fs::FsStore;
    use crate::store::testing::Watched;
    use crate::store::{keys as object_keys, BlobStore};

    fn watched_registry(dir: &std::path::Path) -> (Registry, Arc<Watched>) {
        let meta = Arc::new(EmbeddedMeta::open(&dir.join("meta.redb")).unwrap());
        let blobs = Arc::new(Watched::new(FsStore::open(dir, 5 << 20).unwrap()));
        (Registry::new(meta, blobs.clone(), 5 << 20, 1), blobs)
    }

    async fn stored(blobs: &dyn BlobStore, id: Uuid) -> Vec<String> {
        blobs
            .list(&object_keys::manifest_prefix(&id))
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_commit_whose_manifest_cannot_be_written_fails_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (r, blobs) = watched_registry(dir.path());
        let id = Uuid::new_v4();
        let files: &[(&str, &[u8])] = &[("m.ank", b"layer")];
        let plan = push(&r, request(id, "v0", files), files).await;
        *blobs.refuse_puts.lock().unwrap() = Some("manifests/".into());
        assert!(matches!(
            r.commit(&plan.session, CommitRequest::default()).await,
            Err(RegistryError::Store(_))
        ));
        assert!(matches!(r.get(&id).await, Err(RegistryError::NotFound(_))));
        assert!(r.file("m.ank").await.is_err(), "no file record");
        assert!(stored(blobs.as_ref(), id).await.is_empty());
        assert_eq!(
            r.push_status(&plan.session).await.unwrap().files[0].received,
            5
        );

        // The same push commits once the bucket takes the manifest.
        *blobs.refuse_puts.lock().unwrap() = None;
        let done = r
            .commit(&plan.session, CommitRequest::default())
            .await
            .unwrap();
        assert_eq!((done.id, done.number), (id, 0));
        let version = &r.get(&id).await.unwrap().versions[0];
        let key = version.manifest_key(&id);
        assert_eq!(key, object_keys::push_manifest(&id, &plan.session));
        let manifest: crate::model::StoredManifest =
            serde_json::from_slice(&blobs.read(&key).await.unwrap()).unwrap();
        assert_eq!(
            &manifest.version, version,
            "the bucket holds what the index does"
        );
    }

    /// Runs a commit up to the manifest only, as a replica killed before the metadata
    /// commit leaves it.
    async fn crash_after_manifest(r: &Registry, session: &str) {
        let session = r.load_session(session).await.unwrap();
        let files = r
            .verified_files(&session, &CommitRequest::default())
            .await
            .unwrap();
        let step = transact(r.meta(), async |tx| {
            r.commit_pass(tx, &session, &files, crate::model::now(), None)
                .await
        })
        .await
        .unwrap();
        let Step::Write(manifest, _) = step else {
            panic!("a first pass writes the manifest")
        };
        let key = manifest.version.manifest_key(&manifest.id);
        let bytes = crate::meta::encode(&manifest);
        r.blobs().put(&key, bytes.into()).await.unwrap();
    }

    #[tokio::test]
    async fn a_manifest_whose_commit_never_came_is_dropped_by_reindex_abort_and_gc() {
        let dir = tempfile::tempdir().unwrap();
        let (r, blobs) = watched_registry(dir.path());
        let id = Uuid::new_v4();
        let base: &[(&str, &[u8])] = &[("base.ank", b"base")];
        let plan = push(&r, request(id, "v0", base), base).await;
        r.commit(&plan.session, CommitRequest::default())
            .await
            .unwrap();

        // Two pushes die between their manifest and their commit.
        let mut crashed = Vec::new();
        for (tag, name) in [("lost", "lost.ank"), ("aborted", "aborted.ank")] {
            let files: &[(&str, &[u8])] = &[(name, tag.as_bytes())];
            let plan = push(&r, request(id, tag, files), files).await;
            crash_after_manifest(&r, &plan.session).await;
            crashed.push(plan.session);
        }
        assert_eq!(
            stored(blobs.as_ref(), id).await.len(),
            4,
            "record, v0, two pending"
        );
        // A later push takes number 1.
        let next: &[(&str, &[u8])] = &[("next.ank", b"next")];
        let plan = push(&r, request(id, "next", next), next).await;
        r.commit(&plan.session, CommitRequest::default())
            .await
            .unwrap();

        // The bucket alone: the pending manifests are not versions.
        let dir2 = tempfile::tempdir().unwrap();
        let fresh = EmbeddedMeta::open(&dir2.path().join("fresh.redb")).unwrap();
        crate::registry::reindex::reindex(&fresh, blobs.as_ref())
            .await
            .unwrap();
        let rebuilt = crate::registry::template_record::get(&fresh, &id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(rebuilt, r.get(&id).await.unwrap());
        let fresh: &dyn MetaStore = &fresh;
        assert!(fresh
            .get_json::<crate::model::FileRecord>(&keys::file("lost.ank"))
            .await
            .unwrap()
            .is_none());

        // While the pushes are open gc keeps their manifests: they may still commit.
        let gc = crate::registry::sweep::GcOptions {
            grace: std::time::Duration::ZERO,
            session_ttl: crate::registry::UPLOAD_SESSION_TTL,
            dry_run: false,
            abort_uploads_after: None,
        };
        // (Only this part of gc runs here: a whole run counts into the process's metrics,
        // which another unit test reads.)
        let collect = async || {
            let mut report = crate::registry::sweep::GcReport::default();
            r.collect_manifests(&gc, &mut report).await.unwrap();
            report.manifests
        };
        assert!(collect().await.is_empty());
        // An abort removes its push's manifest; a push whose session vanished (its
        // metadata lost) leaves its manifest to gc.
        r.abort(&crashed[1]).await.unwrap();
        transact(r.meta(), async |tx| {
            tx.delete(&keys::session(&crashed[0]));
            tx.set_remove(keys::SESSIONS, &crashed[0]);
            Ok(())
        })
        .await
        .unwrap();
        let lost = object_keys::push_manifest(&id, &crashed[0]);
        assert_eq!(collect().await, vec![lost]);
        assert_eq!(
            stored(blobs.as_ref(), id).await.len(),
            3,
            "record, v0, next"
        );
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
            .negotiate(
                request(Uuid::new_v4(), "v0", &[("d.ank", b"x")]),
                &Uploader::anonymous(),
            )
            .await
            .unwrap();
        r.abort(&other.session).await.unwrap();
        assert!(matches!(
            r.commit(&other.session, CommitRequest::default()).await,
            Err(RegistryError::NotFound(_))
        ));
    }
}
