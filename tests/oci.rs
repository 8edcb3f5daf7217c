//! The OCI Distribution API under `/v2/`, driven over HTTP against the real binary the
//! way tart's client drives it, on whichever backend `VMREG_TEST_BACKEND` selects.

mod common;

use common::*;
use reqwest::{header, Client, Method, StatusCode};
use serde_json::Value;
use sha2::Digest;

const API_VERSION: &str = "docker-distribution-api-version";
/// An image manifest with no layers.
const EMPTY_MANIFEST: &[u8] =
    br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","layers":[]}"#;

fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

/// Deterministic bytes that differ from part to part.
fn payload(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1] ^ seed)
        .collect()
}

/// Follows a `Location`, relative or absolute.
fn resolve(server: &Server, location: &str) -> String {
    match location.starts_with("http") {
        true => location.to_string(),
        false => server.at(location),
    }
}

fn location(reply: &reqwest::Response) -> String {
    reply.headers()[header::LOCATION]
        .to_str()
        .unwrap()
        .to_string()
}

async fn error_code(reply: reqwest::Response) -> String {
    let body: Value = reply.json().await.unwrap();
    body["errors"][0]["code"].as_str().unwrap().to_string()
}

/// Sends a request that must fail with `status` and the spec's error `code`.
async fn expect_error(req: reqwest::RequestBuilder, status: StatusCode, code: &str) {
    let reply = req.send().await.unwrap();
    assert_eq!(reply.status(), status);
    assert_eq!(error_code(reply).await, code);
}

/// `POST …/blobs/uploads/`: exactly 202 and a relative `Location`.
async fn open_upload(c: &Client, s: &Server, repo: &str) -> String {
    let reply = c
        .post(s.at(&format!("/v2/{repo}/blobs/uploads/")))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), StatusCode::ACCEPTED);
    let loc = location(&reply);
    assert!(
        loc.starts_with(&format!("/v2/{repo}/blobs/uploads/")),
        "{loc}"
    );
    loc
}

/// Appends `chunks` with bare `start-end` ranges, following `Location` each time.
async fn patch_chunks(
    c: &Client,
    s: &Server,
    mut loc: String,
    data: &[u8],
    chunk: usize,
) -> String {
    let mut start = 0;
    for piece in data.chunks(chunk) {
        let end = start + piece.len() - 1;
        let reply = c
            .patch(resolve(s, &loc))
            .header(header::CONTENT_RANGE, format!("{start}-{end}"))
            .body(piece.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), StatusCode::ACCEPTED, "chunk at {start}");
        assert_eq!(reply.headers()[header::RANGE], format!("0-{end}").as_str());
        loc = location(&reply);
        start = end + 1;
    }
    loc
}

fn with_digest(s: &Server, loc: &str, digest: &str) -> String {
    let sep = if loc.contains('?') { '&' } else { '?' };
    format!("{}{sep}digest={digest}", resolve(s, loc))
}

#[tokio::test]
async fn tart_push_and_pull_sequence() {
    let s = Server::start();
    let c = Client::new();
    let repo = "acme/vms/sonoma";

    let base = c.get(s.at("/v2/")).send().await.unwrap();
    assert_eq!(base.status(), StatusCode::OK);
    assert_eq!(base.headers()[API_VERSION], "registry/2.0");

    // Unknown blob: HEAD 404, GET 404 BLOB_UNKNOWN.
    let config = br#"{"architecture":"arm64","os":"darwin","config":{"Labels":{}}}"#.to_vec();
    let config_digest = digest_of(&config);
    let blob_url = |d: &str| s.at(&format!("/v2/{repo}/blobs/{d}"));
    let head = c.head(blob_url(&config_digest)).send().await.unwrap();
    assert_eq!(head.status(), StatusCode::NOT_FOUND);
    let missing = c.get(blob_url(&config_digest)).send().await.unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(missing).await, "BLOB_UNKNOWN");

    // Monolithic: POST then PUT with the whole body, exactly 201.
    let loc = open_upload(&c, &s, repo).await;
    let put = c
        .put(with_digest(&s, &loc, &config_digest))
        .body(config.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::CREATED);
    assert_eq!(
        put.headers()["docker-content-digest"],
        config_digest.as_str()
    );
    let head = c.head(blob_url(&config_digest)).send().await.unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(
        head.headers()[header::CONTENT_LENGTH],
        config.len().to_string().as_str()
    );

    // Chunked: 20 MiB in 3 MiB PATCHes with bare ranges (crossing 8 MiB parts), then an
    // empty PUT to close.
    let disk = payload(20 << 20, 7);
    let disk_digest = digest_of(&disk);
    let loc = open_upload(&c, &s, repo).await;
    let loc = patch_chunks(&c, &s, loc, &disk, 3 << 20).await;
    let status = c.get(resolve(&s, &loc)).send().await.unwrap();
    assert_eq!(status.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        status.headers()[header::RANGE],
        format!("0-{}", disk.len() - 1).as_str()
    );
    let put = c
        .put(with_digest(&s, &loc, &disk_digest))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::CREATED);

    // Manifest PUT by tag: exactly 201; GET returns the same bytes and media type.
    let media_type = "application/vnd.oci.image.manifest.v1+json";
    let manifest = format!(
        "{{\"schemaVersion\":2,\"mediaType\":\"{media_type}\",\n  \"config\":{{\"mediaType\":\"application/vnd.oci.image.config.v1+json\",\"digest\":\"{config_digest}\",\"size\":{}}},\n  \"layers\":[{{\"mediaType\":\"application/vnd.cirruslabs.tart.disk.v2\",\"digest\":\"{disk_digest}\",\"size\":{},\"annotations\":{{\"org.cirruslabs.tart.uncompressed-size\":\"{}\"}}}}]}}\n",
        config.len(),
        disk.len(),
        disk.len()
    )
    .into_bytes();
    let manifest_digest = digest_of(&manifest);
    let put = c
        .put(s.at(&format!("/v2/{repo}/manifests/latest")))
        .header(header::CONTENT_TYPE, media_type)
        .body(manifest.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::CREATED);
    assert_eq!(
        put.headers()["docker-content-digest"],
        manifest_digest.as_str()
    );
    for reference in ["latest", manifest_digest.as_str()] {
        let got = c
            .get(s.at(&format!("/v2/{repo}/manifests/{reference}")))
            .header(header::ACCEPT, media_type)
            .send()
            .await
            .unwrap();
        assert_eq!(got.status(), StatusCode::OK);
        assert_eq!(got.headers()[header::CONTENT_TYPE], media_type);
        assert_eq!(
            got.headers()["docker-content-digest"],
            manifest_digest.as_str()
        );
        assert_eq!(
            got.bytes().await.unwrap().as_ref(),
            &manifest[..],
            "byte-exact"
        );
    }
    let head = c
        .head(s.at(&format!("/v2/{repo}/manifests/latest")))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(
        head.headers()[header::CONTENT_LENGTH],
        manifest.len().to_string().as_str()
    );

    // Pull: whole, then resumed after a cut with `Range: bytes=N-`, exactly 206.
    let whole = c.get(blob_url(&disk_digest)).send().await.unwrap();
    assert_eq!(whole.status(), StatusCode::OK);
    assert!(whole.bytes().await.unwrap() == disk);
    let cut = 9 << 20;
    let rest = c
        .get(blob_url(&disk_digest))
        .header(header::RANGE, format!("bytes={cut}-"))
        .send()
        .await
        .unwrap();
    assert_eq!(rest.status(), StatusCode::PARTIAL_CONTENT);
    assert!(rest.bytes().await.unwrap() == disk[cut..]);
    let past = c
        .get(blob_url(&disk_digest))
        .header(header::RANGE, format!("bytes={}-", disk.len()))
        .send()
        .await
        .unwrap();
    assert_eq!(past.status(), StatusCode::RANGE_NOT_SATISFIABLE);

    let tags: Value = c
        .get(s.at(&format!("/v2/{repo}/tags/list")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(tags["tags"], serde_json::json!(["latest"]));
    assert_eq!(tags["name"], repo);
}

#[tokio::test]
async fn uploads_refuse_bad_digests_and_out_of_order_chunks() {
    let s = Server::start();
    let c = Client::new();
    let repo = "bad/inputs";
    let data = payload(1000, 3);

    // Monolithic POST with the wrong digest: 400 DIGEST_INVALID, and no blob.
    let wrong = digest_of(b"something else");
    expect_error(
        c.post(s.at(&format!("/v2/{repo}/blobs/uploads/?digest={wrong}")))
            .body(data.clone()),
        StatusCode::BAD_REQUEST,
        "DIGEST_INVALID",
    )
    .await;
    let head = c
        .head(s.at(&format!("/v2/{repo}/blobs/{wrong}")))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), StatusCode::NOT_FOUND);

    // Monolithic POST with the right digest: 201.
    let right = digest_of(&data);
    let reply = c
        .post(s.at(&format!("/v2/{repo}/blobs/uploads/?digest={right}")))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), StatusCode::CREATED);
    let got = c
        .get(s.at(&format!("/v2/{repo}/blobs/{right}")))
        .send()
        .await
        .unwrap();
    assert!(got.bytes().await.unwrap() == data);

    // A chunk that does not start where the upload stands: 416 with the real Range.
    let loc = open_upload(&c, &s, repo).await;
    let loc = patch_chunks(&c, &s, loc, &data[..500], 500).await;
    let skip = c
        .patch(resolve(&s, &loc))
        .header(header::CONTENT_RANGE, "600-699")
        .body(data[600..700].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(skip.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(skip.headers()[header::RANGE], "0-499");
    // The spec's `bytes=` form goes on from where it stands.
    let next = c
        .patch(resolve(&s, &loc))
        .header(header::CONTENT_RANGE, "bytes=500-999")
        .body(data[500..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(next.status(), StatusCode::ACCEPTED);
    // Closing with a digest that does not match: 400 DIGEST_INVALID, and the upload is gone.
    let close = c.put(with_digest(&s, &loc, &wrong)).send().await.unwrap();
    assert_eq!(close.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(close).await, "DIGEST_INVALID");
    let gone = c.get(resolve(&s, &loc)).send().await.unwrap();
    assert_eq!(gone.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(gone).await, "BLOB_UPLOAD_UNKNOWN");

    // Cancel: 204, then the upload is unknown.
    let loc = open_upload(&c, &s, repo).await;
    let cancel = c.delete(resolve(&s, &loc)).send().await.unwrap();
    assert_eq!(cancel.status(), StatusCode::NO_CONTENT);
    let after = c
        .patch(resolve(&s, &loc))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), StatusCode::NOT_FOUND);

    // Manifests: a digest reference that is not the body's digest, a body that is not
    // JSON, an unknown tag, a bad name.
    let m = br#"{"schemaVersion":2}"#.to_vec();
    expect_error(
        c.put(s.at(&format!("/v2/{repo}/manifests/{wrong}")))
            .body(m.clone()),
        StatusCode::BAD_REQUEST,
        "DIGEST_INVALID",
    )
    .await;
    let not_json = c
        .put(s.at(&format!("/v2/{repo}/manifests/v1")))
        .body("nope")
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(not_json).await, "MANIFEST_INVALID");
    expect_error(
        c.get(s.at(&format!("/v2/{repo}/manifests/v1"))),
        StatusCode::NOT_FOUND,
        "MANIFEST_UNKNOWN",
    )
    .await;
    expect_error(
        c.post(s.at("/v2/Upper/blobs/uploads/")),
        StatusCode::BAD_REQUEST,
        "NAME_INVALID",
    )
    .await;
    let no_repo = c
        .get(s.at("/v2/never/pushed/tags/list"))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(no_repo).await, "NAME_UNKNOWN");
}

