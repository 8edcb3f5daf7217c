//! Bytes a pull has written but not hashed yet, kept in memory within a budget shared by
//! the files of one pull, so that the in-order hash takes them from there instead of
//! reading them back from the staged file. What the budget cannot hold is read back.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

/// The buffers of one write, in file order.
pub type Batch = Vec<Bytes>;

/// Written batches of one file waiting for the hash, by file offset.
pub struct Fresh {
    /// Bytes kept by every file of the pull; at most `budget`.
    pool: Arc<AtomicUsize>,
    budget: usize,
    batches: Mutex<BTreeMap<u64, Batch>>,
}

fn batch_len(batch: &Batch) -> usize {
    batch.iter().map(Bytes::len).sum()
}

impl Fresh {
    /// An empty set drawing on `pool`, which may hold `budget` bytes in all.
    pub fn new(pool: Arc<AtomicUsize>, budget: usize) -> Self {
        Self {
            pool,
            budget,
            batches: Mutex::new(BTreeMap::new()),
        }
    }

    /// Keeps the batch just written at `pos` when the budget has room for it, making room
    /// by forgetting this file's kept batches after `pos` if need be: the bytes nearest the
    /// hash's position are the ones worth keeping, the rest is read back when its turn comes.
    pub fn keep(&self, pos: u64, batch: Batch) -> bool {
        let len = batch_len(&batch);
        let mut batches = self.lock();
        loop {
            let room = self
                .pool
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |held| {
                    (held + len <= self.budget).then_some(held + len)
                })
                .is_ok();
            if room {
                batches.insert(pos, batch);
                return true;
            }
            match batches.last_key_value() {
                Some((&last, _)) if last > pos => {
                    if let Some(evicted) = batches.remove(&last) {
                        self.pool.fetch_sub(batch_len(&evicted), Ordering::SeqCst);
                    }
                }
                _ => return false,
            }
        }
    }

    /// Takes the batch written at `pos`, if kept; batches before `pos` (hashed meanwhile
    /// from the file) are dropped.
    pub fn take(&self, pos: u64) -> Option<Batch> {
        let mut batches = self.lock();
        let later = batches.split_off(&pos);
        let stale = std::mem::replace(&mut *batches, later);
        let taken = batches.remove(&pos);
        let freed: usize = stale.values().chain(taken.iter()).map(batch_len).sum();
        self.pool.fetch_sub(freed, Ordering::SeqCst);
        taken
    }

    /// Offset of the first kept batch after `pos`: reading back must stop there.
    pub fn next_after(&self, pos: u64) -> Option<u64> {
        self.lock()
            .range(pos.saturating_add(1)..)
            .next()
            .map(|(&at, _)| at)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Batch>> {
        self.batches.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for Fresh {
    fn drop(&mut self) {
        let held: usize = self.lock().values().map(batch_len).sum();
        self.pool.fetch_sub(held, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(bytes: &[&'static [u8]]) -> Batch {
        bytes.iter().map(|b| Bytes::from_static(b)).collect()
    }

    #[test]
    fn batches_are_kept_within_the_shared_budget() {
        let pool = Arc::new(AtomicUsize::new(0));
        let (a, b) = (Fresh::new(pool.clone(), 10), Fresh::new(pool.clone(), 10));
        assert!(a.keep(0, batch(&[b"abc", b"de"])));
        assert!(b.keep(100, batch(&[b"fghij"])));
        assert!(!a.keep(5, batch(&[b"k"])), "the budget is shared");
        assert_eq!(pool.load(Ordering::SeqCst), 10);
        assert_eq!(a.take(0), Some(batch(&[b"abc", b"de"])));
        assert_eq!(pool.load(Ordering::SeqCst), 5);
        assert!(a.keep(5, batch(&[b"k"])));
        drop(b);
        assert_eq!(
            pool.load(Ordering::SeqCst),
            1,
            "a dropped file frees its bytes"
        );
    }

    #[test]
    fn a_full_budget_keeps_the_batches_nearest_the_hash() {
        let pool = Arc::new(AtomicUsize::new(0));
        let fresh = Fresh::new(pool.clone(), 4);
        assert!(fresh.keep(20, batch(&[b"20"])));
        assert!(fresh.keep(30, batch(&[b"30"])));
        // Full: a batch further on is refused, one nearer evicts the furthest.
        assert!(!fresh.keep(40, batch(&[b"40"])));
        assert!(fresh.keep(10, batch(&[b"10"])));
        assert_eq!(fresh.next_after(10), Some(20));
        assert_eq!(fresh.next_after(20), None, "the batch at 30 was forgotten");
        assert_eq!(pool.load(Ordering::SeqCst), 4);
    }

    #[test]
    fn taking_drops_what_lies_before_and_finds_what_lies_after() {
        let pool = Arc::new(AtomicUsize::new(0));
        let fresh = Fresh::new(pool.clone(), 100);
        fresh.keep(0, batch(&[b"01"]));
        fresh.keep(4, batch(&[b"45"]));
        fresh.keep(8, batch(&[b"89"]));
        assert_eq!(fresh.next_after(0), Some(4));
        assert_eq!(fresh.next_after(4), Some(8));
        assert_eq!(fresh.next_after(8), None);
        assert_eq!(fresh.take(2), None, "nothing was written at 2");
        assert_eq!(pool.load(Ordering::SeqCst), 4, "the batch at 0 is dropped");
        assert_eq!(fresh.take(4), Some(batch(&[b"45"])));
        assert_eq!(fresh.next_after(4), Some(8));
        assert_eq!(pool.load(Ordering::SeqCst), 2);
    }
}
