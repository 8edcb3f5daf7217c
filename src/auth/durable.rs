//! Identities in the bucket: the truth a lost metadata store is rebuilt from.
//!
//! Every API key generation, every permission group and (sealed) the session signing
//! secret are written to the blob store under `identities/` **before** the metadata
//! commit that makes them live, as a version's manifest is, and `vmreg admin reindex`
//! restores them. Only what the registry may publish goes there: a key's public half,
//! groups, lifetime and generation, a group's permissions; never a private key, a token,
//! a TAP secret, or the signing secret in the clear.
//!
//! Deletions are kept as durably as creations, and in the same order: the mark goes to
//! the bucket first, the metadata store forgets after.
//! - A deleted key leaves `identities/revoked/<id>.<generation>.json`, written once and
//!   never rewritten: an update racing the delete may rewrite the generation's record,
//!   but never its mark, so the generation can never come back. A crash between the mark
//!   and the metadata delete leaves a key that the registry still honours and a reindex
//!   removes (`fsck` names it).
//! - A deleted group is overwritten by a record that says so (a put racing the delete
//!   simply comes after it, as it might have anyway).
//!
//! A create or update whose bucket write landed but whose commit never came (a crash in
//! between, or a conflict that ended the request) is written back from the metadata
//! store when the request ends; only a crash in that window leaves it for a reindex to
//! find, as with manifests.
//!
//! Per-template grants, once they exist, go the same way (see
//! `crate::store::keys::IDENTITIES`).

use std::collections::{BTreeMap, BTreeSet, HashSet};

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use ring::aead;
use serde::{Deserialize, Serialize};

use super::apikeys::ApiKey;
use super::config::Secret;
use super::groups::Group;
use super::permissions::Permission;
use super::{now_secs, AuthError};
use crate::meta::{self, keys, MetaStore, MetaStoreExt};
use crate::store::{keys as object_keys, BlobStore, StoreError};

/// Identity objects read at once.
const READ_CONCURRENCY: usize = 16;

/// The mark of a deleted key generation.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Revoked {
    /// The key's id.
    pub id: String,
    /// The generation deleted.
    pub generation: String,
    /// Epoch seconds of the delete.
    pub revoked: u64,
}

/// A permission group as the bucket keeps it: its permissions, or that it was deleted.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StoredGroup {
    /// The group's name.
    pub name: String,
    /// What it grants (empty when deleted).
    #[serde(default)]
    pub permissions: BTreeSet<Permission>,
    /// True once the group was deleted.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
}

fn json<T: Serialize>(value: &T) -> Bytes {
    Bytes::from(meta::encode(value))
}

/// Writes (or rewrites) a key generation's record.
pub async fn put_key(blobs: &dyn BlobStore, key: &ApiKey) -> Result<(), AuthError> {
    let object = object_keys::identity_key(&key.id, &key.generation);
    Ok(blobs.put(&object, json(key)).await?)
}

/// Marks a key generation deleted, for good.
pub async fn revoke_key(blobs: &dyn BlobStore, key: &ApiKey) -> Result<(), AuthError> {
    let mark = Revoked {
        id: key.id.clone(),
        generation: key.generation.clone(),
        revoked: now_secs(),
    };
    let object = object_keys::identity_revoked(&key.id, &key.generation);
    Ok(blobs.put(&object, json(&mark)).await?)
}

/// Removes a key generation's record once its mark is written and the index forgot it;
/// a failure only leaves a record the mark keeps dead.
pub async fn drop_key(blobs: &dyn BlobStore, key: &ApiKey) {
    let object = object_keys::identity_key(&key.id, &key.generation);
    if let Err(e) = blobs.delete(&object).await {
        tracing::warn!(object, error = %e, "could not remove a deleted key's record");
    }
}

/// Writes (or rewrites) a group.
pub async fn put_group(blobs: &dyn BlobStore, group: &Group) -> Result<(), AuthError> {
    let stored = StoredGroup {
        name: group.name.clone(),
        permissions: group.permissions.clone(),
        deleted: false,
    };
    let object = object_keys::identity_group(&group.name);
    Ok(blobs.put(&object, json(&stored)).await?)
}

/// Marks a group deleted.
pub async fn delete_group(blobs: &dyn BlobStore, name: &str) -> Result<(), AuthError> {
    let stored = StoredGroup {
        name: name.to_string(),
        permissions: BTreeSet::new(),
        deleted: true,
    };
    Ok(blobs
        .put(&object_keys::identity_group(name), json(&stored))
        .await?)
}

