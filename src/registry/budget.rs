//! One server-wide budget for the memory of upload part buffers.
//!
//! Every part buffer is reserved from the budget before it is allocated, at its full
//! capacity, and its reservation goes back when the buffer is freed. An upload that finds
//! the budget spent waits for it rather than allocating past it, so however many uploads
//! run or stall, part buffers never hold more than the budget. Buffers kept for reuse stay
//! reserved: the pool is part of the budget, never on top of it.
//!
//! An upload holds at most one buffer that waits on its client (the part it is filling);
//! the parts it already sent give their reservation back as soon as the store has them,
//! so uploads waiting on each other for budget always make progress.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The default budget: 8 uploads at once peak below 200 MiB resident with it (at 128 MiB
/// they reached 216 after other transfers, at 256 MiB 290), still as fast together as one
/// alone, and a file's parts fit it up to 937.5 GiB (10,000 parts of 96 MiB).
pub const DEFAULT_PART_MEMORY: u64 = 96 << 20;

/// The largest upload part: a file of the largest size
/// ([`MAX_FILE_SIZE`](crate::model::MAX_FILE_SIZE)) fits S3's 10,000 parts with it.
pub const MAX_PART_SIZE: u64 = crate::model::MAX_FILE_SIZE
    .div_ceil(10_000)
    .div_ceil(1 << 20)
    * (1 << 20);

/// Buffers kept for reuse, at most (and never more bytes than the budget).
const POOLED_BUFFERS: usize = 16;

/// A pooled buffer unused for this long is freed: reuse pays off within a burst of
/// uploads, while a pool kept after the burst would hold up to the whole budget resident
/// beside the downloads that follow.
pub const POOL_IDLE: Duration = Duration::from_secs(2);

/// Makes the allocator return freed part buffers to the system. Past its first free of a
/// large block glibc raises its mmap threshold and serves multi-MiB blocks from its arenas,
/// where freed ones stay resident: the process would then hold more than the budget's live
/// buffers. A fixed threshold below the smallest part keeps every part buffer its own
/// mapping, unmapped when freed. Pooled buffers are reused, so this costs page faults only
/// for new buffers.
///
/// A fixed mmap threshold also fixes glibc's trim threshold at 128 KiB: every download's
/// socket and S3 body buffers (a few hundred KiB each, freed as they are sent) would then
/// be handed back and faulted in again, chunk after chunk (about 5,000 `brk`/`madvise`
/// calls and their page faults per GiB pulled). Keeping up to [`KEPT_FREE`] of freed heap
/// per arena cut the server's CPU per pulled GiB by about a tenth.
pub fn return_freed_parts_to_the_system() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const BELOW_SMALLEST_PART: libc::c_int = 4 << 20;
        // SAFETY: mallopt only changes allocator tuning; called once at start-up.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, BELOW_SMALLEST_PART);
            libc::mallopt(libc::M_TRIM_THRESHOLD, KEPT_FREE);
        }
    }
}

/// Hands the allocator's free memory back to the system, in every arena (glibc's
/// `malloc_trim`, which also releases free pages inside a heap, not only at its top).
pub fn return_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free pages; it is safe to call at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Freed heap memory an allocator arena keeps for reuse before it returns any.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const KEPT_FREE: libc::c_int = 16 << 20;

/// A part buffer and its share of the budget; the share goes back when it is dropped.
pub(crate) struct PartBuffer {
    /// The bytes.
    pub(crate) buf: BytesMut,
    reservation: OwnedSemaphorePermit,
}

/// A sent part's reservation, held until the store is done with the part's bytes.
pub(crate) struct Reservation(OwnedSemaphorePermit);

impl PartBuffer {
    /// Splits off the filled bytes to send as a part, and the reservation that goes with
    /// them.
    pub(crate) fn freeze(self) -> (Bytes, Reservation) {
        (self.buf.freeze(), Reservation(self.reservation))
    }
}

/// The budget and the buffers kept for reuse within it.
pub(crate) struct PartMemory {
    budget: u64,
    permits: Arc<Semaphore>,
    pool: Mutex<Pool>,
}

