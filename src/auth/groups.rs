//! Permission groups in the metadata store: a name and the permissions it grants. Each
//! change is written to the bucket before the metadata commit (see [`super::durable`]).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};

use super::permissions::Permission;
use super::{durable, read, read_many, read_set, retry, AuthError};
use crate::meta::{keys, MetaStore, MetaTxExt};
use crate::store::BlobStore;

/// Permission groups a registry holds at most.
pub const MAX_GROUPS: u64 = 1000;

/// A permission group.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Group {
    /// Its name, as API keys list it.
    pub name: String,
    /// What it grants.
    pub permissions: BTreeSet<Permission>,
}

/// Checks a group name: 1–128 characters of letters, digits, `.`, `_`, `-`, `@`.
pub fn valid_name(name: &str) -> Result<(), AuthError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'));
    if ok {
        Ok(())
    } else {
        Err(AuthError::BadRequest(format!(
            "invalid name {name:?}: use 1-128 letters, digits, '.', '_', '-' or '@'"
        )))
    }
}

/// Parses permission names; an unknown name is a 400 naming it.
pub fn parse_permissions(names: &[String]) -> Result<BTreeSet<Permission>, AuthError> {
    names
        .iter()
        .map(|n| {
            Permission::parse(n.trim())
                .ok_or_else(|| AuthError::BadRequest(format!("unknown permission {n:?}")))
        })
        .collect()
}

/// Every group, sorted by name.
pub async fn list(meta: &dyn MetaStore) -> Result<Vec<Group>, AuthError> {
    read_set(meta, keys::GROUPS, keys::group).await
}

/// One group, if it exists.
pub async fn get(meta: &dyn MetaStore, name: &str) -> Result<Option<Group>, AuthError> {
    read(meta, &keys::group(name)).await
}

/// What `groups` grant together; unknown groups grant nothing.
pub async fn granted(
    meta: &dyn MetaStore,
    groups: &[String],
) -> Result<BTreeSet<Permission>, AuthError> {
    let records: Vec<String> = groups.iter().map(|g| keys::group(g)).collect();
    let found: Vec<Group> = read_many(meta, &records).await?;
    Ok(found.into_iter().flat_map(|g| g.permissions).collect())
}

/// Creates or replaces a group; `only_if_new` leaves an existing one alone (seeding).
pub async fn put(
    meta: &dyn MetaStore,
    blobs: &dyn BlobStore,
    group: &Group,
    only_if_new: bool,
) -> Result<(), AuthError> {
    valid_name(&group.name)?;
    let key = keys::group(&group.name);
    let wrote = AtomicBool::new(false);
    let (key, wrote_ref) = (key.as_str(), &wrote);
    let put = retry(move || async move {
        let mut tx = meta.begin().await?;
        let exists = tx.get(key).await?.is_some();
        if only_if_new && exists {
            return Ok(Some(()));
        }
        if !exists && meta.count(keys::GROUPS).await? >= MAX_GROUPS {
            return Err(AuthError::Conflict(format!(
                "this registry holds its maximum of {MAX_GROUPS} permission groups; \
                 delete unused ones first"
            )));
        }
        durable::put_group(blobs, group).await?;
        wrote_ref.store(true, Ordering::Relaxed);
        tx.put_json(key, group);
        tx.set_add(keys::GROUPS, &group.name);
        Ok(tx.commit().await?.then_some(()))
    })
    .await;
    if put.is_err() && wrote.load(Ordering::Relaxed) {
        durable::rewrite_group(meta, blobs, &group.name).await;
    }
    put
}

/// Deletes a group; 404 when there is none. The bucket marks it deleted first.
pub async fn delete(
    meta: &dyn MetaStore,
    blobs: &dyn BlobStore,
    name: &str,
) -> Result<(), AuthError> {
    let key = keys::group(name);
    let wrote = AtomicBool::new(false);
    let (key, wrote_ref) = (key.as_str(), &wrote);
    let deleted = retry(move || async move {
        let mut tx = meta.begin().await?;
        if tx.get(key).await?.is_none() {
            return Err(AuthError::NotFound(format!("no permission group {name:?}")));
        }
        durable::delete_group(blobs, name).await?;
        wrote_ref.store(true, Ordering::Relaxed);
        tx.delete(key);
        tx.set_remove(keys::GROUPS, name);
        Ok(tx.commit().await?.then_some(()))
    })
    .await;
    match &deleted {
        Err(AuthError::NotFound(_)) => durable::forget_stray_group(blobs, name).await?,
        Err(_) if wrote.load(Ordering::Relaxed) => durable::rewrite_group(meta, blobs, name).await,
        _ => {}
    }
    deleted
}
