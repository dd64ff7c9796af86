//! The client side of PostgreSQL authentication as a sans-IO state machine.
//!
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
pub enum Transport {
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
    transport: Transport,
    state: State,
}

impl ClientAuth {
    /// Starts an exchange for `user` (used by md5) with an optional password.
    pub fn new(
        user: &str,
        password: Option<Password>,
        channel_binding: ChannelBindingMode,
        transport: Transport,
    ) -> Self {
        ClientAuth {
            user: user.to_owned(),
            password,
            channel_binding,
            transport,
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
                if self.transport == Transport::Plain {
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
        let end_point = match &self.transport {
            Transport::Plain if offers_plus => return Err(AuthError::PlusWithoutTls),
            Transport::Plain => None,
            Transport::Tls { server_end_point } => Some(server_end_point.as_ref()),
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
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    fn b64(data: &[u8]) -> String {
        let mut out = String::new();
        for chunk in data.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
            for i in 0..4 {
                let c = B64[(n >> (18 - 6 * i) & 63) as usize];
                out.push(if i <= chunk.len() { c as char } else { '=' });
            }
        }
        out
    }

    fn hmac(key: &[u8], msg: &[u8]) -> [u8; 32] {
        let mut k = [0u8; 64];
        k[..key.len()].copy_from_slice(key);
        let inner = Sha256::new()
            .chain_update(k.map(|b| b ^ 0x36))
            .chain_update(msg)
            .finalize();
        let outer = Sha256::new()
            .chain_update(k.map(|b| b ^ 0x5c))
            .chain_update(inner)
            .finalize();
        outer.into()
    }

    /// A SCRAM server as PostgreSQL's `auth-scram.c` runs it, for one exchange.
    struct FakeServer {
        password: &'static str,
        iterations: u32,
        cbind: Vec<u8>,
        bare: String,
        gs2: String,
        first: String,
    }

    impl FakeServer {
        fn new(password: &'static str, cbind: &[u8]) -> Self {
            let (bare, gs2, first) = Default::default();
            FakeServer {
                password,
                iterations: 64,
                cbind: cbind.to_vec(),
                bare,
                gs2,
                first,
            }
        }

        fn salted(&self) -> [u8; 32] {
            let mut u = hmac(self.password.as_bytes(), b"salt-salt-salt!\x00\x00\x00\x01");
            let mut out = u;
            for _ in 1..self.iterations {
                u = hmac(self.password.as_bytes(), &u);
                out.iter_mut().zip(u).for_each(|(o, x)| *o ^= x);
            }
            out
        }

        fn server_first(&mut self, client_first: &[u8]) -> Vec<u8> {
            let text = std::str::from_utf8(client_first).unwrap();
            let (flag, rest) = text.split_once(',').unwrap();
            let (authzid, bare) = rest.split_once(',').unwrap();
            self.gs2 = format!("{flag},{authzid},");
            self.bare = bare.to_owned();
            let nonce = bare.strip_prefix("n=,r=").unwrap();
            self.first = format!(
                "r={nonce}SRVNONCE,s={},i={}",
                b64(b"salt-salt-salt!"),
                self.iterations
            );
            self.first.clone().into_bytes()
        }

        fn server_final(&self, client_final: &[u8]) -> Vec<u8> {
            let text = std::str::from_utf8(client_final).unwrap();
            let (without_proof, proof) = text.rsplit_once(",p=").unwrap();
            let binding = [self.gs2.as_bytes(), &self.cbind].concat();
            if !without_proof.starts_with(&format!("c={},r=", b64(&binding))) {
                return b"e=channel-bindings-dont-match".to_vec();
            }
            let auth = format!("{},{},{without_proof}", self.bare, self.first);
            let salted = self.salted();
            let client_key = hmac(&salted, b"Client Key");
            let stored: [u8; 32] = Sha256::digest(client_key).into();
            let signature = hmac(&stored, auth.as_bytes());
            let expected: Vec<u8> = client_key
                .iter()
                .zip(signature)
                .map(|(k, s)| k ^ s)
                .collect();
            if proof != b64(&expected) {
                return b"e=invalid-proof".to_vec();
            }
            format!(
                "v={}",
                b64(&hmac(&hmac(&salted, b"Server Key"), auth.as_bytes()))
            )
            .into_bytes()
        }
    }

    fn tls(hash: &[u8]) -> Transport {
        Transport::Tls {
            server_end_point: Some(hash.to_vec()),
        }
    }

    fn client(password: Option<&str>, cb: ChannelBindingMode, transport: Transport) -> ClientAuth {
        ClientAuth::new("repl", password.map(Password::new), cb, transport)
    }

    fn sent(action: AuthAction) -> AuthResponse {
        match action {
            AuthAction::Send(response) => response,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    /// Runs SASL up to the client-first-message; returns (mechanism, client-first).
    fn scram_start(
        auth: &mut ClientAuth,
        offered: &[&str],
    ) -> Result<(&'static str, Vec<u8>), AuthError> {
        match sent(auth.handle(AuthRequest::Sasl(offered.to_vec()))?) {
            AuthResponse::SaslInitial { mechanism, data } => Ok((mechanism, data)),
            other => panic!("{other:?}"),
        }
    }

    /// A full SCRAM exchange against the fake server; returns the gs2 header used.
    fn scram_login(
        auth: &mut ClientAuth,
        offered: &[&str],
        server: &mut FakeServer,
    ) -> Result<String, AuthError> {
        let (_, first) = scram_start(auth, offered)?;
        let reply = server.server_first(&first);
        let AuthResponse::SaslResponse(last) =
            sent(auth.handle(AuthRequest::SaslContinue(&reply))?)
        else {
            panic!("expected SASLResponse")
        };
        assert_eq!(
            auth.handle(AuthRequest::SaslFinal(&server.server_final(&last)))?,
            AuthAction::Wait
        );
        assert_eq!(auth.handle(AuthRequest::Ok)?, AuthAction::Authenticated);
        Ok(server.gs2.clone())
    }

    const BOTH: &[&str] = &[SCRAM_SHA_256_PLUS, SCRAM_SHA_256];
    const PLAIN: &[&str] = &[SCRAM_SHA_256];
    use ChannelBindingMode::{Disable, Prefer, Require};

    #[test]
    fn parse_requests() {
        let body = |code: i32, data: &[u8]| [&code.to_be_bytes()[..], data].concat();
        assert_eq!(AuthRequest::parse(&body(0, b"")), Ok(AuthRequest::Ok));
        assert_eq!(
            AuthRequest::parse(&body(3, b"")),
            Ok(AuthRequest::CleartextPassword)
        );
        let md5 = body(5, &[1, 2, 3, 4]);
        assert_eq!(
            AuthRequest::parse(&md5),
            Ok(AuthRequest::Md5Password { salt: [1, 2, 3, 4] })
        );
        let list = body(10, b"SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0");
        assert_eq!(
            AuthRequest::parse(&list),
            Ok(AuthRequest::Sasl(BOTH.to_vec()))
        );
        assert_eq!(
            AuthRequest::parse(&body(10, b"\0")),
            Ok(AuthRequest::Sasl(vec![]))
        );
        assert_eq!(
            AuthRequest::parse(&body(11, b"r=x")),
            Ok(AuthRequest::SaslContinue(b"r=x"))
        );
        assert_eq!(
            AuthRequest::parse(&body(12, b"v=x")),
            Ok(AuthRequest::SaslFinal(b"v=x"))
        );
        for code in [2, 6, 7, 8, 9, 99, -1] {
            assert_eq!(
                AuthRequest::parse(&body(code, b"")),
                Err(AuthError::UnsupportedMethod(code))
            );
        }
        assert_eq!(
            AuthError::UnsupportedMethod(99).to_string(),
            "authentication method 99 not supported"
        );
        for bad in [
            &b"\0\0"[..],
            &body(5, &[1, 2, 3]),
            &body(10, b"A\0"),
            &body(10, b""),
            &body(10, b"A\0\0x"),
            &body(10, b"\xff\0\0"),
        ] {
            assert!(
                matches!(AuthRequest::parse(bad), Err(AuthError::Malformed(_))),
                "{bad:?}"
            );
        }
        let long = body(10, &[b'A'; 5000]);
        assert_eq!(
            AuthRequest::parse(&long),
            Err(AuthError::ScramTooLong(5000))
        );
    }

    #[test]
    fn trust() {
        let mut auth = client(None, Prefer, Transport::Plain);
        assert_eq!(auth.handle(AuthRequest::Ok), Ok(AuthAction::Authenticated));
        assert!(!auth.channel_bound());
        let unexpected = auth.handle(AuthRequest::Ok).unwrap_err();
        assert_eq!(
            unexpected.to_string(),
            "unexpected AuthenticationOk while already authenticated"
        );
        let mut auth = client(Some("pw"), Require, tls(b"h"));
        assert_eq!(
            auth.handle(AuthRequest::Ok),
            Err(AuthError::ChannelBindingNotUsed)
        );
    }

    #[test]
    fn cleartext_only_over_tls() {
        let mut auth = client(Some("hunter2"), Prefer, tls(b"h"));
        let response = sent(auth.handle(AuthRequest::CleartextPassword).unwrap());
        assert_eq!(response, AuthResponse::Password(b"hunter2".to_vec()));
        assert_eq!(format!("{response:?}"), "Password(<7 bytes>)");
        let mut buf = BytesMut::new();
        response.encode(&mut buf).unwrap();
        assert_eq!(&buf[..], b"p\0\0\0\x0chunter2\0");
        assert_eq!(auth.handle(AuthRequest::Ok), Ok(AuthAction::Authenticated));
        let mut auth = client(Some("hunter2"), Prefer, Transport::Plain);
        assert_eq!(
            auth.handle(AuthRequest::CleartextPassword),
            Err(AuthError::CleartextWithoutTls)
        );
        let mut auth = client(Some("hunter2"), Require, tls(b"h"));
        assert_eq!(
            auth.handle(AuthRequest::CleartextPassword),
            Err(AuthError::ChannelBindingUnsupportedRequest)
        );
        let nul = AuthResponse::Password(b"a\0b".to_vec());
        assert!(matches!(nul.encode(&mut buf), Err(AuthError::Encode(_))));
    }

    #[test]
    fn md5() {
        let mut auth = ClientAuth::new(
            "md5_user",
            Some(Password::new("password")),
            Prefer,
            Transport::Plain,
        );
        let salt = [0x2a, 0x3d, 0x8f, 0xe0];
        let response = sent(auth.handle(AuthRequest::Md5Password { salt }).unwrap());
        assert_eq!(
            response,
            AuthResponse::Password(b"md562af4dd09bbb41884907a838a3233294".to_vec())
        );
        assert_eq!(auth.handle(AuthRequest::Ok), Ok(AuthAction::Authenticated));
        let mut auth = client(Some("pw"), Require, tls(b"h"));
        assert_eq!(
            auth.handle(AuthRequest::Md5Password { salt }),
            Err(AuthError::ChannelBindingUnsupportedRequest)
        );
    }

    #[test]
    fn missing_password() {
        for password in [None, Some("")] {
            let requests = [
                AuthRequest::CleartextPassword,
                AuthRequest::Md5Password { salt: [0; 4] },
                AuthRequest::Sasl(PLAIN.to_vec()),
            ];
            for request in requests {
                let mut auth = client(password, Prefer, tls(b"h"));
                let e = auth.handle(request).unwrap_err();
                assert_eq!(e.to_string(), "fe_sendauth: no password supplied");
            }
        }
    }

    #[test]
    fn scram_over_plain_tcp() {
        let mut auth = client(Some("pencil"), Prefer, Transport::Plain);
        let mut server = FakeServer::new("pencil", b"");
        assert_eq!(scram_login(&mut auth, PLAIN, &mut server).unwrap(), "n,,");
        assert!(!auth.channel_bound());
        // libpq fails the same way: -PLUS without TLS means TLS was stripped.
        let mut auth = client(Some("pencil"), Prefer, Transport::Plain);
        assert_eq!(scram_start(&mut auth, BOTH), Err(AuthError::PlusWithoutTls));
        let mut auth = client(Some("pencil"), Require, Transport::Plain);
        assert_eq!(
            scram_start(&mut auth, PLAIN),
            Err(AuthError::ChannelBindingNotOffered)
        );
    }

    #[test]
    fn scram_plus_over_tls() {
        for cb in [Prefer, Require] {
            let mut auth = client(Some("pencil"), cb, tls(b"cert-hash"));
            let mut server = FakeServer::new("pencil", b"cert-hash");
            assert_eq!(
                scram_login(&mut auth, BOTH, &mut server).unwrap(),
                "p=tls-server-end-point,,"
            );
            assert!(auth.channel_bound());
        }
        let mut auth = client(Some("pencil"), Prefer, tls(b"h"));
        assert_eq!(scram_start(&mut auth, BOTH).unwrap().0, SCRAM_SHA_256_PLUS);
        // A binding hash that differs from the server's own is refused.
        let mut auth = client(Some("pencil"), Prefer, tls(b"forged"));
        let mut server = FakeServer::new("pencil", b"real");
        let e = scram_login(&mut auth, BOTH, &mut server).unwrap_err();
        assert_eq!(
            e,
            AuthError::ServerError("channel-bindings-dont-match".into())
        );
    }

    #[test]
    fn scram_channel_binding_choices() {
        // TLS without -PLUS offered: `y` under prefer (downgrade detectable), error under require.
        let mut auth = client(Some("pencil"), Prefer, tls(b"h"));
        let mut server = FakeServer::new("pencil", b"");
        assert_eq!(scram_login(&mut auth, PLAIN, &mut server).unwrap(), "y,,");
        let mut auth = client(Some("pencil"), Require, tls(b"h"));
        assert_eq!(
            scram_start(&mut auth, PLAIN),
            Err(AuthError::ChannelBindingNotOffered)
        );
        // TLS but no certificate hash: honest `n` under prefer, error under require.
        let no_hash = || Transport::Tls {
            server_end_point: None,
        };
        let mut auth = client(Some("pencil"), Prefer, no_hash());
        let mut server = FakeServer::new("pencil", b"");
        assert_eq!(scram_login(&mut auth, BOTH, &mut server).unwrap(), "n,,");
        let mut auth = client(Some("pencil"), Require, no_hash());
        assert_eq!(
            scram_start(&mut auth, BOTH),
            Err(AuthError::ChannelBindingNotOffered)
        );
        // Disabled: plain SCRAM with `n`, even when -PLUS is offered.
        let mut auth = client(Some("pencil"), Disable, tls(b"h"));
        let mut server = FakeServer::new("pencil", b"");
        assert_eq!(scram_login(&mut auth, BOTH, &mut server).unwrap(), "n,,");
        let mut auth = client(Some("pencil"), Disable, tls(b"h"));
        assert_eq!(
            scram_start(&mut auth, &[SCRAM_SHA_256_PLUS]),
            Err(AuthError::NoSupportedMechanism)
        );
        for offered in [&[][..], &["SCRAM-SHA-1"], &["scram-sha-256"]] {
            let mut auth = client(Some("pencil"), Prefer, Transport::Plain);
            assert_eq!(
                scram_start(&mut auth, offered),
                Err(AuthError::NoSupportedMechanism)
            );
        }
    }

    /// Starts an exchange and feeds `server_first` (with `{n}` replaced by the client nonce).
    fn hostile_first(server_first: &str) -> AuthError {
        let mut auth = client(Some("hunter2"), Prefer, Transport::Plain);
        let (_, first) = scram_start(&mut auth, PLAIN).unwrap();
        let nonce = std::str::from_utf8(&first)
            .unwrap()
            .rsplit_once(",r=")
            .unwrap()
            .1
            .to_owned();
        let message = server_first.replace("{n}", &nonce);
        let e = auth
            .handle(AuthRequest::SaslContinue(message.as_bytes()))
            .unwrap_err();
        let again = auth
            .handle(AuthRequest::SaslContinue(message.as_bytes()))
            .unwrap_err();
        assert!(
            matches!(again, AuthError::Unexpected { .. }),
            "a failed exchange stays failed"
        );
        e
    }

    #[test]
    fn hostile_server_first() {
        let malformed = |m: &str| {
            AuthError::ScramMalformed(match m {
                "m" => "mandatory extension not supported",
                "nonce" => "nonce mismatch",
                "salt" => "invalid salt",
                _ => "garbage at end of server-first-message",
            })
        };
        assert_eq!(
            hostile_first("r={n}S,s=c2FsdA==,i=0"),
            AuthError::IterationCount("0".into())
        );
        assert_eq!(
            hostile_first("r={n}S,s=c2FsdA==,i=100001"),
            AuthError::IterationCount("100001".into())
        );
        assert_eq!(
            hostile_first("r={n}S,s=c2FsdA==,i=4294967296"),
            AuthError::IterationCount("4294967296".into())
        );
        assert_eq!(
            hostile_first("r={n}S,s=c2FsdA==,i=+5"),
            AuthError::IterationCount("+5".into())
        );
        assert_eq!(
            hostile_first("r={n}S,s=c2FsdA==,i="),
            AuthError::IterationCount("".into())
        );
        assert_eq!(
            hostile_first("m=x,r={n}S,s=c2FsdA==,i=4096"),
            malformed("m")
        );
        assert_eq!(
            hostile_first("r=someoneelse,s=c2FsdA==,i=4096"),
            malformed("nonce")
        );
        assert_eq!(hostile_first("r={n},s=c2FsdA==,i=4096"), malformed("nonce"));
        for salt in ["", "c2FsdA", "c2F=dA==", "c2FsdA===", "!!!!"] {
            assert_eq!(
                hostile_first(&format!("r={{n}}S,s={salt},i=4096")),
                malformed("salt"),
                "{salt}"
            );
        }
        assert_eq!(
            hostile_first("r={n}S,s=c2FsdA==,i=4096,x=1"),
            malformed("trailing")
        );
        assert!(matches!(
            hostile_first("s=c2FsdA==,r={n}S,i=4096"),
            AuthError::ScramMalformed(_)
        ));
        assert!(matches!(
            hostile_first("r={n}S,s=c2FsdA=="),
            AuthError::ScramMalformed(_)
        ));
        assert!(matches!(
            hostile_first("r={n}S\u{e9},s=c2FsdA==,i=1"),
            AuthError::ScramMalformed(_)
        ));
        let huge = format!("r={{n}}{},s=c2FsdA==,i=4096", "x".repeat(5000));
        assert!(matches!(hostile_first(&huge), AuthError::ScramTooLong(_)));
        let long_count = format!("r={{n}}S,s=c2FsdA==,i={}", "9".repeat(100));
        assert_eq!(
            hostile_first(&long_count),
            AuthError::IterationCount("9".repeat(20))
        );
    }

    /// Runs up to the client-final-message, then feeds `server_final`.
    fn hostile_final(server_final: &[u8]) -> AuthError {
        let mut auth = client(Some("hunter2"), Prefer, Transport::Plain);
        let mut server = FakeServer::new("hunter2", b"");
        let (_, first) = scram_start(&mut auth, PLAIN).unwrap();
        sent(
            auth.handle(AuthRequest::SaslContinue(&server.server_first(&first)))
                .unwrap(),
        );
        auth.handle(AuthRequest::SaslFinal(server_final))
            .unwrap_err()
    }

    #[test]
    fn hostile_server_final() {
        let e = hostile_final(b"e=invalid-proof");
        assert_eq!(
            e.to_string(),
            "error received from server in SCRAM exchange: invalid-proof"
        );
        assert_eq!(
            hostile_final(b"e=bell\x07"),
            AuthError::ScramMalformed("not printable ASCII")
        );
        let forged = format!("v={}", b64(&[7; 32]));
        assert_eq!(hostile_final(forged.as_bytes()), AuthError::ServerSignature);
        assert_eq!(
            hostile_final(b"v=short"),
            AuthError::ScramMalformed("expected the server signature v=")
        );
        assert!(matches!(
            hostile_final(b"x=1"),
            AuthError::ScramMalformed(_)
        ));
        assert!(matches!(
            hostile_final(&[b'v'; 4097]),
            AuthError::ScramTooLong(4097)
        ));
        // The wrong password on the client gives the server's e=, as PostgreSQL would.
        let mut auth = client(Some("wrong"), Prefer, Transport::Plain);
        let mut server = FakeServer::new("right", b"");
        let e = scram_login(&mut auth, PLAIN, &mut server).unwrap_err();
        assert_eq!(e, AuthError::ServerError("invalid-proof".into()));
    }

    #[test]
    fn out_of_order() {
        let mut auth = client(Some("pw"), Prefer, Transport::Plain);
        let e = auth.handle(AuthRequest::SaslContinue(b"r=x")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "unexpected AuthenticationSASLContinue while waiting for the first authentication request"
        );
        // SASLFinal before SASLContinue.
        let mut auth = client(Some("pw"), Prefer, Transport::Plain);
        scram_start(&mut auth, PLAIN).unwrap();
        let e = auth.handle(AuthRequest::SaslFinal(b"v=AAAA")).unwrap_err();
        assert!(matches!(
            e,
            AuthError::Unexpected {
                request: "AuthenticationSASLFinal",
                ..
            }
        ));
        // AuthenticationOk before the server proved itself, at either step.
        for steps in [1, 2] {
            let mut auth = client(Some("pw"), Prefer, Transport::Plain);
            let mut server = FakeServer::new("pw", b"");
            let (_, first) = scram_start(&mut auth, PLAIN).unwrap();
            if steps == 2 {
                sent(
                    auth.handle(AuthRequest::SaslContinue(&server.server_first(&first)))
                        .unwrap(),
                );
            }
            let e = auth.handle(AuthRequest::Ok).unwrap_err();
            assert!(
                matches!(
                    e,
                    AuthError::Unexpected {
                        request: "AuthenticationOk",
                        ..
                    }
                ),
                "{e}"
            );
            assert!(auth.handle(AuthRequest::Ok).is_err());
        }
        // A second AuthenticationSASL, and md5 in the middle of SCRAM.
        let mut auth = client(Some("pw"), Prefer, Transport::Plain);
        scram_start(&mut auth, PLAIN).unwrap();
        assert!(matches!(
            scram_start(&mut auth, PLAIN),
            Err(AuthError::Unexpected { .. })
        ));
        let mut auth = client(Some("pw"), Prefer, Transport::Plain);
        scram_start(&mut auth, PLAIN).unwrap();
        let e = auth.handle(AuthRequest::Md5Password { salt: [0; 4] });
        assert!(matches!(e, Err(AuthError::Unexpected { .. })));
    }

    #[test]
    fn errors_and_messages_never_contain_the_password() {
        let plain = || client(Some("hunter2"), Prefer, Transport::Plain);
        let mut errors = vec![
            plain().handle(AuthRequest::CleartextPassword).unwrap_err(),
            hostile_final(format!("v={}", b64(&[7; 32])).as_bytes()),
            hostile_first("r={n}S,s=c2FsdA==,i=0"),
        ];
        let mut auth = plain();
        let (_, first) = scram_start(&mut auth, PLAIN).unwrap();
        assert!(!String::from_utf8_lossy(&first).contains("hunter2"));
        let mut server = FakeServer::new("hunter2", b"");
        let reply = server.server_first(&first);
        let last = sent(auth.handle(AuthRequest::SaslContinue(&reply)).unwrap());
        assert!(!format!("{last:?}").contains("hunter2"));
        errors.push(auth.handle(AuthRequest::Ok).unwrap_err());
        for e in errors {
            assert!(!format!("{e} {e:?}").contains("hunter2"), "{e}");
        }
    }
}
