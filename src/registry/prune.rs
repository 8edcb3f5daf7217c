//! Removing chosen versions of a template, newest or not, as retention does.
//!
//! A revert removes versions from the end; retention removes any, so the versions after a
//! removed one move down to keep numbers dense (0..len, as a pull by number expects).
//! Numbers are positions, worked out when a template is read (see `template_record`), so
//! the index rewrites no kept version, and a manifest named by its push needs no change
//! either: reindex replays manifests by their commit counter. Only a manifest of a version
//! committed before that counter was kept is named by its number, so the order is:
//! 1. write such moved versions' manifests under their new numbers (the bucket holds what
//!    the index will point at before it points there);
//! 2. commit the index: versions removed, their files released by reference count, in one
//!    transaction that first checks the template is still as read in 1;
//! 3. delete the removed versions' manifests, then the moved versions' old manifests, then
//!    the released files (manifests before files, as a revert does).
//!
//! A crash between 1 and 3 leaves a version with two manifests (one per number): reindex
//! takes the lower one, the newer. If the template changed between 1 and 2 (a push or a
//! revert raced), the manifests written in 1 are deleted and the whole is tried again.
//! Runs that renumber one template are kept apart by retention's lease, so no other run
//! writes or deletes these new manifests meanwhile.

use std::collections::BTreeSet;

use uuid::Uuid;

use super::gc::delete_objects;
use super::templates::{forget_pulls, release_versions, remove_template_records, write_template};
use super::{template_record, transact, Registry, RegistryError, RegistryResult};
use crate::model::{StoredManifest, Template, Version};
use crate::store::{keys as object_keys, StoreError};

/// Tries before a template changing under every attempt is reported busy.
const ATTEMPTS: usize = 20;

/// A version moved to a new number: its old and new manifest keys.
struct Moved {
    old: String,
    new: String,
}

impl Registry {
    /// Removes the versions of template `id` whose push ids are in `push_ids`, keeping the
    /// rest in order and renumbering them densely; removes the template when none remain.
    /// Returns the versions removed (those of `push_ids` the template still held) and the
    /// stored files deleted with them.
    pub async fn remove_versions(
        &self,
        id: &Uuid,
        push_ids: &BTreeSet<String>,
    ) -> RegistryResult<Removed> {
        for _ in 0..ATTEMPTS {
            let Some(read) = template_record::get(self.meta(), id).await? else {
                return Ok(Removed::default());
            };
            let (kept, removed) = split(&read, push_ids);
            if removed.is_empty() {
                return Ok(Removed::default());
            }
            let moved = self.write_moved_manifests(id, &kept).await?;
            let committed = transact(self.meta(), async |tx| {
                let Some(before) = template_record::load_tx(tx, self.meta(), id).await? else {
                    return Ok(None);
                };
                if before.template != read {
                    return Ok(None);
                }
                let objects = release_versions(tx, &removed).await?;
                let mut template = before.template.clone();
                template.versions = kept.iter().map(|(_, v)| v.clone()).collect();
                match template.versions.is_empty() {
                    true => remove_template_records(tx, &before),
                    false => {
                        write_template(tx, Some(&before), &template);
                        forget_pulls(tx, &template, &removed).await?;
                    }
                }
                Ok(Some(objects))
            })
            .await;
            let objects = match committed {
                Ok(Some(objects)) => objects,
                Ok(None) => {
                    self.delete_new_manifests(&moved).await;
                    continue;
                }
                Err(e) => {
                    self.delete_new_manifests(&moved).await;
                    return Err(e);
                }
            };
            let mut manifests: Vec<String> = removed.iter().map(|v| v.manifest_key(id)).collect();
            if kept.is_empty() {
                manifests.push(object_keys::template_record(id));
            }
            delete_objects(self.blobs(), &manifests).await;
            let old: Vec<String> = moved.iter().map(|m| m.old.clone()).collect();
            delete_objects(self.blobs(), &old).await;
            delete_objects(self.blobs(), &objects).await;
            let bytes = released_bytes(&removed, &objects);
            return Ok(Removed {
                versions: removed,
                objects: objects.len() as u64,
                bytes,
            });
        }
        Err(RegistryError::Busy)
    }

    /// Writes the manifest of every kept version whose number changes under its new
    /// number, from its manifest under the old one. On a failure, what it wrote is deleted.
    async fn write_moved_manifests(
        &self,
        id: &Uuid,
        kept: &[(u32, Version)],
    ) -> RegistryResult<Vec<Moved>> {
        let mut moved = Vec::new();
        for (before, version) in kept.iter().filter(|(n, v)| *n != v.number) {
            let was = Version {
                number: *before,
                ..version.clone()
            };
            let one = Moved {
                old: was.manifest_key(id),
                new: version.manifest_key(id),
            };
            // A manifest named by its push alone stays: reindex replays it by its commit
            // counter, whatever number it was committed at.
            if one.old == one.new {
                continue;
            }
            if let Err(e) = self.move_manifest(&one, version.number).await {
                self.delete_new_manifests(&moved).await;
                return Err(e);
            }
            moved.push(one);
        }
        Ok(moved)
    }

