//! Opening an upstream replication connection: TCP (or a Unix socket), the SSL negotiation
//! that `sslmode` asks for, the StartupMessage, authentication and the parameters the server
//! reports, as libpq does it (`fe-connect.c`, `fe-auth.c`).
//!
//! Stricter than libpq where a relay must be: the single byte answering SSLRequest is read on
//! its own, so plaintext a server sends after `S` can never be taken as TLS data
//! (CVE-2021-23222); any answer but `S` or `N` ends the attempt; the whole login runs under a
//! deadline on the relay's own clock; messages before ReadyForQuery are capped in size and
//! number.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::proto::auth::{
    AuthAction, AuthError, AuthRequest, ClientAuth, Transport as AuthTransport,
};
use crate::proto::conninfo::{ConnInfo, Endpoint, Host, Password, SslMode};
use crate::proto::pgpass::{self, PassfileKey};
use crate::service::conn::{ConnError, Connection, Transport};
use crate::service::tls;
use crate::wire::frame::{AUTH_FRAME_LIMIT, BACKEND_FRAME_LIMIT};
use crate::wire::startup::{StartupMessage, StartupPacket};
use crate::wire::{BackendMessage, ErrorFields, Frame, WireError};

/// How long a whole login may take when the connection string sets no `connect_timeout`.
const DEFAULT_LOGIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Most ParameterStatus and NoticeResponse messages accepted before ReadyForQuery.
const MAX_STARTUP_MESSAGES: usize = 1000;

/// What the server told about itself during the login.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerInfo {
    /// `server_version` as reported, e.g. `15.18 (Debian 15.18-0+deb12u1)`.
    pub server_version: String,
    /// The same as a number, like libpq's `PQserverVersion` (150018).
    pub version_num: u32,
    /// The backend pid from BackendKeyData.
    pub backend_pid: i32,
}

