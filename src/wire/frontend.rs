//! Messages a client sends after the startup packet: the encoder a replication client needs
//! and the decoder a server needs, mirroring `postgres.c:SocketBackend` and `PostgresMain`.
//!
//! A walsender accepts only the simple query protocol; the extended-protocol and fastpath
//! messages decode to [`FrontendMessage::Extended`] so a server can answer "extended query
//! protocol not supported in a replication connection" (08P01), while an unknown type fails with
//! "invalid frontend message type N".

use bytes::{BufMut, Bytes, BytesMut};

use super::error::WireError;
use super::frame::Frame;
use super::reader::Reader;
use super::writer::{put_cstr, put_nullable_bytes, write_message};

/// Message types of the extended query and fastpath protocols: Parse, Bind, Execute, Describe,
/// Close, Flush and FunctionCall.
pub const EXTENDED_QUERY_TAGS: &[u8] = b"PBEDCHF";

/// A message from a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrontendMessage {
    /// `Q`: a simple query, e.g. a replication command.
    Query(String),
    /// `p`: PasswordMessage, SASLInitialResponse or SASLResponse; which one depends on the
    /// authentication exchange, so the body is kept raw (see [`parse_password`] and
    /// [`SaslInitialResponse::parse`]; a SASLResponse body is the SASL data itself).
    Password(Bytes),
    /// `d`: the payload, shared with the receive buffer.
    CopyData(Bytes),
    /// `c`.
    CopyDone,
    /// `f`: the client aborts a COPY with this reason.
    CopyFail(String),
    /// `S`: ends an extended-protocol batch; a walsender answers ReadyForQuery.
    Sync,
    /// `X`: the client closes the connection.
    Terminate,
    /// One of [`EXTENDED_QUERY_TAGS`], body kept raw.
    Extended {
        /// The message type byte.
        tag: u8,
        /// The undecoded body.
        body: Bytes,
    },
}

impl FrontendMessage {
    /// Decodes a client message.
    ///
    /// # Errors
    /// [`WireError::UnknownFrontendTag`] for an unknown type, [`WireError::UnterminatedString`]
    /// for a Query or CopyFail without its NUL, [`WireError::Trailing`] for bytes after it or in
    /// a message that has no body, [`WireError::InvalidUtf8`] for non-UTF-8 text.
    pub fn parse(frame: Frame) -> Result<FrontendMessage, WireError> {
        let body = frame.body;
        let mut r = Reader::new(&body);
        let msg = match frame.tag {
            b'Q' => FrontendMessage::Query(r.cstr_utf8()?.to_owned()),
            b'p' => return Ok(FrontendMessage::Password(body)),
            b'd' => return Ok(FrontendMessage::CopyData(body)),
            b'c' => FrontendMessage::CopyDone,
            b'f' => FrontendMessage::CopyFail(r.cstr_utf8()?.to_owned()),
            b'S' => FrontendMessage::Sync,
            b'X' => FrontendMessage::Terminate,
            tag if EXTENDED_QUERY_TAGS.contains(&tag) => {
                return Ok(FrontendMessage::Extended { tag, body });
            }
            tag => return Err(WireError::UnknownFrontendTag(tag)),
        };
        r.finish()?;
        Ok(msg)
    }

    /// The message type byte.
    pub fn tag(&self) -> u8 {
        match self {
            FrontendMessage::Query(_) => b'Q',
            FrontendMessage::Password(_) => b'p',
            FrontendMessage::CopyData(_) => b'd',
            FrontendMessage::CopyDone => b'c',
            FrontendMessage::CopyFail(_) => b'f',
            FrontendMessage::Sync => b'S',
            FrontendMessage::Terminate => b'X',
            FrontendMessage::Extended { tag, .. } => *tag,
        }
    }

