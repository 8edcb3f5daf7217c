//! Caps on the metadata a client can grow: a registry on a shared network must not let one
//! client fill Redis or make a record that every listing and pull then has to read whole.
//! Lengths and per-request counts are fixed in [`crate::model`] and [`super::push`]; the
//! counts an operator may want to size live here.

use super::{Registry, RegistryError, RegistryResult};
use crate::auth::{AuthMethod, Identity};
use crate::meta::{keys, MetaTx};

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
    /// Push sessions, and apart from them OCI blob uploads, one identity holds open at
    /// once (see [`Uploader`]).
    pub max_upload_sessions_per_identity: u64,
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
            max_upload_sessions_per_identity: DEFAULT_UPLOADS_PER_IDENTITY,
            max_page: 1000,
        }
    }
}

/// The default cap on the uploads one identity holds open: a tenth of the registry-wide
/// cap's default, so that at least ten identities must each fill their share before the
/// registry is full and one key can never lock root and the others out; still room for a
/// CI key driving a hundred pushes at once, or twenty OCI clients pushing five layers each
/// in parallel (as docker does), with uploads abandoned by killed clients waiting out
/// their expiry beside them.
pub const DEFAULT_UPLOADS_PER_IDENTITY: u64 = 100;

/// Who opens an upload, as `--max-upload-sessions-per-identity` counts it: the root token
/// (root sessions included), an API key (whether its session came by the TAP handshake or
/// by the OCI token endpoint), a client certificate's CN. With authentication off, nobody:
/// every client is the same anonymous caller, so a cap per identity would be only a
/// second, lower registry-wide cap; `--max-upload-sessions` bounds them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Uploader {
    /// The identity's name in the metadata store; `None` when it is not counted.
    key: Option<String>,
    /// The identity as a refusal names it.
    label: String,
}

impl Uploader {
    /// The uploader `identity` is.
    pub fn of(identity: &Identity) -> Self {
        // Escaped, so that no user name can reach into another kind's or another
        // user's key (a certificate's CN may hold any character).
        let user = percent_encoding::utf8_percent_encode(
            &identity.user,
            percent_encoding::NON_ALPHANUMERIC,
        );
        let (key, label) = match &identity.method {
            AuthMethod::Open => return Self::anonymous(),
            AuthMethod::RootToken | AuthMethod::RootSession { .. } => {
                ("root".to_string(), "root".to_string())
            }
            AuthMethod::ApiKey { .. } => (
                format!("key:{user}"),
                format!("API key {:?}", identity.user),
            ),
            AuthMethod::Certificate => (
                format!("cert:{user}"),
                format!("client certificate {:?}", identity.user),
            ),
            AuthMethod::Oci => (format!("oci:{user}"), format!("user {:?}", identity.user)),
        };
        Self {
            key: Some(key),
            label,
        }
    }

    /// The caller with authentication off, not counted per identity.
    pub fn anonymous() -> Self {
        Self {
            key: None,
            label: "anonymous".into(),
        }
    }

    /// The identity's name in the metadata store, when it is counted.
    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }
}

/// Which front door's uploads an identity's places are counted for: each apart, as the
/// registry-wide cap counts them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Door {
    /// Push sessions of the vendor protocol.
    Push,
    /// OCI blob uploads.
    Oci,
}

impl Door {
    /// The set of the uploads `holder` holds open.
    fn set(self, holder: &str) -> String {
        match self {
            Door::Push => keys::held_sessions(holder),
            Door::Oci => keys::held_oci_uploads(holder),
        }
    }

    /// The set of every open upload, which the transactions that open and close an
    /// upload change with its record, whichever version of this code runs them.
    fn open(self) -> &'static str {
        match self {
            Door::Push => keys::SESSIONS,
            Door::Oci => keys::OCI_UPLOADS,
        }
    }
}

