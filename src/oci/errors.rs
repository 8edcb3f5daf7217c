//! The spec's error codes in one table, and the JSON error body
//! `{"errors":[{"code":…,"message":…,"detail":…}]}`; a failure on our side (5xx) says only
//! that, with the request id, and logs what happened.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};

use crate::registry::oci::OciError;
use crate::registry::RegistryError;

/// An OCI error reply.
#[derive(Debug)]
pub struct OciApiError(pub OciError);

impl From<OciError> for OciApiError {
    fn from(e: OciError) -> Self {
        OciApiError(e)
    }
}

impl std::fmt::Display for OciApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// The status and code of each error.
fn table(e: &OciError) -> (StatusCode, &'static str) {
    use OciError as E;
    match e {
        E::BlobUnknown => (StatusCode::NOT_FOUND, "BLOB_UNKNOWN"),
        E::BlobUploadUnknown => (StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN"),
        E::BlobUploadInvalid(_) => (StatusCode::BAD_REQUEST, "BLOB_UPLOAD_INVALID"),
        E::RangeInvalid { .. } => (StatusCode::RANGE_NOT_SATISFIABLE, "BLOB_UPLOAD_INVALID"),
        E::DigestInvalid(_) => (StatusCode::BAD_REQUEST, "DIGEST_INVALID"),
        E::ManifestUnknown => (StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN"),
        E::ManifestInvalid(_) => (StatusCode::BAD_REQUEST, "MANIFEST_INVALID"),
        E::NameInvalid => (StatusCode::BAD_REQUEST, "NAME_INVALID"),
        E::NameUnknown => (StatusCode::NOT_FOUND, "NAME_UNKNOWN"),
        E::TagInvalid => (StatusCode::BAD_REQUEST, "TAG_INVALID"),
        E::PaginationInvalid => (StatusCode::BAD_REQUEST, "PAGINATION_NUMBER_INVALID"),
        E::Unsupported(_) => (StatusCode::BAD_REQUEST, "UNSUPPORTED"),
        // As quota refusals are in other registries: clients show DENIED's message.
        E::Full(_) => (StatusCode::FORBIDDEN, "DENIED"),
        // Transient, unlike a full repository: clients back off and retry a 429.
        E::TooManyUploads(_) => (StatusCode::TOO_MANY_REQUESTS, "TOOMANYREQUESTS"),
        E::Registry(r) => match r {
            RegistryError::BadRequest(_) => (StatusCode::BAD_REQUEST, "UNSUPPORTED"),
            RegistryError::NotFound(_) => (StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN"),
            RegistryError::Conflict(_) => (StatusCode::CONFLICT, "BLOB_UPLOAD_INVALID"),
            RegistryError::RangeNotSatisfiable { .. } => {
                (StatusCode::RANGE_NOT_SATISFIABLE, "BLOB_UPLOAD_INVALID")
            }
            RegistryError::Busy => (StatusCode::TOO_MANY_REQUESTS, "TOOMANYREQUESTS"),
            RegistryError::TooManyUploads(_) => (StatusCode::TOO_MANY_REQUESTS, "TOOMANYREQUESTS"),
            RegistryError::Meta(_) | RegistryError::Store(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE")
            }
        },
    }
}

impl ResponseError for OciApiError {
    fn status_code(&self) -> StatusCode {
        table(&self.0).0
    }

    fn error_response(&self) -> HttpResponse {
        let (status, code) = table(&self.0);
        // A failure on our side is told as the vendor API tells it, with the request id
        // in `detail` too; what failed, and how, goes to the log.
        let (message, detail) = match status.is_server_error() {
            true => (
                crate::api::ours(status, &self.0, "OCI request failed"),
                crate::api::observe::current_request_id().map_or(
                    serde_json::Value::Null,
                    |id| serde_json::json!({ "request_id": id }),
                ),
            ),
            false => (self.0.to_string(), serde_json::Value::Null),
        };
        let body = serde_json::json!({
            "errors": [{ "code": code, "message": message, "detail": detail }]
        });
        let mut reply = HttpResponse::build(status);
        reply.insert_header(super::base::API_VERSION);
        if let OciError::RangeInvalid { received } = self.0 {
            reply.insert_header((header::RANGE, super::uploads::range_header(received)));
        }
        reply.json(body)
    }
}

/// A method the resource does not serve: 405 with the spec's `UNSUPPORTED`.
pub async fn unsupported() -> HttpResponse {
    HttpResponse::MethodNotAllowed()
        .insert_header(super::base::API_VERSION)
        .json(serde_json::json!({
            "errors": [{ "code": "UNSUPPORTED", "message": "the operation is unsupported", "detail": null }]
        }))
}
