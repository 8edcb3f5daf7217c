//! The server's configuration: defaults, then a config file, then environment variables
//! (the vendor's `ANKA_*` names, overridden by ours, `VMREG_*`), then flags.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::auth::{AuthConfig, Secret};
use crate::registry::limits::Limits;
use crate::registry::retention::{RetentionConfig, RetentionPolicy};

/// One layer of settings (flags, environment or file); unset fields defer to lower layers.
#[derive(clap::Args, Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeArgs {
    /// A YAML file with any of these settings (snake_case names) [env: VMREG_CONFIG_FILE]
    #[arg(long)]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Address to listen on, `host:port` or `:port` [env: VMREG_LISTEN, ANKA_LISTEN_ADDR] [default: 0.0.0.0:8089]
    #[arg(long)]
    pub listen: Option<String>,
    /// The URL clients reach this server at, `http(s)://host[:port][/path]`, for the OCI token realm and `Location` headers; unset, those follow each request's `Host` and `X-Forwarded-*` [env: VMREG_PUBLIC_URL]
    #[arg(long)]
    pub public_url: Option<String>,
    /// Directory of the embedded store (files and database) [env: VMREG_DATA_DIR, ANKA_BASE_PATH] [default: ./vmreg-data]
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Seconds transfers in flight get to finish on SIGTERM/SIGINT [env: VMREG_SHUTDOWN_TIMEOUT, ANKA_GRACEFUL_SHUTDOWN_TIMEOUT] [default: 10s]
    #[arg(long, value_parser = parse_duration)]
    #[serde(default, deserialize_with = "de_duration")]
    pub shutdown_timeout: Option<Duration>,
    /// Smallest upload part in bytes (K/M/G/KiB/MiB/GiB suffixes) [env: VMREG_PART_SIZE, ANKA_BACKEND_S3_UPLOAD_PART_SIZE] [default: 8MiB]
    #[arg(long, value_parser = parse_size)]
    #[serde(default, deserialize_with = "de_size")]
    pub part_size: Option<u64>,
    /// Memory for upload part buffers, all uploads together: uploads wait for it rather than allocate past it [env: VMREG_PART_MEMORY] [default: 96MiB]
    #[arg(long, value_parser = parse_size)]
    #[serde(default, deserialize_with = "de_size")]
    pub part_memory: Option<u64>,
    /// A request body that sends nothing for this long is cut; an upload keeps its durable parts for resuming [env: VMREG_BODY_IDLE_TIMEOUT] [default: 60s]
    #[arg(long, value_parser = parse_duration)]
    #[serde(default, deserialize_with = "de_duration")]
    pub body_idle_timeout: Option<Duration>,
    /// How often one replica (under a lease in the metadata store) runs `vmreg admin gc`; 0 turns it off [env: VMREG_GC_INTERVAL] [default: 1h]
    #[arg(long, value_parser = parse_duration)]
    #[serde(default, deserialize_with = "de_duration")]
    pub gc_interval: Option<Duration>,
    /// Objects and uploads younger than this are never collected by the periodic run [env: VMREG_GC_GRACE] [default: 1h]
    #[arg(long, value_parser = parse_duration)]
    #[serde(default, deserialize_with = "de_duration")]
    pub gc_grace: Option<Duration>,
    /// Garbage collection aborts incomplete uploads this many days old, even those an open push holds (the vendor's bucket rule); 0 leaves them to the push's lifetime [env: VMREG_ABORT_INCOMPLETE_UPLOADS_DAYS, ANKA_BACKEND_S3_ABORT_INCOMPLETE_MULTIPART_UPLOAD_DAYS] [default: 0]
    #[arg(long)]
    pub abort_incomplete_uploads_days: Option<u64>,
    /// Retention for every template without an override: keep its newest this many tags (applied by the periodic collection) [env: VMREG_RETENTION_KEEP_LAST]
    #[arg(long)]
    pub retention_keep_last: Option<u32>,
    /// Retention for every template without an override: keep the tags pulled or pushed within this long, e.g. 30d (applied by the periodic collection) [env: VMREG_RETENTION_UNUSED_FOR]
    #[arg(long, value_parser = parse_duration)]
    #[serde(default, deserialize_with = "de_duration")]
    pub retention_unused_for: Option<Duration>,
    /// Retention overrides by template name, `{name: {keep_last, unused_for, include_latest}}`; each replaces the registry-wide policy for its template (config file only)
    #[arg(skip)]
    #[serde(default)]
    pub retention_templates: Option<BTreeMap<String, TemplateRetention>>,
    /// How often a replica writes the pull times it noted; a replica killed outright loses at most this much of them [env: VMREG_PULL_FLUSH_INTERVAL] [default: 5s]
    #[arg(long, value_parser = parse_duration)]
    #[serde(default, deserialize_with = "de_duration")]
    pub pull_flush_interval: Option<Duration>,
    /// Open connections per worker thread, at most; more wait in the listen backlog [env: VMREG_MAX_CONNECTIONS] [default: 1024]
    #[arg(long)]
    pub max_connections: Option<usize>,
    /// Templates the registry holds at most; a push of a new template beyond is refused [env: VMREG_MAX_TEMPLATES] [default: 1000000]
    #[arg(long)]
    pub max_templates: Option<u64>,
    /// Versions (tags) per template at most [env: VMREG_MAX_VERSIONS] [default: 1000]
    #[arg(long)]
    pub max_versions: Option<usize>,
    /// Largest VM configuration (config.yaml, as JSON) a push may carry [env: VMREG_MAX_CONFIG_SIZE] [default: 64KiB]
    #[arg(long, value_parser = parse_size)]
    #[serde(default, deserialize_with = "de_size")]
    pub max_config_size: Option<u64>,
    /// Push sessions open at once, at most [env: VMREG_MAX_UPLOAD_SESSIONS] [default: 1000]
    #[arg(long)]
    pub max_upload_sessions: Option<u64>,
    /// Push sessions one identity (root, an API key, a client certificate) holds open at once, at most, and as many OCI blob uploads; not applied with authentication off [env: VMREG_MAX_UPLOAD_SESSIONS_PER_IDENTITY] [default: 100]
    #[arg(long)]
    pub max_upload_sessions_per_identity: Option<u64>,
    /// Templates per page of a paged listing (`?limit=`), at most [env: VMREG_MAX_PAGE] [default: 1000]
    #[arg(long)]
    pub max_page: Option<usize>,
    /// Serve HTTPS (needs --server-cert and --server-key); on by default when a certificate is set [env: VMREG_USE_HTTPS, ANKA_USE_HTTPS]
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub use_https: Option<bool>,
    /// The server's certificate chain (PEM), re-read when the file changes [env: VMREG_SERVER_CERT, ANKA_SERVER_CERT]
    #[arg(long)]
    pub server_cert: Option<PathBuf>,
    /// The server certificate's private key (PEM), re-read when the file changes [env: VMREG_SERVER_KEY, ANKA_SERVER_KEY]
    #[arg(long)]
    pub server_key: Option<PathBuf>,
    /// Oldest TLS version accepted: 1.2 or 1.3 [env: VMREG_MIN_TLS_VERSION, ANKA_MIN_TLS_VERSION] [default: 1.2]
    #[arg(long)]
    pub min_tls_version: Option<String>,
    /// CA (PEM) whose client certificates authenticate: CN is the user [env: VMREG_CA_CERT, ANKA_CA_CERT]
    #[arg(long)]
    pub ca_cert: Option<PathBuf>,
    /// Certificate revocation list (PEM) of that CA; revoked client certificates are refused [env: VMREG_CRL, ANKA_CRL]
    #[arg(long)]
    pub crl: Option<PathBuf>,
    /// Where a client certificate's groups come from: `o` (Organization) or `ou` (Organizational Unit) [env: VMREG_CERT_GROUPS_FROM] [default: o]
    #[arg(long, value_parser = ["o", "ou"])]
    pub cert_groups_from: Option<String>,
    /// Trust a client certificate forwarded by a TLS-terminating proxy (`Ssl-Client-Verify: SUCCESS` and `Ssl-Client-Cert`); only safe when nothing else can reach the server [env: VMREG_TRUST_FORWARDED_CLIENT_CERT]
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub trust_forwarded_client_cert: Option<bool>,
    /// Where files live: `disk` (the data directory) or `s3`; by default `s3` when a bucket is set [env: VMREG_BACKEND, ANKA_BACKEND_TYPE]
    #[arg(long, value_parser = ["disk", "s3"])]
    pub backend: Option<String>,
    /// S3 bucket; setting it stores files in S3 instead of the data directory [env: VMREG_S3_BUCKET, ANKA_BACKEND_S3_BUCKET]
    #[arg(long)]
    pub s3_bucket: Option<String>,
    /// S3 endpoint URL, for MinIO, Garage and other S3-compatible servers [env: VMREG_S3_ENDPOINT, AWS_ENDPOINT_URL]
    #[arg(long)]
    pub s3_endpoint: Option<String>,
    /// Key prefix inside the bucket [env: VMREG_S3_PREFIX]
    #[arg(long)]
    pub s3_prefix: Option<String>,
    /// S3 region [env: VMREG_S3_REGION, AWS_REGION] [default: from the AWS chain, else us-east-1]
    #[arg(long)]
    pub s3_region: Option<String>,
    /// Path-style bucket addressing (MinIO, Garage) [env: VMREG_S3_PATH_STYLE, ANKA_BACKEND_S3_USE_PATH_STYLE]
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub s3_path_style: Option<bool>,
    /// Parts of one upload sent to S3 at once [env: VMREG_S3_UPLOAD_CONCURRENCY, ANKA_BACKEND_S3_UPLOAD_CONCURRENCY] [default: 4]
    #[arg(long)]
    pub s3_upload_concurrency: Option<usize>,
    /// Ranges of one download read from S3 at once; 1 reads a download as one GET [env: VMREG_S3_READ_CONCURRENCY] [default: 4]
    #[arg(long)]
    pub s3_read_concurrency: Option<usize>,
    /// MiB of recently read chunks shared by concurrent downloads of the same file; 0 turns sharing off [env: VMREG_S3_READ_CACHE_MIB] [default: 64]
    #[arg(long)]
    pub s3_read_cache_mib: Option<u64>,
    /// MiB of download pieces read from S3 held at once, all downloads together (shared chunks included, counted once); a download waits for it rather than allocate past it; at least 4 [env: VMREG_S3_READ_MEMORY_MIB] [default: 96]
    #[arg(long)]
    pub s3_read_memory_mib: Option<u64>,
    /// Answer downloads with a 307 to a presigned S3 URL [env: VMREG_S3_REDIRECT]
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub s3_redirect: Option<bool>,
    /// Redis URL (`redis://`, `rediss://`, or `redis+sentinel://[user:pass@]host:port[,host:port…]/<master>[/db][?sentinel_password=…]` and `rediss+sentinel://` to follow a Sentinel failover); setting it keeps metadata in Redis [env: VMREG_REDIS_URL]
    #[arg(long)]
    pub redis_url: Option<String>,
    /// Prefix of every Redis key, so registries can share a server [env: VMREG_REDIS_PREFIX] [default: vmreg:]
    #[arg(long)]
    pub redis_prefix: Option<String>,
    /// Require credentials on every endpoint but /livez and /readyz [env: VMREG_ENABLE_AUTH, ANKA_ENABLE_AUTH] [default: false]
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub enable_auth: Option<bool>,
    /// The root token (Basic root:<token>), at least 10 characters; prefer the environment, flags show in `ps` [env: VMREG_ROOT_TOKEN, ANKA_ROOT_TOKEN]
    #[arg(long)]
    pub root_token: Option<Secret>,
    /// API keys and the TAP handshake [env: VMREG_ENABLE_API_KEYS, ANKA_ENABLE_API_KEYS] [default: false]
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub enable_api_keys: Option<bool>,
    /// Permission groups decide what an API key may do [env: VMREG_ENABLE_AUTHORIZATION, ANKA_ENABLE_AUTHORIZATION] [default: false]
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub enable_authorization: Option<bool>,
    /// Lifetime of an API key session [env: VMREG_API_KEYS_SESSION_TTL, ANKA_API_KEYS_SESSION_TTL] [default: 5m]
    #[arg(long, value_parser = parse_duration)]
    #[serde(default, deserialize_with = "de_duration")]
    pub api_keys_session_ttl: Option<Duration>,
    /// Secret (at least 32 bytes) signing session tokens; unset, one is generated and shared through the metadata store [env: VMREG_JWT_SECRET]
    #[arg(long)]
    pub jwt_secret: Option<Secret>,
    /// Secret (at least 32 bytes) sealing the generated session signing secret in the bucket, so that a lost Redis ends no session; unset, a lost one is replaced [env: VMREG_IDENTITY_SECRET]
    #[arg(long)]
    pub identity_secret: Option<Secret>,
    /// Permission groups created at start when missing, `{group: [permission, …]}` (config file only)
    #[arg(skip)]
    #[serde(default)]
    pub permission_groups: Option<BTreeMap<String, Vec<String>>>,
    /// Log lines as `text` or `json` (one object a line, for log shippers) [env: VMREG_LOG_FORMAT] [default: text]
    #[arg(long, value_parser = ["text", "json"])]
    pub log_format: Option<String>,
    /// Log one line per request (method, route, status, bytes, duration) [env: VMREG_ACCESS_LOGS, ANKA_ACCESS_LOGS] [default: false]
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub access_logs: Option<bool>,
    /// Serve `/metrics` on a listener of its own as well [env: VMREG_ENABLE_METRICS, ANKA_ENABLE_METRICS] [default: false]
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub enable_metrics: Option<bool>,
    /// Address of that metrics listener, `host:port` or `:port` [env: VMREG_METRICS_LISTEN] [default: 0.0.0.0:2112]
    #[arg(long)]
    pub metrics_listen: Option<String>,
}

