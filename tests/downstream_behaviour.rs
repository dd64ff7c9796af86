//! The relay's downstream side against real PostgreSQL 15 clients (1 MB segments, and 16 MB
//! too for A5, B4 and E4) and a raw protocol client that sends exact bytes:
//!
//! - A5: `pg_receivewal` through the relay, as `020_pg_receivewal.pl` drives it: slot creation
//!   and removal, `--endpos --synchronous` leaving one `.partial` that a rerun completes, an
//!   empty directory started at the slot's `restart_lsn`, a missing slot, file modes;
//! - E2–E4: a client that never replies is pinged at half the sender timeout and dropped at
//!   the timeout; one that stops reading is dropped with bounded memory; a stopped walreceiver
//!   is dropped and its standby catches up after it resumes; other clients keep streaming;
//! - I3: the `max_wal_senders` limit; G5: temporary slots end with their session and with a
//!   crash, persistent ones survive it; G7: a dropped slot errors and can be recreated;
//! - B4: SIGTERM with a standby attached, three times, and the standby reconnects by itself
//!   each time; at shutdown a stream asks for confirmation, then ends with `COPY 0`;
//! - I1, I2, I5: a thousand connections that never log in and a slowloris startup are closed
//!   at the authentication timeout; ten readers far behind cost their read buffers only;
//! - §2.1, §2.3, §2.4: malformed first packets, commands and stream messages. After each, the
//!   relay is still up, answers `IDENTIFY_SYSTEM` and has logged no panic (O8).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod downstream_client;
mod support;

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use downstream_client::*;
use support::*;
use walrelay::testkit::localpg::{
    Cluster, PgBinaries, ScratchDir, free_port, require_postgres, wait_until,
};
use walrelay::types::{Lsn, SegmentName, TimelineId, WalSegmentSize};

/// A primary with archiving and 1 MB segments, and the relay in front of it. Fields drop in
/// order: the relay, then the primary, then their directory.
struct Setup {
    relay: RelayProcess,
    primary: Cluster,
    dir: ScratchDir,
    bins: PgBinaries,
    port: u16,
    flags: Vec<String>,
    size: WalSegmentSize,
}

fn setup(label: &str, relay_flags: &[&str]) -> Option<Setup> {
    setup_sized(label, 1, relay_flags)
}

/// [`setup`] with a primary of `segment_mb` MB segments.
fn setup_sized(label: &str, segment_mb: u32, relay_flags: &[&str]) -> Option<Setup> {
    let bins = require_postgres()?;
    let dir = scratch(&bins, label);
    let primary = archiving_primary(&bins, dir.path(), segment_mb);
    let port = free_port().unwrap();
    let mut flags = vec!["--listen".to_owned(), format!("127.0.0.1:{port}")];
    flags.extend(relay_flags.iter().map(|f| (*f).to_owned()));
    let relay = start_relay(&primary, &dir.path().join("relay"), &flags);
    let size = primary.wal_segment_size().unwrap();
    let s = Setup {
        bins,
        dir,
        primary,
        relay,
        port,
        flags,
        size,
    };
    s.wait_ready();
    Some(s)
}

fn start_relay(primary: &Cluster, data: &Path, flags: &[String]) -> RelayProcess {
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    RelayProcess::start(&primary.conninfo(), data, &flags)
}

impl Setup {
    fn conninfo(&self) -> String {
        format!("host=127.0.0.1 port={} user=postgres", self.port)
    }

    /// A replication command through `psql "… replication=1"`.
    fn repl(&self, sql: &str) -> Result<String, String> {
        self.bins
            .psql(&format!("{} replication=1", self.conninfo()), sql)
            .map_err(|e| e.to_string())
    }

    /// Waits until the relay answers IDENTIFY_SYSTEM and has stored the primary's flush.
    fn wait_ready(&self) {
        wait_until(Duration::from_secs(30), "the relay answers", || {
            Ok(self.repl("IDENTIFY_SYSTEM").is_ok())
        })
        .unwrap();
        let now = self.primary.current_wal_flush_lsn().unwrap();
        wait_acked(&self.primary, now, Duration::from_secs(30));
    }

    /// Starts the relay again on the same data directory and port.
    fn restart_relay(&mut self) {
        let data = self.relay.data_dir.clone();
        self.relay = start_relay(&self.primary, &data, &self.flags);
        self.wait_ready();
    }

    /// O8: the relay is still the same running process, answers IDENTIFY_SYSTEM, and has
    /// logged no panic.
    fn assert_healthy(&mut self, after: &str) {
        let (bins, conninfo) = (&self.bins, format!("{} replication=1", self.conninfo()));
        assert_relay_healthy(&mut self.relay, after, || {
            bins.psql(&conninfo, "IDENTIFY_SYSTEM")
        });
    }

    /// The primary's segment switched and archived, more WAL written after the switch; returns
    /// the insert position right after the switch (020's `$nextlsn`) once the relay stored
    /// everything.
    fn next_segment(&self, table: &str, from: u32) -> Lsn {
        let switched = self.primary.switch_wal().unwrap();
        self.primary
            .wait_archived(switched, Duration::from_secs(30))
            .unwrap();
        let next: Lsn = self
            .primary
            .psql("SELECT pg_current_wal_insert_lsn()")
            .unwrap()
            .parse()
            .unwrap();
        let to = from + 99;
        self.primary
            .psql(&format!(
                "INSERT INTO {table} VALUES (generate_series({from}, {to}))"
            ))
            .unwrap();
        let flush = self.primary.current_wal_flush_lsn().unwrap();
        wait_acked(&self.primary, flush, Duration::from_secs(30));
        next
    }

    fn segment_name(&self, lsn: Lsn) -> String {
        let seg = SegmentName {
            timeline: TimelineId::ONE,
            segno: self.size.segment_of(lsn),
        };
        seg.file_name(self.size)
    }
}

