//! `GET /v2/`: the API version check clients make first (`tart login`, `docker login`).

use actix_web::HttpResponse;

/// The header naming the API version, on every `/v2/` answer a client checks.
pub const API_VERSION: (&str, &str) = ("Docker-Distribution-API-Version", "registry/2.0");

/// `GET /v2/`: 200 with an empty JSON object.
pub async fn check() -> HttpResponse {
    HttpResponse::Ok()
        .insert_header(API_VERSION)
        .content_type("application/json")
        .body("{}")
}
