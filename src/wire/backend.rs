//! Messages a server sends (`protocol-message-formats`): the decoder a replication client needs
//! for an upstream walsender, and the encoders a server needs to act as one.
//!
//! Decoding mirrors libpq (`fe-protocol3.c`) with a hostile peer in mind: every count and
//! length is checked against the body before anything is allocated, fixed-size messages must
//! have their exact size, and an ErrorResponse without `C` or `M` still decodes (SQLSTATE
//! `XX000`, empty message) instead of failing.

use bytes::{BufMut, Bytes, BytesMut};

use super::error::WireError;
use super::error_fields::{ErrorFields, Severity};
use super::frame::Frame;
use super::reader::Reader;
use super::writer::{put_count_i16, put_cstr, put_nullable_bytes, write_message};

/// The OID of type `text`.
pub const TEXT_OID: u32 = 25;
/// The OID of type `int4`.
pub const INT4_OID: u32 = 23;
/// The OID of type `int8`.
pub const INT8_OID: u32 = 20;
/// The OID of type `oid`.
pub const OID_OID: u32 = 26;

/// An Authentication (`R`) request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authentication {
    /// Code 0: authentication succeeded.
    Ok,
    /// Code 3: send the password in clear text.
    CleartextPassword,
    /// Code 5: send an MD5 hash of the password with this salt.
    Md5Password {
        /// The random salt.
        salt: [u8; 4],
    },
    /// Code 10: start a SASL exchange with one of these mechanisms.
    Sasl {
        /// Mechanism names in the server's order of preference.
        mechanisms: Vec<String>,
    },
    /// Code 11: a SASL challenge (SCRAM's server-first-message).
    SaslContinue(Bytes),
    /// Code 12: the SASL outcome (SCRAM's server-final-message).
    SaslFinal(Bytes),
    /// Any other code (Kerberos, GSSAPI, SSPI, ...); data after the code is ignored.
    Unknown(i32),
}

/// The transaction status of ReadyForQuery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransactionStatus {
    /// `I`: not in a transaction block.
    Idle,
    /// `T`: in a transaction block.
    InTransaction,
    /// `E`: in a failed transaction block.
    Failed,
}

impl TransactionStatus {
    fn from_byte(b: u8) -> Result<TransactionStatus, WireError> {
        match b {
            b'I' => Ok(TransactionStatus::Idle),
            b'T' => Ok(TransactionStatus::InTransaction),
            b'E' => Ok(TransactionStatus::Failed),
            _ => Err(WireError::InvalidValue {
                field: "ReadyForQuery transaction status",
                value: i64::from(b),
            }),
        }
    }

    fn byte(self) -> u8 {
        match self {
            TransactionStatus::Idle => b'I',
            TransactionStatus::InTransaction => b'T',
            TransactionStatus::Failed => b'E',
        }
    }
}

/// One column of a RowDescription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldDescription {
    /// The column name.
    pub name: String,
    /// The OID of the source table, or 0.
    pub table_oid: u32,
    /// The attribute number in that table, or 0.
    pub column_id: i16,
    /// The type OID ([`TEXT_OID`], [`INT8_OID`], ...).
    pub type_oid: u32,
    /// The type length (`pg_type.typlen`), -1 for varlena.
    pub type_len: i16,
    /// The type modifier; -1 in most walsender results.
    pub type_modifier: i32,
    /// 0 for text, 1 for binary.
    pub format: i16,
}

impl FieldDescription {
    /// A text-format column not taken from a table, as walsender's results are.
    pub fn text(
        name: impl Into<String>,
        type_oid: u32,
        type_len: i16,
        type_modifier: i32,
    ) -> FieldDescription {
        FieldDescription {
            name: name.into(),
            table_oid: 0,
            column_id: 0,
            type_oid,
            type_len,
            type_modifier,
            format: 0,
        }
    }
}

/// The body of CopyInResponse, CopyOutResponse and CopyBothResponse.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CopyResponse {
    /// The overall format: 0 text, 1 binary.
    pub format: u8,
    /// The format of each column; empty for the replication stream.
    pub column_formats: Vec<i16>,
}