/// Settings for the S3 blob store.
#[derive(Clone, Debug, PartialEq)]
pub struct S3Config {
    /// Bucket name.
    pub bucket: String,
    /// Endpoint URL for non-AWS servers.
    pub endpoint: Option<String>,
    /// Key prefix inside the bucket (empty or ending in `/`).
    pub prefix: String,
    /// Region; the AWS chain decides when absent.
    pub region: Option<String>,
    /// Path-style addressing.
    pub path_style: bool,
    /// Parts of one upload in flight at once.
    pub upload_concurrency: usize,
    /// Ranges of one download read at once (1: one GET per download).
    pub read_concurrency: usize,
    /// Bytes of recently read chunks shared by concurrent downloads (0: no sharing).
    pub read_cache: u64,
    /// Bytes of download pieces held at once, all downloads together.
    pub read_memory: u64,
    /// Answer downloads with presigned redirects.
    pub redirect: bool,
}

/// The oldest TLS version the server accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsVersion {
    /// TLS 1.2 and 1.3.
    V1_2,
    /// TLS 1.3 only.
    V1_3,
}

/// Settings for serving HTTPS.
#[derive(Clone, Debug, PartialEq)]
pub struct TlsSettings {
    /// Certificate chain (PEM).
    pub cert: PathBuf,
    /// Private key (PEM).
    pub key: PathBuf,
    /// Oldest version accepted.
    pub min_version: TlsVersion,
    /// CA whose client certificates authenticate.
    pub client_ca: Option<PathBuf>,
    /// Revocation list of that CA.
    pub crl: Option<PathBuf>,
}

/// The subject field a client certificate's groups come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum CertGroups {
    /// Organization (`O=`).
    #[default]
    Organization,
    /// Organizational Unit (`OU=`).
    OrganizationalUnit,
}

/// Settings for the Redis metadata store.
#[derive(Clone, Debug, PartialEq)]
pub struct RedisConfig {
    /// Connection URL.
    pub url: String,
    /// Prefix of every key.
    pub prefix: String,
}

