//! The vendor's documented endpoints under `/registry`, with its exact JSON shapes.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::params::{json_body, number, query, required_json};
use super::{ok, ApiError, AppState};
use crate::model::{FileKind, Template, Version};
use crate::registry::templates::{parse_id, ListedTemplate, RevertTarget};

/// A version as `GET /registry/vm?id=` shows it.
#[derive(Serialize)]
struct VersionView {
    number: u32,
    tag: String,
    config_file: String,
    nvram: String,
    images: Vec<String>,
    state_files: Vec<String>,
    description: String,
    state_file: String,
    size: u64,
    arch: String,
}

fn version_view(template: &Template, v: &Version) -> VersionView {
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
        state_files,
        description: v.description.clone(),
        size: v.size(),
        // The vendor tracks arch per template; its versions always show "".
        arch: String::new(),
    }
}

fn template_view(t: &Template) -> Value {
    let versions: Vec<VersionView> = t.versions.iter().map(|v| version_view(t, v)).collect();
    json!({ "id": t.id, "name": t.name, "versions": versions, "size": t.size(), "arch": t.arch })
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

/// One template with `?id=`, else the list with each entry shaped by `row`.
async fn template_or_list(
    state: &AppState,
    req: &HttpRequest,
    row: impl Fn(&ListedTemplate) -> Value,
) -> Result<HttpResponse, ApiError> {
    if let Some(id) = id_param(req)? {
        return Ok(ok(template_view(&state.registry.get(&id).await?)));
    }
    let list = state.registry.list().await?;
    Ok(ok(list.iter().map(row).collect::<Vec<Value>>()))
}

/// `GET /registry/vm`: `[{"<uuid>":"<name>"}]`, or one template with `?id=`.
pub async fn list_v1(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    template_or_list(
        &state,
        &req,
        |t| json!({ t.summary.id.to_string(): t.summary.name }),
    )
    .await
}

/// `GET /registry/v2/vm`: `[{id,name,size,arch,creation_date,last_push,last_pull}]`
/// (plus `latest_tag` and `versions`), or one template with `?id=`.
pub async fn list_v2(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    template_or_list(&state, &req, |t| {
        let s = &t.summary;
        json!({
            "id": s.id, "name": s.name, "size": s.size, "arch": s.arch,
            "creation_date": s.created, "last_push": s.last_push, "last_pull": t.last_pull,
            "latest_tag": s.latest_tag, "versions": s.versions,
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
    state.registry.delete_template(&id).await?;
    Ok(ok(Value::Null))
}

/// `GET /registry/vm/info?id=[&tag=|&version=]`: the version's VM configuration.
pub async fn vm_info(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let q = query(&req)?;
    let id = required_id(&req)?;
    let version = number("version", q.get("version").map(String::as_str))?;
    let config = state
        .registry
        .vm_info(&id, q.get("tag").map(String::as_str), version)
        .await?;
    Ok(ok(config))
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
    let num = match number("version", q.get("version").map(String::as_str))? {
        Some(n) => Some(n),
        None => match number("number", q.get("number").map(String::as_str))? {
            Some(n) => Some(n),
            None => body_number("version", &body.version)?.or(body_number("number", &body.number)?),
        },
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
