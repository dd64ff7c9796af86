//! Who may log in, and the proof they give, as `auth.c:ClientAuthentication` decides it for a
//! physical walsender.
//!
//! The first rule of the [`AccessPolicy`] that matches the connection (its address or the
//! Unix socket, TLS or not, the user, the `replication` database) decides the method:
//! - `trust` lets the user in, `reject` refuses ("pg_hba.conf rejects replication connection
//!   …"), and no matching rule is the "no pg_hba.conf entry" refusal;
//! - `scram-sha-256` runs SCRAM-SHA-256, or -PLUS over TLS with a certificate hash; `md5`
//!   sends an MD5 challenge only to a user whose stored secret is an MD5 hash, and runs SCRAM
//!   otherwise (an unknown user included: a mock exchange that fails at the proof);
//!   `password` takes a cleartext password, over TLS only;
//! - `cert`, and `clientcert=verify-ca|verify-full` on any rule, need a client certificate
//!   the CA file verified; `cert` and `verify-full` map its common name to the user, through
//!   the `map=` of the rule if there is one.
//!
//! Without rules (no `--hba-file`), loopback and Unix-socket clients are trusted and everyone
//! else is refused. Every refusal is logged once, with the peer (the span), the user, the
//! reason and the rule; never a password or a secret.

use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use tracing::info;

use super::{Action, Outbox, Pending, PendingLogin, Phase, TlsSession, reply};
use crate::proto::access::{AuthMethod, ClientCertMode, HbaFile, HbaRequest, HbaRule, IdentFile};
use crate::proto::access::{LocalNetwork, Transport};
use crate::proto::auth::server::{MOCK_NONCE_LEN, SERVER_NONCE_LEN};
use crate::proto::auth::{
    AuthFailure, AuthFile, ScramServer, ServerChannel, check_cleartext_password,
    check_md5_response, check_mechanism, md5_rule_uses_md5, mechanisms,
};
use crate::types::SqlState;
use crate::wire::{Authentication, BackendMessage, ErrorFields, Frame, WireError};

/// The longest SASL message a client may send (`PG_MAX_SASL_MESSAGE_LENGTH`).
pub const SASL_FRAME_LIMIT: usize = 1024;

/// The longest password message a client may send (`PG_MAX_AUTH_TOKEN_LENGTH`).
pub const PASSWORD_FRAME_LIMIT: usize = 65_535;

/// What decides who may connect: the rules, the users' secrets, the name maps.
#[derive(Debug, Clone)]
pub struct AccessPolicy {
    /// The `pg_hba.conf` rules; `None` trusts loopback and Unix-socket clients and refuses
    /// everyone else.
    pub hba: Option<HbaFile>,
    /// The users and their secrets, for the password methods.
    pub users: AuthFile,
    /// The user-name maps of `map=` options.
    pub ident: IdentFile,
    /// The machine's networks, for `samehost` and `samenet`.
    pub local_networks: Vec<LocalNetwork>,
    /// Whether client certificates are verified (a CA file is configured).
    pub client_ca: bool,
    /// The relay's stable secret that mock SCRAM salts are derived from.
    pub mock_nonce: [u8; MOCK_NONCE_LEN],
}

impl Default for AccessPolicy {
    /// No rules, no users: loopback trusted.
    fn default() -> AccessPolicy {
        AccessPolicy {
            hba: None,
            users: AuthFile::default(),
            ident: IdentFile::default(),
            local_networks: Vec::new(),
            client_ca: false,
            mock_nonce: [0; MOCK_NONCE_LEN],
        }
    }
}

/// Where a client connects from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// Over TCP, from this address.
    Tcp(IpAddr),
    /// Over the Unix-domain socket.
    Local,
}

impl From<IpAddr> for Peer {
    fn from(ip: IpAddr) -> Peer {
        Peer::Tcp(ip)
    }
}

