//! Reference counting of stored files: a file's record goes, and its object with it, only
//! when no version references it and no open push pinned it.

use crate::meta::{keys, MetaTx, MetaTxExt};
use crate::model::FileRecord;

use super::{RegistryError, RegistryResult};

/// How a file is being let go of.
pub(crate) enum Release<'a> {
    /// A version referencing it was removed.
    Unref,
    /// An upload session that pinned it ended.
    Unpin(&'a str),
}

/// Lets go of `key` within the transaction; returns the object to delete once the
/// transaction commits, when nothing holds the file any more.
pub(crate) async fn release(
    tx: &mut Box<dyn MetaTx>,
    key: &str,
    how: Release<'_>,
) -> RegistryResult<Option<String>> {
    let record_key = keys::file(key);
    let Some(mut record) = tx.get_json::<FileRecord>(&record_key).await? else {
        return match how {
            // A pin on a file that is gone is nothing to release.
            Release::Unpin(_) => Ok(None),
            Release::Unref => Err(RegistryError::Conflict(format!(
                "file {key} has no record; metadata is inconsistent"
            ))),
        };
    };
    match how {
        Release::Unref => record.refs = record.refs.saturating_sub(1),
        Release::Unpin(session) => record.pins.retain(|p| p != session),
    }
    if record.refs == 0 && record.pins.is_empty() {
        tx.delete(&record_key);
        Ok(Some(record.object))
    } else {
        tx.put_json(&record_key, &record);
        Ok(None)
    }
}

/// Deletes objects released by a committed transaction. A failure leaves an orphan object
/// (wasted space, never a dangling reference), so it is logged, not returned.
pub(crate) async fn delete_objects(blobs: &dyn crate::store::BlobStore, objects: &[String]) {
    for object in objects {
        if let Err(e) = blobs.delete(object).await {
            tracing::warn!(object, error = %e, "could not delete an unreferenced object");
        }
    }
}
