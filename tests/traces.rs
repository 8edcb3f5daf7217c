//! OpenTelemetry traces of a running `vmreg serve`, received by collectors in this test
//! that decode the real OTLP protobuf: over HTTP (`http/protobuf`) and over gRPC (h2).

mod common;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;

/// Spans a test collector received, with the service name they came under.
#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<(String, Span)>>>);

impl Received {
    fn add(&self, body: &[u8]) {
        let request = ExportTraceServiceRequest::decode(body).expect("an OTLP trace export");
        let mut spans = self.0.lock().unwrap();
        for resource in request.resource_spans {
            let service = resource
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .and_then(|a| text(a.value.as_ref()?.value.as_ref()?))
                .unwrap_or_default();
            for scope in resource.scope_spans {
                spans.extend(scope.spans.into_iter().map(|s| (service.clone(), s)));
            }
        }
    }

    fn spans(&self) -> Vec<Span> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|(_, s)| s.clone())
            .collect()
    }

    /// Waits until `done` holds for the spans received.
    fn wait_until(&self, what: &str, done: impl Fn(&[Span]) -> bool) -> Vec<Span> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let spans = self.spans();
            if done(&spans) {
                return spans;
            }
            assert!(
                Instant::now() < deadline,
                "no {what} within 20 s; received: {:#?}",
                names(&spans)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn text(v: &Any) -> Option<String> {
    match v {
        Any::StringValue(s) => Some(s.clone()),
        Any::IntValue(i) => Some(i.to_string()),
        _ => None,
    }
}

fn attr(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| text(a.value.as_ref()?.value.as_ref()?))
}

fn names(spans: &[Span]) -> Vec<&str> {
    spans.iter().map(|s| s.name.as_str()).collect()
}

/// An OTLP/HTTP collector on a free port: answers every POST with 200 and keeps the spans.
fn http_collector() -> (String, Received) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let received = Received::default();
    let keep = received.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let keep = keep.clone();
            std::thread::spawn(move || serve_http(conn, &keep));
        }
    });
    (url, received)
}

/// One keep-alive connection of the HTTP collector.
fn serve_http(conn: TcpStream, received: &Received) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut conn = conn;
    loop {
        let mut length = 0;
        let mut path = String::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if path.is_empty() {
                path = line.split(' ').nth(1).unwrap_or_default().to_string();
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap();
                }
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        assert_eq!(path, "/v1/traces", "OTLP/HTTP posts traces to /v1/traces");
        received.add(&body);
        let reply =
            "HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
        if conn.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}

/// An OTLP/gRPC collector on a free port, on h2: every call to the trace service is
/// answered with an empty `ExportTraceServiceResponse` and `grpc-status: 0`.
fn grpc_collector() -> (String, Received) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    listener.set_nonblocking(true).unwrap();
    let received = Received::default();
    let keep = received.clone();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(serve_grpc(socket, keep.clone()));
            }
        });
    });
    (url, received)
}

async fn serve_grpc(socket: tokio::net::TcpStream, received: Received) {
    let Ok(mut connection) = h2::server::handshake(socket).await else {
        return;
    };
    // Only a connection that is polled reads frames: each call is answered on a task of
    // its own while this loop keeps reading.
    while let Some(Ok((request, respond))) = connection.accept().await {
        tokio::spawn(export_call(request, respond, received.clone()));
    }
}

/// One `TraceService/Export` call of the gRPC collector.
async fn export_call(
    request: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<bytes::Bytes>,
    received: Received,
) {
    assert_eq!(
        request.uri().path(),
        "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
    );
    let mut body = request.into_body();
    let mut framed = Vec::new();
    while let Some(Ok(chunk)) = body.data().await {
        let _ = body.flow_control().release_capacity(chunk.len());
        framed.extend_from_slice(&chunk);
    }
    // A gRPC message: a compression flag, a 4-byte big-endian length, the message.
    assert_eq!(framed[0], 0, "uncompressed");
    let len = u32::from_be_bytes(framed[1..5].try_into().unwrap()) as usize;
    received.add(&framed[5..5 + len]);
    let reply = http::Response::builder()
        .header("content-type", "application/grpc")
        .body(())
        .unwrap();
    let mut stream = respond.send_response(reply, false).unwrap();
    stream
        .send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]), false)
        .unwrap();
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", "0".parse().unwrap());
    stream.send_trailers(trailers).unwrap();
}

