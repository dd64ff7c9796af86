//! The relay's data directory on a disk that stalls or fails, against a real PostgreSQL 15
//! primary with `wal_sender_timeout = 5s` and a hot standby behind the relay. The faults come
//! from a FUSE passthrough file system (`tests/support/faultfs.py`) under the data directory.
//!
//! - C4, a slow disk: every fsync takes 3 s for a while under load. The relay keeps talking
//!   to the primary, which never times it out; the standby keeps its connection and is
//!   served what is durable; afterwards the relay catches up, its segments equal the
//!   primary's archive and the standby's data equals the primary's.
//! - A failing fsync (EIO): the relay does not trust what it wrote since the last good sync.
//!   It logs the error, opens its store again (recovery re-reads what is on disk), and goes
//!   on without a restart; nothing is lost or duplicated: its segments equal the archive.
//! - kill -9 while a slow fsync runs: the segments that filled meanwhile are still `.partial`
//!   (each sync completes the ones that filled before it began). The relay started again
//!   completes those whose WAL checks out, fetches the rest again, and its segments equal the
//!   archive.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::time::{Duration, Instant};

use support::faultfs::FaultFs;
use support::*;
use walrelay::testkit::localpg::{Cluster, PgBinaries, free_port, require_postgres, wait_until};
use walrelay::types::Lsn;

const TIMEOUT: Duration = Duration::from_secs(60);
const REPLICATION_TIMEOUT: &str = "terminating walsender process due to replication timeout";

struct Setup {
    primary: Cluster,
    relay: RelayProcess,
    /// The relay's arguments besides the upstream and the data directory.
    relay_args: Vec<String>,
    standby: Cluster,
    faults: FaultFs,
}

fn setup(bins: &PgBinaries, dir: &std::path::Path, label: &str) -> Setup {
    let mut primary = archiving_primary(bins, dir, 1);
    primary.set_config("wal_sender_timeout", "5s").unwrap();
    primary.psql("SELECT pg_reload_conf()").unwrap();
    let faults = FaultFs::mount(bins, label);
    let relay_port = free_port().unwrap();
    let listen = format!("127.0.0.1:{relay_port}");
    let relay_args = ["--listen", &listen, "--receive-timeout", "10s"].map(String::from);
    let relay = RelayProcess::start(
        &primary.conninfo(),
        &faults.mount.join("relay"),
        &relay_args.each_ref().map(String::as_str),
    );
    wait_listening(relay_port, TIMEOUT);
    let relay_conninfo = format!("host=127.0.0.1 port={relay_port} user=postgres");
    bins.psql(
        &format!("{relay_conninfo} replication=1"),
        "CREATE_REPLICATION_SLOT \"d1\" PHYSICAL RESERVE_WAL",
    )
    .unwrap();
    let mut standby = primary
        .basebackup_standby(&format!("{relay_conninfo} application_name=d1"), Some("d1"))
        .unwrap();
    standby.start().unwrap();
    let end = primary.write_load(500).unwrap();
    wait_acked(&primary, end, TIMEOUT);
    wait_until(TIMEOUT, "standby replays", || {
        Ok(standby.replay_lsn()? >= end)
    })
    .unwrap();
    Setup {
        primary,
        relay,
        relay_args: relay_args.into(),
        standby,
        faults,
    }
}

fn receiver_pid(standby: &Cluster) -> String {
    standby
        .psql("SELECT pid FROM pg_stat_wal_receiver")
        .unwrap()
}

/// The load stops, the relay and the standby catch up; what they hold equals the primary's.
fn converge(s: &Setup) {
    s.primary.switch_wal().unwrap();
    let end = s.primary.write_load(10).unwrap();
    wait_acked(&s.primary, end, TIMEOUT);
    wait_until(TIMEOUT, "standby replays", || {
        Ok(s.standby.replay_lsn()? >= end)
    })
    .unwrap();
    let q = "SELECT count(*), sum(length(payload)) FROM walrelay_load";
    assert_eq!(s.standby.psql(q).unwrap(), s.primary.psql(q).unwrap());
    let size = s.primary.wal_segment_size().unwrap();
    s.primary.switch_wal().unwrap();
    let compared = assert_same_segments(&s.relay.wal_dir(), &s.primary.archive_dir(), size);
    assert!(compared >= 3, "compared {compared} segments");
}

