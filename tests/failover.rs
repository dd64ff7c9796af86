//! Failovers as real clusters have them, against real PostgreSQL:
//! - `target_session_attrs` picks the host the relay streams from among several, as libpq
//!   picks it;
//! - a relay whose upstream is a standby follows that standby's promotion on the same
//!   connection, with no reconfiguration (ACCEPTANCE F2), and a standby behind the relay
//!   follows too;
//! - a dirty failover: the old primary wrote WAL that the promoted standby never received,
//!   and the relay had stored it. The relay continues on the new timeline from the fork; its
//!   new-timeline segments are byte-identical to the new primary's archive; a standby made
//!   before the fork and started after it, and `pg_receivewal` on a slot from before the
//!   fork, get the old timeline only up to the fork and never a byte of the lost tail; a
//!   standby that had replayed the lost tail is refused the new timeline as PostgreSQL
//!   refuses it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod downstream_client;
mod support;

use std::fs;
use std::path::Path;
use std::time::Duration;

use downstream_client::{RawClient, copy_done, query_msg};
use support::*;
use walrelay::testkit::localpg::{
    Cluster, StopMode, archive_command, free_port, require_postgres, wait_until,
};
use walrelay::types::{Lsn, SegmentName, TimelineId, WalSegmentSize};

/// Whether `server` streams to `app` now.
fn streams_to(server: &Cluster, app: &str) -> bool {
    server
        .psql(&format!(
            "SELECT count(*) FROM pg_stat_replication WHERE application_name = '{app}' AND state = 'streaming'"
        ))
        .is_ok_and(|n| n == "1")
}

/// `host=127.0.0.1,… port=…` listing `servers` in order.
fn hosts(servers: &[&Cluster], extra: &str) -> String {
    let h = vec!["127.0.0.1"; servers.len()].join(",");
    let p = servers
        .iter()
        .map(|s| s.port().to_string())
        .collect::<Vec<_>>()
        .join(",");
    format!("host={h} port={p} user=postgres connect_timeout=2 {extra}")
}

#[test]
fn target_session_attrs_choose_the_server() {
    let Some(bins) = require_postgres() else {
        return;
    };
    let dir = scratch(&bins, "tsa");
    let primary = archiving_primary(&bins, dir.path(), 1);
    let mut standby = primary
        .basebackup_standby(&primary.conninfo(), None)
        .unwrap();
    standby.start().unwrap();
    let (p, s) = (&primary, &standby);
    // What the relay is given, and which server must serve it.
    let cases: [(&str, Vec<&Cluster>, &str, &Cluster); 7] = [
        ("rw", vec![s, p], "target_session_attrs=read-write", p),
        ("prim", vec![s, p], "target_session_attrs=primary", p),
        ("ro", vec![p, s], "target_session_attrs=read-only", s),
        ("stby", vec![p, s], "target_session_attrs=standby", s),
        ("pref", vec![p, s], "target_session_attrs=prefer-standby", s),
        (
            "pref_alone",
            vec![p],
            "target_session_attrs=prefer-standby",
            p,
        ),
        (
            "balanced",
            vec![s, p, s],
            "target_session_attrs=read-write load_balance_hosts=random",
            p,
        ),
    ];
    let mut relays = Vec::new();
    for (name, servers, extra, _) in &cases {
        let app = format!("relay_{name}");
        let upstream = hosts(servers, extra);
        let data = dir.path().join(&app);
        let relay = RelayProcess::start(
            &upstream,
            &data,
            &["--application-name", &app, "--upstream-slot", &app],
        );
        relays.push(relay);
    }
    // Asking for a primary among standbys only finds none, and says why.
    let none = RelayProcess::start(
        &hosts(&[s, s], "target_session_attrs=read-write"),
        &dir.path().join("relay_none"),
        &["--application-name", "relay_none"],
    );
    for (name, _, extra, server) in &cases {
        let app = format!("relay_{name}");
        wait_until(Duration::from_secs(30), &format!("{extra}: {app}"), || {
            Ok(streams_to(server, &app))
        })
        .unwrap();
        let other = if std::ptr::eq(*server, p) { s } else { p };
        assert!(!streams_to(other, &app), "{app} streams from both");
    }
    wait_until(Duration::from_secs(30), "the refusal logged", || {
        Ok(none.log_contents().contains("session is read-only"))
    })
    .unwrap();
    let log = none.log_contents();
    assert!(
        log.contains(&format!(
            "127.0.0.1:{}: connection to server at \"127.0.0.1\", port {} failed: session is read-only",
            s.port(),
            s.port()
        )),
        "{log}"
    );
    assert!(!streams_to(s, "relay_none") && !streams_to(p, "relay_none"));
    drop(relays);
}

