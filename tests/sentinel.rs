//! Redis HA through Sentinel, with real parts: a Redis primary and its replica, three
//! `redis-sentinel` processes (quorum 2, down after 1 s), AUTH on the data nodes and on the
//! sentinels, two `vmreg serve` replicas on one `redis+sentinel://` URL, and the real client.
//! The primary is killed with SIGKILL while 50 pushes and pulls run across both replicas:
//! every command must succeed (the client asks again while the registry answers 503),
//! every version a push reported committed must still be listed, `fsck` must be clean, and
//! no password may appear in a log.
//!
//! Blobs go to S3 (Garage) when `VMREG_TEST_S3_ENDPOINT` is set (`scripts/test.sh`), else
//! to one local directory both replicas share. The Redis processes are the test's own:
//! `redis-server` (`VMREG_TEST_REDIS_SERVER` or the PATH) and `redis-sentinel` (the PATH).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Namespace, Server};
use serde_json::Value;

/// The name the sentinels monitor the primary under.
const MASTER: &str = "vmreg-ha";
/// Client commands the test runs, pushes and pulls together.
const COMMANDS: usize = 50;
/// Threads running client commands at once.
const WORKERS: usize = 4;
/// The primary is killed when this many commands have finished.
const KILL_AFTER: usize = 15;

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address").port()
}

fn binary(env: &str, name: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(env).filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|p| p.is_file());
    found.unwrap_or_else(|| panic!("this test needs {name} (apt-get install {name})"))
}

/// A Redis process of the test's; SIGKILLed when dropped.
struct Daemon {
    port: u16,
    child: Option<Child>,
    log: PathBuf,
}

