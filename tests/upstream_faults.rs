//! The relay's upstream link under network faults and slot trouble, against a real
//! PostgreSQL 15 with 1 MB segments (ACCEPTANCE.md rows D1, D2, D4, D5 and G6). The network
//! faults come from the in-process [`FaultProxy`] between the primary and the relay.
//!
//! - D1: every connection reset (RST) every ~2 s under load: the relay reconnects and at the
//!   end its segments equal the archive's (O3) and `pg_waldump` reads them (O4).
//! - D2: a blackhole longer than the relay's receive timeout: the relay gives up on its own
//!   clock and streams again once the path heals; an idle but healthy upstream is not timed out.
//! - D4: upstream bytes re-sliced into 1-7 byte writes: the bytes stored are exact (O3).
//! - D5: the upstream slot is invalidated and its WAL removed while the relay is stopped: the
//!   relay reports it, stays up, and never skips ahead (O3 on what it stored).
//! - G6: under pgbench, the primary's slot never runs ahead of what the relay acknowledged and
//!   stored, keeps advancing, and the primary's `pg_wal` stays bounded.
//! - The upstream connection has the TCP keepalives its connection string asks for.
//!
//! Tunable: `WALRELAY_D1_SECS` (12), `WALRELAY_D4_MB` (3), `WALRELAY_G6_SCALE` (5),
//! `WALRELAY_G6_SECS` (15).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::fs;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use support::*;
use walrelay::testkit::faultproxy::{FaultMode, FaultProxy};
use walrelay::testkit::localpg::{
    Cluster, ClusterBuilder, PgBinaries, require_postgres, wait_until,
};
use walrelay::types::{Lsn, SegmentName, TimelineId, WalSegmentSize};

/// The relay's receive timeout in D2.
const RECEIVE_TIMEOUT: Duration = Duration::from_secs(3);

/// A started primary with 1 MB segments and archiving, plus `config` settings.
fn primary(bins: &PgBinaries, dir: &Path, config: &[(&str, &str)]) -> Cluster {
    let mut builder = ClusterBuilder::new(bins.clone(), dir)
        .segment_size_mb(1)
        .archive(true);
    for (key, value) in config {
        builder = builder.config(key, value);
    }
    let mut primary = builder.init().unwrap();
    primary.start().unwrap();
    primary
}

/// A runtime for the proxy's tasks, which run on its worker while the test thread blocks.
fn proxy_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

/// A proxy in front of `primary`, started on `rt`.
fn proxy_to(rt: &tokio::runtime::Runtime, primary: &Cluster) -> FaultProxy {
    let upstream = SocketAddr::from((Ipv4Addr::LOCALHOST, primary.port()));
    rt.block_on(FaultProxy::start(upstream)).unwrap()
}

fn via(proxy: &FaultProxy) -> String {
    format!("host=127.0.0.1 port={} user=postgres", proxy.port())
}

/// Starts the relay on `upstream` and waits until the primary sees it acknowledge its
/// current flush position.
fn start_relay(primary: &Cluster, upstream: &str, data: &Path, extra: &[&str]) -> RelayProcess {
    let relay = RelayProcess::start(upstream, data, extra);
    let flush = primary.current_wal_flush_lsn().unwrap();
    wait_acked(primary, flush, Duration::from_secs(30));
    relay
}

fn assert_no_panic(relay: &RelayProcess) {
    assert!(
        !relay.log_contents().contains("panicked at"),
        "the relay panicked"
    );
}

