//! `vmreg admin reindex`: rebuilds the metadata index from the manifests in the blob store.
//!
//! The bucket is the durable truth: every committed version wrote an immutable manifest
//! (`manifests/<id>/v<number>-<push>.json`) and every template a record beside them
//! (`manifests/<id>/template.json`). From these alone the templates, their summaries, the
//! name index and the file records with their reference counts are written again, so a
//! lost or flushed Redis costs nothing but this command's run time. API keys, permission
//! groups and the sealed session signing secret come back from `identities/` (see
//! [`crate::auth::durable`]).

use std::collections::{BTreeMap, HashMap};

use futures_util::{StreamExt, TryStreamExt};
use uuid::Uuid;

use crate::config::Config;
use crate::meta::{self, MetaStore};
use crate::model::{FileRecord, StoredManifest, StoredTemplate, Template, Version};
use crate::store::BlobStore;

/// Manifests read at once.
const READ_CONCURRENCY: usize = 16;
/// Records written per transaction.
const WRITE_BATCH: usize = 256;

/// What a reindex found and wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReindexReport {
    /// Templates written.
    pub templates: usize,
    /// Versions written, over all templates.
    pub versions: usize,
    /// File records written.
    pub files: usize,
    /// Things that could not be taken as they were (each also kept out of the index or
    /// repaired as described).
    pub warnings: Vec<String>,
}

impl std::fmt::Display for ReindexReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "reindexed {} templates, {} versions, {} files ({} warnings)",
            self.templates,
            self.versions,
            self.files,
            self.warnings.len()
        )
    }
}

/// Rebuilds the metadata index from the blob store's manifests; returns the exit code.
/// Without `force` it refuses an index that lists templates: rebuilding under a running
/// registry would race its pushes and reverts (stop every replica, or run it on an empty
/// index as after a lost Redis).
pub fn run_cli(config: Config, force: bool) -> i32 {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vmreg admin reindex: cannot start the runtime: {e}");
            return 1;
        }
    };
    runtime.block_on(async {
        let (meta, blobs) = match crate::registry::backends::open(&config).await {
            Ok(stores) => stores,
            Err(e) => {
                eprintln!(
                    "vmreg admin reindex: {}",
                    crate::registry::admin::open_failure(&e)
                );
                return 1;
            }
        };
        if !force {
            match meta.members(crate::meta::keys::TEMPLATES).await {
                Ok(live) if !live.is_empty() => {
                    eprintln!(
                        "vmreg admin reindex: the index is live ({} templates); stop every replica and rerun with --force to rebuild over it",
                        live.len()
                    );
                    return 1;
                }
                Ok(_) => {}
                Err(e) => {
                    eprintln!("vmreg admin reindex: {e}");
                    return 1;
                }
            }
        }
        match reindex(meta.as_ref(), blobs.as_ref()).await {
            Ok(report) => {
                for w in &report.warnings {
                    eprintln!("warning: {w}");
                }
                println!("{report}");
            }
            Err(e) => {
                eprintln!("vmreg admin reindex: {e}");
                return 1;
            }
        }
        match identities(&config, meta.as_ref(), blobs.as_ref()).await {
            Ok((report, signing)) => {
                for w in &report.warnings {
                    eprintln!("warning: {w}");
                }
                println!("{report}");
                println!("{signing}");
                0
            }
            Err(e) => {
                eprintln!("vmreg admin reindex: {e}");
                1
            }
        }
    })
}

