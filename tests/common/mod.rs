//! Shared harness of the black-box tests: start the real `vmreg` binary on a free port,
//! on the backend the environment selects, and talk to it over HTTP.
//!
//! `VMREG_TEST_BACKEND=s3` runs every server on S3 (Garage) + Redis, from
//! `VMREG_TEST_REDIS_URL`, `VMREG_TEST_S3_ENDPOINT`, `VMREG_TEST_S3_BUCKET`,
//! `VMREG_TEST_S3_REGION` and the `AWS_*` credentials (`scripts/test.sh` sets them);
//! anything else runs on the embedded default. Each server gets its own Redis key prefix
//! and S3 prefix unless it is started as a replica of another. `VMREG_TEST_BIN` names
//! another binary to test.
#![allow(dead_code)]

pub mod auth;
pub mod pki;
pub mod raw;
pub mod stores;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The binary under test: `VMREG_TEST_BIN` when set (a release build, or an older one to
/// see a test fail on it), else the one cargo built with the tests.
pub fn vmreg_bin() -> &'static str {
    static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        std::env::var("VMREG_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_vmreg").into())
    })
}

/// True when the tests run against S3 + Redis.
pub fn s3_backend() -> bool {
    std::env::var("VMREG_TEST_BACKEND").is_ok_and(|b| b == "s3")
}

/// True under CI (`CI` set to anything but empty, `0` or `false`): there every service a
/// test needs must be present, and a missing one fails the test instead of skipping it.
pub fn on_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !matches!(v.trim(), "" | "0" | "false"))
}

/// Fails the calling test unless S3 (Garage) and Redis are configured. Tests that need them
/// are `#[ignore]`d, so a plain `cargo test` counts them as ignored rather than passing
/// them; whoever runs them (`--include-ignored`, as `scripts/test.sh` does on the S3
/// pass) gets a failure, never a silent pass, when the services are missing.
pub fn require_s3_services() {
    assert!(
        s3_backend(),
        "this test runs only on S3 + Redis: set VMREG_TEST_BACKEND=s3 (scripts/test.sh does)"
    );
    for name in [
        "VMREG_TEST_REDIS_URL",
        "VMREG_TEST_S3_ENDPOINT",
        "VMREG_TEST_S3_BUCKET",
    ] {
        required_env(name);
    }
}

fn required_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("VMREG_TEST_BACKEND=s3 needs {name}; run the suite through scripts/test.sh")
    })
}

/// Where a server keeps its state: its own directory, and with S3 + Redis the prefixes
/// that replicas share. The directory goes when the last clone of the namespace does.
#[derive(Clone, Debug)]
pub struct Namespace {
    /// Data directory (embedded backend) and log directory.
    pub dir: PathBuf,
    /// Redis key prefix and S3 key prefix (S3 backend).
    pub prefix: String,
    /// Always the embedded store, whatever `VMREG_TEST_BACKEND` says.
    embedded: bool,
    _cleanup: std::sync::Arc<RemoveOnDrop>,
}

