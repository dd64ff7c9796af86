//! The client's SCRAM messages, read as PostgreSQL 15 reads them.
//!
//! Mirrors `auth-scram.c`: `read_client_first_message`, `read_client_final_message`,
//! `read_attr_value`, `read_any_attr`, `is_scram_printable`, `sanitize_char`, `sanitize_str`,
//! and the checks at the top of `scram_exchange`. Messages are bytes, not text: a NUL byte is
//! refused first, and the end of a message reads as the terminator the C code sees.

use super::common::{Key, b64, unb64};
use super::failure::AuthFailure;
use crate::types::SqlState;

/// The largest SASL payload accepted from a client. PostgreSQL reads each SASL message with
/// `PG_MAX_SASL_MESSAGE_LENGTH` (1024 bytes) and drops the connection over it; real payloads
/// are under 200 bytes.
pub const MAX_CLIENT_MESSAGE: usize = 1024;

/// The header every channel-bound client-final-message repeats, the only binding type
/// PostgreSQL supports (`tls-server-end-point`, RFC 5929).
const CBIND_HEADER: &[u8] = b"p=tls-server-end-point,,";

/// `scram_exchange`'s checks of any payload, after the relay's size cap.
pub(super) fn check_input(message: &[u8]) -> Result<(), AuthFailure> {
    if message.len() > MAX_CLIENT_MESSAGE {
        return Err(AuthFailure::malformed(format!(
            "The message is longer than {MAX_CLIENT_MESSAGE} bytes."
        )));
    }
    if message.is_empty() {
        return Err(AuthFailure::malformed("The message is empty."));
    }
    if message.contains(&0) {
        return Err(AuthFailure::malformed(
            "Message length does not match input length.",
        ));
    }
    Ok(())
}

/// `sanitize_char`: a printable ASCII character quoted, anything else in hex.
fn sanitize_char(c: u8) -> String {
    if (0x21..=0x7e).contains(&c) {
        format!("'{}'", char::from(c))
    } else {
        format!("0x{c:02x}")
    }
}

/// `sanitize_str`: at most 30 characters, each not printable ASCII shown as `?`.
fn sanitize_str(s: &[u8]) -> String {
    s.iter()
        .take(30)
        .map(|&c| {
            if (0x21..=0x7e).contains(&c) {
                char::from(c)
            } else {
                '?'
            }
        })
        .collect()
}

/// `is_scram_printable`: `%x21-2B / %x2D-7E`, printable ASCII but the comma.
fn is_scram_printable(s: &[u8]) -> bool {
    s.iter().all(|&c| (0x21..=0x7e).contains(&c) && c != b',')
}

/// A reading position in a message without NUL bytes; `peek` gives 0 at the end, as the C
/// code sees the terminator.
struct Cursor<'a> {
    input: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> u8 {
        self.input.get(self.pos).copied().unwrap_or(0)
    }

    fn rest(&self) -> &'a [u8] {
        self.input.get(self.pos..).unwrap_or_default()
    }

    fn at_end(&self) -> bool {
        self.pos >= self.input.len()
    }

    /// Steps past the byte `peek` returned (never past the end).
    fn advance(&mut self) {
        self.pos = (self.pos + 1).min(self.input.len());
    }

    /// After the attribute letter: `=`, then the value up to a comma (consumed) or the end.
    fn value(&mut self, attr: u8) -> Result<&'a [u8], AuthFailure> {
        if self.peek() != b'=' {
            return Err(AuthFailure::malformed(format!(
                "Expected character \"=\" for attribute \"{}\".",
                char::from(attr)
            )));
        }
        self.advance();
        let rest = self.rest();
        let len = rest.iter().position(|&c| c == b',').unwrap_or(rest.len());
        let value = rest.get(..len).unwrap_or_default();
        self.pos += len;
        self.advance();
        Ok(value)
    }

    /// `read_attr_value`: the value of attribute `attr`, which must come next.
    fn attr_value(&mut self, attr: u8) -> Result<&'a [u8], AuthFailure> {
        let found = self.peek();
        if found != attr {
            return Err(AuthFailure::malformed(format!(
                "Expected attribute \"{}\" but found \"{}\".",
                char::from(attr),
                sanitize_char(found)
            )));
        }
        self.advance();
        self.value(attr)
    }

    /// `read_any_attr`: the next attribute, whatever its letter.
    fn any_attr(&mut self) -> Result<(u8, &'a [u8]), AuthFailure> {
        let attr = self.peek();
        if attr == 0 {
            return Err(AuthFailure::malformed(
                "Attribute expected, but found end of string.",
            ));
        }
        if !attr.is_ascii_alphabetic() {
            return Err(AuthFailure::malformed(format!(
                "Attribute expected, but found invalid character \"{}\".",
                sanitize_char(attr)
            )));
        }
        self.advance();
        Ok((attr, self.value(attr)?))
    }
}

/// What a client-first-message carries.
pub(super) struct ClientFirst<'a> {
    pub(super) cbind_flag: u8,
    pub(super) bare: &'a [u8],
    pub(super) nonce: &'a [u8],
}

/// The detail for `n` or `y` when the client selected SCRAM-SHA-256-PLUS.
const PLUS_WITHOUT_BINDING: &str = "The client selected SCRAM-SHA-256-PLUS, but the SCRAM \
                                    message does not include channel binding data.";

