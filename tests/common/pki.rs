//! Test certificates made with openssl: CAs, server and client certificates, CRLs.
//! openssl is a prerequisite of the suite (`scripts/test.sh` installs it), so a missing
//! one fails the test rather than skipping it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Runs openssl with `args` in `dir`.
pub fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("openssl is needed by the TLS tests: install it (scripts/test.sh does)");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A directory of certificates.
pub struct Pki {
    /// Where the files are: `NAME.pem`, `NAME.key`.
    pub dir: PathBuf,
}

impl Pki {
    /// Certificates in `dir`.
    pub fn new(dir: &Path) -> Pki {
        std::fs::create_dir_all(dir).unwrap();
        Pki {
            dir: dir.to_path_buf(),
        }
    }

    /// The path of a file of this PKI.
    pub fn path(&self, file: &str) -> String {
        self.dir.join(file).display().to_string()
    }

    /// A self-signed CA `name` (`name.pem`, `name.key`).
    pub fn ca(&self, name: &str) -> &Self {
        let (key, pem) = (format!("{name}.key"), format!("{name}.pem"));
        let subject = format!("/CN={name}");
        openssl(
            &self.dir,
            &[
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", &key, "-out", &pem,
                "-days", "1", "-subj", &subject,
            ],
        );
        self
    }

    /// A server certificate for 127.0.0.1, signed by `ca`.
    pub fn server(&self, ca: &str, name: &str) -> &Self {
        self.issue(
            ca,
            name,
            "/CN=127.0.0.1",
            "serverAuth",
            "subjectAltName=IP:127.0.0.1\n",
        )
    }

    /// A client certificate with `subject` (`/CN=user/O=group…`), signed by `ca`.
    pub fn client(&self, ca: &str, name: &str, subject: &str) -> &Self {
        self.issue(ca, name, subject, "clientAuth", "")
    }

    fn issue(&self, ca: &str, name: &str, subject: &str, usage: &str, san: &str) -> &Self {
        let (key, csr, pem, ext) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
            format!("{name}.ext"),
        );
        std::fs::write(
            self.dir.join(&ext),
            format!("{san}basicConstraints=CA:FALSE\nextendedKeyUsage={usage}\n"),
        )
        .unwrap();
        openssl(
            &self.dir,
            &[
                "req", "-newkey", "rsa:2048", "-nodes", "-keyout", &key, "-out", &csr, "-subj",
                subject,
            ],
        );
        let (ca_pem, ca_key) = (format!("{ca}.pem"), format!("{ca}.key"));
        openssl(
            &self.dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &ca_pem,
                "-CAkey",
                &ca_key,
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                "1",
                "-extfile",
                &ext,
            ],
        );
        self
    }

    /// A CRL of `ca` (`ca.crl.pem`) revoking the certificates `revoked`.
    pub fn crl(&self, ca: &str, revoked: &[&str]) -> String {
        let db = self.dir.join(format!("{ca}.db"));
        std::fs::create_dir_all(&db).unwrap();
        std::fs::write(db.join("index.txt"), "").unwrap();
        std::fs::write(db.join("crlnumber"), "01\n").unwrap();
        let cnf = format!("{ca}.cnf");
        std::fs::write(
            self.dir.join(&cnf),
            format!(
                "[ca]\ndefault_ca = d\n[d]\ndatabase = {db}/index.txt\ncrlnumber = {db}/crlnumber\n\
                 default_md = sha256\ndefault_crl_days = 1\ncrl_extensions = crl_ext\n\
                 [crl_ext]\nauthorityKeyIdentifier = keyid:always\n",
                db = db.display()
            ),
        )
        .unwrap();
        let (ca_pem, ca_key) = (format!("{ca}.pem"), format!("{ca}.key"));
        for name in revoked {
            let pem = format!("{name}.pem");
            openssl(
                &self.dir,
                &[
                    "ca", "-config", &cnf, "-keyfile", &ca_key, "-cert", &ca_pem, "-revoke", &pem,
                ],
            );
        }
        let out = format!("{ca}.crl.pem");
        openssl(
            &self.dir,
            &[
                "ca", "-config", &cnf, "-keyfile", &ca_key, "-cert", &ca_pem, "-gencrl", "-out",
                &out,
            ],
        );
        self.path(&out)
    }

    /// The certificate and key of `name` in one PEM, as clients load an identity.
    pub fn identity_pem(&self, name: &str) -> Vec<u8> {
        [
            std::fs::read(self.dir.join(format!("{name}.pem"))).unwrap(),
            std::fs::read(self.dir.join(format!("{name}.key"))).unwrap(),
        ]
        .concat()
    }
}
