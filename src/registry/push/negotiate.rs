//! Negotiating a push: validates the request, pins the files the registry has and opens
//! an upload session for the rest.

use std::collections::{BTreeMap, HashSet};

use uuid::Uuid;

use super::session::{plan, SessionFile, UploadSession};
use crate::meta::{keys, MetaTxExt};
use crate::model::{self, FileKind, FileRecord, FileRef};
use crate::protocol::{PushPlan, PushRequest};
use crate::registry::limits::{Door, Uploader};
use crate::registry::{template_record, transact, Registry, RegistryError, RegistryResult};

const MAX_DESCRIPTION: usize = 4096;
const MAX_FILES: usize = 1000;

/// A file whose name the registry holds with other bytes. A layer's name stands for its
/// content: every VM built on a layer shares it by name in its library, so a second
/// content under one name would make a pull overwrite a layer other VMs rely on. The
/// stored digest is not told: any pusher may name any layer.
pub(super) fn changed_in_place(name: &str, local: Option<&str>) -> RegistryError {
    let local = local.map_or_else(|| "a different size".to_string(), |d| format!("sha256 {d}"));
    RegistryError::Conflict(format!(
        "file {name} changed since it was pushed: the registry holds other bytes under that \
         name, the local file has {local}. A layer keeps its content once pushed, as every VM \
         built on it shares it by name: make the change a new layer (clone the VM and push the \
         clone) or restore the file's pushed content, then push again"
    ))
}

fn validate_request(req: &PushRequest) -> RegistryResult<()> {
    model::validate_template_name(&req.name)?;
    model::validate_tag(&req.tag)?;
    if req.description.len() > MAX_DESCRIPTION {
        return Err(RegistryError::BadRequest(format!(
            "description is longer than {MAX_DESCRIPTION} bytes"
        )));
    }
    if let Some(arch) = &req.arch {
        if !arch.is_empty() {
            model::validate_arch(arch)?;
        }
    }
    if !req.config.is_object() {
        return Err(RegistryError::BadRequest(
            "config must be a JSON object (the VM's config.yaml)".into(),
        ));
    }
    if req.files.is_empty() || req.files.len() > MAX_FILES {
        return Err(RegistryError::BadRequest(format!(
            "a version has 1 to {MAX_FILES} files"
        )));
    }
    let mut names = HashSet::new();
    let mut nvrams = 0;
    for f in &req.files {
        let as_ref = FileRef {
            name: f.name.clone(),
            kind: f.kind,
            size: f.size,
            sha256: f.sha256.clone().unwrap_or_default(),
        };
        model::validate_file(&as_ref)?;
        if !names.insert(f.name.as_str()) {
            return Err(RegistryError::BadRequest(format!(
                "file {} is listed twice",
                f.name
            )));
        }
        if f.kind == FileKind::Nvram {
            nvrams += 1;
            if f.sha256.is_none() {
                return Err(RegistryError::BadRequest(
                    "the nvram file needs its sha256 at negotiation".into(),
                ));
            }
        }
    }
    if nvrams > 1 {
        return Err(RegistryError::BadRequest(
            "a version has at most one nvram file".into(),
        ));
    }
    Ok(())
}

/// Refuses a new template whose name another template owns.
pub(super) async fn check_name_free(
    tx: &mut Box<dyn crate::meta::MetaTx>,
    name: &str,
    id: &Uuid,
) -> RegistryResult<()> {
    match tx.get_json::<Uuid>(&keys::template_name(name)).await? {
        Some(owner) if owner != *id => Err(RegistryError::Conflict(format!(
            "template {name:?} already exists with uuid {owner}: registry uuid ({owner}) doesn't match ({id})"
        ))),
        _ => Ok(()),
    }
}

