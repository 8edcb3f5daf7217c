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
use common::raw::{send_raw, RawReply};
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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
    OciBase,
    OciToken,
    OciCatalog,
    OciTags,
    OciManifestGet,
    OciManifestHead,
    OciManifestPut,
    OciManifestDelete,
    OciReferrers,
    OciBlobGet,
    OciBlobHead,
    OciBlobDelete,
    OciUploadStart,
    OciUploadStatus,
    OciUploadPatch,
    OciUploadFinish,
    OciUploadCancel,
}

const ENDPOINTS: [Ep; 53] = [
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
    Ep::OciBase,
    Ep::OciToken,
    Ep::OciCatalog,
    Ep::OciTags,
    Ep::OciManifestGet,
    Ep::OciManifestHead,
    Ep::OciManifestPut,
    Ep::OciManifestDelete,
    Ep::OciReferrers,
    Ep::OciBlobGet,
    Ep::OciBlobHead,
    Ep::OciBlobDelete,
    Ep::OciUploadStart,
    Ep::OciUploadStatus,
    Ep::OciUploadPatch,
    Ep::OciUploadFinish,
    Ep::OciUploadCancel,
];

impl Ep {
    fn need(self) -> Need {
        match self {
            Ep::Livez | Ep::Readyz | Ep::Hand | Ep::Shake => Need::Public,
            Ep::OpenApi | Ep::Status | Ep::Unknown | Ep::OciBase | Ep::OciToken => {
                Need::Authenticated
            }
            Ep::Index => Need::All(&["index"]),
            Ep::Disk => Need::All(&["get_disk_info"]),
            Ep::ListV1 | Ep::ListV2 | Ep::Template | Ep::Info | Ep::OciCatalog => {
                Need::All(&["list_vms"])
            }
            Ep::Arch | Ep::OciManifestPut => Need::All(&["push_vm"]),
            Ep::Revert => Need::All(&["revert"]),
            Ep::DeleteVm | Ep::OciManifestDelete | Ep::OciBlobDelete => Need::All(&["delete_vm"]),
            Ep::Negotiate => Need::All(&["head_push_vm", "push_vm"]),
            Ep::SessionStatus | Ep::Abort => Need::All(&["head_push_vm"]),
            Ep::Upload
            | Ep::OciUploadStart
            | Ep::OciUploadStatus
            | Ep::OciUploadPatch
            | Ep::OciUploadFinish
            | Ep::OciUploadCancel => Need::All(&["upload_file"]),
            Ep::Commit => Need::All(&["push_vm"]),
            Ep::Manifest
            | Ep::OciTags
            | Ep::OciManifestGet
            | Ep::OciManifestHead
            | Ep::OciReferrers => Need::All(&["pull_vm"]),
            Ep::FileGet | Ep::FileHead | Ep::OciBlobGet | Ep::OciBlobHead => {
                Need::Any(&["download_vm", "download_file"])
            }
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
            Ep::OciManifestPut | Ep::OciUploadFinish => 201,
            Ep::OciManifestDelete | Ep::OciBlobDelete | Ep::OciUploadStart | Ep::OciUploadPatch => {
                202
            }
            Ep::OciUploadStatus | Ep::OciUploadCancel => 204,
            _ => 200,
        }
    }

