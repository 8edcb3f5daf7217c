//! The OCI Distribution API's service side: content-addressed blobs uploaded in parts
//! through the same multipart machinery as the vendor protocol, and manifests kept byte
//! for byte under their digest, with tags pointing at them.
//!
//! How it is stored (metadata keys in `meta::keys`, object keys in `store::keys`):
//! - content (a blob or a manifest's bytes) is a [`FileRecord`] under
//!   `file:oci-sha256-<hex>` (registry key `oci-sha256-<hex>`), whose object is
//!   `blobs/oci/<upload id>`; it is stored once whatever the number of repositories
//!   holding it, and its `refs` count the holders, so the reference counting of the vendor
//!   API lets it go when the last holder does;
//! - a repository holds a blob by a link `oci:blob:<repo>@<digest>` (one reference), made
//!   by an upload that completes there or a mount; a blob is served only through a link.
//!   A link named by a `sha256:` digest holds `true`; one named by a `sha512:` digest
//!   holds the content's SHA-256 hex, the name its one record is stored under;
//! - an open upload is `oci:upl:<id>` (repository, start time, tail) plus
//!   `oci:parts:<id>` (the multipart state its part writer keeps), its id in the set
//!   `oci:upls` so uploads are counted and expired; bytes past the last whole part wait in a
//!   `uploads/oci/<id>/tail-<end>` object, so memory stays bounded and any replica goes on;
//! - a manifest is `oci:man:<repo>@<digest>` (media type, size, subject, and the content's
//!   SHA-256 when the digest is a `sha512:`; one reference),
//!   listed in `oci:mans:<repo>`; a tag is `oci:tag:<repo>:<tag>` holding a digest, listed
//!   in `oci:tags:<repo>`; the manifests whose `subject` is a digest are the set
//!   `oci:refs:<repo>@<digest>`; repositories are the set `oci:repos`.

mod blobs;
mod bridge;
mod caps;
pub(crate) mod held;
mod listing;
mod manifests;
mod parts;
mod uploads;

use crate::digest::is_sha256_hex;
use crate::meta::{MetaTx, MetaTxExt};
use crate::model::FileRecord;

use super::RegistryError;

pub use bridge::repository_id;
pub use listing::{page_size, Page, MAX_PAGE};
pub use manifests::{OciManifest, Referrer, MANIFEST_MEDIA_TYPES, MAX_MANIFEST};

/// Why an OCI operation failed, by the spec's error codes.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    /// No blob with that digest.
    #[error("blob unknown to registry")]
    BlobUnknown,
    /// No open upload with that id in that repository.
    #[error("blob upload unknown to registry")]
    BlobUploadUnknown,
    /// The upload's bytes or range are not acceptable.
    #[error("blob upload invalid: {0}")]
    BlobUploadInvalid(String),
    /// A chunk that does not start where the upload stands; `received` is where it does.
    #[error("chunk does not start at byte {received}")]
    RangeInvalid {
        /// Bytes received so far.
        received: u64,
    },
    /// The digest is malformed, unsupported or does not match the content.
    #[error("provided digest did not match uploaded content: {0}")]
    DigestInvalid(String),
    /// No manifest under that tag or digest.
    #[error("manifest unknown to registry")]
    ManifestUnknown,
    /// The manifest is not acceptable.
    #[error("manifest invalid: {0}")]
    ManifestInvalid(String),
    /// The repository name is malformed.
    #[error("invalid repository name")]
    NameInvalid,
    /// The repository has nothing in it.
    #[error("repository name not known to registry")]
    NameUnknown,
    /// The tag is malformed.
    #[error("manifest tag invalid")]
    TagInvalid,
    /// A pagination parameter is not a number.
    #[error("invalid number of results requested")]
    PaginationInvalid,
    /// A cap on what the registry holds is reached; nothing was changed.
    #[error("denied: {0}")]
    Full(String),
    /// Too many uploads are open; one may be retried once others finish or expire.
    #[error("too many requests: {0}")]
    TooManyUploads(String),
    /// A request the registry does not serve, such as a malformed referrers filter.
    #[error("the operation is unsupported: {0}")]
    Unsupported(String),
    /// The stores failed, or a concurrent change won.
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

/// Result of OCI operations.
pub type OciResult<T> = Result<T, OciError>;

impl From<crate::meta::MetaError> for OciError {
    fn from(e: crate::meta::MetaError) -> Self {
        OciError::Registry(e.into())
    }
}

impl From<crate::store::StoreError> for OciError {
    fn from(e: crate::store::StoreError) -> Self {
        OciError::Registry(e.into())
    }
}

/// alphanumerics joined by `.`, `_`, `__` or dashes, separated by `/`.
pub fn validate_repo(name: &str) -> OciResult<()> {
    let component_ok = |c: &str| {
        let b = c.as_bytes();
        !b.is_empty()
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
            && b.iter()
                .all(|x| x.is_ascii_lowercase() || x.is_ascii_digit() || b"._-".contains(x))
    };
    match name.len() <= 255 && name.split('/').all(component_ok) {
        true => Ok(()),
        false => Err(OciError::NameInvalid),
    }
}

/// Checks a tag: `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
pub fn validate_oci_tag(tag: &str) -> OciResult<()> {
    let b = tag.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|x| x.is_ascii_alphanumeric() || b"._-".contains(x));
    match ok {
        true => Ok(()),
        false => Err(OciError::TagInvalid),
    }
}

/// The digest algorithms the registry takes, as the spec registers them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    /// `sha256:<64 hex>`, the one every content record is named by.
    Sha256,
    /// `sha512:<128 hex>`.
    Sha512,
}