    /// Appends the message, with its type byte and length, to `out`.
    ///
    /// # Errors
    /// [`WireError::EmbeddedNul`] for a query or reason containing a zero byte,
    /// [`WireError::TooLong`] for a message over 2 GiB. `out` is unchanged on error.
    pub fn write(&self, out: &mut BytesMut) -> Result<(), WireError> {
        write_message(out, Some(self.tag()), |out| {
            match self {
                FrontendMessage::Query(query) => put_cstr(out, query.as_bytes(), "query")?,
                FrontendMessage::CopyFail(reason) => {
                    put_cstr(out, reason.as_bytes(), "CopyFail reason")?
                }
                FrontendMessage::Password(body)
                | FrontendMessage::CopyData(body)
                | FrontendMessage::Extended { body, .. } => out.put_slice(body),
                FrontendMessage::CopyDone | FrontendMessage::Sync | FrontendMessage::Terminate => {}
            }
            Ok(())
        })
    }
}

/// Reads the body of a PasswordMessage (cleartext, or `md5` + 32 hex digits): one string that
/// fills the message (`auth.c:recv_password_packet`).
///
/// # Errors
/// [`WireError::UnterminatedString`] without the NUL, [`WireError::Trailing`] for bytes after it.
pub fn parse_password(body: &[u8]) -> Result<&[u8], WireError> {
    let mut r = Reader::new(body);
    let password = r.cstr()?;
    r.finish()?;
    Ok(password)
}

/// Appends a PasswordMessage carrying `password` (cleartext or an MD5 hash) to `out`.
///
/// # Errors
/// [`WireError::EmbeddedNul`] if the password contains a zero byte.
pub fn write_password(password: &[u8], out: &mut BytesMut) -> Result<(), WireError> {
    write_message(out, Some(b'p'), |out| put_cstr(out, password, "password"))
}

/// The first message of a SASL exchange (`auth-sasl.c:CheckSASLAuth`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaslInitialResponse {
    /// The chosen mechanism, e.g. `SCRAM-SHA-256`.
    pub mechanism: String,
    /// The initial response (SCRAM's client-first-message); `None` is sent as length -1.
    pub data: Option<Bytes>,
}

impl SaslInitialResponse {
    /// Decodes the body of a `p` message as a SASLInitialResponse: the mechanism name, an
    /// Int32 length (-1 for none), then that many bytes filling the rest of the message.
    ///
    /// # Errors
    /// [`WireError::UnterminatedString`] or [`WireError::InvalidUtf8`] for a bad mechanism
    /// name, [`WireError::InvalidValue`] for a length below -1, [`WireError::Short`] for a length
    /// beyond the message, [`WireError::Trailing`] for bytes after the data.
    pub fn parse(body: &Bytes) -> Result<SaslInitialResponse, WireError> {
        let mut r = Reader::new(body);
        let mechanism = r.cstr_utf8()?.to_owned();
        let data = r
            .nullable_bytes("SASL initial response length")?
            .map(|d| body.slice_ref(d));
        r.finish()?;
        Ok(SaslInitialResponse { mechanism, data })
    }

