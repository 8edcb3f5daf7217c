//! `GET /metrics`: every metric in the Prometheus text format.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use actix_web::{web, HttpResponse};

use super::AppState;
use crate::telemetry::metrics;

/// Counting the templates reads every summary: at most once per this long.
const INVENTORY_TTL: Duration = Duration::from_secs(30);

static INVENTORY_AT: Mutex<Option<Instant>> = Mutex::new(None);

/// `GET /metrics`.
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    let stale = INVENTORY_AT
        .lock()
        .map(|at| !matches!(*at, Some(t) if t.elapsed() < INVENTORY_TTL))
        .unwrap_or(true);
    if stale {
        match state.registry.inventory().await {
            Ok(inventory) => {
                metrics::set_inventory(inventory);
                if let Ok(mut at) = INVENTORY_AT.lock() {
                    *at = Some(Instant::now());
                }
            }
            // The gauges keep their last values; the store errors have their own series.
            Err(e) => tracing::warn!(error = %e, "could not count the registry's contents"),
        }
    }
    HttpResponse::Ok()
        .content_type(metrics::CONTENT_TYPE)
        .body(metrics::render())
}
