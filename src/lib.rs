//! vmreg: a registry for macOS VM templates that speaks the Anka Registry API.
//!
//! One crate is both the server (`vmreg serve`) and the client (`vmreg registry …`).
//! Layers: `api` (HTTP) → `registry` (service logic) → `meta` (metadata) + `store` (bytes).

pub mod api;
pub mod auth;
pub mod cli;
pub mod client;
pub mod config;
pub mod digest;
pub mod meta;
pub mod model;
pub mod oci;
pub mod protocol;
pub mod registry;
pub mod store;
pub mod telemetry;
pub mod units;
pub mod vendor_env;
