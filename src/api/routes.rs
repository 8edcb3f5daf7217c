//! Every route of the server in one table: method, path template, what the caller needs,
//! which front door answers it, and its handler. The actix routes, the access check, the
//! route label of metrics and spans, and the test of `openapi.json`'s paths all come from
//! [`ENDPOINTS`], so a route cannot exist without its permission.
//!
//! Authorization is attached to each route the router matched, never decided from the raw
//! path: `/v1/%61pikey` reaches the key handler only through the key route's own check.

use std::collections::BTreeMap;

use actix_web::http::Method;
use actix_web::{web, HttpResponse, ResponseError};

use super::access::authorize;
use super::{groups, health, keys, metrics, retention, transfer, vendor, ApiError};
use crate::auth::{Access, Permission as P};
use crate::oci;

/// The HTTP methods routes are declared with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verb {
    /// `GET`
    Get,
    /// `HEAD`
    Head,
    /// `PUT`
    Put,
    /// `POST`
    Post,
    /// `PATCH`
    Patch,
    /// `DELETE`
    Delete,
}

impl Verb {
    /// The method the router matches.
    pub fn method(self) -> Method {
        match self {
            Verb::Get => Method::GET,
            Verb::Head => Method::HEAD,
            Verb::Put => Method::PUT,
            Verb::Post => Method::POST,
            Verb::Patch => Method::PATCH,
            Verb::Delete => Method::DELETE,
        }
    }

    /// The lower-case name OpenAPI keys operations by.
    pub fn openapi_name(self) -> &'static str {
        match self {
            Verb::Get => "get",
            Verb::Head => "head",
            Verb::Put => "put",
            Verb::Post => "post",
            Verb::Patch => "patch",
            Verb::Delete => "delete",
        }
    }
}

/// Which API a route belongs to: it decides the shape of refusals and of a 405.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Front {
    /// The vendor's API, vmreg's transfer protocol and administration: the `FAIL` envelope.
    Vendor,
    /// The OCI Distribution API: the spec's error body and a Bearer challenge.
    Oci,
}

/// One route.
pub struct Endpoint {
    /// A stable name for the operation.
    pub id: &'static str,
    /// Its method.
    pub verb: Verb,
    /// Its path template, as the router matches it (`{name:.+}` spans slashes).
    pub path: &'static str,
    /// What the caller needs.
    pub access: Access,
    /// The API it belongs to.
    pub front: Front,
    /// Whether `openapi.json` describes it (aliases such as `/v2` are not).
    pub documented: bool,
    /// Attaches the handler to a route of this method.
    handler: fn(actix_web::Route) -> actix_web::Route,
}

impl Endpoint {
    /// The path as OpenAPI writes it: `{name:.+}` becomes `{name}`.
    pub fn openapi_path(&self) -> String {
        let mut out = String::new();
        let mut rest = self.path;
        while let Some(open) = rest.find('{') {
            out.push_str(&rest[..open]);
            let close = rest[open..].find('}').map_or(rest.len(), |c| open + c);
            let name = &rest[open..close];
            out.push_str(name.split(':').next().unwrap_or(name));
            out.push('}');
            rest = rest.get(close + 1..).unwrap_or("");
        }
        out.push_str(rest);
        out
    }
}

macro_rules! endpoint {
    ($front:ident $verb:ident $path:literal $id:literal, $access:expr, $handler:path) => {
        endpoint!(@ $front $verb $path $id, $access, $handler, true)
    };
    (alias $front:ident $verb:ident $path:literal $id:literal, $access:expr, $handler:path) => {
        endpoint!(@ $front $verb $path $id, $access, $handler, false)
    };
    (@ $front:ident $verb:ident $path:literal $id:literal, $access:expr, $handler:path, $doc:expr) => {
        Endpoint {
            id: $id,
            verb: Verb::$verb,
            path: $path,
            access: $access,
            front: Front::$front,
            documented: $doc,
            handler: |route| route.to($handler),
        }
    };
}

