//! K1 (ACCEPTANCE.md): the hostile-input corpus replayed at the relay while three real
//! PostgreSQL 15 hot standbys stream from it, under a pgbench load at a fixed rate.
//!
//! - Every input gets O8's treatment: PostgreSQL's SQLSTATE and text, or a silent close where
//!   PostgreSQL closes silently, within 5 s; afterwards the relay is the same process, a new
//!   `psql` session's `IDENTIFY_SYSTEM` works, and its log holds no panic.
//! - The standbys pass O7 throughout: each stays within two segments of the primary's flush
//!   position in at least 90% of the samples, keeps its walreceiver (same PID), and the
//!   primary's pgbench throughput stays within 10% of the baseline measured before the replay
//!   in the same run. The corpus is replayed round after round for as long as that load
//!   runs. The load runs at a fixed rate (`pgbench -R`), so what it measures is whether the
//!   primary keeps its pace, not how much of two cores the replay itself takes.
//! - Afterwards every standby replays to the primary's position after a switch (O1) and holds
//!   the same `pgbench_history` sum and count.
//!
//! The corpus is a cross-section of §2.1 (before and during the startup packet), §2.3
//! (command mode), §2.4 (streaming) and §2.5 (churn and resets), the inputs that
//! `tests/downstream_behaviour.rs` checks one by one against a relay with no standby. §2.2
//! (SCRAM) needs TLS and an auth file: `tests/downstream_tls_abuse.rs`.
//!
//! Durations are tunable: `WALRELAY_K1_SECS` (each of the two pgbench runs, default 10).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod downstream_client;
mod support;

use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use downstream_client::*;
use support::relay_topology::{StopOnDrop, relay_standby, walreceiver_pid};
use support::*;
use walrelay::testkit::localpg::{Cluster, PgBinaries, free_port, require_postgres, wait_until};
use walrelay::types::Lsn;

/// pgbench's fixed rate, transactions a second: well within what two cores sustain while
/// the corpus runs, and high enough that the randomness of its schedule (Poisson arrivals:
/// about ±2% over 10 s) stays well inside O7's 10%.
const RATE: &str = "300";

/// One hostile input and the check of how the relay treated it (panics when wrongly).
struct Case {
    name: &'static str,
    run: fn(u16),
}

