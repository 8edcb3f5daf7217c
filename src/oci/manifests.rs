//! `PUT`/`GET`/`HEAD /v2/<name>/manifests/<reference>`: stored and served byte for byte
//! (clients hash what they receive), under a registered manifest media type only (see
//! [`crate::registry::oci::MANIFEST_MEDIA_TYPES`]).

use actix_web::http::{header, Method};
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::StreamExt;

use super::OciApiError;
use crate::api::params::headers_only;
use crate::api::AppState;
use crate::registry::oci::{OciError, MAX_MANIFEST};

/// The manifest, with its media type and digest.
pub async fn get(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, OciApiError> {
    let (name, reference) = path.into_inner();
    let manifest = state.registry.oci_manifest(&name, &reference).await?;
    let mut reply = HttpResponse::Ok();
    reply
        .insert_header(super::base::API_VERSION)
        .insert_header(("Docker-Content-Digest", manifest.digest.as_str()))
        .insert_header((header::ETAG, format!("\"{}\"", manifest.digest)))
        .content_type(manifest.media_type.as_str());
    if req.method() == Method::HEAD {
        return Ok(headers_only(reply, manifest.bytes.len() as u64));
    }
    Ok(reply.body(manifest.bytes))
}

/// Stores the body under its digest and, for a tag, points the tag at it: 201.
pub async fn put(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    mut payload: web::Payload,
) -> Result<HttpResponse, OciApiError> {
    let (name, reference) = path.into_inner();
    // A header that is not text is a type no manifest has: the service refuses it.
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap_or("(not text)").to_string());
    let mut body = bytes::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| OciError::ManifestInvalid(format!("body cut short: {e}")))?;
        if body.len() + chunk.len() > MAX_MANIFEST {
            return Err(
                OciError::ManifestInvalid(format!("larger than {MAX_MANIFEST} bytes")).into(),
            );
        }
        body.extend_from_slice(&chunk);
    }
    let (digest, subject) = state
        .registry
        .oci_put_manifest(&name, &reference, content_type.as_deref(), body.freeze())
        .await?;
    let mut reply = HttpResponse::Created();
    reply
        .insert_header(super::base::API_VERSION)
        .insert_header((
            header::LOCATION,
            format!("{}/v2/{name}/manifests/{digest}", state.link_base()),
        ))
        .insert_header(("Docker-Content-Digest", digest))
        .insert_header((header::CONTENT_LENGTH, 0));
    if let Some(subject) = subject {
        // The referrers API is served, so clients need not keep a fallback tag.
        reply.insert_header(("OCI-Subject", subject));
    }
    Ok(reply.finish())
}

/// `DELETE /v2/<name>/manifests/<reference>`: 202. By digest the manifest goes, with the
/// tags pointing at it; by tag only the tag.
pub async fn delete(
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, OciApiError> {
    let (name, reference) = path.into_inner();
    state
        .registry
        .oci_delete_manifest(&name, &reference)
        .await?;
    Ok(HttpResponse::Accepted()
        .insert_header(super::base::API_VERSION)
        .finish())
}
