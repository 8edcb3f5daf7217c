//! Logging in the way OCI clients do: a refused request gets the spec's error body and a
//! `WWW-Authenticate: Bearer realm=…,service=…,scope=…` challenge naming the token
//! endpoint, `GET /v2/token`, which trades the caller's credentials (Basic `root:<token>`,
//! or an API key's id and a session credential of it) for a Bearer token: a session of
//! the caller. Every request with the token is then authorized like any other, by the
//! caller's permissions, so a token's scope grants nothing by itself.

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse, ResponseError};

use crate::api::access::MatchedRoute;
use crate::api::ApiError;
use crate::auth::{Auth, Identity};

/// The token endpoint's path.
pub const TOKEN_PATH: &str = "/v2/token";

/// The service name the challenge gives and the token endpoint is asked for.
pub const SERVICE: &str = "vmreg";

/// The `scope` of a request as the spec's token flow names it, from the route the router
/// matched: `repository:<name>:<actions>`, or `registry:catalog:*`.
fn scope(method: &actix_web::http::Method, route: &str, name: Option<&str>) -> Option<String> {
    if route == "/v2/_catalog" {
        return Some("registry:catalog:*".into());
    }
    let name = name?;
    let actions = match method.as_str() {
        "GET" | "HEAD" => "pull",
        "DELETE" => "delete",
        _ => "pull,push",
    };
    Some(format!("repository:{name}:{actions}"))
}

/// The reply to a request the guard refused: 401 `UNAUTHORIZED` with the challenge, 403
/// `DENIED`, or the guard's status with `UNAVAILABLE`.
pub fn refusal(req: &HttpRequest, refused: ApiError) -> HttpResponse {
    let status = refused.status_code();
    let code = match status {
        StatusCode::UNAUTHORIZED => "UNAUTHORIZED",
        StatusCode::FORBIDDEN => "DENIED",
        _ => "UNAVAILABLE",
    };
    let mut reply = HttpResponse::build(status);
    reply.insert_header(super::base::API_VERSION);
    if status == StatusCode::UNAUTHORIZED {
        reply.insert_header((header::WWW_AUTHENTICATE, challenge(req)));
    }
    reply.json(serde_json::json!({
        "errors": [{ "code": code, "message": refused.message(), "detail": null }]
    }))
}

/// `Bearer realm="<this server>/v2/token",service="vmreg"[,scope="…"]`, the server being
/// `--public-url` or else the request's scheme and host; the token endpoint itself
/// challenges for `Basic`, the credentials it takes.
fn challenge(req: &HttpRequest) -> String {
    let route = req.extensions().get::<MatchedRoute>().map(|m| m.0);
    if route == Some(TOKEN_PATH) {
        return format!("Basic realm=\"{SERVICE}\"");
    }
    let public = req
        .app_data::<actix_web::web::Data<crate::api::AppState>>()
        .and_then(|s| s.public_url.clone());
    let base = public.unwrap_or_else(|| {
        let info = req.connection_info();
        format!("{}://{}", info.scheme(), info.host())
    });
    let mut challenge = format!("Bearer realm=\"{base}{TOKEN_PATH}\",service=\"{SERVICE}\"");
    let name = req.match_info().get("name").map(|n| {
        percent_encoding::percent_decode_str(n)
            .decode_utf8_lossy()
            .into_owned()
    });
    if let Some(scope) = route.and_then(|r| scope(req.method(), r, name.as_deref())) {
        challenge.push_str(&format!(",scope=\"{scope}\""));
    }
    challenge
}

/// `GET /v2/token`: `{token, access_token, expires_in, issued_at}` for the caller the
/// guard let in. With authentication off any token will do; an empty one is given.
pub async fn token(
    identity: Identity,
    auth: Option<web::Data<Auth>>,
) -> Result<HttpResponse, ApiError> {
    let issued = match auth {
        Some(auth) => auth.oci_token(&identity).await?,
        None => None,
    };
    let (token, expires_in) = issued.unwrap_or_else(|| (String::new(), 3600));
    Ok(HttpResponse::Ok()
        .insert_header(super::base::API_VERSION)
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(serde_json::json!({
            "token": token,
            "access_token": token,
            "expires_in": expires_in,
            "issued_at": crate::auth::rfc3339(crate::auth::now_secs()),
        })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::Method;

    #[test]
    fn scopes_name_the_repository_and_the_actions() {
        let manifests = "/v2/{name:.+}/manifests/{reference}";
        assert_eq!(
            scope(&Method::GET, manifests, Some("a/b")).as_deref(),
            Some("repository:a/b:pull")
        );
        assert_eq!(
            scope(
                &Method::PATCH,
                "/v2/{name:.+}/blobs/uploads/{id}",
                Some("a")
            )
            .as_deref(),
            Some("repository:a:pull,push")
        );
        assert_eq!(
            scope(&Method::DELETE, "/v2/{name:.+}/blobs/{digest}", Some("a")).as_deref(),
            Some("repository:a:delete")
        );
        assert_eq!(
            scope(&Method::GET, "/v2/_catalog", None).as_deref(),
            Some("registry:catalog:*")
        );
        assert_eq!(scope(&Method::GET, "/v2/", None), None);
    }
}
