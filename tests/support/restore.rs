//! ACCEPTANCE.md's A10: the relay's WAL directory used as an archive. A base backup taken
//! without WAL recovers from a copy of that directory alone, through
//! `restore_command = 'cp …/%f %p'`, as it would from the primary's own archive.

use std::fs;
use std::os::unix::fs::{MetadataExt, chown};
use std::path::{Path, PathBuf};
use std::time::Duration;

use walrelay::testkit::localpg::{Cluster, ScratchDir, run, wait_until};
use walrelay::types::Lsn;

/// `pg_basebackup -X none -c fast` of `primary` into `data/` of a new directory beside it:
/// the backup holds no WAL, so recovering it needs every segment from its start on.
pub fn backup_without_wal(primary: &Cluster) -> ScratchDir {
    let parent = primary.root_dir().parent().unwrap();
    let dir = primary.bins().scratch_dir(parent, "restored").unwrap();
    let mut backup = primary.bins().command("pg_basebackup");
    backup
        .arg("-D")
        .arg(dir.path().join("data"))
        .args(["-d", &primary.conninfo()])
        .args(["-X", "none", "-c", "fast", "--no-sync"]);
    run(&mut backup).unwrap();
    let copied_wal = fs::read_dir(dir.path().join("data").join("pg_wal"))
        .unwrap()
        .filter(|e| e.as_ref().is_ok_and(|e| e.path().is_file()))
        .count();
    assert_eq!(copied_wal, 0, "pg_basebackup -X none copied WAL");
    dir
}

/// What archive recovery from the relay's WAL reached.
pub struct Restored {
    /// The recovered server, out of recovery on a new timeline, running.
    pub server: Cluster,
    /// Where recovery ended: the new timeline's switch point, from its history file.
    pub ended: Lsn,
    /// How many files `restore_command` restored.
    pub restored_files: usize,
}

/// Recovers `backup` (from [`backup_without_wal`] of `primary`) with `restore_command` reading
/// a copy of the relay's WAL directory `wal`, following the latest timeline, and waits until
/// archive recovery has ended and the server has left recovery.
pub fn restore_from_relay_wal(primary: &Cluster, backup: ScratchDir, wal: &Path) -> Restored {
    let store = copy_owned_like(wal, backup.path(), "relay-wal");
    let mut server = primary.standby_from_copy(backup, "", None).unwrap();
    let data = server.data_dir();
    fs::remove_file(data.join("standby.signal")).unwrap();
    fs::write(data.join("recovery.signal"), "").unwrap();
    let command = format!("cp '{}/%f' '%p'", store.display());
    server.set_config("restore_command", &command).unwrap();
    server
        .set_config("recovery_target_timeline", "latest")
        .unwrap();
    server.start().unwrap();
    wait_until(Duration::from_secs(60), "archive recovery to end", || {
        Ok(server.psql("SELECT pg_is_in_recovery()")? == "f")
    })
    .unwrap();
    let log = server.log_contents();
    let restored_files = log.matches("restored log file").count();
    assert!(
        log.contains("archive recovery complete") && restored_files > 0,
        "A10: no archive recovery from the relay's WAL:\n{log}"
    );
    let ended = newest_switch_point(&data.join("pg_wal"));
    Restored {
        server,
        ended,
        restored_files,
    }
}

/// The switch point of the newest timeline history file in `pg_wal`: its last line's LSN.
fn newest_switch_point(pg_wal: &Path) -> Lsn {
    let newest = fs::read_dir(pg_wal)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".history"))
        .max()
        .expect("a history file for the new timeline");
    let text = fs::read_to_string(pg_wal.join(&newest)).unwrap();
    let last = text.lines().rfind(|l| !l.trim().is_empty()).unwrap();
    last.split('\t').nth(1).unwrap().parse().unwrap()
}

/// A copy of the files of `wal` in `parent/name`, owned as `parent` is (by the `postgres`
/// user when the tests run as root), for a server to read as an archive: what one restoring
/// on another host would fetch from the relay's storage.
fn copy_owned_like(wal: &Path, parent: &Path, name: &str) -> PathBuf {
    let owner = fs::metadata(parent).unwrap();
    let give = |path: &Path| chown(path, Some(owner.uid()), Some(owner.gid())).unwrap();
    let copy = parent.join(name);
    fs::create_dir(&copy).unwrap();
    give(&copy);
    for entry in fs::read_dir(wal).unwrap() {
        let entry = entry.unwrap();
        let to = copy.join(entry.file_name());
        fs::copy(entry.path(), &to).unwrap();
        give(&to);
    }
    copy
}
