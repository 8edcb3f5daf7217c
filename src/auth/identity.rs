//! Who is calling: the one type every way in produces and every decision reads.

use serde::Serialize;

/// How a caller proved who it is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AuthMethod {
    /// Authentication is off: everyone is let in.
    Open,
    /// `Authorization: Basic root:<token>`.
    RootToken,
    /// A session of the root user, from the OCI token endpoint.
    RootSession {
        /// When the session ends, in seconds since the epoch.
        expires: u64,
    },
    /// A TAP session of an API key (or a token the OCI token endpoint made from one).
    ApiKey {
        /// The session's id.
        session: String,
        /// When the session ends, in seconds since the epoch.
        expires: u64,
    },
    /// A verified TLS client certificate (CN is the user, O or OU the groups).
    Certificate,
    /// Credentials of the OCI front door (Basic or Bearer).
    Oci,
}

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Identity {
    /// The user: `root`, an API key id, a certificate's CN.
    pub user: String,
    /// Permission groups the caller belongs to.
    pub groups: Vec<String>,
    /// How it authenticated.
    pub method: AuthMethod,
}

impl Identity {
    /// The caller when authentication is off.
    pub fn open() -> Self {
        Identity {
            user: "anonymous".into(),
            groups: Vec::new(),
            method: AuthMethod::Open,
        }
    }

    /// The root user.
    pub fn root() -> Self {
        Identity {
            user: "root".into(),
            groups: Vec::new(),
            method: AuthMethod::RootToken,
        }
    }

    /// A session of the root user, ending at `expires`.
    pub fn root_session(expires: u64) -> Self {
        Identity {
            method: AuthMethod::RootSession { expires },
            ..Identity::root()
        }
    }

    /// True for the root token (or a session of it), which may do everything.
    pub fn is_root(&self) -> bool {
        matches!(
            self.method,
            AuthMethod::RootToken | AuthMethod::RootSession { .. }
        )
    }
}
