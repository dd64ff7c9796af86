//! Errors of the slot registry, with PostgreSQL 15's SQLSTATEs, messages and hints (`slot.c`).

use std::io;
use std::path::{Path, PathBuf};

use crate::types::{BackendPid, SlotName, SqlState};

/// What went wrong in the slot registry. `Display` is PostgreSQL's primary message.
#[derive(Debug, thiserror::Error)]
pub enum SlotError {
    /// 42710: a slot of that name exists.
    #[error("replication slot \"{0}\" already exists")]
    AlreadyExists(SlotName),
    /// 42704: no slot of that name.
    #[error("replication slot \"{0}\" does not exist")]
    DoesNotExist(String),
    /// 55006: another connection has the slot acquired (for a temporary slot: created it).
    #[error("replication slot \"{name}\" is active for PID {pid}")]
    Active {
        /// The slot.
        name: SlotName,
        /// The connection holding it.
        pid: BackendPid,
    },
    /// 53400: the registry holds `max_slots` slots already.
    #[error("all replication slots are in use")]
    AllInUse,
    /// 53400: the state file records more slots than the configured limit.
    #[error(
        "too many replication slots active before shutdown: \"{}\" records {found}, the limit is {max}",
        path.display()
    )]
    TooManyOnDisk {
        /// The state file.
        path: PathBuf,
        /// How many persistent slots it records.
        found: usize,
        /// The configured limit.
        max: usize,
    },
    /// 58030: a filesystem operation failed.
    #[error("could not {op} \"{}\": {source}", path.display())]
    Io {
        /// The operation, such as `write file`.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// XX001: the state file is damaged or not a slot state file.
    #[error("invalid replication slot state file \"{}\": {reason}", path.display())]
    BadStateFile {
        /// The state file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

impl SlotError {
    /// The SQLSTATE PostgreSQL reports for this error.
    pub fn sqlstate(&self) -> SqlState {
        match self {
            SlotError::AlreadyExists(_) => SqlState::DUPLICATE_OBJECT,
            SlotError::DoesNotExist(_) => SqlState::UNDEFINED_OBJECT,
            SlotError::Active { .. } => SqlState::OBJECT_IN_USE,
            SlotError::AllInUse | SlotError::TooManyOnDisk { .. } => {
                SqlState::CONFIGURATION_LIMIT_EXCEEDED
            }
            SlotError::Io { .. } => SqlState::IO_ERROR,
            SlotError::BadStateFile { .. } => SqlState::DATA_CORRUPTED,
        }
    }

    /// PostgreSQL's HINT for this error, if it gives one.
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            SlotError::AllInUse => Some("Free one or increase max_replication_slots."),
            SlotError::TooManyOnDisk { .. } => {
                Some("Increase max_replication_slots and try again.")
            }
            _ => None,
        }
    }
}

/// Wraps an I/O error with the operation and path, for `map_err`.
pub(super) fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> SlotError {
    let path = path.to_path_buf();
    move |source| SlotError::Io { op, path, source }
}
