//! API keys in the metadata store: an id, groups, a lifetime and an RSA public key.
//! The private key never stays on the server: a generated one is returned once. Each
//! change is written to the bucket before the metadata commit (see [`durable`]).

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::pkcs8::{DecodePublicKey, EncodePublicKey};
use rsa::traits::PublicKeyParts;
use rsa::{RsaPrivateKey, RsaPublicKey};
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};

use super::{
    durable, groups::valid_name, now_secs, random_token, read, read_set, retry, rfc3339, AuthError,
};
use crate::meta::{keys, MetaStore, MetaTxExt};
use crate::store::BlobStore;

/// Size of generated keys.
const GENERATED_BITS: usize = 2048;
/// Smallest and largest public keys accepted.
const MIN_BITS: usize = 2048;
const MAX_BITS: usize = 8192;
/// Longest key lifetime accepted (100 years), so expiry arithmetic cannot overflow.
const MAX_TTL: u64 = 100 * 365 * 24 * 3600;
/// API keys a registry holds at most: every key is read by `GET /v1/apikey`.
pub const MAX_API_KEYS: u64 = 10_000;
/// Groups one key may name.
pub const MAX_KEY_GROUPS: usize = 64;

/// A stored API key.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ApiKey {
    /// The key's id, the user name of its sessions.
    pub id: String,
    /// Permission groups.
    pub groups: Vec<String>,
    /// Epoch seconds of creation.
    pub created: u64,
    /// Epoch seconds from which it no longer works.
    pub expires: u64,
    /// The RSA public key, PKIX DER.
    #[serde(with = "b64")]
    pub public_key: Vec<u8>,
    /// Random per creation: a session names it, so a deleted and re-created id does not
    /// bring old sessions back.
    pub generation: String,
}

impl ApiKey {
    /// True while the key may be used.
    pub fn is_live(&self, now: u64) -> bool {
        now < self.expires
    }

    /// The public key, parsed.
    pub fn rsa(&self) -> Result<RsaPublicKey, AuthError> {
        RsaPublicKey::from_public_key_der(&self.public_key).map_err(|_| {
            AuthError::Internal(format!("stored public key of {:?} is invalid", self.id))
        })
    }

    /// `{id, groups, expiration, created}` as `GET /v1/apikey` shows it.
    pub fn view(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "groups": self.groups,
            "expiration": rfc3339(self.expires),
            "created": rfc3339(self.created),
        })
    }
}

mod b64 {
    use base64::engine::general_purpose::STANDARD as B64;
    use base64::Engine;

    pub fn serialize<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&B64.encode(v))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s: String = serde::Deserialize::deserialize(d)?;
        B64.decode(s).map_err(serde::de::Error::custom)
    }
}

/// `POST /v1/apikey`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateKey {
    /// Key id.
    pub id: String,
    /// Lifetime in seconds.
    pub ttl: Option<Ttl>,
    /// Groups: a list, or the seed's comma-separated string.
    #[serde(default)]
    pub groups: Option<Groups>,
    /// PKIX DER, base64; generated when absent.
    pub public_key: Option<String>,
}

/// `PUT /v1/apikey`.
#[derive(Debug, Deserialize)]
pub struct UpdateKey {
    /// Key id.
    pub id: String,
    /// New lifetime in seconds, from now.
    pub ttl: Option<Ttl>,
    /// New groups.
    pub groups: Option<Groups>,
}

/// A TTL given as a number or a numeric string.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Ttl {
    /// `86400`.
    Number(serde_json::Number),
    /// `"86400"`.
    Text(String),
}

impl Ttl {
    fn seconds(&self) -> Result<u64, AuthError> {
        let n = match self {
            Ttl::Number(n) => n.as_u64(),
            Ttl::Text(s) => s.trim().parse().ok(),
        };
        match n {
            Some(n) if n > 0 && n <= MAX_TTL => Ok(n),
            _ => Err(AuthError::BadRequest(format!(
                "ttl must be a number of seconds between 1 and {MAX_TTL}"
            ))),
        }
    }
}

/// Groups as a JSON list or a comma-separated string.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Groups {
    /// `["a","b"]`.
    List(Vec<String>),
    /// `"a,b"`.
    Text(String),
}

impl Groups {
    fn names(&self) -> Result<Vec<String>, AuthError> {
        let raw: Vec<String> = match self {
            Groups::List(l) => l.iter().map(|g| g.trim().to_string()).collect(),
            Groups::Text(t) => t
                .split(',')
                .map(|g| g.trim().to_string())
                .filter(|g| !g.is_empty())
                .collect(),
        };
        if raw.len() > MAX_KEY_GROUPS {
            return Err(AuthError::BadRequest(format!(
                "a key names at most {MAX_KEY_GROUPS} groups, not {}",
                raw.len()
            )));
        }
        let mut out = Vec::new();
        for g in raw {
            valid_name(&g)?;
            if !out.contains(&g) {
                out.push(g);
            }
        }
        Ok(out)
    }
}

