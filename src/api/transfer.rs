//! The transfer protocol (`/api/v1`): negotiate, upload, commit, abort, manifest, download.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::Value;

use super::params::{
    byte_range, counted_pull, counted_push, headers_only, json_body, number, query, ranged_reply,
    required_json,
};
use super::{ok, ApiError, AppState};
use crate::auth::Identity;
use crate::protocol::{CommitRequest, PushRequest};
use crate::registry::limits::Uploader;
use crate::registry::RegistryError;

/// `POST /api/v1/push`: the session is one of those the caller may hold open.
pub async fn negotiate(
    state: web::Data<AppState>,
    identity: Identity,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let req: PushRequest = required_json(payload).await?;
    let by = Uploader::of(&identity);
    Ok(ok(state.registry.negotiate(req, &by).await?))
}

/// `GET /api/v1/push/{session}`.
pub async fn status(
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    Ok(ok(state.registry.push_status(&path).await?))
}

/// `PUT /api/v1/push/{session}/files/{key}?offset=N`, the raw bytes as the body; `N` is
/// any multiple of the file's part size, so a file may be sent as several ranges at once.
pub async fn upload(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let (session, key) = path.into_inner();
    let offset = match query(&req)?.get("offset") {
        Some(o) => o.trim().parse::<u64>().map_err(|_| {
            ApiError::bad_request(format!("offset must be a byte count, got {o:?}"))
        })?,
        None => 0,
    };
    // The body's length bounds the parts this request claims; without one it claims the
    // rest of the file.
    let len = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let counted = counted_push(payload);
    Ok(ok(state
        .registry
        .upload_range(&session, &key, offset, len, counted)
        .await?))
}

/// `POST /api/v1/push/{session}/commit`.
pub async fn commit(
    state: web::Data<AppState>,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let req: CommitRequest = json_body(payload).await?.unwrap_or_default();
    Ok(ok(state.registry.commit(&path, req).await?))
}

/// `DELETE /api/v1/push/{session}`.
pub async fn abort(
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    state.registry.abort(&path).await?;
    Ok(ok(Value::Null))
}

/// `GET /api/v1/templates/{id or name}/manifest[?tag=|?version=][&record_pull=false]`:
/// a pull's manifest, recorded as the template's latest pull unless `record_pull=false`
/// (a size check is not a pull).
pub async fn manifest(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let q = query(&req)?;
    let version = number("version", q.get("version").map(String::as_str))?;
    let record_pull = match q.get("record_pull").map(String::as_str) {
        None | Some("true") => true,
        Some("false") => false,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "record_pull must be true or false, got {other:?}"
            )))
        }
    };
    Ok(ok(state
        .registry
        .manifest(
            &path,
            q.get("tag").map(String::as_str),
            version,
            record_pull,
        )
        .await?))
}

/// `GET /api/v1/files/{key}`: the bytes, whole (200), by `Range` (206), or a 307 to a
/// presigned URL when the store redirects.
pub async fn download(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let record = state.registry.file(&path).await?;
    if let Some(redirect) = state.registry.redirect_for(&record).await? {
        return Ok(HttpResponse::TemporaryRedirect()
            .insert_header((header::LOCATION, redirect.url))
            .insert_header(("X-Checksum-Sha256", record.sha256.clone()))
            .finish());
    }
    let range_header = req
        .headers()
        .get(header::RANGE)
        .and_then(|h| h.to_str().ok());
    let range = byte_range(range_header, record.size)
        .map_err(|()| RegistryError::RangeNotSatisfiable { size: record.size })?;
    let mut reply = ranged_reply(range, record.size);
    reply
        .insert_header((header::ETAG, format!("\"{}\"", record.sha256)))
        .insert_header(("X-Checksum-Sha256", record.sha256.clone()))
        .content_type("application/octet-stream");
    let len = range.map(|(s, e)| e - s).unwrap_or(record.size);
    if req.method() == actix_web::http::Method::HEAD {
        return Ok(headers_only(reply, len));
    }
    let stream = state.registry.read_file(&record, range).await?;
    Ok(counted_pull(&mut reply, len, stream))
}
