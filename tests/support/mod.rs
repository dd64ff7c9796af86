//! Shared helpers for the integration tests: the relay binary as a child process, and the
//! byte-for-byte comparisons of ACCEPTANCE.md's oracles O3 and O4.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use walrelay::localpg::{Cluster, PgBinaries, wait_until};
use walrelay::types::{Lsn, SegmentName, WalSegmentSize};

/// A `walrelay run` child process with its log in a file.
pub struct RelayProcess {
    child: Option<Child>,
    pub data_dir: PathBuf,
    pub log: PathBuf,
}

impl RelayProcess {
    /// Starts `walrelay run --upstream UPSTREAM --data-dir DATA_DIR EXTRA…`.
    pub fn start(upstream: &str, data_dir: &Path, extra: &[&str]) -> RelayProcess {
        fs::create_dir_all(data_dir.parent().unwrap()).unwrap();
        let log = data_dir.with_extension("log");
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_walrelay"))
            .args(["run", "--upstream", upstream, "--data-dir"])
            .arg(data_dir)
            .args([
                "--reconnect-min",
                "50ms",
                "--reconnect-max",
                "1s",
                "--status-interval",
                "1s",
            ])
            .args(extra)
            .env("WALRELAY_LOG", "info,walrelay=debug")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start walrelay");
        RelayProcess {
            child: Some(child),
            data_dir: data_dir.to_owned(),
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn log_contents(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends a signal by number.
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// kill -9 and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits for the process to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        let child = self.child.as_mut()?;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return Some(status);
            }
            if start.elapsed() > timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn wal_dir(&self) -> PathBuf {
        self.data_dir.join("wal")
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!("relay log {}:\n{}", self.log.display(), self.log_contents());
        }
    }
}

/// The flush position the primary has seen acknowledged by `application_name`.
pub fn acked_flush(primary: &Cluster, app: &str) -> Option<Lsn> {
    let out = primary
        .psql(&format!(
            "SELECT flush_lsn FROM pg_stat_replication WHERE application_name = '{app}'"
        ))
        .ok()?;
    out.lines().next().and_then(|l| l.trim().parse().ok())
}

/// Waits until the primary sees the relay's flush at or past `target`.
pub fn wait_acked(primary: &Cluster, target: Lsn, timeout: Duration) {
    wait_until(timeout, &format!("relay flush >= {target}"), || {
        Ok(acked_flush(primary, "walrelay").is_some_and(|f| f >= target))
    })
    .unwrap();
}

/// Completed segment names (24 hex characters) in a directory, sorted.
pub fn segment_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.len() == 24 && n.bytes().all(|b| b.is_ascii_hexdigit()))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// O3: every completed segment of `relay_dir` is byte-identical to the archive's copy, the
/// relay's segment names are consecutive, and every file is exactly one segment long.
/// Returns how many segments were compared.
pub fn assert_same_segments(relay_dir: &Path, archive: &Path, size: WalSegmentSize) -> usize {
    let names = segment_files(relay_dir);
    assert!(!names.is_empty(), "relay holds no completed segment");
    let mut prev: Option<SegmentName> = None;
    for name in &names {
        let seg = SegmentName::parse(name, size).expect("segment name");
        if let Some(p) = prev {
            assert_eq!(
                seg.segno.0,
                p.segno.0 + 1,
                "gap in relay segments before {name}"
            );
        }
        prev = Some(seg);
        let ours = fs::read(relay_dir.join(name)).unwrap();
        assert_eq!(
            ours.len() as u64,
            size.bytes_u64(),
            "{name} has the wrong size"
        );
        let theirs =
            fs::read(archive.join(name)).unwrap_or_else(|e| panic!("archive lacks {name}: {e}"));
        assert!(
            ours == theirs,
            "{name} differs from the primary's archived copy"
        );
    }
    names.len()
}

/// O3 for the partial segment: its bytes equal the archived (or `pg_wal`) copy's prefix.
pub fn assert_partial_prefix(relay_dir: &Path, source_dir: &Path) -> usize {
    let mut checked = 0;
    for entry in fs::read_dir(relay_dir).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if let Some(base) = name.strip_suffix(".partial") {
            let ours = fs::read(relay_dir.join(&name)).unwrap();
            let theirs = fs::read(source_dir.join(base)).unwrap();
            assert!(ours.len() <= theirs.len());
            assert!(
                ours[..] == theirs[..ours.len()],
                "{name} is not a prefix of the source"
            );
            checked += 1;
        }
    }
    checked
}

/// O4: pg_waldump reads the relay's completed segments end to end.
pub fn assert_waldump(bins: &PgBinaries, relay_dir: &Path, size: WalSegmentSize) {
    let names = segment_files(relay_dir);
    let first = SegmentName::parse(names.first().unwrap(), size).unwrap();
    let last = SegmentName::parse(names.last().unwrap(), size).unwrap();
    let start = size.start_of(first.segno).unwrap();
    let end = size.start_of(last.segno.next().unwrap()).unwrap();
    bins.waldump(relay_dir, first.timeline, start, end)
        .expect("pg_waldump over the relay's segments");
}

/// A fresh scratch directory for a test.
pub fn scratch(bins: &PgBinaries, label: &str) -> walrelay::localpg::ScratchDir {
    bins.scratch_dir(&std::env::temp_dir(), label).unwrap()
}
