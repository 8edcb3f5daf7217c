//! Hostile input, by hand: huge declared sizes, negative and overflowing offsets and
//! ranges, truncated and oversized bodies, invalid UTF-8, deeply nested JSON, and `..`,
//! NUL and percent-encoded tricks in every path and query parameter. Every answer is a
//! 4xx `FAIL` envelope (or a plain success where the input is merely odd), never a 5xx,
//! and the server survives all of it.

mod common;

use std::time::Duration;

use common::*;
use reqwest::Method;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sends a raw request and returns the status and body.
async fn raw(
    server: &Server,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (u16, Value) {
    let client = reqwest::Client::new();
    let mut req = client.request(
        Method::from_bytes(method.as_bytes()).unwrap(),
        server.at(path),
    );
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.body(body).send().await.expect("an answer");
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.unwrap_or_default();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// Asserts a 4xx `FAIL` envelope, or a success, and never a 5xx.
fn assert_handled(what: &str, status: u16, body: &Value) {
    assert!(status < 500, "{what}: {status} {body}");
    if status >= 400 && status != 405 {
        assert_eq!(body["status"], "FAIL", "{what}: {status} {body}");
        assert!(
            body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{what}: a FAIL needs a message: {body}"
        );
    }
}

fn negotiation(id: &str, size: Value) -> Value {
    json!({
        "id": id, "name": "hostile", "tag": "t1", "description": "",
        "config": config(id, "hostile", &[]),
        "files": [{"name": "disk.img", "kind": "image", "size": size}]
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_input_is_refused_cleanly_and_the_server_survives() {
    let server = Server::start();
    let pid = server.pid();

    // A real template and an open session, so the tricks reach deep code too.
    let id = new_id();
    let file = TestFile::new("disk.img", "image", 100_000, 1);
    let nvram = TestFile::new("nvram", "nvram", 4096, 2);
    push(&server, &id, "hostile", "v1", &[&file, &nvram]).await;
    let plan = send_json(
        Method::POST,
        &server.at("/api/v1/push"),
        &push_request(
            &id,
            "hostile",
            "v2",
            &[&TestFile::new("l2", "image", 10, 3)],
        ),
    )
    .await;
    let session = plan.ok_body()["session"].as_str().unwrap().to_string();

    // Declared sizes: huge, negative, overflowing, fractional, not numbers.
    for size in [
        json!(1u64 << 63),
        json!(u64::MAX),
        json!(-1),
        json!(1e30),
        json!(1.5),
        json!("12"),
        json!(null),
    ] {
        let reply = send_json(
            Method::POST,
            &server.at("/api/v1/push"),
            &negotiation(&new_id(), size.clone()),
        )
        .await;
        reply.assert_fail(400);
    }

    // Offsets: negative, overflowing, past the end, not numbers.
    let key = "l2";
    for offset in [
        "-1",
        "18446744073709551616",
        "99999999999999999999999",
        "11",
        "1e3",
        "0x10",
        "%00",
        "",
    ] {
        let path = format!("/api/v1/push/{session}/files/{key}?offset={offset}");
        let (status, body) = raw(&server, "PUT", &path, &[], b"0123456789".to_vec()).await;
        assert_handled(&format!("offset {offset:?}"), status, &body);
    }

    // Ranges: reversed, overflowing, negative, malformed.
    let stored = &file.name;
    for range in [
        "bytes=5-2",
        "bytes=-0",
        "bytes=99999999999999999999-",
        "bytes=-18446744073709551616",
        "bytes=0-18446744073709551615",
        "bytes=100000-",
        "bytes=--1",
        "bytes=0-1,5-6",
        "bits=0-1",
        "bytes=\u{e9}-",
    ] {
        let path = format!("/api/v1/files/{}", encode_path(stored));
        let (status, body) = raw(&server, "GET", &path, &[("Range", range)], vec![]).await;
        assert_handled(&format!("range {range:?}"), status, &body);
    }

    // Bodies: truncated, oversized, invalid UTF-8, deeply nested.
    let bodies: Vec<(&str, Vec<u8>)> = vec![
        ("truncated JSON", br#"{"id": "abc", "name": "x"#.to_vec()),
        ("oversized JSON", vec![b' '; 2 << 20]),
        ("invalid UTF-8", b"{\"name\": \"\xff\xfe\"}".to_vec()),
        (
            "deep arrays",
            [vec![b'['; 100_000], vec![b']'; 100_000]].concat(),
        ),
        ("deep objects", "{\"a\":".repeat(50_000).into_bytes()),
        ("NUL", b"\0\0\0".to_vec()),
    ];
    for (what, body) in &bodies {
        for path in [
            "/api/v1/push".to_string(),
            format!("/api/v1/push/{session}/commit"),
        ] {
            let (status, reply) = raw(&server, "POST", &path, &[], body.clone()).await;
            assert_handled(&format!("{what} to {path}"), status, &reply);
            assert!(status >= 400, "{what} to {path} is refused: {status}");
        }
    }

    // Path and query tricks in every parameter.
    let tricks = [
        "..",
        "%2e%2e",
        "..%2F..%2Fetc%2Fpasswd",
        "%00",
        "a%00b",
        "%ff%fe",
        "%2F",
        "%25",
        "%",
        "%zz",
        "a%20b",
        "%C0%AE%C0%AE",
        &"x".repeat(5000),
    ];
    for t in tricks {
        let paths = [
            ("GET", format!("/api/v1/files/{t}")),
            ("HEAD", format!("/api/v1/files/{t}")),
            ("GET", format!("/api/v1/push/{t}")),
            ("DELETE", format!("/api/v1/push/{t}")),
            ("POST", format!("/api/v1/push/{t}/commit")),
            ("PUT", format!("/api/v1/push/{t}/files/x?offset=0")),
            ("PUT", format!("/api/v1/push/{session}/files/{t}?offset=0")),
            ("GET", format!("/api/v1/templates/{t}/manifest")),
            ("GET", format!("/api/v1/templates/{id}/manifest?tag={t}")),
            (
                "GET",
                format!("/api/v1/templates/{id}/manifest?version={t}"),
            ),
            ("GET", format!("/registry/vm?id={t}")),
            ("GET", format!("/registry/vm?id={id}&tag={t}")),
            ("GET", format!("/registry/vm/info?id={t}")),
            ("GET", format!("/registry/v2/vm?id={t}")),
            ("DELETE", format!("/registry/vm?id={t}")),
            ("DELETE", format!("/registry/revert?id={t}")),
            ("DELETE", format!("/registry/revert?id={id}&tag={t}")),
            ("PUT", format!("/registry/vm/arch?id={t}&arch={t}")),
            ("GET", format!("/registry/status?{t}={t}")),
        ];
        for (method, path) in paths {
            let (status, body) = raw(&server, method, &path, &[], vec![]).await;
            if method == "HEAD" {
                assert!(status < 500, "HEAD {path}: {status}");
            } else {
                assert_handled(&format!("{method} {path}"), status, &body);
            }
        }
    }
    // An over-long query is refused as such.
    let (status, body) = raw(
        &server,
        "GET",
        &format!("/registry/vm?id={}", "a".repeat(9000)),
        &[],
        vec![],
    )
    .await;
    assert_eq!(status, 414, "{body}");
    assert_handled("long query", status, &body);

    // A body cut short of its Content-Length, then the connection closed.
    let addr = server.url.trim_start_matches("http://").to_string();
    let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    conn.write_all(
        format!(
            "PUT /api/v1/push/{session}/files/{key}?offset=0 HTTP/1.1\r\nHost: x\r\n\
             Content-Length: 10\r\n\r\n01234"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    conn.shutdown().await.unwrap();
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut reply)).await;

    // Nothing changed: the template is as pushed, and the server is the same process.
    get(&server.at(&format!("/api/v1/templates/{id}/manifest?tag=v1")))
        .await
        .ok_body();
    get(&server.at(&format!("/api/v1/templates/{id}/manifest?tag=v2")))
        .await
        .assert_fail(404);
    get(&server.at("/livez")).await.ok_body();
    assert_eq!(server.pid(), pid);
    assert!(
        std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "the server is alive"
    );
    assert!(
        !server.log().contains("panicked"),
        "no panic in the server log"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn names_that_display_as_others_are_refused_on_both_apis() {
    let server = Server::start();
    // U+202E shows "vm-\u{202E}gpj.exe" as "vm-exe.jpg"; the others reorder or hide text.
    let file = TestFile::new("disk.ank", "image", 10, 1);
    let cases = [
        ("name", "vm-\u{202E}gpj.exe", "U+202E"),
        ("name", "vm\u{200F}", "U+200F"),
        ("tag", "v1\u{2066}", "U+2066"),
        ("tag", "v\u{1b}[31m1", "U+001B"),
        ("file", "x\u{2067}.ank", "U+2067"),
        ("file", "x\u{200B}.ank", "U+200B"),
    ];
    for (field, value, found) in cases {
        let id = new_id();
        let mut request = push_request(&id, "plain", "v1", &[&file]);
        match field {
            "file" => request["files"][0]["name"] = json!(value),
            other => request[other] = json!(value),
        }
        let reply = send_json(Method::POST, &server.at("/api/v1/push"), &request).await;
        reply.assert_fail(400);
        let message = reply.json["message"].as_str().unwrap_or_default();
        assert!(message.contains(found), "{field} {value:?}: {message}");
    }
    let listed = get(&server.at("/registry/v2/vm")).await;
    assert_eq!(listed.ok_body(), &json!([]), "nothing was created");

    // OCI names and tags are ASCII by the spec's grammar: the same names are refused there.
    let manifest = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.empty.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}"#;
    let kind = [("content-type", "application/vnd.oci.image.manifest.v1+json")];
    for (path, code) in [
        (
            format!("/v2/{}/manifests/v1", encode_path("vm-\u{202E}gpj")),
            "NAME_INVALID",
        ),
        (
            format!("/v2/vm/manifests/{}", encode_path("v1\u{2066}")),
            "TAG_INVALID",
        ),
    ] {
        let (status, body) = raw(&server, "PUT", &path, &kind, manifest.to_vec()).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(body["errors"][0]["code"], code, "{path}: {body}");
    }
}
