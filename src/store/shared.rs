//! Shared reads: downloads of the same object chunk at the same time fetch it once.
//!
//! When a fleet pulls one new template at once, every download of a replica asks for the
//! same chunks at about the same time. A chunk being fetched is joined by every reader that
//! wants it (single flight), and while more than one download of an object runs, the chunks
//! fetched last stay in a small cache bounded in bytes, so readers a little behind the
//! first still find them (a lone download keeps nothing: its memory stays its own pieces).
//! Objects are immutable under their keys (every upload writes a new key), so a cached
//! chunk is never stale.
//!
//! A chunk carries the reservation of read memory its fetch made ([`super::memory`]): its
//! bytes count once, however many downloads and the cache hold them. The cache gives way
//! to downloads that wait for that memory: it is emptied when one must wait, and keeps
//! nothing while any waits.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::future::{BoxFuture, FutureExt, Shared, WeakShared};

use super::memory::{ReadMemory, Reserved};
use super::StoreResult;

/// A chunk's bytes as the backend delivered them, with their reservation of read memory.
pub type Chunk = Arc<Held>;

/// Bytes read from the backend, counted in the read memory until dropped.
pub struct Held {
    parts: Vec<Bytes>,
    _reserved: Option<Reserved>,
}

impl Held {
    /// `parts`, counted under `reserved` (nothing when unreserved, as in tests).
    pub fn new(parts: Vec<Bytes>, reserved: Option<Reserved>) -> Chunk {
        Arc::new(Self {
            parts,
            _reserved: reserved,
        })
    }
}

impl std::ops::Deref for Held {
    type Target = [Bytes];

    fn deref(&self) -> &[Bytes] {
        &self.parts
    }
}

type Fetch = Shared<BoxFuture<'static, StoreResult<Chunk>>>;
type Id = (Arc<str>, u64);

/// Chunks in flight and recently fetched, shared by every download of this process.
pub struct SharedReads {
    /// Most bytes of finished chunks kept for later readers.
    budget: u64,
    /// The read memory the chunks are counted in; nothing is kept while readers wait for it.
    memory: Arc<ReadMemory>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Fetches running now; weak, so a fetch every reader gave up on is dropped (and its
    /// connection closed) rather than kept alive by this map.
    running: HashMap<Id, WeakShared<BoxFuture<'static, StoreResult<Chunk>>>>,
    /// Finished chunks with their last use.
    done: HashMap<Id, (Chunk, u64)>,
    /// Finished chunks by last use, oldest first.
    by_use: BTreeMap<u64, Id>,
    /// Bytes held in `done`.
    held: u64,
    /// Downloads running now, by object.
    readers: HashMap<Arc<str>, usize>,
    /// Counts uses, to order them.
    clock: u64,
}

fn size(chunk: &Chunk) -> u64 {
    chunk.iter().map(|b| b.len() as u64).sum()
}

impl State {
    fn touch(&mut self, id: &Id) -> Option<Chunk> {
        self.clock += 1;
        let clock = self.clock;
        let (chunk, used) = self.done.get_mut(id)?;
        self.by_use.remove(used);
        *used = clock;
        self.by_use.insert(clock, id.clone());
        Some(chunk.clone())
    }

    fn keep(&mut self, id: Id, chunk: Chunk, budget: u64) {
        let bytes = size(&chunk);
        let shared = self.readers.get(&id.0).is_some_and(|n| *n > 1);
        if !shared || bytes > budget || self.done.contains_key(&id) {
            return;
        }
        while self.held + bytes > budget {
            let Some((_, oldest)) = self.by_use.pop_first() else {
                break;
            };
            self.discard(&oldest);
        }
        self.clock += 1;
        self.by_use.insert(self.clock, id.clone());
        self.done.insert(id, (chunk, self.clock));
        self.held += bytes;
    }

    /// Drops the kept chunks of `key`: with no download of it left, nobody will ask for
    /// them soon, and they would hold their share of the read memory for nothing.
    fn forget(&mut self, key: &Arc<str>) {
        let gone: Vec<Id> = self
            .done
            .keys()
            .filter(|id| id.0 == *key)
            .cloned()
            .collect();
        for id in gone {
            self.discard(&id);
        }
    }

