//! Black-box tests of `vmreg registry …`: the real binary against a real `vmreg serve`.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::Server;
use serde_json::Value;

// ---- helpers of this file: a VM library on disk and the client as a process ----

/// A `vmreg serve` whose data directory goes when the test ends (templates of hundreds of
/// MiB would otherwise pile up in the temporary directory).
struct Registry(Server);

impl Registry {
    fn start() -> Registry {
        Registry(Server::start())
    }

    fn start_with(extra: &[&str]) -> Registry {
        Registry(Server::start_with(extra))
    }

    /// On the embedded store whatever the pass's backend.
    fn start_embedded() -> Registry {
        Registry(Server::start_in(common::Namespace::embedded(), &[]))
    }
}

impl std::ops::Deref for Registry {
    type Target = Server;
    fn deref(&self) -> &Server {
        &self.0
    }
}

impl std::ops::DerefMut for Registry {
    fn deref_mut(&mut self) -> &mut Server {
        &mut self.0
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.0.kill();
        let _ = std::fs::remove_dir_all(&self.0.ns.dir);
    }
}

/// A scratch directory with a VM library and a remotes file.
struct Node {
    dir: PathBuf,
    lib: PathBuf,
}

impl Node {
    fn new() -> Node {
        let dir =
            std::env::temp_dir().join(format!("vmreg-client-{}", uuid::Uuid::new_v4().simple()));
        let lib = dir.join("lib");
        std::fs::create_dir_all(&lib).unwrap();
        Node { dir, lib }
    }

    /// The client command with this node's config file and library, aimed at `server`.
    fn cmd(&self, server: &Server, args: &[&str]) -> Command {
        self.cmd_at(&server.url, args)
    }

    /// The client command aimed at the registry URL `url`.
    fn cmd_at(&self, url: &str, args: &[&str]) -> Command {
        let mut cmd = client(&self.dir.join("remotes.yaml"));
        cmd.args(["-a", url, "--lib"]).arg(&self.lib).args(args);
        cmd
    }

    fn run(&self, server: &Server, args: &[&str]) -> Output {
        self.cmd(server, args).output().expect("run vmreg registry")
    }

