//! Files in an S3-compatible bucket (AWS S3, MinIO, Garage).
//!
//! Bytes are never buffered beyond what the caller hands over: a part goes out as the
//! `Bytes` it came in, and downloads are the SDK's body stream passed through chunk by
//! chunk. Every call has a deadline so an unreachable S3 turns into a 503 in seconds.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_config::meta::region::RegionProviderChain;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::BehaviorVersion;
use aws_sdk_s3::config::{
    Region, RequestChecksumCalculation, ResponseChecksumValidation, StalledStreamProtectionConfig,
};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream as SdkByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_sdk_s3::Client;
use bytes::Bytes;
use futures_util::{FutureExt, StreamExt, TryStreamExt};

use super::memory::ReadMemory;
use super::ranged::{ordered, slice, Fetched, Piece};
use super::shared::{self, Held, SharedReads};
use super::{
    BlobStore, ByteStream, ObjectInfo, PartInfo, PendingUpload, Redirect, StoreError, StoreResult,
    UploadHandle,
};
use crate::config::S3Config;
use crate::telemetry::metrics;

/// One TCP/TLS connection attempt.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Calls that move no bulk data (head, list, create, abort, delete, the start of a get):
/// a healthy S3 answers these in well under a second, and a hung one must become a 503
/// while the client still waits.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Completing assembles the object server-side, which takes minutes for the largest files
/// (S3 keeps the connection alive meanwhile).
const COMPLETE_TIMEOUT: Duration = Duration::from_secs(300);
/// The readiness probe: fail fast, the probe runs again soon.
const PING_TIMEOUT: Duration = Duration::from_secs(3);
/// A download stream that yields nothing for this long is treated as a dead S3.
const BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// The slowest throughput a part upload is given time for (bytes per second), on top of
/// [`CALL_TIMEOUT`]; parts can be hundreds of MiB for very large files.
const MIN_UPLOAD_RATE: u64 = 2 * 1024 * 1024;
/// How long a presigned download URL stays valid.
const PRESIGN_TTL: Duration = Duration::from_secs(20 * 60);
/// Bytes per GET when a download is read as several ranges at once: big enough that the
/// per-request cost is small, small enough that `read_concurrency` of them per download
/// stay a few MiB.
pub const READ_CHUNK: u64 = 4 << 20;

/// Files kept in an S3-compatible bucket.
pub struct S3Store {
    client: Client,
    bucket: String,
    prefix: String,
    redirect: bool,
    min_part_size: u64,
    endpoint: String,
    /// Ranges of one download fetched at once; 1 reads each download as one GET.
    read_concurrency: usize,
    /// The budget every download's pieces are reserved from.
    memory: Arc<ReadMemory>,
    /// Chunks shared by concurrent downloads of the same object, when enabled.
    shared: Option<Arc<SharedReads>>,
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("s3 {what}: {e}"))
}

/// Maps an SDK error: a missing object is `NotFound`, everything else `Unavailable`.
fn sdk_error<E>(what: &str, key: &str, e: SdkError<E>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let missing = match &e {
        SdkError::ServiceError(se) => {
            matches!(e.code(), Some("NoSuchKey") | Some("NotFound"))
                || (se.raw().status().as_u16() == 404
                    && !matches!(e.code(), Some("NoSuchBucket") | Some("NoSuchUpload")))
        }
        _ => false,
    };
    if missing {
        StoreError::NotFound(key.to_string())
    } else {
        unavailable(&format!("{what} {key}"), DisplayErrorContext(&e))
    }
}

/// Why [`S3Store::open`] has no bucket to work with.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// S3 answered, and refused what is configured: retrying cannot help.
    #[error("{0}")]
    Refused(String),
    /// S3 did not answer, or answered that it cannot serve now: worth retrying.
    #[error("{0}")]
    Unreachable(String),
}

