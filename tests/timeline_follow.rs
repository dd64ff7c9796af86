//! Following a failover (ACCEPTANCE F1, receiver side): the relay streams from a primary,
//! the primary stops, its standby is promoted to timeline 2, and the relay, given both hosts in
//! its connection string, moves on to the new primary. It stores `00000002.history`
//! byte-identical to the promoted server's, keeps the old timeline's last segment as
//! `.partial`, and stores the new timeline's segments from offset 0, byte-identical to the new
//! primary's archive, and `pg_waldump` reads them across the switch. A standby streaming from
//! the relay follows onto timeline 2 on the same walreceiver connection (F1's downstream side).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::fs;
use std::time::Duration;

use support::*;
use walrelay::testkit::localpg::{
    StopMode, archive_command, free_port, require_postgres, wait_until,
};
use walrelay::types::{SegmentName, TimelineId};

at_1mb_and_16mb_segments!(
    relay_follows_promotion_to_a_new_timeline_1mb_segments,
    relay_follows_promotion_to_a_new_timeline_16mb_segments,
    |mb| relay_follows_promotion(&format!("tli-{mb}"), mb)
);

fn relay_follows_promotion(label: &str, segment_mb: u32) {
    let Some(bins) = require_postgres() else {
        return;
    };
    let dir = scratch(&bins, label);
    let mut primary = archiving_primary(&bins, dir.path(), segment_mb);
    let size = primary.wal_segment_size().unwrap();
    let mut standby = primary
        .basebackup_standby(&primary.conninfo(), None)
        .unwrap();
    let standby_archive = bins.scratch_dir(dir.path(), "sarch").unwrap();
    standby.set_config("archive_mode", "always").unwrap();
    standby
        .set_config("archive_command", &archive_command(standby_archive.path()))
        .unwrap();
    standby.start().unwrap();

    let upstream = format!(
        "host=127.0.0.1,127.0.0.1 port={},{} user=postgres connect_timeout=2",
        primary.port(),
        standby.port()
    );
    let relay_port = free_port().unwrap();
    let listen = format!("127.0.0.1:{relay_port}");
    let relay = RelayProcess::start(&upstream, &dir.path().join("relay"), &["--listen", &listen]);
    let relay_conninfo = format!("host=127.0.0.1 port={relay_port} user=postgres");
    primary.write_load(3000).unwrap();
    primary.switch_wal().unwrap();
    let before = primary.write_load(500).unwrap();
    wait_acked(&primary, before, Duration::from_secs(30));
    let backup = restore::backup_without_wal(&primary);

    // A standby behind the relay, on a relay slot.
    bins.psql(
        &format!("{relay_conninfo} replication=1"),
        "CREATE_REPLICATION_SLOT \"d1\" PHYSICAL",
    )
    .unwrap();
    let mut downstream = primary
        .basebackup_standby(&format!("{relay_conninfo} application_name=d1"), Some("d1"))
        .unwrap();
    downstream.start().unwrap();
    wait_until(Duration::from_secs(30), "downstream streaming", || {
        Ok(downstream.psql("SELECT status FROM pg_stat_wal_receiver")? == "streaming")
    })
    .unwrap();
    let receiver_pid = downstream
        .psql("SELECT pid FROM pg_stat_wal_receiver")
        .unwrap();
    wait_until(Duration::from_secs(30), "standby replay", || {
        Ok(standby.replay_lsn()? >= before)
    })
    .unwrap();

    primary.stop(StopMode::Fast).unwrap();
    standby.psql("SELECT pg_promote()").unwrap();
    wait_until(Duration::from_secs(30), "promotion", || {
        Ok(standby.psql("SELECT pg_is_in_recovery()")? == "f")
    })
    .unwrap();
    standby.write_load(3000).unwrap();
    standby.switch_wal().unwrap();
    let target = standby.switch_wal().unwrap();
    let q = "SELECT count(*) FROM walrelay_load";
    let rows_switched = standby.psql(q).unwrap();
    standby.write_load(100).unwrap();
    let end = standby.current_wal_flush_lsn().unwrap();
    wait_acked(&standby, end, Duration::from_secs(60));
    let last = standby
        .psql(&format!("SELECT pg_walfile_name('{target}')"))
        .unwrap();
    let archived = standby_archive.path().join(&last);
    wait_until(
        Duration::from_secs(60),
        "new primary archived its segment",
        || Ok(fs::metadata(&archived).is_ok_and(|m| m.len() == size.bytes_u64())),
    )
    .unwrap();

    // F1: the standby behind the relay follows onto timeline 2 on the same connection.
    wait_until(
        Duration::from_secs(60),
        "downstream replays timeline 2",
        || Ok(downstream.replay_lsn()? >= end),
    )
    .unwrap();
    assert_eq!(
        downstream
            .psql("SELECT received_tli FROM pg_stat_wal_receiver")
            .unwrap(),
        "2"
    );
    assert_eq!(
        downstream
            .psql("SELECT pid FROM pg_stat_wal_receiver")
            .unwrap(),
        receiver_pid
    );
    assert_eq!(downstream.psql(q).unwrap(), standby.psql(q).unwrap());

    let wal = relay.wal_dir();
    let history = fs::read(wal.join("00000002.history")).expect("relay stored the history file");
    assert_eq!(
        history,
        fs::read(standby.data_dir().join("pg_wal/00000002.history")).unwrap()
    );
    let two = TimelineId::new(2).unwrap();
    let names = segment_files(&wal);
    let (new, old): (Vec<_>, Vec<_>) = names
        .iter()
        .partition(|n| SegmentName::parse(n, size).unwrap().timeline == two);
    assert!(!new.is_empty() && !old.is_empty(), "segments: {names:?}");
    for name in &old {
        assert_eq!(
            fs::read(wal.join(name)).unwrap(),
            fs::read(primary.archive_dir().join(name)).unwrap(),
            "{name}"
        );
    }
    for name in &new {
        let theirs = fs::read(standby_archive.path().join(name)).unwrap();
        assert_eq!(
            fs::read(wal.join(name)).unwrap(),
            theirs,
            "{name} differs from the new primary's"
        );
    }
    let first_new = SegmentName::parse(new[0], size).unwrap();
    let last_new = SegmentName::parse(new[new.len() - 1], size).unwrap();
    bins.waldump(
        &wal,
        two,
        size.start_of(first_new.segno).unwrap(),
        size.start_of(last_new.segno.next().unwrap()).unwrap(),
    )
    .expect("pg_waldump across the switch");

    // A10 across the switch: the backup of the old primary recovers from the relay's WAL alone
    // onto timeline 2, through its last completed segment, and picks timeline 3.
    let restored = restore::restore_from_relay_wal(&primary, backup, &wal);
    assert!(
        restored.ended >= size.segment_start(end),
        "recovery ended at {}, before {}",
        restored.ended,
        size.segment_start(end)
    );
    let timeline = "SELECT timeline_id FROM pg_control_checkpoint()";
    wait_until(
        Duration::from_secs(30),
        "the end-of-recovery checkpoint",
        || Ok(restored.server.psql(timeline)? == "3"),
    )
    .unwrap();
    assert_eq!(restored.server.psql(q).unwrap(), rows_switched);
}
