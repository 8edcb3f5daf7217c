//! One server-wide budget for the bytes of download pieces read from S3.
//!
//! A download reads its range as pieces, several at once (see [`super::ranged`]); without
//! a limit, N downloads of different files would hold N × pieces in flight × piece size.
//! Every piece is reserved from this budget, at its full size, before it is fetched, and
//! its reservation goes back when the last holder of its bytes lets go of them (the
//! download sending it, every download sharing it, the shared-reads cache). A download
//! that finds the budget spent waits for it rather than allocating past it.
//!
//! Nothing deadlocks and nobody starves: a download reserves its pieces one after the
//! other, in order, so the oldest piece it waits on is always reserved and it always
//! makes progress; reservations are served first come, first served; and the budget is
//! never smaller than one piece, so a download alone always gets one.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::telemetry::metrics;

/// The default budget: 24 pieces of 4 MiB read or being sent at once, far more than one S3
/// endpoint needs to be kept busy, with room for the shared-reads cache (64 MiB by
/// default) beside the pieces of a herd's leading download.
pub const DEFAULT_READ_MEMORY: u64 = 96 << 20;

/// Reservations of download piece bytes, shared by every download of the process.
pub struct ReadMemory {
    budget: u64,
    permits: Arc<Semaphore>,
    /// Downloads waiting for budget now: while any wait, nothing is kept for later
    /// readers, so the budget goes to those who wait.
    waiting: AtomicUsize,
    /// Bytes reserved at most at once, since the start.
    peak: AtomicU64,
}

/// A reservation of piece bytes; they go back to the budget when it is dropped.
pub struct Reserved {
    _permit: OwnedSemaphorePermit,
    bytes: u64,
}

impl Drop for Reserved {
    fn drop(&mut self) {
        metrics::read_memory_in_use(-(self.bytes as i64));
    }
}

/// Counts a download as waiting until dropped (also when it is cancelled mid-wait).
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl ReadMemory {
    /// A budget of `bytes` for all download pieces together.
    pub fn new(bytes: u64) -> Arc<Self> {
        let bytes = bytes.clamp(1, Semaphore::MAX_PERMITS as u64);
        metrics::read_memory_budget(bytes);
        Arc::new(Self {
            budget: bytes,
            permits: Arc::new(Semaphore::new(bytes as usize)),
            waiting: AtomicUsize::new(0),
            peak: AtomicU64::new(0),
        })
    }

    /// The budget in bytes.
    pub fn budget(&self) -> u64 {
        self.budget
    }

    /// Whether some download waits for budget now.
    pub fn contended(&self) -> bool {
        self.waiting.load(Ordering::SeqCst) > 0
    }

    /// The most bytes reserved at once since the start.
    pub fn peak(&self) -> u64 {
        self.peak.load(Ordering::SeqCst)
    }

    /// Reserves `bytes` for a piece (the whole budget when a piece is larger); when the
    /// budget is spent, first calls `give_way` (to free what is only kept for later), then
    /// waits its turn.
    pub async fn reserve(&self, bytes: u64, give_way: impl FnOnce()) -> Reserved {
        let wanted = bytes.clamp(1, self.budget).min(u64::from(u32::MAX)) as u32;
        let permit = match self.permits.clone().try_acquire_many_owned(wanted) {
            Ok(permit) => permit,
            Err(_) => {
                self.waiting.fetch_add(1, Ordering::SeqCst);
                let _waiting = Waiting(&self.waiting);
                metrics::read_memory_wait();
                give_way();
                self.permits
                    .clone()
                    .acquire_many_owned(wanted)
                    .await
                    .expect("the read budget's semaphore is never closed")
            }
        };
        let held = self.budget - self.permits.available_permits() as u64;
        self.peak.fetch_max(held, Ordering::SeqCst);
        metrics::read_memory_in_use(i64::from(wanted));
        Reserved {
            _permit: permit,
            bytes: u64::from(wanted),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn reservations_never_exceed_the_budget_and_wait_for_one_to_go_back() {
        let memory = ReadMemory::new(3000);
        let a = memory.reserve(1000, || {}).await;
        let _b = memory.reserve(1000, || {}).await;
        let _c = memory.reserve(1000, || {}).await;
        let waiter = {
            let memory = memory.clone();
            tokio::spawn(async move { memory.reserve(1000, || {}).await.bytes })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "nothing past the budget");
        assert!(memory.contended());
        drop(a);
        let got = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("a returned reservation wakes the waiter")
            .unwrap();
        assert_eq!(got, 1000);
        assert!(!memory.contended());
        assert_eq!(memory.peak(), 3000);
    }

    #[tokio::test]
    async fn a_piece_larger_than_the_budget_takes_all_of_it_rather_than_wait_forever() {
        let memory = ReadMemory::new(1000);
        let whole = tokio::time::timeout(Duration::from_secs(5), memory.reserve(4000, || {}))
            .await
            .expect("one piece always fits");
        assert_eq!(whole.bytes, 1000);
        drop(whole);
        // A budget of nothing still lets one piece through at a time.
        let none = ReadMemory::new(0);
        let one = tokio::time::timeout(Duration::from_secs(5), none.reserve(4000, || {}))
            .await
            .expect("a reader alone is never stuck");
        drop(one);
    }

    #[tokio::test]
    async fn a_reservation_that_must_wait_first_asks_what_is_kept_to_give_way() {
        let memory = ReadMemory::new(2000);
        let kept = std::sync::Mutex::new(Some(memory.reserve(2000, || {}).await));
        let asked = std::sync::atomic::AtomicBool::new(false);
        // The cache lets go of what it keeps: the reservation goes through at once.
        let got = tokio::time::timeout(
            Duration::from_secs(5),
            memory.reserve(1000, || {
                asked.store(true, Ordering::SeqCst);
                kept.lock().unwrap().take();
            }),
        )
        .await
        .expect("what was given way is reserved");
        assert!(asked.load(Ordering::SeqCst));
        assert_eq!(got.bytes, 1000);
        // With room, nobody is asked.
        memory
            .reserve(1000, || panic!("asked to give way with room"))
            .await;
    }

    #[tokio::test]
    async fn waiters_are_served_in_turn_so_no_reader_starves() {
        // One piece of budget, four readers of eight pieces each, each holding its piece
        // a moment: turns go round, no reader gets all its pieces while another waits.
        let memory = ReadMemory::new(100);
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let readers: Vec<_> = (0..4)
            .map(|reader| {
                let (memory, order) = (memory.clone(), order.clone());
                tokio::spawn(async move {
                    for _ in 0..8 {
                        let piece = memory.reserve(100, || {}).await;
                        order.lock().unwrap().push(reader);
                        tokio::time::sleep(Duration::from_millis(2)).await;
                        drop(piece);
                    }
                })
            })
            .collect();
        for r in readers {
            tokio::time::timeout(Duration::from_secs(10), r)
                .await
                .expect("every reader finishes")
                .unwrap();
        }
        let order = order.lock().unwrap().clone();
        assert_eq!(order.len(), 32);
        for (i, window) in order.chunks(8).enumerate() {
            for reader in 0..4 {
                assert!(
                    window.contains(&reader),
                    "reader {reader} got nothing in turns {}..{}: {order:?}",
                    i * 8,
                    i * 8 + 8
                );
            }
        }
        assert_eq!(memory.peak(), 100);
    }
}
