//! Crash test: two replicas over one Garage bucket and one Redis take 100 seeded operations
//! (pushes of small templates sharing layers, reverts, template deletes, `vmreg admin gc
//! --grace 0s` overlapping the next operation), and a SIGKILL hits one of them at seeded
//! points while an operation is in flight against it. A model of what each reply reported
//! is checked along the way and at the end: every version reported committed is visible
//! and pulls byte-identical, no version reported failed, reverted or deleted is visible,
//! and a version whose outcome the kill hid may be either but pulls byte-identical when
//! visible. Afterwards one `gc --grace 0s` pass leaves `fsck` clean. The second test also
//! loses Redis midway and rebuilds it with `vmreg admin reindex`.
//!
//! `VMREG_CRASH_SEED=N` replays a run (the kill timing still races); the seed and the
//! counts are printed. S3 + Redis only, so both tests are `#[ignore]`d for a plain
//! `cargo test`; `scripts/test.sh` runs them in its S3 pass.

mod common;

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use futures_util::StreamExt;
use serde_json::{json, Value};
use sha2::Digest;

const OPERATIONS: usize = 100;

/// splitmix64: small, seedable, and the same on every platform.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// True with probability `percent`/100.
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.below(high - low + 1)
    }
}

fn seed() -> u64 {
    match std::env::var("VMREG_CRASH_SEED") {
        Ok(s) => s.trim().parse().expect("VMREG_CRASH_SEED is a number"),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_nanos() as u64,
    }
}

/// A file of a template, its content shared by every push that names it.
#[derive(Clone)]
struct Layer {
    name: String,
    kind: &'static str,
    data: Bytes,
    sha256: String,
}

impl Layer {
    fn new(name: String, kind: &'static str, size: usize, seed: u64) -> Layer {
        let data = Bytes::from(pseudo_random(size, seed));
        Layer {
            sha256: sha256_hex(&data),
            name,
            kind,
            data,
        }
    }

    fn image(size: usize, seed: u64) -> Layer {
        Layer::new(
            format!("{}.ank", uuid::Uuid::new_v4().simple()),
            "image",
            size,
            seed,
        )
    }
}

/// What the replies said about a version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    /// Reported committed (or seen in the index): must stay visible and pull identical.
    Committed,
    /// Reported failed, or reported reverted or deleted: must not be visible.
    Gone,
    /// A kill hid the outcome: either, but identical when visible.
    Unknown,
}

struct Pushed {
    files: Vec<Layer>,
    fate: Fate,
}

struct Template {
    id: String,
    name: String,
    base: Layer,
    nvram: Layer,
    /// Layers its versions added on top, reused by later tags.
    tops: Vec<Layer>,
    /// Deleted, or a kill hid whether a revert or delete removed it: no more pushes.
    retired: bool,
}

#[derive(Default, Debug)]
struct Counts {
    committed: usize,
    failed: usize,
    unknown: usize,
    resumed: usize,
    reverts: usize,
    deletes: usize,
    gc_runs: usize,
    kills: usize,
}

/// How a request ended.
#[derive(Debug)]
enum Outcome {
    /// A 2xx with this body.
    Ok(Value),
    /// A 4xx: the registry said no.
    Failed(u16, Value),
    /// No reply (connection cut), or a 5xx: the outcome is unknown.
    Cut(String),
}

/// Where in a push the kill is armed, and how long after it fires.
#[derive(Clone, Copy, Debug)]
enum Phase {
    Negotiate,
    Upload,
    Commit,
}

struct Kill {
    phase: Phase,
    delay: Duration,
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("http client")
}

async fn send(req: reqwest::RequestBuilder) -> Outcome {
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) => return Outcome::Cut(e.to_string()),
    };
    let status = resp.status().as_u16();
    let body = match resp.bytes().await {
        Ok(b) => serde_json::from_slice(&b).unwrap_or(Value::Null),
        Err(e) => return Outcome::Cut(e.to_string()),
    };
    match status {
        200..=299 => Outcome::Ok(body),
        400..=499 => Outcome::Failed(status, body),
        _ => Outcome::Cut(format!("{status}: {body}")),
    }
}

