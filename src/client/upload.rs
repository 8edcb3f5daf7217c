//! Uploads one file of a push: streamed from disk, hashed while read, resumed from the
//! bytes the registry holds after any interruption.

use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::error::{ClientError, ClientResult};
use super::journal::Journal;
use super::Transfer;
use crate::digest::ResumableSha256;

/// Bytes read from disk per body chunk.
const READ_CHUNK: u64 = 1 << 20;
/// Body chunks queued between the reading thread and the connection; bounds memory.
const QUEUE: usize = 4;
/// An upload with no byte sent and no answer for this long is cut and resumed. Generous:
/// after the last byte the registry still stores the parts in flight.
const STALL: Duration = Duration::from_secs(300);
/// Attempts without progress before giving up (about 14 s of pauses in all).
const ATTEMPTS: u32 = 8;

/// One file to upload.
#[derive(Clone, Debug)]
pub struct UploadJob {
    /// Position in the transfer, for progress reports.
    pub index: usize,
    /// Name shown to the user.
    pub name: String,
    /// Registry key.
    pub key: String,
    /// Local path.
    pub path: PathBuf,
    /// Size in bytes.
    pub size: u64,
    /// The registry's part size: bodies are cut at its multiples.
    pub part_size: u64,
    /// Bytes the registry already holds from the start of the file.
    pub received: u64,
    /// Every byte range `[start, end)` the registry holds (a file sent as ranges).
    pub durable: Vec<[u64; 2]>,
}

/// What a push moved: bytes sent to the registry and bytes read from local files (to send
/// or to hash), so that a run can show it read each file at most once.
#[derive(Debug, Default)]
pub struct Meter {
    /// Bytes sent in upload bodies.
    pub sent: AtomicU64,
    /// Bytes read from local files.
    pub read: AtomicU64,
}

/// Uploads what the registry lacks of the file, hashing it as it is read; returns the
/// file's SHA-256.
pub async fn upload_file(
    t: &Transfer,
    session: &str,
    job: &UploadJob,
    journal: &Arc<Journal>,
    meter: &Arc<Meter>,
) -> ClientResult<String> {
    let mut received = job.received.min(job.size);
    let mut attempts = 0;
    let mut sent_once = false;
    // False while the registry could not tell how much it holds (it was restarting): a
    // request from where this client last started would make it send again what the
    // registry had already made durable, so ask again before sending anything.
    let mut position_known = true;
    t.reporter
        .file_start(job.index, &job.name, job.size, received);
    loop {
        if !position_known {
            match server_received(t, session, &job.key).await {
                Ok(n) => {
                    position_known = true;
                    if n > received {
                        attempts = 0;
                    }
                    received = n.min(job.size);
                    t.reporter
                        .file_start(job.index, &job.name, job.size, received);
                }
                Err(e) if e.is_transient() => {
                    attempts += 1;
                    if attempts >= ATTEMPTS {
                        return Err(e);
                    }
                    tokio::time::sleep(Duration::from_millis(500 * u64::from(attempts))).await;
                    continue;
                }
                Err(e) => return Err(e),
            }
        }
        let hasher = resume_hasher(journal, job, received, meter).await?;
        // An empty file still needs one (empty) upload so that the registry stores it.
        if received >= job.size && (job.size > 0 || sent_once) {
            let digest = hasher.finalize_hex();
            journal.finished(&job.key, &digest)?;
            t.reporter.file_done(job.index);
            return Ok(digest);
        }
        sent_once = true;
        let activity = Arc::new(Activity::new());
        let body = body_from(
            t,
            job,
            received,
            hasher,
            journal.clone(),
            meter.clone(),
            activity.clone(),
        );
        let upload = t
            .registry
            .upload(session, &job.key, received, job.size - received, body);
        let result = tokio::select! {
            result = upload => result,
            () = activity.stalled(STALL) => Err(ClientError::Network(format!(
                "{}: upload stalled for {} s",
                job.name,
                STALL.as_secs()
            ))),
        };
        // The connection would otherwise go on sending the body after a refusal: the server
        // reads and discards it for a while, and that can be the whole rest of the file.
        activity.answered();
        let now = match result {
            Ok(progress) => progress.received,
            Err(ClientError::Conflict(_)) if job.size == 0 => job.size,
            Err(e) if e.is_transient() || matches!(e, ClientError::Conflict(_)) => {
                t.reporter.note(&format!("{}: {e}; resuming", job.name));
                match server_received(t, session, &job.key).await {
                    Ok(n) => n,
                    Err(e2) if e2.is_transient() => {
                        position_known = false;
                        received
                    }
                    Err(e2) => return Err(e2),
                }
            }
            Err(e) => return Err(e),
        };
        if now > received {
            attempts = 0;
        } else {
            no_progress(&mut attempts, &job.name).await?;
        }
        received = now.min(job.size);
        t.reporter
            .file_start(job.index, &job.name, job.size, received);
    }
}

/// Counts an attempt that moved nothing and pauses before the next, longer each time;
/// gives up after [`ATTEMPTS`] in a row.
pub(super) async fn no_progress(attempts: &mut u32, name: &str) -> ClientResult<()> {
    *attempts += 1;
    if *attempts >= ATTEMPTS {
        return Err(ClientError::Network(format!(
            "{name}: upload makes no progress; giving up"
        )));
    }
    tokio::time::sleep(Duration::from_millis(500 * u64::from(*attempts))).await;
    Ok(())
}

