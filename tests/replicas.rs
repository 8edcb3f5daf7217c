//! Several `vmreg serve` processes on one Redis and one S3 (Garage): any replica serves
//! any step, a killed replica costs only its in-flight part, concurrent pushes get dense
//! numbers, `vmreg admin reindex` rebuilds a flushed Redis, and outages of Redis or S3
//! answer 503 and heal by themselves.
//!
//! These apply only to the S3 backend and need the real services, so every test here is
//! `#[ignore]`d: a plain `cargo test` counts them as ignored. `scripts/test.sh` runs them in
//! its S3 pass with `--include-ignored`, and a test run without Redis and S3 configured
//! (`VMREG_TEST_BACKEND=s3` and the variables of `scripts/test-services.sh`) fails.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use futures_util::StreamExt;
use reqwest::Method;
use serde_json::{json, Value};
use sha2::Digest;

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"))
}

// ---------------------------------------------------------------------------------------
// Views of the registry that every replica must agree on.

/// The listing and every template, as one replica sees them.
async fn snapshot(server: &Server) -> Value {
    let list = get(&server.at("/registry/v2/vm")).await.ok_body().clone();
    let mut items: Vec<Value> = list.as_array().expect("a list").clone();
    items.sort_by_key(|t| t["id"].as_str().unwrap_or_default().to_string());
    let mut details = serde_json::Map::new();
    for t in &items {
        let id = t["id"].as_str().expect("an id");
        // The v1 shape of one template: the v2 one has no arch.
        let detail = get(&server.at(&format!("/registry/vm?id={id}")))
            .await
            .ok_body()
            .clone();
        details.insert(id.to_string(), detail);
    }
    json!({ "list": items, "templates": details })
}

/// Removes `last_pull` everywhere: it is usage, not content, and no manifest records it.
fn without_last_pull(mut v: Value) -> Value {
    if let Some(items) = v["list"].as_array_mut() {
        for item in items {
            if let Some(obj) = item.as_object_mut() {
                obj.remove("last_pull");
            }
        }
    }
    v
}

async fn assert_replicas_agree(servers: &[&Server]) -> Value {
    let first = snapshot(servers[0]).await;
    for (i, s) in servers.iter().enumerate().skip(1) {
        assert_eq!(
            snapshot(s).await,
            first,
            "replica {i} disagrees with replica 0"
        );
    }
    first
}

async fn manifest(server: &Server, id: &str, tag: &str) -> Value {
    get(&server.at(&format!(
        "/api/v1/templates/{id}/manifest?tag={}",
        encode_query(tag)
    )))
    .await
    .ok_body()
    .clone()
}

/// Streams a file down and returns its SHA-256 and length, never holding it whole.
async fn download_digest(base: &str, key: &str) -> (String, u64) {
    let resp = reqwest::get(format!("{base}/api/v1/files/{}", encode_path(key)))
        .await
        .expect("download");
    assert_eq!(resp.status().as_u16(), 200, "download of {key}");
    let mut hasher = sha2::Sha256::new();
    let mut len = 0u64;
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.expect("download body");
        len += chunk.len() as u64;
        hasher.update(&chunk);
    }
    (hex::encode(hasher.finalize()), len)
}

fn image(size: usize, seed: u64) -> TestFile {
    unique_image(size, seed)
}

// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
#[ignore = "S3 + Redis only: VMREG_TEST_BACKEND=s3, --include-ignored (scripts/test.sh)"]
async fn push_through_one_replica_pull_through_another() {
    require_s3_services();
    let a = Server::start();
    let b = a.replica();
    let c = a.replica();
    let id = new_id();
    let name = format!("sonoma-{}", &id[..8]);
    // Larger than one part, so the object is a real multipart upload.
    let base = image(9 * 1024 * 1024 + 12_345, 1);
    let nvram = TestFile::new("nvram", "nvram", 8192, 2);
    let committed = push(&a, &id, &name, "vanilla", &[&base, &nvram]).await;
    assert_eq!(committed["number"], 0);

    let m = manifest(&b, &id, "vanilla").await;
    assert_eq!(m["name"], name.as_str());
    let files = m["files"].as_array().expect("files");
    assert_eq!(files.len(), 2);
    for (f, want) in files.iter().zip([&base, &nvram]) {
        assert_eq!(f["name"], want.name.as_str());
        assert_eq!(f["sha256"], want.sha256().as_str());
        let key = f["key"].as_str().expect("key");
        let got = download(&b, key).await;
        assert!(
            got == want.data,
            "{} differs after the round trip through another replica",
            want.name
        );
    }
    // A ranged read through the third replica.
    let key = files[0]["key"].as_str().expect("key");
    let resp = reqwest::Client::new()
        .get(c.at(&format!("/api/v1/files/{}", encode_path(key))))
        .header("Range", "bytes=8388600-8388700")
        .send()
        .await
        .expect("range request");
    assert_eq!(resp.status().as_u16(), 206);
    assert_eq!(
        &resp.bytes().await.expect("body")[..],
        &base.data[8_388_600..=8_388_700]
    );

    let view = assert_replicas_agree(&[&a, &b, &c]).await;
    assert_eq!(view["list"].as_array().map(Vec::len), Some(1));
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "S3 + Redis only: VMREG_TEST_BACKEND=s3, --include-ignored (scripts/test.sh)"]
async fn concurrent_tags_through_replicas_get_dense_numbers() {
    require_s3_services();
    let a = Server::start();
    let replicas = [a.replica(), a.replica()];
    let servers: Vec<&Server> = std::iter::once(&a).chain(replicas.iter()).collect();
    let id = new_id();
    let name = format!("ventura-{}", &id[..8]);
    let base = image(300_000, 7);
    let nvram = TestFile::new("nvram", "nvram", 4096, 8);
    push(&a, &id, &name, "base", &[&base, &nvram]).await;

    let pushes = (0..10).map(|i| {
        let server = servers[i % servers.len()];
        let (id, name, base, nvram) = (&id, &name, &base, &nvram);
        async move {
            let top = image(50_000 + i, 100 + i as u64);
            let tag = format!("tag-{i}");
            let committed = push(server, id, name, &tag, &[&top, base, nvram]).await;
            (tag, committed["number"].as_u64().expect("a number"))
        }
    });
    let results = futures_util::future::join_all(pushes).await;
    let mut numbers: Vec<u64> = results.iter().map(|(_, n)| *n).collect();
    numbers.sort_unstable();
    assert_eq!(
        numbers,
        (1..=10).collect::<Vec<u64>>(),
        "every push got its own number, none skipped"
    );

    let view = assert_replicas_agree(&servers).await;
    let versions = view["templates"][&id]["versions"]
        .as_array()
        .expect("versions")
        .clone();
    assert_eq!(versions.len(), 11, "no version lost");
    for (i, v) in versions.iter().enumerate() {
        assert_eq!(v["number"], i as u64, "numbers are dense");
    }
    for (tag, number) in &results {
        assert_eq!(
            versions[*number as usize]["tag"],
            tag.as_str(),
            "the committed number holds its tag"
        );
    }
}

// ---------------------------------------------------------------------------------------
// A big push whose replica dies midway.

const BIG: u64 = 1 << 30;
const CHUNK: usize = 1 << 20;

/// Deterministic content addressed by offset, so any range can be produced again for a
/// resume: chunk `i` is a window of a random block starting at a position derived from
/// `i`. Producing a chunk is a cheap slice of shared memory.
struct BigFile {
    block: Bytes,
}

impl BigFile {
    fn new() -> Self {
        let mut block = pseudo_random(CHUNK, 42);
        block.extend_from_within(..);
        Self {
            block: block.into(),
        }
    }

    fn chunk(&self, index: u64) -> Bytes {
        let start = (index.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) as usize % CHUNK;
        self.block.slice(start..start + CHUNK)
    }

    fn sha256(&self, size: u64) -> String {
        let mut hasher = sha2::Sha256::new();
        for i in 0..size / CHUNK as u64 {
            hasher.update(self.chunk(i));
        }
        hex::encode(hasher.finalize())
    }

    /// The bytes from `offset` (a chunk boundary) to `end`; stops (pends) once `pause_at`
    /// bytes were produced, and counts what it produced in `sent`.
    fn body(
        self: &Arc<Self>,
        offset: u64,
        end: u64,
        pause_at: Option<u64>,
        sent: Arc<AtomicU64>,
    ) -> reqwest::Body {
        assert_eq!(offset % CHUNK as u64, 0);
        let me = self.clone();
        let chunks =
            futures_util::stream::iter(offset / CHUNK as u64..end / CHUNK as u64).then(move |i| {
                let me = me.clone();
                let sent = sent.clone();
                async move {
                    if pause_at.is_some_and(|p| sent.load(Ordering::SeqCst) >= p) {
                        // Hold the connection open with nothing more, as a client would while
                        // its server dies under it.
                        futures_util::future::pending::<()>().await;
                    }
                    let chunk = me.chunk(i);
                    sent.fetch_add(chunk.len() as u64, Ordering::SeqCst);
                    Ok::<Bytes, std::io::Error>(chunk)
                }
            });
        reqwest::Body::wrap_stream(chunks)
    }
}