/// A message from a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendMessage {
    /// `R`.
    Authentication(Authentication),
    /// `S`: a run-time parameter's value.
    ParameterStatus {
        /// The parameter name.
        name: String,
        /// Its current value.
        value: String,
    },
    /// `K`: the key that cancels this connection's queries; the pid names temporary slots.
    BackendKeyData {
        /// The backend process id.
        process_id: i32,
        /// The secret key.
        secret_key: i32,
    },
    /// `Z`.
    ReadyForQuery(TransactionStatus),
    /// `T`.
    RowDescription(Vec<FieldDescription>),
    /// `D`: column values in text or binary form; `None` is SQL NULL.
    DataRow(Vec<Option<Bytes>>),
    /// `C`: the command tag, e.g. `IDENTIFY_SYSTEM`.
    CommandComplete(String),
    /// `I`: the query string was empty.
    EmptyQueryResponse,
    /// `E`.
    ErrorResponse(ErrorFields),
    /// `N`.
    NoticeResponse(ErrorFields),
    /// `G`.
    CopyInResponse(CopyResponse),
    /// `H`.
    CopyOutResponse(CopyResponse),
    /// `W`: the start of the replication stream.
    CopyBothResponse(CopyResponse),
    /// `d`: the payload, shared with the receive buffer.
    CopyData(Bytes),
    /// `c`.
    CopyDone,
    /// `v`: the server does not support the requested minor version or `_pq_.` options.
    NegotiateProtocolVersion {
        /// The newest protocol version the server supports. PostgreSQL sends the whole
        /// version code here (3.0 is 196608), not only the minor number.
        newest_version: i32,
        /// The protocol options it did not recognise.
        unrecognized: Vec<String>,
    },
}

impl BackendMessage {
    /// Decodes a server message.
    ///
    /// # Errors
    /// [`WireError::UnknownBackendTag`] for an unknown type, [`WireError::Short`] or
    /// [`WireError::Trailing`] for a body of the wrong size, [`WireError::BadLength`] for a
    /// BackendKeyData that is not 8 bytes, [`WireError::InvalidValue`] for bad counts, lengths
    /// or transaction status, [`WireError::InvalidUtf8`] for non-UTF-8 names and tags.
    pub fn parse(frame: Frame) -> Result<BackendMessage, WireError> {
        let body = frame.body;
        let mut r = Reader::new(&body);
        let msg = match frame.tag {
            b'R' => return parse_auth(&body).map(BackendMessage::Authentication),
            b'S' => BackendMessage::ParameterStatus {
                name: r.cstr_utf8()?.to_owned(),
                value: r.cstr_utf8()?.to_owned(),
            },
            b'K' if body.len() != 8 => {
                return Err(WireError::BadLength {
                    message: "BackendKeyData",
                    expected: 8,
                    actual: body.len(),
                });
            }
            b'K' => BackendMessage::BackendKeyData {
                process_id: r.i32()?,
                secret_key: r.i32()?,
            },
            b'Z' => BackendMessage::ReadyForQuery(TransactionStatus::from_byte(r.u8()?)?),
            b'T' => return parse_row_description(&body),
            b'D' => return parse_data_row(&body),
            b'C' => BackendMessage::CommandComplete(r.cstr_utf8()?.to_owned()),
            b'I' => BackendMessage::EmptyQueryResponse,
            b'E' => {
                return ErrorFields::parse(&body, Severity::Error)
                    .map(BackendMessage::ErrorResponse);
            }
            b'N' => {
                return ErrorFields::parse(&body, Severity::Notice)
                    .map(BackendMessage::NoticeResponse);
            }
            b'G' => BackendMessage::CopyInResponse(parse_copy_response(&mut r)?),
            b'H' => BackendMessage::CopyOutResponse(parse_copy_response(&mut r)?),
            b'W' => BackendMessage::CopyBothResponse(parse_copy_response(&mut r)?),
            b'd' => return Ok(BackendMessage::CopyData(body)),
            b'c' => BackendMessage::CopyDone,
            b'v' => parse_negotiate(&mut r)?,
            tag => return Err(WireError::UnknownBackendTag(tag)),
        };
        r.finish()?;
        Ok(msg)
    }

