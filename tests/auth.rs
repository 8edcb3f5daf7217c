//! Identity and access against the real binary: every endpoint × every kind of
//! credential, with the exact status of each cell, with authentication on and off; the
//! vendor's key-management shapes; the TAP handshake's single-use secrets; sessions that
//! expire without cutting a running transfer; and no secret in the log.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use base64::Engine;
use common::auth::*;
use common::*;
use reqwest::Method;
use serde_json::{json, Value};

const ROOT_TOKEN: &str = "matrix-root-token-0123456789";
const JWT_SECRET: &str = "matrix-signing-secret-0123456789abcdefghij";

const ALL_PERMS: [&str; 16] = [
    "index",
    "get_disk_info",
    "list_vms",
    "head_push_vm",
    "push_vm",
    "pull_vm",
    "download_vm",
    "delete_vm",
    "revert",
    "upload_file",
    "download_file",
    "view_permissions",
    "view_permission_groups",
    "update_permission_groups",
    "delete_permission_groups",
    "apply_retention",
];

fn root() -> String {
    basic("root", ROOT_TOKEN)
}

fn auth_flags(extra: &[&'static str]) -> Vec<&'static str> {
    let mut flags = vec![
        "--enable-auth",
        "--root-token",
        ROOT_TOKEN,
        "--enable-api-keys",
    ];
    flags.extend_from_slice(extra);
    flags
}

// ---------------------------------------------------------------------------------------
// The credential columns.

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Cred {
    None,
    Malformed,
    WrongRoot,
    Root,
    KeyWith,
    KeyWithout,
    ExpiredKey,
    DeletedKey,
    ReplayedTap,
    TamperedJwt,
    ExpiredJwt,
}

const CREDS: [Cred; 11] = [
    Cred::None,
    Cred::Malformed,
    Cred::WrongRoot,
    Cred::Root,
    Cred::KeyWith,
    Cred::KeyWithout,
    Cred::ExpiredKey,
    Cred::DeletedKey,
    Cred::ReplayedTap,
    Cred::TamperedJwt,
    Cred::ExpiredJwt,
];

/// The `Authorization` header each column sends.
type Headers = BTreeMap<Cred, Option<String>>;

/// The session token's claims, read (not verified) from a Bearer header.
fn claims_of(bearer: &str) -> (Value, Value) {
    let data: Value =
        serde_json::from_slice(&B64.decode(bearer.trim_start_matches("Bearer ")).unwrap()).unwrap();
    let token = data["token"].as_str().unwrap();
    let payload = token.split('.').nth(1).unwrap();
    let claims: Value = serde_json::from_slice(&B64URL.decode(payload).unwrap()).unwrap();
    (data, claims)
}

/// The same session with its claims changed and the signature left as it was.
fn tampered(bearer: &str) -> String {
    let (mut data, mut claims) = claims_of(bearer);
    claims["exp"] = json!(claims["exp"].as_u64().unwrap() + 3600);
    let token = data["token"].as_str().unwrap().to_string();
    let parts: Vec<&str> = token.split('.').collect();
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        B64URL.encode(serde_json::to_vec(&claims).unwrap()),
        parts[2]
    );
    data["token"] = json!(forged);
    bearer_of(&data)
}

/// The same session re-signed with the server's secret and the expiry `exp`.
fn resigned(bearer: &str, exp: u64) -> String {
    let (mut data, mut claims) = claims_of(bearer);
    claims["exp"] = json!(exp);
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap();
    data["token"] = json!(token);
    bearer_of(&data)
}

fn bearer_of(data: &Value) -> String {
    bearer(data)
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

async fn status_as(base: &str, header: &str) -> u16 {
    get_as(&format!("{base}/registry/status"), header)
        .await
        .status
}

/// Makes every column's credential on an auth-on server with API keys.
async fn make_headers(s: &Server) -> Headers {
    let base = s.url.as_str();
    let root = root();
    // The key that will have expired by the time the matrix runs: its session is made
    // while it lives.
    let expired_key = create_key(base, &root, "expired", 3, &["with"]).await;
    let expired = session(base, "expired", &expired_key).await;
    let with_key = create_key(base, &root, "with", 3600, &["with"]).await;
    let with = session(base, "with", &with_key).await;
    let without_key = create_key(base, &root, "without", 3600, &["without"]).await;
    let without = session(base, "without", &without_key).await;
    let deleted_key = create_key(base, &root, "deleted", 3600, &["with"]).await;
    let deleted = session(base, "deleted", &deleted_key).await;
    assert_eq!(status_as(base, &deleted).await, 200);
    let gone = send_json_as(
        Method::DELETE,
        &format!("{base}/v1/apikey"),
        &json!({"id": "deleted"}),
        Some(&root),
    )
    .await;
    assert_eq!(
        gone.json,
        json!({"status": "OK", "message": ""}),
        "{gone:?}"
    );

    // A TAP secret works once; the replay gets nothing.
    let secret = hand(base, "with", &with_key).await;
    assert_eq!(shake(base, "with", &secret).await.status, 200);
    let replay = shake(base, "with", &secret).await;
    assert_fail_401(&replay, "replayed shake");
    assert!(replay.json.get("data").is_none(), "{replay:?}");

    // Control: a token re-signed with the right secret and a future expiry is accepted,
    // so the expired one below fails for its expiry alone.
    assert_eq!(status_as(base, &resigned(&with, now() + 600)).await, 200);

    let deadline = Instant::now() + Duration::from_secs(10);
    while status_as(base, &expired).await != 401 {
        assert!(Instant::now() < deadline, "the 3 s key never expired");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let mut h = Headers::new();
    h.insert(Cred::None, None);
    h.insert(Cred::Malformed, Some("Bearer %%%not-base64%%%".into()));
    h.insert(Cred::WrongRoot, Some(basic("root", "not-the-root-token")));
    h.insert(Cred::Root, Some(root));
    h.insert(Cred::KeyWith, Some(with.clone()));
    h.insert(Cred::KeyWithout, Some(without));
    h.insert(Cred::ExpiredKey, Some(expired));
    h.insert(Cred::DeletedKey, Some(deleted));
    h.insert(Cred::ReplayedTap, Some(bearer_of(&replay.json["data"])));
    h.insert(Cred::TamperedJwt, Some(tampered(&with)));
    h.insert(Cred::ExpiredJwt, Some(resigned(&with, now() - 5)));
    h
}

fn assert_fail_401(a: &Answer, what: &str) {
    assert_eq!(a.status, 401, "{what}: {a:?}");
    assert_eq!(a.json["status"], "FAIL", "{what}: {a:?}");
    assert_eq!(
        a.json["message"], "Authentication Required",
        "{what}: {a:?}"
    );
}

// ---------------------------------------------------------------------------------------
// The endpoint rows.

/// What a row needs, as the test expects the server to map it.
#[derive(Clone, Copy, Debug)]
enum Need {
    Public,
    Authenticated,
    All(&'static [&'static str]),
    Any(&'static [&'static str]),
    Admin(&'static str),
    Root,
}

#[derive(Clone, Copy, Debug)]
enum Ep {
    Livez,
    Readyz,
    Index,
    OpenApi,
    Status,
    Disk,
    ListV1,
    ListV2,
    Template,
    Info,
    Arch,
    Revert,
    DeleteVm,
    Negotiate,
    SessionStatus,
    Abort,
    Upload,
    Commit,
    Manifest,
    FileGet,
    FileHead,
    KeyList,
    KeyListOld,
    KeyCreate,
    KeyUpdate,
    KeyDelete,
    KeyDeleteOld,
    Permissions,
    Groups,
    GroupGet,
    GroupPut,
    GroupCreate,
    GroupDelete,
    Hand,
    Shake,
    Unknown,
}

const ENDPOINTS: [Ep; 36] = [
    Ep::Livez,
    Ep::Readyz,
    Ep::Index,
    Ep::OpenApi,
    Ep::Status,
    Ep::Disk,
    Ep::ListV1,
    Ep::ListV2,
    Ep::Template,
    Ep::Info,
    Ep::Arch,
    Ep::Revert,
    Ep::DeleteVm,
    Ep::Negotiate,
    Ep::SessionStatus,
    Ep::Abort,
    Ep::Upload,
    Ep::Commit,
    Ep::Manifest,
    Ep::FileGet,
    Ep::FileHead,
    Ep::KeyList,
    Ep::KeyListOld,
    Ep::KeyCreate,
    Ep::KeyUpdate,
    Ep::KeyDelete,
    Ep::KeyDeleteOld,
    Ep::Permissions,
    Ep::Groups,
    Ep::GroupGet,
    Ep::GroupPut,
    Ep::GroupCreate,
    Ep::GroupDelete,
    Ep::Hand,
    Ep::Shake,
    Ep::Unknown,
];

impl Ep {
    fn need(self) -> Need {
        match self {
            Ep::Livez | Ep::Readyz | Ep::Hand | Ep::Shake => Need::Public,
            Ep::OpenApi | Ep::Status | Ep::Unknown => Need::Authenticated,
            Ep::Index => Need::All(&["index"]),
            Ep::Disk => Need::All(&["get_disk_info"]),
            Ep::ListV1 | Ep::ListV2 | Ep::Template | Ep::Info => Need::All(&["list_vms"]),
            Ep::Arch => Need::All(&["push_vm"]),
            Ep::Revert => Need::All(&["revert"]),
            Ep::DeleteVm => Need::All(&["delete_vm"]),
            Ep::Negotiate => Need::All(&["head_push_vm", "push_vm"]),
            Ep::SessionStatus | Ep::Abort => Need::All(&["head_push_vm"]),
            Ep::Upload => Need::All(&["upload_file"]),
            Ep::Commit => Need::All(&["push_vm"]),
            Ep::Manifest => Need::All(&["pull_vm"]),
            Ep::FileGet | Ep::FileHead => Need::Any(&["download_vm", "download_file"]),
            Ep::KeyList
            | Ep::KeyListOld
            | Ep::KeyCreate
            | Ep::KeyUpdate
            | Ep::KeyDelete
            | Ep::KeyDeleteOld => Need::Root,
            Ep::Permissions => Need::Admin("view_permissions"),
            Ep::Groups | Ep::GroupGet => Need::Admin("view_permission_groups"),
            Ep::GroupPut | Ep::GroupCreate => Need::Admin("update_permission_groups"),
            Ep::GroupDelete => Need::Admin("delete_permission_groups"),
        }
    }

    /// The status when the caller may.
    fn success(self) -> u16 {
        match self {
            Ep::Unknown => 404,
            _ => 200,
        }
    }

    /// True for the routes that exist only with API keys on.
    fn needs_api_keys(self) -> bool {
        matches!(
            self,
            Ep::KeyList
                | Ep::KeyListOld
                | Ep::KeyCreate
                | Ep::KeyUpdate
                | Ep::KeyDelete
                | Ep::KeyDeleteOld
                | Ep::Hand
                | Ep::Shake
        )
    }
}

/// The groups `with` and `without` for a row: exactly what it needs, and all the rest.
fn groups_for(need: Need) -> (Vec<&'static str>, Vec<&'static str>) {
    let all: Vec<&str> = ALL_PERMS.to_vec();
    let minus = |gone: &[&str]| all.iter().copied().filter(|p| !gone.contains(p)).collect();
    match need {
        Need::Public | Need::Authenticated => (vec![], vec![]),
        Need::All(ps) => (ps.to_vec(), minus(ps)),
        Need::Any(ps) => (vec![ps[0]], minus(ps)),
        Need::Admin(p) => (vec![p], minus(&[p])),
        Need::Root => (all.clone(), all),
    }
}

/// The status a cell must answer.
fn expected(ep: Ep, cred: Cred, auth_on: bool) -> u16 {
    if !auth_on {
        // Credentials mean nothing: every column gets what anyone gets.
        return if ep.needs_api_keys() {
            404
        } else {
            ep.success()
        };
    }
    let need = ep.need();
    if matches!(need, Need::Public) {
        return ep.success();
    }
    match cred {
        Cred::Root => ep.success(),
        Cred::KeyWith if matches!(need, Need::Root) => 403,
        Cred::KeyWith => ep.success(),
        Cred::KeyWithout if matches!(need, Need::Authenticated) => ep.success(),
        Cred::KeyWithout => 403,
        _ => 401,
    }
}

/// What each request works on: a template pushed as root, spare keys and groups.
struct Cx {
    base: String,
    root: String,
    template: String,
    file_key: String,
    /// A key for the shake row, with its private half (auth on only).
    shaker: Option<String>,
    public_key: String,
    n: std::sync::atomic::AtomicU64,
}

impl Cx {
    fn unique(&self, what: &str) -> String {
        let n = self.n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("{what}-{n}")
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn as_root(&self, method: Method, path: &str, body: Value) -> Answer {
        send_json_as(method, &self.url(path), &body, Some(&self.root)).await
    }

    /// A fresh template with `versions` versions of one small file each.
    async fn template(&self, versions: usize) -> String {
        let id = new_id();
        let name = self.unique("tpl");
        for v in 0..versions {
            let file = TestFile::new(
                &format!("{}.ank", &new_id().replace('-', "")),
                "image",
                1000,
                v as u64,
            );
            let r = try_push_as(
                &self.base,
                Some(&self.root),
                &id,
                &name,
                &format!("t{v}"),
                &[&file],
            )
            .await;
            assert_eq!(r.status, 200, "{r:?}");
        }
        id
    }

    /// A negotiated push session of one file, as root: (session, file key, bytes).
    async fn negotiated(&self) -> (String, String, Vec<u8>) {
        let file = TestFile::new(
            &format!("{}.ank", &new_id().replace('-', "")),
            "image",
            2000,
            7,
        );
        let plan = self
            .as_root(
                Method::POST,
                "/api/v1/push",
                push_request(&new_id(), &self.unique("neg"), "t", &[&file]),
            )
            .await;
        assert_eq!(plan.status, 200, "{plan:?}");
        let body = &plan.json["body"];
        (
            body["session"].as_str().unwrap().to_string(),
            body["files"][0]["key"].as_str().unwrap().to_string(),
            file.data,
        )
    }

    /// (method, path, body) of a fresh request for `ep`.
    async fn request(&self, ep: Ep) -> (Method, String, Option<Vec<u8>>) {
        let j = |v: Value| Some(serde_json::to_vec(&v).unwrap());
        let t = &self.template;
        match ep {
            Ep::Livez => (Method::GET, "/livez".into(), None),
            Ep::Readyz => (Method::GET, "/readyz".into(), None),
            Ep::Index => (Method::GET, "/".into(), None),
            Ep::OpenApi => (Method::GET, "/openapi.json".into(), None),
            Ep::Status => (Method::GET, "/registry/status".into(), None),
            Ep::Disk => (Method::GET, "/registry/disk".into(), None),
            Ep::ListV1 => (Method::GET, "/registry/vm".into(), None),
            Ep::ListV2 => (Method::GET, "/registry/v2/vm".into(), None),
            Ep::Template => (Method::GET, format!("/registry/vm?id={t}"), None),
            Ep::Info => (Method::GET, format!("/registry/vm/info?id={t}"), None),
            Ep::Arch => (
                Method::PUT,
                "/registry/vm/arch".into(),
                j(json!({"id": t, "arch": "arm64"})),
            ),
            Ep::Revert => {
                let id = self.template(2).await;
                (Method::DELETE, format!("/registry/revert?id={id}"), None)
            }
            Ep::DeleteVm => {
                let id = self.template(1).await;
                (Method::DELETE, format!("/registry/vm?id={id}"), None)
            }
            Ep::Negotiate => {
                let file = TestFile::new("x.ank", "image", 10, 1);
                (
                    Method::POST,
                    "/api/v1/push".into(),
                    j(push_request(&new_id(), &self.unique("neg"), "t", &[&file])),
                )
            }
            Ep::SessionStatus => {
                let (s, _, _) = self.negotiated().await;
                (Method::GET, format!("/api/v1/push/{s}"), None)
            }
            Ep::Abort => {
                let (s, _, _) = self.negotiated().await;
                (Method::DELETE, format!("/api/v1/push/{s}"), None)
            }
            Ep::Upload => {
                let (s, key, data) = self.negotiated().await;
                let path = format!("/api/v1/push/{s}/files/{}?offset=0", encode_path(&key));
                (Method::PUT, path, Some(data))
            }
            Ep::Commit => {
                let (s, key, data) = self.negotiated().await;
                let path = format!("/api/v1/push/{s}/files/{}?offset=0", encode_path(&key));
                let up = send(Method::PUT, &self.url(&path), Some(data), Some(&self.root)).await;
                assert_eq!(up.status, 200, "{up:?}");
                (Method::POST, format!("/api/v1/push/{s}/commit"), None)
            }
            Ep::Manifest => (Method::GET, format!("/api/v1/templates/{t}/manifest"), None),
            Ep::FileGet => (
                Method::GET,
                format!("/api/v1/files/{}", encode_path(&self.file_key)),
                None,
            ),
            Ep::FileHead => (
                Method::HEAD,
                format!("/api/v1/files/{}", encode_path(&self.file_key)),
                None,
            ),
            Ep::KeyList => (Method::GET, "/v1/apikey".into(), None),
            Ep::KeyListOld => (Method::GET, "/api/v1/apikey".into(), None),
            Ep::KeyCreate => (
                Method::POST,
                "/v1/apikey".into(),
                j(
                    json!({"id": self.unique("made"), "ttl": 600, "groups": ["g"], "publicKey": self.public_key}),
                ),
            ),
            Ep::KeyUpdate => (
                Method::PUT,
                "/v1/apikey".into(),
                j(json!({"id": "with", "groups": ["with"], "ttl": 3600})),
            ),
            Ep::KeyDelete | Ep::KeyDeleteOld => {
                let id = self.unique("doomed");
                // Made as root when keys are on; with keys off the delete is refused anyway.
                self.as_root(
                    Method::POST,
                    "/v1/apikey",
                    json!({"id": id, "ttl": 600, "groups": [], "publicKey": self.public_key}),
                )
                .await;
                let path = match ep {
                    Ep::KeyDelete => "/v1/apikey".to_string(),
                    _ => format!("/api/v1/apikey?id={id}"),
                };
                let body = match ep {
                    Ep::KeyDelete => j(json!({"id": id})),
                    _ => None,
                };
                (Method::DELETE, path, body)
            }
            Ep::Permissions => (Method::GET, "/admin/api/v1/permission".into(), None),
            Ep::Groups => (Method::GET, "/admin/api/v1/permission/group".into(), None),
            Ep::GroupGet => (
                Method::GET,
                "/admin/api/v1/permission/group/with".into(),
                None,
            ),
            Ep::GroupPut => (
                Method::PUT,
                format!("/admin/api/v1/permission/group/{}", self.unique("put")),
                j(json!({"permissions": ["list_vms"]})),
            ),
            Ep::GroupCreate => (
                Method::POST,
                "/admin/api/v1/permission/group".into(),
                j(json!({"name": self.unique("new"), "permissions": ["pull_vm"]})),
            ),
            Ep::GroupDelete => {
                let name = self.unique("gone");
                let made = self
                    .as_root(
                        Method::PUT,
                        &format!("/admin/api/v1/permission/group/{name}"),
                        json!({"permissions": []}),
                    )
                    .await;
                assert_eq!(made.status, 200, "{made:?}");
                (
                    Method::DELETE,
                    format!("/admin/api/v1/permission/group/{name}"),
                    None,
                )
            }
            Ep::Hand => (
                Method::POST,
                "/tap/v1/hand".into(),
                j(json!({"id": "with"})),
            ),
            Ep::Shake => match &self.shaker {
                Some(private) => {
                    let secret = hand(&self.base, "shaker", private).await;
                    (
                        Method::POST,
                        "/tap/v1/shake".into(),
                        j(json!({"id": "shaker", "secret": secret})),
                    )
                }
                None => (
                    Method::POST,
                    "/tap/v1/shake".into(),
                    j(json!({"id": "shaker", "secret": "x"})),
                ),
            },
            Ep::Unknown => (Method::GET, "/no/such/endpoint".into(), None),
        }
    }
}

/// A PKIX DER public key, base64, made by the test.
fn test_public_key() -> String {
    use rsa::pkcs8::EncodePublicKey;
    let private = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap();
    B64.encode(
        rsa::RsaPublicKey::from(&private)
            .to_public_key_der()
            .unwrap()
            .as_bytes(),
    )
}

/// Walks every cell; answers the table of mismatches (empty when all match).
async fn walk(cx: &Cx, headers: &Headers, auth_on: bool) -> Vec<String> {
    let mut wrong = Vec::new();
    for ep in ENDPOINTS {
        // With authentication off the groups are open to all and change nothing.
        {
            let (with, without) = groups_for(ep.need());
            for (group, perms) in [("with", with), ("without", without)] {
                let r = cx
                    .as_root(
                        Method::PUT,
                        &format!("/admin/api/v1/permission/group/{group}"),
                        json!({ "permissions": perms }),
                    )
                    .await;
                assert_eq!(r.status, 200, "{r:?}");
            }
        }
        for cred in CREDS {
            let (method, path, body) = cx.request(ep).await;
            let head = method == Method::HEAD;
            let a = send(
                method.clone(),
                &cx.url(&path),
                body,
                headers[&cred].as_deref(),
            )
            .await;
            let want = expected(ep, cred, auth_on);
            let mut problem = None;
            if a.status != want {
                problem = Some(format!("status {} ({})", a.status, a.text));
            } else if want == 401 {
                let challenges = a.challenges.join(", ");
                if !(challenges.contains("Basic realm=\"vmreg\"")
                    && challenges.contains("Bearer realm="))
                {
                    problem = Some(format!("WWW-Authenticate {challenges:?}"));
                } else if !head
                    && (a.json["status"] != "FAIL"
                        || a.json["message"] != "Authentication Required")
                {
                    problem = Some(format!("401 body {}", a.text));
                }
            } else if want == 403 && !head {
                let named = match ep.need() {
                    Need::All(ps) | Need::Any(ps) => ps[0],
                    Need::Admin(p) => p,
                    _ => "root",
                };
                let message = a.json["message"].as_str().unwrap_or("");
                if a.json["status"] != "FAIL" || !message.contains(named) {
                    problem = Some(format!("403 body {} does not name {named}", a.text));
                }
            }
            if let Some(p) = problem {
                wrong.push(format!("{ep:?} × {cred:?}: want {want}, got {p}"));
            }
        }
    }
    wrong
}

async fn fixture(base: &str, root: &str) -> (String, String) {
    let id = new_id();
    let file = TestFile::new(
        &format!("{}.ank", &new_id().replace('-', "")),
        "image",
        5000,
        9,
    );
    let r = try_push_as(base, Some(root), &id, "matrix", "v1", &[&file]).await;
    assert_eq!(r.status, 200, "{r:?}");
    let m = get_as(&format!("{base}/api/v1/templates/{id}/manifest"), root).await;
    let key = m.json["body"]["files"][0]["key"]
        .as_str()
        .unwrap()
        .to_string();
    (id, key)
}

#[tokio::test]
async fn every_endpoint_by_every_credential() {
    let s = Server::start_in_with_env(
        Namespace::new(),
        &auth_flags(&["--enable-authorization", "--jwt-secret", JWT_SECRET]),
        &[("RUST_LOG", "debug")],
    );
    let headers = make_headers(&s).await;
    let shaker = create_key(&s.url, &root(), "shaker", 3600, &[]).await;
    let (template, file_key) = fixture(&s.url, &root()).await;
    let cx = Cx {
        base: s.url.clone(),
        root: root(),
        template,
        file_key,
        shaker: Some(shaker.clone()),
        public_key: test_public_key(),
        n: Default::default(),
    };
    let wrong = walk(&cx, &headers, true).await;
    assert!(
        wrong.is_empty(),
        "{} of {} cells differ:\n{}",
        wrong.len(),
        ENDPOINTS.len() * CREDS.len(),
        wrong.join("\n")
    );

    // The same credentials against a registry with authentication off: all open.
    let open = Server::start();
    let (template, file_key) = fixture(&open.url, &root()).await;
    let cx = Cx {
        base: open.url.clone(),
        template,
        file_key,
        shaker: None,
        ..cx
    };
    let wrong = walk(&cx, &headers, false).await;
    assert!(wrong.is_empty(), "auth off:\n{}", wrong.join("\n"));

    // Nothing secret reached the log, at debug level, through all of that.
    let log = s.log();
    assert!(log.contains("API key session opened"), "the log is read");
    for (what, secret) in [
        ("root token", ROOT_TOKEN.to_string()),
        ("signing secret", JWT_SECRET.to_string()),
        ("private key", shaker[..40].to_string()),
    ] {
        assert!(!log.contains(&secret), "the log shows the {what}");
    }
    for (cred, header) in &headers {
        if let Some(h) = header {
            let credential = h.split_once(' ').map(|(_, c)| c).unwrap_or(h);
            assert!(
                credential.len() < 8 || !log.contains(credential),
                "the log shows the {cred:?} credential"
            );
        }
    }
    assert!(
        !log.to_ascii_lowercase().contains("authorization:"),
        "a header was logged"
    );
}

async fn get_as(url: &str, authorization: &str) -> Answer {
    send(Method::GET, url, None, Some(authorization)).await
}

fn sorted_keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
    k.sort();
    k
}

#[tokio::test]
async fn api_keys_in_the_vendors_shapes() {
    let s = Server::start_with(&auth_flags(&[]));
    let (base, root) = (s.url.as_str(), root());
    let url = format!("{base}/v1/apikey");

    // Generated pair: the body is the PKCS#1 DER private key, and it opens a session.
    let private = create_key(base, &root, "node-1", 86400, &["ci", "qa"]).await;
    let der = B64.decode(&private).unwrap();
    use rsa::pkcs1::DecodeRsaPrivateKey;
    assert!(rsa::RsaPrivateKey::from_pkcs1_der(&der).is_ok());
    let bearer = session(base, "node-1", &private).await;
    assert_eq!(status_as(base, &bearer).await, 200);

    // A caller's own public key, groups as the seed's comma-separated string.
    let given = send_json_as(
        Method::POST,
        &url,
        &json!({"id": "node-2", "ttl": "60", "groups": "a, b", "publicKey": test_public_key()}),
        Some(&root),
    )
    .await;
    assert_eq!(
        given.json,
        json!({"status": "OK", "message": "", "body": ""}),
        "{given:?}"
    );

    let list = get_as(&url, &root).await;
    let body = list.json["body"].as_array().unwrap().clone();
    assert_eq!(body.len(), 2, "{list:?}");
    for k in &body {
        assert_eq!(sorted_keys(k), ["created", "expiration", "groups", "id"]);
        for t in ["created", "expiration"] {
            let text = k[t].as_str().unwrap();
            assert!(
                text.len() >= 20 && text.as_bytes()[10] == b'T',
                "{t}: {text}"
            );
        }
    }
    assert_eq!(body[0]["groups"], json!(["ci", "qa"]));
    assert_eq!(body[1]["groups"], json!(["a", "b"]));
    let one = get_as(&format!("{base}/api/v1/apikey?id=node-2"), &root).await;
    assert_eq!(one.json["body"].as_array().unwrap().len(), 1, "{one:?}");
    assert_eq!(one.json["body"][0]["id"], "node-2");

    // PUT and DELETE answer exactly the seed's envelope, with no body.
    let put = send_json_as(
        Method::PUT,
        &url,
        &json!({"id": "node-2", "groups": ["z"]}),
        Some(&root),
    )
    .await;
    assert_eq!(
        put.text.parse::<Value>().unwrap(),
        json!({"status": "OK", "message": ""})
    );
    let one = get_as(&format!("{url}?id=node-2"), &root).await;
    assert_eq!(one.json["body"][0]["groups"], json!(["z"]));

    // Bad input: FAIL envelopes, nothing changed.
    for (method, body, status) in [
        (Method::POST, json!({"id": "node-1", "ttl": 5}), 409),
        (Method::POST, json!({"id": "no-ttl"}), 400),
        (Method::POST, json!({"id": "bad ttl", "ttl": 5}), 400),
        (Method::POST, json!({"id": "neg", "ttl": -5}), 400),
        (
            Method::POST,
            json!({"id": "pk", "ttl": 5, "publicKey": "bm90IGEga2V5"}),
            400,
        ),
        (Method::PUT, json!({"id": "nobody", "ttl": 5}), 404),
        (Method::DELETE, json!({"id": "nobody"}), 404),
    ] {
        let a = send_json_as(method.clone(), &url, &body, Some(&root)).await;
        assert_eq!(
            (a.status, a.json["status"].as_str()),
            (status, Some("FAIL")),
            "{method} {body}: {a:?}"
        );
    }
    let list = get_as(&url, &root).await;
    assert_eq!(list.json["body"].as_array().unwrap().len(), 2);

    // An unknown id and a wrong secret get the same answer; hand reveals nothing either.
    let unknown = shake(base, "nobody", "secret").await;
    let _ = hand(base, "node-1", &private).await;
    let wrong = shake(base, "node-1", "secret").await;
    assert_fail_401(&unknown, "unknown id");
    assert_eq!((unknown.status, &unknown.text), (wrong.status, &wrong.text));
    let fake = send_json_as(
        Method::POST,
        &format!("{base}/tap/v1/hand"),
        &json!({"id": "nobody"}),
        None,
    )
    .await;
    assert_eq!(
        (fake.status, B64.decode(fake.text.trim()).unwrap().len()),
        (200, 256)
    );

    // Deleting ends the session at once; by body or by query.
    let del = send_json_as(Method::DELETE, &url, &json!({"id": "node-1"}), Some(&root)).await;
    assert_eq!(
        del.text.parse::<Value>().unwrap(),
        json!({"status": "OK", "message": ""})
    );
    assert_eq!(status_as(base, &bearer).await, 401);
    let del = send(
        Method::DELETE,
        &format!("{url}?id=node-2"),
        None,
        Some(&root),
    )
    .await;
    assert_eq!(del.status, 200, "{del:?}");
    let list = get_as(&url, &root).await;
    assert_eq!(list.json["body"], json!([]));

    // The OpenAPI document covers the new endpoints and both security schemes.
    let doc = get_as(&format!("{base}/openapi.json"), &root).await.json;
    for (path, methods) in [
        ("/v1/apikey", &["get", "post", "put", "delete"][..]),
        ("/api/v1/apikey", &["get", "post", "put", "delete"]),
        ("/tap/v1/hand", &["post"]),
        ("/tap/v1/shake", &["post"]),
        ("/admin/api/v1/permission", &["get"]),
        ("/admin/api/v1/retention", &["post"]),
        ("/admin/api/v1/permission/group", &["get", "post"]),
        (
            "/admin/api/v1/permission/group/{group}",
            &["get", "put", "post", "delete"],
        ),
    ] {
        for m in methods {
            assert!(
                doc["paths"][path][m].is_object(),
                "openapi lacks {m} {path}"
            );
        }
    }
    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(
        (
            schemes["rootToken"]["scheme"].as_str(),
            schemes["apiKeySession"]["scheme"].as_str()
        ),
        (Some("basic"), Some("bearer"))
    );

    // A re-created id does not bring the old sessions back.
    let again = create_key(base, &root, "node-1", 86400, &[]).await;
    assert_eq!(status_as(base, &bearer).await, 401);
    let fresh = session(base, "node-1", &again).await;
    assert_eq!(status_as(base, &fresh).await, 200);
}

#[tokio::test]
async fn groups_are_seeded_from_the_config_file_and_administered_by_root() {
    let ns = Namespace::new();
    let file = ns.dir.join("vmreg.yaml");
    std::fs::write(
        &file,
        "permission_groups:\n  readers: [list_vms, pull_vm, download_vm]\n",
    )
    .unwrap();
    let cfg = file.display().to_string();
    let mut flags = auth_flags(&["--enable-authorization"]);
    let cfg: &'static str = Box::leak(cfg.into_boxed_str());
    flags.extend_from_slice(&["--config", cfg]);
    let s = Server::start_in(ns, &flags);
    let (base, root) = (s.url.as_str(), root());
    let groups = get_as(&format!("{base}/admin/api/v1/permission/group"), &root).await;
    assert_eq!(
        groups.json["body"],
        json!([{"name": "readers", "permissions": ["list_vms", "pull_vm", "download_vm"]}]),
        "{groups:?}"
    );
    let private = create_key(base, &root, "reader", 600, &["readers"]).await;
    let reader = session(base, "reader", &private).await;
    let list = get_as(&format!("{base}/registry/v2/vm"), &reader).await;
    assert_eq!(list.status, 200, "{list:?}");
    let disk = get_as(&format!("{base}/registry/disk"), &reader).await;
    assert_eq!(disk.status, 403);
    assert!(
        disk.json["message"]
            .as_str()
            .unwrap()
            .contains("get_disk_info"),
        "{disk:?}"
    );

    // Changing a group changes what its live sessions may do, at once.
    let put = send_json_as(
        Method::PUT,
        &format!("{base}/admin/api/v1/permission/group/readers"),
        &json!({"permissions": ["get_disk_info"]}),
        Some(&root),
    )
    .await;
    assert_eq!(put.status, 200, "{put:?}");
    let disk = get_as(&format!("{base}/registry/disk"), &reader).await;
    assert_eq!(disk.status, 200);
    let list = get_as(&format!("{base}/registry/v2/vm"), &reader).await;
    assert_eq!(list.status, 403);

    let bad = send_json_as(
        Method::PUT,
        &format!("{base}/admin/api/v1/permission/group/readers"),
        &json!({"permissions": ["fly"]}),
        Some(&root),
    )
    .await;
    assert_eq!(bad.status, 400, "{bad:?}");
    let all = get_as(&format!("{base}/admin/api/v1/permission"), &root).await;
    assert_eq!(all.json["body"].as_array().unwrap().len(), ALL_PERMS.len());
    let del = send(
        Method::DELETE,
        &format!("{base}/admin/api/v1/permission/group/readers"),
        None,
        Some(&root),
    )
    .await;
    assert_eq!(del.status, 200);
    let disk = get_as(&format!("{base}/registry/disk"), &reader).await;
    assert_eq!(disk.status, 403, "a deleted group grants nothing");
    let again = send(
        Method::DELETE,
        &format!("{base}/admin/api/v1/permission/group/readers"),
        None,
        Some(&root),
    )
    .await;
    assert_eq!(again.status, 404);
}

#[tokio::test]
async fn an_expiring_session_does_not_cut_a_running_upload() {
    let s = Server::start_with(&auth_flags(&["--api-keys-session-ttl", "3s"]));
    let (base, root) = (s.url.as_str(), root());
    let private = create_key(base, &root, "slow", 600, &[]).await;
    let bearer = session(base, "slow", &private).await;

    let file = TestFile::new("slow.ank", "image", 9 * 64 * 1024, 5);
    let plan = send_json_as(
        Method::POST,
        &format!("{base}/api/v1/push"),
        &push_request(&new_id(), "slow", "t", &[&file]),
        Some(&bearer),
    )
    .await;
    assert_eq!(plan.status, 200, "{plan:?}");
    let session_id = plan.json["body"]["session"].as_str().unwrap().to_string();
    let key = plan.json["body"]["files"][0]["key"]
        .as_str()
        .unwrap()
        .to_string();

    // The body trickles for about 4 s; the session, made moments ago, had at most 3 s left.
    let chunks: Vec<Vec<u8>> = file.data.chunks(64 * 1024).map(<[u8]>::to_vec).collect();
    let stream = futures_util::stream::iter(chunks).then(|c| async move {
        tokio::time::sleep(Duration::from_millis(450)).await;
        Ok::<_, std::io::Error>(c)
    });
    let started = Instant::now();
    let up = reqwest::Client::new()
        .put(format!(
            "{base}/api/v1/push/{session_id}/files/{}?offset=0",
            encode_path(&key)
        ))
        .header("Authorization", &bearer)
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert!(started.elapsed() > Duration::from_secs(4));
    assert_eq!(up.status().as_u16(), 200, "{:?}", up.text().await);

    // The next request with the expired session is refused; a new session commits.
    let late = send(
        Method::POST,
        &format!("{base}/api/v1/push/{session_id}/commit"),
        None,
        Some(&bearer),
    )
    .await;
    assert_fail_401(&late, "expired session");
    let renewed = session(base, "slow", &private).await;
    let commit = send(
        Method::POST,
        &format!("{base}/api/v1/push/{session_id}/commit"),
        None,
        Some(&renewed),
    )
    .await;
    assert_eq!(commit.status, 200, "{commit:?}");
}

use futures_util::StreamExt;