#[test]
fn c4_slow_fsync_never_times_the_relay_out() {
    let Some(bins) = require_postgres() else {
        return;
    };
    if !FaultFs::available() {
        return;
    }
    let dir = scratch(&bins, "c4");
    let mut s = setup(&bins, dir.path(), "c4fs");
    let pid = receiver_pid(&s.standby);
    let before = s.primary.current_wal_flush_lsn().unwrap();
    s.faults.delay_syncs(Duration::from_secs(3));
    let started = Instant::now();
    let mut written = Lsn::INVALID;
    while started.elapsed() < Duration::from_secs(15) {
        written = s.primary.write_load(300).unwrap();
        std::thread::sleep(Duration::from_millis(200));
    }
    // Slowly, but the relay made some of it durable, and the standby got it.
    let acked = acked_flush(&s.primary, "walrelay").unwrap();
    assert!(acked > before, "nothing acknowledged in 15 s of 3 s fsyncs");
    assert!(
        acked < written,
        "the delay did not slow the relay down: the test shows nothing"
    );
    assert_eq!(
        receiver_pid(&s.standby),
        pid,
        "the standby lost its connection"
    );
    s.faults.delay_syncs(Duration::ZERO);
    converge(&s);
    assert_eq!(
        receiver_pid(&s.standby),
        pid,
        "the standby lost its connection"
    );
    let log = s.primary.log_contents();
    assert!(!log.contains(REPLICATION_TIMEOUT), "{log}");
    assert_eq!(s.relay.count_log(0, "connected to upstream"), 1);
    assert!(s.relay.is_running());
}

#[test]
fn failing_fsync_reopens_the_store_and_loses_nothing() {
    let Some(bins) = require_postgres() else {
        return;
    };
    if !FaultFs::available() {
        return;
    }
    let dir = scratch(&bins, "eio");
    let mut s = setup(&bins, dir.path(), "eiofs");
    let mark = s.relay.log_len();
    s.faults.fail_syncs(2);
    let started = Instant::now();
    while s.faults.failures_left() > 0 {
        assert!(started.elapsed() < TIMEOUT, "no fsync happened");
        s.primary.write_load(200).unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
    s.relay.wait_log(mark, "the WAL store failed", TIMEOUT);
    let log = s.relay.log_since(mark);
    assert!(log.contains("Input/output error"), "{log}");
    // More load after the failures; the store was opened again and streaming goes on.
    for _ in 0..5 {
        s.primary.write_load(300).unwrap();
    }
    converge(&s);
    let log = s.relay.log_since(mark);
    assert!(log.contains("recovered stored WAL"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
    assert!(s.relay.is_running());
}

#[test]
fn kill9_during_a_slow_sync_completes_the_full_partials_on_restart() {
    let Some(bins) = require_postgres() else {
        return;
    };
    if !FaultFs::available() {
        return;
    }
    let dir = scratch(&bins, "aside");
    let mut s = setup(&bins, dir.path(), "asidefs");
    s.faults.delay_syncs(Duration::from_secs(2));
    let started = Instant::now();
    while partial_files(&s.relay.wal_dir()).len() < 3 {
        assert!(started.elapsed() < TIMEOUT, "no segment was set aside");
        s.primary.write_load(300).unwrap();
    }
    s.relay.kill9();
    s.faults.delay_syncs(Duration::ZERO);
    let since = s.relay.log_len();
    let args: Vec<&str> = s.relay_args.iter().map(String::as_str).collect();
    s.relay = RelayProcess::start(&s.primary.conninfo(), &s.relay.data_dir.clone(), &args);
    s.relay.wait_log(since, "recovered stored WAL", TIMEOUT);
    let log = s.relay.log_since(since);
    assert!(log.contains("completed a full partial segment"), "{log}");
    converge(&s);
    assert!(s.relay.is_running());
    assert!(!s.relay.log_contents().contains("panicked"));
}
