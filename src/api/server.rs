//! `vmreg serve`: open the stores, bind, print the effective configuration, serve until
//! SIGTERM/SIGINT, then let transfers in flight finish within the grace period.

use std::time::Duration;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{Service, ServiceRequest, ServiceResponse};
use actix_web::middleware::DefaultHeaders;
use actix_web::{web, App, HttpServer, ResponseError};

use super::client_cert::{CertPolicy, PeerCertificate};
use super::observe::observe;
use super::security_headers;
use super::starting::{self, NotReady, Opener};
use super::{configure, configure_metrics, limits, tls, ApiError, AppState};
use crate::config::Config;
use crate::protocol::INSTANCE_HEADER;
use crate::registry::Registry;

const PURGE_EVERY: Duration = Duration::from_secs(600);
/// A request's headers must arrive within this (slow-loris headers are cut).
const HEADERS_WITHIN: Duration = Duration::from_secs(10);
/// An idle keep-alive connection is closed after this.
const KEEP_ALIVE: Duration = Duration::from_secs(30);

/// Runs the server; returns the process exit code.
pub fn run(config: Config) -> i32 {
    let traces = match crate::telemetry::trace::start() {
        Ok(traces) => traces,
        Err(e) => {
            eprintln!("vmreg: {e}");
            return 2;
        }
    };
    crate::telemetry::init_logs(config.telemetry.json_logs, traces.as_ref());
    crate::registry::budget::return_freed_parts_to_the_system();
    let names = std::env::vars_os().map(|(k, _)| k.to_string_lossy().into_owned());
    for warning in crate::vendor_env::warnings(names) {
        tracing::warn!("{warning}");
    }
    let result = actix_web::rt::System::new().block_on(serve(config));
    // Sends the last spans, outside the server's runtime.
    drop(traces);
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("vmreg: {e}");
            1
        }
    }
}

/// Logs text to stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_tracing() {
    crate::telemetry::init_logs(false, None);
}

