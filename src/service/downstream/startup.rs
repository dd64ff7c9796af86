//! The start of a downstream connection, as `postmaster.c:ProcessStartupPacket` and
//! `postinit.c` handle it for a physical walsender: SSLRequest and GSSENCRequest answered `N`
//! (and bytes sent ahead of that answer refused), CancelRequest closed silently, the
//! StartupMessage checked, the connection limit, authentication (trust for loopback clients
//! only, until access rules exist), then ParameterStatus, BackendKeyData and ReadyForQuery.

use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncWrite};

use super::{SenderSlot, ServerContext};
use crate::service::conn::ConnError;
use crate::service::conn::{FrameReader, FrameWriter};
use crate::wire::frame::MAX_STARTUP_PACKET_LEN;
use crate::wire::{
    BackendMessage, ErrorFields, StartupMessage, StartupPacket, TransactionStatus, WireError,
};
use std::sync::Arc;

/// Who is connected, once the login succeeded.
#[derive(Debug)]
pub struct Login {
    /// The user name from the StartupMessage.
    pub user: String,
    /// The application name (made printable), if one was given.
    pub application_name: String,
    /// The connection's place among `max_wal_senders`, with the pid reported in
    /// BackendKeyData (it names temporary slots).
    pub slot: SenderSlot,
}

/// How the startup ended without a session.
#[derive(Debug)]
pub enum Refused {
    /// A FATAL error that was sent to the client.
    Fatal(ErrorFields),
    /// The connection closed or broke, or the client cancelled; nothing to answer.
    Silent(ConnError),
}

impl From<ConnError> for Refused {
    fn from(e: ConnError) -> Self {
        Refused::Silent(e)
    }
}

/// Runs the startup and login of one connection.
///
/// # Errors
/// [`Refused`]: the FATAL error already sent, or a silent close.
pub async fn login<R, W>(
    rd: &mut FrameReader<R>,
    wr: &mut FrameWriter<W>,
    peer: SocketAddr,
    ctx: &Arc<ServerContext>,
) -> Result<Login, Refused>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let startup = first_packets(rd, wr).await?;
    let outcome = check(&startup, peer, ctx);
    match outcome {
        Ok(login) => {
            greet(wr, &login, &startup, ctx);
            wr.flush().await?;
            Ok(login)
        }
        Err(fatal) => {
            wr.fatal(&fatal).await;
            Err(Refused::Fatal(fatal))
        }
    }
}

/// Reads first packets until the StartupMessage, answering `N` to encryption requests.
async fn first_packets<R, W>(
    rd: &mut FrameReader<R>,
    wr: &mut FrameWriter<W>,
) -> Result<StartupMessage, Refused>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (mut ssl_done, mut gss_done) = (false, false);
    loop {
        let packet = match rd.startup_packet(MAX_STARTUP_PACKET_LEN).await {
            Ok(p) => p,
            // A length out of range is only logged, as PostgreSQL does (COMMERROR).
            Err(ConnError::Wire(e @ WireError::StartupLength { .. })) => {
                return Err(Refused::Silent(ConnError::Wire(e)));
            }
            Err(ConnError::Wire(e)) => {
                return Err(fatal(wr, e.sqlstate(), e.to_string()).await);
            }
            Err(e) => return Err(Refused::Silent(e)),
        };
        let repeated = match packet {
            StartupPacket::SslRequest => std::mem::replace(&mut ssl_done, true),
            StartupPacket::GssEncRequest => std::mem::replace(&mut gss_done, true),
            StartupPacket::Cancel { .. } => return Err(Refused::Silent(ConnError::Closed)),
            StartupPacket::Startup(message) => return Ok(message),
        };
        if repeated {
            let code = if ssl_done && !gss_done {
                "1234.5679"
            } else {
                "1234.5680"
            };
            let text = format!("unsupported frontend protocol {code}: server supports 3.0 to 3.0");
            return Err(fatal(wr, "08P01", text).await);
        }
        wr.out().extend_from_slice(b"N");
        wr.flush().await?;
        if rd.has_buffered() {
            let text = "received unencrypted data after SSL request";
            return Err(fatal(wr, "08P01", text.into()).await);
        }
    }
}

/// Sends a FATAL error and closes.
async fn fatal<W: AsyncWrite + Unpin>(
    wr: &mut FrameWriter<W>,
    code: &str,
    text: String,
) -> Refused {
    let fields = ErrorFields::new("FATAL", code, text);
    wr.fatal(&fields).await;
    Refused::Fatal(fields)
}

