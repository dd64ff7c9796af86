//! A raw TLS client for the downstream tests, on rustls over a blocking std TcpStream: an
//! SSLRequest followed by the handshake, or a ClientHello as the very first bytes (direct
//! TLS); optional ALPN `postgresql`; an optional client certificate, a well-formed one or
//! junk. It carries bytes only: the tests frame PostgreSQL messages on top of [`Wire`].

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

/// The ALPN protocol name of PostgreSQL 17's direct TLS.
pub const ALPN_POSTGRESQL: &[u8] = b"postgresql";

/// How long a handshake may take before the client gives up.
pub const HANDSHAKE: Duration = Duration::from_secs(5);

/// The certificate the client presents, if any.
#[derive(Debug, Clone)]
pub enum Identity<'a> {
    /// None.
    Anonymous,
    /// A certificate and its key, as PEM files.
    Pem { cert: &'a Path, key: &'a Path },
    /// These bytes as the certificate (not DER at all), signed for with the key in `key`.
    Junk { bytes: Vec<u8>, key: &'a Path },
}

/// A client configuration trusting the CA certificate in `ca` (PEM), offering ALPN
/// `postgresql` when `alpn`, presenting `identity`; TLS 1.2 and 1.3.
pub fn client_config(ca: &Path, alpn: bool, identity: Identity<'_>) -> Arc<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match identity {
        Identity::Anonymous => builder.with_no_client_auth(),
        Identity::Pem { cert, key } => {
            let chain = CertificateDer::pem_file_iter(cert)
                .unwrap()
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key = PrivateKeyDer::from_pem_file(key).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
        Identity::Junk { bytes, key } => {
            // `with_client_auth_cert` would refuse a certificate that does not parse; a
            // resolver of our own sends it anyway.
            let key = PrivateKeyDer::from_pem_file(key).unwrap();
            let signer = provider.key_provider.load_private_key(key).unwrap();
            let certified = CertifiedKey::new(vec![CertificateDer::from(bytes)], signer);
            builder.with_client_cert_resolver(Arc::new(SingleCertAndKey::from(certified)))
        }
    };
    if alpn {
        config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
    }
    Arc::new(config)
}

/// A new client session for the server `127.0.0.1`.
pub fn session(config: &Arc<ClientConfig>) -> ClientConnection {
    let name = ServerName::IpAddress(Ipv4Addr::LOCALHOST.into());
    ClientConnection::new(Arc::clone(config), name).unwrap()
}

/// The first flight a client with `config` sends: its ClientHello record.
pub fn client_hello(config: &Arc<ClientConfig>) -> Vec<u8> {
    let mut conn = session(config);
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).unwrap();
    }
    out
}

/// The 8-byte SSLRequest.
pub fn ssl_request_bytes() -> [u8; 8] {
    let mut b = [0u8; 8];
    b[..4].copy_from_slice(&8u32.to_be_bytes());
    b[4..].copy_from_slice(&80_877_103u32.to_be_bytes());
    b
}

/// Connects to `127.0.0.1:port` and sends an SSLRequest; returns the socket and the one-byte
/// answer (`None` when the server closed instead).
pub fn ssl_request(port: u16) -> io::Result<(TcpStream, Option<u8>)> {
    let mut sock = TcpStream::connect((Ipv4Addr::LOCALHOST, port))?;
    sock.set_nodelay(true)?;
    sock.write_all(&ssl_request_bytes())?;
    sock.set_read_timeout(Some(HANDSHAKE))?;
    let mut answer = [0u8; 1];
    let n = sock.read(&mut answer)?;
    Ok((sock, (n == 1).then_some(answer[0])))
}

/// The TLS handshake as the client over `sock`; the stream once the client considers it done
/// (with TLS 1.3 the server checks a client certificate only after that: its verdict comes
/// with the first read).
pub fn handshake(sock: TcpStream, config: &Arc<ClientConfig>) -> io::Result<Wire> {
    sock.set_read_timeout(Some(HANDSHAKE))?;
    let mut stream = StreamOwned::new(session(config), sock);
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock)?;
    }
    while stream.conn.wants_write() {
        stream.conn.write_tls(&mut stream.sock)?;
    }
    Ok(Wire::Tls(Box::new(stream)))
}

/// SSLRequest, `S`, then the handshake.
pub fn connect_tls(port: u16, config: &Arc<ClientConfig>) -> io::Result<Wire> {
    let (sock, answer) = ssl_request(port)?;
    if answer != Some(b'S') {
        return Err(io::Error::other(format!(
            "SSLRequest answered {answer:?}, not S"
        )));
    }
    handshake(sock, config)
}

/// A ClientHello as the very first bytes (direct TLS), then the handshake.
pub fn connect_direct(port: u16, config: &Arc<ClientConfig>) -> io::Result<Wire> {
    let sock = TcpStream::connect((Ipv4Addr::LOCALHOST, port))?;
    sock.set_nodelay(true)?;
    handshake(sock, config)
}

/// The rustls error inside an I/O error, if that is what it is (a TLS alert, a certificate
/// the client refused).
pub fn tls_error(e: &io::Error) -> Option<&rustls::Error> {
    e.get_ref().and_then(|inner| inner.downcast_ref())
}

/// A connection to the relay, plain or TLS.
pub enum Wire {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Wire {
    /// Connects to `127.0.0.1:port` without TLS.
    pub fn plain(port: u16) -> Wire {
        let sock = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
        sock.set_nodelay(true).unwrap();
        Wire::Plain(sock)
    }

    /// The TCP socket underneath.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Wire::Plain(s) => s,
            Wire::Tls(t) => &t.sock,
        }
    }

    /// Whether TLS is up.
    pub fn is_tls(&self) -> bool {
        matches!(self, Wire::Tls(_))
    }

    /// The DER of the certificate the server presented.
    pub fn server_certificate(&self) -> Option<Vec<u8>> {
        match self {
            Wire::Plain(_) => None,
            Wire::Tls(t) => t
                .conn
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| c.as_ref().to_vec()),
        }
    }

    /// The negotiated ALPN protocol.
    pub fn alpn(&self) -> Option<Vec<u8>> {
        match self {
            Wire::Plain(_) => None,
            Wire::Tls(t) => t.conn.alpn_protocol().map(<[u8]>::to_vec),
        }
    }

    /// The negotiated TLS version, as rustls names it.
    pub fn version(&self) -> Option<String> {
        match self {
            Wire::Plain(_) => None,
            Wire::Tls(t) => t.conn.protocol_version().map(|v| format!("{v:?}")),
        }
    }
}

impl Read for Wire {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Wire::Plain(s) => s.read(buf),
            Wire::Tls(t) => t.read(buf),
        }
    }
}

impl Write for Wire {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Wire::Plain(s) => s.write(buf),
            Wire::Tls(t) => t.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Wire::Plain(s) => s.flush(),
            Wire::Tls(t) => t.flush(),
        }
    }
}
