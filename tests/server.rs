//! Black-box tests of `vmreg serve`: every endpoint, its JSON shape, its errors, the
//! transfer protocol and the invariants, against the real binary.

mod common;

use common::*;
use reqwest::Method;
use serde_json::{json, Value};

fn obj_keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
    k.sort();
    k
}

fn sorted(keys: &[&str]) -> Vec<String> {
    let mut k: Vec<String> = keys.iter().map(|s| s.to_string()).collect();
    k.sort();
    k
}

/// A template with three tags sharing a base layer, as in the vendor's example.
struct Fixture {
    id: String,
    name: String,
    base: TestFile,
    top: TestFile,
    nvram: TestFile,
}

impl Fixture {
    async fn push(server: &Server) -> Fixture {
        let f = Fixture {
            id: new_id(),
            name: format!("12.4-{}", &new_id()[..8]),
            base: TestFile::new(
                &format!("{}.ank", &new_id().replace('-', "")),
                "image",
                300_000,
                1,
            ),
            top: TestFile::new(
                &format!("{}.ank", &new_id().replace('-', "")),
                "image",
                70_000,
                2,
            ),
            nvram: TestFile::new("nvram", "nvram", 4096, 3),
        };
        push(server, &f.id, &f.name, "vanilla", &[&f.base, &f.nvram]).await;
        push(
            server,
            &f.id,
            &f.name,
            "vanilla+port-forward-22",
            &[&f.base, &f.nvram],
        )
        .await;
        push(
            server,
            &f.id,
            &f.name,
            "vanilla+port-forward-22+brew-git",
            &[&f.top, &f.base, &f.nvram],
        )
        .await;
        f
    }

    fn v2_size(&self) -> u64 {
        (self.base.data.len() + self.nvram.data.len()) as u64
    }

    fn v3_size(&self) -> u64 {
        (self.top.data.len() + self.base.data.len() + self.nvram.data.len()) as u64
    }
}

