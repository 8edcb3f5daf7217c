//! Logging in the way OCI clients do: a refused request gets the spec's error body and a
//! `WWW-Authenticate: Bearer realm=…,service=…,scope=…` challenge naming the token
//! endpoint, `GET /v2/token`, which trades the caller's credentials (Basic `root:<token>`,
//! or an API key's id and a session credential of it) for a Bearer token: a session of
//! the caller. Every request with the token is then authorized like any other, by the
//! caller's permissions, so a token's scope grants nothing by itself.

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};

use crate::api::ApiError;
use crate::auth::{Auth, Identity};

/// The token endpoint's path.
pub const TOKEN_PATH: &str = "/v2/token";

/// The service name the challenge gives and the token endpoint is asked for.
pub const SERVICE: &str = "vmreg";

/// The `scope` of a request as the spec's token flow names it:
/// `repository:<name>:<actions>`, or `registry:catalog:*`.
fn scope(method: &actix_web::http::Method, path: &str) -> Option<String> {
    let rest = path.strip_prefix("/v2/")?;
    if rest == "_catalog" {
        return Some("registry:catalog:*".into());
    }
    let segments: Vec<&str> = rest.split('/').collect();
    let end = segments
        .iter()
        .position(|s| matches!(*s, "blobs" | "manifests" | "tags" | "referrers"))?;
    let name = segments[..end].join("/");
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
    if req.path() == TOKEN_PATH {
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
    if let Some(scope) = scope(req.method(), req.path()) {
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
        let s = |m: &Method, p: &str| scope(m, p);
        assert_eq!(
            s(&Method::GET, "/v2/a/b/manifests/latest").as_deref(),
            Some("repository:a/b:pull")
        );
        assert_eq!(
            s(&Method::PATCH, "/v2/a/blobs/uploads/x").as_deref(),
            Some("repository:a:pull,push")
        );
        assert_eq!(
            s(&Method::DELETE, "/v2/a/blobs/sha256:x").as_deref(),
            Some("repository:a:delete")
        );
        assert_eq!(
            s(&Method::GET, "/v2/_catalog").as_deref(),
            Some("registry:catalog:*")
        );
        assert_eq!(s(&Method::GET, "/v2/"), None);
    }
}
