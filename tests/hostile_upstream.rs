//! The relay's receiver against a hostile or buggy upstream (ACCEPTANCE.md §2.6): a fake
//! walsender that answers in ways PostgreSQL never would. In every case the relay must end
//! the connection with a clear logged error, never panic, stay up and reconnect with backoff,
//! and store nothing that is not valid WAL of its own system: XLogData that skips, overlaps or
//! steps back, bytes that are not WAL, plaintext after `S`, another system identifier or
//! segment size, history file names with path characters, huge SCRAM iteration counts,
//! frames that stall halfway, and malformed stream messages.
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

mod fake_upstream;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use fake_upstream::*;
use walrelay::types::Lsn;
use walrelay::wire::backend::CopyResponse;
use walrelay::wire::{Authentication, BackendMessage, ErrorFields};

/// Connection options of a plaintext upstream.
const PLAIN: &str = "sslmode=disable";
/// Where the captured WAL begins: segment 7 of timeline 1, 1 MiB segments.
const WAL_START: Lsn = Lsn(0x70_0000);
/// The first segment's file name.
const SEG7: &str = "000000010000000000000007";
/// The end of the last record in the captured WAL (an XLOG_SWITCH at 0/B00098).
const LAST_RECORD_END: Lsn = Lsn(0xB0_00B0);
/// Where the tests put a fault: after the first 128 KiB chunk.
const FAULT_AT: Lsn = Lsn(0x72_0000);
/// How long a refusal and the reconnect after it may take.
const DEADLINE: Duration = Duration::from_secs(15);

/// The captured segments, consecutive.
const SEGMENTS: [&str; 5] = [
    SEG7,
    "000000010000000000000008",
    "000000010000000000000009",
    "00000001000000000000000A",
    "00000001000000000000000B",
];

fn data_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/wal")
        .join(name)
}

/// Segments 7 to B of timeline 1 captured from a PostgreSQL 15 primary with 1 MiB segments.
fn real_wal() -> Wal {
    let bytes: Vec<u8> = SEGMENTS
        .iter()
        .flat_map(|name| fs::read(data_file(name)).unwrap())
        .collect();
    Wal {
        start: WAL_START,
        bytes: bytes.into(),
    }
}

/// `xlp_sysid` from the long page header that starts the first segment.
fn system_id(wal: &Wal) -> u64 {
    u64::from_le_bytes(wal.bytes[24..32].try_into().unwrap())
}

/// A well-behaved upstream serving the captured WAL.
fn good_script() -> Script {
    let wal = real_wal();
    Script::serving(system_id(&wal), wal)
}

/// A script serving the captured WAL in chunks of `chunk` bytes, with `fault`.
fn streaming(chunk: usize, fault: Option<(Lsn, Fault)>) -> Script {
    let wal = real_wal();
    let mut script = Script::serving(system_id(&wal), wal.clone());
    script.start = Start::CopyBoth(Stream::Wal { wal, chunk, fault });
    script
}

/// A script whose stream has `fault` at `at`.
fn faulty(at: Lsn, fault: Fault) -> Script {
    streaming(CHUNK, Some((at, fault)))
}

/// A `walrelay run` child process logging to a file; killed on drop.
struct RelayProcess {
    child: Child,
    data_dir: PathBuf,
    log: PathBuf,
}

impl RelayProcess {
    fn start(upstream: &str, data_dir: &Path, extra: &[&str]) -> RelayProcess {
        let log = data_dir.with_extension("log");
        let out = fs::File::create(&log).unwrap();
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
            .env("WALRELAY_LOG", "debug")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        RelayProcess {
            child,
            data_dir: data_dir.to_owned(),
            log,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log_contents(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().unwrap()
    }

    fn wal_dir(&self) -> PathBuf {
        self.data_dir.join("wal")
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("relay log {}:\n{}", self.log.display(), self.log_contents());
        }
    }
}

/// A fake upstream and a relay process streaming from it into a fresh directory.
struct Run {
    relay: RelayProcess,
    fake: FakeUpstream,
    _dir: tempfile::TempDir,
}

fn run(script: Script, conn_options: &str, args: &[&str]) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeUpstream::start(script);
    let relay = RelayProcess::start(
        &fake.conninfo(conn_options),
        &dir.path().join("relay"),
        args,
    );
    Run {
        relay,
        fake,
        _dir: dir,
    }
}

