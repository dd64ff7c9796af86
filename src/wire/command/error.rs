//! The errors and notices of the replication command parser, worded as PostgreSQL 15 words
//! them (`repl_scanner.l`, `repl_gram.y`, `walsender.c:parseCreateReplSlotOptions`,
//! `basebackup.c:parse_basebackup_options`, `basebackup_target.c`, `basebackup_server.c`,
//! `define.c:defGetBoolean`, `defGetString`, `defGetInt64`, `scansup.c`).

use crate::types::SqlState;
use crate::wire::ErrorFields;

/// BASE_BACKUP's bounds for `MAX_RATE`, in kB/s (`basebackup.h`: `MAX_RATE_LOWER`,
/// `MAX_RATE_UPPER`).
pub(super) const MAX_RATE: std::ops::RangeInclusive<i32> = 32..=1_048_576;

/// The predefined role a server-side backup needs (`basebackup_server.c`).
const WRITE_SERVER_FILES: &str = "pg_write_server_files";

/// Why a replication command was refused. The text is PostgreSQL's message and
/// [`ParseError::sqlstate`] its SQLSTATE, so a server can answer with the same ErrorResponse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The grammar does not accept the command (bison's `replication_yyerror`).
    #[error("syntax error")]
    Syntax,
    /// A `'string'` or `"identifier"` has no closing quote.
    #[error("unterminated quoted string")]
    UnterminatedQuote,
    /// A location has a half of more than 8 hex digits. PostgreSQL's `sscanf("%X/%X")` keeps
    /// the low 32 bits of such a half instead; the relay refuses it.
    #[error("invalid streaming start location")]
    InvalidStartLocation,
    /// `TIMELINE 0` or `TIMELINE_HISTORY 0`.
    #[error("invalid timeline 0")]
    InvalidTimeline,
    /// A decimal constant above `u32::MAX`. PostgreSQL's `strtoul` silently wraps it
    /// (`TIMELINE 4294967296` is timeline 0 there); the relay refuses it.
    #[error("value \"{0}\" is out of range for a 32-bit unsigned integer")]
    OutOfRange(String),
    /// An option of CREATE_REPLICATION_SLOT given twice, or not valid for the slot's kind.
    #[error("conflicting or redundant options")]
    ConflictingOptions,
    /// An option CREATE_REPLICATION_SLOT does not know (an `elog`, hence XX000).
    #[error("unrecognized option: {0}")]
    UnrecognizedOption(String),
    /// A Boolean option with a value other than true/false/on/off/1/0.
    #[error("{0} requires a Boolean value")]
    RequiresBoolean(String),
    /// An option that needs a value was given none.
    #[error("{0} requires a parameter")]
    RequiresParameter(String),
    /// `SNAPSHOT` with a value other than `export`, `nothing` or `use`.
    #[error("unrecognized value for CREATE_REPLICATION_SLOT option \"{option}\": \"{value}\"")]
    UnrecognizedValue {
        /// The option name.
        option: String,
        /// The value given.
        value: String,
    },
    /// A BASE_BACKUP option given twice.
    #[error("duplicate option \"{0}\"")]
    DuplicateOption(String),
    /// An option BASE_BACKUP does not know.
    #[error("unrecognized base backup option: \"{0}\"")]
    UnrecognizedBackupOption(String),
    /// A numeric option (`MAX_RATE`) with no value or a string value (`defGetInt64`).
    #[error("{0} requires a numeric value")]
    RequiresNumeric(String),
    /// `MAX_RATE` outside 32..1048576, printed as PostgreSQL's `(int)` of the value (so
    /// `MAX_RATE 2147483648` is `-2147483648` there and here).
    #[error(
        "{0} is outside the valid range for parameter \"MAX_RATE\" ({lo} .. {hi})",
        lo = MAX_RATE.start(),
        hi = MAX_RATE.end()
    )]
    MaxRateOutOfRange(i32),
    /// `CHECKPOINT` other than `fast` or `spread`.
    #[error("unrecognized checkpoint type: \"{0}\"")]
    UnrecognizedCheckpoint(String),
    /// `MANIFEST` neither a Boolean nor `force-encode`.
    #[error("unrecognized manifest option: \"{0}\"")]
    UnrecognizedManifest(String),
    /// `MANIFEST_CHECKSUMS` naming no checksum PostgreSQL knows.
    #[error("unrecognized checksum algorithm: \"{0}\"")]
    UnrecognizedChecksum(String),
    /// `MANIFEST_CHECKSUMS` without a manifest (none is the default).
    #[error("manifest checksums require a backup manifest")]
    ManifestChecksumsWithoutManifest,
    /// `TARGET_DETAIL` without `TARGET`.
    #[error("target detail cannot be used without target")]
    TargetDetailWithoutTarget,
    /// A target that takes no detail (`client`) given one.
    #[error("target \"{0}\" does not accept a target detail")]
    TargetRejectsDetail(String),
    /// A target that needs a detail (`server`) given none.
    #[error("target \"{0}\" requires a target detail")]
    TargetRequiresDetail(String),
    /// A target the server does not offer (0A000). The relay offers only `client`, and also
    /// answers this for `blackhole`.
    #[error("unrecognized target: \"{0}\"")]
    UnrecognizedTarget(String),
    /// `COMPRESSION` other than `none`, `gzip`, `lz4` or `zstd` (matched exactly).
    #[error("unrecognized compression algorithm: \"{0}\"")]
    UnrecognizedCompression(String),
    /// `COMPRESSION_DETAIL` without `COMPRESSION`.
    #[error("compression detail cannot be specified unless compression is enabled")]
    CompressionDetailWithoutCompression,
    /// `TARGET 'server'`, refused as PostgreSQL `major` refuses it to a role without the
    /// privileges of `pg_write_server_files` (42501): the relay writes nothing on the
    /// primary's disk, so it is a server where no role has them.
    #[error("{}", server_target_denied(*major))]
    ServerTargetDenied {
        /// The major whose wording applies (15, or 16 and later).
        major: u32,
    },
}

