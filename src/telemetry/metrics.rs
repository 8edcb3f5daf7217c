//! Every metric the server exports, declared in this one module, and their encoding in the
//! Prometheus text format. Counters and gauges are atomics; labelled series live in small
//! maps behind a mutex, keyed by label values that are bounded by construction (route
//! templates, methods, status codes, operation names, fixed reasons), never raw paths or ids.
//!
//! Other modules record through the functions here (`http_request`, `auth_failure`,
//! `gc_run`, …) so that names, labels and help texts stay in one place.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

/// Latency buckets in seconds: from a cached metadata read to a multi-GiB part stream.
const SECONDS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// A cumulative histogram over fixed buckets.
struct Histogram {
    counts: Vec<AtomicU64>,
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: SECONDS.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_nanos: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = SECONDS.iter().position(|b| secs <= *b) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }
}

/// What a metric family holds per series.
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// A metric with labels: one value per combination of label values seen.
struct Family<V> {
    name: &'static str,
    help: &'static str,
    kind: Kind,
    labels: &'static [&'static str],
    series: Mutex<BTreeMap<Vec<String>, V>>,
}

impl<V: Default> Family<V> {
    const fn new(
        name: &'static str,
        help: &'static str,
        kind: Kind,
        labels: &'static [&'static str],
    ) -> Self {
        Self {
            name,
            help,
            kind,
            labels,
            series: Mutex::new(BTreeMap::new()),
        }
    }

    fn with(&self, values: &[&str], f: impl FnOnce(&V)) {
        let Ok(mut series) = self.series.lock() else {
            return;
        };
        let key: Vec<String> = values.iter().map(|v| v.to_string()).collect();
        f(series.entry(key).or_default());
    }
}