/// Restores the API keys and permission groups from the bucket (see
/// [`crate::auth::durable::restore`]) and the session signing secret; answers the report
/// and a line saying what became of the signing secret.
pub async fn identities(
    config: &Config,
    meta: &dyn MetaStore,
    blobs: &dyn BlobStore,
) -> Result<(crate::auth::durable::RestoreReport, String), String> {
    use crate::auth::session::{shared_secret, SigningSource};
    let report = crate::auth::durable::restore(meta, blobs)
        .await
        .map_err(|e| format!("restoring identities: {e}"))?;
    let signing = match &config.auth.jwt_secret {
        Some(_) => "signing key: configured (--jwt-secret), nothing to restore".to_string(),
        None => {
            let (_, source) = shared_secret(meta, blobs, config.auth.identity_secret.as_ref())
                .await
                .map_err(|e| format!("the session signing key: {e}"))?;
            match source {
                SigningSource::Held => "signing key: kept".to_string(),
                SigningSource::Restored => "signing key: restored from the bucket".to_string(),
                SigningSource::Generated => "signing key: generated anew (no identity secret, or none sealed): sessions and OCI tokens made before no longer verify once every replica restarted; API keys are unaffected and do a new handshake".to_string(),
            }
        }
    };
    Ok((report, signing))
}

/// One template as found in the bucket.
#[derive(Default)]
struct Found {
    record: Option<StoredTemplate>,
    manifests: Vec<StoredManifest>,
}

/// Reads every manifest and writes the metadata they describe.
pub async fn reindex(meta: &dyn MetaStore, blobs: &dyn BlobStore) -> Result<ReindexReport, String> {
    let mut report = ReindexReport::default();
    let keys = blobs
        .list("manifests/")
        .await
        .map_err(|e| format!("listing manifests: {e}"))?;

    let read = futures_util::stream::iter(keys.into_iter().filter(|k| k.ends_with(".json")))
        .map(|key| async move {
            let bytes = blobs
                .read(&key)
                .await
                .map_err(|e| format!("reading {key}: {e}"))?;
            Ok::<_, String>((key, bytes))
        })
        .buffer_unordered(READ_CONCURRENCY)
        .try_collect::<Vec<_>>()
        .await?;

    let mut found: BTreeMap<Uuid, Found> = BTreeMap::new();
    for (key, bytes) in read {
        if key.ends_with("/template.json") {
            match serde_json::from_slice::<StoredTemplate>(&bytes) {
                Ok(t) => {
                    let id = t.id;
                    found.entry(id).or_default().record = Some(t);
                }
                Err(e) => report
                    .warnings
                    .push(format!("{key}: not a template record ({e}); skipped")),
            }
        } else {
            match serde_json::from_slice::<StoredManifest>(&bytes) {
                Ok(m) => {
                    let id = m.id;
                    found.entry(id).or_default().manifests.push(m);
                }
                Err(e) => report
                    .warnings
                    .push(format!("{key}: not a manifest ({e}); skipped")),
            }
        }
    }

    let mut templates: Vec<Template> = Vec::new();
    let mut counters: Vec<(Uuid, u64)> = Vec::new();
    let mut files: HashMap<String, (u64, FileRecord)> = HashMap::new();
    for (id, f) in found {
        let Some((template, manifests, seq)) = assemble(id, f, &mut report) else {
            continue;
        };
        // The commit counter moves on from every manifest found, superseded ones too, so
        // that no later commit shares a place in the history with one of them.
        if seq > 0 {
            counters.push((id, seq));
        }
        for m in &manifests {
            for key in m.version.keys() {
                let Some(file) = m.version.files.iter().find(|f| f.key() == key) else {
                    continue;
                };
                let Some(object) = m.objects.get(&key) else {
                    report.warnings.push(format!(
                        "template {id} version {} names file {key} without its object; the file is not indexed",
                        m.version.number
                    ));
                    continue;
                };
                let entry = files.entry(key.clone()).or_insert_with(|| {
                    (
                        0,
                        FileRecord {
                            key: key.clone(),
                            size: 0,
                            sha256: String::new(),
                            object: String::new(),
                            refs: 0,
                            pins: Vec::new(),
                        },
                    )
                });
                // A file re-uploaded after it was deleted lives in a newer object: the
                // newest version that names the file says where its bytes are.
                if entry.1.object.is_empty() || m.version.created >= entry.0 {
                    entry.0 = m.version.created;
                    entry.1.size = file.size;
                    entry.1.sha256 = file.sha256.clone();
                    entry.1.object = object.clone();
                }
                entry.1.refs += 1;
            }
        }
        templates.push(template);
    }
    let owners = name_owners(&templates, &mut report);
    let files: Vec<FileRecord> = files.into_values().map(|(_, r)| r).collect();
    write(meta, &templates, &owners, &counters, files, &mut report).await?;
    // The index is this bucket's again: gc may collect from now on.
    super::instance::mark_index_of_bucket(meta, blobs)
        .await
        .map_err(|e| format!("marking the index: {e}"))?;
    Ok(report)
}

