//! The server side of SCRAM-SHA-256 authentication as a sans-IO state machine, for clients
//! of the relay, as PostgreSQL 15 runs it.
//!
//! Mirrors `auth-scram.c`: `scram_get_mechanisms` ([`mechanisms`]), `scram_init`
//! ([`ScramServer::new`], [`check_mechanism`]), `scram_exchange`, `verify_final_nonce`,
//! `verify_client_proof`, `build_server_first_message`, `build_server_final_message`,
//! `mock_scram_secret` and `scram_mock_salt` ([`mock_salt`]); and `CheckSASLAuth`
//! (`auth-sasl.c`) and `auth_failed` (`auth.c`). The client's messages are read in
//! `messages.rs`. Every error text, detail and SQLSTATE is PostgreSQL's; every failure is
//! sent with severity FATAL (an `ERROR` during authentication is promoted to `FATAL` by the
//! backend).
//!
//! The session frames the messages; this works on the SASL payloads. Nothing here does I/O,
//! reads the clock or draws randomness: the caller passes the server nonce and the relay's
//! stable mock-authentication nonce. No failure text holds a password, a secret or a key.

use std::fmt;

use postgres_protocol::authentication::sasl::{SCRAM_SHA_256, SCRAM_SHA_256_PLUS};

use super::common::{self, KEY_LEN, Key, b64, ct_eq};
pub use super::failure::AuthFailure;
pub use super::messages::MAX_CLIENT_MESSAGE;
use super::messages::{check_input, read_client_final, read_client_first};
use super::secret::{SCRAM_DEFAULT_ITERATIONS, SCRAM_DEFAULT_SALT_LEN, Secret};
use crate::types::SqlState;

/// `SCRAM_RAW_NONCE_LEN`: the random bytes of a server nonce (sent in base64).
pub const SERVER_NONCE_LEN: usize = 18;

/// `MOCK_AUTH_NONCE_LEN`: the length of the stable secret mock salts are derived from.
pub const MOCK_NONCE_LEN: usize = 32;

/// The connection the exchange runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerChannel {
    /// Plain TCP.
    Plain,
    /// TLS is up.
    Tls {
        /// The `tls-server-end-point` hash of the relay's certificate (RFC 5929). Without
        /// it SCRAM-SHA-256-PLUS is neither offered nor accepted.
        certificate_hash: Option<Vec<u8>>,
    },
}

impl ServerChannel {
    /// The certificate hash, when channel binding is possible on this connection.
    fn binding(&self) -> Option<&[u8]> {
        match self {
            ServerChannel::Tls {
                certificate_hash: Some(hash),
            } if !hash.is_empty() => Some(hash),
            _ => None,
        }
    }
}

/// `scram_get_mechanisms`: the names for `AuthenticationSASL`, in order of preference:
/// `SCRAM-SHA-256-PLUS` first when channel binding is possible, then `SCRAM-SHA-256`.
pub fn mechanisms(channel: &ServerChannel) -> Vec<&'static str> {
    match channel.binding() {
        Some(_) => vec![SCRAM_SHA_256_PLUS, SCRAM_SHA_256],
        None => vec![SCRAM_SHA_256],
    }
}

/// `scram_init`'s check of the mechanism a client selected: `Ok(true)` for
/// `SCRAM-SHA-256-PLUS` where it was offered, `Ok(false)` for `SCRAM-SHA-256`.
///
/// [`ScramServer::client_first`] checks it too; call this directly for a SASLInitialResponse
/// without an initial response (length -1), which PostgreSQL answers with an empty
/// SASLContinue before it reads the client-first-message from the next SASLResponse.
///
/// # Errors
/// 08P01 `client selected an invalid SASL authentication mechanism` for anything else.
pub fn check_mechanism(channel: &ServerChannel, mechanism: &str) -> Result<bool, AuthFailure> {
    if mechanism == SCRAM_SHA_256_PLUS && channel.binding().is_some() {
        Ok(true)
    } else if mechanism == SCRAM_SHA_256 {
        Ok(false)
    } else {
        Err(AuthFailure::new(
            SqlState::PROTOCOL_VIOLATION,
            "client selected an invalid SASL authentication mechanism",
            None,
        ))
    }
}