impl std::fmt::Display for Peer {
    /// As PostgreSQL names the host in its messages: the address, or `[local]`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Peer::Tcp(ip) => write!(f, "{ip}"),
            Peer::Local => f.write_str("[local]"),
        }
    }
}

/// How a user got in, for the log line of the login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticated {
    /// The method's name as `pg_hba.conf` writes it.
    pub method: &'static str,
    /// The rule, as `describe` gives it; `None` without rules.
    pub rule: Option<String>,
    /// The client certificate's common name, when a certificate was checked.
    pub identity: Option<String>,
}

/// The connection a decision is about.
pub(super) struct Client<'a> {
    pub(super) peer: Peer,
    pub(super) tls: Option<&'a TlsSession>,
    pub(super) policy: &'a Arc<AccessPolicy>,
    pub(super) nonce: [u8; SERVER_NONCE_LEN],
}

/// An exchange waiting for the client's next message.
#[derive(Debug)]
pub(super) struct Exchange {
    login: PendingLogin,
    rule: HbaRule,
    step: Step,
    policy: Arc<AccessPolicy>,
    identity: Option<String>,
}

enum Step {
    /// SCRAM on `channel`; `mechanism` is set once a SASLInitialResponse without data chose
    /// it.
    Sasl {
        server: Box<ScramServer>,
        channel: ServerChannel,
        initial: bool,
        mechanism: Option<String>,
    },
    /// An MD5 challenge with this salt was sent.
    Md5 { salt: [u8; 4] },
    /// A cleartext password was asked for.
    Password,
}

impl std::fmt::Debug for Step {
    /// The step, without the exchange's keys.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::Sasl { initial, .. } => write!(f, "Sasl {{ initial: {initial} }}"),
            Step::Md5 { .. } => f.write_str("Md5"),
            Step::Password => f.write_str("Password"),
        }
    }
}

impl Exchange {
    /// The longest message the client may send next.
    pub(super) fn frame_limit(&self) -> usize {
        match self.step {
            Step::Sasl { .. } => SASL_FRAME_LIMIT,
            Step::Md5 { .. } | Step::Password => PASSWORD_FRAME_LIMIT,
        }
    }
}

