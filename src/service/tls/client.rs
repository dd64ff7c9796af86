//! TLS for the upstream connection: a rustls client configuration per `sslmode`, and the
//! `tls-server-end-point` channel-binding hash of the server certificate.
//!
//! This mirrors libpq's `fe-secure-openssl.c` (`initialize_SSL`, `verify_cb`,
//! `pgtls_get_peer_certificate_hash`):
//! - `require` (and `prefer`, `allow`) encrypt without checking the certificate, but if the
//!   root certificate file exists the chain is checked, exactly like `verify-ca`;
//! - `verify-ca` checks the chain against `sslrootcert` (default `~/.postgresql/root.crt`),
//!   which must exist;
//! - `verify-full` also checks the host name (rustls' standard WebPKI verifier);
//! - a client certificate is presented when the `sslcert` file exists, and then `sslkey` must
//!   exist too.
//!
//! Even when the certificate is not checked, the handshake signatures are, so the peer holds
//! the key of the certificate it sent and the channel-binding hash means something. TLS 1.2 is
//! the minimum; the crypto provider is `ring`. Not supported: `sslrootcert=system`, CRLs, and
//! libpq's permission check on the key file.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{WebPkiServerVerifier, verify_server_cert_signed_by_trust_anchor};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::server::ParsedCertificate;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use crate::proto::conninfo::{ConnInfo, SslMode};

/// Why a TLS configuration could not be built. Texts follow libpq's where it has one.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// `verify-ca`/`verify-full` and the root certificate file does not exist.
    #[error(
        "root certificate file \"{}\" does not exist\nEither provide the file or change sslmode to disable server certificate verification.",
        .0.display()
    )]
    RootCertMissing(PathBuf),
    /// `verify-ca`/`verify-full`, no `sslrootcert` and no home directory.
    #[error(
        "could not get home directory to locate root certificate file\nEither provide the file or change sslmode to disable server certificate verification."
    )]
    NoRootCertPath,
    /// `sslrootcert=system` (PostgreSQL 16+): the relay carries no system trust store.
    #[error("sslrootcert=system is not supported")]
    SystemRoots,
    /// A certificate or key file could not be read or parsed.
    #[error("could not load \"{}\": {reason}", path.display())]
    Load {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The client certificate exists but its key does not.
    #[error("certificate present, but not private key file \"{}\"", .0.display())]
    KeyMissing(PathBuf),
    /// The host is not a valid DNS name or IP address.
    #[error("invalid server name \"{0}\" for TLS")]
    ServerName(String),
    /// rustls refused the configuration.
    #[error("TLS configuration error: {0}")]
    Rustls(#[from] rustls::Error),
    /// The WebPKI verifier could not be built.
    #[error("TLS verifier error: {0}")]
    Verifier(#[from] rustls::client::VerifierBuilderError),
}

/// Builds the client configuration `info.sslmode` asks for (`disable` is the caller's
/// business: it never starts TLS).
///
/// # Errors
/// A missing root certificate file under `verify-ca`/`verify-full`, unreadable certificate
/// or key files, or a client certificate without its key.
pub fn client_config(info: &ConnInfo) -> Result<ClientConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = load_roots(info)?.map(Arc::new);
    let verifier: Arc<dyn ServerCertVerifier> = match (info.sslmode, roots) {
        (SslMode::VerifyFull, Some(roots)) => {
            WebPkiServerVerifier::builder_with_provider(roots, provider.clone()).build()?
        }
        (_, roots) => Arc::new(LibpqVerifier {
            roots,
            provider: provider.clone(),
        }),
    };
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS12, &rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    Ok(match load_client_cert(info)? {
        Some((certs, key)) => builder.with_client_auth_cert(certs, key)?,
        None => builder.with_no_client_auth(),
    })
}

/// The name to verify and to send as SNI: a DNS name or a literal IP address.
///
/// # Errors
/// [`TlsError::ServerName`] for a string that is neither.
pub fn server_name(host: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(host.to_owned()).map_err(|_| TlsError::ServerName(host.to_owned()))
}

/// The trust anchors, or `None` when nothing is to be checked (libpq: no root file and a
/// mode below `verify-ca`).
fn load_roots(info: &ConnInfo) -> Result<Option<RootCertStore>, TlsError> {
    let verify = matches!(info.sslmode, SslMode::VerifyCa | SslMode::VerifyFull);
    let path = match &info.sslrootcert {
        Some(path) if path.as_os_str() == "system" => return Err(TlsError::SystemRoots),
        Some(path) if path.exists() => path,
        Some(path) if verify => return Err(TlsError::RootCertMissing(path.clone())),
        None if verify => return Err(TlsError::NoRootCertPath),
        _ => return Ok(None),
    };
    let mut roots = RootCertStore::empty();
    for cert in read_certs(path)? {
        roots.add(cert).map_err(|e| load_error(path, e))?;
    }
    Ok(Some(roots))
}

type ClientCert = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

/// The client certificate chain and key, when the certificate file exists.
fn load_client_cert(info: &ConnInfo) -> Result<Option<ClientCert>, TlsError> {
    let (Some(cert), Some(key)) = (&info.sslcert, &info.sslkey) else {
        return Ok(None);
    };
    if !cert.exists() {
        return Ok(None);
    }
    if !key.exists() {
        return Err(TlsError::KeyMissing(key.clone()));
    }
    let private_key = PrivateKeyDer::from_pem_file(key).map_err(|e| load_error(key, e))?;
    Ok(Some((read_certs(cert)?, private_key)))
}

/// Every certificate in a PEM file; at least one.
fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|e| load_error(path, e))?;
    if certs.is_empty() {
        return Err(load_error(path, "no certificates found"));
    }
    Ok(certs)
}