#[tokio::test]
async fn a_closing_put_out_of_order_is_416_and_the_upload_goes_on() {
    let s = Server::start();
    let c = Client::new();
    let data = payload(1000, 9);
    for (repo, digest) in [("ooo/a", digest_of(&data)), ("ooo/b", sha512_of(&data))] {
        let loc = open_upload(&c, &s, repo).await;
        let loc = patch_chunks(&c, &s, loc, &data[..500], 500).await;
        // The last chunk, said to start past where the upload stands.
        let skip = c
            .put(with_digest(&s, &loc, &digest))
            .header(header::CONTENT_RANGE, "600-999")
            .body(data[600..].to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(skip.status(), StatusCode::RANGE_NOT_SATISFIABLE, "{repo}");
        assert_eq!(skip.headers()[header::RANGE], "0-499", "{repo}");
        assert_eq!(error_code(skip).await, "BLOB_UPLOAD_INVALID");
        // Nothing was appended and the session is still there.
        let status = c.get(resolve(&s, &loc)).send().await.unwrap();
        assert_eq!(status.status(), StatusCode::NO_CONTENT, "{repo}");
        assert_eq!(status.headers()[header::RANGE], "0-499", "{repo}");
        expect_status(
            c.head(s.at(&format!("/v2/{repo}/blobs/{digest}"))),
            StatusCode::NOT_FOUND,
        )
        .await;
        // The same chunk from where it stands closes it.
        let done = c
            .put(with_digest(&s, &loc, &digest))
            .header(header::CONTENT_RANGE, "500-999")
            .body(data[500..].to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(done.status(), StatusCode::CREATED, "{repo}");
        let got = c
            .get(s.at(&format!("/v2/{repo}/blobs/{digest}")))
            .send()
            .await
            .unwrap();
        assert!(got.bytes().await.unwrap() == data, "{repo}");
    }
}

#[tokio::test]
async fn a_reference_no_manifest_can_have_is_unknown_on_get_and_head() {
    let s = Server::start();
    let c = Client::new();
    put_manifest(&c, &s, "refs/x", "v1", EMPTY_MANIFEST).await;
    let manifest = |r: &str| s.at(&format!("/v2/refs/x/manifests/{r}"));
    for reference in [".INVALID_MANIFEST_NAME", "-v1", "sha256:0", "md5:abc"] {
        expect_error(
            c.get(manifest(reference)),
            StatusCode::NOT_FOUND,
            "MANIFEST_UNKNOWN",
        )
        .await;
        expect_status(c.head(manifest(reference)), StatusCode::NOT_FOUND).await;
    }
    // A PUT still says what is wrong with it.
    expect_error(
        c.put(manifest(".INVALID_MANIFEST_NAME"))
            .header(
                header::CONTENT_TYPE,
                "application/vnd.oci.image.manifest.v1+json",
            )
            .body(EMPTY_MANIFEST.to_vec()),
        StatusCode::BAD_REQUEST,
        "TAG_INVALID",
    )
    .await;
    expect_status(c.get(manifest("v1")), StatusCode::OK).await;
}

#[tokio::test]
async fn openapi_documents_the_oci_routes() {
    let s = Server::start();
    let doc = get(&s.at("/openapi.json")).await.json;
    for (path, methods) in [
        ("/v2/", &["get"][..]),
        ("/v2/{name}/blobs/uploads/", &["post"]),
        (
            "/v2/{name}/blobs/uploads/{id}",
            &["get", "patch", "put", "delete"],
        ),
        ("/v2/{name}/blobs/{digest}", &["get", "head", "delete"]),
        (
            "/v2/{name}/manifests/{reference}",
            &["get", "head", "put", "delete"],
        ),
        ("/v2/{name}/tags/list", &["get"]),
        ("/v2/_catalog", &["get"]),
        ("/v2/{name}/referrers/{digest}", &["get"]),
        ("/v2/token", &["get"]),
    ] {
        for m in methods {
            assert!(
                doc["paths"][path][m].is_object(),
                "openapi lacks {m} {path}"
            );
        }
    }
    let other = call(Method::POST, &s.at("/v2/a/tags/list"), None).await;
    assert_eq!(other.status, 405);
}

/// Uploads `data` to `repo` in one POST; answers its digest.
async fn push_blob(c: &Client, s: &Server, repo: &str, data: &[u8]) -> String {
    let digest = digest_of(data);
    let reply = c
        .post(s.at(&format!("/v2/{repo}/blobs/uploads/?digest={digest}")))
        .body(data.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), StatusCode::CREATED);
    digest
}

/// Puts `manifest` under `reference`; answers the reply.
async fn put_manifest(
    c: &Client,
    s: &Server,
    repo: &str,
    reference: &str,
    manifest: &[u8],
) -> reqwest::Response {
    let reply = c
        .put(s.at(&format!("/v2/{repo}/manifests/{reference}")))
        .header(
            header::CONTENT_TYPE,
            "application/vnd.oci.image.manifest.v1+json",
        )
        .body(manifest.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), StatusCode::CREATED);
    reply
}

