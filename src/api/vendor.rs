//! The vendor's documented endpoints under `/registry`, with its exact JSON shapes.

use std::collections::HashMap;

use actix_web::{web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::listing;
use super::params::{json_body, number, query, required_json};
use super::{ok, ApiError, AppState};
use crate::model::{FileKind, Template, Version};
use crate::registry::templates::{parse_id, ListedTemplate, RevertTarget};
use crate::registry::RegistryError;

/// The vendor shows one template in two shapes: `/registry/vm?id=` (v1) gives every
/// version `"state_files": []` and `"arch": ""` and the template its arch;
/// `/registry/v2/vm?id=` has no `arch` keys and `"state_files": null` when there are none.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    V1,
    V2,
}

/// A version as `GET /registry/vm?id=` and `/registry/v2/vm?id=` show it.
#[derive(Serialize)]
struct VersionView {
    number: u32,
    tag: String,
    config_file: String,
    nvram: String,
    images: Vec<String>,
    state_files: Option<Vec<String>>,
    description: String,
    state_file: String,
    size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    arch: Option<String>,
}

fn version_view(template: &Template, v: &Version, shape: Shape) -> VersionView {
    let state_files = v.names_of(FileKind::State);
    VersionView {
        number: v.number,
        tag: v.tag.clone(),
        config_file: format!("{}.yaml", template.id),
        nvram: v
            .files
            .iter()
            .find(|f| f.kind == FileKind::Nvram)
            .map(|f| f.name.clone())
            .unwrap_or_default(),
        images: v.names_of(FileKind::Image),
        state_file: v
            .config
            .get("state_file")
            .and_then(Value::as_str)
            .map(str::to_string)
            .or_else(|| state_files.first().cloned())
            .unwrap_or_default(),
        state_files: match shape {
            Shape::V2 if state_files.is_empty() => None,
            _ => Some(state_files),
        },
        description: v.description.clone(),
        size: v.size(),
        // The vendor tracks arch per template; its v1 versions always show "".
        arch: (shape == Shape::V1).then(String::new),
    }
}

fn template_view(t: &Template, shape: Shape) -> Value {
    let versions: Vec<VersionView> = t
        .versions
        .iter()
        .map(|v| version_view(t, v, shape))
        .collect();
    match shape {
        Shape::V1 => json!({
            "id": t.id, "name": t.name, "versions": versions, "size": t.size(),
            "arch": t.effective_arch(),
        }),
        Shape::V2 => json!({ "id": t.id, "name": t.name, "versions": versions, "size": t.size() }),
    }
}

fn id_param(req: &HttpRequest) -> Result<Option<uuid::Uuid>, ApiError> {
    match query(req)?.get("id") {
        Some(id) => Ok(Some(parse_id(id)?)),
        None => Ok(None),
    }
}

fn required_id(req: &HttpRequest) -> Result<uuid::Uuid, ApiError> {
    id_param(req)?.ok_or_else(|| ApiError::bad_request("query parameter id is required"))
}

/// One template with `?id=`, else the list (or the page `?limit=&offset=` asks for) with
/// each entry shaped by `row`.
async fn template_or_list(
    state: &AppState,
    req: &HttpRequest,
    shape: Shape,
    row: impl Fn(&ListedTemplate) -> Value,
) -> Result<HttpResponse, ApiError> {
    if let Some(id) = id_param(req)? {
        return Ok(ok(template_view(&state.registry.get(&id).await?, shape)));
    }
    let page = listing::page(&query(req)?, state.registry.limits().max_page)?;
    listing::reply(&state.registry, page, row).await
}

/// `GET /registry/vm`: `[{"<uuid>":"<name>"}]`, or one template with `?id=`.
pub async fn list_v1(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    template_or_list(
        &state,
        &req,
        Shape::V1,
        |t| json!({ t.summary.id.to_string(): t.summary.name }),
    )
    .await
}

