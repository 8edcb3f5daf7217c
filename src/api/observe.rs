//! The edge of every request: a request id (the caller's `X-Request-Id` when it is sane,
//! else a new one) returned in the response and carried by a span around the request, so
//! every log line of the request names it; request metrics by route template; and, when
//! switched on, one access log line. Nothing from headers or the query string is logged,
//! so credentials and presigned parameters stay out of the logs.
//!
//! With traces on, the span is also the request's OpenTelemetry server span: it continues
//! a caller's W3C `traceparent`, carries route, status and template, and lends its trace
//! id to the log lines.

use std::time::Instant;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{Service, ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use futures_util::future::LocalBoxFuture;
use tracing::Instrument;

use actix_web::HttpMessage;

use crate::telemetry::metrics;

/// The header carrying the request id both ways.
pub const REQUEST_ID: &str = "x-request-id";
/// The label of requests no route matched, so scanners cannot grow the series.
const UNMATCHED: &str = "unmatched";

tokio::task_local! {
    /// The id of the request whose handling is being polled.
    static REQUEST: String;
}

/// The id of the request being answered, when called while it is (error replies name it,
/// so a client can point at the log lines of its failure).
pub fn current_request_id() -> Option<String> {
    REQUEST.try_with(String::clone).ok()
}

/// The caller's request id when it is short and plain, else a fresh one; anything else
/// could forge or break log lines.
pub fn request_id(given: Option<&HeaderValue>) -> String {
    let sane = |id: &&str| {
        !id.is_empty()
            && id.len() <= 128
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
    };
    match given.and_then(|v| v.to_str().ok()).filter(sane) {
        Some(id) => id.to_string(),
        None => uuid::Uuid::new_v4().simple().to_string(),
    }
}

/// Wraps one request: see the module documentation.
pub fn observe<S, B>(
    req: ServiceRequest,
    srv: &S,
    access_logs: bool,
) -> LocalBoxFuture<'static, Result<ServiceResponse<BoxBody>, actix_web::Error>>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error>,
    S::Future: 'static,
    B: MessageBody + 'static,
{
    let started = Instant::now();
    let id = request_id(req.headers().get(REQUEST_ID));
    let method = req.method().clone();
    let span = request_span(&id, &method, req.headers());
    let peer = req.peer_addr();
    let path = req.path().to_string();
    // The route is known once the router has matched one; its access check fills the slot.
    let slot = RouteSlot::default();
    req.extensions_mut().insert(slot.clone());
    let fut = span.in_scope(|| REQUEST.sync_scope(id.clone(), || srv.call(req)));
    let scoped = id.clone();
    Box::pin(
        REQUEST.scope(
            scoped,
            async move {
                let result = fut.await;
                let route = match slot.0.get() {
                    Some(route) => route,
                    None => {
                        // No access check ran: the router matched no route.
                        let unmatched = tracing::field::display(UNMATCHED);
                        tracing::Span::current().record("route", unmatched);
                        UNMATCHED
                    }
                };
                let mut res = match result {
                    Ok(res) => res.map_into_boxed_body(),
                    Err(e) => {
                        let status = e.as_response_error().status_code().as_u16();
                        metrics::http_request(method.as_str(), route, status, started.elapsed());
                        return Err(e);
                    }
                };
                if let Ok(value) = HeaderValue::from_str(&id) {
                    res.headers_mut()
                        .insert(HeaderName::from_static(REQUEST_ID), value);
                }
                let status = res.status().as_u16();
                let elapsed = started.elapsed();
                if crate::telemetry::trace::enabled() {
                    let span = tracing::Span::current();
                    span.record("status", status);
                    if res.status().is_server_error() {
                        span.record("otel.status_code", "ERROR");
                    }
                }
                metrics::http_request(method.as_str(), route, status, elapsed);
                if access_logs {
                    let bytes = match res.response().body().size() {
                        actix_web::body::BodySize::Sized(n) => Some(n),
                        _ => None,
                    };
                    tracing::info!(
                        target: "vmreg::access",
                        peer = %peer.map(|p| p.ip().to_string()).unwrap_or_default(),
                        path = %path,
                        status,
                        bytes,
                        ms = (elapsed.as_secs_f64() * 1e6).round() / 1e3,
                        "access"
                    );
                }
                Ok(res)
            }
            .instrument(span),
        ),
    )
}

/// Where a request's matched route is left for the metrics recorded once it is answered
/// (the request itself cannot be held while the router still matches it).
#[derive(Clone, Default)]
pub struct RouteSlot(std::rc::Rc<std::cell::Cell<Option<&'static str>>>);

/// Names the route of a request, whose span is current: its access check calls this once
/// the router has matched the route. A request no route matched keeps its span's first
/// name, `METHOD unmatched`, and is counted as `unmatched`.
pub fn name_route(req: &ServiceRequest, route: &'static str) {
    if let Some(slot) = req.extensions().get::<RouteSlot>() {
        slot.0.set(Some(route));
    }
    let method = req.method();
    let span = tracing::Span::current();
    span.record("route", tracing::field::display(route));
    crate::telemetry::trace::name_request(&span, method, route);
}

/// The span around one request; with traces on, an OpenTelemetry server span too, whose
/// `route`, `status` and `template` are filled in as they become known.
fn request_span(
    id: &str,
    method: &actix_web::http::Method,
    headers: &actix_web::http::header::HeaderMap,
) -> tracing::Span {
    use crate::telemetry::trace;
    let empty = tracing::field::Empty;
    if !trace::enabled() {
        return tracing::info_span!("request", id = %id, method = %method, route = empty);
    }
    let span = tracing::info_span!(
        "request",
        id = %id,
        method = %method,
        route = empty,
        status = empty,
        template = empty,
        trace_id = empty,
        otel.name = %format_args!("{method} {UNMATCHED}"),
        otel.kind = "server",
        otel.status_code = empty,
    );
    if let Some(trace_id) = trace::continue_trace(&span, headers) {
        span.record("trace_id", tracing::field::display(trace_id));
    }
    span
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_plain_ids_and_replaces_the_rest() {
        let given = HeaderValue::from_static("ci-job-42.step:3");
        assert_eq!(request_id(Some(&given)), "ci-job-42.step:3");
        for bad in ["", "a b", "x\"}{", &"x".repeat(129)] {
            let value = HeaderValue::from_str(bad).unwrap();
            let made = request_id(Some(&value));
            assert_eq!(made.len(), 32, "{bad:?} should be replaced");
        }
        assert_eq!(request_id(None).len(), 32);
    }
}
