//! What the relay reads in X.509 certificates, without a certificate library: the
//! `tls-server-end-point` channel-binding hash (RFC 5929, as PostgreSQL's
//! `be_tls_get_certificate_hash` and libpq's `pgtls_get_peer_certificate_hash` compute it) and
//! the subject's common name (what `cert` authentication maps to a user, as
//! `be-secure-openssl.c` reads `X509_NAME_get_text_by_NID(…, NID_commonName, …)`).
//!
//! Certificates come from rustls, which has already parsed and checked them; this walks the
//! few DER elements it needs with bounds checks, and answers `None` for anything it does not
//! understand.

use sha2::{Digest, Sha224, Sha256, Sha384, Sha512};

/// The `tls-server-end-point` channel-binding data (RFC 5929) for a server certificate: its
/// DER hashed with the digest of its own signature algorithm, MD5 and SHA-1 becoming SHA-256.
///
/// `None` when the DER cannot be walked or the algorithm has no single digest (Ed25519,
/// RSASSA-PSS), as PostgreSQL's `be_tls_get_certificate_hash` also refuses them; SCRAM then
/// runs without channel binding.
pub fn server_end_point_hash(cert_der: &[u8]) -> Option<Vec<u8>> {
    let oid = signature_algorithm_oid(cert_der)?;
    let (_, digest) = END_POINT_DIGESTS.iter().find(|(known, _)| *known == oid)?;
    Some(match digest {
        EndPointDigest::Sha224 => Sha224::digest(cert_der).to_vec(),
        EndPointDigest::Sha256 => Sha256::digest(cert_der).to_vec(),
        EndPointDigest::Sha384 => Sha384::digest(cert_der).to_vec(),
        EndPointDigest::Sha512 => Sha512::digest(cert_der).to_vec(),
    })
}

enum EndPointDigest {
    Sha224,
    Sha256,
    Sha384,
    Sha512,
}

/// Signature algorithm OIDs (DER contents) and the digest RFC 5929 picks for each.
#[rustfmt::skip]
const END_POINT_DIGESTS: &[(&[u8], EndPointDigest)] = &[
    // md5WithRSAEncryption, sha1WithRSAEncryption: upgraded to SHA-256.
    (&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x04], EndPointDigest::Sha256),
    (&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x05], EndPointDigest::Sha256),
    (&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b], EndPointDigest::Sha256),
    (&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c], EndPointDigest::Sha384),
    (&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d], EndPointDigest::Sha512),
    (&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0e], EndPointDigest::Sha224),
    // ecdsa-with-SHA1 (upgraded), then ecdsa-with-SHA224/256/384/512.
    (&[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x01], EndPointDigest::Sha256),
    (&[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x01], EndPointDigest::Sha224),
    (&[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02], EndPointDigest::Sha256),
    (&[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03], EndPointDigest::Sha384),
    (&[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04], EndPointDigest::Sha512),
    // dsa-with-sha1 (upgraded), dsa-with-sha256.
    (&[0x2a, 0x86, 0x48, 0xce, 0x38, 0x04, 0x03], EndPointDigest::Sha256),
    (&[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x03, 0x02], EndPointDigest::Sha256),
];

/// `Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm SEQUENCE { OID, … }, … }`.
fn signature_algorithm_oid(cert: &[u8]) -> Option<&[u8]> {
    let (certificate, _) = der_element(cert, 0x30)?;
    let (_tbs, after_tbs) = der_element(certificate, 0x30)?;
    let (algorithm, _) = der_element(after_tbs, 0x30)?;
    let (oid, _) = der_element(algorithm, 0x06)?;
    Some(oid)
}

/// One DER element with `tag`: its contents and what follows it.
fn der_element(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&found, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    if found != tag {
        return None;
    }
    let (len, rest) = match first {
        0..=0x7f => (usize::from(first), rest),
        0x81..=0x84 => {
            let (bytes, rest) = rest.split_at_checked(usize::from(first & 0x7f))?;
            (
                bytes.iter().fold(0, |len, b| (len << 8) | usize::from(*b)),
                rest,
            )
        }
        _ => return None,
    };
    rest.split_at_checked(len)
}

/// TBSCertificate from its serialNumber on: `[0] version` (optional) skipped.
fn from_serial(cert_der: &[u8]) -> Option<&[u8]> {
    let (certificate, _) = der_element(cert_der, 0x30)?;
    let (tbs, _) = der_element(certificate, 0x30)?;
    Some(match der_element(tbs, 0xa0) {
        Some((_, rest)) => rest,
        None => tbs,
    })
}

/// The serial number in upper-case hexadecimal, as `openssl x509 -serial` prints it.
pub fn serial_hex(cert_der: &[u8]) -> Option<String> {
    let (serial, _) = der_element(from_serial(cert_der)?, 0x02)?;
    // A leading zero only keeps a positive number positive; openssl leaves it out.
    let serial = match serial {
        [0, rest @ ..] if !rest.is_empty() => rest,
        other => other,
    };
    Some(serial.iter().map(|b| format!("{b:02X}")).collect())
}

/// The subject's common name (OID 2.5.4.3), the first one when there are several; `None`
/// without one, or when it is not text.
pub fn subject_common_name(cert_der: &[u8]) -> Option<String> {
    const CN: &[u8] = &[0x55, 0x04, 0x03];
    // serialNumber, signature, issuer, validity, subject, …
    let (_, rest) = der_element(from_serial(cert_der)?, 0x02)?;
    let (_, rest) = der_element(rest, 0x30)?;
    let (_, rest) = der_element(rest, 0x30)?;
    let (_, rest) = der_element(rest, 0x30)?;
    let (mut subject, _) = der_element(rest, 0x30)?;
    while !subject.is_empty() {
        let (mut set, after) = der_element(subject, 0x31)?;
        subject = after;
        while !set.is_empty() {
            let (attribute, after) = der_element(set, 0x30)?;
            set = after;
            let (oid, value) = der_element(attribute, 0x06)?;
            if oid == CN {
                return string_value(value);
            }
        }
    }
    None
}

/// A DirectoryString: UTF8String, PrintableString, IA5String, T61String (taken as Latin-1 is
/// not: only ASCII), BMPString refused.
fn string_value(element: &[u8]) -> Option<String> {
    let (&tag, _) = element.split_first()?;
    let (bytes, _) = der_element(element, tag)?;
    match tag {
        0x0c | 0x13 | 0x16 => String::from_utf8(bytes.to_vec()).ok(),
        0x14 if bytes.is_ascii() => String::from_utf8(bytes.to_vec()).ok(),
        _ => None,
    }
}