/// `read_client_first_message`.
pub(super) fn read_client_first(
    message: &[u8],
    plus: bool,
    binding_supported: bool,
) -> Result<ClientFirst<'_>, AuthFailure> {
    let mut c = Cursor {
        input: message,
        pos: 0,
    };
    let cbind_flag = c.peek();
    let comma = |c: &mut Cursor<'_>| {
        c.advance();
        if c.peek() != b',' {
            return Err(AuthFailure::malformed(format!(
                "Comma expected, but found character \"{}\".",
                sanitize_char(c.peek())
            )));
        }
        c.advance();
        Ok(())
    };
    match cbind_flag {
        b'n' | b'y' if plus => return Err(AuthFailure::malformed(PLUS_WITHOUT_BINDING)),
        b'n' => comma(&mut c)?,
        b'y' if binding_supported => {
            return Err(AuthFailure::new(
                SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
                "SCRAM channel binding negotiation error",
                Some(
                    "The client supports SCRAM channel binding but thinks the server does \
                     not.  However, this server does support channel binding."
                        .to_owned(),
                ),
            ));
        }
        b'y' => comma(&mut c)?,
        b'p' if !plus => {
            return Err(AuthFailure::malformed(
                "The client selected SCRAM-SHA-256 without channel binding, but the SCRAM \
                 message includes channel binding data.",
            ));
        }
        b'p' => {
            let kind = c.attr_value(b'p')?;
            if kind != b"tls-server-end-point" {
                return Err(AuthFailure::new(
                    SqlState::PROTOCOL_VIOLATION,
                    &format!(
                        "unsupported SCRAM channel-binding type \"{}\"",
                        sanitize_str(kind)
                    ),
                    None,
                ));
            }
        }
        other => {
            return Err(AuthFailure::malformed(format!(
                "Unexpected channel-binding flag \"{}\".",
                sanitize_char(other)
            )));
        }
    }
    if c.peek() == b'a' {
        return Err(AuthFailure::new(
            SqlState::FEATURE_NOT_SUPPORTED,
            "client uses authorization identity, but it is not supported",
            None,
        ));
    }
    if c.peek() != b',' {
        return Err(AuthFailure::malformed(format!(
            "Unexpected attribute \"{}\" in client-first-message.",
            sanitize_char(c.peek())
        )));
    }
    c.advance();
    let bare = c.rest();
    if c.peek() == b'm' {
        return Err(AuthFailure::new(
            SqlState::FEATURE_NOT_SUPPORTED,
            "client requires an unsupported SCRAM extension",
            None,
        ));
    }
    c.attr_value(b'n')?; // the user name: ignored, the startup packet's is used
    let nonce = c.attr_value(b'r')?;
    if !is_scram_printable(nonce) {
        return Err(AuthFailure::new(
            SqlState::PROTOCOL_VIOLATION,
            "non-printable characters in SCRAM nonce",
            None,
        ));
    }
    while !c.at_end() {
        c.any_attr()?; // optional extensions, ignored
    }
    Ok(ClientFirst {
        cbind_flag,
        bare,
        nonce,
    })
}

/// What a client-final-message carries.
pub(super) struct ClientFinal<'a> {
    pub(super) nonce: &'a [u8],
    pub(super) proof: Key,
    pub(super) without_proof: &'a [u8],
}

/// `read_client_final_message`.
///
/// `plus` and `cbind_flag` are what the client-first-message chose; `certificate_hash` is
/// the relay's, for SCRAM-SHA-256-PLUS.
pub(super) fn read_client_final<'a>(
    message: &'a [u8],
    plus: bool,
    cbind_flag: u8,
    certificate_hash: Option<&[u8]>,
) -> Result<ClientFinal<'a>, AuthFailure> {
    let mut c = Cursor {
        input: message,
        pos: 0,
    };
    let binding = c.attr_value(b'c')?;
    if plus {
        let input = [CBIND_HEADER, certificate_hash.unwrap_or_default()].concat();
        if binding != b64(&input).as_bytes() {
            return Err(AuthFailure::new(
                SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
                "SCRAM channel binding check failed",
                None,
            ));
        }
    } else if !(binding == b"biws" && cbind_flag == b'n'
        || binding == b"eSws" && cbind_flag == b'y')
    {
        return Err(AuthFailure::new(
            SqlState::PROTOCOL_VIOLATION,
            "unexpected SCRAM channel-binding attribute in client-final-message",
            None,
        ));
    }
    let nonce = c.attr_value(b'r')?;
    // Optional extensions, ignored, until the proof.
    let (proof_at, value) = loop {
        let at = c.pos;
        if let (b'p', value) = c.any_attr()? {
            break (at, value);
        }
    };
    let proof = unb64(value)
        .and_then(|p| Key::try_from(p).ok())
        .ok_or_else(|| AuthFailure::malformed("Malformed proof in client-final-message."))?;
    if !c.at_end() {
        return Err(AuthFailure::malformed(
            "Garbage found at the end of client-final-message.",
        ));
    }
    Ok(ClientFinal {
        nonce,
        proof,
        // Up to the comma before "p=".
        without_proof: message
            .get(..proof_at.saturating_sub(1))
            .unwrap_or_default(),
    })
}
