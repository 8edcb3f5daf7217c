//! SHA-256 of local files, remembered in `<lib>/.vmreg/digests.json` by path, size,
//! modification time and inode, so that a second push or pull of the same files reads
//! nothing; any change to one of the four hashes the file again.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::error::{ClientError, ClientResult};
use super::staging::sha256_file;

/// Entries kept at most; the oldest paths beyond are forgotten.
const MAX_ENTRIES: usize = 10_000;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Entry {
    size: u64,
    mtime_ns: i128,
    inode: u64,
    sha256: String,
}

impl Entry {
    fn of(meta: &std::fs::Metadata, sha256: String) -> Self {
        Self {
            size: meta.len(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
            inode: meta.ino(),
            sha256,
        }
    }
}

/// The digest cache of one library.
pub struct DigestCache {
    path: PathBuf,
    entries: Mutex<BTreeMap<String, Entry>>,
}

impl DigestCache {
    /// The cache kept under `state_dir`; an unreadable cache starts empty.
    pub fn open(state_dir: &Path) -> Self {
        let path = state_dir.join("digests.json");
        let entries = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        Self {
            path,
            entries: Mutex::new(entries),
        }
    }

    /// The file's remembered SHA-256 when it is unchanged since; reads nothing of it.
    pub fn known(&self, file: &Path) -> Option<String> {
        let meta = std::fs::metadata(file).ok()?;
        let known = self
            .entries
            .lock()
            .ok()?
            .get(&file.display().to_string())
            .cloned()?;
        (known == Entry::of(&meta, known.sha256.clone())).then_some(known.sha256)
    }

    /// Records the digest of bytes read from a file while it was sent, when the file is
    /// still as `before` (its metadata when the reading began): a file touched meanwhile
    /// may hold other bytes than those hashed.
    pub fn record_unchanged(&self, file: &Path, sha256: &str, before: &std::fs::Metadata) {
        if let Ok(after) = std::fs::metadata(file) {
            if Entry::of(&after, String::new()) == Entry::of(before, String::new()) {
                self.remember(
                    file.display().to_string(),
                    Entry::of(&after, sha256.to_string()),
                );
            }
        }
    }

    /// The file's SHA-256: remembered when the file is unchanged, else read and remembered.
    pub fn sha256(&self, file: &Path) -> ClientResult<String> {
        if let Some(known) = self.known(file) {
            return Ok(known);
        }
        let meta = std::fs::metadata(file).map_err(|e| ClientError::io(file, e))?;
        let digest = sha256_file(file)?;
        // The file may have changed while it was read: remember only what was stable.
        self.record_unchanged(file, &digest, &meta);
        Ok(digest)
    }

    /// Records the digest of a file just written with verified bytes.
    pub fn record(&self, file: &Path, sha256: &str) {
        if let Ok(meta) = std::fs::metadata(file) {
            self.remember(
                file.display().to_string(),
                Entry::of(&meta, sha256.to_string()),
            );
        }
    }

    fn remember(&self, key: String, entry: Entry) {
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        entries.insert(key, entry);
        while entries.len() > MAX_ENTRIES {
            entries.pop_first();
        }
        // A cache that cannot be written only costs hashing again next time.
        if let Ok(json) = serde_json::to_vec(&*entries) {
            let tmp = self.path.with_extension("json.tmp");
            if std::fs::write(&tmp, json).is_ok() {
                let _ = std::fs::rename(&tmp, &self.path);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_changed_in_place_is_hashed_again() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("layer.ank");
        std::fs::write(&file, b"first").unwrap();
        let cache = DigestCache::open(dir.path());
        let first = cache.sha256(&file).unwrap();
        assert_eq!(first, crate::digest::sha256_hex(b"first"));
        assert_eq!(DigestCache::open(dir.path()).sha256(&file).unwrap(), first);

        // Same size, other bytes, a later mtime.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&file, b"other").unwrap();
        assert_eq!(
            cache.sha256(&file).unwrap(),
            crate::digest::sha256_hex(b"other")
        );
    }

    #[test]
    fn an_unchanged_file_is_not_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("layer.ank");
        std::fs::write(&file, b"bytes").unwrap();
        let cache = DigestCache::open(dir.path());
        let meta = std::fs::metadata(&file).unwrap();
        // A remembered digest is answered without reading the file.
        cache.remember(
            file.display().to_string(),
            Entry::of(&meta, "remembered".into()),
        );
        assert_eq!(cache.sha256(&file).unwrap(), "remembered");
    }
}
