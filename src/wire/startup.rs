//! The untyped first packets of a connection, as `postmaster.c:ProcessStartupPacket` reads
//! them: SSLRequest, GSSENCRequest, CancelRequest and the protocol 3.x StartupMessage with its
//! `name\0value\0...\0` parameters.

use bytes::{BufMut, BytesMut};

use super::error::WireError;
use super::reader::Reader;
use super::writer::{put_cstr, write_message};

/// The request code of SSLRequest (1234.5679).
pub const SSL_REQUEST_CODE: i32 = 80_877_103;
/// The request code of GSSENCRequest (1234.5680).
pub const GSSENC_REQUEST_CODE: i32 = 80_877_104;
/// The request code of CancelRequest (1234.5678).
pub const CANCEL_REQUEST_CODE: i32 = 80_877_102;
/// The only protocol major version spoken.
pub const PROTOCOL_MAJOR: u16 = 3;

/// The first packet a client sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    /// Asks for TLS; the server answers one byte, `S` or `N`.
    SslRequest,
    /// Asks for GSSAPI encryption; the server answers one byte, `G` or `N`.
    GssEncRequest,
    /// Asks to cancel the query of another connection; there is no answer.
    Cancel {
        /// The process id from that connection's BackendKeyData.
        process_id: i32,
        /// The secret key from that connection's BackendKeyData.
        secret_key: i32,
    },
    /// Starts a session.
    Startup(StartupMessage),
}

/// A protocol 3.x StartupMessage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartupMessage {
    /// The requested minor version; above 0 calls for NegotiateProtocolVersion.
    pub minor_version: u16,
    /// The parameters in the order sent, duplicates included. Invalid UTF-8 is replaced by
    /// U+FFFD, since PostgreSQL accepts any bytes here.
    pub params: Vec<(String, String)>,
}

impl StartupMessage {
    /// The value of a parameter; when a name is repeated the last one wins, as in PostgreSQL.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

impl StartupPacket {
    /// Parses a first packet from the bytes after its length word.
    ///
    /// # Errors
    /// [`WireError::BadLength`] for a request of the wrong size,
    /// [`WireError::UnsupportedProtocol`] for a version other than 3.x or an unknown request
    /// code, [`WireError::StartupLayout`] for malformed parameters.
    pub fn parse(packet: &[u8]) -> Result<StartupPacket, WireError> {
        let mut r = Reader::new(packet);
        let code = r.i32()?;
        match code {
            SSL_REQUEST_CODE => fixed(r, "SSLRequest", 8).map(|_| StartupPacket::SslRequest),
            GSSENC_REQUEST_CODE => {
                fixed(r, "GSSENCRequest", 8).map(|_| StartupPacket::GssEncRequest)
            }
            CANCEL_REQUEST_CODE => {
                let mut r = fixed(r, "CancelRequest", 16)?;
                Ok(StartupPacket::Cancel {
                    process_id: r.i32()?,
                    secret_key: r.i32()?,
                })
            }
            _ => {
                let [major, minor] = [(code >> 16) as u16, code as u16];
                if major != PROTOCOL_MAJOR {
                    return Err(WireError::UnsupportedProtocol { major, minor });
                }
                let params = parse_params(r)?;
                Ok(StartupPacket::Startup(StartupMessage {
                    minor_version: minor,
                    params,
                }))
            }
        }
    }