/// After a change of key `id` that did not commit (or whose commit's answer was lost):
/// makes the bucket hold what the index holds, over what the change wrote ahead, and
/// removes the record of `ours`, a generation a create wrote, unless the index holds it.
/// Logged, not returned: the request's own error is what the caller hears.
pub async fn settle_key(
    meta: &dyn MetaStore,
    blobs: &dyn BlobStore,
    id: &str,
    ours: Option<&ApiKey>,
) {
    let held = match meta.get_json::<ApiKey>(&keys::api_key(id)).await {
        Ok(held) => held,
        Err(e) => {
            tracing::warn!(key = %id, error = %e, "could not settle the key's record in the bucket");
            return;
        }
    };
    if let Some(k) = &held {
        if let Err(e) = put_key(blobs, k).await {
            tracing::warn!(key = %id, error = %e, "could not write the key back to the bucket");
        }
    }
    if let Some(ours) = ours {
        if !held.is_some_and(|k| k.generation == ours.generation) {
            drop_key(blobs, ours).await;
        }
    }
}

/// Marks deleted every generation of `id` the bucket holds live although the index holds
/// none (creates whose commit never came), so that a delete asked for the id holds
/// through a rebuild.
pub async fn revoke_strays(blobs: &dyn BlobStore, id: &str) -> Result<(), AuthError> {
    let prefix = format!("{}{id}.", object_keys::IDENTITY_KEYS);
    for object in blobs.list(&prefix).await? {
        let bytes = match blobs.read(&object).await {
            Ok(b) => b,
            Err(StoreError::NotFound(_)) => continue,
            Err(e) => return Err(e.into()),
        };
        // The prefix of "a" lists the keys of "a.b" too: the record says whose it is.
        match serde_json::from_slice::<ApiKey>(&bytes) {
            Ok(k) if k.id == id => {
                revoke_key(blobs, &k).await?;
                drop_key(blobs, &k).await;
            }
            _ => {}
        }
    }
    Ok(())
}

/// Like [`settle_key`], for a group: the bucket gets what the index holds, or the mark
/// that it holds none.
pub async fn rewrite_group(meta: &dyn MetaStore, blobs: &dyn BlobStore, name: &str) {
    let held = meta.get_json::<Group>(&keys::group(name)).await;
    let done = match held {
        Ok(Some(group)) => put_group(blobs, &group).await,
        Ok(None) => delete_group(blobs, name).await,
        Err(e) => Err(e.into()),
    };
    if let Err(e) = done {
        tracing::warn!(group = %name, error = %e, "could not write the group back to the bucket");
    }
}

/// Marks group `name` deleted when the bucket holds it live although the index does not
/// (a put whose commit never came), so that a delete asked for it holds through a rebuild.
pub async fn forget_stray_group(blobs: &dyn BlobStore, name: &str) -> Result<(), AuthError> {
    let object = object_keys::identity_group(name);
    let bytes = match blobs.read(&object).await {
        Ok(b) => b,
        Err(StoreError::NotFound(_)) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    match serde_json::from_slice::<StoredGroup>(&bytes) {
        Ok(g) if g.deleted => Ok(()),
        _ => delete_group(blobs, name).await,
    }
}

// ---------------------------------------------------------------------------------------
// The session signing secret, sealed.

/// What the sealing key is derived with from `--identity-secret`.
const SEAL_SALT: &[u8] = b"vmreg identity secret v1";
/// Binds a sealed secret to its place, so no other sealed object can stand in for it.
const SEAL_AAD: &[u8] = b"vmreg session signing key v1";

/// The signing secret as the bucket keeps it: AES-256-GCM under a key derived (HKDF-SHA256)
/// from the identity secret.
#[derive(Debug, Serialize, Deserialize)]
struct SealedSecret {
    /// Always `AES-256-GCM`.
    alg: String,
    /// base64 of the 12-byte nonce.
    nonce: String,
    /// base64 of the ciphertext and its tag.
    sealed: String,
}

struct SealKeyLen;

impl ring::hkdf::KeyType for SealKeyLen {
    fn len(&self) -> usize {
        32
    }
}

fn seal_key(identity: &Secret) -> Result<aead::LessSafeKey, AuthError> {
    let salt = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, SEAL_SALT);
    let prk = salt.extract(identity.expose().as_bytes());
    let mut key = [0u8; 32];
    prk.expand(&[b"signing-key"], SealKeyLen)
        .and_then(|okm| okm.fill(&mut key))
        .map_err(|_| AuthError::Internal("deriving the sealing key failed".into()))?;
    let unbound = aead::UnboundKey::new(&aead::AES_256_GCM, &key)
        .map_err(|_| AuthError::Internal("the sealing key is invalid".into()))?;
    Ok(aead::LessSafeKey::new(unbound))
}

/// Seals `secret` for the bucket.
fn seal(identity: &Secret, secret: &[u8]) -> Result<Bytes, AuthError> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let key = seal_key(identity)?;
    let mut nonce = [0u8; aead::NONCE_LEN];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut nonce)
        .map_err(|_| AuthError::Internal("no randomness".into()))?;
    let mut sealed = secret.to_vec();
    key.seal_in_place_append_tag(
        aead::Nonce::assume_unique_for_key(nonce),
        aead::Aad::from(SEAL_AAD),
        &mut sealed,
    )
    .map_err(|_| AuthError::Internal("sealing the signing key failed".into()))?;
    Ok(json(&SealedSecret {
        alg: "AES-256-GCM".into(),
        nonce: b64.encode(nonce),
        sealed: b64.encode(sealed),
    }))
}

