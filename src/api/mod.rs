//! The HTTP layer: handlers parse the request, call one service function and shape the
//! reply in the vendor's envelope. Routes live in [`configure`], used by the server and
//! by tests alike.

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
pub mod server;
mod tls;
mod transfer;
mod vendor;

use actix_web::{web, HttpResponse};
use serde::Serialize;

pub use error::ApiError;

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
}

impl AppState {
    /// What an absolute path is prefixed with in the links the server gives: the public
    /// URL, or nothing (the link is relative to the request's own host).
    pub fn link_base(&self) -> &str {
        self.public_url.as_deref().unwrap_or("")
    }
}

/// Every route of the server.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/").get(health::index))
        .service(resource("/livez").get(health::livez))
        .service(resource("/readyz").get(health::readyz))
        .service(resource("/openapi.json").get(health::openapi))
        .service(resource("/metrics").get(metrics::metrics))
        .service(resource("/registry/status").get(health::status))
        .service(resource("/registry/disk").get(health::disk))
        .service(
            resource("/registry/vm")
                .get(vendor::list_v1)
                .delete(vendor::delete_template),
        )
        .service(resource("/registry/v2/vm").get(vendor::list_v2))
        .service(resource("/registry/vm/info").get(vendor::vm_info))
        .service(resource("/registry/vm/arch").put(vendor::set_arch))
        .service(resource("/registry/revert").delete(vendor::revert))
        .service(resource("/api/v1/push").post(transfer::negotiate))
        .service(
            resource("/api/v1/push/{session}")
                .get(transfer::status)
                .delete(transfer::abort),
        )
        .service(resource("/api/v1/push/{session}/files/{key}").put(transfer::upload))
        .service(resource("/api/v1/push/{session}/commit").post(transfer::commit))
        .service(resource("/api/v1/templates/{template}/manifest").get(transfer::manifest))
        .service(
            resource("/api/v1/files/{key}")
                .get(transfer::download)
                .head(transfer::download),
        )
        .configure(configure_auth)
        .configure(crate::oci::configure)
        .default_service(web::to(|| async {
            Err::<HttpResponse, _>(ApiError::not_found("no such endpoint"))
        }));
}

/// API keys, the TAP handshake and permission groups.
fn configure_auth(cfg: &mut web::ServiceConfig) {
    for path in ["/v1/apikey", "/api/v1/apikey"] {
        cfg.service(
            resource(path)
                .get(keys::list)
                .post(keys::create)
                .put(keys::update)
                .delete(keys::delete),
        );
    }
    cfg.service(resource("/tap/v1/hand").post(keys::hand))
        .service(resource("/tap/v1/shake").post(keys::shake))
        .service(resource("/admin/api/v1/permission").get(groups::permissions))
        .service(resource("/admin/api/v1/retention").post(retention::apply))
        .service(
            resource("/admin/api/v1/permission/group")
                .get(groups::list)
                .post(groups::create),
        )
        .service(
            resource("/admin/api/v1/permission/group/{group}")
                .get(groups::get)
                .put(groups::put)
                .post(groups::put)
                .delete(groups::delete),
        );
}

/// The routes of the separate metrics listener.
pub fn configure_metrics(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/metrics").get(metrics::metrics));
}

/// A route whose other methods get a `FAIL` 405 rather than an empty reply.
fn resource(path: &str) -> actix_web::Resource {
    web::resource(path).default_service(web::to(|| async {
        Err::<HttpResponse, _>(ApiError::method_not_allowed())
    }))
}

/// `{"status":"OK","body":…,"message":""}`.
pub fn ok<T: Serialize>(body: T) -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "status": "OK", "body": body, "message": "" }))
}
