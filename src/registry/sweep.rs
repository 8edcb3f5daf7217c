//! Garbage collection: removes what nothing holds and nobody can come back for.
//!
//! - objects under `blobs/` that no file record names and whose upload session is closed
//!   (see [`census`]: such an object can never be referenced again), once older than the
//!   grace window;
//! - multipart uploads whose session is closed, once older than the grace window, and the
//!   local store's temporary files no session holds, once older than a session's lifetime;
//! - manifests a push wrote ahead of a commit that never came (its session is closed and
//!   no version has its push id; see `push::commit`), or that a revert failed to delete,
//!   and older manifests named by number (`v<n>-<push>.json`) whose push id no version of
//!   the template has any more, once older than the grace window;
//! - upload sessions past their lifetime (aborted as `abort` would), and the commit records
//!   that answer a commit asked again, past the same lifetime; a commit record written
//!   before they were listed in a set is adopted into it, dated when found, so it expires
//!   one lifetime later like the others (its own age is not recorded anywhere); an OCI
//!   upload opened before open uploads were listed in a set is adopted into it too, and
//!   expires by its own recorded age;
//! - with [`GcOptions::abort_uploads_after`] (the vendor's
//!   `ANKA_BACKEND_S3_ABORT_INCOMPLETE_MULTIPART_UPLOAD_DAYS`), every multipart upload
//!   older than that, whatever holds it, as the bucket lifecycle rule it names would.
//!
//! Deleting is safe against concurrent pushes without a lock: every judgement is made per
//! object against the records a commit changes atomically. The grace window is a second
//! guard, not the first.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::census::{self, Holder, BLOBS};
use super::upload::StrayParts;
use super::{template_record, transact, Registry, RegistryError, RegistryResult};
use crate::meta::{keys, MetaTxExt};
use crate::model;
use crate::store::UploadHandle;
use crate::telemetry::metrics::gc_run;

/// How a collection runs.
#[derive(Clone, Copy, Debug)]
pub struct GcOptions {
    /// Objects and uploads younger than this are kept whatever holds them.
    pub grace: Duration,
    /// Upload sessions, commit records and stray temporary files live this long.
    pub session_ttl: Duration,
    /// Report what would go, remove nothing.
    pub dry_run: bool,
    /// Incomplete uploads older than this are aborted even when an open session holds them.
    pub abort_uploads_after: Option<Duration>,
}

impl GcOptions {
    /// The options of a configuration, with the sessions' standard lifetime.
    pub fn of(config: &crate::config::Config, grace: Duration, dry_run: bool) -> Self {
        Self {
            grace,
            session_ttl: super::UPLOAD_SESSION_TTL,
            dry_run,
            abort_uploads_after: config.abort_uploads_after,
        }
    }
}

/// What a collection removed (or, dry, would remove).
#[derive(Clone, Debug, Default, Serialize)]
pub struct GcReport {
    /// Nothing was removed: this is what would be.
    pub dry_run: bool,
    /// Orphan objects.
    pub objects: Vec<String>,
    /// Manifests of versions that were never committed, or are no longer.
    pub manifests: Vec<String>,
    /// Bytes in those objects.
    pub bytes: u64,
    /// Incomplete multipart uploads and temporary files.
    pub uploads: usize,
    /// Upload sessions past their lifetime.
    pub sessions: usize,
    /// Commit records past their lifetime.
    pub commit_records: usize,
    /// Commit records found outside the set of commit records, and added to it.
    pub commit_records_adopted: usize,
    /// OCI uploads found outside the set of open uploads, and added to it.
    pub oci_uploads_adopted: usize,
    /// Records of upload parts whose upload state is gone.
    pub upload_parts: usize,
    /// Version records that no template head lists.
    pub version_records: usize,
}

impl std::fmt::Display for GcReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for object in &self.objects {
            writeln!(f, "orphan {object}")?;
        }
        for manifest in &self.manifests {
            writeln!(f, "uncommitted manifest {manifest}")?;
        }
        write!(
            f,
            "{} {} orphan objects ({} bytes), {} uncommitted manifests, {} incomplete uploads, {} expired upload sessions, {} commit records, {} stray upload part records, {} stray version records; {} {} unlisted commit records, {} unlisted OCI uploads",
            if self.dry_run { "would remove" } else { "removed" },
            self.objects.len(),
            self.bytes,
            self.manifests.len(),
            self.uploads,
            self.sessions,
            self.commit_records,
            self.upload_parts,
            self.version_records,
            if self.dry_run { "would adopt" } else { "adopted" },
            self.commit_records_adopted,
            self.oci_uploads_adopted
        )
    }
}

