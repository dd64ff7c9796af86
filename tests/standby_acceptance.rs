//! Real PostgreSQL 15 hot standbys behind the relay, as ACCEPTANCE.md's rows say: three standbys
//! converge on the primary's data and the relay's segments equal the archive (A1, at 1 MB and
//! 16 MB segments), a base backup recovers from the relay's WAL directory as from an archive
//! (A10), hot-standby feedback reaches the primary's slot and is released (A8), an
//! idle topology with 10 s timeouts never reconnects (A9), a slow standby neither holds back
//! the others nor grows the relay's memory (E1), 3 standbys and 20 `pg_receivewal` converge
//! (E8), an offline standby catches up from its slot (G1), and a slot past
//! `--max-slot-wal-keep-size` is invalidated while removal goes on, its WAL refused to the
//! standby as PostgreSQL refuses it (G2). Every row runs at 1 MB and at 16 MB segments (G2's
//! removed-WAL-still-in-memory case at 1 MB only). Feedback not "in the recent past" of the
//! primary's xids is ignored rather than forwarded. Removed segments written again as new
//! ones leave every standby's and receiver's WAL equal to the archive.
//!
//! Durations are scaled for CI and tunable: `WALRELAY_A1_SECS` (pgbench run, default 20),
//! `WALRELAY_A9_SECS` (idle time, default 35; the row says 180), `WALRELAY_E1_SECS` (throttled
//! load, default 12).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod downstream_client;
mod support;

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use downstream_client::{RawClient, copy_data};
use support::slow_link::SlowLink;
use support::*;
use walrelay::testkit::localpg::{
    Cluster, ClusterBuilder, PgBinaries, PgProcess, ScratchDir, StopMode, free_port,
    require_postgres, run, wait_until,
};
use walrelay::types::{Lsn, SegmentName, TimelineId, WalSegmentSize};

const MB: u64 = 1 << 20;

/// O9's memory budget: 64 MB plus 4 MB per connection (the upstream one included).
fn memory_budget(downstreams: u64) -> u64 {
    64 * MB + 4 * MB * (downstreams + 1)
}

/// A primary with archiving, the relay streaming from it and listening for downstreams.
/// Fields drop in order: relay, primary, then the directory.
struct Topo {
    relay: RelayProcess,
    primary: Cluster,
    bins: PgBinaries,
    size: WalSegmentSize,
    relay_port: u16,
    _dir: ScratchDir,
}

/// Starts the topology; `relay_args` follow `--listen` (through [`RelayProcess::start`] with
/// its test intervals, or with `bare` through [`RelayProcess::start_bare`]).
fn topo(
    label: &str,
    segment_mb: u32,
    primary_config: &[(&str, &str)],
    relay_args: &[&str],
    bare: bool,
) -> Option<Topo> {
    topo_with(label, segment_mb, primary_config, relay_args, bare, |_| {})
}

/// [`topo`], with `prepare` run on the primary after `initdb` and before it starts.
fn topo_with(
    label: &str,
    segment_mb: u32,
    primary_config: &[(&str, &str)],
    relay_args: &[&str],
    bare: bool,
    prepare: impl FnOnce(&Cluster),
) -> Option<Topo> {
    let bins = require_postgres()?;
    let dir = scratch(&bins, label);
    let mut builder = ClusterBuilder::new(bins.clone(), dir.path())
        .segment_size_mb(segment_mb)
        .archive(true);
    for (key, value) in primary_config {
        builder = builder.config(key, value);
    }
    let mut primary = builder.init().unwrap();
    prepare(&primary);
    primary.start().unwrap();
    let relay_port = free_port().unwrap();
    let listen = format!("127.0.0.1:{relay_port}");
    let mut args = vec!["--listen", listen.as_str()];
    args.extend_from_slice(relay_args);
    let data = dir.path().join("relay");
    let relay = if bare {
        RelayProcess::start_bare(&primary.conninfo(), &data, &args)
    } else {
        RelayProcess::start(&primary.conninfo(), &data, &args)
    };
    let now = primary.current_wal_flush_lsn().unwrap();
    wait_acked(&primary, now, Duration::from_secs(30));
    let size = primary.wal_segment_size().unwrap();
    Some(Topo {
        relay,
        primary,
        bins,
        size,
        relay_port,
        _dir: dir,
    })
}

impl Topo {
    fn relay_conninfo(&self) -> String {
        format!("host=127.0.0.1 port={} user=postgres", self.relay_port)
    }

