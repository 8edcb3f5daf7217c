//! The registry's instance id: made once, the same on every replica and across restarts,
//! so that a client can tell two addresses of one registry from two registries.
//!
//! The bucket holds it (`registry/instance`), as it holds the manifests: it outlives a lost
//! Redis. Replicas that start together on an empty bucket agree through one metadata
//! transaction (`registry:instance`), whose winner's id every one of them then writes.

use bytes::Bytes;

use super::{Registry, RegistryError, RegistryResult};
use crate::meta::MetaError;
use crate::store::StoreError;

/// The object in the blob store that holds the instance id.
pub const INSTANCE_OBJECT: &str = "registry/instance";
/// The metadata key through which replicas agree on a new instance id.
const INSTANCE_KEY: &str = "registry:instance";
/// Transactions tried before giving up on a contended first start.
const ATTEMPTS: usize = 16;

/// An id as stored: short, and safe in a header and a file name.
fn valid(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn decode(key: &str, bytes: &[u8]) -> RegistryResult<String> {
    let id = std::str::from_utf8(bytes)
        .map(str::trim)
        .unwrap_or_default()
        .to_string();
    match valid(&id) {
        true => Ok(id),
        false => Err(RegistryError::Meta(MetaError::Corrupt {
            key: key.to_string(),
            reason: "not an instance id".into(),
        })),
    }
}

/// Whether the metadata index is the one this bucket's registry keeps: it holds the
/// bucket's instance id, which only a first start (with the bucket) or `reindex` (from it)
/// writes. After a lost Redis (or a lost `meta.redb`) it does not, and the index is empty
/// while the bucket is full: everything in the bucket would look unreferenced to `gc`.
/// A bucket with no id yet (a registry older than the id) cannot tell: it answers `true`.
pub async fn index_matches_bucket(
    meta: &dyn crate::meta::MetaStore,
    blobs: &dyn crate::store::BlobStore,
) -> RegistryResult<bool> {
    let held = match blobs.read(INSTANCE_OBJECT).await {
        Ok(bytes) => decode(INSTANCE_OBJECT, &bytes)?,
        Err(StoreError::NotFound(_)) => return Ok(true),
        Err(e) => return Err(e.into()),
    };
    let found = meta.get_many(&[INSTANCE_KEY.to_string()]).await?;
    Ok(match found.into_iter().next().flatten() {
        Some(bytes) => decode(INSTANCE_KEY, &bytes)? == held,
        None => false,
    })
}

/// Marks the metadata index as this bucket's again (see [`index_matches_bucket`]): the
/// last step of `reindex`, which rebuilt it from the bucket.
pub async fn mark_index_of_bucket(
    meta: &dyn crate::meta::MetaStore,
    blobs: &dyn crate::store::BlobStore,
) -> RegistryResult<()> {
    let held = match blobs.read(INSTANCE_OBJECT).await {
        Ok(bytes) => decode(INSTANCE_OBJECT, &bytes)?,
        Err(StoreError::NotFound(_)) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let mut tx = meta.begin().await?;
    tx.put(INSTANCE_KEY, held.into_bytes());
    match tx.commit().await? {
        true => Ok(()),
        false => Err(RegistryError::Busy),
    }
}

impl Registry {
    /// The instance id, made and stored on the first start of the registry.
    pub async fn instance_id(&self) -> RegistryResult<String> {
        match self.blobs.read(INSTANCE_OBJECT).await {
            Ok(bytes) => return decode(INSTANCE_OBJECT, &bytes),
            Err(StoreError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
        let id = self.agree_on_instance_id().await?;
        self.blobs
            .put(INSTANCE_OBJECT, Bytes::from(id.clone()))
            .await?;
        Ok(id)
    }

    /// The id the metadata store holds, or a new one it holds from now on.
    async fn agree_on_instance_id(&self) -> RegistryResult<String> {
        for _ in 0..ATTEMPTS {
            let mut tx = self.meta.begin().await?;
            let id = match tx.get(INSTANCE_KEY).await? {
                Some(bytes) => return decode(INSTANCE_KEY, &bytes),
                None => uuid::Uuid::new_v4().to_string(),
            };
            tx.put(INSTANCE_KEY, id.clone().into_bytes());
            if tx.commit().await? {
                return Ok(id);
            }
        }
        Err(RegistryError::Busy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::test_support::registry;

    #[tokio::test]
    async fn the_id_is_made_once_and_survives_a_lost_index() {
        let dir = tempfile::tempdir().unwrap();
        let first = registry(dir.path()).instance_id().await.unwrap();
        assert!(valid(&first), "{first}");
        assert_eq!(registry(dir.path()).instance_id().await.unwrap(), first);
        // The bucket is the truth: the metadata store's copy can go.
        std::fs::remove_file(dir.path().join("meta.redb")).unwrap();
        assert_eq!(registry(dir.path()).instance_id().await.unwrap(), first);
        let other = tempfile::tempdir().unwrap();
        assert_ne!(registry(other.path()).instance_id().await.unwrap(), first);
    }

    #[tokio::test]
    async fn a_lost_index_is_told_from_the_bucket_until_reindex_marks_it() {
        let dir = tempfile::tempdir().unwrap();
        let r = registry(dir.path());
        r.instance_id().await.unwrap();
        assert!(index_matches_bucket(r.meta(), r.blobs()).await.unwrap());
        drop(r);
        std::fs::remove_file(dir.path().join("meta.redb")).unwrap();
        let r = registry(dir.path());
        // A start after the loss reads the id from the bucket and does not vouch for the
        // empty index.
        r.instance_id().await.unwrap();
        assert!(!index_matches_bucket(r.meta(), r.blobs()).await.unwrap());
        mark_index_of_bucket(r.meta(), r.blobs()).await.unwrap();
        assert!(index_matches_bucket(r.meta(), r.blobs()).await.unwrap());
    }

    #[tokio::test]
    async fn replicas_starting_together_agree() {
        let dir = tempfile::tempdir().unwrap();
        let r = registry(dir.path());
        let ids = futures_util::future::join_all((0..8).map(|_| r.instance_id())).await;
        let ids: std::collections::BTreeSet<String> = ids.into_iter().map(Result::unwrap).collect();
        assert_eq!(ids.len(), 1, "{ids:?}");
    }

    #[tokio::test]
    async fn a_corrupt_id_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let r = registry(dir.path());
        r.blobs
            .put(INSTANCE_OBJECT, Bytes::from_static(b"../\n"))
            .await
            .unwrap();
        assert!(matches!(
            r.instance_id().await,
            Err(RegistryError::Meta(MetaError::Corrupt { .. }))
        ));
    }
}