/// Replays a template's manifests in the order of their commits: each commit stacked its
/// version on the `number` versions before it, so a manifest drops every version at or
/// past its number (reverted ones whose manifests survived, and manifests written ahead
/// of a commit that never came) and takes that place. Versions committed before `seq` was
/// kept all have 0 and come first, ordered by number and time as they were.
///
/// A manifest written ahead of a commit that never came, with no commit after it, cannot
/// be told from the latest version by the bucket alone, and comes back: its files were
/// whole and verified before it was written. While the index lives, `abort` and gc remove
/// such a manifest (see `push::commit`), so only a lost index in that window brings one
/// back.
fn replay(
    id: Uuid,
    mut manifests: Vec<StoredManifest>,
    report: &mut ReindexReport,
) -> Vec<StoredManifest> {
    manifests.sort_by(|a, b| {
        let key = |m: &StoredManifest| {
            let v = &m.version;
            (v.seq, v.number, v.created, v.push_id.clone())
        };
        key(a).cmp(&key(b))
    });
    let mut live: Vec<StoredManifest> = Vec::new();
    for m in manifests {
        let keep = (m.version.number as usize).min(live.len());
        for gone in live.drain(keep..) {
            report.warnings.push(format!(
                "template {id}: version {} of push {} is superseded; skipped",
                gone.version.number, gone.version.push_id
            ));
        }
        live.push(m);
    }
    live
}

/// Orders a template's manifests into dense versions; `None` when it has none.
fn assemble(
    id: Uuid,
    found: Found,
    report: &mut ReindexReport,
) -> Option<(Template, Vec<StoredManifest>, u64)> {
    let Found { record, manifests } = found;
    if manifests.is_empty() {
        if record.is_some() {
            report.warnings.push(format!(
                "template {id} has a record but no versions; skipped"
            ));
        }
        return None;
    }
    // Two manifests of one push: retention moved a version committed before pushes had
    // their own manifest key to its new number, and was cut off before it deleted the
    // manifest under the old one. The lower number is the newer.
    let mut by_push: BTreeMap<String, StoredManifest> = BTreeMap::new();
    for m in manifests {
        match by_push.get(&m.version.push_id) {
            Some(kept) if kept.version.number <= m.version.number => {}
            _ => {
                by_push.insert(m.version.push_id.clone(), m);
            }
        }
    }
    let manifests: Vec<StoredManifest> = by_push.into_values().collect();
    let seq = manifests.iter().map(|m| m.version.seq).max().unwrap_or(0);
    let mut manifests = replay(id, manifests, report);
    for (i, m) in manifests.iter_mut().enumerate() {
        let dense = i as u32;
        if m.version.number != dense {
            report.warnings.push(format!(
                "template {id}: version {} renumbered {dense} to keep numbers dense",
                m.version.number
            ));
            m.version.number = dense;
        }
    }
    let versions: Vec<Version> = manifests.iter().map(|m| m.version.clone()).collect();
    let newest_name = manifests
        .iter()
        .max_by_key(|m| m.version.created)
        .map(|m| m.name.clone())
        .unwrap_or_default();
    let first = versions.iter().map(|v| v.created).min().unwrap_or(0);
    let (name, arch, created) = match record {
        Some(r) => (r.name, r.arch, r.created),
        None => {
            report.warnings.push(format!(
                "template {id} has no template record; name and creation taken from its manifests"
            ));
            (newest_name, String::new(), first)
        }
    };
    let mut template = Template {
        id,
        name,
        arch,
        created,
        last_push: 0,
        versions,
    };
    template.last_push = template.newest_push();
    Some((template, manifests, seq))
}

