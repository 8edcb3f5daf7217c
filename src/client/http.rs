//! The HTTP side: one connection setup (TLS options) and a method per registry endpoint.
//! Replies are unwrapped from the vendor's `{status, body, message}` envelope here so the
//! rest of the client sees typed values or a [`ClientError`].

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::auth::{Authenticator, Credentials};
use super::error::{ClientError, ClientResult};
use crate::protocol::{
    CommitRequest, Committed, Envelope, Manifest, PushPlan, PushRequest, UploadProgress,
};

/// How to reach a registry: its URL and the TLS material of the vendor's global options.
#[derive(Clone, Debug, Default)]
pub struct Endpoint {
    /// Base URL, e.g. `http://registry:8089`.
    pub url: String,
    /// Client certificate (PEM), possibly with its key.
    pub cert: Option<PathBuf>,
    /// Client key (PEM) when the certificate file lacks it.
    pub key: Option<PathBuf>,
    /// Extra root CA certificates (PEM bundle).
    pub cacert: Option<PathBuf>,
    /// Skip certificate verification.
    pub insecure: bool,
    /// Who the client is to the registry.
    pub credentials: Credentials,
}

/// The HTTP client of one registry: the CLI's side of its API.
#[derive(Clone, Debug)]
pub struct RegistryClient {
    base: String,
    http: reqwest::Client,
    auth: std::sync::Arc<Authenticator>,
}

/// One template in the registry's listing (`GET /registry/v2/vm`).
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct TemplateEntry {
    /// Template id.
    pub id: Uuid,
    /// Template name.
    pub name: String,
    /// Distinct bytes of all versions.
    #[serde(default)]
    pub size: u64,
    /// `arm64`, `amd64` or empty.
    #[serde(default)]
    pub arch: String,
    /// Tag of the newest version, when the registry reports it.
    #[serde(default)]
    pub latest_tag: Option<String>,
    /// Epoch seconds of the first push, when the registry reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_date: Option<u64>,
    /// Epoch seconds of the newest version's push, when the registry reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_push: Option<u64>,
    /// Epoch seconds of the latest pull (0: never), when the registry reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_pull: Option<u64>,
}

/// A template with its versions (`GET /registry/vm?id=`).
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct TemplateDetail {
    /// Template id.
    pub id: Uuid,
    /// Template name.
    pub name: String,
    /// Distinct bytes of all versions.
    #[serde(default)]
    pub size: u64,
    /// `arm64`, `amd64` or empty.
    #[serde(default)]
    pub arch: String,
    /// Versions, oldest first.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub versions: Vec<VersionEntry>,
}

/// One version of a template as the vendor's API lists it.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct VersionEntry {
    /// Serial number.
    pub number: u32,
    /// Tag.
    pub tag: String,
    /// Description given at push.
    #[serde(default)]
    pub description: String,
    /// Bytes of the version's files.
    #[serde(default)]
    pub size: u64,
    /// Image layer file names, top first.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub images: Vec<String>,
    /// Suspend image file names.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub state_files: Vec<String>,
}

fn null_as_empty<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Vec<T>, D::Error> {
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

/// How long an API call (or the headers of a download) may take.
const API_TIMEOUT: Duration = Duration::from_secs(120);

/// How long a request that may be repeated is asked again while the registry answers 503: a
/// store it needs is away for a moment (a Redis failover takes a few seconds).
const UNAVAILABLE_PATIENCE: Duration = Duration::from_secs(30);
/// The first pause before asking again after a 503; it doubles up to [`MAX_UNAVAILABLE_PAUSE`].
const FIRST_UNAVAILABLE_PAUSE: Duration = Duration::from_millis(200);
const MAX_UNAVAILABLE_PAUSE: Duration = Duration::from_secs(2);

/// Whether a request may be sent again after a 503 without doing twice what it asks.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Repeat {
    /// Only GET and HEAD.
    IfSafe,
    /// This request is idempotent by the registry's contract (a negotiation opens another
    /// session, the first one expires; a repeated commit answers the version it made).
    Yes,
}

