//! One error type for every handler: a status and the vendor's `FAIL` envelope.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};

use crate::auth::AuthError;
use crate::meta::MetaError;
use crate::registry::RegistryError;
use crate::store::StoreError;

/// An error reply.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    /// For 416: the size to name in `Content-Range: bytes */size`.
    size: Option<u64>,
}

impl ApiError {
    /// What the reply says, without its status.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// A 400 with a message.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            size: None,
        }
    }

    /// A 404 with a message.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            message: message.into(),
            size: None,
        }
    }

    /// A 405: the path exists, the method does not.
    pub fn method_not_allowed() -> Self {
        Self {
            status: StatusCode::METHOD_NOT_ALLOWED,
            message: "method not allowed on this endpoint".into(),
            size: None,
        }
    }

    /// A 431 with a message.
    pub fn header_too_large(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            message: message.into(),
            size: None,
        }
    }

    /// Any error status with a message.
    pub fn with_status(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            size: None,
        }
    }

    /// A 503 with a message.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: message.into(),
            size: None,
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        let status = match &e {
            AuthError::Unauthenticated => StatusCode::UNAUTHORIZED,
            AuthError::Forbidden(_) => StatusCode::FORBIDDEN,
            AuthError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AuthError::NotFound(_) | AuthError::Disabled(_) => StatusCode::NOT_FOUND,
            AuthError::Conflict(_) => StatusCode::CONFLICT,
            AuthError::Meta(MetaError::Unavailable(_)) | AuthError::Store(_) | AuthError::Busy => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            AuthError::Meta(MetaError::Corrupt { .. }) | AuthError::Internal(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        let message = match status {
            // Auth errors never carry secrets; the details still stay in the log.
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::INTERNAL_SERVER_ERROR => {
                ours(status, &e, "authentication failed on our side")
            }
            _ => e.to_string(),
        };
        Self {
            status,
            message,
            size: None,
        }
    }
}

/// What a client is told of a failure on our side (a 5xx): a generic message naming the
/// request id, which the log line carrying the detail names too. Backend details (paths,
/// OS errors, addresses) go to the log only, whichever API answers.
pub(crate) fn ours(status: StatusCode, detail: &dyn std::fmt::Display, what: &str) -> String {
    tracing::error!(error = %detail, "{what}");
    let text = match status {
        StatusCode::SERVICE_UNAVAILABLE => "storage backend unavailable; retry later",
        _ => "internal error",
    };
    match super::observe::current_request_id() {
        Some(id) => format!("{text} (request id {id})"),
        None => text.to_string(),
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, self.message)
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        let status = match &e {
            RegistryError::BadRequest(_) => StatusCode::BAD_REQUEST,
            RegistryError::NotFound(_) => StatusCode::NOT_FOUND,
            RegistryError::Conflict(_) => StatusCode::CONFLICT,
            // Transient, as the OCI side's: clients back off and retry a 429.
            RegistryError::TooManyUploads(_) => StatusCode::TOO_MANY_REQUESTS,
            RegistryError::RangeNotSatisfiable { .. } => StatusCode::RANGE_NOT_SATISFIABLE,
            RegistryError::Meta(MetaError::Unavailable(_))
            | RegistryError::Store(StoreError::Unavailable(_))
            | RegistryError::Busy => StatusCode::SERVICE_UNAVAILABLE,
            RegistryError::Meta(MetaError::Corrupt { .. })
            | RegistryError::Store(StoreError::NotFound(_)) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let message = match status {
            StatusCode::SERVICE_UNAVAILABLE if matches!(e, RegistryError::Busy) => e.to_string(),
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::INTERNAL_SERVER_ERROR => {
                ours(status, &e, "request failed")
            }
            _ => e.to_string(),
        };
        let size = match e {
            RegistryError::RangeNotSatisfiable { size } => Some(size),
            _ => None,
        };
        Self {
            status,
            message,
            size,
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut reply = HttpResponse::build(self.status);
        if let Some(size) = self.size {
            reply.insert_header(("Content-Range", format!("bytes */{size}")));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            // Both ways in: the root token (Basic) and API key sessions (Bearer).
            reply.append_header((header::WWW_AUTHENTICATE, "Basic realm=\"vmreg\""));
            reply.append_header((header::WWW_AUTHENTICATE, "Bearer realm=\"vmreg\""));
        }
        reply.json(serde_json::json!({ "status": "FAIL", "body": null, "message": self.message }))
    }
}
