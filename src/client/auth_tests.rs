//! The client's sessions against a small in-process registry that speaks the TAP wire
//! contract: one handshake serves parallel requests, sessions renew before they end, a 401
//! renews and retries once, and refusals are one-line errors that quote no secret.

use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::RsaPrivateKey;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{ClientError, Credentials, Endpoint, PrivateKey, RegistryClient, Secret};

const ROOT: &str = "the-root-token-42";

#[derive(Default)]
struct State {
    /// Outstanding handshake secrets.
    pending: Vec<String>,
    /// Valid session tokens with their expiry (unix seconds).
    sessions: Vec<(String, u64)>,
    handshakes: u32,
    unauthorized: u32,
    /// Authorization headers seen, to check that each is well formed.
    headers: Vec<String>,
}

struct Fake {
    url: String,
    key_id: String,
    public: rsa::RsaPublicKey,
    ttl: u64,
    state: Mutex<State>,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn b64(bytes: impl AsRef<[u8]>) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn envelope(status: u16, body: Value) -> (u16, Value) {
    if status == 200 {
        (status, json!({"status": "OK", "message": "", "body": body}))
    } else {
        let message = if status == 401 {
            "Authentication Required"
        } else {
            "nope"
        };
        (status, json!({"status": "FAIL", "message": message}))
    }
}

impl Fake {
    fn handle(&self, method: &str, path: &str, auth: Option<&str>, body: &[u8]) -> (u16, Value) {
        let body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let mut st = self.state.lock().unwrap();
        match (method, path) {
            ("POST", "/tap/v1/hand") => {
                if body["id"] != self.key_id.as_str() {
                    return envelope(401, Value::Null);
                }
                let secret = uuid::Uuid::new_v4().simple().to_string();
                let sealed = self
                    .public
                    .encrypt(
                        &mut rsa::rand_core::OsRng,
                        rsa::Oaep::new::<sha2::Sha256>(),
                        secret.as_bytes(),
                    )
                    .unwrap();
                st.pending.push(secret);
                envelope(200, json!(b64(sealed)))
            }
            ("POST", "/tap/v1/shake") => {
                let secret = body["secret"].as_str().unwrap_or_default().to_string();
                let Some(at) = st.pending.iter().position(|s| *s == secret) else {
                    return envelope(401, Value::Null);
                };
                st.pending.remove(at);
                st.handshakes += 1;
                let (iat, exp) = (now(), now() + self.ttl);
                let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
                let token = format!(
                    "{}.{}.sig{}",
                    e.encode(r#"{"alg":"HS256","typ":"JWT"}"#),
                    e.encode(json!({"sub": self.key_id, "iat": iat, "exp": exp}).to_string()),
                    st.handshakes
                );
                st.sessions.push((token.clone(), exp));
                let data = json!({"userName": self.key_id, "token": token, "sessionId": format!("s{}", st.handshakes)});
                envelope(200, json!({"id": self.key_id, "data": data}))
            }
            (_, "/registry/v2/vm") => {
                if let Some(h) = auth {
                    st.headers.push(h.to_string());
                }
                if self.authorized(&st, auth) {
                    envelope(200, json!([]))
                } else {
                    st.unauthorized += 1;
                    envelope(401, Value::Null)
                }
            }
            _ => envelope(404, Value::Null),
        }
    }

    fn authorized(&self, st: &State, auth: Option<&str>) -> bool {
        let Some(auth) = auth else { return false };
        if let Some(basic) = auth.strip_prefix("Basic ") {
            return basic == b64(format!("root:{ROOT}"));
        }
        let Some(bearer) = auth.strip_prefix("Bearer ") else {
            return false;
        };
        let Some(data) = base64::engine::general_purpose::STANDARD
            .decode(bearer)
            .ok()
            .and_then(|j| serde_json::from_slice::<Value>(&j).ok())
        else {
            return false;
        };
        let token = data["token"].as_str().unwrap_or_default();
        data["userName"] == self.key_id.as_str()
            && st
                .sessions
                .iter()
                .any(|(t, exp)| t == token && *exp > now())
    }

    fn count(&self) -> (u32, u32) {
        let st = self.state.lock().unwrap();
        (st.handshakes, st.unauthorized)
    }
}

/// Starts the fake registry; returns it and the key's private key.
async fn start(ttl: u64) -> (Arc<Fake>, RsaPrivateKey) {
    let key = RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 1024).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let fake = Arc::new(Fake {
        url: format!("http://{}", listener.local_addr().unwrap()),
        key_id: "node1".into(),
        public: key.to_public_key(),
        ttl,
        state: Mutex::new(State::default()),
    });
    let server = fake.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let fake = server.clone();
            tokio::spawn(async move { serve(fake, sock).await });
        }
    });
    (fake, key)
}

