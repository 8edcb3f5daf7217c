//! Operating a running `vmreg serve`: request ids, access logs, JSON logs and the
//! Prometheus metrics, on whichever backend `VMREG_TEST_BACKEND` selects.

mod common;

use std::collections::HashMap;

use common::*;

async fn scrape(url: &str) -> HashMap<String, f64> {
    let reply = reqwest::get(url).await.unwrap();
    assert_eq!(reply.status(), 200);
    assert!(reply.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    parse_metrics(&reply.text().await.unwrap())
}

/// The exposition as text, to look for what must not be in it.
async fn metrics_text(s: &Server) -> String {
    let reply = reqwest::get(s.at("/metrics")).await.unwrap();
    reply.text().await.unwrap()
}

fn value(m: &HashMap<String, f64>, series: &str) -> f64 {
    m.get(series).copied().unwrap_or(0.0)
}

fn sum_matching(m: &HashMap<String, f64>, prefix: &str, contains: &str) -> f64 {
    m.iter()
        .filter(|(k, _)| k.starts_with(prefix) && k.contains(contains))
        .map(|(_, v)| v)
        .sum()
}

#[tokio::test]
async fn request_ids_come_back_and_name_the_access_log_line_without_secrets() {
    let s = Server::start_with(&["--access-logs"]);
    let client = reqwest::Client::new();
    let given = client
        .get(s.at("/registry/vm?token=hunter2-query-secret"))
        .header("X-Request-Id", "ci-job-42.step:3")
        .header("Authorization", "Bearer sekrit-bearer-token")
        .send()
        .await
        .unwrap();
    assert_eq!(given.status(), 200);
    assert_eq!(given.headers()["x-request-id"], "ci-job-42.step:3");
    let made = client.get(s.at("/registry/status")).send().await.unwrap();
    let made_id = made.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(made_id.len(), 32);
    let forged = client
        .get(s.at("/livez"))
        .header("X-Request-Id", "x\" status=500")
        .send()
        .await
        .unwrap();
    assert_ne!(forged.headers()["x-request-id"], "x\" status=500");

    let log = wait_for_log(&s, &made_id).await;
    let line = log
        .lines()
        .find(|l| l.contains("ci-job-42.step:3") && l.contains("access"))
        .unwrap_or_else(|| panic!("no access line with the given id in:\n{log}"));
    assert!(line.contains("route=/registry/vm") && line.contains("status=200"));
    assert!(log.contains(&made_id));
    for secret in ["hunter2-query-secret", "sekrit-bearer-token", "Bearer"] {
        assert!(
            !log.contains(secret),
            "{secret} leaked into the log:\n{log}"
        );
    }
}

#[tokio::test]
async fn access_logs_are_off_unless_asked_for() {
    let s = Server::start();
    let reply = reqwest::get(s.at("/registry/status")).await.unwrap();
    let id = reply.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!s.log().contains(&id), "access line logged:\n{}", s.log());
}

#[tokio::test]
async fn json_logs_carry_the_request_id_in_the_span() {
    let s = Server::start_with(&["--log-format", "json", "--access-logs"]);
    let reply = reqwest::Client::new()
        .get(s.at("/registry/vm"))
        .header("X-Request-Id", "json-req-1")
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 200);
    let log = wait_for_log(&s, "json-req-1").await;
    let access: serde_json::Value = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["span"]["id"] == "json-req-1")
        .unwrap_or_else(|| panic!("no JSON line with the request id in:\n{log}"));
    assert_eq!(access["fields"]["status"], 200);
    assert_eq!(access["span"]["route"], "/registry/vm");
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    }
}

