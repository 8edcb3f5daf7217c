//! Pull bookkeeping and retention against the real binary, on the pass's backend
//! (embedded, or S3 + Redis): pulls are written by a periodic flush, not by the request,
//! and a clean shutdown loses none of them.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// The `/registry/v2/vm` row of template `id`.
async fn row(s: &Server, id: &str) -> Value {
    let list = get(&s.at("/registry/v2/vm")).await;
    list.ok_body()
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == id)
        .cloned()
        .unwrap_or_else(|| panic!("{id} not listed: {list:?}"))
}

async fn last_pull(s: &Server, id: &str) -> u64 {
    row(s, id).await["last_pull"].as_u64().unwrap()
}

/// Pulls a version's manifest as `vmreg registry pull` does.
async fn pull(s: &Server, id: &str, tag: &str) {
    get(&s.at(&format!(
        "/api/v1/templates/{id}/manifest?tag={}",
        encode_query(tag)
    )))
    .await
    .ok_body();
}

#[tokio::test]
async fn a_pull_is_recorded_by_the_next_flush() {
    let s = Server::start_with(&["--pull-flush-interval", "300ms"]);
    let id = new_id();
    let layer = unique_image(1000, 1);
    push(&s, &id, "flushed", "v1", &[&layer]).await;
    assert_eq!(last_pull(&s, &id).await, 0);
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    pull(&s, &id, "v1").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while last_pull(&s, &id).await == 0 {
        assert!(Instant::now() < deadline, "the pull was never written");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(last_pull(&s, &id).await >= before);
}

#[tokio::test]
async fn a_pull_is_not_written_by_its_request_and_a_clean_shutdown_writes_it() {
    // No periodic flush within the test: whatever is written, the request or the shutdown wrote.
    let mut s = Server::start_with(&["--pull-flush-interval", "1h"]);
    let id = new_id();
    let layer = unique_image(1000, 2);
    push(&s, &id, "deferred", "v1", &[&layer]).await;
    pull(&s, &id, "v1").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        last_pull(&s, &id).await,
        0,
        "the manifest GET wrote its pull on the request path"
    );
    s.terminate();
    s.restart();
    assert!(
        last_pull(&s, &id).await > 0,
        "the pull noted before SIGTERM was lost"
    );
}

/// Each template's tags, oldest first, from `/registry/v2/vm`.
async fn tags(s: &Server) -> std::collections::BTreeMap<String, Vec<String>> {
    let list = get(&s.at("/registry/v2/vm")).await;
    list.ok_body()
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let tags = t["versions"]
                .as_array()
                .unwrap()
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    assert_eq!(v["number"], i, "numbers are dense: {t}");
                    v["tag"].as_str().unwrap().to_string()
                })
                .collect();
            (t["name"].as_str().unwrap().to_string(), tags)
        })
        .collect()
}

/// `POST /admin/api/v1/retention` with `body`, as `authorization`.
async fn retention(s: &Server, body: Value, authorization: Option<&str>) -> Reply {
    let req = request(
        reqwest::Method::POST,
        &s.at("/admin/api/v1/retention"),
        Some(serde_json::to_vec(&body).unwrap()),
        authorization,
    );
    send_request(req).await
}

/// The (template, tag) pairs of a retention report.
fn removed(report: &Value) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = report["removed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["template"].as_str().unwrap().to_string(),
                r["tag"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    out.sort();
    out
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(t, g)| (t.to_string(), g.to_string()))
        .collect()
}

/// Runs `vmreg admin <args>` on the server's stores; exit code and stdout.
fn admin(ns: &Namespace, args: &[&str]) -> (i32, String) {
    let out = std::process::Command::new(vmreg_bin())
        .arg("admin")
        .args(args)
        .args(ns.store_args())
        .output()
        .expect("run vmreg admin");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test]
