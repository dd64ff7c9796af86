//! The errors and notices of the replication command parser, worded as PostgreSQL 15 words
//! them (`repl_scanner.l`, `repl_gram.y`, `walsender.c:parseCreateReplSlotOptions`,
//! `define.c:defGetBoolean`, `scansup.c`).

use crate::types::SqlState;

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
}

impl ParseError {
    /// The SQLSTATE PostgreSQL answers with.
    pub fn sqlstate(&self) -> SqlState {
        match self {
            ParseError::OutOfRange(_) => SqlState::NUMERIC_VALUE_OUT_OF_RANGE,
            ParseError::UnrecognizedOption(_) => SqlState::INTERNAL_ERROR,
            ParseError::UnrecognizedValue { .. } => SqlState::INVALID_PARAMETER_VALUE,
            _ => SqlState::SYNTAX_ERROR,
        }
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
