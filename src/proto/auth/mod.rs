//! PostgreSQL authentication, both sides, as sans-IO code.
//!
//! The server side, for clients of the relay, is in submodules: [`secret`] (stored secrets
//! and the auth file), [`server`] (SCRAM-SHA-256 and -PLUS, `auth-scram.c`) and [`password`]
//! (the `md5` and `password` methods, `auth.c` and `crypt.c`).
//!
//! The client side, for the relay's own logins upstream, is this module:
//! [`ClientAuth`] takes each authentication request the server sends (`'R'` messages,
//! decoded by [`AuthRequest::parse`]) and says what to answer ([`AuthAction`]). It mirrors
//! libpq's `fe-auth.c` and `fe-auth-scram.c`: the same mechanism choice and channel-binding
//! rules (`pg_SASL_init`, `check_expected_areq`), the same `"fe_sendauth: no password
//! supplied"`. It is stricter than libpq in three ways:
//! - a cleartext password is only ever sent over TLS;
//! - a SCRAM server-first-message is checked before any PBKDF2 work: size, nonce prefix,
//!   base64 salt, no `m=` extension, and an iteration count of at most
//!   [`MAX_SCRAM_ITERATIONS`];
//! - `AuthenticationOk` is refused until the server's SCRAM signature has been verified.
//!
//! SCRAM arithmetic itself is `postgres_protocol::authentication::sasl::ScramSha256`.
//! No error text ever contains the password.

use std::fmt;

use bytes::BytesMut;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{
    ChannelBinding, SCRAM_SHA_256, SCRAM_SHA_256_PLUS, ScramSha256,
};
use postgres_protocol::message::frontend;

use crate::proto::conninfo::{ChannelBindingMode, Password};

mod common;
mod failure;
#[cfg(any(fuzzing, test))]
pub mod fuzzing;
mod messages;
pub mod password;
pub mod secret;
pub mod server;

pub use password::{
    check_cleartext_password, check_md5_response, md5_challenge_response_ok, md5_rule_uses_md5,
};
pub use secret::{AuthFile, AuthFileError, ScramSecret, Secret, SecretError, SecretKind};
pub use server::{AuthFailure, ScramServer, ServerChannel, check_mechanism, mechanisms, mock_salt};

/// The largest iteration count accepted in a SCRAM server-first-message.
///
/// The count drives the client's PBKDF2 loop, so a hostile server could otherwise make the
/// relay spin for minutes per login. PostgreSQL's default is 4096 (`scram_iterations`, PG 16+,
/// can raise it); 100 000 costs about 50 ms of CPU here and is also the limit
/// `ScramSha256` itself enforces, so a higher cap would never be reached.
pub const MAX_SCRAM_ITERATIONS: u32 = 100_000;

/// The largest SASL payload accepted from the server. Real ones are under 200 bytes.
pub const MAX_SASL_MESSAGE: usize = 4096;