/// Why a sealed secret could not be opened.
#[derive(Debug)]
pub enum Unsealed {
    /// The bucket holds no sealed secret.
    Absent,
    /// It holds one that this identity secret does not open (another secret sealed it, or
    /// it was altered).
    WrongSecret,
}

/// The signing secret the bucket holds, opened with `identity`.
pub async fn open_signing_key(
    blobs: &dyn BlobStore,
    identity: &Secret,
) -> Result<Result<Vec<u8>, Unsealed>, AuthError> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let bytes = match blobs.read(object_keys::IDENTITY_SIGNING_KEY).await {
        Ok(b) => b,
        Err(StoreError::NotFound(_)) => return Ok(Err(Unsealed::Absent)),
        Err(e) => return Err(e.into()),
    };
    let Ok(stored) = serde_json::from_slice::<SealedSecret>(&bytes) else {
        return Ok(Err(Unsealed::WrongSecret));
    };
    let (Ok(nonce), Ok(mut sealed)) = (b64.decode(&stored.nonce), b64.decode(&stored.sealed))
    else {
        return Ok(Err(Unsealed::WrongSecret));
    };
    let Ok(nonce) = aead::Nonce::try_assume_unique_for_key(&nonce) else {
        return Ok(Err(Unsealed::WrongSecret));
    };
    let key = seal_key(identity)?;
    match key.open_in_place(nonce, aead::Aad::from(SEAL_AAD), &mut sealed) {
        Ok(plain) => Ok(Ok(plain.to_vec())),
        Err(_) => Ok(Err(Unsealed::WrongSecret)),
    }
}

/// Writes `secret` sealed under `identity`, unless the bucket holds it so already.
pub async fn keep_signing_key(
    blobs: &dyn BlobStore,
    identity: &Secret,
    secret: &[u8],
) -> Result<(), AuthError> {
    match open_signing_key(blobs, identity).await? {
        Ok(held) if super::same_secret(&held, secret) => Ok(()),
        found => {
            if matches!(found, Err(Unsealed::WrongSecret)) {
                tracing::warn!(
                    "the sealed signing key in the bucket does not open with the configured \
                     identity secret; sealing the live one under it"
                );
            }
            let sealed = seal(identity, secret)?;
            Ok(blobs.put(object_keys::IDENTITY_SIGNING_KEY, sealed).await?)
        }
    }
}

// ---------------------------------------------------------------------------------------
// Reading it all back: reindex, fsck and the first start after an upgrade.

/// Every identity object in the bucket.
#[derive(Debug, Default)]
pub struct Found {
    /// Key generations by id (a deleted generation's record may still be among them).
    pub keys: BTreeMap<String, Vec<ApiKey>>,
    /// Deleted generations, `(id, generation)`.
    pub revoked: HashSet<(String, String)>,
    /// Groups by name, deleted ones included.
    pub groups: BTreeMap<String, StoredGroup>,
    /// Objects that could not be read as what their place says.
    pub warnings: Vec<String>,
}

impl Found {
    /// The live generation of each key: not deleted, and the newest when a crash left
    /// more than one (a create whose commit never came).
    pub fn live_keys(&self) -> BTreeMap<&str, &ApiKey> {
        let mut out = BTreeMap::new();
        for (id, generations) in &self.keys {
            let newest = generations
                .iter()
                .filter(|k| !self.is_revoked(k))
                .max_by(|a, b| (a.created, &a.generation).cmp(&(b.created, &b.generation)));
            if let Some(k) = newest {
                out.insert(id.as_str(), k);
            }
        }
        out
    }

    /// True when `key`'s generation was deleted.
    pub fn is_revoked(&self, key: &ApiKey) -> bool {
        self.revoked
            .contains(&(key.id.clone(), key.generation.clone()))
    }

    /// The groups not deleted.
    pub fn live_groups(&self) -> impl Iterator<Item = &StoredGroup> {
        self.groups.values().filter(|g| !g.deleted)
    }
}