/// D1: connection resets every ~2 s under load.
#[test]
fn d1_connection_resets_under_load() {
    let Some(bins) = require_postgres() else {
        return;
    };
    let dir = scratch(&bins, "d1");
    let primary = primary(&bins, dir.path(), &[]);
    let size = primary.wal_segment_size().unwrap();
    let rt = proxy_runtime();
    let proxy = proxy_to(&rt, &primary);
    let relay = start_relay(&primary, &via(&proxy), &dir.path().join("relay"), &[]);
    let load = WriteLoad::start(&bins, &primary.conninfo(), 400, 20_000);
    let since = relay.log_len();
    let run_for = Duration::from_secs(env_u64("WALRELAY_D1_SECS", 12));
    let began = Instant::now();
    let mut resets = 0u64;
    while began.elapsed() < run_for {
        std::thread::sleep(Duration::from_secs(2));
        proxy.control().reset_all();
        resets += 1;
    }
    let (committed, _) = load.stop();
    let compared = converge_and_compare(&primary, &relay.wal_dir(), size);
    let streams = relay.count_log(since, "streaming timeline=");
    println!(
        "D1: {resets} resets in {:.1} s, {} connections accepted, {streams} new streams, \
         {committed} load transactions, {compared} segments byte-identical",
        began.elapsed().as_secs_f64(),
        proxy.control().accepted()
    );
    assert!(
        streams as u64 >= resets / 2,
        "the relay streamed {streams} times after {resets} resets"
    );
    assert_no_panic(&relay);
}

/// D4: upstream bytes re-sliced into writes of 1 to 7 bytes for the whole run.
#[test]
fn d4_resliced_upstream_bytes_are_exact() {
    let Some(bins) = require_postgres() else {
        return;
    };
    let dir = scratch(&bins, "d4");
    let primary = primary(&bins, dir.path(), &[]);
    let size = primary.wal_segment_size().unwrap();
    let rt = proxy_runtime();
    let proxy = proxy_to(&rt, &primary);
    proxy.control().set_mode(FaultMode::Slice { max: 7 });
    let began = Instant::now();
    let relay = start_relay(&primary, &via(&proxy), &dir.path().join("relay"), &[]);
    let start = primary.current_wal_flush_lsn().unwrap();
    let megabytes = env_u64("WALRELAY_D4_MB", 3);
    while primary.current_wal_flush_lsn().unwrap().0 - start.0 < megabytes << 20 {
        primary.write_load(500).unwrap();
        primary.emit_message(50_000).unwrap();
        primary.emit_message(9000).unwrap();
    }
    let compared = converge_and_compare(&primary, &relay.wal_dir(), size);
    println!(
        "D4: {megabytes} MB through the slicer, {compared} segments byte-identical in {:.1} s",
        began.elapsed().as_secs_f64()
    );
    assert!(compared as u64 >= megabytes);
    assert_eq!(proxy.control().mode(), FaultMode::Slice { max: 7 });
    assert_no_panic(&relay);
}

/// D2 (short): a blackhole longer than the receive timeout under load.
#[test]
fn d2_blackhole_is_detected_by_receive_timeout() {
    let Some(bins) = require_postgres() else {
        return;
    };
    let dir = scratch(&bins, "d2");
    let primary = primary(&bins, dir.path(), &[]);
    let size = primary.wal_segment_size().unwrap();
    let rt = proxy_runtime();
    let proxy = proxy_to(&rt, &primary);
    let timeout = format!("{}s", RECEIVE_TIMEOUT.as_secs());
    let extra = ["--receive-timeout", timeout.as_str()];
    let relay = start_relay(&primary, &via(&proxy), &dir.path().join("relay"), &extra);
    let load = WriteLoad::start(&bins, &primary.conninfo(), 200, 10_000);
    // Under load the upstream is never silent: no timeout before the fault.
    std::thread::sleep(RECEIVE_TIMEOUT + Duration::from_secs(1));
    assert_eq!(relay.count_log(0, "due to timeout"), 0);

    let since = relay.log_len();
    let stalled = Instant::now();
    proxy.control().set_mode(FaultMode::Stall);
    relay.wait_log(since, "due to timeout", RECEIVE_TIMEOUT * 3);
    let detected = stalled.elapsed();
    std::thread::sleep(Duration::from_secs(1));
    let healed = relay.log_len();
    proxy.control().set_mode(FaultMode::Pass);
    let healed_at = Instant::now();
    relay.wait_log(healed, "streaming timeline=", Duration::from_secs(30));
    let resumed = healed_at.elapsed();
    let (committed, _) = load.stop();
    let compared = converge_and_compare(&primary, &relay.wal_dir(), size);
    println!(
        "D2: stall detected after {detected:?} (receive timeout {RECEIVE_TIMEOUT:?}), streaming \
         again {resumed:?} after the path healed; {committed} load transactions, {compared} \
         segments byte-identical"
    );
    let line = relay
        .log_since(since)
        .lines()
        .find(|l| l.contains("due to timeout"))
        .unwrap()
        .to_owned();
    println!("D2 log: {line}");
    assert!(detected >= RECEIVE_TIMEOUT - Duration::from_millis(200));
    assert!(detected <= RECEIVE_TIMEOUT + Duration::from_secs(3));
    assert_no_panic(&relay);
}

