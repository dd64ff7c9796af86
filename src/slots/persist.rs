//! Getting the persistent slots to disk without holding the registry: numbered snapshots, and
//! the state file that keeps the newest one.

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

/// `slots.state` in a data directory: written durably, never with an older snapshot than the
/// newest one it holds.
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
        state::write(&self.dir, snapshot.slots.iter().map(|(n, d)| (n, d)))?;
        *written = snapshot.version;
        Ok(())
    }
}
