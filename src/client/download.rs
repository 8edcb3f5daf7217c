//! Fetches files into the library's staging area: several files and several byte ranges of
//! a big file at once, resumable, every file verified before the caller may use it.
//!
//! A follower per file hashes the bytes in order as soon as they are written (from the page
//! cache, while the download goes on), so verifying costs no second pass at the end; its
//! state is saved in the sidecar too.
//!
//! Each file is staged as `.vmreg/pull/k-<key>.part` with a sidecar `k-<key>.json` that
//! records how many bytes of each chunk are written, so a rerun after a crash or a cut
//! connection fetches only what is missing.

use std::collections::VecDeque;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::error::{ClientError, ClientResult};
use super::http::next_chunk;
use super::library::write_atomic;
use super::Transfer;
use crate::digest::ResumableSha256;

/// A file to fetch.
#[derive(Clone, Debug)]
pub struct Wanted {
    /// Position in the transfer, for progress reports.
    pub index: usize,
    /// Name shown to the user.
    pub name: String,
    /// Registry key.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// Expected lowercase hex SHA-256.
    pub sha256: String,
}

/// Bytes buffered before each positional write; bounds memory per stream.
const WRITE_BUF: usize = 1 << 20;
/// Sidecar updates happen at most once per this many bytes of a stream.
const SAVE_EVERY: u64 = 16 << 20;
/// A download stream with no data for this long is retried.
const IDLE: Duration = Duration::from_secs(60);
/// Bytes the follower hashes per blocking call.
const HASH_STEP: u64 = 16 << 20;
/// Attempts on one range without any progress before giving up; with the growing pauses
/// between them this rides out about 14 s of a registry restarting.
const ATTEMPTS: u32 = 8;

