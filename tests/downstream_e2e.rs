//! The relay as a walsender for real PostgreSQL 15 clients: `psql replication=1` gets the
//! primary's answers (ACCEPTANCE A4), `pg_receivewal` through the relay writes exactly what it
//! writes from the primary (A2), and a hot standby built from the primary streams from the
//! relay on a relay slot and replays to the primary's end (A1, one standby). A client far
//! behind is sent WAL from the segment files as they are, and writes the same.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::fs;
use std::path::Path;
use std::time::Duration;

use support::*;
use walrelay::testkit::localpg::{Cluster, PgBinaries, free_port, require_postgres, wait_until};
use walrelay::types::Lsn;

struct Setup {
    bins: PgBinaries,
    _dir: walrelay::testkit::localpg::ScratchDir,
    primary: Cluster,
    relay: RelayProcess,
    relay_port: u16,
}

fn setup(label: &str, segment_mb: u32) -> Option<Setup> {
    setup_listening(label, segment_mb, "127.0.0.1")
}

/// [`setup`] with the relay listening on `host`.
fn setup_listening(label: &str, segment_mb: u32, host: &str) -> Option<Setup> {
    let bins = require_postgres()?;
    let dir = scratch(&bins, label);
    let primary = archiving_primary(&bins, dir.path(), segment_mb);
    let relay_port = free_port().unwrap();
    let listen = format!("{host}:{relay_port}");
    let relay = RelayProcess::start(
        &primary.conninfo(),
        &dir.path().join("relay"),
        &["--listen", &listen],
    );
    let now = primary.current_wal_flush_lsn().unwrap();
    wait_acked(&primary, now, Duration::from_secs(30));
    Some(Setup {
        bins,
        _dir: dir,
        primary,
        relay,
        relay_port,
    })
}

fn relay_conninfo(s: &Setup) -> String {
    format!("host=127.0.0.1 port={} user=postgres", s.relay_port)
}

/// A standby of the primary, not yet started, that streams from the relay on a new relay
/// slot of its own name.
fn standby_on_relay_slot(s: &Setup, name: &str) -> Cluster {
    let create = format!("CREATE_REPLICATION_SLOT \"{name}\" PHYSICAL");
    repl(&s.bins, &relay_conninfo(s), &create).unwrap();
    let conninfo = format!("{} application_name={name}", relay_conninfo(s));
    s.primary.basebackup_standby(&conninfo, Some(name)).unwrap()
}

/// Waits until each of `dirs` holds the completed segment file that `target` lies in.
fn wait_for_segment_of(primary: &Cluster, target: Lsn, dirs: &[&Path]) {
    let last = primary
        .psql(&format!("SELECT pg_walfile_name('{target}')"))
        .unwrap();
    for d in dirs {
        wait_until(
            Duration::from_secs(60),
            "pg_receivewal completed the segment",
            || Ok(d.join(&last).exists()),
        )
        .unwrap();
    }
}

/// The files `names` are the same in `a` and in `b`, byte for byte.
fn assert_same_files(a: &Path, b: &Path, names: &[String]) {
    for name in names {
        assert!(
            fs::read(a.join(name)).unwrap() == fs::read(b.join(name)).unwrap(),
            "{name}"
        );
    }
}

fn repl(bins: &PgBinaries, conninfo: &str, sql: &str) -> Result<String, String> {
    bins.psql(&format!("{conninfo} replication=1"), sql)
        .map_err(|e| e.to_string())
}

