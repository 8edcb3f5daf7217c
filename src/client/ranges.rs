//! Uploads one large file as several ranges at once: one thread reads the file in order,
//! hashing it as it goes (so it is read and hashed once), and hands each part the registry
//! lacks to one of several connections, each sending it as a body of its own at the part's
//! offset. The registry records parts in any order; after an interruption a rerun sends
//! only the parts outside the durable ranges it reports.

use std::io::{Read, Seek, SeekFrom};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, Mutex, OwnedSemaphorePermit, Semaphore};

use super::error::{ClientError, ClientResult};
use super::journal::Journal;
use super::upload::{no_progress, Meter, UploadJob};
use super::Transfer;
use crate::digest::ResumableSha256;

/// A part with no answer for this long is cut and sent again.
const STALL: Duration = Duration::from_secs(300);
/// Bytes of parts read and not yet sent that a push holds per file: with parts larger
/// than a quarter of it, fewer ranges are in flight, so memory stays bounded whatever
/// part size the registry asks for.
const PART_MEMORY: u64 = 32 << 20;

/// How many parts of `part_size` may be in memory, and so in flight, at once.
fn parts_in_memory(ranges: usize, part_size: u64) -> usize {
    let fit = (PART_MEMORY / part_size.max(1)).max(1);
    ranges.clamp(1, usize::try_from(fit).unwrap_or(usize::MAX))
}

/// The parts of `job` (numbered from 1) outside the `durable` byte ranges.
fn missing_parts(job: &UploadJob, durable: &[[u64; 2]]) -> Vec<u32> {
    let part = job.part_size.max(1);
    let count = job.size.div_ceil(part) as u32;
    (1..=count)
        .filter(|n| {
            let start = u64::from(n - 1) * part;
            let end = (start + part).min(job.size);
            !durable.iter().any(|[s, e]| *s <= start && end <= *e)
        })
        .collect()
}

/// Uploads what the registry lacks of the file over `ranges` connections; returns the
/// file's SHA-256.
pub async fn upload_ranges(
    t: &Transfer,
    session: &str,
    job: &UploadJob,
    ranges: usize,
    journal: &Arc<Journal>,
    meter: &Arc<Meter>,
) -> ClientResult<String> {
    let mut durable = job.durable.clone();
    if durable.is_empty() && job.received > 0 {
        durable.push([0, job.received.min(job.size)]);
    }
    let mut hasher = Some(
        journal
            .checkpoint_before(&job.key, job.size)
            .unwrap_or_default(),
    );
    let mut fruitless = 0;
    loop {
        let missing = missing_parts(job, &durable);
        let held: u64 = durable.iter().map(|[s, e]| e - s).sum();
        t.reporter.file_start(job.index, &job.name, job.size, held);
        // A file whose parts are all durable but which the registry has not checked yet
        // (its last request was cut) is finished by an empty request at its end.
        let finishing = missing.is_empty();
        let round = send_round(
            t,
            session,
            job,
            ranges,
            missing,
            hasher.take(),
            journal,
            meter,
        );
        let (digest, done) = round.await?;
        // A round cut short hashed as far as its journal checkpoint.
        hasher = digest.or_else(|| journal.checkpoint_before(&job.key, job.size));
        if done {
            let Some(hasher) = hasher.filter(|h| h.len() == job.size) else {
                return Err(ClientError::Invalid(format!(
                    "{}: the file was not hashed to its end",
                    job.name
                )));
            };
            let digest = hasher.finalize_hex();
            journal.finished(&job.key, &digest)?;
            t.reporter.file_done(job.index);
            return Ok(digest);
        }
        let before = held;
        durable = server_durable(t, session, &job.key).await?;
        let now: u64 = durable.iter().map(|[s, e]| e - s).sum();
        if now > before && !finishing {
            fruitless = 0;
        } else {
            no_progress(&mut fruitless, &job.name).await?;
        }
    }
}

