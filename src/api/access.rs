//! Where every request is authenticated and authorized, before any handler runs: the
//! route-to-permission table, the middleware that applies it, and the [`Identity`]
//! extractor handlers use to learn who is calling.
//!
//! Authentication happens once, when a request starts: a session that expires while a
//! long upload or download streams does not cut it.

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::http::{header, Method};
use actix_web::middleware::Next;
use actix_web::{web, FromRequest, HttpMessage, HttpRequest, ResponseError};

use super::client_cert::{self, CertPolicy};
use super::ApiError;
use crate::auth::{Access, Auth, AuthError, AuthMethod, Identity, Permission as P};

/// What `method path` requires. Unknown paths need an authenticated caller, so that a
/// stranger learns nothing, not even which paths exist.
pub fn required(method: &Method, path: &str) -> Access {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let is = |m: &Method| method == m;
    match segments.as_slice() {
        ["livez"] | ["readyz"] => Access::Public,
        ["tap", "v1", "hand"] | ["tap", "v1", "shake"] => Access::Public,
        [""] => Access::All(&[P::Index]),
        ["openapi.json"] | ["registry", "status"] => Access::Authenticated,
        ["registry", "disk"] => Access::All(&[P::GetDiskInfo]),
        ["registry", "vm"] if is(&Method::DELETE) => Access::All(&[P::DeleteVm]),
        ["registry", "vm"] | ["registry", "v2", "vm"] | ["registry", "vm", "info"] => {
            Access::All(&[P::ListVms])
        }
        ["registry", "vm", "arch"] => Access::All(&[P::PushVm]),
        ["registry", "revert"] => Access::All(&[P::Revert]),
        ["v1", "apikey"] | ["api", "v1", "apikey"] => Access::Root,
        ["api", "v1", "push"] => Access::All(&[P::HeadPushVm, P::PushVm]),
        ["api", "v1", "push", _] => Access::All(&[P::HeadPushVm]),
        ["api", "v1", "push", _, "files", _] => Access::All(&[P::UploadFile]),
        ["api", "v1", "push", _, "commit"] => Access::All(&[P::PushVm]),
        ["api", "v1", "templates", _, "manifest"] => Access::All(&[P::PullVm]),
        ["api", "v1", "files", _] => Access::Any(&[P::DownloadVm, P::DownloadFile]),
        ["admin", "api", "v1", "permission"] => Access::Admin(P::ViewPermissions),
        ["admin", "api", "v1", "retention"] => Access::Admin(P::ApplyRetention),
        ["admin", "api", "v1", "permission", "group", ..] => {
            if is(&Method::GET) {
                Access::Admin(P::ViewPermissionGroups)
            } else if is(&Method::DELETE) {
                Access::Admin(P::DeletePermissionGroups)
            } else {
                Access::Admin(P::UpdatePermissionGroups)
            }
        }
        ["v2", ..] => oci_required(method, &segments[1..]),
        _ => Access::Authenticated,
    }
}

/// What an OCI Distribution API request needs: pulls read, pushes upload, deletes delete.
fn oci_required(method: &Method, rest: &[&str]) -> Access {
    let write = method == Method::POST || method == Method::PUT || method == Method::PATCH;
    match rest {
        [.., "blobs", "uploads", _] | [.., "blobs", "uploads"] => Access::All(&[P::UploadFile]),
        _ if method == Method::DELETE => Access::All(&[P::DeleteVm]),
        [.., "manifests", _] if write => Access::All(&[P::PushVm]),
        [.., "manifests", _] | [.., "tags", "list"] | [.., "referrers", _] => {
            Access::All(&[P::PullVm])
        }
        ["_catalog"] => Access::All(&[P::ListVms]),
        [.., "blobs", _] => Access::Any(&[P::DownloadVm, P::DownloadFile]),
        _ => Access::Authenticated,
    }
}

