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
    /// Rebuild the metadata index from the manifests in the blob store.
    Reindex(ServeArgs),
}

fn main() {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Serve(args) => with_config(args, vmreg::api::server::run),
        Command::Registry(args) => vmreg::cli::run(args),
        Command::Healthcheck { url } => vmreg::cli::healthcheck::run(url),
        Command::Admin {
            command: AdminCommand::Reindex(args),
        } => with_config(args, vmreg::registry::reindex::run_cli),
    };
    std::process::exit(code);
}

/// Resolves the server configuration and hands it to `f`; a bad configuration is one line
/// on stderr and exit code 2.
fn with_config(args: ServeArgs, f: fn(Config) -> i32) -> i32 {
    match Config::resolve(args, |name| std::env::var(name).ok()) {
        Ok(config) => f(config),
        Err(e) => {
            eprintln!("vmreg: {e}");
            2
        }
    }
}
