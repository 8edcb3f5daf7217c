//! `vmreg serve` before its stores answer: it listens at once, answers `/livez` 200,
//! `/readyz` and every other request 503 naming the store it waits for, and keeps trying
//! with capped exponential back-off and jitter. A store that refuses the configuration
//! (credentials, a missing bucket) ends the wait: no retry would cure it.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use actix_web::{web, App, HttpResponse, HttpServer};

use super::{ok, security_headers, ApiError};
use crate::auth::{Auth, AuthError};
use crate::config::Config;
use crate::meta::{MetaError, MetaStore};
use crate::registry::backends::{self, OpenError};
use crate::registry::{Registry, RegistryError};
use crate::store::{BlobStore, StoreError};

/// The first wait between attempts; it doubles up to [`LAST_DELAY`].
const FIRST_DELAY: Duration = Duration::from_millis(100);
/// The longest wait between attempts.
const LAST_DELAY: Duration = Duration::from_secs(30);
/// Each wait is this fraction longer or shorter at random, so replicas started together
/// do not retry in step.
const JITTER: f64 = 0.2;

/// What the stores gave: everything the server needs from them before it serves.
pub struct Opened {
    /// The service layer on both stores.
    pub registry: Registry,
    /// Authentication, its signing key read or shared.
    pub auth: Auth,
    /// The registry's instance id.
    pub instance_id: String,
}

/// Why serving cannot start (yet).
enum Failure {
    /// The configuration is wrong: stop with this line.
    Config(String),
    /// What is missing, to retry.
    Waiting(String),
}

/// Opens the stores and what depends on them, step by step; a step done stays done.
pub struct Opener {
    config: Config,
    meta: Option<Arc<dyn MetaStore>>,
    blobs: Option<Arc<dyn BlobStore>>,
}

impl Opener {
    /// Nothing opened yet.
    pub fn new(config: Config) -> Self {
        Self {
            config,
            meta: None,
            blobs: None,
        }
    }

    /// One attempt at every step not done yet: `Ok(Ok(_))` when all are done,
    /// `Ok(Err(what is missing))` to try again, `Err(line)` for a configuration error.
    pub async fn attempt(&mut self) -> Result<Result<Opened, String>, String> {
        match self.try_open().await {
            Ok(opened) => Ok(Ok(opened)),
            Err(Failure::Waiting(missing)) => Ok(Err(missing)),
            Err(Failure::Config(line)) => Err(line),
        }
    }

    async fn try_open(&mut self) -> Result<Opened, Failure> {
        let mut missing = Vec::new();
        if self.meta.is_none() {
            match backends::open_meta(&self.config).await {
                Ok(meta) => self.meta = Some(meta),
                Err(OpenError::Config(m)) => {
                    return Err(Failure::Config(format!("metadata store: {m}")))
                }
                Err(OpenError::Unreachable(m)) => missing.push(format!(
                    "metadata store {} unreachable ({m})",
                    backends::meta_name(&self.config)
                )),
            }
        }
        if self.blobs.is_none() {
            match backends::open_blobs(&self.config).await {
                Ok(blobs) => self.blobs = Some(blobs),
                Err(OpenError::Config(m)) => {
                    return Err(Failure::Config(format!("blob store: {m}")))
                }
                Err(OpenError::Unreachable(m)) => missing.push(format!(
                    "blob store {} unreachable ({m})",
                    backends::blobs_name(&self.config)
                )),
            }
        }
        let (Some(meta), Some(blobs)) = (self.meta.clone(), self.blobs.clone()) else {
            return Err(Failure::Waiting(missing.join("; ")));
        };
        let config = &self.config;
        let meta_down = |m: String| {
            Failure::Waiting(format!(
                "metadata store {} unreachable ({m})",
                backends::meta_name(config)
            ))
        };
        // Both answered a moment ago; either may have gone since, which is worth a retry.
        let auth = Auth::open(config.auth.clone(), meta.clone(), blobs.clone())
            .await
            .map_err(|e| match e {
                AuthError::Meta(MetaError::Unavailable(m)) => meta_down(m),
                // Identities are kept in the bucket too (see auth::durable).
                AuthError::Store(StoreError::Unavailable(m)) => Failure::Waiting(format!(
                    "blob store {} unreachable ({m})",
                    backends::blobs_name(config)
                )),
                AuthError::Busy => Failure::Waiting("metadata store busy".into()),
                e => Failure::Config(format!("authentication: {e}")),
            })?;
        let concurrency = config
            .s3
            .as_ref()
            .map(|s| s.upload_concurrency)
            .unwrap_or(2);
        let registry = Registry::new(meta, blobs, config.part_size, concurrency)
            .with_part_memory(config.part_memory)
            .with_limits(config.limits)
            .with_retention(config.retention.clone());
        let instance_id = registry.instance_id().await.map_err(|e| match e {
            RegistryError::Meta(MetaError::Unavailable(m)) => meta_down(m),
            RegistryError::Store(StoreError::Unavailable(m)) => Failure::Waiting(format!(
                "blob store {} unreachable ({m})",
                backends::blobs_name(config)
            )),
            RegistryError::Busy => Failure::Waiting("metadata store busy".into()),
            e => Failure::Config(format!("the registry's instance id: {e}")),
        })?;
        Ok(Opened {
            registry,
            auth,
            instance_id,
        })
    }
}

