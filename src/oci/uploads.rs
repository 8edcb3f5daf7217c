//! Blob uploads: `POST` opens a session (or stores a whole blob with `?digest=`),
//! `PATCH` appends a chunk, `PUT` closes with the digest, `GET` says how far it got,
//! `DELETE` cancels. Any replica serves any step: the state is in the metadata store.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::StreamExt;

use super::{query, OciApiError};
use crate::api::params::counted_push;
use crate::api::AppState;
use crate::auth::Identity;
use crate::registry::limits::Uploader;
use crate::registry::oci::OciError;

/// The upload's `Range` header: the bytes received, as `0-<last byte>`.
pub fn range_header(received: u64) -> String {
    format!("0-{}", received.saturating_sub(1))
}

fn location(base: &str, name: &str, id: &str) -> String {
    format!("{base}/v2/{name}/blobs/uploads/{id}")
}

/// A 202 pointing at where the upload goes on (`base`: see [`AppState::link_base`]).
fn in_progress(base: &str, name: &str, id: &str, received: u64) -> HttpResponse {
    HttpResponse::Accepted()
        .insert_header(super::base::API_VERSION)
        .insert_header((header::LOCATION, location(base, name, id)))
        .insert_header((header::RANGE, range_header(received)))
        .insert_header(("Docker-Upload-UUID", id))
        .insert_header((header::CONTENT_LENGTH, 0))
        .finish()
}

/// A 201 naming the blob made.
fn created(base: &str, name: &str, digest: &str) -> HttpResponse {
    HttpResponse::Created()
        .insert_header(super::base::API_VERSION)
        .insert_header((header::LOCATION, format!("{base}/v2/{name}/blobs/{digest}")))
        .insert_header(("Docker-Content-Digest", digest))
        .insert_header((header::CONTENT_LENGTH, 0))
        .finish()
}

/// The request body, counted in the transfer metrics as the vendor API's uploads are.
fn body_stream(
    payload: web::Payload,
) -> impl futures_util::Stream<Item = Result<bytes::Bytes, String>> + Unpin {
    counted_push(payload).map(|r| r.map_err(|e| e.to_string()))
}

/// `POST /v2/<name>/blobs/uploads/`: 202 with a relative `Location`, or with
/// `?digest=` the whole blob in the body and 201, or with `?mount=<digest>` (and
/// `from=<repository>`) 201 when the blob is there to mount, else a session as without.
pub async fn start(
    state: web::Data<AppState>,
    req: HttpRequest,
    identity: Identity,
    name: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, OciApiError> {
    let registry = &state.registry;
    let base = state.link_base();
    let q = query(&req);
    if let Some(digest) = q.get("mount") {
        let from = q.get("from").map(String::as_str);
        if registry.oci_mount(&name, digest, from).await?.is_some() {
            return Ok(created(base, &name, digest));
        }
    }
    // One of the uploads the caller may hold open, a whole blob's too while it streams.
    let id = registry
        .oci_start_upload(&name, &Uploader::of(&identity))
        .await?;
    match q.get("digest") {
        Some(digest) => {
            registry
                .oci_finish(&name, &id, None, digest, body_stream(payload))
                .await?;
            Ok(created(base, &name, digest))
        }
        None => Ok(in_progress(base, &name, &id, 0)),
    }
}

/// `GET /v2/<name>/blobs/uploads/<id>`: 204 with the bytes received in `Range`.
pub async fn status(
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, OciApiError> {
    let (name, id) = path.into_inner();
    let received = state.registry.oci_upload_status(&name, &id).await?;
    Ok(HttpResponse::NoContent()
        .insert_header(super::base::API_VERSION)
        .insert_header((header::LOCATION, location(state.link_base(), &name, &id)))
        .insert_header((header::RANGE, range_header(received)))
        .insert_header(("Docker-Upload-UUID", id))
        .finish())
}

/// The first byte of a `Content-Range`: the spec's `<start>-<end>`, also with HTTP's
/// `bytes ` or a `bytes=` prefix and a `/<size>` suffix.
pub fn content_range_start(value: &str) -> Option<u64> {
    let v = value.trim();
    let v = v
        .strip_prefix("bytes=")
        .or_else(|| v.strip_prefix("bytes "))
        .unwrap_or(v);
    let (start, _) = v.split_once('-')?;
    start.trim().parse().ok()
}

/// Where a request's `Content-Range` says its bytes start, when it has one.
fn start_of(req: &HttpRequest) -> Result<Option<u64>, OciError> {
    req.headers()
        .get(header::CONTENT_RANGE)
        .map(|v| {
            v.to_str()
                .ok()
                .and_then(content_range_start)
                .ok_or_else(|| {
                    OciError::BlobUploadInvalid("Content-Range must be <start>-<end>".into())
                })
        })
        .transpose()
}

/// `PATCH /v2/<name>/blobs/uploads/<id>`: appends the body (streamed; a `Content-Range`
/// must start where the upload stands, or 416).
pub async fn append(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
) -> Result<HttpResponse, OciApiError> {
    let (name, id) = path.into_inner();
    let start = start_of(&req)?;
    let received = state
        .registry
        .oci_append(&name, &id, start, body_stream(payload))
        .await?;
    Ok(in_progress(state.link_base(), &name, &id, received))
}

/// `PUT /v2/<name>/blobs/uploads/<id>?digest=`: the last bytes, if any, then 201; a
/// `Content-Range` that does not start where the upload stands is 416, as for a `PATCH`,
/// and the upload stays open.
pub async fn finish(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
) -> Result<HttpResponse, OciApiError> {
    let (name, id) = path.into_inner();
    let q = query(&req);
    let Some(digest) = q.get("digest") else {
        return Err(
            OciError::DigestInvalid("the digest query parameter is required".into()).into(),
        );
    };
    let start = start_of(&req)?;
    state
        .registry
        .oci_finish(&name, &id, start, digest, body_stream(payload))
        .await?;
    Ok(created(state.link_base(), &name, digest))
}

/// `DELETE /v2/<name>/blobs/uploads/<id>`: 204.
pub async fn cancel(
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, OciApiError> {
    let (name, id) = path.into_inner();
    state.registry.oci_cancel(&name, &id).await?;
    Ok(HttpResponse::NoContent()
        .insert_header(super::base::API_VERSION)
        .finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_in_every_form_clients_send() {
        assert_eq!(content_range_start("0-1023"), Some(0));
        assert_eq!(content_range_start("1024-2047"), Some(1024));
        assert_eq!(content_range_start("bytes 5-9/10"), Some(5));
        assert_eq!(content_range_start("bytes=7-9"), Some(7));
        assert_eq!(content_range_start("nonsense"), None);
        assert_eq!(range_header(0), "0-0");
        assert_eq!(range_header(10), "0-9");
    }
}
