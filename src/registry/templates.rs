//! Reading and changing templates: list, get, delete, revert, arch, configuration.

use uuid::Uuid;

use super::gc::{delete_objects, release, Release};
use super::{summary_record, template_record, transact, Registry, RegistryError, RegistryResult};
use crate::meta::{decode, keys, MetaStoreExt, MetaTx, MetaTxExt};
use crate::model::{self, StoredTemplate, Template, TemplateSummary};
use crate::store::keys as object_keys;

/// A template in a listing, with its latest pull.
#[derive(Clone, Debug)]
pub struct ListedTemplate {
    /// The summary record.
    pub summary: TemplateSummary,
    /// Epoch seconds of the latest pull; 0 when never pulled.
    pub last_pull: u64,
}

/// Which versions a revert keeps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RevertTarget {
    /// Delete the latest version only.
    Latest,
    /// Keep versions up to and including this tag.
    Tag(String),
    /// Keep versions up to and including this number.
    Number(u32),
}

/// Parses a template id given by a client.
pub fn parse_id(id: &str) -> RegistryResult<Uuid> {
    Uuid::parse_str(id.trim()).map_err(|_| {
        RegistryError::BadRequest(format!("invalid template id {id:?}: expected a UUID"))
    })
}

/// Templates read from the metadata store at once by [`Registry::scan`].
pub const SCAN_CHUNK: usize = 1000;

fn not_found(id: &Uuid) -> RegistryError {
    RegistryError::NotFound(format!("template {id} not found"))
}

impl Registry {
    /// Every template's summary, sorted by name.
    pub async fn list(&self) -> RegistryResult<Vec<ListedTemplate>> {
        let mut out = Vec::new();
        self.scan(|t| out.push(t)).await?;
        out.sort_by(|a, b| a.summary.name.cmp(&b.summary.name));
        Ok(out)
    }

    /// Visits every template's summary, in no particular order, reading the metadata
    /// store [`SCAN_CHUNK`] templates at a time, so a caller that keeps less than the
    /// summaries (a listing's rendered rows, say) holds less than all of them at once.
    pub async fn scan(&self, mut visit: impl FnMut(ListedTemplate)) -> RegistryResult<()> {
        let mut ids: Vec<Uuid> = self
            .meta
            .members(keys::TEMPLATES)
            .await?
            .iter()
            .filter_map(|m| Uuid::parse_str(m).ok())
            .collect();
        ids.sort_unstable();
        let mut wanted = Vec::with_capacity(SCAN_CHUNK * 2);
        for chunk in ids.chunks(SCAN_CHUNK) {
            wanted.clear();
            for id in chunk {
                wanted.push(keys::summary(id));
                wanted.push(keys::last_pull(id));
            }
            let mut values = self.meta.get_many(&wanted).await?.into_iter();
            let mut found = Vec::with_capacity(chunk.len());
            let mut pulls = Vec::with_capacity(chunk.len());
            for names in wanted.chunks(2) {
                let (summary, pull) = (values.next().flatten(), values.next().flatten());
                // A member whose summary is gone is a template deleted between the reads.
                let Some(bytes) = summary else { continue };
                found.push((names[0].clone(), bytes));
                pulls.push(match pull {
                    Some(b) => decode(&names[1], &b)?,
                    None => 0,
                });
            }
            let summaries = summary_record::decode_many(self.meta(), &found).await?;
            let mut out: Vec<ListedTemplate> = summaries
                .into_iter()
                .zip(pulls)
                .map(|(summary, last_pull)| ListedTemplate { summary, last_pull })
                .collect();
            self.refresh_old_summaries(&mut out).await?;
            out.into_iter().for_each(&mut visit);
        }
        Ok(())
    }

