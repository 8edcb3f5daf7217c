//! Push and pull one large file through `vmreg serve` on S3 + Redis, and the same bytes
//! directly to and from the bucket with the same part size and concurrency; prints the
//! throughput ratio vmreg/direct for each direction and the server's peak RSS.
//!
//! ```text
//! cargo build --release --bin vmreg --example bench_s3
//! scripts/test-services.sh target/release/examples/bench_s3
//! ```
//!
//! Settings (environment): `BENCH_SIZE` (bytes, default 1 GiB), `BENCH_RUNS` (default 3),
//! `BENCH_PART_SIZE` (default 8 MiB), `BENCH_CONCURRENCY` (default 4), `VMREG_BIN` (default:
//! the `vmreg` beside this example's directory). The services come from the variables
//! `scripts/test-services.sh` exports.

use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_s3::config::{Region, RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use sha2::Digest;

const CHUNK: usize = 1 << 20;
const MIB: f64 = 1024.0 * 1024.0;

type Error = Box<dyn std::error::Error + Send + Sync>;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn need(name: &str) -> Result<String, Error> {
    std::env::var(name)
        .map_err(|_| format!("{name} is not set; run through scripts/test-services.sh").into())
}

/// Deterministic content made of 1 MiB windows of a random block: producing a chunk is a
/// slice of shared memory, so the client costs nothing next to what is measured.
struct Content {
    block: Bytes,
    seed: u64,
}

impl Content {
    fn new(seed: u64) -> Self {
        let mut block = Vec::with_capacity(2 * CHUNK);
        let mut x: u64 = 0x2545_F491_4F6C_DD1D ^ seed;
        while block.len() < CHUNK {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            block.extend_from_slice(&x.to_le_bytes());
        }
        block.extend_from_within(..);
        Self {
            block: block.into(),
            seed,
        }
    }

    fn chunk(&self, i: u64) -> Bytes {
        let start = ((i ^ self.seed).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) as usize % CHUNK;
        self.block.slice(start..start + CHUNK)
    }

    fn sha256(&self, chunks: u64) -> String {
        let mut h = sha2::Sha256::new();
        for i in 0..chunks {
            h.update(self.chunk(i));
        }
        hex::encode(h.finalize())
    }
}

struct Server {
    child: Child,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start(bin: &str, prefix: &str, part_size: u64, concurrency: u64) -> Result<Server, Error> {
        let dir = std::env::temp_dir().join(format!("vmreg-bench-{prefix}"));
        let mut child = Command::new(bin)
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&dir)
            .args([
                "--redis-url",
                &need("VMREG_TEST_REDIS_URL")?,
                "--redis-prefix",
                &format!("{prefix}:"),
            ])
            .args([
                "--s3-bucket",
                &need("VMREG_TEST_S3_BUCKET")?,
                "--s3-endpoint",
                &need("VMREG_TEST_S3_ENDPOINT")?,
            ])
            .args([
                "--s3-region",
                &std::env::var("VMREG_TEST_S3_REGION").unwrap_or_else(|_| "garage".into()),
            ])
            .args(["--s3-path-style", "--s3-prefix", prefix])
            .args([
                "--part-size",
                &part_size.to_string(),
                "--s3-upload-concurrency",
                &concurrency.to_string(),
            ])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut lines = std::io::BufReader::new(stdout).lines();
        let url = lines.by_ref().map_while(Result::ok).find_map(|l| {
            l.split("listening on ")
                .nth(1)
                .map(|u| u.trim().to_string())
        });
        std::thread::spawn(move || for _ in lines {});
        match url {
            Some(url) => Ok(Server { child, url }),
            None => {
                let _ = child.kill();
                Err("vmreg serve did not start".into())
            }
        }
    }

    fn peak_rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }
}

fn envelope_body(v: serde_json::Value) -> Result<serde_json::Value, Error> {
    if v["status"] != "OK" {
        return Err(format!("vmreg answered {v}").into());
    }
    Ok(v["body"].clone())
}

