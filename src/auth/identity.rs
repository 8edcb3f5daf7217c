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
    /// A TAP session of an API key.
    ApiKey {
        /// The session's id.
        session: String,
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

    /// True for the root token, which may do everything.
    pub fn is_root(&self) -> bool {
        self.method == AuthMethod::RootToken
    }
}
