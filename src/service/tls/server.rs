//! TLS for the downstream port, as PostgreSQL's `be-secure-openssl.c` sets it up
//! (`be_tls_init`, `check_ssl_key_file_permissions`, `be_tls_open_server`): the certificate
//! chain and key from PEM files, the key file refused when others may read it, client
//! certificates checked against `ssl_ca_file` when one is given (optional for the client:
//! rules decide whether one is required), TLS 1.2 or newer, and ALPN `postgresql`: a client
//! that offers another protocol is refused, and one that opens with TLS directly (PostgreSQL
//! 17's `sslnegotiation=direct`) must offer it.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::config::TlsVersion;
use crate::proto::certificate::{serial_hex, server_end_point_hash, subject_common_name};
use crate::proto::downstream::TlsSession;

/// The ALPN protocol name PostgreSQL 17 registered.
const ALPN: &[u8] = b"postgresql";

/// Why the TLS files cannot be used. The texts follow PostgreSQL's where it has one.
#[derive(Debug, thiserror::Error)]
pub enum ServerTlsError {
    /// A file cannot be read or parsed.
    #[error("could not load \"{}\": {reason}", path.display())]
    Load {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The private key may be read by others.
    #[error(
        "private key file \"{}\" has group or world access\nDETAIL:  File must have permissions u=rw (0600) or less if owned by the database user, or permissions u=rw,g=r (0640) or less if owned by root.",
        .0.display()
    )]
    KeyAccess(PathBuf),
    /// The private key is owned by someone else.
    #[error(
        "private key file \"{}\" must be owned by the database user or root",
        .0.display()
    )]
    KeyOwner(PathBuf),
    /// rustls refused the configuration (a key that does not match the certificate, …).
    #[error("TLS configuration error: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client certificate verifier could not be built.
    #[error("TLS client verifier error: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// A loaded server configuration.
#[derive(Clone)]
pub(crate) struct ServerTls {
    acceptor: TlsAcceptor,
    certificate_hash: Option<Vec<u8>>,
    /// The certificate's serial and subject, for logs of a reload.
    description: String,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.description)
    }
}

impl ServerTls {
    /// Reads the files and builds the configuration.
    ///
    /// # Errors
    /// [`ServerTlsError`]: a file missing or unreadable, a key others may read, a key that
    /// does not match the certificate.
    pub(crate) fn load(
        cert: &Path,
        key: &Path,
        ca: Option<&Path>,
        min_version: TlsVersion,
    ) -> Result<ServerTls, ServerTlsError> {
        check_key_file(key, current_uid())?;
        let chain = read_certs(cert)?;
        let key = PrivateKeyDer::from_pem_file(key).map_err(|e| load(key, e))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let versions: &[&rustls::SupportedProtocolVersion] = match min_version {
            TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
            TlsVersion::Tls13 => &[&rustls::version::TLS13],
        };
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(versions)?;
        let builder = match ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for cert in read_certs(ca)? {
                    roots.add(cert).map_err(|e| load(ca, e))?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .allow_unauthenticated()
                        .build()?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let own = chain
            .first()
            .map(|c| c.as_ref().to_vec())
            .unwrap_or_default();
        let mut config = builder.with_single_cert(chain, key)?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        Ok(ServerTls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            certificate_hash: server_end_point_hash(&own),
            description: format!(
                "certificate \"{}\" (serial {}, CN {})",
                cert.display(),
                serial_hex(&own).unwrap_or_else(|| "-".into()),
                subject_common_name(&own).unwrap_or_else(|| "-".into())
            ),
        })
    }

    /// What a reload log says of this configuration.
    pub(crate) fn description(&self) -> &str {
        &self.description
    }

    /// The handshake, as the server; `direct` when the client opened with TLS at once, which
    /// requires ALPN `postgresql` (PostgreSQL 17).
    ///
    /// # Errors
    /// A failed handshake, or a direct one without ALPN.
    pub(crate) async fn accept<S>(
        &self,
        stream: S,
        direct: bool,
    ) -> io::Result<(TlsStream<S>, TlsSession)>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let tls = self.acceptor.accept(stream).await?;
        let (_, conn) = tls.get_ref();
        if direct && conn.alpn_protocol() != Some(ALPN) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "received direct SSL connection request without ALPN protocol negotiation extension",
            ));
        }
        let client_cn = conn
            .peer_certificates()
            .and_then(|certs| certs.first())
            .map(|cert| subject_common_name(cert.as_ref()));
        let session = TlsSession {
            certificate_hash: self.certificate_hash.clone(),
            client_certificate: client_cn,
        };
        Ok((tls, session))
    }
}

/// The user id this process runs as, from `/proc/self/status`.
fn current_uid() -> Option<u32> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// PostgreSQL's rule for the key file (`check_ssl_key_file_permissions`): owned by this user
/// with no access for group or others, or owned by root with at most group read.
fn check_key_file(path: &Path, uid: Option<u32>) -> Result<(), ServerTlsError> {
    let meta = fs::metadata(path).map_err(|e| load(path, e))?;
    key_file_allowed(meta.uid(), meta.mode(), uid).map_err(|refusal| match refusal {
        KeyRefusal::Owner => ServerTlsError::KeyOwner(path.to_owned()),
        KeyRefusal::Access => ServerTlsError::KeyAccess(path.to_owned()),
    })
}

#[derive(Debug, PartialEq, Eq)]
enum KeyRefusal {
    Owner,
    Access,
}

fn key_file_allowed(owner: u32, mode: u32, me: Option<u32>) -> Result<(), KeyRefusal> {
    let mine = me == Some(owner);
    if !mine && owner != 0 {
        return Err(KeyRefusal::Owner);
    }
    let forbidden = if mine { 0o077 } else { 0o037 };
    if mode & forbidden != 0 {
        return Err(KeyRefusal::Access);
    }
    Ok(())
}

/// Every certificate in a PEM file; at least one.
fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, ServerTlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|e| load(path, e))?;
    if certs.is_empty() {
        return Err(load(path, "no certificates found"));
    }
    Ok(certs)
}

fn load(path: &Path, reason: impl ToString) -> ServerTlsError {
    ServerTlsError::Load {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_files_as_postgres_allows_them() {
        let me = Some(1000);
        assert_eq!(key_file_allowed(1000, 0o600, me), Ok(()));
        assert_eq!(key_file_allowed(1000, 0o400, me), Ok(()));
        assert_eq!(key_file_allowed(1000, 0o640, me), Err(KeyRefusal::Access));
        assert_eq!(key_file_allowed(1000, 0o604, me), Err(KeyRefusal::Access));
        assert_eq!(key_file_allowed(0, 0o640, me), Ok(()));
        assert_eq!(key_file_allowed(0, 0o660, me), Err(KeyRefusal::Access));
        assert_eq!(key_file_allowed(0, 0o644, me), Err(KeyRefusal::Access));
        assert_eq!(key_file_allowed(1001, 0o600, me), Err(KeyRefusal::Owner));
        // Running as root, root's own key follows the stricter rule of "owned by me".
        assert_eq!(key_file_allowed(0, 0o640, Some(0)), Err(KeyRefusal::Access));
    }
}
