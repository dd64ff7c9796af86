//! The errors and notices of the replication command parser, and slot name validation,
//! worded as PostgreSQL 15 words them (`repl_scanner.l`, `repl_gram.y`,
//! `walsender.c:parseCreateReplSlotOptions`, `define.c:defGetBoolean`, `scansup.c`,
//! `slot.c:ReplicationSlotValidateName`).

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
    pub fn sqlstate(&self) -> &'static str {
        match self {
            ParseError::OutOfRange(_) => "22003",
            ParseError::UnrecognizedOption(_) => "XX000",
            ParseError::UnrecognizedValue { .. } => "22023",
            _ => "42601",
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
    pub fn sqlstate(&self) -> &'static str {
        "42622"
    }
}

/// Why a name cannot name a replication slot.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SlotNameError {
    /// The name is empty.
    #[error("replication slot name \"\" is too short")]
    TooShort,
    /// The name has 64 bytes or more.
    #[error("replication slot name \"{0}\" is too long")]
    TooLong(String),
    /// The name has a character outside `[a-z0-9_]`.
    #[error("replication slot name \"{0}\" contains invalid character")]
    InvalidCharacter(String),
}

impl SlotNameError {
    /// The SQLSTATE PostgreSQL answers with.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            SlotNameError::TooLong(_) => "42622",
            SlotNameError::TooShort | SlotNameError::InvalidCharacter(_) => "42602",
        }
    }

    /// The HINT PostgreSQL adds, if any.
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            SlotNameError::InvalidCharacter(_) => Some(
                "Replication slot names may only contain lower case letters, numbers, and the underscore character.",
            ),
            SlotNameError::TooShort | SlotNameError::TooLong(_) => None,
        }
    }
}

/// Checks a slot name as `slot.c:ReplicationSlotValidateName` does, in its order: empty,
/// then 64 bytes or more, then any character outside `[a-z0-9_]`.
///
/// The parser does not call this: PostgreSQL checks names when a command runs (after its
/// options), and `DROP_REPLICATION_SLOT "Bad"` or `READ_REPLICATION_SLOT "Bad"` are not
/// refused for their names.
///
/// # Errors
///
/// [`SlotNameError`], whose text, [`SlotNameError::sqlstate`] and [`SlotNameError::hint`]
/// are PostgreSQL's.
pub fn validate_slot_name(name: &str) -> Result<(), SlotNameError> {
    if name.is_empty() {
        return Err(SlotNameError::TooShort);
    }
    if name.len() > super::lexer::MAX_IDENTIFIER_LEN {
        return Err(SlotNameError::TooLong(name.to_owned()));
    }
    let valid = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_';
    if !name.bytes().all(valid) {
        return Err(SlotNameError::InvalidCharacter(name.to_owned()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_names_as_postgres_checks_them() {
        // [obs] PG 15.18: `CREATE_REPLICATION_SLOT "../../etc" PHYSICAL` and `"Bad"` give
        // 42602 "... contains invalid character" with this HINT; `""` gives 42602 "... is too
        // short".
        assert_eq!(validate_slot_name("pg_walreceiver_123"), Ok(()));
        assert_eq!(validate_slot_name(&"a".repeat(63)), Ok(()));
        for bad in ["../../etc", "Bad", "a-b", "é", "a b"] {
            let err = validate_slot_name(bad).unwrap_err();
            assert_eq!(err.sqlstate(), "42602");
            assert_eq!(
                err.to_string(),
                format!("replication slot name \"{bad}\" contains invalid character")
            );
            assert_eq!(
                err.hint(),
                Some(
                    "Replication slot names may only contain lower case letters, numbers, and the underscore character."
                )
            );
        }
        let short = validate_slot_name("").unwrap_err();
        assert_eq!(
            (short.sqlstate(), short.to_string().as_str(), short.hint()),
            ("42602", "replication slot name \"\" is too short", None)
        );
        let long = validate_slot_name(&"A".repeat(64)).unwrap_err();
        assert_eq!(long, SlotNameError::TooLong("A".repeat(64)));
        assert_eq!(long.sqlstate(), "42622");
    }

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