/// Which version a request is about: a tag, a number, or the latest.
#[derive(Clone, Debug, Default)]
pub struct VersionSelector {
    /// By tag.
    pub tag: Option<String>,
    /// By number.
    pub number: Option<u32>,
}

impl RegistryClient {
    /// Builds the HTTP client with the endpoint's TLS options.
    pub fn connect(endpoint: &Endpoint) -> ClientResult<Self> {
        let base = endpoint.url.trim_end_matches('/').to_string();
        check_scheme(&base)?;
        let parsed = reqwest::Url::parse(&base)
            .map_err(|e| ClientError::Invalid(format!("invalid registry URL {base:?}: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(ClientError::Invalid(format!(
                "invalid registry URL {base:?}: scheme must be http or https"
            )));
        }
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(15))
            .tcp_keepalive(Duration::from_secs(30))
            .pool_max_idle_per_host(32)
            .user_agent(concat!("vmreg/", env!("CARGO_PKG_VERSION")))
            // Every request of the run, handshakes included, joins one trace.
            .default_headers(super::traceparent::headers());
        if let Some(path) = &endpoint.cacert {
            let pem = read_pem(path)?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                ClientError::Invalid(format!(
                    "{}: not a PEM certificate bundle: {e}",
                    path.display()
                ))
            })?;
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        if let Some(path) = &endpoint.cert {
            let mut pem = read_pem(path)?;
            if let Some(key) = &endpoint.key {
                pem.push(b'\n');
                pem.extend(read_pem(key)?);
            }
            let identity = reqwest::Identity::from_pem(&pem).map_err(|e| {
                ClientError::Invalid(format!(
                    "{}: not a PEM certificate with its key: {e}",
                    path.display()
                ))
            })?;
            builder = builder.identity(identity);
        }
        if endpoint.insecure {
            builder = builder.danger_accept_invalid_certs(true);
        }
        let http = builder
            .build()
            .map_err(|e| ClientError::network("cannot set up the HTTP client", &e))?;
        Ok(Self {
            base,
            http,
            auth: std::sync::Arc::new(Authenticator::new(endpoint.credentials.clone())),
        })
    }

    /// The registry's base URL.
    pub fn url(&self) -> &str {
        &self.base
    }

    /// An API call: small bodies both ways, so a hung registry fails it in bounded time.
    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.stream_request(method, path).timeout(API_TIMEOUT)
    }

    /// A transfer of file bytes: no total deadline (callers watch for stalls instead).
    fn stream_request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http.request(method, format!("{}{}", self.base, path))
    }

    /// [`Self::send_once`], asked again with growing pauses while the registry answers 503
    /// (for up to [`UNAVAILABLE_PATIENCE`]), when `repeat` allows it and the body can be
    /// sent twice. Streamed uploads are never repeated here: they resume from the offset
    /// the registry reports instead.
    async fn send_with(&self, mut req: RequestBuilder, repeat: Repeat) -> ClientResult<Response> {
        let repeatable = match repeat {
            Repeat::Yes => true,
            Repeat::IfSafe => req
                .try_clone()
                .and_then(|r| r.build().ok())
                .is_some_and(|r| matches!(*r.method(), Method::GET | Method::HEAD)),
        };
        let started = std::time::Instant::now();
        let mut pause = FIRST_UNAVAILABLE_PAUSE;
        loop {
            let again = if repeatable { req.try_clone() } else { None };
            match (self.send_once(req).await, again) {
                (Err(ClientError::Registry { status: 503, .. }), Some(again))
                    if started.elapsed() + pause < UNAVAILABLE_PATIENCE =>
                {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(MAX_UNAVAILABLE_PAUSE);
                    req = again;
                }
                (done, _) => return done,
            }
        }
    }

    /// [`Self::send_with`] for a request repeated only when its method is safe.
    async fn send(&self, req: RequestBuilder) -> ClientResult<Response> {
        self.send_with(req, Repeat::IfSafe).await
    }

    /// Sends a request with the credentials and returns the response if its status is a
    /// success. The one place requests get their `Authorization`: a 401 to an API key's
    /// session renews the session and sends the request once more.
    async fn send_once(&self, req: RequestBuilder) -> ClientResult<Response> {
        // A streamed body cannot be sent twice; everything else can.
        let again = req.try_clone();
        let (resp, grant) = self.send_authorized(req).await?;
        if resp.status() != StatusCode::UNAUTHORIZED {
            return checked(resp).await;
        }
        let message = failure_message(resp).await;
        if !self.auth.rejected(grant).await {
            return Err(self.auth.refused(&self.base, &message));
        }
        let Some(req) = again else {
            // Transient, so the upload resumes, handshaking anew first.
            return Err(ClientError::Network(
                "the registry ended the session during an upload".into(),
            ));
        };
        let (resp, _) = self.send_authorized(req).await?;
        if resp.status() == StatusCode::UNAUTHORIZED {
            let message = failure_message(resp).await;
            return Err(self.auth.refused(&self.base, &message));
        }
        checked(resp).await
    }

    async fn send_authorized(
        &self,
        mut req: RequestBuilder,
    ) -> ClientResult<(Response, super::auth::Grant)> {
        let (header, grant) = self.auth.header(&self.http, &self.base).await?;
        if let Some(header) = header {
            req = req.header(reqwest::header::AUTHORIZATION, header);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| ClientError::network(&format!("cannot reach {}", self.base), &e))?;
        Ok((resp, grant))
    }

    /// Sends a request and unwraps the envelope's body.
    async fn call<T: DeserializeOwned>(&self, req: RequestBuilder) -> ClientResult<Option<T>> {
        self.call_with(req, Repeat::IfSafe).await
    }

    /// [`Self::call`] with its own rule for repeating after a 503.
    async fn call_with<T: DeserializeOwned>(
        &self,
        req: RequestBuilder,
        repeat: Repeat,
    ) -> ClientResult<Option<T>> {
        let resp = self.send_with(req, repeat).await?;
        let status = resp.status();
        let text = resp
            .text()
            .await
            .map_err(|e| ClientError::network("reading the registry's reply", &e))?;
        let env: Envelope<T> = serde_json::from_str(&text).map_err(|e| ClientError::Registry {
            status: status.as_u16(),
            message: format!("unexpected reply ({e}): {}", snippet(&text)),
        })?;
        if env.status != "OK" {
            return Err(ClientError::Registry {
                status: status.as_u16(),
                message: env.message,
            });
        }
        Ok(env.body)
    }

    async fn call_body<T: DeserializeOwned>(
        &self,
        req: RequestBuilder,
        what: &str,
    ) -> ClientResult<T> {
        self.call_body_with(req, what, Repeat::IfSafe).await
    }

    async fn call_body_with<T: DeserializeOwned>(
        &self,
        req: RequestBuilder,
        what: &str,
        repeat: Repeat,
    ) -> ClientResult<T> {
        self.call_with(req, repeat)
            .await?
            .ok_or_else(|| ClientError::Registry {
                status: 200,
                message: format!("the reply to {what} has no body"),
            })
    }

    /// The instance id the registry reports in its status (vmreg does, the vendor's
    /// registry does not), the same through every address of one registry.
    pub async fn instance_id(&self) -> ClientResult<Option<String>> {
        #[derive(Deserialize)]
        struct Status {
            #[serde(default)]
            instance_id: Option<String>,
        }
        let status: Option<Status> = self
            .call(self.request(Method::GET, "/registry/status"))
            .await?;
        Ok(status
            .and_then(|s| s.instance_id)
            .filter(|id| !id.is_empty() && id.len() <= 64))
    }

    /// Lists the templates.
    pub async fn list(&self) -> ClientResult<Vec<TemplateEntry>> {
        let list: Option<Vec<TemplateEntry>> = self
            .call(self.request(Method::GET, "/registry/v2/vm"))
            .await?;
        Ok(list.unwrap_or_default())
    }

    /// One template with its versions, by id. Read from `/registry/vm?id=`: the vendor's
    /// v2 shape of one template has no `arch`.
    pub async fn template(&self, id: Uuid) -> ClientResult<TemplateDetail> {
        let req = self
            .request(Method::GET, "/registry/vm")
            .query(&[("id", id.to_string())]);
        self.call_body(req, "a template query")
            .await
            .map_err(|e| not_found(e, &format!("template {id} not found")))
    }

    /// Finds a template by id or name.
    pub async fn resolve(&self, id_or_name: &str) -> ClientResult<TemplateEntry> {
        let by_id = Uuid::parse_str(id_or_name).ok();
        if let Some(id) = by_id {
            // One small request instead of the whole listing; a miss may still be a name.
            match self.template(id).await {
                Ok(t) => {
                    return Ok(TemplateEntry {
                        id: t.id,
                        name: t.name,
                        size: t.size,
                        arch: t.arch,
                        latest_tag: t.versions.last().map(|v| v.tag.clone()),
                        creation_date: None,
                        last_push: None,
                        last_pull: None,
                    })
                }
                Err(ClientError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        let list = self.list().await?;
        let names: Vec<String> = list.iter().map(|t| t.name.clone()).collect();
        list.into_iter()
            .find(|t| Some(t.id) == by_id || t.name == id_or_name)
            .ok_or_else(|| {
                ClientError::NotFound(format!(
                    "template {id_or_name:?} not found in the registry{}",
                    super::suggest::hint(id_or_name, &names, "templates")
                ))
            })
    }

    /// A "not found" of a template or of one of its tags, told with what the registry
    /// has instead: the close template names, or the template's tags.
    pub async fn explain_missing(
        &self,
        id_or_name: &str,
        tag: Option<&str>,
        e: ClientError,
    ) -> ClientError {
        if !matches!(e, ClientError::NotFound(_)) {
            return e;
        }
        let entry = match self.resolve(id_or_name).await {
            Ok(entry) => entry,
            Err(missing @ ClientError::NotFound(_)) => return missing,
            Err(_) => return e,
        };
        let (Some(tag), Ok(detail)) = (tag, self.template(entry.id).await) else {
            return e;
        };
        let tags: Vec<String> = detail.versions.into_iter().map(|v| v.tag).collect();
        ClientError::NotFound(format!(
            "template {:?} has no tag {tag:?}{}",
            entry.name,
            super::suggest::hint(tag, &tags, "tags")
        ))
    }

    /// Deletes a template and all its versions.
    pub async fn delete_template(&self, id: Uuid) -> ClientResult<()> {
        let req = self
            .request(Method::DELETE, "/registry/vm")
            .query(&[("id", id.to_string())]);
        self.call::<serde_json::Value>(req).await.map(|_| ())
    }

    /// Deletes the versions after the selected one (or the latest version when none is).
    pub async fn revert(&self, id: Uuid, version: &VersionSelector) -> ClientResult<()> {
        let mut req = self
            .request(Method::DELETE, "/registry/revert")
            .query(&[("id", id.to_string())]);
        if let Some(n) = version.number {
            req = req.query(&[("number", n.to_string())]);
        }
        if let Some(tag) = &version.tag {
            req = req.json(&serde_json::json!({ "tag": tag }));
        }
        self.call::<serde_json::Value>(req).await.map(|_| ())
    }

    /// Sets a template's arch.
    pub async fn set_arch(&self, id: Uuid, arch: &str) -> ClientResult<()> {
        let req = self
            .request(Method::PUT, "/registry/vm/arch")
            .json(&serde_json::json!({ "id": id, "arch": arch }));
        self.call::<serde_json::Value>(req).await.map(|_| ())
    }

    /// The VM configuration of a version (`GET /registry/vm/info`).
    pub async fn vm_info(
        &self,
        id: Uuid,
        version: &VersionSelector,
    ) -> ClientResult<serde_json::Value> {
        let mut req = self
            .request(Method::GET, "/registry/vm/info")
            .query(&[("id", id.to_string())]);
        if let Some(tag) = &version.tag {
            req = req.query(&[("tag", tag)]);
        } else if let Some(n) = version.number {
            req = req.query(&[("version", n.to_string())]);
        }
        self.call_body(req, "a configuration request")
            .await
            .map_err(|e| not_found(e, &format!("template {id} has no such version")))
    }

    /// The files and configuration of a version; the registry records a pull unless
    /// `record_pull` is false (a size check).
    pub async fn manifest(
        &self,
        id_or_name: &str,
        version: &VersionSelector,
        record_pull: bool,
    ) -> ClientResult<Manifest> {
        let path = format!("/api/v1/templates/{}/manifest", encode(id_or_name));
        let mut req = self.request(Method::GET, &path);
        if !record_pull {
            req = req.query(&[("record_pull", "false")]);
        }
        if let Some(tag) = &version.tag {
            req = req.query(&[("tag", tag)]);
        } else if let Some(n) = version.number {
            req = req.query(&[("version", n.to_string())]);
        }
        let what = match (&version.tag, version.number) {
            (Some(tag), _) => format!("template {id_or_name:?} with tag {tag:?} not found"),
            (None, Some(n)) => format!("template {id_or_name:?} version {n} not found"),
            _ => format!("template {id_or_name:?} not found"),
        };
        self.call_body(req, "a manifest request")
            .await
            .map_err(|e| not_found(e, &what))
    }

    /// Opens a push.
    pub async fn negotiate(&self, request: &PushRequest) -> ClientResult<PushPlan> {
        self.call_body_with(
            self.request(Method::POST, "/api/v1/push").json(request),
            "a push",
            Repeat::Yes,
        )
        .await
    }

    /// The current state of a push session; `None` when the registry no longer has it.
    pub async fn push_status(&self, session: &str) -> ClientResult<Option<PushPlan>> {
        let path = format!("/api/v1/push/{}", encode(session));
        match self
            .call_body(self.request(Method::GET, &path), "a push status")
            .await
        {
            Ok(plan) => Ok(Some(plan)),
            Err(ClientError::Registry {
                status: 404 | 410, ..
            }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Uploads the body (`len` bytes) as the bytes of `key` from `offset` on.
    pub async fn upload(
        &self,
        session: &str,
        key: &str,
        offset: u64,
        len: u64,
        body: reqwest::Body,
    ) -> ClientResult<UploadProgress> {
        let path = format!("/api/v1/push/{}/files/{}", encode(session), encode(key));
        let req = self
            .stream_request(Method::PUT, &path)
            .query(&[("offset", offset.to_string())])
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .header(reqwest::header::CONTENT_LENGTH, len)
            .body(body);
        self.call_body(req, "an upload").await
    }

    /// Finishes a push.
    pub async fn commit(&self, session: &str, request: &CommitRequest) -> ClientResult<Committed> {
        let path = format!("/api/v1/push/{}/commit", encode(session));
        self.call_body_with(
            self.request(Method::POST, &path).json(request),
            "a commit",
            Repeat::Yes,
        )
        .await
    }

    /// Abandons a push.
    pub async fn abort(&self, session: &str) -> ClientResult<()> {
        let path = format!("/api/v1/push/{}", encode(session));
        self.call::<serde_json::Value>(self.request(Method::DELETE, &path))
            .await
            .map(|_| ())
    }

    /// Starts downloading bytes `start..end` of a file; redirects are followed.
    pub async fn download(&self, key: &str, start: u64, end: u64) -> ClientResult<Response> {
        let path = format!("/api/v1/files/{}", encode(key));
        let req = self.stream_request(Method::GET, &path).header(
            reqwest::header::RANGE,
            format!("bytes={}-{}", start, end - 1),
        );
        let resp = match tokio::time::timeout(API_TIMEOUT, self.send(req)).await {
            Ok(resp) => resp,
            Err(_) => Err(ClientError::Network(format!(
                "{key}: no answer from {} within {} s",
                self.base,
                API_TIMEOUT.as_secs()
            ))),
        }
        .map_err(|e| not_found(e, &format!("file {key} not found in the registry")))?;
        match resp.status() {
            StatusCode::PARTIAL_CONTENT => Ok(resp),
            StatusCode::OK if start == 0 => Ok(resp),
            s => Err(ClientError::Registry {
                status: s.as_u16(),
                message: format!("{key}: range request not honoured"),
            }),
        }
    }
}

/// Turns a 404 into a not-found error with a clear message.
fn not_found(e: ClientError, what: &str) -> ClientError {
    match e {
        ClientError::Registry {
            status: 404,
            message,
        } if message.is_empty() => ClientError::NotFound(what.to_string()),
        // The registry's message often says the same: say it once.
        ClientError::Registry {
            status: 404,
            message,
        } if what.contains(&message) || message.contains(what) => {
            ClientError::NotFound(what.to_string())
        }
        ClientError::Registry {
            status: 404,
            message,
        } => ClientError::NotFound(format!("{what}: {message}")),
        e => e,
    }
}

/// The response if it is a success, else its error.
async fn checked(resp: Response) -> ClientResult<Response> {
    if resp.status().is_success() {
        return Ok(resp);
    }
    Err(failure(resp).await)
}

/// The message of an error reply: the envelope's, or a summary of the body.
async fn failure_message(resp: Response) -> String {
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    match serde_json::from_str::<Envelope<serde_json::Value>>(&text) {
        Ok(env) if !env.message.is_empty() => env.message,
        _ if text.trim().is_empty() => status.canonical_reason().unwrap_or("error").to_string(),
        _ => snippet(&text),
    }
}

async fn failure(resp: Response) -> ClientError {
    let status = resp.status();
    let url = resp.url().clone();
    let message = failure_message(resp).await;
    // The app's own answer to a path it does not serve: the base URL is not a registry's
    // (a path too many, another server), which no "not found" of a template should hide.
    if status == StatusCode::NOT_FOUND && message == "no such endpoint" {
        return not_a_registry(&url);
    }
    match status {
        StatusCode::CONFLICT => ClientError::Conflict(message),
        StatusCode::FORBIDDEN => ClientError::Denied(message),
        _ => ClientError::Registry {
            status: status.as_u16(),
            message,
        },
    }
}

/// The error for a base URL under which no registry answers.
fn not_a_registry(url: &reqwest::Url) -> ClientError {
    ClientError::Invalid(format!(
        "{url} is not a vmreg or Anka registry endpoint: check the registry URL (the \
         server's address with no path, e.g. http://registry:8089)"
    ))
}

/// Refuses a registry URL without a scheme with how to write it.
pub fn check_scheme(url: &str) -> ClientResult<()> {
    match url.contains("://") {
        true => Ok(()),
        false => Err(ClientError::Invalid(format!(
            "invalid registry URL {url:?}: it needs a scheme: write http://{url} (or https://{url} for TLS)"
        ))),
    }
}

fn snippet(text: &str) -> String {
    let line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    line.chars().take(200).collect()
}

fn read_pem(path: &std::path::Path) -> ClientResult<Vec<u8>> {
    std::fs::read(path).map_err(|e| ClientError::io(path, e))
}

/// Percent-encodes one path segment (names and tags may hold `+`, spaces, `:`).
pub fn encode(segment: &str) -> String {
    percent_encoding::utf8_percent_encode(segment, SEGMENT).to_string()
}

const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Reads a response body chunk, failing if nothing arrives for `idle`.
pub async fn next_chunk(resp: &mut Response, idle: Duration) -> ClientResult<Option<Bytes>> {
    match tokio::time::timeout(idle, resp.chunk()).await {
        Ok(Ok(chunk)) => Ok(chunk),
        Ok(Err(e)) => Err(ClientError::network("download interrupted", &e)),
        Err(_) => Err(ClientError::Network(format!(
            "download stalled: no data for {} s",
            idle.as_secs()
        ))),
    }
}