/// `bbsink_server_new`'s refusal: PostgreSQL 15's wording, or 16's and later.
fn server_target_denied(major: u32) -> String {
    if major <= 15 {
        format!(
            "must be superuser or a role with privileges of the {WRITE_SERVER_FILES} role to create backup stored on server"
        )
    } else {
        "permission denied to create backup stored on server".to_owned()
    }
}

impl ParseError {
    /// The SQLSTATE PostgreSQL answers with.
    pub fn sqlstate(&self) -> SqlState {
        match self {
            ParseError::OutOfRange(_) | ParseError::MaxRateOutOfRange(_) => {
                SqlState::NUMERIC_VALUE_OUT_OF_RANGE
            }
            ParseError::UnrecognizedOption(_) => SqlState::INTERNAL_ERROR,
            ParseError::UnrecognizedValue { .. } => SqlState::INVALID_PARAMETER_VALUE,
            ParseError::UnrecognizedTarget(_) => SqlState::FEATURE_NOT_SUPPORTED,
            ParseError::ServerTargetDenied { .. } => SqlState::INSUFFICIENT_PRIVILEGE,
            _ => SqlState::SYNTAX_ERROR,
        }
    }

    /// The DETAIL line PostgreSQL adds, if any.
    pub fn detail(&self) -> Option<String> {
        match self {
            ParseError::ServerTargetDenied { major } if *major > 15 => Some(format!(
                "Only roles with privileges of the \"{WRITE_SERVER_FILES}\" role may create a backup stored on the server."
            )),
            _ => None,
        }
    }

    /// The HINT line, if any: only for refusals that are the relay's own choice.
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            ParseError::UnrecognizedTarget(target) if target == "blackhole" => {
                Some("walrelay sends base backups to the client only.")
            }
            _ => None,
        }
    }

    /// The ErrorResponse fields of this error, at severity ERROR.
    pub fn to_error(&self) -> ErrorFields {
        let mut fields = ErrorFields::error(self.sqlstate(), self.to_string());
        if let Some(detail) = self.detail() {
            fields = fields.with_detail(detail);
        }
        if let Some(hint) = self.hint() {
            fields = fields.with_hint(hint);
        }
        fields
    }
}

/// A NOTICE PostgreSQL sends while parsing, before the command's own answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Notice {
    /// An identifier longer than 63 bytes was cut (`scansup.c:truncate_identifier`).
    #[error("identifier \"{identifier}\" will be truncated to \"{truncated}\"")]
    IdentifierTruncated {
        /// The identifier as written (folded when it was not quoted).
        identifier: String,
        /// What it was cut to.
        truncated: String,
    },
}

impl Notice {
    /// The SQLSTATE of the NOTICE (`name_too_long`).
    pub fn sqlstate(&self) -> SqlState {
        SqlState::NAME_TOO_LONG
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates() {
        assert_eq!(ParseError::Syntax.sqlstate(), "42601");
        assert_eq!(ParseError::ConflictingOptions.sqlstate(), "42601");
        assert_eq!(
            ParseError::UnrecognizedOption("x".into()).sqlstate(),
            "XX000"
        );
        assert_eq!(
            ParseError::OutOfRange("4294967296".into()).sqlstate(),
            "22003"
        );
        let notice = Notice::IdentifierTruncated {
            identifier: "x".into(),
            truncated: "y".into(),
        };
        assert_eq!(notice.sqlstate(), "42622");
    }
}
