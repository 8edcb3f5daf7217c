//! What the OCI front door holds in the blob store, as `gc` and `fsck` judge it. An OCI
//! object's key (`blobs/oci/<upload>`) does not tell its content record, which is named by
//! digest, so the records are found by walking their keys.

use std::collections::{HashMap, HashSet};

use super::manifests::ManifestRecord;
use crate::meta::{keys, MetaStore, MetaStoreExt};
use crate::model::FileRecord;
use crate::registry::RegistryResult;

/// The content records (blobs and manifests' bytes), each naming its object.
pub(crate) async fn content_records(meta: &dyn MetaStore) -> RegistryResult<Vec<FileRecord>> {
    let wanted = meta
        .keys_with_prefix(&keys::file(&super::blob_key("")))
        .await?;
    Ok(meta
        .get_many_json::<FileRecord>(&wanted)
        .await?
        .into_iter()
        .flatten()
        .collect())
}

/// The stored manifests of every repository, as (content key, object).
async fn manifests(meta: &dyn MetaStore) -> RegistryResult<Vec<(String, String)>> {
    let mut wanted = Vec::new();
    let mut digests = Vec::new();
    for repo in meta.members(keys::OCI_REPOS).await? {
        for digest in meta.members(&keys::oci_manifests(&repo)).await? {
            wanted.push(keys::oci_manifest(&repo, &digest));
            digests.push(digest);
        }
    }
    Ok(digests
        .into_iter()
        .zip(meta.get_many_json::<ManifestRecord>(&wanted).await?)
        .filter_map(|(digest, record)| {
            let record = record?;
            let hex = match super::sha256_of_digest(&digest).ok()? {
                Some(hex) => hex.to_string(),
                None => record.content.clone()?,
            };
            Some((super::blob_key(&hex), record.object))
        })
        .collect())
}

/// The objects a content record or a stored manifest names: what gc may never remove.
pub(crate) async fn held_objects(meta: &dyn MetaStore) -> RegistryResult<HashSet<String>> {
    let mut held: HashSet<String> = content_records(meta)
        .await?
        .into_iter()
        .map(|r| r.object)
        .collect();
    held.extend(manifests(meta).await?.into_iter().map(|(_, object)| object));
    Ok(held)
}

/// How many holders each content record should count: one per repository link to it and
/// one per stored manifest of its bytes.
pub(crate) async fn expected_refs(meta: &dyn MetaStore) -> RegistryResult<HashMap<String, u64>> {
    let mut refs: HashMap<String, u64> = HashMap::new();
    let links = meta.keys_with_prefix(keys::OCI_BLOB_LINKS).await?;
    let values = meta.get_many_json::<serde_json::Value>(&links).await?;
    for (link, value) in links.iter().zip(values) {
        let content = link
            .rsplit_once('@')
            .zip(value)
            .and_then(|((_, digest), value)| super::linked_content(digest, &value));
        if let Some(hex) = content {
            *refs.entry(super::blob_key(&hex)).or_default() += 1;
        }
    }
    for (key, _) in manifests(meta).await? {
        *refs.entry(key).or_default() += 1;
    }
    Ok(refs)
}
