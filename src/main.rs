//! The `vmreg` binary: the registry server, its client and admin tools in one.

use clap::{Parser, Subcommand};
use vmreg::cli::RegistryArgs;
use vmreg::config::{Config, ServeArgs};

/// A registry for macOS VM templates that speaks the Anka Registry API.
#[derive(Parser)]
#[command(name = "vmreg", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the registry server.
    Serve(ServeArgs),
    /// Push, pull and manage templates in a registry (the `anka registry` commands).
    Registry(RegistryArgs),
    /// Exit 0 when a server answers 200 on its readiness probe (for container health checks).
    Healthcheck {
        /// The URL to probe [default: http://127.0.0.1:<port of VMREG_LISTEN or 8089>/readyz]
        url: Option<String>,
    },
    /// Maintain a registry's stores.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Rebuild the metadata index from the blob store: templates from their manifests, API
    /// keys and permission groups (and, sealed, the session signing key) from `identities/`.
    Reindex(ReindexArgs),
    /// Check, without changing anything, that the index and the stores agree; exit code 1
    /// when problems are found, 2 when the check could not run.
    Fsck(FsckArgs),
    /// Remove objects, uploads, upload sessions and commit records nothing holds any more.
    Gc(GcArgs),
    /// Remove the tags a retention policy no longer keeps (the given one, else the
    /// configured ones); never a template's latest tag unless --include-latest.
    Retention(RetentionArgs),
}

/// The flags of the admin commands that remove things: the stores, the report's form, and
/// whether to remove at all.
#[derive(clap::Args)]
struct RemovalArgs {
    #[command(flatten)]
    stores: ServeArgs,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// List what would be removed; remove nothing.
    #[arg(long)]
    dry_run: bool,
}

#[derive(clap::Args)]
struct RetentionArgs {
    #[command(flatten)]
    removal: RemovalArgs,
    /// Keep each template's newest this many tags.
    #[arg(long)]
    keep_last: Option<u32>,
    /// Keep the tags pulled or pushed within this long (e.g. 30d, 12h).
    #[arg(long, value_parser = vmreg::config::parse_duration)]
    unused_for: Option<std::time::Duration>,
    /// Only this template (name or id).
    #[arg(long)]
    template: Option<String>,
    /// The latest tag may be removed too.
    #[arg(long)]
    include_latest: bool,
}

impl RetentionArgs {
    /// The run these flags ask for: their policy when they give one, else the configured.
    fn run(&self) -> vmreg::registry::retention::RetentionRun {
        let policy = vmreg::registry::retention::RetentionPolicy {
            keep_last: self.keep_last,
            unused_for: self.unused_for,
            include_latest: self.include_latest,
        };
        vmreg::registry::retention::RetentionRun {
            policy: (!policy.is_empty()).then_some(policy),
            template: self.template.clone(),
            dry_run: self.removal.dry_run,
        }
    }
}

#[derive(clap::Args)]
struct GcArgs {
    #[command(flatten)]
    removal: RemovalArgs,
    /// Keep objects and uploads younger than this, whatever holds them [default: 1h]
    #[arg(long, value_parser = vmreg::config::parse_duration)]
    grace: Option<std::time::Duration>,
}

#[derive(clap::Args)]
struct ReindexArgs {
    #[command(flatten)]
    stores: ServeArgs,
    /// Rebuild over an index that lists templates (stop every replica first).
    #[arg(long)]
    force: bool,
}

#[derive(clap::Args)]
struct FsckArgs {
    #[command(flatten)]
    stores: ServeArgs,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Also read every stored file and check its SHA-256 (reads everything).
    #[arg(long)]
    digests: bool,
}

fn main() {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Serve(args) => with_config(args, vmreg::api::server::run),
        Command::Registry(args) => vmreg::cli::run(args),
        Command::Healthcheck { url } => vmreg::cli::healthcheck::run(url),
        Command::Admin {
            command: AdminCommand::Reindex(args),
        } => with_store(args.stores, "reindex", false, |config| {
            vmreg::registry::reindex::run_cli(config, args.force)
        }),
        Command::Admin {
            command: AdminCommand::Fsck(args),
        } => with_store(args.stores, "fsck", true, |config| {
            vmreg::registry::admin::fsck(config, args.json, args.digests)
        }),
        Command::Admin {
            command: AdminCommand::Gc(args),
        } => with_store(args.removal.stores, "gc", true, |config| {
            let grace = args
                .grace
                .unwrap_or(vmreg::registry::admin::DEFAULT_GC_GRACE);
            vmreg::registry::admin::gc(config, args.removal.json, args.removal.dry_run, grace)
        }),
        Command::Admin {
            command: AdminCommand::Retention(args),
        } => {
            let run = args.run();
            let json = args.removal.json;
            with_store(args.removal.stores, "retention", true, |config| {
                vmreg::registry::admin::retention(config, json, run)
            })
        }
    };
    std::process::exit(code);
}

/// Resolves the server configuration and hands it to `f`; a bad configuration is one line
/// on stderr and exit code 2.
fn with_config(args: ServeArgs, f: impl FnOnce(Config) -> i32) -> i32 {
    match Config::resolve(args, |name| std::env::var(name).ok()) {
        Ok(config) => f(config),
        Err(e) => {
            eprintln!("vmreg: {e}");
            2
        }
    }
}

/// As [`with_config`], for the admin command `name`: the stores it names must exist (see
/// [`vmreg::registry::admin::existing_store`]); `index`: it reads the metadata index.
fn with_store(args: ServeArgs, name: &str, index: bool, f: impl FnOnce(Config) -> i32) -> i32 {
    with_config(
        args,
        |config| match vmreg::registry::admin::existing_store(&config, index) {
            Ok(()) => f(config),
            Err(e) => {
                eprintln!("vmreg admin {name}: {e}");
                vmreg::registry::admin::EXIT_FAILED
            }
        },
    )
}
