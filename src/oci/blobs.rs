//! `HEAD`/`GET /v2/<name>/blobs/<digest>`: whole, or by `Range` (206, 416), or a `GET`
//! redirected (307) to a presigned S3 URL when the store redirects downloads.

use actix_web::http::{header, Method};
use actix_web::{web, HttpRequest, HttpResponse};

use super::OciApiError;
use crate::api::params::{byte_range, counted_pull, headers_only, ranged_reply};
use crate::api::AppState;
use crate::registry::oci::OciError;

/// The blob's bytes; `HEAD` answers the headers only.
///
/// A `GET` of a blob the store can presign is answered with a 307 to the presigned URL,
/// as docker distribution's redirect middleware does, once the access checks passed and
/// the blob is known: a `Range` is not looked at here, the client sends it again to the
/// `Location` and S3 answers it (206, or 416). `HEAD` stays here, so clients get the size
/// and digest from the registry without a second hop.
pub async fn get(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, OciApiError> {
    let (name, digest) = path.into_inner();
    let record = state.registry.oci_blob(&name, &digest).await?;
    if req.method() == Method::GET {
        let redirect = state
            .registry
            .redirect_for(&record)
            .await
            .map_err(OciError::from)?;
        if let Some(redirect) = redirect {
            return Ok(HttpResponse::TemporaryRedirect()
                .insert_header(super::base::API_VERSION)
                .insert_header(("Docker-Content-Digest", digest.as_str()))
                .insert_header((header::LOCATION, redirect.url))
                .finish());
        }
    }
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
    Ok(counted_pull(&mut reply, len, stream))
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
