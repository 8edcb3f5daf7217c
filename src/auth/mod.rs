//! Identity and access: who is calling and whether it may do what it asks.
//!
//! Every way in (the root token, API key sessions made by the TAP handshake, and later
//! TLS client certificates and OCI credentials) ends in one [`Identity`]; one function,
//! [`permissions::authorize`], decides. Keys, pending TAP secrets, groups and the session
//! signing secret live in the metadata store, so every replica sees the same; keys, groups
//! and (sealed) the signing secret are also kept in the bucket, so that a lost metadata
//! store loses none of them ([`durable`]).

pub mod apikeys;
pub mod config;
pub mod durable;
pub mod groups;
mod identity;
pub mod permissions;
pub mod root;
pub mod session;
pub mod tap;

use std::future::Future;
use std::sync::Arc;

use serde::de::DeserializeOwned;

pub use config::{AuthConfig, Secret};
pub use identity::{AuthMethod, Identity};
pub use permissions::{Access, Permission};

use crate::meta::{MetaError, MetaStore, MetaStoreExt};
use crate::store::{BlobStore, StoreError};

/// Why a request may not proceed.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No credentials, or bad ones: 401. Deliberately says nothing more.
    #[error("Authentication Required")]
    Unauthenticated,
    /// Authenticated, but lacking what the endpoint needs: 403.
    #[error("permission denied: this needs {0}")]
    Forbidden(String),
    /// Malformed administration request: 400.
    #[error("{0}")]
    BadRequest(String),
    /// No such key or group: 404.
    #[error("{0}")]
    NotFound(String),
    /// The key or group exists already: 409.
    #[error("{0}")]
    Conflict(String),
    /// The feature is switched off: 404.
    #[error("{0}")]
    Disabled(&'static str),
    /// The metadata store failed: 503.
    #[error(transparent)]
    Meta(#[from] MetaError),
    /// The blob store, where identities are kept durably, failed: 503.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Too many concurrent changes to the same record: 503.
    #[error("too many concurrent changes; retry")]
    Busy,
    /// A fault of ours: 500 (details are logged, not sent).
    #[error("{0}")]
    Internal(String),
}

/// Identity and access for one server: its switches, its store and its session signer.
pub struct Auth {
    config: AuthConfig,
    meta: Arc<dyn MetaStore>,
    blobs: Arc<dyn BlobStore>,
    signer: Option<session::Signer>,
}

impl Auth {
    /// Prepares authentication: shares or reads the session signing secret, seeds the
    /// configured permission groups, and writes to the bucket the keys and groups that
    /// only the metadata store holds (an index from an earlier release).
    pub async fn open(
        config: AuthConfig,
        meta: Arc<dyn MetaStore>,
        blobs: Arc<dyn BlobStore>,
    ) -> Result<Auth, AuthError> {
        config.validate().map_err(AuthError::BadRequest)?;
        // The signer makes API key sessions and the OCI token endpoint's tokens, so it is
        // there whenever authentication is on.
        let signer = match config.enabled {
            true => Some(
                session::Signer::open(
                    meta.as_ref(),
                    blobs.as_ref(),
                    config.jwt_secret.as_ref(),
                    config.identity_secret.as_ref(),
                    config.session_ttl,
                )
                .await?,
            ),
            false => None,
        };
        for (name, names) in &config.seed_groups {
            let group = groups::Group {
                name: name.clone(),
                permissions: groups::parse_permissions(names)?,
            };
            groups::put(meta.as_ref(), blobs.as_ref(), &group, true).await?;
        }
        let written = durable::write_missing(meta.as_ref(), blobs.as_ref()).await?;
        if written > 0 {
            tracing::info!(written, "API keys and groups written to the bucket");
        }
        Ok(Auth {
            config,
            meta,
            blobs,
            signer,
        })
    }

    /// The switches.
    pub fn config(&self) -> &AuthConfig {
        &self.config
    }

    /// The metadata store keys and groups live in.
    pub fn meta(&self) -> &dyn MetaStore {
        self.meta.as_ref()
    }

    /// The blob store keys and groups are kept in durably.
    pub fn blobs(&self) -> &dyn BlobStore {
        self.blobs.as_ref()
    }

    /// Who sent this `Authorization` header. With authentication off everyone is
    /// [`Identity::open`].
    pub async fn authenticate(&self, authorization: Option<&str>) -> Result<Identity, AuthError> {
        if !self.config.enabled {
            return Ok(Identity::open());
        }
        let header = authorization.ok_or(AuthError::Unauthenticated)?.trim();
        let (scheme, credentials) = header.split_once(' ').ok_or(AuthError::Unauthenticated)?;
        if scheme.eq_ignore_ascii_case("basic") {
            let (user, password) =
                root::parse_basic(credentials).ok_or(AuthError::Unauthenticated)?;
            if user != root::ROOT_USER {
                // OCI clients log in with a user and a password: an API key's id and a
                // session credential of that key.
                let signer = self.signer.as_ref().ok_or(AuthError::Unauthenticated)?;
                let claimed = signer.verify(&password)?;
                return match claimed.key_id == user && !claimed.root {
                    true => self.key_session(claimed).await,
                    false => Err(AuthError::Unauthenticated),
                };
            }
            let token = self.config.root_token.as_ref();
            return match token {
                Some(t) if root::is_root_token(&password, t) => Ok(Identity::root()),
                _ => Err(AuthError::Unauthenticated),
            };
        }
        if scheme.eq_ignore_ascii_case("bearer") {
            let signer = self.signer.as_ref().ok_or(AuthError::Unauthenticated)?;
            let claimed = signer.verify(credentials)?;
            if claimed.root {
                return match self.config.root_token.as_ref() {
                    Some(t) if signer.made_by_root(&claimed, t) => {
                        Ok(Identity::root_session(claimed.expires))
                    }
                    _ => Err(AuthError::Unauthenticated),
                };
            }
            return self.key_session(claimed).await;
        }
        Err(AuthError::Unauthenticated)
    }

    /// The caller of a verified API key session, while its key lives.
    async fn key_session(&self, claimed: session::Claimed) -> Result<Identity, AuthError> {
        if !self.config.api_keys {
            return Err(AuthError::Unauthenticated);
        }
        let key = apikeys::get(self.meta.as_ref(), &claimed.key_id).await?;
        match key {
            Some(key) if key.is_live(now_secs()) && claimed.made_by(&key) => Ok(Identity {
                user: key.id,
                groups: key.groups,
                method: AuthMethod::ApiKey {
                    session: claimed.session,
                    expires: claimed.expires,
                },
            }),
            _ => Err(AuthError::Unauthenticated),
        }
    }

    /// A token for the OCI token endpoint: a new session of the caller, as the Bearer
    /// credential carries it, and the seconds it lasts. A caller that presented a session
    /// gets one that ends when that one does, so a session cannot renew itself past its
    /// lifetime. With authentication off, `None`.
    pub async fn oci_token(&self, identity: &Identity) -> Result<Option<(String, u64)>, AuthError> {
        let Some(signer) = self.signer.as_ref().filter(|_| self.config.enabled) else {
            return Ok(None);
        };
        let root = |not_after| match self.config.root_token.as_ref() {
            Some(t) => signer.issue_root(t, not_after),
            None => Err(AuthError::Unauthenticated),
        };
        let (data, expires) = match &identity.method {
            AuthMethod::RootToken => root(None)?,
            AuthMethod::RootSession { expires } => root(Some(*expires))?,
            AuthMethod::ApiKey { expires, .. } => {
                match apikeys::get(self.meta(), &identity.user).await? {
                    Some(key) if key.is_live(now_secs()) => {
                        signer.issue_until(&key, Some(*expires))?
                    }
                    _ => return Err(AuthError::Unauthenticated),
                }
            }
            _ => {
                return Err(AuthError::Forbidden(
                    "a root token or API key login (a client certificate needs no token)".into(),
                ))
            }
        };
        let bearer = serde_json::to_vec(&data)
            .map_err(|e| AuthError::Internal(format!("encoding a session failed: {e}")))?;
        Ok(Some((
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, bearer),
            expires.saturating_sub(now_secs()),
        )))
    }

    /// May `identity` do what `need` asks? Reads its groups only when that matters.
    pub async fn authorize(&self, identity: &Identity, need: Access) -> Result<(), AuthError> {
        if !self.config.enabled {
            return Ok(());
        }
        let consult = self.config.authorization
            && !identity.is_root()
            && matches!(need, Access::All(_) | Access::Any(_) | Access::Admin(_));
        let granted = match consult {
            true => groups::granted(self.meta.as_ref(), &identity.groups).await?,
            false => Default::default(),
        };
        permissions::authorize(identity, &granted, self.config.authorization, need)
    }

    /// Runs the TAP shake and opens a session for the key.
    pub async fn shake(&self, id: &str, secret: &str) -> Result<session::SessionData, AuthError> {
        self.require_api_keys()?;
        let signer = self
            .signer
            .as_ref()
            .ok_or(AuthError::Disabled(API_KEYS_OFF))?;
        let key = tap::shake(self.meta.as_ref(), id, secret).await?;
        signer.issue(&key)
    }

    /// Fails unless API keys are on.
    pub fn require_api_keys(&self) -> Result<(), AuthError> {
        match self.signer.is_some() && self.config.api_keys {
            true => Ok(()),
            false => Err(AuthError::Disabled(API_KEYS_OFF)),
        }
    }
}

