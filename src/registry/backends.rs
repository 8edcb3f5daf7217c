//! Opens the stores a configuration names: S3 and Redis, or the embedded defaults.

use std::sync::Arc;

use crate::config::Config;
use crate::meta::{embedded::EmbeddedMeta, redis::RedisMeta, MetaStore};
use crate::store::{fs::FsStore, s3::S3Store, BlobStore};
use crate::telemetry::Instrumented;

/// The metadata and blob stores for `config`, each timed for the metrics.
pub async fn open(config: &Config) -> Result<(Arc<dyn MetaStore>, Arc<dyn BlobStore>), String> {
    let meta: Arc<dyn MetaStore> = match &config.redis {
        Some(redis) => Arc::new(Instrumented::new(
            RedisMeta::connect(redis).await.map_err(|e| e.to_string())?,
            "redis",
        )),
        None => Arc::new(Instrumented::new(
            EmbeddedMeta::open(&config.data_dir.join("meta.redb")).map_err(|e| e.to_string())?,
            "redb",
        )),
    };
    let blobs: Arc<dyn BlobStore> = match &config.s3 {
        Some(s3) => Arc::new(Instrumented::new(
            S3Store::connect(s3, config.part_size)
                .await
                .map_err(|e| e.to_string())?,
            "s3",
        )),
        None => Arc::new(Instrumented::new(
            FsStore::open(&config.data_dir, config.part_size).map_err(|e| e.to_string())?,
            "disk",
        )),
    };
    Ok((meta, blobs))
}