async fn session_file(server: &Server, session: &str) -> Value {
    let plan = get(&server.at(&format!("/api/v1/push/{session}")))
        .await
        .ok_body()
        .clone();
    plan["files"]
        .as_array()
        .and_then(|f| f.iter().find(|f| f["upload"] == true).cloned())
        .expect("the uploaded file")
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "S3 + Redis only: VMREG_TEST_BACKEND=s3, --include-ignored (scripts/test.sh)"]
async fn a_killed_replica_s_upload_is_finished_by_another_with_only_the_missing_bytes() {
    require_s3_services();
    let mut a = Server::start();
    let b = a.replica();
    let big = Arc::new(BigFile::new());
    let digest = big.sha256(BIG);
    let id = new_id();
    let name = format!("big-{}", &id[..8]);
    let file_name = format!("{}.ank", uuid::Uuid::new_v4().simple());
    let request = json!({
        "id": id, "name": name, "tag": "big", "description": "one GiB",
        "config": config(&id, &name, &[]),
        "files": [{"name": file_name, "kind": "image", "size": BIG, "sha256": digest}],
    });
    let plan = send_json(Method::POST, &a.at("/api/v1/push"), &request)
        .await
        .ok_body()
        .clone();
    let session = plan["session"].as_str().expect("session").to_string();
    let key = plan["files"][0]["key"].as_str().expect("key").to_string();
    let part_size = plan["files"][0]["part_size"].as_u64().expect("part size");
    let upload_path = |offset: u64| {
        format!(
            "/api/v1/push/{session}/files/{}?offset={offset}",
            encode_path(&key)
        )
    };

    // Send half the file to A, then kill A while the connection is open.
    let sent_to_a = Arc::new(AtomicU64::new(0));
    let body = big.body(0, BIG, Some(BIG / 2), sent_to_a.clone());
    let first = tokio::spawn(
        reqwest::Client::new()
            .put(a.at(&upload_path(0)))
            .body(body)
            .send(),
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let received = session_file(&b, &session).await["received"]
            .as_u64()
            .unwrap_or(0);
        if received >= BIG / 4 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "A stored nothing durable: received {received}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    a.kill();
    let cut = first.await.expect("upload task");
    assert!(
        cut.is_err() || cut.as_ref().is_ok_and(|r| r.status().as_u16() != 200),
        "the upload to a killed server cannot succeed"
    );

    // B knows how far A got, from the shared metadata.
    let status = session_file(&b, &session).await;
    let received = status["received"].as_u64().expect("received");
    assert!(received > 0 && received < BIG, "received {received}");
    assert_eq!(received % part_size, 0, "only whole parts are durable");
    assert!(received <= sent_to_a.load(Ordering::SeqCst));

    let sent_to_b = Arc::new(AtomicU64::new(0));
    let body = big.body(received, BIG, None, sent_to_b.clone());
    let resp = reqwest::Client::new()
        .put(b.at(&upload_path(received)))
        .body(body)
        .send()
        .await
        .expect("resume");
    assert_eq!(resp.status().as_u16(), 200);
    let progress: Value = resp.json().await.expect("json");
    assert_eq!(progress["body"]["complete"], true, "{progress}");
    let resent = sent_to_b.load(Ordering::SeqCst);
    assert_eq!(
        resent,
        BIG - received,
        "only the missing bytes were sent again"
    );
    assert!(resent < BIG);

    let committed = commit_push(&b.url, &session).await;
    assert_eq!(committed["number"], 0);
    let (got, len) = download_digest(&b.url, &key).await;
    assert_eq!(len, BIG);
    assert_eq!(got, digest, "the pulled file is the pushed file");
}

// ---------------------------------------------------------------------------------------
// Rebuilding a flushed Redis from the bucket.

#[tokio::test(flavor = "multi_thread")]
#[ignore = "S3 + Redis only: VMREG_TEST_BACKEND=s3, --include-ignored (scripts/test.sh)"]
async fn reindex_rebuilds_a_flushed_redis_from_the_bucket() {
    require_s3_services();
    let s = Server::start();
    let base = image(200_000, 11);
    let top = image(60_000, 12);
    let state = TestFile::new(
        &format!("{}.ank", uuid::Uuid::new_v4().simple()),
        "state",
        30_000,
        13,
    );
    let nvram = TestFile::new("nvram", "nvram", 4096, 14);
    let (a, b) = (new_id(), new_id());
    let (a_name, b_name) = (format!("alpha-{}", &a[..8]), format!("beta-{}", &b[..8]));
    push(&s, &a, &a_name, "v1", &[&base, &nvram]).await;
    push(&s, &a, &a_name, "v2+brew", &[&top, &base, &nvram]).await;
    push(
        &s,
        &a,
        &a_name,
        "v3-suspended",
        &[&top, &base, &state, &nvram],
    )
    .await;
    push(&s, &b, &b_name, "only", &[&base, &nvram]).await;
    send_json(
        Method::PUT,
        &s.at("/registry/vm/arch"),
        &json!({"id": a, "arch": "arm64"}),
    )
    .await
    .ok_body();
    // A reverted version must stay gone after the rebuild.
    push(&s, &b, &b_name, "reverted", &[&top, &nvram]).await;
    call(
        Method::DELETE,
        &s.at(&format!("/registry/revert?id={b}")),
        None,
    )
    .await
    .ok_body();

    let before = without_last_pull(snapshot(&s).await);
    assert_eq!(before["list"].as_array().map(Vec::len), Some(2));
    assert_eq!(before["templates"][&a]["arch"], "arm64");

    let deleted = flush_redis_prefix(&format!("{}:", s.ns.prefix)).await;
    assert!(deleted > 0);
    assert_eq!(
        get(&s.at("/registry/v2/vm")).await.ok_body(),
        &json!([]),
        "the index is gone"
    );

    let out = Command::new(vmreg_bin())
        .args(["admin", "reindex"])
        .args(s.ns.store_args())
        .output()
        .expect("run reindex");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "reindex failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("reindexed 2 templates, 4 versions"),
        "{stdout}"
    );

    let after = without_last_pull(snapshot(&s).await);
    assert_eq!(
        after, before,
        "every template, version, tag, arch and description is back"
    );

    // The file records are back too: a pull verifies, and a new push finds the shared
    // layers already present and gets the next number.
    let m = manifest(&s, &a, "v3-suspended").await;
    for f in m["files"].as_array().expect("files") {
        let (digest, _) = download_digest(&s.url, f["key"].as_str().expect("key")).await;
        assert_eq!(f["sha256"], digest.as_str());
    }
    let plan = send_json(
        Method::POST,
        &s.at("/api/v1/push"),
        &push_request(&a, &a_name, "v4", &[&top, &base, &nvram]),
    )
    .await;
    let files = plan.ok_body()["files"].as_array().expect("files").clone();
    assert!(
        files.iter().all(|f| f["upload"] == false),
        "the registry still knows its files: {files:?}"
    );
    let session = plan.json["body"]["session"].as_str().expect("session");
    let committed = commit_push(&s.url, session).await;
    assert_eq!(committed["number"], 3);
}