/// `scram_mock_salt`: the salt of a mock exchange, the first 16 bytes of
/// SHA-256(`user` ‖ `mock_nonce`). Stable for a user as long as the nonce is (PostgreSQL's
/// nonce is per cluster, in `pg_control`), so that probing cannot tell a missing user from a
/// real one by its salt changing.
pub fn mock_salt(user: &str, mock_nonce: &[u8; MOCK_NONCE_LEN]) -> [u8; SCRAM_DEFAULT_SALT_LEN] {
    let digest = common::sha256(&[user.as_bytes(), mock_nonce.as_slice()].concat());
    let mut salt = [0u8; SCRAM_DEFAULT_SALT_LEN];
    salt.iter_mut().zip(digest).for_each(|(s, d)| *s = d);
    salt
}

/// What the client-first-message settled, kept for the final message.
struct Exchange {
    plus: bool,
    cbind_flag: u8,
    client_first_bare: Vec<u8>,
    client_nonce: Vec<u8>,
    server_first: Vec<u8>,
}

enum State {
    Init,
    SaltSent(Box<Exchange>),
    Finished { channel_bound: bool },
    Failed,
}

/// The server side of one SCRAM-SHA-256 exchange.
///
/// A user without a secret, or with an MD5 one, goes through a mock exchange with a salt
/// from [`mock_salt`] and 4096 iterations, which fails at the proof like a wrong password:
/// the client cannot tell the cases apart. The proof is computed in every case, so neither
/// can the time it takes.
pub struct ScramServer {
    user: String,
    iterations: u32,
    salt: Vec<u8>,
    stored_key: Key,
    server_key: Key,
    doomed: bool,
    log_detail: Option<String>,
    channel: ServerChannel,
    server_nonce: String,
    state: State,
}

impl ScramServer {
    /// Starts an exchange for `user`, the user name of the startup packet (the one in the
    /// client-first-message is ignored, as PostgreSQL ignores it), whose secret is `secret`.
    /// `mock_nonce` is the relay's stable secret for mock salts; `server_nonce` fresh random
    /// bytes.
    pub fn new(
        user: &str,
        secret: Option<&Secret>,
        mock_nonce: &[u8; MOCK_NONCE_LEN],
        channel: ServerChannel,
        server_nonce: [u8; SERVER_NONCE_LEN],
    ) -> ScramServer {
        let (scram, log_detail) = match secret {
            Some(Secret::Scram(s)) => (Some(s), None),
            Some(Secret::Md5(_)) => (
                None,
                Some(format!(
                    "User \"{user}\" does not have a valid SCRAM secret."
                )),
            ),
            None => (None, Some(format!("Role \"{user}\" does not exist."))),
        };
        let (iterations, salt, stored_key, server_key) = match scram {
            Some(s) => (
                s.iterations(),
                s.salt().to_vec(),
                *s.stored_key(),
                *s.server_key(),
            ),
            None => (
                SCRAM_DEFAULT_ITERATIONS,
                mock_salt(user, mock_nonce).to_vec(),
                [0; KEY_LEN],
                [0; KEY_LEN],
            ),
        };
        ScramServer {
            user: user.to_owned(),
            iterations,
            salt,
            stored_key,
            server_key,
            doomed: scram.is_none(),
            log_detail,
            channel,
            server_nonce: b64(&server_nonce),
            state: State::Init,
        }
    }