/// A relay streaming from a standby follows its promotion with no reconfiguration (F2).
#[test]
fn relay_on_a_standby_follows_its_promotion() {
    let Some(bins) = require_postgres() else {
        return;
    };
    let dir = scratch(&bins, "f2");
    let mut primary = archiving_primary(&bins, dir.path(), 1);
    let mut standby = primary
        .basebackup_standby(&primary.conninfo(), None)
        .unwrap();
    standby.start().unwrap();
    let relay_port = free_port().unwrap();
    let listen = format!("127.0.0.1:{relay_port}");
    let relay = RelayProcess::start(
        &hosts(&[&standby], ""),
        &dir.path().join("relay"),
        &["--listen", &listen],
    );
    let relay_conninfo = format!("host=127.0.0.1 port={relay_port} user=postgres");
    primary.write_load(2000).unwrap();
    primary.switch_wal().unwrap();
    let before = primary.write_load(200).unwrap();
    wait_acked(&standby, before, Duration::from_secs(30));
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
    let mid = primary.write_load(500).unwrap();
    wait_until(Duration::from_secs(30), "downstream replay", || {
        Ok(downstream.replay_lsn()? >= mid)
    })
    .unwrap();
    let log_mark = relay.log_len();

    // The standby is promoted while the relay streams from it; its old primary goes away.
    standby.psql("SELECT pg_promote()").unwrap();
    primary.stop(StopMode::Fast).unwrap();
    standby.write_load(1000).unwrap();
    standby.switch_wal().unwrap();
    let end = standby.write_load(100).unwrap();
    wait_acked(&standby, end, Duration::from_secs(60));
    wait_until(Duration::from_secs(60), "downstream on timeline 2", || {
        Ok(downstream.replay_lsn()? >= end)
    })
    .unwrap();
    let receiver = |col: &str| {
        downstream
            .psql(&format!("SELECT {col} FROM pg_stat_wal_receiver"))
            .unwrap()
    };
    assert_eq!(receiver("received_tli"), "2");
    assert_eq!(receiver("pid"), receiver_pid, "the walreceiver restarted");
    let q = "SELECT count(*), sum(length(payload)) FROM walrelay_load";
    assert_eq!(downstream.psql(q).unwrap(), standby.psql(q).unwrap());

    // Followed on the same connection: the end of timeline 1, then timeline 2.
    let log = relay.log_since(log_mark);
    assert!(log.contains("upstream timeline ended, following"), "{log}");
    assert!(!log.contains("connected to upstream"), "{log}");
    let wal = relay.wal_dir();
    assert_eq!(
        fs::read(wal.join("00000002.history")).unwrap(),
        fs::read(standby.data_dir().join("pg_wal/00000002.history")).unwrap()
    );
    let size = standby.wal_segment_size().unwrap();
    let two = TimelineId::new(2).unwrap();
    let first_two = first_segment_of(&wal, two, size);
    let last = size.segment_start(end);
    bins.waldump(&wal, two, first_two, last)
        .expect("pg_waldump across the switch");
}

/// The first segment start of `tli` among `dir`'s files.
fn first_segment_of(dir: &Path, tli: TimelineId, size: WalSegmentSize) -> Lsn {
    let seg = segment_files(dir)
        .iter()
        .filter_map(|n| SegmentName::parse(n, size))
        .filter(|n| n.timeline == tli)
        .map(|n| n.segno)
        .min()
        .expect("a segment of the timeline");
    size.start_of(seg).unwrap()
}

