//! HTTPS: the server's rustls configuration, a certificate that is re-read when its files
//! change (cert-manager rotates them under a running pod), and client certificates
//! verified against a CA and its CRL.
//!
//! A rotated certificate is served to new connections only: connections already open keep
//! the session they negotiated, so transfers in flight are not dropped.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

use crate::config::{TlsSettings, TlsVersion};

/// How often the certificate files are looked at, at most.
const RECHECK_EVERY: Duration = Duration::from_secs(1);

/// The rustls configuration for `settings`.
pub fn server_config(settings: &TlsSettings) -> Result<ServerConfig, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = match settings.min_version {
        TlsVersion::V1_2 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::V1_3 => &[&rustls::version::TLS13],
    };
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| format!("TLS: {e}"))?;
    let builder = match &settings.client_ca {
        Some(ca) => builder.with_client_cert_verifier(client_verifier(
            ca,
            settings.crl.as_deref(),
            provider.clone(),
        )?),
        None => builder.with_no_client_auth(),
    };
    let resolver = ReloadingCert::load(&settings.cert, &settings.key, provider)?;
    let mut config = builder.with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Verifies client certificates against `ca` (and `crl`). A client may come without one
/// (it authenticates otherwise, or not at all when authentication is off); one it does
/// present must be valid, unrevoked and signed by the CA, or the handshake fails.
fn client_verifier(
    ca: &Path,
    crl: Option<&Path>,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in read_certs(ca)? {
        roots
            .add(cert)
            .map_err(|e| format!("CA certificate {}: {e}", ca.display()))?;
    }
    let crls = match crl {
        Some(path) => CertificateRevocationListDer::pem_file_iter(path)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("CRL {}: {e}", path.display()))?,
        None => Vec::new(),
    };
    let mut builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .allow_unauthenticated();
    if !crls.is_empty() {
        builder = builder.with_crls(crls).only_check_end_entity_revocation();
    }
    builder
        .build()
        .map_err(|e| format!("client certificate CA {}: {e}", ca.display()))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("certificate {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "certificate {}: no certificate in it",
            path.display()
        ));
    }
    Ok(certs)
}

fn load_key(
    cert: &Path,
    key: &Path,
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, String> {
    let chain = read_certs(cert)?;
    let der =
        PrivateKeyDer::from_pem_file(key).map_err(|e| format!("key {}: {e}", key.display()))?;
    // from_der checks that the key belongs to the certificate: a rotation caught between
    // its two files fails here and is retried, never served.
    CertifiedKey::from_der(chain, der, provider)
        .map(Arc::new)
        .map_err(|e| {
            format!(
                "certificate {} with key {}: {e}",
                cert.display(),
                key.display()
            )
        })
}

/// What the certificate files looked like when they were read.
type Stamp = [Option<(SystemTime, u64)>; 2];

fn stamp(cert: &Path, key: &Path) -> Stamp {
    let of = |p: &Path| {
        std::fs::metadata(p)
            .ok()
            .and_then(|m| Some((m.modified().ok()?, m.len())))
    };
    [of(cert), of(key)]
}

struct Current {
    key: Arc<CertifiedKey>,
    stamp: Stamp,
    checked: Instant,
}

/// The server certificate, re-read on a handshake when its files changed.
struct ReloadingCert {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Current>,
}

impl std::fmt::Debug for ReloadingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingCert")
            .field("cert", &self.cert)
            .finish_non_exhaustive()
    }
}

impl ReloadingCert {
    fn load(cert: &Path, key: &Path, provider: Arc<CryptoProvider>) -> Result<Self, String> {
        let stamp = stamp(cert, key);
        let loaded = load_key(cert, key, &provider)?;
        Ok(Self {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            provider,
            current: RwLock::new(Current {
                key: loaded,
                stamp,
                checked: Instant::now(),
            }),
        })
    }

    /// Re-reads the files when they changed since the last look (at most once a second).
    fn refresh(&self) {
        let due = self
            .current
            .read()
            .map(|c| c.checked.elapsed() >= RECHECK_EVERY)
            .unwrap_or(false);
        if !due {
            return;
        }
        let Ok(mut current) = self.current.write() else {
            return;
        };
        current.checked = Instant::now();
        let now = stamp(&self.cert, &self.key);
        if now == current.stamp {
            return;
        }
        match load_key(&self.cert, &self.key, &self.provider) {
            Ok(key) => {
                current.key = key;
                current.stamp = now;
                tracing::info!(cert = %self.cert.display(), "reloaded the server certificate");
            }
            // Keep serving the old one; the next look retries.
            Err(e) => tracing::warn!(error = %e, "could not reload the server certificate"),
        }
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.refresh();
        self.current.read().ok().map(|c| c.key.clone())
    }
}