/// The effective server configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// `host:port` to bind.
    pub listen: String,
    /// The URL clients reach the server at, without a trailing slash, when set.
    pub public_url: Option<String>,
    /// Directory of the embedded store.
    pub data_dir: PathBuf,
    /// Grace period on shutdown.
    pub shutdown_timeout: Duration,
    /// Smallest upload part.
    pub part_size: u64,
    /// Memory for all upload part buffers together.
    pub part_memory: u64,
    /// How long a request body may send nothing before it is cut.
    pub body_idle_timeout: Duration,
    /// How often the periodic garbage collection runs; zero when off.
    pub gc_interval: Duration,
    /// The periodic collection's grace window.
    pub gc_grace: Duration,
    /// Age past which garbage collection aborts any incomplete upload; none when unset.
    pub abort_uploads_after: Option<Duration>,
    /// How often pull times noted in memory are written.
    pub pull_flush_interval: Duration,
    /// The retention policies the periodic collection applies.
    pub retention: RetentionConfig,
    /// Open connections per worker thread.
    pub max_connections: usize,
    /// Caps on the metadata clients can grow.
    pub limits: Limits,
    /// HTTPS settings; plain HTTP when absent.
    pub tls: Option<TlsSettings>,
    /// Which subject field of a client certificate names its groups.
    pub cert_groups: CertGroups,
    /// Trust client certificates forwarded by a TLS-terminating proxy.
    pub trust_forwarded_client_cert: bool,
    /// S3 settings when files live in S3.
    pub s3: Option<S3Config>,
    /// Redis settings when metadata lives in Redis.
    pub redis: Option<RedisConfig>,
    /// Identity and access.
    pub auth: AuthConfig,
    /// Logs, access logs and the metrics listener.
    pub telemetry: TelemetryConfig,
}

/// How the server reports on itself.
#[derive(Clone, Debug, PartialEq)]
pub struct TelemetryConfig {
    /// Log lines as JSON objects instead of text.
    pub json_logs: bool,
    /// One log line per request.
    pub access_logs: bool,
    /// `host:port` of the separate metrics listener, when enabled.
    pub metrics_listen: Option<String>,
}

/// S3 refuses parts under 5 MiB (but the last).
pub const MIN_PART_SIZE: u64 = 5 * 1024 * 1024;
const DEFAULT_PART_SIZE: u64 = 8 * 1024 * 1024;
const DEFAULT_BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// The periodic garbage collection's interval and grace window, both conservative.
const DEFAULT_GC: Duration = Duration::from_secs(3600);
const DEFAULT_MAX_CONNECTIONS: usize = 1024;

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(pub String);

/// Environment names of each setting, ours first (it wins over the vendor's).
pub(crate) const ENV_NAMES: &[(&str, &[&str])] = &[
    ("config", &["VMREG_CONFIG_FILE"]),
    ("listen", &["VMREG_LISTEN", "ANKA_LISTEN_ADDR"]),
    ("public_url", &["VMREG_PUBLIC_URL"]),
    ("data_dir", &["VMREG_DATA_DIR", "ANKA_BASE_PATH"]),
    (
        "shutdown_timeout",
        &["VMREG_SHUTDOWN_TIMEOUT", "ANKA_GRACEFUL_SHUTDOWN_TIMEOUT"],
    ),
    (
        "part_size",
        &["VMREG_PART_SIZE", "ANKA_BACKEND_S3_UPLOAD_PART_SIZE"],
    ),
    ("part_memory", &["VMREG_PART_MEMORY"]),
    ("body_idle_timeout", &["VMREG_BODY_IDLE_TIMEOUT"]),
    ("gc_interval", &["VMREG_GC_INTERVAL"]),
    ("gc_grace", &["VMREG_GC_GRACE"]),
    (
        "abort_incomplete_uploads_days",
        &[
            "VMREG_ABORT_INCOMPLETE_UPLOADS_DAYS",
            "ANKA_BACKEND_S3_ABORT_INCOMPLETE_MULTIPART_UPLOAD_DAYS",
        ],
    ),
    ("pull_flush_interval", &["VMREG_PULL_FLUSH_INTERVAL"]),
    ("retention_keep_last", &["VMREG_RETENTION_KEEP_LAST"]),
    ("retention_unused_for", &["VMREG_RETENTION_UNUSED_FOR"]),
    ("max_connections", &["VMREG_MAX_CONNECTIONS"]),
    ("max_templates", &["VMREG_MAX_TEMPLATES"]),
    ("max_versions", &["VMREG_MAX_VERSIONS"]),
    ("max_config_size", &["VMREG_MAX_CONFIG_SIZE"]),
    ("max_upload_sessions", &["VMREG_MAX_UPLOAD_SESSIONS"]),
    (
        "max_upload_sessions_per_identity",
        &["VMREG_MAX_UPLOAD_SESSIONS_PER_IDENTITY"],
    ),
    ("max_page", &["VMREG_MAX_PAGE"]),
    ("use_https", &["VMREG_USE_HTTPS", "ANKA_USE_HTTPS"]),
    ("server_cert", &["VMREG_SERVER_CERT", "ANKA_SERVER_CERT"]),
    ("server_key", &["VMREG_SERVER_KEY", "ANKA_SERVER_KEY"]),
    (
        "min_tls_version",
        &["VMREG_MIN_TLS_VERSION", "ANKA_MIN_TLS_VERSION"],
    ),
    ("ca_cert", &["VMREG_CA_CERT", "ANKA_CA_CERT"]),
    ("crl", &["VMREG_CRL", "ANKA_CRL"]),
    ("cert_groups_from", &["VMREG_CERT_GROUPS_FROM"]),
    (
        "trust_forwarded_client_cert",
        &["VMREG_TRUST_FORWARDED_CLIENT_CERT"],
    ),
    ("backend", &["VMREG_BACKEND", "ANKA_BACKEND_TYPE"]),
    ("s3_bucket", &["VMREG_S3_BUCKET", "ANKA_BACKEND_S3_BUCKET"]),
    (
        "s3_endpoint",
        &[
            "VMREG_S3_ENDPOINT",
            "AWS_ENDPOINT_URL_S3",
            "AWS_ENDPOINT_URL",
        ],
    ),
    ("s3_prefix", &["VMREG_S3_PREFIX"]),
    (
        "s3_region",
        &["VMREG_S3_REGION", "AWS_REGION", "AWS_DEFAULT_REGION"],
    ),
    (
        "s3_path_style",
        &["VMREG_S3_PATH_STYLE", "ANKA_BACKEND_S3_USE_PATH_STYLE"],
    ),
    (
        "s3_upload_concurrency",
        &[
            "VMREG_S3_UPLOAD_CONCURRENCY",
            "ANKA_BACKEND_S3_UPLOAD_CONCURRENCY",
        ],
    ),
    ("s3_read_concurrency", &["VMREG_S3_READ_CONCURRENCY"]),
    ("s3_read_cache_mib", &["VMREG_S3_READ_CACHE_MIB"]),
    ("s3_read_memory_mib", &["VMREG_S3_READ_MEMORY_MIB"]),
    ("s3_redirect", &["VMREG_S3_REDIRECT"]),
    ("redis_url", &["VMREG_REDIS_URL"]),
    ("redis_prefix", &["VMREG_REDIS_PREFIX"]),
    ("enable_auth", &["VMREG_ENABLE_AUTH", "ANKA_ENABLE_AUTH"]),
    ("root_token", &["VMREG_ROOT_TOKEN", "ANKA_ROOT_TOKEN"]),
    (
        "enable_api_keys",
        &["VMREG_ENABLE_API_KEYS", "ANKA_ENABLE_API_KEYS"],
    ),
    (
        "enable_authorization",
        &["VMREG_ENABLE_AUTHORIZATION", "ANKA_ENABLE_AUTHORIZATION"],
    ),
    (
        "api_keys_session_ttl",
        &["VMREG_API_KEYS_SESSION_TTL", "ANKA_API_KEYS_SESSION_TTL"],
    ),
    ("jwt_secret", &["VMREG_JWT_SECRET"]),
    ("identity_secret", &["VMREG_IDENTITY_SECRET"]),
    ("log_format", &["VMREG_LOG_FORMAT"]),
    ("access_logs", &["VMREG_ACCESS_LOGS", "ANKA_ACCESS_LOGS"]),
    (
        "enable_metrics",
        &["VMREG_ENABLE_METRICS", "ANKA_ENABLE_METRICS"],
    ),
    ("metrics_listen", &["VMREG_METRICS_LISTEN"]),
];