/// The environment turning traces on towards `endpoint`, exporting every 100 ms.
fn tracing_env(endpoint: &str) -> Vec<(&'static str, String)> {
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.to_string()),
        ("OTEL_SERVICE_NAME", "vmreg-under-test".to_string()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_string()),
    ]
}

fn start_traced(extra: &[&str], env: &[(&str, String)]) -> Server {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Server::start_in_with_env(Namespace::new(), extra, &env)
}

/// A VM library holding one VM `name` with one 12 MB disk: three parts of 5 MiB.
fn library_with_vm(dir: &Path, id: &str, name: &str) {
    let vm = dir.join("vm_lib").join(id);
    std::fs::create_dir_all(&vm).unwrap();
    std::fs::create_dir_all(dir.join("img_lib")).unwrap();
    std::fs::write(
        dir.join("img_lib").join("disk.ank"),
        pseudo_random(12_000_000, 7),
    )
    .unwrap();
    std::fs::write(vm.join("nvram"), b"nvram").unwrap();
    let config = format!(
        "uuid: {id}\nname: {name}\nram: 2G\ncpu:\n  cores: 2\nfirmware:\n  type: uefi\n\
         nvram: true\nhard_drives:\n- controller: ablk\n  file: disk.ank\n  pci_slot: 4\n"
    );
    std::fs::write(vm.join("config.yaml"), config).unwrap();
}

