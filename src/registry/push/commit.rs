//! Committing a push: verifies every file, appends the version atomically, then writes
//! its immutable manifest.

use std::collections::BTreeMap;

use uuid::Uuid;

use super::negotiate::{changed_in_place, check_name_free};
use super::session::session_not_found;
use crate::digest::is_sha256_hex;
use crate::meta::{keys, MetaStoreExt, MetaTxExt};
use crate::model::{self, FileRecord, FileRef, StoredManifest, Template, Version};
use crate::protocol::{CommitRequest, Committed};
use crate::registry::gc::delete_objects;
use crate::registry::templates::write_template;
use crate::registry::{transact, Registry, RegistryError, RegistryResult};
use crate::store::keys as object_keys;

impl Registry {
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
        let Some(id) = self.meta.get_json::<Uuid>(&key).await? else {
            return Ok(None);
        };
        let Some(template) = self.meta.get_json::<Template>(&keys::template(&id)).await? else {
            return Ok(None);
        };
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
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::super::testing::{push, registry, request};
    use crate::protocol::CommitRequest;
    use crate::registry::RegistryError;

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
}
