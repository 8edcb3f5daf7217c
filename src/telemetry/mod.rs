//! How the server reports on itself: log lines (text or JSON), Prometheus metrics and
//! OpenTelemetry traces. Request ids, access logs, request metrics and request spans are
//! recorded at the HTTP edge (`api::observe`); store latencies and spans where the stores
//! are opened.

pub mod metrics;
pub mod trace;

/// A store whose operations are timed for the metrics; the blob and metadata store
/// traits are implemented for it where they are declared (`store::instrumented`,
/// `meta::instrumented`).
pub struct Instrumented<T> {
    /// The store doing the work.
    pub inner: T,
    /// The `store` label of its series: `s3`, `disk`, `redis` or `redb`.
    pub name: &'static str,
}

impl<T> Instrumented<T> {
    /// Times `inner`'s operations under `name`.
    pub fn new(inner: T, name: &'static str) -> Self {
        Self { inner, name }
    }
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`), as text or, with `json`, one
/// JSON object a line whose `span` carries the request id. With `traces`, spans also go
/// to OpenTelemetry whatever `RUST_LOG` says.
pub fn init_logs(json: bool, traces: Option<&trace::Tracing>) {
    use std::io::IsTerminal;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let fmt = if json {
        fmt.json()
            .with_current_span(true)
            .with_filter(filter)
            .boxed()
    } else {
        fmt.with_filter(filter).boxed()
    };
    let spans = traces.map(|t| {
        t.layer().with_filter(
            tracing_subscriber::filter::Targets::new().with_target("vmreg", tracing::Level::INFO),
        )
    });
    let _ = tracing_subscriber::registry()
        .with(fmt)
        .with(spans)
        .try_init();
}