/// A9 parity for the receive timeout used in D2: a healthy upstream with no WAL to send is
/// not given up on. The relay must ask for a reply before its timeout runs out, as a
/// walreceiver pings at half `wal_receiver_timeout`, because an idle walsender that hears
/// from its client stays silent (`wal_sender_timeout` keepalives only come when replies stop).
#[test]
fn d2_idle_upstream_is_not_timed_out() {
    let Some(bins) = require_postgres() else {
        return;
    };
    let dir = scratch(&bins, "d2idle");
    let primary = primary(&bins, dir.path(), &[]);
    let timeout = format!("{}s", RECEIVE_TIMEOUT.as_secs());
    let extra = ["--receive-timeout", timeout.as_str()];
    let relay = start_relay(
        &primary,
        &primary.conninfo(),
        &dir.path().join("relay"),
        &extra,
    );
    let since = relay.log_len();
    let idle = RECEIVE_TIMEOUT * 3;
    std::thread::sleep(idle);
    let timeouts = relay.count_log(since, "due to timeout");
    let streams = relay.count_log(since, "streaming timeline=");
    println!("D2 idle: {timeouts} timeouts and {streams} new streams in {idle:?} without WAL");
    assert_eq!(
        timeouts,
        0,
        "an idle upstream was timed out:\n{}",
        relay.log_since(since)
    );
}

/// The file name of the segment holding `lsn` on timeline 1.
fn segment_name(lsn: Lsn, size: WalSegmentSize) -> String {
    SegmentName {
        timeline: TimelineId::ONE,
        segno: size.segment_of(lsn),
    }
    .file_name(size)
}

