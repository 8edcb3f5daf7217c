//! `push`: offer a local VM's files to the registry, upload those it lacks (several at
//! once), then commit the version. A journal in the library remembers the session and the
//! hash state, so rerunning an interrupted push continues it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde::Serialize;
use uuid::Uuid;

use super::digests::DigestCache;
use super::error::{ClientError, ClientResult};
use super::journal::{Journal, JournalState};
use super::library::{LocalFile, LocalVm};
use super::ranges::upload_ranges;
use super::upload::{upload_file, Meter, UploadJob};
use super::Transfer;
use crate::model::FileKind;
use crate::protocol::{CommitRequest, Committed, PushFile, PushPlan, PushRequest};

/// Times a commit whose reply was lost is asked again.
const COMMIT_RETRIES: u32 = 3;

/// What to push.
#[derive(Clone, Debug, Default)]
pub struct PushOptions {
    /// The new tag; required, as at the vendor (`None` is refused with a message).
    pub tag: Option<String>,
    /// The version's description.
    pub description: String,
    /// Push as the next tag of this registry template (name or id) instead of the VM's own.
    pub existing: Option<String>,
    /// Send each file of at least [`RANGED_FROM`] bytes as this many ranges at once (its
    /// parts striped over as many connections); 0 or 1 sends every file as one stream.
    pub ranges: usize,
}

/// The smallest file sent as several ranges: below it one stream moves a file fast enough.
pub const RANGED_FROM: u64 = 64 << 20;

/// What a push did.
#[derive(Clone, Debug, Serialize)]
pub struct PushReport {
    /// Template id.
    pub id: Uuid,
    /// Template name.
    pub name: String,
    /// The pushed tag.
    pub tag: String,
    /// The new version's number.
    pub number: u32,
    /// Bytes of all the version's files.
    pub total_size: u64,
    /// Files of the version.
    pub files: usize,
    /// Files the registry lacked and that were uploaded (or completed).
    pub uploaded: Vec<String>,
    /// Bytes sent by this run.
    pub bytes_sent: u64,
    /// Bytes this run read from the VM's files, to send or to hash: each file is read at
    /// most once, and not at all when the digest cache knows it and the registry has it.
    pub bytes_read: u64,
    /// True when this run continued an interrupted push.
    pub resumed: bool,
}

