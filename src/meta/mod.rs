//! The metadata store: a small key-value store with optimistic multi-key transactions.
//!
//! Backends only move bytes under keys; every rule (dense version numbers, reference
//! counts, pins) lives once in `registry`, written against [`MetaTx`]. A transaction reads
//! keys (each read is watched), buffers writes and commits them all or none: `commit`
//! answers `false` when a key it read changed meanwhile, and the caller runs again.

#[cfg(test)]
mod contract;
pub mod embedded;
pub mod instrumented;
pub mod keys;
pub mod redis;
pub mod sentinel;

use async_trait::async_trait;
use serde::{de::DeserializeOwned, Serialize};

/// A failure of the metadata backend itself (not of the caller's input).
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    /// The backend cannot be reached or answered with an error.
    #[error("metadata store unavailable: {0}")]
    Unavailable(String),
    /// A stored record could not be decoded.
    #[error("corrupt metadata record {key}: {reason}")]
    Corrupt {
        /// The key holding the record.
        key: String,
        /// What was wrong.
        reason: String,
    },
}

/// Result of metadata operations.
pub type MetaResult<T> = Result<T, MetaError>;

/// A metadata backend (embedded redb or Redis).
#[async_trait]
pub trait MetaStore: Send + Sync {
    /// Starts a transaction.
    async fn begin(&self) -> MetaResult<Box<dyn MetaTx>>;
    /// Reads several keys outside any transaction.
    async fn get_many(&self, keys: &[String]) -> MetaResult<Vec<Option<Vec<u8>>>>;
    /// The members of a set.
    async fn members(&self, set: &str) -> MetaResult<Vec<String>>;
    /// The members of several sets, in the order asked. The default asks set by set;
    /// a networked backend answers in one round trip.
    async fn members_many(&self, sets: &[String]) -> MetaResult<Vec<Vec<String>>> {
        let mut out = Vec::with_capacity(sets.len());
        for set in sets {
            out.push(self.members(set).await?);
        }
        Ok(out)
    }
    /// How many members a set has, without reading them.
    async fn count(&self, set: &str) -> MetaResult<u64>;
    /// Every key that starts with `prefix`, in no particular order. It walks the whole
    /// keyspace on Redis: for maintenance (gc, fsck), never on a request's path. A key
    /// present from the start to the end of the walk is in the answer. Sets are keys too
    /// on Redis: ask only for prefixes no set name has.
    async fn keys_with_prefix(&self, prefix: &str) -> MetaResult<Vec<String>>;
    /// Answers when the backend is reachable.
    async fn ping(&self) -> MetaResult<()>;
    /// A short name for logs and the start-up banner.
    fn describe(&self) -> String;
}

/// One optimistic transaction.
#[async_trait]
pub trait MetaTx: Send {
    /// Reads a key; the transaction fails to commit if the key changes before then.
    async fn get(&mut self, key: &str) -> MetaResult<Option<Vec<u8>>>;
    /// Reads several keys, each watched as [`MetaTx::get`] watches one, in the order
    /// asked. The default reads key by key; a networked backend answers in one round trip.
    async fn get_many(&mut self, keys: &[String]) -> MetaResult<Vec<Option<Vec<u8>>>> {
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            out.push(self.get(key).await?);
        }
        Ok(out)
    }
    /// How many members a set has, as committed: this transaction's own buffered adds and
    /// removes are not counted. The transaction fails to commit if the count changes
    /// before then, so a cap checked with it holds however many writers race for the
    /// last place.
    async fn count(&mut self, set: &str) -> MetaResult<u64>;
    /// Buffers a write.
    fn put(&mut self, key: &str, value: Vec<u8>);
    /// Buffers a deletion.
    fn delete(&mut self, key: &str);
    /// Buffers adding a member to a set.
    fn set_add(&mut self, set: &str, member: &str);
    /// Buffers removing a member from a set.
    fn set_remove(&mut self, set: &str, member: &str);
    /// Applies every buffered change atomically; `Ok(false)` on a conflict.
    async fn commit(self: Box<Self>) -> MetaResult<bool>;
}

/// Typed reads and writes on top of [`MetaTx`].
#[async_trait]
pub trait MetaTxExt {
    /// Reads and decodes a JSON record.
    async fn get_json<T: DeserializeOwned>(&mut self, key: &str) -> MetaResult<Option<T>>;
    /// Encodes and buffers a JSON record.
    fn put_json<T: Serialize + Sync>(&mut self, key: &str, value: &T);
}

#[async_trait]
impl MetaTxExt for Box<dyn MetaTx> {
    async fn get_json<T: DeserializeOwned>(&mut self, key: &str) -> MetaResult<Option<T>> {
        match self.get(key).await? {
            None => Ok(None),
            Some(bytes) => decode(key, &bytes).map(Some),
        }
    }

    fn put_json<T: Serialize + Sync>(&mut self, key: &str, value: &T) {
        self.put(key, encode(value));
    }
}

/// Keys read per round trip by [`MetaStoreExt::get_many_json`].
const READ_BATCH: usize = 256;

/// Typed reads on top of [`MetaStore`], outside any transaction.
#[async_trait]
pub trait MetaStoreExt {
    /// Reads and decodes one JSON record.
    async fn get_json<T: DeserializeOwned>(&self, key: &str) -> MetaResult<Option<T>>;
    /// Reads and decodes many JSON records, in batches.
    async fn get_many_json<T: DeserializeOwned + Send>(
        &self,
        keys: &[String],
    ) -> MetaResult<Vec<Option<T>>>;
}

#[async_trait]
impl<M: MetaStore + ?Sized> MetaStoreExt for M {
    async fn get_json<T: DeserializeOwned>(&self, key: &str) -> MetaResult<Option<T>> {
        let found = self.get_many(&[key.to_string()]).await?.pop().flatten();
        found.map(|bytes| decode(key, &bytes)).transpose()
    }

    async fn get_many_json<T: DeserializeOwned + Send>(
        &self,
        keys: &[String],
    ) -> MetaResult<Vec<Option<T>>> {
        let mut out = Vec::with_capacity(keys.len());
        for batch in keys.chunks(READ_BATCH) {
            for (key, value) in batch.iter().zip(self.get_many(batch).await?) {
                out.push(value.map(|bytes| decode(key, &bytes)).transpose()?);
            }
        }
        Ok(out)
    }
}

/// Decodes a stored JSON record.
pub fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> MetaResult<T> {
    serde_json::from_slice(bytes).map_err(|e| MetaError::Corrupt {
        key: key.to_string(),
        reason: e.to_string(),
    })
}

/// Encodes a record as JSON; our records always serialize.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}
