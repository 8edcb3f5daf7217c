//! Helpers the service layer's unit tests share.

use std::path::Path;
use std::sync::Arc;

use uuid::Uuid;

use super::limits::Uploader;
use super::Registry;
use crate::meta::embedded::EmbeddedMeta;
use crate::meta::{MetaResult, MetaStore, MetaTx};
use crate::model::FileKind;
use crate::protocol::{CommitRequest, PushFile, PushRequest};
use crate::store::fs::FsStore;

/// A registry on the embedded metadata store and the disk store, both kept in `dir`.
pub(crate) fn registry(dir: &Path) -> Registry {
    let meta = Arc::new(EmbeddedMeta::open(&dir.join("meta.redb")).unwrap());
    let blobs = Arc::new(FsStore::open(dir, 5 << 20).unwrap());
    Registry::new(meta, blobs, 5 << 20, 2)
}

/// The negotiation of one version of template `template` holding one image layer `file`
/// of `data`.
pub(crate) fn one_layer(
    id: Uuid,
    template: &str,
    tag: &str,
    file: &str,
    data: &[u8],
) -> PushRequest {
    PushRequest {
        id,
        name: template.into(),
        tag: tag.into(),
        description: String::new(),
        arch: None,
        config: serde_json::json!({}),
        files: vec![PushFile {
            name: file.into(),
            kind: FileKind::Image,
            size: data.len() as u64,
            sha256: Some(crate::digest::sha256_hex(data)),
        }],
        confirm_held: false,
    }
}

/// Pushes one version of template `template` holding one image layer `file` of `data`,
/// through negotiation, upload and commit.
pub(crate) async fn push_one(
    r: &Registry,
    id: Uuid,
    template: &str,
    tag: &str,
    file: &str,
    data: &[u8],
) {
    let plan = r
        .negotiate(
            one_layer(id, template, tag, file, data),
            &Uploader::anonymous(),
        )
        .await
        .unwrap();
    let body =
        futures_util::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::copy_from_slice(data))]);
    r.upload(&plan.session, file, 0, body).await.unwrap();
    r.commit(&plan.session, CommitRequest::default())
        .await
        .unwrap();
}

/// The embedded store, counting the bytes (keys and values) its transactions write, in
/// all and by the kind of key (its text up to the first `:`).
pub(crate) struct ByteCountingMeta {
    inner: EmbeddedMeta,
    written: Arc<std::sync::atomic::AtomicU64>,
    by_kind: Arc<ByKind>,
}

type ByKind = std::sync::Mutex<std::collections::HashMap<String, u64>>;

fn kind_of(key: &str) -> &str {
    key.split_once(':').map_or(key, |(kind, _)| kind)
}

impl ByteCountingMeta {
    /// Wraps `inner`.
    pub(crate) fn new(inner: EmbeddedMeta) -> Self {
        Self {
            inner,
            written: Arc::default(),
            by_kind: Arc::default(),
        }
    }

    /// Bytes written so far under keys of `kind` (`tpl` for `tpl:…`).
    pub(crate) fn written_to(&self, kind: &str) -> u64 {
        self.by_kind.lock().unwrap().get(kind).copied().unwrap_or(0)
    }

    /// Bytes written by the transactions committed or begun so far.
    pub(crate) fn written(&self) -> u64 {
        self.written.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[async_trait::async_trait]
impl MetaStore for ByteCountingMeta {
    async fn begin(&self) -> MetaResult<Box<dyn MetaTx>> {
        Ok(Box::new(ByteCountingTx {
            inner: self.inner.begin().await?,
            written: self.written.clone(),
            by_kind: self.by_kind.clone(),
        }))
    }
    async fn get_many(&self, keys: &[String]) -> MetaResult<Vec<Option<Vec<u8>>>> {
        self.inner.get_many(keys).await
    }
    async fn members(&self, set: &str) -> MetaResult<Vec<String>> {
        self.inner.members(set).await
    }
    async fn count(&self, set: &str) -> MetaResult<u64> {
        self.inner.count(set).await
    }
    async fn keys_with_prefix(&self, prefix: &str) -> MetaResult<Vec<String>> {
        self.inner.keys_with_prefix(prefix).await
    }
    async fn ping(&self) -> MetaResult<()> {
        self.inner.ping().await
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
}

struct ByteCountingTx {
    inner: Box<dyn MetaTx>,
    written: Arc<std::sync::atomic::AtomicU64>,
    by_kind: Arc<ByKind>,
}

impl ByteCountingTx {
    fn add(&self, key: &str, bytes: usize) {
        self.written
            .fetch_add(bytes as u64, std::sync::atomic::Ordering::SeqCst);
        *self
            .by_kind
            .lock()
            .unwrap()
            .entry(kind_of(key).to_string())
            .or_default() += bytes as u64;
    }
}

#[async_trait::async_trait]
impl MetaTx for ByteCountingTx {
    async fn get(&mut self, key: &str) -> MetaResult<Option<Vec<u8>>> {
        self.inner.get(key).await
    }
    async fn count(&mut self, set: &str) -> MetaResult<u64> {
        self.inner.count(set).await
    }
    fn put(&mut self, key: &str, value: Vec<u8>) {
        self.add(key, key.len() + value.len());
        self.inner.put(key, value)
    }
    fn delete(&mut self, key: &str) {
        self.add(key, key.len());
        self.inner.delete(key)
    }
    fn set_add(&mut self, set: &str, member: &str) {
        self.add(set, set.len() + member.len());
        self.inner.set_add(set, member)
    }
    fn set_remove(&mut self, set: &str, member: &str) {
        self.add(set, set.len() + member.len());
        self.inner.set_remove(set, member)
    }
    async fn commit(self: Box<Self>) -> MetaResult<bool> {
        self.inner.commit().await
    }
}