async fn retention_removes_exactly_what_the_policy_says_and_keeps_the_latest() {
    let mut s = Server::start_with(&["--pull-flush-interval", "200ms", "--gc-interval", "0"]);
    let base = unique_image(3000, 10);
    let (a, d, c) = (new_id(), new_id(), new_id());
    let mut layers = Vec::new();
    for i in 0..4 {
        layers.push(unique_image(2000 + i, 20 + i as u64));
    }
    for (i, layer) in layers.iter().enumerate() {
        push(&s, &a, "alpha", &format!("a{i}"), &[layer, &base]).await;
    }
    let d_layers: Vec<TestFile> = (0..3)
        .map(|i| unique_image(1500 + i, 40 + i as u64))
        .collect();
    for (i, layer) in d_layers.iter().enumerate() {
        push(&s, &d, "delta", &format!("d{i}"), &[layer, &base]).await;
    }
    push(&s, &c, "charlie", "c0", &[&base]).await;
    // Everything pushed at least 3 s ago; then a1 is pulled, so only it is recently used.
    tokio::time::sleep(Duration::from_secs(3)).await;
    pull(&s, &a, "a1").await;
    tokio::time::sleep(Duration::from_millis(600)).await;

    let before = tags(&s).await;
    let policy = serde_json::json!({"keep_last": 1, "unused_for": "2s"});
    let mut dry = policy.clone();
    dry["dry_run"] = true.into();
    let report = retention(&s, dry, None).await;
    let want = pairs(&[
        ("alpha", "a0"),
        ("alpha", "a2"),
        ("delta", "d0"),
        ("delta", "d1"),
    ]);
    assert_eq!(removed(report.ok_body()), want, "{report:?}");
    assert_eq!(report.ok_body()["dry_run"], true);
    assert_eq!(tags(&s).await, before, "a dry run changes nothing");

    let report = retention(&s, policy, None).await;
    assert_eq!(removed(report.ok_body()), want, "{report:?}");
    // The four removed tags' own layers went (the shared base stays), and count as
    // retention's removals; the dry run counted nothing.
    let gone = [&layers[0], &layers[2], &d_layers[0], &d_layers[1]];
    let bytes: usize = gone.iter().map(|l| l.data.len()).sum();
    assert_eq!(
        (&report.ok_body()["objects"], &report.ok_body()["bytes"]),
        (&Value::from(4), &Value::from(bytes)),
        "{report:?}"
    );
    let metrics = reqwest::get(s.at("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "vmreg_gc_runs_total{kind=\"retention\"} 1".to_string(),
        "vmreg_gc_objects_removed_total{kind=\"retention\"} 4".to_string(),
        format!("vmreg_gc_bytes_removed_total{{kind=\"retention\"}} {bytes}"),
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in {metrics}");
    }
    let after = tags(&s).await;
    assert_eq!(after["alpha"], ["a1", "a3"]);
    assert_eq!(after["delta"], ["d2"]);
    assert_eq!(after["charlie"], ["c0"], "the latest tag stays");
    // The renumbered versions pull, byte for byte.
    let m = get(&s.at(&format!("/api/v1/templates/{a}/manifest?version=1"))).await;
    assert_eq!(m.ok_body()["tag"], "a3");
    for (file, want) in m.ok_body()["files"]
        .as_array()
        .unwrap()
        .iter()
        .zip([&layers[3], &base])
    {
        assert_eq!(download(&s, file["key"].as_str().unwrap()).await, want.data);
    }

    // Bad input: a FAIL with a 4xx, and nothing removed.
    for (body, status) in [
        (serde_json::json!({"keep_last": -1}), 400),
        (serde_json::json!({"unused_for": "soon"}), 400),
        (serde_json::json!({"keep_last": 1, "bogus": true}), 400),
        (serde_json::json!({}), 400),
        (serde_json::json!({"include_latest": true}), 400),
        (serde_json::json!({"keep_last": 0, "template": "nope"}), 404),
    ] {
        retention(&s, body, None).await.assert_fail(status);
    }
    assert_eq!(tags(&s).await, after);

    // The command line: the latest tag only with --include-latest, dry runs change nothing.
    if !s3_backend() {
        s.terminate();
    }
    let cli = |extra: &[&str]| {
        let mut args = vec![
            "retention",
            "--json",
            "--dry-run",
            "--template",
            "charlie",
            "--keep-last",
            "0",
        ];
        args.extend_from_slice(extra);
        let (code, out) = admin(&s.ns, &args);
        assert_eq!(code, 0, "{out}");
        removed(&serde_json::from_str(&out).unwrap())
    };
    assert_eq!(cli(&[]), Vec::<(String, String)>::new());
    assert_eq!(cli(&["--include-latest"]), pairs(&[("charlie", "c0")]));
    let (code, out) = admin(&s.ns, &["fsck", "--json"]);
    assert_eq!(code, 0, "fsck is clean after retention: {out}");
    // The bucket alone gives the same tags and numbers back.
    let (code, out) = admin(&s.ns, &["reindex", "--force"]);
    assert_eq!(code, 0, "{out}");
    if !s3_backend() {
        s.restart();
    }
    assert_eq!(tags(&s).await, after);
}

#[tokio::test]
async fn the_retention_endpoint_needs_its_permission() {
    let token = "retention-root-token-0123";
    let s = Server::start_with(&[
        "--enable-auth",
        "--root-token",
        token,
        "--enable-api-keys",
        "--enable-authorization",
    ]);
    let root = common::auth::basic("root", token);
    let id = new_id();
    push_as(&s, &root, &id, "guarded", &["g0", "g1"]).await;
    for (group, perms) in [
        ("ops", vec!["apply_retention"]),
        ("others", vec!["revert", "delete_vm", "list_vms"]),
    ] {
        let put = common::auth::send_json_as(
            reqwest::Method::PUT,
            &s.at(&format!("/admin/api/v1/permission/group/{group}")),
            &serde_json::json!({ "permissions": perms }),
            Some(&root),
        )
        .await;
        assert_eq!(put.status, 200, "{put:?}");
    }
    let key = common::auth::create_key(&s.url, &root, "other", 600, &["others"]).await;
    let other = common::auth::session(&s.url, "other", &key).await;
    let key = common::auth::create_key(&s.url, &root, "op", 600, &["ops"]).await;
    let op = common::auth::session(&s.url, "op", &key).await;
    let body = serde_json::json!({"keep_last": 1});
    let refused = retention(&s, body.clone(), Some(&other)).await;
    refused.assert_fail(403);
    retention(&s, body.clone(), None).await.assert_fail(401);
    let mut dry = body.clone();
    dry["dry_run"] = true.into();
    let allowed = retention(&s, dry, Some(&op)).await;
    assert_eq!(removed(allowed.ok_body()), pairs(&[("guarded", "g0")]));
    let allowed = retention(&s, body, Some(&root)).await;
    assert_eq!(removed(allowed.ok_body()), pairs(&[("guarded", "g0")]));
}

/// Pushes one-layer tags of a template as `authorization`.
async fn push_as(s: &Server, authorization: &str, id: &str, name: &str, tags: &[&str]) {
    for (i, tag) in tags.iter().enumerate() {
        let layer = unique_image(1000 + i, 60 + i as u64);
        try_push_as(&s.url, Some(authorization), id, name, tag, &[&layer])
            .await
            .ok_body();
    }
}

#[tokio::test]
async fn the_periodic_collection_applies_the_configured_policies() {
    let ns = Namespace::new();
    let file = ns.dir.join("retention.yaml");
    std::fs::write(&file, "retention_templates:\n  exempt: {}\n").unwrap();
    let cfg = file.display().to_string();
    let s = Server::start_in(
        ns,
        &[
            "--gc-interval",
            "1s",
            "--retention-keep-last",
            "1",
            "--config",
            &cfg,
        ],
    );
    let (p, e) = (new_id(), new_id());
    for i in 0..3 {
        let layer = unique_image(1000 + i, 80 + i as u64);
        push(&s, &p, "pruned", &format!("p{i}"), &[&layer]).await;
        push(&s, &e, "exempt", &format!("e{i}"), &[&layer]).await;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while tags(&s).await["pruned"].len() > 1 {
        assert!(
            Instant::now() < deadline,
            "the periodic run never applied the policy"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let now = tags(&s).await;
    assert_eq!(now["pruned"], ["p2"]);
    assert_eq!(
        now["exempt"],
        ["e0", "e1", "e2"],
        "an empty override exempts"
    );
}
