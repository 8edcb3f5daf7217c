//! A differential test of the OCI Distribution API: one sequence of raw HTTP requests runs
//! against vmreg and against `docker-registry` (Debian's distribution 2.8, the reference
//! server), and the status codes, the headers the spec fixes and the error codes of the two
//! must agree. Where distribution 2.8 itself departs from the spec v1.1 (or the spec leaves
//! a choice that the two make differently) the difference is written down below with the
//! spec's words, and both sides of it are checked: the test fails if vmreg moves.
//!
//! `scripts/test.sh` installs `docker-registry` with apt; without it this test fails
//! rather than pass unchecked, so a plain `cargo test` skips it.

mod common;

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use reqwest::{header, Client, Method, StatusCode};
use serde_json::Value;

/// `docker-registry serve` on a free loopback port, filesystem storage in a temp dir;
/// killed and removed on drop.
struct Distribution {
    url: String,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Distribution {
    fn start() -> Distribution {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = format!(
            "version: 0.1\n\
             log:\n  level: error\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n  \
             maintenance:\n    uploadpurging:\n      enabled: false\n\
             http:\n  addr: 127.0.0.1:{port}\n",
            dir.path().join("data").display()
        );
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry runs (scripts/test.sh installs it)");
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            // It listens once it is ready to serve.
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            assert!(Instant::now() < deadline, "docker-registry did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        Distribution {
            url,
            child,
            _dir: dir,
        }
    }
}

impl Drop for Distribution {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What one server answered along the sequence, by `step/field`.
struct Recorder {
    base: String,
    client: Client,
    seen: BTreeMap<String, String>,
}

/// One answer: status, headers and body.
struct Answer {
    status: StatusCode,
    headers: header::HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    }

    /// The `Location`, resolved against `base` when relative.
    fn location(&self, base: &str) -> String {
        let loc = self.header("location").unwrap_or_else(|| {
            let body = String::from_utf8_lossy(&self.body);
            panic!("no Location from {base} ({}): {body}", self.status)
        });
        match loc.starts_with("http") {
            true => loc,
            false => format!("{base}{loc}"),
        }
    }
}

/// A `Location` or `Link` with the origin, the query and upload ids taken out: what the
/// two servers must agree on.
fn normalize_location(value: &str, base: &str) -> String {
    let path = value.trim_start_matches(base);
    let path = path.split('?').next().unwrap_or_default();
    match path.split_once("/blobs/uploads/") {
        Some((repo, _)) => format!("{repo}/blobs/uploads/<id>"),
        None => path.to_string(),
    }
}

impl Recorder {
    fn new(base: &str) -> Recorder {
        Recorder {
            base: base.to_string(),
            client: Client::new(),
            seen: BTreeMap::new(),
        }
    }

    fn req(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let url = match path.starts_with("http") {
            true => path.to_string(),
            false => format!("{}{path}", self.base),
        };
        self.client.request(method, url)
    }

    fn note(&mut self, step: &str, field: &str, value: impl Into<String>) {
        self.seen.insert(format!("{step}/{field}"), value.into());
    }

    /// Sends `req` and notes what the spec fixes of its answer: the status, the API
    /// version, whether a `Location` and `Docker-Upload-UUID` come and where the former
    /// points, `Docker-Content-Digest`, `Range`, `Content-Range`, the length of a
    /// successful answer and the error code of a failed one.
    async fn send(&mut self, step: &str, req: reqwest::RequestBuilder) -> Answer {
        let reply = req.send().await.unwrap();
        let answer = Answer {
            status: reply.status(),
            headers: reply.headers().clone(),
            body: reply.bytes().await.map(|b| b.to_vec()).unwrap_or_default(),
        };
        self.note(step, "status", answer.status.as_str());
        let api = answer.header("docker-distribution-api-version");
        self.note(step, "api-version", api.unwrap_or_default());
        let location = answer.header("location");
        let location = location.map(|l| normalize_location(&l, &self.base));
        self.note(step, "location", location.unwrap_or_default());
        let uuid = answer.header("docker-upload-uuid").is_some();
        self.note(step, "upload-uuid", uuid.to_string());
        for name in ["range", "content-range"] {
            self.note(step, name, answer.header(name).unwrap_or_default());
        }
        if answer.status.is_success() {
            let digest = answer.header("docker-content-digest").unwrap_or_default();
            self.note(step, "docker-content-digest", digest);
            let length = answer.header("content-length").unwrap_or_default();
            self.note(step, "content-length", length);
        } else if !answer.body.is_empty() {
            let code = serde_json::from_slice::<Value>(&answer.body)
                .ok()
                .and_then(|b| b["errors"][0]["code"].as_str().map(String::from))
                .unwrap_or_else(|| "<not a JSON error body>".into());
            self.note(step, "error", code);
        }
        answer
    }

