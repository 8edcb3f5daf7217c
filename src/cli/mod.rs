//! `vmreg registry …`: the client commands, mirroring `anka registry` (same names, same
//! flags), plus the API operations the vendor's CLI lacks.

mod commands;
mod credentials;
pub mod healthcheck;
mod output;
pub mod progress;
pub mod remotes;

use std::path::PathBuf;

use clap::Subcommand;

use crate::client::Secret;

/// Options and command of `vmreg registry`.
#[derive(clap::Args, Debug)]
pub struct RegistryArgs {
    /// Options shared by every command.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// The vendor's global options, and ours.
#[derive(clap::Args, Debug, Clone)]
#[command(next_help_heading = "Global options")]
pub struct GlobalArgs {
    /// Set the registry name (instead of the current one)
    #[arg(short = 'r', long = "remote", global = true)]
    pub remote: Option<String>,
    /// Set the registry URL (instead of the current remote's)
    #[arg(short = 'a', long = "registry-path", global = true, value_name = "URL")]
    pub registry_path: Option<String>,
    /// Path to your node certificate (if certificate authentication is enabled)
    #[arg(
        short = 'c',
        long = "cert",
        visible_short_alias = 'i',
        visible_alias = "pem",
        global = true,
        value_name = "PATH"
    )]
    pub cert: Option<PathBuf>,
    /// Path to your node certificate key if the certificate file doesn't contain one
    #[arg(short = 'k', long = "key", global = true, value_name = "PATH")]
    pub key: Option<PathBuf>,
    /// Path to a CA root certificate
    #[arg(
        long = "cacert",
        visible_alias = "root-cert",
        global = true,
        value_name = "PATH"
    )]
    pub cacert: Option<PathBuf>,
    /// Skip TLS verification
    #[arg(long, global = true)]
    pub insecure: bool,
    /// The registry's root token (or VMREG_ROOT_TOKEN; prefer the variable: arguments show in `ps`)
    #[arg(
        long,
        global = true,
        value_name = "TOKEN",
        help_heading = "Credentials"
    )]
    pub root_token: Option<Secret>,
    /// An API key's id (or VMREG_API_KEY_ID); needs --api-key-file
    #[arg(long, global = true, value_name = "ID", help_heading = "Credentials")]
    pub api_key_id: Option<String>,
    /// The API key's private key: base64 PKCS#1 DER as POST /v1/apikey returns it, or PEM (or VMREG_API_KEY_FILE)
    #[arg(long, global = true, value_name = "PATH", help_heading = "Credentials")]
    pub api_key_file: Option<PathBuf>,
    /// The local VM library (vm_lib/, img_lib/, state_lib/) [default: ~/Library/Application Support/Veertu/Anka on macOS, ~/.local/share/vmreg/lib elsewhere]
    #[arg(long, env = "VMREG_LIB", global = true, value_name = "DIR")]
    pub lib: Option<PathBuf>,
    /// Machine-readable output (JSON on stdout)
    #[arg(long, global = true)]
    pub json: bool,
    /// Print nothing but results
    #[arg(short = 'q', long, global = true)]
    pub quiet: bool,
    /// Files and byte ranges transferred at once
    #[arg(long, default_value_t = 4, global = true, value_parser = clap::value_parser!(u16).range(1..=64), value_name = "N")]
    pub concurrency: u16,
    /// Cap transfers at this many bytes per second (K, M, G suffixes)
    #[arg(long, env = "VMREG_RATE_LIMIT", global = true, value_name = "RATE", value_parser = parse_rate)]
    pub limit_rate: Option<u64>,
}

fn parse_rate(text: &str) -> Result<u64, String> {
    crate::client::throttle::parse_rate(text)
        .ok_or_else(|| format!("invalid rate {text:?}: use e.g. 500K, 20M, 1G"))
}

/// The registry commands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Add a registry (it becomes the current one), with the credentials given by flags if any
    Add {
        /// A name for the registry
        name: String,
        /// Its URL, e.g. http://registry:8089
        url: String,
    },
    /// Set the current registry
    Set {
        /// A configured registry's name
        name: String,
    },
    /// Remove the registry from your configuration
    Delete {
        /// A configured registry's name
        name: String,
    },
    /// List registries you have configured
    ListRepos,
    /// List VM templates in the registry
    List,
    /// Show a VM template's description and tags
    Describe {
        /// Template name or id
        vm: String,
    },
    /// Return the size a pull of the template and tag would download, and its full size
    CheckDownloadSize {
        /// Tag (default: latest)
        #[arg(short = 't', long)]
        tag: Option<String>,
        /// Template name or id
        vm: String,
    },
    /// Push a VM template (and tag) to the registry
    Push {
        /// Description of the new tag
        #[arg(short = 'd', long)]
        description: Option<String>,
        /// The new tag (required, as at the vendor)
        #[arg(short = 't', long)]
        tag: Option<String>,
        /// Push the VM as the next tag of this existing registry template (name or id)
        #[arg(short = 'v', long = "existing", value_name = "EXISTING")]
        existing: Option<String>,
        /// Send each file of 64 MiB or more as this many ranges at once, over as many connections (1: one stream per file)
        #[arg(long, env = "VMREG_PUSH_RANGES", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64), value_name = "N")]
        ranges: u16,
        /// Local VM name or UUID
        vm: String,
    },
    /// Pull a VM template (latest tag by default) into the library
    Pull {
        /// Tag to pull (default: latest)
        #[arg(short = 't', long)]
        tag: Option<String>,
        /// Then delete the library's files that belong only to other tags of the template
        #[arg(short = 's', long)]
        shrink: bool,
        /// Template name or id
        vm: String,
    },
    /// Delete a template and all its tags from the registry (asks first; --yes to skip)
    DeleteTemplate {
        /// Do not ask: delete (needed where there is no terminal to ask on)
        #[arg(short = 'y', long)]
        yes: bool,
        /// Template name or id
        vm: String,
    },
    /// Delete the template's tags after the given one (the latest tag when none is given; asks first, --yes to skip)
    Revert {
        /// Do not ask: delete the tags (needed where there is no terminal to ask on)
        #[arg(short = 'y', long)]
        yes: bool,
        /// Keep up to this tag
        #[arg(short = 't', long, conflicts_with = "number")]
        tag: Option<String>,
        /// Keep up to this version number (0-based)
        #[arg(short = 'n', long)]
        number: Option<u32>,
        /// Template name or id
        vm: String,
    },
    /// Show the VM configuration of a template's tag (latest by default)
    Info {
        /// Tag (default: latest)
        #[arg(short = 't', long)]
        tag: Option<String>,
        /// Template name or id
        vm: String,
    },
    /// Make a sample VM in the library, of random bytes, to try push and pull without a Mac
    SampleVm {
        /// Its size in all (K/M/G/KiB/MiB/GiB suffixes)
        #[arg(long, default_value = "1GiB", value_parser = crate::config::parse_size, value_name = "SIZE")]
        size: u64,
        /// How many image layers (the first is its hard drive, the others its parents)
        #[arg(long, default_value_t = 2, value_name = "N")]
        layers: u32,
        /// A name for the VM
        name: String,
    },
    /// Set a template's architecture
    SetArch {
        /// Template name or id
        vm: String,
        /// arm64 or amd64
        arch: String,
    },
}

/// Runs a registry command; returns the process exit code.
pub fn run(args: RegistryArgs) -> i32 {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vmreg registry: cannot start the runtime: {e}");
            return crate::client::error::EXIT_FAILURE;
        }
    };
    match runtime.block_on(commands::dispatch(args)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("vmreg registry: {e}");
            e.exit_code()
        }
    }
}