    /// The message type byte.
    pub fn tag(&self) -> u8 {
        match self {
            BackendMessage::Authentication(_) => b'R',
            BackendMessage::ParameterStatus { .. } => b'S',
            BackendMessage::BackendKeyData { .. } => b'K',
            BackendMessage::ReadyForQuery(_) => b'Z',
            BackendMessage::RowDescription(_) => b'T',
            BackendMessage::DataRow(_) => b'D',
            BackendMessage::CommandComplete(_) => b'C',
            BackendMessage::EmptyQueryResponse => b'I',
            BackendMessage::ErrorResponse(_) => b'E',
            BackendMessage::NoticeResponse(_) => b'N',
            BackendMessage::CopyInResponse(_) => b'G',
            BackendMessage::CopyOutResponse(_) => b'H',
            BackendMessage::CopyBothResponse(_) => b'W',
            BackendMessage::CopyData(_) => b'd',
            BackendMessage::CopyDone => b'c',
            BackendMessage::NegotiateProtocolVersion { .. } => b'v',
        }
    }

    /// Appends the message, with its type byte and length, to `out`.
    ///
    /// # Errors
    /// [`WireError::EmbeddedNul`] for a string containing a zero byte, [`WireError::TooLong`]
    /// for more than `i16::MAX` columns or a message over 2 GiB, [`WireError::InvalidValue`]
    /// for an empty SASL mechanism name. `out` is unchanged on error.
    pub fn write(&self, out: &mut BytesMut) -> Result<(), WireError> {
        write_message(out, Some(self.tag()), |out| self.write_body(out))
    }

    fn write_body(&self, out: &mut BytesMut) -> Result<(), WireError> {
        match self {
            BackendMessage::Authentication(auth) => write_auth(auth, out)?,
            BackendMessage::ParameterStatus { name, value } => {
                put_cstr(out, name.as_bytes(), "parameter name")?;
                put_cstr(out, value.as_bytes(), "parameter value")?;
            }
            BackendMessage::BackendKeyData {
                process_id,
                secret_key,
            } => {
                out.put_i32(*process_id);
                out.put_i32(*secret_key);
            }
            BackendMessage::ReadyForQuery(status) => out.put_u8(status.byte()),
            BackendMessage::RowDescription(fields) => write_row_description(fields, out)?,
            BackendMessage::DataRow(columns) => {
                put_count_i16(out, columns.len())?;
                for column in columns {
                    put_nullable_bytes(out, column.as_deref())?;
                }
            }
            BackendMessage::CommandComplete(tag) => put_cstr(out, tag.as_bytes(), "command tag")?,
            BackendMessage::ErrorResponse(fields) | BackendMessage::NoticeResponse(fields) => {
                fields.write_body(out)?;
            }
            BackendMessage::CopyInResponse(copy)
            | BackendMessage::CopyOutResponse(copy)
            | BackendMessage::CopyBothResponse(copy) => {
                out.put_u8(copy.format);
                put_count_i16(out, copy.column_formats.len())?;
                copy.column_formats.iter().for_each(|f| out.put_i16(*f));
            }
            BackendMessage::CopyData(data) => out.put_slice(data),
            BackendMessage::NegotiateProtocolVersion {
                newest_version,
                unrecognized,
            } => {
                out.put_i32(*newest_version);
                let n = i32::try_from(unrecognized.len()).map_err(|_| WireError::TooLong {
                    len: unrecognized.len(),
                })?;
                out.put_i32(n);
                for option in unrecognized {
                    put_cstr(out, option.as_bytes(), "protocol option")?;
                }
            }
            BackendMessage::EmptyQueryResponse | BackendMessage::CopyDone => {}
        }
        Ok(())
    }
}

