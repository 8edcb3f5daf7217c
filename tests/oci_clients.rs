//! Real OCI clients against the real binary: oras-py (PyPI) pushes and pulls artifacts,
//! chunked and monolithic, with authentication off and on, and (on S3) through blob GETs
//! redirected to presigned URLs; skopeo (Debian) copies an OCI
//! layout of a tart-shaped VM (one disk piece of 512 MiB) up and back, twice, and an index of
//! `tar+gzip` layers; the `oci-client`
//! crate pushes and pulls one, chunked and monolithic, anonymously and through the token
//! flow. `scripts/test.sh` installs oras into `target/oras-venv` (naming its Python in
//! `VMREG_TEST_ORAS_PYTHON`) and skopeo with apt; without them their tests fail rather
//! than pass unchecked, so a plain `cargo test` skips those two.

mod common;

use common::*;

const ROOT_TOKEN: &str = "oras-root-token-0123456789";

/// Runs `tests/oras/roundtrip.py` against `server`; fails the test with its output.
fn roundtrip(server: &Server, login: Option<(&str, &str)>) {
    let python = std::env::var("VMREG_TEST_ORAS_PYTHON").unwrap_or_else(|_| {
        panic!("VMREG_TEST_ORAS_PYTHON is not set: run the suite through scripts/test.sh")
    });
    let host = server.at("");
    let host = host.trim_start_matches("http://");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/oras/roundtrip.py");
    let mut cmd = std::process::Command::new(python);
    cmd.arg(script).arg(host);
    if let Some((user, password)) = login {
        cmd.args([user, password]);
    }
    let out = cmd.output().expect("python runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "oras roundtrip failed:\n{text}");
    assert!(text.contains("oras roundtrip: ok"), "{text}");
}

#[test]
#[ignore = "needs oras-py: scripts/test.sh installs it"]
fn oras_pushes_and_pulls_artifacts() {
    roundtrip(&Server::start(), None);
}

#[test]
#[ignore = "needs oras-py: scripts/test.sh installs it"]
fn oras_logs_in_through_the_bearer_challenge_and_pushes_and_pulls() {
    let server = Server::start_with(&["--enable-auth", "--root-token", ROOT_TOKEN]);
    roundtrip(&server, Some(("root", ROOT_TOKEN)));
}

#[tokio::test]
#[ignore = "needs oras-py: scripts/test.sh installs it"]
async fn oras_follows_blob_redirects_to_presigned_s3_urls() {
    // On S3, blob GETs are 307s to presigned URLs that oras must follow; the embedded store
    // cannot presign, and there this is a plain roundtrip.
    let server = Server::start_with(&["--s3-redirect"]);
    roundtrip(&server, None);
    let text = reqwest::get(server.at("/metrics")).await.unwrap().text();
    let metrics = parse_metrics(&text.await.unwrap());
    let redirects: f64 = metrics
        .iter()
        .filter(|(k, _)| {
            k.starts_with("vmreg_http_requests_total{")
                && k.contains("blobs")
                && k.contains("status=\"307\"")
        })
        .map(|(_, v)| v)
        .sum();
    assert_eq!(redirects > 0.0, s3_backend(), "blob redirects: {redirects}");
}

/// Writes `bytes` as a blob of an OCI layout; answers its descriptor.
fn layout_blob(dir: &std::path::Path, media_type: &str, bytes: &[u8]) -> serde_json::Value {
    let hex = sha256_hex(bytes);
    std::fs::write(dir.join("blobs/sha256").join(&hex), bytes).unwrap();
    serde_json::json!({"mediaType": media_type, "digest": format!("sha256:{hex}"), "size": bytes.len()})
}

/// The size of tart's largest disk piece: 512 MiB.
const BIG_DISK: usize = 512 << 20;

/// Writes a blob of `size` bytes to an OCI layout without holding it in memory: a random
/// first block, so no two runs push the same bytes, then a pseudo-random MiB repeated with
/// its index stamped in front, so the blocks differ. Answers its descriptor.
fn big_layout_blob(dir: &std::path::Path, media_type: &str, size: usize) -> serde_json::Value {
    use sha2::Digest;
    use std::io::Write;
    const BLOCK: usize = 1 << 20;
    let tmp = dir.join("blobs/big.partial");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&tmp).unwrap());
    let mut hasher = sha2::Sha256::new();
    let mut block = pseudo_random(BLOCK, 4242);
    block[8..24].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    for i in 0..size / BLOCK {
        block[..8].copy_from_slice(&(i as u64).to_le_bytes());
        hasher.update(&block);
        out.write_all(&block).unwrap();
    }
    out.flush().unwrap();
    drop(out);
    let hex = hex::encode(hasher.finalize());
    std::fs::rename(&tmp, dir.join("blobs/sha256").join(&hex)).unwrap();
    serde_json::json!({"mediaType": media_type, "digest": format!("sha256:{hex}"), "size": size})
}

