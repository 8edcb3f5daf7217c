//! Permission groups: `/admin/api/v1/permission[/group[/{group}]]`.

use std::collections::BTreeSet;

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::params::required_json;
use super::{ok, ApiError};
use crate::auth::groups::{self, Group};
use crate::auth::{Auth, AuthError, Permission};

/// `GET /admin/api/v1/permission`: every permission with its description.
pub async fn permissions() -> HttpResponse {
    let all: Vec<_> = Permission::ALL
        .iter()
        .map(|(p, d)| json!({ "name": p.name(), "description": d }))
        .collect();
    ok(all)
}

/// `GET /admin/api/v1/permission/group`: `[{name, permissions}]`.
pub async fn list(auth: web::Data<Auth>) -> Result<HttpResponse, ApiError> {
    Ok(ok(groups::list(auth.meta()).await?))
}

/// `GET /admin/api/v1/permission/group/{group}`.
pub async fn get(auth: web::Data<Auth>, name: web::Path<String>) -> Result<HttpResponse, ApiError> {
    match groups::get(auth.meta(), &name).await? {
        Some(g) => Ok(ok(g)),
        None => Err(AuthError::NotFound(format!("no permission group {:?}", name.as_str())).into()),
    }
}

/// A group's permissions: `{"permissions":[…]}` (a `name` may repeat the path's) or a
/// bare list.
#[derive(Deserialize)]
#[serde(untagged)]
enum GroupBody {
    Object {
        name: Option<String>,
        permissions: Vec<String>,
    },
    List(Vec<String>),
}

impl GroupBody {
    fn into_parts(self) -> (Option<String>, Vec<String>) {
        match self {
            GroupBody::Object { name, permissions } => (name, permissions),
            GroupBody::List(permissions) => (None, permissions),
        }
    }
}

async fn save(auth: &Auth, name: String, permissions: &[String]) -> Result<HttpResponse, ApiError> {
    let permissions: BTreeSet<Permission> = groups::parse_permissions(permissions)?;
    groups::put(
        auth.meta(),
        auth.blobs(),
        &Group { name, permissions },
        false,
    )
    .await?;
    Ok(HttpResponse::Ok().json(json!({ "status": "OK", "message": "" })))
}

/// `POST /admin/api/v1/permission/group {name, permissions}`: create or replace.
pub async fn create(
    auth: web::Data<Auth>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let (name, permissions) = required_json::<GroupBody>(payload).await?.into_parts();
    let name = name.ok_or_else(|| ApiError::bad_request("the group name is required"))?;
    save(&auth, name, &permissions).await
}

/// `PUT|POST /admin/api/v1/permission/group/{group} {permissions}`: create or replace.
pub async fn put(
    auth: web::Data<Auth>,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let (name, permissions) = required_json::<GroupBody>(payload).await?.into_parts();
    if name.as_deref().is_some_and(|n| n != path.as_str()) {
        return Err(ApiError::bad_request(
            "the body's name differs from the group in the path",
        ));
    }
    save(&auth, path.into_inner(), &permissions).await
}

/// `DELETE /admin/api/v1/permission/group/{group}`.
pub async fn delete(
    auth: web::Data<Auth>,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    groups::delete(auth.meta(), auth.blobs(), &name).await?;
    Ok(HttpResponse::Ok().json(json!({ "status": "OK", "message": "" })))
}
