//! Errors of the segment store: every one names the file and the operation that failed.
//!
//! Disk full (`ENOSPC`, `EDQUOT`) stays an ordinary I/O error with its path, so the message is
//! PostgreSQL-like (`could not write "…": No space left on device`); [`StoreError::is_disk_full`]
//! lets the caller wait for space instead of giving up.

use std::io;
use std::path::{Path, PathBuf};

use crate::types::{Lsn, TimelineId, WalSegmentSize};
use crate::wal::WalError;

use super::StoreIdentity;

/// What went wrong in the segment store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A filesystem operation failed.
    #[error("could not {op} \"{}\": {source}", path.display())]
    Io {
        /// The operation, such as `write` or `fdatasync`.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// `walrelay.state` exists but is not a state file this version can read.
    #[error("invalid state file \"{}\": {reason}", path.display())]
    BadStateFile {
        /// The state file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The store already belongs to another system or segment size.
    #[error(
        "storage belongs to system {} with {} segments, not system {} with {} segments",
        stored.system_id, stored.segment_size, requested.system_id, requested.segment_size
    )]
    IdentityMismatch {
        /// What the state file records.
        stored: StoreIdentity,
        /// What was asked for.
        requested: StoreIdentity,
    },
    /// The operation needs a recorded identity (`initialize` first).
    #[error("storage has no system identity yet")]
    NotInitialized,
    /// The operation needs stored WAL (`start_at` first).
    #[error("storage holds no WAL yet")]
    NotStarted,
    /// `start_at` on a store that already holds WAL.
    #[error("storage already holds WAL up to {end} on timeline {timeline}")]
    AlreadyStarted {
        /// The timeline of the stored WAL.
        timeline: TimelineId,
        /// Its write end.
        end: Lsn,
    },
    /// A position that must be the start of a segment is not.
    #[error("{lsn} is not the start of a {size} WAL segment")]
    NotSegmentStart {
        /// The position.
        lsn: Lsn,
        /// The segment size.
        size: WalSegmentSize,
    },
    /// Appended bytes do not start where the stored WAL ends.
    #[error("WAL at {got} does not continue the stored WAL ending at {expected}")]
    Discontinuous {
        /// The write end.
        expected: Lsn,
        /// Where the offered bytes start.
        got: Lsn,
    },
    /// A position past the end of the LSN space.
    #[error("WAL position overflows past {0}")]
    LsnOverflow(Lsn),
    /// Offered WAL failed validation; nothing of it was stored.
    #[error("invalid WAL offered at {lsn}: {source}")]
    InvalidWal {
        /// Where the offered bytes start.
        lsn: Lsn,
        /// What the validator found.
        #[source]
        source: WalError,
    },
    /// A complete segment file failed validation during recovery.
    #[error("corrupt WAL segment \"{}\": {source}", path.display())]
    CorruptSegment {
        /// The segment file.
        path: PathBuf,
        /// What the validator found.
        #[source]
        source: WalError,
    },
    /// The WAL directory holds files that contradict each other.
    #[error("unexpected WAL file \"{}\": {reason}", path.display())]
    Layout {
        /// The offending file.
        path: PathBuf,
        /// Why it cannot be used.
        reason: &'static str,
    },
    /// A timeline that cannot be used for this operation.
    #[error("timeline {timeline}: {reason}")]
    BadTimeline {
        /// The timeline.
        timeline: TimelineId,
        /// Why it is refused.
        reason: &'static str,
    },
    /// The segment holding a requested position is not stored (PostgreSQL's 58P01).
    #[error("requested WAL segment {file} has already been removed")]
    SegmentRemoved {
        /// The segment file name.
        file: String,
    },
    /// Another process holds the data directory's lock.
    #[error(
        "lock file \"{}\" is held: is another walrelay{} running on this data directory?",
        path.display(),
        pid.map(|p| format!(" (PID {p})")).unwrap_or_default()
    )]
    Locked {
        /// The lock file.
        path: PathBuf,
        /// The holder's PID, as it wrote it.
        pid: Option<u32>,
    },
}

impl StoreError {
    /// Whether this is a full disk or an exceeded quota, which may clear without a restart.
    pub fn is_disk_full(&self) -> bool {
        match self {
            StoreError::Io { source, .. } => matches!(
                source.kind(),
                io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
            ),
            _ => false,
        }
    }
}

/// A closure that wraps an I/O error with its operation and path, for `map_err`. The path is
/// copied only when there is an error.
pub(crate) fn io_err<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}