    /// Appends the message, as a `p` message with its length, to `out`.
    ///
    /// # Errors
    /// [`WireError::EmbeddedNul`] if the mechanism name contains a zero byte,
    /// [`WireError::TooLong`] for data over 2 GiB.
    pub fn write(&self, out: &mut BytesMut) -> Result<(), WireError> {
        write_message(out, Some(b'p'), |out| {
            put_cstr(out, self.mechanism.as_bytes(), "SASL mechanism")?;
            put_nullable_bytes(out, self.data.as_deref())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::frame::{COMMAND_FRAME_LIMIT, split_frame};
    use postgres_protocol::message::frontend;

    fn frame(wire: &[u8]) -> Frame {
        let mut buf = BytesMut::from(wire);
        let frame = split_frame(&mut buf, COMMAND_FRAME_LIMIT).unwrap().unwrap();
        assert!(buf.is_empty());
        frame
    }

    fn encode(msg: &FrontendMessage) -> BytesMut {
        let mut out = BytesMut::new();
        msg.write(&mut out).unwrap();
        out
    }

    fn round_trip(msg: FrontendMessage) {
        let wire = encode(&msg);
        assert_eq!(FrontendMessage::parse(frame(&wire)).unwrap(), msg);
    }

    #[test]
    fn round_trips() {
        round_trip(FrontendMessage::Query("IDENTIFY_SYSTEM".into()));
        round_trip(FrontendMessage::Query(String::new()));
        round_trip(FrontendMessage::Password(Bytes::from_static(b"secret\0")));
        round_trip(FrontendMessage::CopyData(Bytes::from_static(b"r0123")));
        round_trip(FrontendMessage::CopyDone);
        round_trip(FrontendMessage::CopyFail("aborted".into()));
        round_trip(FrontendMessage::Sync);
        round_trip(FrontendMessage::Terminate);
        round_trip(FrontendMessage::Extended {
            tag: b'P',
            body: Bytes::from_static(b"\0SELECT 1\0\0\0"),
        });
    }

    #[test]
    fn golden_bytes_match_postgres_protocol() {
        let mut theirs = BytesMut::new();
        frontend::query(
            "START_REPLICATION SLOT \"sb1\" 0/3000000 TIMELINE 1",
            &mut theirs,
        )
        .unwrap();
        let q =
            FrontendMessage::Query("START_REPLICATION SLOT \"sb1\" 0/3000000 TIMELINE 1".into());
        assert_eq!(encode(&q), theirs);
        type Writer = fn(&mut BytesMut);
        let cases: [(FrontendMessage, Writer); 3] = [
            (FrontendMessage::CopyDone, frontend::copy_done),
            (FrontendMessage::Sync, frontend::sync),
            (FrontendMessage::Terminate, frontend::terminate),
        ];
        for (msg, write) in cases {
            let mut theirs = BytesMut::new();
            write(&mut theirs);
            assert_eq!(encode(&msg), theirs);
        }
        assert_eq!(&encode(&FrontendMessage::Terminate)[..], b"X\0\0\0\x04");
        let mut theirs = BytesMut::new();
        frontend::copy_fail("no", &mut theirs).unwrap();
        assert_eq!(encode(&FrontendMessage::CopyFail("no".into())), theirs);
        let mut theirs = BytesMut::new();
        frontend::CopyData::new(&b"h123"[..])
            .unwrap()
            .write(&mut theirs);
        assert_eq!(
            encode(&FrontendMessage::CopyData(Bytes::from_static(b"h123"))),
            theirs
        );
    }

    #[test]
    fn golden_messages_from_pg15_clients() {
        let query = include_bytes!("../../tests/data/wire/query.bin");
        let msg = FrontendMessage::Query("IDENTIFY_SYSTEM".into());
        assert_eq!(FrontendMessage::parse(frame(query)).unwrap(), msg);
        assert_eq!(&encode(&msg)[..], query);
        let terminate = include_bytes!("../../tests/data/wire/terminate.bin");
        assert_eq!(
            FrontendMessage::parse(frame(terminate)).unwrap(),
            FrontendMessage::Terminate
        );
        assert_eq!(&encode(&FrontendMessage::Terminate)[..], terminate);
    }

    #[test]
    fn golden_scram_messages_from_libpq() {
        let initial = include_bytes!("../../tests/data/wire/sasl_initial_response.bin");
        let FrontendMessage::Password(body) = FrontendMessage::parse(frame(initial)).unwrap()
        else {
            panic!()
        };
        let msg = SaslInitialResponse::parse(&body).unwrap();
        assert_eq!(msg.mechanism, "SCRAM-SHA-256");
        let client_first = msg.data.clone().unwrap();
        assert!(client_first.starts_with(b"n,,n=,r="));
        assert_eq!(client_first.len(), 32);
        let mut ours = BytesMut::new();
        msg.write(&mut ours).unwrap();
        assert_eq!(&ours[..], initial);
        let last = include_bytes!("../../tests/data/wire/sasl_response.bin");
        let msg = FrontendMessage::parse(frame(last)).unwrap();
        let FrontendMessage::Password(client_final) = &msg else {
            panic!()
        };
        assert!(client_final.starts_with(b"c=biws,r="));
        assert_eq!(&encode(&msg)[..], last);
        let mut theirs = BytesMut::new();
        frontend::sasl_response(client_final, &mut theirs).unwrap();
        assert_eq!(&theirs[..], last);
    }

    #[test]
    fn golden_sasl_initial_response_from_protocol_notes() {
        let nonce = b"n,,n=,r=mj6x7r4RCAush5QyNVQIj0/G";
        let mut golden = b"p\0\0\0\x36SCRAM-SHA-256\0\0\0\0\x20".to_vec();
        golden.extend_from_slice(nonce);
        let msg = SaslInitialResponse {
            mechanism: "SCRAM-SHA-256".into(),
            data: Some(Bytes::from_static(nonce)),
        };
        let mut ours = BytesMut::new();
        msg.write(&mut ours).unwrap();
        assert_eq!(&ours[..], &golden[..]);
        let mut theirs = BytesMut::new();
        frontend::sasl_initial_response("SCRAM-SHA-256", nonce, &mut theirs).unwrap();
        assert_eq!(ours, theirs);
        let FrontendMessage::Password(body) = FrontendMessage::parse(frame(&golden)).unwrap()
        else {
            panic!()
        };
        assert_eq!(SaslInitialResponse::parse(&body).unwrap(), msg);
    }

    #[test]
    fn sasl_initial_response_lengths() {
        let none = SaslInitialResponse {
            mechanism: "SCRAM-SHA-256".into(),
            data: None,
        };
        let mut out = BytesMut::new();
        none.write(&mut out).unwrap();
        assert_eq!(&out[5..], b"SCRAM-SHA-256\0\xff\xff\xff\xff");
        assert_eq!(
            SaslInitialResponse::parse(&out.clone().freeze().slice(5..)).unwrap(),
            none
        );
        let parse = |b: &'static [u8]| SaslInitialResponse::parse(&Bytes::from_static(b));
        assert!(matches!(
            parse(b"M\0\0\0\0\x05abc"),
            Err(WireError::Short { .. })
        ));
        assert!(matches!(
            parse(b"M\0\x7f\xff\xff\xffabc"),
            Err(WireError::Short { .. })
        ));
        assert!(matches!(
            parse(b"M\0\xff\xff\xff\xfe"),
            Err(WireError::InvalidValue { .. })
        ));
        assert!(matches!(
            parse(b"M\0\0\0\0\x01ab"),
            Err(WireError::Trailing { extra: 1 })
        ));
        assert!(matches!(parse(b"M"), Err(WireError::UnterminatedString)));
        assert!(matches!(parse(b"M\0\0\0"), Err(WireError::Short { .. })));
    }

    #[test]
    fn password_messages() {
        let mut ours = BytesMut::new();
        write_password(b"md5abc", &mut ours).unwrap();
        let mut theirs = BytesMut::new();
        frontend::password_message(b"md5abc", &mut theirs).unwrap();
        assert_eq!(ours, theirs);
        assert_eq!(parse_password(&ours[5..]).unwrap(), b"md5abc");
        assert_eq!(parse_password(b"pw"), Err(WireError::UnterminatedString));
        assert_eq!(
            parse_password(b"pw\0x"),
            Err(WireError::Trailing { extra: 1 })
        );
        assert!(write_password(b"a\0b", &mut ours).is_err());
    }

    #[test]
    fn query_errors_match_postgresql() {
        let err = FrontendMessage::parse(frame(b"Q\0\0\0\x0aSELECT")).unwrap_err();
        assert_eq!(err.to_string(), "invalid string in message");
        let err = FrontendMessage::parse(frame(b"Q\0\0\0\x08A\0B\0")).unwrap_err();
        assert_eq!(err, WireError::Trailing { extra: 2 });
        assert!(FrontendMessage::parse(frame(b"X\0\0\0\x05x")).is_err());
        let err = FrontendMessage::parse(frame(b"\x99\0\0\0\x04")).unwrap_err();
        assert_eq!(err.to_string(), "invalid frontend message type 153");
        assert_eq!(err.sqlstate(), "08P01");
    }

    #[test]
    fn extended_protocol_is_recognised() {
        for &tag in EXTENDED_QUERY_TAGS {
            let msg = FrontendMessage::parse(frame(&[tag, 0, 0, 0, 5, 0])).unwrap();
            assert_eq!(msg.tag(), tag);
            assert!(matches!(msg, FrontendMessage::Extended { .. }));
        }
        assert_eq!(
            FrontendMessage::parse(frame(b"S\0\0\0\x04")).unwrap(),
            FrontendMessage::Sync
        );
    }
}
