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

use walrelay::testkit::localpg::{Cluster, ClusterBuilder, PgBinaries, wait_until};
use walrelay::types::{Lsn, SegmentName, WalSegmentSize};

pub mod certs;
pub mod faultfs;
pub mod patroni;
pub mod raw_tls;
pub mod relay_env;
pub mod relay_topology;
pub mod restore;
pub mod slow_link;
pub mod tmpfs;
pub mod wan_link;

/// A primary in `dir` with `segment_mb` MB segments and archiving on, started.
pub fn archiving_primary(bins: &PgBinaries, dir: &Path, segment_mb: u32) -> Cluster {
    let mut primary = ClusterBuilder::new(bins.clone(), dir)
        .segment_size_mb(segment_mb)
        .archive(true)
        .init()
        .unwrap();
    primary.start().unwrap();
    primary
}

/// A `walrelay run` child process with its log in a file.
pub struct RelayProcess {
    child: Option<Child>,
    pub data_dir: PathBuf,
    pub log: PathBuf,
}

impl RelayProcess {
    /// Starts `walrelay run --upstream UPSTREAM --data-dir DATA_DIR EXTRA…` with short
    /// reconnect and status intervals for tests.
    pub fn start(upstream: &str, data_dir: &Path, extra: &[&str]) -> RelayProcess {
        let mut args = vec![
            "--reconnect-min",
            "50ms",
            "--reconnect-max",
            "1s",
            "--status-interval",
            "1s",
        ];
        args.extend_from_slice(extra);
        RelayProcess::start_bare(upstream, data_dir, &args)
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

/// O3: every completed segment of `relay_dir` is byte-identical to the archive's copy (or,
/// for a segment not archived yet, the primary's `pg_wal` copy beside the archive), the
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
        // A segment the primary has not archived is still in its pg_wal (PostgreSQL recycles
        // only archived segments). That happens after an immediate shutdown: a segment
        // completed just before it may be left without its `.ready` until a later checkpoint.
        let pg_wal = archive.with_file_name("data").join("pg_wal").join(name);
        let theirs = fs::read(archive.join(name))
            .or_else(|_| fs::read(&pg_wal))
            .unwrap_or_else(|e| panic!("archive and pg_wal lack {name}: {e}"));
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

/// Names in `dir` ending in `.partial`, sorted.
pub fn partial_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".partial"))
        .collect();
    names.sort();
    names
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
pub fn scratch(bins: &PgBinaries, label: &str) -> walrelay::testkit::localpg::ScratchDir {
    bins.scratch_dir(&std::env::temp_dir(), label).unwrap()
}

// Helpers for the crash and fault tests.

/// An integer from the environment variable `name`, or `default` when unset or unparsable.
pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// A seed from the environment variable `name`, else from the clock. It is printed so that a
/// failing run can be repeated with `name=SEED`.
pub fn seed_from_env(name: &str) -> u64 {
    let seed = std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap();
            now.as_nanos() as u64 ^ u64::from(std::process::id())
        });
    println!("seed: {name}={seed}");
    seed
}

/// A small deterministic generator (splitmix64) for seeded fault schedules.
pub struct TestRng(u64);

impl TestRng {
    pub fn new(seed: u64) -> TestRng {
        TestRng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A value in `lo..hi` (`lo` when the range is empty).
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        lo + self.next_u64() % (hi - lo)
    }
}

/// The flush position `app` has acknowledged to the server at `conninfo` (`None` when it is
/// not connected or the server does not answer). Needs no [`Cluster`], so a thread can use it
/// while the server is restarted.
pub fn acked_flush_at(bins: &PgBinaries, conninfo: &str, app: &str) -> Option<Lsn> {
    let sql = format!(
        "SELECT flush_lsn FROM pg_stat_replication WHERE application_name = '{app}' \
         AND flush_lsn IS NOT NULL ORDER BY flush_lsn DESC LIMIT 1"
    );
    let out = bins.psql(conninfo, &sql).ok()?;
    out.lines().next().and_then(|l| l.trim().parse().ok())
}