#[derive(Default)]
struct Pool {
    /// Each buffer with the time it was pooled.
    buffers: Vec<(PartBuffer, Instant)>,
    /// Uploads waiting for budget. While any wait, returned buffers are freed rather than
    /// pooled: a pooled buffer keeps its reservation, which a waiter could never get.
    waiting: usize,
}

/// Counts an upload as waiting for budget until dropped (also when its request is
/// cancelled mid-wait).
struct Waiting<'a>(&'a Mutex<Pool>);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if let Ok(mut pool) = self.0.lock() {
            pool.waiting = pool.waiting.saturating_sub(1);
        }
    }
}

impl PartMemory {
    /// A budget of `bytes` for all part buffers together.
    pub(crate) fn new(bytes: u64) -> Self {
        let bytes = bytes.min(Semaphore::MAX_PERMITS as u64);
        Self {
            budget: bytes,
            permits: Arc::new(Semaphore::new(bytes as usize)),
            pool: Mutex::new(Pool::default()),
        }
    }

    /// The budget in bytes.
    pub(crate) fn budget(&self) -> u64 {
        self.budget
    }

    /// Bytes of the budget not reserved (by buffers in use or pooled).
    #[cfg(test)]
    fn available(&self) -> usize {
        self.permits.available_permits()
    }

    /// An empty buffer of at least `size` bytes of capacity, reused when one fits;
    /// otherwise waits until the budget has room for a new one. Negotiation refuses files
    /// whose parts would not fit the budget.
    pub(crate) async fn take(&self, size: usize) -> PartBuffer {
        // A part larger than the whole budget (a session negotiated by a replica with a
        // bigger budget) takes all of it rather than waiting forever.
        let wanted = (size as u64).min(self.budget).min(u64::from(u32::MAX)) as u32;
        let waiting = {
            let Ok(mut pool) = self.pool.lock() else {
                return self.allocate(size, wanted).await;
            };
            let fits = |(b, _): &(PartBuffer, Instant)| {
                b.buf.capacity() >= size && b.buf.capacity() <= 2 * size
            };
            if let Some(at) = pool.buffers.iter().position(fits) {
                return pool.buffers.swap_remove(at).0;
            }
            // Pooled buffers that do not fit give way to the new one.
            while self.permits.available_permits() < wanted as usize {
                if pool.buffers.pop().is_none() {
                    break;
                }
            }
            pool.waiting += 1;
            Waiting(&self.pool)
        };
        let buffer = self.allocate(size, wanted).await;
        drop(waiting);
        buffer
    }

    async fn allocate(&self, size: usize, wanted: u32) -> PartBuffer {
        let reservation = self
            .permits
            .clone()
            .acquire_many_owned(wanted)
            .await
            .expect("the part budget's semaphore is never closed");
        PartBuffer {
            buf: BytesMut::with_capacity(size),
            reservation,
        }
    }

    /// Takes a sent part back once the store let go of it: kept for reuse (with its
    /// reservation) when nothing else holds its bytes, nobody waits for budget and the
    /// pool has room; else freed, its reservation going to whoever waits.
    pub(crate) fn give_back(&self, part: Bytes, reservation: Reservation) {
        let Ok(mut buf) = part.try_into_mut() else {
            return;
        };
        // Only a buffer whose reservation covers its capacity may be pooled.
        if buf.capacity() > reservation.0.num_permits() {
            return;
        }
        buf.clear();
        let buffer = PartBuffer {
            buf,
            reservation: reservation.0,
        };
        if let Ok(mut pool) = self.pool.lock() {
            if pool.waiting == 0 && pool.buffers.len() < POOLED_BUFFERS {
                pool.buffers.push((buffer, Instant::now()));
            }
        }
    }

    /// Frees the pooled buffers unused for `idle` or longer; returns how many.
    pub(crate) fn release_idle(&self, idle: Duration) -> usize {
        let Ok(mut pool) = self.pool.lock() else {
            return 0;
        };
        let before = pool.buffers.len();
        pool.buffers.retain(|(_, since)| since.elapsed() < idle);
        before - pool.buffers.len()
    }

