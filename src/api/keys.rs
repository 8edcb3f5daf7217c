//! API keys (`/v1/apikey`, also `/api/v1/apikey`) and the TAP handshake (`/tap/v1`), in
//! the vendor's exact shapes.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::params::{json_body, query, required_json};
use super::{ok, ApiError};
use crate::auth::apikeys::{self, CreateKey, UpdateKey};
use crate::auth::{tap, Auth, AuthError};

/// `{"status":"OK","message":""}`: the vendor's reply to PUT and DELETE, with no body.
fn done() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "OK", "message": "" }))
}

/// `GET /v1/apikey[?id=]`: `[{id, groups, expiration, created}]`.
pub async fn list(auth: web::Data<Auth>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    auth.require_api_keys()?;
    let views = match query(&req)?.get("id") {
        Some(id) => match apikeys::get(auth.meta(), id).await? {
            Some(key) => vec![key.view()],
            None => return Err(AuthError::NotFound(format!("no API key {id:?}")).into()),
        },
        None => apikeys::list(auth.meta())
            .await?
            .iter()
            .map(apikeys::ApiKey::view)
            .collect(),
    };
    Ok(ok(views))
}

/// `POST /v1/apikey {id, ttl, groups, publicKey?}`: the body is the generated private key
/// (base64 PKCS#1 DER), or `""` when the caller gave the public key.
pub async fn create(
    auth: web::Data<Auth>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    auth.require_api_keys()?;
    let req: CreateKey = required_json(payload).await?;
    let id = req.id.clone();
    let private = apikeys::create(auth.meta(), auth.blobs(), req).await?;
    tracing::info!(key = %id, generated = private.is_some(), "API key created");
    Ok(ok(private.unwrap_or_default()))
}

/// `PUT /v1/apikey {id, groups?, ttl?}`.
pub async fn update(
    auth: web::Data<Auth>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    auth.require_api_keys()?;
    let req: UpdateKey = required_json(payload).await?;
    let id = req.id.clone();
    apikeys::update(auth.meta(), auth.blobs(), req).await?;
    tracing::info!(key = %id, "API key updated");
    Ok(done())
}

#[derive(Deserialize)]
struct IdBody {
    id: String,
}

/// `DELETE /v1/apikey {"id"}` (or `?id=`): the key and its sessions end.
pub async fn delete(
    auth: web::Data<Auth>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    auth.require_api_keys()?;
    let body: Option<IdBody> = json_body(payload).await?;
    let id = match (body, query(&req)?.remove("id")) {
        (Some(b), _) => b.id,
        (None, Some(id)) => id,
        (None, None) => return Err(ApiError::bad_request("the key id is required")),
    };
    apikeys::delete(auth.meta(), auth.blobs(), &id).await?;
    tracing::info!(key = %id, "API key deleted");
    Ok(done())
}

/// `POST /tap/v1/hand {"id"}`: the plain-text body is base64 of the encrypted secret.
pub async fn hand(auth: web::Data<Auth>, payload: web::Payload) -> Result<HttpResponse, ApiError> {
    auth.require_api_keys()?;
    let body: IdBody = required_json(payload).await?;
    let sealed = tap::hand(auth.meta(), &body.id).await?;
    Ok(HttpResponse::Ok()
        .content_type("text/plain; charset=utf-8")
        .body(sealed))
}

#[derive(Deserialize)]
struct ShakeBody {
    id: String,
    secret: String,
}

/// `POST /tap/v1/shake {"id","secret"}`: `{"id", "data": {userName, token, sessionId}}`.
pub async fn shake(auth: web::Data<Auth>, payload: web::Payload) -> Result<HttpResponse, ApiError> {
    auth.require_api_keys()?;
    let body: ShakeBody = required_json(payload).await?;
    let data = auth.shake(&body.id, &body.secret).await?;
    tracing::info!(key = %body.id, session = %data.session_id, "API key session opened");
    Ok(HttpResponse::Ok().json(json!({
        "status": "OK", "message": "", "id": body.id, "data": data,
    })))
}
