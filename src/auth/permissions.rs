//! The vendor's registry permissions, what an endpoint requires, and the one decision.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::{AuthError, Identity};

/// A registry permission, by the vendor's names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Permission {
    /// The HTML index page.
    Index,
    /// `/registry/disk`.
    GetDiskInfo,
    /// List templates and read their details.
    ListVms,
    /// Negotiate a push: which files the registry lacks.
    HeadPushVm,
    /// Create templates and tags (commit a push).
    PushVm,
    /// The list of files a pull needs.
    PullVm,
    /// Download those files.
    DownloadVm,
    /// Delete a template.
    DeleteVm,
    /// Revert a template's versions.
    Revert,
    /// Upload a file of a push.
    UploadFile,
    /// Download a single file.
    DownloadFile,
    /// List the permissions there are.
    ViewPermissions,
    /// List permission groups.
    ViewPermissionGroups,
    /// Create and change permission groups.
    UpdatePermissionGroups,
    /// Delete permission groups.
    DeletePermissionGroups,
    /// Apply a retention policy (vmreg's; the vendor has no retention).
    ApplyRetention,
}

impl Permission {
    /// Every permission with a one-line description.
    pub const ALL: [(Permission, &'static str); 16] = [
        (Permission::Index, "View the HTML index page"),
        (Permission::GetDiskInfo, "Get the registry's disk space"),
        (Permission::ListVms, "List templates and read their details"),
        (
            Permission::HeadPushVm,
            "Negotiate a push: which files exist and which need to be sent",
        ),
        (Permission::PushVm, "Create new templates or tags"),
        (
            Permission::PullVm,
            "Get the list of files a pull needs and their paths",
        ),
        (Permission::DownloadVm, "Download the files of a template"),
        (Permission::DeleteVm, "Delete a template"),
        (Permission::Revert, "Revert a template's versions"),
        (Permission::UploadFile, "Upload a file"),
        (Permission::DownloadFile, "Download a file"),
        (Permission::ViewPermissions, "List the permissions"),
        (Permission::ViewPermissionGroups, "List permission groups"),
        (
            Permission::UpdatePermissionGroups,
            "Create and change permission groups",
        ),
        (
            Permission::DeletePermissionGroups,
            "Delete permission groups",
        ),
        (
            Permission::ApplyRetention,
            "Remove the tags a retention policy no longer keeps",
        ),
    ];

    /// The vendor's name, e.g. `push_vm`.
    pub fn name(self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    }

    /// Parses a vendor name.
    pub fn parse(name: &str) -> Option<Permission> {
        serde_json::from_value(serde_json::Value::String(name.to_string())).ok()
    }
}

/// What an endpoint asks of its caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Nobody needs credentials (probes, the TAP handshake).
    Public,
    /// Any authenticated caller.
    Authenticated,
    /// Every one of these permissions.
    All(&'static [Permission]),
    /// Any one of these permissions.
    Any(&'static [Permission]),
    /// Administering groups: root, or this permission when authorization is on (groups
    /// mean nothing without it, so then only root may).
    Admin(Permission),
    /// Only the root token (API key administration).
    Root,
}

impl Access {
    /// What the access asks, in the words `openapi.json`'s `x-permission` uses.
    pub fn describe(self) -> String {
        let names = |ps: &[Permission], join: &str| {
            ps.iter().map(|p| p.name()).collect::<Vec<_>>().join(join)
        };
        match self {
            Access::Public => "none".into(),
            Access::Authenticated => "any valid credential".into(),
            Access::All(ps) => names(ps, " and "),
            Access::Any(ps) => names(ps, " or "),
            Access::Admin(p) => p.name(),
            Access::Root => "root".into(),
        }
    }
}

/// May `identity`, whose groups grant `granted`, do what `need` asks? `authorization` is
/// the `ANKA_ENABLE_AUTHORIZATION` switch: without it groups are not consulted.
pub fn authorize(
    identity: &Identity,
    granted: &BTreeSet<Permission>,
    authorization: bool,
    need: Access,
) -> Result<(), AuthError> {
    match need {
        Access::Public | Access::Authenticated => Ok(()),
        _ if identity.is_root() => Ok(()),
        Access::Root => Err(AuthError::Forbidden("the root token".into())),
        Access::Admin(p) if !authorization => Err(AuthError::Forbidden(format!(
            "the root token (or the {} permission with ANKA_ENABLE_AUTHORIZATION)",
            p.name()
        ))),
        Access::All(_) | Access::Any(_) if !authorization => Ok(()),
        Access::All(perms) => match perms.iter().find(|p| !granted.contains(p)) {
            None => Ok(()),
            Some(missing) => Err(denied(&[*missing])),
        },
        Access::Any(perms) if perms.iter().any(|p| granted.contains(p)) => Ok(()),
        Access::Any(perms) => Err(denied(perms)),
        Access::Admin(p) if granted.contains(&p) => Ok(()),
        Access::Admin(p) => Err(denied(&[p])),
    }
}

fn denied(perms: &[Permission]) -> AuthError {
    let names: Vec<String> = perms.iter().map(|p| p.name()).collect();
    AuthError::Forbidden(format!("the {} permission", names.join(" or ")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::AuthMethod;

    fn key(groups: &[&str]) -> Identity {
        Identity {
            user: "k".into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            method: AuthMethod::ApiKey {
                session: "s".into(),
                expires: u64::MAX,
            },
        }
    }

    #[test]
    fn names_round_trip() {
        for (p, _) in Permission::ALL {
            assert_eq!(Permission::parse(&p.name()), Some(p));
        }
        assert_eq!(Permission::HeadPushVm.name(), "head_push_vm");
        assert_eq!(Permission::parse("root"), None);
    }

    #[test]
    fn root_may_do_everything_and_keys_only_what_groups_grant() {
        let none = BTreeSet::new();
        let push = &[Permission::HeadPushVm, Permission::PushVm][..];
        assert!(authorize(&Identity::root(), &none, true, Access::All(push)).is_ok());
        assert!(authorize(&Identity::root(), &none, true, Access::Root).is_ok());
        assert!(authorize(&key(&[]), &none, true, Access::Root).is_err());
        assert!(authorize(&key(&[]), &none, false, Access::All(push)).is_ok());
        let half: BTreeSet<_> = [Permission::HeadPushVm].into();
        match authorize(&key(&["g"]), &half, true, Access::All(push)) {
            Err(AuthError::Forbidden(m)) => assert!(m.contains("push_vm"), "{m}"),
            other => panic!("{other:?}"),
        }
        let both: BTreeSet<_> = push.iter().copied().collect();
        assert!(authorize(&key(&["g"]), &both, true, Access::All(push)).is_ok());
        assert!(authorize(&key(&[]), &none, true, Access::Authenticated).is_ok());
        let files = &[Permission::DownloadVm, Permission::DownloadFile][..];
        let one: BTreeSet<_> = [Permission::DownloadFile].into();
        assert!(authorize(&key(&["g"]), &one, true, Access::Any(files)).is_ok());
        assert!(authorize(&key(&["g"]), &none, true, Access::Any(files)).is_err());
        let admin = Access::Admin(Permission::UpdatePermissionGroups);
        let admins: BTreeSet<_> = [Permission::UpdatePermissionGroups].into();
        assert!(authorize(&key(&["g"]), &admins, false, admin).is_err());
        assert!(authorize(&key(&["g"]), &admins, true, admin).is_ok());
        assert!(authorize(&Identity::root(), &none, false, admin).is_ok());
    }
}