    /// Summaries written before they carried the version list (and a derived arch) are
    /// rebuilt from their templates, so a registry upgraded in place lists correctly
    /// before its next push or `admin reindex`.
    async fn refresh_old_summaries(&self, listed: &mut [ListedTemplate]) -> RegistryResult<()> {
        let old: Vec<usize> = (0..listed.len())
            .filter(|i| listed[*i].summary.version_list.is_none())
            .collect();
        if old.is_empty() {
            return Ok(());
        }
        let ids: Vec<Uuid> = old.iter().map(|i| listed[*i].summary.id).collect();
        let loaded = template_record::load_many(self.meta(), &ids).await?;
        for (i, found) in old.iter().zip(loaded) {
            if let Some(found) = found {
                listed[*i].summary = TemplateSummary::from(&found.template);
            }
        }
        Ok(())
    }

    /// A template with all its versions.
    pub async fn get(&self, id: &Uuid) -> RegistryResult<Template> {
        match template_record::get(self.meta(), id).await? {
            Some(template) => Ok(template),
            None => Err(not_found(id)),
        }
    }

    /// A template by id or, failing that, by name.
    pub async fn resolve(&self, id_or_name: &str) -> RegistryResult<Template> {
        if let Ok(id) = Uuid::parse_str(id_or_name) {
            return self.get(&id).await;
        }
        let key = keys::template_name(id_or_name);
        match self.meta.get_json::<Uuid>(&key).await? {
            Some(id) => self.get(&id).await,
            None => Err(RegistryError::NotFound(format!(
                "template {id_or_name:?} not found"
            ))),
        }
    }

    /// The configuration of a version (latest by default).
    pub async fn vm_info(
        &self,
        id: &Uuid,
        tag: Option<&str>,
        number: Option<u32>,
    ) -> RegistryResult<serde_json::Value> {
        let template = self.get(id).await?;
        let version = find_version(&template, tag, number)?;
        Ok(version.config.clone())
    }

    /// Deletes a template and every version.
    pub async fn delete_template(&self, id: &Uuid) -> RegistryResult<()> {
        self.truncate(id, |_| Ok(0)).await
    }

    /// Deletes the latest version, or every version after the target. Reverting the only
    /// version away deletes the template.
    pub async fn revert(&self, id: &Uuid, target: RevertTarget) -> RegistryResult<()> {
        self.truncate(id, |t| match &target {
            RevertTarget::Latest => Ok(t.versions.len().saturating_sub(1)),
            RevertTarget::Tag(tag) => t
                .versions
                .iter()
                .position(|v| &v.tag == tag)
                .map(|i| i + 1)
                .ok_or_else(|| {
                    RegistryError::NotFound(format!("tag {tag:?} not found in template {}", t.name))
                }),
            RevertTarget::Number(n) => match (*n as usize) < t.versions.len() {
                true => Ok(*n as usize + 1),
                false => Err(RegistryError::NotFound(format!(
                    "version {n} not found in template {}",
                    t.name
                ))),
            },
        })
        .await
    }

    /// Keeps the first `keep(template)` versions and removes the rest, releasing their
    /// files; removes the template when none remain.
    async fn truncate(
        &self,
        id: &Uuid,
        keep: impl Fn(&Template) -> RegistryResult<usize>,
    ) -> RegistryResult<()> {
        let (removed, objects) = transact(self.meta(), async |tx| {
            let Some(before) = template_record::load_tx(tx, self.meta(), id).await? else {
                return Err(not_found(id));
            };
            let mut template = before.template.clone();
            let kept = keep(&template)?;
            let removed = template
                .versions
                .split_off(kept.min(template.versions.len()));
            let objects = release_versions(tx, &removed).await?;
            if template.versions.is_empty() {
                remove_template_records(tx, &before);
            } else {
                write_template(tx, Some(&before), &template);
                forget_pulls(tx, &template, &removed).await?;
            }
            Ok(((template.versions.is_empty(), removed), objects))
        })
        .await?;
        let (gone, removed) = removed;
        // Manifests go before the files they name: a crash in between leaves orphan files
        // (collected by gc), never a manifest that reindex would bring back without its files.
        let mut manifests: Vec<String> = removed.iter().map(|v| v.manifest_key(id)).collect();
        if gone {
            match self.blobs.list(&object_keys::manifest_prefix(id)).await {
                Ok(all) => manifests.extend(all),
                Err(e) => {
                    // The versions' own manifests are known; strays left from earlier
                    // failures stay for `admin fsck` to report.
                    tracing::error!(template = %id, error = %e, "could not list the manifests of a deleted template");
                    manifests.push(object_keys::template_record(id));
                }
            }
            manifests.sort();
            manifests.dedup();
        }
        delete_objects(self.blobs(), &manifests).await;
        delete_objects(self.blobs(), &objects).await;
        Ok(())
    }

