//! OpenTelemetry traces over OTLP, switched on by the standard `OTEL_*` variables.
//!
//! Off unless `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set;
//! then off costs one relaxed load per request and store operation ([`enabled`]). On, spans
//! go to a batch processor whose queue drops spans when full, and the exporter runs on a
//! runtime of its own, so a slow or dead collector never holds up a request.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry::Context;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{BatchSpanProcessor, SdkTracerProvider, SpanData, SpanExporter};
use opentelemetry_sdk::Resource;
use tracing_opentelemetry::OpenTelemetrySpanExt;

static ENABLED: AtomicBool = AtomicBool::new(false);

/// How long shutting down may spend sending the last spans to a collector.
const SHUTDOWN_WITHIN: Duration = Duration::from_secs(3);

/// Whether spans are exported; every tracing-only cost is behind this.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The OTLP wire format, from `OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wire {
    /// `http/protobuf`, the default of the specification.
    HttpProtobuf,
    /// `grpc`.
    Grpc,
}

/// What the environment asks for: `None` when tracing is off.
pub fn wanted(env: impl Fn(&str) -> Option<String>) -> Result<Option<Wire>, String> {
    let set = |name: &str| env(name).filter(|v| !v.trim().is_empty());
    if set("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
        || set("OTEL_TRACES_EXPORTER").is_some_and(|v| v.trim() == "none")
    {
        return Ok(None);
    }
    if set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_none()
        && set("OTEL_EXPORTER_OTLP_ENDPOINT").is_none()
    {
        return Ok(None);
    }
    let (name, protocol) = match set("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") {
        Some(p) => ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", p),
        None => match set("OTEL_EXPORTER_OTLP_PROTOCOL") {
            Some(p) => ("OTEL_EXPORTER_OTLP_PROTOCOL", p),
            None => return Ok(Some(Wire::HttpProtobuf)),
        },
    };
    match protocol.trim() {
        "http/protobuf" => Ok(Some(Wire::HttpProtobuf)),
        "grpc" => Ok(Some(Wire::Grpc)),
        other => Err(format!(
            "{name}={other:?} is not supported: use http/protobuf or grpc"
        )),
    }
}

/// Exports spans while it lives; dropping it sends what is queued (for a short while)
/// and stops the exporter. Drop it outside any async runtime.
pub struct Tracing {
    provider: SdkTracerProvider,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Tracing {
    /// The `tracing` layer that turns spans into OpenTelemetry spans.
    pub fn layer<S>(&self) -> impl tracing_subscriber::Layer<S>
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        let tracer = self.provider.tracer("vmreg");
        // Lean spans: nothing done per poll (no busy/idle clock, no context switch), no
        // source locations or thread names.
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_tracked_inactivity(false)
            .with_location(false)
            .with_threads(false)
            .with_target(false)
            .with_context_activation(false)
    }
}

impl Drop for Tracing {
    fn drop(&mut self) {
        ENABLED.store(false, Ordering::Relaxed);
        if let Err(e) = self.provider.shutdown_with_timeout(SHUTDOWN_WITHIN) {
            eprintln!("vmreg: traces: the last spans may not have reached the collector: {e}");
        }
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Starts exporting when the environment asks for it (see [`wanted`]); the standard
/// variables for the endpoint, headers, timeout, service name (default `vmreg`), sampler
/// and batch sizes are read by the OpenTelemetry SDK itself.
pub fn start() -> Result<Option<Tracing>, String> {
    let Some(wire) = wanted(|name| std::env::var(name).ok())? else {
        return Ok(None);
    };
    // The exporters need a Tokio runtime; one worker of its own keeps them off the
    // request workers and alive however those are scheduled.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("vmreg-otlp")
        .enable_all()
        .build()
        .map_err(|e| format!("traces: cannot start the exporter's runtime: {e}"))?;
    let exporter = {
        let _entered = runtime.enter();
        let built = match wire {
            Wire::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(Protocol::HttpBinary)
                .build(),
            Wire::Grpc => opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .build(),
        };
        built.map_err(|e| format!("traces: {e}"))?
    };
    let exporter = OnRuntime {
        inner: Arc::new(exporter),
        runtime: runtime.handle().clone(),
    };
    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name("vmreg");
    }
    let provider = SdkTracerProvider::builder()
        .with_span_processor(BatchSpanProcessor::builder(exporter).build())
        .with_resource(resource.build())
        .build();
    ENABLED.store(true, Ordering::Relaxed);
    Ok(Some(Tracing {
        provider,
        runtime: Some(runtime),
    }))
}

/// Runs an exporter's futures on the exporter runtime: the batch processor polls them
/// from a plain thread, where Tokio-based clients would find no reactor.
#[derive(Debug)]
struct OnRuntime {
    inner: Arc<opentelemetry_otlp::SpanExporter>,
    runtime: tokio::runtime::Handle,
}

impl SpanExporter for OnRuntime {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let inner = self.inner.clone();
        let sent = self.runtime.spawn(async move { inner.export(batch).await });
        match sent.await {
            Ok(result) => result,
            Err(e) => Err(opentelemetry_sdk::error::OTelSdkError::InternalFailure(
                e.to_string(),
            )),
        }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        // Called once while building the provider, before any export holds a clone.
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.set_resource(resource);
        }
    }
}

/// Reads `traceparent` (and `tracestate`) from request headers.
struct Headers<'a>(&'a actix_web::http::header::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// Makes `span` continue the caller's trace when the request carries a W3C
/// `traceparent`, and returns the span's trace id for the log lines.
pub fn continue_trace(
    span: &tracing::Span,
    headers: &actix_web::http::header::HeaderMap,
) -> Option<String> {
    let parent = TraceContextPropagator::new().extract(&Headers(headers));
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
    let context: Context = span.context();
    let ids = context.span().span_context().clone();
    ids.is_valid().then(|| ids.trace_id().to_string())
}

/// Names a request's span `METHOD route`. Its OpenTelemetry span already exists (its
/// trace id was read when the request started), and recording `otel.name` no longer
/// reaches one that exists.
pub fn name_request(span: &tracing::Span, method: &actix_web::http::Method, route: &str) {
    if enabled() {
        span.context()
            .span()
            .update_name(format!("{method} {route}"));
    }
}

/// Names the template the current request works on, on its span.
pub fn record_template(template: &dyn std::fmt::Display) {
    if enabled() {
        tracing::Span::current().record("template", tracing::field::display(template));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn off_without_an_endpoint_and_when_disabled() {
        assert_eq!(wanted(env(&[])), Ok(None));
        assert_eq!(wanted(env(&[("OTEL_SERVICE_NAME", "x")])), Ok(None));
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318");
        assert_eq!(
            wanted(env(&[endpoint, ("OTEL_SDK_DISABLED", "true")])),
            Ok(None)
        );
        assert_eq!(
            wanted(env(&[endpoint, ("OTEL_TRACES_EXPORTER", "none")])),
            Ok(None)
        );
    }

    #[test]
    fn protocol_defaults_to_http_and_the_traces_variable_wins() {
        let endpoint = (
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "http://c:4318/v1/traces",
        );
        assert_eq!(wanted(env(&[endpoint])), Ok(Some(Wire::HttpProtobuf)));
        assert_eq!(
            wanted(env(&[endpoint, ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")])),
            Ok(Some(Wire::Grpc))
        );
        assert_eq!(
            wanted(env(&[
                endpoint,
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
                ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
            ])),
            Ok(Some(Wire::HttpProtobuf))
        );
        let json = wanted(env(&[
            endpoint,
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ]));
        assert!(json.unwrap_err().contains("http/json"));
    }
}
