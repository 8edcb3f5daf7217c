//! The client's errors, each one line for the user and mapped to an exit code.

use std::path::{Path, PathBuf};

/// Exit code for a missing template, tag or local VM, as the vendor's CLI uses.
pub const EXIT_NOT_FOUND: i32 = 3;
/// Exit code for every other failure.
pub const EXIT_FAILURE: i32 = 1;

/// A failure of a registry command.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The template, tag, version or local VM does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The operation collides with existing state (name taken by another UUID, …).
    #[error("conflict: {0}")]
    Conflict(String),
    /// The registry answered with an error.
    #[error("registry error (HTTP {status}): {message}")]
    Registry {
        /// HTTP status code.
        status: u16,
        /// The envelope's message, or a summary of the body.
        message: String,
    },
    /// The registry could not be reached or the connection failed.
    #[error("{0}")]
    Network(String),
    /// A pulled file's content differs from the registry's digest.
    #[error("{name}: checksum mismatch (expected sha256 {expected}, got {actual}); the library was left unchanged")]
    Checksum {
        /// File name.
        name: String,
        /// Digest the manifest promised.
        expected: String,
        /// Digest of the bytes received.
        actual: String,
    },
    /// A local file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Bad input from the user or the local configuration.
    #[error("{0}")]
    Invalid(String),
    /// The registry did not accept the credentials (or wanted some).
    #[error("authentication failed: {0}")]
    Auth(String),
    /// The caller is known but lacks the permission.
    #[error("permission denied: {0}")]
    Denied(String),
}

impl ClientError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            ClientError::NotFound(_) => EXIT_NOT_FOUND,
            ClientError::Registry { status: 404, .. } => EXIT_NOT_FOUND,
            _ => EXIT_FAILURE,
        }
    }

    /// True for failures that may pass when retried: the network, and server-side errors.
    /// A 4xx or a local error will not.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Network(_) => true,
            ClientError::Registry { status, .. } => {
                *status >= 500 || *status == 408 || *status == 429
            }
            _ => false,
        }
    }

    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        ClientError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// Describes a transport error with its causes on one line (TLS failures hide the
    /// useful part several sources deep).
    pub fn network(context: &str, err: &reqwest::Error) -> Self {
        let mut text = format!("{context}: {err}");
        let mut source = std::error::Error::source(err);
        while let Some(s) = source {
            let s_text = s.to_string();
            if !text.contains(&s_text) {
                text.push_str(": ");
                text.push_str(&s_text);
            }
            source = s.source();
        }
        // TLS spoken to a plain HTTP server: rustls reads its reply as a corrupt record.
        if text.contains("InvalidContentType") || text.contains("corrupt message") {
            return ClientError::Network(format!(
                "{context}: the server does not speak TLS there: use http:// instead of https://"
            ));
        }
        ClientError::Network(text)
    }
}

/// Result of client operations.
pub type ClientResult<T> = Result<T, ClientError>;
