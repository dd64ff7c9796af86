//! Getting the persistent slots to disk without holding the registry: numbered snapshots, and
//! the state file that keeps the newest one.
//!
//! The state file is replaced whole (a new file, fsynced, renamed over the old one), which
//! needs free space. PostgreSQL drops a slot by renaming and removing its directory, which
//! needs none, and dropping the slot that pins the WAL is how a full disk is relieved. So
//! beside the state file the relay keeps `slots.reserve`, a file of [`RESERVE_BYTES`] it
//! gives up when the disk is full: the state is then written in the space it held, and the
//! reserve is made again once there is room. The state is written over the reserve's own
//! blocks, which needs no new space, rather than into space freed by removing it, which the
//! WAL writer, retrying on the same full disk, could take first.

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

    /// The oldest `restart_lsn` among its slots: where WAL must be kept from while this is
    /// the snapshot on disk.
    pub fn min_restart_lsn(&self) -> Option<crate::types::Lsn> {
        self.slots.iter().filter_map(|(_, d)| d.restart_lsn).min()
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
    /// What is on disk; the lock also keeps writes one at a time.
    written: Mutex<OnDisk>,
}

/// The snapshot on disk: its version and, once this process wrote it, its [`Shape`].
#[derive(Debug, Default)]
struct OnDisk {
    version: u64,
    shape: Option<Shape>,
}

/// Which slots there are, whether each reserves WAL, and which are invalidated: what a
/// snapshot says beyond positions that only moved.
type Shape = Vec<(SlotName, bool, Option<crate::types::Lsn>)>;

fn shape(snapshot: &SlotSnapshot) -> Shape {
    let slots = snapshot.slots.iter();
    slots
        .map(|(n, d)| (n.clone(), d.restart_lsn.is_some(), d.invalidated_at))
        .collect()
}

impl SlotFile {
    /// The state file of the registry opened on `dir`.
    pub fn new(dir: &Path) -> SlotFile {
        SlotFile {
            dir: dir.to_path_buf(),
            written: Mutex::new(OnDisk::default()),
        }
    }
}

impl SlotPersister for SlotFile {
    /// On a full disk, a snapshot in which positions only moved fails, to be written again
    /// later, as positions always wait for the next periodic write; one that creates, drops
    /// or invalidates a slot is written in the reserve's blocks.
    fn write(&self, snapshot: &SlotSnapshot) -> Result<(), SlotError> {
        let mut written = self.written.lock().unwrap_or_else(PoisonError::into_inner);
        if written.version >= snapshot.version {
            // A later snapshot, which holds this change too, is on disk already.
            return Ok(());
        }
        let shape = shape(snapshot);
        let slots = || snapshot.slots.iter().map(|(n, d)| (n, d));
        match state::write(&self.dir, slots()) {
            Err(e) if is_disk_full(&e) && written.shape.as_ref() != Some(&shape) => {
                let reserve = self.dir.join(RESERVE_FILE);
                if !reserve.is_file() {
                    return Err(e);
                }
                state::write_over(&self.dir, &reserve, slots())?;
            }
            other => other?,
        }
        *written = OnDisk {
            version: snapshot.version,
            shape: Some(shape),
        };
        // Best effort: while the disk is full the reserve waits for the next write.
        let _ = keep_reserve(&self.dir);
        Ok(())
    }
}

fn is_disk_full(e: &SlotError) -> bool {
    matches!(e, SlotError::Io { source, .. }
        if matches!(source.kind(), io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded))
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
        fs::remove_file(&reserve).unwrap();
        keep_reserve(t.path()).unwrap();
        assert_eq!(fs::read(&reserve).unwrap(), vec![0u8; RESERVE_BYTES]);
    }

    #[test]
    fn on_a_full_disk_moved_positions_wait_and_a_dropped_slot_takes_the_reserve() {
        let t = tempfile::TempDir::new().unwrap();
        let file = SlotFile::new(t.path());
        let (a, b) = (SlotName::new("a").unwrap(), SlotName::new("b").unwrap());
        let at = |lsn: u64| SlotData {
            restart_lsn: Some(crate::types::Lsn(lsn)),
            ..SlotData::default()
        };
        let snapshot = |version, slots: Vec<(SlotName, SlotData)>| SlotSnapshot { version, slots };
        file.write(&snapshot(
            1,
            vec![(a.clone(), at(100)), (b.clone(), at(100))],
        ))
        .unwrap();
        let state_path = t.path().join(state::STATE_FILE);
        let reserve = t.path().join(RESERVE_FILE);
        let before = fs::read(&state_path).unwrap();
        // Every new file is written on a full disk from now on.
        let full = || {
            let tmp = t.path().join(format!("{}.tmp", state::STATE_FILE));
            let _ = fs::remove_file(&tmp);
            std::os::unix::fs::symlink("/dev/full", &tmp).unwrap();
        };
        full();
        let moved = snapshot(2, vec![(a.clone(), at(200)), (b.clone(), at(100))]);
        let err = file.write(&moved).unwrap_err();
        assert!(is_disk_full(&err), "{err}");
        assert_eq!(fs::read(&state_path).unwrap(), before, "positions wait");
        assert_eq!(fs::metadata(&reserve).unwrap().len(), RESERVE_BYTES as u64);
        full();
        file.write(&snapshot(3, vec![(a.clone(), at(200))]))
            .unwrap();
        let text = String::from_utf8(fs::read(&state_path).unwrap()).unwrap();
        assert!(text.contains("slot a restart_lsn=0/C8 "), "{text}");
        assert!(!text.contains("slot b"), "{text}");
    }

    #[test]
    fn the_state_written_over_the_reserve_replaces_the_state_file_in_its_blocks() {
        let t = tempfile::TempDir::new().unwrap();
        let file = SlotFile::new(t.path());
        let name = SlotName::new("standby_a").unwrap();
        let snapshot = SlotSnapshot {
            version: 1,
            slots: vec![(name.clone(), SlotData::default())],
        };
        file.write(&snapshot).unwrap();
        let state_path = t.path().join(state::STATE_FILE);
        let written = fs::read(&state_path).unwrap();
        fs::write(&state_path, b"older").unwrap();
        let reserve = t.path().join(RESERVE_FILE);
        let slots = snapshot.slots.iter().map(|(n, d)| (n, d));
        state::write_over(t.path(), &reserve, slots).unwrap();
        assert_eq!(fs::read(&state_path).unwrap(), written);
        assert!(!reserve.exists(), "the reserve became the state file");
        // A reserve shorter than the state is refused and left as it was.
        fs::write(&reserve, b"x").unwrap();
        let slots = snapshot.slots.iter().map(|(n, d)| (n, d));
        let err = state::write_over(t.path(), &reserve, slots).unwrap_err();
        assert!(is_disk_full(&err), "{err}");
        assert_eq!(fs::read(&state_path).unwrap(), written);
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