#[test]
fn replication_commands_answer_like_the_primary() {
    let Some(s) = setup("cmds", 1) else { return };
    let relay = relay_conninfo(&s);
    let primary = s.primary.conninfo();
    let ours = repl(&s.bins, &relay, "IDENTIFY_SYSTEM").unwrap();
    let theirs = repl(&s.bins, &primary, "IDENTIFY_SYSTEM").unwrap();
    let (o, t): (Vec<&str>, Vec<&str>) = (ours.split('|').collect(), theirs.split('|').collect());
    assert_eq!(
        (o[0], o[1], o[3]),
        (t[0], t[1], t[3]),
        "systemid, timeline, dbname"
    );
    assert!(o[2].parse::<walrelay::types::Lsn>().unwrap() <= t[2].parse().unwrap());
    for cmd in [
        "SHOW wal_segment_size",
        "SHOW data_directory_mode",
        "SHOW server_version",
    ] {
        assert_eq!(
            repl(&s.bins, &relay, cmd).unwrap(),
            repl(&s.bins, &primary, cmd).unwrap(),
            "{cmd}"
        );
    }
    assert_eq!(
        repl(&s.bins, &relay, "READ_REPLICATION_SLOT nosuch").unwrap(),
        "||"
    );
    let created = repl(&s.bins, &relay, "CREATE_REPLICATION_SLOT \"s1\" PHYSICAL").unwrap();
    assert_eq!(created, "s1|0/0||");
    let again = repl(&s.bins, &relay, "CREATE_REPLICATION_SLOT \"s1\" PHYSICAL").unwrap_err();
    assert!(
        again.contains("replication slot \"s1\" already exists"),
        "{again}"
    );
    let bad = repl(&s.bins, &relay, "CREATE_REPLICATION_SLOT \"Bad\" PHYSICAL").unwrap_err();
    assert!(bad.contains("contains invalid character"), "{bad}");
    let reserved = repl(
        &s.bins,
        &relay,
        "CREATE_REPLICATION_SLOT \"s2\" PHYSICAL (RESERVE_WAL)",
    )
    .unwrap();
    assert!(reserved.starts_with("s2|"));
    let read = repl(&s.bins, &relay, "READ_REPLICATION_SLOT s2").unwrap();
    assert!(
        read.starts_with("physical|") && read.ends_with("|1"),
        "{read}"
    );
    repl(&s.bins, &relay, "DROP_REPLICATION_SLOT \"s1\"").unwrap();
    let missing = repl(&s.bins, &relay, "DROP_REPLICATION_SLOT \"s1\"").unwrap_err();
    assert!(
        missing.contains("replication slot \"s1\" does not exist"),
        "{missing}"
    );
    let sql = repl(&s.bins, &relay, "SELECT 1").unwrap_err();
    assert!(
        sql.contains("cannot execute SQL commands in WAL sender for physical replication"),
        "{sql}"
    );
    let history = repl(&s.bins, &relay, "TIMELINE_HISTORY 1").unwrap_err();
    assert!(
        history.contains("could not open file \"pg_wal/00000001.history\""),
        "{history}"
    );
    let plain = s.bins.psql(&relay, "SELECT 1").unwrap_err().to_string();
    assert!(plain.contains("no pg_hba.conf entry"), "{plain}");
}

#[test]
fn pg_receivewal_through_the_relay_matches_direct_1mb() {
    pg_receivewal_through_the_relay_matches_direct(1);
}

#[test]
fn pg_receivewal_through_the_relay_matches_direct_16mb() {
    pg_receivewal_through_the_relay_matches_direct(16);
}

fn pg_receivewal_through_the_relay_matches_direct(segment_mb: u32) {
    let Some(s) = setup("recvwal", segment_mb) else {
        return;
    };
    let size = s.primary.wal_segment_size().unwrap();
    let via = s.relay.data_dir.parent().unwrap().join("via-relay");
    let direct = s.relay.data_dir.parent().unwrap().join("direct");
    fs::create_dir_all(&via).unwrap();
    fs::create_dir_all(&direct).unwrap();
    let mut a = s.bins.receivewal(&relay_conninfo(&s), &via, &[]).unwrap();
    let mut b = s
        .bins
        .receivewal(&s.primary.conninfo(), &direct, &[])
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    s.primary.write_load(3000).unwrap();
    s.primary.emit_message(2 * size.bytes() as usize).unwrap();
    let target = s.primary.switch_wal().unwrap();
    s.primary.write_load(100).unwrap();
    wait_for_segment_of(&s.primary, target, &[&via, &direct]);
    a.stop().unwrap();
    b.stop().unwrap();
    let ours = segment_files(&via);
    assert!(ours.len() >= 3, "{ours:?}");
    assert_eq!(ours, segment_files(&direct));
    assert_same_files(&via, &direct, &ours);
}