    /// Sets a template's arch (`arm64` or `amd64`).
    pub async fn set_arch(&self, id: &Uuid, arch: &str) -> RegistryResult<()> {
        model::validate_arch(arch)?;
        let template = transact(self.meta(), async |tx| {
            let Some(before) = template_record::load_tx(tx, self.meta(), id).await? else {
                return Err(not_found(id));
            };
            let mut template = before.template.clone();
            template.arch = arch.to_string();
            write_template(tx, Some(&before), &template);
            Ok(template)
        })
        .await?;
        self.write_template_record(&template).await;
        Ok(())
    }

    /// Writes the template-level record beside the manifests, for reindexing.
    pub(crate) async fn write_template_record(&self, template: &Template) {
        let record = StoredTemplate {
            id: template.id,
            name: template.name.clone(),
            arch: template.arch.clone(),
            created: template.created,
        };
        let bytes = crate::meta::encode(&record);
        if let Err(e) = self
            .blobs
            .put(&object_keys::template_record(&template.id), bytes.into())
            .await
        {
            tracing::warn!(template = %template.id, error = %e, "could not write the template record");
        }
    }
}

/// The version named by tag or number, latest when neither is given.
pub fn find_version<'a>(
    template: &'a Template,
    tag: Option<&str>,
    number: Option<u32>,
) -> RegistryResult<&'a model::Version> {
    template
        .find_version(tag, number)
        .ok_or_else(|| match (tag, number) {
            (Some(tag), _) => RegistryError::NotFound(format!(
                "tag {tag:?} not found in template {}",
                template.name
            )),
            (None, Some(n)) => RegistryError::NotFound(format!(
                "version {n} not found in template {}",
                template.name
            )),
            (None, None) => {
                RegistryError::NotFound(format!("template {} has no versions", template.name))
            }
        })
}

/// Writes a template and its listing summary, only what changed since `before` (as read
/// in this transaction; `None` for a new template), with the `last_push` its versions make
/// (see [`Template::newest_push`]) whatever the caller set.
pub(crate) fn write_template(
    tx: &mut Box<dyn MetaTx>,
    before: Option<&template_record::Loaded>,
    template: &Template,
) {
    let slots = template_record::save(tx, before, template);
    summary_record::save(tx, before, template, &slots);
    tx.put_json(&keys::template_name(&template.name), &template.id);
    tx.set_add(keys::TEMPLATES, &template.id.to_string());
}

/// Lets go of every file the removed versions reference; returns the objects to delete
/// once the transaction commits.
pub(crate) async fn release_versions(
    tx: &mut Box<dyn MetaTx>,
    removed: &[model::Version],
) -> RegistryResult<Vec<String>> {
    let mut objects = Vec::new();
    for version in removed {
        for key in version.keys() {
            objects.extend(release(tx, &key, Release::Unref).await?);
        }
    }
    Ok(objects)
}

