//! `GET /v2/<name>/tags/list`.

use actix_web::{web, HttpResponse};

use super::OciApiError;
use crate::api::AppState;

/// The repository's tags, sorted.
pub async fn list(
    state: web::Data<AppState>,
    name: web::Path<String>,
) -> Result<HttpResponse, OciApiError> {
    let tags = state.registry.oci_tags(&name).await?;
    Ok(HttpResponse::Ok()
        .insert_header(super::base::API_VERSION)
        .json(serde_json::json!({ "name": name.as_str(), "tags": tags })))
}