    /// Keeps an unsent buffer for reuse, or frees it.
    pub(crate) fn put_back(&self, buffer: PartBuffer) {
        let (bytes, reservation) = buffer.freeze();
        self.give_back(bytes, reservation);
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_returned_buffer_is_reused_and_a_shared_one_is_not() {
        let pool = PartMemory::new(1 << 20);
        let mut first = pool.take(1024).await;
        first.buf.extend_from_slice(&[7; 1024]);
        let (frozen, reservation) = first.freeze();
        let address = frozen.as_ptr();
        let still_held = frozen.clone();
        pool.give_back(frozen, reservation);
        assert_ne!(
            pool.take(1024).await.buf.as_ptr(),
            address,
            "a buffer someone still holds is not reused"
        );
        drop(still_held);

        let mut second = pool.take(1024).await;
        second.buf.extend_from_slice(&[8; 1024]);
        let (frozen, reservation) = second.freeze();
        let address = frozen.as_ptr();
        pool.give_back(frozen, reservation);
        let reused = pool.take(1024).await;
        assert_eq!(reused.buf.as_ptr(), address);
        assert!(reused.buf.is_empty() && reused.buf.capacity() >= 1024);
        pool.put_back(reused);
        assert_ne!(
            pool.take(4096).await.buf.as_ptr(),
            address,
            "too small a buffer is not handed out"
        );
        assert_eq!(
            pool.take(1024).await.buf.as_ptr(),
            address,
            "it stays pooled for a part it fits"
        );
    }

    #[tokio::test]
    async fn a_spent_budget_makes_the_next_buffer_wait_until_one_is_freed() {
        let memory = Arc::new(PartMemory::new(3000));
        let a = memory.take(1000).await;
        let b = memory.take(1000).await;
        let _c = memory.take(1000).await;
        assert_eq!(memory.available(), 0);
        let waiting = {
            let memory = memory.clone();
            tokio::spawn(async move { memory.take(1000).await.buf.capacity() })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "no buffer past the budget");
        drop(a);
        let got = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("a freed reservation wakes the waiter")
            .unwrap();
        assert!(got >= 1000);
        drop(b);
        assert_eq!(
            memory.available(),
            2000,
            "freed buffers (b, and the waiter's, dropped in its task) go back"
        );
    }

    #[tokio::test]
    async fn a_buffer_given_back_while_someone_waits_goes_to_the_waiter() {
        let memory = Arc::new(PartMemory::new(2000));
        let a = memory.take(1000).await;
        let _b = memory.take(1000).await;
        let waiting = {
            let memory = memory.clone();
            tokio::spawn(async move { memory.take(1000).await.buf.capacity() })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        // Pooling it would keep its reservation from the waiter for good.
        memory.put_back(a);
        let got = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the waiter gets the returned buffer's budget")
            .unwrap();
        assert!(got >= 1000);
    }

    #[tokio::test]
    async fn the_pool_never_holds_more_than_the_budget() {
        let memory = PartMemory::new(4000);
        let mut held = Vec::new();
        for _ in 0..4 {
            held.push(memory.take(1000).await);
        }
        for b in held {
            memory.put_back(b);
        }
        assert_eq!(memory.available(), 0, "pooled buffers stay reserved");
        // A bigger buffer evicts pooled ones that do not fit instead of waiting forever.
        let big = tokio::time::timeout(Duration::from_secs(5), memory.take(3000))
            .await
            .expect("pooled buffers give way");
        assert!(big.buf.capacity() >= 3000);
        assert!(memory.available() <= 1000);
    }

    #[tokio::test]
    async fn pooled_buffers_left_idle_are_freed_and_their_budget_returns() {
        let memory = PartMemory::new(4000);
        let a = memory.take(1000).await;
        let b = memory.take(1000).await;
        memory.put_back(a);
        assert_eq!(
            memory.release_idle(Duration::from_secs(60)),
            0,
            "still fresh"
        );
        assert_eq!(memory.available(), 2000, "the pooled one stays reserved");
        std::thread::sleep(Duration::from_millis(20));
        memory.put_back(b);
        assert_eq!(
            memory.release_idle(Duration::from_millis(10)),
            1,
            "only the one pooled longer ago"
        );
        assert_eq!(memory.available(), 3000, "its reservation went back");
        assert_eq!(memory.release_idle(Duration::ZERO), 1);
        assert_eq!(memory.available(), 4000, "an empty pool holds nothing");
    }
}