/// D5: the upstream slot is lost while the relay is stopped.
#[test]
fn d5_lost_upstream_slot_is_reported_never_skipped() {
    let Some(bins) = require_postgres() else {
        return;
    };
    let dir = scratch(&bins, "d5");
    let primary = primary(&bins, dir.path(), &[("max_slot_wal_keep_size", "2MB")]);
    let size = primary.wal_segment_size().unwrap();
    let pg_wal = primary.data_dir().join("pg_wal");
    let mut relay = start_relay(
        &primary,
        &primary.conninfo(),
        &dir.path().join("relay"),
        &[],
    );
    primary.write_load(3000).unwrap();
    let switched = primary.switch_wal().unwrap();
    primary
        .wait_archived(switched, Duration::from_secs(30))
        .unwrap();
    wait_acked(
        &primary,
        primary.write_load(10).unwrap(),
        Duration::from_secs(30),
    );
    let before = assert_stored_contiguous(&relay.wal_dir(), &primary.archive_dir(), &pg_wal, size);

    // The relay is away while the primary writes on and loses the slot. (With SIGSTOP instead,
    // as the row describes, the primary cannot invalidate the slot while its walsender is
    // blocked sending to the stopped relay, and whatever the socket buffers held would still
    // reach the relay: the outcome would depend on buffer sizes.)
    let since = relay.log_len();
    relay.signal("TERM");
    assert!(
        relay
            .wait_exit(Duration::from_secs(10))
            .is_some_and(|st| st.success())
    );
    let mut last = switched;
    for _ in 0..6 {
        primary.write_load(1000).unwrap();
        primary.emit_message(400_000).unwrap();
        last = primary.switch_wal().unwrap();
    }
    primary
        .wait_archived(last, Duration::from_secs(60))
        .unwrap();
    wait_until(Duration::from_secs(60), "the relay's slot is lost", || {
        primary.psql("SET statement_timeout = '20s'; CHECKPOINT")?;
        let status = primary
            .psql("SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'walrelay'")?;
        Ok(status == "lost")
    })
    .unwrap();
    let needed = segment_name(before, size);
    assert!(
        !pg_wal.join(&needed).exists(),
        "the primary still has {needed}"
    );
    relay = RelayProcess::start(&primary.conninfo(), &dir.path().join("relay"), &[]);

    let waited = relay.wait_log(since, "has already been removed", Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(3));
    let log = relay.log_since(since);
    let errors: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("has already been removed"))
        .collect();
    println!(
        "D5: slot lost with the relay at {before} (needs {needed}); error after {waited:?}, \
         {} times in all; first:\n{}",
        errors.len(),
        errors.first().unwrap()
    );
    assert!(relay.is_running(), "the relay exited:\n{log}");
    assert!(errors.first().unwrap().contains("ERROR"));
    let after = assert_stored_contiguous(
        &relay.wal_dir(),
        &primary.archive_dir(),
        &primary.archive_dir(),
        size,
    );
    let missing = errors
        .first()
        .and_then(|l| l.split("requested WAL segment ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap()
        .to_owned();
    let newest = fs::read_dir(relay.wal_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.len() >= 24 && !n.ends_with(".history"))
        .max()
        .unwrap();
    println!("D5: stored end {before} before the fault, {after} after; newest file {newest}");
    assert!(after >= before);
    assert!(
        newest.get(..24).unwrap() <= missing.as_str(),
        "the relay stored {newest}, past the missing {missing}"
    );
    assert_no_panic(&relay);
}

/// What the G6 sampler saw.
#[derive(Debug, Default)]
struct SlotSamples {
    samples: u64,
    max_pg_wal_files: usize,
    ahead_of_ack: Vec<(Lsn, Lsn)>,
    ahead_of_files: Vec<(Lsn, Lsn)>,
}

fn slot_restart_lsn(primary: &Cluster) -> Option<Lsn> {
    primary
        .psql("SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = 'walrelay'")
        .ok()?
        .parse()
        .ok()
}

/// One G6 sample: the slot's restart_lsn first, then the relay's acknowledged flush and the
/// end of its files, both of which only grow, so the slot must not be ahead of either.
fn sample_slot(primary: &Cluster, relay_wal: &Path, size: WalSegmentSize, out: &mut SlotSamples) {
    let pg_wal = segment_files(&primary.data_dir().join("pg_wal")).len();
    out.max_pg_wal_files = out.max_pg_wal_files.max(pg_wal);
    let Some(restart) = slot_restart_lsn(primary) else {
        return;
    };
    let acked = acked_flush(primary, "walrelay");
    let stored = stored_end(relay_wal, size).unwrap();
    out.samples += 1;
    if acked.is_some_and(|a| restart > a) {
        out.ahead_of_ack.push((restart, acked.unwrap()));
    }
    if restart > stored {
        out.ahead_of_files.push((restart, stored));
    }
}

/// G6: the upstream slot follows the relay's durable end under pgbench.
#[test]
fn g6_upstream_slot_follows_durable_end() {
    let Some(bins) = require_postgres() else {
        return;
    };
    let dir = scratch(&bins, "g6");
    let config = [("max_wal_size", "16MB"), ("min_wal_size", "2MB")];
    let primary = primary(&bins, dir.path(), &config);
    let size = primary.wal_segment_size().unwrap();
    let relay = start_relay(
        &primary,
        &primary.conninfo(),
        &dir.path().join("relay"),
        &[],
    );
    let first = slot_restart_lsn(&primary).unwrap();
    let relay_wal = relay.wal_dir();
    let scale = env_u64("WALRELAY_G6_SCALE", 5).to_string();
    let secs = env_u64("WALRELAY_G6_SECS", 15).to_string();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let began = Instant::now();
    let seen = std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            let mut seen = SlotSamples::default();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                sample_slot(&primary, &relay_wal, size, &mut seen);
                std::thread::sleep(Duration::from_millis(200));
            }
            seen
        });
        let load = primary
            .pgbench(&["-i", "-s", &scale])
            .and_then(|_| primary.pgbench(&["-c", "2", "-T", &secs]));
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        load.unwrap();
        sampler.join().unwrap()
    });
    let end = primary.current_wal_flush_lsn().unwrap();
    wait_acked(&primary, end, Duration::from_secs(60));
    let last = slot_restart_lsn(&primary).unwrap();
    let advanced = (last.0 - first.0) / size.bytes_u64();
    println!(
        "G6: {} samples in {:.1} s; restart_lsn {first} -> {last} ({advanced} segments), \
         at most {} files in pg_wal (max_wal_size 16MB)",
        seen.samples,
        began.elapsed().as_secs_f64(),
        seen.max_pg_wal_files
    );
    assert!(seen.samples >= 20, "too few samples: {seen:?}");
    assert!(
        seen.ahead_of_ack.is_empty(),
        "restart_lsn ahead of the relay's acknowledged flush (restart, acked): {:?}",
        seen.ahead_of_ack
    );
    assert!(
        seen.ahead_of_files.is_empty(),
        "restart_lsn ahead of the relay's stored end (restart, stored): {:?}",
        seen.ahead_of_files
    );
    assert!(advanced >= 10, "the slot advanced only {advanced} segments");
    assert!(
        seen.max_pg_wal_files <= 64,
        "pg_wal grew to {} files",
        seen.max_pg_wal_files
    );
    assert_no_panic(&relay);
}