/// Reads every key, mark and group under `identities/`.
pub async fn load(blobs: &dyn BlobStore) -> Result<Found, AuthError> {
    let listed = blobs.list(object_keys::IDENTITIES).await?;
    let wanted = listed.into_iter().filter(|k| {
        k.ends_with(".json")
            && [
                object_keys::IDENTITY_KEYS,
                object_keys::IDENTITY_REVOKED,
                object_keys::IDENTITY_GROUPS,
            ]
            .iter()
            .any(|p| k.starts_with(p))
    });
    let read = futures_util::stream::iter(wanted)
        .map(|key| async move {
            match blobs.read(&key).await {
                Ok(bytes) => Ok(Some((key, bytes))),
                // Removed between the listing and the read (a delete finishing).
                Err(StoreError::NotFound(_)) => Ok(None),
                Err(e) => Err(AuthError::from(e)),
            }
        })
        .buffer_unordered(READ_CONCURRENCY)
        .try_collect::<Vec<_>>()
        .await?;
    let mut found = Found::default();
    for (key, bytes) in read.into_iter().flatten() {
        let bad = |e: serde_json::Error| format!("{key}: not an identity record ({e}); skipped");
        if key.starts_with(object_keys::IDENTITY_KEYS) {
            match serde_json::from_slice::<ApiKey>(&bytes) {
                Ok(k) => found.keys.entry(k.id.clone()).or_default().push(k),
                Err(e) => found.warnings.push(bad(e)),
            }
        } else if key.starts_with(object_keys::IDENTITY_REVOKED) {
            match serde_json::from_slice::<Revoked>(&bytes) {
                Ok(r) => {
                    found.revoked.insert((r.id, r.generation));
                }
                Err(e) => found.warnings.push(bad(e)),
            }
        } else {
            match serde_json::from_slice::<StoredGroup>(&bytes) {
                Ok(g) => {
                    found.groups.insert(g.name.clone(), g);
                }
                Err(e) => found.warnings.push(bad(e)),
            }
        }
    }
    Ok(found)
}

/// What [`restore`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RestoreReport {
    /// Keys written into the index from the bucket.
    pub keys_restored: usize,
    /// Keys the index held as the bucket does.
    pub keys_kept: usize,
    /// Keys the index held but whose generation the bucket marks deleted: removed.
    pub keys_removed: usize,
    /// Groups written into the index from the bucket.
    pub groups_restored: usize,
    /// Groups the index held as the bucket does.
    pub groups_kept: usize,
    /// Groups the index held that the bucket marks deleted: removed.
    pub groups_removed: usize,
    /// Keys and groups only the index held (written before identities were kept in the
    /// bucket): written to the bucket.
    pub written_to_bucket: usize,
    /// What could not be taken as it was.
    pub warnings: Vec<String>,
}

impl std::fmt::Display for RestoreReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "identities: {} API keys restored, {} kept, {} deleted ones removed; {} groups restored, {} kept, {} deleted ones removed; {} written to the bucket",
            self.keys_restored,
            self.keys_kept,
            self.keys_removed,
            self.groups_restored,
            self.groups_kept,
            self.groups_removed,
            self.written_to_bucket
        )
    }
}

/// The bucket's record of key `id` that the index should hold, given what it holds: the
/// bucket's record of the held generation while that lives, else the newest live one.
fn wanted<'a>(found: &'a Found, id: &str, held: Option<&ApiKey>) -> Option<&'a ApiKey> {
    let generations = found.keys.get(id)?;
    let of_held = held.and_then(|h| {
        generations
            .iter()
            .find(|k| k.generation == h.generation && !found.is_revoked(k))
    });
    of_held.or_else(|| {
        generations
            .iter()
            .filter(|k| !found.is_revoked(k))
            .max_by(|a, b| (a.created, &a.generation).cmp(&(b.created, &b.generation)))
    })
}

/// Makes the index hold the identities the bucket holds: a live key or group the index
/// lacks or holds otherwise is written from the bucket, one the bucket marks deleted is
/// removed, one the index holds as the bucket does is left alone, and one only the index
/// holds (from before identities were kept in the bucket) is written to the bucket.
pub async fn restore(
    meta: &dyn MetaStore,
    blobs: &dyn BlobStore,
) -> Result<RestoreReport, AuthError> {
    let found = load(blobs).await?;
    let mut report = RestoreReport {
        warnings: found.warnings.clone(),
        ..RestoreReport::default()
    };

    // Keys: every id the bucket or the index knows.
    let members: HashSet<String> = meta.members(keys::API_KEYS).await?.into_iter().collect();
    let mut ids: BTreeSet<String> = members.iter().cloned().collect();
    ids.extend(found.keys.keys().cloned());
    let ids: Vec<String> = ids.into_iter().collect();
    let records: Vec<String> = ids.iter().map(|id| keys::api_key(id)).collect();
    let held = meta.get_many_json::<ApiKey>(&records).await?;
    for (id, held) in ids.iter().zip(held) {
        let want = wanted(&found, id, held.as_ref());
        let live = found
            .keys
            .get(id)
            .map_or(0, |gs| gs.iter().filter(|k| !found.is_revoked(k)).count());
        if held.is_none() && live > 1 {
            report.warnings.push(format!(
                "API key {id:?} has {live} generations in the bucket (a create whose commit never came); the newest is restored"
            ));
        }
        match (held, want) {
            (Some(h), Some(w)) if same_key(&h, w) => {
                report.keys_kept += 1;
                if !members.contains(id) {
                    write_index_key(meta, id, Some(w)).await?;
                }
            }
            (Some(h), None) if found.is_revoked(&h) => {
                write_index_key(meta, id, None).await?;
                report.keys_removed += 1;
            }
            (Some(h), None) => {
                // Only the index knows it: kept, and written to the bucket.
                put_key(blobs, &h).await?;
                if !members.contains(id) {
                    write_index_key(meta, id, Some(&h)).await?;
                }
                report.written_to_bucket += 1;
            }
            (_, Some(w)) => {
                write_index_key(meta, id, Some(w)).await?;
                report.keys_restored += 1;
            }
            (None, None) => {}
        }
    }

    // Groups.
    let members: HashSet<String> = meta.members(keys::GROUPS).await?.into_iter().collect();
    let mut names: BTreeSet<String> = members.iter().cloned().collect();
    names.extend(found.groups.keys().cloned());
    let names: Vec<String> = names.into_iter().collect();
    let records: Vec<String> = names.iter().map(|n| keys::group(n)).collect();
    let held = meta.get_many_json::<Group>(&records).await?;
    for (name, held) in names.iter().zip(held) {
        match (held, found.groups.get(name)) {
            (Some(h), Some(s)) if !s.deleted && h.permissions == s.permissions => {
                report.groups_kept += 1;
                if !members.contains(name) {
                    write_index_group(meta, name, Some(&h)).await?;
                }
            }
            (Some(_), Some(s)) if s.deleted => {
                write_index_group(meta, name, None).await?;
                report.groups_removed += 1;
            }
            (Some(h), None) => {
                put_group(blobs, &h).await?;
                if !members.contains(name) {
                    write_index_group(meta, name, Some(&h)).await?;
                }
                report.written_to_bucket += 1;
            }
            (_, Some(s)) if !s.deleted => {
                let group = Group {
                    name: name.clone(),
                    permissions: s.permissions.clone(),
                };
                write_index_group(meta, name, Some(&group)).await?;
                report.groups_restored += 1;
            }
            _ => {}
        }
    }
    // Per-template grants (issue 26) are restored here, after the groups they belong to.
    Ok(report)
}