async fn serve(config: Config) -> Result<(), String> {
    // What the configuration alone decides fails now, before any wait for the stores.
    let tls = config.tls.as_ref().map(tls::server_config).transpose()?;
    config
        .auth
        .validate()
        .map_err(|e| format!("authentication: {e}"))?;
    let listener = std::net::TcpListener::bind(&config.listen)
        .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let listening = format!(
        "vmreg {} listening on {}://{addr}",
        env!("CARGO_PKG_VERSION"),
        if tls.is_some() { "https" } else { "http" }
    );
    // One attempt before saying it listens: with its stores up, the server is ready the
    // moment it says so.
    let mut opener = Opener::new(config.clone());
    let first = opener.attempt().await?;
    println!("{listening}");
    print!("{config}");
    let opened = match first {
        Ok(opened) => opened,
        Err(missing) => {
            let status = NotReady::default();
            let copy = listener.try_clone().map_err(|e| e.to_string())?;
            let waiting = starting::not_ready_server(copy, tls.clone(), status.clone())?;
            let handle = waiting.handle();
            // The server's own task handles its stop and the signals: it must keep running.
            let mut waiting = actix_web::rt::spawn(waiting);
            let opened = tokio::select! {
                opened = starting::wait_for_stores(&mut opener, missing, &status) => opened,
                // Stopped by SIGTERM/SIGINT while waiting.
                _ = &mut waiting => return Ok(()),
            };
            handle.stop(true).await;
            let _ = waiting.await;
            let opened = opened?;
            tracing::info!("the stores answer; serving");
            opened
        }
    };
    drop(opener);
    let starting::Opened {
        registry,
        auth,
        instance_id,
    } = opened;
    let auth = web::Data::new(auth);
    let state = web::Data::new(AppState {
        registry: registry.clone(),
        data_dir: config.data_dir.clone(),
        public_url: config.public_url.clone(),
        instance_id: instance_id.clone(),
    });
    let access_logs = config.telemetry.access_logs;
    let metrics_server = match &config.telemetry.metrics_listen {
        Some(listen) => Some(metrics_listener(listen, state.clone())?),
        None => None,
    };
    let idle = config.body_idle_timeout;
    let certificates = web::Data::new(CertPolicy {
        groups: config.cert_groups,
        trust_forwarded: config.trust_forwarded_client_cert,
    });
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .app_data(auth.clone())
            .app_data(certificates.clone())
            .wrap_fn(move |req, srv| limits::limit_requests(idle, req, srv))
            .wrap_fn(reject_huge_headers)
            .wrap_fn(move |req, srv| observe(req, srv, access_logs))
            .wrap_fn(security_headers::add)
            .wrap(DefaultHeaders::new().add((INSTANCE_HEADER, instance_id.as_str())))
            .configure(configure)
    })
    .on_connect(remember_client_certificate)
    // Slow clients hold a connection, never a worker; these bound how many and how long.
    .max_connections(config.max_connections)
    .client_request_timeout(HEADERS_WITHIN)
    .client_disconnect_timeout(Duration::from_secs(1))
    .keep_alive(KEEP_ALIVE);
    let server = match tls {
        Some(tls) => server.listen_rustls_0_23(listener, tls),
        None => server.listen(listener),
    }
    .map_err(|e| e.to_string())?
    .shutdown_timeout(config.shutdown_timeout.as_secs().max(1))
    .run();
    match config.gc_interval.is_zero() {
        true => actix_web::rt::spawn(purge_sessions(registry.clone())),
        false => actix_web::rt::spawn(collect_garbage(
            registry.clone(),
            config.gc_interval,
            crate::registry::sweep::GcOptions::of(&config, config.gc_grace, false),
        )),
    };
    actix_web::rt::spawn(flush_pulls(registry.clone(), config.pull_flush_interval));
    actix_web::rt::spawn(release_idle_memory(registry.clone()));
    let served = server.await.map_err(|e| e.to_string());
    // The pulls noted since the last flush, so a clean shutdown loses none.
    if let Err(e) = registry.flush_pulls().await {
        tracing::warn!(error = %e, "could not record the last pulls");
    }
    if let Some(metrics) = metrics_server {
        metrics.stop(true).await;
    }
    served
}

/// Writes the pulls this replica noted, every `interval`.
async fn flush_pulls(registry: Registry, interval: Duration) {
    loop {
        tokio::time::sleep(interval).await;
        if let Err(e) = registry.flush_pulls().await {
            tracing::warn!(error = %e, "could not record pulls; kept for the next try");
        }
    }
}

/// Frees pooled part buffers once uploads stop using them, so their memory is free for
/// the downloads that follow a burst of pushes; and while transfers run, once the last of
/// them ends and once after, returns the free heap to the system. The small network
/// buffers transfers churn through are freed out of order across the allocator's arenas,
/// whose trimming reaches only each heap's top: without this, what one burst freed stays
/// resident and the next burst's peak comes on top of it.
async fn release_idle_memory(registry: Registry) {
    use super::in_flight::TRANSFERS;
    use crate::registry::budget::{return_free_heap, POOL_IDLE};
    let mut was_busy = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(POOL_IDLE / 2) => {}
            _ = TRANSFERS.all_ended() => was_busy = true,
        }
        let freed = registry.release_idle_part_buffers(POOL_IDLE);
        let busy = freed > 0 || TRANSFERS.count() > 0;
        if busy || was_busy {
            return_free_heap();
        }
        was_busy = busy;
    }
}

