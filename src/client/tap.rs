//! The TAP handshake of an API key: `POST /tap/v1/hand {"id"}` answers a random secret
//! encrypted to the key's public key; `POST /tap/v1/shake {"id","secret"}` with the
//! decrypted secret answers the session (`userName`, `token`, `sessionId`), which later
//! requests carry as `Authorization: Bearer base64(JSON(session))`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use reqwest::header::HeaderValue;
use reqwest::{Client, StatusCode};
use serde_json::Value;

use super::error::{ClientError, ClientResult};
use super::secret::{base64_decode, PrivateKey, Secret};

/// How long each handshake request may take.
const TIMEOUT: Duration = Duration::from_secs(60);

/// A session obtained by a handshake.
#[derive(Debug)]
pub struct Session {
    /// The `Authorization` header value (marked sensitive).
    pub header: HeaderValue,
    /// How long the session lasts from the handshake on, when the token says.
    pub lifetime: Option<Duration>,
}

/// Runs the handshake of key `id` against the registry at `base`.
pub async fn handshake(
    http: &Client,
    base: &str,
    id: &str,
    key: &PrivateKey,
) -> ClientResult<Session> {
    let refused = |detail: &str| {
        ClientError::Auth(format!(
            "the registry at {base} refused API key {id:?}: {detail}"
        ))
    };
    let hand = post(http, base, "/tap/v1/hand", serde_json::json!({ "id": id })).await?;
    let sealed = match &hand {
        Value::String(s) => s.as_str(),
        _ => return Err(refused("its handshake reply holds no secret")),
    };
    let ciphertext = base64_decode(sealed.trim())
        .ok_or_else(|| refused("its handshake secret is not base64"))?;
    let plain = key.decrypt_oaep(&ciphertext).ok_or_else(|| {
        refused(
            "its handshake secret does not decrypt with this private key (a key of another id?)",
        )
    })?;
    let secret = Secret::new(match String::from_utf8(plain) {
        Ok(text) => text,
        // A binary secret travels as base64, the only way it fits a JSON string.
        Err(e) => base64::engine::general_purpose::STANDARD.encode(e.into_bytes()),
    });
    let shake = post(
        http,
        base,
        "/tap/v1/shake",
        serde_json::json!({ "id": id, "secret": secret.expose() }),
    )
    .await?;
    // The session is the reply's `data`; tolerate it one level up as well.
    let data = shake
        .get("data")
        .filter(|d| d.is_object())
        .or(Some(&shake).filter(|s| s.get("token").is_some()))
        .ok_or_else(|| refused("its handshake reply holds no session"))?;
    let token = data
        .get("token")
        .and_then(Value::as_str)
        .ok_or_else(|| refused("its session has no token"))?;
    let lifetime = token_lifetime(token, SystemTime::now());
    let json = serde_json::to_vec(data).map_err(|e| refused(&e.to_string()))?;
    let encoded = base64::engine::general_purpose::STANDARD.encode(json);
    let mut header = HeaderValue::from_str(&format!("Bearer {encoded}"))
        .map_err(|_| refused("its session cannot travel in a header"))?;
    header.set_sensitive(true);
    Ok(Session { header, lifetime })
}

