//! The `vmreg admin` commands that check and clean the stores: each opens the same stores
//! as `vmreg serve` from the same configuration, runs once and answers with an exit code.

use crate::config::Config;

use std::time::Duration;

use super::fsck::FsckOptions;
use super::sweep::GcOptions;
use super::{backends, Registry};

/// Exit code when a command found problems (fsck) but ran to the end.
pub const EXIT_PROBLEMS: i32 = 1;
/// Exit code when a command could not run (a store unreachable, a failed call).
pub const EXIT_FAILED: i32 = 2;

/// Refuses a configuration whose local stores hold no vmreg store, so that a mistyped
/// `--data-dir` is an error rather than an empty store created there and reported clean.
/// `index`: the command reads the metadata index (all but `reindex`, which rebuilds it).
/// A store in Redis or S3 is checked by connecting to it.
pub fn existing_store(config: &Config, index: bool) -> Result<(), String> {
    let dir = &config.data_dir;
    let missing = |what: &str| {
        format!(
            "no vmreg store at {}: {what} does not exist (give the server's --data-dir or \
             VMREG_DATA_DIR; an admin command never creates a store)",
            dir.display()
        )
    };
    if index && config.redis.is_none() && !dir.join("meta.redb").is_file() {
        return Err(missing("meta.redb"));
    }
    if config.s3.is_none() && !dir.join("objects").is_dir() {
        return Err(missing("objects/"));
    }
    Ok(())
}

/// What to do when the embedded store is held by a running server.
const IN_USE_HINT: &str = "stop the server first, or let it do the work: it collects \
     garbage itself every --gc-interval and applies retention by POST /admin/api/v1/retention";

/// One line for a store that would not open, with the next step when a server holds it.
pub(crate) fn open_failure(e: &str) -> String {
    match e.contains("is in use by another process") {
        true => format!("{}; {IN_USE_HINT}", one_line(e)),
        false => one_line(e),
    }
}

/// Opens the stores of `config` and runs `op` on them; errors are one line on stderr.
fn with_registry(
    command: &str,
    config: Config,
    op: impl AsyncFnOnce(Registry) -> Result<i32, String>,
) -> i32 {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vmreg admin {command}: cannot start the runtime: {e}");
            return EXIT_FAILED;
        }
    };
    runtime.block_on(async {
        let (meta, blobs) = match backends::open(&config).await {
            Ok(stores) => stores,
            Err(e) => {
                eprintln!("vmreg admin {command}: {}", open_failure(&e));
                return EXIT_FAILED;
            }
        };
        let registry = Registry::new(meta, blobs, config.part_size, 1)
            .with_retention(config.retention.clone());
        match op(registry).await {
            Ok(code) => code,
            Err(e) => {
                eprintln!("vmreg admin {command}: {}", one_line(&e));
                EXIT_FAILED
            }
        }
    })
}

/// Prints a report as text, or as pretty JSON.
fn print_report<R: serde::Serialize + std::fmt::Display>(
    report: &R,
    json: bool,
) -> Result<(), String> {
    match json {
        true => println!(
            "{}",
            serde_json::to_string_pretty(report).map_err(|e| e.to_string())?
        ),
        false => println!("{report}"),
    }
    Ok(())
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `vmreg admin fsck`: prints the problems found (or the report as JSON); exit code 0 when
/// clean, [`EXIT_PROBLEMS`] when not.
pub fn fsck(config: Config, json: bool, digests: bool) -> i32 {
    let options = FsckOptions {
        digests,
        session_ttl: super::UPLOAD_SESSION_TTL.as_secs(),
    };
    with_registry("fsck", config, async |registry| {
        let report = registry.fsck(options).await.map_err(|e| e.to_string())?;
        print_report(&report, json)?;
        Ok(if report.clean { 0 } else { EXIT_PROBLEMS })
    })
}

/// Objects and uploads younger than this are never collected unless told otherwise: a push
/// may take long between writing a file and committing it.
pub const DEFAULT_GC_GRACE: Duration = Duration::from_secs(3600);

/// `vmreg admin gc`: removes (or with `dry_run` lists) what nothing holds; prints what.
pub fn gc(config: Config, json: bool, dry_run: bool, grace: Duration) -> i32 {
    let options = GcOptions::of(&config, grace, dry_run);
    with_registry("gc", config, async |registry| {
        let report = registry.collect(options).await.map_err(|e| e.to_string())?;
        print_report(&report, json)?;
        Ok(0)
    })
}

/// `vmreg admin retention`: applies `policy` (or, when `None`, the configured policies) to
/// one template or all; with `dry_run` only lists what would go. Prints the tags.
pub fn retention(config: Config, json: bool, run: super::retention::RetentionRun) -> i32 {
    if run.policy.is_none() && config.retention.is_empty() {
        eprintln!("vmreg admin retention: no policy: give --keep-last or --unused-for, or configure one (--retention-keep-last, --retention-unused-for, retention_templates)");
        return EXIT_FAILED;
    }
    with_registry("retention", config, async |registry| {
        let report = registry.retain(run).await.map_err(|e| e.to_string())?;
        print_report(&report, json)?;
        Ok(0)
    })
}