fn load_error(path: &Path, reason: impl ToString) -> TlsError {
    TlsError::Load {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

/// The verifier for every mode but `verify-full`: the chain is checked against `roots` when
/// there are any (`verify-ca`, or `require` with a root file), the host name never; handshake
/// signatures always.
#[derive(Debug)]
struct LibpqVerifier {
    roots: Option<Arc<RootCertStore>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for LibpqVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(roots) = &self.roots {
            let cert = ParsedCertificate::try_from(end_entity)?;
            let algorithms = self.provider.signature_verification_algorithms.all;
            verify_server_cert_signed_by_trust_anchor(
                &cert,
                roots,
                intermediates,
                now,
                algorithms,
            )?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::certificate::server_end_point_hash;
    use crate::proto::conninfo::Env;
    use rustls::{CertificateError, Connection, Error, ServerConfig, ServerConnection};
    use sha2::{Digest, Sha256, Sha384, Sha512};

    const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/tls");

    fn pem(name: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_file(format!("{DIR}/{name}")).unwrap()
    }

    fn info(settings: &str) -> ConnInfo {
        let s = settings.replace("$DIR", DIR);
        ConnInfo::parse(&s, &Env::default().with_os_user("repl")).unwrap()
    }

    fn config(settings: &str) -> Arc<ClientConfig> {
        Arc::new(client_config(&info(settings)).unwrap())
    }

    fn server(cert: &str, client_roots: Option<&str>) -> Arc<ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = PrivateKeyDer::from_pem_file(format!("{DIR}/server.key")).unwrap();
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = match client_roots {
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                roots.add(pem(ca)).unwrap();
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                );
                builder.with_client_cert_verifier(verifier.build().unwrap())
            }
            None => builder.with_no_client_auth(),
        };
        Arc::new(builder.with_single_cert(vec![pem(cert)], key).unwrap())
    }

    /// Moves every pending TLS record from one side to the other.
    fn pump(from: &mut Connection, to: &mut Connection) -> Result<(), Error> {
        let mut buf = Vec::new();
        while from.wants_write() {
            from.write_tls(&mut buf).unwrap();
        }
        let mut pending = &buf[..];
        while !pending.is_empty() {
            to.read_tls(&mut pending).unwrap();
            to.process_new_packets()?;
        }
        Ok(())
    }

    /// A full in-memory handshake; returns the client side.
    fn handshake(
        client: Arc<ClientConfig>,
        server: Arc<ServerConfig>,
        host: &str,
    ) -> Result<Connection, Error> {
        let mut c = Connection::from(rustls::ClientConnection::new(
            client,
            server_name(host).unwrap(),
        )?);
        let mut s = Connection::from(ServerConnection::new(server)?);
        for _ in 0..10 {
            pump(&mut c, &mut s)?;
            pump(&mut s, &mut c)?;
            if !c.is_handshaking() && !s.is_handshaking() {
                return Ok(c);
            }
        }
        panic!("handshake did not finish")
    }

    fn cert_error(result: Result<Connection, Error>) -> CertificateError {
        match result {
            Err(Error::InvalidCertificate(e)) => e,
            Err(other) => panic!("unexpected error {other:?}"),
            Ok(_) => panic!("handshake succeeded"),
        }
    }

    #[test]
    fn verify_full() {
        let client = config("sslmode=verify-full sslrootcert=$DIR/ca.crt");
        handshake(client.clone(), server("server.crt", None), "localhost").unwrap();
        handshake(client.clone(), server("server.crt", None), "127.0.0.1").unwrap();
        let wrong = cert_error(handshake(
            client.clone(),
            server("wronghost.crt", None),
            "localhost",
        ));
        assert!(
            matches!(wrong, CertificateError::NotValidForNameContext { .. }),
            "{wrong:?}"
        );
        let expired = cert_error(handshake(
            client.clone(),
            server("expired.crt", None),
            "localhost",
        ));
        assert!(
            matches!(expired, CertificateError::ExpiredContext { .. }),
            "{expired:?}"
        );
        let unknown = config("sslmode=verify-full sslrootcert=$DIR/other-ca.crt");
        let e = cert_error(handshake(unknown, server("server.crt", None), "localhost"));
        assert_eq!(e, CertificateError::UnknownIssuer);
    }

    #[test]
    fn verify_ca_checks_the_chain_but_not_the_name() {
        let client = config("sslmode=verify-ca sslrootcert=$DIR/ca.crt");
        handshake(client.clone(), server("wronghost.crt", None), "localhost").unwrap();
        let expired = cert_error(handshake(client, server("expired.crt", None), "localhost"));
        assert!(
            matches!(expired, CertificateError::ExpiredContext { .. }),
            "{expired:?}"
        );
        let unknown = config("sslmode=verify-ca sslrootcert=$DIR/other-ca.crt");
        let e = cert_error(handshake(unknown, server("server.crt", None), "localhost"));
        assert_eq!(e, CertificateError::UnknownIssuer);
    }

    #[test]
    fn require_checks_nothing_unless_a_root_file_exists() {
        for mode in ["require", "prefer", "allow"] {
            let client = config(&format!("sslmode={mode} sslrootcert=$DIR/missing.crt"));
            handshake(
                client.clone(),
                server("expired.crt", None),
                "db.example.com",
            )
            .unwrap();
            handshake(client, server("wronghost.crt", None), "localhost").unwrap();
        }
        // With the root file present, require behaves like verify-ca (libpq).
        let client = config("sslmode=require sslrootcert=$DIR/other-ca.crt");
        let e = cert_error(handshake(client, server("server.crt", None), "localhost"));
        assert_eq!(e, CertificateError::UnknownIssuer);
        let client = config("sslmode=require sslrootcert=$DIR/ca.crt");
        handshake(client, server("wronghost.crt", None), "localhost").unwrap();
    }

    #[test]
    fn root_file_errors() {
        let missing = client_config(&info(
            "sslmode=verify-full sslrootcert=/nonexistent/root.crt",
        ));
        assert_eq!(
            missing.unwrap_err().to_string(),
            "root certificate file \"/nonexistent/root.crt\" does not exist\nEither provide the \
             file or change sslmode to disable server certificate verification."
        );
        let no_home = client_config(&info("sslmode=verify-ca"));
        assert!(matches!(no_home, Err(TlsError::NoRootCertPath)));
        let system = client_config(&info("sslmode=verify-full sslrootcert=system"));
        assert!(matches!(system, Err(TlsError::SystemRoots)));
        let not_pem = client_config(&info("sslmode=verify-ca sslrootcert=$DIR/generate.sh"));
        assert!(matches!(not_pem, Err(TlsError::Load { .. })), "{not_pem:?}");
    }

    #[test]
    fn client_certificate() {
        let with_cert = config(
            "sslmode=verify-full sslrootcert=$DIR/ca.crt sslcert=$DIR/client.crt sslkey=$DIR/client.key",
        );
        handshake(with_cert, server("server.crt", Some("ca.crt")), "localhost").unwrap();
        let without = config(
            "sslmode=verify-full sslrootcert=$DIR/ca.crt sslcert=$DIR/none.crt sslkey=$DIR/client.key",
        );
        let refused = handshake(without, server("server.crt", Some("ca.crt")), "localhost");
        assert!(
            matches!(refused, Err(Error::NoCertificatesPresented)),
            "{refused:?}"
        );
        let no_key = client_config(&info(
            "sslmode=require sslcert=$DIR/client.crt sslkey=$DIR/none.key",
        ));
        assert_eq!(
            no_key.unwrap_err().to_string(),
            format!("certificate present, but not private key file \"{DIR}/none.key\"")
        );
    }

    #[test]
    fn end_point_hash_matches_the_negotiated_certificate() {
        let client = config("sslmode=verify-full sslrootcert=$DIR/ca.crt");
        let conn = handshake(client, server("server.crt", None), "localhost").unwrap();
        let cert = &conn.peer_certificates().unwrap()[0];
        let hash = server_end_point_hash(cert.as_ref()).unwrap();
        // openssl x509 -in server.crt -outform DER | openssl dgst -sha256
        let expected = "c4e48beb014507c6628965e56de251254803498cd20d208aec969684bdba7d17";
        let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, expected);
        assert_eq!(
            conn.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_3)
        );
    }

    #[test]
    fn end_point_hash_follows_the_signature_digest() {
        let hash = |name: &str| server_end_point_hash(pem(name).as_ref());
        let der = |name: &str| pem(name).as_ref().to_vec();
        assert_eq!(hash("ca.crt"), Some(Sha256::digest(der("ca.crt")).to_vec()));
        assert_eq!(
            hash("sig-ecdsa-sha1.crt"),
            Some(Sha256::digest(der("sig-ecdsa-sha1.crt")).to_vec())
        );
        assert_eq!(
            hash("sig-ecdsa-sha384.crt"),
            Some(Sha384::digest(der("sig-ecdsa-sha384.crt")).to_vec())
        );
        assert_eq!(
            hash("sig-ecdsa-sha512.crt"),
            Some(Sha512::digest(der("sig-ecdsa-sha512.crt")).to_vec())
        );
        assert_eq!(
            hash("sig-rsa-sha512.crt"),
            Some(Sha512::digest(der("sig-rsa-sha512.crt")).to_vec())
        );
        assert_eq!(hash("sig-ed25519.crt"), None);
    }

    #[test]
    fn der_walker_rejects_malformed_input() {
        let good = pem("server.crt").as_ref().to_vec();
        for cut in [0, 1, 2, 3, 4, 10, good.len() / 2, good.len() - 1] {
            assert_eq!(server_end_point_hash(&good[..cut]), None, "cut at {cut}");
        }
        assert_eq!(server_end_point_hash(&[0x30, 0x85, 1, 2, 3, 4, 5]), None);
        assert_eq!(server_end_point_hash(&[0x30, 0x80]), None);
        assert_eq!(server_end_point_hash(&[0x31, 0x00]), None);
        assert_eq!(
            server_end_point_hash(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]),
            None
        );
        let oid = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];
        let alg = [&[0x30, oid.len() as u8][..], &oid].concat();
        let cert = [&[0x30, (alg.len() + 2) as u8, 0x30, 0x00][..], &alg].concat();
        assert_eq!(
            server_end_point_hash(&cert),
            Some(Sha256::digest(&cert).to_vec())
        );
        assert!(server_name("not a name").is_err());
    }
}
