//! The programs in `examples/` run as a user would run them, against a real primary with 1 MB
//! segments and archiving: `embed_relay` stores segments byte-identical to the primary's
//! archived copies and stops cleanly on Ctrl-C; `tail_wal` validates WAL up to a flushed
//! position, and exits non-zero on a record with a bad CRC (from a fake walsender);
//! `archive_segments` writes the switched segment byte-identical to the primary's own archive,
//! and `pg_waldump` reads it; `fanout_bench --smoke` runs every part of the end-to-end
//! benchmark at tiny sizes, prints its JSON and tables, and leaves nothing behind.
//!
//! The examples are built by `cargo test` and `cargo nextest run` without a target filter, but
//! not by `--test examples`: each test process runs `cargo build --example …` once, which is a
//! quick no-op when they are up to date.
#![cfg(feature = "runtime")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

#[allow(dead_code)]
mod fake_upstream;
mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use fake_upstream::{CHUNK, FakeUpstream, Fault, Script, Start, Stream, Wal};
use walrelay::testkit::localpg::{require_postgres, wait_until};
use walrelay::types::{Lsn, SegmentName, TimelineId, WalSegmentSize};

const DEADLINE: Duration = Duration::from_secs(30);
const EXAMPLES: [&str; 4] = [
    "embed_relay",
    "tail_wal",
    "archive_segments",
    "fanout_bench",
];
/// Variables cargo sets for a test beside `CARGO_PKG_*` and `CARGO_BIN_EXE_*`.
const CARGO_TEST_VARIABLES: [&str; 6] = [
    "CARGO_MANIFEST_DIR",
    "CARGO_MANIFEST_PATH",
    "CARGO_CRATE_NAME",
    "CARGO_PRIMARY_PACKAGE",
    "CARGO_TARGET_TMPDIR",
    "OUT_DIR",
];

/// The path of example `name`'s binary, built with this test binary's profile.
fn example(name: &str) -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        // This binary is target/PROFILE_DIR/deps/examples-HASH; examples go to
        // target/PROFILE_DIR/examples/NAME.
        let exe = std::env::current_exe().unwrap();
        let profile_dir = exe.parent().and_then(Path::parent).unwrap().to_owned();
        let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") => "dev".to_owned(),
            other => other.unwrap().to_owned(),
        };
        let mut cargo = Command::new(env!("CARGO"));
        cargo
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(["build", "--profile", &profile]);
        // Without the variables cargo sets for running this test, which would make build
        // scripts that watch them (ring's watches CARGO_MANIFEST_DIR) and everything above
        // them rebuild, here and again in the next `cargo test`.
        for (key, _) in std::env::vars_os() {
            let name = key.to_string_lossy();
            if name.starts_with("CARGO_PKG_")
                || name.starts_with("CARGO_BIN_EXE_")
                || CARGO_TEST_VARIABLES.contains(&&*name)
            {
                cargo.env_remove(&key);
            }
        }
        for example in EXAMPLES {
            cargo.args(["--example", example]);
        }
        let out = cargo.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "building the examples failed:\n{stderr}"
        );
        profile_dir.join("examples")
    });
    let path = dir.join(name);
    assert!(path.is_file(), "{} was not built", path.display());
    path
}

