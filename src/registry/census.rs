//! Who holds a stored object: the facts `fsck` and `gc` both judge objects by.
//!
//! An object `blobs/<file key>/<session>` is written only by the upload session named in
//! its key, and becomes a file's object only when that session commits (the commit deletes
//! the session and writes the file record in one transaction). So an object is held while
//! its file record names it or its session is open; once neither holds, nothing can ever
//! reference it again, as session ids are never reused. This makes the judgement safe
//! against concurrent pushes without a consistent snapshot of the whole index.
//!
//! An OCI object `blobs/oci/<id>` is written by the OCI upload `<id>`, or by a manifest
//! PUT just before its record (a window of one transaction, which the grace window
//! covers). It is held while that upload is open, or while a content record or a stored
//! manifest names it (see [`super::oci::held`]); the records are read after the uploads,
//! so an upload that completes in between is seen on one side or the other.

use std::collections::{HashMap, HashSet};

use crate::meta::{keys, MetaStore, MetaStoreExt};
use crate::model::FileRecord;
use crate::store::ObjectInfo;

use super::push::UploadSession;
use super::upload::UploadState;
use super::RegistryResult;

/// The file key part of the objects the OCI front door writes (`blobs/oci/<upload>`).
pub(crate) const OCI_FILE_KEY: &str = "oci";

/// The metadata key of the session that writes an object, by the session's front door.
fn writer_key(file_key: &str, session: &str) -> String {
    match file_key == OCI_FILE_KEY {
        true => keys::oci_upload(session),
        false => keys::session(session),
    }
}

/// True when the session of a pending upload's key is still open (either front door).
pub(crate) async fn writer_open(meta: &dyn MetaStore, object: &str) -> RegistryResult<bool> {
    let Some((file, session)) = blob_owner(object) else {
        return Ok(false);
    };
    let found = meta.get_many(&[writer_key(file, session)]).await?;
    Ok(found.into_iter().next().flatten().is_some())
}

/// Prefix of the objects holding file bytes.
pub(crate) const BLOBS: &str = "blobs/";

/// The file key and session an object key was made from (see
/// [`crate::store::keys::blob`]).
pub(crate) fn blob_owner(object: &str) -> Option<(&str, &str)> {
    object.strip_prefix(BLOBS)?.rsplit_once('/')
}

/// Why an object is kept, or that nothing holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Holder {
    /// A file record (or, for an OCI object, a content record or a manifest) names it.
    File,
    /// Its upload session is still open.
    Session,
    /// Nothing: it can never be referenced again.
    Nobody,
}

/// The open upload sessions: members of the session set, each with its record when it
/// still has one.
pub(crate) async fn sessions(
    meta: &dyn MetaStore,
) -> RegistryResult<Vec<(String, Option<UploadSession>)>> {
    let ids = meta.members(keys::SESSIONS).await?;
    let wanted: Vec<String> = ids.iter().map(|id| keys::session(id)).collect();
    let found = meta.get_many_json::<UploadSession>(&wanted).await?;
    Ok(ids.into_iter().zip(found).collect())
}

/// The upload states of open sessions' files, by session and file key.
pub(crate) async fn upload_states(
    meta: &dyn MetaStore,
    sessions: &[(String, Option<UploadSession>)],
) -> RegistryResult<Vec<(String, String, UploadState)>> {
    let mut wanted = Vec::new();
    let mut names = Vec::new();
    for (id, session) in sessions {
        for f in session.iter().flat_map(|s| &s.files).filter(|f| f.upload) {
            wanted.push(keys::upload(id, &f.key));
            names.push((id.clone(), f.key.clone()));
        }
    }
    let found = meta.get_many_json::<UploadState>(&wanted).await?;
    Ok(names
        .into_iter()
        .zip(found)
        .filter_map(|((session, key), state)| state.map(|s| (session, key, s)))
        .collect())
}

/// Judges every object under `blobs/`: read each object's session first and its file
/// record after, so a commit in between (which removes one and writes the other at once)
/// is seen on one side or the other.
pub(crate) async fn holders(
    meta: &dyn MetaStore,
    objects: &[ObjectInfo],
) -> RegistryResult<Vec<Holder>> {
    let owners: Vec<Option<(&str, &str)>> = objects.iter().map(|o| blob_owner(&o.key)).collect();
    let session_keys: Vec<String> = owners
        .iter()
        .map(|o| o.map_or_else(|| keys::session(""), |(f, s)| writer_key(f, s)))
        .collect();
    let open: Vec<bool> = meta
        .get_many(&session_keys)
        .await?
        .into_iter()
        .map(|v| v.is_some())
        .collect();
    let file_keys: Vec<String> = {
        let unique: HashSet<&str> = owners.iter().flatten().map(|(f, _)| *f).collect();
        unique.into_iter().map(keys::file).collect()
    };
    let records: HashMap<String, FileRecord> = file_keys
        .iter()
        .cloned()
        .zip(meta.get_many_json::<FileRecord>(&file_keys).await?)
        .filter_map(|(k, r)| r.map(|r| (k, r)))
        .collect();
    let is_oci = |owner: Option<(&str, &str)>| owner.is_some_and(|(file, _)| file == OCI_FILE_KEY);
    let oci_held = match owners.iter().any(|o| is_oci(*o)) {
        true => super::oci::held::held_objects(meta).await?,
        false => HashSet::new(),
    };
    Ok(objects
        .iter()
        .zip(owners)
        .zip(open)
        .map(|((object, owner), open)| {
            let named = match is_oci(owner) {
                true => oci_held.contains(&object.key),
                false => owner
                    .and_then(|(file, _)| records.get(&keys::file(file)))
                    .is_some_and(|r| r.object == object.key),
            };
            match (named, open && owner.is_some()) {
                (true, _) => Holder::File,
                (false, true) => Holder::Session,
                (false, false) => Holder::Nobody,
            }
        })
        .collect())
}
