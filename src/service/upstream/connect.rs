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
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::UpstreamError;
use crate::proto::auth::{Channel, ClientAuth};
use crate::proto::conninfo::{ConnInfo, Endpoint, Host, Keepalives, Password, SslMode};
use crate::proto::pgpass::{self, PassfileKey};
use crate::proto::query::single_text;
use crate::proto::query::{EndOfTimeline, QueryResult};
use crate::proto::upstream::target::{self, Pass, ServerKind, TargetCheck};
use crate::proto::upstream::{CancelKey, Event, ServerInfo, SessionError, UpstreamSession};
use crate::service::conn::{ConnError, Connection, Socket};
use crate::service::tls;
use crate::wire::{StartupPacket, WireError};

/// How long a whole login may take when the connection string sets no `connect_timeout`.
const DEFAULT_LOGIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a login failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
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
    /// The server refused the login.
    #[error("server refused the connection: {0}")]
    Refused(crate::wire::ErrorFields),
    /// The login broke the protocol or failed authentication.
    #[error(transparent)]
    Session(SessionError),
    /// The connection failed.
    #[error(transparent)]
    Conn(#[from] ConnError),
    /// Unix-socket connections cannot use TLS.
    #[error("sslmode \"{0}\" requires a TCP connection, but host is a socket directory")]
    SocketWithTls(&'static str),
    /// The server is not of the kind `target_session_attrs` asks for.
    #[error("connection to server at \"{host}\", port {port} failed: {reason}")]
    WrongKind {
        /// The host.
        host: String,
        /// The port.
        port: u16,
        /// libpq's message, such as "session is read-only".
        reason: &'static str,
    },
    /// Every host of several failed: each one's error, in the order tried.
    #[error("{}", list_failures(.0))]
    AllHosts(Vec<(String, ConnectError)>),
}

impl ConnectError {
    /// The error of one host as it is, of several as [`ConnectError::AllHosts`].
    fn from_failures(mut failures: Vec<(String, ConnectError)>) -> ConnectError {
        match failures.len() {
            0 => ConnectError::AllHosts(failures),
            1 => failures.pop().map_or(ConnectError::Timeout, |(_, e)| e),
            _ => ConnectError::AllHosts(failures),
        }
    }
}

/// `host:port: error` for each host, separated by semicolons.
fn list_failures(failures: &[(String, ConnectError)]) -> String {
    if failures.is_empty() {
        return "no host to connect to".to_owned();
    }
    failures
        .iter()
        .map(|(host, e)| format!("{host}: {e}"))
        .collect::<Vec<_>>()
        .join("; ")
}

impl From<SessionError> for ConnectError {
    fn from(e: SessionError) -> Self {
        match e {
            SessionError::Server(fields) => ConnectError::Refused(fields),
            other => ConnectError::Session(other),
        }
    }
}

impl From<WireError> for ConnectError {
    fn from(e: WireError) -> Self {
        ConnectError::Session(SessionError::Wire(e))
    }
}

/// A logged-in connection, its session (idle, ready for commands) and what the server said.
pub(crate) struct Upstream {
    /// The socket, framed.
    pub conn: Connection,
    /// The session, idle.
    pub session: UpstreamSession,
    /// The server's version and pid.
    pub server: ServerInfo,
    /// The server it reached, for a CancelRequest.
    pub endpoint: Option<Endpoint>,
}

/// Connects to the first host of `ci` that accepts the login and is of the kind
/// `target_session_attrs` asks for, in the order `load_balance_hosts` gives, each within its
/// `connect_timeout`.
///
/// # Errors
/// The host's error when there is one host, every host's error when there are more, or
/// shutdown.
pub(crate) async fn connect(
    ci: &ConnInfo,
    application_name: &str,
    shutdown: &CancellationToken,
) -> Result<Upstream, ConnectError> {
    let limit = ci.connect_timeout.unwrap_or(DEFAULT_LOGIN_TIMEOUT);
    let hosts = ci.hosts();
    let order = target::host_order(hosts.len(), ci.load_balance_hosts, || {
        getrandom::u32().unwrap_or(0)
    });
    let mut failures = Vec::new();
    for pass in target::passes(ci.target_session_attrs) {
        for endpoint in order.iter().filter_map(|i| hosts.get(*i)) {
            let attempt = tokio::time::timeout(limit, async {
                let mut up = connect_endpoint(ci, endpoint, application_name).await?;
                up.check_target(pass, endpoint).await?;
                up.endpoint = Some(endpoint.clone());
                Ok::<_, ConnectError>(up)
            });
            let outcome = tokio::select! {
                () = shutdown.cancelled() => return Err(ConnectError::Shutdown),
                outcome = attempt => outcome,
            };
            let error = match outcome {
                Ok(Ok(done)) => return Ok(done),
                Ok(Err(e)) => e,
                Err(_) => ConnectError::Timeout,
            };
            let host = format!("{}:{}", endpoint.pgpass_host(), endpoint.port);
            debug!(%host, %error, "host failed");
            failures.push((host, error));
        }
    }
    Err(ConnectError::from_failures(failures))
}

async fn connect_endpoint(
    ci: &ConnInfo,
    endpoint: &Endpoint,
    application_name: &str,
) -> Result<Upstream, ConnectError> {
    let host = endpoint.pgpass_host();
    if let Some(Host::UnixSocket(dir)) = &endpoint.host {
        if matches!(
            ci.sslmode,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull
        ) {
            return Err(ConnectError::SocketWithTls(ci.sslmode.as_str()));
        }
        let path = dir.join(format!(".s.PGSQL.{}", endpoint.port));
        let sock = UnixStream::connect(&path)
            .await
            .map_err(|source| ConnectError::Connect {
                host: host.clone(),
                port: endpoint.port,
                source,
            })?;
        return login(
            ci,
            Socket::Unix(sock),
            Channel::Plain,
            &host,
            endpoint.port,
            application_name,
        )
        .await;
    }
    if ci.sslmode == SslMode::Allow {
        // libpq's "allow": plaintext first, TLS if that is refused.
        let plain = open_tcp(endpoint, &host, Some(&ci.keepalives)).await?;
        match login(
            ci,
            Socket::Plain(plain),
            Channel::Plain,
            &host,
            endpoint.port,
            application_name,
        )
        .await
        {
            Err(ConnectError::Refused(e)) => {
                warn!(error = %e, "plaintext login refused, retrying with SSL")
            }
            other => return other,
        }
    }
    let tcp = open_tcp(endpoint, &host, Some(&ci.keepalives)).await?;
    let (socket, channel) = negotiate_tls(ci, tcp, &host).await?;
    login(ci, socket, channel, &host, endpoint.port, application_name).await
}

/// Asks the server at `endpoint` to cancel what backend `pid` runs (a CancelRequest on a
/// connection of its own, in plaintext as libpq's `PQcancel` sends it), within `limit`.
///
/// # Errors
/// The server could not be reached or the request not written in time.
pub(crate) async fn cancel(
    endpoint: &Endpoint,
    pid: i32,
    key: CancelKey,
    limit: Duration,
) -> Result<(), ConnectError> {
    let mut request = bytes::BytesMut::new();
    StartupPacket::Cancel {
        process_id: pid,
        secret_key: key.0,
    }
    .write(&mut request)?;
    let host = endpoint.pgpass_host();
    let send = async {
        let io_err = |source| ConnectError::Connect {
            host: host.clone(),
            port: endpoint.port,
            source,
        };
        match &endpoint.host {
            Some(Host::UnixSocket(dir)) => {
                let path = dir.join(format!(".s.PGSQL.{}", endpoint.port));
                let mut sock = UnixStream::connect(&path).await.map_err(io_err)?;
                sock.write_all(&request).await.map_err(io_err)
            }
            _ => {
                let mut sock = open_tcp(endpoint, &host, None).await?;
                sock.write_all(&request).await.map_err(io_err)
            }
        }
    };
    tokio::time::timeout(limit, send)
        .await
        .map_err(|_| ConnectError::Timeout)?
}

async fn open_tcp(
    endpoint: &Endpoint,
    host: &str,
    keepalives: Option<&Keepalives>,
) -> Result<TcpStream, ConnectError> {
    let err = |source| ConnectError::Connect {
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
    if let Some(k) = keepalives {
        set_keepalives(&stream, k).map_err(err)?;
    }
    Ok(stream)
}

/// TCP keepalives as libpq sets them (`setKeepalivesIdle` and its siblings): on unless
/// `keepalives=0`, with the kernel's timings except those the connection string gives.
/// They find a dead upstream that stays silent for long by right, as a walsender does
/// during a base backup's checkpoint.
fn set_keepalives(stream: &TcpStream, k: &Keepalives) -> std::io::Result<()> {
    let sock = socket2::SockRef::from(stream);
    if !k.enabled {
        return sock.set_keepalive(false);
    }
    let mut params = socket2::TcpKeepalive::new();
    if let Some(idle) = k.idle.filter(|s| *s > 0) {
        params = params.with_time(Duration::from_secs(idle.into()));
    }
    if let Some(interval) = k.interval.filter(|s| *s > 0) {
        params = params.with_interval(Duration::from_secs(interval.into()));
    }
    if let Some(count) = k.count.filter(|n| *n > 0) {
        params = params.with_retries(count);
    }
    sock.set_tcp_keepalive(&params)
}

/// Sends SSLRequest when `sslmode` asks for it and starts TLS on `S`.
async fn negotiate_tls(
    ci: &ConnInfo,
    mut tcp: TcpStream,
    host: &str,
) -> Result<(Socket, Channel), ConnectError> {
    let required = matches!(
        ci.sslmode,
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull
    );
    if matches!(ci.sslmode, SslMode::Disable) {
        return Ok((Socket::Plain(tcp), Channel::Plain));
    }
    let request = [0u8, 0, 0, 8, 0x04, 0xD2, 0x16, 0x2F];
    tcp.write_all(&request).await.map_err(ConnError::from)?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await.map_err(ConnError::from)?;
    match answer {
        [b'S'] => {}
        [b'N'] if !required => return Ok((Socket::Plain(tcp), Channel::Plain)),
        [b'N'] => return Err(ConnectError::SslRefused),
        [other] => return Err(ConnectError::SslBadResponse(char::from(other))),
    }
    let config = tls::client_config(ci).map_err(|e| ConnectError::Tls(e.to_string()))?;
    let name = tls::server_name(host).map_err(|e| ConnectError::Tls(e.to_string()))?;
    let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| ConnectError::Tls(e.to_string()))?;
    let end_point = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
        .and_then(|cert| tls::server_end_point_hash(cert.as_ref()));
    Ok((
        Socket::Tls(Box::new(stream)),
        Channel::Tls {
            server_end_point: end_point,
        },
    ))
}

/// StartupMessage, authentication, and the messages up to ReadyForQuery, through an
/// [`UpstreamSession`].
async fn login(
    ci: &ConnInfo,
    socket: Socket,
    channel: Channel,
    host: &str,
    port: u16,
    application_name: &str,
) -> Result<Upstream, ConnectError> {
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
    let password = password_for(ci, host, port);
    let auth = ClientAuth::new(&ci.user, password, ci.channel_binding, channel);
    let mut session = UpstreamSession::new(params, auth)?;
    let mut conn = Connection::new(socket);
    loop {
        conn.send(session.take_output()).await?;
        let frame = conn.recv(session.frame_limit()).await?;
        if let Event::Ready(server) = session.message(frame, Instant::now())? {
            return Ok(Upstream {
                conn,
                session,
                server,
                endpoint: None,
            });
        }
    }
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

impl Upstream {
    /// Asks what the server did not report of its kind, and leaves it (Terminate) when it is
    /// not the kind `pass` takes.
    async fn check_target(&mut self, pass: Pass, endpoint: &Endpoint) -> Result<(), ConnectError> {
        let mut kind =
            ServerKind::reported(self.server.default_read_only, self.server.in_hot_standby);
        loop {
            match target::check(pass, kind, self.server.version_num) {
                TargetCheck::Accept => return Ok(()),
                TargetCheck::Ask(query) => {
                    let result = self.query(query.sql()).await.map_err(|e| match e {
                        UpstreamError::Session(e) => ConnectError::from(e),
                        UpstreamError::Conn(e) => ConnectError::Conn(e),
                        other => ConnectError::Session(SessionError::Protocol(other.to_string())),
                    })?;
                    let value = single_text(&result, query.sql()).map_err(SessionError::from)?;
                    kind.answer(query, &value).map_err(SessionError::Protocol)?;
                }
                TargetCheck::Reject(reason) => {
                    // Closed politely, as libpq does.
                    self.session.leave();
                    self.conn.send(self.session.take_output()).await?;
                    self.conn.shutdown().await;
                    return Err(ConnectError::WrongKind {
                        host: endpoint.pgpass_host(),
                        port: endpoint.port,
                        reason,
                    });
                }
            }
        }
    }

    /// Sends `sql` and reads its whole answer, within the reply timeout.
    ///
    /// # Errors
    /// A connection failure, a malformed answer, or the server's error.
    pub(crate) async fn query(&mut self, sql: &str) -> Result<QueryResult, UpstreamError> {
        self.session.query(sql)?;
        loop {
            self.conn.send(self.session.take_output()).await?;
            let frame = self.conn.recv_reply(self.session.frame_limit()).await?;
            match self.session.message(frame, Instant::now())? {
                Event::Result(result) => return Ok(result),
                Event::Continue => {}
                other => {
                    let text = format!("unexpected answer to {sql}: {other:?}");
                    return Err(SessionError::Protocol(text).into());
                }
            }
        }
    }

    /// The answer to `START_REPLICATION` up to copy mode: `None` once streaming, or the next
    /// timeline when the server skipped copy mode.
    pub(crate) async fn next_answer(&mut self) -> Result<Option<EndOfTimeline>, UpstreamError> {
        loop {
            self.conn.send(self.session.take_output()).await?;
            let frame = self.conn.recv_reply(self.session.frame_limit()).await?;
            match self.session.message(frame, Instant::now())? {
                Event::Streaming => return Ok(None),
                Event::TimelineEnded(next) => return Ok(Some(next)),
                Event::Continue => {}
                other => {
                    let text = format!("unexpected answer to START_REPLICATION: {other:?}");
                    return Err(SessionError::Protocol(text).into());
                }
            }
        }
    }
}
