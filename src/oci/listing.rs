//! `GET /v2/_catalog` and `GET /v2/<name>/tags/list`, `n` at a time after `last`, with a
//! `Link` to the next page when there is one.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};

use super::{query, OciApiError};
use crate::api::AppState;
use crate::registry::oci::{page_size, Page, MAX_PAGE};

/// The page a request asks for: its `n` (a number, or 400) and `last`.
fn asked(req: &HttpRequest) -> Result<(Option<usize>, Option<String>), OciApiError> {
    let q = query(req);
    let n = page_size(q.get("n").map(String::as_str))?;
    Ok((n, q.get("last").cloned()))
}

/// A 200 with `body`, linking on to the page after `page` at `path`.
fn reply(path: &str, n: Option<usize>, page: &Page, body: serde_json::Value) -> HttpResponse {
    let mut reply = HttpResponse::Ok();
    reply.insert_header(super::base::API_VERSION);
    if let (true, Some(last)) = (page.more, page.items.last()) {
        let n = n.unwrap_or(MAX_PAGE).min(MAX_PAGE);
        let last = percent_encoding::utf8_percent_encode(last, percent_encoding::NON_ALPHANUMERIC);
        reply.insert_header((
            header::LINK,
            format!("<{path}?n={n}&last={last}>; rel=\"next\""),
        ));
    }
    reply.json(body)
}

/// `GET /v2/<name>/tags/list`: the repository's tags, sorted.
pub async fn tags(
    state: web::Data<AppState>,
    req: HttpRequest,
    name: web::Path<String>,
) -> Result<HttpResponse, OciApiError> {
    let (n, last) = asked(&req)?;
    let page = state.registry.oci_tags(&name, n, last.as_deref()).await?;
    let body = serde_json::json!({ "name": name.as_str(), "tags": page.items });
    let path = format!("{}/v2/{name}/tags/list", state.link_base());
    Ok(reply(&path, n, &page, body))
}

/// `GET /v2/_catalog`: the repository names, sorted.
pub async fn catalog(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, OciApiError> {
    let (n, last) = asked(&req)?;
    let page = state.registry.oci_catalog(n, last.as_deref()).await?;
    let body = serde_json::json!({ "repositories": page.items });
    let path = format!("{}/v2/_catalog", state.link_base());
    Ok(reply(&path, n, &page, body))
}
