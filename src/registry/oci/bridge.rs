//! OCI repositories as the vendor API shows templates: a repository holding at least one
//! tag is listed by `GET /registry/vm`, `/registry/v2/vm` and the HTML index, its tags as
//! versions (numbered in tag order) and each version's size the bytes the store holds of
//! what its manifest lists (the layers of an image, the manifests of an index), never the
//! sizes the manifest claims; deleting it by its id through the
//! vendor API deletes its manifests, tags and blobs, as deleting them through `/v2/` does.
//!
//! A repository's template id is derived from its name, so it needs no record of its own
//! and stays the same for as long as the name does.

use std::collections::BTreeMap;

use uuid::Uuid;

use super::manifests::{listed_in, Listed, ManifestRecord};
use super::OciError;
use crate::meta::{keys, MetaStoreExt, MetaTxExt};
use crate::model::{TemplateSummary, VersionSummary};
use crate::registry::templates::ListedTemplate;
use crate::registry::{transact, Registry, RegistryError, RegistryResult};

/// The template id of an OCI repository: the first 16 bytes of the SHA-256 of
/// `oci:<name>`, shaped as a random (version 4) UUID.
pub fn repository_id(repo: &str) -> Uuid {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(format!("oci:{repo}").as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_random_bytes(bytes).into_uuid()
}

impl Registry {
    /// Visits every OCI repository that holds a tag, as a listed template. One pass
    /// whatever the number of repositories: their tag sets in one read, every tag in one
    /// read, every manifest they point at in one read.
    pub async fn oci_scan(&self, mut visit: impl FnMut(ListedTemplate)) -> RegistryResult<()> {
        let repos = self.meta().members(keys::OCI_REPOS).await?;
        let tag_sets: Vec<String> = repos.iter().map(|r| keys::oci_tags(r)).collect();
        let mut tags = self.meta().members_many(&tag_sets).await?;
        for repo_tags in &mut tags {
            repo_tags.sort();
        }
        let tag_keys: Vec<String> = repos
            .iter()
            .zip(&tags)
            .flat_map(|(repo, repo_tags)| repo_tags.iter().map(|t| keys::oci_tag(repo, t)))
            .collect();
        let mut digests = self
            .meta()
            .get_many_json::<String>(&tag_keys)
            .await?
            .into_iter();
        // Each manifest read once, however many tags point at it.
        let mut pointed: Vec<Vec<(String, Option<String>)>> = Vec::with_capacity(repos.len());
        let mut sizes: BTreeMap<(usize, String), u64> = BTreeMap::new();
        for (i, repo_tags) in tags.into_iter().enumerate() {
            let repo_pointed: Vec<(String, Option<String>)> = repo_tags
                .into_iter()
                .map(|tag| (tag, digests.next().flatten()))
                .collect();
            for digest in repo_pointed.iter().filter_map(|(_, d)| d.clone()) {
                sizes.insert((i, digest), 0);
            }
            pointed.push(repo_pointed);
        }
        let record_keys: Vec<String> = sizes
            .keys()
            .map(|(i, d)| keys::oci_manifest(&repos[*i], d))
            .collect();
        let records = self
            .meta()
            .get_many_json::<ManifestRecord>(&record_keys)
            .await?;
        for (((i, _), size), (key, record)) in sizes.iter_mut().zip(record_keys.iter().zip(records))
        {
            if let Some(record) = record {
                *size = self.oci_stored_size(&repos[*i], key, &record).await?;
            }
        }
        for (i, (repo, repo_pointed)) in repos.iter().zip(pointed).enumerate() {
            let repo_sizes: BTreeMap<&str, u64> = sizes
                .range((i, String::new())..(i + 1, String::new()))
                .map(|((_, d), size)| (d.as_str(), *size))
                .collect();
            if let Some(listed) = listed(repo, repo_pointed, &repo_sizes) {
                visit(listed);
            }
        }
        Ok(())
    }

    /// The bytes a stored manifest (its record under `key`) lists, as the store holds them.
    /// A record made before it kept them has them counted from the manifest's bytes, and
    /// kept, so that the listings after it need not read the manifest again.
    async fn oci_stored_size(
        &self,
        repo: &str,
        key: &str,
        record: &ManifestRecord,
    ) -> RegistryResult<u64> {
        if let Some(size) = record.held_size {
            return Ok(size);
        }
        let bytes = self.blobs().read(&record.object).await?;
        let what = match serde_json::from_slice(&bytes) {
            Ok(serde_json::Value::Object(doc)) => listed_in(&doc),
            _ => Listed::Nothing,
        };
        let size = self.oci_held_size(repo, &what).await?;
        let kept = transact(self.meta(), async |tx| {
            if let Some(mut now) = tx.get_json::<ManifestRecord>(key).await? {
                if now.held_size.is_none() {
                    now.held_size = Some(size);
                    tx.put_json(key, &now);
                }
            }
            Ok(())
        })
        .await;
        if let Err(e) = kept {
            // Counted again by the next listing; nothing is wrong meanwhile.
            tracing::debug!(error = %e, "could not keep a manifest's stored size");
        }
        Ok(size)
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

/// A repository as a listed template from its tags (sorted), the manifest each points at
/// and those manifests' sizes; `None` when no tag points at a stored manifest.
fn listed(
    repo: &str,
    pointed: Vec<(String, Option<String>)>,
    sizes: &BTreeMap<&str, u64>,
) -> Option<ListedTemplate> {
    let versions: Vec<VersionSummary> = pointed
        .into_iter()
        .filter_map(|(tag, digest)| Some((tag, *sizes.get(digest?.as_str())?)))
        .enumerate()
        .map(|(number, (tag, size))| VersionSummary {
            number: number as u32,
            tag,
            size,
        })
        .collect();
    let last = versions.last()?;
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
    Some(ListedTemplate {
        summary,
        last_pull: 0,
    })
}

/// An OCI failure as the vendor API reports it: the stores' own errors as they are.
fn into_registry(e: OciError) -> RegistryError {
    match e {
        OciError::Registry(e) => e,
        other => RegistryError::Conflict(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::repository_id;

    #[test]
    fn a_repository_keeps_its_template_id() {
        // Pinned: an id that changed would orphan every client that stored it.
        assert_eq!(
            repository_id("tart/sonoma").to_string(),
            "fd098f40-c923-4f8c-a6bf-8aaa123c23ee"
        );
        assert_ne!(repository_id("tart/sonoma"), repository_id("tart/sequoia"));
    }
}