/// Reads one key.
pub async fn get(meta: &dyn MetaStore, id: &str) -> Result<Option<ApiKey>, AuthError> {
    read(meta, &keys::api_key(id)).await
}

/// Every key, sorted by id.
pub async fn list(meta: &dyn MetaStore) -> Result<Vec<ApiKey>, AuthError> {
    read_set(meta, keys::API_KEYS, keys::api_key).await
}

/// Creates a key; answers the base64 PKCS#1 DER private key when the server made the pair.
pub async fn create(
    meta: &dyn MetaStore,
    blobs: &dyn BlobStore,
    req: CreateKey,
) -> Result<Option<String>, AuthError> {
    valid_name(&req.id)?;
    let ttl = req
        .ttl
        .as_ref()
        .ok_or_else(|| AuthError::BadRequest("ttl (seconds) is required".into()))?
        .seconds()?;
    let groups = match &req.groups {
        Some(g) => g.names()?,
        None => Vec::new(),
    };
    if meta.count(keys::API_KEYS).await? >= MAX_API_KEYS {
        return Err(AuthError::Conflict(format!(
            "this registry holds its maximum of {MAX_API_KEYS} API keys; delete unused ones first"
        )));
    }
    let (public_key, private_key) = match &req.public_key {
        Some(given) => (parse_public_key(given)?, None),
        None => {
            let (public, private) = generate().await?;
            (public, Some(private))
        }
    };
    let now = now_secs();
    let record = ApiKey {
        id: req.id.clone(),
        groups,
        created: now,
        expires: now + ttl,
        public_key,
        generation: random_token()?,
    };
    let key = keys::api_key(&record.id);
    let wrote = AtomicBool::new(false);
    let (key, record, wrote_ref) = (key.as_str(), &record, &wrote);
    let created = retry(move || async move {
        let mut tx = meta.begin().await?;
        if tx.get(key).await?.is_some() {
            return Err(AuthError::Conflict(format!(
                "an API key {:?} exists already",
                record.id
            )));
        }
        // The bucket first: a key the index holds is always one a reindex restores.
        durable::put_key(blobs, record).await?;
        wrote_ref.store(true, Ordering::Relaxed);
        tx.put_json(key, record);
        tx.set_add(keys::API_KEYS, &record.id);
        Ok(tx.commit().await?.then_some(()))
    })
    .await;
    if created.is_err() && wrote.load(Ordering::Relaxed) {
        durable::settle_key(meta, blobs, &record.id, Some(record)).await;
    }
    created?;
    Ok(private_key)
}

/// Changes a key's groups or lifetime (counted from now).
pub async fn update(
    meta: &dyn MetaStore,
    blobs: &dyn BlobStore,
    req: UpdateKey,
) -> Result<(), AuthError> {
    let ttl = req.ttl.as_ref().map(Ttl::seconds).transpose()?;
    let groups = req.groups.as_ref().map(Groups::names).transpose()?;
    let key = keys::api_key(&req.id);
    let wrote = AtomicBool::new(false);
    let (key, id, ttl, groups, wrote_ref) = (key.as_str(), req.id.as_str(), ttl, &groups, &wrote);
    let updated = retry(move || async move {
        let mut tx = meta.begin().await?;
        let Some(mut record) = tx.get_json::<ApiKey>(key).await? else {
            return Err(AuthError::NotFound(format!("no API key {id:?}")));
        };
        if let Some(ttl) = ttl {
            record.expires = now_secs() + ttl;
        }
        if let Some(groups) = groups {
            record.groups = groups.clone();
        }
        durable::put_key(blobs, &record).await?;
        wrote_ref.store(true, Ordering::Relaxed);
        tx.put_json(key, &record);
        Ok(tx.commit().await?.then_some(()))
    })
    .await;
    if updated.is_err() && wrote.load(Ordering::Relaxed) {
        durable::settle_key(meta, blobs, id, None).await;
    }
    updated
}

