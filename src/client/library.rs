//! The local VM library, laid out as on a Mac node:
//! `vm_lib/<uuid>/config.yaml` (+ `nvram`), `img_lib/<hex>.ank`, `state_lib/<hex>.ank`.
//! A VM's files are its nvram, the files its config names (`hard_drives[].file`,
//! `state_file`) and the parent layers of its optional `images:` list (top layer first).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_yaml::{Mapping, Value};
use uuid::Uuid;

use super::error::{ClientError, ClientResult};
use crate::model::{validate_file_name, FileKind};

/// A VM library directory.
#[derive(Clone, Debug)]
pub struct Library {
    root: PathBuf,
}

/// A VM found in the library.
#[derive(Clone, Debug)]
pub struct LocalVm {
    /// The VM's UUID (its directory name).
    pub uuid: Uuid,
    /// The VM's name from its config.
    pub name: String,
    /// The parsed config.yaml.
    pub config: Mapping,
}

/// One file of a local VM.
#[derive(Clone, Debug)]
pub struct LocalFile {
    /// Name in the library (`<hex>.ank`, `nvram`).
    pub name: String,
    /// What the file is.
    pub kind: FileKind,
    /// Where it is.
    pub path: PathBuf,
    /// Its size in bytes.
    pub size: u64,
    /// Its modification time (nanoseconds since the epoch; 0 when unknown).
    pub modified: u64,
}

impl Library {
    /// The library at `root` (which need not exist yet for a pull).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The library's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the client keeps its resumable state (push sessions, partial downloads).
    pub fn state_dir(&self) -> PathBuf {
        self.root.join(".vmreg")
    }

    /// Where a file of the given kind lives; `vm` names the VM directory for its nvram.
    pub fn file_path(&self, kind: FileKind, name: &str, vm: Uuid) -> PathBuf {
        match kind {
            FileKind::Image => self.root.join("img_lib").join(name),
            FileKind::State => self.root.join("state_lib").join(name),
            FileKind::Nvram => self.vm_dir(vm).join("nvram"),
        }
    }

    /// The directory of a VM.
    pub fn vm_dir(&self, uuid: Uuid) -> PathBuf {
        self.root.join("vm_lib").join(uuid.to_string())
    }

    /// Every VM of the library; unreadable entries are skipped.
    pub fn vms(&self) -> ClientResult<Vec<LocalVm>> {
        let dir = self.root.join("vm_lib");
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(ClientError::io(&dir, e)),
        };
        let mut vms = Vec::new();
        for entry in entries.flatten() {
            let Some(uuid) = entry
                .file_name()
                .to_str()
                .and_then(|n| Uuid::parse_str(n).ok())
            else {
                continue;
            };
            if let Ok(Some(vm)) = self.load(uuid) {
                vms.push(vm);
            }
        }
        vms.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(vms)
    }

    /// Reads the VM with that UUID, if the library has it.
    pub fn load(&self, uuid: Uuid) -> ClientResult<Option<LocalVm>> {
        let dir = self.vm_dir(uuid);
        // Older Anka versions name the file `<uuid>.yaml`.
        let Some(path) = [dir.join("config.yaml"), dir.join(format!("{uuid}.yaml"))]
            .into_iter()
            .find(|p| p.is_file())
        else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(&path).map_err(|e| ClientError::io(&path, e))?;
        let config: Mapping = serde_yaml::from_str(&text).map_err(|e| {
            ClientError::Invalid(format!("{}: not a VM config: {e}", path.display()))
        })?;
        let name = config
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        Ok(Some(LocalVm { uuid, name, config }))
    }

    /// Finds a VM by name or UUID.
    pub fn find(&self, name_or_uuid: &str) -> ClientResult<LocalVm> {
        if let Ok(uuid) = Uuid::parse_str(name_or_uuid) {
            if let Some(vm) = self.load(uuid)? {
                return Ok(vm);
            }
        }
        let all = self.vms()?;
        let names: Vec<String> = all.iter().map(|vm| vm.name.clone()).collect();
        let mut matches: Vec<LocalVm> = all
            .into_iter()
            .filter(|vm| vm.name == name_or_uuid)
            .collect();
        match matches.len() {
            0 => Err(ClientError::NotFound(format!(
                "local VM {name_or_uuid:?} not found in {}{}",
                self.root.display(),
                super::suggest::hint(name_or_uuid, &names, "local VMs")
            ))),
            1 => Ok(matches.remove(0)),
            _ => Err(ClientError::Invalid(format!(
                "several local VMs are named {name_or_uuid:?}: use its UUID"
            ))),
        }
    }

    /// The files of a VM, image layers top first, then state file, then nvram.
    pub fn files(&self, vm: &LocalVm) -> ClientResult<Vec<LocalFile>> {
        let mut files = Vec::new();
        let mut seen = BTreeSet::new();
        for name in referenced(&vm.config, FileKind::Image) {
            if seen.insert(name.clone()) {
                files.push(self.local_file(vm, FileKind::Image, name)?);
            }
        }
        for name in referenced(&vm.config, FileKind::State) {
            files.push(self.local_file(vm, FileKind::State, name)?);
        }
        let nvram = self.file_path(FileKind::Nvram, "nvram", vm.uuid);
        if nvram.is_file() {
            files.push(self.local_file(vm, FileKind::Nvram, "nvram".to_string())?);
        }
        Ok(files)
    }

    fn local_file(&self, vm: &LocalVm, kind: FileKind, name: String) -> ClientResult<LocalFile> {
        validate_file_name(&name)
            .map_err(|e| ClientError::Invalid(format!("VM {:?} names a bad file: {e}", vm.name)))?;
        let path = self.file_path(kind, &name, vm.uuid);
        let meta = std::fs::metadata(&path).map_err(|e| {
            ClientError::Invalid(format!(
                "VM {:?} needs {} which cannot be read: {e}",
                vm.name,
                path.display()
            ))
        })?;
        let modified = meta
            .modified()
            .ok()
            .and_then(|m| m.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Ok(LocalFile {
            name,
            kind,
            path,
            size: meta.len(),
            modified,
        })
    }

    /// Names of the layers and state files the library's VMs other than `except` use.
    pub fn used_by_others(&self, except: Uuid) -> ClientResult<BTreeSet<(String, bool)>> {
        let mut used = BTreeSet::new();
        for vm in self.vms()?.into_iter().filter(|vm| vm.uuid != except) {
            for name in referenced(&vm.config, FileKind::Image) {
                used.insert((name, true));
            }
            for name in referenced(&vm.config, FileKind::State) {
                used.insert((name, false));
            }
        }
        Ok(used)
    }

    /// Writes a VM's config.yaml atomically.
    pub fn write_config(&self, uuid: Uuid, config: &Mapping) -> ClientResult<()> {
        let dir = self.vm_dir(uuid);
        std::fs::create_dir_all(&dir).map_err(|e| ClientError::io(&dir, e))?;
        let text = serde_yaml::to_string(config)
            .map_err(|e| ClientError::Invalid(format!("cannot write the VM config: {e}")))?;
        write_atomic(&dir.join("config.yaml"), text.as_bytes())
    }
}