    /// Drops a kept chunk and its bytes from what the cache holds.
    fn discard(&mut self, id: &Id) {
        if let Some((chunk, used)) = self.done.remove(id) {
            self.by_use.remove(&used);
            self.held -= size(&chunk);
        }
    }
}

impl SharedReads {
    /// Shared reads keeping at most `budget` bytes of finished chunks, within `memory`.
    pub fn new(budget: u64, memory: Arc<ReadMemory>) -> Arc<Self> {
        Arc::new(Self {
            budget,
            memory,
            state: Mutex::new(State::default()),
        })
    }

    /// Drops every kept chunk, so that their memory goes to readers waiting for it (a
    /// chunk a download still sends stays until it is sent).
    pub fn give_way(&self) {
        let mut state = self.lock();
        state.done.clear();
        state.by_use.clear();
        state.held = 0;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state stays consistent between statements; a panic elsewhere cannot break it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes a download of `key` until the guard drops: chunks are kept for others only
    /// while more than one runs.
    pub fn reader(self: &Arc<Self>, key: &Arc<str>) -> ReaderGuard {
        *self.lock().readers.entry(key.clone()).or_default() += 1;
        ReaderGuard {
            reads: Arc::clone(self),
            key: key.clone(),
        }
    }

    /// Chunk `index` of object `key`: from the cache, by joining a fetch of it already
    /// running, or by starting `fetch`, which others may then join.
    pub fn chunk<Fut>(
        self: &Arc<Self>,
        key: &Arc<str>,
        index: u64,
        fetch: impl FnOnce() -> Fut,
    ) -> BoxFuture<'static, StoreResult<Chunk>>
    where
        Fut: Future<Output = StoreResult<Chunk>> + Send + 'static,
    {
        let id: Id = (key.clone(), index);
        let mut state = self.lock();
        if let Some(joined) = Self::find(&mut state, &id) {
            return joined;
        }
        // Forget fetches every reader dropped, so the map cannot grow without bound.
        state.running.retain(|_, w| w.upgrade().is_some());
        let this = Arc::clone(self);
        let done_id = id.clone();
        let fetched = fetch();
        let shared: Fetch = async move {
            let result = fetched.await;
            let mut state = this.lock();
            state.running.remove(&done_id);
            if let (Ok(chunk), false) = (&result, this.memory.contended()) {
                state.keep(done_id, chunk.clone(), this.budget);
            }
            result
        }
        .boxed()
        .shared();
        if let Some(weak) = shared.downgrade() {
            state.running.insert(id, weak);
        }
        shared.boxed()
    }

    /// Chunk `index` of object `key` when it is kept or being fetched: a download that
    /// joins it needs no memory of its own for it.
    pub fn join(
        &self,
        key: &Arc<str>,
        index: u64,
    ) -> Option<BoxFuture<'static, StoreResult<Chunk>>> {
        Self::find(&mut self.lock(), &(key.clone(), index))
    }

    fn find(state: &mut State, id: &Id) -> Option<BoxFuture<'static, StoreResult<Chunk>>> {
        if let Some(chunk) = state.touch(id) {
            return Some(futures_util::future::ready(Ok(chunk)).boxed());
        }
        let running = state.running.get(id).and_then(WeakShared::upgrade)?;
        Some(running.boxed())
    }

    /// Bytes of finished chunks held now.
    pub fn held(&self) -> u64 {
        self.lock().held
    }
}

/// A download in progress, counted until dropped.
pub struct ReaderGuard {
    reads: Arc<SharedReads>,
    key: Arc<str>,
}

