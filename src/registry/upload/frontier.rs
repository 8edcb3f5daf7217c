//! The hash frontier of files pushed as several ranges: a file's SHA-256 must be taken over
//! its bytes in order, but its parts land in any order, on any replica. Each replica keeps,
//! per file, the hash state as far as it could hash in order, and holds a few durable parts
//! that landed ahead of it (bounded for the whole replica) so that a client striping
//! consecutive parts over several connections to one replica is hashed as it lands. What
//! the frontier missed (parts held by no one, parts landed on another replica) is read back
//! from the store when the file's last part lands.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::digest::ResumableSha256;

/// A frontier nobody used for this long is dropped, with the parts it held.
const IDLE: Duration = Duration::from_secs(120);
/// Hash states kept at part boundaries not recorded yet.
const MAX_SNAPSHOTS: usize = 1024;

/// One file's hash frontier on this replica.
pub(crate) struct Frontier {
    hasher: ResumableSha256,
    /// Durable parts past the frontier, by offset.
    held: BTreeMap<u64, Bytes>,
    /// The hash state at each part boundary the frontier passed, oldest first, until a
    /// record of the upload state takes them.
    snapshots: VecDeque<ResumableSha256>,
    held_bytes: Arc<AtomicU64>,
}

impl Frontier {
    /// The hash state as far as this replica hashed.
    pub(crate) fn hasher(&self) -> &ResumableSha256 {
        &self.hasher
    }

    /// Moves to `stored` when another replica (or a restart) got further.
    pub(crate) fn adopt(&mut self, stored: &ResumableSha256) {
        if stored.len() <= self.hasher.len() {
            return;
        }
        self.hasher = stored.clone();
        let below: Vec<u64> = self
            .held
            .range(..stored.len())
            .map(|(offset, _)| *offset)
            .collect();
        for offset in below {
            self.release(offset);
        }
        self.snapshots.retain(|s| s.len() > stored.len());
        self.hash_held();
    }

    /// Hashes the held parts that are next, in order.
    fn hash_held(&mut self) {
        loop {
            let next = self.hasher.len();
            let Some(held) = self.release(next) else {
                break;
            };
            self.hash(&held);
        }
    }

    /// The furthest hash state this replica has at a part boundary within the first
    /// `durable` bytes, when it is past `recorded` bytes.
    pub(crate) fn snapshot_within(&self, recorded: u64, durable: u64) -> Option<ResumableSha256> {
        self.snapshots
            .iter()
            .rev()
            .find(|s| s.len() <= durable)
            .filter(|s| s.len() > recorded)
            .cloned()
    }

    /// Forgets the snapshots a record took.
    pub(crate) fn recorded(&mut self, upto: u64) {
        self.snapshots.retain(|s| s.len() > upto);
    }

    fn release(&mut self, offset: u64) -> Option<Bytes> {
        let part = self.held.remove(&offset)?;
        self.held_bytes
            .fetch_sub(part.len() as u64, Ordering::Relaxed);
        Some(part)
    }

    fn hash(&mut self, part: &[u8]) {
        self.hasher.update(part);
        self.snapshots.push_back(self.hasher.clone());
        if self.snapshots.len() > MAX_SNAPSHOTS {
            self.snapshots.pop_front();
        }
    }
}

impl Drop for Frontier {
    fn drop(&mut self) {
        let held: u64 = self.held.values().map(|p| p.len() as u64).sum();
        self.held_bytes.fetch_sub(held, Ordering::Relaxed);
    }
}

/// A file's frontier, shared by the requests sending its parts.
type Shared = Arc<tokio::sync::Mutex<Frontier>>;

/// The frontiers of this replica, by upload state key, with when each was last used.
pub(crate) struct Frontiers {
    files: Mutex<HashMap<String, (Shared, Instant)>>,
    held_bytes: Arc<AtomicU64>,
    max_held: u64,
}

