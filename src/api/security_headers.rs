//! Two headers on every response, whoever answers it (a handler, an access refusal, a
//! limit, the 404 and 405 defaults): `X-Content-Type-Options: nosniff`, so a browser
//! never guesses HTML in stored bytes served as something else, and a
//! `Content-Security-Policy` that allows nothing but the index page's own style sheet.
//! Manifests and files are pushed by clients and served from the origin whose Basic
//! realm browsers sign in to; with these a pushed document cannot run a script there,
//! submit a form, or be framed.

use std::sync::OnceLock;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{Service, ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderMap, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use futures_util::future::LocalBoxFuture;

/// The policy: nothing may load or run, but the index page's inline style, named by its
/// hash; `sandbox` gives any document served an opaque origin of its own, so even a
/// browser that ignored the rest would not let it act as this origin.
pub fn content_security_policy() -> &'static HeaderValue {
    static POLICY: OnceLock<HeaderValue> = OnceLock::new();
    POLICY.get_or_init(|| {
        use base64::Engine;
        let style =
            ring::digest::digest(&ring::digest::SHA256, super::health::INDEX_STYLE.as_bytes());
        let style = base64::engine::general_purpose::STANDARD.encode(style.as_ref());
        let policy = format!(
            "default-src 'none'; style-src 'sha256-{style}'; base-uri 'none'; \
             form-action 'none'; frame-ancestors 'none'; sandbox"
        );
        HeaderValue::from_str(&policy)
            .unwrap_or_else(|_| HeaderValue::from_static("default-src 'none'; sandbox"))
    })
}

/// Puts both headers in `headers`, replacing any there.
fn secure(headers: &mut HeaderMap) {
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        content_security_policy().clone(),
    );
}

/// The middleware: adds the headers to the response of every request.
pub fn add<S, B>(
    req: ServiceRequest,
    srv: &S,
) -> LocalBoxFuture<'static, Result<ServiceResponse<BoxBody>, actix_web::Error>>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error>,
    S::Future: 'static,
    B: MessageBody + 'static,
{
    let fut = srv.call(req);
    Box::pin(async move {
        match fut.await {
            Ok(res) => {
                let mut res = res.map_into_boxed_body();
                secure(res.headers_mut());
                Ok(res)
            }
            // The server renders an error no layer answered; it gets the headers too. (The
            // request cannot be kept to answer it here: the router needs it unshared.)
            Err(e) => Err(Secured(e).into()),
        }
    })
}

/// An error whose reply carries the headers.
#[derive(Debug)]
struct Secured(actix_web::Error);

impl std::fmt::Display for Secured {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl ResponseError for Secured {
    fn status_code(&self) -> StatusCode {
        self.0.as_response_error().status_code()
    }

    fn error_response(&self) -> HttpResponse {
        let mut reply = self.0.error_response();
        secure(reply.headers_mut());
        reply
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::{call_service, init_service, try_call_service, TestRequest};
    use actix_web::{web, App};

    #[test]
    fn the_policy_allows_only_the_index_style() {
        let policy = content_security_policy().to_str().unwrap();
        assert!(policy.starts_with("default-src 'none';"), "{policy}");
        for directive in ["frame-ancestors 'none'", "form-action 'none'", "sandbox"] {
            assert!(policy.contains(directive), "{policy}");
        }
        assert!(!policy.contains("unsafe"), "{policy}");
        // The hash a browser computes of the page's one <style> element.
        let page = super::super::health::index_page("", "");
        let style = page
            .split_once("<style>")
            .and_then(|(_, rest)| rest.split_once("</style>"))
            .map(|(style, _)| style)
            .expect("the index page has a style element");
        use base64::Engine;
        let hash = base64::engine::general_purpose::STANDARD.encode(ring::digest::digest(
            &ring::digest::SHA256,
            style.as_bytes(),
        ));
        assert!(
            policy.contains(&format!("style-src 'sha256-{hash}'")),
            "{policy}"
        );
        assert!(
            !page.contains("<script") && !page.contains(" style="),
            "{page}"
        );
    }

    #[actix_web::test]
    async fn replies_and_unanswered_errors_carry_both_headers() {
        let app = init_service(
            App::new()
                .route("/ok", web::get().to(|| async { "x" }))
                // A layer that fails instead of answering, inside the headers' layer.
                .wrap_fn(|req, srv| {
                    let failing = req.path() == "/err";
                    let fut = srv.call(req);
                    async move {
                        match failing {
                            true => Err(actix_web::error::ErrorBadGateway("no")),
                            false => fut.await,
                        }
                    }
                })
                .wrap_fn(add),
        )
        .await;
        let nosniff = HeaderValue::from_static("nosniff");
        for path in ["/ok", "/missing"] {
            let res = call_service(&app, TestRequest::get().uri(path).to_request()).await;
            let h = res.headers();
            assert_eq!(
                h.get(header::X_CONTENT_TYPE_OPTIONS),
                Some(&nosniff),
                "{path}"
            );
            assert_eq!(
                h.get(header::CONTENT_SECURITY_POLICY),
                Some(content_security_policy()),
                "{path}"
            );
        }
        let err = try_call_service(&app, TestRequest::get().uri("/err").to_request())
            .await
            .expect_err("the error is left to the server");
        let reply = err.error_response();
        assert_eq!(reply.status(), StatusCode::BAD_GATEWAY);
        let h = reply.headers();
        assert_eq!(h.get(header::X_CONTENT_TYPE_OPTIONS), Some(&nosniff));
        assert!(h.contains_key(header::CONTENT_SECURITY_POLICY));
    }
}