impl ServeArgs {
    /// Reads the layer the environment gives, through `get` (the process environment, or
    /// a map in tests).
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut layer = ServeArgs::default();
        for (field, names) in ENV_NAMES {
            let Some((name, value)) = names
                .iter()
                .find_map(|n| get(n).filter(|v| !v.is_empty()).map(|v| (*n, v)))
            else {
                continue;
            };
            let shown = if field.contains("token") || field.contains("secret") {
                "***".to_string()
            } else {
                format!("{value:?}")
            };
            let bad = |e: String| ConfigError(format!("{name}={shown}: {e}"));
            match *field {
                "config" => layer.config = Some(value.into()),
                "listen" => layer.listen = Some(value),
                "public_url" => layer.public_url = Some(value),
                "data_dir" => layer.data_dir = Some(value.into()),
                "shutdown_timeout" => {
                    layer.shutdown_timeout = Some(parse_duration(&value).map_err(bad)?)
                }
                "part_size" => layer.part_size = Some(parse_size(&value).map_err(bad)?),
                "part_memory" => layer.part_memory = Some(parse_size(&value).map_err(bad)?),
                "body_idle_timeout" => {
                    layer.body_idle_timeout = Some(parse_duration(&value).map_err(bad)?)
                }
                "gc_interval" => layer.gc_interval = Some(parse_duration(&value).map_err(bad)?),
                "gc_grace" => layer.gc_grace = Some(parse_duration(&value).map_err(bad)?),
                "abort_incomplete_uploads_days" => {
                    layer.abort_incomplete_uploads_days = Some(parse_count(&value).map_err(bad)?)
                }
                "retention_keep_last" => {
                    layer.retention_keep_last = Some(parse_count(&value).map_err(bad)?)
                }
                "retention_unused_for" => {
                    layer.retention_unused_for = Some(parse_duration(&value).map_err(bad)?)
                }
                "pull_flush_interval" => {
                    layer.pull_flush_interval = Some(parse_duration(&value).map_err(bad)?)
                }
                "max_connections" => {
                    layer.max_connections = Some(value.parse().map_err(|e| bad(format!("{e}")))?)
                }
                "max_templates" => layer.max_templates = Some(parse_count(&value).map_err(bad)?),
                "max_versions" => layer.max_versions = Some(parse_count(&value).map_err(bad)?),
                "max_config_size" => layer.max_config_size = Some(parse_size(&value).map_err(bad)?),
                "max_upload_sessions" => {
                    layer.max_upload_sessions = Some(parse_count(&value).map_err(bad)?)
                }
                "max_upload_sessions_per_identity" => {
                    layer.max_upload_sessions_per_identity = Some(parse_count(&value).map_err(bad)?)
                }
                "max_page" => layer.max_page = Some(parse_count(&value).map_err(bad)?),
                "use_https" => layer.use_https = Some(parse_bool(&value).map_err(bad)?),
                "server_cert" => layer.server_cert = Some(value.into()),
                "server_key" => layer.server_key = Some(value.into()),
                "min_tls_version" => layer.min_tls_version = Some(value),
                "ca_cert" => layer.ca_cert = Some(value.into()),
                "crl" => layer.crl = Some(value.into()),
                "cert_groups_from" => layer.cert_groups_from = Some(value.to_ascii_lowercase()),
                "trust_forwarded_client_cert" => {
                    layer.trust_forwarded_client_cert = Some(parse_bool(&value).map_err(bad)?)
                }
                "backend" => layer.backend = Some(value.to_ascii_lowercase()),
                "s3_bucket" => layer.s3_bucket = Some(value),
                "s3_endpoint" => layer.s3_endpoint = Some(value),
                "s3_prefix" => layer.s3_prefix = Some(value),
                "s3_region" => layer.s3_region = Some(value),
                "s3_path_style" => layer.s3_path_style = Some(parse_bool(&value).map_err(bad)?),
                "s3_upload_concurrency" => {
                    layer.s3_upload_concurrency =
                        Some(value.parse().map_err(|e| bad(format!("{e}")))?)
                }
                "s3_read_concurrency" => {
                    layer.s3_read_concurrency =
                        Some(value.parse().map_err(|e| bad(format!("{e}")))?)
                }
                "s3_read_cache_mib" => {
                    layer.s3_read_cache_mib = Some(value.parse().map_err(|e| bad(format!("{e}")))?)
                }
                "s3_read_memory_mib" => {
                    layer.s3_read_memory_mib = Some(value.parse().map_err(|e| bad(format!("{e}")))?)
                }
                "s3_redirect" => layer.s3_redirect = Some(parse_bool(&value).map_err(bad)?),
                "redis_url" => layer.redis_url = Some(value),
                "redis_prefix" => layer.redis_prefix = Some(value),
                "enable_auth" => layer.enable_auth = Some(parse_bool(&value).map_err(bad)?),
                "root_token" => layer.root_token = Some(value.into()),
                "enable_api_keys" => layer.enable_api_keys = Some(parse_bool(&value).map_err(bad)?),
                "enable_authorization" => {
                    layer.enable_authorization = Some(parse_bool(&value).map_err(bad)?)
                }
                "api_keys_session_ttl" => {
                    layer.api_keys_session_ttl = Some(parse_duration(&value).map_err(bad)?)
                }
                "jwt_secret" => layer.jwt_secret = Some(value.into()),
                "identity_secret" => layer.identity_secret = Some(value.into()),
                "log_format" => layer.log_format = Some(value.to_ascii_lowercase()),
                "access_logs" => layer.access_logs = Some(parse_bool(&value).map_err(bad)?),
                "enable_metrics" => layer.enable_metrics = Some(parse_bool(&value).map_err(bad)?),
                "metrics_listen" => layer.metrics_listen = Some(value),
                _ => {}
            }
        }
        Ok(layer)
    }

    /// Reads a YAML config file.
    pub fn from_file(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("{}: {e}", path.display())))?;
        serde_yaml::from_str(&text).map_err(|e| ConfigError(format!("{}: {e}", path.display())))
    }

    /// Fills every unset field from `lower`.
    pub fn over(self, lower: ServeArgs) -> ServeArgs {
        ServeArgs {
            config: self.config.or(lower.config),
            listen: self.listen.or(lower.listen),
            public_url: self.public_url.or(lower.public_url),
            data_dir: self.data_dir.or(lower.data_dir),
            shutdown_timeout: self.shutdown_timeout.or(lower.shutdown_timeout),
            part_size: self.part_size.or(lower.part_size),
            part_memory: self.part_memory.or(lower.part_memory),
            body_idle_timeout: self.body_idle_timeout.or(lower.body_idle_timeout),
            gc_interval: self.gc_interval.or(lower.gc_interval),
            gc_grace: self.gc_grace.or(lower.gc_grace),
            abort_incomplete_uploads_days: self
                .abort_incomplete_uploads_days
                .or(lower.abort_incomplete_uploads_days),
            pull_flush_interval: self.pull_flush_interval.or(lower.pull_flush_interval),
            retention_keep_last: self.retention_keep_last.or(lower.retention_keep_last),
            retention_unused_for: self.retention_unused_for.or(lower.retention_unused_for),
            retention_templates: self.retention_templates.or(lower.retention_templates),
            max_connections: self.max_connections.or(lower.max_connections),
            max_templates: self.max_templates.or(lower.max_templates),
            max_versions: self.max_versions.or(lower.max_versions),
            max_config_size: self.max_config_size.or(lower.max_config_size),
            max_upload_sessions: self.max_upload_sessions.or(lower.max_upload_sessions),
            max_upload_sessions_per_identity: self
                .max_upload_sessions_per_identity
                .or(lower.max_upload_sessions_per_identity),
            max_page: self.max_page.or(lower.max_page),
            use_https: self.use_https.or(lower.use_https),
            server_cert: self.server_cert.or(lower.server_cert),
            server_key: self.server_key.or(lower.server_key),
            min_tls_version: self.min_tls_version.or(lower.min_tls_version),
            ca_cert: self.ca_cert.or(lower.ca_cert),
            crl: self.crl.or(lower.crl),
            cert_groups_from: self.cert_groups_from.or(lower.cert_groups_from),
            trust_forwarded_client_cert: self
                .trust_forwarded_client_cert
                .or(lower.trust_forwarded_client_cert),
            backend: self.backend.or(lower.backend),
            s3_bucket: self.s3_bucket.or(lower.s3_bucket),
            s3_endpoint: self.s3_endpoint.or(lower.s3_endpoint),
            s3_prefix: self.s3_prefix.or(lower.s3_prefix),
            s3_region: self.s3_region.or(lower.s3_region),
            s3_path_style: self.s3_path_style.or(lower.s3_path_style),
            s3_upload_concurrency: self.s3_upload_concurrency.or(lower.s3_upload_concurrency),
            s3_read_concurrency: self.s3_read_concurrency.or(lower.s3_read_concurrency),
            s3_read_cache_mib: self.s3_read_cache_mib.or(lower.s3_read_cache_mib),
            s3_read_memory_mib: self.s3_read_memory_mib.or(lower.s3_read_memory_mib),
            s3_redirect: self.s3_redirect.or(lower.s3_redirect),
            redis_url: self.redis_url.or(lower.redis_url),
            redis_prefix: self.redis_prefix.or(lower.redis_prefix),
            enable_auth: self.enable_auth.or(lower.enable_auth),
            root_token: self.root_token.or(lower.root_token),
            enable_api_keys: self.enable_api_keys.or(lower.enable_api_keys),
            enable_authorization: self.enable_authorization.or(lower.enable_authorization),
            api_keys_session_ttl: self.api_keys_session_ttl.or(lower.api_keys_session_ttl),
            jwt_secret: self.jwt_secret.or(lower.jwt_secret),
            identity_secret: self.identity_secret.or(lower.identity_secret),
            permission_groups: self.permission_groups.or(lower.permission_groups),
            log_format: self.log_format.or(lower.log_format),
            access_logs: self.access_logs.or(lower.access_logs),
            enable_metrics: self.enable_metrics.or(lower.enable_metrics),
            metrics_listen: self.metrics_listen.or(lower.metrics_listen),
        }
    }
}