/// Runs `vmreg registry push` of `name` as `tag`, with `traceparent` as `TRACEPARENT`.
fn push_vm(server: &Server, lib: &Path, name: &str, tag: &str, traceparent: Option<&str>) {
    let mut cmd = Command::new(vmreg_bin());
    cmd.arg("registry")
        .env("VMREG_CONFIG", lib.join("remotes.yaml"))
        .env_remove("VMREG_ROOT_TOKEN")
        .env_remove("VMREG_API_KEY_ID")
        .env_remove("TRACEPARENT")
        .args(["-a", &server.url, "--lib"])
        .arg(lib)
        .args(["--json", "push", "-t", tag, name])
        .stdin(Stdio::null());
    if let Some(given) = traceparent {
        cmd.env("TRACEPARENT", given);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "push failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The request spans of `trace`, and every span of it.
fn trace_of<'a>(spans: &'a [Span], trace: &str) -> (Vec<&'a Span>, Vec<&'a Span>) {
    let all: Vec<&Span> = spans.iter().filter(|s| hex(&s.trace_id) == trace).collect();
    let requests = all
        .iter()
        .copied()
        .filter(|s| attr(s, "route").is_some())
        .collect();
    (requests, all)
}

/// The outermost ancestor of `span` among `by_id`.
fn root_of<'a>(by_id: &HashMap<Vec<u8>, &'a Span>, mut span: &'a Span) -> &'a Span {
    while let Some(parent) = by_id.get(&span.parent_span_id) {
        span = parent;
    }
    span
}

#[test]
#[ignore = "needs Redis and S3: run with VMREG_TEST_BACKEND=s3 and --include-ignored"]
fn one_push_is_one_trace_under_the_callers_traceparent_with_redis_and_s3_spans() {
    require_s3_services();
    let (endpoint, received) = http_collector();
    let server = start_traced(
        &["--part-size", "5MiB", "--access-logs"],
        &tracing_env(&endpoint),
    );
    let lib = tempfile::tempdir().unwrap();
    let id = new_id();
    library_with_vm(lib.path(), &id, "traced");

    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller = "00f067aa0ba902b7";
    push_vm(
        &server,
        lib.path(),
        "traced",
        "v1",
        Some(&format!("00-{trace}-{caller}-01")),
    );
    let spans = received.wait_until("commit span of the push", |spans| {
        trace_of(spans, trace)
            .0
            .iter()
            .any(|s| s.name.ends_with("/commit"))
    });
    let (requests, all) = trace_of(&spans, trace);
    let routes: HashSet<&str> = requests.iter().map(|s| s.name.as_str()).collect();
    for route in [
        "POST /api/v1/push",
        "PUT /api/v1/push/{session}/files/{key}",
        "POST /api/v1/push/{session}/commit",
    ] {
        assert!(routes.contains(route), "no {route} span in {routes:?}");
    }
    // The caller's span is the root: every request span hangs under it.
    for request in &requests {
        assert_eq!(hex(&request.parent_span_id), caller, "{}", request.name);
        assert_eq!(request.kind, 2, "a server span");
        assert_eq!(attr(request, "status").as_deref(), Some("200"));
        if request.name.starts_with("POST /api/v1/push") || request.name.starts_with("PUT") {
            assert_eq!(attr(request, "template").as_deref(), Some(id.as_str()));
        }
    }
    // Every other span of the trace descends from one of them.
    let by_id: HashMap<Vec<u8>, &Span> = all.iter().map(|s| (s.span_id.clone(), *s)).collect();
    for span in &all {
        assert!(
            attr(root_of(&by_id, span), "route").is_some(),
            "{} is not inside a request",
            span.name
        );
    }
    let children = |prefix: &str| all.iter().filter(|s| s.name.starts_with(prefix)).count();
    assert!(children("redis ") >= 3, "Redis spans: {:?}", names(&spans));
    assert!(
        children("s3 write_part") >= 3,
        "S3 spans: {:?}",
        names(&spans)
    );
    assert!(children("s3 complete_upload") >= 1);
    assert!(children("part") >= 3, "one span per part");
    for part in all.iter().filter(|s| s.name == "part") {
        let parent = by_id[&part.parent_span_id];
        assert!(
            parent.name.starts_with("PUT"),
            "a part belongs to its upload"
        );
    }
    assert!(
        server.log().contains(&format!("trace_id={trace}")),
        "log lines name the trace:\n{}",
        server.log()
    );

    // Without TRACEPARENT the client begins a trace of its own, still one for the push.
    let before: HashSet<Vec<u8>> = spans.iter().map(|s| s.trace_id.clone()).collect();
    push_vm(&server, lib.path(), "traced", "v2", None);
    let spans = received.wait_until("the second push's commit", |spans| {
        spans.iter().any(|s| {
            !before.contains(&s.trace_id) && s.name == "POST /api/v1/push/{session}/commit"
        })
    });
    let fresh: HashSet<Vec<u8>> = spans
        .iter()
        .filter(|s| attr(s, "route").is_some() && !before.contains(&s.trace_id))
        .map(|s| s.trace_id.clone())
        .collect();
    assert_eq!(fresh.len(), 1, "the second push is one trace");
}

#[tokio::test]
async fn grpc_export_reaches_a_grpc_collector_and_continues_the_callers_trace() {
    let (endpoint, received) = grpc_collector();
    let mut env = tracing_env(&endpoint);
    env.push(("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".to_string()));
    let server = start_traced(&["--log-format", "json", "--access-logs"], &env);
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let reply = reqwest::Client::new()
        .get(server.at("/registry/vm"))
        .header("traceparent", format!("00-{trace}-b7ad6b7169203331-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 200);
    let spans = received.wait_until("the request's span", |spans| {
        !trace_of(spans, trace).0.is_empty()
    });
    let (requests, _) = trace_of(&spans, trace);
    assert_eq!(requests[0].name, "GET /registry/vm");
    assert_eq!(hex(&requests[0].parent_span_id), "b7ad6b7169203331");
    let named = |l: &&str| l.contains(&format!("\"trace_id\":\"{trace}\""));
    assert!(
        server
            .log()
            .lines()
            .any(|l| named(&l) && l.contains("access")),
        "JSON log lines name the trace:\n{}",
        server.log()
    );
    let services: Vec<String> = received
        .0
        .lock()
        .unwrap()
        .iter()
        .map(|(s, _)| s.clone())
        .collect();
    assert!(services.iter().all(|s| s == "vmreg-under-test"));
}

#[tokio::test]
async fn switched_off_nothing_is_exported_and_no_line_names_a_trace() {
    let (endpoint, received) = http_collector();
    for off in [
        ("OTEL_SDK_DISABLED", "true"),
        ("OTEL_TRACES_EXPORTER", "none"),
    ] {
        let mut env = tracing_env(&endpoint);
        env.push((off.0, off.1.to_string()));
        let server = start_traced(&["--access-logs"], &env);
        let client = reqwest::Client::new();
        for _ in 0..20 {
            let reply = client
                .get(server.at("/registry/vm"))
                .header(
                    "traceparent",
                    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                )
                .send()
                .await
                .unwrap();
            assert_eq!(reply.status(), 200);
        }
        // Ten export intervals.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let log = server.log();
        assert!(log.contains("access"), "requests were logged:\n{log}");
        assert!(!log.contains("trace_id"), "{off:?}: {log}");
    }
    assert!(received.spans().is_empty(), "spans arrived while off");
}

/// A collector that takes connections and never answers.
fn blackhole() -> (String, TcpListener) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    (
        format!("http://{}", listener.local_addr().unwrap()),
        listener,
    )
}

/// A port nothing listens on.
fn refusing() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}", listener.local_addr().unwrap())
}

