//! SQLSTATE codes (`errcodes.txt`), as constants named like PostgreSQL's `ERRCODE_*`, so no
//! call site writes a five-character literal.

use std::borrow::Cow;
use std::fmt;

/// A five-character SQLSTATE. The constants are the codes the relay sends; a code received
/// from a peer is kept as it came, whatever its form.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SqlState(Cow<'static, str>);

macro_rules! codes {
    ($($(#[$doc:meta])* $name:ident = $code:literal;)*) => {
        impl SqlState {
            $($(#[$doc])* pub const $name: SqlState = SqlState(Cow::Borrowed($code));)*
        }
    };
}

codes! {
    /// 00000, `successful_completion`.
    SUCCESSFUL_COMPLETION = "00000";
    /// 08001, `sqlclient_unable_to_establish_sqlconnection`.
    SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION = "08001";
    /// 08006, `connection_failure`.
    CONNECTION_FAILURE = "08006";
    /// 08P01, `protocol_violation`.
    PROTOCOL_VIOLATION = "08P01";
    /// 0A000, `feature_not_supported`.
    FEATURE_NOT_SUPPORTED = "0A000";
    /// 22003, `numeric_value_out_of_range`.
    NUMERIC_VALUE_OUT_OF_RANGE = "22003";
    /// 22021, `character_not_in_repertoire`.
    CHARACTER_NOT_IN_REPERTOIRE = "22021";
    /// 22023, `invalid_parameter_value`.
    INVALID_PARAMETER_VALUE = "22023";
    /// 28000, `invalid_authorization_specification`.
    INVALID_AUTHORIZATION_SPECIFICATION = "28000";
    /// 28P01, `invalid_password`.
    INVALID_PASSWORD = "28P01";
    /// 42501, `insufficient_privilege`.
    INSUFFICIENT_PRIVILEGE = "42501";
    /// 42601, `syntax_error`.
    SYNTAX_ERROR = "42601";
    /// 42602, `invalid_name`.
    INVALID_NAME = "42602";
    /// 42622, `name_too_long`.
    NAME_TOO_LONG = "42622";
    /// 42704, `undefined_object`.
    UNDEFINED_OBJECT = "42704";
    /// 42710, `duplicate_object`.
    DUPLICATE_OBJECT = "42710";
    /// 53300, `too_many_connections`.
    TOO_MANY_CONNECTIONS = "53300";
    /// 53400, `configuration_limit_exceeded`.
    CONFIGURATION_LIMIT_EXCEEDED = "53400";
    /// 54000, `program_limit_exceeded`.
    PROGRAM_LIMIT_EXCEEDED = "54000";
    /// 55000, `object_not_in_prerequisite_state`.
    OBJECT_NOT_IN_PREREQUISITE_STATE = "55000";
    /// 55006, `object_in_use`.
    OBJECT_IN_USE = "55006";
    /// 57P01, `admin_shutdown`.
    ADMIN_SHUTDOWN = "57P01";
    /// 57P03, `cannot_connect_now`.
    CANNOT_CONNECT_NOW = "57P03";
    /// 58030, `io_error`.
    IO_ERROR = "58030";
    /// 58P01, `undefined_file`.
    UNDEFINED_FILE = "58P01";
    /// XX000, `internal_error`: also what a peer's error without a code is taken as.
    INTERNAL_ERROR = "XX000";
    /// XX001, `data_corrupted`.
    DATA_CORRUPTED = "XX001";
    /// F0000, `config_file_error`.
    CONFIG_FILE_ERROR = "F0000";
}

impl SqlState {
    /// A code as a peer sent it.
    pub fn from_code(code: impl Into<String>) -> SqlState {
        SqlState(Cow::Owned(code.into()))
    }

    /// The code's text.
    pub fn code(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SqlState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for SqlState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SqlState({})", self.0)
    }
}

impl PartialEq<str> for SqlState {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for SqlState {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constants_and_received_codes_compare_by_text() {
        assert_eq!(SqlState::PROTOCOL_VIOLATION, "08P01");
        assert_eq!(SqlState::from_code("08P01"), SqlState::PROTOCOL_VIOLATION);
        assert_eq!(SqlState::UNDEFINED_FILE.to_string(), "58P01");
        assert_eq!(SqlState::from_code("zz").code(), "zz");
    }
}
