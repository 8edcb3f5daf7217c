//! Metadata in an embedded redb database: the default when no Redis is configured.
//!
//! One process owns the file, so transactions are serialized by a lock and never conflict;
//! reads see committed data plus the transaction's own buffered writes.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, TableDefinition};
use tokio::sync::{Mutex, OwnedMutexGuard};

use super::{MetaError, MetaResult, MetaStore, MetaTx};

const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
/// Set members are keys `<set>\0<member>` so a set is one key range.
const SETS: TableDefinition<&str, ()> = TableDefinition::new("sets");

/// Metadata in a redb file.
pub struct EmbeddedMeta {
    db: Arc<Database>,
    writer: Arc<Mutex<()>>,
    path: String,
}

fn unavailable(e: impl std::fmt::Display) -> MetaError {
    MetaError::Unavailable(e.to_string())
}

impl EmbeddedMeta {
    /// Opens (or creates) the database file.
    pub fn open(path: &Path) -> MetaResult<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(unavailable)?;
        }
        let db = Database::create(path).map_err(|e| match e {
            // Said plainly: redb's own words do not say who holds it or what to do.
            redb::DatabaseError::DatabaseAlreadyOpen => MetaError::Unavailable(format!(
                "{} is in use by another process (a running vmreg serve?): the embedded \
                 store has one user at a time",
                path.display()
            )),
            e => unavailable(e),
        })?;
        let w = db.begin_write().map_err(unavailable)?;
        w.open_table(KV).map_err(unavailable)?;
        w.open_table(SETS).map_err(unavailable)?;
        w.commit().map_err(unavailable)?;
        Ok(Self {
            db: Arc::new(db),
            writer: Arc::new(Mutex::new(())),
            path: path.display().to_string(),
        })
    }

    fn read_key(&self, key: &str) -> MetaResult<Option<Vec<u8>>> {
        read_key(&self.db, key)
    }
}

fn read_key(db: &Database, key: &str) -> MetaResult<Option<Vec<u8>>> {
    let r = db.begin_read().map_err(unavailable)?;
    let table = r.open_table(KV).map_err(unavailable)?;
    Ok(table
        .get(key)
        .map_err(unavailable)?
        .map(|v| v.value().to_vec()))
}

/// How many members `set` has, as committed.
fn count_members(db: &Database, set: &str) -> MetaResult<u64> {
    let r = db.begin_read().map_err(unavailable)?;
    let table = r.open_table(SETS).map_err(unavailable)?;
    let (start, end) = (format!("{set}\0"), format!("{set}\u{1}"));
    let mut n = 0;
    for item in table
        .range(start.as_str()..end.as_str())
        .map_err(unavailable)?
    {
        item.map_err(unavailable)?;
        n += 1;
    }
    Ok(n)
}

fn member_key(set: &str, member: &str) -> String {
    format!("{set}\0{member}")
}

#[async_trait]
impl MetaStore for EmbeddedMeta {
    async fn begin(&self) -> MetaResult<Box<dyn MetaTx>> {
        let guard = self.writer.clone().lock_owned().await;
        Ok(Box::new(EmbeddedTx {
            db: self.db.clone(),
            _guard: guard,
            overlay: HashMap::new(),
            ops: Vec::new(),
        }))
    }

    async fn get_many(&self, keys: &[String]) -> MetaResult<Vec<Option<Vec<u8>>>> {
        let r = self.db.begin_read().map_err(unavailable)?;
        let table = r.open_table(KV).map_err(unavailable)?;
        keys.iter()
            .map(|k| {
                Ok(table
                    .get(k.as_str())
                    .map_err(unavailable)?
                    .map(|v| v.value().to_vec()))
            })
            .collect()
    }

    async fn members(&self, set: &str) -> MetaResult<Vec<String>> {
        let r = self.db.begin_read().map_err(unavailable)?;
        let table = r.open_table(SETS).map_err(unavailable)?;
        let start = format!("{set}\0");
        let end = format!("{set}\u{1}");
        let mut out = Vec::new();
        for item in table
            .range(start.as_str()..end.as_str())
            .map_err(unavailable)?
        {
            let (k, _) = item.map_err(unavailable)?;
            out.push(k.value()[start.len()..].to_string());
        }
        Ok(out)
    }

    async fn count(&self, set: &str) -> MetaResult<u64> {
        count_members(&self.db, set)
    }