/// Removes a directory when dropped: the tests write gigabytes.
#[derive(Debug)]
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Namespace {
    /// A fresh, empty namespace.
    pub fn new() -> Self {
        let dir =
            std::env::temp_dir().join(format!("vmreg-test-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let prefix = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        Self {
            _cleanup: std::sync::Arc::new(RemoveOnDrop(dir.clone())),
            dir,
            prefix,
            embedded: false,
        }
    }

    /// A fresh namespace on the embedded store on every pass, for tests that reach into
    /// the store's directory.
    pub fn embedded() -> Self {
        Self {
            embedded: true,
            ..Self::new()
        }
    }

    /// The `vmreg serve`/`admin` flags selecting this namespace's stores.
    pub fn store_args(&self) -> Vec<String> {
        let mut args = vec![
            "--data-dir".to_string(),
            self.dir.join("data").display().to_string(),
        ];
        if s3_backend() && !self.embedded {
            args.extend([
                "--redis-url".into(),
                required_env("VMREG_TEST_REDIS_URL"),
                "--redis-prefix".into(),
                format!("{}:", self.prefix),
                "--s3-bucket".into(),
                required_env("VMREG_TEST_S3_BUCKET"),
                "--s3-endpoint".into(),
                required_env("VMREG_TEST_S3_ENDPOINT"),
                "--s3-region".into(),
                std::env::var("VMREG_TEST_S3_REGION").unwrap_or_else(|_| "garage".into()),
                "--s3-path-style".into(),
                "--s3-prefix".into(),
                self.prefix.clone(),
            ]);
        }
        args
    }
}

/// A running `vmreg serve`.
pub struct Server {
    /// Base URL, `http://127.0.0.1:PORT`.
    pub url: String,
    /// Its namespace.
    pub ns: Namespace,
    extra: Vec<String>,
    env: Vec<(String, String)>,
    child: Option<Child>,
    log: PathBuf,
}

impl Server {
    /// A server with a fresh namespace.
    pub fn start() -> Server {
        Server::start_in(Namespace::new(), &[])
    }

    /// A server with a fresh namespace and extra flags.
    pub fn start_with(extra: &[&str]) -> Server {
        Server::start_in(Namespace::new(), extra)
    }

    /// A server on the given namespace (a replica when another server uses it too).
    pub fn start_in(ns: Namespace, extra: &[&str]) -> Server {
        Server::start_in_with_env(ns, extra, &[])
    }

    /// A server on the given namespace with extra flags and environment variables.
    pub fn start_in_with_env(ns: Namespace, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let log = ns
            .dir
            .join(format!("server-{}.log", uuid::Uuid::new_v4().simple()));
        let (child, url) = spawn(&ns, &extra, &env, "127.0.0.1:0", &log);
        Server {
            url,
            ns,
            extra,
            env,
            child: Some(child),
            log,
        }
    }

    /// Another server process on the same stores.
    pub fn replica(&self) -> Server {
        let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        Server::start_in_with_env(self.ns.clone(), &extra, &env)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// SIGKILL, as a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, as an orderly stop, and waits for the process to exit.
    pub fn terminate(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = child.id() as libc::pid_t;
            // SAFETY: signals a child this struct started and has not yet reaped.
            assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
            let _ = child.wait();
        }
    }

    /// Kills the process and starts it again on the same port and stores.
    pub fn restart(&mut self) {
        self.kill();
        let listen = self
            .url
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .to_string();
        let (child, url) = spawn(&self.ns, &self.extra, &self.env, &listen, &self.log);
        self.child = Some(child);
        self.url = url;
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A full URL for `path`.
    pub fn at(&self, path: &str) -> String {
        format!("{}{}", self.url, path)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

fn spawn(
    ns: &Namespace,
    extra: &[String],
    env: &[(String, String)],
    listen: &str,
    log: &Path,
) -> (Child, String) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let mut child = Command::new(vmreg_bin())
            .arg("serve")
            .args(["--listen", listen])
            .args(ns.store_args())
            .args(extra)
            .env("RUST_LOG", "info")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("start vmreg serve");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let mut url = None;
        for line in lines.by_ref() {
            let Ok(line) = line else { break };
            if let Some(rest) = line.split("listening on ").nth(1) {
                url = Some(rest.trim().to_string());
                break;
            }
        }
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        match url {
            Some(url) => return (child, url),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                // A restart on the same port can race the old socket's release.
                if Instant::now() > deadline {
                    panic!(
                        "vmreg serve did not start; log:\n{}",
                        std::fs::read_to_string(log).unwrap_or_default()
                    );
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

/// An HTTP reply: status and parsed JSON (Null when the body is not JSON).
#[derive(Debug)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// Parsed body.
    pub json: Value,
}

impl Reply {
    /// The envelope's body after asserting `OK`.
    pub fn ok_body(&self) -> &Value {
        assert_eq!(self.status, 200, "expected 200, got {self:?}");
        assert_eq!(self.json["status"], "OK", "{self:?}");
        assert_eq!(self.json["message"], "", "{self:?}");
        &self.json["body"]
    }

    /// Asserts a `FAIL` envelope with `status`.
    pub fn assert_fail(&self, status: u16) {
        assert_eq!(self.status, status, "{self:?}");
        assert_eq!(self.json["status"], "FAIL", "{self:?}");
        assert!(
            self.json["message"].as_str().is_some_and(|m| !m.is_empty()),
            "a FAIL needs a message: {self:?}"
        );
    }
}

/// Sends a request and parses the reply.
pub async fn call(method: reqwest::Method, url: &str, body: Option<Vec<u8>>) -> Reply {
    call_as(method, url, body, None).await
}

/// Sends a request with an optional `Authorization` header and parses the reply.
pub async fn call_as(
    method: reqwest::Method,
    url: &str,
    body: Option<Vec<u8>>,
    authorization: Option<&str>,
) -> Reply {
    send_request(request(method, url, body, authorization)).await
}

/// A request with an optional body and `Authorization` header, not yet sent.
pub fn request(
    method: reqwest::Method,
    url: &str,
    body: Option<Vec<u8>>,
    authorization: Option<&str>,
) -> reqwest::RequestBuilder {
    let mut req = reqwest::Client::new().request(method, url);
    if let Some(a) = authorization {
        req = req.header("Authorization", a);
    }
    if let Some(body) = body {
        req = req.body(body);
    }
    req
}

/// Sends a built request (headers, authentication) and parses the reply.
pub async fn send_request(req: reqwest::RequestBuilder) -> Reply {
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.unwrap_or_default();
    Reply {
        status,
        json: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    }
}

/// GET.
pub async fn get(url: &str) -> Reply {
    call(reqwest::Method::GET, url, None).await
}

/// A request with a JSON body.
pub async fn send_json(method: reqwest::Method, url: &str, body: &Value) -> Reply {
    call(method, url, Some(serde_json::to_vec(body).unwrap())).await
}

/// A file to push: name, kind, bytes.
pub struct TestFile {
    /// Name in the VM library.
    pub name: String,
    /// `image`, `state` or `nvram`.
    pub kind: &'static str,
    /// Content.
    pub data: Vec<u8>,
}

impl TestFile {
    /// A file with deterministic pseudo-random content.
    pub fn new(name: &str, kind: &'static str, size: usize, seed: u64) -> TestFile {
        TestFile {
            name: name.into(),
            kind,
            data: pseudo_random(size, seed),
        }
    }

    /// Lowercase hex SHA-256 of the content.
    pub fn sha256(&self) -> String {
        sha256_hex(&self.data)
    }
}

/// An image layer with a unique name and deterministic content.
pub fn unique_image(size: usize, seed: u64) -> TestFile {
    TestFile::new(
        &format!("{}.ank", uuid::Uuid::new_v4().simple()),
        "image",
        size,
        seed,
    )
}

/// Deterministic bytes.
pub fn pseudo_random(size: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407)
        | 1;
    let mut out = Vec::with_capacity(size + 8);
    while out.len() < size {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(size);
    out
}

/// Lowercase hex SHA-256.
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

/// A VM config object for a template.
pub fn config(id: &str, name: &str, images: &[&TestFile]) -> Value {
    let top = images.first().map(|f| f.name.clone()).unwrap_or_default();
    serde_json::json!({
        "uuid": id, "name": name, "ram": "2G", "cpu": {"cores": 2}, "firmware": {"type": "uefi"},
        "nvram": true, "state_file": "", "version": 1,
        "hard_drives": [{"controller": "ablk", "file": top, "pci_slot": 4}],
        "network_cards": [{"mode": "shared", "pci_slot": 28, "mac_address": "56:45:45:3c:db:02", "port_forwarding_rules": []}],
        "display": {"frame_buffer": {"height": 768, "width": 1024, "pci_slot": 29, "vnc_ip": "0.0.0.0"}},
        "usb": {"pci_slot": 7, "host": 0, "tablet": 1}
    })
}

/// The negotiation request for a version.
pub fn push_request(id: &str, name: &str, tag: &str, files: &[&TestFile]) -> Value {
    let images: Vec<&TestFile> = files
        .iter()
        .copied()
        .filter(|f| f.kind == "image")
        .collect();
    serde_json::json!({
        "id": id, "name": name, "tag": tag, "description": format!("{tag} description"),
        "config": config(id, name, &images),
        "files": files.iter().map(|f| serde_json::json!({"name": f.name, "kind": f.kind, "size": f.data.len(), "sha256": f.sha256()})).collect::<Vec<_>>()
    })
}

/// Negotiates, uploads what the registry lacks, commits; returns the commit body.
pub async fn push(server: &Server, id: &str, name: &str, tag: &str, files: &[&TestFile]) -> Value {
    let reply = try_push(server, id, name, tag, files).await;
    reply.ok_body().clone()
}

/// Like [`push`] but returns the first failing reply, or the commit reply.
pub async fn try_push(
    server: &Server,
    id: &str,
    name: &str,
    tag: &str,
    files: &[&TestFile],
) -> Reply {
    try_push_request(server, &push_request(id, name, tag, files), files).await
}

/// Negotiates `request` (a whole negotiation body), uploads what the registry lacks of
/// `files`, commits; returns the first failing reply, or the commit reply.
pub async fn try_push_request(server: &Server, request: &Value, files: &[&TestFile]) -> Reply {
    try_push_request_as(&server.url, None, request, files).await
}

/// [`try_push`] to the server at `base` with an `Authorization` header on every request.
pub async fn try_push_as(
    base: &str,
    authorization: Option<&str>,
    id: &str,
    name: &str,
    tag: &str,
    files: &[&TestFile],
) -> Reply {
    let request = push_request(id, name, tag, files);
    try_push_request_as(base, authorization, &request, files).await
}

/// [`try_push_request`] to the server at `base`, with an optional `Authorization` header.
pub async fn try_push_request_as(
    base: &str,
    authorization: Option<&str>,
    request: &Value,
    files: &[&TestFile],
) -> Reply {
    let plan = call_as(
        reqwest::Method::POST,
        &format!("{base}/api/v1/push"),
        Some(serde_json::to_vec(request).unwrap()),
        authorization,
    )
    .await;
    if plan.status != 200 {
        return plan;
    }
    let plan = plan.json["body"].clone();
    let session = plan["session"].as_str().unwrap().to_string();
    for planned in plan["files"].as_array().unwrap() {
        if !planned["upload"].as_bool().unwrap() {
            continue;
        }
        let file = files.iter().find(|f| f.name == planned["name"]).unwrap();
        let key = planned["key"].as_str().unwrap();
        let url = format!(
            "{base}/api/v1/push/{session}/files/{}?offset=0",
            encode_path(key)
        );
        let reply = call_as(
            reqwest::Method::PUT,
            &url,
            Some(file.data.clone()),
            authorization,
        )
        .await;
        if reply.status != 200 {
            return reply;
        }
    }
    call_as(
        reqwest::Method::POST,
        &format!("{base}/api/v1/push/{session}/commit"),
        None,
        authorization,
    )
    .await
}

/// Commits push `session` on the server at `base`; returns the commit body after
/// asserting `OK`.
pub async fn commit_push(base: &str, session: &str) -> Value {
    try_commit_push(base, session).await.ok_body().clone()
}

/// Like [`commit_push`] but returns the reply, for a commit expected to fail.
pub async fn try_commit_push(base: &str, session: &str) -> Reply {
    call(
        reqwest::Method::POST,
        &format!("{base}/api/v1/push/{session}/commit"),
        None,
    )
    .await
}

/// Percent-encodes one path segment.
pub fn encode_path(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// Percent-encodes a query value (`+` becomes `%2B`).
pub fn encode_query(s: &str) -> String {
    encode_path(s)
}

/// Downloads a whole file by key.
pub async fn download(server: &Server, key: &str) -> Vec<u8> {
    let resp = reqwest::get(server.at(&format!("/api/v1/files/{}", encode_path(key))))
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    resp.bytes().await.unwrap().to_vec()
}

/// A random template id.
pub fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Deletes every Redis key under `prefix` (a server's `--redis-prefix`), as a lost Redis
/// would; returns how many went.
pub async fn flush_redis_prefix(prefix: &str) -> usize {
    let client = redis::Client::open(required_env("VMREG_TEST_REDIS_URL")).expect("redis url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis connection");
    let pattern = format!("{prefix}*");
    let mut cursor: u64 = 0;
    let mut deleted = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await
            .expect("scan");
        if !keys.is_empty() {
            let n: usize = redis::cmd("DEL")
                .arg(&keys)
                .query_async(&mut conn)
                .await
                .expect("del");
            deleted += n;
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
    deleted
}

/// The samples of a Prometheus text exposition, by series (name and labels as printed).
pub fn parse_metrics(text: &str) -> std::collections::HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').expect("a sample line");
            (series.to_string(), value.parse().expect("a number"))
        })
        .collect()
}
