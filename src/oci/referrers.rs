//! `GET /v2/<name>/referrers/<digest>`: an image index of the manifests whose `subject`
//! is the digest, optionally only those of one `artifactType`.

use actix_web::{web, HttpRequest, HttpResponse};

use super::{query, OciApiError};
use crate::api::AppState;

/// The media type of the answer.
const INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// The referrers, as an image index (empty when there are none).
pub async fn list(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, OciApiError> {
    let (name, digest) = path.into_inner();
    let q = query(&req);
    let filter = q.get("artifactType").map(String::as_str);
    let manifests = state.registry.oci_referrers(&name, &digest, filter).await?;
    let mut reply = HttpResponse::Ok();
    reply
        .insert_header(super::base::API_VERSION)
        .content_type(INDEX);
    if filter.is_some() {
        reply.insert_header(("OCI-Filters-Applied", "artifactType"));
    }
    let body = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": INDEX,
        "manifests": manifests,
    });
    Ok(reply.body(body.to_string()))
}
