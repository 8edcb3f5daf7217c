//! The TAP handshake: `hand` encrypts a fresh secret to a key's public key, `shake` trades
//! the decrypted secret, once, for a session. Pending secrets live in the metadata store,
//! so a hand on one replica and the shake on another work.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ring::rand::SecureRandom;
use rsa::Oaep;
use serde::{Deserialize, Serialize};

use super::{apikeys, now_secs, random_token, retry, AuthError};
use crate::meta::{keys, MetaStore, MetaTxExt};

/// How long a handed-out secret may be shaken.
pub const SECRET_TTL_SECS: u64 = 60;
/// Secrets pending per key at most; older ones are dropped first.
const MAX_PENDING: usize = 16;
/// Length of the fake ciphertext for an unknown key (that of a 2048-bit key).
const FAKE_CIPHERTEXT: usize = 256;

#[derive(Clone, Serialize, Deserialize)]
struct Pending {
    /// Hex SHA-256 of the secret: a leaked record does not hand out sessions.
    hash: String,
    expires: u64,
}

fn digest(secret: &str) -> String {
    hex::encode(ring::digest::digest(
        &ring::digest::SHA256,
        secret.as_bytes(),
    ))
}

/// `POST /tap/v1/hand`: base64 of a fresh secret encrypted with RSA-OAEP (SHA-256,
/// MGF1-SHA-256). The plaintext is the secret itself, an ASCII string. An unknown or
/// expired key gets random bytes of the same shape, so `hand` does not reveal which
/// ids exist; its shake then fails like any wrong secret.
pub async fn hand(meta: &dyn MetaStore, id: &str) -> Result<String, AuthError> {
    let now = now_secs();
    let key = match apikeys::get(meta, id).await? {
        Some(k) if k.is_live(now) => k,
        _ => {
            let mut fake = vec![0u8; FAKE_CIPHERTEXT];
            ring::rand::SystemRandom::new()
                .fill(&mut fake)
                .map_err(|_| AuthError::Internal("no randomness".into()))?;
            return Ok(B64.encode(fake));
        }
    };
    let public = key.rsa()?;
    let secret = random_token()?;
    let sealed = public
        .encrypt(
            &mut rsa::rand_core::OsRng,
            Oaep::new::<sha2::Sha256>(),
            secret.as_bytes(),
        )
        .map_err(|e| AuthError::Internal(format!("RSA-OAEP encryption failed: {e}")))?;
    let entry = Pending {
        hash: digest(&secret),
        expires: now + SECRET_TTL_SECS,
    };
    let record = keys::tap_secrets(id);
    let (record, entry) = (record.as_str(), &entry);
    retry(move || async move {
        let mut tx = meta.begin().await?;
        let mut pending: Vec<Pending> = tx.get_json(record).await?.unwrap_or_default();
        pending.retain(|p| p.expires > now);
        pending.push(entry.clone());
        let excess = pending.len().saturating_sub(MAX_PENDING);
        pending.drain(..excess);
        tx.put_json(record, &pending);
        Ok(tx.commit().await?.then_some(()))
    })
    .await?;
    Ok(B64.encode(sealed))
}