    /// True for the OCI Distribution API's rows, whose refusals have the spec's shape.
    fn oci(self) -> bool {
        format!("{self:?}").starts_with("Oci")
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

/// How the server under test decides: authentication on or off, and with it on, whether
/// groups are consulted (`--enable-authorization`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Off,
    KeysOnly,
    Authorization,
}

/// The status a cell must answer.
fn expected(ep: Ep, cred: Cred, mode: Mode) -> u16 {
    if mode == Mode::Off {
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
    let groups_consulted = mode == Mode::Authorization;
    match cred {
        Cred::Root => ep.success(),
        Cred::KeyWith | Cred::KeyWithout if matches!(need, Need::Root) => 403,
        // Without authorization groups are not consulted, so a key gets the permission
        // rows and none of the administration rows (root only, then).
        Cred::KeyWith | Cred::KeyWithout if !groups_consulted => match need {
            Need::Admin(_) => 403,
            _ => ep.success(),
        },
        Cred::KeyWith => ep.success(),
        Cred::KeyWithout if matches!(need, Need::Authenticated) => ep.success(),
        Cred::KeyWithout => 403,
        _ => 401,
    }
}

/// One request of a row: method, target (path and query, as sent), headers and body.
struct Req {
    method: Method,
    target: String,
    content_type: Option<&'static str>,
    body: Vec<u8>,
}

impl Req {
    fn new(method: Method, target: impl Into<String>) -> Req {
        Req {
            method,
            target: target.into(),
            content_type: None,
            body: Vec::new(),
        }
    }

    fn json(method: Method, target: impl Into<String>, body: Value) -> Req {
        Req {
            body: serde_json::to_vec(&body).unwrap(),
            content_type: Some("application/json"),
            ..Req::new(method, target)
        }
    }

    fn bytes(method: Method, target: impl Into<String>, ty: &'static str, body: Vec<u8>) -> Req {
        Req {
            body,
            content_type: Some(ty),
            ..Req::new(method, target)
        }
    }

    /// Sends it as written to `base`, with this `Authorization` header.
    async fn send(&self, base: &str, target: &str, authorization: Option<&str>) -> RawReply {
        let mut headers = Vec::new();
        if let Some(a) = authorization {
            headers.push(("Authorization", a));
        }
        if let Some(ty) = self.content_type {
            headers.push(("Content-Type", ty));
        }
        send_raw(base, self.method.as_str(), target, &headers, &self.body).await
    }
}

/// The OCI repository every OCI row works on, with a blob and a manifest pushed as root.
const OCI_REPO: &str = "matrix/oci";
const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

/// What each request works on: a template and an OCI repository pushed as root, spare
/// keys and groups, and the replicas requests go to in turn.
struct Cx {
    bases: Vec<String>,
    root: String,
    template: String,
    file_key: String,
    blob: String,
    manifest: String,
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

    /// The next replica, in turn: any replica must answer any request the same.
    fn base(&self) -> &str {
        let n = self.n.fetch_add(1, std::sync::atomic::Ordering::Relaxed) as usize;
        &self.bases[n % self.bases.len()]
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base())
    }

    async fn as_root(&self, method: Method, path: &str, body: Value) -> Answer {
        send_json_as(method, &self.url(path), &body, Some(&self.root)).await
    }

    async fn raw_as_root(&self, req: &Req) -> RawReply {
        req.send(self.base(), &req.target, Some(&self.root)).await
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
                self.base(),
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

    /// A manifest of the repository's blob, made unique by an annotation: (bytes, digest).
    fn oci_manifest(&self) -> (Vec<u8>, String) {
        let manifest = oci_manifest_of(&self.blob, &self.unique("m"));
        let digest = format!("sha256:{}", sha256_hex(&manifest));
        (manifest, digest)
    }

    /// An upload session opened as root; answers its location (path and query).
    async fn oci_upload(&self) -> String {
        let start = Req::new(Method::POST, format!("/v2/{OCI_REPO}/blobs/uploads/"));
        let r = self.raw_as_root(&start).await;
        assert_eq!(r.status, 202, "{r:?}");
        let location = r.header("location").expect("a Location").to_string();
        match location.find("/v2/") {
            Some(at) => location[at..].to_string(),
            None => location,
        }
    }

    /// A fresh request for `ep`.
    async fn request(&self, ep: Ep) -> Req {
        let t = &self.template;
        let get = |path: String| Req::new(Method::GET, path);
        match ep {
            Ep::Livez => get("/livez".into()),
            Ep::Readyz => get("/readyz".into()),
            Ep::Index => get("/".into()),
            Ep::OpenApi => get("/openapi.json".into()),
            Ep::Status => get("/registry/status".into()),
            Ep::Disk => get("/registry/disk".into()),
            Ep::ListV1 => get("/registry/vm".into()),
            Ep::ListV2 => get("/registry/v2/vm".into()),
            Ep::Template => get(format!("/registry/vm?id={t}")),
            Ep::Info => get(format!("/registry/vm/info?id={t}")),
            Ep::Arch => Req::json(
                Method::PUT,
                "/registry/vm/arch",
                json!({"id": t, "arch": "arm64"}),
            ),
            Ep::Revert => {
                let id = self.template(2).await;
                Req::new(Method::DELETE, format!("/registry/revert?id={id}"))
            }
            Ep::DeleteVm => {
                let id = self.template(1).await;
                Req::new(Method::DELETE, format!("/registry/vm?id={id}"))
            }
            Ep::Negotiate => {
                let file = TestFile::new("x.ank", "image", 10, 1);
                Req::json(
                    Method::POST,
                    "/api/v1/push",
                    push_request(&new_id(), &self.unique("neg"), "t", &[&file]),
                )
            }
            Ep::SessionStatus => {
                let (s, _, _) = self.negotiated().await;
                get(format!("/api/v1/push/{s}"))
            }
            Ep::Abort => {
                let (s, _, _) = self.negotiated().await;
                Req::new(Method::DELETE, format!("/api/v1/push/{s}"))
            }
            Ep::Upload => {
                let (s, key, data) = self.negotiated().await;
                let path = format!("/api/v1/push/{s}/files/{}?offset=0", encode_path(&key));
                Req::bytes(Method::PUT, path, "application/octet-stream", data)
            }
            Ep::Commit => {
                let (s, key, data) = self.negotiated().await;
                let path = format!("/api/v1/push/{s}/files/{}?offset=0", encode_path(&key));
                let up = send(Method::PUT, &self.url(&path), Some(data), Some(&self.root)).await;
                assert_eq!(up.status, 200, "{up:?}");
                Req::new(Method::POST, format!("/api/v1/push/{s}/commit"))
            }
            Ep::Manifest => get(format!("/api/v1/templates/{t}/manifest")),
            Ep::FileGet => get(format!("/api/v1/files/{}", encode_path(&self.file_key))),
            Ep::FileHead => Req::new(
                Method::HEAD,
                format!("/api/v1/files/{}", encode_path(&self.file_key)),
            ),
            Ep::KeyList => get("/v1/apikey".into()),
            Ep::KeyListOld => get("/api/v1/apikey".into()),
            Ep::KeyCreate => Req::json(
                Method::POST,
                "/v1/apikey",
                json!({"id": self.unique("made"), "ttl": 600, "groups": ["g"], "publicKey": self.public_key}),
            ),
            Ep::KeyUpdate => Req::json(
                Method::PUT,
                "/v1/apikey",
                json!({"id": "with", "groups": ["with"], "ttl": 3600}),
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
                match ep {
                    Ep::KeyDelete => Req::json(Method::DELETE, "/v1/apikey", json!({"id": id})),
                    _ => Req::new(Method::DELETE, format!("/api/v1/apikey?id={id}")),
                }
            }
            Ep::Permissions => get("/admin/api/v1/permission".into()),
            Ep::Groups => get("/admin/api/v1/permission/group".into()),
            Ep::GroupGet => get("/admin/api/v1/permission/group/with".into()),
            Ep::GroupPut => Req::json(
                Method::PUT,
                format!("/admin/api/v1/permission/group/{}", self.unique("put")),
                json!({"permissions": ["list_vms"]}),
            ),
            Ep::GroupCreate => Req::json(
                Method::POST,
                "/admin/api/v1/permission/group",
                json!({"name": self.unique("new"), "permissions": ["pull_vm"]}),
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
                Req::new(
                    Method::DELETE,
                    format!("/admin/api/v1/permission/group/{name}"),
                )
            }
            Ep::Hand => Req::json(Method::POST, "/tap/v1/hand", json!({"id": "with"})),
            Ep::Shake => match &self.shaker {
                Some(private) => {
                    let secret = hand(self.base(), "shaker", private).await;
                    Req::json(
                        Method::POST,
                        "/tap/v1/shake",
                        json!({"id": "shaker", "secret": secret}),
                    )
                }
                None => Req::json(
                    Method::POST,
                    "/tap/v1/shake",
                    json!({"id": "shaker", "secret": "x"}),
                ),
            },
            Ep::Unknown => get("/no/such/endpoint".into()),
            Ep::OciBase => get("/v2/".into()),
            Ep::OciToken => get("/v2/token?service=vmreg".into()),
            Ep::OciCatalog => get("/v2/_catalog".into()),
            Ep::OciTags => get(format!("/v2/{OCI_REPO}/tags/list")),
            Ep::OciManifestGet => get(format!("/v2/{OCI_REPO}/manifests/latest")),
            Ep::OciManifestHead => {
                Req::new(Method::HEAD, format!("/v2/{OCI_REPO}/manifests/latest"))
            }
            Ep::OciManifestPut => {
                let (manifest, _) = self.oci_manifest();
                let path = format!("/v2/{OCI_REPO}/manifests/{}", self.unique("t"));
                Req::bytes(Method::PUT, path, MANIFEST_TYPE, manifest)
            }
            Ep::OciManifestDelete => {
                let (manifest, digest) = self.oci_manifest();
                let path = format!("/v2/{OCI_REPO}/manifests/{}", self.unique("t"));
                let put = Req::bytes(Method::PUT, path, MANIFEST_TYPE, manifest);
                let r = self.raw_as_root(&put).await;
                assert_eq!(r.status, 201, "{r:?}");
                Req::new(Method::DELETE, format!("/v2/{OCI_REPO}/manifests/{digest}"))
            }
            Ep::OciReferrers => get(format!("/v2/{OCI_REPO}/referrers/{}", self.manifest)),
            Ep::OciBlobGet => get(format!("/v2/{OCI_REPO}/blobs/{}", self.blob)),
            Ep::OciBlobHead => {
                Req::new(Method::HEAD, format!("/v2/{OCI_REPO}/blobs/{}", self.blob))
            }
            Ep::OciBlobDelete => {
                let data = self.unique("doomed blob").into_bytes();
                let digest = oci_push_blob(self.base(), &self.root, &data).await;
                Req::new(Method::DELETE, format!("/v2/{OCI_REPO}/blobs/{digest}"))
            }
            Ep::OciUploadStart => Req::new(Method::POST, format!("/v2/{OCI_REPO}/blobs/uploads/")),
            Ep::OciUploadStatus => get(self.oci_upload().await),
            Ep::OciUploadPatch => Req::bytes(
                Method::PATCH,
                self.oci_upload().await,
                "application/octet-stream",
                b"some bytes".to_vec(),
            ),
            Ep::OciUploadFinish => {
                let location = self.oci_upload().await;
                let data = self.unique("finished blob").into_bytes();
                let digest = format!("sha256:{}", sha256_hex(&data));
                let join = if location.contains('?') { '&' } else { '?' };
                Req::bytes(
                    Method::PUT,
                    format!("{location}{join}digest={digest}"),
                    "application/octet-stream",
                    data,
                )
            }
            Ep::OciUploadCancel => Req::new(Method::DELETE, self.oci_upload().await),
        }
    }
}

/// An OCI image manifest whose config and one layer are `blob`, annotated with `note`.
fn oci_manifest_of(blob: &str, note: &str) -> Vec<u8> {
    let size = BLOB.len();
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": blob, "size": size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": blob, "size": size}],
        "annotations": {"note": note},
    }))
    .unwrap()
}

