//! The metadata store trait for [`Instrumented`]: every round trip of the wrapped store timed.

use async_trait::async_trait;

use super::{MetaResult, MetaStore, MetaTx};
use crate::telemetry::metrics::timed;
use crate::telemetry::Instrumented;

fn failed<E>(_: &E) -> bool {
    true
}

#[async_trait]
impl<T: MetaStore> MetaStore for Instrumented<T> {
    async fn begin(&self) -> MetaResult<Box<dyn MetaTx>> {
        let inner = timed(self.name, "begin", failed, self.inner.begin()).await?;
        Ok(Box::new(InstrumentedTx {
            inner,
            name: self.name,
        }))
    }

    async fn get_many(&self, keys: &[String]) -> MetaResult<Vec<Option<Vec<u8>>>> {
        timed(self.name, "get_many", failed, self.inner.get_many(keys)).await
    }

    async fn members(&self, set: &str) -> MetaResult<Vec<String>> {
        timed(self.name, "members", failed, self.inner.members(set)).await
    }

    async fn count(&self, set: &str) -> MetaResult<u64> {
        timed(self.name, "count", failed, self.inner.count(set)).await
    }

    async fn keys_with_prefix(&self, prefix: &str) -> MetaResult<Vec<String>> {
        timed(
            self.name,
            "keys_with_prefix",
            failed,
            self.inner.keys_with_prefix(prefix),
        )
        .await
    }

    async fn ping(&self) -> MetaResult<()> {
        timed(self.name, "ping", failed, self.inner.ping()).await
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }
}

/// A transaction whose reads and commit are timed.
struct InstrumentedTx {
    inner: Box<dyn MetaTx>,
    name: &'static str,
}

#[async_trait]
impl MetaTx for InstrumentedTx {
    async fn get(&mut self, key: &str) -> MetaResult<Option<Vec<u8>>> {
        timed(self.name, "tx_get", failed, self.inner.get(key)).await
    }

    async fn get_many(&mut self, keys: &[String]) -> MetaResult<Vec<Option<Vec<u8>>>> {
        timed(self.name, "tx_get_many", failed, self.inner.get_many(keys)).await
    }

    async fn count(&mut self, set: &str) -> MetaResult<u64> {
        timed(self.name, "tx_count", failed, self.inner.count(set)).await
    }

    fn put(&mut self, key: &str, value: Vec<u8>) {
        self.inner.put(key, value)
    }

    fn delete(&mut self, key: &str) {
        self.inner.delete(key)
    }

    fn set_add(&mut self, set: &str, member: &str) {
        self.inner.set_add(set, member)
    }

    fn set_remove(&mut self, set: &str, member: &str) {
        self.inner.set_remove(set, member)
    }

    async fn commit(self: Box<Self>) -> MetaResult<bool> {
        timed(self.name, "commit", failed, self.inner.commit()).await
    }
}
