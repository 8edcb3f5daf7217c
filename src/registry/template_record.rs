//! How a template is stored: a small head record under [`keys::template`] and each version
//! in a record of its own under [`keys::template_version`], so that a commit writes its
//! version and the head, however many versions came before, and removing a version
//! deletes its record without rewriting the others.
//!
//! A version's record sits in a slot, a number the head assigns; the head lists the live
//! slots in version order, as runs of consecutive slots, so appending extends a run. A
//! version's user-visible number is its position in that list, derived at every load and
//! never stored, so removing one version renumbers the rest without writing them.
//!
//! Every write moves the head's `rev` on, and each version record keeps the `rev` it was
//! written at: a read outside a transaction that a write cut in two (a record missing, or
//! newer than the head) is read again. Records of the older layout (every version inline
//! in the head) are read as they are and split by their first write.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize, Serializer};
use uuid::Uuid;

use super::{RegistryError, RegistryResult};
use crate::meta::{decode, encode, keys, MetaStore, MetaStoreExt, MetaTx, MetaTxExt};
use crate::model::{FileRef, Template, Version};

/// The layout this code writes: a head without versions, each version in its own record.
/// Heads written before had no `layout` and held every version under `versions`.
pub(crate) const LAYOUT: u32 = 2;

/// Reads of one template a stream of writes may cut before a read is reported busy.
const ATTEMPTS: usize = 20;

/// Writes [`LAYOUT`] as the layout of every head this code writes.
fn current_layout<S: Serializer>(_: &u32, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u32(LAYOUT)
}

/// The head record of a template.
///
/// A head of [`LAYOUT`] has no `versions` field, which older code requires: a replica still
/// running it refuses the record as corrupt instead of taking the template for empty.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Head {
    #[serde(default, serialize_with = "current_layout")]
    layout: u32,
    id: Uuid,
    name: String,
    arch: String,
    created: u64,
    last_push: u64,
    /// Moves on at every write of the template.
    #[serde(default)]
    rev: u64,
    /// The live versions' slots in version order, as runs `[first, end)`.
    #[serde(default)]
    slots: Vec<[u64; 2]>,
    /// The versions of a head of the older layout, which kept them inline.
    #[serde(rename = "versions", default, skip_serializing)]
    legacy_versions: Vec<Version>,
}

/// One version as stored: everything but its number, which is its position.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct VersionRecord {
    /// The head's `rev` this record was written at.
    rev: u64,
    tag: String,
    description: String,
    files: Vec<FileRef>,
    config: serde_json::Value,
    created: u64,
    push_id: String,
    #[serde(default)]
    seq: u64,
}

impl VersionRecord {
    fn of(v: &Version, rev: u64) -> Self {
        Self {
            rev,
            tag: v.tag.clone(),
            description: v.description.clone(),
            files: v.files.clone(),
            config: v.config.clone(),
            created: v.created,
            push_id: v.push_id.clone(),
            seq: v.seq,
        }
    }

    fn into_version(self, number: u32) -> Version {
        Version {
            number,
            tag: self.tag,
            description: self.description,
            files: self.files,
            config: self.config,
            created: self.created,
            push_id: self.push_id,
            seq: self.seq,
        }
    }
}

/// A template as read, with where each version is stored, for [`save`] to write only
/// what changed.
#[derive(Clone, Debug, PartialEq)]
pub struct Loaded {
    /// The template, numbers by position.
    pub template: Template,
    /// Each version's slot, in order; empty for a head of the older layout.
    slots: Vec<u64>,
    rev: u64,
    legacy: bool,
}

impl Loaded {
    /// Whether the head holds every version inline (the layout before [`LAYOUT`]).
    pub fn is_legacy(&self) -> bool {
        self.legacy
    }

    /// The live versions' slots, in order.
    pub(crate) fn slots(&self) -> &[u64] {
        &self.slots
    }
}

fn expand(runs: &[[u64; 2]]) -> Vec<u64> {
    runs.iter().flat_map(|[a, b]| *a..*b).collect()
}