/// Who holds the periodic collection and until when.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Lease {
    holder: String,
    until_ms: u64,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Registry {
    /// Runs one garbage collection.
    pub async fn collect(&self, options: GcOptions) -> RegistryResult<GcReport> {
        // An index lost with Redis holds nothing, so everything in the bucket would look
        // unreferenced: collect nothing until `reindex` has rebuilt it.
        if !super::instance::index_matches_bucket(self.meta(), self.blobs()).await? {
            return Err(RegistryError::Conflict(
                "the metadata index is not this bucket's (lost Redis or meta.redb?): gc \
                 removes nothing until `vmreg admin reindex` has rebuilt it"
                    .into(),
            ));
        }
        let mut report = GcReport {
            dry_run: options.dry_run,
            ..GcReport::default()
        };
        let ttl = options.session_ttl.as_secs();
        // Adopted first, so an old one expires in this very run.
        report.oci_uploads_adopted = self.oci_adopt_uploads(options.dry_run).await?;
        report.sessions = self.expire_sessions(ttl, options.dry_run).await?;
        report.commit_records_adopted = self.adopt_commit_records(options.dry_run).await?;
        report.commit_records = self.expire_commit_records(ttl, options.dry_run).await?;
        self.collect_orphans(&options, &mut report).await?;
        self.collect_manifests(&options, &mut report).await?;
        report.uploads = self.collect_uploads(&options).await?;
        // After the sessions expired above, so that their parts are gone with them.
        let stray = StrayParts::find(self.meta()).await?;
        report.upload_parts = stray.len();
        if !options.dry_run {
            stray.remove(self.meta()).await?;
        }
        let stray = template_record::StrayVersions::find(self.meta()).await?;
        report.version_records = stray.len();
        if !options.dry_run {
            stray.remove(self.meta()).await?;
        }
        if !options.dry_run {
            gc_run("sessions", report.sessions as u64, 0);
            gc_run("commit_records", report.commit_records as u64, 0);
            gc_run("orphans", report.objects.len() as u64, report.bytes);
            gc_run("manifests", report.manifests.len() as u64, 0);
            gc_run("uploads", report.uploads as u64, 0);
        }
        Ok(report)
    }

    async fn expire_sessions(&self, ttl: u64, dry_run: bool) -> RegistryResult<usize> {
        if !dry_run {
            return self.purge_stale_sessions(ttl).await;
        }
        let cutoff = model::now().saturating_sub(ttl);
        let oci = self.oci_count_stale_uploads(ttl).await?;
        Ok(oci
            + census::sessions(self.meta())
                .await?
                .iter()
                .filter(|(_, s)| s.as_ref().is_some_and(|s| s.created < cutoff))
                .count())
    }

    /// Lists in the commit-record set the records written before it existed. The keys are
    /// walked before the set is read: a commit writes both at once, so a record seen
    /// without its member is one that never had one.
    async fn adopt_commit_records(&self, dry_run: bool) -> RegistryResult<usize> {
        let found = self.meta().keys_with_prefix(&keys::pushed("")).await?;
        let listed: std::collections::HashSet<String> = self
            .meta()
            .members(keys::PUSHED)
            .await?
            .into_iter()
            .filter_map(|m| m.split_once('/').map(|(_, s)| s.to_string()))
            .collect();
        let now = model::now();
        let mut adopted = 0;
        for key in found {
            let Some(session) = key.strip_prefix(&keys::pushed("")) else {
                continue;
            };
            if listed.contains(session) {
                continue;
            }
            adopted += 1;
            if !dry_run {
                transact(self.meta(), async |tx| {
                    tx.set_add(keys::PUSHED, &keys::pushed_member(now, session));
                    Ok(())
                })
                .await?;
            }
        }
        Ok(adopted)
    }

    async fn expire_commit_records(&self, ttl: u64, dry_run: bool) -> RegistryResult<usize> {
        let cutoff = model::now().saturating_sub(ttl);
        let mut expired = 0;
        for member in self.meta().members(keys::PUSHED).await? {
            let (at, session) = member.split_once('/').unwrap_or(("0", member.as_str()));
            if at.parse::<u64>().unwrap_or(0) >= cutoff {
                continue;
            }
            expired += 1;
            if !dry_run {
                transact(self.meta(), async |tx| {
                    tx.delete(&keys::pushed(session));
                    tx.set_remove(keys::PUSHED, &member);
                    Ok(())
                })
                .await?;
            }
        }
        Ok(expired)
    }

    async fn collect_orphans(
        &self,
        options: &GcOptions,
        report: &mut GcReport,
    ) -> RegistryResult<()> {
        let cutoff = model::now().saturating_sub(options.grace.as_secs());
        let objects = self.blobs().list_objects(BLOBS).await?;
        let holders = census::holders(self.meta(), &objects).await?;
        for (object, holder) in objects.iter().zip(holders) {
            if holder != Holder::Nobody || object.modified > cutoff {
                continue;
            }
            if !options.dry_run {
                self.blobs().delete(&object.key).await?;
            }
            report.bytes += object.size;
            report.objects.push(object.key.clone());
        }
        Ok(())
    }

    /// Removes the manifests of pushes that ended without their version, and those of
    /// versions no longer held. A manifest of a held version is kept whatever its number:
    /// retention writes a moved version's manifest under its new number before the index
    /// moves it.
    pub(crate) async fn collect_manifests(
        &self,
        options: &GcOptions,
        report: &mut GcReport,
    ) -> RegistryResult<()> {
        let cutoff = model::now().saturating_sub(options.grace.as_secs());
        let listed = self.blobs().list_objects("manifests/").await?;
        let mut removed = std::collections::HashSet::new();
        for object in &listed {
            let Some((id, push)) = crate::store::keys::manifest_owner(&object.key) else {
                continue;
            };
            if object.modified > cutoff {
                continue;
            }
            // The session first, the template after: a commit in between (which closes
            // one and writes the other at once) is seen on one side or the other.
            let open = self.meta().get_many(&[keys::session(push)]).await?;
            if open.into_iter().next().flatten().is_some() {
                continue;
            }
            let template = template_record::get(self.meta(), &id).await?;
            if template.is_some_and(|t| t.versions.iter().any(|v| v.push_id == push)) {
                continue;
            }
            if !options.dry_run {
                self.blobs().delete(&object.key).await?;
            }
            removed.insert(object.key.as_str());
            report.manifests.push(object.key.clone());
        }
        // Templates that a manifest still names once this pass is done.
        let named = listed
            .iter()
            .filter(|o| !is_record(&o.key) && !removed.contains(o.key.as_str()))
            .filter_map(|o| template_of(&o.key))
            .collect();
        self.collect_template_records(&listed, &named, cutoff, options, report)
            .await
    }

    /// Removes the template records that a delete (or a revert of the last version)
    /// killed before it reached the bucket left behind: no manifest names their template,
    /// the index does not hold it and no open push targets it.
    async fn collect_template_records(
        &self,
        listed: &[crate::store::ObjectInfo],
        named: &std::collections::HashSet<uuid::Uuid>,
        cutoff: u64,
        options: &GcOptions,
        report: &mut GcReport,
    ) -> RegistryResult<()> {
        let records: Vec<_> = listed
            .iter()
            .filter(|o| is_record(&o.key) && o.modified <= cutoff)
            .filter_map(|o| Some((template_of(&o.key)?, &o.key)))
            .filter(|(id, _)| !named.contains(id))
            .collect();
        if records.is_empty() {
            return Ok(());
        }
        // Open pushes first, the index after, as for manifests: a push that writes a
        // record holds a session until its commit puts the template in the index.
        let pushing: std::collections::HashSet<uuid::Uuid> = census::sessions(self.meta())
            .await?
            .into_iter()
            .filter_map(|(_, s)| s.map(|s| s.template))
            .collect();
        for (id, key) in records {
            if pushing.contains(&id) {
                continue;
            }
            if template_record::exists(self.meta(), &id).await? {
                continue;
            }
            if !options.dry_run {
                self.blobs().delete(key).await?;
            }
            report.manifests.push(key.clone());
        }
        Ok(())
    }

    async fn collect_uploads(&self, options: &GcOptions) -> RegistryResult<usize> {
        let now = model::now();
        let sessions = census::sessions(self.meta()).await?;
        let states = census::upload_states(self.meta(), &sessions).await?;
        let mut removed = 0;
        for upload in self.blobs().list_uploads().await? {
            let age = now.saturating_sub(upload.started);
            let abandoned = match &upload.key {
                Some(key) => {
                    age >= options.grace.as_secs() && !census::writer_open(self.meta(), key).await?
                }
                // A temporary file names no session (it may be an OCI upload, or a small
                // write in flight): only one no session records, past a session's lifetime.
                None => {
                    age >= options.session_ttl.as_secs().max(options.grace.as_secs())
                        && !states.iter().any(|(_, _, s)| {
                            s.handle
                                .as_ref()
                                .is_some_and(|h| h.upload_id == upload.upload_id)
                        })
                }
            };
            let expired = options
                .abort_uploads_after
                .is_some_and(|after| age >= after.as_secs());
            if !abandoned && !expired {
                continue;
            }
            removed += 1;
            if !options.dry_run {
                let handle = UploadHandle {
                    key: upload.key.clone().unwrap_or_default(),
                    upload_id: upload.upload_id.clone(),
                };
                self.blobs().abort_upload(&handle).await?;
            }
        }
        Ok(removed)
    }

    /// Takes or renews the periodic collection's lease for `holder` for `ttl`; false when
    /// another replica holds it.
    pub async fn take_gc_lease(&self, holder: &str, ttl: Duration) -> RegistryResult<bool> {
        self.take_lease(keys::GC_LEASE, holder, ttl).await
    }

    /// Takes or renews the lease stored under `key` for `holder` for `ttl`; false when
    /// another holder has it.
    pub(crate) async fn take_lease(
        &self,
        key: &str,
        holder: &str,
        ttl: Duration,
    ) -> RegistryResult<bool> {
        transact(self.meta(), async |tx| {
            let now = now_ms();
            if let Some(lease) = tx.get_json::<Lease>(key).await? {
                if lease.holder != holder && lease.until_ms > now {
                    return Ok(false);
                }
            }
            let lease = Lease {
                holder: holder.to_string(),
                until_ms: now + ttl.as_millis() as u64,
            };
            tx.put_json(key, &lease);
            Ok(true)
        })
        .await
    }

    /// Gives up the lease under `key` when `holder` has it.
    pub(crate) async fn drop_lease(&self, key: &str, holder: &str) -> RegistryResult<()> {
        transact(self.meta(), async |tx| {
            if let Some(lease) = tx.get_json::<Lease>(key).await? {
                if lease.holder == holder {
                    tx.delete(key);
                }
            }
            Ok(())
        })
        .await
    }
}