#[tokio::test]
async fn status_probes_and_disk() {
    let s = Server::start();
    let status = get(&s.at("/registry/status")).await;
    let body = status.ok_body();
    assert_eq!(body["status"], "Running");
    let version = body["version"].as_str().expect("a version");
    let release: Vec<u64> = version
        .split('-')
        .next()
        .unwrap()
        .split('.')
        .map(|n| n.parse().expect("numeric release"))
        .collect();
    assert!(
        release.len() == 3 && release >= vec![1, 7, 0],
        "a vendor client needs at least 1.7.0 (the v2 API): {version}"
    );
    assert_eq!(body["vmreg_version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(
        obj_keys(&status.json),
        sorted(&["status", "body", "message"])
    );

    get(&s.at("/livez")).await.ok_body();
    get(&s.at("/readyz")).await.ok_body();

    let disk = get(&s.at("/registry/disk")).await;
    let d = disk.ok_body();
    assert_eq!(obj_keys(d), sorted(&["free", "total"]));
    assert!(d["total"].as_u64().unwrap() >= d["free"].as_u64().unwrap());
    assert!(d["total"].as_u64().unwrap() > 0);

    get(&s.at("/no/such/route")).await.assert_fail(404);
    call(Method::POST, &s.at("/registry/status"), None)
        .await
        .assert_fail(405);
    call(Method::PATCH, &s.at("/registry/vm"), None)
        .await
        .assert_fail(405);
}

#[tokio::test]
async fn list_and_get_have_the_vendor_shapes() {
    let s = Server::start();
    assert_eq!(get(&s.at("/registry/vm")).await.ok_body(), &json!([]));
    let f = Fixture::push(&s).await;

    let v1 = get(&s.at("/registry/vm")).await;
    assert_eq!(v1.ok_body(), &json!([{ f.id.clone(): f.name.clone() }]));

    let v2 = get(&s.at("/registry/v2/vm")).await;
    let list = v2.ok_body().as_array().unwrap();
    assert_eq!(list.len(), 1);
    let t = &list[0];
    for field in [
        "id",
        "name",
        "size",
        "arch",
        "creation_date",
        "last_push",
        "last_pull",
    ] {
        assert!(t.get(field).is_some(), "v2 list lacks {field}: {t}");
    }
    assert_eq!(t["id"], f.id.as_str());
    assert_eq!(t["name"], f.name.as_str());
    assert_eq!(
        t["size"],
        f.v3_size(),
        "a shared layer counts once in the template size"
    );
    assert_eq!(t["last_pull"], 0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(t["creation_date"].as_u64().unwrap().abs_diff(now) < 120);
    assert!(t["last_push"].as_u64().unwrap() >= t["creation_date"].as_u64().unwrap());
    assert_eq!(t["arch"], "amd64", "an Intel configuration is amd64");
    assert_eq!(t["version_count"], 3);
    let rows: Vec<(u64, &str, u64)> = t["versions"]
        .as_array()
        .expect("versions is an array, as the seed's Template format says")
        .iter()
        .map(|v| {
            (
                v["number"].as_u64().unwrap(),
                v["tag"].as_str().unwrap(),
                v["size"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            (0, "vanilla", f.v2_size()),
            (1, "vanilla+port-forward-22", f.v2_size()),
            (2, "vanilla+port-forward-22+brew-git", f.v3_size())
        ]
    );

    for (path, v1) in [("/registry/vm", true), ("/registry/v2/vm", false)] {
        let one = get(&s.at(&format!("{path}?id={}", f.id))).await;
        let body = one.ok_body();
        assert_eq!(body["id"], f.id.as_str());
        assert_eq!(body["name"], f.name.as_str());
        assert_eq!(body["size"], f.v3_size());
        // The seed: v1 shows the template's arch (amd64 when never set), v2 no arch at all.
        assert_eq!(body.get("arch"), v1.then_some(&json!("amd64")));
        let versions = body["versions"].as_array().unwrap();
        assert_eq!(versions.len(), 3);
        let expected_tags = [
            "vanilla",
            "vanilla+port-forward-22",
            "vanilla+port-forward-22+brew-git",
        ];
        for (i, v) in versions.iter().enumerate() {
            let mut keys = vec![
                "number",
                "tag",
                "config_file",
                "nvram",
                "images",
                "state_files",
                "description",
                "state_file",
                "size",
            ];
            if v1 {
                keys.push("arch");
                assert_eq!(v["arch"], "");
            }
            assert_eq!(obj_keys(v), sorted(&keys));
            assert_eq!(v["number"], i);
            assert_eq!(v["tag"], expected_tags[i]);
            assert_eq!(v["config_file"], format!("{}.yaml", f.id));
            assert_eq!(v["nvram"], "nvram");
            assert_eq!(
                v["state_files"],
                if v1 { json!([]) } else { Value::Null },
                "the seed: [] in v1, null in v2 when there are none"
            );
            assert_eq!(v["state_file"], "");
            assert_eq!(
                v["description"],
                format!("{} description", expected_tags[i])
            );
        }
        assert_eq!(versions[0]["images"], json!([f.base.name]));
        assert_eq!(versions[0]["size"], f.v2_size());
        assert_eq!(
            versions[2]["images"],
            json!([f.top.name, f.base.name]),
            "layers top first"
        );
        assert_eq!(versions[2]["size"], f.v3_size());
    }
}

#[tokio::test]
async fn vm_info_returns_the_configuration() {
    let s = Server::start();
    let f = Fixture::push(&s).await;
    let latest = get(&s.at(&format!("/registry/vm/info?id={}", f.id))).await;
    let cfg = latest.ok_body();
    assert_eq!(cfg["uuid"], f.id.as_str());
    assert_eq!(cfg["name"], f.name.as_str());
    assert_eq!(cfg["hard_drives"][0]["file"], f.top.name.as_str());
    assert_eq!(cfg["cpu"]["cores"], 2);
    for field in [
        "ram",
        "hard_drives",
        "usb",
        "uuid",
        "network_cards",
        "firmware",
        "state_file",
        "nvram",
        "version",
        "cpu",
        "display",
        "name",
    ] {
        assert!(cfg.get(field).is_some(), "vm/info lacks {field}");
    }
    let by_tag = get(&s.at(&format!("/registry/vm/info?id={}&tag=vanilla", f.id))).await;
    assert_eq!(
        by_tag.ok_body()["hard_drives"][0]["file"],
        f.base.name.as_str()
    );
    let by_number = get(&s.at(&format!("/registry/vm/info?id={}&version=2", f.id))).await;
    assert_eq!(
        by_number.ok_body()["hard_drives"][0]["file"],
        f.top.name.as_str()
    );
    // The seed's examples call the version number `number`.
    let by_number = get(&s.at(&format!("/registry/vm/info?id={}&number=0", f.id))).await;
    assert_eq!(
        by_number.ok_body()["hard_drives"][0]["file"],
        f.base.name.as_str()
    );
    get(&s.at(&format!("/registry/vm/info?id={}&number=9", f.id)))
        .await
        .assert_fail(404);

    get(&s.at(&format!("/registry/vm/info?id={}&tag=nope", f.id)))
        .await
        .assert_fail(404);
    get(&s.at(&format!("/registry/vm/info?id={}&version=9", f.id)))
        .await
        .assert_fail(404);
    get(&s.at(&format!("/registry/vm/info?id={}&version=x", f.id)))
        .await
        .assert_fail(400);
    get(&s.at(&format!("/registry/vm/info?id={}", new_id())))
        .await
        .assert_fail(404);
    get(&s.at("/registry/vm/info?id=not-a-uuid"))
        .await
        .assert_fail(400);
    get(&s.at("/registry/vm/info")).await.assert_fail(400);
}

#[tokio::test]
async fn arch_accepts_only_arm64_or_amd64() {
    let s = Server::start();
    let f = Fixture::push(&s).await;
    let url = s.at("/registry/vm/arch");
    send_json(Method::PUT, &url, &json!({"id": f.id, "arch": "arm64"}))
        .await
        .ok_body();
    assert_eq!(
        get(&s.at(&format!("/registry/vm?id={}", f.id)))
            .await
            .ok_body()["arch"],
        "arm64"
    );
    assert_eq!(
        get(&s.at("/registry/v2/vm")).await.ok_body()[0]["arch"],
        "arm64"
    );

    send_json(Method::PUT, &url, &json!({"id": f.id, "arch": "x86"}))
        .await
        .assert_fail(400);
    send_json(Method::PUT, &url, &json!({"id": new_id(), "arch": "amd64"}))
        .await
        .assert_fail(404);
    send_json(Method::PUT, &url, &json!({"arch": "amd64"}))
        .await
        .assert_fail(400);
    call(Method::PUT, &url, Some(b"{not json".to_vec()))
        .await
        .assert_fail(400);
    call(Method::PUT, &url, None).await.assert_fail(400);
    assert_eq!(
        get(&s.at(&format!("/registry/vm?id={}", f.id)))
            .await
            .ok_body()["arch"],
        "arm64",
        "failed requests change nothing"
    );
}

async fn tags(s: &Server, id: &str) -> Vec<String> {
    let body = get(&s.at(&format!("/registry/vm?id={id}"))).await;
    body.ok_body()["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["tag"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn revert_in_all_its_forms() {
    let s = Server::start();
    let delete = |url: String, body: Option<Value>| async move {
        call(
            Method::DELETE,
            &url,
            body.map(|b| serde_json::to_vec(&b).unwrap()),
        )
        .await
    };

    // Latest.
    let f = Fixture::push(&s).await;
    delete(s.at(&format!("/registry/revert?id={}", f.id)), None)
        .await
        .ok_body();
    assert_eq!(
        tags(&s, &f.id).await,
        ["vanilla", "vanilla+port-forward-22"]
    );
    assert_eq!(
        get(&s.at(&format!("/registry/vm?id={}", f.id)))
            .await
            .ok_body()["size"],
        f.v2_size(),
        "the top layer left with its tag"
    );

    // Tag with '+' in the query, literal and encoded.
    let f = Fixture::push(&s).await;
    delete(
        s.at(&format!(
            "/registry/revert?id={}&tag=vanilla+port-forward-22",
            f.id
        )),
        None,
    )
    .await
    .ok_body();
    assert_eq!(
        tags(&s, &f.id).await,
        ["vanilla", "vanilla+port-forward-22"]
    );
    let f = Fixture::push(&s).await;
    delete(
        s.at(&format!(
            "/registry/revert?id={}&tag={}",
            f.id,
            encode_query("vanilla+port-forward-22")
        )),
        None,
    )
    .await
    .ok_body();
    assert_eq!(
        tags(&s, &f.id).await,
        ["vanilla", "vanilla+port-forward-22"]
    );

    // Tag in the JSON body.
    let f = Fixture::push(&s).await;
    delete(
        s.at(&format!("/registry/revert?id={}", f.id)),
        Some(json!({"tag": "vanilla"})),
    )
    .await
    .ok_body();
    assert_eq!(tags(&s, &f.id).await, ["vanilla"]);

    // number= and version=.
    let f = Fixture::push(&s).await;
    delete(
        s.at(&format!("/registry/revert?id={}&number=1", f.id)),
        None,
    )
    .await
    .ok_body();
    assert_eq!(
        tags(&s, &f.id).await,
        ["vanilla", "vanilla+port-forward-22"]
    );
    delete(
        s.at(&format!("/registry/revert?id={}&version=0", f.id)),
        None,
    )
    .await
    .ok_body();
    assert_eq!(tags(&s, &f.id).await, ["vanilla"]);
    let f = Fixture::push(&s).await;
    delete(
        s.at(&format!("/registry/revert?id={}", f.id)),
        Some(json!({"number": 0})),
    )
    .await
    .ok_body();
    assert_eq!(tags(&s, &f.id).await, ["vanilla"]);

    // Errors change nothing.
    let f = Fixture::push(&s).await;
    delete(
        s.at(&format!("/registry/revert?id={}&tag=nope", f.id)),
        None,
    )
    .await
    .assert_fail(404);
    delete(
        s.at(&format!("/registry/revert?id={}&number=7", f.id)),
        None,
    )
    .await
    .assert_fail(404);
    delete(
        s.at(&format!("/registry/revert?id={}&number=-1", f.id)),
        None,
    )
    .await
    .assert_fail(400);
    delete(
        s.at(&format!("/registry/revert?id={}", f.id)),
        Some(json!("x")),
    )
    .await
    .assert_fail(400);
    call(
        Method::DELETE,
        &s.at(&format!("/registry/revert?id={}", f.id)),
        Some(b"{oops".to_vec()),
    )
    .await
    .assert_fail(400);
    delete(s.at(&format!("/registry/revert?id={}", new_id())), None)
        .await
        .assert_fail(404);
    delete(s.at("/registry/revert"), None)
        .await
        .assert_fail(400);
    assert_eq!(tags(&s, &f.id).await.len(), 3);

    // Reverting the last version away removes the template.
    delete(
        s.at(&format!("/registry/revert?id={}&number=0", f.id)),
        None,
    )
    .await
    .ok_body();
    delete(s.at(&format!("/registry/revert?id={}", f.id)), None)
        .await
        .ok_body();
    get(&s.at(&format!("/registry/vm?id={}", f.id)))
        .await
        .assert_fail(404);
}

#[tokio::test]
async fn delete_removes_the_template_and_only_its_own_files() {
    let s = Server::start();
    let a = Fixture::push(&s).await;
    // A second template shares the first one's base layer by name.
    let other = new_id();
    let other_top = TestFile::new("other-top.ank", "image", 1000, 9);
    push(&s, &other, "other", "t", &[&other_top, &a.base]).await;

    call(
        Method::DELETE,
        &s.at(&format!("/registry/vm?id={}", a.id)),
        None,
    )
    .await
    .ok_body();
    get(&s.at(&format!("/registry/vm?id={}", a.id)))
        .await
        .assert_fail(404);
    assert_eq!(
        get(&s.at("/registry/vm")).await.ok_body(),
        &json!([{ other.clone(): "other" }])
    );
    assert_eq!(
        download(&s, &a.base.name).await,
        a.base.data,
        "a layer another template uses survives"
    );
    let gone = get(&s.at(&format!("/api/v1/files/{}", a.top.name))).await;
    gone.assert_fail(404);

    call(
        Method::DELETE,
        &s.at(&format!("/registry/vm?id={}", a.id)),
        None,
    )
    .await
    .assert_fail(404);
    call(Method::DELETE, &s.at("/registry/vm?id=zzz"), None)
        .await
        .assert_fail(400);
    call(Method::DELETE, &s.at("/registry/vm"), None)
        .await
        .assert_fail(400);
}

#[tokio::test]
async fn index_page_and_openapi_cover_everything() {
    let s = Server::start();
    let f = Fixture::push(&s).await;
    let page = reqwest::get(s.at("/")).await.unwrap();
    assert!(page.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let html = page.text().await.unwrap();
    assert!(
        html.contains(&f.name)
            && html.contains("vanilla+port-forward-22+brew-git")
            && html.contains(&f.id)
    );

    let doc = get(&s.at("/openapi.json")).await.json;
    let paths = doc["paths"].as_object().unwrap();
    for (path, methods) in [
        ("/registry/status", &["get"][..]),
        ("/registry/vm", &["get", "delete"]),
        ("/registry/v2/vm", &["get"]),
        ("/registry/vm/info", &["get"]),
        ("/registry/revert", &["delete"]),
        ("/registry/vm/arch", &["put"]),
        ("/registry/disk", &["get"]),
        ("/livez", &["get"]),
        ("/readyz", &["get"]),
        ("/", &["get"]),
        ("/api/v1/push", &["post"]),
        ("/api/v1/push/{session}", &["get", "delete"]),
        ("/api/v1/push/{session}/files/{key}", &["put"]),
        ("/api/v1/push/{session}/commit", &["post"]),
        ("/api/v1/templates/{template}/manifest", &["get"]),
        ("/api/v1/files/{key}", &["get", "head"]),
        ("/metrics", &["get"]),
    ] {
        for m in methods {
            assert!(
                paths.get(path).and_then(|p| p.get(*m)).is_some(),
                "openapi lacks {m} {path}"
            );
        }
    }
    assert_statuses_every_route_can_return(paths);
}

#[tokio::test]
async fn every_response_carries_nosniff_and_a_content_security_policy() {
    const TOKEN: &str = "headers-root-token-0123456789";
    let s = Server::start_with(&["--enable-auth", "--root-token", TOKEN]);
    let root_header = common::auth::basic("root", TOKEN);
    let root = Some(root_header.as_str());
    let to = |method: Method, path: &str, auth: Option<&str>| {
        common::request(method, &s.at(path), None, auth)
    };
    let manifest = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","layers":[]}"#;
    let put = common::request(
        Method::PUT,
        &s.at("/v2/a/manifests/v1"),
        Some(manifest.to_vec()),
        root,
    )
    .header("content-type", "application/vnd.oci.image.manifest.v1+json");
    let long_query = format!("/registry/vm?x={}", "a".repeat(9000));
    let huge_header = to(Method::GET, "/livez", None).header("x-big", "b".repeat(70_000));
    let cases = [
        ("the index page", to(Method::GET, "/", root), 200),
        (
            "a vendor listing",
            to(Method::GET, "/registry/vm", root),
            200,
        ),
        (
            "a vendor refusal",
            to(Method::GET, "/registry/vm", None),
            401,
        ),
        (
            "a vendor 404",
            to(Method::GET, "/api/v1/files/no.ank", root),
            404,
        ),
        ("no route", to(Method::GET, "/no/such/endpoint", root), 404),
        ("a vendor 405", to(Method::PATCH, "/registry/vm", root), 405),
        ("a long query", to(Method::GET, &long_query, root), 414),
        ("huge headers", huge_header, 431),
        ("the OCI base", to(Method::GET, "/v2/", root), 200),
        ("an OCI refusal", to(Method::GET, "/v2/", None), 401),
        (
            "an OCI 404",
            to(Method::GET, "/v2/a/manifests/none", root),
            404,
        ),
        ("an OCI 405", to(Method::PATCH, "/v2/_catalog", root), 405),
        (
            "an OCI 400",
            to(Method::GET, "/v2/Upper/manifests/v1", root),
            400,
        ),
        ("a manifest push", put, 201),
        // A stored manifest: bytes a client chose.
        (
            "a manifest",
            to(Method::GET, "/v2/a/manifests/v1", root),
            200,
        ),
    ];
    for (what, req, status) in cases {
        let reply = req.send().await.unwrap();
        assert_eq!(reply.status().as_u16(), status, "{what}");
        let h = reply.headers();
        assert_eq!(h["x-content-type-options"], "nosniff", "{what}");
        let policy = h["content-security-policy"].to_str().unwrap();
        assert!(
            policy.starts_with("default-src 'none'")
                && policy.contains("frame-ancestors 'none'")
                && policy.contains("sandbox")
                && !policy.contains("unsafe"),
            "{what}: {policy}"
        );
    }
}

/// The statuses the middleware gives any route, whatever its handler does: a query too
/// long (414), headers too large (431), a stalled body cut (408, where a body is read),
/// a backend down (503, everywhere but `/livez`), no credentials (401, but where public).
fn assert_statuses_every_route_can_return(paths: &serde_json::Map<String, Value>) {
    let public = ["/livez", "/readyz", "/tap/v1/hand", "/tap/v1/shake"];
    for (path, ops) in paths {
        for (method, op) in ops.as_object().unwrap() {
            let Some(responses) = op.get("responses").and_then(Value::as_object) else {
                continue;
            };
            let reads_body = ["post", "put", "patch"].contains(&method.as_str())
                || op.get("requestBody").is_some();
            let mut wanted = vec!["414", "431"];
            if reads_body {
                wanted.push("408");
            }
            if path != "/livez" {
                wanted.push("503");
            }
            if !public.contains(&path.as_str()) {
                wanted.push("401");
            }
            for status in wanted {
                assert!(
                    responses.contains_key(status),
                    "openapi: {method} {path} lacks the {status} it can answer"
                );
            }
        }
    }
}

#[tokio::test]
async fn pull_manifest_and_ranged_downloads() {
    // Pulls are written every flush interval: a short one keeps the test short.
    let s = Server::start_with(&["--pull-flush-interval", "200ms"]);
    let f = Fixture::push(&s).await;
    let m = get(&s.at(&format!(
        "/api/v1/templates/{}/manifest?tag={}",
        f.id,
        encode_query("vanilla+port-forward-22+brew-git")
    )))
    .await;
    let body = m.ok_body();
    assert_eq!(body["number"], 2);
    assert_eq!(body["size"], f.v3_size());
    let files = body["files"].as_array().unwrap();
    assert_eq!(files.len(), 3);
    for (file, want) in files.iter().zip([&f.top, &f.base, &f.nvram]) {
        assert_eq!(file["name"], want.name.as_str());
        assert_eq!(file["size"], want.data.len());
        assert_eq!(file["sha256"], want.sha256());
        assert_eq!(download(&s, file["key"].as_str().unwrap()).await, want.data);
    }
    let by_name = get(&s.at(&format!(
        "/api/v1/templates/{}/manifest?version=0",
        encode_path(&f.name)
    )))
    .await;
    assert_eq!(by_name.ok_body()["tag"], "vanilla");
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    assert!(
        get(&s.at("/registry/v2/vm")).await.ok_body()[0]["last_pull"]
            .as_u64()
            .unwrap()
            > 0,
        "a pull is recorded"
    );

    let url = s.at(&format!("/api/v1/files/{}", f.base.name));
    let client = reqwest::Client::new();
    let r = client
        .get(&url)
        .header("Range", "bytes=100-199")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 206);
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes 100-199/{}", f.base.data.len())
    );
    assert_eq!(r.bytes().await.unwrap(), f.base.data[100..200]);
    let r = client
        .get(&url)
        .header("Range", "bytes=299990-")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 206);
    assert_eq!(r.bytes().await.unwrap(), f.base.data[299_990..]);
    let r = client
        .get(&url)
        .header("Range", "bytes=300000-")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 416);
    assert_eq!(r.headers()["content-range"], "bytes */300000");
    let r = client.head(&url).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["content-length"], "300000");
    assert_eq!(
        r.headers()["x-checksum-sha256"].to_str().unwrap(),
        f.base.sha256()
    );

    get(&s.at(&format!("/api/v1/templates/{}/manifest?tag=nope", f.id)))
        .await
        .assert_fail(404);
    get(&s.at("/api/v1/templates/no-such-template/manifest"))
        .await
        .assert_fail(404);
    get(&s.at("/api/v1/files/nope.ank")).await.assert_fail(404);
    get(&s.at("/api/v1/files/..")).await.assert_fail(404);
    get(&s.at("/api/v1/files/a%2F..%2F..%2Fmeta.redb"))
        .await
        .assert_fail(400);
}

#[tokio::test]
async fn push_dedupes_layers_and_rejects_conflicts() {
    let s = Server::start();
    let f = Fixture::push(&s).await;
    // A new tag on the same base: only the new layer is requested.
    let extra = TestFile::new("extra.ank", "image", 5000, 42);
    let plan = send_json(
        Method::POST,
        &s.at("/api/v1/push"),
        &push_request(&f.id, &f.name, "next", &[&extra, &f.base, &f.nvram]),
    )
    .await;
    let body = plan.ok_body();
    let uploads: Vec<&str> = body["files"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["upload"] == true)
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(uploads, ["extra.ank"]);
    call(
        Method::DELETE,
        &s.at(&format!(
            "/api/v1/push/{}",
            body["session"].as_str().unwrap()
        )),
        None,
    )
    .await
    .ok_body();

    // Same name, other content: a conflict, never an overwrite.
    let impostor = TestFile::new(&f.base.name, "image", 300_000, 77);
    try_push(&s, &new_id(), "impostor", "t", &[&impostor])
        .await
        .assert_fail(409);
    assert_eq!(download(&s, &f.base.name).await, f.base.data);

    // Existing tag; existing name under another uuid.
    try_push(&s, &f.id, &f.name, "vanilla", &[&f.base])
        .await
        .assert_fail(409);
    let r = try_push(&s, &new_id(), &f.name, "t", &[&extra]).await;
    r.assert_fail(409);
    assert!(r.json["message"]
        .as_str()
        .unwrap()
        .contains("doesn't match"));
    assert_eq!(
        tags(&s, &f.id).await.len(),
        3,
        "rejected pushes change nothing"
    );
}

#[tokio::test]
async fn negotiation_never_tells_a_pusher_the_stored_digest_of_a_layer() {
    let s = Server::start();
    let f = Fixture::push(&s).await;
    let stored = f.base.sha256();
    let url = s.at("/api/v1/push");
    let naming = |size: usize, sha256: Value, confirm_held: bool| {
        let mut req = push_request(&new_id(), "prober", "t", &[]);
        req["files"] =
            json!([{"name": f.base.name, "kind": "image", "size": size, "sha256": sha256}]);
        req["confirm_held"] = json!(confirm_held);
        req
    };
    // A wrong digest or a wrong size for a stored layer's name: 409, the stored digest untold.
    for (size, sha256) in [
        (f.base.data.len(), json!(sha256_hex(b"a guess"))),
        (f.base.data.len() + 1, json!(null)),
        (f.base.data.len() + 1, json!(sha256_hex(b"a guess"))),
    ] {
        let reply = send_json(Method::POST, &url, &naming(size, sha256, false)).await;
        reply.assert_fail(409);
        let message = reply.json["message"].as_str().unwrap();
        assert!(message.contains("changed since it was pushed"), "{message}");
        assert!(!message.contains(&stored), "{message}");
    }
    // No digest, as a client that has not hashed its file yet: the plan shows a hint that
    // only the bytes' owner can check, not the digest.
    let reply = send_json(
        Method::POST,
        &url,
        &naming(f.base.data.len(), json!(null), true),
    )
    .await;
    let plan = reply.ok_body();
    let shown = plan.to_string();
    assert!(!shown.contains(&stored), "{shown}");
    let file = &plan["files"][0];
    assert_eq!(file["confirm"], true);
    let session = plan["session"].as_str().unwrap();
    assert_eq!(
        file["confirm_hint"].as_str(),
        Some(sha256_hex(format!("{session}:{stored}").as_bytes()).as_str())
    );
    // The status of the session shows no more than its plan.
    let status = get(&s.at(&format!("/api/v1/push/{session}"))).await;
    assert!(!status.ok_body().to_string().contains(&stored));
    // Committing with a guess is refused, again without the digest.
    let key = file["key"].as_str().unwrap();
    let commit = send_json(
        Method::POST,
        &s.at(&format!("/api/v1/push/{session}/commit")),
        &json!({"digests": {key: sha256_hex(b"another guess")}}),
    )
    .await;
    commit.assert_fail(409);
    assert!(!commit.json["message"].as_str().unwrap().contains(&stored));
}

#[tokio::test]
async fn bad_negotiations_get_400_and_change_nothing() {
    let s = Server::start();
    let url = s.at("/api/v1/push");
    let ok_file = TestFile::new("a.ank", "image", 10, 1);
    let base = push_request(&new_id(), "t", "v", &[&ok_file]);
    let with = |path: &str, value: Value| {
        let mut req = base.clone();
        let mut target = &mut req;
        let parts: Vec<&str> = path.split('.').collect();
        for p in &parts[..parts.len() - 1] {
            target = match p.parse::<usize>() {
                Ok(i) => &mut target[i],
                Err(_) => &mut target[*p],
            };
        }
        target[parts[parts.len() - 1]] = value;
        req
    };
    for bad in [
        with("files.0.name", json!("../etc/passwd")),
        with("files.0.name", json!("a/b.ank")),
        with("files.0.name", json!("..")),
        with("files.0.kind", json!("weird")),
        with("files.0.sha256", json!("nothex")),
        with("files", json!([])),
        with("name", json!("")),
        with("name", json!("a/b")),
        with("tag", json!("")),
        with("tag", json!("x\ny")),
        with("id", json!("not-a-uuid")),
        with("arch", json!("sparc")),
        with("config", json!("yaml")),
    ] {
        send_json(Method::POST, &url, &bad).await.assert_fail(400);
    }
    call(Method::POST, &url, Some(b"{\"id\":".to_vec()))
        .await
        .assert_fail(400);
    call(Method::POST, &url, None).await.assert_fail(400);
    let huge = vec![b' '; 2 << 20];
    call(Method::POST, &url, Some(huge)).await.assert_fail(400);
    assert_eq!(get(&s.at("/registry/vm")).await.ok_body(), &json!([]));
}

#[tokio::test]
async fn uploads_resume_and_commits_verify() {
    let s = Server::start();
    let id = new_id();
    let big = TestFile::new("big.ank", "image", 20 * 1024 * 1024 + 123, 5);
    let small = TestFile::new("small.ank", "image", 1000, 6);
    let plan = send_json(
        Method::POST,
        &s.at("/api/v1/push"),
        &push_request(&id, "resumable", "t1", &[&big, &small]),
    )
    .await;
    let plan = plan.ok_body().clone();
    let session = plan["session"].as_str().unwrap().to_string();
    let part = plan["files"][0]["part_size"].as_u64().unwrap() as usize;
    assert!(part >= 5 << 20);
    let put_url = |key: &str, offset: usize| {
        s.at(&format!(
            "/api/v1/push/{session}/files/{key}?offset={offset}"
        ))
    };

    // Commit with a file missing is rejected.
    try_commit_push(&s.url, &session).await.assert_fail(409);

    // A body that stops after one and a half parts keeps exactly one part.
    let sent = call(
        Method::PUT,
        &put_url("big.ank", 0),
        Some(big.data[..part + part / 2].to_vec()),
    )
    .await;
    assert_eq!(sent.ok_body()["received"], part);
    assert_eq!(sent.ok_body()["complete"], false);

    // A connection cut mid-body: the durable parts survive.
    let cut_at = 2 * part + 1000;
    {
        let addr = s.url.trim_start_matches("http://").to_string();
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        use std::io::Write;
        let head = format!(
            "PUT /api/v1/push/{session}/files/big.ank?offset={part} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
            big.data.len() - part
        );
        stream.write_all(head.as_bytes()).unwrap();
        stream.write_all(&big.data[part..cut_at]).unwrap();
        stream.flush().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    let mut received = 0;
    for _ in 0..50 {
        let status = get(&s.at(&format!("/api/v1/push/{session}"))).await;
        received = status.ok_body()["files"][0]["received"].as_u64().unwrap() as usize;
        if received == 2 * part {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        received,
        2 * part,
        "the whole part before the cut is durable, the partial one is not"
    );

    // An offset past what arrived is refused with the right one in the message.
    let ahead = call(
        Method::PUT,
        &put_url("big.ank", received + 1),
        Some(big.data[received + 1..].to_vec()),
    )
    .await;
    ahead.assert_fail(409);
    assert!(ahead.json["message"]
        .as_str()
        .unwrap()
        .contains(&received.to_string()));

    // A request from an older offset (a client that read the status while an earlier
    // request still landed parts) skips what is durable and continues from there.
    let done = call(
        Method::PUT,
        &put_url("big.ank", part),
        Some(big.data[part..].to_vec()),
    )
    .await;
    assert_eq!(done.ok_body()["complete"], true);
    assert_eq!(done.ok_body()["received"], big.data.len());

    // Unknown file, file not in the plan, traversal in the key.
    call(Method::PUT, &put_url("other.ank", 0), Some(vec![1]))
        .await
        .assert_fail(404);
    call(Method::PUT, &put_url("%2E%2E", 0), Some(vec![1]))
        .await
        .assert_fail(404);
    // Too long a body.
    call(Method::PUT, &put_url("small.ank", 0), Some(vec![0; 2000]))
        .await
        .assert_fail(400);
    // Wrong content: rejected at the end, and the upload starts over.
    let mut corrupt = small.data.clone();
    corrupt[10] ^= 1;
    call(Method::PUT, &put_url("small.ank", 0), Some(corrupt))
        .await
        .assert_fail(400);
    assert_eq!(
        get(&s.at(&format!("/api/v1/push/{session}")))
            .await
            .ok_body()["files"][1]["received"],
        0
    );
    call(
        Method::PUT,
        &put_url("small.ank", 0),
        Some(small.data.clone()),
    )
    .await
    .ok_body();

    let committed = commit_push(&s.url, &session).await;
    assert_eq!(committed["number"], 0);
    assert_eq!(download(&s, "big.ank").await, big.data);
    // A commit asked again (its reply was lost) answers with the same version and adds
    // none.
    let again = commit_push(&s.url, &session).await;
    assert_eq!(again["number"], 0);
    assert_eq!(again["id"], committed["id"]);
    let template = get(&s.at(&format!("/registry/vm?id={id}"))).await;
    assert_eq!(template.ok_body()["versions"].as_array().unwrap().len(), 1);
    // An unknown session is still unknown.
    call(
        Method::POST,
        &s.at(&format!(
            "/api/v1/push/{}/commit",
            new_id().replace('-', "")
        )),
        None,
    )
    .await
    .assert_fail(404);
}

#[tokio::test]
async fn commit_with_a_wrong_client_digest_is_rejected() {
    let s = Server::start();
    let id = new_id();
    let a = TestFile::new("a.ank", "image", 1000, 1);
    let mut req = push_request(&id, "digests", "t", &[&a]);
    req["files"][0].as_object_mut().unwrap().remove("sha256");
    let plan = send_json(Method::POST, &s.at("/api/v1/push"), &req).await;
    let session = plan.ok_body()["session"].as_str().unwrap().to_string();
    call(
        Method::PUT,
        &s.at(&format!("/api/v1/push/{session}/files/a.ank?offset=0")),
        Some(a.data.clone()),
    )
    .await
    .ok_body();
    let commit_url = s.at(&format!("/api/v1/push/{session}/commit"));
    call(Method::POST, &commit_url, None).await.assert_fail(400);
    send_json(
        Method::POST,
        &commit_url,
        &json!({"digests": {"a.ank": "0".repeat(64)}}),
    )
    .await
    .assert_fail(409);
    get(&s.at(&format!("/registry/vm?id={id}")))
        .await
        .assert_fail(404);
    send_json(
        Method::POST,
        &commit_url,
        &json!({"digests": {"a.ank": a.sha256()}}),
    )
    .await
    .ok_body();
    assert_eq!(tags(&s, &id).await, ["t"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_pushes_get_dense_unique_numbers() {
    let s = Server::start();
    let id = new_id();
    let base = TestFile::new("base.ank", "image", 10_000, 1);
    push(&s, &id, "dense", "t0", &[&base]).await;
    let url = s.url.clone();
    let mut tasks = Vec::new();
    for i in 1..=10 {
        let (id, url) = (id.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            let server_url = url;
            let layer = TestFile::new(&format!("layer-{i}.ank"), "image", 2000 + i, i as u64);
            let base = TestFile::new("base.ank", "image", 10_000, 1);
            let plan = send_json(
                Method::POST,
                &format!("{server_url}/api/v1/push"),
                &push_request(&id, "dense", &format!("t{i}"), &[&layer, &base]),
            )
            .await;
            let session = plan.ok_body()["session"].as_str().unwrap().to_string();
            call(
                Method::PUT,
                &format!("{server_url}/api/v1/push/{session}/files/layer-{i}.ank?offset=0"),
                Some(layer.data.clone()),
            )
            .await
            .ok_body();
            let done = commit_push(&server_url, &session).await;
            done["number"].as_u64().unwrap()
        }));
    }
    let mut numbers = Vec::new();
    for t in tasks {
        numbers.push(t.await.unwrap());
    }
    numbers.sort();
    assert_eq!(numbers, (1..=10).collect::<Vec<u64>>());
    let body = get(&s.at(&format!("/registry/vm?id={id}"))).await;
    let versions = body.ok_body()["versions"].as_array().unwrap().clone();
    assert_eq!(versions.len(), 11);
    for (i, v) in versions.iter().enumerate() {
        assert_eq!(v["number"], i);
    }
}

#[tokio::test]
async fn a_revert_racing_a_push_never_leaves_a_dangling_file() {
    let s = Server::start();
    let id = new_id();
    let base = TestFile::new("base.ank", "image", 50_000, 1);
    let top = TestFile::new("top.ank", "image", 5_000, 2);
    push(&s, &id, "race", "v0", &[&base]).await;
    push(&s, &id, "race", "v1", &[&top, &base]).await;

    // A second template negotiates top.ank as "already there"...
    let other = new_id();
    let plan = send_json(
        Method::POST,
        &s.at("/api/v1/push"),
        &push_request(&other, "race-2", "x", &[&top]),
    )
    .await;
    let plan = plan.ok_body().clone();
    assert_eq!(plan["files"][0]["upload"], false);
    // ...then the only version using it is reverted away...
    call(
        Method::DELETE,
        &s.at(&format!("/registry/revert?id={id}")),
        None,
    )
    .await
    .ok_body();
    // ...and the pinned file must still be there when the push commits.
    commit_push(&s.url, plan["session"].as_str().unwrap()).await;
    let m = get(&s.at(&format!("/api/v1/templates/{other}/manifest"))).await;
    assert_eq!(
        download(&s, m.ok_body()["files"][0]["key"].as_str().unwrap()).await,
        top.data
    );

    // Aborting a session that pinned an otherwise unreferenced file frees it.
    let plan = send_json(
        Method::POST,
        &s.at("/api/v1/push"),
        &push_request(&new_id(), "race-3", "x", &[&top]),
    )
    .await;
    let session = plan.ok_body()["session"].as_str().unwrap().to_string();
    call(
        Method::DELETE,
        &s.at(&format!("/registry/vm?id={other}")),
        None,
    )
    .await
    .ok_body();
    assert_eq!(
        download(&s, "top.ank").await,
        top.data,
        "still pinned by the open session"
    );
    call(
        Method::DELETE,
        &s.at(&format!("/api/v1/push/{session}")),
        None,
    )
    .await
    .ok_body();
    get(&s.at("/api/v1/files/top.ank")).await.assert_fail(404);
    call(
        Method::DELETE,
        &s.at(&format!("/api/v1/push/{session}")),
        None,
    )
    .await
    .assert_fail(404);
}

#[tokio::test]
async fn nothing_is_visible_before_commit() {
    let s = Server::start();
    let id = new_id();
    let a = TestFile::new("a.ank", "image", 1000, 1);
    let plan = send_json(
        Method::POST,
        &s.at("/api/v1/push"),
        &push_request(&id, "invisible", "t", &[&a]),
    )
    .await;
    let session = plan.ok_body()["session"].as_str().unwrap().to_string();
    call(
        Method::PUT,
        &s.at(&format!("/api/v1/push/{session}/files/a.ank?offset=0")),
        Some(a.data.clone()),
    )
    .await
    .ok_body();
    assert_eq!(get(&s.at("/registry/vm")).await.ok_body(), &json!([]));
    get(&s.at(&format!("/registry/vm?id={id}")))
        .await
        .assert_fail(404);
    get(&s.at("/api/v1/files/a.ank")).await.assert_fail(404);
    get(&s.at(&format!("/api/v1/templates/{id}/manifest")))
        .await
        .assert_fail(404);
}

#[tokio::test]
async fn data_survives_a_restart() {
    let mut s = Server::start();
    let f = Fixture::push(&s).await;
    s.restart();
    assert_eq!(tags(&s, &f.id).await.len(), 3);
    assert_eq!(download(&s, &f.top.name).await, f.top.data);
}

/// Peak resident memory of a process, in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 1024
}

#[tokio::test]
async fn memory_stays_bounded_while_2_gib_streams_in_and_out() {
    use futures_util::StreamExt;
    const SIZE: u64 = 2 << 30;
    const CHUNK: usize = 1 << 20;
    let s = Server::start();
    let id = new_id();
    let chunk = pseudo_random(CHUNK, 11);
    let mut hasher = vmreg::digest::ResumableSha256::new();
    for _ in 0..SIZE / CHUNK as u64 {
        hasher.update(&chunk);
    }
    let digest = hasher.finalize_hex();
    let req = json!({"id": id, "name": "huge", "tag": "t", "config": {}, "files": [{"name": "huge.ank", "kind": "image", "size": SIZE, "sha256": digest}]});
    let plan = send_json(Method::POST, &s.at("/api/v1/push"), &req).await;
    let session = plan.ok_body()["session"].as_str().unwrap().to_string();
    let body = futures_util::stream::iter(0..SIZE / CHUNK as u64)
        .map(move |_| Ok::<_, std::io::Error>(bytes::Bytes::from(chunk.clone())));
    let resp = reqwest::Client::new()
        .put(s.at(&format!("/api/v1/push/{session}/files/huge.ank?offset=0")))
        .header("Content-Length", SIZE)
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    commit_push(&s.url, &session).await;

    let mut download = reqwest::get(s.at("/api/v1/files/huge.ank"))
        .await
        .unwrap()
        .bytes_stream();
    let mut check = vmreg::digest::ResumableSha256::new();
    while let Some(part) = download.next().await {
        check.update(&part.unwrap());
    }
    assert_eq!(check.len(), SIZE);
    assert_eq!(check.finalize_hex(), digest);
    let peak = peak_rss(s.pid());
    println!("server peak RSS after 2 GiB in and out: {} MiB", peak >> 20);
    assert!(
        peak < 100 << 20,
        "server peak RSS {} MiB is not bounded",
        peak >> 20
    );
}

#[tokio::test]
async fn huge_headers_are_refused_with_a_fail_envelope() {
    let s = Server::start();
    let resp = reqwest::Client::new()
        .get(s.at("/registry/status"))
        .header("X-Big", "a".repeat(100_000))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 431);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["status"], "FAIL");
    get(&s.at("/registry/status")).await.ok_body();
}

#[tokio::test]
async fn sigterm_lets_an_upload_in_flight_finish() {
    use futures_util::StreamExt;
    let mut s = Server::start_with(&["--shutdown-timeout", "20"]);
    let id = new_id();
    let file = TestFile::new("slow.ank", "image", 4 << 20, 3);
    let plan = send_json(
        Method::POST,
        &s.at("/api/v1/push"),
        &push_request(&id, "slow", "t", &[&file]),
    )
    .await;
    let session = plan.ok_body()["session"].as_str().unwrap().to_string();
    let chunks: Vec<bytes::Bytes> = file
        .data
        .chunks(256 << 10)
        .map(bytes::Bytes::copy_from_slice)
        .collect();
    // 16 chunks, 150 ms apart: the body takes over two seconds.
    let body = futures_util::stream::iter(chunks).then(|c| async move {
        tokio::time::sleep(std::time::Duration::from_millis(150)).await;
        Ok::<_, std::io::Error>(c)
    });
    let url = s.at(&format!("/api/v1/push/{session}/files/slow.ank?offset=0"));
    let upload = tokio::spawn(async move {
        let resp = reqwest::Client::new()
            .put(url)
            .header("Content-Length", 4 << 20)
            .body(reqwest::Body::wrap_stream(body))
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
    });
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    let pid = s.pid() as i32;
    // SAFETY: sending a signal to our own child process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        reqwest::get(s.at("/livez")).await.is_err(),
        "no new connections after SIGTERM"
    );
    let (status, body) = upload.await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["body"]["complete"], true);
    // The state is durable: a restarted server commits the push.
    s.restart();
    commit_push(&s.url, &session).await;
    assert_eq!(download(&s, "slow.ank").await, file.data);
}