fn compress(slots: &[u64]) -> Vec<[u64; 2]> {
    let mut runs: Vec<[u64; 2]> = Vec::new();
    for &s in slots {
        match runs.last_mut() {
            Some(run) if run[1] == s => run[1] = s + 1,
            _ => runs.push([s, s + 1]),
        }
    }
    runs
}

/// A template read in whole: the head's versions, or its records when each is there and
/// no newer than the head; `None` for a read a write cut in two.
fn assemble(mut head: Head, values: Vec<Option<Vec<u8>>>) -> RegistryResult<Option<Loaded>> {
    let legacy = head.layout < LAYOUT;
    let slots = match legacy {
        true => Vec::new(),
        false => expand(&head.slots),
    };
    let mut versions = std::mem::take(&mut head.legacy_versions);
    for (slot, value) in slots.iter().zip(values) {
        let Some(bytes) = value else {
            return Ok(None);
        };
        let record: VersionRecord = decode(&keys::template_version(&head.id, *slot), &bytes)?;
        if record.rev > head.rev {
            return Ok(None);
        }
        versions.push(record.into_version(0));
    }
    for (i, v) in versions.iter_mut().enumerate() {
        v.number = i as u32;
    }
    let template = Template {
        id: head.id,
        name: head.name,
        arch: head.arch,
        created: head.created,
        last_push: head.last_push,
        versions,
    };
    Ok(Some(Loaded {
        template,
        slots,
        rev: head.rev,
        legacy,
    }))
}

fn version_keys(head: &Head) -> Vec<String> {
    match head.layout < LAYOUT {
        true => Vec::new(),
        false => expand(&head.slots)
            .iter()
            .map(|s| keys::template_version(&head.id, *s))
            .collect(),
    }
}

/// Reads template `id` outside any transaction, whole.
pub async fn load(meta: &dyn MetaStore, id: &Uuid) -> RegistryResult<Option<Loaded>> {
    for _ in 0..ATTEMPTS {
        let Some(head) = meta.get_json::<Head>(&keys::template(id)).await? else {
            return Ok(None);
        };
        let wanted = version_keys(&head);
        let values = read_many(meta, &wanted).await?;
        if let Some(loaded) = assemble(head, values)? {
            return Ok(Some(loaded));
        }
    }
    Err(RegistryError::Busy)
}

/// Reads the template `id` outside any transaction; the template alone.
pub async fn get(meta: &dyn MetaStore, id: &Uuid) -> RegistryResult<Option<Template>> {
    Ok(load(meta, id).await?.map(|l| l.template))
}

/// Reads several templates outside any transaction, in the order asked; `None` for an id
/// without a template.
pub async fn load_many(meta: &dyn MetaStore, ids: &[Uuid]) -> RegistryResult<Vec<Option<Loaded>>> {
    let heads: Vec<String> = ids.iter().map(keys::template).collect();
    let heads = meta.get_many_json::<Head>(&heads).await?;
    let wanted: Vec<String> = heads.iter().flatten().flat_map(version_keys).collect();
    let mut values = read_many(meta, &wanted).await?.into_iter();
    let mut out = Vec::with_capacity(ids.len());
    for (id, head) in ids.iter().zip(heads) {
        let Some(head) = head else {
            out.push(None);
            continue;
        };
        let mine: Vec<Option<Vec<u8>>> = values.by_ref().take(version_keys(&head).len()).collect();
        match assemble(head, mine)? {
            Some(loaded) => out.push(Some(loaded)),
            None => out.push(load(meta, id).await?),
        }
    }
    Ok(out)
}

/// Whether template `id` exists.
pub async fn exists(meta: &dyn MetaStore, id: &Uuid) -> RegistryResult<bool> {
    let found = meta.get_many(&[keys::template(id)]).await?;
    Ok(found.into_iter().next().flatten().is_some())
}

async fn read_many(
    meta: &dyn MetaStore,
    wanted: &[String],
) -> RegistryResult<Vec<Option<Vec<u8>>>> {
    let mut values = Vec::with_capacity(wanted.len());
    for batch in wanted.chunks(READ_BATCH) {
        values.extend(meta.get_many(batch).await?);
    }
    Ok(values)
}

/// Keys read per round trip.
const READ_BATCH: usize = 512;

