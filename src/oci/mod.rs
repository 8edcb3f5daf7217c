//! The OCI Distribution API under `/v2/`: one file per resource, over the service in
//! [`crate::registry::oci`]. Repository names may have several segments, so each route
//! takes the name with a pattern that spans slashes; the routes are in
//! [`crate::api::routes`].

pub(crate) mod auth;
pub(crate) mod base;
pub(crate) mod blobs;
pub(crate) mod errors;
pub(crate) mod listing;
pub(crate) mod manifests;
pub(crate) mod referrers;
pub(crate) mod uploads;

use std::collections::HashMap;

pub use auth::refusal;
pub use errors::OciApiError;

/// Query parameters, percent-decoded; a malformed one is left out.
fn query(req: &actix_web::HttpRequest) -> HashMap<String, String> {
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8()
            .ok()
            .map(|c| c.into_owned())
    };
    req.query_string()
        .split('&')
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            Some((decode(k)?, decode(v)?))
        })
        .collect()
}