/// Lowercase hex SHA-256 of a file, read in pieces.
fn file_sha256(path: &std::path::Path) -> String {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    std::io::copy(&mut std::fs::File::open(path).unwrap(), &mut hasher).unwrap();
    hex::encode(hasher.finalize())
}

/// An OCI layout holding a tart-shaped VM under tag `v1`: a stub OCI config, the VM
/// config layer, three LZ4-like disk pieces with tart's annotations (the last a full
/// 512 MiB piece, tart's largest), and the nvram.
/// Answers the manifest's bytes and its layers' descriptors.
fn tart_layout(dir: &std::path::Path) -> (Vec<u8>, Vec<serde_json::Value>) {
    std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let config = layout_blob(
        dir,
        "application/vnd.oci.image.config.v1+json",
        br#"{"architecture":"arm64","os":"darwin","config":{"Labels":{}}}"#,
    );
    let mut layers = vec![layout_blob(
        dir,
        "application/vnd.cirruslabs.tart.config.v1",
        br#"{"version":1,"os":"darwin","arch":"arm64","cpuCount":4,"memorySize":8589934592}"#,
    )];
    let mut disks = vec![(0u64, 1 << 20), (1, 300_000)];
    disks.push((2, BIG_DISK));
    for (i, size) in disks {
        let mut disk = match size {
            BIG_DISK => big_layout_blob(dir, "application/vnd.cirruslabs.tart.disk.v2", size),
            _ => layout_blob(
                dir,
                "application/vnd.cirruslabs.tart.disk.v2",
                &pseudo_random(size, 70 + i),
            ),
        };
        disk["annotations"] = serde_json::json!({
            "org.cirruslabs.tart.uncompressed-size": (size * 2).to_string(),
            "org.cirruslabs.tart.uncompressed-content-digest": format!("sha256:{}", sha256_hex(&[i as u8])),
        });
        layers.push(disk);
    }
    layers.push(layout_blob(
        dir,
        "application/vnd.cirruslabs.tart.nvram.v1",
        &pseudo_random(4096, 79),
    ));
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config,
        "layers": layers,
    }))
    .unwrap();
    let mut descriptor = layout_blob(dir, "application/vnd.oci.image.manifest.v1+json", &manifest);
    descriptor["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": "v1"});
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [descriptor]});
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    (manifest, layers)
}