async fn wait_for_log(s: &Server, needle: &str) -> String {
    for _ in 0..50 {
        let log = s.log();
        if log.contains(needle) {
            return log;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("{needle} never appeared in the log:\n{}", s.log());
}

#[tokio::test]
async fn metrics_count_requests_bytes_and_store_calls_by_template() {
    let s = Server::start();
    let file = TestFile::new(
        &format!("{}.ank", new_id().replace('-', "")),
        "image",
        3 << 20,
        7,
    );
    let id = new_id();
    push(&s, &id, "metrics-probe", "t1", &[&file]).await;
    let manifest = get(&s.at(&format!("/api/v1/templates/{id}/manifest"))).await;
    let key = manifest.ok_body()["files"][0]["key"]
        .as_str()
        .expect("a file key")
        .to_string();
    assert_eq!(download(&s, &key).await.len(), file.data.len());
    assert_eq!(get(&s.at("/registry/vm/no-such-id-4711")).await.status, 404);

    // A fresh process: every counter started at zero.
    let after = scrape(&s.at("/metrics")).await;
    let version = format!(
        "vmreg_build_info{{version=\"{}\"}}",
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(value(&after, &version), 1.0);
    let pushed = value(&after, "vmreg_transferred_bytes_total{direction=\"push\"}");
    let pulled = value(&after, "vmreg_transferred_bytes_total{direction=\"pull\"}");
    assert_eq!(pushed, file.data.len() as f64);
    assert_eq!(pulled, file.data.len() as f64);
    let scrapes = "vmreg_http_requests_total{method=\"GET\",route=\"/metrics\",status=\"200\"}";
    let again = scrape(&s.at("/metrics")).await;
    assert_eq!(value(&again, scrapes), value(&after, scrapes) + 1.0);

    let uploads = "vmreg_http_requests_total{method=\"PUT\",route=\"/api/v1/push/{session}/files/{key}\",status=\"200\"}";
    assert!(value(&after, uploads) >= 1.0, "no upload counted");
    assert!(
        value(
            &after,
            "vmreg_http_request_duration_seconds_count{method=\"PUT\",route=\"/api/v1/push/{session}/files/{key}\"}"
        ) >= 1.0
    );
    // Raw paths and ids never become label values.
    let text = metrics_text(&s).await;
    assert!(!text.contains("no-such-id-4711") && !text.contains(&id) && !text.contains(&key));
    assert_eq!(
        value(&after, "vmreg_transfers_in_flight{direction=\"push\"}"),
        0.0
    );
    assert_eq!(
        value(&after, "vmreg_transfers_in_flight{direction=\"pull\"}"),
        0.0
    );
    let part_bytes = "vmreg_part_buffer_bytes{state=\"in_use\"}";
    assert_eq!(
        after.get(part_bytes),
        Some(&0.0),
        "every part's bytes released"
    );

    let (blobs, meta) = if s3_backend() {
        ("s3", "redis")
    } else {
        ("disk", "redb")
    };
    let blob_writes = format!(
        "vmreg_store_operation_duration_seconds_count{{store=\"{blobs}\",op=\"write_part\"}}"
    );
    assert!(value(&after, &blob_writes) >= 1.0, "no {blob_writes}");
    let commits = sum_matching(
        &after,
        "vmreg_store_operation_duration_seconds_count",
        &format!("store=\"{meta}\",op=\"commit\""),
    );
    assert!(commits >= 1.0, "no {meta} commit timed");
    assert!(value(&after, "vmreg_inventory{item=\"templates\"}") >= 1.0);
    assert!(value(&after, "vmreg_inventory{item=\"versions\"}") >= 1.0);
    assert!(value(&after, "vmreg_inventory{item=\"bytes\"}") >= file.data.len() as f64);
}

#[tokio::test]
async fn the_separate_metrics_listener_serves_metrics_only() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let s = Server::start_with(&["--enable-metrics", "--metrics-listen", &listen]);
    assert_eq!(get(&s.at("/registry/status")).await.status, 200);
    let m = scrape(&format!("http://{listen}/metrics")).await;
    assert!(
        value(
            &m,
            "vmreg_http_requests_total{method=\"GET\",route=\"/registry/status\",status=\"200\"}"
        ) >= 1.0
    );
    assert_eq!(
        reqwest::get(format!("http://{listen}/registry/vm"))
            .await
            .unwrap()
            .status(),
        404
    );
}

#[test]
fn healthcheck_exits_by_the_readiness_probe() {
    let s = Server::start();
    let run = |url: &str| {
        std::process::Command::new(vmreg_bin())
            .args(["healthcheck", url])
            .status()
            .unwrap()
    };
    assert!(run(&s.at("/readyz")).success());
    assert!(!run(&s.at("/no-such-probe")).success());
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    assert!(!run(&format!("http://{free}/readyz")).success());
}

#[tokio::test]
async fn refused_requests_are_counted_by_reason() {
    let s = Server::start_with(&["--enable-auth", "--root-token", "0123456789-metrics"]);
    let client = reqwest::Client::new();
    let missing = client.get(s.at("/registry/vm")).send().await.unwrap();
    assert_eq!(missing.status(), 401);
    let wrong = client
        .get(s.at("/registry/vm"))
        .basic_auth("root", Some("not-the-token"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let text = client
        .get(s.at("/metrics"))
        .basic_auth("root", Some("0123456789-metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let m = parse_metrics(&text);
    assert_eq!(
        value(&m, "vmreg_auth_failures_total{reason=\"missing\"}"),
        1.0
    );
    assert_eq!(
        value(&m, "vmreg_auth_failures_total{reason=\"bad_credentials\"}"),
        1.0
    );
    assert!(!text.contains("not-the-token") && !s.log().contains("not-the-token"));
}

#[tokio::test]
async fn oci_requests_are_counted_by_route_template() {
    let s = Server::start();
    let c = reqwest::Client::new();
    let data = b"an OCI blob".to_vec();
    let digest = format!("sha256:{}", sha256_hex(&data));
    let reply = c
        .post(s.at("/v2/secret-team/secret-vm/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 202);
    let upload = reply.headers()["location"].to_str().unwrap().to_string();
    let reply = c
        .patch(s.at(&upload))
        .header("content-range", format!("0-{}", data.len() - 1))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 202);
    let reply = c
        .put(s.at(&format!("{upload}?digest={digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 201);
    let blob = s.at(&format!("/v2/secret-team/secret-vm/blobs/{digest}"));
    assert_eq!(c.head(&blob).send().await.unwrap().status(), 200);
    let missing = s.at("/v2/secret-team/secret-vm/manifests/secret-tag");
    assert_eq!(c.get(&missing).send().await.unwrap().status(), 404);

    let m = scrape(&s.at("/metrics")).await;
    for (method, route, status) in [
        ("POST", "/v2/{name:.+}/blobs/uploads/", 202),
        ("PATCH", "/v2/{name:.+}/blobs/uploads/{id}", 202),
        ("PUT", "/v2/{name:.+}/blobs/uploads/{id}", 201),
        ("HEAD", "/v2/{name:.+}/blobs/{digest}", 200),
        ("GET", "/v2/{name:.+}/manifests/{reference}", 404),
    ] {
        let series = format!(
            "vmreg_http_requests_total{{method=\"{method}\",route=\"{route}\",status=\"{status}\"}}"
        );
        assert_eq!(value(&m, &series), 1.0, "{series}");
        let timed = format!(
            "vmreg_http_request_duration_seconds_count{{method=\"{method}\",route=\"{route}\"}}"
        );
        assert!(value(&m, &timed) >= 1.0, "{timed}");
    }
    // Repository names, tags, digests and upload ids never become label values.
    let text = metrics_text(&s).await;
    let id = upload.rsplit('/').next().unwrap();
    for raw in ["secret-team", "secret-vm", "secret-tag", &digest[7..], id] {
        assert!(!text.contains(raw), "{raw} is in the metrics");
    }
}
