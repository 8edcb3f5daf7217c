//! The stores a namespace's servers use, opened by the test process itself, to look at or
//! damage what the server keeps.

use std::sync::Arc;

use clap::Parser;
use vmreg::meta::MetaStore;
use vmreg::store::BlobStore;

use super::Namespace;

#[derive(Parser)]
struct StoreFlags {
    #[command(flatten)]
    args: vmreg::config::ServeArgs,
}

/// The namespace's metadata and blob stores. On the embedded store the server must be
/// stopped first (the database allows one process).
pub async fn stores(ns: &Namespace) -> (Arc<dyn MetaStore>, Arc<dyn BlobStore>) {
    let flags = StoreFlags::parse_from(std::iter::once("vmreg".to_string()).chain(ns.store_args()));
    let config = vmreg::config::Config::resolve(flags.args, |n| std::env::var(n).ok()).unwrap();
    vmreg::registry::backends::open(&config).await.unwrap()
}