impl Config {
    /// Resolves flags over the environment over the config file over the defaults.
    pub fn resolve(
        flags: ServeArgs,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let env_layer = ServeArgs::from_env(env)?;
        let above_file = flags.over(env_layer);
        let merged = match above_file.config.clone() {
            Some(path) => above_file.over(ServeArgs::from_file(&path)?),
            None => above_file,
        };
        Config::from_layer(merged)
    }

    fn from_layer(l: ServeArgs) -> Result<Config, ConfigError> {
        let listen = normalize_listen(l.listen.as_deref().unwrap_or("0.0.0.0:8089"))?;
        let public_url = l
            .public_url
            .as_deref()
            .map(normalize_public_url)
            .transpose()?;
        let part_size = l.part_size.unwrap_or(DEFAULT_PART_SIZE);
        if part_size < MIN_PART_SIZE {
            return Err(ConfigError(format!(
                "part size {part_size} is under S3's minimum of {MIN_PART_SIZE} bytes"
            )));
        }
        let part_memory = l
            .part_memory
            .unwrap_or(crate::registry::budget::DEFAULT_PART_MEMORY);
        if part_memory < part_size {
            return Err(ConfigError(format!(
                "part memory {part_memory} is smaller than one part of {part_size} bytes"
            )));
        }
        let body_idle_timeout = l.body_idle_timeout.unwrap_or(DEFAULT_BODY_IDLE_TIMEOUT);
        if body_idle_timeout.is_zero() {
            return Err(ConfigError("body idle timeout must be above zero".into()));
        }
        let pull_flush_interval = l
            .pull_flush_interval
            .unwrap_or(crate::registry::pulls::PULL_FLUSH_INTERVAL);
        if pull_flush_interval.is_zero() {
            return Err(ConfigError("pull flush interval must be above zero".into()));
        }
        let limits = limits(&l)?;
        let retention = retention(&l);
        let tls = tls_settings(&l)?;
        let cert_groups = match l.cert_groups_from.as_deref() {
            None | Some("o") => CertGroups::Organization,
            Some("ou") => CertGroups::OrganizationalUnit,
            Some(other) => {
                return Err(ConfigError(format!(
                    "cert groups from {other:?}: must be o or ou"
                )))
            }
        };
        let bucket = match (l.backend.as_deref(), l.s3_bucket) {
            (Some("disk"), _) => None,
            (Some("s3") | None, bucket @ Some(_)) => bucket,
            (Some("s3"), None) => {
                return Err(ConfigError(
                    "backend s3 needs an S3 bucket (--s3-bucket)".into(),
                ))
            }
            (None, None) => None,
            (Some(other), _) => {
                return Err(ConfigError(format!("backend {other:?} is not disk or s3")))
            }
        };
        let read_memory = l
            .s3_read_memory_mib
            .map(|mib| mib.saturating_mul(1 << 20))
            .unwrap_or(crate::store::memory::DEFAULT_READ_MEMORY);
        if read_memory < crate::store::s3::READ_CHUNK {
            return Err(ConfigError(format!(
                "S3 read memory of {} MiB is less than one piece of {} MiB",
                read_memory >> 20,
                crate::store::s3::READ_CHUNK >> 20
            )));
        }
        let s3 = match bucket {
            Some(bucket) => Some(S3Config {
                bucket,
                endpoint: l.s3_endpoint,
                prefix: normalize_prefix(l.s3_prefix.unwrap_or_default()),
                region: l.s3_region,
                path_style: l.s3_path_style.unwrap_or(false),
                upload_concurrency: l.s3_upload_concurrency.unwrap_or(4).max(1),
                read_concurrency: l.s3_read_concurrency.unwrap_or(4).max(1),
                read_cache: l.s3_read_cache_mib.unwrap_or(64).saturating_mul(1 << 20),
                read_memory,
                redirect: l.s3_redirect.unwrap_or(false),
            }),
            None => None,
        };
        if let Some(url) = l.redis_url.as_deref() {
            // A Sentinel URL is checked here so that a typo stops the start with one line.
            if crate::meta::sentinel::is_sentinel_url(url) {
                crate::meta::sentinel::SentinelUrl::parse(url)
                    .map_err(|e| ConfigError(format!("redis URL {}: {e}", redact_url(url))))?;
            }
        }
        let redis = l.redis_url.map(|url| RedisConfig {
            url,
            prefix: l.redis_prefix.unwrap_or_else(|| "vmreg:".into()),
        });
        let auth = AuthConfig {
            enabled: l.enable_auth.unwrap_or(false),
            root_token: l.root_token,
            api_keys: l.enable_api_keys.unwrap_or(false),
            authorization: l.enable_authorization.unwrap_or(false),
            session_ttl: l
                .api_keys_session_ttl
                .unwrap_or(crate::auth::config::DEFAULT_SESSION_TTL),
            jwt_secret: l.jwt_secret,
            seed_groups: l.permission_groups.unwrap_or_default(),
            identity_secret: l.identity_secret,
        };
        auth.validate().map_err(ConfigError)?;
        let json_logs = match l.log_format.as_deref() {
            None | Some("text") => false,
            Some("json") => true,
            Some(other) => {
                return Err(ConfigError(format!(
                    "log format {other:?} is not text or json"
                )))
            }
        };
        let metrics_listen = match l.enable_metrics.unwrap_or(false) {
            true => Some(normalize_listen(
                l.metrics_listen.as_deref().unwrap_or("0.0.0.0:2112"),
            )?),
            false => None,
        };
        let telemetry = TelemetryConfig {
            json_logs,
            access_logs: l.access_logs.unwrap_or(false),
            metrics_listen,
        };
        Ok(Config {
            telemetry,
            listen,
            public_url,
            data_dir: l.data_dir.unwrap_or_else(|| PathBuf::from("./vmreg-data")),
            shutdown_timeout: l.shutdown_timeout.unwrap_or(Duration::from_secs(10)),
            part_size,
            part_memory,
            body_idle_timeout,
            gc_interval: l.gc_interval.unwrap_or(DEFAULT_GC),
            gc_grace: l.gc_grace.unwrap_or(DEFAULT_GC),
            abort_uploads_after: l
                .abort_incomplete_uploads_days
                .filter(|d| *d > 0)
                .map(|d| Duration::from_secs(d.saturating_mul(24 * 3600))),
            pull_flush_interval,
            retention,
            max_connections: l.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS).max(1),
            limits,
            tls,
            cert_groups,
            trust_forwarded_client_cert: l.trust_forwarded_client_cert.unwrap_or(false),
            s3,
            redis,
            auth,
        })
    }
}

