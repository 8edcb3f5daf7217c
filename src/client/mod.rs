//! The HTTP client and transfer engine used by `vmreg registry`: typed calls to every
//! registry endpoint ([`http`]) under the caller's credentials ([`auth`]), the local VM
//! library ([`library`]), and pushes and pulls that move only missing files, several
//! streams at once, resumably and verified.

pub mod auth;
#[cfg(test)]
mod auth_tests;
pub mod digests;
pub mod download;
pub mod error;
pub mod fresh;
pub mod http;
pub mod journal;
pub mod library;
pub mod progress;
pub mod pull;
pub mod push;
pub mod ranges;
pub mod sample;
pub mod secret;
pub mod staging;
pub mod suggest;
pub mod tap;
pub mod throttle;
pub mod traceparent;
pub mod upload;

use std::sync::Arc;

pub use auth::Credentials;
pub use error::{ClientError, ClientResult};
pub use http::{Endpoint, RegistryClient, VersionSelector};
pub use library::Library;
pub use progress::{Reporter, Silent};
pub use secret::{PrivateKey, Secret};
pub use throttle::Throttle;

/// Everything a push or pull needs: the registry, the library and how to move bytes.
#[derive(Clone)]
pub struct Transfer {
    /// The registry.
    pub registry: RegistryClient,
    /// The local VM library.
    pub library: Library,
    /// Files and byte ranges in flight at once.
    pub concurrency: usize,
    /// Where progress goes.
    pub reporter: Arc<dyn Reporter>,
    /// An optional cap on bytes per second.
    pub throttle: Option<Arc<Throttle>>,
}