const API_KEYS_OFF: &str = "API keys are not enabled (ANKA_ENABLE_API_KEYS)";

/// Reads and decodes one record.
pub(crate) async fn read<T: DeserializeOwned>(
    meta: &dyn MetaStore,
    key: &str,
) -> Result<Option<T>, AuthError> {
    Ok(meta.get_json(key).await?)
}

/// Reads and decodes the records under `keys` that exist, in order.
pub(crate) async fn read_many<T: DeserializeOwned + Send>(
    meta: &dyn MetaStore,
    keys: &[String],
) -> Result<Vec<T>, AuthError> {
    let found = meta.get_many_json(keys).await?;
    Ok(found.into_iter().flatten().collect())
}

/// The records of every member of `set`, sorted by member.
pub(crate) async fn read_set<T: DeserializeOwned + Send>(
    meta: &dyn MetaStore,
    set: &str,
    key_of: impl Fn(&str) -> String,
) -> Result<Vec<T>, AuthError> {
    let mut members = meta.members(set).await?;
    members.sort();
    let keys: Vec<String> = members.iter().map(|m| key_of(m)).collect();
    read_many(meta, &keys).await
}

/// Runs an optimistic transaction until it commits: `Ok(None)` from `attempt` means a
/// conflict, try again.
pub(crate) async fn retry<T, F, Fut>(mut attempt: F) -> Result<T, AuthError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>, AuthError>>,
{
    for _ in 0..32 {
        if let Some(done) = attempt().await? {
            return Ok(done);
        }
    }
    Err(AuthError::Busy)
}

/// Seconds since the Unix epoch.
pub(crate) fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// RFC 3339 in UTC, as the vendor's key listing shows times.
pub(crate) fn rfc3339(secs: u64) -> String {
    i64::try_from(secs)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// Compares two secrets in constant time: both are MACed under a fresh random key and
/// ring checks one tag against the other without an early exit, whatever the lengths.
pub(crate) fn same_secret(a: &[u8], b: &[u8]) -> bool {
    let rng = ring::rand::SystemRandom::new();
    let Ok(key) = ring::hmac::Key::generate(ring::hmac::HMAC_SHA256, &rng) else {
        return false;
    };
    let tag = ring::hmac::sign(&key, a);
    ring::hmac::verify(&key, b, tag.as_ref()).is_ok()
}

/// 32 random bytes, base64url: session ids, TAP secrets, key generations.
pub(crate) fn random_token() -> Result<String, AuthError> {
    use base64::Engine;
    let mut bytes = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| AuthError::Internal("no randomness".into()))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compares_secrets() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"abc", b"abcd"));
        assert!(same_secret(b"", b""));
    }

    #[test]
    fn formats_times_as_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_632_163_308), "2021-09-20T18:41:48Z");
    }
}