impl Drop for ReaderGuard {
    fn drop(&mut self) {
        let mut state = self.reads.lock();
        if let Some(n) = state.readers.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                state.readers.remove(&self.key);
                state.forget(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    use super::*;
    use crate::store::StoreError;

    fn chunk_of(n: usize, fill: u8) -> Chunk {
        Held::new(vec![Bytes::from(vec![fill; n])], None)
    }

    fn shared_reads(budget: u64) -> Arc<SharedReads> {
        SharedReads::new(budget, ReadMemory::new(1 << 30))
    }

    /// A fetch that counts itself and takes a while.
    fn counted(
        calls: &Arc<AtomicU64>,
        n: usize,
        fill: u8,
    ) -> impl FnOnce() -> BoxFuture<'static, StoreResult<Chunk>> {
        let calls = calls.clone();
        move || {
            calls.fetch_add(1, Ordering::SeqCst);
            async move {
                tokio::time::sleep(Duration::from_millis(30)).await;
                Ok(chunk_of(n, fill))
            }
            .boxed()
        }
    }

    #[tokio::test]
    async fn readers_of_a_chunk_in_flight_share_one_fetch() {
        let reads = shared_reads(1000);
        let key: Arc<str> = Arc::from("blobs/a/u");
        let _downloads = [reads.reader(&key), reads.reader(&key)];
        let calls = Arc::new(AtomicU64::new(0));
        let waits: Vec<_> = (0..20)
            .map(|_| reads.chunk(&key, 3, counted(&calls, 100, 7)))
            .collect();
        for got in futures_util::future::join_all(waits).await {
            assert_eq!(&got.unwrap()[0][..], &[7u8; 100][..]);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1, "twenty readers, one fetch");
        // A reader after it finished finds it cached.
        reads.chunk(&key, 3, counted(&calls, 100, 7)).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // Another chunk, or the same index of another object, is a fetch of its own.
        reads.chunk(&key, 4, counted(&calls, 100, 8)).await.unwrap();
        let other: Arc<str> = Arc::from("blobs/b/u");
        let got = reads
            .chunk(&other, 3, counted(&calls, 100, 9))
            .await
            .unwrap();
        assert_eq!(got[0][0], 9);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn the_last_download_of_an_object_ending_drops_its_kept_chunks() {
        let reads = shared_reads(1000);
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"));
        let downloads_of_a = [reads.reader(&a), reads.reader(&a)];
        let downloads_of_b = [reads.reader(&b), reads.reader(&b)];
        let calls = Arc::new(AtomicU64::new(0));
        for index in 0..3 {
            reads
                .chunk(&a, index, counted(&calls, 100, 1))
                .await
                .unwrap();
        }
        reads.chunk(&b, 0, counted(&calls, 100, 2)).await.unwrap();
        assert_eq!(reads.held(), 400);
        let [first, second] = downloads_of_a;
        drop(first);
        assert_eq!(reads.held(), 400, "one download of a still runs");
        drop(second);
        assert_eq!(reads.held(), 100, "only b's chunk is left");
        reads.chunk(&b, 0, counted(&calls, 100, 2)).await.unwrap();
        assert_eq!(
            calls.load(Ordering::SeqCst),
            4,
            "b's chunk is still served from the cache"
        );
        drop(downloads_of_b);
        assert_eq!(reads.held(), 0);
    }

    #[tokio::test]
    async fn the_cache_keeps_the_latest_chunks_within_its_budget() {
        let reads = shared_reads(250);
        let key: Arc<str> = Arc::from("k");
        let _downloads = [reads.reader(&key), reads.reader(&key)];
        let calls = Arc::new(AtomicU64::new(0));
        for index in 0..5 {
            reads
                .chunk(&key, index, counted(&calls, 100, 1))
                .await
                .unwrap();
            assert!(reads.held() <= 250, "{} bytes held", reads.held());
        }
        assert_eq!(reads.held(), 200);
        // The two latest are kept; the oldest were dropped and are fetched again.
        reads.chunk(&key, 4, counted(&calls, 100, 1)).await.unwrap();
        reads.chunk(&key, 3, counted(&calls, 100, 1)).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 5);
        reads.chunk(&key, 0, counted(&calls, 100, 1)).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 6);
        // A chunk bigger than the whole budget is served but not kept.
        reads.chunk(&key, 9, counted(&calls, 300, 1)).await.unwrap();
        assert!(reads.held() <= 250);

        // No budget: in-flight fetches are still shared, nothing is kept.
        let none = shared_reads(0);
        none.chunk(&key, 0, counted(&calls, 10, 1)).await.unwrap();
        assert_eq!(none.held(), 0);
    }