const LIST: Access = Access::All(&[P::ListVms]);
const DOWNLOAD: Access = Access::Any(&[P::DownloadVm, P::DownloadFile]);
const UPLOAD: Access = Access::All(&[P::UploadFile]);
const PULL: Access = Access::All(&[P::PullVm]);
const DELETE: Access = Access::All(&[P::DeleteVm]);
const VIEW_GROUPS: Access = Access::Admin(P::ViewPermissionGroups);
const UPDATE_GROUPS: Access = Access::Admin(P::UpdatePermissionGroups);

/// Every route, in the order the router tries them: a path listed earlier wins over a
/// later pattern that also matches it (`/v2/_catalog` before `/v2/{name}/…`).
pub static ENDPOINTS: &[Endpoint] = &[
    endpoint!(Vendor Get "/" "index", Access::All(&[P::Index]), health::index),
    endpoint!(Vendor Get "/livez" "livez", Access::Public, health::livez),
    endpoint!(Vendor Get "/readyz" "readyz", Access::Public, health::readyz),
    endpoint!(Vendor Get "/openapi.json" "openapi", Access::Authenticated, health::openapi),
    endpoint!(Vendor Get "/metrics" "metrics", Access::Authenticated, metrics::metrics),
    endpoint!(Vendor Get "/registry/status" "status", Access::Authenticated, health::status),
    endpoint!(Vendor Get "/registry/disk" "disk", Access::All(&[P::GetDiskInfo]), health::disk),
    endpoint!(Vendor Get "/registry/vm" "list_v1", LIST, vendor::list_v1),
    endpoint!(Vendor Delete "/registry/vm" "delete_template", DELETE, vendor::delete_template),
    endpoint!(Vendor Get "/registry/v2/vm" "list_v2", LIST, vendor::list_v2),
    endpoint!(Vendor Get "/registry/vm/info" "vm_info", LIST, vendor::vm_info),
    endpoint!(Vendor Put "/registry/vm/arch" "set_arch", Access::All(&[P::PushVm]), vendor::set_arch),
    endpoint!(Vendor Delete "/registry/revert" "revert", Access::All(&[P::Revert]), vendor::revert),
    endpoint!(Vendor Post "/api/v1/push" "negotiate_push",
        Access::All(&[P::HeadPushVm, P::PushVm]), transfer::negotiate),
    endpoint!(Vendor Get "/api/v1/push/{session}" "push_status",
        Access::All(&[P::HeadPushVm]), transfer::status),
    endpoint!(Vendor Delete "/api/v1/push/{session}" "abort_push",
        Access::All(&[P::HeadPushVm]), transfer::abort),
    endpoint!(Vendor Put "/api/v1/push/{session}/files/{key}" "upload_file", UPLOAD, transfer::upload),
    endpoint!(Vendor Post "/api/v1/push/{session}/commit" "commit_push",
        Access::All(&[P::PushVm]), transfer::commit),
    endpoint!(Vendor Get "/api/v1/templates/{template}/manifest" "pull_manifest", PULL,
        transfer::manifest),
    endpoint!(Vendor Get "/api/v1/files/{key}" "download_file", DOWNLOAD, transfer::download),
    endpoint!(Vendor Head "/api/v1/files/{key}" "file_head", DOWNLOAD, transfer::download),
    endpoint!(Vendor Get "/v1/apikey" "list_keys", Access::Root, keys::list),
    endpoint!(Vendor Post "/v1/apikey" "create_key", Access::Root, keys::create),
    endpoint!(Vendor Put "/v1/apikey" "update_key", Access::Root, keys::update),
    endpoint!(Vendor Delete "/v1/apikey" "delete_key", Access::Root, keys::delete),
    endpoint!(Vendor Get "/api/v1/apikey" "list_keys_old", Access::Root, keys::list),
    endpoint!(Vendor Post "/api/v1/apikey" "create_key_old", Access::Root, keys::create),
    endpoint!(Vendor Put "/api/v1/apikey" "update_key_old", Access::Root, keys::update),
    endpoint!(Vendor Delete "/api/v1/apikey" "delete_key_old", Access::Root, keys::delete),
    endpoint!(Vendor Post "/tap/v1/hand" "tap_hand", Access::Public, keys::hand),
    endpoint!(Vendor Post "/tap/v1/shake" "tap_shake", Access::Public, keys::shake),
    endpoint!(Vendor Get "/admin/api/v1/permission" "list_permissions",
        Access::Admin(P::ViewPermissions), groups::permissions),
    endpoint!(Vendor Post "/admin/api/v1/retention" "apply_retention",
        Access::Admin(P::ApplyRetention), retention::apply),
    endpoint!(Vendor Get "/admin/api/v1/permission/group" "list_groups", VIEW_GROUPS, groups::list),
    endpoint!(Vendor Post "/admin/api/v1/permission/group" "create_group", UPDATE_GROUPS,
        groups::create),
    endpoint!(Vendor Get "/admin/api/v1/permission/group/{group}" "get_group", VIEW_GROUPS,
        groups::get),
    endpoint!(Vendor Put "/admin/api/v1/permission/group/{group}" "put_group", UPDATE_GROUPS,
        groups::put),
    endpoint!(Vendor Post "/admin/api/v1/permission/group/{group}" "post_group", UPDATE_GROUPS,
        groups::put),
    endpoint!(Vendor Delete "/admin/api/v1/permission/group/{group}" "delete_group",
        Access::Admin(P::DeletePermissionGroups), groups::delete),
    endpoint!(Oci Get "/v2/" "oci_base", Access::Authenticated, oci::base::check),
    endpoint!(alias Oci Head "/v2/" "oci_base_head", Access::Authenticated, oci::base::check),
    endpoint!(alias Oci Get "/v2" "oci_base_bare", Access::Authenticated, oci::base::check),
    endpoint!(alias Oci Head "/v2" "oci_base_bare_head", Access::Authenticated, oci::base::check),
    endpoint!(Oci Get "/v2/token" "oci_token", Access::Authenticated, oci::auth::token),
    endpoint!(Oci Get "/v2/_catalog" "oci_catalog", LIST, oci::listing::catalog),
    endpoint!(Oci Post "/v2/{name:.+}/blobs/uploads/" "oci_start_upload", UPLOAD,
        oci::uploads::start),
    endpoint!(Oci Get "/v2/{name:.+}/blobs/uploads/{id}" "oci_upload_status", UPLOAD,
        oci::uploads::status),
    endpoint!(Oci Patch "/v2/{name:.+}/blobs/uploads/{id}" "oci_append", UPLOAD,
        oci::uploads::append),
    endpoint!(Oci Put "/v2/{name:.+}/blobs/uploads/{id}" "oci_finish_upload", UPLOAD,
        oci::uploads::finish),
    endpoint!(Oci Delete "/v2/{name:.+}/blobs/uploads/{id}" "oci_cancel_upload", UPLOAD,
        oci::uploads::cancel),
    endpoint!(Oci Get "/v2/{name:.+}/blobs/{digest}" "oci_get_blob", DOWNLOAD, oci::blobs::get),
    endpoint!(Oci Head "/v2/{name:.+}/blobs/{digest}" "oci_head_blob", DOWNLOAD, oci::blobs::get),
    endpoint!(Oci Delete "/v2/{name:.+}/blobs/{digest}" "oci_delete_blob", DELETE,
        oci::blobs::delete),
    endpoint!(Oci Get "/v2/{name:.+}/manifests/{reference}" "oci_get_manifest", PULL,
        oci::manifests::get),
    endpoint!(Oci Head "/v2/{name:.+}/manifests/{reference}" "oci_head_manifest", PULL,
        oci::manifests::get),
    endpoint!(Oci Put "/v2/{name:.+}/manifests/{reference}" "oci_put_manifest",
        Access::All(&[P::PushVm]), oci::manifests::put),
    endpoint!(Oci Delete "/v2/{name:.+}/manifests/{reference}" "oci_delete_manifest", DELETE,
        oci::manifests::delete),
    endpoint!(Oci Get "/v2/{name:.+}/tags/list" "oci_tags", PULL, oci::listing::tags),
    endpoint!(Oci Get "/v2/{name:.+}/referrers/{digest}" "oci_referrers", PULL,
        oci::referrers::list),
];

