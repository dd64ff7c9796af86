//! The receiver against a real PostgreSQL 15 primary: the relay's directory is byte-identical
//! to the primary's archive and to what `pg_receivewal` takes directly (ACCEPTANCE O3, A2),
//! `pg_waldump` reads it (O4), and records that cross pages and segments, records larger than
//! a segment and `pg_switch_wal()` pass through intact (A3), at 1 MB and 16 MB segments.

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
use walrelay::testkit::localpg::require_postgres;
use walrelay::types::Lsn;

fn relay_matches_primary(segment_mb: u32) {
    let Some(bins) = require_postgres() else {
        return;
    };
    let dir = scratch(&bins, "recv");
    let primary = archiving_primary(&bins, dir.path(), segment_mb);
    let size = primary.wal_segment_size().unwrap();
    let start = size.segment_start(primary.current_wal_flush_lsn().unwrap());

    let relay = RelayProcess::start(&primary.conninfo(), &dir.path().join("relay"), &[]);
    let recv_dir = dir.path().join("receivewal");
    fs::create_dir_all(&recv_dir).unwrap();
    let mut receivewal = bins
        .receivewal(&primary.conninfo(), &recv_dir, &["--synchronous"])
        .unwrap();
    wait_acked(&primary, start, Duration::from_secs(30));

    // A3 shapes: small records, big rows crossing pages, a record over three segments,
    // switches (one right after another record, one in an otherwise empty segment).
    primary.write_load(5000).unwrap();
    primary.emit_message(3 * size.bytes() as usize).unwrap();
    primary.switch_wal().unwrap();
    primary.switch_wal().unwrap();
    for i in 1..=40 {
        primary.emit_message(8192 * (i % 5) + 17 * i).unwrap();
    }
    primary.write_load(2000).unwrap();
    let target = primary.switch_wal().unwrap();
    primary.write_load(100).unwrap();
    let archived = primary
        .wait_archived(target, Duration::from_secs(60))
        .unwrap();
    assert!(archived.exists());
    let end = primary.current_wal_flush_lsn().unwrap();
    wait_acked(&primary, end, Duration::from_secs(60));

    let compared = assert_same_segments(&relay.wal_dir(), &primary.archive_dir(), size);
    assert!(compared as u64 >= 5, "only {compared} segments compared");
    assert_waldump(&bins, &relay.wal_dir(), size);
    assert_eq!(
        assert_partial_prefix(&relay.wal_dir(), &primary.data_dir().join("pg_wal")),
        1
    );

    // A2: pg_receivewal directly from the primary wrote the same completed files.
    receivewal.stop().unwrap();
    let ours = segment_files(&relay.wal_dir());
    let theirs = segment_files(&recv_dir);
    let common: Vec<_> = ours.iter().filter(|n| theirs.contains(n)).collect();
    assert!(
        common.len() >= compared.saturating_sub(1),
        "receivewal has {theirs:?}, relay {ours:?}"
    );
    for name in common {
        assert!(
            fs::read(relay.wal_dir().join(name)).unwrap() == fs::read(recv_dir.join(name)).unwrap(),
            "{name} differs from pg_receivewal's copy"
        );
    }
    let slot_restart: Lsn = primary
        .psql("SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = 'walrelay'")
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        slot_restart >= target,
        "the relay's upstream slot did not advance: {slot_restart}"
    );
}

at_1mb_and_16mb_segments!(
    relay_matches_primary_1mb_segments,
    relay_matches_primary_16mb_segments,
    relay_matches_primary
);