// ---------------------------------------------------------------------------------------
// Outages: a TCP proxy between vmreg and a dependency that the test can cut and restore.

/// What the proxy does with traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Link {
    /// Forwards.
    Up,
    /// Drops every connection at once, as a dead server with a live host does.
    Down,
    /// Holds connections open and forwards nothing, as a hung server or a partition does.
    Frozen,
}

/// A TCP proxy between vmreg and a dependency, which the test can cut, freeze and restore.
struct Proxy {
    addr: SocketAddr,
    link: tokio::sync::watch::Sender<Link>,
}

impl Proxy {
    async fn start(target: SocketAddr) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let (link, _) = tokio::sync::watch::channel(Link::Up);
        let links = link.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let mut rx = links.subscribe();
                let now = *rx.borrow_and_update();
                match now {
                    Link::Down => continue,
                    Link::Frozen => {
                        // Accepted, never answered, until the link changes.
                        tokio::spawn(async move {
                            let _ = rx.changed().await;
                            drop(inbound);
                        });
                        continue;
                    }
                    Link::Up => {}
                }
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => return,
                        _ = rx.changed() => {}
                    }
                    if *rx.borrow_and_update() == Link::Frozen {
                        // Keep both ends open and silent until the link changes again.
                        let _ = rx.changed().await;
                    }
                });
            }
        });
        Proxy { addr, link }
    }

    fn set(&self, link: Link) {
        self.link.send_replace(link);
    }
}