fn same_key(a: &ApiKey, b: &ApiKey) -> bool {
    meta::encode(a) == meta::encode(b)
}

/// Writes key `id` into the index (`Some`) or removes it (`None`), with its set member.
async fn write_index_key(
    meta: &dyn MetaStore,
    id: &str,
    key: Option<&ApiKey>,
) -> Result<(), AuthError> {
    let record = keys::api_key(id);
    let record = record.as_str();
    super::retry(move || async move {
        let mut tx = meta.begin().await?;
        match key {
            Some(k) => {
                tx.put(record, meta::encode(k));
                tx.set_add(keys::API_KEYS, id);
            }
            None => {
                tx.delete(record);
                tx.delete(&keys::tap_secrets(id));
                tx.set_remove(keys::API_KEYS, id);
            }
        }
        Ok(tx.commit().await?.then_some(()))
    })
    .await
}

/// Writes group `name` into the index (`Some`) or removes it (`None`), with its set member.
async fn write_index_group(
    meta: &dyn MetaStore,
    name: &str,
    group: Option<&Group>,
) -> Result<(), AuthError> {
    let record = keys::group(name);
    let record = record.as_str();
    super::retry(move || async move {
        let mut tx = meta.begin().await?;
        match group {
            Some(g) => {
                tx.put(record, meta::encode(g));
                tx.set_add(keys::GROUPS, name);
            }
            None => {
                tx.delete(record);
                tx.set_remove(keys::GROUPS, name);
            }
        }
        Ok(tx.commit().await?.then_some(()))
    })
    .await
}

/// One way the index and the bucket disagree on identities, for `fsck`: the object
/// concerned and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Disagreement {
    /// The index holds a key or group the bucket has no record of, or holds otherwise: it
    /// would be lost, or changed back, with the index.
    NotInBucket(String, String),
    /// The bucket holds a live key or group the index lacks: a reindex would restore it.
    NotInIndex(String, String),
    /// The index holds a key whose generation the bucket marks deleted, or a group the
    /// bucket marks deleted (a delete cut off between its two steps): a reindex removes it.
    DeletedButLive(String, String),
}