/// Drops the pull times of removed versions' tags, so a tag pushed again starts unpulled.
pub(crate) async fn forget_pulls(
    tx: &mut Box<dyn MetaTx>,
    template: &Template,
    removed: &[model::Version],
) -> RegistryResult<()> {
    let key = keys::tag_pulls(&template.id);
    let Some(mut pulls) = tx.get_json::<super::pulls::TagPulls>(&key).await? else {
        return Ok(());
    };
    let before = pulls.len();
    pulls.retain(|tag, _| !removed.iter().any(|v| &v.tag == tag));
    if pulls.len() != before {
        tx.put_json(&key, &pulls);
    }
    Ok(())
}

/// Buffers the deletion of every record of the template `before` as read.
pub(crate) fn remove_template_records(tx: &mut Box<dyn MetaTx>, before: &template_record::Loaded) {
    template_record::delete(tx, before);
    summary_record::delete(tx, before);
    let template = &before.template;
    tx.delete(&keys::template_name(&template.name));
    tx.delete(&keys::last_pull(&template.id));
    tx.delete(&keys::tag_pulls(&template.id));
    tx.delete(&keys::commit_seq(&template.id));
    tx.set_remove(keys::TEMPLATES, &template.id.to_string());
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::meta::embedded::EmbeddedMeta;
    use crate::registry::test_support::{push_one, registry};
    use crate::store::fs::FsStore;
    use crate::store::testing::Watched;

    /// A crash between the two deletions must leave files without a manifest (garbage),
    /// never a manifest without its files (which reindex would bring back broken).
    #[tokio::test]
    async fn reverts_and_deletes_remove_manifests_before_files() {
        let dir = tempfile::tempdir().unwrap();
        let meta = Arc::new(EmbeddedMeta::open(&dir.path().join("meta.redb")).unwrap());
        let log = Arc::new(Watched::new(FsStore::open(dir.path(), 5 << 20).unwrap()));
        let r = Registry::new(meta, log.clone(), 5 << 20, 1);
        let id = Uuid::new_v4();
        push_one(&r, id, "ordered", "v1", "one.ank", b"first").await;
        push_one(&r, id, "ordered", "v2", "two.ank", b"second").await;
        for step in [0, 1] {
            log.deletes.lock().unwrap().clear();
            match step {
                0 => r.revert(&id, RevertTarget::Latest).await.unwrap(),
                _ => r.delete_template(&id).await.unwrap(),
            }
            let deleted = log.deletes.lock().unwrap().clone();
            let first_blob = deleted.iter().position(|k| k.starts_with("blobs/"));
            let last_manifest = deleted.iter().rposition(|k| k.starts_with("manifests/"));
            assert!(
                first_blob.is_some() && last_manifest < first_blob,
                "manifests first: {deleted:?}"
            );
        }
        assert!(r.blobs().list("").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn summaries_written_before_version_lists_are_rebuilt_on_listing() {
        let dir = tempfile::tempdir().unwrap();
        let registry = registry(dir.path());
        let template = Template {
            id: Uuid::new_v4(),
            name: "old".into(),
            arch: String::new(),
            created: 1,
            last_push: 2,
            versions: vec![model::Version {
                number: 0,
                tag: "vanilla".into(),
                description: String::new(),
                files: Vec::new(),
                config: serde_json::json!({"hardware_model": "x"}),
                created: 2,
                push_id: "p".into(),
                seq: 0,
            }],
        };
        // A summary as stored before: a count of versions, no list, no derived arch.
        let old = serde_json::json!({
            "id": template.id, "name": "old", "size": 0, "arch": "", "created": 1,
            "last_push": 2, "latest_tag": "vanilla", "versions": 1,
        });
        transact(registry.meta(), async |tx| {
            write_template(tx, None, &template);
            tx.put_json(&keys::summary(&template.id), &old);
            Ok(())
        })
        .await
        .unwrap();
        let listed = registry.list().await.unwrap();
        let summary = &listed[0].summary;
        assert_eq!(summary.arch, "arm64");
        let tags: Vec<&str> = summary
            .version_list
            .iter()
            .flatten()
            .map(|v| v.tag.as_str())
            .collect();
        assert_eq!(tags, ["vanilla"]);
    }
}