/// Reads template `id` within a transaction, whole: the head and every version record are
/// watched. `meta` serves a read that a concurrent write cut in two; the transaction then
/// cannot commit (the head it watched moved) and runs again.
pub async fn load_tx(
    tx: &mut Box<dyn MetaTx>,
    meta: &dyn MetaStore,
    id: &Uuid,
) -> RegistryResult<Option<Loaded>> {
    let Some(head) = tx.get_json::<Head>(&keys::template(id)).await? else {
        return Ok(None);
    };
    let wanted = version_keys(&head);
    let values = tx.get_many(&wanted).await?;
    match assemble(head, values)? {
        Some(loaded) => Ok(Some(loaded)),
        None => load(meta, id).await,
    }
}

/// Buffers the records of `after`, writing only what differs from `before` (as read in
/// this transaction, `None` for a new template): the head, the records of versions added
/// or changed, the deletion of those removed. A head of the older layout is split.
/// `last_push` is written as [`Template::newest_push`] whatever the caller set. Returns
/// the slot of each version of `after`.
pub fn save(tx: &mut Box<dyn MetaTx>, before: Option<&Loaded>, after: &Template) -> Vec<u64> {
    let rev = before.map_or(0, |b| b.rev) + 1;
    let mut held: HashMap<&str, (u64, &Version)> = HashMap::new();
    if let Some(b) = before.filter(|b| !b.legacy) {
        for (slot, v) in b.slots.iter().zip(&b.template.versions) {
            held.insert(v.push_id.as_str(), (*slot, v));
        }
    }
    let mut next = held.values().map(|(s, _)| s + 1).max().unwrap_or(0);
    let mut slots = Vec::with_capacity(after.versions.len());
    for v in &after.versions {
        let slot = match held.remove(v.push_id.as_str()) {
            Some((slot, old)) if same_record(old, v) => slot,
            Some((slot, _)) => {
                tx.put_json(
                    &keys::template_version(&after.id, slot),
                    &VersionRecord::of(v, rev),
                );
                slot
            }
            None => {
                let slot = next;
                next += 1;
                tx.put_json(
                    &keys::template_version(&after.id, slot),
                    &VersionRecord::of(v, rev),
                );
                slot
            }
        };
        next = next.max(slot + 1);
        slots.push(slot);
    }
    for (slot, _) in held.into_values() {
        tx.delete(&keys::template_version(&after.id, slot));
    }
    let head = Head {
        layout: LAYOUT,
        id: after.id,
        name: after.name.clone(),
        arch: after.arch.clone(),
        created: after.created,
        last_push: after.newest_push(),
        rev,
        slots: compress(&slots),
        legacy_versions: Vec::new(),
    };
    tx.put(&keys::template(&after.id), encode(&head));
    slots
}

/// Whether two versions store alike (numbers are positions, not stored).
fn same_record(a: &Version, b: &Version) -> bool {
    VersionRecord::of(a, 0) == VersionRecord::of(b, 0)
}

/// The records of `template` as [`save`] writes them for a new template, as key and
/// value, for a bulk rebuild (`admin reindex`).
pub fn records(template: &Template) -> Vec<(String, Vec<u8>)> {
    let slots: Vec<u64> = (0..template.versions.len() as u64).collect();
    let head = Head {
        layout: LAYOUT,
        id: template.id,
        name: template.name.clone(),
        arch: template.arch.clone(),
        created: template.created,
        last_push: template.newest_push(),
        rev: 1,
        slots: compress(&slots),
        legacy_versions: Vec::new(),
    };
    let mut out = vec![(keys::template(&template.id), encode(&head))];
    for (slot, v) in slots.iter().zip(&template.versions) {
        out.push((
            keys::template_version(&template.id, *slot),
            encode(&VersionRecord::of(v, 1)),
        ));
    }
    out
}

/// Buffers the deletion of every record of the template `before` as read.
pub fn delete(tx: &mut Box<dyn MetaTx>, before: &Loaded) {
    for slot in &before.slots {
        tx.delete(&keys::template_version(&before.template.id, *slot));
    }
    tx.delete(&keys::template(&before.template.id));
}

