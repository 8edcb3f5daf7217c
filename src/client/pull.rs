//! `pull`: fetch the files of a version that the library lacks, verify them, put them in
//! place and write the VM's config; optionally shrink away other tags' files.

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde::Serialize;
use serde_yaml::{Mapping, Value};
use uuid::Uuid;

use super::digests::DigestCache;
use super::download::{fetch_all, Wanted};
use super::error::{ClientError, ClientResult};
use super::library::{Library, LocalVm};
use super::staging::staged_bytes;
use super::{Transfer, VersionSelector};
use crate::model::{validate_file_name, FileKind};
use crate::protocol::{Manifest, ManifestFile};

/// What a pull did.
#[derive(Clone, Debug, Serialize)]
pub struct PullReport {
    /// Template id (the local VM's UUID).
    pub id: Uuid,
    /// Template name.
    pub name: String,
    /// Pulled tag.
    pub tag: String,
    /// Pulled version number.
    pub number: u32,
    /// Bytes of all the version's files.
    pub total_size: u64,
    /// Files of the version.
    pub files: usize,
    /// Files that were fetched.
    pub downloaded: Vec<String>,
    /// Bytes received from the network by this run.
    pub bytes_received: u64,
    /// Files removed by `--shrink`.
    pub removed: Vec<String>,
}

/// What a pull of a version would fetch.
#[derive(Clone, Debug, Serialize)]
pub struct DownloadSize {
    /// Template id.
    pub id: Uuid,
    /// Template name.
    pub name: String,
    /// Tag.
    pub tag: String,
    /// Version number.
    pub number: u32,
    /// Bytes the library lacks, less what an interrupted pull already staged.
    pub download_size: u64,
    /// Bytes of all the version's files.
    pub total_size: u64,
}

/// A manifest file and where it goes in the library.
struct Placed {
    file: ManifestFile,
    dest: PathBuf,
    present: bool,
}

/// Pulls a version of a template into the library.
pub async fn pull(
    t: &Transfer,
    template: &str,
    version: &VersionSelector,
    shrink: bool,
) -> ClientResult<PullReport> {
    let manifest = t.registry.manifest(template, version, true).await?;
    let cache = DigestCache::open(&t.library.state_dir());
    let placed = place(&t.library, &cache, &manifest)?;
    check_conflict(&t.library, &manifest)?;
    let wanted: Vec<Wanted> = placed
        .iter()
        .enumerate()
        .filter(|(_, p)| !p.present)
        .map(|(index, p)| to_wanted(index, p))
        .collect();
    let staged = fetch_all(t, &wanted).await;
    t.reporter.finish();
    let staged = staged?;
    let missing = placed.iter().filter(|p| !p.present);
    for (p, (part, sidecar)) in missing.zip(&staged.files) {
        if let Some(parent) = p.dest.parent() {
            std::fs::create_dir_all(parent).map_err(|e| ClientError::io(parent, e))?;
        }
        std::fs::rename(part, &p.dest).map_err(|e| ClientError::io(&p.dest, e))?;
        let _ = std::fs::remove_file(sidecar);
        // Verified while it arrived: a later push or pull of this file reads none of it.
        cache.record(&p.dest, &p.file.sha256);
    }
    t.library
        .write_config(manifest.id, &pulled_config(&manifest))?;
    let removed = if shrink {
        shrink_others(t, &manifest).await?
    } else {
        Vec::new()
    };
    Ok(PullReport {
        id: manifest.id,
        name: manifest.name.clone(),
        tag: manifest.tag.clone(),
        number: manifest.number,
        total_size: manifest.files.iter().map(|f| f.size).sum(),
        files: manifest.files.len(),
        downloaded: wanted.into_iter().map(|w| w.name).collect(),
        bytes_received: staged.bytes_received,
        removed,
    })
}