/// Compares the identities of the index and the bucket; changes nothing.
pub async fn compare(
    meta: &dyn MetaStore,
    blobs: &dyn BlobStore,
) -> Result<Vec<Disagreement>, AuthError> {
    let found = load(blobs).await?;
    let mut out = Vec::new();
    let mut ids = meta.members(keys::API_KEYS).await?;
    ids.sort();
    let records: Vec<String> = ids.iter().map(|id| keys::api_key(id)).collect();
    let held = meta.get_many_json::<ApiKey>(&records).await?;
    let mut seen = HashSet::new();
    for (id, held) in ids.iter().zip(held) {
        let Some(h) = held else { continue };
        seen.insert(id.clone());
        let subject = object_keys::identity_key(id, &h.generation);
        if found.is_revoked(&h) {
            out.push(Disagreement::DeletedButLive(
                subject,
                format!("API key {id:?} is deleted in the bucket but live in the index"),
            ));
        } else if !wanted(&found, id, Some(&h)).is_some_and(|w| same_key(&h, w)) {
            out.push(Disagreement::NotInBucket(
                subject,
                format!("API key {id:?} is not in the bucket as the index holds it"),
            ));
        }
    }
    for (id, k) in found.live_keys() {
        if !seen.contains(id) {
            out.push(Disagreement::NotInIndex(
                object_keys::identity_key(id, &k.generation),
                format!("API key {id:?} is in the bucket but not in the index"),
            ));
        }
    }
    let mut names = meta.members(keys::GROUPS).await?;
    names.sort();
    let records: Vec<String> = names.iter().map(|n| keys::group(n)).collect();
    let held = meta.get_many_json::<Group>(&records).await?;
    let mut seen = HashSet::new();
    for (name, held) in names.iter().zip(held) {
        let Some(h) = held else { continue };
        seen.insert(name.clone());
        let subject = object_keys::identity_group(name);
        match found.groups.get(name) {
            Some(s) if s.deleted => out.push(Disagreement::DeletedButLive(
                subject,
                format!("permission group {name:?} is deleted in the bucket but live in the index"),
            )),
            Some(s) if s.permissions == h.permissions => {}
            _ => out.push(Disagreement::NotInBucket(
                subject,
                format!("permission group {name:?} is not in the bucket as the index holds it"),
            )),
        }
    }
    for g in found.live_groups() {
        if !seen.contains(&g.name) {
            out.push(Disagreement::NotInIndex(
                object_keys::identity_group(&g.name),
                format!(
                    "permission group {:?} is in the bucket but not in the index",
                    g.name
                ),
            ));
        }
    }
    Ok(out)
}