/// Releases the place upload `id` held among `holder`'s, in the transaction that closes
/// it (committed, aborted, cancelled, finished or expired).
pub(crate) fn release_upload_place(
    tx: &mut Box<dyn MetaTx>,
    door: Door,
    holder: Option<&str>,
    id: &str,
) {
    if let Some(holder) = holder {
        tx.set_remove(&door.set(holder), id);
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

    /// Takes a place for upload `id` among those `by` holds open, in the transaction that
    /// opens it; refuses when `by` holds as many as `--max-upload-sessions-per-identity`
    /// allows. The count is read in the transaction, so the cap holds exactly however
    /// many replicas open uploads for one identity at once.
    pub(crate) async fn hold_upload_place(
        &self,
        tx: &mut Box<dyn MetaTx>,
        door: Door,
        by: &Uploader,
        id: &str,
    ) -> RegistryResult<()> {
        let Some(holder) = by.key() else {
            return Ok(());
        };
        let set = door.set(holder);
        let max = self.limits.max_upload_sessions_per_identity;
        let held = tx.count(&set).await?;
        if held >= max {
            // Only at the cap: places whose upload is no longer open go back (an upload
            // closed by a replica of a version that did not count places, during a
            // rolling upgrade). The places are read before the open uploads: a place seen
            // was taken with its upload's membership, so an upload missing then is closed.
            // Only ids are read, never the uploads' records.
            let members = self.meta.members(&set).await?;
            let open: std::collections::HashSet<String> =
                self.meta.members(door.open()).await?.into_iter().collect();
            let gone: Vec<&String> = members.iter().filter(|m| !open.contains(*m)).collect();
            let holding = held.saturating_sub(gone.len() as u64);
            if holding >= max {
                let (what, ends) = match door {
                    Door::Push => ("open pushes", "are committed, aborted or expire"),
                    Door::Oci => ("open blob uploads", "finish, are cancelled or expire"),
                };
                return Err(RegistryError::TooManyUploads(format!(
                    "{} holds {holding} {what}, and one identity may hold {max} \
                     (--max-upload-sessions-per-identity); retry once some {ends}",
                    by.label
                )));
            }
            for member in gone {
                tx.set_remove(&set, member);
            }
        }
        tx.set_add(&set, id);
        Ok(())
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

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;
    use crate::meta::MetaStore;
    use crate::protocol::CommitRequest;
    use crate::registry::oci::OciError;
    use crate::registry::test_support::{one_layer, registry};

    fn key(id: &str) -> Identity {
        Identity {
            user: id.into(),
            groups: Vec::new(),
            method: AuthMethod::ApiKey {
                session: "s".into(),
                expires: u64::MAX,
            },
        }
    }

    fn capped(dir: &std::path::Path, max: u64) -> Registry {
        registry(dir).with_limits(Limits {
            max_upload_sessions_per_identity: max,
            ..Limits::default()
        })
    }

    #[test]
    fn identities_of_different_kinds_or_names_never_share_a_count() {
        let cert = |cn: &str| Identity {
            user: cn.into(),
            groups: Vec::new(),
            method: AuthMethod::Certificate,
        };
        let named = [
            Uploader::of(&Identity::root()),
            Uploader::of(&key("root")),
            Uploader::of(&cert("root")),
            Uploader::of(&key("a:b")),
            Uploader::of(&key("a%3Ab")),
            Uploader::of(&cert("x\0y")),
        ];
        let keys: std::collections::HashSet<&str> =
            named.iter().map(|u| u.key().unwrap()).collect();
        assert_eq!(keys.len(), named.len(), "{named:?}");
        assert!(keys.iter().all(|k| !k.contains('\0')));
        assert_eq!(Uploader::of(&Identity::open()).key(), None);
        // A root session from the token endpoint is root, whichever way it logged in.
        let session = Identity {
            method: AuthMethod::RootSession { expires: u64::MAX },
            ..Identity::root()
        };
        assert_eq!(
            Uploader::of(&session).key(),
            Uploader::of(&Identity::root()).key()
        );
    }

    /// Pushes and OCI uploads are counted apart, per identity; every way a session ends
    /// frees its place: commit, abort, cancel, finish and expiry.
    #[tokio::test]
    async fn each_way_an_upload_ends_frees_its_place() {
        let dir = tempfile::tempdir().unwrap();
        let r = capped(dir.path(), 2);
        let (ci, other) = (Uploader::of(&key("ci")), Uploader::of(&key("other")));
        let negotiate = |tag: &str, by: &Uploader| {
            let req = one_layer(Uuid::new_v4(), &format!("t-{tag}"), tag, "l.ank", b"x");
            let (r, by) = (r.clone(), by.clone());
            async move { r.negotiate(req, &by).await }
        };
        let first = negotiate("a", &ci).await.unwrap();
        let second = negotiate("b", &ci).await.unwrap();
        match negotiate("c", &ci).await {
            Err(RegistryError::TooManyUploads(m)) => {
                assert!(m.contains("--max-upload-sessions-per-identity"), "{m}");
                assert!(m.contains("API key \"ci\""), "{m}");
            }
            other => panic!("{other:?}"),
        }
        negotiate("d", &other).await.unwrap();
        negotiate("e", &Uploader::of(&Identity::root()))
            .await
            .unwrap();
        for _ in 0..3 {
            negotiate("open", &Uploader::anonymous()).await.unwrap();
        }

        // An abort frees a place, a commit too.
        r.abort(&first.session).await.unwrap();
        negotiate("f", &ci).await.unwrap();
        assert!(negotiate("g", &ci).await.is_err());
        let body =
            futures_util::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"x"))]);
        r.upload(&second.session, "l.ank", 0, body).await.unwrap();
        r.commit(&second.session, CommitRequest::default())
            .await
            .unwrap();
        negotiate("h", &ci).await.unwrap();
        assert!(negotiate("i", &ci).await.is_err());

        // OCI uploads have places of their own, freed by a cancel and a finish.
        let start = |by: &Uploader| {
            let (r, by) = (r.clone(), by.clone());
            async move { r.oci_start_upload("acme/vm", &by).await }
        };
        let a = start(&ci).await.unwrap();
        let b = start(&ci).await.unwrap();
        assert!(matches!(
            start(&ci).await,
            Err(OciError::TooManyUploads(m)) if m.contains("--max-upload-sessions-per-identity")
        ));
        start(&other).await.unwrap();
        r.oci_cancel("acme/vm", &a).await.unwrap();
        start(&ci).await.unwrap();
        let digest = format!("sha256:{}", crate::digest::sha256_hex(b"blob"));
        let body = futures_util::stream::iter([Ok::<_, std::io::Error>(
            bytes::Bytes::from_static(b"blob"),
        )]);
        r.oci_finish("acme/vm", &b, None, &digest, body)
            .await
            .unwrap();
        start(&ci).await.unwrap();
        assert!(start(&ci).await.is_err());

        // Expiry frees them all.
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
        r.purge_stale_sessions(0).await.unwrap();
        for set in [
            keys::held_sessions("key:ci"),
            keys::held_oci_uploads("key:ci"),
        ] {
            assert_eq!(r.meta().count(&set).await.unwrap(), 0, "{set}");
        }
        negotiate("j", &ci).await.unwrap();
        negotiate("k", &ci).await.unwrap();
        start(&ci).await.unwrap();
        start(&ci).await.unwrap();
    }

    /// A place whose upload was closed by code that did not release it (an older replica,
    /// during a rolling upgrade) is given back once the cap is reached.
    #[tokio::test]
    async fn a_place_whose_upload_was_closed_unreleased_is_given_back_at_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let r = capped(dir.path(), 2);
        let ci = Uploader::of(&key("ci"));
        let meta: &dyn MetaStore = r.meta();
        let held = async |set: &str| {
            let mut members = meta.members(set).await.unwrap();
            members.sort();
            members
        };

        // OCI: the second upload is cancelled the way older code did, place left held.
        let kept = r.oci_start_upload("acme/vm", &ci).await.unwrap();
        let closed = r.oci_start_upload("acme/vm", &ci).await.unwrap();
        crate::registry::transact(meta, async |tx| {
            tx.delete(&keys::oci_upload(&closed));
            tx.set_remove(keys::OCI_UPLOADS, &closed);
            Ok(())
        })
        .await
        .unwrap();
        let set = keys::held_oci_uploads("key:ci");
        assert_eq!(held(&set).await.len(), 2);
        let again = r.oci_start_upload("acme/vm", &ci).await.unwrap();
        let mut want = vec![kept, again];
        want.sort();
        assert_eq!(held(&set).await, want, "the closed one's place went back");
        assert!(r.oci_start_upload("acme/vm", &ci).await.is_err());

        // Pushes: the same with a session aborted by older code.
        let negotiate = |tag: &str| {
            let req = one_layer(Uuid::new_v4(), &format!("t-{tag}"), tag, "l.ank", b"x");
            let (r, ci) = (r.clone(), ci.clone());
            async move { r.negotiate(req, &ci).await }
        };
        let kept = negotiate("a").await.unwrap().session;
        let closed = negotiate("b").await.unwrap().session;
        crate::registry::transact(meta, async |tx| {
            tx.delete(&keys::session(&closed));
            tx.set_remove(keys::SESSIONS, &closed);
            Ok(())
        })
        .await
        .unwrap();
        let again = negotiate("c").await.unwrap().session;
        let mut want = vec![kept, again];
        want.sort();
        assert_eq!(held(&keys::held_sessions("key:ci")).await, want);
        assert!(matches!(
            negotiate("d").await,
            Err(RegistryError::TooManyUploads(_))
        ));
    }
}