/// A client that starts far behind the newest WAL, beyond what the relay keeps in memory, is
/// sent it over TCP straight from the segment files (`sendfile`, as
/// `walrelay_wal_served_bytes_total{source="sendfile"}` counts), and `pg_receivewal` writes
/// exactly what it writes from the primary.
#[test]
fn pg_receivewal_far_behind_is_sent_from_the_segment_files_as_they_are() {
    let Some(bins) = require_postgres() else {
        return;
    };
    let dir = scratch(&bins, "sendfile");
    let primary = archiving_primary(&bins, dir.path(), 1);
    let (relay_port, http_port) = (free_port().unwrap(), free_port().unwrap());
    let _relay = RelayProcess::start(
        &primary.conninfo(),
        &dir.path().join("relay"),
        &[
            "--listen",
            &format!("127.0.0.1:{relay_port}"),
            "--http-listen",
            &format!("127.0.0.1:{http_port}"),
        ],
    );
    wait_acked(
        &primary,
        primary.current_wal_flush_lsn().unwrap(),
        Duration::from_secs(30),
    );
    let conninfo = format!("host=127.0.0.1 port={relay_port} user=postgres");
    repl(
        &bins,
        &conninfo,
        "CREATE_REPLICATION_SLOT far PHYSICAL RESERVE_WAL",
    )
    .unwrap();
    let (via, direct) = (dir.path().join("via-relay"), dir.path().join("direct"));
    fs::create_dir_all(&via).unwrap();
    fs::create_dir_all(&direct).unwrap();
    let mut b = bins.receivewal(&primary.conninfo(), &direct, &[]).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    primary.emit_message(20 << 20).unwrap();
    let target = primary.switch_wal().unwrap();
    primary.write_load(100).unwrap();
    wait_acked(
        &primary,
        primary.current_wal_flush_lsn().unwrap(),
        Duration::from_secs(60),
    );
    let sent_from_files = || {
        let (code, _, text) = http_get(http_port, "/metrics", &[]);
        assert_eq!(code, 200);
        text.lines()
            .find_map(|l| l.strip_prefix("walrelay_wal_served_bytes_total{source=\"sendfile\"} "))
            .unwrap()
            .parse::<f64>()
            .unwrap()
    };
    assert_eq!(sent_from_files(), 0.0);
    // The relay holds 20 MB more than its 4 MiB in memory; the client starts at the slot.
    // The writer kept only the newest files open: the first read of each older segment
    // opens its file on a thread that may wait for the disk, and the rest of the segment
    // (768 KiB of 1 MiB) is sent from the open file.
    let mut a = bins
        .receivewal(&conninfo, &via, &["--slot", "far"])
        .unwrap();
    wait_for_segment_of(&primary, target, &[&via, &direct]);
    a.stop().unwrap();
    b.stop().unwrap();
    let sent = sent_from_files();
    assert!(sent >= 8.0 * 1024.0 * 1024.0, "{sent}");
    let theirs = segment_files(&direct);
    let ours: Vec<String> = segment_files(&via)
        .into_iter()
        .filter(|n| theirs.contains(n))
        .collect();
    assert!(ours.len() >= 20, "{ours:?} of {theirs:?}");
    assert_same_files(&via, &direct, &ours);
}

#[test]
fn hot_standby_streams_from_the_relay_on_a_relay_slot_1mb() {
    hot_standby_streams_from_the_relay_on_a_relay_slot(1);
}

#[test]
fn hot_standby_streams_from_the_relay_on_a_relay_slot_16mb() {
    hot_standby_streams_from_the_relay_on_a_relay_slot(16);
}