impl Run {
    /// Waits until the relay has logged `error` and connected again after connection
    /// `after`; checks it neither panicked nor exited.
    /// Returns the connections after `after` that have ended, at least two.
    fn expect_refused_after(&mut self, after: usize, error: &str) -> Vec<Session> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            self.assert_healthy();
            let sessions = self.fake.sessions();
            let ended: Vec<Session> = sessions
                .iter()
                .skip(after)
                .filter(|s| s.closed)
                .cloned()
                .collect();
            if self.relay.log_contents().contains(error) && ended.len() >= 2 {
                return ended;
            }
            assert!(
                Instant::now() < deadline,
                "relay did not log {error:?} and reconnect; sessions: {sessions:#?}\nlog:\n{}",
                self.relay.log_contents()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn expect_refused(&mut self, error: &str) -> Vec<Session> {
        self.expect_refused_after(0, error)
    }

    /// The relay runs and has not panicked.
    fn assert_healthy(&mut self) {
        let log = self.relay.log_contents();
        assert!(!log.contains("panicked"), "relay panicked:\n{log}");
        assert!(self.relay.exited().is_none(), "relay exited:\n{log}");
    }

    fn data_dir(&self) -> &Path {
        &self.relay.data_dir
    }

    fn wal_dir(&self) -> PathBuf {
        self.relay.wal_dir()
    }

    /// Every file in the WAL directory with its content.
    fn stored(&self) -> BTreeMap<String, Vec<u8>> {
        let Ok(entries) = fs::read_dir(self.wal_dir()) else {
            return BTreeMap::new();
        };
        entries
            .map(|e| e.unwrap().path())
            .map(|p| {
                (
                    p.file_name().unwrap().to_string_lossy().into_owned(),
                    fs::read(&p).unwrap(),
                )
            })
            .collect()
    }

    /// A segment's bytes, complete or partial; empty if it does not exist.
    fn segment(&self, name: &str) -> Vec<u8> {
        let stored = self.stored();
        stored
            .get(name)
            .or_else(|| stored.get(&format!("{name}.partial")))
            .cloned()
            .unwrap_or_default()
    }

    /// Nothing was initialised or stored: no state file, no WAL.
    fn assert_nothing_stored(&self) {
        assert!(
            !self.data_dir().join("walrelay.state").exists(),
            "state file written"
        );
        assert_eq!(
            self.stored().values().map(Vec::len).sum::<usize>(),
            0,
            "WAL stored: {:?}",
            self.stored().keys()
        );
    }

    /// Waits until the relay has reported everything the fake serves as written, and as
    /// flushed up to the end of the last record.
    fn wait_all_stored(&self) -> Vec<Session> {
        let end = real_wal().end();
        self.fake
            .wait("the relay to store all served WAL", DEADLINE, |s| {
                s.iter()
                    .any(|s| s.max_write() >= end && s.max_flush() >= LAST_RECORD_END)
            })
    }
}

fn never_started_streaming(sessions: &[Session]) {
    for s in sessions {
        assert!(!s.asked("START_REPLICATION"), "streaming started: {s:#?}");
    }
}

/// Deterministic bytes that are not WAL.
fn noise(len: usize) -> Bytes {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut out = BytesMut::with_capacity(len);
    for _ in 0..len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.put_u8(x as u8);
    }
    out.freeze()
}

// 1. Happy path.

