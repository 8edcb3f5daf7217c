//! Caps on the metadata a client can grow: a registry on a shared network must not let one
//! client fill Redis or make a record that every listing and pull then has to read whole.
//! Lengths and per-request counts are fixed in [`crate::model`] and [`super::push`]; the
//! counts an operator may want to size live here.

use super::{Registry, RegistryError, RegistryResult};
use crate::meta::keys;

/// The sizable caps on metadata, all counted in the metadata store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Templates in the registry.
    pub max_templates: u64,
    /// Versions (tags) per template.
    pub max_versions: usize,
    /// Bytes of a version's VM configuration, as JSON.
    pub max_config_size: usize,
    /// Push sessions open at once (negotiated, not yet committed, aborted or purged).
    pub max_upload_sessions: u64,
    /// Templates in one page of a paged listing.
    pub max_page: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_templates: 1_000_000,
            max_versions: 1000,
            max_config_size: 64 << 10,
            max_upload_sessions: 1000,
            max_page: 1000,
        }
    }
}

/// The largest template record (every version with its files and configuration), so a
/// push or a pull never reads an unbounded record, whatever the caps above allow.
pub const MAX_TEMPLATE_RECORD: usize = 32 << 20;

/// A cap reached: the registry holds as much as it may; nothing was changed.
fn full(what: &str, max: impl std::fmt::Display, hint: &str) -> RegistryError {
    RegistryError::Conflict(format!(
        "this registry holds its maximum of {max} {what}; {hint}"
    ))
}

impl Registry {
    /// The caps in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Refuses a configuration larger than the cap.
    pub(crate) fn check_config_size(&self, config: &serde_json::Value) -> RegistryResult<()> {
        let size = crate::meta::encode(config).len();
        let max = self.limits.max_config_size;
        if size > max {
            return Err(RegistryError::BadRequest(format!(
                "config is {size} bytes as JSON; at most {max} are accepted (--max-config-size)"
            )));
        }
        Ok(())
    }

    /// Refuses one more version for a template that has `versions` already.
    pub(crate) fn check_version_count(&self, name: &str, versions: usize) -> RegistryResult<()> {
        let max = self.limits.max_versions;
        if versions >= max {
            return Err(full(
                &format!("versions in template {name:?}"),
                max,
                "revert or delete old versions first (--max-versions)",
            ));
        }
        Ok(())
    }

    /// Refuses a new template when the registry holds the most it may.
    pub(crate) async fn check_template_count(&self) -> RegistryResult<()> {
        let hint = "delete unused templates first (--max-templates)";
        self.check_count(
            keys::TEMPLATES,
            self.limits.max_templates,
            "templates",
            hint,
        )
        .await
    }

    /// Refuses a new push session when too many are open.
    pub(crate) async fn check_session_count(&self) -> RegistryResult<()> {
        let hint = "retry once some finish or expire (--max-upload-sessions)";
        let max = self.limits.max_upload_sessions;
        self.check_count(keys::SESSIONS, max, "open pushes", hint)
            .await
    }

    async fn check_count(&self, set: &str, max: u64, what: &str, hint: &str) -> RegistryResult<()> {
        if self.meta.count(set).await? >= max {
            return Err(full(what, max, hint));
        }
        Ok(())
    }

    /// Refuses a template record past [`MAX_TEMPLATE_RECORD`].
    pub(crate) fn check_record_size(&self, name: &str, bytes: usize) -> RegistryResult<()> {
        if bytes > MAX_TEMPLATE_RECORD {
            return Err(RegistryError::Conflict(format!(
                "template {name:?} would take {bytes} bytes of metadata, more than \
                 {MAX_TEMPLATE_RECORD}; revert or delete old versions first"
            )));
        }
        Ok(())
    }
}
