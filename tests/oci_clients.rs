//! Real OCI clients against the real binary: oras-py (PyPI) pushes and pulls artifacts,
//! chunked and monolithic, with authentication off and on. `scripts/test.sh` installs it
//! into `target/oras-venv` and names its Python in `VMREG_TEST_ORAS_PYTHON`; without it
//! these tests fail rather than pass unchecked, so a plain `cargo test` skips them.

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