    /// Like `send`, noting the body's digest and `Content-Type` too.
    async fn send_content(&mut self, step: &str, req: reqwest::RequestBuilder) -> Answer {
        let answer = self.send(step, req).await;
        let kind = answer.header("content-type").unwrap_or_default();
        self.note(step, "content-type", kind);
        self.note(step, "body", format!("sha256:{}", sha256_hex(&answer.body)));
        answer
    }

    /// Like `send` for a JSON answer, noting the JSON it holds instead of its length:
    /// the spec fixes the document, not its spacing (distribution ends it with a newline).
    async fn send_json(&mut self, step: &str, req: reqwest::RequestBuilder) -> Answer {
        let answer = self.send(step, req).await;
        self.seen.remove(&format!("{step}/content-length"));
        let doc: Value = serde_json::from_slice(&answer.body).unwrap_or_default();
        self.note(step, "json", doc.to_string());
        answer
    }
}

/// `location` with `?digest=` (or `&digest=`) appended.
fn with_digest(location: &str, digest: &str) -> String {
    let join = if location.contains('?') { '&' } else { '?' };
    format!("{location}{join}digest={digest}")
}

const REPO: &str = "diff/app";
const OTHER: &str = "diff/other";
const DANGLING: &str = "diff/dangling";
const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

/// The same requests, in the same order, against the server at `base`.
async fn sequence(base: &str) -> BTreeMap<String, String> {
    let mut r = Recorder::new(base);
    let v2 = format!("/v2/{REPO}");
    r.send("base", r.req(Method::GET, "/v2/")).await;

    // A chunked upload: two chunks, each followed by a status check, then a close; the
    // latest `Location` is followed every time, as the spec asks.
    let data = pseudo_random(2500, 11);
    let digest = format!("sha256:{}", sha256_hex(&data));
    let uploads = format!("{v2}/blobs/uploads/");
    let open = r.send("open", r.req(Method::POST, &uploads)).await;
    let chunk = |r: &Recorder, loc: &str, range: &str, bytes: &[u8]| {
        r.req(Method::PATCH, loc)
            .header("content-type", "application/octet-stream")
            .header("content-range", range)
            .body(bytes.to_vec())
    };
    let first = chunk(&r, &open.location(base), "0-999", &data[..1000]);
    let first = r.send("chunk1", first).await;
    let status = r
        .send("status1", r.req(Method::GET, &first.location(base)))
        .await;
    let second = chunk(&r, &status.location(base), "1000-2499", &data[1000..]);
    let second = r.send("chunk2", second).await;
    let status = r
        .send("status2", r.req(Method::GET, &second.location(base)))
        .await;
    let close = with_digest(&status.location(base), &digest);
    r.send("close", r.req(Method::PUT, &close)).await;

    // A chunk out of order, in an upload of its own.
    let open = r.send("ooo-open", r.req(Method::POST, &uploads)).await;
    let first = chunk(&r, &open.location(base), "0-999", &data[..1000]);
    let first = r.send("ooo-chunk1", first).await;
    let skip = chunk(&r, &first.location(base), "1500-2499", &data[1500..]);
    r.send("ooo-chunk-out-of-order", skip).await;

    // A monolithic close with the wrong digest is refused.
    let open = r
        .send(
            "open-bad",
            r.req(Method::POST, &format!("{v2}/blobs/uploads/")),
        )
        .await;
    let loc = open.location(base);
    let wrong = format!("sha256:{}", sha256_hex(b"something else"));
    let bad = format!(
        "{loc}{}digest={wrong}",
        if loc.contains('?') { '&' } else { '?' }
    );
    r.send(
        "close-bad-digest",
        r.req(Method::PUT, &bad).body(b"abc".to_vec()),
    )
    .await;

    // A monolithic POST with the digest.
    let config = br#"{"architecture":"arm64","os":"darwin"}"#.to_vec();
    let config_digest = format!("sha256:{}", sha256_hex(&config));
    let once = r
        .req(Method::POST, &with_digest(&uploads, &config_digest))
        .header("content-type", "application/octet-stream")
        .body(config.clone());
    let once = r.send("monolithic", once).await;
    if once.status == StatusCode::ACCEPTED {
        // No single-POST upload: the session it opened takes the blob, as clients do.
        let put = r.req(
            Method::PUT,
            &with_digest(&once.location(base), &config_digest),
        );
        let put = put.body(config.clone()).send().await.unwrap();
        assert_eq!(put.status(), StatusCode::CREATED);
    }

    // Blob reads: whole, by Range, past the end, missing.
    let blob = format!("{v2}/blobs/{digest}");
    let config_blob = format!("{v2}/blobs/{config_digest}");
    r.send("monolithic-head", r.req(Method::HEAD, &config_blob))
        .await;
    r.send("blob-head", r.req(Method::HEAD, &blob)).await;
    r.send_content("blob-get", r.req(Method::GET, &blob)).await;
    let range = |r: &Recorder, spec: &str| r.req(Method::GET, &blob).header("range", spec);
    r.send_content("blob-range", range(&r, "bytes=100-199"))
        .await;
    r.send_content("blob-range-open", range(&r, "bytes=2000-"))
        .await;
    r.send("blob-range-past-end", range(&r, "bytes=5000-"))
        .await;
    let missing = format!("{v2}/blobs/sha256:{}", sha256_hex(b"missing"));
    r.send("blob-head-missing", r.req(Method::HEAD, &missing))
        .await;
    r.send("blob-get-missing", r.req(Method::GET, &missing))
        .await;

    // Manifests by tag and by digest.
    let manifest = serde_json::to_vec_pretty(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest, "size": data.len()}],
    }))
    .unwrap();
    let manifest_digest = format!("sha256:{}", sha256_hex(&manifest));
    let put_manifest = |r: &Recorder, reference: &str, body: &[u8]| {
        r.req(Method::PUT, &format!("{v2}/manifests/{reference}"))
            .header("content-type", MANIFEST_TYPE)
            .body(body.to_vec())
    };
    for tag in ["v1", "v2", "v3"] {
        r.send(
            &format!("manifest-put-{tag}"),
            put_manifest(&r, tag, &manifest),
        )
        .await;
    }
    let accept = |r: &Recorder, method: Method, reference: &str| {
        r.req(method, &format!("{v2}/manifests/{reference}"))
            .header("accept", MANIFEST_TYPE)
    };
    r.send_content("manifest-get-tag", accept(&r, Method::GET, "v1"))
        .await;
    r.send_content(
        "manifest-get-digest",
        accept(&r, Method::GET, &manifest_digest),
    )
    .await;
    r.send_content("manifest-head-tag", accept(&r, Method::HEAD, "v1"))
        .await;
    r.send_content(
        "manifest-head-digest",
        accept(&r, Method::HEAD, &manifest_digest),
    )
    .await;
    r.send("manifest-get-unknown-tag", accept(&r, Method::GET, "nope"))
        .await;
    let unknown = format!("sha256:{}", sha256_hex(b"no manifest"));
    r.send(
        "manifest-get-unknown-digest",
        accept(&r, Method::GET, &unknown),
    )
    .await;
    // A reference no manifest can have names none: 404 MANIFEST_UNKNOWN, not TAG_INVALID.
    r.send(
        "manifest-get-invalid-tag",
        accept(&r, Method::GET, ".INVALID_MANIFEST_NAME"),
    )
    .await;
    r.send(
        "manifest-head-invalid-tag",
        accept(&r, Method::HEAD, ".INVALID_MANIFEST_NAME"),
    )
    .await;
    let dangling = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": unknown, "size": 3},
        "layers": [],
    }))
    .unwrap();
    let dangling = r
        .req(Method::PUT, &format!("/v2/{DANGLING}/manifests/v1"))
        .header("content-type", MANIFEST_TYPE)
        .body(dangling);
    r.send("manifest-put-dangling", dangling).await;

    // Tags, a page at a time.
    r.send_json("tags", r.req(Method::GET, &format!("{v2}/tags/list")))
        .await;
    let page = r
        .send_json(
            "tags-page1",
            r.req(Method::GET, &format!("{v2}/tags/list?n=2")),
        )
        .await;
    let link = page.header("link").unwrap_or_default();
    r.note(
        "tags-page1",
        "link",
        normalize_location(&link.replace(['<', '>'], ""), base),
    );
    r.send_json(
        "tags-page2",
        r.req(Method::GET, &format!("{v2}/tags/list?n=2&last=v2")),
    )
    .await;

    // A mount from another repository, and one of a blob the registry lacks.
    let mount = |r: &Recorder, d: &str| {
        r.req(
            Method::POST,
            &format!("/v2/{OTHER}/blobs/uploads/?mount={d}&from={REPO}"),
        )
    };
    r.send("mount", mount(&r, &digest)).await;
    r.send(
        "mounted-head",
        r.req(Method::HEAD, &format!("/v2/{OTHER}/blobs/{digest}")),
    )
    .await;
    let fallback = r.send("mount-missing", mount(&r, &unknown)).await;
    // Cancel the upload the refused mount opened; then it is gone.
    let loc = fallback.location(base);
    r.send("cancel", r.req(Method::DELETE, &loc)).await;
    r.send("status-cancelled", r.req(Method::GET, &loc)).await;

    // The referrers API (spec v1.1).
    r.send(
        "referrers",
        r.req(Method::GET, &format!("{v2}/referrers/{manifest_digest}")),
    )
    .await;

    // Deletes: a tag, the manifest by digest, a blob.
    r.send(
        "manifest-delete-tag",
        r.req(Method::DELETE, &format!("{v2}/manifests/v3")),
    )
    .await;
    r.send(
        "manifest-delete-digest",
        r.req(Method::DELETE, &format!("{v2}/manifests/{manifest_digest}")),
    )
    .await;
    r.send(
        "manifest-get-deleted",
        accept(&r, Method::GET, &manifest_digest),
    )
    .await;
    r.send("blob-delete", r.req(Method::DELETE, &blob)).await;
    r.send("blob-get-deleted", r.req(Method::GET, &blob)).await;
    r.seen
}