/// What a request the router matched to no route needs: a caller, so that a stranger
/// learns nothing, not even which paths exist.
pub const UNMATCHED: Access = Access::Authenticated;

/// Registers every route of [`ENDPOINTS`], each behind its own access check; a method a
/// path does not serve, and a path no route matches, need an authenticated caller.
pub fn configure(cfg: &mut web::ServiceConfig) {
    for (path, endpoints) in by_path() {
        let front = endpoints[0].front;
        let other_methods =
            web::to(move || not_allowed(front)).wrap(authorize(UNMATCHED, Some(front), Some(path)));
        let mut resource = web::resource(path).default_service(other_methods);
        for ep in endpoints {
            let route = (ep.handler)(web::route().method(ep.verb.method()));
            resource =
                resource.route(route.wrap(authorize(ep.access, Some(ep.front), Some(ep.path))));
        }
        cfg.service(resource);
    }
    cfg.default_service(
        web::to(|| async { ApiError::not_found("no such endpoint").error_response() })
            .wrap(authorize(UNMATCHED, None, None)),
    );
}

/// The front door a path no route matched looks meant for; it decides only the shape of
/// a refusal.
pub fn front_of_unmatched(path: &str) -> Front {
    match path.starts_with("/v2") {
        true => Front::Oci,
        false => Front::Vendor,
    }
}

