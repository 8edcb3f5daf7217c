//! Every metadata key name, made in one place.

use uuid::Uuid;

/// The set of all template ids.
pub const TEMPLATES: &str = "templates";
/// The set of open upload session ids.
pub const SESSIONS: &str = "sessions";

/// A template with its versions.
pub fn template(id: &Uuid) -> String {
    format!("tpl:{id}")
}

/// The listing summary of a template.
pub fn summary(id: &Uuid) -> String {
    format!("sum:{id}")
}

/// The id owning a template name.
pub fn template_name(name: &str) -> String {
    format!("name:{name}")
}

/// Epoch seconds of a template's latest pull.
pub fn last_pull(id: &Uuid) -> String {
    format!("pull:{id}")
}

/// A stored file: size, digest, object key, references and pins.
pub fn file(key: &str) -> String {
    format!("file:{key}")
}

/// An upload session.
pub fn session(id: &str) -> String {
    format!("sess:{id}")
}

/// The progress of one file's upload within a session.
pub fn upload(session: &str, file_key: &str) -> String {
    format!("upl:{session}:{file_key}")
}