#[test]
fn vendor_variables_vmreg_does_not_apply_are_warned_about_at_start() {
    use std::io::{BufRead, BufReader};
    let ns = Namespace::new();
    let log = ns.dir.join("serve.log");
    let mut child = std::process::Command::new(vmreg_bin())
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(ns.store_args())
        .env("ANKA_NO_SUCH_SETTING", "1")
        .env("ANKA_GRACEFUL_SHUTDOWN_TIMEOUT", "1m30s")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let mut printed = String::new();
    for line in stdout.lines() {
        let line = line.unwrap();
        printed.push_str(&line);
        printed.push('\n');
        if line.contains("metadata") {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert!(
        stderr.contains("ANKA_NO_SUCH_SETTING is not a setting"),
        "an unknown vendor name is warned about: {stderr}"
    );
    assert!(
        !stderr.contains("ANKA_GRACEFUL_SHUTDOWN_TIMEOUT"),
        "an applied vendor name is not: {stderr}"
    );
    assert!(
        printed.contains("shutdown_timeout  90s"),
        "the vendor's Go-style duration is applied: {printed}"
    );
}

#[tokio::test]
async fn a_version_pushed_from_another_vm_keeps_the_templates_uuid_and_name() {
    let s = Server::start();
    let (id, other) = (new_id(), new_id());
    let image = TestFile::new("0f0e0d0c0b0a09080706050403020100.ank", "image", 5000, 71);
    let nvram = TestFile::new("nvram", "nvram", 100, 72);
    push(&s, &id, "tmpl", "t1", &[&image, &nvram]).await;
    // What `push -v tmpl` sends: another VM's configuration as the template's next tag.
    let mut request = push_request(&id, "tmpl", "t2", &[&image, &nvram]);
    request["config"]["uuid"] = json!(other);
    request["config"]["name"] = json!("vm2");
    try_push_request(&s, &request, &[&image, &nvram])
        .await
        .ok_body();
    let config = get(&s.at(&format!("/registry/vm/info?id={id}&number=1"))).await;
    assert_eq!(config.ok_body()["uuid"], id.as_str());
    assert_eq!(config.ok_body()["name"], "tmpl");
}

/// `vmreg_s3_bytes_read_total` from the server's metrics.
async fn s3_bytes_read(s: &Server) -> u64 {
    let text = reqwest::get(s.at("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("vmreg_s3_bytes_read_total "))
        .expect("the metric is exported")
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn large_downloads_are_exact_across_read_pieces_and_shared_by_concurrent_readers() {
    // Bigger than several of the S3 store's read pieces (4 MiB), and not a multiple of one.
    let size = 13 * (1 << 20) + 12_345;
    let s = Server::start();
    let file = unique_image(size, 41);
    let id = new_id();
    push(&s, &id, "pieces", "v1", &[&file]).await;
    let url = s.at(&format!("/api/v1/files/{}", file.name));
    assert_eq!(download(&s, &file.name).await, file.data);

    let client = reqwest::Client::new();
    for (start, end) in [
        (4_194_000, 8_388_700),
        (1, size - 1),
        (4 << 20, 12 << 20),
        (8 << 20, size),
        (size - 10, size),
    ] {
        let r = client
            .get(&url)
            .header("Range", format!("bytes={start}-{}", end - 1))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 206, "{start}..{end}");
        assert_eq!(
            r.headers()["content-range"],
            format!("bytes {start}-{}/{size}", end - 1)
        );
        assert!(
            r.bytes().await.unwrap() == file.data[start..end],
            "bytes {start}..{end} differ"
        );
    }
    let r = client
        .get(&url)
        .header("Range", "bytes=5000000-")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 206);
    assert!(r.bytes().await.unwrap() == file.data[5_000_000..]);
    let r = client
        .get(&url)
        .header("Range", format!("bytes={size}-"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 416);

    // Eight readers at once: each gets every byte; on S3 the replica reads the file from
    // the bucket about once for all of them, not once each.
    let before = s3_bytes_read(&s).await;
    let readers = (0..8).map(|_| download(&s, &file.name));
    for got in futures_util::future::join_all(readers).await {
        assert!(got == file.data, "a concurrent download differs");
    }
    let read = s3_bytes_read(&s).await - before;
    if s3_backend() {
        assert!(
            read <= 2 * size as u64,
            "8 concurrent downloads read {read} bytes from S3 for a {size}-byte file"
        );
    } else {
        assert_eq!(read, 0, "the disk store reads no S3");
    }
}

/// A negotiated push of `file` on a server with 5 MiB parts: the session and a function
/// giving the upload URL at an offset.
async fn ranged_session(s: &Server, file: &TestFile, declared: &str) -> (String, u64) {
    let id = new_id();
    let mut req = push_request(&id, &format!("ranges-{}", &id[..8]), "t", &[file]);
    req["files"][0]["sha256"] = json!(declared);
    let plan = send_json(Method::POST, &s.at("/api/v1/push"), &req).await;
    let plan = plan.ok_body().clone();
    let part = plan["files"][0]["part_size"].as_u64().unwrap();
    assert_eq!(part, 5 << 20, "the server was started with 5 MiB parts");
    (plan["session"].as_str().unwrap().to_string(), part)
}

/// Sends part `n` (1-based) of `data` on its own.
async fn put_part(s: &Server, session: &str, key: &str, data: &[u8], part: u64, n: u64) -> Reply {
    let start = (n - 1) * part;
    let end = (start + part).min(data.len() as u64);
    call(
        Method::PUT,
        &s.at(&format!(
            "/api/v1/push/{session}/files/{key}?offset={start}"
        )),
        Some(data[start as usize..end as usize].to_vec()),
    )
    .await
}

async fn file_status(s: &Server, session: &str) -> Value {
    get(&s.at(&format!("/api/v1/push/{session}")))
        .await
        .ok_body()["files"][0]
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_file_sent_as_ranges_in_any_order_assembles_byte_identical() {
    let s = Server::start_with(&["--part-size", "5MiB"]);
    let file = unique_image(4 * (5 << 20) + 4321, 41);
    let (session, part) = ranged_session(&s, &file, &file.sha256()).await;
    let key = file.name.as_str();
    let size = file.data.len() as u64;

    // Parts 3 and 5 (the short tail) first, at once.
    let (p3, p5) = tokio::join!(
        put_part(&s, &session, key, &file.data, part, 3),
        put_part(&s, &session, key, &file.data, part, 5)
    );
    assert_eq!(p3.ok_body()["complete"], false);
    assert_eq!(
        p5.ok_body()["received"],
        0,
        "nothing durable from the start yet"
    );
    let status = file_status(&s, &session).await;
    assert_eq!(status["received"], 0);
    assert_eq!(
        status["durable"],
        json!([[2 * part, 3 * part], [4 * part, size]])
    );

    // A body at an offset that is no part boundary: refused, nothing changes.
    let misaligned = call(
        Method::PUT,
        &s.at(&format!(
            "/api/v1/push/{session}/files/{key}?offset={}",
            part + 1
        )),
        Some(file.data[part as usize + 1..].to_vec()),
    )
    .await;
    misaligned.assert_fail(409);
    assert_eq!(file_status(&s, &session).await, status);

    // Different bytes for a durable part are dropped, never stored: the file still
    // assembles from the bytes that were durable.
    let mut other = file.data.clone();
    other[(2 * part) as usize..(3 * part) as usize].fill(0xAB);
    put_part(&s, &session, key, &other, part, 3).await.ok_body();
    assert_eq!(file_status(&s, &session).await, status);

    // Parts 1 and 2 as one body, 4 alone, at once: the last to land completes the file.
    let first_two = s.at(&format!("/api/v1/push/{session}/files/{key}?offset=0"));
    let (p12, p4) = tokio::join!(
        call(
            Method::PUT,
            &first_two,
            Some(file.data[..2 * part as usize].to_vec()),
        ),
        put_part(&s, &session, key, &file.data, part, 4)
    );
    let done = [
        p12.ok_body()["complete"].clone(),
        p4.ok_body()["complete"].clone(),
    ];
    assert!(done.contains(&json!(true)), "{done:?}");
    let status = file_status(&s, &session).await;
    assert_eq!(
        (status["received"].as_u64(), &status["durable"]),
        (Some(size), &json!([[0, size]]))
    );
    assert_eq!(status["sha256"], file.sha256().as_str());

    commit_push(&s.url, &session).await;
    assert!(
        download(&s, key).await == file.data,
        "the object differs from the file"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ranges_whose_bytes_differ_from_the_declared_digest_are_refused() {
    let s = Server::start_with(&["--part-size", "5MiB"]);
    let file = unique_image(3 * (5 << 20) + 99, 42);
    let declared = sha256_hex(b"something else");
    let (session, part) = ranged_session(&s, &file, &declared).await;
    let key = file.name.as_str();
    for n in [4, 3, 1] {
        put_part(&s, &session, key, &file.data, part, n)
            .await
            .ok_body();
    }
    let last = put_part(&s, &session, key, &file.data, part, 2).await;
    last.assert_fail(400);
    assert!(last.json["message"]
        .as_str()
        .unwrap()
        .contains("SHA-256 mismatch"));
    let status = file_status(&s, &session).await;
    assert_eq!(status["received"], 0, "the file starts over: {status}");
    assert!(status.get("durable").is_none(), "{status}");
    try_commit_push(&s.url, &session).await.assert_fail(409);
}