/// The id each name belongs to. Names are unique in a live registry; should two templates
/// in the bucket claim one (a template deleted and recreated while a manifest survived),
/// the most recently pushed keeps it.
fn name_owners(templates: &[Template], report: &mut ReindexReport) -> HashMap<String, Uuid> {
    let mut owners: HashMap<String, (u64, Uuid)> = HashMap::new();
    for t in templates {
        match owners.get(&t.name) {
            Some((last, other)) if *last >= t.last_push => {
                report.warnings.push(format!(
                    "name {:?} is claimed by {other} and {}; {other} keeps it",
                    t.name, t.id
                ));
            }
            Some((_, other)) => {
                report.warnings.push(format!(
                    "name {:?} is claimed by {other} and {}; {} keeps it",
                    t.name, t.id, t.id
                ));
                owners.insert(t.name.clone(), (t.last_push, t.id));
            }
            None => {
                owners.insert(t.name.clone(), (t.last_push, t.id));
            }
        }
    }
    owners
        .into_iter()
        .map(|(name, (_, id))| (name, id))
        .collect()
}

/// One buffered write of the rebuild.
enum Write {
    Put(String, Vec<u8>),
    Delete(String),
    Add(String),
}

async fn write(
    meta: &dyn MetaStore,
    templates: &[Template],
    owners: &HashMap<String, Uuid>,
    counters: &[(Uuid, u64)],
    mut files: Vec<FileRecord>,
    report: &mut ReindexReport,
) -> Result<(), String> {
    // Pins belong to uploads in flight; keep any the index still has rather than let a
    // running push lose its protection.
    let keys: Vec<String> = files.iter().map(|f| meta::keys::file(&f.key)).collect();
    let existing = meta
        .get_many(&keys)
        .await
        .map_err(|e| format!("reading file records: {e}"))?;
    for (file, old) in files.iter_mut().zip(existing) {
        if let Some(old) =
            old.and_then(|b| meta::decode::<FileRecord>(&meta::keys::file(&file.key), &b).ok())
        {
            file.pins = old.pins;
        }
    }

    let mut writes: Vec<Write> = Vec::new();
    let mut rebuilt: std::collections::HashSet<String> = std::collections::HashSet::new();
    for t in templates {
        let records = super::template_record::records(t)
            .into_iter()
            .chain(super::summary_record::records(t));
        for (key, value) in records {
            rebuilt.insert(key.clone());
            writes.push(Write::Put(key, value));
        }
        if owners.get(&t.name) == Some(&t.id) {
            writes.push(Write::Put(
                meta::keys::template_name(&t.name),
                meta::encode(&t.id.to_string()),
            ));
        }
        writes.push(Write::Add(t.id.to_string()));
    }
    for (id, seq) in counters {
        writes.push(Write::Put(meta::keys::commit_seq(id), meta::encode(seq)));
    }
    // Over a live index (`--force`), a template may hold version records and listing
    // blocks in slots the rebuild does not use: they go, so no record its head does not
    // list stays behind.
    let ids: std::collections::HashSet<Uuid> = templates.iter().map(|t| t.id).collect();
    for prefix in [meta::keys::TEMPLATE_VERSIONS, meta::keys::SUMMARY_BLOCKS] {
        let found = meta
            .keys_with_prefix(prefix)
            .await
            .map_err(|e| format!("listing the index: {e}"))?;
        for key in found {
            let of_rebuilt = key
                .strip_prefix(prefix)
                .and_then(|rest| rest.split_once(':'))
                .and_then(|(id, _)| Uuid::parse_str(id).ok())
                .is_some_and(|id| ids.contains(&id));
            if of_rebuilt && !rebuilt.contains(&key) {
                writes.push(Write::Delete(key));
            }
        }
    }
    for f in &files {
        writes.push(Write::Put(meta::keys::file(&f.key), meta::encode(f)));
    }
    for batch in writes.chunks(WRITE_BATCH) {
        // The batch reads nothing, so it cannot conflict; the loop only guards a backend
        // that would report one anyway.
        let mut committed = false;
        for _ in 0..5 {
            let mut tx = meta
                .begin()
                .await
                .map_err(|e| format!("writing the index: {e}"))?;
            for w in batch {
                match w {
                    Write::Put(key, value) => tx.put(key, value.clone()),
                    Write::Delete(key) => tx.delete(key),
                    Write::Add(member) => tx.set_add(meta::keys::TEMPLATES, member),
                }
            }
            if tx
                .commit()
                .await
                .map_err(|e| format!("writing the index: {e}"))?
            {
                committed = true;
                break;
            }
        }
        if !committed {
            return Err("writing the index: the metadata store kept reporting conflicts".into());
        }
    }
    report.templates = templates.len();
    report.versions = templates.iter().map(|t| t.versions.len()).sum();
    report.files = files.len();
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};

    use async_trait::async_trait;
    use bytes::Bytes;

    use super::*;
    use crate::meta::embedded::EmbeddedMeta;
    use crate::meta::MetaStoreExt;
    use crate::model::{FileKind, FileRef, TemplateSummary};
    use crate::store::{
        ByteStream, ObjectInfo, PartInfo, PendingUpload, Space, StoreError, StoreResult,
        UploadHandle,
    };

    /// Just enough of a blob store to hold manifests: reindex only lists and reads.
    #[derive(Default)]
    struct Objects(Mutex<BTreeMap<String, Bytes>>);

    #[async_trait]
    impl BlobStore for Objects {
        async fn begin_upload(&self, _key: &str) -> StoreResult<UploadHandle> {
            Err(StoreError::Unavailable("unused".into()))
        }
        async fn write_part(
            &self,
            _u: &UploadHandle,
            _n: u32,
            _o: u64,
            _d: Bytes,
        ) -> StoreResult<PartInfo> {
            Err(StoreError::Unavailable("unused".into()))
        }
        async fn complete_upload(&self, _u: &UploadHandle, _p: &[PartInfo]) -> StoreResult<()> {
            Err(StoreError::Unavailable("unused".into()))
        }
        async fn abort_upload(&self, _u: &UploadHandle) -> StoreResult<()> {
            Ok(())
        }
        async fn put(&self, key: &str, data: Bytes) -> StoreResult<()> {
            self.0.lock().unwrap().insert(key.to_string(), data);
            Ok(())
        }
        async fn get(&self, _key: &str, _range: Option<(u64, u64)>) -> StoreResult<ByteStream> {
            Err(StoreError::Unavailable("unused".into()))
        }
        async fn read(&self, key: &str) -> StoreResult<Bytes> {
            self.0
                .lock()
                .unwrap()
                .get(key)
                .cloned()
                .ok_or_else(|| StoreError::NotFound(key.to_string()))
        }
        async fn delete(&self, key: &str) -> StoreResult<()> {
            self.0.lock().unwrap().remove(key);
            Ok(())
        }
        async fn list_objects(&self, prefix: &str) -> StoreResult<Vec<ObjectInfo>> {
            Ok(self
                .0
                .lock()
                .unwrap()
                .iter()
                .filter(|(k, _)| k.starts_with(prefix))
                .map(|(k, v)| ObjectInfo {
                    key: k.clone(),
                    size: v.len() as u64,
                    modified: 0,
                })
                .collect())
        }
        async fn list_uploads(&self) -> StoreResult<Vec<PendingUpload>> {
            Ok(Vec::new())
        }
        async fn space(&self) -> StoreResult<Option<Space>> {
            Ok(None)
        }
        async fn ping(&self) -> StoreResult<()> {
            Ok(())
        }
        fn min_part_size(&self) -> u64 {
            5 << 20
        }
        fn describe(&self) -> String {
            "memory".into()
        }
    }

    fn file(name: &str, kind: FileKind, size: u64) -> FileRef {
        FileRef {
            name: name.into(),
            kind,
            size,
            sha256: format!("{size:064x}"),
        }
    }

    /// A manifest written ahead of a commit, `seq` its place in the history.
    async fn put_pushed(blobs: &Objects, id: Uuid, number: u32, seq: u64, created: u64, tag: &str) {
        let files = vec![file(&format!("{tag}.ank"), FileKind::Image, 10)];
        let mut m = stored(id, "alpha", number, tag, created, files);
        m.version.seq = seq;
        put_manifest(blobs, m).await;
    }

    async fn put_manifest(blobs: &Objects, m: StoredManifest) {
        let key = m.version.manifest_key(&m.id);
        blobs.put(&key, meta::encode(&m).into()).await.unwrap();
    }

    /// A manifest as a version committed before `seq` was kept wrote it.
    fn stored(
        id: Uuid,
        name: &str,
        number: u32,
        tag: &str,
        created: u64,
        files: Vec<FileRef>,
    ) -> StoredManifest {
        let push_id = format!("push-{tag}-{created}");
        let objects = files
            .iter()
            .map(|f| (f.key(), crate::store::keys::blob(&f.key(), &push_id)))
            .collect();
        let version = Version {
            number,
            tag: tag.into(),
            description: format!("about {tag}"),
            files,
            config: serde_json::json!({"name": name}),
            created,
            push_id,
            seq: 0,
        };
        StoredManifest {
            id,
            name: name.into(),
            version,
            objects,
        }
    }

    async fn put_template(blobs: &Objects, id: Uuid, name: &str, arch: &str, created: u64) {
        let t = StoredTemplate {
            id,
            name: name.into(),
            arch: arch.into(),
            created,
        };
        blobs
            .put(
                &crate::store::keys::template_record(&id),
                meta::encode(&t).into(),
            )
            .await
            .unwrap();
    }

    async fn get<T: serde::de::DeserializeOwned>(meta: &dyn MetaStore, key: String) -> Option<T> {
        meta.get_json(&key).await.unwrap()
    }

    async fn load(meta: &dyn MetaStore, id: &Uuid) -> Template {
        crate::registry::template_record::get(meta, id)
            .await
            .unwrap()
            .unwrap()
    }

    #[tokio::test]
    async fn rebuilds_templates_names_summaries_and_file_refs() {
        let dir = tempfile::tempdir().unwrap();
        let meta = EmbeddedMeta::open(&dir.path().join("m.redb")).unwrap();
        let blobs = Objects::default();
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let base = file("base.ank", FileKind::Image, 100);
        put_template(&blobs, a, "alpha", "arm64", 10).await;
        put_manifest(
            &blobs,
            stored(
                a,
                "alpha",
                0,
                "v1",
                10,
                vec![base.clone(), file("nvram", FileKind::Nvram, 1)],
            ),
        )
        .await;
        // A reverted v2 whose manifest survived, then the live v2 reusing number 1.
        put_manifest(
            &blobs,
            stored(
                a,
                "alpha",
                1,
                "old",
                20,
                vec![file("gone.ank", FileKind::Image, 7), base.clone()],
            ),
        )
        .await;
        put_manifest(
            &blobs,
            stored(
                a,
                "alpha",
                1,
                "v2",
                30,
                vec![file("top.ank", FileKind::Image, 5), base.clone()],
            ),
        )
        .await;
        put_template(&blobs, b, "beta", "", 40).await;
        put_manifest(&blobs, stored(b, "beta", 0, "only", 40, vec![base.clone()])).await;

        let report = reindex(&meta, &blobs).await.unwrap();
        assert_eq!(
            (report.templates, report.versions, report.files),
            (2, 3, 3),
            "{report:?}"
        );

        let mut ids = meta.members(meta::keys::TEMPLATES).await.unwrap();
        ids.sort();
        let mut want = vec![a.to_string(), b.to_string()];
        want.sort();
        assert_eq!(ids, want);

        let alpha = load(&meta, &a).await;
        assert_eq!(alpha.name, "alpha");
        assert_eq!(alpha.arch, "arm64");
        assert_eq!(alpha.created, 10);
        assert_eq!(alpha.last_push, 30);
        let tags: Vec<(u32, &str)> = alpha
            .versions
            .iter()
            .map(|v| (v.number, v.tag.as_str()))
            .collect();
        assert_eq!(
            tags,
            vec![(0, "v1"), (1, "v2")],
            "the newer manifest of number 1 wins"
        );
        assert_eq!(alpha.versions[1].description, "about v2");

        let summary = crate::registry::summary_record::get(&meta, &a)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(summary, TemplateSummary::from(&alpha));
        let owner: String = get(&meta, meta::keys::template_name("beta")).await.unwrap();
        assert_eq!(owner, b.to_string());

        let shared: FileRecord = get(&meta, meta::keys::file("base.ank")).await.unwrap();
        assert_eq!(
            shared.refs, 3,
            "two tags of alpha and one of beta use the base layer"
        );
        assert_eq!(shared.size, 100);
        let top: FileRecord = get(&meta, meta::keys::file("top.ank")).await.unwrap();
        assert_eq!(
            (top.refs, top.object.as_str()),
            (
                1,
                crate::store::keys::blob("top.ank", "push-v2-30").as_str()
            )
        );
        assert!(
            get::<FileRecord>(&meta, meta::keys::file("gone.ank"))
                .await
                .is_none(),
            "superseded versions reference nothing"
        );
    }

    /// The live index and a rebuild from the bucket agree on `last_push` after a revert,
    /// whatever seconds the pushes fell in: the reverted push counts in neither.
    #[tokio::test]
    async fn a_revert_leaves_the_last_push_a_rebuild_gives() {
        let dir = tempfile::tempdir().unwrap();
        let live = Arc::new(EmbeddedMeta::open(&dir.path().join("live.redb")).unwrap());
        let blobs = Arc::new(Objects::default());
        let b = Uuid::new_v4();
        put_template(&blobs, b, "beta", "arm64", 1_795_825_146).await;
        let base = file("base.ank", FileKind::Image, 100);
        put_manifest(
            &blobs,
            stored(b, "beta", 0, "only", 1_795_825_146, vec![base.clone()]),
        )
        .await;
        // The next push falls in the next second, and is reverted.
        let top = file("top.ank", FileKind::Image, 5);
        put_manifest(
            &blobs,
            stored(b, "beta", 1, "reverted", 1_795_825_147, vec![top, base]),
        )
        .await;
        reindex(live.as_ref(), blobs.as_ref()).await.unwrap();
        let pushed = load(live.as_ref(), &b).await;
        assert_eq!(pushed.last_push, 1_795_825_147);

        let registry = crate::registry::Registry::new(live.clone(), blobs.clone(), 5 << 20, 1);
        registry
            .revert(&b, crate::registry::templates::RevertTarget::Latest)
            .await
            .unwrap();
        let reverted = load(live.as_ref(), &b).await;
        let summary = crate::registry::summary_record::get(live.as_ref(), &b)
            .await
            .unwrap()
            .unwrap();

        let flushed = EmbeddedMeta::open(&dir.path().join("flushed.redb")).unwrap();
        reindex(&flushed, blobs.as_ref()).await.unwrap();
        let rebuilt = load(&flushed, &b).await;
        assert_eq!(rebuilt, reverted, "the rebuild is the live template");
        assert_eq!(
            (reverted.last_push, summary.last_push),
            (1_795_825_146, 1_795_825_146),
            "a revert takes last_push back to the newest version left"
        );
    }

    /// Versions are replayed in the order of their commits, whatever the replicas' clocks
    /// said; a manifest written ahead of a commit that never came is dropped by the next
    /// commit that takes its place.
    #[tokio::test]
    async fn manifests_are_replayed_in_commit_order() {
        let dir = tempfile::tempdir().unwrap();
        let meta = EmbeddedMeta::open(&dir.path().join("m.redb")).unwrap();
        let blobs = Objects::default();
        let a = Uuid::new_v4();
        put_template(&blobs, a, "alpha", "arm64", 10).await;
        put_manifest(
            &blobs,
            stored(
                a,
                "alpha",
                0,
                "v0",
                10,
                vec![file("v0.ank", FileKind::Image, 1)],
            ),
        )
        .await;
        // Number 1 committed on a replica whose clock ran ahead, reverted (its manifest
        // survived), and taken again by a later commit stamped earlier.
        put_pushed(&blobs, a, 1, 2, 500, "reverted").await;
        put_pushed(&blobs, a, 1, 3, 400, "later").await;
        // A manifest written ahead of a commit that never came, then the commit that took
        // its number.
        put_pushed(&blobs, a, 2, 4, 450, "crashed").await;
        put_pushed(&blobs, a, 2, 5, 460, "next").await;

        let report = reindex(&meta, &blobs).await.unwrap();
        let alpha = load(&meta, &a).await;
        let tags: Vec<(u32, &str)> = alpha
            .versions
            .iter()
            .map(|v| (v.number, v.tag.as_str()))
            .collect();
        assert_eq!(tags, [(0, "v0"), (1, "later"), (2, "next")], "{report:?}");
        assert_eq!(alpha.last_push, 460);
        let counter: u64 = get(&meta, meta::keys::commit_seq(&a)).await.unwrap();
        assert_eq!(
            counter, 5,
            "the next commit comes after every manifest found"
        );
        for gone in ["reverted.ank", "crashed.ank"] {
            assert!(get::<FileRecord>(&meta, meta::keys::file(gone))
                .await
                .is_none());
        }
    }

    #[tokio::test]
    async fn gaps_are_closed_and_records_without_versions_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let meta = EmbeddedMeta::open(&dir.path().join("m.redb")).unwrap();
        let blobs = Objects::default();
        let (a, empty) = (Uuid::new_v4(), Uuid::new_v4());
        put_template(&blobs, a, "alpha", "amd64", 1).await;
        put_manifest(
            &blobs,
            stored(
                a,
                "alpha",
                0,
                "v0",
                1,
                vec![file("x.ank", FileKind::Image, 1)],
            ),
        )
        .await;
        put_manifest(
            &blobs,
            stored(
                a,
                "alpha",
                2,
                "v2",
                3,
                vec![file("x.ank", FileKind::Image, 1)],
            ),
        )
        .await;
        put_template(&blobs, empty, "empty", "", 1).await;
        blobs
            .put("manifests/garbage/v1.json", Bytes::from_static(b"not json"))
            .await
            .unwrap();

        let report = reindex(&meta, &blobs).await.unwrap();
        assert_eq!((report.templates, report.versions, report.files), (1, 2, 1));
        assert!(report.warnings.len() >= 3, "{:?}", report.warnings);
        let alpha = load(&meta, &a).await;
        assert_eq!(
            alpha.versions.iter().map(|v| v.number).collect::<Vec<_>>(),
            vec![0, 1]
        );
        assert!(get::<String>(&meta, meta::keys::template_name("empty"))
            .await
            .is_none());
        assert_eq!(
            meta.members(meta::keys::TEMPLATES).await.unwrap(),
            vec![a.to_string()]
        );
    }
}