#[tokio::test]
#[ignore = "needs docker-registry: scripts/test.sh installs it"]
async fn vmreg_answers_like_the_reference_registry() {
    let reference = Distribution::start();
    let vmreg = Server::start();
    let theirs = sequence(&reference.url).await;
    let ours = sequence(vmreg.at("").trim_end_matches('/')).await;
    let mut report = String::new();
    let keys: std::collections::BTreeSet<&String> = theirs.keys().chain(ours.keys()).collect();
    for key in keys {
        let their = theirs.get(key).map_or("", String::as_str);
        let our = ours.get(key).map_or("", String::as_str);
        let agreed = match known(key) {
            Some((want_theirs, want_ours)) => {
                matches(their, want_theirs) && matches(our, want_ours)
            }
            None => their == our,
        };
        if !agreed {
            let want = known(key).map_or(String::new(), |k| format!(" (known: {k:?})"));
            report.push_str(&format!(
                "{key}: distribution {their:?}, vmreg {our:?}{want}\n"
            ));
        }
    }
    assert!(report.is_empty(), "{report}");
}

/// A known value matches `want`, or any non-empty value when `want` is `<any>`.
fn matches(value: &str, want: &str) -> bool {
    match want {
        ANY => !value.is_empty(),
        _ => value == want,
    }
}

