//! Why a login failed, in the form the session sends it: PostgreSQL's SQLSTATE, message and
//! detail, always with severity FATAL.
//!
//! Mirrors the reports of `auth.c` (`auth_failed`, `recv_password_packet`) and
//! `auth-scram.c`; the texts of each failure are at its constructor's call site.

use crate::types::SqlState;

/// Why authentication failed, as the client is told: send it as an `ErrorResponse` with
/// severity `FATAL` and close the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct AuthFailure {
    /// The SQLSTATE.
    pub sqlstate: SqlState,
    /// The primary message (`errmsg`).
    pub message: String,
    /// The detail sent to the client (`errdetail`), if any.
    pub detail: Option<String>,
    /// What PostgreSQL would log and never send (`errdetail_log`): why a password check
    /// failed ("Role \"x\" does not exist.", ...). Holds user names only.
    pub log_detail: Option<String>,
}

impl AuthFailure {
    pub(super) fn new(sqlstate: SqlState, message: &str, detail: Option<String>) -> AuthFailure {
        AuthFailure {
            sqlstate,
            message: message.to_owned(),
            detail,
            log_detail: None,
        }
    }

    /// `auth_failed` for the `password`, `md5` and `scram-sha-256` methods: 28P01
    /// `password authentication failed for user "…"`, the same for a wrong password, an
    /// unknown user and a user whose secret the method cannot use.
    pub fn password_failed(user: &str, log_detail: Option<String>) -> AuthFailure {
        AuthFailure {
            sqlstate: SqlState::INVALID_PASSWORD,
            message: format!("password authentication failed for user \"{user}\""),
            detail: None,
            log_detail,
        }
    }

    /// `recv_password_packet`: 28P01 `empty password returned by client`.
    pub fn empty_password() -> AuthFailure {
        AuthFailure::new(
            SqlState::INVALID_PASSWORD,
            "empty password returned by client",
            None,
        )
    }

    /// 08P01 `malformed SCRAM message` with a detail.
    pub(super) fn malformed(detail: impl Into<String>) -> AuthFailure {
        AuthFailure::new(
            SqlState::PROTOCOL_VIOLATION,
            "malformed SCRAM message",
            Some(detail.into()),
        )
    }

    /// `scram_exchange` called in a state that does not take a message.
    pub(super) fn invalid_state() -> AuthFailure {
        AuthFailure::new(
            SqlState::INTERNAL_ERROR,
            "invalid SCRAM exchange state",
            None,
        )
    }
}
