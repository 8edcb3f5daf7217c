//! Start and heal: `vmreg serve` started before Redis or S3 answers listens at once,
//! reports itself alive and not ready, and serves once the store comes up, in the same
//! process; a configuration the store refuses stops it at once with one line.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use reqwest::Method;

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"))
}

/// A loopback port nothing listens on (yet).
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("its address").port()
}

fn socket_of(url: &str) -> SocketAddr {
    let rest = url.split("://").nth(1).unwrap_or(url);
    let host_port = rest.split('/').next().unwrap_or(rest);
    let host_port = host_port.rsplit('@').next().unwrap_or(host_port);
    host_port
        .parse()
        .unwrap_or_else(|_| panic!("{url} is not a host:port URL"))
}

/// A `vmreg serve` on explicit Redis and S3 addresses.
struct Direct {
    url: String,
    child: Child,
    dir: PathBuf,
}

/// `vmreg serve` on Redis at `redis_url`, and on S3 at `s3_endpoint` when given (else on
/// the local disk).
fn serve_command(redis_url: &str, s3_endpoint: Option<&str>, dir: &std::path::Path) -> Command {
    serve_command_on(redis_url, s3_endpoint, &env_bucket(s3_endpoint), dir)
}

fn env_bucket(s3_endpoint: Option<&str>) -> String {
    match s3_endpoint {
        Some(_) => env("VMREG_TEST_S3_BUCKET"),
        None => String::new(),
    }
}

/// As [`serve_command`], on S3 in `bucket`.
fn serve_command_on(
    redis_url: &str,
    s3_endpoint: Option<&str>,
    bucket: &str,
    dir: &std::path::Path,
) -> Command {
    let prefix = format!("h{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let mut cmd = Command::new(vmreg_bin());
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.join("data"))
        .args([
            "--redis-url",
            redis_url,
            "--redis-prefix",
            &format!("{prefix}:"),
        ])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null());
    if let Some(endpoint) = s3_endpoint {
        cmd.args([
            "--s3-bucket",
            bucket,
            "--s3-endpoint",
            endpoint,
            "--s3-region",
            &std::env::var("VMREG_TEST_S3_REGION").unwrap_or_else(|_| "garage".into()),
            "--s3-path-style",
            "--s3-prefix",
            &prefix,
        ]);
    }
    cmd
}

fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vmreg-heal-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

impl Direct {
    fn start(redis_url: &str, s3_endpoint: Option<&str>) -> Direct {
        let dir = temp_dir();
        let log = std::fs::File::create(dir.join("server.log")).expect("log file");
        let mut child = serve_command(redis_url, s3_endpoint, &dir)
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start vmreg");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let url = lines.by_ref().map_while(Result::ok).find_map(|l| {
            l.split("listening on ")
                .nth(1)
                .map(|u| u.trim().to_string())
        });
        std::thread::spawn(move || for _ in lines {});
        let Some(url) = url else {
            let _ = child.kill();
            panic!("vmreg did not start: {}", read_log(&dir));
        };
        Direct { url, child, dir }
    }

    fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    fn log(&self) -> String {
        read_log(&self.dir)
    }

    fn assert_same_process(&mut self) {
        assert!(
            matches!(self.child.try_wait(), Ok(None)),
            "vmreg exited: {}",
            self.log()
        );
    }
}

fn read_log(dir: &std::path::Path) -> String {
    std::fs::read_to_string(dir.join("server.log")).unwrap_or_default()
}