fn socket_of(url: &str) -> SocketAddr {
    let rest = url.split("://").nth(1).unwrap_or(url);
    let host_port = rest.split('/').next().unwrap_or(rest);
    let host_port = host_port.rsplit('@').next().unwrap_or(host_port);
    host_port
        .parse()
        .unwrap_or_else(|_| panic!("{url} is not a host:port URL"))
}

/// A `vmreg serve` on explicit Redis and S3 addresses (the proxies), which the shared
/// harness cannot express because it takes them from the environment.
struct Direct {
    url: String,
    child: Child,
    dir: PathBuf,
}

impl Direct {
    fn start(redis_url: &str, s3_endpoint: &str) -> Direct {
        let dir =
            std::env::temp_dir().join(format!("vmreg-outage-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let prefix = format!("o{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let log = std::fs::File::create(dir.join("server.log")).expect("log file");
        let mut child = Command::new(vmreg_bin())
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.join("data"))
            .args([
                "--redis-url",
                redis_url,
                "--redis-prefix",
                &format!("{prefix}:"),
            ])
            .args([
                "--s3-bucket",
                &env("VMREG_TEST_S3_BUCKET"),
                "--s3-endpoint",
                s3_endpoint,
            ])
            .args([
                "--s3-region",
                &std::env::var("VMREG_TEST_S3_REGION").unwrap_or_else(|_| "garage".into()),
            ])
            .args(["--s3-path-style", "--s3-prefix", &prefix])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start vmreg");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
        let url = lines.by_ref().map_while(Result::ok).find_map(|l| {
            l.split("listening on ")
                .nth(1)
                .map(|u| u.trim().to_string())
        });
        std::thread::spawn(move || for _ in lines {});
        let Some(url) = url else {
            let _ = child.kill();
            panic!(
                "vmreg did not start: {}",
                std::fs::read_to_string(dir.join("server.log")).unwrap_or_default()
            );
        };
        Direct { url, child, dir }
    }

    fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// The same process is still serving: recovery needed no restart.
    fn assert_same_process(&mut self) {
        assert!(
            matches!(self.child.try_wait(), Ok(None)),
            "vmreg exited during the outage"
        );
    }
}

impl Drop for Direct {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Negotiates, uploads and commits against a base URL; returns the first failing reply.
async fn push_to(base: &str, id: &str, name: &str, tag: &str, files: &[&TestFile]) -> Reply {
    let plan = send_json(
        Method::POST,
        &format!("{base}/api/v1/push"),
        &push_request(id, name, tag, files),
    )
    .await;
    if plan.status != 200 {
        return plan;
    }
    let session = plan.json["body"]["session"]
        .as_str()
        .expect("session")
        .to_string();
    for f in plan.json["body"]["files"].as_array().expect("files") {
        if f["upload"] != true {
            continue;
        }
        let file = files
            .iter()
            .find(|t| t.name == f["name"])
            .expect("a pushed file");
        let key = f["key"].as_str().expect("key");
        let url = format!(
            "{base}/api/v1/push/{session}/files/{}?offset=0",
            encode_path(key)
        );
        let reply = call(Method::PUT, &url, Some(file.data.clone())).await;
        if reply.status != 200 {
            return reply;
        }
    }
    try_commit_push(base, &session).await
}

/// Asserts a quick `FAIL` with 503.
async fn assert_unavailable(what: &str, reply: impl std::future::Future<Output = Reply>) {
    let started = Instant::now();
    let reply = reply.await;
    let took = started.elapsed();
    assert_eq!(reply.status, 503, "{what}: {reply:?}");
    reply.assert_fail(503);
    eprintln!("{what}: 503 after {took:?}");
    assert!(
        took < Duration::from_secs(10),
        "{what} took {took:?}: an outage must answer fast"
    );
}

async fn wait_ready(base: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        if get(&format!("{base}/readyz")).await.status == 200 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{base} did not become ready again by itself"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "S3 + Redis only: VMREG_TEST_BACKEND=s3, --include-ignored (scripts/test.sh)"]
async fn a_redis_outage_answers_503_and_heals_without_a_restart() {
    require_s3_services();
    redis_outage(Link::Down).await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "S3 + Redis only: VMREG_TEST_BACKEND=s3, --include-ignored (scripts/test.sh)"]
async fn a_hung_redis_answers_503_and_heals_without_a_restart() {
    require_s3_services();
    redis_outage(Link::Frozen).await;
}

async fn redis_outage(mode: Link) {
    let proxy = Proxy::start(socket_of(&env("VMREG_TEST_REDIS_URL"))).await;
    let mut server = Direct::start(
        &format!("redis://{}", proxy.addr),
        &env("VMREG_TEST_S3_ENDPOINT"),
    );
    let base = server.url.clone();
    let id = new_id();
    let name = format!("outage-{}", &id[..8]);
    let layer = image(100_000, 21);
    let nvram = TestFile::new("nvram", "nvram", 4096, 22);
    push_to(&base, &id, &name, "before", &[&layer, &nvram])
        .await
        .ok_body();

    proxy.set(mode);
    assert_unavailable("readyz", get(&server.at("/readyz"))).await;
    assert_unavailable("list", get(&server.at("/registry/v2/vm"))).await;
    assert_unavailable("get", get(&server.at(&format!("/registry/vm?id={id}")))).await;
    let during = image(10_000, 23);
    assert_unavailable(
        "push",
        push_to(&base, &id, &name, "during", &[&during, &nvram]),
    )
    .await;
    get(&server.at("/livez")).await.ok_body();

    proxy.set(Link::Up);
    wait_ready(&base, Duration::from_secs(30)).await;
    let after = image(10_000, 24);
    assert_eq!(
        push_to(&base, &id, &name, "after", &[&after, &nvram])
            .await
            .ok_body()["number"],
        1
    );
    let view = get(&server.at(&format!("/registry/vm?id={id}")))
        .await
        .ok_body()
        .clone();
    let tags: Vec<&str> = view["versions"]
        .as_array()
        .expect("versions")
        .iter()
        .filter_map(|v| v["tag"].as_str())
        .collect();
    assert_eq!(
        tags,
        vec!["before", "after"],
        "nothing half-committed from the outage"
    );
    server.assert_same_process();
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "S3 + Redis only: VMREG_TEST_BACKEND=s3, --include-ignored (scripts/test.sh)"]
async fn an_s3_outage_answers_503_and_heals_without_a_restart() {
    require_s3_services();
    s3_outage(Link::Down).await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "S3 + Redis only: VMREG_TEST_BACKEND=s3, --include-ignored (scripts/test.sh)"]
async fn a_hung_s3_answers_503_and_heals_without_a_restart() {
    require_s3_services();
    s3_outage(Link::Frozen).await;
}

async fn s3_outage(mode: Link) {
    let proxy = Proxy::start(socket_of(&env("VMREG_TEST_S3_ENDPOINT"))).await;
    let mut server = Direct::start(
        &env("VMREG_TEST_REDIS_URL"),
        &format!("http://{}", proxy.addr),
    );
    let base = server.url.clone();
    let id = new_id();
    let name = format!("s3-outage-{}", &id[..8]);
    let layer = image(6 * 1024 * 1024, 31);
    let nvram = TestFile::new("nvram", "nvram", 4096, 32);
    push_to(&base, &id, &name, "before", &[&layer, &nvram])
        .await
        .ok_body();
    let key = layer.name.clone();

    proxy.set(mode);
    assert_unavailable("readyz", get(&server.at("/readyz"))).await;
    assert_unavailable(
        "download",
        get(&server.at(&format!("/api/v1/files/{}", encode_path(&key)))),
    )
    .await;
    let during = image(100_000, 33);
    assert_unavailable(
        "push",
        push_to(&base, &id, &name, "during", &[&during, &nvram]),
    )
    .await;
    // The index lives in Redis and still answers.
    get(&server.at(&format!("/registry/vm?id={id}")))
        .await
        .ok_body();

    proxy.set(Link::Up);
    wait_ready(&base, Duration::from_secs(30)).await;
    let (digest, len) = download_digest(&base, &key).await;
    assert_eq!((digest, len), (layer.sha256(), layer.data.len() as u64));
    assert_eq!(
        push_to(&base, &id, &name, "after", &[&during, &nvram])
            .await
            .ok_body()["number"],
        1
    );
    let view = get(&server.at(&format!("/registry/vm?id={id}")))
        .await
        .ok_body()
        .clone();
    let tags: Vec<&str> = view["versions"]
        .as_array()
        .expect("versions")
        .iter()
        .filter_map(|v| v["tag"].as_str())
        .collect();
    assert_eq!(
        tags,
        vec!["before", "after"],
        "nothing half-committed from the outage"
    );
    server.assert_same_process();
}

// ---------------------------------------------------------------------------------------
// Listing scale: the vendor caches its list for 30 s because it is slow; ours must not need to.

#[tokio::test(flavor = "multi_thread")]
#[ignore = "S3 + Redis only: VMREG_TEST_BACKEND=s3, --include-ignored (scripts/test.sh)"]
async fn listing_ten_thousand_templates_is_fast() {
    require_s3_services();
    use vmreg::meta::{keys, MetaStore};
    let ns = Namespace::new();
    let meta = vmreg::meta::redis::RedisMeta::connect(&vmreg::config::RedisConfig {
        url: env("VMREG_TEST_REDIS_URL"),
        prefix: format!("{}:", ns.prefix),
    })
    .await
    .expect("redis");
    // Seeded straight into the index: pushing 10,000 templates would test pushes instead.
    let n = 10_000;
    for batch in (0..n).collect::<Vec<usize>>().chunks(1000) {
        let mut tx = meta.begin().await.expect("begin");
        for i in batch {
            let id = uuid::Uuid::new_v4();
            let summary = vmreg::model::TemplateSummary {
                id,
                name: format!("template-{i:05}"),
                size: *i as u64,
                arch: "arm64".into(),
                created: 1,
                last_push: 2,
                latest_tag: "t".into(),
                versions: 1,
                version_list: Some(vec![vmreg::model::VersionSummary {
                    number: 0,
                    tag: "t".into(),
                    size: *i as u64,
                }]),
            };
            tx.put(&keys::summary(&id), vmreg::meta::encode(&summary));
            tx.set_add(keys::TEMPLATES, &id.to_string());
        }
        assert!(tx.commit().await.expect("commit"));
    }
    let server = Server::start_in(ns, &[]);
    get(&server.at("/registry/v2/vm")).await.ok_body();
    let started = Instant::now();
    let list = get(&server.at("/registry/v2/vm")).await;
    let took = started.elapsed();
    let items = list.ok_body().as_array().expect("a list").clone();
    assert_eq!(items.len(), n);
    assert_eq!(items[0]["name"], "template-00000");
    assert_eq!(
        items[n - 1]["name"],
        format!("template-{:05}", n - 1).as_str()
    );
    assert!(
        took < Duration::from_secs(3),
        "listing {n} templates took {took:?}"
    );
    eprintln!("listing {n} templates took {took:?}");
}

// ---------------------------------------------------------------------------------------
// Identity and access across replicas.

#[tokio::test(flavor = "multi_thread")]
#[ignore = "S3 + Redis only: VMREG_TEST_BACKEND=s3, --include-ignored (scripts/test.sh)"]
async fn api_key_sessions_are_shared_and_end_everywhere_when_the_key_is_deleted() {
    require_s3_services();
    use common::auth::{basic, create_key, hand, send, send_json_as, session, shake};
    // No signing secret configured: the first replica makes one and the others share it.
    let flags = [
        "--enable-auth",
        "--root-token",
        "replica-root-token",
        "--enable-api-keys",
        "--enable-authorization",
    ];
    let a = Server::start_with(&flags);
    let b = a.replica();
    let root = basic("root", "replica-root-token");

    // A group and a key made through A, a TAP hand on A and its shake on B.
    let group = send_json_as(
        Method::PUT,
        &a.at("/admin/api/v1/permission/group/fleet"),
        &json!({"permissions": ["list_vms"]}),
        Some(&root),
    )
    .await;
    assert_eq!(group.status, 200, "{group:?}");
    let private = create_key(&a.url, &root, "mac-1", 600, &["fleet"]).await;
    let secret = hand(&a.url, "mac-1", &private).await;
    let shaken = shake(&b.url, "mac-1", &secret).await;
    assert_eq!(shaken.status, 200, "{shaken:?}");
    assert_eq!(
        shake(&a.url, "mac-1", &secret).await.status,
        401,
        "replayed on the other replica"
    );
    let on_b = common::auth::bearer(&shaken.json["data"]);
    // A session made on A, used on B, and the one shaken on B used on A.
    let on_a = session(&a.url, "mac-1", &private).await;
    for (server, bearer) in [(&b, &on_a), (&a, &on_b), (&b, &on_b)] {
        let list = send(
            Method::GET,
            &server.at("/registry/v2/vm"),
            None,
            Some(bearer),
        )
        .await;
        assert_eq!(list.status, 200, "{list:?}");
        let disk = send(
            Method::GET,
            &server.at("/registry/disk"),
            None,
            Some(bearer),
        )
        .await;
        assert_eq!(disk.status, 403, "the group set on A rules on B: {disk:?}");
    }

    // Shakes of one secret racing on both replicas: exactly one wins.
    let secret = hand(&a.url, "mac-1", &private).await;
    let tries = (0..8).map(|i| {
        let url = if i % 2 == 0 {
            a.url.clone()
        } else {
            b.url.clone()
        };
        let secret = secret.clone();
        async move { shake(&url, "mac-1", &secret).await.status }
    });
    let statuses = futures_util::future::join_all(tries).await;
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 401),
        "{statuses:?}"
    );

    // Deleting the key through A ends its sessions on B with the very next request.
    let deleted = send_json_as(
        Method::DELETE,
        &a.at("/v1/apikey"),
        &json!({"id": "mac-1"}),
        Some(&root),
    )
    .await;
    assert_eq!(deleted.status, 200, "{deleted:?}");
    for bearer in [&on_a, &on_b] {
        let list = send(Method::GET, &b.at("/registry/v2/vm"), None, Some(bearer)).await;
        assert_eq!(list.status, 401, "{list:?}");
        assert_eq!(list.json["message"], "Authentication Required");
    }

    // A replica started later verifies the shared sessions too.
    let private = create_key(&b.url, &root, "mac-2", 600, &["fleet"]).await;
    let bearer = session(&b.url, "mac-2", &private).await;
    let c = a.replica();
    let list = send(Method::GET, &c.at("/registry/v2/vm"), None, Some(&bearer)).await;
    assert_eq!(list.status, 200, "{list:?}");
}

/// An OCI blob upload begun on one replica goes on and closes on another: the upload's
/// parts and the bytes past its last whole part are in the shared stores, not in memory.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "S3 + Redis only: VMREG_TEST_BACKEND=s3, --include-ignored (scripts/test.sh)"]
async fn an_oci_chunked_upload_moves_between_replicas() {
    require_s3_services();
    let a = Server::start();
    let b = a.replica();
    let c = reqwest::Client::new();
    let data: Vec<u8> = (0..11u32 << 20).map(|i| (i % 251) as u8).collect();
    let digest = format!("sha256:{}", hex::encode(sha2::Sha256::digest(&data)));
    let cut = 9 << 20;
    let opened = c
        .post(a.at("/v2/fleet/vm/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(opened.status(), 202);
    let loc = opened.headers()["location"].to_str().unwrap().to_string();
    // On A: one whole 8 MiB part and 1 MiB left over; on B: the rest.
    for (server, range, body) in [
        (&a, format!("0-{}", cut - 1), &data[..cut]),
        (&b, format!("{cut}-{}", data.len() - 1), &data[cut..]),
    ] {
        let reply = c
            .patch(server.at(&loc))
            .header("content-range", range)
            .body(body.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), 202);
    }
    let closed = c
        .put(a.at(&format!("{loc}?digest={digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(closed.status(), 201);
    let got = c
        .get(b.at(&format!("/v2/fleet/vm/blobs/{digest}")))
        .send()
        .await
        .unwrap();
    assert!(got.bytes().await.unwrap() == data);
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "S3 + Redis only: VMREG_TEST_BACKEND=s3, --include-ignored (scripts/test.sh)"]
async fn two_ranges_of_one_file_through_two_replicas_assemble() {
    require_s3_services();
    let a = Server::start_with(&["--part-size", "5MiB"]);
    let b = a.replica();
    let id = new_id();
    let file = image(6 * (5 << 20) + 777, 61);
    let plan = send_json(
        Method::POST,
        &a.at("/api/v1/push"),
        &push_request(&id, &format!("halves-{}", &id[..8]), "t", &[&file]),
    )
    .await;
    let plan = plan.ok_body().clone();
    let session = plan["session"].as_str().unwrap().to_string();
    let part = plan["files"][0]["part_size"].as_u64().unwrap() as usize;
    assert_eq!(part, 5 << 20);
    let key = encode_path(&file.name);
    let range = |s: &Server, start: usize, end: usize| {
        let url = s.at(&format!(
            "/api/v1/push/{session}/files/{key}?offset={start}"
        ));
        let body = file.data[start..end].to_vec();
        async move { call(Method::PUT, &url, Some(body)).await }
    };
    // Parts 4.. through b, 1..=3 through a, at once: the hash of the parts a replica did
    // not receive comes from the other's recorded state or is read back from the store.
    let (first, second) =
        tokio::join!(range(&a, 0, 3 * part), range(&b, 3 * part, file.data.len()));
    let done = [
        first.ok_body()["complete"].clone(),
        second.ok_body()["complete"].clone(),
    ];
    assert!(done.contains(&json!(true)), "{done:?}");
    let committed = commit_push(&b.url, &session).await;
    assert_eq!(committed["number"], 0);
    assert!(download(&a, &file.name).await == file.data);
    assert!(download(&b, &file.name).await == file.data);
}
