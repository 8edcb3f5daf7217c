//! Status, probes, disk, the HTML index and the OpenAPI document.

use actix_web::{web, HttpResponse};
use serde_json::json;

use super::{ok, ApiError, AppState};
use crate::units::human_size;

/// The vendor registry release whose API vmreg serves: the seed's example status reports
/// `1.13.0-24e848a5`, and its v2 endpoints date from 1.7.0, which the vendor's clients
/// check for. `version` carries it (with vmreg's own version as the build suffix, as the
/// vendor puts its commit there); `vmreg_version` carries vmreg's release alone.
pub const VENDOR_API_VERSION: &str = "1.13.0";

/// `GET /registry/status`.
pub async fn status(state: web::Data<AppState>) -> HttpResponse {
    let vmreg = env!("CARGO_PKG_VERSION");
    ok(json!({
        "status": "Running",
        "version": format!("{VENDOR_API_VERSION}-vmreg.{vmreg}"),
        "vmreg_version": vmreg,
        "instance_id": state.instance_id,
    }))
}

/// `GET /livez`: the process answers.
pub async fn livez() -> HttpResponse {
    ok("alive")
}

/// `GET /readyz`: ready only when both stores answer.
pub async fn readyz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    use crate::registry::RegistryError;
    let registry = &state.registry;
    let missing = match registry.ready().await {
        Ok(()) => return Ok(ok("ready")),
        Err(RegistryError::Meta(e)) => {
            format!(
                "metadata store {} unreachable ({e})",
                registry.meta().describe()
            )
        }
        Err(RegistryError::Store(e)) => {
            format!(
                "blob store {} unreachable ({e})",
                registry.blobs().describe()
            )
        }
        Err(e) => e.to_string(),
    };
    tracing::warn!("not ready: {missing}");
    Err(ApiError::unavailable(format!(
        "not ready: {missing}; retrying"
    )))
}

/// `GET /registry/disk`: free and total bytes of the storage.
pub async fn disk(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let space = match state
        .registry
        .blobs()
        .space()
        .await
        .map_err(crate::registry::RegistryError::from)?
    {
        Some(space) => space,
        None => {
            let dir = state.data_dir.clone();
            let probe = if dir.exists() {
                dir
            } else {
                std::path::PathBuf::from(".")
            };
            crate::store::fs::disk_space(&probe).map_err(crate::registry::RegistryError::from)?
        }
    };
    Ok(ok(space))
}

/// `GET /openapi.json`: the whole API, including the transfer protocol.
pub async fn openapi() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(OPENAPI)
}

/// The OpenAPI document served at `/openapi.json`.
pub const OPENAPI: &str = include_str!("openapi.json");

/// `GET /`: a small HTML page listing the templates, their tags and sizes: the first
/// `--max-page` by name, each row made from the listing summary as it is read, so the
/// page stays quick and small however many templates there are.
pub async fn index(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let mut rows: Vec<(String, String)> = Vec::new();
    let mut add = |listed: crate::registry::templates::ListedTemplate| {
        let row = index_row(&listed.summary);
        rows.push((listed.summary.name, row));
    };
    state.registry.scan(&mut add).await?;
    // OCI repositories are listed as templates too (see registry::oci::bridge).
    state.registry.oci_scan(&mut add).await?;
    rows.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let total = rows.len();
    let shown = state.registry.limits().max_page.min(total);
    let more = match total - shown {
        0 => String::new(),
        n => format!(
            "<p>The first {shown} of {total} templates by name; {n} more are in \
             <a href=\"/registry/v2/vm\">/registry/v2/vm</a>.</p>"
        ),
    };
    let rows: String = rows.into_iter().take(shown).map(|(_, row)| row).collect();
    Ok(HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(index_page(&rows, &more)))
}

/// The index page's one style sheet, inline; the Content-Security-Policy allows it by its
/// hash (see [`super::security_headers`]) and nothing else.
pub const INDEX_STYLE: &str = "body{font-family:sans-serif;margin:2em}td,th{padding:.3em .8em;text-align:left;border-bottom:1px solid #ddd}";

/// The index page around its table rows and the note on templates not shown.
pub(super) fn index_page(rows: &str, more: &str) -> String {
    format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>vmreg</title>\
<style>{INDEX_STYLE}</style></head>\
<body><h1>vmreg</h1><p>VM templates in this registry (API: <a href=\"/openapi.json\">/openapi.json</a>).</p>\
<table><tr><th>Template</th><th>ID</th><th>Arch</th><th>Size</th><th>Tags</th></tr>\n{rows}</table>{more}</body></html>\n"
    )
}

/// One template's row of the index page.
fn index_row(summary: &crate::model::TemplateSummary) -> String {
    let tags = summary
        .version_list
        .iter()
        .flatten()
        .map(|v| format!("{} ({})", escape(&v.tag), human_size(v.size)))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "<tr><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
        escape(&summary.name),
        summary.id,
        escape(&summary.arch),
        human_size(summary.size),
        tags
    )
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_html() {
        assert_eq!(
            escape("<a href=\"x\">&"),
            "&lt;a href=&quot;x&quot;&gt;&amp;"
        );
    }

    #[test]
    fn openapi_is_valid_json_with_paths() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).unwrap();
        assert!(doc["paths"].as_object().unwrap().len() >= 15);
    }
}
