//! Blobs as a repository holds them: served through the repository's link, deleted by
//! dropping the link (the content goes when nothing holds it), and mounted from another
//! repository by adding a link, without moving a byte.

use super::{blob_key, hold, sha256_of_digest, validate_repo, OciError, OciResult};
use crate::meta::{decode, keys, MetaTxExt};
use crate::model::FileRecord;
use crate::registry::gc::{delete_objects, release, Release};
use crate::registry::{transact, Registry, RegistryError};

impl Registry {
    /// The record of a blob `repo` holds.
    pub async fn oci_blob(&self, repo: &str, digest: &str) -> OciResult<FileRecord> {
        validate_repo(repo)?;
        let hex = sha256_of_digest(digest)?;
        let record_key = keys::file(&blob_key(hex));
        let found = self
            .meta()
            .get_many(&[keys::oci_blob(repo, digest), record_key.clone()])
            .await?;
        match found.as_slice() {
            [Some(_), Some(bytes)] => Ok(decode(&record_key, bytes)?),
            _ => Err(OciError::BlobUnknown),
        }
    }

    /// Drops `repo`'s hold on a blob; its bytes go when no repository or manifest holds
    /// them any more.
    pub async fn oci_delete_blob(&self, repo: &str, digest: &str) -> OciResult<()> {
        validate_repo(repo)?;
        let hex = sha256_of_digest(digest)?;
        let link = keys::oci_blob(repo, digest);
        let released = transact(self.meta(), async |tx| {
            if tx.get(&link).await?.is_none() {
                return Err(RegistryError::NotFound("blob".into()));
            }
            tx.delete(&link);
            release(tx, &blob_key(hex), Release::Unref).await
        })
        .await
        .map_err(|e| match e {
            RegistryError::NotFound(_) => OciError::BlobUnknown,
            e => OciError::Registry(e),
        })?;
        delete_objects(self.blobs(), released.as_slice()).await;
        Ok(())
    }

    /// Makes `repo` hold a blob that `from` holds, or with no `from` any stored blob with
    /// that digest (the spec's automatic content discovery). `None` when there is no such
    /// blob, and the client must upload it.
    pub async fn oci_mount(
        &self,
        repo: &str,
        digest: &str,
        from: Option<&str>,
    ) -> OciResult<Option<FileRecord>> {
        validate_repo(repo)?;
        if let Some(from) = from {
            validate_repo(from)?;
        }
        let hex = sha256_of_digest(digest)?;
        self.oci_check_repo_room(repo).await?;
        let link = keys::oci_blob(repo, digest);
        let source = from.map(|f| keys::oci_blob(f, digest));
        let record_key = keys::file(&blob_key(hex));
        transact(self.meta(), async |tx| {
            let Some(record) = tx.get_json::<FileRecord>(&record_key).await? else {
                return Ok(None);
            };
            if let Some(source) = &source {
                if tx.get(source).await?.is_none() {
                    return Ok(None);
                }
            }
            if tx.get(&link).await?.is_some() {
                return Ok(Some(record));
            }
            tx.put_json(&link, &true);
            tx.set_add(keys::OCI_REPOS, repo);
            hold(tx, &record).await.map(Some)
        })
        .await
        .map_err(OciError::from)
    }
}