fn header(out: &mut String, name: &str, help: &str, kind: &Kind) {
    let kind = match kind {
        Kind::Counter => "counter",
        Kind::Gauge => "gauge",
        Kind::Histogram => "histogram",
    };
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn label_set(names: &[&str], values: &[String], extra: Option<(&str, &str)>) -> String {
    let mut pairs: Vec<String> = names
        .iter()
        .zip(values)
        .map(|(n, v)| format!("{n}=\"{}\"", escape(v)))
        .collect();
    if let Some((n, v)) = extra {
        pairs.push(format!("{n}=\"{v}\""));
    }
    if pairs.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", pairs.join(","))
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

trait Encode {
    fn encode(&self, out: &mut String);
}

/// A single-number series value.
trait Sample {
    fn sample(&self) -> String;
}

impl Sample for AtomicU64 {
    fn sample(&self) -> String {
        self.load(Ordering::Relaxed).to_string()
    }
}

impl Sample for AtomicI64 {
    fn sample(&self) -> String {
        self.load(Ordering::Relaxed).to_string()
    }
}

impl<V: Sample> Encode for Family<V> {
    fn encode(&self, out: &mut String) {
        header(out, self.name, self.help, &self.kind);
        if let Ok(series) = self.series.lock() {
            for (values, v) in series.iter() {
                let labels = label_set(self.labels, values, None);
                let _ = writeln!(out, "{}{labels} {}", self.name, v.sample());
            }
        }
    }
}

impl Encode for Family<Histogram> {
    fn encode(&self, out: &mut String) {
        header(out, self.name, self.help, &self.kind);
        let Ok(series) = self.series.lock() else {
            return;
        };
        for (values, h) in series.iter() {
            let mut cumulative = 0;
            for (bound, count) in SECONDS.iter().zip(&h.counts) {
                cumulative += count.load(Ordering::Relaxed);
                let le = bound.to_string();
                let labels = label_set(self.labels, values, Some(("le", &le)));
                let _ = writeln!(out, "{}_bucket{labels} {cumulative}", self.name);
            }
            let count = h.count.load(Ordering::Relaxed);
            let inf = label_set(self.labels, values, Some(("le", "+Inf")));
            let plain = label_set(self.labels, values, None);
            let sum = h.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
            let _ = writeln!(out, "{}_bucket{inf} {count}", self.name);
            let _ = writeln!(out, "{}_sum{plain} {sum}", self.name);
            let _ = writeln!(out, "{}_count{plain} {count}", self.name);
        }
    }
}

macro_rules! family {
    ($ident:ident, $v:ty, $kind:ident, $name:literal, $help:literal, [$($label:literal),*]) => {
        static $ident: Family<$v> = Family::new($name, $help, Kind::$kind, &[$($label),*]);
    };
}

family!(
    BUILD_INFO,
    AtomicI64,
    Gauge,
    "vmreg_build_info",
    "Always 1; the version of the running server as a label",
    ["version"]
);
family!(
    HTTP_REQUESTS,
    AtomicU64,
    Counter,
    "vmreg_http_requests_total",
    "HTTP requests answered, by method, route template and status",
    ["method", "route", "status"]
);
family!(
    HTTP_DURATION,
    Histogram,
    Histogram,
    "vmreg_http_request_duration_seconds",
    "Time from a request's arrival to its response head (a download's body streams after)",
    ["method", "route"]
);
family!(
    TRANSFERRED,
    AtomicU64,
    Counter,
    "vmreg_transferred_bytes_total",
    "Bytes of template files received by uploads (push) and sent by downloads (pull)",
    ["direction"]
);
family!(
    S3_BYTES_READ,
    AtomicU64,
    Counter,
    "vmreg_s3_bytes_read_total",
    "Bytes read from S3 by downloads and checks (downloads sharing a chunk read it once)",
    []
);
family!(
    IN_FLIGHT,
    AtomicI64,
    Gauge,
    "vmreg_transfers_in_flight",
    "Uploads and downloads streaming now",
    ["direction"]
);
family!(
    PART_BUFFERS,
    AtomicI64,
    Gauge,
    "vmreg_part_buffer_bytes",
    "Bytes of upload part buffers in flight (in_use) and the most allowed (budget)",
    ["state"]
);
family!(
    READ_MEMORY,
    AtomicI64,
    Gauge,
    "vmreg_s3_read_memory_bytes",
    "Bytes of download pieces read from S3 held now (in_use), the most held at once since the start (peak) and the most allowed (budget)",
    ["state"]
);
family!(
    READ_MEMORY_WAITS,
    AtomicU64,
    Counter,
    "vmreg_s3_read_memory_waits_total",
    "Download pieces that waited for the read memory budget before being read",
    []
);
family!(
    STORE_DURATION,
    Histogram,
    Histogram,
    "vmreg_store_operation_duration_seconds",
    "Latency of blob store (s3, disk) and metadata store (redis, redb) operations",
    ["store", "op"]
);
family!(
    STORE_ERRORS,
    AtomicU64,
    Counter,
    "vmreg_store_operation_errors_total",
    "Blob and metadata store operations that failed (a missing object is not a failure)",
    ["store", "op"]
);
family!(
    GC_RUNS,
    AtomicU64,
    Counter,
    "vmreg_gc_runs_total",
    "Garbage collection and retention runs, by kind",
    ["kind"]
);
family!(
    GC_OBJECTS,
    AtomicU64,
    Counter,
    "vmreg_gc_objects_removed_total",
    "Objects removed by garbage collection and retention runs",
    ["kind"]
);
family!(
    GC_BYTES,
    AtomicU64,
    Counter,
    "vmreg_gc_bytes_removed_total",
    "Bytes removed by garbage collection and retention runs",
    ["kind"]
);
family!(
    AUTH_FAILURES,
    AtomicU64,
    Counter,
    "vmreg_auth_failures_total",
    "Requests refused by authentication or authorization, by reason",
    ["reason"]
);
family!(INVENTORY, AtomicI64, Gauge, "vmreg_inventory",
    "Contents of the registry, refreshed at most every 30 s: templates, versions, bytes (distinct per template), open upload sessions",
    ["item"]);

/// Methods outside this set share one label value, so a client cannot grow the series.
fn method_label(method: &str) -> &'static str {
    match method {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "PUT" => "PUT",
        "POST" => "POST",
        "DELETE" => "DELETE",
        "PATCH" => "PATCH",
        "OPTIONS" => "OPTIONS",
        _ => "other",
    }
}

/// Records one answered request; `route` is the matched route template (or `unmatched`).
pub fn http_request(method: &str, route: &str, status: u16, elapsed: Duration) {
    let method = method_label(method);
    let status = status.to_string();
    HTTP_REQUESTS.with(&[method, route, &status], |c| {
        c.fetch_add(1, Ordering::Relaxed);
    });
    HTTP_DURATION.with(&[method, route], |h| h.observe(elapsed));
}

/// Direction of a file transfer.
#[derive(Clone, Copy, Debug)]
pub enum Direction {
    /// Bytes coming in with an upload.
    Push,
    /// Bytes going out with a download.
    Pull,
}

impl Direction {
    fn label(self) -> &'static str {
        match self {
            Direction::Push => "push",
            Direction::Pull => "pull",
        }
    }
}