/// The routes of the separate metrics listener (no authentication there).
pub fn configure_metrics(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/metrics").get(metrics::metrics));
}

/// The endpoints grouped by path, paths in the order they are first listed.
fn by_path() -> Vec<(&'static str, Vec<&'static Endpoint>)> {
    let mut order: Vec<&'static str> = Vec::new();
    let mut groups: BTreeMap<&'static str, Vec<&'static Endpoint>> = BTreeMap::new();
    for ep in ENDPOINTS {
        let group = groups.entry(ep.path).or_default();
        if group.is_empty() {
            order.push(ep.path);
        }
        group.push(ep);
    }
    order
        .into_iter()
        .map(|path| (path, groups.remove(path).unwrap_or_default()))
        .collect()
}

/// The reply to a method a path does not serve.
async fn not_allowed(front: Front) -> HttpResponse {
    match front {
        Front::Oci => oci::errors::unsupported().await,
        Front::Vendor => ApiError::method_not_allowed().error_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// The route a method and a path template name, if declared.
    fn find(verb: Verb, path: &str) -> Option<&'static Endpoint> {
        ENDPOINTS.iter().find(|e| e.verb == verb && e.path == path)
    }

    #[test]
    fn each_method_and_path_is_declared_once() {
        let mut seen = BTreeSet::new();
        for ep in ENDPOINTS {
            assert!(
                seen.insert((ep.verb, ep.path)),
                "{:?} {} twice",
                ep.verb,
                ep.path
            );
        }
        let ids: BTreeSet<_> = ENDPOINTS.iter().map(|e| e.id).collect();
        assert_eq!(ids.len(), ENDPOINTS.len(), "operation ids are unique");
    }

    #[test]
    fn openapi_paths_are_the_route_table() {
        let doc: serde_json::Value =
            serde_json::from_str(include_str!("openapi.json")).expect("openapi.json parses");
        let paths = doc["paths"].as_object().expect("paths");
        let methods = ["get", "head", "put", "post", "patch", "delete"];
        let in_doc: BTreeSet<(String, String)> = paths
            .iter()
            .flat_map(|(path, ops)| {
                let ops = ops.as_object().cloned().unwrap_or_default();
                ops.keys()
                    .filter(|m| methods.contains(&m.as_str()))
                    .map(|m| (m.clone(), path.clone()))
                    .collect::<Vec<_>>()
            })
            .collect();
        let in_table: BTreeSet<(String, String)> = ENDPOINTS
            .iter()
            .filter(|e| e.documented)
            .map(|e| (e.verb.openapi_name().to_string(), e.openapi_path()))
            .collect();
        let undocumented: Vec<_> = in_table.difference(&in_doc).collect();
        let unrouted: Vec<_> = in_doc.difference(&in_table).collect();
        assert!(
            undocumented.is_empty(),
            "routes openapi.json lacks: {undocumented:?}"
        );
        assert!(
            unrouted.is_empty(),
            "openapi.json operations no route serves: {unrouted:?}"
        );
    }

    #[test]
    fn openapi_names_each_routes_permission() {
        let doc: serde_json::Value =
            serde_json::from_str(include_str!("openapi.json")).expect("openapi.json parses");
        for ep in ENDPOINTS.iter().filter(|e| e.documented) {
            let op = &doc["paths"][ep.openapi_path()][ep.verb.openapi_name()];
            let Some(documented) = op.get("x-permission").and_then(|p| p.as_str()) else {
                continue;
            };
            assert_eq!(
                documented,
                ep.access.describe(),
                "{:?} {}: openapi.json's x-permission",
                ep.verb,
                ep.path
            );
        }
    }

    #[test]
    fn openapi_paths_drop_the_pattern_of_a_parameter() {
        let ep = find(Verb::Get, "/v2/{name:.+}/blobs/{digest}").expect("declared");
        assert_eq!(ep.openapi_path(), "/v2/{name}/blobs/{digest}");
        let ep = find(Verb::Get, "/registry/vm").expect("declared");
        assert_eq!(ep.openapi_path(), "/registry/vm");
    }

    #[test]
    fn the_permissions_of_the_vendor_routes() {
        let need = |verb, path| find(verb, path).map(|e| e.access);
        assert_eq!(need(Verb::Get, "/livez"), Some(Access::Public));
        assert_eq!(need(Verb::Post, "/tap/v1/shake"), Some(Access::Public));
        assert_eq!(need(Verb::Get, "/"), Some(Access::All(&[P::Index])));
        assert_eq!(need(Verb::Delete, "/registry/vm"), Some(DELETE));
        assert_eq!(need(Verb::Get, "/registry/vm"), Some(LIST));
        assert_eq!(
            need(Verb::Post, "/api/v1/push"),
            Some(Access::All(&[P::HeadPushVm, P::PushVm]))
        );
        assert_eq!(
            need(Verb::Put, "/api/v1/push/{session}/files/{key}"),
            Some(UPLOAD)
        );
        assert_eq!(need(Verb::Head, "/api/v1/files/{key}"), Some(DOWNLOAD));
        assert_eq!(need(Verb::Delete, "/api/v1/apikey"), Some(Access::Root));
        assert_eq!(
            need(Verb::Delete, "/admin/api/v1/permission/group/{group}"),
            Some(Access::Admin(P::DeletePermissionGroups))
        );
    }

    #[test]
    fn the_permissions_of_the_oci_routes() {
        let need = |verb, path| find(verb, path).map(|e| e.access);
        assert_eq!(need(Verb::Get, "/v2/"), Some(Access::Authenticated));
        assert_eq!(
            need(Verb::Patch, "/v2/{name:.+}/blobs/uploads/{id}"),
            Some(UPLOAD)
        );
        assert_eq!(
            need(Verb::Post, "/v2/{name:.+}/blobs/uploads/"),
            Some(UPLOAD)
        );
        assert_eq!(
            need(Verb::Put, "/v2/{name:.+}/manifests/{reference}"),
            Some(Access::All(&[P::PushVm]))
        );
        assert_eq!(
            need(Verb::Get, "/v2/{name:.+}/manifests/{reference}"),
            Some(PULL)
        );
        assert_eq!(need(Verb::Get, "/v2/{name:.+}/tags/list"), Some(PULL));
        assert_eq!(
            need(Verb::Get, "/v2/{name:.+}/referrers/{digest}"),
            Some(PULL)
        );
        assert_eq!(need(Verb::Get, "/v2/_catalog"), Some(LIST));
        assert_eq!(
            need(Verb::Delete, "/v2/{name:.+}/blobs/{digest}"),
            Some(DELETE)
        );
        assert_eq!(
            need(Verb::Head, "/v2/{name:.+}/blobs/{digest}"),
            Some(DOWNLOAD)
        );
        assert_eq!(
            need(Verb::Delete, "/v2/{name:.+}/manifests/{reference}"),
            Some(DELETE)
        );
    }

    #[test]
    fn no_route_is_open_but_the_probes_and_the_handshake() {
        let open: BTreeSet<_> = ENDPOINTS
            .iter()
            .filter(|e| e.access == Access::Public)
            .map(|e| e.path)
            .collect();
        let expected: BTreeSet<_> = ["/livez", "/readyz", "/tap/v1/hand", "/tap/v1/shake"].into();
        assert_eq!(open, expected);
    }
}
