//! Where every request is authenticated and authorized, before any handler runs: the
//! middleware each route of [`super::routes`] is wrapped in, with the permission the table
//! declares for it, and the [`Identity`] extractor handlers use to learn who is calling.
//!
//! Authentication happens once, when a request starts: a session that expires while a
//! long upload or download streams does not cut it.

use std::rc::Rc;

use actix_web::body::BoxBody;
use actix_web::dev::{Payload, Service, ServiceRequest, ServiceResponse, Transform};
use actix_web::http::header;
use actix_web::{web, FromRequest, HttpMessage, HttpRequest, ResponseError};
use futures_util::future::LocalBoxFuture;

use super::client_cert::{self, CertPolicy};
use super::routes::Front;
use super::ApiError;
use crate::auth::{Access, Auth, AuthError, AuthMethod, Identity};

/// The route a request was matched to, kept in its extensions for the metrics and the
/// span that name it.
#[derive(Clone, Copy, Debug)]
pub struct MatchedRoute(pub &'static str);

/// The access check of one route: the middleware answers 401 or 403 itself, or lets the
/// request through carrying its [`Identity`]. `front` shapes a refusal (`None`: from the
/// path, for requests no route matched); `route` is the matched path template. Without
/// an [`Auth`] in the app data everything is open.
pub fn authorize(need: Access, front: Option<Front>, route: Option<&'static str>) -> Authorize {
    Authorize(Rule { need, front, route })
}

/// What [`authorize`] checks.
#[derive(Clone, Copy, Debug)]
struct Rule {
    need: Access,
    front: Option<Front>,
    route: Option<&'static str>,
}

/// The middleware [`authorize`] makes.
pub struct Authorize(Rule);

impl<S> Transform<S, ServiceRequest> for Authorize
where
    S: Service<ServiceRequest, Response = ServiceResponse<BoxBody>, Error = actix_web::Error>
        + 'static,
{
    type Response = ServiceResponse<BoxBody>;
    type Error = actix_web::Error;
    type Transform = Authorized<S>;
    type InitError = ();
    type Future = std::future::Ready<Result<Authorized<S>, ()>>;

    fn new_transform(&self, service: S) -> Self::Future {
        std::future::ready(Ok(Authorized {
            service: Rc::new(service),
            rule: self.0,
        }))
    }
}

/// A route's service behind its access check.
pub struct Authorized<S> {
    service: Rc<S>,
    rule: Rule,
}

impl<S> Service<ServiceRequest> for Authorized<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<BoxBody>, Error = actix_web::Error>
        + 'static,
{
    type Response = ServiceResponse<BoxBody>;
    type Error = actix_web::Error;
    type Future = LocalBoxFuture<'static, Result<ServiceResponse<BoxBody>, actix_web::Error>>;

    actix_web::dev::forward_ready!(service);

    fn call(&self, req: ServiceRequest) -> Self::Future {
        Box::pin(guard(req, self.service.clone(), self.rule))
    }
}

async fn guard<S>(
    req: ServiceRequest,
    next: Rc<S>,
    rule: Rule,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error>
where
    S: Service<ServiceRequest, Response = ServiceResponse<BoxBody>, Error = actix_web::Error>,
{
    let Rule { need, front, route } = rule;
    if let Some(route) = route {
        req.extensions_mut().insert(MatchedRoute(route));
        super::observe::name_route(&req, route);
    }
    let auth = req.app_data::<web::Data<Auth>>().cloned();
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
            next.call(req).await
        }
        Err(e) => {
            crate::telemetry::metrics::auth_failure(failure_reason(&e, presented));
            let front = front.unwrap_or_else(|| super::routes::front_of_unmatched(req.path()));
            let reply = match front {
                // OCI clients read the spec's error body and a challenge naming the
                // token endpoint.
                Front::Oci => crate::oci::refusal(req.request(), ApiError::from(e)),
                Front::Vendor => ApiError::from(e).error_response(),
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
