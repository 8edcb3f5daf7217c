//! Identities survive a lost index: API keys, permission groups and the session signing
//! key are kept in the bucket, and `vmreg admin reindex` brings them back. Runs on the
//! backend `VMREG_TEST_BACKEND` selects: on S3 + Redis the index is lost by deleting every
//! Redis key of the registry (what `FLUSHALL` does to a Redis of its own), on the embedded
//! store by deleting its database file.

mod common;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use common::auth::*;
use common::*;
use reqwest::Method;
use rsa::pkcs1::DecodeRsaPrivateKey;
use serde_json::{json, Value};
use vmreg::meta::MetaStoreExt;

const ROOT_TOKEN: &str = "identities-root-token-0123456789";
const IDENTITY_SECRET: &str = "identities-identity-secret-0123456789abcdef";

const PUSHERS: [&str; 6] = [
    "list_vms",
    "head_push_vm",
    "push_vm",
    "upload_file",
    "pull_vm",
    "download_vm",
];

fn root() -> String {
    basic("root", ROOT_TOKEN)
}

fn flags(identity_secret: bool) -> Vec<&'static str> {
    let mut flags = vec![
        "--enable-auth",
        "--root-token",
        ROOT_TOKEN,
        "--enable-api-keys",
        "--enable-authorization",
    ];
    if identity_secret {
        flags.extend(["--identity-secret", IDENTITY_SECRET]);
    }
    flags
}

async fn put_group(base: &str, name: &str, permissions: &[&str]) {
    let a = send_json_as(
        Method::PUT,
        &format!("{base}/admin/api/v1/permission/group/{name}"),
        &json!({ "permissions": permissions }),
        Some(&root()),
    )
    .await;
    assert_eq!(a.status, 200, "{a:?}");
}

async fn admin_get(base: &str, path: &str) -> Answer {
    send(Method::GET, &format!("{base}{path}"), None, Some(&root())).await
}

/// What root sees of keys and groups: every field the API shows.
async fn identities_view(base: &str) -> Value {
    let keys = admin_get(base, "/v1/apikey").await;
    let groups = admin_get(base, "/admin/api/v1/permission/group").await;
    assert_eq!(
        (keys.status, groups.status),
        (200, 200),
        "{keys:?} {groups:?}"
    );
    json!({ "keys": keys.json["body"], "groups": groups.json["body"] })
}

/// Pushes a one-layer template as `authorization`; the commit's reply.
async fn push_as(base: &str, authorization: &str, name: &str, seed: u64) -> Reply {
    let layer = unique_image(40_000, seed);
    try_push_as(base, Some(authorization), &new_id(), name, "t1", &[&layer]).await
}

/// Loses the namespace's index, as a lost Redis (or a lost database file) would; the
/// server must be stopped on the embedded store.
async fn lose_the_index(ns: &Namespace) {
    if s3_backend() {
        let deleted = flush_redis_prefix(&format!("{}:", ns.prefix)).await;
        assert!(deleted > 0, "the registry had keys in Redis");
    } else {
        std::fs::remove_file(ns.dir.join("data").join("meta.redb")).expect("remove the index");
    }
}

fn reindex(ns: &Namespace, identity_secret: bool) -> String {
    let mut cmd = std::process::Command::new(vmreg_bin());
    cmd.args(["admin", "reindex"]).args(ns.store_args());
    if identity_secret {
        cmd.env("VMREG_IDENTITY_SECRET", IDENTITY_SECRET);
    }
    let out = cmd.output().expect("run reindex");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "reindex failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn fsck_clean(ns: &Namespace) {
    let out = std::process::Command::new(vmreg_bin())
        .args(["admin", "fsck", "--json"])
        .args(ns.store_args())
        .output()
        .expect("run fsck");
    let report: Value = serde_json::from_slice(&out.stdout).expect("a JSON report");
    assert!(
        out.status.success() && report["clean"] == true,
        "{report:#}"
    );
}