    #[tokio::test]
    async fn a_failed_fetch_is_shared_then_retried_by_the_next_reader() {
        let reads = shared_reads(1000);
        let key: Arc<str> = Arc::from("k");
        let _downloads = [reads.reader(&key), reads.reader(&key)];
        let calls = Arc::new(AtomicU64::new(0));
        let failing = |calls: &Arc<AtomicU64>| {
            let calls = calls.clone();
            move || {
                calls.fetch_add(1, Ordering::SeqCst);
                async {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    Err(StoreError::Unavailable("s3 down".into()))
                }
                .boxed()
            }
        };
        let a = reads.chunk(&key, 0, failing(&calls));
        let b = reads.chunk(&key, 0, failing(&calls));
        assert!(a.await.is_err());
        assert!(b.await.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // Errors are not cached: the next reader fetches again.
        assert!(reads.chunk(&key, 0, counted(&calls, 10, 2)).await.is_ok());
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_fetch_every_reader_dropped_is_not_joined() {
        let reads = shared_reads(1000);
        let key: Arc<str> = Arc::from("k");
        let calls = Arc::new(AtomicU64::new(0));
        drop(reads.chunk(&key, 0, counted(&calls, 10, 1)));
        reads.chunk(&key, 0, counted(&calls, 10, 2)).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2, "a dead fetch was joined");
        assert_eq!(
            reads.lock().running.len(),
            0,
            "finished fetches are forgotten"
        );
    }

    #[tokio::test]
    async fn a_shared_chunk_counts_once_and_the_cache_gives_way_to_waiting_readers() {
        let memory = ReadMemory::new(300);
        let reads = SharedReads::new(1000, memory.clone());
        let key: Arc<str> = Arc::from("k");
        let _downloads = [reads.reader(&key), reads.reader(&key), reads.reader(&key)];
        // Three readers reserve a piece each; one fetch runs, the joiners' reservations
        // go back as they join, and the fetched chunk holds the one that fetched it.
        let mut joined = Vec::new();
        for _ in 0..3 {
            let reserved = memory.reserve(100, || {}).await;
            joined.push(reads.chunk(&key, 0, move || async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                Ok(Held::new(vec![Bytes::from(vec![1u8; 100])], Some(reserved)))
            }));
        }
        let chunks = futures_util::future::join_all(joined).await;
        assert!(chunks
            .iter()
            .all(|c| c.as_ref().is_ok_and(|c| c[0].len() == 100)));
        assert_eq!(reads.held(), 100, "kept for readers behind");
        // Two more chunks, kept too, spend the budget.
        for index in 1..3 {
            let reserved = memory.reserve(100, || {}).await;
            let c = reads.chunk(&key, index, move || async move {
                Ok(Held::new(vec![Bytes::from(vec![2u8; 100])], Some(reserved)))
            });
            c.await.unwrap();
        }
        drop(chunks);
        // The budget is spent by kept chunks: a reader that must wait empties the cache
        // and gets its piece at once.
        let got = tokio::time::timeout(
            Duration::from_secs(5),
            memory.reserve(100, || reads.give_way()),
        )
        .await
        .expect("kept chunks give way");
        assert_eq!(reads.held(), 0);
        // While a reader waits, a chunk fetched meanwhile is not kept.
        let all_but = memory.reserve(200, || {}).await;
        let waiter = {
            let memory = memory.clone();
            tokio::spawn(async move { drop(memory.reserve(100, || {}).await) })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(memory.contended());
        let c = reads.chunk(&key, 5, || async {
            Ok(Held::new(vec![Bytes::from(vec![3u8; 100])], None))
        });
        c.await.unwrap();
        assert_eq!(reads.held(), 0, "nothing kept while a reader waits");
        drop((got, all_but));
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("the waiter is served")
            .unwrap();
    }
}