async fn status_of(req: reqwest::RequestBuilder) -> StatusCode {
    req.send().await.unwrap().status()
}

async fn expect_status(req: reqwest::RequestBuilder, status: StatusCode) {
    assert_eq!(status_of(req).await, status);
}

#[tokio::test]
async fn blobs_are_mounted_across_repositories_and_deleted_per_repository() {
    let s = Server::start();
    let c = Client::new();
    let data = payload(4096, 9);
    let digest = push_blob(&c, &s, "team/a", &data).await;
    let blob = |repo: &str| s.at(&format!("/v2/{repo}/blobs/{digest}"));

    // A repository that never received the blob does not serve it.
    expect_status(c.head(blob("team/b")), StatusCode::NOT_FOUND).await;
    // Mount from a repository holding it: 201 naming the blob, no session.
    let mount =
        |repo: &str, query: String| c.post(s.at(&format!("/v2/{repo}/blobs/uploads/?{query}")));
    let mounted = mount("team/b", format!("mount={digest}&from=team/a"))
        .send()
        .await
        .unwrap();
    assert_eq!(mounted.status(), StatusCode::CREATED);
    assert_eq!(location(&mounted), format!("/v2/team/b/blobs/{digest}"));
    assert_eq!(mounted.headers()["docker-content-digest"], digest.as_str());
    let got = c.get(blob("team/b")).send().await.unwrap();
    assert!(got.bytes().await.unwrap() == data);
    // From a repository that does not hold it, or of an unknown digest: a session instead.
    let not_there = mount("team/c", format!("mount={digest}&from=team/zzz"))
        .send()
        .await
        .unwrap();
    assert_eq!(not_there.status(), StatusCode::ACCEPTED);
    assert!(location(&not_there).starts_with("/v2/team/c/blobs/uploads/"));
    let unknown = digest_of(b"never stored");
    expect_status(
        mount("team/c", format!("mount={unknown}&from=team/a")),
        StatusCode::ACCEPTED,
    )
    .await;
    expect_status(c.head(blob("team/c")), StatusCode::NOT_FOUND).await;
    // Without `from`, any stored blob with that digest is found.
    expect_status(
        mount("team/d", format!("mount={digest}")),
        StatusCode::CREATED,
    )
    .await;

    // Deleting drops one repository's hold only: 202, then 404 there, 200 elsewhere.
    expect_status(c.delete(blob("team/a")), StatusCode::ACCEPTED).await;
    expect_error(c.get(blob("team/a")), StatusCode::NOT_FOUND, "BLOB_UNKNOWN").await;
    expect_error(
        c.delete(blob("team/a")),
        StatusCode::NOT_FOUND,
        "BLOB_UNKNOWN",
    )
    .await;
    expect_status(c.head(blob("team/b")), StatusCode::OK).await;
    // Once the last holder lets go the content is gone: nothing left to discover.
    expect_status(c.delete(blob("team/b")), StatusCode::ACCEPTED).await;
    expect_status(c.delete(blob("team/d")), StatusCode::ACCEPTED).await;
    expect_status(
        mount("team/e", format!("mount={digest}")),
        StatusCode::ACCEPTED,
    )
    .await;
    // The same bytes pushed again are stored anew.
    push_blob(&c, &s, "team/a", &data).await;
    let again = c.get(blob("team/a")).send().await.unwrap();
    assert!(again.bytes().await.unwrap() == data);

    expect_error(
        c.delete(s.at("/v2/team/a/blobs/sha256:nothex")),
        StatusCode::BAD_REQUEST,
        "DIGEST_INVALID",
    )
    .await;
    expect_error(
        mount("team/a", "mount=sha256:short&from=team/b".into()),
        StatusCode::BAD_REQUEST,
        "DIGEST_INVALID",
    )
    .await;
    expect_error(
        mount("team/a", format!("mount={digest}&from=Bad//name")),
        StatusCode::BAD_REQUEST,
        "NAME_INVALID",
    )
    .await;
}