    /// Writes the packet with its length word.
    ///
    /// # Errors
    /// [`WireError::EmbeddedNul`] if a parameter contains a zero byte,
    /// [`WireError::InvalidValue`] for an empty parameter name (it would end the list).
    pub fn write(&self, out: &mut BytesMut) -> Result<(), WireError> {
        write_message(out, None, |out| {
            match self {
                StartupPacket::SslRequest => out.put_i32(SSL_REQUEST_CODE),
                StartupPacket::GssEncRequest => out.put_i32(GSSENC_REQUEST_CODE),
                StartupPacket::Cancel {
                    process_id,
                    secret_key,
                } => {
                    out.put_i32(CANCEL_REQUEST_CODE);
                    out.put_i32(*process_id);
                    out.put_i32(*secret_key);
                }
                StartupPacket::Startup(msg) => {
                    out.put_u16(PROTOCOL_MAJOR);
                    out.put_u16(msg.minor_version);
                    for (name, value) in &msg.params {
                        if name.is_empty() {
                            return Err(WireError::InvalidValue {
                                field: "startup parameter name length",
                                value: 0,
                            });
                        }
                        put_cstr(out, name.as_bytes(), "startup parameter name")?;
                        put_cstr(out, value.as_bytes(), "startup parameter value")?;
                    }
                    out.put_u8(0);
                }
            }
            Ok(())
        })
    }
}

/// Checks that a request packet has exactly `len` bytes, counting the length word.
fn fixed<'a>(r: Reader<'a>, message: &'static str, len: usize) -> Result<Reader<'a>, WireError> {
    let actual = r.remaining().saturating_add(8);
    if actual == len {
        Ok(r)
    } else {
        Err(WireError::BadLength {
            message,
            expected: len,
            actual,
        })
    }
}

/// Reads `name\0value\0` pairs up to the final `\0`, which must be the last byte.
fn parse_params(mut r: Reader<'_>) -> Result<Vec<(String, String)>, WireError> {
    let mut params = Vec::new();
    loop {
        let name = r.cstr().map_err(|_| WireError::StartupLayout)?;
        if name.is_empty() {
            break;
        }
        let value = r.cstr().map_err(|_| WireError::StartupLayout)?;
        params.push((lossy(name), lossy(value)));
    }
    r.finish().map_err(|_| WireError::StartupLayout)?;
    Ok(params)
}

fn lossy(s: &[u8]) -> String {
    String::from_utf8_lossy(s).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use postgres_protocol::message::frontend;

    fn body(wire: &[u8]) -> &[u8] {
        &wire[4..]
    }

    #[test]
    fn golden_ssl_gss_and_cancel() {
        let mut out = BytesMut::new();
        StartupPacket::SslRequest.write(&mut out).unwrap();
        assert_eq!(&out[..], &[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]);
        assert_eq!(
            StartupPacket::parse(body(&out)).unwrap(),
            StartupPacket::SslRequest
        );
        out.clear();
        StartupPacket::GssEncRequest.write(&mut out).unwrap();
        assert_eq!(&out[..], &[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30]);
        assert_eq!(
            StartupPacket::parse(body(&out)).unwrap(),
            StartupPacket::GssEncRequest
        );
        let mut theirs = BytesMut::new();
        frontend::cancel_request(10323, -5, &mut theirs);
        let cancel = StartupPacket::Cancel {
            process_id: 10323,
            secret_key: -5,
        };
        out.clear();
        cancel.write(&mut out).unwrap();
        assert_eq!(out, theirs);
        assert_eq!(StartupPacket::parse(body(&out)).unwrap(), cancel);
    }

    #[test]
    fn golden_startup_message_matches_libpq_layout() {
        let params = [
            ("user", "postgres"),
            ("database", "replication"),
            ("replication", "true"),
            ("application_name", "sbcluster"),
        ];
        let mut theirs = BytesMut::new();
        frontend::startup_message(params.iter().copied(), &mut theirs).unwrap();
        let parsed = StartupPacket::parse(body(&theirs)).unwrap();
        let StartupPacket::Startup(msg) = &parsed else {
            panic!("{parsed:?}")
        };
        assert_eq!(msg.minor_version, 0);
        assert_eq!(msg.get("application_name"), Some("sbcluster"));
        let mut ours = BytesMut::new();
        parsed.write(&mut ours).unwrap();
        assert_eq!(ours, theirs);
    }

    #[test]
    fn golden_packets_from_psql() {
        let ssl = include_bytes!("../../tests/data/wire/ssl_request.bin");
        assert_eq!(
            StartupPacket::parse(body(ssl)).unwrap(),
            StartupPacket::SslRequest
        );
        let startup = include_bytes!("../../tests/data/wire/startup_message.bin");
        let packet = StartupPacket::parse(body(startup)).unwrap();
        let expected = StartupMessage {
            minor_version: 0,
            params: [
                ("user", "postgres"),
                ("database", "postgres"),
                ("replication", "true"),
                ("application_name", "capture"),
            ]
            .map(|(n, v)| (n.to_owned(), v.to_owned()))
            .to_vec(),
        };
        assert_eq!(packet, StartupPacket::Startup(expected));
        let mut out = BytesMut::new();
        packet.write(&mut out).unwrap();
        assert_eq!(&out[..], startup);
    }

    #[test]
    fn empty_parameter_names_cannot_be_encoded() {
        let msg = StartupMessage {
            minor_version: 0,
            params: vec![(String::new(), "x".into())],
        };
        let mut out = BytesMut::new();
        assert!(StartupPacket::Startup(msg).write(&mut out).is_err());
        assert!(out.is_empty());
    }

    #[test]
    fn wrong_request_sizes() {
        let cancel12 = [0x04, 0xd2, 0x16, 0x2e, 0, 0, 0, 1];
        assert_eq!(
            StartupPacket::parse(&cancel12),
            Err(WireError::BadLength {
                message: "CancelRequest",
                expected: 16,
                actual: 12
            })
        );
        assert!(StartupPacket::parse(&[0x04, 0xd2, 0x16, 0x2f, 0]).is_err());
    }

    #[test]
    fn unsupported_protocols() {
        for (code, major, minor) in [
            (0x0002_0000, 2, 0),
            (0x0004_0000, 4, 0),
            (0x04d2_1631, 1234, 5681),
        ] {
            let packet = i32::to_be_bytes(code);
            assert_eq!(
                StartupPacket::parse(&packet),
                Err(WireError::UnsupportedProtocol { major, minor })
            );
        }
    }

    #[test]
    fn minor_version_and_last_duplicate_wins() {
        let packet = b"\x00\x03\x00\x63user\0a\0user\0b\0_pq_.x\0\0\0";
        let StartupPacket::Startup(msg) = StartupPacket::parse(packet).unwrap() else {
            panic!()
        };
        assert_eq!(msg.minor_version, 99);
        assert_eq!(msg.get("user"), Some("b"));
        assert_eq!(msg.get("_pq_.x"), Some(""));
        assert_eq!(msg.get("database"), None);
    }

    #[test]
    fn bad_layouts() {
        let cases: [&[u8]; 6] = [
            b"\0\x03\0\0",
            b"\0\x03\0\0user\0bob\0",
            b"\0\x03\0\0user\0",
            b"\0\x03\0\0user",
            b"\0\x03\0\0user\0bob\0\0junk",
            b"\0\x03\0\0\0\0",
        ];
        for case in cases {
            assert_eq!(
                StartupPacket::parse(case),
                Err(WireError::StartupLayout),
                "{case:?}"
            );
        }
        let empty = StartupPacket::parse(b"\0\x03\0\0\0").unwrap();
        assert_eq!(
            empty,
            StartupPacket::Startup(StartupMessage {
                minor_version: 0,
                params: vec![]
            })
        );
    }

    #[test]
    fn invalid_utf8_is_kept_lossily() {
        let StartupPacket::Startup(msg) =
            StartupPacket::parse(b"\0\x03\0\0application_name\0\xff\x1b[31m\0\0").unwrap()
        else {
            panic!()
        };
        assert_eq!(msg.get("application_name"), Some("\u{fffd}\u{1b}[31m"));
    }
}