/// Runs skopeo with `args`; fails the test with its output unless it succeeds. Answers
/// its stdout.
fn skopeo(args: &[&str]) -> Vec<u8> {
    let out = std::process::Command::new("skopeo")
        .args(args)
        .output()
        .expect("skopeo runs (scripts/test.sh installs it)");
    assert!(
        out.status.success(),
        "skopeo {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[test]
#[ignore = "needs skopeo: scripts/test.sh installs it"]
fn skopeo_copies_a_tart_vm_layout_up_and_back_byte_for_byte() {
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();
    let (up, down) = (work.path().join("up"), work.path().join("down"));
    let (manifest, layers) = tart_layout(&up);
    let remote = format!(
        "docker://{}/tart/sonoma:v1",
        server
            .at("")
            .trim_start_matches("http://")
            .trim_end_matches('/')
    );
    let source = format!("oci:{}:v1", up.display());
    skopeo(&[
        "copy",
        "--insecure-policy",
        "--dest-tls-verify=false",
        &source,
        &remote,
    ]);
    // The manifest is served as pushed, bytes and all.
    let raw = skopeo(&["inspect", "--raw", "--tls-verify=false", &remote]);
    assert!(raw == manifest, "{}", String::from_utf8_lossy(&raw));
    // Pushing the same VM again under another tag moves only its manifest: every blob is
    // found by HEAD, no upload is opened.
    let (uploads, manifests) = (
        requests(&server, "POST", UPLOADS_ROUTE),
        requests(&server, "PUT", MANIFESTS_ROUTE),
    );
    assert!(uploads > 0.0, "the first copy opened uploads");
    skopeo(&[
        "copy",
        "--insecure-policy",
        "--dest-tls-verify=false",
        &source,
        &remote.replace(":v1", ":v2"),
    ]);
    assert_eq!(requests(&server, "POST", UPLOADS_ROUTE), uploads);
    assert_eq!(requests(&server, "PUT", MANIFESTS_ROUTE), manifests + 1.0);
    // The source goes before the copy back: the 512 MiB piece exists twice at most.
    std::fs::remove_dir_all(&up).unwrap();
    // And back: every layer arrives with its bytes.
    let target = format!("oci:{}:v1", down.display());
    skopeo(&[
        "copy",
        "--insecure-policy",
        "--src-tls-verify=false",
        &remote,
        &target,
    ]);
    for layer in &layers {
        let hex = layer["digest"]
            .as_str()
            .unwrap()
            .trim_start_matches("sha256:");
        let path = down.join("blobs/sha256").join(hex);
        assert_eq!(file_sha256(&path), hex);
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            layer["size"].as_u64().unwrap()
        );
    }
    let back = std::fs::read(down.join("blobs/sha256").join(sha256_hex(&manifest))).unwrap();
    assert!(back == manifest, "the pulled manifest is the pushed one");
}

const UPLOADS_ROUTE: &str = "/v2/{name:.+}/blobs/uploads/";
const MANIFESTS_ROUTE: &str = "/v2/{name:.+}/manifests/{reference}";

/// Requests `server` answered for `method` on the route template `route`, any status, as
/// its `/metrics` counts them.
fn requests(server: &Server, method: &str, route: &str) -> f64 {
    let url = server.at("/metrics");
    let text = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(async { reqwest::get(url).await.unwrap().text().await.unwrap() });
    let series = format!("vmreg_http_requests_total{{method=\"{method}\",route=\"{route}\",");
    text.lines()
        .filter(|l| l.starts_with(&series))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Runs `sh -c script` in `dir`; fails the test with its output. Answers its stdout.
fn shell(dir: &std::path::Path, script: &str) -> Vec<u8> {
    let out = std::process::Command::new("sh")
        .args(["-c", script])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// An OCI layout holding, under tag `1.0`, an index of two platform images whose layers
/// are `tar+gzip` (the shape of Homebrew's bottles, which Anka pulls as OCI tags), made
/// with the system's tar and gzip so that they are real archives. Answers the index's
/// bytes and every blob's digest.
fn bottle_layout(dir: &std::path::Path) -> (Vec<u8>, Vec<String>) {
    std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let mut manifests = Vec::new();
    let mut digests = Vec::new();
    for (arch, seed) in [("arm64", 90u64), ("amd64", 91)] {
        let src = dir.join(format!("src-{arch}"));
        std::fs::create_dir_all(src.join("bin")).unwrap();
        std::fs::write(src.join("bin/tool"), pseudo_random(200_000, seed)).unwrap();
        let tgz = shell(dir, &format!("tar -C src-{arch} -cf - . | gzip -n"));
        let tar = shell(dir, &format!("tar -C src-{arch} -cf - ."));
        std::fs::remove_dir_all(&src).unwrap();
        let mut layer = layout_blob(dir, "application/vnd.oci.image.layer.v1.tar+gzip", &tgz);
        layer["annotations"] = serde_json::json!({"org.opencontainers.image.title": format!("tool--1.0.{arch}.bottle.tar.gz")});
        let config = layout_blob(
            dir,
            "application/vnd.oci.image.config.v1+json",
            serde_json::to_vec(&serde_json::json!({
                "architecture": arch,
                "os": "darwin",
                "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{}", sha256_hex(&tar))]},
            }))
            .unwrap()
            .as_slice(),
        );
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": config,
            "layers": [layer],
        }))
        .unwrap();
        let mut descriptor =
            layout_blob(dir, "application/vnd.oci.image.manifest.v1+json", &manifest);
        descriptor["platform"] = serde_json::json!({"architecture": arch, "os": "darwin"});
        for d in [&layer, &config, &descriptor] {
            digests.push(d["digest"].as_str().unwrap().to_string());
        }
        manifests.push(descriptor);
    }
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": manifests,
    }))
    .unwrap();
    let mut descriptor = layout_blob(dir, "application/vnd.oci.image.index.v1+json", &index);
    descriptor["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": "1.0"});
    let layout = serde_json::json!({"schemaVersion": 2, "manifests": [descriptor]});
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&layout).unwrap()).unwrap();
    (index, digests)
}