    /// Copies a manifest to its new number; a manifest already missing (which `admin fsck`
    /// reports) is left missing rather than blocking the removal.
    async fn move_manifest(&self, moved: &Moved, number: u32) -> RegistryResult<()> {
        let bytes = match self.blobs().read(&moved.old).await {
            Ok(bytes) => bytes,
            Err(StoreError::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let mut manifest: StoredManifest = crate::meta::decode(&moved.old, &bytes)?;
        manifest.version.number = number;
        let bytes = crate::meta::encode(&manifest);
        self.blobs().put(&moved.new, bytes.into()).await?;
        Ok(())
    }

    async fn delete_new_manifests(&self, moved: &[Moved]) {
        let new: Vec<String> = moved.iter().map(|m| m.new.clone()).collect();
        delete_objects(self.blobs(), &new).await;
    }
}

/// What a removal took away.
#[derive(Debug, Default)]
pub struct Removed {
    /// The versions removed.
    pub versions: Vec<Version>,
    /// Stored files that no version held any more, deleted with them.
    pub objects: u64,
    /// Bytes of those files.
    pub bytes: u64,
}

/// Bytes of the released `objects` (named `blobs/<file key>/<upload>`), from the sizes
/// the removed versions give their files.
fn released_bytes(removed: &[Version], objects: &[String]) -> u64 {
    let sizes: std::collections::BTreeMap<String, u64> = removed
        .iter()
        .flat_map(|v| v.files.iter().map(|f| (f.key(), f.size)))
        .collect();
    objects
        .iter()
        .filter_map(|o| o.strip_prefix("blobs/")?.rsplit_once('/'))
        .filter_map(|(key, _)| sizes.get(key))
        .sum()
}

/// The versions kept, each with its number before (renumbered densely), and removed.
fn split(template: &Template, push_ids: &BTreeSet<String>) -> (Vec<(u32, Version)>, Vec<Version>) {
    let (removed, kept): (Vec<Version>, Vec<Version>) = template
        .versions
        .iter()
        .cloned()
        .partition(|v| push_ids.contains(&v.push_id));
    let kept = kept
        .into_iter()
        .enumerate()
        .map(|(i, mut v)| {
            let before = v.number;
            v.number = i as u32;
            (before, v)
        })
        .collect();
    (kept, removed)
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::meta::embedded::EmbeddedMeta;
    use crate::registry::test_support::{push_one, registry};

    fn numbered(t: &Template) -> Vec<(u32, &str)> {
        t.versions
            .iter()
            .map(|v| (v.number, v.tag.as_str()))
            .collect()
    }

    /// Versions committed before manifests were named by push: their manifests are named
    /// by number, so removing an older version moves them, and the bucket alone still
    /// gives the same versions back.
    #[tokio::test]
    async fn removing_an_old_version_moves_manifests_named_by_number() {
        let dir = tempfile::tempdir().unwrap();
        let r = registry(dir.path());
        let id = Uuid::new_v4();
        for (tag, data) in [("a", b"one"), ("b", b"two"), ("c", b"six")] {
            push_one(&r, id, "legacy", tag, &format!("{tag}.ank"), data).await;
        }
        // Make every version look committed before the commit counter: seq 0, manifests
        // named by number.
        let mut template = r.get(&id).await.unwrap();
        for v in &mut template.versions {
            let key = v.manifest_key(&id);
            let mut manifest: StoredManifest =
                crate::meta::decode(&key, &r.blobs().read(&key).await.unwrap()).unwrap();
            r.blobs().delete(&key).await.unwrap();
            v.seq = 0;
            manifest.version.seq = 0;
            let legacy = v.manifest_key(&id);
            let bytes = crate::meta::encode(&manifest);
            r.blobs().put(&legacy, bytes.into()).await.unwrap();
        }
        transact(r.meta(), async |tx| {
            let before = template_record::load_tx(tx, r.meta(), &id).await?;
            write_template(tx, before.as_ref(), &template);
            Ok(())
        })
        .await
        .unwrap();

        let a = template.versions[0].push_id.clone();
        let removed = r.remove_versions(&id, &BTreeSet::from([a])).await.unwrap();
        assert_eq!(removed.versions.len(), 1);
        let kept = r.get(&id).await.unwrap();
        assert_eq!(numbered(&kept), [(0, "b"), (1, "c")]);
        let mut stored = r
            .blobs()
            .list(&object_keys::manifest_prefix(&id))
            .await
            .unwrap();
        stored.retain(|k| !k.ends_with("/template.json"));
        stored.sort();
        let mut wanted: Vec<String> = kept.versions.iter().map(|v| v.manifest_key(&id)).collect();
        wanted.sort();
        assert_eq!(
            stored, wanted,
            "each kept version has one manifest, under its number"
        );

        let dir2 = tempfile::tempdir().unwrap();
        let fresh = EmbeddedMeta::open(&dir2.path().join("meta.redb")).unwrap();
        crate::registry::reindex::reindex(&fresh, r.blobs())
            .await
            .unwrap();
        let rebuilt = template_record::get(&fresh, &id).await.unwrap().unwrap();
        assert_eq!(numbered(&rebuilt), [(0, "b"), (1, "c")]);
    }
}