/// The durable byte ranges of the file, as the registry reports them.
async fn server_durable(t: &Transfer, session: &str, key: &str) -> ClientResult<Vec<[u64; 2]>> {
    let plan = t.registry.push_status(session).await?.ok_or_else(|| {
        ClientError::Invalid(format!(
            "push session {session} expired at the registry; run the push again"
        ))
    })?;
    let file = plan.files.iter().find(|f| f.key == key).ok_or_else(|| {
        ClientError::Invalid(format!("push session {session} no longer lists {key}"))
    })?;
    let mut durable = file.durable.clone();
    if durable.is_empty() && file.received > 0 {
        durable.push([0, file.received]);
    }
    Ok(durable)
}

/// Sends the `missing` parts (or, with none, the empty request that finishes the file)
/// over `ranges` connections while the file is read once in order, hashed from `hasher`
/// when given. Answers the hash state when it was taken to the end, and whether the
/// registry reported the file complete.
#[allow(clippy::too_many_arguments)]
async fn send_round(
    t: &Transfer,
    session: &str,
    job: &UploadJob,
    ranges: usize,
    missing: Vec<u32>,
    hasher: Option<ResumableSha256>,
    journal: &Arc<Journal>,
    meter: &Arc<Meter>,
) -> ClientResult<(Option<ResumableSha256>, bool)> {
    let ranges = parts_in_memory(ranges, job.part_size);
    // A part holds a permit from before it is read until it is sent: the parts in memory
    // are those in flight, never a queue of them besides.
    let permits = Arc::new(Semaphore::new(ranges));
    let (tx, rx) = mpsc::channel::<std::io::Result<Part>>(ranges);
    let reader = {
        let (job, journal, meter) = (job.clone(), journal.clone(), meter.clone());
        let missing = missing.clone();
        let runtime = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            let permit = || runtime.block_on(permits.clone().acquire_owned()).ok();
            read_parts(&job, &missing, hasher, &journal, &meter, permit, &tx)
        })
    };
    let rx = Arc::new(Mutex::new(rx));
    let mut senders = Vec::new();
    for _ in 0..ranges {
        let (t, session, job, rx, meter) = (
            t.clone(),
            session.to_string(),
            job.clone(),
            rx.clone(),
            meter.clone(),
        );
        senders.push(tokio::spawn(async move {
            let mut complete = false;
            loop {
                let next = rx.lock().await.recv().await;
                let (number, part, _permit) = match next {
                    Some(Ok(p)) => p,
                    Some(Err(e)) => return Err(ClientError::io(&job.path, e)),
                    None => return Ok(complete),
                };
                complete |= send_part(&t, &session, &job, number, part, &meter).await?;
            }
        }));
    }
    let mut complete = false;
    let mut failed = None;
    for sender in senders {
        match sender.await {
            Ok(Ok(done)) => complete |= done,
            Ok(Err(e)) => failed = failed.or(Some(e)),
            Err(e) => {
                failed = failed.or(Some(ClientError::Invalid(format!(
                    "upload task failed: {e}"
                ))))
            }
        }
    }
    let hashed = reader
        .await
        .unwrap_or_else(|e| Err(ClientError::Invalid(format!("read task failed: {e}"))));
    if let Some(e) = failed {
        return Err(e);
    }
    let hashed = hashed?;
    if missing.is_empty() {
        let end = t.registry.upload(
            session,
            &job.key,
            job.size,
            0,
            reqwest::Body::from(Bytes::new()),
        );
        complete = end.await?.complete;
    }
    Ok((hashed, complete))
}

/// A part to send: its number, its bytes and the permit that counts it in memory.
type Part = (u32, Bytes, OwnedSemaphorePermit);

