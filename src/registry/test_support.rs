//! Helpers the service layer's unit tests share.

use std::path::Path;
use std::sync::Arc;

use uuid::Uuid;

use super::Registry;
use crate::meta::embedded::EmbeddedMeta;
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
        .negotiate(one_layer(id, template, tag, file, data))
        .await
        .unwrap();
    let body =
        futures_util::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::copy_from_slice(data))]);
    r.upload(&plan.session, file, 0, body).await.unwrap();
    r.commit(&plan.session, CommitRequest::default())
        .await
        .unwrap();
}