/// With the periodic collection off, upload sessions idle past their lifetime are still
/// aborted, on every replica (aborting is idempotent).
async fn purge_sessions(registry: Registry) {
    loop {
        tokio::time::sleep(PURGE_EVERY).await;
        match registry
            .purge_stale_sessions(crate::registry::UPLOAD_SESSION_TTL.as_secs())
            .await
        {
            Ok(n) => {
                crate::telemetry::metrics::gc_run("sessions", n as u64, 0);
                if n > 0 {
                    tracing::info!(sessions = n, "aborted stale upload sessions");
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not purge stale upload sessions"),
        }
    }
}

/// Every `interval`, the replica holding the lease collects garbage. The holder renews the
/// lease for two intervals each time, so another replica takes over only once it is gone.
async fn collect_garbage(
    registry: Registry,
    interval: Duration,
    options: crate::registry::sweep::GcOptions,
) {
    let me = uuid::Uuid::new_v4().simple().to_string();
    loop {
        tokio::time::sleep(interval).await;
        match registry.take_gc_lease(&me, interval * 2).await {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "could not take the garbage collection lease");
                continue;
            }
        }
        apply_retention(&registry).await;
        match registry.collect(options).await {
            Ok(report) => tracing::info!(
                objects = report.objects.len(),
                bytes = report.bytes,
                uploads = report.uploads,
                sessions = report.sessions,
                commit_records = report.commit_records,
                "garbage collection ran"
            ),
            Err(e) => tracing::warn!(error = %e, "garbage collection failed"),
        }
    }
}

/// The configured retention policies, applied by the replica holding the collection's
/// lease before it collects.
async fn apply_retention(registry: &Registry) {
    if registry.retention().is_empty() {
        return;
    }
    match registry.retain(Default::default()).await {
        Ok(report) => tracing::info!(
            tags = report.removed.len(),
            templates = report.templates,
            "retention ran"
        ),
        Err(e) => tracing::warn!(error = %e, "retention failed"),
    }
}

/// Starts the separate `/metrics` listener (the vendor's `:2112`); it stops with the
/// main server rather than on signals of its own.
fn metrics_listener(
    listen: &str,
    state: web::Data<AppState>,
) -> Result<actix_web::dev::ServerHandle, String> {
    let listener = std::net::TcpListener::bind(listen)
        .map_err(|e| format!("cannot listen for metrics on {listen}: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .wrap_fn(security_headers::add)
            .configure(configure_metrics)
    })
    .workers(1)
    .disable_signals()
    .listen(listener)
    .map_err(|e| e.to_string())?
    .run();
    println!("metrics on http://{addr}/metrics");
    let handle = server.handle();
    actix_web::rt::spawn(server);
    Ok(handle)
}

/// Keeps the client certificate a TLS connection was verified with, for the requests on it.
fn remember_client_certificate(conn: &dyn std::any::Any, data: &mut actix_web::dev::Extensions) {
    type Tls = actix_tls::accept::rustls_0_23::TlsStream<actix_web::rt::net::TcpStream>;
    if let Some(stream) = conn.downcast_ref::<Tls>() {
        let (_, session) = stream.get_ref();
        if let Some(cert) = session.peer_certificates().and_then(|c| c.first()) {
            data.insert(PeerCertificate(cert.to_vec()));
        }
    }
}

/// Headers past this many bytes in all are refused.
const MAX_HEADER_BYTES: usize = 64 * 1024;

/// Refuses requests with oversized headers with a `FAIL` 431 before any handler runs.
fn reject_huge_headers<S, B>(
    req: ServiceRequest,
    srv: &S,
) -> futures_util::future::LocalBoxFuture<'static, Result<ServiceResponse<BoxBody>, actix_web::Error>>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error>,
    S::Future: 'static,
    B: MessageBody + 'static,
{
    let size: usize = req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len())
        .sum();
    if size > MAX_HEADER_BYTES {
        let reply = ApiError::header_too_large(format!(
            "request headers are larger than {MAX_HEADER_BYTES} bytes"
        ))
        .error_response();
        return Box::pin(async move { Ok(req.into_response(reply)) });
    }
    let fut = srv.call(req);
    Box::pin(async move { fut.await.map(ServiceResponse::map_into_boxed_body) })
}