/// Posts a handshake step and returns the envelope's body.
async fn post(http: &Client, base: &str, path: &str, body: Value) -> ClientResult<Value> {
    let id = body.get("id").and_then(Value::as_str).unwrap_or_default();
    let resp = http
        .post(format!("{base}{path}"))
        .json(&body)
        .timeout(TIMEOUT)
        .send()
        .await
        .map_err(|e| ClientError::network(&format!("cannot reach {base}"), &e))?;
    let status = resp.status();
    let text = resp
        .text()
        .await
        .map_err(|e| ClientError::network("reading the registry's reply", &e))?;
    let reply: Option<Value> = serde_json::from_str(&text).ok();
    let message = reply
        .as_ref()
        .and_then(|r| r.get("message"))
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty())
        .map(str::to_string)
        .unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_string());
    if status == StatusCode::NOT_FOUND && path.ends_with("/hand") && reply.is_none() {
        return Err(ClientError::Auth(format!(
            "the registry at {base} does not offer API keys (no {path})"
        )));
    }
    if status.is_server_error() {
        return Err(ClientError::Registry {
            status: status.as_u16(),
            message,
        });
    }
    let ok = status.is_success()
        && reply
            .as_ref()
            .and_then(|r| r.get("status"))
            .and_then(Value::as_str)
            .map_or(true, |s| s == "OK");
    if !ok {
        return Err(ClientError::Auth(format!(
            "the registry at {base} refused API key {id:?} (HTTP {}): {message}",
            status.as_u16()
        )));
    }
    Ok(unwrap_reply(reply, &text))
}

/// The payload of a handshake reply, in any of the shapes registries give it: the
/// envelope's `body`, the reply object itself (`{"status","id","data"}`), a JSON string,
/// or a bare text body.
fn unwrap_reply(reply: Option<Value>, text: &str) -> Value {
    match reply {
        Some(Value::Object(mut map)) => match map.remove("body") {
            Some(body) if !body.is_null() => body,
            _ => Value::Object(map),
        },
        Some(Value::String(s)) => Value::String(s),
        _ => Value::String(text.trim().to_string()),
    }
}

/// The session's lifetime from its JWT, read without verifying the signature (the client
/// only schedules its renewal with it): `exp - iat`, immune to the two clocks disagreeing,
/// or `exp - now` when the token has no `iat`.
pub fn token_lifetime(token: &str, now: SystemTime) -> Option<Duration> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: Value = serde_json::from_slice(&bytes).ok()?;
    let exp = claims.get("exp").and_then(Value::as_f64)?;
    let start = match claims.get("iat").and_then(Value::as_f64) {
        Some(iat) => iat,
        None => now.duration_since(UNIX_EPOCH).ok()?.as_secs_f64(),
    };
    Some(Duration::from_secs_f64((exp - start).max(0.0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(claims: &str) -> String {
        let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.sig",
            e.encode(r#"{"alg":"HS256"}"#),
            e.encode(claims)
        )
    }

    #[test]
    fn replies_are_read_in_every_shape() {
        let parse = |text: &str| unwrap_reply(serde_json::from_str(text).ok(), text);
        let sealed = Value::String("QUJD+/==".into());
        assert_eq!(parse("QUJD+/==\n"), sealed);
        assert_eq!(parse(r#""QUJD+/==""#), sealed);
        assert_eq!(
            parse(r#"{"status":"OK","message":"","body":"QUJD+/=="}"#),
            sealed
        );
        let session = serde_json::json!({"userName": "k", "token": "t", "sessionId": "s"});
        let enveloped = serde_json::json!({"status": "OK", "body": {"id": "k", "data": session}});
        let flat = serde_json::json!({"status": "OK", "message": "", "id": "k", "data": session});
        for reply in [enveloped, flat] {
            assert_eq!(parse(&reply.to_string())["data"], session);
        }
    }

    #[test]
    fn the_lifetime_comes_from_exp_and_iat_or_the_clock() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000);
        assert_eq!(
            token_lifetime(&jwt(r#"{"iat":5000,"exp":5300}"#), now),
            Some(Duration::from_secs(300))
        );
        assert_eq!(
            token_lifetime(&jwt(r#"{"exp":1005}"#), now),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            token_lifetime(&jwt(r#"{"exp":900}"#), now),
            Some(Duration::ZERO)
        );
        assert_eq!(token_lifetime(&jwt(r#"{"sub":"x"}"#), now), None);
        assert_eq!(token_lifetime("opaque", now), None);
        assert_eq!(token_lifetime("a.!!!.c", now), None);
    }
}
