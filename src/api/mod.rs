//! The HTTP layer: handlers parse the request, call one service function and shape the
//! reply in the vendor's envelope. Routes live in [`configure`], used by the server and
//! by tests alike.

mod error;
mod health;
mod params;
pub mod server;
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
}

/// Every route of the server.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/", web::get().to(health::index))
        .route("/livez", web::get().to(health::livez))
        .route("/readyz", web::get().to(health::readyz))
        .route("/openapi.json", web::get().to(health::openapi))
        .route("/registry/status", web::get().to(health::status))
        .route("/registry/disk", web::get().to(health::disk))
        .service(
            web::resource("/registry/vm")
                .get(vendor::list_v1)
                .delete(vendor::delete_template),
        )
        .route("/registry/v2/vm", web::get().to(vendor::list_v2))
        .route("/registry/vm/info", web::get().to(vendor::vm_info))
        .route("/registry/vm/arch", web::put().to(vendor::set_arch))
        .route("/registry/revert", web::delete().to(vendor::revert))
        .route("/api/v1/push", web::post().to(transfer::negotiate))
        .service(
            web::resource("/api/v1/push/{session}")
                .get(transfer::status)
                .delete(transfer::abort),
        )
        .route(
            "/api/v1/push/{session}/files/{key}",
            web::put().to(transfer::upload),
        )
        .route(
            "/api/v1/push/{session}/commit",
            web::post().to(transfer::commit),
        )
        .route(
            "/api/v1/templates/{template}/manifest",
            web::get().to(transfer::manifest),
        )
        .service(
            web::resource("/api/v1/files/{key}")
                .get(transfer::download)
                .head(transfer::download),
        )
        .default_service(web::to(|| async {
            Err::<HttpResponse, _>(ApiError::not_found("no such endpoint"))
        }));
}

/// `{"status":"OK","body":…,"message":""}`.
pub fn ok<T: Serialize>(body: T) -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "status": "OK", "body": body, "message": "" }))
}