impl Frontiers {
    /// Frontiers holding at most `max_held` bytes of parts ahead of them, all files together.
    pub(crate) fn new(max_held: u64) -> Self {
        Self {
            files: Mutex::default(),
            held_bytes: Arc::default(),
            max_held,
        }
    }

    /// The frontier of the file whose state is under `key`, made at `stored` if this
    /// replica has none.
    pub(crate) fn get(&self, key: &str, stored: &ResumableSha256) -> Shared {
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        files.retain(|k, (f, used)| k == key || Arc::strong_count(f) > 1 || now - *used < IDLE);
        let entry = files.entry(key.to_string()).or_insert_with(|| {
            let frontier = Frontier {
                hasher: stored.clone(),
                held: BTreeMap::new(),
                snapshots: VecDeque::new(),
                held_bytes: self.held_bytes.clone(),
            };
            (Arc::new(tokio::sync::Mutex::new(frontier)), now)
        });
        entry.1 = now;
        entry.0.clone()
    }

    /// Drops the frontier of a finished (or restarted) file.
    pub(crate) fn forget(&self, key: &str) {
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        files.remove(key);
    }

    /// Offers a durable part starting at `offset`: hashed when it is next, with the held
    /// parts it makes next; held when it lies ahead and the replica's holding has room.
    pub(crate) async fn offer(
        &self,
        frontier: &tokio::sync::Mutex<Frontier>,
        offset: u64,
        part: &Bytes,
    ) {
        let mut f = frontier.lock().await;
        let at = f.hasher.len();
        if offset > at {
            let room = self.held_bytes.load(Ordering::Relaxed) + part.len() as u64 <= self.max_held;
            if room && !f.held.contains_key(&offset) {
                self.held_bytes
                    .fetch_add(part.len() as u64, Ordering::Relaxed);
                f.held.insert(offset, part.clone());
            }
            return;
        }
        if offset < at {
            return;
        }
        f.hash(part);
        f.hash_held();
    }

    /// Bytes of parts held ahead of their frontiers.
    #[cfg(test)]
    pub(crate) fn held(&self) -> u64 {
        self.held_bytes.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn parts_landing_out_of_order_are_hashed_in_order_within_the_holding() {
        let data: Vec<u8> = (0..40u32).map(|i| (i * 7) as u8).collect();
        let part = |n: usize| Bytes::copy_from_slice(&data[n * 10..(n + 1) * 10]);
        let frontiers = Frontiers::new(20);
        let f = frontiers.get("k", &ResumableSha256::default());
        frontiers.offer(&f, 20, &part(2)).await;
        frontiers.offer(&f, 10, &part(1)).await;
        frontiers.offer(&f, 30, &part(3)).await;
        assert_eq!(frontiers.held(), 20, "part 3 had no room left");
        frontiers.offer(&f, 0, &part(0)).await;
        let mut hashed = f.lock().await;
        assert_eq!(hashed.hasher().len(), 30);
        assert_eq!(frontiers.held(), 0);
        assert_eq!(
            hashed.snapshot_within(0, 25).map(|s| s.len()),
            Some(20),
            "the furthest boundary within what is durable"
        );
        hashed.recorded(20);
        assert_eq!(hashed.snapshot_within(20, 40).map(|s| s.len()), Some(30));
        let mut whole = ResumableSha256::default();
        whole.update(&data[..30]);
        assert_eq!(hashed.hasher().finalize_hex(), whole.finalize_hex());
    }

    #[tokio::test]
    async fn a_frontier_adopts_a_stored_state_that_got_further() {
        let frontiers = Frontiers::new(100);
        let f = frontiers.get("k", &ResumableSha256::default());
        frontiers.offer(&f, 10, &Bytes::from_static(&[1; 10])).await;
        let mut stored = ResumableSha256::default();
        stored.update(&[0; 20]);
        f.lock().await.adopt(&stored);
        assert_eq!(f.lock().await.hasher().len(), 20);
        assert_eq!(
            frontiers.held(),
            0,
            "parts below the stored state are let go"
        );
        drop(f);
        frontiers.forget("k");
    }
}
