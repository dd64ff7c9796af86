//! The fields of ErrorResponse and NoticeResponse (`protocol-error-fields`), decoded like
//! libpq's `pqGetErrorNotice3` and printed like its default verbosity.
//!
//! A hostile or buggy server may leave out `C` or `M`: decoding still succeeds, with SQLSTATE
//! `XX000` and an empty message, and the severity falls back to the message kind. Encoding
//! writes `S`, `V`, `C`, `M` and the optional `D` and `H`, which is what libpq needs.

use std::fmt;

use bytes::{BufMut, BytesMut};

use super::error::WireError;
use super::reader::Reader;
use super::writer::put_cstr;
use crate::types::SqlState;

/// The severity of an ErrorResponse or NoticeResponse (`elog.h`'s levels as the protocol
/// spells them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Severity {
    /// `ERROR`: the command failed, the session goes on.
    Error,
    /// `FATAL`: the session ends.
    Fatal,
    /// `PANIC`: the server stops.
    Panic,
    /// `WARNING`.
    Warning,
    /// `NOTICE`.
    Notice,
    /// `INFO`.
    Info,
    /// `LOG`.
    Log,
    /// `DEBUG`.
    Debug,
    /// Any other word a peer sent.
    Other(String),
}

impl Severity {
    /// The word on the wire.
    pub fn as_str(&self) -> &str {
        match self {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
            Severity::Panic => "PANIC",
            Severity::Warning => "WARNING",
            Severity::Notice => "NOTICE",
            Severity::Info => "INFO",
            Severity::Log => "LOG",
            Severity::Debug => "DEBUG",
            Severity::Other(word) => word,
        }
    }

