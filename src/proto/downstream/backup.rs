//! A BASE_BACKUP relayed from the upstream: the decisions around it, while the caller moves
//! the bytes.
//!
//! A BASE_BACKUP whose options pass [`check_base_backup`](crate::wire::command::check_base_backup)
//! asks for one of `max_base_backups` places ([`Action::ClaimBackup`]); beyond them it fails
//! with 53300 "number of requested base backups exceeds max_base_backups (currently N)", the
//! sentence PostgreSQL uses for `max_wal_senders`, as an ERROR because the connection itself
//! is fine. With a place, [`Action::StartBackup`] hands the client's Query text, unchanged, to
//! the caller, which sends it on a new upstream connection and forwards the answer up to and
//! including its ReadyForQuery; the walsender reads nothing from its client meanwhile, nor
//! does the session. [`BackupEnd`] says how that went, and the session adds what the client
//! still needs: nothing after a complete answer, ReadyForQuery after an upstream
//! ErrorResponse, an ERROR and ReadyForQuery when the upstream could not be reached or was
//! lost between messages, FATAL 57P01 when the relay shuts down between messages. A stream
//! cut inside a message cannot be answered on: the client connection closes.

use super::reply::{self, failed, ready, starting_up};
use super::{Action, Outbox, Pending, Phase, RelayView, SessionConfig};
use crate::types::{SqlState, SystemId, UpstreamInfo};
use crate::wire::ErrorFields;
use crate::wire::command::BackupRequest;

/// How a relayed BASE_BACKUP ended, as the caller saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackupEnd {
    /// The upstream's answer went to the client whole, its ReadyForQuery included.
    Done,
    /// No upstream connection could be opened; the upstream's error, for the DETAIL.
    ConnectFailed(String),
    /// The upstream was not sent the command: this error says why (see
    /// [`check_backup_upstream`]).
    Refused(ErrorFields),
    /// The upstream connection ended between two messages of the answer, after an
    /// ErrorResponse or not; the error, for the DETAIL.
    UpstreamLost {
        /// The last message forwarded was an ErrorResponse.
        after_error: bool,
        /// Why the connection ended.
        detail: String,
    },
    /// The relay shuts down, between two messages of the answer: the client gets FATAL 57P01
    /// as in command mode.
    Shutdown,
    /// The client stream cannot go on: the upstream was lost inside a message, sent what
    /// has no place in the answer, the client went away, or the relay shut down inside a
    /// message.
    Broken,
}

/// A checked BASE_BACKUP: ask for a place; refused as not supported when there are none
/// (`max_base_backups` 0), and as "starting up" before the upstream is known.
pub(super) fn begin(
    io: &mut Outbox,
    config: &SessionConfig,
    query: &str,
    request: BackupRequest,
    view: &RelayView,
) -> Phase {
    if config.max_base_backups == 0 {
        let refusal = ErrorFields::error(
            SqlState::FEATURE_NOT_SUPPORTED,
            "BASE_BACKUP is not supported by walrelay",
        )
        .with_hint("Take the base backup from the primary server.");
        return failed(io, &refusal);
    }
    if view.upstream.is_none() {
        return failed(io, &starting_up());
    }
    io.act(Action::ClaimBackup);
    Phase::Waiting(Pending::Backup(Box::new((query.to_owned(), request))))
}

/// The answer to [`Action::ClaimBackup`].
pub(super) fn claimed(
    io: &mut Outbox,
    config: &SessionConfig,
    pending: (String, BackupRequest),
    granted: bool,
) -> Phase {
    if !granted {
        let text = format!(
            "number of requested base backups exceeds max_base_backups (currently {})",
            config.max_base_backups
        );
        return failed(
            io,
            &ErrorFields::error(SqlState::TOO_MANY_CONNECTIONS, text),
        );
    }
    let (query, request) = pending;
    io.act(Action::StartBackup { query, request });
    Phase::BaseBackup
}

/// The end of the relayed answer.
pub(super) fn ended(io: &mut Outbox, end: BackupEnd) -> Phase {
    let (code, message, detail) = match end {
        BackupEnd::Done => return Phase::Command,
        BackupEnd::Broken => return io.close(),
        BackupEnd::Refused(e) => return failed(io, &e),
        BackupEnd::Shutdown => {
            return io.fatal(&ErrorFields::fatal(
                SqlState::ADMIN_SHUTDOWN,
                "terminating connection due to administrator command",
            ));
        }
        BackupEnd::UpstreamLost {
            after_error: true, ..
        } => return ready(io),
        BackupEnd::ConnectFailed(detail) => (
            SqlState::SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION,
            "could not connect to the upstream server for BASE_BACKUP",
            detail,
        ),
        BackupEnd::UpstreamLost { detail, .. } => (
            SqlState::CONNECTION_FAILURE,
            "lost connection to the upstream server during BASE_BACKUP",
            detail,
        ),
    };
    reply::error(
        &mut io.out,
        &ErrorFields::error(code, message).with_detail(detail),
    );
    ready(io)
}

/// Whether the server a backup connection reached is the relay's upstream as its clients
/// know it: the same system (else 55000 in the words of `walreceiver.c`, which refuses a
/// primary of another system), and the same major, by which the client chose its syntax and
/// will read the answer.
///
/// # Errors
/// The error the client gets instead of the backup.
pub fn check_backup_upstream(
    known: &UpstreamInfo,
    system_id: SystemId,
    version_num: u32,
) -> Result<(), ErrorFields> {
    let refusal = |message: &str, detail: String| {
        Err(
            ErrorFields::error(SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE, message)
                .with_detail(detail),
        )
    };
    if system_id != known.system_id {
        return refusal(
            "database system identifier differs between the primary and standby",
            format!(
                "The primary's identifier is {system_id}, the standby's identifier is {}.",
                known.system_id
            ),
        );
    }
    if version_num / 10_000 != known.version_num / 10_000 {
        return refusal(
            "the upstream server's major version differs from the one this server reports",
            format!(
                "The upstream server runs {}, this server reports {}.",
                version_num / 10_000,
                known.version_num / 10_000
            ),
        );
    }
    Ok(())
}