/// Streams the captured WAL in chunks of `chunk` bytes; the relay must store it unchanged
/// and report it written and flushed.
fn stored_byte_identical(chunk: usize) {
    let wal = real_wal();
    let mut run = run(streaming(chunk, None), PLAIN, &[]);
    let sessions = run.wait_all_stored();
    let first = &sessions[0];
    assert_eq!(
        first.start_lsn(),
        Some(WAL_START),
        "first start is the segment start of xlogpos"
    );
    for (k, v) in [
        ("user", "u"),
        ("database", "replication"),
        ("replication", "true"),
    ] {
        assert!(
            first.startup.contains(&(k.into(), v.into())),
            "startup lacks {k}={v}: {:?}",
            first.startup
        );
    }
    for s in sessions.iter().flat_map(|s| &s.statuses) {
        assert!(
            s.flush <= s.write && s.write <= wal.end(),
            "status beyond what was sent: {s:?}"
        );
    }
    assert_eq!(
        sessions.len(),
        1,
        "a well-behaved upstream needs one connection"
    );
    let stored = run.stored();
    for (i, name) in SEGMENTS.iter().enumerate() {
        let last = i + 1 == SEGMENTS.len();
        let ours = if last {
            run.segment(name)
        } else {
            stored.get(*name).cloned().unwrap_or_default()
        };
        assert!(
            ours == fs::read(data_file(name)).unwrap(),
            "{name} differs from the captured segment"
        );
    }
    run.assert_healthy();
}

#[test]
fn real_wal_is_stored_byte_identical_and_flush_reported() {
    stored_byte_identical(CHUNK);
}

#[test]
fn xlogdata_crossing_segment_boundaries_is_split_correctly() {
    stored_byte_identical(100_000);
}

// 2. XLogData that does not continue where the last one ended.

/// The relay must abort at the bad chunk, keep what came before it, and resume there.
fn discontinuity(fault: Fault, error: &str) {
    let wal = real_wal();
    let mut run = run(faulty(FAULT_AT, fault), PLAIN, &[]);
    run.expect_refused(error);
    run.fake
        .wait("a reconnect resuming at the stored end", DEADLINE, |s| {
            s.iter().skip(1).any(|s| s.start_lsn() == Some(FAULT_AT))
        });
    assert!(
        run.segment(SEG7) == wal.range(WAL_START, FAULT_AT),
        "stored WAL is not the prefix before the fault"
    );
    run.assert_healthy();
}

#[test]
fn xlogdata_gap_aborts() {
    discontinuity(
        Fault::Skip(8192),
        "got WAL data at 0/722000, expected 0/720000",
    );
}

#[test]
fn xlogdata_overlap_aborts() {
    discontinuity(
        Fault::Rewind(8192),
        "got WAL data at 0/71E000, expected 0/720000",
    );
}

#[test]
fn xlogdata_backwards_step_aborts() {
    discontinuity(
        Fault::Rewind(0x2_0000),
        "got WAL data at 0/700000, expected 0/720000",
    );
}

// 3. Bytes that are not valid WAL.

#[test]
fn random_bytes_in_xlogdata_are_not_stored() {
    let wal = real_wal();
    let mut run = run(faulty(FAULT_AT, Fault::Data(noise(CHUNK))), PLAIN, &[]);
    run.expect_refused("invalid WAL from upstream, not stored");
    assert!(
        run.segment(SEG7) == wal.range(WAL_START, FAULT_AT),
        "noise reached the store"
    );
    run.assert_healthy();
}

#[test]
fn random_bytes_as_the_first_chunk_are_not_stored() {
    let mut run = run(faulty(WAL_START, Fault::Data(noise(CHUNK))), PLAIN, &[]);
    run.expect_refused("invalid WAL from upstream, not stored");
    assert!(run.segment(SEG7).is_empty(), "noise reached the store");
    run.assert_healthy();
}

/// A record that lies wholly inside `[from, to)`, from the pg_waldump listing: (start, length).
fn record_within(from: Lsn, to: Lsn) -> (Lsn, u64) {
    let listing = fs::read_to_string(data_file("records.txt")).unwrap();
    listing
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some((
                f.next()?.parse::<Lsn>().ok()?,
                f.next()?.parse::<u64>().ok()?,
            ))
        })
        .find(|(start, len)| *start > from && start.0 + len < to.0 && *len > 64)
        .unwrap()
}

#[test]
fn record_with_a_bad_crc_is_not_stored() {
    let wal = real_wal();
    let chunk_end = Lsn(FAULT_AT.0 + CHUNK as u64);
    let (start, len) = record_within(FAULT_AT, chunk_end);
    let mut chunk = wal.range(FAULT_AT, chunk_end).to_vec();
    chunk[(start.0 + len - 1 - FAULT_AT.0) as usize] ^= 0x55;
    let mut run = run(faulty(FAULT_AT, Fault::Data(chunk.into())), PLAIN, &[]);
    run.expect_refused("invalid WAL from upstream, not stored");
    assert!(
        run.segment(SEG7) == wal.range(WAL_START, FAULT_AT),
        "the corrupt record reached the store"
    );
    run.assert_healthy();
}