/// `POST /tap/v1/shake`: consumes the secret and answers the key, or
/// [`AuthError::Unauthenticated`] for an unknown key, an expired key, a wrong, used or
/// stale secret alike.
pub async fn shake(
    meta: &dyn MetaStore,
    id: &str,
    secret: &str,
) -> Result<apikeys::ApiKey, AuthError> {
    let wanted = digest(secret);
    let record = keys::tap_secrets(id);
    let key_record = keys::api_key(id);
    let (record, key_record, wanted) = (record.as_str(), key_record.as_str(), wanted.as_str());
    retry(move || async move {
        let now = now_secs();
        let mut tx = meta.begin().await?;
        let key: Option<apikeys::ApiKey> = tx.get_json(key_record).await?;
        let mut pending: Vec<Pending> = tx.get_json(record).await?.unwrap_or_default();
        // Compare every entry in constant time, so timing says nothing about the match.
        let mut found = None;
        for (i, p) in pending.iter().enumerate() {
            let same = super::same_secret(p.hash.as_bytes(), wanted.as_bytes());
            if same && p.expires > now {
                found = Some(i);
            }
        }
        let (Some(key), Some(i)) = (key.filter(|k| k.is_live(now)), found) else {
            return Err(AuthError::Unauthenticated);
        };
        pending.remove(i);
        pending.retain(|p| p.expires > now);
        if pending.is_empty() {
            tx.delete(record);
        } else {
            tx.put_json(record, &pending);
        }
        Ok(tx.commit().await?.then_some(key))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::apikeys::{create, CreateKey, Ttl};
    use crate::meta::embedded::EmbeddedMeta;
    use rsa::pkcs1::DecodeRsaPrivateKey;

    async fn keyed() -> (tempfile::TempDir, EmbeddedMeta, rsa::RsaPrivateKey) {
        let dir = tempfile::tempdir().unwrap();
        let meta = EmbeddedMeta::open(&dir.path().join("m.redb")).unwrap();
        let blobs = crate::store::fs::FsStore::open(&dir.path().join("b"), 5 << 20).unwrap();
        let req = CreateKey {
            id: "k".into(),
            ttl: Some(Ttl::Text("600".into())),
            groups: None,
            public_key: None,
        };
        let private = create(&meta, &blobs, req).await.unwrap().unwrap();
        let der = B64.decode(private).unwrap();
        let key = rsa::RsaPrivateKey::from_pkcs1_der(&der).unwrap();
        (dir, meta, key)
    }

    fn open(key: &rsa::RsaPrivateKey, sealed: &str) -> String {
        let plain = key
            .decrypt(Oaep::new::<sha2::Sha256>(), &B64.decode(sealed).unwrap())
            .unwrap();
        String::from_utf8(plain).unwrap()
    }

    #[tokio::test]
    async fn a_secret_works_once_and_not_after_it_expires() {
        let (_dir, meta, key) = keyed().await;
        let secret = open(&key, &hand(&meta, "k").await.unwrap());
        assert_eq!(shake(&meta, "k", &secret).await.unwrap().id, "k");
        assert!(matches!(
            shake(&meta, "k", &secret).await,
            Err(AuthError::Unauthenticated)
        ));

        // A secret past its minute is refused, as if it had never been handed out.
        let stale = open(&key, &hand(&meta, "k").await.unwrap());
        let mut tx = meta.begin().await.unwrap();
        let mut pending: Vec<Pending> =
            tx.get_json(&keys::tap_secrets("k")).await.unwrap().unwrap();
        pending.iter_mut().for_each(|p| p.expires = now_secs() - 1);
        tx.put_json(&keys::tap_secrets("k"), &pending);
        assert!(tx.commit().await.unwrap());
        assert!(matches!(
            shake(&meta, "k", &stale).await,
            Err(AuthError::Unauthenticated)
        ));
    }

    #[tokio::test]
    async fn pending_secrets_are_capped_oldest_first() {
        let (_dir, meta, key) = keyed().await;
        let first = open(&key, &hand(&meta, "k").await.unwrap());
        let mut last = String::new();
        for _ in 0..MAX_PENDING {
            last = open(&key, &hand(&meta, "k").await.unwrap());
        }
        assert!(
            shake(&meta, "k", &first).await.is_err(),
            "the oldest was dropped"
        );
        assert!(shake(&meta, "k", &last).await.is_ok());
        let unknown = hand(&meta, "nobody").await.unwrap();
        assert_eq!(B64.decode(unknown).unwrap().len(), FAKE_CIPHERTEXT);
        assert!(
            meta.get_many(&[keys::tap_secrets("nobody")]).await.unwrap()[0].is_none(),
            "an unknown id stores nothing"
        );
    }
}
