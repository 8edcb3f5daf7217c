//! Sessions of API keys: a signed JWT inside the vendor's Bearer shape,
//! `base64(JSON({userName, token, sessionId}))`.
//!
//! The signing secret comes from the configuration or, when none is given, is generated
//! by the first replica to start and shared through the metadata store; with an identity
//! secret configured it is also kept sealed in the bucket, written there before the
//! metadata store holds it, and taken back from there when the metadata store lost it. A token only
//! proves that a session was made; every request also reads the key it names, so a
//! deleted or expired key ends its sessions at once on every replica.

use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use super::apikeys::ApiKey;
use super::config::Secret;
use super::durable::{self, Unsealed};
use super::{now_secs, random_token, retry, AuthError};
use crate::meta::{keys, MetaStore, MetaStoreExt, MetaTxExt};
use crate::store::BlobStore;

/// Bytes of a generated signing secret.
const GENERATED_SECRET: usize = 48;

/// What the token carries.
#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    /// The API key id.
    sub: String,
    /// The session id.
    sid: String,
    /// The key's generation when the session was made.
    gen: String,
    iat: u64,
    exp: u64,
    /// A token of the root user, issued by the OCI token endpoint; `gen` is then an HMAC
    /// of the root token under a key derived from the signing secret (see
    /// [`Signer::root_generation`]), so a changed root token ends it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    root: bool,
}

/// The `data` object of a shake: base64 of its JSON is the Bearer credential.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionData {
    /// The API key id.
    pub user_name: String,
    /// The signed session token.
    pub token: String,
    /// The session id.
    pub session_id: String,
}

/// A session verified from its Bearer credential, before its key is checked.
#[derive(Debug)]
pub struct Claimed {
    /// The API key id.
    pub key_id: String,
    /// The session id.
    pub session: String,
    generation: String,
    /// True for a token of the root user.
    pub root: bool,
    /// When the session ends, in seconds since the epoch.
    pub expires: u64,
}

impl Claimed {
    /// True when `key` is the very key (not a re-creation of its id) that made the session.
    pub fn made_by(&self, key: &ApiKey) -> bool {
        key.id == self.key_id
            && super::same_secret(key.generation.as_bytes(), self.generation.as_bytes())
    }
}

/// Signs and verifies session tokens.
pub struct Signer {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    ttl_secs: u64,
    /// The key root sessions' generations are MACed under, derived from the signing
    /// secret: every replica has it, no client does.
    root_key: ring::hmac::Key,
}