/// An absolute `http(s)` URL with a host, no query or fragment, its trailing `/` cut.
fn normalize_public_url(url: &str) -> Result<String, ConfigError> {
    let bad = |why: &str| ConfigError(format!("public_url {url:?}: {why}"));
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| bad("must start with http:// or https://"))?;
    if rest.is_empty() || rest.starts_with('/') {
        return Err(bad("has no host"));
    }
    if url.contains(['?', '#', ' ', '"']) {
        return Err(bad("must have no query, fragment, space or quote"));
    }
    Ok(url.trim_end_matches('/').to_string())
}

/// A template's retention override in the config file.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TemplateRetention {
    /// Keep the newest this many tags.
    #[serde(default)]
    pub keep_last: Option<u32>,
    /// Keep the tags pulled or pushed within this long.
    #[serde(default, deserialize_with = "de_duration")]
    pub unused_for: Option<Duration>,
    /// The latest tag may go too.
    #[serde(default)]
    pub include_latest: bool,
}

/// The retention policies from a layer.
fn retention(l: &ServeArgs) -> RetentionConfig {
    let templates = l.retention_templates.clone().unwrap_or_default();
    RetentionConfig {
        default: RetentionPolicy {
            keep_last: l.retention_keep_last,
            unused_for: l.retention_unused_for,
            include_latest: false,
        },
        templates: templates
            .into_iter()
            .map(|(name, t)| {
                let policy = RetentionPolicy {
                    keep_last: t.keep_last,
                    unused_for: t.unused_for,
                    include_latest: t.include_latest,
                };
                (name, policy)
            })
            .collect(),
    }
}

/// The metadata caps from a layer; each must allow at least one.
fn limits(l: &ServeArgs) -> Result<Limits, ConfigError> {
    let d = Limits::default();
    let limits = Limits {
        max_templates: l.max_templates.unwrap_or(d.max_templates),
        max_versions: l.max_versions.unwrap_or(d.max_versions),
        max_config_size: l.max_config_size.map_or(d.max_config_size, |v| {
            usize::try_from(v).unwrap_or(usize::MAX)
        }),
        max_upload_sessions: l.max_upload_sessions.unwrap_or(d.max_upload_sessions),
        max_upload_sessions_per_identity: l
            .max_upload_sessions_per_identity
            .unwrap_or(d.max_upload_sessions_per_identity),
        max_page: l.max_page.unwrap_or(d.max_page),
    };
    let zero = [
        ("max_templates", limits.max_templates == 0),
        ("max_versions", limits.max_versions == 0),
        ("max_config_size", limits.max_config_size == 0),
        ("max_upload_sessions", limits.max_upload_sessions == 0),
        (
            "max_upload_sessions_per_identity",
            limits.max_upload_sessions_per_identity == 0,
        ),
        ("max_page", limits.max_page == 0),
    ];
    match zero.iter().find(|(_, z)| *z) {
        Some((name, _)) => Err(ConfigError(format!("{name} must be at least 1"))),
        None => Ok(limits),
    }
}

/// HTTPS settings from a layer: on when asked for, or when a certificate is given.
fn tls_settings(l: &ServeArgs) -> Result<Option<TlsSettings>, ConfigError> {
    let wanted = l.use_https.unwrap_or(l.server_cert.is_some());
    if !wanted {
        if l.ca_cert.is_some() {
            return Err(ConfigError(
                "client certificates (--ca-cert) need HTTPS (--use-https)".into(),
            ));
        }
        return Ok(None);
    }
    let (Some(cert), Some(key)) = (l.server_cert.clone(), l.server_key.clone()) else {
        return Err(ConfigError(
            "HTTPS needs a certificate and its key (--server-cert, --server-key)".into(),
        ));
    };
    let min_version = match l
        .min_tls_version
        .as_deref()
        .map(|v| v.trim().to_ascii_lowercase())
        .as_deref()
    {
        None | Some("1.2" | "tls1.2" | "tls12" | "tlsv1.2") => TlsVersion::V1_2,
        Some("1.3" | "tls1.3" | "tls13" | "tlsv1.3") => TlsVersion::V1_3,
        Some(other) => {
            return Err(ConfigError(format!(
                "minimum TLS version {other:?}: must be 1.2 or 1.3"
            )))
        }
    };
    if l.crl.is_some() && l.ca_cert.is_none() {
        return Err(ConfigError(
            "a CRL (--crl) needs the CA it revokes for (--ca-cert)".into(),
        ));
    }
    Ok(Some(TlsSettings {
        cert,
        key,
        min_version,
        client_ca: l.ca_cert.clone(),
        crl: l.crl.clone(),
    }))
}

impl std::fmt::Display for Config {
    /// The effective configuration with secrets redacted, one setting a line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "  listen            {}", self.listen)?;
        if let Some(url) = &self.public_url {
            writeln!(f, "  public_url        {url}")?;
        }
        writeln!(
            f,
            "  shutdown_timeout  {}s",
            self.shutdown_timeout.as_secs_f64()
        )?;
        writeln!(f, "  part_size         {}", self.part_size)?;
        writeln!(f, "  access_logs       {}", self.telemetry.access_logs)?;
        if let Some(metrics) = &self.telemetry.metrics_listen {
            writeln!(f, "  metrics_listen    {metrics}")?;
        }
        writeln!(f, "  part_memory       {}", self.part_memory)?;
        writeln!(
            f,
            "  body_idle_timeout {}s",
            self.body_idle_timeout.as_secs_f64()
        )?;
        writeln!(
            f,
            "  gc                every {}s, grace {}s",
            self.gc_interval.as_secs_f64(),
            self.gc_grace.as_secs_f64()
        )?;
        if let Some(after) = self.abort_uploads_after {
            writeln!(f, "  abort_uploads     after {}s", after.as_secs())?;
        }
        writeln!(
            f,
            "  pull_flush        every {}s",
            self.pull_flush_interval.as_secs_f64()
        )?;
        if !self.retention.is_empty() {
            writeln!(f, "  retention         {}", self.retention)?;
        }
        writeln!(f, "  max_connections   {}", self.max_connections)?;
        let l = &self.limits;
        writeln!(
            f,
            "  limits            templates {} versions {} config {} sessions {} ({} per identity) page {}",
            l.max_templates,
            l.max_versions,
            l.max_config_size,
            l.max_upload_sessions,
            l.max_upload_sessions_per_identity,
            l.max_page
        )?;
        match &self.tls {
            Some(t) => {
                writeln!(f, "  https             {}", t.cert.display())?;
                let min = match t.min_version {
                    TlsVersion::V1_2 => "1.2",
                    TlsVersion::V1_3 => "1.3",
                };
                writeln!(f, "  min_tls_version   {min}")?;
                if let Some(ca) = &t.client_ca {
                    writeln!(f, "  client_ca         {}", ca.display())?;
                }
                if let Some(crl) = &t.crl {
                    writeln!(f, "  crl               {}", crl.display())?;
                }
            }
            None => writeln!(f, "  https             off")?,
        }
        if self.trust_forwarded_client_cert {
            writeln!(f, "  trust_forwarded_client_cert true")?;
        }
        match &self.s3 {
            Some(s3) => {
                writeln!(f, "  files             s3://{}/{}", s3.bucket, s3.prefix)?;
                writeln!(
                    f,
                    "  s3_endpoint       {}",
                    s3.endpoint.as_deref().unwrap_or("(AWS)")
                )?;
                writeln!(
                    f,
                    "  s3_region         {}",
                    s3.region.as_deref().unwrap_or("(AWS chain)")
                )?;
                writeln!(f, "  s3_path_style     {}", s3.path_style)?;
                writeln!(f, "  s3_concurrency    {}", s3.upload_concurrency)?;
                writeln!(
                    f,
                    "  s3_reads          {} at once, {} MiB shared, {} MiB in all",
                    s3.read_concurrency,
                    s3.read_cache >> 20,
                    s3.read_memory >> 20
                )?;
                writeln!(f, "  s3_redirect       {}", s3.redirect)?;
            }
            None => writeln!(
                f,
                "  files             {}",
                self.data_dir.join("objects").display()
            )?,
        }
        writeln!(f, "  auth              {}", self.auth.summary())?;
        match &self.redis {
            Some(r) => writeln!(
                f,
                "  metadata          {} (prefix {:?})",
                redact_url(&r.url),
                r.prefix
            ),
            None => writeln!(
                f,
                "  metadata          {}",
                self.data_dir.join("meta.redb").display()
            ),
        }
    }
}

