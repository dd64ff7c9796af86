//! The data directory's lock: one relay at a time, as `postmaster.pid` keeps one postmaster
//! to a data directory (`miscinit.c:CreateLockFile`).
//!
//! Two relays writing one store would interleave their WAL and their slot files. The lock is
//! an exclusive advisory lock (`flock`) on `walrelay.lock` in the data directory, held for as
//! long as the [`DataDirLock`] lives; the kernel drops it when the process dies, however it
//! dies, so a crash never leaves a stale lock behind. The file holds the holder's PID, for the
//! error the next relay prints.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::StoreError;
use super::error::io_err;
use super::fsutil::create_dir;

/// The lock file's name in the data directory.
pub const LOCK_FILE: &str = "walrelay.lock";

/// An exclusive hold on a data directory, released when dropped.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
    path: PathBuf,
}

impl DataDirLock {
    /// Takes the lock of `data_dir`, creating the directory if it does not exist.
    ///
    /// # Errors
    /// [`StoreError::Locked`] if another process holds it; [`StoreError::Io`] if the directory
    /// or the lock file cannot be created, opened or written.
    pub fn acquire(data_dir: &Path) -> Result<DataDirLock, StoreError> {
        create_dir(data_dir)?;
        let path = data_dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io_err("open", &path))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(StoreError::Locked {
                    pid: holder(&mut file),
                    path,
                });
            }
            Err(TryLockError::Error(e)) => return Err(io_err("lock", &path)(e)),
        }
        file.set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)))
            .and_then(|_| writeln!(file, "{}", std::process::id()))
            .map_err(io_err("write", &path))?;
        Ok(DataDirLock { _file: file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The PID the holder wrote, if it is readable.
fn holder(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    file.take(32).read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_until_the_first_lets_go() {
        let t = tempfile::TempDir::new().unwrap();
        let dir = t.path().join("data");
        let first = DataDirLock::acquire(&dir).unwrap();
        assert_eq!(first.path(), dir.join(LOCK_FILE));
        let err = DataDirLock::acquire(&dir).unwrap_err();
        match &err {
            StoreError::Locked { pid, .. } => assert_eq!(*pid, Some(std::process::id())),
            other => panic!("{other:?}"),
        }
        assert!(
            err.to_string().starts_with("lock file \"")
                && err.to_string().contains("is another walrelay"),
            "{err}"
        );
        drop(first);
        let again = DataDirLock::acquire(&dir).unwrap();
        drop(again);
    }
}
