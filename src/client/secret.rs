//! Credentials as values that cannot leak by accident: their `Debug` and `Display` print a
//! placeholder, so a stray `{:?}` in a log line, an error or a `--json` dump shows nothing.

use std::fmt;
use std::str::FromStr;

use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::pkcs8::DecodePrivateKey;
use rsa::RsaPrivateKey;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::error::{ClientError, ClientResult};

/// A secret string (a root token, a private key's text, a session header).
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value itself, for the one place that must send or store it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// True for an empty value.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self::new(s))
    }
}

// The remotes file is the one place a secret is written out on purpose (mode 0600).
impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Self)
    }
}

/// An API key's RSA private key.
#[derive(Clone)]
pub struct PrivateKey(Box<RsaPrivateKey>);

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKey(<redacted>)")
    }
}

impl PrivateKey {
    /// Reads a key as `POST /v1/apikey` returns it (base64 of PKCS#1 DER), or as PEM
    /// (PKCS#1 `RSA PRIVATE KEY` or PKCS#8 `PRIVATE KEY`). Errors never quote the text.
    pub fn parse(text: &str) -> ClientResult<Self> {
        let text = text.trim();
        let bad = |why: &str| {
            ClientError::Invalid(format!(
                "not an RSA private key ({why}); expected base64 PKCS#1 DER as POST /v1/apikey returns it, or PEM"
            ))
        };
        let key = if text.starts_with("-----BEGIN RSA PRIVATE KEY-----") {
            RsaPrivateKey::from_pkcs1_pem(text).map_err(|_| bad("unreadable PKCS#1 PEM"))?
        } else if text.starts_with("-----BEGIN PRIVATE KEY-----") {
            RsaPrivateKey::from_pkcs8_pem(text).map_err(|_| bad("unreadable PKCS#8 PEM"))?
        } else if text.starts_with("-----BEGIN") {
            return Err(bad(
                "unsupported PEM type; encrypted keys are not supported",
            ));
        } else {
            let compact: String = text.split_whitespace().collect();
            let der = base64_decode(&compact).ok_or_else(|| bad("not base64"))?;
            RsaPrivateKey::from_pkcs1_der(&der)
                .or_else(|_| RsaPrivateKey::from_pkcs8_der(&der))
                .map_err(|_| bad("unreadable DER"))?
        };
        Ok(Self(Box::new(key)))
    }

    /// Reads a key file (see [`PrivateKey::parse`]).
    pub fn read(path: &std::path::Path) -> ClientResult<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| ClientError::io(path, e))?;
        Self::parse(&text).map_err(|e| ClientError::Invalid(format!("{}: {e}", path.display())))
    }

    /// Decrypts an RSA-OAEP (SHA-256, MGF1-SHA-256) ciphertext, blinded against timing.
    pub fn decrypt_oaep(&self, ciphertext: &[u8]) -> Option<Vec<u8>> {
        let mut rng = rsa::rand_core::OsRng;
        self.0
            .decrypt_blinded(&mut rng, rsa::Oaep::new::<sha2::Sha256>(), ciphertext)
            .ok()
    }

    /// The public half (tests encrypt to it).
    pub fn public(&self) -> rsa::RsaPublicKey {
        self.0.to_public_key()
    }
}

/// Standard base64, padded or not.
pub fn base64_decode(text: &str) -> Option<Vec<u8>> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
    use base64::Engine;
    STANDARD
        .decode(text)
        .or_else(|_| STANDARD_NO_PAD.decode(text.trim_end_matches('=')))
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use rsa::pkcs1::EncodeRsaPrivateKey;
    use rsa::pkcs8::EncodePrivateKey;

    fn key() -> RsaPrivateKey {
        RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 1024).unwrap()
    }

    #[test]
    fn a_secret_never_formats_its_value() {
        let s = Secret::new("tok-1234567890");
        assert!(!format!("{s:?} {s} {:?}", Some(&s)).contains("1234567890"));
        assert_eq!(s.expose(), "tok-1234567890");
    }

    #[test]
    fn keys_are_read_from_base64_pkcs1_der_and_both_pem_forms() {
        let k = key();
        let der = k.to_pkcs1_der().unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_bytes());
        let wrapped: String = b64
            .as_bytes()
            .chunks(64)
            .map(|c| format!("{}\n", std::str::from_utf8(c).unwrap()))
            .collect();
        let pkcs1 = k.to_pkcs1_pem(Default::default()).unwrap();
        let pkcs8 = k.to_pkcs8_pem(Default::default()).unwrap();
        for text in [b64.as_str(), &wrapped, &pkcs1, &pkcs8] {
            let parsed = PrivateKey::parse(text).unwrap();
            assert_eq!(parsed.public(), k.to_public_key());
        }
        let debug = format!("{:?}", PrivateKey::parse(&b64).unwrap());
        assert!(!debug.contains(&b64[..20]), "{debug}");
    }

    #[test]
    fn a_bad_key_is_an_error_that_quotes_nothing_of_it() {
        for text in [
            "not a key at all",
            "QUJDREVGR0g=",
            "-----BEGIN RSA PRIVATE KEY-----\nQUJD\n-----END RSA PRIVATE KEY-----",
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nQUJD\n-----END ENCRYPTED PRIVATE KEY-----",
        ] {
            let e = PrivateKey::parse(text).unwrap_err().to_string();
            assert!(e.contains("not an RSA private key"), "{e}");
            assert!(
                !e.contains("QUJD") && !e.contains("not a key at all"),
                "{e}"
            );
        }
    }

    #[test]
    fn oaep_sha256_ciphertexts_decrypt() {
        let k = key();
        let ct = k
            .to_public_key()
            .encrypt(
                &mut rsa::rand_core::OsRng,
                rsa::Oaep::new::<sha2::Sha256>(),
                b"s3cret",
            )
            .unwrap();
        let parsed = PrivateKey(Box::new(k));
        assert_eq!(parsed.decrypt_oaep(&ct).unwrap(), b"s3cret");
        assert!(parsed.decrypt_oaep(b"garbage").is_none());
    }
}
