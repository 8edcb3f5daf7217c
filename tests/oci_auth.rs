//! The OCI front door with authentication on: the spec's 401 with a Bearer challenge, the
//! token endpoint that trades Basic credentials (the root token, or an API key's id and a
//! session credential) for a token, and the permission check behind every request.

mod common;

use common::auth::{basic, create_key, send, send_json_as, session};
use common::*;
use reqwest::Method;
use serde_json::json;

const ROOT_TOKEN: &str = "oci-root-token-0123456789";

fn server() -> Server {
    Server::start_with(&[
        "--enable-auth",
        "--root-token",
        ROOT_TOKEN,
        "--enable-api-keys",
        "--enable-authorization",
    ])
}

/// The `key="value"` parameters of a challenge.
fn params(challenge: &str) -> std::collections::HashMap<String, String> {
    let (_, rest) = challenge.split_once(' ').unwrap();
    let mut out = std::collections::HashMap::new();
    // Values are quoted and may hold commas (scopes): split on `",`.
    for part in rest.split("\",") {
        let (k, v) = part.split_once('=').unwrap();
        out.insert(k.trim().to_string(), v.trim_matches('"').to_string());
    }
    out
}

/// Asks the token endpoint with Basic credentials; answers the token.
async fn token(s: &Server, user: &str, password: &str) -> String {
    let url = s.at("/v2/token?service=vmreg&scope=repository:ci/app:pull,push");
    let a = send(Method::GET, &url, None, Some(&basic(user, password))).await;
    assert_eq!(a.status, 200, "{a:?}");
    let token = a.json["token"].as_str().unwrap().to_string();
    assert_eq!(a.json["access_token"], token.as_str());
    assert!(a.json["expires_in"].as_u64().unwrap() > 0);
    assert!(a.json["issued_at"].as_str().is_some());
    token
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

async fn push_blob_as(s: &Server, repo: &str, data: &[u8], auth: &str) -> u16 {
    let digest = format!("sha256:{}", sha256_hex(data));
    let url = s.at(&format!("/v2/{repo}/blobs/uploads/?digest={digest}"));
    send(Method::POST, &url, Some(data.to_vec()), Some(auth))
        .await
        .status
}

#[tokio::test]
async fn a_refused_request_is_challenged_and_the_token_endpoint_logs_the_root_in() {
    let s = server();
    // No credentials: 401, the spec's body, and a Bearer challenge naming the token endpoint.
    let a = send(Method::GET, &s.at("/v2/"), None, None).await;
    assert_eq!(a.status, 401);
    assert_eq!(a.json["errors"][0]["code"], "UNAUTHORIZED");
    assert_eq!(a.challenges.len(), 1, "{a:?}");
    assert!(a.challenges[0].starts_with("Bearer "), "{a:?}");
    let p = params(&a.challenges[0]);
    assert_eq!(p["realm"], s.at("/v2/token"));
    assert_eq!(p["service"], "vmreg");
    let url = s.at("/v2/ci/app/manifests/latest");
    let a = send(Method::PUT, &url, Some(b"{}".to_vec()), None).await;
    assert_eq!(
        params(&a.challenges[0])["scope"],
        "repository:ci/app:pull,push"
    );

    // The token endpoint wants Basic credentials and refuses wrong ones.
    let a = send(Method::GET, &s.at("/v2/token"), None, None).await;
    assert_eq!(a.status, 401);
    assert_eq!(a.challenges, vec!["Basic realm=\"vmreg\"".to_string()]);
    let wrong = send(
        Method::GET,
        &s.at("/v2/token"),
        None,
        Some(&basic("root", "not-the-token")),
    )
    .await;
    assert_eq!(wrong.status, 401);

    // The root's token opens everything; Basic root credentials work directly too.
    let root = bearer(&token(&s, "root", ROOT_TOKEN).await);
    let a = send(Method::GET, &s.at("/v2/"), None, Some(&root)).await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(push_blob_as(&s, "ci/app", b"layer", &root).await, 201);
    let direct = basic("root", ROOT_TOKEN);
    assert_eq!(push_blob_as(&s, "ci/app", b"other", &direct).await, 201);
    // A forged or altered token is refused.
    let forged = bearer(&format!("{}x", &root["Bearer ".len()..]));
    let a = send(Method::GET, &s.at("/v2/"), None, Some(&forged)).await;
    assert_eq!(a.status, 401);
    // The token does not leak into the server's log.
    assert!(!s.log().contains(&root["Bearer ".len()..]));
}

#[tokio::test]
async fn an_api_key_logs_in_with_a_session_and_gets_what_its_groups_allow() {
    let s = server();
    let root = basic("root", ROOT_TOKEN);
    let base = s.at("");
    let base = base.as_str();
    for (group, permissions) in [
        ("readers", json!(["pull_vm", "download_vm", "list_vms"])),
        (
            "writers",
            json!(["pull_vm", "download_vm", "upload_file", "push_vm"]),
        ),
    ] {
        let a = send_json_as(
            Method::PUT,
            &format!("{base}/admin/api/v1/permission/group/{group}"),
            &json!({ "permissions": permissions }),
            Some(&root),
        )
        .await;
        assert_eq!(a.status, 200, "{a:?}");
    }
    let reader_key = create_key(base, &root, "reader", 3600, &["readers"]).await;
    let writer_key = create_key(base, &root, "writer", 3600, &["writers"]).await;
    // A session credential (what the TAP handshake gives) is the password.
    let credential = |header: String| header["Bearer ".len()..].to_string();
    let reader_session = credential(session(base, "reader", &reader_key).await);
    let writer_session = credential(session(base, "writer", &writer_key).await);

    let writer = bearer(&token(&s, "writer", &writer_session).await);
    let reader = bearer(&token(&s, "reader", &reader_session).await);
    // The id must be the session's key.
    let a = send(
        Method::GET,
        &s.at("/v2/token"),
        None,
        Some(&basic("writer", &reader_session)),
    )
    .await;
    assert_eq!(a.status, 401);

    // The writer pushes; the reader pulls but may not push: 403 DENIED.
    assert_eq!(push_blob_as(&s, "ci/app", b"layer", &writer).await, 201);
    let digest = format!("sha256:{}", sha256_hex(b"layer"));
    let blob = s.at(&format!("/v2/ci/app/blobs/{digest}"));
    let a = send(Method::GET, &blob, None, Some(&reader)).await;
    assert_eq!((a.status, a.text.as_str()), (200, "layer"));
    let a = send(
        Method::POST,
        &s.at("/v2/ci/app/blobs/uploads/"),
        None,
        Some(&reader),
    )
    .await;
    assert_eq!(a.status, 403);
    assert_eq!(a.json["errors"][0]["code"], "DENIED");
    // Basic with the key's id and session works without the token step.
    let a = send(
        Method::GET,
        &blob,
        None,
        Some(&basic("reader", &reader_session)),
    )
    .await;
    assert_eq!(a.status, 200);
    // Neither may delete; the catalog needs list_vms, which only the reader has.
    let a = send(Method::DELETE, &blob, None, Some(&writer)).await;
    assert_eq!(a.status, 403);
    let catalog = s.at("/v2/_catalog");
    assert_eq!(
        send(Method::GET, &catalog, None, Some(&writer))
            .await
            .status,
        403
    );
    let a = send(Method::GET, &catalog, None, Some(&reader)).await;
    assert_eq!(a.json["repositories"], json!(["ci/app"]));

    // A deleted key's tokens stop working at once.
    let a = send_json_as(
        Method::DELETE,
        &format!("{base}/v1/apikey"),
        &json!({ "id": "reader" }),
        Some(&root),
    )
    .await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(
        send(Method::GET, &blob, None, Some(&reader)).await.status,
        401
    );
}

#[tokio::test]
async fn the_public_url_names_the_token_realm_and_every_location() {
    let public = "https://registry.example:8443";
    let s = Server::start_in_with_env(
        Namespace::new(),
        &["--enable-auth", "--root-token", ROOT_TOKEN],
        &[("VMREG_PUBLIC_URL", "https://registry.example:8443/")],
    );
    let c = reqwest::Client::new();
    // The realm is the public URL's, whatever host the request or a proxy names.
    let refused = c
        .get(s.at("/v2/ci/app/tags/list"))
        .header("x-forwarded-host", "elsewhere.example")
        .header("x-forwarded-proto", "http")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    let challenge = refused.headers()["www-authenticate"].to_str().unwrap();
    assert_eq!(params(challenge)["realm"], format!("{public}/v2/token"));

    // Uploads, blobs and manifests are located under it.
    let root = basic("root", ROOT_TOKEN);
    let opened = c
        .post(s.at("/v2/ci/app/blobs/uploads/"))
        .header("authorization", &root)
        .send()
        .await
        .unwrap();
    assert_eq!(opened.status(), 202);
    let loc = opened.headers()["location"].to_str().unwrap().to_string();
    assert!(
        loc.starts_with(&format!("{public}/v2/ci/app/blobs/uploads/")),
        "{loc}"
    );
    let digest = format!("sha256:{}", sha256_hex(b"layer"));
    let closed = c
        .put(s.at(&format!("{}?digest={digest}", &loc[public.len()..])))
        .header("authorization", &root)
        .body(b"layer".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(closed.status(), 201);
    assert_eq!(
        closed.headers()["location"],
        format!("{public}/v2/ci/app/blobs/{digest}").as_str()
    );
    let manifest = br#"{"schemaVersion":2,"layers":[]}"#.to_vec();
    let put = c
        .put(s.at("/v2/ci/app/manifests/v1"))
        .header("authorization", &root)
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(manifest.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 201);
    let manifest_digest = format!("sha256:{}", sha256_hex(&manifest));
    assert_eq!(
        put.headers()["location"],
        format!("{public}/v2/ci/app/manifests/{manifest_digest}").as_str()
    );
}

#[test]
fn a_public_url_that_is_not_an_absolute_http_url_is_refused_at_start() {
    // Bounded: a server that took the setting would run until killed.
    let out = std::process::Command::new("timeout")
        .args([
            "20",
            vmreg_bin(),
            "serve",
            "--public-url",
            "registry.example",
        ])
        .args(Namespace::new().store_args())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("public_url"), "{stderr}");
}

/// The claims of the session a token (as the token endpoint gives it) carries, which
/// anyone holding the token can read.
fn claims_of(token: &str) -> serde_json::Value {
    use base64::Engine;
    let data: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD
            .decode(token)
            .unwrap(),
    )
    .unwrap();
    let jwt = data["token"].as_str().unwrap();
    let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(jwt.split('.').nth(1).unwrap())
        .unwrap();
    serde_json::from_slice(&payload).unwrap()
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A token from the token endpoint for `authorization`, with its `expires_in`.
async fn token_for(s: &Server, authorization: &str) -> (String, u64) {
    let a = send(Method::GET, &s.at("/v2/token"), None, Some(authorization)).await;
    assert_eq!(a.status, 200, "{a:?}");
    let expires_in = a.json["expires_in"].as_u64().unwrap();
    (a.json["token"].as_str().unwrap().to_string(), expires_in)
}

#[tokio::test]
async fn a_token_made_from_a_session_never_outlives_that_session() {
    let s = Server::start_with(&[
        "--enable-auth",
        "--root-token",
        ROOT_TOKEN,
        "--enable-api-keys",
        "--api-keys-session-ttl",
        "5s",
    ]);
    let root = basic("root", ROOT_TOKEN);
    let private = create_key(&s.url, &root, "renewer", 3600, &[]).await;
    let key_session = session(&s.url, "renewer", &private).await;
    let key_credential = key_session["Bearer ".len()..].to_string();
    let (root_session, _) = token_for(&s, &root).await;
    let first = [
        bearer(&root_session),
        key_session.clone(),
        basic("renewer", &key_credential),
    ];
    let ends = |auth: &str| -> u64 {
        let token = auth.split_once(' ').unwrap().1;
        let token = match auth.starts_with("Basic") {
            // `renewer:<credential>`
            true => key_credential.as_str(),
            false => token,
        };
        claims_of(token)["exp"].as_u64().unwrap()
    };
    let deadline: Vec<u64> = first.iter().map(|a| ends(a.as_str())).collect();

    // Renewed a second later, and again from the renewal a second after that: each ends
    // when the first does, not a lifetime after it was asked for.
    let pause = || tokio::time::sleep(std::time::Duration::from_millis(1100));
    pause().await;
    let mut seconds = Vec::new();
    for (auth, end) in first.iter().zip(&deadline) {
        let (second, expires_in) = token_for(&s, auth).await;
        assert!(
            claims_of(&second)["exp"].as_u64().unwrap() <= *end,
            "{auth}"
        );
        assert!(
            now_secs() + expires_in <= *end,
            "expires_in {expires_in} for {auth}"
        );
        seconds.push(second);
    }
    pause().await;
    let mut latest = Vec::new();
    for (second, end) in seconds.iter().zip(&deadline) {
        let (third, _) = token_for(&s, &bearer(second)).await;
        assert!(claims_of(&third)["exp"].as_u64().unwrap() <= *end);
        latest.push(third);
    }

    // Once the sessions end, so does every token made from them.
    let last = deadline.iter().copied().max().unwrap();
    while now_secs() <= last {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    for token in latest {
        let a = send(Method::GET, &s.at("/v2/"), None, Some(&bearer(&token))).await;
        assert_eq!(a.status, 401, "a renewed token outlived its session");
    }
}

#[tokio::test]
async fn a_root_session_holds_no_hash_of_the_root_token_and_ends_when_the_token_changes() {
    let ns = Namespace::new();
    let mut first = Server::start_in(ns.clone(), &["--enable-auth", "--root-token", ROOT_TOKEN]);
    let session = token(&first, "root", ROOT_TOKEN).await;
    let claims = claims_of(&session).to_string();
    assert!(
        !claims.contains(&sha256_hex(ROOT_TOKEN.as_bytes())) && !claims.contains(ROOT_TOKEN),
        "the session's readable payload tells the root token: {claims}"
    );
    let a = send(
        Method::GET,
        &first.at("/v2/"),
        None,
        Some(&bearer(&session)),
    )
    .await;
    assert_eq!(a.status, 200, "{a:?}");

    // The same stores, another root token: the old root's sessions are over.
    first.kill();
    let rotated = "rotated-root-token-0123456789";
    let second = Server::start_in(ns, &["--enable-auth", "--root-token", rotated]);
    let a = send(
        Method::GET,
        &second.at("/v2/"),
        None,
        Some(&bearer(&session)),
    )
    .await;
    assert_eq!(a.status, 401, "{a:?}");
    let fresh = token(&second, "root", rotated).await;
    let a = send(Method::GET, &second.at("/v2/"), None, Some(&bearer(&fresh))).await;
    assert_eq!(a.status, 200, "{a:?}");
}