/// A dirty failover: the relay has WAL on timeline 1 that the promoted standby never got.
#[test]
fn dirty_failover_never_serves_the_lost_tail() {
    let Some(bins) = require_postgres() else {
        return;
    };
    let dir = scratch(&bins, "fork");
    let mut primary = archiving_primary(&bins, dir.path(), 1);
    let size = primary.wal_segment_size().unwrap();
    let mut standby = primary
        .basebackup_standby(&primary.conninfo(), None)
        .unwrap();
    let standby_archive = bins.scratch_dir(dir.path(), "sarch").unwrap();
    standby.set_config("archive_mode", "on").unwrap();
    standby
        .set_config("archive_command", &archive_command(standby_archive.path()))
        .unwrap();
    standby.start().unwrap();

    let relay_port = free_port().unwrap();
    let listen = format!("127.0.0.1:{relay_port}");
    let upstream = hosts(&[&primary, &standby], "target_session_attrs=read-write");
    let relay_dir = dir.path().join("relay");
    let mut relay = RelayProcess::start(&upstream, &relay_dir, &["--listen", &listen]);
    let relay_conninfo = format!("host=127.0.0.1 port={relay_port} user=postgres");
    let replication = format!("{relay_conninfo} replication=1");
    primary.write_load(1000).unwrap();
    let start = primary.switch_wal().unwrap();
    wait_acked(&primary, start, Duration::from_secs(30));
    for slot in ["live", "late", "recv"] {
        bins.psql(
            &replication,
            &format!("CREATE_REPLICATION_SLOT \"{slot}\" PHYSICAL RESERVE_WAL"),
        )
        .unwrap();
    }
    // A standby that streams through the fork, and one made now but started after it.
    let mut live = primary
        .basebackup_standby(
            &format!("{relay_conninfo} application_name=live"),
            Some("live"),
        )
        .unwrap();
    live.start().unwrap();
    let late = primary
        .basebackup_standby(
            &format!("{relay_conninfo} application_name=late"),
            Some("late"),
        )
        .unwrap();
    let shared = primary.write_load(1000).unwrap();
    wait_until(
        Duration::from_secs(30),
        "the standby has the shared WAL",
        || Ok(standby.replay_lsn()? >= shared),
    )
    .unwrap();

    // Cut the standby off, then let the primary write WAL only the relay receives.
    standby.set_config("primary_conninfo", "").unwrap();
    standby.psql("SELECT pg_reload_conf()").unwrap();
    wait_until(
        Duration::from_secs(30),
        "the standby's walreceiver stops",
        || Ok(standby.psql("SELECT count(*) FROM pg_stat_wal_receiver")? == "0"),
    )
    .unwrap();
    let cut = standby
        .psql("SELECT pg_last_wal_receive_lsn()")
        .unwrap()
        .parse::<Lsn>()
        .unwrap();
    primary.write_load(2000).unwrap();
    primary.switch_wal().unwrap();
    let lost_end = primary.write_load(300).unwrap();
    wait_acked(&primary, lost_end, Duration::from_secs(30));
    wait_until(
        Duration::from_secs(30),
        "live replays the lost tail",
        || Ok(live.replay_lsn()? >= lost_end),
    )
    .unwrap();
    assert!(
        size.segment_of(lost_end) > size.segment_of(cut),
        "the lost tail spans segments"
    );
    primary.stop(StopMode::Immediate).unwrap();

    // The standby is promoted: timeline 2 forks at its end of timeline 1, below the relay's.
    standby.psql("SELECT pg_promote()").unwrap();
    wait_until(Duration::from_secs(30), "promotion", || {
        Ok(standby.psql("SELECT pg_is_in_recovery()")? == "f")
    })
    .unwrap();
    let history = fs::read(standby.data_dir().join("pg_wal/00000002.history")).unwrap();
    let fork: Lsn = String::from_utf8_lossy(&history)
        .split('\t')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        fork < lost_end,
        "fork {fork} below the relay's end {lost_end}"
    );
    standby.write_load(1500).unwrap();
    standby.switch_wal().unwrap();
    standby.write_load(100).unwrap();
    let target = standby.switch_wal().unwrap();
    let end = standby.write_load(100).unwrap();
    wait_acked(&standby, end, Duration::from_secs(60));

    let wal = relay.wal_dir();
    assert_eq!(fs::read(wal.join("00000002.history")).unwrap(), history);
    // The old timeline's files stay as they were, lost tail included.
    let one = TimelineId::ONE;
    let two = TimelineId::new(2).unwrap();
    let name = |tli, lsn: Lsn| {
        SegmentName {
            timeline: tli,
            segno: size.segment_of(lsn),
        }
        .file_name(size)
    };
    let lost_tail = read_range(&wal, one, fork, lost_end, size);
    assert!(lost_tail.iter().any(|b| *b != 0));
    // Timeline 2 starts at the fork's segment, byte-identical to the new primary's archive.
    assert_eq!(first_segment_of(&wal, two, size), size.segment_start(fork));
    let last = standby
        .psql(&format!("SELECT pg_walfile_name('{target}')"))
        .unwrap();
    wait_until(Duration::from_secs(60), "new primary archived", || {
        Ok(fs::metadata(standby_archive.path().join(&last))
            .is_ok_and(|m| m.len() == size.bytes_u64()))
    })
    .unwrap();
    let mut compared = 0;
    for n in segment_files(&wal) {
        let seg = SegmentName::parse(&n, size).unwrap();
        if seg.timeline == two && !n.ends_with(".partial") {
            assert_eq!(
                fs::read(wal.join(&n)).unwrap(),
                fs::read(standby_archive.path().join(&n)).unwrap(),
                "{n} differs from the new primary's"
            );
            compared += 1;
        }
    }
    assert!(compared >= 2, "compared {compared} segments");
    bins.waldump(&wal, two, size.segment_start(fork), size.segment_start(end))
        .expect("pg_waldump from the fork");

    // A crash now leaves files of both timelines; the relay recovers on timeline 2.
    let mark = relay.log_len();
    relay.kill9();
    let relay = RelayProcess::start(&upstream, &relay_dir, &["--listen", &listen]);
    wait_until(Duration::from_secs(30), "the relay streams again", || {
        Ok(relay.log_since(mark).contains("streaming timeline=2"))
    })
    .unwrap();
    let log = relay.log_since(mark);
    assert!(log.contains("recovered stored WAL timeline=2"), "{log}");
    assert!(
        relay
            .log_contents()
            .contains("recovered stored WAL timeline=2"),
        "{}",
        relay.log_contents()
    );
    wait_until(Duration::from_secs(5), "-", || Ok(true)).unwrap();

    // A standby made before the fork replays timeline 1 up to the fork, then timeline 2.
    let mut late = late;
    late.start().unwrap();
    wait_until(Duration::from_secs(60), "late standby replays", || {
        Ok(late.replay_lsn()? >= end)
    })
    .unwrap();
    let q = "SELECT count(*), sum(length(payload)) FROM walrelay_load";
    assert_eq!(late.psql(q).unwrap(), standby.psql(q).unwrap());

    // pg_receivewal on a slot from before the fork: timeline 1 to the fork, then timeline 2.
    let recv = bins.scratch_dir(dir.path(), "recv").unwrap();
    let mut receiver = bins
        .receivewal(
            &format!("{relay_conninfo} application_name=recv"),
            recv.path(),
            &["--slot", "recv", "--endpos", &end.to_string(), "--no-sync"],
        )
        .unwrap();
    let status = receiver.wait(Duration::from_secs(60)).unwrap();
    assert!(status.success(), "{}", receiver.log_contents());
    let got_one = read_range(recv.path(), one, size.segment_start(fork), fork, size);
    assert_eq!(
        got_one,
        read_range(&wal, one, size.segment_start(fork), fork, size),
        "timeline 1 up to the fork"
    );
    let fork_file = recv.path().join(format!("{}.partial", name(one, fork)));
    let fork_seg = fs::read(&fork_file).unwrap();
    let past = usize::try_from(size.offset_in_segment(fork)).unwrap();
    assert!(
        fork_seg[past..].iter().all(|b| *b == 0),
        "pg_receivewal got old-timeline bytes past the fork"
    );
    for n in segment_files(recv.path()) {
        let seg = SegmentName::parse(&n, size).unwrap();
        assert!(
            seg.timeline == two || seg.segno <= size.segment_of(fork),
            "{n}: a timeline 1 segment past the fork"
        );
        if seg.timeline == two && !n.ends_with(".partial") {
            assert_eq!(
                fs::read(recv.path().join(&n)).unwrap(),
                fs::read(wal.join(&n)).unwrap(),
                "{n}"
            );
        }
    }

    // F5: what the relay answers for the timelines around the fork is what the new primary
    // answers: timeline 1 to the fork then timeline 2; errors past the fork and for a
    // timeline never seen; timeline 2 from the fork's segment start.
    let seg = size.segment_start(fork);
    let probes = [
        (1, seg, usize::MAX),
        (1, lost_end, 0),
        (9, seg, 0),
        (2, seg, 64 << 10),
    ];
    for (tli, start, max) in probes {
        let theirs = probe(standby.port(), tli, start, max);
        let ours = probe(relay_port, tli, start, max);
        assert_eq!(
            ours, theirs,
            "START_REPLICATION PHYSICAL {start} TIMELINE {tli}"
        );
        match (tli, max) {
            (1, 0) => assert_eq!(
                ours.error.as_ref().map(|e| e.2.clone()),
                Some(format!(
                    "This server's history forked from timeline 1 at {fork}."
                ))
            ),
            (9, _) => assert_eq!(
                ours.error.as_ref().map(|e| e.1.as_str()),
                Some("requested timeline 9 is not in this server's history")
            ),
            (1, _) => {
                assert_eq!(ours.wal.len() as u64, fork.0 - seg.0);
                assert_eq!(ours.rows, [vec![Some("2".into()), Some(fork.to_string())]]);
            }
            _ => assert_eq!(ours.wal.len(), max),
        }
    }

    // The standby that replayed the lost tail is refused timeline 2, as PostgreSQL refuses it.
    wait_until(Duration::from_secs(60), "live refuses the new timeline", || {
        Ok(live
            .log_contents()
            .contains("new timeline 2 forked off current database system timeline 1 before current recovery point"))
    })
    .unwrap();
    assert!(live.replay_lsn().unwrap() < end);
}