#[tokio::test]
async fn a_dead_collector_never_slows_requests() {
    let (silent, _held) = blackhole();
    for (endpoint, protocol) in [
        (silent.clone(), "http/protobuf"),
        (silent, "grpc"),
        (refusing(), "http/protobuf"),
    ] {
        let mut env = tracing_env(&endpoint);
        env.push(("OTEL_EXPORTER_OTLP_PROTOCOL", protocol.to_string()));
        // A small queue fills at once, so the drop-when-full path is exercised too.
        env.push(("OTEL_BSP_MAX_QUEUE_SIZE", "16".to_string()));
        let server = start_traced(&["--access-logs"], &env);
        let client = reqwest::Client::new();
        let started = Instant::now();
        let mut slowest = Duration::ZERO;
        for _ in 0..300 {
            let one = Instant::now();
            let reply = client.get(server.at("/registry/vm")).send().await.unwrap();
            assert_eq!(reply.status(), 200);
            slowest = slowest.max(one.elapsed());
        }
        // Blocking on the exporter would cost its 10 s timeout at least once.
        assert!(
            slowest < Duration::from_secs(5),
            "{protocol} to {endpoint}: slowest request took {slowest:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(30));
        assert!(server.log().contains("trace_id="), "tracing was on");
    }
}

#[tokio::test]
async fn oci_requests_are_spans_named_by_their_route_template() {
    let (endpoint, received) = http_collector();
    let server = start_traced(&[], &tracing_env(&endpoint));
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent = format!("00-{trace}-00f067aa0ba902b7-01");
    let c = reqwest::Client::new();
    let reply = c
        .post(server.at("/v2/tart/secret-vm/blobs/uploads/"))
        .header("traceparent", &parent)
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 202);
    let upload = reply.headers()["location"].to_str().unwrap().to_string();
    let reply = c
        .get(server.at("/v2/tart/secret-vm/manifests/v1"))
        .header("traceparent", &parent)
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 404);
    let spans = received.wait_until("both OCI requests' spans", |spans| {
        trace_of(spans, trace).0.len() >= 2
    });
    let (requests, all) = trace_of(&spans, trace);
    let mut named: Vec<(&str, Option<String>)> = requests
        .iter()
        .map(|s| (s.name.as_str(), attr(s, "status")))
        .collect();
    named.sort();
    assert_eq!(
        named,
        vec![
            (
                "GET /v2/{name:.+}/manifests/{reference}",
                Some("404".into())
            ),
            ("POST /v2/{name:.+}/blobs/uploads/", Some("202".into())),
        ]
    );
    // Span names and routes are templates: no repository name, no upload id.
    let id = upload.rsplit('/').next().unwrap();
    for span in all {
        let route = attr(span, "route").unwrap_or_default();
        for text in [span.name.as_str(), route.as_str()] {
            assert!(!text.contains("secret-vm") && !text.contains(id), "{text}");
        }
    }
}
