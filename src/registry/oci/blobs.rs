//! Blobs as a repository holds them: served through the repository's link, deleted by
//! dropping the link (the content goes when nothing holds it), and mounted from another
//! repository by adding a link, without moving a byte.

use super::{
    blob_key, hold, link_value, linked_content, read_link, sha256_of_digest, validate_repo,
    OciError, OciResult,
};
use crate::meta::{decode, keys, MetaStoreExt, MetaTxExt};
use crate::model::FileRecord;
use crate::registry::gc::{delete_objects, release, Release};
use crate::registry::{transact, Registry, RegistryError};

impl Registry {
    /// The record of a blob `repo` holds under `digest`.
    pub async fn oci_blob(&self, repo: &str, digest: &str) -> OciResult<FileRecord> {
        validate_repo(repo)?;
        let link = keys::oci_blob(repo, digest);
        let content = match sha256_of_digest(digest)? {
            Some(hex) => hex.to_string(),
            // Named by another algorithm: the link tells which content it holds.
            None => {
                let value = self.meta().get_json::<serde_json::Value>(&link).await?;
                let value = value.ok_or(OciError::BlobUnknown)?;
                linked_content(digest, &value).ok_or(OciError::BlobUnknown)?
            }
        };
        let record_key = keys::file(&blob_key(&content));
        let found = self.meta().get_many(&[link, record_key.clone()]).await?;
        match found.as_slice() {
            [Some(_), Some(bytes)] => Ok(decode(&record_key, bytes)?),
            _ => Err(OciError::BlobUnknown),
        }
    }

    /// Drops `repo`'s hold on a blob; its bytes go when no repository or manifest holds
    /// them any more.
    pub async fn oci_delete_blob(&self, repo: &str, digest: &str) -> OciResult<()> {
        validate_repo(repo)?;
        sha256_of_digest(digest)?;
        let link = keys::oci_blob(repo, digest);
        let released = transact(self.meta(), async |tx| {
            let Some(content) = read_link(tx, &link, digest).await? else {
                return Err(RegistryError::NotFound("blob".into()));
            };
            tx.delete(&link);
            release(tx, &blob_key(&content), Release::Unref).await
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
    /// that digest (the spec's automatic content discovery: by SHA-256, the digest content
    /// is stored under, or by the alias a blob closed or mounted under another digest
    /// left). `None` when there is no such blob, and the client must upload it.
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
        let by_sha256 = sha256_of_digest(digest)?.map(str::to_string);
        self.oci_check_repo_room(repo).await?;
        let link = keys::oci_blob(repo, digest);
        let source = from.map(|f| keys::oci_blob(f, digest));
        transact(self.meta(), async |tx| {
            let content = match (&source, &by_sha256) {
                (Some(source), _) => read_link(tx, source, digest).await?,
                (None, Some(hex)) => Some(hex.clone()),
                (None, None) => {
                    tx.get_json::<String>(&keys::oci_content_alias(digest))
                        .await?
                }
            };
            let Some(content) = content else {
                return Ok(None);
            };
            let record_key = keys::file(&blob_key(&content));
            let Some(record) = tx.get_json::<FileRecord>(&record_key).await? else {
                return Ok(None);
            };
            if tx.get(&link).await?.is_some() {
                return Ok(Some(record));
            }
            tx.put_json(&link, &link_value(digest, &content));
            tx.set_add(keys::OCI_REPOS, repo);
            if by_sha256.is_none() {
                tx.put_json(&keys::oci_content_alias(digest), &content);
            }
            hold(tx, &record).await.map(Some)
        })
        .await
        .map_err(OciError::from)
    }
}
