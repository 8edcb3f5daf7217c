//! The staging area of pulls: `.vmreg/pull/k-<key>.part` holds a file as it arrives and the
//! sidecar `k-<key>.json` records how many bytes of each chunk are written and how far the
//! in-order hash got, so that a rerun after a crash or a cut connection fetches and hashes
//! only what is missing.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::error::{ClientError, ClientResult};
use crate::digest::ResumableSha256;

/// Chunk size: big files get up to 64 chunks so that ranges run in parallel, but no chunk
/// is smaller than 8 MiB (per-request overhead) or bigger than 256 MiB (refetch on crash).
fn chunk_size(size: u64) -> u64 {
    (size / 64).clamp(8 << 20, 256 << 20)
}

/// What the sidecar of a staged file records.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PartState {
    /// The file's size.
    pub size: u64,
    /// The file's expected digest.
    pub sha256: String,
    /// Bytes per chunk (the last may be shorter).
    pub chunk: u64,
    /// Bytes written at the start of each chunk.
    pub done: Vec<u64>,
    /// The hash of the file's first bytes, as far as the follower got.
    #[serde(default)]
    pub hashed: ResumableSha256,
}

impl PartState {
    /// Nothing staged yet.
    pub fn fresh(size: u64, sha256: &str) -> Self {
        let chunk = chunk_size(size);
        let count = size.div_ceil(chunk).max(1) as usize;
        Self {
            size,
            sha256: sha256.to_string(),
            chunk,
            done: vec![0; count],
            hashed: ResumableSha256::new(),
        }
    }

    /// Byte range of a chunk.
    pub fn bounds(&self, chunk: usize) -> (u64, u64) {
        let start = chunk as u64 * self.chunk;
        (start, (start + self.chunk).min(self.size))
    }

    /// True when every byte of the chunk is written.
    pub fn complete(&self, chunk: usize) -> bool {
        let (start, end) = self.bounds(chunk);
        start + self.done[chunk] >= end
    }

    /// Length of the prefix of the file that is completely written.
    pub fn contiguous(&self) -> u64 {
        for c in 0..self.done.len() {
            let (start, end) = self.bounds(c);
            if start + self.done[c] < end {
                return start + self.done[c];
            }
        }
        self.size
    }

    /// Bytes written in all.
    pub fn bytes_done(&self) -> u64 {
        self.done.iter().sum()
    }
}

/// The staged file and sidecar of a registry key.
pub fn staging_paths(dir: &Path, key: &str) -> (PathBuf, PathBuf) {
    // Keys are one path segment at the registry; encoding keeps them one here too.
    let stem = format!("k-{}", super::http::encode(key));
    (
        dir.join(format!("{stem}.part")),
        dir.join(format!("{stem}.json")),
    )
}

/// The progress an earlier run saved for this file, if it still applies.
pub fn saved_state(part: &Path, sidecar: &Path, size: u64, sha256: &str) -> Option<PartState> {
    let part_len = std::fs::metadata(part).map(|m| m.len()).ok();
    let saved: PartState = serde_json::from_slice(&std::fs::read(sidecar).ok()?).ok()?;
    let applies =
        saved.size == size && saved.sha256 == sha256 && part_len == Some(size) && valid(&saved);
    applies.then_some(saved)
}

/// Bytes of the file that an interrupted pull already staged in the library.
pub fn staged_bytes(library: &super::Library, key: &str, size: u64, sha256: &str) -> u64 {
    let (part, sidecar) = staging_paths(&library.state_dir().join("pull"), key);
    saved_state(&part, &sidecar, size, sha256)
        .map(|s| s.bytes_done())
        .unwrap_or(0)
}

/// A sidecar that matches the chunking rule and whose counts stay within their chunks.
fn valid(s: &PartState) -> bool {
    let fresh = PartState::fresh(s.size, &s.sha256);
    s.chunk == fresh.chunk
        && s.done.len() == fresh.done.len()
        && (0..s.done.len()).all(|c| {
            let (start, end) = s.bounds(c);
            s.done[c] <= end - start
        })
        && s.hashed.len() <= s.contiguous()
}

/// SHA-256 of a file as lowercase hex, read in bounded buffers.
pub fn sha256_file(path: &Path) -> ClientResult<String> {
    let mut file = std::fs::File::open(path).map_err(|e| ClientError::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(|e| ClientError::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_the_file() {
        for size in [0u64, 1, 8 << 20, (8 << 20) + 1, 3 << 30] {
            let s = PartState::fresh(size, "x");
            let covered: u64 = (0..s.done.len())
                .map(|c| s.bounds(c).1 - s.bounds(c).0)
                .sum();
            assert_eq!(covered, size, "size {size}");
            assert!(valid(&s));
        }
    }

    #[test]
    fn rejects_a_sidecar_with_counts_past_their_chunk() {
        let mut s = PartState::fresh(20 << 20, "x");
        s.done[0] = s.chunk + 1;
        assert!(!valid(&s));
    }
}