/// The upstream connection has TCP keepalives, as libpq gives a walreceiver's: on by default
/// with the connection string's `keepalives_idle`, `_interval` and `_count`, and off with
/// `keepalives=0`. They find a dead upstream that is silent by right, as a walsender is
/// during a base backup's checkpoint.
#[test]
fn the_upstream_connection_has_the_keepalives_the_conninfo_asks_for() {
    let Some(bins) = require_postgres() else {
        return;
    };
    let dir = scratch(&bins, "keepalives");
    let primary = primary(&bins, dir.path(), &[]);
    let upstream = format!(
        "{} keepalives_idle=7 keepalives_interval=2 keepalives_count=3",
        primary.conninfo()
    );
    let relay = start_relay(&primary, &upstream, &dir.path().join("relay"), &[]);
    let timer = || upstream_socket_timer(relay.pid(), primary.port());
    // An idle connection shows the keepalive timer, at most `keepalives_idle` away.
    wait_until(Duration::from_secs(10), "a keepalive timer", || {
        Ok(timer().is_some_and(|t| t.starts_with("keepalive,")))
    })
    .unwrap_or_else(|e| panic!("{e}: {:?}", timer()));
    let t = timer().unwrap();
    // Without keepalives_idle the kernel's 2 hours show ("119min"). iproute2 6.1 prints
    // seconds under 60 with an "ms" suffix, later versions with "sec": the number is read.
    let remaining = t.split(',').nth(1).unwrap_or_default();
    let secs: f64 = remaining
        .trim_end_matches(|c: char| c.is_ascii_alphabetic())
        .parse()
        .unwrap_or_else(|_| panic!("{t}"));
    assert!(!remaining.ends_with("min"), "{t}");
    assert!(secs <= 7.0, "{t}");
    drop(relay);

    let off = format!("{} keepalives=0", primary.conninfo());
    let relay = start_relay(&primary, &off, &dir.path().join("relay-off"), &[]);
    std::thread::sleep(Duration::from_secs(1));
    let t = upstream_socket_timer(relay.pid(), primary.port());
    assert!(
        !t.is_some_and(|t| t.starts_with("keepalive")),
        "keepalives=0"
    );
}

/// The timer `ss` shows on the relay `pid`'s connection to `port` ("keepalive,6.9sec,0"),
/// `None` when there is no timer or no such connection.
fn upstream_socket_timer(pid: u32, port: u16) -> Option<String> {
    let out = std::process::Command::new("ss")
        .args(["-tnopH", "state", "established"])
        .arg(format!("( dport = :{port} )"))
        .output()
        .expect("ss (iproute2) runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.contains(&format!("pid={pid},")))?;
    let start = line.find("timer:(")? + "timer:(".len();
    let end = line[start..].find(')')? + start;
    Some(line[start..end].to_owned())
}
