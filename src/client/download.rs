//! Fetches files into the library's staging area: several files and several byte ranges of
//! a big file at once, resumable, every file verified before the caller may use it.
//!
//! A follower per file hashes the bytes in order as soon as they are written, while the
//! download goes on, so verifying costs no second pass at the end: from the buffers just
//! written when they are still in memory ([`super::fresh`]), else read back from the page
//! cache. Files and their progress live in the staging area ([`super::staging`]).

use std::collections::VecDeque;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};

use super::error::{ClientError, ClientResult};
use super::fresh::{Batch, Fresh};
use super::http::next_chunk;
use super::library::write_atomic;
use super::staging::{saved_state, staging_paths, PartState};
use super::Transfer;

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
/// Network chunks at least this big are written as they came; smaller ones are copied
/// together first, so that a batch costs few writes.
const KEEP_CHUNK: usize = 64 << 10;
/// Written bytes kept in memory for the hash, for all the files of a pull together.
const HASH_AHEAD: usize = 16 << 20;
/// Sidecar updates happen at most once per this many bytes of a stream.
const SAVE_EVERY: u64 = 16 << 20;
/// A download stream with no data for this long is retried.
const IDLE: Duration = Duration::from_secs(60);
/// Bytes the follower hashes per blocking call.
const HASH_STEP: u64 = 16 << 20;
/// Attempts on one range without any progress before giving up; with the growing pauses
/// between them this rides out about 14 s of a registry restarting.
const ATTEMPTS: u32 = 8;

/// One file being fetched, shared by the streams working on it.
struct Slot {
    wanted: Wanted,
    part: PathBuf,
    sidecar: PathBuf,
    file: std::fs::File,
    state: Mutex<PartState>,
    /// Woken whenever more bytes are written, for the follower.
    written: tokio::sync::Notify,
    /// Written bytes the follower has not hashed yet, while memory allows.
    fresh: Fresh,
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
    let pool = Arc::new(AtomicUsize::new(0));
    for w in wanted {
        let slot = Arc::new(open_slot(&dir, w, Fresh::new(pool.clone(), HASH_AHEAD))?);
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

fn open_slot(dir: &Path, w: &Wanted, fresh: Fresh) -> ClientResult<Slot> {
    if !crate::digest::is_sha256_hex(&w.sha256) {
        return Err(ClientError::Invalid(format!(
            "{}: the registry gave no valid digest",
            w.name
        )));
    }
    let (part, sidecar) = staging_paths(dir, &w.key);
    let state = saved_state(&part, &sidecar, w.size, &w.sha256)
        .unwrap_or_else(|| PartState::fresh(w.size, &w.sha256));
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
        fresh,
        announced: AtomicBool::new(false),
        saving: Mutex::new(()),
    };
    slot.save()?;
    Ok(slot)
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
            Err(e) if e.is_transient() && !shared.failed.load(Ordering::SeqCst) => {
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
    let mut batch = Pending::default();
    while pos + (batch.len as u64) < end {
        let Some(mut chunk) = next_chunk(&mut resp, IDLE).await? else {
            break;
        };
        let room = (end - pos - batch.len as u64) as usize;
        // A server that ignored the range sends the whole file: keep only what was asked.
        chunk.truncate(room);
        if let Some(throttle) = &t.throttle {
            throttle.take(chunk.len() as u64).await;
        }
        shared
            .received
            .fetch_add(chunk.len() as u64, Ordering::Relaxed);
        t.reporter.advance(slot.wanted.index, chunk.len() as u64);
        batch.push(chunk);
        if batch.len >= WRITE_BUF {
            let n = write(slot, job.chunk, pos, batch.take()).await?;
            pos += n;
            unsaved += n;
            if unsaved >= SAVE_EVERY {
                slot.save()?;
                unsaved = 0;
            }
        }
        if shared.failed.load(Ordering::SeqCst) {
            break;
        }
    }
    if batch.len > 0 {
        pos += write(slot, job.chunk, pos, batch.take()).await?;
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

/// Network chunks gathered for one write: big ones as they came (no copy), runs of small
/// ones copied together.
#[derive(Default)]
struct Pending {
    batch: Batch,
    small: BytesMut,
    len: usize,
}

impl Pending {
    fn push(&mut self, chunk: Bytes) {
        self.len += chunk.len();
        if chunk.len() >= KEEP_CHUNK {
            self.seal();
            self.batch.push(chunk);
        } else {
            self.small.extend_from_slice(&chunk);
        }
    }

    fn seal(&mut self) {
        if !self.small.is_empty() {
            self.batch.push(self.small.split().freeze());
        }
    }

    fn take(&mut self) -> Batch {
        self.seal();
        self.len = 0;
        std::mem::take(&mut self.batch)
    }
}

/// Writes a batch at `pos` of chunk `chunk`, offers it to the follower's memory and counts
/// it as done; returns its length.
async fn write(slot: &Arc<Slot>, chunk: usize, pos: u64, batch: Batch) -> ClientResult<u64> {
    let s = slot.clone();
    let (batch, n) = tokio::task::spawn_blocking(move || {
        let mut at = pos;
        for buf in &batch {
            s.file
                .write_all_at(buf, at)
                .map_err(|e| ClientError::io(&s.part, e))?;
            at += buf.len() as u64;
        }
        Ok((batch, at - pos))
    })
    .await
    .unwrap_or_else(|e| Err(ClientError::Invalid(format!("write task failed: {e}"))))?;
    // Kept before it counts as written: the follower reads back only what it cannot find.
    slot.fresh.keep(pos, batch);
    slot.state.lock().unwrap_or_else(|p| p.into_inner()).done[chunk] += n;
    slot.written.notify_one();
    Ok(n)
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
            let mut buf = Vec::new();
            while hasher.len() < upto {
                let at = hasher.len();
                // A kept batch lies wholly within what is written (it was kept before it
                // counted as written), so it may run past `upto`.
                if let Some(batch) = s.fresh.take(at) {
                    batch.iter().for_each(|b| hasher.update(b));
                    continue;
                }
                let stop = s.fresh.next_after(at).map_or(upto, |next| next.min(upto));
                let n = (stop - at).min(WRITE_BUF as u64) as usize;
                buf.resize(n, 0);
                s.file
                    .read_exact_at(&mut buf, at)
                    .map_err(|e| ClientError::io(&s.part, e))?;
                hasher.update(&buf);
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