fn parse_auth(body: &Bytes) -> Result<Authentication, WireError> {
    let mut r = Reader::new(body);
    let auth = match r.i32()? {
        0 => Authentication::Ok,
        3 => Authentication::CleartextPassword,
        5 => Authentication::Md5Password { salt: r.array()? },
        10 => {
            let mut mechanisms = Vec::new();
            loop {
                match r.cstr_utf8()? {
                    "" => break,
                    name => mechanisms.push(name.to_owned()),
                }
            }
            Authentication::Sasl { mechanisms }
        }
        11 => Authentication::SaslContinue(body.slice_ref(r.rest())),
        12 => Authentication::SaslFinal(body.slice_ref(r.rest())),
        code => return Ok(Authentication::Unknown(code)),
    };
    r.finish()?;
    Ok(auth)
}

fn write_auth(auth: &Authentication, out: &mut BytesMut) -> Result<(), WireError> {
    match auth {
        Authentication::Ok => out.put_i32(0),
        Authentication::CleartextPassword => out.put_i32(3),
        Authentication::Md5Password { salt } => {
            out.put_i32(5);
            out.put_slice(salt);
        }
        Authentication::Sasl { mechanisms } => {
            out.put_i32(10);
            for name in mechanisms {
                if name.is_empty() {
                    return Err(WireError::InvalidValue {
                        field: "SASL mechanism name length",
                        value: 0,
                    });
                }
                put_cstr(out, name.as_bytes(), "SASL mechanism name")?;
            }
            out.put_u8(0);
        }
        Authentication::SaslContinue(data) => {
            out.put_i32(11);
            out.put_slice(data);
        }
        Authentication::SaslFinal(data) => {
            out.put_i32(12);
            out.put_slice(data);
        }
        Authentication::Unknown(code) => out.put_i32(*code),
    }
    Ok(())
}

/// The smallest encoded column: an empty name's NUL and 18 bytes of integers.
const MIN_FIELD_LEN: usize = 19;

fn parse_row_description(body: &[u8]) -> Result<BackendMessage, WireError> {
    let mut r = Reader::new(body);
    let count = r.count_i16("RowDescription field count", MIN_FIELD_LEN)?;
    let mut fields = Vec::with_capacity(count);
    for _ in 0..count {
        fields.push(FieldDescription {
            name: r.cstr_utf8()?.to_owned(),
            table_oid: r.u32()?,
            column_id: r.i16()?,
            type_oid: r.u32()?,
            type_len: r.i16()?,
            type_modifier: r.i32()?,
            format: r.i16()?,
        });
    }
    r.finish()?;
    Ok(BackendMessage::RowDescription(fields))
}

fn write_row_description(fields: &[FieldDescription], out: &mut BytesMut) -> Result<(), WireError> {
    put_count_i16(out, fields.len())?;
    for field in fields {
        put_cstr(out, field.name.as_bytes(), "column name")?;
        out.put_u32(field.table_oid);
        out.put_i16(field.column_id);
        out.put_u32(field.type_oid);
        out.put_i16(field.type_len);
        out.put_i32(field.type_modifier);
        out.put_i16(field.format);
    }
    Ok(())
}

fn parse_data_row(body: &Bytes) -> Result<BackendMessage, WireError> {
    let mut r = Reader::new(body);
    let count = r.count_i16("DataRow column count", 4)?;
    let mut columns = Vec::with_capacity(count);
    for _ in 0..count {
        let value = r.nullable_bytes("DataRow column length")?;
        columns.push(value.map(|v| body.slice_ref(v)));
    }
    r.finish()?;
    Ok(BackendMessage::DataRow(columns))
}

fn parse_copy_response(r: &mut Reader<'_>) -> Result<CopyResponse, WireError> {
    let format = r.u8()?;
    let count = r.count_i16("copy column count", 2)?;
    let column_formats = (0..count).map(|_| r.i16()).collect::<Result<_, _>>()?;
    Ok(CopyResponse {
        format,
        column_formats,
    })
}

