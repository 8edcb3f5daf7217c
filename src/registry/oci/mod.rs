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
//!   by an upload that completes there or a mount; a blob is served only through a link;
//! - an open upload is `oci:upl:<id>` (repository, tail) plus `oci:parts:<id>` (the
//!   multipart state the part pump keeps); bytes past the last whole part wait in a
//!   `uploads/oci/<id>/tail-<end>` object, so memory stays bounded and any replica goes on;
//! - a manifest is `oci:man:<repo>@<digest>` (media type, size, subject; one reference),
//!   listed in `oci:mans:<repo>`; a tag is `oci:tag:<repo>:<tag>` holding a digest, listed
//!   in `oci:tags:<repo>`; the manifests whose `subject` is a digest are the set
//!   `oci:refs:<repo>@<digest>`; repositories are the set `oci:repos`.

mod blobs;
mod caps;
mod listing;
mod manifests;
mod uploads;

use crate::digest::is_sha256_hex;
use crate::meta::{MetaTx, MetaTxExt};
use crate::model::FileRecord;

use super::RegistryError;

pub use listing::{page_size, Page, MAX_PAGE};
pub use manifests::{OciManifest, Referrer, MAX_MANIFEST};

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

/// The hex of a `sha256:<hex>` digest; other algorithms are refused as invalid.
pub fn sha256_of_digest(digest: &str) -> OciResult<&str> {
    match digest.strip_prefix("sha256:") {
        Some(hex) if is_sha256_hex(hex) => Ok(hex),
        _ => Err(OciError::DigestInvalid(format!(
            "{digest:?} is not a sha256 digest"
        ))),
    }
}

pub(crate) fn blob_key(hex: &str) -> String {
    format!("oci-sha256-{hex}")
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
            Some(hex.as_str())
        );
        assert!(sha256_of_digest("sha256:abc").is_err());
        assert!(sha256_of_digest(&format!("md5:{hex}")).is_err());
    }
}