#[test]
#[ignore = "needs skopeo: scripts/test.sh installs it"]
fn skopeo_round_trips_an_index_of_tar_gzip_layers() {
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();
    let (up, down) = (work.path().join("up"), work.path().join("down"));
    let (index, digests) = bottle_layout(&up);
    let host = server.at("");
    let remote = format!(
        "docker://{}/homebrew/core/tool:1.0",
        host.trim_start_matches("http://").trim_end_matches('/')
    );
    let source = format!("oci:{}:1.0", up.display());
    skopeo(&[
        "copy",
        "--all",
        "--insecure-policy",
        "--dest-tls-verify=false",
        &source,
        &remote,
    ]);
    // The index is served as pushed, bytes and all, and each platform's image by digest.
    let raw = skopeo(&["inspect", "--raw", "--tls-verify=false", &remote]);
    assert!(raw == index, "{}", String::from_utf8_lossy(&raw));
    let target = format!("oci:{}:1.0", down.display());
    skopeo(&[
        "copy",
        "--all",
        "--insecure-policy",
        "--src-tls-verify=false",
        &remote,
        &target,
    ]);
    for digest in &digests {
        let hex = digest.trim_start_matches("sha256:");
        let back = std::fs::read(down.join("blobs/sha256").join(hex)).unwrap();
        assert_eq!(sha256_hex(&back), hex);
        assert_eq!(
            back,
            std::fs::read(up.join("blobs/sha256").join(hex)).unwrap()
        );
    }
    let back = std::fs::read(down.join("blobs/sha256").join(sha256_hex(&index))).unwrap();
    assert!(back == index, "the pulled index is the pushed one");
}

/// The `oci-client` crate (dev-dependency), a Rust client with chunked and monolithic
/// pushes, mounts, Range reads and the Bearer token flow.
mod crate_client {
    use std::collections::BTreeMap;

    use futures_util::TryStreamExt;
    use oci_client::client::{BlobResponse, ClientConfig, ClientProtocol, Config, ImageLayer};
    use oci_client::manifest::{OciDescriptor, OciImageManifest};
    use oci_client::secrets::RegistryAuth;
    use oci_client::{Client, Reference};

    use super::common::*;
    use super::ROOT_TOKEN;

    const DISK: &str = "application/vnd.cirruslabs.tart.disk.v2";
    const VM_CONFIG: &str = "application/vnd.cirruslabs.tart.config.v1";
    const NVRAM: &str = "application/vnd.cirruslabs.tart.nvram.v1";

    fn client(monolithic: bool) -> Client {
        Client::new(ClientConfig {
            protocol: ClientProtocol::Http,
            use_monolithic_push: monolithic,
            ..Default::default()
        })
    }

    fn reference(server: &Server, repo: &str) -> Reference {
        let host = server.at("");
        let host = host.trim_start_matches("http://").trim_end_matches('/');
        format!("{host}/{repo}").parse().unwrap()
    }