/// Pushes a local VM as a new version.
pub async fn push(t: &Transfer, vm_name: &str, opts: &PushOptions) -> ClientResult<PushReport> {
    let vm = t.library.find(vm_name)?;
    let Some(tag) = opts.tag.as_deref() else {
        return Err(ClientError::Invalid(
            "push needs a tag: -t TAG (as the vendor's push; a version is known by its tag)".into(),
        ));
    };
    // Refused here as the registry would refuse them, before anything is sent or read.
    let invalid = |e: crate::model::Invalid| ClientError::Invalid(e.to_string());
    crate::model::validate_tag(tag).map_err(invalid)?;
    if opts.existing.is_none() {
        crate::model::validate_template_name(&vm.name).map_err(invalid)?;
    }
    let files = t.library.files(&vm)?;
    let (id, name) = match &opts.existing {
        Some(existing) => {
            let template = t.registry.resolve(existing).await?;
            (template.id, template.name)
        }
        None => (vm.uuid, vm.name.clone()),
    };
    let journal = Arc::new(Journal::open(t, &vm)?);
    let registry = journal_key(t).await?;
    if let Some(committed) = committed_earlier(t, &journal, &registry, id, tag).await? {
        journal.remove();
        return Ok(PushReport {
            id: committed.id,
            name: committed.name,
            tag: committed.tag,
            number: committed.number,
            total_size: files.iter().map(|f| f.size).sum(),
            files: files.len(),
            uploaded: Vec::new(),
            bytes_sent: 0,
            bytes_read: 0,
            resumed: true,
        });
    }
    let cache = Arc::new(DigestCache::open(&t.library.state_dir()));
    let meter = Arc::new(Meter::default());
    let (plan, resumed) = match resumable_plan(t, &journal, &registry, id, tag, &files).await? {
        Some(plan) => (plan, true),
        None => {
            // Only digests known without reading: the others are hashed while files upload.
            let digests = known_digests(&cache, &files, &meter).await?;
            let request = push_request(&vm, id, &name, tag, &opts.description, &files, &digests)?;
            let plan = t.registry.negotiate(&request).await?;
            journal.begin(JournalState {
                registry,
                id,
                tag: plan.tag.clone(),
                session: plan.session.clone(),
                files: fingerprint(&files),
                ..JournalState::default()
            })?;
            (plan, false)
        }
    };
    let work = plan_work(&plan, &files)?;
    t.reporter.start(
        work.uploads.len(),
        work.uploads
            .iter()
            .map(|j| j.size - j.received.min(j.size))
            .sum(),
    );
    let refused = AtomicBool::new(false);
    let confirming = async {
        let confirmed = confirm_held(t, &cache, &work.held, &meter).await?;
        let changed = |(key, digest): (&String, &String)| {
            let hint = work.hints.get(key);
            hint.is_some_and(|h| *h != crate::protocol::held_hint(&plan.session, digest))
        };
        if confirmed.iter().any(changed) {
            // The registry refuses such a push at commit: ask it now, not after the uploads.
            refused.store(true, Ordering::SeqCst);
            let request = CommitRequest { digests: confirmed };
            return Err(match t.registry.commit(&plan.session, &request).await {
                Err(e) => e,
                Ok(_) => ClientError::Invalid("the registry took a changed file".into()),
            });
        }
        Ok(confirmed)
    };
    let uploading = upload_all(
        t,
        &plan.session,
        &work.uploads,
        opts.ranges,
        &journal,
        &meter,
        &cache,
    );
    let transferred = futures_util::future::try_join(uploading, confirming).await;
    t.reporter.finish();
    let mut digests = work.pinned;
    match transferred {
        Ok((uploaded, confirmed)) => {
            digests.extend(uploaded);
            digests.extend(confirmed);
        }
        Err(e) if refused.load(Ordering::SeqCst) && !e.is_transient() => {
            let _ = t.registry.abort(&plan.session).await;
            journal.remove();
            return Err(e);
        }
        Err(e) => return Err(e),
    }
    t.reporter.note("committing");
    let committed = match commit(t, &plan.session, &CommitRequest { digests }).await {
        Ok(committed) => committed,
        Err(e) if !e.is_transient() => {
            // Refused (a file changed while it was sent, the tag was taken meanwhile):
            // this session can never commit, so a rerun must start afresh.
            let _ = t.registry.abort(&plan.session).await;
            journal.remove();
            return Err(e);
        }
        Err(e) => return Err(e),
    };
    journal.remove();
    Ok(PushReport {
        id: committed.id,
        name: committed.name,
        tag: committed.tag,
        number: committed.number,
        total_size: files.iter().map(|f| f.size).sum(),
        files: files.len(),
        uploaded: work.uploads.iter().map(|j| j.name.clone()).collect(),
        bytes_sent: meter.sent.load(Ordering::SeqCst),
        bytes_read: meter.read.load(Ordering::SeqCst),
        resumed,
    })
}

/// What a plan asks of the local files: uploads, held files to hash and confirm, and the
/// digests of files the registry pinned.
struct Work {
    uploads: Vec<UploadJob>,
    /// Held files to hash, by key.
    held: Vec<(String, PathBuf)>,
    /// What the plan shows of the held files' digests ([`crate::protocol::held_hint`]), by
    /// key: whether the local file is the stored one is known as soon as it is hashed.
    hints: BTreeMap<String, String>,
    /// Digests of the pinned files, by key.
    pinned: BTreeMap<String, String>,
}

fn plan_work(plan: &PushPlan, files: &[LocalFile]) -> ClientResult<Work> {
    let mut work = Work {
        uploads: Vec::new(),
        held: Vec::new(),
        hints: BTreeMap::new(),
        pinned: BTreeMap::new(),
    };
    for (index, planned) in plan.files.iter().enumerate() {
        let local = files
            .iter()
            .find(|f| f.name == planned.name && f.kind == planned.kind)
            .ok_or_else(|| {
                ClientError::Invalid(format!(
                    "the registry's plan names {} which the VM lacks",
                    planned.name
                ))
            })?;
        if planned.upload {
            work.uploads.push(UploadJob {
                index,
                name: local.name.clone(),
                key: planned.key.clone(),
                path: local.path.clone(),
                size: local.size,
                part_size: planned.part_size,
                received: planned.received,
                durable: planned.durable.clone(),
            });
            continue;
        }
        // A digest the registry echoes is ours for a file it pinned for it; a held file's
        // is only a hint, confirmed by hashing the local file (free when the cache knows it).
        match planned.sha256.clone().filter(|_| !planned.confirm) {
            Some(digest) => {
                work.pinned.insert(planned.key.clone(), digest);
            }
            None => {
                // Earlier servers showed the stored digest itself.
                let hint = planned.confirm_hint.clone().or_else(|| {
                    let stored = planned.sha256.as_ref()?;
                    Some(crate::protocol::held_hint(&plan.session, stored))
                });
                if let Some(hint) = hint {
                    work.hints.insert(planned.key.clone(), hint);
                }
                work.held.push((planned.key.clone(), local.path.clone()));
            }
        }
    }
    Ok(work)
}

