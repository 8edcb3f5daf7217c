//! Pull bookkeeping kept off the request path.
//!
//! A pull is a read: the manifest GET only notes the time in this replica's memory, and a
//! background task writes what was noted every `--pull-flush-interval` (default
//! [`PULL_FLUSH_INTERVAL`]; and once more on shutdown) in one transaction. Writes merge by maximum, so replicas flushing in any order
//! never move a time backwards. A replica killed outright loses at most one interval of pull
//! times; nothing else depends on them being exact (retention counts a version as used when
//! it was pulled *or* pushed within its window, and windows are days, not seconds).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use uuid::Uuid;

use super::{transact, Registry, RegistryResult};
use crate::meta::{keys, MetaStoreExt, MetaTxExt};

/// How often a replica writes the pulls it noted, unless configured otherwise.
pub const PULL_FLUSH_INTERVAL: Duration = Duration::from_secs(5);

/// Templates written per transaction of a flush.
const FLUSH_BATCH: usize = 128;

/// Epoch seconds of each tag's latest pull, by tag, as stored per template.
pub type TagPulls = BTreeMap<String, u64>;

/// The pulls of one template noted since the last flush.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Noted {
    /// The latest pull of any tag.
    at: u64,
    /// The latest pull of each tag.
    tags: HashMap<String, u64>,
}

impl Noted {
    fn merge(&mut self, other: Noted) {
        self.at = self.at.max(other.at);
        for (tag, at) in other.tags {
            let slot = self.tags.entry(tag).or_default();
            *slot = (*slot).max(at);
        }
    }
}

/// Pulls noted in memory and not yet written.
#[derive(Debug, Default)]
pub struct PullLog {
    noted: Mutex<HashMap<Uuid, Noted>>,
}

impl PullLog {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Noted>> {
        // A panic while holding the lock leaves a map that is still valid: keep using it.
        self.noted.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes a pull of `tag` of template `id` at `at` (epoch seconds).
    pub fn note(&self, id: Uuid, tag: &str, at: u64) {
        let mut noted = self.lock();
        let entry = noted.entry(id).or_default();
        entry.at = entry.at.max(at);
        let slot = entry.tags.entry(tag.to_string()).or_default();
        *slot = (*slot).max(at);
    }

    fn take(&self) -> HashMap<Uuid, Noted> {
        std::mem::take(&mut *self.lock())
    }

    /// Puts back pulls whose write failed, merged with any noted meanwhile.
    fn restore(&self, unwritten: impl IntoIterator<Item = (Uuid, Noted)>) {
        let mut noted = self.lock();
        for (id, n) in unwritten {
            noted.entry(id).or_default().merge(n);
        }
    }
}

impl Registry {
    /// Notes a pull of a version; written by the next [`Registry::flush_pulls`].
    pub fn note_pull(&self, id: Uuid, tag: &str) {
        self.pulls.note(id, tag, crate::model::now());
    }

    /// Writes the pulls noted so far, merging each time with the stored one by maximum;
    /// returns how many templates were written. Pulls of templates deleted meanwhile, and
    /// of tags no longer there, are dropped. On a failure the unwritten pulls are kept for
    /// the next flush.
    pub async fn flush_pulls(&self) -> RegistryResult<usize> {
        let noted: Vec<(Uuid, Noted)> = self.pulls.take().into_iter().collect();
        let mut written = 0;
        let mut batches = noted.chunks(FLUSH_BATCH);
        while let Some(batch) = batches.next() {
            if let Err(e) = self.write_pulls(batch).await {
                self.pulls
                    .restore(batch.iter().cloned().chain(batches.flatten().cloned()));
                return Err(e);
            }
            written += batch.len();
        }
        Ok(written)
    }

    async fn write_pulls(&self, batch: &[(Uuid, Noted)]) -> RegistryResult<()> {
        transact(self.meta(), async |tx| {
            for (id, noted) in batch {
                // Reading the summary makes a concurrent delete or revert conflict with
                // this write, so no pull record outlives its template or tag.
                let Some(summary) = super::summary_record::load_tx(tx, id).await? else {
                    continue;
                };
                let stored: u64 = tx.get_json(&keys::last_pull(id)).await?.unwrap_or(0);
                tx.put_json(&keys::last_pull(id), &stored.max(noted.at));
                let mut tags: TagPulls =
                    tx.get_json(&keys::tag_pulls(id)).await?.unwrap_or_default();
                for (tag, at) in &noted.tags {
                    let slot = tags.entry(tag.clone()).or_default();
                    *slot = (*slot).max(*at);
                }
                if let Some(versions) = &summary.version_list {
                    tags.retain(|tag, _| versions.iter().any(|v| &v.tag == tag));
                }
                tx.put_json(&keys::tag_pulls(id), &tags);
            }
            Ok(())
        })
        .await
    }

