//! Helpers for the push unit tests: a registry on the embedded stores in a temp dir.

use bytes::Bytes;
use uuid::Uuid;

use crate::model::FileKind;
use crate::protocol::{PushFile, PushPlan, PushRequest};
use crate::registry::limits::Uploader;
use crate::registry::Registry;

pub(super) use crate::registry::test_support::registry;

pub(super) fn request(id: Uuid, tag: &str, files: &[(&str, &[u8])]) -> PushRequest {
    PushRequest {
        id,
        name: format!("t-{id}"),
        tag: tag.into(),
        description: String::new(),
        arch: None,
        config: serde_json::json!({}),
        files: files
            .iter()
            .map(|(name, data)| PushFile {
                name: name.to_string(),
                kind: FileKind::Image,
                size: data.len() as u64,
                sha256: Some(crate::digest::sha256_hex(data)),
            })
            .collect(),
        confirm_held: false,
    }
}

pub(super) async fn push(r: &Registry, req: PushRequest, files: &[(&str, &[u8])]) -> PushPlan {
    let plan = r.negotiate(req, &Uploader::anonymous()).await.unwrap();
    for (name, data) in files {
        if plan.files.iter().any(|f| f.name == *name && f.upload) {
            let body =
                futures_util::stream::iter([Ok::<_, std::io::Error>(Bytes::copy_from_slice(data))]);
            r.upload(&plan.session, name, 0, body).await.unwrap();
        }
    }
    plan
}

pub(super) fn objects(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.join("objects/blobs")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path().strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}
