//! OCI repositories as the vendor API shows templates: a repository holding at least one
//! tag is listed by `GET /registry/vm`, `/registry/v2/vm` and the HTML index, its tags as
//! versions (numbered in tag order) and each version's size the bytes its manifest lists
//! (the layers of an image, the manifests of an index); deleting it by its id through the
//! vendor API deletes its manifests, tags and blobs, as deleting them through `/v2/` does.
//!
//! A repository's template id is derived from its name, so it needs no record of its own
//! and stays the same for as long as the name does.

use std::collections::BTreeMap;

use uuid::Uuid;

use super::manifests::{listed_size, ManifestRecord};
use super::OciError;
use crate::meta::{keys, MetaStoreExt};
use crate::model::{TemplateSummary, VersionSummary};
use crate::registry::templates::ListedTemplate;
use crate::registry::{transact, Registry, RegistryError, RegistryResult};

/// The template id of an OCI repository: the first 16 bytes of the SHA-256 of
/// `oci:<name>`, shaped as a random (version 4) UUID.
pub fn repository_id(repo: &str) -> Uuid {
    let digest = crate::digest::sha256_hex(format!("oci:{repo}").as_bytes());
    let mut bytes = [0u8; 16];
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = u8::from_str_radix(&digest[i * 2..i * 2 + 2], 16).unwrap_or(0);
    }
    uuid::Builder::from_random_bytes(bytes).into_uuid()
}

impl Registry {
    /// Visits every OCI repository that holds a tag, as a listed template.
    pub async fn oci_scan(&self, mut visit: impl FnMut(ListedTemplate)) -> RegistryResult<()> {
        for repo in self.meta().members(keys::OCI_REPOS).await? {
            if let Some(listed) = self.oci_listed(&repo).await? {
                visit(listed);
            }
        }
        Ok(())
    }

    /// A repository as a listed template; `None` when it holds no tag.
    async fn oci_listed(&self, repo: &str) -> RegistryResult<Option<ListedTemplate>> {
        let mut tags = self.meta().members(&keys::oci_tags(repo)).await?;
        tags.sort();
        let tag_keys: Vec<String> = tags.iter().map(|t| keys::oci_tag(repo, t)).collect();
        let digests = self.meta().get_many_json::<String>(&tag_keys).await?;
        // Each manifest read once, however many tags point at it.
        let mut sizes: BTreeMap<String, u64> = BTreeMap::new();
        for digest in digests.iter().flatten() {
            sizes.insert(digest.clone(), 0);
        }
        let record_keys: Vec<String> = sizes.keys().map(|d| keys::oci_manifest(repo, d)).collect();
        let records = self
            .meta()
            .get_many_json::<ManifestRecord>(&record_keys)
            .await?;
        for ((_, size), record) in sizes.iter_mut().zip(records) {
            if let Some(record) = record {
                *size = self.oci_listed_size(&record).await?;
            }
        }
        let versions: Vec<VersionSummary> = tags
            .into_iter()
            .zip(digests)
            .filter_map(|(tag, digest)| Some((tag, *sizes.get(&digest?)?)))
            .enumerate()
            .map(|(number, (tag, size))| VersionSummary {
                number: number as u32,
                tag,
                size,
            })
            .collect();
        let Some(last) = versions.last() else {
            return Ok(None);
        };
        let latest_tag = match versions.iter().any(|v| v.tag == "latest") {
            true => "latest".to_string(),
            false => last.tag.clone(),
        };
        let summary = TemplateSummary {
            id: repository_id(repo),
            name: repo.to_string(),
            size: sizes.values().fold(0u64, |a, b| a.saturating_add(*b)),
            arch: String::new(),
            created: 0,
            last_push: 0,
            latest_tag,
            versions: versions.len() as u32,
            version_list: Some(versions),
        };
        Ok(Some(ListedTemplate {
            summary,
            last_pull: 0,
        }))
    }

    /// The bytes a stored manifest lists, read from its bytes for records made before
    /// the record kept it.
    async fn oci_listed_size(&self, record: &ManifestRecord) -> RegistryResult<u64> {
        if let Some(size) = record.listed_size {
            return Ok(size);
        }
        let bytes = self.blobs().read(&record.object).await?;
        Ok(match serde_json::from_slice(&bytes) {
            Ok(serde_json::Value::Object(doc)) => listed_size(&doc),
            _ => 0,
        })
    }

    /// The OCI repository whose template id is `id`, if any holds a tag.
    pub async fn oci_repository_of(&self, id: &Uuid) -> RegistryResult<Option<String>> {
        let repos = self.meta().members(keys::OCI_REPOS).await?;
        Ok(repos.into_iter().find(|r| repository_id(r) == *id))
    }

    /// Deletes an OCI repository whole: its manifests (with their tags) and its blobs;
    /// the content goes where no other repository holds it.
    pub async fn oci_delete_repository(&self, repo: &str) -> RegistryResult<()> {
        for digest in self.meta().members(&keys::oci_manifests(repo)).await? {
            match self.oci_delete_manifest(repo, &digest).await {
                Ok(()) | Err(OciError::ManifestUnknown) => {}
                Err(e) => return Err(into_registry(e)),
            }
        }
        let prefix = keys::oci_blob(repo, "");
        for link in self.meta().keys_with_prefix(&prefix).await? {
            let digest = &link[prefix.len()..];
            match self.oci_delete_blob(repo, digest).await {
                Ok(()) | Err(OciError::BlobUnknown) => {}
                Err(e) => return Err(into_registry(e)),
            }
        }
        // Tags left pointing nowhere (a manifest deleted meanwhile) go too.
        for tag in self.meta().members(&keys::oci_tags(repo)).await? {
            let _ = self.oci_delete_manifest(repo, &tag).await;
        }
        if self.meta().count(&keys::oci_manifests(repo)).await? == 0 {
            transact(self.meta(), async |tx| {
                tx.set_remove(keys::OCI_REPOS, repo);
                Ok(())
            })
            .await?;
        }
        Ok(())
    }
}

/// An OCI failure as the vendor API reports it: the stores' own errors as they are.
fn into_registry(e: OciError) -> RegistryError {
    match e {
        OciError::Registry(e) => e,
        other => RegistryError::Conflict(other.to_string()),
    }
}