/// Deletes a key and its pending TAP secrets; its sessions stop working with it. The
/// bucket marks its generation deleted first, so no later rebuild brings it back.
pub async fn delete(
    meta: &dyn MetaStore,
    blobs: &dyn BlobStore,
    id: &str,
) -> Result<(), AuthError> {
    let key = keys::api_key(id);
    let key = key.as_str();
    let deleted = retry(move || async move {
        let mut tx = meta.begin().await?;
        let Some(record) = tx.get_json::<ApiKey>(key).await? else {
            return Err(AuthError::NotFound(format!("no API key {id:?}")));
        };
        durable::revoke_key(blobs, &record).await?;
        tx.delete(key);
        tx.delete(&keys::tap_secrets(id));
        tx.set_remove(keys::API_KEYS, id);
        Ok(tx.commit().await?.then_some(record))
    })
    .await;
    match deleted {
        Ok(record) => {
            durable::drop_key(blobs, &record).await;
            Ok(())
        }
        Err(AuthError::NotFound(m)) => {
            // A generation written ahead of a create that never committed must not come
            // back with a rebuild either, once someone asked for the id to go.
            durable::revoke_strays(blobs, id).await?;
            Err(AuthError::NotFound(m))
        }
        Err(e) => Err(e),
    }
}

/// Parses a base64 PKIX DER public key (PEM armour tolerated) of an accepted size.
fn parse_public_key(given: &str) -> Result<Vec<u8>, AuthError> {
    let bad = || {
        AuthError::BadRequest(
            "publicKey must be an RSA public key, PKIX ASN.1 DER in base64".into(),
        )
    };
    let body: String = given
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .flat_map(|l| l.chars())
        .filter(|c| !c.is_whitespace())
        .collect();
    let der = B64.decode(body).map_err(|_| bad())?;
    let key = RsaPublicKey::from_public_key_der(&der).map_err(|_| bad())?;
    let bits = key.n().bits();
    if !(MIN_BITS..=MAX_BITS).contains(&bits) {
        return Err(AuthError::BadRequest(format!(
            "publicKey must have {MIN_BITS} to {MAX_BITS} bits, not {bits}"
        )));
    }
    Ok(der)
}

/// A fresh RSA-2048 pair: (public PKIX DER, private PKCS#1 DER in base64).
async fn generate() -> Result<(Vec<u8>, String), AuthError> {
    tokio::task::spawn_blocking(|| {
        let private = RsaPrivateKey::new(&mut rsa::rand_core::OsRng, GENERATED_BITS)
            .map_err(|e| AuthError::Internal(format!("RSA key generation failed: {e}")))?;
        let public = RsaPublicKey::from(&private)
            .to_public_key_der()
            .map_err(|e| AuthError::Internal(format!("public key encoding failed: {e}")))?;
        let der = private
            .to_pkcs1_der()
            .map_err(|e| AuthError::Internal(format!("private key encoding failed: {e}")))?;
        Ok((public.as_bytes().to_vec(), B64.encode(der.as_bytes())))
    })
    .await
    .map_err(|e| AuthError::Internal(format!("key generation task: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::groups::{self, Group, MAX_GROUPS};
    use crate::meta::embedded::EmbeddedMeta;
    use crate::store::fs::FsStore;

    fn request(id: &str, groups: Option<Groups>) -> CreateKey {
        CreateKey {
            id: id.into(),
            ttl: Some(Ttl::Text("600".into())),
            groups,
            public_key: None,
        }
    }

    /// Fills a set to `n` members, as if that many records had been created.
    async fn fill(meta: &EmbeddedMeta, set: &str, n: u64) {
        let mut tx = meta.begin().await.unwrap();
        for i in 0..n {
            tx.set_add(set, &format!("m{i}"));
        }
        assert!(tx.commit().await.unwrap());
    }

    #[tokio::test]
    async fn keys_groups_and_groups_per_key_are_capped() {
        let dir = tempfile::tempdir().unwrap();
        let meta = EmbeddedMeta::open(&dir.path().join("m.redb")).unwrap();
        let blobs = FsStore::open(&dir.path().join("b"), 5 << 20).unwrap();
        let many: Vec<String> = (0..=MAX_KEY_GROUPS).map(|i| format!("g{i}")).collect();
        let err = create(&meta, &blobs, request("k", Some(Groups::List(many)))).await;
        assert!(matches!(err, Err(AuthError::BadRequest(_))), "{err:?}");

        fill(&meta, keys::API_KEYS, MAX_API_KEYS).await;
        let err = create(&meta, &blobs, request("k", None)).await;
        assert!(matches!(err, Err(AuthError::Conflict(_))), "{err:?}");
        assert!(
            get(&meta, "k").await.unwrap().is_none(),
            "nothing was stored"
        );

        let group = |name: &str| Group {
            name: name.into(),
            permissions: Default::default(),
        };
        groups::put(&meta, &blobs, &group("kept"), false)
            .await
            .unwrap();
        fill(&meta, keys::GROUPS, MAX_GROUPS).await;
        let err = groups::put(&meta, &blobs, &group("new"), false).await;
        assert!(matches!(err, Err(AuthError::Conflict(_))), "{err:?}");
        assert!(groups::get(&meta, "new").await.unwrap().is_none());
        groups::put(&meta, &blobs, &group("kept"), false)
            .await
            .expect("an existing group can still be replaced");
    }
}
