//! How the server reports on itself: log lines (text or JSON) and Prometheus metrics.
//! Request ids, access logs and request metrics are recorded at the HTTP edge
//! (`api::observe`); store latencies where the stores are opened.

pub mod metrics;

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
/// JSON object a line whose `span` carries the request id.
pub fn init_logs(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().with_current_span(true).try_init()
    } else {
        builder.try_init()
    };
}