impl Daemon {
    fn spawn(cmd: &mut Command, port: u16, log: PathBuf) -> Daemon {
        let out = std::fs::File::create(&log).expect("create a log");
        let err = out.try_clone().expect("clone the log");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("start a Redis process");
        Daemon {
            port,
            child: Some(child),
            log,
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A primary, its replica and three sentinels on loopback, with passwords.
struct Topology {
    primary: Daemon,
    replica: Daemon,
    sentinels: Vec<Daemon>,
    password: String,
    sentinel_password: String,
}

async fn redis_query<T: redis::FromRedisValue>(url: &str, cmd: &redis::Cmd) -> Option<T> {
    let client = redis::Client::open(url).ok()?;
    let mut conn = tokio::time::timeout(
        Duration::from_secs(2),
        client.get_multiplexed_async_connection(),
    )
    .await
    .ok()?
    .ok()?;
    tokio::time::timeout(Duration::from_secs(2), cmd.query_async(&mut conn))
        .await
        .ok()?
        .ok()
}

async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl Topology {
    async fn start(dir: &Path) -> Topology {
        let server = binary("VMREG_TEST_REDIS_SERVER", "redis-server");
        let sentinel = binary("VMREG_TEST_REDIS_SENTINEL", "redis-sentinel");
        let password = format!("data-{}", uuid::Uuid::new_v4().simple());
        let sentinel_password = format!("sentinel-{}", uuid::Uuid::new_v4().simple());
        let data_node = |name: &str, port: u16, replica_of: Option<u16>| {
            let node_dir = dir.join(name);
            std::fs::create_dir_all(&node_dir).unwrap();
            let mut cmd = Command::new(&server);
            cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
                .arg("--dir")
                .arg(&node_dir)
                .args(["--requirepass", &password, "--masterauth", &password]);
            if let Some(primary) = replica_of {
                cmd.args(["--replicaof", "127.0.0.1", &primary.to_string()]);
            }
            Daemon::spawn(&mut cmd, port, dir.join(format!("{name}.log")))
        };
        let primary = data_node("primary", free_port(), None);
        let replica = data_node("replica", free_port(), Some(primary.port));
        let replica_url = format!("redis://:{password}@127.0.0.1:{}", replica.port);
        wait_until("the replica to sync", Duration::from_secs(30), || async {
            let info: Option<String> =
                redis_query(&replica_url, redis::cmd("INFO").arg("replication")).await;
            info.is_some_and(|i| i.contains("master_link_status:up"))
        })
        .await;

        let mut sentinels = Vec::new();
        for n in 0..3 {
            let port = free_port();
            let sdir = dir.join(format!("sentinel-{n}"));
            std::fs::create_dir_all(&sdir).unwrap();
            // Sentinel rewrites its file: each gets its own.
            let conf = sdir.join("sentinel.conf");
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\nprotected-mode no\ndir {}\n\
                     requirepass {sentinel_password}\n\
                     sentinel monitor {MASTER} 127.0.0.1 {} 2\n\
                     sentinel auth-pass {MASTER} {password}\n\
                     sentinel down-after-milliseconds {MASTER} 1000\n\
                     sentinel failover-timeout {MASTER} 3000\n\
                     sentinel parallel-syncs {MASTER} 1\n",
                    sdir.display(),
                    primary.port
                ),
            )
            .unwrap();
            let mut cmd = Command::new(&sentinel);
            cmd.arg(&conf);
            sentinels.push(Daemon::spawn(
                &mut cmd,
                port,
                dir.join(format!("sentinel-{n}.log")),
            ));
        }
        let topology = Topology {
            primary,
            replica,
            sentinels,
            password,
            sentinel_password,
        };
        // A failover needs a quorum of sentinels that know each other and the replica.
        for s in &topology.sentinels {
            let url = topology.sentinel_url(s);
            wait_until(
                "every sentinel to know the others and the replica",
                Duration::from_secs(30),
                || async {
                    let peers: Option<Vec<redis::Value>> =
                        redis_query(&url, redis::cmd("SENTINEL").arg("sentinels").arg(MASTER))
                            .await;
                    let replicas: Option<Vec<redis::Value>> =
                        redis_query(&url, redis::cmd("SENTINEL").arg("replicas").arg(MASTER)).await;
                    peers.is_some_and(|p| p.len() == 2) && replicas.is_some_and(|r| r.len() == 1)
                },
            )
            .await;
        }
        topology
    }

    fn sentinel_url(&self, s: &Daemon) -> String {
        format!("redis://:{}@127.0.0.1:{}", self.sentinel_password, s.port)
    }

    /// The URL vmreg is given: every sentinel, the data nodes' password in the user info,
    /// the sentinels' as an option.
    fn vmreg_url(&self) -> String {
        let hosts: Vec<String> = self
            .sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect();
        format!(
            "redis+sentinel://:{}@{}/{MASTER}?sentinel_password={}",
            self.password,
            hosts.join(","),
            self.sentinel_password
        )
    }

    /// The port every reachable sentinel names as the master's, when they agree.
    async fn master_port(&self) -> Option<u16> {
        let mut ports = Vec::new();
        for s in &self.sentinels {
            let addr: Option<(String, String)> = redis_query(
                &self.sentinel_url(s),
                redis::cmd("SENTINEL")
                    .arg("get-master-addr-by-name")
                    .arg(MASTER),
            )
            .await;
            ports.push(addr.and_then(|(_, p)| p.parse::<u16>().ok()));
        }
        let first = *ports.first()?;
        ports.iter().all(|p| *p == first).then_some(first).flatten()
    }
}

/// `vmreg registry` with its own remotes file and nothing from the environment.
fn client(dir: &Path, url: &str, lib: &Path, args: &[&str]) -> Output {
    Command::new(common::vmreg_bin())
        .arg("registry")
        .env("VMREG_CONFIG", dir.join("remotes.yaml"))
        .env_remove("VMREG_LIB")
        .env_remove("VMREG_RATE_LIMIT")
        .env_remove("VMREG_ROOT_TOKEN")
        .env_remove("VMREG_API_KEY_ID")
        .env_remove("VMREG_API_KEY_FILE")
        .args(["-a", url, "--lib"])
        .arg(lib)
        .arg("--json")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run vmreg registry")
}

/// Writes the VM `uuid` with `layers` (top first) into `lib`.
fn write_vm(lib: &Path, uuid: &str, name: &str, layers: &[(String, Vec<u8>)]) {
    let vm_dir = lib.join("vm_lib").join(uuid);
    std::fs::create_dir_all(&vm_dir).unwrap();
    std::fs::create_dir_all(lib.join("img_lib")).unwrap();
    for (file, bytes) in layers {
        let path = lib.join("img_lib").join(file);
        if !path.exists() {
            std::fs::write(path, bytes).unwrap();
        }
    }
    std::fs::write(vm_dir.join("nvram"), format!("nvram of {name}")).unwrap();
    let mut config = format!(
        "uuid: {uuid}\nname: {name}\nram: 2G\ncpu:\n  cores: 2\nfirmware:\n  type: uefi\nnvram: true\n\
         hard_drives:\n- controller: ablk\n  file: {}\n  pci_slot: 4\n",
        layers[0].0
    );
    if layers.len() > 1 {
        config.push_str("images:\n");
        for (file, _) in &layers[1..] {
            config.push_str(&format!("- {file}\n"));
        }
    }
    std::fs::write(vm_dir.join("config.yaml"), config).unwrap();
}

/// One client command as it ran.
#[derive(Debug)]
struct Ran {
    what: String,
    started: Instant,
    ended: Instant,
    ok: bool,
    stderr: String,
}

/// What one worker pushed: its template, and the versions pushes reported committed.
#[derive(Default)]
struct Pushed {
    id: String,
    name: String,
    committed: BTreeMap<String, u64>,
    layers: Vec<(String, Vec<u8>)>,
}

fn worker(
    n: usize,
    urls: [String; 2],
    dir: PathBuf,
    next: Arc<AtomicUsize>,
    done: Arc<AtomicUsize>,
    log: Arc<Mutex<Vec<Ran>>>,
) -> Pushed {
    let src = dir.join(format!("worker-{n}"));
    std::fs::create_dir_all(&src).unwrap();
    let mut pushed = Pushed {
        id: uuid::Uuid::new_v4().to_string(),
        name: format!("ha-vm-{n}"),
        ..Pushed::default()
    };
    let mut step = 0usize;
    loop {
        let i = next.fetch_add(1, Ordering::SeqCst);
        if i >= COMMANDS {
            return pushed;
        }
        let url = &urls[i % 2];
        let push = step % 2 == 0 || pushed.committed.is_empty();
        step += 1;
        let started = Instant::now();
        let (what, out) = if push {
            let layer = (
                format!("{}.ank", uuid::Uuid::new_v4().simple()),
                common::pseudo_random(64 * 1024 + i * 4099, (n * 1000 + i) as u64),
            );
            pushed.layers.insert(0, layer);
            write_vm(&src, &pushed.id, &pushed.name, &pushed.layers);
            let tag = format!("t{i}");
            let out = client(&src, url, &src, &["push", "-t", &tag, &pushed.name]);
            if out.status.success() {
                let reply: Value = serde_json::from_slice(&out.stdout)
                    .unwrap_or_else(|e| panic!("push {tag}: stdout is not JSON: {e}"));
                let number = reply["number"]
                    .as_u64()
                    .unwrap_or_else(|| panic!("push {tag}: no number in {reply}"));
                assert_eq!(reply["tag"], tag.as_str(), "{reply}");
                pushed.committed.insert(tag.clone(), number);
            }
            (format!("push {} {tag} via {url}", pushed.name), out)
        } else {
            let (tag, _) = pushed
                .committed
                .iter()
                .next_back()
                .map(|(t, n)| (t.clone(), *n))
                .expect("a committed version to pull");
            // A fresh library each time: every byte comes from the registry.
            let dst = dir.join(format!("pull-{n}-{i}"));
            std::fs::create_dir_all(&dst).unwrap();
            let out = client(&dst, url, &dst, &["pull", "-t", &tag, &pushed.name]);
            if out.status.success() {
                // The newest layer at the time of that push is the top one of this tag; every
                // layer pulled must be byte-identical to the pushed one.
                let mut compared = 0;
                for (file, bytes) in &pushed.layers {
                    let path = dst.join("img_lib").join(file);
                    if path.exists() {
                        assert_eq!(
                            &std::fs::read(&path).unwrap(),
                            bytes,
                            "pull {tag}: {file} differs from what was pushed"
                        );
                        compared += 1;
                    }
                }
                assert!(compared > 0, "pull {tag} wrote no layer");
            }
            let _ = std::fs::remove_dir_all(&dst);
            (format!("pull {} {tag} via {url}", pushed.name), out)
        };
        let ran = Ran {
            what,
            started,
            ended: Instant::now(),
            ok: out.status.success(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        };
        log.lock().unwrap().push(ran);
        done.fetch_add(1, Ordering::SeqCst);
    }
}

/// `vmreg admin ARGS` on the test's stores.
fn admin(ns: &Namespace, stores: &[String], args: &[&str]) -> Output {
    Command::new(common::vmreg_bin())
        .arg("admin")
        .args(args)
        .args(ns.store_args())
        .args(stores)
        .stdin(Stdio::null())
        .output()
        .expect("run vmreg admin")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server and redis-sentinel (scripts/test.sh)"]
async fn pushes_and_pulls_ride_through_a_sentinel_failover() {
    let ns = Namespace::embedded();
    let topology = Topology::start(&ns.dir.join("redis")).await;
    assert_eq!(topology.master_port().await, Some(topology.primary.port));

    let mut stores = vec![
        "--redis-url".to_string(),
        topology.vmreg_url(),
        "--redis-prefix".into(),
        format!("{}:", ns.prefix),
    ];
    let blobs = match std::env::var("VMREG_TEST_S3_ENDPOINT") {
        Ok(endpoint) if !endpoint.is_empty() => {
            stores.extend([
                "--s3-bucket".into(),
                std::env::var("VMREG_TEST_S3_BUCKET").expect("VMREG_TEST_S3_BUCKET"),
                "--s3-endpoint".into(),
                endpoint.clone(),
                "--s3-region".into(),
                std::env::var("VMREG_TEST_S3_REGION").unwrap_or_else(|_| "garage".into()),
                "--s3-path-style".into(),
                "--s3-prefix".into(),
                ns.prefix.clone(),
            ]);
            format!("S3 at {endpoint}")
        }
        _ => "the local disk (no VMREG_TEST_S3_ENDPOINT)".to_string(),
    };
    eprintln!(
        "primary :{}, replica :{}, sentinels {:?}; blobs on {blobs}",
        topology.primary.port,
        topology.replica.port,
        topology
            .sentinels
            .iter()
            .map(|s| s.port)
            .collect::<Vec<_>>()
    );
    let extra: Vec<&str> = stores.iter().map(String::as_str).collect();
    let a = Server::start_in(ns.clone(), &extra);
    let b = a.replica();

    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let log = Arc::new(Mutex::new(Vec::new()));
    let workers: Vec<_> = (0..WORKERS)
        .map(|n| {
            let (next, done, log) = (next.clone(), done.clone(), log.clone());
            let urls = [a.url.clone(), b.url.clone()];
            let dir = ns.dir.join("clients");
            std::thread::spawn(move || worker(n, urls, dir, next, done, log))
        })
        .collect();

    // Partway through, the primary dies as a crash would.
    wait_until(
        "commands to finish before the kill",
        Duration::from_secs(300),
        || {
            let done = done.clone();
            async move { done.load(Ordering::SeqCst) >= KILL_AFTER }
        },
    )
    .await;
    let mut topology = topology;
    topology.primary.kill();
    let killed = Instant::now();
    eprintln!(
        "primary killed (SIGKILL) after {} commands",
        done.load(Ordering::SeqCst)
    );
    let replica_port = topology.replica.port;
    wait_until(
        "Sentinel to promote the replica",
        Duration::from_secs(60),
        || {
            let t = &topology;
            async move { t.master_port().await == Some(replica_port) }
        },
    )
    .await;
    let promoted = killed.elapsed();
    eprintln!("the sentinels named the replica master {promoted:?} after the kill");

    let mut pushed = Vec::new();
    for w in workers {
        pushed.push(w.join().expect("a worker panicked"));
    }
    let ran = std::mem::take(&mut *log.lock().unwrap());
    assert_eq!(ran.len(), COMMANDS);
    let failed: Vec<&Ran> = ran.iter().filter(|r| !r.ok).collect();
    let spanning = ran
        .iter()
        .filter(|r| r.started < killed && r.ended > killed)
        .count();
    let after = ran.iter().filter(|r| r.started >= killed).count();
    let slowest = ran
        .iter()
        .map(|r| (r.ended - r.started, r.what.as_str()))
        .max()
        .expect("commands ran");
    eprintln!(
        "{} commands: {} failed, {spanning} in flight at the kill, {after} started after it; slowest {:?} ({})",
        ran.len(),
        failed.len(),
        slowest.0,
        slowest.1
    );
    for r in &ran {
        if !r.stderr.is_empty() {
            eprintln!("  {}: {}", r.what, r.stderr.replace('\n', " | "));
        }
    }
    assert!(
        failed.is_empty(),
        "every command must succeed through the failover: {failed:#?}"
    );
    assert!(
        spanning > 0,
        "no command was in flight when the primary died"
    );
    assert!(after > 0, "no command ran after the primary died");

    // Every version a push reported committed is listed, with its number, on both replicas.
    for server in [&a, &b] {
        for p in &pushed {
            let reply = common::get(&server.at(&format!("/registry/vm?id={}", p.id))).await;
            let listed: BTreeMap<String, u64> = reply.ok_body()["versions"]
                .as_array()
                .expect("versions")
                .iter()
                .map(|v| {
                    (
                        v["tag"].as_str().unwrap_or_default().to_string(),
                        v["number"].as_u64().unwrap_or(u64::MAX),
                    )
                })
                .collect();
            for (tag, number) in &p.committed {
                assert_eq!(
                    listed.get(tag),
                    Some(number),
                    "{} {tag} was reported committed as version {number}; listed: {listed:?}",
                    p.name
                );
            }
        }
    }
    let committed: usize = pushed.iter().map(|p| p.committed.len()).sum();
    eprintln!("{committed} committed versions all listed");

    let out = admin(&ns, &stores, &["fsck", "--json"]);
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "fsck after the failover: {report} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_str(&report).expect("fsck --json");
    assert_eq!(report["problems"], serde_json::json!([]), "{report}");
    assert_eq!(report["clean"], true, "{report}");

    // Both replicas followed the failover, and no password reached a log.
    let new_master = format!("127.0.0.1:{replica_port}");
    for (name, server) in [("a", &a), ("b", &b)] {
        let log = server.log();
        assert!(
            log.lines()
                .any(|l| l.contains("redis master found by sentinel") && l.contains(&new_master)),
            "replica {name} never used the new master {new_master}:\n{log}"
        );
        for secret in [&topology.password, &topology.sentinel_password] {
            assert!(
                !log.contains(secret.as_str()),
                "replica {name} logged a password"
            );
        }
    }
    for s in &topology.sentinels {
        assert!(
            s.log().contains("+switch-master"),
            "sentinel :{} saw no switch",
            s.port
        );
    }
}
