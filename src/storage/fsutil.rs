//! Small durable-filesystem helpers: private permissions, directory fsync and atomic replace.
//!
//! They mirror PostgreSQL's `fd.c` habits: `durable_rename` (fsync the file, rename, fsync the
//! directory) and `pg_dir_create_mode`/`pg_file_create_mode` of `0700`/`0600`.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::error::{StoreError, io_err};
use crate::statefile;

/// Mode of every directory the store creates.
const DIR_MODE: u32 = 0o700;
/// Mode of every file the store creates.
const FILE_MODE: u32 = 0o600;

/// Creates `dir` and missing parents with mode 0700; an existing directory is left as it is.
pub(crate) fn create_dir(dir: &Path) -> Result<(), StoreError> {
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(io_err("create directory", dir))
}

/// fsyncs a directory, making renames, creations and removals in it durable.
pub(crate) fn fsync_dir(dir: &Path) -> Result<(), StoreError> {
    statefile::fsync_dir(dir).map_err(io_err("fsync directory", dir))
}

/// Opens `path` for reading and writing, creating it with mode 0600 if missing.
pub(crate) fn open_rw(path: &Path) -> Result<File, StoreError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(FILE_MODE)
        .open(path)
        .map_err(io_err("open", path))
}

/// Replaces `dir/name` with `contents` atomically and durably: `name.tmp`, fsync, rename,
/// fsync of the directory. A failed write removes the temporary file again.
pub(crate) fn write_atomic(dir: &Path, name: &str, contents: &[u8]) -> Result<(), StoreError> {
    statefile::replace(dir, name, contents).map_err(io_err("write", &dir.join(name)))
}

/// Removes every `*.tmp` file directly in `dir` (left by an interrupted [`write_atomic`]) and
/// returns their paths.
pub(crate) fn remove_tmp_files(dir: &Path) -> Result<Vec<PathBuf>, StoreError> {
    remove_files_ending(dir, ".tmp")
}

/// Removes every file directly in `dir` whose name ends in `suffix` and returns their paths.
pub(crate) fn remove_files_ending(dir: &Path, suffix: &str) -> Result<Vec<PathBuf>, StoreError> {
    let mut removed = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err("read directory", dir))? {
        let entry = entry.map_err(io_err("read directory", dir))?;
        let matches = entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.ends_with(suffix));
        if matches && entry.file_type().is_ok_and(|t| t.is_file()) {
            let path = entry.path();
            fs::remove_file(&path).map_err(io_err("remove", &path))?;
            removed.push(path);
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn atomic_write_is_private_and_complete() {
        let t = tempfile::TempDir::new().unwrap();
        let dir = t.path().join("a/b");
        create_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        write_atomic(&dir, "x", b"one").unwrap();
        write_atomic(&dir, "x", b"two").unwrap();
        assert_eq!(fs::read(dir.join("x")).unwrap(), b"two");
        assert_eq!(mode(&dir.join("x")), 0o600);
        assert!(!dir.join("x.tmp").exists());
        let f = open_rw(&dir.join("y")).unwrap();
        drop(f);
        assert_eq!(mode(&dir.join("y")), 0o600);
    }

    #[test]
    fn removes_only_tmp_files() {
        let t = tempfile::TempDir::new().unwrap();
        fs::write(t.path().join("a.tmp"), b"x").unwrap();
        fs::write(t.path().join("b"), b"x").unwrap();
        fs::create_dir(t.path().join("c.tmp")).unwrap();
        let removed = remove_tmp_files(t.path()).unwrap();
        assert_eq!(removed, vec![t.path().join("a.tmp")]);
        assert!(t.path().join("b").exists());
        assert!(t.path().join("c.tmp").exists());
    }
}