/// A body sent in small slices with pauses, so that a kill can land mid-upload.
fn slow_body(data: Bytes) -> reqwest::Body {
    const SLICE: usize = 128 * 1024;
    let slices: Vec<Bytes> = (0..data.len())
        .step_by(SLICE)
        .map(|at| data.slice(at..(at + SLICE).min(data.len())))
        .collect();
    let stream = futures_util::stream::iter(slices).then(|slice| async move {
        tokio::time::sleep(Duration::from_millis(4)).await;
        Ok::<Bytes, std::io::Error>(slice)
    });
    reqwest::Body::wrap_stream(stream)
}

/// SIGKILL for `pid` after `delay`, from a task of its own.
fn arm(pid: u32, delay: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    })
}

/// The run: two replicas, the model, the seeded choices.
struct Run {
    seed: u64,
    rng: Rng,
    ns: Namespace,
    servers: Vec<Server>,
    http: reqwest::Client,
    templates: Vec<Template>,
    versions: BTreeMap<(String, String), Pushed>,
    counts: Counts,
    /// A `gc --grace 0s` running beside the next operation: the process, and a kill
    /// aimed at it.
    gc: Option<(Child, Option<tokio::task::JoinHandle<()>>)>,
    next_tag: usize,
}

impl Run {
    fn new(seed: u64) -> Run {
        let a = Server::start();
        let b = a.replica();
        let ns = a.ns.clone();
        Run {
            seed,
            rng: Rng(seed),
            ns,
            servers: vec![a, b],
            http: http(),
            templates: Vec::new(),
            versions: BTreeMap::new(),
            counts: Counts::default(),
            gc: None,
            next_tag: 0,
        }
    }

    fn url(&self, replica: usize, path: &str) -> String {
        self.servers[replica].at(path)
    }

    /// Restarts a replica that a kill hit (same port, same stores).
    fn revive(&mut self, replica: usize) {
        self.counts.kills += 1;
        eprintln!("  replica {replica} killed; restarting");
        self.servers[replica].restart();
    }

    /// Waits for a kill task, then restarts the replica it aimed at.
    async fn after_kill(&mut self, replica: usize, killer: Option<tokio::task::JoinHandle<()>>) {
        if let Some(killer) = killer {
            killer.await.expect("kill task");
            self.revive(replica);
        }
    }

    async fn op(&mut self, i: usize) {
        self.join_gc().await;
        let replica = self.rng.below(2) as usize;
        let roll = self.rng.below(100);
        let kill = self.rng.chance(25).then(|| {
            let phase = match self.rng.below(3) {
                0 => Phase::Negotiate,
                1 => Phase::Upload,
                _ => Phase::Commit,
            };
            let max_ms = match phase {
                Phase::Negotiate => 5,
                Phase::Upload => 40,
                Phase::Commit => 8,
            };
            Kill {
                phase,
                delay: Duration::from_millis(self.rng.below(max_ms + 1)),
            }
        });
        match roll {
            0..=61 => self.push_op(i, replica, kill).await,
            62..=75 => self.revert_op(i, replica, kill).await,
            76..=81 => self.delete_op(i, replica, kill).await,
            _ => self.gc_op(i),
        }
    }

    // -----------------------------------------------------------------------------------
    // Pushes.

