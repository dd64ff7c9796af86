//! The errors of the wire layer, worded as PostgreSQL words them.
//!
//! Where PostgreSQL has a message for the same fault (`pqformat.c`, `pqcomm.c`,
//! `postmaster.c:ProcessStartupPacket`, `postgres.c:SocketBackend`), the text matches it, so a
//! relay can answer a client with the `ErrorResponse` a real server would send. [`WireError::sqlstate`]
//! gives the SQLSTATE for that answer.

use std::fmt;

use crate::types::SqlState;

/// A malformed, oversized or unknown protocol message, or a value that cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// A message ended before a field it must contain (`pqformat.c`).
    #[error("insufficient data left in message")]
    Short {
        /// Bytes the field needs.
        needed: usize,
        /// Bytes that were left.
        remaining: usize,
    },
    /// A message has bytes after its last field (`pq_getmsgend`).
    #[error("invalid message format: {extra} unexpected bytes at end of message")]
    Trailing {
        /// How many bytes were left over.
        extra: usize,
    },
    /// A string field has no terminating zero byte (`pq_getmsgstring`).
    #[error("invalid string in message")]
    UnterminatedString,
    /// A text field is not valid UTF-8.
    #[error("invalid byte sequence for encoding \"UTF8\"")]
    InvalidUtf8,
    /// A typed message announces a length below 4 or above the limit of the current phase
    /// (`pq_getmessage`: "invalid message length").
    #[error("invalid message length {len} for message type {} (limit {max})", TagName(*tag))]
    FrameLength {
        /// The message type byte.
        tag: u8,
        /// The announced length, which counts itself.
        len: i32,
        /// The largest length accepted in this phase.
        max: usize,
    },
    /// A first packet announces a length below 8 or above the startup limit.
    #[error("invalid length of startup packet: {len}")]
    StartupLength {
        /// The announced length, which counts itself.
        len: i32,
    },
    /// The parameters of a StartupMessage are not `name\0value\0...\0`.
    #[error("invalid startup packet layout: expected terminator as last byte")]
    StartupLayout,
    /// A first packet asks for a protocol other than 3.x, or is an unknown request code.
    #[error("unsupported frontend protocol {major}.{minor}: server supports 3.0 to 3.0")]
    UnsupportedProtocol {
        /// The major version (high 16 bits of the code).
        major: u16,
        /// The minor version (low 16 bits of the code).
        minor: u16,
    },
    /// A client sent a message type that does not exist (`SocketBackend`).
    #[error("invalid frontend message type {0}")]
    UnknownFrontendTag(u8),
    /// A server sent a message type that does not exist.
    #[error("unexpected response from server; message type {}", TagName(*.0))]
    UnknownBackendTag(u8),
    /// A CopyData payload of the replication stream has an unknown sub-type
    /// (`walsender.c:ProcessStandbyMessage`, `walreceiver.c:XLogWalRcvProcessMsg`).
    #[error("unexpected message type {}", TagName(*.0))]
    UnknownReplicationTag(u8),
    /// A fixed-size message has the wrong size.
    #[error("invalid {message} message: length {actual}, expected {expected}")]
    BadLength {
        /// The message concerned.
        message: &'static str,
        /// The size the protocol fixes.
        expected: usize,
        /// The size received.
        actual: usize,
    },
    /// A field holds a value the protocol does not allow.
    #[error("invalid value {value} for {field}")]
    InvalidValue {
        /// The field concerned.
        field: &'static str,
        /// The value received.
        value: i64,
    },
    /// A string to encode contains a zero byte, which would end it early on the wire.
    #[error("invalid byte sequence for encoding \"UTF8\": 0x00 in {field}")]
    EmbeddedNul {
        /// The field concerned.
        field: &'static str,
    },
    /// A message to encode is longer than an Int32 length (or an Int16 count) can describe.
    #[error("message of {len} bytes or items exceeds the protocol limit")]
    TooLong {
        /// The length or count that did not fit.
        len: usize,
    },
}

impl WireError {
    /// The SQLSTATE PostgreSQL reports for this fault: `08P01` (protocol_violation) for most,
    /// `22021` for bad text, `0A000` for an unsupported protocol, `54000` for an oversized message.
    pub fn sqlstate(&self) -> SqlState {
        match self {
            WireError::InvalidUtf8 | WireError::EmbeddedNul { .. } => {
                SqlState::CHARACTER_NOT_IN_REPERTOIRE
            }
            WireError::UnsupportedProtocol { .. } => SqlState::FEATURE_NOT_SUPPORTED,
            WireError::TooLong { .. } => SqlState::PROGRAM_LIMIT_EXCEEDED,
            _ => SqlState::PROTOCOL_VIOLATION,
        }
    }
}

/// A message type byte as PostgreSQL prints it: `"w"` when printable, else `0x99`.
struct TagName(u8);

impl fmt::Display for TagName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_ascii_graphic() {
            write!(f, "\"{}\"", char::from(self.0))
        } else {
            write!(f, "0x{:02X}", self.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_match_postgresql() {
        let short = WireError::Short {
            needed: 8,
            remaining: 3,
        };
        assert_eq!(short.to_string(), "insufficient data left in message");
        assert_eq!(
            WireError::UnknownFrontendTag(0x99).to_string(),
            "invalid frontend message type 153"
        );
        assert_eq!(
            WireError::StartupLayout.to_string(),
            "invalid startup packet layout: expected terminator as last byte"
        );
        assert_eq!(
            WireError::UnterminatedString.to_string(),
            "invalid string in message"
        );
        assert_eq!(
            WireError::UnknownReplicationTag(b'x').to_string(),
            "unexpected message type \"x\""
        );
        assert_eq!(
            WireError::UnknownBackendTag(0).to_string(),
            "unexpected response from server; message type 0x00"
        );
    }

    #[test]
    fn sqlstates() {
        assert_eq!(WireError::StartupLayout.sqlstate(), "08P01");
        assert_eq!(WireError::UnknownFrontendTag(1).sqlstate(), "08P01");
        assert_eq!(WireError::InvalidUtf8.sqlstate(), "22021");
        let proto = WireError::UnsupportedProtocol { major: 2, minor: 0 };
        assert_eq!(proto.sqlstate(), "0A000");
        assert_eq!(WireError::TooLong { len: 1 }.sqlstate(), "54000");
    }
}