/// Counts bytes of a push or pull.
pub fn transferred(direction: Direction, bytes: u64) {
    TRANSFERRED.with(&[direction.label()], |c| {
        c.fetch_add(bytes, Ordering::Relaxed);
    });
}

/// Counts bytes read from S3.
pub fn s3_bytes_read(bytes: u64) {
    S3_BYTES_READ.with(&[], |c| {
        c.fetch_add(bytes, Ordering::Relaxed);
    });
}

/// Counts a transfer as in flight until dropped.
pub struct InFlightGuard(Direction);

/// Marks a transfer in flight; it stops counting when the guard drops.
pub fn transfer_started(direction: Direction) -> InFlightGuard {
    IN_FLIGHT.with(&[direction.label()], |g| {
        g.fetch_add(1, Ordering::Relaxed);
    });
    InFlightGuard(direction)
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        IN_FLIGHT.with(&[self.0.label()], |g| {
            g.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// Adds `delta` (negative when released) to the bytes of part buffers in flight.
pub fn part_buffers_in_use(delta: i64) {
    PART_BUFFERS.with(&["in_use"], |g| {
        g.fetch_add(delta, Ordering::Relaxed);
    });
}

/// Counts a part's bytes as in flight until dropped.
pub struct PartBufferGuard(i64);

/// Marks `bytes` of part buffer in flight; released when the guard drops, on every path.
pub fn part_buffer_held(bytes: usize) -> PartBufferGuard {
    let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
    part_buffers_in_use(bytes);
    PartBufferGuard(bytes)
}

impl Drop for PartBufferGuard {
    fn drop(&mut self) {
        part_buffers_in_use(-self.0);
    }
}

/// Sets the most bytes of part buffers allowed in flight.
pub fn part_buffer_budget(bytes: u64) {
    PART_BUFFERS.with(&["budget"], |g| {
        g.store(i64::try_from(bytes).unwrap_or(i64::MAX), Ordering::Relaxed);
    });
}

/// Adds `delta` (negative when released) to the bytes of download pieces held.
pub fn read_memory_in_use(delta: i64) {
    let mut now = 0;
    READ_MEMORY.with(&["in_use"], |g| {
        now = g.fetch_add(delta, Ordering::Relaxed) + delta;
    });
    READ_MEMORY.with(&["peak"], |g| {
        g.fetch_max(now, Ordering::Relaxed);
    });
}

/// Sets the most bytes of download pieces allowed at once.
pub fn read_memory_budget(bytes: u64) {
    READ_MEMORY.with(&["budget"], |g| {
        g.store(i64::try_from(bytes).unwrap_or(i64::MAX), Ordering::Relaxed);
    });
}

/// Counts a download piece that had to wait for the read memory budget.
pub fn read_memory_wait() {
    READ_MEMORY_WAITS.with(&[], |c| {
        c.fetch_add(1, Ordering::Relaxed);
    });
}

/// Records one store operation: `store` is `s3`, `disk`, `redis` or `redb`, `op` the
/// operation's name; `failed` counts it as an error too.
pub fn store_operation(store: &'static str, op: &'static str, elapsed: Duration, failed: bool) {
    STORE_DURATION.with(&[store, op], |h| h.observe(elapsed));
    if failed {
        STORE_ERRORS.with(&[store, op], |c| {
            c.fetch_add(1, Ordering::Relaxed);
        });
    }
}

/// Runs a store operation and records its latency, and whether `failed` judges its
/// error a failure of the store; with traces on, it is a child span of the request.
pub async fn timed<T, E>(
    store: &'static str,
    op: &'static str,
    failed: fn(&E) -> bool,
    operation: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, E> {
    let started = std::time::Instant::now();
    let result = if super::trace::enabled() {
        use tracing::Instrument;
        let span = tracing::info_span!(
            "store",
            store,
            op,
            otel.name = %format_args!("{store} {op}"),
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
        );
        let result = operation.instrument(span.clone()).await;
        if result.as_ref().err().is_some_and(failed) {
            span.record("otel.status_code", "ERROR");
        }
        result
    } else {
        operation.await
    };
    let failure = result.as_ref().err().is_some_and(failed);
    store_operation(store, op, started.elapsed(), failure);
    result
}

/// Records one garbage collection or retention run of `kind` (e.g. `orphans`,
/// `retention`, `sessions`) and what it removed.
pub fn gc_run(kind: &'static str, objects: u64, bytes: u64) {
    GC_RUNS.with(&[kind], |c| {
        c.fetch_add(1, Ordering::Relaxed);
    });
    GC_OBJECTS.with(&[kind], |c| {
        c.fetch_add(objects, Ordering::Relaxed);
    });
    GC_BYTES.with(&[kind], |c| {
        c.fetch_add(bytes, Ordering::Relaxed);
    });
}

/// Counts a refused request; `reason` must come from a fixed set (e.g. `missing`,
/// `bad_credentials`, `expired`, `forbidden`), never from the request.
pub fn auth_failure(reason: &'static str) {
    AUTH_FAILURES.with(&[reason], |c| {
        c.fetch_add(1, Ordering::Relaxed);
    });
}

/// What the registry holds, for the inventory gauges.
#[derive(Clone, Copy, Debug, Default)]
pub struct Inventory {
    /// Templates.
    pub templates: u64,
    /// Versions of all templates.
    pub versions: u64,
    /// Sum of each template's distinct bytes.
    pub bytes: u64,
    /// Upload sessions not yet committed or aborted.
    pub upload_sessions: u64,
}

/// Sets the inventory gauges.
pub fn set_inventory(inv: Inventory) {
    for (item, value) in [
        ("templates", inv.templates),
        ("versions", inv.versions),
        ("bytes", inv.bytes),
        ("upload_sessions", inv.upload_sessions),
    ] {
        INVENTORY.with(&[item], |g| {
            g.store(i64::try_from(value).unwrap_or(i64::MAX), Ordering::Relaxed);
        });
    }
}

static STARTED: LazyLock<()> = LazyLock::new(|| {
    BUILD_INFO.with(&[env!("CARGO_PKG_VERSION")], |g| {
        g.store(1, Ordering::Relaxed)
    });
    part_buffers_in_use(0);
    s3_bytes_read(0);
    for direction in [Direction::Push, Direction::Pull] {
        transferred(direction, 0);
        IN_FLIGHT.with(&[direction.label()], |_| {});
    }
});

/// Every metric in the Prometheus text format (version 0.0.4).
pub fn render() -> String {
    LazyLock::force(&STARTED);
    let families: [&dyn Encode; 16] = [
        &BUILD_INFO,
        &HTTP_REQUESTS,
        &HTTP_DURATION,
        &TRANSFERRED,
        &S3_BYTES_READ,
        &IN_FLIGHT,
        &PART_BUFFERS,
        &READ_MEMORY,
        &READ_MEMORY_WAITS,
        &STORE_DURATION,
        &STORE_ERRORS,
        &GC_RUNS,
        &GC_OBJECTS,
        &GC_BYTES,
        &AUTH_FAILURES,
        &INVENTORY,
    ];
    let mut out = String::with_capacity(8192);
    for family in families {
        family.encode(&mut out);
    }
    out
}

/// The media type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_counters_gauges_and_cumulative_histograms() {
        http_request("GET", "/registry/vm", 200, Duration::from_millis(3));
        http_request("GET", "/registry/vm", 200, Duration::from_millis(700));
        http_request("BREW", "/x\"y", 404, Duration::from_millis(1));
        auth_failure("missing");
        gc_run("sessions", 2, 0);
        gc_run("sessions", 1, 0);
        let text = render();
        assert!(text.contains("# TYPE vmreg_http_requests_total counter"));
        assert!(text.contains(
            "vmreg_http_requests_total{method=\"GET\",route=\"/registry/vm\",status=\"200\"} 2"
        ));
        assert!(text.contains("method=\"other\",route=\"/x\\\"y\",status=\"404\""));
        assert!(text.contains(
            "vmreg_http_request_duration_seconds_bucket{method=\"GET\",route=\"/registry/vm\",le=\"0.005\"} 1"
        ));
        assert!(text.contains(
            "vmreg_http_request_duration_seconds_bucket{method=\"GET\",route=\"/registry/vm\",le=\"1\"} 2"
        ));
        assert!(text.contains(
            "vmreg_http_request_duration_seconds_count{method=\"GET\",route=\"/registry/vm\"} 2"
        ));
        assert!(text.contains("vmreg_auth_failures_total{reason=\"missing\"} 1"));
        assert!(text.contains("vmreg_gc_runs_total{kind=\"sessions\"} 2"));
        assert!(text.contains("vmreg_gc_objects_removed_total{kind=\"sessions\"} 3"));
        assert!(text.contains(&format!(
            "vmreg_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )));
        assert_eq!(text.matches("# TYPE vmreg_build_info").count(), 1);
        assert!(text.contains("# TYPE vmreg_s3_bytes_read_total counter"));
        assert!(
            text.contains("\nvmreg_s3_bytes_read_total "),
            "an unlabelled counter"
        );
    }
}
