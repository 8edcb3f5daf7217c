//! The vendor registry's `ANKA_*` environment names. An operator moving a configuration
//! from the vendor's registry sees at start-up which of its variables vmreg does not apply:
//! each name vmreg recognises but no setting of vmreg reads, and each name it does not know.
//!
//! [`VENDOR_NAMES`] is the one list of the vendor's names. A setting that starts reading a
//! vendor name lists it in `config::ENV_NAMES` as well; it must stay in this list too (a
//! test checks), so the list is always the whole vendor vocabulary.

use crate::config::ENV_NAMES;

/// Every `ANKA_*` name of the vendor's registry server that vmreg knows, with what it sets
/// there. Whether vmreg applies one is decided by `config::ENV_NAMES`, not here.
pub const VENDOR_NAMES: &[(&str, &str)] = &[
    ("ANKA_LISTEN_ADDR", "the listen address"),
    ("ANKA_BASE_PATH", "the data directory"),
    (
        "ANKA_GRACEFUL_SHUTDOWN_TIMEOUT",
        "the shutdown grace period",
    ),
    ("ANKA_BACKEND_TYPE", "the storage backend"),
    ("ANKA_BACKEND_S3_BUCKET", "the S3 bucket"),
    ("ANKA_BACKEND_S3_UPLOAD_PART_SIZE", "the S3 part size"),
    (
        "ANKA_BACKEND_S3_UPLOAD_CONCURRENCY",
        "the parts of an upload in flight",
    ),
    ("ANKA_BACKEND_S3_USE_PATH_STYLE", "S3 path-style addressing"),
    (
        "ANKA_BACKEND_S3_ABORT_INCOMPLETE_MULTIPART_UPLOAD_DAYS",
        "the bucket's lifecycle rule for abandoned uploads",
    ),
    ("ANKA_ENABLE_AUTH", "root-token authentication"),
    ("ANKA_ROOT_TOKEN", "the root token"),
    (
        "ANKA_ENABLE_API_KEYS",
        "API keys (UAK) and the TAP handshake",
    ),
    (
        "ANKA_API_KEYS_SESSION_TTL",
        "the lifetime of API-key sessions",
    ),
    ("ANKA_ENABLE_AUTHORIZATION", "group permissions"),
    ("ANKA_USE_HTTPS", "HTTPS"),
    ("ANKA_SERVER_CERT", "the server certificate"),
    ("ANKA_SERVER_KEY", "the server key"),
    ("ANKA_MIN_TLS_VERSION", "the lowest TLS version"),
    ("ANKA_CA_CERT", "the CA of client certificates"),
    ("ANKA_CRL", "the certificate revocation list"),
    ("ANKA_ENABLE_METRICS", "the Prometheus endpoint"),
    ("ANKA_ACCESS_LOGS", "access logs"),
    (
        "ANKA_VM_LIST_CACHE_TTL",
        "the cache lifetime of the template list",
    ),
];

/// What vmreg makes of one `ANKA_*` variable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Use {
    /// A setting of vmreg reads it.
    Applied,
    /// The vendor's name, which no setting of vmreg reads; carries what it sets there.
    NotApplied(&'static str),
    /// Not a name vmreg knows.
    Unknown,
}

/// How vmreg treats the variable `name` (which starts with `ANKA_`).
pub fn classify(name: &str) -> Use {
    if ENV_NAMES.iter().any(|(_, names)| names.contains(&name)) {
        return Use::Applied;
    }
    match VENDOR_NAMES.iter().find(|(n, _)| *n == name) {
        Some((_, what)) => Use::NotApplied(what),
        None => Use::Unknown,
    }
}

/// One warning line per `ANKA_*` variable of `names` that vmreg does not apply, sorted.
pub fn warnings<I: IntoIterator<Item = String>>(names: I) -> Vec<String> {
    let mut out: Vec<String> = names
        .into_iter()
        .filter(|n| n.starts_with("ANKA_"))
        .filter_map(|n| match classify(&n) {
            Use::Applied => None,
            Use::NotApplied(what) => Some(format!(
                "{n} sets {what} in the vendor's registry; vmreg does not apply it (ignored)"
            )),
            Use::Unknown => Some(format!(
                "{n} is not a setting vmreg or the vendor's registry knows (ignored)"
            )),
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_vendor_name_a_setting_reads_is_in_the_one_list() {
        for (field, names) in ENV_NAMES {
            for name in names.iter().filter(|n| n.starts_with("ANKA_")) {
                assert!(
                    VENDOR_NAMES.iter().any(|(n, _)| n == name),
                    "{name} (read by {field}) is missing from VENDOR_NAMES"
                );
            }
        }
    }

    #[test]
    fn warns_about_each_name_not_applied_and_only_those() {
        assert_eq!(classify("ANKA_LISTEN_ADDR"), Use::Applied);
        let names = [
            "ANKA_LISTEN_ADDR",
            "ANKA_TYPO_ADDR",
            "PATH",
            "ANKA_TYPO_ADDR",
        ]
        .map(String::from);
        let w = warnings(names);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].starts_with("ANKA_TYPO_ADDR is not a setting"), "{w:?}");
        let unapplied = VENDOR_NAMES
            .iter()
            .find(|(n, _)| classify(n) != Use::Applied);
        if let Some((name, what)) = unapplied {
            let w = warnings([name.to_string()]);
            assert!(
                w[0].contains(what) && w[0].contains("does not apply"),
                "{w:?}"
            );
        }
    }
}
