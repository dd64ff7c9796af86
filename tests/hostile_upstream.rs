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
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use fake_upstream::*;
use walrelay::types::{Lsn, SqlState};
use walrelay::wire::backend::CopyResponse;
use walrelay::wire::{Authentication, BackendMessage, ErrorFields};

/// Connection options of a plaintext upstream.
const PLAIN: &str = "sslmode=disable";
/// The same with a password.
const PASSWORD: &str = "sslmode=disable password=secret";
/// Where the captured WAL begins: segment 7 of timeline 1, 1 MiB segments.
const WAL_START: Lsn = Lsn(0x70_0000);
/// The captured segments, consecutive.
const SEGMENTS: [&str; 5] = [
    "000000010000000000000007",
    "000000010000000000000008",
    "000000010000000000000009",
    "00000001000000000000000A",
    "00000001000000000000000B",
];
/// The first segment.
const SEG7: &str = SEGMENTS[0];
/// The end of the last record in the captured WAL (an XLOG_SWITCH at 0/B00098).
const LAST_RECORD_END: Lsn = Lsn(0xB0_00B0);
/// Where the tests put a fault: after the first 128 KiB chunk.
const FAULT_AT: Lsn = Lsn(0x72_0000);
/// How long a refusal and the reconnect after it may take.
const DEADLINE: Duration = Duration::from_secs(15);

fn data_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/wal")
        .join(name)
}

/// Segments 7 to B of timeline 1 captured from a PostgreSQL 15 primary with 1 MiB segments.
fn real_wal() -> Wal {
    static WAL: OnceLock<Wal> = OnceLock::new();
    let read = || {
        let segments = SEGMENTS.map(|name| fs::read(data_file(name)).unwrap());
        Wal {
            start: WAL_START,
            bytes: segments.concat().into(),
        }
    };
    WAL.get_or_init(read).clone()
}

/// `xlp_sysid` from the long page header that starts the first segment.
fn system_id() -> u64 {
    u64::from_le_bytes(real_wal().bytes[24..32].try_into().unwrap())
}

/// A well-behaved upstream serving the captured WAL, changed by `change`.
fn script(change: impl FnOnce(&mut Script)) -> Script {
    let mut script = Script::serving(system_id(), real_wal());
    change(&mut script);
    script
}

/// A script serving the captured WAL in chunks of `chunk` bytes, with `fault`.
fn streaming(chunk: usize, fault: Option<(Lsn, Fault)>) -> Script {
    script(|s| {
        s.start = Start::CopyBoth(Stream::Wal {
            wal: real_wal(),
            chunk,
            fault,
        })
    })
}

/// A script that sends `bytes` after CopyBothResponse.
fn raw_stream(bytes: Bytes) -> Script {
    script(|s| s.start = Start::CopyBoth(Stream::Raw(bytes)))
}

/// A fake upstream and a `walrelay run` child streaming from it into a fresh directory.
struct Run {
    child: Child,
    fake: FakeUpstream,
    dir: tempfile::TempDir,
}