/// The checks PostgreSQL makes between the StartupMessage and AuthenticationOk.
fn check(
    startup: &StartupMessage,
    peer: SocketAddr,
    ctx: &Arc<ServerContext>,
) -> Result<Login, ErrorFields> {
    let user = startup
        .get("user")
        .filter(|u| !u.is_empty())
        .ok_or_else(|| {
            ErrorFields::new(
                "FATAL",
                "28000",
                "no PostgreSQL user name specified in startup packet",
            )
        })?;
    match startup.get("replication") {
        Some(v) if is_true(v) => {}
        Some("database") => {
            return Err(ErrorFields::new(
                "FATAL",
                "0A000",
                "logical replication connections (replication=database) are not supported by walrelay",
            )
            .with_hint("walrelay relays physical replication only."));
        }
        Some(v) if !is_false(v) => {
            let text = format!(
                "invalid value for parameter \"replication\": \"{}\"",
                printable(v)
            );
            return Err(ErrorFields::new("FATAL", "22023", text));
        }
        _ => {
            let db = startup.get("database").unwrap_or(user);
            return Err(no_hba_entry(peer, user, Some(db)));
        }
    }
    if !peer.ip().is_loopback() {
        return Err(no_hba_entry(peer, user, None));
    }
    if ctx.upstream().is_none() {
        return Err(
            ErrorFields::new("FATAL", "57P03", "the database system is starting up")
                .with_detail("walrelay has not reached its upstream server yet."),
        );
    }
    let slot = ctx.claim_sender().ok_or_else(|| {
        let text = format!(
            "number of requested standby connections exceeds max_wal_senders (currently {})",
            ctx.config.max_wal_senders
        );
        ErrorFields::new("FATAL", "53300", text)
    })?;
    Ok(Login {
        user: user.to_owned(),
        application_name: printable(startup.get("application_name").unwrap_or("")),
        slot,
    })
}

/// PostgreSQL's rejection when no `pg_hba.conf` line matches (`auth.c:ClientAuthentication`).
fn no_hba_entry(peer: SocketAddr, user: &str, database: Option<&str>) -> ErrorFields {
    let host = peer.ip();
    let user = printable(user);
    let text = match database {
        None => format!(
            "no pg_hba.conf entry for replication connection from host \"{host}\", user \"{user}\", no encryption"
        ),
        Some(db) => format!(
            "no pg_hba.conf entry for host \"{host}\", user \"{user}\", database \"{}\", no encryption",
            printable(db)
        ),
    };
    ErrorFields::new("FATAL", "28000", text)
}

/// AuthenticationOk, the ParameterStatus values clients read, BackendKeyData, ReadyForQuery.
fn greet<W: AsyncWrite + Unpin>(
    wr: &mut FrameWriter<W>,
    login: &Login,
    startup: &StartupMessage,
    ctx: &ServerContext,
) {
    let (version, version_num) = ctx.server_version();
    let mut params: Vec<(&str, String)> = vec![
        ("application_name", login.application_name.clone()),
        ("client_encoding", "SQL_ASCII".into()),
        ("DateStyle", "ISO, MDY".into()),
    ];
    if version_num >= 140_000 {
        params.push(("default_transaction_read_only", "off".into()));
        params.push(("in_hot_standby", "off".into()));
    }
    params.extend([
        ("integer_datetimes", "on".into()),
        ("IntervalStyle", "postgres".into()),
        ("is_superuser", "on".into()),
        ("server_encoding", "SQL_ASCII".into()),
        ("server_version", version),
        ("session_authorization", login.user.clone()),
        ("standard_conforming_strings", "on".into()),
        ("TimeZone", "Etc/UTC".into()),
    ]);
    let out = wr.out();
    let mut messages = vec![BackendMessage::Authentication(
        crate::wire::Authentication::Ok,
    )];
    if startup.minor_version > 0 || startup.params.iter().any(|(n, _)| n.starts_with("_pq_.")) {
        messages.insert(
            0,
            BackendMessage::NegotiateProtocolVersion {
                newest_version: 196_608,
                unrecognized: startup
                    .params
                    .iter()
                    .filter(|(n, _)| n.starts_with("_pq_."))
                    .map(|(n, _)| n.clone())
                    .collect(),
            },
        );
    }
    messages.extend(
        params
            .into_iter()
            .map(|(name, value)| BackendMessage::ParameterStatus {
                name: name.into(),
                value,
            }),
    );
    messages.push(BackendMessage::BackendKeyData {
        process_id: login.slot.pid.0,
        secret_key: ctx.cancel_key(),
    });
    messages.push(BackendMessage::ReadyForQuery(TransactionStatus::Idle));
    for m in messages {
        // Encoding these small, well-formed messages cannot fail.
        let _ = m.write(out);
    }
}

fn is_true(v: &str) -> bool {
    matches!(
        v.to_ascii_lowercase().as_str(),
        "true" | "on" | "yes" | "1" | "t" | "y"
    )
}

fn is_false(v: &str) -> bool {
    matches!(
        v.to_ascii_lowercase().as_str(),
        "false" | "off" | "no" | "0" | "f" | "n"
    )
}

/// Text made printable ASCII the way PostgreSQL cleans `application_name`
/// (`pg_clean_ascii`): anything else becomes `?`.
pub fn printable(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if (b' '..=b'~').contains(&b) {
                char::from(b)
            } else {
                '?'
            }
        })
        .collect()
}