// 4. The answer to SSLRequest.

/// Checks that nothing but a TLS handshake followed an SSL answer other than `N`.
fn no_plaintext_after_ssl_answer(sessions: &[Session]) {
    for s in sessions.iter().filter(|s| s.ssl_requested) {
        assert!(
            s.startup.is_empty() && s.queries.is_empty() && s.passwords.is_empty(),
            "plaintext login after the SSL answer: {s:#?}"
        );
        assert!(
            s.after_ssl.first().is_none_or(|b| *b == 0x16),
            "not a TLS handshake after the SSL answer: {s:#?}"
        );
    }
}

#[test]
fn ssl_s_followed_by_plaintext_is_refused() {
    let mut script = good_script();
    let mut answer = BytesMut::from(&b"S"[..]);
    answer.put(auth(Authentication::Ok));
    answer.put(ready("15.18"));
    script.ssl_answer = answer.freeze();
    let mut run = run(script, "sslmode=prefer", &[]);
    let sessions = run.expect_refused("SSL error");
    no_plaintext_after_ssl_answer(&sessions);
    assert!(
        sessions.iter().any(|s| s.ssl_requested),
        "no SSLRequest with sslmode=prefer"
    );
    run.assert_healthy();
}

fn ssl_answer_refused(answer: Bytes, sslmode: &str, error: &str) {
    let mut script = good_script();
    script.ssl_answer = answer;
    let mut run = run(script, sslmode, &[]);
    let sessions = run.expect_refused(error);
    assert!(
        sessions.iter().all(|s| s.ssl_requested),
        "connected without SSLRequest: {sessions:#?}"
    );
    no_plaintext_after_ssl_answer(&sessions);
    for s in &sessions {
        assert!(
            s.after_ssl.is_empty() && s.startup.is_empty(),
            "the relay went on after {error:?}: {s:#?}"
        );
    }
    run.assert_nothing_stored();
}

#[test]
fn ssl_e_answer_is_refused() {
    let e = message(BackendMessage::ErrorResponse(ErrorFields::new(
        "FATAL",
        "08P01",
        "unsupported frontend protocol",
    )));
    ssl_answer_refused(
        e,
        "sslmode=prefer",
        "received invalid response to SSL negotiation: 'E'",
    );
}

#[test]
fn ssl_other_byte_is_refused() {
    ssl_answer_refused(
        Bytes::from_static(b"X"),
        "sslmode=prefer",
        "received invalid response to SSL negotiation: 'X'",
    );
}

#[test]
fn ssl_n_when_required_is_refused() {
    ssl_answer_refused(
        Bytes::from_static(b"N"),
        "sslmode=require",
        "server does not support SSL, but SSL was required",
    );
}

// 5. IDENTIFY_SYSTEM.

#[test]
fn another_system_identifier_is_refused_and_nothing_stored() {
    let wal = real_wal();
    let mut run = run(good_script(), PLAIN, &[]);
    run.wait_all_stored();
    let before = run.stored();
    let served = run.fake.sessions().len();
    let mut other = good_script();
    other.identify = identify(&(system_id(&wal) + 1).to_string(), "1", "0/708000");
    run.fake.replace(other);
    let sessions = run.expect_refused_after(served, "database system identifier differs");
    never_started_streaming(&sessions);
    assert!(
        run.stored() == before,
        "the store changed after the other system connected"
    );
    run.assert_healthy();
}

