//! Every metadata key name, made in one place.

use uuid::Uuid;

/// The set of all template ids.
pub const TEMPLATES: &str = "templates";
/// The set of open upload session ids.
pub const SESSIONS: &str = "sessions";

/// A template's head record: its name, arch and the slots of its versions (see
/// `registry::template_record`); the whole template in records of the older layout.
pub fn template(id: &Uuid) -> String {
    format!("tpl:{id}")
}

/// The start of every [`template_version`] key, to walk them all.
pub const TEMPLATE_VERSIONS: &str = "tplv:";

/// One version of a template, in the slot its head gave it.
pub fn template_version(id: &Uuid, slot: u64) -> String {
    format!("{TEMPLATE_VERSIONS}{id}:{slot}")
}

/// The template and slot a [`template_version`] key names.
pub fn parse_template_version(key: &str) -> Option<(Uuid, u64)> {
    let (id, slot) = key.strip_prefix(TEMPLATE_VERSIONS)?.rsplit_once(':')?;
    Some((Uuid::parse_str(id).ok()?, slot.parse().ok()?))
}

/// The listing summary of a template.
pub fn summary(id: &Uuid) -> String {
    format!("sum:{id}")
}

/// The start of every [`summary_block`] key, to walk them all.
pub const SUMMARY_BLOCKS: &str = "sumv:";

/// The listing rows of one block of a template's versions (see
/// `registry::summary_record`).
pub fn summary_block(id: &Uuid, block: u64) -> String {
    format!("{SUMMARY_BLOCKS}{id}:{block}")
}

/// The id owning a template name.
pub fn template_name(name: &str) -> String {
    format!("name:{name}")
}

/// The counter of a template's commit attempts (see [`crate::model::Version::seq`]).
pub fn commit_seq(id: &Uuid) -> String {
    format!("seq:{id}")
}

/// Epoch seconds of a template's latest pull.
pub fn last_pull(id: &Uuid) -> String {
    format!("pull:{id}")
}

/// Epoch seconds of the latest pull of each tag of a template (`{tag: seconds}`).
pub fn tag_pulls(id: &Uuid) -> String {
    format!("tagpull:{id}")
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

/// The start of every [`upload_part`] key, to walk them all.
pub const UPLOAD_PARTS: &str = "part:";

/// One durable part of the upload whose state is under `state_key` (an [`upload`] or an
/// [`oci_upload_parts`] key), kept apart so that recording a part writes only that part.
pub fn upload_part(state_key: &str, number: u32) -> String {
    format!("{UPLOAD_PARTS}{state_key}#{number}")
}

/// The state key and part number an [`upload_part`] key names.
pub fn parse_upload_part(key: &str) -> Option<(&str, u32)> {
    let (state, number) = key.strip_prefix(UPLOAD_PARTS)?.rsplit_once('#')?;
    Some((state, number.parse().ok()?))
}

/// The push sessions an identity holds open (members: session ids), counted against
/// `--max-upload-sessions-per-identity`; `holder` as `registry::limits::Uploader` names it.
pub fn held_sessions(holder: &str) -> String {
    format!("held:sess:{holder}")
}

/// The OCI blob uploads an identity holds open (members: upload ids), counted apart from
/// its push sessions.
pub fn held_oci_uploads(holder: &str) -> String {
    format!("held:oci:{holder}")
}

/// The set of all API key ids.
pub const API_KEYS: &str = "apikeys";
/// The set of all permission group names.
pub const GROUPS: &str = "groups";
/// The secret that signs session tokens when none is configured.
pub const SIGNING_KEY: &str = "auth:signing-key";

/// An API key: its public key, groups, lifetime.
pub fn api_key(id: &str) -> String {
    format!("apikey:{id}")
}

/// The TAP secrets handed out for an API key and not yet used.
pub fn tap_secrets(id: &str) -> String {
    format!("tap:{id}")
}

/// A permission group and its permissions.
pub fn group(name: &str) -> String {
    format!("group:{name}")
}

/// The set of commit records (see [`pushed`]), each member `<epoch seconds>/<session>`,
/// so that garbage collection finds them and their age without reading each.
pub const PUSHED: &str = "pushed";

/// The member of [`PUSHED`] for a session committed at `at` (epoch seconds).
pub fn pushed_member(at: u64, session: &str) -> String {
    format!("{at}/{session}")
}

/// The lease a replica holds while it runs the periodic garbage collection.
pub const GC_LEASE: &str = "lease:gc";

/// The lease a retention run holds, so that two runs never renumber one template at once.
pub const RETENTION_LEASE: &str = "lease:retention";

/// The template a push session committed to, kept after the session so that a client whose
/// commit reply was lost learns that its version exists.
pub fn pushed(session: &str) -> String {
    format!("pushed:{session}")
}

/// The set of OCI repository names.
pub const OCI_REPOS: &str = "oci:repos";

/// An open OCI blob upload: its repository and the bytes past its last whole part.
pub fn oci_upload(id: &str) -> String {
    format!("oci:upl:{id}")
}

/// The set of open OCI blob upload ids, so they can be counted and expired.
pub const OCI_UPLOADS: &str = "oci:upls";

/// The multipart progress of an OCI blob upload (parts, bytes, hash state).
pub fn oci_upload_parts(id: &str) -> String {
    format!("oci:parts:{id}")
}

/// An OCI manifest of a repository by digest: media type, size, object.
pub fn oci_manifest(repo: &str, digest: &str) -> String {
    format!("oci:man:{repo}@{digest}")
}

/// The digest an OCI tag points at.
pub fn oci_tag(repo: &str, tag: &str) -> String {
    format!("oci:tag:{repo}:{tag}")
}

/// The set of tags of an OCI repository.
pub fn oci_tags(repo: &str) -> String {
    format!("oci:tags:{repo}")
}

/// A repository's hold on an OCI blob (one reference on the blob's file record).
pub fn oci_blob(repo: &str, digest: &str) -> String {
    format!("{OCI_BLOB_LINKS}{repo}@{digest}")
}

/// The start of every [`oci_blob`] key, to walk them all.
pub const OCI_BLOB_LINKS: &str = "oci:blob:";

/// The SHA-256 hex of the content a digest of another algorithm (`sha512:…`) names, so
/// a mount without `from` finds it as one by SHA-256 does. The pair is a fact about the
/// bytes, true whether or not they are still stored.
pub fn oci_content_alias(digest: &str) -> String {
    format!("oci:alias:{digest}")
}

/// The set of the digests of an OCI repository's manifests.
pub fn oci_manifests(repo: &str) -> String {
    format!("oci:mans:{repo}")
}

/// The set of the digests of the manifests of an OCI repository whose `subject` is
/// `digest`.
pub fn oci_referrers(repo: &str, digest: &str) -> String {
    format!("oci:refs:{repo}@{digest}")
}