/// Runs `pg_receivewal -d CONNINFO ARGS…` (`args` split at whitespace) to its end, 60 s at
/// most; returns whether it succeeded and what it printed.
fn receivewal(s: &Setup, args: &str) -> (bool, String) {
    let mut cmd = s.bins.command("pg_receivewal");
    cmd.args(["-d", &s.conninfo()])
        .args(args.split_whitespace());
    let log = s.dir.path().join("pg_receivewal-run.log");
    let mut process = walrelay::testkit::localpg::spawn(cmd, &log).unwrap();
    let status = process
        .wait(Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("pg_receivewal {args}: {e}\n{}", process.log_contents()));
    (status.success(), process.log_contents())
}

fn receivewal_ok(s: &Setup, args: &str) -> String {
    let (ok, log) = receivewal(s, args);
    assert!(ok, "pg_receivewal {args} failed:\n{log}");
    log
}

/// The segment `name` in `dir` is byte-identical to the primary's archived copy.
fn assert_archived_copy(s: &Setup, dir: &Path, name: &str) {
    let ours = fs::read(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    let theirs = fs::read(s.primary.archive_dir().join(name)).unwrap();
    assert!(
        ours == theirs,
        "{name} differs from the primary's archived copy"
    );
}

/// 020's `check_mode_recursive($dir, 0700, 0600)`.
fn assert_modes(dir: &Path) {
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(dir), 0o700, "{}", dir.display());
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let want = if path.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(mode(&path), want, "mode of {}", path.display());
    }
}

fn scratch_subdir(s: &Setup, name: &str) -> PathBuf {
    private_dir(&s.dir.path().join(name))
}

at_1mb_and_16mb_segments!(
    a5_pg_receivewal_slots_partial_segments_and_modes_1mb_segments,
    a5_pg_receivewal_slots_partial_segments_and_modes_16mb_segments,
    |mb| receivewal_cases(&format!("a5-{mb}"), mb)
);

fn receivewal_cases(label: &str, segment_mb: u32) {
    let Some(mut s) = setup_sized(label, segment_mb, &[]) else {
        return;
    };
    receivewal_ok(&s, "--slot test --create-slot");
    assert_eq!(s.repl("READ_REPLICATION_SLOT test").unwrap(), "physical||");
    receivewal_ok(&s, "--slot test --drop-slot");
    assert_eq!(s.repl("READ_REPLICATION_SLOT test").unwrap(), "||");

    // --synchronous --endpos with a slot: one .partial, which the next run completes.
    receivewal_ok(&s, "--slot s --create-slot");
    let stream = scratch_subdir(&s, "stream");
    let synchronous = |end: Lsn| {
        let dir = stream.display();
        let args = format!("-D {dir} --slot s --synchronous --no-loop --verbose --endpos {end}");
        receivewal_ok(&s, &args)
    };
    s.primary
        .psql("CREATE TABLE test_table(x integer PRIMARY KEY)")
        .unwrap();
    let first_end = s.next_segment("test_table", 1);
    synchronous(first_end);
    let first = s.segment_name(first_end);
    assert_eq!(partial_files(&stream), [format!("{first}.partial")]);
    assert_eq!(segment_files(&stream), Vec::<String>::new());
    assert_modes(&stream);
    let second_end = s.next_segment("test_table", 101);
    synchronous(second_end);
    assert_eq!(segment_files(&stream), std::slice::from_ref(&first));
    let second = s.segment_name(second_end);
    assert_eq!(partial_files(&stream), [format!("{second}.partial")]);
    assert_archived_copy(&s, &stream, &first);
    assert_modes(&stream);

    // --slot into an empty directory starts at the slot's restart_lsn (READ_REPLICATION_SLOT).
    s.repl("CREATE_REPLICATION_SLOT archive_slot PHYSICAL (RESERVE_WAL)")
        .unwrap();
    let read = s.repl("READ_REPLICATION_SLOT archive_slot").unwrap();
    let fields: Vec<&str> = read.split('|').collect();
    assert_eq!((fields[0], fields[2]), ("physical", "1"), "{read}");
    let restart: Lsn = fields[1].parse().unwrap();
    let streamed = s.segment_name(restart);
    let next = s.next_segment("test_table", 201);
    assert!(
        s.segment_name(next) > streamed,
        "the slot must lag the relay"
    );
    let slot_dir = scratch_subdir(&s, "slot_wal");
    let args = |slot: &str| {
        let dir = slot_dir.display();
        format!("-D {dir} --slot {slot} -n --no-sync --verbose --endpos {next}")
    };
    let (ok, log) = receivewal(&s, &args("nonexistentslot"));
    assert!(!ok, "pg_receivewal with a missing slot succeeded:\n{log}");
    let missing = "pg_receivewal: error: replication slot \"nonexistentslot\" does not exist";
    assert!(log.contains(missing), "{log}");
    let log = receivewal_ok(&s, &args("archive_slot"));
    let from = format!("starting log streaming at {restart} (timeline 1)");
    assert!(log.contains(&from), "{log}");
    assert_archived_copy(&s, &slot_dir, &streamed);
    assert_modes(&slot_dir);
    s.assert_healthy("A5");
}