impl Algorithm {
    /// The lowercase hex digest of `bytes`.
    pub fn hex(self, bytes: &[u8]) -> String {
        use sha2::Digest as _;
        match self {
            Algorithm::Sha256 => crate::digest::sha256_hex(bytes),
            Algorithm::Sha512 => hex::encode(sha2::Sha512::digest(bytes)),
        }
    }

    /// `<algorithm>:<hex>`.
    pub fn digest(self, hex: &str) -> String {
        match self {
            Algorithm::Sha256 => format!("sha256:{hex}"),
            Algorithm::Sha512 => format!("sha512:{hex}"),
        }
    }
}

/// The algorithm and hex of a `sha256:<hex>` or `sha512:<hex>` digest; anything else
/// (another algorithm, upper case, a wrong length) is refused as invalid.
pub fn parse_digest(digest: &str) -> OciResult<(Algorithm, &str)> {
    let lower_hex = |h: &str, len: usize| {
        h.len() == len
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    match digest.split_once(':') {
        Some(("sha256", hex)) if is_sha256_hex(hex) => Ok((Algorithm::Sha256, hex)),
        Some(("sha512", hex)) if lower_hex(hex, 128) => Ok((Algorithm::Sha512, hex)),
        _ => Err(OciError::DigestInvalid(format!(
            "{digest:?} is not a sha256 or sha512 digest"
        ))),
    }
}

/// The hex of a `sha256:<hex>` digest, `None` for a valid digest in another algorithm
/// (whose content is found through the link that names it); invalid digests are refused.
pub fn sha256_of_digest(digest: &str) -> OciResult<Option<&str>> {
    Ok(match parse_digest(digest)? {
        (Algorithm::Sha256, hex) => Some(hex),
        (Algorithm::Sha512, _) => None,
    })
}

pub(crate) fn blob_key(hex: &str) -> String {
    format!("oci-sha256-{hex}")
}

/// The value of a repository's link to a blob named by `digest` whose content has the
/// SHA-256 `content`: `true` when the digest is that SHA-256 (the link's name tells the
/// content), else the content's SHA-256 hex, so a link named by a SHA-512 finds the one
/// record the content is stored under.
fn link_value(digest: &str, content: &str) -> serde_json::Value {
    match sha256_of_digest(digest) {
        Ok(Some(_)) => serde_json::Value::Bool(true),
        _ => serde_json::Value::String(content.to_string()),
    }
}

/// The SHA-256 hex of the content a link named by `digest` holds, from its value.
fn linked_content(digest: &str, value: &serde_json::Value) -> Option<String> {
    match (sha256_of_digest(digest), value) {
        (Ok(Some(hex)), _) => Some(hex.to_string()),
        (_, serde_json::Value::String(hex)) if is_sha256_hex(hex) => Some(hex.clone()),
        _ => None,
    }
}

/// Within a transaction: the SHA-256 hex of the content `link` (named by `digest`)
/// holds, `None` when there is no such link.
async fn read_link(
    tx: &mut Box<dyn MetaTx>,
    link: &str,
    digest: &str,
) -> Result<Option<String>, RegistryError> {
    let Some(value) = tx.get_json::<serde_json::Value>(link).await? else {
        return Ok(None);
    };
    match linked_content(digest, &value) {
        Some(hex) => Ok(Some(hex)),
        None => Err(RegistryError::Meta(crate::meta::MetaError::Corrupt {
            key: link.to_string(),
            reason: "the link names no content digest".into(),
        })),
    }
}

/// Takes one more reference on the content with `fresh`'s digest within the transaction:
/// creates its record from `fresh` when there is none, and answers the record that holds
/// the content (whose object the caller must use, dropping its own when it differs).
async fn hold(tx: &mut Box<dyn MetaTx>, fresh: &FileRecord) -> Result<FileRecord, RegistryError> {
    let record_key = crate::meta::keys::file(&fresh.key);
    let mut record = tx
        .get_json::<FileRecord>(&record_key)
        .await?
        .unwrap_or_else(|| FileRecord {
            refs: 0,
            ..fresh.clone()
        });
    record.refs += 1;
    tx.put_json(&record_key, &record);
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_tags_and_digests_follow_the_spec() {
        assert!(validate_repo("a/b-c/d_e.f").is_ok());
        assert!(validate_repo("library/ubuntu").is_ok());
        for bad in ["", "A", "a//b", "-a", "a-", "a/"] {
            assert!(validate_repo(bad).is_err(), "{bad:?}");
        }
        assert!(validate_oci_tag("latest").is_ok() && validate_oci_tag("_v1.2-3").is_ok());
        assert!(validate_oci_tag(".x").is_err() && validate_oci_tag(&"a".repeat(129)).is_err());
        let hex = "a".repeat(64);
        assert_eq!(
            sha256_of_digest(&format!("sha256:{hex}")).ok(),
            Some(Some(hex.as_str()))
        );
        let long = "b".repeat(128);
        assert_eq!(
            parse_digest(&format!("sha512:{long}")).ok(),
            Some((Algorithm::Sha512, long.as_str()))
        );
        assert_eq!(sha256_of_digest(&format!("sha512:{long}")).ok(), Some(None));
        assert!(parse_digest(&format!("sha512:{hex}")).is_err());
        assert!(parse_digest(&format!("sha512:{}", "B".repeat(128))).is_err());
        assert!(sha256_of_digest("sha256:abc").is_err());
        assert!(sha256_of_digest(&format!("md5:{hex}")).is_err());
        assert_eq!(
            Algorithm::Sha512.hex(b"abc"),
            "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f"
        );
    }
}