fn parse_negotiate(r: &mut Reader<'_>) -> Result<BackendMessage, WireError> {
    let newest_version = r.i32()?;
    let count = r.count_i32("NegotiateProtocolVersion option count", 1)?;
    let unrecognized = (0..count)
        .map(|_| r.cstr_utf8().map(str::to_owned))
        .collect::<Result<_, _>>()?;
    Ok(BackendMessage::NegotiateProtocolVersion {
        newest_version,
        unrecognized,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::frame::{BACKEND_FRAME_LIMIT, split_frame};

    macro_rules! golden {
        ($name:literal) => {
            include_bytes!(concat!("../../tests/data/wire/", $name, ".bin")).as_slice()
        };
    }

    fn frame(wire: &[u8]) -> Frame {
        let mut buf = BytesMut::from(wire);
        let frame = split_frame(&mut buf, BACKEND_FRAME_LIMIT).unwrap().unwrap();
        assert!(buf.is_empty());
        frame
    }

    fn parse(wire: &[u8]) -> Result<BackendMessage, WireError> {
        BackendMessage::parse(frame(wire))
    }

    fn encode(msg: &BackendMessage) -> BytesMut {
        let mut out = BytesMut::new();
        msg.write(&mut out).unwrap();
        out
    }

    /// Decodes a message captured from PostgreSQL 15, checks the value, and checks that
    /// encoding the value gives the captured bytes back.
    fn check_golden(wire: &[u8], expected: BackendMessage) {
        assert_eq!(parse(wire).unwrap(), expected);
        assert_eq!(&encode(&expected)[..], wire);
    }

    fn round_trip(msg: BackendMessage) {
        assert_eq!(parse(&encode(&msg)).unwrap(), msg);
    }

    #[test]
    fn golden_authentication() {
        check_golden(
            golden!("authentication_ok"),
            BackendMessage::Authentication(Authentication::Ok),
        );
        let clear = Authentication::CleartextPassword;
        check_golden(
            golden!("authentication_cleartext"),
            BackendMessage::Authentication(clear),
        );
        let BackendMessage::Authentication(md5) = parse(golden!("authentication_md5")).unwrap()
        else {
            panic!()
        };
        assert!(matches!(md5, Authentication::Md5Password { .. }));
        check_golden(
            golden!("authentication_md5"),
            BackendMessage::Authentication(md5),
        );
        let sasl = Authentication::Sasl {
            mechanisms: vec!["SCRAM-SHA-256".into()],
        };
        check_golden(
            golden!("authentication_sasl"),
            BackendMessage::Authentication(sasl),
        );
        let server_first = Bytes::copy_from_slice(&golden!("authentication_sasl_continue")[9..]);
        assert!(server_first.ends_with(b",i=4096"));
        let msg = BackendMessage::Authentication(Authentication::SaslContinue(server_first));
        check_golden(golden!("authentication_sasl_continue"), msg);
        let server_final = Bytes::copy_from_slice(&golden!("authentication_sasl_final")[9..]);
        assert!(server_final.starts_with(b"v="));
        let msg = BackendMessage::Authentication(Authentication::SaslFinal(server_final));
        check_golden(golden!("authentication_sasl_final"), msg);
    }

    #[test]
    fn golden_session_start() {
        let status = BackendMessage::ParameterStatus {
            name: "application_name".into(),
            value: "capture".into(),
        };
        check_golden(golden!("parameter_status"), status);
        let BackendMessage::BackendKeyData { process_id, .. } =
            parse(golden!("backend_key_data")).unwrap()
        else {
            panic!()
        };
        assert!(process_id > 0);
        let ready = BackendMessage::ReadyForQuery(TransactionStatus::Idle);
        check_golden(golden!("ready_for_query"), ready);
    }

    #[test]
    fn golden_identify_system_result() {
        let columns = vec![
            FieldDescription::text("systemid", TEXT_OID, -1, -1),
            FieldDescription::text("timeline", INT4_OID, 4, -1),
            FieldDescription::text("xlogpos", TEXT_OID, -1, -1),
            FieldDescription::text("dbname", TEXT_OID, -1, -1),
        ];
        check_golden(
            golden!("row_description_identify_system"),
            BackendMessage::RowDescription(columns),
        );
        let BackendMessage::DataRow(row) = parse(golden!("data_row_identify_system")).unwrap()
        else {
            panic!()
        };
        assert_eq!(row.len(), 4);
        assert!(row[0].as_ref().unwrap().iter().all(u8::is_ascii_digit));
        assert_eq!(row[1].as_deref(), Some(&b"1"[..]));
        assert!(row[2].as_ref().unwrap().starts_with(b"0/"));
        assert_eq!(row[3], None);
        check_golden(
            golden!("data_row_identify_system"),
            BackendMessage::DataRow(row),
        );
        let done = BackendMessage::CommandComplete("IDENTIFY_SYSTEM".into());
        check_golden(golden!("command_complete_identify_system"), done);
    }

    #[test]
    fn golden_show_and_timeline_history_results() {
        let show = vec![FieldDescription::text("wal_segment_size", TEXT_OID, -1, -1)];
        check_golden(
            golden!("row_description_show"),
            BackendMessage::RowDescription(show),
        );
        let row = vec![Some(Bytes::from_static(b"16MB"))];
        check_golden(golden!("data_row_show"), BackendMessage::DataRow(row));
        check_golden(
            golden!("command_complete_show"),
            BackendMessage::CommandComplete("SHOW".into()),
        );
        let history = vec![
            FieldDescription::text("filename", TEXT_OID, -1, 0),
            FieldDescription::text("content", TEXT_OID, -1, 0),
        ];
        check_golden(
            golden!("row_description_timeline_history"),
            BackendMessage::RowDescription(history),
        );
    }

    #[test]
    fn golden_copy_messages() {
        let both = BackendMessage::CopyBothResponse(CopyResponse::default());
        check_golden(golden!("copy_both_response"), both);
        assert_eq!(golden!("copy_both_response"), [0x57, 0, 0, 0, 7, 0, 0, 0]);
        let one_text_column = CopyResponse {
            format: 0,
            column_formats: vec![0],
        };
        check_golden(
            golden!("copy_out_response"),
            BackendMessage::CopyOutResponse(one_text_column.clone()),
        );
        check_golden(
            golden!("copy_in_response"),
            BackendMessage::CopyInResponse(one_text_column),
        );
        check_golden(
            golden!("copy_data"),
            BackendMessage::CopyData(Bytes::from_static(b"1\n")),
        );
        check_golden(golden!("copy_done"), BackendMessage::CopyDone);
        check_golden(
            golden!("command_complete_copy"),
            BackendMessage::CommandComplete("COPY 1".into()),
        );
        check_golden(
            golden!("empty_query_response"),
            BackendMessage::EmptyQueryResponse,
        );
    }

    #[test]
    fn golden_negotiate_protocol_version() {
        let msg = BackendMessage::NegotiateProtocolVersion {
            newest_version: 3 << 16,
            unrecognized: vec!["_pq_.x".into()],
        };
        check_golden(golden!("negotiate_protocol_version"), msg);
    }

    #[test]
    fn round_trips() {
        round_trip(BackendMessage::Authentication(Authentication::Unknown(7)));
        round_trip(BackendMessage::Authentication(Authentication::Sasl {
            mechanisms: vec!["SCRAM-SHA-256-PLUS".into(), "SCRAM-SHA-256".into()],
        }));
        round_trip(BackendMessage::Authentication(Authentication::Sasl {
            mechanisms: vec![],
        }));
        round_trip(BackendMessage::BackendKeyData {
            process_id: 10323,
            secret_key: -1,
        });
        round_trip(BackendMessage::ReadyForQuery(
            TransactionStatus::InTransaction,
        ));
        round_trip(BackendMessage::ReadyForQuery(TransactionStatus::Failed));
        round_trip(BackendMessage::RowDescription(vec![]));
        round_trip(BackendMessage::DataRow(vec![
            None,
            Some(Bytes::new()),
            Some(Bytes::from_static(b"x")),
        ]));
        let full = ErrorFields::fatal(
            crate::types::SqlState::UNDEFINED_FILE,
            "requested WAL segment has already been removed",
        )
        .with_detail("d")
        .with_hint("h");
        round_trip(BackendMessage::ErrorResponse(full.clone()));
        round_trip(BackendMessage::NoticeResponse(full));
        round_trip(BackendMessage::CopyData(Bytes::new()));
        round_trip(BackendMessage::NegotiateProtocolVersion {
            newest_version: 2,
            unrecognized: vec![],
        });
    }

    #[test]
    fn hostile_messages_are_rejected() {
        assert_eq!(
            parse(b"K\0\0\0\x0b\0\0\0\x01\0\0\0"),
            Err(WireError::BadLength {
                message: "BackendKeyData",
                expected: 8,
                actual: 7
            })
        );
        assert!(parse(b"K\0\0\0\x0d\0\0\0\x01\0\0\0\x02\0").is_err());
        assert!(matches!(
            parse(b"Z\0\0\0\x05X"),
            Err(WireError::InvalidValue { .. })
        ));
        assert!(matches!(
            parse(b"Z\0\0\0\x06II"),
            Err(WireError::Trailing { .. })
        ));
        assert!(matches!(
            parse(b"D\0\0\0\x06\x7f\xff"),
            Err(WireError::Short { .. })
        ));
        assert!(matches!(
            parse(b"D\0\0\0\x06\xff\xff"),
            Err(WireError::InvalidValue { .. })
        ));
        assert!(matches!(
            parse(b"D\0\0\0\x0a\0\x01\xff\xff\xff\xfe"),
            Err(WireError::InvalidValue { .. })
        ));
        assert!(matches!(
            parse(b"D\0\0\0\x0a\0\x01\x7f\xff\xff\xff"),
            Err(WireError::Short { .. })
        ));
        assert!(matches!(
            parse(b"T\0\0\0\x06\x7f\xff"),
            Err(WireError::Short { .. })
        ));
        assert!(matches!(
            parse(b"v\0\0\0\x0c\0\0\0\0\x7f\xff\xff\xff"),
            Err(WireError::Short { .. })
        ));
        assert!(matches!(
            parse(b"R\0\0\0\x08\0\0\0\x05"),
            Err(WireError::Short { .. })
        ));
        assert!(matches!(
            parse(b"R\0\0\0\x09\0\0\0\x0aX"),
            Err(WireError::UnterminatedString)
        ));
        assert!(matches!(
            parse(b"S\0\0\0\x07a\0b"),
            Err(WireError::UnterminatedString)
        ));
        assert_eq!(
            parse(b"x\0\0\0\x04"),
            Err(WireError::UnknownBackendTag(b'x'))
        );
    }

    #[test]
    fn data_row_columns_share_the_frame() {
        let f = frame(b"D\0\0\0\x0d\0\x01\0\0\0\x03abc");
        let base = f.body.as_ptr() as usize;
        let BackendMessage::DataRow(row) = BackendMessage::parse(f).unwrap() else {
            panic!()
        };
        assert_eq!(row[0].as_ref().unwrap().as_ptr() as usize, base + 6);
    }

    #[test]
    fn unencodable_values_fail_cleanly() {
        let mut out = BytesMut::from(&b"x"[..]);
        let bad = BackendMessage::CommandComplete("a\0b".into());
        assert_eq!(
            bad.write(&mut out),
            Err(WireError::EmbeddedNul {
                field: "command tag"
            })
        );
        let empty = BackendMessage::Authentication(Authentication::Sasl {
            mechanisms: vec![String::new()],
        });
        assert!(empty.write(&mut out).is_err());
        let wide = BackendMessage::DataRow(vec![None; 40_000]);
        assert!(matches!(
            wide.write(&mut out),
            Err(WireError::TooLong { .. })
        ));
        assert_eq!(&out[..], b"x");
    }
}
