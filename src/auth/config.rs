//! The switches of identity and access, and the secret type that keeps tokens out of logs.

use std::collections::BTreeMap;
use std::time::Duration;

/// Shortest root token accepted, as at the vendor.
pub const MIN_ROOT_TOKEN: usize = 10;
/// Shortest configured session-signing secret.
pub const MIN_JWT_SECRET: usize = 32;
/// Session lifetime when none is configured (the vendor's `ANKA_API_KEYS_SESSION_TTL`).
pub const DEFAULT_SESSION_TTL: Duration = Duration::from_secs(300);

/// A secret string: compared and used, never printed (`Debug` and `Display` show `***`).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl<'de> serde::Deserialize<'de> for Secret {
    /// A string, or a number as YAML reads an unquoted all-digit token such as the
    /// vendor's example `1111111111`.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Unsigned(u64),
            Signed(i64),
        }
        Ok(Secret(match Raw::deserialize(d)? {
            Raw::Text(s) => s,
            Raw::Unsigned(n) => n.to_string(),
            Raw::Signed(n) => n.to_string(),
        }))
    }
}

impl Secret {
    /// The secret itself, for the one place that uses it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Secret(s)
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_string()))
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// Who must prove what, and how sessions are made.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct AuthConfig {
    /// Every endpoint but the probes needs credentials (`ANKA_ENABLE_AUTH`).
    pub enabled: bool,
    /// The root token (`ANKA_ROOT_TOKEN`); required when `enabled`.
    pub root_token: Option<Secret>,
    /// API keys and the TAP handshake (`ANKA_ENABLE_API_KEYS`).
    pub api_keys: bool,
    /// Groups decide what a key may do (`ANKA_ENABLE_AUTHORIZATION`); without it every
    /// authenticated caller may do everything but administer keys and groups.
    pub authorization: bool,
    /// Lifetime of a TAP session (`ANKA_API_KEYS_SESSION_TTL`).
    pub session_ttl: Duration,
    /// The session-signing secret; when absent one is generated once and shared through
    /// the metadata store.
    pub jwt_secret: Option<Secret>,
    /// Permission groups to create at start when they do not exist yet.
    pub seed_groups: BTreeMap<String, Vec<String>>,
    /// The secret the generated signing secret is sealed under (AES-256-GCM) in the
    /// bucket, so that it survives a lost metadata store; unset, it is kept in the
    /// metadata store only, and a lost one is replaced (sessions end, keys stay).
    pub identity_secret: Option<Secret>,
}

impl AuthConfig {
    /// Checks the combination; the message names the setting to fix.
    pub fn validate(&self) -> Result<(), String> {
        if self.enabled {
            match &self.root_token {
                None => {
                    return Err(
                        "ANKA_ENABLE_AUTH needs a root token (ANKA_ROOT_TOKEN, --root-token)"
                            .into(),
                    )
                }
                Some(t) if t.expose().chars().count() < MIN_ROOT_TOKEN => {
                    return Err(format!(
                        "the root token must be at least {MIN_ROOT_TOKEN} characters"
                    ))
                }
                Some(_) => {}
            }
        } else if self.api_keys || self.authorization {
            return Err(
                "ANKA_ENABLE_API_KEYS and ANKA_ENABLE_AUTHORIZATION need ANKA_ENABLE_AUTH".into(),
            );
        }
        if let Some(s) = &self.jwt_secret {
            if s.expose().len() < MIN_JWT_SECRET {
                return Err(format!(
                    "the session signing secret must be at least {MIN_JWT_SECRET} bytes"
                ));
            }
        }
        if let Some(s) = &self.identity_secret {
            if s.expose().len() < MIN_JWT_SECRET {
                return Err(format!(
                    "the identity secret must be at least {MIN_JWT_SECRET} bytes"
                ));
            }
        }
        if self.session_ttl.is_zero() {
            return Err("the API key session TTL must be more than zero".into());
        }
        Ok(())
    }

    /// One line for the start-up banner, secrets redacted.
    pub fn summary(&self) -> String {
        if !self.enabled {
            return "off (every endpoint is open)".into();
        }
        let onoff = |b: bool| if b { "on" } else { "off" };
        format!(
            "on (root token ***, api keys {}, authorization {}, session ttl {}s, signing key {})",
            onoff(self.api_keys),
            onoff(self.authorization),
            self.session_ttl.as_secs_f64(),
            match (&self.jwt_secret, &self.identity_secret) {
                (Some(_), _) => "*** (configured)",
                (None, Some(_)) => "shared through the metadata store, sealed in the bucket",
                (None, None) => "shared through the metadata store",
            }
        )
    }
}