/// File names of a kind that a config refers to, in order (image layers top first).
pub fn referenced(config: &Mapping, kind: FileKind) -> Vec<String> {
    let text = |v: &Value| v.as_str().filter(|s| !s.is_empty()).map(str::to_string);
    match kind {
        FileKind::Image => {
            let drives = config
                .get("hard_drives")
                .and_then(Value::as_sequence)
                .into_iter()
                .flatten();
            let mut names: Vec<String> = drives
                .filter_map(|d| d.get("file").and_then(text))
                .collect();
            let images = config
                .get("images")
                .and_then(Value::as_sequence)
                .into_iter()
                .flatten();
            names.extend(images.filter_map(text));
            let mut seen = BTreeSet::new();
            names.retain(|n| seen.insert(n.clone()));
            names
        }
        FileKind::State => config
            .get("state_file")
            .and_then(text)
            .into_iter()
            .collect(),
        FileKind::Nvram => Vec::new(),
    }
}

/// Writes a file through a temporary sibling and a rename, so readers never see half of it.
pub fn write_atomic(path: &Path, data: &[u8]) -> ClientResult<()> {
    write_atomic_mode(path, data, 0o666)
}

/// Like [`write_atomic`], for a file only its owner may read (mode 0600 from its creation
/// on, so its content is never readable by others, even for a moment).
pub fn write_private(path: &Path, data: &[u8]) -> ClientResult<()> {
    write_atomic_mode(path, data, 0o600)
}

fn write_atomic_mode(path: &Path, data: &[u8], mode: u32) -> ClientResult<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    // Unique per call: two writers of one path must not share (and steal) a temporary.
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp{}-{seq}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    // A crashed earlier process of the same id may have left this name behind.
    let _ = std::fs::remove_file(&tmp);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .and_then(|mut f| f.write_all(data))
        .map_err(|e| ClientError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| ClientError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_atomic_writes_of_one_path_all_succeed() {
        let dir = std::env::temp_dir().join(format!("vmreg-atomic-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.json");
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let path = path.clone();
                std::thread::spawn(move || {
                    (0..200).all(|_| write_atomic(&path, format!("{i}").as_bytes()).is_ok())
                })
            })
            .collect();
        assert!(threads.into_iter().all(|t| t.join().unwrap()));
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            1,
            "no temporaries left behind"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_vm_lists_its_layers_top_first_then_state_then_nvram() {
        let lib = Library::new(
            std::env::temp_dir().join(format!("vmreg-lib-{}", Uuid::new_v4().simple())),
        );
        let uuid = Uuid::new_v4();
        let config = format!(
            "uuid: {uuid}\nname: a\nhard_drives:\n- file: top.ank\nimages:\n- top.ank\n- base.ank\nstate_file: s.ank\n"
        );
        std::fs::create_dir_all(lib.vm_dir(uuid)).unwrap();
        std::fs::create_dir_all(lib.root().join("img_lib")).unwrap();
        std::fs::create_dir_all(lib.root().join("state_lib")).unwrap();
        std::fs::write(lib.vm_dir(uuid).join("config.yaml"), config).unwrap();
        std::fs::write(lib.vm_dir(uuid).join("nvram"), b"n").unwrap();
        for f in ["img_lib/top.ank", "img_lib/base.ank", "state_lib/s.ank"] {
            std::fs::write(lib.root().join(f), b"x").unwrap();
        }
        let vm = lib.find("a").unwrap();
        let names: Vec<String> = lib
            .files(&vm)
            .unwrap()
            .into_iter()
            .map(|f| f.name)
            .collect();
        assert_eq!(names, ["top.ank", "base.ank", "s.ank", "nvram"]);
        assert!(lib.find("b").is_err());
        let _ = std::fs::remove_dir_all(lib.root());
    }
}