/// At start: writes to the bucket every key and group that only the index holds (an
/// index from before identities were kept in the bucket), so that the first start after
/// an upgrade makes them durable. Changes nothing in the index, and nothing the bucket
/// already has a record of (a change in flight or cut off is reindex's to judge).
pub async fn write_missing(
    meta: &dyn MetaStore,
    blobs: &dyn BlobStore,
) -> Result<usize, AuthError> {
    // Names tell what the bucket holds: one listing at start, not a read per identity.
    let listed: HashSet<String> = blobs
        .list(object_keys::IDENTITIES)
        .await?
        .into_iter()
        .collect();
    let mut written = 0;
    let ids = meta.members(keys::API_KEYS).await?;
    let records: Vec<String> = ids.iter().map(|id| keys::api_key(id)).collect();
    for key in meta
        .get_many_json::<ApiKey>(&records)
        .await?
        .into_iter()
        .flatten()
    {
        let known = listed.contains(&object_keys::identity_key(&key.id, &key.generation))
            || listed.contains(&object_keys::identity_revoked(&key.id, &key.generation));
        if !known {
            put_key(blobs, &key).await?;
            written += 1;
        }
    }
    let names = meta.members(keys::GROUPS).await?;
    let records: Vec<String> = names.iter().map(|n| keys::group(n)).collect();
    for group in meta
        .get_many_json::<Group>(&records)
        .await?
        .into_iter()
        .flatten()
    {
        let object = object_keys::identity_group(&group.name);
        if listed.contains(&object) {
            continue;
        }
        // Asked again just before the write: a delete that marked the group meanwhile
        // must not be overwritten by the group it deleted.
        if matches!(blobs.read(&object).await, Err(StoreError::NotFound(_))) {
            put_group(blobs, &group).await?;
            written += 1;
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::apikeys::{self, CreateKey, Groups, Ttl, UpdateKey};
    use crate::auth::groups;
    use crate::meta::embedded::EmbeddedMeta;
    use crate::store::fs::FsStore;

    struct Stores {
        dir: tempfile::TempDir,
        meta: EmbeddedMeta,
        blobs: FsStore,
    }

    fn stores() -> Stores {
        let dir = tempfile::tempdir().unwrap();
        let meta = EmbeddedMeta::open(&dir.path().join("m.redb")).unwrap();
        let blobs = FsStore::open(&dir.path().join("b"), 5 << 20).unwrap();
        Stores { dir, meta, blobs }
    }

    impl Stores {
        /// An empty index over the same bucket, as after a lost Redis.
        fn lost(&self, name: &str) -> EmbeddedMeta {
            EmbeddedMeta::open(&self.dir.path().join(format!("{name}.redb"))).unwrap()
        }

        async fn create(&self, id: &str, groups: &[&str]) -> String {
            let req = CreateKey {
                id: id.into(),
                ttl: Some(Ttl::Text("600".into())),
                groups: Some(Groups::List(groups.iter().map(|g| g.to_string()).collect())),
                public_key: None,
            };
            apikeys::create(&self.meta, &self.blobs, req)
                .await
                .unwrap()
                .unwrap()
        }

        async fn group(&self, name: &str, permissions: &[&str]) {
            let names: Vec<String> = permissions.iter().map(|p| p.to_string()).collect();
            let group = Group {
                name: name.into(),
                permissions: groups::parse_permissions(&names).unwrap(),
            };
            groups::put(&self.meta, &self.blobs, &group, false)
                .await
                .unwrap();
        }

        /// Every object in the bucket, with its bytes.
        async fn objects(&self) -> Vec<(String, Bytes)> {
            let mut out = Vec::new();
            for key in self.blobs.list("").await.unwrap() {
                let bytes = self.blobs.read(&key).await.unwrap();
                out.push((key, bytes));
            }
            out
        }
    }

    async fn key_ids(meta: &dyn MetaStore) -> Vec<(String, Vec<String>)> {
        apikeys::list(meta)
            .await
            .unwrap()
            .into_iter()
            .map(|k| (k.id, k.groups))
            .collect()
    }

    async fn group_names(meta: &dyn MetaStore) -> Vec<String> {
        groups::list(meta)
            .await
            .unwrap()
            .into_iter()
            .map(|g| g.name)
            .collect()
    }

    #[tokio::test]
    async fn keys_and_groups_come_back_from_the_bucket_and_deleted_ones_stay_deleted() {
        let s = stores();
        let private = s.create("mac-01", &["ci"]).await;
        s.create("mac-02", &["ci"]).await;
        s.create("gone", &["ci"]).await;
        s.group("ci", &["list_vms", "pull_vm"]).await;
        s.group("CI", &["list_vms"]).await;
        s.group("doomed", &["list_vms"]).await;
        let update = UpdateKey {
            id: "mac-02".into(),
            ttl: None,
            groups: Some(Groups::List(vec!["ci".into(), "qa".into()])),
        };
        apikeys::update(&s.meta, &s.blobs, update).await.unwrap();
        apikeys::delete(&s.meta, &s.blobs, "gone").await.unwrap();
        groups::delete(&s.meta, &s.blobs, "doomed").await.unwrap();
        assert_eq!(compare(&s.meta, &s.blobs).await.unwrap(), vec![]);

        let lost = s.lost("lost");
        let report = restore(&lost, &s.blobs).await.unwrap();
        assert_eq!(
            (
                report.keys_restored,
                report.groups_restored,
                report.keys_removed
            ),
            (2, 2, 0),
            "{report:?}"
        );
        assert_eq!(key_ids(&lost).await, key_ids(&s.meta).await);
        assert_eq!(
            key_ids(&lost).await,
            vec![
                ("mac-01".to_string(), vec!["ci".to_string()]),
                (
                    "mac-02".to_string(),
                    vec!["ci".to_string(), "qa".to_string()]
                ),
            ]
        );
        assert_eq!(group_names(&lost).await, vec!["CI", "ci"]);
        assert_eq!(
            groups::get(&lost, "ci").await.unwrap(),
            groups::get(&s.meta, "ci").await.unwrap()
        );
        let restored = apikeys::get(&lost, "mac-01").await.unwrap().unwrap();
        let live = apikeys::get(&s.meta, "mac-01").await.unwrap().unwrap();
        assert_eq!(meta::encode(&restored), meta::encode(&live));
        assert_eq!(compare(&lost, &s.blobs).await.unwrap(), vec![]);

        // A second run leaves alone what agrees.
        let again = restore(&lost, &s.blobs).await.unwrap();
        assert_eq!(
            (again.keys_restored, again.keys_kept, again.groups_kept),
            (0, 2, 2)
        );

        // Nothing secret is in the bucket: not the private key, nor a line of its PEM (its
        // tail, the private CRT coefficient: its head repeats the public modulus).
        let der =
            base64::Engine::decode(&base64::engine::general_purpose::STANDARD, &private).unwrap();
        let pem = private.trim_end_matches('=');
        let line = &pem[pem.len() - 68..pem.len() - 4];
        let tail = &der[der.len() - 64..];
        for (key, bytes) in s.objects().await {
            let text = String::from_utf8_lossy(&bytes);
            assert!(!text.contains(line), "{key}");
            assert!(!bytes.windows(64).any(|w| w == tail), "{key}");
        }
    }

    #[tokio::test]
    async fn a_delete_cut_off_or_raced_by_an_update_never_brings_the_key_back() {
        let s = stores();
        s.create("raced", &[]).await;
        let old = apikeys::get(&s.meta, "raced").await.unwrap().unwrap();
        apikeys::delete(&s.meta, &s.blobs, "raced").await.unwrap();
        // An update that read the key before the delete writes its record after it.
        put_key(&s.blobs, &old).await.unwrap();
        let lost = s.lost("lost");
        restore(&lost, &s.blobs).await.unwrap();
        assert!(apikeys::get(&lost, "raced").await.unwrap().is_none());

        // Re-created, the id is a new generation, and lives.
        s.create("raced", &["new"]).await;
        let lost = s.lost("lost-again");
        restore(&lost, &s.blobs).await.unwrap();
        let back = apikeys::get(&lost, "raced").await.unwrap().unwrap();
        assert_eq!(back.groups, vec!["new"]);
        assert_ne!(back.generation, old.generation);

        // A delete cut off after its mark: the index still holds the key, fsck says so, and
        // a reindex over the live index finishes the delete.
        s.create("cut", &[]).await;
        let cut = apikeys::get(&s.meta, "cut").await.unwrap().unwrap();
        revoke_key(&s.blobs, &cut).await.unwrap();
        let found = compare(&s.meta, &s.blobs).await.unwrap();
        assert!(
            matches!(found.as_slice(), [Disagreement::DeletedButLive(o, _)] if o.contains("cut.")),
            "{found:?}"
        );
        let report = restore(&s.meta, &s.blobs).await.unwrap();
        assert_eq!(report.keys_removed, 1, "{report:?}");
        assert!(apikeys::get(&s.meta, "cut").await.unwrap().is_none());
        assert_eq!(compare(&s.meta, &s.blobs).await.unwrap(), vec![]);
    }

    #[tokio::test]
    async fn a_losing_create_leaves_the_winners_record_and_a_stray_is_deleted_for_good() {
        let s = stores();
        s.create("k", &["first"]).await;
        let req = CreateKey {
            id: "k".into(),
            ttl: Some(Ttl::Text("600".into())),
            groups: Some(Groups::List(vec!["second".into()])),
            public_key: None,
        };
        let err = apikeys::create(&s.meta, &s.blobs, req).await;
        assert!(matches!(err, Err(AuthError::Conflict(_))), "{err:?}");
        let found = load(&s.blobs).await.unwrap();
        assert_eq!(found.keys["k"].len(), 1, "{found:?}");
        assert_eq!(found.keys["k"][0].groups, vec!["first"]);

        // A create written ahead of a commit that never came comes back with a rebuild,
        // unless the id was deleted meanwhile (a 404, yet it holds).
        let stray = ApiKey {
            groups: vec!["stray".into()],
            generation: "never-committed".into(),
            id: "stray".into(),
            ..found.keys["k"][0].clone()
        };
        put_key(&s.blobs, &stray).await.unwrap();
        let found = compare(&s.meta, &s.blobs).await.unwrap();
        assert!(
            matches!(found.as_slice(), [Disagreement::NotInIndex(o, _)] if o.contains("stray.")),
            "{found:?}"
        );
        let err = apikeys::delete(&s.meta, &s.blobs, "stray").await;
        assert!(matches!(err, Err(AuthError::NotFound(_))), "{err:?}");
        let lost = s.lost("lost");
        restore(&lost, &s.blobs).await.unwrap();
        assert_eq!(
            key_ids(&lost).await,
            vec![("k".into(), vec!["first".into()])]
        );

        // The same for groups.
        let stray = Group {
            name: "stray".into(),
            permissions: BTreeSet::new(),
        };
        put_group(&s.blobs, &stray).await.unwrap();
        let err = groups::delete(&s.meta, &s.blobs, "stray").await;
        assert!(matches!(err, Err(AuthError::NotFound(_))), "{err:?}");
        restore(&lost, &s.blobs).await.unwrap();
        assert_eq!(group_names(&lost).await, Vec::<String>::new());
    }

    #[tokio::test]
    async fn keys_and_groups_only_the_index_holds_are_written_to_the_bucket() {
        let s = stores();
        s.create("new", &[]).await;
        // A key and a group an earlier release wrote to the index alone.
        let mut old = apikeys::get(&s.meta, "new").await.unwrap().unwrap();
        old.id = "old".into();
        old.generation = "old-generation".into();
        let mut tx = s.meta.begin().await.unwrap();
        tx.put(&keys::api_key("old"), meta::encode(&old));
        tx.set_add(keys::API_KEYS, "old");
        let legacy = Group {
            name: "legacy".into(),
            permissions: BTreeSet::new(),
        };
        tx.put(&keys::group("legacy"), meta::encode(&legacy));
        tx.set_add(keys::GROUPS, "legacy");
        assert!(tx.commit().await.unwrap());
        assert_eq!(compare(&s.meta, &s.blobs).await.unwrap().len(), 2);

        assert_eq!(write_missing(&s.meta, &s.blobs).await.unwrap(), 2);
        assert_eq!(compare(&s.meta, &s.blobs).await.unwrap(), vec![]);
        assert_eq!(write_missing(&s.meta, &s.blobs).await.unwrap(), 0);
        let lost = s.lost("lost");
        restore(&lost, &s.blobs).await.unwrap();
        assert_eq!(key_ids(&lost).await.len(), 2);
        assert_eq!(group_names(&lost).await, vec!["legacy"]);
    }

    #[test]
    fn object_names_stay_inside_their_folder_and_apart_by_case() {
        for name in [".", "..", "a.b", "@x"] {
            for object in [
                object_keys::identity_key(name, "g"),
                object_keys::identity_group(name),
            ] {
                assert!(
                    object
                        .split('/')
                        .all(|part| !part.is_empty() && part != "." && part != ".."),
                    "{object}"
                );
            }
        }
        assert_ne!(
            object_keys::identity_group("CI").to_lowercase(),
            object_keys::identity_group("ci").to_lowercase()
        );
    }
}