/// Version records that no head lists: left by `admin reindex --force` over an index whose
/// templates had more slots, or planted. By template, the slots.
pub(crate) struct StrayVersions(pub BTreeMap<Uuid, Vec<u64>>);

impl StrayVersions {
    /// Finds them: walks every version key (maintenance only, see
    /// [`MetaStore::keys_with_prefix`]), reads the records, then the heads that name them,
    /// then the records again. A record is stray when the head does not list it and it
    /// held the same bytes before and after: a record removed meanwhile is gone, and one a
    /// commit writes meanwhile is new (each names its own push), so neither is taken.
    pub(crate) async fn find(meta: &dyn MetaStore) -> RegistryResult<Self> {
        let mut by_template: BTreeMap<Uuid, Vec<u64>> = BTreeMap::new();
        for key in meta.keys_with_prefix(keys::TEMPLATE_VERSIONS).await? {
            if let Some((id, slot)) = keys::parse_template_version(&key) {
                by_template.entry(id).or_default().push(slot);
            }
        }
        let candidates: Vec<(Uuid, u64)> = by_template
            .into_iter()
            .flat_map(|(id, slots)| slots.into_iter().map(move |s| (id, s)))
            .collect();
        let record_keys: Vec<String> = candidates
            .iter()
            .map(|(id, slot)| keys::template_version(id, *slot))
            .collect();
        let first = read_many(meta, &record_keys).await?;
        let mut ids: Vec<Uuid> = candidates.iter().map(|(id, _)| *id).collect();
        ids.dedup();
        let head_keys: Vec<String> = ids.iter().map(keys::template).collect();
        let listed: HashMap<Uuid, Vec<u64>> = ids
            .iter()
            .zip(meta.get_many_json::<Head>(&head_keys).await?)
            .map(|(id, head)| {
                let slots = match head {
                    Some(h) if h.layout >= LAYOUT => expand(&h.slots),
                    _ => Vec::new(),
                };
                (*id, slots)
            })
            .collect();
        let again = read_many(meta, &record_keys).await?;
        let mut stray: BTreeMap<Uuid, Vec<u64>> = BTreeMap::new();
        for (((id, slot), before), after) in candidates.into_iter().zip(first).zip(again) {
            let unlisted = !listed.get(&id).is_some_and(|l| l.contains(&slot));
            if unlisted && before.is_some() && before == after {
                stray.entry(id).or_default().push(slot);
            }
        }
        Ok(Self(stray))
    }

    /// How many version records are stray.
    pub(crate) fn len(&self) -> usize {
        self.0.values().map(Vec::len).sum()
    }