/// Capped exponential back-off with jitter.
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { next: FIRST_DELAY }
    }
}

impl Backoff {
    /// The wait before the next attempt.
    pub fn delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(LAST_DELAY);
        // Uniform in [0, 1): every RandomState is keyed anew, so what it hashes differs.
        use std::hash::{BuildHasher, Hasher};
        let bits = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        let unit = (bits >> 11) as f64 / (1u64 << 53) as f64;
        base.mul_f64(1.0 + JITTER * (2.0 * unit - 1.0))
    }
}

/// Retries until everything is open; logs what is missing once per change, not on every
/// attempt. `Err` is a configuration error.
pub async fn wait_for_stores(
    opener: &mut Opener,
    mut missing: String,
    status: &NotReady,
) -> Result<Opened, String> {
    let mut backoff = Backoff::default();
    let mut logged = String::new();
    loop {
        status.set(&missing);
        let delay = backoff.delay();
        if missing != logged {
            tracing::warn!(
                retry_in_ms = delay.as_millis() as u64,
                "not ready: {missing}; retrying"
            );
            logged = missing.clone();
        } else {
            tracing::debug!(
                retry_in_ms = delay.as_millis() as u64,
                "still not ready: {missing}"
            );
        }
        tokio::time::sleep(delay).await;
        match opener.attempt().await? {
            Ok(opened) => return Ok(opened),
            Err(now) => missing = now,
        }
    }
}

/// What the server waits for, shared with the requests answered meanwhile.
#[derive(Clone, Default)]
pub struct NotReady(Arc<RwLock<String>>);

impl NotReady {
    fn set(&self, missing: &str) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = missing.to_string();
    }

    fn message(&self) -> String {
        let missing = self.0.read().unwrap_or_else(|p| p.into_inner());
        format!("not ready: {missing}; retrying")
    }
}

/// The server that answers while the stores are awaited, on a copy of the real listener:
/// once stopped, connections queue on the listener for the real server.
pub fn not_ready_server(
    listener: std::net::TcpListener,
    tls: Option<rustls::ServerConfig>,
    status: NotReady,
) -> Result<actix_web::dev::Server, String> {
    let status = web::Data::new(status);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(status.clone())
            .wrap_fn(security_headers::add)
            .route("/livez", web::get().to(livez))
            .default_service(web::to(not_ready))
    })
    // SIGTERM while waiting stops this server, and with it the wait.
    .workers(1)
    // No connection outlives its reply, so stopping this server for the real one waits
    // for nothing.
    .keep_alive(actix_web::http::KeepAlive::Disabled)
    .shutdown_timeout(1);
    match tls {
        Some(tls) => server.listen_rustls_0_23(listener, tls),
        None => server.listen(listener),
    }
    .map(|s| s.run())
    .map_err(|e| e.to_string())
}

async fn livez() -> HttpResponse {
    ok("alive")
}

/// `/readyz` and everything else: 503 naming what is missing.
async fn not_ready(status: web::Data<NotReady>) -> Result<HttpResponse, ApiError> {
    Err(ApiError::unavailable(status.message()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn back_off_doubles_to_its_cap_within_the_jitter() {
        let mut b = Backoff::default();
        let delays: Vec<Duration> = (0..14).map(|_| b.delay()).collect();
        let within = |d: Duration, base: Duration| {
            d >= base.mul_f64(1.0 - JITTER) && d <= base.mul_f64(1.0 + JITTER)
        };
        assert!(within(delays[0], FIRST_DELAY), "{delays:?}");
        assert!(within(delays[1], FIRST_DELAY * 2), "{delays:?}");
        assert!(within(delays[13], LAST_DELAY), "{delays:?}");
        assert!(delays
            .iter()
            .all(|d| *d <= LAST_DELAY.mul_f64(1.0 + JITTER)));
    }
}