    async fn push_op(&mut self, i: usize, replica: usize, kill: Option<Kill>) {
        let live: Vec<usize> = (0..self.templates.len())
            .filter(|&t| !self.templates[t].retired)
            .collect();
        let t = if live.is_empty() || (live.len() < 6 && self.rng.chance(25)) {
            self.new_template()
        } else {
            live[self.rng.below(live.len() as u64) as usize]
        };
        // A top layer: new, or one an earlier tag of this template pushed.
        let reuse = !self.templates[t].tops.is_empty() && self.rng.chance(40);
        let top = if reuse {
            let tops = &self.templates[t].tops;
            tops[self.rng.below(tops.len() as u64) as usize].clone()
        } else {
            let size = self.rng.between(50_000, 1_500_000) as usize;
            let layer = Layer::image(size, self.rng.next());
            self.templates[t].tops.push(layer.clone());
            layer
        };
        let mut files = vec![top, self.templates[t].base.clone()];
        if self.rng.chance(50) {
            files.push(self.templates[t].nvram.clone());
        }
        // Some pushes are meant to fail: a layer whose bytes are not what was declared,
        // or a tag the template already holds with other content.
        let kind = self.rng.below(100);
        let committed_tags: Vec<String> = self
            .versions
            .iter()
            .filter(|((id, _), v)| *id == self.templates[t].id && v.fate == Fate::Committed)
            .map(|((_, tag), _)| tag.clone())
            .collect();
        let (tag, corrupt, duplicate) = if kind < 8 {
            let size = self.rng.between(50_000, 600_000) as usize;
            files.insert(0, Layer::image(size, self.rng.next()));
            (self.fresh_tag(), true, false)
        } else if kind < 13 && !committed_tags.is_empty() {
            let tag = committed_tags[self.rng.below(committed_tags.len() as u64) as usize].clone();
            (tag, false, true)
        } else {
            (self.fresh_tag(), false, false)
        };
        let (id, name) = (self.templates[t].id.clone(), self.templates[t].name.clone());
        let retry = self.rng.chance(50);
        eprintln!(
            "op {i}: push {name}:{tag} to {replica}{}{}{}",
            if corrupt { " (corrupt layer)" } else { "" },
            if duplicate { " (duplicate tag)" } else { "" },
            kill.as_ref()
                .map(|k| format!(", kill at {:?}+{:?}", k.phase, k.delay))
                .unwrap_or_default()
        );

        let (outcome, session, commit_sent, killer) = self
            .push_flow(replica, &id, &name, &tag, &files, corrupt, kill)
            .await;
        let killed = killer.is_some();
        self.after_kill(replica, killer).await;
        let mut outcome = outcome;
        if let (Outcome::Cut(why), true, Some(session)) = (&outcome, retry, &session) {
            eprintln!("  cut ({why}); resuming on the other replica");
            self.counts.resumed += 1;
            outcome = self.resume(1 - replica, session, &files, corrupt).await;
        }
        let fate = match &outcome {
            Outcome::Ok(body) => {
                assert!(
                    !corrupt && !duplicate,
                    "seed {}: op {i}: a push meant to fail was committed: {body}",
                    self.seed
                );
                assert_eq!(body["body"]["tag"], tag.as_str(), "seed {}", self.seed);
                Fate::Committed
            }
            Outcome::Failed(status, body) => {
                eprintln!("  failed: {status} {body}");
                Fate::Gone
            }
            Outcome::Cut(why) => {
                assert!(
                    killed,
                    "seed {}: op {i}: no reply without a kill: {why}",
                    self.seed
                );
                // Nothing is visible before a commit is asked for.
                if commit_sent {
                    Fate::Unknown
                } else {
                    Fate::Gone
                }
            }
        };
        eprintln!("  -> {fate:?}");
        match fate {
            Fate::Committed => self.counts.committed += 1,
            Fate::Gone => self.counts.failed += 1,
            Fate::Unknown => self.counts.unknown += 1,
        }
        if duplicate {
            // The tag keeps the version it had: the model already holds its content.
            assert_ne!(fate, Fate::Committed);
            return;
        }
        self.versions.insert((id, tag), Pushed { files, fate });
    }

    fn new_template(&mut self) -> usize {
        let id = new_id();
        let name = format!("crash-{}", &id[..8]);
        // Most bases fit one part; some take two, so a kill can fall between parts.
        let size = if self.rng.chance(20) {
            self.rng.between(5_300_000, 7_000_000)
        } else {
            self.rng.between(300_000, 3_000_000)
        } as usize;
        let base = Layer::image(size, self.rng.next());
        let nvram = Layer::new("nvram".into(), "nvram", 4096, self.rng.next());
        self.templates.push(Template {
            id,
            name,
            base,
            nvram,
            tops: Vec::new(),
            retired: false,
        });
        self.templates.len() - 1
    }

    fn fresh_tag(&mut self) -> String {
        self.next_tag += 1;
        format!("t{}", self.next_tag)
    }