/// The corpus, in the order it is replayed.
const CORPUS: &[Case] = &[
    // §2.1: before and during the startup packet.
    Case {
        name: "a connection closed at once",
        run: |port| drop(RawClient::connect(port)),
    },
    Case {
        name: "startup lengths below 8 and above 10000",
        run: startup_lengths,
    },
    Case {
        name: "a startup packet without its terminator",
        run: |port| {
            let mut unterminated = startup_packet(REPLICATION_LOGIN);
            unterminated.pop();
            let msgs = messages_before_close(port, &first_packet(&unterminated[4..]));
            let layout = "invalid startup packet layout: expected terminator as last byte";
            assert_eq!(only_fatal(&msgs), ("08P01".into(), layout.into()));
        },
    },
    Case {
        name: "no user",
        run: |port| {
            let no_user = [("database", "replication"), ("replication", "true")];
            let msgs = messages_before_close(port, &startup_packet(&no_user));
            let text = "no PostgreSQL user name specified in startup packet";
            assert_eq!(only_fatal(&msgs), ("28000".into(), text.into()));
        },
    },
    Case {
        name: "replication=maybe",
        run: |port| {
            let maybe = [("user", "postgres"), ("replication", "maybe")];
            let msgs = messages_before_close(port, &startup_packet(&maybe));
            let text = "invalid value for parameter \"replication\": \"maybe\"";
            assert_eq!(only_fatal(&msgs), ("22023".into(), text.into()));
        },
    },
    Case {
        name: "protocol 2.0 and 4.0",
        run: |port| {
            let old = bytes_before_close(port, &startup_packet_version(2, 0, REPLICATION_LOGIN));
            let old = String::from_utf8_lossy(&old);
            assert!(old.contains("unsupported frontend protocol 2.0"), "{old:?}");
            let packet = startup_packet_version(4, 0, REPLICATION_LOGIN);
            let (code, text) = only_fatal(&messages_before_close(port, &packet));
            assert_eq!(code, "0A000", "{text}");
        },
    },
    Case {
        name: "SSLRequest and StartupMessage in one write",
        run: |port| {
            let mut stuffed = ssl_request();
            stuffed.extend(startup_packet(REPLICATION_LOGIN));
            let mut c = RawClient::connect(port);
            c.send(&stuffed);
            assert_eq!(c.read_bytes(1, ANSWER), b"N");
            let (_, msgs) = c.until_closed(ANSWER).expect("still open");
            let text = "received unencrypted data after SSL request";
            assert_eq!(only_fatal(&msgs), ("08P01".into(), text.into()));
        },
    },
    Case {
        name: "a CancelRequest with a random key",
        run: |port| {
            let got = bytes_before_close(port, &cancel_request(0x1234_5678, 0x0bad_cafe));
            assert!(got.is_empty(), "answered with {got:?}");
        },
    },
    Case {
        name: "half a startup packet, then silence",
        run: |port| {
            let packet = startup_packet(REPLICATION_LOGIN);
            let mut c = RawClient::connect(port);
            c.send(&packet[..packet.len() / 2]);
            let (after, got) = c.raw_until_closed(ANSWER).expect("still open");
            assert!(got.is_empty(), "answered half a packet with {got:?}");
            assert!(after >= Duration::from_secs(1), "closed after {after:?}");
        },
    },
    // §2.3: command mode.
    Case {
        name: "SQL on a physical replication connection",
        run: |port| {
            let mut c = RawClient::login(port, "k1");
            for sql in ["SELECT 1", "FROBNICATE"] {
                let msgs = c.query(sql);
                let e = first_error(&msgs).unwrap_or_else(|| panic!("{sql}: {msgs:?}"));
                let text = "cannot execute SQL commands in WAL sender for physical replication";
                assert_eq!(e.message(), text, "{sql}");
            }
            c.identify_system();
        },
    },
    Case {
        name: "bad START_REPLICATION and slot names",
        run: |port| {
            let mut c = RawClient::login(port, "k1");
            let msgs = c.query("START_REPLICATION 0/0 TIMELINE 0");
            assert_eq!(first_error(&msgs).unwrap().message(), "invalid timeline 0");
            let msgs = c.query("START_REPLICATION 0/0 TIMELINE 9");
            let text = "requested timeline 9 is not in this server's history";
            assert_eq!(first_error(&msgs).unwrap().message(), text);
            let msgs = c.query("CREATE_REPLICATION_SLOT \"../../etc\" PHYSICAL");
            let e = first_error(&msgs).expect("a slot named ../../etc");
            assert!(e.message().contains("contains invalid character"), "{e:?}");
            c.identify_system();
        },
    },
    Case {
        name: "unknown message type 0x99",
        run: |port| {
            let mut c = RawClient::login(port, "k1");
            c.send(&message(0x99, &[]));
            let e = c.error_then_close().expect("no error for 0x99");
            let text = "invalid frontend message type 153";
            assert_eq!((e.sqlstate(), e.message()), ("08P01".into(), text.into()));
        },
    },
    Case {
        name: "a Query announcing 2 GB",
        run: |port| {
            let mut c = RawClient::login(port, "k1");
            let mut huge = vec![b'Q'];
            huge.extend_from_slice(&0x7fff_fff0u32.to_be_bytes());
            c.send(&huge);
            assert!(c.until_closed(ANSWER).is_some(), "still open");
        },
    },
    // §2.4: streaming.
    Case {
        name: "malformed standby replies",
        run: |port| {
            let short = status_update(1, 1, 0, false)[..10].to_vec();
            let beyond = status_update(1, 0xFFFF_FFFF_0000_0000, 0, false);
            for payload in [short, beyond] {
                let mut c = RawClient::streaming(port, "k1");
                c.send(&copy_data(&payload));
                let e = c.error_then_close().expect("closed without an error");
                assert_eq!(e.sqlstate(), "08P01", "{e:?}");
            }
            let mut c = RawClient::streaming(port, "k1");
            c.send(&copy_data(b"x123"));
            c.error_then_close();
        },
    },
    Case {
        name: "a Query while streaming",
        run: |port| {
            let mut c = RawClient::streaming(port, "k1");
            c.send(&query_msg("IDENTIFY_SYSTEM"));
            let e = c.error_then_close().expect("closed silently");
            assert_eq!(e.message(), "invalid standby message type \"Q\"");
        },
    },
    Case {
        name: "a 100 MB CopyData header",
        run: |port| {
            let mut c = RawClient::streaming(port, "k1");
            let mut header = vec![b'd'];
            header.extend_from_slice(&100_000_004u32.to_be_bytes());
            header.push(b'r');
            c.send(&header);
            assert!(c.until_closed(ANSWER).is_some(), "still open");
        },
    },
    Case {
        name: "CopyDone twice, Terminate and a half-close while streaming",
        run: |port| {
            let mut c = RawClient::streaming(port, "k1");
            let mut twice = copy_done();
            twice.extend(copy_done());
            c.send(&twice);
            assert_copy_done_ending(&c.until_ready(ANSWER));
            c.identify_system();
            let mut c = RawClient::streaming(port, "k1");
            c.send(&terminate());
            assert!(c.until_closed(ANSWER).is_some(), "Terminate left it open");
            let mut c = RawClient::streaming(port, "k1");
            c.shutdown_write();
            assert!(
                c.until_closed(ANSWER).is_some(),
                "a half-close left it open"
            );
        },
    },
    // §2.5: churn and resets.
    Case {
        name: "200 connections opened and closed at once",
        run: |port| {
            for _ in 0..200 {
                drop(TcpStream::connect(("127.0.0.1", port)).unwrap());
            }
        },
    },
    Case {
        name: "resets after an SSLRequest and in the middle of a stream",
        run: |port| {
            // Closing a socket with unread bytes sends RST instead of FIN.
            let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
            std::io::Write::write_all(&mut c, &ssl_request()).unwrap();
            wait_readable(&c);
            drop(c);
            let c = RawClient::streaming(port, "k1");
            thread::sleep(Duration::from_millis(200));
            drop(c);
        },
    },
];

