//! Credentials for the black-box tests: Basic root headers, API keys, and a TAP client
//! that decrypts the handshake's secret with the key's private half, as a node would.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::{Oaep, RsaPrivateKey};
use serde_json::{json, Value};

/// A reply with the headers the auth tests look at.
#[derive(Debug)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// Parsed JSON body (Null when not JSON).
    pub json: Value,
    /// Raw body.
    pub text: String,
    /// Every `WWW-Authenticate` value.
    pub challenges: Vec<String>,
}

/// `Basic base64(user:password)`.
pub fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", B64.encode(format!("{user}:{password}")))
}

/// Sends a request with an optional `Authorization` header.
pub async fn send(
    method: reqwest::Method,
    url: &str,
    body: Option<Vec<u8>>,
    authorization: Option<&str>,
) -> Answer {
    let resp = super::request(method, url, body, authorization)
        .send()
        .await
        .expect("request");
    let status = resp.status().as_u16();
    let challenges = resp
        .headers()
        .get_all("www-authenticate")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    let text = resp.text().await.unwrap_or_default();
    Answer {
        status,
        json: serde_json::from_str(&text).unwrap_or(Value::Null),
        text,
        challenges,
    }
}

/// Sends a JSON body.
pub async fn send_json_as(
    method: reqwest::Method,
    url: &str,
    body: &Value,
    authorization: Option<&str>,
) -> Answer {
    send(
        method,
        url,
        Some(serde_json::to_vec(body).unwrap()),
        authorization,
    )
    .await
}

/// Creates an API key as root; answers the base64 PKCS#1 DER private key the server made.
pub async fn create_key(base: &str, root: &str, id: &str, ttl: u64, groups: &[&str]) -> String {
    let a = send_json_as(
        reqwest::Method::POST,
        &format!("{base}/v1/apikey"),
        &json!({ "id": id, "ttl": ttl, "groups": groups }),
        Some(root),
    )
    .await;
    assert_eq!(a.status, 200, "{a:?}");
    a.json["body"].as_str().expect("a private key").to_string()
}

/// Decrypts a `hand` reply (base64 RSA-OAEP SHA-256) with a base64 PKCS#1 DER private key.
pub fn decrypt_secret(private_key: &str, sealed: &str) -> String {
    let key = RsaPrivateKey::from_pkcs1_der(&B64.decode(private_key).unwrap()).unwrap();
    let plain = key
        .decrypt(
            Oaep::new::<sha2::Sha256>(),
            &B64.decode(sealed.trim()).unwrap(),
        )
        .expect("the secret decrypts with the key's private half");
    String::from_utf8(plain).unwrap()
}

/// `hand`, then the decrypted secret.
pub async fn hand(base: &str, id: &str, private_key: &str) -> String {
    let a = send_json_as(
        reqwest::Method::POST,
        &format!("{base}/tap/v1/hand"),
        &json!({ "id": id }),
        None,
    )
    .await;
    assert_eq!(a.status, 200, "{a:?}");
    decrypt_secret(private_key, &a.text)
}

/// `shake` with a secret; the raw answer.
pub async fn shake(base: &str, id: &str, secret: &str) -> Answer {
    send_json_as(
        reqwest::Method::POST,
        &format!("{base}/tap/v1/shake"),
        &json!({ "id": id, "secret": secret }),
        None,
    )
    .await
}

/// The Bearer header a shake's `data` makes.
pub fn bearer(data: &Value) -> String {
    format!("Bearer {}", B64.encode(serde_json::to_vec(data).unwrap()))
}

/// Runs the whole TAP handshake; answers the `Authorization` header of the session.
pub async fn session(base: &str, id: &str, private_key: &str) -> String {
    let secret = hand(base, id, private_key).await;
    let a = shake(base, id, &secret).await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.json["id"], id, "{a:?}");
    bearer(&a.json["data"])
}
