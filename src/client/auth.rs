//! Who the client is to the registry, and the `Authorization` header every request carries.
//!
//! A root token is a fixed Basic header. An API key yields a session through the TAP
//! handshake ([`super::tap`]); the session is shared by every request of the process behind
//! one lock, renewed shortly before the token's expiry (so a long push or pull keeps going)
//! and again when the registry answers 401. One handshake serves all the requests waiting
//! for it: a renewal never turns into a stampede of handshakes.

use std::fmt;
use std::time::{Duration, Instant};

use base64::Engine;
use reqwest::header::HeaderValue;
use tokio::sync::Mutex;

use super::error::{ClientError, ClientResult};
use super::secret::{PrivateKey, Secret};
use super::tap;

/// The credentials a command runs with.
#[derive(Clone, Debug, Default)]
pub enum Credentials {
    /// No `Authorization` header (a registry with authentication off).
    #[default]
    Anonymous,
    /// The registry's root token.
    RootToken(Secret),
    /// An API key: its id and private key.
    ApiKey {
        /// The key's id.
        id: String,
        /// The key's RSA private key.
        key: PrivateKey,
    },
}

impl Credentials {
    /// How the client authenticates, for messages and `--json` (never the secret).
    pub fn describe(&self) -> String {
        match self {
            Credentials::Anonymous => "none".into(),
            Credentials::RootToken(_) => "root token".into(),
            Credentials::ApiKey { id, .. } => format!("API key {id:?}"),
        }
    }
}

/// The header a request was sent with, remembered so a 401 can retire exactly that session.
#[derive(Clone, Copy, Debug)]
pub struct Grant {
    generation: u64,
}

/// Hands out the `Authorization` header; one per [`super::RegistryClient`], shared by its clones.
pub struct Authenticator {
    credentials: Credentials,
    session: Mutex<Current>,
}

#[derive(Default)]
struct Current {
    header: Option<HeaderValue>,
    renew_at: Option<Instant>,
    generation: u64,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("credentials", &self.credentials)
            .finish_non_exhaustive()
    }
}

/// Renew this long before the session's end: a fifth of its lifetime, at most a minute, so
/// that a request started just before the renewal point still reaches the registry in time;
/// plus a second, as the token's timestamps are whole seconds.
fn renewal_margin(lifetime: Duration) -> Duration {
    (lifetime / 5).min(Duration::from_secs(60)) + Duration::from_secs(1)
}

impl Authenticator {
    /// An authenticator for these credentials.
    pub fn new(credentials: Credentials) -> Self {
        Self {
            credentials,
            session: Mutex::new(Current::default()),
        }
    }

    /// The credentials.
    pub fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    /// The header for the next request (none when anonymous), handshaking first when the
    /// API key has no session yet or its session is about to end.
    pub async fn header(
        &self,
        http: &reqwest::Client,
        base: &str,
    ) -> ClientResult<(Option<HeaderValue>, Grant)> {
        let (id, key) = match &self.credentials {
            Credentials::Anonymous => return Ok((None, Grant { generation: 0 })),
            Credentials::RootToken(token) => {
                return Ok((Some(basic_root(token)?), Grant { generation: 0 }))
            }
            Credentials::ApiKey { id, key } => (id, key),
        };
        // Held across the handshake: requests arriving meanwhile wait for its result.
        let mut current = self.session.lock().await;
        let fresh = current.renew_at.map_or(true, |at| Instant::now() < at);
        if let (Some(header), true) = (&current.header, fresh) {
            let grant = Grant {
                generation: current.generation,
            };
            return Ok((Some(header.clone()), grant));
        }
        let started = Instant::now();
        let session = tap::handshake(http, base, id, key).await?;
        current.generation += 1;
        current.renew_at = session
            .lifetime
            .map(|life| started + life.saturating_sub(renewal_margin(life)));
        current.header = Some(session.header.clone());
        tracing::debug!(key = %id, lifetime = ?session.lifetime, "API key session opened");
        Ok((
            Some(session.header),
            Grant {
                generation: current.generation,
            },
        ))
    }

    /// Reports a 401 to a request sent with `grant`. True when a retry may succeed: the
    /// session (if still the current one) is dropped so the next request handshakes anew.
    pub async fn rejected(&self, grant: Grant) -> bool {
        if !matches!(self.credentials, Credentials::ApiKey { .. }) {
            return false;
        }
        let mut current = self.session.lock().await;
        if current.generation == grant.generation {
            current.header = None;
            current.renew_at = None;
        }
        true
    }

    /// The error for a request the registry still refuses.
    pub fn refused(&self, base: &str, message: &str) -> ClientError {
        ClientError::Auth(match &self.credentials {
            Credentials::Anonymous => format!(
                "the registry at {base} requires credentials ({message}): pass --root-token, or --api-key-id with --api-key-file, or set VMREG_ROOT_TOKEN, or VMREG_API_KEY_ID with VMREG_API_KEY_FILE"
            ),
            Credentials::RootToken(_) => {
                format!("the registry at {base} refused the root token ({message})")
            }
            Credentials::ApiKey { id, .. } => {
                format!("the registry at {base} refused the session of API key {id:?} ({message})")
            }
        })
    }
}

fn basic_root(token: &Secret) -> ClientResult<HeaderValue> {
    let encoded =
        base64::engine::general_purpose::STANDARD.encode(format!("root:{}", token.expose()));
    let mut header = HeaderValue::from_str(&format!("Basic {encoded}"))
        .map_err(|_| ClientError::Invalid("the root token cannot travel in a header".into()))?;
    header.set_sensitive(true);
    Ok(header)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_leaves_a_fifth_of_the_lifetime_up_to_a_minute_and_a_second() {
        assert_eq!(
            renewal_margin(Duration::from_secs(5)),
            Duration::from_secs(2)
        );
        assert_eq!(
            renewal_margin(Duration::from_secs(3600)),
            Duration::from_secs(61)
        );
    }

    #[tokio::test]
    async fn a_root_token_is_a_sensitive_basic_header_of_root() {
        let auth = Authenticator::new(Credentials::RootToken(Secret::new("0123456789ab")));
        let http = reqwest::Client::new();
        let (header, _) = auth.header(&http, "http://unused").await.unwrap();
        let header = header.unwrap();
        assert!(header.is_sensitive());
        // base64("root:0123456789ab")
        assert_eq!(header.to_str().unwrap(), "Basic cm9vdDowMTIzNDU2Nzg5YWI=");
        assert!(!format!("{auth:?} {header:?}").contains("0123456789"));
        assert!(!auth.rejected(Grant { generation: 0 }).await);
    }
}