/// Why authentication failed. No variant ever holds the password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The server wants a password and none (or an empty one) was given.
    #[error("fe_sendauth: no password supplied")]
    NoPassword,
    /// The server asked for a cleartext password on a connection without TLS.
    #[error(
        "server requested a cleartext password over an unencrypted connection; refusing to send it"
    )]
    CleartextWithoutTls,
    /// `channel_binding=require` and the server let us in without channel binding.
    #[error("channel binding required, but server authenticated client without channel binding")]
    ChannelBindingNotUsed,
    /// `channel_binding=require` and the server asked for a non-SASL method.
    #[error("channel binding required but not supported by server's authentication request")]
    ChannelBindingUnsupportedRequest,
    /// `channel_binding=require` and no channel-bound mechanism can be used.
    #[error(
        "channel binding is required, but server did not offer an authentication method that supports channel binding"
    )]
    ChannelBindingNotOffered,
    /// SCRAM-SHA-256-PLUS offered on a connection without TLS: TLS was stripped somewhere.
    #[error("server offered SCRAM-SHA-256-PLUS authentication over a non-SSL connection")]
    PlusWithoutTls,
    /// None of the offered SASL mechanisms is usable (or the list is empty).
    #[error("none of the server's SASL authentication mechanisms are supported")]
    NoSupportedMechanism,
    /// An authentication method other than trust, password, md5 or SCRAM.
    #[error("authentication method {0} not supported")]
    UnsupportedMethod(i32),
    /// An authentication request that cannot be decoded.
    #[error("malformed authentication request: {0}")]
    Malformed(&'static str),
    /// A SASL payload over [`MAX_SASL_MESSAGE`].
    #[error("SCRAM message too long ({0} bytes, limit {MAX_SASL_MESSAGE})")]
    ScramTooLong(usize),
    /// A SCRAM message that does not follow RFC 5802 as PostgreSQL uses it.
    #[error("malformed SCRAM message ({0})")]
    ScramMalformed(&'static str),
    /// An iteration count that is not an integer in `1..=MAX_SCRAM_ITERATIONS`.
    #[error("invalid SCRAM iteration count \"{0}\" (accepted: 1 to {MAX_SCRAM_ITERATIONS})")]
    IterationCount(String),
    /// The SCRAM library refused the exchange.
    #[error("SCRAM exchange failed: {0}")]
    Scram(String),
    /// The server's final signature does not prove it knows the password's keys.
    #[error("incorrect server signature")]
    ServerSignature,
    /// The server ended the exchange with `e=`.
    #[error("error received from server in SCRAM exchange: {0}")]
    ServerError(String),
    /// A request out of order.
    #[error("unexpected {request} while {state}")]
    Unexpected {
        /// The request's message name.
        request: &'static str,
        /// What the exchange was waiting for.
        state: &'static str,
    },
    /// A response could not be encoded.
    #[error("could not encode authentication response: {0}")]
    Encode(String),
}

/// An authentication request (`'R'` message) from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthRequest<'a> {
    /// `AuthenticationOk` (0).
    Ok,
    /// `AuthenticationCleartextPassword` (3).
    CleartextPassword,
    /// `AuthenticationMD5Password` (5) with its salt.
    Md5Password {
        /// The 4-byte salt.
        salt: [u8; 4],
    },
    /// `AuthenticationSASL` (10) with the mechanism names, in the server's order.
    Sasl(Vec<&'a str>),
    /// `AuthenticationSASLContinue` (11): the server-first-message.
    SaslContinue(&'a [u8]),
    /// `AuthenticationSASLFinal` (12): the server-final-message.
    SaslFinal(&'a [u8]),
}

impl<'a> AuthRequest<'a> {
    /// Decodes the body of an `'R'` message: an Int32 code, then the method's data.
    ///
    /// # Errors
    /// [`AuthError::UnsupportedMethod`] for codes other than 0, 3, 5, 10, 11 and 12 (GSSAPI,
    /// SSPI, unknown ones); [`AuthError::Malformed`] for bad data.
    pub fn parse(body: &'a [u8]) -> Result<Self, AuthError> {
        let (code, data) = body
            .split_first_chunk::<4>()
            .ok_or(AuthError::Malformed("shorter than its code"))?;
        match i32::from_be_bytes(*code) {
            0 => Ok(AuthRequest::Ok),
            3 => Ok(AuthRequest::CleartextPassword),
            5 => <[u8; 4]>::try_from(data)
                .map(|salt| AuthRequest::Md5Password { salt })
                .map_err(|_| AuthError::Malformed("MD5 salt is not 4 bytes")),
            10 => parse_mechanisms(data).map(AuthRequest::Sasl),
            11 => Ok(AuthRequest::SaslContinue(data)),
            12 => Ok(AuthRequest::SaslFinal(data)),
            other => Err(AuthError::UnsupportedMethod(other)),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            AuthRequest::Ok => "AuthenticationOk",
            AuthRequest::CleartextPassword => "AuthenticationCleartextPassword",
            AuthRequest::Md5Password { .. } => "AuthenticationMD5Password",
            AuthRequest::Sasl(_) => "AuthenticationSASL",
            AuthRequest::SaslContinue(_) => "AuthenticationSASLContinue",
            AuthRequest::SaslFinal(_) => "AuthenticationSASLFinal",
        }
    }
}

/// NUL-terminated names, then an empty one.
fn parse_mechanisms(data: &[u8]) -> Result<Vec<&str>, AuthError> {
    if data.len() > MAX_SASL_MESSAGE {
        return Err(AuthError::ScramTooLong(data.len()));
    }
    let mut parts = data.split(|b| *b == 0);
    let mut names = Vec::new();
    for part in parts.by_ref() {
        if part.is_empty() {
            break;
        }
        let name = std::str::from_utf8(part)
            .map_err(|_| AuthError::Malformed("SASL mechanism name is not UTF-8"))?;
        names.push(name);
    }
    match (parts.next(), parts.next()) {
        (Some([]), None) => Ok(names),
        _ => Err(AuthError::Malformed(
            "SASL mechanism list is not terminated properly",
        )),
    }
}

/// A message for the server (`'p'`, whose meaning depends on the request it answers).
#[derive(Clone, PartialEq, Eq)]
pub enum AuthResponse {
    /// `PasswordMessage`: the cleartext password or the `md5…` hash, without the NUL.
    Password(Vec<u8>),
    /// `SASLInitialResponse`: the chosen mechanism and the client-first-message.
    SaslInitial {
        /// `SCRAM-SHA-256` or `SCRAM-SHA-256-PLUS`.
        mechanism: &'static str,
        /// The client-first-message.
        data: Vec<u8>,
    },
    /// `SASLResponse`: the client-final-message.
    SaslResponse(Vec<u8>),
}

impl AuthResponse {
    /// Appends the whole `'p'` message (tag, length, body) to `buf`.
    ///
    /// # Errors
    /// [`AuthError::Encode`] if the password contains a NUL byte.
    pub fn encode(&self, buf: &mut BytesMut) -> Result<(), AuthError> {
        match self {
            AuthResponse::Password(password) => frontend::password_message(password, buf),
            AuthResponse::SaslInitial { mechanism, data } => {
                frontend::sasl_initial_response(mechanism, data, buf)
            }
            AuthResponse::SaslResponse(data) => frontend::sasl_response(data, buf),
        }
        .map_err(|e| AuthError::Encode(e.to_string()))
    }
}

impl fmt::Debug for AuthResponse {
    /// Shows the kind and length only: the payloads are passwords, hashes or proofs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthResponse::Password(p) => write!(f, "Password(<{} bytes>)", p.len()),
            AuthResponse::SaslInitial { mechanism, data } => {
                write!(f, "SaslInitial({mechanism}, <{} bytes>)", data.len())
            }
            AuthResponse::SaslResponse(d) => write!(f, "SaslResponse(<{} bytes>)", d.len()),
        }
    }
}

/// What to do after a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthAction {
    /// Send this message, then wait for the next request.
    Send(AuthResponse),
    /// Send nothing; wait for the next request (after a verified `AuthenticationSASLFinal`).
    Wait,
    /// The server accepted the login.
    Authenticated,
}