/// Samples the flush position a server has seen acknowledged by one application, in a
/// thread through one psql session (reopened if it ends), and keeps the highest value
/// (ACCEPTANCE.md O5's "A").
pub struct FlushSampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    highest: std::sync::Arc<std::sync::atomic::AtomicU64>,
    samples: std::sync::Arc<std::sync::atomic::AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FlushSampler {
    pub fn start(bins: &PgBinaries, conninfo: &str, app: &str, every: Duration) -> FlushSampler {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let highest = std::sync::Arc::new(AtomicU64::new(0));
        let samples = std::sync::Arc::new(AtomicU64::new(0));
        let (bins, conninfo, app) = (bins.clone(), conninfo.to_owned(), app.to_owned());
        let (s, h, n) = (stop.clone(), highest.clone(), samples.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                sample_in_session(&bins, &conninfo, &app, every, &s, &mut |lsn| {
                    h.fetch_max(lsn.0, Ordering::SeqCst);
                    n.fetch_add(1, Ordering::SeqCst);
                });
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        FlushSampler {
            stop,
            highest,
            samples,
            thread: Some(thread),
        }
    }

    /// The highest acknowledged flush seen so far (`0/0` before the first sample).
    pub fn highest(&self) -> Lsn {
        Lsn(self.highest.load(std::sync::atomic::Ordering::SeqCst))
    }

    /// How many samples found the application connected.
    pub fn samples(&self) -> u64 {
        self.samples.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Samples `app`'s acknowledged flush every `every` through one psql session (a new psql per
/// sample would take longer than the interval), until `stop` or the session ends.
fn sample_in_session(
    bins: &PgBinaries,
    conninfo: &str,
    app: &str,
    every: Duration,
    stop: &std::sync::atomic::AtomicBool,
    seen: &mut dyn FnMut(Lsn),
) {
    use std::io::{BufRead, Write};
    let sql = format!(
        "SELECT coalesce(max(flush_lsn)::text, '-') FROM pg_stat_replication \
         WHERE application_name = '{app}';\n"
    );
    let mut psql = bins.command("psql");
    psql.args(["-X", "-At", "-d", conninfo])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let Ok(mut child) = psql.spawn() else { return };
    let (Some(mut input), Some(output)) = (child.stdin.take(), child.stdout.take()) else {
        return;
    };
    let mut output = std::io::BufReader::new(output);
    let mut line = String::new();
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        line.clear();
        if input.write_all(sql.as_bytes()).is_err() || output.read_line(&mut line).unwrap_or(0) == 0
        {
            break;
        }
        if let Ok(lsn) = line.trim().parse() {
            seen(lsn);
        }
        std::thread::sleep(every);
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for FlushSampler {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A write load in a thread: transactions of `rows` INSERTed rows (about 130 bytes each) plus,
/// when `message_bytes > 0`, one transactional WAL message of that size, run through psql
/// back to back. A failed transaction (the server restarting) is counted and retried after
/// 100 ms, so the load survives restarts of the server.
pub struct WriteLoad {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    committed: std::sync::Arc<std::sync::atomic::AtomicU64>,
    failed: std::sync::Arc<std::sync::atomic::AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl WriteLoad {
    pub fn start(bins: &PgBinaries, conninfo: &str, rows: u32, message_bytes: usize) -> WriteLoad {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        bins.psql(
            conninfo,
            "CREATE TABLE IF NOT EXISTS walrelay_fault_load (id bigserial PRIMARY KEY, payload text)",
        )
        .unwrap();
        let mut sql = format!(
            "INSERT INTO walrelay_fault_load (payload) \
             SELECT repeat(md5(g::text), 4) FROM generate_series(1, {rows}) g;"
        );
        if message_bytes > 0 {
            sql.push_str(&format!(
                "SELECT pg_logical_emit_message(true, 'walrelay', repeat('m', {message_bytes}));"
            ));
        }
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let committed = std::sync::Arc::new(AtomicU64::new(0));
        let failed = std::sync::Arc::new(AtomicU64::new(0));
        let (bins, conninfo) = (bins.clone(), conninfo.to_owned());
        let (s, c, f) = (stop.clone(), committed.clone(), failed.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                if bins.psql(&conninfo, &sql).is_ok() {
                    c.fetch_add(1, Ordering::SeqCst);
                } else {
                    f.fetch_add(1, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        });
        WriteLoad {
            stop,
            committed,
            failed,
            thread: Some(thread),
        }
    }

    /// Stops the load and returns how many transactions committed and how many failed.
    pub fn stop(mut self) -> (u64, u64) {
        self.halt();
        (
            self.committed.load(std::sync::atomic::Ordering::SeqCst),
            self.failed.load(std::sync::atomic::Ordering::SeqCst),
        )
    }

    fn halt(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for WriteLoad {
    fn drop(&mut self) {
        self.halt();
    }
}

impl RelayProcess {
    /// The log's length in bytes: an offset for [`RelayProcess::log_since`].
    pub fn log_len(&self) -> usize {
        fs::metadata(&self.log).map_or(0, |m| m.len() as usize)
    }

    /// The log written after byte `offset`.
    pub fn log_since(&self, offset: usize) -> String {
        let bytes = fs::read(&self.log).unwrap_or_default();
        String::from_utf8_lossy(bytes.get(offset..).unwrap_or_default()).into_owned()
    }

    /// Waits until the log after byte `offset` contains `needle`; returns how long that took.
    pub fn wait_log(&self, offset: usize, needle: &str, timeout: Duration) -> Duration {
        let start = Instant::now();
        wait_until(timeout, &format!("relay log line with {needle:?}"), || {
            Ok(self.log_since(offset).contains(needle))
        })
        .unwrap_or_else(|e| panic!("{e}; log since then:\n{}", self.log_since(offset)));
        start.elapsed()
    }

    /// How many lines after byte `offset` contain `needle`.
    pub fn count_log(&self, offset: usize, needle: &str) -> usize {
        self.log_since(offset)
            .lines()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Whether the process is still running (not exited, not killed by this handle).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => c.try_wait().unwrap().is_none(),
            None => false,
        }
    }
}

/// The `durable=` and `valid=` ends of the first "recovered stored WAL" line in `log`.
pub fn recovered_end(log: &str) -> Option<(Lsn, Lsn)> {
    let line = log.lines().find(|l| l.contains("recovered stored WAL"))?;
    let field = |key: &str| -> Option<Lsn> {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .and_then(|v| v.parse().ok())
    };
    Some((field("durable=")?, field("valid=")?))
}

/// Where the stored WAL ends according to the files: the end of the last complete segment or
/// of the `.partial` (its segment start plus its length), whichever is further.
pub fn stored_end(wal_dir: &Path, size: WalSegmentSize) -> Option<Lsn> {
    let partial = fs::read_dir(wal_dir)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let seg = SegmentName::parse(name.strip_suffix(".partial")?, size)?;
            Some(Lsn(size.start_of(seg.segno)?.0 + e.metadata().ok()?.len()))
        })
        .max();
    let complete = segment_files(wal_dir)
        .pop()
        .and_then(|last| SegmentName::parse(&last, size))
        .and_then(|seg| size.start_of(seg.segno.next()?));
    partial.max(complete)
}

/// O4's "no temporary or half-written files remain": no `*.tmp`, at most one `.partial`, and
/// the `.partial` (if any) follows the last complete segment.
pub fn assert_no_leftovers(wal_dir: &Path, size: WalSegmentSize) {
    let names: Vec<String> = fs::read_dir(wal_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let tmp: Vec<_> = names.iter().filter(|n| n.ends_with(".tmp")).collect();
    assert!(tmp.is_empty(), "temporary files remain: {tmp:?}");
    let partial: Vec<_> = names
        .iter()
        .filter_map(|n| n.strip_suffix(".partial"))
        .collect();
    assert!(partial.len() <= 1, "more than one .partial: {partial:?}");
    if let (Some(p), Some(last)) = (partial.first(), segment_files(wal_dir).pop()) {
        let p = SegmentName::parse(p, size).unwrap();
        let last = SegmentName::parse(&last, size).unwrap();
        assert_eq!(
            p.segno.0,
            last.segno.0 + 1,
            "the .partial does not follow the last complete segment"
        );
    }
}

/// O3 on what the relay stored so far: complete segments consecutive and byte-identical to
/// the archive, the `.partial` right after them and a prefix of `partial_source`'s copy, no
/// leftovers. Returns the stored end.
pub fn assert_stored_contiguous(
    wal_dir: &Path,
    archive: &Path,
    partial_source: &Path,
    size: WalSegmentSize,
) -> Lsn {
    assert_same_segments(wal_dir, archive, size);
    assert_partial_prefix(wal_dir, partial_source);
    assert_no_leftovers(wal_dir, size);
    stored_end(wal_dir, size).unwrap()
}

/// The final check of a fault test once the fault is gone and the load stopped: the primary
/// switches segments and archives, the relay acknowledges the primary's flush position, then
/// O3 (completed segments and the `.partial` byte-identical to the primary's copies, no gaps),
/// O4 (`pg_waldump` over the relay's segments) and no leftover files. Returns how many
/// completed segments were compared.
pub fn converge_and_compare(
    primary: &Cluster,
    relay_wal_dir: &Path,
    size: WalSegmentSize,
) -> usize {
    let target = primary.switch_wal().unwrap();
    primary
        .wait_archived(target, Duration::from_secs(60))
        .unwrap();
    let end = primary.write_load(20).unwrap();
    wait_acked(primary, end, Duration::from_secs(60));
    let compared = assert_same_segments(relay_wal_dir, &primary.archive_dir(), size);
    assert_waldump(primary.bins(), relay_wal_dir, size);
    let pg_wal = primary.data_dir().join("pg_wal");
    assert_eq!(assert_partial_prefix(relay_wal_dir, &pg_wal), 1);
    assert_no_leftovers(relay_wal_dir, size);
    compared
}

impl RelayProcess {
    /// Starts `walrelay run --upstream UPSTREAM --data-dir DATA_DIR ARGS…` with only `args`:
    /// none of [`RelayProcess::start`]'s short test intervals, for tests that set every
    /// interval themselves.
    pub fn start_bare(upstream: &str, data_dir: &Path, args: &[&str]) -> RelayProcess {
        RelayProcess::start_binary(
            Path::new(env!("CARGO_BIN_EXE_walrelay")),
            upstream,
            data_dir,
            args,
        )
    }

    /// [`RelayProcess::start_bare`] with another build of the binary.
    pub fn start_binary(
        binary: &Path,
        upstream: &str,
        data_dir: &Path,
        args: &[&str],
    ) -> RelayProcess {
        let mut all = vec![
            "--upstream",
            upstream,
            "--data-dir",
            data_dir.to_str().unwrap(),
        ];
        all.extend_from_slice(args);
        RelayProcess::start_run(binary, data_dir, &all)
    }

    /// `walrelay run ARGS…` and nothing else (a `--config` file, say), its log beside
    /// `data_dir`.
    pub fn start_run(binary: &Path, data_dir: &Path, args: &[&str]) -> RelayProcess {
        RelayProcess::start_run_env(binary, data_dir, args, &[])
    }
}

/// Peak resident memory (`VmHWM` in `/proc/PID/status`) of a process, in bytes.
pub fn peak_rss(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

/// The peak resident set size (VmHWM) of process `pid` in kB, from `/proc/PID/status`.
pub fn vm_hwm_kb(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse().ok())
        .unwrap_or_else(|| panic!("no VmHWM in /proc/{pid}/status"))
}

/// Sends signal `sig` (a name such as `STOP`) to `pid`.
pub fn signal_pid(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{sig} {pid}");
}

/// Creates `dir` with mode 0700, as the tests of PostgreSQL's tools do (their umask is 0077).
pub fn private_dir(dir: &Path) -> PathBuf {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .unwrap();
    dir.to_owned()
}

/// Segment names in a WAL directory, complete or `.partial` (suffix stripped).
pub fn wal_files(dir: &Path) -> std::collections::BTreeSet<String> {
    fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.ok()?.file_name().to_string_lossy().into_owned();
            let base = name.strip_suffix(".partial").unwrap_or(&name).to_owned();
            (base.len() == 24 && base.bytes().all(|b| b.is_ascii_hexdigit())).then_some(base)
        })
        .collect()
}

/// Bytes held by segment files (complete and `.partial`) in a WAL directory.
pub fn wal_bytes(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_suffix(".partial").unwrap_or(&name).len() == 24
        })
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

/// Two tests that run one body at 1 MB and at 16 MB segments: `$one` calls `$body(1)` and
/// `$sixteen` calls `$body(16)`; attributes before them (docs) go on both.
#[allow(unused_macros)]
macro_rules! at_1mb_and_16mb_segments {
    ($(#[$meta:meta])* $one:ident, $sixteen:ident, $body:expr) => {
        $(#[$meta])*
        #[test]
        fn $one() {
            ($body)(1);
        }

        $(#[$meta])*
        #[test]
        fn $sixteen() {
            ($body)(16);
        }
    };
}
#[allow(unused_imports)]
pub(crate) use at_1mb_and_16mb_segments;

/// One HTTP/1.1 GET: status code, headers (lowercase names) and body.
pub fn http_get(
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, Vec<(String, String)>, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    std::io::Write::write_all(&mut s, req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    std::io::Read::read_to_end(&mut s, &mut raw).unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    let code = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (code, headers, body.to_owned())
}

/// O8 after `after`: the relay still runs, `identify_system` (an `IDENTIFY_SYSTEM` run the
/// way the caller's clients log in) answers with its four columns, and the log holds no panic.
pub fn assert_relay_healthy<E: std::fmt::Display>(
    relay: &mut RelayProcess,
    after: &str,
    identify_system: impl FnOnce() -> Result<String, E>,
) {
    assert!(relay.is_running(), "the relay exited after {after}");
    let id = identify_system().unwrap_or_else(|e| panic!("IDENTIFY_SYSTEM after {after}: {e}"));
    assert_eq!(
        id.split('|').count(),
        4,
        "IDENTIFY_SYSTEM after {after}: {id}"
    );
    assert!(
        !relay.log_contents().contains("panicked"),
        "the relay panicked after {after}"
    );
}

/// A network namespace of the test's own, joined to this one by a veth pair; `None`, with a
/// message, when it cannot be made (not root) outside CI. Under `CI=true` that fails the test.
pub fn netns_or_skip() -> Option<walrelay::testkit::netns::NetNs> {
    match walrelay::testkit::netns::NetNs::create() {
        Ok(ns) => Some(ns),
        Err(e) if std::env::var_os("CI").is_none() => {
            eprintln!("skipping: cannot create a network namespace: {e}");
            None
        }
        Err(e) => panic!("cannot create a network namespace: {e}"),
    }
}

/// `walrelay passwd USER` fed `password` on standard input: the auth-file line it prints,
/// checked to hold a SCRAM secret and not the password.
pub fn passwd_line(user: &str, password: &str) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_walrelay"))
        .args(["passwd", user])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(
        &mut child.stdin.take().unwrap(),
        format!("{password}\n").as_bytes(),
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let line = String::from_utf8(out.stdout).unwrap();
    assert!(
        line.starts_with(&format!("{user} SCRAM-SHA-256$4096:")),
        "{line}"
    );
    assert!(!line.contains(password));
    line
}

/// Waits until something accepts TCP connections on `127.0.0.1:port`.
pub fn wait_listening(port: u16, timeout: Duration) {
    walrelay::testkit::localpg::wait_until(timeout, &format!("port {port} listening"), || {
        Ok(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok())
    })
    .unwrap();
}
