//! `POST /admin/api/v1/retention`: applies a retention policy on demand.

use std::time::Duration;

use actix_web::{web, HttpResponse};
use serde::Deserialize;

use super::params::json_body;
use super::{ok, ApiError, AppState};
use crate::registry::retention::{RetentionPolicy, RetentionRun};

/// The request: a policy (none: the configured ones), a template, a dry run.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RetentionRequest {
    keep_last: Option<u32>,
    /// A duration (`30d`, `12h`, `90`) or a number of seconds.
    unused_for: Option<serde_json::Value>,
    #[serde(default)]
    include_latest: bool,
    template: Option<String>,
    #[serde(default)]
    dry_run: bool,
}

fn duration(value: &serde_json::Value) -> Result<Duration, ApiError> {
    let parsed = match value {
        serde_json::Value::String(s) => crate::config::parse_duration(s),
        serde_json::Value::Number(n) => n
            .as_u64()
            .map(Duration::from_secs)
            .ok_or_else(|| format!("invalid duration {n}: a whole number of seconds")),
        other => Err(format!("invalid duration {other}")),
    };
    parsed.map_err(|e| ApiError::bad_request(format!("unused_for: {e}")))
}

/// `POST /admin/api/v1/retention`: removes (or with `dry_run` lists) the tags the policy
/// no longer keeps; answers the report.
pub async fn apply(
    state: web::Data<AppState>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let req: RetentionRequest = json_body(payload).await?.unwrap_or_default();
    let policy = RetentionPolicy {
        keep_last: req.keep_last,
        unused_for: req.unused_for.as_ref().map(duration).transpose()?,
        include_latest: req.include_latest,
    };
    let policy = match policy.is_empty() {
        false => Some(policy),
        true if req.include_latest => {
            return Err(ApiError::bad_request(
                "include_latest needs keep_last or unused_for",
            ))
        }
        true if state.registry.retention().is_empty() => {
            return Err(ApiError::bad_request(
                "no policy: give keep_last or unused_for, or configure one on the server",
            ))
        }
        true => None,
    };
    let run = RetentionRun {
        policy,
        template: req.template,
        dry_run: req.dry_run,
    };
    Ok(ok(state.registry.retain(run).await?))
}