/// Chunk size: big files get up to 64 chunks so that ranges run in parallel, but no chunk
/// is smaller than 8 MiB (per-request overhead) or bigger than 256 MiB (refetch on crash).
fn chunk_size(size: u64) -> u64 {
    (size / 64).clamp(8 << 20, 256 << 20)
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
struct PartState {
    size: u64,
    sha256: String,
    chunk: u64,
    /// Bytes written at the start of each chunk.
    done: Vec<u64>,
    /// The hash of the file's first bytes, as far as the follower got.
    #[serde(default)]
    hashed: ResumableSha256,
}

impl PartState {
    fn fresh(size: u64, sha256: &str) -> Self {
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

    fn bounds(&self, chunk: usize) -> (u64, u64) {
        let start = chunk as u64 * self.chunk;
        (start, (start + self.chunk).min(self.size))
    }

    fn complete(&self, chunk: usize) -> bool {
        let (start, end) = self.bounds(chunk);
        start + self.done[chunk] >= end
    }

    /// Length of the prefix of the file that is completely written.
    fn contiguous(&self) -> u64 {
        for c in 0..self.done.len() {
            let (start, end) = self.bounds(c);
            if start + self.done[c] < end {
                return start + self.done[c];
            }
        }
        self.size
    }

    fn bytes_done(&self) -> u64 {
        self.done.iter().sum()
    }
}

/// One file being fetched, shared by the streams working on it.
struct Slot {
    wanted: Wanted,
    part: PathBuf,
    sidecar: PathBuf,
    file: std::fs::File,
    state: Mutex<PartState>,
    /// Woken whenever more bytes are written, for the follower.
    written: tokio::sync::Notify,
    /// Whether the reporter has been told the file started (when its first range does).
    announced: AtomicBool,
    saving: Mutex<()>,
}

impl Slot {
    fn save(&self) -> ClientResult<()> {
        // Streams of one file save in turn, so a later snapshot is never overwritten by
        // an earlier one.
        let _turn = self.saving.lock().unwrap_or_else(|p| p.into_inner());
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let json = serde_json::to_vec(&state)
            .map_err(|e| ClientError::Invalid(format!("sidecar: {e}")))?;
        write_atomic(&self.sidecar, &json)
    }
}

struct Job {
    slot: Arc<Slot>,
    chunk: usize,
}

/// Where the files of a successful fetch are staged, in the order asked.
pub struct Staged {
    /// Staged file and its sidecar, per wanted file.
    pub files: Vec<(PathBuf, PathBuf)>,
    /// Bytes received from the network.
    pub bytes_received: u64,
}

/// Fetches and verifies every wanted file into the staging directory.
pub async fn fetch_all(t: &Transfer, wanted: &[Wanted]) -> ClientResult<Staged> {
    let dir = t.library.state_dir().join("pull");
    std::fs::create_dir_all(&dir).map_err(|e| ClientError::io(&dir, e))?;
    let mut queue = VecDeque::new();
    let mut slots = Vec::new();
    let mut remaining = 0;
    for w in wanted {
        let slot = Arc::new(open_slot(&dir, w)?);
        let state = slot.state.lock().unwrap_or_else(|p| p.into_inner()).clone();
        remaining += w.size - state.bytes_done();
        let pending: Vec<usize> = (0..state.done.len())
            .filter(|&c| !state.complete(c))
            .collect();
        for chunk in pending {
            queue.push_back(Job {
                slot: slot.clone(),
                chunk,
            });
        }
        slots.push(slot);
    }
    t.reporter.start(wanted.len(), remaining);
    let shared = Arc::new(Shared {
        queue: Mutex::new(queue),
        failed: AtomicBool::new(false),
        received: AtomicU64::new(0),
    });
    let mut workers = Vec::new();
    for _ in 0..t.concurrency.max(1) {
        let (t, shared) = (t.clone(), shared.clone());
        workers.push(tokio::spawn(async move { worker(&t, &shared).await }));
    }
    for slot in &slots {
        let (t, shared, slot) = (t.clone(), shared.clone(), slot.clone());
        workers.push(tokio::spawn(
            async move { follow(&t, &shared, &slot).await },
        ));
    }
    let mut first_error = None;
    for w in workers {
        let result = w
            .await
            .unwrap_or_else(|e| Err(ClientError::Invalid(format!("transfer task failed: {e}"))));
        if let Err(e) = result {
            shared.failed.store(true, Ordering::SeqCst);
            // A checksum failure is the most useful error to show.
            if first_error.is_none() || matches!(e, ClientError::Checksum { .. }) {
                first_error = Some(e);
            }
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    Ok(Staged {
        files: slots
            .iter()
            .map(|s| (s.part.clone(), s.sidecar.clone()))
            .collect(),
        bytes_received: shared.received.load(Ordering::SeqCst),
    })
}

struct Shared {
    queue: Mutex<VecDeque<Job>>,
    failed: AtomicBool,
    received: AtomicU64,
}

fn open_slot(dir: &Path, w: &Wanted) -> ClientResult<Slot> {
    if !crate::digest::is_sha256_hex(&w.sha256) {
        return Err(ClientError::Invalid(format!(
            "{}: the registry gave no valid digest",
            w.name
        )));
    }
    let (part, sidecar) = staging_paths(dir, &w.key);
    let state =
        saved_state(&part, &sidecar, w).unwrap_or_else(|| PartState::fresh(w.size, &w.sha256));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&part)
        .map_err(|e| ClientError::io(&part, e))?;
    file.set_len(w.size)
        .map_err(|e| ClientError::io(&part, e))?;
    let slot = Slot {
        wanted: w.clone(),
        part,
        sidecar,
        file,
        state: Mutex::new(state),
        written: tokio::sync::Notify::new(),
        announced: AtomicBool::new(false),
        saving: Mutex::new(()),
    };
    slot.save()?;
    Ok(slot)
}

/// The staged file and sidecar of a registry key.
fn staging_paths(dir: &Path, key: &str) -> (PathBuf, PathBuf) {
    // Keys are one path segment at the registry; encoding keeps them one here too.
    let stem = format!("k-{}", super::http::encode(key));
    (
        dir.join(format!("{stem}.part")),
        dir.join(format!("{stem}.json")),
    )
}

/// The progress an earlier run saved for this file, if it still applies.
fn saved_state(part: &Path, sidecar: &Path, w: &Wanted) -> Option<PartState> {
    let part_len = std::fs::metadata(part).map(|m| m.len()).ok();
    let saved: PartState = serde_json::from_slice(&std::fs::read(sidecar).ok()?).ok()?;
    let applies = saved.size == w.size
        && saved.sha256 == w.sha256
        && part_len == Some(w.size)
        && valid(&saved);
    applies.then_some(saved)
}

/// Bytes of the file that an interrupted pull already staged in the library.
pub fn staged_bytes(library: &super::Library, w: &Wanted) -> u64 {
    let (part, sidecar) = staging_paths(&library.state_dir().join("pull"), &w.key);
    saved_state(&part, &sidecar, w)
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

async fn worker(t: &Transfer, shared: &Shared) -> ClientResult<()> {
    loop {
        if shared.failed.load(Ordering::SeqCst) {
            return Ok(());
        }
        let Some(job) = shared
            .queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop_front()
        else {
            return Ok(());
        };
        announce(t, &job.slot);
        if let Err(e) = fetch_chunk(t, shared, &job).await {
            shared.failed.store(true, Ordering::SeqCst);
            return Err(e);
        }
    }
}

/// Fetches what is missing of one chunk, retrying transient failures.
async fn fetch_chunk(t: &Transfer, shared: &Shared, job: &Job) -> ClientResult<()> {
    let mut attempts = 0;
    loop {
        if shared.failed.load(Ordering::SeqCst) {
            return Ok(());
        }
        let (start, end, before) = {
            let state = job.slot.state.lock().unwrap_or_else(|p| p.into_inner());
            let (start, end) = state.bounds(job.chunk);
            (start + state.done[job.chunk], end, state.done[job.chunk])
        };
        if start >= end {
            return Ok(());
        }
        match stream_range(t, shared, job, start, end).await {
            Ok(()) => {}
            Err(e) if retryable(&e) && !shared.failed.load(Ordering::SeqCst) => {
                let after = job
                    .slot
                    .state
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .done[job.chunk];
                attempts = if after > before { 1 } else { attempts + 1 };
                if attempts >= ATTEMPTS {
                    return Err(e);
                }
                t.reporter
                    .note(&format!("{}: {e}; retrying", job.slot.wanted.name));
                tokio::time::sleep(Duration::from_millis(500 * u64::from(attempts))).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Network failures and server-side errors may pass; a 4xx or a local error will not.
pub fn retryable(e: &ClientError) -> bool {
    match e {
        ClientError::Network(_) => true,
        ClientError::Registry { status, .. } => *status >= 500 || *status == 408 || *status == 429,
        _ => false,
    }
}

async fn stream_range(
    t: &Transfer,
    shared: &Shared,
    job: &Job,
    start: u64,
    end: u64,
) -> ClientResult<()> {
    let slot = &job.slot;
    let mut resp = t.registry.download(&slot.wanted.key, start, end).await?;
    let mut pos = start;
    let mut unsaved = 0u64;
    let mut buf = BytesMut::with_capacity(WRITE_BUF);
    while pos + (buf.len() as u64) < end {
        let Some(mut chunk) = next_chunk(&mut resp, IDLE).await? else {
            break;
        };
        let room = (end - pos - buf.len() as u64) as usize;
        // A server that ignored the range sends the whole file: keep only what was asked.
        chunk.truncate(room);
        if let Some(throttle) = &t.throttle {
            throttle.take(chunk.len() as u64).await;
        }
        shared
            .received
            .fetch_add(chunk.len() as u64, Ordering::Relaxed);
        t.reporter.advance(slot.wanted.index, chunk.len() as u64);
        buf.extend_from_slice(&chunk);
        if buf.len() >= WRITE_BUF {
            let n = write(slot, pos, buf.split().freeze()).await?;
            pos += n;
            unsaved += n;
            slot.state.lock().unwrap_or_else(|p| p.into_inner()).done[job.chunk] += n;
            slot.written.notify_one();
            if unsaved >= SAVE_EVERY {
                slot.save()?;
                unsaved = 0;
            }
        }
        if shared.failed.load(Ordering::SeqCst) {
            break;
        }
    }
    if !buf.is_empty() {
        let n = write(slot, pos, buf.split().freeze()).await?;
        pos += n;
        slot.state.lock().unwrap_or_else(|p| p.into_inner()).done[job.chunk] += n;
        slot.written.notify_one();
    }
    slot.save()?;
    if pos < end && !shared.failed.load(Ordering::SeqCst) {
        return Err(ClientError::Network(format!(
            "{}: the connection closed before the range ended",
            slot.wanted.name
        )));
    }
    Ok(())
}

async fn write(slot: &Arc<Slot>, pos: u64, data: bytes::Bytes) -> ClientResult<u64> {
    let slot = slot.clone();
    tokio::task::spawn_blocking(move || {
        slot.file
            .write_all_at(&data, pos)
            .map_err(|e| ClientError::io(&slot.part, e))?;
        Ok(data.len() as u64)
    })
    .await
    .unwrap_or_else(|e| Err(ClientError::Invalid(format!("write task failed: {e}"))))
}

/// Tells the reporter about a file once, when work on it begins.
fn announce(t: &Transfer, slot: &Slot) {
    if !slot.announced.swap(true, Ordering::SeqCst) {
        let done = slot
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .bytes_done();
        t.reporter
            .file_start(slot.wanted.index, &slot.wanted.name, slot.wanted.size, done);
    }
}

/// Hashes the staged file in order as its prefix gets written (reading back what was
/// just written, from the page cache), then checks the digest; a mismatch discards the
/// staged file.
async fn follow(t: &Transfer, shared: &Shared, slot: &Arc<Slot>) -> ClientResult<()> {
    let size = slot.wanted.size;
    let mut hasher = slot
        .state
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .hashed
        .clone();
    while hasher.len() < size {
        if shared.failed.load(Ordering::SeqCst) {
            return Ok(());
        }
        let ready = slot
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contiguous();
        if ready <= hasher.len() {
            // Each write wakes the follower; the timeout only bounds a missed wake-up.
            let _ = tokio::time::timeout(Duration::from_millis(200), slot.written.notified()).await;
            continue;
        }
        let upto = ready.min(hasher.len() + HASH_STEP);
        let s = slot.clone();
        hasher = tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; WRITE_BUF];
            while hasher.len() < upto {
                let n = (upto - hasher.len()).min(WRITE_BUF as u64) as usize;
                s.file
                    .read_exact_at(&mut buf[..n], hasher.len())
                    .map_err(|e| ClientError::io(&s.part, e))?;
                hasher.update(&buf[..n]);
            }
            Ok(hasher)
        })
        .await
        .unwrap_or_else(|e| Err(ClientError::Invalid(format!("hash task failed: {e}"))))?;
        slot.state.lock().unwrap_or_else(|p| p.into_inner()).hashed = hasher.clone();
    }
    let actual = hasher.finalize_hex();
    if actual != slot.wanted.sha256 {
        shared.failed.store(true, Ordering::SeqCst);
        let _ = std::fs::remove_file(&slot.part);
        let _ = std::fs::remove_file(&slot.sidecar);
        return Err(ClientError::Checksum {
            name: slot.wanted.name.clone(),
            expected: slot.wanted.sha256.clone(),
            actual,
        });
    }
    slot.save()?;
    t.reporter.file_done(slot.wanted.index);
    Ok(())
}

/// SHA-256 of a file as lowercase hex, read in bounded buffers.
pub fn sha256_file(path: &Path) -> ClientResult<String> {
    let mut file = std::fs::File::open(path).map_err(|e| ClientError::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; WRITE_BUF];
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