/// An example running with its stdout and stderr in files; killed on drop.
struct Example {
    child: Option<Child>,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Example {
    fn start(name: &str, args: &[String], dir: &Path) -> Example {
        let (stdout, stderr) = (
            dir.join(format!("{name}.out")),
            dir.join(format!("{name}.err")),
        );
        let child = Command::new(example(name))
            .args(args)
            .stdin(Stdio::null())
            .stdout(fs::File::create(&stdout).unwrap())
            .stderr(fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        Example {
            child: Some(child),
            stdout,
            stderr,
        }
    }

    fn stdout(&self) -> String {
        fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// The rest of the first line of stdout that starts with `prefix`, once there is one.
    fn wait_line(&mut self, prefix: &str) -> String {
        let start = Instant::now();
        loop {
            if let Some(rest) = self.stdout().lines().find_map(|l| l.strip_prefix(prefix)) {
                return rest.to_owned();
            }
            let exited = self.child.as_mut().unwrap().try_wait().unwrap();
            assert!(
                exited.is_none() && start.elapsed() < DEADLINE,
                "no line starting with {prefix:?} (exit: {exited:?})"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the example to exit on its own.
    fn wait(&mut self) -> ExitStatus {
        self.wait_within(DEADLINE)
    }

    /// Waits up to `limit` for the example to exit on its own.
    fn wait_within(&mut self, limit: Duration) -> ExitStatus {
        let start = Instant::now();
        let child = self.child.as_mut().unwrap();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status;
            }
            assert!(start.elapsed() < limit, "the example did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The LSN at the end of the last line of stdout, which must start with `prefix`.
    fn final_lsn(&self, prefix: &str) -> Lsn {
        let out = self.stdout();
        let last = out.lines().last().unwrap_or_default();
        let lsn = last.strip_prefix(prefix);
        lsn.and_then(|l| l.parse().ok())
            .unwrap_or_else(|| panic!("the last line is not {prefix:?} and an LSN: {last:?}"))
    }
}

impl Drop for Example {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("stdout:\n{}\nstderr:\n{}", self.stdout(), self.stderr());
        }
    }
}

fn path(p: &Path) -> String {
    p.to_str().unwrap().to_owned()
}

/// The end of the segment named `name`.
fn segment_end(name: &str, size: WalSegmentSize) -> Lsn {
    let segment = SegmentName::parse(name, size).unwrap();
    size.start_of(segment.segno.next().unwrap()).unwrap()
}

#[test]
fn embed_relay_stores_what_the_primary_archives_and_stops_on_ctrl_c() {
    let Some(bins) = require_postgres() else {
        return;
    };
    let dir = support::scratch(&bins, "example-embed");
    let primary = support::archiving_primary(&bins, dir.path(), 1);
    let size = primary.wal_segment_size().unwrap();
    let data_dir = dir.path().join("relay");
    let listen = "127.0.0.1:0".to_owned();
    let args = [primary.conninfo(), path(&data_dir), listen, "300".into()];
    let mut relay = Example::start("embed_relay", &args, dir.path());
    relay.wait_line("serving standbys on 127.0.0.1:");
    let system = primary.system_id().unwrap();
    relay.wait_line(&format!("upstream system {system} timeline 1 written "));
    wait_until(DEADLINE, "the relay to stream", || {
        Ok(support::acked_flush(&primary, "walrelay").is_some())
    })
    .unwrap();

    primary.write_load(500).unwrap();
    let switch = primary.switch_wal().unwrap();
    let archived = primary.wait_archived(switch, DEADLINE).unwrap();
    let name = archived.file_name().unwrap().to_str().unwrap().to_owned();
    let ours = data_dir.join("wal").join(&name);
    wait_until(DEADLINE, "the relay's copy of the segment", || {
        Ok(fs::metadata(&ours).is_ok_and(|m| m.len() == size.bytes_u64()))
    })
    .unwrap();
    assert!(fs::read(&ours).unwrap() == fs::read(&archived).unwrap());
    support::assert_same_segments(&data_dir.join("wal"), &primary.archive_dir(), size);

    support::signal_pid(relay.pid(), "INT");
    let status = relay.wait();
    assert!(status.success(), "{status}");
    assert!(relay.final_lsn("stopped at durable ") >= segment_end(&name, size));
}

#[test]
fn tail_wal_validates_up_to_a_flushed_position() {
    let Some(bins) = require_postgres() else {
        return;
    };
    let dir = support::scratch(&bins, "example-tail");
    let primary = support::archiving_primary(&bins, dir.path(), 1);
    let size = primary.wal_segment_size().unwrap();
    primary.write_load(300).unwrap();
    let flushed = primary.current_wal_flush_lsn().unwrap();
    let args = [primary.conninfo(), flushed.to_string()];
    let mut tail = Example::start("tail_wal", &args, dir.path());
    let status = tail.wait();
    assert!(status.success(), "{status}");

    let boundary = tail.final_lsn("last record boundary ");
    assert!(boundary >= flushed, "{boundary} < {flushed}");
    assert!(boundary <= primary.current_wal_flush_lsn().unwrap());
    // The pieces follow each other from the start of a segment to at least the boundary.
    let out = tail.stdout();
    let ranges: Vec<(Lsn, Lsn)> = out
        .lines()
        .filter_map(|l| {
            l.strip_prefix("received ")?
                .split(',')
                .next()?
                .split_once("..")
        })
        .map(|(from, to)| (from.parse().unwrap(), to.parse().unwrap()))
        .collect();
    let (first, last) = (ranges.first().unwrap(), ranges.last().unwrap());
    assert_eq!(first.0, size.segment_start(flushed));
    assert!(ranges.windows(2).all(|w| w[0].1 == w[1].0), "{out}");
    assert!(last.1 >= boundary);
}

#[test]
fn tail_wal_exits_non_zero_on_a_record_with_a_bad_crc() {
    // Segment 0/7 of timeline 1 captured from a PostgreSQL 15 primary with 1 MB segments.
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/wal");
    let segment = fs::read(data.join("000000010000000000000007")).unwrap();
    let system_id = u64::from_le_bytes(segment[24..32].try_into().unwrap());
    let wal = Wal {
        start: Lsn(0x70_0000),
        bytes: segment.into(),
    };
    // The last byte of a record that lies inside the second 128 kB piece, flipped.
    let fault_at = Lsn(0x72_0000);
    let piece_end = Lsn(fault_at.0 + CHUNK as u64);
    let listing = fs::read_to_string(data.join("records.txt")).unwrap();
    let (start, len) = listing
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some((
                f.next()?.parse::<Lsn>().ok()?,
                f.next()?.parse::<u64>().ok()?,
            ))
        })
        .find(|(start, len)| *start > fault_at && start.0 + len < piece_end.0 && *len > 64)
        .unwrap();
    let mut piece = wal.range(fault_at, piece_end).to_vec();
    piece[(start.0 + len - 1 - fault_at.0) as usize] ^= 0x55;
    let mut script = Script::serving(system_id, wal.clone());
    script.start = Start::CopyBoth(Stream::Wal {
        wal: wal.clone(),
        chunk: CHUNK,
        fault: Some((fault_at, Fault::Data(piece.into()))),
    });
    let fake = FakeUpstream::start(script);

    let dir = tempfile::tempdir().unwrap();
    let args = [fake.conninfo("sslmode=disable"), wal.end().to_string()];
    let mut tail = Example::start("tail_wal", &args, dir.path());
    let status = tail.wait();
    assert!(!status.success(), "{status}");
    let expected = format!("invalid WAL in {fault_at}..{piece_end}");
    assert!(tail.stderr().contains(&expected), "{}", tail.stderr());
    let out = tail.stdout();
    assert!(
        out.contains(&format!("received 0/700000..{fault_at}, ")),
        "{out}"
    );
    assert!(!out.contains("last record boundary"), "{out}");
}

#[test]
fn archive_segments_writes_the_switched_segment_as_the_primary_archives_it() {
    let Some(bins) = require_postgres() else {
        return;
    };
    let dir = support::scratch(&bins, "example-archive");
    let primary = support::archiving_primary(&bins, dir.path(), 1);
    let size = primary.wal_segment_size().unwrap();
    primary.write_load(100).unwrap();
    let flushed = primary.current_wal_flush_lsn().unwrap();
    // Stop once the segment holding `flushed` is archived.
    let stop = Lsn(size.segment_start(flushed).0 + size.bytes_u64());
    let (data_dir, archive) = (dir.path().join("relay"), dir.path().join("copies"));
    let args = [
        primary.conninfo(),
        path(&data_dir),
        path(&archive),
        stop.to_string(),
        "300".into(),
    ];
    let mut archiver = Example::start("archive_segments", &args, dir.path());
    let from: Lsn = archiver.wait_line("archiving from ").parse().unwrap();

    let switch = primary.switch_wal().unwrap();
    let theirs = primary.wait_archived(switch, DEADLINE).unwrap();
    let status = archiver.wait();
    assert!(status.success(), "{status}");
    let name = theirs.file_name().unwrap().to_str().unwrap().to_owned();
    assert_eq!(
        from,
        size.segment_start(switch),
        "the relay started elsewhere"
    );
    // That segment and nothing else: no other segment, no temporary file.
    let files: Vec<String> = fs::read_dir(&archive)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(files, [name.as_str()]);
    assert!(fs::read(archive.join(&name)).unwrap() == fs::read(&theirs).unwrap());
    assert!(
        archiver
            .stdout()
            .contains(&format!("archived {name}, WAL up to {stop}"))
    );
    bins.waldump(&archive, TimelineId::ONE, from, switch)
        .unwrap();
}

#[test]
fn fanout_bench_smoke_runs_every_part_and_cleans_up() {
    let Some(bins) = require_postgres() else {
        return;
    };
    let dir = support::scratch(&bins, "example-fanout");
    let relay_wal = dir.path().join("relay-wal");
    let args = [
        "--smoke".to_owned(),
        "--walrelay".into(),
        env!("CARGO_BIN_EXE_walrelay").into(),
        "--relay-dir".into(),
        relay_wal.display().to_string(),
    ];
    let mut bench = Example::start("fanout_bench", &args, dir.path());
    // Its clusters go under the temporary directory (a deeper one would make their sockets'
    // paths too long), in `walrelay-fanout-bench-PID-…`.
    let leftover = format!("walrelay-fanout-bench-{}-", bench.pid());
    let status = bench.wait_within(Duration::from_secs(180));
    assert!(status.success(), "{status}\n{}", bench.stderr());

    let report: serde_json::Value = serde_json::from_str(&bench.stdout()).unwrap();
    let cases = report["fanout"].as_array().unwrap();
    // Three servers, groups of 0 and 1 standby, two loads.
    assert_eq!(cases.len(), 12, "{report:#}");
    // The disk written is counted wherever the clusters live on a block device.
    let on_tmpfs = Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(std::env::temp_dir())
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "tmpfs");
    for case in cases {
        let times = case["standby_received_s"].as_array().unwrap();
        assert_eq!(times.len() as u64, case["standbys"].as_u64().unwrap());
        assert!(times.iter().all(|t| t.as_f64().is_some()), "{case:#}");
        let wal = case["wal_bytes"].as_u64().unwrap();
        assert!(wal > 0);
        if !on_tmpfs {
            let written = case["disk_written_bytes"].as_u64().unwrap_or(0);
            assert!(written >= wal, "the primary's WAL alone is more: {case:#}");
        }
        if case["mode"] == "relay" {
            // The send CPU of its worker threads needs their name as `/proc` gives it.
            let threads = case["server"]["cpu_by"].as_object().unwrap();
            assert!(threads.contains_key("tokio-rt-worker"), "{threads:?}");
        }
    }
    let clients = report["clients"].as_array().unwrap();
    assert_eq!(clients.len(), 2);
    for case in clients {
        let times = case["client_received_s"].as_array().unwrap();
        assert_eq!(times.len() as u64, case["clients"].as_u64().unwrap());
        assert!(times.iter().all(|t| t.as_f64().is_some()), "{case:#}");
    }
    for path in ["relay", "direct"] {
        assert!(report["latency"][path]["samples"].as_u64().unwrap() > 0);
    }
    assert_eq!(report["disk"]["passes"].as_array().unwrap().len(), 3);
    let ingest = &report["derived"]["ingest"];
    assert!(ingest["disk_mib_s"].as_f64().unwrap() > 0.0, "{ingest:#}");
    assert!(
        ingest["catching_up"]["relay_over_disk"].as_f64().is_some(),
        "{ingest:#}"
    );
    // The relay caught up WAL written while it was stopped, and so did pg_receivewal.
    let catchup = &report["catchup"];
    for bytes in ["relay_bytes", "receivewal_bytes"] {
        assert!(catchup[bytes].as_u64().unwrap() >= 8 << 20, "{catchup:#}");
    }
    assert!(catchup["relay"]["cpu_s"].as_f64().is_some(), "{catchup:#}");
    let tables = bench.stderr();
    assert!(tables.contains("relay, catching up"), "{tables}");
    for heading in [
        "WAL-only load",
        "Table-writing load",
        "Ingest with no downstream",
    ] {
        assert!(tables.contains(heading), "{tables}");
    }
    assert!(
        tables.contains("Lightweight clients on one relay"),
        "{tables}"
    );
    assert!(tables.contains("Flush → received latency"), "{tables}");
    // Every directory it made is gone (its servers are stopped before their directories go).
    let left: Vec<String> = fs::read_dir(std::env::temp_dir())
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| name.starts_with(&leftover))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    // The relays kept their WAL where `--relay-dir` said, and it is gone too.
    assert_eq!(
        report["config"]["relay_dir"].as_str(),
        Some(relay_wal.to_str().unwrap())
    );
    assert!(relay_wal.is_dir(), "the relays' WAL went elsewhere");
    assert_eq!(fs::read_dir(&relay_wal).unwrap().count(), 0);
}