#[tokio::test]
async fn deleting_a_tag_keeps_the_manifest_and_deleting_a_digest_drops_its_tags() {
    let s = Server::start();
    let c = Client::new();
    let manifest = EMPTY_MANIFEST;
    let digest = digest_of(manifest);
    for (repo, reference) in [("vm/x", "v1"), ("vm/x", "v2"), ("vm/y", digest.as_str())] {
        put_manifest(&c, &s, repo, reference, manifest).await;
    }
    let url = |repo: &str, r: &str| s.at(&format!("/v2/{repo}/manifests/{r}"));

    // A tag delete: 202; the tag is gone, the manifest and the other tag stay.
    assert_eq!(
        status_of(c.delete(url("vm/x", "v2"))).await,
        StatusCode::ACCEPTED
    );
    expect_error(
        c.get(url("vm/x", "v2")),
        StatusCode::NOT_FOUND,
        "MANIFEST_UNKNOWN",
    )
    .await;
    assert_eq!(status_of(c.get(url("vm/x", "v1"))).await, StatusCode::OK);
    assert_eq!(status_of(c.get(url("vm/x", &digest))).await, StatusCode::OK);
    expect_error(
        c.delete(url("vm/x", "v2")),
        StatusCode::NOT_FOUND,
        "MANIFEST_UNKNOWN",
    )
    .await;

    // A digest delete: 202; the manifest and every tag naming it are gone.
    assert_eq!(
        status_of(c.delete(url("vm/x", &digest))).await,
        StatusCode::ACCEPTED
    );
    for r in ["v1", digest.as_str()] {
        expect_error(
            c.get(url("vm/x", r)),
            StatusCode::NOT_FOUND,
            "MANIFEST_UNKNOWN",
        )
        .await;
    }
    let tags: Value = c
        .get(s.at("/v2/vm/x/tags/list"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(tags["tags"], serde_json::json!([]));
    // The same bytes held by another repository are still served there, byte for byte.
    let other = c.get(url("vm/y", &digest)).send().await.unwrap();
    assert_eq!(other.status(), StatusCode::OK);
    assert_eq!(other.bytes().await.unwrap().as_ref(), manifest);
    expect_error(
        c.delete(url("vm/x", &digest)),
        StatusCode::NOT_FOUND,
        "MANIFEST_UNKNOWN",
    )
    .await;
    expect_error(
        c.delete(url("vm/x", "sha256:0")),
        StatusCode::BAD_REQUEST,
        "DIGEST_INVALID",
    )
    .await;
    expect_error(
        c.delete(url("vm/x", ".bad")),
        StatusCode::BAD_REQUEST,
        "TAG_INVALID",
    )
    .await;
    // Pushed again after its delete, it is back.
    put_manifest(&c, &s, "vm/x", "v1", manifest).await;
    let back = c.get(url("vm/x", "v1")).send().await.unwrap();
    assert_eq!(back.bytes().await.unwrap().as_ref(), manifest);
}

/// Follows a listing's pages `n` at a time; answers every entry under `field` and the
/// number of pages.
async fn all_pages(c: &Client, s: &Server, first: &str, field: &str) -> (Vec<String>, usize) {
    let (mut url, mut got, mut pages) = (s.at(first), Vec::new(), 0);
    loop {
        let reply = c.get(&url).send().await.unwrap();
        assert_eq!(reply.status(), StatusCode::OK);
        let link = reply
            .headers()
            .get(header::LINK)
            .map(|l| l.to_str().unwrap().to_string());
        let body: Value = reply.json().await.unwrap();
        for v in body[field].as_array().unwrap() {
            got.push(v.as_str().unwrap().to_string());
        }
        pages += 1;
        let Some(link) = link else {
            return (got, pages);
        };
        assert!(link.ends_with(">; rel=\"next\""), "{link}");
        url = s.at(&link[1..link.find('>').unwrap()]);
    }
}

#[tokio::test]
async fn catalog_and_tags_are_paginated_with_n_last_and_link() {
    let s = Server::start();
    let c = Client::new();
    let repos = ["p/a", "p/b", "p/c", "p/d", "p/e"];
    for r in repos {
        push_blob(&c, &s, r, r.as_bytes()).await;
    }
    let manifest = br#"{"schemaVersion":2}"#;
    let tags = ["t0", "t1", "t2", "t3", "t4", "t5", "t6"];
    for t in tags {
        put_manifest(&c, &s, "p/a", t, manifest).await;
    }

    let (names, pages) = all_pages(&c, &s, "/v2/_catalog?n=2", "repositories").await;
    assert_eq!(names, repos);
    assert_eq!(pages, 3);
    let (listed, pages) = all_pages(&c, &s, "/v2/p/a/tags/list?n=3", "tags").await;
    assert_eq!(listed, tags);
    assert_eq!(pages, 3);
    // A page that holds the rest has no Link; `last` starts after the name given.
    let (rest, pages) = all_pages(&c, &s, "/v2/p/a/tags/list?n=10&last=t4", "tags").await;
    assert_eq!((rest, pages), (vec!["t5".to_string(), "t6".into()], 1));
    let (all, pages) = all_pages(&c, &s, "/v2/_catalog", "repositories").await;
    assert_eq!((all.len(), pages), (5, 1));
    let (none, _) = all_pages(&c, &s, "/v2/p/a/tags/list?n=0", "tags").await;
    assert!(none.is_empty());

    for bad in ["/v2/_catalog?n=-1", "/v2/p/a/tags/list?n=many"] {
        expect_error(
            c.get(s.at(bad)),
            StatusCode::BAD_REQUEST,
            "PAGINATION_NUMBER_INVALID",
        )
        .await;
    }
}

#[tokio::test]
async fn referrers_list_the_manifests_whose_subject_is_a_digest() {
    let s = Server::start();
    let c = Client::new();
    let repo = "art/app";
    let image = EMPTY_MANIFEST;
    let image_digest = digest_of(image);
    put_manifest(&c, &s, repo, "v1", image).await;
    let artifact = |kind: &str, note: &str| {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","artifactType":"{kind}","config":{{"mediaType":"application/vnd.oci.empty.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2}},"layers":[],"subject":{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{image_digest}","size":{}}},"annotations":{{"note":"{note}"}}}}"#,
            image.len()
        )
        .into_bytes()
    };
    let signature = artifact("application/vnd.example.signature", "sig");
    let sbom = artifact("application/vnd.example.sbom", "sbom");
    for m in [&signature, &sbom] {
        let reply = put_manifest(&c, &s, repo, &digest_of(m), m).await;
        assert_eq!(reply.headers()["oci-subject"], image_digest.as_str());
    }
    // A manifest without a subject says nothing of one.
    let plain = put_manifest(&c, &s, repo, "v2", br#"{"schemaVersion":2,"x":1}"#).await;
    assert!(plain.headers().get("oci-subject").is_none());

    let referrers = |query: &str| {
        c.get(s.at(&format!("/v2/{repo}/referrers/{image_digest}{query}")))
            .send()
    };
    let all = referrers("").await.unwrap();
    assert_eq!(all.status(), StatusCode::OK);
    assert_eq!(
        all.headers()[header::CONTENT_TYPE],
        "application/vnd.oci.image.index.v1+json"
    );
    assert!(all.headers().get("oci-filters-applied").is_none());
    let index: Value = all.json().await.unwrap();
    assert_eq!(index["schemaVersion"], 2);
    let manifests = index["manifests"].as_array().unwrap();
    assert_eq!(manifests.len(), 2);
    let sig = manifests
        .iter()
        .find(|d| d["digest"] == digest_of(&signature).as_str())
        .unwrap();
    assert_eq!(sig["artifactType"], "application/vnd.example.signature");
    assert_eq!(sig["size"], signature.len());
    assert_eq!(sig["annotations"]["note"], "sig");
    assert_eq!(
        sig["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );

    let filtered = referrers("?artifactType=application/vnd.example.sbom")
        .await
        .unwrap();
    assert_eq!(filtered.headers()["oci-filters-applied"], "artifactType");
    let index: Value = filtered.json().await.unwrap();
    assert_eq!(index["manifests"].as_array().unwrap().len(), 1);
    assert_eq!(index["manifests"][0]["digest"], digest_of(&sbom).as_str());

    // Deleting a referrer takes it off the list; a digest nothing refers to has an empty one.
    let url = s.at(&format!("/v2/{repo}/manifests/{}", digest_of(&sbom)));
    assert_eq!(status_of(c.delete(url)).await, StatusCode::ACCEPTED);
    let index: Value = referrers("").await.unwrap().json().await.unwrap();
    assert_eq!(index["manifests"].as_array().unwrap().len(), 1);
    let lonely = c
        .get(s.at(&format!("/v2/{repo}/referrers/{}", digest_of(b"x"))))
        .send()
        .await
        .unwrap();
    assert_eq!(lonely.status(), StatusCode::OK);
    let index: Value = lonely.json().await.unwrap();
    assert_eq!(index["manifests"], serde_json::json!([]));

    expect_error(
        c.get(s.at(&format!("/v2/{repo}/referrers/sha256:zz"))),
        StatusCode::BAD_REQUEST,
        "DIGEST_INVALID",
    )
    .await;
    let bad_subject = br#"{"schemaVersion":2,"subject":{"digest":"nope"}}"#;
    expect_error(
        c.put(s.at(&format!("/v2/{repo}/manifests/v3")))
            .body(bad_subject.to_vec()),
        StatusCode::BAD_REQUEST,
        "MANIFEST_INVALID",
    )
    .await;
}

/// GETs `path` and answers its JSON body.
async fn get_json(c: &Client, s: &Server, path: &str) -> Value {
    c.get(s.at(path))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// A manifest of its own for each `n`.
fn numbered_manifest(n: u32) -> Vec<u8> {
    format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","layers":[],"annotations":{{"n":"{n}"}}}}"#
    )
    .into_bytes()
}

#[tokio::test]
async fn repositories_manifests_and_tags_are_capped_and_a_refusal_changes_nothing() {
    let s = Server::start_with(&["--max-templates", "2", "--max-versions", "2"]);
    let c = Client::new();
    let put = |repo: &str, reference: &str, n: u32| {
        c.put(s.at(&format!("/v2/{repo}/manifests/{reference}")))
            .header(
                header::CONTENT_TYPE,
                "application/vnd.oci.image.manifest.v1+json",
            )
            .body(numbered_manifest(n))
    };
    let m = |n: u32| digest_of(&numbered_manifest(n));
    put_manifest(&c, &s, "vm/a", "t1", &numbered_manifest(1)).await;
    put_manifest(&c, &s, "vm/a", "t2", &numbered_manifest(2)).await;

    // A third manifest, under a new tag or by digest, is refused and leaves nothing behind.
    expect_error(put("vm/a", "t3", 3), StatusCode::FORBIDDEN, "DENIED").await;
    expect_error(put("vm/a", &m(3), 3), StatusCode::FORBIDDEN, "DENIED").await;
    for r in ["t3".to_string(), m(3)] {
        let url = s.at(&format!("/v2/vm/a/manifests/{r}"));
        expect_error(c.get(url), StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
    }
    // At the cap what is there already goes through; a third tag does not.
    put_manifest(&c, &s, "vm/a", "t1", &numbered_manifest(1)).await;
    put_manifest(&c, &s, "vm/a", "t2", &numbered_manifest(1)).await;
    expect_error(put("vm/a", "t9", 2), StatusCode::FORBIDDEN, "DENIED").await;
    let tags = get_json(&c, &s, "/v2/vm/a/tags/list").await;
    assert_eq!(tags["tags"], serde_json::json!(["t1", "t2"]));
    // Room made by a delete is room again.
    let t2 = s.at("/v2/vm/a/manifests/t2");
    assert_eq!(status_of(c.delete(t2)).await, StatusCode::ACCEPTED);
    put_manifest(&c, &s, "vm/a", "t9", &numbered_manifest(2)).await;

    // Repositories: a second one fits; a third is refused by an upload, a mount or a manifest.
    let blob = push_blob(&c, &s, "vm/b", b"layer").await;
    let upload = s.at("/v2/vm/c/blobs/uploads/");
    expect_error(c.post(upload.clone()), StatusCode::FORBIDDEN, "DENIED").await;
    let mount = format!("{upload}?mount={blob}&from=vm/b");
    expect_error(c.post(mount), StatusCode::FORBIDDEN, "DENIED").await;
    expect_error(put("vm/c", "t1", 1), StatusCode::FORBIDDEN, "DENIED").await;
    let catalog = get_json(&c, &s, "/v2/_catalog").await;
    assert_eq!(catalog["repositories"], serde_json::json!(["vm/a", "vm/b"]));
    // A repository that is there still takes uploads.
    push_blob(&c, &s, "vm/a", b"another layer").await;
}

fn sha512_of(bytes: &[u8]) -> String {
    format!("sha512:{}", hex::encode(sha2::Sha512::digest(bytes)))
}

/// The objects holding OCI content (`blobs/oci/…`), read from the namespace's store.
async fn oci_objects(ns: &Namespace) -> usize {
    if !s3_backend() {
        let dir = ns.dir.join("data/objects/blobs/oci");
        return std::fs::read_dir(dir).map_or(0, |d| d.count());
    }
    let (_, blobs) = common::stores::stores(ns).await;
    blobs.list("blobs/oci/").await.unwrap().len()
}

#[tokio::test]
async fn sha512_digests_name_blobs_and_manifests_and_content_is_stored_once() {
    // Small parts, so a chunked blob spans several and its SHA-512 is checked on the
    // stored bytes.
    let s = Server::start_with(&["--part-size", "5MiB"]);
    let c = Client::new();
    let small = payload(4096, 21);
    let (d256, d512) = (digest_of(&small), sha512_of(&small));
    let blob = |repo: &str, d: &str| s.at(&format!("/v2/{repo}/blobs/{d}"));

    // Monolithic by SHA-512: 201 naming it in the asked algorithm.
    let reply = c
        .post(s.at(&format!("/v2/x/a/blobs/uploads/?digest={d512}")))
        .body(small.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), StatusCode::CREATED);
    assert_eq!(reply.headers()["docker-content-digest"], d512.as_str());
    assert_eq!(location(&reply), format!("/v2/x/a/blobs/{d512}"));
    let got = c.get(blob("x/a", &d512)).send().await.unwrap();
    assert_eq!(got.headers()["docker-content-digest"], d512.as_str());
    assert!(got.bytes().await.unwrap() == small);
    let ranged = c
        .get(blob("x/a", &d512))
        .header(header::RANGE, "bytes=4000-")
        .send()
        .await
        .unwrap();
    assert_eq!(ranged.status(), StatusCode::PARTIAL_CONTENT);
    assert!(ranged.bytes().await.unwrap() == small[4000..]);
    // A blob is known by the digest it was pushed with.
    expect_status(c.head(blob("x/a", &d256)), StatusCode::NOT_FOUND).await;
    // The same content by SHA-256 in the same and another repository: one stored copy.
    push_blob(&c, &s, "x/a", &small).await;
    push_blob(&c, &s, "x/b", &small).await;
    expect_status(c.head(blob("x/a", &d256)), StatusCode::OK).await;
    assert_eq!(oci_objects(&s.ns).await, 1);

    // A wrong SHA-512: 400 DIGEST_INVALID, nothing stored.
    let wrong = sha512_of(b"other bytes");
    expect_error(
        c.post(s.at(&format!("/v2/x/a/blobs/uploads/?digest={wrong}")))
            .body(small.clone()),
        StatusCode::BAD_REQUEST,
        "DIGEST_INVALID",
    )
    .await;
    expect_status(c.head(blob("x/a", &wrong)), StatusCode::NOT_FOUND).await;

    // Chunked across several parts, closed by SHA-512; then a wrong one leaves nothing.
    let big = payload(12 << 20, 22);
    let big512 = sha512_of(&big);
    let loc = open_upload(&c, &s, "x/a").await;
    let loc = patch_chunks(&c, &s, loc, &big, 3 << 20).await;
    let done = c.put(with_digest(&s, &loc, &big512)).send().await.unwrap();
    assert_eq!(done.status(), StatusCode::CREATED);
    assert_eq!(done.headers()["docker-content-digest"], big512.as_str());
    let got = c.get(blob("x/a", &big512)).send().await.unwrap();
    assert!(got.bytes().await.unwrap() == big);
    let loc = open_upload(&c, &s, "x/a").await;
    let loc = patch_chunks(&c, &s, loc, &big[..6 << 20], 3 << 20).await;
    let wrong_big = sha512_of(&big[..5 << 20]);
    expect_error(
        c.put(with_digest(&s, &loc, &wrong_big)),
        StatusCode::BAD_REQUEST,
        "DIGEST_INVALID",
    )
    .await;
    expect_status(c.head(blob("x/a", &wrong_big)), StatusCode::NOT_FOUND).await;
    assert_eq!(
        oci_objects(&s.ns).await,
        2,
        "the refused upload left no object"
    );

    // Mount by SHA-512 from a repository holding it, or without `from` as by SHA-256.
    let mount = |repo: &str, q: String| c.post(s.at(&format!("/v2/{repo}/blobs/uploads/?{q}")));
    let mounted = mount("x/c", format!("mount={d512}&from=x/a"))
        .send()
        .await
        .unwrap();
    assert_eq!(mounted.status(), StatusCode::CREATED);
    assert_eq!(mounted.headers()["docker-content-digest"], d512.as_str());
    expect_status(c.head(blob("x/c", &d512)), StatusCode::OK).await;
    let discovered = mount("x/d", format!("mount={d512}")).send().await.unwrap();
    assert_eq!(discovered.status(), StatusCode::CREATED);
    assert_eq!(discovered.headers()["docker-content-digest"], d512.as_str());
    let got = c.get(blob("x/d", &d512)).send().await.unwrap();
    assert!(got.bytes().await.unwrap() == small);
    // The chunked one too, and a SHA-512 no blob has opens a session.
    expect_status(mount("x/e", format!("mount={big512}")), StatusCode::CREATED).await;
    let got = c.get(blob("x/e", &big512)).send().await.unwrap();
    assert!(got.bytes().await.unwrap() == big);
    expect_status(mount("x/d", format!("mount={wrong}")), StatusCode::ACCEPTED).await;
    expect_status(c.head(blob("x/d", &wrong)), StatusCode::NOT_FOUND).await;
    expect_status(c.delete(blob("x/d", &d512)), StatusCode::ACCEPTED).await;
    expect_status(c.delete(blob("x/e", &big512)), StatusCode::ACCEPTED).await;
    // Deleting by SHA-512 drops that hold only.
    expect_status(c.delete(blob("x/a", &d512)), StatusCode::ACCEPTED).await;
    expect_status(c.head(blob("x/a", &d512)), StatusCode::NOT_FOUND).await;
    expect_status(c.head(blob("x/a", &d256)), StatusCode::OK).await;
    expect_status(c.head(blob("x/c", &d512)), StatusCode::OK).await;

    // Manifests by SHA-512: pushed, fetched and deleted by it, bytes as pushed.
    let m512 = sha512_of(EMPTY_MANIFEST);
    let put = put_manifest(&c, &s, "x/a", &m512, EMPTY_MANIFEST).await;
    assert_eq!(put.headers()["docker-content-digest"], m512.as_str());
    let manifest = |d: &str| s.at(&format!("/v2/x/a/manifests/{d}"));
    let got = c.get(manifest(&m512)).send().await.unwrap();
    assert_eq!(got.headers()["docker-content-digest"], m512.as_str());
    assert!(got.bytes().await.unwrap() == EMPTY_MANIFEST);
    let tagged = put_manifest(&c, &s, "x/a", "v1", EMPTY_MANIFEST).await;
    let m256 = digest_of(EMPTY_MANIFEST);
    assert_eq!(tagged.headers()["docker-content-digest"], m256.as_str());
    assert_eq!(
        oci_objects(&s.ns).await,
        3,
        "one manifest object for both digests"
    );
    expect_error(
        c.put(manifest(&sha512_of(b"not it")))
            .header(
                header::CONTENT_TYPE,
                "application/vnd.oci.image.manifest.v1+json",
            )
            .body(EMPTY_MANIFEST.to_vec()),
        StatusCode::BAD_REQUEST,
        "DIGEST_INVALID",
    )
    .await;
    expect_status(c.delete(manifest(&m512)), StatusCode::ACCEPTED).await;
    expect_status(c.get(manifest(&m512)), StatusCode::NOT_FOUND).await;
    expect_status(c.get(manifest("v1")), StatusCode::OK).await;
    expect_status(c.delete(manifest(&m256)), StatusCode::ACCEPTED).await;
    assert_eq!(
        oci_objects(&s.ns).await,
        2,
        "the manifest's content went with its last holder"
    );
}

#[tokio::test]
async fn open_uploads_are_capped_by_max_upload_sessions() {
    let s = Server::start_with(&["--max-upload-sessions", "2"]);
    let c = Client::new();
    let data = payload(1000, 5);
    let digest = digest_of(&data);
    let first = open_upload(&c, &s, "cap/a").await;
    let second = open_upload(&c, &s, "cap/b").await;
    // Past the cap: 429 TOOMANYREQUESTS, for a session and a whole blob alike, and
    // nothing is stored.
    let post = |q: &str| c.post(s.at(&format!("/v2/cap/c/blobs/uploads/{q}")));
    expect_error(post(""), StatusCode::TOO_MANY_REQUESTS, "TOOMANYREQUESTS").await;
    expect_error(
        post(&format!("?digest={digest}")).body(data.clone()),
        StatusCode::TOO_MANY_REQUESTS,
        "TOOMANYREQUESTS",
    )
    .await;
    expect_status(
        c.head(s.at(&format!("/v2/cap/c/blobs/{digest}"))),
        StatusCode::NOT_FOUND,
    )
    .await;
    // The open ones go on; a cancelled one and a finished one free their places.
    expect_status(c.delete(resolve(&s, &second)), StatusCode::NO_CONTENT).await;
    let third = open_upload(&c, &s, "cap/c").await;
    let done = c
        .put(with_digest(&s, &third, &digest))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), StatusCode::CREATED);
    let first = patch_chunks(&c, &s, first, &data, 1000).await;
    open_upload(&c, &s, "cap/d").await;
    expect_error(post(""), StatusCode::TOO_MANY_REQUESTS, "TOOMANYREQUESTS").await;
    let status = c.get(resolve(&s, &first)).send().await.unwrap();
    assert_eq!(status.status(), StatusCode::NO_CONTENT);
    assert_eq!(status.headers()[header::RANGE], "0-999");
}

/// A tart-shaped image in `repo` under `tags`: a config and two disk layers; answers
/// the manifest's digest and the layers' total size.
async fn push_vm_image(
    c: &Client,
    s: &Server,
    repo: &str,
    tags: &[&str],
    seed: u8,
) -> (String, u64) {
    let config = br#"{"architecture":"arm64","os":"darwin"}"#;
    let config_digest = push_blob(c, s, repo, config).await;
    let disks = [payload(3000, seed), payload(5000, seed + 1)];
    let mut layers = Vec::new();
    for disk in &disks {
        let digest = push_blob(c, s, repo, disk).await;
        layers.push(serde_json::json!({
            "mediaType": "application/vnd.cirruslabs.tart.disk.v2",
            "digest": digest, "size": disk.len(),
        }));
    }
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config.len()},
        "layers": layers,
    }))
    .unwrap();
    for tag in tags {
        put_manifest(c, s, repo, tag, &manifest).await;
    }
    (digest_of(&manifest), 8000)
}

