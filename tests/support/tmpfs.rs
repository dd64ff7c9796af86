//! A small tmpfs mounted for one test (the disk-full row, C1), unmounted when dropped.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A tmpfs mounted on a directory; unmounted on drop.
pub struct TmpfsMount {
    dir: PathBuf,
}

impl TmpfsMount {
    /// Mounts a tmpfs of `size_mb` MB, mode 0700, on `dir` (created if missing). `None`, after
    /// a `SKIP` line, when mounting is not permitted here; under CI (`CI=true`) that fails the
    /// test instead.
    pub fn mount(dir: &Path, size_mb: u64) -> Option<TmpfsMount> {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mb}m,mode=0700")])
            .arg("tmpfs")
            .arg(dir)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(TmpfsMount {
                dir: dir.to_owned(),
            }),
            other => {
                let why = match other {
                    Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_owned(),
                    Err(e) => e.to_string(),
                };
                let why = format!("cannot mount a tmpfs on {}: {why}", dir.display());
                if std::env::var("CI").is_ok_and(|v| v == "true") {
                    panic!("CI=true but {why}");
                }
                eprintln!("SKIP: {why}");
                None
            }
        }
    }

    /// Changes the size to `size_mb` MB while mounted.
    pub fn resize(&self, size_mb: u64) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={size_mb}m")])
            .arg(&self.dir)
            .status()
            .unwrap();
        assert!(status.success(), "remount {} failed", self.dir.display());
    }

    /// Bytes in use on the filesystem (`df`).
    pub fn used_bytes(&self) -> u64 {
        let out = Command::new("df")
            .args(["-B1", "--output=used"])
            .arg(&self.dir)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .unwrap()
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // Still busy (a process of a failed test): detach it so the directory can go.
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}

/// Appends to `file` whatever space its filesystem frees, for `during`; returns the bytes
/// taken.
pub fn take_free_space(file: &Path, during: Duration) -> u64 {
    let mut filler = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
        .unwrap();
    let page = [0u8; 4096];
    let until = Instant::now() + during;
    let mut taken = 0;
    while Instant::now() < until {
        match filler.write(&page) {
            Ok(n) => taken += n as u64,
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
    taken
}