    /// Negotiates, uploads, commits; arms the kill at its phase. Returns the outcome, the
    /// session, whether the commit was sent, and the kill task.
    #[allow(clippy::too_many_arguments)]
    async fn push_flow(
        &self,
        replica: usize,
        id: &str,
        name: &str,
        tag: &str,
        files: &[Layer],
        corrupt: bool,
        kill: Option<Kill>,
    ) -> (
        Outcome,
        Option<String>,
        bool,
        Option<tokio::task::JoinHandle<()>>,
    ) {
        let pid = self.servers[replica].pid();
        let mut killer = None;
        let arm_at = |phase: Phase, killer: &mut Option<tokio::task::JoinHandle<()>>| {
            if let Some(k) = &kill {
                let due = matches!(
                    (k.phase, phase),
                    (Phase::Negotiate, Phase::Negotiate)
                        | (Phase::Upload, Phase::Upload)
                        | (Phase::Commit, Phase::Commit)
                        // A push with nothing to upload is killed at its commit.
                        | (Phase::Upload, Phase::Commit)
                );
                if due && killer.is_none() {
                    *killer = Some(arm(pid, k.delay));
                }
            }
        };
        let request = push_json(id, name, tag, files);
        arm_at(Phase::Negotiate, &mut killer);
        let plan = match send(
            self.http
                .post(self.url(replica, "/api/v1/push"))
                .json(&request),
        )
        .await
        {
            Outcome::Ok(plan) => plan["body"].clone(),
            other => return (other, None, false, killer),
        };
        let session = plan["session"].as_str().expect("session").to_string();
        for planned in plan["files"].as_array().expect("files") {
            if planned["upload"] != true {
                continue;
            }
            arm_at(Phase::Upload, &mut killer);
            let data = payload(files, planned, corrupt);
            let key = planned["key"].as_str().expect("key");
            let url = self.url(
                replica,
                &format!("/api/v1/push/{session}/files/{}?offset=0", encode_path(key)),
            );
            match send(self.http.put(url).body(slow_body(data))).await {
                Outcome::Ok(_) => {}
                other => return (other, Some(session), false, killer),
            }
        }
        arm_at(Phase::Commit, &mut killer);
        let url = self.url(replica, &format!("/api/v1/push/{session}/commit"));
        let outcome = send(self.http.post(url)).await;
        (outcome, Some(session), true, killer)
    }

    /// Finishes a cut push on another replica: sends what did not arrive, commits. A
    /// commit the dead replica made answers with its version again.
    async fn resume(
        &self,
        replica: usize,
        session: &str,
        files: &[Layer],
        corrupt: bool,
    ) -> Outcome {
        let status = send(
            self.http
                .get(self.url(replica, &format!("/api/v1/push/{session}"))),
        )
        .await;
        if let Outcome::Ok(plan) = status {
            for planned in plan["body"]["files"].as_array().expect("files") {
                if planned["upload"] != true {
                    continue;
                }
                let size = planned["size"].as_u64().expect("size");
                let received = planned["received"].as_u64().expect("received");
                if received >= size {
                    continue;
                }
                let data = payload(files, planned, corrupt);
                let key = planned["key"].as_str().expect("key");
                let url = self.url(
                    replica,
                    &format!(
                        "/api/v1/push/{session}/files/{}?offset={received}",
                        encode_path(key)
                    ),
                );
                let rest = data.slice(received as usize..);
                match send(self.http.put(url).body(rest)).await {
                    Outcome::Ok(_) => {}
                    other => return other,
                }
            }
        }
        send(
            self.http
                .post(self.url(replica, &format!("/api/v1/push/{session}/commit"))),
        )
        .await
    }

    // -----------------------------------------------------------------------------------
    // Reverts and deletes.

    /// A template that is not retired and has versions in the index, with its tags in
    /// order as `replica` lists them (checked against the model).
    async fn pick_listed(&mut self, i: usize, replica: usize) -> Option<(usize, Vec<String>)> {
        let live: Vec<usize> = (0..self.templates.len())
            .filter(|&t| !self.templates[t].retired)
            .collect();
        if live.is_empty() {
            return None;
        }
        let t = live[self.rng.below(live.len() as u64) as usize];
        let id = self.templates[t].id.clone();
        let tags = self.listed_tags(replica, &id).await;
        self.check_template(i, &id, &tags);
        if tags.is_empty() {
            return None;
        }
        Some((t, tags))
    }

    async fn listed_tags(&self, replica: usize, id: &str) -> Vec<String> {
        let reply = send(
            self.http
                .get(self.url(replica, &format!("/registry/vm?id={id}"))),
        )
        .await;
        match reply {
            Outcome::Ok(body) => body["body"]["versions"]
                .as_array()
                .expect("versions")
                .iter()
                .map(|v| v["tag"].as_str().expect("tag").to_string())
                .collect(),
            Outcome::Failed(404, _) => Vec::new(),
            other => panic!("seed {}: reading template {id}: {other:?}", self.seed),
        }
    }

