//! HTTPS and client certificates: the real binary serving TLS with certificates openssl
//! makes, plain HTTP refused, the minimum version enforced, client certificates from
//! another CA or revoked ones refused, and a certificate rotated on disk served to new
//! connections while an upload started before the rotation completes.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use common::pki::Pki;
use common::*;
use serde_json::{json, Value};

/// A PKI: CA `ca` with a server certificate, a client `alice` and a revoked client
/// `mallory`; CA `other` with a client `eve`.
fn pki(ns: &Namespace) -> Pki {
    let pki = Pki::new(&ns.dir.join("pki"));
    pki.ca("ca")
        .server("ca", "server")
        .client("ca", "alice", "/CN=alice/O=builders/OU=ci")
        .client("ca", "mallory", "/CN=mallory/O=builders")
        .ca("other")
        .client("other", "eve", "/CN=eve/O=builders");
    pki
}

fn https_server(ns: Namespace, pki: &Pki, extra: &[&str]) -> Server {
    let (cert, key) = (pki.path("server.pem"), pki.path("server.key"));
    let mut args = vec!["--server-cert", &cert, "--server-key", &key];
    args.extend_from_slice(extra);
    Server::start_in(ns, &args)
}

/// A client trusting the CAs `roots`, presenting the certificate `identity` if any.
fn client(pki: &Pki, roots: &[&str], identity: Option<&str>) -> reqwest::Client {
    let mut builder = reqwest::Client::builder();
    for root in roots {
        let pem = std::fs::read(pki.dir.join(format!("{root}.pem"))).unwrap();
        builder = builder.add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap());
    }
    if let Some(name) = identity {
        builder = builder.identity(reqwest::Identity::from_pem(&pki.identity_pem(name)).unwrap());
    }
    builder.build().unwrap()
}

async fn status(client: &reqwest::Client, server: &Server) -> Result<u16, String> {
    client
        .get(server.at("/registry/status"))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .map_err(|e| format!("{e:?}"))
}