impl Run {
    fn start(script: Script, conn_options: &str, args: &[&str]) -> Run {
        let dir = tempfile::tempdir().unwrap();
        let fake = FakeUpstream::start(script);
        let log = fs::File::create(dir.path().join("relay.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_walrelay"))
            .args([
                "run",
                "--upstream",
                &fake.conninfo(conn_options),
                "--data-dir",
            ])
            .arg(dir.path().join("relay"))
            .args([
                "--reconnect-min",
                "50ms",
                "--reconnect-max",
                "1s",
                "--status-interval",
                "1s",
            ])
            .args(args)
            .env("WALRELAY_LOG", "debug")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        Run { child, fake, dir }
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("relay.log")).unwrap_or_default()
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("relay")
    }

    fn wal_dir(&self) -> PathBuf {
        self.data_dir().join("wal")
    }

    /// The relay runs and has not panicked.
    fn assert_healthy(&mut self) {
        let log = self.log();
        assert!(!log.contains("panicked"), "relay panicked:\n{log}");
        assert!(
            self.child.try_wait().unwrap().is_none(),
            "relay exited:\n{log}"
        );
    }

    /// Waits until the relay has logged `error` and at least two connections after the
    /// first `after` have ended (so it retried); checks it neither panicked nor exited.
    /// Returns those ended connections.
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
            if ended.len() >= 2 && self.log().contains(error) {
                return ended;
            }
            assert!(
                Instant::now() < deadline,
                "no {error:?} and reconnect; sessions: {sessions:#?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Every file in the WAL directory with its content. A file renamed between the listing
    /// and its reading (a segment completed meanwhile) makes it list again.
    fn stored(&self) -> BTreeMap<String, Vec<u8>> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let Ok(entries) = fs::read_dir(self.wal_dir()) else {
                return BTreeMap::new();
            };
            let read = |p: PathBuf| {
                let name = p.file_name().unwrap().to_string_lossy().into_owned();
                fs::read(&p).map(|bytes| (name, bytes))
            };
            match entries.map(|e| read(e.unwrap().path())).collect() {
                Ok(stored) => return stored,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    assert!(Instant::now() < deadline, "the WAL directory never settled");
                }
                Err(e) => panic!("reading the WAL directory: {e}"),
            }
        }
    }

    /// A segment's bytes, complete or partial; empty if it does not exist.
    fn segment(&self, name: &str) -> Vec<u8> {
        let stored = self.stored();
        let found = stored
            .get(name)
            .or_else(|| stored.get(&format!("{name}.partial")));
        found.cloned().unwrap_or_default()
    }

    /// Nothing was initialised or stored: no state file, no WAL.
    fn assert_nothing_stored(&self) {
        assert!(
            !self.data_dir().join("walrelay.state").exists(),
            "state file written"
        );
        let stored = self.stored();
        assert!(
            stored.values().all(Vec::is_empty),
            "WAL stored: {:?}",
            stored.keys()
        );
    }

    /// Waits until the relay has reported all served WAL written, and flushed up to the end
    /// of the last record, and until the last segment is complete (a flush after the report
    /// may rename it from `.partial`): what the tests read of the store must not change under
    /// them.
    fn wait_all_stored(&self) -> Vec<Session> {
        let end = real_wal().end();
        let sessions = self
            .fake
            .wait("the relay to store all served WAL", DEADLINE, |s| {
                s.iter()
                    .any(|s| s.max_write() >= end && s.max_flush() >= LAST_RECORD_END)
            });
        let last = self.wal_dir().join(SEGMENTS[SEGMENTS.len() - 1]);
        let deadline = Instant::now() + DEADLINE;
        while !last.exists() {
            assert!(
                Instant::now() < deadline,
                "{} never completed",
                last.display()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        sessions
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("relay log:\n{}", self.log());
        }
    }
}

/// Starts a relay against `script` and expects `error` and a retry; returns the run and the
/// ended connections.
fn refused(script: Script, conn_options: &str, args: &[&str], error: &str) -> (Run, Vec<Session>) {
    let mut run = Run::start(script, conn_options, args);
    let sessions = run.expect_refused_after(0, error);
    (run, sessions)
}

fn never_started_streaming(sessions: &[Session]) {
    for s in sessions {
        assert!(!s.asked("START_REPLICATION"), "streaming started: {s:#?}");
    }
}