/// The middleware: answers 401 or 403 itself, or lets the request through carrying its
/// [`Identity`]. Without an [`Auth`] in the app data everything is open.
pub async fn guard(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let auth = req.app_data::<web::Data<Auth>>().cloned();
    let need = required(req.method(), req.path());
    let presented = req.headers().contains_key(header::AUTHORIZATION);
    let verdict = match auth {
        None => Ok(Some(Identity::open())),
        Some(_) if need == Access::Public => Ok(None),
        Some(auth) => {
            let header = req
                .headers()
                .get(header::AUTHORIZATION)
                .map(|h| h.to_str().unwrap_or("malformed"));
            // A verified client certificate authenticates a request that carries no
            // other credentials; an Authorization header, when sent, decides.
            let certificate = req
                .app_data::<web::Data<CertPolicy>>()
                .and_then(|policy| client_cert::request_identity(req.request(), ***policy))
                .filter(|_| header.is_none() && auth.config().enabled);
            let authenticated = match certificate {
                Some(cert) => Ok(Identity {
                    user: cert.user,
                    groups: cert.groups,
                    method: AuthMethod::Certificate,
                }),
                None => auth.authenticate(header).await,
            };
            match authenticated {
                Ok(identity) => auth
                    .authorize(&identity, need)
                    .await
                    .map(|()| Some(identity)),
                Err(e) => Err(e),
            }
        }
    };
    match verdict {
        Ok(identity) => {
            if let Some(identity) = identity {
                req.extensions_mut().insert(identity);
            }
            Ok(next.call(req).await?.map_into_boxed_body())
        }
        Err(e) => {
            crate::telemetry::metrics::auth_failure(failure_reason(&e, presented));
            let reply = match req.path().starts_with("/v2") {
                // OCI clients read the spec's error body and a challenge naming the
                // token endpoint.
                true => crate::oci::refusal(req.request(), ApiError::from(e)),
                false => ApiError::from(e).error_response(),
            };
            Ok(req.into_response(reply))
        }
    }
}

/// The metrics label of a refusal, from a fixed set.
fn failure_reason(e: &AuthError, presented: bool) -> &'static str {
    match e {
        AuthError::Unauthenticated if presented => "bad_credentials",
        AuthError::Unauthenticated => "missing",
        AuthError::Forbidden(_) => "forbidden",
        _ => "error",
    }
}

impl FromRequest for Identity {
    type Error = ApiError;
    type Future = std::future::Ready<Result<Identity, ApiError>>;

    /// The caller the middleware let in; a route it did not guard has no caller.
    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        std::future::ready(
            req.extensions()
                .get::<Identity>()
                .cloned()
                .ok_or_else(|| ApiError::from(AuthError::Unauthenticated)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_has_its_permission() {
        let get = Method::GET;
        assert_eq!(required(&get, "/livez"), Access::Public);
        assert_eq!(required(&Method::POST, "/tap/v1/shake"), Access::Public);
        assert_eq!(required(&get, "/"), Access::All(&[P::Index]));
        assert_eq!(
            required(&Method::DELETE, "/registry/vm"),
            Access::All(&[P::DeleteVm])
        );
        assert_eq!(required(&get, "/registry/vm"), Access::All(&[P::ListVms]));
        assert_eq!(
            required(&Method::POST, "/api/v1/push"),
            Access::All(&[P::HeadPushVm, P::PushVm])
        );
        assert_eq!(
            required(&Method::PUT, "/api/v1/push/s/files/k"),
            Access::All(&[P::UploadFile])
        );
        assert_eq!(
            required(&Method::POST, "/api/v1/push/s/commit"),
            Access::All(&[P::PushVm])
        );
        assert_eq!(
            required(&Method::HEAD, "/api/v1/files/k"),
            Access::Any(&[P::DownloadVm, P::DownloadFile])
        );
        assert_eq!(required(&Method::DELETE, "/api/v1/apikey"), Access::Root);
        assert_eq!(
            required(&Method::DELETE, "/admin/api/v1/permission/group/g"),
            Access::Admin(P::DeletePermissionGroups)
        );
        assert_eq!(required(&get, "/nope"), Access::Authenticated);
        assert_eq!(required(&get, "/v2/"), Access::Authenticated);
        assert_eq!(
            required(&Method::PATCH, "/v2/a/b/blobs/uploads/u"),
            Access::All(&[P::UploadFile])
        );
        assert_eq!(
            required(&Method::POST, "/v2/a/blobs/uploads/"),
            Access::All(&[P::UploadFile])
        );
        assert_eq!(
            required(&Method::PUT, "/v2/a/manifests/latest"),
            Access::All(&[P::PushVm])
        );
        assert_eq!(
            required(&get, "/v2/a/manifests/latest"),
            Access::All(&[P::PullVm])
        );
        assert_eq!(required(&get, "/v2/a/tags/list"), Access::All(&[P::PullVm]));
        assert_eq!(
            required(&get, "/v2/a/referrers/sha256:x"),
            Access::All(&[P::PullVm])
        );
        assert_eq!(required(&get, "/v2/_catalog"), Access::All(&[P::ListVms]));
        assert_eq!(
            required(&Method::DELETE, "/v2/a/blobs/sha256:x"),
            Access::All(&[P::DeleteVm])
        );
        assert_eq!(
            required(&Method::HEAD, "/v2/a/blobs/sha256:x"),
            Access::Any(&[P::DownloadVm, P::DownloadFile])
        );
        assert_eq!(
            required(&Method::DELETE, "/v2/a/manifests/sha256:x"),
            Access::All(&[P::DeleteVm])
        );
    }
}