fn hot_standby_streams_from_the_relay_on_a_relay_slot(segment_mb: u32) {
    let Some(s) = setup("standby", segment_mb) else {
        return;
    };
    let mut standby = standby_on_relay_slot(&s, "d1");
    standby.start().unwrap();
    s.primary.write_load(5000).unwrap();
    s.primary
        .psql("CREATE TABLE t AS SELECT g FROM generate_series(1, 10000) g")
        .unwrap();
    s.primary.switch_wal().unwrap();
    s.primary.write_load(500).unwrap();
    let target = s.primary.current_wal_flush_lsn().unwrap();
    wait_until(
        Duration::from_secs(60),
        "standby replays to the primary's end",
        || Ok(standby.replay_lsn()? >= target),
    )
    .unwrap();
    assert_eq!(standby.psql("SELECT count(*) FROM t").unwrap(), "10000");
    let q = "SELECT count(*), sum(length(payload)) FROM walrelay_load";
    assert_eq!(standby.psql(q).unwrap(), s.primary.psql(q).unwrap());
    let slot = repl(&s.bins, &relay_conninfo(&s), "READ_REPLICATION_SLOT d1").unwrap();
    assert!(slot.starts_with("physical|"), "{slot}");
    let receiver = standby
        .psql("SELECT status FROM pg_stat_wal_receiver")
        .unwrap();
    assert_eq!(receiver, "streaming");
    let senders = s
        .primary
        .psql("SELECT count(*) FROM pg_stat_replication")
        .unwrap();
    assert_eq!(senders, "1", "only the relay streams from the primary");
}

#[test]
fn standbys_are_served_after_a_restart_while_the_primary_is_down() {
    let Some(mut s) = setup("offline", 1) else {
        return;
    };
    let mut standby = standby_on_relay_slot(&s, "d1");
    standby
        .set_config("wal_retrieve_retry_interval", "500ms")
        .unwrap();
    standby.start().unwrap();
    s.primary.write_load(2000).unwrap();
    let target = s.primary.current_wal_flush_lsn().unwrap();
    wait_until(Duration::from_secs(60), "standby replay", || {
        Ok(standby.replay_lsn()? >= target)
    })
    .unwrap();

    s.primary
        .stop(walrelay::testkit::localpg::StopMode::Fast)
        .unwrap();
    s.relay.signal("TERM");
    assert!(
        s.relay
            .wait_exit(Duration::from_secs(10))
            .is_some_and(|st| st.success())
    );
    let data_dir = s.relay.data_dir.clone();
    let listen = format!("127.0.0.1:{}", s.relay_port);
    s.relay = RelayProcess::start(&s.primary.conninfo(), &data_dir, &["--listen", &listen]);
    let relay = relay_conninfo(&s);
    wait_until(
        Duration::from_secs(30),
        "relay answers without its upstream",
        || Ok(repl(&s.bins, &relay, "IDENTIFY_SYSTEM").is_ok()),
    )
    .unwrap();
    wait_until(
        Duration::from_secs(60),
        "standby streams from the restarted relay",
        || Ok(standby.psql("SELECT status FROM pg_stat_wal_receiver")? == "streaming"),
    )
    .unwrap();
}

/// This machine's IPv4 address on its default route, if it has one (no packet is sent).
fn non_loopback_ipv4() -> Option<std::net::IpAddr> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("192.0.2.1:9").ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

/// With no access rules, a client that is not on loopback gets PostgreSQL's "no pg_hba.conf
/// entry" rejection, and loopback clients on the same listener are trusted.
#[test]
fn clients_off_loopback_are_rejected_as_without_a_pg_hba_entry() {
    let Some(ip) = non_loopback_ipv4() else {
        println!("this machine has no non-loopback IPv4 address: nothing to check");
        return;
    };
    let Some(s) = setup_listening("hba", 1, "0.0.0.0") else {
        return;
    };
    let port = s.relay_port;
    let remote = format!("host={ip} port={port} user=postgres");
    let refused = repl(&s.bins, &remote, "IDENTIFY_SYSTEM").unwrap_err();
    let expected = format!(
        "no pg_hba.conf entry for replication connection from host \"{ip}\", user \"postgres\", \
         no encryption"
    );
    assert!(refused.contains(&expected), "{refused}");
    let local = format!("host=127.0.0.1 port={port} user=postgres");
    assert!(repl(&s.bins, &local, "IDENTIFY_SYSTEM").is_ok());
}