fn never_logged_in(sessions: &[Session]) {
    for s in sessions {
        assert!(s.queries.is_empty(), "commands sent: {s:#?}");
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

// A well-behaved upstream.

/// Streams the captured WAL in chunks of `chunk` bytes; the relay must store it unchanged
/// and report it written and flushed.
fn stored_byte_identical(chunk: usize) {
    let mut run = Run::start(streaming(chunk, None), PLAIN, &[]);
    let sessions = run.wait_all_stored();
    assert_eq!(
        sessions.len(),
        1,
        "a well-behaved upstream needs one connection"
    );
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
            "startup lacks {k}={v}"
        );
    }
    for s in &first.statuses {
        assert!(
            s.flush <= s.write && s.write <= real_wal().end(),
            "status beyond what was sent: {s:?}"
        );
    }
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

// XLogData that does not continue where the last one ended, or that is not WAL.

/// The records of the captured WAL, from its pg_waldump listing: (start, length).
fn records() -> Vec<(Lsn, u64)> {
    let listing = fs::read_to_string(data_file("records.txt")).unwrap();
    let record = |line: &str| {
        let mut f = line.split_whitespace();
        Some((
            f.next()?.parse::<Lsn>().ok()?,
            f.next()?.parse::<u64>().ok()?,
        ))
    };
    listing.lines().filter_map(record).collect()
}

/// The relay must end the connection at the bad chunk at `at` and resume where its store
/// ends. What it stored is a prefix of the real WAL that ends at or before `at`, and no
/// earlier than the start of the record that `at` cuts (the store may drop that record's
/// head, which is not yet valid WAL).
fn refused_at_fault(at: Lsn, fault: Fault, error: &str) {
    let (run, _) = refused(streaming(CHUNK, Some((at, fault))), PLAIN, &[], error);
    let stored = run.segment(SEG7);
    let end = Lsn(WAL_START.0 + stored.len() as u64);
    let cut = records()
        .into_iter()
        .map(|(start, _)| start)
        .filter(|s| *s <= at)
        .max();
    assert!(
        end <= at && end >= cut.unwrap_or(WAL_START).min(at),
        "stored up to {end}, fault at {at}"
    );
    assert!(
        stored == real_wal().range(WAL_START, end),
        "stored bytes are not the real WAL"
    );
    run.fake
        .wait("a reconnect resuming at the stored end", DEADLINE, |s| {
            s.iter().skip(1).any(|s| s.start_lsn() == Some(end))
        });
}

#[test]
fn xlogdata_gap_aborts() {
    refused_at_fault(
        FAULT_AT,
        Fault::Skip(8192),
        "got WAL data at 0/722000, expected 0/720000",
    );
}

#[test]
fn xlogdata_overlap_aborts() {
    refused_at_fault(
        FAULT_AT,
        Fault::Rewind(8192),
        "got WAL data at 0/71E000, expected 0/720000",
    );
}

#[test]
fn xlogdata_backwards_step_aborts() {
    refused_at_fault(
        FAULT_AT,
        Fault::Rewind(0x2_0000),
        "got WAL data at 0/700000, expected 0/720000",
    );
}

/// What the relay's error says about bytes that are not valid WAL.
const NOT_WAL: &str = "invalid WAL";

#[test]
fn random_bytes_in_xlogdata_are_not_stored() {
    refused_at_fault(FAULT_AT, Fault::Data(noise(CHUNK)), NOT_WAL);
}

#[test]
fn random_bytes_as_the_first_chunk_are_not_stored() {
    refused_at_fault(WAL_START, Fault::Data(noise(CHUNK)), NOT_WAL);
}

#[test]
fn record_with_a_bad_crc_is_not_stored() {
    let chunk_end = Lsn(FAULT_AT.0 + CHUNK as u64);
    let inside =
        |(start, len): &(Lsn, u64)| *start > FAULT_AT && start.0 + len < chunk_end.0 && *len > 64;
    let (start, len) = records().into_iter().find(inside).unwrap();
    let mut chunk = real_wal().range(FAULT_AT, chunk_end).to_vec();
    chunk[(start.0 + len - 1 - FAULT_AT.0) as usize] ^= 0x55;
    refused_at_fault(FAULT_AT, Fault::Data(chunk.into()), NOT_WAL);
}

// The answer to SSLRequest.

/// Nothing but a TLS handshake followed an SSL answer other than `N`.
fn no_plaintext_after_ssl_answer(sessions: &[Session]) {
    for s in sessions.iter().filter(|s| s.ssl_requested) {
        assert!(
            s.startup.is_empty() && s.passwords.is_empty(),
            "plaintext login after the SSL answer: {s:#?}"
        );
        assert!(
            s.after_ssl.first().is_none_or(|b| *b == 0x16),
            "not a TLS handshake: {s:#?}"
        );
    }
    never_logged_in(sessions);
}

#[test]
fn ssl_s_followed_by_plaintext_is_refused() {
    let mut answer = BytesMut::from(&b"S"[..]);
    answer.put(auth(Authentication::Ok));
    answer.put(ready("15.18"));
    let script = script(|s| s.ssl_answer = answer.freeze());
    let (_run, sessions) = refused(script, "sslmode=prefer", &[], "SSL error");
    assert!(
        sessions.iter().any(|s| s.ssl_requested),
        "no SSLRequest with sslmode=prefer"
    );
    no_plaintext_after_ssl_answer(&sessions);
}

#[test]
fn ssl_answers_other_than_s_or_n_and_n_when_required_are_refused() {
    let e = message(BackendMessage::ErrorResponse(ErrorFields::fatal(
        SqlState::PROTOCOL_VIOLATION,
        "unsupported",
    )));
    let cases = [
        (
            e,
            "sslmode=prefer",
            "received invalid response to SSL negotiation: 'E'",
        ),
        (
            Bytes::from_static(b"X"),
            "sslmode=prefer",
            "received invalid response to SSL negotiation: 'X'",
        ),
        (
            Bytes::from_static(b"N"),
            "sslmode=require",
            "server does not support SSL, but SSL was required",
        ),
    ];
    for (answer, sslmode, error) in cases {
        let (run, sessions) = refused(script(|s| s.ssl_answer = answer), sslmode, &[], error);
        for s in &sessions {
            assert!(s.ssl_requested, "connected without SSLRequest: {s:#?}");
            assert!(
                s.after_ssl.is_empty() && s.startup.is_empty(),
                "went on after {error:?}: {s:#?}"
            );
        }
        run.assert_nothing_stored();
    }
}

// IDENTIFY_SYSTEM and SHOW wal_segment_size.

/// Streams all WAL from a good upstream, then "restarts" it as `other`: refused with
/// `error`, nothing stored from it.
fn other_server_refused(other: Script, error: &str) {
    let mut run = Run::start(script(|_| {}), PLAIN, &[]);
    run.wait_all_stored();
    let before = run.stored();
    let served = run.fake.sessions().len();
    run.fake.replace(other);
    let sessions = run.expect_refused_after(served, error);
    never_started_streaming(&sessions);
    assert!(
        run.stored() == before,
        "the store changed after the other server connected"
    );
}

#[test]
fn another_system_identifier_is_refused_and_nothing_stored() {
    let other = identify(&(system_id() + 1).to_string(), "1", "0/708000");
    other_server_refused(
        script(|s| s.identify = other),
        "database system identifier differs",
    );
}

#[test]
fn another_segment_size_is_refused_and_nothing_stored() {
    other_server_refused(
        script(|s| s.show_segment_size = show("16MB")),
        "WAL segment size differs",
    );
}

#[test]
fn malformed_identify_system_is_refused() {
    let sysid = system_id().to_string();
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
        let (run, sessions) = refused(script(|s| s.identify = answer), PLAIN, &[], error);
        assert!(
            sessions.iter().all(|s| !s.asked("SHOW")),
            "went on after a bad IDENTIFY_SYSTEM"
        );
        run.assert_nothing_stored();
    }
}