impl Signer {
    /// A signer over the configured secret, or the one shared through `meta` (made now
    /// if no replica made it yet; see [`shared_secret`] for the bucket's part).
    pub async fn open(
        meta: &dyn MetaStore,
        blobs: &dyn BlobStore,
        configured: Option<&Secret>,
        identity: Option<&Secret>,
        ttl: std::time::Duration,
    ) -> Result<Signer, AuthError> {
        let secret = match configured {
            Some(s) => s.expose().as_bytes().to_vec(),
            None => shared_secret(meta, blobs, identity).await?.0,
        };
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "sub"]);
        // A key of its own, so that no MAC of a root token is ever a MAC under the key
        // that signs the sessions.
        let derived = ring::hmac::sign(
            &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret),
            ROOT_GENERATION_LABEL,
        );
        Ok(Signer {
            encoding: EncodingKey::from_secret(&secret),
            decoding: DecodingKey::from_secret(&secret),
            validation,
            ttl_secs: ttl.as_secs().max(1),
            root_key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, derived.as_ref()),
        })
    }

    /// What a root session carries in place of a key generation: an HMAC-SHA256 of the
    /// root token under a key derived from the signing secret. It changes when the root
    /// token does, ending the sessions made under the old one; unlike a plain hash, it
    /// lets no one who reads a session's payload test guesses of the root token offline.
    fn root_generation(&self, token: &Secret) -> String {
        hex::encode(ring::hmac::sign(&self.root_key, token.expose().as_bytes()))
    }

    /// True when `claimed` is a root session issued under `token`, the root token now
    /// configured.
    pub fn made_by_root(&self, claimed: &Claimed, token: &Secret) -> bool {
        claimed.root
            && super::same_secret(
                self.root_generation(token).as_bytes(),
                claimed.generation.as_bytes(),
            )
    }

    /// Seconds a session lasts.
    pub fn ttl_secs(&self) -> u64 {
        self.ttl_secs
    }

    /// A new session for `key`.
    pub fn issue(&self, key: &ApiKey) -> Result<SessionData, AuthError> {
        Ok(self.issue_until(key, None)?.0)
    }

    /// A new session for `key` that ends no later than `not_after` (the end of the
    /// session it is made from, so no session renews itself); with its end.
    pub fn issue_until(
        &self,
        key: &ApiKey,
        not_after: Option<u64>,
    ) -> Result<(SessionData, u64), AuthError> {
        self.sign(key.id.clone(), key.generation.clone(), false, not_after)
    }

    /// A new session of the root user, valid while the root token is `token`, ending no
    /// later than `not_after`; with its end.
    pub fn issue_root(
        &self,
        token: &Secret,
        not_after: Option<u64>,
    ) -> Result<(SessionData, u64), AuthError> {
        let gen = self.root_generation(token);
        self.sign(super::root::ROOT_USER.into(), gen, true, not_after)
    }

    fn sign(
        &self,
        sub: String,
        gen: String,
        root: bool,
        not_after: Option<u64>,
    ) -> Result<(SessionData, u64), AuthError> {
        let now = now_secs();
        let exp = (now + self.ttl_secs).min(not_after.unwrap_or(u64::MAX));
        let claims = Claims {
            sub,
            sid: random_token()?,
            gen,
            iat: now,
            exp,
            root,
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| AuthError::Internal(format!("signing a session failed: {e}")))?;
        let data = SessionData {
            user_name: claims.sub,
            token,
            session_id: claims.sid,
        };
        Ok((data, exp))
    }

    /// Checks a Bearer credential: its shape, signature and expiry.
    pub fn verify(&self, bearer: &str) -> Result<Claimed, AuthError> {
        // Shell pipelines wrap base64 at 76 columns; the line breaks are not the credential.
        let bearer: String = bearer.chars().filter(|c| !c.is_whitespace()).collect();
        let raw = B64
            .decode(&bearer)
            .or_else(|_| B64URL.decode(bearer.trim_end_matches('=')))
            .map_err(|_| AuthError::Unauthenticated)?;
        let data: SessionData =
            serde_json::from_slice(&raw).map_err(|_| AuthError::Unauthenticated)?;
        let claims = jsonwebtoken::decode::<Claims>(&data.token, &self.decoding, &self.validation)
            .map_err(|_| AuthError::Unauthenticated)?
            .claims;
        // `exp` is checked with one-second granularity by the library; be exact.
        if claims.exp <= now_secs() || claims.sid != data.session_id || claims.sub != data.user_name
        {
            return Err(AuthError::Unauthenticated);
        }
        Ok(Claimed {
            key_id: claims.sub,
            session: claims.sid,
            generation: claims.gen,
            root: claims.root,
            expires: claims.exp,
        })
    }
}

/// What the key of root generations is derived with from the signing secret.
const ROOT_GENERATION_LABEL: &[u8] = b"vmreg root session generation v1";

/// Where the shared signing secret came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SigningSource {
    /// The metadata store held it.
    Held,
    /// The metadata store had lost it; it was opened from the bucket and put back.
    Restored,
    /// There was none to be had: a new one was made (sessions and tokens signed with an
    /// earlier one no longer verify).
    Generated,
}

/// The signing secret in the metadata store, made by whichever replica asks first. With
/// an identity secret, the bucket keeps it sealed: a new one is sealed there before the
/// metadata store holds it, and one the metadata store lost is opened from there, so that
/// a lost Redis ends no session. A sealed secret that the identity secret does not open
/// is a configuration error, not a reason to make a new one.
pub async fn shared_secret(
    meta: &dyn MetaStore,
    blobs: &dyn BlobStore,
    identity: Option<&Secret>,
) -> Result<(Vec<u8>, SigningSource), AuthError> {
    let decode = |stored: String| {
        B64.decode(stored)
            .map_err(|_| AuthError::Internal("the stored session signing key is corrupt".into()))
    };
    if let Some(held) = meta.get_json::<String>(keys::SIGNING_KEY).await? {
        let secret = decode(held)?;
        if let Some(identity) = identity {
            durable::keep_signing_key(blobs, identity, &secret).await?;
        }
        return Ok((secret, SigningSource::Held));
    }
    let (candidate, source) = match identity {
        Some(identity) => match durable::open_signing_key(blobs, identity).await? {
            Ok(sealed) => (sealed, SigningSource::Restored),
            Err(Unsealed::Absent) => {
                let fresh = fresh_secret()?;
                // The bucket first, as for every identity.
                durable::keep_signing_key(blobs, identity, &fresh).await?;
                (fresh, SigningSource::Generated)
            }
            Err(Unsealed::WrongSecret) => {
                return Err(AuthError::BadRequest(format!(
                    "the session signing key in the bucket ({}) does not open with the configured identity secret (VMREG_IDENTITY_SECRET): set the one it was sealed with, or delete that object to start over (sessions and tokens end)",
                    crate::store::keys::IDENTITY_SIGNING_KEY
                )))
            }
        },
        None => (fresh_secret()?, SigningSource::Generated),
    };
    let encoded = B64.encode(&candidate);
    let encoded = encoded.as_str();
    let stored = retry(move || async move {
        let mut tx = meta.begin().await?;
        if let Some(existing) = tx.get_json::<String>(keys::SIGNING_KEY).await? {
            return Ok(Some((existing, false)));
        }
        tx.put_json(keys::SIGNING_KEY, &encoded);
        Ok(tx.commit().await?.then(|| (encoded.to_string(), true)))
    })
    .await?;
    match stored {
        (_, true) => Ok((candidate, source)),
        // Another replica was first: its secret is the one, sealed as such.
        (theirs, false) => {
            let secret = decode(theirs)?;
            if let Some(identity) = identity {
                durable::keep_signing_key(blobs, identity, &secret).await?;
            }
            Ok((secret, SigningSource::Held))
        }
    }
}