/// Runs the uploads, `concurrency` at a time, large files as `ranges` ranges each; returns each file's digest by key, and
/// remembers it in the digest cache so that the next push reads nothing of the file.
async fn upload_all(
    t: &Transfer,
    session: &str,
    jobs: &[UploadJob],
    ranges: usize,
    journal: &Arc<Journal>,
    meter: &Arc<Meter>,
    cache: &Arc<DigestCache>,
) -> ClientResult<BTreeMap<String, String>> {
    use futures_util::stream::{self, StreamExt, TryStreamExt};
    let results: Vec<(String, String)> = stream::iter(jobs.iter().cloned())
        .map(|job| {
            let (t, session, journal, meter, cache) = (
                t.clone(),
                session.to_string(),
                journal.clone(),
                meter.clone(),
                cache.clone(),
            );
            async move {
                let handle = tokio::spawn(async move {
                    let before = std::fs::metadata(&job.path).ok();
                    let ranged = ranges > 1 && job.size >= RANGED_FROM && job.size > job.part_size;
                    let digest = match ranged {
                        true => upload_ranges(&t, &session, &job, ranges, &journal, &meter).await?,
                        false => upload_file(&t, &session, &job, &journal, &meter).await?,
                    };
                    if let Some(before) = before {
                        cache.record_unchanged(&job.path, &digest, &before);
                    }
                    Ok::<_, ClientError>((job.key, digest))
                });
                handle.await.unwrap_or_else(|e| {
                    Err(ClientError::Invalid(format!("upload task failed: {e}")))
                })
            }
        })
        .buffer_unordered(t.concurrency.max(1))
        .try_collect()
        .await?;
    Ok(results.into_iter().collect())
}

/// Hashes the held files (those the registry has under their name and size, which the
/// digest cache does not know), while the uploads run; returns their digests by key.
async fn confirm_held(
    t: &Transfer,
    cache: &Arc<DigestCache>,
    held: &[(String, PathBuf)],
    meter: &Arc<Meter>,
) -> ClientResult<BTreeMap<String, String>> {
    use futures_util::stream::{self, StreamExt, TryStreamExt};
    stream::iter(held.iter().cloned())
        .map(|(key, path)| {
            let (cache, meter) = (cache.clone(), meter.clone());
            async move {
                let digest = hash_file(cache, meter, path).await?;
                Ok::<_, ClientError>((key, digest))
            }
        })
        .buffer_unordered(t.concurrency.max(1))
        .try_collect()
        .await
}

/// Commits, asking again when the reply is lost: the registry answers a repeated commit
/// with the version it made.
async fn commit(t: &Transfer, session: &str, request: &CommitRequest) -> ClientResult<Committed> {
    let mut attempt = 0;
    loop {
        match t.registry.commit(session, request).await {
            Err(e) if e.is_transient() && attempt < COMMIT_RETRIES => {
                attempt += 1;
                t.reporter.note(&format!("commit: {e}; asking again"));
                tokio::time::sleep(std::time::Duration::from_millis(500 * u64::from(attempt)))
                    .await;
            }
            done => return done,
        }
    }
}

/// Whose push a journal records: the registry's instance id when it reports one, so that
/// a rerun through another address of the same registry (a replica's own URL, a second
/// load-balancer name) continues the push, and one against another registry never takes
/// up its session; else, as for the vendor's registry, the URL.
async fn journal_key(t: &Transfer) -> ClientResult<String> {
    match t.registry.instance_id().await {
        Ok(Some(id)) => Ok(format!("instance:{id}")),
        Ok(None) => Ok(t.registry.url().to_string()),
        // Unreachable now: the push would fail on its first request anyway.
        Err(e @ ClientError::Network(_)) => Err(e),
        // A registry without a status of this shape is one that reports no id.
        Err(_) => Ok(t.registry.url().to_string()),
    }
}