impl Registry {
    /// Negotiates a push for `by`: pins the files the registry has and opens an upload
    /// session for the rest, one of those `by` may hold open.
    pub async fn negotiate(&self, req: PushRequest, by: &Uploader) -> RegistryResult<PushPlan> {
        validate_request(&req)?;
        crate::telemetry::trace::record_template(&req.id);
        self.check_config_size(&req.config)?;
        self.check_file_sizes(req.files.iter().map(|f| f.size))?;
        self.check_session_count().await?;
        let session_id = Uuid::new_v4().simple().to_string();
        let session = transact(self.meta(), async |tx| {
            let existing = template_record::load_tx(tx, self.meta(), &req.id).await?;
            let name = match existing.map(|l| l.template) {
                Some(t) => {
                    if t.versions.iter().any(|v| v.tag == req.tag) {
                        return Err(RegistryError::Conflict(format!(
                            "tag {:?} already exists in template {}",
                            req.tag, t.name
                        )));
                    }
                    self.check_version_count(&t.name, t.versions.len())?;
                    t.name
                }
                None => {
                    check_name_free(tx, &req.name, &req.id).await?;
                    self.check_template_count().await?;
                    req.name.clone()
                }
            };
            let mut files = Vec::with_capacity(req.files.len());
            for f in &req.files {
                let key = model::file_key(&f.name, f.kind, f.sha256.as_deref().unwrap_or(""));
                let record_key = keys::file(&key);
                let mut held = None;
                let present = match (tx.get_json::<FileRecord>(&record_key).await?, &f.sha256) {
                    (Some(record), _) if record.size != f.size => {
                        return Err(changed_in_place(&f.name, None));
                    }
                    (Some(record), Some(digest)) if *digest != record.sha256 => {
                        return Err(changed_in_place(&f.name, Some(digest)));
                    }
                    (Some(mut record), Some(_)) => {
                        record.pins.push(session_id.clone());
                        tx.put_json(&record_key, &record);
                        Some(record.sha256)
                    }
                    // Not sent, and not trusted either: the pin only keeps gc off the
                    // file until the commit compares the client's digest with this one.
                    (Some(mut record), None) if req.confirm_held => {
                        record.pins.push(session_id.clone());
                        tx.put_json(&record_key, &record);
                        held = Some(record.sha256);
                        None
                    }
                    // Without a digest the file is sent, and compared when it is complete.
                    (_, None) | (None, _) => None,
                };
                files.push(SessionFile {
                    name: f.name.clone(),
                    kind: f.kind,
                    size: f.size,
                    sha256: f.sha256.clone().or(present.clone()),
                    key,
                    upload: present.is_none() && held.is_none(),
                    part_size: self.part_size_for(f.size),
                    held,
                });
            }
            let session = UploadSession {
                id: session_id.clone(),
                template: req.id,
                name,
                tag: req.tag.clone(),
                description: req.description.clone(),
                arch: req.arch.clone().filter(|a| !a.is_empty()),
                config: req.config.clone(),
                files,
                created: model::now(),
                holder: by.key().map(str::to_string),
            };
            self.hold_upload_place(tx, Door::Push, by, &session_id)
                .await?;
            tx.put_json(&keys::session(&session_id), &session);
            tx.set_add(keys::SESSIONS, &session_id);
            Ok(session)
        })
        .await?;
        Ok(plan(&session, &BTreeMap::new()))
    }
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::super::testing::{push, registry, request};
    use crate::protocol::CommitRequest;
    use crate::registry::limits::Uploader;
    use crate::registry::RegistryError;

    #[tokio::test]
    async fn a_held_file_without_a_digest_is_confirmed_at_commit_never_trusted_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let r = registry(dir.path());
        let id = Uuid::new_v4();
        let files: &[(&str, &[u8])] = &[("held.ank", b"layer")];
        let anonymous = Uploader::anonymous();
        let plan = push(&r, request(id, "v0", files), files).await;
        r.commit(&plan.session, CommitRequest::default())
            .await
            .unwrap();
        let without_digest = |tag: &str, confirm_held: bool| {
            let mut req = request(id, tag, files);
            req.files[0].sha256 = None;
            req.confirm_held = confirm_held;
            req
        };

        // An older client, which does not confirm, sends the file again.
        let old = r
            .negotiate(without_digest("old", false), &anonymous)
            .await
            .unwrap();
        assert!(old.files[0].upload && !old.files[0].confirm);
        r.abort(&old.session).await.unwrap();

        // Held under that name and size: not sent; the plan tells the digest only to
        // whoever has the bytes.
        let plan = r
            .negotiate(without_digest("v1", true), &anonymous)
            .await
            .unwrap();
        let held = &plan.files[0];
        assert!(!held.upload && held.confirm);
        let stored = crate::digest::sha256_hex(b"layer");
        assert_eq!(held.sha256, None);
        assert_eq!(
            held.confirm_hint.as_deref(),
            Some(crate::protocol::held_hint(&plan.session, &stored).as_str())
        );
        let shown = serde_json::to_string(&plan).unwrap();
        assert!(!shown.contains(&stored), "{shown}");
        // Without the client's digest nothing is taken.
        assert!(matches!(
            r.commit(&plan.session, CommitRequest::default()).await,
            Err(RegistryError::BadRequest(_))
        ));
        // Other bytes under the same name and size are refused, not served as the old ones.
        let other = CommitRequest {
            digests: [(held.key.clone(), crate::digest::sha256_hex(b"LAYER"))].into(),
        };
        match r.commit(&plan.session, other).await {
            Err(RegistryError::Conflict(m)) => {
                assert!(m.contains("changed since it was pushed"), "{m}");
                assert!(
                    !m.contains(&stored),
                    "the refusal tells the stored digest: {m}"
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(r.get(&id).await.unwrap().versions.len(), 1);
        // The same bytes commit, referencing the one stored copy.
        let same = CommitRequest {
            digests: [(held.key.clone(), crate::digest::sha256_hex(b"layer"))].into(),
        };
        assert_eq!(r.commit(&plan.session, same).await.unwrap().number, 1);
        let record = r.file("held.ank").await.unwrap();
        assert_eq!((record.refs, record.pins.len()), (2, 0));
    }

    #[test]
    fn part_sizes_fit_five_terabytes_in_ten_thousand_parts() {
        let dir = tempfile::tempdir().unwrap();
        let r = registry(dir.path());
        assert_eq!(r.part_size_for(1 << 30), 5 << 20);
        let five_tb = 5_000_000_000_000u64;
        let part = r.part_size_for(five_tb);
        assert!(five_tb.div_ceil(part) <= 10_000);
        assert_eq!(part % (1 << 20), 0);
    }
}