#[test]
fn malformed_identify_system_is_refused() {
    let sysid = system_id(&real_wal()).to_string();
    let cols = ["systemid", "timeline", "xlogpos", "dbname"];
    let row = vec![Some(sysid.as_str()), Some("1"), Some("0/708000"), None];
    let cases = [
        (
            identify("banana", "1", "0/708000"),
            "invalid systemid in server response: \"banana\"",
        ),
        (
            identify("-1", "1", "0/708000"),
            "invalid systemid in server response: \"-1\"",
        ),
        (
            identify(&sysid, "0", "0/708000"),
            "invalid timeline in server response: \"0\"",
        ),
        (
            identify(&sysid, "1", "garbage"),
            "invalid xlogpos in server response: \"garbage\"",
        ),
        (
            result(&cols[..2], &[row[..2].to_vec()]),
            "got 1 rows and 2 fields",
        ),
        (result(&cols, &[]), "got 0 rows and 4 fields"),
        (
            result(&cols, &[row.clone(), row.clone()]),
            "got 2 rows and 4 fields",
        ),
    ];
    for (answer, error) in cases {
        let mut script = good_script();
        script.identify = answer;
        let mut run = run(script, PLAIN, &[]);
        let sessions = run.expect_refused(error);
        never_started_streaming(&sessions);
        assert!(
            sessions.iter().all(|s| !s.asked("SHOW")),
            "went on after a bad IDENTIFY_SYSTEM"
        );
        run.assert_nothing_stored();
        run.assert_healthy();
    }
}

// 6. SHOW wal_segment_size.

#[test]
fn invalid_segment_size_is_refused() {
    for value in ["17MB", "0", "banana", "3MB", "2GB", ""] {
        let mut script = good_script();
        script.show_segment_size = show(value);
        let mut run = run(script, PLAIN, &[]);
        let error = format!("invalid wal_segment_size in server response: \"{value}\"");
        let sessions = run.expect_refused(&error);
        never_started_streaming(&sessions);
        run.assert_nothing_stored();
        run.assert_healthy();
    }
}

#[test]
fn another_segment_size_is_refused_and_nothing_stored() {
    let mut run = run(good_script(), PLAIN, &[]);
    run.wait_all_stored();
    let before = run.stored();
    let served = run.fake.sessions().len();
    let mut other = good_script();
    other.show_segment_size = show("16MB");
    run.fake.replace(other);
    let sessions = run.expect_refused_after(served, "WAL segment size differs");
    never_started_streaming(&sessions);
    assert!(
        run.stored() == before,
        "the store changed after the other segment size"
    );
    run.assert_healthy();
}

// 7. TIMELINE_HISTORY.

const HISTORY: &[u8] = b"1\t0/700000\tno recovery target specified\n";

fn bad_history(answer: Bytes, error: &str) -> Run {
    let mut script = good_script();
    script.identify = identify(&system_id(&real_wal()).to_string(), "2", "0/708000");
    script.timeline_history = answer;
    let mut run = run(script, PLAIN, &[]);
    let sessions = run.expect_refused(error);
    assert!(
        sessions.iter().all(|s| s.asked("TIMELINE_HISTORY 2")),
        "history of timeline 2 not asked for: {sessions:#?}"
    );
    never_started_streaming(&sessions);
    assert!(
        !run.stored().keys().any(|k| k.ends_with(".history")),
        "history stored: {:?}",
        run.stored().keys()
    );
    run.assert_healthy();
    run
}

#[test]
fn history_file_name_with_path_characters_is_refused() {
    let escape = format!(
        "../../../../tmp/walrelay-hostile-{}.history",
        std::process::id()
    );
    let run = bad_history(
        history(&escape, HISTORY),
        "primary reported unexpected file name for timeline history file of timeline 2",
    );
    assert!(
        !run.wal_dir().join(&escape).exists(),
        "a file was written outside the data directory"
    );
    assert!(
        !Path::new("/tmp")
            .join(Path::new(&escape).file_name().unwrap())
            .exists()
    );
}

#[test]
fn history_file_of_another_timeline_is_refused() {
    bad_history(
        history("00000003.history", HISTORY),
        "unexpected file name for timeline history file of timeline 2",
    );
}

#[test]
fn unparsable_history_is_refused() {
    bad_history(
        history("00000002.history", b"this is not a history file\n"),
        "syntax error in history file at line 1",
    );
}

#[test]
fn history_with_nul_bytes_is_refused() {
    let mut content = HISTORY.to_vec();
    content.extend_from_slice(b"\0\0\0");
    bad_history(
        history("00000002.history", &content),
        "history file contains a NUL byte",
    );
}

