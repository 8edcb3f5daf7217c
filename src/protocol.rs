//! The transfer protocol's wire types, shared by the server's handlers and the client.
//!
//! Every JSON reply is wrapped in the vendor's envelope
//! `{"status":"OK"|"FAIL","body":…,"message":…}`. Endpoints (all under `/api/v1`):
//!
//! | step | request | reply body |
//! |---|---|---|
//! | negotiate | `POST /push` [`PushRequest`] | [`PushPlan`] |
//! | status | `GET /push/{session}` | [`PushPlan`] (with bytes received so far) |
//! | upload | `PUT /push/{session}/files/{key}?offset=N`, raw body | [`UploadProgress`] |
//!
//! An upload's `offset` is any multiple of the file's `part_size` (or its size): a file
//! may be sent as several ranges at once, in any order; parts already durable are not
//! written again.
//! | commit | `POST /push/{session}/commit` [`CommitRequest`] | [`Committed`] |
//! | abort | `DELETE /push/{session}` | null |
//! | manifest | `GET /templates/{id or name}/manifest[?tag=T or ?version=N]` | [`Manifest`] |
//! | download | `GET /files/{key}` with optional `Range` | the bytes (200/206/416) |

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::model::FileKind;

/// The response header carrying the registry's instance id (also `instance_id` in
/// `GET /registry/status`): the same through every replica and address of one registry.
pub const INSTANCE_HEADER: &str = "X-Vmreg-Instance";

/// The vendor's reply envelope.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Envelope<T> {
    /// `OK` or `FAIL`.
    pub status: String,
    /// The payload; `null` on failures and on operations without one.
    pub body: Option<T>,
    /// Empty on success; a human message on failure.
    #[serde(default)]
    pub message: String,
}

/// Negotiates a push: which of these files does the registry lack?
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PushRequest {
    /// The template id: the pushed VM's UUID, or an existing template's id (`push -v`).
    pub id: Uuid,
    /// The template name; used when the push creates the template.
    pub name: String,
    /// The new version's tag.
    pub tag: String,
    /// The new version's description.
    #[serde(default)]
    pub description: String,
    /// The template's arch (`arm64`/`amd64`), when known; set only on a new template.
    #[serde(default)]
    pub arch: Option<String>,
    /// The VM configuration (config.yaml as JSON).
    pub config: serde_json::Value,
    /// Every file of the version, image layers top first.
    pub files: Vec<PushFile>,
    /// True when the client gives at commit the digests it did not know at negotiation: a
    /// file sent without a digest that the registry holds under that name and size is then
    /// planned `confirm` (not sent; hashed by the client while the others upload) instead
    /// of being uploaded again. Older clients leave it out and send every such file.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub confirm_held: bool,
}

/// A file the client wants in the version.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PushFile {
    /// Name in the VM library.
    pub name: String,
    /// What the file is.
    pub kind: FileKind,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 when already known; otherwise it is given at commit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// The server's answer to a negotiation: the session and what to send.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PushPlan {
    /// Upload session id; any replica serves it.
    pub session: String,
    /// Template id.
    pub id: Uuid,
    /// Template name (the existing one when pushing a new tag).
    pub name: String,
    /// Tag being pushed.
    pub tag: String,
    /// Every file of the version with what to do about it.
    pub files: Vec<PlannedFile>,
}

/// One file of a push plan.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PlannedFile {
    /// Name in the VM library.
    pub name: String,
    /// The registry's key for the file (upload and download path segment).
    pub key: String,
    /// What the file is.
    pub kind: FileKind,
    /// Size in bytes.
    pub size: u64,
    /// True when the registry lacks the file and it must be uploaded.
    pub upload: bool,
    /// Bytes already received durably from the start of the file (resume from here).
    pub received: u64,
    /// Every durable byte range `[start, end)`, in order, when the file was sent as
    /// several ranges (the first one being `[0, received)` when `received` > 0): a client
    /// resuming ranges sends only the parts outside them. Empty when nothing is durable.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub durable: Vec<[u64; 2]>,
    /// Send the body in multiples of this many bytes (except the end of the file), or
    /// bytes past the last whole part are discarded and must be sent again.
    pub part_size: u64,
    /// The file's digest when the client gave it (a pinned file) or uploaded the file in
    /// this session. Never the digest of bytes the client did not show it has: a `confirm`
    /// file has none (earlier servers sent the stored digest there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// True for a file the registry holds under this name and size but whose digest the
    /// client did not give at negotiation: not uploaded, and the commit needs the client's
    /// digest of it (a different one is refused with 409, never taken as the old bytes).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub confirm: bool,
    /// For a `confirm` file: [`held_hint`] of the session and the stored digest, so the
    /// client can tell at once whether its file is the stored one without the registry
    /// telling the stored digest to anyone who names a file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirm_hint: Option<String>,
}

/// The lowercase hex SHA-256 of `<session>:<sha256>`: what a push plan shows of a held
/// file's digest. Whoever has the file's bytes can compare it with their own; no one
/// learns the digest from it.
pub fn held_hint(session: &str, sha256: &str) -> String {
    crate::digest::sha256_hex(format!("{session}:{sha256}").as_bytes())
}

/// Progress of one file's upload.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UploadProgress {
    /// The file's registry key.
    pub key: String,
    /// Bytes received durably from the start of the file.
    pub received: u64,
    /// Every durable byte range `[start, end)`, as in [`PlannedFile::durable`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub durable: Vec<[u64; 2]>,
    /// Size declared at negotiation.
    pub size: u64,
    /// True once every byte arrived and the file is stored.
    pub complete: bool,
}

/// Finishes a push.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct CommitRequest {
    /// SHA-256 of each file (by registry key) whose digest was not given at negotiation:
    /// the uploaded ones and the `confirm` ones.
    #[serde(default)]
    pub digests: BTreeMap<String, String>,
}

/// A committed version.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Committed {
    /// Template id.
    pub id: Uuid,
    /// Template name.
    pub name: String,
    /// The version's tag.
    pub tag: String,
    /// The version's number.
    pub number: u32,
}

/// What a pull needs: the version's files and configuration.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Manifest {
    /// Template id.
    pub id: Uuid,
    /// Template name.
    pub name: String,
    /// Template arch.
    pub arch: String,
    /// Version number.
    pub number: u32,
    /// Version tag.
    pub tag: String,
    /// Version description.
    pub description: String,
    /// The VM configuration (config.yaml as JSON).
    pub config: serde_json::Value,
    /// Every file, image layers top first.
    pub files: Vec<ManifestFile>,
    /// Sum of the files' sizes.
    pub size: u64,
}

/// One file of a manifest.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ManifestFile {
    /// Name in the VM library.
    pub name: String,
    /// The registry's key (download with `GET /api/v1/files/{key}`).
    pub key: String,
    /// What the file is.
    pub kind: FileKind,
    /// Size in bytes.
    pub size: u64,
    /// Lowercase hex SHA-256.
    pub sha256: String,
}