impl Drop for Direct {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// For `at_least`: `/livez` answers 200 and `/readyz` and a listing 503 naming `missing`,
/// on every look.
async fn alive_but_not_ready(server: &mut Direct, missing: &str, at_least: Duration) {
    let started = Instant::now();
    let mut looks = 0;
    while started.elapsed() < at_least {
        assert_eq!(get(&server.at("/livez")).await.ok_body(), "alive");
        let ready = get(&server.at("/readyz")).await;
        ready.assert_fail(503);
        let message = ready.json["message"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(
            message.starts_with("not ready: ") && message.contains(missing),
            "the probe names what is missing ({missing}): {message}"
        );
        get(&server.at("/registry/v2/vm")).await.assert_fail(503);
        server.assert_same_process();
        looks += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(looks >= 10, "{looks} looks");
}

async fn wait_ready(base: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        if get(&format!("{base}/readyz")).await.status == 200 {
            return;
        }
        assert!(Instant::now() < deadline, "{base} did not become ready");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Pushes one version over HTTP and pulls its file back, byte for byte.
async fn push_and_pull(base: &str) {
    let id = new_id();
    let name = format!("heal-{}", &id[..8]);
    let layer = unique_image(6 * 1024 * 1024 + 17, 71);
    let nvram = TestFile::new("nvram", "nvram", 4096, 72);
    let files = [&layer, &nvram];
    let plan = send_json(
        Method::POST,
        &format!("{base}/api/v1/push"),
        &push_request(&id, &name, "v1", &files),
    )
    .await;
    let session = plan.ok_body()["session"]
        .as_str()
        .expect("session")
        .to_string();
    for f in plan.ok_body()["files"].as_array().expect("files") {
        let file = files.iter().find(|t| t.name == f["name"]).expect("a file");
        let key = f["key"].as_str().expect("key");
        let url = format!(
            "{base}/api/v1/push/{session}/files/{}?offset=0",
            encode_path(key)
        );
        call(Method::PUT, &url, Some(file.data.clone()))
            .await
            .ok_body();
    }
    // A new template's first version is number 0.
    assert_eq!(commit_push(base, &session).await["number"], 0);
    let resp = reqwest::get(format!("{base}/api/v1/files/{}", encode_path(&layer.name)))
        .await
        .expect("download");
    assert_eq!(resp.status().as_u16(), 200);
    let pulled = resp.bytes().await.expect("body");
    assert!(pulled.as_ref() == layer.data.as_slice(), "the pull differs");
}

/// Lines the server logged saying it is not ready: once per change of what is missing.
fn not_ready_lines(log: &str) -> usize {
    log.lines().filter(|l| l.contains("not ready: ")).count()
}

/// Forwards `127.0.0.1:port` to `target` from now on: the service comes up at the address
/// vmreg was given.
async fn forward(port: u16, target: SocketAddr) {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind the forwarder");
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
}

/// A `redis-server` of this test's own, gone with it.
struct OwnRedis(Child);

impl OwnRedis {
    fn start(port: u16, extra: &[&str]) -> OwnRedis {
        let bin =
            std::env::var("VMREG_TEST_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        let child = Command::new(bin)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        OwnRedis(child)
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs redis-server (VMREG_TEST_REDIS_SERVER or on PATH): --include-ignored"]
async fn started_before_redis_it_waits_and_serves_once_redis_is_up() {
    let port = free_port();
    // S3 too on the S3 pass; the disk otherwise, as Redis is what is missing.
    let s3 = s3_backend().then(|| env("VMREG_TEST_S3_ENDPOINT"));
    let mut server = Direct::start(&format!("redis://127.0.0.1:{port}"), s3.as_deref());
    let missing = format!("metadata store redis://127.0.0.1:{port} unreachable");
    alive_but_not_ready(&mut server, &missing, Duration::from_secs(10)).await;

    let _redis = OwnRedis::start(port, &[]);
    wait_ready(&server.url, Duration::from_secs(40)).await;
    push_and_pull(&server.url).await;
    server.assert_same_process();
    let log = server.log();
    assert!(log.contains("the stores answer; serving"), "{log}");
    // Some 8 attempts in 10 s, one line: the same failure is not logged again.
    assert_eq!(not_ready_lines(&log), 1, "{log}");
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "S3 + Redis only: VMREG_TEST_BACKEND=s3, --include-ignored (scripts/test.sh)"]
async fn started_before_s3_it_waits_and_serves_once_s3_is_up() {
    require_s3_services();
    let port = free_port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let mut server = Direct::start(&env("VMREG_TEST_REDIS_URL"), Some(&endpoint));
    let missing = "blob store s3://";
    alive_but_not_ready(&mut server, missing, Duration::from_secs(10)).await;

    forward(port, socket_of(&env("VMREG_TEST_S3_ENDPOINT"))).await;
    wait_ready(&server.url, Duration::from_secs(40)).await;
    push_and_pull(&server.url).await;
    server.assert_same_process();
    let log = server.log();
    assert!(log.contains("the stores answer; serving"), "{log}");
    assert_eq!(not_ready_lines(&log), 1, "{log}");
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs redis-server (VMREG_TEST_REDIS_SERVER or on PATH): --include-ignored"]
async fn sigterm_while_waiting_stops_it_cleanly() {
    let port = free_port();
    let mut server = Direct::start(&format!("redis://127.0.0.1:{port}"), None);
    get(&server.at("/livez")).await.ok_body();
    let pid = server.child.id() as libc::pid_t;
    // SAFETY: signals a child this test started and has not reaped.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = server.child.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "still running after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0), "{}", server.log());
}

// ---------------------------------------------------------------------------------------
// Configuration errors: one line, a non-zero exit, at once.

/// Runs `cmd` to its end (within 20 s); its exit code and its stderr.
fn run_to_exit(mut cmd: Command) -> (Option<i32>, String) {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start vmreg");
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let mut err = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut err)
                .expect("stderr");
            return (status.code(), err);
        }
        if started.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!("vmreg kept running on a configuration error");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A configuration error: exit 1 with one `vmreg: …` line saying `what`.
fn assert_config_error(cmd: Command, what: &str) {
    let started = Instant::now();
    let (code, stderr) = run_to_exit(cmd);
    assert_eq!(code, Some(1), "{stderr}");
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("vmreg: "))
        .collect();
    assert_eq!(ours.len(), 1, "one line: {stderr}");
    assert!(ours[0].contains(what), "{what:?} in {stderr}");
    assert_eq!(stderr.lines().last(), Some(ours[0]), "{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn an_unknown_flag_exits_at_once() {
    let (code, stderr) = run_to_exit({
        let mut cmd = Command::new(vmreg_bin());
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--no-such-flag"]);
        cmd
    });
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr
            .lines()
            .next()
            .is_some_and(|l| l.starts_with("error:") && l.contains("--no-such-flag")),
        "{stderr}"
    );
}

#[test]
fn an_unreadable_certificate_exits_at_once_even_with_the_stores_down() {
    let dir = temp_dir();
    let mut cmd = Command::new(vmreg_bin());
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.join("data"))
        .args(["--redis-url", &format!("redis://127.0.0.1:{}", free_port())])
        .args(["--s3-bucket", "b", "--s3-endpoint"])
        .arg(format!("http://127.0.0.1:{}", free_port()))
        .arg("--server-cert")
        .arg(dir.join("missing-cert.pem"))
        .arg("--server-key")
        .arg(dir.join("missing-key.pem"));
    assert_config_error(cmd, "missing-cert.pem");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
#[ignore = "needs redis-server (VMREG_TEST_REDIS_SERVER or on PATH): --include-ignored"]
fn redis_refusing_the_password_is_a_configuration_error() {
    let port = free_port();
    let _redis = OwnRedis::start(port, &["--requirepass", "right-password"]);
    let dir = temp_dir();
    // WRONGPASS: a password the server does not take.
    let url = format!("redis://:wrong-password@127.0.0.1:{port}");
    assert_config_error(
        serve_command(&url, None, &dir),
        "check the Redis URL and credentials",
    );
    // NOAUTH: no password for a server that wants one.
    let url = format!("redis://127.0.0.1:{port}");
    assert_config_error(
        serve_command(&url, None, &dir),
        "check the Redis URL and credentials",
    );
    // The password never reaches the message.
    let url = format!("redis://:wrong-password@127.0.0.1:{port}");
    let (_, stderr) = run_to_exit(serve_command(&url, None, &dir));
    assert!(!stderr.contains("wrong-password"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
#[ignore = "S3 + Redis only: VMREG_TEST_BACKEND=s3, --include-ignored (scripts/test.sh)"]
fn s3_refusing_the_credentials_is_a_configuration_error() {
    require_s3_services();
    let dir = temp_dir();
    let endpoint = env("VMREG_TEST_S3_ENDPOINT");
    let mut cmd = serve_command(&env("VMREG_TEST_REDIS_URL"), Some(&endpoint), &dir);
    cmd.env("AWS_ACCESS_KEY_ID", "GK0123456789abcdef01234567")
        .env(
            "AWS_SECRET_ACCESS_KEY",
            "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        );
    assert_config_error(cmd, "s3 refused the credentials");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
#[ignore = "S3 + Redis only: VMREG_TEST_BACKEND=s3, --include-ignored (scripts/test.sh)"]
fn a_bucket_that_does_not_exist_is_a_configuration_error() {
    require_s3_services();
    let dir = temp_dir();
    let endpoint = env("VMREG_TEST_S3_ENDPOINT");
    let cmd = serve_command_on(
        &env("VMREG_TEST_REDIS_URL"),
        Some(&endpoint),
        "vmreg-no-such-bucket",
        &dir,
    );
    assert_config_error(cmd, "create the bucket first");
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------------
// The instance id (issue 22, item 4).

#[tokio::test(flavor = "multi_thread")]
async fn the_instance_id_is_the_same_on_every_reply_replica_and_restart() {
    let mut server = Server::start();
    let status = get(&server.at("/registry/status")).await;
    let id = status.ok_body()["instance_id"]
        .as_str()
        .expect("instance_id")
        .to_string();
    assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id}");
    for path in [
        "/registry/status",
        "/registry/v2/vm",
        "/no/such/route",
        "/livez",
    ] {
        let resp = reqwest::get(server.at(path)).await.expect("reply");
        assert_eq!(
            resp.headers()
                .get("x-vmreg-instance")
                .and_then(|v| v.to_str().ok()),
            Some(id.as_str()),
            "{path}"
        );
    }
    server.restart();
    let again = get(&server.at("/registry/status")).await;
    assert_eq!(
        again.ok_body()["instance_id"],
        id.as_str(),
        "after a restart"
    );
    if s3_backend() {
        let replica = server.replica();
        let there = get(&replica.at("/registry/status")).await;
        assert_eq!(there.ok_body()["instance_id"], id.as_str(), "on a replica");
        // The bucket holds it: a lost Redis keeps it.
        let flushed = flush_redis_prefix(&format!("{}:", server.ns.prefix)).await;
        assert!(flushed > 0);
        let mut replica = replica;
        replica.restart();
        let after = get(&replica.at("/registry/status")).await;
        assert_eq!(after.ok_body()["instance_id"], id.as_str(), "after FLUSH");
    }
    let other = Server::start();
    let theirs = get(&other.at("/registry/status")).await;
    assert_ne!(
        theirs.ok_body()["instance_id"],
        id.as_str(),
        "another registry"
    );
}