/// How many bytes of the file the registry holds.
async fn server_received(t: &Transfer, session: &str, key: &str) -> ClientResult<u64> {
    let plan = t.registry.push_status(session).await?.ok_or_else(|| {
        ClientError::Invalid(format!(
            "push session {session} expired at the registry; run the push again"
        ))
    })?;
    plan.files
        .iter()
        .find(|f| f.key == key)
        .map(|f| f.received)
        .ok_or_else(|| {
            ClientError::Invalid(format!("push session {session} no longer lists {key}"))
        })
}

/// The hash state after the first `upto` bytes: from the journal's nearest checkpoint,
/// reading forward from disk only what lies between it and `upto`.
async fn resume_hasher(
    journal: &Arc<Journal>,
    job: &UploadJob,
    upto: u64,
    meter: &Arc<Meter>,
) -> ClientResult<ResumableSha256> {
    let mut hasher = journal
        .checkpoint_before(&job.key, upto)
        .unwrap_or_default();
    if hasher.len() == upto {
        return Ok(hasher);
    }
    let path = job.path.clone();
    let meter = meter.clone();
    tokio::task::spawn_blocking(move || {
        let mut file = std::fs::File::open(&path).map_err(|e| ClientError::io(&path, e))?;
        file.seek(SeekFrom::Start(hasher.len()))
            .map_err(|e| ClientError::io(&path, e))?;
        let mut buf = vec![0u8; READ_CHUNK as usize];
        while hasher.len() < upto {
            let want = (upto - hasher.len()).min(READ_CHUNK) as usize;
            file.read_exact(&mut buf[..want])
                .map_err(|e| ClientError::io(&path, e))?;
            meter.read.fetch_add(want as u64, Ordering::Relaxed);
            hasher.update(&buf[..want]);
        }
        Ok(hasher)
    })
    .await
    .unwrap_or_else(|e| Err(ClientError::Invalid(format!("hash task failed: {e}"))))
}

/// A request body streaming the file from `start`, read and hashed on a blocking thread
/// that records a hash checkpoint at every part boundary.
fn body_from(
    t: &Transfer,
    job: &UploadJob,
    start: u64,
    mut hasher: ResumableSha256,
    journal: Arc<Journal>,
    meter: Arc<Meter>,
    activity: Arc<Activity>,
) -> reqwest::Body {
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(QUEUE);
    let (path, size, part, key) = (
        job.path.clone(),
        job.size,
        job.part_size.max(1),
        job.key.clone(),
    );
    let read_meter = meter.clone();
    tokio::task::spawn_blocking(move || {
        let mut read = || -> std::io::Result<()> {
            let mut file = std::fs::File::open(&path)?;
            file.seek(SeekFrom::Start(start))?;
            let mut pos = start;
            while pos < size {
                let boundary = (pos / part + 1) * part;
                let n = READ_CHUNK.min(boundary - pos).min(size - pos) as usize;
                let mut buf = vec![0u8; n];
                file.read_exact(&mut buf)?;
                read_meter.read.fetch_add(n as u64, Ordering::Relaxed);
                hasher.update(&buf);
                pos += n as u64;
                if pos % part == 0 || pos == size {
                    // A failed journal write only costs re-reading on resume.
                    let _ = journal.checkpoint(&key, &hasher);
                }
                if tx.blocking_send(Ok(Bytes::from(buf))).is_err() {
                    return Ok(());
                }
            }
            Ok(())
        };
        if let Err(e) = read() {
            let _ = tx.blocking_send(Err(std::io::Error::new(
                e.kind(),
                format!("{}: {e}", path.display()),
            )));
        }
    });
    let reporter = t.reporter.clone();
    let throttle = t.throttle.clone();
    let index = job.index;
    let stream = futures_util::stream::unfold(rx, move |mut rx| {
        let (reporter, throttle, meter, activity) = (
            reporter.clone(),
            throttle.clone(),
            meter.clone(),
            activity.clone(),
        );
        async move {
            let item = rx.recv().await?;
            if activity.is_answered() {
                // Failing the body makes the connection drop the rest of the request.
                return Some((
                    Err(std::io::Error::other("the registry answered already")),
                    rx,
                ));
            }
            if let Ok(bytes) = &item {
                if let Some(throttle) = &throttle {
                    throttle.take(bytes.len() as u64).await;
                }
                meter.sent.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                activity.touch();
                reporter.advance(index, bytes.len() as u64);
            }
            Some((item, rx))
        }
    });
    reqwest::Body::wrap_stream(stream)
}

/// When an upload last moved a byte, and whether the registry answered it.
pub struct Activity {
    start: Instant,
    last_ms: AtomicU64,
    answered: AtomicBool,
}

impl Activity {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            answered: AtomicBool::new(false),
        }
    }

    fn answered(&self) {
        self.answered.store(true, Ordering::SeqCst);
    }

    fn is_answered(&self) -> bool {
        self.answered.load(Ordering::SeqCst)
    }

    fn touch(&self) {
        self.last_ms
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Returns once nothing has moved for `idle`.
    async fn stalled(&self, idle: Duration) {
        loop {
            let quiet = self
                .start
                .elapsed()
                .saturating_sub(Duration::from_millis(self.last_ms.load(Ordering::Relaxed)));
            if quiet >= idle {
                return;
            }
            tokio::time::sleep(idle - quiet).await;
        }
    }
}