#[test]
fn invalid_segment_size_is_refused() {
    for value in ["17MB", "0", "banana", "3MB", "2GB", ""] {
        let error = format!("invalid wal_segment_size in server response: \"{value}\"");
        let (run, sessions) = refused(
            script(|s| s.show_segment_size = show(value)),
            PLAIN,
            &[],
            &error,
        );
        never_started_streaming(&sessions);
        run.assert_nothing_stored();
    }
}

// TIMELINE_HISTORY.

const HISTORY: &[u8] = b"1\t0/700000\tno recovery target specified\n";

/// An upstream on timeline 2 answers `TIMELINE_HISTORY 2` with `answer`: refused, nothing
/// stored.
fn bad_history(answer: Bytes, error: &str) -> Run {
    let identify = identify(&system_id().to_string(), "2", "0/708000");
    let script = script(|s| {
        s.identify = identify;
        s.timeline_history = answer;
    });
    let (run, sessions) = refused(script, PLAIN, &[], error);
    assert!(
        sessions.iter().all(|s| s.asked("TIMELINE_HISTORY 2")),
        "history not asked for"
    );
    never_started_streaming(&sessions);
    let stored = run.stored();
    assert!(
        !stored.keys().any(|k| k.ends_with(".history")),
        "history stored: {:?}",
        stored.keys()
    );
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
        "unexpected file name for timeline history file of timeline 2",
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
fn invalid_history_files_are_refused() {
    let with_nul = [HISTORY, b"\0\0\0"].concat();
    let cases: [(&str, &[u8], &str); 4] = [
        (
            "00000003.history",
            HISTORY,
            "unexpected file name for timeline history file of timeline 2",
        ),
        (
            "00000002.history",
            b"this is not a history file\n",
            "syntax error in history file at line 1",
        ),
        (
            "00000002.history",
            &with_nul,
            "history file contains a NUL byte",
        ),
        (
            "00000002.history",
            b"1\t0/700000\tx\n\n1\t0/800000\ty\n",
            "timeline IDs must be in increasing sequence",
        ),
    ];
    for (name, content, error) in cases {
        bad_history(history(name, content), error);
    }
}

// Authentication.

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

/// SCRAM with this server-first-message (`{nonce}` is the client's), then `then`.
fn scram(server_first: &str, then: Bytes) -> Script {
    script(|s| {
        s.auth = Auth::Scram {
            server_first: server_first.to_owned(),
            then,
        }
    })
}

/// The password was never sent or logged, and nothing was stored.
fn password_kept(run: &Run, sessions: &[Session]) {
    assert!(!run.log().contains("secret"), "password in the log");
    never_logged_in(sessions);
    run.assert_nothing_stored();
}

#[test]
fn scram_iteration_count_beyond_the_cap_is_refused_quickly() {
    for i in ["1000000000", "0", "-1", "4294967297"] {
        let first = format!("r={{nonce}}srv,s={SALT},i={i}");
        let error = format!("invalid SCRAM iteration count \"{i}\"");
        let (run, sessions) = refused(scram(&first, Bytes::new()), PASSWORD, &[], &error);
        for s in &sessions {
            assert!(
                s.passwords.len() == 1,
                "the relay answered the server-first-message: {s:#?}"
            );
        }
        let cpu = cpu_seconds(run.child.id());
        assert!(cpu < 1.0, "the relay used {cpu} s of CPU on i={i}");
        password_kept(&run, &sessions);
    }
}

#[test]
fn hostile_sasl_exchanges_are_refused() {
    let good_first = format!("r={{nonce}}srv,s={SALT},i=4096");
    let last = |data: &'static [u8]| auth(Authentication::SaslFinal(Bytes::from_static(data)));
    let offer = |mechanisms: Vec<String>| auth(Authentication::Sasl { mechanisms });
    let early_final = [offer(vec!["SCRAM-SHA-256".into()]), last(b"v=AAAA")].concat();
    let cases = [
        (
            script(|s| s.auth = Auth::Raw(offer(vec![]))),
            "none of the server's SASL authentication mechanisms",
        ),
        (
            script(|s| s.auth = Auth::Raw(early_final.into())),
            "unexpected AuthenticationSASLFinal",
        ),
        (
            scram(&format!("r=notyournonce,s={SALT},i=4096"), Bytes::new()),
            "malformed SCRAM message (nonce mismatch)",
        ),
        (
            scram(
                &format!("m=ext,r={{nonce}}srv,s={SALT},i=4096"),
                Bytes::new(),
            ),
            "mandatory extension",
        ),
        (
            scram("r={nonce}srv,s=!!!,i=4096", Bytes::new()),
            "malformed SCRAM message (invalid salt)",
        ),
        (
            scram(&good_first, auth(Authentication::Ok)),
            "unexpected AuthenticationOk",
        ),
        (
            scram(
                &good_first,
                last(b"v=c2lnbmF0dXJlc2lnbmF0dXJlc2lnbmF0dXJlMTI="),
            ),
            "incorrect server signature",
        ),
        (
            scram(&good_first, last(b"e=other-error")),
            "error received from server in SCRAM exchange: other-error",
        ),
    ];
    for (script, error) in cases {
        let (run, sessions) = refused(script, PASSWORD, &[], error);
        password_kept(&run, &sessions);
    }
}

#[test]
fn authentication_ok_without_a_challenge_is_accepted() {
    let mut run = Run::start(script(|_| {}), PASSWORD, &[]);
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
    let script = script(|s| s.auth = Auth::Raw(auth(Authentication::Unknown(99))));
    let (run, sessions) = refused(
        script,
        PASSWORD,
        &[],
        "authentication method 99 not supported",
    );
    password_kept(&run, &sessions);
    assert!(sessions.iter().all(|s| s.passwords.is_empty()));
}

#[test]
fn cleartext_password_over_plaintext_is_never_sent() {
    let script = script(|s| s.auth = Auth::Raw(auth(Authentication::CleartextPassword)));
    let error = "server requested a cleartext password over an unencrypted connection";
    let (run, sessions) = refused(script, PASSWORD, &[], error);
    password_kept(&run, &sessions);
    assert!(
        sessions.iter().all(|s| s.passwords.is_empty()),
        "the password was sent"
    );
}

// Session start: what a server sends between AuthenticationOk and ReadyForQuery.

#[test]
fn hostile_session_start_is_refused() {
    let status =
        |name: String, value: String| message(BackendMessage::ParameterStatus { name, value });
    let huge = status("x".into(), "y".repeat(1 << 20));
    let flood: Vec<u8> = (0..10_000)
        .flat_map(|i| status(format!("p{i}"), "v".into()))
        .collect();
    let mut bad_status = ready("15.18").to_vec();
    *bad_status.last_mut().unwrap() = b'X';
    let cases: [(Bytes, &str); 5] = [
        (huge, "invalid message length"),
        (flood.into(), "too many messages before ReadyForQuery"),
        (bad_status.into(), "ReadyForQuery transaction status"),
        (
            Bytes::from_static(b"K\x00\x00\x00\x08\x00\x00\x00\x01"),
            "BackendKeyData",
        ),
        (
            Bytes::from_static(b"E\x00\x00\x00\x05\x00"),
            "server refused the connection",
        ),
    ];
    for (ready, error) in cases {
        let (run, sessions) = refused(script(|s| s.ready = ready), PLAIN, &[], error);
        never_logged_in(&sessions);
        run.assert_nothing_stored();
    }
}

// Stalls: the relay must time out on its own clock.

#[test]
fn half_a_frame_while_streaming_times_out() {
    let half = raw_stream(Bytes::from_static(b"d\x00\x00\x10\x00w\x00\x00"));
    let args = ["--receive-timeout", "2s"];
    refused(
        half,
        PLAIN,
        &args,
        "terminating replication connection due to timeout",
    );
}

#[test]
fn half_a_frame_during_login_times_out() {
    let script = script(|s| s.auth = Auth::Raw(Bytes::from_static(b"R\x00\x00\x00")));
    let error = "timeout expired while connecting to the upstream";
    let (_run, sessions) = refused(script, "sslmode=disable connect_timeout=2", &[], error);
    never_logged_in(&sessions);
}

/// Half a RowDescription: a frame that never completes.
const HALF_FRAME: &[u8] = b"T\x00\x00\x00\x40\x00";

/// After the login, a command answered with half a frame and silence: the relay must give up
/// on its own clock (its receive timeout or login deadline) and reconnect.
#[test]
fn half_a_frame_in_a_command_answer_times_out() {
    let stalled_identify = script(|s| s.identify = Bytes::from_static(HALF_FRAME));
    let stalled_start = script(|s| s.start = Start::Raw(Bytes::from_static(HALF_FRAME)));
    for (what, script) in [
        ("IDENTIFY_SYSTEM", stalled_identify),
        ("START_REPLICATION", stalled_start),
    ] {
        let args = ["--receive-timeout", "2s"];
        let mut run = Run::start(script, "sslmode=disable connect_timeout=2", &args);
        run.fake.wait(
            &format!("a reconnect after the stalled {what}"),
            DEADLINE,
            |s| s.len() >= 2 && s[0].closed,
        );
        run.assert_healthy();
        assert!(run.segment(SEG7).is_empty(), "WAL stored");
    }
}

// Malformed answers to START_REPLICATION and stream messages.

/// CopyDone right away, then an end-of-timeline result set with these values.
fn end_of_timeline(next_tli: &str, start: &str) -> Script {
    let mut bytes = BytesMut::new();
    bytes.put(message(BackendMessage::CopyDone));
    bytes.put(result(
        &["next_tli", "next_tli_startpos"],
        &[vec![Some(next_tli), Some(start)]],
    ));
    bytes.put(message(BackendMessage::CommandComplete(
        "START_STREAMING".into(),
    )));
    raw_stream(bytes.freeze())
}

#[test]
fn malformed_stream_is_refused() {
    let keepalive = |len: usize| copy_data(&[&b"k"[..], &vec![0; len - 1]].concat());
    let copy_out = message(BackendMessage::CopyOutResponse(CopyResponse::default()));
    let end_first = xlog_data(
        WAL_START,
        Lsn(0x60_0000),
        &real_wal().slice(WAL_START, 8192),
    );
    let cases = [
        (
            script(|s| s.start = Start::Raw(copy_out)),
            "expected CopyBothResponse, got message type 'H'",
        ),
        (
            raw_stream(keepalive(17)),
            "invalid keepalive message: length 17, expected 18",
        ),
        (
            raw_stream(keepalive(19)),
            "invalid keepalive message: length 19, expected 18",
        ),
        (
            raw_stream(copy_data(b"x0123456789")),
            "unexpected message type",
        ),
        (
            raw_stream(copy_data(b"w\x00\x00\x00\x00\x00\x70\x00\x00")),
            "insufficient data left in message",
        ),
        (
            raw_stream(end_first),
            "server reported WAL end 0/600000 before data start 0/700000",
        ),
        (
            end_of_timeline("1", "0/700000"),
            "server reported unexpected next timeline 1, following timeline 1",
        ),
        (
            end_of_timeline("2", "0/800000"),
            "stopped streaming timeline 1 at 0/700000, but reported next timeline 2",
        ),
    ];
    for (script, error) in cases {
        let (run, _) = refused(script, PLAIN, &[], error);
        assert!(
            run.segment(SEG7).is_empty(),
            "WAL stored from a broken stream"
        );
    }
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
    let error = format!("invalid message length {len}");
    let (run, _) = refused(raw_stream(frame.freeze()), PLAIN, &[], &error);
    let peak = peak_rss(run.child.id());
    assert!(
        peak < 64 << 20,
        "relay peak RSS {peak} bytes after a 64 MiB frame header"
    );
}