/// Whether `openssl s_client` completes a handshake with `version` (`-tls1_2`, `-tls1_3`).
fn handshake_with(pki: &Pki, server: &Server, version: &str) -> bool {
    let addr = server.url.trim_start_matches("https://").to_string();
    Command::new("openssl")
        .args(["s_client", "-connect", &addr, version, "-CAfile"])
        .arg(pki.path("ca.pem"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("openssl is needed by the TLS tests: install it (scripts/test.sh does)")
        .success()
}

#[tokio::test(flavor = "multi_thread")]
async fn https_serves_and_plain_http_is_refused() {
    let ns = Namespace::new();
    let pki = pki(&ns);
    let server = https_server(ns, &pki, &[]);
    assert!(server.url.starts_with("https://"), "{}", server.url);
    assert_eq!(status(&client(&pki, &["ca"], None), &server).await, Ok(200));
    assert!(
        status(&client(&pki, &["other"], None), &server)
            .await
            .is_err(),
        "a client that does not trust the server's CA fails"
    );
    let plain = server.url.replacen("https://", "http://", 1);
    let reply = reqwest::get(format!("{plain}/registry/status")).await;
    assert!(
        reply.is_err(),
        "plain HTTP gets no answer from an HTTPS port: {reply:?}"
    );
    // The default minimum is TLS 1.2.
    assert!(handshake_with(&pki, &server, "-tls1_2"));
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_1_2_is_refused_when_the_minimum_is_1_3() {
    let ns = Namespace::new();
    let pki = pki(&ns);
    let server = https_server(ns, &pki, &["--min-tls-version", "1.3"]);
    assert!(!handshake_with(&pki, &server, "-tls1_2"), "TLS 1.2 refused");
    assert!(handshake_with(&pki, &server, "-tls1_3"), "TLS 1.3 accepted");
}

#[tokio::test(flavor = "multi_thread")]
async fn client_certificates_from_another_ca_or_revoked_are_refused() {
    let ns = Namespace::new();
    let pki = pki(&ns);
    let crl = pki.crl("ca", &["mallory"]);
    let ca = pki.path("ca.pem");
    let server = https_server(ns, &pki, &["--ca-cert", &ca, "--crl", &crl]);
    assert_eq!(
        status(&client(&pki, &["ca"], Some("alice")), &server).await,
        Ok(200),
        "a certificate of the CA is accepted"
    );
    let eve = status(&client(&pki, &["ca"], Some("eve")), &server).await;
    assert!(eve.is_err(), "another CA's certificate is refused: {eve:?}");
    let mallory = status(&client(&pki, &["ca"], Some("mallory")), &server).await;
    assert!(
        mallory.is_err(),
        "a revoked certificate is refused: {mallory:?}"
    );
    // Without a certificate the handshake succeeds: the caller may authenticate otherwise.
    assert_eq!(status(&client(&pki, &["ca"], None), &server).await, Ok(200));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_certificate_is_served_to_new_connections_while_an_upload_completes() {
    let ns = Namespace::new();
    let pki = pki(&ns);
    pki.ca("next").server("next", "rotated");
    let server = https_server(ns, &pki, &[]);
    let old_ca = client(&pki, &["ca"], None);

    // Open an upload and send half of the file over a connection made before the rotation.
    let file = TestFile::new("disk.img", "image", 12 << 20, 3);
    let id = new_id();
    let plan = old_ca
        .post(server.at("/api/v1/push"))
        .json(&push_request(&id, "rotation", "t1", &[&file]))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    let session = plan["body"]["session"].as_str().unwrap().to_string();
    let key = plan["body"]["files"][0]["key"]
        .as_str()
        .unwrap()
        .to_string();
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    });
    let upload = tokio::spawn({
        let url = server.at(&format!(
            "/api/v1/push/{session}/files/{}?offset=0",
            encode_path(&key)
        ));
        let old_ca = old_ca.clone();
        async move {
            let reply = old_ca
                .put(url)
                .header("Content-Length", (12u64 << 20).to_string())
                .body(reqwest::Body::wrap_stream(body))
                .send()
                .await
                .expect("the upload's connection survives the rotation");
            (
                reply.status().as_u16(),
                reply.json::<Value>().await.unwrap(),
            )
        }
    });
    let half = file.data.len() / 2;
    tx.send(Ok(Bytes::copy_from_slice(&file.data[..half])))
        .await
        .unwrap();

    // Rotate: a certificate of another CA replaces the files.
    std::fs::copy(pki.dir.join("rotated.pem"), pki.dir.join("server.pem")).unwrap();
    std::fs::copy(pki.dir.join("rotated.key"), pki.dir.join("server.key")).unwrap();
    let new_ca = client(&pki, &["next"], None);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while status(&new_ca, &server).await.is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the rotated certificate is served to new connections"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        status(&client(&pki, &["ca"], None), &server).await.is_err(),
        "new connections no longer get the old certificate"
    );

    // The upload started before the rotation finishes on its connection.
    tx.send(Ok(Bytes::copy_from_slice(&file.data[half..])))
        .await
        .unwrap();
    drop(tx);
    let (code, reply) = tokio::time::timeout(Duration::from_secs(60), upload)
        .await
        .expect("the upload finishes")
        .unwrap();
    assert_eq!(code, 200, "{reply}");
    assert_eq!(reply["body"]["complete"], json!(true), "{reply}");
    let committed = new_ca
        .post(server.at(&format!("/api/v1/push/{session}/commit")))
        .send()
        .await
        .unwrap();
    assert_eq!(committed.status().as_u16(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_certificate_is_the_user_and_its_o_or_ou_the_groups_of_the_permission_check() {
    const ROOT: &str = "tls-root-token-0123456789";
    let root = format!(
        "Basic {}",
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            format!("root:{ROOT}")
        )
    );
    let ns = Namespace::new();
    let pki = pki(&ns);
    let ca = pki.path("ca.pem");
    let auth = [
        "--enable-auth",
        "--root-token",
        ROOT,
        "--enable-authorization",
        "--ca-cert",
        &ca,
    ];
    // alice is O=builders, OU=ci. builders may list; ci may read the disk.
    for (groups_from, may_list, may_read_disk) in [("o", true, false), ("ou", false, true)] {
        let mut flags = auth.to_vec();
        flags.extend(["--cert-groups-from", groups_from]);
        let server = https_server(Namespace::new(), &pki, &flags);
        let admin = client(&pki, &["ca"], None);
        for (group, permission) in [("builders", "list_vms"), ("ci", "get_disk_info")] {
            let reply = admin
                .put(server.at(&format!("/admin/api/v1/permission/group/{group}")))
                .header("Authorization", &root)
                .json(&json!({ "permissions": [permission] }))
                .send()
                .await
                .unwrap();
            assert_eq!(reply.status().as_u16(), 200, "{group}");
        }
        let alice = client(&pki, &["ca"], Some("alice"));
        let code = |path: &'static str| {
            let alice = alice.clone();
            let url = server.at(path);
            async move { alice.get(url).send().await.unwrap().status().as_u16() }
        };
        let allowed = |yes: bool| if yes { 200 } else { 403 };
        assert_eq!(
            code("/registry/v2/vm").await,
            allowed(may_list),
            "groups from {groups_from}: list"
        );
        assert_eq!(
            code("/registry/disk").await,
            allowed(may_read_disk),
            "groups from {groups_from}: disk"
        );
        assert_eq!(
            code("/registry/status").await,
            200,
            "the certificate authenticates"
        );
        // A spelling the router decodes to the same route gets the same decision.
        assert_eq!(
            code("/registry/v2/%76m").await,
            allowed(may_list),
            "groups from {groups_from}: list, spelled with an escape"
        );
        for (method, path) in [
            (reqwest::Method::GET, "/v1/%61pikey"),
            (reqwest::Method::POST, "/v1/%61pikey"),
            (reqwest::Method::GET, "/admin/api/v1/permission/%67roup"),
        ] {
            let reply = alice
                .request(method.clone(), server.at(path))
                .json(&json!({ "id": "alice-key", "ttl": 60 }))
                .send()
                .await
                .unwrap();
            assert_eq!(reply.status().as_u16(), 403, "{method} {path}");
        }
        // Without a certificate (or other credentials) nothing is let in.
        let nobody = admin
            .get(server.at("/registry/status"))
            .send()
            .await
            .unwrap();
        assert_eq!(nobody.status().as_u16(), 401);
    }
}