#[test]
fn history_with_timelines_out_of_order_is_refused() {
    let content = b"1\t0/700000\tx\n\n1\t0/800000\ty\n";
    bad_history(
        history("00000002.history", content),
        "timeline IDs must be in increasing sequence",
    );
}

// 8. Authentication.

/// CPU seconds (user and system) the process has used.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}

const SALT: &str = "c2FsdHNhbHRzYWx0c2FsdA==";

#[test]
fn scram_iteration_count_beyond_the_cap_is_refused_quickly() {
    for iterations in ["1000000000", "0", "-1", "4294967297"] {
        let mut script = good_script();
        script.auth = Auth::Scram {
            server_first: format!("r={{nonce}}srv,s={SALT},i={iterations}"),
            then: Bytes::new(),
        };
        let mut run = run(script, "sslmode=disable password=secret", &[]);
        let sessions =
            run.expect_refused(&format!("invalid SCRAM iteration count \"{iterations}\""));
        for s in &sessions {
            assert!(
                s.passwords.len() <= 1,
                "the relay answered the server-first-message: {s:#?}"
            );
        }
        let cpu = cpu_seconds(run.relay.pid());
        assert!(cpu < 1.0, "the relay used {cpu} s of CPU on i={iterations}");
        assert!(
            !run.relay.log_contents().contains("secret"),
            "password in the log"
        );
        run.assert_nothing_stored();
        run.assert_healthy();
    }
}

#[test]
fn scram_nonce_not_extending_ours_is_refused() {
    let mut script = good_script();
    script.auth = Auth::Scram {
        server_first: format!("r=notyournonce,s={SALT},i=4096"),
        then: Bytes::new(),
    };
    let mut run = run(script, "sslmode=disable password=secret", &[]);
    let sessions = run.expect_refused("malformed SCRAM message (nonce mismatch)");
    assert!(
        sessions.iter().all(|s| s.passwords.len() <= 1),
        "the relay answered a bad server-first-message"
    );
    run.assert_healthy();
}

#[test]
fn authentication_ok_without_a_challenge_is_accepted() {
    let mut run = run(good_script(), "sslmode=disable password=secret", &[]);
    let sessions = run.fake.wait("START_REPLICATION", DEADLINE, |s| {
        s.iter().any(|s| s.asked("START_REPLICATION"))
    });
    assert!(
        sessions.iter().all(|s| s.passwords.is_empty()),
        "a password was sent unasked"
    );
    run.assert_healthy();
}

#[test]
fn unknown_authentication_code_is_refused() {
    let mut script = good_script();
    script.auth = Auth::Raw(auth(Authentication::Unknown(99)));
    let mut run = run(script, PLAIN, &[]);
    let sessions = run.expect_refused("authentication method 99 not supported");
    assert!(
        sessions
            .iter()
            .all(|s| s.passwords.is_empty() && s.queries.is_empty())
    );
    run.assert_nothing_stored();
}

#[test]
fn cleartext_password_over_plaintext_is_never_sent() {
    let mut script = good_script();
    script.auth = Auth::Raw(auth(Authentication::CleartextPassword));
    let mut run = run(script, "sslmode=disable password=secret", &[]);
    let sessions =
        run.expect_refused("server requested a cleartext password over an unencrypted connection");
    for s in &sessions {
        assert!(s.passwords.is_empty(), "the password was sent: {s:#?}");
    }
    assert!(
        !run.relay.log_contents().contains("secret"),
        "password in the log"
    );
    run.assert_nothing_stored();
}

// 9. Stalls: the relay must time out on its own clock.

#[test]
fn half_a_frame_while_streaming_times_out() {
    let mut script = good_script();
    script.start = Start::CopyBoth(Stream::Raw(Bytes::from_static(
        b"d\x00\x00\x10\x00w\x00\x00",
    )));
    let mut run = run(script, PLAIN, &["--receive-timeout", "2s"]);
    run.expect_refused("terminating replication connection due to timeout");
}

#[test]
fn half_a_frame_during_login_times_out() {
    let mut script = good_script();
    script.auth = Auth::Raw(Bytes::from_static(b"R\x00\x00\x00"));
    let mut run = run(script, "sslmode=disable connect_timeout=2", &[]);
    let sessions = run.expect_refused("timeout expired while connecting to the upstream");
    assert!(sessions.iter().all(|s| s.queries.is_empty()));
}