/// `GET /registry/v2/vm`: `[{id,name,size,versions}]`, `versions` holding each version's
/// number, tag and size (plus the vendor's newer `arch`, `creation_date`, `last_push`,
/// `last_pull`, and vmreg's `latest_tag` and `version_count`), or one template with `?id=`.
pub async fn list_v2(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    template_or_list(&state, &req, Shape::V2, |t| {
        let s = &t.summary;
        json!({
            "id": s.id, "name": s.name, "size": s.size, "arch": s.arch,
            "creation_date": s.created, "last_push": s.last_push, "last_pull": t.last_pull,
            "latest_tag": s.latest_tag, "version_count": s.versions,
            "versions": s.version_list.as_deref().unwrap_or_default(),
        })
    })
    .await
}

/// `DELETE /registry/vm?id=`: the template and all its tags.
pub async fn delete_template(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let id = required_id(&req)?;
    match state.registry.delete_template(&id).await {
        // An OCI repository listed as a template goes whole, as through `/v2/`.
        Err(RegistryError::NotFound(e)) => match state.registry.oci_repository_of(&id).await? {
            Some(repo) => state.registry.oci_delete_repository(&repo).await?,
            None => return Err(RegistryError::NotFound(e).into()),
        },
        r => r?,
    }
    Ok(ok(Value::Null))
}

/// `GET /registry/vm/info?id=[&tag=|&version=|&number=]`: the version's VM configuration.
pub async fn vm_info(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let q = query(&req)?;
    let id = required_id(&req)?;
    let version = query_version(&q)?;
    let config = state
        .registry
        .vm_info(&id, q.get("tag").map(String::as_str), version)
        .await?;
    Ok(ok(config))
}

/// A version number from the query: the seed's tables name it `version`, its examples
/// `number`; either is taken, `version` first.
fn query_version(q: &HashMap<String, String>) -> Result<Option<u32>, ApiError> {
    match number("version", q.get("version").map(String::as_str))? {
        Some(n) => Ok(Some(n)),
        None => number("number", q.get("number").map(String::as_str)),
    }
}

#[derive(Deserialize, Default)]
struct RevertBody {
    tag: Option<String>,
    version: Option<Value>,
    number: Option<Value>,
    id: Option<String>,
}

fn body_number(name: &str, v: &Option<Value>) -> Result<Option<u32>, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| ApiError::bad_request(format!("{name} must be a non-negative integer"))),
        Some(Value::String(s)) => number(name, Some(s)),
        Some(_) => Err(ApiError::bad_request(format!(
            "{name} must be a non-negative integer"
        ))),
    }
}

/// `DELETE /registry/revert?id=`: delete the latest version, or every version after a
/// tag or number given in the query or a JSON body.
pub async fn revert(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let q = query(&req)?;
    let body: RevertBody = json_body(payload).await?.unwrap_or_default();
    let id = match (q.get("id"), &body.id) {
        (Some(id), _) | (None, Some(id)) => parse_id(id)?,
        (None, None) => return Err(ApiError::bad_request("query parameter id is required")),
    };
    let tag = q.get("tag").cloned().or(body.tag);
    let num = match query_version(&q)? {
        Some(n) => Some(n),
        None => body_number("version", &body.version)?.or(body_number("number", &body.number)?),
    };
    let target = match (tag, num) {
        (Some(tag), _) => RevertTarget::Tag(tag),
        (None, Some(n)) => RevertTarget::Number(n),
        (None, None) => RevertTarget::Latest,
    };
    state.registry.revert(&id, target).await?;
    Ok(ok(Value::Null))
}

#[derive(Deserialize)]
struct ArchBody {
    id: String,
    arch: String,
}

/// `PUT /registry/vm/arch` with `{"id","arch"}`.
pub async fn set_arch(
    state: web::Data<AppState>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body: ArchBody = required_json(payload).await?;
    let id = parse_id(&body.id)?;
    state.registry.set_arch(&id, &body.arch).await?;
    Ok(ok(Value::Null))
}