/// The `/registry/v2/vm` row named `name`, if listed.
async fn vendor_row(s: &Server, name: &str) -> Option<Value> {
    let list = get(&s.at("/registry/v2/vm")).await;
    list.ok_body()
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == name)
        .cloned()
}

#[tokio::test]
async fn oci_repositories_are_listed_as_templates_and_deleted_through_either_api() {
    let s = Server::start();
    let c = Client::new();
    let (_, size) = push_vm_image(&c, &s, "anka/sonoma", &["v1", "latest"], 40).await;
    let (other, _) = push_vm_image(&c, &s, "tart/ventura", &["14.1"], 50).await;
    // A repository without a tag is no template.
    push_blob(&c, &s, "blobs/only", b"no manifest").await;

    let row = vendor_row(&s, "anka/sonoma").await.expect("listed");
    assert_eq!(row["size"], size);
    assert_eq!(row["latest_tag"], "latest");
    assert_eq!(row["version_count"], 2);
    assert_eq!(
        row["versions"],
        serde_json::json!([
            {"number": 0, "tag": "latest", "size": size},
            {"number": 1, "tag": "v1", "size": size},
        ])
    );
    assert!(vendor_row(&s, "blobs/only").await.is_none());
    let id = row["id"].as_str().unwrap().to_string();
    let v1 = get(&s.at("/registry/vm")).await;
    assert!(v1
        .ok_body()
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t[&id] == "anka/sonoma"));
    let html = c.get(s.at("/")).send().await.unwrap().text().await.unwrap();
    assert!(
        html.contains("anka/sonoma") && html.contains("tart/ventura"),
        "{html}"
    );

    // Deleted through the vendor API: gone from both.
    call(
        Method::DELETE,
        &s.at(&format!("/registry/vm?id={id}")),
        None,
    )
    .await
    .ok_body();
    assert!(vendor_row(&s, "anka/sonoma").await.is_none());
    expect_error(
        c.get(s.at("/v2/anka/sonoma/tags/list")),
        StatusCode::NOT_FOUND,
        "NAME_UNKNOWN",
    )
    .await;
    expect_status(
        c.get(s.at("/v2/anka/sonoma/manifests/v1")),
        StatusCode::NOT_FOUND,
    )
    .await;
    let catalog = get_json(&c, &s, "/v2/_catalog").await;
    assert!(!catalog["repositories"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r == "anka/sonoma"));
    call(
        Method::DELETE,
        &s.at(&format!("/registry/vm?id={id}")),
        None,
    )
    .await
    .assert_fail(404);

    // Deleted through `/v2/`: gone from the vendor listing too.
    assert!(vendor_row(&s, "tart/ventura").await.is_some());
    expect_status(
        c.delete(s.at(&format!("/v2/tart/ventura/manifests/{other}"))),
        StatusCode::ACCEPTED,
    )
    .await;
    assert!(vendor_row(&s, "tart/ventura").await.is_none());
}