/// Bytes a pull of the version would fetch into the library.
pub async fn download_size(
    t: &Transfer,
    template: &str,
    version: &VersionSelector,
) -> ClientResult<DownloadSize> {
    let manifest = t.registry.manifest(template, version, false).await?;
    let cache = DigestCache::open(&t.library.state_dir());
    let placed = place(&t.library, &cache, &manifest)?;
    Ok(DownloadSize {
        id: manifest.id,
        name: manifest.name.clone(),
        tag: manifest.tag.clone(),
        number: manifest.number,
        download_size: placed
            .iter()
            .filter(|p| !p.present)
            .map(|p| {
                p.file.size - staged_bytes(&t.library, &p.file.key, p.file.size, &p.file.sha256)
            })
            .sum(),
        total_size: placed.iter().map(|p| p.file.size).sum(),
    })
}

fn to_wanted(index: usize, p: &Placed) -> Wanted {
    Wanted {
        index,
        name: p.file.name.clone(),
        key: p.file.key.clone(),
        size: p.file.size,
        sha256: p.file.sha256.clone(),
    }
}

/// Where each file goes and whether the library already has it: a local file is present
/// when its digest is the registry's (from the library's digest cache when unchanged), so
/// a layer of the right size but other bytes is fetched again.
fn place(library: &Library, cache: &DigestCache, manifest: &Manifest) -> ClientResult<Vec<Placed>> {
    let mut placed = Vec::new();
    for f in &manifest.files {
        validate_file_name(&f.name)
            .map_err(|e| ClientError::Invalid(format!("the registry sent a bad file name: {e}")))?;
        let dest = library.file_path(f.kind, &f.name, manifest.id);
        let present = match std::fs::metadata(&dest) {
            Ok(meta) if meta.len() == f.size => cache.sha256(&dest)? == f.sha256,
            _ => false,
        };
        placed.push(Placed {
            file: f.clone(),
            dest,
            present,
        });
    }
    Ok(placed)
}

/// A local VM with the template's name but another UUID would be shadowed: refuse.
fn check_conflict(library: &Library, manifest: &Manifest) -> ClientResult<()> {
    let clash = library
        .vms()?
        .into_iter()
        .find(|vm: &LocalVm| vm.name == manifest.name && vm.uuid != manifest.id);
    match clash {
        Some(vm) => Err(ClientError::Conflict(format!(
            "a local VM named {:?} exists with UUID {}, but the registry's template has id {}",
            vm.name, vm.uuid, manifest.id
        ))),
        None => Ok(()),
    }
}

/// The manifest's config as a library config.yaml, with the version's layers as `images:`.
fn pulled_config(manifest: &Manifest) -> Mapping {
    let mut config = serde_yaml::to_value(&manifest.config)
        .ok()
        .and_then(|v| match v {
            Value::Mapping(m) => Some(m),
            _ => None,
        })
        .unwrap_or_default();
    config.insert("uuid".into(), manifest.id.to_string().into());
    config.insert("name".into(), manifest.name.clone().into());
    let images: Vec<Value> = manifest
        .files
        .iter()
        .filter(|f| f.kind == FileKind::Image)
        .map(|f| f.name.clone().into())
        .collect();
    config.insert("images".into(), Value::Sequence(images));
    config
}

/// Deletes the layers and state files of the template's other tags that neither the pulled
/// version nor another local VM uses.
async fn shrink_others(t: &Transfer, manifest: &Manifest) -> ClientResult<Vec<String>> {
    let detail = t.registry.template(manifest.id).await?;
    let keep: BTreeSet<&str> = manifest.files.iter().map(|f| f.name.as_str()).collect();
    let used = t.library.used_by_others(manifest.id)?;
    let mut removed = Vec::new();
    let mut candidates = BTreeSet::new();
    for v in detail
        .versions
        .iter()
        .filter(|v| v.number != manifest.number)
    {
        candidates.extend(v.images.iter().map(|n| (n.clone(), true)));
        candidates.extend(v.state_files.iter().map(|n| (n.clone(), false)));
    }
    for (name, is_image) in candidates {
        if keep.contains(name.as_str())
            || used.contains(&(name.clone(), is_image))
            || validate_file_name(&name).is_err()
        {
            continue;
        }
        let kind = if is_image {
            FileKind::Image
        } else {
            FileKind::State
        };
        let path = t.library.file_path(kind, &name, manifest.id);
        match std::fs::remove_file(&path) {
            Ok(()) => removed.push(name),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(ClientError::io(&path, e)),
        }
    }
    Ok(removed)
}