/// The template a key under `manifests/` belongs to.
fn template_of(key: &str) -> Option<uuid::Uuid> {
    key.strip_prefix("manifests/")?
        .split_once('/')?
        .0
        .parse()
        .ok()
}

/// True for a template record (`manifests/<id>/template.json`).
fn is_record(key: &str) -> bool {
    template_of(key).is_some_and(|id| key == crate::store::keys::template_record(&id))
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::{GcOptions, GcReport};
    use crate::registry::limits::Uploader;
    use crate::registry::test_support::{one_layer, push_one, registry};
    use crate::store::keys as object_keys;

    #[tokio::test]
    async fn manifests_named_by_number_go_once_no_version_or_open_push_names_them() {
        let dir = tempfile::tempdir().unwrap();
        let r = registry(dir.path());
        let id = Uuid::new_v4();
        push_one(&r, id, "old", "v0", "a.ank", b"layer").await;
        let held = r.get(&id).await.unwrap().versions[0].push_id.clone();
        let open = r
            .negotiate(
                one_layer(id, "old", "v1", "b.ank", b"other"),
                &Uploader::anonymous(),
            )
            .await
            .unwrap()
            .session;
        // As an older release named manifests: by number, also for a version reverted
        // since, and one a push in flight wrote.
        let keep = [
            object_keys::manifest(&id, 0, &held),
            object_keys::manifest(&id, 1, &open),
        ];
        let gone = object_keys::manifest(&id, 1, "0123456789abcdef0123456789abcdef");
        for key in keep.iter().chain([&gone]) {
            r.blobs().put(key, b"{}".to_vec().into()).await.unwrap();
        }
        let options = |grace| GcOptions {
            grace,
            session_ttl: crate::registry::UPLOAD_SESSION_TTL,
            dry_run: false,
            abort_uploads_after: None,
        };
        let collect = async |grace| {
            let mut report = GcReport::default();
            r.collect_manifests(&options(grace), &mut report)
                .await
                .unwrap();
            report.manifests
        };
        // Young ones wait out the grace window.
        assert!(collect(std::time::Duration::from_secs(3600))
            .await
            .is_empty());
        assert_eq!(collect(std::time::Duration::ZERO).await, vec![gone.clone()]);
        let listed = r
            .blobs()
            .list(&object_keys::manifest_prefix(&id))
            .await
            .unwrap();
        assert!(!listed.contains(&gone));
        assert!(keep.iter().all(|k| listed.contains(k)), "{listed:?}");
    }

    #[test]
    fn manifest_keys_name_their_template_and_push_in_both_namings() {
        let id = Uuid::new_v4();
        let by_number = object_keys::manifest(&id, 7, "abc");
        let by_push = object_keys::push_manifest(&id, "abc");
        assert_eq!(object_keys::manifest_owner(&by_number), Some((id, "abc")));
        assert_eq!(object_keys::manifest_owner(&by_push), Some((id, "abc")));
        let record = object_keys::template_record(&id);
        assert_eq!(object_keys::manifest_owner(&record), None);
        assert_eq!(
            object_keys::manifest_owner(&format!("manifests/{id}/vx-abc.json")),
            None
        );
    }
}