/// Pushes `chunks` MiB through vmreg; returns the seconds taken and the file's key.
async fn vmreg_push(
    http: &reqwest::Client,
    base: &str,
    content: &Content,
    chunks: u64,
    digest: &str,
) -> Result<(f64, String), Error> {
    let id = uuid::Uuid::new_v4().to_string();
    let name = format!("bench-{}", &id[..8]);
    let file = format!("{}.ank", uuid::Uuid::new_v4().simple());
    let request = serde_json::json!({
        "id": id, "name": name, "tag": "bench", "config": {"name": name},
        "files": [{"name": file, "kind": "image", "size": chunks * CHUNK as u64, "sha256": digest}],
    });
    let started = Instant::now();
    let plan = envelope_body(
        http.post(format!("{base}/api/v1/push"))
            .json(&request)
            .send()
            .await?
            .json()
            .await?,
    )?;
    let session = plan["session"].as_str().ok_or("no session")?.to_string();
    let key = plan["files"][0]["key"]
        .as_str()
        .ok_or("no key")?
        .to_string();
    let block = content.block.clone();
    let seed = content.seed;
    let body = futures_util::stream::iter(0..chunks).map(move |i| {
        let c = Content {
            block: block.clone(),
            seed,
        };
        Ok::<Bytes, std::io::Error>(c.chunk(i))
    });
    let url = format!(
        "{base}/api/v1/push/{session}/files/{}?offset=0",
        percent_encoding::utf8_percent_encode(&key, percent_encoding::NON_ALPHANUMERIC)
    );
    let progress = envelope_body(
        http.put(url)
            .body(reqwest::Body::wrap_stream(body))
            .send()
            .await?
            .json()
            .await?,
    )?;
    if progress["complete"] != true {
        return Err(format!("upload incomplete: {progress}").into());
    }
    envelope_body(
        http.post(format!("{base}/api/v1/push/{session}/commit"))
            .send()
            .await?
            .json()
            .await?,
    )?;
    Ok((started.elapsed().as_secs_f64(), key))
}

async fn vmreg_pull(
    http: &reqwest::Client,
    base: &str,
    key: &str,
    size: u64,
) -> Result<f64, Error> {
    let started = Instant::now();
    let url = format!(
        "{base}/api/v1/files/{}",
        percent_encoding::utf8_percent_encode(key, percent_encoding::NON_ALPHANUMERIC)
    );
    let resp = http.get(url).send().await?;
    if !resp.status().is_success() {
        return Err(format!("download answered {}", resp.status()).into());
    }
    let mut got = 0u64;
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        got += chunk?.len() as u64;
    }
    if got != size {
        return Err(format!("downloaded {got} of {size} bytes").into());
    }
    Ok(started.elapsed().as_secs_f64())
}

async fn s3_client() -> Result<aws_sdk_s3::Client, Error> {
    let region = std::env::var("VMREG_TEST_S3_REGION").unwrap_or_else(|_| "garage".into());
    let shared = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(Region::new(region))
        .load()
        .await;
    let conf = aws_sdk_s3::config::Builder::from(&shared)
        .endpoint_url(need("VMREG_TEST_S3_ENDPOINT")?)
        .force_path_style(true)
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
        .build();
    Ok(aws_sdk_s3::Client::from_conf(conf))
}

/// A plain multipart upload of the same bytes, `part_size` parts, `concurrency` in flight.
async fn direct_push(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    content: &Content,
    chunks: u64,
    part_size: u64,
    concurrency: usize,
) -> Result<f64, Error> {
    let started = Instant::now();
    let created = s3
        .create_multipart_upload()
        .bucket(bucket)
        .key(key)
        .send()
        .await?;
    let upload_id = created.upload_id().ok_or("no upload id")?.to_string();
    let per_part = (part_size / CHUNK as u64).max(1);
    let parts = chunks.div_ceil(per_part);
    let results = futures_util::stream::iter(0..parts)
        .map(|p| {
            // Assembling a part copies it once, as the server does from its request body.
            let mut buf = BytesMut::with_capacity((per_part as usize) * CHUNK);
            for i in p * per_part..((p + 1) * per_part).min(chunks) {
                buf.extend_from_slice(&content.chunk(i));
            }
            let (s3, upload_id) = (s3.clone(), upload_id.clone());
            async move {
                let out = s3
                    .upload_part()
                    .bucket(bucket)
                    .key(key)
                    .upload_id(upload_id)
                    .part_number((p + 1) as i32)
                    .body(ByteStream::from(buf.freeze()))
                    .customize()
                    .disable_payload_signing()
                    .send()
                    .await?;
                Ok::<_, Error>(
                    CompletedPart::builder()
                        .part_number((p + 1) as i32)
                        .set_e_tag(out.e_tag().map(str::to_string))
                        .build(),
                )
            }
        })
        .buffered(concurrency)
        .collect::<Vec<_>>()
        .await;
    let completed = results.into_iter().collect::<Result<Vec<_>, _>>()?;
    s3.complete_multipart_upload()
        .bucket(bucket)
        .key(key)
        .upload_id(upload_id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(completed))
                .build(),
        )
        .send()
        .await?;
    Ok(started.elapsed().as_secs_f64())
}