/// A server's answer to `START_REPLICATION PHYSICAL start TIMELINE tli`.
#[derive(Debug, PartialEq, Eq)]
struct Probe {
    /// The error's SQLSTATE, message and detail.
    error: Option<(String, String, String)>,
    /// The WAL streamed, at most `max` bytes of it.
    wal: Vec<u8>,
    /// The rows of the answer after the stream: the next timeline and where it starts.
    rows: Vec<Vec<Option<String>>>,
}

/// Asks the server on `port` for `tli` from `start` and reads the stream until the server
/// ends the timeline or `max` bytes came (then the client ends it).
fn probe(port: u16, tli: u32, start: Lsn, max: usize) -> Probe {
    let mut c = RawClient::login(port, "probe");
    c.send(&query_msg(&format!(
        "START_REPLICATION PHYSICAL {start} TIMELINE {tli}"
    )));
    let wait = Duration::from_secs(10);
    let mut wal = Vec::new();
    let mut error = None;
    loop {
        let m = c.expect_msg(wait);
        match m.tag {
            b'E' => {
                let detail = m.field(b'D').unwrap_or_default();
                error = Some((m.sqlstate(), m.message(), detail));
                break;
            }
            b'W' => {}
            b'd' => {
                let Some((from, _, len)) = m.xlogdata() else {
                    continue;
                };
                assert_eq!(from, start.0 + wal.len() as u64, "XLogData out of order");
                let body = m.copy_data().unwrap();
                wal.extend_from_slice(&body[body.len() - len..]);
                if wal.len() >= max {
                    wal.truncate(max);
                    c.send(&copy_done());
                    break;
                }
            }
            b'c' => {
                c.send(&copy_done());
                break;
            }
            other => panic!("unexpected message {:?}", char::from(other)),
        }
    }
    let mut rows = Vec::new();
    for m in c.until_ready(wait) {
        if let Some(row) = m.data_row() {
            rows.push(row);
        }
    }
    Probe { error, wal, rows }
}

/// The bytes of `tli` in `[from, to)` as stored in `dir` (complete or `.partial` files).
fn read_range(dir: &Path, tli: TimelineId, from: Lsn, to: Lsn, size: WalSegmentSize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut at = from;
    while at < to {
        let name = SegmentName {
            timeline: tli,
            segno: size.segment_of(at),
        }
        .file_name(size);
        let bytes = fs::read(dir.join(&name))
            .or_else(|_| fs::read(dir.join(format!("{name}.partial"))))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let offset = usize::try_from(size.offset_in_segment(at)).unwrap();
        let seg_end = size.segment_start(at).0 + size.bytes_u64();
        let stop = to.0.min(seg_end);
        let len = usize::try_from(stop - at.0).unwrap();
        out.extend_from_slice(&bytes[offset..offset + len]);
        at = Lsn(stop);
    }
    out
}