/// Waits until `c` has a byte to read, without reading it.
fn wait_readable(c: &TcpStream) {
    c.set_read_timeout(Some(ANSWER)).unwrap();
    let mut byte = [0u8; 1];
    assert_eq!(c.peek(&mut byte).unwrap(), 1);
}

/// Lengths PostgreSQL closes silently on: below the 8-byte minimum, above 10000.
fn startup_lengths(port: u16) {
    for len in [0u32, 3, 7, 10_009, 0x7fff_ffff, 0xffff_ffff] {
        let got = bytes_before_close(port, &packet_of_length(len));
        assert!(got.is_empty(), "length {len:#x} answered with {got:?}");
    }
}

/// O8's health check after `case`: the relay is the process it was (`pid`), a fresh `psql`
/// session's `IDENTIFY_SYSTEM` works, and its log holds no panic.
fn assert_healthy(relay: &mut RelayProcess, bins: &PgBinaries, port: u16, pid: u32, case: &str) {
    assert_eq!(relay.pid(), pid, "the relay restarted after {case}");
    let conninfo = format!("host=127.0.0.1 port={port} user=postgres replication=1");
    assert_relay_healthy(relay, case, || bins.psql(&conninfo, "IDENTIFY_SYSTEM"));
}

/// O7 over the replay: the standbys' lag at each sample, and their walreceivers.
#[derive(Debug, Default)]
struct Isolation {
    /// Samples of a standby's lag, and how many were within two segments.
    samples: u64,
    within: u64,
    /// The worst lag seen, in bytes.
    worst: u64,
    /// Walreceivers that were not the ones streaming before the replay.
    changed_receivers: Vec<String>,
}

/// Samples the standbys' lag behind the primary's flush position every 200 ms until `stop`:
/// their receive positions first, then the flush position, so a lag is never underestimated.
fn sample_isolation(
    primary: &Cluster,
    standbys: &[Cluster],
    receivers: &[u32],
    stop: &AtomicBool,
) -> Isolation {
    let segment = primary.wal_segment_size().unwrap().bytes_u64();
    let mut seen = Isolation::default();
    while !stop.load(Ordering::SeqCst) {
        let sql = "SELECT coalesce(pg_last_wal_receive_lsn(), '0/0')";
        let received: Vec<Lsn> = standbys
            .iter()
            .map(|s| s.psql(sql).unwrap().parse().unwrap())
            .collect();
        let flush = primary.current_wal_flush_lsn().unwrap();
        for r in received {
            let lag = flush.saturating_distance(r);
            seen.worst = seen.worst.max(lag);
            seen.within += u64::from(lag <= 2 * segment);
            seen.samples += 1;
        }
        for (standby, &pid) in standbys.iter().zip(receivers) {
            let now = walreceiver_pid(standby);
            if now != Some(pid) {
                seen.changed_receivers.push(format!("{pid} -> {now:?}"));
            }
        }
        thread::sleep(Duration::from_millis(200));
    }
    seen
}