/// Half a RowDescription: a frame that never completes.
const HALF_FRAME: &[u8] = b"T\x00\x00\x00\x40\x00";

/// After the login, a command answered with half a frame and silence: the relay must give up
/// on its own clock (its receive timeout or login deadline) and reconnect.
#[test]
fn half_a_frame_in_a_command_answer_times_out() {
    let stalled_identify = Script {
        identify: Bytes::from_static(HALF_FRAME),
        ..good_script()
    };
    let stalled_start = Script {
        start: Start::Raw(Bytes::from_static(HALF_FRAME)),
        ..good_script()
    };
    for (what, script) in [
        ("IDENTIFY_SYSTEM", stalled_identify),
        ("START_REPLICATION", stalled_start),
    ] {
        let args = ["--receive-timeout", "2s"];
        let mut run = run(script, "sslmode=disable connect_timeout=2", &args);
        run.fake.wait(
            &format!("a reconnect after the stalled {what}"),
            DEADLINE,
            |s| s.len() >= 2 && s[0].closed,
        );
        run.assert_healthy();
        assert!(run.segment(SEG7).is_empty(), "WAL stored");
    }
}

// 10. Malformed answers to START_REPLICATION and stream messages.

fn bad_stream(start: Start, error: &str) -> Run {
    let mut script = good_script();
    script.start = start;
    let mut run = run(script, PLAIN, &[]);
    run.expect_refused(error);
    assert!(
        run.segment(SEG7).is_empty(),
        "WAL stored from a broken stream"
    );
    run.assert_healthy();
    run
}

#[test]
fn copy_out_instead_of_copy_both_is_refused() {
    let copy_out = message(BackendMessage::CopyOutResponse(CopyResponse::default()));
    bad_stream(
        Start::Raw(copy_out),
        "expected CopyBothResponse, got message type 'H'",
    );
}

#[test]
fn keepalive_of_the_wrong_length_is_refused() {
    for len in [17, 19] {
        let mut payload = vec![0u8; len];
        payload[0] = b'k';
        let error = format!("invalid keepalive message: length {len}, expected 18");
        bad_stream(Start::CopyBoth(Stream::Raw(copy_data(&payload))), &error);
    }
}

#[test]
fn unknown_stream_message_type_is_refused() {
    bad_stream(
        Start::CopyBoth(Stream::Raw(copy_data(b"x0123456789"))),
        "unexpected message type",
    );
}

#[test]
fn xlogdata_header_too_short_is_refused() {
    bad_stream(
        Start::CopyBoth(Stream::Raw(copy_data(b"w\x00\x00\x00\x00\x00\x70\x00\x00"))),
        "insufficient data left in message",
    );
}

/// Peak resident memory of a process, in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 1024
}

#[test]
fn frame_of_64_mib_is_refused_without_allocating_it() {
    let len = (64u32 << 20) + 4;
    let mut frame = BytesMut::new();
    frame.put_u8(b'd');
    frame.put_u32(len);
    frame.put_u8(b'w');
    frame.put_slice(&noise(60_000));
    let run = bad_stream(
        Start::CopyBoth(Stream::Raw(frame.freeze())),
        &format!("invalid message length {len}"),
    );
    let peak = peak_rss(run.relay.pid());
    assert!(
        peak < 64 << 20,
        "relay peak RSS {peak} bytes after a 64 MiB frame header"
    );
}

#[test]
fn wal_end_before_data_start_is_refused() {
    let wal = real_wal();
    let bad = xlog_data(WAL_START, Lsn(0x60_0000), &wal.slice(WAL_START, 8192));
    bad_stream(
        Start::CopyBoth(Stream::Raw(bad)),
        "server reported WAL end 0/600000 before data start 0/700000",
    );
}