    /// The severity a peer sent.
    pub fn from_word(word: String) -> Severity {
        match word.as_str() {
            "ERROR" => Severity::Error,
            "FATAL" => Severity::Fatal,
            "PANIC" => Severity::Panic,
            "WARNING" => Severity::Warning,
            "NOTICE" => Severity::Notice,
            "INFO" => Severity::Info,
            "LOG" => Severity::Log,
            "DEBUG" => Severity::Debug,
            _ => Severity::Other(word),
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The fields of an ErrorResponse or NoticeResponse that the relay keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorFields {
    /// The severity (`V`, else `S`).
    pub severity: Severity,
    /// The SQLSTATE (`C`); `XX000` when the server sent none.
    pub code: SqlState,
    /// The primary message (`M`); empty when the server sent none.
    pub message: String,
    /// The detail (`D`).
    pub detail: Option<String>,
    /// The hint (`H`).
    pub hint: Option<String>,
}

impl ErrorFields {
    /// Fields with a severity, a SQLSTATE and a message.
    pub fn new(severity: Severity, code: SqlState, message: impl Into<String>) -> ErrorFields {
        ErrorFields {
            severity,
            code,
            message: message.into(),
            detail: None,
            hint: None,
        }
    }

    /// An `ERROR`: the command fails, the session goes on.
    pub fn error(code: SqlState, message: impl Into<String>) -> ErrorFields {
        ErrorFields::new(Severity::Error, code, message)
    }

    /// A `FATAL` error: the session ends.
    pub fn fatal(code: SqlState, message: impl Into<String>) -> ErrorFields {
        ErrorFields::new(Severity::Fatal, code, message)
    }

    /// A `NOTICE`.
    pub fn notice(code: SqlState, message: impl Into<String>) -> ErrorFields {
        ErrorFields::new(Severity::Notice, code, message)
    }

    /// The same fields with a DETAIL line.
    pub fn with_detail(mut self, detail: impl Into<String>) -> ErrorFields {
        self.detail = Some(detail.into());
        self
    }

    /// The same fields with a HINT line.
    pub fn with_hint(mut self, hint: impl Into<String>) -> ErrorFields {
        self.hint = Some(hint.into());
        self
    }

    pub(crate) fn parse(body: &[u8], default_severity: Severity) -> Result<ErrorFields, WireError> {
        let mut r = Reader::new(body);
        let (mut localized, mut severity) = (None, None);
        let mut fields = ErrorFields::new(default_severity, SqlState::INTERNAL_ERROR, "");
        loop {
            let code = r.u8()?;
            if code == 0 {
                break;
            }
            let value = String::from_utf8_lossy(r.cstr()?).into_owned();
            match code {
                b'S' => localized = Some(value),
                b'V' => severity = Some(value),
                b'C' => fields.code = SqlState::from_code(value),
                b'M' => fields.message = value,
                b'D' => fields.detail = Some(value),
                b'H' => fields.hint = Some(value),
                _ => {}
            }
        }
        r.finish()?;
        if let Some(s) = severity.or(localized) {
            fields.severity = Severity::from_word(s);
        }
        Ok(fields)
    }

    pub(crate) fn write_body(&self, out: &mut BytesMut) -> Result<(), WireError> {
        let optional = [(b'D', &self.detail), (b'H', &self.hint)];
        let present = optional
            .iter()
            .filter_map(|(c, v)| v.as_deref().map(|v| (*c, v)));
        let fields = [
            (b'S', self.severity.as_str()),
            (b'V', self.severity.as_str()),
            (b'C', self.code.code()),
            (b'M', &self.message),
        ];
        for (code, value) in fields.into_iter().chain(present) {
            out.put_u8(code);
            put_cstr(out, value.as_bytes(), "error field")?;
        }
        out.put_u8(0);
        Ok(())
    }
}

/// Like libpq's default verbosity: `ERROR:  message`, then `DETAIL:  ...` and `HINT:  ...`
/// lines.
impl fmt::Display for ErrorFields {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let message = if self.message.is_empty() {
            "(no message)"
        } else {
            &self.message
        };
        write!(f, "{}:  {}", self.severity, message)?;
        if let Some(detail) = &self.detail {
            write!(f, "\nDETAIL:  {detail}")?;
        }
        if let Some(hint) = &self.hint {
            write!(f, "\nHINT:  {hint}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &[u8]) -> Result<ErrorFields, WireError> {
        ErrorFields::parse(body, Severity::Error)
    }

    fn body(wire: &[u8]) -> &[u8] {
        &wire[5..]
    }

    #[test]
    fn golden_errors_from_pg15() {
        let sql = include_bytes!("../../tests/data/wire/error_response_sql.bin");
        let expected = ErrorFields::error(
            SqlState::FEATURE_NOT_SUPPORTED,
            "cannot execute SQL commands in WAL sender for physical replication",
        );
        assert_eq!(parse(body(sql)).unwrap(), expected);
        let mut ours = BytesMut::new();
        expected.write_body(&mut ours).unwrap();
        assert!(
            body(sql).starts_with(&ours[..ours.len() - 1]),
            "S V C M come first"
        );
        let missing = include_bytes!("../../tests/data/wire/error_response_timeline_history.bin");
        let expected = ErrorFields::error(
            SqlState::UNDEFINED_FILE,
            "could not open file \"pg_wal/00000001.history\": No such file or directory",
        );
        assert_eq!(parse(body(missing)).unwrap(), expected);
        let bad_type = include_bytes!("../../tests/data/wire/error_response_bad_type.bin");
        let fatal = parse(body(bad_type)).unwrap();
        assert_eq!(
            fatal.to_string(),
            "FATAL:  invalid frontend message type 153"
        );
        assert_eq!(fatal.code, WireError::UnknownFrontendTag(153).sqlstate());
        let notice = include_bytes!("../../tests/data/wire/notice_response_notice.bin");
        let parsed = ErrorFields::parse(body(notice), Severity::Notice).unwrap();
        assert_eq!(
            parsed,
            ErrorFields::notice(SqlState::SUCCESSFUL_COMPLETION, "hi")
        );
    }

    #[test]
    fn round_trip_with_detail_and_hint() {
        let full = ErrorFields::fatal(
            SqlState::UNDEFINED_FILE,
            "requested WAL segment has already been removed",
        )
        .with_detail("d")
        .with_hint("h");
        let mut out = BytesMut::new();
        full.write_body(&mut out).unwrap();
        assert_eq!(parse(&out).unwrap(), full);
    }

    #[test]
    fn tolerates_missing_code_and_message() {
        let fields = parse(b"SERROR\0\0").unwrap();
        assert_eq!((fields.code.code(), fields.message.as_str()), ("XX000", ""));
        assert_eq!(fields.to_string(), "ERROR:  (no message)");
        assert_eq!(parse(b"\0").unwrap().severity, Severity::Error);
        assert_eq!(
            ErrorFields::parse(b"\0", Severity::Notice)
                .unwrap()
                .severity,
            Severity::Notice
        );
        assert_eq!(
            parse(b"SFEHLER\0VERROR\0\0").unwrap().severity,
            Severity::Error
        );
        assert_eq!(
            parse(b"SFEHLER\0\0").unwrap().severity,
            Severity::Other("FEHLER".into())
        );
        assert_eq!(parse(b"Mbad \xff\0\0").unwrap().message, "bad \u{fffd}");
        assert!(parse(b"SERROR").is_err());
        assert!(parse(b"").is_err());
        assert_eq!(parse(b"\0x"), Err(WireError::Trailing { extra: 1 }));
    }

    #[test]
    fn display_like_libpq() {
        let e = ErrorFields::error(
            SqlState::UNDEFINED_OBJECT,
            "replication slot \"x\" does not exist",
        )
        .with_detail("More.")
        .with_hint("Create it.");
        assert_eq!(
            e.to_string(),
            "ERROR:  replication slot \"x\" does not exist\nDETAIL:  More.\nHINT:  Create it."
        );
    }
}