/// A client that shows redirects instead of following them.
fn not_following() -> Client {
    Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

#[tokio::test]
#[ignore = "S3 + Redis only: VMREG_TEST_BACKEND=s3, --include-ignored (scripts/test.sh)"]
async fn blob_gets_redirect_to_presigned_s3_urls_with_s3_redirect() {
    require_s3_services();
    let ns = Namespace::new();
    let plain = Server::start_in(ns.clone(), &[]);
    let redirecting = Server::start_in(ns.clone(), &["--s3-redirect"]);
    let c = not_following();
    let data = payload((3 << 20) + 17, 41);
    let digest = push_blob(&c, &plain, "ci/app", &data).await;
    let url = |s: &Server| s.at(&format!("/v2/ci/app/blobs/{digest}"));

    // Without the switch the registry streams the bytes itself.
    let reply = c.get(url(&plain)).send().await.unwrap();
    assert_eq!(reply.status(), StatusCode::OK);
    assert_eq!(reply.bytes().await.unwrap(), data);

    // With it, a GET is a 307 to a presigned URL that a plain client fetches unsigned.
    let reply = c.get(url(&redirecting)).send().await.unwrap();
    assert_eq!(reply.status(), StatusCode::TEMPORARY_REDIRECT);
    assert_eq!(reply.headers()["docker-content-digest"], digest.as_str());
    let target = location(&reply);
    assert!(target.contains("X-Amz-Signature"), "{target}");
    assert!(!target.starts_with(&redirecting.url), "{target}");
    let fetched = Client::new().get(&target).send().await.unwrap();
    assert_eq!(fetched.status(), StatusCode::OK);
    assert_eq!(digest_of(&fetched.bytes().await.unwrap()), digest);

    // A Range is redirected too; a client following the redirect gets exactly that range.
    for (client, status) in [
        (&c, StatusCode::TEMPORARY_REDIRECT),
        (&Client::new(), StatusCode::PARTIAL_CONTENT),
    ] {
        let ranged = client
            .get(url(&redirecting))
            .header(header::RANGE, "bytes=1048570-2097160")
            .send()
            .await
            .unwrap();
        assert_eq!(ranged.status(), status);
        if status == StatusCode::PARTIAL_CONTENT {
            let got = ranged.bytes().await.unwrap();
            assert_eq!(
                got,
                data[1048570..=2097160],
                "the range through the redirect"
            );
        }
    }

    // HEAD stays with the registry: size and digest, no hop.
    let head = c.head(url(&redirecting)).send().await.unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(head.headers()["docker-content-digest"], digest.as_str());
    assert_eq!(
        head.headers()[header::CONTENT_LENGTH],
        data.len().to_string().as_str()
    );

    // An unknown blob, or one another repository holds, is the OCI error, never a URL.
    let unknown = digest_of(b"never pushed");
    for path in [
        format!("/v2/ci/app/blobs/{unknown}"),
        format!("/v2/other/app/blobs/{digest}"),
    ] {
        let reply = c.get(redirecting.at(&path)).send().await.unwrap();
        assert!(reply.headers().get(header::LOCATION).is_none(), "{path}");
        assert_eq!(reply.status(), StatusCode::NOT_FOUND, "{path}");
        assert_eq!(error_code(reply).await, "BLOB_UNKNOWN", "{path}");
    }

    // With authentication on, no credentials is a 401 and no URL; the root gets the 307.
    let guarded = Server::start_in(
        ns.clone(),
        &[
            "--s3-redirect",
            "--enable-auth",
            "--root-token",
            "redirect-root-token-0123",
        ],
    );
    let reply = c.get(url(&guarded)).send().await.unwrap();
    assert_eq!(reply.status(), StatusCode::UNAUTHORIZED);
    assert!(reply.headers().get(header::LOCATION).is_none());
    assert_eq!(error_code(reply).await, "UNAUTHORIZED");
    let reply = c
        .get(url(&guarded))
        .basic_auth("root", Some("redirect-root-token-0123"))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), StatusCode::TEMPORARY_REDIRECT);
}

