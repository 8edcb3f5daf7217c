//! Real OCI clients against the real binary: oras-py (PyPI) pushes and pulls artifacts,
//! chunked and monolithic, with authentication off and on; skopeo (Debian) copies an OCI
//! layout of a tart-shaped VM up and back. `scripts/test.sh` installs oras into
//! `target/oras-venv` (naming its Python in `VMREG_TEST_ORAS_PYTHON`) and skopeo with
//! apt; without them these tests fail rather than pass unchecked, so a plain `cargo test`
//! skips them.

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

/// Writes `bytes` as a blob of an OCI layout; answers its descriptor.
fn layout_blob(dir: &std::path::Path, media_type: &str, bytes: &[u8]) -> serde_json::Value {
    let hex = sha256_hex(bytes);
    std::fs::write(dir.join("blobs/sha256").join(&hex), bytes).unwrap();
    serde_json::json!({"mediaType": media_type, "digest": format!("sha256:{hex}"), "size": bytes.len()})
}

/// An OCI layout holding a tart-shaped VM under tag `v1`: a stub OCI config, the VM
/// config layer, two LZ4-like disk pieces with tart's annotations, and the nvram.
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
    for (i, size) in [(0u64, 1 << 20), (1, 300_000)] {
        let piece = pseudo_random(size, 70 + i);
        let mut disk = layout_blob(dir, "application/vnd.cirruslabs.tart.disk.v2", &piece);
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
        let got = std::fs::read(down.join("blobs/sha256").join(hex)).unwrap();
        assert_eq!(sha256_hex(&got), hex);
    }
    let back = std::fs::read(down.join("blobs/sha256").join(sha256_hex(&manifest))).unwrap();
    assert!(back == manifest, "the pulled manifest is the pushed one");
}