    /// Takes the SASLInitialResponse: the selected `mechanism` and the client-first-message;
    /// returns the server-first-message for an `AuthenticationSASLContinue`.
    ///
    /// # Errors
    /// An [`AuthFailure`] to send as FATAL: an invalid mechanism, a malformed message, a
    /// channel-binding mismatch, or a call out of order. Every later call then fails.
    pub fn client_first(
        &mut self,
        mechanism: &str,
        message: &[u8],
    ) -> Result<Vec<u8>, AuthFailure> {
        if !matches!(
            std::mem::replace(&mut self.state, State::Failed),
            State::Init
        ) {
            return Err(AuthFailure::invalid_state());
        }
        let plus = check_mechanism(&self.channel, mechanism)?;
        check_input(message)?;
        let first = read_client_first(message, plus, self.channel.binding().is_some())?;
        let mut server_first = b"r=".to_vec();
        server_first.extend_from_slice(first.nonce);
        server_first.extend_from_slice(self.server_nonce.as_bytes());
        server_first.extend_from_slice(b",s=");
        server_first.extend_from_slice(b64(&self.salt).as_bytes());
        server_first.extend_from_slice(format!(",i={}", self.iterations).as_bytes());
        self.state = State::SaltSent(Box::new(Exchange {
            plus,
            cbind_flag: first.cbind_flag,
            client_first_bare: first.bare.to_vec(),
            client_nonce: first.nonce.to_vec(),
            server_first: server_first.clone(),
        }));
        Ok(server_first)
    }

    /// Takes the SASLResponse: the client-final-message; returns the server-final-message
    /// (`v=…`) for an `AuthenticationSASLFinal`, after which the session sends
    /// `AuthenticationOk`.
    ///
    /// # Errors
    /// An [`AuthFailure`] to send as FATAL: a malformed message, a channel-binding or nonce
    /// mismatch, a call out of order, or 28P01 `password authentication failed for user
    /// "…"` for a wrong proof, an unknown user or a user without a SCRAM secret.
    pub fn client_final(&mut self, message: &[u8]) -> Result<Vec<u8>, AuthFailure> {
        let State::SaltSent(exchange) = std::mem::replace(&mut self.state, State::Failed) else {
            return Err(AuthFailure::invalid_state());
        };
        check_input(message)?;
        let last = read_client_final(
            message,
            exchange.plus,
            exchange.cbind_flag,
            self.channel.binding(),
        )?;
        let nonce_ok = last.nonce.strip_prefix(exchange.client_nonce.as_slice())
            == Some(self.server_nonce.as_bytes());
        if !nonce_ok {
            return Err(AuthFailure::new(
                SqlState::PROTOCOL_VIOLATION,
                "invalid SCRAM response",
                Some("Nonce does not match.".to_owned()),
            ));
        }
        let auth_message: [&[u8]; 5] = [
            &exchange.client_first_bare,
            b",",
            &exchange.server_first,
            b",",
            last.without_proof,
        ];
        // verify_client_proof, computed even in a mock exchange.
        let signature = common::hmac(&self.stored_key, &auth_message);
        let mut client_key = last.proof;
        client_key
            .iter_mut()
            .zip(signature)
            .for_each(|(k, s)| *k ^= s);
        let proof_ok = ct_eq(&common::sha256(&client_key), &self.stored_key);
        if !proof_ok || self.doomed {
            return Err(AuthFailure::password_failed(
                &self.user,
                self.log_detail.clone(),
            ));
        }
        let server_signature = common::hmac(&self.server_key, &auth_message);
        self.state = State::Finished {
            channel_bound: exchange.plus,
        };
        Ok(format!("v={}", b64(&server_signature)).into_bytes())
    }

    /// Whether the client proved it knows the password.
    pub fn is_authenticated(&self) -> bool {
        matches!(self.state, State::Finished { .. })
    }

    /// Whether the exchange succeeded with channel binding (SCRAM-SHA-256-PLUS).
    pub fn channel_bound(&self) -> bool {
        matches!(
            self.state,
            State::Finished {
                channel_bound: true
            }
        )
    }
}

impl fmt::Debug for ScramServer {
    /// The user and the stage only: no salt, key or nonce.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let stage = match self.state {
            State::Init => "waiting for the client-first-message",
            State::SaltSent(_) => "waiting for the client-final-message",
            State::Finished { .. } => "authenticated",
            State::Failed => "failed",
        };
        f.debug_struct("ScramServer")
            .field("user", &self.user)
            .field("stage", &stage)
            .finish_non_exhaustive()
    }
}
