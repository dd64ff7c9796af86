//! The local PostgreSQL harness and the fault proxy against real servers: a primary with
//! 1 MB segments and archiving, `pg_receivewal`, `pg_waldump`, a streaming standby made with
//! `pg_basebackup`, and `pg_receivewal` through a proxy that re-slices every byte.
#![cfg(feature = "runtime")]
#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::Path;
use std::time::Duration;

use walrelay::testkit::faultproxy::{FaultMode, FaultProxy};
use walrelay::testkit::localpg::{
    Cluster, ClusterBuilder, PgBinaries, StopMode, require_postgres, wait_until,
};
use walrelay::types::{Lsn, TimelineId};

const DEADLINE: Duration = Duration::from_secs(60);

fn primary(bins: &PgBinaries) -> Cluster {
    let mut primary = ClusterBuilder::new(bins.clone(), std::env::temp_dir())
        .segment_size_mb(1)
        .archive(true)
        .config("log_connections", "on")
        .init()
        .unwrap();
    primary.start().unwrap();
    primary
}

/// Writes rows and one message of `message_bytes`, switches, and returns the switch LSN once
/// the switched segment is archived, with that segment's file name.
fn fill_and_archive(primary: &Cluster, rows: u32, message_bytes: usize) -> (Lsn, String) {
    primary.write_load(rows).unwrap();
    primary.emit_message(message_bytes).unwrap();
    let end = primary.switch_wal().unwrap();
    let archived = primary.wait_archived(end, DEADLINE).unwrap();
    let name = archived.file_name().unwrap().to_string_lossy().into_owned();
    (end, name)
}

fn wait_for_file(path: &Path) {
    let what = format!("{}", path.display());
    wait_until(DEADLINE, &what, || Ok(path.is_file())).unwrap();
}

#[test]
fn archive_pg_receivewal_and_pg_waldump_agree() {
    let Some(bins) = require_postgres() else {
        return;
    };
    let mut primary = primary(&bins);
    let size = primary.wal_segment_size().unwrap();
    assert_eq!(size.bytes(), 1024 * 1024);
    assert_ne!(primary.system_id().unwrap().0, 0);

    let recv = bins.scratch_dir(&std::env::temp_dir(), "recv").unwrap();
    let mut receiver = bins
        .receivewal(&primary.conninfo(), recv.path(), &[])
        .unwrap();
    wait_until(DEADLINE, "pg_receivewal to stream", || {
        Ok(primary.psql("SELECT count(*) FROM pg_stat_replication")? == "1")
    })
    .unwrap();
    let start = size.segment_start(primary.current_wal_flush_lsn().unwrap());
    let (end, name) = fill_and_archive(&primary, 3000, 1_500_000);

    let received = recv.path().join(&name);
    wait_for_file(&received);
    let archived = primary.archive_dir().join(&name);
    assert!(fs::read(&archived).unwrap() == fs::read(&received).unwrap());
    assert!(
        receiver.stop().unwrap().success(),
        "{}",
        receiver.log_contents()
    );

    let tli = TimelineId::ONE;
    bins.waldump(&primary.archive_dir(), tli, start, end)
        .unwrap();
    bins.waldump(recv.path(), tli, start, end).unwrap();
    primary.stop(StopMode::Fast).unwrap();
    assert!(primary.log_contents().contains("connection authorized"));
}

#[test]
fn basebackup_standby_replays_through_a_primary_restart() {
    let Some(bins) = require_postgres() else {
        return;
    };
    let mut primary = primary(&bins);
    primary.create_physical_slot("standby1").unwrap();
    assert!(primary.create_physical_slot("Bad-Name").is_err());
    let mut standby = primary
        .basebackup_standby(&primary.conninfo(), Some("standby1"))
        .unwrap();
    // Reconnect quickly after each primary restart (the default retry interval is 5 s).
    standby
        .set_config("wal_retrieve_retry_interval", "100ms")
        .unwrap();
    standby.start().unwrap();
    assert_eq!(standby.system_id().unwrap(), primary.system_id().unwrap());

    for round in 1..=2 {
        let target = primary.write_load(1000).unwrap();
        wait_until(DEADLINE, "standby replay", || {
            Ok(standby.replay_lsn()? >= target)
        })
        .unwrap();
        let rows = standby.psql("SELECT count(*) FROM walrelay_load").unwrap();
        assert_eq!(rows, (1000 * round).to_string());
        primary.restart(StopMode::Fast).unwrap();
    }
    let active = "SELECT active FROM pg_replication_slots WHERE slot_name = 'standby1'";
    wait_until(DEADLINE, "standby to reconnect", || {
        Ok(primary.psql(active)? == "t")
    })
    .unwrap();
}

#[test]
fn pg_receivewal_through_a_slicing_proxy_gets_exact_bytes() {
    let Some(bins) = require_postgres() else {
        return;
    };
    let primary = primary(&bins);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let upstream = format!("127.0.0.1:{}", primary.port()).parse().unwrap();
    let proxy = runtime.block_on(FaultProxy::start(upstream)).unwrap();
    proxy.control().set_mode(FaultMode::Slice { max: 7 });

    let recv = bins.scratch_dir(&std::env::temp_dir(), "recv").unwrap();
    let conninfo = format!("host=127.0.0.1 port={} user=postgres", proxy.port());
    let mut receiver = bins.receivewal(&conninfo, recv.path(), &[]).unwrap();
    wait_until(DEADLINE, "pg_receivewal to stream", || {
        Ok(primary.psql("SELECT count(*) FROM pg_stat_replication")? == "1")
    })
    .unwrap();
    let (_, name) = fill_and_archive(&primary, 1000, 200_000);
    let received = recv.path().join(&name);
    wait_for_file(&received);
    let archived = primary.archive_dir().join(&name);
    assert!(fs::read(&archived).unwrap() == fs::read(&received).unwrap());
    assert!(
        receiver.stop().unwrap().success(),
        "{}",
        receiver.log_contents()
    );
    assert!(proxy.control().accepted() >= 1);
}
