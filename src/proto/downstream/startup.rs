//! The start of a downstream connection, as `postmaster.c:ProcessStartupPacket` and
//! `postinit.c` handle it for a physical walsender:
//! - SSLRequest is answered `S` when the port has a certificate ([`Action::StartTls`] follows)
//!   and `N` otherwise; GSSENCRequest always `N`. Bytes sent ahead of that answer are refused
//!   (08P01 "received unencrypted data after SSL request"), and a request that may not come
//!   again (a second of a kind, either one over TLS) falls to the protocol version check
//!   (0A000 "unsupported frontend protocol 1234.5679 …");
//! - a TLS ClientHello as the first bytes is PostgreSQL 17's direct TLS;
//! - a CancelRequest is closed silently, as is a first packet whose length is out of range
//!   (PostgreSQL only logs it); the request itself goes to the service ([`Action::Cancel`]),
//!   which cancels a relayed BASE_BACKUP upstream when the pid and key match;
//! - the StartupMessage: a user is required (28000), `replication` must be a Boolean that is
//!   true (`database` is refused: logical replication is not relayed; other values are 22023);
//!   a plain SQL connection gets PostgreSQL's "no pg_hba.conf entry" rejection;
//! - until the relay has reached its upstream once it has no identity to report (57P03);
//! - then [`super::authenticate`] decides who gets in, and beyond `max_wal_senders` there is
//!   no place (53300);
//! - the greeting: NegotiateProtocolVersion when the client asked for a newer minor version or
//!   `_pq_.` options, AuthenticationOk, the ParameterStatus values clients read (with the
//!   upstream's `server_version`), BackendKeyData and ReadyForQuery.

use super::authenticate::{self, Authenticated, Client};
use super::reply::printable;
use super::{
    Action, Login, Outbox, Pending, PendingLogin, Phase, RelayView, SenderClaim, SessionConfig,
    TlsSession, reply,
};
use crate::types::{BackendPid, SqlState};
use crate::wire::{
    Authentication, BackendMessage, ErrorFields, StartupMessage, StartupPacket, WireError,
};

/// The protocol version PostgreSQL answers in NegotiateProtocolVersion: 3.0.
const PROTOCOL_3_0: i32 = 196_608;

/// Which encryption requests the client has already made, and the TLS session if one runs.
#[derive(Debug, Default, Clone)]
pub(super) struct Startup {
    ssl_done: bool,
    gss_done: bool,
    tls: Option<TlsSession>,
}

impl Startup {
    /// Takes one first packet. An SSLRequest is answered `S` when `tls` (a certificate is
    /// configured) and `N` otherwise; a GSSENCRequest always `N`. As in `ProcessStartupPacket`,
    /// each may come once, and a GSSENCRequest only before TLS is accepted.
    pub(super) fn packet(
        mut self,
        io: &mut Outbox,
        config: &SessionConfig,
        client: Client<'_>,
        packet: Result<StartupPacket, WireError>,
        buffered: bool,
        view: &RelayView,
    ) -> Phase {
        let packet = match packet {
            Ok(p) => p,
            Err(e @ WireError::StartupLength { .. }) => {
                // Only logged, as PostgreSQL does (COMMERROR).
                tracing::debug!(error = %e, "connection closed during startup");
                return io.close();
            }
            Err(e) => return io.fatal(&ErrorFields::fatal(e.sqlstate(), e.to_string())),
        };
        let (allowed, code, accept) = match packet {
            StartupPacket::SslRequest => (!self.ssl_done, "1234.5679", config.tls),
            StartupPacket::GssEncRequest => (!self.gss_done, "1234.5680", false),
            StartupPacket::Cancel {
                process_id,
                secret_key,
            } => {
                io.act(Action::Cancel {
                    pid: BackendPid(process_id),
                    secret_key,
                });
                return io.close();
            }
            StartupPacket::Startup(message) => {
                let client = Client {
                    tls: self.tls.as_ref(),
                    ..client
                };
                return check(io, &client, message, view);
            }
        };
        if !allowed {
            let text = format!("unsupported frontend protocol {code}: server supports 3.0 to 3.0");
            // Not taken as a request, the code falls to the protocol version check.
            return io.fatal(&ErrorFields::fatal(SqlState::FEATURE_NOT_SUPPORTED, text));
        }
        io.out.extend_from_slice(if accept { b"S" } else { b"N" });
        if buffered {
            // Bytes that came before the answer were not encrypted, and may have been
            // injected: they are never read as part of the session.
            let e = ErrorFields::fatal(
                SqlState::PROTOCOL_VIOLATION,
                "received unencrypted data after SSL request",
            )
            .with_detail("This could be either a client-software bug or evidence of an attempted man-in-the-middle attack.");
            return io.fatal(&e);
        }
        if code == "1234.5679" {
            self.ssl_done = true;
            self.gss_done |= accept;
        } else {
            self.gss_done = true;
        }
        if accept {
            io.act(Action::StartTls { direct: false });
            return Phase::Waiting(Pending::Tls(Box::new(self)));
        }
        Phase::Startup(self)
    }

    /// The client opened with a TLS ClientHello (PostgreSQL 17's `sslnegotiation=direct`).
    pub(super) fn direct_tls(self, io: &mut Outbox, config: &SessionConfig) -> Phase {
        if !config.tls || self.ssl_done {
            // Without a certificate these bytes are only an impossible length, as they are to
            // a server without TLS: closed without an answer.
            return io.close();
        }
        io.act(Action::StartTls { direct: true });
        Phase::Waiting(Pending::Tls(Box::new(Startup {
            ssl_done: true,
            gss_done: true,
            tls: None,
        })))
    }