/// Decides how `login` authenticates: at once (trust, cert), with an exchange, or not at all.
pub(super) fn begin(io: &mut Outbox, client: &Client<'_>, login: PendingLogin) -> Phase {
    let user = login.user().to_owned();
    let encryption = if client.tls.is_some() {
        "SSL encryption"
    } else {
        "no encryption"
    };
    let Some(hba) = &client.policy.hba else {
        let trusted = match client.peer {
            Peer::Local => true,
            Peer::Tcp(ip) => ip.is_loopback(),
        };
        if trusted {
            let how = Authenticated {
                method: "trust",
                rule: None,
                identity: None,
            };
            return authenticated(io, login, how);
        }
        let e = no_hba_entry(client.peer, &user, encryption);
        return refuse(
            io,
            &e,
            &user,
            None,
            "no rules given, and only loopback is trusted",
        );
    };
    let transport = match client.peer {
        Peer::Local => Transport::Local,
        Peer::Tcp(addr) => Transport::Host {
            addr,
            ssl: client.tls.is_some(),
        },
    };
    let request = HbaRequest {
        transport,
        user: &user,
        replication: true,
        database: "replication",
        local_networks: &client.policy.local_networks,
    };
    let Some(rule) = hba.matching(&request) else {
        let e = no_hba_entry(client.peer, &user, encryption);
        return refuse(io, &e, &user, None, "no rule matches");
    };
    let rule = rule.clone();
    let method = rule.method();
    // The certificate comes first, whatever the method (`ClientAuthentication`).
    let certificate = client.tls.and_then(|t| t.client_certificate.clone());
    if rule.clientcert().is_some() || method == AuthMethod::Cert {
        if !client.policy.client_ca {
            let e = ErrorFields::fatal(
                SqlState::CONFIG_FILE_ERROR,
                "client certificates can only be checked if a root certificate store is available",
            );
            return refuse(
                io,
                &e,
                &user,
                Some(&rule),
                "no CA file to check certificates",
            );
        }
        if certificate.is_none() {
            let e = ErrorFields::fatal(
                SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
                "connection requires a valid client certificate",
            );
            return refuse(io, &e, &user, Some(&rule), "no client certificate");
        }
    }
    let identity = certificate.flatten();
    let policy = Arc::clone(client.policy);
    let secret = policy.users.get(&user);
    let step = match method {
        AuthMethod::Trust | AuthMethod::Cert => {
            return finish(io, login, rule, identity, &policy);
        }
        AuthMethod::Reject => {
            let e = ErrorFields::fatal(
                SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
                format!(
                    "pg_hba.conf rejects replication connection for host \"{}\", user \"{}\", {encryption}",
                    client.peer, user
                ),
            );
            return refuse(io, &e, &user, Some(&rule), "the rule rejects");
        }
        AuthMethod::Password if client.tls.is_none() => {
            let e = ErrorFields::fatal(
                SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
                format!(
                    "pg_hba.conf rejects replication connection for host \"{}\", user \"{}\", {encryption}",
                    client.peer,
                    user
                ),
            )
            .with_detail("walrelay accepts password authentication only over SSL encryption.");
            return refuse(io, &e, &user, Some(&rule), "cleartext password without TLS");
        }
        AuthMethod::Password => {
            send(io, Authentication::CleartextPassword);
            Step::Password
        }
        AuthMethod::Md5 if md5_rule_uses_md5(secret) => {
            let mut salt = [0u8; 4];
            salt.iter_mut().zip(client.nonce).for_each(|(s, n)| *s = n);
            send(io, Authentication::Md5Password { salt });
            Step::Md5 { salt }
        }
        AuthMethod::Md5 | AuthMethod::ScramSha256 => {
            let channel = channel(client.tls);
            let names = mechanisms(&channel).into_iter().map(String::from).collect();
            send(io, Authentication::Sasl { mechanisms: names });
            let server = ScramServer::new(
                &user,
                secret,
                &policy.mock_nonce,
                channel.clone(),
                client.nonce,
            );
            Step::Sasl {
                server: Box::new(server),
                channel,
                initial: true,
                mechanism: None,
            }
        }
    };
    Phase::Authenticating(Box::new(Exchange {
        login,
        rule,
        step,
        policy,
        identity,
    }))
}

/// The channel SCRAM runs on.
fn channel(tls: Option<&TlsSession>) -> ServerChannel {
    match tls {
        None => ServerChannel::Plain,
        Some(t) => ServerChannel::Tls {
            certificate_hash: t.certificate_hash.clone(),
        },
    }
}