    /// Runs with `--json`, asserts success and parses stdout.
    fn json(&self, server: &Server, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.run(server, &all);
        assert!(
            out.status.success(),
            "vmreg registry {args:?} failed: {}",
            stderr(&out)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "{args:?}: stdout is not JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// Writes a VM: `layers` top first (the first is the hard drive), an nvram, an
    /// optional state file.
    fn make_vm(
        &self,
        uuid: &str,
        name: &str,
        layers: &[(&str, &[u8])],
        state: Option<(&str, &[u8])>,
        nvram: &[u8],
    ) {
        let vm_dir = self.lib.join("vm_lib").join(uuid);
        std::fs::create_dir_all(&vm_dir).unwrap();
        std::fs::create_dir_all(self.lib.join("img_lib")).unwrap();
        std::fs::create_dir_all(self.lib.join("state_lib")).unwrap();
        for (file, bytes) in layers {
            std::fs::write(self.lib.join("img_lib").join(file), bytes).unwrap();
        }
        std::fs::write(vm_dir.join("nvram"), nvram).unwrap();
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
        if let Some((file, bytes)) = state {
            std::fs::write(self.lib.join("state_lib").join(file), bytes).unwrap();
            config.push_str(&format!("state_file: {file}\n"));
        }
        std::fs::write(vm_dir.join("config.yaml"), config).unwrap();
    }

    /// Every file of the library outside the client's own `.vmreg` state, with contents.
    fn snapshot(&self) -> BTreeMap<String, Vec<u8>> {
        let mut out = BTreeMap::new();
        walk(&self.lib, &self.lib, &mut out);
        out
    }

    fn read(&self, rel: &str) -> Vec<u8> {
        std::fs::read(self.lib.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
    }

    fn has(&self, rel: &str) -> bool {
        self.lib.join(rel).exists()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `vmreg registry` with this remotes file and nothing from the environment that would
/// change what it does.
fn client(remotes: &Path) -> Command {
    let mut cmd = Command::new(common::vmreg_bin());
    cmd.arg("registry")
        .env("VMREG_CONFIG", remotes)
        .env_remove("VMREG_LIB")
        .env_remove("VMREG_RATE_LIMIT")
        .env_remove("VMREG_ROOT_TOKEN")
        .env_remove("VMREG_API_KEY_ID")
        .env_remove("VMREG_API_KEY_FILE")
        .stdin(Stdio::null());
    cmd
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let rel = path.strip_prefix(root).unwrap().display().to_string();
        if rel.starts_with(".vmreg") {
            continue;
        }
        if path.is_dir() {
            walk(root, &path, out);
        } else {
            out.insert(rel, std::fs::read(&path).unwrap());
        }
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Deterministic bytes that differ per seed (compressible data would hide nothing here).
fn data(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

fn layer(n: u32) -> String {
    format!("{n:032x}.ank")
}

const VM1: &str = "0f0e0d0c-0b0a-4909-8807-060504030201";
const VM2: &str = "1f1e1d1c-1b1a-4919-8817-161514131211";

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"))
}

fn names(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn kill9(child: &mut Child) {
    // SIGKILL: the client gets no chance to tidy up.
    let _ = child.kill();
    let _ = child.wait();
}

/// Starts `node`'s client with `args` against `server`, its output discarded.
fn spawn_quiet(node: &Node, server: &Server, args: &[&str]) -> Child {
    node.cmd(server, args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Bytes the registry holds durably of the push journaled in `node`'s library.
fn durable_at_registry(server: &Server, node: &Node) -> u64 {
    pushed_files(server, node)
        .iter()
        .map(|f| u(&f["received"]))
        .sum()
}

/// The files of the push `node`'s journal names, as the registry's status shows them.
fn pushed_files(server: &Server, node: &Node) -> Vec<Value> {
    let journal = node.lib.join(format!(".vmreg/push/{VM1}.json"));
    let Some(session) = std::fs::read(&journal)
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .and_then(|v| v["session"].as_str().map(str::to_string))
    else {
        return Vec::new();
    };
    let reply = http_get(&server.at(&format!("/api/v1/push/{session}")));
    reply.json["body"]["files"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn http_get(url: &str) -> common::Reply {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(common::get(url))
}

// ---- tests ----

#[test]
fn push_then_pull_into_an_empty_library_is_byte_identical() {
    // Pulls are written every flush interval: a short one keeps the test short.
    let server = Registry::start_with(&["--pull-flush-interval", "200ms"]);
    let src = Node::new();
    let (top, base, state) = (data(1, 3_000_000), data(2, 9_000_000), data(3, 700_000));
    src.make_vm(
        VM1,
        "vm1",
        &[(&layer(1), &top), (&layer(0), &base)],
        Some((&layer(9), &state)),
        b"nvram-1",
    );
    let total = (top.len() + base.len() + state.len() + 7) as u64;

    let pushed = src.json(&server, &["push", "-t", "v1", "-d", "first tag", "vm1"]);
    assert_eq!(pushed["name"], "vm1");
    assert_eq!(pushed["id"], VM1);
    assert_eq!(pushed["tag"], "v1");
    assert_eq!(pushed["number"], 0);
    assert_eq!(u(&pushed["files"]), 4);
    assert_eq!(u(&pushed["total_size"]), total);
    assert_eq!(
        u(&pushed["bytes_sent"]),
        total,
        "a first push sends every byte once"
    );

    let listed = src.json(&server, &["list"]);
    let entry = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "vm1")
        .expect("vm1 listed");
    assert_eq!(entry["latest_tag"], "v1");
    assert_eq!(u(&entry["size"]), total);

    let described = src.json(&server, &["describe", "vm1"]);
    assert_eq!(described["versions"][0]["tag"], "v1");
    assert_eq!(described["versions"][0]["description"], "first tag");
    assert_eq!(u(&described["versions"][0]["size"]), total);

    let dst = Node::new();
    let size = dst.json(&server, &["check-download-size", "vm1"]);
    assert_eq!(u(&size["download_size"]), total);
    assert_eq!(u(&size["total_size"]), total);
    let last_pull = || u(&http_get(&server.at("/registry/v2/vm")).ok_body()[0]["last_pull"]);
    let flushed = || std::thread::sleep(Duration::from_millis(600));
    flushed();
    assert_eq!(last_pull(), 0, "a size check is not a pull");

    let pulled = dst.json(&server, &["pull", "vm1"]);
    assert_eq!(pulled["tag"], "v1");
    flushed();
    assert!(last_pull() > 0, "a pull is recorded");
    assert_eq!(u(&pulled["bytes_received"]), total);
    assert_eq!(dst.read(&format!("img_lib/{}", layer(1))), top);
    assert_eq!(dst.read(&format!("img_lib/{}", layer(0))), base);
    assert_eq!(dst.read(&format!("state_lib/{}", layer(9))), state);
    assert_eq!(dst.read(&format!("vm_lib/{VM1}/nvram")), b"nvram-1");
    let config: serde_yaml::Value =
        serde_yaml::from_slice(&dst.read(&format!("vm_lib/{VM1}/config.yaml"))).unwrap();
    assert_eq!(config["name"].as_str(), Some("vm1"));
    assert_eq!(
        config["hard_drives"][0]["file"].as_str(),
        Some(layer(1).as_str())
    );
    let images: Vec<&str> = config["images"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert_eq!(
        images,
        [layer(1), layer(0)],
        "images: lists every layer, top first"
    );
    assert!(
        !dst.has(".vmreg/pull")
            || std::fs::read_dir(dst.lib.join(".vmreg/pull"))
                .unwrap()
                .next()
                .is_none()
    );

    let again = dst.json(&server, &["check-download-size", "vm1"]);
    assert_eq!(
        u(&again["download_size"]),
        0,
        "everything is in the library now"
    );

    // The pulled VM can be pushed on as a new tag without sending anything.
    let repushed = dst.json(&server, &["push", "-t", "v1-again", "vm1"]);
    assert_eq!(u(&repushed["bytes_sent"]), 0);
    assert_eq!(repushed["number"], 1);
}

#[test]
fn a_second_tag_adding_one_layer_moves_only_that_layer() {
    let server = Registry::start();
    let src = Node::new();
    let base = data(10, 6_000_000);
    src.make_vm(VM1, "vm1", &[(&layer(0), &base)], None, b"nv");
    src.json(&server, &["push", "-t", "v1", "vm1"]);
    let dst = Node::new();
    dst.json(&server, &["pull", "vm1"]);

    let top = data(11, 2_500_000);
    src.make_vm(
        VM1,
        "vm1",
        &[(&layer(1), &top), (&layer(0), &base)],
        None,
        b"nv",
    );
    let pushed = src.json(&server, &["push", "-t", "v1+port-forward-22", "vm1"]);
    assert_eq!(names(&pushed["uploaded"]), [layer(1)]);
    assert_eq!(
        u(&pushed["bytes_sent"]),
        top.len() as u64,
        "only the new layer is uploaded"
    );

    let size = dst.json(
        &server,
        &["check-download-size", "-t", "v1+port-forward-22", "vm1"],
    );
    assert_eq!(u(&size["download_size"]), top.len() as u64);
    // A `+` in a tag is a tag character, not a space (a bug the vendor once had).
    let pulled = dst.json(&server, &["pull", "-t", "v1+port-forward-22", "vm1"]);
    assert_eq!(pulled["tag"], "v1+port-forward-22");
    assert_eq!(names(&pulled["downloaded"]), [layer(1)]);
    assert_eq!(
        u(&pulled["bytes_received"]),
        top.len() as u64,
        "only the new layer is downloaded"
    );
    assert_eq!(dst.read(&format!("img_lib/{}", layer(1))), top);
    assert_eq!(dst.read(&format!("img_lib/{}", layer(0))), base);
}

#[test]
fn pull_with_shrink_removes_exactly_the_other_tags_files() {
    let server = Registry::start();
    let src = Node::new();
    let (base, top, state) = (data(20, 1_000_000), data(21, 1_000_000), data(22, 300_000));
    src.make_vm(VM1, "vm1", &[(&layer(0), &base)], None, b"nv");
    src.json(&server, &["push", "-t", "v1", "vm1"]);
    src.make_vm(
        VM1,
        "vm1",
        &[(&layer(1), &top), (&layer(0), &base)],
        Some((&layer(2), &state)),
        b"nv",
    );
    src.json(&server, &["push", "-t", "v2", "vm1"]);

    let dst = Node::new();
    // Another local VM uses a layer of its own, and a stray file nobody references.
    dst.make_vm(VM2, "other", &[(&layer(7), b"other layer")], None, b"x");
    std::fs::write(dst.lib.join("img_lib/stray.ank"), b"stray").unwrap();
    dst.json(&server, &["pull", "-t", "v2", "vm1"]);
    assert!(
        dst.has(&format!("img_lib/{}", layer(1))) && dst.has(&format!("state_lib/{}", layer(2)))
    );

    let pulled = dst.json(&server, &["pull", "-s", "-t", "v1", "vm1"]);
    let mut removed = names(&pulled["removed"]);
    removed.sort();
    assert_eq!(removed, [layer(1), layer(2)]);
    assert!(!dst.has(&format!("img_lib/{}", layer(1))));
    assert!(!dst.has(&format!("state_lib/{}", layer(2))));
    assert_eq!(dst.read(&format!("img_lib/{}", layer(0))), base);
    assert!(
        dst.has(&format!("img_lib/{}", layer(7))),
        "another VM's layer stays"
    );
    assert!(
        dst.has("img_lib/stray.ank"),
        "files of no tag of this template stay"
    );
}

#[test]
fn push_v_adds_an_independent_vm_as_the_next_tag_of_an_existing_template() {
    let server = Registry::start();
    let src = Node::new();
    src.make_vm(VM1, "vm1", &[(&layer(0), &data(30, 500_000))], None, b"one");
    src.json(&server, &["push", "-t", "t1", "vm1"]);
    let vm2_layer = data(31, 800_000);
    src.make_vm(VM2, "vm2", &[(&layer(5), &vm2_layer)], None, b"two");
    let pushed = src.json(&server, &["push", "-v", "vm1", "-t", "t2", "vm2"]);
    assert_eq!(pushed["id"], VM1);
    assert_eq!(pushed["name"], "vm1");
    assert_eq!(pushed["number"], 1);

    let described = src.json(&server, &["describe", "vm1"]);
    let tags: Vec<&str> = described["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["tag"].as_str().unwrap())
        .collect();
    assert_eq!(tags, ["t1", "t2"]);
    let listed = src.json(&server, &["list"]);
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["name"] != "vm2"),
        "no template vm2: {listed}"
    );

    let dst = Node::new();
    dst.json(&server, &["pull", "vm1"]);
    assert_eq!(dst.read(&format!("img_lib/{}", layer(5))), vm2_layer);
    assert_eq!(dst.read(&format!("vm_lib/{VM1}/nvram")), b"two");
    let config: serde_yaml::Value =
        serde_yaml::from_slice(&dst.read(&format!("vm_lib/{VM1}/config.yaml"))).unwrap();
    assert_eq!(config["name"].as_str(), Some("vm1"));
    assert_eq!(config["uuid"].as_str(), Some(VM1));
}

#[test]
fn a_pull_killed_mid_file_resumes_without_refetching_what_arrived() {
    let server = Registry::start();
    let src = Node::new();
    let big = data(40, 48 << 20);
    src.make_vm(VM1, "vm1", &[(&layer(0), &big)], None, b"nv");
    src.json(&server, &["push", "-t", "v1", "vm1"]);

    let dst = Node::new();
    let mut child = spawn_quiet(
        &dst,
        &server,
        &[
            "--json",
            "--limit-rate",
            "8M",
            "--concurrency",
            "2",
            "pull",
            "vm1",
        ],
    );
    let pull_dir = dst.lib.join(".vmreg/pull");
    let sidecar_progress = || -> u64 {
        let Ok(entries) = std::fs::read_dir(&pull_dir) else {
            return 0;
        };
        entries
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .filter_map(|e| std::fs::read(e.path()).ok())
            .filter_map(|b| serde_json::from_slice::<Value>(&b).ok())
            .map(|v| {
                v["done"]
                    .as_array()
                    .map(|d| d.iter().map(u).sum())
                    .unwrap_or(0)
            })
            .sum()
    };
    wait_for("16 MiB on disk", Duration::from_secs(60), || {
        sidecar_progress() >= 16 << 20
    });
    kill9(&mut child);
    let before = dst.snapshot();
    assert!(
        !before.contains_key(&format!("img_lib/{}", layer(0))),
        "nothing is put in place before it is verified"
    );
    let left = u(&dst.json(&server, &["check-download-size", "vm1"])["download_size"]);
    assert!(
        left <= big.len() as u64 - (16 << 20) + 2,
        "staged bytes count as downloaded: {left}"
    );

    let pulled = dst.json(&server, &["pull", "vm1"]);
    let received = u(&pulled["bytes_received"]);
    assert!(
        received <= left + 2,
        "the pull fetched {received}, more than the {left} it said it lacked"
    );
    assert!(
        received < big.len() as u64 - (12 << 20),
        "the rerun fetched {received} bytes again"
    );
    assert!(received > 0);
    assert_eq!(dst.read(&format!("img_lib/{}", layer(0))), big);
}

#[test]
fn a_push_killed_mid_file_resumes_without_resending_what_arrived() {
    let server = Registry::start_with(&["--part-size", "5MiB"]);
    let src = Node::new();
    let big = data(50, 48 << 20);
    src.make_vm(VM1, "vm1", &[(&layer(0), &big)], None, b"nv");
    let mut child = spawn_quiet(
        &src,
        &server,
        &["--json", "--limit-rate", "8M", "push", "-t", "v1", "vm1"],
    );
    wait_for("16 MiB at the registry", Duration::from_secs(60), || {
        durable_at_registry(&server, &src) >= 16 << 20
    });
    kill9(&mut child);

    let pushed = src.json(&server, &["push", "-t", "v1", "vm1"]);
    assert_eq!(pushed["resumed"], true);
    let sent = u(&pushed["bytes_sent"]);
    assert!(
        sent <= big.len() as u64 - (15 << 20),
        "the rerun sent {sent} bytes again"
    );
    assert!(
        !src.lib.join(format!(".vmreg/push/{VM1}.json")).exists(),
        "the journal is gone after commit"
    );

    let dst = Node::new();
    dst.json(&server, &["pull", "vm1"]);
    assert_eq!(dst.read(&format!("img_lib/{}", layer(0))), big);
}

/// Bytes of the pushed files the registry holds durably, in any ranges.
fn durable_ranges_at_registry(server: &Server, node: &Node) -> u64 {
    pushed_files(server, node)
        .iter()
        .flat_map(|f| f["durable"].as_array().cloned().unwrap_or_default())
        .map(|r| u(&r[1]) - u(&r[0]))
        .sum()
}

#[test]
fn a_push_of_4_ranges_killed_mid_file_resends_only_what_was_not_durable() {
    const PART: u64 = 5 << 20;
    let server = Registry::start_with(&["--part-size", "5MiB"]);
    let src = Node::new();
    let big = data(51, 96 << 20);
    src.make_vm(VM1, "vm1", &[(&layer(0), &big)], None, b"nv");
    let mut child = spawn_quiet(
        &src,
        &server,
        &[
            "--json",
            "--limit-rate",
            "8M",
            "push",
            "--ranges",
            "4",
            "-t",
            "v1",
            "vm1",
        ],
    );
    wait_for("32 MiB at the registry", Duration::from_secs(60), || {
        durable_ranges_at_registry(&server, &src) >= 32 << 20
    });
    kill9(&mut child);
    // Parts the killed client's requests still had in flight land meanwhile; what the
    // rerun reads at its start is what it may skip.
    std::thread::sleep(Duration::from_millis(500));
    let durable = durable_ranges_at_registry(&server, &src);

    let pushed = src.json(&server, &["push", "--ranges", "4", "-t", "v1", "vm1"]);
    assert_eq!(pushed["resumed"], true);
    let sent = u(&pushed["bytes_sent"]);
    let missing = big.len() as u64 - durable;
    assert!(
        sent <= missing + 4 * PART,
        "the rerun sent {sent} bytes; {missing} were not durable"
    );
    assert!(
        u(&pushed["bytes_read"]) <= big.len() as u64,
        "the rerun read the file more than once: {}",
        pushed["bytes_read"]
    );

    let dst = Node::new();
    dst.json(&server, &["pull", "vm1"]);
    assert!(dst.read(&format!("img_lib/{}", layer(0))) == big);
}

#[test]
fn names_that_display_as_others_are_refused_before_anything_is_sent() {
    // Nothing listens at this address: a request sent would fail to connect instead.
    let nowhere = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    let src = Node::new();
    // U+202E shows "vm-\u{202E}gpj.exe" as "vm-exe.jpg".
    src.make_vm(
        VM1,
        "vm-\u{202E}gpj.exe",
        &[(&layer(0), b"layer")],
        None,
        b"nv",
    );
    src.make_vm(VM2, "plain", &[(&layer(1), b"layer")], None, b"nv");
    let vm3 = "2f2e2d2c-2b2a-4929-8827-262524232221";
    src.make_vm(
        vm3,
        "sneaky",
        &[("x\u{202E}kna.ank", b"layer")],
        None,
        b"nv",
    );
    let refused = |args: &[&str], what: &str, found: &str| {
        let out = src
            .cmd_at(&nowhere, args)
            .output()
            .expect("run vmreg registry");
        assert!(!out.status.success(), "{args:?} was accepted");
        let err = stderr(&out);
        assert!(
            err.contains(what) && err.contains(found) && !err.to_lowercase().contains("connect"),
            "{args:?}: {err}"
        );
    };
    refused(&["push", "-t", "v1", VM1], "template name", "U+202E");
    refused(&["push", "-t", "v1\u{2066}", "plain"], "tag", "U+2066");
    refused(&["push", "-t", "v1\u{1b}[2J", "plain"], "tag", "U+001B");
    refused(&["push", "-t", "v1", "sneaky"], "file name", "U+202E");
}

#[test]
fn a_layer_changed_in_place_is_refused_and_never_replaced_by_the_old_bytes() {
    let server = Registry::start();
    let src = Node::new();
    let first = data(70, 300_000);
    src.make_vm(VM1, "vm1", &[(&layer(0), &first)], None, b"nv");
    src.json(&server, &["push", "-t", "v1", "vm1"]);
    // The VM ran since: its top layer changed in place, same name and size.
    let changed = data(71, 300_000);
    std::fs::write(src.lib.join("img_lib").join(layer(0)), &changed).unwrap();
    let out = src.run(&server, &["push", "-t", "v2", "vm1"]);
    assert!(!out.status.success(), "the old bytes are not pinned for it");
    let err = stderr(&out);
    assert!(
        err.contains(&layer(0)) && err.contains("changed since it was pushed"),
        "{err}"
    );

    let dst = Node::new();
    assert!(!dst
        .run(&server, &["pull", "-t", "v2", "vm1"])
        .status
        .success());
    dst.json(&server, &["pull", "-t", "v1", "vm1"]);
    assert_eq!(dst.read(&format!("img_lib/{}", layer(0))), first);
}

#[test]
fn a_first_push_reads_each_layer_once_and_a_second_push_reads_nothing() {
    let server = Registry::start();
    let src = Node::new();
    let (top, base, nvram) = (data(74, 3_000_000), data(75, 2_000_000), b"nvram");
    src.make_vm(
        VM1,
        "vm1",
        &[(&layer(1), &top), (&layer(0), &base)],
        None,
        nvram,
    );
    let first = src.json(&server, &["push", "-t", "v1", "vm1"]);
    let layers = (top.len() + base.len()) as u64;
    // Each layer is hashed while it is sent, not read once more beforehand; only the
    // small nvram, whose digest names it, is hashed before it is sent.
    assert_eq!(u(&first["bytes_sent"]), layers + nvram.len() as u64);
    assert_eq!(u(&first["bytes_read"]), layers + 2 * nvram.len() as u64);

    // What was hashed while sent is remembered: a new tag of the same files reads nothing.
    let second = src.json(&server, &["push", "-t", "v2", "vm1"]);
    assert_eq!((u(&second["bytes_sent"]), u(&second["bytes_read"])), (0, 0));
    let dst = Node::new();
    dst.json(&server, &["pull", "-t", "v2", "vm1"]);
    assert_eq!(dst.read(&format!("img_lib/{}", layer(1))), top);
    assert_eq!(dst.read(&format!("img_lib/{}", layer(0))), base);
}

#[test]
fn a_pulled_vm_pushed_again_reads_none_of_its_files() {
    let server = Registry::start();
    let src = Node::new();
    let (top, base) = (data(78, 2_500_000), data(79, 3_500_000));
    src.make_vm(
        VM1,
        "vm1",
        &[(&layer(1), &top), (&layer(0), &base)],
        None,
        b"nv",
    );
    src.json(&server, &["push", "-t", "v1", "vm1"]);

    // The pull verified every file as it arrived and remembers its digest, so pushing the
    // pulled VM as a new tag neither reads nor sends any of them.
    let dst = Node::new();
    dst.json(&server, &["pull", "vm1"]);
    let pushed = dst.json(&server, &["push", "-t", "v2", "vm1"]);
    assert_eq!(
        (u(&pushed["bytes_sent"]), u(&pushed["bytes_read"])),
        (0, 0),
        "{pushed}"
    );

    // A layer overwritten after the pull is hashed again on the next pull, not taken as
    // present from the cache, and fetched anew.
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(dst.lib.join("img_lib").join(layer(0)), data(80, base.len())).unwrap();
    let pulled = dst.json(&server, &["pull", "vm1"]);
    assert_eq!(names(&pulled["downloaded"]), vec![layer(0)], "{pulled}");
    assert_eq!(dst.read(&format!("img_lib/{}", layer(0))), base);
}

#[test]
fn a_held_layer_the_digest_cache_does_not_know_is_confirmed_at_commit_not_sent() {
    let server = Registry::start();
    let first = Node::new();
    let (top, base) = (data(76, 2_500_000), data(77, 4_000_000));
    let vm: &[(&str, &[u8])] = &[(&layer(1), &top), (&layer(0), &base)];
    first.make_vm(VM1, "vm1", vm, None, b"nv");
    first.json(&server, &["push", "-t", "v1", "vm1"]);

    // Another machine with the same files and an empty digest cache: the registry holds
    // both layers under their names and sizes, so they are hashed (once) while nothing
    // else moves, and the commit takes them only because the digests agree.
    let other = Node::new();
    other.make_vm(VM1, "vm1", vm, None, b"nv");
    let pushed = other.json(&server, &["push", "-t", "v2", "vm1"]);
    assert_eq!(u(&pushed["bytes_sent"]), 0, "{pushed}");
    assert!(names(&pushed["uploaded"]).is_empty(), "{pushed}");
    let layers = (top.len() + base.len()) as u64;
    assert_eq!(u(&pushed["bytes_read"]), layers + 2, "{pushed}");
    let again = other.json(&server, &["push", "-t", "v3", "vm1"]);
    assert_eq!(u(&again["bytes_read"]), 0, "the digests are remembered");

    let dst = Node::new();
    dst.json(&server, &["pull", "-t", "v2", "vm1"]);
    assert_eq!(dst.read(&format!("img_lib/{}", layer(1))), top);
    assert_eq!(dst.read(&format!("img_lib/{}", layer(0))), base);
}

#[test]
fn a_pull_over_a_local_layer_of_the_right_size_but_other_bytes_fetches_the_right_bytes() {
    let server = Registry::start();
    let src = Node::new();
    let right = data(72, 200_000);
    src.make_vm(VM1, "vm1", &[(&layer(0), &right)], None, b"nv");
    src.json(&server, &["push", "-t", "v1", "vm1"]);

    let dst = Node::new();
    std::fs::create_dir_all(dst.lib.join("img_lib")).unwrap();
    std::fs::write(dst.lib.join("img_lib").join(layer(0)), data(73, 200_000)).unwrap();
    dst.json(&server, &["pull", "vm1"]);
    assert_eq!(dst.read(&format!("img_lib/{}", layer(0))), right);
}

/// A TCP proxy in front of the registry at `target` that flips the first byte of every
/// `marker` in what the registry sends back: bytes corrupted on the wire. Returns its URL.
fn corrupting_proxy(target: &str, marker: &'static [u8]) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let target = target.trim_start_matches("http://").to_string();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let Ok(server) = TcpStream::connect(&target) else {
                continue;
            };
            let (mut from_client, mut to_server) =
                (client.try_clone().unwrap(), server.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut from_client, &mut to_server);
                let _ = to_server.shutdown(Shutdown::Write);
            });
            std::thread::spawn(move || flip_markers(server, client, marker));
        }
    });
    url
}

fn flip_markers(mut from: TcpStream, mut to: TcpStream, marker: &[u8]) {
    // A tail that may be the start of a marker waits for the next read, briefly.
    from.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let (mut held, mut buf) = (Vec::new(), vec![0u8; 64 << 10]);
    loop {
        let mut keep = 0;
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                held.extend_from_slice(&buf[..n]);
                let mut at = 0;
                while let Some(i) = held[at..].windows(marker.len()).position(|w| w == marker) {
                    held[at + i] ^= 0xff;
                    at += i + 1;
                }
                keep = (1..marker.len())
                    .rev()
                    .find(|&k| held.ends_with(&marker[..k]))
                    .unwrap_or(0);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
        let send = held.len() - keep;
        if to.write_all(&held[..send]).is_err() {
            return;
        }
        held.drain(..send);
    }
    let _ = to.write_all(&held);
    let _ = to.shutdown(Shutdown::Write);
}

#[test]
fn bytes_corrupted_on_the_wire_are_refused_and_never_put_in_place() {
    const MARKER: &[u8] = b"<vmreg: flip this byte in flight>";
    let server = Registry::start();
    let src = Node::new();
    // Three ranges of 8 MiB pulled at once; the damage lands in the middle one.
    let mut big = data(96, 24 << 20);
    big[(13 << 20) + 7..][..MARKER.len()].copy_from_slice(MARKER);
    src.make_vm(VM1, "vm1", &[(&layer(0), &big)], None, b"nv");
    src.json(&server, &["push", "-t", "v1", "vm1"]);

    let dst = Node::new();
    let before = dst.snapshot();
    let proxy = corrupting_proxy(&server.url, MARKER);
    let out = dst.cmd_at(&proxy, &["pull", "vm1"]).output().unwrap();
    assert!(!out.status.success(), "a corrupted pull succeeded");
    let err = stderr(&out);
    assert!(
        err.contains(&layer(0)) && err.contains("checksum"),
        "stderr names the file: {err}"
    );
    assert_eq!(dst.snapshot(), before, "nothing unverified is put in place");

    // The damaged staged file is not resumed from: a clean pull fetches it all again (the
    // 2-byte nvram may have been staged and verified already).
    let pulled = dst.json(&server, &["pull", "vm1"]);
    let received = u(&pulled["bytes_received"]);
    assert!(
        (big.len() as u64..=big.len() as u64 + 2).contains(&received),
        "{pulled}"
    );
    assert_eq!(dst.read(&format!("img_lib/{}", layer(0))), big);
}

#[test]
fn a_corrupted_stored_file_fails_the_pull_cleanly() {
    // The blob is corrupted through the embedded store's directory, so this test runs on
    // the embedded store in both passes.
    let server = Registry::start_embedded();
    let src = Node::new();
    src.make_vm(
        VM1,
        "vm1",
        &[
            (&layer(1), &data(60, 2_000_000)),
            (&layer(0), &data(61, 3_000_000)),
        ],
        None,
        b"nv",
    );
    src.json(&server, &["push", "-t", "v1", "vm1"]);
    let blob_dir = server.ns.dir.join("data/objects/blobs").join(layer(0));
    let blob = std::fs::read_dir(&blob_dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut bytes = std::fs::read(&blob).unwrap();
    bytes[1_234_567] ^= 0xff;
    std::fs::write(&blob, bytes).unwrap();

    let dst = Node::new();
    dst.make_vm(VM2, "other", &[(&layer(7), b"keep me")], None, b"x");
    let before = dst.snapshot();
    let out = dst.run(&server, &["pull", "vm1"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(&layer(0)) && err.contains("checksum"),
        "stderr names the file: {err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(dst.snapshot(), before, "the library is unchanged");
}

#[test]
fn missing_templates_tags_and_vms_exit_with_code_3() {
    let server = Registry::start();
    let node = Node::new();
    node.make_vm(VM1, "vm1", &[(&layer(0), b"layer")], None, b"nv");
    node.json(&server, &["push", "-t", "v1", "vm1"]);
    for args in [
        &["pull", "nope"][..],
        &["pull", "-t", "nope", "vm1"],
        &["describe", "nope"],
        &["check-download-size", "-t", "nope", "vm1"],
        &["push", "no-such-local-vm"],
        &["delete-template", "nope"],
        &["revert", "-t", "nope", "vm1"],
    ] {
        let out = node.run(&server, args);
        assert_eq!(out.status.code(), Some(3), "{args:?}: {}", stderr(&out));
        assert_eq!(
            stderr(&out).trim().lines().count(),
            1,
            "{args:?}: {}",
            stderr(&out)
        );
    }
    // Each says what there is instead, once.
    for (args, said) in [
        (
            &["pull", "vm2"][..],
            r#"template "vm2" not found in the registry; did you mean "vm1"?"#,
        ),
        (&["describe", "VM1x"], r#"did you mean "vm1"?"#),
        (
            &["pull", "-t", "v2", "vm1"],
            r#"template "vm1" has no tag "v2"; did you mean "v1"?"#,
        ),
        (
            &["info", "-t", "zzzzzz", "vm1"],
            r#"has no tag "zzzzzz"; the tags: v1"#,
        ),
        (&["push", "-t", "v9", "vm"], r#"local VM "vm" not found in"#),
        (&["push", "-t", "v9", "vm"], r#"; did you mean "vm1"?"#),
    ] {
        let out = node.run(&server, args);
        let line = stderr(&out);
        assert_eq!(out.status.code(), Some(3), "{args:?}: {line}");
        assert!(line.contains(said), "{args:?}: {line}");
        assert_eq!(
            line.matches("not found").count().max(1),
            1,
            "{args:?}: {line}"
        );
    }
    let dup = node.run(&server, &["push", "-t", "v1", "vm1"]);
    assert_eq!(
        dup.status.code(),
        Some(1),
        "an existing tag is a conflict: {}",
        stderr(&dup)
    );
    assert!(stderr(&dup).contains("already exists"), "{}", stderr(&dup));

    let mut unreachable = Command::new(common::vmreg_bin());
    unreachable
        .args(["registry", "-a", "http://127.0.0.1:1", "list"])
        .env("VMREG_CONFIG", node.dir.join("r.yaml"));
    let out = unreachable.output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("cannot reach"), "{}", stderr(&out));
}

#[test]
fn push_without_a_tag_is_refused_with_one_line() {
    let server = Registry::start();
    let node = Node::new();
    node.make_vm(VM1, "vm1", &[(&layer(0), b"layer")], None, b"nv");
    let out = node.run(&server, &["push", "vm1"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("-t TAG"), "{err}");
    assert_eq!(
        node.json(&server, &["list"]),
        Value::Array(vec![]),
        "nothing was pushed"
    );
}

#[test]
fn a_local_vm_with_the_same_name_and_another_uuid_is_a_conflict() {
    let server = Registry::start();
    let src = Node::new();
    src.make_vm(VM1, "vm1", &[(&layer(0), b"layer")], None, b"nv");
    src.json(&server, &["push", "-t", "v1", "vm1"]);
    let dst = Node::new();
    dst.make_vm(VM2, "vm1", &[(&layer(3), b"mine")], None, b"nv");
    let before = dst.snapshot();
    let out = dst.run(&server, &["pull", "vm1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("conflict"), "{}", stderr(&out));
    assert_eq!(dst.snapshot(), before);
}

#[test]
fn revert_set_arch_and_delete_template_reach_the_api() {
    let server = Registry::start();
    let node = Node::new();
    node.make_vm(VM1, "vm1", &[(&layer(0), b"layer")], None, b"nv");
    for tag in ["a", "b", "c"] {
        node.json(&server, &["push", "-t", tag, "vm1"]);
    }
    let config = node.json(&server, &["info", "-t", "b", "vm1"]);
    assert_eq!(config["name"], "vm1");
    assert_eq!(config["hard_drives"][0]["file"], layer(0));
    let missing = node.run(&server, &["info", "-t", "nope", "vm1"]);
    assert_eq!(missing.status.code(), Some(3), "{}", stderr(&missing));
    // Shown to a person: the layer chain after the configuration, the dates in listings.
    let text = |args: &[&str]| {
        let out = node.run(&server, args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let info = text(&["info", "-t", "b", "vm1"]);
    assert!(
        info.contains(&format!("# layer chain, top first: {}", layer(0))),
        "{info}"
    );
    let today = vmreg::units::utc_minute(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    );
    let day = &today[..10];
    let list = text(&["list"]);
    let header = list.lines().next().unwrap();
    assert!(
        header.contains("LAST PUSH") && header.ends_with("LAST PULL"),
        "{list}"
    );
    assert!(list.contains(day), "{list}");
    let listed = node.json(&server, &["list"]);
    assert!(listed[0]["last_push"].as_u64().unwrap() > 0, "{listed}");
    let described = text(&["describe", "vm1"]);
    assert!(
        described.contains(&format!("created: {day}")),
        "{described}"
    );

    assert_eq!(node.json(&server, &["describe", "vm1"])["arch"], "amd64");
    let arch = node.json(&server, &["set-arch", "vm1", "arm64"]);
    assert_eq!(arch["arch"], "arm64");
    let listed = node.json(&server, &["list"]);
    assert_eq!(listed[0]["arch"], "arm64");
    assert_eq!(node.json(&server, &["describe", VM1])["arch"], "arm64");

    // Without a terminal to ask on, nothing is removed unless --yes says so.
    for args in [&["revert", "vm1"][..], &["delete-template", VM1]] {
        let refused = node.run(&server, args);
        assert_eq!(refused.status.code(), Some(1), "{args:?}");
        let line = stderr(&refused);
        assert_eq!(line.trim().lines().count(), 1, "{line}");
        assert!(line.contains("rerun with --yes"), "{line}");
    }
    let tags = |described: Value| -> Vec<String> {
        described["versions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["tag"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        tags(node.json(&server, &["describe", "vm1"])),
        ["a", "b", "c"],
        "nothing was removed"
    );
    let reverted = node.json(&server, &["revert", "--yes", "vm1"]);
    assert_eq!(names(&reverted["tags"]), ["a", "b"]);
    assert_eq!(names(&reverted["removed_tags"]), ["c"]);
    let reverted = node.run(&server, &["revert", "-y", "-t", "a", "vm1"]);
    assert!(reverted.status.success(), "{}", stderr(&reverted));
    assert_eq!(
        String::from_utf8_lossy(&reverted.stdout).trim(),
        "reverted vm1: removed tag b; latest tag is now a"
    );

    let deleted = node.json(&server, &["delete-template", "--yes", VM1]);
    assert_eq!(deleted["deleted"], true);
    assert_eq!(names(&deleted["removed_tags"]), ["a"]);
    assert_eq!(node.json(&server, &["list"]), Value::Array(vec![]));
}

#[test]
fn remotes_are_added_set_listed_and_deleted() {
    let server = Registry::start();
    let node = Node::new();
    let remote = |args: &[&str]| -> Value {
        let out = Command::new(common::vmreg_bin())
            .args(["registry", "--json"])
            .args(args)
            .env("VMREG_CONFIG", node.dir.join("remotes.yaml"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    assert_eq!(remote(&["add", "main", &server.url])["current"], true);
    assert_eq!(
        remote(&["add", "spare", "http://127.0.0.1:1"])["name"],
        "spare"
    );
    let repos = remote(&["list-repos"]);
    let current: Vec<&str> = repos
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["current"] == true)
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(current, ["spare"], "the last added is current");
    assert_eq!(remote(&["set", "main"])["url"], server.url.as_str());
    // With the current remote, no -a is needed.
    assert_eq!(remote(&["list"]), Value::Array(vec![]));
    assert_eq!(remote(&["-r", "main", "list"]), Value::Array(vec![]));
    assert_eq!(remote(&["delete", "spare"])["deleted"], true);
    assert_eq!(remote(&["list-repos"]).as_array().unwrap().len(), 1);

    let out = Command::new(common::vmreg_bin())
        .args(["registry", "-r", "spare", "list"])
        .env("VMREG_CONFIG", node.dir.join("remotes.yaml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("unknown remote"), "{}", stderr(&out));
}

#[test]
fn a_registry_restart_mid_transfer_is_survived_without_starting_over() {
    let mut server = Registry::start_with(&["--part-size", "5MiB"]);
    let src = Node::new();
    let big = data(70, 64 << 20);
    src.make_vm(VM1, "vm1", &[(&layer(0), &big)], None, b"nv");
    let child = src
        .cmd(
            &server,
            &["--json", "--limit-rate", "12M", "push", "-t", "v1", "vm1"],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // What the registry had not made durable (parts in flight) is lost in a restart and
    // sent again; what it had must not be.
    let mut durable = 0;
    wait_for("32 MiB at the registry", Duration::from_secs(60), || {
        durable = durable_at_registry(&server, &src);
        durable >= 32 << 20
    });
    server.restart();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the push rode out the restart: {}",
        stderr(&out)
    );
    let pushed: Value = serde_json::from_slice(&out.stdout).unwrap();
    let sent = u(&pushed["bytes_sent"]);
    assert!(
        sent < big.len() as u64 + durable,
        "sent {sent} with {durable} durable at the restart: the upload started over"
    );

    let dst = Node::new();
    let pull_dir = dst.lib.join(".vmreg/pull");
    let child = dst
        .cmd(&server, &["--json", "--limit-rate", "12M", "pull", "vm1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the pull to start", Duration::from_secs(30), || {
        pull_dir.exists()
    });
    std::thread::sleep(Duration::from_secs(2));
    server.restart();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the pull rode out the restart: {}",
        stderr(&out)
    );
    let pulled: Value = serde_json::from_slice(&out.stdout).unwrap();
    let received = u(&pulled["bytes_received"]);
    assert!(
        received < big.len() as u64 + (8 << 20),
        "received {received}: the download started over"
    );
    assert_eq!(dst.read(&format!("img_lib/{}", layer(0))), big);
}

#[test]
fn tls_problems_are_one_line_errors() {
    let server = Registry::start();
    let node = Node::new();
    let https = server.url.replace("http://", "https://");
    let out = Command::new(common::vmreg_bin())
        .args(["registry", "-a", &https, "list"])
        .env("VMREG_CONFIG", node.dir.join("r.yaml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stderr(&out).trim().lines().count(), 1, "{}", stderr(&out));
    assert!(stderr(&out).contains("cannot reach"), "{}", stderr(&out));

    let out = Command::new(common::vmreg_bin())
        .args(["registry", "-a", &server.url, "--cacert"])
        .arg(node.dir.join("missing.pem"))
        .arg("list")
        .env("VMREG_CONFIG", node.dir.join("r.yaml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("missing.pem"), "{}", stderr(&out));

    let bad = node.dir.join("bad.pem");
    std::fs::write(&bad, "not a certificate").unwrap();
    let out = Command::new(common::vmreg_bin())
        .args(["registry", "-a", &server.url, "-c"])
        .arg(&bad)
        .arg("list")
        .env("VMREG_CONFIG", node.dir.join("r.yaml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("bad.pem"), "{}", stderr(&out));
    assert_eq!(stderr(&out).trim().lines().count(), 1, "{}", stderr(&out));
}

#[test]
fn a_push_whose_commit_is_refused_forgets_its_session() {
    let server = Registry::start_with(&["--part-size", "5MiB"]);
    let a = Node::new();
    let big = data(80, 24 << 20);
    a.make_vm(VM1, "vm1", &[(&layer(0), &big)], None, b"nv");
    let journal = a.lib.join(format!(".vmreg/push/{VM1}.json"));
    let mut child = spawn_quiet(
        &a,
        &server,
        &["--limit-rate", "4M", "push", "-t", "t", "vm1"],
    );
    wait_for("the push to start", Duration::from_secs(30), || {
        journal.exists()
    });
    std::thread::sleep(Duration::from_millis(1500));
    kill9(&mut child);

    // Meanwhile the same VM is pushed with that tag from another node.
    let b = Node::new();
    b.make_vm(VM1, "vm1", &[(&layer(0), &big)], None, b"nv");
    b.json(&server, &["push", "-t", "t", "vm1"]);

    let out = a.run(&server, &["push", "-t", "t", "vm1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("already exists"), "{}", stderr(&out));
    assert!(!journal.exists(), "a refused session is not resumed again");
    let pushed = a.json(&server, &["push", "-t", "t2", "vm1"]);
    assert_eq!(pushed["resumed"], false);
    assert_eq!(
        u(&pushed["bytes_sent"]),
        0,
        "the layer is in the registry already"
    );
}

/// Runs the command to its end; returns its exit status and the peak resident memory of
/// the program (`VmHWM`, which belongs to the executed image, unlike `ru_maxrss`, which
/// inherits the spawning test's high-water mark).
fn run_measuring_memory(mut cmd: Command) -> (std::process::ExitStatus, u64) {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak_kib = 0u64;
    loop {
        if let Ok(text) = std::fs::read_to_string(&status_file) {
            let hwm = text
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok());
            peak_kib = peak_kib.max(hwm.unwrap_or(0));
        }
        if let Some(status) = child.try_wait().unwrap() {
            return (status, peak_kib * 1024);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn memory_stays_bounded_whatever_the_file_size() {
    let server = Registry::start();
    let src = Node::new();
    let big = data(90, 320 << 20);
    src.make_vm(VM1, "vm1", &[(&layer(0), &big)], None, b"nv");
    let (status, push_peak) = run_measuring_memory(src.cmd(&server, &["push", "-t", "v1", "vm1"]));
    assert!(status.success());
    let dst = Node::new();
    let (status, pull_peak) = run_measuring_memory(dst.cmd(&server, &["pull", "vm1"]));
    assert!(status.success());
    assert_eq!(dst.read(&format!("img_lib/{}", layer(0))).len(), big.len());
    println!(
        "client peak RSS for a 320 MiB file: push {} MiB, pull {} MiB",
        push_peak >> 20,
        pull_peak >> 20
    );
    for (what, peak) in [("push", push_peak), ("pull", pull_peak)] {
        assert!(
            peak < 72 << 20,
            "{what} of a 320 MiB file peaked at {} MiB",
            peak >> 20
        );
    }
}

#[test]
fn pulls_follow_redirects_to_presigned_urls_and_still_verify() {
    // On S3 the registry answers downloads with a 307 to a presigned URL; on the embedded
    // store it streams them itself, and this is a plain pull of ranges.
    let server = if common::s3_backend() {
        Registry::start_with(&["--s3-redirect"])
    } else {
        Registry::start()
    };
    let src = Node::new();
    let big = data(100, 20 << 20);
    src.make_vm(VM1, "vm1", &[(&layer(0), &big)], None, b"nv");
    src.json(&server, &["push", "-t", "v1", "vm1"]);
    if common::s3_backend() {
        let status = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async {
                let client = reqwest::Client::builder()
                    .redirect(reqwest::redirect::Policy::none())
                    .build()
                    .unwrap();
                client
                    .get(server.at(&format!("/api/v1/files/{}", layer(0))))
                    .send()
                    .await
                    .unwrap()
                    .status()
            });
        assert_eq!(status.as_u16(), 307, "the registry redirects downloads");
    }
    let dst = Node::new();
    let pulled = dst.json(&server, &["--concurrency", "3", "pull", "vm1"]);
    assert_eq!(u(&pulled["bytes_received"]), big.len() as u64 + 2);
    assert_eq!(dst.read(&format!("img_lib/{}", layer(0))), big);
}

#[test]
fn a_push_of_a_vm_changed_since_the_interruption_starts_afresh() {
    let server = Registry::start_with(&["--part-size", "5MiB"]);
    let src = Node::new();
    let first = data(110, 48 << 20);
    src.make_vm(VM1, "vm1", &[(&layer(0), &first)], None, b"nv");
    let mut child = spawn_quiet(
        &src,
        &server,
        &["--limit-rate", "8M", "push", "-t", "v1", "vm1"],
    );
    wait_for("10 MiB at the registry", Duration::from_secs(60), || {
        durable_at_registry(&server, &src) >= 10 << 20
    });
    kill9(&mut child);

    // Same name and size, other bytes: resuming would splice two contents together.
    std::thread::sleep(Duration::from_millis(20));
    let second = data(111, 48 << 20);
    std::fs::write(src.lib.join("img_lib").join(layer(0)), &second).unwrap();
    let pushed = src.json(&server, &["push", "-t", "v1", "vm1"]);
    assert_eq!(pushed["resumed"], false);
    assert_eq!(u(&pushed["bytes_sent"]), second.len() as u64 + 2);

    let dst = Node::new();
    dst.json(&server, &["pull", "vm1"]);
    assert_eq!(dst.read(&format!("img_lib/{}", layer(0))), second);
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, signed by the CA.
fn make_pki(dir: &Path) {
    common::pki::Pki::new(dir)
        .ca("ca")
        .server("ca", "server")
        .client("ca", "client", "/CN=node1");
}

/// An `openssl s_server` that demands a client certificate and answers any request with
/// an HTML page (not the registry: enough to prove the TLS handshake).
struct TlsServer {
    child: Child,
    url: String,
}

impl TlsServer {
    fn start(dir: &Path) -> TlsServer {
        use std::io::BufRead;
        // Port 0, and s_server names the port it bound: a port picked by the test and bound
        // later could be taken by another test's server in between.
        let mut child = Command::new("openssl")
            .args(["s_server", "-accept", "127.0.0.1:0", "-www"])
            .args([
                "-cert",
                "server.pem",
                "-key",
                "server.key",
                "-Verify",
                "1",
                "-CAfile",
                "ca.pem",
            ])
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let addr = lines
            .by_ref()
            .map_while(Result::ok)
            .find_map(|line| line.strip_prefix("ACCEPT ").map(str::to_owned))
            .expect("openssl s_server names the address it accepts on");
        // Keep reading so that s_server never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        TlsServer {
            child,
            url: format!("https://{addr}"),
        }
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        kill9(&mut self.child);
    }
}

#[test]
fn tls_options_verify_the_registry_and_present_the_node_certificate() {
    let node = Node::new();
    make_pki(&node.dir);
    let tls = TlsServer::start(&node.dir);
    let list = |extra: &[&str]| -> String {
        let out = Command::new(common::vmreg_bin())
            .args(["registry", "-a", &tls.url])
            .args(extra)
            .arg("list")
            .current_dir(&node.dir)
            .env("VMREG_CONFIG", node.dir.join("r.yaml"))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "s_server is no registry");
        stderr(&out)
    };
    // The handshake got through when the error is about the (HTML) reply.
    let handshake_ok = |err: &str| err.contains("unexpected reply");

    let err = list(&[]);
    assert!(
        err.contains("UnknownIssuer"),
        "an unknown CA is refused: {err}"
    );
    let err = list(&["--cacert", "ca.pem", "-c", "client.pem", "-k", "client.key"]);
    assert!(handshake_ok(&err), "trusted CA and node certificate: {err}");
    let err = list(&["--root-cert", "ca.pem"]);
    assert!(
        !handshake_ok(&err),
        "no node certificate, no handshake: {err}"
    );
    let err = list(&["--insecure", "--pem", "client.pem", "--key", "client.key"]);
    assert!(handshake_ok(&err), "--insecure skips verification: {err}");

    // A PEM holding both the certificate and its key needs no -k.
    let both = [
        std::fs::read(node.dir.join("client.pem")).unwrap(),
        std::fs::read(node.dir.join("client.key")).unwrap(),
    ]
    .concat();
    std::fs::write(node.dir.join("both.pem"), both).unwrap();
    let err = list(&["--cacert", "ca.pem", "-i", "both.pem"]);
    assert!(handshake_ok(&err), "certificate and key in one file: {err}");
}

#[test]
fn push_and_pull_over_mutual_tls_with_cert_key_and_cacert() {
    let node = Node::new();
    make_pki(&node.dir);
    let file = |name: &str| node.dir.join(name).display().to_string();
    let (cert, key, ca) = (file("server.pem"), file("server.key"), file("ca.pem"));
    let server = Registry::start_with(&[
        "--server-cert",
        &cert,
        "--server-key",
        &key,
        "--ca-cert",
        &ca,
    ]);
    assert!(server.url.starts_with("https://"), "{}", server.url);
    let (client_cert, client_key) = (file("client.pem"), file("client.key"));
    let tls = [
        "--cacert",
        &ca,
        "--cert",
        &client_cert,
        "--key",
        &client_key,
    ];
    let with_tls =
        |args: &[&str]| -> Vec<String> { tls.iter().chain(args).map(|s| s.to_string()).collect() };
    let big = data(300, 3_000_000);
    node.make_vm(VM1, "vm1", &[(&layer(0), &big)], None, b"nv");
    let args = with_tls(&["push", "-t", "v1", "vm1"]);
    node.json(
        &server,
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );

    let dst = Node::new();
    let args = with_tls(&["pull", "vm1"]);
    dst.json(
        &server,
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    assert_eq!(dst.read(&format!("img_lib/{}", layer(0))), big);

    // Without the registry's CA the client refuses the server.
    let out = dst.run(&server, &["list"]);
    assert!(!out.status.success(), "an unverified registry is refused");
}

// ---- credentials: root token and API keys against a registry with authentication on ----

const ROOT_TOKEN: &str = "root-token-for-the-client-tests";

/// Every registry permission, for a group that may do all a node does.
const ALL_PERMISSIONS: &str = "[index, get_disk_info, list_vms, head_push_vm, push_vm, pull_vm, download_vm, delete_vm, revert, upload_file, download_file]";

/// A registry with authentication, API keys and authorization on, sessions of `ttl`, and
/// two groups: `nodes` may do everything, `readers` everything but pushing.
fn auth_registry(dir: &Path, ttl: &str) -> Registry {
    let config = dir.join("auth.yaml");
    std::fs::write(
        &config,
        format!(
            "permission_groups:\n  nodes: {ALL_PERMISSIONS}\n  readers: [index, get_disk_info, list_vms, pull_vm, download_vm, download_file]\n"
        ),
    )
    .unwrap();
    let config = config.display().to_string();
    Registry::start_with(&[
        "--config",
        &config,
        "--enable-auth",
        "--root-token",
        ROOT_TOKEN,
        "--enable-api-keys",
        "--enable-authorization",
        "--api-keys-session-ttl",
        ttl,
    ])
}

fn root_header() -> String {
    use base64::Engine;
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("root:{ROOT_TOKEN}"));
    format!("Basic {basic}")
}

/// Sends a request as root and returns the reply's JSON after asserting a 200.
fn as_root(req: reqwest::RequestBuilder) -> Value {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let resp = req
                .header("Authorization", root_header())
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status().as_u16(), 200);
            resp.json::<Value>().await.unwrap()
        })
}

/// Creates an API key as root (curl's way) and writes its private key, as the registry
/// returns it, to a file of `node`; returns the file and the key text.
fn create_key(server: &Server, node: &Node, id: &str, group: &str) -> (PathBuf, String) {
    let reply = as_root(
        reqwest::Client::new()
            .post(server.at("/v1/apikey"))
            .json(&serde_json::json!({ "id": id, "ttl": 3600, "groups": [group] })),
    );
    let key = reply["body"]
        .as_str()
        .unwrap_or_else(|| panic!("no private key in {reply}"))
        .to_string();
    let path = node.dir.join(format!("{id}.key"));
    std::fs::write(&path, &key).unwrap();
    (path, key)
}

/// Templates the registry holds, asked as root.
fn templates_as_root(server: &Server) -> Vec<Value> {
    let reply = as_root(reqwest::Client::new().get(server.at("/registry/v2/vm")));
    reply["body"].as_array().cloned().unwrap_or_default()
}

/// Asserts that no secret shows in a command's output.
fn assert_no_secret(out: &Output, secrets: &[&str]) {
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(out));
    for secret in secrets {
        // A window from the middle: keys of one size share their first bytes.
        let start = secret.len().saturating_sub(24) / 2;
        let probe = &secret[start..secret.len().min(start + 24)];
        assert!(!text.contains(probe), "a secret leaked: {text}");
    }
    assert!(
        !text.contains("Bearer") && !text.contains("Basic "),
        "{text}"
    );
}

/// Asserts a failure with exit code 1 and a single line on stderr containing `expected`.
fn assert_one_line_failure(out: &Output, expected: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains(expected), "{err}");
}

/// Writes `len` pseudo-random bytes without holding them in memory.
fn write_big(path: &Path, seed: u64, len: u64) {
    use std::io::Write;
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut left = len;
    let mut n = 0;
    while left > 0 {
        let chunk = left.min(64 << 20);
        file.write_all(&data(seed * 1000 + n, chunk as usize))
            .unwrap();
        left -= chunk;
        n += 1;
    }
    file.flush().unwrap();
}

fn sha256_file(path: &Path) -> String {
    use sha2::Digest;
    use std::io::Read;
    let mut file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 4 << 20];
    loop {
        let n = file.read(&mut buf).unwrap();
        if n == 0 {
            return hex::encode(hasher.finalize());
        }
        hasher.update(&buf[..n]);
    }
}

#[test]
fn an_api_key_whose_session_is_shorter_than_the_transfer_pushes_and_pulls_gigabytes() {
    let src = Node::new();
    let server = auth_registry(&src.dir, "5s");
    let (key_file, key) = create_key(&server, &src, "mac-01", "nodes");

    // 2 GiB in four layers: later layers start after the first sessions ended.
    const LAYER: u64 = 512 << 20;
    src.make_vm(VM1, "big", &[(&layer(0), b"")], None, b"nvram");
    let names: Vec<String> = (0..4).map(layer).collect();
    for (i, name) in names.iter().enumerate() {
        write_big(&src.lib.join("img_lib").join(name), 200 + i as u64, LAYER);
    }
    let mut config =
        std::fs::read_to_string(src.lib.join(format!("vm_lib/{VM1}/config.yaml"))).unwrap();
    config.push_str(&format!(
        "images:\n- {}\n- {}\n- {}\n",
        names[1], names[2], names[3]
    ));
    std::fs::write(src.lib.join(format!("vm_lib/{VM1}/config.yaml")), config).unwrap();
    let image = |lib: &Path, name: &str| lib.join("img_lib").join(name);
    let pushed_sha: Vec<String> = names
        .iter()
        .map(|name| sha256_file(&image(&src.lib, name)))
        .collect();

    // Push with the key from flags, at a rate that makes the push outlive several sessions.
    let key_arg = key_file.display().to_string();
    let started = Instant::now();
    let out = src.run(
        &server,
        &[
            "--json",
            "--api-key-id",
            "mac-01",
            "--api-key-file",
            &key_arg,
            "--concurrency",
            "2",
            "--limit-rate",
            "256M",
            "push",
            "-t",
            "v1",
            "big",
        ],
    );
    let pushed_in = started.elapsed();
    assert!(out.status.success(), "push: {}", stderr(&out));
    assert_no_secret(&out, &[&key, ROOT_TOKEN]);
    let pushed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(u(&pushed["bytes_sent"]), 4 * LAYER + 5);
    assert!(
        pushed_in > Duration::from_secs(6),
        "the push must outlive the 5 s session ({pushed_in:?})"
    );

    let push_sessions = server.log().matches("session opened").count();
    // The registry holds the bytes now; a third copy on disk would only risk filling it.
    for name in &names {
        std::fs::remove_file(image(&src.lib, name)).unwrap();
    }

    // Pull into another library with the key from the environment.
    let dst = Node::new();
    let dst_key = dst.dir.join("node.key");
    std::fs::copy(&key_file, &dst_key).unwrap();
    let started = Instant::now();
    let out = dst
        .cmd(&server, &["--json", "--limit-rate", "256M", "pull", "big"])
        .env("VMREG_API_KEY_ID", "mac-01")
        .env("VMREG_API_KEY_FILE", &dst_key)
        .output()
        .unwrap();
    let pulled_in = started.elapsed();
    assert!(out.status.success(), "pull: {}", stderr(&out));
    assert_no_secret(&out, &[&key, ROOT_TOKEN]);
    assert!(
        pulled_in > Duration::from_secs(6),
        "the pull must outlive the 5 s session ({pulled_in:?})"
    );
    for (name, sha) in names.iter().zip(&pushed_sha) {
        let pulled = image(&dst.lib, name);
        assert_eq!(&sha256_file(&pulled), sha, "{name} differs after the pull");
        std::fs::remove_file(pulled).unwrap();
    }
    assert_eq!(dst.read(&format!("vm_lib/{VM1}/nvram")), b"nvram");

    // Each command renewed its session along the way (one session would have run out), and
    // the parallel streams shared them: about one per 3 s (5 s less the 2 s margin), not more.
    let pull_sessions = server.log().matches("session opened").count() - push_sessions;
    let seconds = (pushed_in + pulled_in).as_secs() as usize;
    assert!(
        push_sessions >= 2
            && pull_sessions >= 2
            && push_sessions + pull_sessions <= seconds / 3 + 4,
        "{push_sessions} + {pull_sessions} sessions in {seconds} s of transfer"
    );
}

#[test]
fn a_key_without_push_vm_cannot_push_and_nothing_is_stored() {
    let node = Node::new();
    let server = auth_registry(&node.dir, "5m");
    let (key_file, key) = create_key(&server, &node, "reader", "readers");
    node.make_vm(VM1, "vm1", &[(&layer(0), &data(7, 3 << 20))], None, b"nv");

    // The key is kept with the remote this time, and the remotes file is the owner's only.
    let remotes = node.dir.join("remotes.yaml");
    let key_arg = key_file.display().to_string();
    let add = |args: &[&str]| client(&remotes).args(args).output().unwrap();
    let out = add(&[
        "add",
        "--api-key-id",
        "reader",
        "--api-key-file",
        &key_arg,
        "main",
        &server.url,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    std::fs::remove_file(&key_file).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&remotes).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let out = add(&["--json", "list-repos"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_no_secret(&out, &[&key]);
    let repos: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(repos[0]["auth"], "API key reader");

    let run = |args: &[&str]| {
        client(&remotes)
            .arg("--lib")
            .arg(&node.lib)
            .args(args)
            .output()
            .unwrap()
    };
    // Reading is allowed...
    let out = run(&["--json", "list"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        serde_json::from_slice::<Value>(&out.stdout).unwrap(),
        serde_json::json!([])
    );
    // ... pushing is not: one line, exit 1, and the registry holds nothing.
    let out = run(&["push", "-t", "v1", "vm1"]);
    assert_one_line_failure(&out, "push_vm");
    assert_no_secret(&out, &[&key]);
    assert!(templates_as_root(&server).is_empty());
    // A missing template is still exit code 3 with credentials in play.
    let out = run(&["pull", "nosuch"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
}

#[test]
fn the_root_token_works_from_flag_environment_and_remote_and_a_wrong_one_fails_in_one_line() {
    let node = Node::new();
    let server = auth_registry(&node.dir, "5m");
    node.make_vm(VM1, "vm1", &[(&layer(0), &data(8, 1 << 20))], None, b"nv");

    let out = node.run(
        &server,
        &["--root-token", ROOT_TOKEN, "push", "-t", "v1", "vm1"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_no_secret(&out, &[ROOT_TOKEN]);

    let out = node
        .cmd(&server, &["--json", "list"])
        .env("VMREG_ROOT_TOKEN", ROOT_TOKEN)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_no_secret(&out, &[ROOT_TOKEN]);
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed[0]["name"], "vm1");

    let wrong = "wrong-token-0123456789";
    let out = node.run(&server, &["--root-token", wrong, "list"]);
    assert_one_line_failure(&out, "refused the root token");
    assert_no_secret(&out, &[wrong]);
    let out = node
        .cmd(&server, &["--json", "pull", "vm1"])
        .env("VMREG_ROOT_TOKEN", wrong)
        .output()
        .unwrap();
    assert_one_line_failure(&out, "authentication failed");
    assert_no_secret(&out, &[wrong]);
    assert!(out.stdout.is_empty(), "nothing on stdout for a failure");

    let out = node.run(&server, &["list"]);
    assert_one_line_failure(&out, "requires credentials");

    // Kept with the remote.
    let out = node.run(
        &server,
        &["add", "--root-token", ROOT_TOKEN, "main", &server.url],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_no_secret(&out, &[ROOT_TOKEN]);
    let out = client(&node.dir.join("remotes.yaml"))
        .args(["--json", "describe", "vm1"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_no_secret(&out, &[ROOT_TOKEN]);
}

/// The "N s elapsed" of each progress line `verb` printed on stderr.
fn progress_stamps(out: &Output, verb: &str) -> Vec<u64> {
    stderr(out)
        .lines()
        .filter(|l| l.starts_with(&format!("{verb}: ")) && l.ends_with(" s elapsed"))
        .map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            words[words.len() - 3].parse().unwrap()
        })
        .collect()
}

#[test]
fn piped_transfers_print_progress_lines_and_end_with_time_and_rate() {
    let server = Registry::start();
    let (src, dst) = (Node::new(), Node::new());
    let made = src.run(
        &server,
        &["sample-vm", "big", "--size", "1GiB", "--layers", "1"],
    );
    assert!(made.status.success(), "{}", stderr(&made));
    // Held to about 9 s each way, so several lines are due.
    let rate = ["--limit-rate", "120M"];
    let check = |out: &Output, verb: &str| {
        assert!(out.status.success(), "{verb}: {}", stderr(out));
        let stamps = progress_stamps(out, verb);
        assert!(stamps.len() >= 2, "{verb}: {}", stderr(out));
        assert!(
            stamps[0] <= 5,
            "{verb}: the first line within 5 s: {stamps:?}"
        );
        for pair in stamps.windows(2) {
            assert!(
                pair[1] - pair[0] <= 5,
                "{verb}: a line every 5 s at most: {stamps:?}"
            );
        }
        assert!(
            stderr(out).contains("(1") || stderr(out).contains("%)"),
            "{verb}: lines carry the share done: {}",
            stderr(out)
        );
    };
    let mut args = vec!["push", "-t", "v1", "big"];
    args.extend(rate);
    let pushed = src.run(&server, &args);
    check(&pushed, "push");
    let last = String::from_utf8_lossy(&pushed.stdout);
    assert!(last.contains("1.0 GiB sent in "), "{last}");
    assert!(last.trim_end().ends_with("/s)"), "{last}");
    let mut args = vec!["pull", "big"];
    args.extend(rate);
    let pulled = dst.run(&server, &args);
    check(&pulled, "pull");
    let last = String::from_utf8_lossy(&pulled.stdout);
    assert!(last.contains("1.0 GiB received in "), "{last}");

    // --json: the same transfers' duration and whether they resumed.
    let tagged = src.json(&server, &["push", "-t", "v2", "big"]);
    assert!(tagged["elapsed_s"].as_f64().is_some(), "{tagged}");
    assert_eq!(tagged["resumed"], false);
    std::fs::remove_dir_all(dst.lib.join("img_lib")).unwrap();
    let again = dst.json(&server, &["pull", "big"]);
    assert!(again["elapsed_s"].as_f64().unwrap() > 0.0, "{again}");
    assert_eq!(again["resumed"], false);
}

// ---- resume through another address of the same registry (issue 22, item 4) ----

/// A TCP relay in front of a registry that counts the bytes clients send through it. Its
/// target can change, as when another registry comes up behind the same address.
struct Relay {
    url: String,
    target: std::sync::Arc<std::sync::Mutex<String>>,
    sent: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Relay {
    fn start(target: &str) -> Relay {
        use std::sync::atomic::{AtomicU64, Ordering};
        use std::sync::{Arc, Mutex};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let target = Arc::new(Mutex::new(target.trim_start_matches("http://").to_string()));
        let sent = Arc::new(AtomicU64::new(0));
        let (to, counted) = (target.clone(), sent.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let addr = to.lock().unwrap().clone();
                let Ok(server) = TcpStream::connect(&addr) else {
                    continue;
                };
                let (mut from_client, mut to_server) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                let counted = counted.clone();
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 64 << 10];
                    while let Ok(n) = from_client.read(&mut buf) {
                        if n == 0 || to_server.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        counted.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    let _ = to_server.shutdown(Shutdown::Write);
                });
                let (mut from_server, mut to_client) = (server, client);
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut from_server, &mut to_client);
                    let _ = to_client.shutdown(Shutdown::Write);
                });
            }
        });
        Relay { url, target, sent }
    }

    /// Bytes sent through the relay so far, requests' headers included.
    fn sent(&self) -> u64 {
        self.sent.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn retarget(&self, target: &str) {
        *self.target.lock().unwrap() = target.trim_start_matches("http://").to_string();
    }
}

/// Runs the client with `--json` against `url`, asserts success and parses stdout.
fn json_at(node: &Node, url: &str, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = node.cmd_at(url, &all).output().expect("run vmreg registry");
    assert!(
        out.status.success(),
        "vmreg registry {args:?} at {url} failed: {}",
        stderr(&out)
    );
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

/// The upload session `node`'s push journal names.
fn journaled_session(node: &Node) -> String {
    let journal = node.lib.join(format!(".vmreg/push/{VM1}.json"));
    let state: Value =
        serde_json::from_slice(&std::fs::read(&journal).expect("a journal")).expect("journal JSON");
    state["session"].as_str().expect("a session").to_string()
}

#[test]
fn a_push_killed_through_one_address_resumes_through_another() {
    const PART: u64 = 5 << 20;
    let server = Registry::start_with(&["--part-size", "5MiB"]);
    // Another address of the same registry: on S3 + Redis another replica's own URL,
    // behind a relay that counts what is sent; on the embedded store (one process owns
    // it) the relay is the other address.
    let replica = common::s3_backend().then(|| server.replica());
    let b = Relay::start(replica.as_ref().map_or(&server.url, |r| &r.url));
    let src = Node::new();
    let big = data(60, 48 << 20);
    src.make_vm(VM1, "vm1", &[(&layer(0), &big)], None, b"nv");
    let mut child = spawn_quiet(
        &src,
        &server,
        &["--json", "--limit-rate", "8M", "push", "-t", "v1", "vm1"],
    );
    wait_for("16 MiB at the registry", Duration::from_secs(60), || {
        durable_ranges_at_registry(&server, &src) >= 16 << 20
    });
    kill9(&mut child);
    // Parts the killed client's requests still had in flight land meanwhile.
    std::thread::sleep(Duration::from_millis(500));
    let durable = durable_ranges_at_registry(&server, &src);
    let missing = big.len() as u64 + 2 - durable;

    let pushed = json_at(&src, &b.url, &["push", "-t", "v1", "vm1"]);
    assert_eq!(pushed["resumed"], true, "{pushed}");
    let through_b = b.sent();
    eprintln!("durable {durable}, missing {missing}, sent through the other address {through_b}");
    assert!(
        through_b >= missing,
        "{through_b} bytes through the other address, {missing} were missing"
    );
    // Headers and JSON are a few KiB; a part's worth more would be bytes sent again.
    assert!(
        through_b <= missing + PART,
        "the rerun through the other address sent {through_b} bytes; {missing} were missing"
    );
    let dst = Node::new();
    dst.json(&server, &["pull", "vm1"]);
    assert!(dst.read(&format!("img_lib/{}", layer(0))) == big);
}

#[test]
fn a_rerun_against_another_registry_at_the_same_address_never_uses_the_old_session() {
    let first = Registry::start_with(&["--part-size", "5MiB"]);
    let relay = Relay::start(&first.url);
    let src = Node::new();
    let big = data(61, 32 << 20);
    src.make_vm(VM1, "vm1", &[(&layer(0), &big)], None, b"nv");
    let mut child = src
        .cmd_at(
            &relay.url,
            &["--json", "--limit-rate", "8M", "push", "-t", "v1", "vm1"],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("8 MiB at the registry", Duration::from_secs(60), || {
        durable_ranges_at_registry(&first, &src) >= 8 << 20
    });
    kill9(&mut child);
    let session = journaled_session(&src);

    // The address now leads to another registry: the journal is not its.
    let second = Registry::start_with(&["--part-size", "5MiB", "--access-logs"]);
    relay.retarget(&second.url);
    let pushed = json_at(&src, &relay.url, &["push", "-t", "v1", "vm1"]);
    assert_eq!(pushed["resumed"], false, "{pushed}");
    assert_eq!(u(&pushed["bytes_sent"]), big.len() as u64 + 2);
    let log = second.log();
    assert!(
        log.contains("/registry/status"),
        "the access log is on and saw the client: {log}"
    );
    assert!(
        !log.contains(&session),
        "the other registry was asked about the first one's session {session}"
    );
}

#[test]
fn errors_say_what_went_wrong_and_what_to_do_next_in_one_line() {
    let server = Registry::start();
    let node = Node::new();
    let port = server.url.rsplit(':').next().unwrap().to_string();
    let bare = format!("127.0.0.1:{port}");
    let run = |args: &[&str]| {
        let out = Command::new(common::vmreg_bin())
            .arg("registry")
            .args(args)
            .env("VMREG_CONFIG", node.dir.join("remotes.yaml"))
            .env("VMREG_LIB", &node.lib)
            .output()
            .unwrap();
        (out.status.code(), stderr(&out))
    };
    let https = format!("https://{bare}");
    let with_path = format!("{}/nope", server.url);
    for (args, said) in [
        (
            vec!["add", "x", bare.as_str()],
            format!("needs a scheme: write http://{bare}"),
        ),
        (
            vec!["-a", bare.as_str(), "list"],
            format!("needs a scheme: write http://{bare}"),
        ),
        (
            vec!["-a", https.as_str(), "list"],
            "does not speak TLS there: use http:// instead of https://".to_string(),
        ),
        (
            vec!["-a", with_path.as_str(), "list"],
            "is not a vmreg or Anka registry endpoint: check the registry URL".to_string(),
        ),
    ] {
        let (code, line) = run(&args);
        assert_eq!(code, Some(1), "{args:?}: {line}");
        assert_eq!(line.trim().lines().count(), 1, "{args:?}: {line}");
        assert!(line.contains(&said), "{args:?}: {line}");
    }
    // An address that does not answer is kept, with a warning that says how to test it.
    let (code, line) = run(&["add", "later", "http://127.0.0.1:1"]);
    assert_eq!(code, Some(0), "{line}");
    assert!(
        line.starts_with("warning: http://127.0.0.1:1 did not answer"),
        "{line}"
    );
    assert!(line.contains("vmreg registry list"), "{line}");
    let (code, line) = run(&["list-repos"]);
    assert_eq!(code, Some(0), "{line}");
}