/// The connection authentication runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Channel {
    /// Plain TCP (or a Unix socket).
    Plain,
    /// TLS is up.
    Tls {
        /// The `tls-server-end-point` hash of the server certificate (RFC 5929), if one
        /// could be computed; without it SCRAM cannot be channel-bound.
        server_end_point: Option<Vec<u8>>,
    },
}

enum State {
    Start,
    PasswordSent,
    ScramFirstSent {
        scram: Box<ScramSha256>,
        client_nonce: String,
        plus: bool,
    },
    ScramFinalSent {
        scram: Box<ScramSha256>,
        plus: bool,
    },
    ScramVerified {
        plus: bool,
    },
    Done {
        channel_bound: bool,
    },
    Failed,
}

impl State {
    fn waiting_for(&self) -> &'static str {
        match self {
            State::Start => "waiting for the first authentication request",
            State::PasswordSent => "waiting for the result of the password",
            State::ScramFirstSent { .. } => "waiting for the SCRAM server-first-message",
            State::ScramFinalSent { .. } => "waiting for the SCRAM server-final-message",
            State::ScramVerified { .. } => "waiting for AuthenticationOk after SCRAM",
            State::Done { .. } => "already authenticated",
            State::Failed => "authentication had already failed",
        }
    }
}

/// The client side of one authentication exchange.
pub struct ClientAuth {
    user: String,
    password: Option<Password>,
    channel_binding: ChannelBindingMode,
    channel: Channel,
    state: State,
}

impl ClientAuth {
    /// Starts an exchange for `user` (used by md5) with an optional password.
    pub fn new(
        user: &str,
        password: Option<Password>,
        channel_binding: ChannelBindingMode,
        channel: Channel,
    ) -> Self {
        ClientAuth {
            user: user.to_owned(),
            password,
            channel_binding,
            channel,
            state: State::Start,
        }
    }

    /// Whether the login completed with SCRAM-SHA-256-PLUS.
    pub fn channel_bound(&self) -> bool {
        matches!(
            self.state,
            State::Done {
                channel_bound: true
            }
        )
    }

