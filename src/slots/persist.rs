//! Getting the persistent slots to disk without holding the registry: numbered snapshots, and
//! the state file that keeps the newest one.
//!
//! The state file is replaced whole (a new file, fsynced, renamed over the old one), which
//! needs free space. PostgreSQL drops a slot by renaming and removing its directory, which
//! needs none, and dropping the slot that pins the WAL is how a full disk is relieved. So
//! beside the state file the relay keeps `slots.reserve`, a file of [`RESERVE_BYTES`] it
//! gives up when the disk is full: the state is then written in the space it held, and the
//! reserve is made again once there is room.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use crate::types::SlotName;

use super::SlotError;
use super::state::{self, SlotData};

/// The persistent slots at one moment, numbered: a higher number is a later moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotSnapshot {
    pub(super) version: u64,
    pub(super) slots: Vec<(SlotName, SlotData)>,
}

impl SlotSnapshot {
    /// Its number.
    pub fn version(&self) -> u64 {
        self.version
    }
}

/// Where snapshots go. The relay's is [`SlotFile`]; a test can stand in a slow or failing disk.
pub trait SlotPersister: Send + Sync + 'static {
    /// Writes `snapshot` durably; blocks, so call it off the async runtime's threads.
    ///
    /// # Errors
    /// [`SlotError::Io`].
    fn write(&self, snapshot: &SlotSnapshot) -> Result<(), SlotError>;
}

/// The file whose space is given up so that the state file can be written on a full disk.
pub const RESERVE_FILE: &str = "slots.reserve";

/// The size of the reserve: room for the state file of thousands of slots.
pub const RESERVE_BYTES: usize = 256 * 1024;

/// `slots.state` in a data directory: written durably, never with an older snapshot than the
/// newest one it holds; on a full disk, in the space of `slots.reserve`.
#[derive(Debug)]
pub struct SlotFile {
    dir: PathBuf,
    /// The version of the snapshot on disk; the lock also keeps writes one at a time.
    written: Mutex<u64>,
}

impl SlotFile {
    /// The state file of the registry opened on `dir`.
    pub fn new(dir: &Path) -> SlotFile {
        SlotFile {
            dir: dir.to_path_buf(),
            written: Mutex::new(0),
        }
    }
}

impl SlotPersister for SlotFile {
    fn write(&self, snapshot: &SlotSnapshot) -> Result<(), SlotError> {
        let mut written = self.written.lock().unwrap_or_else(PoisonError::into_inner);
        if *written >= snapshot.version {
            // A later snapshot, which holds this change too, is on disk already.
            return Ok(());
        }
        let write = || state::write(&self.dir, snapshot.slots.iter().map(|(n, d)| (n, d)));
        match write() {
            Err(e) if is_disk_full(&e) && release_reserve(&self.dir) => write()?,
            other => other?,
        }
        *written = snapshot.version;
        // Best effort: while the disk is full the reserve waits for the next write.
        let _ = keep_reserve(&self.dir);
        Ok(())
    }
}

fn is_disk_full(e: &SlotError) -> bool {
    matches!(e, SlotError::Io { source, .. }
        if matches!(source.kind(), io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded))
}

/// Removes the reserve; whether there was one to remove.
fn release_reserve(dir: &Path) -> bool {
    fs::remove_file(dir.join(RESERVE_FILE)).is_ok()
}

/// Makes the reserve, written out (not sparse) and synced, unless it is there already.
fn keep_reserve(dir: &Path) -> io::Result<()> {
    let path = dir.join(RESERVE_FILE);
    if fs::metadata(&path).is_ok_and(|m| m.len() == RESERVE_BYTES as u64) {
        return Ok(());
    }
    let made = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)?;
        file.write_all(&[0u8; RESERVE_BYTES])?;
        file.sync_all()
    })();
    if made.is_err() {
        // A short reserve would be taken for a whole one; the next write tries again.
        let _ = fs::remove_file(&path);
    }
    made
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserve_is_made_after_a_write_and_kept() {
        let t = tempfile::TempDir::new().unwrap();
        let file = SlotFile::new(t.path());
        let snapshot = SlotSnapshot {
            version: 1,
            slots: Vec::new(),
        };
        file.write(&snapshot).unwrap();
        let reserve = t.path().join(RESERVE_FILE);
        assert_eq!(fs::metadata(&reserve).unwrap().len(), RESERVE_BYTES as u64);
        assert!(release_reserve(t.path()));
        assert!(!release_reserve(t.path()));
        keep_reserve(t.path()).unwrap();
        assert_eq!(fs::read(&reserve).unwrap(), vec![0u8; RESERVE_BYTES]);
    }

    #[test]
    fn only_a_full_disk_gives_up_the_reserve() {
        let full = SlotError::Io {
            op: "write file",
            path: PathBuf::from("x"),
            source: io::Error::from(io::ErrorKind::StorageFull),
        };
        assert!(is_disk_full(&full));
        let denied = SlotError::Io {
            op: "write file",
            path: PathBuf::from("x"),
            source: io::Error::from(io::ErrorKind::PermissionDenied),
        };
        assert!(!is_disk_full(&denied));
    }
}
