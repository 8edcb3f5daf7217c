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
//! `BENCH_PART_SIZE` (default 8 MiB), `BENCH_CONCURRENCY` (default 4), `BENCH_PAUSE` (seconds
//! between transfers, default 5), `VMREG_BIN` (default:
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

    /// User plus system CPU time the server used so far.
    fn cpu_seconds(&self) -> f64 {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())) else {
            return 0.0;
        };
        // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
        let fields: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        let ticks: u64 = fields
            .get(11..13)
            .map(|f| f.iter().filter_map(|v| v.parse::<u64>().ok()).sum())
            .unwrap_or(0);
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        ticks as f64 / hz
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

/// Throughputs of one run, MiB/s.
struct Run {
    vp: f64,
    dp: f64,
    vg: f64,
    dg: f64,
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
    // Garage keeps working after a transfer (block references, deletions); without a pause
    // whichever side goes next pays for it.
    let pause = Duration::from_secs(env_u64("BENCH_PAUSE", 5));
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

    let mibs = size as f64 / MIB;
    let mut rows: Vec<Run> = Vec::new();
    for run in 0..runs {
        // Each run is direct, vmreg, vmreg, direct (push, then pull the same way): every
        // side goes first and last once, which cancels what one transfer leaves the next
        // (Garage's background work, cache state) and any drift of a shared machine.
        let content = Content::new(run + 1);
        let digest = content.sha256(chunks);
        let keys = [
            format!("{prefix}-direct/{run}a"),
            format!("{prefix}-direct/{run}b"),
        ];
        let mut pushed = Vec::new();
        let (mut t_dp, mut t_vp, mut t_dg, mut t_vg, mut cpu_push, mut cpu_pull) =
            (0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
        for step in 0..4 {
            tokio::time::sleep(pause).await;
            if step == 0 || step == 3 {
                let key = &keys[usize::from(step == 3)];
                t_dp += direct_push(
                    &s3,
                    &bucket,
                    key,
                    &content,
                    chunks,
                    part_size,
                    concurrency as usize,
                )
                .await?;
            } else {
                let cpu = server.cpu_seconds();
                let (t, key) = vmreg_push(&http, &server.url, &content, chunks, &digest).await?;
                cpu_push += server.cpu_seconds() - cpu;
                t_vp += t;
                pushed.push(key);
            }
        }
        for step in 0..4 {
            tokio::time::sleep(pause).await;
            if step == 0 || step == 3 {
                t_dg += direct_pull(&s3, &bucket, &keys[usize::from(step == 3)], size).await?;
            } else {
                let cpu = server.cpu_seconds();
                t_vg += vmreg_pull(&http, &server.url, &pushed[step - 1], size).await?;
                cpu_pull += server.cpu_seconds() - cpu;
            }
        }
        let row = Run {
            vp: 2.0 * mibs / t_vp,
            dp: 2.0 * mibs / t_dp,
            vg: 2.0 * mibs / t_vg,
            dg: 2.0 * mibs / t_dg,
        };
        println!(
            "run {}: push vmreg {:.0} MiB/s, direct {:.0} MiB/s (ratio {:.2}) | pull vmreg {:.0} MiB/s, direct {:.0} MiB/s (ratio {:.2}) | server CPU per GiB {:.1} s push, {:.1} s pull | peak RSS {}",
            run + 1,
            row.vp,
            row.dp,
            row.vp / row.dp,
            row.vg,
            row.dg,
            row.vg / row.dg,
            cpu_push / 2.0 / (size as f64 / (1u64 << 30) as f64),
            cpu_pull / 2.0 / (size as f64 / (1u64 << 30) as f64),
            server.peak_rss_kib().map(|k| format!("{:.1} MiB", k as f64 / 1024.0)).unwrap_or_default()
        );
        rows.push(row);
        for key in &keys {
            let _ = s3.delete_object().bucket(&bucket).key(key).send().await;
        }
    }
    let med = |f: fn(&Run) -> f64| median(rows.iter().map(f).collect());
    let (vp, dp, vg, dg) = (med(|r| r.vp), med(|r| r.dp), med(|r| r.vg), med(|r| r.dg));
    let rss = server
        .peak_rss_kib()
        .map(|k| format!("{:.1} MiB", k as f64 / 1024.0))
        .unwrap_or_else(|| "unknown".into());
    println!(
        "median push: vmreg {vp:.0} MiB/s, direct {dp:.0} MiB/s, ratio of medians {:.2}, median of run ratios {:.2}",
        vp / dp,
        med(|r| r.vp / r.dp)
    );
    println!(
        "median pull: vmreg {vg:.0} MiB/s, direct {dg:.0} MiB/s, ratio of medians {:.2}, median of run ratios {:.2}",
        vg / dg,
        med(|r| r.vg / r.dg)
    );
    println!("server peak RSS (VmHWM): {rss}");
    Ok(())
}
