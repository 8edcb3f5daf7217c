//! The `vmreg admin` commands that check and clean the stores: each opens the same stores
//! as `vmreg serve` from the same configuration, runs once and answers with an exit code.

use crate::config::Config;

use super::fsck::FsckOptions;
use super::{backends, Registry};

/// Exit code when a command found problems (fsck) but ran to the end.
pub const EXIT_PROBLEMS: i32 = 1;
/// Exit code when a command could not run (a store unreachable, a failed call).
pub const EXIT_FAILED: i32 = 2;

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
                eprintln!("vmreg admin {command}: {}", one_line(&e));
                return EXIT_FAILED;
            }
        };
        let registry = Registry::new(meta, blobs, config.part_size, 1);
        match op(registry).await {
            Ok(code) => code,
            Err(e) => {
                eprintln!("vmreg admin {command}: {}", one_line(&e));
                EXIT_FAILED
            }
        }
    })
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
        if json {
            println!(
                "{}",
                serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?
            );
        } else {
            println!("{report}");
        }
        Ok(if report.clean { 0 } else { EXIT_PROBLEMS })
    })
}