/// `pgbench` at [`RATE`] for `secs`; returns its `tps = …` figure.
fn pgbench_at_rate(primary: &Cluster, secs: u64) -> f64 {
    let secs = secs.to_string();
    let out = primary
        .pgbench(&["-c", "2", "-j", "2", "-R", RATE, "-T", &secs, "-n"])
        .unwrap();
    let line = out.lines().find(|l| l.starts_with("tps = ")).unwrap();
    line["tps = ".len()..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// Waits until `standby` streams, and returns its walreceiver's PID.
fn streaming_receiver(standby: &Cluster) -> u32 {
    let mut pid = None;
    wait_until(Duration::from_secs(30), "walreceiver streaming", || {
        pid = walreceiver_pid(standby);
        Ok(pid.is_some())
    })
    .unwrap();
    pid.unwrap()
}

at_1mb_and_16mb_segments!(
    k1_corpus_under_load_1mb_segments,
    k1_corpus_under_load_16mb_segments,
    |mb| corpus_under_load(&format!("k1-{mb}"), mb)
);

fn corpus_under_load(label: &str, segment_mb: u32) {
    let Some(bins) = require_postgres() else {
        return;
    };
    let dir = scratch(&bins, label);
    let primary = archiving_primary(&bins, dir.path(), segment_mb);
    let port = free_port().unwrap();
    let listen = format!("127.0.0.1:{port}");
    let args = ["--listen", &listen, "--authentication-timeout", "2s"];
    let mut relay = RelayProcess::start(&primary.conninfo(), &dir.path().join("relay"), &args);
    let now = primary.current_wal_flush_lsn().unwrap();
    wait_acked(&primary, now, Duration::from_secs(30));
    let standbys: Vec<Cluster> = ["d1", "d2", "d3"]
        .iter()
        .map(|slot| relay_standby(&primary, port, slot, &[]))
        .collect();
    primary.pgbench(&["-i", "-q", "-s", "2"]).unwrap();
    let receivers: Vec<u32> = standbys.iter().map(streaming_receiver).collect();
    let load_secs = env_u64("WALRELAY_K1_SECS", 10);
    let baseline = pgbench_at_rate(&primary, load_secs);

    // The same load again, with the corpus replayed round after round until it ends; the
    // standbys are sampled over the same window.
    let relay_pid = relay.pid();
    let stop = AtomicBool::new(false);
    let (isolation, loaded, rounds) = thread::scope(|s| {
        let (primary, standbys, receivers, stop) = (&primary, &standbys, &receivers, &stop);
        let bench = s.spawn(move || {
            let _stop = StopOnDrop(stop);
            pgbench_at_rate(primary, load_secs)
        });
        let sampler = s.spawn(move || sample_isolation(primary, standbys, receivers, stop));
        let _stop = StopOnDrop(stop);
        let mut rounds = 0;
        while rounds == 0 || !bench.is_finished() {
            for case in CORPUS {
                (case.run)(port);
                assert_healthy(&mut relay, &bins, port, relay_pid, case.name);
            }
            rounds += 1;
        }
        (sampler.join().unwrap(), bench.join().unwrap(), rounds)
    });
    println!(
        "K1 {segment_mb} MB segments: {rounds} rounds of {} inputs in {load_secs} s; \
         {isolation:?}; pgbench {loaded:.1} tps against {baseline:.1} before",
        CORPUS.len()
    );
    assert!(
        isolation.samples > 0 && isolation.within * 10 >= isolation.samples * 9,
        "O7: standbys fell behind: {isolation:?}"
    );
    assert!(
        isolation.changed_receivers.is_empty(),
        "O7: walreceivers changed: {isolation:?}"
    );
    assert!(
        loaded >= 0.9 * baseline,
        "O7: pgbench made {loaded:.1} tps during the replay against {baseline:.1} before"
    );

    // O1 and the data: every standby replays to the primary's position after a switch.
    primary.psql("CHECKPOINT").unwrap();
    primary.switch_wal().unwrap();
    let target = primary.current_wal_flush_lsn().unwrap();
    let sum = "SELECT sum(delta) || ' ' || count(*) FROM pgbench_history";
    let expected = primary.psql(sum).unwrap();
    for standby in &standbys {
        support::relay_topology::wait_replayed(standby, target, Duration::from_secs(60));
        assert_eq!(standby.psql(sum).unwrap(), expected);
    }
}
