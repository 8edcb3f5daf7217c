//! The OCI Distribution API under `/v2/`: one file per resource, over the service in
//! [`crate::registry::oci`]. Repository names may have several segments, so each route
//! takes the name with a pattern that spans slashes.

mod auth;
mod base;
mod blobs;
mod errors;
mod listing;
mod manifests;
mod referrers;
mod uploads;

use std::collections::HashMap;

use actix_web::web;

pub use auth::refusal;
pub use errors::OciApiError;

/// The routes of the OCI Distribution API.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/v2/").get(base::check).head(base::check))
        .service(web::resource("/v2").get(base::check).head(base::check))
        .service(
            web::resource(auth::TOKEN_PATH)
                .get(auth::token)
                .default_service(web::to(errors::unsupported)),
        )
        .service(
            web::resource("/v2/_catalog")
                .get(listing::catalog)
                .default_service(web::to(errors::unsupported)),
        )
        .service(
            web::resource("/v2/{name:.+}/blobs/uploads/")
                .post(uploads::start)
                .default_service(web::to(errors::unsupported)),
        )
        .service(
            web::resource("/v2/{name:.+}/blobs/uploads/{id}")
                .get(uploads::status)
                .patch(uploads::append)
                .put(uploads::finish)
                .delete(uploads::cancel)
                .default_service(web::to(errors::unsupported)),
        )
        .service(
            web::resource("/v2/{name:.+}/blobs/{digest}")
                .get(blobs::get)
                .head(blobs::get)
                .delete(blobs::delete)
                .default_service(web::to(errors::unsupported)),
        )
        .service(
            web::resource("/v2/{name:.+}/manifests/{reference}")
                .get(manifests::get)
                .head(manifests::get)
                .put(manifests::put)
                .delete(manifests::delete)
                .default_service(web::to(errors::unsupported)),
        )
        .service(
            web::resource("/v2/{name:.+}/tags/list")
                .get(listing::tags)
                .default_service(web::to(errors::unsupported)),
        )
        .service(
            web::resource("/v2/{name:.+}/referrers/{digest}")
                .get(referrers::list)
                .default_service(web::to(errors::unsupported)),
        );
}

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