/// CopyDone right away, then an end-of-timeline result set with these values.
fn end_of_timeline(next_tli: &str, start: &str) -> Start {
    let mut bytes = BytesMut::new();
    bytes.put(message(BackendMessage::CopyDone));
    bytes.put(result(
        &["next_tli", "next_tli_startpos"],
        &[vec![Some(next_tli), Some(start)]],
    ));
    bytes.put(message(BackendMessage::CommandComplete(
        "START_STREAMING".into(),
    )));
    Start::CopyBoth(Stream::Raw(bytes.freeze()))
}

#[test]
fn next_timeline_not_after_the_current_is_refused() {
    bad_stream(
        end_of_timeline("1", "0/700000"),
        "server reported unexpected next timeline 1, following timeline 1",
    );
}

#[test]
fn next_timeline_starting_after_the_stop_is_refused() {
    bad_stream(
        end_of_timeline("2", "0/800000"),
        "server stopped streaming timeline 1 at 0/700000, but reported next timeline 2 to begin at 0/800000",
    );
}

// Session start: what a server sends between AuthenticationOk and ReadyForQuery.

#[test]
fn hostile_session_start_is_refused() {
    let status = |name: &str, value: &str| {
        message(BackendMessage::ParameterStatus {
            name: name.into(),
            value: value.into(),
        })
    };
    let huge = status("x", &"y".repeat(1 << 20));
    let flood: Vec<u8> = (0..10_000)
        .flat_map(|i| status(&format!("p{i}"), "v"))
        .collect();
    let mut bad_ready = ready("15.18").to_vec();
    *bad_ready.last_mut().unwrap() = b'X';
    let short_key = Bytes::from_static(b"K\x00\x00\x00\x08\x00\x00\x00\x01");
    let no_code = Bytes::from_static(b"E\x00\x00\x00\x05\x00");
    let cases: [(Bytes, &str); 5] = [
        (huge, "invalid message length"),
        (flood.into(), "too many messages before ReadyForQuery"),
        (bad_ready.into(), "ReadyForQuery transaction status"),
        (short_key, "BackendKeyData"),
        (no_code, "server refused the connection"),
    ];
    for (ready, error) in cases {
        let mut script = good_script();
        script.ready = ready;
        let mut run = run(script, PLAIN, &[]);
        let sessions = run.expect_refused(error);
        assert!(
            sessions.iter().all(|s| s.queries.is_empty()),
            "commands sent after a bad session start"
        );
        run.assert_nothing_stored();
        run.assert_healthy();
    }
}

// SASL exchanges that go wrong after the server-first-message, or before it.

#[test]
fn hostile_sasl_exchange_is_refused() {
    let scram = |then: Bytes| Auth::Scram {
        server_first: format!("r={{nonce}}srv,s={SALT},i=4096"),
        then,
    };
    let mut sasl_then_final = auth(Authentication::Sasl {
        mechanisms: vec!["SCRAM-SHA-256".into()],
    })
    .to_vec();
    sasl_then_final.extend_from_slice(&auth(Authentication::SaslFinal(Bytes::from_static(
        b"v=AAAA",
    ))));
    let cases = [
        (
            Auth::Raw(auth(Authentication::Sasl { mechanisms: vec![] })),
            "none of the server's SASL authentication mechanisms are supported",
        ),
        (
            Auth::Raw(sasl_then_final.into()),
            "unexpected AuthenticationSASLFinal",
        ),
        (
            scram(auth(Authentication::Ok)),
            "unexpected AuthenticationOk",
        ),
        (
            scram(auth(Authentication::SaslFinal(Bytes::from_static(
                b"v=c2lnbmF0dXJlc2lnbmF0dXJlc2lnbmF0dXJlMTI=",
            )))),
            "incorrect server signature",
        ),
        (
            scram(auth(Authentication::SaslFinal(Bytes::from_static(
                b"e=other-error",
            )))),
            "error received from server in SCRAM exchange: other-error",
        ),
    ];
    for (exchange, error) in cases {
        let mut script = good_script();
        script.auth = exchange;
        let mut run = run(script, "sslmode=disable password=secret", &[]);
        let sessions = run.expect_refused(error);
        assert!(
            sessions.iter().all(|s| s.queries.is_empty()),
            "commands sent after a failed SASL exchange"
        );
        assert!(
            !run.relay.log_contents().contains("secret"),
            "password in the log"
        );
        run.assert_nothing_stored();
        run.assert_healthy();
    }
}
