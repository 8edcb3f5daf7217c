//! Opens the stores a configuration names: S3 and Redis, or the embedded defaults.
//!
//! `serve` opens each store on its own and retries one that is not reachable yet
//! ([`open_meta`], [`open_blobs`]); the admin commands take both at once or fail
//! ([`open`]).

use std::sync::Arc;

use crate::config::Config;
use crate::meta::{embedded::EmbeddedMeta, redis::RedisMeta, MetaError, MetaStore};
use crate::store::{fs::FsStore, s3::S3Store, BlobStore};
use crate::telemetry::Instrumented;

/// Why a store could not be opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenError {
    /// The configuration is wrong (credentials refused, no such bucket, a data directory
    /// that cannot be used): retrying will not help.
    Config(String),
    /// The store did not answer; it may yet.
    Unreachable(String),
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenError::Config(m) | OpenError::Unreachable(m) => f.write_str(m),
        }
    }
}

/// The metadata and blob stores for `config`, each timed for the metrics.
pub async fn open(config: &Config) -> Result<(Arc<dyn MetaStore>, Arc<dyn BlobStore>), String> {
    let meta = open_meta(config)
        .await
        .map_err(|e| format!("metadata store unavailable: {e}"))?;
    let blobs = open_blobs(config)
        .await
        .map_err(|e| format!("blob store unavailable: {e}"))?;
    Ok((meta, blobs))
}

/// What `config`'s metadata store is, for messages about it before it is open.
pub fn meta_name(config: &Config) -> String {
    match &config.redis {
        Some(redis) => crate::config::redact_url(&redis.url),
        None => config.data_dir.join("meta.redb").display().to_string(),
    }
}

/// What `config`'s blob store is, for messages about it before it is open.
pub fn blobs_name(config: &Config) -> String {
    match &config.s3 {
        Some(s3) => format!(
            "s3://{}/{} at {}",
            s3.bucket,
            s3.prefix,
            s3.endpoint.as_deref().unwrap_or("AWS")
        ),
        None => config.data_dir.display().to_string(),
    }
}

/// The metadata store of `config`, after one attempt to reach it.
pub async fn open_meta(config: &Config) -> Result<Arc<dyn MetaStore>, OpenError> {
    Ok(match &config.redis {
        Some(redis) => Arc::new(Instrumented::new(
            RedisMeta::connect(redis).await.map_err(|e| {
                let config_error = crate::meta::redis::is_configuration_error(&e);
                let message = match e {
                    MetaError::Unavailable(m) => m,
                    e => e.to_string(),
                };
                match config_error {
                    true => OpenError::Config(message),
                    false => OpenError::Unreachable(message),
                }
            })?,
            "redis",
        )),
        // A local file: what fails here (permissions, another process holding it) is the
        // operator's to fix.
        None => Arc::new(Instrumented::new(
            EmbeddedMeta::open(&config.data_dir.join("meta.redb"))
                .map_err(|e| OpenError::Config(e.to_string()))?,
            "redb",
        )),
    })
}

/// The blob store of `config`, after one attempt to reach it.
pub async fn open_blobs(config: &Config) -> Result<Arc<dyn BlobStore>, OpenError> {
    Ok(match &config.s3 {
        Some(s3) => Arc::new(Instrumented::new(
            S3Store::open(s3, config.part_size)
                .await
                .map_err(|e| match e {
                    crate::store::s3::OpenError::Refused(m) => OpenError::Config(m),
                    crate::store::s3::OpenError::Unreachable(m) => OpenError::Unreachable(m),
                })?,
            "s3",
        )),
        None => Arc::new(Instrumented::new(
            FsStore::open(&config.data_dir, config.part_size)
                .map_err(|e| OpenError::Config(e.to_string()))?,
            "disk",
        )),
    })
}
