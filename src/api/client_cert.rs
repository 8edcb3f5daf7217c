//! Who a client certificate names: its subject's CN is the user, and its O (or OU, when
//! configured) entries are the groups. The certificate is either the one verified in the
//! TLS handshake, or, only when explicitly trusted, one a TLS-terminating proxy forwards in
//! `Ssl-Client-Verify: SUCCESS` and `Ssl-Client-Cert` (URL-encoded PEM).

use actix_web::HttpRequest;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use crate::config::CertGroups;

/// The verified client certificate of a TLS connection (DER), kept with the connection.
#[derive(Clone, Debug)]
pub struct PeerCertificate(pub Vec<u8>);

/// A certificate's user and groups.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertIdentity {
    /// The subject's Common Name.
    pub user: String,
    /// The subject's O or OU entries.
    pub groups: Vec<String>,
}

/// How the server takes identities from certificates.
#[derive(Clone, Copy, Debug, Default)]
pub struct CertPolicy {
    /// Which subject field holds groups.
    pub groups: CertGroups,
    /// Whether a proxy's forwarded certificate is believed.
    pub trust_forwarded: bool,
}

/// The identity of the request's client certificate: the one verified on this connection,
/// else a forwarded one when the policy trusts forwarding. `None` without a usable one.
pub fn request_identity(req: &HttpRequest, policy: CertPolicy) -> Option<CertIdentity> {
    if let Some(cert) = req.conn_data::<PeerCertificate>() {
        return identity(&cert.0, policy.groups);
    }
    if !policy.trust_forwarded {
        return None;
    }
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    if header("Ssl-Client-Verify")? != "SUCCESS" {
        return None;
    }
    let pem = percent_encoding::percent_decode_str(header("Ssl-Client-Cert")?)
        .decode_utf8()
        .ok()?;
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).ok()?;
    identity(&der, policy.groups)
}

/// The user and groups a DER certificate's subject names; `None` without a CN.
pub fn identity(der: &[u8], groups_from: CertGroups) -> Option<CertIdentity> {
    let subject = subject(der)?;
    let wanted: &[u8] = match groups_from {
        CertGroups::Organization => OID_O,
        CertGroups::OrganizationalUnit => OID_OU,
    };
    let mut user = None;
    let mut groups = Vec::new();
    for (oid, value) in attributes(subject) {
        if oid == OID_CN && user.is_none() {
            user = Some(value);
        } else if oid == wanted {
            groups.push(value);
        }
    }
    let user = user.filter(|u| !u.is_empty())?;
    Some(CertIdentity { user, groups })
}

const OID_CN: &[u8] = &[0x55, 0x04, 0x03];
const OID_O: &[u8] = &[0x55, 0x04, 0x0a];
const OID_OU: &[u8] = &[0x55, 0x04, 0x0b];

/// One DER element: its tag, its contents, and what follows it.
fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// The contents of the certificate's subject Name.
fn subject(der: &[u8]) -> Option<&[u8]> {
    const SEQUENCE: u8 = 0x30;
    let (tag, cert, _) = element(der)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, tbs, _) = element(cert)?;
    if tag != SEQUENCE {
        return None;
    }
    let mut rest = tbs;
    let (tag, _, after) = element(rest)?;
    if tag == 0xa0 {
        rest = after; // the explicit version
    }
    // serialNumber, signature, issuer, validity, then the subject.
    for _ in 0..4 {
        rest = element(rest)?.2;
    }
    let (tag, subject, _) = element(rest)?;
    (tag == SEQUENCE).then_some(subject)
}

/// The (OID, text value) pairs of a Name's attributes, in order.
fn attributes(mut name: &[u8]) -> Vec<(&[u8], String)> {
    let mut out = Vec::new();
    while let Some((_, mut rdn, rest)) = element(name) {
        name = rest;
        while let Some((_, pair, more)) = element(rdn) {
            rdn = more;
            let Some((0x06, oid, value)) = element(pair) else {
                continue;
            };
            // UTF8String, PrintableString, T61String, IA5String.
            if let Some((0x0c | 0x13 | 0x14 | 0x16, text, _)) = element(value) {
                out.push((oid, String::from_utf8_lossy(text).into_owned()));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// DER of one element.
    fn der(tag: u8, contents: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        if contents.len() < 0x80 {
            out.push(contents.len() as u8);
        } else {
            out.push(0x82);
            out.extend_from_slice(&(contents.len() as u16).to_be_bytes());
        }
        out.extend_from_slice(contents);
        out
    }

    fn attr(oid: &[u8], value: &str) -> Vec<u8> {
        let pair = [der(0x06, oid), der(0x0c, value.as_bytes())].concat();
        der(0x31, &der(0x30, &pair))
    }

    /// A certificate shaped enough for the subject to be found.
    fn cert(subject: &[Vec<u8>]) -> Vec<u8> {
        let tbs = [
            der(0xa0, &der(0x02, &[2])),
            der(0x02, &[1; 20]),
            der(0x30, &der(0x06, &[1, 2, 3])),
            der(0x30, &attr(OID_CN, "issuer")),
            der(0x30, &[0; 200]),
            der(0x30, &subject.concat()),
            der(0x30, &[]),
        ]
        .concat();
        der(
            0x30,
            &[der(0x30, &tbs), der(0x30, &[]), der(0x03, &[0])].concat(),
        )
    }

    #[test]
    fn cn_is_the_user_and_o_or_ou_the_groups() {
        let c = cert(&[
            attr(OID_O, "builders"),
            attr(OID_OU, "ci"),
            attr(OID_CN, "node1"),
            attr(OID_O, "pullers"),
        ]);
        assert_eq!(
            identity(&c, CertGroups::Organization),
            Some(CertIdentity {
                user: "node1".into(),
                groups: vec!["builders".into(), "pullers".into()]
            })
        );
        assert_eq!(
            identity(&c, CertGroups::OrganizationalUnit).unwrap().groups,
            vec!["ci".to_string()]
        );
    }

    #[test]
    fn no_cn_or_garbage_is_no_identity() {
        assert_eq!(
            identity(&cert(&[attr(OID_O, "x")]), CertGroups::Organization),
            None
        );
        assert_eq!(identity(b"", CertGroups::Organization), None);
        assert_eq!(
            identity(&[0x30, 0x84, 0xff], CertGroups::Organization),
            None
        );
        let mut truncated = cert(&[attr(OID_CN, "a")]);
        truncated.truncate(truncated.len() / 2);
        assert_eq!(identity(&truncated, CertGroups::Organization), None);
    }
}
