//! The OCI Distribution API under `/v2/`, driven over HTTP against the real binary the
//! way tart's client drives it, on whichever backend `VMREG_TEST_BACKEND` selects.

mod common;

use common::*;
use reqwest::{header, Client, Method, StatusCode};
use serde_json::Value;
use sha2::Digest;

const API_VERSION: &str = "docker-distribution-api-version";

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
        ("/v2/{name}/blobs/{digest}", &["get", "head"]),
        ("/v2/{name}/manifests/{reference}", &["get", "head", "put"]),
        ("/v2/{name}/tags/list", &["get"]),
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