/// Why a login failed.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// No host could be reached.
    #[error("could not connect to server at \"{host}\", port {port}: {source}")]
    Connect {
        /// The host tried.
        host: String,
        /// The port tried.
        port: u16,
        /// Why.
        source: std::io::Error,
    },
    /// The login did not finish in time.
    #[error("timeout expired while connecting to the upstream")]
    Timeout,
    /// The relay is shutting down.
    #[error("shutting down")]
    Shutdown,
    /// TLS was required and the server refused it.
    #[error("server does not support SSL, but SSL was required")]
    SslRefused,
    /// The server answered SSLRequest with something other than `S` or `N`.
    #[error("received invalid response to SSL negotiation: {0:?}")]
    SslBadResponse(char),
    /// TLS failed.
    #[error("SSL error: {0}")]
    Tls(String),
    /// Authentication failed on the relay's side.
    #[error("authentication failed: {0}")]
    Auth(#[from] AuthError),
    /// The server refused the login.
    #[error("server refused the connection: {0}")]
    Server(ErrorFields),
    /// The connection failed.
    #[error("{0}")]
    Conn(#[from] ConnError),
    /// A malformed message.
    #[error("{0}")]
    Wire(#[from] WireError),
    /// The server broke the startup protocol.
    #[error("protocol violation during login: {0}")]
    Protocol(String),
    /// Unix-socket connections cannot use TLS.
    #[error("sslmode \"{0}\" requires a TCP connection, but host is a socket directory")]
    SocketWithTls(&'static str),
}

/// Connects to the first host of `ci` that accepts the login, within its `connect_timeout`.
///
/// # Errors
/// The last host's error, a timeout, or shutdown.
pub async fn connect(
    ci: &ConnInfo,
    application_name: &str,
    shutdown: &CancellationToken,
) -> Result<(Connection, ServerInfo), LoginError> {
    let limit = ci.connect_timeout.unwrap_or(DEFAULT_LOGIN_TIMEOUT);
    let mut last = LoginError::Timeout;
    for endpoint in ci.hosts() {
        let attempt = tokio::time::timeout(limit, connect_endpoint(ci, endpoint, application_name));
        let outcome = tokio::select! {
            () = shutdown.cancelled() => return Err(LoginError::Shutdown),
            outcome = attempt => outcome,
        };
        match outcome {
            Ok(Ok(done)) => return Ok(done),
            Ok(Err(e)) => last = e,
            Err(_) => last = LoginError::Timeout,
        }
        debug!(host = %endpoint.pgpass_host(), port = endpoint.port, error = %last, "host failed");
    }
    Err(last)
}

async fn connect_endpoint(
    ci: &ConnInfo,
    endpoint: &Endpoint,
    application_name: &str,
) -> Result<(Connection, ServerInfo), LoginError> {
    let host = endpoint.pgpass_host();
    if let Some(Host::UnixSocket(dir)) = &endpoint.host {
        if matches!(
            ci.sslmode,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull
        ) {
            return Err(LoginError::SocketWithTls(ci.sslmode.as_str()));
        }
        let path = dir.join(format!(".s.PGSQL.{}", endpoint.port));
        let sock = UnixStream::connect(&path)
            .await
            .map_err(|source| LoginError::Connect {
                host: host.clone(),
                port: endpoint.port,
                source,
            })?;
        return login(
            ci,
            Transport::Unix(sock),
            AuthTransport::Plain,
            &host,
            endpoint.port,
            application_name,
        )
        .await;
    }
    if ci.sslmode == SslMode::Allow {
        // libpq's "allow": plaintext first, TLS if that is refused.
        let plain = open_tcp(endpoint, &host).await?;
        match login(
            ci,
            Transport::Plain(plain),
            AuthTransport::Plain,
            &host,
            endpoint.port,
            application_name,
        )
        .await
        {
            Err(LoginError::Server(e)) => {
                warn!(error = %e, "plaintext login refused, retrying with SSL")
            }
            other => return other,
        }
    }
    let tcp = open_tcp(endpoint, &host).await?;
    let (transport, auth_transport) = negotiate_tls(ci, tcp, &host).await?;
    login(
        ci,
        transport,
        auth_transport,
        &host,
        endpoint.port,
        application_name,
    )
    .await
}

async fn open_tcp(endpoint: &Endpoint, host: &str) -> Result<TcpStream, LoginError> {
    let err = |source| LoginError::Connect {
        host: host.to_owned(),
        port: endpoint.port,
        source,
    };
    let stream = match endpoint.hostaddr {
        Some(addr) => TcpStream::connect((addr, endpoint.port)).await,
        None => TcpStream::connect((host, endpoint.port)).await,
    }
    .map_err(err)?;
    stream.set_nodelay(true).map_err(err)?;
    Ok(stream)
}

/// Sends SSLRequest when `sslmode` asks for it and starts TLS on `S`.
async fn negotiate_tls(
    ci: &ConnInfo,
    mut tcp: TcpStream,
    host: &str,
) -> Result<(Transport, AuthTransport), LoginError> {
    let required = matches!(
        ci.sslmode,
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull
    );
    if matches!(ci.sslmode, SslMode::Disable) {
        return Ok((Transport::Plain(tcp), AuthTransport::Plain));
    }
    let request = [0u8, 0, 0, 8, 0x04, 0xD2, 0x16, 0x2F];
    tcp.write_all(&request).await.map_err(ConnError::from)?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await.map_err(ConnError::from)?;
    match answer {
        [b'S'] => {}
        [b'N'] if !required => return Ok((Transport::Plain(tcp), AuthTransport::Plain)),
        [b'N'] => return Err(LoginError::SslRefused),
        [other] => return Err(LoginError::SslBadResponse(char::from(other))),
    }
    let config = tls::client_config(ci).map_err(|e| LoginError::Tls(e.to_string()))?;
    let name = tls::server_name(host).map_err(|e| LoginError::Tls(e.to_string()))?;
    let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| LoginError::Tls(e.to_string()))?;
    let end_point = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
        .and_then(|cert| tls::server_end_point_hash(cert.as_ref()));
    Ok((
        Transport::Tls(Box::new(stream)),
        AuthTransport::Tls {
            server_end_point: end_point,
        },
    ))
}

/// StartupMessage, authentication, and the messages up to ReadyForQuery.
async fn login(
    ci: &ConnInfo,
    transport: Transport,
    auth_transport: AuthTransport,
    host: &str,
    port: u16,
    application_name: &str,
) -> Result<(Connection, ServerInfo), LoginError> {
    let mut conn = Connection::new(transport, AUTH_FRAME_LIMIT);
    let mut params = vec![
        ("user".to_owned(), ci.user.clone()),
        ("database".to_owned(), "replication".to_owned()),
        ("replication".to_owned(), "true".to_owned()),
    ];
    if let Some(options) = &ci.options {
        params.push(("options".to_owned(), options.clone()));
    }
    let app = ci.application_name.as_deref().unwrap_or(application_name);
    params.push(("application_name".to_owned(), app.to_owned()));
    StartupPacket::Startup(StartupMessage {
        minor_version: 0,
        params,
    })
    .write(conn.out())?;
    conn.flush().await?;
    let password = password_for(ci, host, port);
    let mut auth = ClientAuth::new(&ci.user, password, ci.channel_binding, auth_transport);
    authenticate(&mut conn, &mut auth).await?;
    let info = read_until_ready(&mut conn).await?;
    conn.set_max_frame(BACKEND_FRAME_LIMIT);
    Ok((conn, info))
}

async fn authenticate(conn: &mut Connection, auth: &mut ClientAuth) -> Result<(), LoginError> {
    loop {
        let frame: Frame = conn.recv().await?;
        match frame.tag {
            b'R' => match auth.handle(AuthRequest::parse(&frame.body)?)? {
                AuthAction::Send(response) => {
                    response.encode(conn.out())?;
                    conn.flush().await?;
                }
                AuthAction::Wait => {}
                AuthAction::Authenticated => return Ok(()),
            },
            _ => match BackendMessage::parse(frame)? {
                BackendMessage::ErrorResponse(e) => return Err(LoginError::Server(e)),
                BackendMessage::NoticeResponse(_) => {}
                other => {
                    return Err(LoginError::Protocol(format!(
                        "expected authentication request, got message type '{}'",
                        char::from(other.tag())
                    )));
                }
            },
        }
    }
}

async fn read_until_ready(conn: &mut Connection) -> Result<ServerInfo, LoginError> {
    let mut info = ServerInfo::default();
    for _ in 0..MAX_STARTUP_MESSAGES {
        match BackendMessage::parse(conn.recv().await?)? {
            BackendMessage::ParameterStatus { name, value } => {
                if name == "server_version" {
                    info.version_num = version_num(&value);
                    info.server_version = value;
                }
            }
            BackendMessage::BackendKeyData { process_id, .. } => info.backend_pid = process_id,
            BackendMessage::NoticeResponse(_) => {}
            BackendMessage::ErrorResponse(e) => return Err(LoginError::Server(e)),
            BackendMessage::ReadyForQuery(_) => return Ok(info),
            other => {
                return Err(LoginError::Protocol(format!(
                    "unexpected message type '{}' before ReadyForQuery",
                    char::from(other.tag())
                )));
            }
        }
    }
    Err(LoginError::Protocol(
        "too many messages before ReadyForQuery".into(),
    ))
}

/// The password: from the connection string (or PGPASSWORD), else from the passfile.
fn password_for(ci: &ConnInfo, host: &str, port: u16) -> Option<Password> {
    if ci.password.is_some() {
        return ci.password.clone();
    }
    let path: PathBuf = ci.passfile.clone()?;
    let meta = std::fs::metadata(&path).ok()?;
    if let Err(why) =
        pgpass::check_mode(std::os::unix::fs::PermissionsExt::mode(&meta.permissions()))
    {
        warn!(passfile = %path.display(), %why, "password file ignored");
        return None;
    }
    let text = std::fs::read_to_string(&path).ok()?;
    let key = PassfileKey {
        host,
        port,
        dbname: "replication",
        user: &ci.user,
    };
    pgpass::lookup(&text, &key)
}

/// `PQserverVersion` of a `server_version` string: "15.18 (Debian…)" → 150018, "9.6.3" → 90603.
pub fn version_num(text: &str) -> u32 {
    let mut parts = text
        .split(|c: char| !c.is_ascii_digit())
        .take_while(|p| !p.is_empty())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let major = parts.next().unwrap_or(0);
    let minor = parts.next().unwrap_or(0);
    if major >= 10 {
        major.saturating_mul(10_000).saturating_add(minor)
    } else {
        let patch = parts.next().unwrap_or(0);
        major
            .saturating_mul(10_000)
            .saturating_add(minor.saturating_mul(100))
            .saturating_add(patch)
    }
}

#[cfg(test)]
mod tests {
    use super::version_num;

    #[test]
    fn server_version_numbers() {
        assert_eq!(version_num("15.18 (Debian 15.18-0+deb12u1)"), 150_018);
        assert_eq!(version_num("17.2"), 170_002);
        assert_eq!(version_num("18beta1"), 180_000);
        assert_eq!(version_num("9.6.3"), 90_603);
        assert_eq!(version_num("garbage"), 0);
    }
}