/// Sorts the first HeadBucket's failure. HEAD replies carry no body, so the status is all
/// there is: 403 is every credential refusal (InvalidAccessKeyId, SignatureDoesNotMatch,
/// AccessDenied), 404 a missing bucket (vmreg never creates one), other 4xx a request the
/// server will refuse again (a wrong region, say); 5xx and transport failures may pass.
fn classify_first_contact<E>(store: &S3Store, e: SdkError<E>) -> OpenError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let at = format!("bucket {} at {}", store.bucket, store.endpoint);
    match &e {
        SdkError::ServiceError(se) => {
            let status = se.raw().status().as_u16();
            let code = e.code().map(|c| format!(" {c}")).unwrap_or_default();
            match status {
                403 => OpenError::Refused(format!(
                    "s3 refused the credentials for {at} (403{code}): check the access key, \
                     secret and the key's permissions on the bucket"
                )),
                404 => OpenError::Refused(format!(
                    "s3 has no {at} (404{code}): create the bucket first"
                )),
                400..=499 if status != 408 && status != 429 => OpenError::Refused(format!(
                    "s3 refused to serve {at} ({status}{code}): check the region and endpoint"
                )),
                _ => OpenError::Unreachable(format!("s3 {at} answered {status}{code}",)),
            }
        }
        SdkError::ConstructionFailure(_) => OpenError::Refused(format!(
            "s3 request for {at} could not be made: {}",
            DisplayErrorContext(&e)
        )),
        _ => OpenError::Unreachable(format!("s3 {at}: {}", DisplayErrorContext(&e))),
    }
}

/// Runs an SDK call under a deadline.
async fn deadline<T>(
    what: &str,
    key: &str,
    limit: Duration,
    f: impl Future<Output = StoreResult<T>>,
) -> StoreResult<T> {
    match tokio::time::timeout(limit, f).await {
        Ok(r) => r,
        Err(_) => Err(StoreError::Unavailable(format!(
            "s3 {what} {key}: no answer within {}s",
            limit.as_secs()
        ))),
    }
}