    /// Consumes one request and says what to do. After an error every later call fails.
    ///
    /// # Errors
    /// Any [`AuthError`]: a policy refusal, a hostile or broken server message, a request
    /// out of order, a missing password.
    pub fn handle(&mut self, request: AuthRequest<'_>) -> Result<AuthAction, AuthError> {
        let state = std::mem::replace(&mut self.state, State::Failed);
        let (next, action) = self.step(state, request)?;
        self.state = next;
        Ok(action)
    }

    fn step(
        &self,
        state: State,
        request: AuthRequest<'_>,
    ) -> Result<(State, AuthAction), AuthError> {
        let is_sasl = matches!(
            request,
            AuthRequest::Ok
                | AuthRequest::Sasl(_)
                | AuthRequest::SaslContinue(_)
                | AuthRequest::SaslFinal(_)
        );
        if self.channel_binding == ChannelBindingMode::Require && !is_sasl {
            return Err(AuthError::ChannelBindingUnsupportedRequest);
        }
        let send = |response| Ok((State::PasswordSent, AuthAction::Send(response)));
        let done = |channel_bound| Ok((State::Done { channel_bound }, AuthAction::Authenticated));
        match (state, request) {
            (State::Start, AuthRequest::Ok)
                if self.channel_binding == ChannelBindingMode::Require =>
            {
                Err(AuthError::ChannelBindingNotUsed)
            }
            (State::Start, AuthRequest::Ok) | (State::PasswordSent, AuthRequest::Ok) => done(false),
            (State::Start, AuthRequest::CleartextPassword) => {
                if self.channel == Channel::Plain {
                    return Err(AuthError::CleartextWithoutTls);
                }
                send(AuthResponse::Password(self.password()?.as_bytes().to_vec()))
            }
            (State::Start, AuthRequest::Md5Password { salt }) => {
                let hash = md5_hash(self.user.as_bytes(), self.password()?.as_bytes(), salt);
                send(AuthResponse::Password(hash.into_bytes()))
            }
            (State::Start, AuthRequest::Sasl(mechanisms)) => self.start_scram(&mechanisms),
            (
                State::ScramFirstSent {
                    mut scram,
                    client_nonce,
                    plus,
                },
                AuthRequest::SaslContinue(data),
            ) => {
                check_server_first(data, &client_nonce)?;
                scram
                    .update(data)
                    .map_err(|e| AuthError::Scram(e.to_string()))?;
                let response = AuthResponse::SaslResponse(scram.message().to_vec());
                Ok((
                    State::ScramFinalSent { scram, plus },
                    AuthAction::Send(response),
                ))
            }
            (State::ScramFinalSent { mut scram, plus }, AuthRequest::SaslFinal(data)) => {
                check_server_final(data)?;
                scram.finish(data).map_err(|_| AuthError::ServerSignature)?;
                Ok((State::ScramVerified { plus }, AuthAction::Wait))
            }
            (State::ScramVerified { plus }, AuthRequest::Ok) => done(plus),
            (state, request) => Err(AuthError::Unexpected {
                request: request.name(),
                state: state.waiting_for(),
            }),
        }
    }

    fn password(&self) -> Result<&str, AuthError> {
        self.password
            .as_ref()
            .map(Password::expose)
            .filter(|p| !p.is_empty())
            .ok_or(AuthError::NoPassword)
    }