/// The transfer metrics of one server, by series.
async fn metrics_of(c: &Client, s: &Server) -> std::collections::HashMap<String, f64> {
    let text = c.get(s.at("/metrics")).send().await.unwrap().text().await;
    parse_metrics(&text.unwrap())
}

#[tokio::test]
async fn blob_uploads_and_downloads_count_in_the_transfer_metrics() {
    let s = Server::start();
    let c = Client::new();
    let repo = "metrics/blobs";
    let whole = payload(3 << 20, 41);
    let chunked = payload((5 << 20) + 17, 42);
    push_blob(&c, &s, repo, &whole).await;
    let loc = open_upload(&c, &s, repo).await;
    let loc = patch_chunks(&c, &s, loc, &chunked, 2 << 20).await;
    let digest = digest_of(&chunked);
    let reply = c.put(with_digest(&s, &loc, &digest)).send().await.unwrap();
    assert_eq!(reply.status(), StatusCode::CREATED);
    let pulled = c
        .get(s.at(&format!("/v2/{repo}/blobs/{digest}")))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(pulled.len(), chunked.len());

    let m = metrics_of(&c, &s).await;
    let series = |name: &str, direction: &str| {
        m.get(&format!("{name}{{direction=\"{direction}\"}}"))
            .copied()
            .unwrap_or_else(|| panic!("no {name} for {direction}"))
    };
    assert_eq!(
        series("vmreg_transferred_bytes_total", "push"),
        (whole.len() + chunked.len()) as f64,
        "every body byte of both uploads counted once"
    );
    assert_eq!(
        series("vmreg_transferred_bytes_total", "pull"),
        chunked.len() as f64
    );
    assert_eq!(series("vmreg_transfers_in_flight", "push"), 0.0);
    assert_eq!(series("vmreg_transfers_in_flight", "pull"), 0.0);
}