/// The version the journaled push of this VM committed, when its commit reply was lost.
async fn committed_earlier(
    t: &Transfer,
    journal: &Journal,
    registry: &str,
    id: Uuid,
    tag: &str,
) -> ClientResult<Option<Committed>> {
    let Some(state) = journal.current() else {
        return Ok(None);
    };
    if state.registry != registry || state.id != id || state.tag != tag {
        return Ok(None);
    }
    if t.registry.push_status(&state.session).await?.is_some() {
        return Ok(None);
    }
    match t
        .registry
        .commit(&state.session, &CommitRequest::default())
        .await
    {
        Ok(done) => Ok(Some(done)),
        Err(ClientError::NotFound(_) | ClientError::Registry { status: 404, .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The plan of the interrupted push of this VM, when one is journaled, still open at the
/// registry and about the same files and tag.
async fn resumable_plan(
    t: &Transfer,
    journal: &Journal,
    registry: &str,
    id: Uuid,
    tag: &str,
    files: &[LocalFile],
) -> ClientResult<Option<PushPlan>> {
    let Some(state) = journal.current() else {
        return Ok(None);
    };
    let same_target = state.registry == registry && state.id == id;
    let same_tag = tag == state.tag;
    if !same_target || !same_tag {
        return Ok(None);
    }
    let Some(plan) = t.registry.push_status(&state.session).await? else {
        return Ok(None);
    };
    // A file touched since the push began may hold other bytes than those sent.
    let same_files = state.files == fingerprint(files)
        && plan.files.len() == files.len()
        && plan.files.iter().all(|p| {
            files
                .iter()
                .any(|f| f.name == p.name && f.kind == p.kind && f.size == p.size)
        });
    if !same_files {
        // The VM changed since: the old session can never commit.
        let _ = t.registry.abort(&state.session).await;
        return Ok(None);
    }
    Ok(Some(plan))
}

/// Size and modification time of each file, by name.
fn fingerprint(files: &[LocalFile]) -> BTreeMap<String, (u64, u64)> {
    files
        .iter()
        .map(|f| (f.name.clone(), (f.size, f.modified)))
        .collect()
}

fn push_request(
    vm: &LocalVm,
    id: Uuid,
    name: &str,
    tag: &str,
    description: &str,
    files: &[LocalFile],
    digests: &BTreeMap<String, String>,
) -> ClientResult<PushRequest> {
    let mut config = serde_json::to_value(&vm.config).map_err(|e| {
        ClientError::Invalid(format!(
            "VM {:?}: config cannot be sent as JSON: {e}",
            vm.name
        ))
    })?;
    if let Some(map) = config.as_object_mut() {
        // The layer list is sent as files; the registry's copy is rebuilt from them.
        map.remove("images");
    }
    let arch = vm
        .config
        .get("arch")
        .and_then(serde_yaml::Value::as_str)
        .map(str::to_string);
    let push_files = files
        .iter()
        .map(|f| PushFile {
            name: f.name.clone(),
            kind: f.kind,
            size: f.size,
            sha256: digests.get(&f.name).cloned(),
        })
        .collect();
    Ok(PushRequest {
        id,
        name: name.to_string(),
        tag: tag.to_string(),
        description: description.to_string(),
        arch,
        config,
        files: push_files,
        confirm_held: true,
    })
}

/// The digests to give at negotiation, by name: those the digest cache knows of unchanged
/// files, and the nvram's (small, and needed then). The registry pins a file it has only
/// when the digests agree, so a layer changed in place is never taken for its copy.
async fn known_digests(
    cache: &Arc<DigestCache>,
    files: &[LocalFile],
    meter: &Arc<Meter>,
) -> ClientResult<BTreeMap<String, String>> {
    let mut digests = BTreeMap::new();
    for f in files {
        let digest = match (cache.known(&f.path), f.kind) {
            (Some(known), _) => known,
            (None, FileKind::Nvram) => {
                hash_file(cache.clone(), meter.clone(), f.path.clone()).await?
            }
            (None, _) => continue,
        };
        digests.insert(f.name.clone(), digest);
    }
    Ok(digests)
}

/// The file's SHA-256 through the digest cache, counting what is read.
async fn hash_file(
    cache: Arc<DigestCache>,
    meter: Arc<Meter>,
    path: PathBuf,
) -> ClientResult<String> {
    tokio::task::spawn_blocking(move || {
        if let Some(known) = cache.known(&path) {
            return Ok(known);
        }
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let digest = cache.sha256(&path)?;
        meter.read.fetch_add(size, Ordering::Relaxed);
        Ok(digest)
    })
    .await
    .unwrap_or_else(|e| Err(ClientError::Invalid(format!("hash task failed: {e}"))))
}