    /// The latest pull of each tag of a template, as last flushed.
    pub async fn tag_pulls(&self, id: &Uuid) -> RegistryResult<TagPulls> {
        let stored = self
            .meta()
            .get_json::<TagPulls>(&keys::tag_pulls(id))
            .await?;
        Ok(stored.unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use async_trait::async_trait;

    use super::*;
    use crate::meta::embedded::EmbeddedMeta;
    use crate::meta::{MetaResult, MetaStore, MetaTx};
    use crate::registry::test_support::{push_one, registry};
    use crate::store::fs::FsStore;

    /// The embedded store, counting the transactions begun (every metadata write is one).
    struct CountingMeta(EmbeddedMeta, AtomicUsize);

    #[async_trait]
    impl MetaStore for CountingMeta {
        async fn begin(&self) -> MetaResult<Box<dyn MetaTx>> {
            self.1.fetch_add(1, Ordering::SeqCst);
            self.0.begin().await
        }
        async fn get_many(&self, keys: &[String]) -> MetaResult<Vec<Option<Vec<u8>>>> {
            self.0.get_many(keys).await
        }
        async fn members(&self, set: &str) -> MetaResult<Vec<String>> {
            self.0.members(set).await
        }
        async fn count(&self, set: &str) -> MetaResult<u64> {
            self.0.count(set).await
        }
        async fn keys_with_prefix(&self, prefix: &str) -> MetaResult<Vec<String>> {
            self.0.keys_with_prefix(prefix).await
        }
        async fn ping(&self) -> MetaResult<()> {
            self.0.ping().await
        }
        fn describe(&self) -> String {
            self.0.describe()
        }
    }

    async fn last_pull(r: &Registry) -> u64 {
        r.list().await.unwrap()[0].last_pull
    }

    #[tokio::test]
    async fn a_pull_writes_nothing_until_the_flush_writes_it() {
        let dir = tempfile::tempdir().unwrap();
        let meta = Arc::new(CountingMeta(
            EmbeddedMeta::open(&dir.path().join("meta.redb")).unwrap(),
            AtomicUsize::new(0),
        ));
        let blobs = Arc::new(FsStore::open(dir.path(), 5 << 20).unwrap());
        let r = Registry::new(meta.clone(), blobs, 5 << 20, 1);
        let id = Uuid::new_v4();
        push_one(&r, id, "pulled", "v1", "v1.ank", b"one").await;
        push_one(&r, id, "pulled", "v2", "v2.ank", b"two").await;

        let writes = meta.1.load(Ordering::SeqCst);
        for tag in ["v1", "v2", "v1"] {
            r.manifest(&id.to_string(), Some(tag), None, true)
                .await
                .unwrap();
        }
        r.manifest("pulled", None, None, false).await.unwrap();
        assert_eq!(
            meta.1.load(Ordering::SeqCst),
            writes,
            "a manifest GET began a metadata transaction"
        );
        assert_eq!(last_pull(&r).await, 0, "written before the flush");

        let before = crate::model::now();
        assert_eq!(r.flush_pulls().await.unwrap(), 1);
        assert_eq!(
            meta.1.load(Ordering::SeqCst),
            writes + 1,
            "one write a flush"
        );
        assert!(last_pull(&r).await >= before);
        let tags = r.tag_pulls(&id).await.unwrap();
        assert_eq!(tags.keys().collect::<Vec<_>>(), ["v1", "v2"]);
        assert!(tags.values().all(|at| *at >= before));
        // Nothing noted: a flush writes nothing.
        assert_eq!(r.flush_pulls().await.unwrap(), 0);
        assert_eq!(meta.1.load(Ordering::SeqCst), writes + 1);
    }

    #[tokio::test]
    async fn flushes_never_move_a_time_backwards_and_drop_what_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let r = registry(dir.path());
        let id = Uuid::new_v4();
        push_one(&r, id, "pulled", "v1", "v1.ank", b"one").await;
        push_one(&r, id, "pulled", "v2", "v2.ank", b"two").await;

        // Another replica flushed a later pull first; this one's earlier pull must not win.
        r.pulls.note(id, "v1", 2_000);
        r.flush_pulls().await.unwrap();
        r.pulls.note(id, "v1", 1_000);
        r.pulls.note(id, "v2", 1_500);
        r.pulls.note(id, "gone", 1_500);
        r.flush_pulls().await.unwrap();
        assert_eq!(last_pull(&r).await, 2_000);
        let tags = r.tag_pulls(&id).await.unwrap();
        assert_eq!(
            tags,
            TagPulls::from([("v1".into(), 2_000), ("v2".into(), 1_500)])
        );

        // A pull noted before its template was deleted writes nothing after.
        r.pulls.note(id, "v1", 3_000);
        r.delete_template(&id).await.unwrap();
        r.flush_pulls().await.unwrap();
        let left = r
            .meta()
            .get_many(&[keys::last_pull(&id), keys::tag_pulls(&id)])
            .await
            .unwrap();
        assert_eq!(left, [None, None]);
    }
}
