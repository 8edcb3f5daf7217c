//! `HEAD`/`GET /v2/<name>/blobs/<digest>`: whole, or by `Range` (206, 416).

use actix_web::body::SizedStream;
use actix_web::http::{header, Method};
use actix_web::{web, HttpRequest, HttpResponse};

use super::OciApiError;
use crate::api::params::{byte_range, headers_only, ranged_reply};
use crate::api::AppState;
use crate::registry::oci::OciError;

/// The blob's bytes; `HEAD` answers the headers only.
pub async fn get(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, OciApiError> {
    let (name, digest) = path.into_inner();
    let record = state.registry.oci_blob(&name, &digest).await?;
    let range_header = req
        .headers()
        .get(header::RANGE)
        .and_then(|h| h.to_str().ok());
    let Ok(range) = byte_range(range_header, record.size) else {
        return Ok(HttpResponse::RangeNotSatisfiable()
            .insert_header(super::base::API_VERSION)
            .insert_header((header::CONTENT_RANGE, format!("bytes */{}", record.size)))
            .finish());
    };
    let mut reply = ranged_reply(range, record.size);
    reply
        .insert_header(super::base::API_VERSION)
        .insert_header(("Docker-Content-Digest", digest.as_str()))
        .insert_header((header::ETAG, format!("\"{digest}\"")))
        .content_type("application/octet-stream");
    let len = range.map(|(s, e)| e - s).unwrap_or(record.size);
    if req.method() == Method::HEAD {
        return Ok(headers_only(reply, len));
    }
    let stream = state
        .registry
        .read_file(&record, range)
        .await
        .map_err(OciError::from)?;
    Ok(reply.body(SizedStream::new(len, stream)))
}

/// `DELETE /v2/<name>/blobs/<digest>`: 202; the repository no longer holds the blob.
pub async fn delete(
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, OciApiError> {
    let (name, digest) = path.into_inner();
    state.registry.oci_delete_blob(&name, &digest).await?;
    Ok(HttpResponse::Accepted()
        .insert_header(super::base::API_VERSION)
        .finish())
}