/// The client's next message in an exchange.
pub(super) fn frame(
    io: &mut Outbox,
    mut exchange: Box<Exchange>,
    frame: Result<Frame, WireError>,
) -> Phase {
    let user = exchange.login.user().to_owned();
    let in_sasl = matches!(exchange.step, Step::Sasl { .. });
    // The type byte is read before the length (`pq_getbyte`, then `pq_getmessage`).
    let tag = match &frame {
        Ok(f) => f.tag,
        Err(WireError::FrameLength { tag, .. }) => *tag,
        Err(_) => b'p',
    };
    if tag != b'p' {
        let what = if in_sasl { "SASL" } else { "password" };
        let e = ErrorFields::fatal(
            SqlState::PROTOCOL_VIOLATION,
            format!("expected {what} response, got message type {tag}"),
        );
        return refuse(
            io,
            &e,
            &user,
            Some(&exchange.rule),
            "not an authentication message",
        );
    }
    let frame = match frame {
        Ok(f) => f,
        Err(e) if in_sasl => {
            // `CheckSASLAuth` fails the login when the message cannot be read.
            info!(error = %e, "closing connection");
            let failure = AuthFailure::password_failed(&user, None);
            return failed(io, &failure, &user, &exchange.rule);
        }
        Err(e) => {
            // `recv_password_packet`: end of file, no answer.
            info!(error = %e, "closing connection");
            return io.close();
        }
    };
    let outcome = match &mut exchange.step {
        Step::Sasl {
            server,
            channel,
            initial,
            mechanism,
        } => match sasl(io, server, channel, initial, mechanism, &frame.body) {
            Ok(false) => return Phase::Authenticating(exchange),
            Ok(true) => Ok(()),
            Err(failure) => Err(failure),
        },
        Step::Md5 { salt } => password_packet(&frame.body).and_then(|response| {
            check_md5_response(exchange.policy.users.get(&user), &user, *salt, response)
        }),
        Step::Password => password_packet(&frame.body).and_then(|password| {
            check_cleartext_password(exchange.policy.users.get(&user), &user, password)
        }),
    };
    match outcome {
        Err(failure) => failed(io, &failure, &user, &exchange.rule),
        Ok(()) => {
            let Exchange {
                login,
                rule,
                policy,
                identity,
                ..
            } = *exchange;
            finish(io, login, rule, identity, &policy)
        }
    }
}

/// One SASL message: `Ok(true)` when the exchange succeeded, `Ok(false)` when it goes on.
fn sasl(
    io: &mut Outbox,
    server: &mut ScramServer,
    channel: &ServerChannel,
    initial: &mut bool,
    mechanism: &mut Option<String>,
    body: &Bytes,
) -> Result<bool, AuthFailure> {
    if std::mem::replace(initial, false) {
        // SASLInitialResponse: the mechanism is checked before the rest is read.
        let Some(end) = body.iter().position(|&b| b == 0) else {
            return Err(protocol("invalid string in message"));
        };
        let name = String::from_utf8_lossy(body.get(..end).unwrap_or_default()).into_owned();
        check_mechanism(channel, &name)?;
        let rest = body.get(end + 1..).unwrap_or_default();
        let Some((len, tail)) = rest.split_first_chunk::<4>() else {
            return Err(protocol("insufficient data left in message"));
        };
        let data = match i32::from_be_bytes(*len) {
            -1 => None,
            n => match usize::try_from(n).ok().filter(|n| *n <= tail.len()) {
                Some(n) => tail.get(..n),
                None => return Err(protocol("insufficient data left in message")),
            },
        };
        if data.map_or(0, <[u8]>::len) != tail.len() {
            return Err(protocol("invalid message format"));
        }
        let Some(data) = data else {
            // No initial response: an empty challenge, and the client-first-message follows.
            *mechanism = Some(name);
            send(io, Authentication::SaslContinue(Bytes::new()));
            return Ok(false);
        };
        let first = server.client_first(&name, data)?;
        send(io, Authentication::SaslContinue(Bytes::from(first)));
        return Ok(false);
    }
    if let Some(name) = mechanism.take() {
        let first = server.client_first(&name, body)?;
        send(io, Authentication::SaslContinue(Bytes::from(first)));
        return Ok(false);
    }
    let last = server.client_final(body)?;
    send(io, Authentication::SaslFinal(Bytes::from(last)));
    Ok(true)
}

/// The password of a PasswordMessage (`recv_password_packet`).
fn password_packet(body: &[u8]) -> Result<&[u8], AuthFailure> {
    match body.split_last() {
        Some((0, password)) if !password.contains(&0) => Ok(password),
        _ => Err(protocol("invalid password packet size")),
    }
}

fn protocol(message: &str) -> AuthFailure {
    AuthFailure {
        sqlstate: SqlState::PROTOCOL_VIOLATION,
        message: message.to_owned(),
        detail: None,
        log_detail: None,
    }
}