    async fn keys_with_prefix(&self, prefix: &str) -> MetaResult<Vec<String>> {
        let r = self.db.begin_read().map_err(unavailable)?;
        let table = r.open_table(KV).map_err(unavailable)?;
        let mut out = Vec::new();
        for item in table.range(prefix..).map_err(unavailable)? {
            let (k, _) = item.map_err(unavailable)?;
            if !k.value().starts_with(prefix) {
                break;
            }
            out.push(k.value().to_string());
        }
        Ok(out)
    }

    async fn ping(&self) -> MetaResult<()> {
        self.read_key("ping").map(|_| ())
    }

    fn describe(&self) -> String {
        format!("embedded database {}", self.path)
    }
}

enum Op {
    Put(String, Vec<u8>),
    Delete(String),
    SetAdd(String),
    SetRemove(String),
}

struct EmbeddedTx {
    db: Arc<Database>,
    _guard: OwnedMutexGuard<()>,
    overlay: HashMap<String, Option<Vec<u8>>>,
    ops: Vec<Op>,
}

#[async_trait]
impl MetaTx for EmbeddedTx {
    async fn get(&mut self, key: &str) -> MetaResult<Option<Vec<u8>>> {
        match self.overlay.get(key) {
            Some(v) => Ok(v.clone()),
            None => read_key(&self.db, key),
        }
    }

    async fn count(&mut self, set: &str) -> MetaResult<u64> {
        // Transactions hold the writer lock from begin to commit: nothing changes the
        // count meanwhile.
        count_members(&self.db, set)
    }

    fn put(&mut self, key: &str, value: Vec<u8>) {
        self.overlay.insert(key.to_string(), Some(value.clone()));
        self.ops.push(Op::Put(key.to_string(), value));
    }

    fn delete(&mut self, key: &str) {
        self.overlay.insert(key.to_string(), None);
        self.ops.push(Op::Delete(key.to_string()));
    }

    fn set_add(&mut self, set: &str, member: &str) {
        self.ops.push(Op::SetAdd(member_key(set, member)));
    }

    fn set_remove(&mut self, set: &str, member: &str) {
        self.ops.push(Op::SetRemove(member_key(set, member)));
    }

    async fn commit(self: Box<Self>) -> MetaResult<bool> {
        let EmbeddedTx {
            db, _guard, ops, ..
        } = *self;
        if ops.is_empty() {
            return Ok(true);
        }
        // The commit fsyncs; keep it off the async worker. The guard stays held until the
        // write is durable so the next transaction reads it.
        tokio::task::spawn_blocking(move || -> MetaResult<()> {
            let w = db.begin_write().map_err(unavailable)?;
            {
                let mut kv = w.open_table(KV).map_err(unavailable)?;
                let mut sets = w.open_table(SETS).map_err(unavailable)?;
                for op in &ops {
                    match op {
                        Op::Put(k, v) => {
                            kv.insert(k.as_str(), v.as_slice()).map_err(unavailable)?;
                        }
                        Op::Delete(k) => {
                            kv.remove(k.as_str()).map_err(unavailable)?;
                        }
                        Op::SetAdd(m) => {
                            sets.insert(m.as_str(), ()).map_err(unavailable)?;
                        }
                        Op::SetRemove(m) => {
                            sets.remove(m.as_str()).map_err(unavailable)?;
                        }
                    }
                }
            }
            w.commit().map_err(unavailable)
        })
        .await
        .map_err(unavailable)??;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn writes_are_atomic_and_visible_after_commit() {
        let dir = tempfile::tempdir().unwrap();
        let meta = EmbeddedMeta::open(&dir.path().join("m.redb")).unwrap();
        crate::meta::contract::transactions_are_atomic(&meta).await;
    }

    #[tokio::test]
    async fn a_transaction_reads_many_keys_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let meta = EmbeddedMeta::open(&dir.path().join("m.redb")).unwrap();
        crate::meta::contract::a_transaction_reads_many_keys_in_order(&meta).await;
    }

    #[tokio::test]
    async fn keys_are_found_by_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let meta = EmbeddedMeta::open(&dir.path().join("m.redb")).unwrap();
        crate::meta::contract::keys_are_found_by_prefix(&meta).await;
    }

    #[tokio::test]
    async fn a_cap_counted_in_a_transaction_holds_under_racing_writers() {
        let dir = tempfile::tempdir().unwrap();
        let meta = EmbeddedMeta::open(&dir.path().join("m.redb")).unwrap();
        crate::meta::contract::a_cap_counted_in_a_transaction_holds_under_racing_writers(&meta)
            .await;
    }
}