/// Reads the file in order from the first byte it needs: hashes it from `hasher` on (with
/// a journal checkpoint at every part boundary) and queues the `missing` parts, each once
/// `permit` grants it room in memory.
fn read_parts(
    job: &UploadJob,
    missing: &[u32],
    mut hasher: Option<ResumableSha256>,
    journal: &Journal,
    meter: &Meter,
    permit: impl Fn() -> Option<OwnedSemaphorePermit>,
    tx: &mpsc::Sender<std::io::Result<Part>>,
) -> ClientResult<Option<ResumableSha256>> {
    let part = job.part_size.max(1);
    let count = job.size.div_ceil(part) as u32;
    let hashed_to = hasher.as_ref().map_or(job.size, ResumableSha256::len);
    let mut file = std::fs::File::open(&job.path).map_err(|e| ClientError::io(&job.path, e))?;
    let mut pos = None;
    for number in 1..=count {
        let start = u64::from(number - 1) * part;
        let end = (start + part).min(job.size);
        let send = missing.binary_search(&number).is_ok();
        if !send && end <= hashed_to {
            continue;
        }
        let room = if send {
            // The semaphore is never closed: no permit would mean the round is over.
            let Some(room) = permit() else {
                return Ok(None);
            };
            Some(room)
        } else {
            None
        };
        if pos != Some(start) {
            file.seek(SeekFrom::Start(start))
                .map_err(|e| ClientError::io(&job.path, e))?;
        }
        let mut buf = vec![0u8; (end - start) as usize];
        if let Err(e) = file.read_exact(&mut buf) {
            let _ = tx.blocking_send(Err(std::io::Error::new(e.kind(), e.to_string())));
            return Err(ClientError::io(&job.path, e));
        }
        pos = Some(end);
        meter.read.fetch_add(buf.len() as u64, Ordering::Relaxed);
        if let Some(h) = hasher.as_mut().filter(|h| h.len() == start) {
            h.update(&buf);
            // A failed journal write only costs re-reading on resume.
            let _ = journal.checkpoint(&job.key, h);
        }
        if let Some(room) = room {
            if tx
                .blocking_send(Ok((number, Bytes::from(buf), room)))
                .is_err()
            {
                // The senders stopped (one failed): what is hashed so far is checkpointed.
                return Ok(None);
            }
        }
    }
    Ok(hasher.filter(|h| h.len() == job.size))
}

/// Sends one part as a body of its own; answers whether the registry reported the file
/// complete. A cut connection or a refusal to record it (a newer request took the part
/// over) is not an error: the round ends and the registry's durable ranges tell what
/// is still missing.
async fn send_part(
    t: &Transfer,
    session: &str,
    job: &UploadJob,
    number: u32,
    part: Bytes,
    meter: &Meter,
) -> ClientResult<bool> {
    let len = part.len() as u64;
    if let Some(throttle) = &t.throttle {
        throttle.take(len).await;
    }
    let offset = u64::from(number - 1) * job.part_size.max(1);
    let upload = t
        .registry
        .upload(session, &job.key, offset, len, reqwest::Body::from(part));
    let result = tokio::time::timeout(STALL, upload).await;
    meter.sent.fetch_add(len, Ordering::Relaxed);
    t.reporter.advance(job.index, len);
    match result {
        Ok(Ok(progress)) => Ok(progress.complete),
        Ok(Err(e)) if e.is_transient() || matches!(e, ClientError::Conflict(_)) => {
            t.reporter
                .note(&format!("{}: part {number}: {e}; resuming", job.name));
            Ok(false)
        }
        Ok(Err(e)) => Err(e),
        Err(_) => {
            t.reporter
                .note(&format!("{}: part {number} stalled; resuming", job.name));
            Ok(false)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_in_memory_stay_within_the_budget_whatever_the_part_size() {
        assert_eq!(parts_in_memory(4, 8 << 20), 4);
        assert_eq!(parts_in_memory(4, 16 << 20), 2);
        assert_eq!(parts_in_memory(4, 1 << 30), 1, "one part at least");
        assert_eq!(parts_in_memory(0, 8 << 20), 1);
        assert_eq!(parts_in_memory(2, 1 << 20), 2, "never more than asked");
    }

    #[test]
    fn only_the_parts_outside_the_durable_ranges_are_missing() {
        let job = UploadJob {
            index: 0,
            name: "a".into(),
            key: "a".into(),
            path: "/nonexistent".into(),
            size: 95,
            part_size: 10,
            received: 20,
            durable: vec![[0, 20], [40, 60], [90, 95]],
        };
        assert_eq!(missing_parts(&job, &job.durable), vec![3, 4, 7, 8, 9]);
        assert_eq!(missing_parts(&job, &[]).len(), 10);
    }
}
