//! `vmreg serve`: open the stores, bind, print the effective configuration, serve until
//! SIGTERM/SIGINT, then let transfers in flight finish within the grace period.

use std::time::Duration;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{Service, ServiceRequest, ServiceResponse};
use actix_web::{web, App, HttpServer, ResponseError};

use super::observe::observe;
use super::{access, configure, configure_metrics, ApiError, AppState};
use crate::auth::Auth;
use crate::config::Config;
use crate::registry::{backends, Registry};

/// Upload sessions untouched for a week are aborted, as distribution does after 168 h.
const STALE_SESSION_SECS: u64 = 7 * 24 * 3600;
const PURGE_EVERY: Duration = Duration::from_secs(600);

/// Runs the server; returns the process exit code.
pub fn run(config: Config) -> i32 {
    crate::telemetry::init_logs(config.telemetry.json_logs);
    let names = std::env::vars_os().map(|(k, _)| k.to_string_lossy().into_owned());
    for warning in crate::vendor_env::warnings(names) {
        tracing::warn!("{warning}");
    }
    let result = actix_web::rt::System::new().block_on(serve(config));
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
    crate::telemetry::init_logs(false);
}

async fn serve(config: Config) -> Result<(), String> {
    let (meta, blobs) = backends::open(&config).await?;
    let concurrency = config
        .s3
        .as_ref()
        .map(|s| s.upload_concurrency)
        .unwrap_or(2);
    let auth = Auth::open(config.auth.clone(), meta.clone())
        .await
        .map_err(|e| format!("authentication: {e}"))?;
    let auth = web::Data::new(auth);
    let registry = Registry::new(meta, blobs, config.part_size, concurrency);
    let listener = std::net::TcpListener::bind(&config.listen)
        .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    println!(
        "vmreg {} listening on http://{addr}",
        env!("CARGO_PKG_VERSION")
    );
    print!("{config}");
    let state = web::Data::new(AppState {
        registry: registry.clone(),
        data_dir: config.data_dir.clone(),
    });
    let access_logs = config.telemetry.access_logs;
    let metrics_server = match &config.telemetry.metrics_listen {
        Some(listen) => Some(metrics_listener(listen, state.clone())?),
        None => None,
    };
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .app_data(auth.clone())
            .wrap(actix_web::middleware::from_fn(access::guard))
            .wrap_fn(reject_huge_headers)
            .wrap_fn(move |req, srv| observe(req, srv, access_logs))
            .configure(configure)
    })
    .listen(listener)
    .map_err(|e| e.to_string())?
    .shutdown_timeout(config.shutdown_timeout.as_secs().max(1))
    .run();
    actix_web::rt::spawn(async move {
        loop {
            tokio::time::sleep(PURGE_EVERY).await;
            match registry.purge_stale_sessions(STALE_SESSION_SECS).await {
                Ok(0) => crate::telemetry::metrics::gc_run("sessions", 0, 0),
                Ok(n) => {
                    crate::telemetry::metrics::gc_run("sessions", n as u64, 0);
                    tracing::info!(sessions = n, "aborted stale upload sessions");
                }
                Err(e) => tracing::warn!(error = %e, "could not purge stale upload sessions"),
            }
        }
    });
    let served = server.await.map_err(|e| e.to_string());
    if let Some(metrics) = metrics_server {
        metrics.stop(true).await;
    }
    served
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