/// Hides the password of a URL such as `redis://user:secret@host`, and the value of a
/// `sentinel_password=` option.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_string();
    };
    let (rest, query) = match url[scheme_end..].split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (&url[scheme_end..], None),
    };
    // The last @ ends the user info: a password may hold an unencoded @.
    let mut out = match rest.rfind('@') {
        Some(at) => {
            let user = rest[..at].split(':').next().unwrap_or("");
            format!("{}{}:***@{}", &url[..scheme_end], user, &rest[at + 1..])
        }
        None => url[..scheme_end + rest.len()].to_string(),
    };
    if let Some(query) = query {
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((k, _)) if k.ends_with("password") => format!("{k}=***"),
                _ => pair.to_string(),
            })
            .collect();
        out.push('?');
        out.push_str(&pairs.join("&"));
    }
    out
}

fn normalize_listen(listen: &str) -> Result<String, ConfigError> {
    let full = if listen.starts_with(':') {
        format!("0.0.0.0{listen}")
    } else {
        listen.to_string()
    };
    let port_ok = full
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok());
    if !port_ok {
        return Err(ConfigError(format!(
            "listen address {listen:?} is not host:port or :port"
        )));
    }
    Ok(full)
}

fn normalize_prefix(prefix: String) -> String {
    let trimmed = prefix.trim_matches('/');
    if trimmed.is_empty() {
        String::new()
    } else {
        format!("{trimmed}/")
    }
}

/// Parses a duration the way the vendor's Go server does (`1m30s`, `2h45m`, `500ms`,
/// `1.5h`, `300us`: numbers each followed by `ns`, `us`/`µs`, `ms`, `s`, `m` or `h`), and
/// also a bare number of seconds (`10`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let text = s.trim();
    let invalid = || format!("invalid duration {text:?} (examples: 10s, 1m30s, 500ms, 2h, 30d)");
    if text.is_empty() {
        return Err(invalid());
    }
    if let Ok(secs) = text.parse::<f64>() {
        return Duration::try_from_secs_f64(secs).map_err(|_| invalid());
    }
    let mut rest = text;
    let mut total = 0.0_f64;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        let (num, after) = rest.split_at(num_len);
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        let n: f64 = num.parse().map_err(|_| invalid())?;
        let scale = match unit {
            "ns" => 1e-9,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86400.0,
            _ => return Err(invalid()),
        };
        total += n * scale;
        rest = next;
    }
    Duration::try_from_secs_f64(total).map_err(|_| invalid())
}

/// Parses byte sizes: `8388608`, `8M`, `8MiB`, `1G`, `512K`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("invalid size {s:?}"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(format!("invalid size unit in {s:?}")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

fn parse_count<T: std::str::FromStr>(s: &str) -> Result<T, String> {
    s.trim()
        .parse()
        .map_err(|_| format!("expected a whole number, got {s:?}"))
}

fn parse_bool(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(format!("expected true or false, got {s:?}")),
    }
}

fn de_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let v = Option::<serde_yaml::Value>::deserialize(d)?;
    match v {
        None => Ok(None),
        Some(serde_yaml::Value::Number(n)) => n
            .as_f64()
            .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
            .map(Some)
            .ok_or_else(|| serde::de::Error::custom(format!("invalid duration {n}"))),
        Some(serde_yaml::Value::String(s)) => parse_duration(&s)
            .map(Some)
            .map_err(serde::de::Error::custom),
        Some(other) => Err(serde::de::Error::custom(format!(
            "invalid duration {other:?}"
        ))),
    }
}