    /// The index's tags of one template against the model: every committed version is
    /// there, none that is gone; an unknown one seen there is committed from now on.
    fn check_template(&mut self, i: usize, id: &str, listed: &[String]) {
        for tag in listed {
            match self.versions.get_mut(&(id.to_string(), tag.clone())) {
                None => panic!(
                    "seed {}: op {i}: template {id} lists tag {tag}, which no push made",
                    self.seed
                ),
                Some(v) => match v.fate {
                    Fate::Gone => panic!(
                        "seed {}: op {i}: template {id} lists tag {tag}, whose push failed or which was reverted or deleted",
                        self.seed
                    ),
                    Fate::Unknown => v.fate = Fate::Committed,
                    Fate::Committed => {}
                },
            }
        }
        for ((vid, tag), v) in &self.versions {
            if vid == id && v.fate == Fate::Committed {
                assert!(
                    listed.contains(tag),
                    "seed {}: op {i}: template {id} lost its committed tag {tag}; it lists {listed:?}",
                    self.seed
                );
            }
        }
    }

    fn set_fate(&mut self, id: &str, tags: &[String], fate: Fate) {
        for tag in tags {
            if let Some(v) = self.versions.get_mut(&(id.to_string(), tag.clone())) {
                v.fate = fate;
            }
        }
    }

    async fn revert_op(&mut self, i: usize, replica: usize, kill: Option<Kill>) {
        let Some((t, tags)) = self.pick_listed(i, replica).await else {
            return;
        };
        // Remove the latest version, or every version after a number.
        let (query, keep) = if self.rng.chance(50) {
            (String::new(), tags.len() - 1)
        } else {
            let n = self.rng.below(tags.len() as u64) as usize;
            (format!("&number={n}"), n + 1)
        };
        let path = format!("/registry/revert?id={}{query}", self.templates[t].id);
        self.counts.reverts += 1;
        self.remove(i, replica, kill, t, &path, &tags[keep..], keep == 0)
            .await;
    }

    async fn delete_op(&mut self, i: usize, replica: usize, kill: Option<Kill>) {
        let Some((t, tags)) = self.pick_listed(i, replica).await else {
            return;
        };
        let path = format!("/registry/vm?id={}", self.templates[t].id);
        self.counts.deletes += 1;
        // Versions the model holds that the listing did not (failed, unknown) stay as
        // they are: a delete must not bring them back either.
        self.remove(i, replica, kill, t, &path, &tags, true).await;
    }

    /// Sends a revert or delete (`DELETE path`) that removes `removed` of template `t`,
    /// and the template itself when `empties`.
    #[allow(clippy::too_many_arguments)]
    async fn remove(
        &mut self,
        i: usize,
        replica: usize,
        kill: Option<Kill>,
        t: usize,
        path: &str,
        removed: &[String],
        empties: bool,
    ) {
        eprintln!(
            "op {i}: DELETE {path} ({}) on {replica}, removing {removed:?}{}",
            self.templates[t].name,
            kill.as_ref()
                .map(|k| format!(", kill after {:?}", k.delay))
                .unwrap_or_default()
        );
        let id = self.templates[t].id.clone();
        let killer = kill.map(|k| arm(self.servers[replica].pid(), k.delay));
        let outcome = send(self.http.delete(self.url(replica, path))).await;
        let killed = killer.is_some();
        self.after_kill(replica, killer).await;
        match outcome {
            Outcome::Ok(_) => {
                self.set_fate(&id, removed, Fate::Gone);
                self.templates[t].retired |= empties;
            }
            Outcome::Failed(status, body) => {
                panic!(
                    "seed {}: op {i}: {path} refused: {status} {body}",
                    self.seed
                )
            }
            Outcome::Cut(why) => {
                assert!(
                    killed,
                    "seed {}: op {i}: {path} cut without a kill: {why}",
                    self.seed
                );
                self.set_fate(&id, removed, Fate::Unknown);
                // Whether the template is still there is unknown: push no more to it.
                self.templates[t].retired = true;
            }
        }
    }

    // -----------------------------------------------------------------------------------
    // Garbage collection, beside the next operation.

    fn admin(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(vmreg_bin());
        cmd.arg("admin").args(args).args(self.ns.store_args());
        cmd
    }