    /// A tart-shaped VM: its stub OCI config and the VM config, two disk pieces (one
    /// larger than the crate's 4 MiB chunk, so a chunked push sends several PATCHes) with
    /// tart's annotations, and the nvram.
    fn tart_vm(seed: u64) -> (Config, Vec<ImageLayer>) {
        let config = Config::oci_v1(
            br#"{"architecture":"arm64","os":"darwin","config":{"Labels":{}}}"#.to_vec(),
            None,
        );
        let mut layers = vec![ImageLayer::new(
            format!(r#"{{"version":1,"os":"darwin","cpuCount":4,"seed":{seed}}}"#).into_bytes(),
            VM_CONFIG.into(),
            None,
        )];
        for (i, size) in [(0, 9 << 20), (1, 700_001)] {
            let piece = pseudo_random(size, seed * 10 + i);
            let annotations = BTreeMap::from([
                (
                    "org.cirruslabs.tart.uncompressed-size".to_string(),
                    (size * 3).to_string(),
                ),
                (
                    "org.cirruslabs.tart.uncompressed-content-digest".to_string(),
                    format!("sha256:{}", sha256_hex(&piece[..1000])),
                ),
            ]);
            layers.push(ImageLayer::new(piece, DISK.into(), Some(annotations)));
        }
        layers.push(ImageLayer::new(
            pseudo_random(4096, seed + 99),
            NVRAM.into(),
            None,
        ));
        (config, layers)
    }

    /// Pulls `image` with the crate's `pull` (which checks every layer's digest) and
    /// compares it with what was pushed, bytes, media types and annotations; answers the
    /// pulled manifest's digest.
    async fn pull_and_compare(
        client: &Client,
        image: &Reference,
        auth: &RegistryAuth,
        config: &Config,
        layers: &[ImageLayer],
    ) -> String {
        let pulled = client
            .pull(image, auth, vec![VM_CONFIG, DISK, NVRAM])
            .await
            .unwrap();
        assert_eq!(pulled.config.data, config.data);
        assert_eq!(pulled.layers.len(), layers.len());
        let manifest = pulled.manifest.unwrap();
        // The crate fetches layers in parallel and answers them as they come.
        let by_digest: BTreeMap<String, &ImageLayer> = pulled
            .layers
            .iter()
            .map(|l| (l.sha256_digest(), l))
            .collect();
        for (want, descriptor) in layers.iter().zip(&manifest.layers) {
            assert_eq!(descriptor.digest, want.sha256_digest());
            assert_eq!(descriptor.size as usize, want.data.len());
            let got = by_digest[&descriptor.digest];
            assert_eq!(got.media_type, want.media_type);
            assert_eq!(got.annotations, want.annotations);
        }
        pulled.digest.unwrap()
    }

    /// A Range read of a disk piece from `offset`, as a resumed pull makes it.
    async fn read_from(
        client: &Client,
        image: &Reference,
        layer: &OciDescriptor,
        offset: u64,
    ) -> Vec<u8> {
        match client
            .pull_blob_stream_partial(image, layer, offset, None)
            .await
            .unwrap()
        {
            BlobResponse::Partial(stream) => stream
                .try_fold(Vec::new(), |mut all, bytes| async move {
                    all.extend_from_slice(&bytes);
                    Ok(all)
                })
                .await
                .unwrap(),
            BlobResponse::Full(_) => panic!("a Range read answered the whole blob"),
        }
    }

    /// Pushes the VM to `repo`: with `monolithic`, by the crate's `push` (one PUT per
    /// blob); otherwise every blob by a chunked upload that cannot fall back to a
    /// monolithic PUT (`push_blob_stream`), then the manifest as raw bytes. Answers the
    /// manifest's digest as the registry named it, and its bytes when the test made them.
    async fn push_vm(
        client: &Client,
        image: &Reference,
        auth: &RegistryAuth,
        config: &Config,
        layers: &[ImageLayer],
        monolithic: bool,
    ) -> (String, Option<Vec<u8>>) {
        let manifest = OciImageManifest::build(layers, config, None);
        if monolithic {
            let pushed = client
                .push(image, layers, config.clone(), auth, Some(manifest))
                .await
                .unwrap();
            return (named_digest(&pushed.manifest_url), None);
        }
        client
            .auth(image, auth, oci_client::RegistryOperation::Push)
            .await
            .unwrap();
        let blobs = layers
            .iter()
            .map(|l| (l.data.clone(), l.sha256_digest()))
            .chain([(config.data.clone(), config.sha256_digest())]);
        for (data, digest) in blobs {
            // Two pieces per stream, so chunk boundaries do not fall on the stream's.
            let half = data.len() / 2;
            let pieces = vec![Ok(data.slice(..half)), Ok(data.slice(half..))];
            client
                .push_blob_stream(image, futures_util::stream::iter(pieces), &digest, None)
                .await
                .unwrap();
        }
        // Pretty-printed: the registry must keep the bytes, not a re-serialization.
        let raw = serde_json::to_vec_pretty(&manifest).unwrap();
        let url = client
            .push_manifest_raw(
                image,
                raw.clone(),
                "application/vnd.oci.image.manifest.v1+json"
                    .parse()
                    .unwrap(),
            )
            .await
            .unwrap();
        (named_digest(&url), Some(raw))
    }

    /// The digest a manifest's `Location` names.
    fn named_digest(url: &str) -> String {
        url.rsplit('/').next().unwrap().to_string()
    }

    /// Both pushes, pulls and their checks of one server, as `auth`.
    async fn round_trips(server: &Server, auth: RegistryAuth) {
        for (monolithic, repo) in [(true, "tart/sonoma:v1"), (false, "tart/deep/sequoia:v2")] {
            let client = client(monolithic);
            let image = reference(server, repo);
            let (config, layers) = tart_vm(monolithic as u64 + 1);
            let (named, sent) = push_vm(&client, &image, &auth, &config, &layers, monolithic).await;
            let digest = pull_and_compare(&client, &image, &auth, &config, &layers).await;
            assert_eq!(digest, named);
            // The manifest comes back byte for byte, by tag and by digest.
            let (got, got_digest) = client
                .pull_manifest_raw(
                    &image,
                    &auth,
                    &["application/vnd.oci.image.manifest.v1+json"],
                )
                .await
                .unwrap();
            assert_eq!(format!("sha256:{}", sha256_hex(&got)), digest);
            assert_eq!(got_digest, digest);
            if let Some(sent) = sent {
                assert!(got == sent, "{}", String::from_utf8_lossy(&got));
            }
            let built = OciImageManifest::build(&layers, &config, None);
            let parsed: serde_json::Value = serde_json::from_slice(&got).unwrap();
            assert_eq!(parsed, serde_json::to_value(&built).unwrap());
            let by_digest = image.clone_with_digest(digest.clone());
            let (again, _) = client
                .pull_manifest_raw(
                    &by_digest,
                    &auth,
                    &["application/vnd.oci.image.manifest.v1+json"],
                )
                .await
                .unwrap();
            assert!(again == got);
            assert_eq!(
                client.fetch_manifest_digest(&image, &auth).await.unwrap(),
                digest
            );
            // A pull resumed after a cut gets the rest of the disk piece.
            let manifest = OciImageManifest::build(&layers, &config, None);
            let disk = &manifest.layers[1];
            let rest = read_from(&client, &image, disk, 5_000_001).await;
            assert!(
                rest == layers[1].data[5_000_001..],
                "the Range read is the tail"
            );
            let tags = client.list_tags(&image, &auth, None, None).await.unwrap();
            assert_eq!(tags.tags, vec![image.tag().unwrap().to_string()]);
        }
        // A mount from another repository makes the blob exist there without a byte sent.
        let client = client(false);
        // The VM the monolithic push sent to tart/sonoma.
        let (config, layers) = tart_vm(2);
        let source = reference(server, "tart/sonoma:v1");
        let target = reference(server, "tart/clone:v1");
        client
            .auth(&target, &auth, oci_client::RegistryOperation::Push)
            .await
            .unwrap();
        let digest = layers[1].sha256_digest();
        assert!(!client.blob_exists(&target, &digest).await.unwrap());
        client.mount_blob(&target, &source, &digest).await.unwrap();
        assert!(client.blob_exists(&target, &digest).await.unwrap());
        // The rest of the VM pushed over the mounted blob makes it whole there.
        push_vm(&client, &target, &auth, &config, &layers, false).await;
        pull_and_compare(&client, &target, &auth, &config, &layers).await;
    }

    #[tokio::test]
    async fn oci_client_pushes_and_pulls_a_tart_vm_chunked_and_monolithic() {
        round_trips(&Server::start(), RegistryAuth::Anonymous).await;
    }

    #[tokio::test]
    async fn oci_client_goes_through_the_token_flow_with_auth_on() {
        let server = Server::start_with(&["--enable-auth", "--root-token", ROOT_TOKEN]);
        // Without credentials the challenge is answered by nothing: refused.
        let (config, layers) = tart_vm(7);
        let anonymous = client(true)
            .push(
                &reference(&server, "tart/sonoma:v1"),
                &layers,
                config,
                &RegistryAuth::Anonymous,
                None,
            )
            .await;
        assert!(anonymous.is_err(), "an anonymous push went through");
        // A wrong secret gets no token.
        let wrong = client(true)
            .auth(
                &reference(&server, "tart/sonoma:v1"),
                &RegistryAuth::Basic("root".into(), "not-the-token".into()),
                oci_client::RegistryOperation::Pull,
            )
            .await;
        assert!(wrong.is_err(), "a wrong secret got a token");
        round_trips(
            &server,
            RegistryAuth::Basic("root".into(), ROOT_TOKEN.into()),
        )
        .await;
    }
}