async fn direct_pull(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    size: u64,
) -> Result<f64, Error> {
    let started = Instant::now();
    let mut body = s3.get_object().bucket(bucket).key(key).send().await?.body;
    let mut got = 0u64;
    while let Some(chunk) = body.next().await {
        got += chunk?.len() as u64;
    }
    if got != size {
        return Err(format!("downloaded {got} of {size} bytes").into());
    }
    Ok(started.elapsed().as_secs_f64())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let size = env_u64("BENCH_SIZE", 1 << 30);
    let runs = env_u64("BENCH_RUNS", 3).max(1);
    let part_size = env_u64("BENCH_PART_SIZE", 8 << 20);
    let concurrency = env_u64("BENCH_CONCURRENCY", 4).max(1);
    let chunks = size.div_ceil(CHUNK as u64);
    let size = chunks * CHUNK as u64;
    let bin = match std::env::var("VMREG_BIN") {
        Ok(b) => b,
        Err(_) => {
            let exe = std::env::current_exe()?;
            let dir = exe
                .parent()
                .and_then(|d| d.parent())
                .ok_or("no target directory")?;
            dir.join("vmreg").display().to_string()
        }
    };
    let bucket = need("VMREG_TEST_S3_BUCKET")?;
    let prefix = format!("bench{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let server = Server::start(&bin, &prefix, part_size, concurrency)?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(3600))
        .build()?;
    let s3 = s3_client().await?;
    println!(
        "bench: {} MiB, {runs} runs, part size {} MiB, {concurrency} parts in flight, server {bin}",
        size / (1 << 20),
        part_size / (1 << 20)
    );

    let (mut vp, mut vg, mut dp, mut dg) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for run in 0..runs {
        let content = Content::new(run + 1);
        let digest = content.sha256(chunks);
        let direct_key = format!("{prefix}-direct/{run}");
        // Alternate the order so neither side always meets a warmer cache.
        let (t_dp, (t_vp, key)) = if run % 2 == 0 {
            let d = direct_push(
                &s3,
                &bucket,
                &direct_key,
                &content,
                chunks,
                part_size,
                concurrency as usize,
            )
            .await?;
            (
                d,
                vmreg_push(&http, &server.url, &content, chunks, &digest).await?,
            )
        } else {
            let v = vmreg_push(&http, &server.url, &content, chunks, &digest).await?;
            (
                direct_push(
                    &s3,
                    &bucket,
                    &direct_key,
                    &content,
                    chunks,
                    part_size,
                    concurrency as usize,
                )
                .await?,
                v,
            )
        };
        let rss_after_push = server.peak_rss_kib().unwrap_or(0);
        let (t_dg, t_vg) = if run % 2 == 0 {
            (
                direct_pull(&s3, &bucket, &direct_key, size).await?,
                vmreg_pull(&http, &server.url, &key, size).await?,
            )
        } else {
            let v = vmreg_pull(&http, &server.url, &key, size).await?;
            (direct_pull(&s3, &bucket, &direct_key, size).await?, v)
        };
        let mibs = size as f64 / MIB;
        println!(
            "run {}: push vmreg {:.0} MiB/s, direct {:.0} MiB/s | pull vmreg {:.0} MiB/s, direct {:.0} MiB/s | server peak RSS after push {:.1} MiB, after pull {}",
            run + 1,
            mibs / t_vp,
            mibs / t_dp,
            mibs / t_vg,
            mibs / t_dg,
            rss_after_push as f64 / 1024.0,
            server.peak_rss_kib().map(|k| format!("{:.1} MiB", k as f64 / 1024.0)).unwrap_or_default()
        );
        vp.push(mibs / t_vp);
        dp.push(mibs / t_dp);
        vg.push(mibs / t_vg);
        dg.push(mibs / t_dg);
        let _ = s3
            .delete_object()
            .bucket(&bucket)
            .key(&direct_key)
            .send()
            .await;
    }
    let (vp, dp, vg, dg) = (median(vp), median(dp), median(vg), median(dg));
    let rss = server
        .peak_rss_kib()
        .map(|k| format!("{:.1} MiB", k as f64 / 1024.0))
        .unwrap_or_else(|| "unknown".into());
    println!(
        "median push: vmreg {vp:.0} MiB/s, direct {dp:.0} MiB/s, ratio {:.2}",
        vp / dp
    );
    println!(
        "median pull: vmreg {vg:.0} MiB/s, direct {dg:.0} MiB/s, ratio {:.2}",
        vg / dg
    );
    println!("server peak RSS (VmHWM): {rss}");
    Ok(())
}
