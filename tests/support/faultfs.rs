//! A fault-injecting file system for the relay's data directory: `faultfs.py` (beside this
//! file), a FUSE passthrough that can delay every fsync and fail the next ones with EIO, as
//! a stalled or failing disk does. Needs root, `/dev/fuse` and Debian's `python3-fusepy`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use walrelay::testkit::localpg::{PgBinaries, ScratchDir, wait_until};

/// The interpreter with Debian's `fusepy` (not a virtual environment's).
const PYTHON: &str = "/usr/bin/python3";

/// A mounted fault file system; unmounted on `Drop`.
pub struct FaultFs {
    /// Where to put the files the faults should hit.
    pub mount: PathBuf,
    control: PathBuf,
    child: Child,
    _dir: ScratchDir,
}

impl FaultFs {
    /// Whether this machine can mount one; `None` (after saying why) when it cannot, and
    /// a panic under `CI=true`, where every test must run.
    pub fn available() -> bool {
        let fusepy = Command::new(PYTHON)
            .args(["-c", "import fusepy"])
            .output()
            .is_ok_and(|o| o.status.success());
        let ok = fusepy && Path::new("/dev/fuse").exists();
        if !ok {
            let why = "the fault file system needs /dev/fuse and python3-fusepy";
            assert!(std::env::var("CI").as_deref() != Ok("true"), "{why}");
            eprintln!("skipped: {why}");
        }
        ok
    }

    /// Mounts one in a new scratch directory.
    pub fn mount(bins: &PgBinaries, label: &str) -> FaultFs {
        let dir = bins.scratch_dir(&std::env::temp_dir(), label).unwrap();
        let (backing, mount, control) = (
            dir.path().join("backing"),
            dir.path().join("mount"),
            dir.path().join("control"),
        );
        for d in [&backing, &mount, &control] {
            fs::create_dir(d).unwrap();
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/faultfs.py");
        let child = Command::new(PYTHON)
            .arg(script)
            .args([&backing, &mount, &control])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let fs = FaultFs {
            mount: mount.clone(),
            control,
            child,
            _dir: dir,
        };
        let target = mount.to_string_lossy().into_owned();
        wait_until(Duration::from_secs(10), "fault file system mounted", || {
            Ok(fs::read_to_string("/proc/mounts")
                .unwrap_or_default()
                .lines()
                .any(|l| l.split_whitespace().nth(1) == Some(target.as_str())))
        })
        .unwrap();
        fs
    }

    /// Every fsync from now on first waits `delay`.
    pub fn delay_syncs(&self, delay: Duration) {
        fs::write(
            self.control.join("fsync_delay_ms"),
            delay.as_millis().to_string(),
        )
        .unwrap();
    }

    /// The next `n` fsyncs fail with EIO.
    pub fn fail_syncs(&self, n: u32) {
        fs::write(self.control.join("fsync_eio"), n.to_string()).unwrap();
    }

    /// How many of the failures asked for are still to come.
    pub fn failures_left(&self) -> u32 {
        fs::read_to_string(self.control.join("fsync_eio"))
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for FaultFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
