//! Ending a push without a version: on request, or when its session went stale.

use super::session::session_not_found;
use crate::meta::keys;
use crate::model;
use crate::registry::gc::{delete_objects, release, Release};
use crate::registry::limits::{release_upload_place, Door};
use crate::registry::upload::delete_state;
use crate::registry::{transact, Registry, RegistryError, RegistryResult};

impl Registry {
    /// Ends a session without a version: unpins its files and discards its uploads.
    pub async fn abort(&self, session_id: &str) -> RegistryResult<()> {
        let session = self.load_session(session_id).await?;
        let states = self.load_states(&session).await?;
        let objects = transact(self.meta(), async |tx| {
            if tx.get(&keys::session(session_id)).await?.is_none() {
                return Err(session_not_found(session_id));
            }
            let mut objects = Vec::new();
            for f in session.files.iter().filter(|f| !f.upload) {
                objects.extend(release(tx, &f.key, Release::Unpin(session_id)).await?);
            }
            for f in session.files.iter().filter(|f| f.upload) {
                delete_state(tx, &keys::upload(session_id, &f.key)).await?;
            }
            tx.delete(&keys::session(session_id));
            tx.set_remove(keys::SESSIONS, session_id);
            release_upload_place(tx, Door::Push, session.holder.as_deref(), session_id);
            Ok(objects)
        })
        .await?;
        // The manifest a commit of this push may have written goes before the files it
        // names, as with a revert.
        let manifest = crate::store::keys::push_manifest(&session.template, session_id);
        if let Err(e) = self.blobs.delete(&manifest).await {
            tracing::warn!(manifest, error = %e, "could not delete the manifest of an aborted push");
        }
        for state in states.values() {
            if let Some(handle) = &state.handle {
                let _ = match state.complete() {
                    true => self.blobs.delete(&handle.key).await,
                    false => self.blobs.abort_upload(handle).await,
                };
            }
        }
        delete_objects(self.blobs(), &objects).await;
        Ok(())
    }

    /// Aborts sessions older than `max_age_secs`, and OCI uploads as old; returns how many.
    pub async fn purge_stale_sessions(&self, max_age_secs: u64) -> RegistryResult<usize> {
        let cutoff = model::now().saturating_sub(max_age_secs);
        let mut purged = 0;
        for id in self.meta.members(keys::SESSIONS).await? {
            match self.load_session(&id).await {
                Ok(s) if s.created < cutoff => {
                    self.abort(&id).await?;
                    purged += 1;
                }
                Err(RegistryError::NotFound(_)) => {
                    // A member without a session: clear the stale membership.
                    transact(self.meta(), async |tx| {
                        tx.set_remove(keys::SESSIONS, &id);
                        Ok(())
                    })
                    .await?;
                }
                _ => {}
            }
        }
        Ok(purged + self.oci_purge_stale_uploads(max_age_secs).await?)
    }
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::super::testing::{objects, push, registry, request};
    use crate::protocol::CommitRequest;
    use crate::registry::RegistryError;

    #[tokio::test]
    async fn purging_stale_sessions_frees_their_uploads_but_never_a_referenced_file() {
        let dir = tempfile::tempdir().unwrap();
        let r = registry(dir.path());
        let base: &[u8] = b"base layer";
        let committed = Uuid::new_v4();
        let plan = push(
            &r,
            request(committed, "v0", &[("base.ank", base)]),
            &[("base.ank", base)],
        )
        .await;
        r.commit(&plan.session, CommitRequest::default())
            .await
            .unwrap();

        // A stale push pinned base.ank and uploaded new.ank without committing.
        let new: &[u8] = b"new layer";
        let stale = push(
            &r,
            request(Uuid::new_v4(), "x", &[("base.ank", base), ("new.ank", new)]),
            &[("new.ank", new)],
        )
        .await;
        assert!(stale
            .files
            .iter()
            .any(|f| f.name == "base.ank" && !f.upload));
        assert_eq!(
            objects(dir.path()).len(),
            2,
            "base.ank and the uploaded new.ank"
        );

        assert_eq!(
            r.purge_stale_sessions(3600).await.unwrap(),
            0,
            "a fresh session is kept"
        );
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
        assert_eq!(r.purge_stale_sessions(0).await.unwrap(), 1);

        let left = objects(dir.path());
        assert_eq!(left.len(), 1, "the abandoned upload is gone: {left:?}");
        assert!(left[0].contains("base.ank"));
        let record = r.file("base.ank").await.unwrap();
        assert_eq!((record.refs, record.pins.len()), (1, 0));
        assert!(matches!(
            r.commit(&stale.session, CommitRequest::default()).await,
            Err(RegistryError::NotFound(_))
        ));
    }
}