    /// Deletes them, each template's in one transaction that reads its head again, so
    /// that a slot a commit listed meanwhile is kept.
    pub(crate) async fn remove(&self, meta: &dyn MetaStore) -> RegistryResult<()> {
        for (id, slots) in &self.0 {
            super::transact(meta, async |tx| {
                let listed = match tx.get_json::<Head>(&keys::template(id)).await? {
                    Some(h) if h.layout >= LAYOUT => expand(&h.slots),
                    _ => Vec::new(),
                };
                for slot in slots.iter().filter(|s| !listed.contains(s)) {
                    tx.delete(&keys::template_version(id, *slot));
                }
                Ok(())
            })
            .await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::meta::embedded::EmbeddedMeta;
    use crate::model::TemplateSummary;
    use crate::registry::fsck::{FsckOptions, ProblemKind};
    use crate::registry::sweep::GcOptions;
    use crate::registry::templates::RevertTarget;
    use crate::registry::test_support::{push_one, registry, ByteCountingMeta};
    use crate::registry::{summary_record, transact, Registry};
    use crate::store::fs::FsStore;

    fn counting(dir: &std::path::Path) -> (Registry, Arc<ByteCountingMeta>) {
        let meta = Arc::new(ByteCountingMeta::new(
            EmbeddedMeta::open(&dir.join("meta.redb")).unwrap(),
        ));
        let blobs = Arc::new(FsStore::open(dir, 5 << 20).unwrap());
        (Registry::new(meta.clone(), blobs, 5 << 20, 1), meta)
    }

    async fn put_raw(r: &Registry, key: &str, value: Vec<u8>) {
        transact(r.meta(), async |tx| {
            tx.put(key, value.clone());
            Ok(())
        })
        .await
        .unwrap();
    }

    /// Bytes a commit writes under the records of `kinds`, by commit.
    fn per_commit(written: &[HashMap<&str, u64>], kinds: &[&str]) -> Vec<u64> {
        let total = |w: &HashMap<&str, u64>| kinds.iter().map(|k| w[k]).sum::<u64>();
        written
            .windows(2)
            .map(|w| total(&w[1]) - total(&w[0]))
            .collect()
    }

    /// Checks that no commit from the 2nd on wrote much more than the 2nd; prints them.
    fn assert_flat(what: &str, bytes: &[u64]) {
        let (second, last) = (bytes[1], bytes[bytes.len() - 1]);
        let most = bytes[1..].iter().copied().max().unwrap_or(0);
        println!(
            "{what} written by commit 1: {} B, 2: {second} B, {}: {last} B, most from 2 on: {most} B",
            bytes[0],
            bytes.len()
        );
        for (i, b) in bytes.iter().enumerate().skip(1) {
            assert!(
                b * 2 <= second * 3 + 2 * 400,
                "{what}: commit {} wrote {b} B, commit 2 {second} B",
                i + 1
            );
        }
    }

    #[tokio::test]
    async fn a_commit_writes_as_much_at_version_200_as_at_version_2() {
        let dir = tempfile::tempdir().unwrap();
        let (r, meta) = counting(dir.path());
        let id = Uuid::new_v4();
        let kinds = ["tpl", "tplv", "sum", "sumv"];
        let snapshot =
            || -> HashMap<&str, u64> { kinds.iter().map(|k| (*k, meta.written_to(k))).collect() };
        let mut written = vec![snapshot()];
        for n in 1..=200 {
            let tag = format!("v{n}");
            let data = format!("layer {n}");
            push_one(&r, id, "flat", &tag, &format!("{n}.ank"), data.as_bytes()).await;
            written.push(snapshot());
        }
        assert_flat("template records", &per_commit(&written, &["tpl", "tplv"]));
        assert_flat("summary records", &per_commit(&written, &["sum", "sumv"]));
        let t = r.get(&id).await.unwrap();
        assert_eq!(t.versions.len(), 200);
        assert!(t
            .versions
            .iter()
            .enumerate()
            .all(|(i, v)| v.number == i as u32 && v.tag == format!("v{}", i + 1)));
        let listed = r.list().await.unwrap();
        assert_eq!(listed[0].summary, TemplateSummary::from(&t));
        // What the whole-record layout wrote for this commit, for comparison.
        println!(
            "the whole template record at version 200: {} B, the whole summary: {} B",
            encode(&t).len(),
            encode(&TemplateSummary::from(&t)).len()
        );
    }

    /// A template as the code before this layout stored it: every version inline.
    async fn make_legacy(r: &Registry, id: &Uuid) -> Template {
        let loaded = load(r.meta(), id).await.unwrap().unwrap();
        let old = serde_json::to_vec(&loaded.template).unwrap();
        transact(r.meta(), async |tx| {
            for slot in loaded.slots() {
                tx.delete(&keys::template_version(id, *slot));
            }
            tx.put(&keys::template(id), old.clone());
            Ok(())
        })
        .await
        .unwrap();
        loaded.template
    }

    #[tokio::test]
    async fn a_head_of_the_older_layout_is_read_as_it_is_and_split_by_its_next_write() {
        let dir = tempfile::tempdir().unwrap();
        let r = registry(dir.path());
        let id = Uuid::new_v4();
        for (tag, data) in [("a", b"one"), ("b", b"two"), ("c", b"six")] {
            push_one(&r, id, "legacy", tag, &format!("{tag}.ank"), data).await;
        }
        let summary_before = summary_record::get(r.meta(), &id).await.unwrap();
        let template = make_legacy(&r, &id).await;
        let read = load(r.meta(), &id).await.unwrap().unwrap();
        assert!(read.is_legacy());
        assert_eq!(read.template, template);
        assert_eq!(r.get(&id).await.unwrap(), template);
        assert_eq!(
            r.meta()
                .keys_with_prefix(keys::TEMPLATE_VERSIONS)
                .await
                .unwrap(),
            Vec::<String>::new()
        );

        // The next write splits it; what it holds is what it held, but for the change.
        r.set_arch(&id, "amd64").await.unwrap();
        let split = load(r.meta(), &id).await.unwrap().unwrap();
        assert!(!split.is_legacy());
        assert_eq!(
            split.template,
            Template {
                arch: "amd64".into(),
                ..template.clone()
            }
        );
        assert_eq!(split.slots(), [0, 1, 2]);
        let summary_after = summary_record::get(r.meta(), &id).await.unwrap();
        assert_eq!(
            summary_after,
            summary_before.map(|s| TemplateSummary {
                arch: "amd64".into(),
                ..s
            })
        );
        // A replica of the older code refuses the new head rather than read it empty.
        let head = r
            .meta()
            .get_many(&[keys::template(&id)])
            .await
            .unwrap()
            .remove(0)
            .unwrap();
        assert!(serde_json::from_slice::<Template>(&head).is_err());

        // Reverted and pushed on as any template.
        make_legacy(&r, &id).await;
        r.revert(&id, RevertTarget::Latest).await.unwrap();
        push_one(&r, id, "legacy", "d", "d.ank", b"ten").await;
        let t = r.get(&id).await.unwrap();
        let tags: Vec<(u32, &str)> = t
            .versions
            .iter()
            .map(|v| (v.number, v.tag.as_str()))
            .collect();
        assert_eq!(tags, [(0, "a"), (1, "b"), (2, "d")]);
        let fsck = r
            .fsck(FsckOptions {
                digests: true,
                session_ttl: 3600,
            })
            .await
            .unwrap();
        assert!(fsck.clean, "{fsck}");
    }

    #[tokio::test]
    async fn removing_a_version_deletes_its_record_and_writes_no_other() {
        let dir = tempfile::tempdir().unwrap();
        let (r, meta) = counting(dir.path());
        let id = Uuid::new_v4();
        for n in 0..5 {
            push_one(&r, id, "prune", &format!("t{n}"), &format!("{n}.ank"), &[n]).await;
        }
        let before = load(r.meta(), &id).await.unwrap().unwrap();
        let second = before.template.versions[1].push_id.clone();
        let written = meta.written_to("tplv");
        r.remove_versions(&id, &[second].into()).await.unwrap();
        // One deletion: the key of the removed record, nothing rewritten.
        assert_eq!(
            meta.written_to("tplv") - written,
            keys::template_version(&id, 1).len() as u64
        );
        let after = load(r.meta(), &id).await.unwrap().unwrap();
        assert_eq!(after.slots(), [0, 2, 3, 4]);
        let numbered: Vec<(u32, &str)> = after
            .template
            .versions
            .iter()
            .map(|v| (v.number, v.tag.as_str()))
            .collect();
        assert_eq!(numbered, [(0, "t0"), (1, "t2"), (2, "t3"), (3, "t4")]);
        assert_eq!(
            r.get(&id)
                .await
                .unwrap()
                .find_version(None, Some(1))
                .unwrap()
                .tag,
            "t2"
        );
    }

    #[tokio::test]
    async fn a_read_cut_by_a_write_is_not_taken_for_a_template() {
        let dir = tempfile::tempdir().unwrap();
        let r = registry(dir.path());
        let id = Uuid::new_v4();
        push_one(&r, id, "torn", "a", "a.ank", b"one").await;
        push_one(&r, id, "torn", "b", "b.ank", b"two").await;
        // A record newer than its head: as if a revert and a commit reused slot 1 between
        // a reader's two reads.
        let mut newer = r
            .meta()
            .get_json::<serde_json::Value>(&keys::template_version(&id, 1))
            .await
            .unwrap()
            .unwrap();
        newer["rev"] = 1000.into();
        put_raw(&r, &keys::template_version(&id, 1), encode(&newer)).await;
        assert!(matches!(
            load(r.meta(), &id).await,
            Err(RegistryError::Busy)
        ));
        // A record missing, as after a revert between the two reads.
        transact(r.meta(), async |tx| {
            tx.delete(&keys::template_version(&id, 1));
            Ok(())
        })
        .await
        .unwrap();
        assert!(matches!(
            load(r.meta(), &id).await,
            Err(RegistryError::Busy)
        ));
    }

    #[tokio::test]
    async fn fsck_reports_a_stray_version_record_and_gc_removes_it() {
        let dir = tempfile::tempdir().unwrap();
        let r = registry(dir.path());
        let id = Uuid::new_v4();
        push_one(&r, id, "stray", "a", "a.ank", b"one").await;
        push_one(&r, id, "stray", "b", "b.ank", b"two").await;
        r.revert(&id, RevertTarget::Latest).await.unwrap();
        let options = FsckOptions {
            digests: false,
            session_ttl: 3600,
        };
        let clean = r.fsck(options).await.unwrap();
        assert!(clean.clean, "{clean}");

        let listed = r
            .meta()
            .get_many(&[keys::template_version(&id, 0)])
            .await
            .unwrap()
            .remove(0)
            .unwrap();
        let gone = Uuid::new_v4();
        put_raw(&r, &keys::template_version(&id, 7), listed.clone()).await;
        put_raw(&r, &keys::template_version(&gone, 0), listed).await;
        let report = r.fsck(options).await.unwrap();
        let stray: Vec<&str> = report
            .problems
            .iter()
            .filter(|p| p.kind == ProblemKind::StrayVersionRecord)
            .map(|p| p.subject.as_str())
            .collect();
        let mut want = vec![keys::template(&id), keys::template(&gone)];
        want.sort();
        assert_eq!(stray, want);

        // A dry run counts them (a real run also counts in the process-wide metrics, which
        // another test reads); the removal is the one a real run makes.
        let gc = GcOptions {
            grace: std::time::Duration::ZERO,
            session_ttl: std::time::Duration::from_secs(3600),
            dry_run: true,
            abort_uploads_after: None,
        };
        assert_eq!(r.collect(gc).await.unwrap().version_records, 2);
        let stray = StrayVersions::find(r.meta()).await.unwrap();
        assert_eq!(stray.len(), 2);
        stray.remove(r.meta()).await.unwrap();
        assert!(r.fsck(options).await.unwrap().clean);
        assert_eq!(r.get(&id).await.unwrap().versions.len(), 1);
    }

    #[tokio::test]
    async fn a_reindex_over_the_live_index_leaves_no_record_its_head_does_not_list() {
        let dir = tempfile::tempdir().unwrap();
        let r = registry(dir.path());
        let id = Uuid::new_v4();
        for n in 0..12u8 {
            push_one(&r, id, "over", &format!("t{n}"), &format!("{n}.ank"), &[n]).await;
        }
        let first: std::collections::BTreeSet<String> = r.get(&id).await.unwrap().versions[..3]
            .iter()
            .map(|v| v.push_id.clone())
            .collect();
        r.remove_versions(&id, &first).await.unwrap();
        let live = r.get(&id).await.unwrap();
        assert_eq!(load(r.meta(), &id).await.unwrap().unwrap().slots()[0], 3);

        crate::registry::reindex::reindex(r.meta(), r.blobs())
            .await
            .unwrap();
        let rebuilt = load(r.meta(), &id).await.unwrap().unwrap();
        assert_eq!(rebuilt.template, live);
        assert_eq!(rebuilt.slots(), (0..9).collect::<Vec<u64>>());
        let options = FsckOptions {
            digests: false,
            session_ttl: 3600,
        };
        let report = r.fsck(options).await.unwrap();
        assert!(report.clean, "{report}");
        let mut left = r
            .meta()
            .keys_with_prefix(keys::SUMMARY_BLOCKS)
            .await
            .unwrap();
        left.sort();
        assert_eq!(left, [keys::summary_block(&id, 0)]);
        assert_eq!(
            r.list().await.unwrap()[0].summary,
            TemplateSummary::from(&live)
        );
    }
}