    /// `pg_SASL_init`: picks the mechanism and the gs2 channel-binding flag.
    fn start_scram(&self, mechanisms: &[&str]) -> Result<(State, AuthAction), AuthError> {
        let offers_plus = mechanisms.contains(&SCRAM_SHA_256_PLUS);
        let offers_plain = mechanisms.contains(&SCRAM_SHA_256);
        let end_point = match &self.channel {
            Channel::Plain if offers_plus => return Err(AuthError::PlusWithoutTls),
            Channel::Plain => None,
            Channel::Tls { server_end_point } => Some(server_end_point.as_ref()),
        };
        let (mechanism, binding) = match (self.channel_binding, end_point) {
            (ChannelBindingMode::Prefer | ChannelBindingMode::Require, Some(Some(hash)))
                if offers_plus =>
            {
                (
                    SCRAM_SHA_256_PLUS,
                    ChannelBinding::tls_server_end_point(hash.clone()),
                )
            }
            (ChannelBindingMode::Require, _) => return Err(AuthError::ChannelBindingNotOffered),
            _ if !offers_plain => return Err(AuthError::NoSupportedMechanism),
            // We could bind but the server offers no -PLUS: flag `y` lets it detect a downgrade.
            (ChannelBindingMode::Prefer, Some(Some(_))) => {
                (SCRAM_SHA_256, ChannelBinding::unrequested())
            }
            // Disabled, plain TCP, or no certificate hash: flag `n`.
            _ => (SCRAM_SHA_256, ChannelBinding::unsupported()),
        };
        let scram = Box::new(ScramSha256::new(self.password()?.as_bytes(), binding));
        let data = scram.message().to_vec();
        let client_nonce = std::str::from_utf8(&data)
            .ok()
            .and_then(|m| m.rsplit_once(",r="))
            .map(|(_, nonce)| nonce.to_owned())
            .ok_or(AuthError::Scram(
                "client-first-message without a nonce".to_owned(),
            ))?;
        let plus = mechanism == SCRAM_SHA_256_PLUS;
        let response = AuthResponse::SaslInitial { mechanism, data };
        Ok((
            State::ScramFirstSent {
                scram,
                client_nonce,
                plus,
            },
            AuthAction::Send(response),
        ))
    }
}

/// Checks a server-first-message (`r=…,s=…,i=…`) before any PBKDF2 work is spent on it.
fn check_server_first(data: &[u8], client_nonce: &str) -> Result<(), AuthError> {
    let text = scram_text(data)?;
    if text.starts_with("m=") {
        return Err(AuthError::ScramMalformed(
            "mandatory extension not supported",
        ));
    }
    let mut attrs = text.split(',');
    let mut attr = |prefix: &str, missing: &'static str| {
        attrs
            .next()
            .and_then(|a| a.strip_prefix(prefix))
            .ok_or(AuthError::ScramMalformed(missing))
    };
    let nonce = attr("r=", "expected the nonce r=")?;
    if nonce.len() <= client_nonce.len() || !nonce.starts_with(client_nonce) {
        return Err(AuthError::ScramMalformed("nonce mismatch"));
    }
    if !is_base64(attr("s=", "expected the salt s=")?) {
        return Err(AuthError::ScramMalformed("invalid salt"));
    }
    let iterations = attr("i=", "expected the iteration count i=")?;
    let valid = iterations.bytes().all(|b| b.is_ascii_digit())
        && iterations
            .parse::<u32>()
            .is_ok_and(|i| (1..=MAX_SCRAM_ITERATIONS).contains(&i));
    if !valid {
        return Err(AuthError::IterationCount(
            iterations.chars().take(20).collect(),
        ));
    }
    if attrs.next().is_some() {
        return Err(AuthError::ScramMalformed(
            "garbage at end of server-first-message",
        ));
    }
    Ok(())
}

/// Checks a server-final-message: `e=<error>` surfaces as an error, else `v=<base64>`.
fn check_server_final(data: &[u8]) -> Result<(), AuthError> {
    let text = scram_text(data)?;
    if let Some(error) = text.strip_prefix("e=") {
        let shown = error.chars().take(200).collect();
        return Err(AuthError::ServerError(shown));
    }
    match text.strip_prefix("v=") {
        Some(signature) if is_base64(signature) => Ok(()),
        _ => Err(AuthError::ScramMalformed(
            "expected the server signature v=",
        )),
    }
}

fn scram_text(data: &[u8]) -> Result<&str, AuthError> {
    if data.len() > MAX_SASL_MESSAGE {
        return Err(AuthError::ScramTooLong(data.len()));
    }
    std::str::from_utf8(data)
        .ok()
        .filter(|t| t.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or(AuthError::ScramMalformed("not printable ASCII"))
}

/// Standard base64 with padding, non-empty.
fn is_base64(s: &str) -> bool {
    let body = s.trim_end_matches('=');
    let alphabet = |b: u8| b.is_ascii_alphanumeric() || b == b'+' || b == b'/';
    !s.is_empty()
        && s.len().is_multiple_of(4)
        && s.len() - body.len() <= 2
        && body.bytes().all(alphabet)
}

#[cfg(test)]
mod messages_tests;
#[cfg(test)]
mod password_tests;
#[cfg(test)]
mod secret_tests;
#[cfg(test)]
mod server_tests;
#[cfg(test)]
mod tests;