    /// The handshake succeeded: first packets go on, encrypted.
    pub(super) fn tls_started(mut self, tls: TlsSession) -> Phase {
        self.tls = Some(tls);
        Phase::Startup(self)
    }
}

/// The checks PostgreSQL makes of the StartupMessage, then authentication.
fn check(io: &mut Outbox, client: &Client<'_>, startup: StartupMessage, view: &RelayView) -> Phase {
    match refusal(client, &startup, view) {
        Err(fatal) => io.fatal(&fatal),
        Ok(user) => {
            let login = PendingLogin {
                user: user.to_owned(),
                application_name: printable(startup.get("application_name").unwrap_or("")),
                startup,
                how: None,
            };
            authenticate::begin(io, client, login)
        }
    }
}

/// The user, or why the StartupMessage is refused.
fn refusal<'a>(
    client: &Client<'_>,
    startup: &'a StartupMessage,
    view: &RelayView,
) -> Result<&'a str, ErrorFields> {
    let user = startup
        .get("user")
        .filter(|u| !u.is_empty())
        .ok_or_else(|| {
            ErrorFields::fatal(
                SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
                "no PostgreSQL user name specified in startup packet",
            )
        })?;
    match startup.get("replication") {
        Some(v) if is_true(v) => {}
        Some("database") => {
            return Err(ErrorFields::fatal(
                SqlState::FEATURE_NOT_SUPPORTED,
                "logical replication connections (replication=database) are not supported by walrelay",
            )
            .with_hint("walrelay relays physical replication only."));
        }
        Some(v) if !is_false(v) => {
            let text = format!(
                "invalid value for parameter \"replication\": \"{}\"",
                printable(v)
            );
            return Err(ErrorFields::fatal(SqlState::INVALID_PARAMETER_VALUE, text));
        }
        _ => {
            let db = startup.get("database").unwrap_or(user);
            return Err(no_hba_entry_for_database(client, user, db));
        }
    }
    if view.upstream.is_none() {
        return Err(ErrorFields::fatal(
            SqlState::CANNOT_CONNECT_NOW,
            "the database system is starting up",
        )
        .with_detail("walrelay has not reached its upstream server yet."));
    }
    Ok(user)
}

/// The answer to [`Action::ClaimSender`]: greet, or refuse with 53300.
pub(super) fn logged_in(
    io: &mut Outbox,
    config: &SessionConfig,
    login: PendingLogin,
    claim: Option<SenderClaim>,
    view: &RelayView,
) -> (Phase, Option<Login>) {
    let Some(claim) = claim else {
        let text = format!(
            "number of requested standby connections exceeds max_wal_senders (currently {})",
            config.max_wal_senders
        );
        let fatal = ErrorFields::fatal(SqlState::TOO_MANY_CONNECTIONS, text);
        return (io.fatal(&fatal), None);
    };
    let done = Login {
        user: login.user,
        application_name: login.application_name,
        pid: claim.pid,
        how: login.how.unwrap_or(Authenticated {
            method: "trust",
            rule: None,
            identity: None,
        }),
    };
    greet(io, &done, &login.startup, claim.cancel_key, view);
    (Phase::Command, Some(done))
}

/// PostgreSQL's rejection of a connection to a database (`auth.c:ClientAuthentication`): the
/// relay serves no database, so no rule lets one in.
fn no_hba_entry_for_database(client: &Client<'_>, user: &str, database: &str) -> ErrorFields {
    let encryption = match client.tls {
        Some(_) => "SSL encryption",
        None => "no encryption",
    };
    let text = format!(
        "no pg_hba.conf entry for host \"{}\", user \"{}\", database \"{}\", {encryption}",
        client.peer, user, database
    );
    ErrorFields::fatal(SqlState::INVALID_AUTHORIZATION_SPECIFICATION, text)
}

/// AuthenticationOk, the ParameterStatus values clients read, BackendKeyData, ReadyForQuery.
fn greet(
    io: &mut Outbox,
    login: &Login,
    startup: &StartupMessage,
    cancel_key: i32,
    view: &RelayView,
) {
    let out = &mut io.out;
    let options: Vec<String> = startup
        .params
        .iter()
        .filter(|(n, _)| n.starts_with("_pq_."))
        .map(|(n, _)| n.clone())
        .collect();
    if startup.minor_version > 0 || !options.is_empty() {
        reply::message(
            out,
            &BackendMessage::NegotiateProtocolVersion {
                newest_version: PROTOCOL_3_0,
                unrecognized: options,
            },
        );
    }
    reply::message(out, &BackendMessage::Authentication(Authentication::Ok));
    for (name, value) in parameters(login, view) {
        let name = name.to_owned();
        reply::message(out, &BackendMessage::ParameterStatus { name, value });
    }
    reply::message(
        out,
        &BackendMessage::BackendKeyData {
            process_id: login.pid.0,
            secret_key: cancel_key,
        },
    );
    reply::ready_for_query(out);
}

/// The ParameterStatus values a PostgreSQL walsender reports, in its order, with the
/// upstream's `server_version` (and, from 14 on, the two it added).
fn parameters(login: &Login, view: &RelayView) -> Vec<(&'static str, String)> {
    let (version, version_num) = view
        .upstream
        .as_deref()
        .map(|u| (u.server_version.clone(), u.version_num))
        .unwrap_or_default();
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
    params
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