    /// A replication command on the relay.
    fn repl(&self, sql: &str) -> String {
        let conninfo = format!("{} replication=1", self.relay_conninfo());
        self.bins
            .psql(&conninfo, sql)
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// A hot standby on relay slot `slot` (created here), streaming from the relay, or from
    /// `via_port` when given (a proxy in front of the relay), with `config` set. Started.
    fn standby(&self, slot: &str, via_port: Option<u16>, config: &[(&str, &str)]) -> Cluster {
        self.repl(&format!("CREATE_REPLICATION_SLOT \"{slot}\" PHYSICAL"));
        let port = via_port.unwrap_or(self.relay_port);
        let conninfo = format!("host=127.0.0.1 port={port} user=postgres application_name={slot}");
        let mut standby = self
            .primary
            .basebackup_standby(&conninfo, Some(slot))
            .unwrap();
        for (key, value) in config {
            standby.set_config(key, value).unwrap();
        }
        standby.start().unwrap();
        standby
    }

    /// `READ_REPLICATION_SLOT name`'s `restart_lsn`, `None` when NULL.
    fn slot_restart(&self, name: &str) -> Option<Lsn> {
        let row = self.repl(&format!("READ_REPLICATION_SLOT {name}"));
        let field = row.split('|').nth(1).unwrap_or_default();
        (!field.is_empty()).then(|| field.parse().unwrap())
    }

    /// Waits until slot `name` has a `restart_lsn` (its standby has reported a flush).
    fn wait_slot_reserved(&self, name: &str) -> Lsn {
        let mut restart = None;
        wait_until(Duration::from_secs(30), "slot restart_lsn", || {
            restart = self.slot_restart(name);
            Ok(restart.is_some())
        })
        .unwrap();
        restart.unwrap()
    }

    /// O1's target: `CHECKPOINT; SELECT pg_switch_wal()` on the primary, then its flush LSN.
    /// The switched segment is awaited in the archive.
    fn converge_target(&self) -> Lsn {
        self.primary.psql("CHECKPOINT").unwrap();
        let switched = self.primary.switch_wal().unwrap();
        let target = self.primary.current_wal_flush_lsn().unwrap();
        self.primary
            .wait_archived(switched, Duration::from_secs(60))
            .unwrap();
        target
    }

    /// The file name of the segment holding `lsn` on timeline 1.
    fn segment_name(&self, lsn: Lsn) -> String {
        SegmentName {
            timeline: TimelineId::ONE,
            segno: self.size.segment_of(lsn),
        }
        .file_name(self.size)
    }

    /// `n` `pg_receivewal` streaming from the relay without slots, each into a directory of its
    /// own beside the relay's data.
    fn receivers(&self, n: usize) -> Vec<(PgProcess, PathBuf)> {
        let root = self.relay.data_dir.parent().unwrap().to_owned();
        (0..n)
            .map(|i| {
                let dir = root.join(format!("recv{i}"));
                fs::create_dir_all(&dir).unwrap();
                let conninfo = format!("{} application_name=recv{i}", self.relay_conninfo());
                (self.bins.receivewal(&conninfo, &dir, &[]).unwrap(), dir)
            })
            .collect()
    }

    /// Waits until each receiver has completed segment `last`, stops it, and compares its
    /// completed segments with the archive (O3); returns how many were compared.
    fn finish_receivers(&self, receivers: Vec<(PgProcess, PathBuf)>, last: &str) -> usize {
        let mut compared = 0;
        for (mut process, dir) in receivers {
            wait_until(
                Duration::from_secs(60),
                "pg_receivewal completed it",
                || Ok(dir.join(last).exists()),
            )
            .unwrap_or_else(|e| panic!("{e}: {}", process.log_contents()));
            process.stop().unwrap();
            compared += assert_same_segments(&dir, &self.primary.archive_dir(), self.size);
        }
        compared
    }

    /// O10 for slot `name`: the segment holding its `restart_lsn` and every later one the
    /// relay has stored are in the relay's WAL directory. The directory is listed before the
    /// slot is read, so retention moving on in between cannot fail the check. Returns the
    /// slot's `restart_lsn`.
    fn assert_slot_wal_kept(&self, name: &str) -> Option<Lsn> {
        let listed = wal_files(&self.relay.wal_dir());
        let restart = self.slot_restart(name)?;
        let last = listed.iter().next_back().cloned().unwrap_or_default();
        let mut segno = self.size.segment_of(restart);
        loop {
            let file = SegmentName {
                timeline: TimelineId::ONE,
                segno,
            }
            .file_name(self.size);
            if file.as_str() > last.as_str() {
                return Some(restart);
            }
            assert!(
                listed.contains(&file),
                "O10: slot {name} has restart_lsn {restart} but {file} is missing from the \
                 relay's WAL directory: {listed:?}"
            );
            segno = segno.next().unwrap();
        }
    }
}

fn receive_lsn(standby: &Cluster) -> Lsn {
    let sql = "SELECT coalesce(pg_last_wal_receive_lsn(), '0/0')";
    standby.psql(sql).unwrap().parse().unwrap()
}

/// O1: every standby replays to `target` within 60 s.
fn wait_replayed(standbys: &[&Cluster], target: Lsn) {
    for (i, standby) in standbys.iter().enumerate() {
        wait_until(
            Duration::from_secs(60),
            &format!("standby {} replays to {target}", i + 1),
            || Ok(standby.replay_lsn()? >= target),
        )
        .unwrap();
    }
}

/// O6: the standby's walreceiver is streaming within 30 s.
fn wait_streaming(standby: &Cluster) {
    wait_until(Duration::from_secs(30), "walreceiver streaming", || {
        Ok(standby.psql("SELECT status FROM pg_stat_wal_receiver")? == "streaming")
    })
    .unwrap();
}

fn walreceiver_pid(standby: &Cluster) -> String {
    standby
        .psql("SELECT pid FROM pg_stat_wal_receiver")
        .unwrap()
}

/// Writes at least `bytes` of WAL on the primary in rows and messages; returns its flush LSN.
fn write_wal(primary: &Cluster, bytes: u64) -> Lsn {
    let start = primary.current_wal_flush_lsn().unwrap();
    loop {
        primary.write_load(500).unwrap();
        let end = primary.emit_message(128 * 1024).unwrap();
        if end.saturating_distance(start) >= bytes {
            return end;
        }
    }
}

/// `pg_dumpall` of a server with `extra` flags, without the `\restrict` and `\unrestrict`
/// lines whose keys are random in each dump (PostgreSQL 15.14 and later).
fn dumpall(server: &Cluster, extra: &[&str]) -> String {
    let mut cmd = server.bins().command("pg_dumpall");
    cmd.args(["-h", "127.0.0.1", "-p", &server.port().to_string()])
        .args(["-U", "postgres"])
        .args(extra);
    let dump = run(&mut cmd).unwrap();
    let keep = |l: &&str| !l.starts_with("\\restrict ") && !l.starts_with("\\unrestrict ");
    dump.lines().filter(keep).collect::<Vec<_>>().join("\n")
}

/// O2: the primary's `pg_dumpall --no-unlogged-table-data` equals each standby's dump.
fn assert_same_dumps(primary: &Cluster, standbys: &[&Cluster]) {
    let ours = dumpall(primary, &["--no-unlogged-table-data"]);
    for (i, standby) in standbys.iter().enumerate() {
        assert_same_dump(&ours, &dumpall(standby, &[]), &format!("standby {}", i + 1));
    }
}

/// O2's comparison of the primary's dump with `what`'s.
fn assert_same_dump(ours: &str, theirs: &str, what: &str) {
    if ours != theirs {
        let first = ours
            .lines()
            .zip(theirs.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(0);
        let show = |s: &str| s.lines().skip(first).take(5).collect::<Vec<_>>().join("\n");
        panic!(
            "O2: {what} differs from the primary at dump line {first}:\nprimary:\n{}\n{what}:\n{}",
            show(ours),
            show(theirs)
        );
    }
}

/// The 027 recipe: every sequence's state WAL-logged exactly, in each database.
fn settle_sequences(primary: &Cluster, databases: &[&str]) {
    for db in databases {
        let conninfo = format!("{} dbname={db}", primary.conninfo());
        primary
            .bins()
            .psql(
                &conninfo,
                "SELECT count(setval(seqrelid, nextval(seqrelid))) FROM pg_sequence",
            )
            .unwrap();
    }
}

/// Wddl, run while pgbench writes: CREATE DATABASE, an index build, VACUUM FULL, TRUNCATE,
/// a sequence, an unlogged table and a two-phase commit.
fn ddl_workload(primary: &Cluster) {
    let db2 = format!("{} dbname=walrelay_db2", primary.conninfo());
    for sql in [
        "CREATE DATABASE walrelay_db2",
        "CREATE INDEX pgbench_accounts_abalance ON pgbench_accounts (abalance)",
        "VACUUM FULL pgbench_tellers",
        "CREATE TABLE scratch AS SELECT g FROM generate_series(1, 20000) g",
        "TRUNCATE scratch",
        "INSERT INTO scratch VALUES (1), (2)",
        "CREATE SEQUENCE seq1",
        "SELECT count(nextval('seq1')) FROM generate_series(1, 100)",
        "CREATE UNLOGGED TABLE unlogged1 AS SELECT g FROM generate_series(1, 5000) g",
        "BEGIN; INSERT INTO scratch VALUES (3); PREPARE TRANSACTION 'p1'",
        "COMMIT PREPARED 'p1'",
    ] {
        primary.psql(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    for sql in [
        "CREATE TABLE items (id serial PRIMARY KEY, v text)",
        "INSERT INTO items (v) SELECT md5(g::text) FROM generate_series(1, 5000) g",
        "CREATE INDEX items_v ON items (v)",
    ] {
        primary.bins().psql(&db2, sql).unwrap();
    }
}

/// A1: three standbys on relay slots converge on the primary's data under pgbench plus DDL
/// (O1, O2), the relay's completed segments equal the archive (O3, O4), and the primary
/// streams to the relay alone.
fn three_standbys_converge(label: &str, segment_mb: u32, scale: &str, clients: &str, secs: u64) {
    let config = [("max_prepared_transactions", "10")];
    let Some(t) = topo(label, segment_mb, &config, &[], false) else {
        return;
    };
    let started = Instant::now();
    let standbys: Vec<Cluster> = ["d1", "d2", "d3"]
        .iter()
        .map(|slot| t.standby(slot, None, &[]))
        .collect();
    t.primary.pgbench(&["-i", "-q", "-s", scale]).unwrap();
    let secs = secs.to_string();
    let pgbench = ["-c", clients, "-j", "2", "-T", &secs, "-n"];
    let out = std::thread::scope(|s| {
        let bench = s.spawn(|| t.primary.pgbench(&pgbench));
        std::thread::sleep(Duration::from_secs(1));
        ddl_workload(&t.primary);
        bench.join().unwrap().unwrap()
    });
    let tps = out.lines().find(|l| l.starts_with("tps")).unwrap_or("");
    settle_sequences(&t.primary, &["postgres", "walrelay_db2"]);
    let target = t.converge_target();
    let refs: Vec<&Cluster> = standbys.iter().collect();
    wait_replayed(&refs, target);
    assert_same_dumps(&t.primary, &refs);
    let compared = assert_same_segments(&t.relay.wal_dir(), &t.primary.archive_dir(), t.size);
    assert_waldump(&t.bins, &t.relay.wal_dir(), t.size);
    let senders = t
        .primary
        .psql("SELECT string_agg(application_name, ',') FROM pg_stat_replication")
        .unwrap();
    assert_eq!(
        senders, "walrelay",
        "only the relay streams from the primary"
    );
    println!(
        "A1 {segment_mb} MB segments: {compared} segments equal the archive, target {target}, \
         {tps}, {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn a1_three_standbys_converge_1mb_segments() {
    let secs = env_u64("WALRELAY_A1_SECS", 20);
    three_standbys_converge("a1-1mb", 1, "5", "4", secs);
}

#[test]
fn a1_three_standbys_converge_16mb_segments() {
    let secs = env_u64("WALRELAY_A1_SECS", 20) / 4;
    three_standbys_converge("a1-16mb", 16, "2", "2", secs.max(1));
}

/// A10: the relay's WAL directory is an archive. A base backup of the primary taken without
/// WAL (`pg_basebackup -X none`) while the relay streams recovers from a copy of that directory
/// alone, with `restore_command = 'cp …/%f %p'`: it replays pgbench and Wddl written after the
/// backup, ends archive recovery at the end of the last completed segment (the primary's last
/// switch) on a new timeline, and holds the primary's data (O2).
fn restores_from_the_relays_storage(label: &str, segment_mb: u32) {
    let config = [("max_prepared_transactions", "10")];
    let Some(t) = topo(label, segment_mb, &config, &[], false) else {
        return;
    };
    t.primary.pgbench(&["-i", "-q", "-s", "2"]).unwrap();
    let backup = restore::backup_without_wal(&t.primary);
    t.primary
        .pgbench(&["-c", "2", "-j", "2", "-t", "300", "-n"])
        .unwrap();
    ddl_workload(&t.primary);
    settle_sequences(&t.primary, &["postgres", "walrelay_db2"]);
    let target = t.converge_target();
    wait_acked(&t.primary, target, Duration::from_secs(60));
    let restored = restore::restore_from_relay_wal(&t.primary, backup, &t.relay.wal_dir());
    let last_segment_end = t.size.segment_start(target);
    assert!(
        restored.ended >= last_segment_end,
        "A10: recovery ended at {}, before the last completed segment's end {last_segment_end}",
        restored.ended
    );
    // Out of recovery, the restored server dumps its (emptied) unlogged tables' data too.
    let flags = ["--no-unlogged-table-data"];
    let theirs = dumpall(&restored.server, &flags);
    assert_same_dump(&dumpall(&t.primary, &flags), &theirs, "restored");
    println!(
        "A10 {segment_mb} MB segments: {} files restored from the relay's WAL, recovery ended \
         at {}",
        restored.restored_files, restored.ended
    );
}

#[test]
fn a10_restores_from_the_relays_storage_1mb_segments() {
    restores_from_the_relays_storage("a10-1mb", 1);
}

#[test]
fn a10_restores_from_the_relays_storage_16mb_segments() {
    restores_from_the_relays_storage("a10-16mb", 16);
}

/// The primary's xmin for the relay's slot, `None` when NULL.
fn relay_slot_xmin(primary: &Cluster) -> Option<u64> {
    let sql = "SELECT xmin FROM pg_replication_slots WHERE slot_name = 'walrelay'";
    primary.psql(sql).unwrap().parse().ok()
}

fn wait_xmin(primary: &Cluster, held: bool, within: Duration, what: &str) {
    wait_until(within, what, || {
        Ok(relay_slot_xmin(primary).is_some() == held)
    })
    .unwrap();
}

/// A psql session on the standby holding a REPEATABLE READ snapshot open between queries.
struct OpenSnapshot {
    child: std::process::Child,
    input: std::process::ChildStdin,
    output: BufReader<std::process::ChildStdout>,
}

impl OpenSnapshot {
    fn begin(standby: &Cluster, query: &str) -> (OpenSnapshot, String) {
        let mut cmd = standby.bins().command("psql");
        cmd.args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-d"])
            .arg(standby.conninfo())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let input = child.stdin.take().unwrap();
        let output = BufReader::new(child.stdout.take().unwrap());
        let mut s = OpenSnapshot {
            child,
            input,
            output,
        };
        let first = s.query(&format!("BEGIN ISOLATION LEVEL REPEATABLE READ; {query}"));
        (s, first)
    }

    fn query(&mut self, sql: &str) -> String {
        writeln!(self.input, "{sql};").unwrap();
        self.input.flush().unwrap();
        let mut line = String::new();
        self.output.read_line(&mut line).unwrap();
        line.trim().to_owned()
    }

    /// Commits and returns psql's stderr, or panics when psql failed.
    fn commit(mut self) -> String {
        writeln!(self.input, "COMMIT;").unwrap();
        drop(self.input);
        let status = self.child.wait().unwrap();
        let mut stderr = String::new();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        assert!(status.success(), "the standby's session failed: {stderr}");
        stderr
    }
}

at_1mb_and_16mb_segments!(
    /// A8: hot-standby feedback from a standby behind the relay holds the primary's `walrelay`
    /// slot xmin, so VACUUM on the primary does not cancel the standby's snapshot (with
    /// `max_standby_streaming_delay=0`); the xmin is released when feedback is switched off and
    /// when the standby stops, and comes back when it is switched on again.
    a8_hot_standby_feedback_holds_and_releases_the_primary_xmin_1mb_segments,
    a8_hot_standby_feedback_holds_and_releases_the_primary_xmin_16mb_segments,
    |mb| hot_standby_feedback_holds_and_releases(&format!("a8-{mb}"), mb)
);

fn hot_standby_feedback_holds_and_releases(label: &str, segment_mb: u32) {
    let Some(t) = topo(label, segment_mb, &[], &[], false) else {
        return;
    };
    t.primary
        .psql("CREATE TABLE feedback_t AS SELECT g FROM generate_series(1, 10000) g")
        .unwrap();
    let config = [
        ("hot_standby_feedback", "on"),
        ("wal_receiver_status_interval", "1s"),
        ("max_standby_streaming_delay", "0"),
    ];
    let mut standby = t.standby("d1", None, &config);
    wait_xmin(&t.primary, true, Duration::from_secs(10), "slot xmin held");
    let (mut snapshot, before) = OpenSnapshot::begin(&standby, "SELECT count(*) FROM feedback_t");
    assert_eq!(before, "10000");
    std::thread::sleep(Duration::from_secs(2));
    t.primary.psql("DELETE FROM feedback_t").unwrap();
    t.primary.psql("VACUUM feedback_t").unwrap();
    let end = t.primary.current_wal_flush_lsn().unwrap();
    wait_replayed(&[&standby], end);
    assert_eq!(snapshot.query("SELECT count(*) FROM feedback_t"), "10000");
    let stderr = snapshot.commit();
    assert!(!stderr.contains("conflict with recovery"), "{stderr}");
    let feedback = |on: &str| {
        let sql = format!("ALTER SYSTEM SET hot_standby_feedback = {on}");
        standby.psql(&sql).unwrap();
        standby.psql("SELECT pg_reload_conf()").unwrap();
    };
    feedback("off");
    wait_xmin(&t.primary, false, Duration::from_secs(30), "xmin released");
    feedback("on");
    wait_xmin(&t.primary, true, Duration::from_secs(10), "xmin held again");
    standby.stop(StopMode::Fast).unwrap();
    wait_xmin(&t.primary, false, Duration::from_secs(30), "xmin released");
}

/// Hot-standby feedback not "in the recent past" from one client is ignored, as a walsender
/// ignores it: on a primary in xid epoch 5, a client that reports an xmin of epoch 0 must not
/// become the minimum the relay reports (the primary would ignore that, and so stop following
/// the honest standby's xmin).
#[test]
fn feedback_not_in_the_recent_past_is_ignored() {
    let prepare = |primary: &Cluster| {
        let mut cmd = primary.bins().command("pg_resetwal");
        cmd.arg("-e").arg("5").arg(primary.data_dir());
        run(&mut cmd).unwrap();
    };
    let Some(t) = topo_with("feedback-epoch", 1, &[], &[], false, prepare) else {
        return;
    };
    let next = t.primary.psql("SELECT txid_current()").unwrap();
    assert!(
        next.parse::<u64>().unwrap() >> 32 == 5,
        "txid {next} is not in epoch 5"
    );
    t.primary.psql("CHECKPOINT").unwrap();
    wait_acked(
        &t.primary,
        t.primary.current_wal_flush_lsn().unwrap(),
        Duration::from_secs(30),
    );
    let config = [
        ("hot_standby_feedback", "on"),
        ("wal_receiver_status_interval", "1s"),
    ];
    let _standby = t.standby("d1", None, &config);
    wait_xmin(&t.primary, true, Duration::from_secs(10), "slot xmin held");
    let first = relay_slot_xmin(&t.primary).unwrap();

    let mut hostile = RawClient::streaming(t.relay_port, "hostile");
    let mut h = vec![b'h'];
    h.extend_from_slice(&0_i64.to_be_bytes());
    for v in [3_u32, 0, 0, 0] {
        h.extend_from_slice(&v.to_be_bytes());
    }
    for _ in 0..3 {
        hostile.send(&copy_data(&h));
    }
    // The honest standby's xmin goes on moving on the primary.
    for _ in 0..20 {
        t.primary.psql("SELECT txid_current()").unwrap();
    }
    wait_until(
        Duration::from_secs(15),
        "the primary's xmin moves on",
        || Ok(relay_slot_xmin(&t.primary).is_some_and(|x| x != first)),
    )
    .unwrap();
    println!(
        "feedback: xmin {first} moved on to {:?}",
        relay_slot_xmin(&t.primary)
    );
    // One warning for the stream, however often it repeats itself.
    let warned = t.relay.count_log(0, "ignoring hot standby feedback");
    assert_eq!(warned, 1, "{}", t.relay.log_contents());
}

/// Lines after byte `offset` of `log` that contain `needle` in lower case.
fn lines_with(log: &str, offset: usize, needle: &str) -> Vec<String> {
    let new = log.get(offset..).unwrap_or_default().lines();
    let found = new.filter(|l| l.to_ascii_lowercase().contains(needle));
    found.map(str::to_owned).collect()
}

at_1mb_and_16mb_segments!(
    /// A9: with every timeout at 10 s and no WAL for `WALRELAY_A9_SECS`, nothing reconnects and
    /// nobody logs a timeout.
    a9_idle_topology_keeps_its_connections_1mb_segments,
    a9_idle_topology_keeps_its_connections_16mb_segments,
    |mb| idle_topology_keeps_its_connections(&format!("a9-{mb}"), mb)
);

fn idle_topology_keeps_its_connections(label: &str, segment_mb: u32) {
    let primary_config = [("wal_sender_timeout", "10s"), ("log_connections", "on")];
    let relay_args = [
        "--receive-timeout",
        "10s",
        "--sender-timeout",
        "10s",
        "--status-interval",
        "10s",
    ];
    let Some(t) = topo(label, segment_mb, &primary_config, &relay_args, true) else {
        return;
    };
    let config = [
        ("wal_receiver_timeout", "10s"),
        ("wal_receiver_status_interval", "10s"),
    ];
    let standby = t.standby("d1", None, &config);
    wait_streaming(&standby);
    t.primary.write_load(10).unwrap();
    wait_replayed(&[&standby], t.primary.current_wal_flush_lsn().unwrap());
    let backend_start = || {
        let sql =
            "SELECT backend_start FROM pg_stat_replication WHERE application_name = 'walrelay'";
        t.primary.psql(sql).unwrap()
    };
    let (start, pid) = (backend_start(), walreceiver_pid(&standby));
    let relay_at = t.relay.log_len();
    let (primary_at, standby_at) = (t.primary.log_contents().len(), standby.log_contents().len());
    let secs = env_u64("WALRELAY_A9_SECS", 35);
    std::thread::sleep(Duration::from_secs(secs));
    assert_eq!(backend_start(), start, "the relay reconnected upstream");
    assert_eq!(walreceiver_pid(&standby), pid, "the walreceiver restarted");
    assert_eq!(
        standby
            .psql("SELECT status FROM pg_stat_wal_receiver")
            .unwrap(),
        "streaming"
    );
    let upstream_streams = t.relay.count_log(0, "::upstream: streaming ");
    assert_eq!(
        upstream_streams, 1,
        "the relay streamed from upstream again"
    );
    let (relay_log, primary_log) = (t.relay.log_contents(), t.primary.log_contents());
    let reconnects = lines_with(
        &primary_log,
        primary_at,
        "replication connection authorized",
    );
    assert!(reconnects.is_empty(), "{reconnects:#?}");
    for (who, lines) in [
        ("relay", lines_with(&relay_log, relay_at, "timeout")),
        ("primary", lines_with(&primary_log, primary_at, "timeout")),
        (
            "standby",
            lines_with(&standby.log_contents(), standby_at, "timeout"),
        ),
    ] {
        assert!(lines.is_empty(), "{who} logged timeouts: {lines:#?}");
    }
    println!(
        "A9 {segment_mb} MB segments: idle {secs} s, upstream backend_start {start}, \
         walreceiver pid {pid}"
    );
}

at_1mb_and_16mb_segments!(
    /// E1: standby 3's link shaped to 200 kB/s while pgbench writes. Standbys 1 and 2 stay
    /// within two segments of the primary at most samples (O7), the relay's peak memory stays
    /// within budget (O9), standby 3's slot keeps its WAL while it lags (O10), and it catches up
    /// once the link is free again (O6, O1).
    e1_slow_standby_is_isolated_1mb_segments,
    e1_slow_standby_is_isolated_16mb_segments,
    |mb| slow_standby_is_isolated(&format!("e1-{mb}"), mb)
);

fn slow_standby_is_isolated(label: &str, segment_mb: u32) {
    let Some(t) = topo(label, segment_mb, &[], &["--wal-keep-size", "0"], false) else {
        return;
    };
    let link = SlowLink::start(t.relay_port);
    let d1 = t.standby("d1", None, &[]);
    let d2 = t.standby("d2", None, &[]);
    let d3 = t.standby("d3", Some(link.port), &[]);
    t.primary.pgbench(&["-i", "-q", "-s", "2"]).unwrap();
    wait_replayed(&[&d3], t.primary.current_wal_flush_lsn().unwrap());
    link.set_rate(200_000);
    let start = t.primary.current_wal_flush_lsn().unwrap();
    let secs = env_u64("WALRELAY_E1_SECS", 12).to_string();
    let pgbench = ["-c", "4", "-j", "2", "-T", &secs, "-n"];
    let (lag, tps) = std::thread::scope(|s| {
        let bench = s.spawn(|| t.primary.pgbench(&pgbench));
        // Enough WAL that d3 falls several segments behind at either segment size.
        let message = if segment_mb >= 16 {
            1 << 20
        } else {
            128 * 1024
        };
        let bulk = WriteLoad::start(&t.bins, &t.primary.conninfo(), 200, message);
        let mut lag = LagSamples::default();
        while !bench.is_finished() {
            lag.sample(&t, [&d1, &d2], &d3);
            std::thread::sleep(Duration::from_millis(300));
        }
        bulk.stop();
        let out = bench.join().unwrap().unwrap();
        let tps = out
            .lines()
            .find(|l| l.starts_with("tps"))
            .map(str::to_owned);
        (lag, tps.unwrap_or_default())
    });
    let written = t
        .primary
        .current_wal_flush_lsn()
        .unwrap()
        .saturating_distance(start);
    let peak = peak_rss(t.relay.pid());
    println!(
        "E1 {segment_mb} MB segments: {} MB written in {secs} s; {lag:?}; relay VmHWM {} MB; \
         pgbench {tps}",
        written / MB,
        peak / MB
    );
    let segment = t.size.bytes_u64();
    assert!(
        lag.samples > 0 && lag.within * 10 >= lag.samples * 9,
        "O7: {lag:?}"
    );
    assert!(
        lag.slow_worst > 4 * segment,
        "the shaped link did not slow d3: {lag:?}"
    );
    assert!(lag.o10_checks > 0, "d3's slot was never read");
    assert!(peak <= memory_budget(3), "O9: relay VmHWM {peak} B");
    link.set_rate(0);
    let target = t.converge_target();
    wait_replayed(&[&d1, &d2, &d3], target);
    wait_streaming(&d3);
}

/// What E1 sees while the load runs.
#[derive(Debug, Default)]
struct LagSamples {
    /// Samples of the fast standbys' lag, and how many were within two segments.
    samples: u64,
    within: u64,
    /// The fast standbys' worst lag, in bytes.
    worst: u64,
    /// The slow standby's worst lag, in bytes.
    slow_worst: u64,
    /// O10 checks of the slow standby's slot that found a restart_lsn.
    o10_checks: u64,
}

impl LagSamples {
    /// One sample: the standbys' receive LSNs, then the primary's flush LSN (so the lag is
    /// never underestimated), then O10 on the slow standby's slot `d3`.
    fn sample(&mut self, t: &Topo, fast: [&Cluster; 2], slow: &Cluster) {
        let received = fast.map(receive_lsn);
        let slow_received = receive_lsn(slow);
        let flush = t.primary.current_wal_flush_lsn().unwrap();
        for r in received {
            let lag = flush.saturating_distance(r);
            self.worst = self.worst.max(lag);
            self.within += u64::from(lag <= 2 * t.size.bytes_u64());
            self.samples += 1;
        }
        self.slow_worst = self
            .slow_worst
            .max(flush.saturating_distance(slow_received));
        if t.assert_slot_wal_kept("d3").is_some() {
            self.o10_checks += 1;
        }
    }
}

at_1mb_and_16mb_segments!(
    /// E8: three standbys and twenty `pg_receivewal` (no slots) through the relay while about
    /// 20 MB are written: the standbys replay to the end (O1), every `pg_receivewal` directory
    /// holds the completed segments byte-identical to the archive (O3), and the relay's peak
    /// memory stays within budget (O9).
    e8_three_standbys_and_twenty_receivers_converge_1mb_segments,
    e8_three_standbys_and_twenty_receivers_converge_16mb_segments,
    |mb| standbys_and_receivers_converge(&format!("e8-{mb}"), mb)
);

fn standbys_and_receivers_converge(label: &str, segment_mb: u32) {
    let Some(t) = topo(label, segment_mb, &[], &[], false) else {
        return;
    };
    let standbys: Vec<Cluster> = ["d1", "d2", "d3"]
        .iter()
        .map(|slot| t.standby(slot, None, &[]))
        .collect();
    let receivers = t.receivers(20);
    wait_until(Duration::from_secs(30), "23 downstreams streaming", || {
        let sql = "SELECT count(*) FROM pg_stat_replication";
        let streams = t.relay.count_log(0, "downstream::streaming: streaming ");
        Ok(t.primary.psql(sql)? == "1" && streams >= 23)
    })
    .unwrap();
    write_wal(&t.primary, 20 * MB);
    let target = t.converge_target();
    let last = t.segment_name(Lsn(target.0 - 1));
    let refs: Vec<&Cluster> = standbys.iter().collect();
    wait_replayed(&refs, target);
    let compared = t.finish_receivers(receivers, &last);
    let peak = peak_rss(t.relay.pid());
    println!(
        "E8 {segment_mb} MB segments: 20 receivers, {compared} segments compared, relay VmHWM \
         {} MB",
        peak / MB
    );
    assert!(peak <= memory_budget(23), "O9: relay VmHWM {peak} B");
}

at_1mb_and_16mb_segments!(
    /// G1: standby d2 is stopped while ten segments are written; its slot keeps their WAL (O10)
    /// even with `--wal-keep-size 0`, and once started it streams again and catches up (O6, O1).
    g1_offline_standby_catches_up_from_its_slot_1mb_segments,
    g1_offline_standby_catches_up_from_its_slot_16mb_segments,
    |mb| offline_standby_catches_up(&format!("g1-{mb}"), mb)
);

fn offline_standby_catches_up(label: &str, segment_mb: u32) {
    let Some(t) = topo(label, segment_mb, &[], &["--wal-keep-size", "0"], false) else {
        return;
    };
    let d1 = t.standby("d1", None, &[]);
    let mut d2 = t.standby("d2", None, &[]);
    t.wait_slot_reserved("d2");
    d2.stop(StopMode::Fast).unwrap();
    let held = t
        .assert_slot_wal_kept("d2")
        .expect("d2's slot has a restart_lsn");
    let end = write_wal(&t.primary, 10 * t.size.bytes_u64());
    wait_replayed(&[&d1], end);
    std::thread::sleep(Duration::from_secs(2)); // a retention pass
    assert_eq!(t.assert_slot_wal_kept("d2"), Some(held));
    let log_at = d2.log_contents().len();
    d2.start().unwrap();
    wait_streaming(&d2);
    let target = t.converge_target();
    wait_replayed(&[&d1, &d2], target);
    let log = d2.log_contents();
    let tail = log.get(log_at..).unwrap_or_default();
    assert!(!tail.contains("has already been removed"), "{tail}");
    println!("G1 {segment_mb} MB segments: d2 held {held} and caught up to {target}");
}

/// G2: with `--max-slot-wal-keep-size 4MB --wal-keep-size 0`, an offline standby's slot is
/// invalidated once more than 8 segments are written, removal goes on (the WAL directory stays
/// within the limit plus two segments), the standby gets "requested WAL segment … has already
/// been removed", and a new slot reserves WAL the relay still has (bug #17103).
#[test]
fn g2_slot_past_the_limit_is_invalidated_1mb_segments() {
    slot_past_the_limit("g2", 1, 4, 10.0);
}

/// G2 with 16 MB segments and a 64 MB limit.
#[test]
fn g2_slot_past_the_limit_is_invalidated_16mb_segments() {
    slot_past_the_limit("g2-16", 16, 64, 10.0);
}

/// G2 where the invalidated slot's WAL, removed from disk, is still in the relay's in-memory
/// tail: a 2 MB limit passed by writing 3.5 segments. PostgreSQL reads WAL from its files
/// only, so the standby must get the same "has already been removed" error.
#[test]
fn g2_removed_wal_is_not_served_from_memory() {
    slot_past_the_limit("g2-cached", 1, 2, 3.5);
}

/// G2 with a `limit_mb` retention limit, passed by writing `segments` segments of
/// `segment_mb` while d2 is offline.
fn slot_past_the_limit(label: &str, segment_mb: u32, limit_mb: u64, segments: f64) {
    let limit = format!("{limit_mb}MB");
    let relay_args = ["--max-slot-wal-keep-size", &limit, "--wal-keep-size", "0"];
    let Some(t) = topo(label, segment_mb, &[], &relay_args, false) else {
        return;
    };
    let d1 = t.standby("d1", None, &[]);
    let mut d2 = t.standby("d2", None, &[]);
    let held = t.wait_slot_reserved("d2");
    d2.stop(StopMode::Fast).unwrap();
    let log_at = t.relay.log_len();
    let end = write_wal(&t.primary, (segments * t.size.bytes_u64() as f64) as u64);
    wait_replayed(&[&d1], end);
    t.relay
        .wait_log(log_at, "invalidating slot", Duration::from_secs(30));
    let row = t.repl("READ_REPLICATION_SLOT d2");
    assert!(row.starts_with("physical||"), "d2 not invalidated: {row}");
    let wal = t.relay.wal_dir();
    let bound = limit_mb * MB + 2 * t.size.bytes_u64();
    wait_until(Duration::from_secs(10), "old segments removed", || {
        Ok(wal_bytes(&wal) <= bound)
    })
    .unwrap_or_else(|e| panic!("{e}: {:?}", wal_files(&wal)));
    assert_refused_removed_wal(&t, &mut d2, held);
    t.repl("CREATE_REPLICATION_SLOT \"d4\" PHYSICAL (RESERVE_WAL)");
    let files = wal_files(&wal);
    let reserved = t.slot_restart("d4").expect("d4 reserves WAL");
    let name = t.segment_name(reserved);
    assert!(
        files.contains(&name),
        "d4 reserved {reserved} in {name}, not in {files:?}"
    );
    println!(
        "G2 ({limit}): d2 held {held}, {} bytes of WAL kept, d4 reserved {reserved}, files {files:?}",
        wal_bytes(&wal)
    );
}

/// Starts the standby whose slot was invalidated at `held` and waits for "requested WAL
/// segment … has already been removed" in its log.
fn assert_refused_removed_wal(t: &Topo, standby: &mut Cluster, held: Lsn) {
    let log_at = standby.log_contents().len();
    standby.start().unwrap();
    wait_until(Duration::from_secs(30), "the standby refused", || {
        let log = standby.log_contents();
        let new = log.get(log_at..).unwrap_or_default();
        Ok(new.contains("requested WAL segment") && new.contains("has already been removed"))
    })
    .unwrap_or_else(|e| {
        let replayed = standby.replay_lsn().unwrap();
        let receiver = standby
            .psql("SELECT status FROM pg_stat_wal_receiver")
            .unwrap();
        let files = wal_files(&t.relay.wal_dir());
        panic!(
            "{e}: the standby's slot was invalidated at {held}, yet it replayed to {replayed} \
             (walreceiver {receiver:?}); the relay holds only {files:?}"
        )
    });
}

/// Removed segment files are written again as new segments (`.reuse`, see `storage/reuse.rs`)
/// while two standbys and four `pg_receivewal` (no slots, so their cursors hold the WAL they
/// need) stream from the relay with `--wal-keep-size 0` and 1 MB segments: a sampler sees a
/// file kept as `NAME.reuse` come back, the same inode, as a later segment, and still every
/// standby replays to the end and every receiver's segments, like the relay's, equal the
/// archive byte for byte.
#[test]
fn removed_segments_are_reused_while_standbys_and_receivers_stream() {
    let Some(t) = topo("reuse", 1, &[], &["--wal-keep-size", "0"], false) else {
        return;
    };
    let d1 = t.standby("d1", None, &[]);
    let d2 = t.standby("d2", None, &[]);
    let receivers = t.receivers(4);
    wait_until(Duration::from_secs(30), "6 downstreams streaming", || {
        Ok(t.relay.count_log(0, "downstream::streaming: streaming ") >= 6)
    })
    .unwrap();
    let wal = t.relay.wal_dir();
    let done = std::sync::atomic::AtomicBool::new(false);
    let (pooled, reused) = std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            use std::os::unix::fs::MetadataExt;
            let mut kept = std::collections::HashMap::new();
            let (mut pooled, mut reused) = (0usize, Vec::new());
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                for entry in fs::read_dir(&wal).unwrap().flatten() {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    let Ok(meta) = entry.metadata() else { continue };
                    if name.ends_with(".reuse") {
                        pooled += usize::from(kept.insert(meta.ino(), name).is_none());
                    } else if let Some(was) = kept.remove(&meta.ino()) {
                        reused.push(format!("{was} -> {name}"));
                    }
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            (pooled, reused)
        });
        write_wal(&t.primary, 30 * MB);
        let target = t.converge_target();
        wait_replayed(&[&d1, &d2], target);
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        sampler.join().unwrap()
    });
    let target = t.primary.current_wal_flush_lsn().unwrap();
    let last = t.segment_name(Lsn(target.0 - 1));
    let compared = t.finish_receivers(receivers, &last);
    let relay_compared = assert_same_segments(&wal, &t.primary.archive_dir(), t.size);
    let q = "SELECT count(*), sum(length(payload)) FROM walrelay_load";
    for standby in [&d1, &d2] {
        assert_eq!(standby.psql(q).unwrap(), t.primary.psql(q).unwrap());
    }
    println!(
        "segment reuse: {pooled} files kept, {} seen written again ({:?} …), {compared} \
         receiver segments and {relay_compared} of the relay's compared",
        reused.len(),
        reused.first()
    );
    assert!(
        !reused.is_empty(),
        "no kept file was written again ({pooled} kept)"
    );
    assert!(compared >= 4 * 20, "compared {compared} receiver segments");
    let log = t.relay.log_contents();
    assert!(!log.contains("could not zero"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
}
