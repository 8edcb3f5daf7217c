//! The HTTP layer: handlers parse the request, call one service function and shape the
//! reply in the vendor's envelope. Every route is declared once, in [`routes`], with the
//! permission it needs.

pub mod access;
pub mod client_cert;
mod error;
mod groups;
mod health;
mod in_flight;
mod keys;
mod limits;
mod listing;
mod metrics;
pub mod observe;
pub(crate) mod params;
mod retention;
pub mod routes;
pub mod security_headers;
pub mod server;
mod starting;
mod tls;
mod transfer;
mod vendor;

use actix_web::HttpResponse;
use serde::Serialize;

pub(crate) use error::ours;
pub use error::ApiError;
pub use routes::{configure, configure_metrics};

use crate::registry::Registry;

/// What every handler shares.
pub struct AppState {
    /// The service layer.
    pub registry: Registry,
    /// The data directory, whose volume `/registry/disk` reports when the blob store has
    /// no size of its own (S3).
    pub data_dir: std::path::PathBuf,
    /// The URL clients reach the server at (`--public-url`), when set.
    pub public_url: Option<String>,
    /// The registry's instance id, the same on every replica.
    pub instance_id: String,
}

impl AppState {
    /// What an absolute path is prefixed with in the links the server gives: the public
    /// URL, or nothing (the link is relative to the request's own host).
    pub fn link_base(&self) -> &str {
        self.public_url.as_deref().unwrap_or("")
    }
}

/// `{"status":"OK","body":…,"message":""}`.
pub fn ok<T: Serialize>(body: T) -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "status": "OK", "body": body, "message": "" }))
}
