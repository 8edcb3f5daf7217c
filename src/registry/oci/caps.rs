//! Caps on what OCI clients can grow, by the same settings as the vendor side: repositories
//! count against `--max-templates`, and a repository's tags and its manifests each against
//! `--max-versions`; open blob uploads against `--max-upload-sessions`.

use super::{OciError, OciResult};
use crate::meta::keys;
use crate::registry::Registry;

impl Registry {
    /// Refuses a new repository when the registry holds the most it may.
    pub(super) async fn oci_check_repo_room(&self, repo: &str) -> OciResult<()> {
        let max = self.limits().max_templates;
        let hint = "delete unused repositories' manifests first (--max-templates)";
        self.oci_check_room(keys::OCI_REPOS, repo, max, "repositories", hint)
            .await
    }

    /// Refuses a new upload when as many are open as `--max-upload-sessions` allows (the
    /// same cap as the vendor protocol's pushes, counted apart so neither front door can
    /// starve the other).
    pub(super) async fn oci_check_upload_room(&self) -> OciResult<()> {
        let max = self.limits().max_upload_sessions;
        if self.meta().count(keys::OCI_UPLOADS).await? < max {
            return Ok(());
        }
        Err(OciError::TooManyUploads(format!(
            "{max} blob uploads are open, the most this registry allows; retry once some \
             finish, are cancelled or expire (--max-upload-sessions)"
        )))
    }

    /// Refuses a new manifest, or a new tag when `tag` is given, in a full repository.
    pub(super) async fn oci_check_manifest_room(
        &self,
        repo: &str,
        digest: &str,
        tag: Option<&str>,
    ) -> OciResult<()> {
        let max = self.limits().max_versions as u64;
        let hint = "delete old manifests or tags first (--max-versions)";
        let manifests = keys::oci_manifests(repo);
        self.oci_check_room(&manifests, digest, max, "manifests in a repository", hint)
            .await?;
        if let Some(tag) = tag {
            let tags = keys::oci_tags(repo);
            self.oci_check_room(&tags, tag, max, "tags in a repository", hint)
                .await?;
        }
        Ok(())
    }

    /// Refuses to add `member` to `set` when the set is full, unless it is there already.
    async fn oci_check_room(
        &self,
        set: &str,
        member: &str,
        max: u64,
        what: &str,
        hint: &str,
    ) -> OciResult<()> {
        if self.meta().count(set).await? < max {
            return Ok(());
        }
        // Only at the cap is the whole set read, to let a member that is there through.
        if self.meta().members(set).await?.iter().any(|m| m == member) {
            return Ok(());
        }
        Err(OciError::Full(format!(
            "this registry holds its maximum of {max} {what}; {hint}"
        )))
    }
}