fn fresh_secret() -> Result<Vec<u8>, AuthError> {
    let mut fresh = vec![0u8; GENERATED_SECRET];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut fresh)
        .map_err(|_| AuthError::Internal("no randomness".into()))?;
    Ok(fresh)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::embedded::EmbeddedMeta;
    use crate::store::fs::FsStore;

    fn key(generation: &str) -> ApiKey {
        ApiKey {
            id: "k".into(),
            groups: vec![],
            created: 0,
            expires: u64::MAX,
            public_key: vec![],
            generation: generation.into(),
        }
    }

    async fn signer(secret: &str) -> Signer {
        let dir = tempfile::tempdir().unwrap();
        let meta = EmbeddedMeta::open(&dir.path().join("m.redb")).unwrap();
        let blobs = FsStore::open(&dir.path().join("b"), 5 << 20).unwrap();
        let secret: Secret = secret.to_string().into();
        let ttl = std::time::Duration::from_secs(60);
        Signer::open(&meta, &blobs, Some(&secret), None, ttl)
            .await
            .unwrap()
    }

    fn bearer(data: &SessionData) -> String {
        B64.encode(serde_json::to_vec(data).unwrap())
    }

    #[tokio::test]
    async fn a_session_verifies_only_as_issued() {
        let s = signer("0123456789abcdef0123456789abcdef").await;
        let data = s.issue(&key("g1")).unwrap();
        let claimed = s.verify(&bearer(&data)).unwrap();
        assert!(claimed.made_by(&key("g1")));
        assert!(
            !claimed.made_by(&key("g2")),
            "a re-created key is another key"
        );

        let mut other_session = s.issue(&key("g1")).unwrap();
        other_session.session_id = data.session_id.clone();
        assert!(s.verify(&bearer(&other_session)).is_err());
        let mut other_user = s.issue(&key("g1")).unwrap();
        other_user.user_name = "someone".into();
        assert!(s.verify(&bearer(&other_user)).is_err());
        let foreign = signer("another-secret-another-secret-xx").await;
        assert!(foreign.verify(&bearer(&data)).is_err());
        assert!(s.verify("not base64 at all").is_err());
        assert!(s.verify(&B64.encode("{}")).is_err());
        // A wrapped base64 line (as `base64` prints it) is the same credential.
        let wrapped: String = bearer(&data)
            .as_bytes()
            .chunks(76)
            .map(|c| format!("{}\n", std::str::from_utf8(c).unwrap()))
            .collect();
        assert!(s.verify(&wrapped).is_ok());
    }

    #[tokio::test]
    async fn a_session_made_from_another_ends_no_later_than_it() {
        let s = signer("0123456789abcdef0123456789abcdef").await;
        let (first, first_end) = s.issue_until(&key("g"), None).unwrap();
        assert_eq!(s.verify(&bearer(&first)).unwrap().expires, first_end);
        let soon = now_secs() + 5;
        let (next, next_end) = s.issue_until(&key("g"), Some(soon)).unwrap();
        assert_eq!(next_end, soon);
        assert_eq!(s.verify(&bearer(&next)).unwrap().expires, soon);
        let root: Secret = "root-token-root-token".to_string().into();
        let (_, root_end) = s.issue_root(&root, Some(soon)).unwrap();
        assert_eq!(root_end, soon);
        // A later end than the signer's own lifetime gives the lifetime.
        let (_, capped) = s.issue_until(&key("g"), Some(u64::MAX)).unwrap();
        assert!(capped <= now_secs() + 60);
    }

    /// The JSON payload of the JWT inside a Bearer credential, as anyone holding it reads it.
    fn payload(data: &SessionData) -> String {
        let body = data.token.split('.').nth(1).unwrap();
        String::from_utf8(B64URL.decode(body).unwrap()).unwrap()
    }

    #[tokio::test]
    async fn a_root_session_carries_no_hash_of_the_root_token_and_ends_when_it_changes() {
        let s = signer("0123456789abcdef0123456789abcdef").await;
        let token: Secret = "the-root-token-0123".to_string().into();
        let (data, _) = s.issue_root(&token, None).unwrap();
        let readable = payload(&data);
        let sha256 = |b: &[u8]| hex::encode(ring::digest::digest(&ring::digest::SHA256, b));
        let plain = sha256(token.expose().as_bytes());
        assert!(!readable.contains(&plain), "{readable}");
        assert!(!readable.contains(token.expose()), "{readable}");
        let claimed = s.verify(&bearer(&data)).unwrap();
        assert!(claimed.root && s.made_by_root(&claimed, &token));
        // A rotated root token ends the sessions made under the old one.
        let rotated: Secret = "the-root-token-0124".to_string().into();
        assert!(!s.made_by_root(&claimed, &rotated));
        // Another deployment's secret gives another generation of the same token.
        let other = signer("another-secret-another-secret-xx").await;
        assert_ne!(other.root_generation(&token), s.root_generation(&token));
        // A key session is no root session, whatever it carries.
        let key_session = s.verify(&bearer(&s.issue(&key("g1")).unwrap())).unwrap();
        assert!(!s.made_by_root(&key_session, &token));
    }

    #[tokio::test]
    async fn replicas_share_one_generated_secret() {
        let dir = tempfile::tempdir().unwrap();
        let meta = EmbeddedMeta::open(&dir.path().join("m.redb")).unwrap();
        let blobs = FsStore::open(&dir.path().join("b"), 5 << 20).unwrap();
        let ttl = std::time::Duration::from_secs(60);
        let a = Signer::open(&meta, &blobs, None, None, ttl).await.unwrap();
        let b = Signer::open(&meta, &blobs, None, None, ttl).await.unwrap();
        let data = a.issue(&key("g")).unwrap();
        assert!(b.verify(&bearer(&data)).is_ok());
        // A root session made by one replica is the root's on the other.
        let token: Secret = "the-root-token-0123".to_string().into();
        let (root, _) = a.issue_root(&token, None).unwrap();
        assert!(b.made_by_root(&b.verify(&bearer(&root)).unwrap(), &token));
    }

    /// With an identity secret the signing secret survives a lost metadata store, sealed
    /// in the bucket, where it never lies in the clear; without one, or with the wrong
    /// one, it does not come back.
    #[tokio::test]
    async fn a_sealed_secret_survives_a_lost_index_and_opens_only_with_its_identity_secret() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = FsStore::open(&dir.path().join("b"), 5 << 20).unwrap();
        let identity: Secret = "identity-secret-identity-secret-0123".to_string().into();
        let first = EmbeddedMeta::open(&dir.path().join("first.redb")).unwrap();
        let (secret, source) = shared_secret(&first, &blobs, Some(&identity))
            .await
            .unwrap();
        assert_eq!(source, SigningSource::Generated);
        let sealed = blobs
            .read(crate::store::keys::IDENTITY_SIGNING_KEY)
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&sealed);
        assert!(!text.contains(&B64.encode(&secret)), "{text}");
        assert!(
            !sealed.windows(secret.len()).any(|w| w == secret.as_slice()),
            "the secret is not in the clear"
        );

        // The index is lost: the same secret comes back from the bucket.
        let lost = EmbeddedMeta::open(&dir.path().join("lost.redb")).unwrap();
        let (back, source) = shared_secret(&lost, &blobs, Some(&identity)).await.unwrap();
        assert_eq!(
            (back.as_slice(), source),
            (secret.as_slice(), SigningSource::Restored)
        );
        let (again, source) = shared_secret(&lost, &blobs, Some(&identity)).await.unwrap();
        assert_eq!((again, source), (secret.clone(), SigningSource::Held));

        // Another identity secret opens nothing: a configuration error, not a new secret.
        let other: Secret = "another-identity-secret-0123456789ab".to_string().into();
        let empty = EmbeddedMeta::open(&dir.path().join("empty.redb")).unwrap();
        let err = shared_secret(&empty, &blobs, Some(&other)).await;
        assert!(matches!(err, Err(AuthError::BadRequest(_))), "{err:?}");
        // Without an identity secret a lost index gets a new secret.
        let (fresh, source) = shared_secret(&empty, &blobs, None).await.unwrap();
        assert_eq!(source, SigningSource::Generated);
        assert_ne!(fresh, secret);
    }
}