/// One request per connection, answered and closed.
async fn serve(fake: Arc<Fake>, mut sock: tokio::net::TcpStream) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = sock.read(&mut chunk).await.unwrap_or(0);
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.lines();
    let mut first = lines.next().unwrap_or_default().split(' ');
    let method = first.next().unwrap_or_default().to_string();
    let path = first.next().unwrap_or_default().to_string();
    let header = |name: &str| {
        head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    };
    let len: usize = header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let n = sock.read(&mut chunk).await.unwrap_or(0);
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let auth = header("authorization");
    let (status, reply) = fake.handle(&method, &path, auth.as_deref(), &buf[head_end..]);
    let text = reply.to_string();
    let out = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
        text.len()
    );
    let _ = sock.write_all(out.as_bytes()).await;
}

fn connect(fake: &Fake, credentials: Credentials) -> RegistryClient {
    RegistryClient::connect(&Endpoint {
        url: fake.url.clone(),
        credentials,
        ..Endpoint::default()
    })
    .unwrap()
}

fn api_key(key: &RsaPrivateKey, id: &str) -> Credentials {
    let der = key.to_pkcs1_der().unwrap();
    Credentials::ApiKey {
        id: id.into(),
        key: PrivateKey::parse(&b64(der.as_bytes())).unwrap(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parallel_requests_share_one_handshake() {
    let (fake, key) = start(300).await;
    let reg = connect(&fake, api_key(&key, "node1"));
    let calls: Vec<_> = (0..16)
        .map(|_| {
            let reg = reg.clone();
            tokio::spawn(async move { reg.list().await })
        })
        .collect();
    for call in calls {
        call.await.unwrap().unwrap();
    }
    assert_eq!(fake.count(), (1, 0));
    let st = fake.state.lock().unwrap();
    assert_eq!(st.headers.len(), 16);
    assert!(st.headers.iter().all(|h| h == &st.headers[0]));
}

#[tokio::test]
async fn the_session_is_renewed_before_it_ends_without_a_refusal() {
    let (fake, key) = start(3).await;
    let reg = connect(&fake, api_key(&key, "node1"));
    reg.list().await.unwrap();
    assert_eq!(fake.count(), (1, 0));
    // Past the renewal point of the 3 s session (1.4 s before its end), before its end.
    tokio::time::sleep(std::time::Duration::from_millis(1700)).await;
    reg.list().await.unwrap();
    assert_eq!(fake.count(), (2, 0));
    reg.list().await.unwrap();
    assert_eq!(fake.count(), (2, 0));
}

#[tokio::test]
async fn a_refused_session_is_renewed_and_the_request_retried_once() {
    let (fake, key) = start(300).await;
    let reg = connect(&fake, api_key(&key, "node1"));
    reg.list().await.unwrap();
    // The registry forgets every session (as when the key's sessions are ended).
    fake.state.lock().unwrap().sessions.clear();
    reg.list().await.unwrap();
    assert_eq!(fake.count(), (2, 1));
}

#[tokio::test]
async fn refusals_are_one_line_auth_errors_without_secrets() {
    let (fake, key) = start(300).await;
    let other = RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 1024).unwrap();
    let cases = [
        (api_key(&other, "node1"), "does not decrypt"),
        (api_key(&key, "nobody"), "refused API key \"nobody\""),
        (
            Credentials::RootToken(Secret::new("wrong-token-77")),
            "refused the root token",
        ),
        (Credentials::Anonymous, "requires credentials"),
    ];
    for (credentials, expected) in cases {
        let err = connect(&fake, credentials).list().await.unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, ClientError::Auth(_)), "{err:?}");
        assert_eq!(err.exit_code(), 1);
        assert!(text.contains(expected), "{text}");
        assert!(!text.contains('\n'), "{text}");
        assert!(!text.contains("wrong-token-77"), "{text}");
    }
    let root = connect(&fake, Credentials::RootToken(Secret::new(ROOT)));
    root.list().await.unwrap();
    assert!(!format!("{root:?}").contains(ROOT));
}