const ANY: &str = "<any>";
const ALL_TAGS: &str = r#"{"name":"diff/app","tags":["v1","v2","v3"]}"#;

/// Where the two may differ, by `step/field`: distribution 2.8's value and vmreg's, each
/// checked. Every entry says why, in the spec's (v1.1) words.
fn known(key: &str) -> Option<(&'static str, &'static str)> {
    let (step, field) = key.split_once('/')?;
    let pair = match (step, field) {
        // "If a chunk is uploaded out of order, the registry MUST respond with a 416
        // Requested Range Not Satisfiable code." Distribution 2.8 ignores the bare
        // `start-end` Content-Range and appends the chunk where the upload ends.
        ("ooo-chunk-out-of-order", "status") => ("202", "416"),
        ("ooo-chunk-out-of-order", "location") => ("/v2/diff/app/blobs/uploads/<id>", ""),
        ("ooo-chunk-out-of-order", "upload-uuid") => ("true", "false"),
        ("ooo-chunk-out-of-order", "range") => ("0-1999", "0-999"),
        ("ooo-chunk-out-of-order", "content-length") => ("0", ""),
        ("ooo-chunk-out-of-order", "error") => ("", "BLOB_UPLOAD_INVALID"),
        // "…a single POST request… the registry MAY… respond with 201 Created"; a registry
        // without single-POST uploads answers 202 and a Location, as distribution 2.8
        // does (the test then PUTs the blob there, as a client would).
        ("monolithic", "status") => ("202", "201"),
        ("monolithic", "location") => ("/v2/diff/app/blobs/uploads/<id>", ANY),
        ("monolithic", "upload-uuid") => ("true", "false"),
        ("monolithic", "range") => ("0-0", ""),
        ("monolithic", "docker-content-digest") => ("", ANY),
        // "The registry MAY reject a manifest of any type uploaded to a manifest endpoint
        // if it references manifests or blobs that do not exist in the registry": vmreg
        // does not, so a VM's layers may be pushed in any order.
        ("manifest-put-dangling", "status") => ("400", "201"),
        ("manifest-put-dangling", "error") => ("MANIFEST_BLOB_UNKNOWN", ""),
        ("manifest-put-dangling", "location") => ("", ANY),
        ("manifest-put-dangling", "docker-content-digest") => ("", ANY),
        ("manifest-put-dangling", "content-length") => ("", "0"),
        // "`/v2/<name>/tags/list?n=<integer>`… the registry MUST return up to <int> tags"
        // and a `Link` to the next page: distribution 2.8 ignores `n` and `last`.
        ("tags-page1", "json") => (ALL_TAGS, r#"{"name":"diff/app","tags":["v1","v2"]}"#),
        ("tags-page2", "json") => (ALL_TAGS, r#"{"name":"diff/app","tags":["v3"]}"#),
        ("tags-page1", "link") => ("", "/v2/diff/app/tags/list"),
        // "To delete a tag… DELETE /v2/<name>/manifests/<tag>… 202 Accepted"; distribution
        // 2.8 deletes by digest only (400 DIGEST_INVALID for a tag).
        ("manifest-delete-tag", "status") => ("400", "202"),
        ("manifest-delete-tag", "error") => ("DIGEST_INVALID", ""),
        ("manifest-delete-tag", "content-length") => ("", "0"),
        // "GET /v2/<name>/referrers/<digest>… the registry MUST respond with a 200 OK"
        // (spec v1.1): distribution 2.8 predates the referrers API.
        ("referrers", "status") => ("404", "200"),
        ("referrers", "error") => ("<not a JSON error body>", ""),
        ("referrers", "content-length") => ("", ANY),
        // A reference no manifest can have: distribution's router matches no route (a
        // plain-text 404); the conformance suite wants the spec's 404 MANIFEST_UNKNOWN body.
        ("manifest-get-invalid-tag", "error") => ("<not a JSON error body>", "MANIFEST_UNKNOWN"),
        // The spec's answer to a cancel is a bare 204; distribution adds its upload id.
        ("cancel", "upload-uuid") => ("true", "false"),
        _ => return None,
    };
    Some(pair)
}