/// Every object in the namespace's bucket, with its bytes; the server must be stopped on
/// the embedded store.
async fn bucket(ns: &Namespace) -> (Vec<(String, Vec<u8>)>, Option<Vec<u8>>) {
    let (meta, blobs) = common::stores::stores(ns).await;
    let mut out = Vec::new();
    for key in blobs.list("").await.expect("list the bucket") {
        let bytes = blobs.read(&key).await.expect("read an object");
        out.push((key, bytes.to_vec()));
    }
    let signing: Option<String> = meta
        .get_json(vmreg::meta::keys::SIGNING_KEY)
        .await
        .expect("read the signing key");
    (out, signing.map(|s| B64.decode(s).expect("base64")))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// The JWT inside a Bearer credential.
fn token_of(bearer: &str) -> String {
    let data = B64
        .decode(bearer.trim_start_matches("Bearer "))
        .expect("base64");
    let data: Value = serde_json::from_slice(&data).expect("JSON");
    data["token"].as_str().expect("a token").to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_groups_and_the_signing_key_survive_a_lost_index() {
    let mut s = Server::start_with(&flags(true));
    let base = s.url.clone();
    put_group(&base, "pushers", &PUSHERS).await;
    put_group(&base, "readers", &["list_vms"]).await;
    put_group(&base, "doomed", &PUSHERS).await;
    let builder = create_key(&base, &root(), "builder", 3600, &["pushers"]).await;
    let reader = create_key(&base, &root(), "reader", 3600, &["readers"]).await;
    let gone = create_key(&base, &root(), "gone", 3600, &["pushers"]).await;
    let doomed = create_key(&base, &root(), "doomed-member", 3600, &["doomed"]).await;

    // A push with one key; sessions made before the loss.
    let builder_session = session(&base, "builder", &builder).await;
    let pushed = push_as(&base, &builder_session, "before", 1).await;
    pushed.ok_body();
    let gone_session = session(&base, "gone", &gone).await;
    let doomed_session = session(&base, "doomed-member", &doomed).await;
    push_as(&base, &doomed_session, "doomed-push", 2)
        .await
        .ok_body();

    // Changes after creation: a key's groups, a deleted key, a deleted group.
    let update = send_json_as(
        Method::PUT,
        &format!("{base}/v1/apikey"),
        &json!({ "id": "reader", "groups": ["readers", "pushers"] }),
        Some(&root()),
    )
    .await;
    assert_eq!(update.status, 200, "{update:?}");
    let del = send_json_as(
        Method::DELETE,
        &format!("{base}/v1/apikey"),
        &json!({ "id": "gone" }),
        Some(&root()),
    )
    .await;
    assert_eq!(del.status, 200, "{del:?}");
    let del = send(
        Method::DELETE,
        &format!("{base}/admin/api/v1/permission/group/doomed"),
        None,
        Some(&root()),
    )
    .await;
    assert_eq!(del.status, 200, "{del:?}");
    let before = identities_view(&base).await;
    // A TAP secret handed out but never shaken: it must not land in the bucket either.
    let unshaken = hand(&base, "builder", &builder).await;

    s.terminate();
    lose_the_index(&s.ns).await;
    let out = reindex(&s.ns, true);
    assert!(out.contains("reindexed 2 templates"), "{out}");
    assert!(
        out.contains("identities: 3 API keys restored") && out.contains("2 groups restored"),
        "{out}"
    );
    assert!(
        out.contains("signing key: restored from the bucket"),
        "{out}"
    );
    fsck_clean(&s.ns);

    // No secret in the bucket: private keys (DER, and the base64 a PEM's lines are made
    // of), tokens, session ids, TAP secrets, the root and identity secrets, the signing key.
    let (objects, signing) = bucket(&s.ns).await;
    let signing = signing.expect("the signing key is back in the index");
    assert!(objects
        .iter()
        .any(|(k, _)| k.contains("identities/keys/builder.")));
    let mut secrets: Vec<(String, Vec<u8>)> = vec![
        ("signing key".into(), signing.clone()),
        (
            "signing key (base64)".into(),
            B64.encode(&signing).into_bytes(),
        ),
        ("root token".into(), ROOT_TOKEN.into()),
        ("identity secret".into(), IDENTITY_SECRET.into()),
        ("TAP secret".into(), unshaken.clone().into_bytes()),
    ];
    for (name, private) in [
        ("builder", &builder),
        ("reader", &reader),
        ("gone", &gone),
        ("doomed-member", &doomed),
    ] {
        // The tail of a PKCS#1 key is its private CRT coefficient; its head repeats the
        // modulus, which the public key holds too.
        let der = B64.decode(private).expect("base64 DER");
        secrets.push((
            format!("{name}'s private key"),
            der[der.len() - 64..].to_vec(),
        ));
        let pem = private.trim_end_matches('=').as_bytes();
        secrets.push((
            format!("{name}'s private key PEM line"),
            pem[pem.len() - 68..pem.len() - 4].to_vec(),
        ));
    }
    for (name, bearer) in [("builder", &builder_session), ("gone", &gone_session)] {
        let token = token_of(bearer);
        secrets.push((format!("{name}'s token"), token.clone().into_bytes()));
        let signature = token.rsplit('.').next().expect("a signature").to_string();
        secrets.push((format!("{name}'s token signature"), signature.into_bytes()));
    }
    for (key, bytes) in &objects {
        for (name, secret) in &secrets {
            assert!(!contains(bytes, secret), "{key} holds the {name}");
        }
    }

    let s = Server::start_in(s.ns.clone(), &flags(true));
    let base = s.url.clone();
    assert_eq!(
        identities_view(&base).await,
        before,
        "every key and group is back"
    );

    // A session made before the loss still verifies: the signing key is the same one.
    let list = send(
        Method::GET,
        &format!("{base}/registry/v2/vm"),
        None,
        Some(&builder_session),
    )
    .await;
    assert_eq!(list.status, 200, "{list:?}");
    // A key made before does the handshake and pushes with its group's permissions.
    let fresh = session(&base, "builder", &builder).await;
    push_as(&base, &fresh, "after", 3).await.ok_body();
    // The updated key has its new groups.
    let reader_session = session(&base, "reader", &reader).await;
    push_as(&base, &reader_session, "by-reader", 4)
        .await
        .ok_body();

    // The deleted key stays refused: its old session, and the handshake.
    let refused = send(
        Method::GET,
        &format!("{base}/registry/v2/vm"),
        None,
        Some(&gone_session),
    )
    .await;
    assert_eq!(refused.status, 401, "{refused:?}");
    let sealed = send_json_as(
        Method::POST,
        &format!("{base}/tap/v1/hand"),
        &json!({ "id": "gone" }),
        None,
    )
    .await;
    let key = rsa::RsaPrivateKey::from_pkcs1_der(&B64.decode(&gone).unwrap()).unwrap();
    let opened = key.decrypt(
        rsa::Oaep::new::<sha2::Sha256>(),
        &B64.decode(sealed.text.trim()).unwrap(),
    );
    assert!(opened.is_err(), "a deleted key is handed random bytes");
    let shaken = shake(&base, "gone", "anything").await;
    assert_eq!(shaken.status, 401, "{shaken:?}");
    // The deleted group grants nothing: its member may not push.
    let doomed_fresh = session(&base, "doomed-member", &doomed).await;
    let denied = push_as(&base, &doomed_fresh, "denied", 5).await;
    assert_eq!(denied.status, 403, "{denied:?}");
    let missing = admin_get(&base, "/admin/api/v1/permission/group/doomed").await;
    assert_eq!(missing.status, 404, "{missing:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn without_an_identity_secret_a_lost_index_ends_sessions_but_not_keys() {
    let mut s = Server::start_with(&flags(false));
    let base = s.url.clone();
    put_group(&base, "pushers", &PUSHERS).await;
    let builder = create_key(&base, &root(), "builder", 3600, &["pushers"]).await;
    let before = session(&base, "builder", &builder).await;
    push_as(&base, &before, "before", 6).await.ok_body();

    s.terminate();
    lose_the_index(&s.ns).await;
    let out = reindex(&s.ns, false);
    assert!(out.contains("signing key: generated anew"), "{out}");
    let (objects, _) = bucket(&s.ns).await;
    assert!(
        !objects.iter().any(|(k, _)| k.contains("signing-key")),
        "no signing key in the bucket without an identity secret"
    );

    let s = Server::start_in(s.ns.clone(), &flags(false));
    let base = s.url.clone();
    let old = send(
        Method::GET,
        &format!("{base}/registry/v2/vm"),
        None,
        Some(&before),
    )
    .await;
    assert_eq!(
        old.status, 401,
        "a session signed with the lost key ends: {old:?}"
    );
    let fresh = session(&base, "builder", &builder).await;
    push_as(&base, &fresh, "after", 7).await.ok_body();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_signing_key_sealed_under_another_identity_secret_stops_the_start() {
    let mut s = Server::start_with(&flags(true));
    create_key(&s.url, &root(), "k", 3600, &[]).await;
    s.terminate();
    lose_the_index(&s.ns).await;
    let out = std::process::Command::new(vmreg_bin())
        .arg("serve")
        .args(["--listen", "127.0.0.1:0"])
        .args(s.ns.store_args())
        .args(flags(false))
        .args([
            "--identity-secret",
            "a-different-identity-secret-0123456789",
        ])
        .output()
        .expect("run vmreg serve");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("does not open with the configured identity secret"),
        "{stderr}"
    );
}