    fn gc_op(&mut self, i: usize) {
        let kill = self.rng.chance(20).then(|| self.rng.between(5, 150));
        eprintln!(
            "op {i}: gc --grace 0s beside the next operation{}",
            kill.map(|ms| format!(", killed after {ms}ms"))
                .unwrap_or_default()
        );
        let child = self
            .admin(&["gc", "--json", "--grace", "0s"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start vmreg admin gc");
        let killer = kill.map(|ms| arm(child.id(), Duration::from_millis(ms)));
        self.counts.gc_runs += 1;
        self.gc = Some((child, killer));
    }

    async fn join_gc(&mut self) {
        let Some((child, killer)) = self.gc.take() else {
            return;
        };
        let killed = killer.is_some();
        if let Some(killer) = killer {
            killer.await.expect("kill task");
            self.counts.kills += 1;
        }
        let out = tokio::task::spawn_blocking(move || child.wait_with_output())
            .await
            .expect("gc wait")
            .expect("gc output");
        // A gc the kill reached ends by the signal; one it missed must have succeeded.
        if !killed || out.status.code().is_some() {
            self.assert_ran("gc", &out);
        }
    }

    /// Asserts an admin command exited 0; returns its stdout.
    fn assert_ran(&self, what: &str, out: &std::process::Output) -> String {
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "seed {}: {what} failed: {stdout}\n{}",
            self.seed,
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    // -----------------------------------------------------------------------------------
    // Whole-registry checks.

    /// Both replicas list the same templates and tags; the model holds against them; with
    /// `pull`, every visible version pulls byte-identical.
    async fn check_all(&mut self, when: &str, pull: bool) {
        let seen = self.index(0).await;
        assert_eq!(
            self.index(1).await,
            seen,
            "seed {}: {when}: the replicas disagree",
            self.seed
        );
        let ids: Vec<String> = self.templates.iter().map(|t| t.id.clone()).collect();
        for id in seen.keys() {
            assert!(
                ids.contains(id),
                "seed {}: {when}: template {id} that no push made",
                self.seed
            );
        }
        let empty = Vec::new();
        for id in &ids {
            self.check_template(0, id, seen.get(id).unwrap_or(&empty));
        }
        if !pull {
            return;
        }
        let mut n = 0;
        for (id, tags) in &seen {
            for tag in tags {
                self.pull(when, n % 2, id, tag).await;
                n += 1;
            }
        }
        eprintln!("{when}: {n} versions pulled byte-identical");
    }

    /// Template id → tags in order, as one replica lists them.
    async fn index(&self, replica: usize) -> BTreeMap<String, Vec<String>> {
        let list = match send(self.http.get(self.url(replica, "/registry/v2/vm"))).await {
            Outcome::Ok(body) => body["body"].as_array().expect("a list").clone(),
            other => panic!("seed {}: listing: {other:?}", self.seed),
        };
        let mut out = BTreeMap::new();
        for t in list {
            let id = t["id"].as_str().expect("id").to_string();
            let tags = self.listed_tags(replica, &id).await;
            out.insert(id, tags);
        }
        out
    }

    async fn pull(&self, when: &str, replica: usize, id: &str, tag: &str) {
        let want = &self.versions[&(id.to_string(), tag.to_string())].files;
        let url = self.url(
            replica,
            &format!("/api/v1/templates/{id}/manifest?tag={}", encode_query(tag)),
        );
        let manifest = match send(self.http.get(url)).await {
            Outcome::Ok(body) => body["body"].clone(),
            other => panic!(
                "seed {}: {when}: manifest of {id}:{tag}: {other:?}",
                self.seed
            ),
        };
        let files = manifest["files"].as_array().expect("files");
        let got: Vec<(&str, &str)> = files
            .iter()
            .map(|f| {
                (
                    f["name"].as_str().expect("name"),
                    f["sha256"].as_str().expect("sha"),
                )
            })
            .collect();
        let expected: Vec<(&str, &str)> = want
            .iter()
            .map(|f| (f.name.as_str(), f.sha256.as_str()))
            .collect();
        assert_eq!(
            got, expected,
            "seed {}: {when}: {id}:{tag} lists other files",
            self.seed
        );
        for f in files {
            let key = f["key"].as_str().expect("key");
            let resp = self
                .http
                .get(self.url(replica, &format!("/api/v1/files/{}", encode_path(key))))
                .send()
                .await
                .expect("download");
            assert_eq!(
                resp.status().as_u16(),
                200,
                "seed {}: {when}: {id}:{tag}: download of {key}",
                self.seed
            );
            let mut hasher = sha2::Sha256::new();
            let mut body = resp.bytes_stream();
            while let Some(chunk) = body.next().await {
                hasher.update(chunk.expect("download body"));
            }
            assert_eq!(
                hex::encode(hasher.finalize()),
                f["sha256"].as_str().expect("sha"),
                "seed {}: {when}: {id}:{tag}: {key} pulls other bytes",
                self.seed
            );
        }
    }

    /// Loses Redis: flushes the prefix, stops both replicas, rebuilds the index from the
    /// bucket, starts them again.
    async fn lose_redis(&mut self) {
        self.join_gc().await;
        // What the index shows now is committed, and must all come back.
        self.check_all("before losing Redis", false).await;
        let deleted = flush_redis_prefix(&format!("{}:", self.ns.prefix)).await;
        eprintln!("Redis lost: {deleted} keys flushed; replicas stopped; reindex");
        for s in &mut self.servers {
            s.kill();
        }
        let out = self.admin(&["reindex"]).output().expect("run reindex");
        eprintln!("{}", self.assert_ran("reindex", &out).trim());
        for s in &mut self.servers {
            s.restart();
        }
        self.check_all("after reindex", true).await;
    }

    async fn finish(&mut self) {
        self.join_gc().await;
        let out = self
            .admin(&["gc", "--json", "--grace", "0s"])
            .output()
            .expect("run gc");
        self.assert_ran("the final gc", &out);
        self.check_all("at the end", true).await;
        let out = self.admin(&["fsck", "--json"]).output().expect("run fsck");
        self.assert_ran("fsck after one gc pass (not clean)", &out);
        let left_unknown = self
            .versions
            .values()
            .filter(|v| v.fate == Fate::Unknown)
            .count();
        eprintln!(
            "crash test seed {} (VMREG_CRASH_SEED={} replays it): {:?}; unknown outcomes still undecided at the end: {left_unknown}",
            self.seed, self.seed, self.counts
        );
    }
}

/// The negotiation body of a version of these files.
fn push_json(id: &str, name: &str, tag: &str, files: &[Layer]) -> Value {
    let top = files
        .iter()
        .find(|f| f.kind == "image")
        .map(|f| f.name.clone())
        .unwrap_or_default();
    let mut cfg = config(id, name, &[]);
    cfg["hard_drives"][0]["file"] = json!(top);
    json!({
        "id": id, "name": name, "tag": tag, "description": format!("{tag} description"),
        "config": cfg,
        "files": files.iter().map(|f| json!({
            "name": f.name, "kind": f.kind, "size": f.data.len(), "sha256": f.sha256,
        })).collect::<Vec<_>>(),
    })
}

/// The bytes to send for a planned file. With `corrupt`, the first file (a new layer)
/// is sent with one byte changed: the same length, but not what its push declared.
fn payload(files: &[Layer], planned: &Value, corrupt: bool) -> Bytes {
    let file = files
        .iter()
        .find(|f| f.name == planned["name"])
        .expect("a planned file");
    if !(corrupt && std::ptr::eq(file, &files[0])) {
        return file.data.clone();
    }
    let mut v = file.data.to_vec();
    let mid = v.len() / 2;
    v[mid] ^= 0xff;
    Bytes::from(v)
}

async fn crash_run(lose_redis_at: Option<usize>) {
    require_s3_services();
    let seed = seed();
    eprintln!("crash test seed {seed} (set VMREG_CRASH_SEED={seed} to replay it)");
    let started = Instant::now();
    let mut run = Run::new(seed);
    for i in 0..OPERATIONS {
        if lose_redis_at == Some(i) {
            run.lose_redis().await;
        }
        run.op(i).await;
    }
    run.finish().await;
    eprintln!("crash test seed {seed}: done in {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "S3 + Redis only: VMREG_TEST_BACKEND=s3, --include-ignored (scripts/test.sh)"]
async fn replicas_killed_mid_operation_lose_nothing_committed() {
    crash_run(None).await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "S3 + Redis only: VMREG_TEST_BACKEND=s3, --include-ignored (scripts/test.sh)"]
async fn replicas_killed_mid_operation_and_a_lost_redis_rebuilt_by_reindex_lose_nothing_committed()
{
    crash_run(Some(OPERATIONS / 2)).await;
}