impl S3Store {
    /// Connects with the AWS credential chain and the settings in `config`; fails when the
    /// bucket cannot be reached now, so a wrong endpoint, bucket or credential is reported
    /// at start-up rather than as 503s later.
    pub async fn connect(config: &S3Config, min_part_size: u64) -> StoreResult<Self> {
        Self::open(config, min_part_size)
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))
    }

    /// As [`S3Store::connect`], telling a refusal that retrying cannot cure (credentials
    /// rejected, no such bucket) from an S3 not reachable yet.
    pub async fn open(config: &S3Config, min_part_size: u64) -> Result<Self, OpenError> {
        let store = Self::build(config, min_part_size).await;
        let call = store.client.head_bucket().bucket(&store.bucket).send();
        match tokio::time::timeout(PING_TIMEOUT, call).await {
            Ok(Ok(_)) => Ok(store),
            Ok(Err(e)) => Err(classify_first_contact(&store, e)),
            Err(_) => Err(OpenError::Unreachable(format!(
                "s3 {}: no answer within {}s",
                store.endpoint,
                PING_TIMEOUT.as_secs()
            ))),
        }
    }

    async fn build(config: &S3Config, min_part_size: u64) -> Self {
        let region = RegionProviderChain::first_try(config.region.clone().map(Region::new))
            .or_default_provider()
            .or_else(Region::new("us-east-1"));
        // No SDK-wide attempt timeout: a part upload may rightly take long; each call gets
        // its own deadline below instead.
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .build();
        let shared = aws_config::defaults(BehaviorVersion::latest())
            .region(region)
            .timeout_config(timeouts)
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(3)
                    .with_max_backoff(Duration::from_secs(2)),
            )
            .load()
            .await;
        let mut builder = aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(config.path_style)
            // Integrity is proven end to end by the registry's SHA-256 of every file; the
            // SDK's extra CRC per request would only cost CPU, and some S3-compatible
            // servers reject the trailing-checksum encoding it uses.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            // Stalls are caught by the per-call deadlines and the body idle timeout; the
            // SDK's throughput watch would add a timer and bookkeeping to every chunk.
            .stalled_stream_protection(StalledStreamProtectionConfig::disabled())
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        if let Some(endpoint) = &config.endpoint {
            builder = builder.endpoint_url(endpoint);
        }
        let client = Client::from_conf(builder.build());
        let endpoint = config.endpoint.clone().unwrap_or_else(|| "AWS".to_string());
        let memory = ReadMemory::new(config.read_memory);
        Self {
            client,
            bucket: config.bucket.clone(),
            prefix: config.prefix.clone(),
            redirect: config.redirect,
            min_part_size,
            endpoint,
            read_concurrency: config.read_concurrency.max(1),
            shared: (config.read_cache > 0)
                .then(|| SharedReads::new(config.read_cache, memory.clone())),
            memory,
        }
    }

    fn reader(&self, key: &str) -> Reader {
        Reader {
            client: self.client.clone(),
            bucket: self.bucket.clone(),
            full: Arc::from(self.full(key)),
            key: Arc::from(key),
        }
    }

    /// Bytes `start..end` of `key` read as [`READ_CHUNK`] pieces, `read_concurrency` at
    /// once, in order, each reserved from the read memory before it is fetched; with
    /// shared reads, whole aligned chunks are fetched once for every download that wants
    /// them and each takes its slice (a download joining a chunk kept or being fetched
    /// reserves nothing: the chunk counts once, under its fetch's reservation).
    fn parallel_get(&self, key: &str, start: u64, end: u64) -> ByteStream {
        let reader = self.reader(key);
        let shared = self.shared.clone();
        // Held by the stream: this download counts as a reader of the object until it ends.
        let downloading = shared.as_ref().map(|s| s.reader(&reader.full));
        let memory = self.memory.clone();
        let (cache, key_in_cache) = (shared.clone(), reader.full.clone());
        // In order, each piece either joins a chunk kept or being fetched (no memory of
        // its own) or reserves what its fetch will hold.
        let admit = move |piece: Piece| {
            let (memory, cache, key) = (memory.clone(), cache.clone(), key_in_cache.clone());
            async move {
                let Some(cache) = cache else {
                    let reserved = memory.reserve(piece.end - piece.start, || {}).await;
                    return Ticket::Reserved(reserved);
                };
                if let Some(joined) = cache.join(&key, piece.index) {
                    return Ticket::Joined(joined);
                }
                // A shared fetch reads the whole chunk, whatever slice this one needs.
                Ticket::Reserved(memory.reserve(READ_CHUNK, || cache.give_way()).await)
            }
        };
        ordered(
            start,
            end,
            READ_CHUNK,
            self.read_concurrency,
            admit,
            move |piece, ticket| {
                let _ = &downloading;
                let reader = reader.clone();
                let from = piece.index * READ_CHUNK;
                let whole = match (ticket, &shared) {
                    (Ticket::Joined(joined), _) => joined,
                    (Ticket::Reserved(reserved), Some(shared)) => {
                        let full = reader.full.clone();
                        shared.chunk(&full, piece.index, move || async move {
                            let parts = reader.fetch(from, from + READ_CHUNK).await?;
                            Ok(Held::new(parts, Some(reserved)))
                        })
                    }
                    (Ticket::Reserved(reserved), None) => {
                        return async move {
                            let parts = reader.fetch(piece.start, piece.end).await?;
                            Ok(Fetched {
                                parts,
                                hold: (Some(reserved), None),
                            })
                        }
                        .boxed();
                    }
                };
                async move {
                    let chunk = whole.await?;
                    let parts = slice(&chunk, piece.start - from, piece.end - from);
                    // The chunk (and its reservation) stays until this slice is sent.
                    Ok(Fetched {
                        parts,
                        hold: (None, Some(chunk)),
                    })
                }
                .boxed()
            },
        )
    }

    fn full(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// After a `NoSuchUpload` at completion: another replica (or an earlier attempt whose
    /// reply was lost) may have completed it already. The object then exists with the
    /// expected size.
    async fn already_completed(&self, key: &str, size: u64) -> StoreResult<bool> {
        let head = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(self.full(key))
            .send();
        match deadline("head", key, CALL_TIMEOUT, async {
            head.await.map_err(|e| sdk_error("head", key, e))
        })
        .await
        {
            Ok(out) => Ok(out.content_length().and_then(|l| u64::try_from(l).ok()) == Some(size)),
            Err(StoreError::NotFound(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// How a piece of a download was admitted.
enum Ticket {
    /// It joins a chunk kept or being fetched for another download.
    Joined(futures_util::future::BoxFuture<'static, StoreResult<shared::Chunk>>),
    /// Its fetch holds this much of the read memory.
    Reserved(super::memory::Reserved),
}

/// What a GET of one object needs, owned, so pieces can be fetched from spawned futures.
#[derive(Clone)]
struct Reader {
    client: Client,
    bucket: String,
    /// The key in the bucket (with the store's prefix).
    full: Arc<str>,
    /// The key as the registry names it, for errors.
    key: Arc<str>,
}

impl Reader {
    /// One GET of the bytes `start..end`, or the whole object, as its body stream.
    async fn get(&self, range: Option<(u64, u64)>) -> StoreResult<ByteStream> {
        let key = &*self.key;
        let mut req = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&*self.full);
        if let Some((start, end)) = range {
            req = req.range(format!("bytes={start}-{}", end - 1));
        }
        let call = req.send();
        let out = deadline("get", key, CALL_TIMEOUT, async {
            call.await.map_err(|e| sdk_error("get", key, e))
        })
        .await?;
        Ok(body_stream(key.to_string(), out.body))
    }

    /// The bytes `start..end` (fewer where the object ends first), whole, in the buffers
    /// they arrived in.
    async fn fetch(&self, start: u64, end: u64) -> StoreResult<Vec<Bytes>> {
        self.get(Some((start, end))).await?.try_collect().await
    }
}

/// Turns the SDK's body into our stream, with an idle deadline per chunk; counts the
/// bytes read from S3.
fn body_stream(key: String, body: SdkByteStream) -> ByteStream {
    futures_util::stream::try_unfold((key, body), |(key, mut body)| async move {
        match tokio::time::timeout(BODY_IDLE_TIMEOUT, body.next()).await {
            Err(_) => Err(StoreError::Unavailable(format!(
                "s3 get {key}: stalled for {}s",
                BODY_IDLE_TIMEOUT.as_secs()
            ))),
            Ok(None) => Ok(None),
            Ok(Some(Ok(chunk))) => {
                metrics::s3_bytes_read(chunk.len() as u64);
                Ok(Some((chunk, (key, body))))
            }
            Ok(Some(Err(e))) => Err(unavailable(&format!("get {key}"), e)),
        }
    })
    .boxed()
}

#[async_trait]
impl BlobStore for S3Store {
    async fn begin_upload(&self, key: &str) -> StoreResult<UploadHandle> {
        let call = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(self.full(key))
            .send();
        let out = deadline("create multipart upload", key, CALL_TIMEOUT, async {
            call.await
                .map_err(|e| sdk_error("create multipart upload", key, e))
        })
        .await?;
        let upload_id = out.upload_id().ok_or_else(|| {
            StoreError::Unavailable(format!("s3 create multipart upload {key}: no upload id"))
        })?;
        Ok(UploadHandle {
            key: key.to_string(),
            upload_id: upload_id.to_string(),
        })
    }

    async fn write_part(
        &self,
        upload: &UploadHandle,
        number: u32,
        _offset: u64,
        data: Bytes,
    ) -> StoreResult<PartInfo> {
        let key = upload.key.as_str();
        let size = data.len() as u64;
        let part_number = i32::try_from(number)
            .map_err(|_| unavailable(&format!("upload part {key}"), "part number too large"))?;
        let length = i64::try_from(size)
            .map_err(|_| unavailable(&format!("upload part {key}"), "part too large"))?;
        // The payload is not signed: SigV4 would hash every byte once more, on top of the
        // registry's own SHA-256 that already proves the content; TLS protects the transfer.
        let call = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(self.full(key))
            .upload_id(&upload.upload_id)
            .part_number(part_number)
            .content_length(length)
            .body(SdkByteStream::from(data))
            .customize()
            .disable_payload_signing()
            .send();
        let limit = CALL_TIMEOUT + Duration::from_secs(size / MIN_UPLOAD_RATE);
        let out = deadline("upload part", key, limit, async {
            call.await.map_err(|e| sdk_error("upload part", key, e))
        })
        .await?;
        let etag = out
            .e_tag()
            .ok_or_else(|| unavailable(&format!("upload part {key}"), "no ETag in the reply"))?;
        Ok(PartInfo {
            number,
            size,
            etag: etag.to_string(),
        })
    }

    async fn complete_upload(&self, upload: &UploadHandle, parts: &[PartInfo]) -> StoreResult<()> {
        let key = upload.key.as_str();
        if parts.is_empty() {
            // S3 refuses to complete an upload of no parts; an empty file is a plain put.
            self.abort_upload(upload).await?;
            return self.put(key, Bytes::new()).await;
        }
        let mut completed = Vec::with_capacity(parts.len());
        for p in parts {
            let number = i32::try_from(p.number)
                .map_err(|_| unavailable(&format!("complete {key}"), "part number too large"))?;
            completed.push(
                CompletedPart::builder()
                    .part_number(number)
                    .e_tag(&p.etag)
                    .build(),
            );
        }
        let call = self
            .client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(self.full(key))
            .upload_id(&upload.upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(completed))
                    .build(),
            )
            .send();
        let result = deadline("complete multipart upload", key, COMPLETE_TIMEOUT, async {
            call.await.map_err(|e| match e.code() {
                Some("NoSuchUpload") => StoreError::NotFound(key.to_string()),
                _ => sdk_error("complete multipart upload", key, e),
            })
        })
        .await;
        match result {
            Ok(_) => Ok(()),
            Err(StoreError::NotFound(_)) => {
                let size = parts.iter().map(|p| p.size).sum();
                if self.already_completed(key, size).await? {
                    Ok(())
                } else {
                    Err(StoreError::Unavailable(format!(
                        "s3 complete multipart upload {key}: the upload is gone"
                    )))
                }
            }
            Err(e) => Err(e),
        }
    }

    async fn abort_upload(&self, upload: &UploadHandle) -> StoreResult<()> {
        let key = upload.key.as_str();
        let call = self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(self.full(key))
            .upload_id(&upload.upload_id)
            .send();
        deadline("abort multipart upload", key, CALL_TIMEOUT, async {
            match call.await {
                Ok(_) => Ok(()),
                // Aborting twice, or after completion, leaves nothing to clean up.
                Err(e) if e.code() == Some("NoSuchUpload") => Ok(()),
                Err(e) => match sdk_error("abort multipart upload", key, e) {
                    StoreError::NotFound(_) => Ok(()),
                    other => Err(other),
                },
            }
        })
        .await
    }

    async fn put(&self, key: &str, data: Bytes) -> StoreResult<()> {
        let limit = CALL_TIMEOUT + Duration::from_secs(data.len() as u64 / MIN_UPLOAD_RATE);
        let call = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(self.full(key))
            .body(SdkByteStream::from(data))
            .send();
        deadline("put", key, limit, async {
            call.await.map(|_| ()).map_err(|e| sdk_error("put", key, e))
        })
        .await
    }

    async fn get(&self, key: &str, range: Option<(u64, u64)>) -> StoreResult<ByteStream> {
        match range {
            Some((start, end)) if end <= start => Ok(futures_util::stream::empty().boxed()),
            Some((start, end)) if self.read_concurrency > 1 && end - start > READ_CHUNK => {
                // The first piece is awaited here so that a missing object or an
                // unreachable S3 is an error before the response starts, as with one GET.
                let mut pieces = self.parallel_get(key, start, end);
                match pieces.next().await {
                    Some(Err(e)) => Err(e),
                    Some(Ok(first)) => Ok(futures_util::stream::once(async { Ok(first) })
                        .chain(pieces)
                        .boxed()),
                    None => Ok(futures_util::stream::empty().boxed()),
                }
            }
            range => self.reader(key).get(range).await,
        }
    }

    async fn read(&self, key: &str) -> StoreResult<Bytes> {
        let call = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.full(key))
            .send();
        deadline("read", key, CALL_TIMEOUT, async {
            let out = call.await.map_err(|e| sdk_error("read", key, e))?;
            let body = out
                .body
                .collect()
                .await
                .map_err(|e| unavailable(&format!("read {key}"), e))?;
            Ok(body.into_bytes())
        })
        .await
    }

    async fn delete(&self, key: &str) -> StoreResult<()> {
        let call = self
            .client
            .delete_object()
            .bucket(&self.bucket)
            .key(self.full(key))
            .send();
        deadline("delete", key, CALL_TIMEOUT, async {
            match call.await {
                Ok(_) => Ok(()),
                Err(e) => match sdk_error("delete", key, e) {
                    StoreError::NotFound(_) => Ok(()),
                    other => Err(other),
                },
            }
        })
        .await
    }

    async fn list_objects(&self, prefix: &str) -> StoreResult<Vec<ObjectInfo>> {
        let mut objects = Vec::new();
        let mut token: Option<String> = None;
        let full_prefix = self.full(prefix);
        loop {
            let call = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(&full_prefix)
                .set_continuation_token(token.take())
                .send();
            let out = deadline("list", prefix, CALL_TIMEOUT, async {
                call.await.map_err(|e| sdk_error("list", prefix, e))
            })
            .await?;
            for object in out.contents() {
                if let Some(k) = object
                    .key()
                    .and_then(|k| k.strip_prefix(self.prefix.as_str()))
                {
                    objects.push(ObjectInfo {
                        key: k.to_string(),
                        size: object.size().map_or(0, |s| s.max(0) as u64),
                        modified: object.last_modified().map_or(0, |t| t.secs().max(0) as u64),
                    });
                }
            }
            match out.next_continuation_token() {
                Some(next) if out.is_truncated() == Some(true) => token = Some(next.to_string()),
                _ => break,
            }
        }
        Ok(objects)
    }

    async fn list_uploads(&self) -> StoreResult<Vec<PendingUpload>> {
        let mut uploads = Vec::new();
        let mut markers: (Option<String>, Option<String>) = (None, None);
        loop {
            let call = self
                .client
                .list_multipart_uploads()
                .bucket(&self.bucket)
                .prefix(&self.prefix)
                .set_key_marker(markers.0.take())
                .set_upload_id_marker(markers.1.take())
                .send();
            let out = deadline(
                "list multipart uploads",
                &self.prefix,
                CALL_TIMEOUT,
                async {
                    call.await
                        .map_err(|e| sdk_error("list multipart uploads", &self.prefix, e))
                },
            )
            .await?;
            for upload in out.uploads() {
                let key = upload
                    .key()
                    .and_then(|k| k.strip_prefix(self.prefix.as_str()));
                if let (Some(key), Some(id)) = (key, upload.upload_id()) {
                    uploads.push(PendingUpload {
                        key: Some(key.to_string()),
                        upload_id: id.to_string(),
                        started: upload.initiated().map_or(0, |t| t.secs().max(0) as u64),
                    });
                }
            }
            if out.is_truncated() != Some(true) {
                break;
            }
            markers = (
                out.next_key_marker().map(str::to_string),
                out.next_upload_id_marker().map(str::to_string),
            );
            if markers.0.is_none() {
                break;
            }
        }
        Ok(uploads)
    }

    async fn presign_get(&self, key: &str) -> StoreResult<Option<Redirect>> {
        if !self.redirect {
            return Ok(None);
        }
        let presigning =
            PresigningConfig::expires_in(PRESIGN_TTL).map_err(|e| unavailable("presign", e))?;
        let request = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.full(key))
            .presigned(presigning)
            .await
            .map_err(|e| sdk_error("presign", key, e))?;
        Ok(Some(Redirect {
            url: request.uri().to_string(),
        }))
    }

    async fn space(&self) -> StoreResult<Option<super::Space>> {
        Ok(None)
    }

    async fn ping(&self) -> StoreResult<()> {
        let call = self.client.head_bucket().bucket(&self.bucket).send();
        deadline("head bucket", &self.bucket, PING_TIMEOUT, async {
            call.await.map(|_| ()).map_err(|e| {
                unavailable(
                    &format!("head bucket {}", self.bucket),
                    DisplayErrorContext(&e),
                )
            })
        })
        .await
    }

    fn min_part_size(&self) -> u64 {
        self.min_part_size
    }

    fn describe(&self) -> String {
        format!("s3://{}/{} at {}", self.bucket, self.prefix, self.endpoint)
    }
}

#[cfg(test)]
mod tests {
    //! These need a real S3 (Garage from `scripts/test-services.sh`) at
    //! `VMREG_TEST_S3_ENDPOINT` and `VMREG_TEST_S3_BUCKET`, so they are `#[ignore]`d: a plain
    //! `cargo test` counts them as ignored, and `scripts/test.sh` runs them with
    //! `--include-ignored`, where a missing S3 fails.

    use super::*;
    use crate::store::contract::pattern;
    use crate::store::BlobStore;

    fn required(name: &str) -> String {
        std::env::var(name)
            .ok()
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| panic!("this test needs S3 at {name} (scripts/test.sh)"))
    }

    async fn store(redirect: bool) -> S3Store {
        let endpoint = required("VMREG_TEST_S3_ENDPOINT");
        let bucket = required("VMREG_TEST_S3_BUCKET");
        let config = S3Config {
            bucket,
            endpoint: Some(endpoint),
            prefix: format!("unit-{}/", uuid::Uuid::new_v4()),
            region: std::env::var("VMREG_TEST_S3_REGION").ok(),
            path_style: true,
            upload_concurrency: 4,
            read_concurrency: 4,
            read_cache: 8 << 20,
            read_memory: 64 << 20,
            redirect,
        };
        S3Store::connect(&config, 5 * 1024 * 1024)
            .await
            .expect("S3 test settings are set but the store does not connect")
    }

    async fn collect(stream: ByteStream) -> Vec<u8> {
        let mut out = Vec::new();
        let mut stream = stream;
        while let Some(chunk) = stream.next().await {
            out.extend_from_slice(&chunk.expect("chunk"));
        }
        out
    }

    #[tokio::test]
    #[ignore = "needs S3 at VMREG_TEST_S3_ENDPOINT (scripts/test.sh)"]
    async fn multipart_round_trip_with_ranges() {
        let s3 = store(false).await;
        s3.ping().await.unwrap();
        let a = pattern(5 * 1024 * 1024, 1);
        let b = pattern(1000, 2);
        let up = s3.begin_upload("blobs/x.ank/u1").await.unwrap();
        // Parts may finish out of order; completion orders them by number.
        let p2 = s3
            .write_part(&up, 2, a.len() as u64, b.clone())
            .await
            .unwrap();
        let p1 = s3.write_part(&up, 1, 0, a.clone()).await.unwrap();
        assert_eq!(p1.size, a.len() as u64);
        s3.complete_upload(&up, &[p1.clone(), p2.clone()])
            .await
            .unwrap();
        // A second completion (a replica retrying after a lost reply) succeeds too.
        s3.complete_upload(&up, &[p1, p2]).await.unwrap();

        let whole = collect(s3.get("blobs/x.ank/u1", None).await.unwrap()).await;
        assert_eq!(whole.len(), a.len() + b.len());
        assert_eq!(&whole[..a.len()], &a[..]);
        assert_eq!(&whole[a.len()..], &b[..]);
        let mid = collect(
            s3.get("blobs/x.ank/u1", Some((10, 5_242_890)))
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(&mid[..], &whole[10..5_242_890]);

        s3.put("manifests/m.json", Bytes::from_static(b"{}"))
            .await
            .unwrap();
        assert_eq!(&s3.read("manifests/m.json").await.unwrap()[..], b"{}");
        let mut listed = s3.list("").await.unwrap();
        listed.sort();
        assert_eq!(
            listed,
            vec!["blobs/x.ank/u1".to_string(), "manifests/m.json".to_string()],
            "keys come back without the prefix"
        );
        assert_eq!(
            s3.list("manifests/").await.unwrap(),
            vec!["manifests/m.json".to_string()]
        );

        s3.delete("blobs/x.ank/u1").await.unwrap();
        s3.delete("blobs/x.ank/u1").await.unwrap();
        assert!(matches!(
            s3.get("blobs/x.ank/u1", None).await,
            Err(StoreError::NotFound(_))
        ));
        assert!(matches!(
            s3.read("nope").await,
            Err(StoreError::NotFound(_))
        ));
        s3.delete("manifests/m.json").await.unwrap();
        assert!(
            s3.presign_get("anything").await.unwrap().is_none(),
            "no redirects unless configured"
        );
    }

    #[tokio::test]
    #[ignore = "needs S3 at VMREG_TEST_S3_ENDPOINT (scripts/test.sh)"]
    async fn keeps_the_blob_store_contract() {
        let s3 = store(false).await;
        crate::store::contract::objects_round_trip(&s3).await;
        crate::store::contract::multipart_uploads(&s3).await;
        crate::store::contract::parts_in_any_order(&s3).await;
    }

    #[tokio::test]
    #[ignore = "needs S3 at VMREG_TEST_S3_ENDPOINT (scripts/test.sh)"]
    async fn list_paginates_past_one_page() {
        let s3 = store(false).await;
        // ListObjectsV2 answers at most 1000 keys a page.
        let n = 1005;
        let puts = futures_util::stream::iter(0..n)
            .map(|i| {
                let s3 = &s3;
                async move {
                    s3.put(&format!("many/{i:05}"), Bytes::from_static(b"x"))
                        .await
                }
            })
            .buffer_unordered(32)
            .collect::<Vec<_>>()
            .await;
        assert!(puts.iter().all(|r| r.is_ok()));
        let listed = s3.list("many/").await.unwrap();
        assert_eq!(listed.len(), n);
        for k in listed {
            s3.delete(&k).await.unwrap();
        }
    }

    #[tokio::test]
    #[ignore = "needs S3 at VMREG_TEST_S3_ENDPOINT (scripts/test.sh)"]
    async fn aborted_and_empty_uploads() {
        let s3 = store(true).await;
        let up = s3.begin_upload("blobs/a/u").await.unwrap();
        s3.write_part(&up, 1, 0, pattern(100, 3)).await.unwrap();
        s3.abort_upload(&up).await.unwrap();
        s3.abort_upload(&up).await.unwrap();
        assert!(matches!(
            s3.read("blobs/a/u").await,
            Err(StoreError::NotFound(_))
        ));

        let empty = s3.begin_upload("blobs/e/u").await.unwrap();
        s3.complete_upload(&empty, &[]).await.unwrap();
        assert!(s3.read("blobs/e/u").await.unwrap().is_empty());

        let redirect = s3
            .presign_get("blobs/e/u")
            .await
            .unwrap()
            .expect("redirect configured");
        assert!(redirect.url.contains("X-Amz-Signature"), "{}", redirect.url);
        s3.delete("blobs/e/u").await.unwrap();
    }

    #[tokio::test]
    async fn an_unreachable_endpoint_is_unavailable_quickly() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let config = S3Config {
            bucket: "b".into(),
            endpoint: Some(format!("http://127.0.0.1:{port}")),
            prefix: String::new(),
            region: Some("garage".into()),
            path_style: true,
            upload_concurrency: 1,
            read_concurrency: 1,
            read_cache: 0,
            read_memory: 64 << 20,
            redirect: false,
        };
        let started = std::time::Instant::now();
        assert!(matches!(
            S3Store::connect(&config, 5 << 20).await,
            Err(StoreError::Unavailable(_))
        ));
        // A store whose S3 goes away after start-up answers the same way.
        let s3 = S3Store::build(&config, 5 << 20).await;
        assert!(matches!(s3.ping().await, Err(StoreError::Unavailable(_))));
        assert!(matches!(
            s3.read("k").await,
            Err(StoreError::Unavailable(_))
        ));
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "took {:?}",
            started.elapsed()
        );
    }
}