fn de_size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let v = Option::<serde_yaml::Value>::deserialize(d)?;
    match v {
        None => Ok(None),
        Some(serde_yaml::Value::Number(n)) => n
            .as_u64()
            .map(Some)
            .ok_or_else(|| serde::de::Error::custom("invalid size")),
        Some(serde_yaml::Value::String(s)) => {
            parse_size(&s).map(Some).map_err(serde::de::Error::custom)
        }
        Some(other) => Err(serde::de::Error::custom(format!("invalid size {other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn defaults_serve_the_embedded_store_on_8089() {
        let c = Config::resolve(ServeArgs::default(), env(&[])).unwrap();
        assert_eq!(c.listen, "0.0.0.0:8089");
        assert_eq!(c.data_dir, PathBuf::from("./vmreg-data"));
        assert_eq!(c.shutdown_timeout, Duration::from_secs(10));
        assert!(c.s3.is_none() && c.redis.is_none());
    }

    #[test]
    fn the_per_identity_upload_cap_comes_from_its_flag_or_variable_and_is_at_least_one() {
        let default = Config::resolve(ServeArgs::default(), env(&[])).unwrap();
        assert_eq!(default.limits.max_upload_sessions_per_identity, 100);
        let var = [("VMREG_MAX_UPLOAD_SESSIONS_PER_IDENTITY", "7")];
        let c = Config::resolve(ServeArgs::default(), env(&var)).unwrap();
        assert_eq!(c.limits.max_upload_sessions_per_identity, 7);
        let flag = ServeArgs {
            max_upload_sessions_per_identity: Some(9),
            ..ServeArgs::default()
        };
        let c = Config::resolve(flag, env(&var)).unwrap();
        assert_eq!(
            c.limits.max_upload_sessions_per_identity, 9,
            "the flag wins"
        );
        let zero = [("VMREG_MAX_UPLOAD_SESSIONS_PER_IDENTITY", "0")];
        let refused = Config::resolve(ServeArgs::default(), env(&zero)).unwrap_err();
        assert!(
            refused.0.contains("max_upload_sessions_per_identity"),
            "{refused:?}"
        );
    }

    #[test]
    fn vendor_names_work_and_ours_win() {
        let c = Config::resolve(
            ServeArgs::default(),
            env(&[
                ("ANKA_LISTEN_ADDR", ":9000"),
                ("ANKA_BASE_PATH", "/srv/a"),
                ("VMREG_DATA_DIR", "/srv/b"),
                ("ANKA_GRACEFUL_SHUTDOWN_TIMEOUT", "30s"),
            ]),
        )
        .unwrap();
        assert_eq!(c.listen, "0.0.0.0:9000");
        assert_eq!(c.data_dir, PathBuf::from("/srv/b"));
        assert_eq!(c.shutdown_timeout, Duration::from_secs(30));
    }

    #[test]
    fn telemetry_switches_layer_like_the_rest() {
        let off = Config::resolve(ServeArgs::default(), env(&[])).unwrap();
        assert!(!off.telemetry.access_logs && !off.telemetry.json_logs);
        assert_eq!(off.telemetry.metrics_listen, None);
        let vendor = Config::resolve(
            ServeArgs::default(),
            env(&[("ANKA_ACCESS_LOGS", "true"), ("ANKA_ENABLE_METRICS", "1")]),
        )
        .unwrap();
        assert!(vendor.telemetry.access_logs);
        assert_eq!(
            vendor.telemetry.metrics_listen.as_deref(),
            Some("0.0.0.0:2112")
        );
        let flags = ServeArgs {
            access_logs: Some(false),
            log_format: Some("json".into()),
            metrics_listen: Some(":9100".into()),
            ..ServeArgs::default()
        };
        let ours = Config::resolve(
            flags,
            env(&[
                ("ANKA_ACCESS_LOGS", "true"),
                ("VMREG_ENABLE_METRICS", "true"),
            ]),
        )
        .unwrap();
        assert!(!ours.telemetry.access_logs && ours.telemetry.json_logs);
        assert_eq!(
            ours.telemetry.metrics_listen.as_deref(),
            Some("0.0.0.0:9100")
        );
        assert!(
            Config::resolve(ServeArgs::default(), env(&[("VMREG_LOG_FORMAT", "xml")])).is_err()
        );
    }

    #[test]
    fn flags_win_over_environment_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("vmreg.yaml");
        std::fs::write(
            &file,
            "listen: \":7000\"\ndata_dir: /from/file\ns3_bucket: b\ns3_prefix: /p/\n",
        )
        .unwrap();
        let flags = ServeArgs {
            listen: Some("127.0.0.1:1".into()),
            config: Some(file),
            ..Default::default()
        };
        let c = Config::resolve(flags, env(&[("VMREG_DATA_DIR", "/from/env")])).unwrap();
        assert_eq!(c.listen, "127.0.0.1:1");
        assert_eq!(c.data_dir, PathBuf::from("/from/env"));
        let s3 = c.s3.unwrap();
        assert_eq!((s3.bucket.as_str(), s3.prefix.as_str()), ("b", "p/"));
    }

    #[test]
    fn the_vendors_backend_type_chooses_the_file_store() {
        let bucket = ("ANKA_BACKEND_S3_BUCKET", "b");
        let c = Config::resolve(
            ServeArgs::default(),
            env(&[bucket, ("ANKA_BACKEND_TYPE", "disk")]),
        )
        .unwrap();
        assert!(c.s3.is_none());
        let c = Config::resolve(
            ServeArgs::default(),
            env(&[bucket, ("ANKA_BACKEND_TYPE", "s3")]),
        )
        .unwrap();
        assert_eq!(c.s3.unwrap().bucket, "b");
        assert!(
            Config::resolve(ServeArgs::default(), env(&[("ANKA_BACKEND_TYPE", "s3")])).is_err()
        );
        assert!(
            Config::resolve(ServeArgs::default(), env(&[("ANKA_BACKEND_TYPE", "tape")])).is_err()
        );
    }

    #[test]
    fn rejects_bad_values() {
        assert!(Config::resolve(
            ServeArgs {
                listen: Some("nope".into()),
                ..Default::default()
            },
            env(&[])
        )
        .is_err());
        assert!(Config::resolve(
            ServeArgs::default(),
            env(&[("ANKA_BACKEND_S3_USE_PATH_STYLE", "maybe")])
        )
        .is_err());
        assert!(Config::resolve(
            ServeArgs {
                part_size: Some(1024),
                ..Default::default()
            },
            env(&[])
        )
        .is_err());
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact_url("redis://:hunter2@host:6379/0"),
            "redis://:***@host:6379/0"
        );
        assert_eq!(redact_url("rediss://u:p@h"), "rediss://u:***@h");
        assert_eq!(redact_url("redis://host"), "redis://host");
        assert_eq!(
            redact_url("redis+sentinel://app:p@ss@s1:26379,s2/m/1?sentinel_password=sp&x=1"),
            "redis+sentinel://app:***@s1:26379,s2/m/1?sentinel_password=***&x=1"
        );
        assert_eq!(
            redact_url("rediss+sentinel://s1/m?sentinel_username=u"),
            "rediss+sentinel://s1/m?sentinel_username=u"
        );
        // A bad Sentinel URL stops the start with a line that names it, password hidden.
        let e = Config::resolve(
            ServeArgs {
                redis_url: Some("redis+sentinel://:hunter2@s1:26379".into()),
                ..Default::default()
            },
            env(&[]),
        )
        .unwrap_err();
        assert!(e.0.contains("no master name"), "{}", e.0);
        assert!(!e.0.contains("hunter2"), "{}", e.0);
        let c = Config::resolve(
            ServeArgs {
                redis_url: Some("redis://:hunter2@h".into()),
                ..Default::default()
            },
            env(&[]),
        )
        .unwrap();
        assert!(!c.to_string().contains("hunter2"));
    }

    #[test]
    fn auth_switches_by_vendor_names_with_the_token_redacted() {
        let c = Config::resolve(
            ServeArgs::default(),
            env(&[
                ("ANKA_ENABLE_AUTH", "true"),
                ("ANKA_ROOT_TOKEN", "s3cr3t-root-token"),
                ("ANKA_ENABLE_API_KEYS", "1"),
                ("VMREG_API_KEYS_SESSION_TTL", "5s"),
            ]),
        )
        .unwrap();
        assert!(c.auth.enabled && c.auth.api_keys && !c.auth.authorization);
        assert_eq!(c.auth.session_ttl, Duration::from_secs(5));
        let shown = format!("{c}{c:?}");
        assert!(shown.contains("api keys on"), "{shown}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
        let off = Config::resolve(ServeArgs::default(), env(&[])).unwrap();
        assert!(!off.auth.enabled);
        assert_eq!(off.auth.session_ttl, Duration::from_secs(300));
    }

    #[test]
    fn refuses_a_short_or_missing_root_token() {
        let short = Config::resolve(
            ServeArgs::default(),
            env(&[("ANKA_ENABLE_AUTH", "true"), ("ANKA_ROOT_TOKEN", "short")]),
        )
        .unwrap_err();
        assert!(!short.to_string().contains("short\""), "{short}");
        assert!(
            Config::resolve(ServeArgs::default(), env(&[("ANKA_ENABLE_AUTH", "true")])).is_err()
        );
        assert!(Config::resolve(
            ServeArgs::default(),
            env(&[("ANKA_ENABLE_API_KEYS", "true")])
        )
        .is_err());
    }

    #[test]
    fn seeds_groups_from_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("vmreg.yaml");
        std::fs::write(
            &file,
            "enable_auth: true\nroot_token: 1111111111\npermission_groups:\n  ci: [list_vms, pull_vm]\n",
        )
        .unwrap();
        let c = Config::resolve(
            ServeArgs {
                config: Some(file),
                ..Default::default()
            },
            env(&[]),
        )
        .unwrap();
        assert_eq!(c.auth.seed_groups["ci"], vec!["list_vms", "pull_vm"]);
        // An unquoted all-digit token, as in the vendor's examples, is still the token.
        assert_eq!(
            c.auth.root_token.as_ref().map(Secret::expose),
            Some("1111111111")
        );
    }

    #[test]
    fn parses_sizes_and_durations() {
        assert_eq!(parse_size("20MiB").unwrap(), 20 << 20);
        assert_eq!(parse_size("1048576").unwrap(), 1 << 20);
        assert!(parse_size("1X").is_err());
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("abc").is_err());
    }

    #[test]
    fn parses_go_style_durations() {
        let secs = |s: &str| parse_duration(s).unwrap().as_secs_f64();
        assert_eq!(secs("1m30s"), 90.0);
        assert_eq!(secs("2h45m"), 9900.0);
        assert_eq!(secs("1h"), 3600.0);
        assert_eq!(secs("1.5h"), 5400.0);
        assert_eq!(secs("10"), 10.0);
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("300us").unwrap(), Duration::from_micros(300));
        assert_eq!(
            parse_duration("1s500ms").unwrap(),
            Duration::from_millis(1500)
        );
        for bad in ["", "1x", "m", "1m30", "-5s", "1..5s", "s1"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
        let c = Config::resolve(
            ServeArgs::default(),
            env(&[("ANKA_GRACEFUL_SHUTDOWN_TIMEOUT", "1m30s")]),
        )
        .unwrap();
        assert_eq!(c.shutdown_timeout, Duration::from_secs(90));
    }

    #[test]
    fn public_url_is_absolute_and_loses_its_trailing_slash() {
        assert_eq!(
            normalize_public_url("https://reg.example:8443/").unwrap(),
            "https://reg.example:8443"
        );
        assert_eq!(
            normalize_public_url("http://lb/vmreg").unwrap(),
            "http://lb/vmreg"
        );
        for bad in [
            "reg.example",
            "https://",
            "http:///x",
            "https://a?b",
            "ftp://a",
        ] {
            assert!(normalize_public_url(bad).is_err(), "{bad}");
        }
    }
}