/// The method succeeded: for `cert` and `clientcert=verify-full`, the certificate's common
/// name must map to the user (`CheckCertAuth`); then the login waits for its place.
fn finish(
    io: &mut Outbox,
    login: PendingLogin,
    rule: HbaRule,
    identity: Option<String>,
    policy: &AccessPolicy,
) -> Phase {
    let user = login.user().to_owned();
    let method = rule.method();
    if method == AuthMethod::Cert || rule.clientcert() == Some(ClientCertMode::VerifyFull) {
        let why = match &identity {
            None => Some("client certificate contains no user name".to_owned()),
            Some(cn) => {
                let mapped = match rule.map() {
                    Some(map) => policy.ident.maps(map, cn, &user),
                    None => cn == &user,
                };
                (!mapped).then(|| {
                    format!("provided user name ({user}) and authenticated user name ({cn}) do not match")
                })
            }
        };
        if let Some(why) = why {
            let e = auth_failed(method, &user);
            return refuse(io, &e, &user, Some(&rule), &why);
        }
    }
    let how = Authenticated {
        method: method.name(),
        rule: Some(rule.describe()),
        identity,
    };
    authenticated(io, login, how)
}

/// `auth_failed`'s message for a method whose check failed.
fn auth_failed(method: AuthMethod, user: &str) -> ErrorFields {
    match method {
        AuthMethod::Trust => ErrorFields::fatal(
            SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
            format!("\"trust\" authentication failed for user \"{user}\""),
        ),
        AuthMethod::Cert => ErrorFields::fatal(
            SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
            format!("certificate authentication failed for user \"{user}\""),
        ),
        AuthMethod::Reject => ErrorFields::fatal(
            SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
            format!("authentication failed for user \"{user}\": host rejected"),
        ),
        AuthMethod::ScramSha256 | AuthMethod::Md5 | AuthMethod::Password => ErrorFields::fatal(
            SqlState::INVALID_PASSWORD,
            format!("password authentication failed for user \"{user}\""),
        ),
    }
}

/// The user is in: wait for a place among `max_wal_senders`.
fn authenticated(io: &mut Outbox, login: PendingLogin, how: Authenticated) -> Phase {
    io.act(Action::ClaimSender);
    Phase::Waiting(Pending::Claim(Box::new(login.authenticated(how))))
}

/// An exchange failed with `failure`.
fn failed(io: &mut Outbox, failure: &AuthFailure, user: &str, rule: &HbaRule) -> Phase {
    let mut e = ErrorFields::fatal(failure.sqlstate.clone(), failure.message.clone());
    if let Some(detail) = &failure.detail {
        e = e.with_detail(detail.clone());
    }
    let reason = failure.log_detail.as_deref().unwrap_or(&failure.message);
    refuse(io, &e, user, Some(rule), reason)
}

/// Sends `e` and closes, logging the refusal once: the user, why, and the rule.
fn refuse(
    io: &mut Outbox,
    e: &ErrorFields,
    user: &str,
    rule: Option<&HbaRule>,
    reason: &str,
) -> Phase {
    let rule = rule.map(HbaRule::describe);
    info!(
        user = %reply::printable(user),
        sqlstate = %e.code,
        error = %reply::printable(&e.message),
        reason,
        rule = rule.as_deref().unwrap_or("-"),
        "connection refused"
    );
    io.refuse(e)
}

/// PostgreSQL's rejection when no rule matches (`auth.c:ClientAuthentication`).
pub(super) fn no_hba_entry(peer: Peer, user: &str, encryption: &str) -> ErrorFields {
    ErrorFields::fatal(
        SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
        format!(
            "no pg_hba.conf entry for replication connection from host \"{peer}\", user \"{user}\", {encryption}"
        ),
    )
}

fn send(io: &mut Outbox, request: Authentication) {
    reply::message(&mut io.out, &BackendMessage::Authentication(request));
}