/// A `pg_receivewal` through the relay into `dir` is still running and completes the
/// segment the primary switches away from now.
fn assert_still_streaming(s: &Setup, recv: &mut walrelay::testkit::localpg::PgProcess, dir: &Path) {
    assert!(
        recv.try_status().unwrap().is_none(),
        "pg_receivewal stopped:\n{}",
        recv.log_contents()
    );
    let switched = s.primary.switch_wal().unwrap();
    let name = s.segment_name(Lsn(switched.0 - 1));
    wait_until(
        Duration::from_secs(30),
        "pg_receivewal completes a segment",
        || Ok(dir.join(&name).exists()),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", recv.log_contents()));
}

#[test]
fn e2_client_that_never_replies_is_pinged_then_dropped() {
    let Some(mut s) = setup("e2", &["--sender-timeout", "4s"]) else {
        return;
    };
    let recv_dir = scratch_subdir(&s, "recv");
    let mut recv = s.bins.receivewal(&s.conninfo(), &recv_dir, &[]).unwrap();
    let load = WriteLoad::start(&s.bins, &s.primary.conninfo(), 200, 0);
    let log_at = s.relay.log_len();
    let mut c = RawClient::streaming(s.port, "silent");
    let (ping, closed, wal) = c.read_without_replying(Duration::from_secs(15));
    println!("E2: ping after {ping:?}, closed after {closed:?}, {wal} WAL bytes read");
    let ping = ping.expect("no keepalive with replyRequested=1 before the close");
    assert!(
        (Duration::from_millis(1500)..=Duration::from_millis(3500)).contains(&ping),
        "keepalive asking for a reply after {ping:?}, expected about 2 s"
    );
    assert!(
        (Duration::from_secs(3)..=Duration::from_secs(8)).contains(&closed),
        "closed after {closed:?}, expected about the 4 s sender timeout"
    );
    assert!(wal > 0, "the client received no WAL while it read");
    assert!(
        s.relay.log_since(log_at).contains("replication timeout"),
        "{}",
        s.relay.log_since(log_at)
    );
    load.stop();
    assert_still_streaming(&s, &mut recv, &recv_dir);
    s.assert_healthy("E2");
}

#[test]
fn e3_client_that_stops_reading_is_dropped_with_bounded_memory() {
    let Some(mut s) = setup("e3", &["--sender-timeout", "4s"]) else {
        return;
    };
    let recv_dir = scratch_subdir(&s, "recv");
    let mut recv = s.bins.receivewal(&s.conninfo(), &recv_dir, &[]).unwrap();
    let pid = s.relay.pid();
    let hwm_before = vm_hwm_kb(pid);
    let mut c = RawClient::login(s.port, "stuck");
    let (_, tli, pos) = c.identify_system();
    let start = s.size.segment_start(Lsn(pos));
    let log_at = s.relay.log_len();
    let flush_before = s.primary.current_wal_flush_lsn().unwrap();
    c.send(&query_msg(&format!(
        "START_REPLICATION {start} TIMELINE {tli}"
    )));
    // The client keeps replying but never reads again, while the primary writes fast: only
    // the relay's blocked writes can tell it is stuck.
    let replier = Replier::start(&c, Duration::from_millis(500));
    let load = WriteLoad::start(&s.bins, &s.primary.conninfo(), 100, 256 * 1024);
    let took = s.relay.wait_log(
        log_at,
        "terminating walsender process",
        Duration::from_secs(30),
    );
    let replies = replier.stop();
    let dropped = s.relay.log_since(log_at);
    let line = dropped
        .lines()
        .find(|l| l.contains("terminating walsender"));
    println!("E3: {replies} replies sent; {}", line.unwrap_or_default());
    let (committed, _) = load.stop();
    let written = s
        .primary
        .current_wal_flush_lsn()
        .unwrap()
        .saturating_distance(flush_before);
    let hwm_after = vm_hwm_kb(pid);
    println!(
        "E3: dropped after {took:?}; {committed} transactions, {} MB of WAL; VmHWM {hwm_before} kB -> {hwm_after} kB",
        written >> 20
    );
    assert!(
        took <= Duration::from_secs(12),
        "dropped only after {took:?} (sender timeout 4 s)"
    );
    assert!(
        written > 8 << 20,
        "the load wrote only {written} bytes, too little to fill the socket buffers"
    );
    assert!(
        hwm_after <= hwm_before + 64 * 1024,
        "VmHWM grew from {hwm_before} kB to {hwm_after} kB"
    );
    let closed = c.until_closed(Duration::from_secs(20));
    assert!(closed.is_some(), "the relay left the stuck connection open");
    assert_still_streaming(&s, &mut recv, &recv_dir);
    s.assert_healthy("E3");
}

/// A standby of the primary that streams from the relay on relay slot `slot`, started and
/// streaming; `retry` is its `wal_retrieve_retry_interval`.
fn standby_on_relay(s: &Setup, slot: &str, retry: &str) -> Cluster {
    s.repl(&format!("CREATE_REPLICATION_SLOT \"{slot}\" PHYSICAL"))
        .unwrap();
    let conninfo = format!("{} application_name={slot}", s.conninfo());
    let mut standby = s.primary.basebackup_standby(&conninfo, Some(slot)).unwrap();
    standby
        .set_config("wal_retrieve_retry_interval", retry)
        .unwrap();
    standby.start().unwrap();
    wait_receiver_streaming(&standby, Duration::from_secs(30));
    standby
}

fn wait_receiver_streaming(standby: &Cluster, timeout: Duration) {
    wait_until(timeout, "the walreceiver streams", || {
        Ok(standby
            .psql("SELECT status FROM pg_stat_wal_receiver")
            .is_ok_and(|st| st == "streaming"))
    })
    .unwrap();
}

/// How many times the standby's walreceiver started streaming, from its log.
fn receiver_starts(standby: &Cluster) -> usize {
    standby
        .log_contents()
        .matches("started streaming WAL")
        .count()
}

/// Waits until the standby replayed the primary's current flush position.
fn wait_caught_up(primary: &Cluster, standby: &Cluster, timeout: Duration) -> Duration {
    let start = Instant::now();
    let target = primary.current_wal_flush_lsn().unwrap();
    wait_until(timeout, &format!("the standby replays to {target}"), || {
        Ok(standby.replay_lsn()? >= target)
    })
    .unwrap();
    start.elapsed()
}

/// SIGCONT on drop, so a failing assertion never leaves a process stopped.
struct Stopped(u32);

impl Stopped {
    fn stop(pid: u32) -> Stopped {
        signal_pid(pid, "STOP");
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        signal_pid(self.0, "CONT");
    }
}

at_1mb_and_16mb_segments!(
    e4_stopped_walreceiver_is_dropped_and_catches_up_1mb_segments,
    e4_stopped_walreceiver_is_dropped_and_catches_up_16mb_segments,
    |mb| stopped_walreceiver_is_dropped_and_catches_up(&format!("e4-{mb}"), mb)
);

fn stopped_walreceiver_is_dropped_and_catches_up(label: &str, segment_mb: u32) {
    let Some(mut s) = setup_sized(label, segment_mb, &["--sender-timeout", "3s"]) else {
        return;
    };
    let standby = standby_on_relay(&s, "d1", "500ms");
    let pid: u32 = standby
        .psql("SELECT pid FROM pg_stat_wal_receiver")
        .unwrap()
        .parse()
        .unwrap();
    let log_at = s.relay.log_len();
    let before = receiver_starts(&standby);
    let stopped = Stopped::stop(pid);
    let t0 = Instant::now();
    s.primary.write_load(5000).unwrap();
    s.primary.emit_message(3 << 20).unwrap();
    s.relay.wait_log(
        log_at,
        "terminating walsender process",
        Duration::from_secs(10),
    );
    let dropped = t0.elapsed();
    std::thread::sleep(Duration::from_secs(6).saturating_sub(t0.elapsed()));
    drop(stopped);
    let resumed = Instant::now();
    wait_until(Duration::from_secs(30), "the standby streams again", || {
        Ok(receiver_starts(&standby) > before)
    })
    .unwrap();
    let reconnected = resumed.elapsed();
    wait_receiver_streaming(&standby, Duration::from_secs(30));
    s.primary.write_load(1000).unwrap();
    let catch_up = wait_caught_up(&s.primary, &standby, Duration::from_secs(60));
    println!(
        "E4 {segment_mb} MB segments: dropped {dropped:?} after SIGSTOP; streaming again {reconnected:?} after SIGCONT, \
         then caught up in {catch_up:?}"
    );
    assert!(
        dropped >= Duration::from_secs(2),
        "dropped too early: {dropped:?}"
    );
    let since = s.relay.log_since(log_at);
    let restreams = since
        .lines()
        .skip_while(|l| !l.contains("terminating walsender process"))
        .filter(|l| l.contains("app=\"d1\"") && l.contains("streaming timeline="))
        .count();
    assert!(
        restreams >= 1,
        "no new stream for d1 after the drop:\n{since}"
    );
    let new_pid = standby
        .psql("SELECT pid FROM pg_stat_wal_receiver")
        .unwrap();
    assert_ne!(
        new_pid,
        pid.to_string(),
        "the stopped walreceiver was not replaced"
    );
    let q = "SELECT count(*), sum(length(payload)) FROM walrelay_load";
    assert_eq!(standby.psql(q).unwrap(), s.primary.psql(q).unwrap());
    s.assert_healthy("E4");
}

at_1mb_and_16mb_segments!(
    b4_sigterm_with_a_standby_attached_then_it_resumes_by_itself_1mb_segments,
    b4_sigterm_with_a_standby_attached_then_it_resumes_by_itself_16mb_segments,
    |mb| sigterm_with_a_standby_attached(&format!("b4-{mb}"), mb)
);

fn sigterm_with_a_standby_attached(label: &str, segment_mb: u32) {
    let Some(mut s) = setup_sized(label, segment_mb, &["--sender-timeout", "10s"]) else {
        return;
    };
    let standby = standby_on_relay(&s, "d1", "1s");
    let load = WriteLoad::start(&s.bins, &s.primary.conninfo(), 200, 0);
    for round in 1..=3 {
        let before = receiver_starts(&standby);
        std::thread::sleep(Duration::from_secs(1));
        let t0 = Instant::now();
        s.relay.signal("TERM");
        let status = s.relay.wait_exit(Duration::from_secs(10));
        let stopped = t0.elapsed();
        assert!(
            status.is_some_and(|st| st.success()),
            "SIGTERM {round}: {status:?} after {stopped:?}"
        );
        s.restart_relay();
        // B4: the standby is streaming again within 5 s of the relay being back.
        let t1 = Instant::now();
        wait_until(Duration::from_secs(30), "the standby streams again", || {
            Ok(receiver_starts(&standby) > before)
        })
        .unwrap();
        let reconnected = t1.elapsed();
        wait_receiver_streaming(&standby, Duration::from_secs(30));
        println!(
            "B4 {segment_mb} MB segments, SIGTERM {round}: exit after {stopped:?}; standby \
             streaming {reconnected:?} after the restart"
        );
        assert!(
            reconnected <= Duration::from_secs(5),
            "the standby took {reconnected:?} to reconnect"
        );
    }
    let (committed, _) = load.stop();
    let catch_up = wait_caught_up(&s.primary, &standby, Duration::from_secs(60));
    println!("B4: caught up {catch_up:?} after {committed} transactions");
    let q = "SELECT count(*), sum(length(payload)) FROM walrelay_fault_load";
    assert_eq!(standby.psql(q).unwrap(), s.primary.psql(q).unwrap());
    s.assert_healthy("B4");
}

#[test]
fn i3_connections_beyond_max_wal_senders_get_53300() {
    let Some(mut s) = setup("i3", &["--max-wal-senders", "2"]) else {
        return;
    };
    let mut a = RawClient::login(s.port, "a");
    let mut b = RawClient::login(s.port, "b");
    let mut third = RawClient::connect(s.port);
    third.send(&startup_packet(REPLICATION_LOGIN));
    let msgs = third.startup_answer();
    let e = first_error(&msgs).unwrap_or_else(|| panic!("third connection accepted: {msgs:?}"));
    assert_eq!(
        (
            e.severity().as_str(),
            e.sqlstate().as_str(),
            e.message().as_str()
        ),
        (
            "FATAL",
            "53300",
            "number of requested standby connections exceeds max_wal_senders (currently 2)"
        )
    );
    assert!(!msgs.iter().any(|m| m.tag == b'R'), "{msgs:?}");
    assert!(third.until_closed(ANSWER).is_some());
    let psql = s.repl("IDENTIFY_SYSTEM").unwrap_err();
    assert!(
        psql.contains("exceeds max_wal_senders (currently 2)"),
        "{psql}"
    );
    let (sysid_a, _, _) = a.identify_system();
    let (sysid_b, _, _) = b.identify_system();
    assert_eq!(sysid_a, sysid_b);
    a.send(&terminate());
    assert!(a.until_closed(ANSWER).is_some());
    wait_until(ANSWER, "a place frees up", || {
        let mut c = RawClient::connect(s.port);
        c.send(&startup_packet(REPLICATION_LOGIN));
        Ok(c.startup_answer().last().is_some_and(|m| m.tag == b'Z'))
    })
    .unwrap();
    b.identify_system();
    s.assert_healthy("I3");
}

#[test]
fn g5_temporary_slots_end_with_their_session_and_with_a_crash() {
    let Some(mut s) = setup("g5", &[]) else {
        return;
    };
    let mut a = RawClient::login(s.port, "g5a");
    let msgs = a.query("CREATE_REPLICATION_SLOT x TEMPORARY PHYSICAL RESERVE_WAL");
    assert!(first_error(&msgs).is_none(), "{msgs:?}");
    let read = s.repl("READ_REPLICATION_SLOT x").unwrap();
    assert!(
        read.starts_with("physical|") && read.ends_with("|1") && !read.contains("||"),
        "{read}"
    );
    a.send(&terminate());
    drop(a);
    wait_until(ANSWER, "the temporary slot goes with its session", || {
        Ok(s.repl("READ_REPLICATION_SLOT x").unwrap() == "||")
    })
    .unwrap();

    let mut b = RawClient::login(s.port, "g5b");
    let msgs = b.query("CREATE_REPLICATION_SLOT y TEMPORARY PHYSICAL RESERVE_WAL");
    assert!(first_error(&msgs).is_none(), "{msgs:?}");
    s.repl("CREATE_REPLICATION_SLOT p PHYSICAL (RESERVE_WAL)")
        .unwrap();
    let persistent = s.repl("READ_REPLICATION_SLOT p").unwrap();
    assert!(persistent.starts_with("physical|0/"), "{persistent}");
    s.primary.write_load(2000).unwrap();
    s.primary.switch_wal().unwrap();
    let flush = s.primary.current_wal_flush_lsn().unwrap();
    wait_acked(&s.primary, flush, Duration::from_secs(30));
    s.relay.kill9();
    s.restart_relay();
    assert_eq!(s.repl("READ_REPLICATION_SLOT y").unwrap(), "||");
    assert_eq!(s.repl("READ_REPLICATION_SLOT p").unwrap(), persistent);
    assert!(b.until_closed(ANSWER).is_some());
    s.assert_healthy("G5");
}

#[test]
fn g7_a_dropped_slot_errors_42704_and_can_be_recreated() {
    let Some(mut s) = setup("g7", &[]) else {
        return;
    };
    s.repl("CREATE_REPLICATION_SLOT g PHYSICAL (RESERVE_WAL)")
        .unwrap();
    s.repl("DROP_REPLICATION_SLOT g").unwrap();
    let mut c = RawClient::login(s.port, "g7");
    let (_, tli, pos) = c.identify_system();
    let start = s.size.segment_start(Lsn(pos));
    let start_cmd = format!("START_REPLICATION SLOT g {start} TIMELINE {tli}");
    let msgs = c.query(&start_cmd);
    assert!(!msgs.iter().any(|m| m.tag == b'W'), "{msgs:?}");
    let e = first_error(&msgs).unwrap();
    assert_eq!(
        (e.sqlstate().as_str(), e.message().as_str()),
        ("42704", "replication slot \"g\" does not exist")
    );
    let msgs = c.query("DROP_REPLICATION_SLOT g");
    assert_eq!(first_error(&msgs).unwrap().sqlstate(), "42704");
    let msgs = c.query("CREATE_REPLICATION_SLOT g PHYSICAL (RESERVE_WAL)");
    assert!(first_error(&msgs).is_none(), "{msgs:?}");
    c.send(&query_msg(&start_cmd));
    assert_eq!(c.expect_msg(ANSWER).tag, b'W');
    let first = c.expect_msg(ANSWER);
    assert_eq!(
        first.xlogdata().map(|(at, _, _)| at),
        Some(start.0),
        "{first:?}"
    );
    c.send(&copy_done());
    let msgs = c.until_ready(ANSWER);
    assert_copy_done_ending(&msgs);
    s.assert_healthy("G7");
}

#[test]
fn startup_bad_lengths_close_silently_without_allocating() {
    let Some(mut s) = setup("lengths", &[]) else {
        return;
    };
    let pid = s.relay.pid();
    let hwm_before = vm_hwm_kb(pid);
    let mut answered = Vec::new();
    for len in [0u32, 3, 7, 10_009, 0x7fff_ffff, 0xffff_ffff] {
        let got = bytes_before_close(s.port, &packet_of_length(len));
        if !got.is_empty() {
            answered.push(format!("{len:#x}: {:?}", String::from_utf8_lossy(&got)));
        }
        s.assert_healthy(&format!("startup length {len:#x}"));
    }
    let hwm_after = vm_hwm_kb(pid);
    assert!(
        hwm_after <= hwm_before + 16 * 1024,
        "VmHWM grew from {hwm_before} kB to {hwm_after} kB"
    );
    assert!(
        answered.is_empty(),
        "answered instead of closing silently:\n{}",
        answered.join("\n")
    );
}

#[test]
fn startup_huge_length_allocates_nothing_and_closes() {
    let Some(mut s) = setup("hugelen", &[]) else {
        return;
    };
    let pid = s.relay.pid();
    let hwm_before = vm_hwm_kb(pid);
    for _ in 0..20 {
        let mut c = RawClient::connect(s.port);
        let mut bytes = 0x7fff_ffffu32.to_be_bytes().to_vec();
        bytes.extend_from_slice(&PROTOCOL_3.to_be_bytes());
        bytes.extend_from_slice(&[b'x'; 1000]);
        c.send(&bytes);
        assert!(c.raw_until_closed(ANSWER).is_some(), "still open");
    }
    let hwm_after = vm_hwm_kb(pid);
    println!("0x7fffffff startup length x20: VmHWM {hwm_before} kB -> {hwm_after} kB");
    assert!(
        hwm_after <= hwm_before + 16 * 1024,
        "VmHWM grew from {hwm_before} kB to {hwm_after} kB"
    );
    s.assert_healthy("startup length 0x7fffffff");
}

#[test]
fn startup_abuse_gets_postgres_answers() {
    let Some(mut s) = setup("startup", &["--authentication-timeout", "2s"]) else {
        return;
    };
    drop(RawClient::connect(s.port));
    s.assert_healthy("a connection closed at once");

    let mut stuffed = ssl_request();
    stuffed.extend(startup_packet(REPLICATION_LOGIN));
    let mut c = RawClient::connect(s.port);
    c.send(&stuffed);
    assert_eq!(c.read_bytes(1, ANSWER), b"N");
    let (_, msgs) = c.until_closed(ANSWER).expect("closed after SSL stuffing");
    assert_eq!(
        only_fatal(&msgs),
        (
            "08P01".into(),
            "received unencrypted data after SSL request".into()
        )
    );
    s.assert_healthy("SSLRequest and StartupMessage in one write");

    let old = bytes_before_close(s.port, &startup_packet_version(2, 0, REPLICATION_LOGIN));
    println!("protocol 2.0: {:?}", String::from_utf8_lossy(&old));
    assert!(
        String::from_utf8_lossy(&old).contains("unsupported frontend protocol 2.0"),
        "{:?}",
        String::from_utf8_lossy(&old)
    );
    s.assert_healthy("protocol 2.0");
    let msgs = messages_before_close(s.port, &startup_packet_version(4, 0, REPLICATION_LOGIN));
    let (code, text) = only_fatal(&msgs);
    assert_eq!(code, "0A000");
    assert!(
        text.starts_with("unsupported frontend protocol 4.0"),
        "{text}"
    );
    s.assert_healthy("protocol 4.0");

    let mut unterminated = startup_packet(REPLICATION_LOGIN);
    unterminated.pop();
    let msgs = messages_before_close(s.port, &first_packet(&unterminated[4..]));
    let layout = "invalid startup packet layout: expected terminator as last byte";
    assert_eq!(only_fatal(&msgs), ("08P01".into(), layout.into()));
    s.assert_healthy("a startup packet without its terminator");

    // Protocol 3.99 and a `_pq_` option: NegotiateProtocolVersion, then the login goes on.
    let mut newer = RawClient::connect(s.port);
    let mut params = REPLICATION_LOGIN.to_vec();
    params.push(("_pq_.walrelay_test", "1"));
    newer.send(&startup_packet_version(3, 99, &params));
    let msgs = newer.startup_answer();
    let mut negotiate = PROTOCOL_3.to_be_bytes().to_vec();
    negotiate.extend_from_slice(&1u32.to_be_bytes());
    negotiate.extend_from_slice(b"_pq_.walrelay_test\0");
    assert_eq!((msgs[0].tag, &msgs[0].body), (b'v', &negotiate), "{msgs:?}");
    assert_eq!((msgs[1].tag, &msgs[1].body[..]), (b'R', &[0u8; 4][..]));
    assert_eq!(msgs.last().map(|m| m.tag), Some(b'Z'));
    newer.identify_system();
    s.assert_healthy("protocol 3.99");

    let no_user = [("database", "replication"), ("replication", "true")];
    let msgs = messages_before_close(s.port, &startup_packet(&no_user));
    assert_eq!(
        only_fatal(&msgs),
        (
            "28000".into(),
            "no PostgreSQL user name specified in startup packet".into()
        )
    );
    s.assert_healthy("no user");
    let maybe = [("user", "postgres"), ("replication", "maybe")];
    let msgs = messages_before_close(s.port, &startup_packet(&maybe));
    assert_eq!(
        only_fatal(&msgs),
        (
            "22023".into(),
            "invalid value for parameter \"replication\": \"maybe\"".into()
        )
    );
    s.assert_healthy("replication=maybe");
    let logical = [
        ("user", "postgres"),
        ("database", "postgres"),
        ("replication", "database"),
    ];
    let msgs = messages_before_close(s.port, &startup_packet(&logical));
    let (code, text) = only_fatal(&msgs);
    println!("replication=database: {code} {text}");
    assert!(!code.is_empty() && !text.is_empty());
    s.assert_healthy("replication=database");

    let got = bytes_before_close(s.port, &cancel_request(0x1234_5678, 0x0bad_cafe));
    assert!(got.is_empty(), "CancelRequest answered with {got:?}");
    s.assert_healthy("CancelRequest");
}

#[test]
fn startup_silence_is_closed_at_the_authentication_timeout() {
    let Some(mut s) = setup("authtimeout", &["--authentication-timeout", "2s"]) else {
        return;
    };
    let connected = Instant::now();
    let mut idle = RawClient::connect(s.port);
    let mut half = RawClient::connect(s.port);
    let packet = startup_packet(REPLICATION_LOGIN);
    half.send(&packet[..packet.len() / 2]);
    for (what, c) in [("idle", &mut idle), ("half a startup packet", &mut half)] {
        let (_, got) = c
            .raw_until_closed(Duration::from_secs(10))
            .unwrap_or_else(|| panic!("{what}: not closed within 10 s"));
        let took = connected.elapsed();
        println!("{what}: closed after {took:?}");
        assert!(
            took >= Duration::from_millis(1500) && took <= Duration::from_secs(5),
            "{what}: closed after {took:?} with a 2 s authentication timeout"
        );
        assert!(got.is_empty(), "{what}: the relay sent {got:?}");
    }
    s.assert_healthy("silent connections");
}

/// At shutdown a stream ends as `WalSndDone` ends it: a keepalive that asks for a reply, and
/// once the client has confirmed what it was sent, `CommandComplete "COPY 0"` and the close.
#[test]
fn shutdown_asks_for_confirmation_then_ends_the_stream_with_copy_0() {
    let Some(s) = setup("shutdown", &[]) else {
        return;
    };
    let mut c = RawClient::streaming(s.port, "shutdown");
    s.relay.signal("TERM");
    let mut msgs = Vec::new();
    let mut confirmed = false;
    let tag = loop {
        match c.read_msg(ANSWER) {
            Got::Msg(m) => {
                if let Some((end, true)) = m.keepalive()
                    && !confirmed
                {
                    c.send(&copy_data(&status_update(end, end, end, false)));
                    confirmed = true;
                }
                if m.tag == b'C' {
                    break m.command_tag();
                }
                msgs.push(m);
            }
            Got::Closed => panic!("closed without CommandComplete after {msgs:?}"),
            Got::TimedOut => panic!("no CommandComplete within {ANSWER:?} after {msgs:?}"),
        }
    };
    assert!(
        confirmed,
        "no keepalive asking for a reply before the end: {msgs:?}"
    );
    assert_eq!(tag.as_deref(), Some("COPY 0"));
    assert!(
        matches!(c.read_msg(ANSWER), Got::Closed),
        "still open after COPY 0"
    );
}

/// I5, scaled to the test machine: ten clients each start 64 MB behind the durable end and
/// read as fast as they can, all from the segment files at once. The relay's peak memory grows
/// by their read buffers (up to 1 MiB each) and their sockets' share, not by their lag.
#[test]
fn i5_ten_readers_far_behind_cost_their_read_buffers_not_their_lag() {
    let Some(mut s) = setup("i5", &[]) else {
        return;
    };
    let pid = s.relay.pid();
    let start = s.size.segment_start(s.primary.switch_wal().unwrap());
    for _ in 0..16 {
        s.primary.emit_message(4 << 20).unwrap();
    }
    let end = s.primary.switch_wal().unwrap();
    wait_acked(&s.primary, end, Duration::from_secs(60));
    let hwm_before = vm_hwm_kb(pid);
    let port = s.port;
    let readers: Vec<_> = (0..10)
        .map(|i| {
            std::thread::spawn(move || {
                let mut c = RawClient::login(port, &format!("behind{i}"));
                c.send(&query_msg(&format!(
                    "START_REPLICATION {} TIMELINE 1",
                    lsn_text(start.0)
                )));
                assert_eq!(c.expect_msg(ANSWER).tag, b'W');
                let mut at = start.0;
                while at < end.0 {
                    let m = c.expect_msg(ANSWER);
                    if let Some((from, _, n)) = m.xlogdata() {
                        assert_eq!(from, at, "a gap in the stream");
                        at += n as u64;
                    }
                }
                at - start.0
            })
        })
        .collect();
    let read: Vec<u64> = readers.into_iter().map(|r| r.join().unwrap()).collect();
    let hwm_after = vm_hwm_kb(pid);
    println!(
        "I5: 10 readers read {} MB each from {start}; VmHWM {hwm_before} kB -> {hwm_after} kB",
        read[0] >> 20
    );
    assert!(read.iter().all(|&n| n >= 64 << 20), "{read:?}");
    assert!(
        hwm_after <= hwm_before + 10 * 2 * 1024 + 8 * 1024,
        "VmHWM grew from {hwm_before} kB to {hwm_after} kB"
    );
    s.assert_healthy("I5");
}

/// I1: a thousand connections that send nothing or half a startup packet are all closed at
/// the authentication timeout; while they hang on, a client logs in and IDENTIFY_SYSTEM
/// answers in under a second, and the relay's memory hardly moves.
#[test]
fn i1_a_thousand_idle_connections_are_closed_and_service_goes_on() {
    let Some(mut s) = setup("i1", &["--authentication-timeout", "3s"]) else {
        return;
    };
    let pid = s.relay.pid();
    let hwm_before = vm_hwm_kb(pid);
    let packet = startup_packet(REPLICATION_LOGIN);
    let opened = Instant::now();
    let mut flood: Vec<std::net::TcpStream> = (0..1000)
        .map(|i| {
            let mut c = std::net::TcpStream::connect(("127.0.0.1", s.port)).unwrap();
            if i % 2 == 1 {
                c.write_all(&packet[..packet.len() / 2]).unwrap();
            }
            c
        })
        .collect();
    let asked = Instant::now();
    let mut c = RawClient::login(s.port, "during-the-flood");
    let (system_id, _, _) = c.identify_system();
    let answered = asked.elapsed();
    println!(
        "I1: 1000 connections opened in {:?}; login and IDENTIFY_SYSTEM took {answered:?}",
        asked - opened
    );
    assert!(!system_id.is_empty());
    assert!(
        answered < Duration::from_secs(1),
        "IDENTIFY_SYSTEM took {answered:?}"
    );
    let mut open = 0;
    for conn in &mut flood {
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut byte = [0_u8; 1];
        match conn.read(&mut byte) {
            Ok(0) => {}
            Ok(_) => panic!("the relay answered a connection that never logged in"),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(_) => open += 1,
        }
    }
    let took = opened.elapsed();
    println!("I1: all closed {took:?} after they were opened, {open} still open");
    assert_eq!(
        open, 0,
        "connections left open past the authentication timeout"
    );
    assert!(took < Duration::from_secs(10), "closing took {took:?}");
    let hwm_after = vm_hwm_kb(pid);
    println!("I1: VmHWM {hwm_before} kB -> {hwm_after} kB");
    // About 5 kB a connection that has not logged in.
    assert!(
        hwm_after <= hwm_before + 16 * 1024,
        "VmHWM grew from {hwm_before} kB to {hwm_after} kB"
    );
    s.assert_healthy("I1");
}

/// I2: a startup packet sent one byte a second is closed at the authentication timeout: the
/// timeout covers the whole startup, not each read.
#[test]
fn i2_a_slowloris_startup_is_closed_at_the_authentication_timeout() {
    let Some(mut s) = setup("i2", &["--authentication-timeout", "3s"]) else {
        return;
    };
    let packet = startup_packet(REPLICATION_LOGIN);
    let mut c = std::net::TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    // Each read waits a second for the close: that is the pause between two bytes.
    c.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let connected = Instant::now();
    let mut sent = 0;
    let closed = loop {
        let Some(byte) = packet.get(sent..=sent) else {
            break None;
        };
        if c.write_all(byte).is_err() {
            break Some(connected.elapsed());
        }
        sent += 1;
        let mut buf = [0_u8; 64];
        match c.read(&mut buf) {
            Ok(0) => break Some(connected.elapsed()),
            Ok(n) => panic!("the relay answered half a startup packet: {:?}", &buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                break Some(connected.elapsed());
            }
            Err(_) => {}
        }
    };
    println!(
        "I2: closed after {closed:?}, {sent} of {} bytes sent",
        packet.len()
    );
    let closed = closed.expect("a startup packet at 1 byte/s was never closed");
    assert!(
        closed >= Duration::from_millis(2500) && closed <= Duration::from_secs(6),
        "closed after {closed:?} with a 3 s authentication timeout"
    );
    s.assert_healthy("I2");
}

#[test]
fn command_mode_abuse_gets_postgres_answers() {
    let Some(mut s) = setup("commands", &["--sender-timeout", "4s"]) else {
        return;
    };
    let mut c = RawClient::login(s.port, "abuse");
    c.send(&message(0x99, &[]));
    let e = c
        .error_then_close()
        .expect("no error for message type 0x99");
    assert_eq!(
        (e.severity(), e.sqlstate(), e.message()),
        (
            "FATAL".into(),
            "08P01".into(),
            "invalid frontend message type 153".into()
        )
    );
    s.assert_healthy("message type 0x99");

    let mut c = RawClient::login(s.port, "abuse");
    let msgs = c.query("START_REPLICATION 0/0 TIMELINE 0");
    assert_eq!(first_error(&msgs).unwrap().message(), "invalid timeline 0");
    let msgs = c.query("START_REPLICATION 0/0 TIMELINE 9");
    assert!(!msgs.iter().any(|m| m.tag == b'W'), "{msgs:?}");
    assert_eq!(
        first_error(&msgs).unwrap().message(),
        "requested timeline 9 is not in this server's history"
    );
    c.identify_system();
    s.assert_healthy("TIMELINE 0 and TIMELINE 9");

    // A start far ahead waits for WAL with keepalives instead of failing.
    c.send(&query_msg("START_REPLICATION FFFFFFFF/FFFFFFFF TIMELINE 1"));
    assert_eq!(c.expect_msg(ANSWER).tag, b'W');
    let t0 = Instant::now();
    let ping = c.expect_msg(Duration::from_secs(4));
    assert_eq!(
        ping.keepalive(),
        Some((u64::MAX, true)),
        "after {:?}: {ping:?}",
        t0.elapsed()
    );
    c.send(&copy_data(&status_update(0, 0, 0, true)));
    let pong = c.expect_msg(ANSWER);
    assert_eq!(pong.keepalive(), Some((u64::MAX, false)), "{pong:?}");
    std::thread::sleep(Duration::from_millis(500));
    c.send(&copy_done());
    assert_copy_done_ending(&c.until_ready(ANSWER));
    c.identify_system();
    s.assert_healthy("START_REPLICATION FFFFFFFF/FFFFFFFF");

    let mut c = RawClient::login(s.port, "abuse");
    let mut huge = vec![b'Q'];
    huge.extend_from_slice(&0x7fff_fff0u32.to_be_bytes());
    c.send(&huge);
    assert!(c.until_closed(ANSWER).is_some());
    s.assert_healthy("a Query announcing 2 GB");
}

#[test]
fn streaming_abuse_closes_only_the_offender() {
    let Some(mut s) = setup("streaming", &["--sender-timeout", "4s"]) else {
        return;
    };
    let pid = s.relay.pid();
    let hwm_before = vm_hwm_kb(pid);

    let mut long = status_update(1, 1, 0, false);
    long.push(0);
    let short = status_update(1, 1, 0, false)[..10].to_vec();
    // Malformed replies end the connection with an error; PostgreSQL closes silently on an
    // unknown CopyData type, so there the error is optional.
    for (what, payload, error_required) in [
        ("'r' with a trailing byte", long, true),
        ("'r' of 10 bytes", short, true),
        ("an unknown CopyData type 'x'", b"x123".to_vec(), false),
        (
            "'r' with a flush beyond the relay's WAL",
            status_update(1, 0xFFFF_FFFF_0000_0000, 0, false),
            true,
        ),
    ] {
        let mut c = RawClient::streaming(s.port, "abuse");
        c.send(&copy_data(&payload));
        match c.error_then_close() {
            Some(e) => {
                println!("{what}: {} {} {}", e.severity(), e.sqlstate(), e.message());
                assert_eq!(e.sqlstate(), "08P01", "{what}");
                if what.contains("beyond") {
                    assert!(
                        e.message().starts_with(
                            "standby reported flush position FFFFFFFF/0, which is ahead of"
                        ),
                        "{}",
                        e.message()
                    );
                }
            }
            None => assert!(!error_required, "{what}: closed without an error"),
        }
        s.assert_healthy(what);
    }

    let mut c = RawClient::streaming(s.port, "abuse");
    c.send(&query_msg("IDENTIFY_SYSTEM"));
    let e = c
        .error_then_close()
        .expect("a Query while streaming closed silently");
    assert_eq!(e.message(), "invalid standby message type \"Q\"");
    s.assert_healthy("a Query while streaming");

    let mut c = RawClient::streaming(s.port, "abuse");
    let mut header = vec![b'd'];
    header.extend_from_slice(&100_000_004u32.to_be_bytes());
    header.extend_from_slice(b"r");
    c.send(&header);
    assert!(
        c.until_closed(ANSWER).is_some(),
        "100 MB CopyData left open"
    );
    s.assert_healthy("a 100 MB CopyData header");
    let hwm_after = vm_hwm_kb(pid);
    assert!(
        hwm_after <= hwm_before + 16 * 1024,
        "VmHWM grew from {hwm_before} kB to {hwm_after} kB"
    );

    let mut c = RawClient::streaming(s.port, "abuse");
    let mut twice = copy_done();
    twice.extend(copy_done());
    c.send(&twice);
    assert_copy_done_ending(&c.until_ready(ANSWER));
    c.identify_system();
    s.assert_healthy("CopyDone twice");

    let mut c = RawClient::streaming(s.port, "abuse");
    c.send(&terminate());
    assert!(
        c.until_closed(ANSWER).is_some(),
        "Terminate mid-stream left open"
    );
    s.assert_healthy("Terminate mid-stream");

    let mut c = RawClient::streaming(s.port, "abuse");
    c.shutdown_write();
    assert!(c.until_closed(ANSWER).is_some(), "half-close left open");
    s.assert_healthy("a half-close while streaming");
}