#[tokio::test]
async fn manifests_are_stored_and_served_only_under_manifest_media_types() {
    let s = Server::start();
    let c = Client::new();
    let url = |reference: &str| s.at(&format!("/v2/types/only/manifests/{reference}"));
    let page = br#"{"schemaVersion":2,"layers":[],"x":"<script>alert(document.cookie)</script>"}"#;
    for refused in [
        "text/html",
        "text/html; charset=utf-8",
        "application/json",
        "image/svg+xml",
        "application/vnd.docker.distribution.manifest.v1+prettyjws",
    ] {
        let put = c
            .put(url("v1"))
            .header(header::CONTENT_TYPE, refused)
            .body(page.to_vec());
        expect_error(put, StatusCode::BAD_REQUEST, "MANIFEST_INVALID").await;
    }
    // Without a Content-Type, the body's own mediaType must be a manifest type too.
    let claims_html = br#"{"schemaVersion":2,"mediaType":"text/html"}"#;
    let put = c.put(url("v1")).body(claims_html.to_vec());
    expect_error(put, StatusCode::BAD_REQUEST, "MANIFEST_INVALID").await;
    for stored in ["v1".to_string(), digest_of(page), digest_of(claims_html)] {
        let fetch = c.get(url(&stored));
        expect_error(fetch, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
    }

    // Every manifest type is stored, and served as itself.
    for (tag, kind) in [
        ("oci", "application/vnd.oci.image.manifest.v1+json"),
        ("index", "application/vnd.oci.image.index.v1+json"),
        (
            "docker",
            "application/vnd.docker.distribution.manifest.v2+json",
        ),
        (
            "list",
            "application/vnd.docker.distribution.manifest.list.v2+json",
        ),
    ] {
        let put = c
            .put(url(tag))
            .header(header::CONTENT_TYPE, kind)
            .body(page.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(put.status(), StatusCode::CREATED, "{kind}");
        let got = c.get(url(tag)).send().await.unwrap();
        assert_eq!(got.headers()[header::CONTENT_TYPE], kind);
        assert_eq!(got.headers()["x-content-type-options"], "nosniff");
    }
    // The release candidates' artifact manifest, only with its artifactType.
    let artifact = "application/vnd.oci.artifact.manifest.v1+json";
    let untyped = c
        .put(url("artifact"))
        .header(header::CONTENT_TYPE, artifact)
        .body(page.to_vec());
    expect_error(untyped, StatusCode::BAD_REQUEST, "MANIFEST_INVALID").await;
    let typed = br#"{"mediaType":"application/vnd.oci.artifact.manifest.v1+json","artifactType":"application/x.sig"}"#;
    let put = c
        .put(url("artifact"))
        .header(header::CONTENT_TYPE, artifact)
        .body(typed.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::CREATED);
    let got = c.get(url("artifact")).send().await.unwrap();
    assert_eq!(got.headers()[header::CONTENT_TYPE], artifact);
}

#[tokio::test]
async fn listing_sizes_are_what_the_store_holds_never_what_a_manifest_claims() {
    let s = Server::start();
    let c = Client::new();
    let repo = "claims/huge";
    let disk = payload(3000, 60);
    let disk_digest = push_blob(&c, &s, repo, &disk).await;
    let config = br#"{"architecture":"arm64","os":"darwin"}"#;
    let config_digest = push_blob(&c, &s, repo, config).await;
    // The stored layer claimed as 2^63 - 1 bytes, twice, and a layer never pushed.
    let claimed = |digest: &str, size: u64| {
        serde_json::json!({"mediaType": "application/vnd.cirruslabs.tart.disk.v2",
                           "digest": digest, "size": size})
    };
    let image = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config.len()},
        "layers": [
            claimed(disk_digest.as_str(), i64::MAX as u64),
            claimed(disk_digest.as_str(), i64::MAX as u64),
            claimed(digest_of(b"never pushed").as_str(), 1 << 62),
        ],
    }))
    .unwrap();
    put_manifest(&c, &s, repo, "v1", &image).await;
    // An index claiming 2^62 bytes for that image: its size is the image's stored bytes.
    let index_type = "application/vnd.oci.image.index.v1+json";
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": index_type,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": digest_of(&image), "size": 1u64 << 62}],
    }))
    .unwrap();
    let put = c
        .put(s.at(&format!("/v2/{repo}/manifests/v2")))
        .header(header::CONTENT_TYPE, index_type)
        .body(index)
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::CREATED);

    let row = vendor_row(&s, repo).await.expect("listed");
    assert_eq!(
        row["versions"],
        serde_json::json!([
            {"number": 0, "tag": "v1", "size": disk.len()},
            {"number": 1, "tag": "v2", "size": image.len()},
        ])
    );
    assert_eq!(row["size"], disk.len() + image.len());
    let html = c.get(s.at("/")).send().await.unwrap().text().await.unwrap();
    assert!(!html.contains("EiB") && !html.contains("PiB"), "{html}");
}

#[tokio::test]
async fn a_backend_failure_is_told_with_the_request_id_and_its_detail_only_logged() {
    // The embedded store on every pass: the failure is made in its directory.
    let s = Server::start_in(Namespace::embedded(), &[]);
    let c = Client::new();
    let objects = s.ns.dir.join("data").join("objects");
    std::fs::remove_dir_all(&objects).unwrap();
    std::fs::write(&objects, b"no longer a directory").unwrap();
    let reply = c
        .put(s.at("/v2/broken/store/manifests/v1"))
        .header(
            header::CONTENT_TYPE,
            "application/vnd.oci.image.manifest.v1+json",
        )
        .header("x-request-id", "failing-put-1")
        .body(EMPTY_MANIFEST.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.headers()["x-request-id"], "failing-put-1");
    let body: Value = reply.json().await.unwrap();
    let error = &body["errors"][0];
    assert_eq!(error["code"], "UNAVAILABLE");
    assert_eq!(
        error["message"],
        "storage backend unavailable; retry later (request id failing-put-1)"
    );
    assert_eq!(
        error["detail"],
        serde_json::json!({"request_id": "failing-put-1"})
    );
    // What failed is in the log, on a line naming the request.
    let log = s.log();
    assert!(
        log.lines()
            .any(|l| l.contains("failing-put-1") && l.contains("Not a directory")),
        "{log}"
    );
}