/// The bytes of the OCI repository's blob.
const BLOB: &[u8] = b"{\"architecture\":\"arm64\",\"os\":\"darwin\"}";

/// Uploads `data` to the OCI repository in one POST as root; answers its digest.
async fn oci_push_blob(base: &str, root: &str, data: &[u8]) -> String {
    let digest = format!("sha256:{}", sha256_hex(data));
    let target = format!("/v2/{OCI_REPO}/blobs/uploads/?digest={digest}");
    let headers = [
        ("Authorization", root),
        ("Content-Type", "application/octet-stream"),
    ];
    let r = send_raw(base, "POST", &target, &headers, data).await;
    assert_eq!(r.status, 201, "{r:?}");
    digest
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

/// Gives the `with` and `without` groups what `ep` needs and all the rest.
async fn set_groups_for(cx: &Cx, ep: Ep) {
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

/// What is wrong with a refusal's shape, if anything: a 401 challenges and says nothing
/// more, a 403 names what is missing, each in the body its front door uses.
fn refusal_problem(ep: Ep, status: u16, a: &RawReply, head: bool) -> Option<String> {
    let json: Value = serde_json::from_slice(&a.body).unwrap_or(Value::Null);
    let (status_field, message) = match ep.oci() {
        true => (&json["errors"][0]["code"], &json["errors"][0]["message"]),
        false => (&json["status"], &json["message"]),
    };
    let message = message.as_str().unwrap_or("");
    match status {
        401 => {
            let challenges = a.all("www-authenticate").join(", ");
            let basic = challenges.contains("Basic realm=\"vmreg\"");
            let bearer = challenges.contains("Bearer realm=");
            let challenged = match ep {
                // The token endpoint asks for the credentials it trades.
                Ep::OciToken => basic,
                _ if ep.oci() => bearer,
                _ => basic && bearer,
            };
            let (want_status, want_message) = match ep.oci() {
                true => ("UNAUTHORIZED", "Authentication Required"),
                false => ("FAIL", "Authentication Required"),
            };
            if !challenged {
                Some(format!("WWW-Authenticate {challenges:?}"))
            } else if !head && (status_field != want_status || message != want_message) {
                Some(format!("401 body {}", a.text()))
            } else {
                None
            }
        }
        403 if !head => {
            let named = match ep.need() {
                Need::All(ps) | Need::Any(ps) => ps[0],
                Need::Admin(p) => p,
                _ => "root",
            };
            let want_status = if ep.oci() { "DENIED" } else { "FAIL" };
            (status_field != want_status || !message.contains(named))
                .then(|| format!("403 body {} does not name {named}", a.text()))
        }
        _ => None,
    }
}

/// Walks every cell; answers the table of mismatches (empty when all match).
async fn walk(cx: &Cx, headers: &Headers, mode: Mode) -> Vec<String> {
    let mut wrong = Vec::new();
    for ep in ENDPOINTS {
        // With authentication off the groups are open to all and change nothing.
        set_groups_for(cx, ep).await;
        for cred in CREDS {
            let req = cx.request(ep).await;
            let head = req.method == Method::HEAD;
            let a = req
                .send(cx.base(), &req.target, headers[&cred].as_deref())
                .await;
            let want = expected(ep, cred, mode);
            let problem = match a.status == want {
                false => Some(format!("status {} ({})", a.status, a.text())),
                true => refusal_problem(ep, want, &a, head),
            };
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

/// The OCI repository's blob and a manifest tagged `latest`: (blob digest, manifest digest).
async fn oci_fixture(base: &str, root: &str) -> (String, String) {
    let blob = oci_push_blob(base, root, BLOB).await;
    let manifest = oci_manifest_of(&blob, "latest");
    let target = format!("/v2/{OCI_REPO}/manifests/latest");
    let headers = [("Authorization", root), ("Content-Type", MANIFEST_TYPE)];
    let r = send_raw(base, "PUT", &target, &headers, &manifest).await;
    assert_eq!(r.status, 201, "{r:?}");
    (blob, format!("sha256:{}", sha256_hex(&manifest)))
}

/// The flags of the matrix servers: caps high enough for the thousands of upload sessions
/// the rows open (each refused cell must be refused for its credential, not a cap).
const ROOMY: [&str; 4] = [
    "--max-upload-sessions",
    "100000",
    "--max-upload-sessions-per-identity",
    "100000",
];

/// The matrix context on the servers at `bases` (replicas of one registry).
async fn context(bases: Vec<String>, shaker: Option<String>) -> Cx {
    let (template, file_key) = fixture(&bases[0], &root()).await;
    let (blob, manifest) = oci_fixture(&bases[0], &root()).await;
    Cx {
        bases,
        root: root(),
        template,
        file_key,
        blob,
        manifest,
        shaker,
        public_key: test_public_key(),
        n: Default::default(),
    }
}

/// An auth-on server with API keys and these switches, its replica on S3 (any replica
/// must answer alike), and the matrix credentials made on it.
async fn matrix_servers(extra: &[&'static str]) -> (Vec<Server>, Headers, String) {
    let mut flags = auth_flags(&["--jwt-secret", JWT_SECRET]);
    flags.extend_from_slice(&ROOMY);
    flags.extend_from_slice(extra);
    let s = Server::start_in_with_env(Namespace::new(), &flags, &[("RUST_LOG", "debug")]);
    let mut servers = vec![s];
    if s3_backend() {
        servers.push(servers[0].replica());
    }
    let headers = make_headers(&servers[0]).await;
    let shaker = create_key(&servers[0].url, &root(), "shaker", 3600, &[]).await;
    (servers, headers, shaker)
}

fn urls(servers: &[Server]) -> Vec<String> {
    servers.iter().map(|s| s.url.clone()).collect()
}

#[tokio::test]
async fn every_endpoint_by_every_credential() {
    let (servers, headers, shaker) = matrix_servers(&["--enable-authorization"]).await;
    let cx = context(urls(&servers), Some(shaker.clone())).await;
    let wrong = walk(&cx, &headers, Mode::Authorization).await;
    assert!(
        wrong.is_empty(),
        "{} of {} cells differ:\n{}",
        wrong.len(),
        ENDPOINTS.len() * CREDS.len(),
        wrong.join("\n")
    );

    // The same credentials against a registry with authentication off: all open.
    let open = Server::start_with(&ROOMY);
    let open_cx = context(vec![open.url.clone()], None).await;
    let wrong = walk(&open_cx, &headers, Mode::Off).await;
    assert!(wrong.is_empty(), "auth off:\n{}", wrong.join("\n"));

    // Nothing secret reached the log, at debug level, through all of that.
    let log: String = servers.iter().map(|s| s.log()).collect();
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

#[tokio::test]
async fn without_authorization_keys_get_the_permission_rows_but_no_administration() {
    let (servers, headers, shaker) = matrix_servers(&[]).await;
    let cx = context(urls(&servers), Some(shaker)).await;
    let wrong = walk(&cx, &headers, Mode::KeysOnly).await;
    assert!(wrong.is_empty(), "authorization off:\n{}", wrong.join("\n"));
}

// ---------------------------------------------------------------------------------------
// Every spelling of every path: the router decodes what the raw path keeps, so a check
// made on the raw path is a check of some other route. Each spelling must be answered as
// its canonical path is, or as a path no route matches (404, or 401 to a stranger).

/// A path, cut into units that a spelling may rewrite: one byte, or an escape kept whole.
fn units(path: &str) -> Vec<String> {
    let bytes = path.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let escape = bytes[i] == b'%'
            && i + 2 < bytes.len()
            && bytes[i + 1].is_ascii_hexdigit()
            && bytes[i + 2].is_ascii_hexdigit();
        let len = if escape { 3 } else { 1 };
        out.push(path[i..i + len].to_string());
        i += len;
    }
    out
}

fn escaped(unit: &str, upper: bool) -> String {
    match (unit.len(), upper) {
        (1, true) => format!("%{:02X}", unit.as_bytes()[0]),
        (1, false) => format!("%{:02x}", unit.as_bytes()[0]),
        _ => unit.to_string(),
    }
}

/// Non-canonical spellings of `target`'s path (its query kept as it is), each labelled.
fn spellings(target: &str) -> Vec<(String, String)> {
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, format!("?{q}")),
        None => (target, String::new()),
    };
    let units = units(path);
    let join = |f: &dyn Fn(usize, &str) -> String| -> String {
        units.iter().enumerate().map(|(i, u)| f(i, u)).collect()
    };
    let is_slash = |u: &str| u == "/";
    let mut out: Vec<(String, String)> = Vec::new();
    for upper in [false, true] {
        let all = join(&|_, u| match is_slash(u) {
            true => u.to_string(),
            false => escaped(u, upper),
        });
        out.push((format!("every character escaped (upper {upper})"), all));
        let slashes = join(&|i, u| match is_slash(u) && i > 0 {
            true => escaped(u, upper),
            false => u.to_string(),
        });
        out.push((format!("slashes escaped (upper {upper})"), slashes));
    }
    // One segment at a time: its first character escaped, the rest as it is.
    let starts: Vec<usize> = (0..units.len())
        .filter(|&i| i > 0 && is_slash(&units[i - 1]) && !is_slash(&units[i]))
        .collect();
    for &start in &starts {
        let one = join(&|i, u| match i == start {
            true => escaped(u, false),
            false => u.to_string(),
        });
        out.push((format!("segment at {start} escaped"), one));
    }
    for (at, _) in units
        .iter()
        .enumerate()
        .filter(|(i, u)| *i > 0 && is_slash(u))
    {
        let one = join(&|i, u| match i == at {
            true => escaped(u, true),
            false => u.to_string(),
        });
        out.push((format!("slash at {at} escaped"), one));
    }
    let rest = &path[1..];
    out.push(("leading double slash".into(), format!("//{rest}")));
    out.push(("every slash doubled".into(), path.replace('/', "//")));
    out.push(match path.strip_suffix('/') {
        Some(bare) if !bare.is_empty() => ("trailing slash dropped".into(), bare.to_string()),
        _ => ("trailing slash added".into(), format!("{path}/")),
    });
    let first_end = rest.find('/').map_or(path.len(), |e| e + 1);
    let (first, after) = path.split_at(first_end);
    out.push(("dot segment".into(), format!("{first}/.{after}")));
    out.push(("escaped dot segment".into(), format!("{first}/%2e{after}")));
    out.push(("dot-dot segment".into(), format!("{first}/x/..{after}")));
    out.push(("first segment upper case".into(), {
        let upper = first.to_ascii_uppercase();
        format!("{upper}{after}")
    }));
    if path.contains('+') {
        out.push(("plus escaped".into(), path.replace('+', "%2B")));
    }
    out.into_iter()
        .filter(|(_, p)| p != path)
        .map(|(label, p)| (label, format!("{p}{query}")))
        .collect()
}

/// May a spelling be answered `got` where its canonical path is answered `canonical`?
/// It must never get more: a success only as the canonical path gets it, and a stranger
/// refused there only the same 401. Otherwise it is refused, as a path no route matches
/// (404; 401 to a stranger) or as the route it did match decides: that route's own
/// permission (403), the input it refuses (400: `/v2/./repo` names no repository) or a
/// method it does not serve (405).
fn spelling_allowed(canonical: u16, got: u16) -> bool {
    match got {
        _ if got == canonical => true,
        200..=399 | 500.. => false,
        _ if canonical == 401 => false,
        400 | 401 | 403 | 404 | 405 => true,
        _ => false,
    }
}

/// One spelling of one cell: `req`'s `index`th spelling sent with `cred`. `None` when
/// the row has fewer spellings.
async fn try_spelling(
    cx: &Cx,
    headers: &Headers,
    mode: Mode,
    (ep, cred): (Ep, Cred),
    req: &Req,
    index: usize,
) -> Option<Option<String>> {
    let (label, target) = spellings(&req.target).into_iter().nth(index)?;
    let a = req
        .send(cx.base(), &target, headers[&cred].as_deref())
        .await;
    let canonical = expected(ep, cred, mode);
    Some((!spelling_allowed(canonical, a.status)).then(|| {
        format!(
            "{ep:?} × {cred:?} via {label}: {} {target}: canonical {canonical}, got {} ({})",
            req.method,
            a.status,
            a.text().chars().take(160).collect::<String>()
        )
    }))
}

/// Walks every spelling of every cell, the credentials of a spelling at once; answers how
/// many were sent and the mismatches. A credential the canonical path lets in gets a fresh
/// request (rows that change state need their own); those it refuses share one, which a
/// refusal leaves as it was (and a wrongful success is reported, whatever it changed).
async fn walk_spellings(cx: &Cx, headers: &Headers, mode: Mode) -> (usize, Vec<String>) {
    let mut wrong = Vec::new();
    let mut sent = 0;
    for ep in ENDPOINTS {
        set_groups_for(cx, ep).await;
        let spellings_of_row = spellings(&cx.request(ep).await.target).len();
        for index in 0..spellings_of_row {
            let shared = cx.request(ep).await;
            let mut own = Vec::new();
            for cred in CREDS {
                let admitted = (200..300).contains(&expected(ep, cred, mode));
                own.push(match admitted {
                    true => Some(cx.request(ep).await),
                    false => None,
                });
            }
            let cells = CREDS.iter().zip(&own).map(|(&cred, req)| {
                let req = req.as_ref().unwrap_or(&shared);
                try_spelling(cx, headers, mode, (ep, cred), req, index)
            });
            let answers: Vec<_> = futures_util::future::join_all(cells)
                .await
                .into_iter()
                .flatten()
                .collect();
            sent += answers.len();
            wrong.extend(answers.into_iter().flatten());
        }
    }
    (sent, wrong)
}

/// Walks the spellings on a fresh matrix server with these switches; panics on a mismatch.
async fn spellings_hold(mode: Mode, extra: &[&'static str]) -> Headers {
    let (servers, headers, shaker) = matrix_servers(extra).await;
    let cx = context(urls(&servers), Some(shaker)).await;
    let (sent, wrong) = walk_spellings(&cx, &headers, mode).await;
    assert!(sent > 5000, "{mode:?}: only {sent} spellings were sent");
    assert!(
        wrong.is_empty(),
        "{mode:?}: {} of {sent} spellings answered otherwise:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    headers
}

#[tokio::test]
async fn every_spelling_of_every_endpoint_by_every_credential() {
    let (headers, _) = tokio::join!(
        spellings_hold(Mode::Authorization, &["--enable-authorization"]),
        spellings_hold(Mode::KeysOnly, &[]),
    );
    // The same credentials against a registry with authentication off.
    let open = Server::start_with(&ROOMY);
    let cx = context(vec![open.url.clone()], None).await;
    let (sent, wrong) = walk_spellings(&cx, &headers, Mode::Off).await;
    assert!(
        wrong.is_empty(),
        "auth off: {} of {sent} spellings answered otherwise:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

#[test]
fn a_spelling_never_gets_more_than_its_canonical_path() {
    assert!(spelling_allowed(403, 403) && spelling_allowed(403, 404));
    assert!(spelling_allowed(200, 404) && spelling_allowed(204, 403));
    assert!(
        spelling_allowed(200, 401),
        "a stranger at a public route's spelling"
    );
    assert!(!spelling_allowed(403, 200), "a refused caller let in");
    assert!(!spelling_allowed(401, 404), "a stranger told more than 401");
    assert!(!spelling_allowed(401, 403));
    assert!(!spelling_allowed(200, 201) && !spelling_allowed(200, 500));
}

#[test]
fn spellings_cover_escapes_slashes_dots_and_case() {
    let s: BTreeMap<String, String> = spellings("/v1/apikey?id=x").into_iter().collect();
    assert_eq!(
        s["every character escaped (upper false)"],
        "/%76%31/%61%70%69%6b%65%79?id=x"
    );
    assert_eq!(
        s["every character escaped (upper true)"],
        "/%76%31/%61%70%69%6B%65%79?id=x"
    );
    assert_eq!(s["segment at 4 escaped"], "/v1/%61pikey?id=x");
    assert_eq!(s["slash at 3 escaped"], "/v1%2Fapikey?id=x");
    assert_eq!(s["slashes escaped (upper true)"], "/v1%2Fapikey?id=x");
    assert_eq!(s["leading double slash"], "//v1/apikey?id=x");
    assert_eq!(s["every slash doubled"], "//v1//apikey?id=x");
    assert_eq!(s["trailing slash added"], "/v1/apikey/?id=x");
    assert_eq!(s["dot segment"], "/v1/./apikey?id=x");
    assert_eq!(s["dot-dot segment"], "/v1/x/../apikey?id=x");
    assert_eq!(s["first segment upper case"], "/V1/apikey?id=x");
    // An escape in the canonical path stays whole.
    let s: BTreeMap<String, String> = spellings("/f/a%2Bb").into_iter().collect();
    assert_eq!(s["every character escaped (upper false)"], "/%66/%61%2B%62");
    assert_eq!(s["slash at 2 escaped"], "/f%2Fa%2Bb");
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
